//! The CRD: the committed YAML matches the Rust types, and its CEL rules reject what they
//! should with messages a person understands (evaluated offline with kube's `cel` feature).

use gemini_proxy_operator::crd::GeminiKeyGroup;
use gemini_proxy_operator::crd_yaml;
use gemini_proxy_operator::fixtures::GroupFixture;

#[test]
fn committed_crd_matches_the_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/geminikeygroup.yaml");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == crd_yaml(),
        "crds/geminikeygroup.yaml is stale: run `cargo run -p gemini-proxy-operator -- crd > crds/geminikeygroup.yaml`"
    );
}

#[test]
fn crd_has_the_contract_names_columns_and_descriptions() {
    let y = crd_yaml();
    for needle in [
        "name: geminikeygroups.gemini-proxy.io",
        "- gkg",
        "- gemini",
        "v1alpha1",
        "name: Ready",
        "name: Cooling",
        "name: Proxies",
        "x-kubernetes-list-type: map",
        "description: Keys named one by one",
        "status: {}",
    ] {
        assert!(y.contains(needle), "{needle} missing from the CRD:\n{y}");
    }
}

fn errors(g: &GeminiKeyGroup) -> Vec<String> {
    match kube::core::cel::validate_cel(g) {
        Ok(()) => Vec::new(),
        Err(e) => e.into_vec().into_iter().map(|e| e.to_string()).collect(),
    }
}

fn from_json(spec: serde_json::Value) -> GeminiKeyGroup {
    let mut g: GeminiKeyGroup = serde_json::from_value(serde_json::json!({
        "apiVersion": "gemini-proxy.io/v1alpha1",
        "kind": "GeminiKeyGroup",
        "metadata": {"name": "g", "namespace": "ns"},
        "spec": spec,
    }))
    .unwrap();
    g.metadata.namespace = Some("ns".into());
    g
}

#[test]
fn a_valid_group_passes() {
    let g = GroupFixture::new("ns", "g").key("keys", "k1").build();
    assert_eq!(errors(&g), Vec::<String>::new());
    let g = GroupFixture::new("ns", "g")
        .selector("pool", "a")
        .tokens("apps")
        .build();
    assert_eq!(errors(&g), Vec::<String>::new());
}

#[test]
fn cel_rules_reject_with_readable_messages() {
    let cases = [
        (
            serde_json::json!({"access": {"mode": "Open"}}),
            "give at least one key",
        ),
        (
            serde_json::json!({"keys": [{"secretRef": {"name": "s", "key": "k"}}], "upstream": {"url": "ftp://x"}, "access": {"mode": "Open"}}),
            "upstream.url must start with https:// or http://",
        ),
        (
            serde_json::json!({"keys": [{"secretRef": {"name": "s", "key": "k"}}], "access": {"mode": "Open", "clientSecretRefs": [{"name": "t"}]}}),
            "access.mode Open takes no clientSecretRefs",
        ),
        (
            serde_json::json!({"keys": [{"secretRef": {"name": "s", "key": "k"}}]}),
            "access.mode Token (the default) needs clientSecretRefs",
        ),
        (
            serde_json::json!({"keys": [{"secretRef": {"name": "s", "key": "k"}}, {"secretRef": {"name": "s", "key": "k"}}], "access": {"mode": "Open"}}),
            "each secretRef (name and key) may appear only once",
        ),
        (
            serde_json::json!({"keys": [{"secretRef": {"name": "s", "key": "k"}}], "upstream": {"egressProxy": "ftp://p"}, "access": {"mode": "Open"}}),
            "upstream.egressProxy must be an http://, https:// or socks5:// URL",
        ),
    ];
    for (spec, message) in cases {
        let errs = errors(&from_json(spec.clone()));
        assert!(
            errs.iter().any(|e| e.contains(message)),
            "{spec}: expected {message:?}, got {errs:?}"
        );
    }
}
