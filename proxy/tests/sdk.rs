//! The official Python SDKs (`openai`, `google-genai`), unchanged, against the real binary.
//! Needs the test venv: `GEMINI_PROXY_TEST_PYTHON` names its python (scripts/test.sh sets it).

use std::path::Path;

use gemini_proxy_tests::{Behaviour, MockGemini, ProxyProcess};

const BIN: &str = env!("CARGO_BIN_EXE_gemini-proxy");

#[tokio::test]
async fn official_python_sdks_work_unchanged() {
    let python = std::env::var("GEMINI_PROXY_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("GEMINI_PROXY_TEST_PYTHON is not set: run scripts/test.sh, which makes the venv with openai and google-genai")
    });
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    let config = format!(
        "groups:\n  - {{name: g, upstream: {{{}}}, keys: [{{value: sdk-key}}], access: {{clientTokens: [sk-sdk-client]}}}}\n",
        mock.upstream_yaml()
    );
    let p = ProxyProcess::with_config(BIN, &config, &[]).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/sdk/check_sdks.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .env("PROXY_URL", p.url())
        .env("CLIENT_TOKEN", "sk-sdk-client")
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {python}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "SDK checks failed:\n{text}\nproxy logs:\n{}",
        p.logs()
    );
    assert!(text.contains("10 passed, 0 failed"), "{text}");
    // Every SDK call reached the mock with the proxy's key, never the client's token.
    let seen = mock.requests();
    assert!(seen.len() >= 9, "{}", seen.len());
    assert!(seen.iter().all(|s| s.key.as_deref() == Some("sdk-key")));
    let paths: Vec<_> = seen.iter().map(|s| s.path.as_str()).collect();
    assert!(
        paths.contains(&"/v1/models/gemini-2.5-flash:generateContent"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/v1beta/models/gemini-2.5-flash:generateContent"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/v1beta/openai/chat/completions"),
        "{paths:?}"
    );
    // The upload's chunks came back through the proxy (the SDK sent them with no key).
    let uploads = seen
        .iter()
        .filter(|s| s.path.starts_with("/upload/"))
        .count();
    assert!(uploads >= 2, "start and chunks: {paths:?}");
}
