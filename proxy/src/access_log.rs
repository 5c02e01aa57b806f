//! The access log: one JSON line per request, formatted here and handed to the log writer
//! thread in batches, because going through tracing's JSON formatter and its channel once per
//! request cost several percent of the request path's CPU. The line has the same shape as the
//! other log lines.
//!
//! Lines collect in a shared buffer (like nginx's `access_log ... buffer= flush=`): it goes to
//! the writer when it holds [`BATCH_BYTES`], and at the latest [`FLUSH_EVERY`] after its first
//! line, from a small flusher thread; [`AccessLog::flush`] empties it at shutdown.

use std::io::Write as _;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing_appender::non_blocking::NonBlocking;

/// A batch goes to the writer thread once it holds this much.
const BATCH_BYTES: usize = 32 * 1024;
/// How long a line may wait in the batch.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// What one access-log line says.
pub struct Entry<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub api: &'a str,
    pub route: &'a str,
    pub group: &'a str,
    pub client: &'a str,
    pub status: u16,
    pub key_id: &'a str,
    pub attempts: u32,
    pub duration: Duration,
}

pub const TARGET: &str = "gemini_proxy::access";

/// Whether access lines are wanted (`RUST_LOG` may turn them off).
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

#[derive(Clone)]
pub struct AccessLog {
    shared: Arc<Shared>,
}

struct Shared {
    batch: Mutex<Vec<u8>>,
    writer: NonBlocking,
}

impl Shared {
    /// Takes the lines out of `batch`, leaving room for the next ones.
    fn take(batch: &mut Vec<u8>) -> Vec<u8> {
        std::mem::replace(batch, Vec::with_capacity(BATCH_BYTES + 512))
    }

    /// Hands lines to the writer thread (outside the lock).
    fn send(&self, lines: &[u8]) {
        let _ = self.writer.clone().write_all(lines);
    }

    fn flush(&self) {
        let lines = match self.batch.lock() {
            Ok(mut b) if !b.is_empty() => Self::take(&mut b),
            _ => return,
        };
        self.send(&lines);
    }
}

impl AccessLog {
    /// Lines go to `writer`; a flusher thread sends what waits every [`FLUSH_EVERY`] and ends
    /// with the last clone of this log.
    pub fn new(writer: NonBlocking) -> Self {
        let shared = Arc::new(Shared {
            batch: Mutex::new(Vec::with_capacity(BATCH_BYTES + 512)),
            writer,
        });
        let weak: Weak<Shared> = Arc::downgrade(&shared);
        let _ = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    match weak.upgrade() {
                        Some(s) => s.flush(),
                        None => break,
                    }
                }
            });
        Self { shared }
    }

    pub fn write(&self, e: &Entry<'_>) {
        let full = {
            let Ok(mut b) = self.shared.batch.lock() else {
                return;
            };
            format_line(&mut b, e, SystemTime::now());
            if b.len() < BATCH_BYTES {
                return;
            }
            Shared::take(&mut b)
        };
        self.shared.send(&full);
    }

    /// Hands every waiting line to the writer (at shutdown).
    pub fn flush(&self) {
        self.shared.flush();
    }
}

/// Logs through tracing, for embedders that did not set an [`AccessLog`] up.
pub fn via_tracing(e: &Entry<'_>) {
    tracing::info!(
        target: TARGET,
        request_id = e.request_id,
        method = e.method,
        path = e.path,
        api = e.api,
        route = e.route,
        group = e.group,
        client = e.client,
        status = e.status,
        key_id = e.key_id,
        attempts = e.attempts,
        duration_ms = e.duration.as_secs_f64() * 1000.0,
        "request"
    );
}

