//! The model: the real [`Machine`] plus a small, finite, hashable world around it, and the properties checked on
//! every state the two can reach together.
//!
//! Owns the world (the facilitator's side of the wire, the job handlers, the signals, logical time, and with the
//! spool on the spool file, the writer's queue and crashes), the model's
//! nondeterministic choices ([`Act`]), the projection that decides when two states are the same ([`McState`]'s
//! `Hash`/`Eq`), and the properties. Must never re-implement a decision of the machine: every input goes through
//! `Machine::step`, and the world only records what the machine did and judges it against what it must do.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use facilitator_client::machine::{
    Action, BackoffConfig, Config, ConnectPhase, DrainPhase, Event, Incoming, Input, Machine,
    Reason, Recovery, State, StopReason,
};
use facilitator_client::protocol::keys::Hotkey;
use facilitator_client::protocol::testing::signed_job_text;
use facilitator_client::protocol::{
    AuthenticationRequest, ClientMessage, HordeFailureReason, JobRejectionReason, JobStatus,
    JobStatusUpdate, Response, ServerMessage, TrustedSigners, decode_server_frame, error_type,
};
use facilitator_client::spool::{HandlerRecord, JobRecord, Recovered, SpoolBatch, SpooledStatus};
use serde_json::{Value, json};
use stateright::{Model, Property};

/// The unit of logical time: every timeout of the model's configuration is a whole number of these, and the
/// clock moves by whole units.
pub const TICK: Duration = Duration::from_secs(1);

/// How late a late wake-up is: one tick, under the heartbeat interval, so a heartbeat scheduled from the missed
/// deadline instead of from the wake-up would come too soon.
pub const LATE: Duration = TICK;

/// The most jobs a model can have (their UUIDs are `job-1` .. `job-N`).
pub const MAX_JOBS: usize = 3;

/// The bounds of one run: how many of each nondeterministic resource the world may spend. Everything else the
/// world does (time passing, Pongs, Responses, handler statuses) is unbounded but cannot grow the projected
/// state, so the state space is finite.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Jobs the facilitator pushes (each trusted, untrusted or undecodable, chosen when it is pushed).
    pub jobs: u8,
    /// How many of those may be untrusted or undecodable (the others are trusted).
    pub refused_jobs: u8,
    /// Link faults: a connection attempt that fails, a link that drops (the client's socket fails, the peer
    /// closes with 1000, the peer goes away without a close frame), an `auth.validator_not_found` answer.
    pub drops: u8,
    /// Wake-ups that come one [`LATE`] after the deadline instead of at it.
    pub late_wakeups: u8,
    /// Statuses the facilitator answers `job.not_found`.
    pub refusals: u8,
    /// Extra statuses from a handler after its own terminal status (a misbehaving handler).
    pub extra_statuses: u8,
    /// Whether the clock may also move by one tick short of the next deadline, so that inputs arrive between
    /// deadlines (otherwise everything happens at a deadline's instant).
    pub ticks: bool,
    /// Whether the facilitator may answer the auth request `auth.signature_invalid` (fatal).
    pub auth_rejection: bool,
    /// Outbox capacity, in-flight window and running-job limit of the machine's configuration (small, so that
    /// the bounds are reached).
    pub outbox_capacity: usize,
    /// See `outbox_capacity`.
    pub max_in_flight: usize,
    /// See `outbox_capacity`.
    pub max_running_jobs: usize,
    /// The spool on (`Config::durable`): the world keeps what is on disk, commits or fails the machine's
    /// `Persist` batches, and may crash the process.
    pub durable: bool,
    /// Crashes (the process dies; a new one recovers what is on disk). Only with `durable`.
    pub crashes: u8,
    /// Commits that fail (a full or failing disk). Only with `durable`.
    pub commit_failures: u8,
}

/// The machine's timeouts in the model, in milliseconds, under the names of the scenario format's `config`.
const TIMEOUTS_MS: [(&str, u64); 8] = [
    ("heartbeat_interval_ms", 2_000),
    ("peer_timeout_ms", 4_000),
    ("connect_timeout_ms", 2_000),
    ("drain_timeout_ms", 3_000),
    ("close_timeout_ms", 2_000),
    ("backoff_base_ms", 1_000),
    ("backoff_cap_ms", 2_000),
    ("stable_after_ms", 2_000),
];

fn timeout(name: &str) -> Duration {
    let ms = TIMEOUTS_MS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, ms)| *ms)
        .unwrap_or_else(|| unreachable!("{name} is one of TIMEOUTS_MS"));
    Duration::from_millis(ms)
}

impl Bounds {
    /// The machine's configuration for these bounds: the timeouts of `TIMEOUTS_MS`, a backoff of factor 2 and
    /// no jitter (exactly what `tests/scenarios.rs` builds from the same overrides, so a counterexample replays).
    pub fn config(&self) -> Config {
        let config = Config {
            heartbeat_interval: timeout("heartbeat_interval_ms"),
            peer_timeout: timeout("peer_timeout_ms"),
            connect_timeout: timeout("connect_timeout_ms"),
            drain_timeout: timeout("drain_timeout_ms"),
            close_timeout: timeout("close_timeout_ms"),
            backoff: BackoffConfig {
                base: timeout("backoff_base_ms"),
                factor: 2.0,
                cap: timeout("backoff_cap_ms"),
                jitter: 0.0,
                stable_after: timeout("stable_after_ms"),
            },
            jitter_seed: 1,
            outbox_capacity: self.outbox_capacity,
            max_in_flight: self.max_in_flight,
            durable: self.durable,
            max_running_jobs: self.max_running_jobs,
        };
        assert_eq!(config.validate(), Ok(()), "the model's configuration");
        config
    }

    /// The `config` object of a scenario file for this configuration.
    pub fn scenario_config(&self) -> Value {
        let mut object = serde_json::Map::new();
        for (name, ms) in TIMEOUTS_MS {
            object.insert(name.to_owned(), json!(ms));
        }
        object.insert("outbox_capacity".into(), json!(self.outbox_capacity));
        object.insert("max_in_flight".into(), json!(self.max_in_flight));
        object.insert("max_running_jobs".into(), json!(self.max_running_jobs));
        if self.durable {
            object.insert("durable".into(), json!(true));
        }
        Value::Object(object)
    }
}

/// A short list in a fixed array: the world is cloned for every state explored, and a clone of this is a copy,
/// not an allocation.
#[derive(Clone, Copy)]
pub struct Small<T: Copy + Fill, const N: usize> {
    items: [T; N],
    len: u8,
}

/// The filler of a [`Small`]'s unused slots.
pub trait Fill: Copy {
    /// Any value (never read).
    const FILL: Self;
}

impl Fill for JobStatus {
    const FILL: Self = JobStatus::Unknown;
}

impl<T: Copy + Fill, const N: usize> Small<T, N> {
    /// The empty list.
    pub const fn new() -> Self {
        Small {
            items: [T::FILL; N],
            len: 0,
        }
    }

    /// The items, oldest first.
    pub fn as_slice(&self) -> &[T] {
        &self.items[..usize::from(self.len)]
    }

    /// Appends; the model's bounds keep every list short, so running out of room is a bug of the model.
    pub fn push(&mut self, item: T) {
        assert!(
            usize::from(self.len) < N,
            "a model list outgrew its {N} slots"
        );
        self.items[usize::from(self.len)] = item;
        self.len += 1;
    }

    /// Removes and returns the oldest item.
    pub fn pop_front(&mut self) -> Option<T> {
        let first = *self.as_slice().first()?;
        self.items.copy_within(1..usize::from(self.len), 0);
        self.len -= 1;
        Some(first)
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The oldest item.
    pub fn front(&self) -> Option<&T> {
        self.as_slice().first()
    }

    /// Whether the list holds `item`.
    pub fn contains(&self, item: &T) -> bool
    where
        T: PartialEq,
    {
        self.as_slice().contains(item)
    }

    /// The items, oldest first.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.as_slice().iter()
    }
}

impl<'a, T: Copy + Fill, const N: usize> IntoIterator for &'a Small<T, N> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

impl<T: Copy + Fill + PartialEq, const N: usize> PartialEq for Small<T, N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Copy + Fill + Eq, const N: usize> Eq for Small<T, N> {}

impl<T: Copy + Fill + Hash, const N: usize> Hash for Small<T, N> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl<T: Copy + Fill + std::fmt::Debug, const N: usize> std::fmt::Debug for Small<T, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// Statuses of one job (at most `received`, the script, an extra status, `horde_failed`, `rejected`).
pub type Statuses = Small<JobStatus, 8>;

/// What kind of job request the facilitator pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// Signed by a trusted signer: must be dispatched (if there is room and no drain).
    Trusted,
    /// Signed by a key the client does not trust: must be refused, never dispatched.
    Untrusted,
    /// Readable UUID, unknown executor class: undecodable, refused.
    Invalid,
}

/// How the facilitator answers the auth request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthAnswer {
    /// `{"status":"success"}`.
    Success,
    /// `auth.signature_invalid`: fatal.
    SignatureInvalid,
    /// `auth.validator_not_found`: retried at the backoff cap.
    ValidatorNotFound,
}

/// How the facilitator answers a status update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Answer {
    /// Stored.
    Success,
    /// Already stored (a re-send).
    IntegrityError,
    /// `job.not_found`: refused, not retried.
    NotFound,
}

/// How a link drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropKind {
    /// The client's socket fails (connecting, reading or writing).
    Failed,
    /// The peer closes cleanly (1000).
    PeerClosed,
    /// The peer goes away without a close frame.
    PeerGone,
}

/// The model's nondeterministic choices: one is one step of the world (most feed the machine one input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Act {
    /// The clock jumps to the machine's next deadline; the machine gets a Tick.
    Wait,
    /// The clock jumps one [`LATE`] past the machine's next deadline (a late wake-up); the machine gets a Tick.
    WaitLate,
    /// The clock moves one tick, still short of the next deadline (no input: nothing is due).
    Advance,
    /// The pending socket opens.
    OpenSucceeds,
    /// The facilitator reads the oldest frame the client sent; for the auth request, answers it so.
    FacilitatorAuth(AuthAnswer),
    /// The facilitator reads the oldest frame the client sent (a status, answered `Success`, or `IntegrityError`
    /// when stored before; or the Close, answered with its close).
    FacilitatorReads,
    /// The facilitator reads the oldest frame, a status it has not stored, and answers `job.not_found`.
    FacilitatorRefuses,
    /// The client reads the oldest frame the facilitator sent.
    Deliver,
    /// The client reads every frame the facilitator sent so far (two or more) in one read: one
    /// [`Input::Frames`], whose job requests' signatures the machine checks in one batch.
    DeliverBatch,
    /// A Pong answers the outstanding Ping.
    Pong,
    /// The facilitator pushes the next job request.
    PushJob(JobKind),
    /// The link drops.
    Drop(DropKind),
    /// A running (or cancelled but not yet reaped) job's handler reports its next status.
    HandlerStatus(u8),
    /// A job's handler reports a second terminal status after its own.
    HandlerExtraStatus(u8),
    /// A job's handler ends, after its terminal status.
    HandlerFinishes(u8),
    /// The first signal.
    Shutdown,
    /// The second signal.
    ForceStop,
    /// The spool's writer commits every batch queued, as one commit (`true`), or the commit fails (`false`,
    /// bounded); the machine gets `Persisted`.
    Commit(bool),
    /// The process dies (bounded): memory, socket, handlers and the writer's queue are gone, what is on disk and
    /// at the facilitator stays; a new machine of the same configuration recovers what is on disk.
    Crash,
}

