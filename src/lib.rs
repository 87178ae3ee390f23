//! The client a [ComputeHorde](https://github.com/backend-developers-ltd/ComputeHorde) validator runs to stay
//! connected to the ComputeHorde facilitator: it authenticates with the validator's sr25519 hotkey, keeps the
//! connection alive, receives signed job requests, hands each job to a [`handler::JobHandler`], and delivers every
//! job status update back, across disconnects, facilitator restarts, bad input, crashes and shutdown signals. It
//! speaks the real facilitator's wire protocol byte for byte (`docs/PROTOCOL.md`).
//!
//! Every lifecycle decision lives in one pure state machine, [`machine::Machine`]: feed it an [`machine::Input`]
//! and the current time, carry out the [`machine::Action`]s it returns, and wake it at the deadline
//! [`machine::Machine::poll_timeout`] names. It does no I/O and reads no clock, so it can be driven by anything:
//! the tokio runtime in this crate ([`Client`]), a simulation, a fuzzer or a model checker. The design is in
//! `docs/ARCHITECTURE.md`; the table of every (state, input) pair is `states/transitions.json`.
//!
//! # Driving the machine yourself
//!
//! One turn of a driver's loop: wait for the deadline or an event, step, carry out the actions. Here the
//! facilitator's answers are made up; a real driver reads them from its socket.
//!
//! ```
//! use std::time::Instant;
//! use facilitator_client::machine::{Action, Config, Incoming, Input, Machine, State, Timer};
//! use facilitator_client::protocol::{Hotkey, Response, ServerMessage, TrustedSigners};
//!
//! let hotkey = Hotkey::from_seed(&[7; 32]);
//! let signers = TrustedSigners::new(hotkey.public_key(), ["5DtDLm5rQHShDqojQpsvcN8tRXHVFaecfDoRet1SU6BFD9Fi"])?;
//! let start = Instant::now();
//! let mut machine = Machine::new(Config::default(), hotkey.auth_request(), signers, start);
//!
//! // The first connection attempt is due at once.
//! assert_eq!(machine.poll_timeout(), Some((start, Timer::Reconnect)));
//! let inputs = [
//!     Input::Tick,         // the deadline passed: the machine asks to open a socket
//!     Input::SocketOpened, // the WebSocket is open: it sends the auth request
//!     // One read of the socket: the auth Response.
//!     Input::Frames(vec![Incoming::Message(ServerMessage::Response(Response::success()))]),
//! ];
//! let mut sent = Vec::new();
//! for input in inputs {
//!     // Exhaustive on purpose: a new kind of action is a compile error in your driver, not a silent gap.
//!     for action in machine.step(input, Instant::now()) {
//!         match action {
//!             Action::Open => { /* connect: TCP, TLS, WebSocket handshake; then SocketOpened or SocketFailed */ }
//!             Action::Send(message) => sent.push(message.message_type()), // a text frame: message.to_json()
//!             Action::Ping => { /* a WebSocket Ping */ }
//!             Action::Close(_code) => { /* start the close handshake */ }
//!             Action::Abort => { /* drop the socket */ }
//!             Action::Dispatch(_job) => { /* start a job handler; feed its statuses back as Input::Status */ }
//!             Action::CancelJobs => { /* kill every job handler */ }
//!             Action::Emit(event) => println!("{event}"),
//!             Action::Persist { .. } => { /* with Config::durable: commit the batch off the loop, then Persisted */ }
//!             Action::ForwardCheatReport(_report) => { /* hand a verified cheat report on, off the loop */ }
//!             Action::Stop(reason) => println!("stopped: {reason}"),
//!         }
//!     }
//! }
//! assert_eq!(sent, ["V0AuthenticationRequest", "V0Heartbeat"]);
//! assert!(matches!(machine.state(), State::Running { .. }));
//! // Next: the heartbeat, 20 s from now, unless something comes first.
//! assert!(matches!(machine.poll_timeout(), Some((_, Timer::Heartbeat))));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Embedding the client with your own job handler
//!
//! [`Client`] runs the machine on tokio with a real WebSocket; you give it a configuration, the hotkey and a
//! [`handler::JobHandler`]. Here against the reference facilitator on loopback (feature `reference`), stopped once
//! three jobs are done; against the real one, use its URL and trust the SDK user's signing key.
//!
// The example needs `runtime` and `reference`: built without them (`cargo test --no-default-features`) it is shown but
// not compiled. (A doctest does not see the crate's features as cfgs, so the switch is made here.)
#![cfg_attr(all(feature = "runtime", feature = "reference"), doc = "```")]
#![cfg_attr(
    not(all(feature = "runtime", feature = "reference")),
    doc = "```ignore"
)]
//! use std::sync::Arc;
//! use std::time::Duration;
//! use facilitator_client::handler::{BoxFuture, JobHandler, StatusSender};
//! use facilitator_client::protocol::{Hotkey, JobRequest, JobStatus};
//! use facilitator_client::reference::{FacilitatorConfig, JobPlan, ReferenceFacilitator};
//! use facilitator_client::{Client, ClientConfig};
//!
//! /// Runs each job somewhere and reports how it went.
//! struct MyHandler;
//!
//! impl JobHandler for MyHandler {
//!     fn run(&self, job: Arc<JobRequest>, statuses: StatusSender) -> BoxFuture {
//!         Box::pin(async move {
//!             let _ = statuses.status(JobStatus::Accepted).await;
//!             println!("running {} for job {}", job.docker_image(), job.uuid());
//!             let _ = statuses.status(JobStatus::Completed).await;
//!         })
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! runtime.block_on(async {
//!     let facilitator =
//!         ReferenceFacilitator::start(FacilitatorConfig { jobs: JobPlan::count(3), ..Default::default() }).await?;
//!     let mut config = ClientConfig::new(facilitator.url());
//!     config.trusted_signers = vec![facilitator.signer_ss58()];
//!     let client = Client::new(config, Hotkey::from_seed(&[7; 32]), Arc::new(MyHandler))?;
//!     // `run_until`: when the future completes, the client drains and stops (as on Ctrl-C).
//!     let all_done = facilitator.wait_for(|r| r.finished_jobs() == 3, Duration::from_secs(30));
//!     let outcome = client.run_until(all_done).await?;
//!     assert_eq!(outcome.exit_code(), 0);
//!     assert!(outcome.undelivered.is_empty());
//!     facilitator.shutdown().await;
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! # Ok(())
//! # }
//! ```
//!
//! `examples/embed.rs` is a fuller host application to copy: its own work beside the client, and its own signal to
//! stop it.
//!
//! # Features
//!
//! | feature | what it adds | default |
//! |---|---|---|
//! | (none) | the pure core: [`machine`], [`protocol`], the spool's record types; no tokio, no I/O | always |
//! | `runtime` | [`Client`] on tokio, the WebSocket transport, signals, the `echo` and `exec:` handlers | via `cli` |
//! | `spool` | the durable spool ([`spool`]: redb file, writer thread) | via `cli` |
//! | `ops` | Prometheus metrics, the health check, JSON logs ([`ops`]) | via `cli` |
//! | `celery` | the hand-off to the validator's Celery workers over Redis ([`handler::celery`]) | via `cli` |
//! | `reference` | the reference facilitator ([`reference`](mod@reference)), for demos and tests | via `cli` |
//! | `cli` | the `facilitator-client` program | yes |
//! | `test-support` | the simulation, fuzz bodies and test keys | no |
//!
//! An embedder that wants only the client: `default-features = false, features = ["runtime"]` (no clap, toml or
//! env_logger in the build).

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![warn(unreachable_pub)]

#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;
#[cfg(feature = "runtime")]
pub mod handler;
pub mod machine;
#[cfg(feature = "ops")]
pub mod ops;
pub mod protocol;
#[cfg(feature = "runtime")]
mod ratelimit;
#[cfg(feature = "reference")]
pub mod reference;
#[cfg(feature = "runtime")]
mod runtime;
#[cfg(feature = "test-support")]
pub mod sim;
pub mod spool;
#[cfg(any(feature = "ops", feature = "celery", feature = "spool"))]
mod utc;

#[cfg(feature = "runtime")]
pub use runtime::{
    CaFileError, CheatForwarding, Client, ClientConfig, ConfigError, Metrics, MetricsHandle,
    Observer, Outcome, Peaks, ShutdownHandle, SpoolMetrics, SpoolSummary, TransportLimits,
    UrlError,
};
