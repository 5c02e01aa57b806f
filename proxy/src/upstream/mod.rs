//! The connection to Gemini: a lean per-thread HTTP/1.1 pool ([`h1`]) for direct traffic,
//! over rustls for `https://` (Gemini itself) and over TCP for `http://` (a local gateway),
//! and reqwest for groups that leave through an egress proxy (HTTP, HTTPS or SOCKS5).
//!
//! Direct traffic went through hyper's pooled client with HTTP/2 before; against the https
//! benchmark's upstream it spent more CPU per request than nginx, a task spawned per request
//! among it (README, Performance). reqwest earns its place where its proxy support does.

mod h1;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, Uri};
use keystore::{Secret, UpstreamSpec};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::Digest;

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

// Egress clients live one per thread: each server thread runs its own runtime, and a
// connection's task lives on the runtime that made it, so a per-thread pool keeps a request,
// its upstream connection and their wake-ups on one thread. (The direct pool in `h1` is per
// thread too.)
thread_local! {
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

/// The TLS settings for direct `https://` traffic (HTTP/1.1 by ALPN): the web PKI roots, made
/// once and shared by every group (groups are rebuilt on every store change), or those plus
/// the group's extra CAs. A config of its own per CA keeps its own session cache: a session
/// verified under one group's trust is never resumed under another's.
fn direct_tls(ca: Option<&CaBundle>) -> Arc<rustls::ClientConfig> {
    static WEB_PKI: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let build = |pem: Option<&str>| {
        let mut config = rustls_config(pem);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    };
    match ca {
        None => WEB_PKI.get_or_init(|| build(None)).clone(),
        Some(ca) => build(Some(&ca.pem)),
    }
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
    /// HTTP/1.1 on this thread's pool, with this `Host`: rustls for `https://` (the web PKI
    /// roots and the extra CAs the group trusts), TCP for `http://`.
    Direct(Arc<h1::Target>, http::HeaderValue),
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
            None => {
                let authority = parsed
                    .authority()
                    .ok_or_else(|| "upstream url: no host".to_owned())?;
                let tls = parsed.scheme_str() != Some("http");
                let with_port = match authority.port_u16() {
                    Some(_) => authority.as_str().to_owned(),
                    None if tls => format!("{}:443", authority.as_str()),
                    None => format!("{}:80", authority.as_str()),
                };
                let host = http::HeaderValue::from_str(authority.as_str())
                    .map_err(|_| "upstream url: bad host".to_owned())?;
                let target = if tls {
                    h1::Target::tls(
                        Arc::from(with_port),
                        authority
                            .host()
                            .trim_start_matches('[')
                            .trim_end_matches(']'),
                        direct_tls(ca.as_ref()),
                        ca.as_ref().map_or(0, |c| c.id),
                    )?
                } else {
                    h1::Target::plain(Arc::from(with_port))
                };
                Route::Direct(Arc::new(target), host)
            }
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
            if matches!(self.route, Route::Direct(..)) {
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
        // The HTTP/1.1 pool writes origin-form; the egress client wants the whole URL.
        if !matches!(self.route, Route::Direct(..)) {
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
            Route::Direct(target, host) => {
                let sent = h1::send(target, host, req, CONNECT_TIMEOUT);
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
