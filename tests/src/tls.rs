//! TLS for the test upstream: a CA and a server certificate for `127.0.0.1`/`localhost`, made
//! once per test process with `openssl` (no key or certificate is committed), and the rustls
//! server configuration the mock serves with (ALPN `h2` and `http/1.1`, as Google's front ends).
//!
//! Suites run over `https://` when `GEMINI_PROXY_TEST_UPSTREAM=https` (scripts/test.sh runs the
//! upstream-facing suites a second time so): [`MockGemini::start`](crate::MockGemini::start)
//! then serves TLS, its URL is `https://`, and the proxy under test trusts [`TestCa::ca_file`]
//! through its group's `upstream.caFile`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Whether this test process runs its upstream over TLS.
pub fn https_upstream() -> bool {
    std::env::var("GEMINI_PROXY_TEST_UPSTREAM").is_ok_and(|v| v == "https")
}

pub struct TestCa {
    pub dir: PathBuf,
    server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    /// The process's test CA (made on first use).
    pub fn get() -> &'static TestCa {
        static CA: OnceLock<TestCa> = OnceLock::new();
        CA.get_or_init(TestCa::make)
    }

    /// The CA certificate (PEM), for `upstream.caFile`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// A new CA of its own (not the process's), with a server certificate for loopback: for
    /// tests that swap one CA's certificate for another's.
    pub fn fresh() -> TestCa {
        Self::make()
    }

    /// The server certificate (PEM) and its key (PEM) signed by this CA.
    pub fn server_files(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("server.pem"), self.dir.join("server.key"))
    }

    fn make() -> TestCa {
        let dir = crate::process::temp_dir("tls");
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("run openssl (scripts/test.sh needs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=gemini-proxy test CA",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write ext");
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("server.pem"))
                .expect("server.pem")
                .collect::<Result<_, _>>()
                .expect("certificates");
        let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("server.key");
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate");
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TestCa {
            dir,
            server: Arc::new(server),
        }
    }
}

/// What a TLS request saw: the protocol ALPN chose, the status and the body.
#[derive(Debug)]
pub struct TlsReply {
    pub alpn: Option<Vec<u8>>,
    pub status: u16,
    pub body: String,
}

/// One GET over a new TLS connection to `addr` (as `127.0.0.1`), trusting only `ca_file`,
/// offering `alpn` (`h2`, `http/1.1`), speaking what was agreed. An error is the handshake's or
/// the request's, as text.
pub async fn tls_get(
    addr: std::net::SocketAddr,
    ca_file: &std::path::Path,
    alpn: &[&[u8]],
    path: &str,
) -> Result<TlsReply, String> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_file).map_err(|e| e.to_string())? {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")
        .map_err(|e| e.to_string())?
        .to_owned();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let agreed = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let req = http::Request::get(path)
        .header("host", "127.0.0.1")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let io = TokioIo::new(tls);
    let res = if agreed.as_deref() == Some(b"h2") {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2: {e}"))?;
        tokio::spawn(conn);
        let mut req = req;
        *req.uri_mut() = format!("https://127.0.0.1{path}")
            .parse()
            .map_err(|e| format!("uri: {e}"))?;
        send.send_request(req)
            .await
            .map_err(|e| format!("h2 request: {e}"))?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("http/1.1: {e}"))?;
        tokio::spawn(conn);
        send.send_request(req)
            .await
            .map_err(|e| format!("http/1.1 request: {e}"))?
    };
    let status = res.status().as_u16();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(TlsReply {
        alpn: agreed,
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
