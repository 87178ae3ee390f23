//! Prometheus metrics with the official `prometheus-client` crate, rendered as OpenMetrics text.
//!
//! Two families of series:
//! - `validator_facilitator_client_*`: the names (and meanings, and histogram buckets) of the ComputeHorde
//!   validator's Python facilitator client, so dashboards written for it keep working;
//! - `facilitator_client_*`: this client's own (state, outbox, jobs, decode errors, round-trip and job times, spool).
//!
//! What the machine counts is read from the runtime's metrics snapshot at scrape time (a [`Collector`]), so it can
//! never drift from [`crate::runtime::Metrics`]; only what must be measured as it happens (durations, transport
//! events, decode errors by kind) is recorded here through [`Telemetry`]'s `observe_*`/`count_*` methods. Counters
//! are registered without `_total`: the crate appends it. This module never reads the clock: times come from the
//! caller.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::machine::StateKind;
use crate::protocol::DecodeError;
use crate::runtime::Metrics;

/// The `Content-Type` of the rendered text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Python client's buckets for connection, authentication and send durations (seconds).
pub const TRANSPORT_BUCKETS: [f64; 15] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 3.0, 5.0, 10.0,
];

/// Buckets of the WebSocket Ping round-trip time (seconds).
pub const RTT_BUCKETS: [f64; 15] = TRANSPORT_BUCKETS;

/// Buckets of a job's time from accepted to terminal (seconds): jobs take from milliseconds (echo) to an hour.
pub const JOB_BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Prefix of the series named as the Python client's.
pub const VALIDATOR_PREFIX: &str = "validator_facilitator_client";

/// Prefix of this client's own series.
pub const CLIENT_PREFIX: &str = "facilitator_client";

/// How a connection attempt or an authenticated connection ended, as the Python client's `event` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportEvent {
    /// Authenticated.
    Success,
    /// A failed connect, a connect timeout, or a lost socket.
    TransportError,
    /// The facilitator refused the authentication (close 3000 or 3001, an error Response).
    AuthError,
    /// Anything else (e.g. a frame that is not the auth Response).
    UnknownError,
}

impl TransportEvent {
    /// Every event, in label order.
    pub const ALL: [TransportEvent; 4] = [
        TransportEvent::Success,
        TransportEvent::TransportError,
        TransportEvent::AuthError,
        TransportEvent::UnknownError,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportEvent::Success => "success",
            TransportEvent::TransportError => "transport_error",
            TransportEvent::AuthError => "auth_error",
            TransportEvent::UnknownError => "unknown_error",
        }
    }
}

/// The `kind` label of a decode error.
pub fn decode_error_kind(error: &DecodeError) -> &'static str {
    match error {
        DecodeError::Binary => "binary",
        DecodeError::TooLarge { .. } => "too_large",
        DecodeError::NotJson(_) => "not_json",
        DecodeError::NotAnObject(_) => "not_an_object",
        DecodeError::UnknownMessageType(_) => "unknown_message_type",
        DecodeError::Unrecognized(_) => "unrecognized",
        DecodeError::InvalidResponse(_) => "invalid_response",
        DecodeError::InvalidJobRequest { .. } => "invalid_job_request",
        DecodeError::InvalidJobRequestWithoutUuid(_) => "invalid_job_request_without_uuid",
        DecodeError::InvalidJobCheated(_) => "invalid_job_cheated",
    }
}

/// Every `kind` label of [`decode_error_kind`] (each series exists from the start, at 0).
pub const DECODE_ERROR_KINDS: [&str; 10] = [
    "binary",
    "too_large",
    "not_json",
    "not_an_object",
    "unknown_message_type",
    "unrecognized",
    "invalid_response",
    "invalid_job_request",
    "invalid_job_request_without_uuid",
    "invalid_job_cheated",
];

/// The Python class name of a message the client sends, from its wire `message_type`.
pub fn sent_message_label(message_type: &str) -> &str {
    match message_type {
        "V0JobStatusUpdate" => "JobStatusUpdate",
        other => other,
    }
}

