use super::*;

fn parse(yaml: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    Settings::from_yaml(yaml, "proxy.yaml", &Env::for_test(env))
}

fn err(yaml: &str) -> String {
    match parse(yaml, &[]) {
        Ok(_) => panic!("expected an error for:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

const FULL: &str = r#"
listen: "127.0.0.1:9090"
groups:
  - name: default
    upstream:
      url: "https://generativelanguage.googleapis.com"
      egressProxy: "socks5://127.0.0.1:1080"
      timeoutSeconds: 30
    keys:
      - value: "fake-inline"
      - env: GEMINI_KEY_2
        project: my-gcp-project
        weight: 2
    rotation: {strategy: LeastLoaded}
    access:
      mode: Token
      clientTokens: ["sk-one", {name: bob, env: BOB_TOKEN}]
    retry: {maxAttempts: 5}
  - name: open
    keys: [{value: fake-other}]
    access: {mode: Open}
defaultGroup: open
"#;

#[test]
fn full_file_resolves() {
    let s = parse(
        FULL,
        &[("GEMINI_KEY_2", "fake-from-env\n"), ("BOB_TOKEN", "sk-bob")],
    )
    .unwrap();
    assert_eq!(s.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(s.groups.len(), 2);
    let g = &s.groups[0];
    assert_eq!(g.keys.len(), 2);
    assert_eq!(g.keys[1].secret.expose(), "fake-from-env");
    assert_eq!(g.keys[1].project.as_deref(), Some("my-gcp-project"));
    assert_eq!(g.keys[1].weight, 2);
    assert_eq!(g.keys[1].source, "groups[0].keys[1]");
    assert_eq!(g.rotation, keystore::RotationStrategy::LeastLoaded);
    assert_eq!(g.retry.max_attempts, 5);
    assert_eq!(g.upstream.timeout_secs, 30);
    assert_eq!(
        g.upstream.egress_proxy.as_ref().map(Secret::expose),
        Some("socks5://127.0.0.1:1080")
    );
    assert_eq!(g.access.clients.len(), 2);
    assert_eq!(g.access.clients[1].name, "bob");
    assert_eq!(g.access.clients[1].digest, TokenDigest::of("sk-bob"));
    assert_eq!(s.groups[1].access.mode, AccessMode::Open);
    assert_eq!(s.default_group.as_deref(), Some("open"));
    assert_eq!(s.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
}

#[test]
fn keys_from_files_are_trimmed() {
    let dir = std::env::temp_dir().join(format!("gp-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("key3");
    std::fs::write(&f, "fake-from-file\n").unwrap();
    let yaml = format!(
        "groups: [{{name: g, access: {{mode: Open}}, keys: [{{file: {}}}]}}]",
        f.display()
    );
    let s = parse(&yaml, &[]).unwrap();
    assert_eq!(s.groups[0].keys[0].secret.expose(), "fake-from-file");
}

#[test]
fn unknown_field_is_named() {
    let e = err("groups:\n  - name: g\n    keyz: []\n");
    assert!(e.contains("proxy.yaml"), "{e}");
    assert!(e.contains("keyz"), "{e}");
    assert!(e.contains("line 3") || e.contains(":3:"), "{e}");
}

#[test]
fn group_without_keys() {
    let e = err("groups: [{name: g, access: {mode: Open}}]");
    assert_eq!(
        e,
        "proxy.yaml: groups[0].keys: a group needs at least one key"
    );
}

#[test]
fn bad_upstream_url() {
    let e = err(
        "groups: [{name: g, upstream: {url: 'ftp://x'}, access: {mode: Open}, keys: [{value: a}]}]",
    );
    assert!(e.starts_with("proxy.yaml: groups[0].upstream.url: "), "{e}");
    assert!(e.contains("http or https"), "{e}");
    let e = err(
        "groups: [{name: g, upstream: {url: 'not a url'}, access: {mode: Open}, keys: [{value: a}]}]",
    );
    assert!(e.contains("is not a URL"), "{e}");
}

#[test]
fn bad_egress_proxy_does_not_echo_credentials() {
    let e = err(
        "groups: [{name: g, upstream: {egressProxy: 'ftp://user:hunter2@h'}, access: {mode: Open}, keys: [{value: a}]}]",
    );
    assert!(e.contains("groups[0].upstream.egressProxy"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn missing_env_var_and_file() {
    let e =
        err("groups: [{name: g, access: {mode: Open}, keys: [{value: a}, {env: NOPE_NOT_SET}]}]");
    assert_eq!(
        e,
        "proxy.yaml: groups[0].keys[1].env: environment variable NOPE_NOT_SET is not set"
    );
    let e = err("groups: [{name: g, access: {mode: Open}, keys: [{file: /nonexistent/key}]}]");
    assert!(
        e.starts_with("proxy.yaml: groups[0].keys[0].file: cannot read /nonexistent/key"),
        "{e}"
    );
}

#[test]
fn key_needs_exactly_one_source() {
    let e = err("groups: [{name: g, access: {mode: Open}, keys: [{value: a, env: B}]}]");
    assert_eq!(
        e,
        "proxy.yaml: groups[0].keys[0]: give exactly one of value, env, file"
    );
    let e = err("groups: [{name: g, access: {mode: Open}, keys: [{project: p}]}]");
    assert!(e.contains("exactly one"), "{e}");
}

#[test]
fn one_token_in_two_groups() {
    let e = err(
        "groups:\n  - {name: a, keys: [{value: k1}], access: {clientTokens: [t]}}\n  - {name: b, keys: [{value: k2}], access: {clientTokens: [t]}}\n",
    );
    assert!(e.starts_with("proxy.yaml: groups[1].access.clientTokens[0]: the same client token is also groups[0].access.clientTokens[0]"), "{e}");
}

#[test]
fn access_rules() {
    let e = err("groups: [{name: g, keys: [{value: a}]}]");
    assert!(
        e.contains("groups[0].access.clientTokens: Token mode"),
        "{e}"
    );
    let e = err("groups: [{name: g, keys: [{value: a}], access: {mode: Open, clientTokens: [t]}}]");
    assert!(e.contains("Open mode takes no client tokens"), "{e}");
    let e = err("groups: [{name: g, keys: [{value: a}], access: {mode: Sometimes}}]");
    assert!(e.contains("Sometimes"), "{e}");
    let e = err(
        "defaultGroup: g\ngroups: [{name: g, keys: [{value: a}], access: {clientTokens: [t]}}]",
    );
    assert!(
        e.contains("defaultGroup: group \"g\" must have access.mode Open"),
        "{e}"
    );
}

#[test]
fn duplicates_and_bounds() {
    let e = err("groups: [{name: g, access: {mode: Open}, keys: [{value: a}, {value: a}]}]");
    assert!(
        e.starts_with("proxy.yaml: groups[0].keys[1]: the same key as groups[0].keys[0] (k-"),
        "{e}"
    );
    assert!(!e.contains(": a "), "{e}");
    let e = err("groups: [{name: g, access: {mode: Open}, keys: [{value: a, weight: 0}]}]");
    assert_eq!(
        e,
        "proxy.yaml: groups[0].keys[0].weight: must be at least 1"
    );
    let e = err(
        "groups: [{name: g, access: {mode: Open}, keys: [{value: a}]}, {name: g, access: {mode: Open}, keys: [{value: b}]}]",
    );
    assert!(
        e.contains("groups[1].name: group \"g\" is also groups[0]"),
        "{e}"
    );
    let e = err(
        "groups: [{name: g, access: {mode: Open}, keys: [{value: a}], retry: {waitOnCooldownSeconds: 301}}]",
    );
    assert!(
        e.contains("groups[0].retry.waitOnCooldownSeconds: at most 300"),
        "{e}"
    );
    // The same bounds as the CRD's (keystore::snapshot::bounds).
    for (field, yaml, want) in [
        (
            "retry.maxAttempts",
            "retry: {maxAttempts: 11}",
            "must be from 1 to 10, not 11",
        ),
        (
            "retry.maxAttempts",
            "retry: {maxAttempts: 0}",
            "must be from 1 to 10, not 0",
        ),
        (
            "upstream.timeoutSeconds",
            "upstream: {timeoutSeconds: 0}",
            "must be from 1 to 3600, not 0",
        ),
    ] {
        let e = err(&format!(
            "groups: [{{name: g, access: {{mode: Open}}, keys: [{{value: a}}], {yaml}}}]"
        ));
        assert!(e.contains(&format!("groups[0].{field}: {want}")), "{e}");
    }
    let e = err("listen: nowhere\ngroups: []");
    assert!(e.starts_with("proxy.yaml: listen: "), "{e}");
}

#[test]
fn quick_start_dedupes_and_opens() {
    let s = Settings::quick_start(" k1, k2,,k1 ", None).unwrap();
    assert_eq!(s.groups.len(), 1);
    assert_eq!(s.groups[0].keys.len(), 2);
    assert_eq!(s.groups[0].access.mode, AccessMode::Open);
    assert_eq!(s.default_group.as_deref(), Some("default"));
    assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
    assert!(Settings::quick_start(" , ", None).is_err());
    let s = Settings::quick_start("k", Some("http://127.0.0.1:9/")).unwrap();
    assert_eq!(s.groups[0].upstream.url, "http://127.0.0.1:9");
    assert!(Settings::quick_start("k", Some("ftp://x")).is_err());
}

#[test]
fn errors_never_hold_key_values() {
    // A key that contains whitespace is rejected without echoing it.
    let e = err("groups: [{name: g, access: {mode: Open}, keys: [{value: 'fake secret'}]}]");
    assert!(!e.contains("fake secret"), "{e}");
}

const STATE_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

#[test]
fn redis_store_with_encryption_key_from_env() {
    let yaml = "store:\n  redis: {url: 'redis://127.0.0.1:6379', keyPrefix: 'gp:', password: {env: RPASS}}\n  encryptionKey: {env: STATE}\n";
    let s = parse(yaml, &[("RPASS", "fake-redis-pass"), ("STATE", STATE_KEY)]).unwrap();
    let store = s.store.expect("a store");
    assert_eq!(store.key_prefix, "gp:");
    assert!(store.encryption_key.is_some());
    match store.target {
        keystore::RedisTarget::Standalone { url } => {
            assert_eq!(url.expose(), "redis://:fake-redis-pass@127.0.0.1:6379")
        }
        other => panic!("{other:?}"),
    }
    assert!(s.groups.is_empty());
}

#[test]
fn sentinel_and_cluster_targets() {
    let yaml = "store:\n  redis: {sentinel: {master: mymaster, urls: ['redis://127.0.0.1:26379', {env: S2}]}}\n  allowPlaintext: true\n";
    let s = parse(yaml, &[("S2", "redis://127.0.0.1:26380")]).unwrap();
    let store = s.store.unwrap();
    assert!(store.encryption_key.is_none());
    assert!(
        matches!(store.target, keystore::RedisTarget::Sentinel { ref master, ref urls } if master == "mymaster" && urls.len() == 2)
    );
    let yaml = format!(
        "store:\n  redis: {{cluster: {{urls: ['redis://127.0.0.1:7000']}}}}\n  encryptionKey: {STATE_KEY}\n"
    );
    let s = parse(&yaml, &[]).unwrap();
    assert!(matches!(
        s.store.unwrap().target,
        keystore::RedisTarget::Cluster { .. }
    ));
}

#[test]
fn store_errors_name_the_field() {
    let e = err("store:\n  redis: {url: 'redis://x:1'}\n");
    assert!(
        e.starts_with("proxy.yaml: store.encryptionKey: key material in Redis must be encrypted"),
        "{e}"
    );
    let e =
        err("store:\n  redis: {url: 'redis://x:1', cluster: {urls: []}}\n  allowPlaintext: true\n");
    assert_eq!(
        e,
        "proxy.yaml: store.redis: give exactly one of url, sentinel, cluster"
    );
    let e = err("store:\n  redis: {url: 'redis://x:1'}\n  encryptionKey: c2hvcnQ=\n");
    assert!(
        e.contains("store.encryptionKey: the state encryption key must be 32 bytes"),
        "{e}"
    );
    let e = err("store:\n  redis: {url: 'http://x:1'}\n  allowPlaintext: true\n");
    assert!(e.starts_with("proxy.yaml: store.redis: "), "{e}");
    let e =
        err("store:\n  redis: {url: 'redis://x:1', keyPrefix: 'a{b}'}\n  allowPlaintext: true\n");
    assert!(e.contains("braces"), "{e}");
    let e = err("store:\n  redis: {url: 'redis://x:1', pasword: x}\n  allowPlaintext: true\n");
    assert!(e.contains("pasword"), "{e}");
}

#[test]
fn limits_and_client_limits() {
    let s = parse(
        "groups: [{name: g, keys: [{value: a}], limits: {requestsPerMinute: 10, tokensPerMinute: 5000, requestsPerDay: 250, learn: false}, access: {clientTokens: [t], clientLimits: {requestsPerMinute: 3, tokensPerMinute: 900}}}]",
        &[],
    )
    .unwrap();
    let g = &s.groups[0];
    assert_eq!(
        g.limits,
        keystore::QuotaLimits {
            requests_per_minute: Some(10),
            tokens_per_minute: Some(5000),
            requests_per_day: Some(250),
            learn: false,
            max_input_tokens_per_request: None,
        }
    );
    assert_eq!(g.access.client_limits.requests_per_minute, Some(3));
    assert_eq!(g.access.client_limits.tokens_per_minute, Some(900));
    let plain = parse(
        "groups: [{name: g, keys: [{value: a}], access: {mode: Open}}]",
        &[],
    )
    .unwrap();
    assert_eq!(plain.groups[0].limits, keystore::QuotaLimits::default());
    let e = err(
        "groups: [{name: g, keys: [{value: a}], access: {mode: Open}, limits: {requestsPerMinute: 0}}]",
    );
    assert!(
        e.contains("groups[0].limits.requestsPerMinute") && e.contains("at least 1"),
        "{e}"
    );
    let e = err(
        "groups: [{name: g, keys: [{value: a}], access: {clientTokens: [t], clientLimits: {tokensPerMinute: 0}}}]",
    );
    assert!(
        e.contains("groups[0].access.clientLimits.tokensPerMinute"),
        "{e}"
    );
    let e = err("groups: [{name: g, keys: [{value: a}], access: {mode: Open}, limits: {rpm: 3}}]");
    assert!(e.contains("rpm"), "{e}");
}

#[test]
fn yaml_errors_name_the_place_and_never_quote_the_file() {
    // A type error on the line of an inline key, and a syntax error right after one.
    for yaml in [
        "groups:\n  - name: g\n    access: {mode: Open}\n    keys:\n      - {value: yaml-secret-value-1, weight: \"yaml-secret-value-2\"}\n",
        "groups:\n  - name: g\n    access: {mode: Open}\n    keys:\n      - value: yaml-secret-value-1\n        weight: [yaml-secret-value-2\n",
    ] {
        let e = err(yaml);
        assert!(e.starts_with("proxy.yaml: (yaml): "), "{e}");
        assert!(e.contains("line "), "no place in {e}");
        assert!(!e.contains("yaml-secret-value"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
    // Field names are still named; a key written where a field name belongs is not.
    let e = err("groups:\n  - name: g\n    wieght: 2\n");
    assert!(e.contains("wieght") && e.contains("line 3"), "{e}");
    let e =
        err("groups:\n  - name: g\n    keys:\n      - yaml-secret-value-written-as-a-field: 1\n");
    assert!(!e.contains("yaml-secret-value"), "{e}");
    assert!(e.contains("line 4"), "{e}");
}

#[test]
fn open_groups_beyond_loopback_need_an_explicit_yes() {
    let open = "listen: \"0.0.0.0:8080\"\ngroups:\n  - {name: g, access: {mode: Open}, keys: [{value: exposure-key-1}]}\n";
    let s = parse(open, &[]).unwrap();
    let e = s.check_exposure("proxy.yaml").unwrap_err().to_string();
    assert!(
        e.starts_with("proxy.yaml: groups[0].access.mode: group \"g\" is Open and the listener 0.0.0.0:8080 is beyond loopback"),
        "{e}"
    );
    assert!(e.contains("allowOpenGroups: true"), "{e}");
    let allowed = parse(&format!("allowOpenGroups: true\n{open}"), &[]).unwrap();
    assert!(allowed.check_exposure("proxy.yaml").is_ok());
    let loopback = parse(&open.replace("0.0.0.0", "127.0.0.1"), &[]).unwrap();
    assert!(loopback.check_exposure("proxy.yaml").is_ok());
    let token = parse(
        "listen: \"0.0.0.0:8080\"\ngroups:\n  - {name: g, access: {clientTokens: [exposure-token]}, keys: [{value: exposure-key-1}]}\n",
        &[],
    )
    .unwrap();
    assert!(token.check_exposure("proxy.yaml").is_ok());
}
