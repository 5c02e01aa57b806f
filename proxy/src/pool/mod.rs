//! A group at run time: its keys ([`slot::KeySlot`]), its rotation, its upstream.
//!
//! A [`Pool`] is built from a [`GroupSnapshot`] and replaced whole when the snapshot changes;
//! key slots (state and counters) carry over by key id.

pub mod slot;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use keystore::{GroupSnapshot, KeyId, KeyStatus, RotationStrategy};

use crate::quota::{Book, Room};
use crate::routes::ModelOf;
use crate::upstream::Upstream;
pub use slot::{InFlight, KeySlot};

/// Keys weighed per request by LeastLoaded (see `pick_for`).
const LEAST_LOADED_CHOICES: usize = 16;

/// A key as a member of this group.
pub struct Member {
    pub slot: Arc<KeySlot>,
    /// Keys with the same quota scope (project) share one quota.
    pub scope: Arc<str>,
    pub weight: u32,
    pub disabled: bool,
    pub source: String,
    pub project: Option<String>,
}

/// The outcome of choosing a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Pick {
    Key(usize),
    /// Every key that could serve is cooling; the earliest is usable again at this time (Unix ms).
    Cooling(u64),
    /// Every usable key was tried already by this request.
    Tried,
    /// No key can serve at all (all retired or disabled).
    NoKeys,
}

/// What a request asks of the pool besides a model.
#[derive(Clone, Copy, Debug, Default)]
pub struct Demand<'a> {
    /// Estimated input tokens, for token quotas.
    pub tokens: u64,
    /// Only keys of this quota scope (project) may serve: key affinity.
    pub scope: Option<&'a str>,
}

pub struct Pool {
    pub snapshot: GroupSnapshot,
    pub members: Vec<Member>,
    /// Member indices in smooth weighted round-robin order (Weighted strategy).
    weighted: Vec<u32>,
    cursor: AtomicUsize,
    pub upstream: Upstream,
    /// Quota and client counters (carried over from the previous pool of the group).
    pub book: Book,
    /// Digests of the keys' values, to scrub them from upstream error bodies.
    pub key_digests: crate::redact::KeyDigests,
}

impl Pool {
    /// Builds a pool, reusing slots of `previous` for keys it already had, and taking stored
    /// statuses for keys that are new here.
    pub fn build(
        snapshot: GroupSnapshot,
        previous: Option<&Pool>,
        statuses: &HashMap<KeyId, KeyStatus>,
        upstream: Upstream,
    ) -> Self {
        let old: HashMap<&KeyId, &Arc<KeySlot>> = previous
            .map(|p| p.members.iter().map(|m| (&m.slot.id, &m.slot)).collect())
            .unwrap_or_default();
        let mut members = Vec::with_capacity(snapshot.keys.len());
        for k in &snapshot.keys {
            let slot = match old.get(&k.id) {
                Some(s) => Arc::clone(s),
                None => match KeySlot::new(k) {
                    Some(s) => Arc::new(s),
                    None => {
                        tracing::warn!(group = %snapshot.name, key_id = %k.id, "key cannot be sent as a header; skipped");
                        continue;
                    }
                },
            };
            if let Some(st) = statuses.get(&k.id) {
                slot.adopt(st);
            }
            members.push(Member {
                slot,
                scope: Arc::from(k.quota_scope()),
                weight: k.weight.max(1),
                disabled: k.disabled,
                source: k.source.clone(),
                project: k.project.clone(),
            });
        }
        let weighted = smooth_weighted_order(&members.iter().map(|m| m.weight).collect::<Vec<_>>());
        let book = Book::new(
            snapshot.limits,
            snapshot.access.client_limits,
            previous.map(|p| &p.book),
        );
        Self {
            key_digests: crate::redact::KeyDigests::of(
                snapshot.keys.iter().map(|k| k.secret.expose()),
            ),
            book,
            snapshot,
            members,
            weighted,
            cursor: AtomicUsize::new(0),
            upstream,
        }
    }

    pub fn name(&self) -> &str {
        &self.snapshot.name
    }

    /// Whether the keys belong to more than one quota scope (project), so that affinity matters.
    pub fn has_several_scopes(&self) -> bool {
        self.members
            .first()
            .is_some_and(|f| self.members.iter().any(|m| m.scope != f.scope))
    }

    /// The member holding key `id`.
    pub fn index_of(&self, id: &KeyId) -> Option<usize> {
        self.members.iter().position(|m| &m.slot.id == id)
    }

    fn candidate(&self, i: usize, model: &ModelOf<'_>, tried: &[usize], now_ms: u64) -> bool {
        let m = &self.members[i];
        !m.disabled && !tried.contains(&i) && m.slot.usable(|| model.get(), now_ms)
    }

    /// Chooses a key for a request for `model`, skipping the keys in `tried`.
    pub fn pick(&self, model: &ModelOf<'_>, tried: &[usize], now_ms: u64) -> Pick {
        self.pick_for(model, tried, now_ms, &Demand::default())
    }