/// A frame from the client, in flight to the facilitator (heartbeats are not kept: the facilitator ignores
/// them; when they are sent is checked as they are sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Up {
    /// The auth request.
    Auth,
    /// A status update of job index `.0`.
    Status(u8, JobStatus),
    /// The Close frame, with its code.
    Close(u16),
}

impl Fill for Up {
    const FILL: Self = Up::Auth;
}

/// A frame from the facilitator, in flight to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Down {
    /// The answer to the auth request.
    Auth(AuthAnswer),
    /// The answer to a status update, with the status it answers (to check the client's FIFO matching).
    Ack(Answer, u8, JobStatus),
    /// A job request.
    Job(u8, JobKind),
    /// The facilitator's close frame, answering the client's.
    CloseReply(u16),
}

impl Fill for Down {
    const FILL: Self = Down::CloseReply(0);
}

/// The world's side of one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// The WebSocket handshake completed (`SocketOpened` fed).
    pub open: bool,
    /// The client sent its auth request on this socket.
    pub auth_sent: bool,
    /// The client received the auth success on this socket: only from then on may it send anything else.
    pub client_authed: bool,
    /// The facilitator answered the auth request with success: only from then on does it push jobs.
    pub facilitator_authed: bool,
    /// The client sent its Close frame: it may send nothing more.
    pub close_sent: bool,
    /// The facilitator read the Close frame: it pushes nothing more.
    pub close_read: bool,
    /// Client to facilitator, oldest first.
    pub up: Small<Up, 16>,
    /// Facilitator to client, oldest first.
    pub down: Small<Down, 16>,
    /// A Ping is unanswered.
    pub ping_outstanding: bool,
    /// This connection did useful work while the client was Running: a status acknowledged or a job request
    /// received. Its loss must be retried after at most the backoff base.
    pub progress: bool,
    /// When the client last sent a heartbeat on this socket.
    pub last_heartbeat: Option<Instant>,
}

impl Link {
    fn opening() -> Self {
        Link {
            open: false,
            auth_sent: false,
            client_authed: false,
            facilitator_authed: false,
            close_sent: false,
            close_read: false,
            up: Small::new(),
            down: Small::new(),
            ping_outstanding: false,
            progress: false,
            last_heartbeat: None,
        }
    }
}

/// A job's handler, as the world runs it: its script is `accepted`, then `completed`, then it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Handler {
    /// Not dispatched.
    Idle,
    /// Dispatched; `next` statuses of the script reported so far.
    Running { next: u8 },
    /// Cancelled by the machine (`CancelJobs`); statuses already on their way may still arrive (the race between
    /// a handler's last status and its cancellation), and it never reports `Finished`.
    Cancelled { next: u8 },
    /// Ended (`JobFinished` fed).
    Done,
}

/// The handler's script.
const SCRIPT: [JobStatus; 2] = [JobStatus::Accepted, JobStatus::Completed];

/// What the world knows about one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobWorld {
    /// What the facilitator pushed, once it has.
    pub kind: Option<JobKind>,
    /// Its handler.
    pub handler: Handler,
    /// Every status the client must account for, in the order it came to be: `received` when dispatched,
    /// `rejected` when refused, each handler status accepted before the job ended, `horde_failed` when
    /// cancelled before its terminal status. Each must end up stored, refused, or still held.
    pub expected: Statuses,
    /// The job ended for the client (its terminal status fed, or it was cancelled): any later status is late
    /// and must be dropped.
    pub ended: bool,
    /// With the spool: its statuses that were ever on disk. Each must stay there until the facilitator answers
    /// it, and is never lost in a crash.
    pub ever_durable: Statuses,
    /// With the spool: one of its statuses left the client before it was on disk (released by a failed commit,
    /// or produced while the spool was stale, which the machine counts as unprotected): a crash may then leave it
    /// without a terminal status at the facilitator, or with a second one.
    pub exposed: bool,
    /// With the spool: its statuses a crash found on disk (the new process must deliver them).
    pub recovered: Statuses,
    /// With the spool: its statuses this process sent before they were on disk. The machine releases a status
    /// unprotected only when a commit failed or while the spool is stale, and counts each
    /// (`statuses_unspooled`): this process's unprotected sends may never outnumber that count.
    pub unprotected: Statuses,
}

/// The facilitator's durable side: what it stored. Survives anything that happens to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Facilitator {
    /// Per job, the statuses stored, in the order they were first received.
    pub stored: [Statuses; MAX_JOBS],
    /// Per job, the statuses answered `job.not_found`.
    pub refused: [Statuses; MAX_JOBS],
}

/// The client's durable side: the spool file, and the writer's queue. A crash keeps the file and
/// [`Facilitator`], and loses everything else of the world and the machine (the queue too); a new machine
/// recovers the file. Shared (`Arc`) between states until a commit or a `Persist` changes it: most steps do not.
#[derive(Debug, Clone, Default)]
pub struct Durable {
    /// What is on disk.
    pub disk: Arc<Disk>,
    /// `Persist` batches of this process not yet committed or failed, in order.
    pub queue: Arc<Vec<(u64, SpoolBatch)>>,
    /// The writer saw a commit fail: like the real writer it writes no delta until a full snapshot commits.
    pub stale: bool,
    /// The id of this process's last `Persist` (ids go up by one from 1).
    pub last_id: u64,
}

/// The spool file's content: what a new process recovers.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    /// Unanswered statuses, by id.
    pub statuses: BTreeMap<u64, JobStatusUpdate>,
    /// Job records, by uuid.
    pub jobs: BTreeMap<String, JobRecord>,
}

impl Disk {
    /// Applies one batch, as `SpoolBatch` documents it: a snapshot empties the file, then puts, then removes.
    fn apply(&mut self, batch: &SpoolBatch) {
        batch.apply_to(&mut self.statuses, &mut self.jobs);
    }

    /// Whether the file holds this status of job `j`.
    fn holds(&self, j: u8, status: JobStatus) -> bool {
        self.statuses
            .values()
            .any(|u| job_of(&u.uuid) == j && u.status == status)
    }
}

/// The nondeterministic resources left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Budget {
    /// See [`Bounds::drops`].
    pub drops: u8,
    /// See [`Bounds::late_wakeups`].
    pub late_wakeups: u8,
    /// See [`Bounds::refusals`].
    pub refusals: u8,
    /// See [`Bounds::extra_statuses`].
    pub extra_statuses: u8,
    /// See [`Bounds::refused_jobs`].
    pub refused_jobs: u8,
    /// See [`Bounds::crashes`].
    pub crashes: u8,
    /// See [`Bounds::commit_failures`].
    pub commit_failures: u8,
}

/// The named properties. Each `always` property fails on a state that breaks it, or on the state after a step
/// that broke it (recorded as a [`Violation`]: a property of a step, such as "ForceStop stops in one step").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prop {
    ShutdownBound,
    ForceStopOneStep,
    NoStatusLost,
    PerJobOrder,
    AuthFirst,
    OneSocket,
    Bounds,
    Backoff,
    DeadlineNotPast,
    NoIdleWakeup,
    HeartbeatPaced,
    DispatchDiscipline,
    CrashDurability,
}

impl Prop {
    /// The property's name, as the checker reports it (short: stateright hashes every property's name for
    /// every state it visits).
    pub fn name(self) -> &'static str {
        match self {
            Prop::ShutdownBound => "shutdown_bound",
            Prop::ForceStopOneStep => "force_stop_one_step",
            Prop::NoStatusLost => "no_status_lost",
            Prop::PerJobOrder => "per_job_order",
            Prop::AuthFirst => "auth_first",
            Prop::OneSocket => "one_socket",
            Prop::Bounds => "bounds",
            Prop::Backoff => "backoff",
            Prop::DeadlineNotPast => "deadline_not_past",
            Prop::NoIdleWakeup => "no_idle_wakeup",
            Prop::HeartbeatPaced => "heartbeat_paced",
            Prop::DispatchDiscipline => "dispatch_discipline",
            Prop::CrashDurability => "crash_durability",
        }
    }

    /// What the property says.
    pub fn statement(self) -> &'static str {
        match self {
            Prop::ShutdownBound => {
                "after Shutdown, Stopped within drain timeout + close timeout, given that deadlines fire"
            }
            Prop::ForceStopOneStep => "after ForceStop, Stopped in one step",
            Prop::NoStatusLost => {
                "every status produced is stored, refused, or still held (counted undelivered at the stop)"
            }
            Prop::PerJobOrder => {
                "per job, the facilitator gets statuses in order, `received` first, nothing after a terminal status"
            }
            Prop::AuthFirst => {
                "nothing but the auth request before the auth success; nothing after Close"
            }
            Prop::OneSocket => "at most one socket, and the machine and the world agree on it",
            Prop::Bounds => {
                "running jobs <= max_running_jobs; held statuses <= outbox_capacity + max_running_jobs"
            }
            Prop::Backoff => {
                "after a productive connection the next delay is at most the base; never over the cap"
            }
            Prop::DeadlineNotPast => "the next deadline is never in the past",
            Prop::NoIdleWakeup => "a deadline that fires always does something",
            Prop::HeartbeatPaced => {
                "heartbeats on one connection at least the interval apart (added: catches mutation 5)"
            }
            Prop::DispatchDiscipline => {
                "only trusted jobs dispatched, once, never after Shutdown (added: catches mutation 6)"
            }
            Prop::CrashDurability => {
                "with the spool: a committed status stays on disk until answered and survives a crash into the \
                 new outbox, in id order; a crash loses only uncommitted statuses, and their job then gets \
                 horde_failed (or never reached the facilitator); nothing leaves before its commit unless the \
                 spool is stale"
            }
        }
    }

    /// Every property, in report order.
    pub const ALL: [Prop; 13] = [
        Prop::ShutdownBound,
        Prop::ForceStopOneStep,
        Prop::NoStatusLost,
        Prop::PerJobOrder,
        Prop::AuthFirst,
        Prop::OneSocket,
        Prop::Bounds,
        Prop::Backoff,
        Prop::DeadlineNotPast,
        Prop::NoIdleWakeup,
        Prop::HeartbeatPaced,
        Prop::DispatchDiscipline,
        Prop::CrashDurability,
    ];
}

/// A property broken by a step, with what happened.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Violation {
    /// Which property.
    pub prop: Prop,
    /// What happened.
    pub detail: String,
}

/// Facts about the last step only (cleared by the next one), for the `sometimes` properties.
pub mod just {
    /// A job's `completed` was stored on a connection after the first.
    pub const COMPLETED_AFTER_RECONNECT: u16 = 1;
    /// The drain deadline passed with work left.
    pub const DRAIN_TIMED_OUT: u16 = 1 << 1;
    /// A handler's status after its job ended was dropped.
    pub const LATE_STATUS_DROPPED: u16 = 1 << 2;
    /// A re-sent status the facilitator had stored was answered `job.integrity_error` and counted delivered.
    pub const RESEND_ALREADY_STORED: u16 = 1 << 3;
    /// A status was refused (`job.not_found`).
    pub const STATUS_REFUSED: u16 = 1 << 4;
    /// A productive connection was lost after failed attempts had grown the backoff.
    pub const BACKOFF_RESET: u16 = 1 << 5;
    /// A status a crash found on disk was answered to the new process.
    pub const CRASH_RECOVERED: u16 = 1 << 6;
    /// A crash lost a status that was not yet committed, and its job got `horde_failed` from the recovery.
    pub const LOST_UNCOMMITTED_JOB_FAILED: u16 = 1 << 7;
    /// A status left before it was on disk (the spool was stale after a failed commit).
    pub const SENT_UNPROTECTED: u16 = 1 << 8;
    /// The recovery's `horde_failed` duplicated one the dead process sent unprotected (deep durable run).
    pub const RECOVERY_DUPLICATE: u16 = 1 << 9;
}

