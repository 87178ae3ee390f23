//! Shutdown under load: a shutdown request in the middle of a flood of jobs, some finishing at once, some taking
//! longer than the drain allows. Every status the client accepted is either delivered (stored at the facilitator
//! and acknowledged) or reported undeliverable, by count in `Outcome.undelivered` and in the final log line, and
//! each job's statuses are whole and in order across both; the run ends within the drain timeout plus the close
//! timeout. Once over a healthy link, once with the link going half-open just before the request.
//!
//! And a shutdown while the facilitator keeps 1,000 jobs outstanding and sends a new one whenever one is answered
//! (`completed`, or `rejected` / `busy` during the drain): the drain ends when the work accepted before the request
//! ends, long before its deadline, because the busy answers to the jobs that keep arriving never hold it open.
#![cfg(feature = "runtime")]

mod support;

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use facilitator_client::handler::{BoxFuture, EchoHandler, JobHandler, StatusSender};
use facilitator_client::machine::StopReason;
use facilitator_client::protocol::{JobRejectionReason, JobRequest, JobStatus};
use facilitator_client::reference::{FacilitatorConfig, JobPlan, ReferenceFacilitator};
use facilitator_client::{Client, ClientConfig, Outcome};

use support::proxy::{Dir, Proxy};
use support::{ECHO_STATUSES, LogCapture, RecordingEcho, fast_client_config, hotkey};

/// Both tests read the process's log: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const DRAIN: Duration = Duration::from_secs(1);
const CLOSE: Duration = Duration::from_millis(500);
/// On a loaded machine, on top of drain + close.
const SLACK: Duration = Duration::from_secs(2);
const GUARD: Duration = Duration::from_secs(60);

/// Accepted at once, then, by the job's UUID: most complete at once, some after 100-300 ms (well inside the
/// drain), one in twenty never (cancelled at the drain deadline). None completes near the deadline: a status a
/// handler sends just as the deadline passes would arrive after its job's `horde_failed` report (noticed, not this
/// test's subject). Records what it was given.
#[derive(Debug, Clone, Default)]
struct SlowJobs {
    dispatched: Arc<Mutex<HashSet<String>>>,
}

