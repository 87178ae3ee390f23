//! Decoding of server frames: which message a frame is, and the typed error that says what is wrong when it is
//! none (docs/PROTOCOL.md 4.1-4.4).

use facilitator_client::protocol::testing::{
    TEST_SIGNER_SS58, signed_job_text, test_signer, unsigned_job_text,
};
use facilitator_client::protocol::{
    DecodeError, JobSignatureError, ServerMessage, TrustedSigners, decode_server_frame,
};
use serde_json::{Map, Value, json};

const LIMIT: usize = 1 << 20;
const UUID: &str = "7d8a9f4e-1b2c-4d3e-8f40-5a6b7c8d9e01";

/// The minimal job as a mutable object, to break one thing at a time.
fn job_object() -> Map<String, Value> {
    serde_json::from_str(&unsigned_job_text(UUID)).expect("object")
}

fn decode_object(map: &Map<String, Value>) -> Result<ServerMessage, DecodeError> {
    decode_server_frame(&Value::Object(map.clone()).to_string(), LIMIT)
}

/// Decodes a job object expected to be invalid and returns the problem text.
fn problem_of(map: &Map<String, Value>) -> String {
    match decode_object(map) {
        Err(DecodeError::InvalidJobRequest { uuid, problem }) => {
            assert_eq!(uuid, UUID);
            problem
        }
        other => panic!("expected InvalidJobRequest, got {other:?}"),
    }
}

#[test]
fn the_size_limit_is_checked_before_parsing() {
    let garbage = "x".repeat(100);
    assert_eq!(
        decode_server_frame(&garbage, 99),
        Err(DecodeError::TooLarge {
            len: 100,
            limit: 99
        })
    );
    assert!(matches!(
        decode_server_frame(&garbage, 100),
        Err(DecodeError::NotJson(_))
    ));
}

#[test]
fn text_that_is_not_json_or_not_an_object_is_reported_as_such() {
    assert!(
        matches!(decode_server_frame("", LIMIT), Err(DecodeError::NotJson(m)) if m.contains("EOF"))
    );
    assert!(matches!(
        decode_server_frame("{\"status\":", LIMIT),
        Err(DecodeError::NotJson(_))
    ));
    assert_eq!(
        decode_server_frame("[]", LIMIT),
        Err(DecodeError::NotAnObject("an array"))
    );
    assert_eq!(
        decode_server_frame("\"hi\"", LIMIT),
        Err(DecodeError::NotAnObject("a string"))
    );
}

