//! The spool file: one redb database per hotkey and facilitator, holding the unacknowledged status updates of
//! accepted jobs and the jobs still running, so that a crash loses neither.
//!
//! Owns: opening (directory 0700, file 0600, the one-process lock with the owner's PID, the owner check, moving a
//! corrupt file aside), one durable commit per [`SpoolBatch`], and compaction once the spool is empty. Must never:
//! delete or overwrite a file it cannot read (it is renamed aside, never clobbered), move aside a file it was merely
//! denied access to or that a newer version wrote, open a spool that belongs to another hotkey or URL, or panic on
//! anything the disk does. It does no I/O on the event loop's thread: the runtime calls it from
//! [`super::SpoolWorker`].
//!
//! # Why redb
//!
//! The spool needs crash-safe commits (a `kill -9` or a power cut in the middle of a write must leave the last
//! committed state readable), checksums (a torn or bit-rotted file must be detected, never replayed as garbage), an
//! fsync per commit, one writer, a small and bounded memory footprint, and no threads of its own. The candidates:
//!
//! - **redb** (chosen): a single-file copy-on-write B-tree in pure Rust. Every commit writes new pages and then
//!   flips between two checksummed commit slots, so a crash at any point leaves the previous commit intact;
//!   `Durability::Immediate` fsyncs before `commit` returns; page checksums are verified on open
//!   (`set_check_integrity_on_open`), so a corrupt file is an error we can act on, not a panic. No background
//!   threads, no C code, a cache whose size we set. Its file-format stability policy (upgrades are explicit) and its
//!   crash and fuzz testing are documented upstream.
//! - **sled**: its 0.34 release line is old and its own README warns about the on-disk format and about space use;
//!   it runs background flusher threads. Rejected.
//! - **SQLite** (`rusqlite`): excellent durability, but a C library to build and link (the crate otherwise needs
//!   no C toolchain beyond what `ring` uses), a WAL or rollback journal beside the file to get right, and more
//!   than we need. A close second.
//! - **fjall**: an LSM tree with a journal, compaction and flush worker threads: the wrong shape for a few hundred
//!   small records that are mostly deleted soon after they are written.
//! - **A hand-written append-only log**: the least code to start with, but every property above (torn-tail
//!   detection, checksums, compaction by rewrite-and-rename with the directory fsync, crash testing of all that)
//!   would be ours to get right and to prove; the issue asks for none unless shown safer, and it would not be.
//!
//! # The file
//!
//! Tables (format version [`FORMAT_VERSION`]):
//! - `meta` (`&str -> &str`): `format_version`, `hotkey` (SS58), `url` (normalised, [`super::normalise_url`]),
//!   `created` (RFC 3339, UTC), `program` (name and version that created it).
//! - `statuses` (`u64 -> &str`): status id to the `JobStatusUpdate`'s JSON (the message without `message_type`).
//! - `jobs` (`&str -> &str`): uuid to the [`JobRecord`]'s JSON.
//!
//! Beside it, `<file>.lock` holds the owner's PID while a process has the spool open (an exclusive `flock`, so a
//! process that dies releases it; the file itself stays, harmless).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    StorageError, TableDefinition, TableError,
};

use super::path::{SpoolUrlError, normalise_url};
use super::record::{JobRecord, Recovered, SpoolBatch, SpooledStatus};
use crate::protocol::JobStatusUpdate;

/// The spool's own record format. A file with a higher `format_version` is refused, never moved aside: a newer
/// client wrote it and a newer client can read it.
pub const FORMAT_VERSION: u32 = 1;

/// redb's page cache. The spool holds little live data and every commit is written through, so a small cache costs
/// nothing measurable and keeps the client's peak RSS bounded with the spool on.
pub const CACHE_BYTES: usize = 2 << 20;

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const STATUSES: TableDefinition<u64, &str> = TableDefinition::new("statuses");
const JOBS: TableDefinition<&str, &str> = TableDefinition::new("jobs");

const META_FORMAT_VERSION: &str = "format_version";
const META_HOTKEY: &str = "hotkey";
const META_URL: &str = "url";
const META_CREATED: &str = "created";
const META_PROGRAM: &str = "program";

/// The redb file format this build reads and writes (redb 2.x onwards writes 3). A file whose commit slots both
/// carry a higher version was written by a newer redb, so by a newer client: refused, never moved aside.
const REDB_FILE_FORMAT: u8 = 3;
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];
/// Offsets of the version byte of redb's two commit slots (its documented super-header layout).
const REDB_SLOT_VERSION_OFFSETS: [usize; 2] = [64, 192];

/// Whose spool this is: a spool records the hotkey and facilitator it was created for and refuses any other, so
/// production's statuses are never replayed to staging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolIdentity {
    /// The validator hotkey's SS58 address.
    pub hotkey_ss58: String,
    /// The facilitator URL, as configured ([`Spool::open`] normalises it).
    pub url: String,
}

