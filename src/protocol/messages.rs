//! Messages from the validator to the facilitator (PROTOCOL.md section 3) and the facilitator's `Response`
//! (section 4.1).
//!
//! Encoding follows the reference validator byte for byte: compact JSON, keys in declaration order, every declared
//! key present with `null` written out, non-ASCII characters raw. This module never touches a socket.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::enums::{
    HordeFailureReason, JobFailureReason, JobParticipantType, JobRejectionReason, JobStage, JobStatus,
};

/// Any message the validator sends. The `message_type` tag is written first, as the reference validator does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "message_type")]
pub enum ClientMessage {
    /// The first message on every connection (section 3.1).
    #[serde(rename = "V0AuthenticationRequest")]
    Auth(AuthenticationRequest),
    /// Keeps the connection routable at the facilitator (section 3.2). Never answered.
    #[serde(rename = "V0Heartbeat")]
    Heartbeat,
    /// A job status change (section 3.3). Answered with exactly one `Response`.
    #[serde(rename = "V0JobStatusUpdate")]
    StatusUpdate(JobStatusUpdate),
    /// Optional hardware specs of a miner (section 3.4). Never answered when well-formed.
    #[serde(rename = "V0MachineSpecsUpdate")]
    MachineSpecs(MachineSpecsUpdate),
}

impl ClientMessage {
    /// The compact JSON text sent on the wire.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every map key is a string and there are no non-finite floats
        // except inside user-provided `Value`s, which serde_json already holds as valid JSON.
        serde_json::to_string(self).unwrap_or_else(|e| unreachable!("client message encodes: {e}"))
    }

    /// The wire name of the message type.
    pub fn message_type(&self) -> &'static str {
        match self {
            ClientMessage::Auth(_) => "V0AuthenticationRequest",
            ClientMessage::Heartbeat => "V0Heartbeat",
            ClientMessage::StatusUpdate(_) => "V0JobStatusUpdate",
            ClientMessage::MachineSpecs(_) => "V0MachineSpecsUpdate",
        }
    }
}

/// `V0AuthenticationRequest`: the hotkey's public key and its signature over the raw public-key bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthenticationRequest {
    /// 64 lowercase hex digits, no `0x`.
    pub public_key: String,
    /// `0x` + 128 hex digits.
    pub signature: String,
}

/// `V0MachineSpecsUpdate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineSpecsUpdate {
    pub miner_hotkey: String,
    pub validator_hotkey: String,
    pub specs: Value,
    pub batch_id: String,
}

/// `V0JobStatusUpdate`.
///
/// `metadata` is always encoded as an object with every key present: the real facilitator crashes on
/// `completed`/`streaming_ready` with null metadata (PROTOCOL.md 5.4). A received `null` decodes to the empty
/// metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobStatusUpdate {
    pub uuid: String,
    pub status: JobStatus,
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: JobStatusMetadata,
}

impl JobStatusUpdate {
    /// A status with empty metadata.
    pub fn new(uuid: impl Into<String>, status: JobStatus) -> Self {
        JobStatusUpdate { uuid: uuid.into(), status, metadata: JobStatusMetadata::default() }
    }

    /// `rejected`, as the validator sends it when it refuses a job.
    pub fn rejected(
        uuid: impl Into<String>,
        reason: JobRejectionReason,
        message: impl Into<String>,
    ) -> Self {
        let mut update = Self::new(uuid, JobStatus::Rejected);
        update.metadata.job_rejection_details = Some(JobRejectionDetails {
            rejected_by: JobParticipantType::Validator,
            reason,
            message: message.into(),
            context: None,
        });
        update
    }

    /// `horde_failed`, reported by the validator.
    pub fn horde_failed(
        uuid: impl Into<String>,
        reason: HordeFailureReason,
        message: impl Into<String>,
        context: Option<Map<String, Value>>,
    ) -> Self {
        let mut update = Self::new(uuid, JobStatus::HordeFailed);
        update.metadata.horde_failure_details = Some(HordeFailureDetails {
            reported_by: JobParticipantType::Validator,
            reason,
            message: message.into(),
            context,
        });
        update
    }
}

