//! What the machine tells the outside world: events, the reasons of state changes, why a stop happened. Each has
//! its one rendering here (`Display`), used by the logs and the demo alike.

use std::fmt;
use std::time::Duration;

use crate::protocol::{DecodeError, JobRejectionReason, JobStatus};

use super::state::{ConnectPhase, StateKind};

/// Observability: what happened and why. `Display` is its log line.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The state changed: its kind, or its phase within Connecting or Draining (then `from == to`).
    StateChanged {
        /// The previous state kind.
        from: StateKind,
        /// The new state kind.
        to: StateKind,
        /// Why.
        reason: Reason,
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
        /// The error types of the Response (e.g. `error: job.not_found`).
        error: String,
    },
    /// A cheat report, verified or not. An unverified one is only logged, as the reference validator does; a
    /// verified one is also handed to the job handler (`Action::ForwardCheatReport`).
    CheatReport {
        /// The cheated job.
        job_uuid: String,
        /// Whether its signature verified from a trusted signer.
        trusted: bool,
    },
    /// The job handler's pipeline (the validator's Celery workers over Redis) became unavailable or available
    /// again. While it is unavailable, trusted job requests are answered `rejected` / `busy`.
    PipelineChanged {
        /// Whether it is available now.
        available: bool,
        /// When it came back: the job requests refused while it was unavailable.
        refused_meanwhile: u64,
    },
    /// A job request was not answered because the outbox was full; the facilitator's own timeout fails it.
    JobUnanswered {
        /// The job's UUID.
        uuid: String,
    },
    /// Something arrived that was ignored (counted in the metrics).
    Ignored(Ignored),
    /// A spool commit failed. The statuses it held were released anyway (the client goes on from memory) and the
    /// spool is stale until a full snapshot commits. Log it at most once a minute: a failing disk repeats it.
    SpoolCommitFailed {
        /// What the spool said.
        error: String,
        /// Statuses released to the socket without being on disk.
        released: usize,
        /// When the next full snapshot will be tried: `None` when it goes at once (after a first failure) or one
        /// is already under way.
        retry_in: Option<Duration>,
    },
    /// A full snapshot committed after failures: the spool holds what memory holds again.
    SpoolUpToDate {
        /// How long the spool lacked changes.
        stale_for: Duration,
    },
}

impl Event {
    /// The job this event is about, if any.
    pub fn job_uuid(&self) -> Option<&str> {
        match self {
            Event::JobAccepted { uuid }
            | Event::JobRejected { uuid, .. }
            | Event::StatusDelivered { uuid, .. }
            | Event::StatusRefused { uuid, .. }
            | Event::JobUnanswered { uuid }
            | Event::Ignored(Ignored::DuplicateJob { uuid } | Ignored::LateStatus { uuid, .. }) => {
                Some(uuid)
            }
            Event::CheatReport { job_uuid, .. } => Some(job_uuid),
            Event::StateChanged { .. }
            | Event::Ignored(_)
            | Event::SpoolCommitFailed { .. }
            | Event::SpoolUpToDate { .. }
            | Event::PipelineChanged { .. } => None,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::StateChanged { from, to, reason } if from == to => write!(f, "{to}: {reason}"),
            Event::StateChanged { from, to, reason } => write!(f, "{from} -> {to} ({reason})"),
            Event::JobAccepted { uuid } => write!(f, "job {uuid} accepted"),
            Event::JobRejected {
                uuid,
                reason,
                message,
            } => write!(f, "job {uuid} rejected ({reason}): {message}"),
            Event::StatusDelivered {
                uuid,
                status,
                sends,
            } => write!(
                f,
                "status {status} of job {uuid} delivered (sent {sends} time(s))"
            ),
            Event::StatusRefused {
                uuid,
                status,
                error,
            } => write!(
                f,
                "the facilitator refused status {status} of job {uuid} ({error}); not retried"
            ),
            Event::CheatReport { job_uuid, trusted } => write!(
                f,
                "cheat report for job {job_uuid} ({})",
                if *trusted {
                    "verified"
                } else {
                    "not verified: ignored"
                }
            ),
            Event::PipelineChanged {
                available: false,
                ..
            } => f.write_str(
                "the job pipeline (the validator's Celery workers over Redis) is unavailable: job requests are \
                 answered rejected (busy) until it is back",
            ),
            Event::PipelineChanged {
                available: true,
                refused_meanwhile,
            } => write!(
                f,
                "the job pipeline is available again ({refused_meanwhile} job request(s) answered busy while it \
                 was not)"
            ),
            Event::JobUnanswered { uuid } => write!(
                f,
                "job {uuid} not answered: the outbox is full (the facilitator's timeout will fail it)"
            ),
            Event::Ignored(what) => write!(f, "ignored {what}"),
            Event::SpoolCommitFailed {
                error,
                released,
                retry_in,
            } => {
                write!(
                    f,
                    "the spool could not commit ({error}): {released} status update(s) go out without being on \
                     disk; the client goes on from memory, and "
                )?;
                match retry_in {
                    Some(d) => write!(f, "writes a full snapshot in {:.1}s", d.as_secs_f64()),
                    None => f.write_str("writes a full snapshot now"),
                }
            }
            Event::SpoolUpToDate { stale_for } => write!(
                f,
                "the spool is up to date again: a full snapshot committed after {:.1}s of failed commits",
                stale_for.as_secs_f64()
            ),
        }
    }
}