/// Something the operator should hear about at start; the spool opened nonetheless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpoolNotice {
    /// The spool file grants access to other users (job requests carry users' environment variables).
    LooseFileMode {
        /// The spool file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The spool's directory grants access to other users.
    LooseDirectoryMode {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file could not be read as a spool (corrupt, truncated, not a spool): it was renamed and the client
    /// starts with an empty spool. Log it as an error: what it held is not replayed.
    MovedAside {
        /// Where the spool was.
        path: PathBuf,
        /// Where the unreadable file is now.
        moved_to: PathBuf,
        /// Why it could not be read.
        reason: String,
    },
}

impl SpoolNotice {
    /// Whether to log this as an error rather than a warning (statuses may have been lost).
    pub fn is_error(&self) -> bool {
        matches!(self, SpoolNotice::MovedAside { .. })
    }
}

impl std::fmt::Display for SpoolNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpoolNotice::LooseFileMode { path, mode } => write!(
                f,
                "the spool {} has mode {mode:04o}: other users may read job requests and their environment \
                 variables; run `chmod 600 {}`",
                path.display(),
                path.display()
            ),
            SpoolNotice::LooseDirectoryMode { path, mode } => write!(
                f,
                "the spool's directory {} has mode {mode:04o}: other users may list, replace or read what is in \
                 it; run `chmod 700 {}` or keep the spool elsewhere",
                path.display(),
                path.display()
            ),
            SpoolNotice::MovedAside {
                path,
                moved_to,
                reason,
            } => write!(
                f,
                "the spool {} could not be read ({reason}): moved it to {} and started with an empty spool; \
                 the statuses it held are not replayed",
                path.display(),
                moved_to.display()
            ),
        }
    }
}

/// What [`SpoolOpenError::Io`] was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenStep {
    /// Creating the spool's directory.
    CreateDirectory,
    /// Creating the lock file (it did not exist).
    CreateLockFile,
    /// Opening, locking or writing the existing lock file.
    LockFile,
    /// Creating the spool file (it did not exist).
    CreateFile,
    /// Opening or reading the existing spool file.
    ReadFile,
    /// Writing the new spool's header.
    Initialise,
    /// Renaming an unreadable spool aside.
    MoveAside,
}

impl std::fmt::Display for OpenStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OpenStep::CreateDirectory => "cannot create the directory",
            OpenStep::CreateLockFile => "cannot create the lock file",
            OpenStep::LockFile => "cannot use the lock file",
            OpenStep::CreateFile => "cannot create the file",
            OpenStep::ReadFile => "cannot read the file",
            OpenStep::Initialise => "cannot write the new spool",
            OpenStep::MoveAside => "cannot move the unreadable spool aside",
        })
    }
}

/// Why a spool cannot be used. Every variant is exit 2 for an explicitly configured spool; see
/// [`SpoolOpenError::nothing_existing_was_refused`] for the default location.
#[derive(Debug, thiserror::Error)]
pub enum SpoolOpenError {
    /// The facilitator URL cannot name a spool.
    #[error(transparent)]
    InvalidUrl(#[from] SpoolUrlError),
    /// Another process has this spool open.
    #[error(
        "the spool is in use by {}: its lock {} is held; stop that client or give this one another --spool",
        match pid { Some(pid) => format!("process {pid}"), None => "another process (it wrote no PID)".to_owned() },
        lock_file.display()
    )]
    Locked {
        /// The lock file.
        lock_file: PathBuf,
        /// The PID it holds, if it could be read.
        pid: Option<u32>,
    },
    /// The spool was written for another hotkey or facilitator.
    #[error(
        "the spool {} belongs to hotkey {spool_hotkey} at {spool_url}, not to this client's hotkey {our_hotkey} at \
         {our_url}: point --spool at another file, or check the hotkey and --url",
        path.display()
    )]
    WrongOwner {
        /// The spool file.
        path: PathBuf,
        /// The hotkey it records.
        spool_hotkey: String,
        /// The normalised URL it records.
        spool_url: String,
        /// This client's hotkey.
        our_hotkey: String,
        /// This client's normalised URL.
        our_url: String,
    },
    /// A newer version of the client wrote this spool.
    #[error(
        "the spool {} was written by a newer facilitator-client ({found}; this one reads {supported}): run the \
         newer client, or move the file away to start empty",
        path.display()
    )]
    NewerFormat {
        /// The spool file.
        path: PathBuf,
        /// What it records.
        found: String,
        /// What this build reads.
        supported: String,
    },
    /// The spool path is not a regular file.
    #[error("the spool {} is not a regular file: give --spool a file path", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The file system refused (permission denied, read-only, I/O error, a path component that is not a
    /// directory).
    #[error("spool {}: {step}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        step: OpenStep,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The store refused for a reason that is neither an unreadable file nor a file-system error.
    #[error("spool {}: {message}", path.display())]
    Store {
        /// The spool file.
        path: PathBuf,
        /// What the store said.
        message: String,
    },
}

