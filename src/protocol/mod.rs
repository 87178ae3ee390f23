//! The ComputeHorde facilitator protocol (`docs/PROTOCOL.md`): message types, their byte-exact encoding, decoding of
//! server frames, hotkeys, authentication, job signatures and whom to trust.
//!
//! Pure: no I/O except reading a hotkey file on request, no clock, no tokio; builds with `--no-default-features`.
//! Nothing here may panic on input from the network or the user, and no secret may reach a log, an error message or
//! `Debug` output.

mod cheated;
mod codec;
mod enums;
#[cfg(feature = "test-support")]
pub mod fuzzing;
mod job;
pub mod keys;
mod messages;
#[cfg_attr(not(feature = "test-support"), allow(unreachable_pub))]
pub(crate) mod pyjson;
mod signature;
mod signed_fields;
#[cfg(any(feature = "reference", feature = "test-support"))]
pub mod testing;
mod trust;
mod typed;
mod wire;

pub use cheated::JobCheated;
pub use codec::{DEFAULT_FRAME_LIMIT, DecodeError, ServerMessage, decode_server_frame};
pub use enums::*;
pub use job::{
    AllowPatterns, JobRequest, JobRequestError, JobRequestFields, JobStreamingDetails,
    OutputUpload, SingleFileUpload, StringMap, Volume, VolumeSource, ZipUpload, sign_job_request,
};
pub use keys::{Hotkey, KeyError};
pub use messages::*;
pub use signature::{JobSignature, SignatureCheckError, signature_digest};
pub use trust::{JobSignatureError, TrustedSignerError, TrustedSigners};
