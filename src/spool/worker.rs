//! The spool's writer thread: the runtime hands it batches and goes on; the thread commits them, one fsync at a
//! time, and reports each commit on a tokio channel.
//!
//! Owns: the one thread that touches the spool file after it is opened, the merging of batches that queue behind a
//! slow fsync into one commit, compaction when the spool has emptied, and a bounded shutdown. Must never: block the
//! caller of [`SpoolWorker::submit`] (an fsync must not delay heartbeats, Pongs or reads), lose a submitted batch
//! without reporting it, or panic on a failing disk (a failure is a [`Committed`] with an error).

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::record::SpoolBatch;
use super::store::Spool;

/// Once the spool has emptied, compact the file if it has grown past this. Compaction costs several fsyncs (a few
/// ms), so it is not worth it for a file that is already small. Measured (`tests/spool.rs`, `measure_*`): a new
/// spool's file is 72 KiB and 16 KiB compacted; redb reuses freed pages, so 100,000 statuses put and removed leave
/// it at 72 KiB with 16 in flight and 140 KiB with 256 in flight. Only a burst of large statuses grows it past this;
/// a clean stop compacts whatever the size.
pub const COMPACT_ABOVE_BYTES: u64 = 1 << 20;

/// How long dropping a [`SpoolWorker`] waits for the queued commits by default.
pub const DEFAULT_DROP_WITHIN: Duration = Duration::from_secs(10);

/// One commit's outcome: every batch submitted with an id up to `up_to` (and not reported before) is in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The highest batch id this commit covers.
    pub up_to: u64,
    /// How many submitted batches were merged into this commit.
    pub batches: usize,
    /// `Err` with a message fit for the log when the commit failed: the file then holds the state of the last
    /// successful commit, and the next batch should be a full snapshot.
    pub result: Result<(), String>,
    /// How long the commit took (the write and the fsync; zero when the merged batches changed nothing).
    pub took: Duration,
    /// The spool file's length after the commit, when it could be read (for a gauge).
    pub file_bytes: Option<u64>,
}

/// Why [`SpoolWorker::finish`] did not get the spool back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FinishError {
    /// The queued commits did not finish in time; the thread goes on with them, detached, until the process ends.
    #[error("the spool's queued commits did not finish within {0:?}")]
    TimedOut(Duration),
    /// The writer thread is gone without handing the spool back (it cannot panic on a commit; this is a bug).
    #[error("the spool's writer thread ended unexpectedly")]
    ThreadLost,
}

/// The spool's writer thread and its queue. Dropping it finishes the queued commits, waiting at most
/// [`SpoolWorker::set_drop_within`] (default [`DEFAULT_DROP_WITHIN`]): a blocking wait, so drop it (or call
/// [`SpoolWorker::finish`]) outside the async loop, e.g. after the runtime's `block_on` returns or in
/// `spawn_blocking`.
pub struct SpoolWorker {
    queue: Option<mpsc::Sender<(u64, SpoolBatch)>>,
    /// To report a batch the thread can no longer take, so that none is lost silently.
    results: UnboundedSender<Committed>,
    done: mpsc::Receiver<Spool>,
    thread: Option<JoinHandle<()>>,
    drop_within: Duration,
}

impl std::fmt::Debug for SpoolWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolWorker")
            .field("running", &self.thread.is_some())
            .field("drop_within", &self.drop_within)
            .finish()
    }
}

impl SpoolWorker {
    /// Starts the writer thread, which owns `spool` from now on. Commit outcomes arrive on the returned receiver,
    /// one [`Committed`] per commit, in order.
    pub fn spawn(spool: Spool) -> std::io::Result<(SpoolWorker, UnboundedReceiver<Committed>)> {
        let (queue, inbox) = mpsc::channel();
        let (results, results_rx) = unbounded_channel();
        let (done_tx, done) = mpsc::sync_channel(1);
        let thread_results = results.clone();
        let thread = std::thread::Builder::new()
            .name("spool-writer".to_owned())
            .spawn(move || {
                let spool = run(spool, &inbox, &thread_results);
                // The receiver is gone only if the worker handle gave up waiting: nobody wants the spool then.
                let _ = done_tx.send(spool);
            })?;
        Ok((
            SpoolWorker {
                queue: Some(queue),
                results,
                done,
                thread: Some(thread),
                drop_within: DEFAULT_DROP_WITHIN,
            },
            results_rx,
        ))
    }

