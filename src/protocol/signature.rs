//! Job request signatures (PROTOCOL.md section 9). PLACEHOLDER: the protocol issue replaces this.

use super::job::JobRequest;

/// Why a job request's signature is not accepted. Messages are the reference validator's (section 9.8).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobSignatureError {
    #[error("Signature is empty")]
    Missing,
    #[error("Signatory {0} is not in validator whitelist")]
    UntrustedSignatory(String),
    #[error("Bad signature")]
    Invalid,
}

/// The signers whose job requests are accepted: the client's own hotkey and any configured SS58 addresses.
#[derive(Debug, Clone, Default)]
pub struct TrustedSigners {
    keys: Vec<[u8; 32]>,
}

impl TrustedSigners {
    /// Trust these public keys.
    pub fn new(keys: Vec<[u8; 32]>) -> Self {
        TrustedSigners { keys }
    }

    /// Checks a job request as the reference validator does: present, trusted signatory, valid signature.
    pub fn check(&self, job: &JobRequest) -> Result<(), JobSignatureError> {
        let _ = (&self.keys, job);
        Err(JobSignatureError::Missing)
    }
}