/// What the snapshot collector reads at each scrape.
#[derive(Debug, Clone)]
pub struct ScrapeView {
    /// The runtime's metrics snapshot.
    pub metrics: Metrics,
    /// How long the client has been in its current state.
    pub in_state_for: Duration,
    /// The spool, once there is one.
    pub spool: Option<SpoolStatus>,
}

/// The spool's figures, for the metrics and `/healthz`. Filled in by the spool when it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolStatus {
    /// Bytes on disk.
    pub bytes: u64,
    /// Records held (unacknowledged statuses and running jobs).
    pub entries: u64,
    /// How long the spool file has lacked changes the client holds in memory (since a commit failed and until a
    /// full snapshot succeeds); zero while it is up to date. `None`: not known.
    pub staleness: Option<Duration>,
    /// Commits or reads that failed since start.
    pub errors: u64,
}

/// Status updates never delivered: refused by the facilitator (not retried), plus, once stopped, what was left
/// in the outbox. (Job requests left unanswered because the outbox was full are counted apart, as the jobs
/// outcome `unanswered`: no status was ever made for them.)
pub fn statuses_undelivered(metrics: &Metrics) -> u64 {
    let left = if metrics.state == StateKind::Stopped {
        (metrics.outbox_queued + metrics.in_flight) as u64
    } else {
        0
    };
    metrics.counters.statuses_refused + left
}

type ViewFn = dyn Fn() -> ScrapeView + Send + Sync;

/// One label, e.g. `[("event", "success")]`.
type Label = [(&'static str, &'static str); 1];

/// The registry and the metrics observed as they happen. Cheap to share (`Arc`); every method takes `&self`.
pub struct Telemetry {
    registry: Registry,
    transport_events: Family<Label, Counter>,
    connect_duration: Histogram,
    auth_duration: Histogram,
    send_duration: Family<Label, Histogram, fn() -> Histogram>,
    ping_rtt: Histogram,
    job_duration: Histogram,
    decode_errors: Family<Label, Counter>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

fn transport_histogram() -> Histogram {
    Histogram::new(TRANSPORT_BUCKETS)
}

impl Telemetry {
    /// Registers every series; `view` is called at each scrape for the values the runtime's snapshot holds.
    pub fn new(view: impl Fn() -> ScrapeView + Send + Sync + 'static) -> Telemetry {
        let view: Arc<ViewFn> = Arc::new(view);
        let mut registry = Registry::default();
        let telemetry_parts = {
            let validator = registry.sub_registry_with_prefix(VALIDATOR_PREFIX);
            let transport_events = Family::<Label, Counter>::default();
            for event in TransportEvent::ALL {
                // Created at 0 so every series has a value from the first scrape.
                drop(transport_events.get_or_create(&[("event", event.as_str())]));
            }
            validator.register(
                "transport_layer_events",
                "Connection events: success per authentication, transport_error per failed connect, connect \
                 timeout or lost socket, auth_error per auth rejection (3000, 3001, an error Response), \
                 unknown_error otherwise",
                transport_events.clone(),
            );
            let connect_duration = transport_histogram();
            validator.register_with_unit(
                "transport_layer_connection_duration",
                "Time to open the connection: TCP, TLS and the WebSocket handshake",
                Unit::Seconds,
                connect_duration.clone(),
            );
            let auth_duration = transport_histogram();
            validator.register_with_unit(
                "transport_layer_authentication_duration",
                "Time from the authentication request to its success Response",
                Unit::Seconds,
                auth_duration.clone(),
            );
            let send_duration: Family<_, _, fn() -> Histogram> =
                Family::new_with_constructor(transport_histogram);
            for message_type in ["JobStatusUpdate", "V0AuthenticationRequest"] {
                drop(send_duration.get_or_create(&[("message_type", message_type)]));
            }
            validator.register_with_unit(
                "message_send_duration",
                "Time from a message being queued to its acknowledgement (the facilitator's Response)",
                Unit::Seconds,
                send_duration.clone(),
            );
            validator.register_collector(Box::new(SnapshotCollector {
                view: Arc::clone(&view),
                part: Part::Validator,
            }));
            (
                transport_events,
                connect_duration,
                auth_duration,
                send_duration,
            )
        };
        let (transport_events, connect_duration, auth_duration, send_duration) = telemetry_parts;
        let client = registry.sub_registry_with_prefix(CLIENT_PREFIX);
        let ping_rtt = Histogram::new(RTT_BUCKETS);
        client.register_with_unit(
            "ping_rtt",
            "Round-trip time of the WebSocket Ping sent with each heartbeat",
            Unit::Seconds,
            ping_rtt.clone(),
        );
        let job_duration = Histogram::new(JOB_BUCKETS);
        client.register_with_unit(
            "job_duration",
            "Time from a job being accepted to its terminal status (or its cancellation)",
            Unit::Seconds,
            job_duration.clone(),
        );
        let decode_errors = Family::<Label, Counter>::default();
        for kind in DECODE_ERROR_KINDS {
            drop(decode_errors.get_or_create(&[("kind", kind)]));
        }
        client.register(
            "decode_errors",
            "Frames from the facilitator that could not be decoded, by kind",
            decode_errors.clone(),
        );
        client.register_collector(Box::new(SnapshotCollector {
            view,
            part: Part::Client,
        }));
        Telemetry {
            registry,
            transport_events,
            connect_duration,
            auth_duration,
            send_duration,
            ping_rtt,
            job_duration,
            decode_errors,
        }
    }

