//! The `gemini-proxy` binary as users run it: quick start, start-up errors, graceful shutdown
//! with a stream open, and no key anywhere in logs or metrics.

use std::time::{Duration, Instant};

use gemini_proxy_tests::process::run_to_exit;
use gemini_proxy_tests::{Behaviour, Client, MockGemini, ProxyProcess, Quota};
use http::Method;

const BIN: &str = env!("CARGO_BIN_EXE_gemini-proxy");
const MODEL_PATH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";

#[tokio::test]
async fn quick_start_from_gemini_api_keys() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    let p = ProxyProcess::spawn(
        BIN,
        &[],
        &[
            ("GEMINI_API_KEYS", "qs-key-1,qs-key-2"),
            ("GEMINI_PROXY_UPSTREAM_URL", &mock.url()),
        ],
    )
    .await;
    let c = Client::new();
    for _ in 0..4 {
        let r = c
            .call(Method::POST, &format!("{}{MODEL_PATH}", p.url()), &[], "{}")
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(mock.count("qs-key-1"), 2);
    assert_eq!(mock.count("qs-key-2"), 2);
    // Log lines leave through a background writer: give it a moment.
    let logs = wait_for_logs(&p, |l| l.matches("\"message\":\"request\"").count() >= 4).await;
    assert!(
        logs.contains("\"message\":\"gemini-proxy listening\""),
        "{logs}"
    );
    assert_eq!(logs.matches("\"message\":\"request\"").count(), 4, "{logs}");
}

/// The environment the running process sees (after its restart with the allocator's settings).
fn environment_of(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    raw.split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[tokio::test]
async fn the_allocator_gives_memory_back_unless_told_otherwise() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    let env = [
        ("GEMINI_API_KEYS", "al-1"),
        ("GEMINI_PROXY_UPSTREAM_URL", &mock.url()),
    ];
    let p = ProxyProcess::spawn(BIN, &[], &env).await;
    let seen = environment_of(p.pid());
    for (name, value) in gemini_proxy::allocator::DEFAULTS {
        assert!(
            seen.contains(&format!("{name}={value}")),
            "{name}: {seen:?}"
        );
    }
    // Same process, same arguments: it serves as started.
    let r = Client::new()
        .call(Method::POST, &format!("{}{MODEL_PATH}", p.url()), &[], "{}")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let mut env = env.to_vec();
    env.push(("MIMALLOC_ALLOW_THP", "1"));
    let p = ProxyProcess::spawn(BIN, &[], &env).await;
    let seen = environment_of(p.pid());
    assert!(
        seen.contains(&"MIMALLOC_ALLOW_THP=1".to_owned()),
        "{seen:?}"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).expect("status");
    assert!(status.contains("THP_enabled:\t1"), "{status}");
}

