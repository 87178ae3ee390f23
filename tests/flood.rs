//! A facilitator that floods: tens of thousands of signed job requests pushed back to back without waiting for an
//! answer, while every job the client accepts is held by its handler and the facilitator holds its Responses for a
//! while. Every buffer that grows with what the facilitator sends must stay within its bound, and every job request
//! must be accounted for; asserted from the client's own high-water marks (`Metrics::peaks`) and the facilitator's
//! records, never from the process's RSS (which the benchmark program reports).
//!
//! The bounds, with the defaults a validator runs with: running jobs <= `max_running_jobs`; statuses held (queued
//! plus in flight) <= `outbox_capacity` + `max_running_jobs` (the cancelled jobs' reports may go past the capacity
//! at a drain deadline); in flight <= `max_in_flight`; frames read ahead of the machine <= one read batch (64);
//! messages waiting for the socket <= the in-flight window plus a heartbeat, a Ping and the close frame.
//!
//! The long run: `cargo test --release --test flood -- --ignored --nocapture`.
#![cfg(feature = "runtime")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use facilitator_client::handler::{BoxFuture, EchoHandler, JobHandler, StatusSender};
use facilitator_client::machine::StopReason;
use facilitator_client::protocol::keys::Hotkey;
use facilitator_client::protocol::{JobRequest, JobRequestFields, JobStatus, testing};
use facilitator_client::reference::{FacilitatorConfig, PushKind, ReferenceFacilitator};
use facilitator_client::{Client, ClientConfig, Metrics};
use tokio::sync::watch;

/// Frames read from the socket in one go (the runtime's read batch).
const READ_BATCH: usize = 64;

/// Besides statuses, the socket's queue may hold a heartbeat, a Ping and the close frame.
const SOCKET_EXTRAS: usize = 3;

