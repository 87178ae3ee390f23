//! The program driven as a subprocess, as an operator or another tool would: the command-line contract, the exit
//! codes and the messages.
#![cfg(feature = "runtime")]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use facilitator_client::protocol::{JobRequest, JobStatus};
use facilitator_client::reference::{
    AuthRejection, FacilitatorConfig, Faults, JobPlan, ReferenceFacilitator, RejectAuth, Times,
};

const BIN: &str = env!("CARGO_BIN_EXE_facilitator-client");
const SEED: &str = "0x0707070707070707070707070707070707070707070707070707070707070707";
const GUARD: Duration = Duration::from_secs(30);

fn program() -> Command {
    let mut command = Command::new(BIN);
    command
        .env_remove("RUST_LOG")
        .env_remove("FACILITATOR_HOTKEY_SEED")
        .env("HOME", "/nonexistent-home")
        // The default spool goes under the test's own directory, never the user's state directory.
        .env("XDG_STATE_HOME", state_home());
    command
}

/// Where the program's default spools go in these tests: under Cargo's directory for test files.
fn state_home() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-state")
}

/// Runs the program to completion (with a guard) and returns (exit code, stdout, stderr).
fn run_to_end(command: &mut Command) -> (i32, String, String) {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the program starts");
    let output = wait_with_guard(child);
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn wait_with_guard(child: Child) -> std::process::Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(GUARD) {
        Ok(output) => output.expect("the program's output is readable"),
        Err(_) => {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("the program did not exit within {GUARD:?}");
        }
    }
}

fn sigint(child: &Child) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
}

/// Reads a child's stderr lines on a thread.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; returns every line read so far.
fn wait_for_line(lines: &mpsc::Receiver<String>, seen: &mut Vec<String>, needle: &str) -> String {
    let deadline = Instant::now() + GUARD;
    loop {
        if let Some(line) = seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no line containing {needle:?}; got:\n{}", seen.join("\n")),
        }
    }
}

#[test]
fn demo_exits_zero_and_loses_nothing() {
    let (code, stdout, stderr) = run_to_end(program().arg("demo"));
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["lost", "0"]),
        "{stdout}"
    );
    assert!(stdout.contains("reconnects    1"), "{stdout}");
    assert!(
        stdout.contains("Running -> Disconnected"),
        "the demo shows the reconnect:\n{stdout}"
    );
    assert!(
        !stdout.contains('\x1b'),
        "no colours when stdout is not a terminal"
    );
}

#[test]
fn help_explains_every_run_flag_and_exits_zero() {
    let (code, stdout, _) = run_to_end(program().args(["run", "--help"]));
    assert_eq!(code, 0);
    for flag in [
        "--url",
        "--handler",
        "--trusted-signer",
        "--heartbeat-interval",
        "--drain-timeout",
        "--max-running-jobs",
        "--wallet-path",
        "--wallet-name",
        "--hotkey-name",
        "--config",
        "--spool",
        "--no-spool",
    ] {
        assert!(stdout.contains(flag), "--help lacks {flag}:\n{stdout}");
    }
}

