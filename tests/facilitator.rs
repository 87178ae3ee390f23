//! The reference facilitator over real loopback sockets, driven by a raw tokio-tungstenite client: it must behave
//! like the real facilitator of docs/PROTOCOL.md (auth, status store, parse errors, crashes, close codes), push verifiable
//! jobs, inject its faults, and record what happened.
//!
//! No sleeps as synchronization: tests await frames or `wait_for` conditions; timeouts only guard against hangs
//! (and, for the stall test, bound the wait for a frame that must not come).
#![cfg(feature = "runtime")]

use std::time::Duration;

use facilitator_client::protocol::keys::Hotkey;
use facilitator_client::protocol::{
    ClientMessage, JobRequest, JobStatus, JobStatusUpdate, Response, ServerMessage, TrustedSigners,
    decode_server_frame, testing,
};
use facilitator_client::reference::{
    AfterMessages, AuthOutcome, AuthRejection, CloseAfter, ConnectionEnd, FacilitatorConfig,
    Faults, JobPlan, PushKind, ReferenceFacilitator, RejectAuth, StatusOutcome, Times, Validators,
};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Failure guard for anything that should happen promptly.
const GUARD: Duration = Duration::from_secs(10);

fn validator() -> Hotkey {
    Hotkey::from_seed(&testing::TEST_VALIDATOR_SEED)
}

async fn start(config: FacilitatorConfig) -> ReferenceFacilitator {
    ReferenceFacilitator::start(config)
        .await
        .expect("the facilitator binds a loopback port")
}

async fn start_default() -> ReferenceFacilitator {
    start(FacilitatorConfig::default()).await
}

