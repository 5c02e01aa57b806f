//! Living with the proxy, on the real binary: the config file reloaded under load (rename, in
//! place, SIGHUP, an invalid file), `gemini-proxy check`, `gemini-proxy status`, TLS on the
//! listener with certificates swapped while running.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gemini_proxy_tests::process::{run_to_exit, temp_dir};
use gemini_proxy_tests::tls::{TestCa, tls_get};
use gemini_proxy_tests::{Behaviour, Client, MockGemini, ProxyProcess, Quota};
use http::Method;

const BIN: &str = env!("CARGO_BIN_EXE_gemini-proxy");
const MODEL_PATH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const TOKEN: &str = "day-to-day-client-token-1";

/// A Token group `g` at the mock, with the given keys (flow-map entries) and extra fields.
fn config(mock: &MockGemini, keys: &[&str], tokens: &[&str], extra: &str) -> String {
    let tokens: Vec<String> = tokens.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "groups:\n  - {{name: g, upstream: {{url: \"{}\"}}, access: {{clientTokens: [{}]}}, keys: [{}]{extra}}}\n",
        mock.url(),
        tokens.join(", "),
        keys.join(", ")
    )
}

/// Writes `text` to `path` as editors and ConfigMaps do: a new file renamed over the old one.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

async fn admin_text(p: &ProxyProcess, path: &str) -> String {
    Client::new()
        .call(Method::GET, &format!("{}{path}", p.admin_url()), &[], "")
        .await
        .text()
}

async fn generate(p: &ProxyProcess, token: &str, body: &str) -> u16 {
    Client::new()
        .call(
            Method::POST,
            &format!("{}{MODEL_PATH}", p.url()),
            &[("x-goog-api-key", token)],
            body.to_owned(),
        )
        .await
        .status
        .as_u16()
}

