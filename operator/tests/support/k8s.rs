//! The real API servers the tests run against, as `scripts/k8s-servers.sh start DIR` left them
//! (`scripts/test.sh` starts them once per run and exports `GEMINI_PROXY_K8S=DIR`): kube-apiserver
//! 1.20 for the core API and RBAC, apiextensions-apiserver 1.36 for GeminiKeyGroups (CEL), one
//! URL in front of both. Without them the tests fail, they never skip.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use gemini_proxy_operator::crd::GeminiKeyGroup;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;
use tokio::process::{Child, Command};

/// The identities the servers know (token users; the non-admin ones are named like the
/// ServiceAccounts the chart's RBAC binds).
#[derive(Clone, Copy, Debug)]
pub enum Who {
    Admin,
    /// `system:serviceaccount:gemini-proxy:gemini-proxy-operator`: the chart's operator.
    Operator,
    /// `system:serviceaccount:gemini-proxy:trimmed-operator`: bound to less than the chart's.
    Trimmed,
    /// `tenant`: no rights at all.
    Tenant,
    /// `system:serviceaccount:gemini-proxy:gemini-proxy-uninstall`: the chart's uninstall hook.
    Uninstall,
}

impl Who {
    fn file(self) -> &'static str {
        match self {
            Who::Admin => "admin",
            Who::Operator => "operator",
            Who::Trimmed => "trimmed",
            Who::Tenant => "tenant",
            Who::Uninstall => "uninstall",
        }
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    pub env: HashMap<String, String>,
}

