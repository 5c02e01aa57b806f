//! Serving client connections with bounds on time and count, HTTP/1.1 and HTTP/2 (by ALPN over
//! TLS, by preface in clear), and a graceful shutdown.
//!
//! - [`FIRST_BYTE_TIMEOUT`]: a connection that sends nothing is closed;
//! - [`HEADER_READ_TIMEOUT`]: the request head must arrive within it, from its first byte; an
//!   idle keep-alive connection waiting for its next request is closed after it too;
//! - [`MAX_CONNECTIONS`] per server thread: beyond it new connections are closed at once;
//! - [`MAX_H2_STREAMS`] concurrent streams per HTTP/2 connection, with keep-alive pings that
//!   close a connection whose peer went away.
//!
//! Request bodies have their own deadline (`forward`), answers none: streams run as long as the
//! upstream streams.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower::ServiceExt as _;

use crate::app::Entry;

/// A new connection must send its first byte within this.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(20);
/// A request head must be complete this long after it starts (and a kept-alive connection
/// must start its next request within it).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Open client connections per server thread at most.
pub const MAX_CONNECTIONS: usize = 16_384;
/// Concurrent streams per HTTP/2 connection.
pub const MAX_H2_STREAMS: u32 = 256;
const H2_PING_EVERY: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The connection settings every client connection is served with.
fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .keep_alive_interval(H2_PING_EVERY)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    b
}

/// Serves `listener` until `shutdown` resolves; then stops accepting, lets the requests and
/// streams in flight finish for at most `grace`, and closes what is left.
pub async fn serve<L>(
    mut listener: L,
    service: Entry,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
{
    let builder = builder();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut full_logged = false;
    tokio::pin!(shutdown);
    loop {
        let (io, _) = tokio::select! {
            c = listener.accept() => c,
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Dropping the connection closes it: the client retries elsewhere or later.
            if !full_logged {
                tracing::warn!(
                    max = MAX_CONNECTIONS,
                    "connection limit reached: new connections are closed"
                );
                full_logged = true;
            }
            continue;
        };
        full_logged = false;
        let svc = service
            .clone()
            .map_request(|req: http::Request<Incoming>| req.map(Body::new));
        let conn = builder
            .serve_connection(
                TokioIo::new(FirstByte::new(io)),
                TowerToHyperService::new(svc),
            )
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "client connection ended with an error");
            }
            drop(slot);
        });
    }
    // No new connections from here (the listener closes), and idle ones are closed.
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(grace_s = grace.as_secs(), "shutdown grace over: closing the requests still in flight");
        }
    }
    Ok(())
}

/// A connection that must send its first byte within [`FIRST_BYTE_TIMEOUT`] (hyper's header
/// timeout starts only once it knows the protocol, which it learns from those bytes).
struct FirstByte<IO> {
    io: IO,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> FirstByte<IO> {
    fn new(io: IO) -> Self {
        Self {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(FIRST_BYTE_TIMEOUT))),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FirstByte<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.deadline = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if let Some(d) = self.deadline.as_mut() {
                    ready!(d.as_mut().poll(cx));
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no request within the first-byte timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FirstByte<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
