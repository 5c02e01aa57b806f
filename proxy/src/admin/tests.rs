//! The admin router with `oneshot`: what it shows, and who may see the status view.

use std::sync::Arc;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use keystore::{MemoryStore, Secret};
use tower::ServiceExt;

use crate::config::{Env, Settings};
use crate::server::Proxy;

const KEY: &str = "admin-test-key-value-1";

async fn proxy() -> Proxy {
    let yaml = format!(
        r#"
groups:
  - name: team
    upstream: {{url: "http://127.0.0.1:9"}}
    keys: [{{value: {KEY}, project: proj-a}}, {{value: admin-test-key-value-2, disabled: true}}]
    access: {{clientTokens: ["admin-test-client"]}}
"#
    );
    let settings = Settings::from_yaml(&yaml, "test.yaml", &Env::process()).unwrap();
    Proxy::start(&settings, Arc::new(MemoryStore::new()), "memory").await
}

async fn get(
    p: &Proxy,
    listen: &str,
    token: Option<&str>,
    path: &str,
    auth: Option<&str>,
) -> (StatusCode, String) {
    let secret = token.map(Secret::new);
    let router = p.admin(listen.parse().unwrap(), secret.as_ref());
    let mut req = Request::builder().uri(path);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let res = router
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_status_view_shows_key_ids_and_states_never_keys() {
    let p = proxy().await;
    let (status, body) = get(&p, "127.0.0.1:9464", None, "/status.json", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!body.contains(KEY), "{body}");
    let report: crate::status::Report = serde_json::from_str(&body).unwrap();
    let g = &report.groups[0];
    assert_eq!(g.name, "team");
    assert_eq!(g.access, "Token");
    assert_eq!(g.keys.len(), 2);
    assert_eq!(g.keys[0].project, "proj-a");
    assert_eq!(g.keys[0].state, "Active");
    assert_eq!(g.keys[1].state, "Disabled");
    assert!(g.keys[0].id.starts_with("k-"), "{}", g.keys[0].id);
    assert_eq!(g.minutes.len(), 60);
    let (status, page) = get(&p, "127.0.0.1:9464", None, "/status", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("status.json"), "{page}");
}

#[tokio::test]
async fn off_loopback_the_status_view_needs_the_token() {
    let p = proxy().await;
    // No token configured: refused, saying what to set.
    let (status, body) = get(&p, "0.0.0.0:9464", None, "/status.json", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("admin.token"), "{body}");
    // With one: a wrong or missing token is 401; the right one, as bearer or query, passes.
    let t = Some("admin-page-token");
    for (path, auth) in [
        ("/status.json", None),
        ("/status.json", Some("Bearer nope")),
        ("/status?token=nope", None),
        ("/status.json?token=admin-page-token-longer", None),
    ] {
        let (status, _) = get(&p, "0.0.0.0:9464", t, path, auth).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} {auth:?}");
    }
    for (path, auth) in [
        ("/status.json", Some("Bearer admin-page-token")),
        ("/status?token=admin-page-token", None),
        ("/status.json?token=admin%2Dpage%2Dtoken", None),
    ] {
        let (status, _) = get(&p, "0.0.0.0:9464", t, path, auth).await;
        assert_eq!(status, StatusCode::OK, "{path} {auth:?}");
    }
    // A token set on loopback is required there too.
    let (status, _) = get(&p, "127.0.0.1:9464", t, "/status.json", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Probes and metrics stay open for kubelets and scrapers.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, _) = get(&p, "0.0.0.0:9464", t, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
}
