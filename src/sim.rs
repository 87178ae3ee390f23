//! A simulated world for the pure machine: a model facilitator, a model socket, model job handlers and a
//! simulated clock, with the machine's invariants checked after every step.
//!
//! The property tests, the `transitions` fuzz target and its seed-replay test all drive the machine through
//! [`Sim::apply`], so a fuzz body cannot rot and a property cannot drift from what the fuzzer checks. Each
//! [`SimEvent`] is turned into an input that is legal in the current world (a Response only when a status is in
//! flight on an authenticated socket, and so on), except [`SimEvent::Stale`], which feeds deliberately out-of-place
//! inputs. Pure: no I/O, no clock of its own beyond one `Instant` taken as the origin.
//!
//! With a durable configuration ([`Sim::durable`]) the world also holds a model spool: the machine's `Persist`
//! batches queue for a model writer, [`SimEvent::Commit`] commits (or fails) what is queued and reports it, and
//! [`SimEvent::Crash`] kills the process at any step: a new machine starts from the last durable commit (the model
//! spool's content) and recovers it. The properties: every status ever on disk is, until the facilitator answers
//! it, still on disk; statuses lost in a crash were never on disk (they were produced after the last commit, or
//! released while the spool was stale, and counted); per-job order holds across crashes; after a restart nothing
//! answered is sent again unless it was still on disk (an allowed re-send); no status goes out before it is on
//! disk unless the machine counted it unprotected; and, after a final restart and a clean run, every job the
//! facilitator saw `received` for has exactly one terminal status unless one of its statuses went out unprotected.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use std::collections::BTreeMap;

use crate::machine::{Action, BackoffConfig, Config, Event, Incoming, Input, Machine};
use crate::protocol::keys::Hotkey;
use crate::protocol::{
    AuthenticationRequest, ClientMessage, DecodeError, JobCheated, JobStatus, JobStatusUpdate,
    Response, ServerMessage, TrustedSigners, decode_server_frame, error_type,
    testing::signed_job_text,
};
use crate::spool::{HandlerRecord, JobRecord, Recovered, SpoolBatch, SpooledStatus};

/// One thing that happens in the simulated world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, arbitrary::Arbitrary)]
pub enum SimEvent {
    /// Time moves to the machine's next deadline, and it gets a Tick.
    Wait,
    /// Time moves on by this many milliseconds (possibly short of the deadline), and the machine gets a Tick.
    Advance(u16),
    /// The pending socket opens.
    OpenSucceeds,
    /// The pending or open socket fails.
    SocketFails,
    /// The facilitator answers the auth request.
    AuthReply(AuthReply),
    /// The facilitator answers the oldest in-flight status update; `not_found` makes it `job.not_found`,
    /// otherwise success or, for a status it already stored, `job.integrity_error`.
    Ack {
        /// Answer `job.not_found` instead.
        not_found: bool,
    },
    /// The facilitator pushes a job request.
    PushJob(JobKind),
    /// The facilitator pushes several job requests that the client reads at once (one [`Input::Frames`]): `count`
    /// picks how many (2 to 6), each bit of `kinds` makes one of them untrusted or forged instead of valid.
    Burst {
        /// How many (2 + count % 5).
        count: u8,
        /// Which are untrusted (odd positions) or forged (even positions).
        kinds: u8,
    },
    /// The facilitator sends something odd.
    Noise(NoiseKind),
    /// A Pong arrives.
    Pong,
    /// The facilitator closes the connection.
    PeerCloses(CloseKind),
    /// A running job's handler reports a status (`job` picks among running jobs, `status` among statuses).
    HandlerStatus {
        /// Which running job.
        job: u8,
        /// Which status.
        status: u8,
    },
    /// A running job's handler ends.
    HandlerFinishes {
        /// Which running job.
        job: u8,
    },
    /// First shutdown signal.
    Shutdown,
    /// Second shutdown signal.
    ForceStop,
    /// An input that does not fit the world (a stale socket event, a frame with no socket, ...).
    Stale(u8),
    /// The spool's writer finishes: the oldest queued batch (or, with `all`, everything queued, merged into one
    /// commit) is committed, or fails with `fail`, and the machine is told. Nothing without the spool.
    Commit {
        /// The commit fails (a full or failing disk).
        fail: bool,
        /// Merge everything queued into this commit.
        all: bool,
    },
    /// The process dies (SIGKILL, OOM, power cut) and restarts at once from the last durable commit; with
    /// `committed_first`, the commit under way reaches the disk just before the death (without the machine hearing
    /// of it). Without the spool: nothing.
    Crash {
        /// The oldest queued batch is committed before the death.
        committed_first: bool,
    },
    /// A running job's handler says where its work runs (an `exec:` process group, or a Celery task that outlives
    /// the client).
    Attach {
        /// Which running job.
        job: u8,
        /// A Celery task rather than a process group.
        celery: bool,
    },
    /// The job handler's pipeline (Celery over Redis) goes down or comes back: while it is down, no job may be
    /// dispatched.
    Pipeline {
        /// It is available.
        up: bool,
    },
    /// The facilitator pushes a cheat report, signed by a trusted signer or by a stranger: only a trusted one may
    /// be handed on to the handler, and it must be.
    Cheat {
        /// Signed by a trusted signer.
        trusted: bool,
    },
}

/// How the facilitator answers an auth request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, arbitrary::Arbitrary)]
pub enum AuthReply {
    /// `{"status":"success","errors":[]}`.
    Success,
    /// `auth.signature_invalid` (fatal).
    SignatureInvalid,
    /// `auth.validator_not_found` (retried at the cap).
    ValidatorNotFound,
    /// A job request instead of a Response.
    Garbage,
}

/// What kind of job request the facilitator pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, arbitrary::Arbitrary)]
pub enum JobKind {
    /// Signed by a trusted signer.
    Valid,
    /// Signed by a key the client does not trust.
    Untrusted,
    /// Signed by a trusted key, then changed: the signature does not verify.
    Forged,
    /// Readable uuid, unknown executor class.
    Invalid,
    /// The uuid of a job already running.
    Duplicate,
}

/// Odd frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, arbitrary::Arbitrary)]
pub enum NoiseKind {
    /// Not JSON.
    Garbage,
    /// A binary frame.
    Binary,
    /// A Response although nothing is in flight (only sent when nothing is).
    UnexpectedResponse,
}