/// What the echo handler's jobs leave at the facilitator, in order.
const ECHO_STATUSES: [JobStatus; 3] = [
    JobStatus::Received,
    JobStatus::Accepted,
    JobStatus::Completed,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_jobs_pushed_without_pause_stay_within_every_bound() {
    flood(20_000, Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by hand with --release --ignored --nocapture"]
async fn a_hundred_thousand_jobs_pushed_without_pause_stay_within_every_bound() {
    flood(100_000, Duration::from_secs(600)).await;
}

/// Accepts each job, then holds it until released, then completes it.
#[derive(Clone)]
struct HeldJobs {
    release: watch::Receiver<bool>,
    dispatched: Arc<AtomicU64>,
}

impl JobHandler for HeldJobs {
    fn run(&self, job: Arc<JobRequest>, statuses: StatusSender) -> BoxFuture {
        self.dispatched.fetch_add(1, Ordering::SeqCst);
        let mut release = self.release.clone();
        let uuid = job.uuid().to_owned();
        Box::pin(async move {
            if statuses.status(JobStatus::Accepted).await.is_err() {
                return;
            }
            // An error means the test is gone: then so is the job.
            if release.wait_for(|released| *released).await.is_ok() {
                let _ = statuses.send(EchoHandler::completed(uuid)).await;
            }
        })
    }
}

fn uuid_of(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}

/// `n` minimal jobs, each signed with its own timestamp (so no two signatures are equal), about 1 KiB each.
fn signed_jobs(n: usize) -> Vec<JobRequestFields> {
    let signer = testing::test_signer();
    (0..n)
        .map(|i| {
            let mut job = testing::minimal_job(&uuid_of(i));
            job.sign(&signer, testing::TEST_TIMESTAMP_NS + i as u64);
            job
        })
        .collect()
}

/// Polls the client's metrics until `condition` holds; panics after `guard` with the metrics.
async fn wait_for_metrics(
    what: &str,
    guard: Duration,
    metrics: &facilitator_client::MetricsHandle,
    mut condition: impl FnMut(&Metrics) -> bool,
) -> Metrics {
    let deadline = Instant::now() + guard;
    loop {
        let m = metrics.snapshot();
        if condition(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {guard:?} waiting for {what}: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn flood(jobs: usize, guard: Duration) {
    let started = Instant::now();
    let facilitator = ReferenceFacilitator::start(FacilitatorConfig::default())
        .await
        .expect("the reference facilitator starts");
    // The program's defaults: the bounds under test are the ones a validator runs with.
    let mut config = ClientConfig::new(facilitator.url());
    config.trusted_signers = vec![facilitator.signer_ss58()];
    let bounds = config.machine.clone();
    let (release, release_rx) = watch::channel(false);
    let handler = HeldJobs {
        release: release_rx,
        dispatched: Arc::default(),
    };
    let client = Client::new(
        config,
        Hotkey::from_seed(&[7u8; 32]),
        Arc::new(handler.clone()),
    )
    .expect("valid config");
    let metrics = client.metrics();
    let shutdown = client.shutdown_handle();
    let run = tokio::spawn(client.run());

    let requests = tokio::task::spawn_blocking(move || signed_jobs(jobs))
        .await
        .expect("signing does not panic");
    // The client sends its first heartbeat right after its auth Response: it is Running.
    facilitator
        .wait_for(|r| !r.heartbeats.is_empty(), guard)
        .await
        .unwrap_or_else(|e| panic!("the client did not authenticate: {e}"));

    // The flood: Responses held, every job pushed at once, none waiting for an answer.
    let pushing = Instant::now();
    facilitator.hold_responses();
    for (i, job) in requests.iter().enumerate() {
        facilitator.push_job_request(job);
        if i % 1024 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let flooded = wait_for_metrics(
        "the client to read every job request",
        guard,
        &metrics,
        |m| m.messages_in.get("V2JobRequest").copied() == Some(jobs as u64),
    )
    .await;
    let read_in = pushing.elapsed();
    let c = &flooded.counters;
    // Every slot taken and held; the outbox full of statuses nobody answers; beyond that, nothing answered.
    assert_eq!(flooded.running_jobs, bounds.max_running_jobs, "{flooded:?}");
    assert_eq!(
        flooded.outbox_queued + flooded.in_flight,
        bounds.outbox_capacity,
        "{flooded:?}"
    );
    assert_eq!(flooded.in_flight, bounds.max_in_flight, "{flooded:?}");
    assert!(c.jobs_rejected_full > 0, "{c:?}");
    assert!(c.jobs_unanswered > 0, "the outbox filled up: {c:?}");
    check_peaks(&flooded, &bounds);

    // The facilitator answers again: the held statuses and the busy answers are acknowledged.
    facilitator.release_responses();
    let c = flooded.counters.clone();
    let answers = 2 * c.jobs_accepted + c.jobs_rejected_full;
    wait_for_metrics(
        "every received, accepted and busy answer to be acknowledged",
        guard,
        &metrics,
        |m| m.counters.statuses_delivered == answers,
    )
    .await;
    // The jobs end.
    release.send_replace(true);
    let finished = (c.jobs_accepted + c.jobs_rejected_full) as usize;
    facilitator
        .wait_for(|r| r.finished_jobs() == finished, guard)
        .await
        .unwrap_or_else(|e| panic!("the accepted jobs did not all complete: {e}"));

    shutdown.shutdown();
    let outcome = tokio::time::timeout(guard, run)
        .await
        .expect("the client stops")
        .expect("the client does not panic")
        .expect("valid config");
    assert_eq!(outcome.reason, StopReason::Graceful);
    assert!(outcome.undelivered.is_empty(), "{:?}", outcome.undelivered);
    let records = facilitator.snapshot();
    let end = &outcome.metrics;
    check_peaks(end, &bounds);
    let c = &end.counters;

    // Every job request pushed was read, and each went one way: accepted, busy at the bound, or unanswered.
    let pushed = records
        .pushes
        .iter()
        .filter(|p| matches!(p.kind, PushKind::Job(_)))
        .count();
    assert_eq!(pushed, jobs);
    assert_eq!(
        end.messages_in.get("V2JobRequest").copied(),
        Some(jobs as u64)
    );
    assert_eq!(
        c.jobs_accepted + c.jobs_rejected_full + c.jobs_unanswered,
        jobs as u64,
        "{c:?}"
    );
    for (what, n) in [
        ("rejected busy (draining)", c.jobs_rejected_busy),
        ("rejected for their signature", c.jobs_rejected_signature),
        ("rejected as invalid", c.jobs_rejected_invalid),
        ("duplicates", c.jobs_duplicate),
        ("undecodable frames", c.decode_errors),
    ] {
        assert_eq!(n, 0, "{what}: {c:?}");
    }
    assert_eq!(c.jobs_accepted, bounds.max_running_jobs as u64, "{c:?}");
    assert_eq!(handler.dispatched.load(Ordering::SeqCst), c.jobs_accepted);
    assert_eq!(
        c.statuses_delivered,
        3 * c.jobs_accepted + c.jobs_rejected_full,
        "{c:?}"
    );
    assert_eq!(c.statuses_refused, 0, "{c:?}");

    // The facilitator's side of the same count.
    let (mut whole, mut busy, mut silent) = (0u64, 0u64, 0u64);
    for job in &records.jobs {
        match records.statuses_of(&job.uuid) {
            s if s == ECHO_STATUSES => whole += 1,
            [JobStatus::Rejected] => busy += 1,
            [] => silent += 1,
            other => panic!("job {}: {other:?}", job.uuid),
        }
    }
    assert_eq!(
        (whole, busy, silent),
        (c.jobs_accepted, c.jobs_rejected_full, c.jobs_unanswered)
    );
    for rejected in records.stored().filter(|s| s.status == JobStatus::Rejected) {
        assert_eq!(
            rejected.metadata["job_rejection_details"]["reason"], "busy",
            "{:?}",
            rejected.metadata
        );
    }
    println!(
        "{jobs} jobs pushed back to back, all read in {read_in:.1?}: {} accepted, {} busy at the bound, {} \
         unanswered (outbox full); peaks: {:?}; run {:.1?}",
        c.jobs_accepted,
        c.jobs_rejected_full,
        c.jobs_unanswered,
        end.peaks,
        started.elapsed()
    );
    facilitator.shutdown().await;
}

fn check_peaks(m: &Metrics, bounds: &facilitator_client::machine::Config) {
    let p = &m.peaks;
    assert!(p.running_jobs <= bounds.max_running_jobs, "{p:?}");
    assert!(
        p.outbox <= bounds.outbox_capacity + bounds.max_running_jobs,
        "{p:?}"
    );
    assert!(p.in_flight <= bounds.max_in_flight, "{p:?}");
    assert!(p.read_ahead <= READ_BATCH, "{p:?}");
    assert!(
        p.socket_backlog <= bounds.max_in_flight + SOCKET_EXTRAS,
        "{p:?}"
    );
}
