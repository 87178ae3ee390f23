//! Replays every committed seed of the `decode` fuzz target through the same body the fuzzer runs, so the fuzz body
//! cannot rot and every seed stays a passing regression test.

use std::path::Path;

#[test]
fn every_committed_decode_seed_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/decode");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/seeds/decode exists") {
        let path = entry.expect("readable entry").path();
        let data = std::fs::read(&path).expect("readable seed");
        let outcome =
            std::panic::catch_unwind(|| facilitator_client::protocol::fuzzing::decode_frame(&data));
        assert!(
            outcome.is_ok(),
            "seed {} breaks an invariant",
            path.display()
        );
        count += 1;
    }
    assert!(
        count >= 100,
        "expected the vector seeds in {}, found {count}",
        dir.display()
    );
}
