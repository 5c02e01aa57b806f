//! Every row of the upstream classification table, end to end over loopback HTTP:
//! what the client gets, which keys the mock saw, and what became of each key.

mod support;

use std::time::Duration;

use gemini_proxy_tests::wire::{self, Quota};
use gemini_proxy_tests::{Behaviour, MockGemini};
use keystore::pacific::next_pacific_midnight_ms;
use keystore::{CooldownReason, InvalidReason, KeyState};
use support::{open_group, secs_until, start};

fn quota(quota: Quota, retry_delay: Option<&'static str>) -> Behaviour {
    Behaviour::Quota { quota, retry_delay }
}

#[tokio::test]
async fn per_minute_429_cools_key_for_retry_delay_and_retries_elsewhere() {
    let mock = MockGemini::start().await;
    mock.key("rpm-a", quota(Quota::RequestsPerMinute, Some("20s")))
        .key("ok-b", Behaviour::Ok);
    let p = start(&open_group(&["rpm-a", "ok-b"], ""), &mock).await;
    for _ in 0..4 {
        let r = p.generate().await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(mock.count("rpm-a"), 1, "a cooling key was used again");
    assert_eq!(mock.count("ok-b"), 4);
    match p.state("rpm-a") {
        KeyState::CoolingDown {
            until_ms,
            reason,
            model,
        } => {
            assert_eq!(reason, CooldownReason::PerMinuteQuota);
            assert_eq!(model.as_deref(), Some("gemini-2.5-flash"));
            let s = secs_until(until_ms);
            assert!((18.0..=20.5).contains(&s), "cooling for {s} s");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(p.state("ok-b"), KeyState::Active);
    let m = p.metrics().await;
    assert!(
        m.contains(r#"gemini_proxy_retries_total{group="g",reason="rate_limited"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"gemini_proxy_cooldowns_total{group="g",reason="PerMinuteQuota"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn model_cooldown_leaves_other_models_on_the_key() {
    let mock = MockGemini::start().await;
    mock.script("k", vec![quota(Quota::RequestsPerDay, None), Behaviour::Ok]);
    let p = start(&open_group(&["k"], ""), &mock).await;
    let r = p.generate().await;
    assert_eq!(r.status, 429);
    // gemini-2.5-flash is spent for the day on this key; gemini-2.5-pro is not.
    let r = p
        .post("/v1beta/models/gemini-2.5-pro:generateContent", &[], "{}")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = p.generate().await;
    assert_eq!(r.status, 429);
    assert_eq!(
        mock.count("k"),
        2,
        "the spent model was sent upstream again"
    );
}

#[tokio::test]
async fn per_minute_429_without_retry_info_waits_a_minute() {
    let mock = MockGemini::start().await;
    mock.key("tpm-a", quota(Quota::InputTokensPerMinute, None))
        .key("ok-b", Behaviour::Ok);
    let p = start(&open_group(&["tpm-a", "ok-b"], ""), &mock).await;
    assert_eq!(p.generate().await.status, 200);
    let KeyState::CoolingDown { until_ms, .. } = p.state("tpm-a") else {
        panic!("not cooling")
    };
    let s = secs_until(until_ms);
    assert!((58.0..=60.5).contains(&s), "cooling for {s} s");
}

#[tokio::test]
async fn per_day_429_cools_every_key_of_the_project_until_pacific_midnight() {
    let mock = MockGemini::start().await;
    mock.key("day-a", quota(Quota::RequestsPerDay, Some("30s")))
        .key("same-project-b", Behaviour::Ok)
        .key("other-project-c", Behaviour::Ok);
    let yaml = r#"
defaultGroup: g
groups:
  - name: g
    upstream: {url: "{mock}"}
    access: {mode: Open}
    keys:
      - {value: day-a, project: p1}
      - {value: same-project-b, project: p1}
      - {value: other-project-c, project: p2}
"#;
    let p = start(yaml, &mock).await;
    for _ in 0..3 {
        assert_eq!(p.generate().await.status, 200);
    }
    assert_eq!(
        mock.count("same-project-b"),
        0,
        "a key of the spent project was used"
    );
    assert_eq!(mock.count("other-project-c"), 3);
    let midnight = next_pacific_midnight_ms(keystore::clock::now_ms());
    for k in ["day-a", "same-project-b"] {
        match p.state(k) {
            KeyState::CoolingDown {
                until_ms, reason, ..
            } => {
                assert_eq!(reason, CooldownReason::PerDayQuota);
                assert!(
                    until_ms.abs_diff(midnight) < 2_000,
                    "{k} until {until_ms}, midnight {midnight}"
                );
            }
            other => panic!("{k}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn bare_429_backs_off_this_key_only() {
    let mock = MockGemini::start().await;
    mock.key("bare-a", Behaviour::RateLimitedBare)
        .key("ok-b", Behaviour::Ok);
    let yaml = r#"
defaultGroup: g
groups:
  - name: g
    upstream: {url: "{mock}"}
    access: {mode: Open}
    keys: [{value: bare-a, project: p}, {value: ok-b, project: p}]
"#;
    let p = start(yaml, &mock).await;
    assert_eq!(p.generate().await.status, 200);
    match p.state("bare-a") {
        KeyState::CoolingDown {
            until_ms,
            reason,
            model,
        } => {
            assert_eq!(reason, CooldownReason::RateLimited);
            assert_eq!(model, None);
            let s = secs_until(until_ms);
            assert!((3.0..=5.5).contains(&s), "{s}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.state("ok-b"), KeyState::Active);
}

#[tokio::test]
async fn dead_keys_are_retired_and_never_used_again() {
    let cases = [
        (Behaviour::Invalid, InvalidReason::ApiKeyInvalid),
        (Behaviour::Leaked, InvalidReason::Leaked),
        (Behaviour::ServiceBlocked, InvalidReason::ServiceBlocked),
        (Behaviour::ServiceDisabled, InvalidReason::ServiceDisabled),
        (Behaviour::Suspended, InvalidReason::Suspended),
    ];
    for (behaviour, reason) in cases {
        let mock = MockGemini::start().await;
        mock.key("dead", behaviour.clone()).key("ok", Behaviour::Ok);
        let p = start(&open_group(&["dead", "ok"], ""), &mock).await;
        for _ in 0..5 {
            let r = p.generate().await;
            assert_eq!(r.status, 200, "{behaviour:?}: {}", r.text());
        }
        assert_eq!(mock.count("dead"), 1, "{behaviour:?}");
        assert_eq!(
            p.state("dead"),
            KeyState::Invalid { reason },
            "{behaviour:?}"
        );
        assert!(p.health("dead") < 1.0);
        let ready = p.admin("/readyz").await;
        assert_eq!(ready.status, 200);
        assert!(
            ready.text().contains("1 of 2 keys usable"),
            "{}",
            ready.text()
        );
    }
}

#[tokio::test]
async fn every_key_dead_is_503_and_readyz_says_so() {
    let mock = MockGemini::start().await;
    mock.key("dead", Behaviour::Invalid);
    let p = start(&open_group(&["dead"], ""), &mock).await;
    // The upstream's answer about the key is not passed on: the proxy's own 503, at once.
    let r = p.generate().await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(!r.text().contains("API key not valid"), "{}", r.text());
    let r = p.generate().await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["status"], "UNAVAILABLE");
    // The pod still answers (503 in the client's envelope beats a refused connection).
    let ready = p.admin("/readyz").await;
    assert_eq!(ready.status, 200);
    assert!(
        ready.text().contains("no group has a usable key")
            && ready.text().contains("0 of 1 keys usable"),
        "{}",
        ready.text()
    );
}

#[tokio::test]
async fn client_faults_pass_through_unchanged_and_the_key_is_untouched() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    let p = start(&open_group(&["a", "b"], ""), &mock).await;
    let r = p
        .post(support::MODEL_PATH, &[], r#"{"x":"TRIGGER400"}"#)
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), wire::token_limit_exceeded());
    assert_eq!(r.header("content-type"), Some(wire::JSON));
    let r = p
        .post("/v1beta/models/no-such-model:generateContent", &[], "{}")
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), wire::model_not_found("no-such-model"));
    assert_eq!(mock.requests().len(), 2, "a client error was retried");
    assert_eq!(p.state("a"), KeyState::Active);
    assert_eq!(p.state("b"), KeyState::Active);
}

#[tokio::test]
async fn file_of_another_project_is_not_the_keys_fault() {
    let mock = MockGemini::start().await;
    mock.key("a", Behaviour::FilePermission);
    let p = start(&open_group(&["a"], ""), &mock).await;
    let r = p.get("/v1beta/files/abc", &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), wire::file_permission("files/abc"));
    assert_eq!(p.state("a"), KeyState::Active);
}

#[tokio::test]
async fn server_errors_retry_on_another_key_without_blaming_it() {
    for b in [Behaviour::Internal, Behaviour::Overloaded] {
        let mock = MockGemini::start().await;
        mock.key("flaky", b.clone()).key("ok", Behaviour::Ok);
        let p = start(
            &open_group(&["flaky", "ok"], "rotation: {strategy: RoundRobin}"),
            &mock,
        )
        .await;
        for _ in 0..4 {
            assert_eq!(p.generate().await.status, 200, "{b:?}");
        }
        assert_eq!(p.state("flaky"), KeyState::Active, "{b:?}");
        assert_eq!(p.health("flaky"), 1.0, "{b:?}");
        assert!(mock.count("flaky") >= 1);
    }
}

#[tokio::test]
async fn server_errors_back_off_between_attempts() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Overloaded);
    let p = start(
        &open_group(&["a", "b", "c"], "retry: {maxAttempts: 3}"),
        &mock,
    )
    .await;
    let r = p.generate().await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), wire::overloaded());
    let seen = mock.requests();
    assert_eq!(seen.len(), 3);
    let gap1 = seen[1].at - seen[0].at;
    let gap2 = seen[2].at - seen[1].at;
    assert!(gap1 >= Duration::from_millis(90), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(190), "{gap2:?}");
    let keys: std::collections::HashSet<_> = seen.iter().map(|s| s.key.clone()).collect();
    assert_eq!(keys.len(), 3, "retries must go to other keys");
}

#[tokio::test]
async fn deadline_is_retried_at_most_once() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Deadline);
    let p = start(
        &open_group(&["a", "b", "c", "d"], "retry: {maxAttempts: 4}"),
        &mock,
    )
    .await;
    let r = p.generate().await;
    assert_eq!(r.status, 504);
    assert_eq!(r.text(), wire::deadline_exceeded());
    assert_eq!(mock.requests().len(), 2);
}

