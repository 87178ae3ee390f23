//! The celery handler's settings, and the one way its broker URL is ever shown: with the password replaced.
//!
//! Owns: defaults (queue `organic_jobs`, job timeout 600 s: the validator's own wait), checks of the values, and
//! [`redact_url`]. Must never: print, log or `Debug`-format a broker URL with its password.

use std::fmt;
use std::time::Duration;

/// The validator's queue for organic jobs.
pub const DEFAULT_QUEUE: &str = "organic_jobs";

/// How long a job may take from being queued to its terminal status: the validator's own wait for its organic-job
/// task (`ORGANIC_JOB_CELERY_WAIT_TIMEOUT`). The task message's `expires` is set this far ahead.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(600);

/// How often the results of running jobs are read from the result backend.
pub const DEFAULT_RESULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How long a job that arrives while Redis is unreachable waits for it before it is reported `horde_failed`.
pub const DEFAULT_UNAVAILABLE_WAIT: Duration = Duration::from_secs(10);

/// How long past its timeout a job waits for an unreachable Redis to say what became of its task.
pub const DEFAULT_UNREACHABLE_GRACE: Duration = Duration::from_secs(30);

/// Settings of the celery handler.
///
/// ```
/// use facilitator_client::handler::celery::CeleryConfig;
/// let config = CeleryConfig::new("redis://:s3cret@127.0.0.1:6379/0", "validator.tasks.run_job");
/// assert_eq!(config.queue, "organic_jobs");
/// assert!(!format!("{config:?}").contains("s3cret"));
/// assert_eq!(config.validate(), Ok(()));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct CeleryConfig {
    /// The validator's Celery broker, e.g. `redis://HOST:6379/0`; also its result backend and its channel layer's
    /// Redis (the validator uses one Redis for all three). May carry a password: never logged with it.
    pub broker_url: String,
    /// The registered name of the task that routes and runs one job (the contract in `tests/celery/README.md`).
    pub task: String,
    /// The queue the job messages go to.
    pub queue: String,
    /// From queueing to the terminal status; also the message's `expires`.
    pub job_timeout: Duration,
    /// The task that receives `V0JobCheated` reports (one argument: the report as a map), if any.
    pub cheated_task: Option<String>,
    /// How often the results of running jobs are read.
    pub result_poll_interval: Duration,
    /// How long a job waits for an unreachable Redis before it is reported `horde_failed` unqueued.
    pub unavailable_wait: Duration,
    /// How long past its timeout a job waits for an unreachable Redis before it is reported `horde_failed`.
    pub unreachable_grace: Duration,
}

impl CeleryConfig {
    /// The settings for a broker and task, with every other value at its default.
    pub fn new(broker_url: impl Into<String>, task: impl Into<String>) -> Self {
        CeleryConfig {
            broker_url: broker_url.into(),
            task: task.into(),
            queue: DEFAULT_QUEUE.to_owned(),
            job_timeout: DEFAULT_JOB_TIMEOUT,
            cheated_task: None,
            result_poll_interval: DEFAULT_RESULT_POLL_INTERVAL,
            unavailable_wait: DEFAULT_UNAVAILABLE_WAIT,
            unreachable_grace: DEFAULT_UNREACHABLE_GRACE,
        }
    }

    /// The broker URL with its password replaced, for logs and messages.
    pub fn redacted_broker(&self) -> String {
        redact_url(&self.broker_url)
    }

