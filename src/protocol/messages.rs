//! Messages from the validator to the facilitator (docs/PROTOCOL.md section 3) and the facilitator's `Response`
//! (section 4.1).
//!
//! Encoding follows the reference validator byte for byte: compact JSON, keys in declaration order, every declared
//! key present with `null` written out, non-ASCII characters raw. Decoding follows the facilitator's models (for the
//! reference facilitator and tests): `message_type` required, unknown top-level keys rejected, unknown enum values
//! kept as `unknown`. This module never touches a socket.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::enums::{
    HordeFailureReason, JobFailureReason, JobParticipantType, JobRejectionReason, JobStage,
    JobStatus,
};

/// Any message the validator sends. The `message_type` tag is written first, as the reference validator does.
///
/// Decoding is the facilitator's (section 3.0): `message_type` is required and selects the model; each model
/// rejects unknown keys (`{"message_type":"V0Heartbeat","x":1}` is an error).
#[derive(Debug, Clone, PartialEq, Serialize)]
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

impl<'de> Deserialize<'de> for ClientMessage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut map = Map::<String, Value>::deserialize(d)?;
        let message_type = match map.remove("message_type") {
            Some(Value::String(t)) => t,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "message_type must be a string, found {}",
                    super::wire::brief_json(&other)
                )));
            }
            None => return Err(D::Error::missing_field("message_type")),
        };
        if message_type == "V0Heartbeat" {
            return match map.keys().next() {
                None => Ok(ClientMessage::Heartbeat),
                Some(key) => Err(D::Error::custom(format!(
                    "V0Heartbeat: unknown field `{key}`, no other field is allowed"
                ))),
            };
        }
        let rest = Value::Object(map);
        let message = match message_type.as_str() {
            "V0AuthenticationRequest" => {
                AuthenticationRequest::deserialize(rest).map(ClientMessage::Auth)
            }
            "V0JobStatusUpdate" => {
                JobStatusUpdate::deserialize(rest).map(ClientMessage::StatusUpdate)
            }
            "V0MachineSpecsUpdate" => {
                MachineSpecsUpdate::deserialize(rest).map(ClientMessage::MachineSpecs)
            }
            other => {
                return Err(D::Error::unknown_variant(
                    other,
                    &[
                        "V0AuthenticationRequest",
                        "V0JobStatusUpdate",
                        "V0MachineSpecsUpdate",
                        "V0Heartbeat",
                    ],
                ));
            }
        };
        message.map_err(|e| D::Error::custom(format!("{message_type}: {e}")))
    }
}

impl ClientMessage {
    /// Parses a client message as the facilitator does (section 3.0).
    pub fn from_json(text: &str) -> Result<ClientMessage, serde_json::Error> {
        serde_json::from_str(text)
    }

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
    /// 64 lowercase hex digits, no `0x`. Build it with [`super::keys::Hotkey::auth_request`].
    pub public_key: String,
    /// `0x` + 128 hex digits.
    pub signature: String,
}

/// `V0MachineSpecsUpdate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineSpecsUpdate {
    /// SS58 address of the miner the specs are about.
    pub miner_hotkey: String,
    /// SS58 address of the validator (not compared with the authenticated hotkey by the server).
    pub validator_hotkey: String,
    /// The hardware specs: any JSON object (see `tests/data/misc.json` for the schema the server expects).
    pub specs: Map<String, Value>,
    /// Identifies one round of specs.
    pub batch_id: String,
}

/// `V0JobStatusUpdate`.
///
/// `metadata` is always encoded as an object with every key present: the real facilitator crashes on
/// `completed`/`streaming_ready` with null metadata (docs/PROTOCOL.md 5.4). A received `null` decodes to the empty
/// metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobStatusUpdate {
    /// The job's UUID, as received in the job request.
    pub uuid: String,
    /// The new status. Lenient: unknown values decode to `unknown`.
    pub status: JobStatus,
    /// Always written as an object; `null` or absent decodes to the empty metadata. Boxed to keep status updates
    /// (which travel through queues and enums) small.
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: Box<JobStatusMetadata>,
}

