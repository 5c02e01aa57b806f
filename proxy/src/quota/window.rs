//! Counting windows kept in memory: a sliding minute of one-second buckets, and a Pacific day.

/// A request is counted for this long. One second more than Google's minute: a bucket holds a
/// whole second, and a request sent late in it must not leave the count before Google's does.
pub const WINDOW_MS: u64 = 61_000;
const SECONDS: usize = (WINDOW_MS / 1000) as usize;

/// Requests and tokens over the last [`WINDOW_MS`], in one-second buckets.
#[derive(Clone, Debug)]
pub struct Minute {
    /// (second since the epoch, requests, tokens), indexed by second % SECONDS.
    buckets: [(u64, u64, u64); SECONDS],
}

impl Default for Minute {
    fn default() -> Self {
        Self {
            buckets: [(0, 0, 0); SECONDS],
        }
    }
}

impl Minute {
    fn bucket(&mut self, now_ms: u64) -> &mut (u64, u64, u64) {
        let sec = now_ms / 1000;
        let b = &mut self.buckets[(sec % SECONDS as u64) as usize];
        if b.0 != sec {
            *b = (sec, 0, 0);
        }
        b
    }

    pub fn add(&mut self, now_ms: u64, requests: u64, tokens: u64) {
        let b = self.bucket(now_ms);
        b.1 += requests;
        b.2 += tokens;
    }

    /// Changes the tokens counted at `at_ms` by `delta` (an estimate replaced by the real
    /// figure), if that second is still counted; never below zero.
    pub fn adjust_tokens(&mut self, at_ms: u64, delta: i64) {
        let sec = at_ms / 1000;
        let b = &mut self.buckets[(sec % SECONDS as u64) as usize];
        if b.0 == sec {
            b.2 = b.2.saturating_add_signed(delta);
        }
    }

    /// Whether nothing is counted any more.
    pub fn is_empty(&self, now_ms: u64) -> bool {
        self.sum(now_ms) == (0, 0)
    }

    fn live(&self, now_ms: u64) -> impl Iterator<Item = &(u64, u64, u64)> {
        let sec = now_ms / 1000;
        self.buckets
            .iter()
            .filter(move |b| b.0 + (SECONDS as u64) > sec && b.0 <= sec)
    }

    /// (requests, tokens) in the last minute.
    pub fn sum(&self, now_ms: u64) -> (u64, u64) {
        self.live(now_ms)
            .fold((0, 0), |(r, t), b| (r + b.1, t + b.2))
    }

    /// When the oldest counted request leaves the window (Unix ms), if any is counted.
    pub fn oldest_expiry(&self, now_ms: u64) -> Option<u64> {
        self.live(now_ms)
            .filter(|b| b.1 > 0 || b.2 > 0)
            .map(|b| (b.0 + SECONDS as u64) * 1000)
            .min()
    }
}

/// Requests in the current Pacific day.
#[derive(Clone, Debug, Default)]
pub struct Day {
    /// When the counted day ends (Unix ms); 0 before the first use.
    ends_ms: u64,
    date: String,
    pub requests: u64,
}

impl Day {
    /// Rolls over at midnight America/Los_Angeles. Returns today's date.
    pub fn roll(&mut self, now_ms: u64) -> &str {
        if now_ms >= self.ends_ms {
            self.ends_ms = keystore::pacific::next_pacific_midnight_ms(now_ms);
            self.date = keystore::pacific::pacific_date(now_ms);
            self.requests = 0;
        }
        &self.date
    }

    pub fn ends_ms(&self) -> u64 {
        self.ends_ms
    }
}
