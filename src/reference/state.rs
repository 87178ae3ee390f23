//! The facilitator's state and what it does with each client message (docs/PROTOCOL.md 3, 5, 8.2): authentication,
//! the job store with its `(job, status)` uniqueness, the queue of frames waiting for a validator, the fault
//! budgets, and the records.
//!
//! Synchronous and socket-free: a connection task decodes a frame, calls [`State::handle_text`] under the lock and
//! carries out the returned [`Decision`] (write the Response, write queued frames, close or drop). Nothing here may
//! panic on client input.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::config::{
    AfterMessages, AuthRejection, FacilitatorConfig, Faults, JobPlan, Times, Validators,
};
use super::parse_errors;
use super::records::{
    AuthOutcome, AuthRecord, ClientFrame, ConnectionEnd, ConnectionId, ConnectionRecord,
    HeartbeatRecord, JobRecord, MessageRecord, PushKind, PushRecord, Records, RejectedHandshake,
    ResponseRecord, StatusOutcome, StatusUpdateRecord,
};
use super::uuid;
use crate::protocol::keys::{Hotkey, auth_lookup_address, ss58_encode, verify_auth_request};
use crate::protocol::{
    AuthenticationRequest, ClientMessage, JobCheated, JobRequestFields, JobStatus, JobStatusUpdate,
    Response, close_code, error_type, testing,
};

/// What the facilitator and its tasks share: the state behind a lock, and a version bumped on every change so
/// waiters can await conditions.
pub(crate) struct Shared {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    signer: Hotkey,
    pub(crate) close_timeout: Duration,
}

impl Shared {
    pub(crate) fn new(config: &FacilitatorConfig) -> Shared {
        Shared {
            state: Mutex::new(State::new(config)),
            changed: watch::Sender::new(0),
            signer: config.signer.clone(),
            close_timeout: config.close_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something did, the records are still worth reading.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the state and wakes every waiter.
    pub(crate) fn update<R>(&self, change: impl FnOnce(&mut State) -> R) -> R {
        let result = change(&mut self.lock());
        self.changed
            .send_modify(|version| *version = version.wrapping_add(1));
        result
    }

    /// Reads the state without waking anyone.
    pub(crate) fn read<R>(&self, read: impl FnOnce(&State) -> R) -> R {
        read(&self.lock())
    }

    /// A receiver that sees every later change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub(crate) fn signer(&self) -> &Hotkey {
        &self.signer
    }

    /// Creates a minimal job signed by the signer, with the next UUID of the sequence, and pushes it (or queues
    /// it while no validator is authenticated). Returns its UUID.
    pub(crate) fn create_job(&self) -> String {
        let (uuid, fields) = self.sign_next_job();
        self.push_job_request(&fields);
        uuid
    }

    /// Signs the next job of the sequence without pushing it (unless signing is off, see
    /// [`State::set_signing`]).
    fn sign_next_job(&self) -> (String, JobRequestFields) {
        let (uuid, sign) = self.update(|s| (s.next_job_uuid(), s.signing));
        let mut fields = testing::minimal_job(&uuid);
        if sign {
            // Signing takes a while; done outside the lock.
            fields.sign(&self.signer, now_ns());
        }
        (uuid, fields)
    }

    /// Signs the next job and puts it in the stock of a plan that refills at once (the stock pushes it when a job
    /// is to be replaced, see [`State::refill`]).
    pub(crate) fn stock_job(&self) {
        let (uuid, fields) = self.sign_next_job();
        let text = fields.to_wire_text();
        self.update(|s| {
            if let Some(refill) = &mut s.refill {
                refill.stock.push_back((uuid, text));
            }
            s.refill(Instant::now());
        });
    }

    /// Pushes a job request as given (signed or not), registering its UUID as a known job.
    pub(crate) fn push_job_request(&self, fields: &JobRequestFields) {
        let text = fields.to_wire_text();
        self.update(|s| s.add_job(&fields.uuid, text, Instant::now()));
    }

    /// Pushes a cheat report signed by the signer over the validator's payload (so that it verifies).
    pub(crate) fn push_cheated(&self, job_uuid: &str, trusted_job_uuid: &str, details: Value) {
        let mut report = JobCheated {
            signature: None,
            job_uuid: job_uuid.to_owned(),
            trusted_job_uuid: trusted_job_uuid.to_owned(),
            details,
        };
        report.sign(&self.signer, now_ns());
        let outgoing = Outgoing {
            message: Message::text(report.to_wire_text()),
            kind: PushKind::Cheated(job_uuid.to_owned()),
        };
        self.update(|s| s.deliver(outgoing));
    }
}

/// Unix time in nanoseconds, for job signatures (nothing checks it for freshness; 0 if the clock is before 1970).
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A frame written on the facilitator's initiative, with what to record about it.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub message: Message,
    pub kind: PushKind,
}