async fn connect(facilitator: &ReferenceFacilitator) -> Ws {
    let mut request = facilitator.url().into_client_request().expect("valid URL");
    let headers = request.headers_mut();
    headers.insert("X-Validator-Runner-Version", "runner-1".parse().unwrap());
    headers.insert("X-Validator-Version", "validator-2".parse().unwrap());
    let (ws, _) = tokio::time::timeout(GUARD, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect in time")
        .expect("the WebSocket handshake succeeds");
    ws
}

async fn send(ws: &mut Ws, text: impl Into<String>) {
    ws.send(Message::text(text.into()))
        .await
        .expect("the frame is sent");
}

async fn send_message(ws: &mut Ws, message: &ClientMessage) {
    send(ws, message.to_json()).await;
}

/// The next data or close frame (pings and pongs skipped).
async fn next_frame(ws: &mut Ws) -> Option<Result<Message, WsError>> {
    tokio::time::timeout(GUARD, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("a frame arrives in time")
}

async fn recv_text(ws: &mut Ws) -> String {
    match next_frame(ws).await {
        Some(Ok(Message::Text(text))) => text.as_str().to_owned(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

async fn recv_response(ws: &mut Ws) -> Response {
    let text = recv_text(ws).await;
    match decode_server_frame(&text, usize::MAX) {
        Ok(ServerMessage::Response(response)) => response,
        other => panic!("expected a Response, got {other:?} from {text}"),
    }
}

async fn recv_job(ws: &mut Ws) -> JobRequest {
    let text = recv_text(ws).await;
    match decode_server_frame(&text, usize::MAX) {
        Ok(ServerMessage::JobRequest(job)) => JobRequest::clone(&job),
        other => panic!("expected a job request, got {other:?} from {text}"),
    }
}

/// The only error type of a Response with exactly one error.
fn error_type(response: &Response) -> &str {
    match response.errors.as_slice() {
        [error] => &error.error_type,
        _ => panic!("expected exactly one error: {response:?}"),
    }
}

async fn authenticate(ws: &mut Ws, hotkey: &Hotkey) -> Response {
    send_message(ws, &ClientMessage::Auth(hotkey.auth_request())).await;
    recv_response(ws).await
}

async fn connect_and_authenticate(facilitator: &ReferenceFacilitator) -> Ws {
    let mut ws = connect(facilitator).await;
    let response = authenticate(&mut ws, &validator()).await;
    assert!(response.is_success(), "{response:?}");
    ws
}

/// Reads the server's close frame and returns its code, then reads on to the end of the stream (which is what
/// sends tungstenite's close reply).
async fn expect_close(ws: &mut Ws) -> u16 {
    let code = match next_frame(ws).await {
        Some(Ok(Message::Close(frame))) => frame.map_or(1005, |f| u16::from(f.code)),
        other => panic!("expected a close frame, got {other:?}"),
    };
    while let Some(Ok(_)) = next_frame(ws).await {}
    code
}

/// The connection must end without a close frame (and without any other frame first).
async fn expect_dropped(ws: &mut Ws) {
    match next_frame(ws).await {
        None | Some(Err(_)) => {}
        Some(Ok(frame)) => panic!("expected the connection to drop, got {frame:?}"),
    }
}

fn status(uuid: &str, status: JobStatus) -> ClientMessage {
    ClientMessage::StatusUpdate(JobStatusUpdate::new(uuid, status))
}

#[tokio::test]
async fn authenticates_a_signed_hotkey_and_records_the_headers() {
    let facilitator = start_default().await;
    let _ws = connect_and_authenticate(&facilitator).await;

    let records = facilitator.snapshot();
    let connection = &records.connections[0];
    assert_eq!(
        connection.hotkey.as_deref(),
        Some(validator().ss58().as_str())
    );
    assert_eq!(connection.runner_version.as_deref(), Some("runner-1"));
    assert_eq!(connection.validator_version.as_deref(), Some("validator-2"));
    assert!(connection.last_heartbeat.is_some(), "set at authentication");
    assert_eq!(records.authenticated_connections(), 1);
    assert_eq!(
        records.auth_attempts[0].outcome,
        AuthOutcome::Authenticated(validator().ss58())
    );
    assert_eq!(
        records.responses[0].response.to_json(),
        r#"{"status":"success","errors":[]}"#
    );
}

#[tokio::test]
async fn refuses_other_paths_with_404_in_the_handshake() {
    let facilitator = start_default().await;
    let url = format!("ws://{}/ws/v1/", facilitator.local_addr());
    match tokio_tungstenite::connect_async(url).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 404),
        other => panic!("expected a 404, got {other:?}"),
    }
    let records = facilitator
        .wait_for(|r| !r.rejected_handshakes.is_empty(), GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(records.rejected_handshakes[0].path, "/ws/v1/");
    assert!(records.connections.is_empty());
}

#[tokio::test]
async fn messages_before_auth_are_answered_not_authenticated_and_the_connection_stays_open() {
    let facilitator = start_default().await;
    let mut ws = connect(&facilitator).await;
    let specs = r#"{"message_type":"V0MachineSpecsUpdate","miner_hotkey":"a","validator_hotkey":"b","specs":{},"batch_id":"x"}"#;
    send_message(&mut ws, &ClientMessage::Heartbeat).await;
    send_message(
        &mut ws,
        &status("7d8a9f4e-1b2c-4d3e-8f40-5a6b7c8d9e01", JobStatus::Accepted),
    )
    .await;
    send(&mut ws, specs).await;
    for _ in 0..3 {
        let response = recv_response(&mut ws).await;
        assert_eq!(
            response.to_json(),
            r#"{"status":"error","errors":[{"msg":"Not authenticated","type":"auth.not_authenticated","help":"Please send authentication request first"}]}"#
        );
    }
    assert!(authenticate(&mut ws, &validator()).await.is_success());

    let records = facilitator.snapshot();
    assert!(
        records.heartbeats.is_empty(),
        "a heartbeat before auth is not recorded as one"
    );
    assert_eq!(
        records.status_updates[0].outcome,
        StatusOutcome::NotAuthenticated
    );
    assert_eq!(records.connections[0].messages, 4);
}

#[tokio::test]
async fn a_bad_signature_gets_signature_invalid_then_close_3000() {
    let facilitator = start_default().await;
    let mut ws = connect(&facilitator).await;
    let mut request = validator().auth_request();
    // Signed by another key: well-formed, does not verify.
    request.signature = Hotkey::from_seed(&[9; 32]).auth_request().signature;
    send_message(&mut ws, &ClientMessage::Auth(request)).await;

    let response = recv_response(&mut ws).await;
    assert_eq!(
        response.to_json(),
        r#"{"status":"error","errors":[{"msg":"Invalid signature","type":"auth.signature_invalid","help":"The signature provided does not match the public key"}]}"#
    );
    assert_eq!(expect_close(&mut ws).await, 3000);

    let records = facilitator
        .wait_for(|r| r.connections[0].end.is_some(), GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let connection = &records.connections[0];
    assert_eq!(connection.close_sent, Some(3000));
    assert_eq!(connection.end, Some(ConnectionEnd::ServerClosed));
    assert_eq!(connection.hotkey, None);
    assert_eq!(
        records.auth_attempts[0].outcome,
        AuthOutcome::SignatureInvalid { injected: false }
    );
}

#[tokio::test]
async fn an_unregistered_hotkey_gets_validator_not_found_with_its_ss58_then_close_3001() {
    let registered = Hotkey::from_seed(&[5; 32]);
    let facilitator = start(FacilitatorConfig {
        validators: Validators::Listed(vec![registered.public_key()]),
        ..FacilitatorConfig::default()
    })
    .await;

    let mut ws = connect(&facilitator).await;
    let stranger = validator();
    let response = authenticate(&mut ws, &stranger).await;
    let expected = format!(
        r#"{{"status":"error","errors":[{{"msg":"Validator not found","type":"auth.validator_not_found","help":"Validator with hotkey {} was not found. If you are sure that the key belongs to an active validator, please wait at least 0:05:00 for the list of active validators to be updated and then retry."}}]}}"#,
        stranger.ss58()
    );
    assert_eq!(response.to_json(), expected);
    assert_eq!(expect_close(&mut ws).await, 3001);

    let mut ws = connect(&facilitator).await;
    assert!(authenticate(&mut ws, &registered).await.is_success());
}

#[tokio::test]
async fn malformed_auth_credentials_drop_the_connection_like_the_real_servers_crash() {
    let facilitator = start_default().await;
    let mut ws = connect(&facilitator).await;
    let mut request = validator().auth_request();
    request.signature = request.signature.trim_start_matches("0x").to_owned();
    send_message(&mut ws, &ClientMessage::Auth(request)).await;
    expect_dropped(&mut ws).await;

    let records = facilitator
        .wait_for(|r| r.connections[0].end.is_some(), GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        records.connections[0].end,
        Some(ConnectionEnd::Crashed(_))
    ));
    assert_eq!(records.connections[0].close_sent, None);
    assert!(records.responses.is_empty());
}

#[tokio::test]
async fn a_second_auth_is_already_authenticated_and_keeps_the_connection() {
    let facilitator = start_default().await;
    let mut ws = connect_and_authenticate(&facilitator).await;
    let response = authenticate(&mut ws, &validator()).await;
    assert_eq!(error_type(&response), "auth.already_authenticated");
    let job = facilitator.push_job();
    assert_eq!(recv_job(&mut ws).await.uuid(), job);
}

#[tokio::test]
async fn status_updates_are_stored_once_per_job_and_status() {
    let facilitator = start_default().await;
    let mut ws = connect_and_authenticate(&facilitator).await;
    let uuid = facilitator.push_job();
    assert_eq!(recv_job(&mut ws).await.uuid(), uuid);

    send_message(&mut ws, &status(&uuid, JobStatus::Received)).await;
    assert!(recv_response(&mut ws).await.is_success());
    send_message(&mut ws, &status(&uuid, JobStatus::Received)).await;
    let duplicate = recv_response(&mut ws).await;
    assert_eq!(
        duplicate.to_json(),
        r#"{"status":"error","errors":[{"msg":"Integrity error","type":"job.integrity_error","help":"Probably you are trying to set the same status twice?"}]}"#
    );
    // `sent` is stored by the facilitator when it creates the job.
    send_message(&mut ws, &status(&uuid, JobStatus::Sent)).await;
    assert_eq!(
        error_type(&recv_response(&mut ws).await),
        "job.integrity_error"
    );
    // The lookup goes through a UUID column: other spellings find the same job.
    send_message(&mut ws, &status(&uuid.to_uppercase(), JobStatus::Accepted)).await;
    assert!(recv_response(&mut ws).await.is_success());
    send_message(
        &mut ws,
        &status("7d8a9f4e-1b2c-4d3e-8f40-5a6b7c8d9e01", JobStatus::Accepted),
    )
    .await;
    let unknown = recv_response(&mut ws).await;
    assert_eq!(
        unknown.to_json(),
        r#"{"status":"error","errors":[{"msg":"Job not found","type":"job.not_found","help":"Job with this UUID was not found"}]}"#
    );
    let mut completed = JobStatusUpdate::new(uuid.clone(), JobStatus::Completed);
    completed
        .metadata
        .extra
        .insert("note".into(), "kept".into());
    send_message(&mut ws, &ClientMessage::StatusUpdate(completed)).await;
    assert!(recv_response(&mut ws).await.is_success());

    let records = facilitator.snapshot();
    assert_eq!(
        records.statuses_of(&uuid),
        [
            JobStatus::Received,
            JobStatus::Accepted,
            JobStatus::Completed
        ]
    );
    assert_eq!(records.duplicates().count(), 2);
    assert_eq!(records.finished_jobs(), 1);
    let stored: Vec<_> = records.stored().collect();
    assert_eq!(stored[2].metadata["note"], "kept");
    assert_eq!(stored[2].connection, records.connections[0].id);
}

#[tokio::test]
async fn responses_to_a_pipeline_of_100_status_updates_come_back_in_order() {
    let facilitator = start_default().await;
    let mut ws = connect_and_authenticate(&facilitator).await;
    let jobs: Vec<String> = (0..10).map(|_| facilitator.push_job()).collect();
    for uuid in &jobs {
        assert_eq!(recv_job(&mut ws).await.uuid(), uuid);
    }

    // A mix of first-time statuses, repeats and unknown jobs, all sent before reading any Response.
    let statuses = [
        JobStatus::Received,
        JobStatus::Accepted,
        JobStatus::ExecutorReady,
        JobStatus::Received,
        JobStatus::Completed,
    ];
    let unknown = "00000000-0000-4000-8000-000000000000";
    let mut stored = std::collections::HashSet::new();
    let mut expected = Vec::new();
    for i in 0..100 {
        let (uuid, status_) = if i % 7 == 3 {
            (unknown, JobStatus::Accepted)
        } else {
            (
                jobs[i % jobs.len()].as_str(),
                statuses[(i / jobs.len()) % statuses.len()],
            )
        };
        expected.push(if uuid == unknown {
            "job.not_found"
        } else if stored.insert((uuid, status_)) {
            "success"
        } else {
            "job.integrity_error"
        });
        send_message(&mut ws, &status(uuid, status_)).await;
    }
    let mut answered = Vec::new();
    for _ in 0..100 {
        let response = recv_response(&mut ws).await;
        answered.push(if response.is_success() {
            "success"
        } else {
            match response.first_error_type() {
                Some("job.not_found") => "job.not_found",
                Some("job.integrity_error") => "job.integrity_error",
                other => panic!("unexpected Response {other:?}"),
            }
        });
    }
    assert_eq!(answered, expected);

    let records = facilitator.snapshot();
    let recorded: Vec<&str> = records
        .status_updates
        .iter()
        .map(|u| u.uuid.as_str())
        .collect();
    assert_eq!(recorded.len(), 100);
    for uuid in &jobs {
        let sent: Vec<JobStatus> = records
            .status_updates
            .iter()
            .filter(|u| u.uuid == *uuid && u.outcome.stored())
            .map(|u| u.status)
            .collect();
        assert_eq!(
            records.statuses_of(uuid),
            sent,
            "per-job arrival order of {uuid}"
        );
    }
}

#[tokio::test]
async fn garbage_gets_a_parse_error_response_and_the_connection_stays_open() {
    let facilitator = start_default().await;
    let mut ws = connect(&facilitator).await;

    send(&mut ws, "not json").await;
    let response = recv_response(&mut ws).await;
    assert_eq!(error_type(&response), "json_invalid");
    assert_eq!(response.errors[0].extra["input"], "not json");
    assert_eq!(response.errors[0].help, "");

    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(error_type(&recv_response(&mut ws).await), "json_type");

    send(&mut ws, r#"{"message_type":"V0Heartbeat","x":1}"#).await;
    let response = recv_response(&mut ws).await;
    assert_eq!(error_type(&response), "extra_forbidden");
    assert_eq!(
        response.errors[0].extra["loc"],
        serde_json::json!(["V0Heartbeat", "x"])
    );

    send(&mut ws, r#"{"public_key":"00"}"#).await;
    assert_eq!(
        error_type(&recv_response(&mut ws).await),
        "union_tag_not_found"
    );

    // Still open, still unauthenticated, and authentication works.
    assert!(authenticate(&mut ws, &validator()).await.is_success());
    let records = facilitator.snapshot();
    assert_eq!(records.messages.len(), 5);
    assert!(records.messages[..4].iter().all(|m| m.message.is_none()));
}

#[tokio::test]
async fn jobs_created_before_any_validator_are_pushed_after_auth_and_verify() {
    let facilitator = start(FacilitatorConfig {
        jobs: JobPlan::count(3),
        ..FacilitatorConfig::default()
    })
    .await;
    facilitator
        .wait_for(|r| r.jobs.len() == 3, GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let mut ws = connect_and_authenticate(&facilitator).await;
    let trusted =
        TrustedSigners::new(validator().public_key(), [testing::TEST_SIGNER_SS58]).unwrap();
    let mut uuids = Vec::new();
    for _ in 0..3 {
        let job = recv_job(&mut ws).await;
        trusted.check(&job).expect("a trusted, valid signature");
        assert_eq!(
            job.verify_signature(),
            Ok(testing::test_signer().public_key())
        );
        let uuid = job.uuid().to_owned();
        assert_eq!(uuid, uuid.to_lowercase());
        assert_eq!(
            (uuid.len(), &uuid[14..15]),
            (36, "4"),
            "a version-4 UUID: {uuid}"
        );
        uuids.push(uuid);
    }
    let records = facilitator.snapshot();
    let created: Vec<&str> = records.jobs.iter().map(|j| j.uuid.as_str()).collect();
    assert_eq!(created, uuids);
    assert!(
        records
            .jobs
            .iter()
            .all(|j| j.pushed_to == [records.connections[0].id])
    );
    assert_eq!(facilitator.signer_ss58(), testing::TEST_SIGNER_SS58);
}

#[tokio::test]
async fn the_same_seed_gives_the_same_job_uuids() {
    let config = || FacilitatorConfig {
        uuid_seed: 42,
        ..FacilitatorConfig::default()
    };
    let first = start(config()).await;
    let second = start(config()).await;
    let a: Vec<String> = (0..5).map(|_| first.push_job()).collect();
    let b: Vec<String> = (0..5).map(|_| second.push_job()).collect();
    assert_eq!(a, b);
}

#[tokio::test]
async fn jobs_go_to_every_authenticated_connection_but_not_to_unauthenticated_ones() {
    let facilitator = start_default().await;
    let mut first = connect_and_authenticate(&facilitator).await;
    let mut second = connect_and_authenticate(&facilitator).await;
    let mut anonymous = connect(&facilitator).await;
    let uuid = facilitator.push_job();
    assert_eq!(recv_job(&mut first).await.uuid(), uuid);
    assert_eq!(recv_job(&mut second).await.uuid(), uuid);
    // The anonymous connection got nothing: its first frame is the answer to its heartbeat.
    send_message(&mut anonymous, &ClientMessage::Heartbeat).await;
    assert_eq!(
        error_type(&recv_response(&mut anonymous).await),
        "auth.not_authenticated"
    );
}

#[tokio::test]
async fn max_open_holds_new_jobs_until_one_finishes() {
    let facilitator = start(FacilitatorConfig {
        jobs: JobPlan::count(3).max_open(2),
        ..FacilitatorConfig::default()
    })
    .await;
    let mut ws = connect_and_authenticate(&facilitator).await;
    let first = recv_job(&mut ws).await;
    let _second = recv_job(&mut ws).await;
    assert_eq!(facilitator.snapshot().jobs.len(), 2);

    send_message(&mut ws, &status(first.uuid(), JobStatus::Rejected)).await;
    assert!(recv_response(&mut ws).await.is_success());
    let third = recv_job(&mut ws).await;
    assert_eq!(facilitator.snapshot().jobs[2].uuid, third.uuid());
}

#[tokio::test]
async fn a_plan_that_refills_at_once_replaces_each_answered_job_right_behind_its_response() {
    let facilitator = start(FacilitatorConfig {
        jobs: JobPlan::count(3).max_open(2).refill_at_once(),
        ..FacilitatorConfig::default()
    })
    .await;
    let mut ws = connect_and_authenticate(&facilitator).await;
    let first = recv_job(&mut ws).await;
    let second = recv_job(&mut ws).await;
    send_message(&mut ws, &status(first.uuid(), JobStatus::Received)).await;
    assert!(recv_response(&mut ws).await.is_success());
    // Not terminal: no replacement. Terminal: the replacement is the very next frame.
    send_message(&mut ws, &status(first.uuid(), JobStatus::Rejected)).await;
    assert!(recv_response(&mut ws).await.is_success());
    let third = recv_job(&mut ws).await;
    let records = facilitator.snapshot();
    let uuids: Vec<&str> = records.jobs.iter().map(|j| j.uuid.as_str()).collect();
    assert_eq!(
        uuids,
        [first.uuid(), second.uuid(), third.uuid()],
        "in sequence"
    );
    // The plan's three jobs are out: answering the others brings no fourth.
    send_message(&mut ws, &status(second.uuid(), JobStatus::Rejected)).await;
    send_message(&mut ws, &status(third.uuid(), JobStatus::Rejected)).await;
    assert!(recv_response(&mut ws).await.is_success());
    assert!(recv_response(&mut ws).await.is_success());
    let quiet = tokio::time::timeout(Duration::from_millis(200), next_frame(&mut ws)).await;
    assert!(quiet.is_err(), "a job beyond the plan: {quiet:?}");
    assert_eq!(facilitator.snapshot().jobs.len(), 3);
}

#[tokio::test]
async fn with_signing_off_a_refilling_plan_makes_unsigned_jobs_at_once() {
    let facilitator = start(FacilitatorConfig {
        jobs: JobPlan::unlimited().max_open(1).refill_at_once(),
        ..FacilitatorConfig::default()
    })
    .await;
    let mut ws = connect_and_authenticate(&facilitator).await;
    let mut job = recv_job(&mut ws).await;
    assert!(job.signature().is_some());
    facilitator.set_job_signing(false);
    // The stock (one job, and one being signed) goes first; then every replacement is unsigned.
    let mut signed_after = 0;
    for _ in 0..6 {
        send_message(&mut ws, &status(job.uuid(), JobStatus::Rejected)).await;
        assert!(recv_response(&mut ws).await.is_success());
        job = recv_job(&mut ws).await;
        if job.signature().is_some() {
            signed_after += 1;
        }
    }
    assert!(job.signature().is_none(), "unsigned jobs are made");
    assert!(
        signed_after <= 2,
        "{signed_after} signed jobs after signing was turned off"
    );
    assert_eq!(facilitator.snapshot().jobs.len(), 7, "one open at a time");
}

#[tokio::test]
async fn cheat_reports_raw_text_and_binary_frames_are_pushed() {
    let facilitator = start_default().await;
    let mut ws = connect_and_authenticate(&facilitator).await;
    facilitator.push_cheated(
        "job-1",
        "job-2",
        serde_json::json!({"why": "output differs"}),
    );
    facilitator.push_raw_text("{not json");
    facilitator.push_binary(vec![0xff, 0x00]);

    let text = recv_text(&mut ws).await;
    let Ok(ServerMessage::JobCheated(report)) = decode_server_frame(&text, usize::MAX) else {
        panic!("expected a cheat report: {text}");
    };
    TrustedSigners::new(validator().public_key(), [testing::TEST_SIGNER_SS58])
        .unwrap()
        .check_cheat_report(&report)
        .expect("signed over the validator's payload");
    assert_eq!(recv_text(&mut ws).await, "{not json");
    match next_frame(&mut ws).await {
        Some(Ok(Message::Binary(bytes))) => assert_eq!(bytes.as_ref(), [0xff, 0x00]),
        other => panic!("expected a binary frame, got {other:?}"),
    }
    let kinds: Vec<PushKind> = facilitator
        .snapshot()
        .pushes
        .into_iter()
        .map(|p| p.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            PushKind::Cheated("job-1".into()),
            PushKind::RawText,
            PushKind::Binary
        ]
    );
}

#[tokio::test]
async fn completed_with_null_metadata_is_stored_then_the_connection_drops() {
    let facilitator = start_default().await;
    let mut ws = connect_and_authenticate(&facilitator).await;
    let uuid = facilitator.push_job();
    recv_job(&mut ws).await;
    send(
        &mut ws,
        format!(r#"{{"message_type":"V0JobStatusUpdate","uuid":"{uuid}","status":"completed","metadata":null}}"#),
    )
    .await;
    expect_dropped(&mut ws).await;

    let records = facilitator
        .wait_for(|r| r.connections[0].end.is_some(), GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(records.statuses_of(&uuid), [JobStatus::Completed]);
    assert_eq!(
        records.status_updates[0].outcome,
        StatusOutcome::StoredThenCrashed
    );
    assert!(matches!(
        records.connections[0].end,
        Some(ConnectionEnd::Crashed(_))
    ));
}

#[tokio::test]
async fn a_status_update_whose_uuid_is_not_a_uuid_drops_the_connection() {
    let facilitator = start_default().await;
    let mut ws = connect_and_authenticate(&facilitator).await;
    send_message(&mut ws, &status("job-1", JobStatus::Accepted)).await;
    expect_dropped(&mut ws).await;
    let records = facilitator
        .wait_for(|r| r.connections[0].end.is_some(), GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        records.status_updates[0].outcome,
        StatusOutcome::InvalidUuid
    );
}

#[tokio::test]
async fn heartbeats_and_machine_specs_get_no_response_after_auth() {
    let facilitator = start_default().await;
    let mut ws = connect_and_authenticate(&facilitator).await;
    send_message(&mut ws, &ClientMessage::Heartbeat).await;
    send(
        &mut ws,
        r#"{"message_type":"V0MachineSpecsUpdate","miner_hotkey":"a","validator_hotkey":"b","specs":{},"batch_id":"x"}"#,
    )
    .await;
    // The next frame answers the unknown job's status: nothing came for the heartbeat or the specs.
    send_message(
        &mut ws,
        &status("00000000-0000-4000-8000-000000000000", JobStatus::Accepted),
    )
    .await;
    assert_eq!(error_type(&recv_response(&mut ws).await), "job.not_found");
    let records = facilitator.snapshot();
    assert_eq!(records.heartbeats.len(), 1);
    assert_eq!(
        records.connections[0].last_heartbeat,
        Some(records.heartbeats[0].at)
    );
    assert_eq!(records.responses.len(), 2);
}

#[tokio::test]
async fn drop_fault_drops_the_tcp_connection_after_n_messages() {
    let facilitator = start(FacilitatorConfig {
        faults: Faults {
            drop_after: Some(AfterMessages::first_connections(2, 1)),
            ..Faults::none()
        },
        ..FacilitatorConfig::default()
    })
    .await;
    let mut ws = connect_and_authenticate(&facilitator).await;
    let unknown = "00000000-0000-4000-8000-000000000000";
    // Message 2 is still handled and answered; then the connection drops.
    send_message(&mut ws, &status(unknown, JobStatus::Accepted)).await;
    assert_eq!(error_type(&recv_response(&mut ws).await), "job.not_found");
    expect_dropped(&mut ws).await;

    let records = facilitator
        .wait_for(|r| r.connections[0].end.is_some(), GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(records.connections[0].end, Some(ConnectionEnd::Dropped));
    assert_eq!(records.connections[0].messages, 2);
    assert_eq!(records.connections[0].close_sent, None);

    // Only the first connection was affected.
    let mut ws = connect_and_authenticate(&facilitator).await;
    for _ in 0..3 {
        send_message(&mut ws, &status(unknown, JobStatus::Accepted)).await;
        assert_eq!(error_type(&recv_response(&mut ws).await), "job.not_found");
    }
}

#[tokio::test]
async fn stall_fault_stops_answering_but_keeps_the_socket_open() {
    let facilitator = start(FacilitatorConfig {
        faults: Faults {
            stall_after: Some(AfterMessages::every_connection(1)),
            ..Faults::none()
        },
        ..FacilitatorConfig::default()
    })
    .await;
    let mut ws = connect_and_authenticate(&facilitator).await;
    facilitator
        .wait_for(|r| r.connections[0].stalled, GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    send_message(&mut ws, &ClientMessage::Heartbeat).await;
    send_message(
        &mut ws,
        &status("00000000-0000-4000-8000-000000000000", JobStatus::Accepted),
    )
    .await;
    ws.send(Message::Ping(vec![1].into())).await.unwrap();
    // A bounded wait for a frame that must not come: no Response, no pong, and no end of stream either.
    let quiet = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(quiet.is_err(), "a stalled connection sent {quiet:?}");

    let records = facilitator.snapshot();
    assert_eq!(records.connections[0].end, None);
    assert_eq!(
        records.connections[0].messages, 1,
        "nothing read after the stall"
    );

    facilitator.drop_all_connections();
    expect_dropped(&mut ws).await;
    facilitator
        .wait_for(
            |r| r.connections[0].end == Some(ConnectionEnd::Dropped),
            GUARD,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn held_responses_wait_for_the_release_while_jobs_and_pongs_still_flow() {
    let facilitator = start_default().await;
    let mut ws = connect_and_authenticate(&facilitator).await;
    facilitator.hold_responses();
    let uuid = facilitator.push_job();
    assert_eq!(recv_job(&mut ws).await.uuid(), uuid, "pushes keep flowing");
    send_message(&mut ws, &status(&uuid, JobStatus::Received)).await;
    send_message(&mut ws, &status(&uuid, JobStatus::Received)).await;
    ws.send(Message::Ping(vec![7].into())).await.unwrap();
    // The Ping is answered; the two Responses are not (a bounded wait for frames that must not come).
    let mut pong = false;
    let quiet = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(_))) => pong = true,
                other => return other,
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "a held Response was written: {quiet:?}");
    assert!(pong, "Pings are still answered");
    let records = facilitator
        .wait_for(|r| r.status_updates.len() == 2, GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        records.statuses_of(&uuid),
        [JobStatus::Received],
        "stored at once"
    );
    assert_eq!(
        records.responses.len(),
        1,
        "only the auth Response was written"
    );

    facilitator.release_responses();
    assert!(recv_response(&mut ws).await.is_success());
    assert_eq!(
        error_type(&recv_response(&mut ws).await),
        "job.integrity_error",
        "held Responses are written in order"
    );
    // And the connection answers at once again.
    send_message(&mut ws, &status(&uuid, JobStatus::Accepted)).await;
    assert!(recv_response(&mut ws).await.is_success());
}

#[tokio::test]
async fn close_fault_and_close_all_send_the_chosen_code() {
    let facilitator = start(FacilitatorConfig {
        faults: Faults {
            close_after: Some(CloseAfter {
                after: AfterMessages::first_connections(1, 1),
                code: 3001,
            }),
            ..Faults::none()
        },
        ..FacilitatorConfig::default()
    })
    .await;
    let mut ws = connect_and_authenticate(&facilitator).await;
    assert_eq!(expect_close(&mut ws).await, 3001);

    let mut ws = connect_and_authenticate(&facilitator).await;
    facilitator.close_all_connections(4000);
    assert_eq!(expect_close(&mut ws).await, 4000);
    let records = facilitator
        .wait_for(|r| r.open_connections().count() == 0, GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let sent: Vec<Option<u16>> = records.connections.iter().map(|c| c.close_sent).collect();
    assert_eq!(sent, [Some(3001), Some(4000)]);
    // The client's tungstenite echoes the code in its close reply.
    assert_eq!(records.connections[1].close_received, Some(4000));
}

#[tokio::test]
async fn reject_auth_fault_rejects_the_first_attempts_only() {
    let facilitator = start(FacilitatorConfig {
        faults: Faults {
            reject_auth: Some(RejectAuth {
                with: AuthRejection::ValidatorNotFound,
                attempts: Times::First(1),
            }),
            ..Faults::none()
        },
        ..FacilitatorConfig::default()
    })
    .await;
    let mut ws = connect(&facilitator).await;
    let response = authenticate(&mut ws, &validator()).await;
    assert_eq!(error_type(&response), "auth.validator_not_found");
    assert!(response.errors[0].help.contains(&validator().ss58()));
    assert_eq!(expect_close(&mut ws).await, 3001);

    let _ws = connect_and_authenticate(&facilitator).await;

    facilitator.set_faults(Faults {
        reject_auth: Some(RejectAuth {
            with: AuthRejection::SignatureInvalid,
            attempts: Times::Always,
        }),
        ..Faults::none()
    });
    for _ in 0..2 {
        let mut ws = connect(&facilitator).await;
        assert_eq!(
            error_type(&authenticate(&mut ws, &validator()).await),
            "auth.signature_invalid"
        );
        assert_eq!(expect_close(&mut ws).await, 3000);
    }
    let outcomes: Vec<AuthOutcome> = facilitator
        .snapshot()
        .auth_attempts
        .into_iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(
        outcomes,
        [
            AuthOutcome::ValidatorNotFound { injected: true },
            AuthOutcome::Authenticated(validator().ss58()),
            AuthOutcome::SignatureInvalid { injected: true },
            AuthOutcome::SignatureInvalid { injected: true },
        ]
    );
}

#[tokio::test]
async fn jobs_pushed_while_the_only_validator_is_away_wait_for_the_next_auth() {
    let facilitator = start_default().await;
    let mut ws = connect_and_authenticate(&facilitator).await;
    facilitator.drop_all_connections();
    expect_dropped(&mut ws).await;
    facilitator
        .wait_for(|r| r.authenticated_connections() == 0, GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let uuid = facilitator.push_job();

    let mut ws = connect_and_authenticate(&facilitator).await;
    assert_eq!(recv_job(&mut ws).await.uuid(), uuid);
    assert_eq!(
        facilitator.snapshot().job(&uuid).unwrap().pushed_to,
        [facilitator.snapshot().connections[1].id]
    );
}

#[tokio::test]
async fn shutdown_closes_connections_with_a_close_frame() {
    let facilitator = start_default().await;
    let mut ws = connect_and_authenticate(&facilitator).await;
    let url = facilitator.url();
    let (closed, ()) = tokio::join!(expect_close(&mut ws), facilitator.shutdown());
    assert_eq!(closed, 1012);
    assert!(
        tokio_tungstenite::connect_async(url).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn wait_for_reports_the_records_when_it_gives_up() {
    let facilitator = start_default().await;
    let error = facilitator
        .wait_for(|r| !r.jobs.is_empty(), Duration::from_millis(50))
        .await
        .expect_err("no job is ever created");
    assert!(error.records.jobs.is_empty());
    assert!(error.to_string().contains("0 jobs"), "{error}");
}

#[tokio::test]
async fn planned_jobs_are_spaced_by_the_interval() {
    let interval = Duration::from_millis(30);
    let facilitator = start(FacilitatorConfig {
        jobs: JobPlan::count(3).every(interval),
        ..FacilitatorConfig::default()
    })
    .await;
    let records = facilitator
        .wait_for(|r| r.jobs.len() == 3, GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for pair in records.jobs.windows(2) {
        assert!(pair[1].created_at - pair[0].created_at >= interval);
    }
    // The plan is complete: no fourth job comes.
    let more = facilitator
        .wait_for(|r| r.jobs.len() > 3, interval * 3)
        .await;
    assert!(more.is_err(), "only 3 jobs were planned");
}

#[tokio::test]
async fn a_client_close_is_recorded_with_its_code() {
    let facilitator = start_default().await;
    let mut ws = connect_and_authenticate(&facilitator).await;
    ws.close(None).await.expect("the close frame is sent");
    while let Some(Ok(_)) = next_frame(&mut ws).await {}
    let records = facilitator
        .wait_for(|r| r.connections[0].end.is_some(), GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let connection = &records.connections[0];
    assert_eq!(connection.end, Some(ConnectionEnd::ClientClosed));
    assert_eq!(
        connection.close_received,
        Some(1005),
        "a close frame without a code"
    );
    assert_eq!(connection.close_sent, None);
    assert!(connection.closed_at.is_some());
}

#[tokio::test]
async fn dropping_the_facilitator_ends_its_connections_and_listener() {
    let facilitator = start_default().await;
    let mut ws = connect_and_authenticate(&facilitator).await;
    let url = facilitator.url();
    drop(facilitator);
    expect_dropped(&mut ws).await;
    assert!(
        tokio_tungstenite::connect_async(url).await.is_err(),
        "the listener is closed"
    );
}
