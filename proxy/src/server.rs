//! Start-up (store, groups, background tasks) and serving with a bounded graceful shutdown.

pub mod conn;
pub mod pinning;

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::serve::ListenerExt;
use keystore::KeyStore;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::Entry;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::registry::{Registry, Selection};
use crate::shared::{App, RequestIds};
use crate::store_sync::{self, Outbox, StoreStatus};
use crate::tls::{ServerTls, TlsListener};

/// A started proxy: its app state and the handle that stops its background tasks.
pub struct Proxy {
    pub app: Arc<App>,
    /// What the background tasks share (the store, this proxy's own groups).
    pub(crate) ctx: Arc<store_sync::Context>,
    stop: watch::Sender<bool>,
}

impl Proxy {
    /// Publishes the configured groups to `store`, loads what this proxy serves, and starts the
    /// background tasks. It starts even when the store is unreachable: with its own groups (from
    /// its config) it serves those; with none it waits, not ready, until the store answers.
    pub async fn start(settings: &Settings, store: Arc<dyn KeyStore>, kind: &'static str) -> Self {
        let only = (!settings.groups.is_empty()).then(|| {
            settings
                .groups
                .iter()
                .map(|g| g.name.clone())
                .collect::<HashSet<_>>()
        });
        let registry = Arc::new(Registry::new(Selection {
            default_group: settings.default_group.clone(),
            only,
            open_allowed: settings.open_allowed(),
            upstream_hosts: settings.upstream_allowlist(),
        }));
        let status = Arc::new(StoreStatus::new(kind));
        let loaded =
            store_sync::publish_and_reload(store.as_ref(), &registry, &settings.groups).await;
        status.record(&loaded);
        if loaded.is_err() && !settings.groups.is_empty() {
            registry.rebuild(settings.groups.clone(), &Default::default());
        }
        let (outbox, rx) = Outbox::new();
        let (stop, stopped) = watch::channel(false);
        let affinity = crate::affinity::Affinity::new(store.clone());
        let ctx = Arc::new(store_sync::Context {
            store,
            registry: registry.clone(),
            proxy_id: proxy_id(),
            own_groups: tokio::sync::Mutex::new(settings.groups.clone()),
            status: status.clone(),
        });
        store_sync::spawn(ctx.clone(), rx, stopped);
        let app = Arc::new(App {
            registry,
            metrics: Metrics::new(),
            outbox,
            max_body_bytes: settings.max_body_bytes.into(),
            request_ids: RequestIds::default(),
            store_status: status,
            affinity,
            access_log: Default::default(),
            draining: Default::default(),
        });
        Self { app, ctx, stop }
    }

    /// The admin listener's router (see [`crate::admin`]) for a listener on `listen`.
    pub fn admin(&self, listen: SocketAddr, token: Option<&keystore::Secret>) -> Router {
        crate::admin::router(Arc::new(crate::admin::Admin::new(self, listen, token)))
    }

    /// What a server runs (see [`Entry`]).
    pub fn service(&self) -> Entry {
        crate::app::service(self.app.clone())
    }

    /// Background tasks stop when this proxy is dropped or stopped.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// This proxy's name in the store: the pod name in Kubernetes, else host and pid.
pub fn proxy_id() -> String {
    let host = std::env::var("HOSTNAME")
        .or_else(|_| std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()))
        .unwrap_or_else(|_| "proxy".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Serves `service` on `listener` until `shutdown` resolves; then stops accepting and lets
/// in-flight requests and streams finish for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    service: Entry,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    conn::serve(listener, service, shutdown, grace).await
}

/// Server threads, each with its own single-threaded runtime and its own listening socket on the
/// same address (`SO_REUSEPORT`: the kernel spreads connections over them), like nginx's
/// workers. A request, its upstream connection (per-thread pools, see `upstream`) and their
/// wake-ups stay on one thread: no work stealing, no cross-thread hand-offs on the hot path.
pub struct Workers {
    pub addr: SocketAddr,
    threads: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Workers {
    /// Starts `count` server threads on `addr` (port 0: the first picks, the others follow),
    /// speaking TLS when `tls` is given, thread `i` pinned to `cpus[i]` when given
    /// ([`pinning::plan`]). They stop accepting when `stop` turns true and finish within
    /// `grace`.
    pub fn spawn(
        addr: SocketAddr,
        count: usize,
        cpus: Option<&[usize]>,
        service: Entry,
        tls: Option<Arc<ServerTls>>,
        stop: watch::Receiver<bool>,
        grace: Duration,
    ) -> std::io::Result<Self> {
        let mut addr = addr;
        let mut threads = Vec::with_capacity(count);
        for i in 0..count.max(1) {
            let (bound_tx, bound_rx) = std::sync::mpsc::channel();
            let service = service.clone();
            let tls = tls.clone();
            let mut stop = stop.clone();
            let cpu = cpus.and_then(|c| c.get(i).copied());
            let handle = std::thread::Builder::new()
                .name(format!("gemini-proxy-{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu
                        && !pinning::pin_current(cpu)
                    {
                        tracing::warn!(thread = i, cpu, "could not pin the server thread");
                    }
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async move {
                        // Lets the allocator give back what a burst took once the thread falls idle.
                        tokio::spawn(crate::allocator::release_idle_memory());
                        let listener = match bind_shared(addr) {
                            Ok(l) => l,
                            Err(e) => {
                                let _ = bound_tx.send(Err(e));
                                return Ok(());
                            }
                        };
                        let _ = bound_tx.send(listener.local_addr());
                        let shutdown = async move {
                            let _ = stop.wait_for(|s| *s).await;
                        };
                        match tls {
                            None => serve(listener, service, shutdown, grace).await,
                            Some(tls) => {
                                let listener = TlsListener::new(listener, tls.acceptor())?;
                                conn::serve(listener, service, shutdown, grace).await
                            }
                        }
                    })
                })?;
            match bound_rx.recv() {
                Ok(Ok(bound)) => addr = bound,
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(handle
                        .join()
                        .ok()
                        .and_then(Result::err)
                        .unwrap_or_else(|| std::io::Error::other("server thread failed")));
                }
            }
            threads.push(handle);
        }
        Ok(Self { addr, threads })
    }

    /// Waits for every server thread to end.
    pub fn join(self) -> std::io::Result<()> {
        for t in self.threads {
            t.join()
                .map_err(|_| std::io::Error::other("a server thread panicked"))??;
        }
        Ok(())
    }
}

fn bind_shared(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv6() {
        tokio::net::TcpSocket::new_v6()?
    } else {
        tokio::net::TcpSocket::new_v4()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// SIGTERM and Ctrl-C, listened for from the moment this is made: a signal that arrives while
/// the servers are still starting (say, right after the first probe answered) is not lost to
/// the default action, which would end the process at once.
pub struct ShutdownSignal {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignal {
    pub fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                term: signal(SignalKind::terminate()).ok(),
                interrupt: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves on the first of them (again on the next one when called again).
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            let term = async {
                match self.term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let interrupt = async {
                match self.interrupt.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = term => {},
                _ = interrupt => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C (listening from the first poll; see [`ShutdownSignal`] to
/// listen from an earlier moment).
pub async fn shutdown_signal() {
    ShutdownSignal::listen().recv().await;
}
