//! Property tests of the pure machine over random event sequences on simulated time.
//!
//! The simulated world (`src/sim.rs`) turns each event into an input that is legal in the current situation and
//! checks, after every step: Stopped is absorbing; after Shutdown the machine is Stopped within drain timeout +
//! close timeout; ForceStop stops in one step; every status accepted is delivered, refused by the facilitator, or
//! still held (and so reported); per-job order of sends holds across reconnects; nothing but the auth request is
//! sent before the auth success Response; at most one socket exists; the next deadline is never in the past, and a
//! Tick at it always does something; no job is dispatched while the handler's pipeline is down; exactly the
//! cheat reports from trusted signers are handed on.

use facilitator_client::sim::{AuthReply, CloseKind, JobKind, NoiseKind, Sim, SimEvent};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// Events weighted so that connections mostly succeed and jobs flow, with every fault still frequent.
fn event() -> impl Strategy<Value = SimEvent> {
    prop_oneof![
        24 => Just(SimEvent::Wait),
        12 => (0u16..5_000).prop_map(SimEvent::Advance),
        48 => Just(SimEvent::OpenSucceeds),
        4 => Just(SimEvent::SocketFails),
        60 => Just(SimEvent::AuthReply(AuthReply::Success)),
        4 => prop_oneof![
            Just(AuthReply::SignatureInvalid),
            Just(AuthReply::ValidatorNotFound),
            Just(AuthReply::Garbage)
        ]
        .prop_map(SimEvent::AuthReply),
        90 => Just(SimEvent::Ack { not_found: false }),
        4 => Just(SimEvent::Ack { not_found: true }),
        36 => Just(SimEvent::PushJob(JobKind::Valid)),
        6 => prop_oneof![
            Just(JobKind::Untrusted),
            Just(JobKind::Forged),
            Just(JobKind::Invalid),
            Just(JobKind::Duplicate)
        ]
        .prop_map(SimEvent::PushJob),
        12 => (any::<u8>(), any::<u8>()).prop_map(|(count, kinds)| SimEvent::Burst { count, kinds }),
        6 => prop_oneof![
            Just(NoiseKind::Garbage),
            Just(NoiseKind::Binary),
            Just(NoiseKind::UnexpectedResponse)
        ]
        .prop_map(SimEvent::Noise),
        12 => Just(SimEvent::Pong),
        6 => prop_oneof![
            Just(CloseKind::Normal),
            Just(CloseKind::SignatureInvalid),
            Just(CloseKind::ValidatorNotFound),
            Just(CloseKind::Abrupt)
        ]
        .prop_map(SimEvent::PeerCloses),
        72 => (any::<u8>(), any::<u8>()).prop_map(|(job, status)| SimEvent::HandlerStatus { job, status }),
        20 => any::<u8>().prop_map(|job| SimEvent::HandlerFinishes { job }),
        1 => Just(SimEvent::Shutdown),
        1 => Just(SimEvent::ForceStop),
        4 => any::<u8>().prop_map(SimEvent::Stale),
        3 => any::<bool>().prop_map(|up| SimEvent::Pipeline { up }),
        2 => any::<bool>().prop_map(|trusted| SimEvent::Cheat { trusted }),
    ]
}

/// A link that flaps while work flows: connections rarely live as long as the stable period, many attempts fail,
/// and jobs and acknowledgements keep coming. The world checks after every loss that a connection that made
/// progress is retried after at most the base delay, and that no delay exceeds the cap.
fn flapping_event() -> impl Strategy<Value = SimEvent> {
    prop_oneof![
        30 => Just(SimEvent::Wait),
        10 => (0u16..800).prop_map(SimEvent::Advance),
        40 => Just(SimEvent::OpenSucceeds),
        12 => Just(SimEvent::SocketFails),
        30 => Just(SimEvent::AuthReply(AuthReply::Success)),
        3 => Just(SimEvent::AuthReply(AuthReply::ValidatorNotFound)),
        3 => Just(SimEvent::AuthReply(AuthReply::Garbage)),
        20 => Just(SimEvent::Ack { not_found: false }),
        15 => Just(SimEvent::PushJob(JobKind::Valid)),
        3 => Just(SimEvent::PushJob(JobKind::Invalid)),
        5 => Just(SimEvent::Pong),
        8 => prop_oneof![
            Just(CloseKind::Normal),
            Just(CloseKind::ValidatorNotFound),
            Just(CloseKind::Abrupt)
        ]
        .prop_map(SimEvent::PeerCloses),
        20 => (any::<u8>(), any::<u8>()).prop_map(|(job, status)| SimEvent::HandlerStatus { job, status }),
        8 => any::<u8>().prop_map(|job| SimEvent::HandlerFinishes { job }),
    ]
}

