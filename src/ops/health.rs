//! `/healthz`: whether a container runtime should consider the client healthy, and a small JSON report.
//!
//! Healthy while authenticated (Running or Draining), and also while reconnecting for less than a grace period
//! after an authenticated connection was lost (default: twice the backoff cap), so an ordinary reconnect or a
//! `validator_not_found` wait at the backoff cap does not get the container restarted. Unhealthy before the first
//! authentication (a container's `start_period` covers start-up), after the grace period, and once stopped.
//! [`Liveness`] is pure: it is told every state change and the time; it never reads the clock itself.

use std::time::{Duration, Instant, SystemTime};

use crate::machine::StateKind;

use super::prom::SpoolStatus;

/// When a client that is not authenticated still counts as healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// How long a client that was authenticated may be reconnecting and still be healthy.
    pub grace: Duration,
}

impl HealthPolicy {
    /// The default: twice the reconnect backoff's cap.
    pub fn for_backoff_cap(cap: Duration) -> HealthPolicy {
        HealthPolicy {
            grace: cap.saturating_mul(2),
        }
    }
}

/// The verdict, with why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Running or Draining.
    Authenticated,
    /// Reconnecting, within the grace period.
    Reconnecting,
    /// Never authenticated yet.
    NotYetAuthenticated,
    /// Reconnecting for longer than the grace period.
    ReconnectingTooLong,
    /// The client stopped.
    Stopped,
}

impl Verdict {
    /// Whether this verdict is healthy (HTTP 200) or not (503).
    pub fn is_healthy(self) -> bool {
        matches!(self, Verdict::Authenticated | Verdict::Reconnecting)
    }

    /// The HTTP status code of `/healthz`.
    pub fn http_status(self) -> u16 {
        if self.is_healthy() { 200 } else { 503 }
    }
}

/// The health-relevant history of the client's states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Liveness {
    state: StateKind,
    since: Instant,
    authenticated_once: bool,
    /// When the last authenticated connection ended (the start of the current reconnect).
    unauthenticated_since: Option<Instant>,
    last_error: Option<String>,
}

impl Liveness {
    /// A client that has just started (Disconnected, its first connect due).
    pub fn new(now: Instant) -> Liveness {
        Liveness {
            state: StateKind::Disconnected,
            since: now,
            authenticated_once: false,
            unauthenticated_since: None,
            last_error: None,
        }
    }

    /// The machine went from `from` to `to` at `now`, for `reason`.
    pub fn on_state_changed(&mut self, from: StateKind, to: StateKind, reason: &str, now: Instant) {
        if from == to {
            // A phase within Connecting or Draining: the state and its age are unchanged.
            return;
        }
        let was_authenticated = matches!(from, StateKind::Running | StateKind::Draining);
        let is_authenticated = matches!(to, StateKind::Running | StateKind::Draining);
        if is_authenticated {
            self.authenticated_once = true;
            self.unauthenticated_since = None;
        } else if was_authenticated {
            self.unauthenticated_since = Some(now);
        }
        if to == StateKind::Disconnected {
            self.last_error = Some(reason.to_owned());
        }
        self.state = to;
        self.since = now;
    }

    /// Records an error that is not a state change into Disconnected (e.g. a fatal auth rejection).
    pub fn set_last_error(&mut self, error: impl Into<String>) {
        self.last_error = Some(error.into());
    }

    /// The current state.
    pub fn state(&self) -> StateKind {
        self.state
    }

    /// When the current state was entered.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// The reason of the last disconnect or fatal error.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Healthy or not at `now`.
    pub fn verdict(&self, now: Instant, policy: HealthPolicy) -> Verdict {
        match self.state {
            StateKind::Running | StateKind::Draining => Verdict::Authenticated,
            StateKind::Stopped => Verdict::Stopped,
            StateKind::Disconnected | StateKind::Connecting => match self.unauthenticated_since {
                _ if !self.authenticated_once => Verdict::NotYetAuthenticated,
                Some(lost) if now.saturating_duration_since(lost) < policy.grace => {
                    Verdict::Reconnecting
                }
                _ => Verdict::ReconnectingTooLong,
            },
        }
    }
}

/// The body of `/healthz`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthReport {
    /// The client's state.
    pub state: StateKind,
    /// When it entered that state (wall clock).
    pub since: SystemTime,
    /// The reason of the last disconnect or fatal error.
    pub last_error: Option<String>,
    /// Status updates not yet acknowledged (queued or in flight).
    pub statuses_queued: u64,
    /// The spool's figures, when there is a spool.
    pub spool: Option<SpoolStatus>,
}

