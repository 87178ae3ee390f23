//! The error `Response` the facilitator sends for a frame it cannot parse (docs/PROTOCOL.md 3.0 and 5.3): one error per
//! problem, shaped like pydantic's (`msg`, `type`, `help` `""`, `loc`, `input`, optional `ctx`, `url`).
//!
//! Whether a frame parses is decided elsewhere, by the crate's decoder with the server's rules
//! (`ClientMessage::from_json`); this module only describes *why* a frame did not. It walks the client message
//! models as pydantic does (field order, then forbidden extra keys) and reports the same error types. Exact
//! pydantic texts are approximated (the JSON syntax message comes from serde_json, not jiter). Where the crate's
//! decoder is stricter than pydantic (an integer written `"7"` or `1.0`), the walk finds nothing and the answer is a
//! single `value_error` carrying the decoder's complaint. Pure; never panics.

use serde_json::{Map, Value, json};

use crate::protocol::{Response, ResponseError, ResponseStatus};

/// pydantic's documentation URL prefix, for the version the deployed facilitator pins (2.10).
const URL_PREFIX: &str = "https://errors.pydantic.dev/2.10/v/";

/// The tags of the client message union, in the server's order.
const TAGS: [&str; 4] = [
    "V0AuthenticationRequest",
    "V0JobStatusUpdate",
    "V0MachineSpecsUpdate",
    "V0Heartbeat",
];

/// The error Response for a binary frame: the server handles it as "no text" (type `json_type`).
pub(crate) fn binary_frame() -> Response {
    response(vec![error(
        "json_type",
        "JSON input should be string, bytes or bytearray",
        &[],
        Value::Null,
        None,
    )])
}

/// The error Response for a text frame that `ClientMessage::from_json` refused with `decoder_error`.
pub(crate) fn text_frame(text: &str, decoder_error: &str) -> Response {
    response(describe(text, decoder_error))
}

fn response(errors: Vec<ResponseError>) -> Response {
    Response {
        status: ResponseStatus::Error,
        errors,
    }
}

fn describe(text: &str, decoder_error: &str) -> Vec<ResponseError> {
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => {
            let detail = e.to_string();
            return vec![error(
                "json_invalid",
                &format!("Invalid JSON: {detail}"),
                &[],
                Value::String(text.to_owned()),
                Some(json!({ "error": detail })),
            )];
        }
    };
    let Value::Object(map) = &value else {
        return vec![error(
            "dict_type",
            "Input should be an object",
            &[],
            value,
            None,
        )];
    };
    let tag = match map.get("message_type") {
        None => {
            return vec![error(
                "union_tag_not_found",
                "Unable to extract tag using discriminator 'message_type'",
                &[],
                value.clone(),
                Some(json!({ "discriminator": "'message_type'" })),
            )];
        }
        Some(Value::String(tag)) => tag.clone(),
        Some(other) => other.to_string(),
    };
    let Some(model) = model_of(&tag) else {
        let expected = TAGS.map(|t| format!("'{t}'")).join(", ");
        return vec![error(
            "union_tag_invalid",
            &format!(
                "Input tag '{tag}' found using 'message_type' does not match any of the expected tags: {expected}"
            ),
            &[],
            value.clone(),
            Some(
                json!({ "discriminator": "'message_type'", "tag": tag, "expected_tags": expected }),
            ),
        )];
    };
    let mut errors = Vec::new();
    let mut path = vec![model.name.to_owned()];
    // The tag itself is a declared field of every model.
    let mut fields = map.clone();
    fields.remove("message_type");
    walk_model(model, &fields, map, &mut path, &mut errors);
    if errors.is_empty() {
        errors.push(error(
            "value_error",
            &format!("Value error, {decoder_error}"),
            &[model.name],
            value.clone(),
            None,
        ));
    }
    errors
}

