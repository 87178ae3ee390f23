//! `wss://` with a private certificate authority generated here (rcgen): the reference facilitator serves TLS with
//! a certificate the CA signed; with the CA as `ca_file` (`--ca-file`) the client authenticates, runs jobs and
//! reconnects; without it every connect fails naming the certificate problem and is retried with backoff; a CA
//! file that cannot be used is a configuration error.
#![cfg(feature = "runtime")]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use facilitator_client::machine::{BackoffConfig, Event, StateKind};
use facilitator_client::protocol::JobStatus;
use facilitator_client::reference::{FacilitatorConfig, ReferenceFacilitator, tls_config_from_pem};
use facilitator_client::{CaFileError, Client, ClientConfig, ConfigError};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

const GUARD: Duration = Duration::from_secs(20);

/// A private CA and a server certificate it signed for `localhost` and `127.0.0.1`, as PEM.
struct Pki {
    ca: String,
    cert: String,
    key: String,
}

fn private_pki() -> Pki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "facilitator-client test private CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("server key");
    let mut server_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server params");
    server_params
        .distinguished_name
        .push(DnType::CommonName, "reference facilitator");
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .expect("server certificate");
    Pki {
        ca: ca_cert.pem(),
        cert: server_cert.pem(),
        key: server_key.serialize_pem(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a temporary file");
    path
}

async fn tls_facilitator(pki: &Pki) -> ReferenceFacilitator {
    let tls =
        tls_config_from_pem(pki.cert.as_bytes(), pki.key.as_bytes()).expect("server TLS config");
    ReferenceFacilitator::start(FacilitatorConfig {
        tls: Some(tls),
        ..FacilitatorConfig::default()
    })
    .await
    .expect("the facilitator starts")
}

/// A client of `facilitator` with the private CA file and short reconnect delays.
fn client_with_ca(facilitator: &ReferenceFacilitator, ca_file: Option<PathBuf>) -> Client {
    let mut config = ClientConfig::new(facilitator.url());
    config.trusted_signers = vec![facilitator.signer_ss58()];
    config.ca_file = ca_file;
    config.machine.connect_timeout = Duration::from_secs(2);
    config.machine.backoff = BackoffConfig {
        base: Duration::from_millis(100),
        factor: 2.0,
        cap: Duration::from_secs(1),
        jitter: 0.0,
        stable_after: Duration::from_secs(1),
    };
    Client::new(
        config,
        support::hotkey(),
        std::sync::Arc::new(facilitator_client::handler::EchoHandler::new()),
    )
    .expect("valid config")
}

#[tokio::test]
async fn with_the_private_ca_auth_jobs_and_a_reconnect_pass_over_wss() {
    let pki = private_pki();
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_file = write(dir.path(), "ca.pem", &pki.ca);
    let facilitator = tls_facilitator(&pki).await;
    assert!(
        facilitator.url().starts_with("wss://127.0.0.1:"),
        "{}",
        facilitator.url()
    );
    let client = client_with_ca(&facilitator, Some(ca_file));
    let shutdown = client.shutdown_handle();
    let run = tokio::spawn(client.run());
    // Two connections, each authenticated over TLS and running a job: the reconnect works as the first did.
    let mut jobs = Vec::new();
    for connection in 1..=2 {
        facilitator
            .wait_for(
                |r| r.connections.len() == connection && r.authenticated_connections() == 1,
                GUARD,
            )
            .await
            .unwrap_or_else(|e| panic!("connection {connection}: {e}"));
        let uuid = facilitator.push_job();
        facilitator
            .wait_for(
                |r| r.statuses_of(&uuid).last() == Some(&JobStatus::Completed),
                GUARD,
            )
            .await
            .unwrap_or_else(|e| panic!("job of connection {connection}: {e}"));
        jobs.push(uuid);
        if connection == 1 {
            facilitator.drop_all_connections();
        }
    }
    shutdown.shutdown();
    let outcome = tokio::time::timeout(GUARD, run)
        .await
        .expect("stops in time")
        .expect("task")
        .expect("config");
    assert_eq!(
        outcome.reason,
        facilitator_client::machine::StopReason::Graceful
    );
    assert_eq!(outcome.metrics.counters.authentications, 2);
    let records = facilitator.snapshot();
    for uuid in &jobs {
        assert_eq!(
            records.statuses_of(uuid),
            [
                JobStatus::Received,
                JobStatus::Accepted,
                JobStatus::Completed
            ]
        );
    }
    facilitator.shutdown().await;
}

#[tokio::test]
async fn without_the_ca_every_connect_fails_naming_the_certificate_problem_and_is_retried_with_backoff()
 {
    let logs = support::LogCapture::install();
    let pki = private_pki();
    let facilitator = tls_facilitator(&pki).await;
    let client = client_with_ca(&facilitator, None);
    let mut events = client.subscribe();
    let shutdown = client.shutdown_handle();
    let run = tokio::spawn(client.run());
    // Three failed attempts, and when each started.
    let mut attempts: Vec<Instant> = Vec::new();
    let mut reasons: Vec<String> = Vec::new();
    let watch = async {
        while reasons.len() < 3 {
            match events.recv().await.expect("events") {
                Event::StateChanged {
                    to: StateKind::Connecting,
                    ..
                } => attempts.push(Instant::now()),
                Event::StateChanged {
                    from: StateKind::Connecting,
                    to: StateKind::Disconnected,
                    reason,
                } => reasons.push(reason.to_string()),
                Event::StateChanged {
                    to: StateKind::Running,
                    ..
                } => panic!("authenticated without trusting the CA"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(GUARD, watch)
        .await
        .expect("three attempts in time");
    for reason in &reasons {
        assert!(reason.contains("invalid peer certificate"), "{reason}");
        assert!(reason.contains("UnknownIssuer"), "{reason}");
        assert!(reason.contains("--ca-file"), "{reason}");
    }
    // Backoff: 100 ms, then 200 ms between attempts (no jitter); never a spin.
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 2, "{gaps:?}");
    assert!(gaps[0] >= Duration::from_millis(90), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(190), "{gaps:?}");
    // The log says it too, at the loop's state-change line.
    let lines = logs.take();
    assert!(
        lines
            .iter()
            .any(|(_, line)| line.contains("Connecting -> Disconnected")
                && line.contains("UnknownIssuer")),
        "{lines:#?}"
    );
    shutdown.shutdown();
    let outcome = tokio::time::timeout(GUARD, run)
        .await
        .expect("stops in time")
        .expect("task")
        .expect("config");
    assert_eq!(outcome.metrics.counters.authentications, 0);
    assert!(outcome.metrics.counters.auth_failures >= 3);
    assert_eq!(facilitator.snapshot().authenticated_connections(), 0);
    facilitator.shutdown().await;
}

/// The error a client configured with this CA file is refused with.
fn ca_file_error(path: &Path) -> CaFileError {
    let mut config = ClientConfig::new("wss://facilitator.example/ws/v0/");
    config.ca_file = Some(path.to_owned());
    match config.validate() {
        Err(ConfigError::CaFile(error)) => error,
        other => panic!("expected a CA file error, got {other:?}"),
    }
}

#[test]
fn a_ca_file_that_cannot_be_used_is_a_configuration_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.pem");
    let error = ca_file_error(&missing);
    assert!(matches!(error, CaFileError::Unreadable { .. }), "{error:?}");
    assert!(error.to_string().contains("missing.pem"), "{error}");

    let not_pem = write(dir.path(), "notes.txt", "this is not a certificate\n");
    let error = ca_file_error(&not_pem);
    assert!(
        matches!(error, CaFileError::NoCertificate { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("notes.txt"), "{error}");

    let bad_base64 = write(
        dir.path(),
        "bad.pem",
        "-----BEGIN CERTIFICATE-----\n!!!! not base64 !!!!\n-----END CERTIFICATE-----\n",
    );
    let error = ca_file_error(&bad_base64);
    assert!(matches!(error, CaFileError::Malformed { .. }), "{error:?}");

    // Valid PEM and base64, but not a certificate.
    let not_a_certificate = write(
        dir.path(),
        "hello.pem",
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    );
    let error = ca_file_error(&not_a_certificate);
    assert!(matches!(error, CaFileError::Malformed { .. }), "{error:?}");
    assert!(error.to_string().contains("hello.pem"), "{error}");

    // A usable one.
    let pki = private_pki();
    let good = write(dir.path(), "ca.pem", &pki.ca);
    let mut config = ClientConfig::new("wss://facilitator.example/ws/v0/");
    config.ca_file = Some(good);
    assert!(config.validate().is_ok());
}

#[test]
fn the_facilitator_refuses_unusable_tls_files_with_a_clear_message() {
    let pki = private_pki();
    let error =
        tls_config_from_pem(b"nothing here", pki.key.as_bytes()).expect_err("no certificate");
    assert!(error.contains("no CERTIFICATE"), "{error}");
    let error = tls_config_from_pem(pki.cert.as_bytes(), b"nothing").expect_err("no key");
    assert!(error.contains("private key"), "{error}");
    let other = private_pki();
    let error =
        tls_config_from_pem(pki.cert.as_bytes(), other.key.as_bytes()).expect_err("mismatch");
    assert!(error.contains("do not work together"), "{error}");
}
