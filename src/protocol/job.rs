//! `V2JobRequest` (docs/PROTOCOL.md 4.2): the typed job, its validation as the reference validator parses it, its wire
//! text in the facilitator's format, and the SignedFields object its signature covers (9.2, 9.3).
//!
//! Owns: which keys a job request has, their types and defaults, the volume and upload variants, the
//! `relative_path` rule of single-file uploads, and the canonical forms used on the wire and in the signature.
//! Must never: reorder `env` (its received order is signed), lose the exact received text (the exec handler gets it
//! on stdin), or accept a job the reference validator's model would refuse.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::enums::{ExecutorClass, SignatureScope};
use super::keys::Hotkey;
use super::pyjson;
use super::signature::{self, JobSignature, SignatureCheckError};
use super::wire::{FieldError, Obj, brief, brief_json, kind};

/// The keys of a `V2JobRequest`, in the order the facilitator writes them. No other key is allowed.
pub(super) const WIRE_KEYS: [&str; 19] = [
    "signature",
    "type",
    "message_type",
    "uuid",
    "job_namespace",
    "executor_class",
    "docker_image",
    "args",
    "env",
    "use_gpu",
    "volume",
    "output_upload",
    "artifacts_dir",
    "on_trusted_miner",
    "download_time_limit",
    "execution_time_limit",
    "upload_time_limit",
    "streaming_start_time_limit",
    "streaming_details",
];

/// A job request as received: the typed fields and the exact text (the exec handler gets the text on stdin).
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequest {
    text: Arc<str>,
    fields: JobRequestFields,
}

/// Why a text is not a valid `V2JobRequest`. `uuid` is set when the job's `uuid` could be read, so the job can be
/// answered (rejected) instead of left waiting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid V2JobRequest{}: {problem}", uuid.as_deref().map(|u| format!(" {u}")).unwrap_or_default())]
pub struct JobRequestError {
    /// The job's UUID, if it is a string.
    pub uuid: Option<String>,
    /// What is wrong, naming the field (e.g. `executor_class: unknown value "x" (expected one of ...)`).
    pub problem: String,
}

impl JobRequest {
    /// The `message_type` of a job request.
    pub const MESSAGE_TYPE: &'static str = "V2JobRequest";

    /// Parses the wire text of a `V2JobRequest`.
    pub fn parse(text: &str) -> Result<JobRequest, JobRequestError> {
        let value: Value = serde_json::from_str(text).map_err(|e| JobRequestError {
            uuid: None,
            problem: format!("not JSON: {e}"),
        })?;
        let Value::Object(map) = value else {
            return Err(JobRequestError {
                uuid: None,
                problem: format!("expected an object, found {}", kind(&value)),
            });
        };
        Self::from_parsed(text, &map)
    }

    /// Builds the job from its already-parsed top-level object; `text` must be the text `map` was parsed from.
    pub(crate) fn from_parsed(
        text: &str,
        map: &Map<String, Value>,
    ) -> Result<JobRequest, JobRequestError> {
        let fields = JobRequestFields::from_map(map)?;
        Ok(JobRequest {
            text: Arc::from(text),
            fields,
        })
    }

    /// A job request from its text and the fields the typed decoder read from it.
    pub(super) fn with_text(text: &str, fields: JobRequestFields) -> JobRequest {
        JobRequest {
            text: Arc::from(text),
            fields,
        }
    }

    /// A job request whose text is the facilitator's encoding of `fields` (see [`JobRequestFields::to_wire_text`]).
    pub fn from_fields(fields: JobRequestFields) -> JobRequest {
        JobRequest {
            text: Arc::from(fields.to_wire_text()),
            fields,
        }
    }

    /// The job's UUID, as received.
    pub fn uuid(&self) -> &str {
        &self.fields.uuid
    }

    /// The exact text received.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The exact text received, shared.
    pub fn shared_text(&self) -> Arc<str> {
        Arc::clone(&self.text)
    }

    /// All typed fields.
    pub fn fields(&self) -> &JobRequestFields {
        &self.fields
    }

    /// The `signature` object, if any.
    pub fn signature(&self) -> Option<&JobSignature> {
        self.fields.signature.as_ref()
    }

    /// The job namespace (not signed).
    pub fn job_namespace(&self) -> Option<&str> {
        self.fields.job_namespace.as_deref()
    }

    /// The executor class the job asks for.
    pub fn executor_class(&self) -> ExecutorClass {
        self.fields.executor_class
    }