impl SpoolOpenError {
    /// `true` when the spool could not be *created* (its directory, a new file or lock file, or a new spool's
    /// first commit), and nothing that already existed was refused, locked or unreadable. For the default location
    /// this means running from memory with a warning (a read-only container, no writable home, a full disk); every
    /// other error is exit 2.
    pub fn nothing_existing_was_refused(&self) -> bool {
        matches!(
            self,
            SpoolOpenError::Io {
                step: OpenStep::CreateDirectory
                    | OpenStep::CreateLockFile
                    | OpenStep::CreateFile
                    | OpenStep::Initialise,
                ..
            }
        )
    }
}

/// A commit or compaction that did not happen. The file still holds the last successful commit.
#[derive(Debug, thiserror::Error)]
#[error("spool {}: {action}: {cause}", path.display())]
pub struct SpoolError {
    path: PathBuf,
    action: &'static str,
    // Boxed: redb's error is large, and this travels in every commit's `Result`.
    cause: Box<Cause>,
}

#[derive(Debug, thiserror::Error)]
enum Cause {
    #[error("{0}")]
    Store(#[from] redb::Error),
    #[error("cannot encode a record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("cannot reopen it: {0}")]
    Reopen(String),
    #[error("the store panicked: {0}")]
    Panicked(String),
}

impl SpoolError {
    /// The file-system error behind this one, if any (`StorageFull` for a full disk).
    pub fn io_error_kind(&self) -> Option<io::ErrorKind> {
        match &*self.cause {
            Cause::Store(redb::Error::Io(e)) => Some(e.kind()),
            _ => None,
        }
    }
}

/// An open spool, exclusively this process's until dropped.
pub struct Spool {
    path: PathBuf,
    /// `None` after a failure that may have left redb's in-memory state unusable (it answers `PreviousIo` until
    /// reopened): the next commit reopens.
    db: Option<Database>,
    /// Held for the spool's life: the `flock` is the one-process guarantee.
    _lock: File,
    statuses: u64,
    jobs: u64,
    stale: bool,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("path", &self.path)
            .field("open", &self.db.is_some())
            .field("statuses", &self.statuses)
            .field("jobs", &self.jobs)
            .field("stale", &self.stale)
            .finish()
    }
}

/// What [`Spool::open`] found.
#[derive(Debug)]
pub struct OpenedSpool {
    /// The spool, ready for commits.
    pub spool: Spool,
    /// What it held: replay these statuses first, then report the jobs.
    pub recovered: Recovered,
    /// Warnings and errors to log (the spool opened regardless).
    pub notices: Vec<SpoolNotice>,
}

/// The outcome of [`Spool::compact_if_empty`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    /// File length before, bytes.
    pub before: u64,
    /// File length after, bytes.
    pub after: u64,
}

/// Why one open attempt did not produce a spool.
enum Attempt {
    /// The file cannot be read as a spool: move it aside and start empty.
    Unreadable(String),
    Fatal(SpoolOpenError),
}

impl From<SpoolOpenError> for Attempt {
    fn from(e: SpoolOpenError) -> Self {
        Attempt::Fatal(e)
    }
}

impl Spool {
    /// Opens (or creates) the spool at `path` for `identity`, and reads what it holds.
    ///
    /// Creates the directory (0700) and the file (0600) if missing; takes the lock `<path>.lock` for the spool's
    /// life; refuses a spool of another hotkey or URL, a newer format, a file it may not read. A file that is
    /// corrupt, truncated or not a spool is renamed to `<name>.corrupt-<UTC time>-<pid>` (with a counter if that
    /// exists) and an empty spool takes its place: see [`SpoolNotice::MovedAside`].
    pub fn open(path: &Path, identity: &SpoolIdentity) -> Result<OpenedSpool, SpoolOpenError> {
        let our_url = normalise_url(&identity.url)?;
        if path.file_name().is_none() {
            // `/`, `..`, `dir/..`: no file name to put a spool (and its `.lock`) under.
            return Err(SpoolOpenError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let mut notices = Vec::new();
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|source| SpoolOpenError::Io {
                    path: dir.clone(),
                    step: OpenStep::CreateDirectory,
                    source,
                })?;
        }
        if let Ok(meta) = fs::metadata(&dir)
            && meta.mode() & 0o077 != 0
        {
            notices.push(SpoolNotice::LooseDirectoryMode {
                path: dir.clone(),
                mode: meta.mode() & 0o7777,
            });
        }
        let lock = acquire_lock(path)?;
        let mut moved = false;
        loop {
            match open_attempt(path, identity, &our_url, &mut notices, !moved) {
                Ok((db, recovered)) => {
                    let spool = Spool {
                        path: path.to_path_buf(),
                        db: Some(db),
                        _lock: lock,
                        statuses: recovered.statuses.len() as u64,
                        jobs: recovered.jobs.len() as u64,
                        stale: false,
                    };
                    return Ok(OpenedSpool {
                        spool,
                        recovered,
                        notices,
                    });
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Unreadable(reason)) if !moved => {
                    let moved_to = move_aside(path).map_err(|source| SpoolOpenError::Io {
                        path: path.to_path_buf(),
                        step: OpenStep::MoveAside,
                        source,
                    })?;
                    notices.push(SpoolNotice::MovedAside {
                        path: path.to_path_buf(),
                        moved_to,
                        reason,
                    });
                    moved = true;
                }
                // A file we have just created cannot be unreadable; do not loop on a store that says otherwise.
                Err(Attempt::Unreadable(reason)) => {
                    return Err(SpoolOpenError::Store {
                        path: path.to_path_buf(),
                        message: format!("a new spool cannot be read back: {reason}"),
                    });
                }
            }
        }
    }