fn usage_error(args: &[&str], env: &[(&str, &str)], expected: &str) {
    let mut command = program();
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let (code, stdout, stderr) = run_to_end(&mut command);
    assert_eq!(code, 2, "{args:?}: stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains(expected),
        "{args:?}: stderr lacks {expected:?}:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
}

#[test]
fn usage_and_configuration_errors_exit_2_with_one_clear_line() {
    let url = ["run", "--url", "ws://127.0.0.1:9/ws/v0/"];
    usage_error(&["run", "--no-such-flag"], &[], "--no-such-flag");
    usage_error(
        &["run"],
        &[("FACILITATOR_HOTKEY_SEED", SEED)],
        "no facilitator URL",
    );
    usage_error(
        &["run", "--url", "http://example.com/"],
        &[("FACILITATOR_HOTKEY_SEED", SEED)],
        "ws:// or wss://",
    );
    usage_error(
        &["run", "--url", "not a url"],
        &[("FACILITATOR_HOTKEY_SEED", SEED)],
        "invalid facilitator URL",
    );
    usage_error(
        &url,
        &[("FACILITATOR_HOTKEY_SEED", "0x1234")],
        "FACILITATOR_HOTKEY_SEED",
    );
    usage_error(&url, &[], "default wallet");
    usage_error(
        &[
            &url[..],
            &[
                "--wallet-path",
                "/nonexistent",
                "--wallet-name",
                "w",
                "--hotkey-name",
                "h",
            ],
        ]
        .concat(),
        &[],
        "/nonexistent/w/hotkeys/h",
    );
    usage_error(
        &[&url[..], &["--heartbeat-interval", "soon"]].concat(),
        &[("FACILITATOR_HOTKEY_SEED", SEED)],
        "--heartbeat-interval",
    );
    usage_error(
        &[&url[..], &["--drain-timeout", "-1"]].concat(),
        &[("FACILITATOR_HOTKEY_SEED", SEED)],
        "--drain-timeout",
    );
    for bad in ["0", "-1", "1.5", "abc", ""] {
        usage_error(
            &[&url[..], &["--max-running-jobs", bad]].concat(),
            &[("FACILITATOR_HOTKEY_SEED", SEED)],
            "--max-running-jobs must be a whole number",
        );
    }
    usage_error(
        &[&url[..], &["--handler", "bogus"]].concat(),
        &[("FACILITATOR_HOTKEY_SEED", SEED)],
        "--handler",
    );
    usage_error(
        &[&url[..], &["--trusted-signer", "not-an-address"]].concat(),
        &[("FACILITATOR_HOTKEY_SEED", SEED)],
        "not-an-address",
    );
    usage_error(
        &["run", "--config", "/nonexistent.toml"],
        &[("FACILITATOR_HOTKEY_SEED", SEED)],
        "/nonexistent.toml",
    );
    // The Celery hand-off needs its broker and its task; its flags belong to it.
    let seed = ("FACILITATOR_HOTKEY_SEED", SEED);
    let broker = ("FACILITATOR_CELERY_BROKER", "redis://:secret@127.0.0.1:1/0");
    usage_error(
        &[&url[..], &["--handler", "celery"]].concat(),
        &[seed, broker],
        "--celery-task",
    );
    usage_error(
        &[&url[..], &["--handler", "celery", "--celery-task", "t"]].concat(),
        &[seed],
        "--celery-broker",
    );
    usage_error(
        &[&url[..], &["--celery-task", "t"]].concat(),
        &[seed],
        "only for --handler celery",
    );
    usage_error(
        &[
            &url[..],
            &[
                "--handler",
                "celery",
                "--celery-task",
                "t",
                "--celery-job-timeout",
                "0",
            ],
        ]
        .concat(),
        &[seed, broker],
        "--celery-job-timeout",
    );
    usage_error(
        &[
            &url[..],
            &[
                "--handler",
                "celery",
                "--celery-task",
                "t",
                "--celery-broker",
                "http://x",
            ],
        ]
        .concat(),
        &[seed],
        "redis://",
    );
    usage_error(
        &["serve", "--tls-cert", "/nonexistent.pem"],
        &[],
        "--tls-cert and --tls-key go together",
    );
}

#[test]
fn a_config_file_sets_what_flags_can_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "url = \"ws://127.0.0.1:9/ws/v0/\"\nheartbeat_interval = 20\nno_such_key = 1\n",
    )
    .unwrap();
    usage_error(
        &["run", "--config", bad.to_str().unwrap()],
        &[("FACILITATOR_HOTKEY_SEED", SEED)],
        "no_such_key",
    );
    // A file whose heartbeat would be invalid, overridden by a valid flag: the flag wins, so it gets as far as
    // the URL check of the file's url (which is bad), proving both were read.
    let file = dir.path().join("client.toml");
    std::fs::write(&file, "url = \"http://wrong/\"\nheartbeat_interval = 0\n").unwrap();
    usage_error(
        &[
            "run",
            "--config",
            file.to_str().unwrap(),
            "--heartbeat-interval",
            "5",
        ],
        &[("FACILITATOR_HOTKEY_SEED", SEED)],
        "ws:// or wss://",
    );
    usage_error(
        &[
            "run",
            "--config",
            file.to_str().unwrap(),
            "--url",
            "ws://127.0.0.1:9/ws/v0/",
        ],
        &[("FACILITATOR_HOTKEY_SEED", SEED)],
        "heartbeat",
    );
    // A wrong type names the file (the TOML library's message does not name the key).
    for (text, expected) in [
        (
            "max_running_jobs = 0\n",
            "max_running_jobs must be at least 1",
        ),
        ("max_running_jobs = -1\n", "bounded.toml is not valid"),
        ("max_running_jobs = 2.5\n", "bounded.toml is not valid"),
    ] {
        let bounded = dir.path().join("bounded.toml");
        std::fs::write(
            &bounded,
            format!("url = \"ws://127.0.0.1:9/ws/v0/\"\n{text}"),
        )
        .unwrap();
        usage_error(
            &["run", "--config", bounded.to_str().unwrap()],
            &[("FACILITATOR_HOTKEY_SEED", SEED)],
            expected,
        );
    }
}