impl Cluster {
    /// The servers started for this run. Panics (a failure, not a skip) when there are none.
    pub fn get() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = std::env::var("GEMINI_PROXY_K8S").unwrap_or_else(|_| {
            panic!(
                "GEMINI_PROXY_K8S is not set: these tests need the real API servers; run \
                 scripts/test.sh, or `bash scripts/k8s-servers.sh build && bash \
                 scripts/k8s-servers.sh start DIR` and export GEMINI_PROXY_K8S=DIR"
            )
        });
        let dir = PathBuf::from(dir);
        let text = std::fs::read_to_string(dir.join("env"))
            .unwrap_or_else(|e| panic!("{}/env: {e}: start the servers first", dir.display()));
        let env = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self { dir, env }
    }

    pub fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from the servers' env file"))
    }

    pub fn kubeconfig(&self, who: Who) -> PathBuf {
        self.dir.join(format!("{}.kubeconfig", who.file()))
    }

    pub async fn client(&self, who: Who) -> kube::Client {
        let kc = Kubeconfig::read_from(self.kubeconfig(who)).expect("kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("client config");
        kube::Client::try_from(cfg).expect("client")
    }

    pub async fn admin(&self) -> kube::Client {
        self.client(Who::Admin).await
    }

    /// Installs (or updates) the CRD by server-side apply and waits until it is Established.
    pub async fn install_crd(&self) {
        let client = self.admin().await;
        let api: Api<CustomResourceDefinition> = Api::all(client);
        let crd = gemini_proxy_operator::crd();
        let name = "geminikeygroups.gemini-proxy.io";
        api.patch(
            name,
            &PatchParams::apply("gemini-proxy-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("the CRD was refused: {e}"));
        wait_for(Duration::from_secs(30), "the CRD Established", || {
            let api = api.clone();
            async move {
                let c = api.get(name).await.ok()?;
                c.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        })
        .await;
    }

    /// A fresh namespace with a random name.
    pub async fn namespace(&self, tag: &str) -> String {
        let name = format!("{tag}-{}", random_suffix());
        let api: Api<Namespace> = Api::all(self.admin().await);
        api.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace"),
        )
        .await
        .expect("create namespace");
        name
    }

    /// Creates a namespace with a fixed name unless it exists.
    pub async fn ensure_namespace(&self, name: &str) {
        let api: Api<Namespace> = Api::all(self.admin().await);
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace");
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("namespace {name}: {e}"),
        }
    }

    /// Creates or replaces an opted-in Secret (or one that did not opt in).
    pub async fn put_secret(&self, ns: &str, name: &str, entries: &[(&str, &str)], opt_in: bool) {
        let api: Api<Secret> = Api::namespaced(self.admin().await, ns);
        let data: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        let labels = if opt_in {
            json!({"gemini-proxy.io/opt-in": "true"})
        } else {
            json!({})
        };
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "stringData": data});
        api.patch(
            name,
            &PatchParams::apply("gemini-proxy-tests").force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap_or_else(|e| panic!("secret {ns}/{name}: {e}"));
    }

    pub async fn groups(&self, ns: &str) -> Api<GeminiKeyGroup> {
        Api::namespaced(self.admin().await, ns)
    }

    /// Creates a group from its spec (JSON).
    pub async fn create_group(
        &self,
        ns: &str,
        name: &str,
        spec: serde_json::Value,
    ) -> GeminiKeyGroup {
        let g = json!({"apiVersion": "gemini-proxy.io/v1alpha1", "kind": "GeminiKeyGroup",
            "metadata": {"name": name, "namespace": ns}, "spec": spec});
        self.groups(ns)
            .await
            .create(
                &PostParams::default(),
                &serde_json::from_value(g).expect("group"),
            )
            .await
            .unwrap_or_else(|e| panic!("create group {ns}/{name}: {e}"))
    }

    pub async fn delete_group(&self, ns: &str, name: &str) {
        self.groups(ns)
            .await
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete group {ns}/{name}: {e}"));
    }

    /// The audit log entries (JSON lines) of the 1.36 server, where GeminiKeyGroups live.
    pub fn apiext_audit(&self) -> Vec<serde_json::Value> {
        read_audit(Path::new(self.var("K8S_AUDIT_APIEXT")))
    }

    /// The audit log entries of the 1.20 server (Secrets, Events, Leases).
    pub fn kube_audit(&self) -> Vec<serde_json::Value> {
        read_audit(Path::new(self.var("K8S_AUDIT_KUBE")))
    }

    /// Applies the RBAC objects of the chart, rendered by the real helm with `values`
    /// (`--set` pairs), as they would be installed in namespace `gemini-proxy`.
    pub async fn apply_chart_rbac(&self, values: &[&str]) -> Vec<serde_json::Value> {
        self.ensure_namespace("gemini-proxy").await;
        let docs = render_chart(values);
        let rbac: Vec<serde_json::Value> = docs
            .into_iter()
            .filter(|d| {
                d["apiVersion"].as_str() == Some("rbac.authorization.k8s.io/v1")
                    && d["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.contains("operator"))
            })
            .collect();
        assert!(
            rbac.len() >= 4,
            "the chart renders the operator's RBAC: {rbac:?}"
        );
        for doc in &rbac {
            self.apply_rbac(doc).await;
        }
        rbac
    }

    /// Server-side applies one RBAC object (namespaced ones in `gemini-proxy` unless they say).
    pub async fn apply_rbac(&self, doc: &serde_json::Value) {
        let kind = doc["kind"].as_str().expect("kind");
        let name = doc["metadata"]["name"].as_str().expect("name");
        let ns = doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or("gemini-proxy");
        let client = self.admin().await;
        let pp = PatchParams::apply("gemini-proxy-tests").force();
        use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
        let result = match kind {
            "ClusterRole" => Api::<ClusterRole>::all(client)
                .patch(name, &pp, &Patch::Apply(doc))
                .await
                .map(|_| ()),
            "ClusterRoleBinding" => Api::<ClusterRoleBinding>::all(client)
                .patch(name, &pp, &Patch::Apply(doc))
                .await
                .map(|_| ()),
            "Role" => Api::<Role>::namespaced(client, ns)
                .patch(name, &pp, &Patch::Apply(doc))
                .await
                .map(|_| ()),
            "RoleBinding" => Api::<RoleBinding>::namespaced(client, ns)
                .patch(name, &pp, &Patch::Apply(doc))
                .await
                .map(|_| ()),
            other => panic!("not RBAC: {other}"),
        };
        result.unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
    }
}

fn read_audit(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The workspace's root (the operator crate's parent).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// The chart rendered by the real `helm` (`$HELM`, or `.tools/helm` as scripts/test.sh installs
/// it), release `gemini-proxy` in namespace `gemini-proxy`, as JSON documents.
pub fn render_chart(values: &[&str]) -> Vec<serde_json::Value> {
    let helm = std::env::var("HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join(".tools/helm"));
    assert!(
        helm.exists(),
        "helm not found at {}: run scripts/test.sh (it installs it)",
        helm.display()
    );
    let mut cmd = std::process::Command::new(&helm);
    cmd.args(["template", "gemini-proxy"])
        .arg(workspace().join("charts/gemini-proxy"))
        .args(["--namespace", "gemini-proxy"]);
    for v in values {
        cmd.args(["--set", v]);
    }
    let out = cmd.output().expect("run helm");
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("\n---")
        .filter(|d| d.lines().any(|l| l.starts_with("kind:")))
        .map(|d| {
            let v: serde_json::Value =
                serde_saphyr::from_str(d).unwrap_or_else(|e| panic!("rendered YAML: {e}\n{d}"));
            v
        })
        .collect()
}

pub fn random_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}",
        (nanos ^ u128::from(std::process::id()) << 20) & 0xff_ffff_ffff
    )
}

/// Polls `probe` until it gives a value; panics after `limit` naming `what`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A path to a binary of the workspace, next to this test's own (built by `cargo test
/// --workspace`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} not built: cargo build --workspace (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// The operator binary as a separate process, logged in as `who`.
pub struct OperatorProcess {
    child: Child,
    pub probe: SocketAddr,
    pub log: PathBuf,
    pub name: String,
}

/// How an operator reaches the store.
#[derive(Clone)]
pub struct StoreEnv {
    pub redis_url: String,
    pub prefix: String,
    pub state_key: String,
}