impl HealthReport {
    /// `{"state", "since", "last_error", "statuses_queued", "spool"}`.
    pub fn to_json(&self) -> String {
        let spool = self.spool.map(|s| {
            serde_json::json!({
                "bytes": s.bytes,
                "entries": s.entries,
                "staleness_seconds": s.staleness.map(|d| d.as_secs_f64()),
                "errors": s.errors,
            })
        });
        serde_json::json!({
            "state": self.state.as_str(),
            "since": super::log::rfc3339_millis(self.since),
            "last_error": self.last_error,
            "statuses_queued": self.statuses_queued,
            "spool": spool,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: HealthPolicy = HealthPolicy {
        grace: Duration::from_secs(120),
    };

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn unhealthy_before_the_first_authentication() {
        let t0 = Instant::now();
        let mut live = Liveness::new(t0);
        assert_eq!(live.verdict(t0, POLICY), Verdict::NotYetAuthenticated);
        live.on_state_changed(
            StateKind::Disconnected,
            StateKind::Connecting,
            "connecting",
            t0,
        );
        live.on_state_changed(
            StateKind::Connecting,
            StateKind::Disconnected,
            "refused",
            secs(t0, 1),
        );
        // However long it has been trying, never healthy before the first auth.
        assert_eq!(
            live.verdict(secs(t0, 2), POLICY),
            Verdict::NotYetAuthenticated
        );
        assert_eq!(live.verdict(secs(t0, 3600), POLICY).http_status(), 503);
        assert_eq!(live.last_error(), Some("refused"));
    }

    #[test]
    fn healthy_while_authenticated_and_within_the_grace_of_a_reconnect() {
        let t0 = Instant::now();
        let mut live = Liveness::new(t0);
        live.on_state_changed(
            StateKind::Disconnected,
            StateKind::Connecting,
            "connecting",
            t0,
        );
        live.on_state_changed(
            StateKind::Connecting,
            StateKind::Running,
            "authenticated",
            secs(t0, 1),
        );
        assert_eq!(live.verdict(secs(t0, 500), POLICY), Verdict::Authenticated);
        // Lost at 1000 s; reconnect attempts flip between Disconnected and Connecting: the grace runs from the loss.
        live.on_state_changed(
            StateKind::Running,
            StateKind::Disconnected,
            "peer silent",
            secs(t0, 1000),
        );
        assert_eq!(live.verdict(secs(t0, 1000), POLICY), Verdict::Reconnecting);
        live.on_state_changed(
            StateKind::Disconnected,
            StateKind::Connecting,
            "connecting",
            secs(t0, 1060),
        );
        live.on_state_changed(
            StateKind::Connecting,
            StateKind::Disconnected,
            "3001",
            secs(t0, 1061),
        );
        assert_eq!(live.verdict(secs(t0, 1119), POLICY), Verdict::Reconnecting);
        assert_eq!(live.verdict(secs(t0, 1119), POLICY).http_status(), 200);
        assert_eq!(
            live.verdict(secs(t0, 1120), POLICY),
            Verdict::ReconnectingTooLong
        );
        assert_eq!(live.verdict(secs(t0, 1120), POLICY).http_status(), 503);
        // Back: healthy again, and a later loss gets a fresh grace period.
        live.on_state_changed(
            StateKind::Connecting,
            StateKind::Running,
            "authenticated",
            secs(t0, 1200),
        );
        assert_eq!(live.verdict(secs(t0, 1200), POLICY), Verdict::Authenticated);
        live.on_state_changed(
            StateKind::Running,
            StateKind::Disconnected,
            "lost",
            secs(t0, 2000),
        );
        assert_eq!(live.verdict(secs(t0, 2100), POLICY), Verdict::Reconnecting);
        assert_eq!(live.since(), secs(t0, 2000));
        assert_eq!(live.last_error(), Some("lost"));
    }

    #[test]
    fn draining_is_healthy_and_stopped_is_not() {
        let t0 = Instant::now();
        let mut live = Liveness::new(t0);
        live.on_state_changed(
            StateKind::Connecting,
            StateKind::Running,
            "authenticated",
            t0,
        );
        live.on_state_changed(
            StateKind::Running,
            StateKind::Draining,
            "shutdown",
            secs(t0, 5),
        );
        assert_eq!(live.verdict(secs(t0, 6), POLICY), Verdict::Authenticated);
        live.on_state_changed(
            StateKind::Draining,
            StateKind::Stopped,
            "graceful",
            secs(t0, 7),
        );
        assert_eq!(live.verdict(secs(t0, 7), POLICY), Verdict::Stopped);
        assert_eq!(live.verdict(secs(t0, 7), POLICY).http_status(), 503);
    }

    #[test]
    fn the_default_grace_is_twice_the_backoff_cap() {
        assert_eq!(
            HealthPolicy::for_backoff_cap(Duration::from_secs(60)).grace,
            Duration::from_secs(120)
        );
    }

    #[test]
    fn the_report_has_exactly_the_documented_keys() {
        let report = HealthReport {
            state: StateKind::Running,
            since: SystemTime::UNIX_EPOCH + Duration::from_secs(86_400),
            last_error: None,
            statuses_queued: 3,
            spool: None,
        };
        let value: serde_json::Value = serde_json::from_str(&report.to_json()).expect("JSON");
        assert_eq!(
            value,
            serde_json::json!({
                "state": "Running",
                "since": "1970-01-02T00:00:00.000Z",
                "last_error": null,
                "statuses_queued": 3,
                "spool": null,
            })
        );
        let with_spool = HealthReport {
            last_error: Some("peer silent".into()),
            spool: Some(SpoolStatus {
                bytes: 4096,
                entries: 2,
                staleness: Some(Duration::from_millis(1500)),
                errors: 1,
            }),
            ..report
        };
        let value: serde_json::Value = serde_json::from_str(&with_spool.to_json()).expect("JSON");
        assert_eq!(value["last_error"], "peer silent");
        assert_eq!(
            value["spool"],
            serde_json::json!({"bytes": 4096, "entries": 2, "staleness_seconds": 1.5, "errors": 1})
        );
    }
}
