//! Model checking of the real state machine: every interleaving within small bounds, not a sample of them.
//!
//! [stateright](https://docs.rs/stateright) explores every state reachable by the real
//! `Machine::step` inside a small world ([`model`]): the facilitator's side of the wire (frames in flight each way,
//! what it stored, jobs still to push), job handlers still running, signals still to come, logical time, and with
//! the spool on, the spool file, the writer's commits (succeeding or failing) and a crash and restart. No
//! second model of the machine: the world only feeds inputs and judges the actions. The properties are listed
//! in `docs/MODEL_CHECK.md`, with the bounds, the state counts and which property catches which mutation.
//!
//! # Time
//!
//! A fixed origin, then the clock only moves in whole ticks of one second, in three ways: to the machine's next
//! deadline (`Wait`, and the machine gets a Tick), one tick past it (`WaitLate`: a late wake-up, a bounded
//! resource), or one tick short of it (`Advance`: no input, so that other inputs can come between deadlines).
//! Every timeout of the model's configuration is a whole number of ticks and the backoff has no jitter, so
//! every deadline falls on a tick and the set of distances between them is finite. Inputs other than the Tick
//! come at the current time.
//!
//! # The projection (what is hashed and compared)
//!
//! Two states are the same state when their projections are equal; the checker keeps one of them and explores
//! from it only. The projection is sound when two machines with the same projection, in the same world, do the
//! same from then on (same actions, same next states up to projection). It keeps:
//!
//! - every deadline as a distance from now (`now` itself is left out: it only grows, and the machine only
//!   compares instants and adds durations to them, so shifting every instant by the same amount changes
//!   nothing);
//! - Running's `since` as time connected, capped at `stable_after`: it is only compared with `stable_after`,
//!   and once over, it stays over;
//! - the held statuses in order (job, status, rejection or failure reason), with the number of sends capped at 2
//!   (the machine only asks "sent more than once?", after counting the send it makes: so 0 and 1 differ) and
//!   whether each belongs to an accepted job; how many are in flight;
//! - the running jobs and whether each reported its terminal status;
//! - the backoff's failed attempts, capped where the delay reaches the cap (more cannot change a delay);
//! - whether any job was ever cancelled (the one counter a decision reads: a drain with cancelled jobs does not
//!   stop `Graceful`).
//!
//! It leaves out: the configuration, the auth request and the trusted signers (constant); every other counter
//! (only ever incremented, read by nothing the machine decides: `authentications > 1` only increments
//! `reconnects`); the jitter generator's state (the jitter is 0, so its value multiplies nothing); the message
//! texts of `rejected` and `horde_failed` (nothing reads them). Three accessors behind the `test-support`
//! feature expose what the public API did not: `Machine::backoff_failures`, `Machine::undelivered_details`
//! (sends and accepted-job flag of each held status), `Machine::running_jobs_terminal`.
//!
//! The world's part: the socket's flags and both frame queues, the facilitator's store, each job's handler and
//! the statuses the client must account for, the budgets, the time since the last heartbeat (capped at the
//! interval) and the time left to the shutdown bound, and the facts of the last step only (for `sometimes`).
//! Every property reads only projected data, so the state the checker keeps judges the same as any it merges
//! with it. `projection_merges_only_states_that_behave_alike` tests all of this on every merge of a small walk.
//!
//! # Job signatures
//!
//! The machine checks each job request's signature itself (sr25519); the model builds the requests once (one per
//! job and kind) and shares them, so a job's decoding is paid once and only its check per delivery. The report
//! prints how many deliveries of a trusted job the run made, to size that cost.
//!
//! # Running
//!
//! `cargo test --test model_check` runs the bounded checks (the CI runs: without the spool; with it and a crash;
//! with it and a failed commit), depth first; when a property breaks, a
//! breadth-first run finds the shortest counterexample and prints it as a trace and a scenario. `-- --ignored
//! deep` runs the deeper ones; `-- --ignored mutations` applies each patch of `tests/model_check/mutations/` to a
//! copy of the tree and checks that the bounded run fails with the property the patch names.
//! `MODEL_CHECK_THREADS` sets the checker's threads (default 2); `MODEL_CHECK_BOUNDS=jobs=1,ticks=true,...`
//! overrides bounds for exploring (never for the runs the tests make).

