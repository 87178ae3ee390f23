//! The machine's side of the spool: status ids, the batch one step accumulates, which batches are durable, job
//! records, and what happens after a failed commit (stale, a full snapshot, retries with backoff).
//!
//! Owns the bookkeeping only; the machine decides when a status or a job is put or forgotten and calls in here.
//! Must never do I/O or read the clock: the batches it produces are carried out by the driver (`Action::Persist`)
//! and their outcome comes back as `Input::Persisted`. Inactive unless `Config::durable` is set: then every call
//! is a no-op and no batch is ever produced.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::spool::{HandlerRecord, JobRecord, SpoolBatch, SpooledStatus};

/// The first retry of a snapshot that failed waits this long; each further failure doubles it.
pub const SPOOL_RETRY_BASE: Duration = Duration::from_secs(1);
/// The longest wait between snapshot attempts while the spool keeps failing.
pub const SPOOL_RETRY_CAP: Duration = Duration::from_secs(60);

/// Whether the spool file holds what memory holds.
#[derive(Debug, Clone, PartialEq)]
enum Health {
    /// Every committed batch succeeded: deltas keep the file right.
    UpToDate,
    /// A commit failed: the file lacks changes memory holds, and only a full snapshot can make it right.
    Stale {
        /// When the first failure was reported.
        since: Instant,
        /// The snapshot being committed, if one is.
        snapshot: Option<u64>,
        /// When to write the next snapshot (when none is being committed).
        retry_at: Instant,
        /// The wait after the next failed snapshot.
        retry_delay: Duration,
    },
}

/// What a reported commit failure did, for the machine's event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Failure {
    /// When the next snapshot will be written (`None`: one is still being committed, or goes out in this step).
    pub retry_in: Option<Duration>,
}

/// The spool bookkeeping of one machine.
#[derive(Debug, Clone)]
pub(crate) struct Durability {
    enabled: bool,
    next_status_id: u64,
    next_batch_id: u64,
    /// Every batch up to this id has been reported (committed or failed): statuses held by them may go.
    released_up_to: u64,
    /// What this step (or, while a snapshot is being committed, every step since) changed.
    batch: SpoolBatch,
    /// Accepted jobs, until their terminal status is acknowledged.
    jobs: BTreeMap<String, JobRecord>,
    health: Health,
    /// The machine is stopping: this is the last batch, whatever the spool's health.
    stopping: bool,
}

