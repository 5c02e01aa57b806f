use super::*;
use crate::fixtures::{GroupFixture, labelled, secret};
use keystore::clock::now_ms;
use keystore::{Cooldown, CooldownReason, InvalidReason, Transition};

const NS: &str = "team-a";

#[test]
fn keys_come_from_named_secret_entries() {
    let g = GroupFixture::new(NS, "gemini")
        .key("keys", "k1")
        .project("p1")
        .key("keys", "k2")
        .build();
    let secrets = [secret(
        NS,
        "keys",
        &[("k1", "fake-key-one\n"), ("k2", "fake-key-two")],
    )];
    let p = plan(&g, NS, &secrets);
    assert!(p.missing.is_empty(), "{:?}", p.missing);
    assert_eq!(p.snapshot.name, "team-a/gemini");
    assert_eq!(p.snapshot.keys.len(), 2);
    assert_eq!(p.snapshot.keys[0].secret.expose(), "fake-key-one");
    assert_eq!(p.snapshot.keys[0].project.as_deref(), Some("p1"));
    assert_eq!(p.snapshot.keys[0].source, "keys/k1");
    assert_eq!(p.snapshot.access.mode, StoreAccess::Open);
}

#[test]
fn limits_reach_the_snapshot() {
    let g = GroupFixture::new(NS, "gemini")
        .key("keys", "k1")
        .tokens("clients")
        .limits(10, 250)
        .client_limit(30)
        .build();
    let p = plan(
        &g,
        NS,
        &[
            secret(NS, "keys", &[("k1", "fake-key-one")]),
            secret(NS, "clients", &[("app", "sk-fake-client")]),
        ],
    );
    let l = p.snapshot.limits;
    assert_eq!(
        (
            l.requests_per_minute,
            l.tokens_per_minute,
            l.requests_per_day,
            l.learn
        ),
        (Some(10), None, Some(250), false)
    );
    assert_eq!(
        p.snapshot.access.client_limits.requests_per_minute,
        Some(30)
    );
    // Without limits: none, and learning on.
    let plain = plan(
        &GroupFixture::new(NS, "g").key("keys", "k1").build(),
        NS,
        &[secret(NS, "keys", &[("k1", "fake-key-one")])],
    );
    assert_eq!(plain.snapshot.limits, QuotaLimits::default());
    assert!(plain.snapshot.limits.learn);
}

#[test]
fn a_missing_secret_or_entry_is_named_and_the_rest_still_serves() {
    let g = GroupFixture::new(NS, "gemini")
        .key("keys", "k1")
        .key("keys", "nope")
        .key("gone", "k")
        .build();
    let p = plan(&g, NS, &[secret(NS, "keys", &[("k1", "fake-key-one")])]);
    assert_eq!(p.snapshot.keys.len(), 1);
    assert_eq!(
        p.missing,
        vec![
            "Secret \"keys\" has no usable entry \"nope\"".to_owned(),
            "Secret \"gone\" not found (or not labelled gemini-proxy.io/opt-in=true)".to_owned(),
        ]
    );
    let st = status(&g, &p, &Observed::default(), None, None, now_ms());
    let resolved = st
        .conditions
        .iter()
        .find(|c| c.type_ == "KeysResolved")
        .unwrap();
    assert_eq!(
        (resolved.status.as_str(), resolved.reason.as_str()),
        ("False", "SecretMissing")
    );
    assert!(resolved.message.contains("\"gone\" not found"));
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "True");
}

