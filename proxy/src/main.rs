//! `gemini-proxy`: the binary. Reads its configuration, then serves until SIGTERM.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use gemini_proxy::access_log::AccessLog;
use gemini_proxy::config::{Settings, parse_admin_listen};
use gemini_proxy::reload::Reloader;
use gemini_proxy::server::pinning::{self, Pinning};
use gemini_proxy::server::{Proxy, ShutdownSignal, Workers};
use gemini_proxy::tls::ServerTls;
use keystore::redis_store::cli::RedisArgs;
use keystore::{KeyStore, MemoryStore, RedisStore};

/// mimalloc: the request path allocates small, short-lived buffers on several threads, where
/// glibc's allocator spent a tenth of the CPU in the benchmark. Its settings: [`gemini_proxy::allocator`].
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "gemini-proxy",
    version,
    about = "Spreads Gemini API traffic over many API keys.",
    after_help = "Quick start: GEMINI_API_KEYS=key1,key2 gemini-proxy\nWith a file:  gemini-proxy --config proxy.yaml\nCheck a file: gemini-proxy check --config proxy.yaml\nKey states:   gemini-proxy status"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// YAML configuration file, watched and reloaded when it changes (and on SIGHUP). Without
    /// it, keys come from GEMINI_API_KEYS (comma-separated).
    #[arg(long, env = "GEMINI_PROXY_CONFIG")]
    config: Option<PathBuf>,
    /// Address to serve on (overrides the file's `listen`); default 127.0.0.1:8080.
    #[arg(long, env = "GEMINI_PROXY_LISTEN")]
    listen: Option<SocketAddr>,
    /// Admin listener for probes, metrics and the status page (overrides the file's
    /// `admin.listen`); default 127.0.0.1:9464, `off` for none.
    #[arg(long, env = "GEMINI_PROXY_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// Upstream base URL for the quick-start group (default Google's).
    #[arg(long, env = "GEMINI_PROXY_UPSTREAM_URL")]
    upstream_url: Option<String>,
    /// Log format.
    #[arg(long, env = "GEMINI_PROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// The Open group that serves requests without a known token (`namespace/name` in Kubernetes).
    #[arg(long, env = "GEMINI_PROXY_DEFAULT_GROUP")]
    default_group: Option<String>,
    /// Serve Open groups although the listener is beyond loopback (anyone who reaches it uses
    /// their keys).
    #[arg(long, env = "GEMINI_PROXY_ALLOW_OPEN_GROUPS")]
    allow_open_groups: bool,
    /// Hosts the store's groups may use as upstream, comma-separated (default
    /// generativelanguage.googleapis.com; `*` for any).
    #[arg(
        long,
        env = "GEMINI_PROXY_ALLOWED_UPSTREAM_HOSTS",
        value_delimiter = ','
    )]
    allowed_upstream_hosts: Vec<String>,
    /// Largest request body kept for retries (bytes); larger ones get 413.
    #[arg(long, env = "GEMINI_PROXY_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Seconds that in-flight requests may run on after SIGTERM.
    #[arg(long, env = "GEMINI_PROXY_SHUTDOWN_GRACE_SECONDS")]
    shutdown_grace_seconds: Option<u64>,
    /// Seconds to go on serving after SIGTERM (not ready, HTTP/1.1 connections closed after
    /// each answer) before accepting stops: the time load balancers take to drop the pod.
    #[arg(long, env = "GEMINI_PROXY_SHUTDOWN_DELAY_SECONDS")]
    shutdown_delay_seconds: Option<u64>,
    #[command(flatten)]
    redis: RedisArgs,
    /// Server threads, each with its own runtime and listening socket (default: one per CPU).
    #[arg(long, env = "GEMINI_PROXY_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Pins each server thread to a CPU: `auto` when the process may run on no more CPUs than
    /// it has server threads and they are its own (a machine, or a pod with exclusive CPUs;
    /// not a pod that may run on every CPU of its node).
    #[arg(
        long,
        env = "GEMINI_PROXY_PIN_WORKER_THREADS",
        value_enum,
        default_value = "auto"
    )]
    pin_worker_threads: Pinning,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validates a config file without starting: exit 0 when it is valid, 2 with the error.
    Check {
        /// The YAML file to check.
        #[arg(long)]
        config: PathBuf,
    },
    /// Shows each group's keys: state, reason, until when, health, requests in the last hour.
    /// From a running proxy's admin listener, or from a store (--redis-url and friends).
    Status {
        /// The proxy's admin address.
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        admin: String,
        /// The admin token (needed when the admin listener is not on loopback).
        #[arg(long, env = "GEMINI_PROXY_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        #[command(flatten)]
        redis: Box<RedisArgs>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Prints the state key of one namespace, derived from the master state key (read from
    /// GEMINI_PROXY_STATE_KEY, else from stdin). A proxy given it (with
    /// --state-key-namespace) reads that namespace's groups and no other: the sidecar case.
    DeriveStateKey {
        /// The namespace.
        #[arg(long)]
        namespace: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn main() -> ExitCode {
    gemini_proxy::allocator::settle();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { config }) => return check(&config),
        Some(Command::Status {
            admin,
            admin_token,
            redis,
            output,
        }) => return status(&admin, admin_token.as_deref(), &redis, output),
        Some(Command::DeriveStateKey { namespace }) => return derive_state_key(&namespace),
        None => {}
    }
    let settings = match load(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gemini-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let (_log_guard, access_log) = init_logging(cli.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The control runtime: start-up, signals, and the store's background tasks. Requests are
    // served on the worker threads (`Workers`).
    let rt = match control_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let workers = cli.worker_threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let cli = Arc::new(cli);
    match rt.block_on(run(settings, workers, access_log, cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "gemini-proxy stopped");
            eprintln!("gemini-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn derive_state_key(namespace: &str) -> ExitCode {
    let master = match std::env::var("GEMINI_PROXY_STATE_KEY") {
        Ok(k) if !k.trim().is_empty() => k,
        _ => {
            let mut text = String::new();
            // A base64 key is 44 characters; read a little more to see a wrong input.
            let _ = std::io::Read::read_to_string(
                &mut std::io::Read::take(std::io::stdin(), 4096),
                &mut text,
            );
            text
        }
    };
    let derived =
        keystore::EncryptionKey::from_base64(&master).and_then(|k| k.derive_base64(namespace));
    match derived {
        Ok(key) => {
            println!("{key}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gemini-proxy derive-state-key: {e}");
            ExitCode::from(2)
        }
    }
}

fn load(cli: &Cli) -> Result<Settings, String> {
    let store_flags = cli.redis.given();
    let mut settings = match (&cli.config, std::env::var("GEMINI_API_KEYS")) {
        (Some(path), _) => Settings::from_file(path).map_err(|e| e.to_string())?,
        (None, Ok(keys)) => {
            Settings::quick_start(&keys, cli.upstream_url.as_deref()).map_err(|e| e.to_string())?
        }
        (None, Err(_)) if store_flags => Settings::store_only(),
        (None, Err(_)) => {
            return Err("no configuration: run `GEMINI_API_KEYS=key1,key2 gemini-proxy` or `gemini-proxy --config proxy.yaml` (see --help)".into());
        }
    };
    if let Some(listen) = cli.listen {
        settings.listen = listen;
    }
    if let Some(admin) = &cli.admin_listen {
        settings.admin.listen =
            parse_admin_listen(admin).map_err(|e| format!("--admin-listen: {e}"))?;
    }
    if let Ok(token) = std::env::var("GEMINI_PROXY_ADMIN_TOKEN")
        && !token.trim().is_empty()
    {
        settings.admin.token = Some(keystore::Secret::new(token.trim()));
    }
    if let Some(d) = &cli.default_group {
        settings.default_group = Some(d.clone());
    }
    if let Some(n) = cli.max_body_bytes {
        settings.max_body_bytes = n.max(1);
    }
    if let Some(s) = cli.shutdown_grace_seconds {
        settings.shutdown_grace = std::time::Duration::from_secs(s);
    }
    if let Some(s) = cli.shutdown_delay_seconds {
        settings.shutdown_delay =
            std::time::Duration::from_secs(s.min(gemini_proxy::config::MAX_SHUTDOWN_DELAY_S));
    }
    if store_flags {
        settings.store = Some(cli.redis.config()?);
    }
    if cli.allow_open_groups {
        settings.allow_open_groups = true;
    }
    // Given on the command line or in the environment, the list replaces the file's.
    if cli
        .allowed_upstream_hosts
        .iter()
        .any(|h| !h.trim().is_empty())
    {
        settings.allowed_upstream_hosts =
            keystore::snapshot::upstream_hosts(&cli.allowed_upstream_hosts);
    }
    let origin = cli
        .config
        .as_ref()
        .map_or_else(|| "GEMINI_API_KEYS".to_owned(), |p| p.display().to_string());
    settings
        .check_exposure(&origin)
        .map_err(|e| e.to_string())?;
    Ok(settings)
}

/// `gemini-proxy check`: the same reading and the same messages as at start, without starting.
fn check(path: &std::path::Path) -> ExitCode {
    match Settings::from_file(path) {
        Ok(s) => {
            println!(
                "{}: valid ({} groups, {} keys)",
                path.display(),
                s.groups.len(),
                s.groups.iter().map(|g| g.keys.len()).sum::<usize>()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gemini-proxy: {e}");
            ExitCode::from(2)
        }
    }
}

/// A single-threaded runtime for start-up, signals and background work (or a CLI command).
fn control_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("gemini-proxy: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

/// `gemini-proxy status`: a running proxy's view (its admin listener) or a store's.
fn status(admin: &str, token: Option<&str>, redis: &RedisArgs, output: Output) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match control_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let report = rt.block_on(async {
        if redis.given() {
            let store = RedisStore::new(redis.config()?).map_err(|e| format!("store: {e}"))?;
            let now = keystore::clock::now_ms();
            tokio::time::timeout(
                std::time::Duration::from_secs(30),
                gemini_proxy::status::of_store(store.as_ref(), now),
            )
            .await
            .map_err(|_| "the store did not answer within 30 s".to_owned())?
            .map_err(|e| format!("store: {e}"))
        } else {
            fetch_status(admin, token).await
        }
    });
    match report {
        Ok(r) => {
            match output {
                Output::Table => print!("{}", gemini_proxy::status::render_text(&r)),
                Output::Json => match serde_json::to_string_pretty(&r) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("gemini-proxy: {e}");
                        return ExitCode::FAILURE;
                    }
                },
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gemini-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn fetch_status(
    admin: &str,
    token: Option<&str>,
) -> Result<gemini_proxy::status::Report, String> {
    let url = format!("{}/status.json", admin.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let mut req = client.get(&url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req
        .send()
        .await
        .map_err(|e| format!("{url}: {e} (is the proxy's admin listener there? see --admin)"))?;
    let code = res.status();
    let body = res.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    if !code.is_success() {
        return Err(format!(
            "{url}: {code}: {}",
            String::from_utf8_lossy(&body[..body.len().min(512)]).trim()
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not a status report: {e}"))
}

async fn run(
    settings: Settings,
    worker_threads: usize,
    access_log: Option<AccessLog>,
    cli: Arc<Cli>,
) -> Result<(), String> {
    let (store, kind): (Arc<dyn KeyStore>, &'static str) = match &settings.store {
        None => (Arc::new(MemoryStore::new()), "memory"),
        Some(config) => {
            if config.encryption_key.is_none() {
                tracing::warn!(
                    "key material is stored in Redis in clear (plaintext explicitly allowed)"
                );
            }
            let store = RedisStore::new(config.clone()).map_err(|e| format!("store: {e}"))?;
            (store, "redis")
        }
    };
    let proxy = Proxy::start(&settings, store, kind).await;
    if let Some(log) = access_log {
        let _ = proxy.app.access_log.set(log);
    }
    // Listening for SIGTERM before anything answers a probe.
    let mut signal = ShutdownSignal::listen();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // The admin listener answers probes until the very end (liveness during the grace).
    let (stop_admin_tx, stop_admin_rx) = tokio::sync::watch::channel(false);
    let admin = match settings.admin.listen {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (admin.listen): {e}"))?;
            let bound = listener.local_addr().unwrap_or(addr);
            let router = proxy.admin(bound, settings.admin.token.as_ref());
            let mut stop_admin = stop_admin_rx;
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stop_admin.wait_for(|s| *s).await;
                };
                if let Err(e) = axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::error!(error = %e, "admin listener stopped");
                }
            });
            Some(bound)
        }
    };
    let tls = match &settings.listen_tls {
        None => None,
        Some(t) => {
            let tls =
                ServerTls::new(&t.cert_file, &t.key_file).map_err(|e| format!("listenTls: {e}"))?;
            tokio::spawn(tls.clone().follow_files(stopped.clone()));
            Some(tls)
        }
    };
    if let Some(path) = &cli.config {
        let reload_cli = cli.clone();
        let reloader = Arc::new(Reloader::new(
            &proxy,
            path.clone(),
            Box::new(move || load(&reload_cli)),
            settings.clone(),
        ));
        tokio::spawn(reloader.watch(stopped.clone()));
    }
    let cpus = pinning::plan(
        cli.pin_worker_threads,
        worker_threads,
        &pinning::Cpus::of_this_process(),
    );
    let workers = Workers::spawn(
        settings.listen,
        worker_threads,
        cpus.as_deref(),
        proxy.service(),
        tls,
        stopped,
        settings.shutdown_grace,
    )
    .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let groups = proxy.app.registry.groups();
    tracing::info!(
        listen = %workers.addr,
        tls = settings.listen_tls.is_some(),
        admin = %admin.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        worker_threads,
        pinned_cpus = %cpus.as_deref().map_or_else(|| "none".to_owned(), |c| format!("{c:?}")),
        groups = groups.pools().len(),
        keys = groups.pools().iter().map(|p| p.members.len()).sum::<usize>(),
        "gemini-proxy listening"
    );
    signal.recv().await;
    // Draining: not ready, and every HTTP/1.1 answer closes its connection, so that clients
    // move to other pods while the endpoints are withdrawn; then no new connections.
    proxy
        .app
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    if !settings.shutdown_delay.is_zero() {
        tracing::info!(
            delay_s = settings.shutdown_delay.as_secs(),
            "shutting down: draining (not ready, connections closed after their answer)"
        );
        tokio::select! {
            _ = tokio::time::sleep(settings.shutdown_delay) => {}
            _ = signal.recv() => tracing::info!("second signal: drain cut short"),
        }
    }
    tracing::info!("shutting down: no new connections; finishing requests in flight");
    let _ = stop.send(true);
    let joined = tokio::task::spawn_blocking(move || workers.join()).await;
    let _ = stop_admin_tx.send(true);
    proxy.stop();
    // The last access lines, before the writer's guard drops.
    if let Some(log) = proxy.app.access_log.get() {
        log.flush();
    }
    joined
        .map_err(|e| format!("server threads: {e}"))?
        .map_err(|e| format!("server error: {e}"))?;
    tracing::info!("gemini-proxy stopped");
    Ok(())
}

/// Logs to stdout through a writer thread; access lines take a short cut to it in JSON format.
fn init_logging(
    format: LogFormat,
) -> (
    tracing_appender::non_blocking::WorkerGuard,
    Option<AccessLog>,
) {
    use tracing_subscriber::EnvFilter;
    // The queue to the writer thread is bounded: access lines leave in batches of up to 32 KiB,
    // so 1,024 entries are at most about 32 MiB; when stdout cannot keep up, lines are dropped
    // (and counted by tracing-appender) rather than memory growing without end.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(1024)
        .lossy(true)
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        ));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let access = matches!(format, LogFormat::Json).then(|| AccessLog::new(writer.clone()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
    (guard, access)
}
