//! The CRD on a current API server (apiextensions-apiserver 1.36: structural schema checks, CEL
//! with its cost estimator, defaults checked against the rules): it installs and becomes
//! Established, every rule and bound refuses what it should with its own message, defaults are
//! applied, and the printer columns come back as a server-side Table.

mod support;

use kube::api::{Api, PostParams};
use serde_json::json;
use support::k8s::{Cluster, Who};

use gemini_proxy_operator::crd::GeminiKeyGroup;

fn group(name: &str, spec: serde_json::Value) -> GeminiKeyGroup {
    serde_json::from_value(json!({"apiVersion": "gemini-proxy.io/v1alpha1",
        "kind": "GeminiKeyGroup", "metadata": {"name": name}, "spec": spec}))
    .expect("a group")
}

/// Posts raw JSON (so that objects the Rust types would not even build reach the server).
async fn post(client: &kube::Client, ns: &str, body: serde_json::Value) -> (u16, String) {
    let req = http::Request::post(format!(
        "/apis/gemini-proxy.io/v1alpha1/namespaces/{ns}/geminikeygroups"
    ))
    .header("content-type", "application/json")
    .body(serde_json::to_vec(&body).expect("json"))
    .expect("request");
    match client.request_text(req).await {
        Ok(text) => (201, text),
        Err(kube::Error::Api(s)) => (s.code, s.message),
        Err(e) => panic!("request failed: {e}"),
    }
}

fn key(secret: &str, entry: &str) -> serde_json::Value {
    json!({"secret": secret, "entry": entry})
}

