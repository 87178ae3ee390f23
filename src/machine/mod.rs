//! The pure state machine: every lifecycle decision of the client.
//!
//! `Machine::step(input, now)` takes one [`Input`] and the current time and returns the [`Action`]s for the driver
//! to carry out; [`Machine::poll_timeout`] says when the machine next needs a [`Input::Tick`]. The machine owns the
//! outbox, the in-flight FIFO, the set of running jobs, the reconnect backoff and the counters.
//!
//! It must never do I/O, read the clock, spawn, or sleep: that is what makes it testable on simulated time,
//! fuzzable and embeddable. `states/transitions.json` is the table of what each (state, input) pair may do, and the
//! tests hold this code to it.

mod backoff;
mod outbox;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backoff::Backoff;
pub use backoff::BackoffConfig;
use outbox::Outbox;

use crate::protocol::{
    AuthenticationRequest, ClientMessage, DecodeError, HordeFailureReason, JobRejectionReason,
    JobRequest, JobSignatureError, JobStatus, JobStatusUpdate, Response, ServerMessage,
    TrustedSigners, close_code, error_type,
};

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

/// Where the machine is. Only the states that need data carry it.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// No socket; waiting for the backoff deadline.
    Disconnected {
        /// When the next connection attempt starts.
        retry_at: Instant,
    },
    /// Opening a socket, then authenticating on it.
    Connecting {
        /// Whether the socket is open and the auth request sent.
        phase: ConnectPhase,
        /// The connect timeout: the auth Response must have arrived by then.
        deadline: Instant,
    },
    /// Authenticated: jobs flow in, statuses flow out, heartbeats tick.
    Running {
        /// When authentication succeeded (for the backoff's stability rule).
        since: Instant,
        /// Heartbeat and peer-silence deadlines.
        link: Link,
        /// Whether this connection has done useful work: a status acknowledged or a job request received. A
        /// connection that did leaves the backoff at its first step when it drops (a Pong is not progress: the
        /// WebSocket layer answers Pings even when the facilitator's application is broken).
        progress: bool,
    },
    /// Shutdown requested: no new jobs, in-flight ones may finish, the outbox is flushed, then the close handshake.
    Draining {
        /// Heartbeat and peer-silence deadlines.
        link: Link,
        /// How far the drain has got.
        phase: DrainPhase,
    },
    /// Terminal and absorbing.
    Stopped {
        /// Why the machine stopped.
        reason: StopReason,
    },
}

/// The two halves of Connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectPhase {
    /// TCP/TLS/WebSocket handshake under way (`Action::Open` issued).
    Opening,
    /// Socket open, auth request sent, waiting for its Response.
    Authenticating,
}

/// Liveness deadlines of an authenticated connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// When the next heartbeat is due.
    pub next_heartbeat: Instant,
    /// When the peer counts as dead unless something arrives before.
    pub silent_deadline: Instant,
    /// When the oldest unanswered Ping counts as lost; `None` while every Ping is answered. Frames arriving prove
    /// only the peer-to-us direction: a peer that stopped reading (a half-open link, or a facilitator stuck while
    /// its pushes still drain) never answers, and would otherwise keep the link "alive" with statuses stuck.
    pub pong_deadline: Option<Instant>,
}

impl Link {
    /// When the peer counts as dead, and why: nothing heard, or a Ping unanswered (on a tie, nothing heard).
    pub fn dead_at(&self) -> (Instant, &'static str) {
        match self.pong_deadline {
            Some(at) if at < self.silent_deadline => (at, "Ping unanswered"),
            _ => (self.silent_deadline, "peer silent"),
        }
    }
}

/// The stages of Draining, each with its own deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainPhase {
    /// Waiting for running jobs and unacknowledged statuses, until the drain deadline.
    Flushing {
        /// The drain deadline.
        deadline: Instant,
    },
    /// The drain deadline passed: jobs were cancelled and reported `horde_failed`; waiting for those reports'
    /// Responses until `deadline`, then closing anyway.
    Cancelling {
        /// When to give up waiting and close.
        deadline: Instant,
        /// The end of the close timeout.
        close_by: Instant,
    },
    /// Close frame sent; waiting for the peer's close until `deadline`.
    Closing {
        /// The end of the close timeout.
        deadline: Instant,
        /// The close code sent.
        code: u16,
    },
}

/// Why the machine stopped. Decides the program's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// Shutdown requested; everything was delivered and the connection closed cleanly.
    Graceful,
    /// Shutdown requested; the drain deadline passed with jobs or statuses left.
    DrainTimedOut,
    /// Shutdown requested while not connected: stopped at once.
    ShutdownWhileDisconnected,
    /// Shutdown requested; the connection was lost while draining.
    ConnectionLostWhileDraining,
    /// Second signal: stopped at once.
    Forced,
    /// The facilitator rejected the hotkey's signature (`auth.signature_invalid`, close 3000): fatal.
    AuthRejected,
}

impl StopReason {
    /// The program's exit code for this reason: 0 for a requested stop, 130 forced, 1 fatal.
    pub fn exit_code(self) -> i32 {
        match self {
            StopReason::Graceful
            | StopReason::DrainTimedOut
            | StopReason::ShutdownWhileDisconnected
            | StopReason::ConnectionLostWhileDraining => 0,
            StopReason::Forced => 130,
            StopReason::AuthRejected => 1,
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopReason::Graceful => "graceful",
            StopReason::DrainTimedOut => "drain timed out",
            StopReason::ShutdownWhileDisconnected => "shutdown while disconnected",
            StopReason::ConnectionLostWhileDraining => "connection lost while draining",
            StopReason::Forced => "forced",
            StopReason::AuthRejected => {
                "the facilitator rejected this hotkey's signature (auth.signature_invalid): \
                 check --wallet-name/--hotkey-name or FACILITATOR_HOTKEY_SEED"
            }
        })
    }
}

