//! Operations: what a validator operator's tools read from a running client. Prometheus metrics and a health
//! check on one small local HTTP listener ([`http`], [`prom`], [`health`]), and logs as text or JSON lines with a
//! rate limiter for repeated warnings ([`log`]).
//!
//! [`Ops`] is the hub the runtime feeds: before each `machine.step(input, now)` the loop calls
//! [`Ops::on_input`], and for each action the machine returns, [`Ops::on_action`]; from those two streams it
//! measures what only happens in time (connect and auth durations, Ping round trips, job durations, the time from
//! a status being queued to its acknowledgement) and classifies how connections end, as the Python client's
//! `transport_layer_events` does. Everything the machine counts is read from the runtime's
//! [`MetricsHandle`] at scrape time. Nothing here decides anything for the client, reads the clock on the loop's
//! behalf, or blocks: the loop's two calls take a lock that only a scrape contends for, on the same thread.

pub mod health;
pub mod http;
pub mod log;
pub mod prom;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use crate::machine::{
    Action, ConnectFailure, Event, Incoming, Input, LinkLoss, Reason, StateKind, StopCause,
};
use crate::protocol::{ClientMessage, JobStatus, close_code};
use crate::runtime::MetricsHandle;

pub use health::{HealthPolicy, HealthReport, Liveness, Verdict};
pub use http::{HttpLimits, HttpServer, Response, Routes};
pub use prom::{ScrapeView, SpoolStatus, Telemetry, TransportEvent};

/// At most this many jobs and queued statuses are timed at once: the outbox and the running jobs are bounded far
/// below it, so it only guards memory against a bug (past it, new ones are simply not timed).
const MAX_TIMED: usize = 1 << 16;

/// The operations hub of one client. Cheap to clone; every clone is the same hub.
#[derive(Clone)]
pub struct Ops {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops").finish_non_exhaustive()
    }
}

struct Shared {
    telemetry: Telemetry,
    tracker: Arc<Mutex<Tracker>>,
    metrics: MetricsHandle,
    policy: HealthPolicy,
    /// One reading of both clocks, to show `Instant`s as wall-clock times.
    origin: (Instant, SystemTime),
}

/// The spool's figures: the runtime's, from the metrics, else what [`Ops::set_spool`] was given.
fn spool_status(metrics: &crate::Metrics, set: Option<SpoolStatus>) -> Option<SpoolStatus> {
    match &metrics.spool {
        Some(spool) => Some(SpoolStatus {
            bytes: spool.bytes.unwrap_or(0),
            entries: (spool.statuses + spool.jobs) as u64,
            staleness: Some(spool.stale_for),
            errors: spool.errors,
        }),
        None => set,
    }
}

impl Ops {
    /// A hub for the client whose metrics are `metrics`, started at `now`.
    pub fn new(metrics: MetricsHandle, policy: HealthPolicy, now: Instant) -> Ops {
        let tracker = Arc::new(Mutex::new(Tracker::new(now)));
        let view = {
            let metrics = metrics.clone();
            let tracker = Arc::clone(&tracker);
            move || {
                let tracker = lock(&tracker);
                let metrics = metrics.snapshot();
                let spool = spool_status(&metrics, tracker.spool);
                ScrapeView {
                    metrics,
                    // A scrape is not the loop: reading the clock here is fine.
                    in_state_for: Instant::now()
                        .saturating_duration_since(tracker.liveness.since()),
                    spool,
                }
            }
        };
        Ops {
            shared: Arc::new(Shared {
                telemetry: Telemetry::new(view),
                tracker,
                metrics,
                policy,
                origin: (now, SystemTime::now()),
            }),
        }
    }

    /// The metrics observed as they happen, for calls the hub does not make itself.
    pub fn telemetry(&self) -> &Telemetry {
        &self.shared.telemetry
    }

    /// The loop is about to step the machine with `input` at `now`.
    pub fn on_input(&self, input: &Input, now: Instant) {
        lock(&self.shared.tracker).on_input(input, now, &self.shared.telemetry);
    }

    /// The machine returned `action` (call for each, in order, before or while carrying them out).
    pub fn on_action(&self, action: &Action, now: Instant) {
        lock(&self.shared.tracker).on_action(action, now, &self.shared.telemetry);
    }

    /// The spool's current figures (`None`: no spool), for a client whose metrics do not carry them (the runtime's
    /// own spool puts them in [`crate::Metrics::spool`], which wins).
    pub fn set_spool(&self, spool: Option<SpoolStatus>) {
        lock(&self.shared.tracker).spool = spool;
    }

    /// The OpenMetrics text of every series.
    pub fn render_metrics(&self) -> Response {
        match self.shared.telemetry.render() {
            Ok(text) => Response {
                status: 200,
                content_type: prom::CONTENT_TYPE,
                body: text.into_bytes(),
            },
            Err(_) => Response::text(500, "rendering the metrics failed\n"),
        }
    }

