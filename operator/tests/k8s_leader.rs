//! Leader election on a real Lease: two operator replicas, the leader SIGKILLed, the other takes
//! the Lease and reconciles a new group within a measured bound, and no Event is published twice
//! in the handover.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gemini_proxy_tests::redis::RedisServer;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;
use support::k8s::{
    Cluster, OperatorProcess, Who, events_of, random_suffix, store_env, wait_for, wait_ready,
};

#[tokio::test]
async fn a_standby_replica_takes_over_when_the_leader_is_killed() {
    let cluster = Cluster::get();
    cluster.install_crd().await;
    let ns = cluster.namespace("leader").await;
    cluster
        .apply_chart_rbac(&[&format!("operator.watchNamespace={ns}")])
        .await;
    let redis = RedisServer::start();
    let store = store_env(redis.url());
    let lease = format!("lease-{}", random_suffix());
    let args = [
        "--namespace",
        &ns,
        "--leader-election",
        "--lease-name",
        &lease,
        "--lease-namespace",
        "gemini-proxy",
        "--lease-seconds",
        "6",
    ];
    let mut a = OperatorProcess::start(&cluster, Who::Operator, "op-a", &store, &args).await;
    let leases: Api<Lease> = Api::namespaced(cluster.admin().await, "gemini-proxy");
    let first = wait_for(Duration::from_secs(30), "a leader", || async {
        leases.get(&lease).await.ok()?.spec?.holder_identity
    })
    .await;
    assert_eq!(first, "op-a");
    let mut b = OperatorProcess::start(&cluster, Who::Operator, "op-b", &store, &args).await;
    for op in [&a, &b] {
        wait_for(Duration::from_secs(20), "both replicas ready", || async {
            (op.readyz().await == 200).then_some(())
        })
        .await;
    }
    cluster
        .put_secret(
            &ns,
            "keys",
            &[("k1", "fake-leader-1"), ("k2", "fake-leader-2")],
            true,
        )
        .await;
    cluster
        .create_group(
            &ns,
            "before",
            json!({"keys": [{"secret": "keys", "entry": "k1"}, {"secret": "keys", "entry": "k2"}],
                   "access": {"mode": "Open"}}),
        )
        .await;
    wait_ready(&cluster, &ns, "before").await;
    assert!(
        !b.logs().contains("leading"),
        "the standby reconciled while op-a led"
    );

    // The leader dies without releasing the Lease; a group is created at that moment.
    a.kill().await;
    let killed = Instant::now();
    cluster
        .create_group(
            &ns,
            "after",
            json!({"keys": [{"secret": "keys", "entry": "k1"}], "access": {"mode": "Open"}}),
        )
        .await;
    wait_ready(&cluster, &ns, "after").await;
    let took = killed.elapsed();
    println!("handover: the new group was Ready {took:?} after the leader was killed (lease 6 s)");
    assert!(took < Duration::from_secs(20), "handover took {took:?}");
    let holder = leases
        .get(&lease)
        .await
        .ok()
        .and_then(|l| l.spec?.holder_identity);
    assert_eq!(holder.as_deref(), Some("op-b"));
    assert!(b.running());

    // The new leader went over the old group again: no Event twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for group in ["before", "after"] {
        let events = events_of(&cluster, &ns, group).await;
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        for e in &events {
            *seen
                .entry((
                    e.reason.clone().unwrap_or_default(),
                    e.note.clone().unwrap_or_default(),
                ))
                .or_default() += 1;
            assert!(e.series.is_none(), "{e:?}");
        }
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "{group}: Events published twice: {twice:?}"
        );
        let added = events
            .iter()
            .filter(|e| e.reason.as_deref() == Some("KeyAdded"))
            .count();
        assert_eq!(
            added,
            if group == "before" { 2 } else { 1 },
            "{group}: {events:?}"
        );
    }
}
