//! The path production uses: an `https://` upstream reached through rustls with HTTP/1.1 on
//! kept-alive connections (ALPN offers only `http/1.1`), trusting an extra CA from
//! `upstream.caFile`, and refusing a certificate it cannot verify.
//! (The classification, streaming, SDK and affinity suites also run whole over `https://` when
//! `GEMINI_PROXY_TEST_UPSTREAM=https`, as scripts/test.sh does.)

mod support;

use gemini_proxy::config::{Env, Settings};
use gemini_proxy_tests::tls::TestCa;
use gemini_proxy_tests::{Behaviour, MockGemini};
use support::{MODEL_PATH, start};

#[tokio::test]
async fn https_upstream_with_a_ca_file_keeps_its_connection_and_streams() {
    let mock = MockGemini::start_tls("127.0.0.1:0").await;
    mock.accept_any_key(Behaviour::Ok);
    assert!(mock.url().starts_with("https://"));
    let yaml = format!(
        "defaultGroup: g\ngroups:\n  - {{name: g, upstream: {{{}}}, access: {{mode: Open}}, keys: [{{value: tls-key}}]}}\n",
        mock.upstream_yaml()
    );
    let p = start(&yaml, &mock).await;
    let r = p.generate().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].version,
        http::Version::HTTP_11,
        "ALPN chose HTTP/1.1"
    );
    assert_eq!(seen[0].key.as_deref(), Some("tls-key"));
    // One after another, the requests share one TLS connection: it went back to the pool, and
    // the session tickets TLS 1.3 sends after the handshake did not make it look used.
    for _ in 0..5 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(p.generate().await.status, 200);
    }
    assert_eq!(mock.tls_connections(), 1);
    // A stream comes through too, frame by frame.
    mock.set_stream(3, std::time::Duration::from_millis(50));
    let r = p
        .post(
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            &[],
            "{}",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text().matches("data: ").count(), 3, "{}", r.text());
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_not_ignored() {
    let mock = MockGemini::start_tls("127.0.0.1:0").await;
    mock.accept_any_key(Behaviour::Ok);
    // The same upstream without caFile: the test CA is not a web PKI root.
    let yaml = format!(
        "defaultGroup: g\ngroups:\n  - {{name: g, upstream: {{url: \"{}\"}}, access: {{mode: Open}}, retry: {{maxAttempts: 1}}, keys: [{{value: tls-key}}]}}\n",
        mock.url()
    );
    let p = start(&yaml, &mock).await;
    let r = p.post(MODEL_PATH, &[], "{}").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("could not be reached"), "{}", r.text());
    assert!(
        mock.requests().is_empty(),
        "a request reached an unverified upstream"
    );
}

#[test]
fn a_bad_ca_file_is_a_clear_config_error() {
    let dir = gemini_proxy_tests::process::temp_dir("ca");
    let bad = dir.join("bad.pem");
    std::fs::write(
        &bad,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "nothing here\n").expect("write");
    for (file, why) in [
        (bad.display().to_string(), "cannot be a trust root"),
        (empty.display().to_string(), "no certificate"),
        ("/nonexistent/ca.pem".to_owned(), "cannot read"),
    ] {
        let yaml = format!(
            "defaultGroup: g\ngroups:\n  - {{name: g, upstream: {{url: \"https://gemini.internal\", caFile: \"{file}\"}}, access: {{mode: Open}}, keys: [{{value: k}}]}}\n"
        );
        let err = Settings::from_yaml(&yaml, "proxy.yaml", &Env::process())
            .err()
            .unwrap_or_else(|| panic!("{file} was accepted"));
        let text = err.to_string();
        assert!(text.contains("groups[0].upstream.caFile"), "{text}");
        assert!(text.contains(why), "{text}");
    }
    // The test CA itself is fine.
    let yaml = format!(
        "defaultGroup: g\ngroups:\n  - {{name: g, upstream: {{url: \"https://gemini.internal\", caFile: \"{}\"}}, access: {{mode: Open}}, keys: [{{value: k}}]}}\n",
        TestCa::get().ca_file().display()
    );
    let s = Settings::from_yaml(&yaml, "proxy.yaml", &Env::process()).expect("valid");
    assert!(
        s.groups[0]
            .upstream
            .ca_pem
            .as_deref()
            .is_some_and(|p| p.contains("BEGIN CERTIFICATE"))
    );
}
