//! The classification table of docs/gemini-errors.md, checked with the mock's byte-exact bodies.

use super::*;
use crate::quota::Learned;
use gemini_proxy_tests::wire::{self, Quota};
use keystore::pacific::next_pacific_midnight_ms;

fn c(code: u16, body: &str) -> Verdict {
    classify(StatusCode::from_u16(code).unwrap(), body.as_bytes())
}

#[test]
fn success_is_delivered() {
    assert_eq!(c(200, "{}"), Verdict::Deliver);
    assert_eq!(c(204, ""), Verdict::Deliver);
}

#[test]
fn dead_keys_are_recognised() {
    assert_eq!(
        c(400, &wire::api_key_invalid()),
        Verdict::KeyInvalid(InvalidReason::ApiKeyInvalid)
    );
    assert_eq!(
        c(403, &wire::service_blocked()),
        Verdict::KeyInvalid(InvalidReason::ServiceBlocked)
    );
    assert_eq!(
        c(403, &wire::service_disabled()),
        Verdict::KeyInvalid(InvalidReason::ServiceDisabled)
    );
    assert_eq!(
        c(403, &wire::leaked()),
        Verdict::KeyInvalid(InvalidReason::Leaked)
    );
    assert_eq!(
        c(
            403,
            &wire::suspended("AIzaSyFAKE-suspended-key-000000000000")
        ),
        Verdict::KeyInvalid(InvalidReason::Suspended)
    );
    // The OpenAI layer wraps the same envelope in an array.
    assert_eq!(
        c(400, &wire::openai_wrap(&wire::api_key_invalid())),
        Verdict::KeyInvalid(InvalidReason::ApiKeyInvalid)
    );
}

#[test]
fn client_faults_pass_through() {
    assert_eq!(c(400, &wire::token_limit_exceeded()), Verdict::PassThrough);
    assert_eq!(c(404, &wire::model_not_found("x")), Verdict::PassThrough);
    assert_eq!(
        c(403, &wire::file_permission("files/abc")),
        Verdict::PassThrough
    );
    assert_eq!(c(400, "not json at all"), Verdict::PassThrough);
    assert_eq!(c(413, ""), Verdict::PassThrough);
}

#[test]
fn server_side_errors() {
    assert_eq!(c(500, &wire::internal()), Verdict::ServerError);
    assert_eq!(c(503, &wire::overloaded()), Verdict::ServerError);
    assert_eq!(c(502, "<html>bad gateway</html>"), Verdict::ServerError);
    assert_eq!(c(504, &wire::deadline_exceeded()), Verdict::Deadline);
}

#[test]
fn per_minute_429_with_retry_info() {
    let body = wire::quota_exceeded(
        Quota::RequestsPerMinute,
        "gemini-2.5-flash",
        10,
        Some("45.837906927s"),
    );
    let Verdict::RateLimited(rl) = c(429, &body) else {
        panic!("not a rate limit")
    };
    assert_eq!(rl.window, QuotaWindow::PerMinute);
    assert_eq!(rl.model.as_deref(), Some("gemini-2.5-flash"));
    assert_eq!(rl.quota_value, Some(10));
    assert_eq!(rl.stated_limit(), Some(Learned::RequestsPerMinute(10)));
    assert_eq!(rl.retry_delay, Some(Duration::from_secs_f64(45.837906927)));
    let cd = cooldown_for(&rl, 1_000_000, 0);
    assert_eq!(cd.until_ms, 1_000_000 + 45_837);
    assert_eq!(cd.reason, CooldownReason::PerMinuteQuota);
    assert_eq!(cd.model.as_deref(), Some("gemini-2.5-flash"));
}

#[test]
fn per_minute_429_without_retry_info_waits_a_minute() {
    let body = wire::quota_exceeded(Quota::InputTokensPerMinute, "gemini-2.5-pro", 250_000, None);
    let Verdict::RateLimited(rl) = c(429, &body) else {
        panic!("not a rate limit")
    };
    assert_eq!(rl.window, QuotaWindow::PerMinute);
    assert_eq!(rl.retry_delay, None);
    assert_eq!(rl.stated_limit(), Some(Learned::TokensPerMinute(250_000)));
    assert_eq!(cooldown_for(&rl, 0, 0).until_ms, 60_000);
}

#[test]
fn per_day_429_waits_for_pacific_midnight_whatever_retry_info_says() {
    let body = wire::quota_exceeded(Quota::RequestsPerDay, "gemini-2.5-flash", 250, Some("22s"));
    let Verdict::RateLimited(rl) = c(429, &body) else {
        panic!("not a rate limit")
    };
    assert_eq!(rl.window, QuotaWindow::PerDay);
    assert_eq!(rl.stated_limit(), Some(Learned::RequestsPerDay(250)));
    let now = 1_763_800_000_000;
    let cd = cooldown_for(&rl, now, 0);
    assert_eq!(cd.until_ms, next_pacific_midnight_ms(now));
    assert_eq!(cd.reason, CooldownReason::PerDayQuota);
}

#[test]
fn bare_429_backs_off_and_grows() {
    let Verdict::RateLimited(rl) = c(429, &wire::rate_limited_bare()) else {
        panic!("not a rate limit")
    };
    assert_eq!(rl.window, QuotaWindow::Unknown);
    assert_eq!(rl.model, None);
    assert_eq!(rl.stated_limit(), None);
    assert_eq!(cooldown_for(&rl, 0, 0).until_ms, 5_000);
    assert_eq!(cooldown_for(&rl, 0, 1).until_ms, 10_000);
    assert_eq!(cooldown_for(&rl, 0, 30).until_ms, 300_000);
    assert_eq!(cooldown_for(&rl, 0, 0).reason, CooldownReason::RateLimited);
    // Not even JSON: still a rate limit.
    assert!(matches!(
        c(429, "Too Many Requests"),
        Verdict::RateLimited(_)
    ));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("22s"), Some(Duration::from_secs(22)));
    assert_eq!(parse_duration("0.5s"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("22"), None);
    assert_eq!(parse_duration("-1s"), None);
}
