//! The celery handler's one background task: the Redis pub/sub subscription, the registry of running jobs, and
//! every decision about a job's terminal status that comes from Redis rather than from the job's own statuses.
//!
//! Owns: the pub/sub connection (PSUBSCRIBE `job_status_updates__*`, reconnected with backoff and resubscribed, the
//! "pipeline available" signal), routing each status message to its job by the channel's UUID, reading the results
//! of running jobs (every poll interval, and at once after a reconnect or a re-attach), the job timeouts, and the
//! barrier that keeps a terminal status read from Redis behind every status already published: a PING on the
//! pub/sub connection, whose reply comes after every message published before it.
//!
//! Must never: block on a job (each job's statuses go through an unbounded channel capped per job; the job's own
//! task waits on the client's backpressure), forward anything for a job after its terminal status, wait on Redis
//! without a timeout, or log a broker password.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt as _};
use log::{debug, info, warn};
use redis::aio::{ConnectionManager, PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::protocol::{HordeFailureReason, JobStatus, JobStatusUpdate};

use super::Counters;
use super::config::CeleryConfig;
use super::message::result_key;
use super::status::{
    self, CHANNEL_PATTERN, ResultMeta, Whereabouts, decode_status_message, job_uuid_of_channel,
};
use crate::ratelimit::{RateLimiter, suppressed_note};

/// Most non-terminal statuses forwarded for one job (a real job has at most five); more are dropped and counted,
/// so a task that floods its channel cannot grow the client's memory. The terminal status always gets through.
pub(super) const MAX_STATUSES_PER_JOB: u32 = 32;

/// Connecting and subscribing, and each barrier PING, must finish within this.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// The pub/sub link is PINGed at least this often: a link that does not answer is dropped and reconnected.
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// A terminal status decided from Redis waits at most this long for a barrier before it is forwarded anyway (the
/// link is down; any status it could be hiding is lost with the link).
const BARRIER_GRACE: Duration = Duration::from_secs(10);

/// Reconnect delays of the pub/sub link: doubling from the first to the cap.
const RECONNECT_FIRST: Duration = Duration::from_millis(250);
const RECONNECT_CAP: Duration = Duration::from_secs(30);

/// One line per this interval for each kind of repeated problem.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What the handler's job tasks ask of the driver.
pub(super) enum Command {
    /// Start routing statuses of job `uuid` to `events`; `ack` is answered once that is in place.
    Register {
        uuid: String,
        registration: u64,
        job: JobSpec,
        events: mpsc::UnboundedSender<JobStatusUpdate>,
        ack: oneshot::Sender<()>,
    },
    /// The job's task ended (or was dropped): stop routing to it.
    Unregister { uuid: String, registration: u64 },
}

/// What the driver knows about a job when it is registered.
pub(super) struct JobSpec {
    pub task_id: String,
    pub deadline: Instant,
    /// The exact queued message, for removing it from the queue when it expires unstarted; `None` when re-attached.
    pub message: Option<QueuedMessage>,
    /// Re-attached after a client restart: statuses were missed, and its result is read at once.
    pub reattached: bool,
}

/// A message as it was LPUSHed.
#[derive(Clone)]
pub(super) struct QueuedMessage {
    pub queue: String,
    pub text: String,
    pub delivery_tag: String,
}

struct RunningJob {
    registration: u64,
    task_id: String,
    events: mpsc::UnboundedSender<JobStatusUpdate>,
    deadline: Instant,
    message: Option<QueuedMessage>,
    forwarded: u32,
    /// Statuses may have been missed: the pub/sub link was down at some point during the job, or it was re-attached.
    gap: bool,
    /// A terminal status decided from Redis, waiting for a barrier.
    pending: Option<Pending>,
    deadline_check_in_flight: bool,
}

struct Pending {
    update: JobStatusUpdate,
    /// Forwarded when a barrier started at this epoch or later completes.
    epoch: u64,
    since: Instant,
    source: PendingSource,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PendingSource {
    Result,
    Timeout,
}

enum Link {
    Down {
        retry_at: Instant,
    },
    Connecting,
    Up {
        sink: PubSubSink,
        stream: PubSubStream,
        barrier_in_flight: bool,
        last_ping: Instant,
    },
}

/// One job's result entry as read: (uuid, registration, the stored value if any).
type PolledResult = (String, u64, Option<Vec<u8>>);

enum Done {
    Connected(Result<(PubSubSink, PubSubStream), String>),
    Polled(Result<Vec<PolledResult>, String>),
    Barrier {
        epoch: u64,
        outcome: Result<(), String>,
    },
    DeadlineChecked {
        uuid: String,
        registration: u64,
        outcome: Result<DeadlineFinding, String>,
    },
}

enum DeadlineFinding {
    Result(ResultMeta),
    Whereabouts(Whereabouts),
}

pub(super) struct Driver {
    config: CeleryConfig,
    client: redis::Client,
    commands: ConnectionManager,
    requests: mpsc::UnboundedReceiver<Command>,
    available: watch::Sender<bool>,
    counters: Arc<Counters>,
    jobs: HashMap<String, RunningJob>,
    link: Link,
    reconnect_attempts: u32,
    ever_connected: bool,
    down_since: Option<Instant>,
    tasks: JoinSet<Done>,
    poll_in_flight: bool,
    poll_now: bool,
    epoch: u64,
    /// One log line per kind per interval: malformed messages, messages for unknown jobs, Redis errors, statuses
    /// over a job's limit.
    warnings: RateLimiter,
}

impl Driver {
    pub(super) fn new(
        config: CeleryConfig,
        client: redis::Client,
        commands: ConnectionManager,
        requests: mpsc::UnboundedReceiver<Command>,
        available: watch::Sender<bool>,
        counters: Arc<Counters>,
    ) -> Self {
        Driver {
            config,
            client,
            commands,
            requests,
            available,
            counters,
            jobs: HashMap::new(),
            link: Link::Down {
                retry_at: Instant::now(),
            },
            reconnect_attempts: 0,
            ever_connected: false,
            down_since: Some(Instant::now()),
            tasks: JoinSet::new(),
            poll_in_flight: false,
            poll_now: false,
            epoch: 0,
            warnings: RateLimiter::new(LOG_INTERVAL),
        }
    }

    /// Runs until every handle on the handler is gone.
    pub(super) async fn run(mut self) {
        let mut tick = tokio::time::interval(self.config.result_poll_interval.min(PING_INTERVAL));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let reconnect_at = match &self.link {
                Link::Down { retry_at } => Some(*retry_at),
                _ => None,
            };
            tokio::select! {
                biased;
                // Cancel safety: every branch is a channel receive, a JoinSet poll, or a timer; none loses data
                // when another branch wins.
                request = self.requests.recv() => match request {
                    Some(request) => self.on_request(request),
                    None => break,
                },
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => match done {
                    Ok(done) => self.on_done(done),
                    Err(e) => self.recover_from_lost_task(&e),
                },
                message = next_message(&mut self.link) => self.on_message(message),
                () = sleep_until_opt(reconnect_at) => self.connect(),
                _ = tick.tick() => self.on_tick(),
            }
        }
        debug!("celery handler: driver stopped");
    }

    // ---- requests from job tasks -----------------------------------------------------------------------------

    fn on_request(&mut self, request: Command) {
        match request {
            Command::Register {
                uuid,
                registration,
                job,
                events,
                ack,
            } => {
                let up = matches!(self.link, Link::Up { .. });
                if self.jobs.contains_key(&uuid) {
                    warn!(
                        "job {uuid}: registered again while still running in the celery handler; the newer one wins"
                    );
                }
                if job.reattached {
                    self.poll_now = true;
                }
                self.jobs.insert(
                    uuid,
                    RunningJob {
                        registration,
                        task_id: job.task_id,
                        events,
                        deadline: job.deadline,
                        message: job.message,
                        forwarded: 0,
                        gap: job.reattached || !up,
                        pending: None,
                        deadline_check_in_flight: false,
                    },
                );
                if self.poll_now {
                    self.start_poll();
                }
                let _ = ack.send(());
            }
            Command::Unregister { uuid, registration } => {
                if self
                    .jobs
                    .get(&uuid)
                    .is_some_and(|job| job.registration == registration)
                {
                    self.jobs.remove(&uuid);
                }
            }
        }
    }

    // ---- the pub/sub link ------------------------------------------------------------------------------------

    fn connect(&mut self) {
        self.link = Link::Connecting;
        let client = self.client.clone();
        let mut commands = self.commands.clone();
        self.tasks.spawn(async move {
            let attempt = async {
                let pubsub = client.get_async_pubsub().await?;
                let (mut sink, stream) = pubsub.split();
                sink.psubscribe(CHANNEL_PATTERN).await?;
                // The command connection must work too before the pipeline is called available. After a Redis
                // restart it still holds the dead socket, and only a failed command makes the manager replace it:
                // spend that failure on a PING here rather than on a job's LPUSH.
                let ping = redis::cmd("PING");
                if ping.query_async::<()>(&mut commands).await.is_err() {
                    ping.query_async::<()>(&mut commands).await?;
                }
                Ok::<_, redis::RedisError>((sink, stream))
            };
            let outcome = match tokio::time::timeout(REDIS_TIMEOUT, attempt).await {
                Ok(Ok(link)) => Ok(link),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {} s", REDIS_TIMEOUT.as_secs())),
            };
            Done::Connected(outcome)
        });
    }

    fn on_connected(&mut self, outcome: Result<(PubSubSink, PubSubStream), String>) {
        let now = Instant::now();
        match outcome {
            Ok((sink, stream)) => {
                self.link = Link::Up {
                    sink,
                    stream,
                    barrier_in_flight: false,
                    last_ping: now,
                };
                self.reconnect_attempts = 0;
                let down_for = self.down_since.take().map(|t| now.duration_since(t));
                if self.ever_connected {
                    self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        "celery handler: Redis at {} is back after {:.1} s; resubscribed to {CHANNEL_PATTERN}; \
                         reading the results of {} running job(s) (statuses published meanwhile are lost)",
                        self.config.redacted_broker(),
                        down_for.unwrap_or_default().as_secs_f64(),
                        self.jobs.len()
                    );
                } else {
                    info!(
                        "celery handler: subscribed to {CHANNEL_PATTERN} on Redis at {}; queue {:?}, task {:?}",
                        self.config.redacted_broker(),
                        self.config.queue,
                        self.config.task
                    );
                }
                self.ever_connected = true;
                self.available.send_replace(true);
                self.start_poll();
            }
            Err(problem) => {
                let delay = reconnect_delay(self.reconnect_attempts);
                self.reconnect_attempts = self.reconnect_attempts.saturating_add(1);
                self.counters
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(
                    "celery handler: cannot subscribe on Redis at {}: {problem}; retrying in {:.1} s",
                    self.config.redacted_broker(),
                    delay.as_secs_f64()
                );
                self.link = Link::Down {
                    retry_at: now + delay,
                };
            }
        }
    }

    fn link_lost(&mut self, why: &str) {
        if !matches!(self.link, Link::Up { .. }) {
            return;
        }
        let now = Instant::now();
        self.counters.link_losses.fetch_add(1, Ordering::Relaxed);
        warn!(
            "celery handler: lost the Redis pub/sub link to {} ({why}); {} running job(s) may miss statuses; \
             reconnecting",
            self.config.redacted_broker(),
            self.jobs.len()
        );
        for job in self.jobs.values_mut() {
            job.gap = true;
        }
        self.available.send_replace(false);
        self.down_since = Some(now);
        // Dropping the stream ends the connection's task.
        self.link = Link::Down {
            retry_at: now + reconnect_delay(0),
        };
        self.reconnect_attempts = 1;
    }

    fn on_message(&mut self, message: Option<redis::Msg>) {
        let Some(message) = message else {
            self.link_lost("the connection closed");
            return;
        };
        let channel = message.get_channel_name();
        let Some(uuid) = job_uuid_of_channel(channel) else {
            // Only the pattern is subscribed; anything else is not ours.
            return;
        };
        let now = Instant::now();
        let Some(job) = self.jobs.get_mut(uuid) else {
            self.counters
                .unknown_job_messages
                .fetch_add(1, Ordering::Relaxed);
            if let Some(held_back) = self
                .warnings
                .check("status message for an unknown job", now.into_std())
            {
                debug!(
                    "celery handler: status message for job {uuid}, which is not running here: ignored{}",
                    suppressed_note(held_back)
                );
            }
            return;
        };
        let update = match decode_status_message(uuid, message.get_payload_bytes()) {
            Ok(update) => update,
            Err(e) => {
                self.counters
                    .malformed_messages
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(held_back) = self
                    .warnings
                    .check("malformed status message", now.into_std())
                {
                    warn!(
                        "celery handler: malformed status message on {channel}: {e}; ignored{}",
                        suppressed_note(held_back)
                    );
                }
                return;
            }
        };
        match update.status {
            JobStatus::Received | JobStatus::Sent => {
                // The client sent `received` itself when it accepted the job; `sent` is the facilitator's.
                self.counters.not_forwarded.fetch_add(1, Ordering::Relaxed);
                debug!(
                    "job {uuid}: published status {:?} not forwarded (the client reports it itself)",
                    update.status.as_str()
                );
                return;
            }
            status if !status.is_terminal() && job.forwarded >= MAX_STATUSES_PER_JOB => {
                self.counters.not_forwarded.fetch_add(1, Ordering::Relaxed);
                if let Some(held_back) = self
                    .warnings
                    .check("statuses over a job's limit", now.into_std())
                {
                    warn!(
                        "job {uuid}: more than {MAX_STATUSES_PER_JOB} statuses published; {:?} dropped{}",
                        status.as_str(),
                        suppressed_note(held_back)
                    );
                }
                return;
            }
            _ => {}
        }
        let uuid = uuid.to_owned();
        self.forward(&uuid, update);
    }

    /// Hands a status to the job's task; a terminal one ends the job here.
    fn forward(&mut self, uuid: &str, update: JobStatusUpdate) {
        let Some(job) = self.jobs.get_mut(uuid) else {
            return;
        };
        let terminal = update.status.is_terminal();
        job.forwarded += 1;
        self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
        let delivered = job.events.send(update).is_ok();
        if terminal || !delivered {
            // Nothing more for this job: later messages on its channel count as unknown.
            self.jobs.remove(uuid);
        }
    }

    // ---- results, barriers and timeouts ----------------------------------------------------------------------

    fn on_tick(&mut self) {
        let now = Instant::now();
        self.start_poll();
        // Timeouts.
        let due: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, job)| {
                job.deadline <= now && job.pending.is_none() && !job.deadline_check_in_flight
            })
            .map(|(uuid, _)| uuid.clone())
            .collect();
        for uuid in due {
            self.check_deadline(&uuid, now);
        }
        // Terminal statuses that waited too long for a barrier (the link is down): forward them anyway.
        let stale: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, job)| {
                job.pending
                    .as_ref()
                    .is_some_and(|p| now.duration_since(p.since) >= BARRIER_GRACE)
            })
            .map(|(uuid, _)| uuid.clone())
            .collect();
        for uuid in stale {
            self.finish_pending(&uuid, true);
        }
        // Barrier for pending terminals, and the link's liveness ping.
        let wants_barrier = self.jobs.values().any(|job| job.pending.is_some());
        let ping_due = match &self.link {
            Link::Up { last_ping, .. } => now.duration_since(*last_ping) >= PING_INTERVAL,
            _ => false,
        };
        if wants_barrier || ping_due {
            self.start_barrier();
        }
    }

    fn start_poll(&mut self) {
        if self.poll_in_flight || !matches!(self.link, Link::Up { .. }) {
            return;
        }
        let targets: Vec<(String, u64, String)> = self
            .jobs
            .iter()
            .filter(|(_, job)| job.pending.is_none())
            .map(|(uuid, job)| (uuid.clone(), job.registration, result_key(&job.task_id)))
            .collect();
        self.poll_now = false;
        if targets.is_empty() {
            return;
        }
        self.poll_in_flight = true;
        let mut commands = self.commands.clone();
        self.tasks.spawn(async move {
            let keys: Vec<&str> = targets.iter().map(|(_, _, key)| key.as_str()).collect();
            let mut mget = redis::cmd("MGET");
            mget.arg(&keys);
            let query = mget.query_async::<Vec<Option<Vec<u8>>>>(&mut commands);
            let outcome = match tokio::time::timeout(REDIS_TIMEOUT, query).await {
                Ok(Ok(values)) if values.len() == targets.len() => Ok(targets
                    .into_iter()
                    .zip(values)
                    .map(|((uuid, registration, _), value)| (uuid, registration, value))
                    .collect()),
                Ok(Ok(values)) => Err(format!(
                    "MGET returned {} values for {} keys",
                    values.len(),
                    targets.len()
                )),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {} s", REDIS_TIMEOUT.as_secs())),
            };
            Done::Polled(outcome)
        });
    }

    fn on_polled(&mut self, outcome: Result<Vec<PolledResult>, String>) {
        self.poll_in_flight = false;
        let now = Instant::now();
        let found = match outcome {
            Ok(found) => found,
            Err(problem) => {
                self.redis_error(&format!("reading task results: {problem}"), now);
                return;
            }
        };
        let mut any = false;
        for (uuid, registration, value) in found {
            let Some(data) = value else { continue };
            let Some(job) = self.jobs.get_mut(&uuid) else {
                continue;
            };
            if job.registration != registration || job.pending.is_some() {
                continue;
            }
            let meta = match ResultMeta::parse(&data) {
                Ok(meta) => meta,
                Err(problem) => {
                    self.counters
                        .malformed_results
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(held_back) = self
                        .warnings
                        .check("malformed status message", now.into_std())
                    {
                        warn!(
                            "job {uuid}: unreadable Celery result for task {}: {problem}{}",
                            job.task_id,
                            suppressed_note(held_back)
                        );
                    }
                    continue;
                }
            };
            if !meta.is_ready() {
                continue;
            }
            let update = status::terminal_from_result(&uuid, &job.task_id, &meta);
            job.pending = Some(Pending {
                update,
                epoch: self.epoch,
                since: now,
                source: PendingSource::Result,
            });
            any = true;
        }
        if any {
            self.start_barrier();
        }
        if self.poll_now {
            self.start_poll();
        }
    }

    fn check_deadline(&mut self, uuid: &str, now: Instant) {
        let unreachable_grace = self.config.unreachable_grace;
        let Some(job) = self.jobs.get_mut(uuid) else {
            return;
        };
        let job_deadline = job.deadline;
        if !matches!(self.link, Link::Up { .. }) {
            if now.duration_since(job_deadline) >= unreachable_grace {
                self.fail_unreachable(uuid);
            }
            return;
        }
        job.deadline_check_in_flight = true;
        let registration = job.registration;
        let key = result_key(&job.task_id);
        let message = job.message.clone();
        let mut commands = self.commands.clone();
        let uuid = uuid.to_owned();
        self.tasks.spawn(async move {
            let check = async {
                let data: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut commands)
                    .await?;
                let meta = data.and_then(|d| ResultMeta::parse(&d).ok());
                if let Some(meta) = meta.filter(ResultMeta::is_ready) {
                    return Ok(DeadlineFinding::Result(meta));
                }
                let Some(message) = message else {
                    return Ok(DeadlineFinding::Whereabouts(Whereabouts::Unknown));
                };
                // Atomic: if this removes the message, no worker has it and none ever will.
                let removed: i64 = redis::cmd("LREM")
                    .arg(&message.queue)
                    .arg(1)
                    .arg(&message.text)
                    .query_async(&mut commands)
                    .await?;
                if removed > 0 {
                    return Ok(DeadlineFinding::Whereabouts(Whereabouts::InQueue));
                }
                // kombu keeps a message a worker holds but has not acknowledged (started, for tasks that are not
                // acks_late) in the `unacked` hash under its delivery tag.
                let reserved: bool = redis::cmd("HEXISTS")
                    .arg("unacked")
                    .arg(&message.delivery_tag)
                    .query_async(&mut commands)
                    .await?;
                Ok::<_, redis::RedisError>(DeadlineFinding::Whereabouts(if reserved {
                    Whereabouts::ReservedUnstarted
                } else {
                    Whereabouts::StartedOrLost
                }))
            };
            let outcome = match tokio::time::timeout(REDIS_TIMEOUT, check).await {
                Ok(Ok(finding)) => Ok(finding),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {} s", REDIS_TIMEOUT.as_secs())),
            };
            Done::DeadlineChecked {
                uuid,
                registration,
                outcome,
            }
        });
    }

    /// Ends a job whose timeout passed while Redis could not say what became of its task.
    fn fail_unreachable(&mut self, uuid: &str) {
        let Some(job) = self.jobs.get(uuid) else {
            return;
        };
        let update = JobStatusUpdate::horde_failed(
            uuid,
            HordeFailureReason::UnhandledTimeout,
            format!(
                "the job reached its timeout ({} s) while the Celery pipeline's Redis was unreachable; what \
                 became of its task is unknown",
                self.config.job_timeout.as_secs_f64()
            ),
            Some(task_context(&job.task_id)),
        );
        warn!("job {uuid}: timed out while Redis was unreachable: reported horde_failed");
        self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
        self.forward(uuid, update);
    }

    fn on_deadline_checked(
        &mut self,
        uuid: String,
        registration: u64,
        outcome: Result<DeadlineFinding, String>,
    ) {
        let now = Instant::now();
        let timeout = self.config.job_timeout;
        let queue = self.config.queue.clone();
        let epoch = self.epoch;
        let Some(job) = self.jobs.get_mut(&uuid) else {
            return;
        };
        if job.registration != registration {
            return;
        }
        job.deadline_check_in_flight = false;
        let (update, source) = match outcome {
            Ok(DeadlineFinding::Result(meta)) => (
                status::terminal_from_result(&uuid, &job.task_id, &meta),
                PendingSource::Result,
            ),
            Ok(DeadlineFinding::Whereabouts(whereabouts)) => (
                status::terminal_at_timeout(&uuid, &job.task_id, timeout, whereabouts, &queue),
                PendingSource::Timeout,
            ),
            Err(problem) => {
                let overdue = now.duration_since(job.deadline) >= self.config.unreachable_grace;
                self.redis_error(
                    &format!("checking job {uuid}'s task at its timeout: {problem}"),
                    now,
                );
                if overdue {
                    self.fail_unreachable(&uuid);
                }
                return;
            }
        };
        if job.pending.is_none() {
            job.pending = Some(Pending {
                update,
                epoch,
                since: now,
                source,
            });
        }
        self.start_barrier();
    }

    fn start_barrier(&mut self) {
        let epoch = self.epoch;
        let Link::Up {
            sink,
            barrier_in_flight,
            last_ping,
            ..
        } = &mut self.link
        else {
            return;
        };
        if *barrier_in_flight {
            return;
        }
        *barrier_in_flight = true;
        *last_ping = Instant::now();
        self.epoch += 1;
        let mut sink = sink.clone();
        self.tasks.spawn(async move {
            let outcome =
                match tokio::time::timeout(REDIS_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no PONG within {} s", REDIS_TIMEOUT.as_secs())),
                };
            Done::Barrier { epoch, outcome }
        });
    }

    fn on_barrier(&mut self, epoch: u64, outcome: Result<(), String>) {
        if let Link::Up {
            barrier_in_flight, ..
        } = &mut self.link
        {
            *barrier_in_flight = false;
        }
        if let Err(problem) = outcome {
            self.link_lost(&format!("PING failed: {problem}"));
            return;
        }
        // The PONG came after every message published before the PING; the connection's task queued those
        // messages for the stream before it answered the PING, so they are all ready here: handle them first.
        loop {
            let next = match &mut self.link {
                Link::Up { stream, .. } => stream.next().now_or_never(),
                _ => None,
            };
            match next {
                Some(message) => {
                    let ended = message.is_none();
                    self.on_message(message);
                    if ended {
                        break;
                    }
                }
                None => break,
            }
        }
        let ready: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, job)| job.pending.as_ref().is_some_and(|p| p.epoch <= epoch))
            .map(|(uuid, _)| uuid.clone())
            .collect();
        for uuid in ready {
            self.finish_pending(&uuid, false);
        }
        if self.jobs.values().any(|job| job.pending.is_some()) {
            self.start_barrier();
        }
    }

    /// Forwards a job's pending terminal status (no published terminal status came before it).
    fn finish_pending(&mut self, uuid: &str, without_barrier: bool) {
        let Some(job) = self.jobs.get_mut(uuid) else {
            return;
        };
        let Some(pending) = job.pending.take() else {
            return;
        };
        let status = pending.update.status;
        match pending.source {
            PendingSource::Result => {
                self.counters.from_results.fetch_add(1, Ordering::Relaxed);
                if job.gap || without_barrier {
                    warn!(
                        "job {uuid}: terminal status {:?} taken from Celery task {}'s result; statuses published \
                         while the client was not listening were missed",
                        status.as_str(),
                        job.task_id
                    );
                } else if status == JobStatus::HordeFailed {
                    warn!(
                        "job {uuid}: Celery task {} ended without publishing a terminal status: reported \
                         horde_failed",
                        job.task_id
                    );
                } else {
                    info!(
                        "job {uuid}: Celery task {} published no terminal status; {:?} taken from its result",
                        job.task_id,
                        status.as_str()
                    );
                }
            }
            PendingSource::Timeout => {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                warn!(
                    "job {uuid}: no terminal status from Celery task {} within the job timeout: reported \
                     horde_failed",
                    job.task_id
                );
            }
        }
        self.forward(uuid, pending.update);
    }

    fn redis_error(&mut self, what: &str, now: Instant) {
        self.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
        if let Some(held_back) = self.warnings.check("Redis error", now.into_std()) {
            warn!(
                "celery handler: Redis at {}: {what}{}",
                self.config.redacted_broker(),
                suppressed_note(held_back)
            );
        }
    }

    /// A spawned Redis operation panicked or was cancelled (neither should happen: they return errors): its
    /// outcome is unknown, so every "in flight" mark is cleared and the work is redone on the next tick.
    fn recover_from_lost_task(&mut self, error: &tokio::task::JoinError) {
        warn!("celery handler: a Redis operation's task failed: {error}; retrying");
        self.poll_in_flight = false;
        for job in self.jobs.values_mut() {
            job.deadline_check_in_flight = false;
        }
        match &mut self.link {
            Link::Up {
                barrier_in_flight, ..
            } => *barrier_in_flight = false,
            Link::Connecting => {
                self.link = Link::Down {
                    retry_at: Instant::now() + reconnect_delay(self.reconnect_attempts),
                };
            }
            Link::Down { .. } => {}
        }
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Connected(outcome) => self.on_connected(outcome),
            Done::Polled(outcome) => self.on_polled(outcome),
            Done::Barrier { epoch, outcome } => self.on_barrier(epoch, outcome),
            Done::DeadlineChecked {
                uuid,
                registration,
                outcome,
            } => self.on_deadline_checked(uuid, registration, outcome),
        }
    }
}

fn task_context(task_id: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut map = serde_json::Map::new();
    map.insert("celery_task_id".into(), task_id.into());
    map
}

fn reconnect_delay(attempts: u32) -> Duration {
    RECONNECT_FIRST
        .saturating_mul(1u32 << attempts.min(16))
        .min(RECONNECT_CAP)
}

/// The next message on the link, or pending forever while there is none. `None` means the connection ended.
async fn next_message(link: &mut Link) -> Option<redis::Msg> {
    match link {
        // Cancel safe: the stream is an mpsc receiver.
        Link::Up { stream, .. } => stream.next().await,
        _ => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_double_up_to_the_cap() {
        let delays: Vec<u128> = (0..10).map(|a| reconnect_delay(a).as_millis()).collect();
        assert_eq!(
            delays,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(reconnect_delay(u32::MAX), RECONNECT_CAP);
    }
}
