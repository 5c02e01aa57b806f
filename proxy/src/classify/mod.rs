//! What an upstream answer means for the request and for the key (the classification table in
//! docs/gemini-errors.md).
//!
//! Pure functions: a status and, for errors, the body in; a [`Verdict`] out.

use std::time::Duration;

use http::StatusCode;
use keystore::{Cooldown, CooldownReason, InvalidReason};
use serde::Deserialize;

/// What to do with an upstream answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Success (or anything not an error): give it to the client as it streams.
    Deliver,
    /// The client's own fault (bad request, unknown model, ...): return as is, key untouched.
    PassThrough,
    /// 429: cool the key (and its project) and try another key.
    RateLimited(RateLimit),
    /// The key is dead: retire it and try another key.
    KeyInvalid(InvalidReason),
    /// 500/502/503: try another key after a short backoff; not the key's fault.
    ServerError,
    /// 504/408: retry once at most; not the key's fault.
    Deadline,
}

/// What a 429 says about the quota.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimit {
    pub window: QuotaWindow,
    /// `RetryInfo.retryDelay`.
    pub retry_delay: Option<Duration>,
    /// `quotaDimensions.model` of the violation.
    pub model: Option<String>,
    /// `quotaValue`: the limit Google enforces, when it says.
    pub quota_value: Option<u64>,
    /// Whether the quota counts tokens (`...InputTokens...`) rather than requests.
    pub counts_tokens: bool,
}