impl JobHandler for SlowJobs {
    fn run(&self, job: Arc<JobRequest>, statuses: StatusSender) -> BoxFuture {
        let uuid = job.uuid().to_owned();
        self.dispatched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(uuid.clone());
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        uuid.hash(&mut hasher);
        let draw = hasher.finish() % 100;
        Box::pin(async move {
            if statuses.status(JobStatus::Accepted).await.is_err() {
                return;
            }
            match draw {
                0..5 => std::future::pending().await,
                5..20 => tokio::time::sleep(Duration::from_millis(100 + draw * 10)).await,
                _ => {}
            }
            let _ = statuses.send(EchoHandler::completed(uuid)).await;
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_in_a_flood_of_jobs_delivers_or_reports_every_status() {
    let run = shutdown_under_load(false).await;
    assert!(
        matches!(
            run.outcome.reason,
            StopReason::Graceful | StopReason::DrainTimedOut
        ),
        "{:?}",
        run.outcome.reason
    );
    assert!(
        run.outcome.metrics.counters.jobs_cancelled > 0,
        "some jobs outlived the drain and were reported horde_failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_as_the_link_goes_half_open_reports_what_it_could_not_deliver() {
    let run = shutdown_under_load(true).await;
    assert!(
        matches!(
            run.outcome.reason,
            StopReason::ConnectionLostWhileDraining | StopReason::DrainTimedOut
        ),
        "{:?}",
        run.outcome.reason
    );
    assert!(
        !run.outcome.undelivered.is_empty(),
        "statuses sent into the dead link are reported undelivered"
    );
}

struct Run {
    outcome: Outcome,
}

async fn shutdown_under_load(link_dies: bool) -> Run {
    let _serial = SERIAL.lock().await;
    let log = LogCapture::install();
    log.take();
    let facilitator = ReferenceFacilitator::start(FacilitatorConfig {
        jobs: JobPlan::unlimited().max_open(64),
        ..FacilitatorConfig::default()
    })
    .await
    .expect("the reference facilitator starts");
    let proxy = Proxy::start(facilitator.local_addr(), 0)
        .await
        .expect("the proxy starts");
    let mut config = fast_client_config(&proxy.url(), &facilitator.signer_ss58());
    config.machine.drain_timeout = DRAIN;
    config.machine.close_timeout = CLOSE;
    let handler = SlowJobs::default();
    let client = Client::new(config, hotkey(), Arc::new(handler.clone())).expect("valid config");
    let shutdown = client.shutdown_handle();
    let run = tokio::spawn(client.run());

    facilitator
        .wait_for(|r| r.finished_jobs() >= 200, GUARD)
        .await
        .unwrap_or_else(|e| panic!("the flood did not get going: {e}"));
    if link_dies {
        proxy.stall_all(Dir::Down);
    }
    let requested = Instant::now();
    shutdown.shutdown();
    let outcome = tokio::time::timeout(GUARD, run)
        .await
        .expect("the client stops")
        .expect("the client does not panic")
        .expect("valid config");
    let took = requested.elapsed();
    let records = facilitator.snapshot();
    let lines = log.take();

    // Within the drain timeout plus the close timeout.
    let bound = DRAIN + CLOSE + SLACK;
    assert!(
        took <= bound,
        "the run ended {took:?} after the request (bound {bound:?})"
    );
    let latency = outcome.stop_latency.expect("a shutdown was requested");
    assert!(latency <= DRAIN + CLOSE + SLACK, "stop latency {latency:?}");

    // Every status accepted is delivered, refused by the facilitator, or reported undelivered.
    let c = &outcome.metrics.counters;
    assert_eq!(
        c.statuses_accepted,
        c.statuses_delivered + c.statuses_refused + outcome.undelivered.len() as u64,
        "{c:?}"
    );
    assert_eq!(c.statuses_refused, 0, "{c:?}");
    // A delivered status was acknowledged, so it is stored.
    assert!(records.stored().count() as u64 >= c.statuses_delivered);

    // The final log line says the same.
    let last = lines
        .iter()
        .rev()
        .find(|(_, l)| l.starts_with("stopped ("))
        .unwrap_or_else(|| panic!("no final log line in {lines:?}"));
    let expected = format!(
        "{} status update(s) delivered, {} undelivered",
        c.statuses_delivered,
        outcome.undelivered.len()
    );
    assert!(
        last.1.contains(&expected),
        "final line {:?} does not say {expected:?}",
        last.1
    );

    // Per job: what was stored, followed by what was reported undelivered (and not stored), is a whole sequence.
    let mut undelivered: HashMap<&str, Vec<JobStatus>> = HashMap::new();
    for update in &outcome.undelivered {
        undelivered
            .entry(update.uuid.as_str())
            .or_default()
            .push(update.status);
    }
    let dispatched = handler
        .dispatched
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    use JobStatus::{Accepted, Completed, HordeFailed, Received, Rejected};
    let whole: [&[JobStatus]; 4] = [
        &[Received, Accepted, Completed],
        &[Received, Accepted, HordeFailed],
        &[Received, HordeFailed],
        &[Rejected],
    ];
    let mut reported = 0;
    // Jobs cut short when the connection was lost while draining: cancelled, and (as designed) not reported.
    let mut cut_short = 0;
    for job in &records.jobs {
        let mut seen: Vec<JobStatus> = records.statuses_of(&job.uuid).to_vec();
        for status in undelivered.get(job.uuid.as_str()).into_iter().flatten() {
            if !seen.contains(status) {
                seen.push(*status);
            }
        }
        if seen.is_empty() {
            // Never read by the client (pushed as the connection closed): not the client's to answer.
            assert!(
                !dispatched.contains(&job.uuid),
                "job {} lost every status",
                job.uuid
            );
            continue;
        }
        reported += 1;
        if link_dies && !seen.iter().any(|s| s.is_terminal()) {
            cut_short += 1;
            continue;
        }
        assert!(
            whole.contains(&seen.as_slice()),
            "job {}: stored {:?} + undelivered {:?}",
            job.uuid,
            records.statuses_of(&job.uuid),
            undelivered.get(job.uuid.as_str())
        );
        assert_eq!(
            dispatched.contains(&job.uuid),
            seen != [Rejected],
            "job {}: dispatched, or else rejected",
            job.uuid
        );
    }
    assert_eq!(reported, dispatched.len() + c.jobs_rejected_busy as usize);
    assert!(
        cut_short <= c.jobs_cancelled,
        "{cut_short} jobs without a terminal status: {c:?}"
    );
    for rejected in records.stored().filter(|s| s.status == Rejected) {
        assert_eq!(
            rejected.metadata["job_rejection_details"]["reason"],
            JobRejectionReason::Busy.to_string(),
            "only jobs arriving during the drain are rejected"
        );
    }
    println!(
        "stopped ({}) {took:.1?} after the request: {} statuses accepted, {} delivered, {} undelivered; \
         {} jobs cancelled, {} rejected busy, {cut_short} cut short",
        outcome.reason,
        c.statuses_accepted,
        c.statuses_delivered,
        outcome.undelivered.len(),
        c.jobs_cancelled,
        c.jobs_rejected_busy
    );
    proxy.shutdown().await;
    facilitator.shutdown().await;
    Run { outcome }
}

/// The facilitator keeps this many jobs outstanding, refilling each as it is answered.
const OUTSTANDING: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_while_the_facilitator_refills_a_thousand_jobs_ends_when_the_accepted_work_ends()
{
    const DRAIN: Duration = Duration::from_secs(10);
    const CLOSE: Duration = Duration::from_secs(2);
    // A functional bound, far below the drain deadline: the echo handler's jobs end at once, so once the request is
    // taken only their last statuses and one close handshake remain (milliseconds). Waiting for the busy answers'
    // acknowledgements, which the facilitator answers with new jobs, would run into the 10 s deadline instead.
    const STOP_WITHIN: Duration = Duration::from_secs(2);
    let _serial = SERIAL.lock().await;
    let log = LogCapture::install();
    log.take();
    let facilitator = ReferenceFacilitator::start(FacilitatorConfig {
        // Each answered job is replaced right behind its Response, as a busy SDK user's queue would: the
        // replacement is signed ahead, so the facilitator never pauses to sign while the client drains.
        jobs: JobPlan::unlimited().max_open(OUTSTANDING).refill_at_once(),
        ..FacilitatorConfig::default()
    })
    .await
    .expect("the reference facilitator starts");
    // The program's defaults (heartbeat, backoff, max_running_jobs, outbox), with the drain and close timeouts of
    // this test.
    let mut config = ClientConfig::new(facilitator.url());
    config.trusted_signers = vec![facilitator.signer_ss58()];
    config.machine.drain_timeout = DRAIN;
    config.machine.close_timeout = CLOSE;
    let handler = RecordingEcho::default();
    let client = Client::new(config, hotkey(), Arc::new(handler.clone())).expect("valid config");
    let shutdown = client.shutdown_handle();
    let run = tokio::spawn(client.run());

    // Well past the first 1,000: the facilitator is refilling.
    facilitator
        .wait_for(|r| r.finished_jobs() >= 3 * OUTSTANDING, GUARD)
        .await
        .unwrap_or_else(|e| panic!("the jobs did not flow: {e}"));
    let requested = Instant::now();
    shutdown.shutdown();
    // From now on the replacements are made unsigned, so they keep pace with the answers however fast the client
    // answers (signing one takes about a quarter of a millisecond in this build: a signed refill falls behind a
    // draining client, the flow thins out, and even a drain that waited for every busy answer would find a gap and
    // end early). A draining client answers them `busy` before any signature check; they are made after the
    // request, so the client has taken it (it comes first in its loop) before any of them can arrive, and an
    // `invalid_signature` answer would fail the checks below.
    facilitator.set_job_signing(false);
    let outcome = tokio::time::timeout(GUARD, run)
        .await
        .expect("the client stops")
        .expect("the client does not panic")
        .expect("valid config");
    let took = requested.elapsed();
    let lines = log.take();
    // The connection's end is recorded once the facilitator has read the close frame.
    let records = facilitator
        .wait_for(|r| r.connections.iter().all(|c| c.end.is_some()), GUARD)
        .await
        .unwrap_or_else(|e| panic!("the connection did not end at the facilitator: {e}"));
    let c = &outcome.metrics.counters;

    assert_eq!(outcome.reason, StopReason::Graceful, "{c:?}");
    assert_eq!(outcome.exit_code(), 0);
    assert!(
        took <= STOP_WITHIN,
        "the run ended {took:?} after the request (drain timeout {DRAIN:?}): {c:?}"
    );
    let latency = outcome.stop_latency.expect("a shutdown was requested");
    assert!(latency <= STOP_WITHIN, "stop latency {latency:?}");
    assert_eq!(records.connections.len(), 1, "no reconnect");
    assert_eq!(records.connections[0].close_received, Some(1000));
    // The facilitator kept pushing during the drain, and was answered busy: the situation under test.
    assert!(
        c.jobs_rejected_busy > 0,
        "no job arrived during the drain: {c:?}"
    );

    // Every job the handler was given has every status stored, in order; nothing else was given a handler.
    assert_eq!(handler.dispatches(), handler.distinct() as u64);
    assert_eq!(handler.distinct() as u64, c.jobs_accepted);
    let (mut whole, mut busy, mut silent) = (0u64, 0u64, 0u64);
    for job in &records.jobs {
        let stored = records.statuses_of(&job.uuid);
        if handler.dispatched(&job.uuid) {
            assert_eq!(stored, ECHO_STATUSES, "job {}", job.uuid);
            whole += 1;
        } else {
            match stored {
                [JobStatus::Rejected] => busy += 1,
                // Not answered: read during the close handshake (its answer is reported undelivered), or never
                // read at all, or unanswered with the outbox full.
                [] => silent += 1,
                other => panic!(
                    "job {} was not dispatched, yet {other:?} was stored",
                    job.uuid
                ),
            }
        }
    }
    assert_eq!(whole, c.jobs_accepted);
    for rejected in records.stored().filter(|s| s.status == JobStatus::Rejected) {
        assert_eq!(
            rejected.metadata["job_rejection_details"]["reason"],
            JobRejectionReason::Busy.to_string(),
            "only busy answers: {:?}",
            rejected.metadata
        );
    }

    // Only busy answers to jobs never dispatched may be undelivered; every other status was delivered.
    for update in &outcome.undelivered {
        let is_busy = update
            .metadata
            .job_rejection_details
            .as_ref()
            .is_some_and(|d| d.reason == JobRejectionReason::Busy);
        assert!(
            is_busy && update.status == JobStatus::Rejected && !handler.dispatched(&update.uuid),
            "only answers to jobs refused during the drain may be undelivered: {update:?}"
        );
        assert!(records.statuses_of(&update.uuid).is_empty(), "{update:?}");
    }
    assert_eq!(c.statuses_refused, 0, "{c:?}");
    assert_eq!(
        c.statuses_accepted,
        c.statuses_delivered + outcome.undelivered.len() as u64,
        "{c:?}"
    );
    assert_eq!(c.statuses_delivered, 3 * c.jobs_accepted + busy, "{c:?}");
    assert_eq!(
        busy + outcome.undelivered.len() as u64,
        c.jobs_rejected_busy + c.jobs_rejected_full,
        "{c:?}"
    );

    // The final log line says how many busy answers were left undelivered.
    let last = lines
        .iter()
        .rev()
        .find(|(_, l)| l.starts_with("stopped ("))
        .unwrap_or_else(|| panic!("no final log line in {lines:?}"));
    let expected = format!(
        "stopped (graceful): {} status update(s) delivered, {} undelivered",
        c.statuses_delivered,
        outcome.undelivered.len()
    );
    assert!(
        last.1.starts_with(&expected),
        "final line {:?} does not say {expected:?}",
        last.1
    );
    println!(
        "stopped (graceful) {took:.1?} after the request (drain timeout {DRAIN:?}): {} jobs accepted, all \
         {} of their statuses stored; {} busy during the drain, {} busy at the bound before it ({busy} stored, \
         {} undelivered); {silent} jobs without a status ({} unanswered with the outbox full, the rest never read)",
        c.jobs_accepted,
        3 * c.jobs_accepted,
        c.jobs_rejected_busy,
        c.jobs_rejected_full,
        outcome.undelivered.len(),
        c.jobs_unanswered
    );
    facilitator.shutdown().await;
}