/// The proxy's logs once `done` holds for them (or after 5 s).
async fn wait_for_logs(p: &ProxyProcess, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logs = p.logs();
        if done(&logs) || Instant::now() > deadline {
            return logs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_quick_start_is_no_open_relay_beyond_loopback() {
    let keys = [("GEMINI_API_KEYS", "qs-key-1")];
    let (status, out) = run_to_exit(BIN, &["--listen", "0.0.0.0:0"], &keys).await;
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(
        out.contains("GEMINI_API_KEYS: groups[0].access.mode: group \"default\" is Open")
            && out.contains("GEMINI_PROXY_ALLOW_OPEN_GROUPS=true"),
        "{out}"
    );
    assert!(!out.contains("qs-key-1"), "{out}");
}

#[tokio::test]
async fn no_configuration_explains_how_to_start() {
    let (status, out) = run_to_exit(BIN, &[], &[]).await;
    assert_eq!(status.code(), Some(2));
    assert!(
        out.contains("GEMINI_API_KEYS=key1,key2 gemini-proxy"),
        "{out}"
    );
}

#[tokio::test]
async fn bad_config_stops_start_up_naming_file_and_field() {
    let dir = gemini_proxy_tests::process::temp_dir("badcfg");
    let path = dir.join("proxy.yaml");
    std::fs::write(
        &path,
        "groups:\n  - name: g\n    access: {mode: Open}\n    keys:\n      - env: GP_TEST_SURELY_UNSET\n",
    )
    .unwrap();
    let (status, out) = run_to_exit(BIN, &["--config", path.to_str().unwrap()], &[]).await;
    assert_eq!(status.code(), Some(2));
    assert!(
        out.contains("proxy.yaml: groups[0].keys[0].env: environment variable GP_TEST_SURELY_UNSET is not set"),
        "{out}"
    );
    std::fs::write(
        &path,
        "groups:\n  - name: g\n    rotation: {strategy: Random}\n",
    )
    .unwrap();
    let (status, out) = run_to_exit(BIN, &["--config", path.to_str().unwrap()], &[]).await;
    assert_eq!(status.code(), Some(2));
    assert!(out.contains("Random") && out.contains("line 3"), "{out}");
}

/// A proxy process with `shutdownGraceSeconds: grace` before a mock streaming `chunks` chunks.
async fn streaming_proxy(grace: u64, chunks: usize, delay: Duration) -> (MockGemini, ProxyProcess) {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok).set_stream(chunks, delay);
    let config = format!(
        "shutdownGraceSeconds: {grace}\ndefaultGroup: g\ngroups:\n  - {{name: g, upstream: {{url: \"{}\"}}, access: {{mode: Open}}, keys: [{{value: k}}]}}\n",
        mock.url()
    );
    let p = ProxyProcess::with_config(BIN, &config, &[]).await;
    (mock, p)
}

#[tokio::test]
async fn sigterm_lets_an_open_stream_finish_then_exits_zero() {
    let (_mock, mut p) = streaming_proxy(10, 8, Duration::from_millis(150)).await;
    let c = Client::new();
    let res = c
        .open(
            Method::POST,
            &format!("{}/v1beta/models/m:streamGenerateContent?alt=sse", p.url()),
            &[],
            "{}",
        )
        .await;
    assert_eq!(res.status(), 200);
    let reader = tokio::spawn(Client::frames(res.into_body(), Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signalled = Instant::now();
    p.terminate();
    // New connections are refused soon after the signal...
    assert!(
        refuses_new_connections(&p).await,
        "still accepting after SIGTERM"
    );
    // ...while the open stream runs to its end.
    let frames = reader.await.unwrap();
    let text: String = frames
        .iter()
        .map(|f| String::from_utf8_lossy(&f.data).into_owned())
        .collect();
    assert_eq!(text.matches("data: ").count(), 8, "stream cut: {text:?}");
    let status = p.wait_exit(Duration::from_secs(10)).await.expect("exited");
    assert!(status.success(), "exit status {status}");
    assert!(signalled.elapsed() >= Duration::from_millis(700));
    assert!(p.logs().contains("shutting down"), "{}", p.logs());
}

/// Sends one HTTP/1.1 request on `s` and reads its answer whole: (head, body, closed after).
async fn exchange(s: &mut tokio::net::TcpStream, path: &str) -> (String, String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{{}}");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, len) = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .expect("a content-length");
            buf.drain(..end + 4);
            break (head, len);
        }
    };
    while buf.len() < len {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "body cut");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[..len]).into_owned();
    let closed = matches!(
        tokio::time::timeout(Duration::from_millis(500), s.read(&mut chunk)).await,
        Ok(Ok(0)) | Ok(Err(_))
    );
    (head, body, closed)
}

