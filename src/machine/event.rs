//! What the machine tells the outside world: events, the reasons of state changes, why a stop happened. Each has
//! its one rendering here (`Display`), used by the logs and the demo alike.

use std::fmt;

use crate::protocol::{JobRejectionReason, JobStatus};

use super::state::StateKind;

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