    /// Makes `batch` durable: one write transaction, one fsync. A full snapshot empties the tables first; then puts
    /// apply, then removes (see [`SpoolBatch`]).
    ///
    /// On error nothing of `batch` is in the file (redb commits atomically) and the spool is *stale*: the file lacks
    /// this batch's changes, so the next commit must be a full snapshot of what memory holds for the file to be
    /// right again ([`Spool::is_stale`]). The store is closed after a failure (redb refuses every transaction after an
    /// I/O error until it is reopened) and the next commit reopens it.
    pub fn commit(&mut self, batch: &SpoolBatch) -> Result<(), SpoolError> {
        let result = match catch_unwind(AssertUnwindSafe(|| self.try_commit(batch))) {
            Ok(result) => result,
            Err(panic) => Err(self.error("commit", Cause::Panicked(panic_message(&panic)))),
        };
        match result {
            Ok(()) => {
                if batch.full_snapshot {
                    self.stale = false;
                }
                Ok(())
            }
            Err(e) => {
                self.stale = true;
                self.close_for_reopen();
                Err(e)
            }
        }
    }

    fn try_commit(&mut self, batch: &SpoolBatch) -> Result<(), SpoolError> {
        // Encode before the transaction: an encoding failure then costs no write.
        let statuses: Vec<(u64, String)> = batch
            .put_statuses
            .iter()
            .map(|s| Ok((s.id, serde_json::to_string(&s.update)?)))
            .collect::<Result<_, serde_json::Error>>()
            .map_err(|e| self.error("commit", Cause::Encode(e)))?;
        let jobs: Vec<(&str, String)> = batch
            .put_jobs
            .iter()
            .map(|j| Ok((j.uuid.as_str(), serde_json::to_string(j)?)))
            .collect::<Result<_, serde_json::Error>>()
            .map_err(|e| self.error("commit", Cause::Encode(e)))?;
        self.ensure_open()?;
        let store = |e: redb::Error| SpoolError {
            path: self.path.clone(),
            action: "commit",
            cause: Box::new(Cause::Store(e)),
        };
        let Some(db) = self.db.as_ref() else {
            unreachable!("ensure_open leaves the database open or returns an error")
        };
        let mut txn = db.begin_write().map_err(|e| store(e.into()))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| store(e.into()))?;
        let counts = (|| -> Result<(u64, u64), redb::Error> {
            if batch.full_snapshot {
                txn.delete_table(STATUSES)?;
                txn.delete_table(JOBS)?;
            }
            let mut table = txn.open_table(STATUSES)?;
            for (id, json) in &statuses {
                table.insert(id, json.as_str())?;
            }
            for id in &batch.remove_statuses {
                table.remove(id)?;
            }
            let status_count = table.len()?;
            drop(table);
            let mut table = txn.open_table(JOBS)?;
            for (uuid, json) in &jobs {
                table.insert(uuid, json.as_str())?;
            }
            for uuid in &batch.remove_jobs {
                table.remove(uuid.as_str())?;
            }
            Ok((status_count, table.len()?))
        })()
        .map_err(store)?;
        txn.commit().map_err(|e| store(e.into()))?;
        (self.statuses, self.jobs) = counts;
        Ok(())
    }

    /// When the spool holds nothing (every status acknowledged, every job finished), rewrites the file to hold only
    /// live data and truncates it. `Ok(None)` when it holds something (nothing done). Several fsyncs: call it from
    /// the worker, not the event loop.
    pub fn compact_if_empty(&mut self) -> Result<Option<Compaction>, SpoolError> {
        if !self.is_empty() || self.stale {
            return Ok(None);
        }
        let before = self.size_bytes().unwrap_or(0);
        let result = catch_unwind(AssertUnwindSafe(|| -> Result<(), SpoolError> {
            self.ensure_open()?;
            let Some(db) = self.db.as_mut() else {
                unreachable!("ensure_open leaves the database open or returns an error")
            };
            // Each pass moves pages towards the start; redb says when no further pass would help. Bounded, in
            // case it never does.
            for _ in 0..8 {
                let more = db.compact().map_err(|e| SpoolError {
                    path: self.path.clone(),
                    action: "compact",
                    cause: Box::new(Cause::Store(e.into())),
                })?;
                if !more {
                    break;
                }
            }
            Ok(())
        }));
        let result = match result {
            Ok(result) => result,
            Err(panic) => Err(self.error("compact", Cause::Panicked(panic_message(&panic)))),
        };
        if let Err(e) = result {
            self.close_for_reopen();
            return Err(e);
        }
        Ok(Some(Compaction {
            before,
            after: self.size_bytes().unwrap_or(0),
        }))
    }

    /// Whether the spool holds no status and no job (as of the last successful commit).
    pub fn is_empty(&self) -> bool {
        self.statuses == 0 && self.jobs == 0
    }

    /// Statuses and jobs held, as of the last successful commit.
    pub fn len(&self) -> (u64, u64) {
        (self.statuses, self.jobs)
    }

    /// `true` after a failed commit, until a full snapshot commits: the file then lacks changes that memory holds.
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// Marks the spool stale as a failed commit does (the worker's tests).
    #[cfg(test)]
    pub(crate) fn mark_stale_for_tests(&mut self) {
        self.stale = true;
    }

    /// The file's length in bytes.
    pub fn size_bytes(&self) -> io::Result<u64> {
        fs::metadata(&self.path).map(|m| m.len())
    }

    /// The spool file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file beside it.
    pub fn lock_path(&self) -> PathBuf {
        lock_path(&self.path)
    }

    fn error(&self, action: &'static str, cause: Cause) -> SpoolError {
        SpoolError {
            path: self.path.clone(),
            action,
            cause: Box::new(cause),
        }
    }

    fn ensure_open(&mut self) -> Result<(), SpoolError> {
        if self.db.is_some() {
            return Ok(());
        }
        // The file is ours (we hold the lock, and it was checked at open): reopen without the owner check, and
        // never move it aside mid-run; a file that cannot be reopened stays as it is for the next start to judge.
        let db = match catch_unwind(|| open_redb(&self.path)) {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(self.error("commit", Cause::Reopen(e.to_string()))),
            Err(panic) => {
                return Err(self.error("commit", Cause::Reopen(panic_message(&panic))));
            }
        };
        self.db = Some(db);
        Ok(())
    }

    fn close_for_reopen(&mut self) {
        if let Some(db) = self.db.take() {
            // Errors closing a store that has just failed add nothing; a panic must not escape.
            let _ = catch_unwind(AssertUnwindSafe(|| db.close()));
        }
    }
}