#[tokio::test]
async fn timeouts_retry_elsewhere_and_lower_health_without_retiring() {
    let mock = MockGemini::start().await;
    mock.key("slow", Behaviour::Hang).key("ok", Behaviour::Ok);
    let p = start(
        &open_group(
            &["slow", "ok"],
            "upstream: {url: \"{mock}\", timeoutSeconds: 1}",
        ),
        &mock,
    )
    .await;
    let r = p.generate().await;
    assert_eq!(r.status, 200);
    assert!(p.health("slow") < 1.0);
    assert_eq!(p.state("slow"), KeyState::Active);
    let m = p.metrics().await;
    assert!(
        m.contains(r#"gemini_proxy_retries_total{group="g",reason="timeout"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn connection_refused_is_502_in_the_routes_envelope() {
    let mock = MockGemini::start().await;
    let dead = format!(
        "http://127.0.0.1:{}",
        gemini_proxy_tests::process::free_port()
    );
    let p = start(
        &open_group(&["a", "b"], &format!("upstream: {{url: \"{dead}\"}}")),
        &mock,
    )
    .await;
    let r = p.generate().await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["status"], "UNAVAILABLE");
    let r = p
        .post(
            "/v1beta/openai/chat/completions",
            &[("authorization", "Bearer x")],
            "{}",
        )
        .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["type"], "server_error");
    assert_eq!(p.state("a"), KeyState::Active);
}

