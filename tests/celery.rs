//! The celery handler against the real thing: Debian's `redis-server` on a free loopback port (no persistence) and
//! a real Celery worker (`celery -A tasks worker --concurrency 2 -Q organic_jobs`, prefork: two processes) running
//! `tests/celery/tasks.py` from the venv `tests/celery/setup-venv.sh` makes. The handler is driven directly through
//! `JobHandler::run`, as the client loop drives it, with jobs signed by the test signer; one test (module
//! `through_the_client`) runs the whole client with it against the reference facilitator: Redis down at a job's
//! arrival, and a cheat report handed on.
//!
//! Missing `redis-server` or venv: with `FACILITATOR_REQUIRE_SERVICES=1` (CI) each test fails saying what to
//! install; without it each prints a loud SKIPPED line and returns. Every child process is killed when a test ends,
//! passed or failed (a guard with `Drop`; the children also die with the test process). Nothing asserts on timing
//! beyond generous upper bounds for things that must end.
#![cfg(feature = "celery")]

#[path = "services/mod.rs"]
mod services;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::{Duration, SystemTime};

use facilitator_client::handler::celery::{CeleryConfig, CeleryHandler};
use facilitator_client::handler::{HandlerEvent, JobHandler, StatusSender};
use facilitator_client::protocol::testing::{TEST_TIMESTAMP_NS, minimal_job, test_signer};
use facilitator_client::protocol::{
    HordeFailureReason, JobCheated, JobRequest, JobStatus, JobStatusUpdate,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout};

/// Upper bound for anything that must finish; far above what a loaded machine needs.
const LIMIT: Duration = Duration::from_secs(60);

const TASK: &str = "facilitator_client_tests.execute_organic_job";
const CHEATED_TASK: &str = "facilitator_client_tests.job_cheated";

const COMPLETED_RUN: [JobStatus; 5] = [
    JobStatus::Accepted,
    JobStatus::ExecutorReady,
    JobStatus::VolumesReady,
    JobStatus::ExecutionDone,
    JobStatus::Completed,
];

// ---- finding the services ----------------------------------------------------------------------------------------

struct Services {
    redis_server: PathBuf,
    python: PathBuf,
}

fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/celery")
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The services, or `None` after a loud SKIPPED line; with `FACILITATOR_REQUIRE_SERVICES=1` a missing one fails.
fn services(test: &str) -> Option<Services> {
    let mut missing = Vec::new();
    let redis_server = match std::env::var_os("FACILITATOR_REDIS_SERVER") {
        Some(p) => Some(PathBuf::from(p)).filter(|p| p.is_file()),
        None => find_in_path("redis-server"),
    };
    if redis_server.is_none() {
        missing.push("redis-server (Debian: apt-get install -y redis-server)".to_owned());
    }
    let python = match std::env::var_os("FACILITATOR_CELERY_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => tests_dir().join(".venv/bin/python"),
    };
    let python_ok = Command::new(&python)
        .args(["-c", "import celery, channels_redis, django"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !python_ok {
        missing.push(format!(
            "a Python with celery and channels_redis at {} (bash tests/celery/setup-venv.sh, or set \
             FACILITATOR_CELERY_PYTHON)",
            python.display()
        ));
    }
    if missing.is_empty() {
        return Some(Services {
            redis_server: redis_server.unwrap_or_default(),
            python,
        });
    }
    services::missing(test, &missing.join("; "));
    None
}

// ---- processes -------------------------------------------------------------------------------------------------

/// Makes a child die with the test process even if the test process is killed, and puts it in its own process
/// group so the whole group (a Celery worker and its pool) can be killed at once.
fn guarded(command: &mut Command) -> &mut Command {
    command.process_group(0);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command
}

fn kill_group(child: &mut Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on the child's own process group; no memory is involved.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("its address").port()
}

fn redis_answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

/// Everything a test started; all of it is killed on drop.
struct Env {
    services: Services,
    dir: tempfile::TempDir,
    port: u16,
    redis: Option<Child>,
    workers: Vec<(Child, PathBuf)>,
}

impl Env {
    fn new(services: Services) -> Env {
        let mut env = Env {
            services,
            dir: tempfile::tempdir().expect("a temporary directory"),
            port: free_port(),
            redis: None,
            workers: Vec::new(),
        };
        env.start_redis();
        env
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn start_redis(&mut self) {
        let log = self.dir.path().join("redis.log");
        let mut command = Command::new(&self.services.redis_server);
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = guarded(&mut command).spawn().expect("redis-server starts");
        self.redis = Some(child);
        let start = std::time::Instant::now();
        while !redis_answers(self.port) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "redis-server did not answer on port {}: {}",
                self.port,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill_redis(&mut self) {
        if let Some(mut child) = self.redis.take() {
            kill_group(&mut child);
        }
    }

    /// A Celery worker with two pool processes on `queue`, ready to take tasks.
    async fn start_worker(&mut self, queue: &str) {
        let log = self
            .dir
            .path()
            .join(format!("worker-{}.log", self.workers.len()));
        let file = std::fs::File::create(&log).expect("worker log");
        let mut command = Command::new(&self.services.python);
        command
            .args(["-m", "celery", "-A", "tasks", "worker", "--pool", "prefork"])
            .args(["--concurrency", "2", "-Q", queue, "--loglevel", "INFO"])
            .args([
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
            ])
            .args(["-n", &format!("w{}-{}@%h", self.workers.len(), self.port)])
            .current_dir(tests_dir())
            .env("FACILITATOR_CELERY_TEST_BROKER", self.url())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file);
        let child = guarded(&mut command).spawn().expect("celery worker starts");
        self.workers.push((child, log.clone()));
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains(" ready.") {
                return;
            }
            let exited = self
                .workers
                .last_mut()
                .and_then(|(child, _)| child.try_wait().ok().flatten());
            assert!(
                exited.is_none() && start.elapsed() < LIMIT,
                "the Celery worker did not become ready ({exited:?}):\n{text}"
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    fn worker_logs(&self) -> String {
        self.workers
            .iter()
            .map(|(_, log)| std::fs::read_to_string(log).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("URL")
            .get_multiplexed_async_connection()
            .await
            .expect("the test connects to Redis")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("worker logs:\n{}", self.worker_logs());
        }
        for (child, _) in &mut self.workers {
            kill_group(child);
        }
        self.kill_redis();
    }
}

// ---- jobs ------------------------------------------------------------------------------------------------------

fn uuid(test: u16, n: u32) -> String {
    format!("00000000-0000-4000-8000-{test:04x}{n:08x}")
}

fn job(uuid: &str, env: &[(&str, &str)]) -> Arc<JobRequest> {
    let mut fields = minimal_job(uuid);
    for (key, value) in env {
        fields.env.insert(*key, *value);
    }
    fields.sign(&test_signer(), TEST_TIMESTAMP_NS);
    Arc::new(JobRequest::parse(&fields.to_wire_text()).expect("the test job parses"))
}

/// Runs a job to its end through `run` (or any future made from a `StatusSender`) and returns its statuses.
async fn collect(
    uuid: &str,
    start: impl FnOnce(StatusSender) -> facilitator_client::handler::BoxFuture,
) -> Vec<JobStatusUpdate> {
    let (tx, mut rx) = mpsc::channel(8);
    let task = tokio::spawn(start(StatusSender::new(uuid, tx)));
    let mut updates = Vec::new();
    let mut attached = 0;
    while let Some(event) = timeout(LIMIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("job {uuid} ends; so far {updates:?}"))
    {
        match event {
            HandlerEvent::Status(update) => updates.push(update),
            // The task id, for the spool: once, before any status.
            HandlerEvent::Attached { .. } if attached == 0 && updates.is_empty() => attached += 1,
            other => panic!("handlers send statuses, after at most one Attached: {other:?}"),
        }
    }
    timeout(LIMIT, task)
        .await
        .expect("the job's task ends")
        .expect("the job's task does not panic");
    assert!(updates.iter().all(|u| u.uuid == uuid), "{updates:?}");
    let terminals = updates.iter().filter(|u| u.status.is_terminal()).count();
    assert_eq!(
        terminals, 1,
        "exactly one terminal status, last: {updates:?}"
    );
    assert!(updates.last().is_some_and(|u| u.status.is_terminal()));
    updates
}

async fn run(handler: &CeleryHandler, job: Arc<JobRequest>) -> Vec<JobStatusUpdate> {
    let uuid = job.uuid().to_owned();
    collect(&uuid, |statuses| handler.run(job, statuses)).await
}

fn statuses(updates: &[JobStatusUpdate]) -> Vec<JobStatus> {
    updates.iter().map(|u| u.status).collect()
}

fn horde_failure(update: &JobStatusUpdate) -> (HordeFailureReason, String) {
    let details = update
        .metadata
        .horde_failure_details
        .as_ref()
        .unwrap_or_else(|| panic!("horde_failure_details in {update:?}"));
    (details.reason, details.message.clone())
}

fn config(env: &Env, job_timeout: Duration) -> CeleryConfig {
    let mut config = CeleryConfig::new(env.url(), TASK);
    config.job_timeout = job_timeout;
    config.cheated_task = Some(CHEATED_TASK.to_owned());
    config.result_poll_interval = Duration::from_millis(200);
    config
}

async fn started(config: CeleryConfig) -> CeleryHandler {
    let handler = CeleryHandler::start(config).expect("valid config");
    let mut available = handler.available();
    timeout(LIMIT, available.wait_for(|up| *up))
        .await
        .expect("the handler subscribes")
        .expect("the handler runs");
    handler
}

fn assert_completed_run(uuid: &str, updates: &[JobStatusUpdate]) {
    assert_eq!(statuses(updates), COMPLETED_RUN, "{uuid}: {updates:?}");
    let response = updates[4]
        .metadata
        .miner_response
        .as_ref()
        .unwrap_or_else(|| panic!("{uuid}: miner_response in {:?}", updates[4]));
    assert_eq!(response.docker_process_stdout, format!("done {uuid}"));
    assert_eq!(response.artifacts.as_ref().map(|a| a.len()), Some(0));
}

// ---- a logger that keeps the handler's lines -------------------------------------------------------------------

struct Logs(Mutex<Vec<String>>);

static LOGS: Logs = Logs(Mutex::new(Vec::new()));

impl log::Log for Logs {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if record
            .target()
            .starts_with("facilitator_client::handler::celery")
            && self.enabled(record.metadata())
        {
            if std::env::var_os("TEST_LOG").is_some() {
                eprintln!("{} {}", record.level(), record.args());
            }
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(record.args().to_string());
        }
    }

    fn flush(&self) {}
}

fn logs() -> &'static Logs {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        if log::set_logger(&LOGS).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
    });
    &LOGS
}

fn logged(fragment: &str) -> bool {
    LOGS.0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .any(|line| line.contains(fragment))
}

// ---- the tests -------------------------------------------------------------------------------------------------

/// 200 jobs, every status in order with its metadata; a task that publishes `failed`, one that publishes `rejected`,
/// one that raises, one that publishes nothing and returns `completed`; a published `received` not forwarded;
/// malformed and foreign messages counted; a cheat report queued to its task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_worker_runs_two_hundred_jobs_and_every_outcome_is_relayed() {
    let Some(services) =
        services("a_real_worker_runs_two_hundred_jobs_and_every_outcome_is_relayed")
    else {
        return;
    };
    logs();
    let mut env = Env::new(services);
    env.start_worker("organic_jobs").await;
    let handler = started(config(&env, Duration::from_secs(60))).await;
    let mut enqueued = handler.enqueued_events();
    let began = Instant::now();

    let many: Vec<_> = (0..200u32)
        .map(|n| {
            let handler = handler.clone();
            let uuid = uuid(1, n);
            tokio::spawn(async move {
                let updates = run(&handler, job(&uuid, &[])).await;
                (uuid, updates)
            })
        })
        .collect();

    let failed = run(&handler, job(&uuid(2, 1), &[("TEST_BEHAVIOUR", "fail")]));
    let rejected = run(&handler, job(&uuid(2, 2), &[("TEST_BEHAVIOUR", "reject")]));
    let raised = run(&handler, job(&uuid(2, 3), &[("TEST_BEHAVIOUR", "raise")]));
    let return_only = run(
        &handler,
        job(&uuid(2, 4), &[("TEST_BEHAVIOUR", "return_only")]),
    );
    let received_too = run(
        &handler,
        job(&uuid(2, 5), &[("TEST_PUBLISH_RECEIVED", "1")]),
    );
    // While this one sleeps, garbage and a foreign job's status arrive on the pattern.
    let noisy_uuid = uuid(2, 6);
    let noisy = run(&handler, job(&noisy_uuid, &[("TEST_SLEEP", "2")]));
    let noise = async {
        let mut redis = env.redis().await;
        let deadline = Instant::now() + LIMIT;
        while handler.task_id(&noisy_uuid).is_none() && Instant::now() < deadline {
            sleep(Duration::from_millis(50)).await;
        }
        for (channel, payload) in [
            (format!("job_status_updates__{noisy_uuid}"), b"\xc1 not msgpack".to_vec()),
            (
                "job_status_updates__ffffffff-0000-4000-8000-000000000000".to_owned(),
                rmp_serde::to_vec_named(&serde_json::json!({"type": "job_status_update", "payload": {
                    "uuid": "ffffffff-0000-4000-8000-000000000000", "status": "accepted", "metadata": null}}))
                .expect("packs"),
            ),
        ] {
            let _: i64 = redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async(&mut redis)
                .await
                .expect("PUBLISH");
        }
    };
    let cheat = async {
        let mut report = JobCheated {
            signature: None,
            job_uuid: uuid(2, 7),
            trusted_job_uuid: uuid(2, 8),
            details: serde_json::json!({"why": "different output", "n": 1}),
        };
        report.sign(&test_signer(), TEST_TIMESTAMP_NS);
        let task_id = handler
            .send_cheated(&report)
            .await
            .expect("the report is queued");
        let mut redis = env.redis().await;
        let deadline = Instant::now() + LIMIT;
        loop {
            let stored: Option<String> = redis::cmd("GET")
                .arg(format!("celery-task-meta-{task_id}"))
                .query_async(&mut redis)
                .await
                .expect("GET");
            if let Some(stored) = stored {
                let meta: Value = serde_json::from_str(&stored).expect("JSON");
                assert_eq!(meta["status"], "SUCCESS", "{meta}");
                return (meta["result"]["report"].clone(), report.to_value());
            }
            assert!(Instant::now() < deadline, "the cheated task ran");
            sleep(Duration::from_millis(100)).await;
        }
    };
    let (failed, rejected, raised, return_only, received_too, noisy, (), (cheat_seen, cheat_sent)) = tokio::join!(
        failed,
        rejected,
        raised,
        return_only,
        received_too,
        noisy,
        noise,
        cheat
    );

    let mut ran = 0;
    for task in many {
        let (uuid, updates) = timeout(LIMIT, task).await.expect("ends").expect("no panic");
        assert_completed_run(&uuid, &updates);
        ran += 1;
    }
    assert_eq!(ran, 200);
    eprintln!(
        "200 jobs and the outcome cases took {:.1} s",
        began.elapsed().as_secs_f64()
    );

    assert_eq!(statuses(&failed), [JobStatus::Accepted, JobStatus::Failed]);
    let details = failed[1]
        .metadata
        .job_failure_details
        .as_ref()
        .expect("failure details");
    assert_eq!(details.docker_process_exit_status, Some(3));
    assert_eq!(statuses(&rejected), [JobStatus::Rejected]);
    let rejection = rejected[0]
        .metadata
        .job_rejection_details
        .as_ref()
        .expect("rejection details");
    assert_eq!(rejection.reason.as_str(), "no_miner_for_job");

    assert_eq!(
        statuses(&raised),
        [JobStatus::Accepted, JobStatus::HordeFailed]
    );
    let (reason, message) = horde_failure(&raised[1]);
    assert_eq!(reason, HordeFailureReason::UnhandledException);
    assert!(
        message.contains("failed without a terminal status: RuntimeError: test task raised"),
        "{message}"
    );
    let context = raised[1]
        .metadata
        .horde_failure_details
        .as_ref()
        .and_then(|d| d.context.clone());
    assert_eq!(
        context.as_ref().map(|c| c["exception_type"].clone()),
        Some("RuntimeError".into())
    );

    assert_eq!(
        statuses(&return_only),
        [JobStatus::Accepted, JobStatus::Completed]
    );
    assert!(return_only[1].metadata.miner_response.is_some());
    assert!(
        logged("published no terminal status"),
        "the log says where `completed` came from"
    );

    assert_completed_run(&uuid(2, 5), &received_too);
    assert_completed_run(&noisy_uuid, &noisy);
    assert_eq!(
        cheat_seen, cheat_sent,
        "the cheated task got the report as one map"
    );

    let stats = handler.stats();
    assert_eq!(stats.enqueued, 206, "{stats:?}");
    assert!(
        stats.not_forwarded >= 1,
        "the published `received`: {stats:?}"
    );
    assert!(stats.malformed_messages >= 1, "{stats:?}");
    assert!(stats.unknown_job_messages >= 1, "{stats:?}");
    assert_eq!(stats.from_results, 2, "return_only and raise: {stats:?}");
    assert_eq!(stats.cheat_reports, 1);
    assert_eq!(stats.link_losses, 0, "{stats:?}");

    let mut events = 0;
    while let Ok(event) = enqueued.try_recv() {
        assert!(!event.task_id.is_empty());
        assert!(event.enqueued_at <= SystemTime::now());
        events += 1;
    }
    assert_eq!(events, 206, "one Enqueued event per queued job");
    assert_eq!(
        handler.task_id(&uuid(1, 0)),
        None,
        "ended jobs are forgotten"
    );
}

