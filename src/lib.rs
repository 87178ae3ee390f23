//! facilitator-client: the ComputeHorde validator's client for the facilitator.

pub mod protocol;
pub mod machine;
pub mod sim;
