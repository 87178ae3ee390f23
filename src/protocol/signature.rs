//! Job signatures (docs/PROTOCOL.md sections 9 and 10): the `signature` object of server messages, the signed payload
//! and its hash, verification byte-for-byte as the reference validator does it, the trust policy (9.8), and signing
//! (for the reference facilitator and tests).
//!
//! Owns: the digest `BLAKE2b-512(timestamp_ns big-endian ‖ payload)`, the double encoding of job payloads, base64 of
//! signatures, and the order of the checks (signature present, signatory trusted, then the cryptographic check).
//! Must never: accept a job whose signature does not verify, or compare signatories in any way other than the
//! reference validator's exact string comparison.

use std::sync::Arc;

use blake2::{Blake2b512, Digest};
use serde_json::{Map, Value};

use super::cheated::JobCheated;
use super::enums::SignatureScope;
use super::job::{JobRequest, JobRequestError, JobRequestFields};
use super::keys::{self, Hotkey, Ss58Error};
use super::wire::{FieldError, Obj};

/// The `signature` object of a `V2JobRequest` or `V0JobCheated` (section 9.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSignature {
    /// Always `"bittensor"` from the SDK; not checked by the validator.
    pub signature_type: String,
    /// SS58 address of the signer.
    pub signatory: String,
    /// Unix time of signing in nanoseconds, as received (a Python integer: anything outside `0..2^64` never
    /// verifies). Not checked for freshness, as in the reference validator.
    pub timestamp_ns: i128,
    /// Standard base64 of the 64 signature bytes, as received.
    pub signature: String,
    /// Ignored by the validator's check (always the SignedFields scheme for jobs).
    pub signature_scope: SignatureScope,
}

impl JobSignature {
    /// Parses the wire object: unknown keys rejected, defaults of section 9.6 for absent keys.
    pub(crate) fn parse(obj: Obj<'_>) -> Result<JobSignature, FieldError> {
        obj.deny_unknown(&[
            "signature_type",
            "signatory",
            "timestamp_ns",
            "signature",
            "signature_scope",
        ])?;
        let timestamp_ns = match obj.map.get("timestamp_ns") {
            None => 0,
            Some(value) => value
                .as_i64()
                .map(i128::from)
                .or_else(|| value.as_u64().map(i128::from))
                .ok_or_else(|| {
                    obj.error(
                        "timestamp_ns",
                        format!("expected an integer, found {}", super::wire::kind(value)),
                    )
                })?,
        };
        let signature_scope = match obj.map.get("signature_scope") {
            None => SignatureScope::SignedFields,
            Some(Value::String(s)) => SignatureScope::from_wire(s).ok_or_else(|| {
                obj.error(
                    "signature_scope",
                    format!(
                        "unknown value {} (expected SignedFields or FullRequest)",
                        super::wire::brief(s)
                    ),
                )
            })?,
            Some(other) => {
                return Err(obj.error(
                    "signature_scope",
                    format!("expected a string, found {}", super::wire::kind(other)),
                ));
            }
        };
        Ok(JobSignature {
            signature_type: obj.string_or("signature_type", "")?,
            signatory: obj.string_or("signatory", "")?,
            timestamp_ns,
            signature: obj.string("signature")?,
            signature_scope,
        })
    }

    /// The wire object, keys in the facilitator's order.
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        map.insert("signature_type".into(), self.signature_type.clone().into());
        map.insert("signatory".into(), self.signatory.clone().into());
        // Parsing only yields values in `i64::MIN..=u64::MAX`; anything else set by hand is clamped to that range
        // (such a timestamp never verifies either way).
        let timestamp = self
            .timestamp_ns
            .clamp(i128::from(i64::MIN), i128::from(u64::MAX));
        let timestamp = serde_json::Number::from_i128(timestamp).map_or(Value::Null, Value::Number);
        map.insert("timestamp_ns".into(), timestamp);
        map.insert("signature".into(), self.signature.clone().into());
        map.insert(
            "signature_scope".into(),
            self.signature_scope.as_str().into(),
        );
        Value::Object(map)
    }

    /// Checks this signature over `payload` (the bytes hashed after the timestamp). Purely cryptographic: says
    /// nothing about whether the signatory is trusted. Returns the signer's public key.
    pub fn verify(&self, payload: &[u8]) -> Result<[u8; 32], SignatureCheckError> {
        let public_key =
            keys::ss58_decode(&self.signatory).map_err(SignatureCheckError::BadSignatory)?;
        let timestamp_ns = u64::try_from(self.timestamp_ns)
            .map_err(|_| SignatureCheckError::TimestampOutOfRange(self.timestamp_ns))?;
        let bytes = base64_decode(&self.signature).ok_or(SignatureCheckError::NotBase64)?;
        let signature: [u8; 64] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SignatureCheckError::WrongLength(bytes.len()))?;
        if keys::verify(
            &public_key,
            &signature_digest(timestamp_ns, payload),
            &signature,
        ) {
            Ok(public_key)
        } else {
            Err(SignatureCheckError::Invalid)
        }
    }
}

