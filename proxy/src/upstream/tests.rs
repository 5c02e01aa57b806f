use super::*;

fn upstream(url: &str) -> Upstream {
    Upstream::new(&UpstreamSpec {
        url: url.to_owned(),
        ..Default::default()
    })
    .unwrap()
}

fn client(uri: &str) -> Uri {
    uri.parse().unwrap()
}

#[test]
fn unchanged_paths_are_reused_and_complete_for_each_route() {
    let c = client("/v1beta/models/m:streamGenerateContent?alt=sse");
    let origin_form = "/v1beta/models/m:streamGenerateContent?alt=sse";
    for (up, expected) in [
        (upstream("http://gw.internal:8080"), origin_form),
        // `https://` goes through the same HTTP/1.1 pool, over TLS: origin-form too.
        (
            upstream("https://generativelanguage.googleapis.com"),
            origin_form,
        ),
        // Through an egress proxy the whole URL goes.
        (
            egressed("https://generativelanguage.googleapis.com"),
            "https://generativelanguage.googleapis.com/v1beta/models/m:streamGenerateContent?alt=sse",
        ),
    ] {
        let uri = up
            .uri_for(
                &c,
                "/v1beta/models/m:streamGenerateContent",
                Some("alt=sse"),
            )
            .unwrap();
        assert_eq!(uri, expected);
    }
}

fn egressed(url: &str) -> Upstream {
    Upstream::new(&UpstreamSpec {
        url: url.to_owned(),
        egress_proxy: Some(keystore::Secret::new("http://egress.internal:3128")),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn changed_paths_queries_and_base_paths_are_built_anew() {
    let c = client("/v1/chat/completions?key=secret&x=1");
    let egress = egressed("https://generativelanguage.googleapis.com");
    // A rewritten path (the OpenAI alias) and a query without `key`.
    let uri = egress
        .uri_for(&c, "/v1beta/openai/chat/completions", Some("x=1"))
        .unwrap();
    assert_eq!(
        uri,
        "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions?x=1"
    );
    let uri = egress.uri_for(&c, "/v1/chat/completions", None).unwrap();
    assert_eq!(
        uri,
        "https://generativelanguage.googleapis.com/v1/chat/completions"
    );
    // A base path in the upstream URL comes first.
    let based = upstream("http://gw.internal:8080/gemini/");
    let c = client("/v1beta/models");
    assert_eq!(
        based.uri_for(&c, "/v1beta/models", None).unwrap(),
        "/gemini/v1beta/models"
    );
    let based = upstream("https://gw.internal/gemini");
    assert_eq!(
        based.uri_for(&c, "/v1beta/models", Some("x=1")).unwrap(),
        "/gemini/v1beta/models?x=1"
    );
}
