//! The pure state machine: every lifecycle decision of the client.
//!
//! `Machine::step(input, now)` takes one [`Input`] and the current time and returns the [`Action`]s for the driver
//! to carry out; [`Machine::poll_timeout`] says when the machine next needs a [`Input::Tick`], and for which
//! [`Timer`]. The machine owns the outbox, the in-flight FIFO, the set of running jobs, the reconnect backoff, the
//! signature checks and the counters.
//!
//! It must never do I/O, read the clock, spawn, or sleep: that is what makes it testable on simulated time,
//! fuzzable and embeddable. Every change of state goes through one function (`Machine::transition`), which emits one
//! [`Event::StateChanged`]. `states/transitions.json` is the table of what each (state, input) pair may do, and the
//! tests hold this code to it.
//!
//! With [`Config::durable`], the machine also decides what the spool holds: each step's changes (statuses of
//! accepted jobs put and answered, jobs accepted, attached and finished) become at most one [`Action::Persist`] at
//! the end of the step, statuses wait for their batch's [`Input::Persisted`] before they are sent, and
//! [`Machine::recover`] turns what a previous process left in the spool into the outbox and jobs of this one.

mod backoff;
mod config;
mod counters;
mod durability;
mod event;
mod input;
mod outbox;
mod state;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use backoff::Backoff;
pub use backoff::BackoffConfig;
pub use config::{Config, ConfigError, MAX_DURATION};
pub use counters::Counters;
use durability::Durability;
#[cfg(feature = "test-support")]
pub use durability::SpoolView;
pub use durability::{SPOOL_RETRY_BASE, SPOOL_RETRY_CAP};
pub use event::{ConnectFailure, Event, Ignored, LinkLoss, Reason, StopCause};
pub use input::{Action, ActionKind, Incoming, Input, InputKind};
use outbox::Outbox;
pub use state::{ConnectPhase, DrainPhase, Link, State, StateKind, StopReason, Timer};

use crate::protocol::JobRequest as Job;
use crate::protocol::{
    AuthenticationRequest, ClientMessage, DecodeError, HordeFailureReason, JobRejectionReason,
    JobRequest, JobSignatureError, JobStatus, JobStatusUpdate, Response, ServerMessage,
    TrustedSigners, close_code, error_type,
};
use crate::spool::{HandlerRecord, JobRecord, Recovered, SpooledStatus};

/// The state machine.
#[derive(Debug, Clone)]
pub struct Machine {
    config: Config,
    auth: AuthenticationRequest,
    signers: TrustedSigners,
    state: State,
    outbox: Outbox,
    /// Jobs dispatched and not yet finished, each with whether its terminal status was reported (a job reports
    /// at most one; anything after it is dropped and counted).
    jobs: BTreeMap<String, bool>,
    backoff: Backoff,
    counters: Counters,
    /// The spool bookkeeping (inactive without `Config::durable`).
    spool: Durability,
    /// Whether the job handler's pipeline takes jobs (`Input::PipelineAvailable`; true until told otherwise).
    pipeline_available: bool,
    /// Job requests refused because the pipeline was unavailable, since it last became so.
    refused_while_unavailable: u64,
}

/// What [`Machine::recover`] found in the spool and what the driver must do about it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovery {
    /// Unacknowledged statuses put back at the front of the outbox, in their original order.
    pub statuses: usize,
    /// Jobs the spool recorded as accepted and not finished.
    pub jobs: usize,
    /// Jobs whose handler cannot be re-attached: each is reported `horde_failed` after its spooled statuses.
    pub interrupted: Vec<String>,
    /// Jobs whose work outlives the client (a Celery task): kept running; the driver re-attaches each to its
    /// handler, or reports it failed (a `horde_failed` status, then `JobFinished`) when it cannot.
    pub resume: Vec<Resume>,
    /// `exec:` process groups the spool recorded: the driver kills each one still alive whose leader has the
    /// recorded start time (a reused pid must never be killed).
    pub kill: Vec<ProcessGroupRecord>,
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "recovered {} unacknowledged status update(s) and {} job(s) from the spool",
            self.statuses, self.jobs
        )?;
        if self.jobs > 0 {
            write!(
                f,
                ": {} reported horde_failed (the client restarted while they ran), {} to re-attach, {} process \
                 group(s) to check",
                self.interrupted.len(),
                self.resume.len(),
                self.kill.len()
            )?;
        }
        Ok(())
    }
}

