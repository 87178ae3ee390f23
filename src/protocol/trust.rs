//! Whom to trust (docs/PROTOCOL.md section 9.8): the validator's own hotkey and the configured signers, and the
//! check of a job request or cheat report as the reference validator makes it, one at a time or many at once.
//!
//! Owns: the order of the checks (signature present, signatory trusted, then the cryptographic check), the exact
//! string comparison of signatories, and batch verification. Every verdict is returned to the caller, computed from
//! the values it was given: nothing is cached in the messages. Must never: accept a job whose signature does not
//! verify, or compare signatories in any way other than the reference validator's.

use super::cheated::JobCheated;
use super::job::JobRequest;
use super::keys::{self, Ss58Error};
use super::signature::{JobSignature, base64_decode, signature_digest};

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
    /// # Ok::<(), facilitator_client::protocol::TrustedSignerError>(())
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
    /// then the cryptographic check over the SignedFields payload.
    pub fn check(&self, job: &JobRequest) -> Result<(), JobSignatureError> {
        self.check_signed(job.signature(), || {
            job.fields().signed_payload().into_bytes()
        })
    }

    /// Checks several job requests, with the same verdict for each as [`TrustedSigners::check`], for less work:
    /// the signatures of those whose signatory is trusted are verified in one batch (schnorrkel's batch equation);
    /// only when the batch fails is each of them verified on its own.
    ///
    /// ```
    /// use facilitator_client::protocol::{decode_server_frame, testing, JobSignatureError, ServerMessage, TrustedSigners};
    /// let jobs: Vec<_> = (1..=3)
    ///     .map(|i| {
    ///         let text = testing::signed_job_text(&testing::test_signer(), &format!("00000000-0000-4000-8000-00000000000{i}"));
    ///         let Ok(ServerMessage::JobRequest(job)) = decode_server_frame(&text, 1 << 20) else { panic!() };
    ///         job
    ///     })
    ///     .collect();
    /// let signers = TrustedSigners::new([0; 32], [testing::TEST_SIGNER_SS58])?;
    /// let verdicts = signers.check_all(jobs.iter().map(|job| &**job));
    /// assert_eq!(verdicts, vec![Ok(()), Ok(()), Ok(())]);
    /// let strangers = TrustedSigners::new([0; 32], Vec::<String>::new())?;
    /// assert!(matches!(strangers.check_all([&*jobs[0]])[0], Err(JobSignatureError::UntrustedSignatory(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn check_all<'a>(
        &self,
        jobs: impl IntoIterator<Item = &'a JobRequest>,
    ) -> Vec<Result<(), JobSignatureError>> {
        let jobs: Vec<&JobRequest> = jobs.into_iter().collect();
        let mut verdicts: Vec<Option<Result<(), JobSignatureError>>> =
            Vec::with_capacity(jobs.len());
        let mut batch = Vec::new();
        let mut in_batch = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            match self.trusted_signature(job.signature()) {
                Err(refused) => verdicts.push(Some(Err(refused))),
                Ok(signature) => match batch_item(signature, || job.fields().signed_payload()) {
                    // Malformed: its own check gives the verdict.
                    None => verdicts.push(Some(self.check(job))),
                    Some(item) => {
                        batch.push(item);
                        in_batch.push(i);
                        verdicts.push(None);
                    }
                },
            }
        }
        // One job alone gains nothing from the batch equation.
        let batch_verified = batch.len() > 1 && keys::verify_batch(&batch);
        for i in in_batch {
            verdicts[i] = Some(if batch_verified {
                Ok(())
            } else {
                self.check(jobs[i])
            });
        }
        verdicts
            .into_iter()
            .map(|v| v.unwrap_or(Err(JobSignatureError::Invalid)))
            .collect()
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
        self.trusted_signature(signature)?
            .verify(&payload())
            .map(|_| ())
            .map_err(|_| JobSignatureError::Invalid)
    }

    /// The first two checks: a signature is there, and its signatory is trusted.
    fn trusted_signature<'s>(
        &self,
        signature: Option<&'s JobSignature>,
    ) -> Result<&'s JobSignature, JobSignatureError> {
        let signature = signature.ok_or(JobSignatureError::Missing)?;
        if self.is_trusted(&signature.signatory) {
            Ok(signature)
        } else {
            Err(JobSignatureError::UntrustedSignatory(
                signature.signatory.clone(),
            ))
        }
    }
}

/// A signature as an item of schnorrkel's batch equation: (public key, digest, signature bytes); `None` when it is
/// malformed (bad signatory, timestamp, base64 or length), which a batch cannot hold.
fn batch_item(
    signature: &JobSignature,
    payload: impl FnOnce() -> String,
) -> Option<([u8; 32], [u8; 64], [u8; 64])> {
    let public_key = keys::ss58_decode(&signature.signatory).ok()?;
    let timestamp_ns = u64::try_from(signature.timestamp_ns).ok()?;
    let bytes = base64_decode(&signature.signature)?;
    let sig = <[u8; 64]>::try_from(bytes.as_slice()).ok()?;
    Some((
        public_key,
        signature_digest(timestamp_ns, payload().as_bytes()),
        sig,
    ))
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
