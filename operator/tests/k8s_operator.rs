//! The operator binary against the real API servers, logged in as the chart's ServiceAccount with
//! exactly the RBAC the chart renders (a verb the chart lacks fails these tests), with a real
//! Redis and a real proxy binary in front of the mock Gemini: groups created, changed and
//! deleted; Secret rotation reaching the proxy; a missing Secret named in the status and an Event
//! while the rest serves; one Event per key; the finalizer cleaning the store.

mod support;

use std::time::{Duration, Instant};

use gemini_proxy_tests::redis::RedisServer;
use gemini_proxy_tests::{Behaviour, Client, MockGemini, ProxyProcess};
use http::Method;
use keystore::KeyId;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::k8s::{
    Cluster, OperatorProcess, Who, condition, condition_message, events_of, status_of, store_env,
    wait_for, workspace_bin,
};

const MODEL: &str = "/v1beta/models/gemini-2.5-flash:generateContent";

async fn call(client: &Client, proxy: &ProxyProcess, token: &str) -> u16 {
    client
        .call(
            Method::POST,
            &format!("{}{MODEL}", proxy.url()),
            &[("x-goog-api-key", token)],
            "{}",
        )
        .await
        .status
        .as_u16()
}

#[tokio::test]
async fn the_operator_with_the_charts_rbac_runs_groups_end_to_end() {
    let cluster = Cluster::get();
    cluster.install_crd().await;
    let ns = cluster.namespace("e2e").await;
    // The chart as installed for one watched namespace: a Role there, the Lease Role in its own.
    let rbac = cluster
        .apply_chart_rbac(&[&format!("operator.watchNamespace={ns}")])
        .await;
    assert!(
        rbac.iter()
            .any(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == ns.as_str())
    );

    let redis = RedisServer::start();
    let store = store_env(redis.url());
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    cluster
        .put_secret(&ns, "gemini-keys", &[("key-1", "fake-e2e-one")], true)
        .await;
    cluster
        .put_secret(&ns, "apps", &[("alice", "tok-alice-e2e")], true)
        .await;
    cluster
        .put_secret(&ns, "other", &[("k", "fake-e2e-not-opted-in")], false)
        .await;

    let operator = OperatorProcess::start(
        &cluster,
        Who::Operator,
        "op-e2e",
        &store,
        &["--namespace", &ns],
    )
    .await;
    // Ready once both caches listed (it never was before: two waiters on one readiness signal).
    let started = Instant::now();
    wait_for(
        Duration::from_secs(20),
        "the operator's /readyz",
        || async { (operator.readyz().await == 200).then_some(()) },
    )
    .await;
    println!("operator ready after {:?}", started.elapsed());

    // A proxy that started before the group exists.
    let proxy_bin = workspace_bin("gemini-proxy");
    let proxy = ProxyProcess::spawn(
        proxy_bin.to_str().expect("path"),
        &[],
        &[
            ("GEMINI_PROXY_REDIS_URL", &store.redis_url),
            ("GEMINI_PROXY_REDIS_KEY_PREFIX", &store.prefix),
            ("GEMINI_PROXY_STATE_KEY", &store.state_key),
        ],
    )
    .await;
    let http = Client::new();
    assert_eq!(call(&http, &proxy, "tok-alice-e2e").await, 401);

    // Create: the group is served within seconds of its creation.
    let created = Instant::now();
    cluster
        .create_group(
            &ns,
            "gemini",
            json!({"keys": [{"secret": "gemini-keys", "entry": "key-1"}],
                   "upstream": {"url": mock.url()},
                   "access": {"mode": "Token", "clientSecretRefs": [{"name": "apps"}]}}),
        )
        .await;
    wait_for(
        Duration::from_secs(10),
        "the proxy serving the new group",
        || async { (call(&http, &proxy, "tok-alice-e2e").await == 200).then_some(()) },
    )
    .await;
    let served_after = created.elapsed();
    println!("new group served {served_after:?} after its creation");
    assert!(
        served_after < Duration::from_secs(3),
        "a new group took {served_after:?} to be served"
    );
    assert!(mock.count("fake-e2e-one") >= 1);

    // Status: Ready, every condition for generation 1, the finalizer in place.
    let st = wait_for(Duration::from_secs(15), "a Ready status", || async {
        let st = status_of(&cluster, &ns, "gemini").await?;
        (condition(&st, "Ready").map(|c| c.0) == Some("True".into())).then_some(st)
    })
    .await;
    for c in ["Ready", "KeysResolved", "Degraded", "StoreReachable"] {
        let (_, _, generation) = condition(&st, c).unwrap_or_else(|| panic!("no {c}"));
        assert_eq!(generation, Some(1), "{c} observedGeneration");
    }
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(st.keys.total, 1);
    let one = KeyId::of("fake-e2e-one");
    assert_eq!(st.key_statuses[0].id, one.as_str());
    let g = cluster
        .groups(&ns)
        .await
        .get("gemini")
        .await
        .expect("group");
    assert_eq!(
        g.metadata.finalizers,
        Some(vec!["gemini-proxy.io/store-cleanup".into()])
    );

    // Rotation: a new value in the Secret reaches the running proxy.
    let rotated = Instant::now();
    cluster
        .put_secret(&ns, "gemini-keys", &[("key-1", "fake-e2e-two")], true)
        .await;
    wait_for(
        Duration::from_secs(10),
        "the proxy using the rotated key",
        || async {
            assert_eq!(call(&http, &proxy, "tok-alice-e2e").await, 200);
            (mock.count("fake-e2e-two") > 0).then_some(())
        },
    )
    .await;
    println!("rotation reached the proxy after {:?}", rotated.elapsed());
    let before = mock.count("fake-e2e-one");
    for _ in 0..5 {
        assert_eq!(call(&http, &proxy, "tok-alice-e2e").await, 200);
    }
    assert_eq!(
        mock.count("fake-e2e-one"),
        before,
        "the old key is still used"
    );

    // Update: a second key, a missing Secret and one that did not opt in.
    cluster
        .put_secret(
            &ns,
            "gemini-keys",
            &[("key-1", "fake-e2e-two"), ("key-2", "fake-e2e-three")],
            true,
        )
        .await;
    let patch = json!({"spec": {"keys": [
        {"secret": "gemini-keys", "entry": "key-1"},
        {"secret": "gemini-keys", "entry": "key-2"},
        {"secret": "gone", "entry": "k"},
        {"secret": "other", "entry": "k"}]}});
    cluster
        .groups(&ns)
        .await
        .patch("gemini", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("update the group");
    let st = wait_for(
        Duration::from_secs(15),
        "KeysResolved=False for generation 2",
        || async {
            let st = status_of(&cluster, &ns, "gemini").await?;
            (condition(&st, "KeysResolved")
                == Some(("False".into(), "SecretMissing".into(), Some(2))))
            .then_some(st)
        },
    )
    .await;
    let message = condition_message(&st, "KeysResolved");
    assert!(
        message.contains("\"gone\"") && message.contains("\"other\""),
        "{message}"
    );
    assert_eq!(st.keys.total, 2, "the two resolvable keys serve");
    assert_eq!(condition(&st, "Ready").map(|c| c.0), Some("True".into()));
    for _ in 0..4 {
        assert_eq!(
            call(&http, &proxy, "tok-alice-e2e").await,
            200,
            "the rest still serves"
        );
    }
    let text = serde_json::to_string(&st).expect("status");
    assert!(!text.contains("fake-e2e"), "a key in the status");

    // Events: a Warning for the missing Secrets, one KeyAdded per key, naming it by id.
    let three = KeyId::of("fake-e2e-three");
    let two = KeyId::of("fake-e2e-two");
    let events = wait_for(Duration::from_secs(15), "the Events", || async {
        let evs = events_of(&cluster, &ns, "gemini").await;
        let added = |id: &KeyId| {
            evs.iter().any(|e| {
                e.reason.as_deref() == Some("KeyAdded")
                    && e.note.as_deref().is_some_and(|n| n.contains(id.as_str()))
            })
        };
        let warned = evs.iter().any(|e| {
            e.reason.as_deref() == Some("KeysUnresolved") && e.type_.as_deref() == Some("Warning")
        });
        (added(&one) && added(&two) && added(&three) && warned).then_some(evs)
    })
    .await;
    let all = serde_json::to_string(&events).expect("events");
    assert!(!all.contains("fake-e2e"), "a key in an Event");
    for e in &events {
        assert_eq!(
            e.reporting_controller.as_deref(),
            Some("gemini-proxy-operator")
        );
        assert!(
            e.series.is_none(),
            "Events are not folded into series: {e:?}"
        );
    }

    // A group pointing the same Secret at a host of its author's choosing: published without
    // keys, and the status says why. The author cannot extend the operator's list.
    cluster
        .create_group(
            &ns,
            "exfil",
            json!({"keys": [{"secret": "gemini-keys", "entry": "key-1"}],
                   "upstream": {"url": "https://generativelanguage.googleapis.com@exfil.example.com/"},
                   "access": {"mode": "Token", "clientSecretRefs": [{"name": "apps"}]}}),
        )
        .await;
    let st = wait_for(
        Duration::from_secs(15),
        "the exfil group's status",
        || async {
            let st = status_of(&cluster, &ns, "exfil").await?;
            (condition(&st, "KeysResolved").map(|c| c.0) == Some("False".into())).then_some(st)
        },
    )
    .await;
    let message = condition_message(&st, "KeysResolved");
    assert!(message.contains("not one the operator allows"), "{message}");
    assert_eq!(
        st.keys.total, 0,
        "a key was published for a foreign upstream"
    );
    assert_eq!(condition(&st, "Ready").map(|c| c.0), Some("False".into()));
    cluster.delete_group(&ns, "exfil").await;

    // Delete: the finalizer cleans the store, then the object goes.
    cluster.delete_group(&ns, "gemini").await;
    wait_for(Duration::from_secs(15), "the group gone", || async {
        cluster
            .groups(&ns)
            .await
            .get_opt("gemini")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    // The snapshot (the sealed keys), the key states and the health reports are gone; what
    // remains of the group (usage counters, the audit trail) only runs out its time to live.
    let tag = format!("{{g:{ns}/gemini}}");
    for (k, _) in redis.dump() {
        if !k.contains(&tag) {
            continue;
        }
        assert!(
            !(k.ends_with(":group") || k.ends_with(":keys") || k.ends_with(":health")),
            "{k} still in the store after the group was deleted"
        );
        let ttl: i64 = redis.cli(&["TTL", &k]).trim().parse().unwrap_or(-1);
        assert!(ttl > 0, "{k} has no time to live ({ttl})");
    }
    let index: Vec<String> = redis
        .dump()
        .into_iter()
        .filter(|(k, _)| k.ends_with("{index}:groups"))
        .map(|(_, v)| v)
        .collect();
    assert!(
        !index.iter().any(|v| v.contains(&format!("{ns}/gemini"))),
        "{index:?}"
    );
    wait_for(
        Duration::from_secs(15),
        "the proxy to stop serving the deleted group",
        || async { (call(&http, &proxy, "tok-alice-e2e").await == 401).then_some(()) },
    )
    .await;

    let logs = operator.logs();
    assert!(!logs.contains("failed to add finalizer"), "{logs}");
    assert!(
        !logs.contains("\"code\":422") && !logs.contains("422 Invalid"),
        "{logs}"
    );
    assert!(!logs.contains("fake-e2e"), "a key in the operator's log");
}

/// The same operator bound to the chart's rules less one verb (status patches) cannot do its
/// job: proof that the tests above run under the RBAC they claim.
#[tokio::test]
async fn a_missing_verb_in_the_rbac_is_seen() {
    let cluster = Cluster::get();
    cluster.install_crd().await;
    let ns = cluster.namespace("trimmed").await;
    let rbac = support::k8s::render_chart(&[&format!("operator.watchNamespace={ns}")]);
    for mut doc in rbac.into_iter().filter(|d| {
        d["apiVersion"] == "rbac.authorization.k8s.io/v1"
            && d["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.contains("operator"))
    }) {
        doc["metadata"]["name"] = json!(format!(
            "trimmed-{}",
            doc["metadata"]["name"].as_str().unwrap_or_default()
        ));
        if let Some(rules) = doc.get_mut("rules").and_then(|r| r.as_array_mut()) {
            for r in rules.iter_mut() {
                if r["resources"] == json!(["geminikeygroups/status"]) {
                    r["verbs"] = json!(["get"]);
                }
            }
        }
        if let Some(role) = doc.get_mut("roleRef") {
            role["name"] = json!(format!(
                "trimmed-{}",
                role["name"].as_str().unwrap_or_default()
            ));
        }
        if let Some(subjects) = doc.get_mut("subjects").and_then(|s| s.as_array_mut()) {
            for s in subjects.iter_mut() {
                s["name"] = json!("trimmed-operator");
            }
        }
        cluster.apply_rbac(&doc).await;
    }
    let redis = RedisServer::start();
    let store = store_env(redis.url());
    cluster
        .put_secret(&ns, "keys", &[("k", "fake-trimmed")], true)
        .await;
    let operator = OperatorProcess::start(
        &cluster,
        Who::Trimmed,
        "op-trimmed",
        &store,
        &["--namespace", &ns],
    )
    .await;
    cluster
        .create_group(
            &ns,
            "g",
            json!({"keys": [{"secret": "keys", "entry": "k"}], "access": {"mode": "Open"}}),
        )
        .await;
    wait_for(
        Duration::from_secs(20),
        "a forbidden status patch in the log",
        || async { operator.logs().contains("forbidden").then_some(()) },
    )
    .await;
    assert!(
        status_of(&cluster, &ns, "g").await.is_none(),
        "a status was written without the verb"
    );
}
