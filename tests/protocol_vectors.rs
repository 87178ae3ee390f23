//! The protocol module against every test vector made with the real ComputeHorde library (`tests/data/*.json`,
//! described in docs/PROTOCOL.md section 14).

use std::path::PathBuf;

use facilitator_client::protocol::keys::{self, Hotkey};
use facilitator_client::protocol::signature_digest;
use facilitator_client::protocol::{
    ClientMessage, DecodeError, ExecutorClass, HordeFailureReason, JobCheated, JobFailureReason,
    JobParticipantType, JobRejectionReason, JobRequestFields, JobSignatureError, JobStage,
    JobStatus, JobStatusUpdate, Response, ServerMessage, SignatureScope, TrustedSigners,
    decode_server_frame, error_type,
};
use serde_json::{Map, Value, json};

const LIMIT: usize = 1 << 20;

fn vectors(name: &str) -> Value {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests",
        "data",
        &format!("{name}.json"),
    ]
    .iter()
    .collect();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn list<'a>(value: &'a Value, key: &str) -> &'a Vec<Value> {
    value[key]
        .as_array()
        .unwrap_or_else(|| panic!("vector key {key} is not a list"))
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("vector key {key} is not a string in {value}"))
}

fn key32(hex_text: &str) -> [u8; 32] {
    hex::decode(hex_text)
        .expect("hex")
        .try_into()
        .expect("32 bytes")
}

fn job_of(frame: &str) -> std::sync::Arc<facilitator_client::protocol::JobRequest> {
    match decode_server_frame(frame, LIMIT) {
        Ok(ServerMessage::JobRequest(job)) => job,
        other => panic!("not a job request: {other:?}\n{frame}"),
    }
}

// ---------------------------------------------------------------------------------------------------------- keys

#[test]
fn every_test_seed_derives_the_vector_public_key_address_and_expanded_secret() {
    let data = vectors("keys");
    for key in list(&data, "keys") {
        let name = text(key, "name");
        let seed: [u8; 32] = hex::decode(text(key, "seed_hex"))
            .expect("hex")
            .try_into()
            .expect("32 bytes");
        let hotkey = Hotkey::from_seed(&seed);
        assert_eq!(
            hex::encode(hotkey.public_key()),
            text(key, "public_key_hex"),
            "{name}"
        );
        assert_eq!(hotkey.ss58(), text(key, "ss58_address"), "{name}");
        assert_eq!(hotkey.ss58(), text(&key["ss58_steps"], "address"), "{name}");

        let expanded: [u8; 64] = hex::decode(text(key, "expanded_secret_key_hex"))
            .expect("hex")
            .try_into()
            .expect("64 bytes");
        let from_expanded =
            Hotkey::from_expanded_secret(&expanded).expect("canonical expanded secret");
        assert_eq!(
            from_expanded.public_key(),
            hotkey.public_key(),
            "{name}: privateKey gives the same key"
        );

        let from_hex =
            Hotkey::from_seed_hex(&format!("0x{}", text(key, "seed_hex"))).expect("seed hex");
        assert_eq!(from_hex.public_key(), hotkey.public_key(), "{name}");
    }
}

#[test]
fn ss58_encoding_follows_the_vector_steps_and_decodes_any_prefix() {
    let data = vectors("keys");
    for key in list(&data, "keys") {
        let public_key = key32(text(key, "public_key_hex"));
        let raw = hex::decode(text(&key["ss58_steps"], "raw_hex")).expect("hex");
        assert_eq!(
            bs58::decode(text(key, "ss58_address"))
                .into_vec()
                .expect("base58"),
            raw
        );
        assert_eq!(
            &raw[35 - 2..],
            hex::decode(text(&key["ss58_steps"], "checksum_hex"))
                .expect("hex")
                .as_slice()
        );
        assert_eq!(keys::ss58_decode(text(key, "ss58_address")), Ok(public_key));
        for (prefix, address) in key["ss58_other_prefixes"].as_object().expect("object") {
            let prefix: u8 = prefix.parse().expect("prefix");
            let address = address.as_str().expect("address");
            assert_eq!(
                keys::ss58_decode_with_format(address),
                Ok((u16::from(prefix), public_key))
            );
            assert_eq!(
                keys::ss58_encode_with_format(&public_key, prefix).as_deref(),
                Ok(address)
            );
        }
    }
}

