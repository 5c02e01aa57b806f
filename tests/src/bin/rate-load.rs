//! Measurement (not a test): latency at a fixed request rate (open loop), for the benchmark.
//!
//! wrk keeps every connection busy (closed loop): its latencies are mostly the queue in front
//! of a saturated machine (by Little's law, 64 connections at 25k req/s wait 2.6 ms on
//! average whatever the server does). This sends requests on a schedule instead, like wrk2:
//! request `i` is due at `i / rate`, spread over the connections, and its latency counts from
//! when it was due, so a slow answer also delays (and is charged for) the requests queued
//! behind it on its connection ("coordinated omission" corrected). Only a late wake-up of this
//! generator's own timer (1 ms granularity) is not charged to the server.
//!
//!   rate-load URL RATE SECONDS [CONNECTIONS] [BODY]
//!   rate-load http://127.0.0.1:8080/v1beta/models/gemini-2.5-flash:generateContent 10000 10
//!
//! Prints one line: `rate R sent N ok K errors E achieved A/s p50 X p90 X p99 X p99.9 X max X`
//! (milliseconds). Answers must carry a `Content-Length` (the canned upstream's do).

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    host_port: String,
    path: String,
    rate: f64,
    seconds: f64,
    connections: usize,
    body: String,
}

fn args() -> Result<Args, String> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 3 {
        return Err("usage: rate-load URL RATE SECONDS [CONNECTIONS] [BODY]".into());
    }
    let rest = a[0]
        .strip_prefix("http://")
        .ok_or("the URL must start with http://")?;
    let (host_port, path) = match rest.find('/') {
        Some(i) => (rest[..i].to_owned(), rest[i..].to_owned()),
        None => (rest.to_owned(), "/".to_owned()),
    };
    let num = |s: &str, what: &str| {
        s.parse::<f64>()
            .map_err(|_| format!("{what}: not a number"))
    };
    Ok(Args {
        host_port,
        path,
        rate: num(&a[1], "RATE")?,
        seconds: num(&a[2], "SECONDS")?,
        connections: a.get(3).map_or(Ok(64.0), |c| num(c, "CONNECTIONS"))? as usize,
        body: a
            .get(4)
            .cloned()
            .unwrap_or_else(|| r#"{"contents":[{"parts":[{"text":"hello"}]}]}"#.to_owned()),
    })
}

/// What one connection saw: latencies in microseconds, and errors.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
}

async fn connection(
    j: usize,
    args: std::sync::Arc<Args>,
    request: std::sync::Arc<Vec<u8>>,
    start: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let c = args.connections;
    let total = (args.rate * args.seconds) as usize;
    // Connected before the clock starts, so that the first requests do not pay for it.
    let mut stream: Option<TcpStream> = TcpStream::connect(&args.host_port).await.ok();
    if let Some(s) = &stream {
        let _ = s.set_nodelay(true);
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut i = j;
    while i < total {
        let due = start + Duration::from_secs_f64(i as f64 / args.rate);
        let now = Instant::now();
        // From when it was due; if this generator's timer woke late while the connection was
        // free, from when it woke instead.
        let counted_from = if due > now {
            tokio::time::sleep_until(due.into()).await;
            Instant::now()
        } else {
            due
        };
        i += c;
        if stream.is_none() {
            match TcpStream::connect(&args.host_port).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                }
                Err(_) => {
                    tally.errors += 1;
                    continue;
                }
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        match exchange(s, &request, &mut buf).await {
            Ok(true) => {
                let us = counted_from.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                tally.latencies_us.push(us);
            }
            Ok(false) => tally.errors += 1,
            Err(_) => {
                tally.errors += 1;
                stream = None;
            }
        }
    }
    tally
}

/// Sends one request and reads its answer: `Ok(true)` for a 2xx.
async fn exchange(s: &mut TcpStream, request: &[u8], buf: &mut [u8]) -> std::io::Result<bool> {
    s.write_all(request).await?;
    let mut filled = 0;
    loop {
        let n = s.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut res = httparse::Response::new(&mut headers);
        let head = match res.parse(&buf[..filled]) {
            Ok(httparse::Status::Complete(h)) => h,
            Ok(httparse::Status::Partial) if filled < buf.len() => continue,
            _ => return Err(std::io::ErrorKind::InvalidData.into()),
        };
        let len = res
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .ok_or(std::io::ErrorKind::InvalidData)?;
        let ok = res.code.is_some_and(|c| (200..300).contains(&c));
        let mut have = filled - head;
        while have < len {
            let n = s.read(buf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            have += n;
        }
        return Ok(ok);
    }
}

fn main() -> ExitCode {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rate-load: {e}");
            return ExitCode::from(2);
        }
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("rate-load: no runtime");
        return ExitCode::FAILURE;
    };
    let request = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
        args.path,
        args.host_port,
        args.body.len(),
        args.body
    )
    .into_bytes();
    let args = std::sync::Arc::new(args);
    let request = std::sync::Arc::new(request);
    let started = Instant::now();
    let tallies = rt.block_on(async {
        // Connections are opened before the clock starts.
        let start = Instant::now() + Duration::from_millis(200);
        let tasks: Vec<_> = (0..args.connections)
            .map(|j| tokio::spawn(connection(j, args.clone(), request.clone(), start)))
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            if let Ok(tally) = t.await {
                out.push(tally);
            }
        }
        out
    });
    let took = started.elapsed().as_secs_f64() - 0.2;
    let mut all: Vec<u32> = tallies
        .iter()
        .flat_map(|t| t.latencies_us.iter().copied())
        .collect();
    let errors: u64 = tallies.iter().map(|t| t.errors).sum();
    all.sort_unstable();
    let ok = all.len();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (all.len() - 1) as f64).round() as usize;
        f64::from(all[i]) / 1000.0
    };
    println!(
        "rate {} sent {} ok {ok} errors {errors} achieved {:.0}/s p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
        args.rate,
        ok as u64 + errors,
        ok as f64 / took.max(1e-9),
        pct(50.0),
        pct(90.0),
        pct(99.0),
        pct(99.9),
        pct(100.0)
    );
    if ok == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
