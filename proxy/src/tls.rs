//! TLS on the client listener (`listenTls`): rustls with HTTP/2 and HTTP/1.1 offered by ALPN,
//! the certificate and key re-read when their files change (a renewed certificate is served to
//! new connections without a restart; a broken pair is logged and the old one kept).
//!
//! Handshakes run in their own tasks with a deadline, so a client that connects and says
//! nothing holds neither the accept loop nor other clients.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A client must finish its handshake within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate files are looked at.
const RELOAD_POLL: Duration = Duration::from_secs(2);
/// Handshakes in progress at most; beyond it new connections wait in the kernel's queue.
const MAX_HANDSHAKES: usize = 1024;

/// Loads a certificate chain and its private key, checking that they belong together.
pub fn load_pair(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("certFile {}: {e}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            format!(
                "certFile {}: not PEM certificates: {e}",
                cert_file.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!("certFile {}: no certificate", cert_file.display()));
    }
    // Never echo the key file's content: only its path and the kind of problem.
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        format!(
            "keyFile {}: no PEM private key ({})",
            key_file.display(),
            pem_problem(&e)
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|_| format!("keyFile {}: unsupported private key", key_file.display()))?;
    let pair = CertifiedKey::new(certs, signing);
    pair.keys_match().map_err(|_| {
        format!(
            "keyFile {} does not belong to the certificate in certFile {}",
            key_file.display(),
            cert_file.display()
        )
    })?;
    Ok(pair)
}

fn pem_problem(e: &rustls::pki_types::pem::Error) -> &'static str {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(_) => "cannot read it",
        Error::NoItemsFound => "none found",
        _ => "malformed",
    }
}

/// Checks the files at configuration time.
pub fn check_files(cert_file: &Path, key_file: &Path) -> Result<(), String> {
    load_pair(cert_file, key_file).map(|_| ())
}

/// The certificate in use, swapped when the files change.
#[derive(Debug)]
struct Current(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The client listener's TLS: a rustls config whose certificate follows its files.
pub struct ServerTls {
    current: Arc<Current>,
    config: Arc<rustls::ServerConfig>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl ServerTls {
    pub fn new(cert_file: &Path, key_file: &Path) -> Result<Arc<Self>, String> {
        let pair = load_pair(cert_file, key_file)?;
        let current = Arc::new(Current(ArcSwap::from_pointee(pair)));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(Self {
            current,
            config: Arc::new(config),
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
        }))
    }

    /// Re-reads the files; a pair that does not load is logged and the old one kept.
    pub fn reload(&self) -> Result<(), String> {
        match load_pair(&self.cert_file, &self.key_file) {
            Ok(pair) => {
                self.current.0.store(Arc::new(pair));
                tracing::info!(cert_file = %self.cert_file.display(), "listener certificate reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "listener certificate not reloaded: the old one is kept");
                Err(e)
            }
        }
    }

    /// Reloads whenever either file changes, until `stop` turns true.
    pub async fn follow_files(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .zip(std::fs::metadata(p).ok().map(|m| m.len()))
        };
        let mut seen = (stamp(&self.cert_file), stamp(&self.key_file));
        let mut tick = tokio::time::interval(RELOAD_POLL);
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => return,
                _ = tick.tick() => {}
            }
            let now = (stamp(&self.cert_file), stamp(&self.key_file));
            if now != seen {
                seen = now;
                let _ = self.reload();
            }
        }
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }
}

/// A listener that hands out connections whose TLS handshake is done (axum's [`Listener`]).
///
/// [`Listener`]: axum::serve::Listener
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp`; each handshake runs in its own task, bounded by [`HANDSHAKE_TIMEOUT`].
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let accepted = tokio::select! {
                    // The server stopped (shutdown): close the socket, refuse new connections.
                    _ = tx.closed() => return,
                    a = tcp.accept() => a,
                };
                let (stream, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little, as axum does.
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let done =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    drop(permit);
                    match done {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task ended (its listener failed for good): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Resolves once `stop` turns true (the guard `wait_for` returns is not kept across awaits).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