/// `shutdownDelaySeconds`: after SIGTERM the proxy serves on for the delay, says it is not
/// ready, and closes each HTTP/1.1 connection after its answer (clients reconnect elsewhere
/// while the pod leaves the endpoints); the admin listener answers liveness to the end. Then
/// no new connections, and exit 0.
#[tokio::test]
async fn a_shutdown_delay_serves_on_unready_and_closes_connections_after_each_answer() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    let config = format!(
        "shutdownDelaySeconds: 2\nshutdownGraceSeconds: 5\ndefaultGroup: g\ngroups:\n  - {{name: g, upstream: {{url: \"{}\"}}, access: {{mode: Open}}, keys: [{{value: k}}]}}\n",
        mock.url()
    );
    let mut p = ProxyProcess::with_config(BIN, &config, &[]).await;
    let c = Client::new();
    assert_eq!(
        c.call(Method::GET, &format!("{}/readyz", p.admin_url()), &[], "")
            .await
            .status,
        200
    );
    let mut kept = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let (head, _, closed) = exchange(&mut kept, MODEL_PATH).await;
    assert!(
        head.starts_with("http/1.1 200") && !head.contains("connection: close") && !closed,
        "{head}"
    );

    let signalled = Instant::now();
    p.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Not ready, on both ports, with the reason on the admin listener; alive still.
    let ready = c
        .call(Method::GET, &format!("{}/readyz", p.admin_url()), &[], "")
        .await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(ready.text().contains("draining"), "{}", ready.text());
    assert_eq!(
        c.call(Method::GET, &format!("{}/readyz", p.url()), &[], "")
            .await
            .status,
        503
    );
    // The kept-alive connection is served once more, then closed by the proxy...
    let (head, body, closed) = exchange(&mut kept, MODEL_PATH).await;
    assert!(
        head.starts_with("http/1.1 200") && head.contains("connection: close"),
        "{head}"
    );
    assert!(
        body.contains("candidates") && closed,
        "{body} closed={closed}"
    );
    // ...and new connections are still accepted and served, one answer each.
    let mut fresh = tokio::net::TcpStream::connect(p.addr)
        .await
        .expect("accepting during the delay");
    let (head, _, closed) = exchange(&mut fresh, MODEL_PATH).await;
    assert!(head.contains("connection: close") && closed, "{head}");
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "the delay ran out before the checks"
    );
    // After the delay: no new connections; liveness answers until the process ends.
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(signalled.elapsed())).await;
    assert!(
        refuses_new_connections(&p).await,
        "still accepting after the delay"
    );
    let status = p.wait_exit(Duration::from_secs(10)).await.expect("exited");
    assert!(status.success(), "exit status {status}:\n{}", p.logs());
    assert!(p.logs().contains("draining"), "{}", p.logs());
}

#[tokio::test]
async fn shutdown_grace_is_bounded() {
    let (_mock, mut p) = streaming_proxy(1, 100, Duration::from_millis(200)).await;
    let res = Client::new()
        .open(
            Method::POST,
            &format!("{}/v1beta/models/m:streamGenerateContent?alt=sse", p.url()),
            &[],
            "{}",
        )
        .await;
    let started = Instant::now();
    p.terminate();
    let status = p.wait_exit(Duration::from_secs(10)).await.expect("exited");
    assert!(status.success(), "exit {status}:\n{}", p.logs());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    drop(res);
}

/// Keys with recognisable shapes, so a leak is found wherever it lands.
const SECRET_KEYS: [&str; 5] = [
    "fake-secret-ok-7f3a9c",
    "fake-secret-dead-2b8e1d",
    "fake-secret-rpm-9d4c0a",
    "fake-secret-slow-5e7f21",
    "fake-secret-leak-0c6b3e",
];

