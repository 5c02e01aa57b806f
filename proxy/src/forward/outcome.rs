//! Outcome: what an upstream answer that is not a success means, and what follows from it.
//! A verdict about a key (a 429 cools it, or every key of its project; a dead key is retired)
//! is applied here at once and queued for the store, counted in the metrics and written to the
//! audit log; a server error backs off; a deadline is retried once. When the attempts end
//! without an answer, [`give_up`] says why in the route's envelope: a verdict about the keys is
//! the proxy's own answer, never Google's body about them.

use http::StatusCode;
use keystore::Transition;
use keystore::clock::now_ms;

use super::admit::Admitted;
use super::attempt::Tally;
use super::place::Pinned;
use super::{Trace, answer};
use crate::classify::{self, QuotaWindow, Verdict};
use crate::envelope::{self, retry_after_secs};
use crate::pool::Pool;
use crate::routes::ModelOf;
use crate::shared::App;
use crate::store_sync::Pending;
use crate::upstream::UpstreamError;

const BACKOFF_BASE: std::time::Duration = std::time::Duration::from_millis(100);
const BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// What follows an answer that was not a success.
pub(super) enum Next {
    /// Pass this answer on (scrubbed).
    Answer,
    /// Try again, within the budget.
    Retry,
}

/// Applies the verdict on member `i`'s answer (`model`: the request's).
pub(super) async fn apply(
    app: &App,
    a: &Admitted<'_>,
    model: Option<&str>,
    i: usize,
    verdict: Verdict,
    t: &mut Tally,
    trace: &mut Trace,
) -> Next {
    let pool = &a.pool;
    let group = pool.name();
    let member = &pool.members[i];
    let slot = &member.slot;
    match verdict {
        Verdict::Deliver | Verdict::PassThrough => {
            slot.record_success();
            slot.add_usage(1, 0);
            return Next::Answer;
        }
        Verdict::RateLimited(limit) => {
            let bare = limit.window == QuotaWindow::Unknown && limit.retry_delay.is_none();
            let before = slot.record_rate_limit("429 RESOURCE_EXHAUSTED", bare);
            let cooldown = classify::cooldown_for(&limit, now_ms(), before);
            if let Some(learned) = limit.stated_limit()
                // The same model as the cooldown: the one Google names, else the request's.
                && let Some(m) = cooldown.model.as_deref().or(model)
                && pool
                    .book
                    .learn(&member.scope, m, learned, now_ms(), Some(cooldown.until_ms))
            {
                tracing::info!(group, key_id = %slot.id, model = m, limit = ?learned, "quota limit learned from a 429");
            }
            // A quota is the project's: every key of it is spent. A bare 429 may be
            // anything, so only this key waits.
            let targets = if limit.window == QuotaWindow::Unknown {
                vec![i]
            } else {
                pool.same_quota(i)
            };
            app.metrics
                .cooldowns
                .with_label_values(&[group, cooldown.reason.as_str()])
                .inc();
            tracing::info!(
                target: "gemini_proxy::audit",
                event = "key_cooled",
                group,
                key_id = %slot.id,
                keys = targets.len(),
                reason = cooldown.reason.as_str(),
                model = cooldown.model.as_deref().unwrap_or(""),
                until_ms = cooldown.until_ms,
                "key cooling down"
            );
            transition(app, pool, &targets, Transition::Cool(cooldown));
            t.retry_reason = "rate_limited";
            t.last_about_key = true;
        }
        Verdict::KeyInvalid(reason) => {
            slot.record_failure(reason.as_str());
            app.metrics
                .retirements
                .with_label_values(&[group, reason.as_str()])
                .inc();
            tracing::warn!(
                target: "gemini_proxy::audit",
                event = "key_retired",
                group,
                key_id = %slot.id,
                source = %member.source,
                reason = reason.as_str(),
                "key retired"
            );
            transition(app, pool, &[i], Transition::Retire { reason });
            t.retry_reason = "key_invalid";
            t.last_about_key = true;
        }
        Verdict::ServerError => {
            t.last_about_key = false;
            t.retry_reason = "server_error";
            if !t.failed() {
                let wait = (BACKOFF_BASE * 2u32.saturating_pow(t.backoffs)).min(BACKOFF_MAX);
                t.backoffs += 1;
                tokio::time::sleep(wait).await;
                trace.waited += wait;
            }
        }
        Verdict::Deadline => {
            if t.deadline_retries >= 1 {
                return Next::Answer;
            }
            t.last_about_key = false;
            t.deadline_retries += 1;
            let _spent = t.failed();
            t.retry_reason = "deadline";
        }
    }
    Next::Retry
}

/// The answer when no attempt succeeded: out of attempts, or every key was tried.
pub(super) fn give_up(
    a: &Admitted<'_>,
    pinned: &Pinned,
    model: &ModelOf<'_>,
    t: Tally,
) -> axum::response::Response {
    let pool = &a.pool;
    let group = pool.name();
    let now = now_ms();
    if t.last_about_key {
        // The keys said no (quota, dead): the proxy's own answer, never Google's body about them.
        if let Some(until) = pool.earliest_reset(model, now) {
            return answer::all_cooling(a.api, pinned, group, retry_after_secs(until, now));
        }
        return answer::no_usable_key(a.api, pinned, group);
    }
    if let Some((head, bytes)) = t.last {
        let reset = (head.status == StatusCode::TOO_MANY_REQUESTS)
            .then(|| pool.earliest_reset(model, now))
            .flatten();
        let res = answer::buffered_scrubbed(pool, head, &bytes);
        return match reset {
            Some(until) => answer::with_retry_after(res, retry_after_secs(until, now)),
            None => res,
        };
    }
    match t.last_error {
        Some(UpstreamError::Timeout(limit)) => envelope::error(
            a.api,
            StatusCode::GATEWAY_TIMEOUT,
            &format!("the upstream sent no answer within {} s", limit.as_secs()),
            None,
        ),
        Some(e) => envelope::error(
            a.api,
            StatusCode::BAD_GATEWAY,
            &format!("the upstream could not be reached: {}", e.kind()),
            None,
        ),
        None => answer::no_usable_key(a.api, pinned, group),
    }
}

/// Applies a transition to members of `pool` now, and queues it for the store.
fn transition(app: &App, pool: &Pool, members: &[usize], t: Transition) {
    let now = now_ms();
    let mut keys = Vec::with_capacity(members.len());
    for &j in members {
        let slot = &pool.members[j].slot;
        slot.apply(&t, now);
        keys.push(slot.id.clone());
    }
    app.outbox.send(Pending {
        group: pool.name().to_owned(),
        keys,
        transition: t,
    });
}
