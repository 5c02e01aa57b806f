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
        "- secret\n                - entry",
        "Keys named one by one",
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
    let key = serde_json::json!([{"secret": "s", "entry": "k"}]);
    let cases = [
        (
            serde_json::json!({"access": {"mode": "Open"}}),
            "give at least one key",
        ),
        (
            serde_json::json!({"keys": key, "upstream": {"url": "ftp://x"}, "access": {"mode": "Open"}}),
            "upstream.url must start with https:// or http://",
        ),
        (
            serde_json::json!({"keys": key, "access": {"mode": "Open", "clientSecretRefs": [{"name": "t"}]}}),
            "access.mode Open takes no clientSecretRefs",
        ),
        (
            serde_json::json!({"keys": key, "access": {"mode": "Token"}}),
            "access.mode Token needs clientSecretRefs",
        ),
        (
            serde_json::json!({"keys": key, "upstream": {"egressProxy": "ftp://p"}, "access": {"mode": "Open"}}),
            "upstream.egressProxy must be an http://, https:// or socks5:// URL",
        ),
        (
            serde_json::json!({"keySelector": {}, "access": {"mode": "Open"}}),
            "keySelector must not be empty",
        ),
        (
            serde_json::json!({"keySelector": {"matchExpressions": [{"key": "pool", "operator": "In"}]}, "access": {"mode": "Open"}}),
            "In and NotIn need values",
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

/// Every string, list and map of the schema has a bound: what a current API server's CEL cost
/// estimator needs, and what keeps one object from growing without limit.
#[test]
fn every_list_string_and_map_is_bounded() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    };
    fn walk(s: &JSONSchemaProps, path: &str, unbounded: &mut Vec<String>) {
        match s.type_.as_deref() {
            Some("string")
                if s.max_length.is_none()
                    && s.enum_.is_none()
                    && s.format.as_deref() != Some("date-time") =>
            {
                unbounded.push(format!("string {path}"))
            }
            Some("array") if s.max_items.is_none() => unbounded.push(format!("list {path}")),
            Some("object") if s.additional_properties.is_some() && s.max_properties.is_none() => {
                unbounded.push(format!("map {path}"))
            }
            _ => {}
        }
        for (k, p) in s.properties.iter().flatten() {
            walk(p, &format!("{path}.{k}"), unbounded);
        }
        if let Some(JSONSchemaPropsOrArray::Schema(i)) = &s.items {
            walk(i, &format!("{path}[]"), unbounded);
        }
        if let Some(JSONSchemaPropsOrBool::Schema(a)) = &s.additional_properties {
            walk(a, &format!("{path}{{}}"), unbounded);
        }
    }
    let crd = gemini_proxy_operator::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("a schema");
    let mut unbounded = Vec::new();
    walk(schema, "", &mut unbounded);
    assert_eq!(
        unbounded,
        Vec::<String>::new(),
        "unbounded parts of the schema"
    );
    assert!(
        !crd_yaml().contains("uint"),
        "integer formats must be Kubernetes' own"
    );
}

/// The CRD's bounds and defaults are the ones the file config and the store use
/// (`keystore::snapshot::bounds`): a change to one side fails here.
#[test]
fn crd_bounds_are_the_keystores() {
    use keystore::snapshot::bounds;
    let crd: serde_json::Value = serde_saphyr::from_str(&crd_yaml()).expect("CRD YAML");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    let field = |path: &[&str]| {
        let mut v = spec;
        for (i, p) in path.iter().enumerate() {
            v = &v[*p];
            if i + 1 < path.len() {
                v = &v["properties"];
            }
        }
        v.clone()
    };
    // The schema writes bounds as floats (`1.0`): compared as numbers.
    let num = |v: &serde_json::Value, what: &str| -> u64 {
        v[what]
            .as_f64()
            .unwrap_or_else(|| panic!("no {what} in {v}")) as u64
    };
    let timeout = field(&["upstream", "timeoutSeconds"]);
    assert_eq!(num(&timeout, "minimum"), *bounds::TIMEOUT_SECS.start());
    assert_eq!(num(&timeout, "maximum"), *bounds::TIMEOUT_SECS.end());
    assert_eq!(num(&timeout, "default"), bounds::TIMEOUT_SECS_DEFAULT);
    let attempts = field(&["retry", "maxAttempts"]);
    assert_eq!(
        num(&attempts, "minimum"),
        u64::from(*bounds::MAX_ATTEMPTS.start())
    );
    assert_eq!(
        num(&attempts, "maximum"),
        u64::from(*bounds::MAX_ATTEMPTS.end())
    );
    assert_eq!(
        num(&attempts, "default"),
        u64::from(bounds::MAX_ATTEMPTS_DEFAULT)
    );
    let wait = field(&["retry", "waitOnCooldownSeconds"]);
    assert_eq!(
        num(&wait, "maximum"),
        u64::from(bounds::WAIT_ON_COOLDOWN_SECS_MAX)
    );
}
