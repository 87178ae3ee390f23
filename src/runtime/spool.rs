//! The runtime's side of the spool: opening it, the writer thread, and what the loop needs from both.
//!
//! Owns: the [`SpoolWorker`] and its results channel, the wall-clock time stamped on each job record (the machine
//! has no wall clock), whether the file is up to date as far as the reports say, the spool's metrics, and the
//! writer's bounded finish at the end. Must never: decide what to persist (the machine does), block the loop (every
//! commit runs on the writer's thread; the finish runs on tokio's blocking pool), or lose a report (every
//! [`Committed`] becomes an `Input::Persisted`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::UnboundedReceiver;

use super::metrics::{SpoolMetrics, SpoolSummary};
use crate::machine::{Input, Machine};
use crate::spool::{Committed, Spool, SpoolBatch, SpoolWorker};

/// How long the end of a run waits for the writer to commit what is queued (usually one small batch: a few ms).
pub(crate) const FINISH_WITHIN: Duration = Duration::from_secs(5);

/// The writer thread and the bookkeeping the loop needs.
pub(crate) struct SpoolDriver {
    path: PathBuf,
    worker: Option<SpoolWorker>,
    results: UnboundedReceiver<Committed>,
    /// Wall-clock acceptance times stamped on job records, kept for later snapshots.
    accepted_at: HashMap<String, u64>,
    submitted: u64,
    reported: u64,
    /// The highest batch id reported failed.
    failed_up_to: u64,
    /// The highest full snapshot submitted.
    last_snapshot: u64,
    stale: bool,
    last_error: Option<String>,
    bytes: Option<u64>,
    batches: u64,
    slowest_commit: Duration,
}

impl SpoolDriver {
    /// Starts the writer thread on an opened spool.
    pub(crate) fn start(spool: Spool) -> std::io::Result<SpoolDriver> {
        let path = spool.path().to_path_buf();
        let bytes = spool.size_bytes().ok();
        let (mut worker, results) = SpoolWorker::spawn(spool)?;
        // A run future dropped mid-flight drops the worker on the async thread: bound that wait too.
        worker.set_drop_within(FINISH_WITHIN);
        Ok(SpoolDriver {
            path,
            worker: Some(worker),
            results,
            accepted_at: HashMap::new(),
            submitted: 0,
            reported: 0,
            failed_up_to: 0,
            last_snapshot: 0,
            stale: false,
            last_error: None,
            bytes,
            batches: 0,
            slowest_commit: Duration::ZERO,
        })
    }

    /// Hands a batch to the writer, never blocking: job records the machine left unstamped get the time they were
    /// first persisted (the moment they were accepted, within a loop turn), and keep it in later snapshots.
    pub(crate) fn submit(&mut self, id: u64, mut batch: SpoolBatch, now: SystemTime) {
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        if batch.full_snapshot {
            let listed: std::collections::HashSet<&str> =
                batch.put_jobs.iter().map(|j| j.uuid.as_str()).collect();
            self.accepted_at
                .retain(|uuid, _| listed.contains(uuid.as_str()));
            self.last_snapshot = id;
        }
        for job in &mut batch.put_jobs {
            let stamp = match job.accepted_at_unix_ms {
                0 => *self.accepted_at.entry(job.uuid.clone()).or_insert(now_ms),
                known => *self.accepted_at.entry(job.uuid.clone()).or_insert(known),
            };
            job.accepted_at_unix_ms = stamp;
        }
        for uuid in &batch.remove_jobs {
            self.accepted_at.remove(uuid);
        }
        self.submitted = id;
        self.batches += 1;
        match &self.worker {
            Some(worker) => worker.submit(id, batch),
            None => log::error!("bug: spool batch {id} submitted after the writer finished"),
        }
    }

    /// The next commit report. Cancel-safe: `UnboundedReceiver::recv` loses nothing when another branch wins.
    pub(crate) async fn next(&mut self) -> Option<Committed> {
        self.results.recv().await
    }

    /// Notes a report and turns it into the machine's input.
    pub(crate) fn on_committed(&mut self, committed: Committed) -> Input {
        self.note(&committed);
        Input::Persisted {
            up_to: committed.up_to,
            result: committed.result,
        }
    }

    fn note(&mut self, committed: &Committed) {
        self.reported = self.reported.max(committed.up_to);
        self.slowest_commit = self.slowest_commit.max(committed.took);
        if committed.file_bytes.is_some() {
            self.bytes = committed.file_bytes;
        }
        match &committed.result {
            Ok(()) => {
                // A full snapshot submitted after the last failure, and now on disk, makes the file right.
                if self.stale
                    && self.last_snapshot > self.failed_up_to
                    && self.last_snapshot <= committed.up_to
                {
                    self.stale = false;
                    self.last_error = None;
                }
            }
            Err(error) => {
                self.stale = true;
                self.failed_up_to = committed.up_to;
                self.last_error = Some(error.clone());
            }
        }
    }

    /// The figures for the metrics snapshot and the operations endpoints.
    pub(crate) fn metrics(&self, machine: &Machine, now: std::time::Instant) -> SpoolMetrics {
        let (statuses, jobs) = machine.spooled_len();
        SpoolMetrics {
            bytes: self.bytes,
            statuses,
            jobs,
            stale_for: machine
                .spool_stale_since()
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since)),
            batches: self.batches,
            errors: machine.counters().spool_errors,
            slowest_commit: self.slowest_commit,
        }
    }

    /// Lets the writer commit what is queued (and compact an emptied file), waiting at most `within` on tokio's
    /// blocking pool; then says whether the file holds what memory held.
    pub(crate) async fn finish(mut self, machine: &Machine, within: Duration) -> SpoolSummary {
        let finished = match self.worker.take() {
            Some(worker) => {
                match tokio::task::spawn_blocking(move || worker.finish(within)).await {
                    Ok(Ok(_spool)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(format!("the spool's writer could not be waited for: {e}")),
                }
            }
            None => Ok(()),
        };
        // Every report is sent before the writer hands the spool back.
        while let Ok(committed) = self.results.try_recv() {
            self.note(&committed);
        }
        let (statuses, jobs) = machine.spooled_len();
        let problem = match finished {
            Err(e) => Some(e),
            Ok(()) if self.reported < self.submitted => Some(format!(
                "batches {}..={} were never reported",
                self.reported + 1,
                self.submitted
            )),
            Ok(()) if self.stale => Some(format!(
                "commits failed: {}",
                self.last_error.as_deref().unwrap_or("unknown error")
            )),
            Ok(()) => None,
        };
        SpoolSummary {
            path: self.path,
            up_to_date: problem.is_none(),
            statuses,
            jobs,
            problem,
        }
    }
}
