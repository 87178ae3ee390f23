//! The runtime: one `tokio::select!` loop that drives the pure machine with a real socket, a timer, shutdown
//! signals and job handlers.
//!
//! The loop is the only place that reads the clock. Each turn: wait for one wake-up (biased: shutdown first, then
//! the machine's one deadline, then the socket, then handler statuses), read the clock once, step the machine, carry
//! out its actions. It decides nothing itself: every lifecycle decision is the machine's. It never polls, never
//! sleeps a fixed time: an idle connected client wakes only for its heartbeat.
//!
//! Every branch is cancel-safe: `watch::Receiver::changed`, `Signal::recv`, `mpsc::Receiver::recv` and a `Sleep`
//! are documented cancel-safe, and the socket branch keeps all its state in [`transport::Socket`] (see there). The
//! socket branch comes last, so a burst of statuses from the handlers is queued before it flushes them in one write.
//!
//! With a spool ([`ClientConfig::spool`]), the client opens it when built, hands what it held to the machine
//! before the first step, commits each `Persist` batch on the spool's writer thread (an fsync never delays the
//! loop) and feeds each commit's report back as `Persisted` through one more branch.

pub(crate) mod metrics;
#[cfg(feature = "spool")]
pub(crate) mod spool;
pub(crate) mod transport;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use log::{error, info, warn};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::handler::{HandlerEvent, JobHandler, StatusSender};
use crate::machine::{
    self, Action, Event, Incoming, Input, Machine, Reason, StopCause, StopReason,
};
use crate::protocol::TrustedSignerError;
use crate::protocol::keys::Hotkey;
use crate::protocol::{
    DecodeError, HordeFailureReason, JobRejectionReason, JobStatusUpdate, TrustedSigners,
    decode_server_frame,
};
use crate::ratelimit::{RateLimiter, suppressed_note};

pub use metrics::{CheatForwarding, Metrics, MetricsHandle, Peaks, SpoolMetrics, SpoolSummary};
pub(crate) use transport::Endpoint;
pub use transport::{CaFileError, TransportLimits, UrlError};

/// Everything the client needs to know besides the hotkey and the handler.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The facilitator's WebSocket URL, e.g. `wss://facilitator.computehorde.io/ws/v0/`.
    pub url: String,
    /// Timeouts, backoff and outbox limits of the state machine.
    pub machine: machine::Config,
    /// WebSocket size limits.
    pub limits: TransportLimits,
    /// SS58 addresses whose job requests are trusted, besides the client's own hotkey.
    pub trusted_signers: Vec<String>,
    /// Capacity of the channel from job handlers to the loop (handlers wait when it and the outbox are full).
    pub status_channel_capacity: usize,
    /// Turn SIGINT/SIGTERM into Shutdown (first) and ForceStop (second).
    pub handle_signals: bool,
    /// Value of the `X-Validator-Runner-Version` header.
    pub runner_version: String,
    /// Value of the `X-Validator-Version` header.
    pub validator_version: String,
    /// A PEM file of extra certificate authorities trusted for `wss://`, on top of the public roots (for a
    /// staging or self-hosted facilitator behind a private CA).
    pub ca_file: Option<PathBuf>,
    /// The spool file (`None`, the default: everything is kept in memory only). With a spool, unacknowledged
    /// statuses and running jobs survive a crash: [`Client::new`] opens it (creating it, owner-only, if missing;
    /// see [`crate::spool::Spool::open`]) and the machine's `durable` setting follows this one. The program's
    /// default location is [`crate::spool::default_path`].
    #[cfg(feature = "spool")]
    pub spool: Option<PathBuf>,
}

impl Default for ClientConfig {
    /// Every default; the URL is empty and must be set (or `validate` fails).
    fn default() -> Self {
        let version = format!("facilitator-client/{}", env!("CARGO_PKG_VERSION"));
        ClientConfig {
            url: String::new(),
            machine: machine::Config::default(),
            limits: TransportLimits::default(),
            trusted_signers: Vec::new(),
            status_channel_capacity: 64,
            handle_signals: false,
            runner_version: version.clone(),
            validator_version: version,
            ca_file: None,
            #[cfg(feature = "spool")]
            spool: None,
        }
    }
}