    /// Chooses a key for a request for `model` with `demand`, skipping the keys in `tried` and
    /// the keys whose project is predicted to be over a quota.
    pub fn pick_for(
        &self,
        model: &ModelOf<'_>,
        tried: &[usize],
        now_ms: u64,
        demand: &Demand<'_>,
    ) -> Pick {
        let n = self.members.len();
        if n == 0 {
            return Pick::NoKeys;
        }
        let in_scope = |i: usize| demand.scope.is_none_or(|s| *self.members[i].scope == *s);
        // Quota room per project, looked up once per project and request.
        let quota_model = if self.book.quota_active() {
            model.get()
        } else {
            None
        };
        let mut rooms: Vec<(&str, Room)> = Vec::new();
        let mut room_of = |i: usize| -> Room {
            let Some(m) = quota_model else {
                return Room::Free(1.0);
            };
            let scope: &str = &self.members[i].scope;
            if let Some((_, r)) = rooms.iter().find(|(s, _)| *s == scope) {
                return *r;
            }
            let r = self.book.quota_room(scope, m, demand.tokens, now_ms);
            rooms.push((scope, r));
            r
        };
        let start = self.cursor.fetch_add(1, Relaxed);
        let eligible = |i: usize| in_scope(i) && self.candidate(i, model, tried, now_ms);
        let chosen = match self.snapshot.rotation {
            RotationStrategy::RoundRobin => (0..n)
                .map(|i| (start + i) % n)
                .find(|&i| eligible(i) && matches!(room_of(i), Room::Free(_))),
            RotationStrategy::Weighted => {
                let len = self.weighted.len();
                (0..len)
                    .map(|i| self.weighted[(start + i) % len] as usize)
                    .find(|&i| eligible(i) && matches!(room_of(i), Room::Free(_)))
            }
            RotationStrategy::LeastLoaded => {
                // The least loaded of the next LEAST_LOADED_CHOICES usable keys from a rotating
                // start (the "power of d choices"): the cost per request stays the same for 3
                // keys or 10,000, and because the start moves every request, every key is
                // weighed in turn. Groups up to that size are weighed whole.
                let mut best: Option<(f64, usize)> = None;
                let mut weighed = 0;
                for i in (0..n).map(|i| (start + i) % n) {
                    if weighed == LEAST_LOADED_CHOICES {
                        break;
                    }
                    if !eligible(i) {
                        continue;
                    }
                    let Room::Free(room) = room_of(i) else {
                        continue;
                    };
                    weighed += 1;
                    let m = &self.members[i];
                    // Fewer requests in flight per unit of weight, discounted by poor health
                    // and by little quota headroom.
                    let load = f64::from(m.slot.in_flight() + 1)
                        / (f64::from(m.weight) * m.slot.health().max(0.05) * room.max(0.01));
                    if best.is_none_or(|(b, _)| load < b) {
                        best = Some((load, i));
                    }
                }
                best.map(|(_, i)| i)
            }
        };
        if let Some(i) = chosen {
            return Pick::Key(i);
        }
        let mut earliest: Option<u64> = None;
        let mut tried_but_usable = false;
        for i in 0..n {
            let m = &self.members[i];
            if m.disabled || m.slot.is_retired() || !in_scope(i) {
                continue;
            }
            let until = match m.slot.cooling_until(model.get(), now_ms) {
                Some(until) => Some(until),
                None => match room_of(i) {
                    Room::FullUntil(t) => Some(t),
                    Room::Free(_) => None,
                },
            };
            match until {
                Some(until) => earliest = Some(earliest.map_or(until, |e| e.min(until))),
                None => tried_but_usable = true,
            }
        }
        match (tried_but_usable, earliest) {
            (true, _) => Pick::Tried,
            (false, Some(until)) => Pick::Cooling(until),
            (false, None) => Pick::NoKeys,
        }
    }

    /// Indices of the members that share the quota of member `i` (itself included).
    pub fn same_quota(&self, i: usize) -> Vec<usize> {
        let scope = &self.members[i].scope;
        (0..self.members.len())
            .filter(|&j| self.members[j].scope == *scope)
            .collect()
    }

    /// When the first cooling key of the group becomes usable for `model`.
    pub fn earliest_reset(&self, model: &ModelOf<'_>, now_ms: u64) -> Option<u64> {
        self.members
            .iter()
            .filter(|m| !m.disabled && !m.slot.is_retired())
            .filter_map(|m| m.slot.cooling_until(model.get(), now_ms))
            .min()
    }

    /// Whether at least one key could serve (now or after a cooldown).
    pub fn has_usable_key(&self) -> bool {
        self.members
            .iter()
            .any(|m| !m.disabled && !m.slot.is_retired())
    }
}

/// nginx's smooth weighted round robin, unrolled into one cycle: weights 5,1,1 give
/// a a b a c a a rather than a a a a a b c. Long cycles are scaled down.
fn smooth_weighted_order(weights: &[u32]) -> Vec<u32> {
    const MAX_CYCLE: u64 = 4096;
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let weights: Vec<i64> = if total > MAX_CYCLE {
        weights
            .iter()
            .map(|&w| ((u64::from(w) * MAX_CYCLE / total).max(1)) as i64)
            .collect()
    } else {
        weights.iter().map(|&w| i64::from(w)).collect()
    };
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best as u32);
    }
    order
}

#[cfg(test)]
mod tests;