#[tokio::test]
async fn attempts_are_capped() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Internal);
    let p = start(
        &open_group(&["a", "b", "c", "d"], "retry: {maxAttempts: 2}"),
        &mock,
    )
    .await;
    let r = p.generate().await;
    assert_eq!(r.status, 500);
    assert_eq!(mock.requests().len(), 2);
}

#[tokio::test]
async fn all_keys_cooling_answers_429_with_retry_after_without_calling_upstream() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(quota(Quota::RequestsPerMinute, Some("30s")));
    let p = start(&open_group(&["a", "b"], "retry: {maxAttempts: 5}"), &mock).await;
    // First request: both keys tried; the proxy's own 429 (not Google's body), Retry-After.
    let r = p.generate().await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["status"], "RESOURCE_EXHAUSTED");
    let after: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((29..=31).contains(&after), "{after}");
    assert_eq!(mock.requests().len(), 2);
    // Then: the proxy answers by itself, in the envelope of the route.
    let r = p.generate().await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        r.json()["error"]["details"][0]["@type"],
        "type.googleapis.com/google.rpc.RetryInfo"
    );
    let r = p
        .post(
            "/v1beta/openai/chat/completions",
            &[("authorization", "Bearer x")],
            r#"{"model":"gemini-2.5-flash","messages":[]}"#,
        )
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        mock.requests().len(),
        2,
        "a request went upstream while every key cooled"
    );
}

