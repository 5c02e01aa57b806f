//! A lean HTTP/1.1 client, over TCP for `http://` upstreams and over rustls for `https://`
//! ones (Gemini itself): one pool of idle connections per thread and [`Target`], no locks, no
//! task and no channel per request or per connection. nginx's `proxy_pass https://` works the
//! same way: one connection per request in flight, kept alive, TLS sessions resumed.
//!
//! The request's own future writes the request and reads the answer's head; the answer's body
//! reads the socket itself as the client takes it (so a stream is passed on chunk by chunk)
//! and hands the connection back to the pool when it ends. A body dropped before its end
//! takes the connection with it (it cannot carry another request). hyper's client, by
//! contrast, runs every connection as a task of its own and talks to it through channels.

mod wire;

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response};
use http_body::Frame;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use super::UpstreamError;
use wire::{Chunked, Framing, Parsed, Step};

/// Where connections go: an address, and TLS for `https://`. Connections are pooled by
/// [`Target::key`], which also names the trust the TLS connection was verified with, so that a
/// group trusting fewer CAs never reuses a connection another group's CA let through.
pub struct Target {
    key: PoolKey,
    /// `host:port` to connect to.
    addr: Arc<str>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Target {
    /// Plain TCP to `addr` (`host:port`).
    pub fn plain(addr: Arc<str>) -> Self {
        Self {
            key: PoolKey::new(addr.clone()),
            addr,
            tls: None,
        }
    }

    /// TLS to `addr` (`host:port`), checking the certificate for `host` against `config`'s
    /// roots (`trust` names them in the pool key). `config` offers only HTTP/1.1 by ALPN.
    pub fn tls(
        addr: Arc<str>,
        host: &str,
        config: Arc<rustls::ClientConfig>,
        trust: u64,
    ) -> Result<Self, String> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| format!("upstream url: {host:?} is not a TLS server name"))?;
        Ok(Self {
            key: PoolKey::new(Arc::from(format!("tls/{trust:x}/{addr}"))),
            addr,
            tls: Some((TlsConnector::from(config), name)),
        })
    }
}

/// A pool's name with its hash, computed once when the [`Target`] is made rather than on
/// each check-out and check-in.
#[derive(Clone)]
struct PoolKey {
    hash: u64,
    name: Arc<str>,
}

impl PoolKey {
    fn new(name: Arc<str>) -> Self {
        // One hasher for the process: equal names must hash alike whichever group made them.
        static HASHER: std::sync::LazyLock<std::hash::RandomState> =
            std::sync::LazyLock::new(std::hash::RandomState::new);
        Self {
            hash: std::hash::BuildHasher::hash_one(&*HASHER, &*name),
            name,
        }
    }
}

impl PartialEq for PoolKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.name, &other.name) || self.name == other.name
    }
}

impl Eq for PoolKey {}

impl std::hash::Hash for PoolKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// The hasher of the pools' map: a [`PoolKey`] brings its hash along.
#[derive(Default)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is ever called (by `PoolKey`); anything else still hashes.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Pools = HashMap<PoolKey, Vec<Conn>, std::hash::BuildHasherDefault<Prehashed>>;

/// A connection's byte stream: TCP, or TLS over TCP.
type Io = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// Idle connections kept per thread and target; more are closed when they come back.
const MAX_IDLE: usize = 1024;
/// An idle connection older than this is closed (as hyper's pool does), so that a burst of
/// connections does not stay open, and stale, for ever.
const IDLE_FOR: Duration = Duration::from_secs(90);
/// How often each thread closes its expired idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// The first read of an answer reserves this much; reads that fill the room double it.
const READ_MIN: usize = 8 * 1024;
const READ_MAX: usize = 256 * 1024;

thread_local! {
    static IDLE: RefCell<Pools> = RefCell::new(Pools::default());
    static SWEEPER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// One connection to the upstream and what was read from it but not used yet.
struct Conn {
    io: Io,
    buf: BytesMut,
    /// How much the next read may take.
    room: usize,
    /// When it was last given back to the pool.
    idle_since: std::time::Instant,
}

impl Conn {
    /// An idle connection is fit for a request when nothing arrived on it while it waited: no
    /// close, no stray bytes. The runtime's readiness answers without a system call; only
    /// when it reports something is the socket read to see what. Over TLS what arrived may
    /// be a session ticket (TLS 1.3 sends them after the handshake), which leaves the
    /// connection idle; data or a close does not.
    fn still_idle(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let tcp = match &self.io {
            Either::Left(s) => s,
            Either::Right(s) => s.get_ref().0,
        };
        match tcp.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                match &mut self.io {
                    Either::Left(s) => {
                        matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                    }
                    Either::Right(s) => {
                        let mut buf = ReadBuf::new(&mut probe);
                        Pin::new(&mut **s).poll_read(&mut cx, &mut buf).is_pending()
                    }
                }
            }
        }
    }

    /// Reads what the socket has into `buf`; `Ok(0)` is the upstream's close.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.room / 2 {
            self.buf.reserve(self.room);
        }
        let spare = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))?;
        if n == spare {
            self.room = (self.room * 2).min(READ_MAX);
        }
        Poll::Ready(Ok(n))
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

