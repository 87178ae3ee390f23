//! What comes back from the validator's Celery side: status messages on Redis pub/sub (channels_redis's
//! `RedisPubSubChannelLayer`, msgpack) and task results in Celery's Redis result backend (JSON), and the terminal
//! status a job gets from a result or from running out of time.
//!
//! Owns: the channel naming (`job_status_updates__<uuid>`, published by `channel_layer.send` with no prefix: proved by
//! `tests/celery/fixtures/channels_redis_publish.monitor.txt`), decoding a message into the crate's
//! `JobStatusUpdate` as the validator's `_JobStatusChannelEnvelope` model reads it, reading a result's state, and
//! the exact `horde_failed` texts of the failure paths. Must never: do I/O, or turn anything malformed into a
//! status (a message that does not decode is an error for the caller to count and log).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::protocol::{HordeFailureReason, JobStatus, JobStatusUpdate};

/// The pub/sub channel prefix the validator's workers publish a job's status updates under.
pub(super) const CHANNEL_PREFIX: &str = "job_status_updates__";

/// The pattern the handler subscribes to (PSUBSCRIBE): every job's status channel.
pub(super) const CHANNEL_PATTERN: &str = "job_status_updates__*";

/// The job UUID of a status channel name, if it is one.
pub(super) fn job_uuid_of_channel(channel: &str) -> Option<&str> {
    channel
        .strip_prefix(CHANNEL_PREFIX)
        .filter(|uuid| !uuid.is_empty())
}

/// Why a pub/sub message is not a status update.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum StatusMessageError {
    /// Not msgpack, or not a map with a `payload`.
    #[error("not a channels_redis message (msgpack map with `type` and `payload`): {0}")]
    Envelope(String),
    /// `type` is not `job_status_update`.
    #[error("message type is {0:?}, not \"job_status_update\"")]
    WrongType(String),
    /// The payload is not a `V0JobStatusUpdate`.
    #[error("payload is not a V0JobStatusUpdate: {0}")]
    Payload(String),
    /// The payload's `uuid` is not the channel's.
    #[error("payload uuid {payload:?} does not match the channel's job {channel:?}")]
    UuidMismatch {
        /// The channel's job.
        channel: String,
        /// The payload's `uuid`.
        payload: String,
    },
    /// `status` is not a value the protocol knows.
    #[error("unknown status value")]
    UnknownStatus,
}

#[derive(Deserialize)]
struct ChannelEnvelope {
    // The validator's `_JobStatusChannelEnvelope`: `type` defaults to "job_status_update"; any other is invalid.
    #[serde(rename = "type", default)]
    kind: Option<String>,
    payload: Value,
}

/// Decodes one message published on `job_status_updates__<uuid>`: msgpack of
/// `{"type": "job_status_update", "payload": <JobStatusUpdate.model_dump(mode="json")>}`.
///
/// The payload's `message_type` (written by `model_dump`) must be `V0JobStatusUpdate` when present; `metadata`
/// `null` becomes the empty metadata (always an object on the wire to the facilitator).
pub(super) fn decode_status_message(
    channel_uuid: &str,
    data: &[u8],
) -> Result<JobStatusUpdate, StatusMessageError> {
    let envelope: ChannelEnvelope =
        rmp_serde::from_slice(data).map_err(|e| StatusMessageError::Envelope(e.to_string()))?;
    match envelope.kind {
        Some(kind) if kind != "job_status_update" => {
            return Err(StatusMessageError::WrongType(kind));
        }
        _ => {}
    }
    let update = status_update_from_value(envelope.payload).map_err(StatusMessageError::Payload)?;
    if update.uuid != channel_uuid {
        return Err(StatusMessageError::UuidMismatch {
            channel: channel_uuid.to_owned(),
            payload: update.uuid,
        });
    }
    if update.status == JobStatus::Unknown {
        return Err(StatusMessageError::UnknownStatus);
    }
    Ok(update)
}

/// A `JobStatusUpdate.model_dump()` map (with or without `message_type`) as the crate's status update.
pub(super) fn status_update_from_value(value: Value) -> Result<JobStatusUpdate, String> {
    let Value::Object(mut map) = value else {
        return Err(format!("expected a map, found {}", kind_of(&value)));
    };
    match map.remove("message_type") {
        None => {}
        Some(Value::String(t)) if t == "V0JobStatusUpdate" => {}
        Some(other) => {
            return Err(format!(
                "message_type is {other}, not \"V0JobStatusUpdate\""
            ));
        }
    }
    JobStatusUpdate::deserialize(Value::Object(map)).map_err(|e| e.to_string())
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// A task's entry in Celery's Redis result backend (`celery-task-meta-<task id>`), as far as the handler reads it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(super) struct ResultMeta {
    /// `PENDING` is never stored; `STARTED` only with `track_started`; `SUCCESS`, `FAILURE` and `REVOKED` are final.
    pub status: String,
    /// The task's return value (`SUCCESS`) or `{exc_type, exc_message, exc_module}` (`FAILURE`, `REVOKED`).
    #[serde(default)]
    pub result: Value,
    /// The Python traceback of a failure, if any.
    #[serde(default)]
    pub traceback: Option<String>,
}

