//! Real crashes: the program binary (`CARGO_BIN_EXE_facilitator-client`) with a spool, under load against the
//! reference facilitator (in this process), killed with SIGKILL at random moments and restarted at once with the
//! same spool, with `exec:` jobs that outlive a kill. Judged from the facilitator's records, not the client's: every
//! job it stored `received` for ends with exactly one terminal status (`completed`, or `horde_failed` saying the
//! client restarted when a kill interrupted it), in per-job order; every status it had not answered when a client
//! died is sent again by the next one; a duplicate is only ever a re-send on a later connection; no job process is
//! left running afterwards.
//!
//! Then the disk: a truncated and a corrupted spool are moved aside and the program starts empty; a read-only file
//! system refuses an explicit spool (exit 2, the file left alone) and sends a default one to memory; a full file
//! system fails commits (logged, statuses delivered all the same) until space returns and a snapshot commits. The
//! file-system cases mount a tmpfs (root; `.ci/run` requires it).
//!
//! The CI run: 5,000 jobs, 50 kills. `cargo test --test crash -- --ignored` runs 20,000 jobs and 200 kills.
//! `CRASH_SEED=N` replays a run's kill times (each run prints its seed).
#![cfg(feature = "spool")]

mod services;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use facilitator_client::machine::RESTARTED_WHILE_RUNNING;
use facilitator_client::protocol::JobStatus;
use facilitator_client::protocol::keys::Hotkey;
use facilitator_client::reference::{
    FacilitatorConfig, JobPlan, Records, ReferenceFacilitator, StatusOutcome,
};
use facilitator_client::spool::{
    HandlerRecord, JobRecord, Spool, SpoolBatch, SpoolIdentity, SpooledStatus,
};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_facilitator-client");
const SEED: &str = "0x0707070707070707070707070707070707070707070707070707070707070707";

/// The facilitator on a runtime of its own, so it serves while this thread starts and kills processes.
struct World {
    runtime: tokio::runtime::Runtime,
    facilitator: ReferenceFacilitator,
}

impl World {
    fn start(jobs: JobPlan) -> World {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let facilitator = runtime
            .block_on(ReferenceFacilitator::start(FacilitatorConfig {
                jobs,
                ..Default::default()
            }))
            .expect("the reference facilitator starts");
        World {
            runtime,
            facilitator,
        }
    }

    fn records(&self) -> Records {
        self.facilitator.snapshot()
    }

