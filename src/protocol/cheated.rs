//! `V0JobCheated` (docs/PROTOCOL.md 4.3 and 10): a user's report that a miner cheated on a job.
//!
//! Owns the report's parse rules (unknown keys rejected, `details` required but may be null), its wire text, and the
//! payload its signature is checked against: `json.dumps({job_uuid, trusted_job_uuid, details}, sort_keys=True)`,
//! hashed once (single encoding). Must never: answer the facilitator about a report (the reference validator only
//! logs them) or pretend SDK-signed reports verify (they are double-encoded and never do; section 10).

use serde_json::{Map, Value};

use super::enums::SignatureScope;
use super::keys::Hotkey;
use super::pyjson;
use super::signature::{self, JobSignature, SignatureCheckError};
use super::wire::{FieldError, Obj};

/// A cheat report.
#[derive(Debug, Clone, PartialEq)]
pub struct JobCheated {
    /// The reporter's signature (section 10).
    pub signature: Option<JobSignature>,
    /// The job that was cheated.
    pub job_uuid: String,
    /// The trusted re-run used for comparison.
    pub trusted_job_uuid: String,
    /// Free-form details (any JSON value; the key itself is required).
    pub details: Value,
}

impl JobCheated {
    /// The `message_type` of a cheat report.
    pub const MESSAGE_TYPE: &'static str = "V0JobCheated";

    /// The keys a report may have, in the facilitator's order.
    pub const WIRE_KEYS: [&'static str; 6] = [
        "signature",
        "type",
        "message_type",
        "job_uuid",
        "trusted_job_uuid",
        "details",
    ];

    pub(crate) fn parse(map: &Map<String, Value>) -> Result<JobCheated, FieldError> {
        let obj = Obj { map, path: "" };
        obj.deny_unknown(&Self::WIRE_KEYS)?;
        for (key, expected) in [
            ("type", "job.cheated"),
            ("message_type", Self::MESSAGE_TYPE),
        ] {
            match map.get(key) {
                None => {}
                Some(Value::String(s)) if s == expected => {}
                Some(other) => {
                    return Err(obj.error(
                        key,
                        format!(
                            "expected {expected:?}, found {}",
                            super::wire::brief_json(other)
                        ),
                    ));
                }
            }
        }
        let signature = match obj.optional("signature") {
            None => None,
            Some(value) => Some(JobSignature::parse(Obj::new(value, "signature")?)?),
        };
        Ok(JobCheated {
            signature,
            job_uuid: obj.string("job_uuid")?,
            trusted_job_uuid: obj.string("trusted_job_uuid")?,
            details: obj.required("details")?.clone(),
        })
    }

    /// The wire object: every key, in the facilitator's order.
    ///
    /// Unlike the facilitator, which leaves out null fields, this writes `signature` and `details` even when null:
    /// a report without its `details` key does not parse at the reference validator (section 10).
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        map.insert(
            "signature".into(),
            self.signature
                .as_ref()
                .map_or(Value::Null, JobSignature::to_value),
        );
        map.insert("type".into(), "job.cheated".into());
        map.insert("message_type".into(), Self::MESSAGE_TYPE.into());
        map.insert("job_uuid".into(), self.job_uuid.clone().into());
        map.insert(
            "trusted_job_uuid".into(),
            self.trusted_job_uuid.clone().into(),
        );
        map.insert("details".into(), self.details.clone());
        Value::Object(map)
    }

    /// The wire text in the facilitator's format (Python `json.dumps`).
    pub fn to_wire_text(&self) -> String {
        pyjson::dumps(&self.to_value())
    }

    /// What the validator hashes after the timestamp: `json.dumps(obj, sort_keys=True)` of
    /// `{job_uuid, trusted_job_uuid, details}`, not quoted again.
    pub fn signed_payload(&self) -> String {
        let mut map = Map::new();
        map.insert("job_uuid".into(), self.job_uuid.clone().into());
        map.insert(
            "trusted_job_uuid".into(),
            self.trusted_job_uuid.clone().into(),
        );
        map.insert("details".into(), self.details.clone());
        pyjson::dumps_sorted(&Value::Object(map))
    }

    /// Checks the signature cryptographically over [`Self::signed_payload`] (no trust policy; see
    /// [`super::TrustedSigners::check_cheat_report`]) and returns the signer's public key.
    pub fn verify(&self) -> Result<[u8; 32], SignatureCheckError> {
        let signature = self
            .signature
            .as_ref()
            .ok_or(SignatureCheckError::Missing)?;
        signature.verify(self.signed_payload().as_bytes())
    }

    /// Signs the report over the validator's payload (single encoding), so that it verifies. No real producer does
    /// this (the SDK double-encodes); it exists for the reference facilitator and tests.
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