impl OperatorProcess {
    pub async fn start(
        cluster: &Cluster,
        who: Who,
        name: &str,
        store: &StoreEnv,
        args: &[&str],
    ) -> Self {
        let dir = gemini_proxy_tests::process::temp_dir("operator");
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log");
        let err = out.try_clone().expect("log");
        let port = gemini_proxy_tests::process::free_port();
        let probe: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        // Flags before the (default) `run` command, as clap takes them.
        let child = Command::new(env!("CARGO_BIN_EXE_gemini-proxy-operator"))
            .args(args)
            .env("KUBECONFIG", cluster.kubeconfig(who))
            .env("GEMINI_PROXY_OPERATOR_LISTEN", probe.to_string())
            .env("GEMINI_PROXY_REDIS_URL", &store.redis_url)
            .env("GEMINI_PROXY_REDIS_KEY_PREFIX", &store.prefix)
            .env("GEMINI_PROXY_STATE_KEY", &store.state_key)
            // The mock upstream's host, beside Google's (the default).
            .env(
                "GEMINI_PROXY_ALLOWED_UPSTREAM_HOSTS",
                "generativelanguage.googleapis.com,127.0.0.1,localhost",
            )
            .env("POD_NAME", name)
            .env("POD_NAMESPACE", "gemini-proxy")
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the operator");
        Self {
            child,
            probe,
            log,
            name: name.to_owned(),
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The HTTP status of `/readyz` (0 when it does not answer).
    pub async fn readyz(&self) -> u16 {
        if tokio::net::TcpStream::connect(self.probe).await.is_err() {
            return 0;
        }
        let client = gemini_proxy_tests::Client::new();
        let url = format!("http://{}/readyz", self.probe);
        match tokio::time::timeout(
            Duration::from_secs(2),
            client.call(http::Method::GET, &url, &[], ""),
        )
        .await
        {
            Ok(r) => r.status.as_u16(),
            Err(_) => 0,
        }
    }

    /// A counter or gauge from `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let client = gemini_proxy_tests::Client::new();
        let url = format!("http://{}/metrics", self.probe);
        let text = client.call(http::Method::GET, &url, &[], "").await.text();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Resident memory in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        gemini_proxy_tests::process::rss_kib(self.child.id().unwrap_or(0))
    }

    /// SIGKILL: the process dies without a chance to release anything.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// What most tests start from: the CRD installed, a fresh namespace the chart's operator RBAC
/// covers (a Role there, as with `operator.watchNamespace`), a Redis and a store to share.
pub struct Setup {
    pub cluster: Cluster,
    pub ns: String,
    pub redis: gemini_proxy_tests::redis::RedisServer,
    pub store: StoreEnv,
}

impl Setup {
    pub async fn new(tag: &str) -> Self {
        let cluster = Cluster::get();
        cluster.install_crd().await;
        let ns = cluster.namespace(tag).await;
        cluster
            .apply_chart_rbac(&[&format!("operator.watchNamespace={ns}")])
            .await;
        let redis = gemini_proxy_tests::redis::RedisServer::start();
        let store = store_env(redis.url());
        Self {
            cluster,
            ns,
            redis,
            store,
        }
    }

    /// The operator binary as the chart's ServiceAccount, watching this namespace.
    pub async fn operator(&self, name: &str) -> OperatorProcess {
        OperatorProcess::start(
            &self.cluster,
            Who::Operator,
            name,
            &self.store,
            &["--namespace", &self.ns],
        )
        .await
    }

    /// Waits until group `name` is Ready.
    pub async fn ready(&self, name: &str) {
        wait_ready(&self.cluster, &self.ns, name).await;
    }
}

/// Waits (up to a minute) until the group's status says Ready=True.
pub async fn wait_ready(cluster: &Cluster, ns: &str, name: &str) {
    wait_for(
        Duration::from_secs(60),
        &format!("{name} Ready"),
        || async {
            let st = status_of(cluster, ns, name).await?;
            (condition(&st, "Ready").map(|c| c.0) == Some("True".into())).then_some(())
        },
    )
    .await;
}

/// A random store prefix and a fresh state key, for one test's operator and proxies.
pub fn store_env(redis_url: String) -> StoreEnv {
    StoreEnv {
        redis_url,
        prefix: gemini_proxy_tests::redis::random_prefix(),
        state_key: keystore::EncryptionKey::generate_base64(),
    }
}

/// The group's status as the server holds it (None before the operator wrote one).
pub async fn status_of(
    cluster: &Cluster,
    ns: &str,
    name: &str,
) -> Option<gemini_proxy_operator::crd::GeminiKeyGroupStatus> {
    cluster.groups(ns).await.get(name).await.ok()?.status
}

/// A condition of a status, as (status, reason, observedGeneration).
pub fn condition(
    st: &gemini_proxy_operator::crd::GeminiKeyGroupStatus,
    type_: &str,
) -> Option<(String, String, Option<i64>)> {
    st.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.observed_generation))
}

/// The message of the condition `type_` ("" without one).
pub fn condition_message(
    st: &gemini_proxy_operator::crd::GeminiKeyGroupStatus,
    type_: &str,
) -> String {
    st.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// The Events in `ns` about the group `name` (events.k8s.io/v1 on the 1.20 server).
pub async fn events_of(
    cluster: &Cluster,
    ns: &str,
    name: &str,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(cluster.admin().await, ns);
    api.list(&Default::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}