/// Waits until `done` holds (checked every 50 ms), up to 5 s.
async fn eventually<F, Fut>(what: &str, done: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done().await {
        assert!(Instant::now() < deadline, "not within 5 s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A load client's count: requests sent, and the statuses that were not 200.
type LoadTask = tokio::task::JoinHandle<(usize, Vec<u16>)>;

/// Load from 8 clients until stopped: (requests, failures).
fn load(p: &ProxyProcess) -> (Arc<AtomicBool>, Vec<LoadTask>) {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = (0..8)
        .map(|_| {
            let url = format!("{}{MODEL_PATH}", p.url());
            let stop = stop.clone();
            tokio::spawn(async move {
                let c = Client::new();
                let (mut n, mut bad) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let r = c
                        .call(Method::POST, &url, &[("x-goog-api-key", TOKEN)], "{}")
                        .await;
                    n += 1;
                    if r.status != 200 {
                        bad.push(r.status.as_u16());
                    }
                }
                (n, bad)
            })
        })
        .collect();
    (stop, tasks)
}

#[tokio::test]
async fn keys_tokens_and_limits_change_under_load_without_a_failed_request() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    // A key that is out of quota for a minute: its cooldown must survive the reloads.
    mock.key(
        "hr-cool",
        Behaviour::Quota {
            quota: Quota::RequestsPerMinute,
            retry_delay: Some("60s"),
        },
    );
    let keys = ["{value: hr-1}", "{value: hr-2}", "{value: hr-cool}"];
    let p = ProxyProcess::with_config(BIN, &config(&mock, &keys, &[TOKEN], ""), &[]).await;
    let path = p.dir.join("proxy.yaml");
    let (stop, tasks) = load(&p);
    eventually("hr-cool cooled down", || async {
        admin_text(&p, "/metrics")
            .await
            .contains("state=\"CoolingDown\"} 1")
    })
    .await;
    // Requests that chose it before its 429 came back have arrived by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cool_calls = mock.count("hr-cool");

    // Add a key.
    let keys = [
        "{value: hr-1}",
        "{value: hr-2}",
        "{value: hr-cool}",
        "{value: hr-3}",
    ];
    replace_file(&path, &config(&mock, &keys, &[TOKEN], ""));
    eventually("the new key serves", || async { mock.count("hr-3") > 0 }).await;
    // Disable one, remove another, add a second client token and an input guardrail.
    let keys = [
        "{value: hr-1, disabled: true}",
        "{value: hr-cool}",
        "{value: hr-3}",
    ];
    let second = "day-to-day-client-token-2";
    replace_file(
        &path,
        &config(
            &mock,
            &keys,
            &[TOKEN, second],
            ", limits: {maxInputTokensPerRequest: 100}",
        ),
    );
    eventually("the second token is admitted", || async {
        generate(&p, second, "{}").await == 200
    })
    .await;
    let (one, two) = (mock.count("hr-1"), mock.count("hr-2"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mock.count("hr-1"), one, "a disabled key is not used");
    assert_eq!(mock.count("hr-2"), two, "a removed key is not used");
    let big = format!(
        r#"{{"contents":[{{"parts":[{{"text":"{}"}}]}}]}}"#,
        "w".repeat(800)
    );
    assert_eq!(
        generate(&p, TOKEN, &big).await,
        400,
        "the new limit applies"
    );
    // The cooling key kept its state through both reloads: no upstream call since.
    assert_eq!(mock.count("hr-cool"), cool_calls);
    let status = admin_text(&p, "/status.json").await;
    let report: serde_json::Value = serde_json::from_str(&status).expect("status.json");
    let cooling: Vec<&serde_json::Value> = report["groups"][0]["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| k["state"] == "CoolingDown")
        .collect();
    assert_eq!(cooling.len(), 1, "{status}");
    assert_eq!(cooling[0]["reason"], "PerMinuteQuota");

    // Revoke the first token: 401 for it from the next reload on (the load is stopped first).
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        let (n, bad) = t.await.expect("load task");
        total += n;
        assert!(bad.is_empty(), "failed requests during reloads: {bad:?}");
    }
    assert!(total > 100, "only {total} requests under load");
    replace_file(&path, &config(&mock, &keys, &[second], ""));
    eventually("the revoked token is refused", || async {
        generate(&p, TOKEN, "{}").await == 401
    })
    .await;
    let metrics = admin_text(&p, "/metrics").await;
    assert!(
        metrics.contains("gemini_proxy_config_reloads_total{result=\"ok\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("gemini_proxy_config_last_reload_successful 1"));
    assert!(!p.logs().contains("hr-1\""), "a key value in the logs");
}

#[tokio::test]
async fn an_invalid_file_changes_nothing_and_says_why() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    let p = ProxyProcess::with_config(BIN, &config(&mock, &["{value: inv-1}"], &[TOKEN], ""), &[])
        .await;
    let path = p.dir.join("proxy.yaml");
    // A field that does not exist, with a key inline next to it.
    replace_file(
        &path,
        &config(
            &mock,
            &["{value: inv-secret-value-2, wieght: 2}"],
            &[TOKEN],
            "",
        ),
    );
    eventually("the error is counted", || async {
        admin_text(&p, "/metrics")
            .await
            .contains("gemini_proxy_config_reloads_total{result=\"error\"} 1")
    })
    .await;
    assert!(
        admin_text(&p, "/metrics")
            .await
            .contains("gemini_proxy_config_last_reload_successful 0")
    );
    assert_eq!(generate(&p, TOKEN, "{}").await, 200);
    assert_eq!(mock.count("inv-1"), 1, "the old config keeps serving");
    eventually("the refusal is logged", || async {
        p.logs().contains("config reload refused")
    })
    .await;
    let logs = p.logs();
    assert!(
        logs.contains("config reload refused") && logs.contains("wieght"),
        "{logs}"
    );
    assert!(!logs.contains("inv-secret-value-2"), "{logs}");
    // Written in place (no rename), then SIGHUP: applied, the cause named.
    std::fs::write(
        &path,
        config(&mock, &["{value: inv-3}"], &[TOKEN], "")
            .replace("groups:", "shutdownGraceSeconds: 7\ngroups:"),
    )
    .expect("write");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &p.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    eventually("the new key serves", || async {
        generate(&p, TOKEN, "{}").await == 200 && mock.count("inv-3") > 0
    })
    .await;
    // Log lines leave through a background writer: wait for them.
    eventually("the SIGHUP reload is logged", || async {
        p.logs().contains("\"cause\":\"SIGHUP\"")
    })
    .await;
    let logs = p.logs();
    // The shutdown grace is bound at start: named, and kept.
    assert!(
        logs.contains("take effect only at a restart")
            && logs.contains("\"settings\":\"shutdownGraceSeconds\""),
        "{logs}"
    );
}

#[tokio::test]
async fn check_validates_a_file_without_starting() {
    let dir = temp_dir("check");
    let good = dir.join("good.yaml");
    std::fs::write(
        &good,
        "groups:\n  - {name: g, access: {mode: Open}, keys: [{value: check-1}, {value: check-2}]}\n",
    )
    .expect("write");
    let (status, out) = run_to_exit(BIN, &["check", "--config", good.to_str().unwrap()], &[]).await;
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("valid (1 groups, 2 keys)"), "{out}");
    // A broken line beside an inline key: the error names file, place and problem, and does
    // not quote the file.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "groups:\n  - name: g\n    access: {mode: Open}\n    keys:\n      - value: check-secret-value-9\n        weight: [unclosed\n",
    )
    .expect("write");
    let (status, out) = run_to_exit(BIN, &["check", "--config", bad.to_str().unwrap()], &[]).await;
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("bad.yaml"), "{out}");
    assert!(out.contains("line 6") || out.contains("line 7"), "{out}");
    assert!(!out.contains("check-secret-value-9"), "{out}");
    // A semantic error names the field.
    std::fs::write(
        &bad,
        "groups:\n  - name: g\n    keys: [{value: check-secret-value-9}]\n",
    )
    .expect("write");
    let (status, out) = run_to_exit(BIN, &["check", "--config", bad.to_str().unwrap()], &[]).await;
    assert_eq!(status.code(), Some(2));
    assert!(
        out.contains("bad.yaml: groups[0].access.clientTokens:"),
        "{out}"
    );
    assert!(!out.contains("check-secret-value-9"), "{out}");
}

