//! No upstream body reaches a client with a key in it. Google names keys in some errors
//! (`Permission denied: Consumer 'api_key:AIza...' has been suspended.`, the consumer again in
//! the ErrorInfo metadata): verdicts about a key are answered with the proxy's own error in the
//! route's envelope, and every other error body passed on is scrubbed of keys, `api_key:`
//! consumers and metadata consumers. Native and OpenAI routes, streaming and not.

mod support;

use gemini_proxy_tests::{Behaviour, MockGemini};
use support::start;

/// Shaped like a Google key (AIza...) but longer than any real one (39 characters), so it
/// cannot be real; and one of the group's own.
const KEY: &str = "AIzaFAKEnotArealKEYtooLONGforGOOGLEtest00001";

fn group(extra: &str) -> String {
    format!(
        "defaultGroup: g\ngroups:\n  - {{name: g, upstream: {{url: \"{{mock}}\"}}, access: {{mode: Open}}, keys: [{{value: {KEY}}}]{extra}}}\n"
    )
}

const ROUTES: [(&str, &str); 4] = [
    ("/v1beta/models/gemini-2.5-flash:generateContent", "{}"),
    (
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        "{}",
    ),
    (
        "/v1beta/openai/chat/completions",
        r#"{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"hi"}]}"#,
    ),
    (
        "/v1beta/openai/chat/completions",
        r#"{"model":"gemini-2.5-flash","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    ),
];

fn no_key_in(text: &str) {
    assert!(!text.contains(KEY), "the key reached the client: {text}");
    assert!(
        !text.contains("AIzaFAKE"),
        "a key shape reached the client: {text}"
    );
    assert!(
        !text.contains("api_key:A"),
        "a consumer reached the client: {text}"
    );
    assert!(
        !text.contains("\"consumer\""),
        "consumer metadata reached the client: {text}"
    );
}

#[tokio::test]
async fn a_suspended_key_is_answered_with_the_proxys_own_error() {
    for (path, body) in ROUTES {
        let mock = MockGemini::start().await;
        mock.key(KEY, Behaviour::Suspended);
        let p = start(&group(""), &mock).await;
        let r = p.post(path, &[("authorization", "Bearer x")], body).await;
        assert_eq!(r.status, 503, "{path}: {}", r.text());
        no_key_in(&r.text());
        assert_eq!(mock.count(KEY), 1, "{path}");
        if path.contains("openai") {
            assert!(r.json()["error"]["message"].is_string(), "{}", r.text());
        } else {
            assert_eq!(r.json()["error"]["status"], "UNAVAILABLE");
        }
    }
}

#[tokio::test]
async fn a_client_error_quoting_the_key_is_passed_on_scrubbed() {
    for (path, body) in ROUTES {
        let mock = MockGemini::start().await;
        mock.key(KEY, Behaviour::BadRequestQuotingKey);
        let p = start(&group(""), &mock).await;
        let r = p.post(path, &[("authorization", "Bearer x")], body).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        let text = r.text();
        no_key_in(&text);
        assert!(
            text.contains("INVALID_ARGUMENT") && text.contains("[redacted]"),
            "{text}"
        );
    }
}