/// The `metadata` object of a status update. Unknown keys are kept (after the declared ones).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobStatusMetadata {
    #[serde(default)]
    pub miner_response: Option<JobResultDetails>,
    #[serde(default)]
    pub job_rejection_details: Option<JobRejectionDetails>,
    #[serde(default)]
    pub job_failure_details: Option<JobFailureDetails>,
    #[serde(default)]
    pub horde_failure_details: Option<HordeFailureDetails>,
    #[serde(default)]
    pub streaming_details: Option<StreamingServerDetails>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `JobResultDetails`: what the miner's job printed and produced. Unknown keys are kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobResultDetails {
    pub docker_process_stderr: String,
    pub docker_process_stdout: String,
    #[serde(default)]
    pub artifacts: Option<Map<String, Value>>,
    #[serde(default)]
    pub upload_results: Option<Map<String, Value>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `JobRejectionDetails`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRejectionDetails {
    pub rejected_by: JobParticipantType,
    pub reason: JobRejectionReason,
    pub message: String,
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
}

/// `JobFailureDetails`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobFailureDetails {
    pub reason: JobFailureReason,
    pub stage: JobStage,
    pub message: String,
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
    #[serde(default)]
    pub docker_process_exit_status: Option<i64>,
    #[serde(default)]
    pub docker_process_stdout: Option<String>,
    #[serde(default)]
    pub docker_process_stderr: Option<String>,
}

/// `HordeFailureDetails`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HordeFailureDetails {
    pub reported_by: JobParticipantType,
    pub reason: HordeFailureReason,
    pub message: String,
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
}

/// `StreamingServerDetails`. Unknown keys are forbidden, as on the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamingServerDetails {
    #[serde(default)]
    pub streaming_server_cert: Option<String>,
    #[serde(default)]
    pub streaming_server_address: Option<String>,
    #[serde(default)]
    pub streaming_server_port: Option<i64>,
}

/// The facilitator's `Response` (section 4.1). Only `status` and `errors` are allowed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub status: ResponseStatus,
    #[serde(default)]
    pub errors: Vec<ResponseError>,
}

impl Response {
    /// `{"status":"success","errors":[]}`.
    pub fn success() -> Self {
        Response { status: ResponseStatus::Success, errors: Vec::new() }
    }

    /// An error Response with one error of the server's catalogue (section 5.2).
    pub fn error(error_type: &str, msg: &str, help: &str) -> Self {
        Response {
            status: ResponseStatus::Error,
            errors: vec![ResponseError {
                msg: msg.to_owned(),
                error_type: error_type.to_owned(),
                help: help.to_owned(),
                extra: Map::new(),
            }],
        }
    }

    /// Whether this is a success Response.
    pub fn is_success(&self) -> bool {
        self.status == ResponseStatus::Success
    }

    /// Whether any error in this Response has the given `type`.
    pub fn has_error(&self, error_type: &str) -> bool {
        self.errors.iter().any(|e| e.error_type == error_type)
    }

    /// The `type` of the first error, for logs.
    pub fn first_error_type(&self) -> Option<&str> {
        self.errors.first().map(|e| e.error_type.as_str())
    }

    /// The compact JSON text, keys in the server's order.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| unreachable!("response encodes: {e}"))
    }
}

/// `status` of a Response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseStatus {
    Success,
    Error,
}

/// One error of a Response. Unknown keys (pydantic's `loc`, `input`, `ctx`, `url`) are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseError {
    pub msg: String,
    #[serde(rename = "type")]
    pub error_type: String,
    #[serde(default)]
    pub help: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The error types of the server's catalogue (section 5.2).
pub mod error_type {
    pub const VALIDATOR_NOT_FOUND: &str = "auth.validator_not_found";
    pub const SIGNATURE_INVALID: &str = "auth.signature_invalid";
    pub const ALREADY_AUTHENTICATED: &str = "auth.already_authenticated";
    pub const NOT_AUTHENTICATED: &str = "auth.not_authenticated";
    pub const JOB_NOT_FOUND: &str = "job.not_found";
    pub const INTEGRITY_ERROR: &str = "job.integrity_error";
}

/// Close codes the facilitator uses (section 5.5).
pub mod close_code {
    /// Sent right after `auth.signature_invalid`: fatal.
    pub const SIGNATURE_INVALID: u16 = 3000;
    /// Sent after `auth.validator_not_found`, or when the facilitator drops a validator: retried at the backoff cap.
    pub const VALIDATOR_NOT_FOUND: u16 = 3001;
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}
