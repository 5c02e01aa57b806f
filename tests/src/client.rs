//! A plain-HTTP test client on loopback that can read a body frame by frame.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

/// A whole answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A frame of a streamed answer and when it arrived.
#[derive(Debug)]
pub struct TimedChunk {
    pub at: Instant,
    pub data: Bytes,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        Self {
            inner: HyperClient::builder(TokioExecutor::new()).build(http),
        }
    }

    fn request(
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Request<Full<Bytes>> {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Full::new(body)).expect("test request")
    }

    /// Sends a request and reads the whole answer.
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let res = self
            .inner
            .request(Self::request(method, url, headers, body.into()))
            .await
            .unwrap_or_else(|e| panic!("request to {url} failed: {e:?}"));
        let (parts, body) = res.into_parts();
        let body = body.collect().await.expect("read body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Sends a request and returns the answer with its body still streaming.
    pub async fn open(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> http::Response<Incoming> {
        self.inner
            .request(Self::request(method, url, headers, body.into()))
            .await
            .unwrap_or_else(|e| panic!("request to {url} failed: {e:?}"))
    }

    /// Reads a streaming body frame by frame, noting when each arrived.
    pub async fn frames(mut body: Incoming, limit: Duration) -> Vec<TimedChunk> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        while let Ok(Some(frame)) = tokio::time::timeout_at(deadline, body.frame()).await {
            if let Ok(data) = frame.expect("frame").into_data() {
                out.push(TimedChunk {
                    at: Instant::now(),
                    data,
                });
            }
        }
        out
    }
}
