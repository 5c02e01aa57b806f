//! Key affinity end to end, across two proxy processes sharing Redis: an upload started on one
//! proxy continues on the other with no key at all (the session is the credential), and the
//! file, cached content and batch it makes are used through either proxy, always with a key of
//! the project that created them.

mod support;

use std::collections::HashSet;

use gemini_proxy_tests::redis::RedisServer;
use gemini_proxy_tests::{Behaviour, Client, MockGemini, ProxyProcess, Quota, Reply};
use http::Method;
use support::shared::Shared;

const TOKEN: &str = "sk-affinity-client";
const KEYS: [(&str, &str); 4] = [
    ("af-a1", "proj-a"),
    ("af-a2", "proj-a"),
    ("af-b1", "proj-b"),
    ("af-b2", "proj-b"),
];

fn group() -> String {
    let keys: Vec<String> = KEYS
        .iter()
        .map(|(k, p)| format!("{{value: {k}, project: {p}}}"))
        .collect();
    format!(
        "access: {{clientTokens: [\"{TOKEN}\"]}}, retry: {{maxAttempts: 4}}, keys: [{}]",
        keys.join(", ")
    )
}

async fn mock() -> MockGemini {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    for (k, p) in KEYS {
        mock.project(k, p);
    }
    mock
}

async fn call(
    p: &ProxyProcess,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    Client::new()
        .call(
            method,
            &format!("{}{path}", p.url()),
            headers,
            body.to_owned(),
        )
        .await
}

/// `generateContent` through `p` with the client's token.
async fn generate(p: &ProxyProcess, body: &str) -> Reply {
    let path = "/v1beta/models/gemini-2.5-flash:generateContent";
    call(p, Method::POST, path, &[("x-goog-api-key", TOKEN)], body).await
}

/// Sends a chunk command to a session URL, with no key (as the GenAI SDK does).
async fn chunk(url: &str, command: &str, body: &str) -> Reply {
    Client::new()
        .call(
            Method::POST,
            url,
            &[
                ("x-goog-upload-command", command),
                ("x-goog-upload-offset", "0"),
            ],
            body.to_owned(),
        )
        .await
}

