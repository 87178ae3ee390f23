//! Reading typed fields out of parsed JSON objects with errors that name the field's path
//! (`volume.volumes[2].relative_path: ...`). Internal to the protocol module.
//!
//! Owns the parse rules shared by the server messages: absent vs `null` vs wrong type, unknown keys, strict integers
//! and booleans. It never decides which keys a message has (the message modules do) and never panics on any input.

use std::fmt;

use serde_json::{Map, Value};

/// What is wrong with one field of a message, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    /// Dotted path from the message root, e.g. `output_upload.uploads[0].url`; empty for the message itself.
    pub path: String,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.problem)
        } else {
            write!(f, "{}: {}", self.path, self.problem)
        }
    }
}

/// A JSON type name for messages: "a string", "null", ...
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One JSON object being read, with its path.
#[derive(Clone, Copy)]
pub(crate) struct Obj<'a> {
    pub map: &'a Map<String, Value>,
    pub path: &'a str,
}

impl<'a> Obj<'a> {
    /// The object at `path`, or an error if `value` is not an object.
    pub(crate) fn new(value: &'a Value, path: &'a str) -> Result<Obj<'a>, FieldError> {
        match value {
            Value::Object(map) => Ok(Obj { map, path }),
            other => Err(FieldError {
                path: path.to_owned(),
                problem: format!("expected an object, found {}", kind(other)),
            }),
        }
    }

    /// The path of one of this object's keys.
    pub(crate) fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(crate) fn error(&self, key: &str, problem: impl Into<String>) -> FieldError {
        FieldError {
            path: self.child(key),
            problem: problem.into(),
        }
    }

    fn wrong_type(&self, key: &str, expected: &str, found: &Value) -> FieldError {
        self.error(key, format!("expected {expected}, found {}", kind(found)))
    }

    /// Rejects keys that are not in `allowed`.
    pub(crate) fn deny_unknown(&self, allowed: &[&str]) -> Result<(), FieldError> {
        match self.map.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(key) => Err(FieldError {
                path: self.path.to_owned(),
                problem: format!(
                    "unknown key {} (allowed: {})",
                    brief(key),
                    allowed.join(", ")
                ),
            }),
            None => Ok(()),
        }
    }

    /// A value that must be present (`null` counts as present).
    pub(crate) fn required(&self, key: &str) -> Result<&'a Value, FieldError> {
        self.map.get(key).ok_or_else(|| self.error(key, "missing"))
    }

    /// A value that is absent or `null` -> `None`.
    pub(crate) fn optional(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn string(&self, key: &str) -> Result<String, FieldError> {
        match self.required(key)? {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.wrong_type(key, "a string", other)),
        }
    }

    pub(crate) fn opt_string(&self, key: &str) -> Result<Option<String>, FieldError> {
        match self.optional(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.wrong_type(key, "a string or null", other)),
        }
    }

    /// A string with a default when absent (`null` is a type error, as in pydantic).
    pub(crate) fn string_or(&self, key: &str, default: &str) -> Result<String, FieldError> {
        match self.map.get(key) {
            None => Ok(default.to_owned()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(self.wrong_type(key, "a string", other)),
        }
    }

    /// A boolean with a default when absent (`null` is a type error).
    pub(crate) fn bool_or(&self, key: &str, default: bool) -> Result<bool, FieldError> {
        match self.map.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.wrong_type(key, "true or false", other)),
        }
    }

    pub(crate) fn int(&self, key: &str) -> Result<i64, FieldError> {
        let value = self.required(key)?;
        value.as_i64().ok_or_else(|| match value {
            Value::Number(n) if n.is_u64() => self.error(key, "integer out of range"),
            other => self.wrong_type(key, "an integer", other),
        })
    }

    pub(crate) fn array(&self, key: &str) -> Result<&'a Vec<Value>, FieldError> {
        match self.required(key)? {
            Value::Array(items) => Ok(items),
            other => Err(self.wrong_type(key, "an array", other)),
        }
    }

    pub(crate) fn string_array(&self, key: &str) -> Result<Vec<String>, FieldError> {
        let path = self.child(key);
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(FieldError {
                    path: format!("{path}[{i}]"),
                    problem: format!("expected a string, found {}", kind(other)),
                }),
            })
            .collect()
    }
}

/// At most this many characters of received data are quoted in an error message.
const BRIEF_LIMIT: usize = 64;

/// `text` quoted for an error message, cut to a few dozen characters so a huge value cannot flood logs or a
/// rejection message.
pub(crate) fn brief(text: &str) -> String {
    match text.char_indices().nth(BRIEF_LIMIT) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
    }
}

/// A received JSON value for an error message: its JSON text, cut like [`brief`].
pub(crate) fn brief_json(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(BRIEF_LIMIT) {
        None => text,
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}
