#![cfg(feature = "spool")]
//! The spool against real files: what a restart recovers, the owner-only permissions, the one-process lock (in this
//! process and from another), the owner check, unreadable files moved aside, files refused and left alone, a full
//! file system (a tiny tmpfs, where this runs as root), the writer thread, compaction. The measurements the issue
//! asks for are `#[ignore]`d tests at the end (run them one at a time with `--ignored --nocapture`).

#[path = "services/mod.rs"]
mod services;

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use facilitator_client::protocol::{ClientMessage, JobStatus, JobStatusUpdate};
use facilitator_client::spool::{
    HandlerRecord, JobRecord, OpenStep, OpenedSpool, Spool, SpoolBatch, SpoolIdentity, SpoolNotice,
    SpoolOpenError, SpoolWorker, SpooledStatus, default_path,
};
use redb::{ReadableDatabase, ReadableTable};
use serde_json::Value;
use tempfile::TempDir;

const HOTKEY: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
const URL: &str = "wss://facilitator.example/ws/v0/";

fn identity() -> SpoolIdentity {
    SpoolIdentity {
        hotkey_ss58: HOTKEY.to_owned(),
        url: URL.to_owned(),
    }
}

fn open(path: &Path) -> OpenedSpool {
    Spool::open(path, &identity()).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn status(id: u64, uuid: &str, s: JobStatus) -> SpooledStatus {
    SpooledStatus {
        id,
        update: JobStatusUpdate::new(uuid, s),
    }
}

fn job(uuid: &str) -> JobRecord {
    JobRecord {
        uuid: uuid.to_owned(),
        request: Arc::from(format!(
            r#"{{"type":"job.new","message_type":"V2JobRequest","uuid":"{uuid}","env":{{"Z":"1","A":"é"}}}}"#
        )),
        accepted_at_unix_ms: 1_764_000_000_000,
        handler: Some(HandlerRecord::Exec {
            pgid: 4242,
            start_time: 987_654,
        }),
    }
}

fn ids(spool: &OpenedSpool) -> Vec<u64> {
    spool.recovered.statuses.iter().map(|s| s.id).collect()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn spool_in(dir: &TempDir) -> PathBuf {
    dir.path().join("state").join("test.spool")
}

#[test]
fn statuses_and_jobs_survive_close_and_reopen_in_id_order() {
    let dir = TempDir::new().unwrap();
    let path = spool_in(&dir);
    let mut opened = open(&path);
    assert!(opened.recovered.is_empty());
    assert!(opened.notices.is_empty(), "{:?}", opened.notices);
    // Ids arrive out of order across batches; recovery gives them back in id order.
    opened
        .spool
        .commit(&SpoolBatch {
            put_statuses: vec![
                status(5, "a", JobStatus::Accepted),
                status(2, "b", JobStatus::Received),
            ],
            put_jobs: vec![job("a"), job("b")],
            ..SpoolBatch::default()
        })
        .unwrap();
    opened
        .spool
        .commit(&SpoolBatch {
            put_statuses: vec![
                status(9, "a", JobStatus::Completed),
                status(3, "b", JobStatus::Accepted),
            ],
            ..SpoolBatch::default()
        })
        .unwrap();
    assert_eq!(opened.spool.len(), (4, 2));
    drop(opened);

    let reopened = open(&path);
    assert_eq!(ids(&reopened), [2, 3, 5, 9]);
    assert_eq!(
        reopened.recovered.statuses[3].update,
        JobStatusUpdate::new("a", JobStatus::Completed)
    );
    assert_eq!(reopened.recovered.jobs, [job("a"), job("b")]);
    assert_eq!(reopened.recovered.max_status_id(), Some(9));
}

#[test]
fn acknowledged_statuses_and_finished_jobs_are_forgotten() {
    let dir = TempDir::new().unwrap();
    let path = spool_in(&dir);
    let mut opened = open(&path);
    opened
        .spool
        .commit(&SpoolBatch {
            put_statuses: vec![
                status(1, "a", JobStatus::Received),
                status(2, "a", JobStatus::Completed),
                status(3, "b", JobStatus::Received),
            ],
            put_jobs: vec![job("a"), job("b")],
            ..SpoolBatch::default()
        })
        .unwrap();
    opened
        .spool
        .commit(&SpoolBatch {
            remove_statuses: vec![1, 2, 77],
            remove_jobs: vec!["a".to_owned(), "never-seen".to_owned()],
            ..SpoolBatch::default()
        })
        .unwrap();
    drop(opened);
    let reopened = open(&path);
    assert_eq!(ids(&reopened), [3]);
    assert_eq!(reopened.recovered.jobs, [job("b")]);
}

#[test]
fn a_job_record_put_again_replaces_the_earlier_one() {
    let dir = TempDir::new().unwrap();
    let path = spool_in(&dir);
    let mut opened = open(&path);
    let mut first = job("a");
    first.handler = None;
    opened
        .spool
        .commit(&SpoolBatch {
            put_jobs: vec![first],
            ..SpoolBatch::default()
        })
        .unwrap();
    let mut with_task = job("a");
    with_task.handler = Some(HandlerRecord::Celery {
        task_id: "task-1".to_owned(),
    });
    opened
        .spool
        .commit(&SpoolBatch {
            put_jobs: vec![with_task.clone()],
            ..SpoolBatch::default()
        })
        .unwrap();
    drop(opened);
    assert_eq!(open(&path).recovered.jobs, [with_task]);
}

#[test]
fn a_full_snapshot_replaces_everything_and_a_batch_removes_after_it_puts() {
    let dir = TempDir::new().unwrap();
    let path = spool_in(&dir);
    let mut opened = open(&path);
    opened
        .spool
        .commit(&SpoolBatch {
            put_statuses: (1..=20)
                .map(|i| status(i, "old", JobStatus::Accepted))
                .collect(),
            put_jobs: vec![job("old"), job("kept-by-snapshot")],
            ..SpoolBatch::default()
        })
        .unwrap();
    let mut snapshot = SpoolBatch::snapshot(
        vec![
            status(30, "new", JobStatus::Received),
            status(31, "new", JobStatus::Accepted),
        ],
        vec![job("kept-by-snapshot"), job("new")],
    );
    // Listed and removed in the same batch: gone.
    snapshot.remove_statuses.push(31);
    opened.spool.commit(&snapshot).unwrap();
    assert_eq!(opened.spool.len(), (1, 2));
    drop(opened);
    let reopened = open(&path);
    assert_eq!(ids(&reopened), [30]);
    assert_eq!(
        reopened.recovered.jobs,
        [job("kept-by-snapshot"), job("new")]
    );
}

/// Every status update in the vectors, through the file and back: the same value, and the same bytes on the wire.
#[test]
fn every_vector_status_update_comes_back_byte_for_byte() {
    let vectors: Value = serde_json::from_str(
        &fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/status_updates.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut updates = Vec::new();
    for list in ["valid", "accepted_with_coercion", "server_state_cases"] {
        for case in vectors[list].as_array().unwrap() {
            let text = case["json"].as_str().unwrap();
            match ClientMessage::from_json(text) {
                Ok(ClientMessage::StatusUpdate(update)) => updates.push(update),
                other => panic!("{list}/{}: {other:?}", case["name"]),
            }
        }
    }
    assert!(updates.len() >= 70, "{}", updates.len());

    let dir = TempDir::new().unwrap();
    let path = spool_in(&dir);
    let mut opened = open(&path);
    let batch = SpoolBatch {
        put_statuses: updates
            .iter()
            .enumerate()
            .map(|(i, u)| SpooledStatus {
                id: i as u64,
                update: u.clone(),
            })
            .collect(),
        ..SpoolBatch::default()
    };
    opened.spool.commit(&batch).unwrap();
    drop(opened);
    let reopened = open(&path);
    assert_eq!(reopened.recovered.statuses.len(), updates.len());
    for (before, after) in updates.iter().zip(&reopened.recovered.statuses) {
        assert_eq!(&after.update, before);
        let wire_before = ClientMessage::StatusUpdate(before.clone()).to_json();
        let wire_after = ClientMessage::StatusUpdate(after.update.clone()).to_json();
        assert_eq!(wire_after, wire_before);
        // The stored form is a fixed point: encoding what was decoded gives the same text again.
        let stored = serde_json::to_string(before).unwrap();
        let again: JobStatusUpdate = serde_json::from_str(&stored).unwrap();
        assert_eq!(serde_json::to_string(&again).unwrap(), stored);
    }
}

#[test]
fn the_directory_and_files_are_created_owner_only() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("a").join("b").join("x.spool");
    let opened = open(&path);
    assert!(opened.notices.is_empty(), "{:?}", opened.notices);
    assert_eq!(mode(&dir.path().join("a")), 0o700);
    assert_eq!(mode(&dir.path().join("a").join("b")), 0o700);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(opened.spool.lock_path().as_path()), 0o600);
    assert_eq!(opened.spool.path(), path);
}

#[test]
fn an_existing_spool_or_directory_open_to_others_is_a_warning() {
    let dir = TempDir::new().unwrap();
    let path = spool_in(&dir);
    drop(open(&path));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(path.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    let opened = open(&path);
    assert_eq!(
        opened.notices,
        [
            SpoolNotice::LooseDirectoryMode {
                path: path.parent().unwrap().to_path_buf(),
                mode: 0o755
            },
            SpoolNotice::LooseFileMode {
                path: path.clone(),
                mode: 0o644
            },
        ]
    );
    assert!(opened.notices.iter().all(|n| !n.is_error()));
    let text = opened.notices[1].to_string();
    assert!(
        text.contains("0644") && text.contains("chmod 600"),
        "{text}"
    );
}

#[test]
fn a_second_open_in_the_same_process_is_refused_naming_the_lock_and_our_pid() {
    let dir = TempDir::new().unwrap();
    let path = spool_in(&dir);
    let first = open(&path);
    let err = Spool::open(&path, &identity()).unwrap_err();
    match &err {
        SpoolOpenError::Locked { lock_file, pid } => {
            assert_eq!(lock_file, &first.spool.lock_path());
            assert_eq!(*pid, Some(std::process::id()));
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&format!("process {}", std::process::id())) && text.contains(".lock"),
        "{text}"
    );
    // From another thread too (flock is per open file description, not per thread).
    let p = path.clone();
    let from_thread = std::thread::spawn(move || Spool::open(&p, &identity()).err())
        .join()
        .unwrap();
    assert!(
        matches!(from_thread, Some(SpoolOpenError::Locked { .. })),
        "{from_thread:?}"
    );
    drop(first);
    drop(open(&path));
}

/// Run by [`a_second_process_is_refused_naming_the_holders_pid`] in a child process: holds the spool open until
/// its stdin closes.
#[test]
#[ignore = "a helper run in a child process"]
fn child_holds_the_spool() {
    let Some(path) = std::env::var_os("SPOOL_TEST_HOLD") else {
        return;
    };
    let _held = open(Path::new(&path));
    println!("HOLDING");
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_line(&mut String::new());
}

#[test]
fn a_second_process_is_refused_naming_the_holders_pid() {
    let dir = TempDir::new().unwrap();
    let path = spool_in(&dir);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_holds_the_spool",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SPOOL_TEST_HOLD", &path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let holding = lines.any(|l| l.is_ok_and(|l| l.contains("HOLDING")));
    assert!(holding, "the child never opened the spool");
    match Spool::open(&path, &identity()) {
        Err(SpoolOpenError::Locked { pid, .. }) => assert_eq!(pid, Some(child.id())),
        other => panic!("{other:?}"),
    }
    // A holder that dies (here: SIGKILL, as a crash would) releases the lock; its PID stays in the file, harmless.
    child.kill().unwrap();
    child.wait().unwrap();
    let reopened = open(&path);
    assert_eq!(
        fs::read_to_string(reopened.spool.lock_path())
            .unwrap()
            .trim(),
        std::process::id().to_string()
    );
}

/// Run by [`a_process_killed_mid_commit_leaves_every_acknowledged_commit_readable`] in a child process: commits
/// one status per commit, forgetting the one ten commits older, printing each id once its commit has returned.
#[test]
#[ignore = "a helper run in a child process"]
fn child_commits_until_killed() {
    let Some(path) = std::env::var_os("SPOOL_TEST_COMMIT") else {
        return;
    };
    let mut opened = open(Path::new(&path));
    let mut id = opened.recovered.max_status_id().unwrap_or(0);
    let mut out = std::io::stdout();
    loop {
        id += 1;
        opened
            .spool
            .commit(&SpoolBatch {
                put_statuses: vec![sized_status(id, (id as usize % 7) * 1000)],
                remove_statuses: id.checked_sub(10).into_iter().collect(),
                ..SpoolBatch::default()
            })
            .unwrap();
        writeln!(out, "COMMITTED {id}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn a_process_killed_mid_commit_leaves_every_acknowledged_commit_readable() {
    let dir = TempDir::new().unwrap();
    let path = spool_in(&dir);
    // Kill points: after this many acknowledged commits, then this many microseconds into the next one (a commit
    // takes a few ms here), chosen pseudo-randomly; the seed is in every failure message.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut x = seed | 1;
    let mut next = move |bound: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % bound
    };
    for round in 0..20 {
        let commits = 1 + next(40);
        let delay_us = next(5000);
        let round = format!("seed {seed} round {round} ({commits} commits + {delay_us} us)");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_commits_until_killed",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SPOOL_TEST_COMMIT", &path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut last = 0;
        let mut seen = 0;
        while seen < commits {
            let line = lines.next().unwrap().unwrap();
            if let Some(id) = line.strip_prefix("COMMITTED ") {
                last = id.parse::<u64>().unwrap();
                seen += 1;
            }
        }
        std::thread::sleep(Duration::from_micros(delay_us));
        child.kill().unwrap();
        child.wait().unwrap();
        // Whatever printed after `last` also committed, possibly.
        let reported: Vec<u64> = lines
            .map_while(Result::ok)
            .filter_map(|l| l.strip_prefix("COMMITTED ").and_then(|n| n.parse().ok()))
            .collect();
        let last = reported.last().copied().unwrap_or(last);

        let opened = open(&path);
        assert!(
            opened.notices.is_empty(),
            "round {round}: {:?}",
            opened.notices
        );
        let got = ids(&opened);
        // The last acknowledged commit is there; the one in flight may be too (it may have reached the disk
        // before the kill). Nothing else: the ten newest ids, contiguous.
        let newest = *got.last().unwrap();
        assert!(
            newest == last || newest == last + 1,
            "round {round}: {got:?} after {last}"
        );
        let expected: Vec<u64> = (newest.saturating_sub(9).max(1)..=newest).collect();
        assert_eq!(got, expected, "{round}");
        for s in &opened.recovered.statuses {
            assert_eq!(
                s.update,
                sized_status(s.id, (s.id as usize % 7) * 1000).update
            );
        }
    }
}

#[test]
fn a_spool_of_another_hotkey_or_url_is_refused_naming_both() {
    let dir = TempDir::new().unwrap();
    let path = spool_in(&dir);
    drop(open(&path));
    let other_hotkey = SpoolIdentity {
        hotkey_ss58: "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty".to_owned(),
        url: URL.to_owned(),
    };
    match Spool::open(&path, &other_hotkey).unwrap_err() {
        e @ SpoolOpenError::WrongOwner { .. } => {
            let text = e.to_string();
            assert!(
                text.contains(HOTKEY) && text.contains(&other_hotkey.hotkey_ss58),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    let staging = SpoolIdentity {
        hotkey_ss58: HOTKEY.to_owned(),
        url: "wss://staging.example/ws/v0/".to_owned(),
    };
    match Spool::open(&path, &staging).unwrap_err() {
        SpoolOpenError::WrongOwner {
            path: p,
            spool_hotkey,
            spool_url,
            our_hotkey,
            our_url,
        } => {
            assert_eq!(p, path);
            assert_eq!(spool_hotkey, HOTKEY);
            assert_eq!(our_hotkey, HOTKEY);
            assert_eq!(spool_url, URL);
            assert_eq!(our_url, "wss://staging.example/ws/v0/");
        }
        other => panic!("{other:?}"),
    }
    // Another spelling of the same facilitator is the same owner.
    let same = SpoolIdentity {
        hotkey_ss58: HOTKEY.to_owned(),
        url: "WSS://Facilitator.Example:443/ws/v0/".to_owned(),
    };
    Spool::open(&path, &same).unwrap();
}

/// The file now named `moved_to` must be `<path>.corrupt-<YYYYMMDDTHHMMSSZ>-<our pid>`.
fn assert_moved_aside_name(path: &Path, moved_to: &Path) {
    let name = moved_to.file_name().unwrap().to_str().unwrap();
    let prefix = format!("{}.corrupt-", path.file_name().unwrap().to_str().unwrap());
    let rest = name
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{name}"));
    let (stamp, pid) = rest.split_once('-').unwrap_or_else(|| panic!("{name}"));
    assert_eq!(stamp.len(), 16, "{name}");
    assert!(
        stamp[..8].bytes().all(|b| b.is_ascii_digit())
            && &stamp[8..9] == "T"
            && stamp[9..15].bytes().all(|b| b.is_ascii_digit())
            && stamp.ends_with('Z'),
        "{name}"
    );
    assert_eq!(pid, std::process::id().to_string(), "{name}");
    assert_eq!(moved_to.parent(), path.parent());
}

/// Opens a file that cannot be read as a spool: it must be moved aside (`check_moved` judges what was moved), and
/// a new, usable spool take its place.
fn assert_moved_aside_and_replaced(path: &Path, why: &str, check_moved: impl FnOnce(&Path)) {
    let mut opened = open(path);
    assert!(opened.recovered.is_empty(), "{why}");
    let moved: Vec<_> = opened
        .notices
        .iter()
        .filter_map(|n| match n {
            SpoolNotice::MovedAside { moved_to, .. } => Some(moved_to.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(moved.len(), 1, "{why}: {:?}", opened.notices);
    eprintln!("{why}: {}", opened.notices.last().unwrap());
    assert!(opened.notices.iter().any(SpoolNotice::is_error));
    assert_moved_aside_name(path, &moved[0]);
    check_moved(&moved[0]);
    assert_eq!(mode(path), 0o600);
    opened
        .spool
        .commit(&SpoolBatch {
            put_statuses: vec![status(1, "a", JobStatus::Accepted)],
            ..SpoolBatch::default()
        })
        .unwrap();
    drop(opened);
    let reopened = open(path);
    assert_eq!(ids(&reopened), [1], "{why}");
    assert!(reopened.notices.is_empty(), "{why}: {:?}", reopened.notices);
    fs::remove_file(&moved[0]).unwrap();
}

/// For files redb cannot open at all: the moved file has exactly the bytes the spool had.
fn unchanged(path: &Path, why: &'static str) -> impl FnOnce(&Path) {
    let before = fs::read(path).unwrap();
    move |moved| assert_same_bytes(&fs::read(moved).unwrap(), &before, why)
}

/// Creates a directory (and its parents) owner-only, as the spool would.
fn make_dir(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
}

/// Byte-for-byte equality without printing megabytes on failure.
fn assert_same_bytes(got: &[u8], expected: &[u8], what: &str) {
    let first_difference = got.iter().zip(expected).position(|(a, b)| a != b);
    assert!(
        got.len() == expected.len() && first_difference.is_none(),
        "{what}: {} bytes, expected {}; first difference at {first_difference:?}",
        got.len(),
        expected.len()
    );
}

/// A spool holding some data, closed; returns its bytes.
fn spool_with_data(path: &Path) -> Vec<u8> {
    let mut opened = open(path);
    opened
        .spool
        .commit(&SpoolBatch {
            put_statuses: (1..=50)
                .map(|i| status(i, &format!("job-{i}"), JobStatus::Accepted))
                .collect(),
            put_jobs: (1..=20).map(|i| job(&format!("job-{i}"))).collect(),
            ..SpoolBatch::default()
        })
        .unwrap();
    drop(opened);
    fs::read(path).unwrap()
}

#[test]
fn a_garbage_file_is_moved_aside_and_replaced_by_an_empty_spool() {
    let dir = TempDir::new().unwrap();
    let path = spool_in(&dir);
    make_dir(path.parent().unwrap());
    fs::write(&path, b"hello, this is not a spool\n").unwrap();
    assert_moved_aside_and_replaced(&path, "short text", unchanged(&path, "short text"));
    // Pseudo-random bytes, several pages of them.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let garbage: Vec<u8> = (0..50_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(&path, &garbage).unwrap();
    assert_moved_aside_and_replaced(&path, "random bytes", unchanged(&path, "random bytes"));
}

/// redb records the file's layout length, so a spool cut anywhere (even by one byte) is detected before anything is
/// read from it: moved aside, byte for byte, never a partial recovery.
#[test]
fn a_truncated_spool_is_moved_aside() {
    let dir = TempDir::new().unwrap();
    let path = spool_in(&dir);
    let full = spool_with_data(&path);
    for cut in [
        9,
        100,
        512,
        4096,
        full.len() / 4,
        full.len() / 2,
        full.len() - 4096,
        full.len() - 1,
    ] {
        fs::write(&path, &full[..cut]).unwrap();
        let why = format!("cut at {cut} of {}", full.len());
        let before = fs::read(&path).unwrap();
        assert_moved_aside_and_replaced(&path, &why, |moved| {
            assert_same_bytes(&fs::read(moved).unwrap(), &before, &why)
        });
    }
}

#[test]
fn a_spool_with_flipped_bytes_is_moved_aside() {
    let dir = TempDir::new().unwrap();
    let path = spool_in(&dir);
    let full = spool_with_data(&path);
    // Damage every page after the header: whatever holds the records is hit, and the checksums catch it.
    let mut damaged = full.clone();
    for page in (4096..damaged.len()).step_by(4096) {
        for b in &mut damaged[page + 100..page + 110] {
            *b ^= 0x5A;
        }
    }
    fs::write(&path, &damaged).unwrap();
    assert_moved_aside_and_replaced(&path, "flipped bytes", unchanged(&path, "flipped bytes"));
}

#[test]
fn a_database_that_is_not_a_spool_is_moved_aside() {
    let dir = TempDir::new().unwrap();
    let path = spool_in(&dir);
    make_dir(path.parent().unwrap());
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn
                .open_table(redb::TableDefinition::<&str, u64>::new("other"))
                .unwrap();
            t.insert("x", &1).unwrap();
        }
        txn.commit().unwrap();
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    // redb's open may rewrite its own bookkeeping in a file it can read; the data must be what it was.
    assert_moved_aside_and_replaced(&path, "a foreign redb database", |moved| {
        let db = redb::ReadOnlyDatabase::open(moved).unwrap();
        let txn = db.begin_read().unwrap();
        let t = txn
            .open_table(redb::TableDefinition::<&str, u64>::new("other"))
            .unwrap();
        assert_eq!(t.get("x").unwrap().unwrap().value(), 1);
    });
}

/// The raw `statuses` table of a spool file, read with redb directly.
fn statuses_in(path: &Path) -> std::collections::BTreeMap<u64, String> {
    let db = redb::ReadOnlyDatabase::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let t = txn
        .open_table(redb::TableDefinition::<u64, &str>::new("statuses"))
        .unwrap();
    t.iter()
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            (k.value(), v.value().to_owned())
        })
        .collect()
}

#[test]
fn a_spool_whose_record_cannot_be_decoded_is_moved_aside() {
    let dir = TempDir::new().unwrap();
    let path = spool_in(&dir);
    spool_with_data(&path);
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn
                .open_table(redb::TableDefinition::<u64, &str>::new("statuses"))
                .unwrap();
            t.insert(7, "{\"uuid\":").unwrap();
        }
        txn.commit().unwrap();
    }
    assert_moved_aside_and_replaced(&path, "an undecodable status", |moved| {
        let t = statuses_in(moved);
        assert_eq!(t.len(), 50);
        assert_eq!(t[&7], "{\"uuid\":");
    });
}

#[test]
fn an_empty_file_is_a_new_spool() {
    let dir = TempDir::new().unwrap();
    let path = spool_in(&dir);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::set_permissions(path.parent().unwrap(), fs::Permissions::from_mode(0o700)).unwrap();
    File::create(&path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let opened = open(&path);
    assert!(opened.recovered.is_empty());
    assert!(opened.notices.is_empty(), "{:?}", opened.notices);
}

#[test]
fn a_newer_spool_format_is_refused_and_left_alone() {
    let dir = TempDir::new().unwrap();
    let path = spool_in(&dir);
    spool_with_data(&path);
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn
                .open_table(redb::TableDefinition::<&str, &str>::new("meta"))
                .unwrap();
            t.insert("format_version", "2").unwrap();
        }
        txn.commit().unwrap();
    }
    match Spool::open(&path, &identity()).unwrap_err() {
        e @ SpoolOpenError::NewerFormat { .. } => {
            assert!(e.to_string().contains("newer"), "{e}");
            assert!(!e.nothing_existing_was_refused());
        }
        other => panic!("{other:?}"),
    }
    // Left where it was, its data as it was (redb may have rewritten its own bookkeeping).
    assert_no_file_moved_aside(&path);
    assert_eq!(statuses_in(&path).len(), 50);
    let db = redb::ReadOnlyDatabase::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn
        .open_table(redb::TableDefinition::<&str, &str>::new("meta"))
        .unwrap();
    assert_eq!(meta.get("format_version").unwrap().unwrap().value(), "2");
}

#[test]
fn a_file_from_a_newer_redb_is_refused_and_left_alone() {
    let dir = TempDir::new().unwrap();
    let path = spool_in(&dir);
    let mut bytes = spool_with_data(&path);
    // Both commit slots say file format 4 (redb's super-header: slots at 64 and 192, version first).
    bytes[64] = 4;
    bytes[192] = 4;
    fs::write(&path, &bytes).unwrap();
    match Spool::open(&path, &identity()).unwrap_err() {
        SpoolOpenError::NewerFormat { found, .. } => assert!(found.contains('4'), "{found}"),
        other => panic!("{other:?}"),
    }
    assert_same_bytes(&fs::read(&path).unwrap(), &bytes, "left alone");
    assert_no_file_moved_aside(&path);
    // One slot alone saying so is damage, not a newer format: moved aside.
    bytes[192] = 3;
    fs::write(&path, &bytes).unwrap();
    let opened = open(&path);
    assert!(
        opened
            .notices
            .iter()
            .any(|n| matches!(n, SpoolNotice::MovedAside { .. }))
            || ids(&opened).len() == 50,
        "{:?}",
        opened.notices
    );
}

fn assert_no_file_moved_aside(path: &Path) {
    for entry in fs::read_dir(path.parent().unwrap()).unwrap() {
        let p = entry.unwrap().path();
        assert!(
            !p.to_string_lossy().contains(".corrupt-"),
            "{}",
            p.display()
        );
    }
}

/// Root ignores permission bits, so a file it may not open is made with the immutable attribute (which binds
/// root too); as another user, mode 000 does it.
#[test]
fn a_spool_that_may_not_be_opened_is_an_error_and_left_alone() {
    let dir = TempDir::new().unwrap();
    let path = spool_in(&dir);
    let before = spool_with_data(&path);
    let is_root = fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let _guard = if is_root {
        let ok = Command::new("chattr")
            .arg("+i")
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            services::missing(
                "permission denied as root",
                &format!("`chattr +i` on {} (to deny root access)", path.display()),
            );
            return;
        }
        Some(Immutable(path.clone()))
    } else {
        fs::set_permissions(&path, fs::Permissions::from_mode(0o000)).unwrap();
        None
    };
    let err = Spool::open(&path, &identity()).unwrap_err();
    match &err {
        SpoolOpenError::Io { source, step, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
            assert_eq!(*step, OpenStep::ReadFile);
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.nothing_existing_was_refused());
    drop(_guard);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    assert_same_bytes(&fs::read(&path).unwrap(), &before, "left alone");
    assert_no_file_moved_aside(&path);
}

struct Immutable(PathBuf);

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn a_path_through_a_file_or_to_a_directory_is_an_error() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("plain-file");
    fs::write(&file, b"x").unwrap();
    let err = Spool::open(&file.join("sub").join("x.spool"), &identity()).unwrap_err();
    assert!(
        matches!(
            err,
            SpoolOpenError::Io {
                step: OpenStep::CreateDirectory,
                ..
            }
        ),
        "{err:?}"
    );
    // A default location that cannot be created: the program runs from memory.
    assert!(err.nothing_existing_was_refused());

    let as_dir = dir.path().join("a-directory.spool");
    fs::create_dir(&as_dir).unwrap();
    let err = Spool::open(&as_dir, &identity()).unwrap_err();
    assert!(matches!(err, SpoolOpenError::NotAFile { .. }), "{err:?}");
    assert!(!err.nothing_existing_was_refused());
    assert!(as_dir.is_dir());
    let err = Spool::open(&dir.path().join(".."), &identity()).unwrap_err();
    assert!(matches!(err, SpoolOpenError::NotAFile { .. }), "{err:?}");
}

/// A tmpfs mounted for one test, unmounted when dropped. `None` where mounting is not allowed (not root).
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(options: &str) -> Option<Tmpfs> {
        let dir = TempDir::new().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
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
fn a_read_only_file_system_is_an_error_and_the_spool_left_alone() {
    let Some(fs_) = Tmpfs::mount("size=1m,mode=0700") else {
        services::missing("read-only file system", "the right to mount a tmpfs (root)");
        return;
    };
    let path = fs_.path().join("x.spool");
    let before = spool_with_data(&path);
    let ok = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(fs_.path())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "remount read-only");
    let err = Spool::open(&path, &identity()).unwrap_err();
    match &err {
        SpoolOpenError::Io { source, .. } => {
            assert_eq!(
                source.kind(),
                std::io::ErrorKind::ReadOnlyFilesystem,
                "{err}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_same_bytes(&fs::read(&path).unwrap(), &before, "left alone");
}

/// Fills the file system holding `dir` with a file, returning its path.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut f = File::create(&filler).unwrap();
    let chunk = vec![0xABu8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    filler
}

/// A status carrying `bytes` of text (like a job's output in `miner_response`).
fn sized_status(id: u64, bytes: usize) -> SpooledStatus {
    let mut update = JobStatusUpdate::new(format!("job-{id}"), JobStatus::Failed);
    update
        .metadata
        .extra
        .insert("blob".to_owned(), Value::String("x".repeat(bytes)));
    SpooledStatus { id, update }
}

fn big_status(id: u64) -> SpooledStatus {
    sized_status(id, 64 * 1024)
}

#[test]
fn a_full_file_system_fails_the_commit_and_a_later_snapshot_succeeds() {
    let Some(fs_) = Tmpfs::mount("size=4m,mode=0700") else {
        services::missing("full file system", "the right to mount a tmpfs (root)");
        return;
    };
    let path = fs_.path().join("x.spool");
    let mut opened = open(&path);
    opened
        .spool
        .commit(&SpoolBatch {
            put_statuses: vec![status(1, "a", JobStatus::Accepted)],
            ..SpoolBatch::default()
        })
        .unwrap();
    let filler = fill(fs_.path());
    let err = opened
        .spool
        .commit(&SpoolBatch {
            put_statuses: (2..6).map(big_status).collect(),
            ..SpoolBatch::default()
        })
        .unwrap_err();
    assert!(opened.spool.is_stale());
    eprintln!("full disk: {err}");
    assert_eq!(
        err.io_error_kind(),
        Some(std::io::ErrorKind::StorageFull),
        "{err}"
    );
    fs::remove_file(&filler).unwrap();
    eprintln!(
        "after freeing: spool {} B; df: {}",
        opened.spool.size_bytes().unwrap(),
        String::from_utf8_lossy(&Command::new("df").arg(fs_.path()).output().unwrap().stdout)
    );
    // Memory holds everything; the next commit is a snapshot of it.
    let snapshot = SpoolBatch::snapshot(
        std::iter::once(status(1, "a", JobStatus::Accepted))
            .chain((2..6).map(big_status))
            .collect(),
        vec![job("a")],
    );
    opened.spool.commit(&snapshot).unwrap();
    assert!(!opened.spool.is_stale());
    drop(opened);
    let reopened = open(&path);
    assert_eq!(ids(&reopened), [1, 2, 3, 4, 5]);
    assert_eq!(reopened.recovered.statuses[4], big_status(5));
}

#[test]
fn a_new_spool_on_a_full_file_system_is_a_failure_to_create() {
    let Some(fs_) = Tmpfs::mount("size=1m,mode=0700") else {
        services::missing("full file system", "the right to mount a tmpfs (root)");
        return;
    };
    let _filler = fill(fs_.path());
    let err = Spool::open(&fs_.path().join("x.spool"), &identity()).unwrap_err();
    match &err {
        SpoolOpenError::Io { source, step, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::StorageFull, "{err}");
            assert_eq!(*step, OpenStep::Initialise, "{err}");
        }
        other => panic!("{other:?}"),
    }
    // For the default location: run from memory with a warning.
    assert!(err.nothing_existing_was_refused());
}

#[tokio::test]
async fn the_worker_reports_a_full_file_system_and_recovers_when_space_returns() {
    let Some(fs_) = Tmpfs::mount("size=4m,mode=0700") else {
        services::missing("full file system", "the right to mount a tmpfs (root)");
        return;
    };
    let path = fs_.path().join("x.spool");
    let (worker, mut results) = SpoolWorker::spawn(open(&path).spool).unwrap();
    worker.submit(
        1,
        SpoolBatch {
            put_statuses: vec![status(1, "a", JobStatus::Accepted)],
            ..SpoolBatch::default()
        },
    );
    let first = results.recv().await.unwrap();
    assert_eq!((first.up_to, first.result.clone()), (1, Ok(())));
    let filler = fill(fs_.path());
    worker.submit(
        2,
        SpoolBatch {
            put_statuses: (2..6).map(big_status).collect(),
            ..SpoolBatch::default()
        },
    );
    let failed = results.recv().await.unwrap();
    assert_eq!(failed.up_to, 2);
    let message = failed.result.unwrap_err();
    assert!(message.contains("No space left"), "{message}");
    fs::remove_file(&filler).unwrap();
    worker.submit(
        3,
        SpoolBatch::snapshot(
            (1..6)
                .map(|i| status(i, "a", JobStatus::Accepted))
                .collect(),
            vec![],
        ),
    );
    let recovered = results.recv().await.unwrap();
    assert_eq!((recovered.up_to, recovered.result), (3, Ok(())));
    let spool = worker.finish(Duration::from_secs(30)).unwrap();
    drop(spool);
    assert_eq!(ids(&open(&path)), [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn the_worker_commits_every_batch_in_order_and_reports_each_id_once() {
    let dir = TempDir::new().unwrap();
    let path = spool_in(&dir);
    let (worker, mut results) = SpoolWorker::spawn(open(&path).spool).unwrap();
    // A burst: batches submitted while a commit is under way queue and are merged.
    for i in 1..=200u64 {
        worker.submit(
            i,
            SpoolBatch {
                put_statuses: vec![status(i, "a", JobStatus::Accepted)],
                remove_statuses: if i > 1 && i % 2 == 0 {
                    vec![i - 1]
                } else {
                    vec![]
                },
                ..SpoolBatch::default()
            },
        );
    }
    let mut covered = 0;
    let mut last = 0;
    while last < 200 {
        let c = tokio::time::timeout(Duration::from_secs(60), results.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(c.up_to > last, "{} after {last}", c.up_to);
        assert_eq!(c.result, Ok(()));
        assert!(c.file_bytes.is_some_and(|b| b > 0));
        covered += c.batches;
        last = c.up_to;
    }
    assert_eq!(covered, 200);
    drop(worker);
    // Each odd id is removed by the next (even) batch.
    let expected: Vec<u64> = (1..=200).filter(|i| i % 2 == 0).collect();
    assert_eq!(ids(&open(&path)), expected);
}

#[tokio::test]
async fn dropping_the_worker_finishes_the_queued_commits() {
    let dir = TempDir::new().unwrap();
    let path = spool_in(&dir);
    let (worker, results) = SpoolWorker::spawn(open(&path).spool).unwrap();
    drop(results);
    for i in 1..=20u64 {
        worker.submit(
            i,
            SpoolBatch {
                put_jobs: vec![job(&format!("j{i}"))],
                ..SpoolBatch::default()
            },
        );
    }
    drop(worker);
    assert_eq!(open(&path).recovered.jobs.len(), 20);
}

#[test]
fn compaction_shrinks_an_emptied_spool_and_keeps_it_usable() {
    let dir = TempDir::new().unwrap();
    let path = spool_in(&dir);
    let mut opened = open(&path);
    let fresh = opened.spool.size_bytes().unwrap();
    for round in 0..20u64 {
        opened
            .spool
            .commit(&SpoolBatch {
                put_statuses: (0..100)
                    .map(|i| sized_status(round * 100 + i, 2048))
                    .collect(),
                ..SpoolBatch::default()
            })
            .unwrap();
        opened
            .spool
            .commit(&SpoolBatch {
                remove_statuses: (0..100).map(|i| round * 100 + i).collect(),
                ..SpoolBatch::default()
            })
            .unwrap();
    }
    assert!(opened.spool.is_empty());
    let grown = opened.spool.size_bytes().unwrap();
    let c = opened.spool.compact_if_empty().unwrap().unwrap();
    eprintln!("fresh {fresh} B, grown {grown} B, compacted {} B", c.after);
    assert_eq!(c.before, grown);
    assert!(c.after < grown / 4, "{c:?}");
    assert_eq!(c.after, opened.spool.size_bytes().unwrap());
    // Not empty: nothing done.
    opened
        .spool
        .commit(&SpoolBatch {
            put_statuses: vec![status(1, "a", JobStatus::Accepted)],
            ..SpoolBatch::default()
        })
        .unwrap();
    assert_eq!(opened.spool.compact_if_empty().unwrap(), None);
    drop(opened);
    assert_eq!(ids(&open(&path)), [1]);
}

#[test]
fn the_default_path_is_under_the_state_directory() {
    let p = default_path(Path::new("/var/lib/x"), HOTKEY, URL).unwrap();
    assert!(p.starts_with("/var/lib/x/facilitator-client"));
    let name = p.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with(&format!("{HOTKEY}-")) && name.ends_with(".spool"),
        "{name}"
    );
}

// ---- measurements (the issue's figures); not assertions of speed ----

fn vm_hwm_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `cargo test --release --test spool -- --ignored --exact measure_commit_fsync_time --nocapture`
#[test]
#[ignore = "a measurement"]
fn measure_commit_fsync_time() {
    let dir = TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("m.spool");
    let mut opened = open(&path);
    let mut took = Vec::new();
    for i in 0..100u64 {
        let batch = SpoolBatch {
            put_statuses: vec![status(i, "a", JobStatus::Accepted)],
            remove_statuses: i.checked_sub(1).into_iter().collect(),
            ..SpoolBatch::default()
        };
        let t = Instant::now();
        opened.spool.commit(&batch).unwrap();
        took.push(t.elapsed());
    }
    took.sort();
    println!(
        "commit of one status (+ one remove), 100 commits on {}: min {:?}, median {:?}, p90 {:?}, max {:?}",
        path.display(),
        took[0],
        took[50],
        took[90],
        took[99]
    );
}

/// `cargo test --release --test spool -- --ignored --exact measure_file_size_after_100k_statuses --nocapture`
#[test]
#[ignore = "a measurement"]
fn measure_file_size_after_100k_statuses() {
    // (statuses in flight, statuses put per commit): one at a time, and a burst at 256 in flight.
    for (in_flight, per_commit) in [(16u64, 1u64), (256, 16)] {
        let dir = TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let path = dir.path().join("m.spool");
        let mut opened = open(&path);
        let fresh = opened.spool.size_bytes().unwrap();
        let total = 100_000u64;
        let mut max = 0;
        let mut next = 0;
        let mut commits = 0;
        // Each commit puts `per_commit` new statuses and removes those acknowledged: everything older than the
        // newest `in_flight`.
        while next < total + in_flight {
            let put: Vec<u64> = (next..(next + per_commit).min(total)).collect();
            let removed: Vec<u64> = (next.saturating_sub(in_flight)
                ..(next + per_commit).saturating_sub(in_flight))
                .filter(|id| *id < total)
                .collect();
            opened
                .spool
                .commit(&SpoolBatch {
                    put_statuses: put
                        .iter()
                        .map(|&i| status(i, &format!("job-{}", i / 4), JobStatus::Accepted))
                        .collect(),
                    remove_statuses: removed,
                    ..SpoolBatch::default()
                })
                .unwrap();
            next += per_commit;
            commits += 1;
            max = max.max(opened.spool.size_bytes().unwrap());
        }
        assert!(opened.spool.is_empty(), "{:?}", opened.spool.len());
        let before = opened.spool.size_bytes().unwrap();
        let t = Instant::now();
        let c = opened.spool.compact_if_empty().unwrap().unwrap();
        println!(
            "{in_flight} in flight, {per_commit} per commit ({commits} commits): fresh spool {fresh} B; after \
             100,000 statuses put and removed {before} B without compaction (largest seen {max} B), {} B after \
             compaction ({:?})",
            c.after,
            t.elapsed()
        );
    }
}

/// `cargo test --release --test spool -- --ignored --exact measure_peak_rss_of_100k_commits --nocapture`
#[test]
#[ignore = "a measurement"]
fn measure_peak_rss_of_100k_commits() {
    let dir = TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("m.spool");
    let before = vm_hwm_kib();
    let mut opened = open(&path);
    let after_open = vm_hwm_kib();
    for i in 0..100_000u64 {
        let batch = SpoolBatch {
            put_statuses: vec![status(i, &format!("job-{}", i / 4), JobStatus::Accepted)],
            put_jobs: (i % 4 == 0)
                .then(|| job(&format!("job-{}", i / 4)))
                .into_iter()
                .collect(),
            remove_statuses: i.checked_sub(64).into_iter().collect(),
            remove_jobs: (i % 4 == 0 && i >= 64)
                .then(|| format!("job-{}", (i - 64) / 4))
                .into_iter()
                .collect(),
            ..SpoolBatch::default()
        };
        opened.spool.commit(&batch).unwrap();
    }
    let after = vm_hwm_kib();
    println!(
        "VmHWM: {before} kB before, {after_open} kB after open, {after} kB after 100,000 commits (64 statuses, 16 \
         jobs in flight): growth {} kB",
        after - before
    );
}
