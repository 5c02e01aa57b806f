//! The request path: client in, key chosen, upstream attempts with retries, answer streamed out.
//! [`handle`] runs its phases in order, each in its own module, and wraps them with the access
//! log and metrics:
//! - [`admit`]: route, credential, group, body, guardrail, client allowance;
//! - [`place`]: key affinity (which project's keys may serve);
//! - [`attempt`]: the loop that picks a key, sends, and reads the answer;
//! - [`outcome`]: what a failed answer means (cool, retire, back off) and the final refusal;
//! - [`answer`]: what the client gets (streamed success, created resources, errors).
//!
//! Nothing here awaits the store on the way (affinity lookups aside, bounded in `affinity`):
//! the group comes from an atomically swapped snapshot, key transitions are applied locally
//! and handed to the outbox.

mod admit;
mod answer;
mod attempt;
mod outcome;
mod place;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::Response;

use crate::access_log;
use crate::pool::Pool;
use crate::routes::Api;
use crate::shared::App;

/// What the access log and metrics need to know about a request.
struct Trace {
    api: Api,
    route: &'static str,
    pool: Option<Arc<Pool>>,
    client: Option<Arc<str>>,
    /// The member of `pool` that served the last attempt.
    key: Option<usize>,
    attempts: u32,
    /// Time spent waiting on the upstream and in backoffs: not the proxy's own latency.
    waited: Duration,
}

pub async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    let started = Instant::now();
    let request_id = app.request_ids.take(req.headers());
    let log = access_log::enabled();
    let mut trace = Trace {
        api: Api::Native,
        route: "unknown",
        pool: None,
        client: None,
        key: None,
        attempts: 0,
        waited: Duration::ZERO,
    };
    // The phases, in order; each may answer and end the request. Awaited here rather than in a
    // function of their own: one level less of nested futures to build and move.
    let (parts, body) = req.into_parts();
    let mut res = match admit::admit(&app, &parts, body, &mut trace).await {
        Ok(admitted) => {
            let pinned = place::pin(&app, &admitted).await;
            attempt::attempts(&app, &admitted, pinned, &mut trace).await
        }
        Err(refused) => refused,
    };
    let status = res.status().as_u16();
    let group = trace.pool.as_ref().map(|p| p.name()).unwrap_or("");
    app.metrics.count_request(group, trace.route, status);
    let elapsed = started.elapsed();
    if trace.attempts > 0 {
        app.metrics
            .added_seconds
            .observe(elapsed.saturating_sub(trace.waited).as_secs_f64());
    }
    if log {
        let entry = access_log::Entry {
            request_id: request_id.to_str().unwrap_or(""),
            method: parts.method.as_str(),
            path: parts.uri.path(),
            api: trace.api.as_str(),
            route: trace.route,
            group,
            client: trace.client.as_deref().unwrap_or(""),
            status,
            key_id: match (&trace.pool, trace.key) {
                (Some(pool), Some(i)) => pool.members[i].slot.id.as_str(),
                _ => "",
            },
            attempts: trace.attempts,
            duration: elapsed,
        };
        match app.access_log.get() {
            Some(writer) => writer.write(&entry),
            None => access_log::via_tracing(&entry),
        }
    }
    res.headers_mut()
        .insert(crate::shared::X_REQUEST_ID, request_id);
    // Let the other connections this thread has ready go first, so that answers leave in a
    // burst: the client's side is then woken once for several of them instead of once each
    // (a wake-up across cores is an interrupt, and dear in a VM). See `upstream::h1::send`
    // for the same on the way up; measured in the README's Performance section.
    tokio::task::yield_now().await;
    res
}