/// What the state asks of a connection task, in order.
#[derive(Debug)]
pub(crate) enum Command {
    /// Write this frame (if still writing).
    Send(Outgoing),
    /// Send a close frame with this code.
    Close(u16),
    /// Stop reading and writing, keep the socket.
    Stall,
    /// `true`: keep writing pushed frames but hold every Response, in order; `false`: write the held Responses, in
    /// order, and answer at once again.
    HoldResponses(bool),
    /// The facilitator is shutting down: close with 1001 (a stalled connection just drops).
    Shutdown,
}

/// What a connection must do after a client message was handled.
#[derive(Debug)]
pub(crate) struct Decision {
    /// The Response to write, if any.
    pub reply: Option<Response>,
    /// Frames to write after the Response (jobs queued while no validator was authenticated).
    pub then: Vec<Outgoing>,
    /// What happens next.
    pub after: After,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum After {
    Continue,
    /// Send a close frame with this code (after the reply).
    Close(u16),
    /// Drop the connection without a close frame, as the real server's handler crashes (5.4).
    Crash(String),
}

impl Decision {
    fn reply(response: Response) -> Decision {
        Decision {
            reply: Some(response),
            then: Vec::new(),
            after: After::Continue,
        }
    }

    fn nothing() -> Decision {
        Decision {
            reply: None,
            then: Vec::new(),
            after: After::Continue,
        }
    }

    fn crash(reason: String) -> Decision {
        Decision {
            reply: None,
            then: Vec::new(),
            after: After::Crash(reason),
        }
    }
}

/// The faults a connection got when it opened: after how many messages each one hits.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ConnectionFaults {
    pub drop_after: Option<u64>,
    pub stall_after: Option<u64>,
    pub close_after: Option<(u64, u16)>,
}

/// A connection task's handles, while it runs.
struct Live {
    commands: mpsc::UnboundedSender<Command>,
    /// Set to end the connection at once (drop), even in the middle of a write.
    kill: watch::Sender<bool>,
    authenticated: bool,
    /// False once the connection is closing: new frames go elsewhere (or wait in the queue).
    deliverable: bool,
}

/// A known job: where its record is and which statuses are stored (`sent` included).
struct JobEntry {
    record: usize,
    stored: HashSet<JobStatus>,
}

/// Fault settings and how much of each "first K" budget is used.
struct FaultState {
    faults: Faults,
    drops: u32,
    stalls: u32,
    closes: u32,
    auth_rejections: u32,
}

impl FaultState {
    fn new(faults: Faults) -> FaultState {
        FaultState {
            faults,
            drops: 0,
            stalls: 0,
            closes: 0,
            auth_rejections: 0,
        }
    }

    fn for_new_connection(&mut self) -> ConnectionFaults {
        let faults = &self.faults;
        ConnectionFaults {
            drop_after: applies(faults.drop_after, &mut self.drops),
            stall_after: applies(faults.stall_after, &mut self.stalls),
            close_after: faults.close_after.and_then(|close| {
                applies(Some(close.after), &mut self.closes).map(|n| (n, close.code))
            }),
        }
    }

