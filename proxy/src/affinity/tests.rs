use super::*;
use http::HeaderValue;

#[test]
fn paths_name_files_caches_and_batches() {
    assert_eq!(
        named_in_path("/v1beta/files/abc-123"),
        Some("files/abc-123")
    );
    assert_eq!(
        named_in_path("/download/v1beta/files/abc:download"),
        Some("files/abc")
    );
    assert_eq!(
        named_in_path("/v1beta/cachedContents/xyz"),
        Some("cachedContents/xyz")
    );
    assert_eq!(named_in_path("/v1/batches/b1:cancel"), Some("batches/b1"));
    assert_eq!(named_in_path("/v1beta/files"), None);
    assert_eq!(
        named_in_path("/v1beta/models/gemini-2.5-flash:generateContent"),
        None
    );
}

#[test]
fn bodies_name_files_and_caches_by_their_fields_only() {
    let body = br#"{"contents":[{"parts":[{"text":"see files/not-a-ref"},{"fileData":{"mimeType":"text/plain","fileUri":"https://generativelanguage.googleapis.com/v1beta/files/f1"}}]}],"cachedContent":"cachedContents/c1"}"#;
    let mut names = named_in_body(body);
    names.sort();
    assert_eq!(names, vec!["cachedContents/c1", "files/f1"]);
    let snake = br#"{"contents":[{"parts":[{"file_data":{"file_uri":"files/f2"}}]}]}"#;
    assert_eq!(named_in_body(snake), vec!["files/f2"]);
    assert!(named_in_body(br#"{"contents":[{"parts":[{"text":"files/x"}]}]}"#).is_empty());
    assert!(named_in_body(b"fileUri but not json").is_empty());
}

#[test]
fn what_a_request_creates() {
    let mut h = HeaderMap::new();
    h.insert("x-goog-upload-command", HeaderValue::from_static("start"));
    assert_eq!(
        Creates::of(&Method::POST, "/upload/v1beta/files", &h),
        Some(Creates::UploadSession)
    );
    assert_eq!(
        Creates::of(&Method::POST, "/upload/v1/files", &HeaderMap::new()),
        Some(Creates::File)
    );
    assert_eq!(
        Creates::of(&Method::POST, "/v1beta/cachedContents", &h),
        Some(Creates::CachedContent)
    );
    assert_eq!(
        Creates::of(&Method::POST, "/v1beta/models/m:batchGenerateContent", &h),
        Some(Creates::Batch)
    );
    assert_eq!(
        Creates::of(&Method::GET, "/v1beta/cachedContents", &h),
        None
    );
}

#[test]
fn created_names_and_lifetimes() {
    let file = br#"{"file": {"name": "files/f1", "uri": "https://x/v1beta/files/f1"}}"#;
    assert_eq!(
        created(Creates::File, file),
        Some(("files/f1".to_owned(), FILE_TTL))
    );
    let batch = br#"{"name": "batches/b1", "metadata": {}}"#;
    assert_eq!(
        created(Creates::Batch, batch),
        Some(("batches/b1".to_owned(), BATCH_TTL))
    );
    let (name, ttl) = created(
        Creates::CachedContent,
        br#"{"name": "cachedContents/c1", "expireTime": "2000-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    assert_eq!(name, "cachedContents/c1");
    assert_eq!(ttl, Duration::from_secs(3600), "expired: the margin only");
    assert_eq!(created(Creates::File, b"{}"), None);
}

#[test]
fn upload_urls_point_back_at_the_proxy_the_client_used() {
    let google = "https://generativelanguage.googleapis.com/upload/v1beta/files?upload_id=AbC&upload_protocol=resumable";
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("gemini-proxy.team-a:8080"));
    assert_eq!(
        rewrite_upload_url(google, &h, None).as_deref(),
        Some(
            "http://gemini-proxy.team-a:8080/upload/v1beta/files?upload_id=AbC&upload_protocol=resumable"
        )
    );
    // HTTP/2 clients name the host in :authority.
    assert_eq!(
        rewrite_upload_url(google, &HeaderMap::new(), Some("h2.local:8080")).as_deref(),
        Some("http://h2.local:8080/upload/v1beta/files?upload_id=AbC&upload_protocol=resumable")
    );
    assert_eq!(rewrite_upload_url(google, &HeaderMap::new(), None), None);
    h.insert(
        "x-forwarded-host",
        HeaderValue::from_static("ai.example.com"),
    );
    h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    assert!(
        rewrite_upload_url(google, &h, None)
            .unwrap()
            .starts_with("https://ai.example.com/upload/v1beta/files?upload_id=AbC")
    );
    assert_eq!(rewrite_upload_url("not a url", &h, None), None);
}

#[test]
fn sessions_are_stored_by_digest() {
    let r = session_resource("AbC-secret-session");
    assert!(r.starts_with("upload:") && !r.contains("AbC"));
    assert_eq!(r, session_resource("AbC-secret-session"));
    assert_eq!(
        upload_id(
            "/upload/v1beta/files",
            Some("upload_id=AbC&upload_protocol=resumable")
        ),
        Some("AbC")
    );
    assert_eq!(upload_id("/v1beta/files", Some("upload_id=AbC")), None);
    // Only chunk commands ride on a session: not a new start, not a one-shot upload.
    let q = Some("upload_id=AbC&upload_protocol=resumable");
    let with = |cmd: &'static str| {
        let mut h = HeaderMap::new();
        h.insert("x-goog-upload-command", HeaderValue::from_static(cmd));
        h
    };
    assert_eq!(
        chunk_of_session(
            &Method::POST,
            "/upload/v1/files",
            q,
            &with("upload, finalize")
        ),
        Some("AbC")
    );
    assert_eq!(
        chunk_of_session(&Method::POST, "/upload/v1/files", q, &with("query")),
        Some("AbC")
    );
    assert_eq!(
        chunk_of_session(&Method::POST, "/upload/v1/files", q, &with("start")),
        None
    );
    assert_eq!(
        chunk_of_session(&Method::POST, "/upload/v1/files", q, &HeaderMap::new()),
        None
    );
    // Only on the upload endpoint, and only POST or PUT: a session is no pass to other calls.
    let cancel = with("cancel");
    assert_eq!(
        chunk_of_session(&Method::PUT, "/upload/v1beta/files", q, &cancel),
        Some("AbC")
    );
    for (m, path) in [
        (Method::DELETE, "/upload/v1beta/files"),
        (Method::GET, "/upload/v1beta/files"),
        (Method::POST, "/upload/v1beta/cachedContents/x"),
        (Method::POST, "/upload/v1beta/files/x:generateContent"),
        (Method::DELETE, "/upload/v1beta/cachedContents/x"),
    ] {
        assert_eq!(chunk_of_session(&m, path, q, &cancel), None, "{m} {path}");
    }
}

#[test]
fn names_longer_than_the_bound_are_neither_looked_up_nor_kept() {
    let long = "x".repeat(MAX_NAME_BYTES);
    let body = format!(
        r#"{{"contents":[{{"parts":[{{"fileData":{{"fileUri":"files/{long}"}}}},{{"fileData":{{"fileUri":"files/ok1"}}}}]}}],"cachedContent":"cachedContents/{long}"}}"#
    );
    assert_eq!(named_in_body(body.as_bytes()), vec!["files/ok1".to_owned()]);
    assert_eq!(named_in_path(&format!("/v1beta/files/{long}")), None);
    assert_eq!(named_in_path("/v1beta/files/ok1"), Some("files/ok1"));
    let id = "u".repeat(MAX_NAME_BYTES + 1);
    assert_eq!(
        upload_id("/upload/v1beta/files", Some(&format!("upload_id={id}"))),
        None
    );
    assert_eq!(
        upload_id("/upload/v1beta/files", Some("upload_id=abc")),
        Some("abc")
    );
}

#[test]
fn the_body_scan_keeps_a_bounded_number_of_names_in_document_order() {
    let parts: Vec<String> = (0..10_000)
        .map(|i| format!(r#"{{"fileData":{{"fileUri":"files/f{i}"}}}}"#))
        .collect();
    let body = format!(
        r#"{{"cachedContent":"cachedContents/c1","contents":[{{"parts":[{}]}}]}}"#,
        parts.join(",")
    );
    let names = named_in_body(body.as_bytes());
    assert_eq!(names.len(), MAX_NAMES);
    assert_eq!(names[0], "cachedContents/c1");
    assert_eq!(names[1], "files/f0");
    // A naming field whose value is not a string is walked like any other.
    let nested = br#"{"fileData":{"fileUri":{"fileName":"files/deep"}},"n":[1,2.5,true,null]}"#;
    assert_eq!(named_in_body(nested), vec!["files/deep"]);
    // Not JSON after a name: nothing.
    assert!(named_in_body(br#"{"fileUri":"files/a", oops"#).is_empty());
}