#[test]
fn a_selector_takes_every_entry_of_matching_secrets() {
    let g = GroupFixture::new(NS, "gemini")
        .selector("gemini-proxy.io/pool", "a")
        .build();
    let secrets = [
        labelled(
            secret(NS, "pool-1", &[("x", "fake-a1"), ("y", "fake-a2")]),
            "gemini-proxy.io/pool",
            "a",
        ),
        labelled(
            labelled(
                secret(NS, "pool-2", &[("z", "fake-a3")]),
                "gemini-proxy.io/pool",
                "a",
            ),
            "gemini-proxy.io/project",
            "proj",
        ),
        labelled(
            secret(NS, "other", &[("w", "fake-b1")]),
            "gemini-proxy.io/pool",
            "b",
        ),
    ];
    let p = plan(&g, NS, &secrets);
    let sources: Vec<&str> = p.snapshot.keys.iter().map(|k| k.source.as_str()).collect();
    assert_eq!(sources, ["pool-1/x", "pool-1/y", "pool-2/z"]);
    assert_eq!(p.snapshot.keys[2].project.as_deref(), Some("proj"));
    assert!(concerns(&g, &secrets[0]));
    assert!(!concerns(&g, &secrets[2]));
}

#[test]
fn client_tokens_are_stored_as_digests_with_their_names() {
    let g = GroupFixture::new(NS, "gemini")
        .key("keys", "k")
        .tokens("apps")
        .build();
    let secrets = [
        secret(NS, "keys", &[("k", "fake-key")]),
        secret(
            NS,
            "apps",
            &[("billing", "sk-billing"), ("search", "sk-search")],
        ),
    ];
    let p = plan(&g, NS, &secrets);
    assert_eq!(p.snapshot.access.mode, StoreAccess::Token);
    let names: Vec<&str> = p
        .snapshot
        .access
        .clients
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["billing", "search"]);
    assert_eq!(
        p.snapshot.access.clients[0].digest,
        TokenDigest::of("sk-billing")
    );
    assert!(!format!("{:?}", p.snapshot).contains("sk-billing"));
}

#[test]
fn status_counts_states_and_never_holds_a_key() {
    let g = GroupFixture::new(NS, "gemini")
        .key("keys", "a")
        .key("keys", "b")
        .key("keys", "c")
        .build();
    let p = plan(
        &g,
        NS,
        &[secret(
            NS,
            "keys",
            &[("a", "fake-a"), ("b", "fake-b"), ("c", "fake-c")],
        )],
    );
    let now = now_ms();
    let mut observed = Observed::default();
    let mut cooling = KeyStatus::default();
    cooling.apply(
        &Transition::Cool(Cooldown {
            until_ms: now + 60_000,
            reason: CooldownReason::PerDayQuota,
            model: Some("gemini-2.5-pro".into()),
        }),
        now,
    );
    let mut dead = KeyStatus::default();
    dead.apply(
        &Transition::Retire {
            reason: InvalidReason::ApiKeyInvalid,
        },
        now,
    );
    observed.statuses.insert(KeyId::of("fake-b"), cooling);
    observed.statuses.insert(KeyId::of("fake-c"), dead);
    observed.requests_last_hour.insert(KeyId::of("fake-a"), 42);
    observed.reports.push(HealthReport {
        proxy_id: "pod-1".into(),
        group: "team-a/gemini".into(),
        at_ms: now,
        keys: vec![keystore::KeyHealth {
            id: KeyId::of("fake-a"),
            score: 0.5,
            requests: 3,
            failures: 1,
            last_error: Some("timeout".into()),
        }],
    });
    let st = status(
        &g,
        &p,
        &observed,
        None,
        Some("2026-11-22T00:00:00Z".into()),
        now,
    );
    assert_eq!(
        st.keys,
        KeyCounts {
            total: 3,
            active: 1,
            cooling_down: 1,
            invalid: 1
        }
    );
    assert_eq!(st.proxies, 1);
    let entry = |k: &str| {
        let id = KeyId::of(k);
        st.key_statuses
            .iter()
            .find(|e| e.id == id.as_str())
            .unwrap_or_else(|| panic!("{k} not listed"))
    };
    assert_eq!(entry("fake-a").requests_last_hour, 42);
    assert_eq!(entry("fake-a").health_score, Some(0.5));
    assert_eq!(
        entry("fake-b").reason.as_deref(),
        Some("PerDayQuota (gemini-2.5-pro)")
    );
    assert!(entry("fake-b").until.is_some());
    // Keys that need attention come first.
    assert_eq!(st.key_statuses[2].id, KeyId::of("fake-a").as_str());
    let degraded = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "KeysInvalid")
    );
    let text = serde_json::to_string(&st).unwrap();
    for k in ["fake-a", "fake-b", "fake-c"] {
        assert!(!text.contains(&format!("\"{k}\"")), "{k} in status");
    }
    // Same inputs a moment later: the same status (no patch), condition times kept.
    let again = status(&g, &p, &observed, Some(&st), None, now + 5_000);
    assert_eq!(again, st);
    // Recoveries: keys that were cooling or retired and are active again, once.
    assert!(recoveries(None, &st).is_empty());
    assert!(recoveries(Some(&st), &again).is_empty());
    let recovered = status(&g, &p, &Observed::default(), Some(&st), None, now);
    assert_eq!(recoveries(Some(&st), &recovered).len(), 2);
}

