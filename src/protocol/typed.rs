//! The typed decoder: one pass over a frame's text straight into the typed message (a `Response` or a
//! `V2JobRequest`), with no `serde_json::Value` tree in between. It covers the frames a facilitator sends: every key
//! at most once, each volume and upload object with its type key first, fixed words (`message_type`, the enum
//! values, `status`) without escapes, Responses with an empty `errors`.
//!
//! It decides nothing on its own: whatever it does not decode (anything invalid, and valid but unusual frames) it
//! hands back as `None`, and the validating decoder ([`super::codec`]) takes the frame from the start, decides, and
//! names the problem in the exact texts the tests hold. So it must never accept a frame the validating decoder
//! refuses, nor decode one differently: every value it skips is still parsed as the validating decoder parses it
//! (number range, nesting depth, escapes), and `fuzzing::decode_frame` checks the two agree on every fuzz input.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::enums::{ExecutorClass, SignatureScope};
use super::job::{
    AllowPatterns, JobRequest, JobRequestFields, JobStreamingDetails, OutputUpload,
    SingleFileUpload, StringMap, Volume, VolumeSource, ZipUpload, check_relative_path,
};
use super::messages::{Response, ResponseStatus};
use super::signature::JobSignature;

/// What the typed decoder read.
pub(super) enum Frame {
    /// A Response.
    Response(Response),
    /// A job request's fields (the caller keeps the text with them).
    Job(Box<JobRequestFields>),
}

/// Decodes a server frame if it is a `Response` or a `V2JobRequest` in the form the facilitator writes; `None`
/// otherwise (the validating decoder then decides).
pub(super) fn decode(text: &str) -> Option<Frame> {
    let mut de = serde_json::Deserializer::from_str(text);
    let frame = de.deserialize_map(FrameVisitor).ok()?;
    de.end().ok()?;
    Some(frame)
}

/// Giving up: the text of this error is never shown (the validating decoder names the problem).
fn bail<E: de::Error>() -> E {
    E::custom("left to the validating decoder")
}

/// Fills a slot once; a key seen twice is left to the validating decoder (which keeps the last value).
fn put<T, E: de::Error>(slot: &mut Option<T>, value: T) -> Result<(), E> {
    if slot.is_some() {
        return Err(bail());
    }
    *slot = Some(value);
    Ok(())
}

fn required<T, E: de::Error>(slot: Option<T>) -> Result<T, E> {
    slot.ok_or_else(bail)
}

/// A key or a fixed word, borrowed from the text: one written with escapes is left to the validating decoder.
struct Word<'de>(&'de str);

impl<'de> Deserialize<'de> for Word<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct WordVisitor;
        impl<'de> Visitor<'de> for WordVisitor {
            type Value = Word<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string without escapes")
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Word<'de>, E> {
                Ok(Word(text))
            }
        }
        d.deserialize_str(WordVisitor)
    }
}

/// A value under a key the validating decoder ignores: parsed the way it parses it (so a number out of range or
/// nesting too deep is still refused), then dropped.
fn skip<'de, A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
    map.next_value::<Value>().map(drop)
}

/// The value of the next key, which must be the word `expected`.
fn expect_word<'de, A: MapAccess<'de>>(map: &mut A, expected: &str) -> Result<(), A::Error> {
    match map.next_value::<Word<'de>>()? {
        Word(word) if word == expected => Ok(()),
        _ => Err(bail()),
    }
}

/// The type key of a volume or upload object, which the facilitator writes first, and its value.
fn type_first<'de, A: MapAccess<'de>>(map: &mut A, key: &str) -> Result<&'de str, A::Error> {
    match map.next_key::<Word<'de>>()? {
        Some(Word(first)) if first == key => Ok(map.next_value::<Word<'de>>()?.0),
        _ => Err(bail()),
    }
}

struct FrameVisitor;

impl<'de> Visitor<'de> for FrameVisitor {
    type Value = Frame;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Response or a V2JobRequest")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Frame, A::Error> {
        let Some(Word(first)) = map.next_key::<Word<'de>>()? else {
            return Err(bail());
        };
        match first {
            "status" | "errors" => response(first, map).map(Frame::Response),
            _ => job(first, map).map(|fields| Frame::Job(Box::new(fields))),
        }
    }
}

