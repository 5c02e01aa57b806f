//! Quota-aware scheduling and per-client limits against a mock whose projects have real
//! per-minute quotas shared by their keys.

mod support;

use gemini_proxy_tests::MockGemini;
use support::{MODEL_PATH, start};

const KEYS: [&str; 6] = ["qa-1", "qa-2", "qa-3", "qb-1", "qb-2", "qb-3"];

/// 6 keys in 2 projects with 10 requests per minute each, as on the free tier.
async fn two_projects() -> MockGemini {
    let mock = MockGemini::start().await;
    mock.accept_any_key(gemini_proxy_tests::Behaviour::Ok);
    for k in &KEYS[..3] {
        mock.project(k, "proj-a");
    }
    for k in &KEYS[3..] {
        mock.project(k, "proj-b");
    }
    mock.project_rpm("proj-a", 10).project_rpm("proj-b", 10);
    mock
}

fn group(strategy: &str, limits: &str) -> String {
    let keys: Vec<String> = KEYS
        .iter()
        .map(|k| {
            let project = if k.starts_with("qa") {
                "proj-a"
            } else {
                "proj-b"
            };
            format!("{{value: {k}, project: {project}}}")
        })
        .collect();
    format!(
        "defaultGroup: g\ngroups:\n  - {{name: g, upstream: {{url: \"{{mock}}\"}}, access: {{mode: Open}}, rotation: {{strategy: {strategy}}}, limits: {limits}, keys: [{}]}}\n",
        keys.join(", ")
    )
}

/// Sends `n` requests one after the other; returns (answers 200, answers 429 with Retry-After).
async fn offer(p: &support::Running, n: usize) -> (usize, usize) {
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..n {
        let r = p.generate().await;
        match r.status.as_u16() {
            200 => ok += 1,
            429 => {
                let after: u64 = r
                    .header("retry-after")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("429 without Retry-After: {}", r.text()));
                assert!((1..=61).contains(&after), "Retry-After {after}");
                limited += 1;
            }
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    (ok, limited)
}

#[tokio::test]
async fn with_the_projects_limits_google_never_answers_429() {
    let mock = two_projects().await;
    let p = start(&group("LeastLoaded", "{requestsPerMinute: 10}"), &mock).await;
    let (ok, limited) = offer(&p, 30).await;
    assert_eq!((ok, limited), (20, 10), "20 fit the two quotas");
    assert_eq!(mock.answered(429), 0, "the proxy answered the rest itself");
    assert_eq!(mock.requests().len(), 20);
    // The proxy's own 429 says why, in Google's envelope.
    let r = p.generate().await;
    assert_eq!(r.status, 429);
    assert!(r.text().contains("at its quota"), "{}", r.text());
    assert_eq!(r.json()["error"]["status"], "RESOURCE_EXHAUSTED");
}

#[tokio::test]
async fn plain_round_robin_runs_into_googles_429s() {
    let mock = two_projects().await;
    let p = start(&group("RoundRobin", "{learn: false}"), &mock).await;
    let (ok, _) = offer(&p, 30).await;
    assert_eq!(ok, 20);
    assert!(
        mock.answered(429) >= 2,
        "without limits the upstream refuses: {} 429s",
        mock.answered(429)
    );
}

#[tokio::test]
async fn limits_learned_from_a_429_keep_the_rest_of_the_minute_clean() {
    let mock = two_projects().await;
    let p = start(&group("RoundRobin", "{}"), &mock).await;
    let (ok, limited) = offer(&p, 30).await;
    assert_eq!((ok, limited), (20, 10));
    assert!(
        mock.answered(429) <= 2,
        "at most one 429 per project teaches the limit: {}",
        mock.answered(429)
    );
    // Cooldowns end; the learned limit still holds the next request back while the minute is full.
    let groups = p.proxy.app.registry.groups();
    let pool = groups.get("g").unwrap();
    let now = keystore::clock::now_ms();
    assert!(matches!(
        pool.book.quota_room("proj-a", "gemini-2.5-flash", 0, now),
        gemini_proxy::quota::Room::FullUntil(_)
    ));
}

#[tokio::test]
async fn a_token_quota_counts_the_prompt_estimate() {
    let mock = two_projects().await;
    let p = start(&group("RoundRobin", "{tokensPerMinute: 1000}"), &mock).await;
    // About 2,000 tokens of prompt: too big for a project that has already sent something
    // (round robin has reached both projects after four requests).
    let big = format!(
        r#"{{"contents":[{{"parts":[{{"text":"{}"}}]}}]}}"#,
        "x".repeat(8000)
    );
    for _ in 0..4 {
        assert_eq!(p.generate().await.status, 200);
    }
    let r = p.post(MODEL_PATH, &[], &big).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(mock.requests().len(), 4);
    // Small requests still fit.
    assert_eq!(p.generate().await.status, 200);
}

fn clients_group(limits: &str) -> String {
    format!(
        "groups:\n  - {{name: g, upstream: {{url: \"{{mock}}\"}}, keys: [{{value: ck-1}}, {{value: ck-2}}], access: {{clientTokens: [{{name: alice, value: sk-alice}}, {{name: bob, value: sk-bob}}], clientLimits: {limits}}}}}\n"
    )
}

#[tokio::test]
async fn a_client_over_its_limit_gets_429_and_the_others_do_not() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(gemini_proxy_tests::Behaviour::Ok);
    let p = start(&clients_group("{requestsPerMinute: 3}"), &mock).await;
    let alice = [("x-goog-api-key", "sk-alice")];
    let body = r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#;
    for _ in 0..3 {
        assert_eq!(p.post(MODEL_PATH, &alice, body).await.status, 200);
    }
    let r = p.post(MODEL_PATH, &alice, body).await;
    assert_eq!(r.status, 429);
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=61).contains(&after));
    assert!(
        r.text()
            .contains("client alice is over its limit of 3 requests per minute")
    );
    assert_eq!(
        r.json()["error"]["details"][0]["retryDelay"],
        format!("{after}s")
    );
    // The OpenAI layer answers in its own envelope.
    let r = p
        .post(
            "/v1beta/openai/chat/completions",
            &[("authorization", "Bearer sk-alice")],
            r#"{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.json()["error"]["type"],
        "rate_limit_error",
        "{}",
        r.text()
    );
    // Bob is untouched, and Google saw only what was allowed.
    assert_eq!(
        p.post(MODEL_PATH, &[("x-goog-api-key", "sk-bob")], body)
            .await
            .status,
        200
    );
    assert_eq!(mock.requests().len(), 4);
    assert!(
        p.metrics()
            .await
            .contains("gemini_proxy_client_limited_total{group=\"g\"} 2")
    );
}