    /// The health verdict and report at `now`.
    pub fn health(&self, now: Instant) -> (Verdict, HealthReport) {
        let metrics = self.shared.metrics.snapshot();
        let tracker = lock(&self.shared.tracker);
        let live = &tracker.liveness;
        let (origin_instant, origin_wall) = self.shared.origin;
        let since = match live.since().checked_duration_since(origin_instant) {
            Some(after) => origin_wall + after,
            None => origin_wall - origin_instant.saturating_duration_since(live.since()),
        };
        let report = HealthReport {
            state: live.state(),
            since,
            last_error: live.last_error().map(str::to_owned),
            statuses_queued: (metrics.outbox_queued + metrics.in_flight) as u64,
            spool: spool_status(&metrics, tracker.spool),
        };
        (live.verdict(now, self.shared.policy), report)
    }

    /// `GET /healthz`: 200 or 503 with the JSON report.
    pub fn render_health(&self) -> Response {
        let (verdict, report) = self.health(Instant::now());
        Response {
            status: verdict.http_status(),
            content_type: "application/json",
            body: report.to_json().into_bytes(),
        }
    }

    /// `/metrics` and `/healthz`.
    pub fn routes(&self) -> Routes {
        let metrics = self.clone();
        let health = self.clone();
        Routes::new()
            .get("/metrics", move || metrics.render_metrics())
            .get("/healthz", move || health.render_health())
    }

    /// Binds the metrics listener on `addr` with [`Ops::routes`]; spawn [`HttpServer::run`] on the runtime.
    pub async fn bind(&self, addr: SocketAddr, limits: HttpLimits) -> io::Result<HttpServer> {
        HttpServer::bind(addr, self.routes(), limits).await
    }
}

/// The hub watches a client's run: `client.observe(Arc::new(ops.clone()))`.
impl crate::Observer for Ops {
    fn on_input(&self, input: &Input, now: Instant) {
        Ops::on_input(self, input, now);
    }

    fn on_action(&self, action: &Action, now: Instant) {
        Ops::on_action(self, action, now);
    }
}

fn lock(tracker: &Mutex<Tracker>) -> MutexGuard<'_, Tracker> {
    // Plain bookkeeping: a panic elsewhere cannot leave it in a state worse than a missed observation.
    tracker
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where a connection attempt is, as seen from the actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Opening { since: Instant },
    Authenticating { since: Instant },
}

struct Tracker {
    liveness: Liveness,
    phase: Phase,
    ping_sent_at: Option<Instant>,
    jobs: HashMap<String, Instant>,
    queued: HashMap<(String, JobStatus), Instant>,
    spool: Option<SpoolStatus>,
}

impl Tracker {
    fn new(now: Instant) -> Tracker {
        Tracker {
            liveness: Liveness::new(now),
            phase: Phase::Idle,
            ping_sent_at: None,
            jobs: HashMap::new(),
            queued: HashMap::new(),
            spool: None,
        }
    }

    fn queue(&mut self, uuid: &str, status: JobStatus, now: Instant) {
        if self.queued.len() < MAX_TIMED {
            // A second identical status keeps the first one's time: it is acknowledged first.
            self.queued.entry((uuid.to_owned(), status)).or_insert(now);
        }
    }

    fn job_ended(&mut self, uuid: &str, now: Instant, telemetry: &Telemetry) {
        if let Some(accepted) = self.jobs.remove(uuid) {
            telemetry.observe_job(now.saturating_duration_since(accepted));
        }
    }

    fn on_input(&mut self, input: &Input, now: Instant, telemetry: &Telemetry) {
        match input {
            Input::Undecodable(error) => self.undecodable(error, telemetry),
            Input::Pong => self.pong(now, telemetry),
            Input::Frames(frames) => {
                for frame in frames {
                    match frame {
                        Incoming::Undecodable(error) => self.undecodable(error, telemetry),
                        Incoming::Pong => self.pong(now, telemetry),
                        Incoming::Message(_) => {}
                    }
                }
            }
            Input::Status(update) => {
                self.queue(&update.uuid, update.status, now);
                if update.status.is_terminal() {
                    self.job_ended(&update.uuid, now, telemetry);
                }
            }
            // A handler that ended without a terminal status: its job ends here.
            Input::JobFinished(uuid) => self.job_ended(uuid, now, telemetry),
            Input::Tick
            | Input::SocketOpened
            | Input::SocketFailed(_)
            | Input::SocketClosed(_)
            | Input::Frame(_)
            | Input::JobAttached { .. }
            | Input::Persisted { .. }
            | Input::PipelineAvailable(_)
            | Input::Shutdown
            | Input::ForceStop => {}
        }
    }

    fn undecodable(&mut self, error: &crate::protocol::DecodeError, telemetry: &Telemetry) {
        // The machine counts decode errors only where frames are expected; so do we.
        let expected = matches!(self.phase, Phase::Authenticating { .. })
            || matches!(
                self.liveness.state(),
                StateKind::Running | StateKind::Draining
            );
        if expected {
            telemetry.count_decode_error(error);
        }
    }