    /// Queues `batch` for the writer; never blocks. `batch_id` must increase from one call to the next: a
    /// [`Committed`] reports the highest id it covers.
    pub fn submit(&self, batch_id: u64, batch: SpoolBatch) {
        let sent = match &self.queue {
            Some(queue) => queue.send((batch_id, batch)).is_ok(),
            None => false,
        };
        if !sent {
            // The thread is gone (it only ends when the queue closes, so this is a bug): say so, never drop the
            // batch silently.
            let _ = self.results.send(Committed {
                up_to: batch_id,
                batches: 1,
                result: Err("the spool's writer thread is gone".to_owned()),
                took: Duration::ZERO,
                file_bytes: None,
            });
        }
    }

    /// How long dropping the worker may wait for the queued commits.
    pub fn set_drop_within(&mut self, within: Duration) {
        self.drop_within = within;
    }

    /// Closes the queue, lets the thread commit what is queued (and compact the file if the spool is then empty),
    /// and returns the spool, waiting at most `within`. On [`FinishError::TimedOut`] the thread is left to finish
    /// on its own; the process may exit under it (the file stays consistent: redb commits are atomic).
    pub fn finish(mut self, within: Duration) -> Result<Spool, FinishError> {
        self.finish_inner(within)
    }

    fn finish_inner(&mut self, within: Duration) -> Result<Spool, FinishError> {
        self.queue = None;
        let Some(thread) = self.thread.take() else {
            return Err(FinishError::ThreadLost);
        };
        match self.done.recv_timeout(within) {
            Ok(spool) => {
                // It has handed the spool back, so it is returning: the join is immediate.
                let _ = thread.join();
                Ok(spool)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(FinishError::TimedOut(within)),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = thread.join();
                Err(FinishError::ThreadLost)
            }
        }
    }
}

impl Drop for SpoolWorker {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let within = self.drop_within;
            if let Err(e) = self.finish_inner(within) {
                log::warn!("{e}");
            }
        }
    }
}

/// What a delta gets while the spool is stale: it is not written.
pub const SKIPPED_WHILE_STALE: &str =
    "not written: an earlier commit failed, so only a full snapshot can make the spool right again";

/// The writer thread: take a batch, merge whatever queued behind it, commit once, report; until the queue closes.
///
/// After a failed commit the file lacks that batch's changes, so a later delta would give a file that is neither
/// an earlier state nor the current one (a job's record without its `received`, say). Deltas are therefore
/// reported failed without a write until a full snapshot commits: the file stays at the last state it held in full,
/// and a crash meanwhile recovers exactly that.
fn run(
    mut spool: Spool,
    inbox: &mpsc::Receiver<(u64, SpoolBatch)>,
    results: &UnboundedSender<Committed>,
) -> Spool {
    while let Ok((mut up_to, mut batch)) = inbox.recv() {
        let mut batches = 1;
        while let Ok((id, later)) = inbox.try_recv() {
            batch.merge(later);
            up_to = id;
            batches += 1;
        }
        let started = Instant::now();
        let skipped = spool.is_stale() && !batch.full_snapshot;
        let result = if skipped {
            Err(SKIPPED_WHILE_STALE.to_owned())
        } else if batch.is_empty() {
            Ok(())
        } else {
            spool.commit(&batch).map_err(|e| e.to_string())
        };
        let took = if batch.is_empty() || skipped {
            Duration::ZERO
        } else {
            started.elapsed()
        };
        let committed_ok = result.is_ok();
        // The runtime may have stopped listening (shutting down): the commit happened all the same.
        let _ = results.send(Committed {
            up_to,
            batches,
            result,
            took,
            file_bytes: spool.size_bytes().ok(),
        });
        if committed_ok {
            compact_if_worthwhile(&mut spool, COMPACT_ABOVE_BYTES);
        }
    }
    // Leave only live data behind after a clean stop, whatever the size.
    compact_if_worthwhile(&mut spool, 0);
    spool
}