#[tokio::test]
async fn no_key_in_logs_or_metrics_even_at_debug() {
    let mock = MockGemini::start().await;
    mock.key(SECRET_KEYS[0], Behaviour::Ok)
        .key(SECRET_KEYS[1], Behaviour::Invalid)
        .key(
            SECRET_KEYS[2],
            Behaviour::Quota {
                quota: Quota::RequestsPerMinute,
                retry_delay: Some("5s"),
            },
        )
        .key(SECRET_KEYS[3], Behaviour::Hang)
        .key(SECRET_KEYS[4], Behaviour::Leaked);
    let keys: Vec<String> = SECRET_KEYS
        .iter()
        .map(|k| format!("{{value: {k}}}"))
        .collect();
    let config = format!(
        "groups:\n  - name: g\n    upstream: {{url: \"{}\", timeoutSeconds: 1}}\n    retry: {{maxAttempts: 5}}\n    keys: [{}]\n    access: {{clientTokens: [sk-client-token-4e1f]}}\n",
        mock.url(),
        keys.join(", ")
    );
    let p = ProxyProcess::with_config(BIN, &config, &[("RUST_LOG", "debug")]).await;
    let c = Client::new();
    for i in 0..8 {
        let path = if i % 2 == 0 {
            MODEL_PATH.to_owned()
        } else {
            format!("{MODEL_PATH}?key=sk-client-token-4e1f")
        };
        let headers: &[(&str, &str)] = if i % 2 == 0 {
            &[("x-goog-api-key", "sk-client-token-4e1f")]
        } else {
            &[]
        };
        c.call(Method::POST, &format!("{}{path}", p.url()), headers, "{}")
            .await;
        c.call(
            Method::POST,
            &format!("{}/v1/chat/completions", p.url()),
            &[("authorization", "Bearer sk-client-token-4e1f")],
            "{}",
        )
        .await;
    }
    // Bad token, too.
    c.call(
        Method::POST,
        &format!("{}{MODEL_PATH}", p.url()),
        &[("x-goog-api-key", "fake-secret-wrong-token")],
        "{}",
    )
    .await;
    let metrics = c
        .call(Method::GET, &format!("{}/metrics", p.admin_url()), &[], "")
        .await
        .text();
    let ready = c
        .call(Method::GET, &format!("{}/readyz", p.admin_url()), &[], "")
        .await
        .text();
    let logs = wait_for_logs(&p, |l| {
        l.contains("key retired")
            && l.contains("key cooling down")
            && l.contains("upstream attempt failed")
    })
    .await;
    assert!(
        logs.contains("key retired"),
        "the test did not exercise retirement:\n{logs}"
    );
    assert!(logs.contains("key cooling down"), "{logs}");
    assert!(logs.contains("upstream attempt failed"), "{logs}");
    assert!(metrics.contains("gemini_proxy_key_state"), "{metrics}");
    for secret in SECRET_KEYS
        .iter()
        .chain(&["sk-client-token-4e1f", "fake-secret-wrong-token"])
    {
        for (what, text) in [("logs", &logs), ("metrics", &metrics), ("readyz", &ready)] {
            assert!(!text.contains(secret), "{secret} appears in {what}");
        }
    }
    // The key ids are there instead.
    assert!(metrics.contains(&keystore::KeyId::of(SECRET_KEYS[0]).to_string()));
}

use gemini_proxy_tests::process::rss_kib;

/// Whether `p` stops accepting connections within a second (after SIGTERM).
async fn refuses_new_connections(p: &ProxyProcess) -> bool {
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        if tokio::net::TcpStream::connect(p.addr).await.is_err() {
            return true;
        }
    }
    false
}

