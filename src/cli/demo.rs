//! `facilitator-client demo`: the reference facilitator and the client together on loopback.
//!
//! Runs the jobs through the `echo` handler, has the facilitator drop the first connection once in the middle
//! (a TCP drop with statuses in flight), and once every job is completed presses "Ctrl-C" through the shutdown
//! handle. Prints a timeline of what the client did and why, then a summary table whose `lost` line is checked
//! against the facilitator's own records. Colours only when stdout is a terminal.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::CliError;
use crate::handler::EchoHandler;
use crate::machine::{BackoffConfig, Event, StateKind, StopReason};
use crate::protocol::JobStatus;
use crate::protocol::keys::Hotkey;
use crate::reference::{AfterMessages, FacilitatorConfig, Faults, JobPlan, ReferenceFacilitator};
use crate::runtime::{Client, ClientConfig};

/// A fixed, public demo key (never use it for anything real).
const DEMO_SEED: [u8; 32] = [0x42; 32];

struct Style {
    colour: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
    fn dim(&self, t: &str) -> String {
        self.paint("2", t)
    }
    fn bold(&self, t: &str) -> String {
        self.paint("1", t)
    }
    fn green(&self, t: &str) -> String {
        self.paint("32", t)
    }
    fn yellow(&self, t: &str) -> String {
        self.paint("33", t)
    }
    fn red(&self, t: &str) -> String {
        self.paint("31", t)
    }
    fn cyan(&self, t: &str) -> String {
        self.paint("36", t)
    }
}

