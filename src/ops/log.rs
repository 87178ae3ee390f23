//! Logging for operators: `--log-format text|json` on top of `env_logger`, and a rate limiter for warnings that a
//! misbehaving peer could otherwise repeat once per frame.
//!
//! JSON lines carry `ts`, `level`, `target`, `msg`, then the record's structured key-values (`log`'s `kv`
//! feature: `log::info!(job_uuid = uuid.as_str(); "...")`), so `job_uuid`, `from`, `to` and `reason` are fields a
//! log stack can index rather than words to grep. The text format is env_logger's, with the same key-values
//! appended. Neither format ever sees a secret: the hotkey seed is never passed to a log macro (a test greps a
//! real run's output in both formats), and this module only formats what it is given.
//! The rate limiter is pure: it is told the time, and it keeps one slot per `&'static str` kind, so its memory is
//! bounded by the number of kinds in the program's source.

use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::time::SystemTime;

use log::kv::{Key, Value, VisitSource};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// env_logger's human format (`[2026-12-01T00:00:00.000Z INFO target] message key=value`).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `--log-format` was neither `text` nor `json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--log-format must be `text` or `json`, not {0:?}")]
pub struct LogFormatError(pub String);

impl FromStr for LogFormat {
    type Err = LogFormatError;

    fn from_str(text: &str) -> Result<LogFormat, LogFormatError> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(LogFormatError(other.to_owned())),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Installs the global logger on stderr: `RUST_LOG` if set, else `default_level`; in `format`. A logger already
/// installed (tests) is left as it is.
pub fn init(format: LogFormat, default_level: &str) {
    let _ = builder(format, default_level).try_init();
}

/// The logger [`init`] installs, still to be built (tests point its target elsewhere).
pub fn builder(format: LogFormat, default_level: &str) -> env_logger::Builder {
    let env = env_logger::Env::default().default_filter_or(default_level);
    let mut builder = env_logger::Builder::from_env(env);
    match format {
        LogFormat::Text => {
            builder.format_timestamp_millis();
        }
        LogFormat::Json => {
            builder.format(|buf, record| {
                let line = json_line(record, &rfc3339_millis(SystemTime::now()));
                writeln!(buf, "{line}")
            });
        }
    }
    builder
}

/// One log record as a JSON object: `ts`, `level`, `target`, `msg`, then the record's key-values in order
/// (numbers and booleans as JSON numbers and booleans, anything else as its `Display` text). A key-value named like
/// one of the four fixed keys is written as `kv_<key>` so it cannot replace them.
pub fn json_line(record: &log::Record<'_>, ts: &str) -> String {
    let mut object = serde_json::Map::new();
    object.insert("ts".into(), ts.into());
    object.insert("level".into(), record.level().as_str().into());
    object.insert("target".into(), record.target().into());
    object.insert("msg".into(), record.args().to_string().into());
    let mut fields = Fields(&mut object);
    // Visiting never fails: `Fields::visit_pair` always returns Ok.
    let _ = record.key_values().visit(&mut fields);
    serde_json::Value::Object(object).to_string()
}

struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let key = match key.as_str() {
            reserved @ ("ts" | "level" | "target" | "msg") => format!("kv_{reserved}"),
            other => other.to_owned(),
        };
        let json = if let Some(b) = value.to_bool() {
            b.into()
        } else if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(f) = value.to_f64().filter(|f| f.is_finite()) {
            f.into()
        } else {
            value.to_string().into()
        };
        self.0.insert(key, json);
        Ok(())
    }
}

/// `2026-12-01T00:31:28.123Z`: UTC, millisecond precision (times before 1970 print as the epoch).
pub fn rfc3339_millis(time: SystemTime) -> String {
    let t = crate::utc::Utc::of(time);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
        t.micros / 1000
    )
}

pub(crate) use crate::ratelimit::{RateLimiter, suppressed_note};

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn json_lines_have_the_fixed_keys_and_the_structured_fields() {
        let kvs: [(&str, &dyn log::kv::ToValue); 4] = [
            ("job_uuid", &"7b7ad8d5-0000-4000-8000-000000000001"),
            ("from", &"Running"),
            ("attempt", &3u64),
            ("msg", &"sneaky"),
        ];
        let record = log::Record::builder()
            .level(log::Level::Warn)
            .target("facilitator_client::runtime")
            .args(format_args!("job rejected: \"quoted\"\nand a newline"))
            .key_values(&kvs)
            .build();
        let line = json_line(&record, "2026-12-01T00:00:00.000Z");
        assert!(!line.contains('\n'), "one line: {line}");
        let value: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(value["ts"], "2026-12-01T00:00:00.000Z");
        assert_eq!(value["level"], "WARN");
        assert_eq!(value["target"], "facilitator_client::runtime");
        assert_eq!(value["msg"], "job rejected: \"quoted\"\nand a newline");
        assert_eq!(value["job_uuid"], "7b7ad8d5-0000-4000-8000-000000000001");
        assert_eq!(value["from"], "Running");
        assert_eq!(value["attempt"], 3);
        assert_eq!(value["kv_msg"], "sneaky");
        let keys: Vec<&str> = value
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys[..4], ["ts", "level", "target", "msg"]);
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |secs: u64, millis: u64| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
        };
        assert_eq!(rfc3339_millis(at(0, 0)), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day in a century leap year) 12:34:56.789
        assert_eq!(
            rfc3339_millis(at(951_827_696, 789)),
            "2000-02-29T12:34:56.789Z"
        );
        assert_eq!(
            rfc3339_millis(at(1_798_761_088, 5)),
            "2026-12-31T23:51:28.005Z"
        );
        assert_eq!(
            rfc3339_millis(SystemTime::UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn log_formats_parse() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("JSON".parse::<LogFormat>().is_err());
    }
}