/// A job nobody takes expires unstarted and is taken off the queue; a job that runs past the timeout is reported;
/// a worker process killed mid-job fails its job with the worker's error; a task name the workers do not know
/// fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_timeout_and_a_killed_worker_are_reported() {
    let Some(services) = services("expiry_timeout_and_a_killed_worker_are_reported") else {
        return;
    };
    logs();
    let mut env = Env::new(services);
    env.start_worker("organic_jobs").await;

    // No worker listens on this queue.
    let mut nobody = config(&env, Duration::from_secs(2));
    nobody.queue = "nobody_listens".to_owned();
    let nobody = started(nobody).await;
    let short = started(config(&env, Duration::from_secs(3))).await;
    let normal = started(config(&env, Duration::from_secs(60))).await;
    let mut misnamed = config(&env, Duration::from_secs(60));
    misnamed.task = "no.such.task".to_owned();
    let misnamed = started(misnamed).await;

    let expired_uuid = uuid(3, 1);
    let expired = run(&nobody, job(&expired_uuid, &[]));
    let too_long = run(&short, job(&uuid(3, 2), &[("TEST_SLEEP", "8")]));
    let pid_file = env.dir.path().join("job.pid");
    let pid_file_text = pid_file.display().to_string();
    let killed = run(
        &normal,
        job(
            &uuid(3, 3),
            &[("TEST_SLEEP", "30"), ("TEST_PID_FILE", &pid_file_text)],
        ),
    );
    let killer = async {
        let deadline = Instant::now() + LIMIT;
        let pid: libc::pid_t = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "the job started");
            sleep(Duration::from_millis(50)).await;
        };
        // Let `accepted` go out first, then kill the pool process running the job.
        sleep(Duration::from_millis(300)).await;
        // SAFETY: kill(2) of the worker's pool process; no memory is involved.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGKILL) },
            0,
            "kill the worker process"
        );
    };
    let unregistered = run(&misnamed, job(&uuid(3, 5), &[]));
    let (expired, too_long, killed, (), unregistered) =
        tokio::join!(expired, too_long, killed, killer, unregistered);

    assert_eq!(statuses(&expired), [JobStatus::HordeFailed]);
    let (reason, message) = horde_failure(&expired[0]);
    assert_eq!(reason, HordeFailureReason::UnhandledTimeout);
    assert!(
        message.contains("expired unstarted: no Celery worker took it"),
        "{message}"
    );
    let mut redis = env.redis().await;
    let left: i64 = redis::cmd("LLEN")
        .arg("nobody_listens")
        .query_async(&mut redis)
        .await
        .expect("LLEN");
    assert_eq!(left, 0, "the expired message was taken off the queue");

    assert_eq!(
        statuses(&too_long),
        [JobStatus::Accepted, JobStatus::HordeFailed]
    );
    let (reason, message) = horde_failure(&too_long[1]);
    assert_eq!(reason, HordeFailureReason::UnhandledTimeout);
    assert!(
        message.contains("ran past the job timeout (3 s)"),
        "{message}"
    );

    assert_eq!(
        statuses(&killed),
        [JobStatus::Accepted, JobStatus::HordeFailed]
    );
    let (reason, message) = horde_failure(&killed[1]);
    assert_eq!(reason, HordeFailureReason::UnhandledException);
    assert!(message.contains("WorkerLostError"), "{message}");
    assert!(message.contains("SIGKILL"), "{message}");

    // A task name the workers do not know: Celery stores a NotRegistered failure, reported at once.
    assert_eq!(statuses(&unregistered), [JobStatus::HordeFailed]);
    let (_, message) = horde_failure(&unregistered[0]);
    assert!(message.contains("NotRegistered: no.such.task"), "{message}");

    // The worker replaced its process and still runs jobs.
    assert_completed_run(&uuid(3, 4), &run(&normal, job(&uuid(3, 4), &[])).await);
}