mod model;
mod scenario;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use model::{Act, Bounds, DropKind, JobKind, McModel, describe_failure};
use serde_json::{Value, json};
use stateright::{Checker, HasDiscoveries, Model};

/// The CI run: two jobs, two link faults, one late wake-up, both signals, a tight outbox.
fn ci_bounds() -> Bounds {
    Bounds {
        jobs: 2,
        refused_jobs: 1,
        drops: 2,
        late_wakeups: 1,
        refusals: 0,
        extra_statuses: 0,
        ticks: false,
        auth_rejection: true,
        outbox_capacity: 2,
        max_in_flight: 1,
        max_running_jobs: 1,
        durable: false,
        crashes: 0,
        commit_failures: 0,
    }
}

/// The deeper run (ignored by default): two jobs running at once, two statuses in flight, a third outbox slot, a
/// `job.not_found`, and a handler that reports a second terminal status; to finish in minutes it trades one of the
/// CI run's two link faults, its late wake-up and its auth rejection for that concurrency (with all of them it had
/// not finished after 20 minutes).
fn deep_bounds() -> Bounds {
    Bounds {
        refusals: 1,
        extra_statuses: 1,
        outbox_capacity: 3,
        max_in_flight: 2,
        max_running_jobs: 2,
        drops: 1,
        late_wakeups: 0,
        auth_rejection: false,
        ..ci_bounds()
    }
}

/// The CI run with the spool and a crash: one job, one link fault, one crash (anywhere, a stopped process's
/// restart included), every commit succeeding. Kept small: each crash starts a second life of the machine from
/// every state the first one reaches.
fn ci_crash_bounds() -> Bounds {
    Bounds {
        jobs: 1,
        refused_jobs: 0,
        drops: 1,
        late_wakeups: 0,
        auth_rejection: false,
        durable: true,
        crashes: 1,
        commit_failures: 0,
        ..ci_bounds()
    }
}

/// The CI run with the spool and a failing disk: one job, one failed commit (then the snapshot and its
/// retries), no link fault, no crash.
fn ci_disk_failure_bounds() -> Bounds {
    Bounds {
        drops: 0,
        crashes: 0,
        commit_failures: 1,
        ..ci_crash_bounds()
    }
}

/// The deeper run with the spool (ignored by default): a crash and a failed commit on one path (a crash with the
/// spool stale, statuses sent unprotected, a snapshot under way), which the CI runs split, and a link fault.
fn deep_durable_bounds() -> Bounds {
    Bounds {
        commit_failures: 1,
        ..ci_crash_bounds()
    }
}

/// Breadth first (shortest counterexamples, for scenarios; the frontier holds whole states) or depth first
/// (long ones, but memory for the visited fingerprints only: the deep run).
#[derive(Clone, Copy, PartialEq)]
enum Search {
    Bfs,
    Dfs,
}

struct Outcome {
    /// Trusted job requests fed to a Running machine, and what one signature check costs.
    signature_checks: (u64, Duration),
    unique: usize,
    generated: usize,
    depth: usize,
    elapsed: Duration,
    /// `always` properties with a counterexample: (name, failure, scenario, trace).
    failures: Vec<(String, String, Value, String)>,
    /// `sometimes` properties without an example.
    never: Vec<String>,
}

