//! The metrics snapshot: what the machine counts plus what only the runtime sees (messages by type, round-trip
//! time). Updated by the loop after every step; read by anyone holding a [`MetricsHandle`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::machine::{Counters, Machine, StateKind};

/// Counters and gauges of a running client.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// The machine's state.
    pub state: StateKind,
    /// The machine's counters: connects, reconnects, auth failures, statuses sent/delivered/re-sent/refused,
    /// jobs, decode errors, ...
    pub counters: Counters,
    /// Status updates waiting to be sent.
    pub outbox_queued: usize,
    /// Status updates sent and not yet acknowledged.
    pub in_flight: usize,
    /// Jobs running.
    pub running_jobs: usize,
    /// Messages received, by type (`Response`, `V2JobRequest`, `V0JobCheated`, `undecodable`, `binary`).
    pub messages_in: BTreeMap<&'static str, u64>,
    /// Messages sent, by `message_type`.
    pub messages_out: BTreeMap<&'static str, u64>,
    /// Time from the last WebSocket Ping to its Pong.
    pub last_round_trip: Option<Duration>,
    /// The most each buffer that grows with what the facilitator sends has held: the evidence that every one of
    /// them is bounded, whatever is pushed.
    pub peaks: Peaks,
    /// The spool, when the client has one.
    pub spool: Option<SpoolMetrics>,
    /// Whether the job handler's pipeline takes jobs (always true for handlers without one; see
    /// `JobHandler::availability`).
    pub pipeline_available: bool,
    /// What became of verified cheat reports handed to the job handler.
    pub cheat_forwarding: CheatForwarding,
}

/// What became of the verified cheat reports the machine handed on (`Action::ForwardCheatReport`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheatForwarding {
    /// Handed to the handler's pipeline (with `--celery-cheated-task`: queued to that task).
    pub forwarded: u64,
    /// The hand-off failed (Redis unreachable or refusing): logged.
    pub failed: u64,
    /// The handler takes no cheat reports (no `--celery-cheated-task`, or not the celery handler): logged only.
    pub not_taken: u64,
}

/// High-water marks of the buffers that grow with what the peer sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peaks {
    /// Jobs running at once (bounded by `max_running_jobs`).
    pub running_jobs: usize,
    /// Status updates held, queued plus in flight (bounded by `outbox_capacity + max_running_jobs`).
    pub outbox: usize,
    /// Status updates in flight (bounded by `max_in_flight`, past it only in the close).
    pub in_flight: usize,
    /// Decoded frames read ahead of the machine (bounded by the read batch).
    pub read_ahead: usize,
    /// Messages queued for the socket and not yet handed to the WebSocket layer.
    pub socket_backlog: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            state: StateKind::Disconnected,
            counters: Counters::default(),
            outbox_queued: 0,
            in_flight: 0,
            running_jobs: 0,
            messages_in: BTreeMap::new(),
            messages_out: BTreeMap::new(),
            last_round_trip: None,
            peaks: Peaks::default(),
            spool: None,
            pipeline_available: true,
            cheat_forwarding: CheatForwarding::default(),
        }
    }
}

/// The spool's figures, in the metrics snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolMetrics {
    /// The spool file's length after the last commit, if known.
    pub bytes: Option<u64>,
    /// Statuses of accepted jobs not yet answered (on disk, or about to be).
    pub statuses: usize,
    /// Jobs recorded (accepted, terminal status not yet answered).
    pub jobs: usize,
    /// How long the file has lacked changes that memory holds (zero while up to date).
    pub stale_for: Duration,
    /// Batches handed to the writer.
    pub batches: u64,
    /// Commits that failed.
    pub errors: u64,
    /// The longest commit so far (write and fsync).
    pub slowest_commit: Duration,
}

/// How the spool was left at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSummary {
    /// The spool file.
    pub path: PathBuf,
    /// Whether the file holds what memory held at the end: every batch committed, and none failed since the last
    /// full snapshot that committed.
    pub up_to_date: bool,
    /// Statuses kept for the next start (unanswered).
    pub statuses: usize,
    /// Jobs kept for the next start.
    pub jobs: usize,
    /// Why it is not up to date, when it is not.
    pub problem: Option<String>,
}

impl std::fmt::Display for SpoolSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.problem {
            None => write!(
                f,
                "spool up to date ({} status update(s) and {} job(s) kept for the next start)",
                self.statuses, self.jobs
            ),
            Some(problem) => write!(
                f,
                "spool NOT up to date ({problem}): the next start may replay statuses already delivered or miss \
                 some"
            ),
        }
    }
}

/// A shared, live view of a client's metrics.
#[derive(Debug, Clone, Default)]
pub struct MetricsHandle {
    inner: Arc<Mutex<Metrics>>,
}

impl MetricsHandle {
    /// A copy of the current metrics.
    pub fn snapshot(&self) -> Metrics {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Metrics> {
        // A panic while holding this lock cannot leave the plain counters inconsistent: keep going.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Copies the machine's view, and what the loop holds per connection: frames read ahead of the machine and
    /// messages waiting for the socket.
    pub(crate) fn update(&self, machine: &Machine, read_ahead: usize, socket_backlog: usize) {
        let mut m = self.lock();
        m.state = machine.state().kind();
        m.counters.clone_from(machine.counters());
        m.outbox_queued = machine.queued_len();
        m.in_flight = machine.in_flight_len();
        m.running_jobs = machine.running_job_count();
        m.pipeline_available = machine.pipeline_available();
        let p = &mut m.peaks;
        p.running_jobs = p.running_jobs.max(machine.running_job_count());
        p.outbox = p.outbox.max(machine.held_len());
        p.in_flight = p.in_flight.max(machine.in_flight_len());
        p.read_ahead = p.read_ahead.max(read_ahead);
        p.socket_backlog = p.socket_backlog.max(socket_backlog);
    }

    #[cfg(feature = "spool")]
    pub(crate) fn set_spool(&self, spool: SpoolMetrics) {
        self.lock().spool = Some(spool);
    }

    /// Counts the outcome of one cheat report's hand-off: `Some(true)` forwarded, `Some(false)` failed, `None` not
    /// taken by the handler.
    pub(crate) fn count_cheat_forward(&self, outcome: Option<bool>) {
        let mut m = self.lock();
        let c = &mut m.cheat_forwarding;
        match outcome {
            Some(true) => c.forwarded += 1,
            Some(false) => c.failed += 1,
            None => c.not_taken += 1,
        }
    }

    pub(crate) fn count_in(&self, kind: &'static str) {
        *self.lock().messages_in.entry(kind).or_default() += 1;
    }

    pub(crate) fn count_out(&self, kind: &'static str) {
        *self.lock().messages_out.entry(kind).or_default() += 1;
    }

    pub(crate) fn set_rtt(&self, rtt: Duration) {
        self.lock().last_round_trip = Some(rtt);
    }
}
