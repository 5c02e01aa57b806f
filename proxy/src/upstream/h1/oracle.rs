//! The own HTTP/1.1 client against hyper's as the oracle: random answers (status, headers,
//! bodies framed by length, by chunks with random sizes and extensions, or until the close),
//! written to the socket in random pieces, must come out of both clients alike: the same
//! status, the same end-to-end headers, the same body bytes. And no byte sequence whatever makes
//! the head parser or the chunked decoder panic.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request};
use http_body_util::BodyExt;
use proptest::prelude::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::wire::{self, Chunked, Step};

#[derive(Debug, Clone)]
enum Framing {
    Length,
    Chunked { sizes: Vec<usize>, extension: bool },
    UntilClose,
}

#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    framing: Framing,
    /// Where the bytes are cut into separate writes (fractions of the length).
    cuts: Vec<f64>,
}

fn answer() -> impl Strategy<Value = Answer> {
    let status = prop_oneof![
        Just(200u16),
        Just(201),
        Just(400),
        Just(403),
        Just(429),
        Just(500),
        Just(503)
    ];
    let header = (
        "x-[a-z]{1,12}",
        "[ -~&&[^\\\\]]{0,40}".prop_map(|v: String| v.trim().to_owned()),
    );
    let framing = prop_oneof![
        Just(Framing::Length),
        (proptest::collection::vec(1usize..300, 0..6), any::<bool>())
            .prop_map(|(sizes, extension)| Framing::Chunked { sizes, extension }),
        Just(Framing::UntilClose),
    ];
    (
        status,
        proptest::collection::vec(header, 0..6),
        proptest::collection::vec(any::<u8>(), 0..2000),
        framing,
        proptest::collection::vec(0.0f64..1.0, 0..5),
    )
        .prop_map(|(status, headers, body, framing, cuts)| Answer {
            status,
            headers,
            body,
            framing,
            cuts,
        })
}

/// The answer's bytes on the wire, and whether the connection closes after it.
fn encode(a: &Answer) -> (Vec<u8>, bool) {
    let mut out = format!("HTTP/1.1 {} Whatever\r\n", a.status).into_bytes();
    for (k, v) in &a.headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    match &a.framing {
        Framing::Length => {
            out.extend_from_slice(format!("content-length: {}\r\n\r\n", a.body.len()).as_bytes());
            out.extend_from_slice(&a.body);
            (out, false)
        }
        Framing::UntilClose => {
            out.extend_from_slice(b"connection: close\r\n\r\n");
            out.extend_from_slice(&a.body);
            (out, true)
        }
        Framing::Chunked { sizes, extension } => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            let mut rest: &[u8] = &a.body;
            let mut sizes = sizes.iter().cycle();
            while !rest.is_empty() {
                let n = (*sizes.next().unwrap_or(&rest.len())).min(rest.len());
                let ext = if *extension { ";name=value" } else { "" };
                out.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
                out.extend_from_slice(&rest[..n]);
                out.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            out.extend_from_slice(b"0\r\n\r\n");
            (out, false)
        }
    }
}

/// A server that writes `bytes` in pieces (cut at `cuts`) to every connection, once a request
/// head arrived, then closes if `close`.
async fn serve(bytes: Vec<u8>, cuts: Vec<f64>, close: bool) -> Arc<str> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: Arc<str> = Arc::from(listener.local_addr().expect("addr").to_string());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let bytes = bytes.clone();
            let mut cuts: Vec<usize> = cuts
                .iter()
                .map(|c| (c * bytes.len() as f64) as usize)
                .collect();
            cuts.sort_unstable();
            tokio::spawn(async move {
                // The whole request, body included: a socket closed with unread bytes sends a
                // reset, which may destroy the answer before the client has read it.
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                let whole = |req: &[u8]| {
                    let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") else {
                        return false;
                    };
                    let head = String::from_utf8_lossy(&req[..end]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    req.len() >= end + 4 + len
                };
                while !whole(&req) {
                    match tokio::io::AsyncReadExt::read(&mut s, &mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let mut at = 0;
                for c in cuts.into_iter().chain([bytes.len()]) {
                    if c > at {
                        if s.write_all(&bytes[at..c]).await.is_err() {
                            return;
                        }
                        let _ = s.flush().await;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        at = c;
                    }
                }
                if close {
                    let _ = s.shutdown().await;
                } else {
                    // Keep the connection open a while, as a keep-alive server would.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        }
    });
    addr
}

type Seen = (u16, Vec<(String, String)>, Vec<u8>);

fn end_to_end(headers: &http::HeaderMap) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-"))
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn ours(addr: &Arc<str>) -> Result<Seen, String> {
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1beta/models/m:generateContent")
        .body(Bytes::from_static(b"{}"))
        .map_err(|e| e.to_string())?;
    let res = super::send_plain(addr, "oracle", req)
        .await
        .map_err(|e| e.to_string())?;
    seen(res).await
}

/// Status, end-to-end headers and whole body of an answer, from either client.
async fn seen<B>(res: http::Response<B>) -> Result<Seen, String>
where
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    let status = res.status().as_u16();
    let headers = end_to_end(res.headers());
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, body.to_vec()))
}

async fn hyper_client(addr: &Arc<str>) -> Result<Seen, String> {
    let tcp = tokio::net::TcpStream::connect(&**addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1beta/models/m:generateContent")
        .header("host", "oracle")
        .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
        .map_err(|e| e.to_string())?;
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    seen(res).await
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_own_client_reads_what_hyper_reads(a in answer()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let (bytes, close) = encode(&a);
        let (mine, theirs) = rt.block_on(async {
            let addr = serve(bytes, a.cuts.clone(), close).await;
            (ours(&addr).await, hyper_client(&addr).await)
        });
        let theirs = theirs.expect("hyper reads every generated answer");
        let mine = mine.expect("the own client reads every generated answer");
        prop_assert_eq!(mine.0, theirs.0);
        prop_assert_eq!(&mine.1, &theirs.1);
        prop_assert_eq!(&mine.2, &theirs.2);
        prop_assert_eq!(&mine.2, &a.body);
    }

    #[test]
    fn no_input_makes_the_head_parser_or_the_chunk_decoder_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = wire::parse_head(&mut buf, &Method::GET);
        let mut state = Chunked::Size;
        let mut buf = BytesMut::from(&bytes[..]);
        for _ in 0..64 {
            match state.step(&mut buf) {
                Ok(Step::Data(_)) => continue,
                _ => break,
            }
        }
    }
}
