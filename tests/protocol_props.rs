//! Property tests: for every message type, decoding what was encoded gives back the same message; signing and
//! verification agree; the Python-style JSON writer reads back as what it wrote.

use facilitator_client::protocol::keys::{self, Hotkey};
use facilitator_client::protocol::{
    AllowPatterns, JobStreamingDetails, OutputUpload, SingleFileUpload, StringMap, Volume,
    VolumeSource, ZipUpload,
};
use facilitator_client::protocol::{
    AuthenticationRequest, ClientMessage, ExecutorClass, HordeFailureDetails, HordeFailureReason,
    JobCheated, JobFailureDetails, JobFailureReason, JobParticipantType, JobRejectionDetails,
    JobRejectionReason, JobRequestFields, JobResultDetails, JobSignature, JobSignatureError,
    JobStage, JobStatus, JobStatusMetadata, JobStatusUpdate, MachineSpecsUpdate, Response,
    ResponseError, ResponseStatus, ServerMessage, SignatureScope, StreamingServerDetails,
    TrustedSigners, decode_server_frame, testing::pyjson,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value};

/// Strings that stress escaping: arbitrary Unicode, plus quotes, backslashes, control characters, DEL, non-ASCII,
/// characters above U+FFFF and U+2028.
fn text() -> BoxedStrategy<String> {
    let tricky = select(vec![
        '"', '\\', '\n', '\r', '\t', '\u{1}', '\u{8}', '\u{c}', '\u{7f}', 'é', '中', '😀',
        '\u{2028}', '/',
    ]);
    prop_oneof![
        "[a-zA-Z0-9_./:-]{0,12}",
        vec(prop_oneof![tricky, any::<char>()], 0..10)
            .prop_map(|chars| chars.into_iter().collect()),
        any::<String>(),
    ]
    .boxed()
}

fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((text(), inner), 0..4)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
    .boxed()
}

fn json_object() -> BoxedStrategy<Map<String, Value>> {
    vec((text(), json_value()), 0..4)
        .prop_map(|entries| entries.into_iter().collect())
        .boxed()
}

/// Unknown keys for a struct that keeps them: never one of its declared keys.
fn extras(declared: &'static [&'static str]) -> BoxedStrategy<Map<String, Value>> {
    json_object()
        .prop_map(move |mut map| {
            map.retain(|k, _| !declared.contains(&k.as_str()));
            map
        })
        .boxed()
}

fn string_map() -> BoxedStrategy<StringMap> {
    vec((text(), text()), 0..4)
        .prop_map(|entries| entries.into_iter().collect())
        .boxed()
}

fn string_valued_object() -> BoxedStrategy<Map<String, Value>> {
    vec((text(), text()), 0..4)
        .prop_map(|entries| {
            entries
                .into_iter()
                .map(|(k, v)| (k, Value::from(v)))
                .collect()
        })
        .boxed()
}

fn relative_path() -> BoxedStrategy<String> {
    vec("[a-zA-Z0-9_-][a-zA-Z0-9_.-]{0,8}|é{1,3}", 1..4)
        .prop_map(|parts| parts.join("/"))
        .boxed()
}

fn volume_source() -> BoxedStrategy<VolumeSource> {
    prop_oneof![
        (text(), option::of(text())).prop_map(|(contents, relative_path)| VolumeSource::Inline {
            contents,
            relative_path
        }),
        (text(), option::of(text())).prop_map(|(contents, relative_path)| VolumeSource::ZipUrl {
            contents,
            relative_path
        }),
        (text(), text())
            .prop_map(|(url, relative_path)| VolumeSource::SingleFile { url, relative_path }),
        (
            text(),
            option::of(text()),
            option::of(text()),
            option::of(text()),
            option::of(prop_oneof![
                text().prop_map(AllowPatterns::One),
                vec(text(), 0..3).prop_map(AllowPatterns::Many)
            ]),
            option::of(text()),
        )
            .prop_map(
                |(repo_id, repo_type, revision, relative_path, allow_patterns, token)| {
                    VolumeSource::Huggingface {
                        repo_id,
                        repo_type,
                        revision,
                        relative_path,
                        allow_patterns,
                        token,
                    }
                }
            ),
    ]
    .boxed()
}

fn volume() -> BoxedStrategy<Volume> {
    prop_oneof![
        volume_source().prop_map(Volume::One),
        vec(volume_source(), 0..4).prop_map(Volume::Multi)
    ]
    .boxed()
}

