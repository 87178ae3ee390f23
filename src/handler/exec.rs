//! The `exec:` job handler: runs `sh -c COMMAND` for each job and turns the lines it prints into status updates.
//!
//! Owns: the job's processes (the shell in its own process group, the job request's exact JSON text on its stdin,
//! `JOB_UUID` in its environment), reading its stdout as status lines, capturing its output (capped), and the job's
//! final status from the way the shell exited.
//!
//! Must never: leave one of the job's processes running once the job's future is dropped or the shell has exited
//! (a drop guard kills the whole process group); block on one pipe while another fills (stdin, stdout and stderr
//! are served concurrently in one `select!`); forward `received`, `sent`, `unknown` or anything after the job's
//! first terminal status; panic or give up silently on anything the process does; log the job's text at info
//! level.
//!
//! When the client itself dies (`kill -9`, the OOM killer), no drop guard runs: the shell gets the parent-death
//! signal (SIGKILL, Linux), and the job's process group and its leader's start time are reported
//! ([`crate::handler::StatusSender::attached`]) so that, with the spool, the next start kills what the signal did
//! not reach (the shell's own children: see [`crate::handler::orphans`]).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process_group};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::time::Instant;

use crate::protocol::{
    DEFAULT_FRAME_LIMIT, HordeFailureReason, JobFailureDetails, JobFailureReason, JobRequest,
    JobResultDetails, JobStage, JobStatus, JobStatusMetadata, JobStatusUpdate,
};
use crate::spool::HandlerRecord;

use super::{BoxFuture, ClientStopped, JobHandler, StatusSender};

/// How much of each of stdout and stderr a job's result keeps by default: 64 KiB.
pub(super) const DEFAULT_MAX_OUTPUT: usize = 64 * 1024;

/// The longest stdout line that is still read as a status line: one frame's worth (a longer status could never
/// be sent). Longer lines are output.
const MAX_STATUS_LINE: usize = DEFAULT_FRAME_LIMIT;

/// After the shell has exited (and its process group was killed), how long its pipes may stay silent before they
/// are abandoned. Only a process that left the group (e.g. through `setsid`) can keep them open that long.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Runs each job as `sh -c COMMAND` and reports what the command prints.
///
/// For each job:
///
/// - The shell starts in its own process group (so a terminal's Ctrl-C reaches only the client), with the job
///   request's JSON text exactly as received on stdin (then stdin is closed; a command that does not read it is
///   fine) and `JOB_UUID` in its environment.
/// - Every stdout line that is a JSON object with a known `status`, like `{"status":"accepted"}` or
///   `{"status":"failed","metadata":{...}}`, becomes a status update, in order. Other lines are output (logged at
///   debug level). A `status` that is not a known value, and `received` (the client sends it itself), `sent` and
///   `unknown`, are logged as warnings and not forwarded; so is every status line after the first terminal one.
/// - **Malformed metadata**: the status is still sent, with every metadata key that parsed on its own; each key
///   that did not parse is dropped with a warning (unknown keys are kept as they are), and metadata that is not an
///   object (or `null`) is replaced by empty metadata.
/// - A printed `completed` without `miner_response` (or whose `miner_response` was dropped as malformed) gets one
///   holding the output captured up to that line.
/// - When the shell exits, anything still running in its process group is killed: a job's processes do not
///   outlive it. If no terminal status was printed, exit code 0 gives `completed` (with `miner_response` holding
///   the captured output), anything else `failed` with `job_failure_details` (`nonzero_return_code`, stage
///   `execution`, the exit code, or null when a signal killed the shell, and the captured output).
/// - A shell that cannot be started gives `horde_failed` (`reported_by: validator`, `generic_error`).
/// - Captured output is stdout's lines that were not forwarded as statuses, and stderr; each keeps its first and
///   last halves of 64 KiB (or [`ExecHandler::with_max_output`]) with a note of how much was left
///   out between them.
///
/// Dropping the job's future kills the whole process group (SIGKILL), grandchildren included.
///
/// ```
/// use facilitator_client::handler::{ExecHandler, JobHandler};
/// let handler = ExecHandler::new(r#"echo '{"status":"accepted"}'; ./run-job.sh"#.to_owned());
/// assert_eq!(handler.name(), "exec");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecHandler {
    command: String,
    shell: PathBuf,
    max_output: usize,
}

