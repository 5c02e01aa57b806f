//! What the client port's handlers share: the [`App`] state and request ids. Both the router
//! (`app`) and the forwarder (`forward`) use it; neither needs the other for it.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderValue};

use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store_sync::{Outbox, StoreStatus};

/// Everything a request handler needs.
pub struct App {
    pub registry: Arc<Registry>,
    pub metrics: Metrics,
    pub outbox: Outbox,
    /// Largest request body kept for retries (a reload may change it).
    pub max_body_bytes: std::sync::atomic::AtomicUsize,
    pub request_ids: RequestIds,
    /// Whether the store answers (what `/readyz` and `store_up` say), not the store itself.
    pub store_status: Arc<StoreStatus>,
    /// Which key created which file, cache, batch or upload session.
    pub affinity: crate::affinity::Affinity,
    /// Where access lines go; unset, they go through tracing.
    pub access_log: std::sync::OnceLock<crate::access_log::AccessLog>,
    /// Set at SIGTERM: `/readyz` answers 503 and HTTP/1.1 answers close their connection.
    pub draining: std::sync::atomic::AtomicBool,
}

pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Request ids: the client's `x-request-id` when it is sane, else a fresh one.
pub struct RequestIds {
    seed: u64,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self {
            seed: RandomState::new().hash_one(std::process::id()),
            next: AtomicU64::new(0),
        }
    }
}

impl RequestIds {
    pub fn take(&self, headers: &HeaderMap) -> HeaderValue {
        if let Some(v) = headers.get(X_REQUEST_ID) {
            let b = v.as_bytes();
            if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
                return v.clone();
            }
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // splitmix64: distinct, unpredictable-looking ids from a counter.
        let mut z = self
            .seed
            .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let mut hex = [0u8; 16];
        for (i, d) in hex.iter_mut().enumerate() {
            *d = b"0123456789abcdef"[((z >> (60 - 4 * i)) & 0xf) as usize];
        }
        HeaderValue::from_bytes(&hex).unwrap_or(HeaderValue::from_static("0"))
    }
}
