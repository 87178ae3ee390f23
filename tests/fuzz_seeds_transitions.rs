//! Replays every committed seed of the `transitions` fuzz target through the same body the fuzzer runs, so the
//! fuzz body cannot rot and every seed stays a passing regression test.

use std::path::Path;

#[test]
fn every_committed_transitions_seed_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/transitions");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/seeds/transitions exists") {
        let path = entry.expect("readable entry").path();
        let data = std::fs::read(&path).expect("readable seed");
        if let Err(broken) = facilitator_client::sim::fuzz_transitions(&data) {
            panic!("seed {} breaks an invariant: {broken}", path.display());
        }
        count += 1;
    }
    assert!(
        count >= 5,
        "expected committed seeds in {}, found {count}",
        dir.display()
    );
}