impl ExecHandler {
    /// Runs `sh -c command` for each job.
    pub fn new(command: impl Into<String>) -> Self {
        ExecHandler {
            command: command.into(),
            shell: PathBuf::from("sh"),
            max_output: DEFAULT_MAX_OUTPUT,
        }
    }

    /// Uses `shell` (looked up in `PATH` when it has no `/`) instead of `sh`; it is run as `shell -c command`.
    pub fn with_shell(mut self, shell: impl Into<PathBuf>) -> Self {
        self.shell = shell.into();
        self
    }

    /// Keeps at most about `bytes` of each of stdout and stderr in a job's result (default
    /// 64 KiB).
    pub fn with_max_output(mut self, bytes: usize) -> Self {
        self.max_output = bytes;
        self
    }

    /// The shell command run for each job.
    pub fn command(&self) -> &str {
        &self.command
    }

    fn spawn(&self, uuid: &str) -> io::Result<Child> {
        let mut command = Command::new(&self.shell);
        command
            .arg("-c")
            .arg(&self.command)
            .env("JOB_UUID", uuid)
            // Jobs run other people's work: the validator's secrets stay with the client.
            .env_remove(crate::protocol::keys::SEED_ENV_VAR)
            .env_remove(super::CELERY_BROKER_ENV_VAR)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group: a terminal's Ctrl-C (sent to the foreground group) reaches only the client, which
            // decides; and the whole job can be killed at once through the group.
            .process_group(0)
            .kill_on_drop(true);
        die_with_the_client(&mut command);
        command.spawn()
    }

    async fn run_job(self, job: Arc<JobRequest>, statuses: StatusSender) {
        let uuid = job.uuid();
        let mut child = match self.spawn(uuid) {
            Ok(child) => child,
            Err(e) => {
                let message = format!(
                    "could not start the job's command ({} -c {:?}): {e}",
                    self.shell.display(),
                    self.command
                );
                log::warn!("job {uuid}: {message}");
                let update = JobStatusUpdate::horde_failed(
                    uuid,
                    HordeFailureReason::GenericError,
                    message,
                    None,
                );
                let _ = statuses.send(update).await;
                return;
            }
        };
        // Created before any await: from here on, dropping this future kills the whole group.
        let mut group = ProcessGroupGuard::of(&child);
        log::info!(
            "job {uuid}: started `{} -c {}` (pid {})",
            self.shell.display(),
            self.command,
            child
                .id()
                .map_or_else(|| "unknown".to_owned(), |id| id.to_string())
        );
        // Where a restarted client finds the job's processes if this one dies before they end. The start time tells
        // them from a process that reuses the pid later. (Reading /proc/<pid>/stat does no disk I/O.)
        if let Some(pid) = child.id()
            && let (Ok(pgid), Some(start_time)) =
                (i32::try_from(pid), super::orphans::start_time_of(pid))
            && statuses
                .attached(HandlerRecord::Exec { pgid, start_time })
                .await
                .is_err()
        {
            log::info!("job {uuid}: the client has stopped; killing the job's command");
            return; // `group` and `child` kill everything on drop.
        }
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            // Cannot happen (all three are piped), but a missing pipe is reported, not unwrapped.
            let message = "the job's command started without its stdin/stdout/stderr pipes";
            log::warn!("job {uuid}: {message}");
            group.kill();
            let update = JobStatusUpdate::horde_failed(
                uuid,
                HordeFailureReason::GenericError,
                message,
                None,
            );
            let _ = statuses.send(update).await;
            return;
        };

        let mut run = JobRun {
            uuid,
            statuses: &statuses,
            out: Capture::new(self.max_output),
            err: Capture::new(self.max_output),
            pending: None,
            terminal: None,
        };
        let exit = match run
            .drive(&mut child, &mut group, &job, stdin, stdout, stderr)
            .await
        {
            Ok(exit) => exit,
            Err(ClientStopped { .. }) => {
                log::info!("job {uuid}: the client has stopped; killing the job's command");
                return; // `group` and `child` kill everything on drop.
            }
        };