    fn auth_rejection(&mut self) -> Option<AuthRejection> {
        let reject = self.faults.reject_auth?;
        take(reject.attempts, &mut self.auth_rejections).then_some(reject.with)
    }
}

fn applies(after: Option<AfterMessages>, used: &mut u32) -> Option<u64> {
    let after = after?;
    take(after.connections, used).then_some(after.messages)
}

fn take(times: Times, used: &mut u32) -> bool {
    match times {
        Times::Always => true,
        Times::First(limit) if *used < limit => {
            *used += 1;
            true
        }
        Times::First(_) => false,
    }
}

/// The jobs of a plan that refills at once, signed ahead of time.
struct Refill {
    max_open: usize,
    /// Jobs of the plan not pushed yet (`None`: no end).
    remaining: Option<u64>,
    /// Signed and waiting to be pushed: `(uuid, wire text)`, in the order of the UUID sequence.
    stock: VecDeque<(String, String)>,
}

/// Everything mutable.
pub(crate) struct State {
    pub records: Records,
    /// Registered validators' SS58 addresses; `None` accepts any.
    validators: Option<HashSet<String>>,
    faults: FaultState,
    live: HashMap<ConnectionId, Live>,
    jobs: HashMap<u128, JobEntry>,
    open_jobs: usize,
    /// A plan that refills at once: its jobs signed ahead of time.
    refill: Option<Refill>,
    /// Whether the jobs made from now on are signed.
    signing: bool,
    /// Frames created while no validator was authenticated, pushed after the next successful auth.
    pending: VecDeque<Outgoing>,
    uuid_seed: u64,
    next_uuid: u64,
}

impl State {
    fn new(config: &FacilitatorConfig) -> State {
        State {
            records: Records::new(Instant::now()),
            validators: match &config.validators {
                Validators::Any => None,
                Validators::Listed(keys) => Some(keys.iter().map(ss58_encode).collect()),
            },
            faults: FaultState::new(config.faults.clone()),
            live: HashMap::new(),
            jobs: HashMap::new(),
            open_jobs: 0,
            signing: true,
            refill: match config.jobs {
                JobPlan {
                    max_open: Some(max_open),
                    refill_at_once: true,
                    total,
                    ..
                } => Some(Refill {
                    max_open,
                    remaining: total,
                    stock: VecDeque::new(),
                }),
                _ => None,
            },
            pending: VecDeque::new(),
            uuid_seed: config.uuid_seed,
            next_uuid: 0,
        }
    }

    /// Jobs created whose terminal status has not been stored yet.
    pub(super) fn open_jobs(&self) -> usize {
        self.open_jobs
    }

    /// For a plan that refills at once: whether another job should be signed into the stock; `None` once every
    /// job of the plan is signed.
    pub(super) fn stock_wanted(&self) -> Option<bool> {
        let refill = self.refill.as_ref()?;
        let stocked = refill.stock.len() as u64;
        if refill.remaining.is_some_and(|left| stocked >= left) {
            return None;
        }
        Some(refill.stock.len() < refill.max_open)
    }

    /// Whether the jobs made from now on are signed. Unsigned jobs cost nothing to make: a plan that refills at
    /// once then never waits for a signature, even with its stock used up.
    pub(super) fn set_signing(&mut self, signing: bool) {
        self.signing = signing;
    }

    /// Pushes jobs from the stock while fewer than `max_open` are open: at the start, and the moment a job's
    /// terminal status is stored, so the replacement goes out right behind that status's Response. With signing
    /// off and the stock used up, the replacement is made unsigned, at once.
    pub(crate) fn refill(&mut self, now: Instant) {
        loop {
            let Some(refill) = self.refill.as_mut() else {
                return;
            };
            if self.open_jobs >= refill.max_open || refill.remaining == Some(0) {
                return;
            }
            let (uuid, text) = match refill.stock.pop_front() {
                Some(job) => job,
                None if !self.signing => {
                    let uuid = self.next_job_uuid();
                    let text = testing::minimal_job(&uuid).to_wire_text();
                    (uuid, text)
                }
                None => return,
            };
            if let Some(left) = self.refill.as_mut().and_then(|r| r.remaining.as_mut()) {
                *left -= 1;
            }
            self.add_job(&uuid, text, now);
        }
    }

