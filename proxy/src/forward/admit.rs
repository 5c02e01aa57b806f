//! Admit: what a request is and whether it may go on. The route (a path no route knows is 404;
//! dot segments and encoded separators 400), the client's credential and its group (an upload
//! session's chunk is its starter's), the body (bounded in size and time), the upstream URI,
//! the group's prompt-size guardrail, and the client's allowance. Everything refused here is
//! answered in the route's envelope before any key is chosen.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use keystore::clock::now_ms;

use super::{Trace, answer};
use crate::affinity::{self, Creates};
use crate::envelope::{self, retry_after_secs};
use crate::headers;
use crate::pool::Pool;
use crate::quota::{self, Room};
use crate::registry::Client;
use crate::routes::{self, Api, Route};
use crate::shared::App;

/// A request body must arrive whole within this (32 MiB at about 4.5 Mbit/s), so a client that
/// trickles its body holds its connection for a bounded time.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A request that may go on, and what the later phases need of it.
pub(super) struct Admitted<'p> {
    pub parts: &'p http::request::Parts,
    pub route: Route<'p>,
    pub api: Api,
    pub pool: Arc<Pool>,
    pub body: Bytes,
    pub uri: http::Uri,
    /// The store name of the upload session this request continues.
    pub session: Option<String>,
    pub session_binding: Option<keystore::Binding>,
    /// The input-token estimate charged before the answer tells.
    pub estimate: u64,
    pub charged_ms: u64,
    /// The client whose allowance was charged.
    pub client_charged: Option<Arc<str>>,
    /// What a success creates (a file, cache, batch or upload session).
    pub creates: Option<Creates>,
    /// For an upload session started in a Token group: the starting client.
    pub upload_client: Option<keystore::TokenDigest>,
}

/// Admits `parts` and reads `body`, or answers the refusal.
pub(super) async fn admit<'p>(
    app: &App,
    parts: &'p http::request::Parts,
    body: Body,
    trace: &mut Trace,
) -> Result<Admitted<'p>, Response> {
    if routes::is_ambiguous_path(parts.uri.path()) {
        return Err(envelope::error(
            Api::Native,
            StatusCode::BAD_REQUEST,
            "the request path has a . or .. segment or an encoded / or \\: not allowed",
            None,
        ));
    }
    let cred = headers::credential(&parts.headers, parts.uri.query());
    let Some(route) = routes::route(&parts.method, parts.uri.path(), cred.bearer_only) else {
        return Err(envelope::error(
            Api::Native,
            StatusCode::NOT_FOUND,
            &format!(
                "no route for {}: Gemini's native API is under /v1/, /v1beta/, /upload/ and /download/; the OpenAI-compatible API under /v1beta/openai/ (or /v1/chat/completions, /v1/embeddings, /v1/models)",
                parts.uri.path()
            ),
            None,
        ));
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
    )
    .map(affinity::session_resource);
    let session_binding = match &session {
        Some(resource) => app
            .affinity
            .first_bound(std::slice::from_ref(resource), |_| true)
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
                    return Err(envelope::error(
                        api,
                        StatusCode::FORBIDDEN,
                        "this upload session belongs to another client",
                        None,
                    ));
                }
                match app.registry.resolve_digest(owner) {
                    Some(c) if c.pool.name() == b.group => Some(c),
                    _ => {
                        return Err(envelope::error(
                            api,
                            StatusCode::UNAUTHORIZED,
                            "the client that started this upload session is no longer admitted",
                            None,
                        ));
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
            return Err(envelope::error(
                api,
                StatusCode::NOT_FOUND,
                "this upload session is not known to this proxy: it expired, or was not started through it",
                None,
            ));
        }
        let message = if cred.token.is_some() {
            "the client token is not valid for this proxy"
        } else {
            "no client token: send it as Authorization: Bearer, x-goog-api-key or ?key="
        };
        return Err(envelope::error(
            api,
            StatusCode::UNAUTHORIZED,
            message,
            None,
        ));
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
        return Err(too_large());
    }
    let read = tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, limit).collect());
    let body: Bytes = match read.await {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Err(_) => {
            return Err(envelope::error(
                api,
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body did not arrive within {} s",
                    BODY_READ_TIMEOUT.as_secs()
                ),
                None,
            ));
        }
        Ok(Err(_)) => {
            return Err(envelope::error(
                api,
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
                None,
            ));
        }
    };

    let query = headers::strip_key_from_query(parts.uri.query());
    let Ok(uri) = pool
        .upstream
        .uri_for(&parts.uri, &route.upstream_path, query.as_deref())
    else {
        return Err(envelope::error(
            api,
            StatusCode::BAD_REQUEST,
            "the request path is not valid",
            None,
        ));
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
            return Err(envelope::error(
                api,
                StatusCode::BAD_REQUEST,
                &format!(
                    "the request's input is estimated at {estimated} tokens, over this group's limit of {max} tokens per request (limits.maxInputTokensPerRequest)"
                ),
                None,
            ));
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
                    return Err(envelope::error(
                        api,
                        StatusCode::TOO_MANY_REQUESTS,
                        &format!(
                            "client {name} is over its limit of {}; try again in {secs} s",
                            answer::describe_client_limits(&pool)
                        ),
                        Some(secs),
                    ));
                }
                Room::Free(_) => {
                    pool.book.charge_client(name, estimate, now);
                    Some(name.clone())
                }
            }
        }
        _ => None,
    };

    let creates = Creates::of(&parts.method, &route.upstream_path, &parts.headers);
    let upload_client = (creates == Some(Creates::UploadSession)
        && pool.snapshot.access.mode == keystore::AccessMode::Token)
        .then(|| cred.token.as_deref().map(keystore::TokenDigest::of))
        .flatten();
    Ok(Admitted {
        parts,
        route,
        api,
        pool,
        body,
        uri,
        session,
        session_binding,
        estimate,
        charged_ms,
        client_charged,
        creates,
        upload_client,
    })
}