/// Why a signature does not verify cryptographically (the reference validator reports all of these as
/// `Bad signature`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureCheckError {
    /// There is no signature (`"signature": null`).
    #[error("the message has no signature")]
    Missing,
    /// `signatory` is not an SS58 address.
    #[error("signatory is not an SS58 address: {0}")]
    BadSignatory(Ss58Error),
    /// `timestamp_ns` is negative or at least 2^64 (the Python code raises).
    #[error("timestamp_ns {0} is outside 0..2^64")]
    TimestampOutOfRange(i128),
    /// `signature` is not standard padded base64.
    #[error("signature is not standard base64")]
    NotBase64,
    /// The signature is not 64 bytes.
    #[error("signature is {0} bytes; an sr25519 signature is 64")]
    WrongLength(usize),
    /// Well-formed, but does not verify against the signatory's key.
    #[error("signature does not verify for the signatory's key")]
    Invalid,
}

/// Why a signed server message is not accepted. The Display texts are the reference validator's rejection messages
/// (section 9.8), sent back in `job_rejection_details.message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobSignatureError {
    /// `signature` is null.
    #[error("Signature is empty")]
    Missing,
    /// The signatory (the SS58 text as received) is neither this validator's hotkey nor a trusted signer.
    #[error("Signatory {0} is not in validator whitelist")]
    UntrustedSignatory(String),
    /// The signature does not verify (see [`JobSignature::verify`] for the detailed reason).
    #[error("Bad signature")]
    Invalid,
}

/// The signers whose job requests (and cheat reports) are accepted: this validator's own hotkey and any configured
/// SS58 addresses.
///
/// Like the reference validator, a signatory is trusted when its text is *exactly* one of these addresses (the
/// own hotkey as its format-42 address): the same key written with another SS58 prefix is not trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedSigners {
    own: String,
    others: Vec<String>,
}

impl TrustedSigners {
    /// Trusts `own_public_key` (this validator's hotkey) and the given SS58 addresses. Each address must be a valid
    /// SS58 address (any prefix, checksum checked), so that a typo is reported at start-up instead of silently
    /// rejecting every job.
    ///
    /// ```
    /// use facilitator_client::protocol::{keys::Hotkey, TrustedSigners};
    /// let own = Hotkey::from_seed(&[0; 32]);
    /// let signers = TrustedSigners::new(own.public_key(), ["5DtDLm5rQHShDqojQpsvcN8tRXHVFaecfDoRet1SU6BFD9Fi"])?;
    /// assert!(signers.is_trusted(&own.ss58()));
    /// assert!(TrustedSigners::new(own.public_key(), ["5DtDLm5rQHShDqojQpsvcN8tRXHVFaecfDoRet1SU6BFD9Fj"]).is_err());
    /// # Ok::<(), facilitator_client::protocol::signature::TrustedSignerError>(())
    /// ```
    pub fn new<I, S>(
        own_public_key: [u8; 32],
        trusted: I,
    ) -> Result<TrustedSigners, TrustedSignerError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let others = trusted
            .into_iter()
            .map(|address| {
                let address = address.as_ref();
                keys::ss58_decode(address)
                    .map(|_| address.to_owned())
                    .map_err(|reason| TrustedSignerError {
                        address: address.to_owned(),
                        reason,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedSigners {
            own: keys::ss58_encode(&own_public_key),
            others,
        })
    }

    /// Whether `signatory` (an SS58 text as found in a message) is trusted.
    pub fn is_trusted(&self, signatory: &str) -> bool {
        signatory == self.own || self.others.iter().any(|a| a == signatory)
    }

    /// Checks a job request as the reference validator does (section 9.8): signature present, signatory trusted,
    /// then the cryptographic check over the SignedFields payload, which is skipped when the job's signature
    /// already verified in a batch ([`verify_batch`]).
    pub fn check(&self, job: &JobRequest) -> Result<(), JobSignatureError> {
        if job.signature_verified() {
            let signature = job.signature().ok_or(JobSignatureError::Missing)?;
            return if self.is_trusted(&signature.signatory) {
                Ok(())
            } else {
                Err(JobSignatureError::UntrustedSignatory(
                    signature.signatory.clone(),
                ))
            };
        }
        self.check_signed(job.signature(), || {
            job.fields().signed_payload().into_bytes()
        })
    }

    /// Checks a cheat report the same way (section 10), over its single-encoded payload. Real SDK-signed reports
    /// never pass this (the SDK double-encodes); the reference validator then only logs and ignores them.
    pub fn check_cheat_report(&self, report: &JobCheated) -> Result<(), JobSignatureError> {
        self.check_signed(report.signature.as_ref(), || {
            report.signed_payload().into_bytes()
        })
    }

    fn check_signed(
        &self,
        signature: Option<&JobSignature>,
        payload: impl FnOnce() -> Vec<u8>,
    ) -> Result<(), JobSignatureError> {
        let signature = signature.ok_or(JobSignatureError::Missing)?;
        if !self.is_trusted(&signature.signatory) {
            return Err(JobSignatureError::UntrustedSignatory(
                signature.signatory.clone(),
            ));
        }
        signature
            .verify(&payload())
            .map(|_| ())
            .map_err(|_| JobSignatureError::Invalid)
    }
}

/// Verifies the signatures of several job requests in one batch (schnorrkel's batch equation, cheaper per
/// signature than one check each) and, when every one verifies, marks each job so that
/// [`TrustedSigners::check`] skips its cryptographic step. Purely cryptographic: whether a signatory is trusted is
/// still decided by `check`. Returns false (marking nothing) when any job has no signature, a malformed one, or
/// one that does not verify; `check` then verifies each job on its own, with the same outcome as without the
/// batch. Jobs already marked are skipped.
///
/// ```
/// use std::sync::Arc;
/// use facilitator_client::protocol::{decode_server_frame, signature, testing, ServerMessage, TrustedSigners};
/// let jobs: Vec<_> = (1..=3)
///     .map(|i| {
///         let text = testing::signed_job_text(&testing::test_signer(), &format!("00000000-0000-4000-8000-00000000000{i}"));
///         let Ok(ServerMessage::JobRequest(job)) = decode_server_frame(&text, 1 << 20) else { panic!() };
///         job
///     })
///     .collect();
/// assert!(signature::verify_batch(&jobs));
/// let signers = TrustedSigners::new([0; 32], [testing::TEST_SIGNER_SS58])?;
/// assert!(jobs.iter().all(|job| signers.check(job).is_ok()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn verify_batch(jobs: &[Arc<JobRequest>]) -> bool {
    let mut items = Vec::with_capacity(jobs.len());
    for job in jobs.iter().filter(|job| !job.signature_verified()) {
        let Some(signature) = job.signature() else {
            return false;
        };
        let (Ok(public_key), Ok(timestamp_ns), Some(bytes)) = (
            keys::ss58_decode(&signature.signatory),
            u64::try_from(signature.timestamp_ns),
            base64_decode(&signature.signature),
        ) else {
            return false;
        };
        let Ok(sig) = <[u8; 64]>::try_from(bytes.as_slice()) else {
            return false;
        };
        let payload = job.fields().signed_payload();
        items.push((
            public_key,
            signature_digest(timestamp_ns, payload.as_bytes()),
            sig,
        ));
    }
    if items.is_empty() {
        return true;
    }
    if !keys::verify_batch(&items) {
        return false;
    }
    for job in jobs {
        job.mark_signature_verified();
    }
    true
}

/// A configured trusted signer that is not an SS58 address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "trusted signer {address:?} is not a valid SS58 address ({reason}); give the signer's hotkey address, e.g. 5F..."
)]
pub struct TrustedSignerError {
    /// The address as configured.
    pub address: String,
    /// What is wrong with it.
    pub reason: Ss58Error,
}