/// The world around the machine.
#[derive(Debug, Clone)]
pub struct World {
    /// Logical time. Not hashed: only time relative to it is.
    pub now: Instant,
    /// The socket, while there is one.
    pub link: Option<Link>,
    /// The facilitator's store.
    pub facilitator: Facilitator,
    /// The client's durable part (see [`Durable`]).
    pub durable: Durable,
    /// The jobs, by index (`job-1` is index 0).
    pub jobs: [JobWorld; MAX_JOBS],
    /// How many jobs the facilitator pushed so far.
    pub pushed: u8,
    /// Signals given (0, 1 = Shutdown, 2 = ForceStop).
    pub signals: u8,
    /// When the Shutdown was fed, if the machine was not already stopped.
    pub shutdown_at: Option<Instant>,
    /// What is left to spend.
    pub budget: Budget,
    /// Auth successes delivered to the client, up to 2 (enough to tell a reconnection).
    pub authentications: u8,
    /// See [`just`].
    pub just: u16,
    /// The property the last step broke, if any (the state is then a dead end).
    pub violation: Option<Violation>,
}

/// One state of the model: the real machine and its world.
#[derive(Debug, Clone)]
pub struct McState {
    /// The machine under test.
    pub machine: Machine,
    /// Everything else.
    pub world: World,
}

/// One input fed to the machine, in a form both the model and the scenario files can spell.
#[derive(Debug, Clone, PartialEq)]
pub enum Feed {
    Tick,
    SocketOpened,
    SocketFailed,
    SocketClosed(Option<u16>),
    /// A Response: success, or this error type.
    Response(Option<&'static str>),
    Job(u8, JobKind),
    /// Several frames in one read.
    Frames(Vec<Feed>),
    Status(u8, JobStatus),
    JobFinished(u8),
    Pong,
    Shutdown,
    ForceStop,
    /// The writer's commit of every batch up to `up_to`: `ok` whether the disk took it (the scenario's
    /// `{"Commit": "ok"}`), `written` whether it was written (not when the writer is stale and the batches hold
    /// no snapshot).
    Commit {
        up_to: u64,
        ok: bool,
        written: bool,
    },
    /// The process dies and a new one recovers the spool (the scenario's `"Crash"`; not an input).
    Crash,
}

/// The UUID the scenario files write as `job-N`.
pub fn job_uuid(index: u8) -> String {
    format!("00000000-0000-4000-8000-{:012x}", u64::from(index) + 1)
}

/// The scenario files' name of a job.
pub fn job_name(index: u8) -> String {
    format!("job-{}", u64::from(index) + 1)
}

impl Feed {
    /// The input in the scenario format of `states/scenarios/` (see `states/README.md`).
    pub fn to_json(&self) -> Value {
        match self {
            Feed::Tick => json!("Tick"),
            Feed::SocketOpened => json!("SocketOpened"),
            Feed::SocketFailed => json!({"SocketFailed": "model: the socket failed"}),
            Feed::SocketClosed(code) => json!({ "SocketClosed": code }),
            Feed::Response(None) => json!({"Response": "success"}),
            Feed::Response(Some(error)) => json!({ "Response": error }),
            Feed::Job(j, JobKind::Trusted) => json!({"Job": job_name(*j)}),
            Feed::Job(j, JobKind::Untrusted) => json!({"UntrustedJob": job_name(*j)}),
            Feed::Job(j, JobKind::Invalid) => json!({"InvalidJob": job_name(*j)}),
            Feed::Frames(frames) => {
                json!({ "Frames": frames.iter().map(Feed::to_json).collect::<Vec<_>>() })
            }
            Feed::Status(j, status) => json!({"Status": [job_name(*j), status.as_str()]}),
            Feed::JobFinished(j) => json!({"JobFinished": job_name(*j)}),
            Feed::Pong => json!("Pong"),
            Feed::Shutdown => json!("Shutdown"),
            Feed::ForceStop => json!("ForceStop"),
            Feed::Commit { ok: true, .. } => json!({"Commit": "ok"}),
            Feed::Commit { ok: false, .. } => json!({ "Commit": DISK_FAILED }),
            Feed::Crash => json!("Crash"),
        }
    }
}

/// The error of a failed commit.
const DISK_FAILED: &str = "model: the disk failed";

/// One input as fed: when (milliseconds from the start), what, and what the machine did (for the trace).
#[derive(Debug, Clone)]
pub struct Fed {
    /// Milliseconds from the start.
    pub at_ms: u64,
    /// The input.
    pub feed: Feed,
    /// The machine's state kind after it.
    pub state: &'static str,
    /// The machine's actions, rendered.
    pub actions: Vec<String>,
    /// The machine's actions without the numbers that only report history (sends, attempts, counts): what two
    /// states the projection merges must agree on.
    pub decisions: Vec<String>,
}

/// The keys and the job requests, built once: the machine checks each job request's signature itself, so the
/// model keeps the set tiny (one per job and kind) and shares each request (`Arc`) between all states.
struct Fixtures {
    /// The auth request every machine of the model sends (one: a crash's new machine sends the same bytes, as
    /// the projection leaves the auth request out).
    auth: AuthenticationRequest,
    signers: TrustedSigners,
    /// Per job index, per kind (in `JobKind` order), the input the request decodes to.
    job_inputs: Vec<[Input; 3]>,
}

impl Fixtures {
    fn new(jobs: u8) -> Self {
        // The keys of tests/scenarios.rs, so that a counterexample replays there.
        let own = Hotkey::from_seed(&[7u8; 32]);
        let signer = Hotkey::from_seed(&[0x11u8; 32]);
        let stranger = Hotkey::from_seed(&[0x22u8; 32]);
        let signers = TrustedSigners::new(own.public_key(), &[signer.ss58()])
            .unwrap_or_else(|e| unreachable!("a freshly made SS58 address parses: {e}"));
        let decode = |text: &str| match decode_server_frame(text, 1 << 20) {
            Ok(message) => Input::Frame(message),
            Err(error) => Input::Undecodable(error),
        };
        let job_inputs = (0..jobs)
            .map(|j| {
                let uuid = job_uuid(j);
                [
                    decode(&signed_job_text(&signer, &uuid)),
                    decode(&signed_job_text(&stranger, &uuid)),
                    decode(
                        &signed_job_text(&signer, &uuid)
                            .replace("always_on.gpu-24gb", "no_such.class"),
                    ),
                ]
            })
            .collect();
        Fixtures {
            auth: own.auth_request(),
            signers,
            job_inputs,
        }
    }
}

/// The model checked by stateright.
pub struct McModel {
    /// The bounds of this run.
    pub bounds: Bounds,
    config: Config,
    origin: Instant,
    fixtures: Arc<Fixtures>,
    /// Trusted job requests fed to a Running machine: each costs the machine one sr25519 verification.
    pub trusted_deliveries: AtomicU64,
}

impl McModel {
    /// A model within these bounds.
    pub fn new(bounds: Bounds) -> Self {
        assert!(usize::from(bounds.jobs) <= MAX_JOBS);
        McModel {
            config: bounds.config(),
            bounds,
            origin: Instant::now(),
            fixtures: Arc::new(Fixtures::new(bounds.jobs)),
            trusted_deliveries: AtomicU64::new(0),
        }
    }

    /// What one signature check of a trusted job request costs the machine (the median of 101).
    pub fn signature_check_cost(&self) -> Duration {
        let Input::Frame(ServerMessage::JobRequest(job)) = &self.fixtures.job_inputs[0][0] else {
            unreachable!("job-1's trusted request decodes as a job request")
        };
        let mut times: Vec<Duration> = (0..101)
            .map(|_| {
                let started = Instant::now();
                assert_eq!(self.fixtures.signers.check(job), Ok(()));
                started.elapsed()
            })
            .collect();
        times.sort();
        times[50]
    }

    fn ms(&self, t: Instant) -> u64 {
        (t - self.origin).as_millis() as u64
    }

    fn input(&self, feed: &Feed) -> Input {
        match feed {
            Feed::Tick => Input::Tick,
            Feed::SocketOpened => Input::SocketOpened,
            Feed::SocketFailed => Input::SocketFailed("model: the socket failed".into()),
            Feed::SocketClosed(code) => Input::SocketClosed(*code),
            Feed::Response(None) => Input::Frame(ServerMessage::Response(Response::success())),
            Feed::Response(Some(error)) => {
                Input::Frame(ServerMessage::Response(Response::error(error, "error", "")))
            }
            Feed::Job(j, kind) => self.fixtures.job_inputs[usize::from(*j)][*kind as usize].clone(),
            Feed::Frames(frames) => Input::Frames(
                frames
                    .iter()
                    .map(|f| match self.input(f) {
                        Input::Frame(message) => Incoming::Message(message),
                        Input::Undecodable(error) => Incoming::Undecodable(error),
                        Input::Pong => Incoming::Pong,
                        other => unreachable!("{other:?} is not read from the socket"),
                    })
                    .collect(),
            ),
            Feed::Status(j, status) => Input::Status(JobStatusUpdate::new(job_uuid(*j), *status)),
            Feed::JobFinished(j) => Input::JobFinished(job_uuid(*j)),
            Feed::Pong => Input::Pong,
            Feed::Shutdown => Input::Shutdown,
            Feed::ForceStop => Input::ForceStop,
            Feed::Commit { up_to, ok, written } => Input::Persisted {
                up_to: *up_to,
                result: match (ok, written) {
                    (_, true) => Ok(()),
                    (true, false) => Err("not written: the spool is stale".to_owned()),
                    (false, _) => Err(DISK_FAILED.to_owned()),
                },
            },
            Feed::Crash => unreachable!("a crash is no input"),
        }
    }

    /// The state after `act`, recording each input fed in `log` when given (for printing a path as a scenario).
    pub fn apply(&self, last: &McState, act: Act, log: Option<&mut Vec<Fed>>) -> Option<McState> {
        let mut world = last.world.clone();
        world.just = 0;
        let mut step = Stepper {
            model: self,
            last: &last.machine,
            machine: None,
            world,
            log,
        };
        step.act(act)?;
        Some(McState {
            machine: step.machine.unwrap_or_else(|| last.machine.clone()),
            world: step.world,
        })
    }
}

/// Applies one [`Act`] to a state. The machine is cloned only when it is stepped (or, at the end, when the
/// action applied): most actions do not apply in a given state, and a clone of the machine is most of the cost
/// of a step.
struct Stepper<'a> {
    model: &'a McModel,
    last: &'a Machine,
    machine: Option<Machine>,
    world: World,
    log: Option<&'a mut Vec<Fed>>,
}

