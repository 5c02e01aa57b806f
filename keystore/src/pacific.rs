//! Google resets per-day quotas at midnight Pacific time (America/Los_Angeles, DST included).

use jiff::{Timestamp, ToSpan, tz::TimeZone};

/// The first instant after `now_ms` (Unix milliseconds) at which the date changes in
/// America/Los_Angeles, in Unix milliseconds.
pub fn next_pacific_midnight_ms(now_ms: u64) -> u64 {
    let fallback = now_ms + 24 * 3600 * 1000;
    let Ok(tz) = TimeZone::get("America/Los_Angeles") else {
        return fallback;
    };
    let Ok(now) = Timestamp::from_millisecond(now_ms as i64) else {
        return fallback;
    };
    let local = now.to_zoned(tz);
    let next = local
        .date()
        .checked_add(1.day())
        .ok()
        .and_then(|d| d.to_zoned(local.time_zone().clone()).ok());
    match next {
        Some(z) => z.timestamp().as_millisecond().max(0) as u64,
        None => fallback,
    }
}

/// The date in America/Los_Angeles at `now_ms`, as `YYYY-MM-DD`.
pub fn pacific_date(now_ms: u64) -> String {
    let Ok(now) = Timestamp::from_millisecond(now_ms as i64) else {
        return String::new();
    };
    match TimeZone::get("America/Los_Angeles") {
        Ok(tz) => now.to_zoned(tz).date().to_string(),
        Err(_) => now.to_zoned(TimeZone::UTC).date().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> u64 {
        s.parse::<Timestamp>().unwrap().as_millisecond() as u64
    }

    #[test]
    fn pacific_dates() {
        assert_eq!(pacific_date(ms("2026-11-22T07:59:59Z")), "2026-11-21");
        assert_eq!(pacific_date(ms("2026-11-22T08:00:00Z")), "2026-11-22");
    }

    #[test]
    fn winter_midnight_is_08_utc() {
        // 2026-01-15 20:00 UTC is 12:00 PST; the next midnight is 2026-01-16 08:00 UTC.
        assert_eq!(
            next_pacific_midnight_ms(ms("2026-01-15T20:00:00Z")),
            ms("2026-01-16T08:00:00Z")
        );
    }

    #[test]
    fn summer_midnight_is_07_utc() {
        assert_eq!(
            next_pacific_midnight_ms(ms("2026-07-01T06:59:59Z")),
            ms("2026-07-01T07:00:00Z")
        );
        assert_eq!(
            next_pacific_midnight_ms(ms("2026-07-01T07:00:00Z")),
            ms("2026-07-02T07:00:00Z")
        );
    }

    #[test]
    fn dst_switch_days_are_23_and_25_hours() {
        // 2026-03-08 is the spring-forward day: local midnight to midnight is 23 hours.
        assert_eq!(
            next_pacific_midnight_ms(ms("2026-03-08T08:00:00Z")),
            ms("2026-03-09T07:00:00Z")
        );
        // 2026-11-01 is the fall-back day: 25 hours.
        assert_eq!(
            next_pacific_midnight_ms(ms("2026-11-01T07:00:00Z")),
            ms("2026-11-02T08:00:00Z")
        );
    }
}
