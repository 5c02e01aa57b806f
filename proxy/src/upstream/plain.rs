//! A lean HTTP/1.1 client for `http://` upstreams (a local gateway, the benchmark's canned
//! server): one pool of idle connections per thread and authority, no locks, no task per
//! request.
//!
//! hyper-util's pooled client spawns a task per HTTP/1 request to wait for the connection to
//! become idle again; here the response body hands its connection back when it ends. A body
//! dropped before its end takes the connection with it (it cannot carry another request).

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri, header};
use http_body::Frame;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::UpstreamError;

type Sender = SendRequest<Full<Bytes>>;

/// Idle connections kept per thread and authority; more are closed when they come back.
const MAX_IDLE: usize = 1024;

thread_local! {
    static IDLE: RefCell<HashMap<Arc<str>, Vec<Sender>>> = RefCell::new(HashMap::new());
}

fn checkout(authority: &str) -> Option<Sender> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let senders = idle.get_mut(authority)?;
        while let Some(s) = senders.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    })
}

fn checkin(authority: &Arc<str>, sender: Sender) {
    if sender.is_closed() {
        return;
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let senders = idle.entry(authority.clone()).or_default();
        if senders.len() < MAX_IDLE {
            senders.push(sender);
        }
    });
}

async fn connect(authority: &str, connect_timeout: Duration) -> Result<Sender, UpstreamError> {
    let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(authority)).await {
        Err(_) => return Err(UpstreamError::Connect("connect timed out".into())),
        Ok(Err(e)) => return Err(UpstreamError::Connect(e.to_string())),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
    // The connection's task runs on this thread's runtime, next to the requests that use it.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends `req` (origin-form or absolute URI) to `authority` (`host:port`) over a pooled
/// connection.
pub async fn send(
    authority: &Arc<str>,
    host: &HeaderValue,
    mut req: Request<Bytes>,
    connect_timeout: Duration,
) -> Result<Response<Body>, UpstreamError> {
    // Origin-form on the wire, with the upstream's Host.
    if req.uri().authority().is_some() {
        let origin_form: Uri = req
            .uri()
            .path_and_query()
            .map(|pq| Uri::from(pq.clone()))
            .unwrap_or_else(|| Uri::from_static("/"));
        *req.uri_mut() = origin_form;
    }
    req.headers_mut().insert(header::HOST, host.clone());
    let mut req = Some(req.map(Full::new));
    // A pooled connection may have been closed by the upstream meanwhile: then try a new one.
    for fresh in [false, true] {
        let mut sender = match (fresh, checkout(authority)) {
            (false, Some(s)) => s,
            (false, None) | (true, _) => connect(authority, connect_timeout).await?,
        };
        if sender.ready().await.is_err() {
            continue;
        }
        let Some(r) = req.take() else {
            break;
        };
        match sender.try_send_request(r).await {
            Ok(res) => {
                return Ok(res.map(|inner| {
                    Body::new(Returning {
                        inner,
                        sender: Some(sender),
                        authority: authority.clone(),
                        ended: false,
                    })
                }));
            }
            Err(mut e) => match e.take_message() {
                // Not sent at all: safe to try once more on a new connection.
                Some(back) if !fresh => req = Some(back),
                _ => return Err(UpstreamError::Other(e.into_error().to_string())),
            },
        }
    }
    Err(UpstreamError::Other(
        "the upstream closed the connection".into(),
    ))
}

/// A response body that gives its connection back to the pool when it ends.
struct Returning {
    inner: Incoming,
    sender: Option<Sender>,
    authority: Arc<str>,
    ended: bool,
}

impl Drop for Returning {
    fn drop(&mut self) {
        // An empty body (a 204, `content-length: 0`) may never be polled.
        if (self.ended || http_body::Body::is_end_stream(&self.inner))
            && let Some(s) = self.sender.take()
        {
            checkin(&self.authority, s);
        }
    }
}

impl http_body::Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.ended = true,
            Poll::Ready(Some(Err(_))) => self.sender = None,
            _ => {
                if self.inner.is_end_stream() {
                    self.ended = true;
                }
            }
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

#[cfg(test)]
mod tests;