fn open_redb(path: &Path) -> Result<Database, DatabaseError> {
    let mut attempts = 0;
    loop {
        let opened = Database::builder()
            .set_cache_size(CACHE_BYTES)
            // Verify every page's checksum at open: a file altered since redb wrote it is then an error, not a
            // panic or garbage replayed. The spool holds only live data, so this reads little.
            .set_check_integrity_on_open(true)
            .create(path);
        match opened {
            // redb locks the file too; we hold the lock file, so only a forked child can hold it (see
            // `acquire_lock`), for an instant.
            Err(DatabaseError::DatabaseAlreadyOpen) if attempts < LOCK_ATTEMPTS => {
                attempts += 1;
                std::thread::sleep(LOCK_RETRY_PAUSE);
            }
            other => return other,
        }
    }
}

/// One attempt to open the spool file: `Unreadable` sends the caller to move it aside and try once more.
fn open_attempt(
    path: &Path,
    identity: &SpoolIdentity,
    our_url: &str,
    notices: &mut Vec<SpoolNotice>,
    first: bool,
) -> Result<(Database, Recovered), Attempt> {
    let io = |step, source| SpoolOpenError::Io {
        path: path.to_path_buf(),
        step,
        source,
    };
    let len = match fs::metadata(path) {
        Ok(meta) if !meta.is_file() => {
            return Err(SpoolOpenError::NotAFile {
                path: path.to_path_buf(),
            }
            .into());
        }
        Ok(meta) => {
            if first && meta.mode() & 0o077 != 0 {
                notices.push(SpoolNotice::LooseFileMode {
                    path: path.to_path_buf(),
                    mode: meta.mode() & 0o7777,
                });
            }
            meta.len()
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| io(OpenStep::CreateFile, e))?;
            sync_parent_dir(path);
            0
        }
        Err(e) => return Err(io(OpenStep::ReadFile, e).into()),
    };
    // Open it ourselves first: a permission problem is then reported as such, before redb wraps it.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io(OpenStep::ReadFile, e))?;
    if let Some(found) = newer_redb_format(&mut file).map_err(|e| io(OpenStep::ReadFile, e))? {
        return Err(SpoolOpenError::NewerFormat {
            path: path.to_path_buf(),
            found: format!("redb file format {found}"),
            supported: format!("redb file format {REDB_FILE_FORMAT}"),
        }
        .into());
    }
    drop(file);

    let db = match catch_unwind(|| open_redb(path)) {
        Ok(Ok(db)) => db,
        // redb writes a new database's first pages as it opens it: a disk that refuses them refuses a new spool.
        Ok(Err(e)) => {
            return Err(match classify_open_error(path, e) {
                Attempt::Fatal(SpoolOpenError::Io {
                    path,
                    step: OpenStep::ReadFile,
                    source,
                }) if len == 0 => Attempt::Fatal(SpoolOpenError::Io {
                    path,
                    step: OpenStep::Initialise,
                    source,
                }),
                other => other,
            });
        }
        Err(panic) => {
            return Err(Attempt::Unreadable(format!(
                "the store panicked reading it: {}",
                panic_message(&panic)
            )));
        }
    };
    match read_spool(path, &db, identity, our_url, len == 0) {
        Ok(recovered) => Ok((db, recovered)),
        Err(e) => {
            // Close before the caller renames the file, so nothing holds it open under its new name.
            let _ = catch_unwind(AssertUnwindSafe(|| db.close()));
            Err(e)
        }
    }
}

