//! A mock Gemini upstream on loopback that answers like Google (see [`crate::wire`]).
//!
//! Each API key has a [`Behaviour`] (or a script of them, one per request, the last repeating);
//! unknown keys get 400 `API_KEY_INVALID`, as from Google. Every request is recorded.
//!
//! Keys belong to projects ([`projects`]): a project's keys share its per-minute quota, and the
//! files, upload sessions, cached contents and batches one key creates are usable only by keys
//! of the same project, as on Google.

pub mod projects;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderMap, Method, StatusCode, header};
use http_body::Frame;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::wire::{self, Quota, Usage};
use projects::{Projects, UploadSession};

/// How the mock answers a request made with a given key.
#[derive(Clone, Debug, PartialEq)]
pub enum Behaviour {
    Ok,
    /// 400 `API_KEY_INVALID`.
    Invalid,
    Leaked,
    ServiceBlocked,
    ServiceDisabled,
    Suspended,
    /// 400 `INVALID_ARGUMENT` whose message quotes the key.
    BadRequestQuotingKey,
    /// 403 for a file of another project.
    FilePermission,
    /// 429 for `quota`, with `RetryInfo` when `retry_delay` is set (e.g. `"2s"`).
    Quota {
        quota: Quota,
        retry_delay: Option<&'static str>,
    },
    /// 429 with only a Help link.
    RateLimitedBare,
    Internal,
    Overloaded,
    Deadline,
    /// Accepts the request and never answers.
    Hang,
}

/// A request as the mock saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The key the request carried (`x-goog-api-key`, `?key=` or `Bearer`).
    pub key: Option<String>,
    pub body: Bytes,
    pub at: Instant,
    /// HTTP/1.1, or HTTP/2 over TLS when the client chose it by ALPN.
    pub version: http::Version,
}

/// Stream shape for `streamGenerateContent` and OpenAI `stream: true`.
#[derive(Clone, Copy, Debug)]
pub struct StreamShape {
    pub chunks: usize,
    pub delay: Duration,
}

#[derive(Default)]
struct Inner {
    scripts: HashMap<String, (Vec<Behaviour>, usize)>,
    seen: Vec<Seen>,
    stream: Option<StreamShape>,
    /// How keys without a script are answered (Google's answer: invalid).
    default: Option<Behaviour>,
    projects: Projects,
    /// How many answers of each status were given.
    answered: HashMap<u16, usize>,
    /// TLS connections whose handshake completed (a pooled client makes few).
    tls_connections: usize,
}

#[derive(Clone)]
pub struct MockGemini {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    /// Serving `https://` (HTTP/2 and HTTP/1.1 by ALPN) with the test CA's certificate.
    tls: bool,
}

impl MockGemini {
    /// Starts the mock on a free loopback port: `https://` when the suite runs over TLS
    /// (`GEMINI_PROXY_TEST_UPSTREAM=https`, see [`crate::tls`]), else `http://`.
    pub async fn start() -> Self {
        if crate::tls::https_upstream() {
            Self::start_tls("127.0.0.1:0").await
        } else {
            Self::start_on("127.0.0.1:0").await
        }
    }