#[tokio::test]
async fn a_client_token_allowance_counts_the_tokens_answers_report() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(gemini_proxy_tests::Behaviour::Ok);
    // The mock reports 12 tokens per answer.
    let p = start(&clients_group("{tokensPerMinute: 30}"), &mock).await;
    let alice = [("x-goog-api-key", "sk-alice")];
    let body = r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#;
    assert_eq!(p.post(MODEL_PATH, &alice, body).await.status, 200);
    assert_eq!(p.post(MODEL_PATH, &alice, body).await.status, 200);
    assert_eq!(
        p.post(MODEL_PATH, &alice, body).await.status,
        429,
        "24 used, 12 more is over 30"
    );
}

#[tokio::test]
async fn a_prompt_over_the_input_token_guardrail_never_goes_upstream() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(gemini_proxy_tests::Behaviour::Ok);
    let p = start(
        &support::open_group(&["gr-1"], "limits: {maxInputTokensPerRequest: 1000}"),
        &mock,
    )
    .await;
    let prompt = |chars: usize| {
        format!(
            r#"{{"contents":[{{"parts":[{{"text":"{}"}}]}}]}}"#,
            "y".repeat(chars)
        )
    };
    // Native route: 4,000 bytes of text are 1,000 tokens (allowed); 4,004 are 1,001 (refused).
    assert_eq!(p.post(MODEL_PATH, &[], &prompt(4000)).await.status, 200);
    let r = p.post(MODEL_PATH, &[], &prompt(4004)).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["status"], "INVALID_ARGUMENT");
    let msg = r.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        msg.contains("1001 tokens") && msg.contains("limit of 1000"),
        "{msg}"
    );
    // The OpenAI route answers in its own envelope.
    let chat = format!(
        r#"{{"model":"gemini-2.5-flash","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "z".repeat(8000)
    );
    let r = p.post("/v1beta/openai/chat/completions", &[], &chat).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("maxInputTokensPerRequest")
    );
    // countTokens is how clients check a prompt: never refused.
    let r = p
        .post(
            "/v1beta/models/gemini-2.5-flash:countTokens",
            &[],
            &prompt(8000),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        mock.requests().len(),
        2,
        "only the allowed prompt and countTokens went up"
    );
    let metrics = p.metrics().await;
    assert!(
        metrics.contains("gemini_proxy_input_tokens_refused_total{group=\"g\"} 2"),
        "{metrics}"
    );
}