impl Stepper<'_> {
    fn m(&self) -> &Machine {
        self.machine.as_ref().unwrap_or(self.last)
    }

    fn m_mut(&mut self) -> &mut Machine {
        self.machine.get_or_insert_with(|| self.last.clone())
    }

    fn violate(&mut self, prop: Prop, detail: impl Into<String>) {
        // The first violation of a step is the one reported.
        if self.world.violation.is_none() {
            self.world.violation = Some(Violation {
                prop,
                detail: detail.into(),
            });
        }
    }

    fn link(&mut self) -> Option<&mut Link> {
        self.world.link.as_mut()
    }

    /// `None` when the action does not apply (the checker then ignores it).
    fn act(&mut self, act: Act) -> Option<()> {
        let now = self.world.now;
        match act {
            Act::Wait | Act::WaitLate => {
                let (deadline, timer) = self.m().poll_timeout()?;
                let mut at = now.max(deadline);
                if act == Act::WaitLate {
                    if self.world.budget.late_wakeups == 0 {
                        return None;
                    }
                    self.world.budget.late_wakeups -= 1;
                    at += LATE;
                }
                self.world.now = at;
                let before = self.m().state().clone();
                let actions = self.feed(Feed::Tick);
                if actions.is_empty() && *self.m().state() == before {
                    self.violate(
                        Prop::NoIdleWakeup,
                        format!("woken for the {timer} deadline and did nothing"),
                    );
                }
            }
            Act::Advance => {
                let (deadline, _) = self.m().poll_timeout()?;
                if !self.model.bounds.ticks || now + TICK >= deadline {
                    return None;
                }
                self.world.now = now + TICK;
            }
            Act::OpenSucceeds => {
                let link = self.link().filter(|l| !l.open)?;
                link.open = true;
                self.feed(Feed::SocketOpened);
            }
            Act::FacilitatorAuth(answer) => {
                let link = self.world.link.as_ref()?;
                if link.up.front() != Some(&Up::Auth) {
                    return None;
                }
                match answer {
                    AuthAnswer::Success => {}
                    AuthAnswer::SignatureInvalid if self.model.bounds.auth_rejection => {}
                    AuthAnswer::ValidatorNotFound if self.world.budget.drops > 0 => {
                        self.world.budget.drops -= 1;
                    }
                    _ => return None,
                }
                let link = self.link()?;
                link.up.pop_front();
                link.facilitator_authed = answer == AuthAnswer::Success;
                link.down.push(Down::Auth(answer));
            }
            Act::FacilitatorReads | Act::FacilitatorRefuses => {
                let front = *self.world.link.as_ref()?.up.front()?;
                match front {
                    Up::Auth => return None,
                    Up::Close(code) => {
                        if act == Act::FacilitatorRefuses {
                            return None;
                        }
                        let link = self.link()?;
                        link.up.pop_front();
                        link.close_read = true;
                        link.down.push(Down::CloseReply(code));
                    }
                    Up::Status(j, status) => self.facilitator_reads_status(act, j, status)?,
                }
            }
            Act::Deliver => {
                let front = self.link()?.down.pop_front()?;
                self.deliver(&[front]);
            }
            Act::DeliverBatch => {
                // Everything read so far in one read, up to the facilitator's close (a close is not a frame).
                let link = self.link()?;
                let count = link
                    .down
                    .iter()
                    .take_while(|f| !matches!(f, Down::CloseReply(_)))
                    .count();
                if count < 2 {
                    return None;
                }
                let frames: Vec<Down> = (0..count).filter_map(|_| link.down.pop_front()).collect();
                self.deliver(&frames);
            }
            Act::Pong => {
                let link = self
                    .link()
                    .filter(|l| l.client_authed && l.ping_outstanding)?;
                link.ping_outstanding = false;
                self.feed(Feed::Pong);
            }
            Act::PushJob(kind) => {
                let j = self.world.pushed;
                if j >= self.model.bounds.jobs
                    || (kind != JobKind::Trusted && self.world.budget.refused_jobs == 0)
                {
                    return None;
                }
                if kind != JobKind::Trusted {
                    self.world.budget.refused_jobs -= 1;
                }
                let link = self
                    .link()
                    .filter(|l| l.facilitator_authed && !l.close_read)?;
                link.down.push(Down::Job(j, kind));
                self.world.pushed += 1;
                self.world.jobs[usize::from(j)].kind = Some(kind);
            }
            Act::Drop(kind) => {
                let open = self.world.link.as_ref()?.open;
                if self.world.budget.drops == 0 || (!open && kind != DropKind::Failed) {
                    return None;
                }
                self.world.budget.drops -= 1;
                let feed = match kind {
                    DropKind::Failed => Feed::SocketFailed,
                    DropKind::PeerClosed => Feed::SocketClosed(Some(1000)),
                    DropKind::PeerGone => Feed::SocketClosed(None),
                };
                self.feed(feed);
            }
            Act::HandlerStatus(j) => {
                let (Handler::Running { next } | Handler::Cancelled { next }) =
                    self.world.jobs[usize::from(j)].handler
                else {
                    return None;
                };
                let status = *SCRIPT.get(usize::from(next))?;
                if !self.m().accepts_statuses() {
                    return None;
                }
                match &mut self.world.jobs[usize::from(j)].handler {
                    Handler::Running { next } | Handler::Cancelled { next } => *next += 1,
                    _ => unreachable!("matched above"),
                }
                self.handler_status(j, status);
            }
            Act::HandlerExtraStatus(j) => {
                let job = &self.world.jobs[usize::from(j)];
                if self.world.budget.extra_statuses == 0
                    || job.handler
                        != (Handler::Running {
                            next: SCRIPT.len() as u8,
                        })
                    || !self.m().accepts_statuses()
                {
                    return None;
                }
                self.world.budget.extra_statuses -= 1;
                self.handler_status(j, JobStatus::Failed);
            }
            Act::HandlerFinishes(j) => {
                let job = &mut self.world.jobs[usize::from(j)];
                if job.handler
                    != (Handler::Running {
                        next: SCRIPT.len() as u8,
                    })
                {
                    return None;
                }
                job.handler = Handler::Done;
                self.feed(Feed::JobFinished(j));
            }
            Act::Shutdown => {
                if self.world.signals != 0 {
                    return None;
                }
                self.world.signals = 1;
                self.world.shutdown_at = Some(now);
                self.feed(Feed::Shutdown);
            }
            Act::ForceStop => {
                if self.world.signals != 1 {
                    return None;
                }
                self.world.signals = 2;
                let before = self.m().state().kind();
                self.feed(Feed::ForceStop);
                if !self.m().state().is_stopped() {
                    self.violate(
                        Prop::ForceStopOneStep,
                        format!(
                            "ForceStop in {before} left the machine in {}",
                            self.m().state().kind()
                        ),
                    );
                }
            }
            Act::Commit(ok) => self.commit(ok)?,
            Act::Crash => self.crash()?,
        }
        Some(())
    }

    /// The writer commits every batch queued as one commit (as the real writer merges what queued behind a slow
    /// fsync), or fails; the machine hears of it.
    fn commit(&mut self, ok: bool) -> Option<()> {
        let durable = &mut self.world.durable;
        let &(up_to, _) = durable.queue.last()?;
        if !ok {
            if self.world.budget.commit_failures == 0 {
                return None;
            }
            self.world.budget.commit_failures -= 1;
        }
        let queue = std::mem::take(&mut durable.queue);
        let written = if !ok {
            durable.stale = true;
            false
        } else if durable.stale && !queue.iter().any(|(_, b)| b.full_snapshot) {
            // Like the real writer: after a failure, no delta until a snapshot makes the file right.
            false
        } else {
            durable.stale = false;
            let disk = Arc::make_mut(&mut durable.disk);
            for (_, batch) in queue.iter() {
                disk.apply(batch);
            }
            true
        };
        if written {
            self.check_disk();
        }
        self.feed(Feed::Commit { up_to, ok, written });
        Some(())
    }

    /// After a write: every status that was ever on disk is still there or answered by the facilitator; what is
    /// there now has been on disk.
    fn check_disk(&mut self) {
        let disk = Arc::clone(&self.world.durable.disk);
        for update in disk.statuses.values() {
            let j = job_of(&update.uuid);
            if let Some(job) = self.world.jobs.get_mut(usize::from(j))
                && !job.ever_durable.contains(&update.status)
            {
                job.ever_durable.push(update.status);
            }
        }
        for j in 0..self.model.bounds.jobs {
            let index = usize::from(j);
            let ever_durable = self.world.jobs[index].ever_durable;
            for &status in &ever_durable {
                if !disk.holds(j, status) && !self.answered(j, status) {
                    self.violate(
                        Prop::CrashDurability,
                        format!(
                            "{status} of {} was on disk and is gone without an answer",
                            job_name(j)
                        ),
                    );
                }
            }
        }
    }

    /// Whether the facilitator stored or refused this status.
    fn answered(&self, j: u8, status: JobStatus) -> bool {
        let index = usize::from(j);
        self.world.facilitator.stored[index].contains(&status)
            || self.world.facilitator.refused[index].contains(&status)
    }

    /// The process dies; a new machine with the same configuration recovers what is on disk.
    fn crash(&mut self) -> Option<()> {
        if !self.model.bounds.durable || self.world.budget.crashes == 0 {
            return None;
        }
        self.world.budget.crashes -= 1;
        let now = self.world.now;
        // The facilitator sees the socket drop (what was in flight either way is gone); the handlers die with the
        // client (an `exec:` shell gets the parent-death signal); the writer's queue dies with the process; the new
        // process opens the file as it is.
        self.world.link = None;
        let durable = &mut self.world.durable;
        durable.queue = Arc::default();
        durable.stale = false;
        durable.last_id = 0;
        let disk = Arc::clone(&durable.disk);
        // What the crash loses: statuses the client had to account for that are neither answered nor on disk.
        let mut lost: Vec<(u8, JobStatus)> = Vec::new();
        for j in 0..self.model.bounds.jobs {
            for &status in &self.world.jobs[usize::from(j)].expected {
                if !self.answered(j, status) && !disk.holds(j, status) {
                    lost.push((j, status));
                }
            }
        }
        let recovered = Recovered {
            statuses: disk
                .statuses
                .iter()
                .map(|(id, update)| SpooledStatus {
                    id: *id,
                    update: update.clone(),
                })
                .collect(),
            jobs: disk.jobs.values().cloned().collect(),
        };
        let mut machine = Machine::new(
            self.model.config.clone(),
            self.model.fixtures.auth.clone(),
            self.model.fixtures.signers.clone(),
            now,
        );
        let recovery = machine.recover(recovered);
        let interrupted: Vec<u8> = recovery.interrupted.iter().map(|u| job_of(u)).collect();
        if let Some(log) = self.log.as_mut() {
            log.push(Fed {
                at_ms: self.model.ms(now),
                feed: Feed::Crash,
                state: machine.state().kind().as_str(),
                actions: vec![render_recovery(&recovery)],
                decisions: vec![render_recovery(&recovery)],
            });
        }
        // The new outbox: every status on disk, in id order, then the `horde_failed` of each interrupted job.
        let want: Vec<(u8, JobStatus)> = disk
            .statuses
            .values()
            .map(|u| (job_of(&u.uuid), u.status))
            .chain(interrupted.iter().map(|j| (*j, JobStatus::HordeFailed)))
            .collect();
        let got: Vec<(u8, JobStatus)> = machine
            .undelivered()
            .map(|u| (job_of(&u.uuid), u.status))
            .collect();
        if got != want {
            self.violate(
                Prop::CrashDurability,
                format!(
                    "after the crash the new outbox holds {}, but the disk holds (in id order, then the \
                     interrupted jobs' horde_failed) {}",
                    names(&got),
                    names(&want)
                ),
            );
        }
        for &(j, status) in &lost {
            let job = &self.world.jobs[usize::from(j)];
            let index = usize::from(j);
            let problem = if job.ever_durable.contains(&status) {
                Some("it was on disk".to_owned())
            } else if interrupted.contains(&j) || job.exposed {
                None
            } else if !self.world.facilitator.stored[index].is_empty()
                || !self.world.facilitator.refused[index].is_empty()
                || disk.statuses.values().any(|u| job_of(&u.uuid) == j)
            {
                Some(
                    "its job reached the facilitator or the disk, and the recovery reports no horde_failed for it"
                        .to_owned(),
                )
            } else {
                // The job never left the client and was never committed: it vanishes whole.
                None
            };
            if let Some(problem) = problem {
                self.violate(
                    Prop::CrashDurability,
                    format!("the crash lost {status} of {}: {problem}", job_name(j)),
                );
            }
        }
        if lost.iter().any(|(j, _)| interrupted.contains(j)) {
            self.world.just |= just::LOST_UNCOMMITTED_JOB_FAILED;
        }
        // The world of the new process: what it must account for is what survived, then the recoveries' reports.
        for j in 0..self.model.bounds.jobs {
            let index = usize::from(j);
            let job = &mut self.world.jobs[index];
            let mut kept = Statuses::new();
            for &status in &job.expected {
                if !lost.contains(&(j, status)) {
                    kept.push(status);
                }
            }
            job.expected = kept;
            if matches!(
                job.handler,
                Handler::Running { .. } | Handler::Cancelled { .. }
            ) {
                job.handler = Handler::Done;
                job.ended = true;
            }
            if interrupted.contains(&j) && !job.expected.contains(&JobStatus::HordeFailed) {
                job.expected.push(JobStatus::HordeFailed);
                job.ended = true;
            }
            job.recovered = Statuses::new();
            job.unprotected = Statuses::new();
            for update in disk.statuses.values().filter(|u| job_of(&u.uuid) == j) {
                job.recovered.push(update.status);
            }
        }
        self.world.signals = 0;
        self.world.shutdown_at = None;
        self.machine = Some(machine);
        Some(())
    }

    fn facilitator_reads_status(&mut self, act: Act, j: u8, status: JobStatus) -> Option<()> {
        let world = &mut self.world;
        let index = usize::from(j);
        let answer = if world.facilitator.stored[index].contains(&status) {
            // A re-send of what it stored: the only answer the facilitator gives.
            if act == Act::FacilitatorRefuses {
                return None;
            }
            Answer::IntegrityError
        } else if world.facilitator.refused[index].contains(&status) {
            // A re-send of what it refused (the answer was lost with the link): refused again.
            if act == Act::FacilitatorRefuses {
                return None;
            }
            Answer::NotFound
        } else if act == Act::FacilitatorRefuses {
            if world.budget.refusals == 0 {
                return None;
            }
            world.budget.refusals -= 1;
            Answer::NotFound
        } else {
            Answer::Success
        };
        // The order the facilitator sees, on first receipt (a re-send of a status it stored or refused changes
        // nothing): every status of the job that came to be before this one has reached it already, and nothing
        // follows a terminal status.
        let first_receipt = !world.facilitator.stored[index].contains(&status)
            && !world.facilitator.refused[index].contains(&status);
        if first_receipt {
            let job = &world.jobs[index];
            let reached = |s: &JobStatus| {
                world.facilitator.stored[index].contains(s)
                    || world.facilitator.refused[index].contains(s)
            };
            let name = job_name(j);
            // One exception, the machine's documented trade of durability for availability: a job one of whose
            // statuses went out unprotected after a failed commit may, after a crash, get the recovery's
            // `horde_failed` behind a terminal status the facilitator stored from the process that died.
            let crashed = world.budget.crashes < self.model.bounds.crashes;
            let exempt = job.exposed && crashed && status == JobStatus::HordeFailed;
            let problem = if let Some(terminal) = world.facilitator.stored[index]
                .iter()
                .find(|s| s.is_terminal())
                .filter(|_| !exempt)
            {
                Some(format!(
                    "{status} of {name} reached the facilitator after its terminal status {terminal}"
                ))
            } else {
                match job.expected.iter().position(|s| *s == status) {
                    None => Some(format!(
                        "{status} of {name} reached the facilitator, but the client must have dropped it \
                         (it came after the job ended)"
                    )),
                    Some(at) => job.expected.as_slice()[..at]
                        .iter()
                        .find(|s| !reached(s))
                        .map(|earlier| {
                            format!(
                                "{status} of {name} reached the facilitator before {earlier}, which came first"
                            )
                        }),
                }
            };
            if let Some(problem) = problem {
                self.violate(Prop::PerJobOrder, problem);
            }
        }
        let world = &mut self.world;
        match answer {
            Answer::Success => {
                world.facilitator.stored[index].push(status);
                if status == JobStatus::Completed && world.authentications >= 2 {
                    world.just |= just::COMPLETED_AFTER_RECONNECT;
                }
            }
            Answer::NotFound if first_receipt => world.facilitator.refused[index].push(status),
            Answer::NotFound => {}
            Answer::IntegrityError => {}
        }
        let link = world.link.as_mut()?;
        link.up.pop_front();
        link.down.push(Down::Ack(answer, j, status));
        Some(())
    }

    /// The client reads `frames` (one frame, or several in one read: [`Input::Frames`]).
    fn deliver(&mut self, frames: &[Down]) {
        if let [Down::CloseReply(code)] = frames {
            self.world.link = None;
            self.feed(Feed::SocketClosed(Some(*code)));
            return;
        }
        let mut feeds = Vec::with_capacity(frames.len());
        for frame in frames {
            feeds.push(match *frame {
                Down::Auth(AuthAnswer::Success) => {
                    if let Some(link) = self.link() {
                        link.client_authed = true;
                    }
                    self.world.authentications = (self.world.authentications + 1).min(2);
                    Feed::Response(None)
                }
                Down::Auth(AuthAnswer::SignatureInvalid) => {
                    Feed::Response(Some(error_type::SIGNATURE_INVALID))
                }
                Down::Auth(AuthAnswer::ValidatorNotFound) => {
                    Feed::Response(Some(error_type::VALIDATOR_NOT_FOUND))
                }
                Down::Ack(Answer::Success, ..) => Feed::Response(None),
                Down::Ack(Answer::IntegrityError, ..) => {
                    Feed::Response(Some(error_type::INTEGRITY_ERROR))
                }
                Down::Ack(Answer::NotFound, ..) => Feed::Response(Some(error_type::JOB_NOT_FOUND)),
                Down::Job(j, kind) => Feed::Job(j, kind),
                Down::CloseReply(_) => unreachable!("a close is never read with frames"),
            });
        }
        let feed = match <[Feed; 1]>::try_from(feeds) {
            Ok([one]) => one,
            Err(many) => Feed::Frames(many),
        };
        let actions = self.feed(feed);
        let running = matches!(self.m().state(), State::Running { .. });
        // Progress, by the machine's own rule: an acknowledged status or a decodable job request, while Running.
        // The auth success is always the first frame of a socket, so a read that starts Connecting and ends
        // Running made its Acks and jobs after it, in Running.
        if running
            && frames.iter().any(|f| {
                matches!(f, Down::Ack(..)) || matches!(f, Down::Job(_, k) if *k != JobKind::Invalid)
            })
            && let Some(link) = self.link()
        {
            link.progress = true;
        }
        if running {
            let trusted = frames
                .iter()
                .filter(|f| matches!(f, Down::Job(_, JobKind::Trusted)))
                .count();
            self.model
                .trusted_deliveries
                .fetch_add(trusted as u64, Ordering::Relaxed);
        }
        // Each Response answers the oldest status in flight: the client must take each Ack for the status the
        // facilitator answered, in order.
        let mut answered = actions.iter().filter_map(|a| match a {
            Action::Emit(Event::StatusDelivered { uuid, status, .. }) => {
                Some((uuid.clone(), *status, true))
            }
            Action::Emit(Event::StatusRefused { uuid, status, .. }) => {
                Some((uuid.clone(), *status, false))
            }
            _ => None,
        });
        for frame in frames {
            let Down::Ack(answer, j, status) = *frame else {
                continue;
            };
            let took = answered.next();
            if took.is_some() && self.world.jobs[usize::from(j)].recovered.contains(&status) {
                self.world.just |= just::CRASH_RECOVERED;
            }
            // The exception of the durability trade (see `facilitator_reads_status`): after a failed commit and
            // a crash, the recovery's `horde_failed` may duplicate one the dead process sent unprotected; it is
            // the new process's first send, so `job.integrity_error` is taken as a refusal (it is stored all the
            // same: nothing is lost).
            let job = &self.world.jobs[usize::from(j)];
            let crashed = self.world.budget.crashes < self.model.bounds.crashes;
            let duplicate_of_unprotected = job.exposed
                && crashed
                && status == JobStatus::HordeFailed
                && answer == Answer::IntegrityError
                && took == Some((job_uuid(j), status, false));
            if duplicate_of_unprotected {
                self.world.just |= just::RECOVERY_DUPLICATE;
            } else if took != Some((job_uuid(j), status, answer != Answer::NotFound)) {
                self.violate(
                    Prop::NoStatusLost,
                    format!(
                        "the facilitator answered {answer:?} to {status} of {}, and the client took it as {took:?}",
                        job_name(j)
                    ),
                );
            }
            self.world.just |= match answer {
                Answer::IntegrityError => just::RESEND_ALREADY_STORED,
                Answer::NotFound => just::STATUS_REFUSED,
                Answer::Success => 0,
            };
        }
    }

    fn handler_status(&mut self, j: u8, status: JobStatus) {
        let job = &mut self.world.jobs[usize::from(j)];
        let late = job.ended;
        if !late {
            job.expected.push(status);
            job.ended = status.is_terminal();
        }
        let dropped_before = self.m().counters().statuses_dropped_late;
        self.feed(Feed::Status(j, status));
        let dropped = self.m().counters().statuses_dropped_late - dropped_before;
        if late {
            if dropped == 1 {
                self.world.just |= just::LATE_STATUS_DROPPED;
            } else {
                self.violate(
                    Prop::PerJobOrder,
                    format!(
                        "{status} of {} came after the job ended and was not dropped",
                        job_name(j)
                    ),
                );
            }
        } else if dropped != 0 {
            self.violate(
                Prop::NoStatusLost,
                format!("{status} of {} was dropped as late", job_name(j)),
            );
        }
    }

    /// Feeds one input at the world's time, carries out the actions on the world, and checks what a single
    /// step must do.
    fn feed(&mut self, feed: Feed) -> Vec<Action> {
        let now = self.world.now;
        let before = self.m().state().kind();
        let was_running = matches!(self.m().state(), State::Running { .. });
        let backoff_failures = self.m().backoff_failures();
        let progress = self.world.link.as_ref().is_some_and(|l| l.progress);
        // The world notices a link drop before the client does.
        if matches!(feed, Feed::SocketFailed | Feed::SocketClosed(_)) {
            self.world.link = None;
        }
        let input = self.model.input(&feed);
        let actions = self.m_mut().step(input, now);
        let state = self.m().state().kind().as_str();
        if let Some(log) = self.log.as_mut() {
            log.push(Fed {
                at_ms: self.model.ms(now),
                feed: feed.clone(),
                state,
                actions: actions.iter().map(render).collect(),
                decisions: actions.iter().map(decision).collect(),
            });
        }
        for action in &actions {
            self.carry_out(action);
        }
        if let State::Disconnected { retry_at } = *self.m().state()
            && before != self.m().state().kind()
        {
            let delay = retry_at.saturating_duration_since(now);
            let backoff = self.model.config.backoff;
            if delay > backoff.cap {
                self.violate(
                    Prop::Backoff,
                    format!("reconnect delay {delay:?} over the cap {:?}", backoff.cap),
                );
            }
            if was_running && progress {
                if delay > backoff.base {
                    self.violate(
                        Prop::Backoff,
                        format!(
                            "a connection that made progress was lost and the next attempt waits {delay:?}, \
                             over the base {:?}",
                            backoff.base
                        ),
                    );
                }
                if backoff_failures > 0 {
                    self.world.just |= just::BACKOFF_RESET;
                }
            }
        }
        actions
    }

    fn carry_out(&mut self, action: &Action) {
        match action {
            Action::Open => {
                if self.world.link.is_some() {
                    self.violate(Prop::OneSocket, "Open while a socket is open");
                }
                self.world.link = Some(Link::opening());
            }
            Action::Send(message) => self.on_send(message),
            Action::Ping => {
                if !self.world.link.as_ref().is_some_and(|l| l.client_authed) {
                    self.violate(Prop::AuthFirst, "Ping before the auth success");
                } else if let Some(link) = self.link() {
                    link.ping_outstanding = true;
                }
            }
            Action::Close(code) => match self.link() {
                Some(link) if link.client_authed && !link.close_sent => {
                    link.close_sent = true;
                    link.up.push(Up::Close(*code));
                }
                _ => self.violate(
                    Prop::AuthFirst,
                    "Close with no authenticated socket, or twice",
                ),
            },
            Action::Abort => self.world.link = None,
            Action::Persist { id, batch } => {
                let durable = &mut self.world.durable;
                if !self.model.bounds.durable {
                    self.violate(Prop::CrashDurability, "Persist without the spool");
                } else if *id != durable.last_id + 1 || batch.is_empty() {
                    let last = durable.last_id;
                    self.violate(
                        Prop::CrashDurability,
                        format!("Persist {id} after Persist {last} (ids go up by one), or of an empty batch"),
                    );
                } else {
                    durable.last_id = *id;
                    Arc::make_mut(&mut durable.queue).push((*id, batch.clone()));
                }
            }
            Action::Dispatch(job) => {
                let Some(j) = self.job_index(job.uuid()) else {
                    return self.violate(Prop::DispatchDiscipline, "dispatched an unknown job");
                };
                let world = &mut self.world;
                let job = &mut world.jobs[usize::from(j)];
                let problem = if job.kind != Some(JobKind::Trusted) {
                    Some(format!("dispatched {} ({:?})", job_name(j), job.kind))
                } else if job.handler != Handler::Idle {
                    Some(format!("dispatched {} twice", job_name(j)))
                } else if world.shutdown_at.is_some() {
                    Some(format!("dispatched {} after the Shutdown", job_name(j)))
                } else {
                    None
                };
                job.handler = Handler::Running { next: 0 };
                job.expected.push(JobStatus::Received);
                if let Some(problem) = problem {
                    self.violate(Prop::DispatchDiscipline, problem);
                }
            }
            Action::CancelJobs => {
                for job in &mut self.world.jobs {
                    if let Handler::Running { next } = job.handler {
                        job.handler = Handler::Cancelled { next };
                        if !job.ended {
                            job.expected.push(JobStatus::HordeFailed);
                            job.ended = true;
                        }
                    }
                }
            }
            Action::Emit(Event::JobRejected { uuid, .. }) => {
                if let Some(j) = self.job_index(uuid) {
                    self.world.jobs[usize::from(j)]
                        .expected
                        .push(JobStatus::Rejected);
                }
            }
            Action::Emit(Event::StateChanged {
                reason: Reason::DrainDeadlinePassed { .. },
                ..
            }) => self.world.just |= just::DRAIN_TIMED_OUT,
            Action::Emit(_) | Action::ForwardCheatReport(_) => {}
            Action::Stop(_) => {
                self.world.link = None;
                let left: Vec<String> = self
                    .world
                    .jobs
                    .iter()
                    .enumerate()
                    .filter(|(_, job)| matches!(job.handler, Handler::Running { .. }))
                    .map(|(j, _)| job_name(j as u8))
                    .collect();
                if !left.is_empty() {
                    self.violate(
                        Prop::NoStatusLost,
                        format!(
                            "stopped with {} still running: nothing will report them",
                            left.join(", ")
                        ),
                    );
                }
            }
        }
    }

    fn on_send(&mut self, message: &ClientMessage) {
        let now = self.world.now;
        let interval = self.model.config.heartbeat_interval;
        let Some(link) = self.world.link.as_mut().filter(|l| l.open) else {
            return self.violate(
                Prop::AuthFirst,
                format!("Send of {} with no open socket", message.message_type()),
            );
        };
        if link.close_sent {
            return self.violate(
                Prop::AuthFirst,
                format!("Send of {} after Close", message.message_type()),
            );
        }
        match message {
            ClientMessage::Auth(_) => {
                if link.auth_sent {
                    return self.violate(Prop::AuthFirst, "auth request sent twice on one socket");
                }
                link.auth_sent = true;
                link.up.push(Up::Auth);
            }
            other if !link.client_authed => self.violate(
                Prop::AuthFirst,
                format!(
                    "{} sent before the auth success Response",
                    other.message_type()
                ),
            ),
            ClientMessage::Heartbeat => {
                let last = link.last_heartbeat.replace(now);
                if let Some(last) = last.filter(|last| now - *last < interval) {
                    self.violate(
                        Prop::HeartbeatPaced,
                        format!(
                            "heartbeats {:?} apart, under the interval {interval:?}",
                            now - last
                        ),
                    );
                }
            }
            ClientMessage::StatusUpdate(update) => {
                let status = update.status;
                match self.job_index(&update.uuid) {
                    Some(j) => {
                        if let Some(link) = self.link() {
                            link.up.push(Up::Status(j, status));
                        }
                        // With the spool, a status of an accepted job leaves only once it is on disk, unless the
                        // machine released it unprotected (a failed commit, a stale spool) and counted it.
                        let job = &mut self.world.jobs[usize::from(j)];
                        if self.model.bounds.durable
                            && status != JobStatus::Rejected
                            && !self.world.durable.disk.holds(j, status)
                            && !job.unprotected.contains(&status)
                        {
                            job.unprotected.push(status);
                            job.exposed = true;
                            self.world.just |= just::SENT_UNPROTECTED;
                            let sent: usize = self
                                .world
                                .jobs
                                .iter()
                                .map(|j| j.unprotected.as_slice().len())
                                .sum();
                            let counted = self.m().counters().statuses_unspooled;
                            if sent as u64 > counted {
                                self.violate(
                                    Prop::CrashDurability,
                                    format!(
                                        "{status} of {} sent before it was on disk: {sent} such sends by this \
                                         process, {counted} counted unprotected by the machine",
                                        job_name(j)
                                    ),
                                );
                            }
                        }
                    }
                    None => self.violate(Prop::NoStatusLost, "a status of an unknown job sent"),
                }
            }
            _ => {}
        }
    }

    fn job_index(&self, uuid: &str) -> Option<u8> {
        Some(job_of(uuid)).filter(|j| *j < self.model.bounds.jobs)
    }
}