fn zip_upload() -> BoxedStrategy<ZipUpload> {
    prop_oneof![
        (text(), option::of(string_map()))
            .prop_map(|(url, form_fields)| ZipUpload::Post { url, form_fields }),
        text().prop_map(|url| ZipUpload::Put { url }),
    ]
    .boxed()
}

fn single_file_upload() -> BoxedStrategy<SingleFileUpload> {
    prop_oneof![
        (
            text(),
            option::of(string_map()),
            relative_path(),
            option::of(string_map())
        )
            .prop_map(|(url, form_fields, relative_path, signed_headers)| {
                SingleFileUpload::Post {
                    url,
                    form_fields,
                    relative_path,
                    signed_headers,
                }
            }),
        (text(), relative_path(), option::of(string_map())).prop_map(
            |(url, relative_path, signed_headers)| SingleFileUpload::Put {
                url,
                relative_path,
                signed_headers
            }
        ),
    ]
    .boxed()
}

fn output_upload() -> BoxedStrategy<OutputUpload> {
    prop_oneof![
        zip_upload().prop_map(OutputUpload::Zip),
        single_file_upload().prop_map(OutputUpload::SingleFile),
        (vec(single_file_upload(), 0..3), option::of(zip_upload())).prop_map(
            |(uploads, system_output)| OutputUpload::Multi {
                uploads,
                system_output
            }
        ),
    ]
    .boxed()
}

fn job_signature() -> BoxedStrategy<JobSignature> {
    let timestamp = prop_oneof![
        any::<u64>().prop_map(i128::from),
        any::<i64>().prop_map(i128::from)
    ];
    (
        text(),
        text(),
        timestamp,
        text(),
        select(SignatureScope::ALL),
    )
        .prop_map(
            |(signature_type, signatory, timestamp_ns, signature, signature_scope)| JobSignature {
                signature_type,
                signatory,
                timestamp_ns,
                signature,
                signature_scope,
            },
        )
        .boxed()
}

fn job_fields() -> BoxedStrategy<JobRequestFields> {
    let head = (
        option::of(job_signature()),
        text(),
        option::of(text()),
        select(ExecutorClass::ALL),
        text(),
        vec(text(), 0..4),
        string_map(),
        any::<bool>(),
    );
    let tail = (
        option::of(volume()),
        option::of(output_upload()),
        option::of(text()),
        any::<bool>(),
        any::<[i64; 4]>(),
        option::of(
            (text(), option::of(text())).prop_map(|(public_key, executor_ip)| {
                JobStreamingDetails {
                    public_key,
                    executor_ip,
                }
            }),
        ),
    );
    (head, tail)
        .prop_map(
            |(
                (signature, uuid, job_namespace, executor_class, docker_image, args, env, use_gpu),
                (volume, output_upload, artifacts_dir, on_trusted_miner, limits, streaming_details),
            )| JobRequestFields {
                signature,
                uuid,
                job_namespace,
                executor_class,
                docker_image,
                args,
                env,
                use_gpu,
                volume,
                output_upload,
                artifacts_dir,
                on_trusted_miner,
                download_time_limit: limits[0],
                execution_time_limit: limits[1],
                upload_time_limit: limits[2],
                streaming_start_time_limit: limits[3],
                streaming_details,
            },
        )
        .boxed()
}