impl Durability {
    pub(crate) fn new(enabled: bool) -> Self {
        Durability {
            enabled,
            next_status_id: 1,
            next_batch_id: 1,
            released_up_to: 0,
            batch: SpoolBatch::default(),
            jobs: BTreeMap::new(),
            health: Health::UpToDate,
            stopping: false,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Batches up to this id are reported; statuses they hold may be sent.
    pub(crate) fn released_up_to(&self) -> u64 {
        self.released_up_to
    }

    /// Since when the file has lacked changes memory holds.
    pub(crate) fn stale_since(&self) -> Option<Instant> {
        match self.health {
            Health::Stale { since, .. } => Some(since),
            Health::UpToDate => None,
        }
    }

    /// Job records kept (accepted jobs whose terminal status is not yet acknowledged).
    pub(crate) fn job_count(&self) -> usize {
        self.jobs.len()
    }

    /// Whether changes are recorded in the batch: not while stale with no snapshot under way (the next snapshot
    /// is built from memory, so a delta would be thrown away).
    fn tracking(&self) -> bool {
        self.enabled && !matches!(self.health, Health::Stale { snapshot: None, .. })
    }

    /// Allocates the next status id and records the status in the batch. Returns its id and the batch that must be
    /// durable before it is sent (`None` while stale: it goes at once, unprotected).
    pub(crate) fn put_status(
        &mut self,
        update: &crate::protocol::JobStatusUpdate,
    ) -> (u64, Option<u64>) {
        let id = self.next_status_id;
        self.next_status_id += 1;
        if self.tracking() {
            self.batch.put_statuses.push(SpooledStatus {
                id,
                update: update.clone(),
            });
        }
        let held_by = match self.health {
            Health::UpToDate => Some(self.next_batch_id),
            Health::Stale { .. } => None,
        };
        (id, held_by)
    }

    /// Continues status ids after those recovered.
    pub(crate) fn continue_ids_after(&mut self, max_recovered: u64) {
        self.next_status_id = self.next_status_id.max(max_recovered.saturating_add(1));
    }

    /// A status was answered: forget it.
    pub(crate) fn forget_status(&mut self, id: u64) {
        if self.tracking() {
            self.batch.remove_statuses.push(id);
        }
    }

    /// A job was accepted: record it (request text as received; the driver stamps the wall-clock time).
    pub(crate) fn put_job(&mut self, record: JobRecord) {
        if !self.enabled {
            return;
        }
        if self.tracking() {
            self.batch.put_jobs.push(record.clone());
        }
        self.jobs.insert(record.uuid.clone(), record);
    }

    /// A job read back from the spool: known, already on disk.
    pub(crate) fn recovered_job(&mut self, record: JobRecord) {
        self.jobs.insert(record.uuid.clone(), record);
    }

    /// The job's handler says where its work runs: update the record, unless the job was already forgotten (never
    /// re-inserted). Returns whether the record changed.
    pub(crate) fn attach(&mut self, uuid: &str, handler: HandlerRecord) -> bool {
        if !self.enabled {
            return false;
        }
        let Some(record) = self.jobs.get_mut(uuid) else {
            return false;
        };
        record.handler = Some(handler);
        let record = record.clone();
        if self.tracking() {
            // One put per job per batch: a job accepted and attached in one step is written once.
            match self.batch.put_jobs.iter_mut().find(|j| j.uuid == uuid) {
                Some(put) => *put = record,
                None => self.batch.put_jobs.push(record),
            }
        }
        true
    }

    /// Whether the job's record says its work survives the client (a Celery task), so it may be left running at a
    /// stop and re-attached after a restart.
    pub(crate) fn is_resumable(&self, uuid: &str) -> bool {
        self.enabled
            && matches!(
                self.jobs.get(uuid).and_then(|j| j.handler.as_ref()),
                Some(HandlerRecord::Celery { .. })
            )
    }

    /// Forget a job (its terminal status was answered, or it ended without one).
    pub(crate) fn forget_job(&mut self, uuid: &str) {
        if self.jobs.remove(uuid).is_some() && self.tracking() {
            self.batch.remove_jobs.push(uuid.to_owned());
        }
    }

    /// A commit was reported. `held_between` counts the statuses a failure releases unprotected. Returns the
    /// failure's details on `Err`, and on `Ok` whether the spool just became up to date again (with how long it
    /// was stale).
    pub(crate) fn persisted(
        &mut self,
        up_to: u64,
        ok: bool,
        now: Instant,
    ) -> Result<Option<Duration>, Failure> {
        // Nothing above the last batch emitted can have been committed.
        let up_to = up_to.min(self.next_batch_id.saturating_sub(1));
        self.released_up_to = self.released_up_to.max(up_to);
        if ok {
            if let Health::Stale {
                since,
                snapshot: Some(snapshot),
                ..
            } = self.health
                && up_to >= snapshot
            {
                self.health = Health::UpToDate;
                return Ok(Some(now.saturating_duration_since(since)));
            }
            return Ok(None);
        }
        let retry_in = match &mut self.health {
            Health::UpToDate => {
                // The first failure: a snapshot at once (this step), then back off if it fails too.
                self.health = Health::Stale {
                    since: now,
                    snapshot: None,
                    retry_at: now,
                    retry_delay: SPOOL_RETRY_BASE,
                };
                None
            }
            Health::Stale {
                snapshot: snapshot @ Some(_),
                retry_at,
                retry_delay,
                ..
            } if snapshot.is_some_and(|s| up_to >= s) => {
                *snapshot = None;
                *retry_at = now + *retry_delay;
                let waited = *retry_delay;
                *retry_delay = (*retry_delay * 2).min(SPOOL_RETRY_CAP);
                Some(waited)
            }
            // A batch sent before the first failure was known failed too: nothing new.
            Health::Stale { .. } => None,
        };
        if !self.tracking() {
            self.batch = SpoolBatch::default();
        }
        Err(Failure { retry_in })
    }

    /// The machine stops: this step's batch is the last one. A stale spool gets a snapshot now (none under way) or
    /// the changes made since the snapshot under way (they apply after it), so that a next start finds what memory
    /// holds if the disk allows it.
    pub(crate) fn stopping(&mut self) {
        self.stopping = true;
    }

    /// When a snapshot is due while stale and none is under way.
    pub(crate) fn retry_deadline(&self) -> Option<Instant> {
        match self.health {
            Health::Stale {
                snapshot: None,
                retry_at,
                ..
            } if self.enabled => Some(retry_at),
            _ => None,
        }
    }

    /// At the end of a step: the batch to persist, if any. Up to date: the step's delta, if it changed anything.
    /// Stale with a snapshot due: a full snapshot of `statuses` and the job records (what memory holds). Stale
    /// otherwise: nothing (the delta waits for the snapshot under way, or is dropped when the next snapshot will
    /// be built from memory).
    pub(crate) fn take_batch(
        &mut self,
        now: Instant,
        statuses: impl FnOnce() -> Vec<SpooledStatus>,
    ) -> Option<(u64, SpoolBatch)> {
        if !self.enabled {
            return None;
        }
        match &mut self.health {
            Health::UpToDate if self.batch.is_empty() => None,
            Health::UpToDate => {
                let id = self.next_batch_id;
                self.next_batch_id += 1;
                Some((id, std::mem::take(&mut self.batch)))
            }
            Health::Stale {
                snapshot: snapshot @ None,
                retry_at,
                ..
            } if *retry_at <= now || self.stopping => {
                let id = self.next_batch_id;
                self.next_batch_id += 1;
                *snapshot = Some(id);
                self.batch = SpoolBatch::default();
                Some((
                    id,
                    SpoolBatch::snapshot(statuses(), self.jobs.values().cloned().collect()),
                ))
            }
            Health::Stale { snapshot: None, .. } => {
                self.batch = SpoolBatch::default();
                None
            }
            Health::Stale { .. } if self.stopping && !self.batch.is_empty() => {
                let id = self.next_batch_id;
                self.next_batch_id += 1;
                Some((id, std::mem::take(&mut self.batch)))
            }
            Health::Stale { .. } => None,
        }
    }
}

/// Test support: the spool bookkeeping as the model checker projects it (`tests/model_check/`): two machines
/// whose bookkeeping differs here may persist, release or snapshot differently from then on.
#[cfg(feature = "test-support")]
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolView {
    /// The id the next status put gets.
    pub next_status_id: u64,
    /// The id the next `Persist` gets.
    pub next_batch_id: u64,
    /// Every batch up to this id has been reported.
    pub released_up_to: u64,
    /// Changes gathered and not yet emitted (non-empty between steps only while a snapshot is being committed).
    pub batch: SpoolBatch,
    /// The job records kept, in uuid order.
    pub jobs: Vec<JobRecord>,
    /// While stale: the snapshot being committed, when the next one is due, the wait after the next failure.
    /// (When it became stale is left out: it only reports how long it was.)
    pub stale: Option<(Option<u64>, Instant, Duration)>,
    /// The machine is stopping (its last batch).
    pub stopping: bool,
}

#[cfg(feature = "test-support")]
impl Durability {
    pub(crate) fn view(&self) -> SpoolView {
        SpoolView {
            next_status_id: self.next_status_id,
            next_batch_id: self.next_batch_id,
            released_up_to: self.released_up_to,
            batch: self.batch.clone(),
            jobs: self.jobs.values().cloned().collect(),
            stale: match self.health {
                Health::UpToDate => None,
                Health::Stale {
                    snapshot,
                    retry_at,
                    retry_delay,
                    ..
                } => Some((snapshot, retry_at, retry_delay)),
            },
            stopping: self.stopping,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::protocol::{JobStatus, JobStatusUpdate};

    fn record(uuid: &str) -> JobRecord {
        JobRecord {
            uuid: uuid.to_owned(),
            request: Arc::from("{}"),
            accepted_at_unix_ms: 0,
            handler: None,
        }
    }

    #[test]
    fn without_the_spool_nothing_is_recorded_or_emitted() {
        let mut d = Durability::new(false);
        let now = Instant::now();
        d.put_job(record("a"));
        assert!(!d.attach(
            "a",
            HandlerRecord::Celery {
                task_id: "t".into()
            }
        ));
        assert!(d.take_batch(now, Vec::new).is_none());
        assert_eq!(d.job_count(), 0);
    }

    #[test]
    fn snapshot_retries_back_off_from_one_second_to_a_minute() {
        let mut d = Durability::new(true);
        let mut now = Instant::now();
        d.put_status(&JobStatusUpdate::new("a", JobStatus::Accepted));
        let (first, _) = d.take_batch(now, Vec::new).expect("a delta");
        // The first failure: a snapshot in the same step.
        assert_eq!(
            d.persisted(first, false, now),
            Err(Failure { retry_in: None })
        );
        let mut waits = Vec::new();
        for _ in 0..9 {
            let (id, batch) = d.take_batch(now, Vec::new).expect("a snapshot is due");
            assert!(batch.full_snapshot);
            let Err(Failure {
                retry_in: Some(wait),
            }) = d.persisted(id, false, now)
            else {
                panic!("a failed snapshot schedules the next");
            };
            waits.push(wait.as_secs());
            assert!(
                d.take_batch(now, Vec::new).is_none(),
                "nothing before the retry"
            );
            now += wait;
            assert_eq!(d.retry_deadline(), Some(now));
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        let (id, _) = d.take_batch(now, Vec::new).expect("a snapshot is due");
        assert!(
            matches!(d.persisted(id, true, now), Ok(Some(_))),
            "up to date again"
        );
        assert_eq!(d.stale_since(), None);
    }

    #[test]
    fn a_stopping_stale_spool_writes_its_snapshot_at_once() {
        let mut d = Durability::new(true);
        let now = Instant::now();
        d.put_job(record("a"));
        let (id, _) = d.take_batch(now, Vec::new).expect("a delta");
        let _ = d.persisted(id, false, now);
        let (id, _) = d.take_batch(now, Vec::new).expect("the first snapshot");
        let _ = d.persisted(id, false, now);
        assert!(
            d.take_batch(now, Vec::new).is_none(),
            "the next waits a second"
        );
        d.stopping();
        let (_, last) = d.take_batch(now, Vec::new).expect("a last snapshot");
        assert!(last.full_snapshot);
        assert_eq!(last.put_jobs, [record("a")]);
    }

    #[test]
    fn a_forgotten_job_is_never_re_created_by_a_late_attach() {
        let mut d = Durability::new(true);
        d.put_job(record("a"));
        d.forget_job("a");
        assert!(!d.attach(
            "a",
            HandlerRecord::Exec {
                pgid: 1,
                start_time: 2
            }
        ));
        let (_, batch) = d.take_batch(Instant::now(), Vec::new).expect("a delta");
        assert_eq!(batch.put_jobs, [record("a")]);
        assert_eq!(batch.remove_jobs, ["a"]);
    }
}