    /// The Docker image to run.
    pub fn docker_image(&self) -> &str {
        &self.fields.docker_image
    }

    /// The container's arguments, in order.
    pub fn args(&self) -> &[String] {
        &self.fields.args
    }

    /// The container's environment, in received order.
    pub fn env(&self) -> &StringMap {
        &self.fields.env
    }

    /// Deprecated by the protocol; no effect.
    pub fn use_gpu(&self) -> bool {
        self.fields.use_gpu
    }

    /// Input volume(s).
    pub fn volume(&self) -> Option<&Volume> {
        self.fields.volume.as_ref()
    }

    /// Where to upload the output.
    pub fn output_upload(&self) -> Option<&OutputUpload> {
        self.fields.output_upload.as_ref()
    }

    /// The directory whose files are returned as artifacts (`None` when null or absent).
    pub fn artifacts_dir(&self) -> Option<&str> {
        self.fields.artifacts_dir.as_deref()
    }

    /// Whether the job must run on a trusted miner.
    pub fn on_trusted_miner(&self) -> bool {
        self.fields.on_trusted_miner
    }

    /// Time limit for downloading volumes, seconds.
    pub fn download_time_limit(&self) -> i64 {
        self.fields.download_time_limit
    }

    /// Time limit for running the job, seconds.
    pub fn execution_time_limit(&self) -> i64 {
        self.fields.execution_time_limit
    }

    /// Time limit for uploading results, seconds.
    pub fn upload_time_limit(&self) -> i64 {
        self.fields.upload_time_limit
    }

    /// Time limit for a streaming job to become ready, seconds.
    pub fn streaming_start_time_limit(&self) -> i64 {
        self.fields.streaming_start_time_limit
    }

    /// Streaming parameters, for streaming jobs.
    pub fn streaming_details(&self) -> Option<&JobStreamingDetails> {
        self.fields.streaming_details.as_ref()
    }

    /// Checks the signature cryptographically (no trust policy; see [`super::TrustedSigners::check`]) and
    /// returns the signer's public key.
    pub fn verify_signature(&self) -> Result<[u8; 32], SignatureCheckError> {
        let signature = self.signature().ok_or(SignatureCheckError::Missing)?;
        signature.verify(self.fields.signed_payload().as_bytes())
    }
}

/// The fields of a `V2JobRequest` (section 4.2), typed.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequestFields {
    /// The SDK user's signature; `None` is rejected by the validator ("Signature is empty").
    pub signature: Option<JobSignature>,
    /// The job's UUID (not signed).
    pub uuid: String,
    /// Not signed.
    pub job_namespace: Option<String>,
    /// Strict: an unknown class makes the request invalid.
    pub executor_class: ExecutorClass,
    /// The Docker image.
    pub docker_image: String,
    /// Arguments, order significant.
    pub args: Vec<String>,
    /// Environment, key order significant (it is signed).
    pub env: StringMap,
    /// Deprecated; default `true`.
    pub use_gpu: bool,
    /// Input volume(s).
    pub volume: Option<Volume>,
    /// Output upload(s).
    pub output_upload: Option<OutputUpload>,
    /// `None` for null or absent; `""` and null sign the same.
    pub artifacts_dir: Option<String>,
    /// Default `false`.
    pub on_trusted_miner: bool,
    /// Seconds.
    pub download_time_limit: i64,
    /// Seconds.
    pub execution_time_limit: i64,
    /// Seconds.
    pub upload_time_limit: i64,
    /// Seconds.
    pub streaming_start_time_limit: i64,
    /// For streaming jobs.
    pub streaming_details: Option<JobStreamingDetails>,
}

impl JobRequestFields {
    /// Validates a parsed top-level object as the reference validator's model does.
    pub fn from_map(map: &Map<String, Value>) -> Result<JobRequestFields, JobRequestError> {
        let uuid = map.get("uuid").and_then(Value::as_str).map(str::to_owned);
        Self::parse(map).map_err(|e| JobRequestError {
            uuid,
            problem: e.to_string(),
        })
    }

