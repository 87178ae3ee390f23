//! What the reference facilitator saw and did, in order: connections, every client frame, every Response, every
//! status stored, jobs created and pushed, heartbeats, auth attempts. Tests read a [`Records`] snapshot to check a
//! client's behaviour.
//!
//! Plain data: appended to by the server under its lock, cloned out by `snapshot()`. Times are tokio instants, so
//! they follow tokio's clock. The helpers that count or look up jobs are O(1), so `wait_for` predicates stay cheap
//! in long runs.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;

use serde_json::Value;
use tokio::time::Instant;

use crate::protocol::{ClientMessage, JobStatus, Response};

/// A connection's number: 1 for the first accepted WebSocket, then 2, 3, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Everything recorded so far. Lists are in the order things happened. The helper methods assume the lists were
/// not edited after the snapshot was taken.
#[derive(Debug, Clone)]
pub struct Records {
    /// When the facilitator started.
    pub started_at: Instant,
    /// Every accepted WebSocket connection; `connections[i]` has id `i + 1`.
    pub connections: Vec<ConnectionRecord>,
    /// Upgrade requests refused during the handshake (wrong path).
    pub rejected_handshakes: Vec<RejectedHandshake>,
    /// Every text or binary frame a client sent, with what it decoded to.
    pub messages: Vec<MessageRecord>,
    /// Every Response sent.
    pub responses: Vec<ResponseRecord>,
    /// Every `V0AuthenticationRequest` and what came of it.
    pub auth_attempts: Vec<AuthRecord>,
    /// Every well-formed `V0JobStatusUpdate` and what came of it.
    pub status_updates: Vec<StatusUpdateRecord>,
    /// Every job the facilitator created, in creation order.
    pub jobs: Vec<JobRecord>,
    /// Every frame written to a client on the facilitator's initiative (jobs, cheat reports, raw frames).
    pub pushes: Vec<PushRecord>,
    /// Every `V0Heartbeat` from an authenticated connection.
    pub heartbeats: Vec<HeartbeatRecord>,
    /// Index into `jobs` by the UUID's value (so any spelling finds the job).
    job_index: HashMap<u128, usize>,
    /// How many jobs have a terminal status stored.
    finished_jobs: usize,
}

impl Records {
    pub(crate) fn new(now: Instant) -> Records {
        Records {
            started_at: now,
            connections: Vec::new(),
            rejected_handshakes: Vec::new(),
            messages: Vec::new(),
            responses: Vec::new(),
            auth_attempts: Vec::new(),
            status_updates: Vec::new(),
            jobs: Vec::new(),
            pushes: Vec::new(),
            heartbeats: Vec::new(),
            job_index: HashMap::new(),
            finished_jobs: 0,
        }
    }

    /// Appends a job created by the facilitator.
    pub(crate) fn add_job(&mut self, key: Option<u128>, job: JobRecord) -> usize {
        let index = self.jobs.len();
        if let Some(key) = key {
            self.job_index.insert(key, index);
        }
        self.jobs.push(job);
        index
    }

    /// Appends a stored status to a job's list; true if it is the job's first terminal status.
    pub(crate) fn add_status(&mut self, index: usize, status: JobStatus) -> bool {
        let Some(job) = self.jobs.get_mut(index) else {
            return false;
        };
        let was_finished = job.is_finished();
        job.statuses.push(status);
        let finished_now = !was_finished && job.is_finished();
        if finished_now {
            self.finished_jobs += 1;
        }
        finished_now
    }

    /// The record of a connection.
    pub fn connection(&self, id: ConnectionId) -> Option<&ConnectionRecord> {
        let index = usize::try_from(id.0).ok()?.checked_sub(1)?;
        self.connections.get(index)
    }

    pub(crate) fn connection_mut(&mut self, id: ConnectionId) -> Option<&mut ConnectionRecord> {
        let index = usize::try_from(id.0).ok()?.checked_sub(1)?;
        self.connections.get_mut(index)
    }

    /// Connections not closed yet.
    pub fn open_connections(&self) -> impl Iterator<Item = &ConnectionRecord> {
        self.connections.iter().filter(|c| c.end.is_none())
    }

    /// How many open connections are authenticated.
    pub fn authenticated_connections(&self) -> usize {
        self.open_connections()
            .filter(|c| c.hotkey.is_some())
            .count()
    }