fn job_script(dir: &std::path::Path) -> PathBuf {
    let script = dir.join("job.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncat > \"$JOB_DIR/$JOB_UUID.json\"\nenv > \"$JOB_DIR/$JOB_UUID.env\"\n\
         echo '{\"status\":\"accepted\"}'\necho \"working on $JOB_UUID\"\n\
         echo '{\"status\":\"executor_ready\"}'\nexit 0\n",
    )
    .unwrap();
    script
}

#[test]
fn run_processes_jobs_through_an_exec_script_and_exits_zero_on_sigint() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let facilitator = runtime
        .block_on(ReferenceFacilitator::start(FacilitatorConfig {
            jobs: JobPlan::count(3),
            ..Default::default()
        }))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = job_script(dir.path());
    let child = program()
        .args([
            "run",
            "--url",
            &facilitator.url(),
            "--trusted-signer",
            &facilitator.signer_ss58(),
        ])
        .args([
            "--handler",
            &format!("exec:sh {}", script.display()),
            "--heartbeat-interval",
            "0.5",
        ])
        .env("FACILITATOR_HOTKEY_SEED", SEED)
        .env("FACILITATOR_CELERY_BROKER", "redis://:secret@127.0.0.1:1/0")
        .env("JOB_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let records = runtime
        .block_on(facilitator.wait_for(|r| r.finished_jobs() == 3, GUARD))
        .unwrap_or_else(|e| panic!("{e}"));
    for job in &records.jobs {
        assert_eq!(
            records.statuses_of(&job.uuid),
            [
                JobStatus::Received,
                JobStatus::Accepted,
                JobStatus::ExecutorReady,
                JobStatus::Completed
            ]
        );
        // The script got the job request as the facilitator wrote it (Python-style separators, signature intact).
        let stdin = std::fs::read_to_string(dir.path().join(format!("{}.json", job.uuid))).unwrap();
        assert!(
            stdin.starts_with("{\"signature\": {\"signature_type\": \"bittensor\""),
            "{stdin}"
        );
        let request = JobRequest::parse(&stdin).unwrap();
        assert_eq!(request.uuid(), job.uuid);
        assert!(
            request.verify_signature().is_ok(),
            "the text on stdin still verifies"
        );
        // Job commands run other people's work: the hotkey seed must not reach them.
        let env = std::fs::read_to_string(dir.path().join(format!("{}.env", job.uuid))).unwrap();
        assert!(env.contains(&format!("JOB_UUID={}", job.uuid)), "{env}");
        assert!(!env.contains("FACILITATOR_HOTKEY_SEED"), "{env}");
        assert!(!env.contains("FACILITATOR_CELERY_BROKER"), "{env}");
        assert!(
            !env.contains(&SEED[2..]),
            "the seed is in a job's environment"
        );
    }
    sigint(&child);
    let output = wait_with_guard(child);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("Running -> Draining"), "{stderr}");
}

