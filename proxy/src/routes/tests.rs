use super::*;

fn r(method: Method, path: &str, bearer: bool) -> Option<(Api, String, &'static str)> {
    route(&method, path, bearer).map(|r| (r.api, r.upstream_path.into_owned(), r.operation))
}

#[test]
fn native_paths_pass_through_unchanged() {
    for (path, op) in [
        (
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "generateContent",
        ),
        (
            "/v1/models/gemini-2.5-flash:streamGenerateContent",
            "streamGenerateContent",
        ),
        ("/v1beta/models", "models"),
        ("/v1beta/files/abc", "files"),
        ("/v1beta/cachedContents", "cachedContents"),
        ("/upload/v1beta/files", "upload"),
        ("/download/v1beta/files/abc:download", "download"),
        ("/v1alpha/models/x:countTokens", "countTokens"),
    ] {
        assert_eq!(
            r(Method::POST, path, false),
            Some((Api::Native, path.to_owned(), op)),
            "{path}"
        );
    }
}

#[test]
fn openai_layer_and_aliases() {
    assert_eq!(
        r(Method::POST, "/v1beta/openai/chat/completions", true),
        Some((
            Api::OpenAi,
            "/v1beta/openai/chat/completions".into(),
            "chat/completions"
        ))
    );
    for rest in ["chat/completions", "embeddings", "images/generations"] {
        // The alias holds whatever the credential (a curl user may send x-goog-api-key).
        for bearer in [true, false] {
            assert_eq!(
                r(Method::POST, &format!("/v1/{rest}"), bearer).map(|x| (x.0, x.1)),
                Some((Api::OpenAi, format!("/v1beta/openai/{rest}")))
            );
        }
    }
}

#[test]
fn v1_models_collision_is_decided_by_the_credential() {
    // An OpenAI SDK on a /v1 base URL: Bearer.
    assert_eq!(
        r(Method::GET, "/v1/models", true),
        Some((Api::OpenAi, "/v1beta/openai/models".into(), "models"))
    );
    assert_eq!(
        r(Method::GET, "/v1/models/gemini-2.5-flash", true).map(|x| x.1),
        Some("/v1beta/openai/models/gemini-2.5-flash".into())
    );
    // The GenAI SDK: x-goog-api-key, native.
    assert_eq!(
        r(Method::GET, "/v1/models", false),
        Some((Api::Native, "/v1/models".into(), "models"))
    );
    // A native method call stays native even with Bearer.
    assert_eq!(
        r(
            Method::POST,
            "/v1/models/gemini-2.5-flash:generateContent",
            true
        )
        .map(|x| x.0),
        Some(Api::Native)
    );
    assert_eq!(
        r(Method::POST, "/v1/models", true).map(|x| x.0),
        Some(Api::Native)
    );
}

#[test]
fn unknown_paths_have_no_route() {
    for p in [
        "/",
        "/v2/models",
        "/v1",
        "/v1beta",
        "/openai/v1/chat/completions",
        "/admin",
    ] {
        assert_eq!(r(Method::GET, p, false), None, "{p}");
    }
}

