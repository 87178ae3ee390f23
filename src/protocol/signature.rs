//! The signature primitive (docs/PROTOCOL.md section 9): what the `signature` object of a server message is, the
//! digest that is signed, how one signature is checked cryptographically, and how one is made (for the reference
//! facilitator and tests).
//!
//! Owns: the digest `BLAKE2b-512(timestamp_ns big-endian ‖ payload)`, base64 of signatures, the wire object's parse
//! rules. Knows nothing of jobs or whom to trust: that is [`super::trust`]. Must never: report a signature as valid
//! that does not verify against its signatory's key.

use blake2::{Blake2b512, Digest};
use serde_json::{Map, Value};

use super::enums::SignatureScope;
use super::keys::{self, Hotkey, Ss58Error, VerifyingKey};
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
        let (digest, signature) = self.digest_and_bytes(payload)?;
        match VerifyingKey::from_bytes(&public_key) {
            Some(key) if key.verify(&digest, &signature) => Ok(public_key),
            _ => Err(SignatureCheckError::Invalid),
        }
    }

    /// Like [`Self::verify`] with the signatory's key already decoded and decompressed (a trusted signer's).
    pub(super) fn verify_with(
        &self,
        key: &VerifyingKey,
        payload: &[u8],
    ) -> Result<(), SignatureCheckError> {
        let (digest, signature) = self.digest_and_bytes(payload)?;
        if key.verify(&digest, &signature) {
            Ok(())
        } else {
            Err(SignatureCheckError::Invalid)
        }
    }

    /// What the sr25519 check takes: the digest of `payload` under this signature's timestamp, and the signature's
    /// 64 bytes; an error when the timestamp or the signature text is malformed.
    pub(super) fn digest_and_bytes(
        &self,
        payload: &[u8],
    ) -> Result<([u8; 64], [u8; 64]), SignatureCheckError> {
        let timestamp_ns = u64::try_from(self.timestamp_ns)
            .map_err(|_| SignatureCheckError::TimestampOutOfRange(self.timestamp_ns))?;
        let bytes = base64_decode(&self.signature).ok_or(SignatureCheckError::NotBase64)?;
        let signature: [u8; 64] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SignatureCheckError::WrongLength(bytes.len()))?;
        Ok((signature_digest(timestamp_ns, payload), signature))
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

/// `BLAKE2b-512(timestamp_ns as 8 bytes big-endian ‖ payload)`: the 64-byte message that is sr25519-signed
/// (section 9.5).
pub fn signature_digest(timestamp_ns: u64, payload: &[u8]) -> [u8; 64] {
    let mut hasher = Blake2b512::new();
    hasher.update(timestamp_ns.to_be_bytes());
    hasher.update(payload);
    hasher.finalize().into()
}

/// Signs `payload` (the bytes hashed after the timestamp) as the SDK does and returns the wire signature object.
pub(super) fn sign_payload(
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

/// Standard base64 with padding, as Python's `base64.b64encode`.
pub(super) fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Strict standard base64 with padding. (Python's decoder also skips characters outside the alphabet; the
/// facilitator never sends such text, and a strict decoder only rejects more.)
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}
