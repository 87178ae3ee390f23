//! `V2JobRequest` (PROTOCOL.md 4.2). PLACEHOLDER: the protocol issue replaces this with the full model.

use std::sync::Arc;

use serde_json::{Map, Value};

/// A job request as received: its parsed fields and the exact text (the exec handler gets the text on stdin).
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequest {
    uuid: String,
    text: Arc<str>,
    fields: Map<String, Value>,
}

impl JobRequest {
    /// Parses the wire text of a `V2JobRequest`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let fields: Map<String, Value> = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let uuid = fields.get("uuid").and_then(Value::as_str).ok_or("missing uuid")?.to_owned();
        Ok(JobRequest { uuid, text: Arc::from(text), fields })
    }

    /// The job's UUID, as received.
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// The exact text received.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The parsed top-level object, in received key order.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }
}
