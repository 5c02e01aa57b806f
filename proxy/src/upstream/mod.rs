//! The connection to Gemini: pooled HTTP/1.1 and HTTP/2 (ALPN) on hyper's client for direct
//! `https://` traffic, a lean per-thread HTTP/1.1 pool ([`plain`]) for `http://` upstreams, and
//! reqwest for groups that leave through an egress proxy (HTTP, HTTPS or SOCKS5).
//!
//! In a minimal pass-through on loopback, hyper's pooled client reached about 1.7 times
//! reqwest's throughput (docs/architecture.md, "The upstream client"), so it carries the hot
//! path; reqwest earns its place where its proxy support does.

mod plain;

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use keystore::{Secret, UpstreamSpec};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::Digest;

type Direct = HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const POOL_IDLE: Duration = Duration::from_secs(90);

/// Why an attempt got no answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no response headers within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("request failed: {0}")]
    Other(String),
}

impl UpstreamError {
    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Connect(_) => "connect",
            Self::Other(_) => "network",
        }
    }
}

// HTTP clients live one per thread: each server thread runs its own runtime, and a
// connection's task lives on the runtime that made it, so a per-thread pool keeps a request,
// its upstream connection and their wake-ups on one thread.
thread_local! {
    static DIRECT: OnceCell<Direct> = const { OnceCell::new() };
    /// Direct clients of groups that trust extra CAs, by bundle.
    static DIRECT_CA: RefCell<HashMap<u64, Direct>> = RefCell::new(HashMap::new());
    static EGRESS: RefCell<HashMap<(String, u64), reqwest::Client>> = RefCell::new(HashMap::new());
}

/// Extra CA certificates a group trusts (`upstream.caFile`, or a Secret in the CRD).
#[derive(Clone)]
pub struct CaBundle {
    pem: Arc<str>,
    /// A digest of the PEM: which per-thread client serves it.
    id: u64,
}

impl CaBundle {
    fn new(pem: &str) -> Result<Self, String> {
        check_ca_pem(pem)?;
        let digest = sha2::Sha256::digest(pem.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        Ok(Self {
            pem: Arc::from(pem),
            id: u64::from_le_bytes(id),
        })
    }
}

/// The certificates of a PEM bundle; an error names what is wrong (never the content).
fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM bundle of certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the PEM bundle".to_owned());
    }
    Ok(certs)
}

/// Checks that `pem` holds CA certificates rustls accepts as roots.
pub fn check_ca_pem(pem: &str) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in parse_certs(pem)? {
        roots
            .add(c)
            .map_err(|e| format!("a certificate cannot be a trust root: {e}"))?;
    }
    Ok(())
}

/// Sends on this thread's direct client for `ca` (no clone of the client on the common path).
fn request_direct(
    ca: Option<&CaBundle>,
    req: Request<Full<Bytes>>,
) -> hyper_util::client::legacy::ResponseFuture {
    match ca {
        None => DIRECT.with(|c| c.get_or_init(|| build_direct(None)).request(req)),
        Some(ca) => DIRECT_CA.with(|m| {
            m.borrow_mut()
                .entry(ca.id)
                .or_insert_with(|| build_direct(Some(ca)))
                .request(req)
        }),
    }
}

fn build_direct(ca: Option<&CaBundle>) -> Direct {
    static TLS: OnceLock<rustls::ClientConfig> = OnceLock::new();
    let tls = match ca {
        None => TLS.get_or_init(|| rustls_config(None)).clone(),
        Some(ca) => rustls_config(Some(&ca.pem)),
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    HyperClient::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(1024)
        .build(https)
}

fn build_egress(proxy: &str, ca: Option<&CaBundle>) -> Result<reqwest::Client, String> {
    // The proxy URL may hold a password: errors must not show it.
    let p = reqwest::Proxy::all(proxy)
        .map_err(|_| "egress proxy: not a usable proxy URL".to_owned())?;
    let mut builder = reqwest::Client::builder();
    if let Some(ca) = ca {
        for c in reqwest::Certificate::from_pem_bundle(ca.pem.as_bytes())
            .map_err(|e| format!("upstream CA bundle: {e}"))?
        {
            builder = builder.add_root_certificate(c);
        }
    }
    builder
        .proxy(p)
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(POOL_IDLE)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("egress client: {e}"))
}

fn egress_client(proxy: &Secret, ca: Option<&CaBundle>) -> Result<reqwest::Client, String> {
    EGRESS.with(|cache| {
        let mut cache = cache.borrow_mut();
        let key = (proxy.expose().to_owned(), ca.map_or(0, |c| c.id));
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let c = build_egress(proxy.expose(), ca)?;
        cache.insert(key, c.clone());
        Ok(c)
    })
}

