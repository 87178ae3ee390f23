//! The hotkey seed never reaches a log line, in either format: a real run (the reference facilitator, the client,
//! jobs, a dropped connection, a reconnect, a shutdown) is logged at `trace` for every target through both of the
//! program's formats at once, and the captured text is searched for the seed in every spelling. Its own test
//! binary: it installs the process's logger.
#![cfg(feature = "ops")]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use facilitator_client::handler::EchoHandler;
use facilitator_client::machine::BackoffConfig;
use facilitator_client::ops::log::{LogFormat, builder};
use facilitator_client::protocol::keys::Hotkey;
use facilitator_client::reference::{
    AfterMessages, FacilitatorConfig, Faults, JobPlan, ReferenceFacilitator,
};
use facilitator_client::{Client, ClientConfig};

const SEED_HEX: &str = "4f1c9e2ab37d0c5e81f6a9b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6";

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(
            &self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    }
}

/// Both formats at once.
struct Tee(env_logger::Logger, env_logger::Logger);

impl log::Log for Tee {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata) || self.1.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        self.0.log(record);
        self.1.log(record);
    }

    fn flush(&self) {}
}

fn capture(format: LogFormat, buffer: &Buffer) -> env_logger::Logger {
    builder(format, "trace")
        .filter_level(log::LevelFilter::Trace)
        .target(env_logger::Target::Pipe(Box::new(buffer.clone())))
        .build()
}

#[tokio::test]
async fn the_seed_never_appears_in_any_log_line_in_either_format() {
    let (text, json) = (Buffer::default(), Buffer::default());
    log::set_boxed_logger(Box::new(Tee(
        capture(LogFormat::Text, &text),
        capture(LogFormat::Json, &json),
    )))
    .expect("the only logger of this test binary");
    log::set_max_level(log::LevelFilter::Trace);

    // A seed with a typo is refused without being echoed back.
    let typo = format!("0x{}z", &SEED_HEX[..63]);
    let error = Hotkey::from_seed_hex(&typo)
        .expect_err("not hex")
        .to_string();
    assert!(!error.contains(&SEED_HEX[..63]), "{error}");
    log::error!("{error}");

    let hotkey = Hotkey::from_seed_hex(&format!("0x{SEED_HEX}")).expect("a valid seed");
    let facilitator = ReferenceFacilitator::start(FacilitatorConfig {
        jobs: JobPlan::count(10),
        faults: Faults {
            drop_after: Some(AfterMessages::first_connections(12, 1)),
            ..Faults::default()
        },
        ..FacilitatorConfig::default()
    })
    .await
    .expect("facilitator");
    let mut config = ClientConfig::new(facilitator.url());
    config.trusted_signers = vec![facilitator.signer_ss58()];
    config.machine.heartbeat_interval = Duration::from_millis(100);
    config.machine.backoff = BackoffConfig {
        base: Duration::from_millis(20),
        factor: 2.0,
        cap: Duration::from_millis(200),
        jitter: 0.5,
        stable_after: Duration::from_secs(1),
    };
    let client = Client::new(config, hotkey, Arc::new(EchoHandler::new())).expect("config");
    let shutdown = client.shutdown_handle();
    let run = tokio::spawn(client.run());
    facilitator
        .wait_for(|r| r.finished_jobs() == 10, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    shutdown.shutdown();
    let outcome = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("stops")
        .expect("task")
        .expect("config");
    assert_eq!(outcome.metrics.counters.reconnects, 1);
    facilitator.shutdown().await;
    log::logger().flush();

    let seed: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&SEED_HEX[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let spellings = [
        SEED_HEX.to_owned(),
        SEED_HEX.to_uppercase(),
        SEED_HEX[..16].to_owned(),
        format!("{seed:?}"),
        format!("{:?}", &seed[..8]),
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &seed),
    ];
    for (name, captured) in [("text", text.text()), ("json", json.text())] {
        // The capture is real: the run's lines are there, at trace and above, from the client and its libraries.
        assert!(
            captured.lines().count() > 50,
            "{name}: only {} lines",
            captured.lines().count()
        );
        assert!(captured.contains("Connecting -> Running"), "{name}");
        for spelling in &spellings {
            assert!(
                !captured.contains(spelling.as_str()),
                "{name} log contains the seed as {spelling:?}"
            );
        }
    }
    for line in json.text().lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["ts", "level", "target", "msg"] {
            assert!(value.get(key).is_some(), "{key} missing in {line}");
        }
    }
}