impl ResultMeta {
    /// Parses the stored JSON.
    pub(super) fn parse(data: &[u8]) -> Result<ResultMeta, String> {
        serde_json::from_slice(data).map_err(|e| format!("not a Celery result: {e}"))
    }

    /// Whether the task has ended (Celery's `READY_STATES`).
    pub(super) fn is_ready(&self) -> bool {
        matches!(self.status.as_str(), "SUCCESS" | "FAILURE" | "REVOKED")
    }

    /// `exc_type: message` of a failure or revocation, as Python would print the exception.
    pub(super) fn exception(&self) -> Option<(String, String)> {
        let Value::Object(map) = &self.result else {
            return None;
        };
        let exc_type = map.get("exc_type")?.as_str()?.to_owned();
        let message = match map.get("exc_message") {
            Some(Value::Array(args)) if args.len() == 1 => text_of(&args[0]),
            Some(Value::Array(args)) => args.iter().map(text_of).collect::<Vec<_>>().join(", "),
            Some(other) => text_of(other),
            None => String::new(),
        };
        Some((exc_type, message))
    }
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Where a task was when its job ran out of time without a terminal status or a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Whereabouts {
    /// Its message was still in the queue (the handler removed it, so it will never run): no worker took it.
    InQueue,
    /// A worker had reserved it (prefetched, kombu's `unacked` hash) but not started it; that worker will mark it
    /// REVOKED (`expired`) when it gets to it.
    ReservedUnstarted,
    /// Not queued and not reserved: a worker started it (or it was lost with a Redis that kept no data).
    StartedOrLost,
    /// The handler cannot tell (a job re-attached after a restart: its message is not known).
    Unknown,
}

/// The terminal status for a job whose task's result is ready but which published no terminal status the handler
/// saw: the result's own terminal status (the contract's return value) when it has one, else `horde_failed`
/// saying what the result says.
pub(super) fn terminal_from_result(
    uuid: &str,
    task_id: &str,
    meta: &ResultMeta,
) -> JobStatusUpdate {
    let context = |extra: &[(&str, Value)]| {
        let mut map = Map::new();
        map.insert("celery_task_id".into(), task_id.into());
        map.insert("celery_state".into(), meta.status.clone().into());
        for (k, v) in extra {
            map.insert((*k).into(), v.clone());
        }
        Some(map)
    };
    match meta.status.as_str() {
        "SUCCESS" => match status_update_from_value(meta.result.clone()) {
            Ok(mut update) if update.status.is_terminal() => {
                update.uuid = uuid.to_owned();
                update
            }
            Ok(update) => JobStatusUpdate::horde_failed(
                uuid,
                HordeFailureReason::GenericError,
                format!(
                    "the Celery task succeeded without a terminal status: it returned status {:?}",
                    update.status.as_str()
                ),
                context(&[]),
            ),
            Err(problem) => JobStatusUpdate::horde_failed(
                uuid,
                HordeFailureReason::GenericError,
                format!(
                    "the Celery task succeeded without a terminal status: its result is not a status update \
                     ({problem})"
                ),
                context(&[]),
            ),
        },
        "REVOKED" => {
            let (_, message) = meta.exception().unwrap_or_default();
            if message == "expired" {
                JobStatusUpdate::horde_failed(
                    uuid,
                    HordeFailureReason::UnhandledTimeout,
                    "the job expired before a Celery worker started it",
                    context(&[]),
                )
            } else {
                JobStatusUpdate::horde_failed(
                    uuid,
                    HordeFailureReason::GenericError,
                    format!("the Celery task was revoked ({message})"),
                    context(&[]),
                )
            }
        }
        _ => {
            let (exc_type, message) = meta
                .exception()
                .unwrap_or_else(|| ("unknown".to_owned(), meta.result.to_string()));
            JobStatusUpdate::horde_failed(
                uuid,
                HordeFailureReason::UnhandledException,
                format!("the Celery task failed without a terminal status: {exc_type}: {message}"),
                context(&[
                    ("exception_type", exc_type.clone().into()),
                    ("exception_message", message.clone().into()),
                ]),
            )
        }
    }
}

/// The terminal status for a job that reached its timeout with neither a terminal status nor a final result.
pub(super) fn terminal_at_timeout(
    uuid: &str,
    task_id: &str,
    timeout: Duration,
    whereabouts: Whereabouts,
    queue: &str,
) -> JobStatusUpdate {
    let secs = timeout.as_secs_f64();
    let message = match whereabouts {
        Whereabouts::InQueue => format!(
            "the job expired unstarted: no Celery worker took it from queue {queue:?} within the job timeout \
             ({secs} s); it was removed from the queue"
        ),
        Whereabouts::ReservedUnstarted => format!(
            "the job expired unstarted: a Celery worker reserved it but did not start it within the job timeout \
             ({secs} s)"
        ),
        Whereabouts::StartedOrLost => format!(
            "the job ran past the job timeout ({secs} s) without a terminal status (a Celery worker took it: it \
             is still running, or its worker or Redis lost it)"
        ),
        Whereabouts::Unknown => {
            format!("no terminal status and no Celery result within the job timeout ({secs} s)")
        }
    };
    let mut context = Map::new();
    context.insert("celery_task_id".into(), task_id.into());
    context.insert("timeout_seconds".into(), secs.into());
    JobStatusUpdate::horde_failed(
        uuid,
        HordeFailureReason::UnhandledTimeout,
        message,
        Some(context),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{JobParticipantType, JobRejectionReason};

    const UUID: &str = "00000000-0000-4000-8000-000000000001";

    /// The exact bytes channels_redis 4.2.0 published for an `accepted` update (captured with `redis-cli MONITOR`,
    /// `tests/celery/fixtures/channels_redis_publish.monitor.txt`).
    const CAPTURED: &[u8] = b"\x82\xa4type\xb1job_status_update\xa7payload\x84\xacmessage_type\xb1V0JobStatusUpdate\xa4uuid\xd9$00000000-0000-4000-8000-000000000001\xa6status\xa8accepted\xa8metadata\xc0";

    fn pack(value: &Value) -> Vec<u8> {
        rmp_serde::to_vec_named(value).expect("packs")
    }

    #[test]
    fn decodes_the_captured_channels_redis_message() {
        let update = decode_status_message(UUID, CAPTURED).expect("decodes");
        assert_eq!(update, JobStatusUpdate::new(UUID, JobStatus::Accepted));
    }

    #[test]
    fn decodes_metadata_and_keeps_unknown_metadata_keys() {
        let message = serde_json::json!({"type": "job_status_update", "payload": {
            "message_type": "V0JobStatusUpdate", "uuid": UUID, "status": "rejected",
            "metadata": {"miner_response": null, "job_rejection_details": {"rejected_by": "validator",
                "reason": "no_miner_for_job", "message": "m", "context": null}, "job_failure_details": null,
                "horde_failure_details": null, "streaming_details": null, "extra_key": 7}}});
        let update = decode_status_message(UUID, &pack(&message)).expect("decodes");
        let details = update
            .metadata
            .job_rejection_details
            .as_ref()
            .expect("rejection details");
        assert_eq!(details.rejected_by, JobParticipantType::Validator);
        assert_eq!(details.reason, JobRejectionReason::NoMinerForJob);
        assert_eq!(
            update.metadata.extra.get("extra_key"),
            Some(&Value::from(7))
        );
    }

    #[test]
    fn refuses_what_the_validator_would_refuse() {
        let cases = [
            (b"\xc1garbage".to_vec(), "Envelope"),
            (
                pack(
                    &serde_json::json!({"type": "other", "payload": {"uuid": UUID, "status": "accepted"}}),
                ),
                "WrongType",
            ),
            (
                pack(&serde_json::json!({"type": "job_status_update", "payload": {"uuid": UUID}})),
                "Payload",
            ),
            (
                pack(
                    &serde_json::json!({"payload": {"uuid": UUID, "status": "accepted", "bogus": 1}}),
                ),
                "Payload",
            ),
            (
                pack(
                    &serde_json::json!({"payload": {"message_type": "V0Heartbeat", "uuid": UUID,
                    "status": "accepted"}}),
                ),
                "Payload",
            ),
            (
                pack(&serde_json::json!({"payload": {"uuid": "other", "status": "accepted"}})),
                "UuidMismatch",
            ),
            (
                pack(&serde_json::json!({"payload": {"uuid": UUID, "status": "dancing"}})),
                "UnknownStatus",
            ),
        ];
        for (data, expected) in cases {
            let error = decode_status_message(UUID, &data).expect_err(expected);
            assert!(format!("{error:?}").starts_with(expected), "{error:?}");
        }
    }

    #[test]
    fn the_type_key_may_be_absent_as_in_the_validators_model() {
        let data = pack(&serde_json::json!({"payload": {"uuid": UUID, "status": "accepted"}}));
        assert!(decode_status_message(UUID, &data).is_ok());
    }

    #[test]
    fn channel_names_map_to_job_uuids() {
        assert_eq!(job_uuid_of_channel("job_status_updates__abc"), Some("abc"));
        assert_eq!(job_uuid_of_channel("job_status_updates__"), None);
        assert_eq!(job_uuid_of_channel("asgi__group__x"), None);
    }

    fn captured_results() -> Vec<ResultMeta> {
        include_str!("../../../tests/celery/fixtures/result_meta.jsonl")
            .lines()
            .map(|line| ResultMeta::parse(line.as_bytes()).expect("captured result parses"))
            .collect()
    }

    fn captured(status: &str, exc_type: Option<&str>) -> ResultMeta {
        captured_results()
            .into_iter()
            .find(|m| m.status == status && m.exception().map(|e| e.0).as_deref() == exc_type)
            .expect("fixture present")
    }

    #[test]
    fn a_successful_result_gives_its_terminal_status() {
        let meta = captured("SUCCESS", None);
        assert!(meta.is_ready());
        let update = terminal_from_result(UUID, "t", &meta);
        assert_eq!(update.uuid, UUID);
        assert_eq!(update.status, JobStatus::Completed);
        assert!(update.metadata.miner_response.is_some());
    }

    #[test]
    fn a_failed_result_becomes_horde_failed_with_the_exception() {
        let meta = captured("FAILURE", Some("RuntimeError"));
        let update = terminal_from_result(UUID, "t", &meta);
        assert_eq!(update.status, JobStatus::HordeFailed);
        let details = update.metadata.horde_failure_details.expect("details");
        assert_eq!(details.reason, HordeFailureReason::UnhandledException);
        assert!(
            details.message.contains("RuntimeError: test task raised"),
            "{}",
            details.message
        );
        let context = details.context.expect("context");
        assert_eq!(context["exception_type"], "RuntimeError");
        assert_eq!(context["celery_task_id"], "t");

        let lost = terminal_from_result(UUID, "t", &captured("FAILURE", Some("WorkerLostError")));
        let message = lost
            .metadata
            .horde_failure_details
            .expect("details")
            .message;
        assert!(
            message.contains("WorkerLostError: Worker exited prematurely: signal 9"),
            "{message}"
        );
    }

    #[test]
    fn an_expired_result_says_so() {
        let meta = captured("REVOKED", Some("TaskRevokedError"));
        let update = terminal_from_result(UUID, "t", &meta);
        let details = update.metadata.horde_failure_details.expect("details");
        assert_eq!(details.reason, HordeFailureReason::UnhandledTimeout);
        assert!(
            details
                .message
                .contains("expired before a Celery worker started it")
        );
    }

    #[test]
    fn a_success_without_a_terminal_status_is_horde_failed() {
        for result in [
            Value::Null,
            serde_json::json!({"uuid": UUID, "status": "accepted"}),
        ] {
            let meta = ResultMeta {
                status: "SUCCESS".into(),
                result,
                traceback: None,
            };
            let update = terminal_from_result(UUID, "t", &meta);
            assert_eq!(update.status, JobStatus::HordeFailed);
        }
    }

    #[test]
    fn pending_and_started_are_not_ready() {
        for status in ["PENDING", "STARTED", "RETRY", "RECEIVED"] {
            let meta = ResultMeta {
                status: status.into(),
                result: Value::Null,
                traceback: None,
            };
            assert!(!meta.is_ready(), "{status}");
        }
    }

    #[test]
    fn timeouts_say_where_the_task_was() {
        let t = Duration::from_secs(600);
        let text = |w| {
            terminal_at_timeout(UUID, "t", t, w, "organic_jobs")
                .metadata
                .horde_failure_details
                .expect("details")
                .message
        };
        assert!(text(Whereabouts::InQueue).contains("expired unstarted: no Celery worker took it"));
        assert!(text(Whereabouts::ReservedUnstarted).contains("reserved it but did not start it"));
        assert!(text(Whereabouts::StartedOrLost).contains("ran past the job timeout (600 s)"));
        assert!(text(Whereabouts::Unknown).contains("within the job timeout"));
    }
}