    /// The job with this UUID (any spelling the facilitator's lookup accepts; a job pushed with a UUID that is not
    /// one is found by its exact text).
    pub fn job(&self, uuid: &str) -> Option<&JobRecord> {
        match super::uuid::parse(uuid) {
            Some(key) => self.job_index.get(&key).and_then(|&i| self.jobs.get(i)),
            None => self.jobs.iter().find(|j| j.uuid == uuid),
        }
    }

    /// The statuses stored for a job from clients, in arrival order (`sent`, stored at creation, not included).
    /// Empty for an unknown job.
    pub fn statuses_of(&self, uuid: &str) -> &[JobStatus] {
        self.job(uuid).map_or(&[], |j| j.statuses.as_slice())
    }

    /// Status updates answered `job.integrity_error` (the status was already stored).
    pub fn duplicates(&self) -> impl Iterator<Item = &StatusUpdateRecord> {
        self.status_updates
            .iter()
            .filter(|u| u.outcome == StatusOutcome::IntegrityError)
    }

    /// Status updates that were stored (including those stored right before an emulated crash).
    pub fn stored(&self) -> impl Iterator<Item = &StatusUpdateRecord> {
        self.status_updates.iter().filter(|u| u.outcome.stored())
    }

    /// Jobs with a terminal status stored.
    pub fn finished_jobs(&self) -> usize {
        self.finished_jobs
    }

    /// The Responses sent on one connection, in order.
    pub fn responses_on(&self, id: ConnectionId) -> impl Iterator<Item = &Response> {
        self.responses
            .iter()
            .filter(move |r| r.connection == id)
            .map(|r| &r.response)
    }

    /// One line of counts, for logs and failure messages.
    pub fn summary(&self) -> String {
        format!(
            "{} connections ({} open, {} authenticated), {} messages, {} responses, {} jobs ({} finished), \
             {} statuses stored, {} duplicates, {} heartbeats",
            self.connections.len(),
            self.open_connections().count(),
            self.authenticated_connections(),
            self.messages.len(),
            self.responses.len(),
            self.jobs.len(),
            self.finished_jobs(),
            self.stored().count(),
            self.duplicates().count(),
            self.heartbeats.len(),
        )
    }
}

/// One accepted WebSocket connection.
#[derive(Debug, Clone)]
pub struct ConnectionRecord {
    /// Its number.
    pub id: ConnectionId,
    /// The client's address.
    pub peer: SocketAddr,
    /// The `X-Validator-Runner-Version` header, if sent.
    pub runner_version: Option<String>,
    /// The `X-Validator-Version` header, if sent.
    pub validator_version: Option<String>,
    /// The SS58 address it authenticated as.
    pub hotkey: Option<String>,
    /// When the WebSocket handshake completed.
    pub opened_at: Instant,
    /// When the connection ended.
    pub closed_at: Option<Instant>,
    /// The close code the facilitator sent, if it sent a close frame.
    pub close_sent: Option<u16>,
    /// The close code the client sent, if it sent a close frame (1005 for a close frame without a code).
    pub close_received: Option<u16>,
    /// Text and binary frames received.
    pub messages: u64,
    /// When the last heartbeat arrived (set at authentication, as the real server does).
    pub last_heartbeat: Option<Instant>,
    /// Whether a stall fault stopped this connection's reading and writing.
    pub stalled: bool,
    /// How it ended; `None` while open.
    pub end: Option<ConnectionEnd>,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The client sent a close frame.
    ClientClosed,
    /// The client's side went away without a close frame (EOF, reset, protocol error).
    ClientVanished(String),
    /// The facilitator sent a close frame (auth rejection, a close fault or `close_all_connections`).
    ServerClosed,
    /// The facilitator dropped the TCP connection without a close frame, as the real one does when its handler
    /// crashes (docs/PROTOCOL.md 5.4). The text says why.
    Crashed(String),
    /// Dropped without a close frame by a drop fault or `drop_all_connections`.
    Dropped,
    /// The facilitator shut down.
    Shutdown,
}

/// An upgrade request refused in the handshake.
#[derive(Debug, Clone)]
pub struct RejectedHandshake {
    /// When.
    pub at: Instant,
    /// From where.
    pub peer: SocketAddr,
    /// The requested path (with its query, if any).
    pub path: String,
}