/// A Response with only `status` and `errors`, `errors` empty (error Responses are rare: the validating decoder
/// takes them).
fn response<'de, A: MapAccess<'de>>(first: &'de str, mut map: A) -> Result<Response, A::Error> {
    let mut status = None;
    let mut errors = None;
    let mut key = Some(first);
    while let Some(name) = key {
        match name {
            "status" => {
                let value = match map.next_value::<Word<'de>>()?.0 {
                    "success" => ResponseStatus::Success,
                    "error" => ResponseStatus::Error,
                    _ => return Err(bail()),
                };
                put(&mut status, value)?;
            }
            "errors" => put(&mut errors, map.next_value::<EmptyList>()?)?,
            _ => return Err(bail()),
        }
        key = map.next_key::<Word<'de>>()?.map(|w| w.0);
    }
    Ok(Response {
        status: required(status)?,
        errors: Vec::new(),
    })
}

/// `[]`.
struct EmptyList;

impl<'de> Deserialize<'de> for EmptyList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EmptyListVisitor;
        impl<'de> Visitor<'de> for EmptyListVisitor {
            type Value = EmptyList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an empty list")
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<EmptyList, S::Error> {
                match seq.next_element::<de::IgnoredAny>()? {
                    None => Ok(EmptyList),
                    Some(_) => Err(bail()),
                }
            }
        }
        d.deserialize_seq(EmptyListVisitor)
    }
}

/// The keys of a job request, each read once into its slot; defaults and requirements as in
/// `JobRequestFields::parse`.
fn job<'de, A: MapAccess<'de>>(first: &'de str, mut map: A) -> Result<JobRequestFields, A::Error> {
    let mut signature = None;
    let mut type_seen = None;
    let mut message_type_seen = None;
    let mut uuid = None;
    let mut job_namespace = None;
    let mut executor_class = None;
    let mut docker_image = None;
    let mut args = None;
    let mut env = None;
    let mut use_gpu = None;
    let mut volume = None;
    let mut output_upload = None;
    let mut artifacts_dir = None;
    let mut on_trusted_miner = None;
    let mut download_time_limit = None;
    let mut execution_time_limit = None;
    let mut upload_time_limit = None;
    let mut streaming_start_time_limit = None;
    let mut streaming_details = None;
    let mut key = Some(first);
    while let Some(name) = key {
        match name {
            "signature" => put(
                &mut signature,
                map.next_value::<Option<Typed<JobSignature>>>()?,
            )?,
            "type" => put(&mut type_seen, expect_word(&mut map, "job.new")?)?,
            "message_type" => put(
                &mut message_type_seen,
                expect_word(&mut map, JobRequest::MESSAGE_TYPE)?,
            )?,
            "uuid" => put(&mut uuid, map.next_value::<String>()?)?,
            "job_namespace" => put(&mut job_namespace, map.next_value::<Option<String>>()?)?,
            "executor_class" => {
                let class = ExecutorClass::from_wire(map.next_value::<Word<'de>>()?.0);
                put(&mut executor_class, class.ok_or_else(bail)?)?;
            }
            "docker_image" => put(&mut docker_image, map.next_value::<String>()?)?,
            "args" => put(&mut args, map.next_value::<Vec<String>>()?)?,
            "env" => put(&mut env, map.next_value::<Typed<StringMap>>()?.0)?,
            "use_gpu" => put(&mut use_gpu, map.next_value::<bool>()?)?,
            "volume" => put(&mut volume, map.next_value::<Option<Typed<Volume>>>()?)?,
            "output_upload" => put(
                &mut output_upload,
                map.next_value::<Option<Typed<OutputUpload>>>()?,
            )?,
            "artifacts_dir" => put(&mut artifacts_dir, map.next_value::<Option<String>>()?)?,
            "on_trusted_miner" => put(&mut on_trusted_miner, map.next_value::<bool>()?)?,
            "download_time_limit" => put(&mut download_time_limit, map.next_value::<i64>()?)?,
            "execution_time_limit" => put(&mut execution_time_limit, map.next_value::<i64>()?)?,
            "upload_time_limit" => put(&mut upload_time_limit, map.next_value::<i64>()?)?,
            "streaming_start_time_limit" => {
                put(&mut streaming_start_time_limit, map.next_value::<i64>()?)?
            }
            "streaming_details" => put(
                &mut streaming_details,
                map.next_value::<Option<Typed<JobStreamingDetails>>>()?,
            )?,
            // Unknown keys are refused, with the validating decoder's message.
            _ => return Err(bail()),
        }
        key = map.next_key::<Word<'de>>()?.map(|w| w.0);
    }
    required(message_type_seen)?;
    Ok(JobRequestFields {
        signature: signature.flatten().map(|s| s.0),
        uuid: required(uuid)?,
        job_namespace: job_namespace.flatten(),
        executor_class: required(executor_class)?,
        docker_image: required(docker_image)?,
        args: required(args)?,
        env: required(env)?,
        use_gpu: use_gpu.unwrap_or(true),
        volume: volume.flatten().map(|v| v.0),
        output_upload: output_upload.flatten().map(|u| u.0),
        artifacts_dir: artifacts_dir.flatten(),
        on_trusted_miner: on_trusted_miner.unwrap_or(false),
        download_time_limit: required(download_time_limit)?,
        execution_time_limit: required(execution_time_limit)?,
        upload_time_limit: required(upload_time_limit)?,
        streaming_start_time_limit: required(streaming_start_time_limit)?,
        streaming_details: streaming_details.flatten().map(|s| s.0),
    })
}

/// A protocol type read by this decoder (the protocol types themselves have no `Deserialize`: the validating
/// decoder is their parser).
struct Typed<T>(T);

/// Implements `Deserialize` for `Typed<$ty>` with a map visitor `$read(map) -> Result<$ty, _>`.
macro_rules! typed_object {
    ($ty:ty, $what:literal, $read:ident) => {
        impl<'de> Deserialize<'de> for Typed<$ty> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct ObjectVisitor;
                impl<'de> Visitor<'de> for ObjectVisitor {
                    type Value = Typed<$ty>;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Typed<$ty>, A::Error> {
                        $read(map).map(Typed)
                    }
                }
                d.deserialize_map(ObjectVisitor)
            }
        }
    };
}