fn checkout(pool: &PoolKey) -> Option<Conn> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let conns = idle.get_mut(pool)?;
        while let Some(mut c) = conns.pop() {
            if c.still_idle() && c.idle_since.elapsed() < IDLE_FOR {
                return Some(c);
            }
        }
        None
    })
}

fn checkin(pool: &PoolKey, mut conn: Conn) {
    conn.room = READ_MIN;
    conn.idle_since = std::time::Instant::now();
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        match idle.get_mut(pool) {
            Some(conns) if conns.len() < MAX_IDLE => conns.push(conn),
            Some(_) => {}
            None => {
                idle.insert(pool.clone(), vec![conn]);
            }
        }
    });
    start_sweeper();
}

/// Closes the idle connections that waited longer than [`IDLE_FOR`]; returns how many are left.
fn sweep() -> usize {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        idle.retain(|_, conns| {
            // Oldest first: the pool is a stack, so they lie at the bottom.
            let expired = conns
                .iter()
                .take_while(|c| c.idle_since.elapsed() >= IDLE_FOR)
                .count();
            conns.drain(..expired);
            !conns.is_empty()
        });
        idle.values().map(Vec::len).sum()
    })
}

/// One sweeper per thread that keeps idle connections, started with the first of them; it
/// stops when the pool is empty (the next check-in starts it again).
fn start_sweeper() {
    if SWEEPER.with(|s| s.replace(true)) {
        return;
    }
    if tokio::runtime::Handle::try_current().is_err() {
        SWEEPER.with(|s| s.set(false));
        return;
    }
    // On the server threads' current-thread runtimes the task runs on this thread, whose pool
    // it sweeps.
    tokio::spawn(async {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            if sweep() == 0 {
                SWEEPER.with(|s| s.set(false));
                return;
            }
        }
    });
}

/// Idle connections this thread keeps.
/// [`send`] over TCP to `addr`, with this `Host` and a 2 s connect timeout.
#[cfg(test)]
async fn send_plain(
    addr: &Arc<str>,
    host: &'static str,
    req: Request<Bytes>,
) -> Result<Response<Body>, UpstreamError> {
    let target = Target::plain(addr.clone());
    send(
        &target,
        &HeaderValue::from_static(host),
        req,
        Duration::from_secs(2),
    )
    .await
}

#[cfg(test)]
fn idle_connections() -> usize {
    IDLE.with(|idle| idle.borrow().values().map(Vec::len).sum())
}

/// A new connection to `target`: TCP, then the TLS handshake if it speaks TLS, both within
/// `connect_timeout`.
async fn connect(target: &Target, connect_timeout: Duration) -> Result<Conn, UpstreamError> {
    let open = async {
        let tcp = TcpStream::connect(&*target.addr)
            .await
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        Ok(match &target.tls {
            None => Either::Left(tcp),
            Some((connector, name)) => Either::Right(Box::new(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| UpstreamError::Connect(format!("TLS handshake: {e}")))?,
            )),
        })
    };
    let io = match tokio::time::timeout(connect_timeout, open).await {
        Err(_) => return Err(UpstreamError::Connect("connect timed out".into())),
        Ok(r) => r?,
    };
    Ok(Conn {
        io,
        buf: BytesMut::new(),
        room: READ_MIN,
        idle_since: std::time::Instant::now(),
    })
}

