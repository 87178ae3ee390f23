//! Operations over real sockets: the metrics/health listener's limits, `/metrics` scraped during a real run and
//! checked against the client's snapshot and by `promtool`, `/healthz`, the hub's timings on a real machine, and
//! `wss://` with a private CA generated here.
#![cfg(feature = "ops")]

#[path = "services/mod.rs"]
mod services;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use facilitator_client::handler::EchoHandler;
use facilitator_client::machine::{self, Action, BackoffConfig, Input, Machine, StateKind};
use facilitator_client::ops::{HealthPolicy, HttpLimits, HttpServer, Ops, Response, Routes};
use facilitator_client::protocol::keys::Hotkey;
use facilitator_client::protocol::{
    JobStatus, JobStatusUpdate, Response as ProtocolResponse, ServerMessage, TrustedSigners,
    decode_server_frame, testing,
};
use facilitator_client::reference::{
    AfterMessages, FacilitatorConfig, Faults, JobPlan, ReferenceFacilitator,
};
use facilitator_client::{Client, ClientConfig, Metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;

const GUARD: Duration = Duration::from_secs(30);

// ---- helpers -------------------------------------------------------------------------------------------------

/// Sends `request` and reads until the server closes; `None` when the connection ended without a byte.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream.write_all(request).await.ok()?;
    let mut out = Vec::new();
    let read = tokio::time::timeout(GUARD, stream.read_to_end(&mut out)).await;
    match read {
        Ok(Ok(_)) | Ok(Err(_)) if !out.is_empty() => {
            Some(String::from_utf8_lossy(&out).into_owned())
        }
        Ok(_) => None,
        Err(_) => panic!("the server neither answered nor closed within {GUARD:?}"),
    }
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

async fn get(addr: SocketAddr, path: &str) -> String {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
    .await
    .expect("an answer")
}

async fn serve(
    routes: Routes,
    limits: HttpLimits,
) -> (SocketAddr, Arc<facilitator_client::ops::http::HttpStats>) {
    let server = HttpServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), routes, limits)
        .await
        .expect("bind");
    let addr = server.local_addr().expect("local addr");
    let stats = server.stats();
    tokio::spawn(server.run());
    (addr, stats)
}

fn hello_routes() -> Routes {
    Routes::new().get("/metrics", || Response::text(200, "hello\n"))
}

// ---- the listener --------------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_paths_404_other_methods_405_garbage_400_oversized_431() {
    let (addr, _) = serve(hello_routes(), HttpLimits::default()).await;
    let ok = get(addr, "/metrics?x=1").await;
    assert_eq!(status_of(&ok), 200);
    assert_eq!(body_of(&ok), "hello\n");
    assert!(ok.contains("Connection: close\r\n"));
    assert_eq!(status_of(&get(addr, "/nope").await), 404);
    assert_eq!(status_of(&get(addr, "/metrics/").await), 404);
    let post = exchange(
        addr,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await
    .expect("an answer");
    assert_eq!(status_of(&post), 405);
    assert!(post.contains("Allow: GET\r\n"), "{post}");
    // A TLS ClientHello sent to the plain listener, and other garbage.
    for garbage in [
        &b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n"[..],
        b"GET /metrics HTTP/9.9\r\n\r\n",
        b"\xff\xfe\xfd\r\n\r\n",
        b"hello\n\n",
    ] {
        let answer = exchange(addr, garbage).await.expect("an answer");
        assert_eq!(status_of(&answer), 400, "{garbage:?}");
    }
    let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
    while huge.len() < 64 << 10 {
        huge.extend_from_slice(
            b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
    }
    // Either the 431 arrives or the server's close cuts our write short; never a 200, never a hang.
    if let Some(answer) = exchange(addr, &huge).await {
        assert_eq!(status_of(&answer), 431);
    }
    // Still serving.
    assert_eq!(status_of(&get(addr, "/metrics").await), 200);
}

#[tokio::test]
async fn a_client_trickling_a_byte_a_second_is_cut_off() {
    let limits = HttpLimits {
        header_timeout: Duration::from_millis(1500),
        ..HttpLimits::default()
    };
    let (addr, stats) = serve(hello_routes(), limits).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    let request = b"GET /metrics HTTP/1.1\r\nHost: slow\r\n\r\n";
    let mut cut_off = false;
    for byte in request {
        if stream.write_all(&[*byte]).await.is_err() {
            cut_off = true;
            break;
        }
        let mut buf = [0u8; 64];
        // Wait "a second" (shortened) for anything from the server: it must only ever be the close.
        match tokio::time::timeout(Duration::from_millis(400), stream.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut_off = true;
                break;
            }
            Ok(Ok(n)) => panic!("the slow client got an answer: {:?}", &buf[..n]),
        }
        assert!(started.elapsed() < GUARD);
    }
    assert!(
        cut_off,
        "the whole request trickled in without being cut off"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400),
        "cut off too early: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "cut off too late: {took:?}");
    assert_eq!(stats.cut_off.load(Ordering::Relaxed), 1);
    assert_eq!(status_of(&get(addr, "/metrics").await), 200);
}

