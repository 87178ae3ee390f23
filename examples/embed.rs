//! A host application that runs the facilitator client beside its own work and stops it on its own signal.
//!
//! Copy this as a start. The host here has two things to do: its own periodic work (a stand-in: a counter it
//! prints) and the client, whose jobs go to a handler of the host's (a stand-in: it "runs" each job by waiting a
//! little). The client does not install signal handlers (`handle_signals` stays false): the host owns Ctrl-C and
//! decides, then asks the client to drain through its `ShutdownHandle`; a second Ctrl-C asks again, which stops the
//! client at once.
//!
//! Run it against the reference facilitator on loopback (started here, with three jobs), stopping by itself after
//! the jobs are done:
//!
//! ```text
//! cargo run --example embed
//! ```
//!
//! or against a real facilitator, with the validator's hotkey seed in the environment, until Ctrl-C:
//!
//! ```text
//! FACILITATOR_HOTKEY_SEED=0x... cargo run --example embed -- wss://facilitator.computehorde.io/ws/v0/ 5F...SIGNER
//! ```

use std::sync::Arc;
use std::time::Duration;

use facilitator_client::handler::{BoxFuture, JobHandler, StatusSender};
use facilitator_client::machine::Event;
use facilitator_client::protocol::{Hotkey, JobRequest, JobStatus};
use facilitator_client::reference::{FacilitatorConfig, JobPlan, ReferenceFacilitator};
use facilitator_client::{Client, ClientConfig};

/// The host's own way of running a job.
struct HostJobs;

impl JobHandler for HostJobs {
    fn run(&self, job: Arc<JobRequest>, statuses: StatusSender) -> BoxFuture {
        Box::pin(async move {
            // Returning early is fine: a stopped client takes no more statuses, and dropping this future is how
            // the client cancels the job.
            if statuses.status(JobStatus::Accepted).await.is_err() {
                return;
            }
            println!(
                "host: running {} for job {}",
                job.docker_image(),
                job.uuid()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = statuses.status(JobStatus::Completed).await;
        })
    }

    fn name(&self) -> String {
        "host".to_owned()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The client runs on any tokio runtime; a current-thread one is all it needs.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(host())
}

async fn host() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Without a URL, a reference facilitator on loopback stands in for the real one.
    let (url, signer, hotkey, facilitator) = match args.as_slice() {
        [url, signer] => (url.clone(), signer.clone(), Hotkey::from_env()?, None),
        _ => {
            let facilitator = ReferenceFacilitator::start(FacilitatorConfig {
                jobs: JobPlan::count(3),
                ..FacilitatorConfig::default()
            })
            .await?;
            let (url, signer) = (facilitator.url(), facilitator.signer_ss58());
            (url, signer, Hotkey::from_seed(&[7; 32]), Some(facilitator))
        }
    };

    let mut config = ClientConfig::new(url);
    config.trusted_signers = vec![signer];
    // Every setting is a public field with a default; Client::new checks them all.
    config.machine.drain_timeout = Duration::from_secs(5);
    let client = Client::new(config, hotkey, Arc::new(HostJobs))?;
    let shutdown = client.shutdown_handle();
    let mut events = client.subscribe();
    let metrics = client.metrics();
    let mut run = tokio::spawn(client.run());

    // The host's own signal: Ctrl-C, or (with the stand-in facilitator) all its jobs done.
    let facilitator = facilitator.map(Arc::new);
    let stand_in = facilitator.clone();
    let mut jobs_done = Box::pin(async move {
        match stand_in {
            Some(f) => {
                let _ = f
                    .wait_for(|r| r.finished_jobs() == 3, Duration::from_secs(60))
                    .await;
            }
            None => std::future::pending().await,
        }
    });
    let mut work = tokio::time::interval(Duration::from_millis(500));
    let mut ticks = 0u64;
    let mut requests = 0;
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome??,
            // The host's own work goes on beside the client.
            _ = work.tick() => {
                ticks += 1;
                let m = metrics.snapshot();
                println!("host: tick {ticks}; client {} with {} job(s) running", m.state, m.running_jobs);
            }
            // What the client does and why, for the host's own logs.
            event = events.recv() => if let Ok(event @ Event::StateChanged { .. }) = event {
                println!("client: {event}");
            },
            _ = tokio::signal::ctrl_c() => {
                requests += 1;
                println!("host: Ctrl-C ({requests}): asking the client to stop");
                shutdown.shutdown();
            }
            () = &mut jobs_done, if requests == 0 => {
                requests += 1;
                println!("host: the jobs are done: asking the client to stop");
                shutdown.shutdown();
            }
        }
    };
    println!(
        "host: the client stopped ({}), {} status update(s) undelivered; exit code {}",
        outcome.reason,
        outcome.undelivered.len(),
        outcome.exit_code()
    );
    drop(jobs_done);
    if let Some(facilitator) = facilitator.and_then(|f| Arc::try_unwrap(f).ok()) {
        facilitator.shutdown().await;
    }
    Ok(())
}