#[test]
fn ss58_decoding_refuses_a_broken_checksum_or_garbage() {
    let good = "5HB7kpn92RS7uF9uWn8bXSvPVKFPg8kPUFDd5sbveGjX6Dbi";
    let broken = "5HB7kpn92RS7uF9uWn8bXSvPVKFPg8kPUFDd5sbveGjX6Dbj";
    assert!(keys::ss58_decode(good).is_ok());
    assert_eq!(keys::ss58_decode(broken), Err(keys::Ss58Error::BadChecksum));
    assert_eq!(keys::ss58_decode("0OIl"), Err(keys::Ss58Error::NotBase58));
    assert!(matches!(
        keys::ss58_decode("5HB7kpn92RS7uF9u"),
        Err(keys::Ss58Error::BadLength(_))
    ));
    assert_eq!(keys::ss58_decode(""), Err(keys::Ss58Error::BadLength(0)));
}

#[test]
fn real_auth_requests_verify_and_ours_have_the_same_shape() {
    let data = vectors("keys");
    for key in list(&data, "keys") {
        let wire = text(key, "auth_request_json");
        let Ok(ClientMessage::Auth(request)) = ClientMessage::from_json(wire) else {
            panic!("{wire}")
        };
        assert_eq!(
            keys::verify_auth_request(&request),
            Ok(key32(text(key, "public_key_hex")))
        );

        let seed: [u8; 32] = hex::decode(text(key, "seed_hex"))
            .expect("hex")
            .try_into()
            .expect("32 bytes");
        let ours = ClientMessage::Auth(Hotkey::from_seed(&seed).auth_request()).to_json();
        // Signatures are randomized: everything but the signature's hex digits is byte-identical.
        assert_eq!(ours.len(), wire.len());
        let split = wire.find("\"signature\":\"0x").expect("signature key") + 15;
        assert_eq!(ours[..split], wire[..split]);
        let Ok(ClientMessage::Auth(ours)) = ClientMessage::from_json(&ours) else {
            panic!("{ours}")
        };
        assert_eq!(
            keys::verify_auth_request(&ours),
            Ok(key32(text(key, "public_key_hex")))
        );
    }
}

/// What the facilitator does with an auth request on a fresh connection, simulated with this crate's checks.
fn simulated_auth_outcome(wire: &str, registered: &[&str]) -> String {
    let request = match ClientMessage::from_json(wire) {
        Ok(ClientMessage::Auth(request)) => request,
        Ok(other) => panic!("not an auth request: {other:?}"),
        Err(_) => return "parse error".into(),
    };
    let address = match keys::auth_lookup_address(&request) {
        Ok(address) => address,
        Err(_) => return "crash".into(),
    };
    if !registered.contains(&address.as_str()) {
        return error_type::VALIDATOR_NOT_FOUND.into();
    }
    match keys::verify_auth_request(&request) {
        Ok(_) => "success".into(),
        Err(e) if e.crashes_real_server() => "crash".into(),
        Err(_) => error_type::SIGNATURE_INVALID.into(),
    }
}