#[tokio::test]
async fn status_shows_each_keys_state_from_the_admin_listener() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    mock.key("st-dead", Behaviour::Invalid);
    mock.key(
        "st-cool",
        Behaviour::Quota {
            quota: Quota::RequestsPerMinute,
            retry_delay: Some("30s"),
        },
    );
    let keys = [
        "{value: st-ok, project: proj-a}",
        "{value: st-dead, project: proj-a}",
        "{value: st-cool, project: proj-b}",
    ];
    let p = ProxyProcess::with_config(BIN, &config(&mock, &keys, &[TOKEN], ""), &[]).await;
    for _ in 0..6 {
        assert_eq!(generate(&p, TOKEN, "{}").await, 200);
    }
    let admin = p.admin_url();
    // Usage reaches the store every 500 ms.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, out) = run_to_exit(BIN, &["status", "--admin", &admin], &[]).await;
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(
        out.contains("group g (Token, RoundRobin): 1 of 3 keys active"),
        "{out}"
    );
    let line = |id: &str| {
        let id = keystore::KeyId::of(id);
        out.lines()
            .find(|l| l.starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("no line for {id} in\n{out}"))
            .to_owned()
    };
    assert!(
        line("st-ok").contains("Active") && line("st-ok").contains("6"),
        "{out}"
    );
    assert!(line("st-dead").contains("Invalid") && line("st-dead").contains("ApiKeyInvalid"));
    let cool = line("st-cool");
    assert!(
        cool.contains("CoolingDown") && cool.contains("PerMinuteQuota"),
        "{cool}"
    );
    assert!(cool.contains(" s "), "a countdown: {cool}");
    assert!(
        !out.contains("st-ok") && !out.contains("st-dead"),
        "key values: {out}"
    );
    let (status, json) = run_to_exit(BIN, &["status", "--admin", &admin, "-o", "json"], &[]).await;
    assert_eq!(status.code(), Some(0), "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["groups"][0]["keys"][0]["requestsLastHour"], 6);
    assert_eq!(v["groups"][0]["projects"][0]["name"], "proj-a");
    // A proxy that is not there: a clear error, not a panic.
    let (status, out) = run_to_exit(BIN, &["status", "--admin", "http://127.0.0.1:1"], &[]).await;
    assert_eq!(status.code(), Some(1));
    assert!(out.contains("admin listener"), "{out}");
}