#[tokio::test]
async fn a_thousand_connections_at_once_stay_bounded_and_all_get_served() {
    let limits = HttpLimits {
        header_timeout: Duration::from_secs(5),
        ..HttpLimits::default()
    };
    let (addr, stats) = serve(hello_routes(), limits).await;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        clients.spawn(async move { exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await });
    }
    let mut answered = 0;
    let mut refused = 0;
    while let Some(result) = clients.join_next().await {
        match result.expect("client task") {
            Some(answer) => {
                assert_eq!(status_of(&answer), 200);
                answered += 1;
            }
            None => refused += 1,
        }
    }
    let peak = stats.peak_active.load(Ordering::Relaxed);
    assert!(peak <= 64, "{peak} connections were open at once");
    assert!(
        peak >= 2,
        "the connections were not concurrent at all ({peak})"
    );
    // Those over the limit waited in the backlog; the kernel may refuse a few if its queue overflowed.
    assert!(answered >= 900, "{answered} answered, {refused} refused");
    let deadline = Instant::now() + GUARD;
    while stats.active.load(Ordering::Relaxed) > 0 {
        assert!(Instant::now() < deadline, "connections left open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status_of(&get(addr, "/metrics").await), 200);
}

#[tokio::test]
async fn idle_connections_holding_every_slot_only_delay_a_scrape_by_the_header_timeout() {
    let limits = HttpLimits {
        header_timeout: Duration::from_secs(1),
        ..HttpLimits::default()
    };
    let (addr, stats) = serve(hello_routes(), limits).await;
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // Let the server accept them all.
    let deadline = Instant::now() + GUARD;
    while stats.active.load(Ordering::Relaxed) < 64 {
        assert!(
            Instant::now() < deadline,
            "the idle connections were not accepted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    assert_eq!(status_of(&get(addr, "/metrics").await), 200);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "the scrape waited {waited:?}"
    );
    assert!(stats.peak_active.load(Ordering::Relaxed) <= 64);
    // The scrape got the first slot the header timeout freed; the other idle ones are cut off too.
    let deadline = Instant::now() + GUARD;
    while stats.cut_off.load(Ordering::Relaxed) < 64 {
        assert!(
            Instant::now() < deadline,
            "idle connections were not all cut off"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(idle);
}

// ---- /metrics during a real run ------------------------------------------------------------------------------

fn client_config(facilitator: &ReferenceFacilitator) -> ClientConfig {
    let mut config = support::loopback::client_config(facilitator);
    // Long heartbeats: the figures stay still once the jobs are done, so a scrape and a snapshot can be compared.
    config.machine.heartbeat_interval = Duration::from_secs(60);
    config.machine.peer_timeout = Duration::from_secs(120);
    config
}

/// Feeds the hub the machine's events, as the loop will (with its inputs too) once wired.
fn feed_events(client: &Client, ops: &Ops) {
    let mut events = client.subscribe();
    let ops = ops.clone();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            ops.on_action(&Action::Emit(event), Instant::now());
        }
    });
}

/// `name{labels} value` lines of an OpenMetrics text, keyed by `name{labels}`.
fn parse_samples(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "duplicate {series}"
        );
    }
    samples
}