    /// Waits (polling) until `done` holds, at most `within`; the records either way.
    fn wait(&self, within: Duration, done: impl Fn(&Records) -> bool) -> (bool, Records) {
        let deadline = Instant::now() + within;
        loop {
            let records = self.records();
            if done(&records) {
                return (true, records);
            }
            if Instant::now() > deadline {
                return (false, records);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A small, seeded generator for kill times (no dependency for so little).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = (high - low).as_micros() as u64;
        low + Duration::from_micros(self.next() % span.max(1))
    }
}

fn seed() -> u64 {
    match std::env::var("CRASH_SEED") {
        Ok(text) => text.parse().expect("CRASH_SEED is a number"),
        Err(_) => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        }
    }
}

/// The program's `run` with a spool, its stderr appended to `log`.
fn client(world: &World, spool: &Path, handler: &str, log: &Path, env: &[(&str, &str)]) -> Child {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut command = Command::new(BIN);
    command
        .args(["run", "--url", &world.facilitator.url()])
        .args(["--trusted-signer", &world.facilitator.signer_ss58()])
        .args(["--handler", handler])
        .arg("--spool")
        .arg(spool)
        .env("FACILITATOR_HOTKEY_SEED", SEED)
        .env("RUST_LOG", "info")
        // Never the user's state directory, whatever happens.
        .env("XDG_STATE_HOME", spool.parent().unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in env {
        command.env(k, v);
    }
    command.spawn().expect("the program starts")
}

fn sigkill(child: &mut Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
}

/// SIGINT, then the exit code (within a guard).
fn interrupt(mut child: Child) -> Option<i32> {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the program did not stop within 60 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes (not zombies) whose environment holds `marker`: what the jobs of these runs started.
fn processes_with(marker: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if !environ.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            continue;
        }
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        {
            continue;
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        found.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
    }
    found
}

/// What one crash run saw, for the report.
#[derive(Debug, Default)]
struct Tally {
    jobs_created: usize,
    jobs_received: usize,
    completed: usize,
    horde_failed: usize,
    unanswered_at_kills: usize,
    resent: usize,
}

/// The crash run: `jobs` jobs, `kills` SIGKILLs at random moments spread over their creation, a restart right after
/// each, then a clean stop; the facilitator's records are then judged.
fn crash_run(jobs: u64, kills: u32, interval: Duration) {
    let seed = seed();
    println!("crash run: {jobs} jobs, {kills} kills, CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = TempDir::new().unwrap();
    let spool = dir.path().join("crash.spool");
    let log = dir.path().join("client.log");
    let marker = format!("FACILITATOR_CRASH_TEST={}-{seed}", std::process::id());
    let (marker_key, marker_value) = marker.split_once('=').unwrap();
    // A quarter of the jobs run a second (they outlive kills); the rest a moment.
    let script = dir.path().join("job.sh");
    fs::write(
        &script,
        "#!/bin/sh\necho '{\"status\":\"accepted\"}'\ncase \"$JOB_UUID\" in\n  *[0-3]) sleep 1 ;;\n  *) sleep 0.05 ;;\nesac\n",
    )
    .unwrap();
    let handler = format!("exec:sh {}", script.display());
    let world = World::start(JobPlan::count(jobs).every(interval));
    let env = [(marker_key, marker_value)];
    let started = Instant::now();
    let creation = interval * jobs as u32;
    let mean_gap = creation / (kills + 1);
    let mut running = client(&world, &spool, &handler, &log, &env);
    for kill in 0..kills {
        std::thread::sleep(rng.between(mean_gap / 4, mean_gap * 7 / 4));
        // Every other kill finds a slow facilitator: it stores what it reads but has answered nothing for a moment,
        // so statuses are unanswered when the client dies (the held Responses are never written).
        if kill % 2 == 1 {
            world.facilitator.hold_responses();
            std::thread::sleep(rng.between(Duration::from_millis(5), Duration::from_millis(150)));
        }
        sigkill(&mut running);
        running = client(&world, &spool, &handler, &log, &env);
    }
    println!(
        "  {kills} kills in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Every job created (the facilitator signs each as it makes it: on a loaded machine that takes longer than the
    // plan's interval says), then every job the facilitator saw `received` for finished.
    let (created, records) = world.wait(creation * 3 + Duration::from_secs(60), |r| {
        r.jobs.len() as u64 == jobs
    });
    if !created {
        let _ = interrupt(running);
        panic!(
            "only {} of {jobs} jobs created after {:.1} s",
            records.jobs.len(),
            started.elapsed().as_secs_f64()
        );
    }
    let unfinished = |r: &Records| -> Vec<(String, Vec<JobStatus>)> {
        r.jobs
            .iter()
            .filter(|j| j.statuses.contains(&JobStatus::Received) && !j.is_finished())
            .map(|j| (j.uuid.clone(), j.statuses.clone()))
            .collect()
    };
    let (settled, records) = world.wait(Duration::from_secs(60), |r| unfinished(r).is_empty());
    println!("  settled after {:.1} s", started.elapsed().as_secs_f64());
    let code = interrupt(running);
    let client_log = fs::read_to_string(&log).unwrap_or_default();
    let tail: String = client_log
        .lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        settled,
        "jobs with received stored and no terminal status a minute after the last was created: {:?}; the \
         client's last lines (newest first):\n{tail}",
        unfinished(&records)
    );
    assert_eq!(
        code,
        Some(0),
        "the last client's exit; its last lines (newest first):\n{tail}"
    );
    let last = client_log
        .lines()
        .rev()
        .find(|l| l.contains("stopped ("))
        .expect("a final line");
    assert!(
        last.contains("spool up to date (0 status update(s) and 0 job(s)"),
        "the spool is empty at the end: {last}"
    );
    let records = world.records();
    let tally = judge(&records);
    // Nothing any job started is left: the shells died with their clients, and what they started was killed by the
    // next start or ended on its own.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = processes_with(&marker);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = processes_with(&marker);
    }
    assert!(left.is_empty(), "job processes left running: {left:?}");
    let killed_groups = client_log.matches("ran: killed its").count();
    println!(
        "  {:.1} s; {} jobs created, {} received by the client, {} completed, {} horde_failed after a restart; \
         {} statuses unanswered when a client died, all sent again; {} re-sends in all; {killed_groups} process \
         group(s) of dead clients killed at a restart",
        started.elapsed().as_secs_f64(),
        tally.jobs_created,
        tally.jobs_received,
        tally.completed,
        tally.horde_failed,
        tally.unanswered_at_kills,
        tally.resent,
    );
    assert!(
        tally.horde_failed > 0 && tally.unanswered_at_kills > 0,
        "the kills never interrupted a job or caught a status unanswered: the test proved little ({tally:?})"
    );
    world.runtime.block_on(world.facilitator.shutdown());
}

/// The facilitator's records against the guarantees; the counts for the report.
fn judge(records: &Records) -> Tally {
    let mut tally = Tally {
        jobs_created: records.jobs.len(),
        ..Tally::default()
    };
    // Every job with `received` stored: received first, at most accepted in between, exactly one terminal, last.
    for job in &records.jobs {
        let s = &job.statuses;
        if !s.contains(&JobStatus::Received) {
            continue;
        }
        tally.jobs_received += 1;
        let terminals: Vec<JobStatus> = s.iter().copied().filter(|st| st.is_terminal()).collect();
        assert_eq!(terminals.len(), 1, "job {}: {s:?}", job.uuid);
        assert_eq!(
            s.first(),
            Some(&JobStatus::Received),
            "job {}: {s:?}",
            job.uuid
        );
        assert!(
            s.last().is_some_and(|st| st.is_terminal()),
            "job {}: {s:?}",
            job.uuid
        );
        assert!(
            s[1..s.len() - 1]
                .iter()
                .all(|st| *st == JobStatus::Accepted),
            "job {}: {s:?}",
            job.uuid
        );
        match terminals[0] {
            JobStatus::Completed => tally.completed += 1,
            JobStatus::HordeFailed => tally.horde_failed += 1,
            other => panic!("job {}: terminal {other}", job.uuid),
        }
    }
    // Every horde_failed says the client restarted while the job ran.
    for update in records
        .status_updates
        .iter()
        .filter(|u| u.status == JobStatus::HordeFailed)
    {
        assert_eq!(
            update.metadata["horde_failure_details"]["message"], RESTARTED_WHILE_RUNNING,
            "job {}",
            update.uuid
        );
    }
    // Duplicates only as re-sends: a status is stored once, and each later copy comes on a later connection and is
    // answered job.integrity_error; nothing is refused, nothing crashes the facilitator.
    let mut stored_on: HashMap<(String, JobStatus), u64> = HashMap::new();
    let mut per_connection: HashSet<(u64, String, JobStatus)> = HashSet::new();
    for update in &records.status_updates {
        let key = (update.uuid.clone(), update.status);
        assert!(
            per_connection.insert((update.connection.0, key.0.clone(), key.1)),
            "{}/{} sent twice on connection {}",
            key.0,
            key.1,
            update.connection.0
        );
        match update.outcome {
            StatusOutcome::Stored => {
                assert!(stored_on.insert(key, update.connection.0).is_none());
            }
            StatusOutcome::IntegrityError => {
                tally.resent += 1;
                let first = stored_on.get(&key).copied();
                assert!(
                    first.is_some_and(|c| c < update.connection.0),
                    "{}/{} re-sent on connection {} but stored on {first:?}",
                    key.0,
                    key.1,
                    update.connection.0
                );
            }
            other => panic!("{}/{}: {other:?}", key.0, key.1),
        }
    }
    // Every status the facilitator had not answered when a client died is sent again on a later connection. On one
    // connection the Responses answer the auth request, then the statuses in order.
    let last_connection = records.connections.len() as u64;
    for connection in &records.connections {
        let id = connection.id.0;
        if id == last_connection || connection.hotkey.is_none() {
            continue;
        }
        let statuses: Vec<_> = records
            .status_updates
            .iter()
            .filter(|u| u.connection.0 == id)
            .collect();
        let answered = records
            .responses
            .iter()
            .filter(|r| r.connection.0 == id)
            .count()
            .saturating_sub(1);
        for unanswered in statuses.iter().skip(answered) {
            tally.unanswered_at_kills += 1;
            let again = records.status_updates.iter().any(|u| {
                u.connection.0 > id && u.uuid == unanswered.uuid && u.status == unanswered.status
            });
            assert!(
                again,
                "{}/{} was not answered on connection {id} when its client died, and never sent again",
                unanswered.uuid, unanswered.status
            );
        }
    }
    tally
}

#[test]
fn fifty_kills_over_five_thousand_exec_jobs_lose_nothing_that_reached_the_facilitator() {
    crash_run(5_000, 50, Duration::from_millis(7));
}

#[test]
#[ignore = "the long run: about 5 minutes"]
fn two_hundred_kills_over_twenty_thousand_exec_jobs_lose_nothing_that_reached_the_facilitator() {
    crash_run(20_000, 200, Duration::from_millis(8));
}

// ---- the disk ------------------------------------------------------------------------------------------------

fn identity(world: &World) -> SpoolIdentity {
    SpoolIdentity {
        hotkey_ss58: Hotkey::from_seed(&[7u8; 32]).ss58(),
        url: world.facilitator.url(),
    }
}

/// A spool holding some statuses and jobs, as a killed client leaves it.
fn spool_with_data(path: &Path, identity: &SpoolIdentity) -> Vec<u8> {
    let mut opened = Spool::open(path, identity).expect("a new spool");
    opened
        .spool
        .commit(&SpoolBatch {
            put_statuses: (1..=40)
                .map(|i| SpooledStatus {
                    id: i,
                    update: facilitator_client::protocol::JobStatusUpdate::new(
                        format!("00000000-0000-4000-8000-{i:012x}"),
                        JobStatus::Accepted,
                    ),
                })
                .collect(),
            put_jobs: (1..=10)
                .map(|i| JobRecord {
                    uuid: format!("00000000-0000-4000-8000-{i:012x}"),
                    request: format!(r#"{{"uuid":"00000000-0000-4000-8000-{i:012x}"}}"#).into(),
                    accepted_at_unix_ms: 1,
                    handler: Some(HandlerRecord::Exec {
                        pgid: i32::MAX,
                        start_time: 1,
                    }),
                })
                .collect(),
            ..SpoolBatch::default()
        })
        .expect("a commit");
    drop(opened);
    fs::read(path).unwrap()
}

/// Runs the program on `spool` until `needle` appears in its log (then SIGINT: exit 0 expected); returns the log.
fn run_until(world: &World, spool: &Path, needle: &str) -> String {
    let log = spool.with_extension("log");
    let child = client(world, spool, "echo", &log, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains(needle) && text.contains("Disconnected -> Connecting") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(interrupt(child), Some(0));
    fs::read_to_string(&log).unwrap()
}

fn moved_aside(dir: &Path, name: &str) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}.corrupt-")))
        })
        .collect()
}

