//! The store contract, checked the same way against every store: in-memory, and Redis
//! standalone, Sentinel and Cluster (real servers, a random key prefix per test).

use std::sync::Arc;
use std::time::Duration;

use gemini_proxy_tests::redis::{RedisCluster, RedisSentinel, RedisServer, random_prefix};
use keystore::clock::now_ms;
use keystore::{AuditKind, Binding, RateDelta, RateWindow, UsageCounts};
use keystore::{
    Cooldown, CooldownReason, EncryptionKey, GroupSnapshot, HealthReport, InvalidReason, KeyHealth,
    KeyId, KeyStore, MemoryStore, RedisConfig, RedisStore, RedisTarget, Secret, StoreEvent,
    Transition, UsageDelta, UsageWindow,
};

const KEYS: [&str; 3] = [
    "fake-contract-key-aaaa1111",
    "fake-contract-key-bbbb2222",
    "fake-contract-key-cccc3333",
];

fn group(name: &str) -> GroupSnapshot {
    let mut g = GroupSnapshot::for_test(name, &KEYS);
    g.keys[0].project = Some("proj-1".into());
    g.upstream.egress_proxy = Some(Secret::new("http://user:fake-egress-pass@127.0.0.1:1"));
    g
}

async fn next_event(rx: &mut tokio::sync::broadcast::Receiver<StoreEvent>) -> StoreEvent {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .expect("an event within 3 s")
            .expect("event channel open");
        if ev != StoreEvent::Resync {
            return ev;
        }
    }
}

