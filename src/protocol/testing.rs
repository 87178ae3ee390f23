//! Ready-made signed messages for tests and the reference facilitator. Public (not `cfg(test)`) because integration
//! tests, the reference facilitator and the state machine's tests all use it.
//!
//! The keys here are the public test keys of `tests/data/` (the protocol's test vectors): never use them for anything real. Nothing in the client's
//! own path may depend on this module.

use super::enums::ExecutorClass;
use super::job::{JobRequestFields, StringMap};
use super::keys::Hotkey;

/// The seed of the SDK user who signed every job request in the vectors (`11` × 32).
pub const TEST_SIGNER_SEED: [u8; 32] = [0x11; 32];

/// The SS58 address of [`TEST_SIGNER_SEED`].
pub const TEST_SIGNER_SS58: &str = "5DtDLm5rQHShDqojQpsvcN8tRXHVFaecfDoRet1SU6BFD9Fi";

/// The seed of the vectors' validator hotkey (`00 01 02 .. 1f`).
pub const TEST_VALIDATOR_SEED: [u8; 32] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    26, 27, 28, 29, 30, 31,
];

/// The timestamp the helpers sign with (2023-11-14T22:13:20Z). Nothing checks timestamps for freshness.
pub const TEST_TIMESTAMP_NS: u64 = 1_700_000_000_000_000_000;

/// The vectors' SDK signer as a hotkey.
pub fn test_signer() -> Hotkey {
    Hotkey::from_seed(&TEST_SIGNER_SEED)
}

/// The fields of vector `minimal` with the given UUID, unsigned: no volumes or uploads, empty args and env.
pub fn minimal_job(uuid: &str) -> JobRequestFields {
    JobRequestFields {
        signature: None,
        uuid: uuid.to_owned(),
        job_namespace: None,
        executor_class: ExecutorClass::AlwaysOnGpu24gb,
        docker_image: "backenddevelopersltd/compute-horde-job-echo:v0-latest".to_owned(),
        args: Vec::new(),
        env: StringMap::new(),
        use_gpu: true,
        volume: None,
        output_upload: None,
        artifacts_dir: None,
        on_trusted_miner: false,
        download_time_limit: 300,
        execution_time_limit: 600,
        upload_time_limit: 120,
        streaming_start_time_limit: 60,
        streaming_details: None,
    }
}

/// The wire text of a minimal job (like vector `minimal`) with the given UUID, signed by `signer`, in the
/// facilitator's format.
///
/// ```
/// use facilitator_client::protocol::{decode_server_frame, testing, ServerMessage, TrustedSigners};
/// let signer = testing::test_signer();
/// let text = testing::signed_job_text(&signer, "00000000-0000-4000-8000-000000000001");
/// let Ok(ServerMessage::JobRequest(job)) = decode_server_frame(&text, 1 << 20) else { panic!("{text}") };
/// assert_eq!(job.uuid(), "00000000-0000-4000-8000-000000000001");
/// assert_eq!(TrustedSigners::new([0; 32], [testing::TEST_SIGNER_SS58]).unwrap().check(&job), Ok(()));
/// ```
pub fn signed_job_text(signer: &Hotkey, uuid: &str) -> String {
    let mut job = minimal_job(uuid);
    job.sign(signer, TEST_TIMESTAMP_NS);
    job.to_wire_text()
}

/// The wire text of a minimal job with the given UUID and `"signature": null`.
pub fn unsigned_job_text(uuid: &str) -> String {
    minimal_job(uuid).to_wire_text()
}

/// Python's `json.dumps` as the facilitator and the SDK write it, for tests that compare bytes with them.
#[cfg(feature = "test-support")]
pub mod pyjson {
    pub use crate::protocol::pyjson::{dumps, dumps_sorted, float_repr, string_literal};
}
