//! The durable spool: unacknowledged status updates and running jobs, kept on disk so that a crash loses neither.
//!
//! The record types ([`SpoolBatch`] and what it carries) are pure data, in every build: the machine decides what
//! to persist and forget. With the `spool` feature, [`Spool`] is the file (redb) and [`SpoolWorker`] the thread that
//! commits batches off the event loop. This module never decides *what* to persist, and never runs I/O on the
//! caller's thread except in [`Spool::open`] (once, at start).

mod record;
pub use record::{HandlerRecord, JobRecord, Recovered, SpoolBatch, SpooledStatus};

#[cfg(feature = "spool")]
mod path;
#[cfg(feature = "spool")]
mod store;
#[cfg(feature = "spool")]
mod worker;

#[cfg(feature = "spool")]
pub use path::{SpoolUrlError, default_path, default_state_dir, normalise_url};
#[cfg(feature = "spool")]
pub use store::{
    CACHE_BYTES, Compaction, FORMAT_VERSION, OpenStep, OpenedSpool, Spool, SpoolError,
    SpoolIdentity, SpoolNotice, SpoolOpenError,
};
#[cfg(feature = "spool")]
pub use worker::{
    COMPACT_ABOVE_BYTES, Committed, DEFAULT_DROP_WITHIN, FinishError, SKIPPED_WHILE_STALE,
    SpoolWorker,
};
