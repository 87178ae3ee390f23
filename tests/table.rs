//! Holds the machine to `states/transitions.json` in both directions, and the README's diagram to the table.
//!
//! Each fixture is a machine driven (through the simulated world) into one situation; every input variant is
//! applied to a clone of it. Every observed (state, input) -> (target, action kinds) must be allowed by the table's
//! row, and every target and action a row lists must be observed by some fixture: the table neither forbids what
//! the code does nor promises what it never does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use facilitator_client::machine::{
    ActionKind, Config, Incoming, Input, InputKind, Machine, StateKind,
};
use facilitator_client::protocol::{
    DecodeError, JobStatus, JobStatusUpdate, Response, ServerMessage, error_type,
};
use facilitator_client::sim::{AuthReply, JobKind, Sim, SimEvent, sim_config};
use facilitator_client::spool::HandlerRecord;
use serde_json::Value;

#[derive(Debug)]
struct Row {
    targets: BTreeSet<String>,
    actions: BTreeSet<String>,
}

fn load_table() -> (Value, BTreeMap<(String, String), Row>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("states/transitions.json");
    let text = std::fs::read_to_string(&path).expect("states/transitions.json is readable");
    let doc: Value = serde_json::from_str(&text).expect("states/transitions.json is JSON");
    let mut rows = BTreeMap::new();
    for row in doc["rows"].as_array().expect("rows is an array") {
        let key = (
            row["state"].as_str().unwrap().to_owned(),
            row["input"].as_str().unwrap().to_owned(),
        );
        let set = |k: &str| -> BTreeSet<String> {
            row[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        assert!(
            row["note"].as_str().is_some_and(|n| !n.is_empty()),
            "row {key:?} has no note"
        );
        let previous = rows.insert(
            key.clone(),
            Row {
                targets: set("targets"),
                actions: set("actions"),
            },
        );
        assert!(previous.is_none(), "row {key:?} is listed twice");
    }
    (doc, rows)
}

const ALL_ACTIONS: [ActionKind; 11] = ActionKind::ALL;

#[test]
fn table_lists_every_state_and_input_pair_exactly_once() {
    let (doc, rows) = load_table();
    let names = |k: &str| -> Vec<String> {
        doc[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let states: Vec<String> = StateKind::ALL
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    let inputs: Vec<String> = InputKind::ALL
        .iter()
        .map(|i| i.as_str().to_owned())
        .collect();
    let actions: Vec<String> = ALL_ACTIONS.iter().map(|a| a.as_str().to_owned()).collect();
    assert_eq!(
        names("states"),
        states,
        "the table's states are the machine's"
    );
    assert_eq!(
        names("inputs"),
        inputs,
        "the table's inputs are the machine's"
    );
    assert_eq!(
        names("actions"),
        actions,
        "the table's actions are the machine's"
    );
    for state in &states {
        for input in &inputs {
            let row = rows.get(&(state.clone(), input.clone()));
            let row = row.unwrap_or_else(|| panic!("no row for ({state}, {input})"));
            assert!(
                row.targets.iter().all(|t| states.contains(t)),
                "({state}, {input}): unknown target"
            );
            assert!(
                row.actions.iter().all(|a| actions.contains(a)),
                "({state}, {input}): unknown action"
            );
        }
    }
    assert_eq!(
        rows.len(),
        states.len() * inputs.len(),
        "rows for unknown states or inputs"
    );
}

/// Situations the machine can be in, each reached through the simulated world.
fn fixtures() -> Vec<(&'static str, Sim)> {
    use SimEvent::*;
    let connect = [Wait, OpenSucceeds];
    let authed = [Wait, OpenSucceeds, AuthReply(self::AuthReply::Success)];
    let with_job = [
        Wait,
        OpenSucceeds,
        AuthReply(self::AuthReply::Success),
        PushJob(JobKind::Valid),
    ];
    let build_with = |name: &'static str, config: Config, parts: &[&[SimEvent]]| {
        let mut sim = Sim::with_config(config);
        for event in parts.iter().flat_map(|p| p.iter()) {
            sim.apply(*event)
                .unwrap_or_else(|e| panic!("fixture {name}: {e}"));
        }
        (name, sim)
    };
    let build = |name: &'static str, parts: &[&[SimEvent]]| build_with(name, sim_config(1), parts);
    let durable = Config {
        durable: true,
        ..sim_config(1)
    };
    let spool =
        |name: &'static str, parts: &[&[SimEvent]]| build_with(name, durable.clone(), parts);
    // The spool's writer: a commit that succeeds, and two that fail (the first failure writes a snapshot at once,
    // the second schedules the next one a second later).
    let commit = [Commit {
        fail: false,
        all: true,
    }];
    let failing = [
        Commit {
            fail: true,
            all: true,
        },
        Commit {
            fail: true,
            all: true,
        },
    ];
    // A reconnect delay longer than the spool's first retry, so a snapshot falls due while disconnected.
    let slow_reconnect = Config {
        backoff: facilitator_client::machine::BackoffConfig {
            base: std::time::Duration::from_secs(5),
            ..durable.backoff
        },
        ..durable.clone()
    };
    vec![
        build("disconnected, fresh", &[]),
        build("disconnected, job running", &[&with_job, &[SocketFails]]),
        build("connecting, opening", &[&[Wait]]),
        build("connecting, authenticating", &[&connect]),
        build(
            "connecting, authenticating, job running",
            &[&with_job, &[SocketFails, Wait, OpenSucceeds]],
        ),
        build("running, idle", &[&authed]),
        build("running, heartbeat sent", &[&authed, &[Wait]]),
        build("running, job running", &[&with_job]),
        build(
            "running, job running, pipeline unavailable",
            &[&with_job, &[Pipeline { up: false }]],
        ),
        build("draining, job running", &[&with_job, &[Shutdown]]),
        build("draining, heartbeat sent", &[&with_job, &[Shutdown, Wait]]),
        build(
            "draining, at the drain deadline",
            &[&with_job, &[Shutdown, Wait, Pong, Wait, Pong]],
        ),
        build(
            "draining, cancelling",
            &[&with_job, &[Shutdown, Wait, Pong, Wait, Pong, Wait]],
        ),
        build("draining, closing", &[&authed, &[Shutdown]]),
        build(
            "draining, only the job left",
            &[&with_job, &[Ack { not_found: false }, Shutdown]],
        ),
        build(
            "draining, only the job left, busy answers past the window",
            &[
                &with_job,
                &[Ack { not_found: false }, Shutdown],
                &[PushJob(JobKind::Valid); 5],
            ],
        ),
        build(
            "draining, only a status left",
            &[&with_job, &[HandlerFinishes { job: 0 }, Shutdown]],
        ),
        build("stopped", &[&authed, &[ForceStop]]),
        // With the spool.
        spool(
            "spool: disconnected, job running, received not yet on disk",
            &[&with_job, &[SocketFails]],
        ),
        build_with(
            "spool: disconnected, stale, a snapshot due before the reconnect",
            slow_reconnect,
            &[&with_job, &[SocketFails], &failing],
        ),
        spool(
            "spool: connecting, authenticating, job running",
            &[&with_job, &[SocketFails, Wait, OpenSucceeds]],
        ),
        spool(
            "spool: connecting, stale, a snapshot due",
            &[&with_job, &[SocketFails, Wait, OpenSucceeds], &failing],
        ),
        spool("spool: running, received not yet on disk", &[&with_job]),
        spool(
            "spool: running, received on disk and sent",
            &[&with_job, &commit],
        ),
        spool(
            "spool: running, job attached to a Celery task",
            &[
                &with_job,
                &[Attach {
                    job: 0,
                    celery: true,
                }],
                &commit,
            ],
        ),
        spool(
            "spool: running, stale, a snapshot due",
            &[&with_job, &failing],
        ),
        spool(
            "spool: running, stale, a snapshot under way",
            &[&with_job, &failing[..1]],
        ),
        spool(
            "spool: draining, job running",
            &[&with_job, &commit, &[Shutdown]],
        ),
        spool(
            "spool: draining, received not yet on disk",
            &[&with_job, &[Shutdown]],
        ),
        spool(
            "spool: draining, stale, a snapshot due",
            &[&with_job, &[Shutdown], &failing],
        ),
        spool(
            "spool: draining, at the drain deadline",
            &[&with_job, &commit, &[Shutdown, Wait, Pong, Wait, Pong]],
        ),
        spool(
            "spool: draining, at the drain deadline, a Celery job",
            &[
                &with_job,
                &[Attach {
                    job: 0,
                    celery: true,
                }],
                &commit,
                &[Shutdown, Wait, Pong, Wait, Pong],
            ],
        ),
        spool(
            "spool: stopped, a batch still queued",
            &[&with_job, &[ForceStop]],
        ),
    ]
}

fn variants(kind: InputKind, sim: &Sim) -> Vec<Input> {
    let job_uuid = sim
        .running_jobs()
        .first()
        .cloned()
        .unwrap_or_else(|| "00000000-0000-4000-8000-00000000abcd".into());
    match kind {
        InputKind::Tick => vec![Input::Tick],
        InputKind::SocketOpened => vec![Input::SocketOpened],
        InputKind::SocketFailed => vec![Input::SocketFailed("connection reset".into())],
        InputKind::Frame => vec![
            Input::Frame(ServerMessage::Response(Response::success())),
            Input::Frame(ServerMessage::Response(Response::error(
                error_type::SIGNATURE_INVALID,
                "Invalid signature",
                "",
            ))),
            Input::Frame(ServerMessage::Response(Response::error(
                error_type::VALIDATOR_NOT_FOUND,
                "Validator not found",
                "",
            ))),
            Input::Frame(ServerMessage::Response(Response::error(
                error_type::JOB_NOT_FOUND,
                "Job not found",
                "",
            ))),
            Input::Frame(ServerMessage::Response(Response::error(
                error_type::INTEGRITY_ERROR,
                "Integrity error",
                "",
            ))),
            Input::Frame(ServerMessage::JobRequest(
                sim.valid_job("00000000-0000-4000-8000-0000000fffff"),
            )),
            Input::Frame(ServerMessage::JobRequest(sim.valid_job(&job_uuid))),
            Input::Frame(ServerMessage::JobCheated(sim.cheat_report(true))),
            Input::Frame(ServerMessage::JobCheated(sim.cheat_report(false))),
        ],
        InputKind::Undecodable => vec![
            Input::Undecodable(DecodeError::Binary),
            Input::Undecodable(DecodeError::InvalidJobRequest {
                uuid: "00000000-0000-4000-8000-0000000eeeee".into(),
                problem: "unknown executor_class".into(),
            }),
        ],
        InputKind::Pong => vec![Input::Pong],
        // Each frame alone, and a burst of several (checked as one batch of signatures).
        InputKind::Frames => {
            let single = [InputKind::Frame, InputKind::Undecodable, InputKind::Pong]
                .into_iter()
                .flat_map(|kind| variants(kind, sim))
                .map(|input| Input::Frames(vec![incoming(input)]));
            let burst = Input::Frames(vec![
                Incoming::Message(ServerMessage::Response(Response::success())),
                Incoming::Message(ServerMessage::JobRequest(
                    sim.valid_job("00000000-0000-4000-8000-0000000ffff1"),
                )),
                Incoming::Pong,
                Incoming::Message(ServerMessage::JobRequest(
                    sim.valid_job("00000000-0000-4000-8000-0000000ffff2"),
                )),
                Incoming::Undecodable(DecodeError::Binary),
                Incoming::Message(ServerMessage::JobRequest(sim.valid_job(&job_uuid))),
            ]);
            single.chain([burst]).collect()
        }
        InputKind::SocketClosed => vec![
            Input::SocketClosed(Some(1000)),
            Input::SocketClosed(Some(3000)),
            Input::SocketClosed(Some(3001)),
            Input::SocketClosed(None),
        ],
        InputKind::Status => vec![
            Input::Status(JobStatusUpdate::new(job_uuid.clone(), JobStatus::Accepted)),
            Input::Status(JobStatusUpdate::new(job_uuid, JobStatus::Completed)),
            // A job that is not running (it ended, or never was): dropped and counted.
            Input::Status(JobStatusUpdate::new(
                "00000000-0000-4000-8000-0000000dddd0",
                JobStatus::Completed,
            )),
        ],
        InputKind::JobFinished => vec![Input::JobFinished(job_uuid)],
        InputKind::JobAttached => vec![
            Input::JobAttached {
                uuid: job_uuid.clone(),
                handler: HandlerRecord::Exec {
                    pgid: 4242,
                    start_time: 77,
                },
            },
            Input::JobAttached {
                uuid: job_uuid,
                handler: HandlerRecord::Celery {
                    task_id: "task-1".to_owned(),
                },
            },
            // A job the machine no longer knows: never re-created.
            Input::JobAttached {
                uuid: "00000000-0000-4000-8000-0000000dddd1".into(),
                handler: HandlerRecord::Exec {
                    pgid: 1,
                    start_time: 1,
                },
            },
        ],
        InputKind::Persisted => vec![
            Input::Persisted {
                up_to: sim.last_batch_id(),
                result: Ok(()),
            },
            Input::Persisted {
                up_to: sim.last_batch_id(),
                result: Err("No space left on device (os error 28)".into()),
            },
        ],
        InputKind::PipelineAvailable => vec![
            Input::PipelineAvailable(false),
            Input::PipelineAvailable(true),
        ],
        InputKind::Shutdown => vec![Input::Shutdown],
        InputKind::ForceStop => vec![Input::ForceStop],
    }
}

fn incoming(input: Input) -> Incoming {
    match input {
        Input::Frame(message) => Incoming::Message(message),
        Input::Undecodable(error) => Incoming::Undecodable(error),
        Input::Pong => Incoming::Pong,
        other => unreachable!("not a frame: {other:?}"),
    }
}

#[test]
fn machine_does_what_the_table_says_and_the_table_says_only_what_the_machine_does() {
    let (_, rows) = load_table();
    let mut observed: BTreeMap<(String, String), (BTreeSet<String>, BTreeSet<String>)> =
        BTreeMap::new();
    for (name, sim) in fixtures() {
        let from = sim.machine.state().kind();
        for kind in InputKind::ALL {
            for input in variants(kind, &sim) {
                let mut machine: Machine = sim.machine.clone();
                // A Tick arrives at the deadline; everything else before any deadline (a fixture sitting exactly
                // at its deadline would handle the deadline first, which is the Tick row's business).
                let deadline = machine.poll_timeout().map(|(d, _)| d);
                let at = match kind {
                    InputKind::Tick => deadline.unwrap_or(sim.now()),
                    _ if deadline.is_some_and(|d| d <= sim.now()) => continue,
                    _ => sim.now(),
                };
                let shown = format!("{input:?}");
                let actions = machine.step(input, at);
                let to = machine.state().kind().as_str().to_owned();
                let kinds: BTreeSet<String> = actions
                    .iter()
                    .map(|a| a.kind().as_str().to_owned())
                    .collect();
                let key = (from.as_str().to_owned(), kind.as_str().to_owned());
                let row = &rows[&key];
                assert!(
                    row.targets.contains(&to),
                    "fixture '{name}': ({}, {}) led to {to}, which the table does not list (input {shown})",
                    key.0,
                    key.1
                );
                for k in &kinds {
                    assert!(
                        row.actions.contains(k),
                        "fixture '{name}': ({}, {}) emitted {k}, which the table does not list (input {shown}; actions {actions:?})",
                        key.0,
                        key.1
                    );
                }
                let entry = observed.entry(key).or_default();
                entry.0.insert(to);
                entry.1.extend(kinds);
            }
        }
    }
    for (key, row) in &rows {
        let (targets, actions) = observed.get(key).cloned().unwrap_or_default();
        let missing_targets: Vec<_> = row.targets.difference(&targets).collect();
        let missing_actions: Vec<_> = row.actions.difference(&actions).collect();
        assert!(
            missing_targets.is_empty() && missing_actions.is_empty(),
            "({}, {}): the table promises targets {missing_targets:?} and actions {missing_actions:?} that no fixture produced",
            key.0,
            key.1
        );
    }
}

/// The Mermaid diagram generated from the table.
fn mermaid() -> String {
    let (doc, _) = load_table();
    let mut edges: BTreeMap<(usize, usize), Vec<String>> = BTreeMap::new();
    let states: Vec<&str> = doc["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let index = |s: &str| states.iter().position(|x| *x == s).unwrap();
    for row in doc["rows"].as_array().unwrap() {
        let from = row["state"].as_str().unwrap();
        for to in row["targets"].as_array().unwrap() {
            let to = to.as_str().unwrap();
            if to != from {
                edges
                    .entry((index(from), index(to)))
                    .or_default()
                    .push(row["input"].as_str().unwrap().to_owned());
            }
        }
    }
    let mut out = String::from("```mermaid\nstateDiagram-v2\n    [*] --> Disconnected\n");
    for ((from, to), inputs) in edges {
        out.push_str(&format!(
            "    {} --> {} : {}\n",
            states[from],
            states[to],
            inputs.join(", ")
        ));
    }
    out.push_str("    Stopped --> [*]\n```\n");
    out
}

fn check_diagram_in(file: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    let (begin, end) = (
        "<!-- state-diagram:begin (generated from states/transitions.json by tests/table.rs) -->\n",
        "<!-- state-diagram:end -->",
    );
    let start = text
        .find(begin)
        .unwrap_or_else(|| panic!("{file} has no state-diagram markers"))
        + begin.len();
    let stop = text[start..]
        .find(end)
        .unwrap_or_else(|| panic!("{file} has no end marker"))
        + start;
    let generated = mermaid();
    if text[start..stop] != generated {
        if std::env::var_os("UPDATE_STATE_DIAGRAM").is_some() {
            let updated = format!("{}{}{}", &text[..start], generated, &text[stop..]);
            std::fs::write(&path, updated).unwrap();
        } else {
            panic!(
                "{file}'s state diagram does not match states/transitions.json; regenerate with \
                 UPDATE_STATE_DIAGRAM=1 cargo test --test table\nexpected:\n{generated}"
            );
        }
    }
}

#[test]
fn readme_state_diagram_is_generated_from_the_table() {
    check_diagram_in("README.md");
    check_diagram_in("states/README.md");
}
