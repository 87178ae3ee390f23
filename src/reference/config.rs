//! Configuration of the reference facilitator: where it listens, which validators it knows, who signs its jobs,
//! how many jobs it makes, and the faults it injects. Plain data with defaults that suit a demo: loopback on any
//! port, every validator accepted, the vectors' test signer, no jobs, no faults.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::protocol::keys::Hotkey;
use crate::protocol::testing;

/// Everything [`super::ReferenceFacilitator::start`] needs.
#[derive(Debug, Clone)]
pub struct FacilitatorConfig {
    /// Where to listen. Default `127.0.0.1:0` (any free port; read it back with `local_addr()`).
    pub listen: SocketAddr,
    /// Which hotkeys may authenticate. Default [`Validators::Any`].
    pub validators: Validators,
    /// Who signs the jobs (the "SDK user"). Default [`testing::test_signer`]; a client must trust its SS58.
    pub signer: Hotkey,
    /// The jobs made on the facilitator's own initiative. Default: none (push them with `push_job`).
    pub jobs: JobPlan,
    /// Faults to inject. Default: none.
    pub faults: Faults,
    /// Seed of the job UUID sequence: the same seed gives the same UUIDs in the same order.
    pub uuid_seed: u64,
    /// How long to wait for the client's close frame after sending one (auth rejection, close fault, shutdown).
    pub close_timeout: Duration,
    /// Serve `wss://` with this certificate and key (see [`tls_config_from_pem`]); `None` serves `ws://`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for FacilitatorConfig {
    fn default() -> Self {
        FacilitatorConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            validators: Validators::Any,
            signer: testing::test_signer(),
            jobs: JobPlan::default(),
            faults: Faults::default(),
            uuid_seed: 0,
            close_timeout: Duration::from_secs(2),
            tls: None,
        }
    }
}

/// The facilitator's list of active validators (docs/PROTOCOL.md 8.2 step 3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Validators {
    /// Every hotkey whose auth signature verifies.
    #[default]
    Any,
    /// Only these public keys; others get `auth.validator_not_found` and close 3001.
    Listed(Vec<[u8; 32]>),
}

/// The jobs the facilitator creates by itself, as an SDK user would: minimal signed jobs with fresh UUIDs.
///
/// ```
/// use std::time::Duration;
/// use facilitator_client::reference::JobPlan;
/// let plan = JobPlan::count(100).every(Duration::from_millis(10)).max_open(8);
/// assert_eq!(plan.total, Some(100));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPlan {
    /// How many jobs in all; `None` for no limit. Default `Some(0)`.
    pub total: Option<u64>,
    /// Pause after each job; zero for as fast as possible. Default zero.
    pub interval: Duration,
    /// At most this many open jobs (created, no terminal status stored yet): creation waits while at the bound.
    /// `None` for no bound. An unlimited plan without a bound and without an interval makes jobs (and records)
    /// without end: give it one or the other.
    pub max_open: Option<usize>,
    /// With `max_open`: replace each job the moment its terminal status is stored, in the same turn as the
    /// Response, with a job signed ahead of time (the facilitator keeps `max_open` of them ready), as an SDK user
    /// whose queue never runs dry would. Without it a replacement is signed, then pushed, a moment later, and a
    /// client that answers faster than jobs are signed sees the flow pause. `interval` is not used.
    pub refill_at_once: bool,
}

impl Default for JobPlan {
    fn default() -> Self {
        JobPlan {
            total: Some(0),
            interval: Duration::ZERO,
            max_open: None,
            refill_at_once: false,
        }
    }
}

impl JobPlan {
    /// No jobs.
    pub fn none() -> JobPlan {
        JobPlan::default()
    }

    /// `total` jobs, as fast as possible.
    pub fn count(total: u64) -> JobPlan {
        JobPlan {
            total: Some(total),
            ..JobPlan::default()
        }
    }

    /// Jobs without end (bound them with [`JobPlan::max_open`] or [`JobPlan::every`]).
    pub fn unlimited() -> JobPlan {
        JobPlan {
            total: None,
            ..JobPlan::default()
        }
    }