        let final_update = match (&exit, run.terminal) {
            (Ok(status), terminal) => {
                log::info!("job {uuid}: the job's command {}", describe_exit(*status));
                match terminal {
                    Some(terminal) => {
                        log::debug!(
                            "job {uuid}: already reported `{terminal}`; the exit adds no status"
                        );
                        None
                    }
                    None if status.success() => Some(run.completed()),
                    None => Some(run.failed(*status)),
                }
            }
            (Err(e), Some(_)) => {
                log::warn!("job {uuid}: could not wait for the job's command: {e}");
                None
            }
            (Err(e), None) => {
                let message = format!("could not wait for the job's command: {e}");
                log::warn!("job {uuid}: {message}");
                Some(JobStatusUpdate::horde_failed(
                    uuid,
                    HordeFailureReason::GenericError,
                    message,
                    None,
                ))
            }
        };
        if let Some(update) = final_update
            && statuses.send(update).await.is_err()
        {
            log::info!(
                "job {uuid}: the client has stopped; the job's final status was not handed over"
            );
        }
    }
}

impl JobHandler for ExecHandler {
    fn run(&self, job: Arc<JobRequest>, statuses: StatusSender) -> BoxFuture {
        Box::pin(self.clone().run_job(job, statuses))
    }

    fn name(&self) -> String {
        "exec".to_owned()
    }
}

/// A status update on its way through the (backpressured) status channel.
type PendingSend = Pin<Box<dyn Future<Output = Result<(), ClientStopped>> + Send>>;

/// One job's run: what was captured and which status is being sent.
struct JobRun<'a> {
    uuid: &'a str,
    statuses: &'a StatusSender,
    out: Capture,
    err: Capture,
    /// At most one status in flight to the channel; stdout is not read meanwhile, so statuses keep their order
    /// and the command feels the backpressure on its stdout (stderr and stdin keep flowing).
    pending: Option<PendingSend>,
    /// The first terminal status forwarded; later status lines are ignored.
    terminal: Option<JobStatus>,
}

