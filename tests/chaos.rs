//! Chaos: thousands of jobs through a proxy that cuts connections (mostly in the middle of a frame), stalls one
//! direction (half-open), delays, throttles to a trickle and refuses new connections, a fault every few dozen
//! messages. Afterwards, from the reference facilitator's records and the client's own view:
//!
//! - every job's statuses (received, accepted, completed) reached the facilitator, in order, none lost;
//! - duplicates at the facilitator (`job.integrity_error`) are only re-sends;
//! - the client was back in Running within the backoff cap plus the connect time (plus slack) after each fault;
//! - nothing grows with the number of faults: the client's outbox, in-flight FIFO and running jobs are back to
//!   zero, no socket is left open, the process's RSS stays within a generous bound.
//!
//! Jobs the network lost before the client could read them (pushed only on a connection that died) are not the
//! client's to answer: the real facilitator would lose them too. The test plays the SDK user and submits those
//! again, which is the only way they can finish; it proves first that the client never saw them (see
//! [`LostInTransit`]), and the client's `jobs_duplicate` counter must stay at zero.
//!
//! Seeded: the seed is printed at the start; `CHAOS_SEED=<seed>` replays the same fault schedule. The long run is
//! `cargo test --release --test chaos -- --ignored --nocapture`.
//!
//! Chaos by the clock: the same mix of faults (and more refused reconnects), one every one to two seconds of real
//! time for a minute while jobs flow, against the program's default backoff and timeouts (1 s base, 60 s cap,
//! 10 s stable period, 20 s heartbeat, 40 s peer timeout, 10 s connect timeout) rather than the shrunken ones of
//! the runs above, which never let the backoff climb. It prints every reconnect delay the client chose and every
//! recovery time. Nothing is lost and duplicates are only re-sends; the only bound asserted is the machine's own
//! choice (after a productive connection the next delay is at most the base: read from its reason, not measured),
//! plus a generous "it recovered at all". Wall-clock bounds on delays are the properties' job, on simulated time.
#![cfg(feature = "runtime")]

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use facilitator_client::machine::{LinkLoss, Reason, StateKind, StopReason};
use facilitator_client::protocol::testing;
use facilitator_client::reference::{
    AuthOutcome, ConnectionId, FacilitatorConfig, JobPlan, Records, ReferenceFacilitator,
};
use facilitator_client::{Client, ClientConfig, Metrics};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use support::proxy::{ChaosPlan, Counters, Dir, Mode, Proxy, chaos_seed};
use support::{
    ECHO_STATUSES, RecordingEcho, StateHistory, StateLog, fast_client_config, hotkey, open_fds,
    vm_kib,
};

/// Chaos runs measure the whole process (RSS, file descriptors): one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How big a run is.
struct Settings {
    jobs: u64,
    max_open: usize,
    frames_between_faults: (u64, u64),
    /// At least this many faults must have been injected, or the run proved nothing.
    min_faults: u64,
    guard: Duration,
}