    /// Starts the mock on `addr`, plain HTTP/1.1.
    pub async fn start_on(addr: &str) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind mock");
        let addr = listener.local_addr().expect("mock addr");
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new().fallback(handle).with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            inner,
            tls: false,
        }
    }

    /// Starts the mock on `addr` over TLS with the test CA's certificate, HTTP/2 or HTTP/1.1 as
    /// the client's ALPN asks (as Google's front ends do).
    pub async fn start_tls(addr: &str) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind mock");
        let addr = listener.local_addr().expect("mock addr");
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::TestCa::get().server_config());
        let shared = inner.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let app = app.clone();
                let counts = shared.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if let Ok(mut i) = counts.lock() {
                        i.tls_connections += 1;
                    }
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        Self {
            addr,
            inner,
            tls: true,
        }
    }

    pub fn url(&self) -> String {
        if self.tls {
            format!("https://{}", self.addr)
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// The CA file a proxy must trust to reach this mock (`upstream.caFile`), when it is TLS.
    pub fn ca_file(&self) -> Option<std::path::PathBuf> {
        self.tls.then(|| crate::tls::TestCa::get().ca_file())
    }

    /// `upstream: {...}` entries for a proxy's YAML config: the URL, and the CA when TLS.
    pub fn upstream_yaml(&self) -> String {
        match self.ca_file() {
            Some(ca) => format!("url: \"{}\", caFile: \"{}\"", self.url(), ca.display()),
            None => format!("url: \"{}\"", self.url()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets how `key` is answered from now on.
    pub fn key(&self, key: &str, b: Behaviour) -> &Self {
        self.script(key, vec![b])
    }

    /// Answers `key`'s next requests with `script` in order; the last entry repeats.
    pub fn script(&self, key: &str, script: Vec<Behaviour>) -> &Self {
        assert!(!script.is_empty());
        self.lock().scripts.insert(key.to_owned(), (script, 0));
        self
    }

    /// Answers every key without a script with `b` (by default such keys are invalid).
    pub fn accept_any_key(&self, b: Behaviour) -> &Self {
        self.lock().default = Some(b);
        self
    }

    pub fn set_stream(&self, chunks: usize, delay: Duration) -> &Self {
        self.lock().stream = Some(StreamShape { chunks, delay });
        self
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// TLS connections accepted so far (handshake completed).
    pub fn tls_connections(&self) -> usize {
        self.lock().tls_connections
    }

    /// How many requests carried `key`.
    pub fn count(&self, key: &str) -> usize {
        self.lock()
            .seen
            .iter()
            .filter(|s| s.key.as_deref() == Some(key))
            .count()
    }

    pub fn clear(&self) {
        self.lock().seen.clear();
    }

    /// Puts `key` in `project` (keys are their own project otherwise).
    pub fn project(&self, key: &str, project: &str) -> &Self {
        self.lock().projects.assign(key, project);
        self
    }

    /// Gives `project` a quota of `rpm` requests per minute per model (a sliding minute), shared
    /// by its keys; over it, 429 `GenerateRequestsPerMinutePerProjectPerModel` with `RetryInfo`.
    pub fn project_rpm(&self, project: &str, rpm: u64) -> &Self {
        self.lock().projects.set_rpm(project, rpm);
        self
    }

    /// The project of `key` (itself when it was put in none).
    pub fn project_of(&self, key: &str) -> String {
        self.lock().projects.project_of(key)
    }

    /// How many answers had `status`.
    pub fn answered(&self, status: u16) -> usize {
        self.lock().answered.get(&status).copied().unwrap_or(0)
    }

    /// The project that owns `resource` may use it: `files/ID`, `cachedContents/ID`, `batches/ID`.
    pub fn owner_may_use(&self, resource: &str, project: &str) -> bool {
        self.lock().projects.may_use(resource, project)
    }
}

async fn handle(State(inner): State<Arc<Mutex<Inner>>>, req: Request) -> Response {
    let res = respond(&inner, req).await;
    *inner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .answered
        .entry(res.status().as_u16())
        .or_default() += 1;
    res
}

fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn text(status: u16, content_type: &str, body: String) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header("server-timing", "gfet4t7; dur=12")
        .header("x-gemini-service-tier", "standard")
        .body(Body::from(body))
        .unwrap_or_default()
}

async fn respond(inner: &Mutex<Inner>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let openai = path.starts_with("/v1beta/openai/");
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let bearer = header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned));
    let query_key = query.as_deref().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("key=").map(str::to_owned))
    });
    let key = if openai {
        bearer.clone()
    } else {
        header("x-goog-api-key").or(query_key)
    };
    let (behaviour, stream) = {
        let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.seen.push(Seen {
            method: parts.method.clone(),
            path: path.clone(),
            query: query.clone(),
            headers: parts.headers.clone(),
            key: key.clone().or(bearer.clone()),
            body: body.clone(),
            at: Instant::now(),
            version: parts.version,
        });
        let behaviour = key.as_ref().map(|k| match inner.scripts.get_mut(k) {
            Some((script, next)) => {
                let b = script[(*next).min(script.len() - 1)].clone();
                *next += 1;
                b
            }
            None => inner.default.clone().unwrap_or(Behaviour::Invalid),
        });
        (
            behaviour,
            inner.stream.unwrap_or(StreamShape {
                chunks: 3,
                delay: Duration::from_millis(5),
            }),
        )
    };
    let wrap = |s: String| if openai { wire::openai_wrap(&s) } else { s };

    // A resumable upload's chunks: the session is the credential, no key needed.
    if path.starts_with("/upload/")
        && let Some(id) = query_param(query.as_deref(), "upload_id")
    {
        let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
        return upload_chunk(&mut inner.projects, id, &parts.headers, &body);
    }

    // Authentication, as Google does it.
    if !openai && bearer.is_some() {
        return text(401, wire::JSON, wire::unauthenticated());
    }
    let Some(behaviour) = behaviour else {
        return if openai {
            text(401, wire::JSON, wrap(wire::unauthenticated()))
        } else {
            text(403, wire::JSON, wire::unregistered_caller())
        };
    };
    let model = model_of(&path, &body);
    let err = |status: u16, b: String| text(status, wire::JSON, wrap(b));
    match behaviour {
        Behaviour::Ok => {}
        Behaviour::Invalid => return err(400, wire::api_key_invalid()),
        Behaviour::Leaked => return err(403, wire::leaked()),
        Behaviour::ServiceBlocked => return err(403, wire::service_blocked()),
        Behaviour::ServiceDisabled => return err(403, wire::service_disabled()),
        Behaviour::Suspended => {
            return err(403, wire::suspended(key.as_deref().unwrap_or_default()));
        }
        Behaviour::BadRequestQuotingKey => {
            return err(
                400,
                wire::bad_request_quoting(key.as_deref().unwrap_or_default()),
            );
        }
        Behaviour::FilePermission => return err(403, wire::file_permission("files/abc")),
        Behaviour::Quota { quota, retry_delay } => {
            return err(429, wire::quota_exceeded(quota, &model, 10, retry_delay));
        }
        Behaviour::RateLimitedBare => return err(429, wire::rate_limited_bare()),
        Behaviour::Internal => return err(500, wire::internal()),
        Behaviour::Overloaded => return err(503, wire::overloaded()),
        Behaviour::Deadline => return err(504, wire::deadline_exceeded()),
        Behaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return err(504, wire::deadline_exceeded());
        }
    }
    if model == "no-such-model" {
        return err(404, wire::model_not_found(&model));
    }
    let host = header("host").unwrap_or_default();
    if let Some(key) = key.as_deref() {
        let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(res) = project_bound(
            &mut inner.projects,
            key,
            &parts.method,
            &path,
            &parts.headers,
            &body,
            &model,
            &host,
            openai,
        ) {
            return res;
        }
    }
    if body.windows(10).any(|w| w == b"TRIGGER400") {
        return err(400, wire::token_limit_exceeded());
    }
    answer(
        &parts.method,
        &path,
        query.as_deref(),
        &body,
        &model,
        stream,
    )
}