/// How the facilitator closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, arbitrary::Arbitrary)]
pub enum CloseKind {
    /// 1000.
    Normal,
    /// 3000.
    SignatureInvalid,
    /// 3001.
    ValidatorNotFound,
    /// No close frame.
    Abrupt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Socket {
    None,
    Opening,
    Open {
        authed: bool,
        sent_anything: bool,
        closing: bool,
    },
}

const TEMPLATE_UUID: &str = "00000000-0000-4000-8000-000000000000";

/// The machine's configuration used by the simulation: short timeouts so that a few hundred events cover many
/// reconnects and drains, a small outbox and in-flight window so that backpressure and the window are exercised.
pub fn sim_config(seed: u64) -> Config {
    Config {
        heartbeat_interval: Duration::from_secs(2),
        peer_timeout: Duration::from_secs(4),
        connect_timeout: Duration::from_secs(3),
        drain_timeout: Duration::from_secs(5),
        close_timeout: Duration::from_secs(1),
        backoff: BackoffConfig {
            base: Duration::from_millis(500),
            factor: 2.0,
            cap: Duration::from_secs(8),
            jitter: 0.5,
            stable_after: Duration::from_secs(3),
        },
        jitter_seed: seed,
        outbox_capacity: 16,
        max_in_flight: 4,
        max_running_jobs: 4,
        durable: false,
    }
}

/// What a statuses is, for the checks across restarts: job, status, and the world's sequence number if a handler
/// produced it (the client's own `received` and `horde_failed` have none).
type Identity = (String, JobStatus, Option<u64>);

fn identity(update: &JobStatusUpdate) -> Identity {
    (
        update.uuid.clone(),
        update.status,
        update.metadata.extra.get("seq").and_then(Value::as_u64),
    )
}

/// The model spool: what is on disk, and the batches queued for the writer.
#[derive(Debug, Default)]
struct ModelSpool {
    statuses: BTreeMap<u64, JobStatusUpdate>,
    jobs: BTreeMap<String, JobRecord>,
    /// Emitted `Persist` batches not yet committed or failed, in order.
    queue: VecDeque<(u64, SpoolBatch)>,
    /// The last batch id emitted.
    last_id: u64,
    /// A commit failed: the writer writes no delta until a snapshot commits (as `SpoolWorker` does).
    stale: bool,
}

impl ModelSpool {
    /// The documented meaning of a batch (`SpoolBatch`): a snapshot empties first; puts, then removes.
    fn apply(&mut self, batch: &SpoolBatch) {
        batch.apply_to(&mut self.statuses, &mut self.jobs);
    }

    /// Takes the oldest queued batch, or all of them merged (as the real writer does), with the highest id.
    fn take(&mut self, all: bool) -> Option<(u64, SpoolBatch)> {
        let (mut up_to, mut batch) = self.queue.pop_front()?;
        while all && let Some((id, later)) = self.queue.pop_front() {
            batch.merge(later);
            up_to = id;
        }
        Some((up_to, batch))
    }

    fn holds(&self, who: &Identity) -> bool {
        self.statuses.values().any(|u| identity(u) == *who)
    }
}

/// The simulated world around one machine.
pub struct Sim {
    /// The machine under test.
    pub machine: Machine,
    config: Config,
    auth: AuthenticationRequest,
    signers: TrustedSigners,
    spool: ModelSpool,
    /// Handler statuses (by sequence number) that were on disk at some point.
    ever_durable: HashSet<u64>,
    /// Handler statuses lost in crashes: never on disk, never stored.
    lost: HashSet<u64>,
    /// Statuses answered by the facilitator (stored or refused), by identity.
    answered: HashSet<Identity>,
    /// What was on disk at the last crash: the statuses the new machine may send again.
    recovered: HashSet<Identity>,
    /// Statuses sent at least once by the current machine.
    sent_this_life: HashSet<Identity>,
    /// First sends, by the current machine, of statuses that were not on disk.
    unprotected_sends: u64,
    /// Jobs one of whose statuses went out without being on disk: a crash may leave them without (or with a second)
    /// terminal status, as allowed.
    exposed_jobs: HashSet<String>,
    /// Terminal statuses stored by the facilitator, per job.
    terminals_stored: HashMap<String, u32>,
    /// Jobs one of whose statuses the facilitator refused (`job.not_found`): never retried, so such a job may end
    /// without a terminal status stored.
    refused_jobs: HashSet<String>,
    /// Jobs whose handler returned without reporting a terminal status (nothing reports one for them).
    ended_without_terminal: HashSet<String>,
    /// Late statuses counted before the current machine started.
    late_before: usize,
    crashes: u64,
    /// Failed commits reported to the machine.
    failed_commits: u64,
    /// Recovered jobs reported `horde_failed`, and re-attached, over all restarts.
    interrupted: u64,
    resumed: u64,
    /// Answered statuses sent again after a restart because they were still on disk.
    allowed_resends: u64,
    now: Instant,
    origin: Instant,
    socket: Socket,
    job_template: String,
    untrusted_template: String,
    next_job: u64,
    next_seq: u64,
    /// Jobs dispatched and neither finished nor cancelled.
    running: Vec<String>,
    /// Every job ever dispatched.
    dispatched: HashSet<String>,
    /// Jobs pushed with an untrusted or forged signature: dispatching one is a security failure.
    must_not_run: HashSet<String>,
    /// The facilitator's stored (uuid, status) pairs.
    stored: HashSet<(String, JobStatus)>,
    /// Statuses sent on the current socket and not yet answered, as the facilitator sees them.
    server_in_flight: VecDeque<(String, JobStatus, Option<u64>)>,
    /// Handler statuses fed to the machine, by sequence number: (uuid, status).
    fed: Vec<(String, JobStatus)>,
    /// Sequence numbers the facilitator refused (job.not_found).
    refused: HashSet<u64>,
    /// Sequence numbers fed after their job's terminal status: the machine must drop them, never send them.
    late: HashSet<u64>,
    /// Jobs whose handler reported a terminal status.
    terminal_fed: HashSet<String>,
    /// Jobs whose terminal status reached the facilitator (first sends only): nothing of theirs may follow.
    terminal_sent: HashSet<String>,
    /// Per job: the highest sequence number sent for the first time.
    first_sent: HashMap<String, u64>,
    /// Sequence numbers sent at least once.
    ever_sent: HashSet<u64>,
    /// Per job, on the current socket: the highest sequence number sent.
    sent_on_socket: HashMap<String, u64>,
    /// Jobs whose `received` was sent.
    received_sent: HashSet<String>,
    shutdown_at: Option<Instant>,
    /// When the last heartbeat was sent on the current socket.
    last_heartbeat: Option<Instant>,
    /// Whether the current connection made progress as the world sees it: a status acknowledged or a job request
    /// received while Running. Such a connection's loss must be retried after at most the base delay.
    progress_on_socket: bool,
    /// Attempts that failed without progress since the last productive connection.
    unproductive_streak: u32,
    /// Productive connections lost before the stable period, right after at least one unproductive attempt: the
    /// cases where the backoff property has teeth (a grown delay that only progress brings back to the base).
    productive_losses_after_failures: u64,
    /// When the machine last entered Running.
    running_since: Option<Instant>,
    /// Steps taken.
    pub steps: u64,
    /// Whether the handler's pipeline is up, as the world last told the machine.
    pipeline_up: bool,
    /// Cheat reports signed by a trusted signer and by a stranger.
    cheat_reports: [JobCheated; 2],
    /// Cheat reports the machine handed on.
    cheats_forwarded: u64,
}

impl Sim {
    /// A world whose machine is due to connect at once. `seed` drives the backoff jitter.
    pub fn new(seed: u64) -> Self {
        Self::with_config(sim_config(seed))
    }