    fn parse(map: &Map<String, Value>) -> Result<JobRequestFields, FieldError> {
        let obj = Obj { map, path: "" };
        obj.deny_unknown(&WIRE_KEYS)?;
        match obj.required("message_type")? {
            Value::String(s) if s == JobRequest::MESSAGE_TYPE => {}
            other => {
                return Err(obj.error(
                    "message_type",
                    format!("expected \"V2JobRequest\", found {}", brief_json(other)),
                ));
            }
        }
        match map.get("type") {
            None => {}
            Some(Value::String(s)) if s == "job.new" => {}
            Some(other) => {
                return Err(obj.error(
                    "type",
                    format!("expected \"job.new\", found {}", brief_json(other)),
                ));
            }
        }
        let signature = match obj.optional("signature") {
            None => None,
            Some(value) => Some(JobSignature::parse(Obj::new(value, "signature")?)?),
        };
        let executor_class = match obj.required("executor_class")? {
            Value::String(s) => ExecutorClass::from_wire(s).ok_or_else(|| {
                let known: Vec<&str> = ExecutorClass::ALL.iter().map(|c| c.as_str()).collect();
                obj.error(
                    "executor_class",
                    format!(
                        "unknown value {} (expected one of {})",
                        brief(s),
                        known.join(", ")
                    ),
                )
            })?,
            other => {
                return Err(obj.error(
                    "executor_class",
                    format!("expected a string, found {}", kind(other)),
                ));
            }
        };
        let volume = match obj.optional("volume") {
            None => None,
            Some(value) => Some(Volume::parse(value, "volume")?),
        };
        let output_upload = match obj.optional("output_upload") {
            None => None,
            Some(value) => Some(OutputUpload::parse(value, "output_upload")?),
        };
        let streaming_details = match obj.optional("streaming_details") {
            None => None,
            Some(value) => {
                let details = Obj::new(value, "streaming_details")?;
                Some(JobStreamingDetails {
                    public_key: details.string("public_key")?,
                    executor_ip: details.opt_string("executor_ip")?,
                })
            }
        };
        Ok(JobRequestFields {
            signature,
            uuid: obj.string("uuid")?,
            job_namespace: obj.opt_string("job_namespace")?,
            executor_class,
            docker_image: obj.string("docker_image")?,
            args: obj.string_array("args")?,
            env: StringMap::parse(obj.required("env")?, "env")?,
            use_gpu: obj.bool_or("use_gpu", true)?,
            volume,
            output_upload,
            artifacts_dir: obj.opt_string("artifacts_dir")?,
            on_trusted_miner: obj.bool_or("on_trusted_miner", false)?,
            download_time_limit: obj.int("download_time_limit")?,
            execution_time_limit: obj.int("execution_time_limit")?,
            upload_time_limit: obj.int("upload_time_limit")?,
            streaming_start_time_limit: obj.int("streaming_start_time_limit")?,
            streaming_details,
        })
    }