#[tokio::test]
async fn cooldown_expires_and_the_key_serves_again() {
    let mock = MockGemini::start().await;
    mock.script(
        "k",
        vec![quota(Quota::RequestsPerMinute, Some("1s")), Behaviour::Ok],
    );
    let p = start(&open_group(&["k"], ""), &mock).await;
    let r = p.generate().await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(p.generate().await.status, 429);
    assert_eq!(mock.count("k"), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(p.generate().await.status, 200);
    assert_eq!(p.state("k"), KeyState::Active);
}

#[tokio::test]
async fn openai_layer_errors_are_classified_too() {
    let mock = MockGemini::start().await;
    mock.key("dead", Behaviour::Invalid)
        .key("rpm", quota(Quota::RequestsPerMinute, Some("9s")))
        .key("ok", Behaviour::Ok);
    let p = start(
        &open_group(&["dead", "rpm", "ok"], "retry: {maxAttempts: 3}"),
        &mock,
    )
    .await;
    let r = p
        .post(
            "/v1beta/openai/chat/completions",
            &[("authorization", "Bearer whatever")],
            r#"{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(matches!(p.state("dead"), KeyState::Invalid { .. }));
    assert!(matches!(p.state("rpm"), KeyState::CoolingDown { .. }));
}

#[tokio::test]
async fn a_short_cooldown_is_waited_out_when_the_group_allows_it() {
    let mock = MockGemini::start().await;
    mock.script(
        "k",
        vec![quota(Quota::RequestsPerMinute, Some("1s")), Behaviour::Ok],
    );
    let p = start(
        &open_group(&["k"], "retry: {maxAttempts: 3, waitOnCooldownSeconds: 5}"),
        &mock,
    )
    .await;
    let started = std::time::Instant::now();
    let r = p.generate().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(mock.count("k"), 2);
}

#[tokio::test]
async fn a_cooldown_longer_than_the_wait_bound_is_answered_at_once() {
    let mock = MockGemini::start().await;
    mock.key("k", quota(Quota::RequestsPerMinute, Some("30s")));
    let p = start(
        &open_group(&["k"], "retry: {maxAttempts: 3, waitOnCooldownSeconds: 2}"),
        &mock,
    )
    .await;
    let started = std::time::Instant::now();
    let r = p.generate().await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(mock.count("k"), 1);
}