    /// A world whose machine keeps a durable spool (the model spool of this world).
    pub fn durable(seed: u64) -> Self {
        Self::with_config(Config {
            durable: true,
            ..sim_config(seed)
        })
    }

    /// A world with a given machine configuration.
    pub fn with_config(config: Config) -> Self {
        let own = Hotkey::from_seed(&[7u8; 32]);
        let signer = Hotkey::from_seed(&[0x11u8; 32]);
        let stranger = Hotkey::from_seed(&[0x22u8; 32]);
        let signers = TrustedSigners::new(own.public_key(), &[signer.ss58()])
            .unwrap_or_else(|e| unreachable!("a freshly made SS58 address parses: {e}"));
        let origin = Instant::now();
        Sim {
            machine: Machine::new(config.clone(), own.auth_request(), signers.clone(), origin),
            config,
            auth: own.auth_request(),
            signers,
            spool: ModelSpool::default(),
            ever_durable: HashSet::new(),
            lost: HashSet::new(),
            answered: HashSet::new(),
            recovered: HashSet::new(),
            sent_this_life: HashSet::new(),
            unprotected_sends: 0,
            exposed_jobs: HashSet::new(),
            terminals_stored: HashMap::new(),
            refused_jobs: HashSet::new(),
            ended_without_terminal: HashSet::new(),
            late_before: 0,
            crashes: 0,
            failed_commits: 0,
            interrupted: 0,
            resumed: 0,
            allowed_resends: 0,
            now: origin,
            origin,
            socket: Socket::None,
            job_template: signed_job_text(&signer, TEMPLATE_UUID),
            untrusted_template: signed_job_text(&stranger, TEMPLATE_UUID),
            next_job: 0,
            next_seq: 0,
            running: Vec::new(),
            dispatched: HashSet::new(),
            must_not_run: HashSet::new(),
            stored: HashSet::new(),
            server_in_flight: VecDeque::new(),
            fed: Vec::new(),
            refused: HashSet::new(),
            late: HashSet::new(),
            terminal_fed: HashSet::new(),
            terminal_sent: HashSet::new(),
            first_sent: HashMap::new(),
            ever_sent: HashSet::new(),
            sent_on_socket: HashMap::new(),
            received_sent: HashSet::new(),
            shutdown_at: None,
            last_heartbeat: None,
            progress_on_socket: false,
            unproductive_streak: 0,
            productive_losses_after_failures: 0,
            running_since: None,
            steps: 0,
            pipeline_up: true,
            cheat_reports: [&signer, &stranger].map(|key| {
                let mut report = JobCheated {
                    signature: None,
                    job_uuid: "00000000-0000-4000-8000-00000000c4ea".into(),
                    trusted_job_uuid: "00000000-0000-4000-8000-00000000c4eb".into(),
                    details: serde_json::json!({"reason": "simulated"}),
                };
                report.sign(key, 1);
                report
            }),
            cheats_forwarded: 0,
        }
    }

    /// The simulated current time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// UUIDs of jobs running in the world (dispatched, not finished, not cancelled).
    pub fn running_jobs(&self) -> &[String] {
        &self.running
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.origin
    }

