//! facilitator-client: the ComputeHorde validator's client for the facilitator.

#[cfg(feature = "runtime")]
pub mod cli;
#[cfg(feature = "runtime")]
pub mod demo;
#[cfg(feature = "runtime")]
pub mod facilitator;
#[cfg(feature = "runtime")]
pub mod handler;
pub mod machine;
#[cfg(feature = "ops")]
pub mod ops;
pub mod protocol;
#[cfg(feature = "runtime")]
pub mod runtime;
pub mod sim;