/// One pydantic error object, keys in the server's order.
fn error(
    error_type: &str,
    msg: &str,
    loc: &[&str],
    input: Value,
    ctx: Option<Value>,
) -> ResponseError {
    let mut extra = Map::new();
    extra.insert("loc".into(), json!(loc));
    extra.insert("input".into(), input);
    if let Some(ctx) = ctx {
        extra.insert("ctx".into(), ctx);
    }
    extra.insert("url".into(), format!("{URL_PREFIX}{error_type}").into());
    ResponseError {
        msg: msg.to_owned(),
        error_type: error_type.to_owned(),
        help: String::new(),
        extra,
    }
}

/// What a model does with keys it does not declare.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Extra {
    Forbid,
    Allow,
    Ignore,
}

/// The type of one field, as far as validation goes.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int,
    /// A lenient enum: any JSON value is accepted (unknown values become `unknown`).
    Lenient,
    /// `dict` of anything.
    Dict,
    /// `dict[str, str]`.
    StrDict,
    Model(&'static Model),
    /// `X | None`.
    Nullable(&'static Ty),
}

struct Field {
    name: &'static str,
    ty: Ty,
    required: bool,
}

struct Model {
    name: &'static str,
    fields: &'static [Field],
    extra: Extra,
}

const fn req(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        required: true,
    }
}

const fn opt(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        required: false,
    }
}

const NULLABLE_STR: Ty = Ty::Nullable(&Ty::Str);
const NULLABLE_INT: Ty = Ty::Nullable(&Ty::Int);
const NULLABLE_DICT: Ty = Ty::Nullable(&Ty::Dict);
const NULLABLE_STR_DICT: Ty = Ty::Nullable(&Ty::StrDict);

static AUTH: Model = Model {
    name: "V0AuthenticationRequest",
    fields: &[req("public_key", Ty::Str), req("signature", Ty::Str)],
    extra: Extra::Forbid,
};

static HEARTBEAT: Model = Model {
    name: "V0Heartbeat",
    fields: &[],
    extra: Extra::Forbid,
};

static STATUS_UPDATE: Model = Model {
    name: "V0JobStatusUpdate",
    fields: &[
        req("uuid", Ty::Str),
        req("status", Ty::Lenient),
        opt("metadata", Ty::Nullable(&Ty::Model(&METADATA))),
    ],
    extra: Extra::Forbid,
};

static MACHINE_SPECS: Model = Model {
    name: "V0MachineSpecsUpdate",
    fields: &[
        req("miner_hotkey", Ty::Str),
        req("validator_hotkey", Ty::Str),
        req("specs", Ty::Dict),
        req("batch_id", Ty::Str),
    ],
    extra: Extra::Forbid,
};

static METADATA: Model = Model {
    name: "JobStatusMetadata",
    fields: &[
        opt("miner_response", Ty::Nullable(&Ty::Model(&RESULT_DETAILS))),
        opt(
            "job_rejection_details",
            Ty::Nullable(&Ty::Model(&REJECTION_DETAILS)),
        ),
        opt(
            "job_failure_details",
            Ty::Nullable(&Ty::Model(&FAILURE_DETAILS)),
        ),
        opt(
            "horde_failure_details",
            Ty::Nullable(&Ty::Model(&HORDE_FAILURE_DETAILS)),
        ),
        opt(
            "streaming_details",
            Ty::Nullable(&Ty::Model(&STREAMING_DETAILS)),
        ),
    ],
    extra: Extra::Allow,
};

static RESULT_DETAILS: Model = Model {
    name: "JobResultDetails",
    fields: &[
        req("docker_process_stderr", Ty::Str),
        req("docker_process_stdout", Ty::Str),
        opt("artifacts", NULLABLE_STR_DICT),
        opt("upload_results", NULLABLE_STR_DICT),
    ],
    extra: Extra::Allow,
};