/// On a loaded machine, on top of every bound on time.
const SLACK: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_jobs_through_a_faulty_network_lose_nothing() {
    let report = run(Settings {
        jobs: 2_000,
        max_open: 32,
        frames_between_faults: (15, 60),
        min_faults: 60,
        guard: Duration::from_secs(150),
    })
    .await;
    println!("{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: about four minutes in release; run by hand with --release --ignored --nocapture"]
async fn a_hundred_thousand_jobs_and_a_thousand_faults() {
    let report = run(Settings {
        jobs: 100_000,
        max_open: 32,
        frames_between_faults: (100, 600),
        min_faults: 1_000,
        guard: Duration::from_secs(3_600),
    })
    .await;
    println!("{report}");
}

/// A link dead only towards the facilitator (nothing the client sends arrives; the facilitator's jobs still do)
/// is detected by the unanswered Ping, not kept "alive" by the arriving jobs; every job the client got completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_dead_only_towards_the_facilitator_is_detected_by_the_unanswered_ping() {
    let _serial = SERIAL.lock().await;
    const JOBS: usize = 400;
    let facilitator = ReferenceFacilitator::start(FacilitatorConfig {
        // A job every 15 ms: the client never goes a peer timeout without a frame.
        jobs: JobPlan::count(JOBS as u64).every(Duration::from_millis(15)),
        ..FacilitatorConfig::default()
    })
    .await
    .expect("the reference facilitator starts");
    let proxy = Proxy::start(facilitator.local_addr(), 0)
        .await
        .expect("the proxy starts");
    let config = fast_client_config(&proxy.url(), &facilitator.signer_ss58());
    let detection_bound = config.machine.peer_timeout + config.machine.heartbeat_interval + SLACK;
    let handler = RecordingEcho::default();
    let client = Client::new(config, hotkey(), Arc::new(handler.clone())).expect("valid config");
    let states = StateLog::start(client.subscribe());
    let metrics = client.metrics();
    let shutdown = client.shutdown_handle();
    let run = tokio::spawn(client.run());

    facilitator
        .wait_for(|r| r.finished_jobs() >= 20, GUARD)
        .await
        .unwrap_or_else(|e| panic!("jobs did not flow: {e}"));
    proxy.stall_all(Dir::Up);
    support::wait_until(
        "the client to drop the half-open link",
        detection_bound,
        || metrics.snapshot().counters.disconnects >= 1,
    )
    .await;
    facilitator
        .wait_for(
            |r| {
                r.jobs.len() == JOBS
                    && r.jobs
                        .iter()
                        .filter(|j| handler.dispatched(&j.uuid))
                        .all(|j| j.is_finished())
            },
            GUARD,
        )
        .await
        .unwrap_or_else(|e| panic!("the jobs the client got did not all finish: {e}"));
    shutdown.shutdown();
    let outcome = tokio::time::timeout(GUARD, run)
        .await
        .expect("the client stops")
        .expect("the client does not panic")
        .expect("valid config");
    let history = states.finish();
    let records = facilitator.snapshot();

    let dropped = history
        .changes
        .iter()
        .find(|c| c.from == StateKind::Running && c.to == StateKind::Disconnected)
        .expect("the client left Running");
    assert!(
        matches!(
            dropped.reason,
            Reason::ConnectionLost {
                cause: LinkLoss::PingUnanswered(_),
                ..
            }
        ),
        "detected by the unanswered Ping while jobs kept arriving, not by silence: {:?}",
        dropped.reason
    );
    // The facilitator keeps pushing jobs while the client closes: a `rejected`/`busy` answer that went out with
    // the close, or could no longer be sent, may be reported undelivered; it does not make the stop less graceful.
    // Nothing else may be undelivered.
    assert_eq!(outcome.reason, StopReason::Graceful);
    for update in &outcome.undelivered {
        let busy = update
            .metadata
            .job_rejection_details
            .as_ref()
            .is_some_and(|d| d.reason == facilitator_client::protocol::JobRejectionReason::Busy);
        assert!(
            busy && !handler.dispatched(&update.uuid),
            "only answers to jobs that arrived during the close may be undelivered: {update:?}"
        );
    }
    for job in records.jobs.iter().filter(|j| handler.dispatched(&j.uuid)) {
        assert_eq!(
            records.statuses_of(&job.uuid),
            ECHO_STATUSES,
            "job {}",
            job.uuid
        );
    }
    assert!(
        handler.distinct() >= JOBS / 2,
        "only {} of {JOBS} jobs reached the client",
        handler.distinct()
    );
    proxy.shutdown().await;
    facilitator.shutdown().await;
}

