//! One log line per kind of repeated warning per interval, with the count of what was held back: a flood of bad
//! frames, refused job requests or Redis errors gives a line now and then, never a line per occurrence. Pure: the
//! caller passes the time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One log line per kind per interval: the first occurrence of a kind is logged at once, later ones within the
/// interval are counted, and the first one after it is logged with the count of those suppressed in between.
#[derive(Debug, Clone)]
pub(crate) struct RateLimiter {
    interval: Duration,
    slots: HashMap<&'static str, Slot>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// When the last line of this kind was written.
    logged_at: Instant,
    /// Occurrences since then that were not written.
    suppressed: u64,
}

impl RateLimiter {
    /// At most one line per kind per `interval`.
    pub(crate) fn new(interval: Duration) -> RateLimiter {
        RateLimiter {
            interval,
            slots: HashMap::new(),
        }
    }

    /// An occurrence of `kind` at `now`: `Some(suppressed)` when a line should be written (mentioning the
    /// `suppressed` occurrences since the last one, see [`suppressed_note`]), `None` when it is only counted.
    pub(crate) fn check(&mut self, kind: &'static str, now: Instant) -> Option<u64> {
        match self.slots.get_mut(kind) {
            Some(slot) if now.saturating_duration_since(slot.logged_at) < self.interval => {
                slot.suppressed = slot.suppressed.saturating_add(1);
                None
            }
            Some(slot) => {
                let suppressed = std::mem::take(&mut slot.suppressed);
                slot.logged_at = now;
                Some(suppressed)
            }
            None => {
                self.slots.insert(
                    kind,
                    Slot {
                        logged_at: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }

    /// Kinds whose interval is over with occurrences still unreported, and their counts; each is reset (so a
    /// flood that stopped is still accounted for). Call it from a periodic wake-up, e.g. each heartbeat.
    pub(crate) fn take_expired(&mut self, now: Instant) -> Vec<(&'static str, u64)> {
        let mut expired: Vec<(&'static str, u64)> = self
            .slots
            .iter_mut()
            .filter(|(_, slot)| {
                slot.suppressed > 0
                    && now.saturating_duration_since(slot.logged_at) >= self.interval
            })
            .map(|(kind, slot)| {
                slot.logged_at = now;
                (*kind, std::mem::take(&mut slot.suppressed))
            })
            .collect();
        expired.sort_unstable();
        expired
    }
}

/// `""` for 0, else `" (N more like it suppressed)"`: the tail of a rate-limited line.
pub(crate) fn suppressed_note(suppressed: u64) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!(" ({suppressed} more like it suppressed)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_interval_with_the_suppressed_count() {
        let mut limiter = RateLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // A 500-frame flood of one kind in 1 s: one line.
        let lines = (0..500)
            .filter_map(|i| limiter.check("undecodable frame", at(i * 2)))
            .collect::<Vec<_>>();
        assert_eq!(lines, vec![0]);
        // Another kind is independent.
        assert_eq!(limiter.check("unexpected Response", at(5)), Some(0));
        // After the interval: one line reporting the 499 suppressed, then counting again.
        assert_eq!(limiter.check("undecodable frame", at(10_000)), Some(499));
        assert_eq!(limiter.check("undecodable frame", at(10_001)), None);
        assert_eq!(limiter.check("undecodable frame", at(20_000)), Some(1));
        assert_eq!(limiter.check("undecodable frame", at(40_000)), Some(0));
    }

    #[test]
    fn a_flood_that_stopped_is_reported_by_take_expired() {
        let mut limiter = RateLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limiter.check("a", t0), Some(0));
        assert_eq!(limiter.check("a", t0 + Duration::from_secs(1)), None);
        assert_eq!(limiter.check("b", t0), Some(0));
        assert!(limiter.take_expired(t0 + Duration::from_secs(9)).is_empty());
        assert_eq!(
            limiter.take_expired(t0 + Duration::from_secs(10)),
            vec![("a", 1)]
        );
        assert!(
            limiter
                .take_expired(t0 + Duration::from_secs(30))
                .is_empty()
        );
        // Reported once: the next occurrence within the new window is counted, not logged.
        assert_eq!(limiter.check("a", t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn notes_say_how_many_were_suppressed() {
        assert_eq!(suppressed_note(0), "");
        assert_eq!(suppressed_note(499), " (499 more like it suppressed)");
    }
}
