use super::*;

fn head_of(text: &str, method: &Method) -> Result<Parsed, String> {
    let mut buf = BytesMut::from(text.as_bytes());
    parse_head(&mut buf, method)
}

fn parsed(text: &str) -> Head {
    match head_of(text, &Method::POST) {
        Ok(Parsed::Head(h)) => h,
        other => panic!("{text:?}: {other:?}"),
    }
}

#[test]
fn requests_carry_host_length_and_headers_but_no_hop_headers() {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("x-goog-api-key", HeaderValue::from_static("k"));
    headers.insert(header::HOST, HeaderValue::from_static("client.example"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
    headers.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    let host = HeaderValue::from_static("up.example:8080");
    let wire = encode_request(&Method::POST, "/v1beta/x?alt=sse", &host, &headers, b"{}");
    let text = String::from_utf8(wire).unwrap();
    assert_eq!(
        text,
        "POST /v1beta/x?alt=sse HTTP/1.1\r\nhost: up.example:8080\r\ncontent-type: application/json\r\nx-goog-api-key: k\r\ncontent-length: 2\r\n\r\n{}"
    );
    let get = encode_request(&Method::GET, "", &host, &HeaderMap::new(), b"");
    assert_eq!(get, b"GET / HTTP/1.1\r\nhost: up.example:8080\r\n\r\n");
    let empty_post = encode_request(&Method::POST, "/p", &host, &HeaderMap::new(), b"");
    assert!(
        String::from_utf8(empty_post)
            .unwrap()
            .ends_with("content-length: 0\r\n\r\n")
    );
}

#[test]
fn large_bodies_are_left_for_a_second_write() {
    let body = vec![b'x'; INLINE_BODY + 1];
    let host = HeaderValue::from_static("h");
    let wire = encode_request(&Method::POST, "/p", &host, &HeaderMap::new(), &body);
    let text = String::from_utf8(wire).unwrap();
    assert!(
        text.ends_with(&format!("content-length: {}\r\n\r\n", INLINE_BODY + 1)),
        "{text}"
    );
}

#[test]
fn a_head_is_taken_out_of_the_buffer_and_its_values_kept() {
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Gemini-Service-Tier: standard\r\nContent-Length: 4\r\n\r\nbody"[..],
    );
    let Ok(Parsed::Head(h)) = parse_head(&mut buf, &Method::POST) else {
        panic!("no head");
    };
    assert_eq!(&buf[..], b"body");
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.headers["content-type"], "application/json");
    assert_eq!(h.headers["x-gemini-service-tier"], "standard");
    assert_eq!(h.framing, Framing::Length(4));
    assert!(h.keep_alive);
}

#[test]
fn partial_heads_wait_and_huge_or_broken_ones_fail() {
    assert!(matches!(
        head_of("HTTP/1.1 200 OK\r\nContent-Le", &Method::GET),
        Ok(Parsed::Partial)
    ));
    let huge = format!("HTTP/1.1 200 OK\r\nx-big: {}", "a".repeat(MAX_HEAD + 1));
    assert!(head_of(&huge, &Method::GET).is_err());
    assert!(head_of("HTTP/1.1 2x0 OK\r\n\r\n", &Method::GET).is_err());
    assert!(head_of("SMTP ready\r\n\r\n", &Method::GET).is_err());
    assert!(head_of("HTTP/1.1 101 Switching Protocols\r\n\r\n", &Method::GET).is_err());
}

#[test]
fn informational_answers_are_skipped() {
    let mut buf =
        BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"[..]);
    assert!(matches!(
        parse_head(&mut buf, &Method::POST),
        Ok(Parsed::Informational)
    ));
    let Ok(Parsed::Head(h)) = parse_head(&mut buf, &Method::POST) else {
        panic!("no final head");
    };
    assert_eq!(h.status, StatusCode::NO_CONTENT);
    assert_eq!(h.framing, Framing::Empty);
}

#[test]
fn framing_follows_rfc_9112() {
    assert_eq!(
        parsed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").framing,
        Framing::Chunked
    );
    // Chunked wins over a length.
    assert_eq!(
        parsed("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
            .framing,
        Framing::Chunked
    );
    let gzip = parsed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
    assert_eq!(
        (gzip.framing, gzip.keep_alive),
        (Framing::UntilClose, false)
    );
    let unframed = parsed("HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(
        (unframed.framing, unframed.keep_alive),
        (Framing::UntilClose, false)
    );
    assert_eq!(
        parsed("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n").framing,
        Framing::Empty
    );
    let Ok(Parsed::Head(head)) = head_of(
        "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
        &Method::HEAD,
    ) else {
        panic!("no head");
    };
    assert_eq!(head.framing, Framing::Empty);
    assert_eq!(
        parsed("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n").framing,
        Framing::Length(5)
    );
    assert!(
        head_of(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            &Method::GET
        )
        .is_err()
    );
    assert!(
        head_of(
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            &Method::GET
        )
        .is_err()
    );
}

#[test]
fn reuse_follows_the_connection_header_and_version() {
    assert!(
        !parsed("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").keep_alive
    );
    assert!(
        !parsed("HTTP/1.1 200 OK\r\nConnection: Upgrade, Close\r\nContent-Length: 0\r\n\r\n")
            .keep_alive
    );
    assert!(!parsed("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
    assert!(
        parsed("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n").keep_alive
    );
}

/// Decodes `wire` fed in pieces of `piece` bytes; the data and whether the end was seen.
fn decode(wire: &[u8], piece: usize) -> Result<(Vec<u8>, bool), String> {
    let mut decoder = Chunked::Size;
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for part in wire.chunks(piece) {
        buf.extend_from_slice(part);
        loop {
            match decoder.step(&mut buf)? {
                Step::Data(d) => out.extend_from_slice(&d),
                Step::NeedMore => break,
                Step::End => return Ok((out, buf.is_empty())),
            }
        }
    }
    Ok((out, false))
}

#[test]
fn chunked_bodies_decode_in_any_split() {
    let wire = b"7\r\ndata: {\r\n14;name=value\r\n\"text\": \"hello\"}\r\n\r\n\r\n0\r\nServer-Timing: gfet4t7; dur=8\r\n\r\n";
    for piece in 1..wire.len() {
        let (data, clean_end) = decode(wire, piece).unwrap();
        assert_eq!(
            String::from_utf8(data).unwrap(),
            "data: {\"text\": \"hello\"}\r\n\r\n",
            "piece {piece}"
        );
        assert!(clean_end, "piece {piece}");
    }
    // Bare LFs are accepted.
    assert_eq!(decode(b"2\nhi\n0\n\n", 3).unwrap(), (b"hi".to_vec(), true));
}

#[test]
fn broken_chunking_is_an_error() {
    assert!(decode(b"zz\r\nhi\r\n0\r\n\r\n", 64).is_err());
    assert!(decode(b"2\r\nhello\r\n0\r\n\r\n", 64).is_err());
    assert!(decode(b"ffffffffffffffffff\r\n", 64).is_err());
    let long_line = format!("1;{}", "x".repeat(MAX_LINE + 1));
    assert!(decode(long_line.as_bytes(), 64).is_err());
    // Cut off: no end seen.
    assert_eq!(decode(b"5\r\nhel", 64).unwrap(), (b"hel".to_vec(), false));
}