/// Redis restarted (killed, started empty) while two jobs run: the pipeline signal goes false, then true; the
/// subscription comes back; both jobs still end with their real outcome; a job queued afterwards runs, also right
/// after a second restart while idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_a_redis_restart() {
    let Some(services) = services("jobs_survive_a_redis_restart") else {
        return;
    };
    logs();
    let mut env = Env::new(services);
    env.start_worker("organic_jobs").await;
    let handler = started(config(&env, Duration::from_secs(60))).await;
    let mut available = handler.available();

    let first = tokio::spawn({
        let handler = handler.clone();
        async move { run(&handler, job(&uuid(4, 1), &[("TEST_SLEEP", "4")])).await }
    });
    let second = tokio::spawn({
        let handler = handler.clone();
        async move { run(&handler, job(&uuid(4, 2), &[("TEST_SLEEP", "4")])).await }
    });
    // Both tasks taken by the worker's two processes (their messages are off the queue) before the restart.
    let mut redis = env.redis().await;
    let deadline = Instant::now() + LIMIT;
    loop {
        let queued: i64 = redis::cmd("LLEN")
            .arg("organic_jobs")
            .query_async(&mut redis)
            .await
            .expect("LLEN");
        let unacked: i64 = redis::cmd("HLEN")
            .arg("unacked")
            .query_async(&mut redis)
            .await
            .expect("HLEN");
        if queued == 0 && unacked == 0 && handler.stats().forwarded >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "both jobs started");
        sleep(Duration::from_millis(50)).await;
    }
    drop(redis);

    env.kill_redis();
    timeout(LIMIT, available.wait_for(|up| !*up))
        .await
        .expect("the pipeline signal goes false")
        .expect("handler alive");
    sleep(Duration::from_millis(500)).await;
    env.start_redis();
    timeout(LIMIT, available.wait_for(|up| *up))
        .await
        .expect("the pipeline signal comes back")
        .expect("handler alive");

    for (n, task) in [(1, first), (2, second)] {
        let updates = timeout(LIMIT, task).await.expect("ends").expect("no panic");
        let last = updates.last().expect("a terminal status");
        assert_eq!(last.status, JobStatus::Completed, "job {n}: {updates:?}");
        assert_eq!(updates.first().map(|u| u.status), Some(JobStatus::Accepted));
    }
    let stats = handler.stats();
    assert!(stats.link_losses >= 1 && stats.reconnects >= 1, "{stats:?}");
    assert!(logged("is back after"), "the reconnect is logged");

    // New jobs flow again once the worker has reconnected too.
    assert_completed_run(&uuid(4, 3), &run(&handler, job(&uuid(4, 3), &[])).await);

    // Restarted again while idle: the first job after it is queued at once (the command connection was refreshed
    // before the pipeline was called available), not failed on the dead connection.
    env.kill_redis();
    timeout(LIMIT, available.wait_for(|up| !*up))
        .await
        .expect("the pipeline signal goes false")
        .expect("handler alive");
    env.start_redis();
    timeout(LIMIT, available.wait_for(|up| *up))
        .await
        .expect("the pipeline signal comes back")
        .expect("handler alive");
    let enqueue_failures = handler.stats().enqueue_failures;
    assert_completed_run(&uuid(4, 4), &run(&handler, job(&uuid(4, 4), &[])).await);
    assert_eq!(handler.stats().enqueue_failures, enqueue_failures);
}