    /// Checks the values: a Redis URL the client can use, non-empty names, non-zero durations.
    pub fn validate(&self) -> Result<(), CeleryConfigError> {
        if let Err(e) = redis::Client::open(self.broker_url.as_str()) {
            return Err(CeleryConfigError::BrokerUrl {
                url: self.redacted_broker(),
                problem: e.to_string(),
            });
        }
        for (what, name) in [
            ("--celery-task", Some(&self.task)),
            ("--celery-queue", Some(&self.queue)),
            ("--celery-cheated-task", self.cheated_task.as_ref()),
        ] {
            if name.is_some_and(|n| n.trim().is_empty()) {
                return Err(CeleryConfigError::Empty(what));
            }
        }
        for (what, d) in [
            ("--celery-job-timeout", self.job_timeout),
            ("result poll interval", self.result_poll_interval),
        ] {
            if d.is_zero() {
                return Err(CeleryConfigError::ZeroDuration(what));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CeleryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CeleryConfig")
            .field("broker_url", &self.redacted_broker())
            .field("task", &self.task)
            .field("queue", &self.queue)
            .field("job_timeout", &self.job_timeout)
            .field("cheated_task", &self.cheated_task)
            .field("result_poll_interval", &self.result_poll_interval)
            .field("unavailable_wait", &self.unavailable_wait)
            .field("unreachable_grace", &self.unreachable_grace)
            .finish()
    }
}

/// A setting the celery handler cannot run with. Messages name the flag to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CeleryConfigError {
    /// The broker URL is not a Redis URL this client can use.
    #[error("--celery-broker {url}: {problem} (expected redis://[:PASSWORD@]HOST[:PORT][/DB])")]
    BrokerUrl {
        /// The URL, password replaced.
        url: String,
        /// What is wrong.
        problem: String,
    },
    /// A name is empty.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// A duration is zero.
    #[error("{0} must be more than 0 seconds")]
    ZeroDuration(&'static str),
}

/// The URL with any password replaced by `***`: the password of `user:password@` (or a lone `secret@`, which Redis
/// URLs may use for a password), and `password=`/`pass=` query values. Everything before the last `@` counts as user
/// information, so a password holding a raw `/`, `?` or `@`, or a malformed URL, cannot leak either.
///
/// ```
/// use facilitator_client::handler::celery::redact_url;
/// assert_eq!(redact_url("redis://:hunter2@redis:6379/0"), "redis://:***@redis:6379/0");
/// assert_eq!(redact_url("redis://default:hunter2@redis/0"), "redis://default:***@redis/0");
/// assert_eq!(redact_url("redis://redis:6379/0"), "redis://redis:6379/0");
/// ```
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    // Redis URLs have no `@` after the host, so everything before the last `@` is user information, even when a
    // password holds a raw `/`, `?` or `@`.
    let (userinfo, after) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at..]),
        None => (None, rest),
    };
    let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (host, tail) = after.split_at(authority_end);
    let authority = match userinfo {
        Some(userinfo) => match userinfo.find(':') {
            Some(colon) => format!("{}:***{host}", &userinfo[..colon]),
            None => format!("***{host}"),
        },
        None => host.to_owned(),
    };
    let tail = match tail.find('?') {
        Some(q) => {
            let (path, query) = tail.split_at(q + 1);
            let (query, fragment) = match query.find('#') {
                Some(h) => query.split_at(h),
                None => (query, ""),
            };
            let redacted: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if is_password_key(key) => format!("{key}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}{}{fragment}", redacted.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}

fn is_password_key(key: &str) -> bool {
    matches!(key.to_ascii_lowercase().as_str(), "password" | "pass")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_every_form_of_password() {
        let cases = [
            ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
            ("redis://user:pw@h/0", "redis://user:***@h/0"),
            ("redis://pw@h/0", "redis://***@h/0"),
            ("rediss://u:p@ss:w@rd@h:6380/1", "rediss://u:***@h:6380/1"),
            ("redis://h:6379/0", "redis://h:6379/0"),
            ("redis://h", "redis://h"),
            (
                "redis+unix:///tmp/r.sock?db=1&pass=pw",
                "redis+unix:///tmp/r.sock?db=1&pass=***",
            ),
            (
                "redis://h/0?password=pw&x=1#frag",
                "redis://h/0?password=***&x=1#frag",
            ),
            ("u:pw@h", "u:***@h"),
            ("redis://:pa/ss?w@h:1/0", "redis://:***@h:1/0"),
            ("", ""),
        ];
        for (url, expected) in cases {
            assert_eq!(redact_url(url), expected, "{url}");
        }
    }

    #[test]
    fn no_secret_survives_in_debug_or_errors() {
        let mut config = CeleryConfig::new("redis://:topsecret@127.0.0.1:6379/0", "t");
        assert!(!format!("{config:?}").contains("topsecret"));
        config.broker_url = "http://:topsecret@host/0".to_owned();
        let error = config.validate().expect_err("not a redis URL");
        assert!(!error.to_string().contains("topsecret"), "{error}");
        assert!(error.to_string().contains("--celery-broker"));
    }

    #[test]
    fn validation_names_the_flag() {
        let mut config = CeleryConfig::new("redis://127.0.0.1/0", "");
        assert_eq!(
            config.validate(),
            Err(CeleryConfigError::Empty("--celery-task"))
        );
        config.task = "t".into();
        config.job_timeout = Duration::ZERO;
        assert_eq!(
            config.validate(),
            Err(CeleryConfigError::ZeroDuration("--celery-job-timeout"))
        );
        config.job_timeout = DEFAULT_JOB_TIMEOUT;
        config.cheated_task = Some(" ".into());
        assert_eq!(
            config.validate(),
            Err(CeleryConfigError::Empty("--celery-cheated-task"))
        );
    }
}