/// The five state kinds, as named in `states/transitions.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StateKind {
    Disconnected,
    Connecting,
    Running,
    Draining,
    Stopped,
}

impl StateKind {
    /// Every state kind, in lifecycle order.
    pub const ALL: [StateKind; 5] = [
        StateKind::Disconnected,
        StateKind::Connecting,
        StateKind::Running,
        StateKind::Draining,
        StateKind::Stopped,
    ];

    /// The name used in the table and the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            StateKind::Disconnected => "Disconnected",
            StateKind::Connecting => "Connecting",
            StateKind::Running => "Running",
            StateKind::Draining => "Draining",
            StateKind::Stopped => "Stopped",
        }
    }
}

impl fmt::Display for StateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl State {
    /// The kind of this state.
    pub fn kind(&self) -> StateKind {
        match self {
            State::Disconnected { .. } => StateKind::Disconnected,
            State::Connecting { .. } => StateKind::Connecting,
            State::Running { .. } => StateKind::Running,
            State::Draining { .. } => StateKind::Draining,
            State::Stopped { .. } => StateKind::Stopped,
        }
    }

    /// Whether a socket is open or being opened.
    pub fn has_socket(&self) -> bool {
        matches!(
            self,
            State::Connecting { .. } | State::Running { .. } | State::Draining { .. }
        )
    }

    /// Whether the connection is authenticated (statuses may be sent).
    pub fn is_authenticated(&self) -> bool {
        matches!(self, State::Running { .. } | State::Draining { .. })
    }

    /// Whether the machine has stopped.
    pub fn is_stopped(&self) -> bool {
        matches!(self, State::Stopped { .. })
    }
}

/// Everything that can happen to the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The deadline from [`Machine::poll_timeout`] passed.
    Tick,
    /// The WebSocket handshake completed (after `Action::Open`).
    SocketOpened,
    /// Opening, reading or writing the socket failed.
    SocketFailed(String),
    /// A decoded text frame from the facilitator.
    Frame(ServerMessage),
    /// A frame that could not be decoded (including binary frames).
    Undecodable(DecodeError),
    /// A WebSocket Pong arrived.
    Pong,
    /// What one read of the socket brought, in order: the machine checks the signatures of the job requests among
    /// them in one batch (cheaper per job than one check each), then handles each as its own input.
    Frames(Vec<Incoming>),
    /// The peer closed the connection (with its close code, if it sent one).
    SocketClosed(Option<u16>),
    /// A job handler produced a status update.
    Status(JobStatusUpdate),
    /// A job handler finished (it will produce no more statuses).
    JobFinished(String),
    /// First shutdown signal, or the API's shutdown handle.
    Shutdown,
    /// Second shutdown signal.
    ForceStop,
}

/// One thing read from the socket, as part of [`Input::Frames`].
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A decoded text frame (as [`Input::Frame`]).
    Message(ServerMessage),
    /// A frame that could not be decoded (as [`Input::Undecodable`]).
    Undecodable(DecodeError),
    /// A WebSocket Pong (as [`Input::Pong`]).
    Pong,
}

/// The input kinds, as named in `states/transitions.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InputKind {
    Tick,
    SocketOpened,
    SocketFailed,
    Frame,
    Undecodable,
    Pong,
    Frames,
    SocketClosed,
    Status,
    JobFinished,
    Shutdown,
    ForceStop,
}

impl InputKind {
    /// Every input kind.
    pub const ALL: [InputKind; 12] = [
        InputKind::Tick,
        InputKind::SocketOpened,
        InputKind::SocketFailed,
        InputKind::Frame,
        InputKind::Undecodable,
        InputKind::Pong,
        InputKind::Frames,
        InputKind::SocketClosed,
        InputKind::Status,
        InputKind::JobFinished,
        InputKind::Shutdown,
        InputKind::ForceStop,
    ];

    /// The name used in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            InputKind::Tick => "Tick",
            InputKind::SocketOpened => "SocketOpened",
            InputKind::SocketFailed => "SocketFailed",
            InputKind::Frame => "Frame",
            InputKind::Undecodable => "Undecodable",
            InputKind::Pong => "Pong",
            InputKind::Frames => "Frames",
            InputKind::SocketClosed => "SocketClosed",
            InputKind::Status => "Status",
            InputKind::JobFinished => "JobFinished",
            InputKind::Shutdown => "Shutdown",
            InputKind::ForceStop => "ForceStop",
        }
    }
}

impl Input {
    /// The kind of this input.
    pub fn kind(&self) -> InputKind {
        match self {
            Input::Tick => InputKind::Tick,
            Input::SocketOpened => InputKind::SocketOpened,
            Input::SocketFailed(_) => InputKind::SocketFailed,
            Input::Frame(_) => InputKind::Frame,
            Input::Undecodable(_) => InputKind::Undecodable,
            Input::Pong => InputKind::Pong,
            Input::Frames(_) => InputKind::Frames,
            Input::SocketClosed(_) => InputKind::SocketClosed,
            Input::Status(_) => InputKind::Status,
            Input::JobFinished(_) => InputKind::JobFinished,
            Input::Shutdown => InputKind::Shutdown,
            Input::ForceStop => InputKind::ForceStop,
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Open a socket to the facilitator (TCP, TLS, WebSocket handshake); report `SocketOpened` or `SocketFailed`.
    Open,
    /// Send one message as a text frame.
    Send(ClientMessage),
    /// Send a WebSocket Ping.
    Ping,
    /// Start the close handshake with this code.
    Close(u16),
    /// Drop the socket without a handshake.
    Abort,
    /// Start a job handler for this job.
    Dispatch(Arc<JobRequest>),
    /// Cancel every running job handler (kill their processes).
    CancelJobs,
    /// Tell the outside world something happened (logs, metrics, event stream).
    Emit(Event),
    /// The machine stopped: the driver ends.
    Stop(StopReason),
}

/// The action kinds, as named in `states/transitions.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActionKind {
    Open,
    Send,
    Ping,
    Close,
    Abort,
    Dispatch,
    CancelJobs,
    Emit,
    Stop,
}

impl ActionKind {
    /// The name used in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Open => "Open",
            ActionKind::Send => "Send",
            ActionKind::Ping => "Ping",
            ActionKind::Close => "Close",
            ActionKind::Abort => "Abort",
            ActionKind::Dispatch => "Dispatch",
            ActionKind::CancelJobs => "CancelJobs",
            ActionKind::Emit => "Emit",
            ActionKind::Stop => "Stop",
        }
    }
}

