//! The `celery` job handler: hands each job to the validator's own Celery workers over Redis and relays the status
//! updates they publish.
//!
//! For each job it LPUSHes a Celery protocol-2 task message (kombu's Redis envelope, in `message.rs`) onto the queue,
//! naming the configured task with one argument, the job request exactly as received; the task routes and runs the
//! job and publishes every status update on the Redis pub/sub channel `job_status_updates__<uuid>` through
//! channels_redis (msgpack, in `status.rs`); the handler forwards them until the terminal one. The task's Celery result
//! (`celery-task-meta-<task id>`) carries its terminal status, for jobs whose updates were missed (a Redis gap, a
//! client restart), and says when a task failed without one. One background task (module `driver`) owns the
//! subscription, the registry of running jobs, result reads and timeouts.
//!
//! Owns: queueing, the per-job status stream, the "pipeline available" signal, task ids per job, cheat reports to
//! `--celery-cheated-task`. Must never: send `received` (the client does), forward anything after a job's terminal
//! status, leave a job without a terminal status (every failure path ends in `horde_failed` saying why), kill or
//! revoke a Celery task (a job whose future is dropped keeps running in the workers: the client may re-attach), or
//! log the broker's password.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use log::{debug, warn};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::protocol::{HordeFailureReason, JobCheated, JobRequest, JobStatusUpdate, pyjson};

use super::{BoxFuture, CheatFuture, JobHandler, StatusSender};

pub mod config;
mod driver;
mod message;
mod status;

pub use config::{CeleryConfig, CeleryConfigError, redact_url};

use driver::{Command, Driver, JobSpec, QueuedMessage};
use message::{TaskMessage, TaskSpec};

/// Hands jobs to Celery workers over Redis. Cheap to clone (all clones share one Redis subscription); the
/// background task ends when the last clone and the last job using it are gone.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use facilitator_client::handler::celery::{CeleryConfig, CeleryHandler};
/// let config = CeleryConfig::new("redis://127.0.0.1:6379/0", "validator.tasks.execute_organic_job");
/// let handler = CeleryHandler::start(config)?;
/// let mut available = handler.available();
/// available.wait_for(|up| *up).await?; // subscribed to job_status_updates__*
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CeleryHandler {
    shared: Arc<Shared>,
}

struct Shared {
    config: CeleryConfig,
    commands: ConnectionManager,
    requests: mpsc::UnboundedSender<Command>,
    available: watch::Receiver<bool>,
    counters: Arc<Counters>,
    next_registration: AtomicU64,
    task_ids: Mutex<HashMap<String, String>>,
    enqueued: Mutex<Option<mpsc::UnboundedSender<Enqueued>>>,
    origin: String,
    /// Celery's `reply_to`: the sending app's id, one per handler.
    app_id: String,
}

/// A job's task was queued (or re-attached): what a spool needs to find it again after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The job.
    pub uuid: String,
    /// Its Celery task id; its result is `celery-task-meta-<task_id>`.
    pub task_id: String,
    /// When it was queued: its timeout runs from here.
    pub enqueued_at: SystemTime,
}

/// Counters of the celery handler (monotonic since start), for metrics.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    enqueued: AtomicU64,
    enqueue_failures: AtomicU64,
    forwarded: AtomicU64,
    not_forwarded: AtomicU64,
    unknown_job_messages: AtomicU64,
    malformed_messages: AtomicU64,
    malformed_results: AtomicU64,
    from_results: AtomicU64,
    timeouts: AtomicU64,
    redis_errors: AtomicU64,
    connect_failures: AtomicU64,
    link_losses: AtomicU64,
    reconnects: AtomicU64,
    cheat_reports: AtomicU64,
}

/// A snapshot of the celery handler's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CeleryStats {
    /// Task messages queued for jobs.
    pub enqueued: u64,
    /// Jobs that could not be queued (Redis unreachable or refusing): each reported `horde_failed`.
    pub enqueue_failures: u64,
    /// Status updates handed to jobs (published ones and those decided from results or timeouts).
    pub forwarded: u64,
    /// Published statuses not forwarded: `received`/`sent` (the client reports `received` itself), or beyond the
    /// per-job cap.
    pub not_forwarded: u64,
    /// Status messages for jobs not running here (or already ended): ignored.
    pub unknown_job_messages: u64,
    /// Status messages that did not decode: logged (rate-limited) and ignored.
    pub malformed_messages: u64,
    /// Result entries that did not parse.
    pub malformed_results: u64,
    /// Terminal statuses taken from a task's result (missed or never published).
    pub from_results: u64,
    /// Jobs that reached the job timeout: reported `horde_failed`.
    pub timeouts: u64,
    /// Failed Redis commands (result reads, timeout checks).
    pub redis_errors: u64,
    /// Failed attempts to connect and subscribe.
    pub connect_failures: u64,
    /// Times the pub/sub link was lost.
    pub link_losses: u64,
    /// Times the pub/sub link came back after a loss.
    pub reconnects: u64,
    /// Cheat reports queued to the cheated task.
    pub cheat_reports: u64,
}

