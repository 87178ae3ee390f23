//! The operations pieces wired into the runtime and the CLI: a full client over `wss://` with `ca_file`, the
//! hub's timings from a real loop, the rate-limited warnings, and the new flags' configuration errors.
#![cfg(feature = "ops")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use facilitator_client::Client;
use facilitator_client::handler::EchoHandler;
use facilitator_client::ops::{HealthPolicy, Ops};
use facilitator_client::reference::{
    AfterMessages, FacilitatorConfig, Faults, JobPlan, ReferenceFacilitator, tls_config_from_pem,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

const GUARD: Duration = Duration::from_secs(30);

fn pki() -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("cert");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_owned(), v.parse().expect("number")))
        .collect()
}

#[tokio::test]
async fn a_full_client_over_wss_with_ca_file_runs_jobs_reconnects_and_times_everything() {
    let (ca, cert, key) = pki();
    let dir = tempfile::tempdir().expect("dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).expect("write");
    let facilitator = ReferenceFacilitator::start(FacilitatorConfig {
        tls: Some(tls_config_from_pem(cert.as_bytes(), key.as_bytes()).expect("tls")),
        jobs: JobPlan::count(10),
        faults: Faults {
            drop_after: Some(AfterMessages::first_connections(12, 1)),
            ..Faults::default()
        },
        ..FacilitatorConfig::default()
    })
    .await
    .expect("facilitator");
    let mut config = support::fast_client_config(&facilitator.url(), &facilitator.signer_ss58());
    config.ca_file = Some(ca_file);
    let mut client =
        Client::new(config, support::hotkey(), Arc::new(EchoHandler::new())).expect("config");
    let ops = Ops::new(
        client.metrics(),
        HealthPolicy::for_backoff_cap(Duration::from_secs(1)),
        std::time::Instant::now(),
    );
    client.observe(Arc::new(ops.clone()));
    let shutdown = client.shutdown_handle();
    let run = tokio::spawn(client.run());
    facilitator
        .wait_for(|r| r.finished_jobs() == 10, GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Let a heartbeat's Ping come back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.shutdown();
    let outcome = tokio::time::timeout(GUARD, run)
        .await
        .expect("stops")
        .expect("task")
        .expect("config");
    assert_eq!(outcome.metrics.counters.reconnects, 1);
    let c = &outcome.metrics.counters;
    let text = String::from_utf8(ops.render_metrics().body).expect("utf-8");
    let s = samples(&text);
    let get = |k: &str| *s.get(k).unwrap_or_else(|| panic!("no {k}"));
    let v = |k: &str| get(&format!("validator_facilitator_client_{k}"));
    let own = |k: &str| get(&format!("facilitator_client_{k}"));
    assert_eq!(
        v("transport_layer_events_total{event=\"success\"}"),
        c.authentications as f64
    );
    assert_eq!(
        v("transport_layer_events_total{event=\"transport_error\"}"),
        1.0
    );
    assert_eq!(
        v("transport_layer_connection_duration_seconds_count"),
        c.connects as f64
    );
    assert_eq!(
        v("transport_layer_authentication_duration_seconds_count"),
        c.authentications as f64
    );
    assert_eq!(
        v("message_send_duration_seconds_count{message_type=\"JobStatusUpdate\"}"),
        c.statuses_delivered as f64
    );
    assert!(own("ping_rtt_seconds_count") >= 1.0);
    assert_eq!(own("job_duration_seconds_count"), 10.0);
    facilitator.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_unexpected_responses_logs_one_warning_not_one_each() {
    let logs = support::LogCapture::install();
    let facilitator = ReferenceFacilitator::start(FacilitatorConfig::default())
        .await
        .expect("facilitator");
    let client = Client::new(
        support::fast_client_config(&facilitator.url(), &facilitator.signer_ss58()),
        support::hotkey(),
        Arc::new(EchoHandler::new()),
    )
    .expect("config");
    let metrics = client.metrics();
    let shutdown = client.shutdown_handle();
    let run = tokio::spawn(client.run());
    facilitator
        .wait_for(|r| r.authenticated_connections() == 1, GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    logs.take();
    for _ in 0..500 {
        facilitator.push_raw_text(r#"{"status":"success","errors":[]}"#);
    }
    let deadline = std::time::Instant::now() + GUARD;
    while metrics.snapshot().counters.unexpected_responses < 500 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            metrics.snapshot().counters
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.shutdown();
    tokio::time::timeout(GUARD, run)
        .await
        .expect("stops")
        .expect("task")
        .expect("config");
    let ignored = logs
        .take()
        .into_iter()
        .filter(|(_, line)| line.contains("ignored a Response"))
        .count();
    assert_eq!(
        ignored, 1,
        "500 unexpected Responses must give one line per interval"
    );
    facilitator.shutdown().await;
}

#[test]
fn unusable_ops_flags_are_configuration_errors() {
    let exe = env!("CARGO_BIN_EXE_facilitator-client");
    let run = |args: &[&str]| {
        std::process::Command::new(exe)
            .arg("run")
            // Never the user's state directory: a spool, if any, under Cargo's directory for test files.
            .env(
                "XDG_STATE_HOME",
                std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ops-wired-state"),
            )
            .args(["--url", "wss://facilitator.example/ws/v0/"])
            .args(args)
            .env("FACILITATOR_HOTKEY_SEED", format!("0x{}", "07".repeat(32)))
            .output()
            .expect("runs")
    };
    let missing = run(&["--ca-file", "/nonexistent/ca.pem"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/ca.pem"));
    let format = run(&["--log-format", "xml"]);
    assert_eq!(format.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&format.stderr).contains("--log-format"));
    let listen = run(&["--metrics-listen", "nowhere"]);
    assert_eq!(listen.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&listen.stderr).contains("--metrics-listen"));
}