typed_object!(JobSignature, "a signature object", signature);
typed_object!(StringMap, "an object of strings", string_map);
typed_object!(JobStreamingDetails, "streaming details", streaming_details);
typed_object!(Volume, "a volume", volume);
typed_object!(
    VolumeSource,
    "a volume other than multi_volume",
    volume_source
);
typed_object!(OutputUpload, "an output upload", output_upload);
typed_object!(ZipUpload, "a zip upload", zip_upload);
typed_object!(SingleFileUpload, "a single-file upload", single_file_upload);

/// The signature object: unknown keys refused, defaults of section 9.6.
fn signature<'de, A: MapAccess<'de>>(mut map: A) -> Result<JobSignature, A::Error> {
    let mut signature_type = None;
    let mut signatory = None;
    let mut timestamp_ns = None;
    let mut signature = None;
    let mut signature_scope = None;
    while let Some(Word(name)) = map.next_key::<Word<'de>>()? {
        match name {
            "signature_type" => put(&mut signature_type, map.next_value::<String>()?)?,
            "signatory" => put(&mut signatory, map.next_value::<String>()?)?,
            "timestamp_ns" => put(&mut timestamp_ns, map.next_value::<Timestamp>()?.0)?,
            "signature" => put(&mut signature, map.next_value::<String>()?)?,
            "signature_scope" => {
                let scope = SignatureScope::from_wire(map.next_value::<Word<'de>>()?.0);
                put(&mut signature_scope, scope.ok_or_else(bail)?)?;
            }
            _ => return Err(bail()),
        }
    }
    Ok(JobSignature {
        signature_type: signature_type.unwrap_or_default(),
        signatory: signatory.unwrap_or_default(),
        timestamp_ns: timestamp_ns.unwrap_or(0),
        signature: required(signature)?,
        signature_scope: signature_scope.unwrap_or(SignatureScope::SignedFields),
    })
}

/// `timestamp_ns`: any JSON integer that fits 64 bits, signed or not (a fraction, or an integer the JSON parser
/// holds as a float, is refused, as by the validating decoder).
struct Timestamp(i128);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TimestampVisitor;
        impl Visitor<'_> for TimestampVisitor {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Timestamp, E> {
                Ok(Timestamp(i128::from(n)))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Timestamp, E> {
                Ok(Timestamp(i128::from(n)))
            }
        }
        // `deserialize_any`, not `deserialize_i128`: serde_json would read integers past 64 bits exactly there,
        // where the validating decoder sees a float.
        d.deserialize_any(TimestampVisitor)
    }
}

/// `env`, `form_fields`, `signed_headers`: strings in received order.
fn string_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<StringMap, A::Error> {
    let mut entries: Vec<(String, String)> = Vec::new();
    while let Some(key) = map.next_key::<String>()? {
        let value = map.next_value::<String>()?;
        entries.push((key, value));
    }
    // A repeated key is left to the validating decoder (first position, last value, as Python's dict).
    StringMap::from_unique(entries).ok_or_else(bail)
}