impl JobRun<'_> {
    /// Serves the command's pipes until it has exited and its output is read, forwarding status lines as they
    /// come. Returns how it exited (or why that could not be known), or `ClientStopped`.
    async fn drive(
        &mut self,
        child: &mut Child,
        group: &mut ProcessGroupGuard,
        job: &JobRequest,
        stdin: ChildStdin,
        stdout: impl AsyncRead + Unpin,
        mut stderr: impl AsyncRead + Unpin,
    ) -> Result<Result<ExitStatus, String>, ClientStopped> {
        let text = job.text().as_bytes();
        let mut stdin = (!text.is_empty()).then_some(stdin);
        let mut written = 0;
        let mut stdout = LineReader::new(stdout, MAX_STATUS_LINE);
        let mut stdout_open = true;
        let mut stderr_open = true;
        let mut stderr_buf = vec![0u8; 8 * 1024];
        let mut exit: Option<Result<ExitStatus, String>> = None;
        let drain = tokio::time::sleep(DRAIN_GRACE);
        tokio::pin!(drain);

        loop {
            if let Some(exit) = &exit
                && !stdout_open
                && !stderr_open
                && self.pending.is_none()
            {
                return Ok(exit.clone());
            }
            // Every branch is cancel-safe: a pending send is kept in `self.pending`, a partial stdout line in
            // `stdout`, `read`/`write` lose no data when another branch wins, and `Child::wait` may be re-polled.
            tokio::select! {
                biased;
                sent = poll_pending(&mut self.pending), if self.pending.is_some() => {
                    self.pending = None;
                    sent?;
                    if exit.is_some() {
                        drain.as_mut().reset(Instant::now() + DRAIN_GRACE);
                    }
                }
                piece = stdout.next_piece(), if stdout_open && self.pending.is_none() => match piece {
                    Ok(Some(piece)) => {
                        self.on_stdout(piece);
                        if exit.is_some() {
                            drain.as_mut().reset(Instant::now() + DRAIN_GRACE);
                        }
                    }
                    Ok(None) => stdout_open = false,
                    Err(e) => {
                        log::warn!("job {}: reading the command's stdout failed: {e}", self.uuid);
                        stdout_open = false;
                    }
                },
                read = stderr.read(&mut stderr_buf), if stderr_open => match read {
                    Ok(0) => stderr_open = false,
                    Ok(n) => {
                        self.err.push(stderr_buf.get(..n).unwrap_or_default());
                        if exit.is_some() {
                            drain.as_mut().reset(Instant::now() + DRAIN_GRACE);
                        }
                    }
                    Err(e) => {
                        log::warn!("job {}: reading the command's stderr failed: {e}", self.uuid);
                        stderr_open = false;
                    }
                },
                wrote = write_some(&mut stdin, text.get(written..).unwrap_or_default()), if stdin.is_some() => {
                    match wrote {
                        Ok(n) => {
                            written += n;
                            if written >= text.len() || n == 0 {
                                stdin = None; // closes the command's stdin
                            }
                        }
                        Err(e) => {
                            // The command exited or closed stdin without reading it all: its business.
                            log::debug!("job {}: the command did not read all of its stdin: {e}", self.uuid);
                            stdin = None;
                        }
                    }
                }
                status = child.wait(), if exit.is_none() => {
                    // Whatever the shell left running in its group goes with it; this also closes the pipes they
                    // held, so the reads above reach their end.
                    group.kill();
                    stdin = None;
                    exit = Some(status.map_err(|e| e.to_string()));
                    drain.as_mut().reset(Instant::now() + DRAIN_GRACE);
                }
                () = &mut drain, if exit.is_some() && self.pending.is_none() => {
                    log::warn!(
                        "job {}: the command's output stayed open {DRAIN_GRACE:?} after it exited (a process \
                         outside its process group holds it); not reading it further",
                        self.uuid
                    );
                    stdout_open = false;
                    stderr_open = false;
                }
                else => {
                    // Unreachable by the guards above (one of wait/pending/drain is always enabled); ending the
                    // loop is still better than select!'s panic.
                    return Ok(exit.take().unwrap_or_else(|| Err("the job's command was lost".to_owned())));
                }
            }
        }
    }

    /// A piece of stdout: a status to forward, or output to capture.
    fn on_stdout(&mut self, piece: Piece) {
        let uuid = self.uuid;
        let line = if piece.whole_line {
            parse_status_line(&piece.bytes)
        } else {
            StatusLine::Output
        };
        let (status, metadata, dropped) = match line {
            StatusLine::Output => {
                if log::log_enabled!(log::Level::Debug) {
                    log::debug!("job {uuid}: stdout: {}", for_log(&piece.bytes));
                }
                self.out.push(&piece.bytes);
                return;
            }
            StatusLine::Unknown(status) => {
                log::warn!("job {uuid}: ignoring a status line with unknown status {status}");
                self.out.push(&piece.bytes);
                return;
            }
            StatusLine::Status {
                status,
                metadata,
                dropped,
            } => (status, metadata, dropped),
        };
        let ignored = match (status, self.terminal) {
            (JobStatus::Received, _) => Some("the client sends `received` itself"),
            (JobStatus::Sent, _) => Some("`sent` is the facilitator's own status"),
            (JobStatus::Unknown, _) => Some("`unknown` is not a status to report"),
            (_, Some(_)) => Some("the job already reported a terminal status"),
            _ => None,
        };
        if let Some(why) = ignored {
            log::warn!("job {uuid}: ignoring a printed `{status}` status: {why}");
            self.out.push(&piece.bytes);
            return;
        }
        for problem in &dropped {
            log::warn!("job {uuid}: `{status}` sent without a malformed metadata key: {problem}");
        }
        let mut update = JobStatusUpdate {
            uuid: uuid.to_owned(),
            status,
            metadata,
        };
        if status == JobStatus::Completed && update.metadata.miner_response.is_none() {
            update.metadata.miner_response = Some(self.miner_response());
        }
        if status.is_terminal() {
            self.terminal = Some(status);
        }
        log::debug!("job {uuid}: forwarding `{status}`");
        let statuses = self.statuses.clone();
        self.pending = Some(Box::pin(async move { statuses.send(update).await }));
    }

    fn miner_response(&self) -> JobResultDetails {
        JobResultDetails {
            docker_process_stdout: self.out.text(),
            docker_process_stderr: self.err.text(),
            ..JobResultDetails::default()
        }
    }

    /// `completed` for a command that exited 0 without reporting a terminal status.
    fn completed(&self) -> JobStatusUpdate {
        let mut update = JobStatusUpdate::new(self.uuid, JobStatus::Completed);
        update.metadata.miner_response = Some(self.miner_response());
        update
    }

    /// `failed` for a command that exited otherwise without reporting a terminal status.
    fn failed(&self, status: ExitStatus) -> JobStatusUpdate {
        let mut update = JobStatusUpdate::new(self.uuid, JobStatus::Failed);
        update.metadata.job_failure_details = Some(JobFailureDetails {
            reason: JobFailureReason::NonzeroReturnCode,
            stage: JobStage::Execution,
            message: format!("the job's command {}", describe_exit(status)),
            context: None,
            docker_process_exit_status: status.code().map(i64::from),
            docker_process_stdout: Some(self.out.text()),
            docker_process_stderr: Some(self.err.text()),
        });
        update
    }
}

