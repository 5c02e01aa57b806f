//! Shared set-up for the proxy's integration tests: an in-process proxy on a loopback port in
//! front of the mock upstream.

#![allow(dead_code)]

pub mod shared;

use std::sync::Arc;
use std::time::Duration;

use gemini_proxy::config::{Env, Settings};
use gemini_proxy::server::{Proxy, serve};
use gemini_proxy_tests::{Client, MockGemini, Reply};
use http::Method;
use keystore::{KeyId, KeyState, MemoryStore};
use tokio::sync::oneshot;

pub const MODEL_PATH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";

pub struct Running {
    pub url: String,
    /// The admin listener: details, metrics, the status view.
    pub admin_url: String,
    pub proxy: Proxy,
    pub client: Client,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Starts a proxy from YAML (`url: "{mock}"` becomes the mock's URL, with its CA when the
/// suite runs over `https://`; any other `{mock}` the URL).
pub async fn start(yaml: &str, mock: &MockGemini) -> Running {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let yaml = yaml
        .replace("url: \"{mock}\"", &mock.upstream_yaml())
        .replace("{mock}", &mock.url());
    let settings = Settings::from_yaml(&yaml, "test.yaml", &Env::process())
        .unwrap_or_else(|e| panic!("test config: {e}"));
    let proxy = Proxy::start(&settings, Arc::new(MemoryStore::new()), "memory").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind admin");
    let admin_addr = admin.local_addr().expect("admin addr");
    let admin_url = format!("http://{admin_addr}");
    let admin_router = proxy.admin(admin_addr, None);
    tokio::spawn(async move {
        let _ = axum::serve(admin, admin_router).await;
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let service = proxy.service();
    tokio::spawn(async move {
        let _ = serve(
            listener,
            service,
            async {
                let _ = stopped.await;
            },
            Duration::from_secs(1),
        )
        .await;
    });
    Running {
        url,
        admin_url,
        proxy,
        client: Client::new(),
        stop: Some(stop),
    }
}

/// An Open group over `keys` at the mock, with extra group fields in `extra` (YAML flow map
/// entries, e.g. `retry: {maxAttempts: 5}`).
pub fn open_group(keys: &[&str], extra: &str) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("{{value: {k}}}")).collect();
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    let upstream = if extra.contains("upstream:") {
        ""
    } else {
        "upstream: {url: \"{mock}\"}, "
    };
    format!(
        "defaultGroup: g\ngroups:\n  - {{name: g, {upstream}access: {{mode: Open}}, keys: [{}]{extra}}}\n",
        keys.join(", ")
    )
}

impl Running {
    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        self.client
            .call(
                Method::POST,
                &format!("{}{path}", self.url),
                headers,
                body.to_owned(),
            )
            .await
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.client
            .call(Method::GET, &format!("{}{path}", self.url), headers, "")
            .await
    }

    pub async fn generate(&self) -> Reply {
        self.post(
            MODEL_PATH,
            &[],
            r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#,
        )
        .await
    }

    /// The state of the key `value` in group `g`.
    pub fn state(&self, value: &str) -> KeyState {
        let groups = self.proxy.app.registry.groups();
        let pool = groups.get("g").expect("group g");
        let id = KeyId::of(value);
        let m = pool
            .members
            .iter()
            .find(|m| m.slot.id == id)
            .expect("key in group");
        m.slot.status().state(m.disabled, keystore::clock::now_ms())
    }

    pub fn health(&self, value: &str) -> f64 {
        let groups = self.proxy.app.registry.groups();
        let pool = groups.get("g").expect("group g");
        let id = KeyId::of(value);
        pool.members
            .iter()
            .find(|m| m.slot.id == id)
            .map(|m| m.slot.health())
            .expect("key in group")
    }

    pub async fn metrics(&self) -> String {
        self.admin("/metrics").await.text()
    }

    /// A GET on the admin listener.
    pub async fn admin(&self, path: &str) -> Reply {
        self.client
            .call(Method::GET, &format!("{}{path}", self.admin_url), &[], "")
            .await
    }
}

/// Seconds until `until_ms`.
pub fn secs_until(until_ms: u64) -> f64 {
    (until_ms as f64 - keystore::clock::now_ms() as f64) / 1000.0
}