#[test]
fn models_are_found_in_path_and_body() {
    assert_eq!(
        model_in_path("/v1beta/models/gemini-2.5-flash:generateContent"),
        Some("gemini-2.5-flash")
    );
    assert_eq!(
        model_in_path("/v1beta/models/gemini-2.5-pro"),
        Some("gemini-2.5-pro")
    );
    assert_eq!(model_in_path("/v1beta/files/x"), None);
    assert_eq!(
        model_in_body(br#"{"messages":[],"model":"models/gemini-2.5-flash"}"#).as_deref(),
        Some("gemini-2.5-flash")
    );
    assert_eq!(model_in_body(b"not json"), None);
}

#[test]
fn segments_are_whole_and_their_ids_end_at_colon_or_slash() {
    let id = |path, kind| segment_after(path, &[kind]).map(|(_, id)| id);
    assert_eq!(id("/v1beta/models/m:x", "models"), Some("m"));
    assert_eq!(id("/v1beta/models/m/operations/o", "models"), Some("m"));
    assert_eq!(id("/v1beta/models/", "models"), None);
    assert_eq!(id("/v1beta/models", "models"), None);
    assert_eq!(id("/v1beta/tunedModels/t:x", "models"), None);
    assert_eq!(id("/v1beta/modelsx/t", "models"), None);
    // An empty id is passed over for a later one.
    assert_eq!(id("/a/files//b/files/c", "files"), Some("c"));
    // Of several kinds, the first in the path wins.
    assert_eq!(
        segment_after("/v1beta/batches/b/files/f", &["files", "batches"]),
        Some(("batches", "b"))
    );
    assert_eq!(
        model_in_path("models/m"),
        None,
        "a path starts with a slash"
    );
}

#[test]
fn paths_that_mean_another_path_once_normalised_are_ambiguous() {
    for p in [
        "/upload/../v1beta/models/m:generateContent",
        "/upload/%2e%2e/v1beta/models/m:generateContent",
        "/upload/%2E./v1beta/files",
        "/v1beta/./models/m:generateContent",
        "/v1beta/models/m:generateContent/..",
        "/upload/v1beta/files/..%2fcachedContents",
        "/v1beta/files/a%2Fb",
        "/v1beta/files/a%5cb",
        "/v1beta/files\\..\\x",
    ] {
        assert!(is_ambiguous_path(p), "{p}");
    }
    for p in [
        "/v1beta/models/gemini-2.5-flash:generateContent",
        "/v1beta/models/gemini-2.0-flash-001:streamGenerateContent",
        "/v1beta/files/abc...",
        "/v1beta/files/...",
        "/v1beta/files/a.b",
        "/v1beta/files/%2e%2e%2e",
        "/v1beta/files/100%25",
        "/v1beta/openai/chat/completions",
    ] {
        assert!(!is_ambiguous_path(p), "{p}");
    }
}

#[test]
fn an_overlong_model_name_counts_as_none() {
    let long = "m".repeat(MAX_MODEL_BYTES + 1);
    let path = format!("/v1beta/models/{long}:generateContent");
    assert_eq!(ModelOf::new(Api::Native, &path, b"").get(), None);
    let body = format!(r#"{{"model":"{long}"}}"#);
    assert_eq!(
        ModelOf::new(
            Api::OpenAi,
            "/v1beta/openai/chat/completions",
            body.as_bytes()
        )
        .get(),
        None
    );
    let fine = r#"{"model":"gemini-2.5-flash"}"#;
    assert_eq!(
        ModelOf::new(
            Api::OpenAi,
            "/v1beta/openai/chat/completions",
            fine.as_bytes()
        )
        .get(),
        Some("gemini-2.5-flash")
    );
}

/// The check as first written (three scans and a split), kept as the oracle for the fast one.
fn ambiguous_by_scans(path: &str) -> bool {
    fn is_dot_segment(seg: &str) -> bool {
        let b = seg.as_bytes();
        let (mut i, mut dots) = (0, 0);
        while i < b.len() {
            if b[i] == b'.' {
                i += 1;
            } else if b[i] == b'%'
                && i + 2 < b.len()
                && b[i + 1] == b'2'
                && (b[i + 2] | 0x20) == b'e'
            {
                i += 3;
            } else {
                return false;
            }
            dots += 1;
        }
        dots == 1 || dots == 2
    }
    let b = path.as_bytes();
    if b.contains(&b'\\') {
        return true;
    }
    let encoded_separator = b
        .windows(3)
        .any(|w| w[0] == b'%' && matches!((w[1], w[2] | 0x20), (b'2', b'f') | (b'5', b'c')));
    encoded_separator || path.split('/').any(is_dot_segment)
}

proptest::proptest! {
    #[test]
    fn the_path_check_agrees_with_the_scans(
        path in proptest::prop_oneof![
            // Dots among other bytes: the vectorised search alone decides.
            "[/.ax-]{0,24}",
            // With `%` and `\\`: the full scan decides.
            "[/.%25eEfFcCa\\\\x]{0,24}",
        ]
    ) {
        proptest::prop_assert_eq!(is_ambiguous_path(&path), ambiguous_by_scans(&path), "{:?}", path);
    }
}
