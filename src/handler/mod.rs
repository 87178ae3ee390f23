//! Job handlers: what runs a job once the machine has accepted it.
//!
//! A handler gets the job request and a [`StatusSender`], and reports the job's statuses through it; the sender
//! applies the outbox's backpressure (it waits while the client's outbox is full). The runtime runs each job as its
//! own task and cancels it by dropping its future: a handler must clean up on drop (kill its processes), never
//! leave anything behind. A handler never sends `received` (the client does that when it accepts the job) and
//! never talks to the network.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, watch};

use crate::protocol::{JobCheated, JobRequest, JobStatus, JobStatusUpdate};
use crate::spool::HandlerRecord;

#[cfg(feature = "celery")]
pub mod celery;
mod echo;
mod exec;
pub mod orphans;

#[cfg(feature = "celery")]
pub use celery::CeleryHandler;
pub use echo::EchoHandler;
pub use exec::ExecHandler;

/// The environment variable that may hold the Celery broker URL (with its password): read by the program, never
/// passed on to a job's process.
pub const CELERY_BROKER_ENV_VAR: &str = "FACILITATOR_CELERY_BROKER";

/// A boxed, sendable future, as handlers return.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The hand-off of a cheat report ([`JobHandler::cheated`]): where it went (`Ok`, for the log) or why it could not
/// go (`Err`).
pub type CheatFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'static>>;

/// Runs jobs. Implement this to plug your own job execution into the client.
///
/// ```
/// use std::sync::Arc;
/// use facilitator_client::handler::{BoxFuture, JobHandler, StatusSender};
/// use facilitator_client::protocol::{JobRequest, JobStatus};
///
/// struct AlwaysCompletes;
///
/// impl JobHandler for AlwaysCompletes {
///     fn run(&self, _job: Arc<JobRequest>, statuses: StatusSender) -> BoxFuture {
///         Box::pin(async move {
///             let _ = statuses.status(JobStatus::Accepted).await;
///             let _ = statuses.status(JobStatus::Completed).await;
///         })
///     }
/// }
/// ```
pub trait JobHandler: Send + Sync + 'static {
    /// Runs one job to its end, reporting through `statuses`. Dropping the returned future cancels the job.
    fn run(&self, job: Arc<JobRequest>, statuses: StatusSender) -> BoxFuture;

    /// A short name for logs.
    fn name(&self) -> String {
        "custom".to_owned()
    }

    /// Follows a job that a previous process of the client started and whose work outlives the client (a Celery
    /// task), from its spooled record, after a restart: like [`JobHandler::run`], but without starting the work
    /// again. `accepted_at` is when the job was accepted, if known. `None` (the default): this handler cannot, and
    /// the client reports the job `horde_failed`.
    fn resume(
        &self,
        job: Arc<JobRequest>,
        record: &HandlerRecord,
        accepted_at: Option<SystemTime>,
        statuses: StatusSender,
    ) -> Option<BoxFuture> {
        let _ = (job, record, accepted_at, statuses);
        None
    }

    /// Whether the handler's pipeline can take jobs now, for handlers that hand jobs to something that can be
    /// down (the `celery` handler: Redis). The client watches it: while it says `false`, trusted job requests are
    /// answered `rejected` / `busy` without `received`, and nothing is queued. `None` (the default): always
    /// available.
    fn availability(&self) -> Option<watch::Receiver<bool>> {
        None
    }

    /// Takes a cheat report whose signature verified from a trusted signer (`V0JobCheated`). The client runs the
    /// returned future on its own task, never on its loop, and logs and counts its outcome. `None` (the default):
    /// this handler does not take cheat reports; the report is logged and counted only, as the reference validator
    /// logs the ones it cannot act on.
    fn cheated(&self, report: JobCheated) -> Option<CheatFuture> {
        let _ = report;
        None
    }
}

/// What job tasks tell the client loop, in order per job: statuses, then `Finished`.
#[derive(Debug, Clone, PartialEq)]
pub enum HandlerEvent {
    /// A status update for the job.
    Status(JobStatusUpdate),
    /// The job's handler returned (or panicked, or was cancelled); no more statuses follow.
    Finished(String),
    /// The job's work runs where a restart can find it (with the spool, it is recorded with the job).
    Attached {
        /// The job.
        uuid: String,
        /// Where its work runs.
        handler: HandlerRecord,
    },
}

/// The client loop has stopped; the status could not be handed over.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the client has stopped; status update for job {uuid} not accepted")]
pub struct ClientStopped {
    /// The job the status was for.
    pub uuid: String,
}

/// Reports one job's statuses to the client loop. Sending waits while the client's outbox is full.
#[derive(Debug, Clone)]
pub struct StatusSender {
    uuid: String,
    tx: mpsc::Sender<HandlerEvent>,
}

impl StatusSender {
    /// A sender for job `uuid` over the loop's channel.
    pub fn new(uuid: impl Into<String>, tx: mpsc::Sender<HandlerEvent>) -> Self {
        StatusSender {
            uuid: uuid.into(),
            tx,
        }
    }

    /// The job's UUID.
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// Sends a status update. Its `uuid` is set to this job's, whatever it was.
    pub async fn send(&self, mut update: JobStatusUpdate) -> Result<(), ClientStopped> {
        update.uuid.clone_from(&self.uuid);
        self.tx
            .send(HandlerEvent::Status(update))
            .await
            .map_err(|_| ClientStopped {
                uuid: self.uuid.clone(),
            })
    }

    /// Says where the job's work runs (an `exec:` process group, a Celery task), so that a client restarted after a
    /// crash can find it: with the spool, the job's record gets it, in order with the job's statuses. Waits like
    /// [`StatusSender::send`].
    pub async fn attached(&self, handler: HandlerRecord) -> Result<(), ClientStopped> {
        self.tx
            .send(HandlerEvent::Attached {
                uuid: self.uuid.clone(),
                handler,
            })
            .await
            .map_err(|_| ClientStopped {
                uuid: self.uuid.clone(),
            })
    }

    /// Sends a status with empty metadata.
    pub async fn status(&self, status: JobStatus) -> Result<(), ClientStopped> {
        self.send(JobStatusUpdate::new(self.uuid.clone(), status))
            .await
    }
}