#[test]
fn a_truncated_or_corrupted_spool_is_moved_aside_and_the_program_starts_empty() {
    let world = World::start(JobPlan::none());
    for damage in ["truncated", "corrupted"] {
        let dir = TempDir::new().unwrap();
        let spool = dir.path().join("client.spool");
        let full = spool_with_data(&spool, &identity(&world));
        let damaged = match damage {
            "truncated" => full[..full.len() / 2].to_vec(),
            _ => {
                let mut bytes = full.clone();
                for page in (4096..bytes.len()).step_by(4096) {
                    for b in &mut bytes[page + 100..page + 110] {
                        *b ^= 0x5A;
                    }
                }
                bytes
            }
        };
        fs::write(&spool, &damaged).unwrap();
        let log = run_until(&world, &spool, "moved it to");
        assert!(
            log.lines()
                .any(|l| l.contains("ERROR") && l.contains("could not be read")),
            "{damage}: an error line:\n{log}"
        );
        assert!(
            log.contains("recovered 0 unacknowledged status update(s) and 0 job(s)"),
            "{damage}:\n{log}"
        );
        let moved = moved_aside(dir.path(), "client.spool");
        assert_eq!(moved.len(), 1, "{damage}: {moved:?}");
        assert_eq!(
            fs::read(&moved[0]).unwrap(),
            damaged,
            "{damage}: moved byte for byte"
        );
    }
}