/// A recovered job kept running: what the driver needs to re-attach it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    /// The job request, decoded from the text spooled when it was accepted.
    pub job: Arc<Job>,
    /// Where its work runs.
    pub handler: HandlerRecord,
    /// When it was accepted, milliseconds since the Unix epoch (0 if unknown).
    pub accepted_at_unix_ms: u64,
}

/// An `exec:` job's process group, as spooled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessGroupRecord {
    /// The process group id (its leader's pid).
    pub pgid: i32,
    /// The leader's start time (field 22 of `/proc/<pid>/stat`).
    pub start_time: u64,
}

/// The message of the `horde_failed` a job gets when the client restarted while it ran.
pub const RESTARTED_WHILE_RUNNING: &str =
    "the validator's facilitator client restarted while the job ran; its outcome is unknown";

impl Machine {
    /// A machine in Disconnected whose first connection attempt is due at `now`.
    ///
    /// `auth` is the authentication request sent on every new connection; `signers` decides which job requests
    /// are accepted. `config` should have passed [`Config::validate`]; the machine itself never panics on a bad
    /// one, but a peer timeout under the heartbeat interval, say, makes a healthy peer look dead.
    pub fn new(
        config: Config,
        auth: AuthenticationRequest,
        signers: TrustedSigners,
        now: Instant,
    ) -> Self {
        Machine {
            spool: Durability::new(config.durable),
            outbox: Outbox::new(config.outbox_capacity),
            backoff: Backoff::new(config.backoff, config.jitter_seed),
            config,
            auth,
            signers,
            state: State::Disconnected { retry_at: now },
            jobs: BTreeMap::new(),
            counters: Counters::default(),
            pipeline_available: true,
            refused_while_unavailable: 0,
        }
    }

    /// Whether the job handler's pipeline takes jobs, as last told ([`Input::PipelineAvailable`]).
    pub fn pipeline_available(&self) -> bool {
        self.pipeline_available
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
        self.jobs.keys().map(String::as_str)
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

    /// Whether the spool file lacks changes memory holds (a commit failed and no full snapshot has succeeded
    /// since), and since when. `None` while up to date, and without the spool.
    pub fn spool_stale_since(&self) -> Option<Instant> {
        self.spool.stale_since()
    }

    /// What the spool holds as far as the machine knows: statuses of accepted jobs not yet answered (spooled or
    /// about to be), and job records. `(0, 0)` without the spool.
    pub fn spooled_len(&self) -> (usize, usize) {
        if !self.spool.enabled() {
            return (0, 0);
        }
        let statuses = self.outbox.iter().filter(|p| p.spool_id.is_some()).count();
        (statuses, self.spool.job_count())
    }

    /// Takes what a previous process left in the spool, before the first [`Machine::step`]: its statuses go to the
    /// front of the outbox in id order, already durable and counted as sent once (a `job.integrity_error` answer
    /// then means the facilitator stored them); new status ids continue after the largest. Each recovered job
    /// whose spooled statuses include no terminal one either is kept running, when its record says its work
    /// outlives the client (a Celery task: see [`Recovery::resume`]), or gets `horde_failed` (`reported_by:
    /// validator`, `generic_error`, [`RESTARTED_WHILE_RUNNING`]) after its spooled statuses. The `horde_failed`
    /// reports are persisted with the first step's batch.
    ///
    /// Called on a machine that has already stepped, it still replays the statuses, behind what the outbox holds.
    pub fn recover(&mut self, recovered: Recovered) -> Recovery {
        let Recovered { mut statuses, jobs } = recovered;
        statuses.sort_by_key(|s| s.id);
        let mut report = Recovery {
            statuses: statuses.len(),
            jobs: jobs.len(),
            ..Recovery::default()
        };
        let ended: std::collections::HashSet<String> = statuses
            .iter()
            .filter(|s| s.update.status.is_terminal())
            .map(|s| s.update.uuid.clone())
            .collect();
        if let Some(max) = statuses.iter().map(|s| s.id).max() {
            self.spool.continue_ids_after(max);
        }
        self.counters.statuses_recovered += statuses.len() as u64;
        self.counters.statuses_accepted += statuses.len() as u64;
        for SpooledStatus { id, update } in statuses {
            self.outbox.push_recovered(update, id);
        }
        self.counters.jobs_recovered += jobs.len() as u64;
        for record in jobs {
            if let Some(HandlerRecord::Exec { pgid, start_time }) = record.handler {
                report.kill.push(ProcessGroupRecord { pgid, start_time });
            }
            let uuid = record.uuid.clone();
            let resumable = matches!(record.handler, Some(HandlerRecord::Celery { .. }));
            let resume = match (&record.handler, resumable && !ended.contains(&uuid)) {
                (Some(handler), true) => match Job::parse(&record.request) {
                    Ok(job) if job.uuid() == uuid => Some(Resume {
                        job: Arc::new(job),
                        handler: handler.clone(),
                        accepted_at_unix_ms: record.accepted_at_unix_ms,
                    }),
                    // A request that no longer parses cannot be re-attached: reported like any interrupted job.
                    _ => None,
                },
                _ => None,
            };
            self.spool.recovered_job(record);
            if let Some(resume) = resume {
                self.counters.jobs_resumed += 1;
                self.jobs.insert(uuid, false);
                report.resume.push(resume);
            } else if !ended.contains(&uuid) {
                self.counters.jobs_interrupted += 1;
                self.enqueue(JobStatusUpdate::horde_failed(
                    uuid.clone(),
                    HordeFailureReason::GenericError,
                    RESTARTED_WHILE_RUNNING,
                    None,
                ));
                report.interrupted.push(uuid);
            }
            // A job whose terminal status is among the spooled ones has ended: its record goes when that status is
            // answered.
        }
        report
    }

    /// Test support: the reconnect backoff's failed attempts since its last reset, which the next delay grows
    /// from. For the model checker's projection of the machine (`tests/model_check/`): two machines whose
    /// backoffs differ here retry after different delays.
    #[cfg(feature = "test-support")]
    pub fn backoff_failures(&self) -> u32 {
        self.backoff.failures()
    }

    /// Test support: for each held status update, in the order of [`Machine::undelivered`], how many times it
    /// was sent and whether it belongs to an accepted job (rather than answering a refused job request). For the
    /// model checker's projection: a re-send answered `job.integrity_error` counts as delivered, a first send
    /// as refused, and a drain waits only for statuses of accepted jobs.
    #[cfg(feature = "test-support")]
    pub fn undelivered_details(&self) -> impl Iterator<Item = (u32, bool)> + '_ {
        self.outbox.iter().map(|p| (p.sends, p.of_accepted_job))
    }