/// What was ignored, by kind (for counting, and for one log line per kind per interval in a flood).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Ignored {
    /// A Response although no status update was in flight.
    UnexpectedResponse {
        /// `success`, or the error types.
        summary: String,
    },
    /// A job request for a job already running.
    DuplicateJob {
        /// The job's UUID.
        uuid: String,
    },
    /// A frame that could not be decoded and names no job to answer.
    Undecodable(DecodeError),
    /// A job handler's status for a job that already reported its terminal status, or is no longer running.
    LateStatus {
        /// The job's UUID.
        uuid: String,
        /// The status dropped.
        status: JobStatus,
    },
}

impl Ignored {
    /// A short, fixed name of the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Ignored::UnexpectedResponse { .. } => "unexpected Response",
            Ignored::DuplicateJob { .. } => "duplicate job request",
            Ignored::Undecodable(DecodeError::Binary) => "binary frame",
            Ignored::Undecodable(_) => "undecodable frame",
            Ignored::LateStatus { .. } => "late status",
        }
    }
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ignored::UnexpectedResponse { summary } => {
                write!(f, "a Response with no status update in flight ({summary})")
            }
            Ignored::DuplicateJob { uuid } => write!(f, "job {uuid} is already running"),
            Ignored::Undecodable(error) => write!(f, "undecodable frame: {error}"),
            Ignored::LateStatus { uuid, status } => write!(
                f,
                "status {status} of job {uuid}: the job already ended (its terminal status was reported)"
            ),
        }
    }
}

