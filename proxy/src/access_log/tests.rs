use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::*;

fn entry(request_id: &str) -> Entry<'_> {
    Entry {
        request_id,
        method: "POST",
        path: "/v1beta/models/m:generateContent",
        api: "native",
        route: "generateContent",
        group: "team-a/keys",
        client: "",
        status: 429,
        key_id: "k-0123456789ab",
        attempts: 2,
        duration: Duration::from_micros(1_234_567),
    }
}

fn line(e: &Entry<'_>, at: SystemTime) -> String {
    let mut out = Vec::new();
    format_line(&mut out, e, at);
    String::from_utf8(out).unwrap()
}

#[test]
fn lines_are_json_with_escapes() {
    let odd = "id\"with\\odd\u{1}chars\u{e9}";
    let line = line(&entry(odd), SystemTime::now());
    assert!(line.ends_with("}\n"));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["request_id"], odd);
    assert_eq!(v["status"], 429);
    assert_eq!(v["attempts"], 2);
    assert_eq!(v["duration_ms"], 1234.567);
    assert_eq!(v["message"], "request");
    assert_eq!(v["target"], TARGET);
    assert_eq!(v["level"], "INFO");
}

#[test]
fn timestamps_are_rfc3339_utc_with_microseconds() {
    for secs in [
        0u64,
        951_782_400,
        1_709_164_799,
        1_764_620_701,
        4_102_444_800,
    ] {
        let at = UNIX_EPOCH + Duration::new(secs, 123_456_789);
        let line = line(&entry("r"), at);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let ts = v["timestamp"].as_str().unwrap();
        let expected = jiff::Timestamp::from_second(secs as i64)
            .unwrap()
            .strftime("%Y-%m-%dT%H:%M:%S.123456Z")
            .to_string();
        assert_eq!(ts, expected);
        // The cached second must not leak into the next one.
        let next = line_ts(at + Duration::from_secs(1));
        assert_ne!(next, ts);
    }
}

fn line_ts(at: SystemTime) -> String {
    let v: serde_json::Value = serde_json::from_str(&line(&entry("r"), at)).unwrap();
    v["timestamp"].as_str().unwrap().to_owned()
}

#[test]
fn millis_keep_three_decimals() {
    let mut s = Vec::new();
    push_millis(&mut s, Duration::from_micros(7));
    s.push(b' ');
    push_millis(&mut s, Duration::from_micros(12_050));
    assert_eq!(String::from_utf8(s).unwrap(), "0.007 12.050");
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn lines(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }
}

#[test]
fn batched_lines_reach_the_writer_without_more_traffic() {
    let sink = Sink::default();
    let (writer, _guard) = tracing_appender::non_blocking(sink.clone());
    let log = AccessLog::new(writer);
    for i in 0..3 {
        log.write(&entry(&i.to_string()));
    }
    // Nothing more is written: the flusher sends the batch on its own.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sink.lines() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sink.lines(), 3);
}

#[test]
fn flush_and_full_batches_hand_every_line_over_in_order() {
    let sink = Sink::default();
    let (writer, guard) = tracing_appender::non_blocking(sink.clone());
    let log = AccessLog::new(writer);
    // More than one batch's worth, then the rest by `flush`.
    let n = 2 * BATCH_BYTES / 200 + 7;
    for i in 0..n {
        log.write(&entry(&i.to_string()));
    }
    log.flush();
    drop(guard); // waits for the writer thread to write what it was handed
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let ids: Vec<usize> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["request_id"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(ids, (0..n).collect::<Vec<_>>());
}

#[test]
fn civil_time_of_a_unix_second() {
    assert_eq!(&civil(0), b"1970-01-01T00:00:00");
    assert_eq!(&civil(1_796_342_400 + 3723), b"2026-12-04T01:02:03");
    assert_eq!(&civil(951_782_400 + 86_399), b"2000-02-29T23:59:59");
}
