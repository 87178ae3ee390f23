//! What the spool holds, as plain data: the batch of changes one loop turn makes durable ([`SpoolBatch`]), the
//! records in it ([`SpooledStatus`], [`JobRecord`]), and what a restart finds ([`Recovered`]).
//!
//! Owns: the meaning of a batch (a full snapshot or a delta, and the order its parts apply in) and how queued
//! batches merge into one commit ([`SpoolBatch::merge`]). Compiled in every build, the pure core's included: the
//! machine emits these values, so this module must never touch a file, a clock or tokio.
//!
//! The serde forms of [`JobRecord`] and [`HandlerRecord`] are the spool file's record format (format version 1 in
//! `store.rs`): changing a field name or meaning needs a new format version.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::protocol::JobStatusUpdate;

/// One durable commit's worth of changes, produced per loop turn.
///
/// Applying a batch to the spool's content: a full snapshot first empties it; then every `put_*` inserts (or
/// replaces, by id or uuid); then every `remove_*` deletes. So a record that a batch both puts and removes is gone
/// afterwards, and a snapshot's content is exactly its puts minus its removes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpoolBatch {
    /// `true`: replace the whole content with exactly what this batch lists (written after a failed commit, when
    /// the file may lack an earlier batch's changes).
    pub full_snapshot: bool,
    /// New status updates of accepted jobs.
    pub put_statuses: Vec<SpooledStatus>,
    /// Ids of statuses acknowledged by the facilitator (forget them).
    pub remove_statuses: Vec<u64>,
    /// Accepted jobs: insert, or replace the record with the same uuid (e.g. once the handler's process is known).
    pub put_jobs: Vec<JobRecord>,
    /// Uuids of jobs whose terminal status was acknowledged (forget them).
    pub remove_jobs: Vec<String>,
}

impl SpoolBatch {
    /// A full snapshot: after its commit the spool holds exactly these statuses and jobs.
    pub fn snapshot(statuses: Vec<SpooledStatus>, jobs: Vec<JobRecord>) -> SpoolBatch {
        SpoolBatch {
            full_snapshot: true,
            put_statuses: statuses,
            put_jobs: jobs,
            ..SpoolBatch::default()
        }
    }

    /// Applies this batch to an in-memory picture of the spool's content, with exactly the meaning above: the
    /// reference the store, the simulation, the scenarios and the model checker all hold a file to.
    pub fn apply_to(
        &self,
        statuses: &mut BTreeMap<u64, JobStatusUpdate>,
        jobs: &mut BTreeMap<String, JobRecord>,
    ) {
        if self.full_snapshot {
            statuses.clear();
            jobs.clear();
        }
        for put in &self.put_statuses {
            statuses.insert(put.id, put.update.clone());
        }
        for job in &self.put_jobs {
            jobs.insert(job.uuid.clone(), job.clone());
        }
        for id in &self.remove_statuses {
            statuses.remove(id);
        }
        for uuid in &self.remove_jobs {
            jobs.remove(uuid);
        }
    }

    /// Whether committing this batch would change nothing (a delta with no puts and no removes). A full snapshot
    /// is never empty: it clears what is not listed.
    pub fn is_empty(&self) -> bool {
        !self.full_snapshot
            && self.put_statuses.is_empty()
            && self.remove_statuses.is_empty()
            && self.put_jobs.is_empty()
            && self.remove_jobs.is_empty()
    }

    /// Number of records put or removed, for logs and metrics.
    pub fn len(&self) -> usize {
        self.put_statuses.len()
            + self.remove_statuses.len()
            + self.put_jobs.len()
            + self.remove_jobs.len()
    }