static REJECTION_DETAILS: Model = Model {
    name: "JobRejectionDetails",
    fields: &[
        req("rejected_by", Ty::Lenient),
        req("reason", Ty::Lenient),
        req("message", Ty::Str),
        opt("context", NULLABLE_DICT),
    ],
    extra: Extra::Ignore,
};

static FAILURE_DETAILS: Model = Model {
    name: "JobFailureDetails",
    fields: &[
        req("reason", Ty::Lenient),
        req("stage", Ty::Lenient),
        req("message", Ty::Str),
        opt("context", NULLABLE_DICT),
        opt("docker_process_exit_status", NULLABLE_INT),
        opt("docker_process_stdout", NULLABLE_STR),
        opt("docker_process_stderr", NULLABLE_STR),
    ],
    extra: Extra::Ignore,
};

static HORDE_FAILURE_DETAILS: Model = Model {
    name: "HordeFailureDetails",
    fields: &[
        req("reported_by", Ty::Lenient),
        req("reason", Ty::Lenient),
        req("message", Ty::Str),
        opt("context", NULLABLE_DICT),
    ],
    extra: Extra::Ignore,
};

static STREAMING_DETAILS: Model = Model {
    name: "StreamingServerDetails",
    fields: &[
        opt("streaming_server_cert", NULLABLE_STR),
        opt("streaming_server_address", NULLABLE_STR),
        opt("streaming_server_port", NULLABLE_INT),
    ],
    extra: Extra::Forbid,
};

fn model_of(tag: &str) -> Option<&'static Model> {
    match tag {
        "V0AuthenticationRequest" => Some(&AUTH),
        "V0Heartbeat" => Some(&HEARTBEAT),
        "V0JobStatusUpdate" => Some(&STATUS_UPDATE),
        "V0MachineSpecsUpdate" => Some(&MACHINE_SPECS),
        _ => None,
    }
}

/// Validates `fields` against `model`; `input` is what a `missing` error quotes (the whole object as received).
fn walk_model(
    model: &Model,
    fields: &Map<String, Value>,
    input: &Map<String, Value>,
    path: &mut Vec<String>,
    errors: &mut Vec<ResponseError>,
) {
    for field in model.fields {
        path.push(field.name.to_owned());
        match fields.get(field.name) {
            None if field.required => errors.push(error_at(
                "missing",
                "Field required",
                path,
                Value::Object(input.clone()),
                None,
            )),
            None => {}
            Some(value) => walk(field.ty, value, path, errors),
        }
        path.pop();
    }
    if model.extra == Extra::Forbid {
        let declared = |key: &str| model.fields.iter().any(|f| f.name == key);
        for (key, value) in fields.iter().filter(|(key, _)| !declared(key)) {
            path.push(key.clone());
            errors.push(error_at(
                "extra_forbidden",
                "Extra inputs are not permitted",
                path,
                value.clone(),
                None,
            ));
            path.pop();
        }
    }
}

fn walk(ty: Ty, value: &Value, path: &mut Vec<String>, errors: &mut Vec<ResponseError>) {
    match (ty, value) {
        (Ty::Nullable(_), Value::Null) | (Ty::Lenient, _) | (Ty::Str, Value::String(_)) => {}
        (Ty::Nullable(inner), _) => walk(*inner, value, path, errors),
        (Ty::Str, _) => errors.push(error_at(
            "string_type",
            "Input should be a valid string",
            path,
            value.clone(),
            None,
        )),
        (Ty::Int, _) => {
            if let Some((error_type, msg)) = int_problem(value) {
                errors.push(error_at(error_type, msg, path, value.clone(), None));
            }
        }
        (Ty::Dict, Value::Object(_)) => {}
        (Ty::StrDict, Value::Object(map)) => {
            for (key, item) in map {
                path.push(key.clone());
                walk(Ty::Str, item, path, errors);
                path.pop();
            }
        }
        (Ty::Dict | Ty::StrDict, _) => errors.push(error_at(
            "dict_type",
            "Input should be an object",
            path,
            value.clone(),
            None,
        )),
        (Ty::Model(model), Value::Object(map)) => walk_model(model, map, map, path, errors),
        (Ty::Model(model), _) => errors.push(error_at(
            "model_type",
            &format!(
                "Input should be a valid dictionary or instance of {}",
                model.name
            ),
            path,
            value.clone(),
            Some(json!({ "class_name": model.name })),
        )),
    }
}