/// A client restarted mid-job: the first handler is dropped after `accepted`; the job finishes while no client
/// listens; a new handler re-attached by (uuid, task id) gets the terminal status from the task's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_client_reattaches_and_takes_the_terminal_status_from_the_result() {
    let Some(services) =
        services("a_restarted_client_reattaches_and_takes_the_terminal_status_from_the_result")
    else {
        return;
    };
    logs();
    let mut env = Env::new(services);
    env.start_worker("organic_jobs").await;
    let job_uuid = uuid(5, 1);
    let job = job(&job_uuid, &[("TEST_SLEEP", "1.5")]);

    let first = started(config(&env, Duration::from_secs(60))).await;
    let mut enqueued = first.enqueued_events();
    let (tx, mut rx) = mpsc::channel(8);
    let running =
        tokio::spawn(first.run(Arc::clone(&job), StatusSender::new(job_uuid.clone(), tx)));
    let attached = timeout(LIMIT, rx.recv())
        .await
        .expect("the task is queued")
        .expect("the job runs");
    let accepted = timeout(LIMIT, rx.recv())
        .await
        .expect("a status")
        .expect("the job runs");
    assert!(
        matches!(&accepted, HandlerEvent::Status(u) if u.status == JobStatus::Accepted),
        "{accepted:?}"
    );
    let spooled = enqueued
        .try_recv()
        .expect("the task id is reported for the spool");
    // The job's own status stream says the same, in order with its statuses.
    assert_eq!(
        attached,
        HandlerEvent::Attached {
            uuid: job_uuid.clone(),
            handler: facilitator_client::spool::HandlerRecord::Celery {
                task_id: spooled.task_id.clone()
            }
        }
    );
    assert_eq!(spooled.uuid, job_uuid);
    assert_eq!(
        first.task_id(&job_uuid).as_deref(),
        Some(spooled.task_id.as_str())
    );
    // The client stops: its job's future and the handler are dropped; the task keeps running in the worker.
    running.abort();
    let _ = running.await;
    drop(first);

    // The task ends while nobody listens.
    let mut redis = env.redis().await;
    let key = format!("celery-task-meta-{}", spooled.task_id);
    let deadline = Instant::now() + LIMIT;
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .expect("EXISTS");
        if exists {
            break;
        }
        assert!(Instant::now() < deadline, "the task finished");
        sleep(Duration::from_millis(100)).await;
    }

    let second = started(config(&env, Duration::from_secs(60))).await;
    let updates = collect(&job_uuid, |statuses| {
        second.reattach(
            job,
            spooled.task_id.clone(),
            Some(spooled.enqueued_at),
            statuses,
        )
    })
    .await;
    assert_eq!(statuses(&updates), [JobStatus::Completed]);
    assert_eq!(
        updates[0]
            .metadata
            .miner_response
            .as_ref()
            .map(|r| r.docker_process_stdout.clone()),
        Some(format!("done {job_uuid}"))
    );
    assert!(
        logged("were missed"),
        "the log says the statuses in between were missed"
    );
    assert_eq!(second.stats().from_results, 1);

    // A re-attached task that is still running is followed live instead.
    let live_uuid = uuid(5, 2);
    let live_job = self::job(&live_uuid, &[("TEST_SLEEP", "1")]);
    let third = started(config(&env, Duration::from_secs(60))).await;
    let mut enqueued = third.enqueued_events();
    let (tx, mut rx) = mpsc::channel(8);
    let running = tokio::spawn(third.run(
        Arc::clone(&live_job),
        StatusSender::new(live_uuid.clone(), tx),
    ));
    let _ = timeout(LIMIT, rx.recv())
        .await
        .expect("a status")
        .expect("accepted");
    let spooled = enqueued.try_recv().expect("task id");
    running.abort();
    let _ = running.await;
    let updates = collect(&live_uuid, |statuses| {
        third.reattach(live_job, spooled.task_id, None, statuses)
    })
    .await;
    assert_eq!(
        statuses(&updates).last(),
        Some(&JobStatus::Completed),
        "{updates:?}"
    );
}