#[tokio::test]
async fn tls_on_the_listener_speaks_h2_and_follows_its_certificate_files() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    let first = TestCa::fresh();
    let dir = temp_dir("listen-tls");
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let (c1, k1) = first.server_files();
    std::fs::copy(&c1, &cert).expect("copy cert");
    std::fs::copy(&k1, &key).expect("copy key");
    let yaml = format!(
        "listenTls: {{certFile: {}, keyFile: {}}}\n{}",
        cert.display(),
        key.display(),
        config(&mock, &["{value: tls-1}"], &[TOKEN], "")
    );
    let p = ProxyProcess::with_config(BIN, &yaml, &[]).await;
    let h2 = tls_get(p.addr, &first.ca_file(), &[b"h2", b"http/1.1"], "/readyz")
        .await
        .expect("h2 over TLS");
    assert_eq!((h2.alpn.as_deref(), h2.status), (Some(&b"h2"[..]), 200));
    assert_eq!(h2.body, "ready\n");
    let h1 = tls_get(p.addr, &first.ca_file(), &[b"http/1.1"], "/healthz")
        .await
        .expect("http/1.1 over TLS");
    assert_eq!(
        (h1.alpn.as_deref(), h1.status),
        (Some(&b"http/1.1"[..]), 200)
    );
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(p.addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        Some(buf)
    };
    let answer = tokio::time::timeout(Duration::from_secs(15), plain)
        .await
        .expect("the connection is closed")
        .unwrap_or_default();
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP answered: {answer:?}"
    );
    // A silent client is cut off by the handshake deadline without holding others up.
    let _silent = tokio::net::TcpStream::connect(p.addr)
        .await
        .expect("connect");
    assert!(
        tls_get(p.addr, &first.ca_file(), &[b"h2"], "/healthz")
            .await
            .is_ok()
    );
    // A broken pair is refused and the old certificate kept.
    std::fs::write(&key, "not a key").expect("write");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        tls_get(p.addr, &first.ca_file(), &[b"h2"], "/healthz")
            .await
            .is_ok()
    );
    // A certificate from another CA, renamed into place: new connections get it.
    let second = TestCa::fresh();
    let (c2, k2) = second.server_files();
    std::fs::copy(&k2, &key).expect("copy key");
    std::fs::copy(&c2, dir.join("new.crt")).expect("copy cert");
    std::fs::rename(dir.join("new.crt"), &cert).expect("rename");
    eventually("the new certificate is served", || async {
        tls_get(p.addr, &second.ca_file(), &[b"h2"], "/healthz")
            .await
            .is_ok()
    })
    .await;
    let old = tls_get(p.addr, &first.ca_file(), &[b"h2"], "/healthz").await;
    assert!(old.is_err(), "the old CA still verifies: {old:?}");
    let logs = p.logs();
    assert!(logs.contains("listener certificate not reloaded"), "{logs}");
    assert!(!logs.contains("BEGIN"), "PEM in the logs: {logs}");
}
