//! Shared by the fault-injection tests (`chaos.rs`, `bad_input.rs`, `shutdown_under_load.rs`): the fault-injecting
//! proxy, client settings with short timeouts, a job handler that records what it was given, a recorder of the
//! client's state changes, a log capture, and measurements of this process (RSS, open file descriptors).
//!
//! Each test file uses a different part of it.
#![allow(dead_code)]

pub mod loopback;
pub mod proxy;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use facilitator_client::ClientConfig;
use facilitator_client::handler::{BoxFuture, EchoHandler, JobHandler, StatusSender};
use facilitator_client::machine::{BackoffConfig, Event, Reason, StateKind};
use facilitator_client::protocol::keys::Hotkey;
use facilitator_client::protocol::{JobRequest, JobStatus};
use tokio::sync::broadcast;

/// What the echo handler's jobs leave at the facilitator, in order.
pub const ECHO_STATUSES: [JobStatus; 3] = [
    JobStatus::Received,
    JobStatus::Accepted,
    JobStatus::Completed,
];

/// The validator's hotkey in these tests.
pub fn hotkey() -> Hotkey {
    Hotkey::from_seed(&[7u8; 32])
}

/// Client settings for fault tests: short heartbeats and peer timeout, a small backoff cap, so that recoveries
/// take milliseconds; generous enough that a loaded machine does not see a dead peer everywhere.
pub fn fast_client_config(url: &str, trusted_signer: &str) -> ClientConfig {
    let mut config = ClientConfig::new(url);
    config.trusted_signers = vec![trusted_signer.to_owned()];
    config.machine.heartbeat_interval = Duration::from_millis(100);
    config.machine.peer_timeout = Duration::from_millis(400);
    config.machine.connect_timeout = Duration::from_secs(1);
    config.machine.drain_timeout = Duration::from_secs(5);
    config.machine.close_timeout = Duration::from_secs(1);
    config.machine.backoff = BackoffConfig {
        base: Duration::from_millis(20),
        factor: 2.0,
        cap: Duration::from_millis(100),
        jitter: 0.5,
        stable_after: Duration::from_millis(500),
    };
    config
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The echo handler, recording the UUID of every job it is given at the moment it is dispatched (synchronously,
/// inside the client's loop), so a test knows exactly which jobs the client accepted.
#[derive(Debug, Clone, Default)]
pub struct RecordingEcho {
    dispatched: Arc<Mutex<HashSet<String>>>,
    dispatches: Arc<Mutex<u64>>,
}

impl RecordingEcho {
    /// Whether the client dispatched this job.
    pub fn dispatched(&self, uuid: &str) -> bool {
        lock(&self.dispatched).contains(uuid)
    }

    /// How many distinct jobs were dispatched.
    pub fn distinct(&self) -> usize {
        lock(&self.dispatched).len()
    }

    /// How many dispatches in all (a job dispatched twice counts twice).
    pub fn dispatches(&self) -> u64 {
        *lock(&self.dispatches)
    }
}

impl JobHandler for RecordingEcho {
    fn run(&self, job: Arc<JobRequest>, statuses: StatusSender) -> BoxFuture {
        lock(&self.dispatched).insert(job.uuid().to_owned());
        *lock(&self.dispatches) += 1;
        EchoHandler::new().run(job, statuses)
    }

    fn name(&self) -> String {
        "recording-echo".to_owned()
    }
}

/// A state change as seen by [`StateLog`].
#[derive(Debug, Clone)]
pub struct Change {
    pub at: Instant,
    pub from: StateKind,
    pub to: StateKind,
    pub reason: Reason,
}

/// What [`StateLog`] saw.
#[derive(Debug, Clone, Default)]
pub struct StateHistory {
    pub changes: Vec<Change>,
    /// Events missed because the recorder fell behind (the broadcast channel holds 1024).
    pub lagged: u64,
    /// Indexes into `changes` where events were missed (just before that change).
    pub gaps_in_record: Vec<usize>,
}

/// One stretch out of Running: from leaving it to entering it again.
#[derive(Debug, Clone, Copy)]
pub struct Outage {
    pub left: Instant,
    pub duration: Duration,
    /// Connection attempts that failed inside it.
    pub failed_attempts: u32,
}

impl StateHistory {
    /// Every complete stretch out of Running with no missed events inside it.
    pub fn outages(&self) -> Vec<Outage> {
        let mut outages = Vec::new();
        let mut open: Option<(Instant, u32, bool)> = None;
        for (i, change) in self.changes.iter().enumerate() {
            let missed = self.gaps_in_record.contains(&i);
            if let Some((_, _, clean)) = open.as_mut() {
                *clean &= !missed;
            }
            if change.from == StateKind::Running && change.to == StateKind::Disconnected {
                open = Some((change.at, 0, true));
            } else if change.from == StateKind::Connecting && change.to == StateKind::Disconnected {
                if let Some((_, failed, _)) = open.as_mut() {
                    *failed += 1;
                }
            } else if change.to == StateKind::Running {
                if let Some((left, failed, true)) = open.take() {
                    outages.push(Outage {
                        left,
                        duration: change.at - left,
                        failed_attempts: failed,
                    });
                }
                open = None;
            }
        }
        outages
    }

    /// How many times the client entered Running.
    pub fn times_running(&self) -> usize {
        self.changes
            .iter()
            .filter(|c| c.to == StateKind::Running)
            .count()
    }
}

/// Records the client's state changes on a thread of its own (so a busy runtime does not make it fall behind),
/// with the time each was seen. Ends when the client is gone.
pub struct StateLog {
    thread: std::thread::JoinHandle<StateHistory>,
}

impl StateLog {
    pub fn start(mut events: broadcast::Receiver<Event>) -> StateLog {
        let thread = std::thread::spawn(move || {
            let mut history = StateHistory::default();
            loop {
                match events.blocking_recv() {
                    Ok(Event::StateChanged { from, to, reason }) => history.changes.push(Change {
                        at: Instant::now(),
                        from,
                        to,
                        reason,
                    }),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        history.lagged += n;
                        history.gaps_in_record.push(history.changes.len());
                    }
                    Err(broadcast::error::RecvError::Closed) => return history,
                }
            }
        });
        StateLog { thread }
    }

    /// Waits for the client to be gone and returns what was seen.
    pub fn finish(self) -> StateHistory {
        self.thread
            .join()
            .expect("the state recorder does not panic")
    }
}

/// A field of `/proc/self/status` in KiB (`VmRSS`, `VmHWM`).
pub fn vm_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Open file descriptors of this process (sockets included).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Polls `condition` every few milliseconds until it holds; panics with `what` after `timeout`. For conditions
/// nothing notifies about (the client's metrics).
pub async fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A logger that keeps the client's log lines (targets `facilitator_client::runtime*`) for tests to read, and
/// prints everything at info and above to stderr when `TEST_LOG` is set.
pub struct LogCapture {
    lines: Mutex<Vec<(log::Level, String)>>,
}

static CAPTURE: LogCapture = LogCapture {
    lines: Mutex::new(Vec::new()),
};

impl LogCapture {
    /// Installs the capture as the process's logger (once) and returns it.
    pub fn install() -> &'static LogCapture {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            if log::set_logger(&CAPTURE).is_ok() {
                log::set_max_level(log::LevelFilter::Info);
            }
        });
        &CAPTURE
    }

    /// Takes the lines captured so far.
    pub fn take(&self) -> Vec<(log::Level, String)> {
        std::mem::take(&mut *lock(&self.lines))
    }
}

impl log::Log for LogCapture {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("{} {} {}", record.level(), record.target(), record.args());
        }
        if record.target().starts_with("facilitator_client::runtime") {
            lock(&self.lines).push((record.level(), record.args().to_string()));
        }
    }

    fn flush(&self) {}
}
