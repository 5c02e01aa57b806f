//! The access log: one JSON line per request, formatted here and handed to the log writer
//! thread, because going through tracing's JSON formatter cost several percent of the request
//! path's CPU. The line has the same shape as the other log lines.

use std::fmt::Write as _;
use std::io::Write as _;

use tracing_appender::non_blocking::NonBlocking;

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
    pub duration_ms: f64,
}

pub const TARGET: &str = "gemini_proxy::access";

/// Whether access lines are wanted (`RUST_LOG` may turn them off).
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

#[derive(Clone)]
pub struct AccessLog {
    writer: NonBlocking,
}

impl AccessLog {
    pub fn new(writer: NonBlocking) -> Self {
        Self { writer }
    }

    pub fn write(&self, e: &Entry<'_>) {
        let line = format_line(e, &jiff::Timestamp::now().to_string());
        let _ = self.writer.clone().write_all(line.as_bytes());
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
        duration_ms = e.duration_ms,
        "request"
    );
}

fn format_line(e: &Entry<'_>, timestamp: &str) -> String {
    let mut s = String::with_capacity(384);
    s.push_str("{\"timestamp\":\"");
    s.push_str(timestamp);
    s.push_str("\",\"level\":\"INFO\",\"message\":\"request\"");
    for (k, v) in [
        ("request_id", e.request_id),
        ("method", e.method),
        ("path", e.path),
        ("api", e.api),
        ("route", e.route),
        ("group", e.group),
        ("client", e.client),
    ] {
        push_field(&mut s, k, v);
    }
    let _ = write!(s, ",\"status\":{}", e.status);
    push_field(&mut s, "key_id", e.key_id);
    let _ = writeln!(
        s,
        ",\"attempts\":{},\"duration_ms\":{:.3},\"target\":\"{TARGET}\"}}",
        e.attempts, e.duration_ms
    );
    s
}

fn push_field(s: &mut String, key: &str, value: &str) {
    s.push_str(",\"");
    s.push_str(key);
    s.push_str("\":\"");
    // Almost every value needs no escape: copy it whole.
    if !value.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        s.push_str(value);
        s.push('"');
        return;
    }
    for c in value.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_with_escapes() {
        let e = Entry {
            request_id: "id\"with\\odd\u{1}chars",
            method: "POST",
            path: "/v1beta/models/m:generateContent",
            api: "native",
            route: "generateContent",
            group: "team-a/keys",
            client: "",
            status: 429,
            key_id: "k-0123456789ab",
            attempts: 2,
            duration_ms: 1.23456,
        };
        let line = format_line(&e, "2026-11-22T03:00:00Z");
        assert!(line.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["request_id"], "id\"with\\odd\u{1}chars");
        assert_eq!(v["status"], 429);
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["duration_ms"], 1.235);
        assert_eq!(v["message"], "request");
        assert_eq!(v["target"], TARGET);
        assert_eq!(v["level"], "INFO");
    }
}