    pub(super) fn faults(&self) -> &Faults {
        &self.faults.faults
    }

    /// Replaces the faults and resets their "first K" budgets.
    pub(super) fn set_faults(&mut self, faults: Faults) {
        self.faults = FaultState::new(faults);
    }

    /// Takes the next UUID of the sequence.
    fn next_job_uuid(&mut self) -> String {
        let uuid = uuid::format(uuid::generated(self.uuid_seed, self.next_uuid));
        self.next_uuid += 1;
        uuid
    }

    pub(super) fn reject_handshake(&mut self, peer: SocketAddr, path: String, now: Instant) {
        log::info!("refused an upgrade from {peer} to {path:?}: the only route is /ws/v0/");
        self.records.rejected_handshakes.push(RejectedHandshake {
            at: now,
            peer,
            path,
        });
    }

    /// Registers a connection whose WebSocket handshake completed.
    pub(super) fn open_connection(
        &mut self,
        peer: SocketAddr,
        runner_version: Option<String>,
        validator_version: Option<String>,
        commands: mpsc::UnboundedSender<Command>,
        kill: watch::Sender<bool>,
        now: Instant,
    ) -> (ConnectionId, ConnectionFaults) {
        let id = ConnectionId(self.records.connections.len() as u64 + 1);
        log::info!(
            "connection {id} from {peer} opened (runner version {}, validator version {})",
            runner_version.as_deref().unwrap_or("not sent"),
            validator_version.as_deref().unwrap_or("not sent"),
        );
        self.records.connections.push(ConnectionRecord {
            id,
            peer,
            runner_version,
            validator_version,
            hotkey: None,
            opened_at: now,
            closed_at: None,
            close_sent: None,
            close_received: None,
            messages: 0,
            last_heartbeat: None,
            stalled: false,
            end: None,
        });
        self.live.insert(
            id,
            Live {
                commands,
                kill,
                authenticated: false,
                deliverable: true,
            },
        );
        (id, self.faults.for_new_connection())
    }

    pub(super) fn end_connection(&mut self, id: ConnectionId, end: ConnectionEnd, now: Instant) {
        self.live.remove(&id);
        if let Some(record) = self.records.connection_mut(id) {
            log::info!(
                "connection {id} ended: {end:?} (close sent {:?}, received {:?}, {} messages)",
                record.close_sent,
                record.close_received,
                record.messages
            );
            record.closed_at = Some(now);
            record.end = Some(end);
        }
    }

    /// The connection will write nothing more: frames go to other connections or wait in the queue.
    pub(super) fn stop_delivering(&mut self, id: ConnectionId) {
        if let Some(live) = self.live.get_mut(&id) {
            live.deliverable = false;
        }
    }

    pub(super) fn mark_stalled(&mut self, id: ConnectionId) {
        log::info!("connection {id} stalled (fault): no more reading or writing");
        if let Some(record) = self.records.connection_mut(id) {
            record.stalled = true;
        }
    }

    pub(super) fn record_close_sent(&mut self, id: ConnectionId, code: u16) {
        if let Some(record) = self.records.connection_mut(id) {
            record.close_sent = Some(code);
        }
    }

    pub(super) fn record_close_received(&mut self, id: ConnectionId, code: u16) {
        if let Some(record) = self.records.connection_mut(id) {
            record.close_received = Some(code);
        }
    }

    pub(super) fn record_response(&mut self, id: ConnectionId, response: Response, now: Instant) {
        self.records.responses.push(ResponseRecord {
            connection: id,
            at: now,
            response,
        });
    }