/// Everything a store promises.
async fn contract(store: Arc<dyn KeyStore>) {
    let mut events = store.subscribe();
    let g = group("team-a/keys");
    let ids: Vec<KeyId> = g.keys.iter().map(|k| k.id.clone()).collect();

    // Versioned, idempotent publish; the snapshot comes back whole.
    assert_eq!(store.publish_group(g.clone()).await.unwrap(), 1);
    assert_eq!(
        next_event(&mut events).await,
        StoreEvent::GroupChanged {
            name: "team-a/keys".into(),
            version: 1
        }
    );
    assert_eq!(store.publish_group(g.clone()).await.unwrap(), 1);
    let back = store.groups().await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].version, 1);
    assert_eq!(back[0].fingerprint(), g.fingerprint());
    assert_eq!(back[0].keys[1].secret.expose(), KEYS[1]);
    assert_eq!(back[0].keys[0].project.as_deref(), Some("proj-1"));
    assert_eq!(
        back[0].upstream.egress_proxy.as_ref().map(Secret::expose),
        Some("http://user:fake-egress-pass@127.0.0.1:1")
    );

    // Transitions: applied, merged (later cooldown wins), announced with their origin.
    let until = now_ms() + 60_000;
    let cool = Transition::Cool(Cooldown {
        until_ms: until,
        reason: CooldownReason::PerDayQuota,
        model: Some("gemini-2.5-pro".into()),
    });
    let changed = store
        .transition("team-a/keys", &ids[..2], &cool, "pod-a")
        .await
        .unwrap();
    assert_eq!(changed.len(), 2);
    match next_event(&mut events).await {
        StoreEvent::KeysChanged {
            group,
            origin,
            changes,
        } => {
            assert_eq!((group.as_str(), origin.as_str()), ("team-a/keys", "pod-a"));
            assert_eq!(changes.len(), 2);
            assert_eq!(changes[0].1.cooldowns[0].until_ms, until);
            assert_eq!(
                changes[0].1.cooldowns[0].model.as_deref(),
                Some("gemini-2.5-pro")
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    let earlier = Transition::Cool(Cooldown {
        until_ms: until - 1000,
        reason: CooldownReason::PerMinuteQuota,
        model: Some("gemini-2.5-pro".into()),
    });
    assert!(
        store
            .transition("team-a/keys", &ids[..1], &earlier, "pod-b")
            .await
            .unwrap()
            .is_empty()
    );
    let keywide = Transition::Cool(Cooldown {
        until_ms: until + 5,
        reason: CooldownReason::RateLimited,
        model: None,
    });
    store
        .transition("team-a/keys", &ids[..1], &keywide, "pod-b")
        .await
        .unwrap();
    let retire = Transition::Retire {
        reason: InvalidReason::Leaked,
    };
    store
        .transition("team-a/keys", &ids[2..], &retire, "pod-b")
        .await
        .unwrap();
    let statuses = store.key_statuses("team-a/keys").await.unwrap();
    assert_eq!(statuses[&ids[0]].cooldowns.len(), 2);
    assert_eq!(statuses[&ids[1]].cooldowns.len(), 1);
    assert_eq!(statuses[&ids[2]].invalid, Some(InvalidReason::Leaked));
    assert!(statuses[&ids[2]].updated_ms > 0);
    let recovered = store
        .transition("team-a/keys", &ids[2..], &Transition::Recover, "op")
        .await
        .unwrap();
    assert_eq!(recovered[0].1.invalid, None);

    // A key that leaves the group takes its state along; the others keep theirs.
    let mut smaller = g.clone();
    smaller.keys.remove(1);
    assert_eq!(store.publish_group(smaller).await.unwrap(), 2);
    let statuses = store.key_statuses("team-a/keys").await.unwrap();
    assert!(statuses.contains_key(&ids[0]));
    assert!(!statuses.contains_key(&ids[1]));

    // Health reports expire.
    let report = |proxy: &str| HealthReport {
        proxy_id: proxy.into(),
        group: "team-a/keys".into(),
        at_ms: now_ms(),
        keys: vec![KeyHealth {
            id: ids[0].clone(),
            score: 0.75,
            requests: 9,
            failures: 2,
            last_error: Some("timeout".into()),
        }],
    };
    store
        .report_health(report("p1"), Duration::from_secs(30))
        .await
        .unwrap();
    store
        .report_health(report("p2"), Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let reports = store.health_reports("team-a/keys").await.unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0], report("p1").clone_with_at(reports[0].at_ms));

    // Heartbeats.
    store
        .heartbeat("p1", Duration::from_secs(30))
        .await
        .unwrap();
    store
        .heartbeat("p2", Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.live_proxies().await.unwrap(), vec!["p1".to_owned()]);

    // Usage counters per key and scope, per minute and Pacific day.
    let at = now_ms();
    let delta = |key: &KeyId, scope: &str, requests, tokens| UsageDelta {
        group: "team-a/keys".into(),
        key: key.clone(),
        scope: scope.into(),
        requests,
        tokens,
        at_ms: at,
    };
    store
        .record_usage(vec![
            delta(&ids[0], "proj-1", 2, 100),
            delta(&ids[2], "proj-1", 1, 50),
        ])
        .await
        .unwrap();
    store
        .record_usage(vec![delta(&ids[0], "proj-1", 1, 0)])
        .await
        .unwrap();
    for w in [UsageWindow::minute_of(at), UsageWindow::day_of(at)] {
        let u = store.usage("team-a/keys", &w).await.unwrap();
        assert_eq!(u.keys[&ids[0]].requests, 3, "{w:?}");
        assert_eq!(u.keys[&ids[0]].tokens, 100, "{w:?}");
        assert_eq!(u.scopes["proj-1"].requests, 4, "{w:?}");
        assert_eq!(u.scopes["proj-1"].tokens, 150, "{w:?}");
    }
    // Summed over windows (the operator's last hour, one round trip): an empty and an earlier
    // minute add nothing; the same minute twice counts twice.
    store
        .record_usage(vec![delta(&ids[1], "proj-2", 5, 10)])
        .await
        .unwrap();
    let minute = UsageWindow::minute_of(at);
    let windows = [
        minute.clone(),
        UsageWindow::minute_of(at.saturating_sub(3_600_000)),
        minute.clone(),
    ];
    let sum = store.usage_sum("team-a/keys", &windows).await.unwrap();
    assert_eq!(sum.keys[&ids[0]].requests, 6);
    assert_eq!(sum.keys[&ids[1]].requests, 10);
    assert_eq!(sum.keys[&ids[1]].tokens, 20);
    assert_eq!(sum.scopes["proj-1"].requests, 8);
    assert!(
        store
            .usage_sum("team-a/keys", &[])
            .await
            .unwrap()
            .keys
            .is_empty()
    );

    // Per-proxy running totals: each write replaces that proxy's, readers add the proxies.
    let totals = |req: u64, tok: u64| {
        let mut c = UsageCounts::default();
        c.add(&delta(&ids[1], "proj-3", req, tok));
        c
    };
    let day_w = UsageWindow::day_of(at);
    for (proxy, req) in [("px-1", 2), ("px-2", 3), ("px-1", 7)] {
        store
            .put_usage_totals(
                "team-a/keys",
                proxy,
                vec![
                    (minute.clone(), totals(req, req * 10)),
                    (day_w.clone(), totals(req, 0)),
                ],
            )
            .await
            .unwrap();
    }
    let u = store.usage("team-a/keys", &minute).await.unwrap();
    assert_eq!(
        u.keys[&ids[1]].requests, 15,
        "5 counted singly, px-1's 7 (which replaced its 2) and px-2's 3"
    );
    assert_eq!(u.keys[&ids[1]].tokens, 110);
    assert_eq!(u.scopes["proj-3"].requests, 10);
    assert_eq!(u.keys[&ids[0]].requests, 3, "single counters still count");
    let d = store.usage("team-a/keys", &day_w).await.unwrap();
    assert_eq!(d.keys[&ids[1]].requests, 15);

    // Scheduling counters: each proxy adds its share and reads the others'.
    let slot = RateWindow::slot_of(at);
    let day = RateWindow::Day(keystore::pacific::pacific_date(at));
    let rate = |name: &str, window: &RateWindow, requests, tokens| RateDelta {
        name: name.into(),
        window: window.clone(),
        requests,
        tokens,
    };
    store
        .add_rates(
            "team-a/keys",
            "p1",
            vec![
                rate("q|proj-1|gemini-2.5-pro", &slot, 2, 300),
                rate("q|proj-1|gemini-2.5-pro", &day, 2, 0),
            ],
        )
        .await
        .unwrap();
    store
        .add_rates(
            "team-a/keys",
            "p2",
            vec![
                rate("q|proj-1|gemini-2.5-pro", &slot, 1, 0),
                rate("c|alice", &slot, 1, 20),
            ],
        )
        .await
        .unwrap();
    let windows = [slot.clone(), day.clone(), RateWindow::Slot(1)];
    let others = store.rates("team-a/keys", &windows, "p2").await.unwrap();
    assert_eq!(others[&slot]["q|proj-1|gemini-2.5-pro"].requests, 2);
    assert_eq!(others[&slot]["q|proj-1|gemini-2.5-pro"].tokens, 300);
    assert!(!others[&slot].contains_key("c|alice"));
    assert_eq!(others[&day]["q|proj-1|gemini-2.5-pro"].requests, 2);
    let others = store.rates("team-a/keys", &windows, "p1").await.unwrap();
    assert_eq!(others[&slot]["q|proj-1|gemini-2.5-pro"].requests, 1);
    assert_eq!(others[&slot]["c|alice"].tokens, 20);
    assert!(
        others
            .get(&RateWindow::Slot(1))
            .is_none_or(|m| m.is_empty())
    );

    // Bindings of project-bound resources expire with them.
    let resource = format!("files/contract-{}", now_ms());
    let binding = Binding {
        group: "team-a/keys".into(),
        key: ids[0].clone(),
        client: Some(keystore::TokenDigest::of("fake-client-token")),
    };
    assert_eq!(store.bound(&resource).await.unwrap(), None);
    store
        .bind(&resource, &binding, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(store.bound(&resource).await.unwrap(), Some(binding.clone()));
    // An ended binding is announced, so that no proxy honours it from its cache.
    let mut events = store.subscribe();
    store.unbind(&resource).await.unwrap();
    assert_eq!(store.bound(&resource).await.unwrap(), None);
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(StoreEvent::Unbound { resource: r }) = events.recv().await
                && r == resource
            {
                return;
            }
        }
    })
    .await
    .expect("no Unbound event");
    store
        .bind("upload:short", &binding, Duration::from_millis(20))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(store.bound("upload:short").await.unwrap(), None);

    // The audit trail: publishes record added and removed keys; others append the rest.
    let cooled = keystore::AuditEvent::of_transition(
        "team-a/keys",
        &ids[0],
        &keywide,
        &statuses[&ids[0]],
        "pod-b",
        now_ms(),
    );
    store.append_audit(vec![cooled.clone()]).await.unwrap();
    let trail = store.audit("team-a/keys", "", 100).await.unwrap();
    let kinds: Vec<AuditKind> = trail.iter().map(|(_, e)| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            AuditKind::Added,
            AuditKind::Added,
            AuditKind::Added,
            AuditKind::Removed,
            AuditKind::Cooled
        ]
    );
    assert_eq!(trail[3].1.key, ids[1]);
    assert_eq!(trail[4].1, cooled);
    assert_eq!(cooled.until_ms, Some(until + 5));
    let (cursor, _) = &trail[2];
    let rest = store.audit("team-a/keys", cursor, 100).await.unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(
        store.audit("team-a/keys", cursor, 1).await.unwrap().len(),
        1
    );
    let last = &trail[4].0;
    assert!(
        store
            .audit("team-a/keys", last, 100)
            .await
            .unwrap()
            .is_empty()
    );

    // Removal, recorded in the trail.
    store.remove_group("team-a/keys").await.unwrap();
    assert!(store.groups().await.unwrap().is_empty());
    assert!(store.key_statuses("team-a/keys").await.unwrap().is_empty());
    let removed = store.audit("team-a/keys", last, 100).await.unwrap();
    assert_eq!(removed.len(), 2);
    assert!(removed.iter().all(|(_, e)| e.kind == AuditKind::Removed));
}

