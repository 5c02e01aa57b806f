//! The request path: client in, key chosen, upstream attempts with retries, answer streamed out.
//!
//! Nothing here awaits the store: the group comes from an atomically swapped snapshot, key
//! transitions are applied locally and handed to the outbox.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, Version, header};
use http_body::Frame;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use keystore::Transition;
use keystore::clock::now_ms;

use crate::access_log;
use crate::affinity::{self, Creates};
use crate::app::App;
use crate::auth;
use crate::classify::{self, QuotaWindow, Verdict};
use crate::envelope::{self, retry_after_secs};
use crate::pool::{Demand, InFlight, Pick, Pool};
use crate::quota::{self, Room};
use crate::redact;
use crate::registry::Client;
use crate::routes::{self, Api, ModelOf};
use crate::sync::Pending;
use crate::upstream::UpstreamError;
use crate::usage::TokenScan;

/// Error bodies are read whole to classify them; they are small, this is a safety cap.
const MAX_ERROR_BODY: usize = 1 << 20;
/// Answers that create a resource are read whole to learn its name.
const MAX_CREATED_BODY: usize = 4 << 20;
/// A request body must arrive whole within this (32 MiB at about 4.5 Mbit/s), so a client that
/// trickles its body holds its connection for a bounded time.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

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
    let method = req.method().clone();
    let path = if log {
        req.uri().path().to_owned()
    } else {
        String::new()
    };
    let mut trace = Trace {
        api: Api::Native,
        route: "unknown",
        pool: None,
        client: None,
        key: None,
        attempts: 0,
        waited: Duration::ZERO,
    };
    let mut res = forward(&app, req, &mut trace).await;
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
            method: method.as_str(),
            path: &path,
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
        .insert(crate::app::X_REQUEST_ID, request_id);
    // Let the other connections this thread has ready go first, so that answers leave in a
    // burst: the client's side is then woken once for several of them instead of once each
    // (a wake-up across cores is an interrupt, and dear in a VM). See `upstream::plain::send`
    // for the same on the way up; measured in the README's Performance section.
    tokio::task::yield_now().await;
    res
}

