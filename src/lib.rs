//! facilitator-client: the ComputeHorde validator's client for the facilitator.

#![deny(unsafe_code)]
#![warn(unreachable_pub)]

#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;
#[cfg(feature = "runtime")]
pub mod handler;
pub mod machine;
#[cfg(feature = "ops")]
pub mod ops;
pub mod protocol;
#[cfg(feature = "reference")]
pub mod reference;
#[cfg(feature = "runtime")]
mod runtime;
#[cfg(feature = "test-support")]
pub mod sim;
pub mod spool;

#[cfg(feature = "runtime")]
pub use runtime::{
    CaFileError, Client, ClientConfig, ConfigError, Metrics, MetricsHandle, Outcome, Peaks,
    ShutdownHandle, SpoolMetrics, SpoolSummary, TransportLimits, UrlError,
};