/// `bounds` with the overrides of `MODEL_CHECK_BOUNDS` (`jobs=1,drops=3,ticks=true,...`, the field names of
/// [`Bounds`]): for exploring how the state count grows, never for the runs the tests make.
fn with_overrides(mut bounds: Bounds) -> Bounds {
    let Ok(spec) = std::env::var("MODEL_CHECK_BOUNDS") else {
        return bounds;
    };
    for item in spec.split(',').filter(|i| !i.is_empty()) {
        let (key, value) = item.split_once('=').expect("key=value");
        let n = || value.parse::<u8>().expect("a number");
        let b = || value.parse::<bool>().expect("true or false");
        match key {
            "jobs" => bounds.jobs = n(),
            "refused_jobs" => bounds.refused_jobs = n(),
            "drops" => bounds.drops = n(),
            "late_wakeups" => bounds.late_wakeups = n(),
            "refusals" => bounds.refusals = n(),
            "extra_statuses" => bounds.extra_statuses = n(),
            "ticks" => bounds.ticks = b(),
            "auth_rejection" => bounds.auth_rejection = b(),
            "outbox_capacity" => bounds.outbox_capacity = n().into(),
            "max_in_flight" => bounds.max_in_flight = n().into(),
            "max_running_jobs" => bounds.max_running_jobs = n().into(),
            "durable" => bounds.durable = b(),
            "crashes" => bounds.crashes = n(),
            "commit_failures" => bounds.commit_failures = n(),
            other => panic!("unknown bound {other}"),
        }
    }
    bounds
}