async fn forward(app: &App, req: Request, trace: &mut Trace) -> Response {
    let (parts, body) = req.into_parts();
    if routes::is_ambiguous_path(parts.uri.path()) {
        return envelope::error(
            Api::Native,
            StatusCode::BAD_REQUEST,
            "the request path has a . or .. segment or an encoded / or \\: not allowed",
            None,
        );
    }
    let cred = auth::credential(&parts.headers, parts.uri.query());
    let Some(route) = routes::route(&parts.method, parts.uri.path(), cred.bearer_only) else {
        return envelope::error(
            Api::Native,
            StatusCode::NOT_FOUND,
            &format!(
                "no route for {}: Gemini's native API is under /v1/, /v1beta/, /upload/ and /download/; the OpenAI-compatible API under /v1beta/openai/ (or /v1/chat/completions, /v1/embeddings, /v1/models)",
                parts.uri.path()
            ),
            None,
        );
    };
    let api = route.api;
    trace.api = api;
    trace.route = route.operation;
    // The chunks of a resumable upload carry no key: the session is their credential.
    let session = affinity::chunk_of_session(
        &parts.method,
        parts.uri.path(),
        parts.uri.query(),
        &parts.headers,
    );
    let session_binding = match session {
        Some(id) => app
            .affinity
            .first_bound(&[affinity::session_resource(id)], |_| true)
            .await
            .map(|(_, b)| b),
        None => None,
    };
    let client = match &session_binding {
        // A session of a Token group serves the client that started it, while its token is
        // admitted; a chunk carrying another client's token is refused.
        Some(b) => match &b.client {
            Some(owner) => {
                if cred
                    .token
                    .as_deref()
                    .is_some_and(|t| &keystore::TokenDigest::of(t) != owner)
                {
                    return envelope::error(
                        api,
                        StatusCode::FORBIDDEN,
                        "this upload session belongs to another client",
                        None,
                    );
                }
                match app.registry.resolve_digest(owner) {
                    Some(c) if c.pool.name() == b.group => Some(c),
                    _ => {
                        return envelope::error(
                            api,
                            StatusCode::UNAUTHORIZED,
                            "the client that started this upload session is no longer admitted",
                            None,
                        );
                    }
                }
            }
            None => app.registry.groups().get(&b.group).map(|pool| Client {
                pool: pool.clone(),
                name: None,
            }),
        },
        None => app.registry.resolve(cred.token.as_deref()),
    };
    let Some(client) = client else {
        if session.is_some() && session_binding.is_none() && cred.token.is_none() {
            return envelope::error(
                api,
                StatusCode::NOT_FOUND,
                "this upload session is not known to this proxy: it expired, or was not started through it",
                None,
            );
        }
        let message = if cred.token.is_some() {
            "the client token is not valid for this proxy"
        } else {
            "no client token: send it as Authorization: Bearer, x-goog-api-key or ?key="
        };
        return envelope::error(api, StatusCode::UNAUTHORIZED, message, None);
    };
    let pool = client.pool;
    trace.pool = Some(pool.clone());
    trace.client = client.name;

    let limit = app
        .max_body_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    let too_large = || {
        envelope::error(
            api,
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the request body is larger than this proxy's limit of {limit} bytes"),
            None,
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let read = tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, limit).collect());
    let body: Bytes = match read.await {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Err(_) => {
            return envelope::error(
                api,
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body did not arrive within {} s",
                    BODY_READ_TIMEOUT.as_secs()
                ),
                None,
            );
        }
        Ok(Err(_)) => {
            return envelope::error(
                api,
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
                None,
            );
        }
    };

    let query = auth::strip_key_from_query(parts.uri.query());
    let Ok(uri) = pool
        .upstream
        .uri_for(&parts.uri, &route.upstream_path, query.as_deref())
    else {
        return envelope::error(
            api,
            StatusCode::BAD_REQUEST,
            "the request path is not valid",
            None,
        );
    };
    // The guardrail: a prompt estimated over the group's per-request limit never goes up.
    if let Some(max) = pool.snapshot.limits.max_input_tokens_per_request
        && quota::counts(route.operation)
    {
        let estimated = crate::guardrail::estimate_input_tokens(&body);
        if estimated > max {
            app.metrics
                .input_tokens_refused
                .with_label_values(&[pool.name()])
                .inc();
            return envelope::error(
                api,
                StatusCode::BAD_REQUEST,
                &format!(
                    "the request's input is estimated at {estimated} tokens, over this group's limit of {max} tokens per request (limits.maxInputTokensPerRequest)"
                ),
                None,
            );
        }
    }
    // A rough input-token estimate (about four bytes a token, capped), replaced by the
    // answer's figure.
    let estimate = ((body.len() / 4) as u64).min(quota::MAX_TOKEN_ESTIMATE);
    let charged_ms = now_ms();
    let client_charged = match (&trace.client, pool.book.clients_limited()) {
        (Some(name), true) => {
            let now = now_ms();
            match pool.book.client_room(name, estimate, now) {
                Room::FullUntil(until) => {
                    let secs = retry_after_secs(until, now);
                    app.metrics
                        .client_limited
                        .with_label_values(&[pool.name()])
                        .inc();
                    return envelope::error(
                        api,
                        StatusCode::TOO_MANY_REQUESTS,
                        &format!(
                            "client {name} is over its limit of {}; try again in {secs} s",
                            describe_client_limits(&pool)
                        ),
                        Some(secs),
                    );
                }
                Room::Free(_) => {
                    pool.book.charge_client(name, estimate, now);
                    Some(name.clone())
                }
            }
        }
        _ => None,
    };

    // Key affinity: a request that continues an upload or names a file, cache or batch goes to
    // a key of the project that created it.
    let mut pinned: Option<(Arc<str>, String)> = None;
    if let Some(b) = &session_binding
        && let Some(i) = pool.index_of(&b.key)
    {
        pinned = Some((
            pool.members[i].scope.clone(),
            "this upload session".to_owned(),
        ));
    }
    // With one project in the group, every key is the owner's: nothing to look up.
    if pinned.is_none() && pool.has_several_scopes() {
        let mut names: Vec<String> = affinity::named_in_body(&body);
        if let Some(n) = affinity::named_in_path(&route.upstream_path) {
            names.insert(0, n.to_owned());
        }
        names.dedup();
        names.truncate(affinity::MAX_NAMES);
        // Concurrently, bounded in all (a hung store costs at most PATH_LOOKUP_TIMEOUT once).
        let found = app
            .affinity
            .first_bound(&names, |b| {
                b.group == pool.name() && pool.index_of(&b.key).is_some()
            })
            .await;
        if let Some((n, b)) = found
            && let Some(i) = pool.index_of(&b.key)
        {
            pinned = Some((pool.members[i].scope.clone(), names.swap_remove(n)));
        }
    }
    let creates = Creates::of(&parts.method, &route.upstream_path, &parts.headers);

    // Moved into the first attempt; retries (rare) filter the client's headers again.
    let mut headers = Some(auth::upstream_headers(&parts.headers));
    let model = ModelOf::new(api, &route.upstream_path, &body);
    let group = pool.name();
    let max_attempts = pool.snapshot.retry.max_attempts.max(1);
    let demand = Demand {
        tokens: estimate,
        scope: pinned.as_ref().map(|(s, _)| &**s),
    };

    // Attempt budget: `retry.maxAttempts` bounds the failures that are not about a key (5xx,
    // network, timeouts, deadlines). A verdict about a key or its project (429 quota, invalid,
    // leaked, suspended, blocked) moves on to another key without spending it: each key is
    // tried at most once (and a project-wide 429 cools every key of the project), so a request
    // fails for want of keys only when no healthy key is left.
    let mut failures = 0u32;
    // Whether the last upstream answer was a verdict about its key: then Google's body (which
    // may name the key) is not passed on; the proxy answers with its own error.
    let mut last_about_key = false;
    let mut tried: Vec<usize> = Vec::with_capacity(max_attempts as usize);
    let mut last: Option<(http::response::Parts, Bytes)> = None;
    let mut last_error: Option<UpstreamError> = None;
    let mut retry_reason = "";
    let mut deadline_retries = 0u32;
    let mut wait_budget_ms = u64::from(pool.snapshot.retry.wait_on_cooldown_secs) * 1000;
    let mut backoffs = 0u32;
    loop {
        let now = now_ms();
        let i = match pool.pick_for(&model, &tried, now, &demand) {
            Pick::Key(i) => i,
            Pick::Cooling(until) => {
                // Wait instead of fail, when the group allows it and nothing was sent yet: hold
                // the request until the first key is free, within the group's bound.
                let wait_ms = until.saturating_sub(now) + 5;
                if wait_ms <= wait_budget_ms {
                    wait_budget_ms -= wait_ms;
                    let wait = Duration::from_millis(wait_ms);
                    tracing::debug!(group, wait_ms, "every key cooling: waiting for the first");
                    tokio::time::sleep(wait).await;
                    trace.waited += wait;
                    tried.clear();
                    continue;
                }
                let secs = retry_after_secs(until, now);
                return all_cooling(api, &pinned, group, secs);
            }
            Pick::Tried | Pick::NoKeys => break,
        };
        if !tried.is_empty() {
            app.metrics
                .retries
                .with_label_values(&[group, retry_reason])
                .inc();
        }
        tried.push(i);
        trace.attempts += 1;
        let member = &pool.members[i];
        let slot = &member.slot;
        trace.key = Some(i);
        let quota_charged = match model.get() {
            Some(m) if pool.book.quota_active() && quota::counts(route.operation) => {
                pool.book.charge_quota(&member.scope, m, estimate, now);
                Some(quota::quota_name(&member.scope, m))
            }
            _ => None,
        };

        let mut up = http::Request::new(body.clone());
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = uri.clone();
        *up.headers_mut() = headers
            .take()
            .unwrap_or_else(|| auth::upstream_headers(&parts.headers));
        match api {
            Api::Native => up
                .headers_mut()
                .insert(auth::X_GOOG_API_KEY, slot.native_auth.clone()),
            Api::OpenAi => up
                .headers_mut()
                .insert(header::AUTHORIZATION, slot.bearer_auth.clone()),
        };
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
                slot.record_failure(e.kind());
                tracing::warn!(group, key_id = %slot.id, error = %e, "upstream attempt failed");
                retry_reason = e.kind();
                last_error = Some(e);
                failures += 1;
                if failures >= max_attempts {
                    break;
                }
                continue;
            }
        };
        let status = res.status();
        if status.as_u16() < 400 {
            slot.record_success();
            if let Some(id) = session
                && res
                    .headers()
                    .get("x-goog-upload-status")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"final"))
            {
                // A finished upload session authorises nothing more.
                app.affinity.unbind(&affinity::session_resource(id)).await;
            }
            if let Some(kind) = creates {
                let binding = keystore::Binding {
                    group: group.to_owned(),
                    key: slot.id.clone(),
                    // An upload session of a Token group is its starting client's only.
                    client: (kind == Creates::UploadSession
                        && pool.snapshot.access.mode == keystore::AccessMode::Token)
                        .then(|| cred.token.as_deref().map(keystore::TokenDigest::of))
                        .flatten(),
                };
                return created(app, kind, binding, res, &parts, in_flight).await;
            }
            let charges = (quota_charged.is_some() || client_charged.is_some()).then(|| {
                Box::new(Charges {
                    pool: pool.clone(),
                    quota: quota_charged.map(|q| (q, now)),
                    client: client_charged,
                    client_ms: charged_ms,
                    estimated: estimate,
                })
            });
            return deliver(res, in_flight, charges);
        }
        let (head, stream) = res.into_parts();
        let bytes = match Limited::new(stream, MAX_ERROR_BODY).collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => {
                slot.record_failure("network");
                retry_reason = "network";
                last_error = Some(UpstreamError::Other("error body cut off".into()));
                failures += 1;
                if failures >= max_attempts {
                    break;
                }
                continue;
            }
        };
        trace.waited += sent.elapsed().saturating_sub(took);
        drop(in_flight);
        match classify::classify(status, &bytes) {
            Verdict::Deliver | Verdict::PassThrough => {
                slot.record_success();
                slot.add_usage(1, 0);
                return buffered(head, redact::scrub(&bytes, &pool.key_digests));
            }
            Verdict::RateLimited(limit) => {
                let bare = limit.window == QuotaWindow::Unknown && limit.retry_delay.is_none();
                let before = slot.record_rate_limit("429 RESOURCE_EXHAUSTED", bare);
                let cooldown = classify::cooldown_for(&limit, now_ms(), before);
                if let Some(learned) = limit.stated_limit()
                    // The same model as the cooldown: the one Google names, else the request's.
                    && let Some(m) = cooldown.model.as_deref().or(model.get())
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
                transition(app, &pool, &targets, Transition::Cool(cooldown));
                retry_reason = "rate_limited";
                last_about_key = true;
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
                transition(app, &pool, &[i], Transition::Retire { reason });
                retry_reason = "key_invalid";
                last_about_key = true;
            }
            Verdict::ServerError => {
                last_about_key = false;
                retry_reason = "server_error";
                failures += 1;
                if failures < max_attempts {
                    let wait = (BACKOFF_BASE * 2u32.saturating_pow(backoffs)).min(BACKOFF_MAX);
                    backoffs += 1;
                    tokio::time::sleep(wait).await;
                    trace.waited += wait;
                }
            }
            Verdict::Deadline => {
                if deadline_retries >= 1 {
                    return buffered(head, redact::scrub(&bytes, &pool.key_digests));
                }
                last_about_key = false;
                deadline_retries += 1;
                failures += 1;
                retry_reason = "deadline";
            }
        }
        last = Some((head, bytes));
        if failures >= max_attempts {
            break;
        }
    }

    // Out of attempts, or every key was tried.
    let now = now_ms();
    if last_about_key {
        // The keys said no (quota, dead): the proxy's own answer, never Google's body about them.
        if let Some(until) = pool.earliest_reset(&model, now) {
            return all_cooling(api, &pinned, group, retry_after_secs(until, now));
        }
        return no_usable_key(api, &pinned, group);
    }
    if let Some((head, bytes)) = last {
        let reset = (head.status == StatusCode::TOO_MANY_REQUESTS)
            .then(|| pool.earliest_reset(&model, now))
            .flatten();
        let res = buffered(head, redact::scrub(&bytes, &pool.key_digests));
        return match reset {
            Some(until) => with_retry_after(res, retry_after_secs(until, now)),
            None => res,
        };
    }
    match last_error {
        Some(UpstreamError::Timeout(t)) => envelope::error(
            api,
            StatusCode::GATEWAY_TIMEOUT,
            &format!("the upstream sent no answer within {} s", t.as_secs()),
            None,
        ),
        Some(e) => envelope::error(
            api,
            StatusCode::BAD_GATEWAY,
            &format!("the upstream could not be reached: {}", e.kind()),
            None,
        ),
        None => no_usable_key(api, &pinned, group),
    }
}

