//! A group's egress proxy really carries its traffic (HTTP and SOCKS5), and groups without one
//! go direct.

mod support;

use gemini_proxy_tests::egress::{EgressKind, EgressProxy};
use gemini_proxy_tests::{Behaviour, MockGemini};
use support::start;

async fn through(kind: EgressKind) {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    let egress = EgressProxy::start(kind).await;
    let yaml = format!(
        r#"
groups:
  - name: g
    upstream: {{url: "{{mock}}", egressProxy: "{}"}}
    access: {{clientTokens: [via-egress]}}
    keys: [{{value: k1}}]
  - name: direct
    upstream: {{url: "{{mock}}"}}
    access: {{clientTokens: [direct]}}
    keys: [{{value: k2}}]
"#,
        egress.url()
    );
    let p = start(&yaml, &mock).await;
    for _ in 0..3 {
        let r = p
            .post(
                support::MODEL_PATH,
                &[("x-goog-api-key", "via-egress")],
                "{}",
            )
            .await;
        assert_eq!(r.status, 200, "{kind:?}: {}", r.text());
    }
    assert!(
        egress.connections() >= 1,
        "{kind:?}: nothing went through the egress proxy"
    );
    let before = egress.connections();
    let r = p
        .post(support::MODEL_PATH, &[("x-goog-api-key", "direct")], "{}")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        egress.connections(),
        before,
        "direct traffic took the egress proxy"
    );
    assert_eq!(mock.count("k1"), 3);
    assert_eq!(mock.count("k2"), 1);
    // The egress path classifies answers like the direct one.
    mock.key("k1", Behaviour::Invalid);
    let r = p
        .post(
            support::MODEL_PATH,
            &[("x-goog-api-key", "via-egress")],
            "{}",
        )
        .await;
    // Its only key is dead: the proxy's own 503, not Google's answer about the key.
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(matches!(p.state("k1"), keystore::KeyState::Invalid { .. }));
}

#[tokio::test]
async fn http_egress_proxy_carries_the_groups_traffic() {
    through(EgressKind::Http).await;
}

#[tokio::test]
async fn socks5_egress_proxy_carries_the_groups_traffic() {
    through(EgressKind::Socks5).await;
}