/// Chaos: SIGTERM with 200 streams open (each about 5 s long): every stream finishes intact,
/// new connections are refused, and the process exits within its grace period. Also prints the
/// memory with the streams open and after.
#[tokio::test]
async fn sigterm_with_200_open_streams_lets_every_one_finish() {
    let (_mock, mut p) = streaming_proxy(20, 10, Duration::from_millis(500)).await;
    let idle = rss_kib(p.pid());
    let url = format!("{}/v1beta/models/m:streamGenerateContent?alt=sse", p.url());
    let mut readers = Vec::new();
    for _ in 0..200 {
        let c = Client::new();
        let res = c.open(Method::POST, &url, &[], "{}").await;
        assert_eq!(res.status(), 200);
        readers.push(tokio::spawn(Client::frames(
            res.into_body(),
            Duration::from_secs(15),
        )));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let open = rss_kib(p.pid());
    let signalled = Instant::now();
    p.terminate();
    assert!(
        refuses_new_connections(&p).await,
        "still accepting after SIGTERM"
    );
    for r in readers {
        let frames = r.await.unwrap();
        let text: String = frames
            .iter()
            .map(|f| String::from_utf8_lossy(&f.data).into_owned())
            .collect();
        assert_eq!(
            text.matches("data: ").count(),
            10,
            "a stream was cut: {text:?}"
        );
    }
    let status = p.wait_exit(Duration::from_secs(20)).await.expect("exited");
    assert!(status.success(), "exit status {status}");
    let took = signalled.elapsed();
    println!(
        "200 streams: RSS idle {} KiB, with the streams open {} KiB; all finished, exit {took:?} after SIGTERM",
        idle, open
    );
    assert!(took < Duration::from_secs(20), "exit took {took:?}");
}

#[tokio::test]
async fn made_up_names_do_not_fill_memory() {
    // Two projects: requests that name a file are looked up for their owner. The upstream is a
    // closed port: what is measured happens before any attempt (each answer is a quick 502).
    let config = "defaultGroup: g\ngroups:\n  - {name: g, upstream: {url: \"http://127.0.0.1:1\"}, access: {mode: Open}, retry: {maxAttempts: 1}, keys: [{value: mem-a, project: pa}, {value: mem-b, project: pb}]}\n";
    let p = ProxyProcess::with_config(BIN, config, &[]).await;
    let c = Client::new();
    let url = format!("{}{MODEL_PATH}", p.url());
    assert_eq!(c.call(Method::POST, &url, &[], "{}").await.status, 502);
    let before = gemini_proxy_tests::process::rss_kib(p.pid());
    // 12 requests naming 8 distinct 3.5 MB file names each, then 4 with a 9.5 MB model name.
    for r in 0..12 {
        let parts: Vec<String> = (0..8)
            .map(|i| {
                format!(
                    r#"{{"fileData":{{"fileUri":"files/{r}-{i}-{}"}}}}"#,
                    "n".repeat(3_500_000)
                )
            })
            .collect();
        let body = format!(r#"{{"contents":[{{"parts":[{}]}}]}}"#, parts.join(","));
        let res = c.call(Method::POST, &url, &[], body).await;
        assert_eq!(res.status, 502, "{}", res.text());
    }
    for _ in 0..4 {
        let body = format!(
            r#"{{"model":"{}","messages":[{{"role":"user","content":"hi"}}]}}"#,
            "m".repeat(9_500_000)
        );
        let res = c
            .call(
                Method::POST,
                &format!("{}/v1beta/openai/chat/completions", p.url()),
                &[],
                body,
            )
            .await;
        assert_eq!(res.status, 502, "{}", res.text());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = gemini_proxy_tests::process::rss_kib(p.pid());
    println!("RSS {before} KiB before, {after} KiB after");
    assert!(
        after < before + 100 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
}

/// Reads from `s` until the proxy closes it (or `limit` passes): what it sent, and when.
async fn until_closed(mut s: tokio::net::TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut got)).await;
    (got, started.elapsed())
}

#[tokio::test]
async fn slow_and_silent_clients_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    let config = format!(
        "defaultGroup: g\ngroups:\n  - {{name: g, upstream: {{url: \"{}\"}}, access: {{mode: Open}}, keys: [{{value: slow-key}}]}}\n",
        mock.url()
    );
    let p = ProxyProcess::with_config(BIN, &config, &[]).await;
    let limit = Duration::from_secs(75);
    let connect = || tokio::net::TcpStream::connect(p.addr);
    // Connects and says nothing.
    let silent = async { until_closed(connect().await.expect("connect"), limit).await };
    // Trickles a request head, a byte a second, never finishing it.
    let trickle = async {
        let mut s = connect().await.expect("connect");
        s.write_all(b"POST /v1beta/models/m:generateContent HTTP/1.1\r\nx-a: ")
            .await
            .expect("write");
        let started = Instant::now();
        while started.elapsed() < limit {
            if s.write_all(b"a").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        started.elapsed()
    };
    // One request, then idle on the kept-alive connection.
    let idle = async {
        let mut s = connect().await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        until_closed(s, limit).await
    };
    // A head, then a body that never completes: 408 in Google's envelope.
    let slow_body = async {
        let mut s = connect().await.expect("connect");
        s.write_all(
            b"POST /v1beta/models/m:generateContent HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{\"contents\":",
        )
        .await
        .expect("write");
        until_closed(s, limit).await
    };
    let ((silent_got, silent_t), trickle_t, (idle_got, idle_t), (body_got, body_t)) =
        tokio::join!(silent, trickle, idle, slow_body);
    println!(
        "closed after: silent {silent_t:?}, trickle {trickle_t:?}, idle {idle_t:?}, body {body_t:?}"
    );
    assert!(
        silent_got.is_empty() && silent_t < Duration::from_secs(30),
        "{silent_t:?}"
    );
    assert!(
        trickle_t < Duration::from_secs(45),
        "a trickled head ran {trickle_t:?}"
    );
    assert!(
        idle_got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&idle_got)
    );
    assert!(
        idle_t < Duration::from_secs(45),
        "an idle connection stayed {idle_t:?}"
    );
    let body = String::from_utf8_lossy(&body_got);
    assert!(body.starts_with("HTTP/1.1 408"), "{body}");
    assert!(body.contains("did not arrive within 60 s"), "{body}");
    assert!(body_t < Duration::from_secs(70), "{body_t:?}");
    assert!(mock.requests().is_empty(), "nothing went upstream");
}

/// The CPUs in a `/proc` list such as `0-2,5`.
fn cpu_list(text: &str) -> Vec<usize> {
    gemini_proxy::server::pinning::parse_list(text).expect("a CPU list")
}

/// `Cpus_allowed_list` of a `/proc/.../status` file.
fn allowed_in(status_path: &str) -> Vec<usize> {
    let status = std::fs::read_to_string(status_path).expect("status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list");
    cpu_list(line)
}

/// The CPUs each server thread (`gemini-proxy-<i>`, by `i`) may run on, and the process's own.
fn thread_cpus(pid: u32) -> (Vec<Vec<usize>>, Vec<usize>) {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let task = task.expect("task").path();
        let name = std::fs::read_to_string(task.join("comm")).expect("comm");
        if let Some(i) = name.trim().strip_prefix("gemini-proxy-") {
            let i: usize = i.parse().expect("thread number");
            threads.push((i, allowed_in(&task.join("status").display().to_string())));
        }
    }
    threads.sort();
    let process = allowed_in(&format!("/proc/{pid}/status"));
    (threads.into_iter().map(|(_, c)| c).collect(), process)
}

