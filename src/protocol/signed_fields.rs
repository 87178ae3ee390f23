//! The signed payload of a job (docs/PROTOCOL.md 9.2-9.4) written straight from its typed fields, for the
//! signature check of every job: the SignedFields text (compact JSON as `serde_json` writes it: no spaces; `\"`,
//! `\\`, `\b`, `\f`, `\n`, `\r`, `\t` and `\u00xx` escapes; everything else, non-ASCII included, raw; keys in the
//! model's declaration order) as a Python `json.dumps` string literal (the double encoding: ASCII only), in one
//! pass.
//!
//! It must write exactly `pyjson::string_literal(&fields.signed_fields().to_string())`: the `Value` form is the
//! readable definition of what is signed, and `tests/protocol_props.rs` holds this writer to it for arbitrary
//! fields, `tests/protocol_vectors.rs` to the real library's bytes. It never decides which fields are signed on its
//! own.

use std::fmt::Write as _;

use super::job::{
    AllowPatterns, JobRequestFields, JobStreamingDetails, OutputUpload, SingleFileUpload,
    StringMap, Volume, VolumeSource, ZipUpload,
};

/// A constant piece of the SignedFields text (ASCII, no control characters), as it appears inside the payload's
/// string literal: each `"` and `\` escaped, at compile time.
macro_rules! lit {
    ($text:literal) => {{
        const TEXT: &str = $text;
        const LEN: usize = escaped_len(TEXT);
        const BYTES: [u8; LEN] = escaped::<LEN>(TEXT);
        const ESCAPED: &str = match std::str::from_utf8(&BYTES) {
            Ok(escaped) => escaped,
            Err(_) => panic!("escaping ASCII gives ASCII"),
        };
        ESCAPED
    }};
}

const fn escaped_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    let (mut i, mut len) = (0, 0);
    while i < bytes.len() {
        assert!(
            bytes[i] >= b' ' && bytes[i] <= b'~',
            "constant pieces are printable ASCII"
        );
        len += if bytes[i] == b'"' || bytes[i] == b'\\' {
            2
        } else {
            1
        };
        i += 1;
    }
    len
}

const fn escaped<const LEN: usize>(text: &str) -> [u8; LEN] {
    let bytes = text.as_bytes();
    let mut out = [0u8; LEN];
    let (mut i, mut j) = (0, 0);
    while i < bytes.len() {
        if bytes[i] == b'"' || bytes[i] == b'\\' {
            out[j] = b'\\';
            j += 1;
        }
        out[j] = bytes[i];
        i += 1;
        j += 1;
    }
    out
}

impl JobRequestFields {
    /// The signed payload: the SignedFields text as a Python string literal.
    pub(super) fn write_signed_payload(&self, out: &mut String) {
        out.push('"');
        out.push_str(lit!("{\"executor_class\":"));
        string(out, self.executor_class.as_str());
        out.push_str(lit!(",\"docker_image\":"));
        string(out, &self.docker_image);
        out.push_str(lit!(",\"args\":"));
        strings(out, &self.args);
        out.push_str(lit!(",\"env\":"));
        string_map(out, &self.env);
        out.push_str(lit!(",\"use_gpu\":"));
        boolean(out, self.use_gpu);
        // `""` and null sign the same (the model's default).
        out.push_str(lit!(",\"artifacts_dir\":"));
        string(out, self.artifacts_dir.as_deref().unwrap_or_default());
        out.push_str(lit!(",\"on_trusted_miner\":"));
        boolean(out, self.on_trusted_miner);
        for (key, value) in [
            (lit!(",\"download_time_limit\":"), self.download_time_limit),
            (
                lit!(",\"execution_time_limit\":"),
                self.execution_time_limit,
            ),
            (lit!(",\"upload_time_limit\":"), self.upload_time_limit),
            (
                lit!(",\"streaming_start_time_limit\":"),
                self.streaming_start_time_limit,
            ),
        ] {
            out.push_str(key);
            // Writing to a String cannot fail.
            let _ = write!(out, "{value}");
        }
        out.push_str(lit!(",\"streaming_details\":"));
        match &self.streaming_details {
            None => out.push_str("null"),
            Some(details) => streaming_details(out, details),
        }
        out.push_str(lit!(",\"volumes\":["));
        match &self.volume {
            None => {}
            Some(Volume::One(source)) => volume_source(out, source),
            Some(Volume::Multi(sources)) => {
                for (i, source) in sources.iter().enumerate() {
                    comma(out, i);
                    volume_source(out, source);
                }
            }
        }
        out.push_str(lit!("],\"uploads\":["));
        match &self.output_upload {
            None => {}
            Some(OutputUpload::Zip(zip)) => zip_upload(out, zip),
            Some(OutputUpload::SingleFile(file)) => single_file_upload(out, file),
            // `system_output` is not signed (section 9.2).
            Some(OutputUpload::Multi { uploads, .. }) => {
                for (i, file) in uploads.iter().enumerate() {
                    comma(out, i);
                    single_file_upload(out, file);
                }
            }
        }
        out.push_str(lit!("]}"));
        out.push('"');
    }
}