/// 429 in the route's envelope (with `RetryInfo` and `Retry-After`) when every key that may
/// serve is cooling.
fn all_cooling(api: Api, pinned: &Option<(Arc<str>, String)>, group: &str, secs: u64) -> Response {
    let whose = match pinned {
        Some((_, owner)) => format!("the project that owns {owner}"),
        None => format!("group {group}"),
    };
    envelope::error(
        api,
        StatusCode::TOO_MANY_REQUESTS,
        &format!(
            "every key of {whose} is rate limited or at its quota; the first is free again in {secs} s"
        ),
        Some(secs),
    )
}

/// 503 in the route's envelope when no key that may serve is usable.
fn no_usable_key(api: Api, pinned: &Option<(Arc<str>, String)>, group: &str) -> Response {
    envelope::error(
        api,
        StatusCode::SERVICE_UNAVAILABLE,
        &match pinned {
            Some((_, owner)) => format!(
                "no usable key of the project that owns {owner}: every one is invalid or disabled"
            ),
            None => format!("group {group} has no usable key: every key is invalid or disabled"),
        },
        None,
    )
}

fn describe_client_limits(pool: &Pool) -> String {
    let l = pool.snapshot.access.client_limits;
    let mut parts = Vec::new();
    if let Some(r) = l.requests_per_minute {
        parts.push(format!("{r} requests per minute"));
    }
    if let Some(t) = l.tokens_per_minute {
        parts.push(format!("{t} tokens per minute"));
    }
    parts.join(" and ")
}

