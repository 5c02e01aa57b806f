//! Quota-aware scheduling and per-client allowances, shared by every proxy of a store.
//!
//! Google counts a project's requests and input tokens per model per minute, and its requests
//! per Pacific day. A [`Book`] per group counts what this proxy sent (exactly, in a sliding
//! minute of one-second buckets) and what the other proxies sent (their shares of the store's
//! 10-second slots, read every second by [`crate::store_sync`]), against the group's limits or the
//! limits learned from 429s that state their `quotaValue`. A key whose project is predicted to go
//! over is skipped before Google answers 429; when every key's project is full, the request gets
//! 429 with the time the first one has room again (or waits for it, when the group allows).
//!
//! The same counting serves client tokens: requests and tokens per minute per client.
//!
//! Nothing here is looked at unless a limit is known: groups without limits pay nothing.

pub mod window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keystore::rate::{SLOT_MS, SLOTS_KEPT};
use keystore::{ClientLimits, Counter, QuotaLimits, RateCounts, RateDelta, RateWindow};

use window::{Day, Minute, WINDOW_MS};

/// A counter's limits; `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub requests_per_day: Option<u64>,
}

impl Limits {
    fn is_set(&self) -> bool {
        self.requests_per_minute.is_some()
            || self.tokens_per_minute.is_some()
            || self.requests_per_day.is_some()
    }

    /// The tighter of two limits, each field on its own.
    fn tighter(self, other: Limits) -> Limits {
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Limits {
            requests_per_minute: min(self.requests_per_minute, other.requests_per_minute),
            tokens_per_minute: min(self.tokens_per_minute, other.tokens_per_minute),
            requests_per_day: min(self.requests_per_day, other.requests_per_day),
        }
    }
}

/// Counters a book keeps at most; beyond it new names are not counted (and this is logged).
/// Idle counters are dropped every time the counts are shared, so only a flood of made-up model
/// names within one minute reaches it.
const MAX_COUNTERS: usize = 10_000;
/// How long a limit learned from a 429 is trusted; the next 429 teaches it again.
pub const LEARNED_FOR: Duration = Duration::from_secs(3600);
/// Token estimates larger than this are capped (inline media is counted by Google per image or
/// second, not per byte); the answer's figure replaces the estimate.
pub const MAX_TOKEN_ESTIMATE: u64 = 32_768;

/// Which limit a 429 stated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    RequestsPerMinute(u64),
    TokensPerMinute(u64),
    RequestsPerDay(u64),
}

/// Whether a counter has room for one more request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Room {
    /// The share of the tightest limit still free (1.0 with no limit).
    Free(f64),
    /// Over a limit until this time (Unix ms).
    FullUntil(u64),
}

#[derive(Default)]
struct Entry {
    own: Minute,
    own_day: Day,
    /// Not yet written to the store.
    pending: HashMap<RateWindow, Counter>,
    /// The other proxies' counts per 10-second slot, and today's.
    others: Vec<(u64, Counter)>,
    others_day: u64,
    learned: Limits,
    /// When the learned limits were last taught (Unix ms).
    learned_ms: u64,
}

impl Entry {
    /// Counts a request here; its tokens are an estimate, shared with the other proxies only
    /// once [`Entry::settle`] knows the real figure.
    fn charge(&mut self, now_ms: u64, tokens: u64) {
        self.own.add(now_ms, 1, tokens);
        let date = self.own_day.roll(now_ms).to_owned();
        self.own_day.requests += 1;
        self.pending
            .entry(RateWindow::slot_of(now_ms))
            .or_default()
            .add(1, 0);
        self.pending
            .entry(RateWindow::Day(date))
            .or_default()
            .add(1, 0);
    }

    /// Replaces the estimate charged at `charged_ms` with the real figure (or keeps it when the
    /// answer said none), and shares the tokens.
    fn settle(&mut self, charged_ms: u64, estimated: u64, actual: Option<u64>) {
        let tokens = actual.unwrap_or(estimated);
        self.own
            .adjust_tokens(charged_ms, tokens as i64 - estimated as i64);
        if tokens > 0 {
            self.pending
                .entry(RateWindow::slot_of(charged_ms))
                .or_default()
                .add(0, tokens);
        }
    }

    /// Whether the entry holds nothing worth keeping.
    fn idle(&self, now_ms: u64) -> bool {
        self.own.is_empty(now_ms)
            && self.pending.is_empty()
            && self.others.is_empty()
            && self.others_day == 0
            && !self.learned.is_set()
    }

    /// The other proxies' requests and tokens in the minute before `now_ms`, assuming each slot's
    /// counts spread evenly over it; and when the oldest of them leaves the minute.
    fn others_in_minute(&self, now_ms: u64) -> (u64, u64, Option<u64>) {
        let start = now_ms.saturating_sub(WINDOW_MS);
        let (mut r, mut t, mut oldest) = (0.0, 0.0, None::<u64>);
        for (slot, c) in &self.others {
            let (s0, s1) = (slot * SLOT_MS, (slot + 1) * SLOT_MS);
            if s1 <= start || s0 > now_ms || (c.requests == 0 && c.tokens == 0) {
                continue;
            }
            let share = if s0 >= start {
                1.0
            } else {
                (s1 - start) as f64 / SLOT_MS as f64
            };
            r += c.requests as f64 * share;
            t += c.tokens as f64 * share;
            let leaves = s1 + WINDOW_MS;
            oldest = Some(oldest.map_or(leaves, |o| o.min(leaves)));
        }
        (r.ceil() as u64, t.ceil() as u64, oldest)
    }