/// Both worker processes busy: a new job is reserved (prefetched) by the worker but not started before its
/// timeout; it is reported as expired unstarted, and the worker later marks the task REVOKED without running it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reserved_by_a_busy_worker_expires_unstarted() {
    let Some(services) = services("a_job_reserved_by_a_busy_worker_expires_unstarted") else {
        return;
    };
    logs();
    let mut env = Env::new(services);
    env.start_worker("organic_jobs").await;
    let normal = started(config(&env, Duration::from_secs(60))).await;
    let short = started(config(&env, Duration::from_secs(2))).await;

    let blockers: Vec<_> = (1..=2)
        .map(|n| {
            let normal = normal.clone();
            tokio::spawn(
                async move { run(&normal, job(&uuid(6, n), &[("TEST_SLEEP", "5")])).await },
            )
        })
        .collect();
    // Both processes busy (each has published `accepted`).
    let deadline = Instant::now() + LIMIT;
    while normal.stats().forwarded < 2 {
        assert!(Instant::now() < deadline, "both blockers started");
        sleep(Duration::from_millis(50)).await;
    }
    let late_uuid = uuid(6, 3);
    let late = run(&short, job(&late_uuid, &[])).await;
    assert_eq!(statuses(&late), [JobStatus::HordeFailed], "{late:?}");
    let (reason, message) = horde_failure(&late[0]);
    assert_eq!(reason, HordeFailureReason::UnhandledTimeout);
    assert!(
        message.contains("reserved it but did not start it"),
        "{message}"
    );

    for blocker in blockers {
        let updates = timeout(LIMIT, blocker)
            .await
            .expect("ends")
            .expect("no panic");
        assert_eq!(statuses(&updates), COMPLETED_RUN);
    }
    // The worker dropped the expired task without running it: REVOKED ("expired") in the result backend.
    let mut redis = env.redis().await;
    let deadline = Instant::now() + LIMIT;
    let keys: Vec<String> = loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("celery-task-meta-*")
            .query_async(&mut redis)
            .await
            .expect("KEYS");
        if keys.len() == 3 {
            break keys;
        }
        assert!(Instant::now() < deadline, "three results: {keys:?}");
        sleep(Duration::from_millis(100)).await;
    };
    let mut revoked = 0;
    for key in keys {
        let meta: String = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .expect("GET");
        if meta.contains("\"REVOKED\"") && meta.contains("expired") {
            revoked += 1;
        }
    }
    assert_eq!(revoked, 1, "the late task was revoked as expired");
}

