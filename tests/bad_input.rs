//! Bad input: what a broken or hostile facilitator can send, one row of a table each. For every row the client
//! must not panic, must log one clear line and count the input in its metrics, and must either keep the
//! connection (harmless input) or reconnect (a protocol violation), as the row says; and no status update may be
//! lost: jobs run before (their statuses often still in flight) and after the bad input all complete.
//!
//! Inputs come from the reference facilitator (raw text and binary pushes, close frames: in order after the jobs
//! it pushed before) or, where a frame cannot be made with it (invalid UTF-8, anything before the auth Response),
//! from the fault proxy, which writes a raw frame at a frame boundary.
#![cfg(feature = "runtime")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use facilitator_client::machine::{StateKind, StopReason};
use facilitator_client::protocol::keys::Hotkey;
use facilitator_client::protocol::{JobStatus, Response, testing};
use facilitator_client::reference::{FacilitatorConfig, ReferenceFacilitator, StatusOutcome};
use facilitator_client::{Client, ClientConfig, Metrics};
use serde_json::{Map, Value, json};

use support::proxy::{Proxy, server_frame};
use support::{ECHO_STATUSES, LogCapture, RecordingEcho, fast_client_config, hotkey};

const GUARD: Duration = Duration::from_secs(20);

/// Jobs run before and after the bad input of each row.
const JOBS_EACH_SIDE: usize = 3;

/// When the bad input arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    /// On an authenticated connection, after jobs whose statuses may still be in flight.
    Running,
    /// On the first connection, before the auth Response: the first frame the client reads.
    BeforeAuth,
}

/// What the facilitator sends.
#[derive(Debug, Clone)]
enum Bad {
    /// A text frame, pushed by the facilitator.
    Text(String),
    /// The same text frame, many times.
    Flood(String, usize),
    /// A binary frame, pushed by the facilitator.
    Binary(Vec<u8>),
    /// A raw WebSocket frame, written by the proxy at a frame boundary.
    RawFrame(Vec<u8>),
    /// A close frame with this code, sent by the facilitator.
    Close(u16),
    /// A job request with a good signature from a key the client does not trust (registered, so `rejected` is
    /// stored).
    UntrustedJob(&'static str),
    /// A frame written before the auth Response (which is dropped with `replace`).
    FirstFrame { frame: Vec<u8>, replace: bool },
}

/// What the client must do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Same connection.
    Keeps,
    /// Drops it and connects again.
    Reconnects,
}

struct Row {
    name: &'static str,
    when: When,
    bad: Bad,
    expect: Expect,
    /// Metrics that must have exactly these values at the end (`in:<kind>` for `messages_in`).
    metrics: &'static [(&'static str, u64)],
    /// A text every line the client logs about it contains, and how many such lines.
    log: (&'static str, usize),
    /// For an answerable job request: its UUID and a text its `rejected` message must contain.
    rejected: Option<(&'static str, &'static str)>,
    /// A smaller message size limit for the client.
    max_message_size: Option<usize>,
}

const BAD_JOB_1: &str = "00000000-0000-4000-8000-0000000000b1";
const BAD_JOB_2: &str = "00000000-0000-4000-8000-0000000000b2";
const BAD_JOB_3: &str = "00000000-0000-4000-8000-0000000000b3";
const UNTRUSTED_JOB: &str = "00000000-0000-4000-8000-0000000000b4";

/// A minimal job's wire text with one change made to its JSON object (key order kept).
fn job_text_with(uuid: &str, change: impl FnOnce(&mut Map<String, Value>)) -> String {
    let mut job: Map<String, Value> =
        serde_json::from_str(&testing::unsigned_job_text(uuid)).expect("the test job is JSON");
    change(&mut job);
    Value::Object(job).to_string()
}

