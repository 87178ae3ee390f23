//! The runtime over real loopback sockets, against the reference facilitator.
//!
//! Time is real (paused tokio time would jump over real socket waits), so timeouts are short and every wait is
//! for a condition, with a generous bound only as a failure guard.
#![cfg(feature = "runtime")]

use std::sync::Arc;
use std::time::Duration;

use facilitator_client::handler::{BoxFuture, EchoHandler, JobHandler, StatusSender};
use facilitator_client::machine::{BackoffConfig, StopReason};
use facilitator_client::protocol::keys::Hotkey;
use facilitator_client::protocol::{JobRequest, JobStatus};
use facilitator_client::reference::{
    AfterMessages, AuthRejection, FacilitatorConfig, Faults, JobPlan, ReferenceFacilitator,
    RejectAuth, Times,
};
use facilitator_client::{Client, ClientConfig, Outcome};

mod support;
use support::loopback::{GUARD, client_config, join, spawn_client, start};

fn hotkey() -> Hotkey {
    Hotkey::from_seed(&[7u8; 32])
}

/// Waits until the client itself has seen its auth Response (the facilitator records auth before the client
/// reads the reply).
async fn running(
    events: &mut tokio::sync::broadcast::Receiver<facilitator_client::machine::Event>,
) {
    use facilitator_client::machine::{Event, StateKind};
    let wait = async {
        loop {
            match events.recv().await {
                Ok(Event::StateChanged {
                    to: StateKind::Running,
                    ..
                }) => return,
                Ok(_) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    };
    tokio::time::timeout(GUARD, wait)
        .await
        .expect("the client reaches Running");
}

const ECHO_STATUSES: [JobStatus; 3] = [
    JobStatus::Received,
    JobStatus::Accepted,
    JobStatus::Completed,
];

#[tokio::test]
async fn jobs_flow_and_every_status_arrives_in_order() {
    let facilitator = start(FacilitatorConfig {
        jobs: JobPlan::count(10),
        ..Default::default()
    })
    .await;
    let client = Client::new(
        client_config(&facilitator),
        hotkey(),
        Arc::new(EchoHandler::new()),
    )
    .unwrap();
    let shutdown = client.shutdown_handle();
    let run = spawn_client(client);
    let records = facilitator
        .wait_for(|r| r.finished_jobs() == 10, GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for job in &records.jobs {
        assert_eq!(
            records.statuses_of(&job.uuid),
            ECHO_STATUSES,
            "job {}",
            job.uuid
        );
    }
    shutdown.shutdown();
    let outcome = join(run).await;
    assert_eq!(outcome.reason, StopReason::Graceful);
    assert!(outcome.undelivered.is_empty());
    assert_eq!(outcome.metrics.counters.statuses_delivered, 30);
    let records = facilitator.snapshot();
    assert_eq!(
        records.connections[0].close_received,
        Some(1000),
        "the client closes with 1000 after draining"
    );
    assert_eq!(
        records.connections[0].runner_version.as_deref(),
        Some(concat!("facilitator-client/", env!("CARGO_PKG_VERSION")))
    );
}

#[tokio::test]
async fn statuses_unacknowledged_at_a_dropped_connection_arrive_after_reauthentication() {
    // The first connection dies (TCP dropped, no close frame) after 12 client messages: in the middle of the
    // jobs, with statuses in flight.
    let faults = Faults {
        drop_after: Some(AfterMessages::first_connections(12, 1)),
        ..Faults::none()
    };
    let facilitator = start(FacilitatorConfig {
        jobs: JobPlan::count(20),
        faults,
        ..Default::default()
    })
    .await;
    let client = Client::new(
        client_config(&facilitator),
        hotkey(),
        Arc::new(EchoHandler::new()),
    )
    .unwrap();
    let shutdown = client.shutdown_handle();
    let run = spawn_client(client);
    let records = facilitator
        .wait_for(|r| r.finished_jobs() == 20, GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    shutdown.shutdown();
    let outcome = join(run).await;
    assert_eq!(outcome.reason, StopReason::Graceful);
    assert!(
        outcome.metrics.counters.reconnects >= 1,
        "{:?}",
        outcome.metrics.counters
    );
    for job in &records.jobs {
        assert_eq!(
            records.statuses_of(&job.uuid),
            ECHO_STATUSES,
            "job {}: per-job order",
            job.uuid
        );
    }
    // On every connection, the first message is the auth request: nothing is re-sent before re-authentication.
    for connection in &records.connections {
        let first = records
            .messages
            .iter()
            .find(|m| m.connection == connection.id);
        if let Some(first) = first {
            assert!(
                matches!(
                    first.message,
                    Some(facilitator_client::protocol::ClientMessage::Auth(_))
                ),
                "connection {:?} began with {:?}",
                connection.id,
                first.message
            );
        }
    }
    // Duplicates at the facilitator are only re-sends of statuses that were unacknowledged when the link died.
    let duplicates = records.duplicates().count() as u64;
    assert!(
        duplicates <= outcome.metrics.counters.statuses_resent,
        "{duplicates} duplicates"
    );
}

#[tokio::test]
async fn a_silent_peer_is_detected_within_the_peer_timeout() {
    // The first connection goes half-open after auth plus one heartbeat: no more reads, writes or pongs.
    let faults = Faults {
        stall_after: Some(AfterMessages::first_connections(2, 1)),
        ..Faults::none()
    };
    let facilitator = start(FacilitatorConfig {
        faults,
        ..Default::default()
    })
    .await;
    let config = client_config(&facilitator);
    let peer_timeout = config.machine.peer_timeout;
    let client = Client::new(config, hotkey(), Arc::new(EchoHandler::new())).unwrap();
    let shutdown = client.shutdown_handle();
    let run = spawn_client(client);
    let stalled = facilitator
        .wait_for(|r| r.connections.iter().any(|c| c.stalled), GUARD)
        .await
        .unwrap();
    let stalled_at = stalled.connections[0].opened_at;
    let records = facilitator
        .wait_for(|r| r.authenticated_connections() >= 2, GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let second = &records.connections[1];
    // Detected after at most the peer timeout of silence (+ one backoff delay + slack for a loaded machine).
    let elapsed = second.opened_at - stalled_at;
    assert!(
        elapsed < peer_timeout + Duration::from_secs(3),
        "reconnected {elapsed:?} after the stall"
    );
    shutdown.shutdown();
    let outcome = join(run).await;
    assert!(outcome.metrics.counters.disconnects >= 1);
}

#[tokio::test]
async fn a_rejected_hotkey_signature_stops_the_client_with_a_fatal_error() {
    let faults = Faults {
        reject_auth: Some(RejectAuth {
            with: AuthRejection::SignatureInvalid,
            attempts: Times::Always,
        }),
        ..Faults::none()
    };
    let facilitator = start(FacilitatorConfig {
        faults,
        ..Default::default()
    })
    .await;
    let client = Client::new(
        client_config(&facilitator),
        hotkey(),
        Arc::new(EchoHandler::new()),
    )
    .unwrap();
    let outcome = join(spawn_client(client)).await;
    assert_eq!(outcome.reason, StopReason::AuthRejected);
    assert_eq!(outcome.exit_code(), 1);
    assert_eq!(
        facilitator.snapshot().auth_attempts.len(),
        1,
        "a fatal rejection is not retried"
    );
}

#[tokio::test]
async fn validator_not_found_is_retried() {
    let faults = Faults {
        reject_auth: Some(RejectAuth {
            with: AuthRejection::ValidatorNotFound,
            attempts: Times::First(2),
        }),
        ..Faults::none()
    };
    let facilitator = start(FacilitatorConfig {
        faults,
        ..Default::default()
    })
    .await;
    let client = Client::new(
        client_config(&facilitator),
        hotkey(),
        Arc::new(EchoHandler::new()),
    )
    .unwrap();
    let mut events = client.subscribe();
    let shutdown = client.shutdown_handle();
    let run = spawn_client(client);
    running(&mut events).await;
    shutdown.shutdown();
    let outcome = join(run).await;
    assert_eq!(outcome.reason, StopReason::Graceful);
    assert_eq!(outcome.metrics.counters.auth_failures, 2);
}

#[tokio::test]
async fn shutdown_while_idle_sends_a_close_frame_and_stops() {
    let facilitator = start(FacilitatorConfig::default()).await;
    let client = Client::new(
        client_config(&facilitator),
        hotkey(),
        Arc::new(EchoHandler::new()),
    )
    .unwrap();
    let mut events = client.subscribe();
    let shutdown = client.shutdown_handle();
    let run = spawn_client(client);
    running(&mut events).await;
    shutdown.shutdown();
    let outcome = join(run).await;
    assert_eq!(outcome.reason, StopReason::Graceful);
    let latency = outcome.stop_latency.expect("a shutdown was requested");
    assert!(
        latency < Duration::from_secs(1),
        "idle stop took {latency:?}"
    );
    let records = facilitator
        .wait_for(|r| r.connections[0].closed_at.is_some(), GUARD)
        .await
        .unwrap();
    assert_eq!(records.connections[0].close_received, Some(1000));
}

#[tokio::test]
async fn heartbeats_and_pings_flow_while_idle() {
    let facilitator = start(FacilitatorConfig::default()).await;
    let client = Client::new(
        client_config(&facilitator),
        hotkey(),
        Arc::new(EchoHandler::new()),
    )
    .unwrap();
    let shutdown = client.shutdown_handle();
    let metrics = client.metrics();
    let run = spawn_client(client);
    facilitator
        .wait_for(|r| r.heartbeats.len() >= 3, GUARD)
        .await
        .unwrap();
    shutdown.shutdown();
    let outcome = join(run).await;
    assert!(
        outcome.metrics.last_round_trip.is_some(),
        "a Pong answered a Ping"
    );
    assert!(
        metrics
            .snapshot()
            .messages_out
            .get("V0Heartbeat")
            .copied()
            .unwrap_or(0)
            >= 3
    );
}

/// A handler that panics in the middle of a job.
struct Panics;

impl JobHandler for Panics {
    fn run(&self, _job: Arc<JobRequest>, statuses: StatusSender) -> BoxFuture {
        Box::pin(async move {
            let _ = statuses.status(JobStatus::Accepted).await;
            panic!("the handler fell over");
        })
    }
}

#[tokio::test]
async fn a_panicking_handler_reports_horde_failed_and_the_client_keeps_running() {
    let facilitator = start(FacilitatorConfig {
        jobs: JobPlan::count(2),
        ..Default::default()
    })
    .await;
    let client = Client::new(client_config(&facilitator), hotkey(), Arc::new(Panics)).unwrap();
    let shutdown = client.shutdown_handle();
    let run = spawn_client(client);
    let records = facilitator
        .wait_for(|r| r.finished_jobs() == 2, GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for job in &records.jobs {
        assert_eq!(
            records.statuses_of(&job.uuid),
            [
                JobStatus::Received,
                JobStatus::Accepted,
                JobStatus::HordeFailed
            ]
        );
    }
    let failure = records
        .stored()
        .find(|s| s.status == JobStatus::HordeFailed)
        .unwrap();
    assert_eq!(
        failure.metadata["horde_failure_details"]["reason"],
        "unhandled_exception"
    );
    assert!(
        failure.metadata["horde_failure_details"]["message"]
            .as_str()
            .unwrap()
            .contains("the handler fell over")
    );
    shutdown.shutdown();
    assert_eq!(join(run).await.reason, StopReason::Graceful);
}

/// A handler whose jobs never end on their own.
struct Forever;

impl JobHandler for Forever {
    fn run(&self, _job: Arc<JobRequest>, statuses: StatusSender) -> BoxFuture {
        Box::pin(async move {
            let _ = statuses.status(JobStatus::Accepted).await;
            std::future::pending::<()>().await;
        })
    }
}

/// A facilitator with one job, a client running it with [`Forever`] and the given drain timeout, once the job is
/// accepted.
async fn one_job_that_never_ends(
    drain_timeout: Duration,
) -> (
    ReferenceFacilitator,
    facilitator_client::ShutdownHandle,
    tokio::task::JoinHandle<Outcome>,
) {
    let facilitator = start(FacilitatorConfig {
        jobs: JobPlan::count(1),
        ..Default::default()
    })
    .await;
    let mut config = client_config(&facilitator);
    config.machine.drain_timeout = drain_timeout;
    let client = Client::new(config, hotkey(), Arc::new(Forever)).unwrap();
    let shutdown = client.shutdown_handle();
    let run = spawn_client(client);
    facilitator
        .wait_for(
            |r| r.stored().any(|s| s.status == JobStatus::Accepted),
            GUARD,
        )
        .await
        .unwrap();
    (facilitator, shutdown, run)
}

#[tokio::test]
async fn the_drain_deadline_cancels_running_jobs_and_reports_them_horde_failed() {
    let (facilitator, shutdown, run) = one_job_that_never_ends(Duration::from_millis(300)).await;
    shutdown.shutdown();
    let outcome = join(run).await;
    assert_eq!(outcome.reason, StopReason::DrainTimedOut);
    assert_eq!(outcome.metrics.counters.jobs_cancelled, 1);
    let records = facilitator.snapshot();
    let job = &records.jobs[0];
    assert_eq!(
        records.statuses_of(&job.uuid),
        [
            JobStatus::Received,
            JobStatus::Accepted,
            JobStatus::HordeFailed
        ]
    );
}

#[tokio::test]
async fn a_second_shutdown_request_during_the_drain_stops_at_once() {
    let (_facilitator, shutdown, run) = one_job_that_never_ends(Duration::from_secs(30)).await;
    shutdown.shutdown();
    shutdown.shutdown();
    let outcome = join(run).await;
    assert_eq!(outcome.reason, StopReason::Forced);
    assert_eq!(outcome.exit_code(), 130);
    assert!(outcome.stop_latency.unwrap() < Duration::from_secs(5));
}

#[tokio::test]
async fn dropping_a_running_client_closes_its_socket() {
    let facilitator = start(FacilitatorConfig::default()).await;
    let client = Client::new(client_config(&facilitator), hotkey(), Arc::new(Forever)).unwrap();
    let run = spawn_client(client);
    facilitator
        .wait_for(|r| r.authenticated_connections() == 1, GUARD)
        .await
        .unwrap();
    run.abort();
    facilitator
        .wait_for(|r| r.connections[0].closed_at.is_some(), GUARD)
        .await
        .unwrap_or_else(|e| panic!("the socket outlived the dropped client: {e}"));
}

#[tokio::test]
async fn run_until_a_future_completes_is_a_shutdown_request() {
    let facilitator = start(FacilitatorConfig::default()).await;
    let client = Client::new(
        client_config(&facilitator),
        hotkey(),
        Arc::new(EchoHandler::new()),
    )
    .unwrap();
    let mut events = client.subscribe();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move { client.run_until(rx).await.unwrap() });
    running(&mut events).await;
    tx.send(()).unwrap();
    assert_eq!(join(run).await.reason, StopReason::Graceful);
}

#[tokio::test]
async fn no_write_is_lost_or_split_while_other_branches_keep_winning_the_select() {
    // A 2 ms heartbeat and a stream of handler statuses keep cancelling the socket branch in the middle of its
    // writes. A lost or split frame would show up at the facilitator as a missing status, a parse error or a
    // dropped connection.
    let facilitator = start(FacilitatorConfig {
        jobs: JobPlan::count(2_000).max_open(200),
        ..Default::default()
    })
    .await;
    let mut config = client_config(&facilitator);
    config.machine.heartbeat_interval = Duration::from_millis(2);
    config.machine.peer_timeout = Duration::from_secs(5);
    let client = Client::new(config, hotkey(), Arc::new(EchoHandler::new())).unwrap();
    let shutdown = client.shutdown_handle();
    let run = spawn_client(client);
    let records = facilitator
        .wait_for(|r| r.finished_jobs() == 2_000, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    shutdown.shutdown();
    let outcome = join(run).await;
    assert_eq!(outcome.reason, StopReason::Graceful);
    assert_eq!(records.connections.len(), 1, "the connection never broke");
    assert_eq!(records.duplicates().count(), 0);
    for job in &records.jobs {
        assert_eq!(
            records.statuses_of(&job.uuid),
            ECHO_STATUSES,
            "job {}",
            job.uuid
        );
    }
    let errors = records
        .responses
        .iter()
        .filter(|r| !r.response.is_success())
        .count();
    assert_eq!(
        errors, 0,
        "the facilitator answered {errors} message(s) with an error"
    );
    assert!(
        records.heartbeats.len() > 10,
        "heartbeats interleaved with the statuses"
    );
}

#[tokio::test]
async fn shutdown_with_a_running_exec_job_waits_for_it_to_finish() {
    let facilitator = start(FacilitatorConfig {
        jobs: JobPlan::count(1),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("go");
    // The job reports accepted, then waits for the test's signal (a file), then completes by exiting 0.
    let script = format!(
        "echo '{{\"status\":\"accepted\"}}'; while [ ! -e {gate} ]; do sleep 0.02; done; echo finishing",
        gate = gate.display()
    );
    let handler = Arc::new(facilitator_client::handler::ExecHandler::new(script));
    let client = Client::new(client_config(&facilitator), hotkey(), handler).unwrap();
    let mut events = client.subscribe();
    let shutdown = client.shutdown_handle();
    let run = spawn_client(client);
    facilitator
        .wait_for(
            |r| r.stored().any(|s| s.status == JobStatus::Accepted),
            GUARD,
        )
        .await
        .unwrap();
    shutdown.shutdown();
    // The client is draining with the job still running; now let the job end.
    let draining = async {
        loop {
            if let Ok(facilitator_client::machine::Event::StateChanged {
                to: facilitator_client::machine::StateKind::Draining,
                ..
            }) = events.recv().await
            {
                return;
            }
        }
    };
    tokio::time::timeout(GUARD, draining)
        .await
        .expect("the client drains");
    std::fs::write(&gate, b"").unwrap();
    let outcome = join(run).await;
    assert_eq!(
        outcome.reason,
        StopReason::Graceful,
        "the job finished within the drain"
    );
    let records = facilitator.snapshot();
    let job = &records.jobs[0];
    assert_eq!(
        records.statuses_of(&job.uuid),
        ECHO_STATUSES,
        "received, accepted, completed"
    );
}

#[tokio::test]
async fn wss_to_a_server_that_does_not_speak_tls_fails_cleanly_and_is_retried() {
    // A TCP server that answers the TLS ClientHello with garbage and hangs up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepts = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut count = 0u32;
        while let Ok((mut stream, _)) = listener.accept().await {
            count += 1;
            let _ = stream.write_all(b"HTTP/1.1 400 Not TLS\r\n\r\n").await;
            if count >= 3 {
                break;
            }
        }
        count
    });
    let mut config = ClientConfig::new(format!("wss://127.0.0.1:{port}/ws/v0/"));
    config.machine.backoff = BackoffConfig {
        base: Duration::from_millis(20),
        factor: 1.0,
        cap: Duration::from_millis(20),
        jitter: 0.0,
        stable_after: Duration::from_secs(1),
    };
    let client = Client::new(config, hotkey(), Arc::new(EchoHandler::new())).unwrap();
    let shutdown = client.shutdown_handle();
    let metrics = client.metrics();
    let run = spawn_client(client);
    assert_eq!(
        tokio::time::timeout(GUARD, accepts).await.unwrap().unwrap(),
        3,
        "three TLS attempts"
    );
    let failed = async {
        while metrics.snapshot().counters.auth_failures < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(GUARD, failed)
        .await
        .expect("each attempt counted as a failure");
    shutdown.shutdown();
    assert_eq!(
        join(run).await.reason,
        StopReason::ShutdownWhileDisconnected
    );
}

#[tokio::test]
async fn a_facilitator_pushing_jobs_without_pause_still_gets_every_answer() {
    // No `max_open`: the facilitator pushes 3,000 jobs back to back, so there is nearly always something to read.
    // The client's answers must still go out (a large backlog is written before more is read).
    let facilitator = start(FacilitatorConfig {
        jobs: JobPlan::count(3_000),
        ..Default::default()
    })
    .await;
    let client = Client::new(
        client_config(&facilitator),
        hotkey(),
        Arc::new(EchoHandler::new()),
    )
    .unwrap();
    let shutdown = client.shutdown_handle();
    let run = spawn_client(client);
    let records = facilitator
        .wait_for(|r| r.finished_jobs() == 3_000, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    shutdown.shutdown();
    let outcome = join(run).await;
    assert_eq!(outcome.reason, StopReason::Graceful);
    assert_eq!(
        records.connections.len(),
        1,
        "the Pings were answered all along: no reconnect"
    );
}
