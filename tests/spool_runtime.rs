//! The client with a spool, over real loopback sockets against the reference facilitator and a real spool file in a
//! temporary directory: a run that leaves the spool empty, statuses a dead client never had answered sent again by
//! the next one, a job running when the client died reported `horde_failed` by the next one, a job whose work
//! outlives the client left running at the drain deadline and re-attached after a restart, and a spool of another
//! hotkey refused. "Dies" here is the run future dropped mid-flight (the loop stops without a drain; the writer
//! finishes what is queued); `tests/crash.rs` kills the program with SIGKILL.
#![cfg(feature = "spool")]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use facilitator_client::handler::{BoxFuture, EchoHandler, JobHandler, StatusSender};
use facilitator_client::machine::{Event, RESTARTED_WHILE_RUNNING, StopReason};
use facilitator_client::protocol::keys::Hotkey;
use facilitator_client::protocol::{JobRequest, JobStatus};
use facilitator_client::reference::{
    FacilitatorConfig, JobPlan, ReferenceFacilitator, StatusOutcome,
};
use facilitator_client::spool::{HandlerRecord, Spool, SpoolIdentity, SpoolOpenError};
use facilitator_client::{Client, ClientConfig, ConfigError, Outcome};
use tempfile::TempDir;

mod support;
use support::loopback::{GUARD, join, start};

fn hotkey() -> Hotkey {
    Hotkey::from_seed(&[7u8; 32])
}

fn config(facilitator: &ReferenceFacilitator, spool: &Path) -> ClientConfig {
    let mut config = support::loopback::client_config(facilitator);
    config.spool = Some(spool.to_path_buf());
    config
}

fn spawn(client: Client) -> tokio::task::JoinHandle<Outcome> {
    tokio::spawn(async move { client.run().await.expect("the client runs") })
}

/// Kills the client's loop where it stands: no drain, no close; the spool's writer finishes what is queued.
async fn kill(handle: tokio::task::JoinHandle<Outcome>) {
    handle.abort();
    let _ = handle.await;
}

fn spool_path(dir: &TempDir) -> PathBuf {
    dir.path().join("client.spool")
}

/// What the spool holds, read as a next start would.
fn spool_content(path: &Path, facilitator: &ReferenceFacilitator) -> (usize, usize) {
    let identity = SpoolIdentity {
        hotkey_ss58: hotkey().ss58(),
        url: facilitator.url(),
    };
    let opened = Spool::open(path, &identity).expect("the spool opens");
    (opened.recovered.statuses.len(), opened.recovered.jobs.len())
}

/// What `resume` was given: the job, its record, when it was accepted.
type Resumed = (String, HandlerRecord, Option<SystemTime>);

/// A job handler that reports `accepted`, says where its work runs (if told), and then waits forever (until
/// cancelled); `resume` (a restarted client following that work) reports `completed`.
#[derive(Clone, Default)]
struct LongJob {
    attach: Option<HandlerRecord>,
    resumed: Arc<Mutex<Vec<Resumed>>>,
}

impl JobHandler for LongJob {
    fn run(&self, _job: Arc<JobRequest>, statuses: StatusSender) -> BoxFuture {
        let attach = self.attach.clone();
        Box::pin(async move {
            if let Some(record) = attach {
                let _ = statuses.attached(record).await;
            }
            let _ = statuses.status(JobStatus::Accepted).await;
            std::future::pending::<()>().await;
        })
    }

    fn resume(
        &self,
        job: Arc<JobRequest>,
        record: &HandlerRecord,
        accepted_at: Option<SystemTime>,
        statuses: StatusSender,
    ) -> Option<BoxFuture> {
        if !matches!(record, HandlerRecord::Celery { .. }) {
            return None;
        }
        self.resumed
            .lock()
            .unwrap()
            .push((job.uuid().to_owned(), record.clone(), accepted_at));
        Some(Box::pin(async move {
            let _ = statuses.status(JobStatus::Completed).await;
        }))
    }
}