#[test]
fn a_rejected_hotkey_exits_1_with_a_clear_message() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let faults = Faults {
        reject_auth: Some(RejectAuth {
            with: AuthRejection::SignatureInvalid,
            attempts: Times::Always,
        }),
        ..Faults::none()
    };
    let facilitator = runtime
        .block_on(ReferenceFacilitator::start(FacilitatorConfig {
            faults,
            ..Default::default()
        }))
        .unwrap();
    let (code, _, stderr) = run_to_end(
        program()
            .args(["run", "--url", &facilitator.url()])
            .env("FACILITATOR_HOTKEY_SEED", SEED),
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("rejected this hotkey's signature"),
        "{stderr}"
    );
}

#[test]
fn serve_and_run_work_together_and_a_second_sigint_forces_the_stop() {
    let mut serve = program()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--jobs",
            "2",
            "--job-interval",
            "0",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let serve_lines = stderr_lines(&mut serve);
    let mut seen = Vec::new();
    let line = wait_for_line(&serve_lines, &mut seen, "serving at ");
    let url = line
        .split("serving at ")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let signer = line
        .split("signed by ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    // A job that never ends, so the drain has something to wait for.
    let script = dir.path().join("slow.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho '{\"status\":\"accepted\"}'\nexec sleep 600\n",
    )
    .unwrap();
    let mut run = program()
        .args([
            "run",
            "--url",
            &url,
            "--trusted-signer",
            &signer,
            "--drain-timeout",
            "60",
        ])
        .args(["--handler", &format!("exec:sh {}", script.display())])
        .env("FACILITATOR_HOTKEY_SEED", SEED)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let run_lines = stderr_lines(&mut run);
    let mut run_seen = Vec::new();
    wait_for_line(&run_lines, &mut run_seen, "Connecting -> Running");
    // Both jobs accepted by the client.
    while run_seen.iter().filter(|l| l.contains(" accepted")).count() < 2 {
        run_seen.push(run_lines.recv_timeout(GUARD).expect("both jobs accepted"));
    }
    sigint(&run);
    wait_for_line(&run_lines, &mut run_seen, "Running -> Draining");
    let started = Instant::now();
    sigint(&run);
    let status = wait_with_guard(run).status;
    assert_eq!(status.code(), Some(130));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "forced stop took {:?}",
        started.elapsed()
    );
    sigint(&serve);
    assert_eq!(wait_with_guard(serve).status.code(), Some(0));
}

/// A plain HTTP/1.1 GET on loopback; returns (status line, headers and body).
fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("the metrics listener accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("the request is written");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("the response is read");
    let (status, rest) = response.split_once("\r\n").unwrap_or((&response, ""));
    (status.to_owned(), rest.to_owned())
}

