use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// One piece of an answer: bytes to write, then a pause.
type Part = (Vec<u8>, Duration);

/// A scripted HTTP/1.1 server: for the n-th request it sees (counted over all connections), it
/// writes the parts `script(n, request)` gives, then waits for the next request on that
/// connection, or closes it when the script says so. It records the connections it accepted
/// and the requests (head and body) it read.
struct Upstream {
    addr: Arc<str>,
    accepted: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// What the server does after an answer.
#[derive(Clone, Copy, PartialEq)]
enum After {
    KeepOpen,
    Close,
}

async fn upstream(
    script: impl Fn(usize, &[u8]) -> (Vec<Part>, After) + Send + Sync + 'static,
) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: Arc<str> = Arc::from(listener.local_addr().unwrap().to_string());
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let script = Arc::new(script);
    let (count, seen) = (accepted.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let (script, seen) = (script.clone(), seen.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                loop {
                    // A request: its head, then as many bytes as its content-length says.
                    let request = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length: "))
                                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                            if buf.len() >= end + 4 + len {
                                break buf.drain(..end + 4 + len).collect::<Vec<u8>>();
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let n = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(request.clone());
                        seen.len() - 1
                    };
                    let (parts, after) = script(n, &request);
                    for (bytes, pause) in parts {
                        if s.write_all(&bytes).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(pause).await;
                    }
                    if after == After::Close {
                        return;
                    }
                }
            });
        }
    });
    Upstream {
        addr,
        accepted,
        requests,
    }
}

fn now(bytes: &str) -> Part {
    (bytes.as_bytes().to_vec(), Duration::ZERO)
}

const HELLO: &str = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";

fn hello(_: usize, _: &[u8]) -> (Vec<Part>, After) {
    (vec![now(HELLO)], After::KeepOpen)
}

async fn call(up: &Upstream, method: Method, body: &[u8]) -> Response<Body> {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{}/v1beta/models?x=1", up.addr))
        .body(Bytes::copy_from_slice(body))
        .unwrap();
    send_plain(&up.addr, "up.example:1234", req).await.unwrap()
}

