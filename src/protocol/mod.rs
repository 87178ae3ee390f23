//! The ComputeHorde facilitator protocol (`docs/PROTOCOL.md`): message types, their byte-exact encoding, decoding of
//! server frames, hotkeys, authentication and job signatures.
//!
//! Pure: no I/O except reading a hotkey file on request, no clock, no tokio; builds with `--no-default-features`.
//! Nothing here may panic on input from the network or the user, and no secret may reach a log, an error message or
//! `Debug` output.

pub mod cheated;
pub mod codec;
pub mod enums;
pub mod fuzzing;
pub mod job;
pub mod keys;
pub mod messages;
pub mod pyjson;
pub mod signature;
pub mod testing;
mod wire;

pub use cheated::JobCheated;
pub use codec::{DEFAULT_FRAME_LIMIT, DecodeError, ServerMessage, decode_server_frame};
pub use enums::*;
pub use job::{JobRequest, JobRequestError, JobRequestFields};
pub use keys::{Hotkey, KeyError};
pub use messages::*;
pub use signature::{
    JobSignature, JobSignatureError, SignatureCheckError, TrustedSigners, sign_job_request,
};
