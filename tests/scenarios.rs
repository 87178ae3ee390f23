//! Replays the golden traces in `states/scenarios/*.json` through the pure machine.
//!
//! Each step gives a time (milliseconds from the start), an input, and the state and actions expected after it,
//! written in a compact notation (see `states/README.md`). With `UPDATE_SCENARIOS=1` the expected values of a
//! scenario whose steps have `"state": null` are filled in from the machine, for review before committing; a
//! scenario with expectations is never rewritten.
//!
//! With `"durable": true` in its config, a scenario drives the spool too: its `Persist` batches queue for a model
//! writer, `{"Commit": "ok"}` commits everything queued (merged, as the real writer does) and `{"Commit": "<error>"}`
//! fails it, and `"Crash"` kills the process: a new machine starts from what the model spool holds and recovers it.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use facilitator_client::machine::{
    Action, BackoffConfig, Config, Event, Incoming, Input, Machine, Recovery,
};
use facilitator_client::protocol::keys::Hotkey;
use facilitator_client::protocol::testing::signed_job_text;
use facilitator_client::protocol::{
    ClientMessage, DecodeError, JobCheated, JobStatus, JobStatusUpdate, Response, ServerMessage,
    TrustedSigners, decode_server_frame,
};
use facilitator_client::spool::{HandlerRecord, JobRecord, Recovered, SpoolBatch, SpooledStatus};
use serde_json::{Map, Value, json};

fn uuid_of(name: &str) -> String {
    let n: u64 = name
        .trim_start_matches("job-")
        .parse()
        .unwrap_or_else(|_| panic!("job names are job-N: {name}"));
    format!("00000000-0000-4000-8000-{n:012x}")
}

fn name_of(uuid: &str) -> String {
    match uuid
        .strip_prefix("00000000-0000-4000-8000-")
        .and_then(|h| u64::from_str_radix(h, 16).ok())
    {
        Some(n) => format!("job-{n}"),
        None => uuid.to_owned(),
    }
}

fn ms(v: &Value, key: &str, default: u64) -> Duration {
    Duration::from_millis(v.get(key).and_then(Value::as_u64).unwrap_or(default))
}