/// Starts a resumable upload through `p`; returns the session URL it answered.
async fn start_upload(p: &ProxyProcess, version: &str) -> String {
    let r = call(
        p,
        Method::POST,
        &format!("/upload/{version}/files"),
        &[
            ("x-goog-api-key", TOKEN),
            ("x-goog-upload-protocol", "resumable"),
            ("x-goog-upload-command", "start"),
            ("x-goog-upload-header-content-length", "11"),
            ("x-goog-upload-header-content-type", "text/plain"),
            ("content-type", "application/json"),
        ],
        r#"{"file": {"display_name": "notes"}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let url = r
        .header("x-goog-upload-url")
        .expect("session URL")
        .to_owned();
    assert!(
        url.starts_with(&format!("{}/upload/{version}/files?upload_id=", p.url())),
        "the session URL points back at the proxy: {url}"
    );
    url
}

/// The projects of the keys the mock saw on requests matching `pred`.
fn projects_seen(
    mock: &MockGemini,
    pred: impl Fn(&gemini_proxy_tests::mock::Seen) -> bool,
) -> HashSet<String> {
    mock.requests()
        .iter()
        .filter(|s| pred(s))
        .map(|s| mock.project_of(s.key.as_deref().unwrap_or("none")))
        .collect()
}

#[tokio::test]
async fn uploads_files_and_caches_stay_with_their_project_across_proxies() {
    let redis = RedisServer::start();
    let shared = Shared::new(&redis);
    let mock = mock().await;
    let config = shared.config_with(&mock, &group());
    let (p1, p2) = tokio::join!(shared.proxy_with(&config), shared.proxy_with(&config));

    // Start on p1, send the bytes to p2 with no key: the session authorises them.
    let session = start_upload(&p1, "v1beta").await;
    let on_p2 = session.replace(&p1.url(), &p2.url());
    let r = chunk(&on_p2, "upload, finalize", "hello world").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-goog-upload-status"), Some("final"));
    let file = r.json()["file"]["name"].as_str().unwrap().to_owned();
    let uri = r.json()["file"]["uri"].as_str().unwrap().to_owned();
    let upload_projects = projects_seen(&mock, |s| s.path.starts_with("/upload/"));
    assert_eq!(
        upload_projects.len(),
        1,
        "start and chunk on one project: {upload_projects:?}"
    );
    let owner = upload_projects.into_iter().next().unwrap();

    // The file, through either proxy, many times: always the owner's keys (round robin would
    // otherwise reach the other project half the time, and Google would answer 403).
    let body = format!(
        r#"{{"contents":[{{"parts":[{{"text":"summarise"}},{{"fileData":{{"mimeType":"text/plain","fileUri":"{uri}"}}}}]}}]}}"#
    );
    let key = [("x-goog-api-key", TOKEN)];
    for i in 0..8 {
        let p = if i % 2 == 0 { &p1 } else { &p2 };
        let r = generate(p, &body).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let r = call(&p2, Method::GET, &format!("/v1beta/{file}"), &key, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        projects_seen(&mock, |s| s.path.contains("/files/")
            || s.body.windows(6).any(|w| w == b"files/")),
        HashSet::from([owner.clone()])
    );

    // A cached content made through p2 is used through p1 by the same project.
    let r = call(
        &p2,
        Method::POST,
        "/v1beta/cachedContents",
        &key,
        r#"{"model":"models/gemini-2.5-flash","contents":[{"parts":[{"text":"a long document"}]}]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let cache = r.json()["name"].as_str().unwrap().to_owned();
    let cache_owner = projects_seen(&mock, |s| s.path.ends_with("/cachedContents"));
    let body =
        format!(r#"{{"contents":[{{"parts":[{{"text":"q"}}]}}],"cachedContent":"{cache}"}}"#);
    for _ in 0..6 {
        let r = generate(&p1, &body).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        projects_seen(&mock, |s| s
            .body
            .windows(15)
            .any(|w| w == b"cachedContents/")),
        cache_owner
    );

    // A batch, made on p1 and read on p2.
    let r = call(
        &p1,
        Method::POST,
        "/v1beta/models/gemini-2.5-flash:batchGenerateContent",
        &key,
        r#"{"batch":{"display_name":"b","input_config":{"requests":{"requests":[]}}}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let batch = r.json()["name"].as_str().unwrap().to_owned();
    for _ in 0..4 {
        let r = call(&p2, Method::GET, &format!("/v1beta/{batch}"), &key, "").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // The GenAI SDK's /upload/v1 path works the same.
    let session = start_upload(&p2, "v1").await;
    let to_p1 = session.replace(&p2.url(), &p1.url());
    let r = chunk(&to_p1, "upload, finalize", "hello world").await;
    assert_eq!(r.status, 200, "{}", r.text());

    // A finished session is no credential any more, on either proxy, and a session URL never
    // authorises anything but its own chunks.
    // (p2 saw the end and announced it; p1 drops the session from its cache on the event.)
    for url in [&on_p2, &session] {
        let r = chunk(url, "upload, finalize", "again").await;
        assert_eq!(r.status, 404, "{}", r.text());
    }
    let r = Client::new()
        .call(
            Method::POST,
            &on_p2,
            &[("x-goog-upload-command", "query")],
            String::new(),
        )
        .await;
    assert!(r.text().contains("not known to this proxy"), "{}", r.text());
    let open_session = start_upload(&p1, "v1beta").await;
    let r = Client::new()
        .call(
            Method::POST,
            &open_session,
            &[
                ("x-goog-upload-command", "start"),
                ("x-goog-upload-protocol", "resumable"),
            ],
            "{}".to_owned(),
        )
        .await;
    assert_eq!(
        r.status,
        401,
        "a session URL cannot start new uploads: {}",
        r.text()
    );

    // A session the proxies never started is not a credential.
    let r = Client::new()
        .call(
            Method::POST,
            &format!(
                "{}/upload/v1beta/files?upload_id=forged&upload_protocol=resumable",
                p1.url()
            ),
            &[("x-goog-upload-command", "upload, finalize")],
            "x".to_owned(),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["status"], "NOT_FOUND");

    // When the owner's keys are all cooling, the answer is 429 with Retry-After, never a key
    // of the other project.
    for (k, p) in KEYS {
        if p == owner {
            mock.key(
                k,
                Behaviour::Quota {
                    quota: Quota::RequestsPerMinute,
                    retry_delay: Some("30s"),
                },
            );
        }
    }
    mock.clear();
    let body = format!(
        r#"{{"contents":[{{"parts":[{{"fileData":{{"mimeType":"text/plain","fileUri":"{uri}"}}}}]}}]}}"#
    );
    let r = generate(&p1, &body).await;
    assert_eq!(r.status, 429, "{}", r.text());
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&after), "Retry-After {after}");
    assert_eq!(projects_seen(&mock, |_| true), HashSet::from([owner]));
}

/// With Redis hung (SIGSTOP), the request path never waits long on it: requests that name no
/// resource are not delayed at all, and those that do wait at most the lookup bound (200 ms)
/// once, after which lookups skip the store for a while.
#[tokio::test]
async fn a_hung_store_delays_resource_requests_by_a_bounded_time_only() {
    let redis = RedisServer::start();
    let shared = Shared::new(&redis);
    let mock = mock().await;
    let p = shared
        .proxy_with(&shared.config_with(&mock, &group()))
        .await;
    let plain = r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#;
    assert_eq!(generate(&p, plain).await.status, 200);
    let naming = |i: usize| {
        format!(
            r#"{{"contents":[{{"parts":[{{"fileData":{{"fileUri":"https://generativelanguage.googleapis.com/v1beta/files/hung-{i}"}}}}]}}]}}"#
        )
    };
    redis.pause();
    let timed = |body: String| {
        let p = &p;
        async move {
            let started = std::time::Instant::now();
            let r = generate(p, &body).await;
            (r.status, started.elapsed())
        }
    };
    let mut plain_worst = std::time::Duration::ZERO;
    let mut naming_worst = std::time::Duration::ZERO;
    let mut naming_total = std::time::Duration::ZERO;
    for i in 0..20 {
        let (status, took) = timed(plain.to_owned()).await;
        assert_eq!(status, 200);
        plain_worst = plain_worst.max(took);
        let (status, took) = timed(naming(i)).await;
        // The mock knows no such file: Google's own 403 passes through; what matters is that
        // the request went upstream at all, and when.
        assert!(
            status == 200 || status == 403,
            "a request naming a file got {status} while the store hung"
        );
        naming_worst = naming_worst.max(took);
        naming_total += took;
    }
    redis.resume();
    println!(
        "store hung: plain requests worst {plain_worst:?}; naming a file worst {naming_worst:?}, \
         20 in {naming_total:?}"
    );
    assert!(
        plain_worst < std::time::Duration::from_millis(150),
        "{plain_worst:?}"
    );
    assert!(
        naming_worst < std::time::Duration::from_millis(400),
        "{naming_worst:?}"
    );
    // One bounded wait, then the store is skipped: not 20 waits.
    assert!(
        naming_total < std::time::Duration::from_millis(1200),
        "{naming_total:?}"
    );
}

/// A chunk command sent with a client token.
async fn chunk_as(url: &str, token: &str, command: &str) -> Reply {
    Client::new()
        .call(
            Method::POST,
            url,
            &[
                ("x-goog-api-key", token),
                ("x-goog-upload-command", command),
                ("x-goog-upload-offset", "0"),
            ],
            "hello world".to_owned(),
        )
        .await
}

/// In a Token group an upload session is its starting client's: another client's token is
/// refused, and revoking the starter's token ends the session. A session finished through one
/// proxy stops at once on the others, though they had it cached.
#[tokio::test]
async fn an_upload_session_is_its_clients_and_ends_on_every_proxy() {
    const OTHER: &str = "sk-affinity-other";
    let redis = RedisServer::start();
    let shared = Shared::new(&redis);
    let mock = mock().await;
    let both = shared.config_with(
        &mock,
        &group().replace(
            &format!("clientTokens: [\"{TOKEN}\"]"),
            &format!("clientTokens: [\"{TOKEN}\", \"{OTHER}\"]"),
        ),
    );
    assert!(both.contains(OTHER));
    let (p1, p2) = tokio::join!(shared.proxy_with(&both), shared.proxy_with(&both));

    // p1 started the session, so it has it cached.
    let session = start_upload(&p1, "v1beta").await;
    let on_p2 = session.replace(&p1.url(), &p2.url());
    let upstream_uploads = || {
        mock.requests()
            .iter()
            .filter(|s| s.path.starts_with("/upload/"))
            .count()
    };
    let before = upstream_uploads();
    let r = chunk_as(&session, OTHER, "upload").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["status"], "PERMISSION_DENIED");
    assert_eq!(
        upstream_uploads(),
        before,
        "another client's chunk went upstream"
    );
    // The starter's token, or none (as the SDK sends chunks), continues it.
    assert_eq!(chunk_as(&session, TOKEN, "upload").await.status, 200);

    // Finished through p2: p1 refuses the session itself within a second (it does not forward
    // it to Google on the strength of its cache).
    let r = chunk(&on_p2, "upload, finalize", "hello world").await;
    assert_eq!(
        r.header("x-goog-upload-status"),
        Some("final"),
        "{}",
        r.text()
    );
    let ended = std::time::Instant::now();
    loop {
        let r = chunk(&session, "upload, finalize", "again").await;
        if r.status == 404 && r.text().contains("not known to this proxy") {
            break;
        }
        assert!(
            ended.elapsed() < std::time::Duration::from_secs(1),
            "p1 still honours the finished session: {} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    println!(
        "finished session refused by the other proxy after {:?}",
        ended.elapsed()
    );

    // Revoking the starter's token ends its open sessions (p2, with the old file, would
    // publish the group back: it goes first).
    drop(p2);
    let open = start_upload(&p1, "v1beta").await;
    let only_other = shared.config_with(
        &mock,
        &group().replace(
            &format!("clientTokens: [\"{TOKEN}\"]"),
            &format!("clientTokens: [\"{OTHER}\"]"),
        ),
    );
    std::fs::write(p1.config_path(), &only_other).unwrap();
    let revoked = std::time::Instant::now();
    loop {
        let r = chunk(&open, "upload", "hello").await;
        if r.status == 401 {
            assert!(r.text().contains("no longer admitted"), "{}", r.text());
            break;
        }
        assert!(
            revoked.elapsed() < std::time::Duration::from_secs(5),
            "the revoked client's session still serves: {} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