#[test]
fn every_auth_variant_gets_the_facilitators_outcome() {
    let data = vectors("keys");
    let registered: Vec<&str> = list(&data, "registered_active_validators")
        .iter()
        .map(|v| v.as_str().expect("address"))
        .collect();
    for variant in list(&data, "auth_variants") {
        let name = text(variant, "name");
        let outcome = &variant["server_outcome"];
        let expected = if outcome.get("server_exception").is_some() {
            "crash".to_owned()
        } else {
            let first = outcome["responses"][0].as_str().expect("one response");
            let response: Response = serde_json::from_str(first).expect("a Response");
            match response.first_error_type() {
                None => "success".to_owned(),
                Some(t) if t.starts_with("auth.") => t.to_owned(),
                Some(_) => "parse error".to_owned(),
            }
        };
        let actual = simulated_auth_outcome(text(variant, "json"), &registered);
        if name == "second_auth_on_authenticated_connection" {
            // Evaluated on an authenticated connection (already_authenticated); the request itself is valid.
            assert_eq!(actual, "success", "{name}");
        } else {
            assert_eq!(actual, expected, "{name}");
        }
    }
}

#[test]
fn the_bittensor_keyfile_example_loads_from_a_wallet_directory() {
    let data = vectors("keys");
    let example = &data["keyfile_example"];
    let dir = tempfile::tempdir().expect("tempdir");
    let hotkeys = dir.path().join("default").join("hotkeys");
    std::fs::create_dir_all(&hotkeys).expect("mkdir");
    std::fs::write(hotkeys.join("main"), text(example, "file_text")).expect("write");
    let hotkey = Hotkey::from_wallet(dir.path(), "default", "main").expect("loads");
    assert_eq!(hotkey.ss58(), text(example, "ss58_address"));
}

// -------------------------------------------------------------------------------------------------- job requests

#[test]
fn every_vector_job_request_decodes_and_keeps_its_exact_text() {
    let data = vectors("job_requests");
    for case in list(&data, "cases") {
        let wire = text(case, "wire_json");
        let job = job_of(wire);
        assert_eq!(job.text(), wire, "{}", text(case, "name"));
    }
}

#[test]
fn signed_fields_payload_and_digest_match_the_reference_for_every_job() {
    let data = vectors("job_requests");
    for case in list(&data, "cases") {
        let name = text(case, "name");
        let job = job_of(text(case, "wire_json"));
        assert_eq!(
            job.fields().signed_fields_json(),
            text(case, "signed_fields_json"),
            "{name}"
        );
        let payload = job.fields().signed_payload();
        assert_eq!(payload, text(case, "signed_payload_utf8"), "{name}");
        assert_eq!(
            hex::encode(payload.as_bytes()),
            text(case, "signed_payload_hex"),
            "{name}"
        );
        if let Some(timestamp) = case["timestamp_ns"].as_u64() {
            assert_eq!(
                hex::encode(timestamp.to_be_bytes()),
                text(case, "timestamp_be_hex"),
                "{name}"
            );
            let digest = signature_digest(timestamp, payload.as_bytes());
            assert_eq!(hex::encode(digest), text(case, "blake2b_512_hex"), "{name}");
        }
    }
}

#[test]
fn cryptographic_verification_agrees_with_the_reference_on_every_job() {
    let data = vectors("job_requests");
    let mut counts = [0usize; 2];
    for case in list(&data, "cases") {
        let name = text(case, "name");
        let expected = case["verify"].as_bool().expect("verify");
        let job = job_of(text(case, "wire_json"));
        let verdict = job.verify_signature();
        assert_eq!(verdict.is_ok(), expected, "{name}: {verdict:?}");
        if let Ok(key) = verdict {
            assert_eq!(
                hex::encode(key),
                text(case, "signer_public_key_hex"),
                "{name}"
            );
        }
        match text(case, "category") {
            "valid" | "still_valid" => assert!(expected, "{name}"),
            "tampered" | "unsigned" => assert!(!expected, "{name}"),
            other => panic!("unknown category {other}"),
        }
        counts[usize::from(expected)] += 1;
    }
    assert_eq!(counts, [17, 23], "17 jobs must fail and 23 must verify");
}

