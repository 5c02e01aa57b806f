//! Attempt: send the request with one key after another until an answer can be given.
//!
//! The attempt budget: `retry.maxAttempts` bounds the failures that are not about a key (5xx,
//! network, timeouts, deadlines). A verdict about a key or its project (429 quota, invalid,
//! leaked, suspended, blocked) moves on to another key without spending it: each key is tried
//! at most once (and a project-wide 429 cools every key of the project), so a request fails for
//! want of keys only when no healthy key is left. When every key cools for less than the
//! group's `retry.waitOnCooldownSeconds`, the request waits for the first one instead.

use std::time::{Duration, Instant};

use axum::response::Response;
use bytes::Bytes;
use http::header;
use http_body_util::{BodyExt, Limited};
use keystore::clock::now_ms;

use super::admit::Admitted;
use super::outcome::{self, Next};
use super::place::Pinned;
use super::{Trace, answer};
use crate::classify;
use crate::envelope::retry_after_secs;
use crate::headers;
use crate::pool::{Demand, KeySlot, Pick};
use crate::quota;
use crate::routes::{Api, ModelOf};
use crate::shared::App;
use crate::upstream::UpstreamError;

/// Error bodies are read whole to classify them; they are small, this is a safety cap.
const MAX_ERROR_BODY: usize = 1 << 20;

/// What the attempts so far leave behind: the budget spent, the keys tried, and the last
/// answer or error (what the client gets when no attempt succeeds).
pub(super) struct Tally {
    pub max_attempts: u32,
    /// Failures not about a key, against `max_attempts`.
    pub failures: u32,
    /// Whether the last upstream answer was a verdict about its key: then Google's body (which
    /// may name the key) is not passed on; the proxy answers with its own error.
    pub last_about_key: bool,
    pub tried: Vec<usize>,
    pub last: Option<(http::response::Parts, Bytes)>,
    pub last_error: Option<UpstreamError>,
    /// Why the next attempt is a retry (the metric's label).
    pub retry_reason: &'static str,
    pub deadline_retries: u32,
    pub backoffs: u32,
    /// What is left of `retry.waitOnCooldownSeconds`, in ms.
    wait_budget_ms: u64,
}

impl Tally {
    /// A failure not about a key; whether the budget is spent.
    pub fn failed(&mut self) -> bool {
        self.failures += 1;
        self.failures >= self.max_attempts
    }

    fn network_failure(&mut self, slot: &KeySlot, e: UpstreamError) -> bool {
        slot.record_failure(e.kind());
        self.retry_reason = e.kind();
        self.last_error = Some(e);
        self.failed()
    }
}

pub(super) async fn attempts(
    app: &App,
    a: &Admitted<'_>,
    pinned: Pinned,
    trace: &mut Trace,
) -> Response {
    let pool = &a.pool;
    let group = pool.name();
    // Moved into the first attempt; retries (rare) filter the client's headers again.
    let mut headers = Some(headers::upstream_headers(&a.parts.headers));
    let model = ModelOf::new(a.api, &a.route.upstream_path, &a.body);
    let demand = Demand {
        tokens: a.estimate,
        scope: pinned.as_ref().map(|(s, _)| &**s),
    };
    let max_attempts = pool.snapshot.retry.max_attempts.max(1);
    let mut t = Tally {
        max_attempts,
        failures: 0,
        last_about_key: false,
        tried: Vec::with_capacity(max_attempts as usize),
        last: None,
        last_error: None,
        retry_reason: "",
        deadline_retries: 0,
        backoffs: 0,
        wait_budget_ms: u64::from(pool.snapshot.retry.wait_on_cooldown_secs) * 1000,
    };
    loop {
        let now = now_ms();
        let i = match pool.pick_for(&model, &t.tried, now, &demand) {
            Pick::Key(i) => i,
            Pick::Cooling(until) => {
                // Wait instead of fail, when the group allows it and nothing was sent yet: hold
                // the request until the first key is free, within the group's bound.
                let wait_ms = until.saturating_sub(now) + 5;
                if wait_ms <= t.wait_budget_ms {
                    t.wait_budget_ms -= wait_ms;
                    let wait = Duration::from_millis(wait_ms);
                    tracing::debug!(group, wait_ms, "every key cooling: waiting for the first");
                    tokio::time::sleep(wait).await;
                    trace.waited += wait;
                    t.tried.clear();
                    continue;
                }
                let secs = retry_after_secs(until, now);
                return answer::all_cooling(a.api, &pinned, group, secs);
            }
            Pick::Tried | Pick::NoKeys => break,
        };
        if !t.tried.is_empty() {
            app.metrics
                .retries
                .with_label_values(&[group, t.retry_reason])
                .inc();
        }
        t.tried.push(i);
        trace.attempts += 1;
        trace.key = Some(i);
        let member = &pool.members[i];
        let slot = &member.slot;
        let quota_charged = match model.get() {
            Some(m) if pool.book.quota_active() && quota::counts(a.route.operation) => {
                pool.book.charge_quota(&member.scope, m, a.estimate, now);
                Some((quota::quota_name(&member.scope, m), now))
            }
            _ => None,
        };

        let up = upstream_request(a, headers.take(), slot);
        let in_flight = slot.start();
        let sent = Instant::now();
        let result = pool.upstream.send(up).await;
        let took = sent.elapsed();
        trace.waited += took;
        app.metrics.observe_upstream(
            group,
            took.as_secs_f64(),
            result.as_ref().ok().map(|r| r.status().as_u16()),
        );
        let res = match result {
            Ok(res) => res,
            Err(e) => {
                tracing::warn!(group, key_id = %slot.id, error = %e, "upstream attempt failed");
                if t.network_failure(slot, e) {
                    break;
                }
                continue;
            }
        };
        let status = res.status();
        if status.as_u16() < 400 {
            return answer::success(app, a, i, res, in_flight, quota_charged).await;
        }
        let (head, stream) = res.into_parts();
        let bytes = match Limited::new(stream, MAX_ERROR_BODY).collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => {
                let cut = UpstreamError::Other("error body cut off".into());
                slot.record_failure("network");
                t.retry_reason = "network";
                t.last_error = Some(cut);
                if t.failed() {
                    break;
                }
                continue;
            }
        };
        trace.waited += sent.elapsed().saturating_sub(took);
        drop(in_flight);
        let verdict = classify::classify(status, &bytes);
        match outcome::apply(app, a, model.get(), i, verdict, &mut t, trace).await {
            Next::Answer => return answer::buffered_scrubbed(pool, head, &bytes),
            Next::Retry => {}
        }
        t.last = Some((head, bytes));
        if t.failures >= t.max_attempts {
            break;
        }
    }
    outcome::give_up(a, &pinned, &model, t)
}

/// The request for the upstream with member `slot`'s key: the client's method, body and
/// filtered headers (`headers`, or filtered again for a retry).
fn upstream_request(
    a: &Admitted<'_>,
    headers: Option<http::HeaderMap>,
    slot: &KeySlot,
) -> http::Request<Bytes> {
    let mut up = http::Request::new(a.body.clone());
    *up.method_mut() = a.parts.method.clone();
    *up.uri_mut() = a.uri.clone();
    *up.headers_mut() = headers.unwrap_or_else(|| headers::upstream_headers(&a.parts.headers));
    match a.api {
        Api::Native => up
            .headers_mut()
            .insert(headers::X_GOOG_API_KEY, slot.native_auth.clone()),
        Api::OpenAi => up
            .headers_mut()
            .insert(header::AUTHORIZATION, slot.bearer_auth.clone()),
    };
    up
}