/// Chaos by the clock: see the module's documentation. The whole test takes a little over the minute of faults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_faults_every_one_to_two_seconds_with_the_default_backoff_loses_nothing() {
    const CHAOS: Duration = Duration::from_secs(60);
    /// Jobs open at once while the test submits them, and the pause between two submissions: a steady flow of
    /// dozens of jobs a second (about fifty in the debug build), so that every connection has work in flight when
    /// it is cut.
    const OPEN: usize = 16;
    const PACE: Duration = Duration::from_millis(8);
    let _serial = SERIAL.lock().await;
    let seed = chaos_seed();
    let started = std::time::Instant::now();
    let facilitator = ReferenceFacilitator::start(FacilitatorConfig {
        uuid_seed: seed,
        ..FacilitatorConfig::default()
    })
    .await
    .expect("the reference facilitator starts");
    let proxy = Proxy::start(facilitator.local_addr(), seed)
        .await
        .expect("the proxy starts");
    // The usual mix, armed at the next frame after each tick; of every four new connections one is refused (closed
    // at once) and one waits for a pause in accepting.
    let mut plan = ChaosPlan::every_kind((0, 0));
    plan.accept_round = 4;
    proxy.set_mode(Mode::Clock {
        every: (Duration::from_secs(1), Duration::from_secs(2)),
        plan,
    });

    // The program's own defaults, nothing shrunk.
    let mut config = ClientConfig::new(proxy.url());
    config.trusted_signers = vec![facilitator.signer_ss58()];
    let defaults = config.machine.clone();
    let handler = RecordingEcho::default();
    let client = Client::new(config, hotkey(), Arc::new(handler.clone())).expect("valid config");
    let states = StateLog::start(client.subscribe());
    let metrics = client.metrics();
    let shutdown = client.shutdown_handle();
    let run = tokio::spawn(client.run());

    // The test plays the SDK user: it submits jobs at a steady pace for the minute of chaos (never more than OPEN
    // unfinished), and submits again the jobs the network lost before the client could read them.
    let guard = CHAOS + Duration::from_secs(120);
    let (open_tx, mut open_rx) = watch::channel(0usize);
    let mut lost_in_transit = LostInTransit::new(u64::MAX, handler.clone());
    let (resubmit_tx, mut resubmit_rx) = mpsc::unbounded_channel::<String>();
    let resubmitted = Arc::clone(&lost_in_transit.resubmitted);
    // Never returns on its own (see `run`): it watches the records under the facilitator's lock.
    let watcher = facilitator.wait_for(
        |r| {
            open_tx.send_replace(r.jobs.len() - r.finished_jobs());
            lost_in_transit.check(r, &resubmit_tx);
            false
        },
        guard,
    );
    let resubmitter = async {
        let signer = testing::test_signer();
        while let Some(uuid) = resubmit_rx.recv().await {
            let mut job = testing::minimal_job(&uuid);
            job.sign(&signer, testing::TEST_TIMESTAMP_NS);
            let before = Instant::now();
            facilitator.push_job_request(&job);
            let after = Instant::now();
            resubmitted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(uuid, Some((before, after)));
        }
    };
    let submitter = async {
        let mut submitted = 0usize;
        while started.elapsed() < CHAOS {
            // Bounded waits: the minute ends even when the client cannot take jobs.
            let room = tokio::time::timeout(PACE * 10, open_rx.wait_for(|open| *open < OPEN));
            if matches!(room.await, Ok(Ok(_))) {
                facilitator.push_job();
                submitted += 1;
            }
            tokio::time::sleep(PACE).await;
        }
        // Faults off; cut whatever is open (a stall may be in place), then every job must finish.
        proxy.set_mode(Mode::Pass);
        let authentications = metrics.snapshot().counters.authentications;
        proxy.cut_all();
        support::wait_until(
            "the client to come back after the faults stopped (backoff cap + connect timeout)",
            defaults.backoff.cap + defaults.connect_timeout + SLACK,
            || metrics.snapshot().counters.authentications > authentications,
        )
        .await;
        facilitator
            .wait_for(|r| r.finished_jobs() == r.jobs.len(), guard)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: not every job finished: {e}"));
        submitted
    };
    let submitted = tokio::select! {
        biased;
        submitted = submitter => submitted,
        failed = watcher => panic!(
            "seed {seed}: the run did not end: {}; client {:?}; proxy {:?}",
            failed.map_or_else(|e| e.to_string(), |_| "?".into()),
            metrics.snapshot(),
            proxy.counters()
        ),
        () = resubmitter => unreachable!("the sender lives as long as the watcher"),
    };

    shutdown.shutdown();
    let outcome = tokio::time::timeout(guard, run)
        .await
        .expect("the client stops")
        .expect("the client does not panic")
        .expect("valid config");
    let history = states.finish();
    let faults = proxy.counters();
    let records = facilitator
        .wait_for(|r| r.open_connections().count() == 0, guard)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: connections left open at the facilitator: {e}"));
    let c = &outcome.metrics.counters;

    // Nothing lost: every job, submitted again or not, has every status once, in order; each ran once.
    let jobs = records.jobs.len();
    assert!(jobs >= submitted, "seed {seed}");
    for job in &records.jobs {
        assert_eq!(
            records.statuses_of(&job.uuid),
            ECHO_STATUSES,
            "seed {seed}: job {}",
            job.uuid
        );
    }
    assert_eq!(outcome.reason, StopReason::Graceful, "seed {seed}");
    assert!(outcome.undelivered.is_empty(), "seed {seed}");
    assert_eq!(c.statuses_delivered, 3 * jobs as u64, "seed {seed}: {c:?}");
    assert_eq!(c.statuses_refused, 0, "seed {seed}: {c:?}");
    assert_eq!(handler.dispatches(), jobs as u64, "seed {seed}");
    assert_eq!(c.jobs_duplicate, 0, "seed {seed}");
    // Duplicates are only re-sends.
    let duplicates = records.duplicates().count();
    assert!(
        duplicates as u64 <= c.statuses_resent,
        "seed {seed}: {duplicates} duplicates but only {} re-sends",
        c.statuses_resent
    );

    // The faults came, of every kind.
    assert!(faults.clock_ticks >= 30, "seed {seed}: {faults:?}");
    for (kind, n) in [
        ("cut up", faults.cuts_up),
        ("cut down", faults.cuts_down),
        ("stall up", faults.stalls_up),
        ("stall down", faults.stalls_down),
        ("delay", faults.delays),
        ("throttle", faults.throttles),
        ("refused at accept", faults.closed_at_accept),
    ] {
        assert!(n > 0, "seed {seed}: no {kind} fault hit: {faults:?}");
    }

    // What the client chose, and how long it was away.
    let delays = reconnect_delays(&history);
    let productive: Vec<&Reconnect> = delays.iter().filter(|d| d.productive).collect();
    assert!(
        !delays.is_empty() && delays.iter().all(|d| d.delay.is_some()),
        "seed {seed}: every move to Disconnected names the delay it chose: {delays:?}"
    );
    assert!(
        productive.len() >= 5,
        "seed {seed}: only {} productive connections were cut",
        productive.len()
    );
    let longest_after_progress = productive
        .iter()
        .filter_map(|d| d.delay)
        .fold(Duration::ZERO, Duration::max);
    // The machine's own choice, read from its reason (not a measured time): at most the base after progress.
    assert!(
        longest_after_progress <= defaults.backoff.base,
        "seed {seed}: after a productive connection the client chose {longest_after_progress:?}"
    );
    let outages = history.outages();
    let recovered_by = defaults.backoff.cap + defaults.connect_timeout + SLACK;
    for outage in &outages {
        assert!(
            outage.duration <= recovered_by,
            "seed {seed}: out of Running for {:?}",
            outage.duration
        );
    }

    println!(
        "chaos by the clock (seed {seed}) in {:.1?}: {jobs} jobs ({} submitted again), {} ticks ({} idle, {} \
         half-open connections cut), faults {faults:?}",
        started.elapsed(),
        lost_in_transit.count(),
        faults.clock_ticks,
        faults.clock_ticks_idle,
        faults.stalls_cut,
    );
    println!(
        "  client: {} connections authenticated, {} reconnects, {} auth failures, {} statuses re-sent, {duplicates} \
         duplicates",
        c.authentications, c.reconnects, c.auth_failures, c.statuses_resent
    );
    println!("  every move to Disconnected (time since start, from, delay chosen, productive):");
    for d in &delays {
        println!(
            "    {:>6.2}s {:>12} -> {} {}",
            (d.at - history.changes[0].at).as_secs_f64(),
            d.from.to_string(),
            d.delay
                .map_or_else(|| "?".to_owned(), |d| format!("{:.1}s", d.as_secs_f64())),
            if d.productive { "after progress" } else { "" }
        );
    }
    println!(
        "  every recovery (left Running at, back in Running after, failed attempts in between):"
    );
    for o in &outages {
        println!(
            "    {:>6.2}s  {:>7.3}s  {}",
            (o.left - history.changes[0].at).as_secs_f64(),
            o.duration.as_secs_f64(),
            o.failed_attempts
        );
    }
    let longest_recovery = outages.iter().map(|o| o.duration).max().unwrap_or_default();
    println!(
        "  longest delay chosen after a productive connection {longest_after_progress:?} (base {:?}); longest delay \
         chosen {:?}; longest recovery {longest_recovery:?} over {} outages",
        defaults.backoff.base,
        delays
            .iter()
            .filter_map(|d| d.delay)
            .max()
            .unwrap_or_default(),
        outages.len()
    );
    proxy.shutdown().await;
    facilitator.shutdown().await;
}