fn metadata() -> BoxedStrategy<JobStatusMetadata> {
    let result = (
        text(),
        text(),
        option::of(string_valued_object()),
        option::of(string_valued_object()),
        extras(&[
            "docker_process_stderr",
            "docker_process_stdout",
            "artifacts",
            "upload_results",
        ]),
    )
        .prop_map(
            |(docker_process_stderr, docker_process_stdout, artifacts, upload_results, extra)| {
                JobResultDetails {
                    docker_process_stderr,
                    docker_process_stdout,
                    artifacts,
                    upload_results,
                    extra,
                }
            },
        );
    let rejection = (
        select(JobParticipantType::ALL),
        select(JobRejectionReason::ALL),
        text(),
        option::of(json_object()),
    )
        .prop_map(
            |(rejected_by, reason, message, context)| JobRejectionDetails {
                rejected_by,
                reason,
                message,
                context,
            },
        );
    let failure = (
        select(JobFailureReason::ALL),
        select(JobStage::ALL),
        text(),
        option::of(json_object()),
        option::of(any::<i64>()),
        option::of(text()),
        option::of(text()),
    )
        .prop_map(
            |(
                reason,
                stage,
                message,
                context,
                docker_process_exit_status,
                docker_process_stdout,
                docker_process_stderr,
            )| {
                JobFailureDetails {
                    reason,
                    stage,
                    message,
                    context,
                    docker_process_exit_status,
                    docker_process_stdout,
                    docker_process_stderr,
                }
            },
        );
    let horde = (
        select(JobParticipantType::ALL),
        select(HordeFailureReason::ALL),
        text(),
        option::of(json_object()),
    )
        .prop_map(
            |(reported_by, reason, message, context)| HordeFailureDetails {
                reported_by,
                reason,
                message,
                context,
            },
        );
    let streaming = (
        option::of(text()),
        option::of(text()),
        option::of(any::<i64>()),
    )
        .prop_map(
            |(streaming_server_cert, streaming_server_address, streaming_server_port)| {
                StreamingServerDetails {
                    streaming_server_cert,
                    streaming_server_address,
                    streaming_server_port,
                }
            },
        );
    let declared: &[&str] = &[
        "miner_response",
        "job_rejection_details",
        "job_failure_details",
        "horde_failure_details",
        "streaming_details",
    ];
    (
        option::of(result),
        option::of(rejection),
        option::of(failure),
        option::of(horde),
        option::of(streaming),
        extras(declared),
    )
        .prop_map(
            |(
                miner_response,
                job_rejection_details,
                job_failure_details,
                horde_failure_details,
                streaming_details,
                extra,
            )| {
                JobStatusMetadata {
                    miner_response,
                    job_rejection_details,
                    job_failure_details,
                    horde_failure_details,
                    streaming_details,
                    extra,
                }
            },
        )
        .boxed()
}

fn client_message() -> BoxedStrategy<ClientMessage> {
    prop_oneof![
        (text(), text()).prop_map(|(public_key, signature)| ClientMessage::Auth(
            AuthenticationRequest {
                public_key,
                signature
            }
        )),
        Just(ClientMessage::Heartbeat),
        (text(), select(JobStatus::ALL), metadata()).prop_map(|(uuid, status, metadata)| {
            ClientMessage::StatusUpdate(JobStatusUpdate {
                uuid,
                status,
                metadata: Box::new(metadata),
            })
        }),
        (text(), text(), json_object(), text()).prop_map(
            |(miner_hotkey, validator_hotkey, specs, batch_id)| {
                ClientMessage::MachineSpecs(MachineSpecsUpdate {
                    miner_hotkey,
                    validator_hotkey,
                    specs,
                    batch_id,
                })
            }
        ),
    ]
    .boxed()
}

fn response() -> BoxedStrategy<Response> {
    let error = (text(), text(), text(), extras(&["msg", "type", "help"])).prop_map(
        |(msg, error_type, help, extra)| ResponseError {
            msg,
            error_type,
            help,
            extra,
        },
    );
    (
        prop_oneof![Just(ResponseStatus::Success), Just(ResponseStatus::Error)],
        vec(error, 0..3),
    )
        .prop_map(|(status, errors)| Response { status, errors })
        .boxed()
}

fn cheat_report() -> BoxedStrategy<JobCheated> {
    (option::of(job_signature()), text(), text(), json_value())
        .prop_map(
            |(signature, job_uuid, trusted_job_uuid, details)| JobCheated {
                signature,
                job_uuid,
                trusted_job_uuid,
                details,
            },
        )
        .boxed()
}

const NO_LIMIT: usize = usize::MAX;

