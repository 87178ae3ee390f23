//! Calendar fields of a UTC wall-clock time, for the few places that print one (JSON log lines and `/healthz`, a
//! Celery message's `expires`, the name a corrupt spool is moved aside to). One implementation of the calendar
//! arithmetic, so the three formats cannot disagree on a date. It never reads the clock itself.

use std::time::{Duration, SystemTime};

/// A time since the Unix epoch split into UTC calendar fields (times before the epoch read as the epoch: they do
/// not occur on a running validator's clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Utc {
    pub(crate) year: u64,
    pub(crate) month: u32,
    pub(crate) day: u32,
    pub(crate) hour: u32,
    pub(crate) minute: u32,
    pub(crate) second: u32,
    /// The fraction of the second, in microseconds.
    pub(crate) micros: u32,
}

impl Utc {
    /// The fields of `time`.
    pub(crate) fn of(time: SystemTime) -> Utc {
        let since = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let secs = since.as_secs();
        let (year, month, day) = civil_from_days(secs / 86_400);
        let rem = secs % 86_400;
        // Each is below 24, 60 or 1,000,000: the casts cannot truncate.
        Utc {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
            micros: since.subsec_micros(),
        }
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // Below 32 and 13.
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, micros: u32) -> Utc {
        Utc::of(
            SystemTime::UNIX_EPOCH
                + Duration::from_secs(secs)
                + Duration::from_micros(micros.into()),
        )
    }

    #[test]
    fn known_dates() {
        let epoch = at(0, 0);
        assert_eq!(
            (epoch.year, epoch.month, epoch.day, epoch.hour),
            (1970, 1, 1, 0)
        );
        // 2000-02-29 (a leap day of a century divisible by 400) 12:34:56.789012.
        let leap = at(951_827_696, 789_012);
        assert_eq!(
            (
                leap.year,
                leap.month,
                leap.day,
                leap.hour,
                leap.minute,
                leap.second,
                leap.micros
            ),
            (2000, 2, 29, 12, 34, 56, 789_012)
        );
        // 2026-12-01T03:36:37Z, and the last second of 2100-02-28 (2100 is not a leap year).
        let now = at(1_796_096_197, 0);
        assert_eq!(
            (
                now.year, now.month, now.day, now.hour, now.minute, now.second
            ),
            (2026, 12, 1, 3, 36, 37)
        );
        let next = at(4_107_542_400, 0);
        assert_eq!((next.year, next.month, next.day), (2100, 3, 1));
    }

    #[test]
    fn before_the_epoch_reads_as_the_epoch() {
        let before = Utc::of(SystemTime::UNIX_EPOCH - Duration::from_secs(5));
        assert_eq!(before, at(0, 0));
    }
}
