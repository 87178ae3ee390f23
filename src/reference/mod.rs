//! The reference facilitator: a WebSocket server on loopback that behaves like the real ComputeHorde facilitator
//! as `docs/PROTOCOL.md` describes it, for the integration tests, the `serve` subcommand and the demo.
//!
//! What it does, by section of docs/PROTOCOL.md:
//! - 1: route `/ws/v0/` only (other paths: 404 in the handshake); the `X-Validator-*` headers are recorded; every
//!   connection handles its frames and pushed jobs one at a time, so Responses come back in order.
//! - 3.0, 5.3: frames are decoded with the server's rules ([`ClientMessage::from_json`](crate::protocol::ClientMessage));
//!   a frame that does not decode gets a pydantic-shaped error Response (binary frames: `json_type`) and the
//!   connection stays open.
//! - 8.2, 5.2, 5.5: authentication in the server's order, with its exact error texts and close codes 3000/3001.
//! - 3.2-3.4, 5.1: heartbeats and machine specs get no Response once authenticated; status updates get one each:
//!   success, `job.not_found` or `job.integrity_error` (`sent` is stored at job creation).
//! - 5.4: where the real server's handler crashes (malformed auth credentials, a `uuid` that is not a UUID,
//!   `completed`/`streaming_ready` with null metadata after storing it) the TCP connection is dropped without a
//!   Response or close frame.
//! - 2, 4.2, 4.3: signed `V2JobRequest`s (facilitator text format) and `V0JobCheated`s are pushed to every
//!   authenticated connection.
//!
//! Deviations from the real facilitator, on purpose:
//! - Jobs (and other pushed frames) created while no validator is authenticated are queued and pushed right after
//!   the next successful authentication; the real one refuses to create a job without a validator that sent a
//!   heartbeat in the last 3 minutes (section 6).
//! - No liveness sweep: connections are never closed for missing heartbeats or deactivated validators (unless a
//!   fault asks for it), and the validator list never changes while running.
//! - Machine specs are not checked against the hardware schema (the real handler can crash on them, 3.4).
//! - After an emulated crash the connection is forgotten at once (the real server's record lingers, 5.4).
//! - Where the crate's decoder is stricter than pydantic (an integer written `"7"`), the message is refused with a
//!   `value_error` instead of accepted; exotic UUID spellings Python's `int(x, 16)` takes are treated as invalid.
//!
//! Faults ([`Faults`]) make it misbehave on demand: drop the TCP connection, stall (half-open), close with any
//! code, or reject authentication; [`ReferenceFacilitator::hold_responses`] makes it slow to answer while it keeps
//! pushing jobs. Everything it sees and does is recorded ([`Records`]); tests await conditions
//! on the records with [`ReferenceFacilitator::wait_for`] instead of sleeping.

mod config;
mod connection;
mod parse_errors;
mod records;
mod state;
mod uuid;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};
use tokio_tungstenite::tungstenite::Message;

pub use config::{
    AfterMessages, AuthRejection, CloseAfter, FacilitatorConfig, Faults, JobPlan, RejectAuth,
    Times, Validators, tls_config_from_files, tls_config_from_pem,
};
pub use records::{
    AuthOutcome, AuthRecord, ClientFrame, ConnectionEnd, ConnectionId, ConnectionRecord,
    HeartbeatRecord, JobRecord, MessageRecord, PushKind, PushRecord, Records, RejectedHandshake,
    ResponseRecord, StatusOutcome, StatusUpdateRecord,
};

use crate::protocol::JobRequestFields;
use state::{Command, Outgoing, Shared};

/// A running reference facilitator. Dropping it stops everything (listener, connections, job generator) at once;
/// [`ReferenceFacilitator::shutdown`] closes connections with a close frame first.
///
/// ```no_run
/// # async fn example() -> std::io::Result<()> {
/// use std::time::Duration;
/// use facilitator_client::reference::{FacilitatorConfig, JobPlan, ReferenceFacilitator};
///
/// let facilitator = ReferenceFacilitator::start(FacilitatorConfig {
///     jobs: JobPlan::count(10),
///     ..FacilitatorConfig::default()
/// })
/// .await?;
/// println!("connect a client to {}", facilitator.url());
/// let records = facilitator
///     .wait_for(|r| r.finished_jobs() == 10, Duration::from_secs(30))
///     .await
///     .expect("every job finished");
/// println!("{}", records.summary());
/// facilitator.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub struct ReferenceFacilitator {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    tls: bool,
    shutdown: watch::Sender<bool>,
    generator: Option<AbortHandle>,
    /// The accept loop (which owns the connection tasks) and the job generator; aborted on drop.
    tasks: JoinSet<()>,
}