fn comma(out: &mut String, index: usize) {
    if index > 0 {
        out.push(',');
    }
}

fn boolean(out: &mut String, value: bool) {
    out.push_str(if value { "true" } else { "false" });
}

/// A JSON string literal as `serde_json` writes it, as it appears inside the payload's literal: escaped twice.
fn string(out: &mut String, text: &str) {
    out.push_str(lit!("\""));
    // Runs of printable ASCII other than `"` and `\` are the same in both encodings: copied as they are.
    let bytes = text.as_bytes();
    let (mut plain, mut i) = (0, 0);
    while let Some(&byte) = bytes.get(i) {
        if matches!(byte, b' '..=b'~') && byte != b'"' && byte != b'\\' {
            i += 1;
            continue;
        }
        out.push_str(&text[plain..i]);
        let c = text[i..].chars().next().unwrap_or_default();
        match c {
            // serde_json's escapes, then Python's escape of their backslash (and of the quote).
            '"' => out.push_str(r#"\\\""#),
            '\\' => out.push_str(r"\\\\"),
            '\n' => out.push_str(r"\\n"),
            '\r' => out.push_str(r"\\r"),
            '\t' => out.push_str(r"\\t"),
            '\u{8}' => out.push_str(r"\\b"),
            '\u{c}' => out.push_str(r"\\f"),
            '\0'..='\u{1f}' => {
                out.push_str(r"\\u00");
                hex_digits(out, c as u16, 2);
            }
            // Raw in serde_json's text (DEL and non-ASCII), a `\uxxxx` escape per UTF-16 unit in Python's.
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(r"\u");
                    hex_digits(out, *unit, 4);
                }
            }
        }
        // `i` is at a character boundary: it only ever moves over ASCII bytes or whole characters.
        i += c.len_utf8();
        plain = i;
    }
    out.push_str(&text[plain..]);
    out.push_str(lit!("\""));
}

/// The last `count` lowercase hex digits of `value`.
fn hex_digits(out: &mut String, value: u16, count: u32) {
    for shift in (0..count).rev() {
        out.push(HEX[usize::from((value >> (shift * 4)) & 0xf)]);
    }
}

const HEX: [char; 16] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b', 'c', 'd', 'e', 'f',
];

fn opt_string(out: &mut String, text: Option<&str>) {
    match text {
        None => out.push_str("null"),
        Some(text) => string(out, text),
    }
}

fn strings(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        comma(out, i);
        string(out, item);
    }
    out.push(']');
}

fn string_map(out: &mut String, map: &StringMap) {
    out.push('{');
    for (i, (key, value)) in map.iter().enumerate() {
        comma(out, i);
        string(out, key);
        out.push(':');
        string(out, value);
    }
    out.push('}');
}

fn opt_string_map(out: &mut String, map: Option<&StringMap>) {
    match map {
        None => out.push_str("null"),
        Some(map) => string_map(out, map),
    }
}

fn streaming_details(out: &mut String, details: &JobStreamingDetails) {
    out.push_str(lit!("{\"public_key\":"));
    string(out, &details.public_key);
    out.push_str(lit!(",\"executor_ip\":"));
    opt_string(out, details.executor_ip.as_deref());
    out.push('}');
}