#[test]
fn trust_policy_checks_presence_then_whitelist_then_signature_like_the_reference() {
    let data = vectors("job_requests");
    let own = Hotkey::from_seed(&[0u8; 32]);
    let signer = text(&data, "signer_ss58");
    let other = text(&data, "other_ss58");
    let only_signer = TrustedSigners::new(own.public_key(), [signer]).expect("valid addresses");
    let both = TrustedSigners::new(own.public_key(), [signer, other]).expect("valid addresses");
    for case in list(&data, "cases") {
        let name = text(case, "name");
        let job = job_of(text(case, "wire_json"));
        let signatory = case["signer_ss58"].as_str().unwrap_or_default().to_owned();
        let expected_with_both = match (text(case, "category"), name) {
            (_, "signature_null") => Err(JobSignatureError::Missing),
            // The reference compares signatory texts: the same key with SS58 prefix 0 is not whitelisted.
            (_, "signatory_ss58_prefix_0") => {
                Err(JobSignatureError::UntrustedSignatory(signatory.clone()))
            }
            (_, "signatory_bad_checksum") => {
                Err(JobSignatureError::UntrustedSignatory(signatory.clone()))
            }
            ("valid" | "still_valid", _) => Ok(()),
            ("tampered", _) => Err(JobSignatureError::Invalid),
            (category, _) => panic!("{name}: unexpected category {category}"),
        };
        assert_eq!(both.check(&job), expected_with_both, "{name}");
        let expected_with_signer = match (&expected_with_both, signatory == other) {
            (_, true) => Err(JobSignatureError::UntrustedSignatory(other.to_owned())),
            (expected, false) => expected.clone(),
        };
        assert_eq!(only_signer.check(&job), expected_with_signer, "{name}");
    }
}

#[test]
fn the_clients_own_hotkey_is_always_trusted() {
    let own = Hotkey::from_seed(&[5u8; 32]);
    let signers =
        TrustedSigners::new(own.public_key(), Vec::<String>::new()).expect("no addresses");
    let job = job_of(&facilitator_client::protocol::testing::signed_job_text(
        &own,
        "00000000-0000-4000-8000-00000000000a",
    ));
    assert_eq!(signers.check(&job), Ok(()));
    let stranger = Hotkey::from_seed(&[6u8; 32]);
    let job = job_of(&facilitator_client::protocol::testing::signed_job_text(
        &stranger,
        "00000000-0000-4000-8000-00000000000b",
    ));
    assert_eq!(
        signers.check(&job),
        Err(JobSignatureError::UntrustedSignatory(stranger.ss58()))
    );
}

#[test]
fn a_misspelled_trusted_signer_is_refused_with_the_address_in_the_message() {
    let err = TrustedSigners::new(
        [0; 32],
        ["5DtDLm5rQHShDqojQpsvcN8tRXHVFaecfDoRet1SU6BFD9Fj"],
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("5DtDLm5rQHShDqojQpsvcN8tRXHVFaecfDoRet1SU6BFD9Fj"),
        "{err}"
    );
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[test]
fn rejection_messages_are_the_reference_validators_texts() {
    let data = vectors("status_updates");
    let uuid = text(&data, "job_uuid");
    let by_name = |name: &str| {
        list(&data, "valid")
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| text(c, "json").to_owned())
            .expect(name)
    };
    let cases = [
        (
            "validator_reject_signature_empty",
            JobSignatureError::Missing,
        ),
        ("validator_reject_bad_signature", JobSignatureError::Invalid),
        (
            "validator_reject_not_whitelisted",
            JobSignatureError::UntrustedSignatory(
                "5DcjVUSFQsUSFDCMFNSFYRwBYgya7BEcoA47F5pkphi8NXnu".into(),
            ),
        ),
    ];
    for (name, error) in cases {
        let update = JobStatusUpdate::rejected(
            uuid,
            JobRejectionReason::InvalidSignature,
            error.to_string(),
        );
        assert_eq!(
            ClientMessage::StatusUpdate(update).to_json(),
            by_name(name),
            "{name}"
        );
    }
}

/// Cases whose wire text is not the facilitator's own dump of the model (keys removed or added by hand).
const NOT_A_MODEL_DUMP: [&str; 3] = [
    "use_gpu_removed",
    "type_key_removed",
    "volume_unknown_key_added",
];

