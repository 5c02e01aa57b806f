//! Measurement (not a test): the upstream 429 rate of quota-aware scheduling against plain
//! round robin, in one run, under the same load.
//!
//! 6 keys in 2 projects, 10 requests per minute per project (the mock enforces it on a sliding
//! minute, answering 429 with `quotaValue` and `RetryInfo` like Google); one client offering 30
//! requests per minute to each arm at once. Each arm is its own `gemini-proxy` process with its
//! own mock, so the arms cannot disturb each other.
//!
//!   cargo build --release --bin gemini-proxy --bin quota-bench
//!   MINUTES=5 target/release/quota-bench [path/to/gemini-proxy]

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use gemini_proxy_tests::{Behaviour, Client, MockGemini, ProxyProcess};
use http::Method;

const KEYS: [(&str, &str); 6] = [
    ("bench-a1", "proj-a"),
    ("bench-a2", "proj-a"),
    ("bench-a3", "proj-a"),
    ("bench-b1", "proj-b"),
    ("bench-b2", "proj-b"),
    ("bench-b3", "proj-b"),
];

struct Arm {
    name: &'static str,
    rotation: &'static str,
    limits: &'static str,
}

const ARMS: [Arm; 3] = [
    Arm {
        name: "round robin, no limits",
        rotation: "RoundRobin",
        limits: "{learn: false}",
    },
    Arm {
        name: "round robin, limits learned from 429s",
        rotation: "RoundRobin",
        limits: "{}",
    },
    Arm {
        name: "quota-aware: LeastLoaded, limits 10 RPM",
        rotation: "LeastLoaded",
        limits: "{requestsPerMinute: 10}",
    },
];

#[derive(Default, Debug)]
struct Tally {
    offered: usize,
    ok: usize,
    proxy_429: usize,
    other: usize,
}

async fn run_arm(bin: &str, arm: &Arm, minutes: f64) -> (Tally, usize, usize) {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    for (k, p) in KEYS {
        mock.project(k, p);
    }
    mock.project_rpm("proj-a", 10).project_rpm("proj-b", 10);
    let keys: Vec<String> = KEYS
        .iter()
        .map(|(k, p)| format!("{{value: {k}, project: {p}}}"))
        .collect();
    let config = format!(
        "defaultGroup: bench\ngroups:\n  - {{name: bench, upstream: {{url: \"{}\"}}, access: {{mode: Open}}, rotation: {{strategy: {}}}, limits: {}, keys: [{}]}}\n",
        mock.url(),
        arm.rotation,
        arm.limits,
        keys.join(", ")
    );
    let proxy = ProxyProcess::with_config(bin, &config, &[("RUST_LOG", "warn")]).await;
    let url = format!(
        "{}/v1beta/models/gemini-2.5-flash:generateContent",
        proxy.url()
    );
    let client = Client::new();
    let mut tally = Tally::default();
    let every = Duration::from_secs(2); // 30 per minute
    let total = (minutes * 30.0).round() as usize;
    let started = Instant::now();
    for i in 0..total {
        let due = started + every * i as u32;
        tokio::time::sleep_until(due.into()).await;
        tally.offered += 1;
        let r = client
            .call(
                Method::POST,
                &url,
                &[],
                r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#,
            )
            .await;
        match r.status.as_u16() {
            200 => tally.ok += 1,
            429 => tally.proxy_429 += 1,
            _ => tally.other += 1,
        }
    }
    let upstream = mock.requests().len();
    let upstream_429 = mock.answered(429);
    drop(proxy);
    (tally, upstream, upstream_429)
}

#[tokio::main]
async fn main() {
    let bin = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/release/gemini-proxy".to_owned());
    let minutes: f64 = std::env::var("MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(5.0);
    println!(
        "6 keys, 2 projects x 10 RPM (sliding minute), client offering 30 RPM per arm, {minutes} min, arms in parallel"
    );
    let results = run_arms(&bin, minutes).await;
    println!(
        "{:<42} {:>8} {:>6} {:>10} {:>9} {:>13} {:>11}",
        "arm", "offered", "200", "proxy 429", "upstream", "upstream 429", "429 rate"
    );
    for (arm, (t, up, up429)) in ARMS.iter().zip(results) {
        let rate = if up == 0 {
            0.0
        } else {
            100.0 * up429 as f64 / up as f64
        };
        println!(
            "{:<42} {:>8} {:>6} {:>10} {:>9} {:>13} {:>10.1}%",
            arm.name, t.offered, t.ok, t.proxy_429, up, up429, rate
        );
        if t.other > 0 {
            println!("  ({} other answers)", t.other);
        }
    }
}

async fn run_arms(bin: &str, minutes: f64) -> Vec<(Tally, usize, usize)> {
    let (a, b, c) = tokio::join!(
        run_arm(bin, &ARMS[0], minutes),
        run_arm(bin, &ARMS[1], minutes),
        run_arm(bin, &ARMS[2], minutes)
    );
    vec![a, b, c]
}