    /// The OpenMetrics text of every series (ends with `# EOF`).
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut text = String::with_capacity(16 << 10);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// A connection attempt or an authenticated connection ended this way.
    pub fn count_transport_event(&self, event: TransportEvent) {
        self.transport_events
            .get_or_create(&[("event", event.as_str())])
            .inc();
    }

    /// TCP + TLS + WebSocket handshake took this long.
    pub fn observe_connect(&self, took: Duration) {
        self.connect_duration.observe(took.as_secs_f64());
    }

    /// The auth request's success Response came this long after the request.
    pub fn observe_auth(&self, took: Duration) {
        self.auth_duration.observe(took.as_secs_f64());
    }

    /// A message of this type (the wire `message_type` or the Python class name) was acknowledged this long
    /// after it was queued.
    pub fn observe_send(&self, message_type: &'static str, took: Duration) {
        let label = sent_message_label(message_type);
        self.send_duration
            .get_or_create(&[("message_type", label)])
            .observe(took.as_secs_f64());
    }

    /// A Pong came this long after its Ping.
    pub fn observe_rtt(&self, took: Duration) {
        self.ping_rtt.observe(took.as_secs_f64());
    }

    /// A job reached its terminal status (or was cancelled) this long after it was accepted.
    pub fn observe_job(&self, took: Duration) {
        self.job_duration.observe(took.as_secs_f64());
    }

    /// A frame could not be decoded.
    pub fn count_decode_error(&self, error: &DecodeError) {
        self.decode_errors
            .get_or_create(&[("kind", decode_error_kind(error))])
            .inc();
    }
}

#[derive(Debug, Clone, Copy)]
enum Part {
    Validator,
    Client,
}

/// Renders, at each scrape, the series whose values the runtime's snapshot holds.
struct SnapshotCollector {
    view: Arc<ViewFn>,
    part: Part,
}

impl fmt::Debug for SnapshotCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotCollector")
            .field("part", &self.part)
            .finish_non_exhaustive()
    }
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let view = (self.view)();
        match self.part {
            Part::Validator => encode_validator(&mut encoder, &view),
            Part::Client => encode_client(&mut encoder, &view),
        }
    }
}