async fn poll_pending(pending: &mut Option<PendingSend>) -> Result<(), ClientStopped> {
    match pending {
        Some(send) => send.await,
        None => std::future::pending().await,
    }
}

async fn write_some(stdin: &mut Option<ChildStdin>, bytes: &[u8]) -> io::Result<usize> {
    match stdin {
        Some(stdin) => stdin.write(bytes).await,
        None => std::future::pending().await,
    }
}

/// Kills the job's whole process group (SIGKILL) when dropped, or earlier through [`ProcessGroupGuard::kill`],
/// at most once.
///
/// The group is the shell's PID (it was started with `process_group(0)`). Killing it after the shell was reaped is
/// safe while any member is alive (the kernel does not reuse an ID still in use as a group ID); once the group is
/// empty the ID could in principle be reused, but only after the PID space wrapped around in between, which is why
/// the guard kills at most once.
/// Makes the job's shell receive SIGKILL when the client dies, whatever kills the client (Linux's parent-death
/// signal; the shell is the group's leader). It is not inherited by the shell's children: a client restarted with
/// the spool kills those ([`crate::handler::orphans`]). The signal follows the *thread* that spawned the shell:
/// tokio spawns from a runtime thread, which lives as long as the runtime.
fn die_with_the_client(command: &mut Command) {
    let parent = rustix::process::getpid();
    let setup = move || -> io::Result<()> {
        rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
        // The client may have died between the fork and the line above: then no signal would ever come.
        if rustix::process::getppid() != Some(parent) {
            return Err(io::Error::from_raw_os_error(
                rustix::io::Errno::SRCH.raw_os_error(),
            ));
        }
        Ok(())
    };
    // SAFETY: `pre_exec` runs the closure in the forked child before `exec`, where only async-signal-safe code may
    // run. The closure makes two raw system calls through rustix (prctl(PR_SET_PDEATHSIG), getppid), which take no
    // lock and allocate nothing, and builds its error from a raw errno (no allocation either). It captures only a
    // `Pid` (plain data).
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(setup);
    }
}

struct ProcessGroupGuard {
    pgid: Option<Pid>,
}

impl ProcessGroupGuard {
    fn of(child: &Child) -> Self {
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            // Never 0 or 1: kill(0) is our own group and kill(-1) every process we may signal.
            .filter(|&pid| pid > 1)
            .and_then(Pid::from_raw);
        ProcessGroupGuard { pgid }
    }

    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // `pgid` > 1, so this addresses exactly the job's process group.
            if let Err(e) = kill_process_group(pgid, Signal::KILL) {
                // ESRCH: the group is already empty, the usual case after a clean exit.
                log::trace!("kill(-{}, SIGKILL): {e}", pgid.as_raw_nonzero());
            }
        }
    }
}

impl Drop for ProcessGroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a whole stdout line is.
#[derive(Debug, PartialEq)]
enum StatusLine {
    /// Not a JSON object with a `status`: output.
    Output,
    /// A JSON object whose `status` is not a known status (shown as JSON, briefly).
    Unknown(String),
    /// A known status, with the metadata that could be kept and a note for every metadata key that was dropped.
    Status {
        status: JobStatus,
        metadata: Box<JobStatusMetadata>,
        dropped: Vec<String>,
    },
}

fn parse_status_line(line: &[u8]) -> StatusLine {
    let trimmed = line.trim_ascii();
    if trimmed.first() != Some(&b'{') {
        return StatusLine::Output;
    }
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(trimmed) else {
        return StatusLine::Output;
    };
    let status = match object.get("status") {
        None => return StatusLine::Output,
        Some(Value::String(text)) => JobStatus::from_wire(text),
        Some(_) => None,
    };
    let Some(status) = status else {
        let shown = object
            .get("status")
            .map(Value::to_string)
            .unwrap_or_default();
        return StatusLine::Unknown(truncate_for_log(&shown));
    };
    let (metadata, dropped) = lenient_metadata(object.remove("metadata"));
    StatusLine::Status {
        status,
        metadata: Box::new(metadata),
        dropped,
    }
}

