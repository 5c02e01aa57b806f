//! Answer: what the client gets back. A success streams through [`Tracked`], which holds the
//! key's in-flight guard and settles the token [`Charges`] when the body ends; an answer that
//! created a resource is read so its name is bound to the key (and an upload session's URL is
//! pointed back at the proxy); errors read whole are sent with their new length; and the
//! proxy's own errors when no key could serve.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, Version, header};
use http_body::Frame;
use http_body_util::{BodyExt, Limited};

use super::admit::Admitted;
use crate::affinity::{self, Creates};
use crate::envelope;
use crate::headers;
use crate::pool::{InFlight, Pool};
use crate::quota;
use crate::routes::Api;
use crate::shared::App;
use crate::token_scan::TokenScan;

/// Answers that create a resource are read whole to learn its name.
const MAX_CREATED_BODY: usize = 4 << 20;

/// A success from member `i`: a finished upload session ends here, a created resource is bound
/// to the key, and anything else streams through with its charges.
pub(super) async fn success(
    app: &App,
    a: &Admitted<'_>,
    i: usize,
    res: http::Response<Body>,
    in_flight: InFlight,
    quota_charged: Option<(String, u64)>,
) -> Response {
    let pool = &a.pool;
    let slot = &pool.members[i].slot;
    slot.record_success();
    if let Some(session) = &a.session
        && res
            .headers()
            .get("x-goog-upload-status")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"final"))
    {
        // A finished upload session authorises nothing more.
        app.affinity.unbind(session).await;
    }
    if let Some(kind) = a.creates {
        let binding = keystore::Binding {
            group: pool.name().to_owned(),
            key: slot.id.clone(),
            // An upload session of a Token group is its starting client's only.
            client: a.upload_client.clone(),
        };
        return created(app, kind, binding, res, a.parts, in_flight).await;
    }
    let charges = (quota_charged.is_some() || a.client_charged.is_some()).then(|| {
        Box::new(Charges {
            pool: pool.clone(),
            quota: quota_charged,
            client: a.client_charged.clone(),
            client_ms: a.charged_ms,
            estimated: a.estimate,
        })
    });
    deliver(res, in_flight, charges)
}

/// 429 in the route's envelope (with `RetryInfo` and `Retry-After`) when every key that may
/// serve is cooling.
pub(super) fn all_cooling(
    api: Api,
    pinned: &Option<(Arc<str>, String)>,
    group: &str,
    secs: u64,
) -> Response {
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
pub(super) fn no_usable_key(
    api: Api,
    pinned: &Option<(Arc<str>, String)>,
    group: &str,
) -> Response {
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

pub(super) fn describe_client_limits(pool: &Pool) -> String {
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

fn clean_head(head: &mut http::response::Parts) {
    head.version = Version::HTTP_11;
    if !head.headers.keys().any(headers::dropped_response_header) {
        return;
    }
    let drop: Vec<_> = head
        .headers
        .keys()
        .filter(|n| headers::dropped_response_header(n))
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

/// An answer read whole (an error body), sent with the length it has now: scrubbing may have
/// changed it, so the upstream's `Content-Length` is not trusted.
pub(super) fn buffered(mut head: http::response::Parts, bytes: Bytes) -> Response {
    clean_head(&mut head);
    head.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    Response::from_parts(head, Body::from(bytes))
}

/// An error body read whole, scrubbed of the group's keys and key-shaped text.
pub(super) fn buffered_scrubbed(
    pool: &Pool,
    head: http::response::Parts,
    bytes: &Bytes,
) -> Response {
    buffered(head, crate::redact::scrub(bytes, &pool.key_digests))
}

pub(super) fn with_retry_after(mut res: Response, secs: u64) -> Response {
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