/// An answer that created a resource: the proxy learns its name (and, for an upload session,
/// points the session URL back at itself) before the client sees it.
async fn created(
    app: &App,
    kind: Creates,
    binding: keystore::Binding,
    res: http::Response<Body>,
    client: &http::request::Parts,
    in_flight: InFlight,
) -> Response {
    let (mut head, body) = res.into_parts();
    in_flight.slot().add_usage(1, 0);
    if kind == Creates::UploadSession {
        let url = head
            .headers
            .get("x-goog-upload-url")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(url) = url {
            let id = url.split_once('?').and_then(|(path, q)| {
                affinity::upload_id(&path[path.find("/upload/").unwrap_or(0)..], Some(q))
            });
            if let Some(id) = id {
                app.affinity
                    .bind(
                        &affinity::session_resource(id),
                        binding,
                        affinity::DEFAULT_TTL,
                    )
                    .await;
            }
            match affinity::rewrite_upload_url(
                &url,
                &client.headers,
                client.uri.authority().map(|a| a.as_str()),
            )
            .and_then(|u| HeaderValue::from_str(&u).ok())
            {
                Some(v) => {
                    head.headers.insert("x-goog-upload-url", v);
                }
                None => tracing::warn!("upload session URL could not be pointed back at the proxy"),
            }
        }
        clean_head(&mut head);
        return Response::from_parts(head, body);
    }
    // An answer too big to read is passed on as it is, unbound, rather than lost.
    let declared = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_CREATED_BODY) {
        tracing::warn!("a created resource's answer is too big to read: not bound to its key");
        clean_head(&mut head);
        return Response::from_parts(head, body);
    }
    let bytes = match Limited::new(body, MAX_CREATED_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return envelope::error(
                Api::Native,
                StatusCode::BAD_GATEWAY,
                "the upstream's answer was cut off",
                None,
            );
        }
    };
    if let Some((name, ttl)) = affinity::created(kind, &bytes) {
        tracing::debug!(resource = %name, key_id = %binding.key, "resource bound to its key");
        app.affinity.bind(&name, binding, ttl).await;
    }
    buffered(head, bytes)
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

