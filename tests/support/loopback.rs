//! The library client against the reference facilitator on loopback: the settings those tests share (timeouts short
//! enough that reconnects take milliseconds, long enough for a loaded machine), starting the facilitator, running the
//! client on a task and joining it under a guard.

use std::time::Duration;

use facilitator_client::machine::BackoffConfig;
use facilitator_client::reference::{FacilitatorConfig, ReferenceFacilitator};
use facilitator_client::{Client, ClientConfig, Outcome};

/// How long a test waits for the client (or the facilitator) before failing instead of hanging.
pub const GUARD: Duration = Duration::from_secs(20);

/// A client of `facilitator` that trusts its job signer: 200 ms heartbeats, 800 ms peer timeout, a 50-400 ms backoff.
pub fn client_config(facilitator: &ReferenceFacilitator) -> ClientConfig {
    let mut config = ClientConfig::new(facilitator.url());
    config.trusted_signers = vec![facilitator.signer_ss58()];
    config.machine.heartbeat_interval = Duration::from_millis(200);
    config.machine.peer_timeout = Duration::from_millis(800);
    config.machine.connect_timeout = Duration::from_secs(2);
    config.machine.drain_timeout = Duration::from_secs(3);
    config.machine.close_timeout = Duration::from_secs(1);
    config.machine.backoff = BackoffConfig {
        base: Duration::from_millis(50),
        factor: 2.0,
        cap: Duration::from_millis(400),
        jitter: 0.5,
        stable_after: Duration::from_secs(1),
    };
    config
}

/// Starts the reference facilitator.
pub async fn start(config: FacilitatorConfig) -> ReferenceFacilitator {
    ReferenceFacilitator::start(config)
        .await
        .expect("the reference facilitator starts")
}

/// Runs the client on a task of its own.
pub fn spawn_client(client: Client) -> tokio::task::JoinHandle<Outcome> {
    tokio::spawn(async move {
        client
            .run()
            .await
            .expect("the client's configuration is valid")
    })
}

/// The client's outcome, within [`GUARD`].
pub async fn join(handle: tokio::task::JoinHandle<Outcome>) -> Outcome {
    tokio::time::timeout(GUARD, handle)
        .await
        .expect("the client stops in time")
        .expect("the client task ends")
}