/// pydantic's lax integer rules for JSON input: integers, floats without a fractional part, booleans and strings
/// holding an integer are accepted.
fn int_problem(value: &Value) -> Option<(&'static str, &'static str)> {
    match value {
        Value::Bool(_) => None,
        Value::Number(n) if n.is_i64() || n.is_u64() => None,
        Value::Number(n) => match n.as_f64() {
            Some(x) if x.fract() == 0.0 => None,
            _ => Some((
                "int_from_float",
                "Input should be a valid integer, got a number with a fractional part",
            )),
        },
        Value::String(s) if s.trim().parse::<i128>().is_ok() => None,
        Value::String(_) => Some((
            "int_parsing",
            "Input should be a valid integer, unable to parse string as an integer",
        )),
        _ => Some(("int_type", "Input should be a valid integer")),
    }
}

fn error_at(
    error_type: &str,
    msg: &str,
    path: &[String],
    input: Value,
    ctx: Option<Value>,
) -> ResponseError {
    let loc: Vec<&str> = path.iter().map(String::as_str).collect();
    error(error_type, msg, &loc, input, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ClientMessage;

    /// The errors the facilitator would send for `text`, as compact JSON.
    fn answer(text: &str) -> String {
        let decoder_error = match ClientMessage::from_json(text) {
            Ok(message) => panic!("{text} decodes as {message:?}"),
            Err(e) => e.to_string(),
        };
        text_frame(text, &decoder_error).to_json()
    }

    #[test]
    fn shapes_match_the_servers_vectors() {
        // Texts from tests/data/responses.json; only the JSON syntax message differs (serde_json vs jiter).
        let cases = [
            (
                "[]",
                r#"{"status":"error","errors":[{"msg":"Input should be an object","type":"dict_type","help":"","loc":[],"input":[],"url":"https://errors.pydantic.dev/2.10/v/dict_type"}]}"#,
            ),
            (
                r#"{"hello":"world"}"#,
                r#"{"status":"error","errors":[{"msg":"Unable to extract tag using discriminator 'message_type'","type":"union_tag_not_found","help":"","loc":[],"input":{"hello":"world"},"ctx":{"discriminator":"'message_type'"},"url":"https://errors.pydantic.dev/2.10/v/union_tag_not_found"}]}"#,
            ),
            (
                r#"{"message_type":"V2JobRequest"}"#,
                r#"{"status":"error","errors":[{"msg":"Input tag 'V2JobRequest' found using 'message_type' does not match any of the expected tags: 'V0AuthenticationRequest', 'V0JobStatusUpdate', 'V0MachineSpecsUpdate', 'V0Heartbeat'","type":"union_tag_invalid","help":"","loc":[],"input":{"message_type":"V2JobRequest"},"ctx":{"discriminator":"'message_type'","tag":"V2JobRequest","expected_tags":"'V0AuthenticationRequest', 'V0JobStatusUpdate', 'V0MachineSpecsUpdate', 'V0Heartbeat'"},"url":"https://errors.pydantic.dev/2.10/v/union_tag_invalid"}]}"#,
            ),
            (
                r#"{"message_type":"V0Heartbeat","x":1}"#,
                r#"{"status":"error","errors":[{"msg":"Extra inputs are not permitted","type":"extra_forbidden","help":"","loc":["V0Heartbeat","x"],"input":1,"url":"https://errors.pydantic.dev/2.10/v/extra_forbidden"}]}"#,
            ),
            (
                r#"{"message_type":"V0AuthenticationRequest","public_key":"00"}"#,
                r#"{"status":"error","errors":[{"msg":"Field required","type":"missing","help":"","loc":["V0AuthenticationRequest","signature"],"input":{"message_type":"V0AuthenticationRequest","public_key":"00"},"url":"https://errors.pydantic.dev/2.10/v/missing"}]}"#,
            ),
            (
                r#"{"message_type":"V0JobStatusUpdate","uuid":1,"status":"accepted"}"#,
                r#"{"status":"error","errors":[{"msg":"Input should be a valid string","type":"string_type","help":"","loc":["V0JobStatusUpdate","uuid"],"input":1,"url":"https://errors.pydantic.dev/2.10/v/string_type"}]}"#,
            ),
            (
                r#"{"message_type":"V0MachineSpecsUpdate","miner_hotkey":"a","validator_hotkey":"b","specs":[],"batch_id":"x"}"#,
                r#"{"status":"error","errors":[{"msg":"Input should be an object","type":"dict_type","help":"","loc":["V0MachineSpecsUpdate","specs"],"input":[],"url":"https://errors.pydantic.dev/2.10/v/dict_type"}]}"#,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(answer(text), expected, "for {text}");
        }
        assert_eq!(
            binary_frame().to_json(),
            r#"{"status":"error","errors":[{"msg":"JSON input should be string, bytes or bytearray","type":"json_type","help":"","loc":[],"input":null,"url":"https://errors.pydantic.dev/2.10/v/json_type"}]}"#
        );
    }

    #[test]
    fn invalid_json_quotes_the_input_and_the_syntax_error() {
        let response = text_frame("not json", "whatever");
        let [error] = response.errors.as_slice() else {
            panic!("{response:?}")
        };
        assert_eq!(error.error_type, "json_invalid");
        assert!(error.msg.starts_with("Invalid JSON: "), "{}", error.msg);
        assert_eq!(error.extra["input"], "not json");
        assert_eq!(error.extra["loc"], json!([]));
    }

    #[test]
    fn nested_metadata_errors_carry_their_path() {
        let text = r#"{"message_type":"V0JobStatusUpdate","uuid":"u","status":"completed","metadata":{"miner_response":{"docker_process_stdout":1},"streaming_details":{"x":1}}}"#;
        let response: Value = serde_json::from_str(&answer(text)).unwrap();
        let found: Vec<(String, String)> = response["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["type"].as_str().unwrap().into(), e["loc"].to_string()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "missing".into(),
                    r#"["V0JobStatusUpdate","metadata","miner_response","docker_process_stderr"]"#
                        .into()
                ),
                (
                    "string_type".into(),
                    r#"["V0JobStatusUpdate","metadata","miner_response","docker_process_stdout"]"#
                        .into()
                ),
                (
                    "extra_forbidden".into(),
                    r#"["V0JobStatusUpdate","metadata","streaming_details","x"]"#.into()
                ),
            ]
        );
    }

    #[test]
    fn metadata_that_is_not_an_object_is_a_model_type_error() {
        let text =
            r#"{"message_type":"V0JobStatusUpdate","uuid":"u","status":"accepted","metadata":"x"}"#;
        assert!(answer(text).contains(r#""type":"model_type""#));
    }

    #[test]
    fn stricter_than_pydantic_gives_a_value_error_naming_the_decoders_complaint() {
        // pydantic would take "7" as the port; the crate's decoder does not.
        let text = r#"{"message_type":"V0JobStatusUpdate","uuid":"u","status":"streaming_ready","metadata":{"streaming_details":{"streaming_server_port":"7"}}}"#;
        let response = text_frame(text, "bad port");
        assert_eq!(response.errors.len(), 1);
        assert_eq!(response.errors[0].error_type, "value_error");
        assert_eq!(response.errors[0].msg, "Value error, bad port");
    }
}