/// A move to Disconnected, as the client's events describe it.
#[derive(Debug)]
struct Reconnect {
    at: std::time::Instant,
    from: StateKind,
    /// The delay the machine chose, from its reason.
    delay: Option<Duration>,
    /// The connection made progress (the reason says the backoff is back at its first step).
    productive: bool,
}

/// Every move to Disconnected with the delay the machine chose, as its reason states it: after a lost connection
/// (with whether it made progress) or after a failed attempt.
fn reconnect_delays(history: &StateHistory) -> Vec<Reconnect> {
    history
        .changes
        .iter()
        .filter(|c| c.to == StateKind::Disconnected)
        .map(|c| {
            let (delay, productive) = match &c.reason {
                Reason::ConnectionLost {
                    retry_in,
                    backoff_reset,
                    ..
                } => (Some(*retry_in), *backoff_reset),
                Reason::ConnectFailed { retry_in, .. } => (Some(*retry_in), false),
                _ => (None, false),
            };
            Reconnect {
                at: c.at,
                from: c.from,
                delay,
                productive,
            }
        })
        .collect()
}

const GUARD: Duration = Duration::from_secs(60);

/// What a run measured.
struct Report {
    seed: u64,
    jobs: u64,
    faults: Counters,
    messages: usize,
    lost: usize,
    duplicates: usize,
    resent: u64,
    resubmitted: u64,
    outages: usize,
    events_missed: u64,
    max_recovery: Duration,
    rss_early_kib: u64,
    rss_late_kib: u64,
    hwm_kib: u64,
    elapsed: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.faults;
        writeln!(f, "chaos run (seed {}) in {:.1?}", self.seed, self.elapsed)?;
        writeln!(
            f,
            "  jobs {}, faults {} ({} disruptive), messages {} (one fault per {} messages)",
            self.jobs,
            c.faults(),
            c.disruptive(),
            self.messages,
            self.messages as u64 / c.faults().max(1),
        )?;
        writeln!(
            f,
            "  cuts {} up / {} down ({} mid-frame), stalls {} up / {} down, delays {}, throttles {}, \
             refused at accept {}, accept pauses {}",
            c.cuts_up,
            c.cuts_down,
            c.cuts_mid_frame,
            c.stalls_up,
            c.stalls_down,
            c.delays,
            c.throttles,
            c.closed_at_accept,
            c.accept_pauses
        )?;
        writeln!(
            f,
            "  lost {}, duplicates {} (re-sends {}), jobs lost in transit and submitted again {}",
            self.lost, self.duplicates, self.resent, self.resubmitted
        )?;
        writeln!(
            f,
            "  outages {}, max time to recover {:?} ({} events missed by the recorder)",
            self.outages, self.max_recovery, self.events_missed
        )?;
        write!(
            f,
            "  RSS early {} MiB, late {} MiB, peak (VmHWM) {} MiB",
            self.rss_early_kib / 1024,
            self.rss_late_kib / 1024,
            self.hwm_kib / 1024
        )
    }
}