#[test]
fn audit_trail_entries_become_events_except_per_minute_cooldowns() {
    let id = KeyId::of("fake-audit-key");
    let event = |kind, reason: &str| keystore::AuditEvent {
        at_ms: 1_800_000_000_000,
        group: "team-a/g".into(),
        key: id.clone(),
        kind,
        reason: Some(reason.into()),
        until_ms: Some(1_800_000_060_000),
        model: Some("gemini-2.5-pro".into()),
        origin: "proxy-1".into(),
    };
    let retired = audit_event(&event(AuditKind::Retired, "Leaked")).unwrap();
    assert!(retired.warning);
    assert_eq!(retired.reason, "KeyRetired");
    assert!(retired.note.contains(id.as_str()) && retired.note.contains("Leaked"));
    let day = audit_event(&event(AuditKind::Cooled, "PerDayQuota")).unwrap();
    assert_eq!(day.reason, "KeyCoolingPerDay");
    assert!(
        day.note.contains("until 2027-01-15T08:01:00Z"),
        "{}",
        day.note
    );
    assert!(audit_event(&event(AuditKind::Cooled, "PerMinuteQuota")).is_none());
    for (kind, reason) in [
        (AuditKind::Added, "KeyAdded"),
        (AuditKind::Removed, "KeyRemoved"),
        (AuditKind::Recovered, "KeyRecovered"),
    ] {
        assert_eq!(audit_event(&event(kind, "x")).unwrap().reason, reason);
    }
}

#[test]
fn the_whole_selector_applies_and_only_opted_in_secrets_count() {
    use crate::crd::{KeySelector, SelectorOperator, SelectorRequirement};
    use crate::fixtures::not_opted_in;
    let req = |key: &str, operator, values: &[&str]| SelectorRequirement {
        key: key.into(),
        operator,
        values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
    };
    let mut g = GroupFixture::new(NS, "g").build();
    g.spec.key_selector = Some(KeySelector {
        match_labels: Some([("pool".to_owned(), "a".to_owned())].into()),
        match_expressions: Some(vec![
            req("tier", SelectorOperator::In, &["gold", "silver"]),
            req("region", SelectorOperator::NotIn, &["eu"]),
            req("owner", SelectorOperator::Exists, &[]),
            req("retired", SelectorOperator::DoesNotExist, &[]),
        ]),
    });
    let with = |name: &str, labels: &[(&str, &str)]| {
        labels.iter().fold(
            secret(NS, name, &[("k", &format!("fake-{name}"))]),
            |s, (k, v)| labelled(s, k, v),
        )
    };
    let good = [
        ("pool", "a"),
        ("tier", "gold"),
        ("region", "us"),
        ("owner", "x"),
    ];
    let secrets = [
        with("match", &good),
        with("no-owner", &[("pool", "a"), ("tier", "gold")]),
        with(
            "wrong-tier",
            &[("pool", "a"), ("tier", "bronze"), ("owner", "x")],
        ),
        with(
            "eu",
            &[
                ("pool", "a"),
                ("tier", "gold"),
                ("region", "eu"),
                ("owner", "x"),
            ],
        ),
        with(
            "retired",
            &[good.as_slice(), &[("retired", "yes")]].concat(),
        ),
        not_opted_in(with("not-opted-in", &good)),
    ];
    let p = plan(&g, NS, &secrets);
    let sources: Vec<&str> = p.snapshot.keys.iter().map(|k| k.source.as_str()).collect();
    assert_eq!(sources, ["match/k"]);
    // An empty selector selects nothing (and is refused at admission).
    assert!(!selects(&KeySelector::default(), &Default::default()));
}

