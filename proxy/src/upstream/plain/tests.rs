use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// A tiny HTTP/1.1 server: answers every request on a connection with `hello`, closing the
/// connection after `per_conn` answers. Counts the connections it accepted.
async fn server(per_conn: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                for _ in 0..per_conn {
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&seen).to_string();
                    assert!(
                        head.starts_with("GET /v1beta/models?x=1 HTTP/1.1\r\n"),
                        "{head}"
                    );
                    assert!(
                        head.to_ascii_lowercase()
                            .contains("\r\nhost: up.example:1234\r\n"),
                        "{head}"
                    );
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
                        .await;
                }
            });
        }
    });
    (addr, accepted)
}

async fn get(addr: &Arc<str>) -> String {
    let req = Request::get(format!("http://{addr}/v1beta/models?x=1"))
        .body(Bytes::new())
        .unwrap();
    let host = HeaderValue::from_static("up.example:1234");
    let res = send(addr, &host, req, Duration::from_secs(2))
        .await
        .unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn a_connection_serves_one_request_after_another() {
    let (addr, accepted) = server(100).await;
    let addr: Arc<str> = Arc::from(addr);
    for _ in 0..5 {
        assert_eq!(get(&addr).await, "hello");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_replaced() {
    let (addr, accepted) = server(1).await;
    let addr: Arc<str> = Arc::from(addr);
    for _ in 0..3 {
        assert_eq!(get(&addr).await, "hello");
        // Let the connection's task see the close.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_body_dropped_early_does_not_return_its_connection() {
    let (addr, accepted) = server(100).await;
    let addr: Arc<str> = Arc::from(addr);
    let req = Request::get(format!("http://{addr}/v1beta/models?x=1"))
        .body(Bytes::new())
        .unwrap();
    let host = HeaderValue::from_static("up.example:1234");
    let res = send(&addr, &host, req, Duration::from_secs(2))
        .await
        .unwrap();
    drop(res);
    assert_eq!(get(&addr).await, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: Arc<str> = Arc::from(listener.local_addr().unwrap().to_string());
    drop(listener);
    let req = Request::get(format!("http://{addr}/"))
        .body(Bytes::new())
        .unwrap();
    let host = HeaderValue::from_static("x");
    let err = send(&addr, &host, req, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "connect");
}