    /// Runs one event; `Err` names the invariant that broke.
    pub fn apply(&mut self, event: SimEvent) -> Result<(), String> {
        match event {
            SimEvent::Wait => {
                let Some((deadline, why)) = self.machine.poll_timeout() else {
                    return Ok(());
                };
                self.now = self.now.max(deadline);
                let before = self.machine.state().clone();
                let actions = self.step(Input::Tick)?;
                if actions.is_empty() && *self.machine.state() == before {
                    return Err(format!("woken for {why:?} at its deadline and did nothing"));
                }
            }
            SimEvent::Advance(ms) => {
                self.now += Duration::from_millis(u64::from(ms));
                self.step(Input::Tick)?;
            }
            SimEvent::OpenSucceeds => {
                if self.socket == Socket::Opening {
                    self.socket = Socket::Open {
                        authed: false,
                        sent_anything: false,
                        closing: false,
                    };
                    self.step(Input::SocketOpened)?;
                }
            }
            SimEvent::SocketFails => {
                if self.socket != Socket::None {
                    self.drop_socket();
                    self.step(Input::SocketFailed("simulated failure".into()))?;
                }
            }
            SimEvent::AuthReply(reply) => {
                if let Socket::Open {
                    authed: false,
                    sent_anything: true,
                    ..
                } = self.socket
                {
                    match reply {
                        AuthReply::Success => {
                            self.socket = Socket::Open {
                                authed: true,
                                sent_anything: true,
                                closing: false,
                            };
                            self.step(Input::Frame(ServerMessage::Response(Response::success())))?;
                        }
                        AuthReply::SignatureInvalid => {
                            let r = Response::error(
                                error_type::SIGNATURE_INVALID,
                                "Invalid signature",
                                "",
                            );
                            self.step(Input::Frame(ServerMessage::Response(r)))?;
                        }
                        AuthReply::ValidatorNotFound => {
                            let r = Response::error(
                                error_type::VALIDATOR_NOT_FOUND,
                                "Validator not found",
                                "",
                            );
                            self.step(Input::Frame(ServerMessage::Response(r)))?;
                        }
                        AuthReply::Garbage => {
                            let frame = self.job_frame(&self.job_template.clone(), None);
                            self.step(frame)?;
                        }
                    }
                }
            }
            SimEvent::Ack { not_found } => {
                if self.authed()
                    && let Some((uuid, status, seq)) = self.server_in_flight.pop_front()
                {
                    self.note_progress();
                    self.answered.insert((uuid.clone(), status, seq));
                    let response = if not_found {
                        self.refused_jobs.insert(uuid.clone());
                        if let Some(seq) = seq {
                            self.refused.insert(seq);
                        }
                        Response::error(error_type::JOB_NOT_FOUND, "Job not found", "")
                    } else if self.stored.insert((uuid.clone(), status)) {
                        if status.is_terminal() {
                            *self.terminals_stored.entry(uuid.clone()).or_default() += 1;
                        }
                        Response::success()
                    } else {
                        Response::error(error_type::INTEGRITY_ERROR, "Integrity error", "")
                    };
                    let actions = self.step(Input::Frame(ServerMessage::Response(response)))?;
                    let answered = actions.iter().find_map(|a| match a {
                        Action::Emit(Event::StatusDelivered { uuid, status, .. })
                        | Action::Emit(Event::StatusRefused { uuid, status, .. }) => {
                            Some((uuid, *status))
                        }
                        _ => None,
                    });
                    if answered != Some((&uuid, status)) {
                        return Err(format!(
                            "Response for {uuid}/{status} was matched to {answered:?}: FIFO matching broken"
                        ));
                    }
                }
            }
            SimEvent::PushJob(kind) => {
                if self.authed()
                    && let Some(frame) = self.job_input(kind)
                {
                    self.step(frame)?;
                }
            }
            SimEvent::Burst { count, kinds } => {
                if self.authed() {
                    let mut frames = Vec::new();
                    for i in 0..2 + count % 5 {
                        let kind = match (kinds >> i & 1, i % 2) {
                            (0, _) => JobKind::Valid,
                            (_, 0) => JobKind::Forged,
                            _ => JobKind::Untrusted,
                        };
                        match self.job_input(kind) {
                            Some(Input::Frame(message)) => frames.push(Incoming::Message(message)),
                            Some(Input::Undecodable(error)) => {
                                frames.push(Incoming::Undecodable(error))
                            }
                            _ => {}
                        }
                    }
                    self.step(Input::Frames(frames))?;
                }
            }
            SimEvent::Noise(kind) => {
                if self.authed() {
                    let input = match kind {
                        NoiseKind::Garbage => match decode_server_frame("{not json", 1 << 20) {
                            Err(e) => Input::Undecodable(e),
                            Ok(m) => Input::Frame(m),
                        },
                        NoiseKind::Binary => Input::Undecodable(DecodeError::Binary),
                        NoiseKind::UnexpectedResponse if self.server_in_flight.is_empty() => {
                            Input::Frame(ServerMessage::Response(Response::success()))
                        }
                        NoiseKind::UnexpectedResponse => return Ok(()),
                    };
                    self.step(input)?;
                }
            }
            SimEvent::Pong => {
                if self.authed() {
                    self.step(Input::Pong)?;
                }
            }
            SimEvent::PeerCloses(kind) => {
                if matches!(self.socket, Socket::Open { .. }) {
                    let code = match kind {
                        CloseKind::Normal => Some(1000),
                        CloseKind::SignatureInvalid => Some(3000),
                        CloseKind::ValidatorNotFound => Some(3001),
                        CloseKind::Abrupt => None,
                    };
                    self.drop_socket();
                    self.step(Input::SocketClosed(code))?;
                }
            }
            SimEvent::HandlerStatus { job, status } => {
                if !self.running.is_empty() && self.machine.accepts_statuses() {
                    let uuid = self.running[usize::from(job) % self.running.len()].clone();
                    let choices = [
                        JobStatus::Accepted,
                        JobStatus::ExecutorReady,
                        JobStatus::Completed,
                        JobStatus::Failed,
                    ];
                    let status = choices[usize::from(status) % choices.len()];
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    if self.terminal_fed.contains(&uuid) {
                        self.late.insert(seq);
                    } else if status.is_terminal() {
                        self.terminal_fed.insert(uuid.clone());
                    }
                    self.fed.push((uuid.clone(), status));
                    let mut update = JobStatusUpdate::new(uuid, status);
                    update.metadata.extra.insert("seq".into(), Value::from(seq));
                    self.step(Input::Status(update))?;
                }
            }
            SimEvent::HandlerFinishes { job } => {
                if !self.running.is_empty() {
                    let uuid = self.running.remove(usize::from(job) % self.running.len());
                    if !self.terminal_fed.contains(&uuid) {
                        self.ended_without_terminal.insert(uuid.clone());
                    }
                    self.step(Input::JobFinished(uuid))?;
                }
            }
            SimEvent::Shutdown => {
                if self.shutdown_at.is_none() && !self.machine.state().is_stopped() {
                    self.shutdown_at = Some(self.now);
                }
                self.step(Input::Shutdown)?;
            }
            SimEvent::ForceStop => {
                self.step(Input::ForceStop)?;
                if !self.machine.state().is_stopped() {
                    return Err("ForceStop did not stop the machine in one step".into());
                }
            }
            SimEvent::Commit { fail, all } => self.commit(fail, all)?,
            SimEvent::Crash { committed_first } => self.crash(committed_first)?,
            SimEvent::Attach { job, celery } => {
                if !self.running.is_empty() {
                    let index = usize::from(job) % self.running.len();
                    let uuid = self.running[index].clone();
                    let handler = if celery {
                        HandlerRecord::Celery {
                            task_id: format!("task-{uuid}"),
                        }
                    } else {
                        HandlerRecord::Exec {
                            pgid: 1000 + index as i32,
                            start_time: u64::from(job),
                        }
                    };
                    self.step(Input::JobAttached { uuid, handler })?;
                }
            }
            SimEvent::Pipeline { up } => {
                self.pipeline_up = up;
                self.step(Input::PipelineAvailable(up))?;
                if self.machine.pipeline_available() != up && !self.machine.state().is_stopped() {
                    return Err(format!(
                        "told the pipeline is up={up}, the machine holds the opposite"
                    ));
                }
            }
            SimEvent::Cheat { trusted } => {
                if self.authed() {
                    let report = self.cheat_reports[usize::from(!trusted)].clone();
                    let before = self.cheats_forwarded;
                    let takes = matches!(
                        self.machine.state(),
                        crate::machine::State::Running { .. }
                            | crate::machine::State::Draining { .. }
                    );
                    self.step(Input::Frame(ServerMessage::JobCheated(report)))?;
                    let forwarded = self.cheats_forwarded - before;
                    if forwarded != u64::from(trusted && takes) {
                        return Err(format!(
                            "a cheat report (trusted: {trusted}) was handed on {forwarded} time(s)"
                        ));
                    }
                }
            }
            SimEvent::Stale(which) => {
                // Bring the world up to date first, so that "stale" is judged against the socket as it is now.
                self.step(Input::Tick)?;
                let input = match (which % 5, self.socket) {
                    (0, Socket::Open { .. }) | (0, Socket::None) => Input::SocketOpened,
                    (1, Socket::None) => Input::Frame(ServerMessage::Response(Response::success())),
                    (2, Socket::None) => Input::SocketClosed(Some(1000)),
                    (3, Socket::None) => Input::Pong,
                    (4, _) => Input::JobFinished("00000000-0000-4000-8000-ffffffffffff".into()),
                    _ => return Ok(()),
                };
                self.step(input)?;
            }
        }
        Ok(())
    }