async fn text(res: Response<Body>) -> String {
    let body = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

async fn get(up: &Upstream) -> String {
    text(call(up, Method::GET, b"").await).await
}

#[tokio::test]
async fn a_connection_serves_one_request_after_another() {
    let up = upstream(hello).await;
    for _ in 0..5 {
        assert_eq!(get(&up).await, "hello");
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    let first = String::from_utf8(up.requests.lock().unwrap()[0].clone()).unwrap();
    assert_eq!(
        first,
        "GET /v1beta/models?x=1 HTTP/1.1\r\nhost: up.example:1234\r\n\r\n"
    );
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_replaced() {
    let up = upstream(|_, _| (vec![now(HELLO)], After::Close)).await;
    for _ in 0..3 {
        assert_eq!(get(&up).await, "hello");
        // Let the runtime see the close.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn connection_close_in_the_answer_is_honoured() {
    let up = upstream(|_, _| {
        let res = "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello";
        (vec![now(res)], After::KeepOpen)
    })
    .await;
    for _ in 0..3 {
        assert_eq!(get(&up).await, "hello");
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_body_dropped_early_does_not_return_its_connection() {
    let up = upstream(|_, _| {
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello";
        (vec![now(head), now("world")], After::KeepOpen)
    })
    .await;
    drop(call(&up, Method::GET, b"").await);
    assert_eq!(get(&up).await, "helloworld");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: Arc<str> = Arc::from(listener.local_addr().unwrap().to_string());
    drop(listener);
    let req = Request::get(format!("http://{addr}/"))
        .body(Bytes::new())
        .unwrap();
    let err = send_plain(&addr, "x", req).await.unwrap_err();
    assert_eq!(err.kind(), "connect");
}

#[tokio::test]
async fn chunked_answers_stream_chunk_by_chunk_and_keep_the_connection() {
    let pause = Duration::from_millis(150);
    let up = upstream(move |_, _| {
        let parts = vec![
            now("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"),
            ("12\r\ndata: {\"n\": 1}\r\n\r\n\r\n".as_bytes().to_vec(), pause),
            now("12\r\ndata: {\"n\": 2}\r\n\r\n\r\n0\r\n\r\n"),
        ];
        (parts, After::KeepOpen)
    })
    .await;
    let started = Instant::now();
    let mut body = call(&up, Method::POST, b"{}").await.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let first_at = started.elapsed();
    assert_eq!(&first[..], b"data: {\"n\": 1}\r\n\r\n");
    assert!(
        first_at < pause,
        "the first chunk waited for the second: {first_at:?}"
    );
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&second[..], b"data: {\"n\": 2}\r\n\r\n");
    assert!(started.elapsed() >= pause);
    assert!(body.frame().await.is_none());
    // The next request on the same connection reads the whole stream again.
    assert_eq!(
        get(&up).await,
        "data: {\"n\": 1}\r\n\r\ndata: {\"n\": 2}\r\n\r\n"
    );
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        1,
        "the stream's connection was reused"
    );
}

#[tokio::test]
async fn answers_without_a_length_run_until_the_close() {
    let up = upstream(|_, _| {
        let parts = vec![now("HTTP/1.1 200 OK\r\n\r\npart one, "), now("part two")];
        (parts, After::Close)
    })
    .await;
    assert_eq!(get(&up).await, "part one, part two");
    assert_eq!(get(&up).await, "part one, part two");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_cut_off_answer_is_an_error_not_a_short_body() {
    let up = upstream(|_, _| {
        (
            vec![now("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhel")],
            After::Close,
        )
    })
    .await;
    let res = call(&up, Method::GET, b"").await;
    assert!(res.into_body().collect().await.is_err());
    let chunked = upstream(|_, _| {
        (
            vec![now(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
            )],
            After::Close,
        )
    })
    .await;
    let res = call(&chunked, Method::GET, b"").await;
    assert!(res.into_body().collect().await.is_err());
}

#[tokio::test]
async fn continue_and_empty_answers_keep_the_connection() {
    let up = upstream(|n, _| {
        let res = match n {
            0 => "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            1 => "HTTP/1.1 204 No Content\r\n\r\n",
            _ => "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        };
        (vec![now(res)], After::KeepOpen)
    })
    .await;
    let first = call(&up, Method::POST, b"{}").await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(text(first).await, "ok");
    let empty = call(&up, Method::DELETE, b"").await;
    assert_eq!(empty.status(), StatusCode::NO_CONTENT);
    // Never polled: the connection goes back all the same.
    drop(empty);
    assert_eq!(get(&up).await, "");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_large_body_arrives_whole() {
    let up = upstream(|_, req| {
        let body_len = req.len() - req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4;
        let text = body_len.to_string();
        let res = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        (vec![now(&res)], After::KeepOpen)
    })
    .await;
    let body: Vec<u8> = (0..3 * wire::INLINE_BODY)
        .map(|i| (i % 251) as u8)
        .collect();
    assert_eq!(
        text(call(&up, Method::POST, &body).await).await,
        body.len().to_string()
    );
    let seen = up.requests.lock().unwrap()[0].clone();
    assert!(seen.ends_with(&body));
}

#[tokio::test]
async fn a_big_answer_arrives_whole_in_several_frames() {
    let big: String = (0..600_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let res = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{big}",
        big.len()
    );
    let up = upstream(move |_, _| (vec![now(&res)], After::KeepOpen)).await;
    let mut body = call(&up, Method::GET, b"").await.into_body();
    let mut got = Vec::new();
    let mut frames = 0;
    while let Some(f) = body.frame().await {
        got.extend_from_slice(&f.unwrap().into_data().unwrap());
        frames += 1;
    }
    assert_eq!(got, big.as_bytes());
    assert!(frames > 1);
    assert_eq!(get(&up).await, big);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bytes_after_an_answer_spoil_the_connection() {
    let up = upstream(|_, _| {
        (
            vec![now(&format!("{HELLO}HTTP/1.1 200 OK\r\n"))],
            After::KeepOpen,
        )
    })
    .await;
    assert_eq!(get(&up).await, "hello");
    assert_eq!(get(&up).await, "hello");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_reused_connection_closed_before_any_answer_byte_is_retried_on_a_new_one() {
    // The second request arrives on the pooled connection, and the upstream closes it without a
    // byte (a keep-alive timeout or a restart racing the request).
    let up = upstream(|n, _| {
        if n == 1 {
            (vec![], After::Close)
        } else {
            (vec![now(HELLO)], After::KeepOpen)
        }
    })
    .await;
    assert_eq!(get(&up).await, "hello");
    assert_eq!(
        get(&up).await,
        "hello",
        "the stale connection was not replaced"
    );
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(
        up.requests.lock().unwrap().len(),
        3,
        "sent again exactly once"
    );
}

#[tokio::test]
async fn a_fresh_connection_closed_before_answering_is_an_error() {
    // Not reused: nothing says the request did not arrive, so it is not sent again.
    let up = upstream(|_, _| (vec![], After::Close)).await;
    let req = Request::builder()
        .uri(format!("http://{}/x", up.addr))
        .body(Bytes::new())
        .unwrap();
    let err = send_plain(&up.addr, "up", req)
        .await
        .expect_err("no answer");
    assert!(err.to_string().contains("closed the connection"), "{err}");
    assert_eq!(up.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn transfer_encoding_and_content_length_together_drop_the_length_and_the_connection() {
    let up = upstream(|_, _| {
        let res = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 999\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        (vec![now(res)], After::KeepOpen)
    })
    .await;
    for _ in 0..2 {
        let res = call(&up, Method::GET, b"").await;
        assert!(res.headers().get("content-length").is_none());
        assert_eq!(text(res).await, "hello");
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        2,
        "a connection that answered with both framings was reused"
    );
}

#[tokio::test]
async fn idle_connections_expire() {
    let up = upstream(hello).await;
    assert_eq!(get(&up).await, "hello");
    assert_eq!(idle_connections(), 1);
    // Recent ones stay.
    assert_eq!(sweep(), 1);
    // Make it old, as if IDLE_FOR had passed.
    IDLE.with(|idle| {
        for conns in idle.borrow_mut().values_mut() {
            for c in conns.iter_mut() {
                c.idle_since = std::time::Instant::now() - IDLE_FOR - Duration::from_secs(1);
            }
        }
    });
    assert_eq!(sweep(), 0, "an expired idle connection is still open");
    assert_eq!(idle_connections(), 0);
    assert_eq!(get(&up).await, "hello");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}
