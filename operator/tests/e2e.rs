//! End to end without a cluster: the operator's reconcile (API server mocked) writes a group to
//! a real Redis; a real gemini-proxy (in process, real HTTP on loopback) serves with those keys
//! against the mock Gemini; a changed Secret value rotates the key in the running proxy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gemini_proxy::config::Settings;
use gemini_proxy::server::{Proxy, serve};
use gemini_proxy_operator::controller::{Context, reconcile};
use gemini_proxy_operator::fixtures::{GroupFixture, secret};
use gemini_proxy_operator::metrics::Metrics;
use gemini_proxy_tests::redis::{RedisServer, random_prefix};
use gemini_proxy_tests::{Behaviour, Client, MockGemini};
use http::{Method, Request, Response, StatusCode};
use keystore::{EncryptionKey, KeyStore, RedisConfig, RedisStore, RedisTarget, Secret};
use kube::client::Body;
use tower_test::mock;

const MODEL_PATH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";

type Events = Arc<std::sync::Mutex<Vec<serde_json::Value>>>;

/// Answers every request like an API server that holds `group`; keeps the Events posted to it.
/// (Secrets come from the operator's cache, filled by the test.)
fn api_server(group: serde_json::Value) -> (kube::Client, Events) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let events = Events::default();
    let posted = events.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let path = req.uri().path().to_owned();
            if path.ends_with("/events") {
                let bytes = http_body_util::BodyExt::collect(req.into_body())
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                if let Ok(v) = serde_json::from_slice(&bytes) {
                    posted.lock().unwrap().push(v);
                }
                send.send_response(
                    Response::builder()
                        .status(StatusCode::CREATED)
                        .body(Body::from(b"{}".to_vec()))
                        .unwrap(),
                );
                continue;
            }
            let body = if path.contains("/geminikeygroups/") {
                Some((StatusCode::OK, serde_json::to_vec(&group).unwrap()))
            } else {
                Some((StatusCode::OK, b"{}".to_vec()))
            };
            let (status, bytes) = body.unwrap_or((
                StatusCode::NOT_FOUND,
                br#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#.to_vec(),
            ));
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(bytes))
                    .unwrap(),
            );
        }
    });
    (kube::Client::new(service, "default"), events)
}

#[tokio::test]
async fn operator_writes_the_group_and_a_real_proxy_serves_and_follows_a_secret_rotation() {
    let redis = RedisServer::start();
    let mock_gemini = MockGemini::start().await;
    mock_gemini.accept_any_key(Behaviour::Ok);
    let config = RedisConfig {
        target: RedisTarget::Standalone {
            url: Secret::new(redis.url()),
        },
        key_prefix: random_prefix(),
        encryption_key: Some(
            EncryptionKey::from_base64(&EncryptionKey::generate_base64()).unwrap(),
        ),
    };
    let operator_store: Arc<dyn KeyStore> = RedisStore::new(config.clone()).unwrap();
    let group = Arc::new(
        GroupFixture::new("team-a", "gemini")
            .key("gemini-keys", "key-1")
            .upstream(&mock_gemini.url())
            .finalized()
            .build(),
    );

    // The operator reconciles the group with the Secret's first value.
    let echo = serde_json::to_value(&*group).unwrap();
    let (client, _) = api_server(echo.clone());
    let ctx = Arc::new(
        Context::new(client, operator_store.clone(), Arc::new(Metrics::new())).with_secrets(vec![
            secret("team-a", "gemini-keys", &[("key-1", "fake-first-value")]),
        ]),
    );
    reconcile(group.clone(), ctx).await.unwrap();

    // A proxy pod: no groups of its own, state from Redis, the group as its default.
    let mut settings = Settings::store_only();
    settings.default_group = Some("team-a/gemini".into());
    // The mock upstream is on loopback, not Google's host.
    settings.allowed_upstream_hosts = vec!["127.0.0.1".into()];
    let proxy_store: Arc<dyn KeyStore> = RedisStore::new(config).unwrap();
    let proxy = Proxy::start(&settings, proxy_store, "redis").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}{MODEL_PATH}", listener.local_addr().unwrap());
    tokio::spawn(serve(
        listener,
        proxy.service(),
        std::future::pending(),
        Duration::from_secs(1),
    ));
    let http = Client::new();
    let r = http.call(Method::POST, &url, &[], "{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock_gemini.count("fake-first-value"), 1);

    // The Secret changes; the next reconcile publishes it; the running proxy follows.
    let second = || {
        vec![secret(
            "team-a",
            "gemini-keys",
            &[("key-1", "fake-second-value")],
        )]
    };
    let (client, _) = api_server(echo.clone());
    let ctx = Arc::new(
        Context::new(client, operator_store.clone(), Arc::new(Metrics::new()))
            .with_secrets(second()),
    );
    reconcile(group.clone(), ctx).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = http.call(Method::POST, &url, &[], "{}").await;
        assert_eq!(r.status, 200);
        if mock_gemini.count("fake-second-value") > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy still uses the old key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = mock_gemini.count("fake-first-value");
    for _ in 0..3 {
        assert_eq!(http.call(Method::POST, &url, &[], "{}").await.status, 200);
    }
    assert_eq!(
        mock_gemini.count("fake-first-value"),
        before,
        "the old key is still in use"
    );

    // Google reports the key leaked: the proxy retires it and records it in the audit trail;
    // the operator's next pass turns that into a Warning Event naming the key by id only.
    mock_gemini.key("fake-second-value", Behaviour::Leaked);
    http.call(Method::POST, &url, &[], "{}").await;
    let id = keystore::KeyId::of("fake-second-value");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let trail = operator_store
            .audit("team-a/gemini", "", 100)
            .await
            .unwrap();
        if trail
            .iter()
            .any(|(_, e)| e.kind == keystore::AuditKind::Retired && e.key == id)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no retirement in the trail: {trail:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (client, events) = api_server(echo.clone());
    let ctx = Arc::new(
        Context::new(client, operator_store, Arc::new(Metrics::new())).with_secrets(second()),
    );
    reconcile(group, ctx).await.unwrap();
    let events = events.lock().unwrap().clone();
    let retired = events
        .iter()
        .find(|e| e["reason"] == "KeyRetired")
        .unwrap_or_else(|| panic!("no KeyRetired event: {events:?}"));
    assert_eq!(retired["type"], "Warning");
    let note = retired["note"].as_str().unwrap();
    assert!(
        note.contains(id.as_str()) && note.contains("Leaked"),
        "{note}"
    );
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains("fake-second-value") && !all.contains("fake-first-value"));
    assert!(
        events.iter().any(|e| e["reason"] == "KeyAdded"),
        "{events:?}"
    );
}