    fn authed(&self) -> bool {
        matches!(self.socket, Socket::Open { authed: true, .. })
    }

    /// The facilitator's application did useful work on this connection (only Running counts: a draining client
    /// never reconnects).
    fn note_progress(&mut self) {
        if matches!(self.machine.state(), crate::machine::State::Running { .. }) {
            self.progress_on_socket = true;
        }
    }

    fn drop_socket(&mut self) {
        self.progress_on_socket = false;
        self.socket = Socket::None;
        self.last_heartbeat = None;
        self.server_in_flight.clear();
        self.sent_on_socket.clear();
    }

    /// The input for one job request of this kind; records which must never be dispatched, and progress.
    fn job_input(&mut self, kind: JobKind) -> Option<Input> {
        let input = match kind {
            JobKind::Valid => self.job_frame(&self.job_template.clone(), None),
            JobKind::Untrusted => self.job_frame(&self.untrusted_template.clone(), None),
            JobKind::Forged => {
                let text = self
                    .job_template
                    .replace("compute-horde-job-echo", "forged-image");
                self.job_frame(&text, None)
            }
            JobKind::Invalid => {
                let text = self
                    .job_template
                    .replace("always_on.gpu-24gb", "no_such.class");
                // Undecodable: not progress.
                return Some(self.job_frame(&text, None));
            }
            JobKind::Duplicate => {
                let uuid = self.running.first().cloned()?;
                self.job_frame(&self.job_template.clone(), Some(uuid))
            }
        };
        if let (
            JobKind::Untrusted | JobKind::Forged,
            Input::Frame(ServerMessage::JobRequest(job)),
        ) = (kind, &input)
        {
            self.must_not_run.insert(job.uuid().to_owned());
        }
        self.note_progress();
        Some(input)
    }

    fn job_frame(&mut self, template: &str, uuid: Option<String>) -> Input {
        let uuid = uuid.unwrap_or_else(|| {
            self.next_job += 1;
            format!("00000000-0000-4000-8000-{:012x}", self.next_job)
        });
        match decode_server_frame(&template.replace(TEMPLATE_UUID, &uuid), 1 << 20) {
            Ok(message) => Input::Frame(message),
            Err(error) => Input::Undecodable(error),
        }
    }

    /// Steps the machine, carries out its actions on the model world and checks every invariant.
    fn step(&mut self, input: Input) -> Result<Vec<Action>, String> {
        self.steps += 1;
        let was_stopped = self.machine.state().is_stopped();
        let was_running = matches!(self.machine.state(), crate::machine::State::Running { .. });
        let was_connecting = matches!(
            self.machine.state(),
            crate::machine::State::Connecting { .. }
        );
        let productive = self.progress_on_socket;
        let kind = input.kind();
        let at_cap =
            input == Input::SocketClosed(Some(crate::protocol::close_code::VALIDATOR_NOT_FOUND));
        let actions = self.machine.step(input, self.now);
        if was_stopped && (!actions.is_empty() || !self.machine.state().is_stopped()) {
            return Err(format!(
                "Stopped is not absorbing: {kind:?} gave {actions:?}"
            ));
        }
        if let crate::machine::State::Disconnected { retry_at } = *self.machine.state() {
            let delay = retry_at.saturating_duration_since(self.now);
            let backoff = self.machine.config().backoff;
            if delay > backoff.cap {
                return Err(format!(
                    "reconnect delay {delay:?} over the cap {:?}",
                    backoff.cap
                ));
            }
            if was_running && productive && !at_cap && delay > backoff.base {
                return Err(format!(
                    "a connection that made progress was lost and the next attempt waits {delay:?}, over the \
                     base delay {:?}",
                    backoff.base
                ));
            }
            if was_running && productive {
                let short = self
                    .running_since
                    .is_some_and(|since| self.now - since < backoff.stable_after);
                if self.unproductive_streak > 0 && short && !at_cap {
                    self.productive_losses_after_failures += 1;
                }
                self.unproductive_streak = 0;
            } else if was_running || was_connecting {
                self.unproductive_streak += 1;
            }
        }
        if !was_running && matches!(self.machine.state(), crate::machine::State::Running { .. }) {
            self.running_since = Some(self.now);
        }
        for action in &actions {
            self.carry_out(action)?;
        }
        self.check_invariants()?;
        Ok(actions)
    }

    fn carry_out(&mut self, action: &Action) -> Result<(), String> {
        match action {
            Action::Open => {
                if self.socket != Socket::None {
                    return Err("Open while a socket is already open: two sockets at once".into());
                }
                self.socket = Socket::Opening;
            }
            Action::Send(message) => self.on_send(message)?,
            Action::Ping => {
                if !self.authed() {
                    return Err("Ping before authentication".into());
                }
            }
            Action::Close(_) => match &mut self.socket {
                Socket::Open { closing, .. } => *closing = true,
                _ => return Err("Close with no open socket".into()),
            },
            Action::Abort => self.drop_socket(),
            Action::Dispatch(job) => {
                if !matches!(self.machine.state(), crate::machine::State::Running { .. }) {
                    return Err(format!(
                        "job dispatched in {:?}: only Running takes jobs",
                        self.machine.state().kind()
                    ));
                }
                let uuid = job.uuid().to_owned();
                if self.must_not_run.contains(&uuid) {
                    return Err(format!(
                        "job {uuid} dispatched although its signature is untrusted or forged"
                    ));
                }
                if self.running.contains(&uuid) {
                    return Err(format!("job {uuid} dispatched twice while running"));
                }
                if !self.pipeline_up {
                    return Err(format!(
                        "job {uuid} dispatched while the handler's pipeline is unavailable"
                    ));
                }
                self.dispatched.insert(uuid.clone());
                self.running.push(uuid);
            }
            Action::CancelJobs => self.running.clear(),
            Action::Emit(_) => {}
            Action::ForwardCheatReport(report) => {
                if self.signers.check_cheat_report(report).is_err() {
                    return Err("a cheat report not from a trusted signer was handed on".into());
                }
                self.cheats_forwarded += 1;
            }
            Action::Persist { id, batch } => {
                if !self.config.durable {
                    return Err("Persist without the spool".into());
                }
                if *id != self.spool.last_id + 1 {
                    return Err(format!(
                        "Persist {id} after Persist {}: ids must go up by one",
                        self.spool.last_id
                    ));
                }
                if batch.is_empty() {
                    return Err(format!("Persist {id} of an empty batch"));
                }
                self.spool.last_id = *id;
                self.spool.queue.push_back((*id, batch.clone()));
            }
            Action::Stop(_) => {
                self.drop_socket();
                self.running.clear();
            }
        }
        Ok(())
    }

