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
mod config;
mod counters;
mod event;
mod input;
mod outbox;
mod state;

use std::collections::BTreeSet;

use std::sync::Arc;
use std::time::Instant;

use backoff::Backoff;
pub use backoff::BackoffConfig;
pub use config::Config;
pub use counters::Counters;
pub use event::{Event, StopReason};
pub use input::{Action, ActionKind, Incoming, Input, InputKind};
use outbox::Outbox;
pub use state::{ConnectPhase, DrainPhase, Link, State, StateKind};

use crate::protocol::{
    AuthenticationRequest, ClientMessage, DecodeError, HordeFailureReason, JobRejectionReason,
    JobRequest, JobSignatureError, JobStatus, JobStatusUpdate, Response, ServerMessage,
    TrustedSigners, close_code, error_type,
};

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