trait WithAt {
    fn clone_with_at(&self, at: u64) -> Self;
}

impl WithAt for HealthReport {
    fn clone_with_at(&self, at: u64) -> Self {
        let mut r = self.clone();
        r.at_ms = at;
        r
    }
}

fn redis_config(target: RedisTarget) -> RedisConfig {
    RedisConfig {
        target,
        key_prefix: random_prefix(),
        encryption_key: Some(
            EncryptionKey::from_base64(&EncryptionKey::generate_base64()).unwrap(),
        ),
    }
}

/// Waits until the store's pub/sub link is up, so the first events are not missed.
async fn subscribed(store: &RedisStore) {
    for _ in 0..100 {
        if store.subscribed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("pub/sub never connected");
}

fn assert_no_clear_secrets(dump: &[(String, String)]) {
    assert!(!dump.is_empty(), "nothing in Redis?");
    for (k, v) in dump {
        for secret in KEYS.iter().chain(&["fake-egress-pass"]) {
            assert!(
                !k.contains(secret) && !v.contains(secret),
                "{secret} in clear at {k}: {v}"
            );
        }
    }
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    contract(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn redis_standalone_keeps_the_contract() {
    let server = RedisServer::start();
    let store = RedisStore::new(redis_config(RedisTarget::Standalone {
        url: Secret::new(server.url()),
    }))
    .unwrap();
    subscribed(&store).await;
    contract(store.clone()).await;
    // Leave a group behind and scan everything: no key in clear anywhere.
    store.publish_group(group("left")).await.unwrap();
    assert_no_clear_secrets(&server.dump());
}

#[tokio::test]
async fn redis_sentinel_keeps_the_contract() {
    let s = RedisSentinel::start();
    let store = RedisStore::new(redis_config(RedisTarget::Sentinel {
        master: s.name.clone(),
        urls: s.urls().into_iter().map(Secret::new).collect(),
    }))
    .unwrap();
    subscribed(&store).await;
    contract(store.clone()).await;
}

/// Sentinel and its master want a password: the store reaches the master with it (data and
/// pub/sub), not only the sentinels.
#[tokio::test]
async fn redis_sentinel_with_a_password_keeps_the_contract() {
    let s = RedisSentinel::start_with_password("fake-redis-pass-1234");
    let store = RedisStore::new(redis_config(RedisTarget::Sentinel {
        master: s.name.clone(),
        urls: s
            .urls()
            .into_iter()
            .map(|u| Secret::new(u.replace("redis://", "redis://:fake-redis-pass-1234@")))
            .collect(),
    }))
    .unwrap();
    subscribed(&store).await;
    contract(store.clone()).await;
}

#[tokio::test]
async fn redis_cluster_keeps_the_contract() {
    let cluster = RedisCluster::start();
    let store = RedisStore::new(redis_config(RedisTarget::Cluster {
        urls: cluster.urls().into_iter().map(Secret::new).collect(),
    }))
    .unwrap();
    subscribed(&store).await;
    contract(store.clone()).await;
    store.publish_group(group("left")).await.unwrap();
    assert_no_clear_secrets(&cluster.dump());
}

#[tokio::test]
async fn another_encryption_key_cannot_read_the_keys() {
    let server = RedisServer::start();
    let mut cfg = redis_config(RedisTarget::Standalone {
        url: Secret::new(server.url()),
    });
    let a = RedisStore::new(cfg.clone()).unwrap();
    a.publish_group(group("g")).await.unwrap();
    cfg.encryption_key =
        Some(EncryptionKey::from_base64(&EncryptionKey::generate_base64()).unwrap());
    let b = RedisStore::new(cfg.clone()).unwrap();
    let err = b.groups().await.unwrap_err().to_string();
    assert!(err.contains("does not authenticate"), "{err}");
    assert!(!err.contains("fake-contract"), "{err}");
    cfg.encryption_key = None;
    let plain = RedisStore::new(cfg).unwrap();
    assert!(plain.groups().await.is_err());
}

/// Someone who can write to Redis but has no state key: whatever they put in a group's
/// snapshot (a forged one in clear, another group's sealed one, damaged bytes) is refused and
/// named as refused; the other groups are served; the next publish repairs it.
#[tokio::test]
async fn a_redis_writer_cannot_forge_or_move_a_snapshot() {
    let server = RedisServer::start();
    let cfg = redis_config(RedisTarget::Standalone {
        url: Secret::new(server.url()),
    });
    let p = cfg.key_prefix.clone();
    let store = RedisStore::new(cfg.clone()).unwrap();
    store.publish_group(group("team/a")).await.unwrap();
    store.publish_group(group("team/b")).await.unwrap();
    store.publish_group(group("team/c")).await.unwrap();
    let hash = |g: &str| format!("{p}{{g:{g}}}:group");
    // 1. A forged snapshot in clear: the upstream pointed at the attacker, keys as `plain.`.
    let forged = serde_json::json!({
        "name": "team/a",
        "upstream": {"url": "https://attacker.example", "timeoutSecs": 600},
        "keys": [{"id": "k-x", "secret": "plain.fake-forged-key-zzzz", "weight": 1, "source": "x"}],
        "rotation": "RoundRobin", "accessMode": "Open", "clients": [], "maxAttempts": 3
    })
    .to_string();
    server.cli(&["HSET", &hash("team/a"), "data", &forged]);
    // 2. Group b's (valid, sealed) snapshot copied over group c's.
    let b_data = server.cli(&["HGET", &hash("team/b"), "data"]);
    server.cli(&["HSET", &hash("team/c"), "data", b_data.trim()]);
    let groups = store.groups().await.unwrap();
    let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["team/b"], "only the untouched group is served");
    let refused = store.refused_groups();
    let refused_names: Vec<&str> = refused.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(refused_names, ["team/a", "team/c"]);
    assert!(refused[0].1.contains("not sealed"), "{refused:?}");
    assert!(
        refused[1].1.contains("does not authenticate"),
        "{refused:?}"
    );
    // 3. Damaged: one character of the sealed value changed.
    let mut damaged = b_data.trim().to_owned();
    let last = damaged.pop().unwrap();
    damaged.push(if last == 'A' { 'B' } else { 'A' });
    server.cli(&["HSET", &hash("team/b"), "data", &damaged]);
    assert!(store.groups().await.is_err(), "no group left to serve");
    // The operator's next publish of the same snapshots rewrites them, though the
    // fingerprints stored beside the forged values still match.
    for n in ["team/a", "team/b", "team/c"] {
        store.publish_group(group(n)).await.unwrap();
    }
    assert_eq!(store.groups().await.unwrap().len(), 3);
    assert!(store.refused_groups().is_empty());
    assert_eq!(
        store.groups().await.unwrap()[0].upstream.url,
        keystore::snapshot::DEFAULT_UPSTREAM,
        "the real upstream is back"
    );
}

/// A proxy given one namespace's derived key reads that namespace's groups and no other.
#[tokio::test]
async fn a_namespace_key_reads_only_its_namespace() {
    let server = RedisServer::start();
    let cfg = redis_config(RedisTarget::Standalone {
        url: Secret::new(server.url()),
    });
    let master = cfg.encryption_key.clone().unwrap();
    let operator = RedisStore::new(cfg.clone()).unwrap();
    operator.publish_group(group("research/g")).await.unwrap();
    operator.publish_group(group("billing/g")).await.unwrap();
    let derived = |ns: &str, claimed: &str| {
        EncryptionKey::from_base64(&master.derive_base64(ns).unwrap())
            .unwrap()
            .scoped_to(claimed)
            .unwrap()
    };
    let mut sidecar_cfg = cfg.clone();
    sidecar_cfg.encryption_key = Some(derived("research", "research"));
    let sidecar = RedisStore::new(sidecar_cfg.clone()).unwrap();
    let names: Vec<String> = sidecar
        .groups()
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(names, ["research/g"]);
    assert!(
        sidecar.refused_groups().is_empty(),
        "others are skipped, not refused"
    );
    // Research's key, claimed to be billing's, opens nothing.
    sidecar_cfg.encryption_key = Some(derived("research", "billing"));
    let liar = RedisStore::new(sidecar_cfg).unwrap();
    let err = liar.groups().await.unwrap_err().to_string();
    assert!(err.contains("does not authenticate"), "{err}");
    // The sealed values do not reveal which namespace key made them.
    assert_no_clear_secrets(&server.dump());
}

#[tokio::test]
async fn redis_down_is_an_error_not_a_hang_and_recovers() {
    let mut server = RedisServer::start();
    let store = RedisStore::new(redis_config(RedisTarget::Standalone {
        url: Secret::new(server.url()),
    }))
    .unwrap();
    store.publish_group(group("g")).await.unwrap();
    subscribed(&store).await;
    let mut events = store.subscribe();
    server.kill();
    let started = std::time::Instant::now();
    assert!(store.groups().await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    server.restart();
    // The pub/sub link comes back and says so.
    let ev = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(StoreEvent::Resync) = events.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(ev.is_ok(), "no Resync after Redis came back");
    // Writes work again (the restarted server is empty).
    assert_eq!(store.publish_group(group("g")).await.unwrap(), 1);
}