/// Why the state changed (the `reason` of [`Event::StateChanged`]). `Display` is the log text.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Reason {
    /// Disconnected -> Connecting.
    ReconnectDelayOver,
    /// Connecting (opening) -> Connecting (authenticating): the WebSocket is open, the auth request sent.
    SocketOpened,
    /// Connecting -> Running.
    Authenticated {
        /// Status updates waiting to be (re-)sent.
        to_send: usize,
    },
    /// Connecting -> Disconnected: the attempt failed; retried after the backoff.
    ConnectFailed {
        /// What went wrong.
        cause: ConnectFailure,
        /// The delay before the next attempt.
        retry_in: Duration,
        /// Failed attempts in a row, this one included.
        attempt: u32,
    },
    /// Running -> Disconnected: the connection was lost; reconnecting after the backoff.
    ConnectionLost {
        /// How it was lost.
        cause: LinkLoss,
        /// Unacknowledged status updates put back at the front of the outbox.
        requeued: usize,
        /// The delay before the next attempt.
        retry_in: Duration,
        /// The connection made progress (or lived the stable period): the backoff is back at its first step.
        backoff_reset: bool,
    },
    /// Running -> Draining.
    ShutdownRequested {
        /// Jobs running when the request came.
        jobs_running: usize,
        /// Status updates not yet acknowledged.
        unacknowledged: usize,
    },
    /// Draining (flushing) -> Draining (cancelling): running jobs were cancelled, each reported `horde_failed`.
    DrainDeadlinePassed {
        /// Jobs cancelled.
        jobs_cancelled: usize,
        /// Jobs left running and spooled instead (Celery tasks, with the spool).
        jobs_left_running: usize,
        /// Status updates not yet acknowledged, the cancelled jobs' reports included.
        unacknowledged: usize,
    },
    /// Draining -> Draining (closing): the close frame went out.
    Closing {
        /// The close code sent: 1000 when every status of an accepted job was delivered, else 1001.
        code: u16,
    },
    /// -> Stopped.
    Stopped {
        /// What ended the run.
        cause: StopCause,
        /// Status updates never acknowledged (reported to the caller).
        undelivered: usize,
    },
}

impl Reason {
    /// The variant's name, for compact traces (the golden scenarios).
    pub fn name(&self) -> &'static str {
        match self {
            Reason::ReconnectDelayOver => "ReconnectDelayOver",
            Reason::SocketOpened => "SocketOpened",
            Reason::Authenticated { .. } => "Authenticated",
            Reason::ConnectFailed { .. } => "ConnectFailed",
            Reason::ConnectionLost { .. } => "ConnectionLost",
            Reason::ShutdownRequested { .. } => "ShutdownRequested",
            Reason::DrainDeadlinePassed { .. } => "DrainDeadlinePassed",
            Reason::Closing { .. } => "Closing",
            Reason::Stopped { .. } => "Stopped",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::ReconnectDelayOver => f.write_str("reconnect delay over: connecting"),
            Reason::SocketOpened => f.write_str("WebSocket open: authenticating"),
            Reason::Authenticated { to_send } => {
                write!(f, "authenticated; {to_send} status update(s) to send")
            }
            Reason::ConnectFailed {
                cause,
                retry_in,
                attempt,
            } => write!(
                f,
                "{cause}; retrying in {:.1}s (attempt {attempt})",
                retry_in.as_secs_f64()
            ),
            Reason::ConnectionLost {
                cause,
                requeued,
                retry_in,
                backoff_reset,
            } => write!(
                f,
                "{cause}; {requeued} unacknowledged status update(s) requeued; reconnecting in {:.1}s{}",
                retry_in.as_secs_f64(),
                if *backoff_reset {
                    " (the connection made progress: backoff at its first step)"
                } else {
                    ""
                }
            ),
            Reason::ShutdownRequested {
                jobs_running,
                unacknowledged,
            } => write!(
                f,
                "shutdown requested: {jobs_running} job(s) running, {unacknowledged} status update(s) unacknowledged"
            ),
            Reason::DrainDeadlinePassed {
                jobs_cancelled,
                jobs_left_running,
                unacknowledged,
            } => {
                write!(
                    f,
                    "drain deadline passed: {jobs_cancelled} job(s) cancelled"
                )?;
                if *jobs_left_running > 0 {
                    write!(
                        f,
                        ", {jobs_left_running} left running and spooled (the next start re-attaches them)"
                    )?;
                }
                write!(f, ", {unacknowledged} status update(s) unacknowledged")
            }
            Reason::Closing { code } => write!(f, "closing the connection with code {code}"),
            Reason::Stopped { cause, undelivered } => match undelivered {
                0 => write!(f, "{cause}; every status update delivered"),
                n => write!(f, "{cause}; {n} status update(s) undelivered"),
            },
        }
    }
}