/// A compact rendering of an action for traces (the scenario notation, roughly).
pub fn render(action: &Action) -> String {
    let name = |uuid: &str| {
        uuid.strip_prefix("00000000-0000-4000-8000-")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .map_or_else(|| uuid.to_owned(), |n| format!("job-{n}"))
    };
    match action {
        Action::Send(ClientMessage::StatusUpdate(u)) => {
            format!("Send:{}({})", u.status, name(&u.uuid))
        }
        Action::Send(message) => format!("Send:{}", message.message_type()),
        Action::Dispatch(job) => format!("Dispatch({})", name(job.uuid())),
        Action::Emit(Event::StateChanged { from, to, reason }) => {
            format!("Emit:{from}->{to} ({reason})")
        }
        Action::Emit(event) => format!("Emit:{event}"),
        Action::Persist { id, batch } => render_batch(*id, batch),
        other => format!("{other:?}"),
    }
}

/// A spool batch as the scenario files write it: `Persist(id:+sid:status(job-N) +job-N -sid -job-N)`, or
/// `Snapshot(...)`.
fn render_batch(id: u64, batch: &SpoolBatch) -> String {
    let mut parts = Vec::new();
    for s in &batch.put_statuses {
        parts.push(format!(
            "+{}:{}({})",
            s.id,
            s.update.status,
            job_name(job_of(&s.update.uuid))
        ));
    }
    for j in &batch.put_jobs {
        parts.push(format!("+{}", job_name(job_of(&j.uuid))));
    }
    for id in &batch.remove_statuses {
        parts.push(format!("-{id}"));
    }
    for uuid in &batch.remove_jobs {
        parts.push(format!("-{}", job_name(job_of(uuid))));
    }
    let kind = if batch.full_snapshot {
        "Snapshot"
    } else {
        "Persist"
    };
    format!("{kind}({id}:{})", parts.join(" "))
}