fn format_line(s: &mut Vec<u8>, e: &Entry<'_>, now: SystemTime) {
    s.extend_from_slice(b"{\"timestamp\":\"");
    push_timestamp(s, now);
    s.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\"");
    push_field(s, "request_id", e.request_id);
    // An HTTP method is a token (RFC 9110 §5.6.2) and the API and route are the proxy's own
    // names: none needs an escape.
    push_plain(s, "method", e.method);
    push_field(s, "path", e.path);
    push_plain(s, "api", e.api);
    push_plain(s, "route", e.route);
    push_field(s, "group", e.group);
    push_field(s, "client", e.client);
    s.extend_from_slice(b",\"status\":");
    push_u64(s, u64::from(e.status));
    push_field(s, "key_id", e.key_id);
    s.extend_from_slice(b",\"attempts\":");
    push_u64(s, u64::from(e.attempts));
    s.extend_from_slice(b",\"duration_ms\":");
    push_millis(s, e.duration);
    s.extend_from_slice(b",\"target\":\"");
    s.extend_from_slice(TARGET.as_bytes());
    s.extend_from_slice(b"\"}\n");
}

/// A field whose value holds no character JSON must escape.
fn push_plain(s: &mut Vec<u8>, key: &str, value: &str) {
    debug_assert!(
        !value.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\'),
        "{key} needs an escape"
    );
    s.extend_from_slice(b",\"");
    s.extend_from_slice(key.as_bytes());
    s.extend_from_slice(b"\":\"");
    s.extend_from_slice(value.as_bytes());
    s.push(b'"');
}

fn push_field(s: &mut Vec<u8>, key: &str, value: &str) {
    s.extend_from_slice(b",\"");
    s.extend_from_slice(key.as_bytes());
    s.extend_from_slice(b"\":\"");
    let bytes = value.as_bytes();
    // Almost every value needs no escape: copy it whole. The test reads every byte, without
    // an early exit or a table, so that it runs 16 or 32 bytes at a time.
    let needs_escape = bytes.iter().fold(false, |any, &b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        s.extend_from_slice(bytes);
        s.push(b'"');
        return;
    }
    for &b in bytes {
        match b {
            b'"' => s.extend_from_slice(b"\\\""),
            b'\\' => s.extend_from_slice(b"\\\\"),
            b'\n' => s.extend_from_slice(b"\\n"),
            b'\r' => s.extend_from_slice(b"\\r"),
            b'\t' => s.extend_from_slice(b"\\t"),
            b if b < 0x20 => {
                s.extend_from_slice(b"\\u00");
                s.push(HEX[usize::from(b >> 4)]);
                s.push(HEX[usize::from(b & 0xf)]);
            }
            // UTF-8 continuation and lead bytes pass unchanged: the value is a `str`.
            b => s.push(b),
        }
    }
    s.push(b'"');
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A number in decimal, without `core::fmt` (this runs for every request).
pub(crate) fn push_u64(s: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    s.extend_from_slice(&digits[i..]);
}

/// `n` with at least `width` digits, zeros in front.
fn push_padded(s: &mut Vec<u8>, n: u64, width: usize) {
    let digits = n.checked_ilog10().map_or(1, |l| l as usize + 1);
    s.extend(std::iter::repeat_n(b'0', width.saturating_sub(digits)));
    push_u64(s, n);
}

/// Milliseconds with three decimals (microsecond precision), as `12.345`.
fn push_millis(s: &mut Vec<u8>, d: Duration) {
    let micros = d.as_micros().min(u128::from(u64::MAX)) as u64;
    push_u64(s, micros / 1000);
    s.push(b'.');
    push_padded(s, micros % 1000, 3);
}

thread_local! {
    /// The formatted `YYYY-MM-DDTHH:MM:SS` of the last second a line was written in.
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// RFC 3339 in UTC with microseconds, as tracing's own lines: `2026-12-01T20:25:01.123456Z`.
fn push_timestamp(s: &mut Vec<u8>, now: SystemTime) {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let prefix = SECOND.with(|c| {
        let (at, text) = c.get();
        if at == secs {
            return text;
        }
        let text = civil(secs);
        c.set((secs, text));
        text
    });
    s.extend_from_slice(&prefix);
    s.push(b'.');
    push_padded(s, u64::from(d.subsec_micros()), 6);
    s.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix second, in UTC (made once per second, see the caller).
fn civil(secs: u64) -> [u8; 19] {
    let mut out = *b"0000-00-00T00:00:00";
    let text = i64::try_from(secs)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S").to_string());
    if let Some(t) = text.filter(|t| t.len() == out.len()) {
        out.copy_from_slice(t.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests;