/// Sends `req` (origin-form or absolute URI) to `target` over a pooled connection, with `host`
/// as its `Host`.
pub async fn send(
    target: &Target,
    host: &HeaderValue,
    req: Request<Bytes>,
    connect_timeout: Duration,
) -> Result<Response<Body>, UpstreamError> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let request = wire::encode_request(&parts.method, path, host, &parts.headers, &body);
    let rest = (body.len() > wire::INLINE_BODY).then_some(&body);

    let (mut conn, mut reused) = match checkout(&target.key) {
        Some(c) => (c, true),
        None => (connect(target, connect_timeout).await?, false),
    };
    // Requests leave in bursts: this one waits until the other connections this thread has
    // ready have made theirs (a yield lasts until the runtime has polled its sockets once
    // more), so that the upstream wakes once for several requests. Each wake-up of a process
    // on another core costs an interrupt there; on 2 cores that was about a tenth of the
    // throughput against the benchmark's upstream.
    tokio::task::yield_now().await;
    loop {
        match write_request(&mut conn.io, &request, rest).await {
            Ok(()) => break,
            // The idle connection was gone and the request did not leave: a new one.
            Err(_) if reused => {
                conn = connect(target, connect_timeout).await?;
                reused = false;
            }
            Err(e) => return Err(UpstreamError::Other(format!("writing the request: {e}"))),
        }
    }
    let mut answered = false;
    let head = loop {
        match wire::parse_head(&mut conn.buf, &parts.method).map_err(UpstreamError::Other)? {
            Parsed::Head(h) => break h,
            Parsed::Informational => continue,
            Parsed::Partial => {}
        }
        let read = conn.fill().await;
        // A reused connection the upstream had closed (its keep-alive ran out, it restarted)
        // fails before any byte of an answer: the request is sent again, once, on a new
        // connection. Nothing was answered, so no key and no attempt is blamed for it.
        if reused && !answered && matches!(read, Ok(0) | Err(_)) {
            reused = false;
            conn = connect(target, connect_timeout).await?;
            write_request(&mut conn.io, &request, rest)
                .await
                .map_err(|e| UpstreamError::Other(format!("writing the request: {e}")))?;
            continue;
        }
        match read {
            Ok(0) => {
                return Err(UpstreamError::Other(
                    "the upstream closed the connection before answering".into(),
                ));
            }
            Ok(_) => answered = true,
            Err(e) => return Err(UpstreamError::Other(format!("reading the answer: {e}"))),
        }
    };

    let mut res = Response::new(Body::empty());
    *res.status_mut() = head.status;
    *res.version_mut() = head.version;
    *res.headers_mut() = head.headers;
    let state = match head.framing {
        Framing::Empty | Framing::Length(0) => State::Done,
        Framing::Length(n) => State::Length(n),
        Framing::Chunked => State::Chunked(Chunked::Size),
        Framing::UntilClose => State::UntilClose,
    };
    let mut body = Answer {
        conn: Some(conn),
        state,
        keep_alive: head.keep_alive,
        pool: target.key.clone(),
    };
    if body.state == State::Done {
        body.finish();
        return Ok(res);
    }
    *res.body_mut() = Body::new(body);
    Ok(res)
}

async fn write_request(io: &mut Io, head: &[u8], rest: Option<&Bytes>) -> std::io::Result<()> {
    io.write_all(head).await?;
    if let Some(body) = rest {
        io.write_all(body).await?;
    }
    // TLS may hold the last record back until flushed; TCP writes through.
    io.flush().await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many body bytes still to come.
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

/// An answer's body, read from its connection as it is polled; the connection goes back to
/// the pool at the body's end.
struct Answer {
    conn: Option<Conn>,
    state: State,
    keep_alive: bool,
    /// The pool it goes back to ([`Target::key`]).
    pool: PoolKey,
}

impl Answer {
    /// The body is over: the connection goes back if it can carry another request (and holds
    /// nothing more: a stray byte would be read as the next answer).
    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
        {
            checkin(&self.pool, conn);
        }
    }

    /// The body is over and its connection cannot carry another request.
    fn close(&mut self) {
        self.conn = None;
        self.state = State::Done;
    }

    fn fail(&mut self, what: &str) -> std::io::Error {
        self.close();
        std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what.to_owned())
    }
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = (conn.buf.len() as u64).min(*left) as usize;
                        let data = conn.buf.split_to(n).freeze();
                        *left -= n as u64;
                        if *left == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Chunked(decoder) => match decoder.step(&mut conn.buf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Step::NeedMore) => {}
                    Err(e) => return Poll::Ready(Some(Err(this.fail(&e)))),
                },
                State::UntilClose => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            // The buffer is used up: read more.
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.state == State::UntilClose => {
                    this.close();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return Poll::Ready(Some(Err(this.fail("the upstream's answer was cut off"))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.close();
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.state {
            State::Length(n) => http_body::SizeHint::with_exact(n),
            State::Done => http_body::SizeHint::with_exact(0),
            _ => http_body::SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod oracle;
#[cfg(test)]
mod tests;