/// What a recovery reported, as the scenario files write it.
fn render_recovery(recovery: &Recovery) -> String {
    let list = |uuids: &mut dyn Iterator<Item = &str>| {
        uuids
            .map(|u| job_name(job_of(u)))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "Recovered(statuses={},jobs={},interrupted=[{}],resume=[{}],kill={})",
        recovery.statuses,
        recovery.jobs,
        list(&mut recovery.interrupted.iter().map(String::as_str)),
        list(&mut recovery.resume.iter().map(|r| r.job.uuid())),
        recovery.kill.len()
    )
}

/// `job-1/received, job-1/accepted`: for messages.
fn names(statuses: &[(u8, JobStatus)]) -> String {
    let parts: Vec<String> = statuses
        .iter()
        .map(|(j, s)| format!("{}/{s}", job_name(*j)))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// An action as a decision: what was done, to what, without the numbers that report history (how many times a
/// status was sent, which attempt this is, how many statuses are held: those are counters the projection leaves
/// out on purpose).
pub fn decision(action: &Action) -> String {
    match action {
        Action::Emit(event) => match event {
            Event::StateChanged { from, to, reason } => {
                format!("StateChanged {from}->{to} {}", reason.name())
            }
            Event::StatusDelivered { uuid, status, .. } => format!("Delivered {uuid} {status}"),
            Event::StatusRefused { uuid, status, .. } => format!("Refused {uuid} {status}"),
            Event::JobRejected { uuid, reason, .. } => format!("Rejected {uuid} {reason}"),
            Event::Ignored(what) => format!("Ignored {}", what.kind()),
            // How long the spool was stale only reports history.
            Event::SpoolUpToDate { .. } => "SpoolUpToDate".to_owned(),
            other => format!("{other:?}"),
        },
        other => format!("{other:?}"),
    }
}

// ---- the projection ----------------------------------------------------------------------------------------

/// Milliseconds from `now` to `t` (negative when `t` is past).
fn rel(now: Instant, t: Instant) -> i64 {
    if t >= now {
        (t - now).as_millis() as i64
    } else {
        -((now - t).as_millis() as i64)
    }
}

/// The failures after which the backoff's delay is at the cap: more failures cannot change any delay.
fn failures_at_cap(config: &Config) -> u32 {
    let b = &config.backoff;
    let mut failures = 0;
    let mut delay = b.base.as_secs_f64();
    while delay < b.cap.as_secs_f64() && failures < 64 {
        delay *= b.factor.max(1.0);
        failures += 1;
    }
    failures
}

#[derive(Hash, PartialEq, Eq)]
enum StateKey {
    Disconnected {
        retry: i64,
    },
    Connecting {
        authenticating: bool,
        deadline: i64,
    },
    Running {
        since: i64,
        link: LinkKey,
        progress: bool,
    },
    Draining {
        link: LinkKey,
        phase: (u8, i64, i64, u16),
    },
    Stopped(StopReason),
}

#[derive(Hash, PartialEq, Eq)]
struct LinkKey {
    heartbeat: i64,
    silent: i64,
    pong: Option<i64>,
}

impl LinkKey {
    fn of(now: Instant, link: &facilitator_client::machine::Link) -> Self {
        LinkKey {
            heartbeat: rel(now, link.next_heartbeat),
            silent: rel(now, link.silent_deadline),
            pong: link.pong_deadline.map(|t| rel(now, t)),
        }
    }
}

/// A held status as projected: its job, status and reasons, how many times it was sent capped at 2, and whether
/// it belongs to an accepted job. The machine only ever asks "sent more than once?" of the count, after
/// counting the send it is about to make: so 0 and 1 differ (the next send makes 1 or 2), 2 and more do not.
#[derive(Clone, Copy, Hash, PartialEq, Eq)]
struct HeldKey {
    job: u8,
    status: JobStatus,
    rejection: Option<JobRejectionReason>,
    failure: Option<HordeFailureReason>,
    sends: u32,
    of_accepted_job: bool,
    /// With the spool: its id (ids only grow with the statuses put, so they are bounded) and the batch that holds
    /// it back.
    spool_id: Option<u64>,
    held_by: Option<u64>,
}

impl Fill for HeldKey {
    const FILL: Self = HeldKey {
        job: 0,
        status: JobStatus::Unknown,
        rejection: None,
        failure: None,
        sends: 0,
        of_accepted_job: false,
        spool_id: None,
        held_by: None,
    };
}

/// A status update as projected: job, status and reasons (the texts are read by nothing).
type UpdateKey = (
    u8,
    JobStatus,
    Option<JobRejectionReason>,
    Option<HordeFailureReason>,
);

fn update_key(u: &JobStatusUpdate) -> UpdateKey {
    (
        job_of(&u.uuid),
        u.status,
        u.metadata.job_rejection_details.as_ref().map(|d| d.reason),
        u.metadata.horde_failure_details.as_ref().map(|d| d.reason),
    )
}

/// A job record as projected: its job and where its work runs (the request text is constant per job, the
/// acceptance time is the driver's stamp).
fn job_record_key(r: &JobRecord) -> (u8, Option<String>) {
    (
        job_of(&r.uuid),
        r.handler.as_ref().map(|h| match h {
            HandlerRecord::Exec { pgid, start_time } => format!("exec {pgid} {start_time}"),
            HandlerRecord::Celery { task_id } => format!("celery {task_id}"),
        }),
    )
}

/// A spool batch as projected. Batch and status ids are kept as they are: they only grow with the batches and
/// statuses a path makes, which the bounds keep finite.
#[derive(Hash, PartialEq, Eq)]
struct BatchKey {
    full_snapshot: bool,
    put_statuses: Vec<(u64, UpdateKey)>,
    remove_statuses: Vec<u64>,
    put_jobs: Vec<(u8, Option<String>)>,
    remove_jobs: Vec<u8>,
}

impl BatchKey {
    fn of(b: &SpoolBatch) -> Self {
        BatchKey {
            full_snapshot: b.full_snapshot,
            put_statuses: b
                .put_statuses
                .iter()
                .map(|s| (s.id, update_key(&s.update)))
                .collect(),
            remove_statuses: b.remove_statuses.clone(),
            put_jobs: b.put_jobs.iter().map(job_record_key).collect(),
            remove_jobs: b.remove_jobs.iter().map(|u| job_of(u)).collect(),
        }
    }
}

/// The machine's spool bookkeeping as projected: everything but when it became stale (only reported), with the
/// retry deadline as a distance from now while it is pending (once a snapshot is under way it is stale data,
/// overwritten before it is read again).
#[derive(Hash, PartialEq, Eq)]
struct SpoolKey {
    next_status_id: u64,
    next_batch_id: u64,
    released_up_to: u64,
    batch: BatchKey,
    jobs: Vec<(u8, Option<String>)>,
    stale: Option<(Option<u64>, Option<i64>, u128)>,
    stopping: bool,
}

/// The world's spool as projected: the file and the writer's queue.
#[derive(Hash, PartialEq, Eq)]
struct DurableKey {
    disk_statuses: Vec<(u64, UpdateKey)>,
    disk_jobs: Vec<(u8, Option<String>)>,
    queue: Vec<(u64, BatchKey)>,
    stale: bool,
    last_id: u64,
}

impl DurableKey {
    fn of(d: &Durable) -> Self {
        DurableKey {
            disk_statuses: d
                .disk
                .statuses
                .iter()
                .map(|(id, u)| (*id, update_key(u)))
                .collect(),
            disk_jobs: d.disk.jobs.values().map(job_record_key).collect(),
            queue: d
                .queue
                .iter()
                .map(|(id, b)| (*id, BatchKey::of(b)))
                .collect(),
            stale: d.stale,
            last_id: d.last_id,
        }
    }
}

impl Fill for (u8, bool) {
    const FILL: Self = (0, false);
}

/// The job index of a `job-N` UUID (255 for anything else).
fn job_of(uuid: &str) -> u8 {
    uuid.strip_prefix("00000000-0000-4000-8000-")
        .and_then(|n| u64::from_str_radix(n, 16).ok())
        .and_then(|n| u8::try_from(n.checked_sub(1)?).ok())
        .unwrap_or(u8::MAX)
}

#[derive(Hash, PartialEq, Eq)]
struct MachineKey {
    state: StateKey,
    held: Small<HeldKey, 16>,
    in_flight: usize,
    jobs: Small<(u8, bool), 8>,
    backoff_failures: u32,
    cancelled_any: bool,
    unspooled: u64,
    spool: Option<SpoolKey>,
}

#[derive(Hash, PartialEq, Eq)]
struct LinkWorldKey<'a> {
    open: bool,
    flags: [bool; 6],
    up: &'a Small<Up, 16>,
    down: &'a Small<Down, 16>,
    progress: bool,
    since_heartbeat: Option<i64>,
}