fn compact_if_worthwhile(spool: &mut Spool, above_bytes: u64) {
    if !spool.is_empty() || spool.size_bytes().is_ok_and(|len| len <= above_bytes) {
        return;
    }
    match spool.compact_if_empty() {
        Ok(Some(c)) => log::debug!(
            "compacted the empty spool {}: {} -> {} bytes",
            spool.path().display(),
            c.before,
            c.after
        ),
        Ok(None) => {}
        // Nothing is lost: the file is only larger than it need be. The next emptying tries again.
        Err(e) => log::warn!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{JobStatus, JobStatusUpdate};
    use crate::spool::{SpoolIdentity, SpooledStatus};

    fn open(dir: &tempfile::TempDir) -> Spool {
        let identity = SpoolIdentity {
            hotkey_ss58: "5Hotkey".to_owned(),
            url: "ws://127.0.0.1:1/".to_owned(),
        };
        Spool::open(&dir.path().join("w.spool"), &identity)
            .unwrap()
            .spool
    }

    fn put(id: u64) -> SpoolBatch {
        SpoolBatch {
            put_statuses: vec![SpooledStatus {
                id,
                update: JobStatusUpdate::new(format!("job-{id}"), JobStatus::Accepted),
            }],
            remove_statuses: id.checked_sub(1).into_iter().collect(),
            ..SpoolBatch::default()
        }
    }

    /// What queued while the thread was busy is one commit: here everything is queued before it looks.
    #[test]
    fn batches_queued_behind_a_commit_are_merged_into_one() {
        let dir = tempfile::TempDir::new().unwrap();
        let spool = open(&dir);
        let (queue, inbox) = mpsc::channel();
        for id in 1..=10 {
            queue.send((id, put(id))).unwrap();
        }
        drop(queue);
        let (results, mut reports) = unbounded_channel();
        let spool = run(spool, &inbox, &results);
        let committed = reports.try_recv().unwrap();
        assert_eq!(
            (committed.up_to, committed.batches, committed.result),
            (10, 10, Ok(()))
        );
        assert!(reports.try_recv().is_err(), "one commit only");
        assert_eq!(spool.len(), (1, 0));
    }

    #[test]
    fn a_batch_that_changes_nothing_is_reported_without_a_write() {
        let dir = tempfile::TempDir::new().unwrap();
        let spool = open(&dir);
        let (queue, inbox) = mpsc::channel();
        queue.send((1, SpoolBatch::default())).unwrap();
        drop(queue);
        let (results, mut reports) = unbounded_channel();
        run(spool, &inbox, &results);
        let committed = reports.try_recv().unwrap();
        assert_eq!(
            (committed.up_to, committed.result, committed.took),
            (1, Ok(()), Duration::ZERO)
        );
    }

    /// After a failure, only a snapshot is written: a delta on a stale file would leave it inconsistent.
    #[test]
    fn a_stale_spool_writes_no_delta_until_a_snapshot() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut spool = open(&dir);
        spool.commit(&put(1)).unwrap();
        // Stale, as after a failed commit (tests/spool.rs fails real commits on a full tmpfs).
        let mut stale = spool;
        stale.mark_stale_for_tests();
        let (queue, inbox) = mpsc::channel();
        queue.send((1, put(2))).unwrap();
        drop(queue);
        let (results, mut reports) = unbounded_channel();
        let mut stale = run(stale, &inbox, &results);
        let skipped = reports.try_recv().unwrap();
        assert_eq!(skipped.result, Err(SKIPPED_WHILE_STALE.to_owned()));
        assert_eq!(stale.len(), (1, 0), "the delta was not written");
        let (queue, inbox) = mpsc::channel();
        queue
            .send((2, SpoolBatch::snapshot(put(3).put_statuses, Vec::new())))
            .unwrap();
        queue.send((3, put(4))).unwrap();
        drop(queue);
        stale = run(stale, &inbox, &results);
        let committed = reports.try_recv().unwrap();
        assert_eq!((committed.up_to, committed.result), (3, Ok(())));
        assert!(!stale.is_stale());
        assert_eq!(
            stale.len(),
            (1, 0),
            "snapshot {{3}}, then 4 put and 3 removed"
        );
    }

    #[tokio::test]
    async fn finish_hands_the_spool_back_after_the_queued_commits() {
        let dir = tempfile::TempDir::new().unwrap();
        let (worker, mut reports) = SpoolWorker::spawn(open(&dir)).unwrap();
        for id in 1..=5 {
            worker.submit(id, put(id));
        }
        let spool = worker.finish(Duration::from_secs(30)).unwrap();
        assert_eq!(spool.len(), (1, 0));
        let mut last = 0;
        while let Ok(c) = reports.try_recv() {
            assert_eq!(c.result, Ok(()));
            last = c.up_to;
        }
        assert_eq!(last, 5);
    }
}