impl JobStatusUpdate {
    /// A status with empty metadata.
    pub fn new(uuid: impl Into<String>, status: JobStatus) -> Self {
        JobStatusUpdate {
            uuid: uuid.into(),
            status,
            metadata: Box::default(),
        }
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

/// The `metadata` object of a status update. Unknown keys are kept (written after the declared ones).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobStatusMetadata {
    /// The job's output; sent with `completed`.
    #[serde(default)]
    pub miner_response: Option<JobResultDetails>,
    /// Why the job was rejected; sent with `rejected`.
    #[serde(default)]
    pub job_rejection_details: Option<JobRejectionDetails>,
    /// Why the job failed on the miner; sent with `failed`.
    #[serde(default)]
    pub job_failure_details: Option<JobFailureDetails>,
    /// Why the horde failed the job; sent with `horde_failed` (and, quirk, sometimes `failed`).
    #[serde(default)]
    pub horde_failure_details: Option<HordeFailureDetails>,
    /// Where to reach a streaming job; sent with `streaming_ready`.
    #[serde(default)]
    pub streaming_details: Option<StreamingServerDetails>,
    /// Unknown keys, kept in order.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `JobResultDetails`: what the miner's job printed and produced. Unknown keys are kept (written after the declared
/// ones).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobResultDetails {
    /// The job's stderr.
    pub docker_process_stderr: String,
    /// The job's stdout.
    pub docker_process_stdout: String,
    /// Artifact path -> base64 contents. Values must be strings (checked when decoding).
    #[serde(default, deserialize_with = "string_valued_map")]
    pub artifacts: Option<Map<String, Value>>,
    /// Upload path -> result text. Values must be strings (checked when decoding).
    #[serde(default, deserialize_with = "string_valued_map")]
    pub upload_results: Option<Map<String, Value>>,
    /// Unknown keys, kept in order.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `JobRejectionDetails`. Unknown keys are ignored when decoding, as on the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRejectionDetails {
    /// Who rejected the job.
    pub rejected_by: JobParticipantType,
    /// Why.
    pub reason: JobRejectionReason,
    /// Human-readable reason (for signature problems, the reference validator's exact texts).
    pub message: String,
    /// Any JSON object.
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
}

/// `JobFailureDetails`. Unknown keys are ignored when decoding, as on the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobFailureDetails {
    /// Why the job failed.
    pub reason: JobFailureReason,
    /// In which stage.
    pub stage: JobStage,
    /// Human-readable reason.
    pub message: String,
    /// Any JSON object.
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
    /// The container's exit status, if it ran.
    #[serde(default)]
    pub docker_process_exit_status: Option<i64>,
    /// The container's stdout, if any.
    #[serde(default)]
    pub docker_process_stdout: Option<String>,
    /// The container's stderr, if any.
    #[serde(default)]
    pub docker_process_stderr: Option<String>,
}

/// `HordeFailureDetails`. Unknown keys are ignored when decoding, as on the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HordeFailureDetails {
    /// Who reports the failure.
    pub reported_by: JobParticipantType,
    /// Why.
    pub reason: HordeFailureReason,
    /// Human-readable reason.
    pub message: String,
    /// Any JSON object (the reference validator puts `exception_type` here).
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
}

/// `StreamingServerDetails`. Unknown keys are forbidden, as on the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamingServerDetails {
    /// PEM certificate of the streaming server.
    #[serde(default)]
    pub streaming_server_cert: Option<String>,
    /// Its address.
    #[serde(default)]
    pub streaming_server_address: Option<String>,
    /// Its port.
    #[serde(default)]
    pub streaming_server_port: Option<i64>,
}

/// The facilitator's `Response` (section 4.1). Only `status` and `errors` are allowed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    /// `success` or `error`.
    pub status: ResponseStatus,
    /// Empty on success; a missing `errors` decodes as empty.
    #[serde(default)]
    pub errors: Vec<ResponseError>,
}

impl Response {
    /// The name of a Response in counts and logs (it has no `message_type` on the wire).
    pub const NAME: &'static str = "Response";

    /// `{"status":"success","errors":[]}`.
    pub fn success() -> Self {
        Response {
            status: ResponseStatus::Success,
            errors: Vec::new(),
        }
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
    /// `"success"`.
    Success,
    /// `"error"`.
    Error,
}

/// One error of a Response. Unknown keys (pydantic's `loc`, `input`, `ctx`, `url`) are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseError {
    /// Short message, e.g. `Invalid signature`.
    pub msg: String,
    /// The error type, e.g. `auth.signature_invalid` (see [`error_type`]) or a pydantic error type.
    #[serde(rename = "type")]
    pub error_type: String,
    /// Longer explanation; `""` when absent.
    #[serde(default)]
    pub help: String,
    /// Unknown keys, kept in order (written after `help`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The error types of the server's catalogue (section 5.2).
pub mod error_type {
    #![allow(missing_docs)]
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

/// An optional object whose values must all be strings (`dict[str, str] | None` on the server).
fn string_valued_map<'de, D>(d: D) -> Result<Option<Map<String, Value>>, D::Error>
where
    D: Deserializer<'de>,
{
    let map = Option::<Map<String, Value>>::deserialize(d)?;
    if let Some((key, _)) = map.iter().flatten().find(|(_, v)| !v.is_string()) {
        return Err(D::Error::custom(format!(
            "the value of {key:?} must be a string"
        )));
    }
    Ok(map)
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}
