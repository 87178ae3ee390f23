//! The typed decoder (one pass, no `Value` tree) and the validating decoder give the same result on every frame:
//! the same message, or the same error text. Checked on every committed decode seed and on thousands of one-edit
//! variants of each (a key removed, repeated, moved, escaped, or its value replaced by every JSON type, a number out
//! of range, a lone surrogate, nesting past the parser's limit), which is where a second decoder would drift.

use std::path::Path;

use facilitator_client::protocol::fuzzing::decoders_agree;
use serde_json::{Map, Value, json};

/// A string that `mark` turns into raw JSON text after serialization (so that a variant can hold what a `Value`
/// cannot: a repeated key, a number out of range, an escaped key).
fn mark(i: usize) -> String {
    format!("\u{0}MARK{i}")
}

/// Serializes `value` and replaces each marked string literal with its raw text (a mark without raw text stays).
fn render(value: &Value, raws: &[String]) -> String {
    const MARK: &str = "\"\\u0000MARK";
    let text = value.to_string();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        let after = &rest[at + MARK.len()..];
        let digits = after.find('"').expect("a mark ends with a quote");
        match after[..digits]
            .parse::<usize>()
            .ok()
            .and_then(|i| raws.get(i))
        {
            Some(raw) => out.push_str(raw),
            None => out.push_str(&rest[at..at + MARK.len() + digits + 1]),
        }
        rest = &after[digits + 1..];
    }
    out.push_str(rest);
    out
}