/// `BLAKE2b-512(timestamp_ns as 8 bytes big-endian ‖ payload)`: the 64-byte message that is sr25519-signed
/// (section 9.5).
pub fn signature_digest(timestamp_ns: u64, payload: &[u8]) -> [u8; 64] {
    let mut hasher = Blake2b512::new();
    hasher.update(timestamp_ns.to_be_bytes());
    hasher.update(payload);
    hasher.finalize().into()
}

/// Signs `payload` (the bytes hashed after the timestamp) as the SDK does and returns the wire signature object.
pub fn sign_payload(
    signer: &Hotkey,
    timestamp_ns: u64,
    payload: &[u8],
    scope: SignatureScope,
) -> JobSignature {
    let signature = signer.sign(&signature_digest(timestamp_ns, payload));
    JobSignature {
        signature_type: "bittensor".into(),
        signatory: signer.ss58(),
        timestamp_ns: i128::from(timestamp_ns),
        signature: base64_encode(&signature),
        signature_scope: scope,
    }
}

/// Signs a job request for the reference facilitator and tests: `fields` is the job's top-level object in wire
/// order (with or without `signature`, `type` and `message_type`); the result is the complete `V2JobRequest` text in
/// the facilitator's format (Python `json.dumps`: `", "`/`": "` separators, ASCII-only, every key of section 4.2
/// present in that order, volumes and uploads in canonical form).
///
/// ```
/// use facilitator_client::protocol::{decode_server_frame, signature::sign_job_request, keys::Hotkey, ServerMessage};
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
        .or_insert_with(|| Value::from("V2JobRequest"));
    let mut job = JobRequestFields::from_map(&fields)?;
    job.sign(signer, timestamp_ns);
    Ok(job.to_wire_text())
}

/// Standard base64 with padding, as Python's `base64.b64encode`.
pub fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Strict standard base64 with padding. (Python's decoder also skips characters outside the alphabet; the
/// facilitator never sends such text, and a strict decoder only rejects more.)
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}
