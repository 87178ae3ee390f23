//! What the machine is told (inputs) and what it asks its driver to do (actions), with their kinds as named in
//! `states/transitions.json`.

use std::sync::Arc;

use crate::protocol::{
    ClientMessage, DecodeError, JobCheated, JobRequest, JobStatusUpdate, ServerMessage,
};
use crate::spool::{HandlerRecord, SpoolBatch};

use super::event::Event;
use super::state::StopReason;

/// Everything that can happen to the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The deadline from [`super::Machine::poll_timeout`] passed.
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
    /// A job's handler started its work where a restart can find it again (an `exec:` process group, a Celery
    /// task): with the spool, the job's record is updated (never re-created once the job was forgotten).
    JobAttached {
        /// The job.
        uuid: String,
        /// Where its work runs.
        handler: HandlerRecord,
    },
    /// The spool committed every batch up to `up_to` (from [`Action::Persist`]), or failed to (`Err` with the
    /// reason): either way their statuses may now be sent.
    Persisted {
        /// The highest batch id the commit covers (every lower one not reported before is in it).
        up_to: u64,
        /// What the commit did.
        result: Result<(), String>,
    },
    /// The job handler's pipeline (the validator's Celery workers, reached over Redis) became available (`true`)
    /// or unavailable (`false`). The machine starts with it available: a handler without a pipeline never sends
    /// this. While it is unavailable, a trusted job request is answered `rejected` / `busy` without `received`,
    /// and nothing is dispatched or queued for later.
    PipelineAvailable(bool),
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
    /// [`Input::Tick`].
    Tick,
    /// [`Input::SocketOpened`].
    SocketOpened,
    /// [`Input::SocketFailed`].
    SocketFailed,
    /// [`Input::Frame`].
    Frame,
    /// [`Input::Undecodable`].
    Undecodable,
    /// [`Input::Pong`].
    Pong,
    /// [`Input::Frames`].
    Frames,
    /// [`Input::SocketClosed`].
    SocketClosed,
    /// [`Input::Status`].
    Status,
    /// [`Input::JobFinished`].
    JobFinished,
    /// [`Input::JobAttached`].
    JobAttached,
    /// [`Input::Persisted`].
    Persisted,
    /// [`Input::PipelineAvailable`].
    PipelineAvailable,
    /// [`Input::Shutdown`].
    Shutdown,
    /// [`Input::ForceStop`].
    ForceStop,
}

impl InputKind {
    /// Every input kind.
    pub const ALL: [InputKind; 15] = [
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
        InputKind::JobAttached,
        InputKind::Persisted,
        InputKind::PipelineAvailable,
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
            InputKind::JobAttached => "JobAttached",
            InputKind::Persisted => "Persisted",
            InputKind::PipelineAvailable => "PipelineAvailable",
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
            Input::JobAttached { .. } => InputKind::JobAttached,
            Input::Persisted { .. } => InputKind::Persisted,
            Input::PipelineAvailable(_) => InputKind::PipelineAvailable,
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
    /// Make this batch durable in the spool, off the event loop, then report [`Input::Persisted`]. Batch ids
    /// increase by one from one `Persist` to the next; batches may be committed together (merged in order), and
    /// one report covers every batch up to its id. The driver stamps `accepted_at_unix_ms` of job records the
    /// machine leaves at 0 (it has no wall clock) and keeps that stamp for later snapshots.
    Persist {
        /// The batch's id.
        id: u64,
        /// What to put and forget, or a full snapshot.
        batch: SpoolBatch,
    },
    /// Hand a cheat report whose signature verified from a trusted signer to the job handler
    /// (`JobHandler::cheated`: with `--celery-cheated-task`, the validator's Celery task). The driver must never
    /// wait for it on its loop: it starts the hand-off and logs and counts its outcome; a handler that does not
    /// take cheat reports leaves it logged and counted.
    ForwardCheatReport(JobCheated),
    /// The machine stopped: the driver ends.
    Stop(StopReason),
}

/// The action kinds, as named in `states/transitions.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActionKind {
    /// [`Action::Open`].
    Open,
    /// [`Action::Send`].
    Send,
    /// [`Action::Ping`].
    Ping,
    /// [`Action::Close`].
    Close,
    /// [`Action::Abort`].
    Abort,
    /// [`Action::Dispatch`].
    Dispatch,
    /// [`Action::CancelJobs`].
    CancelJobs,
    /// [`Action::Emit`].
    Emit,
    /// [`Action::Persist`].
    Persist,
    /// [`Action::ForwardCheatReport`].
    ForwardCheatReport,
    /// [`Action::Stop`].
    Stop,
}

impl ActionKind {
    /// Every action kind.
    pub const ALL: [ActionKind; 11] = [
        ActionKind::Open,
        ActionKind::Send,
        ActionKind::Ping,
        ActionKind::Close,
        ActionKind::Abort,
        ActionKind::Dispatch,
        ActionKind::CancelJobs,
        ActionKind::Emit,
        ActionKind::Persist,
        ActionKind::ForwardCheatReport,
        ActionKind::Stop,
    ];

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
            ActionKind::Persist => "Persist",
            ActionKind::ForwardCheatReport => "ForwardCheatReport",
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
            Action::Persist { .. } => ActionKind::Persist,
            Action::ForwardCheatReport(_) => ActionKind::ForwardCheatReport,
            Action::Stop(_) => ActionKind::Stop,
        }
    }
}
