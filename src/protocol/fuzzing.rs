//! The body of the `decode` fuzz target (`fuzz/fuzz_targets/decode.rs`), compiled always so that
//! `tests/fuzz_seeds_decode.rs` replays the committed seeds through it on every `cargo test` and it cannot rot.
//!
//! It feeds arbitrary bytes to every decoder of untrusted input and checks the invariants that must hold for
//! whatever they accept. It must never be called by the client itself (it panics on a broken invariant, by design).

use super::codec::{self, DEFAULT_FRAME_LIMIT, DecodeError, ServerMessage, decode_server_frame};
use super::keys;
use super::messages::ClientMessage;
use super::testing;
use super::trust::TrustedSigners;
use super::typed;

/// Decodes `data` as a server frame (invalid UTF-8 is decoded lossily, as if a peer had sent that text) and, for
/// what decodes, checks re-encoding round trips; also runs the client-message decoder (used by the reference
/// facilitator) and the SS58 decoder over the same text. Panics if an invariant is broken.
pub fn decode_frame(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();

    if !text.is_empty() {
        let limit = text.len() - 1;
        assert_eq!(
            decode_server_frame(text, limit),
            Err(DecodeError::TooLarge {
                len: text.len(),
                limit
            }),
            "the size limit is checked before parsing"
        );
    }

    let _ = decoders_agree(text);

    match decode_server_frame(text, DEFAULT_FRAME_LIMIT) {
        Ok(ServerMessage::Response(response)) => {
            let again = decode_server_frame(&response.to_json(), usize::MAX);
            assert_eq!(
                again,
                Ok(ServerMessage::Response(response)),
                "Response re-encodes to itself"
            );
        }
        Ok(ServerMessage::JobRequest(job)) => {
            assert_eq!(job.text(), text, "a job request keeps its exact text");
            let wire = job.fields().to_wire_text();
            assert!(wire.is_ascii(), "the facilitator's format is pure ASCII");
            match decode_server_frame(&wire, usize::MAX) {
                Ok(ServerMessage::JobRequest(again)) => {
                    assert_eq!(
                        again.fields(),
                        job.fields(),
                        "job request re-encodes to itself"
                    );
                    assert_eq!(
                        again.fields().signed_payload(),
                        job.fields().signed_payload()
                    );
                }
                other => panic!("re-encoded job request does not decode: {other:?}\n{wire}"),
            }
            assert!(
                job.fields().signed_payload().is_ascii(),
                "the signed payload is pure ASCII"
            );
            let verified = job.verify_signature();
            if let Ok(signers) = TrustedSigners::new(
                testing::test_signer().public_key(),
                [testing::TEST_SIGNER_SS58],
            ) {
                let checked = signers.check(&job);
                if checked.is_ok() {
                    assert!(
                        verified.is_ok(),
                        "a trusted job also verifies cryptographically"
                    );
                }
            }
        }
        Ok(ServerMessage::JobCheated(report)) => {
            let wire = report.to_wire_text();
            let again = decode_server_frame(&wire, usize::MAX);
            assert_eq!(
                again,
                Ok(ServerMessage::JobCheated(report.clone())),
                "cheat report re-encodes to itself"
            );
            assert!(report.signed_payload().is_ascii());
            let _ = report.verify();
        }
        Err(error) => {
            let _ = error.to_string();
            assert_eq!(
                error.job_uuid().is_some(),
                matches!(error, DecodeError::InvalidJobRequest { .. })
            );
        }
    }

    if let Ok(message) = ClientMessage::from_json(text) {
        let encoded = message.to_json();
        let again = ClientMessage::from_json(&encoded);
        assert!(
            matches!(&again, Ok(m) if *m == message),
            "client message re-encodes to itself: {encoded}"
        );
        if let ClientMessage::Auth(request) = &message
            && let Ok(key) = keys::verify_auth_request(request)
        {
            assert_eq!(
                keys::auth_lookup_address(request),
                Ok(keys::ss58_encode(&key))
            );
        }
    }

    if let Ok((format, key)) = keys::ss58_decode_with_format(text)
        && let Ok(format) = u8::try_from(format)
        && let Ok(encoded) = keys::ss58_encode_with_format(&key, format)
    {
        assert_eq!(
            encoded, text,
            "a one-byte-prefix SS58 address re-encodes to itself"
        );
    }
}

/// Checks that the typed decoder agrees with the validating decoder on `text` (what the frame is, or the exact
/// error), and returns whether the typed decoder decoded it (rather than leaving it to the validating decoder).
/// Panics if they disagree.
pub fn decoders_agree(text: &str) -> bool {
    if text.len() <= DEFAULT_FRAME_LIMIT {
        assert_eq!(
            decode_server_frame(text, DEFAULT_FRAME_LIMIT),
            codec::decode_validating(text),
            "the typed decoder agrees with the validating decoder on {text}"
        );
    }
    typed::decode(text).is_some()
}