#[tokio::test]
async fn server_threads_are_pinned_as_asked() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    let url = mock.url();
    // `pod`: the value of KUBERNETES_SERVICE_HOST (empty: not in a pod).
    let spawn_in = async |threads: usize, mode: &str, pod: &str| {
        let env = [
            ("GEMINI_API_KEYS", "pin-1"),
            ("GEMINI_PROXY_UPSTREAM_URL", url.as_str()),
            ("KUBERNETES_SERVICE_HOST", pod),
        ];
        let threads = threads.to_string();
        let args = ["--worker-threads", &threads, "--pin-worker-threads", mode];
        let p = ProxyProcess::spawn(BIN, &args, &env).await;
        let r = Client::new()
            .call(Method::POST, &format!("{}{MODEL_PATH}", p.url()), &[], "{}")
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let (threads, process) = thread_cpus(p.pid());
        (threads, process, p)
    };
    let spawn = async |threads: usize, mode: &str| spawn_in(threads, mode, "").await;

    // Always: thread i on the i-th allowed CPU, round the set when there are more threads.
    let (threads, allowed, p) = spawn(2, "always").await;
    assert!(!allowed.is_empty());
    assert_eq!(threads.len(), 2, "{}", p.logs());
    for (i, cpus) in threads.iter().enumerate() {
        assert_eq!(cpus, &vec![allowed[i % allowed.len()]], "thread {i}");
    }
    assert!(p.logs().contains("pinned_cpus"), "{}", p.logs());

    // Never: every thread keeps the process's set.
    let (threads, allowed, _p) = spawn(2, "never").await;
    assert_eq!(threads, vec![allowed.clone(), allowed.clone()]);

    // Auto, one thread per allowed CPU: pinned like `always`.
    let n = allowed.len();
    let (threads, allowed, _p) = spawn(n, "auto").await;
    let expected: Vec<Vec<usize>> = allowed.iter().map(|c| vec![*c]).collect();
    assert_eq!(threads, expected);

    // Auto, fewer threads than allowed CPUs (a CPU quota on a bigger node): not pinned.
    if n > 1 {
        let (threads, allowed, _p) = spawn(n - 1, "auto").await;
        assert_eq!(threads, vec![allowed.clone(); n - 1]);
    }

    // Auto in a pod: pinned only when its CPUs are fewer than the node's (an exclusive set).
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").expect("online");
    let online = cpu_list(&online);
    let (threads, allowed, _p) = spawn_in(n, "auto", "10.96.0.1").await;
    if online.len() > allowed.len() {
        assert_eq!(threads, expected);
    } else {
        assert_eq!(threads, vec![allowed.clone(); n], "a pod on a shared node");
    }
}