    /// Folds `later` into `self`, so that applying the result has the same effect as applying `self` and then
    /// `later`, to any content. The worker uses it to commit everything queued behind a slow fsync at once.
    ///
    /// A later snapshot replaces everything before it; a snapshot followed by deltas stays a snapshot, with the
    /// deltas applied to its lists (its removes then have nothing left to remove and are dropped).
    pub fn merge(&mut self, later: SpoolBatch) {
        if later.full_snapshot {
            *self = later;
            return;
        }
        let SpoolBatch {
            full_snapshot: _,
            mut put_statuses,
            remove_statuses,
            mut put_jobs,
            remove_jobs,
        } = later;
        if self.full_snapshot {
            // A snapshot's own removes apply to its own puts: fold them in, so that what it lists is what it holds
            // and a later put of a record it removed is not undone by its removes.
            self.fold_removes_into_snapshot();
        }

        // Statuses, by id.
        let later_removed: HashSet<u64> = remove_statuses.iter().copied().collect();
        let later_put: HashSet<u64> = put_statuses.iter().map(|s| s.id).collect();
        // An earlier put is overridden by a later put of the same id, and undone by a later remove.
        self.put_statuses
            .retain(|s| !later_removed.contains(&s.id) && !later_put.contains(&s.id));
        if self.full_snapshot {
            // Within `later`, removes apply after puts: a snapshot has no removes, so drop them from its puts.
            put_statuses.retain(|s| !later_removed.contains(&s.id));
            self.put_statuses.extend(put_statuses);
        } else {
            // An earlier remove followed by a later put: the put must survive (removes apply after puts).
            self.remove_statuses.retain(|id| !later_put.contains(id));
            self.put_statuses.extend(put_statuses);
            self.remove_statuses.extend(remove_statuses);
        }

        // Jobs, by uuid: the same rules.
        let later_removed: HashSet<&str> = remove_jobs.iter().map(String::as_str).collect();
        let later_put: HashSet<String> = put_jobs.iter().map(|j| j.uuid.clone()).collect();
        self.put_jobs.retain(|j| {
            !later_removed.contains(j.uuid.as_str()) && !later_put.contains(j.uuid.as_str())
        });
        if self.full_snapshot {
            put_jobs.retain(|j| !later_removed.contains(j.uuid.as_str()));
            self.put_jobs.extend(put_jobs);
        } else {
            self.remove_jobs
                .retain(|uuid| !later_put.contains(uuid.as_str()));
            self.put_jobs.extend(put_jobs);
            self.remove_jobs.extend(remove_jobs);
        }
    }
}

impl SpoolBatch {
    fn fold_removes_into_snapshot(&mut self) {
        if !self.remove_statuses.is_empty() {
            let removed: HashSet<u64> = self.remove_statuses.drain(..).collect();
            self.put_statuses.retain(|s| !removed.contains(&s.id));
        }
        if !self.remove_jobs.is_empty() {
            let removed: HashSet<String> = self.remove_jobs.drain(..).collect();
            self.put_jobs.retain(|j| !removed.contains(&j.uuid));
        }
    }
}

/// A status update of an accepted job, with the id that orders it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpooledStatus {
    /// Monotonic over the life of the spool (the machine allocates it): recovery replays in ascending id, which
    /// is the order the statuses were produced in, so per-job order holds across a restart.
    pub id: u64,
    /// The update, exactly as it will be sent.
    pub update: JobStatusUpdate,
}

/// An accepted job, as much of it as a restart needs to report how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's uuid (the key in the spool).
    pub uuid: String,
    /// The job request's text exactly as received (`JobRequest::shared_text()`): its signature covers it.
    #[serde(with = "arc_str")]
    pub request: Arc<str>,
    /// When the client accepted it, milliseconds since the Unix epoch.
    pub accepted_at_unix_ms: u64,
    /// How to find the handler's work after a restart; `None` until the handler has started it.
    pub handler: Option<HandlerRecord>,
}

/// Where a job's handler is running it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HandlerRecord {
    /// An `exec:` job's process group.
    Exec {
        /// The process group id (the leader's pid).
        pgid: i32,
        /// The leader's start time, field 22 of `/proc/<pid>/stat`, in clock ticks since boot: a live process
        /// group with another start time is a reused pid, never to be killed.
        start_time: u64,
    },
    /// A job handed to Celery.
    Celery {
        /// The Celery task id, to read its result.
        task_id: String,
    },
}