#[tokio::test]
async fn a_run_with_a_spool_delivers_everything_and_leaves_the_spool_empty() {
    let dir = TempDir::new().unwrap();
    let path = spool_path(&dir);
    let facilitator = start(FacilitatorConfig {
        jobs: JobPlan::count(30),
        ..Default::default()
    })
    .await;
    let client = Client::new(
        config(&facilitator, &path),
        hotkey(),
        Arc::new(EchoHandler::new()),
    )
    .unwrap();
    assert_eq!(client.spool_path(), Some(path.as_path()));
    let shutdown = client.shutdown_handle();
    let metrics = client.metrics();
    let run = spawn(client);
    let records = facilitator
        .wait_for(|r| r.finished_jobs() == 30, GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for job in &records.jobs {
        assert_eq!(
            records.statuses_of(&job.uuid),
            [
                JobStatus::Received,
                JobStatus::Accepted,
                JobStatus::Completed
            ]
        );
    }
    let live = metrics.snapshot();
    let spool = live.spool.expect("spool metrics while running");
    assert!(spool.batches > 0 && spool.errors == 0, "{spool:?}");
    shutdown.shutdown();
    let outcome = join(run).await;
    assert_eq!(outcome.reason, StopReason::Graceful);
    let summary = outcome.spool.expect("a spool summary");
    assert!(summary.up_to_date, "{summary}");
    assert_eq!((summary.statuses, summary.jobs), (0, 0), "{summary}");
    assert!(
        outcome.metrics.counters.spool_batches >= 30,
        "at least one batch per job: {:?}",
        outcome.metrics.counters
    );
    assert_eq!(spool_content(&path, &facilitator), (0, 0));
}

#[tokio::test]
async fn statuses_a_dead_client_never_had_answered_are_sent_again_by_the_next_one() {
    let dir = TempDir::new().unwrap();
    let path = spool_path(&dir);
    let facilitator = start(FacilitatorConfig::default()).await;
    let first = Client::new(
        config(&facilitator, &path),
        hotkey(),
        Arc::new(EchoHandler::new()),
    )
    .unwrap();
    let run = spawn(first);
    facilitator
        .wait_for(|r| r.authenticated_connections() == 1, GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The facilitator stores what it is sent but answers nothing: every status stays unacknowledged.
    facilitator.hold_responses();
    let uuids: Vec<String> = (0..5).map(|_| facilitator.push_job()).collect();
    facilitator
        .wait_for(|r| r.finished_jobs() == 5, GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    kill(run).await;
    facilitator.release_responses();
    assert_eq!(
        spool_content(&path, &facilitator),
        (15, 5),
        "every status and job of the dead client is in the spool"
    );

    let second = Client::new(
        config(&facilitator, &path),
        hotkey(),
        Arc::new(EchoHandler::new()),
    )
    .unwrap();
    let shutdown = second.shutdown_handle();
    let run = spawn(second);
    let records = facilitator
        .wait_for(|r| r.duplicates().count() == 15, GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for uuid in &uuids {
        // Stored once each, in order; the re-sends were answered job.integrity_error; nothing more was added.
        assert_eq!(
            records.statuses_of(uuid),
            [
                JobStatus::Received,
                JobStatus::Accepted,
                JobStatus::Completed
            ]
        );
    }
    assert!(
        records
            .duplicates()
            .all(|d| d.outcome == StatusOutcome::IntegrityError)
    );
    shutdown.shutdown();
    let outcome = join(run).await;
    assert_eq!(outcome.reason, StopReason::Graceful);
    let c = &outcome.metrics.counters;
    assert_eq!(
        (c.statuses_recovered, c.jobs_recovered, c.jobs_interrupted),
        (15, 5, 0),
        "{c:?}"
    );
    assert_eq!(
        c.statuses_delivered, 15,
        "integrity_error on a re-send means delivered"
    );
    assert_eq!(spool_content(&path, &facilitator), (0, 0));
}

#[tokio::test]
async fn a_job_running_when_the_client_died_is_reported_horde_failed_by_the_next_one() {
    let dir = TempDir::new().unwrap();
    let path = spool_path(&dir);
    let facilitator = start(FacilitatorConfig::default()).await;
    let first = Client::new(
        config(&facilitator, &path),
        hotkey(),
        Arc::new(LongJob::default()),
    )
    .unwrap();
    let run = spawn(first);
    let uuid = facilitator.push_job();
    facilitator
        .wait_for(
            |r| r.statuses_of(&uuid).contains(&JobStatus::Accepted),
            GUARD,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    kill(run).await;

    let second = Client::new(
        config(&facilitator, &path),
        hotkey(),
        Arc::new(EchoHandler::new()),
    )
    .unwrap();
    let shutdown = second.shutdown_handle();
    let run = spawn(second);
    let records = facilitator
        .wait_for(|r| r.job(&uuid).is_some_and(|j| j.is_finished()), GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        records.statuses_of(&uuid),
        [
            JobStatus::Received,
            JobStatus::Accepted,
            JobStatus::HordeFailed
        ]
    );
    let failed = records
        .stored()
        .find(|s| s.uuid == uuid && s.status == JobStatus::HordeFailed)
        .expect("horde_failed stored");
    let details = &failed.metadata["horde_failure_details"];
    assert_eq!(details["reported_by"], "validator");
    assert_eq!(details["reason"], "generic_error");
    assert_eq!(details["message"], RESTARTED_WHILE_RUNNING);
    shutdown.shutdown();
    let outcome = join(run).await;
    assert_eq!(outcome.metrics.counters.jobs_interrupted, 1);
    assert_eq!(spool_content(&path, &facilitator), (0, 0));
}

#[tokio::test]
async fn work_that_outlives_the_client_is_left_running_at_the_drain_deadline_and_re_attached_after_a_restart()
 {
    let dir = TempDir::new().unwrap();
    let path = spool_path(&dir);
    let facilitator = start(FacilitatorConfig::default()).await;
    let handler = LongJob {
        attach: Some(HandlerRecord::Celery {
            task_id: "task-42".to_owned(),
        }),
        ..LongJob::default()
    };
    let mut settings = config(&facilitator, &path);
    settings.machine.drain_timeout = Duration::from_millis(500);
    let first = Client::new(settings, hotkey(), Arc::new(handler.clone())).unwrap();
    let shutdown = first.shutdown_handle();
    let run = spawn(first);
    let uuid = facilitator.push_job();
    facilitator
        .wait_for(
            |r| r.statuses_of(&uuid).contains(&JobStatus::Accepted),
            GUARD,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    shutdown.shutdown();
    let outcome = join(run).await;
    // Not failed: left running, and kept in the spool for the next start.
    assert_eq!(outcome.reason, StopReason::DrainTimedOut);
    assert_eq!(outcome.metrics.counters.jobs_left_running, 1);
    let summary = outcome.spool.expect("a spool summary");
    assert!(summary.up_to_date, "{summary}");
    assert_eq!((summary.statuses, summary.jobs), (0, 1), "{summary}");
    assert_eq!(
        facilitator.snapshot().statuses_of(&uuid),
        [JobStatus::Received, JobStatus::Accepted]
    );

    let second = Client::new(
        config(&facilitator, &path),
        hotkey(),
        Arc::new(handler.clone()),
    )
    .unwrap();
    let shutdown = second.shutdown_handle();
    let run = spawn(second);
    let records = facilitator
        .wait_for(|r| r.job(&uuid).is_some_and(|j| j.is_finished()), GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        records.statuses_of(&uuid),
        [
            JobStatus::Received,
            JobStatus::Accepted,
            JobStatus::Completed
        ]
    );
    {
        let resumed = handler.resumed.lock().unwrap();
        assert_eq!(resumed.len(), 1);
        let (resumed_uuid, record, accepted_at) = &resumed[0];
        assert_eq!(resumed_uuid, &uuid);
        assert_eq!(
            record,
            &HandlerRecord::Celery {
                task_id: "task-42".to_owned()
            }
        );
        let age = accepted_at
            .expect("the acceptance time was spooled")
            .elapsed()
            .expect("in the past");
        assert!(age < GUARD, "accepted {age:?} ago");
    }
    shutdown.shutdown();
    let outcome = join(run).await;
    assert_eq!(outcome.reason, StopReason::Graceful);
    assert_eq!(outcome.metrics.counters.jobs_resumed, 1);
    assert_eq!(spool_content(&path, &facilitator), (0, 0));
}

#[tokio::test]
async fn a_spool_of_another_hotkey_is_refused_naming_both() {
    let dir = TempDir::new().unwrap();
    let path = spool_path(&dir);
    let facilitator = start(FacilitatorConfig::default()).await;
    let other = Hotkey::from_seed(&[9u8; 32]);
    drop(
        Client::new(
            config(&facilitator, &path),
            other.clone(),
            Arc::new(EchoHandler::new()),
        )
        .unwrap(),
    );
    let refused = Client::new(
        config(&facilitator, &path),
        hotkey(),
        Arc::new(EchoHandler::new()),
    );
    match refused {
        Err(ConfigError::Spool(SpoolOpenError::WrongOwner {
            spool_hotkey,
            our_hotkey,
            ..
        })) => {
            assert_eq!(spool_hotkey, other.ss58());
            assert_eq!(our_hotkey, hotkey().ss58());
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a spool of another hotkey was accepted"),
    }
}

#[tokio::test]
async fn the_next_start_kills_what_a_dead_client_s_exec_job_left_running() {
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new().unwrap();
    let path = spool_path(&dir);
    let facilitator = start(FacilitatorConfig::default()).await;
    // What a killed client leaves: its job's shell in its own group, with a child.
    let mut leader = std::process::Command::new("sh")
        .args(["-c", "sleep 1000 & wait"])
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = leader.id() as i32;
    let start_time = facilitator_client::handler::orphans::proc_stat(pgid)
        .unwrap()
        .start_time;
    {
        let identity = SpoolIdentity {
            hotkey_ss58: hotkey().ss58(),
            url: facilitator.url(),
        };
        let mut opened = Spool::open(&path, &identity).unwrap();
        let uuid = "00000000-0000-4000-8000-00000000dead";
        opened
            .spool
            .commit(&facilitator_client::spool::SpoolBatch {
                put_jobs: vec![facilitator_client::spool::JobRecord {
                    uuid: uuid.to_owned(),
                    request: Arc::from(format!(r#"{{"uuid":"{uuid}"}}"#)),
                    accepted_at_unix_ms: 1,
                    handler: Some(HandlerRecord::Exec { pgid, start_time }),
                }],
                ..Default::default()
            })
            .unwrap();
    }
    let client = Client::new(
        config(&facilitator, &path),
        hotkey(),
        Arc::new(EchoHandler::new()),
    )
    .unwrap();
    let shutdown = client.shutdown_handle();
    let mut events = client.subscribe();
    let run = spawn(client);
    // Killed at start, before anything else.
    let status = tokio::time::timeout(GUARD, tokio::task::spawn_blocking(move || leader.wait()))
        .await
        .expect("the spooled group is killed")
        .unwrap()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    // The facilitator does not know this job: its horde_failed is answered job.not_found, and never retried.
    let refused = async {
        loop {
            match events.recv().await {
                Ok(Event::StatusRefused { status, .. }) => return status,
                Ok(_) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    };
    let status = tokio::time::timeout(GUARD, refused)
        .await
        .expect("the horde_failed is answered");
    assert_eq!(status, JobStatus::HordeFailed);
    shutdown.shutdown();
    let outcome = join(run).await;
    let c = &outcome.metrics.counters;
    assert_eq!((c.jobs_interrupted, c.statuses_refused), (1, 1), "{c:?}");
    assert_eq!(spool_content(&path, &facilitator), (0, 0));
}