#[tokio::test]
async fn the_crd_installs_and_admission_enforces_every_rule_and_bound() {
    let cluster = Cluster::get();
    cluster.install_crd().await;
    let ns = cluster.namespace("admission").await;
    let client = cluster.admin().await;
    let api: Api<GeminiKeyGroup> = Api::namespaced(client.clone(), &ns);

    // Valid groups are created, and the server fills in the defaults.
    let minimal = api
        .create(
            &PostParams::default(),
            &group(
                "minimal",
                json!({"keys": [key("s", "k")], "access": {"mode": "Open"}}),
            ),
        )
        .await
        .expect("a minimal Open group is valid");
    let spec = serde_json::to_value(&minimal.spec).expect("spec");
    assert_eq!(
        spec["upstream"]["url"],
        "https://generativelanguage.googleapis.com"
    );
    assert_eq!(spec["upstream"]["timeoutSeconds"], 600);
    assert_eq!(spec["rotation"]["strategy"], "RoundRobin");
    assert_eq!(spec["retry"]["maxAttempts"], 3);
    assert_eq!(spec["retry"]["waitOnCooldownSeconds"], 0);
    for (name, spec) in [
        (
            "token",
            json!({"keys": [key("s", "a"), key("s", "b"), key("t", "a")],
                   "access": {"mode": "Token", "clientSecretRefs": [{"name": "apps"}]}}),
        ),
        (
            "selector",
            json!({"keySelector": {"matchLabels": {"pool": "a"},
                   "matchExpressions": [{"key": "tier", "operator": "In", "values": ["x"]},
                                        {"key": "old", "operator": "DoesNotExist"}]},
                   "access": {"mode": "Open"}}),
        ),
        (
            "everything",
            json!({"keys": [{"secret": "s", "entry": "k", "project": "p-1", "weight": 1000, "disabled": true}],
                   "upstream": {"url": "http://gemini.internal:8080", "egressProxy": "socks5h://egress:1080", "timeoutSeconds": 3600},
                   "rotation": {"strategy": "LeastLoaded"},
                   "limits": {"requestsPerMinute": 10, "tokensPerMinute": 250000, "requestsPerDay": 250, "learn": false},
                   "retry": {"maxAttempts": 10, "waitOnCooldownSeconds": 300},
                   "access": {"mode": "Token", "clientSecretRefs": [{"name": "apps"}],
                              "clientLimits": {"requestsPerMinute": 60, "tokensPerMinute": 1000}}}),
        ),
        (
            "thousand",
            json!({"keys": (0..1000).map(|i| key("s", &format!("k{i}"))).collect::<Vec<_>>(),
                   "access": {"mode": "Open"}}),
        ),
    ] {
        api.create(&PostParams::default(), &group(name, spec))
            .await
            .unwrap_or_else(|e| panic!("{name} should be valid: {e}"));
    }

    // Invalid groups are refused (422) with the rule's own message.
    let long = "x".repeat(254);
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            json!({"access": {"mode": "Open"}}),
            "give at least one key: spec.keys or spec.keySelector",
        ),
        (
            json!({"keys": [key("s", "k")]}),
            "spec.access: Required value",
        ),
        (
            json!({"keys": [key("s", "k")], "access": {"mode": "Token"}}),
            "access.mode Token needs clientSecretRefs",
        ),
        (
            json!({"keys": [key("s", "k")], "access": {"mode": "Open", "clientSecretRefs": [{"name": "t"}]}}),
            "access.mode Open takes no clientSecretRefs",
        ),
        (
            json!({"keys": [key("s", "k")], "upstream": {"url": "ftp://x"}, "access": {"mode": "Open"}}),
            "upstream.url must start with https:// or http://",
        ),
        (
            json!({"keys": [key("s", "k")], "upstream": {"egressProxy": "ftp://p"}, "access": {"mode": "Open"}}),
            "upstream.egressProxy must be an http://, https:// or socks5:// URL",
        ),
        (
            json!({"keySelector": {}, "access": {"mode": "Open"}}),
            "keySelector must not be empty",
        ),
        (
            json!({"keySelector": {"matchLabels": {}}, "access": {"mode": "Open"}}),
            "keySelector must not be empty",
        ),
        (
            json!({"keySelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}, "access": {"mode": "Open"}}),
            "In and NotIn need values, Exists and DoesNotExist take none",
        ),
        (
            json!({"keySelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}, "access": {"mode": "Open"}}),
            "In and NotIn need values, Exists and DoesNotExist take none",
        ),
        (
            json!({"keySelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}, "access": {"mode": "Open"}}),
            "Unsupported value: \"Near\"",
        ),
        (
            json!({"keys": [key("s", "k"), key("s", "k")], "access": {"mode": "Open"}}),
            "Duplicate value",
        ),
        (
            json!({"keys": (0..1001).map(|i| key("s", &format!("k{i}"))).collect::<Vec<_>>(), "access": {"mode": "Open"}}),
            "must have at most 1000 items",
        ),
        (
            json!({"keys": [key(&long, "k")], "access": {"mode": "Open"}}),
            "may not be more than 253 bytes",
        ),
        (
            json!({"keys": [key("s", "")], "access": {"mode": "Open"}}),
            "should be at least 1 chars long",
        ),
        (
            json!({"keys": [{"secret": "s", "entry": "k", "project": "p".repeat(129)}], "access": {"mode": "Open"}}),
            "may not be more than 128 bytes",
        ),
        (
            json!({"keys": [{"secret": "s", "entry": "k", "weight": 0}], "access": {"mode": "Open"}}),
            "should be greater than or equal to 1",
        ),
        (
            json!({"keys": [key("s", "k")], "retry": {"maxAttempts": 11}, "access": {"mode": "Open"}}),
            "should be less than or equal to 10",
        ),
        (
            json!({"keys": [key("s", "k")], "upstream": {"timeoutSeconds": 0}, "access": {"mode": "Open"}}),
            "should be greater than or equal to 1",
        ),
        (
            json!({"keys": [key("s", "k")], "upstream": {"url": format!("https://{}", "h".repeat(2048))}, "access": {"mode": "Open"}}),
            "may not be more than 2048 bytes",
        ),
        (
            json!({"keys": [key("s", "k")], "rotation": {"strategy": "Random"}, "access": {"mode": "Open"}}),
            "Unsupported value: \"Random\"",
        ),
        (
            json!({"keys": [key("s", "k")], "access": {"mode": "Token",
                   "clientSecretRefs": (0..65).map(|i| json!({"name": format!("c{i}")})).collect::<Vec<_>>()}}),
            "must have at most 64 items",
        ),
        (
            json!({"keySelector": {"matchLabels": (0..17).map(|i| (format!("l{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()},
                   "access": {"mode": "Open"}}),
            "must have at most 16 items",
        ),
        (
            json!({"keySelector": {"matchLabels": {"pool": "v".repeat(64)}}, "access": {"mode": "Open"}}),
            "may not be more than 63 bytes",
        ),
        (
            json!({"keys": [key("s", "k")], "limits": {"requestsPerMinute": 0}, "access": {"mode": "Open"}}),
            "should be greater than or equal to 1",
        ),
    ];
    for (i, (spec, message)) in cases.into_iter().enumerate() {
        let body = json!({"apiVersion": "gemini-proxy.io/v1alpha1", "kind": "GeminiKeyGroup",
            "metadata": {"name": format!("bad-{i}")}, "spec": spec});
        let (code, text) = post(&client, &ns, body).await;
        assert_eq!(code, 422, "case {i} ({message}) was not refused: {text}");
        assert!(
            text.contains(message),
            "case {i}: expected {message:?} in the server's answer, got: {text}"
        );
    }

    // The printer columns, as the server renders them for kubectl.
    let req = http::Request::get(format!(
        "/apis/gemini-proxy.io/v1alpha1/namespaces/{ns}/geminikeygroups"
    ))
    .header(
        "accept",
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
    )
    .body(Vec::new())
    .expect("request");
    let table: serde_json::Value =
        serde_json::from_str(&client.request_text(req).await.expect("table")).expect("json");
    assert_eq!(table["kind"], "Table", "{table}");
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "Name", "Ready", "Keys", "Active", "Cooling", "Invalid", "Proxies", "Age"
        ]
    );
    assert_eq!(table["rows"].as_array().map(Vec::len), Some(5));

    // A tenant without RBAC rights on groups is refused by the delegated authorization.
    let tenant = cluster.client(Who::Tenant).await;
    let (code, _) = post(
        &tenant,
        &ns,
        json!({"apiVersion": "gemini-proxy.io/v1alpha1", "kind": "GeminiKeyGroup",
               "metadata": {"name": "t"}, "spec": {"keys": [key("s", "k")], "access": {"mode": "Open"}}}),
    )
    .await;
    assert_eq!(code, 403, "a user without rights created a group");
}

#[tokio::test]
async fn the_status_the_operator_writes_fits_the_schema() {
    // Bounds in the status schema are enforced on the status subresource too: a status with the
    // largest values the operator writes (100 entries, messages cut to their bound) is accepted.
    let cluster = Cluster::get();
    cluster.install_crd().await;
    let ns = cluster.namespace("status-fit").await;
    let api = cluster.groups(&ns).await;
    let mut g = api
        .create(
            &PostParams::default(),
            &group(
                "big",
                json!({"keys": [key("s", "k")], "access": {"mode": "Open"}}),
            ),
        )
        .await
        .expect("create");
    use gemini_proxy_operator::crd::bounds;
    use gemini_proxy_operator::plan::bounded;
    let entry = gemini_proxy_operator::crd::KeyStatusEntry {
        id: "k-0123456789ab".into(),
        source: bounded("s".repeat(5000), bounds::MESSAGE),
        project: Some("p".repeat(bounds::PROJECT)),
        state: "CoolingDown".into(),
        reason: Some(bounded("r".repeat(900), bounds::SHORT)),
        until: Some("2026-12-03T00:00:00Z".into()),
        health_score: Some(0.5),
        requests_last_hour: 7,
        last_error: Some(bounded("e".repeat(9000), bounds::MESSAGE)),
    };
    let status = gemini_proxy_operator::crd::GeminiKeyGroupStatus {
        key_statuses: vec![entry; bounds::KEY_STATUSES],
        key_statuses_omitted: 900,
        ..Default::default()
    };
    g.status = Some(status);
    let patch = json!({"status": g.status});
    api.patch_status(
        "big",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .expect("the largest status the operator writes is accepted");
    let mut too_many = g.status.clone().expect("status");
    too_many.key_statuses.push(too_many.key_statuses[0].clone());
    let err = api
        .patch_status(
            "big",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&json!({"status": too_many})),
        )
        .await
        .expect_err("101 entries are refused");
    assert!(err.to_string().contains("at most 100 items"), "{err}");
}