impl RateLimit {
    /// The limit this 429 states, for quota-aware scheduling.
    pub fn stated_limit(&self) -> Option<crate::quota::Learned> {
        use crate::quota::Learned;
        let v = self.quota_value?;
        match (self.window, self.counts_tokens) {
            (QuotaWindow::PerMinute, false) => Some(Learned::RequestsPerMinute(v)),
            (QuotaWindow::PerMinute, true) => Some(Learned::TokensPerMinute(v)),
            (QuotaWindow::PerDay, false) => Some(Learned::RequestsPerDay(v)),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaWindow {
    PerMinute,
    PerDay,
    /// The body names no quota (some 429s carry only a Help link).
    Unknown,
}

/// Classifies an upstream answer. `body` is only looked at for errors.
pub fn classify(status: StatusCode, body: &[u8]) -> Verdict {
    match status.as_u16() {
        s if s < 400 => Verdict::Deliver,
        429 => Verdict::RateLimited(rate_limit(body)),
        400 | 401 | 403 => match invalid_reason(status, body) {
            Some(reason) => Verdict::KeyInvalid(reason),
            None => Verdict::PassThrough,
        },
        500 | 502 | 503 => Verdict::ServerError,
        504 | 408 => Verdict::Deadline,
        _ => Verdict::PassThrough,
    }
}

/// The cooldown a 429 asks for. `previous_backoffs` counts the key's recent unexplained 429s, so
/// that the backoff grows when Google keeps saying nothing.
pub fn cooldown_for(limit: &RateLimit, now_ms: u64, previous_backoffs: u32) -> Cooldown {
    let (until_ms, reason) = match limit.window {
        QuotaWindow::PerDay => (
            keystore::pacific::next_pacific_midnight_ms(now_ms),
            CooldownReason::PerDayQuota,
        ),
        QuotaWindow::PerMinute => {
            let wait = limit.retry_delay.unwrap_or(Duration::from_secs(60));
            (
                now_ms + wait.as_millis() as u64,
                CooldownReason::PerMinuteQuota,
            )
        }
        QuotaWindow::Unknown => {
            let wait = match limit.retry_delay {
                Some(d) => d,
                // 5 s, 10 s, 20 s ... up to 5 minutes.
                None => Duration::from_secs(5u64 << previous_backoffs.min(6))
                    .min(Duration::from_secs(300)),
            };
            (
                now_ms + wait.as_millis() as u64,
                CooldownReason::RateLimited,
            )
        }
    };
    Cooldown {
        until_ms: until_ms.max(now_ms + 1),
        reason,
        model: limit.model.clone(),
    }
}

// ---- the error envelope, as much of it as matters here ----

#[derive(Deserialize)]
#[serde(untagged)]
enum Envelope {
    /// The OpenAI layer wraps Google's envelope in an array. (First: serde would also read a
    /// one-element array as the struct below, with every field missing.)
    OpenAi(Vec<ErrorWrapper>),
    Native(ErrorWrapper),
}

#[derive(Deserialize)]
struct ErrorWrapper {
    error: ErrorBody,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Vec<Detail>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Detail {
    #[serde(rename = "@type", default)]
    type_url: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    retry_delay: Option<String>,
    #[serde(default)]
    violations: Vec<Violation>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Violation {
    #[serde(default)]
    quota_id: String,
    #[serde(default)]
    quota_dimensions: Option<Dimensions>,
    #[serde(default)]
    quota_value: Option<String>,
}

#[derive(Deserialize, Default)]
struct Dimensions {
    #[serde(default)]
    model: Option<String>,
}

fn parse(body: &[u8]) -> Option<ErrorBody> {
    match serde_json::from_slice::<Envelope>(body).ok()? {
        Envelope::Native(w) => Some(w.error),
        Envelope::OpenAi(v) => v.into_iter().next().map(|w| w.error),
    }
}

fn invalid_reason(status: StatusCode, body: &[u8]) -> Option<InvalidReason> {
    let err = parse(body)?;
    let reasons = || err.details.iter().map(|d| d.reason.as_str());
    let message = err.message.to_ascii_lowercase();
    match status.as_u16() {
        400 => reasons()
            .any(|r| r == "API_KEY_INVALID")
            .then_some(InvalidReason::ApiKeyInvalid),
        403 => {
            if reasons().any(|r| r == "API_KEY_SERVICE_BLOCKED") {
                Some(InvalidReason::ServiceBlocked)
            } else if reasons().any(|r| r == "SERVICE_DISABLED") {
                Some(InvalidReason::ServiceDisabled)
            } else if reasons().any(|r| r == "CONSUMER_SUSPENDED")
                || message.contains("has been suspended")
            {
                Some(InvalidReason::Suspended)
            } else if message.contains("reported as leaked") {
                Some(InvalidReason::Leaked)
            } else {
                // e.g. "You do not have permission to access the File ...": a project mismatch,
                // not a dead key.
                None
            }
        }
        // 401 answers a bad credential of ours; with keys that is API_KEY_INVALID too.
        401 => reasons()
            .any(|r| r == "API_KEY_INVALID")
            .then_some(InvalidReason::ApiKeyInvalid),
        _ => None,
    }
}

fn rate_limit(body: &[u8]) -> RateLimit {
    let mut limit = RateLimit {
        window: QuotaWindow::Unknown,
        retry_delay: None,
        model: None,
        quota_value: None,
        counts_tokens: false,
    };
    let Some(err) = parse(body) else {
        return limit;
    };
    for d in &err.details {
        if d.type_url.ends_with("google.rpc.RetryInfo") {
            limit.retry_delay = d.retry_delay.as_deref().and_then(parse_duration);
        }
        for v in &d.violations {
            let window = if v.quota_id.contains("PerDay") {
                QuotaWindow::PerDay
            } else if v.quota_id.contains("PerMinute") {
                QuotaWindow::PerMinute
            } else {
                QuotaWindow::Unknown
            };
            // The longest window named wins: a spent day outlasts a spent minute.
            if rank(window) > rank(limit.window) {
                limit.window = window;
                limit.quota_value = v.quota_value.as_deref().and_then(|q| q.parse().ok());
                limit.counts_tokens = v.quota_id.contains("Token");
                limit.model = v
                    .quota_dimensions
                    .as_ref()
                    .and_then(|d| d.model.clone())
                    .map(|m| m.strip_prefix("models/").map(str::to_owned).unwrap_or(m));
            }
        }
    }
    limit
}

fn rank(w: QuotaWindow) -> u8 {
    match w {
        QuotaWindow::Unknown => 0,
        QuotaWindow::PerMinute => 1,
        QuotaWindow::PerDay => 2,
    }
}

/// A protobuf JSON `Duration`: `"22s"`, `"45.837906927s"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let secs: f64 = s.strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0 * 2.0)))
}

#[cfg(test)]
mod tests;