    fn on_send(&mut self, message: &ClientMessage) -> Result<(), String> {
        let Socket::Open {
            authed,
            sent_anything,
            closing,
        } = self.socket
        else {
            return Err(format!(
                "Send of {} with no open socket",
                message.message_type()
            ));
        };
        if closing {
            return Err(format!("Send of {} after Close", message.message_type()));
        }
        match message {
            ClientMessage::Auth(_) => {
                if authed || sent_anything {
                    return Err("auth request sent twice on one socket".into());
                }
                self.socket = Socket::Open {
                    authed,
                    sent_anything: true,
                    closing,
                };
            }
            other if !authed => {
                return Err(format!(
                    "{} sent before the auth success Response",
                    other.message_type()
                ));
            }
            ClientMessage::Heartbeat => {
                let interval = self.machine.config().heartbeat_interval;
                if let Some(last) = self
                    .last_heartbeat
                    .filter(|last| self.now - *last < interval)
                {
                    return Err(format!(
                        "heartbeats {:?} apart, under the interval {interval:?}",
                        self.now - last
                    ));
                }
                self.last_heartbeat = Some(self.now);
            }
            ClientMessage::StatusUpdate(update) => {
                let seq = update.metadata.extra.get("seq").and_then(Value::as_u64);
                self.check_durability_of_send(update)?;
                self.check_order(update, seq)?;
                self.server_in_flight
                    .push_back((update.uuid.clone(), update.status, seq));
            }
            _ => {}
        }
        Ok(())
    }

    /// With the spool: a status leaves before it is on disk only if the machine counted it unprotected; after a
    /// restart, an answered status is sent again only if it was still on disk (an allowed re-send).
    fn check_durability_of_send(&mut self, update: &JobStatusUpdate) -> Result<(), String> {
        if !self.config.durable || update.status == JobStatus::Rejected {
            return Ok(());
        }
        let who = identity(update);
        if !self.sent_this_life.insert(who.clone()) {
            return Ok(());
        }
        if self.answered.contains(&who) {
            // A job with a status sent unprotected may be left in the spool looking unfinished (its answer's removal
            // never reached the disk): the restart reports it again, which the facilitator answers as a duplicate.
            if !self.recovered.contains(&who) && !self.exposed_jobs.contains(&who.0) {
                return Err(format!(
                    "{}/{} was answered and is sent again after a restart although it was not in the spool",
                    who.0, who.1
                ));
            }
            self.allowed_resends += 1;
        }
        if !self.spool.holds(&who) {
            self.unprotected_sends += 1;
            self.exposed_jobs.insert(who.0.clone());
            let counted = self.machine.counters().statuses_unspooled;
            if self.unprotected_sends > counted {
                return Err(format!(
                    "{}/{} sent before it was on disk: {} such sends, {counted} counted unprotected by the machine",
                    who.0, who.1, self.unprotected_sends
                ));
            }
        }
        Ok(())
    }

    /// The model writer commits (or fails) the oldest batch, or everything queued, and reports it.
    fn commit(&mut self, fail: bool, all: bool) -> Result<(), String> {
        let Some((up_to, batch)) = self.spool.take(all) else {
            return Ok(());
        };
        let result = if fail {
            self.failed_commits += 1;
            self.spool.stale = true;
            Err("simulated disk failure".to_owned())
        } else if self.spool.stale && !batch.full_snapshot {
            Err("skipped: the spool is stale".to_owned())
        } else {
            self.spool.stale = false;
            self.write(&batch)?;
            Ok(())
        };
        self.step(Input::Persisted { up_to, result })?;
        Ok(())
    }

    /// A batch reaches the disk: apply it and check that nothing on disk is forgotten before it is answered.
    fn write(&mut self, batch: &SpoolBatch) -> Result<(), String> {
        self.spool.apply(batch);
        for update in self.spool.statuses.values() {
            if let Some(seq) = update.metadata.extra.get("seq").and_then(Value::as_u64) {
                self.ever_durable.insert(seq);
            }
        }
        for seq in &self.ever_durable {
            let (uuid, status) = &self.fed[*seq as usize];
            let on_disk = self
                .spool
                .statuses
                .values()
                .any(|u| identity(u) == (uuid.clone(), *status, Some(*seq)));
            if !on_disk
                && !self.stored.contains(&(uuid.clone(), *status))
                && !self.refused.contains(seq)
            {
                return Err(format!(
                    "status seq {seq} ({uuid}/{status}) was on disk and is gone without an answer"
                ));
            }
        }
        Ok(())
    }

    /// The process dies and restarts from the last durable commit.
    fn crash(&mut self, committed_first: bool) -> Result<(), String> {
        if !self.config.durable {
            return Ok(());
        }
        if committed_first
            && let Some((_, batch)) = self.spool.take(false)
            && (!self.spool.stale || batch.full_snapshot)
        {
            self.spool.stale = false;
            self.write(&batch)?;
        }
        // A new process opens the file as it is: up to date with itself.
        self.spool.stale = false;
        self.crashes += 1;
        // The writer's queue dies with the process; the new one numbers its batches from 1 again.
        self.spool.queue.clear();
        self.spool.last_id = 0;
        // The facilitator sees the socket drop; the job processes die with the client (parent-death signal).
        self.drop_socket();
        self.running.clear();
        self.shutdown_at = None;
        self.sent_this_life.clear();
        self.unprotected_sends = 0;
        self.late_before = self.late.len();
        // Handler statuses neither on disk nor answered are lost: they must never have been on disk.
        let on_disk: HashSet<u64> = self
            .spool
            .statuses
            .values()
            .filter_map(|u| u.metadata.extra.get("seq").and_then(Value::as_u64))
            .collect();
        for (seq, (uuid, status)) in self.fed.iter().enumerate() {
            let seq = seq as u64;
            if self.late.contains(&seq)
                || on_disk.contains(&seq)
                || self.refused.contains(&seq)
                || self.stored.contains(&(uuid.clone(), *status))
            {
                continue;
            }
            if self.ever_durable.contains(&seq) {
                return Err(format!(
                    "status seq {seq} ({uuid}/{status}) was on disk and is lost in a crash"
                ));
            }
            self.lost.insert(seq);
        }
        self.recovered = self.spool.statuses.values().map(identity).collect();
        let recovered = Recovered {
            statuses: self
                .spool
                .statuses
                .iter()
                .map(|(id, update)| SpooledStatus {
                    id: *id,
                    update: update.clone(),
                })
                .collect(),
            jobs: self.spool.jobs.values().cloned().collect(),
        };
        self.machine = Machine::new(
            self.config.clone(),
            self.auth.clone(),
            self.signers.clone(),
            self.now,
        );
        let recovery = self.machine.recover(recovered);
        self.interrupted += recovery.interrupted.len() as u64;
        self.resumed += recovery.resume.len() as u64;
        for resume in &recovery.resume {
            let uuid = resume.job.uuid().to_owned();
            // The re-attached task reports again what the lost process may have heard of.
            self.terminal_fed.remove(&uuid);
            self.running.push(uuid);
        }
        // The new process's loop tells its machine, on its first turn, what the handler's signal says.
        if !self.pipeline_up {
            self.step(Input::PipelineAvailable(false))?;
        }
        self.check_invariants()
    }