    /// Test support: for each held status update, in the order of [`Machine::undelivered`], its spool id and the
    /// batch that must be durable before it may be sent. For the model checker's projection of a durable machine.
    #[cfg(feature = "test-support")]
    pub fn undelivered_spool(&self) -> impl Iterator<Item = (Option<u64>, Option<u64>)> + '_ {
        self.outbox.iter().map(|p| (p.spool_id, p.held_by))
    }

    /// Test support: the spool bookkeeping (see [`SpoolView`]). For the model checker's projection of a durable
    /// machine.
    #[cfg(feature = "test-support")]
    pub fn spool_view(&self) -> SpoolView {
        self.spool.view()
    }

    /// Test support: the running jobs, each with whether its terminal status was reported. For the model
    /// checker's projection: a job that reported it gets no `horde_failed` when cancelled, and its later
    /// statuses are dropped.
    #[cfg(feature = "test-support")]
    pub fn running_jobs_terminal(&self) -> impl Iterator<Item = (&str, bool)> {
        self.jobs
            .iter()
            .map(|(uuid, terminal)| (uuid.as_str(), *terminal))
    }

    /// When the machine next needs a [`Input::Tick`], and for which timer. `None` once stopped.
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        let state = self.state_timeout();
        match (state, self.spool.retry_deadline()) {
            (None, _) => None,
            // On a tie the state's own deadline goes first.
            (Some((at, _)), Some(retry)) if retry < at => Some((retry, Timer::SpoolRetry)),
            (state, _) => state,
        }
    }

    fn state_timeout(&self) -> Option<(Instant, Timer)> {
        match &self.state {
            State::Disconnected { retry_at } => Some((*retry_at, Timer::Reconnect)),
            State::Connecting { deadline, .. } => Some((*deadline, Timer::ConnectTimeout)),
            State::Running { link, .. } => Some(link.next_deadline()),
            // Close sent: nothing else may be written, so no heartbeat; the close timeout bounds the wait.
            State::Draining {
                phase: phase @ DrainPhase::Closing { .. },
                ..
            } => Some(phase.deadline()),
            State::Draining { link, phase } => {
                let (phase_at, phase_timer) = phase.deadline();
                let (link_at, link_timer) = link.next_deadline();
                // On a tie the drain's own deadline goes first.
                Some(if phase_at <= link_at {
                    (phase_at, phase_timer)
                } else {
                    (link_at, link_timer)
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
        // Stopped is absorbing: nothing it is told produces an action (late statuses are still counted).
        let was_stopped = self.state.is_stopped();
        self.expire(now, &mut out);
        match input {
            Input::Tick => {}
            Input::SocketOpened => self.on_socket_opened(&mut out),
            Input::SocketFailed(why) => self.on_socket_lost(now, SocketEnd::Failed(why), &mut out),
            Input::SocketClosed(code) => {
                self.on_socket_lost(now, SocketEnd::Closed(code), &mut out)
            }
            Input::Frame(message) => self.on_frame(message, None, now, &mut out),
            Input::Undecodable(error) => self.on_undecodable(error, now, &mut out),
            Input::Pong => self.on_pong(now),
            Input::Frames(frames) => self.on_frames(frames, now, &mut out),
            Input::Status(update) => self.on_status(update, &mut out),
            Input::JobFinished(uuid) => {
                // A job that ends without a terminal status has nothing more to report: its record goes (its
                // statuses stay spooled until answered). One with a terminal status keeps its record until that
                // status is answered.
                if self.jobs.remove(&uuid) == Some(false) {
                    self.spool.forget_job(&uuid);
                }
                self.check_drained(now, &mut out);
            }
            Input::JobAttached { uuid, handler } => {
                if !was_stopped {
                    self.spool.attach(&uuid, handler);
                }
            }
            Input::Persisted { up_to, result } => {
                if !was_stopped {
                    self.on_persisted(up_to, result, now, &mut out);
                }
            }
            Input::PipelineAvailable(available) => {
                if !was_stopped {
                    self.on_pipeline(available, &mut out);
                }
            }
            Input::Shutdown => self.on_shutdown(now, &mut out),
            Input::ForceStop => {
                if !self.state.is_stopped() {
                    if self.state.has_socket() {
                        out.push(Action::Abort);
                    }
                    self.cancel_jobs(&mut out);
                    self.stop(StopReason::Forced, StopCause::SecondSignal, &mut out);
                }
            }
        }
        if !was_stopped {
            self.flush_spool(now, &mut out);
        }
        out
    }

    // ---- the spool -------------------------------------------------------------------------------------------

    /// The end of every step: this step's changes (or, while stale, a full snapshot when one is due) become one
    /// `Persist`.
    fn flush_spool(&mut self, now: Instant, out: &mut Vec<Action>) {
        let outbox = &self.outbox;
        let batch = self.spool.take_batch(now, || {
            outbox
                .iter()
                .filter_map(|p| {
                    p.spool_id.map(|id| SpooledStatus {
                        id,
                        update: p.update.clone(),
                    })
                })
                .collect()
        });
        if let Some((id, batch)) = batch {
            self.counters.spool_batches += 1;
            out.push(Action::Persist { id, batch });
        }
    }

    /// The driver committed (or failed to commit) every batch up to `up_to`: their statuses may go. A failure
    /// releases them too (availability over durability: memory still holds everything), marks the spool stale and
    /// makes the next batch a full snapshot.
    fn on_persisted(
        &mut self,
        up_to: u64,
        result: Result<(), String>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if !self.spool.enabled() {
            return;
        }
        let before = self.spool.released_up_to();
        let released = match &result {
            Ok(()) => 0,
            Err(_) => self.outbox.held_by_batches(before, up_to),
        };
        match (self.spool.persisted(up_to, result.is_ok(), now), result) {
            (Ok(Some(stale_for)), _) => out.push(Action::Emit(Event::SpoolUpToDate { stale_for })),
            (Ok(None), _) => {}
            (Err(failure), Err(error)) => {
                self.counters.spool_errors += 1;
                self.counters.statuses_unspooled += released as u64;
                out.push(Action::Emit(Event::SpoolCommitFailed {
                    error,
                    released,
                    retry_in: failure.retry_in,
                }));
            }
            (Err(_), Ok(())) => unreachable!("persisted() fails only when told the commit failed"),
        }
        self.pump(out);
    }

    // ---- deadlines -------------------------------------------------------------------------------------------

    fn expire(&mut self, now: Instant, out: &mut Vec<Action>) {
        // Each pass handles one expired deadline; a handled deadline always moves forward or changes the state,
        // so this ends. The bound is a guard against a bug turning into a hang.
        for _ in 0..8 {
            match self.poll_timeout() {
                Some((deadline, timer)) if deadline <= now => self.on_deadline(timer, now, out),
                _ => return,
            }
        }
    }

    fn on_deadline(&mut self, timer: Timer, now: Instant, out: &mut Vec<Action>) {
        match (timer, self.state.clone()) {
            // The spool is stale and a snapshot is due: write it now (it moves the deadline: a snapshot is then
            // under way).
            (Timer::SpoolRetry, _) => self.flush_spool(now, out),
            (Timer::Reconnect, State::Disconnected { .. }) => {
                self.counters.connects += 1;
                out.push(Action::Open);
                self.transition(
                    State::Connecting {
                        phase: ConnectPhase::Opening,
                        deadline: now + self.config.connect_timeout,
                    },
                    Reason::ReconnectDelayOver,
                    out,
                );
            }
            (Timer::ConnectTimeout, State::Connecting { phase, .. }) => {
                out.push(Action::Abort);
                self.connect_failed(now, ConnectFailure::TimedOut(phase), false, out);
            }
            (Timer::Heartbeat, State::Running { .. } | State::Draining { .. }) => {
                self.heartbeat(now, out)
            }
            (
                Timer::PeerSilent | Timer::PingUnanswered,
                State::Running {
                    since, progress, ..
                },
            ) => {
                out.push(Action::Abort);
                let loss = self.peer_dead(timer);
                self.connection_lost(now, since, progress, loss, false, out);
            }
            (Timer::PeerSilent | Timer::PingUnanswered, State::Draining { .. }) => {
                out.push(Action::Abort);
                self.cancel_jobs(out);
                let loss = self.peer_dead(timer);
                self.stop(
                    StopReason::ConnectionLostWhileDraining,
                    StopCause::LinkLostWhileDraining(loss),
                    out,
                );
            }
            (
                Timer::Drain,
                State::Draining {
                    link,
                    phase: DrainPhase::Flushing { deadline },
                },
            ) => {
                // Time is up for running jobs: kill them and report each as horde_failed, best effort within the
                // close timeout (half of it for the reports' Responses, the rest for the close handshake).
                // Measured from the drain deadline, not from `now`: a late Tick must not extend the bound.
                let close_by = deadline + self.config.close_timeout;
                let reports_by = deadline + self.config.close_timeout / 2;
                let left_before = self.counters.jobs_left_running;
                let jobs_cancelled = self.cancel_jobs(out);
                let jobs_left_running = (self.counters.jobs_left_running - left_before) as usize;
                self.transition(
                    State::Draining {
                        link,
                        phase: DrainPhase::Cancelling {
                            deadline: reports_by,
                            close_by,
                        },
                    },
                    Reason::DrainDeadlinePassed {
                        jobs_cancelled,
                        jobs_left_running,
                        unacknowledged: self.outbox.len(),
                    },
                    out,
                );
                self.pump(out);
                self.check_drained(now, out);
            }
            (
                Timer::CancelReports,
                State::Draining {
                    phase: DrainPhase::Cancelling { close_by, .. },
                    ..
                },
            ) => self.begin_close(close_by, out),
            (Timer::Close, State::Draining { .. }) => {
                out.push(Action::Abort);
                let reason = self.drained_reason();
                self.stop(reason, StopCause::NoCloseReply, out);
            }
            // `poll_timeout` names only the timers of the current state; anything else is a bug, and doing
            // nothing would spin the driver on a deadline in the past.
            (timer, state) => unreachable!("timer {timer} fired in {:?}", state.kind()),
        }
    }

    fn peer_dead(&self, timer: Timer) -> LinkLoss {
        match timer {
            Timer::PingUnanswered => LinkLoss::PingUnanswered(self.config.peer_timeout),
            _ => LinkLoss::PeerSilent(self.config.peer_timeout),
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

    // ---- socket events ---------------------------------------------------------------------------------------

    fn on_socket_opened(&mut self, out: &mut Vec<Action>) {
        if let State::Connecting {
            phase: ConnectPhase::Opening,
            deadline,
        } = self.state
        {
            out.push(Action::Send(ClientMessage::Auth(self.auth.clone())));
            self.transition(
                State::Connecting {
                    phase: ConnectPhase::Authenticating,
                    deadline,
                },
                Reason::SocketOpened,
                out,
            );
        }
        // Anywhere else the event is stale (from a socket already dropped): ignored.
    }

    fn on_socket_lost(&mut self, now: Instant, end: SocketEnd, out: &mut Vec<Action>) {
        let code = match end {
            SocketEnd::Closed(code) => code,
            SocketEnd::Failed(_) => None,
        };
        match self.state.clone() {
            State::Connecting { .. } if code == Some(close_code::SIGNATURE_INVALID) => {
                self.counters.auth_failures += 1;
                self.cancel_jobs(out);
                self.stop(
                    StopReason::AuthRejected,
                    StopCause::ClosedSignatureInvalid,
                    out,
                );
            }
            State::Connecting { .. } => {
                let at_cap = code == Some(close_code::VALIDATOR_NOT_FOUND);
                let cause = match end {
                    SocketEnd::Failed(why) => ConnectFailure::Socket(why),
                    SocketEnd::Closed(code) => ConnectFailure::PeerClosed(code),
                };
                self.connect_failed(now, cause, at_cap, out);
            }
            State::Running {
                since, progress, ..
            } => {
                let at_cap = code == Some(close_code::VALIDATOR_NOT_FOUND);
                self.connection_lost(now, since, progress, end.into_loss(), at_cap, out);
            }
            State::Draining {
                phase: DrainPhase::Closing { .. },
                ..
            } => {
                let reason = self.drained_reason();
                self.stop(reason, StopCause::CloseHandshakeCompleted, out);
            }
            State::Draining { .. } => {
                self.cancel_jobs(out);
                self.stop(
                    StopReason::ConnectionLostWhileDraining,
                    StopCause::LinkLostWhileDraining(end.into_loss()),
                    out,
                );
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
                    if !self.jobs.contains_key(job.uuid()) =>
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
        match self.state {
            State::Connecting {
                phase: ConnectPhase::Authenticating,
                ..
            } => match message {
                ServerMessage::Response(response) => self.on_auth_response(response, now, out),
                other => {
                    // The reference validator requires the first frame to be a success Response.
                    out.push(Action::Abort);
                    let cause = ConnectFailure::UnexpectedFrame(describe(&other));
                    self.connect_failed(now, cause, false, out);
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
                        // Only a report the validator itself would act on goes on to its pipeline.
                        if trusted {
                            self.counters.cheat_reports_trusted += 1;
                            out.push(Action::ForwardCheatReport(report));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn on_undecodable(&mut self, error: DecodeError, now: Instant, out: &mut Vec<Action>) {
        match self.state {
            State::Connecting {
                phase: ConnectPhase::Authenticating,
                ..
            } => {
                self.count_undecodable(&error);
                out.push(Action::Abort);
                self.connect_failed(now, ConnectFailure::UndecodableFrame(error), false, out);
            }
            State::Running { .. } | State::Draining { .. } => {
                self.heard_from_peer(now);
                self.count_undecodable(&error);
                match error.job_uuid() {
                    // A job request we can answer: refuse it rather than leave the facilitator waiting.
                    Some(uuid) if !self.jobs.contains_key(uuid) && !self.outbox.has_room() => {
                        self.unanswered(uuid.to_owned(), out);
                    }
                    Some(uuid) if !self.jobs.contains_key(uuid) => {
                        self.counters.jobs_rejected_invalid += 1;
                        self.reject(
                            uuid.to_owned(),
                            JobRejectionReason::Unknown,
                            format!("Invalid job request: {error}"),
                            out,
                        );
                    }
                    _ => out.push(Action::Emit(Event::Ignored(Ignored::Undecodable(error)))),
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
            self.transition(
                State::Running {
                    since: now,
                    link,
                    progress: false,
                },
                Reason::Authenticated {
                    to_send: self.outbox.len(),
                },
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
            self.stop(StopReason::AuthRejected, StopCause::SignatureInvalid, out);
        } else {
            out.push(Action::Abort);
            let at_cap = response.has_error(error_type::VALIDATOR_NOT_FOUND);
            let error = response
                .first_error_type()
                .unwrap_or("error without a type")
                .to_owned();
            self.connect_failed(now, ConnectFailure::AuthError(error), at_cap, out);
        }
    }

    fn on_response(&mut self, response: Response, now: Instant, out: &mut Vec<Action>) {
        let Some(pending) = self.outbox.acknowledge() else {
            self.counters.unexpected_responses += 1;
            out.push(Action::Emit(Event::Ignored(Ignored::UnexpectedResponse {
                summary: response_summary(&response),
            })));
            return;
        };
        self.made_progress();
        let already_stored = response.has_error(error_type::INTEGRITY_ERROR) && pending.sends > 1;
        // Any answer ends a status's life, a refusal too (never retried): forget it, and its job once the job's
        // terminal status is answered.
        if let Some(id) = pending.spool_id {
            self.spool.forget_status(id);
            if pending.update.status.is_terminal() {
                self.spool.forget_job(&pending.update.uuid);
            }
        }
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
        if self.jobs.contains_key(&uuid) {
            self.counters.jobs_duplicate += 1;
            out.push(Action::Emit(Event::Ignored(Ignored::DuplicateJob { uuid })));
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
        // After the signature check, as the validator verifies before it routes: an untrusted request hears about
        // its signature. `busy` because the refusal is transient and says nothing about the job: the facilitator
        // may offer it elsewhere or again (`no_miner_for_job` would claim a routing that never happened). Nothing
        // is queued for later: the facilitator decides what to do with a refused job.
        if !self.pipeline_available {
            self.counters.jobs_rejected_unavailable += 1;
            self.refused_while_unavailable += 1;
            self.reject(
                uuid,
                JobRejectionReason::Busy,
                "The validator's job pipeline is unavailable".to_owned(),
                out,
            );
            return;
        }
        self.counters.jobs_accepted += 1;
        self.jobs.insert(uuid.clone(), false);
        self.spool.put_job(JobRecord {
            uuid: uuid.clone(),
            request: job.shared_text(),
            // The machine has no wall clock: the driver stamps the time when it persists the record.
            accepted_at_unix_ms: 0,
            handler: None,
        });
        self.enqueue(JobStatusUpdate::new(uuid.clone(), JobStatus::Received));
        out.push(Action::Emit(Event::JobAccepted { uuid }));
        out.push(Action::Dispatch(job));
        self.pump(out);
    }

    /// The handler's pipeline went down or came back: only an actual change is counted and told.
    fn on_pipeline(&mut self, available: bool, out: &mut Vec<Action>) {
        if available == self.pipeline_available {
            return;
        }
        self.pipeline_available = available;
        if !available {
            self.counters.pipeline_outages += 1;
        }
        out.push(Action::Emit(Event::PipelineChanged {
            available,
            refused_meanwhile: std::mem::take(&mut self.refused_while_unavailable),
        }));
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
        // A job reports one terminal status, then nothing: a status of a job that already ended (its handler's
        // own terminal status, or the horde_failed of its cancellation) would contradict what was reported.
        match self.jobs.get_mut(&update.uuid) {
            Some(terminal @ false) => *terminal = update.status.is_terminal(),
            _ => {
                self.counters.statuses_dropped_late += 1;
                // Stopped is absorbing: it counts, and says nothing more.
                if !self.state.is_stopped() {
                    out.push(Action::Emit(Event::Ignored(Ignored::LateStatus {
                        uuid: update.uuid,
                        status: update.status,
                    })));
                }
                return;
            }
        }
        self.enqueue(update);
        self.pump(out);
    }

    /// Queues a status of an accepted job; with the spool, it gets an id and is held until its batch is durable
    /// (unless the spool is stale: then it goes at once, unprotected, and is counted).
    fn enqueue(&mut self, update: JobStatusUpdate) {
        self.counters.statuses_accepted += 1;
        if self.spool.enabled() {
            let (id, held_by) = self.spool.put_status(&update);
            if held_by.is_none() {
                self.counters.statuses_unspooled += 1;
            }
            self.outbox.push_spooled(update, id, held_by);
        } else {
            self.outbox.push(update);
        }
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
        let released = self.spool.released_up_to();
        while let Some(pending) = self.outbox.send_next(window, released) {
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
                self.stop(
                    StopReason::ShutdownWhileDisconnected,
                    StopCause::ShutdownWhileNotConnected,
                    out,
                );
            }
            State::Running { link, .. } => {
                let deadline = now + self.config.drain_timeout;
                let reason = Reason::ShutdownRequested {
                    jobs_running: self.jobs.len(),
                    unacknowledged: self.outbox.len(),
                };
                self.transition(
                    State::Draining {
                        link,
                        phase: DrainPhase::Flushing { deadline },
                    },
                    reason,
                    out,
                );
                self.check_drained(now, out);
            }
            // Already draining or stopped: a repeated request changes nothing (a second *signal* is ForceStop).
            State::Draining { .. } | State::Stopped { .. } => {}
        }
    }

    /// In Draining, once no job runs and every status of an accepted job is acknowledged, starts the close.
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
        let State::Draining { link, .. } = self.state else {
            return;
        };
        // 1000 when every status of an accepted job was delivered, 1001 ("going away") when something is left.
        let code = if self.outbox.accepted_jobs_len() == 0 && self.jobs.is_empty() {
            1000
        } else {
            1001
        };
        // Everything still queued goes out before the Close frame, past the in-flight window (the outbox is
        // bounded): the answers to job requests refused during the drain, and whatever a drain deadline left.
        self.send_queued(usize::MAX, out);
        out.push(Action::Close(code));
        self.transition(
            State::Draining {
                link,
                phase: DrainPhase::Closing { deadline, code },
            },
            Reason::Closing { code },
            out,
        );
    }

    fn drained_reason(&self) -> StopReason {
        match self.state {
            State::Draining {
                phase: DrainPhase::Closing { code: 1000, .. },
                ..
            } if self.counters.jobs_cancelled == 0 && self.counters.jobs_left_running == 0 => {
                StopReason::Graceful
            }
            _ => StopReason::DrainTimedOut,
        }
    }

    // ---- transitions -----------------------------------------------------------------------------------------

    fn connect_failed(
        &mut self,
        now: Instant,
        cause: ConnectFailure,
        at_cap: bool,
        out: &mut Vec<Action>,
    ) {
        self.counters.auth_failures += 1;
        let retry_in = if at_cap {
            self.backoff.cap_delay()
        } else {
            self.backoff.next_delay()
        };
        self.transition(
            State::Disconnected {
                retry_at: now + retry_in,
            },
            Reason::ConnectFailed {
                cause,
                retry_in,
                attempt: self.backoff.failures(),
            },
            out,
        );
    }

    fn connection_lost(
        &mut self,
        now: Instant,
        since: Instant,
        progress: bool,
        cause: LinkLoss,
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
        let retry_in = if at_cap {
            self.backoff.cap_delay()
        } else {
            self.backoff.next_delay()
        };
        self.transition(
            State::Disconnected {
                retry_at: now + retry_in,
            },
            Reason::ConnectionLost {
                cause,
                requeued,
                retry_in,
                backoff_reset: productive && !at_cap,
            },
            out,
        );
    }

    /// Cancels every running job and reports each as `horde_failed` (unless it already reported its terminal
    /// status): sent while the connection can still carry it (the drain deadline), otherwise kept and counted
    /// among the undelivered, so no job is left looking `accepted` without a trace. With the spool, a job whose
    /// work outlives the client (a Celery task) is left running instead and stays spooled, to be re-attached by
    /// the next start: dropping its handler does not stop the task. Returns how many jobs were cancelled (those
    /// left running not included).
    fn cancel_jobs(&mut self, out: &mut Vec<Action>) -> usize {
        if self.jobs.is_empty() {
            return 0;
        }
        let stopped = std::mem::take(&mut self.jobs);
        out.push(Action::CancelJobs);
        let mut cancelled = 0;
        for (uuid, reported_terminal) in &stopped {
            if *reported_terminal {
                cancelled += 1;
            } else if self.spool.is_resumable(uuid) {
                self.counters.jobs_left_running += 1;
            } else {
                cancelled += 1;
                self.enqueue(JobStatusUpdate::horde_failed(
                    uuid.clone(),
                    HordeFailureReason::GenericError,
                    "the validator's facilitator client stopped before the job finished",
                    None,
                ));
            }
        }
        self.counters.jobs_cancelled += cancelled as u64;
        cancelled
    }

    fn stop(&mut self, reason: StopReason, cause: StopCause, out: &mut Vec<Action>) {
        self.outbox.requeue_in_flight();
        self.spool.stopping();
        let undelivered = self.outbox.len();
        self.transition(
            State::Stopped { reason },
            Reason::Stopped { cause, undelivered },
            out,
        );
        out.push(Action::Stop(reason));
    }

    /// The one place the state changes; every change (of kind, or of phase within Connecting or Draining) emits
    /// one [`Event::StateChanged`] with its reason.
    fn transition(&mut self, to: State, reason: Reason, out: &mut Vec<Action>) {
        let from = self.state.kind();
        self.state = to;
        out.push(Action::Emit(Event::StateChanged {
            from,
            to: self.state.kind(),
            reason,
        }));
    }
}

/// How a socket ended, as the runtime reported it.
enum SocketEnd {
    Failed(String),
    Closed(Option<u16>),
}

impl SocketEnd {
    fn into_loss(self) -> LinkLoss {
        match self {
            SocketEnd::Failed(why) => LinkLoss::SocketFailed(why),
            SocketEnd::Closed(code) => LinkLoss::PeerClosed(code),
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