    /// The top-level object as the facilitator writes it: every key of `WIRE_KEYS` in that order, nulls written
    /// out, volumes and uploads in canonical form.
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        map.insert(
            "signature".into(),
            self.signature
                .as_ref()
                .map_or(Value::Null, JobSignature::to_value),
        );
        map.insert("type".into(), "job.new".into());
        map.insert("message_type".into(), JobRequest::MESSAGE_TYPE.into());
        map.insert("uuid".into(), self.uuid.clone().into());
        map.insert("job_namespace".into(), self.job_namespace.clone().into());
        map.insert("executor_class".into(), self.executor_class.as_str().into());
        map.insert("docker_image".into(), self.docker_image.clone().into());
        map.insert("args".into(), self.args.clone().into());
        map.insert("env".into(), self.env.to_value());
        map.insert("use_gpu".into(), self.use_gpu.into());
        map.insert(
            "volume".into(),
            self.volume.as_ref().map_or(Value::Null, Volume::to_value),
        );
        map.insert(
            "output_upload".into(),
            self.output_upload
                .as_ref()
                .map_or(Value::Null, OutputUpload::to_value),
        );
        map.insert("artifacts_dir".into(), self.artifacts_dir.clone().into());
        self.insert_trusted_miner_to_streaming(&mut map);
        Value::Object(map)
    }

    /// `on_trusted_miner` through `streaming_details`: the keys both the wire form and SignedFields write the same
    /// way, in the same order.
    fn insert_trusted_miner_to_streaming(&self, map: &mut Map<String, Value>) {
        map.insert("on_trusted_miner".into(), self.on_trusted_miner.into());
        map.insert(
            "download_time_limit".into(),
            self.download_time_limit.into(),
        );
        map.insert(
            "execution_time_limit".into(),
            self.execution_time_limit.into(),
        );
        map.insert("upload_time_limit".into(), self.upload_time_limit.into());
        map.insert(
            "streaming_start_time_limit".into(),
            self.streaming_start_time_limit.into(),
        );
        map.insert(
            "streaming_details".into(),
            self.streaming_details
                .as_ref()
                .map_or(Value::Null, JobStreamingDetails::to_value),
        );
    }

    /// The wire text in the facilitator's format: Python `json.dumps` of [`Self::to_value`].
    pub fn to_wire_text(&self) -> String {
        pyjson::dumps(&self.to_value())
    }

    /// The SignedFields object (section 9.2): 14 keys in the model's declaration order.
    pub fn signed_fields(&self) -> Value {
        let volumes: Vec<Value> = match &self.volume {
            None => Vec::new(),
            Some(Volume::One(source)) => vec![source.to_value()],
            Some(Volume::Multi(sources)) => sources.iter().map(VolumeSource::to_value).collect(),
        };
        let uploads: Vec<Value> = match &self.output_upload {
            None => Vec::new(),
            Some(OutputUpload::Zip(zip)) => vec![zip.to_value()],
            Some(OutputUpload::SingleFile(file)) => vec![file.to_value()],
            // `system_output` is not signed (section 9.2).
            Some(OutputUpload::Multi { uploads, .. }) => {
                uploads.iter().map(SingleFileUpload::to_value).collect()
            }
        };
        let mut map = Map::new();
        map.insert("executor_class".into(), self.executor_class.as_str().into());
        map.insert("docker_image".into(), self.docker_image.clone().into());
        map.insert("args".into(), self.args.clone().into());
        map.insert("env".into(), self.env.to_value());
        map.insert("use_gpu".into(), self.use_gpu.into());
        map.insert(
            "artifacts_dir".into(),
            self.artifacts_dir.clone().unwrap_or_default().into(),
        );
        self.insert_trusted_miner_to_streaming(&mut map);
        map.insert("volumes".into(), Value::Array(volumes));
        map.insert("uploads".into(), Value::Array(uploads));
        Value::Object(map)
    }

    /// The canonical SignedFields text (section 9.3): compact JSON, non-ASCII raw. Byte-for-byte what
    /// `serde_json::to_string` writes for an order-preserving map.
    pub fn signed_fields_json(&self) -> String {
        // The payload is a JSON string literal by construction; should that ever break, the Value form says the
        // same (and the property test that compares the payload with the Value form's literal fails).
        serde_json::from_str(&self.signed_payload())
            .unwrap_or_else(|_| self.signed_fields().to_string())
    }

    /// The bytes hashed after the timestamp (section 9.4): the JSON string literal of
    /// [`Self::signed_fields_json`], pure ASCII (the double encoding).
    ///
    /// Written straight from the fields in one pass (it is on every job's signature check): the same text as
    /// `pyjson::string_literal(&self.signed_fields().to_string())`.
    pub fn signed_payload(&self) -> String {
        let mut out = String::with_capacity(1024);
        self.write_signed_payload(&mut out);
        out
    }

    /// Signs these fields as the SDK does (scope `SignedFields`) and stores the signature.
    pub fn sign(&mut self, signer: &Hotkey, timestamp_ns: u64) {
        let payload = self.signed_payload();
        self.signature = Some(signature::sign_payload(
            signer,
            timestamp_ns,
            payload.as_bytes(),
            SignatureScope::SignedFields,
        ));
    }
}

/// Signs a job request for the reference facilitator and tests: `fields` is the job's top-level object in wire
/// order (with or without `signature`, `type` and `message_type`); the result is the complete `V2JobRequest` text in
/// the facilitator's format (Python `json.dumps`: `", "`/`": "` separators, ASCII-only, every key of section 4.2
/// present in that order, volumes and uploads in canonical form).
///
/// ```
/// use facilitator_client::protocol::{decode_server_frame, sign_job_request, keys::Hotkey, ServerMessage};
/// use facilitator_client::protocol::TrustedSigners;
/// let signer = Hotkey::from_seed(&[0x11; 32]);
/// let fields = serde_json::json!({
///     "uuid": "7d8a9f4e-1b2c-4d3e-8f40-5a6b7c8d9e01", "executor_class": "always_on.test",
///     "docker_image": "alpine:3", "args": [], "env": {"B": "1", "A": "2"},
///     "download_time_limit": 1, "execution_time_limit": 2, "upload_time_limit": 3,
///     "streaming_start_time_limit": 4,
/// });
/// let text = sign_job_request(fields.as_object().unwrap().clone(), &signer, 1_700_000_000_000_000_000)?;
/// let ServerMessage::JobRequest(job) = decode_server_frame(&text, 1 << 20)? else { panic!() };
/// TrustedSigners::new([0; 32], [signer.ss58()])?.check(&job)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn sign_job_request(
    mut fields: Map<String, Value>,
    signer: &Hotkey,
    timestamp_ns: u64,
) -> Result<String, JobRequestError> {
    fields.insert("signature".into(), Value::Null);
    fields
        .entry("message_type")
        .or_insert_with(|| Value::from(JobRequest::MESSAGE_TYPE));
    let mut job = JobRequestFields::from_map(&fields)?;
    job.sign(signer, timestamp_ns);
    Ok(job.to_wire_text())
}