    pub(super) fn record_push(&mut self, id: ConnectionId, kind: PushKind, now: Instant) {
        if let PushKind::Job(uuid) = &kind {
            let record = match uuid::parse(uuid) {
                Some(key) => self.jobs.get(&key).map(|entry| entry.record),
                None => self.records.jobs.iter().position(|j| j.uuid == *uuid),
            };
            if let Some(job) = record.and_then(|i| self.records.jobs.get_mut(i)) {
                job.pushed_to.push(id);
            }
        }
        self.records.pushes.push(PushRecord {
            connection: id,
            at: now,
            kind,
        });
    }

    /// Sends a command to every running connection.
    pub(super) fn command_all(&mut self, command: impl Fn() -> Command) {
        for live in self.live.values() {
            // A send fails only when the task is ending; it then needs no command.
            let _ = live.commands.send(command());
        }
    }

    /// Ends every running connection at once, without a close frame.
    pub(super) fn kill_all(&mut self) {
        for live in self.live.values() {
            live.kill.send_replace(true);
        }
    }

    /// Registers a job (unless its UUID is already known) and pushes its text.
    fn add_job(&mut self, uuid: &str, text: String, now: Instant) {
        match uuid::parse(uuid) {
            Some(key) if self.jobs.contains_key(&key) => {
                log::warn!("job {uuid} is already known; pushing it again");
            }
            key => {
                let record = self.records.add_job(
                    key,
                    JobRecord {
                        uuid: uuid.to_owned(),
                        created_at: now,
                        pushed_to: Vec::new(),
                        statuses: Vec::new(),
                    },
                );
                if let Some(key) = key {
                    // The facilitator stores `sent` itself when it creates the job (3.3 step 3).
                    let stored = HashSet::from([JobStatus::Sent]);
                    self.jobs.insert(key, JobEntry { record, stored });
                    self.open_jobs += 1;
                } else {
                    log::warn!("job {uuid:?} has no valid UUID: no status update can refer to it");
                }
                log::debug!("job {uuid} created");
            }
        }
        self.deliver(Outgoing {
            message: Message::text(text),
            kind: PushKind::Job(uuid.to_owned()),
        });
    }

    /// Pushes a frame to every authenticated connection, as the real facilitator does; queues it while there is
    /// none.
    pub(super) fn deliver(&mut self, outgoing: Outgoing) {
        let mut delivered = false;
        for live in self
            .live
            .values()
            .filter(|l| l.authenticated && l.deliverable)
        {
            delivered |= live.commands.send(Command::Send(outgoing.clone())).is_ok();
        }
        if !delivered {
            self.pending.push_back(outgoing);
        }
    }

    /// Handles a binary frame: a parse-error Response of type `json_type` (5.3).
    pub(super) fn handle_binary(
        &mut self,
        id: ConnectionId,
        bytes: Vec<u8>,
        now: Instant,
    ) -> Decision {
        self.record_message(id, ClientFrame::Binary(bytes), None, now);
        Decision::reply(parse_errors::binary_frame())
    }

    /// Handles a text frame (3.0): parse with the server's rules, then dispatch.
    pub(super) fn handle_text(&mut self, id: ConnectionId, text: &str, now: Instant) -> Decision {
        let message = match ClientMessage::from_json(text) {
            Ok(message) => message,
            Err(e) => {
                log::debug!("connection {id}: unparseable message: {e}");
                self.record_message(id, ClientFrame::Text(text.to_owned()), None, now);
                return Decision::reply(parse_errors::text_frame(text, &e.to_string()));
            }
        };
        self.record_message(
            id,
            ClientFrame::Text(text.to_owned()),
            Some(message.clone()),
            now,
        );
        let authenticated = self.live.get(&id).is_some_and(|l| l.authenticated);
        match message {
            ClientMessage::Auth(request) => self.authenticate(id, &request, now),
            ClientMessage::Heartbeat if authenticated => {
                self.records.heartbeats.push(HeartbeatRecord {
                    connection: id,
                    at: now,
                });
                if let Some(record) = self.records.connection_mut(id) {
                    record.last_heartbeat = Some(now);
                }
                Decision::nothing()
            }
            ClientMessage::MachineSpecs(_) if authenticated => Decision::nothing(),
            ClientMessage::StatusUpdate(update) => {
                // The typed update turns a null metadata into the empty one; the crash rule needs the raw value.
                let metadata = serde_json::from_str::<Value>(text)
                    .ok()
                    .and_then(|mut v| v.get_mut("metadata").map(Value::take))
                    .unwrap_or(Value::Null);
                self.status_update(id, authenticated, &update, metadata, now)
            }
            ClientMessage::Heartbeat | ClientMessage::MachineSpecs(_) => {
                Decision::reply(not_authenticated())
            }
        }
    }