/// What a spool held when it was opened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovered {
    /// Unacknowledged statuses, in ascending id (the order they were produced in).
    pub statuses: Vec<SpooledStatus>,
    /// Jobs accepted and not yet finished with an acknowledged terminal status, in uuid order.
    pub jobs: Vec<JobRecord>,
}

impl Recovered {
    /// Whether the spool held nothing.
    pub fn is_empty(&self) -> bool {
        self.statuses.is_empty() && self.jobs.is_empty()
    }

    /// The highest status id recovered: the machine's next id must be above it.
    pub fn max_status_id(&self) -> Option<u64> {
        self.statuses.iter().map(|s| s.id).max()
    }
}

/// `Arc<str>` as a JSON string (serde's `rc` feature would do the same for every `Arc` in the crate).
mod arc_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(value)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(d).map(Arc::from)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::protocol::JobStatus;

    /// The spool's content as a model: what applying batches in order leaves.
    #[derive(Debug, Default, Clone, PartialEq)]
    struct Content {
        statuses: BTreeMap<u64, JobStatusUpdate>,
        jobs: BTreeMap<String, JobRecord>,
    }

    /// The documented meaning of a batch, written the plainest way.
    fn apply(content: &mut Content, batch: &SpoolBatch) {
        if batch.full_snapshot {
            *content = Content::default();
        }
        for s in &batch.put_statuses {
            content.statuses.insert(s.id, s.update.clone());
        }
        for j in &batch.put_jobs {
            content.jobs.insert(j.uuid.clone(), j.clone());
        }
        for id in &batch.remove_statuses {
            content.statuses.remove(id);
        }
        for uuid in &batch.remove_jobs {
            content.jobs.remove(uuid);
        }
    }

    fn status(id: u64, tag: u8) -> SpooledStatus {
        let statuses = [JobStatus::Accepted, JobStatus::Completed, JobStatus::Failed];
        SpooledStatus {
            id,
            update: JobStatusUpdate::new(
                format!("job-{id}"),
                statuses[usize::from(tag) % statuses.len()],
            ),
        }
    }

    fn job(uuid: u8, tag: u8) -> JobRecord {
        JobRecord {
            uuid: format!("job-{uuid}"),
            request: Arc::from(format!("{{\"uuid\":\"job-{uuid}\"}}")),
            accepted_at_unix_ms: u64::from(tag),
            handler: (tag % 2 == 1).then_some(HandlerRecord::Exec {
                pgid: i32::from(tag),
                start_time: 7,
            }),
        }
    }

    // Small key spaces so puts and removes of the same record meet often.
    fn batch_strategy() -> impl Strategy<Value = SpoolBatch> {
        (
            prop::bool::weighted(0.2),
            prop::collection::vec((0u64..6, any::<u8>()), 0..5),
            prop::collection::vec(0u64..6, 0..4),
            prop::collection::vec((0u8..5, any::<u8>()), 0..4),
            prop::collection::vec(0u8..5, 0..3),
        )
            .prop_map(|(full_snapshot, ps, rs, pj, rj)| SpoolBatch {
                full_snapshot,
                put_statuses: ps.into_iter().map(|(id, t)| status(id, t)).collect(),
                remove_statuses: rs,
                put_jobs: pj.into_iter().map(|(u, t)| job(u, t)).collect(),
                remove_jobs: rj.into_iter().map(|u| format!("job-{u}")).collect(),
            })
    }

    fn content_strategy() -> impl Strategy<Value = Content> {
        batch_strategy().prop_map(|b| {
            let mut c = Content::default();
            apply(&mut c, &b);
            c
        })
    }

    proptest! {
        // Failures are kept beside this file (src/spool/record.proptest-regressions), not in a folder at the top.
        #![proptest_config(ProptestConfig {
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::SourceParallel("proptest-regressions"),
            )),
            ..ProptestConfig::default()
        })]

        #[test]
        fn merging_queued_batches_commits_what_applying_them_in_turn_would(
            start in content_strategy(),
            batches in prop::collection::vec(batch_strategy(), 1..6),
        ) {
            let mut one_by_one = start.clone();
            for b in &batches {
                apply(&mut one_by_one, b);
            }
            let mut merged = batches[0].clone();
            for b in &batches[1..] {
                merged.merge(b.clone());
            }
            let mut at_once = start;
            apply(&mut at_once, &merged);
            prop_assert_eq!(at_once, one_by_one);
            // A merge never invents a snapshot, nor loses one.
            prop_assert_eq!(merged.full_snapshot, batches.iter().any(|b| b.full_snapshot));
        }
    }

    #[test]
    fn a_snapshot_followed_by_deltas_stays_a_snapshot_with_the_deltas_applied() {
        let mut merged = SpoolBatch::snapshot(vec![status(1, 0), status(2, 0)], vec![job(1, 0)]);
        merged.merge(SpoolBatch {
            put_statuses: vec![status(3, 1)],
            remove_statuses: vec![1],
            put_jobs: vec![job(2, 0)],
            remove_jobs: vec!["job-1".to_owned()],
            ..SpoolBatch::default()
        });
        assert!(merged.full_snapshot);
        let ids: Vec<u64> = merged.put_statuses.iter().map(|s| s.id).collect();
        assert_eq!(ids, [2, 3]);
        assert_eq!(merged.put_jobs, [job(2, 0)]);
        assert!(merged.remove_statuses.is_empty() && merged.remove_jobs.is_empty());
    }

    #[test]
    fn a_later_snapshot_replaces_everything_queued_before_it() {
        let mut merged = SpoolBatch {
            put_statuses: vec![status(1, 0)],
            remove_jobs: vec!["job-3".to_owned()],
            ..SpoolBatch::default()
        };
        let snapshot = SpoolBatch::snapshot(vec![status(9, 2)], Vec::new());
        merged.merge(snapshot.clone());
        assert_eq!(merged, snapshot);
    }

    #[test]
    fn an_empty_delta_is_empty_and_a_snapshot_never_is() {
        assert!(SpoolBatch::default().is_empty());
        assert!(!SpoolBatch::snapshot(Vec::new(), Vec::new()).is_empty());
        let mut b = SpoolBatch::default();
        b.remove_statuses.push(4);
        assert!(!b.is_empty());
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn a_job_record_keeps_the_request_text_byte_for_byte() {
        let text = "{\"uuid\":\"é\\u00e9\",\"env\":{\"B\":\"1\",\"A\":\"2\"},\"x\":1.0e0}";
        let record = JobRecord {
            uuid: "u".to_owned(),
            request: Arc::from(text),
            accepted_at_unix_ms: 1_700_000_000_000,
            handler: Some(HandlerRecord::Celery {
                task_id: "t-1".to_owned(),
            }),
        };
        let json = serde_json::to_string(&record).unwrap();
        let back: JobRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(&*back.request, text);
        assert_eq!(back, record);
        assert!(
            json.contains(r#""handler":{"kind":"celery","task_id":"t-1"}"#),
            "{json}"
        );
        let exec = serde_json::to_string(&HandlerRecord::Exec {
            pgid: 42,
            start_time: 123,
        })
        .unwrap();
        assert_eq!(exec, r#"{"kind":"exec","pgid":42,"start_time":123}"#);
    }

    #[test]
    fn recovered_reports_the_highest_status_id() {
        let r = Recovered {
            statuses: vec![status(3, 0), status(10, 0)],
            jobs: Vec::new(),
        };
        assert_eq!(r.max_status_id(), Some(10));
        assert!(!r.is_empty());
        assert!(Recovered::default().is_empty());
    }
}
