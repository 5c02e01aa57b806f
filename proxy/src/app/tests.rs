//! The entry service, driven with `oneshot` (no port bound): minimal probes through the
//! router, everything else to the forwarder; details and metrics on the admin router.

use std::sync::Arc;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use keystore::MemoryStore;
use tower::ServiceExt;

use crate::config::{Env, Settings};
use crate::server::Proxy;

async fn proxy() -> Proxy {
    // Token access, an upstream nobody listens on: the tests never get that far.
    let yaml = r#"
groups:
  - name: team
    upstream: {url: "http://127.0.0.1:9"}
    keys: [{value: entry-test-key}]
    access: {clientTokens: ["entry-test-token"]}
"#;
    let settings = Settings::from_yaml(yaml, "test.yaml", &Env::process()).unwrap();
    Proxy::start(&settings, Arc::new(MemoryStore::new()), "memory").await
}

async fn call(proxy: &Proxy, method: &str, path: &str) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .unwrap();
    let res = if path.starts_with("/admin") {
        let admin = proxy.admin("127.0.0.1:9464".parse().unwrap(), None);
        let (mut parts, body) = req.into_parts();
        parts.uri = path.trim_start_matches("/admin").parse().unwrap();
        admin
            .oneshot(Request::from_parts(parts, body))
            .await
            .unwrap()
    } else {
        proxy.service().oneshot(req).await.unwrap()
    };
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn probes_and_metrics_are_served_by_the_router() {
    let p = proxy().await;
    assert_eq!(
        call(&p, "GET", "/healthz").await,
        (StatusCode::OK, "ok\n".into())
    );
    // The client port says ready and nothing more; the details are on the admin listener.
    assert_eq!(
        call(&p, "GET", "/readyz").await,
        (StatusCode::OK, "ready\n".into())
    );
    let (status, body) = call(&p, "GET", "/admin/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("group team: 1 of 1 keys usable"), "{body}");
    for path in ["/metrics", "/status", "/status.json"] {
        let (status, body) = call(&p, "GET", path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(body.contains("admin listener"), "{body}");
        assert!(!body.contains("team"), "{body}");
    }
    // The router's own method check still applies to its routes.
    assert_eq!(
        call(&p, "POST", "/healthz").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn everything_else_goes_to_the_forwarder_and_is_counted() {
    let p = proxy().await;
    let (status, body) = call(&p, "POST", "/v1beta/models/m:generateContent").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["status"], "UNAUTHENTICATED", "{body}");
    let (status, body) = call(&p, "GET", "/no/such/route").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (_, metrics) = call(&p, "GET", "/admin/metrics").await;
    for line in [
        r#"gemini_proxy_requests_total{group="",route="generateContent",status="4xx"} 1"#,
        r#"gemini_proxy_requests_total{group="",route="unknown",status="4xx"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}