/// A JSON object of strings in key order (`env`, `form_fields`, `signed_headers`). Keys are unique; a duplicate key
/// in received JSON keeps its first position and its last value, as Python's `dict` does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StringMap(Vec<(String, String)>);

impl StringMap {
    /// An empty map.
    pub fn new() -> StringMap {
        StringMap(Vec::new())
    }

    /// Sets `key` to `value`: in place if the key exists, else at the end.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let (key, value) = (key.into(), value.into());
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The map of `entries` if no key repeats (`None` if one does), in n log n for a large map.
    pub(super) fn from_unique(entries: Vec<(String, String)>) -> Option<StringMap> {
        let repeats = if entries.len() <= 16 {
            entries
                .iter()
                .enumerate()
                .any(|(i, (key, _))| entries[..i].iter().any(|(k, _)| k == key))
        } else {
            let mut keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
            keys.sort_unstable();
            keys.windows(2).any(|pair| pair[0] == pair[1])
        };
        (!repeats).then_some(StringMap(entries))
    }

    /// The JSON object, in order.
    pub fn to_value(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect(),
        )
    }

    fn parse(value: &Value, path: &str) -> Result<StringMap, FieldError> {
        let obj = Obj::new(value, path)?;
        obj.map
            .iter()
            .map(|(key, value)| match value {
                Value::String(s) => Ok((key.clone(), s.clone())),
                other => Err(obj.error(key, format!("expected a string, found {}", kind(other)))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(StringMap)
    }

    fn parse_optional(obj: &Obj<'_>, key: &str) -> Result<Option<StringMap>, FieldError> {
        obj.optional(key)
            .map(|value| StringMap::parse(value, &obj.child(key)))
            .transpose()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for StringMap {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        let mut map = StringMap::new();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

/// `streaming_details` of a job request: the client certificate for a streaming job. Unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStreamingDetails {
    /// PEM text of the client's certificate.
    pub public_key: String,
    /// The executor's IP, if known.
    pub executor_ip: Option<String>,
}

impl JobStreamingDetails {
    fn to_value(&self) -> Value {
        let mut map = Map::new();
        map.insert("public_key".into(), self.public_key.clone().into());
        map.insert("executor_ip".into(), self.executor_ip.clone().into());
        Value::Object(map)
    }
}

/// The `volume` of a job request: one source, or a `multi_volume` list (what the facilitator always sends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Volume {
    /// A bare volume object (`inline`, `zip_url`, `single_file` or `huggingface_volume`).
    One(VolumeSource),
    /// `multi_volume`: a list of sources (no nesting).
    Multi(Vec<VolumeSource>),
}

/// One input volume. Unknown keys are ignored (and therefore not signed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// `inline`: a base64 zip in the message.
    Inline {
        /// Base64 of a zip file.
        contents: String,
        /// Where to unpack it.
        relative_path: Option<String>,
    },
    /// `zip_url`: a zip file to download.
    ZipUrl {
        /// The URL.
        contents: String,
        /// Where to unpack it.
        relative_path: Option<String>,
    },
    /// `single_file`: one file to download.
    SingleFile {
        /// The URL.
        url: String,
        /// Where to put it (required).
        relative_path: String,
    },
    /// `huggingface_volume`: a Hugging Face repository.
    Huggingface {
        /// `org/repo`.
        repo_id: String,
        /// `model`, `dataset`, ...
        repo_type: Option<String>,
        /// Branch, tag or commit.
        revision: Option<String>,
        /// Where to put it.
        relative_path: Option<String>,
        /// Which files to download.
        allow_patterns: Option<AllowPatterns>,
        /// Access token.
        token: Option<String>,
    },
}

/// `allow_patterns` of a Hugging Face volume: one pattern or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowPatterns {
    /// A single pattern string.
    One(String),
    /// A list of patterns.
    Many(Vec<String>),
}

impl Volume {
    fn parse(value: &Value, path: &str) -> Result<Volume, FieldError> {
        let obj = Obj::new(value, path)?;
        if volume_type(&obj)? == "multi_volume" {
            let list_path = obj.child("volumes");
            obj.array("volumes")?
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let item_path = format!("{list_path}[{i}]");
                    VolumeSource::parse(&Obj::new(item, &item_path)?)
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Volume::Multi)
        } else {
            VolumeSource::parse(&obj).map(Volume::One)
        }
    }

    /// The canonical object (every key of its type, in declaration order).
    pub fn to_value(&self) -> Value {
        match self {
            Volume::One(source) => source.to_value(),
            Volume::Multi(sources) => {
                let mut map = Map::new();
                map.insert("volume_type".into(), "multi_volume".into());
                map.insert(
                    "volumes".into(),
                    sources.iter().map(VolumeSource::to_value).collect(),
                );
                Value::Object(map)
            }
        }
    }
}

