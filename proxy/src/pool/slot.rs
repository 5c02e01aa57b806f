//! One key at run time: its secret as ready-made header values, its state, and its counters.
//!
//! The request path reads only atomics here; the mutex guards the full [`KeyStatus`] and is
//! taken when a state changes, or to check a model's cooldown while one is running.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

use http::HeaderValue;
use keystore::{KeyEntry, KeyHealth, KeyId, KeyStatus, Transition};

/// Health is kept in parts per million so that it fits an atomic.
const PPM: f64 = 1_000_000.0;
/// Weight of the newest outcome in the health average.
const ALPHA: f64 = 0.2;

pub struct KeySlot {
    pub id: KeyId,
    /// `x-goog-api-key: <key>` (marked sensitive, so never printed by hyper or http).
    pub native_auth: HeaderValue,
    /// `Authorization: Bearer <key>` for the OpenAI layer.
    pub bearer_auth: HeaderValue,
    status: Mutex<KeyStatus>,
    retired: AtomicBool,
    /// Unix ms until which a key-wide cooldown runs.
    key_until: AtomicU64,
    /// Unix ms until which some model's cooldown runs (the latest of them).
    model_until: AtomicU64,
    in_flight: AtomicU32,
    health_ppm: AtomicU32,
    requests: AtomicU64,
    failures: AtomicU64,
    /// Unexplained 429s in a row: the backoff grows with them.
    bare_rate_limits: AtomicU32,
    last_error: Mutex<Option<String>>,
    /// Usage not yet flushed to the store's counters.
    pending_requests: AtomicU64,
    pending_tokens: AtomicU64,
}

impl KeySlot {
    /// `None` when the key cannot be a header value (the config already rejects such keys).
    pub fn new(entry: &KeyEntry) -> Option<Self> {
        let mut native_auth = HeaderValue::from_str(entry.secret.expose()).ok()?;
        native_auth.set_sensitive(true);
        let mut bearer_auth =
            HeaderValue::from_str(&format!("Bearer {}", entry.secret.expose())).ok()?;
        bearer_auth.set_sensitive(true);
        Some(Self {
            id: entry.id.clone(),
            native_auth,
            bearer_auth,
            status: Mutex::new(KeyStatus::default()),
            retired: AtomicBool::new(false),
            key_until: AtomicU64::new(0),
            model_until: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            health_ppm: AtomicU32::new(PPM as u32),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            bare_rate_limits: AtomicU32::new(0),
            last_error: Mutex::new(None),
            pending_requests: AtomicU64::new(0),
            pending_tokens: AtomicU64::new(0),
        })
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, KeyStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the key may serve a request for the model `model` returns, now. The hot path:
    /// atomics only, unless a model's cooldown is running (then the model is looked up).
    pub fn usable<'m>(&self, model: impl FnOnce() -> Option<&'m str>, now_ms: u64) -> bool {
        if self.retired.load(Relaxed) || now_ms < self.key_until.load(Relaxed) {
            return false;
        }
        if now_ms >= self.model_until.load(Relaxed) {
            return true;
        }
        let model = model();
        let status = self.lock_status();
        !status.cooldowns.iter().any(|c| c.blocks(model, now_ms))
    }

    /// When a non-retired key becomes usable for `model`, if it is cooling now.
    pub fn cooling_until(&self, model: Option<&str>, now_ms: u64) -> Option<u64> {
        let status = self.lock_status();
        status
            .cooldowns
            .iter()
            .filter(|c| c.blocks(model, now_ms))
            .map(|c| c.until_ms)
            .max()
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Relaxed)
    }

    /// Applies a transition locally; returns whether it changed anything.
    pub fn apply(&self, t: &Transition, now_ms: u64) -> bool {
        let mut status = self.lock_status();
        let changed = status.apply(t, now_ms);
        if changed {
            self.refresh(&status);
        }
        changed
    }

    /// Takes a status from the store when it is at least as new as ours.
    pub fn adopt(&self, incoming: &KeyStatus) -> bool {
        let mut status = self.lock_status();
        if incoming.updated_ms < status.updated_ms || *incoming == *status {
            return false;
        }
        *status = incoming.clone();
        self.refresh(&status);
        true
    }

    fn refresh(&self, status: &KeyStatus) {
        self.retired.store(status.invalid.is_some(), Relaxed);
        let key_until = status
            .cooldowns
            .iter()
            .filter(|c| c.model.is_none())
            .map(|c| c.until_ms)
            .max()
            .unwrap_or(0);
        let model_until = status
            .cooldowns
            .iter()
            .filter(|c| c.model.is_some())
            .map(|c| c.until_ms)
            .max()
            .unwrap_or(0);
        self.key_until.store(key_until, Relaxed);
        self.model_until.store(model_until, Relaxed);
    }

    pub fn status(&self) -> KeyStatus {
        self.lock_status().clone()
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    pub fn health(&self) -> f64 {
        f64::from(self.health_ppm.load(Relaxed)) / PPM
    }

    fn nudge_health(&self, target: f64) {
        let _ = self.health_ppm.fetch_update(Relaxed, Relaxed, |ppm| {
            let h = f64::from(ppm) / PPM;
            Some(((h + ALPHA * (target - h)) * PPM) as u32)
        });
    }

    /// A request on this key got an answer that is not the key's fault.
    pub fn record_success(&self) {
        self.requests.fetch_add(1, Relaxed);
        self.bare_rate_limits.store(0, Relaxed);
        self.nudge_health(1.0);
    }

    /// The key failed (network error, timeout, dead key): health drops.
    pub fn record_failure(&self, summary: &str) {
        self.requests.fetch_add(1, Relaxed);
        self.failures.fetch_add(1, Relaxed);
        self.nudge_health(0.0);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(summary.to_owned());
    }

    /// A 429: counted, not held against the key's health. Returns the number of unexplained
    /// 429s before this one when `bare`.
    pub fn record_rate_limit(&self, summary: &str, bare: bool) -> u32 {
        self.requests.fetch_add(1, Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(summary.to_owned());
        if bare {
            self.bare_rate_limits.fetch_add(1, Relaxed)
        } else {
            0
        }
    }

    pub fn health_report(&self) -> KeyHealth {
        KeyHealth {
            id: self.id.clone(),
            score: self.health(),
            requests: self.requests.load(Relaxed),
            failures: self.failures.load(Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Counts a request that Google served and the tokens it reported.
    pub fn add_usage(&self, requests: u64, tokens: u64) {
        self.pending_requests.fetch_add(requests, Relaxed);
        if tokens > 0 {
            self.pending_tokens.fetch_add(tokens, Relaxed);
        }
    }

    /// Takes the usage counted since the last call.
    pub fn take_usage(&self) -> (u64, u64) {
        (
            self.pending_requests.swap(0, Relaxed),
            self.pending_tokens.swap(0, Relaxed),
        )
    }

    /// Counts a request in flight on this key until the guard is dropped.
    pub fn start(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }
}

pub struct InFlight(std::sync::Arc<KeySlot>);

impl InFlight {
    pub fn slot(&self) -> &KeySlot {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}