/// Every key of the source's type, in declaration order (as `VolumeSource::to_value`).
fn volume_source(out: &mut String, source: &VolumeSource) {
    match source {
        VolumeSource::Inline {
            contents,
            relative_path,
        }
        | VolumeSource::ZipUrl {
            contents,
            relative_path,
        } => {
            out.push_str(if matches!(source, VolumeSource::Inline { .. }) {
                lit!("{\"volume_type\":\"inline\",\"contents\":")
            } else {
                lit!("{\"volume_type\":\"zip_url\",\"contents\":")
            });
            string(out, contents);
            out.push_str(lit!(",\"relative_path\":"));
            opt_string(out, relative_path.as_deref());
        }
        VolumeSource::SingleFile { url, relative_path } => {
            out.push_str(lit!("{\"volume_type\":\"single_file\",\"url\":"));
            string(out, url);
            out.push_str(lit!(",\"relative_path\":"));
            string(out, relative_path);
        }
        VolumeSource::Huggingface {
            repo_id,
            repo_type,
            revision,
            relative_path,
            allow_patterns,
            token,
        } => {
            out.push_str(lit!("{\"volume_type\":\"huggingface_volume\",\"repo_id\":"));
            string(out, repo_id);
            out.push_str(lit!(",\"repo_type\":"));
            opt_string(out, repo_type.as_deref());
            out.push_str(lit!(",\"revision\":"));
            opt_string(out, revision.as_deref());
            out.push_str(lit!(",\"relative_path\":"));
            opt_string(out, relative_path.as_deref());
            out.push_str(lit!(",\"allow_patterns\":"));
            match allow_patterns {
                None => out.push_str("null"),
                Some(AllowPatterns::One(pattern)) => string(out, pattern),
                Some(AllowPatterns::Many(patterns)) => strings(out, patterns),
            }
            out.push_str(lit!(",\"token\":"));
            opt_string(out, token.as_deref());
        }
    }
    out.push('}');
}

/// As `ZipUpload::to_value`.
fn zip_upload(out: &mut String, zip: &ZipUpload) {
    match zip {
        ZipUpload::Post { url, form_fields } => {
            out.push_str(lit!(
                "{\"output_upload_type\":\"zip_and_http_post\",\"url\":"
            ));
            string(out, url);
            out.push_str(lit!(",\"form_fields\":"));
            opt_string_map(out, form_fields.as_ref());
        }
        ZipUpload::Put { url } => {
            out.push_str(lit!(
                "{\"output_upload_type\":\"zip_and_http_put\",\"url\":"
            ));
            string(out, url);
        }
    }
    out.push('}');
}

/// As `SingleFileUpload::to_value`.
fn single_file_upload(out: &mut String, file: &SingleFileUpload) {
    match file {
        SingleFileUpload::Post {
            url,
            form_fields,
            relative_path,
            signed_headers,
        } => {
            out.push_str(lit!(
                "{\"output_upload_type\":\"single_file_post\",\"url\":"
            ));
            string(out, url);
            out.push_str(lit!(",\"form_fields\":"));
            opt_string_map(out, form_fields.as_ref());
            out.push_str(lit!(",\"relative_path\":"));
            string(out, relative_path);
            out.push_str(lit!(",\"signed_headers\":"));
            opt_string_map(out, signed_headers.as_ref());
        }
        SingleFileUpload::Put {
            url,
            relative_path,
            signed_headers,
        } => {
            out.push_str(lit!("{\"output_upload_type\":\"single_file_put\",\"url\":"));
            string(out, url);
            out.push_str(lit!(",\"relative_path\":"));
            string(out, relative_path);
            out.push_str(lit!(",\"signed_headers\":"));
            opt_string_map(out, signed_headers.as_ref());
        }
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::string;
    use crate::protocol::pyjson;

    #[test]
    fn strings_are_escaped_as_serde_json_then_python_escape_them() {
        let all: String = (0u32..=0x80)
            .filter_map(char::from_u32)
            .chain(['é', '\u{2028}', '😀'])
            .collect();
        for text in [all.as_str(), "", "plain", "\"\\", "a\u{1f}b", "\u{7f}", "é"] {
            let mut ours = String::new();
            string(&mut ours, text);
            let twice = pyjson::string_literal(&serde_json::Value::from(text).to_string());
            assert_eq!(ours, twice[1..twice.len() - 1], "{text:?}");
        }
    }
}
