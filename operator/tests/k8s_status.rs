//! The status on a real API server: calm under steady traffic (status patches counted in the
//! server's own audit log), and honest when the store cannot be reached.

mod support;

use std::time::{Duration, Instant};

use gemini_proxy_tests::{Behaviour, Client, MockGemini, ProxyProcess};
use http::Method;
use serde_json::json;
use support::k8s::{
    Cluster, Setup, condition, events_of, status_of, wait_for, wait_ready, workspace_bin,
};

const MODEL: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const OPERATOR: &str = "system:serviceaccount:gemini-proxy:gemini-proxy-operator";

/// Writes by the operator to group `name` in `ns`, from the 1.36 server's audit log:
/// (status patches, other writes).
fn writes(cluster: &Cluster, ns: &str, name: &str) -> (usize, usize) {
    let mut status = 0;
    let mut other = 0;
    for e in cluster.apiext_audit() {
        let o = &e["objectRef"];
        if e["user"]["username"] != OPERATOR
            || o["resource"] != "geminikeygroups"
            || o["namespace"] != ns
            || o["name"] != name
        {
            continue;
        }
        if o["subresource"] == "status" {
            status += 1;
        } else {
            other += 1;
        }
    }
    (status, other)
}

#[tokio::test]
async fn status_patches_stay_calm_under_steady_traffic() {
    let setup = Setup::new("calm").await;
    let (cluster, ns, store) = (&setup.cluster, &setup.ns, &setup.store);
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    cluster
        .put_secret(
            ns,
            "keys",
            &[
                ("a", "fake-calm-a"),
                ("b", "fake-calm-b"),
                ("c", "fake-calm-c"),
            ],
            true,
        )
        .await;
    let _operator = setup.operator("op-calm").await;
    cluster
        .create_group(
            ns,
            "calm",
            json!({"keys": [{"secret": "keys", "entry": "a"}, {"secret": "keys", "entry": "b"},
                            {"secret": "keys", "entry": "c"}],
                   "upstream": {"url": mock.url()}, "rotation": {"strategy": "LeastLoaded"},
                   "access": {"mode": "Open"}}),
        )
        .await;
    setup.ready("calm").await;
    let proxy = ProxyProcess::spawn(
        workspace_bin("gemini-proxy").to_str().expect("path"),
        &["--default-group", &format!("{ns}/calm")],
        &[
            ("GEMINI_PROXY_REDIS_URL", &store.redis_url),
            ("GEMINI_PROXY_REDIS_KEY_PREFIX", &store.prefix),
            ("GEMINI_PROXY_STATE_KEY", &store.state_key),
        ],
    )
    .await;
    let (status_before, other_before) = writes(cluster, ns, "calm");
    // 5 requests a second for 60 s.
    let http = Client::new();
    let url = format!("{}{MODEL}", proxy.url());
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(60) {
        tick.tick().await;
        let r = http.call(Method::POST, &url, &[], "{}").await;
        assert_eq!(r.status, 200, "{}", r.text());
        sent += 1;
    }
    let (status_after, other_after) = writes(cluster, ns, "calm");
    let patches = status_after - status_before;
    println!(
        "{sent} requests in 60 s: {patches} status patches, {} other writes",
        other_after - other_before
    );
    assert!(
        patches <= 5,
        "{patches} status patches in 60 s (at most about one per 15 s)"
    );
    assert!(patches >= 1, "the status never showed the traffic");
    assert_eq!(
        other_after - other_before,
        0,
        "the group itself was written under traffic"
    );
    let st = status_of(cluster, ns, "calm").await.expect("status");
    let served: u64 = st.key_statuses.iter().map(|k| k.requests_last_hour).sum();
    assert!(served > 0, "requests in the last hour are reported: {st:?}");
    assert_eq!(st.proxies, 1);
}

#[tokio::test]
async fn an_unreachable_store_shows_in_the_status_and_an_event() {
    let setup = Setup::new("storeless").await;
    let (cluster, ns) = (&setup.cluster, &setup.ns);
    cluster
        .put_secret(ns, "keys", &[("a", "fake-storeless")], true)
        .await;
    let _operator = setup.operator("op-storeless").await;
    cluster
        .create_group(
            ns,
            "g",
            json!({"keys": [{"secret": "keys", "entry": "a"}], "access": {"mode": "Open"}}),
        )
        .await;
    setup.ready("g").await;
    let Setup {
        cluster,
        ns,
        mut redis,
        ..
    } = setup;

    redis.kill();
    let st = wait_for(
        Duration::from_secs(40),
        "Ready=False for the store",
        || async {
            let st = status_of(&cluster, &ns, "g").await?;
            (condition(&st, "Ready").map(|c| (c.0, c.1))
                == Some(("False".into(), "StoreUnavailable".into())))
            .then_some(st)
        },
    )
    .await;
    assert_eq!(
        condition(&st, "StoreReachable").map(|c| c.0),
        Some("False".into())
    );
    assert_eq!(st.keys.total, 1, "what was known stays");
    wait_for(
        Duration::from_secs(10),
        "a StoreUnavailable Warning",
        || async {
            events_of(&cluster, &ns, "g")
                .await
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("StoreUnavailable")
                        && e.type_.as_deref() == Some("Warning")
                })
                .then_some(())
        },
    )
    .await;

    // Redis returns (empty): the group is written again and Ready again.
    redis.restart();
    let back = Instant::now();
    wait_ready(&cluster, &ns, "g").await;
    println!("Ready again {:?} after the store returned", back.elapsed());
    let st = status_of(&cluster, &ns, "g").await.expect("status");
    assert_eq!(
        condition(&st, "StoreReachable").map(|c| c.0),
        Some("True".into())
    );
    assert!(
        redis
            .dump()
            .iter()
            .any(|(k, _)| k.ends_with(&format!("{{g:{ns}/g}}:group"))),
        "the group is back in the store"
    );
    let events = events_of(&cluster, &ns, "g").await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("StoreReachable")),
        "{events:?}"
    );
    let down = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("StoreUnavailable"))
        .count();
    assert_eq!(down, 1, "one Warning per outage: {events:?}");
}