impl ClientConfig {
    /// Defaults for everything but the URL. The version headers carry this crate's version.
    pub fn new(url: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            ..ClientConfig::default()
        }
    }

    /// Checks the settings without connecting anywhere: the machine's ([`machine::Config::validate`]), the URL,
    /// the trusted signers, the limits and the CA file. [`Client::new`] calls it, so a bad configuration is an
    /// error at start-up, never a stuck client.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.machine.validate()?;
        Endpoint::new(&self.url, &self.runner_version, &self.validator_version)?;
        TrustedSigners::new([0; 32], &self.trusted_signers)?;
        if self.limits.max_message_size < 1024 || self.limits.max_frame_size < 1024 {
            return Err(ConfigError::Limits(
                "max_message_size and max_frame_size must be at least 1024 bytes (a job request is about 1 KiB)",
            ));
        }
        if self.status_channel_capacity == 0 {
            return Err(ConfigError::Limits(
                "status_channel_capacity must be at least 1",
            ));
        }
        if let Some(path) = &self.ca_file {
            transport::tls_config_with_ca_file(path)?;
        }
        Ok(())
    }
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A setting of the state machine.
    #[error(transparent)]
    Machine(#[from] machine::ConfigError),
    /// A size or capacity limit.
    #[error("{0}")]
    Limits(&'static str),
    /// The CA file cannot be used.
    #[error(transparent)]
    CaFile(#[from] CaFileError),
    /// The URL is unusable.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// A trusted signer address does not parse.
    #[error(transparent)]
    TrustedSigner(#[from] TrustedSignerError),
    /// Installing the signal handlers failed.
    #[error("cannot install the SIGINT/SIGTERM handlers: {0}")]
    Signals(std::io::Error),
    /// The spool cannot be used (locked by another process, another hotkey's, a newer format, not readable...).
    #[cfg(feature = "spool")]
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolOpenError),
    /// The spool's writer thread could not be started.
    #[cfg(feature = "spool")]
    #[error("cannot start the spool's writer thread: {0}")]
    SpoolWriter(std::io::Error),
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Why the machine stopped.
    pub reason: StopReason,
    /// Status updates never acknowledged by the facilitator, in delivery order.
    pub undelivered: Vec<JobStatusUpdate>,
    /// The final metrics.
    pub metrics: Metrics,
    /// From the shutdown request (or the fatal error) to the end of the run.
    pub stop_latency: Option<Duration>,
    /// How the spool was left, when there is one.
    pub spool: Option<SpoolSummary>,
}

impl Outcome {
    /// The program's exit code: 0 for a requested stop, 130 forced, 1 fatal.
    pub fn exit_code(&self) -> i32 {
        self.reason.exit_code()
    }
}

/// Asks a running client to stop. Cloneable; the first request drains, the second stops at once.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    requests: Arc<watch::Sender<u32>>,
}

impl ShutdownHandle {
    /// Requests a shutdown: the first call drains gracefully, a second stops at once (like a second Ctrl-C).
    pub fn shutdown(&self) {
        self.requests.send_modify(|n| *n = n.saturating_add(1));
    }
}

/// The facilitator client. Build it, take handles ([`Client::shutdown_handle`], [`Client::subscribe`],
/// [`Client::metrics`]), then [`Client::run`] it. Dropping the `run` future stops everything it started: the
/// socket is closed and job handlers are cancelled (their processes killed).
pub struct Client {
    config: ClientConfig,
    endpoint: Endpoint,
    hotkey: Hotkey,
    signers: TrustedSigners,
    handler: Arc<dyn JobHandler>,
    shutdown: ShutdownHandle,
    events: broadcast::Sender<Event>,
    metrics: MetricsHandle,
    observers: Vec<Arc<dyn Observer>>,
    /// The opened spool and what it held, until the run takes them.
    #[cfg(feature = "spool")]
    spool: Option<crate::spool::OpenedSpool>,
}

/// Sees what the loop feeds the machine and what the machine asks for: the hook for measuring and monitoring a
/// run from outside without changing it. See [`Client::observe`].
pub trait Observer: Send + Sync {
    /// The loop is about to step the machine with `input` at `now`.
    fn on_input(&self, input: &Input, now: std::time::Instant);
    /// The machine returned `action` at `now` (called for each, in order, as it is carried out).
    fn on_action(&self, action: &Action, now: std::time::Instant);
}

impl Client {
    /// Checks the configuration and builds a client that will authenticate with `hotkey` and run jobs with
    /// `handler`. With [`ClientConfig::spool`], opens the spool (blocking file I/O, once) and logs its path and
    /// anything it noticed (a corrupt file moved aside, loose permissions).
    pub fn new(
        #[allow(unused_mut)] mut config: ClientConfig,
        hotkey: Hotkey,
        handler: Arc<dyn JobHandler>,
    ) -> Result<Client, ConfigError> {
        config.validate()?;
        #[cfg(feature = "spool")]
        let spool = open_spool(&mut config, &hotkey)?;
        // Without the spool's store in this build, nothing could carry out the machine's `Persist`.
        #[cfg(not(feature = "spool"))]
        {
            config.machine.durable = false;
        }
        let mut endpoint = Endpoint::new(
            &config.url,
            &config.runner_version,
            &config.validator_version,
        )?;
        if let Some(path) = &config.ca_file {
            endpoint = endpoint.with_ca_file(path)?;
        }
        let signers = TrustedSigners::new(hotkey.public_key(), &config.trusted_signers)?;
        let (requests, _) = watch::channel(0);
        let metrics = MetricsHandle::default();
        Ok(Client {
            config,
            endpoint,
            hotkey,
            signers,
            handler,
            shutdown: ShutdownHandle {
                requests: Arc::new(requests),
            },
            events: broadcast::channel(1024).0,
            metrics,
            observers: Vec::new(),
            #[cfg(feature = "spool")]
            spool,
        })
    }

    /// The spool file, if the client has one.
    #[cfg(feature = "spool")]
    pub fn spool_path(&self) -> Option<&std::path::Path> {
        self.spool.as_ref().map(|s| s.spool.path())
    }

    /// Adds an observer that sees every input and action of the run, in order (for example the operations hub,
    /// `ops::Ops`, which measures timings for the Prometheus metrics and tracks health). Observers are called on
    /// the loop: they must be quick and never block.
    pub fn observe(&mut self, observer: Arc<dyn Observer>) {
        self.observers.push(observer);
    }

    /// A handle that requests a shutdown.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// A stream of the machine's events (state changes with reasons, jobs, deliveries). A receiver that falls more
    /// than 1024 events behind misses the oldest ones (`RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// A live view of the metrics.
    pub fn metrics(&self) -> MetricsHandle {
        self.metrics.clone()
    }

    /// Runs until the machine stops (shutdown requested and drained, forced, or a fatal auth rejection).
    pub async fn run(self) -> Result<Outcome, ConfigError> {
        self.run_until(std::future::pending::<()>()).await
    }

    /// Runs until the machine stops; when `until` completes first, that is a shutdown request.
    pub async fn run_until<F: Future>(self, until: F) -> Result<Outcome, ConfigError> {
        let signals = if self.config.handle_signals {
            let int = signal(SignalKind::interrupt()).map_err(ConfigError::Signals)?;
            let term = signal(SignalKind::terminate()).map_err(ConfigError::Signals)?;
            Some((int, term))
        } else {
            None
        };
        Ok(Loop::new(self, signals)?.run(until).await)
    }
}

/// The spool's writer and bookkeeping in the loop (nothing without the `spool` feature).
#[cfg(feature = "spool")]
type SpoolSlot = Option<spool::SpoolDriver>;
#[cfg(not(feature = "spool"))]
type SpoolSlot = Option<std::convert::Infallible>;

/// The next commit report as the machine's input; pending forever without a spool. Cancel-safe (see
/// `SpoolDriver::next`): the report becomes an input in the same poll that receives it.
async fn next_persisted(spool: &mut SpoolSlot) -> Option<Input> {
    #[cfg(feature = "spool")]
    if let Some(driver) = spool {
        let committed = driver.next().await?;
        return Some(driver.on_committed(committed));
    }
    #[cfg(not(feature = "spool"))]
    let _ = spool;
    std::future::pending().await
}

/// The loop's state: the machine and the real things it stands for.
struct Loop {
    client: Client,
    machine: Machine,
    socket: transport::Socket,
    jobs: JoinSet<()>,
    handler_tx: mpsc::Sender<HandlerEvent>,
    handler_rx: mpsc::Receiver<HandlerEvent>,
    shutdown_rx: watch::Receiver<u32>,
    signals: Option<(Signal, Signal)>,
    shutdown_requests: u32,
    stop_requested_at: Option<Instant>,
    ping_sent_at: Option<Instant>,
    /// The socket events of one read, before they become one input (kept to reuse its allocation).
    batch: Vec<transport::SocketEvent>,
    /// The most events one read brought.
    batch_peak: usize,
    /// Repeated warnings a flood could cause, one line per kind per interval.
    warnings: RateLimiter,
    /// Spool failures repeat on a failing disk: one line per minute.
    spool_warnings: RateLimiter,
    spool: SpoolSlot,
    /// One reading of both clocks: wall-clock times (for the spool's records) from the loop's one clock read.
    wall_anchor: (Instant, std::time::SystemTime),
    /// The handler's "pipeline available" signal, while it has one and it lives.
    availability: Option<watch::Receiver<bool>>,
    /// What the machine was last told about the pipeline (it starts out available).
    pipeline_told: bool,
    /// Cheat reports being handed to the handler, off the loop.
    cheat_forwards: JoinSet<()>,
}

/// At most this many socket events are read in one go and given to the machine as one input: it checks their job
/// requests' signatures in one batch, which costs less per job than one check each.
const READ_BATCH: usize = 64;

/// A flood of one kind of warning gives one log line per this interval.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// How long a stop waits for cheat reports still being handed to the handler.
const CHEAT_FORWARD_GRACE: Duration = Duration::from_secs(2);

/// A failing spool is logged at most once per this interval.
const SPOOL_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// What woke the loop.
enum WakeUp {
    Tick,
    ShutdownRequest(u32),
    Socket(transport::Polled),
    Handler(HandlerEvent),
    Persisted(Input),
    /// The handler's pipeline changed (`Some`), or its signal ended (`None`: the handler's driver is gone).
    Pipeline(Option<bool>),
}

/// A change of the handler's "pipeline available" signal against what the machine was last told (`told`); `None`
/// once the signal's sender is gone; pending forever without a signal. Cancel-safe: between the read of the value
/// and the return there is no await, and `changed` is cancel-safe.
async fn pipeline_change(signal: &mut Option<watch::Receiver<bool>>, told: bool) -> Option<bool> {
    let Some(signal) = signal else {
        return std::future::pending().await;
    };
    loop {
        let available = *signal.borrow_and_update();
        if available != told {
            return Some(available);
        }
        if signal.changed().await.is_err() {
            return None;
        }
    }
}

impl Loop {
    #[cfg_attr(not(feature = "spool"), allow(unused_mut))]
    fn new(mut client: Client, signals: Option<(Signal, Signal)>) -> Result<Loop, ConfigError> {
        let started = Instant::now();
        let now = started.into_std();
        let mut config = client.config.machine.clone();
        if config.jitter_seed == machine::Config::default().jitter_seed {
            config.jitter_seed = random_seed();
        }
        #[cfg_attr(not(feature = "spool"), allow(unused_mut))]
        let mut machine = Machine::new(
            config,
            client.hotkey.auth_request(),
            client.signers.clone(),
            now,
        );
        // What a previous process left goes to the machine before its first step.
        #[cfg(feature = "spool")]
        let (spool, recovery) = match client.spool.take() {
            Some(opened) => {
                let recovery = machine.recover(opened.recovered);
                let driver =
                    spool::SpoolDriver::start(opened.spool).map_err(ConfigError::SpoolWriter)?;
                (Some(driver), Some(recovery))
            }
            None => (None, None),
        };
        #[cfg(not(feature = "spool"))]
        let spool = None;
        let (handler_tx, handler_rx) = mpsc::channel(client.config.status_channel_capacity.max(1));
        let shutdown_rx = client.shutdown.requests.subscribe();
        #[cfg_attr(not(feature = "spool"), allow(unused_mut))]
        let mut this = Loop {
            client,
            machine,
            socket: transport::Socket::None,
            jobs: JoinSet::new(),
            handler_tx,
            handler_rx,
            shutdown_rx,
            signals,
            shutdown_requests: 0,
            stop_requested_at: None,
            ping_sent_at: None,
            batch: Vec::with_capacity(READ_BATCH),
            batch_peak: 0,
            warnings: RateLimiter::new(WARNING_INTERVAL),
            spool_warnings: RateLimiter::new(SPOOL_WARNING_INTERVAL),
            spool,
            wall_anchor: (started, std::time::SystemTime::now()),
            availability: None,
            pipeline_told: true,
            cheat_forwards: JoinSet::new(),
        };
        this.availability = this.client.handler.availability();
        #[cfg(feature = "spool")]
        if let Some(recovery) = recovery {
            this.take_over(recovery);
        }
        Ok(this)
    }

    /// Acts on what the machine recovered from the spool: logs it, kills what is left of the previous process's
    /// `exec:` jobs (only a group whose leader's start time matches the record, or whose members all fit it), and
    /// re-attaches the jobs whose work outlives the client, or reports each one its handler cannot follow.
    #[cfg(feature = "spool")]
    fn take_over(&mut self, recovery: machine::Recovery) {
        use crate::handler::orphans::{self, Orphans};
        info!("{recovery}");
        for group in &recovery.kill {
            match orphans::kill_orphaned_group(group.pgid, group.start_time) {
                Ok(outcome @ Orphans::Killed { .. }) => warn!(
                    "process group {} of a job the previous client process ran: {outcome}",
                    group.pgid
                ),
                Ok(outcome) => info!(
                    "process group {} of a job the previous client process ran: {outcome}",
                    group.pgid
                ),
                Err(e) => warn!(
                    "cannot check process group {} of a job the previous client process ran: {e}",
                    group.pgid
                ),
            }
        }
        for resume in recovery.resume {
            let uuid = resume.job.uuid().to_owned();
            let statuses = StatusSender::new(uuid.clone(), self.handler_tx.clone());
            let accepted_at = (resume.accepted_at_unix_ms > 0)
                .then(|| std::time::UNIX_EPOCH + Duration::from_millis(resume.accepted_at_unix_ms));
            let handler = &self.client.handler;
            let run = match handler.resume(
                resume.job,
                &resume.handler,
                accepted_at,
                statuses.clone(),
            ) {
                Some(run) => {
                    info!("job {uuid}: re-attached to its work after the restart");
                    run
                }
                None => {
                    let message = format!(
                        "the validator's facilitator client restarted while the job ran, and its {} handler \
                         cannot re-attach to the job's work ({:?})",
                        handler.name(),
                        resume.handler
                    );
                    warn!("job {uuid}: {message}");
                    Box::pin(async move {
                        let update = JobStatusUpdate::horde_failed(
                            statuses.uuid(),
                            HordeFailureReason::GenericError,
                            message,
                            None,
                        );
                        let _ = statuses.send(update).await;
                    })
                }
            };
            self.spawn_job(uuid, run);
        }
    }

    /// Runs one job's handler as its own task; a panic becomes `horde_failed`, and `Finished` always follows.
    fn spawn_job(&mut self, uuid: String, run: crate::handler::BoxFuture) {
        let tx = self.handler_tx.clone();
        self.jobs.spawn(async move {
            if let Err(panic) = AssertUnwindSafe(run).catch_unwind().await {
                let message = panic_message(&panic);
                error!("job handler for {uuid} panicked: {message}");
                let update = JobStatusUpdate::horde_failed(
                    uuid.clone(),
                    HordeFailureReason::UnhandledException,
                    format!("job handler panicked: {message}"),
                    None,
                );
                let _ = tx.send(HandlerEvent::Status(update)).await;
            }
            let _ = tx.send(HandlerEvent::Finished(uuid)).await;
        });
    }

    async fn run<F: Future>(mut self, until: F) -> Outcome {
        let until = until.fuse();
        tokio::pin!(until);
        let sleep = tokio::time::sleep_until(Instant::now());
        tokio::pin!(sleep);
        let mut armed: Option<std::time::Instant> = None;
        let mut seen_requests = *self.shutdown_rx.borrow();
        info!(
            "facilitator client starting: {} as {}",
            self.client.endpoint.url(),
            self.client.hotkey.ss58()
        );
        let reason = loop {
            // One timer, reset only when the machine's deadline changes.
            let deadline = self.machine.poll_timeout().map(|(at, _)| at);
            if deadline != armed {
                if let Some(at) = deadline {
                    sleep.as_mut().reset(Instant::from_std(at));
                }
                armed = deadline;
            }
            let accepts_statuses = self.machine.accepts_statuses();
            // Statuses of running jobs may be on their way: let them join the next write.
            let yield_first = self.machine.running_job_count() > 0;
            let wake = tokio::select! {
                biased;
                changed = self.shutdown_rx.changed() => match changed {
                    Ok(()) => {
                        // Requests made since the last turn (two quick ones count as two: stop at once).
                        let total = *self.shutdown_rx.borrow_and_update();
                        let new = total.saturating_sub(seen_requests);
                        seen_requests = total;
                        WakeUp::ShutdownRequest(new)
                    }
                    // Unreachable while `self.client` holds the sender; counted as a request rather than spun on.
                    Err(_) => WakeUp::ShutdownRequest(1),
                },
                Some(()) = recv_signal(&mut self.signals) => WakeUp::ShutdownRequest(1),
                _ = &mut until => WakeUp::ShutdownRequest(1),
                () = &mut sleep, if armed.is_some() => WakeUp::Tick,
                Some(input) = next_persisted(&mut self.spool) => WakeUp::Persisted(input),
                change = pipeline_change(&mut self.availability, self.pipeline_told) => WakeUp::Pipeline(change),
                Some(event) = self.handler_rx.recv(), if accepts_statuses => WakeUp::Handler(event),
                polled = std::future::poll_fn(|cx| {
                    self.socket.poll(cx, &mut self.batch, READ_BATCH, yield_first)
                }), if self.socket.is_active() => WakeUp::Socket(polled),
            };
            // The one clock read of this turn.
            let now = Instant::now();
            let input = match wake {
                WakeUp::Tick => Input::Tick,
                WakeUp::ShutdownRequest(0) => continue,
                WakeUp::ShutdownRequest(new) => self.shutdown_request(new, now),
                WakeUp::Socket(transport::Polled::Read) => match self.take_batch(now) {
                    Some(input) => input,
                    None => continue,
                },
                WakeUp::Socket(transport::Polled::Flushed) => continue,
                WakeUp::Socket(transport::Polled::Failed(event)) => {
                    match self.socket_input(event, now) {
                        Some(input) => input,
                        None => continue,
                    }
                }
                WakeUp::Persisted(input) => input,
                WakeUp::Pipeline(Some(available)) => {
                    self.pipeline_told = available;
                    Input::PipelineAvailable(available)
                }
                WakeUp::Pipeline(None) => {
                    // The handler can no longer say whether its pipeline works, nor reach it: refuse jobs from now.
                    error!(
                        "the {} handler's pipeline signal ended: job requests are refused from now on",
                        self.client.handler.name()
                    );
                    self.availability = None;
                    if !self.pipeline_told {
                        continue;
                    }
                    self.pipeline_told = false;
                    Input::PipelineAvailable(false)
                }
                WakeUp::Handler(HandlerEvent::Status(update)) => Input::Status(update),
                WakeUp::Handler(HandlerEvent::Attached { uuid, handler }) => {
                    Input::JobAttached { uuid, handler }
                }
                WakeUp::Handler(HandlerEvent::Finished(uuid)) => {
                    // Reap finished tasks so the JoinSet does not grow with the number of jobs.
                    while self.jobs.try_join_next().is_some() {}
                    Input::JobFinished(uuid)
                }
            };
            for observer in &self.client.observers {
                observer.on_input(&input, now.into_std());
            }
            let actions = self.machine.step(input, now.into_std());
            if let Some(reason) = self.execute(actions, now) {
                break reason;
            }
        };
        self.finish(reason).await
    }

    /// A shutdown request (the first drains, a second stops at once).
    fn shutdown_request(&mut self, new: u32, now: Instant) -> Input {
        self.shutdown_requests = self.shutdown_requests.saturating_add(new);
        if self.stop_requested_at.is_none() {
            self.stop_requested_at = Some(now);
        }
        if self.shutdown_requests >= 2 {
            info!("second shutdown request: stopping now");
            Input::ForceStop
        } else {
            info!("shutdown requested: draining (request again to stop at once)");
            Input::Shutdown
        }
    }

    /// Turns the events of one read into one input: the socket's opening or end alone (the socket never puts one
    /// behind messages in a batch), or every message read as [`Input::Frames`].
    fn take_batch(&mut self, now: Instant) -> Option<Input> {
        let mut events = std::mem::take(&mut self.batch);
        self.batch_peak = self.batch_peak.max(events.len());
        let input = match events.first() {
            Some(transport::SocketEvent::Message(_)) => {
                let frames: Vec<Incoming> = events
                    .drain(..)
                    .filter_map(|event| self.incoming(event, now))
                    .collect();
                (!frames.is_empty()).then_some(Input::Frames(frames))
            }
            Some(_) => events.pop().and_then(|event| self.socket_input(event, now)),
            None => None,
        };
        events.clear();
        self.batch = events;
        input
    }

    /// Turns a socket event that is not a message into an input.
    fn socket_input(&mut self, event: transport::SocketEvent, now: Instant) -> Option<Input> {
        use transport::SocketEvent;
        Some(match event {
            SocketEvent::Opened => Input::SocketOpened,
            SocketEvent::OpenFailed(why) | SocketEvent::Failed(why) => Input::SocketFailed(why),
            SocketEvent::Closed(code) => Input::SocketClosed(code),
            SocketEvent::Message(_) => {
                return self
                    .incoming(event, now)
                    .map(|frame| Input::Frames(vec![frame]));
            }
        })
    }

    /// Decodes a message read from the socket; `None` for those the machine does not care about.
    fn incoming(&mut self, event: transport::SocketEvent, now: Instant) -> Option<Incoming> {
        use transport::SocketEvent;
        let limit = self.client.config.limits.max_message_size;
        let metrics = &self.client.metrics;
        Some(match event {
            SocketEvent::Message(Message::Text(text)) => {
                match decode_server_frame(text.as_str(), limit) {
                    Ok(message) => {
                        metrics.count_in(message.message_type());
                        Incoming::Message(message)
                    }
                    Err(error) => {
                        metrics.count_in("undecodable");
                        Incoming::Undecodable(error)
                    }
                }
            }
            SocketEvent::Message(Message::Binary(_)) => {
                metrics.count_in("binary");
                Incoming::Undecodable(DecodeError::Binary)
            }
            SocketEvent::Message(Message::Pong(_)) => {
                if let Some(sent) = self.ping_sent_at.take() {
                    metrics.set_rtt(now - sent);
                }
                Incoming::Pong
            }
            // Pings are answered by tungstenite; raw frames never surface when reading messages.
            SocketEvent::Message(Message::Ping(_) | Message::Frame(_) | Message::Close(_)) => {
                return None;
            }
            SocketEvent::Opened
            | SocketEvent::OpenFailed(_)
            | SocketEvent::Failed(_)
            | SocketEvent::Closed(_) => return None,
        })
    }

    /// Carries out the machine's actions in order. Returns the stop reason once the machine has stopped.
    fn execute(&mut self, actions: Vec<Action>, now: Instant) -> Option<StopReason> {
        let mut stopped = None;
        for action in actions {
            for observer in &self.client.observers {
                observer.on_action(&action, now.into_std());
            }
            match action {
                Action::Open => self
                    .socket
                    .open(&self.client.endpoint, self.client.config.limits),
                Action::Send(message) => {
                    let name = message.message_type();
                    if self.socket.send(Message::text(message.to_json())) {
                        self.client.metrics.count_out(name);
                    } else {
                        error!(
                            "bug: the machine sent {name} with no open socket; the message stays unacknowledged"
                        );
                    }
                }
                Action::Ping => {
                    if self.socket.send(Message::Ping(Default::default())) {
                        self.ping_sent_at = Some(now);
                    }
                }
                Action::Close(code) => {
                    self.socket.close(code);
                }
                Action::Abort => self.socket.abort(),
                Action::Dispatch(job) => {
                    let uuid = job.uuid().to_owned();
                    let statuses = StatusSender::new(uuid.clone(), self.handler_tx.clone());
                    let run = self.client.handler.run(job, statuses);
                    self.spawn_job(uuid, run);
                }
                Action::CancelJobs => {
                    info!("cancelling {} running job(s)", self.jobs.len());
                    self.jobs.abort_all();
                }
                Action::Emit(event) => {
                    let limiter = match event {
                        Event::SpoolCommitFailed { .. } => &mut self.spool_warnings,
                        _ => &mut self.warnings,
                    };
                    log_event(&event, limiter, now);
                    let _ = self.client.events.send(event);
                }
                Action::Persist { id, batch } => {
                    let wall =
                        self.wall_anchor.1 + now.saturating_duration_since(self.wall_anchor.0);
                    match &mut self.spool {
                        #[cfg(feature = "spool")]
                        Some(driver) => driver.submit(id, batch, wall),
                        // `machine.durable` is on exactly when there is a spool (`Client::new`).
                        _ => {
                            let _ = (batch, wall);
                            error!(
                                "bug: the machine asked to persist spool batch {id} but this client has no spool"
                            );
                        }
                    }
                }
                Action::ForwardCheatReport(report) => self.forward_cheat_report(report),
                Action::Stop(reason) => stopped = Some(reason),
            }
        }
        self.client
            .metrics
            .update(&self.machine, self.batch_peak, self.socket.backlog());
        #[cfg(feature = "spool")]
        if let Some(driver) = &self.spool {
            // The operations hub reads these from the metrics at scrape time.
            self.client
                .metrics
                .set_spool(driver.metrics(&self.machine, now.into_std()));
        }
        stopped
    }

    /// Hands a verified cheat report to the handler on a task of its own (never waits on the loop), and logs and
    /// counts what became of it.
    fn forward_cheat_report(&mut self, report: crate::protocol::JobCheated) {
        while self.cheat_forwards.try_join_next().is_some() {}
        let job = report.job_uuid.clone();
        let Some(forward) = self.client.handler.cheated(report) else {
            info!(
                "cheat report for job {job}: the {} handler takes no cheat reports (see --celery-cheated-task); \
                 logged only",
                self.client.handler.name()
            );
            self.client.metrics.count_cheat_forward(None);
            return;
        };
        let metrics = self.client.metrics.clone();
        self.cheat_forwards.spawn(async move {
            match forward.await {
                Ok(where_to) => {
                    info!("cheat report for job {job}: {where_to}");
                    metrics.count_cheat_forward(Some(true));
                }
                Err(problem) => {
                    warn!("cheat report for job {job} not handed on: {problem}");
                    metrics.count_cheat_forward(Some(false));
                }
            }
        });
    }

    async fn finish(mut self, reason: StopReason) -> Outcome {
        self.socket.abort();
        for (kind, held) in self
            .warnings
            .take_expired(Instant::now().into_std() + WARNING_INTERVAL)
        {
            warn!("{held} more warning(s) of this kind held back: {kind}");
        }
        // Cancel what still runs and wait for it, so no handler process outlives the client.
        self.jobs.shutdown().await;
        // Cheat reports on their way get a short, bounded while to arrive (each hand-off has its own timeout); none
        // after a forced stop, which must not wait for Redis.
        let grace = if matches!(reason, StopReason::Forced) {
            Duration::ZERO
        } else {
            CHEAT_FORWARD_GRACE
        };
        let forwards = async { while self.cheat_forwards.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, forwards).await.is_err() {
            warn!(
                "{} cheat report(s) still being handed on at the stop: abandoned",
                self.cheat_forwards.len()
            );
            self.cheat_forwards.shutdown().await;
        }
        // Statuses handlers sent that the loop never took: hand them to the machine, which keeps them as
        // undelivered, so they are reported rather than lost.
        let now = Instant::now();
        while let Ok(event) = self.handler_rx.try_recv() {
            if let HandlerEvent::Status(update) = event {
                let _ = self.machine.step(Input::Status(update), now.into_std());
            }
        }
        self.client.metrics.update(&self.machine, 0, 0);
        let undelivered: Vec<JobStatusUpdate> = self.machine.undelivered().cloned().collect();
        let stop_latency = self.stop_requested_at.map(|at| now - at);
        // The writer commits the last batch (the stop's), then the file is either up to date or says why not.
        let spool: Option<SpoolSummary> = match self.spool.take() {
            #[cfg(feature = "spool")]
            Some(driver) => Some(driver.finish(&self.machine, spool::FINISH_WITHIN).await),
            _ => None,
        };
        let level = match (&spool, reason.exit_code()) {
            (_, code) if code != 0 => log::Level::Error,
            (Some(summary), _) if !summary.up_to_date => log::Level::Warn,
            _ => log::Level::Info,
        };
        log::log!(
            level,
            "stopped ({reason}): {} status update(s) delivered, {} undelivered{}{}",
            self.machine.counters().statuses_delivered,
            undelivered.len(),
            stop_latency
                .map(|d| format!(
                    ", {:.1} ms after the shutdown request",
                    d.as_secs_f64() * 1e3
                ))
                .unwrap_or_default(),
            spool
                .as_ref()
                .map(|summary| format!("; {summary}"))
                .unwrap_or_default()
        );
        Outcome {
            reason,
            undelivered,
            metrics: self.client.metrics.snapshot(),
            stop_latency,
            spool,
        }
    }
}

/// Opens the configured spool, if any, and makes the machine durable exactly when there is one.
#[cfg(feature = "spool")]
fn open_spool(
    config: &mut ClientConfig,
    hotkey: &Hotkey,
) -> Result<Option<crate::spool::OpenedSpool>, ConfigError> {
    config.machine.durable = config.spool.is_some();
    let Some(path) = &config.spool else {
        return Ok(None);
    };
    let identity = crate::spool::SpoolIdentity {
        hotkey_ss58: hotkey.ss58(),
        url: config.url.clone(),
    };
    let opened = crate::spool::Spool::open(path, &identity)?;
    info!("spool: {}", path.display());
    for notice in &opened.notices {
        if notice.is_error() {
            error!("{notice}");
        } else {
            warn!("{notice}");
        }
    }
    Ok(Some(opened))
}

async fn recv_signal(signals: &mut Option<(Signal, Signal)>) -> Option<()> {
    match signals {
        Some((int, term)) => {
            tokio::select! {
                s = int.recv() => s,
                s = term.recv() => s,
            }
        }
        None => std::future::pending().await,
    }
}

/// Logs one event, in its one rendering (`Display`), at the level it deserves; what a flood repeats (ignored
/// frames, refused or unanswered job requests) at most once per kind per interval.
fn log_event(event: &Event, warnings: &mut RateLimiter, now: Instant) {
    use log::Level;
    let (level, flood_kind) = match event {
        Event::StateChanged { from, to, reason } => match reason {
            Reason::SocketOpened => (Level::Debug, None),
            Reason::DrainDeadlinePassed { .. } => (Level::Warn, None),
            _ if from == to => (Level::Info, None),
            Reason::Stopped {
                cause: StopCause::SignatureInvalid | StopCause::ClosedSignatureInvalid,
                ..
            } => (Level::Error, None),
            _ => (Level::Info, None),
        },
        Event::JobAccepted { .. } => (Level::Info, None),
        Event::JobRejected { reason, .. } => (
            Level::Warn,
            Some(match reason {
                JobRejectionReason::Busy => "job requests rejected (busy)",
                JobRejectionReason::InvalidSignature => "job requests rejected (invalid_signature)",
                _ => "job requests rejected (invalid)",
            }),
        ),
        Event::StatusDelivered { .. } => (Level::Debug, None),
        Event::StatusRefused { .. } => (Level::Warn, None),
        Event::CheatReport { .. } => (Level::Info, None),
        Event::PipelineChanged {
            available: false, ..
        } => (Level::Warn, None),
        Event::PipelineChanged { .. } => (Level::Info, None),
        Event::JobUnanswered { .. } => (
            Level::Warn,
            Some("job requests not answered: the outbox is full"),
        ),
        Event::Ignored(what) => (Level::Warn, Some(what.kind())),
        Event::SpoolCommitFailed { .. } => (Level::Error, Some("spool commits failed")),
        Event::SpoolUpToDate { .. } => (Level::Info, None),
    };
    if !log::log_enabled!(level) {
        return;
    }
    let note = match flood_kind {
        None => String::new(),
        Some(kind) => match warnings.check(kind, now.into_std()) {
            Some(held) => suppressed_note(held),
            None => return,
        },
    };
    // The structured fields JSON logs carry as keys (text logs show only the message).
    match event {
        Event::StateChanged { from, to, reason } => log::log!(
            level,
            from = from.as_str(),
            to = to.as_str(),
            reason:% = reason;
            "{event}{note}"
        ),
        Event::JobRejected { uuid, reason, .. } => log::log!(
            level,
            job_uuid = uuid.as_str(),
            reason:% = reason;
            "{event}{note}"
        ),
        _ => match event.job_uuid() {
            Some(uuid) => log::log!(level, job_uuid = uuid; "{event}{note}"),
            None => log::log!(level, "{event}{note}"),
        },
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// A seed for the backoff jitter, different for every process.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}
