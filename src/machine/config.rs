//! The machine's settings: timeouts, limits and the backoff, with the architecture's defaults, and the check that
//! they make sense together.

use std::time::Duration;

use super::backoff::BackoffConfig;

/// Timeouts, limits and backoff of the machine. Every field has the architecture's default.
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
        }
    }
}
