//! Scale on the real servers: 1,000 GeminiKeyGroups and one group of 1,000 keys. Prints the
//! numbers (time until all are Ready, the operator's memory, API requests per reconcile, the
//! size of a 1,000-key status) and checks the bounds that keep a cluster healthy: every group
//! Ready, the big status far below etcd's 1.5 MiB, no reconcile storm once settled.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kube::api::ListParams;
use serde_json::json;
use support::k8s::{Cluster, Setup, condition, wait_for};

const GROUPS: usize = 1000;
const KEYS: usize = 1000;

const OPERATOR: &str = "system:serviceaccount:gemini-proxy:gemini-proxy-operator";

/// Requests the operator made in `ns` (both servers' audit logs: every write; reads are its
/// two watches, which the audit policy leaves out).
fn operator_writes(cluster: &Cluster, ns: &str) -> usize {
    cluster
        .apiext_audit()
        .into_iter()
        .chain(cluster.kube_audit())
        .filter(|e| e["user"]["username"] == OPERATOR && e["objectRef"]["namespace"] == ns)
        .count()
}

#[tokio::test]
async fn a_thousand_groups_and_a_thousand_keys() {
    let setup = Setup::new("scale").await;
    let (cluster, ns) = (&setup.cluster, &setup.ns);
    let entries: Vec<(String, String)> = (0..KEYS)
        .map(|i| (format!("k{i}"), format!("fake-scale-{i:04}")))
        .collect();
    let refs: Vec<(&str, &str)> = entries
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    cluster.put_secret(ns, "many", &refs, true).await;
    cluster
        .put_secret(ns, "one", &[("k", "fake-scale-one")], true)
        .await;
    // The big group selects "many" by a label of its own.
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(cluster.admin().await, ns);
    secrets
        .patch(
            "many",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"labels": {"pool": "many"}}})),
        )
        .await
        .expect("label");

    let operator = setup.operator("op-scale").await;
    let rss_idle = {
        wait_for(Duration::from_secs(20), "operator ready", || async {
            (operator.readyz().await == 200).then_some(())
        })
        .await;
        operator.rss_kib()
    };
    let writes_before = operator_writes(cluster, ns);
    let started = Instant::now();
    cluster
        .create_group(
            ns,
            "big",
            json!({"keySelector": {"matchLabels": {"pool": "many"}},
                   "access": {"mode": "Open"}}),
        )
        .await;
    futures_util::stream::iter(0..GROUPS)
        .for_each_concurrent(16, |i| {
            let cluster = &cluster;
            let ns = &ns;
            async move {
                cluster
                    .create_group(
                        ns,
                        &format!("g{i:04}"),
                        json!({"keys": [{"secret": "one", "entry": "k"}], "access": {"mode": "Open"}}),
                    )
                    .await;
            }
        })
        .await;
    let created = started.elapsed();
    let api = cluster.groups(ns).await;
    let all_ready = wait_for(Duration::from_secs(300), "every group Ready", || async {
        let list = api.list(&ListParams::default()).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|g| {
                g.status
                    .as_ref()
                    .and_then(|s| condition(s, "Ready"))
                    .is_some_and(|c| c.0 == "True")
            })
            .count();
        (ready == GROUPS + 1).then_some(started.elapsed())
    })
    .await;
    let rss_busy = operator.rss_kib();
    let reconciles = operator
        .metric("gemini_proxy_operator_reconciles_total")
        .await;
    let requests = operator_writes(cluster, ns) - writes_before;
    let big = api.get("big").await.expect("big group");
    let st = big.status.expect("status");
    let size = serde_json::to_vec(&st).expect("json").len();
    let object = serde_json::to_vec(&big.spec).expect("json").len() + size;

    // Settled: over 30 s, the periodic passes write nothing (no traffic, nothing changed).
    let audit_before = cluster.apiext_audit().len() + cluster.kube_audit().len();
    let reconciles_before = operator
        .metric("gemini_proxy_operator_reconciles_total")
        .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let writes = cluster.apiext_audit().len() + cluster.kube_audit().len() - audit_before;
    let settled = operator
        .metric("gemini_proxy_operator_reconciles_total")
        .await
        - reconciles_before;
    let rss_settled = operator.rss_kib();

    println!(
        "scale: {} groups created in {created:?}; all Ready after {all_ready:?}",
        GROUPS + 1
    );
    println!(
        "scale: {reconciles} reconciles until all Ready, {requests} API writes by the operator \
         (finalizers, statuses, Events), {:.2} per reconcile; reads come from its two watches",
        requests as f64 / reconciles.max(1.0)
    );
    println!(
        "scale: 1,000-key group: status {size} bytes ({} entries listed, {} omitted), object ~{object} bytes",
        st.key_statuses.len(),
        st.key_statuses_omitted
    );
    println!(
        "scale: operator RSS idle {} MiB, busy {} MiB, settled {} MiB",
        rss_idle / 1024,
        rss_busy / 1024,
        rss_settled / 1024
    );
    println!("scale: settled 30 s: {settled} reconciles, {writes} API writes");

    assert_eq!(st.keys.total as usize, KEYS);
    assert_eq!(st.key_statuses.len(), 100);
    assert_eq!(st.key_statuses_omitted as usize, KEYS - 100);
    assert!(size < 64 * 1024, "a 1,000-key status of {size} bytes");
    // About one pass per group per 15 s (±20 % jitter): no storm.
    let expected = (GROUPS + 1) as f64 * 30.0 / 15.0;
    assert!(
        settled < expected * 1.5,
        "{settled} reconciles in 30 s (expected about {expected})"
    );
    assert!(
        writes < 20,
        "{writes} API writes in 30 s with nothing changing"
    );
}
