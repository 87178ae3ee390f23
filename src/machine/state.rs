//! Where the machine is: the five states, the data only some of them carry, and their kinds as named in
//! `states/transitions.json`.

use std::fmt;
use std::time::Instant;

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
    pub fn dead_at(&self) -> (Instant, Timer) {
        match self.pong_deadline {
            Some(at) if at < self.silent_deadline => (at, Timer::PingUnanswered),
            _ => (self.silent_deadline, Timer::PeerSilent),
        }
    }

    /// The link's next deadline: the peer's death, or else the heartbeat (on a tie, the peer's death).
    pub fn next_deadline(&self) -> (Instant, Timer) {
        let dead = self.dead_at();
        if dead.0 <= self.next_heartbeat {
            dead
        } else {
            (self.next_heartbeat, Timer::Heartbeat)
        }
    }
}

/// The machine's timers: which deadline [`super::Machine::poll_timeout`] reports, so the machine acts on the one
/// that fired without comparing deadlines again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Disconnected: the backoff delay is over.
    Reconnect,
    /// Connecting: the socket and the auth Response did not come in time.
    ConnectTimeout,
    /// A `V0Heartbeat` and a Ping are due.
    Heartbeat,
    /// Nothing arrived from the peer for the peer timeout.
    PeerSilent,
    /// The oldest Ping went unanswered for the peer timeout.
    PingUnanswered,
    /// The drain deadline: running jobs are cancelled.
    Drain,
    /// The cancelled jobs' reports had their time: close.
    CancelReports,
    /// The close timeout: stop without the peer's reply.
    Close,
    /// The spool is stale (a commit failed) and the next full snapshot is due.
    SpoolRetry,
}

impl Timer {
    /// The name used in the golden scenarios and the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Timer::Reconnect => "reconnect",
            Timer::ConnectTimeout => "connect timeout",
            Timer::Heartbeat => "heartbeat",
            Timer::PeerSilent => "peer silent",
            Timer::PingUnanswered => "Ping unanswered",
            Timer::Drain => "drain deadline",
            Timer::CancelReports => "cancelled-job reports",
            Timer::Close => "close timeout",
            Timer::SpoolRetry => "spool retry",
        }
    }
}

impl fmt::Display for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl DrainPhase {
    /// The phase's deadline and its timer.
    pub fn deadline(&self) -> (Instant, Timer) {
        match *self {
            DrainPhase::Flushing { deadline } => (deadline, Timer::Drain),
            DrainPhase::Cancelling { deadline, .. } => (deadline, Timer::CancelReports),
            DrainPhase::Closing { deadline, .. } => (deadline, Timer::Close),
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

/// The five state kinds, as named in `states/transitions.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StateKind {
    /// [`State::Disconnected`].
    Disconnected,
    /// [`State::Connecting`].
    Connecting,
    /// [`State::Running`].
    Running,
    /// [`State::Draining`].
    Draining,
    /// [`State::Stopped`].
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

/// Why the machine stopped. Decides the program's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
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