    fn check_order(&mut self, update: &JobStatusUpdate, seq: Option<u64>) -> Result<(), String> {
        let uuid = &update.uuid;
        let Some(seq) = seq else {
            if update.status == JobStatus::Received {
                self.received_sent.insert(uuid.clone());
            }
            return Ok(());
        };
        if self.dispatched.contains(uuid) && !self.received_sent.contains(uuid) {
            return Err(format!(
                "status seq {seq} of job {uuid} sent before its `received`"
            ));
        }
        if let Some(&last) = self.sent_on_socket.get(uuid)
            && seq <= last
        {
            return Err(format!(
                "job {uuid}: seq {seq} sent after seq {last} on one connection"
            ));
        }
        self.sent_on_socket.insert(uuid.clone(), seq);
        if self.ever_sent.insert(seq) {
            // A job with a status sent unprotected may be re-attached after a crash and report its end again.
            if self.terminal_sent.contains(uuid) && !self.exposed_jobs.contains(uuid) {
                return Err(format!(
                    "job {uuid}: {} (seq {seq}) sent after its terminal status",
                    update.status
                ));
            }
            if update.status.is_terminal() {
                self.terminal_sent.insert(uuid.clone());
            }
            if let Some(&last) = self.first_sent.get(uuid)
                && seq <= last
            {
                return Err(format!("job {uuid}: seq {seq} first sent after seq {last}"));
            }
            self.first_sent.insert(uuid.clone(), seq);
        }
        Ok(())
    }

    fn check_invariants(&self) -> Result<(), String> {
        let m = &self.machine;
        let c = m.counters();
        let config = m.config();
        if m.running_job_count() > config.max_running_jobs {
            return Err(format!(
                "{} jobs running, over max_running_jobs {}",
                m.running_job_count(),
                config.max_running_jobs
            ));
        }
        // Producers wait, and job requests go unanswered, while the outbox is full; only the `horde_failed` of
        // cancelled jobs (at most max_running_jobs) go in past it.
        if m.held_len() > config.outbox_capacity + config.max_running_jobs {
            return Err(format!(
                "outbox holds {}, over capacity {} + max_running_jobs {}",
                m.held_len(),
                config.outbox_capacity,
                config.max_running_jobs
            ));
        }
        let late = self.late.len() - self.late_before;
        if c.statuses_dropped_late != late as u64 {
            return Err(format!(
                "{} statuses dropped as late, {late} fed after their job's terminal status",
                c.statuses_dropped_late,
            ));
        }
        for (uuid, count) in &self.terminals_stored {
            if *count > 1 && !self.exposed_jobs.contains(uuid) {
                return Err(format!(
                    "job {uuid} has {count} terminal statuses stored, and none of its statuses went out unprotected"
                ));
            }
        }
        if c.statuses_accepted != c.statuses_delivered + c.statuses_refused + m.held_len() as u64 {
            return Err(format!(
                "status accounting broken: accepted {} != delivered {} + refused {} + held {}",
                c.statuses_accepted,
                c.statuses_delivered,
                c.statuses_refused,
                m.held_len()
            ));
        }
        // Every handler status is stored at the facilitator, refused by it, or still held by the machine.
        let held: HashSet<u64> = m
            .undelivered()
            .filter_map(|u| u.metadata.extra.get("seq").and_then(Value::as_u64))
            .collect();
        for (seq, (uuid, status)) in self.fed.iter().enumerate() {
            let seq = seq as u64;
            if self.lost.contains(&seq) {
                continue;
            }
            if self.late.contains(&seq) {
                if held.contains(&seq) {
                    return Err(format!(
                        "status seq {seq} ({uuid}/{status}) came after its job's terminal status and is held"
                    ));
                }
                continue;
            }
            if !held.contains(&seq)
                && !self.refused.contains(&seq)
                && !self.stored.contains(&(uuid.clone(), *status))
            {
                return Err(format!("status seq {seq} ({uuid}/{status}) lost"));
            }
        }
        if let Some((deadline, why)) = m.poll_timeout()
            && deadline < self.now
        {
            return Err(format!("next deadline ({why}) is in the past"));
        }
        if let Some(at) = self.shutdown_at {
            let bound = at + m.config().drain_timeout + m.config().close_timeout;
            if self.now >= bound && !m.state().is_stopped() {
                return Err(format!(
                    "not stopped {:?} after Shutdown (bound: drain + close timeout)",
                    self.now - at
                ));
            }
        }
        let socket_in_machine = m.state().has_socket();
        let socket_in_world = self.socket != Socket::None;
        if socket_in_machine != socket_in_world {
            return Err(format!(
                "machine in {:?} but the world's socket is {:?}",
                m.state().kind(),
                self.socket
            ));
        }
        Ok(())
    }

    /// Runs events until the list ends or an invariant breaks (at most `limit` events).
    pub fn run(&mut self, events: &[SimEvent], limit: usize) -> Result<(), String> {
        for (i, event) in events.iter().take(limit).enumerate() {
            self.apply(*event)
                .map_err(|e| format!("after event {i} ({event:?}): {e}"))?;
        }
        Ok(())
    }

    /// After the events: a Shutdown, then only time passing and the facilitator answering. The machine must stop
    /// within drain timeout + close timeout.
    pub fn shut_down_and_settle(&mut self) -> Result<(), String> {
        self.apply(SimEvent::Shutdown)?;
        for _ in 0..10_000 {
            if self.machine.state().is_stopped() {
                return Ok(());
            }
            if !self.spool.queue.is_empty() {
                self.apply(SimEvent::Commit {
                    fail: false,
                    all: true,
                })?;
            } else if self.authed() && !self.server_in_flight.is_empty() {
                self.apply(SimEvent::Ack { not_found: false })?;
            } else {
                self.apply(SimEvent::Wait)?;
            }
        }
        Err("did not stop after Shutdown within 10,000 events".into())
    }