/// The metadata of a status line, keeping every key that parses (see [`ExecHandler`]).
fn lenient_metadata(value: Option<Value>) -> (JobStatusMetadata, Vec<String>) {
    let map = match value {
        None | Some(Value::Null) => return (JobStatusMetadata::default(), Vec::new()),
        Some(Value::Object(map)) => map,
        Some(other) => {
            let kind = match other {
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                _ => "an array",
            };
            let problem =
                format!("metadata: expected an object, found {kind}; sent empty metadata");
            return (JobStatusMetadata::default(), vec![problem]);
        }
    };
    let whole = Value::Object(map);
    if let Ok(metadata) = JobStatusMetadata::deserialize(&whole) {
        return (metadata, Vec::new());
    }
    let Value::Object(map) = whole else {
        return (JobStatusMetadata::default(), Vec::new()); // never: `whole` was built as an object above
    };
    let mut metadata = JobStatusMetadata::default();
    let mut dropped = Vec::new();
    for (key, value) in map {
        match key.as_str() {
            "miner_response" => keep(&mut metadata.miner_response, &key, value, &mut dropped),
            "job_rejection_details" => keep(
                &mut metadata.job_rejection_details,
                &key,
                value,
                &mut dropped,
            ),
            "job_failure_details" => {
                keep(&mut metadata.job_failure_details, &key, value, &mut dropped)
            }
            "horde_failure_details" => keep(
                &mut metadata.horde_failure_details,
                &key,
                value,
                &mut dropped,
            ),
            "streaming_details" => keep(&mut metadata.streaming_details, &key, value, &mut dropped),
            _ => {
                metadata.extra.insert(key, value);
            }
        }
    }
    (metadata, dropped)
}

fn keep<T: DeserializeOwned>(
    slot: &mut Option<T>,
    key: &str,
    value: Value,
    dropped: &mut Vec<String>,
) {
    match serde_json::from_value::<Option<T>>(value) {
        Ok(parsed) => *slot = parsed,
        Err(e) => dropped.push(format!("{key}: {e}")),
    }
}

/// A piece of stdout: a whole line (with its `\n`, if any), or part of a line too long to be a status line.
#[derive(Debug, PartialEq)]
struct Piece {
    bytes: Vec<u8>,
    whole_line: bool,
}

/// Splits a stream into lines of at most `max` bytes; longer lines come out in pieces that are not whole lines.
struct LineReader<R> {
    reader: BufReader<R>,
    line: Vec<u8>,
    max: usize,
    inside_long_line: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(reader: R, max: usize) -> Self {
        LineReader {
            reader: BufReader::new(reader),
            line: Vec::new(),
            max: max.max(1),
            inside_long_line: false,
        }
    }

    /// The next piece, or `None` at the end. Cancel-safe: a partial line stays in `self.line`.
    async fn next_piece(&mut self) -> io::Result<Option<Piece>> {
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                return Ok((!self.line.is_empty()).then(|| self.take_line()));
            }
            let room = self.max - self.line.len();
            match available.iter().position(|&b| b == b'\n') {
                Some(newline) if newline < room => {
                    self.line.extend_from_slice(&available[..=newline]);
                    self.reader.consume(newline + 1);
                    return Ok(Some(self.take_line()));
                }
                _ => {
                    let n = room.min(available.len());
                    self.line.extend_from_slice(&available[..n]);
                    self.reader.consume(n);
                    if self.line.len() >= self.max {
                        self.inside_long_line = true;
                        return Ok(Some(Piece {
                            bytes: std::mem::take(&mut self.line),
                            whole_line: false,
                        }));
                    }
                }
            }
        }
    }

    fn take_line(&mut self) -> Piece {
        let whole_line = !self.inside_long_line;
        self.inside_long_line = false;
        Piece {
            bytes: std::mem::take(&mut self.line),
            whole_line,
        }
    }
}

/// Output kept for a job's result: the first and the last half of `limit` bytes, and how much was left out.
#[derive(Debug)]
struct Capture {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    head_limit: usize,
    tail_limit: usize,
    omitted: u64,
}

impl Capture {
    fn new(limit: usize) -> Self {
        let head_limit = limit / 2;
        Capture {
            head: Vec::new(),
            tail: VecDeque::new(),
            head_limit,
            tail_limit: limit - head_limit,
            omitted: 0,
        }
    }

