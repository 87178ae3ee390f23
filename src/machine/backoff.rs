//! Reconnect delays: exponential with jitter, capped, and reset only after a stable connection.
//!
//! The jitter comes from a small seeded generator, so the same seed gives the same delays: tests and the fuzzer
//! are deterministic, and the runtime seeds it from the OS.

use std::time::Duration;

/// Reconnect delay settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// Delay before the first retry.
    pub base: Duration,
    /// Growth factor per failed attempt.
    pub factor: f64,
    /// Largest delay; also the delay after `auth.validator_not_found`.
    pub cap: Duration,
    /// Fraction of each delay that is random: a delay `d` becomes uniform in `[d * (1 - jitter), d]`.
    pub jitter: f64,
    /// A connection that stayed Running this long resets the attempt counter.
    pub stable_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_secs(1),
            factor: 2.0,
            cap: Duration::from_secs(60),
            jitter: 0.5,
            stable_after: Duration::from_secs(10),
        }
    }
}

/// The attempt counter and the jitter source.
#[derive(Debug, Clone)]
pub(super) struct Backoff {
    config: BackoffConfig,
    failures: u32,
    rng: u64,
}

impl Backoff {
    /// A fresh backoff; `seed` drives the jitter.
    pub(super) fn new(config: BackoffConfig, seed: u64) -> Self {
        // xorshift must not start at zero.
        Backoff {
            config,
            failures: 0,
            rng: seed | 1,
        }
    }

    /// Failed attempts since the last reset.
    pub(super) fn failures(&self) -> u32 {
        self.failures
    }

    /// Forgets past failures (the connection was stable).
    pub(super) fn reset(&mut self) {
        self.failures = 0;
    }

    /// The delay before the next attempt after a failure; counts the failure.
    pub(super) fn next_delay(&mut self) -> Duration {
        let exp = self
            .config
            .factor
            .max(1.0)
            .powi(self.failures.min(64) as i32);
        let nominal = self.config.base.as_secs_f64() * exp;
        let capped = nominal.min(self.config.cap.as_secs_f64());
        self.failures = self.failures.saturating_add(1);
        self.jittered(capped)
    }

    /// The delay after a failure that is retried at the cap (e.g. `auth.validator_not_found`); counts the failure.
    pub(super) fn cap_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.jittered(self.config.cap.as_secs_f64())
    }

    fn jittered(&mut self, secs: f64) -> Duration {
        let jitter = self.config.jitter.clamp(0.0, 1.0);
        let unit = self.next_unit();
        Duration::from_secs_f64((secs * (1.0 - jitter * unit)).max(0.0))
    }

    /// Uniform in [0, 1).
    fn next_unit(&mut self) -> f64 {
        // xorshift64*: plenty for spreading reconnects.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_jitter() -> BackoffConfig {
        BackoffConfig {
            jitter: 0.0,
            ..BackoffConfig::default()
        }
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let mut b = Backoff::new(no_jitter(), 1);
        let secs: Vec<u64> = (0..9).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn reset_starts_again_from_the_base() {
        let mut b = Backoff::new(no_jitter(), 1);
        b.next_delay();
        b.next_delay();
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_its_band_and_depends_on_the_seed() {
        let config = BackoffConfig {
            jitter: 0.5,
            ..BackoffConfig::default()
        };
        let mut a = Backoff::new(config, 7);
        let mut b = Backoff::new(config, 8);
        let mut differ = false;
        for _ in 0..20 {
            let (da, db) = (a.next_delay(), b.next_delay());
            for d in [da, db] {
                assert!(
                    d >= Duration::from_millis(500) && d <= Duration::from_secs(60),
                    "{d:?}"
                );
            }
            differ |= da != db;
        }
        assert!(differ, "different seeds gave identical jitter");
    }
}