    /// With the spool, after [`Sim::shut_down_and_settle`]: the writer finishes what is queued, the process starts
    /// again from the spool, delivers everything it recovered on a healthy link (re-attached jobs finish), and shuts
    /// down. Then every job the facilitator stored `received` for has exactly one terminal status, unless one of
    /// its statuses went out unprotected, and the spool is empty.
    pub fn restart_and_deliver_everything(&mut self) -> Result<(), String> {
        if !self.config.durable {
            return Ok(());
        }
        while !self.spool.queue.is_empty() {
            self.commit(false, true)?;
        }
        self.crash(false)?;
        for _ in 0..10_000 {
            if self.machine.held_len() == 0
                && self.running.is_empty()
                && self.spool.queue.is_empty()
            {
                break;
            }
            let event = if !self.spool.queue.is_empty() {
                SimEvent::Commit {
                    fail: false,
                    all: true,
                }
            } else if self.socket == Socket::Opening {
                SimEvent::OpenSucceeds
            } else if matches!(
                self.socket,
                Socket::Open {
                    authed: false,
                    sent_anything: true,
                    ..
                }
            ) {
                SimEvent::AuthReply(AuthReply::Success)
            } else if self.authed() && !self.server_in_flight.is_empty() {
                SimEvent::Ack { not_found: false }
            } else if self.authed() && !self.running.is_empty() {
                // A re-attached task ends: its terminal status, then its handler returns.
                let uuid = self.running[0].clone();
                if self.terminal_fed.contains(&uuid) {
                    SimEvent::HandlerFinishes { job: 0 }
                } else {
                    SimEvent::HandlerStatus { job: 0, status: 2 }
                }
            } else {
                SimEvent::Wait
            };
            self.apply(event)?;
        }
        self.shut_down_and_settle()?;
        while !self.spool.queue.is_empty() {
            self.commit(false, true)?;
        }
        let received: HashSet<&String> = self
            .stored
            .iter()
            .filter(|(_, status)| *status == JobStatus::Received)
            .map(|(uuid, _)| uuid)
            .collect();
        for uuid in received {
            let terminals = self.terminals_stored.get(uuid).copied().unwrap_or(0);
            let excused = self.exposed_jobs.contains(uuid)
                || (terminals == 0
                    && (self.refused_jobs.contains(uuid)
                        || self.ended_without_terminal.contains(uuid)));
            if terminals != 1 && !excused {
                return Err(format!(
                    "job {uuid}: `received` stored and {terminals} terminal statuses, none of its statuses unprotected"
                ));
            }
        }
        if self.exposed_jobs.is_empty()
            && (!self.spool.statuses.is_empty() || !self.spool.jobs.is_empty())
        {
            return Err(format!(
                "after a clean run the spool still holds {} statuses and {} jobs",
                self.spool.statuses.len(),
                self.spool.jobs.len()
            ));
        }
        Ok(())
    }

    /// Crashes so far.
    pub fn crashes(&self) -> u64 {
        self.crashes
    }

    /// Failed commits reported to the machine so far.
    pub fn failed_commits(&self) -> u64 {
        self.failed_commits
    }

    /// Recovered jobs reported `horde_failed` (interrupted) and re-attached (resumed), over all restarts.
    pub fn recovered_jobs(&self) -> (u64, u64) {
        (self.interrupted, self.resumed)
    }

    /// Handler statuses lost in crashes (never on disk: produced after the last commit, or released while the
    /// spool was stale).
    pub fn lost_in_crashes(&self) -> usize {
        self.lost.len()
    }

    /// Answered statuses sent again after a restart because their removal had not reached the disk.
    pub fn allowed_resends(&self) -> u64 {
        self.allowed_resends
    }

    /// Jobs one of whose statuses went out before it was on disk.
    pub fn exposed_jobs(&self) -> usize {
        self.exposed_jobs.len()
    }

    /// Batches queued for the model writer.
    pub fn queued_batches(&self) -> usize {
        self.spool.queue.len()
    }

    /// The id of the last `Persist` batch the machine emitted (0: none yet).
    pub fn last_batch_id(&self) -> u64 {
        self.spool.last_id
    }

    /// A cheat report signed by a trusted signer (`true`) or by a stranger.
    pub fn cheat_report(&self, trusted: bool) -> JobCheated {
        self.cheat_reports[usize::from(!trusted)].clone()
    }

    /// Productive connections lost after at least one unproductive attempt (see the backoff invariant).
    pub fn productive_losses_after_failures(&self) -> u64 {
        self.productive_losses_after_failures
    }

    /// Handler statuses fed so far.
    pub fn statuses_fed(&self) -> usize {
        self.fed.len()
    }

    /// Jobs dispatched so far.
    pub fn jobs_dispatched(&self) -> usize {
        self.dispatched.len()
    }

    /// A shared job request for tests: a valid signed job with this uuid.
    pub fn valid_job(&self, uuid: &str) -> Arc<crate::protocol::JobRequest> {
        match decode_server_frame(&self.job_template.replace(TEMPLATE_UUID, uuid), 1 << 20) {
            Ok(ServerMessage::JobRequest(job)) => job,
            other => unreachable!("the signed template decodes as a job request: {other:?}"),
        }
    }
}

/// Longest event list one fuzz input may drive.
pub const FUZZ_MAX_EVENTS: usize = 1_000;

/// The body of the `transitions` fuzz target: a seed and a list of events from the bytes, every invariant checked
/// after every step, then a shutdown that must settle. `Err` names the broken invariant.
pub fn fuzz_transitions(data: &[u8]) -> Result<(), String> {
    let mut input = arbitrary::Unstructured::new(data);
    let seed: u64 = input.arbitrary().unwrap_or(0);
    // The low bit of the seed picks the spool: both worlds get fuzzed.
    let mut sim = if seed & 1 == 1 {
        Sim::durable(seed)
    } else {
        Sim::new(seed)
    };
    let mut events = Vec::new();
    while events.len() < FUZZ_MAX_EVENTS && !input.is_empty() {
        match input.arbitrary::<SimEvent>() {
            Ok(event) => events.push(event),
            Err(_) => break,
        }
    }
    sim.run(&events, FUZZ_MAX_EVENTS)?;
    sim.shut_down_and_settle()?;
    sim.restart_and_deliver_everything()
}