#[test]
fn job_requests_reencode_byte_for_byte_in_the_facilitators_format() {
    let data = vectors("job_requests");
    let mut checked = 0;
    for case in list(&data, "cases") {
        let name = text(case, "name");
        if NOT_A_MODEL_DUMP.contains(&name) {
            continue;
        }
        let wire = text(case, "wire_json");
        assert_eq!(job_of(wire).fields().to_wire_text(), wire, "{name}");
        checked += 1;
    }
    assert_eq!(checked, 37);
}

#[test]
fn signing_a_vector_job_again_gives_the_same_payload_and_a_verifying_signature() {
    let data = vectors("job_requests");
    let signer = facilitator_client::protocol::testing::test_signer();
    assert_eq!(signer.ss58(), text(&data, "signer_ss58"));
    let trusted = TrustedSigners::new([0; 32], [signer.ss58()]).expect("valid address");
    for case in list(&data, "cases")
        .iter()
        .filter(|c| c["category"] == "valid")
    {
        let name = text(case, "name");
        let wire = text(case, "wire_json");
        let mut fields: Map<String, Value> = serde_json::from_str(wire).expect("object");
        let original_signature = fields.remove("signature").expect("signature key");
        let resigned = facilitator_client::protocol::sign_job_request(
            fields,
            &signer,
            1_795_691_111_283_902_121,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let job = job_of(&resigned);
        assert_eq!(trusted.check(&job), Ok(()), "{name}");
        assert_eq!(
            job.fields().signed_fields_json(),
            text(case, "signed_fields_json"),
            "{name}"
        );
        // With the original signature object put back, the text is the vector's byte for byte.
        let mut restored: Map<String, Value> = serde_json::from_str(&resigned).expect("object");
        restored.insert("signature".into(), original_signature);
        assert_eq!(
            facilitator_client::protocol::testing::pyjson::dumps(&Value::Object(restored)),
            wire,
            "{name}"
        );
    }
}

#[test]
fn typed_fields_of_the_everything_vector_are_read_correctly() {
    use facilitator_client::protocol::{OutputUpload, SingleFileUpload, Volume, VolumeSource};
    let data = vectors("job_requests");
    let case = list(&data, "cases")
        .iter()
        .find(|c| c["name"] == "everything")
        .expect("case");
    let job = job_of(text(case, "wire_json"));
    assert_eq!(job.uuid(), "7d8a9f4e-1b2c-4d3e-8f40-5a6b7c8d9e08");
    assert_eq!(job.job_namespace(), Some("SN64.1.0"));
    assert_eq!(job.executor_class(), ExecutorClass::AlwaysOnCpu8c16gb);
    assert_eq!(job.args(), ["python", "-c", "print('hi')"]);
    assert_eq!(
        job.env().iter().collect::<Vec<_>>(),
        [("HF_HOME", "/volume/hf"), ("PYTHONUNBUFFERED", "1")]
    );
    assert_eq!(job.artifacts_dir(), Some("/artifacts"));
    assert!(job.on_trusted_miner());
    assert_eq!(
        [
            job.download_time_limit(),
            job.execution_time_limit(),
            job.upload_time_limit(),
            job.streaming_start_time_limit()
        ],
        [1, 2, 3, 4]
    );
    assert!(
        job.streaming_details()
            .is_some_and(|s| s.public_key.starts_with("-----BEGIN") && s.executor_ip.is_none())
    );
    let Some(Volume::Multi(volumes)) = job.volume() else {
        panic!("multi volume")
    };
    assert!(
        matches!(&volumes[2], VolumeSource::SingleFile { relative_path, .. } if relative_path == "models/model.bin")
    );
    let Some(OutputUpload::Multi {
        uploads,
        system_output: None,
    }) = job.output_upload()
    else {
        panic!("multi upload")
    };
    assert!(
        matches!(&uploads[1], SingleFileUpload::Put { signed_headers: Some(h), .. } if h.get("x-amz-acl") == Some("private"))
    );
    let signature = job.signature().expect("signed");
    assert_eq!(signature.signature_scope, SignatureScope::SignedFields);
    assert_eq!(signature.signature_type, "bittensor");
}

// ----------------------------------------------------------------------------------------------- status updates

/// Our deliberate deviation from the reference validator (ARCHITECTURE): `metadata` is always written as an object
/// with every key, never as `null`, because the real facilitator crashes on `completed`/`streaming_ready` with null
/// metadata. So a vector whose `metadata` is null re-encodes with the all-null object instead.
fn normalize_null_metadata(mut value: Value) -> Value {
    if value.get("metadata").is_none_or(Value::is_null) {
        value["metadata"] = json!({
            "miner_response": null, "job_rejection_details": null, "job_failure_details": null,
            "horde_failure_details": null, "streaming_details": null,
        });
    }
    value
}

#[test]
fn every_reference_status_update_round_trips() {
    let data = vectors("status_updates");
    let mut byte_exact = 0;
    for case in list(&data, "valid")
        .iter()
        .chain(list(&data, "server_state_cases"))
    {
        let name = text(case, "name");
        let wire = text(case, "json");
        let message = ClientMessage::from_json(wire).unwrap_or_else(|e| panic!("{name}: {e}"));
        let encoded = message.to_json();
        let original: Value = serde_json::from_str(wire).expect("json");
        if original["metadata"].is_null() {
            let encoded: Value = serde_json::from_str(&encoded).expect("json");
            assert_eq!(encoded, normalize_null_metadata(original), "{name}");
        } else {
            assert_eq!(encoded, wire, "{name}: byte for byte");
            byte_exact += 1;
        }
    }
    assert_eq!(byte_exact, 52);
}

#[test]
fn status_updates_the_server_refuses_do_not_decode() {
    let data = vectors("status_updates");
    for case in list(&data, "invalid") {
        let name = text(case, "name");
        assert!(
            ClientMessage::from_json(text(case, "json")).is_err(),
            "{name} must be refused"
        );
    }
}

#[test]
fn lenient_values_decode_as_the_server_stores_them() {
    let data = vectors("status_updates");
    for case in list(&data, "accepted_with_coercion") {
        let name = text(case, "name");
        let message =
            ClientMessage::from_json(text(case, "json")).unwrap_or_else(|e| panic!("{name}: {e}"));
        let encoded: Value = serde_json::from_str(&message.to_json()).expect("json");
        let expected: Value = serde_json::from_str(text(case, "parsed_as")).expect("json");
        assert_eq!(encoded, normalize_null_metadata(expected), "{name}");
    }
}

#[test]
fn heartbeat_and_machine_specs_round_trip_byte_for_byte() {
    let data = vectors("misc");
    for case in list(&data, "messages") {
        let wire = text(case, "json");
        let message = ClientMessage::from_json(wire)
            .unwrap_or_else(|e| panic!("{}: {e}", text(case, "name")));
        assert_eq!(message.to_json(), wire);
    }
    assert!(ClientMessage::from_json(r#"{"message_type":"V0Heartbeat","x":1}"#).is_err());
    assert!(ClientMessage::from_json(r#"{"message_type":"V0Heartbeat"}"#).is_ok());
}

#[test]
fn client_messages_the_server_answers_with_a_parse_error_do_not_decode() {
    let data = vectors("responses");
    for case in list(&data, "responses")
        .iter()
        .filter(|c| text(c, "name").starts_with("parse_error."))
    {
        if let Some(client_text) = case["client_text"].as_str() {
            assert!(
                ClientMessage::from_json(client_text).is_err(),
                "{}",
                text(case, "name")
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------------- responses

#[test]
fn every_server_response_decodes_and_reencodes_byte_for_byte() {
    let data = vectors("responses");
    for case in list(&data, "responses") {
        let name = text(case, "name");
        for key in ["text", "text_pydantic_2_14_4"] {
            let Some(wire) = case[key].as_str() else {
                continue;
            };
            let Ok(ServerMessage::Response(response)) = decode_server_frame(wire, LIMIT) else {
                panic!("{name}")
            };
            assert_eq!(response.to_json(), wire, "{name}");
            assert_eq!(response.is_success(), name == "success", "{name}");
        }
    }
}

#[test]
fn catalogue_errors_built_in_code_equal_the_servers_texts() {
    let data = vectors("responses");
    let ss58 = "5DcjVUSFQsUSFDCMFNSFYRwBYgya7BEcoA47F5pkphi8NXnu";
    for case in list(&data, "responses")
        .iter()
        .filter(|c| !text(c, "name").starts_with("parse_error."))
    {
        let name = text(case, "name");
        let Ok(ServerMessage::Response(response)) = decode_server_frame(text(case, "text"), LIMIT)
        else {
            panic!()
        };
        let built = match response.errors.first() {
            None => Response::success(),
            Some(e) => Response::error(&e.error_type, &e.msg, &e.help),
        };
        assert_eq!(built.to_json(), text(case, "text"), "{name}");
        if let Some(template) = case["help_template"].as_str() {
            assert_eq!(response.errors[0].help, template.replace("{ss58}", ss58));
        }
    }
}

// ------------------------------------------------------------------------------------------------ cheat reports

#[test]
fn cheat_reports_parse_and_verify_exactly_as_the_reference_validator() {
    let data = vectors("cheated");
    let signer = text(&data, "signer_ss58");
    let trusted = TrustedSigners::new([0; 32], [signer]).expect("valid address");
    for case in list(&data, "cases") {
        let name = text(case, "name");
        let wire = text(case, "wire_json");
        let decoded = decode_server_frame(wire, LIMIT);
        let parses = case["validator_parses"].as_bool().expect("bool");
        let report: JobCheated = match decoded {
            Ok(ServerMessage::JobCheated(report)) => report,
            Err(DecodeError::InvalidJobCheated(problem)) => {
                assert!(!parses, "{name}: {problem}");
                assert!(problem.contains("details"), "{name}: {problem}");
                continue;
            }
            other => panic!("{name}: {other:?}"),
        };
        assert!(parses, "{name}");
        assert_eq!(
            report.signed_payload(),
            text(case, "validator_signed_payload_utf8"),
            "{name}"
        );
        assert_eq!(
            report.verify().is_ok(),
            case["verify"].as_bool().expect("bool"),
            "{name}"
        );
        assert_eq!(
            report.to_wire_text(),
            wire,
            "{name}: re-encodes byte for byte"
        );
        let expected = match name {
            "signed_over_validator_payload" => Ok(()),
            "signature_null_details_present" => Err(JobSignatureError::Missing),
            _ => Err(JobSignatureError::Invalid),
        };
        assert_eq!(trusted.check_cheat_report(&report), expected, "{name}");
    }
}

#[test]
fn the_sdk_signed_cheat_report_is_signed_over_the_double_encoded_body() {
    // Documents why real reports never verify (docs/PROTOCOL.md 10): the SDK's payload is the validator's quoted again.
    let data = vectors("cheated");
    let case = list(&data, "cases")
        .iter()
        .find(|c| c["name"] == "sdk_signed_with_details")
        .expect("case");
    let validator_payload = text(case, "validator_signed_payload_utf8");
    assert_eq!(
        facilitator_client::protocol::testing::pyjson::string_literal(validator_payload),
        text(case, "sdk_signed_payload_utf8")
    );
    assert_eq!(
        facilitator_client::protocol::testing::pyjson::dumps_sorted(&case["sdk_request_body"]),
        validator_payload
    );
}

#[test]
fn a_cheat_report_signed_by_this_crate_verifies() {
    let signer = facilitator_client::protocol::testing::test_signer();
    let mut report = JobCheated {
        signature: None,
        job_uuid: "3f0c5a8e-2d4b-4c6a-9e8f-0a1b2c3d4e5f".into(),
        trusted_job_uuid: "4f0c5a8e-2d4b-4c6a-9e8f-0a1b2c3d4e60".into(),
        details: json!({"score": 0.5, "tiny": 1e-5, "ü": "é"}),
    };
    report.sign(&signer, 1);
    let Ok(ServerMessage::JobCheated(decoded)) = decode_server_frame(&report.to_wire_text(), LIMIT)
    else {
        panic!()
    };
    assert_eq!(decoded.verify(), Ok(signer.public_key()));
}

// -------------------------------------------------------------------------------------------------------- enums

fn names(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .expect("list")
        .iter()
        .map(|v| v.as_str().expect("string"))
        .collect()
}

#[test]
fn every_enum_has_the_librarys_values_in_declaration_order() {
    let data = vectors("enums");
    fn wire<T: Copy>(all: &[T], f: fn(T) -> &'static str) -> Vec<&'static str> {
        all.iter().map(|v| f(*v)).collect()
    }
    assert_eq!(
        wire(JobStatus::ALL, JobStatus::as_str),
        names(&data["JobStatus"])
    );
    assert_eq!(
        wire(JobParticipantType::ALL, JobParticipantType::as_str),
        names(&data["JobParticipantType"])
    );
    assert_eq!(
        wire(JobRejectionReason::ALL, JobRejectionReason::as_str),
        names(&data["JobRejectionReason"])
    );
    assert_eq!(
        wire(JobFailureReason::ALL, JobFailureReason::as_str),
        names(&data["JobFailureReason"])
    );
    assert_eq!(
        wire(JobStage::ALL, JobStage::as_str),
        names(&data["JobStage"])
    );
    assert_eq!(
        wire(HordeFailureReason::ALL, HordeFailureReason::as_str),
        names(&data["HordeFailureReason"])
    );
    assert_eq!(
        wire(ExecutorClass::ALL, ExecutorClass::as_str),
        names(&data["ExecutorClass"])
    );
    assert_eq!(
        wire(SignatureScope::ALL, SignatureScope::as_str),
        names(&data["SignatureScope"])
    );
    let terminal: Vec<&str> = JobStatus::ALL
        .iter()
        .filter(|s| s.is_terminal())
        .map(|s| s.as_str())
        .collect();
    let mut expected = names(&data["JobStatus_terminal"]);
    expected.sort_by_key(|n| JobStatus::ALL.iter().position(|s| s.as_str() == *n));
    assert_eq!(terminal, expected);
}

#[test]
fn lenient_enums_map_unknown_values_to_unknown_and_strict_ones_refuse_them() {
    let data = vectors("enums");
    for (name, fallback) in data["unknown_value_fallback"].as_object().expect("object") {
        assert_eq!(fallback, "unknown", "{name}");
    }
    for input in [json!("bogus"), json!("COMPLETED"), json!(null), json!(5)] {
        assert_eq!(
            serde_json::from_value::<JobStatus>(input.clone()).ok(),
            Some(JobStatus::Unknown)
        );
        assert_eq!(
            serde_json::from_value::<JobStage>(input.clone()).ok(),
            Some(JobStage::Unknown)
        );
        assert!(serde_json::from_value::<ExecutorClass>(input).is_err());
    }
}

// ------------------------------------------------------------------------------------------- job construction

#[test]
fn fields_built_in_code_sign_and_verify() {
    let mut fields: JobRequestFields =
        facilitator_client::protocol::testing::minimal_job("00000000-0000-4000-8000-000000000001");
    let signer = Hotkey::from_seed(&[9; 32]);
    fields.sign(&signer, 42);
    let job = facilitator_client::protocol::JobRequest::from_fields(fields);
    assert_eq!(job.verify_signature(), Ok(signer.public_key()));
    assert_eq!(job_of(job.text()).fields(), job.fields());
}