    /// The same plan with a pause after each job.
    pub fn every(self, interval: Duration) -> JobPlan {
        JobPlan { interval, ..self }
    }

    /// The same plan with at most `max_open` jobs open at once.
    pub fn max_open(self, max_open: usize) -> JobPlan {
        JobPlan {
            max_open: Some(max_open),
            ..self
        }
    }

    /// The same plan, keeping `max_open` jobs open by replacing each finished one at once (see the field of the
    /// same name).
    ///
    /// ```
    /// use facilitator_client::reference::JobPlan;
    /// let plan = JobPlan::unlimited().max_open(1_000).refill_at_once();
    /// assert!(plan.refill_at_once);
    /// ```
    pub fn refill_at_once(self) -> JobPlan {
        JobPlan {
            refill_at_once: true,
            ..self
        }
    }
}

/// Faults to inject. Connection faults are decided when a connection opens (so a change applies to connections
/// opened afterwards); auth rejections are decided at each attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Drop the TCP connection, without a close frame, after this many client messages.
    pub drop_after: Option<AfterMessages>,
    /// Stop reading and writing after this many client messages, keeping the socket open (a half-open peer):
    /// pings go unanswered, jobs pushed to it are lost. Ends with `drop_all_connections` or shutdown.
    pub stall_after: Option<AfterMessages>,
    /// Send a close frame with this code after this many client messages.
    pub close_after: Option<CloseAfter>,
    /// Reject authentication attempts that would otherwise succeed.
    pub reject_auth: Option<RejectAuth>,
}

impl Faults {
    /// No faults.
    pub fn none() -> Faults {
        Faults::default()
    }
}

/// "After N client messages on a connection", for some connections.
///
/// Text and binary frames count (pings do not). Messages 1..=N are handled and answered normally; the fault hits
/// right after the N-th one is handled, so with N = 0 it hits as soon as the WebSocket is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterMessages {
    /// N.
    pub messages: u64,
    /// On which connections: every one, or the first K opened after the fault was configured.
    pub connections: Times,
}

impl AfterMessages {
    /// After `messages` messages, on every connection.
    pub fn every_connection(messages: u64) -> AfterMessages {
        AfterMessages {
            messages,
            connections: Times::Always,
        }
    }

    /// After `messages` messages, on the next `connections` connections only.
    pub fn first_connections(messages: u64, connections: u32) -> AfterMessages {
        AfterMessages {
            messages,
            connections: Times::First(connections),
        }
    }
}

/// Close with an arbitrary code after some messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseAfter {
    /// When, and on which connections.
    pub after: AfterMessages,
    /// The close code (e.g. 3001, as when the facilitator drops a stale validator; or 1011).
    pub code: u16,
}

/// Reject authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectAuth {
    /// How.
    pub with: AuthRejection,
    /// Which attempts: every one, or the first K (counted from when the fault was configured).
    pub attempts: Times,
}

/// An authentication error of the server's catalogue (docs/PROTOCOL.md 5.2), with its close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRejection {
    /// `auth.signature_invalid`, close 3000.
    SignatureInvalid,
    /// `auth.validator_not_found`, close 3001.
    ValidatorNotFound,
}

/// How many times a fault applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    /// Every time.
    Always,
    /// The first K times, then never.
    First(u32),
}

/// A TLS server configuration from a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or
/// SEC1), for [`FacilitatorConfig::tls`]. The error says which file is wrong and how.
pub fn tls_config_from_pem(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the TLS certificate is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err("the TLS certificate file holds no CERTIFICATE block".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("the TLS key is not a valid PEM private key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the TLS certificate and key do not work together: {e}"))?;
    Ok(Arc::new(config))
}

/// [`tls_config_from_pem`] from two files (`serve --tls-cert FILE --tls-key FILE`).
pub fn tls_config_from_files(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    tls_config_from_pem(&read(cert)?, &read(key)?)
}
