//! Client credentials (however the SDK sends them), group selection, 401/404/413 in the right
//! envelope, what is and is not forwarded.

mod support;

use gemini_proxy_tests::{Behaviour, MockGemini};
use http::Method;
use support::{MODEL_PATH, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TWO_GROUPS: &str = r#"
groups:
  - name: team-a
    upstream: {url: "{mock}"}
    keys: [{value: key-of-a}]
    access: {clientTokens: ["sk-team-a", {name: alice, value: sk-alice}]}
  - name: team-b
    upstream: {url: "{mock}"}
    keys: [{value: key-of-b}]
    access: {mode: Token, clientTokens: [sk-team-b]}
"#;

async fn two_groups() -> (MockGemini, support::Running) {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    let p = start(TWO_GROUPS, &mock).await;
    (mock, p)
}

#[tokio::test]
async fn the_token_selects_the_group_whichever_way_it_is_sent() {
    let (mock, p) = two_groups().await;
    let r = p
        .post(MODEL_PATH, &[("x-goog-api-key", "sk-team-a")], "{}")
        .await;
    assert_eq!(r.status, 200);
    let r = p
        .post(MODEL_PATH, &[("authorization", "Bearer sk-team-b")], "{}")
        .await;
    assert_eq!(r.status, 200);
    let r = p
        .post(&format!("{MODEL_PATH}?key=sk-alice"), &[], "{}")
        .await;
    assert_eq!(r.status, 200);
    let r = p
        .post(
            "/v1beta/openai/chat/completions",
            &[("authorization", "Bearer sk-team-b")],
            "{}",
        )
        .await;
    assert_eq!(r.status, 200);
    let keys: Vec<_> = mock
        .requests()
        .into_iter()
        .map(|s| s.key.unwrap_or_default())
        .collect();
    assert_eq!(keys, ["key-of-a", "key-of-b", "key-of-a", "key-of-b"]);
}

#[tokio::test]
async fn client_credentials_never_reach_the_upstream() {
    let (mock, p) = two_groups().await;
    // The mock answers 401 to a Bearer on a native route, as Google does: stripping matters.
    let r = p
        .post(
            &format!("{MODEL_PATH}?key=sk-team-a&alt=sse"),
            &[
                ("authorization", "Bearer sk-team-a"),
                ("x-goog-api-key", "sk-team-a"),
                ("user-agent", "test-sdk/1.0"),
                ("x-goog-api-client", "genai-py/3.4"),
            ],
            "{}",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = &mock.requests()[0];
    assert_eq!(seen.query.as_deref(), Some("alt=sse"));
    assert_eq!(seen.headers["x-goog-api-key"], "key-of-a");
    assert!(seen.headers.get("authorization").is_none());
    assert_eq!(seen.headers["user-agent"], "test-sdk/1.0");
    assert_eq!(seen.headers["x-goog-api-client"], "genai-py/3.4");
    for (_, v) in &seen.headers {
        assert!(
            !v.as_bytes().windows(4).any(|w| w == b"sk-t"),
            "client token forwarded: {v:?}"
        );
    }
    // OpenAI layer: the key goes as Bearer, the client's Bearer is gone.
    p.post(
        "/v1beta/openai/embeddings",
        &[("authorization", "Bearer sk-team-b")],
        "{}",
    )
    .await;
    let seen = &mock.requests()[1];
    assert_eq!(seen.headers["authorization"], "Bearer key-of-b");
    assert!(seen.headers.get("x-goog-api-key").is_none());
    // A percent-encoded `key` authenticates and is stripped the same: it never goes upstream,
    // and no encoded look-alike goes up beside the proxy's key.
    for q in [
        "%6Bey=sk-team-a",
        "k%65y=sk-team-a&alt=sse",
        "alt=sse&%6b%65%79=sk-team-a",
    ] {
        let r = p.post(&format!("{MODEL_PATH}?{q}"), &[], "{}").await;
        assert_eq!(r.status, 200, "{q}: {}", r.text());
        let seen = mock.requests().pop().expect("a request");
        let query = seen.query.unwrap_or_default();
        assert!(
            !query.contains("sk-team-a"),
            "{q}: the client's token went upstream: {query}"
        );
        assert_eq!(seen.key.as_deref(), Some("key-of-a"));
    }
}

#[tokio::test]
async fn unknown_or_missing_token_is_401_in_the_routes_envelope() {
    let (mock, p) = two_groups().await;
    let r = p
        .post(MODEL_PATH, &[("x-goog-api-key", "sk-wrong")], "{}")
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=UTF-8")
    );
    let v = r.json();
    assert_eq!(v["error"]["code"], 401);
    assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
    let r = p.post(MODEL_PATH, &[], "{}").await;
    assert_eq!(r.status, 401);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no client token")
    );
    for path in ["/v1beta/openai/chat/completions", "/v1/chat/completions"] {
        let r = p
            .post(path, &[("authorization", "Bearer sk-wrong")], "{}")
            .await;
        assert_eq!(r.status, 401);
        let v = r.json();
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn open_group_takes_any_token_or_none() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    let p = start(&support::open_group(&["k"], ""), &mock).await;
    assert_eq!(p.post(MODEL_PATH, &[], "{}").await.status, 200);
    assert_eq!(
        p.post(MODEL_PATH, &[("x-goog-api-key", "anything")], "{}")
            .await
            .status,
        200
    );
    assert!(
        mock.requests()
            .iter()
            .all(|s| s.key.as_deref() == Some("k"))
    );
}

#[tokio::test]
async fn v1_models_is_native_for_genai_and_openai_for_bearer() {
    let (mock, p) = two_groups().await;
    let r = p
        .get("/v1/models", &[("x-goog-api-key", "sk-team-a")])
        .await;
    assert_eq!(r.status, 200);
    assert!(r.json()["models"].is_array(), "{}", r.text());
    let r = p
        .get("/v1/models", &[("authorization", "Bearer sk-team-a")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["object"], "list");
    let paths: Vec<_> = mock.requests().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/v1/models", "/v1beta/openai/models"]);
}

#[tokio::test]
async fn unknown_route_is_404_in_googles_envelope() {
    let (mock, p) = two_groups().await;
    let r = p.get("/admin", &[("x-goog-api-key", "sk-team-a")]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["status"], "NOT_FOUND");
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn request_ids_are_honoured_or_made() {
    let (_mock, p) = two_groups().await;
    let r = p
        .post(
            MODEL_PATH,
            &[("x-goog-api-key", "sk-team-a"), ("x-request-id", "abc-123")],
            "{}",
        )
        .await;
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    let r = p
        .post(MODEL_PATH, &[("x-goog-api-key", "nope")], "{}")
        .await;
    let id = r.header("x-request-id").expect("an id").to_owned();
    assert_eq!(id.len(), 16);
    let r2 = p
        .post(MODEL_PATH, &[("x-goog-api-key", "nope")], "{}")
        .await;
    assert_ne!(r2.header("x-request-id"), Some(id.as_str()));
}

const SMALL_LIMIT: &str = r#"
maxBodyBytes: 1024
defaultGroup: g
groups:
  - {name: g, upstream: {url: "{mock}"}, access: {mode: Open}, keys: [{value: k}]}
"#;

#[tokio::test]
async fn oversized_body_is_413_and_never_forwarded() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    let p = start(SMALL_LIMIT, &mock).await;
    // Within the limit: fine, and the body arrives intact.
    let body = format!("{{\"x\":\"{}\"}}", "a".repeat(1000));
    let r = p.post(MODEL_PATH, &[], &body).await;
    assert_eq!(r.status, 200);
    assert_eq!(mock.requests()[0].body.as_ref(), body.as_bytes());
    // Over it, with a Content-Length: 413 in Google's envelope...
    let r = p.post(MODEL_PATH, &[], &"a".repeat(2000)).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], 413);
    // ... in OpenAI's on that layer.
    let r = p
        .post(
            "/v1/chat/completions",
            &[("authorization", "Bearer x")],
            &"a".repeat(2000),
        )
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "request_too_large");
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn a_declared_huge_body_is_refused_before_it_is_sent() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    let p = start(SMALL_LIMIT, &mock).await;
    let addr = p.url.trim_start_matches("http://").to_owned();
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Announce 10 GiB and send none of it: the answer must come without waiting for the body.
    sock.write_all(
        format!("POST {MODEL_PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: 10737418240\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf))
        .await
        .expect("answered without the body")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    let p = start(SMALL_LIMIT, &mock).await;
    let addr = p.url.trim_start_matches("http://").to_owned();
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let chunk = "a".repeat(600);
    let req = format!(
        "POST {MODEL_PATH} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf))
        .await
        .expect("answer")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 413"));
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn probes_and_methods() {
    let (_mock, p) = two_groups().await;
    let r = p.get("/healthz", &[]).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok\n"));
    let r = p.get("/readyz", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.text().starts_with("ready\n"), "{}", r.text());
    let r = p
        .client
        .call(
            Method::DELETE,
            &format!("{}/v1beta/files/abc", p.url),
            &[("x-goog-api-key", "sk-team-a")],
            "",
        )
        .await;
    assert_eq!(
        r.status, 403,
        "DELETE is forwarded (the mock, like Google, denies a file it does not know)"
    );
    assert!(r.text().contains("files/abc"), "{}", r.text());
}

#[tokio::test]
async fn paths_that_normalise_elsewhere_never_go_upstream() {
    let (mock, p) = two_groups().await;
    // Without a token (as an upload chunk would come) and with one: refused before anything.
    for path in [
        "/upload/../v1beta/models/m:generateContent?upload_id=abc",
        "/upload/%2e%2e/v1beta/models/m:generateContent?upload_id=abc",
        "/upload/v1beta/files/..%2F..%2Fv1beta%2Fmodels%2Fm:generateContent?upload_id=abc",
        "/v1beta/cachedContents/./x",
    ] {
        for headers in [&[][..], &[("x-goog-api-key", "sk-team-a")][..]] {
            let r = p.post(path, headers, "{}").await;
            assert_eq!(r.status, 400, "{path}: {}", r.text());
            assert_eq!(r.json()["error"]["status"], "INVALID_ARGUMENT", "{path}");
        }
    }
    assert!(mock.requests().is_empty(), "{:?}", mock.requests());
}

#[tokio::test]
async fn an_upload_session_is_no_pass_for_other_calls() {
    let (mock, p) = two_groups().await;
    // Chunk-command headers and an upload id on anything but the upload endpoint's POST/PUT:
    // not a chunk, so a token is needed like for any call.
    for (method, path) in [
        (
            Method::DELETE,
            "/upload/v1beta/cachedContents/c1?upload_id=abc",
        ),
        (Method::DELETE, "/upload/v1beta/files?upload_id=abc"),
        (
            Method::POST,
            "/upload/v1beta/models/m:generateContent?upload_id=abc",
        ),
    ] {
        let r = p
            .client
            .call(
                method.clone(),
                &format!("{}{path}", p.url),
                &[("x-goog-upload-command", "cancel")],
                "",
            )
            .await;
        assert_eq!(r.status, 401, "{method} {path}: {}", r.text());
    }
    assert!(mock.requests().is_empty());
}