    fn record_message(
        &mut self,
        id: ConnectionId,
        frame: ClientFrame,
        message: Option<ClientMessage>,
        now: Instant,
    ) {
        if let Some(record) = self.records.connection_mut(id) {
            record.messages += 1;
        }
        self.records.messages.push(MessageRecord {
            connection: id,
            at: now,
            frame,
            message,
        });
    }

    /// Section 8.2, in the server's order: already authenticated; lookup address (crash if malformed); registered
    /// validator; signature (crash if malformed). A `reject_auth` fault applies to attempts that pass all of these.
    fn authenticate(
        &mut self,
        id: ConnectionId,
        request: &AuthenticationRequest,
        now: Instant,
    ) -> Decision {
        let (outcome, decision) = self.auth_outcome(id, request);
        match &outcome {
            AuthOutcome::Authenticated(ss58) => {
                log::info!("connection {id} authenticated as {ss58}");
            }
            other => log::info!("connection {id}: authentication refused: {other:?}"),
        }
        self.records.auth_attempts.push(AuthRecord {
            connection: id,
            at: now,
            public_key: request.public_key.clone(),
            outcome: outcome.clone(),
        });
        if let AuthOutcome::Authenticated(ss58) = outcome
            && let Some(record) = self.records.connection_mut(id)
        {
            record.hotkey = Some(ss58);
            // The real server sets the "last heartbeat" at authentication (section 6).
            record.last_heartbeat = Some(now);
        }
        decision
    }

    fn auth_outcome(
        &mut self,
        id: ConnectionId,
        request: &AuthenticationRequest,
    ) -> (AuthOutcome, Decision) {
        if self.live.get(&id).is_some_and(|l| l.authenticated) {
            return (
                AuthOutcome::AlreadyAuthenticated,
                Decision::reply(Response::error(
                    error_type::ALREADY_AUTHENTICATED,
                    "Already authenticated",
                    "You are already authenticated, please do not send authentication request again.",
                )),
            );
        }
        let address = match auth_lookup_address(request) {
            Ok(address) => address,
            Err(e) => return crashed(format!("auth request: {e}")),
        };
        if self
            .validators
            .as_ref()
            .is_some_and(|v| !v.contains(&address))
        {
            return validator_not_found(&address, false);
        }
        match verify_auth_request(request) {
            Ok(_) => {}
            Err(e) if e.crashes_real_server() => return crashed(format!("auth request: {e}")),
            Err(_) => return signature_invalid(false),
        }
        match self.faults.auth_rejection() {
            Some(AuthRejection::ValidatorNotFound) => return validator_not_found(&address, true),
            Some(AuthRejection::SignatureInvalid) => return signature_invalid(true),
            None => {}
        }
        if let Some(live) = self.live.get_mut(&id) {
            live.authenticated = true;
        }
        // Frames created while no validator was connected go out right after the success Response.
        let then = self.pending.drain(..).collect();
        (
            AuthOutcome::Authenticated(address),
            Decision {
                reply: Some(Response::success()),
                then,
                after: After::Continue,
            },
        )
    }