impl Action {
    /// The kind of this action.
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::Open => ActionKind::Open,
            Action::Send(_) => ActionKind::Send,
            Action::Ping => ActionKind::Ping,
            Action::Close(_) => ActionKind::Close,
            Action::Abort => ActionKind::Abort,
            Action::Dispatch(_) => ActionKind::Dispatch,
            Action::CancelJobs => ActionKind::CancelJobs,
            Action::Emit(_) => ActionKind::Emit,
            Action::Stop(_) => ActionKind::Stop,
        }
    }
}

/// Observability: what happened and why.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The state changed.
    StateChanged {
        /// The previous state kind.
        from: StateKind,
        /// The new state kind.
        to: StateKind,
        /// Why, in words.
        reason: String,
    },
    /// A job was accepted and dispatched (`received` queued).
    JobAccepted {
        /// The job's UUID.
        uuid: String,
    },
    /// A job was refused (`rejected` queued).
    JobRejected {
        /// The job's UUID.
        uuid: String,
        /// The rejection reason sent.
        reason: JobRejectionReason,
        /// The message sent.
        message: String,
    },
    /// The facilitator stored a status update (or had already stored it: a re-send answered with
    /// `job.integrity_error`).
    StatusDelivered {
        /// The job's UUID.
        uuid: String,
        /// The status delivered.
        status: JobStatus,
        /// How many times it was sent.
        sends: u32,
    },
    /// The facilitator refused a status update; it is not retried.
    StatusRefused {
        /// The job's UUID.
        uuid: String,
        /// The status refused.
        status: JobStatus,
        /// The error type of the Response (e.g. `job.not_found`).
        error: String,
    },
    /// A verified (or unverifiable) cheat report; only logged, as the reference validator does.
    CheatReport {
        /// The cheated job.
        job_uuid: String,
        /// Whether its signature verified from a trusted signer.
        trusted: bool,
    },
    /// The drain deadline passed: running jobs were cancelled (each reported `horde_failed`).
    DrainDeadlinePassed {
        /// Jobs cancelled.
        jobs_cancelled: usize,
        /// Status updates not yet acknowledged, the cancelled jobs' reports included.
        unacknowledged: usize,
    },
    /// A job request was not answered because the outbox was full; the facilitator's own timeout fails it.
    JobUnanswered {
        /// The job's UUID.
        uuid: String,
    },
    /// Something arrived that was ignored (counted in the metrics).
    Ignored {
        /// What, and why it was ignored.
        what: String,
    },
}

/// Counters kept by the machine: everything the metrics snapshot needs that the machine decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connection attempts started (`Open` issued).
    pub connects: u64,
    /// Successful authentications.
    pub authentications: u64,
    /// Successful authentications after the first.
    pub reconnects: u64,
    /// Attempts that ended without authentication (auth error, timeout, socket failure, garbage reply).
    pub auth_failures: u64,
    /// Authenticated connections that were lost (socket failed or closed, peer silent).
    pub disconnects: u64,
    /// Status updates accepted into the outbox.
    pub statuses_accepted: u64,
    /// Status updates written to a socket, counting re-sends.
    pub statuses_sent: u64,
    /// Sends of a status that had been sent before.
    pub statuses_resent: u64,
    /// Status updates stored by the facilitator.
    pub statuses_delivered: u64,
    /// Status updates refused by the facilitator (`job.not_found`, other errors); not retried.
    pub statuses_refused: u64,
    /// Status updates accepted after the machine stopped (reported undelivered).
    pub statuses_after_stop: u64,
    /// Job requests accepted and dispatched.
    pub jobs_accepted: u64,
    /// Job requests rejected: bad, missing or untrusted signature.
    pub jobs_rejected_signature: u64,
    /// Job requests rejected because the client is draining.
    pub jobs_rejected_busy: u64,
    /// Job requests rejected (`busy`) because `max_running_jobs` jobs were running.
    pub jobs_rejected_full: u64,
    /// Job requests not answered at all because the outbox was full (the facilitator's own timeout fails them).
    pub jobs_unanswered: u64,
    /// Job requests rejected because they failed validation.
    pub jobs_rejected_invalid: u64,
    /// Job requests for a job already running (ignored).
    pub jobs_duplicate: u64,
    /// Jobs cancelled at the drain deadline or on a stop.
    pub jobs_cancelled: u64,
    /// Frames that could not be decoded (including binary frames).
    pub decode_errors: u64,
    /// Binary frames (ignored).
    pub binary_frames: u64,
    /// Responses with nothing in flight (ignored).
    pub unexpected_responses: u64,
    /// Cheat reports received.
    pub cheat_reports: u64,
    /// Heartbeats sent.
    pub heartbeats: u64,
}

/// The state machine.
#[derive(Debug, Clone)]
pub struct Machine {
    config: Config,
    auth: AuthenticationRequest,
    signers: TrustedSigners,
    state: State,
    outbox: Outbox,
    jobs: BTreeSet<String>,
    backoff: Backoff,
    counters: Counters,
}