#[test]
fn json_logs_and_the_metrics_listener_of_a_real_run() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let facilitator = runtime
        .block_on(ReferenceFacilitator::start(FacilitatorConfig {
            jobs: JobPlan::count(3),
            ..Default::default()
        }))
        .unwrap();
    let mut child = program()
        .args(["run", "--url", &facilitator.url()])
        .args(["--trusted-signer", &facilitator.signer_ss58()])
        .args(["--log-format", "json", "--metrics-listen", "127.0.0.1:0"])
        .env("FACILITATOR_HOTKEY_SEED", SEED)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stderr_lines(&mut child);
    let mut seen = Vec::new();
    let serving = wait_for_line(&lines, &mut seen, "serving /metrics");
    let serving: serde_json::Value = serde_json::from_str(&serving).expect("a JSON log line");
    let addr = serving["msg"]
        .as_str()
        .and_then(|m| m.rsplit("http://").next())
        .expect("the address in the message")
        .to_owned();
    runtime
        .block_on(facilitator.wait_for(|r| r.finished_jobs() == 3, GUARD))
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for_line(&lines, &mut seen, "-> Running");

    let (status, body) = http_get(&addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(
        body.contains("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{body}"
    );
    assert!(
        body.contains("validator_facilitator_client_transport_layer_state 1"),
        "{body}"
    );
    assert!(
        body.contains("facilitator_client_jobs_total{outcome=\"accepted\"} 3"),
        "{body}"
    );
    let (status, body) = http_get(&addr, "/healthz");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let health: serde_json::Value =
        serde_json::from_str(body.rsplit("\r\n\r\n").next().unwrap_or("")).expect("JSON health");
    assert_eq!(health["state"], "Running", "{health}");

    sigint(&child);
    let output = wait_with_guard(child);
    assert_eq!(output.status.code(), Some(0));
    seen.extend(lines.try_iter());
    // Every line is one JSON object with the fixed keys; state changes and job lines carry their fields; the
    // seed is nowhere.
    for line in &seen {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        for key in ["ts", "level", "target", "msg"] {
            assert!(value.get(key).is_some(), "no {key} in {line}");
        }
        assert!(!line.contains(&SEED[2..]), "the seed in a log line");
    }
    let change = seen
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["to"] == "Running")
        .expect("a state change to Running");
    assert_eq!(change["from"], "Connecting", "{change}");
    assert!(
        change["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("authenticated"))
    );
    assert!(
        seen.iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .any(|v| v["job_uuid"].as_str().is_some()
                && v["msg"].as_str().is_some_and(|m| m.ends_with("accepted"))),
        "no job line with job_uuid"
    );
    runtime.block_on(facilitator.shutdown());
}

/// Starts `run` with these extra arguments (and environment) against `url`, stderr piped.
fn spawn_run(
    url: &str,
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> (Child, mpsc::Receiver<String>) {
    let mut command = program();
    command
        .args(["run", "--url", url])
        .args(args)
        .env("FACILITATOR_HOTKEY_SEED", SEED)
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("the program starts");
    let lines = stderr_lines(&mut child);
    (child, lines)
}

/// Interrupts the program and returns its exit code and the rest of its stderr.
fn interrupt(child: Child, lines: &mpsc::Receiver<String>, seen: &mut Vec<String>) -> Option<i32> {
    sigint(&child);
    let code = wait_with_guard(child).status.code();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        seen.push(line);
    }
    code
}

/// A URL nothing listens on: the client keeps retrying, which is all these tests need.
const NOWHERE: &str = "ws://127.0.0.1:9/ws/v0/";

#[test]
fn the_default_spool_is_one_owner_only_file_under_the_state_directory() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let facilitator = runtime
        .block_on(ReferenceFacilitator::start(FacilitatorConfig {
            jobs: JobPlan::count(3),
            ..Default::default()
        }))
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let (child, lines) = spawn_run(
        &facilitator.url(),
        &["--trusted-signer", &facilitator.signer_ss58()],
        &[("XDG_STATE_HOME", state.path().as_os_str())],
    );
    let mut seen = Vec::new();
    let line = wait_for_line(&lines, &mut seen, "spool: ");
    let dir = state.path().join("facilitator-client");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the spool's directory was created")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "spool"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_str().unwrap().to_owned();
    let ss58 = facilitator_client::protocol::keys::Hotkey::from_seed(&[7u8; 32]).ss58();
    assert!(name.starts_with(&format!("{ss58}-")), "{name}");
    assert!(
        line.contains(&files[0].display().to_string()),
        "the path is logged: {line}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(&files[0]), mode(&dir)), (0o600, 0o700));
    wait_for_line(
        &lines,
        &mut seen,
        "recovered 0 unacknowledged status update(s) and 0 job(s)",
    );
    runtime
        .block_on(facilitator.wait_for(|r| r.finished_jobs() == 3, GUARD))
        .unwrap_or_else(|e| panic!("{e}"));
    let code = interrupt(child, &lines, &mut seen);
    assert_eq!(code, Some(0), "{}", seen.join("\n"));
    let last = seen
        .iter()
        .rev()
        .find(|l| l.contains("stopped ("))
        .expect("a final line");
    assert!(
        last.contains("spool up to date (0 status update(s) and 0 job(s)"),
        "{last}"
    );
}

#[test]
fn a_second_program_on_the_same_spool_exits_2_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("shared.spool");
    let spool_arg = spool.to_str().unwrap();
    let (first, lines) = spawn_run(NOWHERE, &["--spool", spool_arg], &[]);
    let mut seen = Vec::new();
    wait_for_line(&lines, &mut seen, "Disconnected -> Connecting");
    let (code, _, stderr) = run_to_end(
        program()
            .args(["run", "--url", NOWHERE, "--spool", spool_arg])
            .env("FACILITATOR_HOTKEY_SEED", SEED),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("in use by process {}", first.id()))
            && stderr.contains("shared.spool.lock"),
        "{stderr}"
    );
    assert_eq!(interrupt(first, &lines, &mut seen), Some(0));
}