fn table() -> Vec<Row> {
    use Expect::{Keeps, Reconnects};
    use When::{BeforeAuth, Running};
    let row = |name, when, bad, expect, metrics, log| Row {
        name,
        when,
        bad,
        expect,
        metrics,
        log,
        rejected: None,
        max_message_size: None,
    };
    let undecodable = &[
        ("decode_errors", 1),
        ("in:undecodable", 1),
        ("disconnects", 0),
    ][..];
    vec![
        row(
            "malformed JSON",
            Running,
            Bad::Text(r#"{"status": "succ"#.into()),
            Keeps,
            undecodable,
            ("frame is not JSON", 1),
        ),
        row(
            "JSON that is not an object",
            Running,
            Bad::Text("[1, 2, 3]".into()),
            Keeps,
            undecodable,
            ("frame is an array, not a JSON object", 1),
        ),
        row(
            "unknown message_type",
            Running,
            Bad::Text(r#"{"message_type": "V9Surprise", "uuid": "x"}"#.into()),
            Keeps,
            undecodable,
            ("unknown message_type", 1),
        ),
        row(
            "an object that is no message",
            Running,
            Bad::Text(r#"{"hello": "world"}"#.into()),
            Keeps,
            undecodable,
            ("unrecognized message with keys", 1),
        ),
        row(
            "a Response with wrong types",
            Running,
            Bad::Text(r#"{"status": 42, "errors": "none"}"#.into()),
            Keeps,
            undecodable,
            ("invalid Response", 1),
        ),
        Row {
            rejected: Some((BAD_JOB_1, "docker_image")),
            ..row(
                "a job request missing a field",
                Running,
                Bad::Text(job_text_with(BAD_JOB_1, |j| {
                    j.remove("docker_image");
                })),
                Keeps,
                // The facilitator never created this job: it answers the `rejected` with job.not_found.
                &[
                    ("decode_errors", 1),
                    ("jobs_rejected_invalid", 1),
                    ("statuses_refused", 1),
                    ("disconnects", 0),
                ],
                ("rejected (unknown): Invalid job request", 1),
            )
        },
        Row {
            rejected: Some((BAD_JOB_2, "args")),
            ..row(
                "a job request with a field of the wrong type",
                Running,
                Bad::Text(job_text_with(BAD_JOB_2, |j| {
                    j.insert("args".into(), json!(5));
                })),
                Keeps,
                &[
                    ("decode_errors", 1),
                    ("jobs_rejected_invalid", 1),
                    ("statuses_refused", 1),
                    ("disconnects", 0),
                ],
                ("rejected (unknown): Invalid job request", 1),
            )
        },
        Row {
            rejected: Some((BAD_JOB_3, "executor_class")),
            ..row(
                "a job request with an invalid executor_class",
                Running,
                Bad::Text(job_text_with(BAD_JOB_3, |j| {
                    j.insert("executor_class".into(), json!("no_such.class"));
                })),
                Keeps,
                &[
                    ("decode_errors", 1),
                    ("jobs_rejected_invalid", 1),
                    ("statuses_refused", 1),
                    ("disconnects", 0),
                ],
                ("rejected (unknown): Invalid job request", 1),
            )
        },
        row(
            "a job request without a readable uuid",
            Running,
            Bad::Text(r#"{"message_type": "V2JobRequest", "uuid": 5}"#.into()),
            Keeps,
            &[
                ("decode_errors", 1),
                ("jobs_rejected_invalid", 0),
                ("disconnects", 0),
            ],
            ("without a readable uuid", 1),
        ),
        Row {
            rejected: Some((UNTRUSTED_JOB, "")),
            ..row(
                "a job request signed by an untrusted key",
                Running,
                Bad::UntrustedJob(UNTRUSTED_JOB),
                Keeps,
                &[
                    ("jobs_rejected_signature", 1),
                    ("statuses_refused", 0),
                    ("disconnects", 0),
                ],
                ("rejected (invalid_signature)", 1),
            )
        },
        row(
            "an invalid cheat report",
            Running,
            Bad::Text(r#"{"message_type": "V0JobCheated", "job_uuid": 5}"#.into()),
            Keeps,
            undecodable,
            ("invalid V0JobCheated", 1),
        ),
        row(
            "a binary frame",
            Running,
            Bad::Binary(vec![0xde, 0xad, 0xbe, 0xef]),
            Keeps,
            &[
                ("decode_errors", 1),
                ("binary_frames", 1),
                ("in:binary", 1),
                ("disconnects", 0),
            ],
            ("binary frame", 1),
        ),
        row(
            "a flood of Responses with nothing in flight",
            Running,
            Bad::Flood(Response::success().to_json(), 500),
            Keeps,
            &[
                ("unexpected_responses", 500),
                ("decode_errors", 0),
                ("disconnects", 0),
            ],
            // One line per interval, not one per frame: the other 499 are counted in a later line.
            ("a Response with no status update in flight", 1),
        ),
        row(
            "a text frame that is not UTF-8",
            Running,
            Bad::RawFrame(server_frame(0x1, &[b'{', 0xff, 0xfe, b'}'])),
            Reconnects,
            &[("disconnects", 1), ("decode_errors", 0)],
            ("text frame is not valid UTF-8", 1),
        ),
        Row {
            max_message_size: Some(64 * 1024),
            ..row(
                "a frame over the size limit",
                Running,
                Bad::Text(format!("\"{}\"", "x".repeat(100_000))),
                Reconnects,
                &[("disconnects", 1), ("decode_errors", 0)],
                ("frame over the size limit", 1),
            )
        },
        row(
            "close 1000 after auth",
            Running,
            Bad::Close(1000),
            Reconnects,
            &[("disconnects", 1), ("auth_failures", 0)],
            ("peer closed the connection (code 1000)", 1),
        ),
        row(
            "close 1011 after auth",
            Running,
            Bad::Close(1011),
            Reconnects,
            &[("disconnects", 1), ("auth_failures", 0)],
            ("peer closed the connection (code 1011)", 1),
        ),
        row(
            "close 4000 after auth",
            Running,
            Bad::Close(4000),
            Reconnects,
            &[("disconnects", 1), ("auth_failures", 0)],
            ("peer closed the connection (code 4000)", 1),
        ),
        row(
            "close 3000 (signature invalid) after auth: not fatal",
            Running,
            Bad::Close(3000),
            Reconnects,
            &[("disconnects", 1), ("auth_failures", 0)],
            ("peer closed the connection (code 3000)", 1),
        ),
        row(
            "close 3001 (validator not found) after auth: retried at the cap",
            Running,
            Bad::Close(3001),
            Reconnects,
            &[("disconnects", 1), ("auth_failures", 0)],
            ("peer closed the connection (code 3001)", 1),
        ),
        row(
            "garbage instead of the auth Response",
            BeforeAuth,
            Bad::FirstFrame {
                frame: server_frame(0x1, b"garbage"),
                replace: true,
            },
            Reconnects,
            &[
                ("auth_failures", 1),
                ("decode_errors", 1),
                ("disconnects", 0),
            ],
            ("expected the auth Response, got an undecodable frame", 1),
        ),
        row(
            "a job request instead of the auth Response",
            BeforeAuth,
            Bad::FirstFrame {
                frame: server_frame(
                    0x1,
                    testing::signed_job_text(&testing::test_signer(), BAD_JOB_1).as_bytes(),
                ),
                replace: true,
            },
            Reconnects,
            &[
                ("auth_failures", 1),
                ("jobs_accepted", JOBS_EACH_SIDE as u64),
            ],
            ("expected the auth Response, got a job request", 1),
        ),
        row(
            "an error Response before the auth Response",
            BeforeAuth,
            Bad::FirstFrame {
                frame: server_frame(
                    0x1,
                    Response::error("internal.error", "Something broke", "")
                        .to_json()
                        .as_bytes(),
                ),
                replace: false,
            },
            Reconnects,
            &[("auth_failures", 1), ("disconnects", 0)],
            ("auth failed: internal.error", 1),
        ),
        // Indistinguishable from the real one: taken as the auth Response. The real one then answers nothing.
        row(
            "a success Response before the auth Response",
            BeforeAuth,
            Bad::FirstFrame {
                frame: server_frame(0x1, Response::success().to_json().as_bytes()),
                replace: false,
            },
            Keeps,
            &[
                ("unexpected_responses", 1),
                ("auth_failures", 0),
                ("disconnects", 0),
            ],
            ("a Response with no status update in flight", 1),
        ),
    ]
}

fn metric(m: &Metrics, name: &str) -> u64 {
    let c = &m.counters;
    match name {
        "decode_errors" => c.decode_errors,
        "binary_frames" => c.binary_frames,
        "unexpected_responses" => c.unexpected_responses,
        "jobs_rejected_invalid" => c.jobs_rejected_invalid,
        "jobs_rejected_signature" => c.jobs_rejected_signature,
        "jobs_accepted" => c.jobs_accepted,
        "statuses_refused" => c.statuses_refused,
        "disconnects" => c.disconnects,
        "auth_failures" => c.auth_failures,
        other => match other.strip_prefix("in:") {
            Some(kind) => m.messages_in.get(kind).copied().unwrap_or(0),
            None => panic!("the table names an unknown metric {other:?}"),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_survived_counted_logged_and_loses_nothing() {
    let log = LogCapture::install();
    let mut failures = Vec::new();
    for row in table() {
        log.take();
        let result = tokio::time::timeout(GUARD * 2, run_row(&row)).await;
        let lines = log.take();
        let outcome = match result {
            Ok(Ok(())) => check_log(&row, &lines),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("did not finish within {:?}", GUARD * 2)),
        };
        match outcome {
            Ok(()) => println!("ok   {}", row.name),
            Err(e) => {
                println!("FAIL {}: {e}", row.name);
                for (level, line) in &lines {
                    println!("       {level} {line}");
                }
                failures.push(row.name);
            }
        }
    }
    assert!(failures.is_empty(), "rows failed: {failures:?}");
}

fn check_log(row: &Row, lines: &[(log::Level, String)]) -> Result<(), String> {
    // The client logs errors for bugs and fatal conditions only; bad input is neither.
    if let Some((_, line)) = lines.iter().find(|(level, _)| *level == log::Level::Error) {
        return Err(format!("an error was logged: {line}"));
    }
    let (needle, count) = row.log;
    let matching = lines.iter().filter(|(_, l)| l.contains(needle)).count();
    if matching != count {
        return Err(format!(
            "{matching} log line(s) contain {needle:?}, expected {count}"
        ));
    }
    let about = lines
        .iter()
        .find(|(_, l)| l.contains(needle))
        .map(|(level, _)| *level);
    if about.is_some_and(|level| level > log::Level::Warn) && row.expect == Expect::Keeps {
        return Err(format!(
            "ignored input logged at {about:?}, expected a warning"
        ));
    }
    Ok(())
}

async fn run_row(row: &Row) -> Result<(), String> {
    let facilitator = ReferenceFacilitator::start(FacilitatorConfig::default())
        .await
        .map_err(|e| format!("facilitator: {e}"))?;
    let proxy = Proxy::start(facilitator.local_addr(), 0)
        .await
        .map_err(|e| format!("proxy: {e}"))?;
    if let Bad::FirstFrame { frame, replace } = &row.bad {
        proxy.inject_on_next_connection(frame.clone(), *replace);
    }
    let mut config: ClientConfig = fast_client_config(&proxy.url(), &facilitator.signer_ss58());
    // Rows count connections exactly: no room for a dead-peer verdict from a machine too busy to read in time.
    config.machine.heartbeat_interval = Duration::from_millis(500);
    config.machine.peer_timeout = Duration::from_secs(5);
    if let Some(limit) = row.max_message_size {
        config.limits.max_message_size = limit;
    }
    let handler = RecordingEcho::default();
    let client = Client::new(config, hotkey(), Arc::new(handler.clone()))
        .map_err(|e| format!("client: {e}"))?;
    let metrics = client.metrics();
    let shutdown = client.shutdown_handle();
    let run = tokio::spawn(client.run());
    let wait = |what: String| move |e| format!("waiting for {what}: {e}");

    let expected_connections = match row.expect {
        Expect::Keeps => 1,
        Expect::Reconnects => 2,
    };
    let mut jobs = Vec::new();
    if row.when == When::Running {
        facilitator
            .wait_for(|r| r.authenticated_connections() == 1, GUARD)
            .await
            .map_err(wait("the first authentication".into()))?;
        jobs.extend((0..JOBS_EACH_SIDE).map(|_| facilitator.push_job()));
        match &row.bad {
            // The proxy writes at the next frame boundary: the jobs must be through first.
            Bad::RawFrame(_) => {
                support::wait_until("the first jobs to be dispatched", GUARD, || {
                    handler.distinct() == JOBS_EACH_SIDE
                })
                .await
            }
            // Nothing may be in flight for the Responses to be unexpected.
            Bad::Flood(..) => {
                support::wait_until("every status acknowledged", GUARD, || {
                    let m = metrics.snapshot();
                    m.counters.statuses_delivered == 3 * JOBS_EACH_SIDE as u64
                        && m.in_flight == 0
                        && m.outbox_queued == 0
                })
                .await
            }
            _ => {}
        }
        send(&facilitator, &proxy, &row.bad);
    }
    facilitator
        .wait_for(
            |r| {
                r.connections.len() >= expected_connections
                    && r.connections[expected_connections - 1].hotkey.is_some()
            },
            GUARD,
        )
        .await
        .map_err(wait(format!(
            "authentication on connection {expected_connections}"
        )))?;
    jobs.extend((0..JOBS_EACH_SIDE).map(|_| facilitator.push_job()));
    let records = facilitator
        .wait_for(|r| jobs.iter().all(|j| r.statuses_of(j).len() == 3), GUARD)
        .await
        .map_err(wait("every job's statuses".into()))?;
    shutdown.shutdown();
    let outcome = tokio::time::timeout(GUARD, run)
        .await
        .map_err(|_| "the client did not stop".to_owned())?
        .map_err(|e| format!("the client task failed (panic?): {e}"))?
        .map_err(|e| format!("client: {e}"))?;
    let records_at_end = facilitator.snapshot();

    // Nothing lost, in order; a graceful stop.
    for job in &jobs {
        if records.statuses_of(job) != ECHO_STATUSES {
            return Err(format!("job {job}: {:?}", records.statuses_of(job)));
        }
    }
    if outcome.reason != StopReason::Graceful || !outcome.undelivered.is_empty() {
        return Err(format!(
            "stopped {:?} with {} undelivered",
            outcome.reason,
            outcome.undelivered.len()
        ));
    }
    let m = &outcome.metrics;
    let c = &m.counters;
    if c.statuses_accepted != c.statuses_delivered + c.statuses_refused {
        return Err(format!("statuses unaccounted for: {c:?}"));
    }
    // Kept the connection, or reconnected once.
    if records_at_end.connections.len() != expected_connections {
        return Err(format!(
            "{} connection(s) at the facilitator, expected {expected_connections}",
            records_at_end.connections.len()
        ));
    }
    for (name, value) in row.metrics {
        let got = metric(m, name);
        if got != *value {
            return Err(format!("metric {name} is {got}, expected {value}: {m:?}"));
        }
    }
    if let Some((uuid, needle)) = row.rejected {
        let rejected = records_at_end
            .status_updates
            .iter()
            .find(|u| u.uuid == uuid && u.status == JobStatus::Rejected)
            .ok_or_else(|| format!("no `rejected` for {uuid} reached the facilitator"))?;
        let message = rejected.metadata["job_rejection_details"]["message"]
            .as_str()
            .unwrap_or_default();
        if !message.contains(needle) {
            return Err(format!(
                "the rejection does not name {needle:?}: {message:?}"
            ));
        }
        if uuid == UNTRUSTED_JOB && rejected.outcome != StatusOutcome::Stored {
            return Err(format!(
                "the rejection was not stored: {:?}",
                rejected.outcome
            ));
        }
    }
    if m.state != StateKind::Stopped {
        return Err(format!("state {:?} after the run", m.state));
    }
    proxy.shutdown().await;
    facilitator.shutdown().await;
    Ok(())
}

fn send(facilitator: &ReferenceFacilitator, proxy: &Proxy, bad: &Bad) {
    match bad {
        Bad::Text(text) => facilitator.push_raw_text(text.clone()),
        Bad::Flood(text, n) => {
            for _ in 0..*n {
                facilitator.push_raw_text(text.clone());
            }
        }
        Bad::Binary(bytes) => facilitator.push_binary(bytes.clone()),
        Bad::RawFrame(frame) => proxy.inject(frame.clone()),
        Bad::Close(code) => facilitator.close_all_connections(*code),
        Bad::UntrustedJob(uuid) => {
            let mut job = testing::minimal_job(uuid);
            job.sign(&Hotkey::from_seed(&[9u8; 32]), testing::TEST_TIMESTAMP_NS);
            facilitator.push_job_request(&job);
        }
        Bad::FirstFrame { .. } => unreachable!("written by the proxy on the first connection"),
    }
}
