//! Many proxies, one Redis: they behave as one. Real `redis-server` processes, the real binary,
//! a random key prefix per test.

use std::time::{Duration, Instant};

mod support;

use gemini_proxy_tests::redis::{RedisCluster, RedisServer, random_prefix};
use gemini_proxy_tests::{Behaviour, Client, MockGemini, ProxyProcess, Quota};
use http::Method;
use keystore::{
    AuditKind, EncryptionKey, GroupSnapshot, KeyId, KeyStore, RedisConfig, RedisStore, RedisTarget,
    Secret,
};
use support::shared::{BIN, Shared};

const MODEL_PATH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";

async fn metrics(p: &ProxyProcess) -> String {
    Client::new()
        .call(Method::GET, &format!("{}/metrics", p.admin_url()), &[], "")
        .await
        .text()
}

fn state_line(group: &str, key: &str, state: &str) -> String {
    format!(
        "gemini_proxy_key_state{{group=\"{group}\",key_id=\"{}\",state=\"{state}\"}} 1",
        KeyId::of(key)
    )
}

/// Polls `p`'s metrics until `line` shows, up to `limit`; returns how long it took.
async fn until_metric(p: &ProxyProcess, line: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if metrics(p).await.contains(line) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{line} not seen within {limit:?}:\n{}",
            metrics(p).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn generate(p: &ProxyProcess) -> u16 {
    Client::new()
        .call(Method::POST, &format!("{}{MODEL_PATH}", p.url()), &[], "{}")
        .await
        .status
        .as_u16()
}

#[tokio::test]
async fn a_429_seen_by_one_proxy_makes_the_other_skip_the_key_within_a_second() {
    let redis = RedisServer::start();
    let shared = Shared::new(&redis);
    let mock = MockGemini::start().await;
    mock.key(
        "rl-key",
        Behaviour::Quota {
            quota: Quota::RequestsPerMinute,
            retry_delay: Some("30s"),
        },
    )
    .key("ok-key", Behaviour::Ok);
    let keys = ["rl-key", "ok-key"];
    let (p1, p2) = tokio::join!(shared.proxy(&mock, &keys), shared.proxy(&mock, &keys));
    // Drive p1 until it has met the 429.
    while mock.count("rl-key") == 0 {
        assert_eq!(generate(&p1).await, 200);
    }
    let took = until_metric(
        &p2,
        &state_line("shared", "rl-key", "CoolingDown"),
        Duration::from_secs(1),
    )
    .await;
    println!("p2 learned of the cooldown after {took:?}");
    for _ in 0..6 {
        assert_eq!(generate(&p2).await, 200);
    }
    assert_eq!(
        mock.count("rl-key"),
        1,
        "p2 used a key p1 had seen rate limited"
    );
}

#[tokio::test]
async fn a_retired_key_stays_retired_across_a_restart_of_both_proxies() {
    let redis = RedisServer::start();
    let shared = Shared::new(&redis);
    let mock = MockGemini::start().await;
    mock.key("dead-key", Behaviour::Invalid)
        .key("ok-key", Behaviour::Ok);
    let keys = ["dead-key", "ok-key"];
    let (mut p1, mut p2) = tokio::join!(shared.proxy(&mock, &keys), shared.proxy(&mock, &keys));
    while mock.count("dead-key") == 0 {
        assert_eq!(generate(&p1).await, 200);
    }
    until_metric(
        &p2,
        &state_line("shared", "dead-key", "Invalid"),
        Duration::from_secs(1),
    )
    .await;
    for p in [&mut p1, &mut p2] {
        p.terminate();
        assert!(
            p.wait_exit(Duration::from_secs(10))
                .await
                .expect("exit")
                .success()
        );
    }
    let (p1, p2) = tokio::join!(shared.proxy(&mock, &keys), shared.proxy(&mock, &keys));
    for p in [&p1, &p2] {
        assert!(
            metrics(p)
                .await
                .contains(&state_line("shared", "dead-key", "Invalid"))
        );
        for _ in 0..4 {
            assert_eq!(generate(p).await, 200);
        }
    }
    assert_eq!(mock.count("dead-key"), 1);

    // The audit trail: both keys added once (four proxies published the same config), the
    // retirement once, by the proxy that saw it, with its reason; no key value anywhere.
    let trail = shared.store().audit("shared", "", 100).await.unwrap();
    let entries: Vec<(AuditKind, KeyId)> =
        trail.iter().map(|(_, e)| (e.kind, e.key.clone())).collect();
    assert_eq!(
        entries,
        vec![
            (AuditKind::Added, KeyId::of("dead-key")),
            (AuditKind::Added, KeyId::of("ok-key")),
            (AuditKind::Retired, KeyId::of("dead-key")),
        ]
    );
    let retired = &trail[2].1;
    assert_eq!(retired.reason.as_deref(), Some("ApiKeyInvalid"));
    assert!(
        !retired.origin.is_empty() && retired.origin != "publish",
        "the proxy's id: {}",
        retired.origin
    );
    let text = format!("{trail:?}");
    assert!(!text.contains("dead-key") && !text.contains("ok-key"));
}

#[tokio::test]
async fn redis_outage_fails_no_request_and_state_reconverges_after() {
    let mut redis = RedisServer::start();
    let shared = Shared::new(&redis);
    let mock = MockGemini::start().await;
    mock.key("k1", Behaviour::Ok).key("k2", Behaviour::Ok);
    let p = shared.proxy(&mock, &["k1", "k2"]).await;
    let url = format!("{}{MODEL_PATH}", p.url());
    // Load from four clients while Redis dies and comes back.
    let load = |n: usize| {
        let url = url.clone();
        tokio::spawn(async move {
            let c = Client::new();
            let mut codes = Vec::new();
            for _ in 0..n {
                codes.push(c.call(Method::POST, &url, &[], "{}").await.status.as_u16());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            codes
        })
    };
    let workers: Vec<_> = (0..4).map(|_| load(150)).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.kill();
    // While Redis is down, a key gets rate limited: handled locally.
    mock.key(
        "k1",
        Behaviour::Quota {
            quota: Quota::RequestsPerMinute,
            retry_delay: Some("60s"),
        },
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ready = Client::new()
        .call(Method::GET, &format!("{}/readyz", p.admin_url()), &[], "")
        .await;
    assert_eq!(ready.status, 200, "a proxy holding a snapshot stays ready");
    assert!(ready.text().contains("unreachable"), "{}", ready.text());
    assert!(metrics(&p).await.contains("gemini_proxy_store_up 0"));
    redis.restart();
    let mut codes = Vec::new();
    for w in workers {
        codes.extend(w.await.unwrap());
    }
    assert!(
        codes.iter().all(|&c| c == 200),
        "failed requests: {:?}",
        codes.iter().filter(|&&c| c != 200).collect::<Vec<_>>()
    );
    // Redis came back empty: the proxy republishes its group and writes back its key states.
    let store = shared.store();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let groups = store.groups().await.unwrap_or_default();
        let statuses = store.key_statuses("shared").await.unwrap_or_default();
        if groups.len() == 1
            && statuses
                .get(&KeyId::of("k1"))
                .is_some_and(|s| !s.cooldowns.is_empty())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "state did not reconverge: {groups:?} {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until_metric(&p, "gemini_proxy_store_up 1", Duration::from_secs(5)).await;
    let logs = p.logs();
    assert_eq!(
        logs.matches("store unreachable").count(),
        1,
        "the outage must be logged once:\n{logs}"
    );
}

#[tokio::test]
async fn a_proxy_without_groups_serves_what_the_store_holds_and_follows_changes() {
    let redis = RedisServer::start();
    let shared = Shared::new(&redis);
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    // The operator's part: publish a group.
    let store = shared.store();
    let mut group = GroupSnapshot::for_test("team-a/gemini", &["old-key"]);
    group.upstream.url = mock.url();
    store.publish_group(group.clone()).await.unwrap();
    let p = ProxyProcess::spawn(
        BIN,
        &[
            "--redis-url",
            &shared.redis_url,
            "--redis-key-prefix",
            &shared.prefix,
            "--default-group",
            "team-a/gemini",
        ],
        &[("GEMINI_PROXY_STATE_KEY", &shared.state_key)],
    )
    .await;
    assert_eq!(generate(&p).await, 200);
    assert_eq!(mock.count("old-key"), 1);
    // A changed Secret: the operator publishes the new key; the proxy uses it within a second.
    group.keys = GroupSnapshot::for_test("x", &["new-key"]).keys;
    store.publish_group(group).await.unwrap();
    until_metric(
        &p,
        &state_line("team-a/gemini", "new-key", "Active"),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(generate(&p).await, 200);
    assert_eq!(mock.count("new-key"), 1);
    assert_eq!(mock.count("old-key"), 1);
    // Removal: the group is gone from the proxy (its token no longer admitted); the pod stays
    // ready to answer.
    store.remove_group("team-a/gemini").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = Client::new()
            .call(Method::GET, &format!("{}/readyz", p.admin_url()), &[], "")
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        if !r.text().contains("group team-a/gemini") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group is still served after it was removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn without_a_snapshot_and_without_redis_a_proxy_is_not_ready() {
    let port = gemini_proxy_tests::process::free_port();
    let p = ProxyProcess::spawn(
        BIN,
        &["--redis-url", &format!("redis://127.0.0.1:{port}")],
        &[("GEMINI_PROXY_STATE_KEY", &EncryptionKey::generate_base64())],
    )
    .await;
    let r = Client::new()
        .call(Method::GET, &format!("{}/readyz", p.admin_url()), &[], "")
        .await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("no group snapshot"), "{}", r.text());
}

#[tokio::test]
async fn redis_without_an_encryption_key_is_refused_unless_plaintext_is_allowed() {
    let (status, out) =
        gemini_proxy_tests::process::run_to_exit(BIN, &["--redis-url", "redis://127.0.0.1:1"], &[])
            .await;
    assert_eq!(status.code(), Some(2));
    assert!(out.contains("must be encrypted"), "{out}");
    let redis = RedisServer::start();
    let p = ProxyProcess::spawn(
        BIN,
        &["--redis-url", &redis.url(), "--allow-plaintext-state"],
        &[],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !p.logs().contains("in clear") {
        assert!(Instant::now() < deadline, "no warning:\n{}", p.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn no_api_key_in_clear_anywhere_in_redis() {
    let redis = RedisServer::start();
    let shared = Shared::new(&redis);
    let mock = MockGemini::start().await;
    let keys = [
        "fake-scan-key-one-9f8e7d",
        "fake-scan-key-two-6c5b4a",
        "fake-scan-key-dead-3a2b1c",
    ];
    mock.key(keys[0], Behaviour::Ok)
        .key(
            keys[1],
            Behaviour::Quota {
                quota: Quota::RequestsPerDay,
                retry_delay: None,
            },
        )
        .key(keys[2], Behaviour::Invalid);
    let p = shared.proxy(&mock, &keys).await;
    for _ in 0..10 {
        assert_eq!(generate(&p).await, 200);
    }
    // Let usage (10 served requests, counted per key) and health reach Redis.
    let store = shared.store();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let day = keystore::UsageWindow::day_of(keystore::clock::now_ms());
        let usage = store.usage("shared", &day).await.unwrap();
        let served = usage
            .keys
            .get(&KeyId::of(keys[0]))
            .map_or(0, |c| c.requests);
        let tokens = usage.keys.get(&KeyId::of(keys[0])).map_or(0, |c| c.tokens);
        if served == 10 && !store.health_reports("shared").await.unwrap().is_empty() {
            assert_eq!(tokens, 120, "12 tokens per mock answer");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "usage or health did not reach Redis: {usage:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dump = redis.dump();
    let names: Vec<&str> = dump.iter().map(|(k, _)| k.as_str()).collect();
    for part in [
        ":group",
        ":keys",
        ":health",
        ":usage:m:",
        ":usage:d:",
        "{index}:groups",
        "{index}:proxies",
    ] {
        assert!(
            names.iter().any(|n| n.contains(part)),
            "no {part} key in {names:?}"
        );
    }
    for (k, v) in &dump {
        for key in keys {
            assert!(
                !k.contains(key) && !v.contains(key),
                "{key} in clear at {k}"
            );
        }
    }
}

#[tokio::test]
async fn proxies_share_state_on_a_redis_cluster_too() {
    let cluster = RedisCluster::start();
    let mock = MockGemini::start().await;
    mock.key(
        "c-rl",
        Behaviour::Quota {
            quota: Quota::RequestsPerMinute,
            retry_delay: Some("30s"),
        },
    )
    .key("c-ok", Behaviour::Ok);
    let prefix = random_prefix();
    let state_key = EncryptionKey::generate_base64();
    let urls = cluster.urls().join(",");
    let store = RedisStore::new(RedisConfig {
        target: RedisTarget::Cluster {
            urls: cluster.urls().into_iter().map(Secret::new).collect(),
        },
        key_prefix: prefix.clone(),
        encryption_key: Some(EncryptionKey::from_base64(&state_key).unwrap()),
    })
    .unwrap();
    let mut group = GroupSnapshot::for_test("cl/group", &["c-rl", "c-ok"]);
    group.upstream.url = mock.url();
    store.publish_group(group).await.unwrap();
    let args = [
        "--redis-cluster-urls",
        &urls,
        "--redis-key-prefix",
        &prefix,
        "--default-group",
        "cl/group",
    ];
    let env = [("GEMINI_PROXY_STATE_KEY", state_key.as_str())];
    let (p1, p2) = tokio::join!(
        ProxyProcess::spawn(BIN, &args, &env),
        ProxyProcess::spawn(BIN, &args, &env)
    );
    while mock.count("c-rl") == 0 {
        assert_eq!(generate(&p1).await, 200);
    }
    until_metric(
        &p2,
        &state_line("cl/group", "c-rl", "CoolingDown"),
        Duration::from_secs(1),
    )
    .await;
    for _ in 0..4 {
        assert_eq!(generate(&p2).await, 200);
    }
    assert_eq!(mock.count("c-rl"), 1);
}

#[tokio::test]
async fn quota_and_client_counts_are_shared_between_proxies() {
    let redis = RedisServer::start();
    let shared = Shared::new(&redis);
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    mock.project("s1", "proj-s").project("s2", "proj-s");
    let config = shared.config_with(
        &mock,
        "access: {clientTokens: [{name: carol, value: sk-carol}, {name: dave, value: sk-dave}], clientLimits: {requestsPerMinute: 3}}, limits: {requestsPerMinute: 5}, keys: [{value: s1, project: proj-s}, {value: s2, project: proj-s}]",
    );
    let (p1, p2) = tokio::join!(shared.proxy_with(&config), shared.proxy_with(&config));
    let as_client = |p: &ProxyProcess, token: &'static str| {
        let url = format!("{}{MODEL_PATH}", p.url());
        async move {
            Client::new()
                .call(Method::POST, &url, &[("x-goog-api-key", token)], "{}")
                .await
        }
    };
    // Carol spends her allowance on p1; p2 knows within a second.
    for _ in 0..3 {
        assert_eq!(as_client(&p1, "sk-carol").await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = as_client(&p2, "sk-carol").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("client carol"), "{}", r.text());
    // Dave fills the project's quota (5 per minute) on p2; p1 then keeps him from Google.
    for _ in 0..2 {
        assert_eq!(as_client(&p2, "sk-dave").await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = as_client(&p1, "sk-dave").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert_eq!(mock.requests().len(), 5, "Google saw only what fits");
    assert_eq!(mock.answered(429), 0);
}

/// Chaos: Redis SIGKILLed for 20 s under load on two proxies and restarted empty. No client
/// request fails; the group and the key states known before the outage (a retirement, a per-day
/// cooldown with its end) are back in the store within 5 s; a cooldown one proxy saw during the
/// outage reaches the other within 2 s of Redis returning; a proxy started afterwards uses none
/// of those keys.
#[tokio::test]
async fn redis_restarting_empty_forgets_no_key_state() {
    let mut redis = RedisServer::start();
    let shared = Shared::new(&redis);
    let mock = MockGemini::start().await;
    mock.key("cx-dead", Behaviour::Invalid)
        .key(
            "cx-day",
            Behaviour::Quota {
                quota: Quota::RequestsPerDay,
                retry_delay: None,
            },
        )
        .key("cx-ok-1", Behaviour::Ok)
        .key("cx-ok-2", Behaviour::Ok);
    let keys = ["cx-dead", "cx-day", "cx-ok-1", "cx-ok-2"];
    let (a, b) = tokio::join!(shared.proxy(&mock, &keys), shared.proxy(&mock, &keys));
    while mock.count("cx-dead") == 0 || mock.count("cx-day") == 0 {
        assert_eq!(generate(&a).await, 200);
    }
    for (key, state) in [("cx-dead", "Invalid"), ("cx-day", "CoolingDown")] {
        until_metric(
            &b,
            &state_line("shared", key, state),
            Duration::from_secs(2),
        )
        .await;
    }
    let store = shared.store();
    let day_until =
        store.key_statuses("shared").await.unwrap()[&KeyId::of("cx-day")].cooldowns[0].until_ms;

    // Load on both proxies through the outage.
    let load = |url: String, until: Instant| {
        tokio::spawn(async move {
            let c = Client::new();
            let mut failed = Vec::new();
            let mut n = 0;
            while Instant::now() < until {
                let s = c.call(Method::POST, &url, &[], "{}").await.status.as_u16();
                n += 1;
                if s != 200 {
                    failed.push(s);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (n, failed)
        })
    };
    let until = Instant::now() + Duration::from_secs(27);
    let workers = vec![
        load(format!("{}{MODEL_PATH}", a.url()), until),
        load(format!("{}{MODEL_PATH}", b.url()), until),
    ];
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // During the outage one key runs out of its per-minute quota; proxy a meets it.
    mock.key(
        "cx-ok-2",
        Behaviour::Quota {
            quota: Quota::RequestsPerMinute,
            retry_delay: Some("120s"),
        },
    );
    let c = Client::new();
    while mock.count("cx-ok-2") == 0
        || !metrics(&a)
            .await
            .contains(&state_line("shared", "cx-ok-2", "CoolingDown"))
    {
        assert_eq!(
            c.call(Method::POST, &format!("{}{MODEL_PATH}", a.url()), &[], "{}")
                .await
                .status,
            200
        );
    }
    tokio::time::sleep(Duration::from_secs(17)).await;
    redis.restart();
    let back = Instant::now();

    // The state comes back into the (empty) store.
    loop {
        let statuses = store.key_statuses("shared").await.unwrap_or_default();
        let groups = store.groups().await.unwrap_or_default();
        let dead = statuses.get(&KeyId::of("cx-dead")).and_then(|s| s.invalid);
        let day = statuses
            .get(&KeyId::of("cx-day"))
            .and_then(|s| s.cooldowns.first().map(|c| c.until_ms));
        let minute = statuses
            .get(&KeyId::of("cx-ok-2"))
            .is_some_and(|s| !s.cooldowns.is_empty());
        if groups.len() == 1 && dead.is_some() && day == Some(day_until) && minute {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "the store did not get the key states back within 5 s: {groups:?} {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "key states back in the store {:?} after Redis returned",
        back.elapsed()
    );
    // b never met cx-ok-2's 429 itself: it learns it from the store.
    let took = until_metric(
        &b,
        &state_line("shared", "cx-ok-2", "CoolingDown"),
        Duration::from_secs(2),
    )
    .await;
    println!("the other proxy cooled the key {took:?} after the state came back");
    let mut total = 0;
    for w in workers {
        let (n, failed) = w.await.unwrap();
        total += n;
        assert!(
            failed.is_empty(),
            "client failures during the outage: {failed:?}"
        );
    }
    println!("{total} requests through the outage, none failed");
    // A proxy started now knows what the others knew.
    let before: Vec<usize> = keys.iter().map(|k| mock.count(k)).collect();
    let c2 = shared.proxy(&mock, &keys).await;
    for _ in 0..8 {
        assert_eq!(generate(&c2).await, 200);
    }
    for (k, n) in keys.iter().zip(before) {
        if *k != "cx-ok-1" {
            assert_eq!(
                mock.count(k),
                n,
                "{k} was used by a proxy started after the outage"
            );
        }
    }
}

/// Commands Redis has processed (script-internal ones included).
fn commands(redis: &RedisServer) -> u64 {
    redis
        .cli(&["INFO", "stats"])
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_commands_processed")
}

/// Usage reaches the store as each proxy's running totals (one field per group and window),
/// so the store's work per request does not grow with the number of keys: under 0.1 Redis
/// commands per request with 3 keys and with 10,000.
#[tokio::test]
async fn redis_commands_per_request_do_not_grow_with_the_keys() {
    let mut seen = Vec::new();
    for n_keys in [3usize, 10_000] {
        let redis = RedisServer::start();
        let shared = Shared::new(&redis);
        let mock = MockGemini::start().await;
        mock.accept_any_key(Behaviour::Ok);
        let names: Vec<String> = (0..n_keys).map(|i| format!("uk-{i:05}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let p = shared.proxy(&mock, &refs).await;
        // Let start-up writes settle.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let before = commands(&redis);
        let total = 4000;
        let url = format!("{}{MODEL_PATH}", p.url());
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (url, next) = (url.clone(), next.clone());
            clients.spawn(async move {
                let c = Client::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                    assert_eq!(c.call(Method::POST, &url, &[], "{}").await.status, 200);
                }
            });
        }
        while let Some(r) = clients.join_next().await {
            r.expect("client");
        }
        // The last totals leave within a flush.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let per_request = (commands(&redis) - before) as f64 / total as f64;
        let day = keystore::UsageWindow::day_of(keystore::clock::now_ms());
        let counted: u64 = shared
            .store()
            .usage("shared", &day)
            .await
            .unwrap()
            .keys
            .values()
            .map(|c| c.requests)
            .sum();
        assert_eq!(counted, total as u64, "every request counted once");
        seen.push((n_keys, per_request));
    }
    println!("Redis commands per request: {seen:?}");
    for (n, per) in seen {
        assert!(per < 0.1, "{per} Redis commands per request with {n} keys");
    }
}

#[tokio::test]
async fn a_reloaded_file_is_published_and_status_reads_the_store() {
    let redis = RedisServer::start();
    let shared = Shared::new(&redis);
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    mock.key("rl-dead", Behaviour::Invalid);
    let p = shared.proxy(&mock, &["rl-1", "rl-dead"]).await;
    while mock.count("rl-dead") == 0 {
        assert_eq!(generate(&p).await, 200);
    }
    let store = shared.store();
    let dead = KeyId::of("rl-dead");
    let deadline = Instant::now() + Duration::from_secs(5);
    while store
        .key_statuses("shared")
        .await
        .unwrap()
        .get(&dead)
        .and_then(|s| s.invalid)
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "the retirement did not reach the store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A new key in the group and a second group: both reach the store.
    let path = p.dir.join("proxy.yaml");
    let second = format!(
        "  - {{name: second, upstream: {{{}}}, access: {{mode: Open}}, keys: [{{value: rl-3}}]}}\n",
        mock.upstream_yaml()
    );
    let grown = shared.config(&mock, &["rl-1", "rl-dead", "rl-2"]) + &second;
    std::fs::write(path.with_extension("new"), &grown).unwrap();
    std::fs::rename(path.with_extension("new"), &path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let groups = store.groups().await.unwrap();
        let keys = |name: &str| groups.iter().find(|g| g.name == name).map(|g| g.keys.len());
        if keys("shared") == Some(3) && keys("second") == Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "the reload was not published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The retirement was kept through the reload.
    assert!(
        store.key_statuses("shared").await.unwrap()[&dead]
            .invalid
            .is_some()
    );

    // `gemini-proxy status` straight from the store.
    let (status, out) = gemini_proxy_tests::process::run_to_exit(
        BIN,
        &[
            "status",
            "--redis-url",
            &shared.redis_url,
            "--redis-key-prefix",
            &shared.prefix,
        ],
        &[("GEMINI_PROXY_STATE_KEY", &shared.state_key)],
    )
    .await;
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(
        out.contains("group second (Open, RoundRobin): 1 of 1 keys active"),
        "{out}"
    );
    assert!(
        out.contains("group shared (Open, RoundRobin): 2 of 3 keys active"),
        "{out}"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with(dead.as_str()))
        .unwrap_or_else(|| panic!("no line for the dead key:\n{out}"));
    assert!(
        line.contains("Invalid") && line.contains("ApiKeyInvalid"),
        "{line}"
    );
    assert!(!out.contains("rl-dead") && !out.contains("rl-1"), "{out}");

    // The group removed from the file is withdrawn from the store.
    let shrunk = shared.config(&mock, &["rl-1", "rl-2"]);
    std::fs::write(path.with_extension("new"), &shrunk).unwrap();
    std::fs::rename(path.with_extension("new"), &path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while store
        .group_names()
        .await
        .unwrap()
        .iter()
        .any(|n| n == "second")
    {
        assert!(
            Instant::now() < deadline,
            "the removed group stayed in the store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(generate(&p).await, 200);
}

#[tokio::test]
async fn a_group_from_the_store_reaches_only_allowed_upstream_hosts() {
    let redis = RedisServer::start();
    let shared = Shared::new(&redis);
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    // A tenant's group pointing its keys at a host of its choosing (here the mock).
    let store = shared.store();
    let mut group = GroupSnapshot::for_test("team-a/exfil", &["allow-key"]);
    group.upstream.url = mock.url();
    store.publish_group(group).await.unwrap();
    let args = [
        "--redis-url",
        shared.redis_url.as_str(),
        "--redis-key-prefix",
        shared.prefix.as_str(),
        "--default-group",
        "team-a/exfil",
    ];
    // The default list: Google's endpoint only.
    let p = ProxyProcess::spawn(
        BIN,
        &args,
        &[
            ("GEMINI_PROXY_STATE_KEY", &shared.state_key),
            ("GEMINI_PROXY_ALLOWED_UPSTREAM_HOSTS", ""),
        ],
    )
    .await;
    assert_eq!(generate(&p).await, 401, "no group serves");
    assert_eq!(mock.count("allow-key"), 0, "the key went to the host");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !p.logs().contains("its upstream host is not allowed") {
        assert!(Instant::now() < deadline, "{}", p.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Allowed by the proxy's operator: served.
    let p = ProxyProcess::spawn(
        BIN,
        &args,
        &[
            ("GEMINI_PROXY_STATE_KEY", &shared.state_key),
            ("GEMINI_PROXY_ALLOWED_UPSTREAM_HOSTS", "127.0.0.1"),
        ],
    )
    .await;
    assert_eq!(generate(&p).await, 200);
    assert_eq!(mock.count("allow-key"), 1);
}

/// Someone who can write to Redis, without the state key, writes a group snapshot of their own
/// (Open, its upstream their server): the proxy refuses it, says so in `/readyz` and the
/// metrics, and no key or request goes there. A proxy given one namespace's derived key
/// (`gemini-proxy derive-state-key`) serves that namespace's groups only.
#[tokio::test]
async fn a_forged_snapshot_is_refused_and_a_namespace_key_reads_its_namespace_only() {
    let redis = RedisServer::start();
    let shared = Shared::new(&redis);
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    let attacker = MockGemini::start().await;
    attacker.accept_any_key(Behaviour::Ok);
    let store = shared.store();
    for name in ["team-a/real", "team-b/other"] {
        let mut g = GroupSnapshot::for_test(name, &["fake-real-key-1111"]);
        g.upstream.url = mock.url();
        g.access.mode = keystore::AccessMode::Open;
        store.publish_group(g).await.unwrap();
    }
    let forged_key = "fake-forged-key-2222";
    let forged = serde_json::json!({
        "name": "team-a/evil",
        "upstream": {"url": attacker.url(), "timeoutSecs": 600},
        "keys": [{"id": KeyId::of(forged_key).as_str(), "secret": format!("plain.{forged_key}"),
                  "weight": 1, "source": "forged"}],
        "rotation": "RoundRobin", "accessMode": "Open", "clients": [], "maxAttempts": 3
    })
    .to_string();
    let p = &shared.prefix;
    redis.cli(&[
        "HSET",
        &format!("{p}{{g:team-a/evil}}:group"),
        "version",
        "1",
        "fingerprint",
        "x",
        "data",
        &forged,
    ]);
    redis.cli(&["SADD", &format!("{p}{{index}}:groups"), "team-a/evil"]);
    let args = |group: &'static str| {
        vec![
            "--redis-url".to_owned(),
            shared.redis_url.clone(),
            "--redis-key-prefix".to_owned(),
            shared.prefix.clone(),
            "--default-group".to_owned(),
            group.to_owned(),
        ]
    };
    let argv = args("team-a/evil");
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let proxy =
        ProxyProcess::spawn(BIN, &argv, &[("GEMINI_PROXY_STATE_KEY", &shared.state_key)]).await;
    assert_eq!(
        generate(&proxy).await,
        401,
        "the forged group must not serve"
    );
    assert_eq!(
        attacker.requests().len(),
        0,
        "a request reached the forged upstream"
    );
    let ready = Client::new()
        .call(
            Method::GET,
            &format!("{}/readyz", proxy.admin_url()),
            &[],
            "",
        )
        .await
        .text();
    assert!(
        ready.contains("group team-a/evil: refused (unauthenticated)"),
        "{ready}"
    );
    assert!(
        ready.contains("group team-a/real: 1 of 1 keys usable"),
        "{ready}"
    );
    until_metric(
        &proxy,
        "gemini_proxy_group_refused{group=\"team-a/evil\",reason=\"unauthenticated\"} 1",
        Duration::from_secs(2),
    )
    .await;
    assert!(proxy.logs().contains("group refused"), "{}", proxy.logs());
    assert!(!proxy.logs().contains(forged_key));
    // The sidecar: team-a's derived key, from the CLI.
    let out = std::process::Command::new(BIN)
        .args(["derive-state-key", "--namespace", "team-a"])
        .env("GEMINI_PROXY_STATE_KEY", &shared.state_key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let derived = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_ne!(derived, shared.state_key);
    let argv = args("team-a/real");
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let sidecar = ProxyProcess::spawn(
        BIN,
        &argv,
        &[
            ("GEMINI_PROXY_STATE_KEY", &derived),
            ("GEMINI_PROXY_STATE_KEY_NAMESPACE", "team-a"),
        ],
    )
    .await;
    assert_eq!(generate(&sidecar).await, 200);
    let m = metrics(&sidecar).await;
    assert!(m.contains("group=\"team-a/real\""), "{m}");
    assert!(
        !m.contains("team-b/other"),
        "another namespace's group is read: {m}"
    );
    // The derived key given as a master opens nothing (it derives other keys from itself).
    let argv = args("team-b/other");
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let confused = ProxyProcess::spawn(BIN, &argv, &[("GEMINI_PROXY_STATE_KEY", &derived)]).await;
    assert_eq!(generate(&confused).await, 401);
}