#[test]
fn an_explicit_spool_that_cannot_be_opened_is_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let spool = file.join("x.spool");
    let (code, _, stderr) = run_to_end(
        program()
            .args(["run", "--url", NOWHERE, "--spool", spool.to_str().unwrap()])
            .env("FACILITATOR_HOTKEY_SEED", SEED),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    // The same from the configuration file.
    let config = dir.path().join("client.toml");
    std::fs::write(
        &config,
        format!("spool = {:?}\n", spool.display().to_string()),
    )
    .unwrap();
    let (code, _, stderr) = run_to_end(
        program()
            .args([
                "run",
                "--url",
                NOWHERE,
                "--config",
                config.to_str().unwrap(),
            ])
            .env("FACILITATOR_HOTKEY_SEED", SEED),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
}

#[test]
fn a_default_location_that_cannot_be_created_means_running_from_memory_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    // A state "directory" that is a file: nothing can be created under it, whoever runs the test.
    let not_a_dir = dir.path().join("state");
    std::fs::write(&not_a_dir, "").unwrap();
    let (child, lines) = spawn_run(NOWHERE, &[], &[("XDG_STATE_HOME", not_a_dir.as_os_str())]);
    let mut seen = Vec::new();
    let warning = wait_for_line(&lines, &mut seen, "no spool:");
    assert!(warning.contains("a crash"), "{warning}");
    wait_for_line(&lines, &mut seen, "Disconnected -> Connecting");
    assert_eq!(interrupt(child, &lines, &mut seen), Some(0));
}

#[test]
fn no_spool_and_spool_false_run_from_memory_with_a_warning_and_spool_in_the_file_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let (child, lines) = spawn_run(NOWHERE, &["--no-spool"], &[]);
    let mut seen = Vec::new();
    wait_for_line(&lines, &mut seen, "--no-spool: no spool:");
    // Signals are handled once the run has started.
    wait_for_line(&lines, &mut seen, "Disconnected -> Connecting");
    assert_eq!(interrupt(child, &lines, &mut seen), Some(0));

    let off = dir.path().join("off.toml");
    std::fs::write(&off, "spool = false\n").unwrap();
    let (child, lines) = spawn_run(NOWHERE, &["--config", off.to_str().unwrap()], &[]);
    let mut seen = Vec::new();
    wait_for_line(&lines, &mut seen, "spool = false: no spool:");
    wait_for_line(&lines, &mut seen, "Disconnected -> Connecting");
    assert_eq!(interrupt(child, &lines, &mut seen), Some(0));

    let spool = dir.path().join("from-file.spool");
    let on = dir.path().join("on.toml");
    std::fs::write(&on, format!("spool = {:?}\n", spool.display().to_string())).unwrap();
    let (child, lines) = spawn_run(NOWHERE, &["--config", on.to_str().unwrap()], &[]);
    let mut seen = Vec::new();
    wait_for_line(&lines, &mut seen, &format!("spool: {}", spool.display()));
    wait_for_line(&lines, &mut seen, "Disconnected -> Connecting");
    assert_eq!(interrupt(child, &lines, &mut seen), Some(0));
    assert!(spool.is_file());

    // --spool and --no-spool together make no sense.
    let (code, _, stderr) = run_to_end(
        program()
            .args(["run", "--url", NOWHERE, "--no-spool", "--spool", "x.spool"])
            .env("FACILITATOR_HOTKEY_SEED", SEED),
    );
    assert_eq!(code, 2, "{stderr}");
}
