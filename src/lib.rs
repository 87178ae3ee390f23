//! facilitator-client: the ComputeHorde validator's client for the facilitator.

pub mod machine;
pub mod protocol;
pub mod sim;
#[cfg(feature = "runtime")]
pub mod handler;