fn volume_type<'a>(obj: &Obj<'a>) -> Result<&'a str, FieldError> {
    match obj.required("volume_type")? {
        Value::String(s) => Ok(s),
        other => Err(obj.error(
            "volume_type",
            format!("expected a string, found {}", kind(other)),
        )),
    }
}

impl VolumeSource {
    fn parse(obj: &Obj<'_>) -> Result<VolumeSource, FieldError> {
        Ok(match volume_type(obj)? {
            "inline" => VolumeSource::Inline {
                contents: obj.string("contents")?,
                relative_path: obj.opt_string("relative_path")?,
            },
            "zip_url" => VolumeSource::ZipUrl {
                contents: obj.string("contents")?,
                relative_path: obj.opt_string("relative_path")?,
            },
            "single_file" => VolumeSource::SingleFile {
                url: obj.string("url")?,
                relative_path: obj.string("relative_path")?,
            },
            "huggingface_volume" => VolumeSource::Huggingface {
                repo_id: obj.string("repo_id")?,
                repo_type: obj.opt_string("repo_type")?,
                revision: obj.opt_string("revision")?,
                relative_path: obj.opt_string("relative_path")?,
                allow_patterns: match obj.optional("allow_patterns") {
                    None => None,
                    Some(Value::String(s)) => Some(AllowPatterns::One(s.clone())),
                    Some(Value::Array(_)) => {
                        Some(AllowPatterns::Many(obj.string_array("allow_patterns")?))
                    }
                    Some(other) => {
                        return Err(obj.error(
                            "allow_patterns",
                            format!(
                                "expected a string, an array of strings or null, found {}",
                                kind(other)
                            ),
                        ));
                    }
                },
                token: obj.opt_string("token")?,
            },
            "multi_volume" => {
                return Err(obj.error(
                    "volume_type",
                    "a multi_volume cannot contain another multi_volume",
                ));
            }
            other => {
                return Err(obj.error(
                    "volume_type",
                    format!("unknown value {} (expected inline, zip_url, single_file or huggingface_volume)", brief(other)),
                ));
            }
        })
    }

    /// The canonical object (every key of its type, in declaration order).
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        match self {
            VolumeSource::Inline {
                contents,
                relative_path,
            }
            | VolumeSource::ZipUrl {
                contents,
                relative_path,
            } => {
                let kind = if matches!(self, VolumeSource::Inline { .. }) {
                    "inline"
                } else {
                    "zip_url"
                };
                map.insert("volume_type".into(), kind.into());
                map.insert("contents".into(), contents.clone().into());
                map.insert("relative_path".into(), relative_path.clone().into());
            }
            VolumeSource::SingleFile { url, relative_path } => {
                map.insert("volume_type".into(), "single_file".into());
                map.insert("url".into(), url.clone().into());
                map.insert("relative_path".into(), relative_path.clone().into());
            }
            VolumeSource::Huggingface {
                repo_id,
                repo_type,
                revision,
                relative_path,
                allow_patterns,
                token,
            } => {
                map.insert("volume_type".into(), "huggingface_volume".into());
                map.insert("repo_id".into(), repo_id.clone().into());
                map.insert("repo_type".into(), repo_type.clone().into());
                map.insert("revision".into(), revision.clone().into());
                map.insert("relative_path".into(), relative_path.clone().into());
                let patterns = match allow_patterns {
                    None => Value::Null,
                    Some(AllowPatterns::One(p)) => p.clone().into(),
                    Some(AllowPatterns::Many(ps)) => ps.clone().into(),
                };
                map.insert("allow_patterns".into(), patterns);
                map.insert("token".into(), token.clone().into());
            }
        }
        Value::Object(map)
    }
}

