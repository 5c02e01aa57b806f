//! Scheduling counters shared by proxies: what each proxy sent, per counter (a project and
//! model's quota, a client's allowance), per 10-second slot and per Pacific day.
//!
//! Each proxy writes only its own share and reads the others' shares, so that it can add them to
//! its own exact, local count without counting itself twice.

use std::collections::HashMap;

use crate::usage::Counter;

/// Width of a slot.
pub const SLOT_MS: u64 = 10_000;
/// Slots kept: a minute and a bit, so that a sliding minute can be read.
pub const SLOTS_KEPT: u64 = 8;

/// A counting window of the scheduling counters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RateWindow {
    /// 10-second slots since the Unix epoch.
    Slot(u64),
    /// A date in America/Los_Angeles, `YYYY-MM-DD`.
    Day(String),
}

impl RateWindow {
    pub fn slot_of(at_ms: u64) -> Self {
        Self::Slot(at_ms / SLOT_MS)
    }

    /// The suffix of the window's storage key: `s:178000000`, `d:2026-11-22`.
    pub fn tag(&self) -> String {
        match self {
            Self::Slot(s) => format!("s:{s}"),
            Self::Day(d) => format!("d:{d}"),
        }
    }

    /// How long a stored window is worth keeping, in seconds.
    pub fn ttl_secs(&self) -> u64 {
        match self {
            Self::Slot(_) => SLOT_MS / 1000 * (SLOTS_KEPT + 2),
            Self::Day(_) => 2 * 86_400,
        }
    }
}

/// What one proxy adds to one counter in one window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateDelta {
    /// The counter: `q|SCOPE|MODEL` for a project's quota on a model, `c|CLIENT` for a client.
    pub name: String,
    pub window: RateWindow,
    pub requests: u64,
    pub tokens: u64,
}

/// The other proxies' counts: window → counter name → sum over those proxies.
pub type RateCounts = HashMap<RateWindow, HashMap<String, Counter>>;
