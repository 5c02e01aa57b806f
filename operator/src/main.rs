//! `gemini-proxy-operator`: `crd` prints the CRD; `run` (the default) reconciles.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use clap::{Parser, Subcommand};
use gemini_proxy_operator::controller::{self, Context, MANAGER};
use gemini_proxy_operator::crd_yaml;
use gemini_proxy_operator::metrics::Metrics;
use keystore::redis_store::cli::RedisArgs;
use keystore::{KeyStore, RedisStore};

#[derive(Parser, Debug)]
#[command(
    name = "gemini-proxy-operator",
    version,
    about = "Reconciles GeminiKeyGroups into gemini-proxy's key-state store"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the GeminiKeyGroup CRD as YAML.
    Crd,
    /// Run the controller (the default).
    Run,
    /// Before an uninstall (the chart's pre-delete hook): stop the operator (delete its
    /// Deployment, wait for its pods) and take its finalizer off every GeminiKeyGroup in scope,
    /// so that groups, namespaces and the CRD can be deleted without it. The groups stay.
    Release {
        /// The operator's Deployment, in POD_NAMESPACE (none: only the finalizers).
        #[arg(long)]
        deployment: Option<String>,
        /// Label selector of the operator's pods, to wait until they are gone.
        #[arg(long, default_value = "app.kubernetes.io/component=operator")]
        pods: String,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Watch one namespace (default: all).
    #[arg(long, env = "GEMINI_PROXY_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "GEMINI_PROXY_OPERATOR_LISTEN",
        default_value = "0.0.0.0:8081"
    )]
    listen: SocketAddr,
    /// Run only while holding a Lease, so that several replicas can run.
    #[arg(long, env = "GEMINI_PROXY_OPERATOR_LEADER_ELECTION")]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(
        long,
        env = "GEMINI_PROXY_OPERATOR_LEASE_NAME",
        default_value = "gemini-proxy-operator"
    )]
    lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// How long a Lease holds without renewal: a standby replica takes over within about this
    /// long after the leader dies.
    #[arg(long, env = "GEMINI_PROXY_OPERATOR_LEASE_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(4..=300))]
    lease_seconds: u64,
    /// Hosts a GeminiKeyGroup's upstream.url may name, comma-separated; `*` for any. A group
    /// pointing elsewhere is published without keys (its status says why).
    #[arg(
        long,
        env = "GEMINI_PROXY_ALLOWED_UPSTREAM_HOSTS",
        value_delimiter = ',',
        default_value = keystore::snapshot::DEFAULT_UPSTREAM_HOST
    )]
    allowed_upstream_hosts: Vec<String>,
    #[command(flatten)]
    redis: RedisArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Crd) = cli.command {
        print!("{}", crd_yaml());
        return ExitCode::SUCCESS;
    }
    let release = match cli.command {
        Some(Command::Release { deployment, pods }) => Some((deployment, pods)),
        _ => None,
    };
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gemini-proxy-operator: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some((deployment, pods)) = release {
        return match rt.block_on(release_groups(&cli.run, deployment, &pods)) {
            Ok(n) => {
                println!("released {n} GeminiKeyGroups");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gemini-proxy-operator release: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match rt.block_on(run(cli.run)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gemini-proxy-operator: {e}");
            ExitCode::from(2)
        }
    }
}

async fn release_groups(
    args: &RunArgs,
    deployment: Option<String>,
    pods: &str,
) -> Result<usize, String> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("kubernetes client: {e}"))?;
    let operator = deployment
        .as_deref()
        .map(|d| gemini_proxy_operator::release::Operator {
            namespace: &args.lease_namespace,
            deployment: d,
            pods,
        });
    gemini_proxy_operator::release::release(client, args.namespace.as_deref(), operator)
        .await
        .map_err(|e| e.to_string())
}

struct Probe {
    metrics: Arc<Metrics>,
    store: Arc<dyn KeyStore>,
    store_ok: AtomicBool,
    ctx: Arc<Context>,
    /// Standing by for the Lease: no cache to sync.
    standby: AtomicBool,
}

async fn run(args: RunArgs) -> Result<(), String> {
    let store: Arc<dyn KeyStore> =
        RedisStore::new(args.redis.config()?).map_err(|e| e.to_string())?;
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("kubernetes client: {e}"))?;
    let metrics = Arc::new(Metrics::new());
    let hosts = keystore::snapshot::upstream_hosts(&args.allowed_upstream_hosts);
    let hosts = keystore::snapshot::upstream_allowlist(&hosts);
    let ctx = Arc::new(
        Context::new(client.clone(), store.clone(), metrics.clone())
            .with_allowed_upstream_hosts(hosts),
    );
    let probe = Arc::new(Probe {
        metrics,
        store,
        store_ok: AtomicBool::new(false),
        ctx: ctx.clone(),
        standby: AtomicBool::new(args.leader_election),
    });
    spawn_probes(args.listen, probe.clone()).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if !args.leader_election {
        controller::run(ctx, args.namespace, stopped(stop_rx)).await;
        return Ok(());
    }
    let identity =
        std::env::var("POD_NAME").unwrap_or_else(|_| format!("{MANAGER}-{}", std::process::id()));
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client, &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(args.lease_seconds)
        .with_grace(2)
        .build()
        .await
        .map_err(|e| format!("lease: {e}"))?;
    let (mut leader, task) = manager.watch().await;
    let result = loop {
        if *stop_rx.borrow() {
            break Ok(());
        }
        let leading = *leader.borrow_and_update();
        probe.standby.store(!leading, Ordering::Relaxed);
        if leading {
            tracing::info!(lease = %args.lease_name, %identity, "leading: reconciling");
            let mut lost = leader.clone();
            let stop = stop_rx.clone();
            let until = async move {
                tokio::select! {
                    _ = lost.wait_for(|l| !*l) => tracing::warn!("lost the lease: standing by"),
                    _ = stopped(stop) => {}
                }
            };
            controller::run(ctx.clone(), args.namespace.clone(), until).await;
        } else {
            tracing::info!(lease = %args.lease_name, "standing by for the lease");
            let mut stop = stop_rx.clone();
            tokio::select! {
                r = leader.changed() => if r.is_err() { break Err("lease manager stopped".into()) },
                _ = stop.wait_for(|s| *s) => break Ok(()),
            }
        }
    };
    // Stopping (SIGTERM, e.g. a deleted pod): the lease manager releases the Lease once its
    // channel closes, so a standby takes over at once instead of after the lease runs out.
    drop(leader);
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(Ok(_))) => tracing::info!(lease = %args.lease_name, "lease released"),
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "lease not released"),
        Ok(Err(e)) => tracing::warn!(error = %e, "lease manager task failed"),
        Err(_) => tracing::warn!("lease not released within 5 s"),
    }
    result
}

async fn spawn_probes(addr: SocketAddr, probe: Arc<Probe>) -> Result<(), String> {
    let checker = probe.clone();
    tokio::spawn(async move {
        loop {
            let ok = checker.store.live_proxies().await.is_ok();
            checker.store_ok.store(ok, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(p): State<Arc<Probe>>| async move {
                let synced = p.standby.load(Ordering::Relaxed) || p.ctx.is_synced();
                match (p.store_ok.load(Ordering::Relaxed), synced) {
                    (true, true) => (StatusCode::OK, "ready\n"),
                    (false, _) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: the store does not answer\n",
                    ),
                    (true, false) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: the GeminiKeyGroup cache is not synced yet\n",
                    ),
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(p): State<Arc<Probe>>| async move { p.metrics.render() }),
        )
        .with_state(probe);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