async fn run(settings: Settings) -> Report {
    let _serial = SERIAL.lock().await;
    let seed = chaos_seed();
    let started = std::time::Instant::now();
    let facilitator = ReferenceFacilitator::start(FacilitatorConfig {
        jobs: JobPlan::count(settings.jobs).max_open(settings.max_open),
        uuid_seed: seed,
        ..FacilitatorConfig::default()
    })
    .await
    .expect("the reference facilitator starts");
    let proxy = Proxy::start(facilitator.local_addr(), seed)
        .await
        .expect("the proxy starts");
    proxy.set_mode(Mode::Chaos(ChaosPlan::every_kind(
        settings.frames_between_faults,
    )));

    let config = fast_client_config(&proxy.url(), &facilitator.signer_ss58());
    let backoff_cap = config.machine.backoff.cap;
    let connect_timeout = config.machine.connect_timeout;
    let handler = RecordingEcho::default();
    let client = Client::new(config, hotkey(), Arc::new(handler.clone())).expect("valid config");
    let states = StateLog::start(client.subscribe());
    let metrics = client.metrics();
    let shutdown = client.shutdown_handle();
    let run = tokio::spawn(client.run());

    // Every job finishes, lost ones being submitted again; the RSS and descriptors are sampled at 10 %. The wait
    // never returns on its own: `wait_for` would clone the records under the facilitator's lock, and in a long
    // run (gigabytes of records) that freezes the facilitator for seconds. It says "done" through `finished`.
    let mut lost_in_transit = LostInTransit::new(settings.jobs, handler.clone());
    let (resubmit_tx, mut resubmit_rx) = mpsc::unbounded_channel::<String>();
    let resubmitted = Arc::clone(&lost_in_transit.resubmitted);
    let finished = tokio::sync::Notify::new();
    let mut early: Option<(u64, usize, usize)> = None;
    let mut records_late = 0;
    let all_finished = facilitator.wait_for(
        |r| {
            if early.is_none() && r.finished_jobs() as u64 >= settings.jobs / 10 {
                early = Some((live_heap_rss_kib(), open_fds(), record_count(r)));
            }
            if records_late == 0 && lost_in_transit.check(r, &resubmit_tx) {
                records_late = record_count(r);
                finished.notify_one();
            }
            false
        },
        settings.guard,
    );
    let resubmitter = async {
        let signer = testing::test_signer();
        while let Some(uuid) = resubmit_rx.recv().await {
            let mut job = testing::minimal_job(&uuid);
            job.sign(&signer, testing::TEST_TIMESTAMP_NS);
            let before = Instant::now();
            facilitator.push_job_request(&job);
            let after = Instant::now();
            resubmitted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(uuid, Some((before, after)));
        }
    };
    let progress = async {
        // Only with CHAOS_PROGRESS set: a line a second, for watching long runs.
        if std::env::var_os("CHAOS_PROGRESS").is_none() {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let m = metrics.snapshot();
            println!(
                "{:>6.1?} {:?} accepted {} delivered {} queued {} in flight {} running {} faults {}",
                started.elapsed(),
                m.state,
                m.counters.jobs_accepted,
                m.counters.statuses_delivered,
                m.outbox_queued,
                m.in_flight,
                m.running_jobs,
                proxy.counters().faults()
            );
        }
    };
    tokio::select! {
        biased;
        () = finished.notified() => {}
        failed = all_finished => panic!(
            "seed {seed}: not every job finished: {}; client {:?}; proxy {:?}",
            failed.map_or_else(|e| e.to_string(), |_| "?".into()),
            metrics.snapshot(),
            proxy.counters()
        ),
        () = resubmitter => unreachable!("the sender lives as long as the wait"),
        () = progress => unreachable!("reports forever"),
    }
    let (rss_early_kib, fds_early, records_early) = early.expect("sampled at 10 %");

    // Faults off; cut whatever is open (a stall may be in place), and let the client settle on a clean link.
    proxy.set_mode(Mode::Pass);
    let authentications = metrics.snapshot().counters.authentications;
    proxy.cut_all();
    support::wait_until(
        "the client to come back after the last cut",
        settings.guard,
        || metrics.snapshot().counters.authentications > authentications,
    )
    .await;
    support::wait_until(
        "the client to settle: Running, nothing held",
        settings.guard,
        || {
            let m = metrics.snapshot();
            m.state == StateKind::Running
                && m.outbox_queued == 0
                && m.in_flight == 0
                && m.running_jobs == 0
        },
    )
    .await;
    support::wait_until(
        "the proxy to forget closed connections",
        settings.guard,
        || proxy.live_connections() == 1,
    )
    .await;
    let rss_late_kib = live_heap_rss_kib();
    let fds_late = open_fds();
    let settled: Metrics = metrics.snapshot();

    shutdown.shutdown();
    let outcome = tokio::time::timeout(settings.guard, run)
        .await
        .expect("the client stops")
        .expect("the client does not panic")
        .expect("valid config");
    let history = states.finish();
    let faults = proxy.counters();
    // Every connection ended at the facilitator too: none leaked on its side.
    let records = facilitator
        .wait_for(|r| r.open_connections().count() == 0, settings.guard)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: connections left open at the facilitator: {e}"));
    let counters = &outcome.metrics.counters;

    // Every status of every job, in order, none lost.
    let lost_jobs: Vec<&str> = records
        .jobs
        .iter()
        .filter(|j| records.statuses_of(&j.uuid) != ECHO_STATUSES)
        .map(|j| j.uuid.as_str())
        .collect();
    assert!(
        lost_jobs.is_empty(),
        "seed {seed}: {} job(s) without exactly {ECHO_STATUSES:?}, e.g. {:?}: {:?}",
        lost_jobs.len(),
        lost_jobs[0],
        records.statuses_of(lost_jobs[0])
    );
    assert_eq!(records.jobs.len() as u64, settings.jobs, "seed {seed}");
    assert_eq!(outcome.reason, StopReason::Graceful, "seed {seed}");
    assert!(
        outcome.undelivered.is_empty(),
        "seed {seed}: {:?}",
        outcome.undelivered
    );
    assert_eq!(
        counters.statuses_accepted,
        3 * settings.jobs,
        "seed {seed}: {counters:?}"
    );
    assert_eq!(
        counters.statuses_delivered,
        3 * settings.jobs,
        "seed {seed}: {counters:?}"
    );
    assert_eq!(counters.statuses_refused, 0, "seed {seed}: {counters:?}");
    // Each job ran exactly once: the jobs submitted again had never reached the client.
    assert_eq!(handler.dispatches(), settings.jobs, "seed {seed}");
    assert_eq!(handler.distinct() as u64, settings.jobs, "seed {seed}");
    assert_eq!(counters.jobs_duplicate, 0, "seed {seed}");

    // Duplicates are re-sends of statuses whose Response the fault swallowed.
    let duplicates = records.duplicates().count();
    assert!(
        duplicates as u64 <= counters.statuses_resent,
        "seed {seed}: {duplicates} duplicates but only {} re-sends",
        counters.statuses_resent
    );

    // Enough faults of every kind hit, and the client went through them.
    assert!(
        faults.faults() >= settings.min_faults,
        "seed {seed}: only {} faults: {faults:?}",
        faults.faults()
    );
    for (kind, n) in [
        ("cut up", faults.cuts_up),
        ("cut down", faults.cuts_down),
        ("cut mid-frame", faults.cuts_mid_frame),
        ("stall up", faults.stalls_up),
        ("stall down", faults.stalls_down),
        ("delay", faults.delays),
        ("throttle", faults.throttles),
        ("refused at accept", faults.closed_at_accept),
        ("accept pause", faults.accept_pauses),
    ] {
        assert!(n > 0, "seed {seed}: no {kind} fault hit: {faults:?}");
    }
    assert!(
        counters.reconnects >= faults.disruptive() / 4,
        "seed {seed}: {} reconnects for {} disruptive faults",
        counters.reconnects,
        faults.disruptive()
    );

    // Back in Running within the backoff cap plus the connect time after each fault (plus one of each per
    // attempt that failed on the way: a refused connection, a cut during the handshake).
    let outages = history.outages();
    if history.lagged == 0 {
        assert_eq!(
            history.times_running() as u64,
            counters.authentications,
            "seed {seed}: the recorder saw every Running"
        );
    }
    assert!(
        outages.len() as u64 >= counters.reconnects / 2,
        "seed {seed}: only {} outages measured for {} reconnects ({} events missed)",
        outages.len(),
        counters.reconnects,
        history.lagged
    );
    for outage in &outages {
        let bound = (backoff_cap + connect_timeout) * (outage.failed_attempts + 1) + SLACK;
        assert!(
            outage.duration <= bound,
            "seed {seed}: out of Running for {:?} with {} failed attempt(s) (bound {bound:?})",
            outage.duration,
            outage.failed_attempts
        );
    }
    let max_recovery = outages.iter().map(|o| o.duration).max().unwrap_or_default();

    // Nothing grows with the number of faults.
    assert_eq!(
        (
            settled.outbox_queued,
            settled.in_flight,
            settled.running_jobs
        ),
        (0, 0, 0),
        "seed {seed}"
    );
    assert!(
        fds_late <= fds_early + 8,
        "seed {seed}: {fds_early} file descriptors at 10 % of the jobs, {fds_late} at the end: sockets leak"
    );
    // The facilitator's records grow with every frame (about 2 KiB each, measured): allow for them generously.
    let allowance_kib = 64 * 1024 + 4 * (records_late - records_early) as u64;
    assert!(
        rss_late_kib <= rss_early_kib + allowance_kib,
        "seed {seed}: RSS grew from {rss_early_kib} KiB to {rss_late_kib} KiB, more than the {allowance_kib} KiB \
         the facilitator's {} new records explain",
        records_late - records_early
    );

    let report = Report {
        seed,
        jobs: settings.jobs,
        messages: records.messages.len() + records.responses.len() + records.pushes.len(),
        faults,
        lost: lost_jobs.len() + outcome.undelivered.len(),
        duplicates,
        resent: counters.statuses_resent,
        resubmitted: lost_in_transit.count(),
        outages: outages.len(),
        events_missed: history.lagged,
        max_recovery,
        rss_early_kib,
        rss_late_kib,
        hwm_kib: vm_kib("VmHWM").unwrap_or(0),
        elapsed: started.elapsed(),
    };
    proxy.shutdown().await;
    facilitator.shutdown().await;
    report
}