    fn pong(&mut self, now: Instant, telemetry: &Telemetry) {
        if let Some(sent) = self.ping_sent_at.take() {
            telemetry.observe_rtt(now.saturating_duration_since(sent));
        }
    }

    fn on_action(&mut self, action: &Action, now: Instant, telemetry: &Telemetry) {
        match action {
            Action::Open => {
                self.phase = Phase::Opening { since: now };
                self.ping_sent_at = None;
            }
            Action::Send(ClientMessage::Auth(_)) => {
                if let Phase::Opening { since } = self.phase {
                    telemetry.observe_connect(now.saturating_duration_since(since));
                }
                self.phase = Phase::Authenticating { since: now }
            }
            Action::Send(_)
            | Action::Abort
            | Action::Dispatch(_)
            | Action::Close(_)
            | Action::Persist { .. }
            | Action::ForwardCheatReport(_) => {}
            Action::Ping => self.ping_sent_at = Some(now),
            Action::CancelJobs => {
                // The machine reports each cancelled job `horde_failed`: that is its terminal status.
                let jobs: Vec<String> = self.jobs.keys().cloned().collect();
                for uuid in jobs {
                    self.queue(&uuid, JobStatus::HordeFailed, now);
                    self.job_ended(&uuid, now, telemetry);
                }
            }
            Action::Emit(event) => self.on_event(event, now, telemetry),
            Action::Stop(_) => {
                self.jobs.clear();
                self.queued.clear();
            }
        }
    }

    fn on_event(&mut self, event: &Event, now: Instant, telemetry: &Telemetry) {
        match event {
            Event::StateChanged { from, to, reason } => {
                self.classify(*from, *to, reason, now, telemetry);
                self.liveness
                    .on_state_changed(*from, *to, &reason.to_string(), now);
                if let Reason::Stopped { cause, .. } = reason
                    && matches!(
                        cause,
                        StopCause::SignatureInvalid
                            | StopCause::ClosedSignatureInvalid
                            | StopCause::LinkLostWhileDraining(_)
                    )
                {
                    self.liveness.set_last_error(reason.to_string());
                }
                if !matches!(to, StateKind::Connecting) {
                    self.phase = Phase::Idle;
                }
            }
            Event::JobAccepted { uuid } => {
                if self.jobs.len() < MAX_TIMED {
                    self.jobs.insert(uuid.clone(), now);
                }
                self.queue(uuid, JobStatus::Received, now);
            }
            Event::JobRejected { uuid, .. } => self.queue(uuid, JobStatus::Rejected, now),
            Event::StatusDelivered { uuid, status, .. } => {
                if let Some(queued) = self.queued.remove(&(uuid.clone(), *status)) {
                    telemetry
                        .observe_send("JobStatusUpdate", now.saturating_duration_since(queued));
                }
            }
            Event::StatusRefused { uuid, status, .. } => {
                self.queued.remove(&(uuid.clone(), *status));
            }
            _ => {}
        }
    }

    /// Counts how a connection attempt or an authenticated connection ended, from the machine's own reason, as
    /// the Python client's `transport_layer_events` does: `success` per authentication, `auth_error` per auth
    /// rejection (3000, 3001, an error Response), `transport_error` per failed or lost socket, `unknown_error`
    /// otherwise.
    fn classify(
        &mut self,
        from: StateKind,
        to: StateKind,
        reason: &Reason,
        now: Instant,
        telemetry: &Telemetry,
    ) {
        let auth_close = |code: &Option<u16>| {
            matches!(
                code,
                Some(close_code::SIGNATURE_INVALID | close_code::VALIDATOR_NOT_FOUND)
            )
        };
        let event = match reason {
            Reason::Authenticated { .. } => {
                if let Phase::Authenticating { since } = self.phase {
                    let took = now.saturating_duration_since(since);
                    telemetry.observe_auth(took);
                    telemetry.observe_send("V0AuthenticationRequest", took);
                }
                Some(TransportEvent::Success)
            }
            Reason::ConnectFailed { cause, .. } => Some(match cause {
                ConnectFailure::AuthError(_) => TransportEvent::AuthError,
                ConnectFailure::PeerClosed(code) if auth_close(code) => TransportEvent::AuthError,
                ConnectFailure::UnexpectedFrame(_) | ConnectFailure::UndecodableFrame(_) => {
                    TransportEvent::UnknownError
                }
                _ => TransportEvent::TransportError,
            }),
            Reason::ConnectionLost { cause, .. }
            | Reason::Stopped {
                cause: StopCause::LinkLostWhileDraining(cause),
                ..
            } => Some(match cause {
                LinkLoss::PeerClosed(code) if auth_close(code) => TransportEvent::AuthError,
                _ => TransportEvent::TransportError,
            }),
            Reason::Stopped {
                cause: StopCause::SignatureInvalid | StopCause::ClosedSignatureInvalid,
                ..
            } => Some(TransportEvent::AuthError),
            _ => None,
        };
        let _ = (from, to);
        if let Some(event) = event {
            telemetry.count_transport_event(event);
        }
    }
}
