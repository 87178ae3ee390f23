//! Whom to trust (docs/PROTOCOL.md section 9.8): the validator's own hotkey and the configured signers, and the
//! check of a job request or cheat report as the reference validator makes it, one at a time or many at once.
//!
//! Owns: the order of the checks (signature present, signatory trusted, then the cryptographic check), the exact
//! string comparison of signatories, each trusted signer's key (decoded from its address and decompressed once, when
//! the set is made: a job signed by a trusted signer never decodes or decompresses a key), and batch verification.
//! Every verdict is returned to the caller, computed from the values it was given: nothing is cached in the
//! messages. Must never: accept a job whose signature does not verify, or compare signatories in any way other than
//! the reference validator's.

use super::cheated::JobCheated;
use super::job::JobRequest;
use super::keys::{self, Ss58Error, VerifyingKey};
use super::signature::JobSignature;

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
    own: Signer,
    others: Vec<Signer>,
}

/// A trusted signer: its address, compared as text, and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Signer {
    address: String,
    /// `None` when the address's 32 bytes are not a valid point: then no signature verifies (as without the
    /// cache: the check fails at decompression).
    key: Option<VerifyingKey>,
}

impl Signer {
    fn new(address: String, public_key: &[u8; 32]) -> Signer {
        Signer {
            address,
            key: VerifyingKey::from_bytes(public_key),
        }
    }
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
                    .map(|key| Signer::new(address.to_owned(), &key))
                    .map_err(|reason| TrustedSignerError {
                        address: address.to_owned(),
                        reason,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedSigners {
            own: Signer::new(keys::ss58_encode(&own_public_key), &own_public_key),
            others,
        })
    }

    /// Whether `signatory` (an SS58 text as found in a message) is trusted.
    pub fn is_trusted(&self, signatory: &str) -> bool {
        self.signer(signatory).is_some()
    }

    fn signer(&self, signatory: &str) -> Option<&Signer> {
        std::iter::once(&self.own)
            .chain(&self.others)
            .find(|signer| signer.address == signatory)
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
        let mut verdicts = Vec::new();
        let mut batch = Vec::new();
        let mut in_batch = Vec::new();
        for (i, job) in jobs.into_iter().enumerate() {
            let verdict = self
                .trusted_signature(job.signature())
                .and_then(|(signature, key)| {
                    let payload = job.fields().signed_payload();
                    match (key, signature.digest_and_bytes(payload.as_bytes())) {
                        (Some(key), Ok((digest, bytes))) => {
                            batch.push((*key, digest, bytes));
                            in_batch.push(i);
                            Ok(())
                        }
                        // Malformed, or a key that is no point: it would fail its own check too.
                        _ => Err(JobSignatureError::Invalid),
                    }
                });
            verdicts.push(verdict);
        }
        // One job alone gains nothing from the batch equation. When the batch fails, each of its jobs is verified
        // on its own (the same check as `check`, from the digest and bytes already made).
        if !(batch.len() > 1 && keys::verify_batch(&batch)) {
            for (i, (key, digest, bytes)) in in_batch.into_iter().zip(&batch) {
                if !key.verify(digest, bytes) {
                    verdicts[i] = Err(JobSignatureError::Invalid);
                }
            }
        }
        verdicts
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
        let (signature, key) = self.trusted_signature(signature)?;
        let key = key.ok_or(JobSignatureError::Invalid)?;
        signature
            .verify_with(key, &payload())
            .map_err(|_| JobSignatureError::Invalid)
    }

    /// The first two checks: a signature is there, and its signatory is trusted. With the signatory's key.
    fn trusted_signature<'s>(
        &'s self,
        signature: Option<&'s JobSignature>,
    ) -> Result<(&'s JobSignature, Option<&'s VerifyingKey>), JobSignatureError> {
        let signature = signature.ok_or(JobSignatureError::Missing)?;
        match self.signer(&signature.signatory) {
            Some(signer) => Ok((signature, signer.key.as_ref())),
            None => Err(JobSignatureError::UntrustedSignatory(
                signature.signatory.clone(),
            )),
        }
    }
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