/// Reads and checks `meta`, then the records. A brand-new database gets its `meta`.
fn read_spool(
    path: &Path,
    db: &Database,
    identity: &SpoolIdentity,
    our_url: &str,
    new_file: bool,
) -> Result<Recovered, Attempt> {
    let read = db.begin_read().map_err(|e| classify(path, e.into()))?;
    let has_tables = read
        .list_tables()
        .map_err(|e| classify(path, e.into()))?
        .next()
        .is_some();
    if new_file || !has_tables {
        // A new file, or one whose creation was interrupted before its first commit: nothing to lose.
        drop(read);
        initialise(db, identity, our_url).map_err(|e| {
            Attempt::Fatal(match e {
                redb::Error::Io(source) => SpoolOpenError::Io {
                    path: path.to_path_buf(),
                    step: OpenStep::Initialise,
                    source,
                },
                other => SpoolOpenError::Store {
                    path: path.to_path_buf(),
                    message: format!("cannot write the new spool: {other}"),
                },
            })
        })?;
        return Ok(Recovered::default());
    }
    let meta = match read.open_table(META) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => {
            return Err(Attempt::Unreadable(
                "not a spool: it has no meta table".to_owned(),
            ));
        }
        Err(e) => return Err(classify(path, e.into())),
    };
    let get = |key: &str| -> Result<Option<String>, Attempt> {
        meta.get(key)
            .map(|v| v.map(|v| v.value().to_owned()))
            .map_err(|e| classify(path, e.into()))
    };
    let version = get(META_FORMAT_VERSION)?.ok_or_else(|| {
        Attempt::Unreadable("not a spool: its meta table has no format version".to_owned())
    })?;
    match version.parse::<u32>() {
        Ok(v) if v > FORMAT_VERSION => {
            return Err(Attempt::Fatal(SpoolOpenError::NewerFormat {
                path: path.to_path_buf(),
                found: format!("spool format {v}"),
                supported: format!("spool format {FORMAT_VERSION}"),
            }));
        }
        Ok(v) if v >= 1 => {}
        _ => {
            return Err(Attempt::Unreadable(format!(
                "not a spool: format version {version:?}"
            )));
        }
    }
    let (Some(spool_hotkey), Some(spool_url)) = (get(META_HOTKEY)?, get(META_URL)?) else {
        return Err(Attempt::Unreadable(
            "not a spool: its meta table names no hotkey or URL".to_owned(),
        ));
    };
    if spool_hotkey != identity.hotkey_ss58 || spool_url != our_url {
        return Err(Attempt::Fatal(SpoolOpenError::WrongOwner {
            path: path.to_path_buf(),
            spool_hotkey,
            spool_url,
            our_hotkey: identity.hotkey_ss58.clone(),
            our_url: our_url.to_owned(),
        }));
    }

    let mut recovered = Recovered::default();
    match read.open_table(STATUSES) {
        Ok(table) => {
            for entry in table.iter().map_err(|e| classify(path, e.into()))? {
                let (id, json) = entry.map_err(|e| classify(path, e.into()))?;
                let id = id.value();
                let update: JobStatusUpdate = serde_json::from_str(json.value()).map_err(|e| {
                    Attempt::Unreadable(format!("status {id} is not a status update: {e}"))
                })?;
                recovered.statuses.push(SpooledStatus { id, update });
            }
        }
        Err(TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(classify(path, e.into())),
    }
    match read.open_table(JOBS) {
        Ok(table) => {
            for entry in table.iter().map_err(|e| classify(path, e.into()))? {
                let (uuid, json) = entry.map_err(|e| classify(path, e.into()))?;
                let record: JobRecord = serde_json::from_str(json.value()).map_err(|e| {
                    Attempt::Unreadable(format!("job {} is not a job record: {e}", uuid.value()))
                })?;
                if record.uuid != uuid.value() {
                    return Err(Attempt::Unreadable(format!(
                        "job {} holds the record of job {}",
                        uuid.value(),
                        record.uuid
                    )));
                }
                recovered.jobs.push(record);
            }
        }
        Err(TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(classify(path, e.into())),
    }
    Ok(recovered)
}

fn initialise(db: &Database, identity: &SpoolIdentity, our_url: &str) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut meta = txn.open_table(META)?;
        meta.insert(META_FORMAT_VERSION, FORMAT_VERSION.to_string().as_str())?;
        meta.insert(META_HOTKEY, identity.hotkey_ss58.as_str())?;
        meta.insert(META_URL, our_url)?;
        meta.insert(META_CREATED, rfc3339_utc(SystemTime::now()).as_str())?;
        meta.insert(
            META_PROGRAM,
            concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION")),
        )?;
        txn.open_table(STATUSES)?;
        txn.open_table(JOBS)?;
    }
    txn.commit()?;
    Ok(())
}

