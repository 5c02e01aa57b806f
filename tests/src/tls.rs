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