/// A cheat report could not be handed to Celery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheatedError {
    /// No `--celery-cheated-task` is configured.
    #[error("no --celery-cheated-task is configured")]
    NotConfigured,
    /// Redis refused or was unreachable.
    #[error("could not queue the cheat report on Redis at {broker}: {problem}")]
    Redis {
        /// The broker, password replaced.
        broker: String,
        /// What went wrong.
        problem: String,
    },
}

impl CeleryHandler {
    /// Starts the handler's background task (it connects and subscribes at once, and keeps retrying with backoff
    /// while Redis is unreachable). Must be called inside a tokio runtime. Fails only on a bad configuration.
    pub fn start(config: CeleryConfig) -> Result<CeleryHandler, CeleryConfigError> {
        config.validate()?;
        let client = redis::Client::open(config.broker_url.as_str()).map_err(|e| {
            CeleryConfigError::BrokerUrl {
                url: config.redacted_broker(),
                problem: e.to_string(),
            }
        })?;
        // Commands go through the connection manager: it reconnects with backoff on its own. Bounded waits, so
        // nothing hangs on a Redis that accepts connections and never answers.
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(2));
        let commands = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(|e| CeleryConfigError::BrokerUrl {
                url: config.redacted_broker(),
                problem: e.to_string(),
            })?;
        let (requests_tx, requests_rx) = mpsc::unbounded_channel();
        let (available_tx, available_rx) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let driver = Driver::new(
            config.clone(),
            client,
            commands.clone(),
            requests_rx,
            available_tx,
            Arc::clone(&counters),
        );
        tokio::spawn(driver.run());
        Ok(CeleryHandler {
            shared: Arc::new(Shared {
                config,
                commands,
                requests: requests_tx,
                available: available_rx,
                counters,
                next_registration: AtomicU64::new(1),
                task_ids: Mutex::new(HashMap::new()),
                enqueued: Mutex::new(None),
                origin: format!("gen{}@{}", std::process::id(), hostname()),
                app_id: uuid::Uuid::new_v4().to_string(),
            }),
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &CeleryConfig {
        &self.shared.config
    }

    /// "The pipeline is available": `true` while the handler is subscribed on Redis, `false` while Redis is
    /// unreachable (and before the first subscription). The client watches it ([`JobHandler::availability`]) and
    /// answers jobs arriving while it is `false` `rejected` / `busy`, without queueing them.
    pub fn available(&self) -> watch::Receiver<bool> {
        self.shared.available.clone()
    }

    /// The Celery task id of a running job, if it has been queued (or re-attached).
    pub fn task_id(&self, uuid: &str) -> Option<String> {
        lock(&self.shared.task_ids).get(uuid).cloned()
    }

    /// A stream of [`Enqueued`] events, one per job queued or re-attached from now on, for a spool. Each call
    /// replaces the previous stream (only the newest receiver gets events).
    pub fn enqueued_events(&self) -> mpsc::UnboundedReceiver<Enqueued> {
        let (tx, rx) = mpsc::unbounded_channel();
        *lock(&self.shared.enqueued) = Some(tx);
        rx
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CeleryStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CeleryStats {
            enqueued: get(&c.enqueued),
            enqueue_failures: get(&c.enqueue_failures),
            forwarded: get(&c.forwarded),
            not_forwarded: get(&c.not_forwarded),
            unknown_job_messages: get(&c.unknown_job_messages),
            malformed_messages: get(&c.malformed_messages),
            malformed_results: get(&c.malformed_results),
            from_results: get(&c.from_results),
            timeouts: get(&c.timeouts),
            redis_errors: get(&c.redis_errors),
            connect_failures: get(&c.connect_failures),
            link_losses: get(&c.link_losses),
            reconnects: get(&c.reconnects),
            cheat_reports: get(&c.cheat_reports),
        }
    }

    /// Follows a job queued before a client restart: subscribes (already done), reads its task's result at once and
    /// forwards a terminal status found there; otherwise forwards what the task publishes from now on, until its
    /// terminal status or its timeout (from `enqueued_at` when known, else from now). Statuses published while
    /// the client was down are lost; the log says so when the terminal status comes from the result.
    pub fn reattach(
        &self,
        job: Arc<JobRequest>,
        task_id: String,
        enqueued_at: Option<SystemTime>,
        statuses: StatusSender,
    ) -> BoxFuture {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let uuid = job.uuid().to_owned();
            let timeout = shared.config.job_timeout;
            let left = match enqueued_at {
                Some(at) => (at + timeout)
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO),
                None => timeout,
            };
            let (events_tx, events_rx) = mpsc::unbounded_channel();
            let Some(registration) = Arc::clone(&shared)
                .register(
                    &uuid,
                    JobSpec {
                        task_id: task_id.clone(),
                        deadline: Instant::now() + left,
                        message: None,
                        reattached: true,
                    },
                    events_tx,
                )
                .await
            else {
                let _ = statuses.send(driver_gone(&uuid)).await;
                return;
            };
            shared.note_enqueued(&uuid, &task_id, enqueued_at.unwrap_or_else(SystemTime::now));
            debug!("job {uuid}: re-attached to Celery task {task_id}");
            forward(&uuid, events_rx, &statuses).await;
            drop(registration);
        })
    }

    /// Queues a cheat report (`V0JobCheated`, as a map with every key) to `--celery-cheated-task`, one argument.
    /// Returns the task id.
    pub async fn send_cheated(&self, report: &JobCheated) -> Result<String, CheatedError> {
        let shared = &self.shared;
        let task = shared
            .config
            .cheated_task
            .as_deref()
            .ok_or(CheatedError::NotConfigured)?;
        let argument = pyjson::dumps(&report.to_value());
        let task_id = uuid::Uuid::new_v4().to_string();
        let now = SystemTime::now();
        let message = TaskMessage::build(
            &TaskSpec {
                task,
                queue: &shared.config.queue,
                argument_json: &argument,
                expires: None,
                now,
                origin: &shared.origin,
            },
            &task_id,
            &uuid::Uuid::new_v4().to_string(),
            &shared.app_id,
        );
        shared
            .lpush(&message)
            .await
            .map_err(|problem| CheatedError::Redis {
                broker: shared.config.redacted_broker(),
                problem,
            })?;
        shared
            .counters
            .cheat_reports
            .fetch_add(1, Ordering::Relaxed);
        Ok(task_id)
    }
}