fn config(overrides: &Value) -> Config {
    Config {
        heartbeat_interval: ms(overrides, "heartbeat_interval_ms", 20_000),
        peer_timeout: ms(overrides, "peer_timeout_ms", 40_000),
        connect_timeout: ms(overrides, "connect_timeout_ms", 10_000),
        drain_timeout: ms(overrides, "drain_timeout_ms", 10_000),
        close_timeout: ms(overrides, "close_timeout_ms", 2_000),
        backoff: BackoffConfig {
            base: ms(overrides, "backoff_base_ms", 1_000),
            factor: 2.0,
            cap: ms(overrides, "backoff_cap_ms", 60_000),
            jitter: 0.0,
            stable_after: ms(overrides, "stable_after_ms", 10_000),
        },
        jitter_seed: 1,
        outbox_capacity: overrides
            .get("outbox_capacity")
            .and_then(Value::as_u64)
            .unwrap_or(1024) as usize,
        max_in_flight: overrides
            .get("max_in_flight")
            .and_then(Value::as_u64)
            .unwrap_or(256) as usize,
        max_running_jobs: overrides
            .get("max_running_jobs")
            .and_then(Value::as_u64)
            .unwrap_or(256) as usize,
        durable: overrides
            .get("durable")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

/// The model spool of a durable scenario: what is on disk, and the batches queued for the writer.
#[derive(Default)]
struct ModelSpool {
    statuses: BTreeMap<u64, JobStatusUpdate>,
    jobs: BTreeMap<String, JobRecord>,
    queue: VecDeque<(u64, SpoolBatch)>,
    /// A commit failed: no delta is written until a snapshot commits (as `SpoolWorker` does).
    stale: bool,
}

impl ModelSpool {
    fn apply(&mut self, batch: &SpoolBatch) {
        batch.apply_to(&mut self.statuses, &mut self.jobs);
    }

    /// Everything queued as one commit: its result, as the machine is told.
    fn commit(&mut self, result: &str) -> Option<Input> {
        let (mut up_to, mut batch) = self.queue.pop_front()?;
        while let Some((id, later)) = self.queue.pop_front() {
            batch.merge(later);
            up_to = id;
        }
        let result = if result != "ok" {
            self.stale = true;
            Err(result.to_owned())
        } else if self.stale && !batch.full_snapshot {
            Err("not written: the spool is stale".to_owned())
        } else {
            self.stale = false;
            self.apply(&batch);
            Ok(())
        };
        Some(Input::Persisted { up_to, result })
    }

    fn recovered(&self) -> Recovered {
        Recovered {
            statuses: self
                .statuses
                .iter()
                .map(|(id, update)| SpooledStatus {
                    id: *id,
                    update: update.clone(),
                })
                .collect(),
            jobs: self.jobs.values().cloned().collect(),
        }
    }

    /// What the spool holds, in the notation of `final_spool`.
    fn describe(&self) -> Value {
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(id, u)| format!("{id}:{}({})", u.status, name_of(&u.uuid)))
            .collect();
        let jobs: Vec<String> = self.jobs.values().map(describe_job).collect();
        json!({"statuses": statuses, "jobs": jobs})
    }
}

fn describe_job(record: &JobRecord) -> String {
    match &record.handler {
        None => name_of(&record.uuid),
        Some(HandlerRecord::Exec { pgid, .. }) => format!("{}[exec {pgid}]", name_of(&record.uuid)),
        Some(HandlerRecord::Celery { task_id }) => {
            format!("{}[celery {task_id}]", name_of(&record.uuid))
        }
    }
}

fn render_batch(id: u64, batch: &SpoolBatch) -> String {
    let mut parts = Vec::new();
    for s in &batch.put_statuses {
        parts.push(format!(
            "+{}:{}({})",
            s.id,
            s.update.status,
            name_of(&s.update.uuid)
        ));
    }
    for j in &batch.put_jobs {
        parts.push(format!("+{}", describe_job(j)));
    }
    for id in &batch.remove_statuses {
        parts.push(format!("-{id}"));
    }
    for uuid in &batch.remove_jobs {
        parts.push(format!("-{}", name_of(uuid)));
    }
    let kind = if batch.full_snapshot {
        "Snapshot"
    } else {
        "Persist"
    };
    format!("{kind}({id}:{})", parts.join(" "))
}

fn render_recovery(recovery: &Recovery) -> Vec<String> {
    let names = |uuids: &mut dyn Iterator<Item = String>| {
        uuids.map(|u| name_of(&u)).collect::<Vec<_>>().join(",")
    };
    vec![format!(
        "Recovered(statuses={},jobs={},interrupted=[{}],resume=[{}],kill={})",
        recovery.statuses,
        recovery.jobs,
        names(&mut recovery.interrupted.iter().cloned()),
        names(&mut recovery.resume.iter().map(|r| r.job.uuid().to_owned())),
        recovery.kill.len()
    )]
}

struct World {
    signer: Hotkey,
    stranger: Hotkey,
}

impl World {
    fn input(&self, spec: &Value) -> Input {
        if let Some(name) = spec.as_str() {
            return match name {
                "Tick" => Input::Tick,
                "SocketOpened" => Input::SocketOpened,
                "Pong" => Input::Pong,
                "Shutdown" => Input::Shutdown,
                "ForceStop" => Input::ForceStop,
                "Binary" => Input::Undecodable(DecodeError::Binary),
                other => panic!("unknown input {other}"),
            };
        }
        let (key, arg) = spec
            .as_object()
            .and_then(|o| o.iter().next())
            .expect("an input is a string or {kind: arg}");
        let text = |v: &Value| {
            v.as_str()
                .unwrap_or_else(|| panic!("{key} takes a string"))
                .to_owned()
        };
        let decode = |frame: &str| match decode_server_frame(frame, 1 << 20) {
            Ok(message) => Input::Frame(message),
            Err(error) => Input::Undecodable(error),
        };
        match key.as_str() {
            "SocketFailed" => Input::SocketFailed(text(arg)),
            "SocketClosed" => Input::SocketClosed(arg.as_u64().map(|c| c as u16)),
            "Response" => Input::Frame(ServerMessage::Response(match arg.as_str() {
                Some("success") => Response::success(),
                Some(error) => Response::error(error, "error", ""),
                None => panic!("Response takes success or an error type"),
            })),
            "Job" => decode(&signed_job_text(&self.signer, &uuid_of(&text(arg)))),
            "UntrustedJob" => decode(&signed_job_text(&self.stranger, &uuid_of(&text(arg)))),
            "InvalidJob" => decode(
                &signed_job_text(&self.signer, &uuid_of(&text(arg)))
                    .replace("always_on.gpu-24gb", "no_such.class"),
            ),
            "Garbage" => decode(&text(arg)),
            "Status" => {
                let parts = arg.as_array().expect("Status takes [job, status]");
                let status =
                    JobStatus::from_wire(parts[1].as_str().unwrap()).expect("a known status");
                Input::Status(JobStatusUpdate::new(
                    uuid_of(parts[0].as_str().unwrap()),
                    status,
                ))
            }
            "JobFinished" => Input::JobFinished(uuid_of(&text(arg))),
            "Pipeline" => {
                Input::PipelineAvailable(arg.as_bool().expect("Pipeline takes true or false"))
            }
            "Cheat" | "UntrustedCheat" => {
                let mut report = JobCheated {
                    signature: None,
                    job_uuid: uuid_of(&text(arg)),
                    trusted_job_uuid: uuid_of("job-999"),
                    details: json!({"reason": "scenario"}),
                };
                let key = if key == "Cheat" {
                    &self.signer
                } else {
                    &self.stranger
                };
                report.sign(key, 1);
                Input::Frame(ServerMessage::JobCheated(report))
            }
            "Attach" => {
                let parts = arg.as_array().expect("Attach takes [job, exec|celery]");
                let uuid = uuid_of(parts[0].as_str().unwrap());
                let handler = match parts[1].as_str() {
                    Some("exec") => HandlerRecord::Exec {
                        pgid: 4242,
                        start_time: 77,
                    },
                    Some("celery") => HandlerRecord::Celery {
                        task_id: "task-1".to_owned(),
                    },
                    other => panic!("Attach takes exec or celery, not {other:?}"),
                };
                Input::JobAttached { uuid, handler }
            }
            // Several frames from one read of the socket: each as its own input spec.
            "Frames" => Input::Frames(
                arg.as_array()
                    .expect("Frames takes a list of inputs")
                    .iter()
                    .map(|spec| match self.input(spec) {
                        Input::Frame(message) => Incoming::Message(message),
                        Input::Undecodable(error) => Incoming::Undecodable(error),
                        Input::Pong => Incoming::Pong,
                        other => panic!("{other:?} is not read from the socket"),
                    })
                    .collect(),
            ),
            other => panic!("unknown input {other}"),
        }
    }
}

fn render(action: &Action) -> String {
    match action {
        Action::Open => "Open".into(),
        Action::Send(ClientMessage::StatusUpdate(update)) => {
            let detail = update
                .metadata
                .job_rejection_details
                .as_ref()
                .map(|d| format!(",{}", d.reason))
                .or_else(|| {
                    update
                        .metadata
                        .horde_failure_details
                        .as_ref()
                        .map(|d| format!(",{}", d.reason))
                })
                .unwrap_or_default();
            format!("Send:{}({}{detail})", update.status, name_of(&update.uuid))
        }
        Action::Send(message) => format!("Send:{}", message.message_type()),
        Action::Ping => "Ping".into(),
        Action::Close(code) => format!("Close({code})"),
        Action::Abort => "Abort".into(),
        Action::Dispatch(job) => format!("Dispatch({})", name_of(job.uuid())),
        Action::CancelJobs => "CancelJobs".into(),
        Action::Emit(Event::StateChanged { from, to, reason }) if from == to => {
            format!("Emit:{to}:{}", reason.name())
        }
        Action::Emit(Event::StateChanged { from, to, .. }) => format!("Emit:{from}->{to}"),
        Action::Emit(Event::JobAccepted { uuid }) => format!("Emit:JobAccepted({})", name_of(uuid)),
        Action::Emit(Event::JobRejected { uuid, reason, .. }) => {
            format!("Emit:JobRejected({},{reason})", name_of(uuid))
        }
        Action::Emit(Event::StatusDelivered {
            uuid,
            status,
            sends,
        }) => {
            format!("Emit:Delivered({},{status},sends={sends})", name_of(uuid))
        }
        Action::Emit(Event::StatusRefused {
            uuid,
            status,
            error,
        }) => {
            format!("Emit:Refused({},{status},{error})", name_of(uuid))
        }
        Action::Emit(Event::CheatReport { .. }) => "Emit:CheatReport".into(),
        Action::Emit(Event::Ignored(_)) => "Emit:Ignored".into(),
        Action::Emit(Event::JobUnanswered { uuid }) => {
            format!("Emit:JobUnanswered({})", name_of(uuid))
        }
        Action::Emit(Event::SpoolCommitFailed {
            released, retry_in, ..
        }) => format!(
            "Emit:SpoolCommitFailed(released={released},retry_in={})",
            retry_in.map_or("now".to_owned(), |d| format!("{}ms", d.as_millis()))
        ),
        Action::Emit(Event::SpoolUpToDate { stale_for }) => {
            format!("Emit:SpoolUpToDate(after={}ms)", stale_for.as_millis())
        }
        Action::Emit(Event::PipelineChanged {
            available,
            refused_meanwhile,
        }) => format!("Emit:PipelineChanged(available={available},refused={refused_meanwhile})"),
        Action::Persist { id, batch } => render_batch(*id, batch),
        Action::ForwardCheatReport(report) => {
            format!("ForwardCheatReport({})", name_of(&report.job_uuid))
        }
        Action::Emit(other) => panic!("an event the scenarios cannot render: {other:?}"),
        Action::Stop(reason) => format!("Stop({reason:?})"),
    }
}

fn scenario_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("states/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("states/scenarios exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

fn run_scenario(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut doc: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    let own = Hotkey::from_seed(&[7u8; 32]);
    let world = World {
        signer: Hotkey::from_seed(&[0x11u8; 32]),
        stranger: Hotkey::from_seed(&[0x22u8; 32]),
    };
    let signers =
        TrustedSigners::new(own.public_key(), &[world.signer.ss58()]).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let config = config(&doc["config"]);
    let mut machine = Machine::new(config.clone(), own.auth_request(), signers.clone(), start);
    let mut spool = ModelSpool::default();
    let bless = std::env::var_os("UPDATE_SCENARIOS").is_some();
    let mut blessed = false;
    let steps = doc["steps"].as_array_mut().ok_or("no steps")?;
    for (i, step) in steps.iter_mut().enumerate() {
        let at =
            start + Duration::from_millis(step["at"].as_u64().ok_or(format!("step {i}: no 'at'"))?);
        let produced = if step["input"] == json!("Crash") {
            // The process dies: what was queued for the writer is lost; a new one recovers the spool.
            spool.queue.clear();
            spool.stale = false;
            machine = Machine::new(config.clone(), own.auth_request(), signers.clone(), at);
            render_recovery(&machine.recover(spool.recovered()))
        } else {
            let input = match step["input"].get("Commit").and_then(Value::as_str) {
                Some(result) => spool
                    .commit(result)
                    .ok_or(format!("step {i}: Commit with nothing queued"))?,
                None => world.input(&step["input"]),
            };
            let actions = machine.step(input, at);
            for action in &actions {
                if let Action::Persist { id, batch } = action {
                    spool.queue.push_back((*id, batch.clone()));
                }
            }
            actions.iter().map(render).collect()
        };
        let actions: Vec<String> = produced;
        let state = machine.state().kind().as_str();
        let deadline = machine
            .poll_timeout()
            .map(|(d, timer)| json!([(d - start).as_millis() as u64, timer.as_str()]));
        if step["state"].is_null() && bless {
            let obj = step.as_object_mut().ok_or("a step is an object")?;
            obj.insert("state".into(), json!(state));
            obj.insert("actions".into(), json!(actions));
            obj.insert("next_deadline".into(), deadline.unwrap_or(Value::Null));
            blessed = true;
            continue;
        }
        let expected_actions: Vec<String> = serde_json::from_value(step["actions"].clone())
            .map_err(|e| format!("step {i}: actions: {e}"))?;
        if step["state"] != json!(state) || expected_actions != actions {
            return Err(format!(
                "step {i} ({}): expected {} {:?}, got {state} {actions:?}",
                step["input"], step["state"], expected_actions
            ));
        }
        if let Some(expected) = step.get("accepts_statuses").and_then(Value::as_bool)
            && machine.accepts_statuses() != expected
        {
            return Err(format!(
                "step {i}: accepts_statuses is {}, expected {expected}",
                !expected
            ));
        }
        if step.get("next_deadline").is_some()
            && step["next_deadline"] != deadline.clone().unwrap_or(Value::Null)
        {
            return Err(format!(
                "step {i}: next deadline {:?}, expected {}",
                deadline, step["next_deadline"]
            ));
        }
    }
    if let Some(expected) = doc.get("final_counters").and_then(Value::as_object) {
        let counters = format!("{:?}", machine.counters());
        for (name, value) in expected {
            let needle = format!("{name}: {value}");
            if !counters.contains(&format!("{needle},"))
                && !counters.contains(&format!("{needle} }}"))
            {
                return Err(format!("final counter {name} is not {value}: {counters}"));
            }
        }
    }
    let undelivered: Vec<Value> = machine
        .undelivered()
        .map(|u| json!(format!("{}({})", u.status, name_of(&u.uuid))))
        .collect();
    if doc.get("final_undelivered").is_some() && doc["final_undelivered"] != json!(undelivered) {
        return Err(format!(
            "undelivered at the end: {undelivered:?}, expected {}",
            doc["final_undelivered"]
        ));
    }
    if config.durable && doc.get("final_spool").is_some() && doc["final_spool"] != spool.describe()
    {
        return Err(format!(
            "the spool at the end holds {}, expected {}",
            spool.describe(),
            doc["final_spool"]
        ));
    }
    if blessed {
        let obj: &mut Map<String, Value> = doc.as_object_mut().ok_or("a scenario is an object")?;
        obj.insert("final_undelivered".into(), json!(undelivered));
        if config.durable {
            obj.insert("final_spool".into(), spool.describe());
        }
        std::fs::write(
            path,
            serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())? + "\n",
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[test]
fn golden_scenarios_replay_exactly() {
    let files = scenario_files();
    assert!(
        files.len() >= 12,
        "expected at least 12 scenarios, found {}",
        files.len()
    );
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| {
            run_scenario(f)
                .err()
                .map(|e| format!("{}: {e}", f.display()))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
