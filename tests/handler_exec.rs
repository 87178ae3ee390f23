//! The built-in job handlers, driven directly (no client loop): `echo`, and `exec:` with real `sh` processes.
//!
//! Nothing here asserts on timing except generous upper bounds for things that must end (a job, a killed process).
#![cfg(feature = "runtime")]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use facilitator_client::handler::orphans::{self, Orphans};
use facilitator_client::handler::{
    EchoHandler, ExecHandler, HandlerEvent, JobHandler, StatusSender,
};
use facilitator_client::protocol::testing::{minimal_job, signed_job_text, test_signer};
use facilitator_client::protocol::{
    HordeFailureReason, JobFailureReason, JobParticipantType, JobRequest, JobStage, JobStatus,
    JobStatusUpdate,
};
use facilitator_client::spool::HandlerRecord;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

const UUID: &str = "00000000-0000-4000-8000-00000000e0e0";

/// Upper bound for anything that must finish; far above what a loaded machine needs.
const LIMIT: Duration = Duration::from_secs(60);

fn job() -> Arc<JobRequest> {
    let text = signed_job_text(&test_signer(), UUID);
    Arc::new(JobRequest::parse(&text).expect("the test job parses"))
}

/// Runs one job to its end and returns every status it reported (after at most one `Attached`, first).
async fn run(handler: &dyn JobHandler, job: Arc<JobRequest>) -> Vec<JobStatusUpdate> {
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(handler.run(job, StatusSender::new(UUID, tx)));
    let mut updates = Vec::new();
    let mut first = true;
    // The channel closes when the handler's future ends (it owns the only sender).
    while let Some(event) = timeout(LIMIT, rx.recv()).await.expect("the job ends") {
        match event {
            HandlerEvent::Status(update) => updates.push(update),
            HandlerEvent::Attached { .. } if first => {}
            other => panic!("handlers send statuses, after at most one Attached: {other:?}"),
        }
        first = false;
    }
    timeout(LIMIT, task)
        .await
        .expect("the job ends")
        .expect("the job's task does not panic");
    assert!(updates.iter().all(|u| u.uuid == UUID), "{updates:?}");
    updates
}

async fn run_exec(command: &str) -> Vec<JobStatusUpdate> {
    run(&ExecHandler::new(command), job()).await
}

fn statuses(updates: &[JobStatusUpdate]) -> Vec<JobStatus> {
    updates.iter().map(|u| u.status).collect()
}