impl JobHandler for CeleryHandler {
    fn run(&self, job: Arc<JobRequest>, statuses: StatusSender) -> BoxFuture {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { shared.run_job(job, statuses).await })
    }

    fn name(&self) -> String {
        "celery".to_owned()
    }

    /// A job queued before a restart: follows its task through [`CeleryHandler::reattach`].
    fn resume(
        &self,
        job: Arc<JobRequest>,
        record: &crate::spool::HandlerRecord,
        accepted_at: Option<SystemTime>,
        statuses: StatusSender,
    ) -> Option<BoxFuture> {
        match record {
            crate::spool::HandlerRecord::Celery { task_id } => {
                Some(self.reattach(job, task_id.clone(), accepted_at, statuses))
            }
            crate::spool::HandlerRecord::Exec { .. } => None,
        }
    }

    /// Subscribed on Redis: see [`CeleryHandler::available`].
    fn availability(&self) -> Option<watch::Receiver<bool>> {
        Some(self.available())
    }

    /// With `--celery-cheated-task`, queues the report to it ([`CeleryHandler::send_cheated`]); without, `None`.
    fn cheated(&self, report: JobCheated) -> Option<CheatFuture> {
        let task = self.shared.config.cheated_task.clone()?;
        let handler = self.clone();
        Some(Box::pin(async move {
            handler
                .send_cheated(&report)
                .await
                .map(|task_id| format!("queued to Celery task {task} as {task_id}"))
                .map_err(|e| e.to_string())
        }))
    }
}

/// Unregisters a job from the driver when its task ends or is dropped.
struct Registration {
    shared: Arc<Shared>,
    uuid: String,
    registration: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.shared.task_ids).remove(&self.uuid);
        // The driver may be gone (the handler is shutting down); nothing to undo then.
        let _ = self.shared.requests.send(Command::Unregister {
            uuid: std::mem::take(&mut self.uuid),
            registration: self.registration,
        });
    }
}

