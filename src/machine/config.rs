//! The machine's settings: timeouts, limits and the backoff, with the architecture's defaults, and the check that
//! they make sense together.

use std::time::Duration;

use super::backoff::BackoffConfig;

/// Timeouts, limits and backoff of the machine. Every field has the architecture's default.
///
/// Every setting of the crate follows one pattern: a plain struct with public, documented fields and a `Default`,
/// changed with struct-update syntax, and checked by `validate` when the client is built. Fields rather than a
/// builder because a configuration file maps onto them one to one, and a reader sees every setting and its
/// default in one place.
///
/// ```
/// use std::time::Duration;
/// use facilitator_client::machine::Config;
/// let config = Config { drain_timeout: Duration::from_secs(30), ..Config::default() };
/// assert!(config.validate().is_ok());
/// let wrong = Config { peer_timeout: Duration::from_secs(5), ..Config::default() };
/// assert!(wrong.validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// A `V0Heartbeat` and a WebSocket Ping go out this often while connected.
    pub heartbeat_interval: Duration,
    /// A peer that sends nothing (no frame, no Pong) for this long is dead.
    pub peer_timeout: Duration,
    /// Covers TCP, TLS, the WebSocket handshake and the auth Response.
    pub connect_timeout: Duration,
    /// After a shutdown request, in-flight jobs and unacknowledged statuses get this long.
    pub drain_timeout: Duration,
    /// The close handshake (and the best-effort reports of cancelled jobs) get this long after the drain.
    pub close_timeout: Duration,
    /// Reconnect delays.
    pub backoff: BackoffConfig,
    /// Seed of the backoff jitter.
    pub jitter_seed: u64,
    /// Producers of status updates wait when this many are held (queued plus in flight).
    pub outbox_capacity: usize,
    /// At most this many status updates are sent and not yet answered.
    pub max_in_flight: usize,
    /// At most this many jobs run at once; a job request beyond that is answered `rejected` / `busy` at once.
    pub max_running_jobs: usize,
    /// Keep a durable spool: every status of an accepted job gets an id and is held back from the socket until
    /// the batch that puts it is durable (`Action::Persist`, answered by `Input::Persisted`), and each accepted
    /// job is recorded until its terminal status is acknowledged. Off by default: the library keeps everything in
    /// memory unless the embedder opts in (the program turns it on).
    pub durable: bool,
}

impl Default for Config {
    fn default() -> Self {
        let heartbeat_interval = Duration::from_secs(20);
        Config {
            heartbeat_interval,
            peer_timeout: heartbeat_interval * 2,
            connect_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            backoff: BackoffConfig::default(),
            jitter_seed: 0x5eed,
            outbox_capacity: 1024,
            max_in_flight: 256,
            max_running_jobs: 256,
            durable: false,
        }
    }
}

/// The longest duration any setting may have: far beyond any sensible timeout, and small enough that adding it to
/// any `Instant` the machine will see cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A setting that would make the machine misbehave.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The peer timeout must be longer than the heartbeat interval, or a healthy peer counts as dead.
    #[error(
        "the peer timeout ({peer_timeout:?}) must be longer than the heartbeat interval ({heartbeat_interval:?}), \
         or a healthy peer counts as dead"
    )]
    PeerTimeoutTooShort {
        /// The peer timeout given.
        peer_timeout: Duration,
        /// The heartbeat interval given.
        heartbeat_interval: Duration,
    },
    /// A duration is zero, or longer than [`MAX_DURATION`].
    #[error("{name} must be more than zero and at most a year, not {value:?}")]
    Duration {
        /// Which setting.
        name: &'static str,
        /// Its value.
        value: Duration,
    },
    /// A count is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// The backoff's numbers do not make a growing, capped delay.
    #[error("the reconnect backoff is not usable: {0}")]
    Backoff(&'static str),
}

impl Config {
    /// Checks that the settings make sense together: every duration above zero and at most [`MAX_DURATION`] (so
    /// no deadline can overflow an `Instant`), the peer timeout above the heartbeat interval, every limit at least
    /// 1, a backoff whose base is at most its cap, factor at least 1 and jitter within 0..=1.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("heartbeat_interval", self.heartbeat_interval),
            ("peer_timeout", self.peer_timeout),
            ("connect_timeout", self.connect_timeout),
            ("drain_timeout", self.drain_timeout),
            ("close_timeout", self.close_timeout),
            ("backoff.base", self.backoff.base),
            ("backoff.cap", self.backoff.cap),
            ("backoff.stable_after", self.backoff.stable_after),
        ] {
            if value.is_zero() || value > MAX_DURATION {
                return Err(ConfigError::Duration { name, value });
            }
        }
        if self.peer_timeout <= self.heartbeat_interval {
            return Err(ConfigError::PeerTimeoutTooShort {
                peer_timeout: self.peer_timeout,
                heartbeat_interval: self.heartbeat_interval,
            });
        }
        for (name, value) in [
            ("outbox_capacity", self.outbox_capacity),
            ("max_in_flight", self.max_in_flight),
            ("max_running_jobs", self.max_running_jobs),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        let b = &self.backoff;
        if b.base > b.cap {
            return Err(ConfigError::Backoff(
                "the base delay is longer than the cap",
            ));
        }
        if !(b.factor.is_finite() && b.factor >= 1.0) {
            return Err(ConfigError::Backoff(
                "the factor must be a number of at least 1",
            ));
        }
        if !(0.0..=1.0).contains(&b.jitter) {
            return Err(ConfigError::Backoff("the jitter must be between 0 and 1"));
        }
        Ok(())
    }
}