fn clean_head(head: &mut http::response::Parts) {
    head.version = Version::HTTP_11;
    if !head.headers.keys().any(auth::dropped_response_header) {
        return;
    }
    let drop: Vec<_> = head
        .headers
        .keys()
        .filter(|n| auth::dropped_response_header(n))
        .cloned()
        .collect();
    for name in drop {
        head.headers.remove(name);
    }
}

/// A success: the body streams through as it arrives; the key counts as in flight until the
/// body ends.
fn deliver(
    res: http::Response<Body>,
    in_flight: InFlight,
    charges: Option<Box<Charges>>,
) -> Response {
    let (mut head, body) = res.into_parts();
    clean_head(&mut head);
    Response::from_parts(
        head,
        Body::new(Tracked {
            inner: body,
            in_flight,
            tokens: TokenScan::default(),
            charges,
        }),
    )
}

/// Token estimates charged to quota and client counters, settled when the answer ends.
struct Charges {
    pool: Arc<Pool>,
    /// The project-and-model counter (input tokens), and when it was charged.
    quota: Option<(String, u64)>,
    /// The client (all tokens), charged at `client_ms`.
    client: Option<Arc<str>>,
    client_ms: u64,
    estimated: u64,
}

/// An upstream answer that was read whole (an error), passed on unchanged.
/// An answer read whole (an error body), sent with the length it has now: scrubbing may have
/// changed it, so the upstream's `Content-Length` is not trusted.
fn buffered(mut head: http::response::Parts, bytes: Bytes) -> Response {
    clean_head(&mut head);
    head.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    Response::from_parts(head, Body::from(bytes))
}

fn with_retry_after(mut res: Response, secs: u64) -> Response {
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    res
}

/// A response body that holds the key's in-flight guard until it ends or is dropped, and
/// counts the request and its tokens for the key when it goes.
struct Tracked {
    inner: Body,
    in_flight: InFlight,
    tokens: TokenScan,
    charges: Option<Box<Charges>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.in_flight.slot().add_usage(1, self.tokens.tokens());
        if let Some(c) = self.charges.take() {
            let book = &c.pool.book;
            let found = |n: u64| (n > 0).then_some(n);
            if let Some((q, at)) = &c.quota {
                book.settle_tokens(q, *at, c.estimated, found(self.tokens.prompt_tokens()));
            }
            if let Some(client) = &c.client {
                let name = quota::client_name(client);
                book.settle_tokens(&name, c.client_ms, c.estimated, found(self.tokens.tokens()));
            }
        }
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.tokens.feed(data);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