impl Machine {
    /// A machine in Disconnected whose first connection attempt is due at `now`.
    ///
    /// `auth` is the authentication request sent on every new connection; `signers` decides which job requests
    /// are accepted.
    pub fn new(
        config: Config,
        auth: AuthenticationRequest,
        signers: TrustedSigners,
        now: Instant,
    ) -> Self {
        Machine {
            outbox: Outbox::new(config.outbox_capacity),
            backoff: Backoff::new(config.backoff, config.jitter_seed),
            config,
            auth,
            signers,
            state: State::Disconnected { retry_at: now },
            jobs: BTreeSet::new(),
            counters: Counters::default(),
        }
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Status updates held, not yet acknowledged: queued plus in flight.
    pub fn held_len(&self) -> usize {
        self.outbox.len()
    }

    /// Status updates waiting to be sent.
    pub fn queued_len(&self) -> usize {
        self.outbox.queued_len()
    }

    /// Status updates sent and not yet acknowledged.
    pub fn in_flight_len(&self) -> usize {
        self.outbox.in_flight_len()
    }

    /// UUIDs of jobs dispatched and not yet finished.
    pub fn running_jobs(&self) -> impl Iterator<Item = &str> {
        self.jobs.iter().map(String::as_str)
    }

    /// How many jobs are dispatched and not yet finished.
    pub fn running_job_count(&self) -> usize {
        self.jobs.len()
    }

    /// Whether a handler's status would fit in the outbox. While false, the driver stops taking statuses from
    /// handlers, so they wait: backpressure instead of dropping.
    pub fn accepts_statuses(&self) -> bool {
        self.outbox.has_room()
    }

    /// Status updates not delivered (queued or in flight); after a stop, what was lost to the facilitator and
    /// must be reported.
    pub fn undelivered(&self) -> impl Iterator<Item = &JobStatusUpdate> {
        self.outbox.iter().map(|p| &p.update)
    }

    /// When the machine next needs a [`Input::Tick`], and why. `None` once stopped.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let link_deadline = |link: &Link| {
            let dead = link.dead_at();
            if dead.0 <= link.next_heartbeat {
                dead
            } else {
                (link.next_heartbeat, "heartbeat")
            }
        };
        match &self.state {
            State::Disconnected { retry_at } => Some((*retry_at, "reconnect")),
            State::Connecting { deadline, .. } => Some((*deadline, "connect timeout")),
            State::Running { link, .. } => Some(link_deadline(link)),
            State::Draining { link, phase } => {
                let phase_deadline = match phase {
                    DrainPhase::Flushing { deadline } => (*deadline, "drain deadline"),
                    DrainPhase::Cancelling { deadline, .. } => (*deadline, "cancelled-job reports"),
                    DrainPhase::Closing { deadline, .. } => (*deadline, "close timeout"),
                };
                if matches!(phase, DrainPhase::Closing { .. }) {
                    // Close sent: nothing else may be written, so no heartbeat; the close timeout bounds the wait.
                    return Some(phase_deadline);
                }
                let link = link_deadline(link);
                Some(if phase_deadline.0 <= link.0 {
                    phase_deadline
                } else {
                    link
                })
            }
            State::Stopped { .. } => None,
        }
    }

    /// Feeds one input at time `now`; returns what the driver must do, in order.
    ///
    /// Deadlines that have passed by `now` are handled first, whatever the input, so the machine's view of time
    /// never goes backwards and [`Machine::poll_timeout`] is never in the past afterwards.
    #[must_use]
    pub fn step(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.expire(now, &mut out);
        match input {
            Input::Tick => {}
            Input::SocketOpened => self.on_socket_opened(now, &mut out),
            Input::SocketFailed(why) => {
                self.on_socket_lost(now, &format!("socket failed: {why}"), None, &mut out)
            }
            Input::SocketClosed(code) => {
                let why = match code {
                    Some(code) => format!("peer closed the connection (code {code})"),
                    None => "peer closed the connection without a close frame".to_owned(),
                };
                self.on_socket_lost(now, &why, code, &mut out)
            }
            Input::Frame(message) => self.on_frame(message, None, now, &mut out),
            Input::Undecodable(error) => self.on_undecodable(error, now, &mut out),
            Input::Pong => self.on_pong(now),
            Input::Frames(frames) => self.on_frames(frames, now, &mut out),
            Input::Status(update) => self.on_status(update, &mut out),
            Input::JobFinished(uuid) => {
                self.jobs.remove(&uuid);
                self.check_drained(now, &mut out);
            }
            Input::Shutdown => self.on_shutdown(now, &mut out),
            Input::ForceStop => {
                if !self.state.is_stopped() {
                    if self.state.has_socket() {
                        out.push(Action::Abort);
                    }
                    self.cancel_jobs(&mut out);
                    self.stop(StopReason::Forced, "second shutdown signal", &mut out);
                }
            }
        }
        out
    }

    // ---- deadlines -------------------------------------------------------------------------------------------

    fn expire(&mut self, now: Instant, out: &mut Vec<Action>) {
        // Each pass handles one expired deadline; a handled deadline always moves forward or changes the state,
        // so this ends. The bound is a guard against a bug turning into a hang.
        for _ in 0..8 {
            match self.poll_timeout() {
                Some((deadline, _)) if deadline <= now => self.on_deadline(now, out),
                _ => return,
            }
        }
    }

    fn on_deadline(&mut self, now: Instant, out: &mut Vec<Action>) {
        match self.state.clone() {
            State::Disconnected { .. } => {
                self.counters.connects += 1;
                out.push(Action::Open);
                self.transition(
                    State::Connecting {
                        phase: ConnectPhase::Opening,
                        deadline: now + self.config.connect_timeout,
                    },
                    "reconnect delay over: connecting",
                    out,
                );
            }
            State::Connecting { phase, .. } => {
                out.push(Action::Abort);
                let why = match phase {
                    ConnectPhase::Opening => {
                        "connect timed out before the WebSocket handshake completed"
                    }
                    ConnectPhase::Authenticating => {
                        "connect timed out waiting for the auth Response"
                    }
                };
                self.connect_failed(now, why, false, out);
            }
            State::Running {
                since,
                link,
                progress,
            } => {
                if link.dead_at().0 <= now {
                    out.push(Action::Abort);
                    let why = self.peer_dead(&link);
                    self.connection_lost(now, since, progress, &why, false, out);
                } else {
                    self.heartbeat(now, out);
                }
            }
            State::Draining { link, phase } => {
                let phase_deadline = match phase {
                    DrainPhase::Flushing { deadline } | DrainPhase::Cancelling { deadline, .. } => {
                        deadline
                    }
                    DrainPhase::Closing { deadline, .. } => deadline,
                };
                if phase_deadline <= now {
                    self.on_drain_deadline(phase, now, out);
                } else if link.dead_at().0 <= now {
                    out.push(Action::Abort);
                    self.cancel_jobs(out);
                    let why = format!("{} while draining", self.peer_dead(&link));
                    self.stop(StopReason::ConnectionLostWhileDraining, &why, out);
                } else {
                    self.heartbeat(now, out);
                }
            }
            State::Stopped { .. } => {}
        }
    }

    fn peer_dead(&self, link: &Link) -> String {
        match link.dead_at().1 {
            "peer silent" => format!("peer silent for {:?}", self.config.peer_timeout),
            _ => format!(
                "no Pong for {:?}: the peer is not reading what is sent",
                self.config.peer_timeout
            ),
        }
    }

    fn heartbeat(&mut self, now: Instant, out: &mut Vec<Action>) {
        if let State::Running { link, .. } | State::Draining { link, .. } = &mut self.state {
            link.next_heartbeat = now + self.config.heartbeat_interval;
            // The oldest unanswered Ping sets the deadline; any Pong answers them all.
            link.pong_deadline
                .get_or_insert(now + self.config.peer_timeout);
            self.counters.heartbeats += 1;
            out.push(Action::Send(ClientMessage::Heartbeat));
            out.push(Action::Ping);
        }
    }

    fn on_drain_deadline(&mut self, phase: DrainPhase, now: Instant, out: &mut Vec<Action>) {
        match phase {
            DrainPhase::Flushing { deadline } => {
                // Time is up for running jobs: kill them and report each as horde_failed, best effort within the
                // close timeout (half of it for the reports' Responses, the rest for the close handshake).
                // Measured from the drain deadline, not from `now`: a late Tick must not extend the bound.
                let close_by = deadline + self.config.close_timeout;
                let reports_by = deadline + self.config.close_timeout / 2;
                let cancelled_count = self.cancel_jobs(out);
                if let State::Draining { phase, .. } = &mut self.state {
                    *phase = DrainPhase::Cancelling {
                        deadline: reports_by,
                        close_by,
                    };
                }
                out.push(Action::Emit(Event::DrainDeadlinePassed {
                    jobs_cancelled: cancelled_count,
                    unacknowledged: self.outbox.len(),
                }));
                self.pump(out);
                self.check_drained(now, out);
            }
            DrainPhase::Cancelling { close_by, .. } => {
                self.begin_close(close_by, out);
            }
            DrainPhase::Closing { .. } => {
                out.push(Action::Abort);
                let reason = self.drained_reason();
                self.stop(reason, "no close reply within the close timeout", out);
            }
        }
    }

    // ---- socket events ---------------------------------------------------------------------------------------

    fn on_socket_opened(&mut self, _now: Instant, out: &mut Vec<Action>) {
        if let State::Connecting {
            phase: phase @ ConnectPhase::Opening,
            ..
        } = &mut self.state
        {
            *phase = ConnectPhase::Authenticating;
            out.push(Action::Send(ClientMessage::Auth(self.auth.clone())));
        }
        // Anywhere else the event is stale (from a socket already dropped): ignored.
    }

    fn on_socket_lost(
        &mut self,
        now: Instant,
        why: &str,
        code: Option<u16>,
        out: &mut Vec<Action>,
    ) {
        match self.state.clone() {
            State::Connecting { .. } => {
                if code == Some(close_code::SIGNATURE_INVALID) {
                    self.counters.auth_failures += 1;
                    self.cancel_jobs(out);
                    self.stop(
                        StopReason::AuthRejected,
                        "facilitator closed with 3000 (auth.signature_invalid)",
                        out,
                    );
                } else {
                    let at_cap = code == Some(close_code::VALIDATOR_NOT_FOUND);
                    self.connect_failed(now, why, at_cap, out);
                }
            }
            State::Running {
                since, progress, ..
            } => {
                let at_cap = code == Some(close_code::VALIDATOR_NOT_FOUND);
                self.connection_lost(now, since, progress, why, at_cap, out);
            }
            State::Draining {
                phase: DrainPhase::Closing { .. },
                ..
            } => {
                let reason = self.drained_reason();
                self.stop(reason, "close handshake completed", out);
            }
            State::Draining { .. } => {
                self.outbox.requeue_in_flight();
                self.cancel_jobs(out);
                self.stop(StopReason::ConnectionLostWhileDraining, why, out);
            }
            State::Disconnected { .. } | State::Stopped { .. } => {}
        }
    }

    fn on_pong(&mut self, now: Instant) {
        self.heard_from_peer(now);
        if let State::Running { link, .. } | State::Draining { link, .. } = &mut self.state {
            link.pong_deadline = None;
        }
    }

    fn on_frames(&mut self, frames: Vec<Incoming>, now: Instant, out: &mut Vec<Action>) {
        let verdicts = self.check_signatures_ahead(&frames);
        for (frame, verdict) in frames.into_iter().zip(verdicts) {
            match frame {
                Incoming::Message(message) => self.on_frame(message, verdict, now, out),
                Incoming::Undecodable(error) => self.on_undecodable(error, now, out),
                Incoming::Pong => self.on_pong(now),
            }
        }
    }

    /// The signature verdicts of the job requests among `frames` that may be accepted, checked in one batch:
    /// in Running, those not already running, at most as many as there is room for under `max_running_jobs` (a
    /// flood past the bound costs no signature checks). The others are `None`: checked one by one if at all.
    fn check_signatures_ahead(
        &self,
        frames: &[Incoming],
    ) -> Vec<Option<Result<(), JobSignatureError>>> {
        let mut verdicts = vec![None; frames.len()];
        if !matches!(self.state, State::Running { .. }) {
            return verdicts;
        }
        let room = self.config.max_running_jobs.saturating_sub(self.jobs.len());
        let candidates: Vec<(usize, &JobRequest)> = frames
            .iter()
            .enumerate()
            .filter_map(|(i, frame)| match frame {
                Incoming::Message(ServerMessage::JobRequest(job))
                    if !self.jobs.contains(job.uuid()) =>
                {
                    Some((i, &**job))
                }
                _ => None,
            })
            .take(room)
            .collect();
        if candidates.len() > 1 {
            let checked = self
                .signers
                .check_all(candidates.iter().map(|(_, job)| *job));
            for ((i, _), verdict) in candidates.iter().zip(checked) {
                verdicts[*i] = Some(verdict);
            }
        }
        verdicts
    }

    fn on_frame(
        &mut self,
        message: ServerMessage,
        verdict: Option<Result<(), JobSignatureError>>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        match self.state.clone() {
            State::Connecting {
                phase: ConnectPhase::Authenticating,
                ..
            } => match message {
                ServerMessage::Response(response) => self.on_auth_response(response, now, out),
                other => {
                    // The reference validator requires the first frame to be a success Response.
                    out.push(Action::Abort);
                    let why = format!("expected the auth Response, got {}", describe(&other));
                    self.connect_failed(now, &why, false, out);
                }
            },
            State::Running { .. } | State::Draining { .. } => {
                self.heard_from_peer(now);
                match message {
                    ServerMessage::Response(response) => self.on_response(response, now, out),
                    ServerMessage::JobRequest(job) => self.on_job(job, verdict, out),
                    ServerMessage::JobCheated(report) => {
                        self.counters.cheat_reports += 1;
                        let trusted = self.signers.check_cheat_report(&report).is_ok();
                        out.push(Action::Emit(Event::CheatReport {
                            job_uuid: report.job_uuid.clone(),
                            trusted,
                        }));
                    }
                }
            }
            _ => {}
        }
    }

    fn on_undecodable(&mut self, error: DecodeError, now: Instant, out: &mut Vec<Action>) {
        match self.state.clone() {
            State::Connecting {
                phase: ConnectPhase::Authenticating,
                ..
            } => {
                self.count_undecodable(&error);
                out.push(Action::Abort);
                let why = format!("expected the auth Response, got an undecodable frame ({error})");
                self.connect_failed(now, &why, false, out);
            }
            State::Running { .. } | State::Draining { .. } => {
                self.heard_from_peer(now);
                self.count_undecodable(&error);
                match error.job_uuid() {
                    // A job request we can answer: refuse it rather than leave the facilitator waiting.
                    Some(uuid) if !self.jobs.contains(uuid) && !self.outbox.has_room() => {
                        self.unanswered(uuid.to_owned(), out);
                    }
                    Some(uuid) if !self.jobs.contains(uuid) => {
                        self.counters.jobs_rejected_invalid += 1;
                        self.reject(
                            uuid.to_owned(),
                            JobRejectionReason::Unknown,
                            format!("Invalid job request: {error}"),
                            out,
                        );
                    }
                    _ => out.push(Action::Emit(Event::Ignored {
                        what: format!("undecodable frame: {error}"),
                    })),
                }
            }
            _ => {}
        }
    }

    fn count_undecodable(&mut self, error: &DecodeError) {
        self.counters.decode_errors += 1;
        if matches!(error, DecodeError::Binary) {
            self.counters.binary_frames += 1;
        }
    }

    fn on_auth_response(&mut self, response: Response, now: Instant, out: &mut Vec<Action>) {
        if response.is_success() {
            self.counters.authentications += 1;
            if self.counters.authentications > 1 {
                self.counters.reconnects += 1;
            }
            let link = Link {
                next_heartbeat: now + self.config.heartbeat_interval,
                silent_deadline: now + self.config.peer_timeout,
                // The Ping sent with the first heartbeat, below.
                pong_deadline: Some(now + self.config.peer_timeout),
            };
            let resend = self.outbox.len();
            self.transition(
                State::Running {
                    since: now,
                    link,
                    progress: false,
                },
                &format!("authenticated; {resend} status update(s) to send"),
                out,
            );
            self.counters.heartbeats += 1;
            out.push(Action::Send(ClientMessage::Heartbeat));
            out.push(Action::Ping);
            self.pump(out);
        } else if response.has_error(error_type::SIGNATURE_INVALID) {
            self.counters.auth_failures += 1;
            out.push(Action::Abort);
            self.cancel_jobs(out);
            self.stop(StopReason::AuthRejected, "auth.signature_invalid", out);
        } else {
            out.push(Action::Abort);
            let at_cap = response.has_error(error_type::VALIDATOR_NOT_FOUND);
            let why = format!(
                "auth failed: {}",
                response
                    .first_error_type()
                    .unwrap_or("error without a type")
            );
            self.connect_failed(now, &why, at_cap, out);
        }
    }

    fn on_response(&mut self, response: Response, now: Instant, out: &mut Vec<Action>) {
        let Some(pending) = self.outbox.acknowledge() else {
            self.counters.unexpected_responses += 1;
            out.push(Action::Emit(Event::Ignored {
                what: format!(
                    "a Response with no status update in flight ({})",
                    response_summary(&response)
                ),
            }));
            return;
        };
        self.made_progress();
        let already_stored = response.has_error(error_type::INTEGRITY_ERROR) && pending.sends > 1;
        let JobStatusUpdate { uuid, status, .. } = pending.update;
        if response.is_success() || already_stored {
            self.counters.statuses_delivered += 1;
            out.push(Action::Emit(Event::StatusDelivered {
                uuid,
                status,
                sends: pending.sends,
            }));
        } else {
            self.counters.statuses_refused += 1;
            out.push(Action::Emit(Event::StatusRefused {
                uuid,
                status,
                error: response_summary(&response),
            }));
        }
        self.pump(out);
        self.check_drained(now, out);
    }

    /// A job request; `verdict` is its signature check when it was made ahead, in a batch.
    fn on_job(
        &mut self,
        job: Arc<JobRequest>,
        verdict: Option<Result<(), JobSignatureError>>,
        out: &mut Vec<Action>,
    ) {
        let uuid = job.uuid().to_owned();
        self.made_progress();
        if self.jobs.contains(&uuid) {
            self.counters.jobs_duplicate += 1;
            out.push(Action::Emit(Event::Ignored {
                what: format!("job {uuid} is already running"),
            }));
            return;
        }
        if !self.outbox.has_room() {
            self.unanswered(uuid, out);
            return;
        }
        if matches!(self.state, State::Draining { .. }) {
            self.counters.jobs_rejected_busy += 1;
            self.reject(
                uuid,
                JobRejectionReason::Busy,
                "The validator is shutting down".to_owned(),
                out,
            );
            return;
        }
        // Before the signature check: a flood beyond the bound must cost no more than its answer.
        if self.jobs.len() >= self.config.max_running_jobs {
            self.counters.jobs_rejected_full += 1;
            self.reject(
                uuid,
                JobRejectionReason::Busy,
                format!(
                    "The validator is running its maximum number of jobs ({})",
                    self.config.max_running_jobs
                ),
                out,
            );
            return;
        }
        if let Err(problem) = verdict.unwrap_or_else(|| self.signers.check(&job)) {
            self.counters.jobs_rejected_signature += 1;
            self.reject(
                uuid,
                JobRejectionReason::InvalidSignature,
                problem.to_string(),
                out,
            );
            return;
        }
        self.counters.jobs_accepted += 1;
        self.jobs.insert(uuid.clone());
        self.enqueue(JobStatusUpdate::new(uuid.clone(), JobStatus::Received));
        out.push(Action::Emit(Event::JobAccepted { uuid }));
        out.push(Action::Dispatch(job));
        self.pump(out);
    }

    /// A job request that cannot even be answered: the outbox is full. Counted; the facilitator's own timeout
    /// fails the job. Memory stays bounded whatever the facilitator pushes.
    fn unanswered(&mut self, uuid: String, out: &mut Vec<Action>) {
        self.counters.jobs_unanswered += 1;
        out.push(Action::Emit(Event::JobUnanswered { uuid }));
    }

    /// Marks the current connection as productive (see `State::Running::progress`).
    fn made_progress(&mut self) {
        if let State::Running { progress, .. } = &mut self.state {
            *progress = true;
        }
    }

    fn reject(
        &mut self,
        uuid: String,
        reason: JobRejectionReason,
        message: String,
        out: &mut Vec<Action>,
    ) {
        self.counters.statuses_accepted += 1;
        self.outbox.push_refusal(JobStatusUpdate::rejected(
            uuid.clone(),
            reason,
            message.clone(),
        ));
        out.push(Action::Emit(Event::JobRejected {
            uuid,
            reason,
            message,
        }));
        self.pump(out);
    }

    fn heard_from_peer(&mut self, now: Instant) {
        if let State::Running { link, .. } | State::Draining { link, .. } = &mut self.state {
            link.silent_deadline = now + self.config.peer_timeout;
        }
    }

    // ---- statuses and shutdown -------------------------------------------------------------------------------

    fn on_status(&mut self, update: JobStatusUpdate, out: &mut Vec<Action>) {
        if self.state.is_stopped() {
            // Kept (and so reported as undelivered), never silently dropped.
            self.counters.statuses_after_stop += 1;
        }
        self.enqueue(update);
        self.pump(out);
    }

    fn enqueue(&mut self, update: JobStatusUpdate) {
        self.counters.statuses_accepted += 1;
        self.outbox.push(update);
    }

    /// Sends queued statuses while the connection is authenticated and the in-flight window has room.
    fn pump(&mut self, out: &mut Vec<Action>) {
        let sending = match &self.state {
            State::Running { .. } => true,
            State::Draining { phase, .. } => !matches!(phase, DrainPhase::Closing { .. }),
            _ => false,
        };
        if sending {
            self.send_queued(self.config.max_in_flight, out);
        }
    }

    /// Sends queued statuses while fewer than `window` are in flight.
    fn send_queued(&mut self, window: usize, out: &mut Vec<Action>) {
        while let Some(pending) = self.outbox.send_next(window) {
            self.counters.statuses_sent += 1;
            if pending.sends > 1 {
                self.counters.statuses_resent += 1;
            }
            out.push(Action::Send(ClientMessage::StatusUpdate(
                pending.update.clone(),
            )));
        }
    }

    fn on_shutdown(&mut self, now: Instant, out: &mut Vec<Action>) {
        match self.state.clone() {
            State::Disconnected { .. } | State::Connecting { .. } => {
                if self.state.has_socket() {
                    out.push(Action::Abort);
                }
                self.cancel_jobs(out);
                let why = format!(
                    "shutdown requested while not connected; {} status update(s) undelivered",
                    self.outbox.len()
                );
                self.stop(StopReason::ShutdownWhileDisconnected, &why, out);
            }
            State::Running { link, .. } => {
                let deadline = now + self.config.drain_timeout;
                let why = format!(
                    "shutdown requested: {} job(s) running, {} status update(s) unacknowledged",
                    self.jobs.len(),
                    self.outbox.len()
                );
                self.transition(
                    State::Draining {
                        link,
                        phase: DrainPhase::Flushing { deadline },
                    },
                    &why,
                    out,
                );
                self.check_drained(now, out);
            }
            // Already draining or stopped: a repeated request changes nothing (a second *signal* is ForceStop).
            State::Draining { .. } | State::Stopped { .. } => {}
        }
    }

    /// In Draining, once no job runs and nothing is unacknowledged, starts the close handshake.
    fn check_drained(&mut self, now: Instant, out: &mut Vec<Action>) {
        let State::Draining { phase, .. } = &self.state else {
            return;
        };
        let close_by = match *phase {
            DrainPhase::Flushing { .. } => now + self.config.close_timeout,
            DrainPhase::Cancelling { close_by, .. } => close_by,
            DrainPhase::Closing { .. } => return,
        };
        // Answers to job requests refused during the drain (`busy`) never hold it open: they go out before the
        // Close frame, and are delivered if their Responses arrive before the close reply.
        if self.jobs.is_empty() && self.outbox.accepted_jobs_len() == 0 {
            self.begin_close(close_by, out);
        }
    }

    fn begin_close(&mut self, deadline: Instant, out: &mut Vec<Action>) {
        // 1000 when every status of an accepted job was delivered, 1001 ("going away") when something is left.
        let code = if self.outbox.accepted_jobs_len() == 0 && self.jobs.is_empty() {
            1000
        } else {
            1001
        };
        // Everything still queued goes out before the Close frame, past the in-flight window (the outbox is
        // bounded): the answers to job requests refused during the drain, and whatever a drain deadline left.
        self.send_queued(usize::MAX, out);
        if let State::Draining { phase, .. } = &mut self.state {
            *phase = DrainPhase::Closing { deadline, code };
            out.push(Action::Close(code));
        }
    }

    fn drained_reason(&self) -> StopReason {
        match self.state {
            State::Draining {
                phase: DrainPhase::Closing { code: 1000, .. },
                ..
            } if self.counters.jobs_cancelled == 0 => StopReason::Graceful,
            _ => StopReason::DrainTimedOut,
        }
    }

    // ---- transitions -----------------------------------------------------------------------------------------

    fn connect_failed(&mut self, now: Instant, why: &str, at_cap: bool, out: &mut Vec<Action>) {
        self.counters.auth_failures += 1;
        let delay = if at_cap {
            self.backoff.cap_delay()
        } else {
            self.backoff.next_delay()
        };
        let why = format!(
            "{why}; retrying in {:.1}s (attempt {})",
            delay.as_secs_f64(),
            self.backoff.failures()
        );
        self.transition(
            State::Disconnected {
                retry_at: now + delay,
            },
            &why,
            out,
        );
    }

    fn connection_lost(
        &mut self,
        now: Instant,
        since: Instant,
        progress: bool,
        why: &str,
        at_cap: bool,
        out: &mut Vec<Action>,
    ) {
        self.counters.disconnects += 1;
        // A connection that did useful work, or lived long enough, proves the facilitator works: the next attempt
        // comes after the base delay, so a link that flaps while work flows costs one base delay per drop.
        let productive =
            progress || now.saturating_duration_since(since) >= self.config.backoff.stable_after;
        if productive {
            self.backoff.reset();
        }
        let requeued = self.outbox.requeue_in_flight();
        let delay = if at_cap {
            self.backoff.cap_delay()
        } else {
            self.backoff.next_delay()
        };
        let why = format!(
            "{why}; {requeued} unacknowledged status update(s) requeued; reconnecting in {:.1}s{}",
            delay.as_secs_f64(),
            if productive && !at_cap {
                " (the connection made progress: backoff at its first step)"
            } else {
                ""
            }
        );
        self.transition(
            State::Disconnected {
                retry_at: now + delay,
            },
            &why,
            out,
        );
    }

    /// Cancels every running job and reports each as `horde_failed`: sent while the connection can still carry
    /// it (the drain deadline), otherwise kept and counted among the undelivered, so no job is left looking
    /// `accepted` without a trace. Returns how many jobs were cancelled.
    fn cancel_jobs(&mut self, out: &mut Vec<Action>) -> usize {
        if self.jobs.is_empty() {
            return 0;
        }
        let cancelled = std::mem::take(&mut self.jobs);
        self.counters.jobs_cancelled += cancelled.len() as u64;
        out.push(Action::CancelJobs);
        for uuid in &cancelled {
            self.enqueue(JobStatusUpdate::horde_failed(
                uuid.clone(),
                HordeFailureReason::GenericError,
                "the validator's facilitator client stopped before the job finished",
                None,
            ));
        }
        cancelled.len()
    }

    fn stop(&mut self, reason: StopReason, why: &str, out: &mut Vec<Action>) {
        self.outbox.requeue_in_flight();
        let undelivered = self.outbox.len();
        let why = if undelivered == 0 {
            format!("{why}; every status update delivered")
        } else {
            format!("{why}; {undelivered} status update(s) undelivered")
        };
        self.transition(State::Stopped { reason }, &why, out);
        out.push(Action::Stop(reason));
    }

    fn transition(&mut self, to: State, reason: &str, out: &mut Vec<Action>) {
        let from = self.state.kind();
        let to_kind = to.kind();
        self.state = to;
        if from != to_kind {
            out.push(Action::Emit(Event::StateChanged {
                from,
                to: to_kind,
                reason: reason.to_owned(),
            }));
        }
    }
}

fn describe(message: &ServerMessage) -> String {
    match message {
        ServerMessage::Response(r) => format!("a Response ({})", response_summary(r)),
        ServerMessage::JobRequest(job) => format!("a job request ({})", job.uuid()),
        ServerMessage::JobCheated(_) => "a cheat report".to_owned(),
    }
}

fn response_summary(response: &Response) -> String {
    if response.is_success() {
        "success".to_owned()
    } else {
        let types: Vec<&str> = response
            .errors
            .iter()
            .map(|e| e.error_type.as_str())
            .collect();
        format!("error: {}", types.join(", "))
    }
}