/// With the spool: the writer commits often, sometimes fails, handlers say where their work runs, and the process
/// crashes now and then, at any step.
fn durable_event() -> impl Strategy<Value = SimEvent> {
    prop_oneof![
        60 => event(),
        30 => any::<bool>().prop_map(|all| SimEvent::Commit { fail: false, all }),
        10 => any::<bool>().prop_map(|all| SimEvent::Commit { fail: true, all }),
        2 => any::<bool>().prop_map(|committed_first| SimEvent::Crash { committed_first }),
        8 => (any::<u8>(), any::<bool>()).prop_map(|(job, celery)| SimEvent::Attach { job, celery }),
    ]
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn invariants_hold_for_any_event_sequence_and_shutdown_settles(
        seed in any::<u64>(),
        events in proptest::collection::vec(event(), 0..400),
    ) {
        let mut sim = Sim::new(seed);
        sim.run(&events, events.len()).map_err(TestCaseError::fail)?;
        sim.shut_down_and_settle().map_err(TestCaseError::fail)?;
        prop_assert!(sim.machine.state().is_stopped());
    }

    #[test]
    fn force_stop_stops_in_one_step_from_anywhere(
        seed in any::<u64>(),
        events in proptest::collection::vec(event(), 0..200),
    ) {
        let mut sim = Sim::new(seed);
        sim.run(&events, events.len()).map_err(TestCaseError::fail)?;
        // `apply` fails unless the machine is Stopped right after the one ForceStop step.
        sim.apply(SimEvent::ForceStop).map_err(TestCaseError::fail)?;
        let steps = sim.steps;
        sim.apply(SimEvent::Wait).map_err(TestCaseError::fail)?;
        prop_assert_eq!(sim.steps, steps, "a stopped machine still asked to be woken");
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Every status that was on disk stays there until answered, a crash loses only what never reached the disk,
    /// order holds across restarts, nothing answered is re-sent unless it was still on disk, nothing leaves before
    /// it is on disk unless counted, and after a final restart every job has exactly one terminal status.
    #[test]
    fn with_the_spool_crashes_and_failing_disks_lose_only_what_never_reached_the_disk(
        seed in any::<u64>(),
        events in proptest::collection::vec(durable_event(), 0..400),
    ) {
        let mut sim = Sim::durable(seed);
        sim.run(&events, events.len()).map_err(TestCaseError::fail)?;
        sim.shut_down_and_settle().map_err(TestCaseError::fail)?;
        sim.restart_and_deliver_everything().map_err(TestCaseError::fail)?;
    }

    #[test]
    fn a_flapping_link_never_escalates_the_backoff_after_progress(
        seed in any::<u64>(),
        events in proptest::collection::vec(flapping_event(), 0..400),
    ) {
        let mut sim = flapping_sim(seed);
        sim.run(&events, events.len()).map_err(TestCaseError::fail)?;
        sim.shut_down_and_settle().map_err(TestCaseError::fail)?;
    }
}

/// The simulation's configuration with the default stable period (10 s), far longer than a flapping connection.
fn flapping_sim(seed: u64) -> Sim {
    let mut config = facilitator_client::sim::sim_config(seed);
    config.backoff.stable_after = std::time::Duration::from_secs(10);
    Sim::with_config(config)
}

#[test]
fn flapping_sequences_lose_productive_connections_after_failures() {
    // Guards the generator above: the backoff property only bites when a productive connection is lost while the
    // backoff has grown.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (
        any::<u64>(),
        proptest::collection::vec(flapping_event(), 0..400),
    );
    let mut cases = 0;
    for _ in 0..100 {
        let (seed, events) = strategy.new_tree(&mut runner).unwrap().current();
        let mut sim = flapping_sim(seed);
        sim.run(&events, events.len()).unwrap();
        cases += sim.productive_losses_after_failures();
    }
    println!("100 flapping runs: {cases} productive connections lost after failed attempts");
    assert!(cases > 20, "only {cases} productive losses after failures");
}

