//! The metrics snapshot: what the machine counts plus what only the runtime sees (messages by type, round-trip
//! time). Updated by the loop after every step; read by anyone holding a [`MetricsHandle`].

use std::collections::BTreeMap;
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

    pub(crate) fn update(&self, machine: &Machine) {
        let mut m = self.lock();
        m.state = machine.state().kind();
        m.counters.clone_from(machine.counters());
        m.outbox_queued = machine.outbox().queued_len();
        m.in_flight = machine.outbox().in_flight_len();
        m.running_jobs = machine.running_job_count();
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