    fn room(&mut self, limits: Limits, tokens: u64, now_ms: u64) -> Room {
        let limits = if self.learned.is_set()
            && now_ms.saturating_sub(self.learned_ms) > LEARNED_FOR.as_millis() as u64
        {
            self.learned = Limits::default();
            limits
        } else {
            limits
        };
        let (own_r, own_t) = self.own.sum(now_ms);
        let (oth_r, oth_t, oth_oldest) = self.others_in_minute(now_ms);
        let (r, t) = (own_r + oth_r, own_t + oth_t);
        let free_at = || {
            let own = self.own.oldest_expiry(now_ms);
            match (own, oth_oldest) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(now_ms + 1000),
            }
        };
        let mut room: f64 = 1.0;
        if let Some(rpm) = limits.requests_per_minute {
            if r + 1 > rpm {
                return Room::FullUntil(free_at().max(now_ms + 1));
            }
            room = room.min((rpm - r) as f64 / rpm as f64);
        }
        if let Some(tpm) = limits.tokens_per_minute {
            // One request bigger than the whole limit still goes when nothing else is counted.
            if t > 0 && t + tokens > tpm {
                return Room::FullUntil(free_at().max(now_ms + 1));
            }
            room = room.min(tpm.saturating_sub(t) as f64 / tpm as f64);
        }
        if let Some(rpd) = limits.requests_per_day {
            self.own_day.roll(now_ms);
            let used = self.own_day.requests + self.others_day;
            if used + 1 > rpd {
                return Room::FullUntil(self.own_day.ends_ms());
            }
            room = room.min((rpd - used) as f64 / rpd as f64);
        }
        Room::Free(room)
    }
}

/// The counters of one group. Survives snapshot changes (the counters are shared with the
/// group's previous book).
pub struct Book {
    limits: QuotaLimits,
    client_limits: ClientLimits,
    counters: Arc<Mutex<HashMap<String, Entry>>>,
    /// Whether some project limit was learned from a 429.
    learned_any: Arc<AtomicBool>,
}

/// Whether a route's calls count against a project's generate quota (`countTokens`, model
/// lists and files do not).
pub fn counts(operation: &str) -> bool {
    matches!(
        operation,
        "generateContent"
            | "streamGenerateContent"
            | "embedContent"
            | "batchEmbedContents"
            | "chat/completions"
            | "embeddings"
            | "images/generations"
    )
}

/// The counter name of a project's quota on a model.
pub fn quota_name(scope: &str, model: &str) -> String {
    format!("q|{scope}|{model}")
}

/// The counter name of a client's allowance.
pub fn client_name(client: &str) -> String {
    format!("c|{client}")
}