/// The web PKI roots, and the certificates of `extra_pem` (checked when the group was loaded).
fn rustls_config(extra_pem: Option<&str>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_pem {
        for c in parse_certs(pem).unwrap_or_default() {
            let _ = roots.add(c);
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|_| {
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
}

#[derive(Clone)]
enum Route {
    /// `https://`: TLS, HTTP/2 where offered; the extra CAs the group trusts.
    Direct(Option<CaBundle>),
    /// `http://`: HTTP/1.1 to this address (`host:port`), with this `Host`.
    Plain(Arc<str>, http::HeaderValue),
    Egress(Secret, Option<CaBundle>),
}

/// Where one group's requests go and how.
#[derive(Clone)]
pub struct Upstream {
    route: Route,
    origin: String,
    scheme: http::uri::Scheme,
    authority: Option<http::uri::Authority>,
    path_prefix: String,
    pub timeout: Duration,
}

impl Upstream {
    /// The upstream of a group; checks the URL and the egress proxy.
    pub fn new(spec: &UpstreamSpec) -> Result<Self, String> {
        let base = spec.url.trim_end_matches('/');
        let parsed: Uri = base.parse().map_err(|e| format!("upstream url: {e}"))?;
        let path_prefix = match parsed.path() {
            "/" => String::new(),
            p => p.trim_end_matches('/').to_owned(),
        };
        let origin = format!(
            "{}://{}",
            parsed.scheme_str().unwrap_or("https"),
            parsed.authority().map(|a| a.as_str()).unwrap_or_default()
        );
        let ca = spec
            .ca_pem
            .as_deref()
            .map(CaBundle::new)
            .transpose()
            .map_err(|e| format!("upstream CA: {e}"))?;
        let route = match &spec.egress_proxy {
            None if parsed.scheme_str() == Some("http") => {
                let authority = parsed
                    .authority()
                    .ok_or_else(|| "upstream url: no host".to_owned())?;
                let with_port = match authority.port_u16() {
                    Some(_) => authority.as_str().to_owned(),
                    None => format!("{}:80", authority.as_str()),
                };
                let host = http::HeaderValue::from_str(authority.as_str())
                    .map_err(|_| "upstream url: bad host".to_owned())?;
                Route::Plain(Arc::from(with_port), host)
            }
            None => Route::Direct(ca),
            Some(proxy) => {
                reqwest::Proxy::all(proxy.expose())
                    .map_err(|_| "egress proxy: not a usable proxy URL".to_owned())?;
                Route::Egress(proxy.clone(), ca)
            }
        };
        Ok(Self {
            route,
            origin,
            scheme: parsed.scheme().cloned().unwrap_or(http::uri::Scheme::HTTPS),
            authority: parsed.authority().cloned(),
            path_prefix,
            timeout: Duration::from_secs(spec.timeout_secs.max(1)),
        })
    }

    /// The upstream URI for a client path and (already filtered) query, reusing the client's
    /// already parsed path and query when the request goes up unchanged (no base path, no
    /// rewrite, no `key` taken out): the common case is then no parse and no copy.
    pub fn uri_for(
        &self,
        client: &Uri,
        path: &str,
        query: Option<&str>,
    ) -> Result<Uri, http::Error> {
        if let Some(pq) = client.path_and_query()
            && self.path_prefix.is_empty()
            && pq.path() == path
            && pq.query() == query
        {
            if matches!(self.route, Route::Plain(..)) {
                return Ok(Uri::from(pq.clone()));
            }
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(self.scheme.clone());
            parts.authority = self.authority.clone();
            parts.path_and_query = Some(pq.clone());
            if let Ok(uri) = Uri::from_parts(parts) {
                return Ok(uri);
            }
        }
        self.uri(path, query)
    }

    /// The upstream URI for a client path and (already filtered) query.
    fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let mut s = String::with_capacity(
            self.origin.len()
                + self.path_prefix.len()
                + path.len()
                + query.map_or(0, |q| q.len() + 1),
        );
        // The plain HTTP/1.1 pool writes origin-form; the others want the whole URL.
        if !matches!(self.route, Route::Plain(..)) {
            s.push_str(&self.origin);
        }
        s.push_str(&self.path_prefix);
        s.push_str(path);
        if let Some(q) = query {
            s.push('?');
            s.push_str(q);
        }
        Ok(Uri::try_from(s)?)
    }

    /// Sends one attempt; waits at most `timeout` for the response headers.
    pub async fn send(&self, req: Request<Bytes>) -> Result<Response<Body>, UpstreamError> {
        let timeout = self.timeout;
        match &self.route {
            Route::Direct(ca) => {
                let pending = request_direct(ca.as_ref(), req.map(Full::new));
                match tokio::time::timeout(timeout, pending).await {
                    Err(_) => Err(UpstreamError::Timeout(timeout)),
                    Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect(error_chain(&e))),
                    Ok(Err(e)) => Err(UpstreamError::Other(error_chain(&e))),
                    Ok(Ok(res)) => Ok(res.map(Body::new)),
                }
            }
            Route::Plain(addr, host) => {
                let sent = plain::send(addr, host, req, CONNECT_TIMEOUT);
                match tokio::time::timeout(timeout, sent).await {
                    Err(_) => Err(UpstreamError::Timeout(timeout)),
                    Ok(r) => r,
                }
            }
            Route::Egress(proxy, ca) => {
                let client = egress_client(proxy, ca.as_ref()).map_err(UpstreamError::Other)?;
                let req = reqwest::Request::try_from(req.map(reqwest::Body::from))
                    .map_err(|e| UpstreamError::Other(error_chain(&e)))?;
                match tokio::time::timeout(timeout, client.execute(req)).await {
                    Err(_) => Err(UpstreamError::Timeout(timeout)),
                    Ok(Err(e)) if e.is_connect() => {
                        Err(UpstreamError::Connect(error_chain(&e.without_url())))
                    }
                    Ok(Err(e)) => Err(UpstreamError::Other(error_chain(&e.without_url()))),
                    Ok(Ok(res)) => Ok(http::Response::from(res).map(Body::new)),
                }
            }
        }
    }
}

/// An error and its causes on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests;