/// A path quoted for `sh`.
fn quoted(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

fn read_pid(path: &Path) -> libc::pid_t {
    let text = std::fs::read_to_string(path).expect("the script wrote its PID file");
    text.trim().parse().expect("a PID")
}

/// Whether `pid` is a live process. A zombie counts as gone: it runs nothing, and who reaps it (often PID 1 in a
/// container) is not the handler's business.
fn is_alive(pid: libc::pid_t) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists; no memory is involved.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

async fn assert_gone_soon(pid: libc::pid_t, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "{what} (pid {pid}) is still running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills the processes a test started when the test ends, passed or failed, so a failing test leaves nothing
/// behind.
struct Cleanup(Vec<libc::pid_t>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if pid > 1 && is_alive(pid) {
                // SAFETY: as above; `pid` is a process this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

#[tokio::test]
async fn echo_sends_accepted_then_completed_with_a_miner_response() {
    let updates = run(&EchoHandler::new(), job()).await;
    assert_eq!(
        statuses(&updates),
        [JobStatus::Accepted, JobStatus::Completed]
    );
    let response = updates[1]
        .metadata
        .miner_response
        .as_ref()
        .expect("miner_response");
    assert_eq!(response.docker_process_stdout, "");
    assert_eq!(response.docker_process_stderr, "");
    assert_eq!(
        (&response.artifacts, &response.upload_results),
        (&None, &None)
    );
}

#[tokio::test]
async fn exec_script_gets_the_exact_job_text_on_stdin_and_job_uuid_in_env() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, uuid) = (dir.path().join("in.json"), dir.path().join("uuid"));
    let command = format!(
        r#"cat > {}; printf %s "$JOB_UUID" > {}"#,
        quoted(&input),
        quoted(&uuid)
    );
    let job = job();
    let updates = run(&ExecHandler::new(command), Arc::clone(&job)).await;
    assert_eq!(statuses(&updates), [JobStatus::Completed]);
    assert_eq!(
        std::fs::read(&input).expect("stdin saved"),
        job.text().as_bytes()
    );
    assert_eq!(std::fs::read_to_string(&uuid).expect("uuid saved"), UUID);
}

#[tokio::test]
async fn exec_forwards_status_lines_in_order_with_their_metadata() {
    let updates = run_exec(
        r#"echo '{"status":"accepted"}'
           echo '{"status":"executor_ready","metadata":null}'
           echo '{"status":"streaming_ready","metadata":{"streaming_details":{"streaming_server_address":"10.0.0.1","streaming_server_port":4443}}}'
           echo '{"status":"failed","metadata":{"job_failure_details":{"reason":"timeout","stage":"execution","message":"took too long","context":{"limit":600}},"note":"kept"}}'"#,
    )
    .await;
    assert_eq!(
        statuses(&updates),
        [
            JobStatus::Accepted,
            JobStatus::ExecutorReady,
            JobStatus::StreamingReady,
            JobStatus::Failed
        ]
    );
    let streaming = updates[2]
        .metadata
        .streaming_details
        .as_ref()
        .expect("streaming_details");
    assert_eq!(
        streaming.streaming_server_address.as_deref(),
        Some("10.0.0.1")
    );
    assert_eq!(streaming.streaming_server_port, Some(4443));
    let failure = updates[3]
        .metadata
        .job_failure_details
        .as_ref()
        .expect("job_failure_details");
    assert_eq!(failure.reason, JobFailureReason::Timeout);
    assert_eq!(failure.message, "took too long");
    assert_eq!(
        failure.context.as_ref().and_then(|c| c.get("limit")),
        Some(&600.into())
    );
    assert_eq!(updates[3].metadata.extra.get("note"), Some(&"kept".into()));
    // The script printed its own terminal status: its exit code adds none.
    assert_eq!(updates[3].metadata.miner_response, None);
}

#[tokio::test]
async fn exec_does_not_forward_output_unknown_statuses_or_the_client_s_own_statuses() {
    let updates = run_exec(
        r#"echo hello
           echo '{"status":"accepted"}'
           echo '{"status":"bogus"}'
           echo '{"status":"COMPLETED"}'
           echo '{"status":"received"}'
           echo '{"status":"sent"}'
           echo '{"status":"unknown"}'
           echo '{"progress":50}'
           echo '{"status":"accepted"'
           echo world"#,
    )
    .await;
    assert_eq!(
        statuses(&updates),
        [JobStatus::Accepted, JobStatus::Completed]
    );
    let stdout = &updates[1]
        .metadata
        .miner_response
        .as_ref()
        .expect("miner_response")
        .docker_process_stdout;
    assert!(stdout.starts_with("hello\n"), "{stdout:?}");
    assert!(stdout.ends_with("world\n"), "{stdout:?}");
    assert!(stdout.contains(r#"{"progress":50}"#), "{stdout:?}");
    assert!(
        !stdout.contains(r#"{"status":"accepted"}"#),
        "forwarded lines are not output: {stdout:?}"
    );
}

#[tokio::test]
async fn exec_exit_zero_without_a_terminal_status_reports_completed_with_the_output() {
    let updates = run_exec("echo out-1; echo err-1 >&2; echo out-2").await;
    assert_eq!(statuses(&updates), [JobStatus::Completed]);
    let response = updates[0]
        .metadata
        .miner_response
        .as_ref()
        .expect("miner_response");
    assert_eq!(response.docker_process_stdout, "out-1\nout-2\n");
    assert_eq!(response.docker_process_stderr, "err-1\n");
    assert_eq!(
        (&response.artifacts, &response.upload_results),
        (&None, &None)
    );
}

#[tokio::test]
async fn exec_nonzero_exit_reports_failed_with_the_exit_code() {
    let updates =
        run_exec(r#"echo '{"status":"accepted"}'; echo partial; echo oops >&2; exit 3"#).await;
    assert_eq!(statuses(&updates), [JobStatus::Accepted, JobStatus::Failed]);
    let failure = updates[1]
        .metadata
        .job_failure_details
        .as_ref()
        .expect("job_failure_details");
    assert_eq!(failure.reason, JobFailureReason::NonzeroReturnCode);
    assert_eq!(failure.stage, JobStage::Execution);
    assert_eq!(failure.docker_process_exit_status, Some(3));
    assert!(failure.message.contains("code 3"), "{}", failure.message);
    assert_eq!(failure.docker_process_stdout.as_deref(), Some("partial\n"));
    assert_eq!(failure.docker_process_stderr.as_deref(), Some("oops\n"));
}

#[tokio::test]
async fn exec_shell_killed_by_a_signal_reports_failed_without_an_exit_code() {
    let updates = run_exec("kill -9 $$").await;
    assert_eq!(statuses(&updates), [JobStatus::Failed]);
    let failure = updates[0]
        .metadata
        .job_failure_details
        .as_ref()
        .expect("job_failure_details");
    assert_eq!(failure.reason, JobFailureReason::NonzeroReturnCode);
    assert_eq!(failure.docker_process_exit_status, None);
    assert!(failure.message.contains("SIGKILL"), "{}", failure.message);
}

#[tokio::test]
async fn exec_printed_completed_is_the_only_terminal_status() {
    let updates = run_exec(
        r#"echo before; echo '{"status":"completed"}'; echo '{"status":"failed"}'; exit 1"#,
    )
    .await;
    assert_eq!(statuses(&updates), [JobStatus::Completed]);
    // Printed without miner_response: filled with the output captured up to that line.
    let response = updates[0]
        .metadata
        .miner_response
        .as_ref()
        .expect("miner_response filled in");
    assert_eq!(response.docker_process_stdout, "before\n");
}

#[tokio::test]
async fn exec_printed_completed_keeps_its_own_miner_response() {
    let updates = run_exec(
        r#"echo noise; echo '{"status":"completed","metadata":{"miner_response":{"docker_process_stdout":"mine","docker_process_stderr":"","artifacts":{"a.txt":"aGk="}}}}'"#,
    )
    .await;
    assert_eq!(statuses(&updates), [JobStatus::Completed]);
    let response = updates[0]
        .metadata
        .miner_response
        .as_ref()
        .expect("miner_response");
    assert_eq!(response.docker_process_stdout, "mine");
    assert_eq!(
        response.artifacts.as_ref().and_then(|a| a.get("a.txt")),
        Some(&"aGk=".into())
    );
}

#[tokio::test]
async fn exec_malformed_metadata_sends_the_status_with_what_could_be_kept() {
    let updates = run_exec(
        r#"echo '{"status":"failed","metadata":{"job_failure_details":{"reason":"timeout"},"horde_failure_details":{"reported_by":"miner","reason":"generic_error","message":"m"}}}'
           echo '{"status":"completed","metadata":"not an object"}'"#,
    )
    .await;
    assert_eq!(statuses(&updates), [JobStatus::Failed]);
    let metadata = &updates[0].metadata;
    assert_eq!(
        metadata.job_failure_details, None,
        "dropped: no stage or message"
    );
    let horde = metadata.horde_failure_details.as_ref().expect("kept");
    assert_eq!(horde.reported_by, JobParticipantType::Miner);

    let updates = run_exec(r#"echo '{"status":"completed","metadata":"not an object"}'"#).await;
    assert_eq!(statuses(&updates), [JobStatus::Completed]);
    assert!(
        updates[0].metadata.miner_response.is_some(),
        "completed always has a miner_response"
    );
}

#[tokio::test]
async fn exec_command_that_cannot_start_reports_horde_failed() {
    let handler = ExecHandler::new("true").with_shell("/nonexistent/facilitator-client-test-shell");
    let updates = run(&handler, job()).await;
    assert_eq!(statuses(&updates), [JobStatus::HordeFailed]);
    let failure = updates[0]
        .metadata
        .horde_failure_details
        .as_ref()
        .expect("horde_failure_details");
    assert_eq!(failure.reported_by, JobParticipantType::Validator);
    assert_eq!(failure.reason, HordeFailureReason::GenericError);
    assert!(
        failure.message.contains("could not start"),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn exec_dropping_the_job_kills_its_process_group_including_grandchildren() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (shell_pid, grandchild_pid) = (dir.path().join("shell"), dir.path().join("grandchild"));
    let command = format!(
        r#"echo $$ > {}; sleep 1000 & echo $! > {}; echo '{{"status":"accepted"}}'; wait"#,
        quoted(&shell_pid),
        quoted(&grandchild_pid)
    );
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(ExecHandler::new(command).run(job(), StatusSender::new(UUID, tx)));
    let attached = timeout(LIMIT, rx.recv()).await.expect("the script starts");
    assert!(
        matches!(&attached, Some(HandlerEvent::Attached { .. })),
        "{attached:?}"
    );
    let first = timeout(LIMIT, rx.recv()).await.expect("the script runs");
    assert!(
        matches!(&first, Some(HandlerEvent::Status(u)) if u.status == JobStatus::Accepted),
        "{first:?}"
    );
    // The PID files were written before `accepted` was printed.
    let (shell, grandchild) = (read_pid(&shell_pid), read_pid(&grandchild_pid));
    let _cleanup = Cleanup(vec![shell, grandchild]);
    assert!(
        is_alive(shell) && is_alive(grandchild),
        "the job is running"
    );

    task.abort();
    assert!(
        task.await.is_err_and(|e| e.is_cancelled()),
        "the future was dropped"
    );
    assert_gone_soon(shell, "the job's shell").await;
    assert_gone_soon(grandchild, "the shell's background child").await;
}

#[tokio::test]
async fn exec_stops_and_kills_the_command_when_the_client_has_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (shell_pid, child_pid) = (dir.path().join("shell"), dir.path().join("child"));
    let command = format!(
        r#"echo $$ > {}; sleep 1000 & echo $! > {}; echo '{{"status":"accepted"}}'; wait"#,
        quoted(&shell_pid),
        quoted(&child_pid)
    );
    let (tx, mut rx) = mpsc::channel(16);
    let handler = ExecHandler::new(command);
    let task = tokio::spawn(handler.run(job(), StatusSender::new(UUID, tx)));
    // The client takes where the job runs, then stops: the job's `accepted` cannot be handed over.
    let attached = timeout(LIMIT, rx.recv()).await.expect("the script starts");
    assert!(
        matches!(attached, Some(HandlerEvent::Attached { .. })),
        "{attached:?}"
    );
    drop(rx);
    timeout(LIMIT, task)
        .await
        .expect("the handler returns once its status cannot be handed over")
        .expect("no panic");
    let (shell, child) = (read_pid(&shell_pid), read_pid(&child_pid));
    let _cleanup = Cleanup(vec![shell, child]);
    assert_gone_soon(shell, "the job's shell").await;
    assert_gone_soon(child, "the shell's background child").await;
}

#[tokio::test]
async fn exec_background_processes_left_behind_are_killed_and_do_not_hold_the_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grandchild_pid = dir.path().join("grandchild");
    // The background loop inherits stdout and stderr and keeps writing: waiting for their end, or for it to go
    // quiet, would wait forever.
    let command = format!(
        "(while :; do echo tick >&2; sleep 0.1; done) & echo $! > {}; echo done",
        quoted(&grandchild_pid)
    );
    let updates = run_exec(&command).await;
    assert_eq!(statuses(&updates), [JobStatus::Completed]);
    let response = updates[0]
        .metadata
        .miner_response
        .as_ref()
        .expect("miner_response");
    assert_eq!(response.docker_process_stdout, "done\n");
    let grandchild = read_pid(&grandchild_pid);
    let _cleanup = Cleanup(vec![grandchild]);
    assert_gone_soon(grandchild, "the background loop").await;
}

#[tokio::test]
async fn exec_a_process_that_left_the_group_cannot_hold_the_job_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let escaped_pid = dir.path().join("escaped");
    // `setsid` puts a process in a new session, out of reach of the group kill, still holding stdout and stderr
    // (for 1000 s: the job ending at all shows that the handler stopped waiting for them). The script waits
    // until the escape has happened, so the group kill at its exit cannot win the race.
    let command = format!(
        "setsid sh -c 'echo $$ > {pid}; exec sleep 1000' & \
         while [ ! -s {pid} ]; do sleep 0.01; done; echo done",
        pid = quoted(&escaped_pid)
    );
    let updates = run_exec(&command).await;
    let escaped = read_pid(&escaped_pid);
    // The escaped process is outside the handler's reach by design; the test cleans it up.
    let _cleanup = Cleanup(vec![escaped]);
    assert!(
        is_alive(escaped),
        "the escaped process ran through the whole job"
    );
    assert_eq!(statuses(&updates), [JobStatus::Completed]);
    let response = updates[0]
        .metadata
        .miner_response
        .as_ref()
        .expect("miner_response");
    assert_eq!(response.docker_process_stdout, "done\n");
}

#[tokio::test]
async fn exec_a_megabyte_on_stderr_does_not_deadlock_and_is_truncated() {
    let handler = ExecHandler::new("head -c 1048576 /dev/zero | tr '\\0' x >&2; echo done");
    let updates = run(&handler, job()).await;
    assert_eq!(statuses(&updates), [JobStatus::Completed]);
    let response = updates[0]
        .metadata
        .miner_response
        .as_ref()
        .expect("miner_response");
    assert_eq!(response.docker_process_stdout, "done\n");
    let stderr = &response.docker_process_stderr;
    let kept = 64 * 1024;
    assert!(stderr.len() < kept + 200, "capped: {} bytes", stderr.len());
    assert!(
        stderr.contains(&format!("{} bytes left out", 1_048_576 - kept)),
        "notes the truncation"
    );
    assert_eq!(stderr.chars().filter(|&c| c == 'x').count(), kept);
}

#[tokio::test]
async fn exec_a_large_job_the_script_never_reads_does_not_deadlock() {
    let mut fields = minimal_job(UUID);
    fields.env.insert("BIG", "y".repeat(1 << 20));
    let job = Arc::new(JobRequest::from_fields(fields));
    // Writes more than a pipe holds to stdout without ever reading stdin, then exits without reading it.
    let handler = ExecHandler::new(
        "head -c 1048576 /dev/zero | tr '\\0' z; echo; echo '{\"status\":\"accepted\"}'",
    );
    let updates = run(&handler, job).await;
    assert_eq!(
        statuses(&updates),
        [JobStatus::Accepted, JobStatus::Completed]
    );
    let stdout = &updates[1]
        .metadata
        .miner_response
        .as_ref()
        .expect("miner_response")
        .docker_process_stdout;
    assert!(
        stdout.starts_with("zzzz") && stdout.contains("bytes left out"),
        "{} bytes",
        stdout.len()
    );
}

#[tokio::test]
async fn exec_small_max_output_caps_what_is_kept() {
    let handler = ExecHandler::new("echo 0123456789abcdefghij").with_max_output(8);
    let updates = run(&handler, job()).await;
    let response = updates[0]
        .metadata
        .miner_response
        .as_ref()
        .expect("miner_response");
    assert_eq!(
        response.docker_process_stdout,
        "0123\n[facilitator-client: output truncated, 13 bytes left out]\nhij\n"
    );
}

#[tokio::test]
async fn exec_reports_its_process_group_and_start_time_before_any_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("shell");
    let command = format!(
        r#"echo $$ > {}; echo '{{"status":"accepted"}}'; read line"#,
        quoted(&pid_file)
    );
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(ExecHandler::new(command).run(job(), StatusSender::new(UUID, tx)));
    let attached = timeout(LIMIT, rx.recv()).await.expect("the script starts");
    let accepted = timeout(LIMIT, rx.recv()).await.expect("the script runs");
    assert!(
        matches!(&accepted, Some(HandlerEvent::Status(u)) if u.status == JobStatus::Accepted),
        "{accepted:?}"
    );
    let shell = read_pid(&pid_file);
    let _cleanup = Cleanup(vec![shell]);
    let stat = std::fs::read_to_string(format!("/proc/{shell}/stat")).expect("the shell runs");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let start_time: u64 = fields[22 - 3].parse().unwrap();
    assert_eq!(
        attached,
        Some(HandlerEvent::Attached {
            uuid: UUID.to_owned(),
            handler: HandlerRecord::Exec {
                pgid: shell,
                start_time,
            },
        }),
        "the group is the shell's, with the shell's start time"
    );
    task.abort();
    assert_gone_soon(shell, "the job's shell").await;
}

/// Run by `the_job_s_shell_dies_with_the_client_process` in a child process: runs one `exec:` job whose shell
/// writes its PID to `$EXEC_PID_FILE` and loops, until this process is killed.
#[test]
#[ignore = "a helper run in a child process"]
fn child_runs_a_long_exec_job() {
    let Some(pid_file) = std::env::var_os("EXEC_PID_FILE") else {
        return;
    };
    let command = format!(
        "echo $$ > {}; while :; do sleep 0.2; done",
        quoted(Path::new(&pid_file))
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (tx, mut rx) = mpsc::channel(16);
        let _job = tokio::spawn(ExecHandler::new(command).run(job(), StatusSender::new(UUID, tx)));
        while rx.recv().await.is_some() {}
    });
}

#[test]
fn the_job_s_shell_dies_with_the_client_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("shell");
    let mut client = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_runs_a_long_exec_job",
            "--nocapture",
        ])
        .env("EXEC_PID_FILE", &pid_file)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the helper starts");
    let deadline = std::time::Instant::now() + LIMIT;
    while !std::fs::read_to_string(&pid_file).is_ok_and(|t| t.ends_with('\n')) {
        assert!(
            std::time::Instant::now() < deadline,
            "the job's shell started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let shell = read_pid(&pid_file);
    let _cleanup = Cleanup(vec![shell]);
    assert!(is_alive(shell), "the job's shell runs");
    // SIGKILL: no drop guard, no cleanup of any kind runs in the client.
    client.kill().unwrap();
    client.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while is_alive(shell) {
        assert!(
            std::time::Instant::now() < deadline,
            "the job's shell (pid {shell}) outlived its client by 10 s: no parent-death signal"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `sh -c script` in its own process group (as the `exec:` handler does) and returns it with its pid and
/// start time.
fn group_leader(script: &str) -> (std::process::Child, i32, u64) {
    use std::os::unix::process::CommandExt;
    let child = std::process::Command::new("sh")
        .args(["-c", script])
        .process_group(0)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sh starts");
    let pid = child.id() as i32;
    let start = orphans::proc_stat(pid).expect("the leader runs").start_time;
    (child, pid, start)
}

/// The pids a script printed, one a line, until `count`.
fn printed_pids(child: &mut std::process::Child, count: usize) -> Vec<libc::pid_t> {
    use std::io::BufRead;
    let out = child.stdout.take().expect("piped");
    let mut lines = std::io::BufReader::new(out).lines();
    (0..count)
        .map(|_| {
            lines
                .next()
                .expect("a line")
                .expect("readable")
                .trim()
                .parse()
                .expect("a pid")
        })
        .collect()
}

#[tokio::test]
async fn recovery_kills_a_spooled_process_group_and_spares_a_reused_pid() {
    let (mut leader, pgid, start_time) =
        group_leader("sleep 1000 & echo $!; sleep 1000 & echo $!; wait");
    let children = printed_pids(&mut leader, 2);
    let mut all = children.clone();
    all.push(pgid);
    let _cleanup = Cleanup(all.clone());

    // Another start time: a process that merely reuses the pid. Nothing is signalled.
    assert_eq!(
        orphans::kill_orphaned_group(pgid, start_time + 1).unwrap(),
        Orphans::PidReused
    );
    assert!(all.iter().all(|&pid| is_alive(pid)), "nothing was killed");

    assert_eq!(
        orphans::kill_orphaned_group(pgid, start_time).unwrap(),
        Orphans::Killed { processes: 3 }
    );
    leader.wait().expect("the leader is reaped");
    for pid in children {
        assert_gone_soon(pid, "a process of the spooled group").await;
    }
    assert_eq!(
        orphans::kill_orphaned_group(pgid, start_time).unwrap(),
        Orphans::Gone
    );
}

#[tokio::test]
async fn recovery_kills_what_a_dead_shell_left_in_its_group_when_it_fits_the_record() {
    // The shell exits (as the parent-death signal makes it) and leaves a child in its group. It waits for its stdin
    // to close first: one that exits at once may be gone before `group_leader` reads its start time.
    let (mut leader, pgid, start_time) = group_leader("sleep 1000 & echo $!; read _");
    let orphan = printed_pids(&mut leader, 1)[0];
    let _cleanup = Cleanup(vec![orphan]);
    drop(leader.stdin.take());
    leader.wait().expect("the shell exits");
    assert!(is_alive(orphan), "its child lives on in the group");

    // A record whose leader started after the orphan cannot be this group's: left alone.
    let later = orphans::proc_stat(orphan).unwrap().start_time + 1;
    assert_eq!(
        orphans::kill_orphaned_group(pgid, later).unwrap(),
        Orphans::NotTheJobs
    );
    assert!(is_alive(orphan));

    assert_eq!(
        orphans::kill_orphaned_group(pgid, start_time).unwrap(),
        Orphans::Killed { processes: 1 }
    );
    assert_gone_soon(orphan, "the dead shell's child").await;
}