/// The `output_upload` of a job request. The facilitator always sends `multi_upload` (with `system_output` null).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputUpload {
    /// A bare `zip_and_http_post` / `zip_and_http_put`.
    Zip(ZipUpload),
    /// A bare `single_file_post` / `single_file_put`.
    SingleFile(SingleFileUpload),
    /// `multi_upload`.
    Multi {
        /// Single-file uploads (signed).
        uploads: Vec<SingleFileUpload>,
        /// Upload of the whole output as a zip; **not signed** (section 9.2).
        system_output: Option<ZipUpload>,
    },
}

/// Upload of the whole output directory as a zip. Unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZipUpload {
    /// `zip_and_http_post`.
    Post {
        /// The URL.
        url: String,
        /// Form fields sent with the file.
        form_fields: Option<StringMap>,
    },
    /// `zip_and_http_put`.
    Put {
        /// The URL.
        url: String,
    },
}

/// Upload of one output file. Unknown keys are ignored. `relative_path` is checked (no leading `/`, no `..`, no empty component).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SingleFileUpload {
    /// `single_file_post`.
    Post {
        /// The URL.
        url: String,
        /// Form fields sent with the file.
        form_fields: Option<StringMap>,
        /// The file, relative to the output directory.
        relative_path: String,
        /// Headers to send.
        signed_headers: Option<StringMap>,
    },
    /// `single_file_put`.
    Put {
        /// The URL.
        url: String,
        /// The file, relative to the output directory.
        relative_path: String,
        /// Headers to send.
        signed_headers: Option<StringMap>,
    },
}

const ZIP_UPLOAD_TYPES: &str = "zip_and_http_post or zip_and_http_put";
const SINGLE_FILE_UPLOAD_TYPES: &str = "single_file_post or single_file_put";

fn upload_type<'a>(obj: &Obj<'a>) -> Result<&'a str, FieldError> {
    match obj.required("output_upload_type")? {
        Value::String(s) => Ok(s),
        other => Err(obj.error(
            "output_upload_type",
            format!("expected a string, found {}", kind(other)),
        )),
    }
}

impl OutputUpload {
    fn parse(value: &Value, path: &str) -> Result<OutputUpload, FieldError> {
        let obj = Obj::new(value, path)?;
        match upload_type(&obj)? {
            "multi_upload" => {
                let list_path = obj.child("uploads");
                let uploads = obj
                    .array("uploads")?
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let item_path = format!("{list_path}[{i}]");
                        SingleFileUpload::parse(&Obj::new(item, &item_path)?)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let system_output_path = obj.child("system_output");
                let system_output = match obj.optional("system_output") {
                    None => None,
                    Some(value) => Some(ZipUpload::parse(&Obj::new(value, &system_output_path)?)?),
                };
                Ok(OutputUpload::Multi { uploads, system_output })
            }
            "zip_and_http_post" | "zip_and_http_put" => ZipUpload::parse(&obj).map(OutputUpload::Zip),
            "single_file_post" | "single_file_put" => SingleFileUpload::parse(&obj).map(OutputUpload::SingleFile),
            other => Err(obj.error(
                "output_upload_type",
                format!(
                    "unknown value {} (expected multi_upload, {ZIP_UPLOAD_TYPES} or {SINGLE_FILE_UPLOAD_TYPES})",
                    brief(other)
                ),
            )),
        }
    }

    /// The canonical object (every key of its type, in declaration order).
    pub fn to_value(&self) -> Value {
        match self {
            OutputUpload::Zip(zip) => zip.to_value(),
            OutputUpload::SingleFile(file) => file.to_value(),
            OutputUpload::Multi {
                uploads,
                system_output,
            } => {
                let mut map = Map::new();
                map.insert("output_upload_type".into(), "multi_upload".into());
                map.insert(
                    "uploads".into(),
                    uploads.iter().map(SingleFileUpload::to_value).collect(),
                );
                map.insert(
                    "system_output".into(),
                    system_output
                        .as_ref()
                        .map_or(Value::Null, ZipUpload::to_value),
                );
                Value::Object(map)
            }
        }
    }
}