fn model_of(path: &str, body: &[u8]) -> String {
    if let Some(after) = path.split_once("/models/")
        && let Some(m) = after.1.split([':', '/']).next()
    {
        return m.to_owned();
    }
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("model").and_then(|m| m.as_str()).map(str::to_owned))
        .map(|m| m.trim_start_matches("models/").to_owned())
        .unwrap_or_else(|| "gemini-2.5-flash".to_owned())
}

fn answer(
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    model: &str,
    stream: StreamShape,
) -> Response {
    let usage = Usage {
        prompt: 5,
        candidates: 7,
    };
    if let Some(rest) = path.strip_prefix("/v1beta/openai/") {
        return match rest {
            "chat/completions" => {
                let streaming = serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v.get("stream").and_then(|s| s.as_bool()))
                    .unwrap_or(false);
                if streaming {
                    let model = model.to_owned();
                    streamed(
                        wire::SSE,
                        stream,
                        move |i, last| {
                            let mut s = wire::openai_chunk(&model, &format!("chunk{i} "), last);
                            if last {
                                s.push_str(wire::OPENAI_DONE);
                            }
                            s
                        },
                        None,
                    )
                } else {
                    text(
                        200,
                        "application/json",
                        wire::openai_chat_completion(model, "Hello from the mock", usage),
                    )
                }
            }
            "embeddings" => text(200, "application/json", wire::openai_embeddings(model)),
            r if r == "models" || r.starts_with("models/") => {
                text(200, "application/json", wire::openai_models())
            }
            _ => text(
                404,
                wire::JSON,
                wire::openai_wrap(&wire::error(404, "Not found", "NOT_FOUND", &[])),
            ),
        };
    }
    let op = path.rsplit_once(':').map(|(_, m)| m).unwrap_or("");
    match (method, op) {
        (&Method::POST, "generateContent") => text(
            200,
            wire::JSON,
            wire::generate_content(model, "Hello from the mock", usage),
        ),
        (&Method::POST, "streamGenerateContent") => {
            let sse = query.is_some_and(|q| q.split('&').any(|kv| kv == "alt=sse"));
            let model = model.to_owned();
            let piece = move |i: usize, last: bool| {
                let u = Usage {
                    prompt: 5,
                    candidates: (i as u64 + 1) * 2,
                };
                let chunk = wire::stream_chunk(&model, &format!("chunk{i} "), u, last);
                if sse {
                    wire::sse_event(&chunk)
                } else {
                    wire::json_array_piece(&chunk, i)
                }
            };
            if sse {
                streamed(wire::SSE, stream, piece, None)
            } else {
                streamed(wire::JSON, stream, piece, Some(wire::JSON_ARRAY_END))
            }
        }
        (&Method::POST, "countTokens") => text(200, wire::JSON, wire::count_tokens(12)),
        (&Method::GET, "") if path.ends_with("/models") => {
            text(200, wire::JSON, wire::models_list())
        }
        _ => text(
            404,
            "text/html; charset=UTF-8",
            "<!DOCTYPE html>\n<html lang=en><title>Error 404 (Not Found)!!1</title></html>\n"
                .into(),
        ),
    }
}

