//! CRI timestamps: Unix nanoseconds in an i64 (created_at, started_at,
//! log record times), as every side of Berth writes and reads them.
use std::time::{Duration, SystemTime};

/// `t` as Unix nanoseconds; before 1970 is 0, past 2262 the largest i64.
pub fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(nanos).unwrap_or(0)
}

/// Now, as Unix nanoseconds.
pub fn now_nanos() -> i64 {
    unix_nanos(SystemTime::now())
}

/// A duration in nanoseconds, saturating at the largest i64 (292 years).
pub fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanoseconds_saturate_instead_of_wrapping() {
        assert_eq!(nanos(Duration::from_secs(2)), 2_000_000_000);
        assert_eq!(nanos(Duration::MAX), i64::MAX);
        assert_eq!(unix_nanos(SystemTime::UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert!(now_nanos() > 1_600_000_000_000_000_000);
    }
}