#[derive(Hash, PartialEq, Eq)]
struct WorldKey<'a> {
    link: Option<LinkWorldKey<'a>>,
    facilitator: &'a Facilitator,
    durable: DurableKey,
    jobs: &'a [JobWorld; MAX_JOBS],
    pushed: u8,
    signals: u8,
    shutdown_left: Option<i64>,
    budget: Budget,
    authentications: u8,
    just: u16,
    violation: &'a Option<Violation>,
}

impl McState {
    fn machine_key(&self) -> MachineKey {
        let m = &self.machine;
        let now = self.world.now;
        let config = m.config();
        let state = match m.state() {
            State::Disconnected { retry_at } => StateKey::Disconnected {
                retry: rel(now, *retry_at),
            },
            State::Connecting { phase, deadline } => StateKey::Connecting {
                authenticating: *phase == ConnectPhase::Authenticating,
                deadline: rel(now, *deadline),
            },
            State::Running {
                since,
                link,
                progress,
            } => StateKey::Running {
                // Only "has it been up for stable_after" matters, and once true it stays true.
                since: rel(*since, now).min(config.backoff.stable_after.as_millis() as i64),
                link: LinkKey::of(now, link),
                progress: *progress,
            },
            State::Draining { link, phase } => StateKey::Draining {
                link: LinkKey::of(now, link),
                phase: match *phase {
                    DrainPhase::Flushing { deadline } => (0, rel(now, deadline), 0, 0),
                    DrainPhase::Cancelling { deadline, close_by } => {
                        (1, rel(now, deadline), rel(now, close_by), 0)
                    }
                    DrainPhase::Closing { deadline, code } => (2, rel(now, deadline), 0, code),
                },
            },
            State::Stopped { reason } => StateKey::Stopped(*reason),
        };
        let mut held = Small::new();
        for ((u, (sends, of_accepted_job)), (spool_id, held_by)) in m
            .undelivered()
            .zip(m.undelivered_details())
            .zip(m.undelivered_spool())
        {
            held.push(HeldKey {
                job: job_of(&u.uuid),
                status: u.status,
                rejection: u.metadata.job_rejection_details.as_ref().map(|d| d.reason),
                failure: u.metadata.horde_failure_details.as_ref().map(|d| d.reason),
                sends: sends.min(2),
                of_accepted_job,
                spool_id,
                held_by,
            });
        }
        let spool = config.durable.then(|| {
            let v = m.spool_view();
            SpoolKey {
                next_status_id: v.next_status_id,
                next_batch_id: v.next_batch_id,
                released_up_to: v.released_up_to,
                batch: BatchKey::of(&v.batch),
                jobs: v.jobs.iter().map(job_record_key).collect(),
                stale: v.stale.map(|(snapshot, retry_at, delay)| {
                    (
                        snapshot,
                        snapshot.is_none().then(|| rel(now, retry_at)),
                        delay.as_millis(),
                    )
                }),
                stopping: v.stopping,
            }
        });
        let mut jobs = Small::new();
        for (uuid, terminal) in m.running_jobs_terminal() {
            jobs.push((job_of(uuid), terminal));
        }
        MachineKey {
            state,
            held,
            in_flight: m.in_flight_len(),
            jobs,
            backoff_failures: m.backoff_failures().min(failures_at_cap(config)),
            cancelled_any: m.counters().jobs_cancelled > 0,
            // Read by the world (unprotected sends may not outnumber it); bounded by the statuses of a path.
            unspooled: m.counters().statuses_unspooled,
            spool,
        }
    }

    fn world_key(&self) -> WorldKey<'_> {
        let w = &self.world;
        let now = w.now;
        let interval = self.machine.config().heartbeat_interval.as_millis() as i64;
        let bound = self.machine.config().drain_timeout + self.machine.config().close_timeout;
        WorldKey {
            link: w.link.as_ref().map(|l| LinkWorldKey {
                open: l.open,
                flags: [
                    l.auth_sent,
                    l.client_authed,
                    l.facilitator_authed,
                    l.close_sent,
                    l.close_read,
                    l.ping_outstanding,
                ],
                up: &l.up,
                down: &l.down,
                progress: l.progress,
                // Only "is the interval over" matters, and once true it stays true.
                since_heartbeat: l.last_heartbeat.map(|t| rel(t, now).min(interval)),
            }),
            facilitator: &w.facilitator,
            durable: DurableKey::of(&w.durable),
            jobs: &w.jobs,
            pushed: w.pushed,
            signals: w.signals,
            shutdown_left: w.shutdown_at.map(|at| rel(now, at + bound)),
            budget: w.budget,
            authentications: w.authentications,
            just: w.just,
            violation: &w.violation,
        }
    }
}

