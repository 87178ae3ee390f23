//! Decoding of server frames. PLACEHOLDER: the protocol issue replaces this.

use std::sync::Arc;

use super::job::JobRequest;
use super::messages::Response;

/// Any message the facilitator sends.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    Response(Response),
    JobRequest(Arc<JobRequest>),
    JobCheated(serde_json::Value),
}

/// Why a server frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {len} bytes is over the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("binary frame")]
    Binary,
    #[error("invalid job request {uuid}: {problem}")]
    InvalidJobRequest { uuid: String, problem: String },
    #[error("unknown message: {0}")]
    Unknown(String),
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

/// Decodes one text frame.
pub fn decode_server_frame(text: &str, limit: usize) -> Result<ServerMessage, DecodeError> {
    if text.len() > limit {
        return Err(DecodeError::TooLarge { len: text.len(), limit });
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    if value.get("status").is_some() {
        return serde_json::from_value(value)
            .map(ServerMessage::Response)
            .map_err(|e| DecodeError::Unknown(e.to_string()));
    }
    match JobRequest::parse(text) {
        Ok(job) => Ok(ServerMessage::JobRequest(Arc::new(job))),
        Err(e) => Err(DecodeError::Unknown(e)),
    }
}
