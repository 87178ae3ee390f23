//! What the machine itself puts on the wire, byte for byte against the real validator's texts in the vectors:
//! the rejections it sends for unsigned and untrusted job requests, and the `received` it sends on acceptance
//! (with the metadata object always present, our deliberate deviation from the reference's `null`).

use std::time::Instant;

use facilitator_client::machine::{Action, Config, Input, Machine};
use facilitator_client::protocol::keys::Hotkey;
use facilitator_client::protocol::{
    ClientMessage, Response, ServerMessage, TrustedSigners, decode_server_frame,
};
use serde_json::Value;

fn vectors(file: &str) -> Value {
    let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn case<'a>(doc: &'a Value, list: &str, name: &str) -> &'a Value {
    doc[list]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no vector {name}"))
}

/// An authenticated machine trusting the vectors' SDK signer; returns the texts it sends for one job request.
fn texts_sent_for(job_wire_json: &str) -> Vec<String> {
    let jobs = vectors("job_requests.json");
    let own = Hotkey::from_seed(&[7u8; 32]);
    let signers =
        TrustedSigners::new(own.public_key(), [jobs["signer_ss58"].as_str().unwrap()]).unwrap();
    let now = Instant::now();
    let mut machine = Machine::new(Config::default(), own.auth_request(), signers, now);
    let _ = machine.step(Input::Tick, now);
    let _ = machine.step(Input::SocketOpened, now);
    let _ = machine.step(
        Input::Frame(ServerMessage::Response(Response::success())),
        now,
    );
    let frame = decode_server_frame(job_wire_json, 1 << 20).expect("the vector decodes");
    machine
        .step(Input::Frame(frame), now)
        .into_iter()
        .filter_map(|a| match a {
            Action::Send(message @ ClientMessage::StatusUpdate(_)) => Some(message.to_json()),
            _ => None,
        })
        .collect()
}

#[test]
fn an_untrusted_signer_gets_the_reference_validators_rejection_byte_for_byte() {
    let jobs = vectors("job_requests.json");
    let statuses = vectors("status_updates.json");
    let job = case(&jobs, "cases", "signed_by_other_key")["wire_json"]
        .as_str()
        .unwrap();
    let expected = case(&statuses, "valid", "validator_reject_not_whitelisted")["json"]
        .as_str()
        .unwrap();
    // The vector's status uses the job UUID of `minimal`; the machine answers with the request's own UUID.
    let expected = expected.replace(
        "7d8a9f4e-1b2c-4d3e-8f40-5a6b7c8d9e01",
        "7d8a9f4e-1b2c-4d3e-8f40-5a6b7c8d9e09",
    );
    assert_eq!(texts_sent_for(job), [expected]);
}

#[test]
fn an_unsigned_job_gets_signature_is_empty_byte_for_byte() {
    let jobs = vectors("job_requests.json");
    let statuses = vectors("status_updates.json");
    let job = case(&jobs, "cases", "signature_null")["wire_json"]
        .as_str()
        .unwrap();
    let expected = case(&statuses, "valid", "validator_reject_signature_empty")["json"]
        .as_str()
        .unwrap();
    assert_eq!(texts_sent_for(job), [expected.to_owned()]);
}

#[test]
fn an_accepted_job_gets_received_with_every_metadata_key_present() {
    let jobs = vectors("job_requests.json");
    let job = case(&jobs, "cases", "minimal")["wire_json"]
        .as_str()
        .unwrap();
    assert_eq!(
        texts_sent_for(job),
        [concat!(
            r#"{"message_type":"V0JobStatusUpdate","uuid":"7d8a9f4e-1b2c-4d3e-8f40-5a6b7c8d9e01","status":"received","#,
            r#""metadata":{"miner_response":null,"job_rejection_details":null,"job_failure_details":null,"#,
            r#""horde_failure_details":null,"streaming_details":null}}"#
        )]
    );
}