fn streamed(
    content_type: &str,
    shape: StreamShape,
    piece: impl Fn(usize, bool) -> String + Send + 'static,
    tail: Option<&'static str>,
) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        for i in 0..shape.chunks {
            if i > 0 {
                tokio::time::sleep(shape.delay).await;
            }
            let last = i + 1 == shape.chunks;
            if tx.send(Bytes::from(piece(i, last))).await.is_err() {
                return;
            }
        }
        if let Some(t) = tail {
            let _ = tx.send(Bytes::from_static(t.as_bytes())).await;
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::new(ChannelBody(rx)))
        .unwrap_or_default()
}

/// A body fed by a channel: each message is one frame, sent when it is ready.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// Answers what depends on the key's project: quotas, uploads, files, cached contents,
/// batches, and requests naming them. `None`: the ordinary answer follows.
#[allow(clippy::too_many_arguments)]
fn project_bound(
    projects: &mut Projects,
    key: &str,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    model: &str,
    host: &str,
    openai: bool,
) -> Option<Response> {
    let project = projects.project_of(key);
    let fail = |status: u16, b: String| {
        let b = if openai { wire::openai_wrap(&b) } else { b };
        text(status, wire::JSON, b)
    };
    let json = |b: String| text(200, wire::JSON, b);
    let version = if path.contains("/v1beta/") {
        "v1beta"
    } else {
        "v1"
    };
    // Resumable upload: start.
    if method == Method::POST && (path == "/upload/v1beta/files" || path == "/upload/v1/files") {
        let command = headers
            .get("x-goog-upload-command")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if command != "start" {
            return Some(text(
                400,
                wire::JSON,
                wire::error(
                    400,
                    "Upload has already been terminated.",
                    "INVALID_ARGUMENT",
                    &[],
                ),
            ));
        }
        let meta: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let display_name = meta
            .pointer("/file/display_name")
            .or_else(|| meta.pointer("/file/displayName"))
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned();
        let mime = headers
            .get("x-goog-upload-header-content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        let id = projects.new_id("AbC-upload-");
        projects.uploads.insert(
            id.clone(),
            UploadSession {
                project,
                display_name,
                mime,
                received: 0,
            },
        );
        return Some(
            Response::builder()
                .status(200)
                .header(
                    "x-goog-upload-url",
                    format!("http://{host}/upload/{version}/files?upload_id={id}&upload_protocol=resumable"),
                )
                .header("x-goog-upload-status", "active")
                .header("x-goog-upload-chunk-granularity", "8388608")
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Body::empty())
                .unwrap_or_default(),
        );
    }
    // Resources by name.
    for (kind, denied) in [
        ("files/", wire::file_permission as fn(&str) -> String),
        ("cachedContents/", |r: &str| {
            wire::cached_content_denied(r.trim_start_matches("cachedContents/"))
        }),
        ("batches/", |r: &str| {
            wire::batch_not_found(r.trim_start_matches("batches/"))
        }),
    ] {
        if let Some(i) = path.find(&format!("/{kind}")) {
            let rest = &path[i + 1..];
            let name = rest.split(':').next().unwrap_or(rest).to_owned();
            if !projects.may_use(&name, &project) {
                let status = if kind == "batches/" { 404 } else { 403 };
                return Some(fail(status, denied(&name)));
            }
            return Some(match *method {
                Method::DELETE => json("{}\n".into()),
                _ if kind == "files/" => json(wire::file_resource(
                    name.trim_start_matches("files/"),
                    "file",
                    "text/plain",
                    0,
                )),
                _ if kind == "cachedContents/" => json(wire::cached_content(
                    name.trim_start_matches("cachedContents/"),
                    model,
                    100,
                )),
                _ => json(wire::batch_operation(
                    name.trim_start_matches("batches/"),
                    model,
                )),
            });
        }
    }
    if method == Method::POST && path.ends_with("/cachedContents") {
        let id = projects.new_id("cache-");
        projects.own(format!("cachedContents/{id}"), &project);
        return Some(json(wire::cached_content(&id, model, 100)));
    }
    // Requests naming resources of another project fail as on Google.
    for r in projects::referenced(body) {
        if !projects.may_use(&r, &project) {
            return Some(if r.starts_with("cachedContents/") {
                fail(
                    403,
                    wire::cached_content_denied(r.trim_start_matches("cachedContents/")),
                )
            } else {
                fail(403, wire::file_permission(&r))
            });
        }
    }
    if method == Method::POST && path.ends_with(":batchGenerateContent") {
        let id = projects.new_id("batch-");
        projects.own(format!("batches/{id}"), &project);
        return Some(json(wire::batch_operation(&id, model)));
    }
    // The project's per-minute quota, for the calls that generate.
    let op = path.rsplit_once(':').map(|(_, m)| m).unwrap_or("");
    let counted = matches!(
        op,
        "generateContent" | "streamGenerateContent" | "embedContent"
    ) || path.ends_with("/chat/completions");
    if counted && let Err((limit, wait)) = projects.admit(&project, model, Instant::now()) {
        let delay = format!("{:.6}s", wait.as_secs_f64());
        let body = wire::quota_exceeded(Quota::RequestsPerMinute, model, limit, Some(&delay));
        return Some(fail(429, body));
    }
    None
}

/// A chunk of a resumable upload: `upload`, `finalize` or both.
fn upload_chunk(projects: &mut Projects, id: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let Some(session) = projects.uploads.get_mut(id) else {
        return text(
            404,
            wire::JSON,
            wire::error(404, "Upload session not found.", "NOT_FOUND", &[]),
        );
    };
    let command = headers
        .get("x-goog-upload-command")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if command.contains("upload") {
        session.received += body.len();
    }
    if !command.contains("finalize") {
        return Response::builder()
            .status(200)
            .header("x-goog-upload-status", "active")
            .body(Body::empty())
            .unwrap_or_default();
    }
    let session = session.clone();
    projects.uploads.remove(id);
    let file_id = projects.new_id("mockfile");
    projects.own(format!("files/{file_id}"), &session.project);
    let display = if session.display_name.is_empty() {
        file_id.clone()
    } else {
        session.display_name.clone()
    };
    let file = wire::file_resource(&file_id, &display, &session.mime, session.received);
    Response::builder()
        .status(200)
        .header("x-goog-upload-status", "final")
        .header(header::CONTENT_TYPE, wire::JSON)
        .body(Body::from(wire::upload_final(&file)))
        .unwrap_or_default()
}
