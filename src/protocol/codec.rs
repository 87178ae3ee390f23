//! Decoding of server frames: one text frame in, one typed [`ServerMessage`] or a [`DecodeError`] that says what
//! was wrong.
//!
//! Owns the size limit (checked before parsing) and the rule that tells server messages apart (section 4.4): a
//! `Response` (strict: only `status`/`errors`), else a `V2JobRequest` (by `message_type`), else a `V0JobCheated`.
//! A frame goes first to the typed decoder ([`super::typed`]: one pass, no `Value` tree), which takes the frames a
//! facilitator sends; what it leaves goes to the validating decoder here, which decides and names the problem.
//! Must never panic on any input, and never lose a job request's exact text or `env` order.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::cheated::JobCheated;
use super::job::JobRequest;
use super::messages::Response;
use super::typed::{self, Frame};
use super::wire::{brief, brief_json, kind};

/// A sensible frame size limit: the reference validator's WebSocket library refuses messages over 1 MiB.
pub const DEFAULT_FRAME_LIMIT: usize = 1 << 20;

/// Any message the facilitator sends.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// The answer to an auth request or a status update (section 4.1).
    Response(Response),
    /// A job to run (section 4.2). Shared: the machine and the job handler both hold it.
    JobRequest(Arc<JobRequest>),
    /// A cheat report (section 4.3); only logged.
    JobCheated(JobCheated),
}

impl ServerMessage {
    /// The message's name, as the Python classes are named (a Response has no `message_type` on the wire).
    pub fn message_type(&self) -> &'static str {
        match self {
            ServerMessage::Response(_) => Response::NAME,
            ServerMessage::JobRequest(_) => JobRequest::MESSAGE_TYPE,
            ServerMessage::JobCheated(_) => JobCheated::MESSAGE_TYPE,
        }
    }
}

/// Why a server frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A binary WebSocket frame: the facilitator only sends text.
    #[error("binary frame: the facilitator only sends JSON text frames")]
    Binary,
    /// The frame is over the configured limit (checked before parsing).
    #[error("frame of {len} bytes is over the {limit}-byte limit")]
    TooLarge {
        /// The frame's length in bytes.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Not JSON at all.
    #[error("frame is not JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("frame is {0}, not a JSON object")]
    NotAnObject(&'static str),
    /// A `message_type` that is not one the facilitator sends.
    #[error("unknown message_type {0}: expected a Response, V2JobRequest or V0JobCheated")]
    UnknownMessageType(String),
    /// A JSON object that is none of the server messages.
    #[error("unrecognized message with keys {0}: not a Response, V2JobRequest or V0JobCheated")]
    Unrecognized(String),
    /// Looks like a Response (`status`, no `message_type`) but is not a valid one.
    #[error("invalid Response: {0}")]
    InvalidResponse(String),
    /// A `V2JobRequest` whose `uuid` is readable but which fails validation: it can be answered with `rejected`.
    #[error("invalid V2JobRequest {uuid}: {problem}")]
    InvalidJobRequest {
        /// The job's UUID as received.
        uuid: String,
        /// What is wrong, naming the field.
        problem: String,
    },
    /// A `V2JobRequest` without a readable `uuid`: it cannot be answered.
    #[error("invalid V2JobRequest without a readable uuid: {0}")]
    InvalidJobRequestWithoutUuid(String),
    /// A `V0JobCheated` that fails validation.
    #[error("invalid V0JobCheated: {0}")]
    InvalidJobCheated(String),
}

impl DecodeError {
    /// The UUID of a job request that was readable enough to answer.
    pub fn job_uuid(&self) -> Option<&str> {
        match self {
            DecodeError::InvalidJobRequest { uuid, .. } => Some(uuid),
            _ => None,
        }
    }
}

/// Decodes one text frame of at most `limit` bytes.
///
/// ```
/// use facilitator_client::protocol::{decode_server_frame, DecodeError, ServerMessage};
/// let frame = r#"{"status":"success","errors":[]}"#;
/// assert!(matches!(decode_server_frame(frame, 1024), Ok(ServerMessage::Response(r)) if r.is_success()));
/// assert_eq!(decode_server_frame(frame, 10), Err(DecodeError::TooLarge { len: frame.len(), limit: 10 }));
/// ```
pub fn decode_server_frame(text: &str, limit: usize) -> Result<ServerMessage, DecodeError> {
    if text.len() > limit {
        return Err(DecodeError::TooLarge {
            len: text.len(),
            limit,
        });
    }
    // The frames a facilitator sends, in one typed pass; anything else is decided, and any problem named, by the
    // validating decoder.
    match typed::decode(text) {
        Some(Frame::Response(response)) => Ok(ServerMessage::Response(response)),
        Some(Frame::Job(fields)) => Ok(ServerMessage::JobRequest(Arc::new(JobRequest::with_text(
            text, *fields,
        )))),
        None => decode_validating(text),
    }
}

/// Decodes a frame through a parsed `Value`, validating as the reference models do, and names the first problem.
/// The authority on what a frame means: the typed decoder only ever agrees with it.
pub(super) fn decode_validating(text: &str) -> Result<ServerMessage, DecodeError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(DecodeError::NotAnObject(kind(&value)));
    };
    match map.get("message_type") {
        None if map.contains_key("status") => decode_response(map),
        Some(Value::String(t)) if t == JobRequest::MESSAGE_TYPE => decode_job_request(text, &map),
        // Without `message_type` the reference client cannot parse a job request; answering it (rejected, naming the
        // missing key) is kinder to the facilitator than silence.
        None if map.get("type").and_then(Value::as_str) == Some("job.new") => {
            decode_job_request(text, &map)
        }
        Some(Value::String(t)) if t == JobCheated::MESSAGE_TYPE => decode_cheated(&map),
        None if map.contains_key("job_uuid")
            || map.get("type").and_then(Value::as_str) == Some("job.cheated") =>
        {
            decode_cheated(&map)
        }
        Some(Value::String(t)) => Err(DecodeError::UnknownMessageType(brief(t))),
        Some(other) => Err(DecodeError::UnknownMessageType(brief_json(other))),
        None => Err(DecodeError::Unrecognized(describe_keys(&map))),
    }
}

fn decode_response(map: Map<String, Value>) -> Result<ServerMessage, DecodeError> {
    Response::deserialize(Value::Object(map))
        .map(ServerMessage::Response)
        .map_err(|e| DecodeError::InvalidResponse(e.to_string()))
}

fn decode_job_request(text: &str, map: &Map<String, Value>) -> Result<ServerMessage, DecodeError> {
    JobRequest::from_parsed(text, map)
        .map(|job| ServerMessage::JobRequest(Arc::new(job)))
        .map_err(|e| match e.uuid {
            Some(uuid) => DecodeError::InvalidJobRequest {
                uuid,
                problem: e.problem,
            },
            None => DecodeError::InvalidJobRequestWithoutUuid(e.problem),
        })
}

fn decode_cheated(map: &Map<String, Value>) -> Result<ServerMessage, DecodeError> {
    JobCheated::parse(map)
        .map(ServerMessage::JobCheated)
        .map_err(|e| DecodeError::InvalidJobCheated(e.to_string()))
}

fn describe_keys(map: &Map<String, Value>) -> String {
    const SHOWN: usize = 5;
    if map.is_empty() {
        return "(none)".into();
    }
    let mut keys: Vec<String> = map.keys().take(SHOWN).map(|k| brief(k)).collect();
    if map.len() > SHOWN {
        keys.push(format!("and {} more", map.len() - SHOWN));
    }
    keys.join(", ")
}