/// A tmpfs mounted for one test, unmounted when dropped; `None` (after the services note) where mounting is not
/// allowed.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(test: &str, options: &str) -> Option<Tmpfs> {
        let dir = TempDir::new().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            services::missing(test, "the right to mount a tmpfs (root)");
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, options: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {options}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_read_only_file_system_refuses_an_explicit_spool_and_sends_a_default_one_to_memory() {
    let Some(fs_) = Tmpfs::mount("read-only file system", "size=1m,mode=0700") else {
        return;
    };
    let world = World::start(JobPlan::none());
    let spool = fs_.path().join("client.spool");
    let before = spool_with_data(&spool, &identity(&world));
    fs_.remount("ro");
    let output = Command::new(BIN)
        .args(["run", "--url", &world.facilitator.url(), "--spool"])
        .arg(&spool)
        .env("FACILITATOR_HOTKEY_SEED", SEED)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert_eq!(fs::read(&spool).unwrap(), before, "the spool is left alone");

    // The default location on it: nothing there yet, nothing can be created: from memory, with a warning.
    let state = fs_.path().join("state");
    let log_dir = TempDir::new().unwrap();
    let log = log_dir.path().join("client.log");
    let mut command = Command::new(BIN);
    command
        .args(["run", "--url", &world.facilitator.url()])
        .env("FACILITATOR_HOTKEY_SEED", SEED)
        .env("XDG_STATE_HOME", &state)
        .stderr(File::create(&log).unwrap());
    let child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("Disconnected -> Connecting")
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(interrupt(child), Some(0));
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().any(|l| l.contains("WARN")
            && l.contains("no spool:")
            && l.contains("Read-only file system")),
        "{text}"
    );
}