#[test]
fn an_unknown_message_type_is_named_in_the_error() {
    let err = decode_server_frame(r#"{"message_type":"V9Surprise","x":1}"#, LIMIT).unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnknownMessageType("\"V9Surprise\"".into())
    );
    assert!(err.to_string().contains("V9Surprise"), "{err}");
    assert_eq!(
        decode_server_frame(r#"{"message_type":5}"#, LIMIT),
        Err(DecodeError::UnknownMessageType("5".into()))
    );
}

#[test]
fn an_object_that_is_no_server_message_lists_its_keys() {
    let err = decode_server_frame(r#"{"hello":"world"}"#, LIMIT).unwrap_err();
    assert_eq!(err, DecodeError::Unrecognized("\"hello\"".into()));
    assert_eq!(
        decode_server_frame("{}", LIMIT),
        Err(DecodeError::Unrecognized("(none)".into()))
    );
}

#[test]
fn responses_are_strict_about_their_keys_and_status() {
    let ok = decode_server_frame(r#"{"status":"success"}"#, LIMIT);
    assert!(matches!(ok, Ok(ServerMessage::Response(r)) if r.is_success() && r.errors.is_empty()));
    let extra = decode_server_frame(r#"{"status":"success","errors":[],"x":1}"#, LIMIT);
    assert!(matches!(extra, Err(DecodeError::InvalidResponse(m)) if m.contains('x')));
    let status = decode_server_frame(r#"{"status":"maybe","errors":[]}"#, LIMIT);
    assert!(matches!(status, Err(DecodeError::InvalidResponse(m)) if m.contains("maybe")));
    let error_without_type =
        decode_server_frame(r#"{"status":"error","errors":[{"msg":"m"}]}"#, LIMIT);
    assert!(
        matches!(error_without_type, Err(DecodeError::InvalidResponse(m)) if m.contains("type"))
    );
}

#[test]
fn response_errors_keep_unknown_keys_and_default_help() {
    let frame = r#"{"status":"error","errors":[{"msg":"m","type":"t","loc":["a"],"url":"u"}]}"#;
    let Ok(ServerMessage::Response(response)) = decode_server_frame(frame, LIMIT) else {
        panic!()
    };
    assert_eq!(response.errors[0].help, "");
    assert_eq!(
        response.errors[0].extra.keys().collect::<Vec<_>>(),
        ["loc", "url"]
    );
    assert_eq!(
        response.to_json(),
        r#"{"status":"error","errors":[{"msg":"m","type":"t","help":"","loc":["a"],"url":"u"}]}"#
    );
}

#[test]
fn a_job_with_an_unknown_executor_class_is_answerable_and_says_which_field() {
    let mut job = job_object();
    job.insert("executor_class".into(), json!("no_such.class"));
    let err = decode_object(&job).unwrap_err();
    assert_eq!(err.job_uuid(), Some(UUID));
    let problem = problem_of(&job);
    assert!(
        problem.starts_with("executor_class: unknown value \"no_such.class\""),
        "{problem}"
    );
    assert!(problem.contains("always_on.gpu-24gb"), "{problem}");
}

#[test]
fn a_job_missing_a_required_field_names_it() {
    for key in [
        "docker_image",
        "args",
        "env",
        "executor_class",
        "download_time_limit",
        "streaming_start_time_limit",
    ] {
        let mut job = job_object();
        job.remove(key);
        assert_eq!(problem_of(&job), format!("{key}: missing"));
    }
}

#[test]
fn a_job_with_a_wrong_type_names_the_field_and_both_types() {
    let mut job = job_object();
    job.insert("args".into(), json!(["ok", 5]));
    assert_eq!(
        problem_of(&job),
        "args[1]: expected a string, found an integer"
    );
    let mut job = job_object();
    job.insert("env".into(), json!({"A": null}));
    assert_eq!(problem_of(&job), "env.A: expected a string, found null");
    let mut job = job_object();
    job.insert("execution_time_limit".into(), json!(1.5));
    assert_eq!(
        problem_of(&job),
        "execution_time_limit: expected an integer, found a fractional number"
    );
    let mut job = job_object();
    job.insert("use_gpu".into(), Value::Null);
    assert_eq!(
        problem_of(&job),
        "use_gpu: expected true or false, found null"
    );
}

#[test]
fn a_job_with_an_unknown_top_level_key_is_refused() {
    let mut job = job_object();
    job.insert("surprise".into(), json!(1));
    assert!(problem_of(&job).starts_with("unknown key \"surprise\""));
}

#[test]
fn a_job_with_the_wrong_type_tag_is_refused() {
    let mut job = job_object();
    job.insert("type".into(), json!("job.old"));
    assert_eq!(
        problem_of(&job),
        "type: expected \"job.new\", found \"job.old\""
    );
}

#[test]
fn a_job_without_message_type_but_typed_job_new_is_answered_naming_the_key() {
    let mut job = job_object();
    job.remove("message_type");
    assert_eq!(problem_of(&job), "message_type: missing");
}

#[test]
fn a_job_without_a_readable_uuid_cannot_be_answered() {
    let mut job = job_object();
    job.insert("uuid".into(), json!(17));
    let err = decode_object(&job).unwrap_err();
    assert_eq!(
        err,
        DecodeError::InvalidJobRequestWithoutUuid(
            "uuid: expected a string, found an integer".into()
        )
    );
    assert_eq!(err.job_uuid(), None);
}

#[test]
fn single_file_upload_paths_that_escape_or_are_malformed_are_refused() {
    let bad = [
        "",
        "/abs",
        "../up",
        "a/../b",
        "a/./b",
        "a//b",
        "trailing/",
        "back\\slash",
        "nul\0",
        &"x".repeat(256),
    ];
    for path in bad {
        let mut job = job_object();
        job.insert(
            "output_upload".into(),
            json!({"output_upload_type": "multi_upload", "uploads": [
                {"output_upload_type": "single_file_put", "url": "https://u", "relative_path": "ok.txt"},
                {"output_upload_type": "single_file_put", "url": "https://u", "relative_path": path},
            ], "system_output": null}),
        );
        let problem = problem_of(&job);
        assert!(
            problem.starts_with("output_upload.uploads[1].relative_path: "),
            "{path:?}: {problem}"
        );
    }
    let mut job = job_object();
    job.insert(
        "output_upload".into(),
        json!({"output_upload_type": "single_file_post", "url": "u", "relative_path": "a/b/c.bin"}),
    );
    assert!(decode_object(&job).is_ok());
}

#[test]
fn a_multi_volume_inside_a_multi_volume_is_refused() {
    let mut job = job_object();
    job.insert(
        "volume".into(),
        json!({"volume_type": "multi_volume", "volumes": [{"volume_type": "multi_volume", "volumes": []}]}),
    );
    assert_eq!(
        problem_of(&job),
        "volume.volumes[0].volume_type: a multi_volume cannot contain another multi_volume"
    );
}

#[test]
fn unknown_volume_and_upload_types_are_refused_with_the_allowed_ones() {
    let mut job = job_object();
    job.insert("volume".into(), json!({"volume_type": "ftp", "url": "x"}));
    assert!(
        problem_of(&job).starts_with("volume.volume_type: unknown value \"ftp\" (expected inline")
    );
    let mut job = job_object();
    job.insert(
        "output_upload".into(),
        json!({"output_upload_type": "multi_upload", "uploads": [
        {"output_upload_type": "zip_and_http_put", "url": "u"}]}),
    );
    assert!(problem_of(&job).starts_with(
        "output_upload.uploads[0].output_upload_type: unknown value \"zip_and_http_put\""
    ));
}

#[test]
fn the_signature_object_rejects_unknown_keys_and_scopes() {
    let signed: Map<String, Value> =
        serde_json::from_str(&signed_job_text(&test_signer(), UUID)).expect("object");
    let mut job = signed.clone();
    job["signature"]["extra"] = json!(1);
    assert!(problem_of(&job).starts_with("signature: unknown key \"extra\""));
    let mut job = signed.clone();
    job["signature"]["signature_scope"] = json!("Everything");
    assert!(
        problem_of(&job).starts_with("signature.signature_scope: unknown value \"Everything\"")
    );
    let mut job = signed;
    job["signature"]
        .as_object_mut()
        .expect("object")
        .remove("signature");
    assert_eq!(problem_of(&job), "signature.signature: missing");
}

#[test]
fn a_negative_timestamp_parses_but_never_verifies() {
    let mut job: Map<String, Value> =
        serde_json::from_str(&signed_job_text(&test_signer(), UUID)).expect("object");
    job["signature"]["timestamp_ns"] = json!(-1);
    let Ok(ServerMessage::JobRequest(job)) = decode_object(&job) else {
        panic!("parses")
    };
    let signers = TrustedSigners::new([0; 32], [TEST_SIGNER_SS58]).expect("address");
    assert_eq!(signers.check(&job), Err(JobSignatureError::Invalid));
}

#[test]
fn env_keeps_its_received_order_and_a_duplicate_key_keeps_the_first_position_and_last_value() {
    let text =
        unsigned_job_text(UUID).replace(r#""env": {}"#, r#""env": {"Z": "1", "A": "2", "Z": "3"}"#);
    let Ok(ServerMessage::JobRequest(job)) = decode_server_frame(&text, LIMIT) else {
        panic!("{text}")
    };
    assert_eq!(
        job.env().iter().collect::<Vec<_>>(),
        [("Z", "3"), ("A", "2")]
    );
    assert!(
        job.fields()
            .signed_fields_json()
            .contains(r#""env":{"Z":"3","A":"2"}"#)
    );
    assert_eq!(
        job.text(),
        text,
        "the exact text is kept, duplicates and all"
    );
}

#[test]
fn cheat_reports_are_told_apart_from_jobs_and_responses() {
    let report =
        r#"{"type": "job.cheated", "job_uuid": "a", "trusted_job_uuid": "b", "details": null}"#;
    assert!(
        matches!(decode_server_frame(report, LIMIT), Ok(ServerMessage::JobCheated(r)) if r.details.is_null())
    );
    let unknown_key = r#"{"message_type": "V0JobCheated", "job_uuid": "a", "trusted_job_uuid": "b", "details": 1, "x": 2}"#;
    assert!(
        matches!(decode_server_frame(unknown_key, LIMIT), Err(DecodeError::InvalidJobCheated(m)) if m.contains("\"x\""))
    );
}

#[test]
fn a_huge_unknown_value_is_quoted_only_briefly() {
    let mut job = job_object();
    job.insert("executor_class".into(), json!("x".repeat(10_000)));
    assert!(problem_of(&job).len() < 400);
}