/// The whole client (its loop and machine) with the celery handler, against the reference facilitator over loopback:
/// while Redis is down a job request is refused `busy` without `received` and nothing is queued; once Redis is
/// back jobs flow again; a verified cheat report reaches the cheated task.
#[cfg(feature = "reference")]
mod through_the_client {
    use super::*;
    use facilitator_client::machine::{BackoffConfig, Event};
    use facilitator_client::protocol::JobRejectionReason;
    use facilitator_client::protocol::keys::Hotkey;
    use facilitator_client::reference::{FacilitatorConfig, Records, ReferenceFacilitator};
    use facilitator_client::{Client, ClientConfig, MetricsHandle};

    fn client_config(facilitator: &ReferenceFacilitator) -> ClientConfig {
        let mut config = ClientConfig::new(facilitator.url());
        config.trusted_signers = vec![facilitator.signer_ss58()];
        config.machine.heartbeat_interval = Duration::from_millis(500);
        config.machine.peer_timeout = Duration::from_secs(5);
        config.machine.drain_timeout = Duration::from_secs(10);
        config.machine.backoff = BackoffConfig {
            base: Duration::from_millis(50),
            factor: 2.0,
            cap: Duration::from_millis(400),
            jitter: 0.5,
            stable_after: Duration::from_secs(1),
        };
        config
    }

    async fn wait(
        facilitator: &ReferenceFacilitator,
        what: &str,
        done: impl FnMut(&Records) -> bool,
    ) {
        facilitator
            .wait_for(done, LIMIT)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }

