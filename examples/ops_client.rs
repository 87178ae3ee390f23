//! The client with the operations endpoints, for `.ci/prometheus-check` and for trying `/metrics` and `/healthz`
//! before `run --metrics-listen` exists.
//!
//! ```text
//! FACILITATOR_HOTKEY_SEED=0x... cargo run --example ops_client -- --url ws://127.0.0.1:8765/ws/v0/ \
//!     --metrics-listen 127.0.0.1:9464 [--log-format json] [--trusted-signer SS58]...
//! ```
//!
//! Until the runtime's loop feeds [`Ops`] itself (`on_input`/`on_action` at each step), this program feeds it the
//! machine's events from [`Client::subscribe`]: state, health, job and delivery figures are right; the durations
//! that need the loop's inputs (connect, Ping round trip) stay empty.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use facilitator_client::handler::EchoHandler;
use facilitator_client::machine::{Action, BackoffConfig};
use facilitator_client::ops::log::LogFormat;
use facilitator_client::ops::{HealthPolicy, HttpLimits, Ops};
use facilitator_client::protocol::keys::Hotkey;
use facilitator_client::{Client, ClientConfig};

fn usage(message: &str) -> ExitCode {
    eprintln!("ops_client: {message}");
    eprintln!(
        "usage: ops_client --url URL [--metrics-listen ADDR] [--log-format text|json] [--trusted-signer SS58]..."
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut url = None;
    let mut listen: Option<SocketAddr> = None;
    let mut format = LogFormat::Text;
    let mut signers = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            return usage(&format!("{flag} needs a value"));
        };
        match flag.as_str() {
            "--url" => url = Some(value),
            "--metrics-listen" => match value.parse() {
                Ok(addr) => listen = Some(addr),
                Err(_) => return usage(&format!("--metrics-listen {value:?} is not an address")),
            },
            "--log-format" => match value.parse() {
                Ok(f) => format = f,
                Err(e) => return usage(&format!("{e}")),
            },
            "--trusted-signer" => signers.push(value),
            other => return usage(&format!("unknown flag {other}")),
        }
    }
    let Some(url) = url else {
        return usage("--url is required");
    };
    facilitator_client::ops::log::init(format, "info");
    let hotkey = match Hotkey::from_env() {
        Ok(hotkey) => hotkey,
        Err(e) => return usage(&e.to_string()),
    };
    let mut config = ClientConfig::new(url);
    config.trusted_signers = signers;
    config.handle_signals = true;
    let backoff_cap = BackoffConfig::default().cap;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ops_client: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let client = match Client::new(config, hotkey, Arc::new(EchoHandler::new())) {
            Ok(client) => client,
            Err(e) => return usage(&e.to_string()),
        };
        let ops = Ops::new(
            client.metrics(),
            HealthPolicy::for_backoff_cap(backoff_cap),
            Instant::now(),
        );
        if let Some(addr) = listen {
            match ops.bind(addr, HttpLimits::default()).await {
                Ok(server) => {
                    log::info!("metrics and health on http://{addr}/metrics and /healthz");
                    tokio::spawn(server.run());
                }
                Err(e) => return usage(&format!("cannot listen on {addr}: {e}")),
            }
        }
        let mut events = client.subscribe();
        let feeder = ops.clone();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match events.recv().await {
                    Ok(event) => feeder.on_action(&Action::Emit(event), Instant::now()),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => break,
                }
            }
        });
        match client.run().await {
            Ok(outcome) => ExitCode::from(outcome.exit_code().clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("ops_client: {e}");
                ExitCode::from(1)
            }
        }
    })
}