impl ZipUpload {
    fn parse(obj: &Obj<'_>) -> Result<ZipUpload, FieldError> {
        match upload_type(obj)? {
            "zip_and_http_post" => Ok(ZipUpload::Post {
                url: obj.string("url")?,
                form_fields: StringMap::parse_optional(obj, "form_fields")?,
            }),
            "zip_and_http_put" => Ok(ZipUpload::Put {
                url: obj.string("url")?,
            }),
            other => Err(obj.error(
                "output_upload_type",
                format!(
                    "unknown value {} (expected {ZIP_UPLOAD_TYPES})",
                    brief(other)
                ),
            )),
        }
    }

    /// The canonical object.
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        match self {
            ZipUpload::Post { url, form_fields } => {
                map.insert("output_upload_type".into(), "zip_and_http_post".into());
                map.insert("url".into(), url.clone().into());
                map.insert(
                    "form_fields".into(),
                    form_fields
                        .as_ref()
                        .map_or(Value::Null, StringMap::to_value),
                );
            }
            ZipUpload::Put { url } => {
                map.insert("output_upload_type".into(), "zip_and_http_put".into());
                map.insert("url".into(), url.clone().into());
            }
        }
        Value::Object(map)
    }
}

impl SingleFileUpload {
    fn parse(obj: &Obj<'_>) -> Result<SingleFileUpload, FieldError> {
        let post = match upload_type(obj)? {
            "single_file_post" => true,
            "single_file_put" => false,
            other => {
                return Err(obj.error(
                    "output_upload_type",
                    format!(
                        "unknown value {} (expected {SINGLE_FILE_UPLOAD_TYPES})",
                        brief(other)
                    ),
                ));
            }
        };
        let url = obj.string("url")?;
        let form_fields = if post {
            StringMap::parse_optional(obj, "form_fields")?
        } else {
            None
        };
        let relative_path = obj.string("relative_path")?;
        check_relative_path(&relative_path)
            .map_err(|problem| obj.error("relative_path", problem))?;
        let signed_headers = StringMap::parse_optional(obj, "signed_headers")?;
        Ok(if post {
            SingleFileUpload::Post {
                url,
                form_fields,
                relative_path,
                signed_headers,
            }
        } else {
            SingleFileUpload::Put {
                url,
                relative_path,
                signed_headers,
            }
        })
    }

    /// The canonical object.
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        match self {
            SingleFileUpload::Post {
                url,
                form_fields,
                relative_path,
                signed_headers,
            } => {
                map.insert("output_upload_type".into(), "single_file_post".into());
                map.insert("url".into(), url.clone().into());
                map.insert(
                    "form_fields".into(),
                    form_fields
                        .as_ref()
                        .map_or(Value::Null, StringMap::to_value),
                );
                map.insert("relative_path".into(), relative_path.clone().into());
                map.insert(
                    "signed_headers".into(),
                    signed_headers
                        .as_ref()
                        .map_or(Value::Null, StringMap::to_value),
                );
            }
            SingleFileUpload::Put {
                url,
                relative_path,
                signed_headers,
            } => {
                map.insert("output_upload_type".into(), "single_file_put".into());
                map.insert("url".into(), url.clone().into());
                map.insert("relative_path".into(), relative_path.clone().into());
                map.insert(
                    "signed_headers".into(),
                    signed_headers
                        .as_ref()
                        .map_or(Value::Null, StringMap::to_value),
                );
            }
        }
        Value::Object(map)
    }
}

/// The `relative_path` rule of single-file uploads (section 4.2): non-empty, no NUL, no leading `/`, no
/// backslash, no empty, `.` or `..` component, no component longer than 255 bytes.
pub(super) fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    if path.contains('\0') {
        return Err("must not contain a NUL character".into());
    }
    if path.starts_with('/') {
        return Err("must be relative (it starts with /)".into());
    }
    if path.contains('\\') {
        return Err("must not contain a backslash".into());
    }
    for component in path.split('/') {
        match component {
            "" => return Err("must not contain an empty component (// or a trailing /)".into()),
            "." | ".." => return Err(format!("must not contain a {component:?} component")),
            c if c.len() > 255 => return Err("has a component longer than 255 bytes".into()),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_relative_path;

    #[test]
    fn relative_paths_must_stay_inside_the_job_directory() {
        assert!(check_relative_path("out/result.json").is_ok());
        assert!(check_relative_path("../etc/passwd").is_err());
        assert!(check_relative_path("a//b").is_err());
        assert!(check_relative_path("/abs").is_err());
        assert!(check_relative_path("").is_err());
    }
}