/// Which redb open errors mean "this file cannot be read as a spool" (move it aside) and which mean the file
/// system or the environment refused (an error; the file is left alone).
fn classify_open_error(path: &Path, e: DatabaseError) -> Attempt {
    let store = |message: String| {
        Attempt::Fatal(SpoolOpenError::Store {
            path: path.to_path_buf(),
            message,
        })
    };
    match e {
        DatabaseError::Storage(s) => classify_storage(path, s),
        // Formats 1 and 2 predate every spool: whatever this is, it is not one of ours.
        DatabaseError::UpgradeRequired(v) => Attempt::Unreadable(format!(
            "not a spool: a redb database in the old file format {v}"
        )),
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => store(
            "the file is open in another process that does not hold its lock file: stop it"
                .to_owned(),
        ),
        other => store(other.to_string()),
    }
}

fn classify_storage(path: &Path, e: StorageError) -> Attempt {
    match e {
        StorageError::Corrupted(message) => Attempt::Unreadable(format!("corrupt: {message}")),
        // redb reports "not a redb file" as InvalidData; a read past the end of a truncated file is
        // UnexpectedEof. Both are about the content, not the disk.
        StorageError::Io(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ) =>
        {
            Attempt::Unreadable(e.to_string())
        }
        StorageError::Io(source) => Attempt::Fatal(SpoolOpenError::Io {
            path: path.to_path_buf(),
            step: OpenStep::ReadFile,
            source,
        }),
        other => Attempt::Fatal(SpoolOpenError::Store {
            path: path.to_path_buf(),
            message: other.to_string(),
        }),
    }
}

/// [`classify_storage`] for the errors of reading an opened database (every redb error converts to `redb::Error`).
fn classify(path: &Path, e: redb::Error) -> Attempt {
    match e {
        redb::Error::Corrupted(message) => Attempt::Unreadable(format!("corrupt: {message}")),
        redb::Error::Io(e) => classify_storage(path, StorageError::Io(e)),
        // A table of ours with other key or value types: not a spool of this format.
        e @ (redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. }) => {
            Attempt::Unreadable(format!("not a spool: {e}"))
        }
        other => Attempt::Fatal(SpoolOpenError::Store {
            path: path.to_path_buf(),
            message: other.to_string(),
        }),
    }
}

/// `Some(version)` when `file` is a redb file both of whose commit slots carry a version above ours: a newer redb
/// (so a newer client) wrote it. One corrupt byte cannot make both slots agree, so a damaged file is not mistaken
/// for a newer one.
fn newer_redb_format(file: &mut File) -> io::Result<Option<u8>> {
    let mut header = Vec::with_capacity(256);
    Read::take(&mut *file, 256).read_to_end(&mut header)?;
    if header.len() < 256 || header[..REDB_MAGIC.len()] != REDB_MAGIC {
        return Ok(None);
    }
    let [a, b] = REDB_SLOT_VERSION_OFFSETS.map(|offset| header[offset]);
    Ok((a > REDB_FILE_FORMAT && b > REDB_FILE_FORMAT).then_some(a.max(b)))
}

/// How often, and how far apart, a held lock (ours or redb's) is tried again before the spool counts as in use.
const LOCK_ATTEMPTS: u32 = 20;
const LOCK_RETRY_PAUSE: Duration = Duration::from_millis(10);

