//! The ComputeHorde facilitator protocol: message types, their byte-exact encoding, decoding of server frames,
//! hotkeys and signatures. Pure: no I/O, no clock, no tokio.

pub mod codec;
pub mod enums;
pub mod job;
pub mod messages;
pub mod signature;

pub use codec::{DecodeError, ServerMessage, decode_server_frame};
pub use enums::*;
pub use job::JobRequest;
pub use messages::*;
pub use signature::{JobSignatureError, TrustedSigners};