/// `streaming_details`: unknown keys ignored.
fn streaming_details<'de, A: MapAccess<'de>>(mut map: A) -> Result<JobStreamingDetails, A::Error> {
    let mut public_key = None;
    let mut executor_ip = None;
    while let Some(Word(name)) = map.next_key::<Word<'de>>()? {
        match name {
            "public_key" => put(&mut public_key, map.next_value::<String>()?)?,
            "executor_ip" => put(&mut executor_ip, map.next_value::<Option<String>>()?)?,
            _ => skip(&mut map)?,
        }
    }
    Ok(JobStreamingDetails {
        public_key: required(public_key)?,
        executor_ip: executor_ip.flatten(),
    })
}

/// `volume`: one source, or a `multi_volume` list of them. Unknown keys ignored.
fn volume<'de, A: MapAccess<'de>>(mut map: A) -> Result<Volume, A::Error> {
    let kind = type_first(&mut map, "volume_type")?;
    if kind != "multi_volume" {
        return volume_fields(kind, map).map(Volume::One);
    }
    let mut volumes = None;
    while let Some(Word(name)) = map.next_key::<Word<'de>>()? {
        match name {
            "volumes" => put(&mut volumes, map.next_value::<Vec<Typed<VolumeSource>>>()?)?,
            "volume_type" => return Err(bail()),
            _ => skip(&mut map)?,
        }
    }
    let volumes = required(volumes)?;
    Ok(Volume::Multi(volumes.into_iter().map(|v| v.0).collect()))
}

fn volume_source<'de, A: MapAccess<'de>>(mut map: A) -> Result<VolumeSource, A::Error> {
    let kind = type_first(&mut map, "volume_type")?;
    volume_fields(kind, map)
}

/// The keys after `volume_type` of a source of type `kind` (not `multi_volume`). Keys of other types ignored.
fn volume_fields<'de, A: MapAccess<'de>>(kind: &str, mut map: A) -> Result<VolumeSource, A::Error> {
    let mut contents = None;
    let mut url = None;
    let mut relative_path = None;
    let mut repo_id = None;
    let mut repo_type = None;
    let mut revision = None;
    let mut allow_patterns = None;
    let mut token = None;
    let huggingface = kind == "huggingface_volume";
    while let Some(Word(name)) = map.next_key::<Word<'de>>()? {
        match (kind, name) {
            (_, "volume_type") => return Err(bail()),
            ("inline" | "zip_url", "contents") => put(&mut contents, map.next_value::<String>()?)?,
            ("single_file", "url") => put(&mut url, map.next_value::<String>()?)?,
            ("single_file", "relative_path") => {
                put(&mut relative_path, Some(map.next_value::<String>()?))?
            }
            (_, "relative_path") if kind != "single_file" => {
                put(&mut relative_path, map.next_value::<Option<String>>()?)?
            }
            (_, "repo_id") if huggingface => put(&mut repo_id, map.next_value::<String>()?)?,
            (_, "repo_type") if huggingface => put(&mut repo_type, map.next_value()?)?,
            (_, "revision") if huggingface => put(&mut revision, map.next_value()?)?,
            (_, "allow_patterns") if huggingface => {
                put(&mut allow_patterns, map.next_value::<Option<Patterns>>()?)?
            }
            (_, "token") if huggingface => put(&mut token, map.next_value()?)?,
            _ => skip(&mut map)?,
        }
    }
    let relative_path: Option<String> = relative_path.flatten();
    Ok(match kind {
        "inline" => VolumeSource::Inline {
            contents: required(contents)?,
            relative_path,
        },
        "zip_url" => VolumeSource::ZipUrl {
            contents: required(contents)?,
            relative_path,
        },
        "single_file" => VolumeSource::SingleFile {
            url: required(url)?,
            relative_path: required(relative_path)?,
        },
        "huggingface_volume" => VolumeSource::Huggingface {
            repo_id: required(repo_id)?,
            repo_type: repo_type.flatten(),
            revision: revision.flatten(),
            relative_path,
            allow_patterns: allow_patterns.flatten().map(|p| p.0),
            token: token.flatten(),
        },
        // `multi_volume` inside `multi_volume`, or an unknown type.
        _ => return Err(bail()),
    })
}

/// `allow_patterns`: one string or a list of strings.
struct Patterns(AllowPatterns);

