//! Streams pass through as they are produced: chunks arrive spaced, byte for byte as the
//! upstream framed them (SSE with CRLF, JSON arrays, the OpenAI layer's events).

mod support;

use std::time::Duration;

use gemini_proxy_tests::{Behaviour, Client, MockGemini};
use http::Method;
use support::{open_group, start};

const CHUNKS: usize = 5;
const DELAY: Duration = Duration::from_millis(150);

async fn stream(
    p: &support::Running,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (String, Vec<Duration>, http::HeaderMap) {
    let started = std::time::Instant::now();
    let res = p
        .client
        .open(
            Method::POST,
            &format!("{}{path}", p.url),
            headers,
            body.to_owned(),
        )
        .await;
    assert_eq!(res.status(), 200);
    let headers = res.headers().clone();
    let frames = Client::frames(res.into_body(), Duration::from_secs(10)).await;
    let text: String = frames
        .iter()
        .map(|f| String::from_utf8_lossy(&f.data).into_owned())
        .collect();
    (
        text,
        frames.iter().map(|f| f.at - started).collect(),
        headers,
    )
}

fn assert_spaced(times: &[Duration]) {
    assert!(times.len() >= CHUNKS, "{} frames: {times:?}", times.len());
    // The first chunk comes right away, not after the whole stream was produced.
    assert!(times[0] < DELAY * 2, "first chunk after {:?}", times[0]);
    let spread = times[times.len() - 1] - times[0];
    assert!(
        spread >= DELAY * (CHUNKS as u32 - 2),
        "chunks bunched: {times:?}"
    );
}

#[tokio::test]
async fn sse_stream_is_forwarded_chunk_by_chunk_and_byte_exact() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok).set_stream(CHUNKS, DELAY);
    let p = start(&open_group(&["k"], ""), &mock).await;
    let (text, times, headers) = stream(
        &p,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        &[],
        "{}",
    )
    .await;
    assert_spaced(&times);
    assert_eq!(headers["content-type"], "text/event-stream");
    let events: Vec<&str> = text.split_inclusive("\r\n\r\n").collect();
    assert_eq!(events.len(), CHUNKS, "{text:?}");
    for e in &events {
        assert!(e.starts_with("data: {\"candidates\""), "{e:?}");
        assert!(e.ends_with("}\r\n\r\n"), "{e:?}");
    }
    assert!(!text.contains("[DONE]"));
}

#[tokio::test]
async fn json_array_stream_is_forwarded_as_it_comes() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok).set_stream(CHUNKS, DELAY);
    let p = start(&open_group(&["k"], ""), &mock).await;
    let (text, times, _) = stream(
        &p,
        "/v1/models/gemini-2.5-flash:streamGenerateContent",
        &[],
        "{}",
    )
    .await;
    assert_spaced(&times);
    let v: serde_json::Value = serde_json::from_str(&text).expect("a JSON array");
    assert_eq!(v.as_array().map(Vec::len), Some(CHUNKS));
    assert!(text.starts_with("[{") && text.ends_with("}]"));
}

#[tokio::test]
async fn openai_stream_is_forwarded_as_it_comes() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok).set_stream(CHUNKS, DELAY);
    let p = start(&open_group(&["k"], ""), &mock).await;
    let (text, times, _) = stream(
        &p,
        "/v1/chat/completions",
        &[("authorization", "Bearer anything")],
        r#"{"model":"gemini-2.5-flash","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_spaced(&times);
    assert!(text.ends_with("data: [DONE]\n\n"), "{text:?}");
    assert_eq!(text.matches("chat.completion.chunk").count(), CHUNKS);
}

#[tokio::test]
async fn a_key_counts_as_busy_until_its_stream_ends() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok)
        .set_stream(3, Duration::from_millis(300));
    let p = start(
        &open_group(&["a", "b"], "rotation: {strategy: LeastLoaded}"),
        &mock,
    )
    .await;
    let res = p
        .client
        .open(
            Method::POST,
            &format!("{}/v1beta/models/m:streamGenerateContent?alt=sse", p.url),
            &[],
            "{}",
        )
        .await;
    let first = mock.requests()[0].key.clone();
    // While that stream runs, LeastLoaded sends the next requests to the other key.
    for _ in 0..3 {
        assert_eq!(p.generate().await.status, 200);
    }
    let others: Vec<_> = mock.requests()[1..].iter().map(|s| s.key.clone()).collect();
    assert!(others.iter().all(|k| *k != first), "{first:?} {others:?}");
    drop(Client::frames(res.into_body(), Duration::from_secs(5)).await);
}
