//! Usage counters per key and per project (quota scope), per minute and per Pacific day.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::secret::KeyId;

/// What some requests used, to be added to the counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageDelta {
    pub group: String,
    pub key: KeyId,
    /// The key's quota scope: its project, or its id when it names none.
    pub scope: String,
    pub requests: u64,
    pub tokens: u64,
    /// When it happened (Unix ms): picks the minute and the day.
    pub at_ms: u64,
}

/// A counting window.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UsageWindow {
    /// Minutes since the Unix epoch.
    Minute(u64),
    /// A date in America/Los_Angeles, `YYYY-MM-DD` (quotas reset at midnight Pacific).
    Day(String),
}

impl UsageWindow {
    pub fn minute_of(at_ms: u64) -> Self {
        Self::Minute(at_ms / 60_000)
    }

    pub fn day_of(at_ms: u64) -> Self {
        Self::Day(crate::pacific::pacific_date(at_ms))
    }

    /// The suffix of the window's storage key: `m:29396160`, `d:2026-11-22`.
    pub fn tag(&self) -> String {
        match self {
            Self::Minute(m) => format!("m:{m}"),
            Self::Day(d) => format!("d:{d}"),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub requests: u64,
    pub tokens: u64,
}

impl Counter {
    pub fn add(&mut self, requests: u64, tokens: u64) {
        self.requests += requests;
        self.tokens += tokens;
    }
}

/// The counters of one group in one window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageCounts {
    pub keys: HashMap<KeyId, Counter>,
    pub scopes: HashMap<String, Counter>,
}

impl UsageCounts {
    /// Adds another window's counters.
    pub fn merge(&mut self, other: &UsageCounts) {
        for (k, c) in &other.keys {
            self.keys
                .entry(k.clone())
                .or_default()
                .add(c.requests, c.tokens);
        }
        for (s, c) in &other.scopes {
            self.scopes
                .entry(s.clone())
                .or_default()
                .add(c.requests, c.tokens);
        }
    }

    /// The compact text a proxy's totals are stored as: one line per key (`k`) and per scope
    /// (`s`), `KIND\tNAME\tREQUESTS\tTOKENS`.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity((self.keys.len() + self.scopes.len()) * 28);
        for (k, c) in &self.keys {
            out.push_str(&format!("k\t{k}\t{}\t{}\n", c.requests, c.tokens));
        }
        for (s, c) in &self.scopes {
            out.push_str(&format!("s\t{s}\t{}\t{}\n", c.requests, c.tokens));
        }
        out
    }

    /// Adds counters written by [`encode`](Self::encode); lines that do not parse (the store is
    /// not trusted) are skipped, and at most `max_lines` are read.
    pub fn add_encoded(&mut self, text: &str, max_lines: usize) {
        for line in text.lines().take(max_lines) {
            let mut f = line.split('\t');
            let (Some(kind), Some(name), Some(r), Some(t), None) =
                (f.next(), f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            let (Ok(r), Ok(t)) = (r.parse::<u64>(), t.parse::<u64>()) else {
                continue;
            };
            if name.is_empty() || name.len() > 256 {
                continue;
            }
            let counter = match kind {
                "k" => self.keys.entry(KeyId::from_raw(name)).or_default(),
                "s" => self.scopes.entry(name.to_owned()).or_default(),
                _ => continue,
            };
            counter.requests = counter.requests.saturating_add(r);
            counter.tokens = counter.tokens.saturating_add(t);
        }
    }

    pub fn add(&mut self, d: &UsageDelta) {
        self.keys
            .entry(d.key.clone())
            .or_default()
            .add(d.requests, d.tokens);
        self.scopes
            .entry(d.scope.clone())
            .or_default()
            .add(d.requests, d.tokens);
    }
}