impl Book {
    pub fn new(limits: QuotaLimits, client_limits: ClientLimits, previous: Option<&Book>) -> Self {
        let book = Self {
            limits,
            client_limits,
            counters: previous.map(|p| p.counters.clone()).unwrap_or_default(),
            learned_any: previous.map(|p| p.learned_any.clone()).unwrap_or_default(),
        };
        // New limits from the user replace what was learned under the old ones.
        if previous.is_some_and(|p| p.limits != limits) {
            for e in book.lock().values_mut() {
                e.learned = Limits::default();
            }
            book.learned_any.store(false, Relaxed);
        }
        book
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn configured(&self) -> Limits {
        Limits {
            requests_per_minute: self.limits.requests_per_minute,
            tokens_per_minute: self.limits.tokens_per_minute,
            requests_per_day: self.limits.requests_per_day,
        }
    }

    /// Whether project quotas are checked at all (a limit is configured or was learned).
    pub fn quota_active(&self) -> bool {
        self.configured().is_set() || self.learned_any.load(Relaxed)
    }

    /// Whether client allowances are checked.
    pub fn clients_limited(&self) -> bool {
        self.client_limits.is_set()
    }

    /// Whether anything here must be shared with the other proxies.
    pub fn wants_sharing(&self) -> bool {
        self.quota_active() || self.clients_limited()
    }

    /// Room in the quota of project `scope` on `model` for a request of about `tokens` input tokens.
    pub fn quota_room(&self, scope: &str, model: &str, tokens: u64, now_ms: u64) -> Room {
        let configured = self.configured();
        let mut counters = self.lock();
        match counters.get_mut(&quota_name(scope, model)) {
            Some(e) => {
                let limits = configured.tighter(e.learned);
                e.room(limits, tokens, now_ms)
            }
            None => Entry::default().room(configured, tokens, now_ms),
        }
    }

    /// Counts a request sent on a key of project `scope`.
    pub fn charge_quota(&self, scope: &str, model: &str, tokens: u64, now_ms: u64) {
        self.charge(quota_name(scope, model), tokens, now_ms);
    }

    fn charge(&self, name: String, tokens: u64, now_ms: u64) {
        let mut counters = self.lock();
        let full = counters.len() >= MAX_COUNTERS;
        match counters.get_mut(&name) {
            Some(e) => e.charge(now_ms, tokens),
            None if full => {
                static WARNED: AtomicBool = AtomicBool::new(false);
                if !WARNED.swap(true, Relaxed) {
                    tracing::warn!(
                        max = MAX_COUNTERS,
                        "too many quota counters (made-up model names?): new ones are not counted"
                    );
                }
            }
            None => counters.entry(name).or_default().charge(now_ms, tokens),
        }
    }

    /// Room in a client's allowance for one more request of about `tokens` tokens.
    pub fn client_room(&self, client: &str, tokens: u64, now_ms: u64) -> Room {
        let limits = Limits {
            requests_per_minute: self.client_limits.requests_per_minute,
            tokens_per_minute: self.client_limits.tokens_per_minute,
            requests_per_day: None,
        };
        let mut counters = self.lock();
        match counters.get_mut(&client_name(client)) {
            Some(e) => e.room(limits, tokens, now_ms),
            None => Entry::default().room(limits, tokens, now_ms),
        }
    }

    pub fn charge_client(&self, client: &str, tokens: u64, now_ms: u64) {
        self.charge(client_name(client), tokens, now_ms);
    }

    /// Replaces the token estimate charged to `name` at `charged_ms` with what the answer
    /// reported (`None`: it said nothing, the estimate stands).
    pub fn settle_tokens(&self, name: &str, charged_ms: u64, estimated: u64, actual: Option<u64>) {
        if let Some(e) = self.lock().get_mut(name) {
            e.settle(charged_ms, estimated, actual);
        }
    }

    /// Takes a limit from a 429 that stated it (when the group allows learning). Google just
    /// said the quota is spent until `full_until` (Unix ms): when the proxy counted fewer (it
    /// had no limit to count against, or others use the project too), the minute is filled up
    /// so that it frees exactly then.
    pub fn learn(
        &self,
        scope: &str,
        model: &str,
        learned: Learned,
        now_ms: u64,
        full_until: Option<u64>,
    ) -> bool {
        if !self.limits.learn {
            return false;
        }
        let mut counters = self.lock();
        let e = counters.entry(quota_name(scope, model)).or_default();
        let before = e.learned;
        e.learned_ms = now_ms;
        match learned {
            Learned::RequestsPerMinute(n) => e.learned.requests_per_minute = Some(n.max(1)),
            Learned::TokensPerMinute(n) => e.learned.tokens_per_minute = Some(n.max(1)),
            Learned::RequestsPerDay(n) => e.learned.requests_per_day = Some(n.max(1)),
        }
        if let (Learned::RequestsPerMinute(n), Some(until)) = (learned, full_until)
            && until > now_ms
            && until <= now_ms + WINDOW_MS
        {
            let (own, _) = e.own.sum(now_ms);
            let (others, _, _) = e.others_in_minute(now_ms);
            let counted = own + others;
            if counted < n {
                // Not shared: the other proxies get the cooldown itself from the store.
                e.own.add(until - WINDOW_MS, n - counted, 0);
            }
        }
        self.learned_any.store(true, Relaxed);
        before != e.learned
    }

    /// What this proxy counted since the last call, for the store. Drops idle counters.
    pub fn take_pending(&self, now_ms: u64) -> Vec<RateDelta> {
        let mut out = Vec::new();
        let mut counters = self.lock();
        let rpd = self.limits.requests_per_day.is_some();
        counters.retain(|_, e| !e.idle(now_ms) || (rpd && e.own_day.requests > 0));
        for (name, e) in counters.iter_mut() {
            for (window, c) in e.pending.drain() {
                out.push(RateDelta {
                    name: name.clone(),
                    window,
                    requests: c.requests,
                    tokens: c.tokens,
                });
            }
        }
        out
    }

    /// The windows to read from the store at `now_ms`: the slots of the last minute and today.
    pub fn windows(now_ms: u64) -> Vec<RateWindow> {
        let current = now_ms / SLOT_MS;
        let mut w: Vec<RateWindow> = (current.saturating_sub(SLOTS_KEPT - 2)..=current)
            .map(RateWindow::Slot)
            .collect();
        w.push(RateWindow::Day(keystore::pacific::pacific_date(now_ms)));
        w
    }

    /// Takes the other proxies' counts read from the store.
    pub fn absorb(&self, counts: &RateCounts, now_ms: u64) {
        let today = RateWindow::Day(keystore::pacific::pacific_date(now_ms));
        let mut counters = self.lock();
        for e in counters.values_mut() {
            e.others.clear();
            e.others_day = 0;
        }
        for (window, by_name) in counts {
            for (name, c) in by_name {
                let e = counters.entry(name.clone()).or_default();
                match window {
                    RateWindow::Slot(s) => e.others.push((*s, *c)),
                    w if *w == today => e.others_day = c.requests,
                    RateWindow::Day(_) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