/// The RSS once freed heap memory is handed back to the system, so that it measures what is live.
fn live_heap_rss_kib() -> u64 {
    // SAFETY: malloc_trim only releases free memory of glibc's heaps; it takes their locks itself.
    unsafe {
        libc::malloc_trim(0);
    }
    vm_kib("VmRSS").unwrap_or(0)
}

/// How many entries the facilitator's records hold: they keep every frame, so they grow with the run.
fn record_count(r: &Records) -> usize {
    r.connections.len()
        + r.messages.len()
        + r.responses.len()
        + r.auth_attempts.len()
        + r.status_updates.len()
        + r.jobs.len()
        + r.pushes.len()
        + r.heartbeats.len()
}

/// Finds jobs the network lost before the client could read them, so the test (as the SDK user) can submit them
/// again. Runs inside `wait_for`, under the facilitator's lock, at every change: incremental and cheap.
///
/// A job is lost in transit once the client provably can no longer receive it and has not dispatched it:
/// - its carriers are the connections it may have been written to: those authenticated and open when it was
///   pushed (the facilitator writes a job to every one of them), or, when there was none, the first connection
///   authenticated afterwards (the job waited in the facilitator's queue for it); when that is unclear, both;
/// - every carrier has ended;
/// - and the client has since been Running (it sent a heartbeat) on a connection authenticated after every
///   carrier: having one socket at a time, it had dropped the carriers before opening that one, and it dispatches
///   a job in the same step it reads it, so a job it has not dispatched by now it will never see.
///
/// A submission's time is known only within a window (`lo..=hi`, around the push): the carriers are then those
/// of any instant in it. Being conservative only delays a submission until the next fault ends a carrier.
struct LostInTransit {
    total: u64,
    handler: RecordingEcho,
    /// Jobs before this index have finished.
    first_open: usize,
    /// Connections before this index have ended.
    ended_prefix: usize,
    heartbeats_seen: usize,
    running_on: HashSet<ConnectionId>,
    last_key: (usize, usize, usize, usize),
    resubmitted: Submissions,
}