/// `<spool>.lock`: the spool's file name with `.lock` appended.
fn lock_path(spool: &Path) -> PathBuf {
    let mut name = spool.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

fn acquire_lock(spool: &Path) -> Result<File, SpoolOpenError> {
    let lock_file = lock_path(spool);
    let existed = lock_file.exists();
    let io = |step, source| SpoolOpenError::Io {
        path: lock_file.clone(),
        step,
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_file)
        .map_err(|e| {
            let step = if existed {
                OpenStep::LockFile
            } else {
                OpenStep::CreateLockFile
            };
            io(step, e)
        })?;
    // A lock held by another client is held for as long as it runs; one held for an instant is a child process
    // of ours (or of another thread) between fork and exec, which briefly shares every descriptor: retry a little.
    let mut attempts = 0;
    let locked = loop {
        match file.try_lock() {
            Err(fs::TryLockError::WouldBlock) if attempts < LOCK_ATTEMPTS => {
                attempts += 1;
                std::thread::sleep(LOCK_RETRY_PAUSE);
            }
            other => break other,
        }
    };
    match locked {
        Ok(()) => {
            // The PID only informs a second client's error message; the lock is what excludes it. A disk too full
            // to hold a few bytes must not stop a client that could otherwise run.
            let pid = std::process::id();
            if let Err(e) = file
                .set_len(0)
                .and_then(|()| file.write_all(format!("{pid}\n").as_bytes()))
            {
                log::warn!(
                    "cannot write this process's PID into {}: {e}",
                    lock_file.display()
                );
            }
            Ok(file)
        }
        Err(fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let pid = File::open(&lock_file)
                .and_then(|mut f| f.read_to_string(&mut text))
                .ok()
                .and_then(|_| text.trim().parse().ok());
            Err(SpoolOpenError::Locked { lock_file, pid })
        }
        Err(fs::TryLockError::Error(e)) => Err(io(OpenStep::LockFile, e)),
    }
}

/// Renames an unreadable spool to `<name>.corrupt-<UTC time>-<pid>[-<n>]`, never replacing an existing file: the
/// new name is taken with a hard link (which fails if it exists) before the old one is removed.
fn move_aside(path: &Path) -> io::Result<PathBuf> {
    let base = {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(
            ".corrupt-{}-{}",
            compact_utc(SystemTime::now()),
            std::process::id()
        ));
        name
    };
    for n in 1..1000 {
        let mut candidate = base.clone();
        if n > 1 {
            candidate.push(format!("-{n}"));
        }
        let candidate = PathBuf::from(candidate);
        match fs::hard_link(path, &candidate) {
            Ok(()) => {
                fs::remove_file(path)?;
                sync_parent_dir(path);
                return Ok(candidate);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            // A file system without hard links: a rename after checking the name is free (a race here needs
            // two processes moving the same spool, which the lock excludes).
            Err(_) if !candidate.exists() => {
                fs::rename(path, &candidate)?;
                sync_parent_dir(path);
                return Ok(candidate);
            }
            Err(_) => continue,
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "every name for the unreadable spool is taken",
    ))
}

/// Makes a created or renamed directory entry durable. Best effort: the data itself is fsynced by redb, and a
/// directory that cannot be opened for this was usable for the operation itself.
fn sync_parent_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(dir) = File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
    {
        let _ = dir.sync_all();
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// Year, month, day, hour, minute, second (UTC) of a time since the Unix epoch; times before it read as the epoch.
fn utc_fields(time: SystemTime) -> (u64, u32, u32, u32, u32, u32) {
    let t = crate::utc::Utc::of(time);
    (t.year, t.month, t.day, t.hour, t.minute, t.second)
}

/// `20261201T101500Z`.
fn compact_utc(time: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc_fields(time);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// `2026-12-01T10:15:00Z`.
fn rfc3339_utc(time: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc_fields(time);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn utc_times_are_written_as_the_calendar_says() {
        assert_eq!(compact_utc(at(0)), "19700101T000000Z");
        // `date -u -d @1700000000` = Tue Nov 14 22:13:20 UTC 2023
        assert_eq!(rfc3339_utc(at(1_700_000_000)), "2023-11-14T22:13:20Z");
        // A leap day, and the last second of a year.
        assert_eq!(compact_utc(at(951_782_400)), "20000229T000000Z");
        assert_eq!(rfc3339_utc(at(1_798_761_599)), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn moving_aside_never_replaces_an_existing_file() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("s.spool");
        fs::write(&path, b"unreadable").unwrap();
        // Whatever second the move happens in, its first-choice name is taken.
        let now = SystemTime::now();
        let mut taken = Vec::new();
        for t in [now, now + Duration::from_secs(1)] {
            let name = format!("s.spool.corrupt-{}-{}", compact_utc(t), std::process::id());
            fs::write(dir.path().join(&name), b"earlier").unwrap();
            taken.push(dir.path().join(name));
        }
        let moved = move_aside(&path).unwrap();
        assert!(!taken.contains(&moved), "{}", moved.display());
        assert!(
            moved.to_string_lossy().ends_with("-2"),
            "{}",
            moved.display()
        );
        assert_eq!(fs::read(&moved).unwrap(), b"unreadable");
        for t in taken {
            assert_eq!(fs::read(t).unwrap(), b"earlier");
        }
        assert!(!path.exists());
    }

    #[test]
    fn the_lock_file_sits_beside_the_spool() {
        assert_eq!(
            lock_path(Path::new("/s/a.spool")),
            Path::new("/s/a.spool.lock")
        );
    }

    #[test]
    fn only_failures_to_create_let_the_default_location_fall_back_to_memory() {
        let io = |step| SpoolOpenError::Io {
            path: PathBuf::from("/x"),
            step,
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert!(io(OpenStep::CreateDirectory).nothing_existing_was_refused());
        assert!(io(OpenStep::CreateFile).nothing_existing_was_refused());
        assert!(io(OpenStep::CreateLockFile).nothing_existing_was_refused());
        assert!(io(OpenStep::Initialise).nothing_existing_was_refused());
        assert!(!io(OpenStep::ReadFile).nothing_existing_was_refused());
        assert!(!io(OpenStep::LockFile).nothing_existing_was_refused());
        assert!(
            !SpoolOpenError::Locked {
                lock_file: PathBuf::from("/x.lock"),
                pid: Some(1)
            }
            .nothing_existing_was_refused()
        );
    }
}