    fn push(&mut self, data: &[u8]) {
        let to_head = (self.head_limit - self.head.len()).min(data.len());
        let (head, rest) = data.split_at(to_head);
        self.head.extend_from_slice(head);
        if rest.len() >= self.tail_limit {
            let (gone, kept) = rest.split_at(rest.len() - self.tail_limit);
            self.omitted += (self.tail.len() + gone.len()) as u64;
            self.tail.clear();
            self.tail.extend(kept);
        } else {
            let overflow = (self.tail.len() + rest.len()).saturating_sub(self.tail_limit);
            self.tail.drain(..overflow);
            self.omitted += overflow as u64;
            self.tail.extend(rest);
        }
    }

    /// The kept output as text (invalid UTF-8 replaced), with a note where output was left out.
    fn text(&self) -> String {
        let mut bytes = self.head.clone();
        if self.omitted == 0 {
            bytes.extend(&self.tail);
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        let _ = write!(
            text,
            "\n[facilitator-client: output truncated, {} bytes left out]\n",
            self.omitted
        );
        bytes.clear();
        bytes.extend(&self.tail);
        text.push_str(&String::from_utf8_lossy(&bytes));
        text
    }
}

/// "exited with code 3", "was killed by signal 9 (SIGKILL)".
fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    match status.signal() {
        Some(signal) => match signal_name(signal) {
            Some(name) => format!("was killed by signal {signal} ({name})"),
            None => format!("was killed by signal {signal}"),
        },
        None => format!("ended with {status}"),
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    const NAMES: [(Signal, &str); 17] = [
        (Signal::HUP, "SIGHUP"),
        (Signal::INT, "SIGINT"),
        (Signal::QUIT, "SIGQUIT"),
        (Signal::ILL, "SIGILL"),
        (Signal::TRAP, "SIGTRAP"),
        (Signal::ABORT, "SIGABRT"),
        (Signal::BUS, "SIGBUS"),
        (Signal::FPE, "SIGFPE"),
        (Signal::KILL, "SIGKILL"),
        (Signal::USR1, "SIGUSR1"),
        (Signal::SEGV, "SIGSEGV"),
        (Signal::USR2, "SIGUSR2"),
        (Signal::PIPE, "SIGPIPE"),
        (Signal::ALARM, "SIGALRM"),
        (Signal::TERM, "SIGTERM"),
        (Signal::XCPU, "SIGXCPU"),
        (Signal::XFSZ, "SIGXFSZ"),
    ];
    NAMES
        .iter()
        .find(|(s, _)| s.as_raw() == signal)
        .map(|(_, name)| *name)
}

/// A line of output for a log: lossy UTF-8, without its line end, at most 500 characters.
fn for_log(bytes: &[u8]) -> String {
    truncate_for_log(String::from_utf8_lossy(bytes).trim_end_matches(['\n', '\r']))
}

fn truncate_for_log(text: &str) -> String {
    const MAX_CHARS: usize = 500;
    match text.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => format!("{}… ({} bytes)", &text[..end], text.len()),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{JobFailureReason, JobParticipantType};

    fn status_of(line: &str) -> StatusLine {
        parse_status_line(line.as_bytes())
    }

    #[test]
    fn status_lines_are_json_objects_with_a_known_status() {
        let StatusLine::Status {
            status, dropped, ..
        } = status_of("  {\"status\":\"accepted\"}\r\n")
        else {
            panic!("not a status line")
        };
        assert_eq!((status, dropped), (JobStatus::Accepted, Vec::new()));
        assert_eq!(status_of("accepted"), StatusLine::Output);
        assert_eq!(status_of("{\"state\":\"accepted\"}"), StatusLine::Output);
        assert_eq!(status_of("[{\"status\":\"accepted\"}]"), StatusLine::Output);
        assert_eq!(status_of("{\"status\":\"accepted\""), StatusLine::Output);
        assert_eq!(
            status_of("{\"status\":\"ACCEPTED\"}"),
            StatusLine::Unknown("\"ACCEPTED\"".to_owned())
        );
        assert_eq!(
            status_of("{\"status\":7}"),
            StatusLine::Unknown("7".to_owned())
        );
    }

    #[test]
    fn well_formed_metadata_is_kept_whole() {
        let line = r#"{"status":"failed","metadata":{"job_failure_details":{"reason":"timeout","stage":"execution","message":"slow"},"note":1}}"#;
        let StatusLine::Status {
            metadata, dropped, ..
        } = status_of(line)
        else {
            panic!("not a status line")
        };
        assert!(dropped.is_empty(), "{dropped:?}");
        let details = metadata.job_failure_details.expect("failure details kept");
        assert_eq!(details.reason, JobFailureReason::Timeout);
        assert_eq!(metadata.extra.get("note"), Some(&Value::from(1)));
    }

    #[test]
    fn malformed_metadata_keys_are_dropped_and_the_rest_kept() {
        let line = r#"{"status":"horde_failed","metadata":{"job_failure_details":{"reason":"timeout"},"horde_failure_details":{"reported_by":"miner","reason":"generic_error","message":"m"},"x":[1]}}"#;
        let StatusLine::Status {
            metadata, dropped, ..
        } = status_of(line)
        else {
            panic!("not a status line")
        };
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        assert!(
            dropped[0].starts_with("job_failure_details: "),
            "{dropped:?}"
        );
        assert_eq!(metadata.job_failure_details, None);
        let horde = metadata.horde_failure_details.expect("kept");
        assert_eq!(horde.reported_by, JobParticipantType::Miner);
        assert_eq!(metadata.extra.get("x"), Some(&serde_json::json!([1])));
    }

    #[test]
    fn metadata_that_is_not_an_object_becomes_empty() {
        for (line, problems) in [
            (r#"{"status":"accepted","metadata":null}"#, 0),
            (r#"{"status":"accepted"}"#, 0),
            (r#"{"status":"accepted","metadata":"x"}"#, 1),
            (r#"{"status":"accepted","metadata":[]}"#, 1),
        ] {
            let StatusLine::Status {
                metadata, dropped, ..
            } = status_of(line)
            else {
                panic!("not a status line: {line}")
            };
            assert_eq!(*metadata, JobStatusMetadata::default(), "{line}");
            assert_eq!(dropped.len(), problems, "{line}: {dropped:?}");
        }
    }

    #[test]
    fn capture_keeps_everything_under_the_limit() {
        let mut capture = Capture::new(16);
        capture.push(b"hello ");
        capture.push("wörld".as_bytes());
        assert_eq!(capture.text(), "hello wörld");
    }

    #[test]
    fn capture_keeps_head_and_tail_and_counts_what_it_left_out() {
        let mut capture = Capture::new(8);
        for chunk in [&b"0123"[..], b"456789", b"ab", b"cdefghij"] {
            capture.push(chunk);
        }
        // 20 bytes: head "0123", tail "ghij", 12 left out.
        assert_eq!(
            capture.text(),
            "0123\n[facilitator-client: output truncated, 12 bytes left out]\nghij"
        );
        let mut one_big = Capture::new(8);
        one_big.push(b"0123456789abcdefghij");
        assert_eq!(one_big.text(), capture.text());
    }

    #[test]
    fn capture_with_no_room_keeps_only_the_count() {
        let mut capture = Capture::new(0);
        capture.push(b"abc");
        assert_eq!(
            capture.text(),
            "\n[facilitator-client: output truncated, 3 bytes left out]\n"
        );
    }

    async fn pieces(input: &[u8], max: usize) -> Vec<(String, bool)> {
        let mut reader = LineReader::new(input, max);
        let mut pieces = Vec::new();
        while let Some(piece) = reader.next_piece().await.expect("reading a slice") {
            pieces.push((
                String::from_utf8_lossy(&piece.bytes).into_owned(),
                piece.whole_line,
            ));
        }
        pieces
    }

    #[tokio::test]
    async fn line_reader_splits_lines_and_cuts_long_ones_into_pieces() {
        assert_eq!(
            pieces(b"ab\ncdef\n\nlast", 5).await,
            vec![
                ("ab\n".to_owned(), true),
                ("cdef\n".to_owned(), true),
                ("\n".to_owned(), true),
                ("last".to_owned(), true),
            ]
        );
        assert_eq!(
            pieces(b"abcdefghij\nk\n", 4).await,
            vec![
                ("abcd".to_owned(), false),
                ("efgh".to_owned(), false),
                ("ij\n".to_owned(), false),
                ("k\n".to_owned(), true),
            ]
        );
        assert_eq!(pieces(b"", 4).await, Vec::new());
    }

    #[test]
    fn exits_are_described_with_code_or_signal() {
        assert_eq!(
            describe_exit(ExitStatus::from_raw(3 << 8)),
            "exited with code 3"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(Signal::KILL.as_raw())),
            "was killed by signal 9 (SIGKILL)"
        );
    }
}