impl Shared {
    async fn run_job(self: Arc<Self>, job: Arc<JobRequest>, statuses: StatusSender) {
        let uuid = job.uuid().to_owned();
        let config = &self.config;
        if !self.wait_available().await {
            self.counters
                .enqueue_failures
                .fetch_add(1, Ordering::Relaxed);
            warn!(
                "job {uuid}: Redis at {} unreachable for {} s: job not queued, reported horde_failed",
                config.redacted_broker(),
                config.unavailable_wait.as_secs_f64()
            );
            let update = JobStatusUpdate::horde_failed(
                uuid,
                HordeFailureReason::GenericError,
                "the validator's Celery pipeline (Redis) is unreachable: the job was not queued",
                None,
            );
            let _ = statuses.send(update).await;
            return;
        }
        let task_id = uuid::Uuid::new_v4().to_string();
        let delivery_tag = uuid::Uuid::new_v4().to_string();
        let now_wall = SystemTime::now();
        let now = Instant::now();
        let message = TaskMessage::build(
            &TaskSpec {
                task: &config.task,
                queue: &config.queue,
                argument_json: job.text(),
                expires: Some(now_wall + config.job_timeout),
                now: now_wall,
                origin: &self.origin,
            },
            &task_id,
            &delivery_tag,
            &self.app_id,
        );
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        // Registered before the message exists anywhere, so no status of the job can arrive unrouted.
        let Some(registration) = Arc::clone(&self)
            .register(
                &uuid,
                JobSpec {
                    task_id: task_id.clone(),
                    deadline: now + config.job_timeout,
                    message: Some(QueuedMessage {
                        queue: message.queue.clone(),
                        text: message.text.clone(),
                        delivery_tag,
                    }),
                    reattached: false,
                },
                events_tx,
            )
            .await
        else {
            let _ = statuses.send(driver_gone(&uuid)).await;
            return;
        };
        if let Err(problem) = self.lpush(&message).await {
            self.counters
                .enqueue_failures
                .fetch_add(1, Ordering::Relaxed);
            warn!(
                "job {uuid}: could not queue Celery task {task_id} on Redis at {}: {problem}; reported horde_failed",
                config.redacted_broker()
            );
            let update = JobStatusUpdate::horde_failed(
                uuid.clone(),
                HordeFailureReason::GenericError,
                format!("could not queue the job for the validator's Celery workers: {problem}"),
                None,
            );
            drop(registration);
            let _ = statuses.send(update).await;
            return;
        }
        self.counters.enqueued.fetch_add(1, Ordering::Relaxed);
        self.note_enqueued(&uuid, &task_id, now_wall);
        // With the spool, the job's record gets its task id, so a restarted client re-attaches instead of failing it.
        let _ = statuses
            .attached(crate::spool::HandlerRecord::Celery {
                task_id: task_id.clone(),
            })
            .await;
        debug!(
            "job {uuid}: queued as Celery task {task_id} ({}) on {:?}",
            config.task, config.queue
        );
        forward(&uuid, events_rx, &statuses).await;
        drop(registration);
    }

    /// Waits (bounded) until the pipeline is available.
    async fn wait_available(&self) -> bool {
        let mut available = self.available.clone();
        let wait = available.wait_for(|up| *up);
        matches!(
            tokio::time::timeout(self.config.unavailable_wait, wait).await,
            Ok(Ok(_))
        )
    }

    async fn register(
        self: Arc<Self>,
        uuid: &str,
        job: JobSpec,
        events: mpsc::UnboundedSender<JobStatusUpdate>,
    ) -> Option<Registration> {
        let registration = self.next_registration.fetch_add(1, Ordering::Relaxed);
        let (ack_tx, ack_rx) = oneshot::channel();
        self.requests
            .send(Command::Register {
                uuid: uuid.to_owned(),
                registration,
                job,
                events,
                ack: ack_tx,
            })
            .ok()?;
        ack_rx.await.ok()?;
        Some(Registration {
            shared: self,
            uuid: uuid.to_owned(),
            registration,
        })
    }

    async fn lpush(&self, message: &TaskMessage) -> Result<(), String> {
        let mut commands = self.commands.clone();
        let mut lpush = redis::cmd("LPUSH");
        lpush.arg(&message.queue).arg(&message.text);
        let push = lpush.query_async::<i64>(&mut commands);
        match tokio::time::timeout(Duration::from_secs(10), push).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("Redis did not answer within 10 s".to_owned()),
        }
    }

    fn note_enqueued(&self, uuid: &str, task_id: &str, enqueued_at: SystemTime) {
        lock(&self.task_ids).insert(uuid.to_owned(), task_id.to_owned());
        if let Some(tx) = lock(&self.enqueued).as_ref() {
            let _ = tx.send(Enqueued {
                uuid: uuid.to_owned(),
                task_id: task_id.to_owned(),
                enqueued_at,
            });
        }
    }
}

/// Forwards a job's statuses to the client until the terminal one.
async fn forward(
    uuid: &str,
    mut events: mpsc::UnboundedReceiver<JobStatusUpdate>,
    statuses: &StatusSender,
) {
    while let Some(update) = events.recv().await {
        let terminal = update.status.is_terminal();
        if statuses.send(update).await.is_err() || terminal {
            return;
        }
    }
    // The driver dropped the job without a terminal status: only when the driver itself has stopped.
    let _ = statuses.send(driver_gone(uuid)).await;
}

fn driver_gone(uuid: &str) -> JobStatusUpdate {
    JobStatusUpdate::horde_failed(
        uuid,
        HordeFailureReason::GenericError,
        "the celery handler stopped before the job ended",
        None,
    )
}

/// A poisoned lock only means another thread panicked while holding it; the maps stay usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