fn sample(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| {
        panic!(
            "no series {series} in {:#?}",
            samples.keys().collect::<Vec<_>>()
        )
    })
}

/// `promtool check metrics` (Prometheus's own linter) on `text`. Debian's promtool (2.42) parses the Prometheus
/// text format, where a counter's HELP names the series with `_total`; in OpenMetrics it names the family without
/// it, so promtool reports "no help text" for each counter. Those lines, and only those, are accepted, and only for
/// counters whose family does have a HELP line; any other finding, or a parse error, fails.
fn promtool_check(text: &str) {
    use std::io::Write;
    let spawned = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = spawned else {
        services::missing(
            "promtool check metrics",
            "promtool (Debian package `prometheus`)",
        );
        return;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool ends");
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let unexplained: Vec<&str> = findings
        .lines()
        .filter(|line| {
            let counter_help = line
                .strip_suffix("_total no help text")
                .is_some_and(|family| {
                    text.contains(&format!("# HELP {family} "))
                        && text.contains(&format!("# TYPE {family} counter\n"))
                });
            !counter_help && !line.trim().is_empty()
        })
        .collect();
    // Exit 3 is "lint findings"; 1 would be a parse error.
    assert!(
        matches!(output.status.code(), Some(0 | 3)) && unexplained.is_empty(),
        "promtool check metrics failed ({:?}):\n{}",
        output.status.code(),
        unexplained.join("\n")
    );
}

async fn settled(client_metrics: &facilitator_client::MetricsHandle, delivered: u64) -> Metrics {
    let deadline = Instant::now() + GUARD;
    loop {
        let m = client_metrics.snapshot();
        if m.counters.statuses_delivered >= delivered
            && m.outbox_queued == 0
            && m.in_flight == 0
            && m.running_jobs == 0
        {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "the client did not settle: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_scrape_during_a_real_run_matches_the_clients_snapshot_and_passes_promtool() {
    const JOBS: u64 = 20;
    let facilitator = ReferenceFacilitator::start(FacilitatorConfig {
        jobs: JobPlan::count(JOBS).every(Duration::from_millis(5)),
        // One dropped connection in the middle: a reconnect and re-sends to count.
        faults: Faults {
            drop_after: Some(AfterMessages::first_connections(25, 1)),
            ..Faults::default()
        },
        ..FacilitatorConfig::default()
    })
    .await
    .expect("facilitator starts");
    let client = Client::new(
        client_config(&facilitator),
        Hotkey::from_seed(&[7u8; 32]),
        Arc::new(EchoHandler::new()),
    )
    .expect("valid config");
    let ops = Ops::new(
        client.metrics(),
        HealthPolicy::for_backoff_cap(Duration::from_millis(400)),
        Instant::now(),
    );
    feed_events(&client, &ops);
    let (addr, _) = serve(ops.routes(), HttpLimits::default()).await;
    let metrics = client.metrics();
    let shutdown = client.shutdown_handle();
    let run = tokio::spawn(client.run());

    // While jobs flow: every scrape is valid OpenMetrics, and counters never go backwards.
    let mut last_delivered = 0.0;
    for _ in 0..5 {
        let scrape = get(addr, "/metrics").await;
        assert_eq!(status_of(&scrape), 200);
        assert!(
            scrape.contains(
                "Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
            ),
            "{scrape}"
        );
        let body = body_of(&scrape);
        assert!(body.ends_with("# EOF\n"));
        let samples = parse_samples(body);
        let delivered = sample(&samples, "facilitator_client_statuses_delivered_total");
        assert!(delivered >= last_delivered);
        last_delivered = delivered;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }

    // Once settled, a scrape between two equal snapshots must show exactly their values.
    let expected_statuses = JOBS * 3; // received, accepted, completed
    let (before, body) = loop {
        let before = settled(&metrics, expected_statuses).await;
        // Let the event feed catch up with the last events.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let scrape = get(addr, "/metrics").await;
        if metrics.snapshot() == before {
            break (before, body_of(&scrape).to_owned());
        }
    };
    promtool_check(&body);
    let s = parse_samples(&body);
    let c = &before.counters;
    assert_eq!(before.state, StateKind::Running);
    assert_eq!(c.reconnects, 1, "the fault dropped one connection: {c:?}");
    let v = |name: &str| sample(&s, &format!("validator_facilitator_client_{name}"));
    let own = |name: &str| sample(&s, &format!("facilitator_client_{name}"));
    let n = |x: u64| x as f64;
    let out = |t: &str| n(before.messages_out.get(t).copied().unwrap_or(0));
    let inn = |t: &str| n(before.messages_in.get(t).copied().unwrap_or(0));
    assert_eq!(v("transport_layer_state"), 1.0);
    assert_eq!(v("message_queue_length"), 0.0);
    assert_eq!(
        v("messages_sent_total{message_type=\"JobStatusUpdate\"}"),
        out("V0JobStatusUpdate")
    );
    assert_eq!(
        v("messages_sent_total{message_type=\"V0Heartbeat\"}"),
        out("V0Heartbeat")
    );
    assert_eq!(
        v("messages_sent_total{message_type=\"V0AuthenticationRequest\"}"),
        out("V0AuthenticationRequest")
    );
    assert_eq!(out("V0AuthenticationRequest"), 2.0);
    assert_eq!(
        v("messages_received_total{message_type=\"Response\"}"),
        inn("Response")
    );
    assert_eq!(
        v("messages_received_total{message_type=\"V2JobRequest\"}"),
        inn("V2JobRequest")
    );
    assert_eq!(
        v("messages_received_total{message_type=\"V2JobRequest\"}"),
        n(JOBS)
    );
    assert_eq!(
        v("messages_received_total{message_type=\"V0JobCheated\"}"),
        0.0
    );
    assert_eq!(v("messages_received_total{message_type=\"unknown\"}"), 0.0);
    assert_eq!(
        v("message_send_failures_total{message_type=\"JobStatusUpdate\"}"),
        0.0
    );
    // Fed the machine's events, the hub counts each authentication and each lost connection.
    assert_eq!(
        v("transport_layer_events_total{event=\"success\"}"),
        n(c.authentications)
    );
    assert_eq!(
        v("transport_layer_events_total{event=\"transport_error\"}"),
        n(c.disconnects)
    );
    assert_eq!(v("transport_layer_events_total{event=\"auth_error\"}"), 0.0);
    for state in StateKind::ALL {
        let expected = if state == StateKind::Running {
            1.0
        } else {
            0.0
        };
        assert_eq!(own(&format!("state{{state=\"{state}\"}}")), expected);
    }
    assert!(own("state_duration_seconds") >= 0.0);
    assert_eq!(own("connects_total"), n(c.connects));
    assert_eq!(own("authentications_total"), n(c.authentications));
    assert_eq!(own("reconnects_total"), n(c.reconnects));
    assert_eq!(own("connect_failures_total"), n(c.auth_failures));
    assert_eq!(own("disconnects_total"), n(c.disconnects));
    assert_eq!(own("statuses_accepted_total"), n(c.statuses_accepted));
    assert_eq!(own("statuses_sent_total"), n(c.statuses_sent));
    assert_eq!(own("statuses_resent_total"), n(c.statuses_resent));
    assert_eq!(own("statuses_delivered_total"), n(c.statuses_delivered));
    assert_eq!(own("statuses_delivered_total"), n(expected_statuses));
    assert_eq!(own("statuses_refused_total"), n(c.statuses_refused));
    assert_eq!(own("statuses_undelivered_total"), 0.0);
    assert_eq!(own("heartbeats_total"), n(c.heartbeats));
    assert_eq!(own("statuses_queued"), 0.0);
    assert_eq!(own("statuses_in_flight"), 0.0);
    assert_eq!(own("running_jobs"), 0.0);
    assert_eq!(own("jobs_total{outcome=\"accepted\"}"), n(JOBS));
    assert_eq!(own("jobs_total{outcome=\"accepted\"}"), n(c.jobs_accepted));
    assert_eq!(
        own("jobs_total{outcome=\"duplicate\"}"),
        n(c.jobs_duplicate)
    );
    assert_eq!(
        own("jobs_rejected_total{reason=\"invalid_signature\"}"),
        n(c.jobs_rejected_signature)
    );
    assert_eq!(
        own("jobs_rejected_total{reason=\"draining\"}"),
        n(c.jobs_rejected_busy)
    );
    assert_eq!(
        own("jobs_rejected_total{reason=\"invalid_request\"}"),
        n(c.jobs_rejected_invalid)
    );
    let decode_errors: f64 = s
        .iter()
        .filter(|(k, _)| k.starts_with("facilitator_client_decode_errors_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(decode_errors, n(c.decode_errors));
    // The histograms exist with the Python client's buckets.
    for bucket in ["0.001", "0.075", "10.0", "+Inf"] {
        v(&format!(
            "transport_layer_connection_duration_seconds_bucket{{le=\"{bucket}\"}}"
        ));
        v(&format!(
            "transport_layer_authentication_duration_seconds_bucket{{le=\"{bucket}\"}}"
        ));
        v(&format!(
            "message_send_duration_seconds_bucket{{le=\"{bucket}\",message_type=\"JobStatusUpdate\"}}"
        ));
    }
    // Fed events only, the hub still times each status from the machine's own `received` to its delivery.
    assert_eq!(
        v("message_send_duration_seconds_count{message_type=\"JobStatusUpdate\"}"),
        n(JOBS),
        "the `received` of each job, timed from its JobAccepted event"
    );

    // /healthz: 200 and Running.
    let health = get(addr, "/healthz").await;
    assert_eq!(status_of(&health), 200, "{health}");
    assert!(health.contains("Content-Type: application/json\r\n"));
    let report: serde_json::Value = serde_json::from_str(body_of(&health)).expect("JSON");
    assert_eq!(report["state"], "Running");
    assert_eq!(report["statuses_queued"], 0);
    assert!(report["spool"].is_null());
    assert!(
        report["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("peer closed") || e.contains("socket"))
    );

    shutdown.shutdown();
    let outcome = tokio::time::timeout(GUARD, run)
        .await
        .expect("stops in time")
        .expect("task")
        .expect("valid config");
    assert_eq!(outcome.reason, machine::StopReason::Graceful);
    let after = get(addr, "/healthz").await;
    assert_eq!(status_of(&after), 503, "stopped is unhealthy: {after}");
    facilitator.shutdown().await;
}

// ---- the hub on a real machine, on simulated time ------------------------------------------------------------

/// Steps a real machine as the runtime's loop does, feeding the hub the input before and each action after.
struct Driver {
    machine: Machine,
    ops: Ops,
    now: Instant,
    actions: Vec<Action>,
}

impl Driver {
    fn step(&mut self, input: Input, after: Duration) -> &[Action] {
        self.now += after;
        self.ops.on_input(&input, self.now);
        self.actions = self.machine.step(input, self.now);
        for action in &self.actions {
            self.ops.on_action(action, self.now);
        }
        &self.actions
    }

    fn state(&self) -> StateKind {
        self.machine.state().kind()
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn job(uuid: &str) -> Input {
    let text = testing::signed_job_text(&testing::test_signer(), uuid);
    let message = decode_server_frame(&text, 1 << 20).expect("a valid job request");
    assert!(matches!(message, ServerMessage::JobRequest(_)));
    Input::Frame(message)
}

fn success() -> Input {
    Input::Frame(ServerMessage::Response(ProtocolResponse::success()))
}

#[tokio::test]
async fn the_hub_times_connects_auth_pings_sends_and_jobs_and_classifies_connection_ends() {
    let hotkey = Hotkey::from_seed(&[7u8; 32]);
    let t0 = Instant::now();
    let config = machine::Config {
        backoff: BackoffConfig {
            base: ms(100),
            factor: 2.0,
            cap: ms(400),
            jitter: 0.0,
            stable_after: Duration::from_secs(10),
        },
        ..machine::Config::default()
    };
    let signers = TrustedSigners::new(hotkey.public_key(), &[testing::test_signer().ss58()])
        .expect("signers");
    let metrics = facilitator_client::MetricsHandle::default();
    let ops = Ops::new(metrics, HealthPolicy::for_backoff_cap(ms(400)), t0);
    let mut d = Driver {
        machine: Machine::new(config, hotkey.auth_request(), signers, t0),
        ops: ops.clone(),
        now: t0,
        actions: Vec::new(),
    };
    assert_eq!(
        ops.health(d.now).0.http_status(),
        503,
        "before the first auth"
    );
    // A refused connect: transport_error.
    assert!(d.step(Input::Tick, ms(0)).contains(&Action::Open));
    d.step(Input::SocketFailed("connection refused".into()), ms(3));
    assert_eq!(d.state(), StateKind::Disconnected);
    // An error Response to the auth request: auth_error.
    d.step(Input::Tick, ms(100));
    d.step(Input::SocketOpened, ms(20));
    d.step(
        Input::Frame(ServerMessage::Response(ProtocolResponse::error(
            "auth.validator_not_found",
            "no such validator",
            "",
        ))),
        ms(5),
    );
    assert_eq!(d.state(), StateKind::Disconnected);
    assert_eq!(
        ops.health(d.now).0.http_status(),
        503,
        "still never authenticated"
    );
    // Connect in 30 ms, authenticate in 7 ms.
    d.step(Input::Tick, ms(400));
    d.step(Input::SocketOpened, ms(30));
    d.step(success(), ms(7));
    assert_eq!(d.state(), StateKind::Running);
    assert_eq!(ops.health(d.now).0.http_status(), 200);
    // The first Ping (sent with the first heartbeat) answered in 2 ms.
    d.step(Input::Pong, ms(2));
    // A job: accepted; `received` acknowledged 4 ms later; `accepted` and `completed` 1 ms after being queued.
    d.step(job("00000000-0000-4000-8000-000000000001"), ms(1));
    d.step(success(), ms(4));
    let uuid = "00000000-0000-4000-8000-000000000001";
    d.step(
        Input::Status(JobStatusUpdate::new(uuid.to_owned(), JobStatus::Accepted)),
        ms(10),
    );
    d.step(success(), ms(1));
    d.step(
        Input::Status(JobStatusUpdate::new(uuid.to_owned(), JobStatus::Completed)),
        ms(100),
    );
    d.step(success(), ms(1));
    d.step(Input::JobFinished(uuid.to_owned()), ms(1));
    // An undecodable frame.
    d.step(
        Input::Undecodable(facilitator_client::protocol::DecodeError::Binary),
        ms(1),
    );
    // The connection is lost: transport_error; healthy within the grace (800 ms), unhealthy after.
    d.step(Input::SocketFailed("reset".into()), ms(1));
    assert_eq!(d.state(), StateKind::Disconnected);
    assert_eq!(ops.health(d.now + ms(700)).0.http_status(), 200);
    assert_eq!(ops.health(d.now + ms(800)).0.http_status(), 503);
    let (_, report) = ops.health(d.now);
    assert!(
        report
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("reset")),
        "{report:?}"
    );

    let text = String::from_utf8(ops.render_metrics().body).expect("utf-8");
    promtool_check(&text);
    let s = parse_samples(&text);
    let v = |name: &str| sample(&s, &format!("validator_facilitator_client_{name}"));
    let own = |name: &str| sample(&s, &format!("facilitator_client_{name}"));
    assert_eq!(v("transport_layer_events_total{event=\"success\"}"), 1.0);
    assert_eq!(
        v("transport_layer_events_total{event=\"transport_error\"}"),
        2.0
    );
    assert_eq!(v("transport_layer_events_total{event=\"auth_error\"}"), 1.0);
    assert_eq!(
        v("transport_layer_events_total{event=\"unknown_error\"}"),
        0.0
    );
    // Connects: 20 ms (the rejected attempt) and 30 ms; auth: 7 ms (successes only).
    assert_eq!(v("transport_layer_connection_duration_seconds_count"), 2.0);
    assert!((v("transport_layer_connection_duration_seconds_sum") - 0.050).abs() < 1e-9);
    assert_eq!(
        v("transport_layer_connection_duration_seconds_bucket{le=\"0.025\"}"),
        1.0
    );
    assert_eq!(
        v("transport_layer_connection_duration_seconds_bucket{le=\"0.05\"}"),
        2.0
    );
    assert_eq!(
        v("transport_layer_authentication_duration_seconds_count"),
        1.0
    );
    assert!((v("transport_layer_authentication_duration_seconds_sum") - 0.007).abs() < 1e-9);
    assert_eq!(
        v("message_send_duration_seconds_count{message_type=\"V0AuthenticationRequest\"}"),
        1.0
    );
    // received 4 ms, accepted 1 ms, completed 1 ms.
    assert_eq!(
        v("message_send_duration_seconds_count{message_type=\"JobStatusUpdate\"}"),
        3.0
    );
    assert!(
        (v("message_send_duration_seconds_sum{message_type=\"JobStatusUpdate\"}") - 0.006).abs()
            < 1e-9
    );
    assert_eq!(own("ping_rtt_seconds_count"), 1.0);
    assert!((own("ping_rtt_seconds_sum") - 0.002).abs() < 1e-9);
    // Accepted at +1 ms after the Pong; terminal status queued 10 + 1 + 100 ms after the `received` ack (+4).
    assert_eq!(own("job_duration_seconds_count"), 1.0);
    assert!((own("job_duration_seconds_sum") - 0.115).abs() < 1e-9);
    assert_eq!(own("decode_errors_total{kind=\"binary\"}"), 1.0);
    assert_eq!(own("decode_errors_total{kind=\"not_json\"}"), 0.0);
}

#[tokio::test]
async fn healthz_over_http_follows_the_machine() {
    let hotkey = Hotkey::from_seed(&[7u8; 32]);
    let t0 = Instant::now();
    let signers = TrustedSigners::new(hotkey.public_key(), &[] as &[String]).expect("signers");
    let ops = Ops::new(
        facilitator_client::MetricsHandle::default(),
        HealthPolicy {
            grace: Duration::from_secs(3600),
        },
        t0,
    );
    let (addr, _) = serve(ops.routes(), HttpLimits::default()).await;
    let mut d = Driver {
        machine: Machine::new(
            machine::Config::default(),
            hotkey.auth_request(),
            signers,
            t0,
        ),
        ops: ops.clone(),
        now: t0,
        actions: Vec::new(),
    };
    let before = get(addr, "/healthz").await;
    assert_eq!(status_of(&before), 503);
    let report: serde_json::Value = serde_json::from_str(body_of(&before)).expect("JSON");
    assert_eq!(report["state"], "Disconnected");
    d.step(Input::Tick, ms(0));
    d.step(Input::SocketOpened, ms(1));
    d.step(success(), ms(1));
    let running = get(addr, "/healthz").await;
    assert_eq!(status_of(&running), 200, "{running}");
    let report: serde_json::Value = serde_json::from_str(body_of(&running)).expect("JSON");
    assert_eq!(report["state"], "Running");
    assert!(
        report["since"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z') && s.len() == 24),
        "{report}"
    );
    assert!(report["last_error"].is_null());
    let mut keys: Vec<&String> = report.as_object().expect("object").keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["last_error", "since", "spool", "state", "statuses_queued"]
    );
    // Lost: still healthy within the hour's grace.
    d.step(Input::SocketClosed(Some(1006)), ms(1));
    let reconnecting = get(addr, "/healthz").await;
    assert_eq!(status_of(&reconnecting), 200);
    let report: serde_json::Value = serde_json::from_str(body_of(&reconnecting)).expect("JSON");
    assert_eq!(report["state"], "Disconnected");
    assert!(
        report["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("1006")),
        "{report}"
    );
}