/// Why a connection attempt failed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// The connect timeout passed in this phase.
    TimedOut(ConnectPhase),
    /// Opening, reading or writing the socket failed.
    Socket(String),
    /// The peer closed the connection (with its close code, if it sent one).
    PeerClosed(Option<u16>),
    /// Something other than a Response came first (described).
    UnexpectedFrame(String),
    /// An undecodable frame came first.
    UndecodableFrame(DecodeError),
    /// The auth Response was an error other than a fatal one (its error type).
    AuthError(String),
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectFailure::TimedOut(ConnectPhase::Opening) => {
                f.write_str("connect timed out before the WebSocket handshake completed")
            }
            ConnectFailure::TimedOut(ConnectPhase::Authenticating) => {
                f.write_str("connect timed out waiting for the auth Response")
            }
            ConnectFailure::Socket(why) => write!(f, "socket failed: {why}"),
            ConnectFailure::PeerClosed(code) => write_peer_closed(f, *code),
            ConnectFailure::UnexpectedFrame(what) => {
                write!(f, "expected the auth Response, got {what}")
            }
            ConnectFailure::UndecodableFrame(error) => write!(
                f,
                "expected the auth Response, got an undecodable frame ({error})"
            ),
            ConnectFailure::AuthError(error_type) => write!(f, "auth failed: {error_type}"),
        }
    }
}

/// How an authenticated connection was lost.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LinkLoss {
    /// Nothing (no frame, no Pong) arrived for the peer timeout.
    PeerSilent(Duration),
    /// A Ping went unanswered for the peer timeout while frames still arrived: the peer is not reading.
    PingUnanswered(Duration),
    /// Reading or writing the socket failed.
    SocketFailed(String),
    /// The peer closed the connection (with its close code, if it sent one).
    PeerClosed(Option<u16>),
}

impl fmt::Display for LinkLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkLoss::PeerSilent(d) => write!(f, "peer silent for {d:?}"),
            LinkLoss::PingUnanswered(d) => {
                write!(f, "no Pong for {d:?}: the peer is not reading what is sent")
            }
            LinkLoss::SocketFailed(why) => write!(f, "socket failed: {why}"),
            LinkLoss::PeerClosed(code) => write_peer_closed(f, *code),
        }
    }
}

fn write_peer_closed(f: &mut fmt::Formatter<'_>, code: Option<u16>) -> fmt::Result {
    match code {
        Some(code) => write!(f, "peer closed the connection (code {code})"),
        None => f.write_str("peer closed the connection without a close frame"),
    }
}

/// What ended the run (the `cause` of [`Reason::Stopped`]); [`super::StopReason`] is the outcome it leads to.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StopCause {
    /// The second shutdown signal: stop at once.
    SecondSignal,
    /// The auth Response was `auth.signature_invalid`.
    SignatureInvalid,
    /// The facilitator closed with 3000 (`auth.signature_invalid`) during authentication.
    ClosedSignatureInvalid,
    /// A shutdown request while not connected.
    ShutdownWhileNotConnected,
    /// The connection was lost while draining.
    LinkLostWhileDraining(LinkLoss),
    /// The peer answered the close frame.
    CloseHandshakeCompleted,
    /// No close reply within the close timeout.
    NoCloseReply,
}

impl fmt::Display for StopCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopCause::SecondSignal => f.write_str("second shutdown signal"),
            StopCause::SignatureInvalid => f.write_str("auth.signature_invalid"),
            StopCause::ClosedSignatureInvalid => {
                f.write_str("facilitator closed with 3000 (auth.signature_invalid)")
            }
            StopCause::ShutdownWhileNotConnected => {
                f.write_str("shutdown requested while not connected")
            }
            StopCause::LinkLostWhileDraining(loss) => write!(f, "{loss} while draining"),
            StopCause::CloseHandshakeCompleted => f.write_str("close handshake completed"),
            StopCause::NoCloseReply => f.write_str("no close reply within the close timeout"),
        }
    }
}