#[test]
fn a_full_file_system_fails_commits_without_losing_a_status_until_space_returns() {
    let Some(fs_) = Tmpfs::mount("full file system", "size=1m,mode=0700") else {
        return;
    };
    let world = World::start(JobPlan::none());
    let dir = TempDir::new().unwrap();
    // Each job prints 100 KiB: its `completed` carries 64 KiB of it, which a full disk cannot take.
    let script = dir.path().join("big.sh");
    fs::write(
        &script,
        "#!/bin/sh\necho '{\"status\":\"accepted\"}'\nhead -c 102400 /dev/zero | tr '\\0' x\necho\n",
    )
    .unwrap();
    let spool = fs_.path().join("client.spool");
    let log = dir.path().join("client.log");
    let child = client(
        &world,
        &spool,
        &format!("exec:sh {}", script.display()),
        &log,
        &[],
    );
    let read_log = || fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !read_log().contains("Connecting -> Running") {
        assert!(Instant::now() < deadline, "{}", read_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Fill what is left of the file system.
    let filler = fs_.path().join("filler");
    {
        let mut f = File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let uuids: Vec<String> = (0..6).map(|_| world.facilitator.push_job()).collect();
    let (all_done, records) = world.wait(Duration::from_secs(30), |r| {
        uuids
            .iter()
            .all(|u| r.job(u).is_some_and(|j| j.is_finished()))
    });
    assert!(all_done, "{}", records.summary());
    for uuid in &uuids {
        assert_eq!(
            records.statuses_of(uuid),
            [
                JobStatus::Received,
                JobStatus::Accepted,
                JobStatus::Completed
            ],
            "delivered although the disk is full"
        );
    }
    let failures = read_log()
        .lines()
        .filter(|l| l.contains("the spool could not commit"))
        .count();
    assert!(
        failures >= 1 && read_log().contains("No space left on device"),
        "commits failed on the full disk and said why:\n{}",
        read_log()
    );
    assert_eq!(failures, 1, "logged once a minute at most:\n{}", read_log());
    // Space returns: the next snapshot (1 s, 2 s, ... after the failures) commits.
    fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !read_log().contains("the spool is up to date again") {
        assert!(Instant::now() < deadline, "{}", read_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(interrupt(child), Some(0));
    let text = read_log();
    let last = text
        .lines()
        .rev()
        .find(|l| l.contains("stopped ("))
        .unwrap();
    assert!(
        last.contains("spool up to date (0 status update(s) and 0 job(s)"),
        "{last}"
    );
}