#[test]
fn an_upstream_ca_comes_from_an_opted_in_secret_and_bad_pem_is_named() {
    use crate::crd::SecretKeyRef;
    let mut g = GroupFixture::new(NS, "g").key("keys", "k1").build();
    g.spec.upstream.ca_secret_ref = Some(SecretKeyRef {
        name: "gateway-ca".into(),
        key: "ca.pem".into(),
    });
    let keys = secret(NS, "keys", &[("k1", "fake-key-one")]);
    // Missing: named, the rest of the group stays.
    let p = plan(&g, NS, std::slice::from_ref(&keys));
    assert_eq!(p.snapshot.keys.len(), 1);
    assert!(p.snapshot.upstream.ca_pem.is_none());
    assert!(p.missing[0].contains("upstream CA"), "{:?}", p.missing);
    // Not a certificate: named too.
    let bad = secret(NS, "gateway-ca", &[("ca.pem", "hello")]);
    let p = plan(&g, NS, &[keys.clone(), bad]);
    assert!(p.missing[0].contains("no certificate"), "{:?}", p.missing);
    // A real one (the test CA the proxy suites use) reaches the snapshot.
    let pem = std::fs::read_to_string(gemini_proxy_tests_ca()).expect("test CA");
    let good = secret(NS, "gateway-ca", &[("ca.pem", &pem)]);
    let p = plan(&g, NS, &[keys, good]);
    assert!(p.missing.is_empty(), "{:?}", p.missing);
    assert_eq!(p.snapshot.upstream.ca_pem.as_deref(), Some(pem.as_str()));
}

/// A CA certificate made with openssl for this test.
fn gemini_proxy_tests_ca() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gp-plan-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=plan test CA", "-keyout"])
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(dir.join("ca.pem"))
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("ca.pem")
}

#[test]
fn a_foreign_upstream_host_gets_no_keys_and_is_named() {
    let secrets = [secret(NS, "keys", &[("k1", "fake-key-one")])];
    let google = vec![keystore::snapshot::DEFAULT_UPSTREAM_HOST.to_owned()];
    for (url, allowed) in [
        ("https://generativelanguage.googleapis.com", true),
        ("https://GenerativeLanguage.googleapis.com:443/v1beta", true),
        (
            "https://generativelanguage.googleapis.com@exfil.example.com/",
            false,
        ),
        (
            "https://generativelanguage.googleapis.com.exfil.example.com",
            false,
        ),
        ("http://10.0.0.1:8080", false),
    ] {
        let g = GroupFixture::new(NS, "gemini")
            .key("keys", "k1")
            .upstream(url)
            .build();
        let mut p = plan(&g, NS, &secrets);
        restrict_upstream(&mut p, Some(&google));
        assert_eq!(p.snapshot.keys.len(), usize::from(allowed), "{url}");
        assert_eq!(p.missing.is_empty(), allowed, "{url}: {:?}", p.missing);
        if !allowed {
            assert!(p.missing[0].contains("--allowed-upstream-hosts"));
        }
        // No list: any host.
        let mut p = plan(&g, NS, &secrets);
        restrict_upstream(&mut p, None);
        assert_eq!(p.snapshot.keys.len(), 1);
    }
}