#[test]
fn a_long_busy_run_delivers_every_status() {
    // Not random: a fixed, fault-free rhythm that must deliver everything it produced.
    let mut sim = Sim::new(3);
    let mut events = vec![
        SimEvent::Wait,
        SimEvent::OpenSucceeds,
        SimEvent::AuthReply(AuthReply::Success),
    ];
    for i in 0..200u8 {
        events.push(SimEvent::PushJob(JobKind::Valid));
        events.push(SimEvent::HandlerStatus { job: i, status: 0 });
        events.push(SimEvent::HandlerStatus { job: i, status: 2 });
        events.push(SimEvent::HandlerFinishes { job: i });
        for _ in 0..4 {
            events.push(SimEvent::Ack { not_found: false });
        }
    }
    sim.run(&events, events.len()).unwrap();
    sim.shut_down_and_settle().unwrap();
    let counters = sim.machine.counters().clone();
    assert_eq!(sim.jobs_dispatched(), 200);
    assert_eq!(counters.statuses_accepted, 600);
    assert_eq!(counters.statuses_delivered, 600, "{counters:?}");
    assert_eq!(
        sim.machine.state(),
        &facilitator_client::machine::State::Stopped {
            reason: facilitator_client::machine::StopReason::Graceful
        }
    );
}

#[test]
fn random_sequences_reach_every_interesting_situation() {
    // Guards the generator: properties over sequences that never reconnect or drain would prove little.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (any::<u64>(), proptest::collection::vec(event(), 0..400));
    let (
        mut reconnects,
        mut delivered,
        mut resent,
        mut cancelled,
        mut rejected_busy,
        mut fatal,
        mut graceful,
    ) = (0, 0, 0, 0, 0, 0, 0);
    for _ in 0..300 {
        let (seed, events) = strategy.new_tree(&mut runner).unwrap().current();
        let mut sim = Sim::new(seed);
        sim.run(&events, events.len()).unwrap();
        sim.shut_down_and_settle().unwrap();
        let c = sim.machine.counters();
        reconnects += c.reconnects;
        delivered += c.statuses_delivered;
        resent += c.statuses_resent;
        cancelled += c.jobs_cancelled;
        rejected_busy += c.jobs_rejected_busy;
        match sim.machine.state() {
            facilitator_client::machine::State::Stopped { reason } => match reason {
                facilitator_client::machine::StopReason::AuthRejected => fatal += 1,
                facilitator_client::machine::StopReason::Graceful => graceful += 1,
                _ => {}
            },
            other => panic!("not stopped: {other:?}"),
        }
    }
    println!(
        "300 runs: {reconnects} reconnects, {delivered} delivered, {resent} re-sent, {cancelled} jobs cancelled, \
         {rejected_busy} busy rejections, {fatal} fatal auth rejections, {graceful} graceful stops"
    );
    assert!(
        reconnects > 50 && delivered > 500 && resent > 20,
        "too little traffic"
    );
    assert!(
        cancelled > 5 && rejected_busy > 5 && fatal > 5 && graceful > 5,
        "too few drains or stops"
    );
}

#[test]
fn durable_sequences_crash_with_statuses_in_flight_jobs_running_and_a_failing_disk() {
    // Guards the generator above: the durability properties only bite if crashes meet unacknowledged statuses,
    // running jobs of both kinds, and failed commits.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (
        any::<u64>(),
        proptest::collection::vec(durable_event(), 0..400),
    );
    let (mut crashes, mut failed, mut lost, mut resends, mut exposed, mut interrupted, mut resumed) =
        (0, 0, 0, 0, 0, 0, 0);
    for _ in 0..200 {
        let (seed, events) = strategy.new_tree(&mut runner).unwrap().current();
        let mut sim = Sim::durable(seed);
        sim.run(&events, events.len()).unwrap();
        sim.shut_down_and_settle().unwrap();
        sim.restart_and_deliver_everything().unwrap();
        crashes += sim.crashes();
        failed += sim.failed_commits();
        lost += sim.lost_in_crashes();
        resends += sim.allowed_resends();
        exposed += sim.exposed_jobs();
        let (i, r) = sim.recovered_jobs();
        interrupted += i;
        resumed += r;
    }
    println!(
        "200 durable runs: {crashes} crashes, {failed} failed commits, {lost} statuses lost (never on disk), \
         {resends} answered statuses re-sent from the spool, {exposed} jobs with a status sent unprotected, \
         {interrupted} jobs reported horde_failed at recovery, {resumed} re-attached"
    );
    assert!(crashes > 400 && failed > 100, "too few crashes or failures");
    assert!(
        lost > 10 && resends > 10,
        "crashes rarely met statuses in flight"
    );
    assert!(
        interrupted > 30 && resumed > 10,
        "crashes rarely met running jobs"
    );
    assert!(exposed > 20, "failing disks rarely released statuses");
}