/// Raw values that stress what the validating decoder refuses or reads differently.
fn raw_values() -> Vec<String> {
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    [
        "null",
        "true",
        "0",
        "-1",
        "-0",
        "1.5",
        "1e2",
        "1e400",
        "18446744073709551615",
        "18446744073709551616",
        "9223372036854775808",
        "\"\"",
        "\"x\"",
        "\"\\ud800\"",
        "\"\\u0041\\n\"",
        "[]",
        "[\"x\", 1]",
        "[\"x\"]",
        "{}",
        "{\"a\": \"b\"}",
        "{\"a\": 1}",
        "{\"volume_type\": \"inline\", \"contents\": \"c\"}",
        "{\"output_upload_type\": \"single_file_put\", \"url\": \"u\", \"relative_path\": \"a\"}",
        "{\"output_upload_type\": \"zip_and_http_put\", \"url\": \"u\"}",
        &deep,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The paths of every object in `value` (as JSON pointers).
fn object_paths(value: &Value, path: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            out.push(path.clone());
            for (key, item) in map {
                object_paths(item, format!("{path}/{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                object_paths(item, format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Every one-edit variant of `root`'s text, with the object at `path` edited.
fn variants(root: &Value, path: &str) -> Vec<String> {
    let raws = raw_values();
    let Some(Value::Object(target)) = root.pointer(path) else {
        return Vec::new();
    };
    let keys: Vec<String> = target.keys().cloned().collect();
    let mut out = Vec::new();
    let edit = |f: &dyn Fn(&mut Map<String, Value>), extra: &[String]| -> String {
        let mut copy = root.clone();
        if let Some(Value::Object(map)) = copy.pointer_mut(path) {
            f(map);
        }
        let mut all = raws.clone();
        all.extend_from_slice(extra);
        render(&copy, &all)
    };
    let n = raws.len();
    for key in &keys {
        out.push(edit(
            &|m| {
                m.shift_remove(key);
            },
            &[],
        ));
        // Moved to the end.
        out.push(edit(
            &|m| {
                if let Some(v) = m.shift_remove(key) {
                    m.insert(key.clone(), v);
                }
            },
            &[],
        ));
        for i in 0..n {
            out.push(edit(
                &|m| {
                    m.insert(key.clone(), Value::String(mark(i)));
                },
                &[],
            ));
        }
        // Repeated: with the same value, and with another one.
        let key_literal = Value::String(key.clone()).to_string();
        for value in [
            target[key].to_string(),
            "\"x\"".to_string(),
            "null".to_string(),
        ] {
            out.push(edit(
                &|m| {
                    m.insert(mark(n), Value::String(mark(n + 1)));
                },
                &[key_literal.clone(), value.clone()],
            ));
        }
        // The key written with an escape (`\u0061` for `a`).
        let escaped: String = key
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("\\u{:04x}", c as u32)
                } else {
                    c.to_string()
                }
            })
            .collect();
        out.push(
            edit(
                &|m| {
                    if let Some(v) = m.shift_remove(key) {
                        m.insert(mark(n), v);
                    }
                },
                &[],
            )
            .replacen(
                &format!("\"\\u0000MARK{n}\":"),
                &format!("\"{escaped}\":"),
                1,
            ),
        );
    }
    for i in [0, 7, 24] {
        out.push(edit(
            &|m| {
                m.insert("zz".into(), Value::String(mark(i)));
            },
            &[],
        ));
    }
    out
}

fn seeds() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/decode");
    let mut texts: Vec<String> = std::fs::read_dir(&dir)
        .expect("fuzz/seeds/decode exists")
        .map(|entry| {
            let data = std::fs::read(entry.expect("readable entry").path()).expect("readable seed");
            String::from_utf8_lossy(&data).into_owned()
        })
        .collect();
    texts.sort();
    texts.extend(
        [
            json!({"status": "success", "errors": []}),
            json!({"status": "error", "errors": []}),
            json!({"errors": [], "status": "success"}),
        ]
        .iter()
        .map(Value::to_string),
    );
    texts
}

#[test]
fn both_decoders_agree_on_every_seed_and_every_one_edit_variant() {
    let (mut checked, mut typed) = (0, 0);
    for seed in seeds() {
        typed += usize::from(decoders_agree(&seed));
        checked += 1;
        let Ok(root @ Value::Object(_)) = serde_json::from_str::<Value>(&seed) else {
            continue;
        };
        let mut paths = Vec::new();
        object_paths(&root, String::new(), &mut paths);
        for path in paths {
            for text in variants(&root, &path) {
                typed += usize::from(decoders_agree(&text));
                checked += 1;
            }
        }
    }
    // Both ways are exercised: many variants stay valid (the typed decoder decodes them), most do not.
    println!("{checked} frames, {typed} decoded by the typed decoder");
    assert!(checked > 10_000, "only {checked} frames checked");
    assert!(
        typed > 1_000,
        "the typed decoder decoded only {typed} of {checked} frames"
    );
}

#[test]
fn a_large_env_decodes_in_one_pass_and_a_repeated_key_in_it_is_left_to_the_validating_decoder() {
    let job = facilitator_client::protocol::testing::unsigned_job_text(
        "7d8a9f4e-1b2c-4d3e-8f40-5a6b7c8d9e01",
    );
    let entries: Vec<String> = (0..40).map(|i| format!("\"K{i:02}\": \"{i}\"")).collect();
    let large = job.replace(
        r#""env": {}"#,
        &format!(r#""env": {{{}}}"#, entries.join(", ")),
    );
    assert!(
        decoders_agree(&large),
        "a large env without repeats decodes in one pass"
    );
    let mut repeated = entries.clone();
    repeated.push("\"K03\": \"again\"".to_owned());
    let repeated = job.replace(
        r#""env": {}"#,
        &format!(r#""env": {{{}}}"#, repeated.join(", ")),
    );
    assert!(
        !decoders_agree(&repeated),
        "a repeated key goes to the validating decoder"
    );
    let Ok(facilitator_client::protocol::ServerMessage::JobRequest(decoded)) =
        facilitator_client::protocol::decode_server_frame(&repeated, 1 << 20)
    else {
        panic!("the job decodes");
    };
    assert_eq!(decoded.env().len(), 40);
    assert_eq!(decoded.env().get("K03"), Some("again"));
    assert_eq!(decoded.env().iter().nth(3), Some(("K03", "again")));
}