fn threads() -> usize {
    std::env::var("MODEL_CHECK_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2)
}

fn check(bounds: Bounds, first_failure: bool, search: Search) -> Outcome {
    let model = McModel::new(bounds);
    let started = Instant::now();
    let mut builder = model.checker().threads(threads());
    if first_failure {
        builder = builder.finish_when(HasDiscoveries::AnyFailures);
    }
    match search {
        Search::Bfs => outcome(builder.spawn_bfs().join(), started, first_failure),
        Search::Dfs => outcome(builder.spawn_dfs().join(), started, first_failure),
    }
}

fn outcome(checker: impl Checker<McModel>, started: Instant, first_failure: bool) -> Outcome {
    let elapsed = started.elapsed();
    let model = checker.model();
    let properties = model.properties();
    let mut failures = Vec::new();
    let mut never = Vec::new();
    for property in &properties {
        let discovery = checker.discovery(property.name);
        match (property.expectation.discovery_is_failure(), discovery) {
            (true, Some(path)) => {
                let actions = path.into_actions();
                let replayed = scenario::replay(model, &actions);
                let failure = describe_failure(property.name, &replayed.last);
                let doc = scenario::scenario(
                    model,
                    &replayed,
                    &format!("Model check counterexample: {}", property.name),
                    &format!(
                        "Found by tests/model_check ({failure}). Bless with UPDATE_SCENARIOS=1 once the machine \
                         is fixed, and review every expectation."
                    ),
                );
                failures.push((
                    property.name.to_owned(),
                    failure,
                    doc,
                    scenario::trace(&replayed),
                ));
            }
            (false, None) if !first_failure => never.push(property.name.to_owned()),
            _ => {}
        }
    }
    Outcome {
        signature_checks: (
            model
                .trusted_deliveries
                .load(std::sync::atomic::Ordering::Relaxed),
            model.signature_check_cost(),
        ),
        unique: checker.unique_state_count(),
        generated: checker.state_count(),
        depth: checker.max_depth(),
        elapsed,
        failures,
        never,
    }
}

/// Prints the outcome, writes each counterexample to `<target>/tmp/model_check/`, writes the JSON report named
/// by `MODEL_CHECK_REPORT` if set, and fails on any counterexample or missing example.
fn report(label: &str, bounds: Bounds, outcome: &Outcome) {
    eprintln!(
        "model check ({label}): {} unique states ({} generated), depth {}, {:.1} s, {} threads, bounds {bounds:?}",
        outcome.unique,
        outcome.generated,
        outcome.depth,
        outcome.elapsed.as_secs_f64(),
        threads()
    );
    for prop in model::Prop::ALL {
        let broken = outcome.failures.iter().any(|(n, ..)| n == prop.name());
        eprintln!(
            "  {:<20} {:<7} {}",
            prop.name(),
            if broken { "BROKEN" } else { "holds" },
            prop.statement()
        );
    }
    let (checks, cost) = outcome.signature_checks;
    eprintln!(
        "  sr25519: {checks} trusted job requests reached a Running machine, {:.1} us per check: {:.1} s of the run",
        cost.as_secs_f64() * 1e6,
        checks as f64 * cost.as_secs_f64()
    );
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("model_check");
    let _ = std::fs::create_dir_all(&dir);
    for (i, (name, failure, doc, trace)) in outcome.failures.iter().enumerate() {
        let file = dir.join(format!("counterexample-{label}-{i}.json"));
        let text = serde_json::to_string_pretty(doc).unwrap_or_default() + "\n";
        let _ = std::fs::write(&file, &text);
        eprintln!(
            "\nCOUNTEREXAMPLE for \"{name}\": {failure}\ntrace (time, input -> state, actions):\n{trace}\n\
             scenario ({}):\n{text}",
            file.display()
        );
    }
    if let Some(path) = std::env::var_os("MODEL_CHECK_REPORT") {
        let report = json!({
            "unique_states": outcome.unique,
            "generated_states": outcome.generated,
            "depth": outcome.depth,
            "seconds": outcome.elapsed.as_secs_f64(),
            "signature_checks": outcome.signature_checks.0,
            "signature_check_us": outcome.signature_checks.1.as_secs_f64() * 1e6,
            "failures": outcome.failures.iter().map(|(n, f, _, _)| json!([n, f])).collect::<Vec<_>>(),
            "never": outcome.never,
        });
        let _ = std::fs::write(path, report.to_string());
    }
    assert!(
        outcome.failures.is_empty(),
        "properties broken: {:?}",
        outcome
            .failures
            .iter()
            .map(|(n, f, _, _)| format!("{n}: {f}"))
            .collect::<Vec<_>>()
    );
    assert!(
        outcome.never.is_empty(),
        "sometimes-properties never reached (a property that holds vacuously proves nothing): {:?}",
        outcome.never
    );
}

#[test]
fn bounded_model_check() {
    bounded("ci", ci_bounds());
}

/// The spool on, a crash and restart anywhere: what was committed survives, what was not is lost only as the
/// machine promises (`crash_durability`), and every other property holds across the restart.
#[test]
fn bounded_model_check_crash() {
    bounded("ci-crash", ci_crash_bounds());
}

/// The spool on, a commit that fails: statuses go out unprotected only as counted, the snapshot makes the file
/// right, and every other property holds.
#[test]
fn bounded_model_check_disk_failure() {
    bounded("ci-disk-failure", ci_disk_failure_bounds());
}

fn bounded(label: &str, bounds: Bounds) {
    let first_failure = std::env::var_os("MODEL_CHECK_FIRST_FAILURE").is_some();
    let bounds = with_overrides(bounds);
    // Depth first is faster and needs little memory; if it finds anything, breadth first finds the shortest
    // counterexamples, which are what a scenario should be made of.
    let mut outcome = check(
        bounds,
        first_failure,
        if first_failure {
            Search::Bfs
        } else {
            Search::Dfs
        },
    );
    if !outcome.failures.is_empty() && !first_failure {
        outcome.failures = check(bounds, true, Search::Bfs).failures;
    }
    report(label, bounds, &outcome);
}

#[test]
#[ignore = "the deeper run: minutes; run once per change of the machine"]
fn deep_model_check() {
    bounded("deep", deep_bounds());
}

#[test]
#[ignore = "the deeper run with the spool: minutes"]
fn deep_model_check_durable() {
    bounded("deep-durable", deep_durable_bounds());
}

/// A path printed as a scenario replays, input for input, to the same machine: the printer feeds what the model
/// fed, at the times it fed it.
#[test]
fn a_path_prints_as_a_scenario_that_replays_to_the_same_machine() {
    use Act::*;
    let model = McModel::new(ci_bounds());
    let actions = [
        Wait,
        OpenSucceeds,
        FacilitatorAuth(model::AuthAnswer::Success),
        Deliver,
        PushJob(JobKind::Untrusted),
        PushJob(JobKind::Trusted),
        DeliverBatch,
        FacilitatorReads,
        Deliver,
        HandlerStatus(1),
        Drop(DropKind::PeerGone),
        Wait,
        OpenSucceeds,
        FacilitatorAuth(model::AuthAnswer::Success),
        Deliver,
        FacilitatorReads,
        Deliver,
        Shutdown,
        WaitLate,
    ];
    let replayed = scenario::replay(&model, &actions);
    let doc = scenario::scenario(&model, &replayed, "test", "test");
    let steps = doc["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), replayed.fed.len());
    assert!(steps.iter().all(|s| s["state"].is_null()));
    assert_eq!(doc["config"]["max_running_jobs"], json!(1));
    assert!(steps.iter().any(|s| s["input"].get("Frames").is_some()));
    // Feed the scenario's inputs, as tests/scenarios.rs would, to a machine built the way it builds one.
    let mut machine = replay_scenario(&doc);
    let last = &replayed.last.machine;
    assert_eq!(machine.state().kind(), last.state().kind());
    assert_eq!(
        machine.undelivered().collect::<Vec<_>>(),
        last.undelivered().collect::<Vec<_>>()
    );
    assert_eq!(machine.counters(), last.counters());
    assert!(
        machine
            .step(facilitator_client::machine::Input::Tick, Instant::now())
            .is_empty()
    );
}

/// The projection merges only states that behave alike. A breadth-first walk of a small bound (every kind of
/// action enabled) keeps one state per projection; whenever another state lands on a kept one, both get every
/// action: each must apply to both or neither, lead to states with equal projections, make the same decisions
/// (actions up to the counters), and every property must judge the two alike. Every merge is compared (a
/// sample would miss the one early merge a wrong projection needs: later states only meet the representative).
/// `MODEL_CHECK_BOUNDS` widens the walk.
#[test]
fn projection_merges_only_states_that_behave_alike() {
    projection_walk(Bounds {
        jobs: 1,
        refused_jobs: 1,
        drops: 1,
        late_wakeups: 1,
        refusals: 0,
        extra_statuses: 0,
        ticks: false,
        auth_rejection: true,
        outbox_capacity: 2,
        max_in_flight: 1,
        max_running_jobs: 1,
        durable: false,
        crashes: 0,
        commit_failures: 0,
    });
}

/// The same with the spool: the projection of the spool bookkeeping, the file and the writer's queue merges only
/// states that behave alike, across a crash and across a failed commit (one walk each: together they are too
/// many states for a walk that keeps every one).
#[test]
#[ignore = "minutes (about 95,000 and 143,000 states, every merge compared): run when the projection changes"]
fn projection_merges_only_states_that_behave_alike_with_the_spool() {
    let durable = Bounds {
        jobs: 1,
        refused_jobs: 0,
        drops: 0,
        late_wakeups: 0,
        auth_rejection: false,
        durable: true,
        crashes: 1,
        commit_failures: 0,
        ..ci_bounds()
    };
    projection_walk(durable);
    projection_walk(Bounds {
        crashes: 0,
        commit_failures: 1,
        outbox_capacity: 1,
        ..durable
    });
}

fn projection_walk(bounds: Bounds) {
    use std::collections::{HashMap, VecDeque};
    let model = McModel::new(with_overrides(bounds));
    let properties = model.properties();
    let mut kept: HashMap<model::McState, ()> = HashMap::new();
    let mut queue: VecDeque<model::McState> = model.init_states().into();
    for s in &queue {
        kept.insert(s.clone(), ());
    }
    let mut merges = 0u64;
    let mut acts = Vec::new();
    while let Some(s) = queue.pop_front() {
        acts.clear();
        model.actions(&s, &mut acts);
        for act in acts.clone() {
            let Some(next) = model.next_state(&s, act) else {
                continue;
            };
            let Some((kept_state, ())) = kept.get_key_value(&next) else {
                kept.insert(next.clone(), ());
                queue.push_back(next);
                continue;
            };
            merges += 1;
            for p in &properties {
                assert_eq!(
                    (p.condition)(&model, kept_state),
                    (p.condition)(&model, &next),
                    "{} judges two merged states apart:\n{kept_state:?}\n{next:?}",
                    p.name
                );
            }
            let (mut a_acts, mut b_acts) = (Vec::new(), Vec::new());
            model.actions(kept_state, &mut a_acts);
            model.actions(&next, &mut b_acts);
            assert_eq!(a_acts, b_acts);
            for act in a_acts {
                let (mut fed_a, mut fed_b) = (Vec::new(), Vec::new());
                let a = model.apply(kept_state, act, Some(&mut fed_a));
                let b = model.apply(&next, act, Some(&mut fed_b));
                assert_eq!(
                    a.is_some(),
                    b.is_some(),
                    "{act:?} applies to only one of two merged states"
                );
                let decisions = |fed: &[model::Fed]| {
                    fed.iter().map(|f| f.decisions.clone()).collect::<Vec<_>>()
                };
                assert_eq!(
                    decisions(&fed_a),
                    decisions(&fed_b),
                    "{act:?}: two merged states decide differently"
                );
                if let (Some(a), Some(b)) = (a, b) {
                    assert!(
                        a == b,
                        "{act:?} takes two merged states to different projections:\n{a:?}\n{b:?}"
                    );
                }
            }
        }
    }
    eprintln!(
        "projection check: {} states, {merges} merges, each compared action by action",
        kept.len()
    );
    assert!(merges > 10_000, "too few merges to mean anything: {merges}");
}

/// Builds a machine as `tests/scenarios.rs` does and feeds it the scenario's inputs (the subset of the format
/// the model prints).
fn replay_scenario(doc: &Value) -> facilitator_client::machine::Machine {
    use facilitator_client::machine::{BackoffConfig, Config, Incoming, Input, Machine};
    use facilitator_client::protocol::keys::Hotkey;
    use facilitator_client::protocol::testing::signed_job_text;
    use facilitator_client::protocol::{
        JobStatus, JobStatusUpdate, Response, ServerMessage, TrustedSigners, decode_server_frame,
    };
    let c = &doc["config"];
    let ms = |k: &str| Duration::from_millis(c[k].as_u64().expect(k));
    let n = |k: &str| c[k].as_u64().expect(k) as usize;
    let config = Config {
        heartbeat_interval: ms("heartbeat_interval_ms"),
        peer_timeout: ms("peer_timeout_ms"),
        connect_timeout: ms("connect_timeout_ms"),
        drain_timeout: ms("drain_timeout_ms"),
        close_timeout: ms("close_timeout_ms"),
        backoff: BackoffConfig {
            base: ms("backoff_base_ms"),
            factor: 2.0,
            cap: ms("backoff_cap_ms"),
            jitter: 0.0,
            stable_after: ms("stable_after_ms"),
        },
        jitter_seed: 1,
        outbox_capacity: n("outbox_capacity"),
        max_in_flight: n("max_in_flight"),
        max_running_jobs: n("max_running_jobs"),
        durable: false,
    };
    let own = Hotkey::from_seed(&[7u8; 32]);
    let signer = Hotkey::from_seed(&[0x11u8; 32]);
    let stranger = Hotkey::from_seed(&[0x22u8; 32]);
    let signers = TrustedSigners::new(own.public_key(), &[signer.ss58()]).expect("signers");
    let start = Instant::now();
    let mut machine = Machine::new(config, own.auth_request(), signers, start);
    let uuid = |v: &Value| {
        let n: u64 = v
            .as_str()
            .and_then(|s| s.strip_prefix("job-"))
            .and_then(|s| s.parse().ok())
            .expect("job-N");
        format!("00000000-0000-4000-8000-{n:012x}")
    };
    let decode = |text: &str| match decode_server_frame(text, 1 << 20) {
        Ok(m) => Input::Frame(m),
        Err(e) => Input::Undecodable(e),
    };
    let input = |spec: &Value| -> Input {
        match spec.as_str() {
            Some("Tick") => Input::Tick,
            Some("SocketOpened") => Input::SocketOpened,
            Some("Pong") => Input::Pong,
            Some("Shutdown") => Input::Shutdown,
            Some("ForceStop") => Input::ForceStop,
            Some(other) => panic!("unexpected input {other}"),
            None => {
                let (key, arg) = spec
                    .as_object()
                    .and_then(|o| o.iter().next())
                    .expect("input");
                match key.as_str() {
                    "SocketFailed" => Input::SocketFailed(arg.as_str().expect("why").to_owned()),
                    "SocketClosed" => Input::SocketClosed(arg.as_u64().map(|c| c as u16)),
                    "Response" => Input::Frame(ServerMessage::Response(match arg.as_str() {
                        Some("success") => Response::success(),
                        Some(error) => Response::error(error, "error", ""),
                        None => panic!("Response"),
                    })),
                    "Job" => decode(&signed_job_text(&signer, &uuid(arg))),
                    "UntrustedJob" => decode(&signed_job_text(&stranger, &uuid(arg))),
                    "InvalidJob" => decode(
                        &signed_job_text(&signer, &uuid(arg))
                            .replace("always_on.gpu-24gb", "no_such.class"),
                    ),
                    "Status" => Input::Status(JobStatusUpdate::new(
                        uuid(&arg[0]),
                        JobStatus::from_wire(arg[1].as_str().expect("status")).expect("known"),
                    )),
                    "JobFinished" => Input::JobFinished(uuid(arg)),
                    other => panic!("unexpected input {other}"),
                }
            }
        }
    };
    for step in doc["steps"].as_array().expect("steps") {
        let at = start + Duration::from_millis(step["at"].as_u64().expect("at"));
        let spec = &step["input"];
        let input = match spec.get("Frames").and_then(Value::as_array) {
            Some(frames) => Input::Frames(
                frames
                    .iter()
                    .map(|f| match input(f) {
                        Input::Frame(m) => Incoming::Message(m),
                        Input::Undecodable(e) => Incoming::Undecodable(e),
                        other => panic!("{other:?} in Frames"),
                    })
                    .collect(),
            ),
            None => input(spec),
        };
        let _ = machine.step(input, at);
    }
    machine
}

// ---- mutations --------------------------------------------------------------------------------------------

/// The property a mutation patch says must catch it: its `Caught-by:` header line.
fn caught_by(patch: &str) -> Option<String> {
    patch
        .lines()
        .find_map(|l| l.strip_prefix("Caught-by:"))
        .map(|s| s.trim().to_owned())
}

/// The bounded check a mutation patch says must catch it (its `Run:` header line; `bounded_model_check`, the
/// run without the spool, by default).
fn run_of(patch: &str) -> String {
    patch
        .lines()
        .find_map(|l| l.strip_prefix("Run:"))
        .map_or_else(|| "bounded_model_check".to_owned(), |s| s.trim().to_owned())
}

fn files_to_copy(root: &Path) -> Vec<PathBuf> {
    let out = Command::new("git")
        .args(["ls-files", "-co", "--exclude-standard", "-z"])
        .current_dir(root)
        .output()
        .expect("git ls-files runs");
    assert!(out.status.success(), "git ls-files failed");
    out.stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
        .filter(|p| root.join(p).is_file())
        .collect()
}

/// Applies each patch of `tests/model_check/mutations/` to a copy of the tree, runs the bounded check there, and
/// requires it to fail with the property the patch names. Prints a table: mutation, property, time to the
/// counterexample.
#[test]
#[ignore = "builds the crate once per mutation: minutes"]
fn mutations_are_caught() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut patches: Vec<PathBuf> = std::fs::read_dir(root.join("tests/model_check/mutations"))
        .expect("the mutations directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "patch"))
        .collect();
    patches.sort();
    if let Ok(only) = std::env::var("MUTATION") {
        patches.retain(|p| p.to_string_lossy().contains(&only));
    }
    assert!(!patches.is_empty(), "no mutation patches");
    let files = files_to_copy(root);
    // A target directory of its own (the build running this test may hold the lock of its own), unless
    // MUTATION_TARGET_DIR names one (e.g. the usual one, when this test's binary is run directly).
    let target = std::env::var_os("MUTATION_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("mutants-target"));
    let mut table = Vec::new();
    let mut missed = Vec::new();
    for patch in &patches {
        let text = std::fs::read_to_string(patch).expect("readable patch");
        let expected = caught_by(&text).expect("a Caught-by: line in the patch");
        let test = run_of(&text);
        let copy = tempfile::tempdir().expect("a temp dir");
        for file in &files {
            let to = copy.path().join(file);
            std::fs::create_dir_all(to.parent().expect("a parent")).expect("mkdir");
            std::fs::copy(root.join(file), &to).expect("copy");
        }
        let applied = Command::new("git")
            .args(["apply", "--verbose"])
            .arg(patch)
            .current_dir(copy.path())
            .status()
            .expect("git apply runs");
        assert!(applied.success(), "{} does not apply", patch.display());
        let report = copy.path().join("report.json");
        let started = Instant::now();
        let mut cargo = Command::new(env!("CARGO"));
        // The toolchain that built this test, whatever directory a dependency's own rust-toolchain.toml sits in
        // (dashmap's pins one): run directly rather than through rustup's proxy, cargo would otherwise call
        // the proxy's `rustc`, which honours that file.
        let rustc = Path::new(env!("CARGO")).with_file_name("rustc");
        if rustc.is_file() {
            cargo.env("RUSTC", rustc);
        }
        let run = cargo
            .args([
                "test",
                "--quiet",
                "--no-default-features",
                "--test",
                "model_check",
                "--",
                "--exact",
                &test,
            ])
            .current_dir(copy.path())
            .env("CARGO_TARGET_DIR", &target)
            .env("MODEL_CHECK_REPORT", &report)
            .env("MODEL_CHECK_FIRST_FAILURE", "1")
            .output()
            .expect("cargo runs");
        let wall = started.elapsed();
        let name = patch
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let Ok(report) = std::fs::read_to_string(&report) else {
            missed.push(format!(
                "{name}: no report (build failed?):\n{}",
                String::from_utf8_lossy(&run.stderr)
            ));
            continue;
        };
        let report: Value = serde_json::from_str(&report).expect("a JSON report");
        let failures: Vec<String> = report["failures"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f[0].as_str().map(str::to_owned))
            .collect();
        let detail = report["failures"][0][1].as_str().unwrap_or("").to_owned();
        if run.status.success() || !failures.contains(&expected) {
            missed.push(format!("{name}: expected \"{expected}\", got {failures:?}"));
        }
        table.push(format!(
            "| {name} | {test}: {} | {} states, {:.1} s check ({:.0} s with the build) | {detail} |",
            failures.join("; "),
            report["unique_states"],
            report["seconds"].as_f64().unwrap_or(0.0),
            wall.as_secs_f64()
        ));
        // The counterexample's scenario, for the record.
        let stderr = String::from_utf8_lossy(&run.stdout).into_owned()
            + &String::from_utf8_lossy(&run.stderr);
        if let Some(at) = stderr.find("COUNTEREXAMPLE") {
            eprintln!("--- {name}\n{}", &stderr[at..]);
        }
    }
    eprintln!(
        "| mutation | caught by | run | counterexample |\n|---|---|---|---|\n{}",
        table.join("\n")
    );
    assert!(
        missed.is_empty(),
        "mutations not caught:\n{}",
        missed.join("\n")
    );
}