/// Jobs submitted again: `None` while the submission is under way, then the window it was made in.
type Submissions = Arc<Mutex<HashMap<String, Option<(Instant, Instant)>>>>;

/// A successful authentication: when, and on which connection.
#[derive(Debug, Clone, Copy)]
struct Auth {
    at: Instant,
    connection: ConnectionId,
}

impl LostInTransit {
    fn new(total: u64, handler: RecordingEcho) -> LostInTransit {
        LostInTransit {
            total,
            handler,
            first_open: 0,
            ended_prefix: 0,
            heartbeats_seen: 0,
            running_on: HashSet::new(),
            last_key: (0, 0, 0, 0),
            resubmitted: Arc::default(),
        }
    }

    fn count(&self) -> u64 {
        self.resubmitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as u64
    }

    /// True once every job has finished; meanwhile sends the jobs lost in transit to be submitted again.
    fn check(&mut self, r: &Records, resubmit: &mpsc::UnboundedSender<String>) -> bool {
        if r.finished_jobs() as u64 >= self.total {
            return true;
        }
        while self.ended_prefix < r.connections.len()
            && r.connections[self.ended_prefix].end.is_some()
        {
            self.ended_prefix += 1;
        }
        // Connections end out of order (a stalled one lingers): count the ended ones past the prefix too.
        let ended = self.ended_prefix
            + r.connections[self.ended_prefix..]
                .iter()
                .filter(|c| c.end.is_some())
                .count();
        for heartbeat in &r.heartbeats[self.heartbeats_seen..] {
            self.running_on.insert(heartbeat.connection);
        }
        self.heartbeats_seen = r.heartbeats.len();
        // Only a change in the connections can make a job lost.
        let key = (
            r.connections.len(),
            ended,
            r.auth_attempts.len(),
            self.running_on.len(),
        );
        if key == self.last_key {
            return false;
        }
        self.last_key = key;
        while self.first_open < r.jobs.len() && r.jobs[self.first_open].is_finished() {
            self.first_open += 1;
        }
        let auths: Vec<Auth> = r
            .auth_attempts
            .iter()
            .filter(|a| matches!(a.outcome, AuthOutcome::Authenticated(_)))
            .map(|a| Auth {
                at: a.at,
                connection: a.connection,
            })
            .collect();
        let mut resubmitted = self
            .resubmitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for job in &r.jobs[self.first_open..] {
            if !job.statuses.is_empty() {
                continue;
            }
            let pushed = match resubmitted.get(&job.uuid) {
                Some(None) => continue,
                Some(Some(window)) => *window,
                None => (job.created_at, job.created_at),
            };
            // The client's dispatch record is read after the records proved it can no longer get the job.
            if self.unreachable(r, &auths, pushed) && !self.handler.dispatched(&job.uuid) {
                resubmitted.insert(job.uuid.clone(), None);
                let _ = resubmit.send(job.uuid.clone());
            }
        }
        false
    }

    fn unreachable(&self, r: &Records, auths: &[Auth], (lo, hi): (Instant, Instant)) -> bool {
        let closed_at = |a: &Auth| r.connection(a.connection).and_then(|c| c.closed_at);
        let mut carriers: Vec<Auth> = auths
            .iter()
            .filter(|a| a.at <= hi && closed_at(a).is_none_or(|at| at >= lo))
            .copied()
            .collect();
        let certain = !carriers.is_empty()
            && carriers
                .iter()
                .all(|a| a.at < lo && closed_at(a).is_none_or(|at| at > hi));
        if !certain {
            // It may have waited for the next authentication; none yet: still waiting.
            match auths.iter().filter(|a| a.at >= lo).min_by_key(|a| a.at) {
                Some(next) => carriers.push(*next),
                None => return false,
            }
        }
        let all_ended = carriers
            .iter()
            .all(|a| r.connection(a.connection).is_some_and(|c| c.end.is_some()));
        let last_carrier = carriers.iter().map(|a| a.at).max();
        let moved_on = auths
            .iter()
            .any(|a| Some(a.at) > last_carrier && self.running_on.contains(&a.connection));
        all_ended && moved_on
    }
}