impl Hash for McState {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.machine_key().hash(state);
        self.world_key().hash(state);
    }
}

impl PartialEq for McState {
    fn eq(&self, other: &Self) -> bool {
        self.machine_key() == other.machine_key() && self.world_key() == other.world_key()
    }
}

impl Eq for McState {}

// ---- the model --------------------------------------------------------------------------------------------

impl Model for McModel {
    type State = McState;
    type Action = Act;

    fn init_states(&self) -> Vec<McState> {
        vec![McState {
            machine: Machine::new(
                self.config.clone(),
                self.fixtures.auth.clone(),
                self.fixtures.signers.clone(),
                self.origin,
            ),
            world: World {
                now: self.origin,
                link: None,
                facilitator: Facilitator {
                    stored: [Statuses::new(); MAX_JOBS],
                    refused: [Statuses::new(); MAX_JOBS],
                },
                durable: Durable::default(),
                jobs: [JobWorld {
                    kind: None,
                    handler: Handler::Idle,
                    expected: Statuses::new(),
                    ended: false,
                    ever_durable: Statuses::new(),
                    exposed: false,
                    recovered: Statuses::new(),
                    unprotected: Statuses::new(),
                }; MAX_JOBS],
                pushed: 0,
                signals: 0,
                shutdown_at: None,
                budget: Budget {
                    drops: self.bounds.drops,
                    late_wakeups: self.bounds.late_wakeups,
                    refusals: self.bounds.refusals,
                    extra_statuses: self.bounds.extra_statuses,
                    refused_jobs: self.bounds.refused_jobs,
                    crashes: if self.bounds.durable {
                        self.bounds.crashes
                    } else {
                        0
                    },
                    commit_failures: if self.bounds.durable {
                        self.bounds.commit_failures
                    } else {
                        0
                    },
                },
                authentications: 0,
                just: 0,
                violation: None,
            },
        }]
    }

    fn actions(&self, state: &McState, actions: &mut Vec<Act>) {
        // A broken property ends the path there; Stopped is absorbing (the driver ends), but with the spool the
        // writer still commits what the last step queued, and the program may be started again (a restart is a
        // crash of a stopped process: what is on disk is what the next one finds).
        if state.world.violation.is_some() {
            return;
        }
        if state.machine.state().is_stopped() {
            if self.bounds.durable {
                actions.extend([Act::Commit(true), Act::Commit(false), Act::Crash]);
            }
            return;
        }
        actions.extend([
            Act::Wait,
            Act::WaitLate,
            Act::Advance,
            Act::OpenSucceeds,
            Act::FacilitatorAuth(AuthAnswer::Success),
            Act::FacilitatorAuth(AuthAnswer::SignatureInvalid),
            Act::FacilitatorAuth(AuthAnswer::ValidatorNotFound),
            Act::FacilitatorReads,
            Act::FacilitatorRefuses,
            Act::Deliver,
            Act::DeliverBatch,
            Act::Pong,
            Act::PushJob(JobKind::Trusted),
            Act::PushJob(JobKind::Untrusted),
            Act::PushJob(JobKind::Invalid),
            Act::Drop(DropKind::Failed),
            Act::Drop(DropKind::PeerClosed),
            Act::Drop(DropKind::PeerGone),
        ]);
        for j in 0..self.bounds.jobs {
            actions.extend([
                Act::HandlerStatus(j),
                Act::HandlerExtraStatus(j),
                Act::HandlerFinishes(j),
            ]);
        }
        actions.extend([Act::Shutdown, Act::ForceStop]);
        if self.bounds.durable {
            actions.extend([Act::Commit(true), Act::Commit(false), Act::Crash]);
        }
    }

    fn next_state(&self, last: &McState, action: Act) -> Option<McState> {
        self.apply(last, action, None)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut properties = vec![
            Property::always(Prop::ShutdownBound.name(), |_, s: &McState| {
                s.ok(Prop::ShutdownBound) && shutdown_bound_holds(s)
            }),
            Property::always(Prop::ForceStopOneStep.name(), |_, s: &McState| {
                s.ok(Prop::ForceStopOneStep)
            }),
            Property::always(Prop::NoStatusLost.name(), |_, s: &McState| {
                s.ok(Prop::NoStatusLost) && nothing_lost(s)
            }),
            Property::always(Prop::PerJobOrder.name(), |_, s: &McState| {
                s.ok(Prop::PerJobOrder)
            }),
            Property::always(Prop::AuthFirst.name(), |_, s: &McState| {
                s.ok(Prop::AuthFirst)
            }),
            Property::always(Prop::OneSocket.name(), |_, s: &McState| {
                s.ok(Prop::OneSocket) && s.world.link.is_some() == s.machine.state().has_socket()
            }),
            Property::always(Prop::Bounds.name(), |_, s: &McState| {
                let c = s.machine.config();
                s.machine.running_job_count() <= c.max_running_jobs
                    // Producers wait while the outbox is full and job requests go unanswered; only the
                    // `horde_failed` of cancelled jobs (at most max_running_jobs) go in past it.
                    && s.machine.held_len() <= c.outbox_capacity + c.max_running_jobs
            }),
            Property::always(Prop::Backoff.name(), |_, s: &McState| {
                s.ok(Prop::Backoff)
                    && match s.machine.state() {
                        State::Disconnected { retry_at } => {
                            retry_at.saturating_duration_since(s.world.now)
                                <= s.machine.config().backoff.cap
                        }
                        _ => true,
                    }
            }),
            Property::always(Prop::DeadlineNotPast.name(), |_, s: &McState| {
                s.machine
                    .poll_timeout()
                    .is_none_or(|(deadline, _)| deadline >= s.world.now)
            }),
            Property::always(Prop::NoIdleWakeup.name(), |_, s: &McState| {
                s.ok(Prop::NoIdleWakeup)
            }),
            Property::always(Prop::HeartbeatPaced.name(), |_, s: &McState| {
                s.ok(Prop::HeartbeatPaced)
            }),
            Property::always(Prop::DispatchDiscipline.name(), |_, s: &McState| {
                s.ok(Prop::DispatchDiscipline)
            }),
            Property::always(Prop::CrashDurability.name(), |_, s: &McState| {
                s.ok(Prop::CrashDurability)
            }),
        ];
        properties.extend([
            Property::sometimes("job_completes_after_reconnect", |_, s: &McState| {
                s.world.just & just::COMPLETED_AFTER_RECONNECT != 0
            }),
            Property::sometimes("drain_times_out", |_, s: &McState| {
                s.world.just & just::DRAIN_TIMED_OUT != 0
            }),
            Property::sometimes("graceful_stop_everything_delivered", |_, s: &McState| {
                matches!(
                    s.machine.state(),
                    State::Stopped {
                        reason: StopReason::Graceful
                    }
                ) && s.machine.held_len() == 0
                    && s.world
                        .facilitator
                        .stored
                        .iter()
                        .flatten()
                        .any(|st| *st == JobStatus::Completed)
                    && s.world.jobs.iter().enumerate().all(|(j, job)| {
                        job.expected
                            .iter()
                            .all(|st| s.world.facilitator.stored[j].contains(st))
                    })
            }),
            Property::sometimes("late_status_dropped", |_, s: &McState| {
                s.world.just & just::LATE_STATUS_DROPPED != 0
            }),
            Property::sometimes("resend_already_stored_delivered", |_, s: &McState| {
                s.world.just & just::RESEND_ALREADY_STORED != 0
            }),
            Property::sometimes("productive_connection_resets_backoff", |_, s: &McState| {
                s.world.just & just::BACKOFF_RESET != 0
            }),
        ]);
        if self.bounds.durable && self.bounds.crashes > 0 {
            properties.extend([
                Property::sometimes("crash_recovered", |_, s: &McState| {
                    s.world.just & just::CRASH_RECOVERED != 0
                }),
                Property::sometimes("crash_loses_uncommitted_job_failed", |_, s: &McState| {
                    s.world.just & just::LOST_UNCOMMITTED_JOB_FAILED != 0
                }),
            ]);
        }
        if self.bounds.durable && self.bounds.commit_failures > 0 {
            properties.push(Property::sometimes("sent_unprotected", |_, s: &McState| {
                s.world.just & just::SENT_UNPROTECTED != 0
            }));
        }
        if self.bounds.refusals > 0 {
            properties.push(Property::sometimes("status_refused", |_, s: &McState| {
                s.world.just & just::STATUS_REFUSED != 0
            }));
        }
        properties
    }
}

impl McState {
    /// Whether no step broke `prop`.
    fn ok(&self, prop: Prop) -> bool {
        self.world.violation.as_ref().is_none_or(|v| v.prop != prop)
    }
}

/// After a Shutdown the machine is Stopped, or its next deadline (which it handles before anything else, and
/// which is never in the past) is within drain timeout + close timeout of the Shutdown: so, given that deadlines
/// fire, it stops within that bound of logical time. The time left is part of the projection, so a cycle cannot
/// hide a state past the bound.
fn shutdown_bound_holds(s: &McState) -> bool {
    let Some(at) = s.world.shutdown_at else {
        return true;
    };
    if s.machine.state().is_stopped() {
        return true;
    }
    let config = s.machine.config();
    let bound = at + config.drain_timeout + config.close_timeout;
    s.world.now < bound
        && s.machine
            .poll_timeout()
            .is_some_and(|(deadline, _)| deadline <= bound)
}

/// Every status the client must account for is stored at the facilitator, refused by it, or still held by the
/// machine (queued or in flight; at the stop, what it reports undelivered).
fn nothing_lost(s: &McState) -> bool {
    s.world.jobs.iter().enumerate().all(|(j, job)| {
        job.expected.iter().all(|status| {
            s.world.facilitator.stored[j].contains(status)
                || s.world.facilitator.refused[j].contains(status)
                || s.machine
                    .undelivered()
                    .any(|u| u.status == *status && usize::from(job_of(&u.uuid)) == j)
        })
    })
}

/// What broke `property` in a counterexample's last state: the step's violation, or the state's numbers.
pub fn describe_failure(property: &str, s: &McState) -> String {
    if let Some(v) = s
        .world
        .violation
        .as_ref()
        .filter(|v| v.prop.name() == property)
    {
        return v.detail.clone();
    }
    let now = s.world.now;
    let deadline = s
        .machine
        .poll_timeout()
        .map(|(d, timer)| format!("{timer} in {} ms", rel(now, d)));
    let shutdown = s.world.shutdown_at.map(|at| {
        let c = s.machine.config();
        format!(
            "; the shutdown bound is in {} ms",
            rel(now, at + c.drain_timeout + c.close_timeout)
        )
    });
    format!(
        "in {}: {} held, {} running, next deadline {}{}",
        s.machine.state().kind(),
        s.machine.held_len(),
        s.machine.running_job_count(),
        deadline.unwrap_or_else(|| "none".into()),
        shutdown.unwrap_or_default()
    )
}