/// Runs the demo; returns the exit code (0 when every status arrived and the stop was graceful).
pub(super) async fn run(jobs: u64, colour: bool) -> Result<u8, CliError> {
    let style = Style { colour };
    let fatal = |what: String| CliError::Fatal(what);
    // The first connection is dropped in the middle of a job, after about half the jobs' messages (auth +
    // heartbeat + 3 per job + 1): statuses are then in flight and must be re-sent after re-authentication.
    let drop_after = 3 + jobs * 3 / 2;
    let facilitator = ReferenceFacilitator::start(FacilitatorConfig {
        jobs: JobPlan::count(jobs).every(Duration::from_millis(60)),
        faults: Faults {
            drop_after: Some(AfterMessages::first_connections(drop_after, 1)),
            ..Faults::none()
        },
        ..FacilitatorConfig::default()
    })
    .await
    .map_err(|e| {
        fatal(format!(
            "cannot start the reference facilitator on loopback: {e}"
        ))
    })?;

    let mut config = ClientConfig::new(facilitator.url());
    config.trusted_signers = vec![facilitator.signer_ss58()];
    config.machine.heartbeat_interval = Duration::from_secs(1);
    config.machine.peer_timeout = Duration::from_secs(3);
    config.machine.drain_timeout = Duration::from_secs(5);
    config.machine.backoff = BackoffConfig {
        base: Duration::from_millis(250),
        ..BackoffConfig::default()
    };
    let hotkey = Hotkey::from_seed(&DEMO_SEED);
    // A spool of its own, removed at the end: the demo never touches the user's state directory.
    let spool_dir =
        std::env::temp_dir().join(format!("facilitator-client-demo-{}", std::process::id()));
    let _remove_spool = RemoveOnDrop(spool_dir.clone());
    config.spool = Some(spool_dir.join("demo.spool"));
    println!("{}", style.bold("facilitator-client demo"));
    println!(
        "  reference facilitator at {} (jobs signed by {}), {jobs} jobs, the first connection drops after {drop_after} messages",
        facilitator.url(),
        facilitator.signer_ss58()
    );
    println!(
        "  client hotkey {} (a public demo key), echo handler\n",
        hotkey.ss58()
    );

    let client = Client::new(config, hotkey, Arc::new(EchoHandler::new()))
        .map_err(|e| fatal(e.to_string()))?;
    let mut events = client.subscribe();
    let shutdown = client.shutdown_handle();
    let started = Instant::now();
    let run = tokio::spawn(client.run());

    let mut shutdown_at = None;
    {
        let all_done = facilitator.wait_for(
            |r| r.finished_jobs() as u64 >= jobs,
            Duration::from_secs(60),
        );
        tokio::pin!(all_done);
        let mut numbers: HashMap<String, usize> = HashMap::new();
        let stamp =
            |style: &Style| style.dim(&format!("{:>7.3}s", started.elapsed().as_secs_f64()));
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) => {
                        if let Some(line) = describe(&event, &mut numbers, &style) {
                            println!("{} {line}", stamp(&style));
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        println!("{} {}", stamp(&style), style.dim(&format!("({n} events not shown)")));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                done = &mut all_done, if shutdown_at.is_none() => {
                    let line = match done {
                        Ok(_) => format!("all {jobs} jobs completed at the facilitator: pressing Ctrl-C (shutdown request)"),
                        Err(e) => format!("gave up waiting for the jobs ({e}): pressing Ctrl-C"),
                    };
                    println!("{} {}", stamp(&style), style.bold(&line));
                    shutdown_at = Some(Instant::now());
                    shutdown.shutdown();
                }
            }
        }
    }
    let outcome = run
        .await
        .map_err(|e| fatal(format!("the client task failed: {e}")))?
        .map_err(|e| fatal(e.to_string()))?;
    let records = facilitator.snapshot();
    facilitator.shutdown().await;

    let expected = jobs as usize * 3;
    let stored = records
        .jobs
        .iter()
        .map(|job| {
            [
                JobStatus::Received,
                JobStatus::Accepted,
                JobStatus::Completed,
            ]
            .iter()
            .filter(|s| job.statuses.contains(s))
            .count()
        })
        .sum::<usize>();
    let lost = expected - stored.min(expected);
    let c = &outcome.metrics.counters;
    let rows = [
        (
            "jobs",
            format!(
                "{} received, {} completed",
                c.jobs_accepted,
                records.finished_jobs()
            ),
        ),
        (
            "statuses sent",
            format!("{} (including re-sends)", c.statuses_sent),
        ),
        (
            "delivered",
            format!(
                "{} (stored at the facilitator: {stored} of {expected})",
                c.statuses_delivered
            ),
        ),
        (
            "re-sent",
            format!(
                "{} (unacknowledged when the connection dropped)",
                c.statuses_resent
            ),
        ),
        ("lost", lost.to_string()),
        ("reconnects", c.reconnects.to_string()),
        (
            "spool",
            match &outcome.spool {
                Some(spool) => format!(
                    "{} batches written; {}",
                    c.spool_batches,
                    if spool.up_to_date && spool.statuses == 0 && spool.jobs == 0 {
                        "empty at the end".to_owned()
                    } else {
                        spool.to_string()
                    }
                ),
                None => "none".to_owned(),
            },
        ),
        ("stop reason", outcome.reason.to_string()),
        (
            "time to stop",
            outcome
                .stop_latency
                .map(|d| format!("{:.1} ms after the shutdown request", d.as_secs_f64() * 1e3))
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "total time",
            format!("{:.2} s", started.elapsed().as_secs_f64()),
        ),
    ];
    println!("\n{}", style.bold("summary"));
    for (name, value) in rows {
        let value = match name {
            "lost" if lost == 0 => style.green(&value),
            "lost" => style.red(&value),
            _ => value,
        };
        println!("  {name:<13} {value}");
    }
    let ok = lost == 0 && outcome.reason == StopReason::Graceful && outcome.undelivered.is_empty();
    Ok(if ok { 0 } else { 1 })
}

/// The event's log line (its `Display`), with each job's UUID shortened to a number, and coloured by what it is.
fn describe(event: &Event, numbers: &mut HashMap<String, usize>, style: &Style) -> Option<String> {
    let mut text = event.to_string();
    if let Some(uuid) = event.job_uuid() {
        let next = numbers.len() + 1;
        let n = *numbers.entry(uuid.to_owned()).or_insert(next);
        text = text.replace(&format!("job {uuid}"), &format!("job {n:>2}"));
    }
    Some(match event {
        Event::StateChanged { to, .. } => match to {
            StateKind::Running => style.green(&text),
            StateKind::Disconnected => style.yellow(&text),
            StateKind::Stopped => style.bold(&text),
            _ => style.cyan(&text),
        },
        Event::StatusDelivered { sends, .. } if *sends > 1 => {
            format!("{text}{}", style.yellow(" (re-sent after the reconnect)"))
        }
        Event::JobRejected { .. } => style.yellow(&text),
        Event::StatusRefused { .. } | Event::JobUnanswered { .. } => style.red(&text),
        Event::Ignored(_) => style.dim(&text),
        _ => text,
    })
}

/// Removes a directory when dropped (best effort: the demo's temporary spool).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
