//! Arbitrary bytes through every decoder of untrusted input (server frames, client messages, SS58), with the
//! round-trip invariants checked for whatever decodes. The body lives in the library
//! (`facilitator_client::protocol::fuzzing::decode_frame`) so `tests/fuzz_seeds_decode.rs` replays the seeds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    facilitator_client::protocol::fuzzing::decode_frame(data);
});