    /// Section 3.3's server-side handling.
    fn status_update(
        &mut self,
        id: ConnectionId,
        authenticated: bool,
        update: &JobStatusUpdate,
        metadata: Value,
        now: Instant,
    ) -> Decision {
        let (outcome, decision) =
            self.status_outcome(authenticated, update, metadata.is_null(), now);
        match outcome {
            StatusOutcome::Stored | StatusOutcome::StoredThenCrashed => log::info!(
                "job {}: status {} stored (connection {id})",
                update.uuid,
                update.status
            ),
            other => log::info!(
                "job {}: status {} not stored: {other:?} (connection {id})",
                update.uuid,
                update.status
            ),
        }
        self.records.status_updates.push(StatusUpdateRecord {
            connection: id,
            at: now,
            uuid: update.uuid.clone(),
            status: update.status,
            metadata,
            outcome,
        });
        decision
    }

    fn status_outcome(
        &mut self,
        authenticated: bool,
        update: &JobStatusUpdate,
        metadata_is_null: bool,
        now: Instant,
    ) -> (StatusOutcome, Decision) {
        if !authenticated {
            return (
                StatusOutcome::NotAuthenticated,
                Decision::reply(not_authenticated()),
            );
        }
        let Some(key) = uuid::parse(&update.uuid) else {
            return (
                StatusOutcome::InvalidUuid,
                Decision::crash(format!(
                    "status update: uuid {:?} is not a UUID",
                    update.uuid
                )),
            );
        };
        let Some(entry) = self.jobs.get_mut(&key) else {
            return (
                StatusOutcome::NotFound,
                Decision::reply(Response::error(
                    error_type::JOB_NOT_FOUND,
                    "Job not found",
                    "Job with this UUID was not found",
                )),
            );
        };
        if !entry.stored.insert(update.status) {
            return (
                StatusOutcome::IntegrityError,
                Decision::reply(Response::error(
                    error_type::INTEGRITY_ERROR,
                    "Integrity error",
                    "Probably you are trying to set the same status twice?",
                )),
            );
        }
        if self.records.add_status(entry.record, update.status) {
            self.open_jobs = self.open_jobs.saturating_sub(1);
            self.refill(now);
        }
        if metadata_is_null
            && matches!(
                update.status,
                JobStatus::Completed | JobStatus::StreamingReady
            )
        {
            return (
                StatusOutcome::StoredThenCrashed,
                Decision::crash(format!(
                    "status update: {} with null metadata (stored, then the handler crashes)",
                    update.status
                )),
            );
        }
        (StatusOutcome::Stored, Decision::reply(Response::success()))
    }
}

fn not_authenticated() -> Response {
    Response::error(
        error_type::NOT_AUTHENTICATED,
        "Not authenticated",
        "Please send authentication request first",
    )
}

fn crashed(reason: String) -> (AuthOutcome, Decision) {
    (
        AuthOutcome::Crashed(reason.clone()),
        Decision::crash(reason),
    )
}

fn validator_not_found(address: &str, injected: bool) -> (AuthOutcome, Decision) {
    let help = format!(
        "Validator with hotkey {address} was not found. If you are sure that the key belongs to an active \
         validator, please wait at least 0:05:00 for the list of active validators to be updated and then retry."
    );
    (
        AuthOutcome::ValidatorNotFound { injected },
        Decision {
            reply: Some(Response::error(
                error_type::VALIDATOR_NOT_FOUND,
                "Validator not found",
                &help,
            )),
            then: Vec::new(),
            after: After::Close(close_code::VALIDATOR_NOT_FOUND),
        },
    )
}

fn signature_invalid(injected: bool) -> (AuthOutcome, Decision) {
    (
        AuthOutcome::SignatureInvalid { injected },
        Decision {
            reply: Some(Response::error(
                error_type::SIGNATURE_INVALID,
                "Invalid signature",
                "The signature provided does not match the public key",
            )),
            then: Vec::new(),
            after: After::Close(close_code::SIGNATURE_INVALID),
        },
    )
}
