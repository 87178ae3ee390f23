//! Random event sequences through the simulated world, every machine invariant checked after every step.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = facilitator_client::sim::fuzz_transitions(data) {
        panic!("invariant broken: {broken}");
    }
});