fn gauge<V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: V,
) -> Result<(), fmt::Error>
where
    ConstGauge<V>: EncodeMetric,
{
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn labelled<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    label: &str,
    series: impl IntoIterator<Item = (&'static str, M)>,
) -> Result<(), fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (value, metric) in series {
        metric.encode(family.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

fn encode_validator(encoder: &mut DescriptorEncoder, view: &ScrapeView) -> Result<(), fmt::Error> {
    let m = &view.metrics;
    let authenticated = matches!(m.state, StateKind::Running | StateKind::Draining);
    gauge(
        encoder,
        "transport_layer_state",
        "1 while authenticated (Running or Draining), else 0",
        None,
        i64::from(authenticated),
    )?;
    gauge(
        encoder,
        "message_queue_length",
        "Status updates queued or in flight (not yet acknowledged)",
        None,
        (m.outbox_queued + m.in_flight) as i64,
    )?;
    let sent = |wire: &str| m.messages_out.get(wire).copied().unwrap_or(0);
    let mut sent_series = vec![
        ("V0AuthenticationRequest", sent("V0AuthenticationRequest")),
        ("JobStatusUpdate", sent("V0JobStatusUpdate")),
        ("V0Heartbeat", sent("V0Heartbeat")),
    ];
    if let Some(&specs) = m.messages_out.get("V0MachineSpecsUpdate") {
        sent_series.push(("V0MachineSpecsUpdate", specs));
    }
    labelled(
        encoder,
        "messages_sent",
        "Messages written to the facilitator, by message_type (re-sends included)",
        MetricType::Counter,
        "message_type",
        sent_series
            .into_iter()
            .map(|(l, v)| (l, ConstCounter::new(v))),
    )?;
    let received = |kind: &str| m.messages_in.get(kind).copied().unwrap_or(0);
    let known = ["Response", "V2JobRequest", "V0JobCheated"];
    let unknown: u64 = m
        .messages_in
        .iter()
        .filter(|(kind, _)| !known.contains(kind))
        .map(|(_, n)| *n)
        .sum();
    labelled(
        encoder,
        "messages_received",
        "Messages received from the facilitator, by message_type (unknown: undecodable or binary frames)",
        MetricType::Counter,
        "message_type",
        known
            .into_iter()
            .map(|kind| (kind, received(kind)))
            .chain([("unknown", unknown)])
            .map(|(l, v)| (l, ConstCounter::new(v))),
    )?;
    labelled(
        encoder,
        "message_send_failures",
        "Messages never delivered, by message_type: status updates the facilitator refused, and those left \
         unacknowledged when the client stopped",
        MetricType::Counter,
        "message_type",
        [(
            "JobStatusUpdate",
            ConstCounter::new(statuses_undelivered(m)),
        )],
    )
}

fn encode_client(encoder: &mut DescriptorEncoder, view: &ScrapeView) -> Result<(), fmt::Error> {
    let m = &view.metrics;
    let c = &m.counters;
    labelled(
        encoder,
        "state",
        "1 for the client's current state, 0 for the others",
        MetricType::Gauge,
        "state",
        StateKind::ALL.map(|s| (s.as_str(), ConstGauge::new(i64::from(s == m.state)))),
    )?;
    gauge(
        encoder,
        "state_duration",
        "Time spent in the current state so far",
        Some(&Unit::Seconds),
        view.in_state_for.as_secs_f64(),
    )?;
    for (name, help, value) in [
        ("connects", "Connection attempts started", c.connects),
        (
            "authentications",
            "Successful authentications",
            c.authentications,
        ),
        (
            "reconnects",
            "Successful authentications after the first",
            c.reconnects,
        ),
        (
            "connect_failures",
            "Connection attempts that ended without authentication",
            c.auth_failures,
        ),
        (
            "disconnects",
            "Authenticated connections that were lost",
            c.disconnects,
        ),
        (
            "statuses_accepted",
            "Status updates accepted into the outbox",
            c.statuses_accepted,
        ),
        (
            "statuses_sent",
            "Status updates written to a socket, re-sends included",
            c.statuses_sent,
        ),
        (
            "statuses_resent",
            "Sends of a status update that had been sent before",
            c.statuses_resent,
        ),
        (
            "statuses_delivered",
            "Status updates stored by the facilitator",
            c.statuses_delivered,
        ),
        (
            "statuses_refused",
            "Status updates the facilitator refused (job.not_found and other errors); not retried",
            c.statuses_refused,
        ),
        (
            "statuses_undelivered",
            "Status updates never delivered: refused, or left unacknowledged at the stop",
            statuses_undelivered(m),
        ),
        (
            "statuses_dropped_late",
            "Job handlers' statuses dropped because their job had already ended (terminal status reported, or \
             cancelled)",
            c.statuses_dropped_late,
        ),
        ("heartbeats", "Heartbeats sent", c.heartbeats),
        (
            "unexpected_responses",
            "Responses with no status update in flight (ignored)",
            c.unexpected_responses,
        ),
        (
            "cheat_reports",
            "V0JobCheated reports received",
            c.cheat_reports,
        ),
        (
            "pipeline_outages",
            "Times the job handler's pipeline (the validator's Celery workers over Redis) became unavailable",
            c.pipeline_outages,
        ),
    ] {
        counter(encoder, name, help, value)?;
    }
    gauge(
        encoder,
        "statuses_queued",
        "Status updates waiting to be sent",
        None,
        m.outbox_queued as i64,
    )?;
    gauge(
        encoder,
        "statuses_in_flight",
        "Status updates sent and not yet acknowledged",
        None,
        m.in_flight as i64,
    )?;
    gauge(
        encoder,
        "running_jobs",
        "Jobs being run by the handler",
        None,
        m.running_jobs as i64,
    )?;
    gauge(
        encoder,
        "pipeline_available",
        "1 while the job handler's pipeline takes jobs (always 1 for handlers without one), 0 while job requests \
         are answered busy because it is down",
        None,
        i64::from(m.pipeline_available),
    )?;
    labelled(
        encoder,
        "cheat_reports_forwarded",
        "Verified V0JobCheated reports handed to the job handler, by outcome (not_taken: the handler takes none, \
         e.g. no --celery-cheated-task)",
        MetricType::Counter,
        "outcome",
        [
            ("forwarded", m.cheat_forwarding.forwarded),
            ("failed", m.cheat_forwarding.failed),
            ("not_taken", m.cheat_forwarding.not_taken),
        ]
        .map(|(l, v)| (l, ConstCounter::new(v))),
    )?;
    labelled(
        encoder,
        "jobs",
        "Job requests by outcome (rejections are in facilitator_client_jobs_rejected)",
        MetricType::Counter,
        "outcome",
        [
            ("accepted", c.jobs_accepted),
            ("duplicate", c.jobs_duplicate),
            ("cancelled", c.jobs_cancelled),
            ("unanswered", c.jobs_unanswered),
        ]
        .map(|(l, v)| (l, ConstCounter::new(v))),
    )?;
    labelled(
        encoder,
        "jobs_rejected",
        "Job requests answered `rejected`, by reason",
        MetricType::Counter,
        "reason",
        [
            ("invalid_signature", c.jobs_rejected_signature),
            ("draining", c.jobs_rejected_busy),
            ("full", c.jobs_rejected_full),
            ("pipeline_unavailable", c.jobs_rejected_unavailable),
            ("invalid_request", c.jobs_rejected_invalid),
        ]
        .map(|(l, v)| (l, ConstCounter::new(v))),
    )?;
    if let Some(spool) = &view.spool {
        gauge(
            encoder,
            "spool_bytes",
            "Size of the spool file",
            None,
            spool.bytes as i64,
        )?;
        gauge(
            encoder,
            "spool_entries",
            "Records held in the spool",
            None,
            spool.entries as i64,
        )?;
        if let Some(staleness) = spool.staleness {
            gauge(
                encoder,
                "spool_staleness",
                "How long the spool file has lacked changes the client holds in memory (0 while up to date)",
                Some(&Unit::Seconds),
                staleness.as_secs_f64(),
            )?;
        }
        counter(
            encoder,
            "spool_errors",
            "Spool writes or reads that failed (the client keeps everything in memory and goes on)",
            spool.errors,
        )?;
    }
    Ok(())
}