    async fn metrics_say(
        metrics: &MetricsHandle,
        what: &str,
        holds: impl Fn(&facilitator_client::Metrics) -> bool,
    ) {
        let deadline = Instant::now() + LIMIT;
        while !holds(&metrics.snapshot()) {
            assert!(
                Instant::now() < deadline,
                "{what}: {:?}",
                metrics.snapshot()
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    const RUN: [JobStatus; 6] = [
        JobStatus::Received,
        JobStatus::Accepted,
        JobStatus::ExecutorReady,
        JobStatus::VolumesReady,
        JobStatus::ExecutionDone,
        JobStatus::Completed,
    ];

    /// The result the cheated task stored for the report about `job_uuid`, once it has run.
    async fn cheated_task_result(env: &Env, job_uuid: &str) -> Value {
        let mut redis = env.redis().await;
        let deadline = Instant::now() + LIMIT;
        loop {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("celery-task-meta-*")
                .query_async(&mut redis)
                .await
                .expect("KEYS");
            for key in keys {
                let stored: Option<String> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut redis)
                    .await
                    .expect("GET");
                let Some(meta) = stored.and_then(|s| serde_json::from_str::<Value>(&s).ok()) else {
                    continue;
                };
                if meta["result"]["report"]["job_uuid"] == job_uuid {
                    assert_eq!(meta["status"], "SUCCESS", "{meta}");
                    return meta["result"]["report"].clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "the cheated task ran with the report"
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_down_refuses_jobs_busy_and_a_verified_cheat_report_reaches_its_task() {
        let Some(services) =
            services("redis_down_refuses_jobs_busy_and_a_verified_cheat_report_reaches_its_task")
        else {
            return;
        };
        logs();
        let mut env = Env::new(services);
        env.start_worker("organic_jobs").await;
        let handler = started(config(&env, Duration::from_secs(60))).await;
        let mut available = handler.available();
        let facilitator = ReferenceFacilitator::start(FacilitatorConfig::default())
            .await
            .expect("the reference facilitator starts");
        let client = Client::new(
            client_config(&facilitator),
            Hotkey::from_seed(&[7u8; 32]),
            Arc::new(handler.clone()),
        )
        .expect("valid client configuration");
        let metrics = client.metrics();
        let mut events = client.subscribe();
        let shutdown = client.shutdown_handle();
        let run = tokio::spawn(async move { client.run().await.expect("the client runs") });
        wait(&facilitator, "the client authenticates", |r| {
            r.authenticated_connections() == 1
        })
        .await;

        // Redis up: a job goes through the worker.
        let first = facilitator.push_job();
        wait(&facilitator, "the first job completes", |r| {
            r.job(&first).is_some_and(|j| j.is_finished())
        })
        .await;
        assert_eq!(facilitator.snapshot().statuses_of(&first), RUN);

        // Redis down: the machine hears of it, and a job is refused `busy` at once, without `received`.
        env.kill_redis();
        timeout(LIMIT, available.wait_for(|up| !*up))
            .await
            .expect("the pipeline signal goes false")
            .expect("handler alive");
        metrics_say(&metrics, "the machine knows the pipeline is down", |m| {
            !m.pipeline_available
        })
        .await;
        let enqueued = handler.stats().enqueued;
        let refused = facilitator.push_job();
        wait(&facilitator, "the refused job is answered", |r| {
            r.job(&refused).is_some_and(|j| j.is_finished())
        })
        .await;
        let records = facilitator.snapshot();
        assert_eq!(
            records.statuses_of(&refused),
            [JobStatus::Rejected],
            "no `received` first"
        );
        let answer = records
            .stored()
            .find(|u| u.uuid == refused)
            .expect("the rejection is stored");
        let details = &answer.metadata["job_rejection_details"];
        assert_eq!(
            details["reason"],
            JobRejectionReason::Busy.as_str(),
            "{details}"
        );
        assert_eq!(details["rejected_by"], "validator", "{details}");
        assert_eq!(
            handler.stats().enqueued,
            enqueued,
            "nothing queued for the refused job"
        );
        let m = metrics.snapshot();
        assert_eq!(m.counters.jobs_rejected_unavailable, 1, "{:?}", m.counters);
        assert_eq!(m.counters.pipeline_outages, 1, "{:?}", m.counters);
        assert_eq!(m.running_jobs, 0, "nothing kept for later");

        // Redis back: jobs flow again (the worker reconnects on its own).
        env.start_redis();
        timeout(LIMIT, available.wait_for(|up| *up))
            .await
            .expect("the pipeline signal comes back")
            .expect("handler alive");
        metrics_say(&metrics, "the machine knows the pipeline is back", |m| {
            m.pipeline_available
        })
        .await;
        let after = facilitator.push_job();
        wait(&facilitator, "the job after the outage completes", |r| {
            r.job(&after).is_some_and(|j| j.is_finished())
        })
        .await;
        assert_eq!(facilitator.snapshot().statuses_of(&after), RUN);

        // A verified cheat report reaches the cheated task, as one map with every key.
        let details = serde_json::json!({"why": "output differs from the trusted miner's", "n": 2});
        facilitator.push_cheated(&after, &first, details.clone());
        let report = cheated_task_result(&env, &after).await;
        assert_eq!(report["job_uuid"], after.as_str(), "{report}");
        assert_eq!(report["trusted_job_uuid"], first.as_str(), "{report}");
        assert_eq!(report["details"], details, "{report}");
        assert!(
            report["signature"].is_object(),
            "the signature goes along: {report}"
        );
        metrics_say(&metrics, "the hand-off is counted", |m| {
            m.cheat_forwarding.forwarded == 1
        })
        .await;

        shutdown.shutdown();
        let outcome = timeout(LIMIT, run)
            .await
            .expect("the client stops")
            .expect("no panic");
        assert_eq!(outcome.exit_code(), 0, "{:?}", outcome.reason);
        assert!(outcome.undelivered.is_empty(), "{:?}", outcome.undelivered);
        let c = &outcome.metrics.counters;
        assert_eq!(
            (c.jobs_accepted, c.jobs_rejected_unavailable),
            (2, 1),
            "{c:?}"
        );
        assert_eq!((c.cheat_reports, c.cheat_reports_trusted), (1, 1), "{c:?}");
        assert_eq!(outcome.metrics.cheat_forwarding.failed, 0);
        assert_eq!(handler.stats().cheat_reports, 1);

        // The event stream told of the outage and of its end, with the count refused meanwhile.
        let mut changes = Vec::new();
        while let Ok(event) = events.try_recv() {
            if let Event::PipelineChanged {
                available,
                refused_meanwhile,
            } = event
            {
                changes.push((available, refused_meanwhile));
            }
        }
        assert_eq!(changes, [(false, 0), (true, 1)]);
    }
}