proptest! {
    #[test]
    fn client_messages_decode_to_what_was_encoded(message in client_message()) {
        let encoded = message.to_json();
        let decoded = ClientMessage::from_json(&encoded).map_err(|e| TestCaseError::fail(format!("{e}\n{encoded}")))?;
        prop_assert_eq!(decoded, message);
    }

    #[test]
    fn responses_decode_to_what_was_encoded(response in response()) {
        let decoded = decode_server_frame(&response.to_json(), NO_LIMIT);
        prop_assert_eq!(decoded, Ok(ServerMessage::Response(response)));
    }

    #[test]
    fn job_requests_decode_to_what_was_encoded(fields in job_fields()) {
        let wire = fields.to_wire_text();
        prop_assert!(wire.is_ascii());
        match decode_server_frame(&wire, NO_LIMIT) {
            Ok(ServerMessage::JobRequest(job)) => {
                prop_assert_eq!(job.text(), wire.as_str());
                prop_assert_eq!(job.fields(), &fields);
            }
            other => prop_assert!(false, "{other:?}\n{wire}"),
        }
    }

    #[test]
    fn cheat_reports_decode_to_what_was_encoded(report in cheat_report()) {
        let decoded = decode_server_frame(&report.to_wire_text(), NO_LIMIT);
        prop_assert_eq!(decoded, Ok(ServerMessage::JobCheated(report)));
    }

    #[test]
    fn the_signed_payload_is_the_ascii_json_string_of_the_signed_fields(fields in job_fields()) {
        let payload = fields.signed_payload();
        prop_assert!(payload.is_ascii());
        let unquoted: String = serde_json::from_str(&payload).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(unquoted, fields.signed_fields_json());
    }

    #[test]
    fn the_payload_written_from_the_fields_is_the_literal_of_the_value_forms_text(fields in job_fields()) {
        let value_text = fields.signed_fields().to_string();
        prop_assert_eq!(fields.signed_payload(), pyjson::string_literal(&value_text));
        prop_assert_eq!(fields.signed_fields_json(), value_text);
    }

    #[test]
    fn python_style_json_reads_back_as_the_same_value(value in json_value()) {
        for written in [pyjson::dumps(&value), pyjson::dumps_sorted(&value)] {
            prop_assert!(written.is_ascii());
            let read: Value = serde_json::from_str(&written).map_err(|e| TestCaseError::fail(format!("{e}: {written}")))?;
            prop_assert_eq!(&read, &value);
        }
    }

    #[test]
    fn python_float_repr_reads_back_as_the_same_float(bits in any::<u64>()) {
        let x = f64::from_bits(bits);
        match pyjson::float_repr(x) {
            None => prop_assert!(!x.is_finite()),
            Some(text) => {
                let read: f64 = text.parse().map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
                prop_assert_eq!(read.to_bits(), x.to_bits(), "{}", text);
                prop_assert!(text.contains('.') || text.contains('e'), "{}", text);
            }
        }
    }

    #[test]
    fn ss58_decodes_what_it_encodes(key in any::<[u8; 32]>(), format in 0u8..64) {
        prop_assert_eq!(keys::ss58_decode(&keys::ss58_encode(&key)), Ok(key));
        let address = keys::ss58_encode_with_format(&key, format).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(keys::ss58_decode_with_format(&address), Ok((u16::from(format), key)));
    }

    #[test]
    fn decoding_any_text_never_panics(text in text()) {
        let _ = decode_server_frame(&text, NO_LIMIT);
        let _ = ClientMessage::from_json(&text);
    }
}

proptest! {
    // Signing and verifying cost tens of microseconds each: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_signed_job_verifies_and_changing_a_signed_field_breaks_it(
        mut fields in job_fields(), seed in any::<[u8; 32]>(), timestamp in any::<u64>()
    ) {
        let signer = Hotkey::from_seed(&seed);
        fields.sign(&signer, timestamp);
        let trusted = TrustedSigners::new([0; 32], [signer.ss58()]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let Ok(ServerMessage::JobRequest(job)) = decode_server_frame(&fields.to_wire_text(), NO_LIMIT) else {
            return Err(TestCaseError::fail("does not decode"));
        };
        prop_assert_eq!(trusted.check(&job), Ok(()));

        let mut tampered = fields.clone();
        tampered.docker_image.push('x');
        let Ok(ServerMessage::JobRequest(job)) = decode_server_frame(&tampered.to_wire_text(), NO_LIMIT) else {
            return Err(TestCaseError::fail("does not decode"));
        };
        prop_assert_eq!(trusted.check(&job), Err(JobSignatureError::Invalid));

        let mut relabelled = fields;
        relabelled.uuid.push('x');
        let job = facilitator_client::protocol::JobRequest::from_fields(relabelled);
        prop_assert_eq!(trusted.check(&job), Ok(()), "uuid is not signed (docs/PROTOCOL.md 9.2)");
    }

    #[test]
    fn auth_requests_of_any_key_verify(seed in any::<[u8; 32]>()) {
        let hotkey = Hotkey::from_seed(&seed);
        let request = hotkey.auth_request();
        prop_assert_eq!(keys::verify_auth_request(&request), Ok(hotkey.public_key()));
        prop_assert_eq!(keys::auth_lookup_address(&request), Ok(hotkey.ss58()));
    }
}