impl fmt::Debug for ReferenceFacilitator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReferenceFacilitator")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

impl ReferenceFacilitator {
    /// Binds `config.listen` and starts serving on the current tokio runtime.
    pub async fn start(config: FacilitatorConfig) -> io::Result<ReferenceFacilitator> {
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(&config));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        tasks.spawn(connection::accept_loop(
            Arc::clone(&shared),
            listener,
            tls,
            shutdown_rx,
        ));
        let generator = (config.jobs.total != Some(0))
            .then(|| tasks.spawn(generate_jobs(Arc::clone(&shared), config.jobs.clone())));
        log::info!(
            "reference facilitator listening on {scheme}://{local_addr}{} (jobs signed by {})",
            connection::PATH,
            config.signer.ss58()
        );
        Ok(ReferenceFacilitator {
            shared,
            local_addr,
            tls: config.tls.is_some(),
            shutdown,
            generator,
            tasks,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The URL a client connects to: `ws://127.0.0.1:PORT/ws/v0/` (`wss://` when serving TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{}", self.local_addr, connection::PATH)
    }

    /// The SS58 address that signs the jobs (a client must trust it).
    pub fn signer_ss58(&self) -> String {
        self.shared.signer().ss58()
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> Records {
        self.shared.read(|s| s.records.clone())
    }

    /// Waits until `predicate` holds for the records, and returns them as they were then; or, after `timeout`,
    /// fails with the records as they are. The predicate runs under the facilitator's lock at every change: keep it
    /// quick and do not call the facilitator from it.
    ///
    /// ```no_run
    /// # async fn example(facilitator: facilitator_client::reference::ReferenceFacilitator) {
    /// use std::time::Duration;
    /// let records = facilitator
    ///     .wait_for(|r| r.authenticated_connections() == 1, Duration::from_secs(5))
    ///     .await
    ///     .unwrap_or_else(|e| panic!("{e}"));
    /// # }
    /// ```
    pub async fn wait_for<F>(
        &self,
        mut predicate: F,
        timeout: Duration,
    ) -> Result<Records, WaitTimeout>
    where
        F: FnMut(&Records) -> bool,
    {
        // Subscribe before the first check: a change after the check is then always seen by `changed()`.
        let mut changes = self.shared.subscribe();
        let met = async {
            loop {
                changes.borrow_and_update();
                let records = self
                    .shared
                    .read(|s| predicate(&s.records).then(|| s.records.clone()));
                if let Some(records) = records {
                    return records;
                }
                if changes.changed().await.is_err() {
                    // Cannot happen while `self` holds the sender; wait for the timeout rather than spin.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, met)
            .await
            .map_err(|_| WaitTimeout {
                after: timeout,
                records: Box::new(self.snapshot()),
            })
    }

    /// Creates a minimal job (like vector `minimal`) with the next UUID, signed by the configured signer, and
    /// pushes it to every authenticated connection (or queues it until a validator authenticates). Returns its
    /// UUID.
    pub fn push_job(&self) -> String {
        self.shared.create_job()
    }

    /// Pushes a job request exactly as given (signed or not, any UUID) and registers its UUID as a known job, so
    /// status updates for it are stored.
    pub fn push_job_request(&self, fields: &JobRequestFields) {
        self.shared.push_job_request(fields);
    }

    /// Pushes a `V0JobCheated` signed by the configured signer over the validator's payload (so it verifies at the
    /// client, unlike real SDK-signed reports; docs/PROTOCOL.md 10).
    pub fn push_cheated(&self, job_uuid: &str, trusted_job_uuid: &str, details: Value) {
        self.shared
            .push_cheated(job_uuid, trusted_job_uuid, details);
    }

    /// Pushes an arbitrary text frame (for bad-input tests).
    pub fn push_raw_text(&self, text: impl Into<String>) {
        self.deliver(Message::text(text.into()), PushKind::RawText);
    }

    /// Pushes a binary frame (the real facilitator never sends one).
    pub fn push_binary(&self, bytes: impl Into<Vec<u8>>) {
        self.deliver(Message::binary(bytes.into()), PushKind::Binary);
    }

    fn deliver(&self, message: Message, kind: PushKind) {
        self.shared
            .update(|s| s.deliver(Outgoing { message, kind }));
    }

    /// The faults now configured.
    pub fn faults(&self) -> Faults {
        self.shared.read(|s| s.faults().clone())
    }

    /// Replaces the faults (and restarts their "first K" counts). Connection faults apply to connections opened
    /// from now on; auth rejections to the next attempts.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.update(|s| s.set_faults(faults));
    }

    /// Whether the jobs it makes from now on are signed (default: yes). Unsigned jobs cost nothing to make, so a
    /// plan that refills at once keeps refilling at the pace of the answers even after its stock of signed jobs
    /// is used up; a client that checks signatures answers them `rejected` / `invalid_signature`, and one that is
    /// draining answers them `busy` before any check.
    pub fn set_job_signing(&self, signing: bool) {
        self.shared.update(|s| {
            s.set_signing(signing);
            s.refill(tokio::time::Instant::now());
        });
    }

    /// Drops every connection now, without a close frame (the client sees an abnormal closure).
    pub fn drop_all_connections(&self) {
        self.shared.update(|s| s.kill_all());
    }

    /// Sends a close frame with `code` on every connection (after whatever it is writing).
    pub fn close_all_connections(&self, code: u16) {
        self.shared
            .update(|s| s.command_all(|| Command::Close(code)));
    }

    /// Stalls every connection: no more reading or writing, the socket stays open.
    pub fn stall_all_connections(&self) {
        self.shared.update(|s| s.command_all(|| Command::Stall));
    }

    /// Holds the Responses of every open connection: each keeps reading the client's messages (and storing its
    /// statuses), answering its Pings and pushing jobs, but writes no Response until
    /// [`ReferenceFacilitator::release_responses`], as a facilitator whose database is slow would. The held
    /// Responses are recorded when written; a connection that ends first never writes them. Connections opened
    /// later answer at once.
    pub fn hold_responses(&self) {
        self.shared
            .update(|s| s.command_all(|| Command::HoldResponses(true)));
    }

    /// Writes every held Response, in order, and answers at once again.
    pub fn release_responses(&self) {
        self.shared
            .update(|s| s.command_all(|| Command::HoldResponses(false)));
    }

    /// Stops: no more jobs, the listener closes, every connection gets a close frame (1012) and a bounded wait for
    /// the client's reply, then everything still open is dropped.
    pub async fn shutdown(mut self) {
        if let Some(generator) = self.generator.take() {
            generator.abort();
        }
        self.shutdown.send_replace(true);
        // The accept loop ends within its grace period; the generator was aborted.
        while self.tasks.join_next().await.is_some() {}
        log::info!(
            "reference facilitator stopped: {}",
            self.snapshot().summary()
        );
    }
}

/// [`ReferenceFacilitator::wait_for`] gave up. Shows the records' counts.
#[derive(Debug)]
pub struct WaitTimeout {
    /// How long it waited.
    pub after: Duration,
    /// The records when it gave up.
    pub records: Box<Records>,
}

impl fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the condition did not hold within {:?}; the facilitator saw {}",
            self.after,
            self.records.summary()
        )
    }
}

impl std::error::Error for WaitTimeout {}

/// Runs a reference facilitator until Ctrl-C (or SIGTERM), logging each connection, authentication and status at
/// info level; then shuts it down. For the `serve` subcommand.
pub async fn serve(config: FacilitatorConfig) -> io::Result<()> {
    let facilitator = ReferenceFacilitator::start(config).await?;
    log::info!(
        "serving at {}; jobs are signed by {} (trust it with --trusted-signer); Ctrl-C stops",
        facilitator.url(),
        facilitator.signer_ss58()
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        signal = tokio::signal::ctrl_c() => signal?,
        _ = terminate.recv() => {}
    }
    log::info!("stopping the reference facilitator");
    facilitator.shutdown().await;
    Ok(())
}

/// Makes the jobs of `plan`: one at a time, waiting while `max_open` jobs are open, pausing `interval` after each.
/// A plan that refills at once is signed ahead into a stock instead, which the state pushes from.
async fn generate_jobs(shared: Arc<Shared>, plan: JobPlan) {
    let mut changes = shared.subscribe();
    if plan.refill_at_once && plan.max_open.is_some() {
        loop {
            changes.borrow_and_update();
            match shared.read(|s| s.stock_wanted()) {
                None => break,
                Some(true) => {
                    shared.stock_job();
                    tokio::task::yield_now().await;
                }
                Some(false) => {
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        log::info!("every planned job is signed");
        return;
    }
    let mut created = 0u64;
    while plan.total.is_none_or(|total| created < total) {
        if let Some(max_open) = plan.max_open {
            loop {
                changes.borrow_and_update();
                if shared.read(|s| s.open_jobs()) < max_open {
                    break;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        }
        shared.create_job();
        created += 1;
        if plan.interval.is_zero() {
            // Let the connections write what was just pushed before the next one.
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(plan.interval).await;
        }
    }
    log::info!("all {created} planned jobs created");
}