impl<'de> Deserialize<'de> for Patterns {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PatternsVisitor;
        impl<'de> Visitor<'de> for PatternsVisitor {
            type Value = Patterns;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Patterns, E> {
                Ok(Patterns(AllowPatterns::One(text.to_owned())))
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Patterns, S::Error> {
                let mut patterns = Vec::new();
                while let Some(pattern) = seq.next_element::<String>()? {
                    patterns.push(pattern);
                }
                Ok(Patterns(AllowPatterns::Many(patterns)))
            }
        }
        d.deserialize_any(PatternsVisitor)
    }
}

/// `output_upload`: `multi_upload`, or one bare zip or single-file upload. Unknown keys ignored.
fn output_upload<'de, A: MapAccess<'de>>(mut map: A) -> Result<OutputUpload, A::Error> {
    let kind = type_first(&mut map, "output_upload_type")?;
    match kind {
        "multi_upload" => {}
        "zip_and_http_post" | "zip_and_http_put" => {
            return zip_fields(kind, map).map(OutputUpload::Zip);
        }
        _ => return single_file_fields(kind, map).map(OutputUpload::SingleFile),
    }
    let mut uploads = None;
    let mut system_output = None;
    while let Some(Word(name)) = map.next_key::<Word<'de>>()? {
        match name {
            "uploads" => put(
                &mut uploads,
                map.next_value::<Vec<Typed<SingleFileUpload>>>()?,
            )?,
            "system_output" => put(
                &mut system_output,
                map.next_value::<Option<Typed<ZipUpload>>>()?,
            )?,
            "output_upload_type" => return Err(bail()),
            _ => skip(&mut map)?,
        }
    }
    Ok(OutputUpload::Multi {
        uploads: required(uploads)?.into_iter().map(|u| u.0).collect(),
        system_output: system_output.flatten().map(|z| z.0),
    })
}

fn zip_upload<'de, A: MapAccess<'de>>(mut map: A) -> Result<ZipUpload, A::Error> {
    let kind = type_first(&mut map, "output_upload_type")?;
    zip_fields(kind, map)
}

fn zip_fields<'de, A: MapAccess<'de>>(kind: &str, mut map: A) -> Result<ZipUpload, A::Error> {
    let post = match kind {
        "zip_and_http_post" => true,
        "zip_and_http_put" => false,
        _ => return Err(bail()),
    };
    let mut url = None;
    let mut form_fields = None;
    while let Some(Word(name)) = map.next_key::<Word<'de>>()? {
        match name {
            "url" => put(&mut url, map.next_value::<String>()?)?,
            "form_fields" if post => put(
                &mut form_fields,
                map.next_value::<Option<Typed<StringMap>>>()?,
            )?,
            "output_upload_type" => return Err(bail()),
            _ => skip(&mut map)?,
        }
    }
    let url = required(url)?;
    Ok(if post {
        ZipUpload::Post {
            url,
            form_fields: form_fields.flatten().map(|f| f.0),
        }
    } else {
        ZipUpload::Put { url }
    })
}

fn single_file_upload<'de, A: MapAccess<'de>>(mut map: A) -> Result<SingleFileUpload, A::Error> {
    let kind = type_first(&mut map, "output_upload_type")?;
    single_file_fields(kind, map)
}

fn single_file_fields<'de, A: MapAccess<'de>>(
    kind: &str,
    mut map: A,
) -> Result<SingleFileUpload, A::Error> {
    let post = match kind {
        "single_file_post" => true,
        "single_file_put" => false,
        _ => return Err(bail()),
    };
    let mut url = None;
    let mut form_fields = None;
    let mut relative_path = None;
    let mut signed_headers = None;
    while let Some(Word(name)) = map.next_key::<Word<'de>>()? {
        match name {
            "url" => put(&mut url, map.next_value::<String>()?)?,
            "form_fields" if post => put(
                &mut form_fields,
                map.next_value::<Option<Typed<StringMap>>>()?,
            )?,
            "relative_path" => put(&mut relative_path, map.next_value::<String>()?)?,
            "signed_headers" => put(
                &mut signed_headers,
                map.next_value::<Option<Typed<StringMap>>>()?,
            )?,
            "output_upload_type" => return Err(bail()),
            _ => skip(&mut map)?,
        }
    }
    let url = required(url)?;
    let relative_path = required(relative_path)?;
    check_relative_path(&relative_path).map_err(|_| bail())?;
    let signed_headers = signed_headers.flatten().map(|h| h.0);
    Ok(if post {
        SingleFileUpload::Post {
            url,
            form_fields: form_fields.flatten().map(|f| f.0),
            relative_path,
            signed_headers,
        }
    } else {
        SingleFileUpload::Put {
            url,
            relative_path,
            signed_headers,
        }
    })
}
