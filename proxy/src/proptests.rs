//! Property tests (bounded fuzzing, run by `cargo test`) of what reads untrusted bytes besides
//! the HTTP/1.1 wire code (which has its own, with hyper as the oracle, in
//! `upstream/h1/oracle.rs`): the token scan over streamed answers, the classification of
//! upstream errors, and the config file. No input may panic, and each has a property to keep.
//! Failing cases are kept by proptest in `proptest-regressions/` beside the crate.

use proptest::prelude::*;

use crate::classify::{Verdict, classify};
use crate::config::{Env, Settings};
use crate::token_scan::TokenScan;

/// Bytes that look like answers: fragments of real token fields and numbers among noise.
fn answer_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"\"totalTokenCount\": ".to_vec()),
        Just(b"\"promptTokenCount\":".to_vec()),
        Just(b"\"total_tokens\":".to_vec()),
        Just(b"\"prompt_tokens\" : ".to_vec()),
        "[0-9]{1,25}".prop_map(String::into_bytes),
        Just(b"data: {\"usageMetadata\": {".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ];
    proptest::collection::vec(piece, 0..30).prop_map(|v| v.concat())
}

/// A Google error envelope with arbitrary fields where Google puts its own.
fn error_body() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u16>(),
        "[A-Z_]{0,30}",
        ".{0,60}",
        proptest::collection::vec(
            ("[a-zA-Z.@/]{0,60}", "[A-Z_]{0,30}", "[0-9a-z]{0,12}"),
            0..4,
        ),
    )
        .prop_map(|(code, status, message, details)| {
            let details: Vec<serde_json::Value> = details
                .into_iter()
                .map(|(ty, reason, delay)| {
                    serde_json::json!({
                        "@type": format!("type.googleapis.com/{ty}"),
                        "reason": reason,
                        "retryDelay": delay,
                        "violations": [{"quotaId": reason, "quotaValue": delay,
                                        "quotaDimensions": {"model": ty}}],
                    })
                })
                .collect();
            serde_json::to_vec(&serde_json::json!({"error": {
                "code": code, "status": status, "message": message, "details": details
            }}))
            .unwrap_or_default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// However an answer is cut into chunks, the scan finds what it finds in the whole.
    #[test]
    fn the_token_scan_does_not_depend_on_chunking(
        body in answer_bytes(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut whole = TokenScan::default();
        whole.feed(&body);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
        points.sort_unstable();
        let mut chunked = TokenScan::default();
        let mut at = 0;
        for p in points.into_iter().chain([body.len()]) {
            chunked.feed(&body[at..p]);
            at = p;
        }
        prop_assert_eq!(chunked.tokens(), whole.tokens());
        prop_assert_eq!(chunked.prompt_tokens(), whole.prompt_tokens());
    }

    /// Any status and body: a verdict, never a panic; success is delivered whatever the body.
    #[test]
    fn classification_takes_any_answer(
        status in 100u16..600,
        body in prop_oneof![error_body(), proptest::collection::vec(any::<u8>(), 0..300)],
    ) {
        let Ok(code) = http::StatusCode::from_u16(status) else { return Ok(()); };
        let v = classify(code, &body);
        if code.is_success() {
            prop_assert_eq!(v, Verdict::Deliver);
        }
    }

    /// Any file: settings or an error, never a panic; and an error never quotes the secret
    /// written inline in it, wherever the file breaks.
    #[test]
    fn a_config_error_never_quotes_an_inline_secret(
        cut in 0usize..400,
        junk in "[ -~\n]{0,12}",
        secret in "[A-Za-z0-9_-]{24,40}",
    ) {
        let secret = format!("SECRET{secret}");
        let good = format!(
            "groups:\n  - name: g\n    access: {{mode: Open}}\n    keys:\n      - value: {secret}\n        weight: 2\n      - {{value: \"{secret}x\", project: p}}\n    limits: {{requestsPerMinute: 10}}\n"
        );
        let cut = cut.min(good.len());
        let broken = format!("{}{junk}{}", &good[..cut], &good[cut..]);
        if let Err(e) = Settings::from_yaml(&broken, "fuzz.yaml", &Env::for_test(&[])) {
            let e = e.to_string();
            prop_assert!(!e.contains(&secret), "{}", e);
        }
    }
}
