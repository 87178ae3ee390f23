//! The protocol's enumerations (docs/PROTOCOL.md section 12).
//!
//! Most of them are *lenient*: an unknown value (any string, wrong case, a number, `null`) decodes to `Unknown`
//! instead of failing, exactly as the facilitator's pydantic models do. `ExecutorClass` is strict: an unknown class
//! makes a job request invalid.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $name:ident, lenient = $lenient:tt { $($variant:ident => $text:literal),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[cfg_attr(feature = "test-support", derive(arbitrary::Arbitrary))]
        pub enum $name { $(#[doc = concat!("`\"", $text, "\"`")] $variant),+ }

        impl $name {
            /// Every value, in the protocol's declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire text of this value.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// The value for a wire text, if it is one of the known values (exact, case-sensitive).
            pub fn from_wire(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        wire_enum!(@de $name, $lenient);
    };
    (@de $name:ident, true) => {
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                // Like the server: any JSON value that is not a known string becomes `unknown`.
                let value = serde_json::Value::deserialize(d)?;
                Ok(value.as_str().and_then($name::from_wire).unwrap_or($name::Unknown))
            }
        }
    };
    (@de $name:ident, false) => {
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
                $name::from_wire(&text).ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        concat!("unknown ", stringify!($name), " {:?}"),
                        text
                    ))
                })
            }
        }
    };
}

wire_enum! {
    /// A job's status as reported by the validator (section 12).
    JobStatus, lenient = true {
        Unknown => "unknown",
        Sent => "sent",
        Received => "received",
        Accepted => "accepted",
        ExecutorReady => "executor_ready",
        StreamingReady => "streaming_ready",
        VolumesReady => "volumes_ready",
        ExecutionDone => "execution_done",
        Completed => "completed",
        Rejected => "rejected",
        Failed => "failed",
        HordeFailed => "horde_failed",
    }
}

impl JobStatus {
    /// `completed`, `rejected`, `failed` and `horde_failed` end a job; everything else is in progress.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Rejected | JobStatus::Failed | JobStatus::HordeFailed
        )
    }
}

wire_enum! {
    /// Who rejected a job or reported a failure.
    JobParticipantType, lenient = true {
        Unknown => "unknown",
        Sdk => "sdk",
        Facilitator => "facilitator",
        Validator => "validator",
        Miner => "miner",
        Executor => "executor",
    }
}

wire_enum! {
    /// Why a job was rejected.
    JobRejectionReason, lenient = true {
        Unknown => "unknown",
        Busy => "busy",
        InvalidSignature => "invalid_signature",
        InvalidReceipt => "invalid_receipt",
        NoMinerForJob => "no_miner_for_job",
        ValidatorBlacklisted => "validator_blacklisted",
    }
}

wire_enum! {
    /// Why a job failed on the miner's side.
    JobFailureReason, lenient = true {
        Unknown => "unknown",
        Timeout => "timeout",
        NonzeroReturnCode => "nonzero_return_code",
        DownloadFailed => "download_failed",
        UploadFailed => "upload_failed",
    }
}

wire_enum! {
    /// The stage of a job in which it failed.
    JobStage, lenient = true {
        Unknown => "unknown",
        ExecutorStartup => "executor_startup",
        VolumeDownload => "volume_download",
        StreamingStartup => "streaming_startup",
        Execution => "execution",
        ResultUpload => "result_upload",
    }
}

wire_enum! {
    /// Why the horde (not the miner) failed a job.
    HordeFailureReason, lenient = true {
        Unknown => "unknown",
        GenericError => "generic_error",
        UnhandledException => "unhandled_exception",
        UnhandledTimeout => "unhandled_timeout",
        StreamingFailed => "streaming_failed",
        MinerConnectionFailed => "miner_connection_failed",
        InitialResponseTimedOut => "initial_response_timed_out",
        ExecutorReadinessResponseTimedOut => "executor_readiness_response_timed_out",
        VolumesTimedOut => "volumes_timed_out",
        StreamingJobReadyTimedOut => "streaming_job_ready_timed_out",
        ExecutionTimedOut => "execution_timed_out",
        FinalResponseTimedOut => "final_response_timed_out",
        ExecutorSpinupFailed => "executor_spinup_failed",
        ExecutorDisconnected => "executor_disconnected",
        SecurityCheckFailed => "security_check_failed",
    }
}

wire_enum! {
    /// The kind of executor a job asks for. Strict: an unknown class makes the job request invalid.
    ExecutorClass, lenient = false {
        SpinUp4minGpu24gb => "spin_up-4min.gpu-24gb",
        AlwaysOnGpu24gb => "always_on.gpu-24gb",
        AlwaysOnLlmA6000 => "always_on.llm.a6000",
        AlwaysOnTest => "always_on.test",
        AlwaysOnCpu8c16gb => "always_on.cpu.8c.16gb",
    }
}

wire_enum! {
    /// What a job signature covers (section 9.6). Strict.
    SignatureScope, lenient = false {
        SignedFields => "SignedFields",
        FullRequest => "FullRequest",
    }
}