/// A frame a client sent.
#[derive(Debug, Clone)]
pub struct MessageRecord {
    /// On which connection.
    pub connection: ConnectionId,
    /// When it was read.
    pub at: Instant,
    /// The frame.
    pub frame: ClientFrame,
    /// What it decoded to with the server's rules; `None` if it did not decode (it got a parse-error Response).
    pub message: Option<ClientMessage>,
}

/// The payload of a client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
}

/// A Response sent.
#[derive(Debug, Clone)]
pub struct ResponseRecord {
    /// On which connection.
    pub connection: ConnectionId,
    /// When it was written.
    pub at: Instant,
    /// The Response.
    pub response: Response,
}

/// An authentication attempt.
#[derive(Debug, Clone)]
pub struct AuthRecord {
    /// On which connection.
    pub connection: ConnectionId,
    /// When.
    pub at: Instant,
    /// The request's `public_key` as sent.
    pub public_key: String,
    /// What the facilitator did.
    pub outcome: AuthOutcome,
}

/// What came of an authentication attempt (docs/PROTOCOL.md 8.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Success, as this SS58 address.
    Authenticated(String),
    /// `auth.already_authenticated`.
    AlreadyAuthenticated,
    /// `auth.validator_not_found`, then close 3001. `injected` when a fault caused it.
    ValidatorNotFound {
        /// Whether a `reject_auth` fault caused it.
        injected: bool,
    },
    /// `auth.signature_invalid`, then close 3000.
    SignatureInvalid {
        /// Whether a `reject_auth` fault caused it.
        injected: bool,
    },
    /// Malformed key or signature: dropped without a Response, as the real server's handler crashes.
    Crashed(String),
}

/// A well-formed status update and what came of it.
#[derive(Debug, Clone)]
pub struct StatusUpdateRecord {
    /// On which connection.
    pub connection: ConnectionId,
    /// When.
    pub at: Instant,
    /// The `uuid` as sent.
    pub uuid: String,
    /// The status (unknown values as `unknown`).
    pub status: JobStatus,
    /// The `metadata` value as sent (`null` when absent).
    pub metadata: Value,
    /// What the facilitator did.
    pub outcome: StatusOutcome,
}

/// What came of a status update (docs/PROTOCOL.md 3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusOutcome {
    /// Stored; success Response.
    Stored,
    /// `completed`/`streaming_ready` with null metadata: stored, then dropped without a Response (crash, 5.4).
    StoredThenCrashed,
    /// `auth.not_authenticated`.
    NotAuthenticated,
    /// The `uuid` is not a UUID: dropped without a Response (crash, 5.4).
    InvalidUuid,
    /// `job.not_found`.
    NotFound,
    /// `job.integrity_error`: this status was already stored for the job.
    IntegrityError,
}

impl StatusOutcome {
    /// Whether the status was stored.
    pub fn stored(self) -> bool {
        matches!(
            self,
            StatusOutcome::Stored | StatusOutcome::StoredThenCrashed
        )
    }
}

/// A job the facilitator created.
#[derive(Debug, Clone)]
pub struct JobRecord {
    /// Its UUID as sent.
    pub uuid: String,
    /// When it was created.
    pub created_at: Instant,
    /// The connections it was written to, in order.
    pub pushed_to: Vec<ConnectionId>,
    /// Statuses stored from clients, in arrival order (`sent` is stored at creation and not listed).
    pub statuses: Vec<JobStatus>,
}

impl JobRecord {
    /// Whether a terminal status was stored.
    pub fn is_finished(&self) -> bool {
        self.statuses.iter().any(|s| s.is_terminal())
    }
}

/// A frame written on the facilitator's initiative.
#[derive(Debug, Clone)]
pub struct PushRecord {
    /// To which connection.
    pub connection: ConnectionId,
    /// When it was written.
    pub at: Instant,
    /// What it was.
    pub kind: PushKind,
}

/// What kind of frame was pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushKind {
    /// A `V2JobRequest` with this UUID.
    Job(String),
    /// A `V0JobCheated` about this job UUID.
    Cheated(String),
    /// A raw text frame.
    RawText,
    /// A binary frame.
    Binary,
}

/// A heartbeat from an authenticated connection.
#[derive(Debug, Clone)]
pub struct HeartbeatRecord {
    /// On which connection.
    pub connection: ConnectionId,
    /// When.
    pub at: Instant,
}
