//! The embedded store: one process, no dependencies. The default of a standalone proxy.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::audit::{self, AuditEvent};
use crate::clock::now_ms;
use crate::health::HealthReport;
use crate::rate::{RateCounts, RateDelta, RateWindow};
use crate::secret::KeyId;
use crate::snapshot::GroupSnapshot;
use crate::state::{KeyStatus, Transition};
use crate::store::{Binding, BoxFuture, KeyStore, StoreError, StoreEvent};
use crate::usage::{Counter, UsageCounts, UsageDelta, UsageWindow};

#[derive(Default)]
struct Inner {
    groups: BTreeMap<String, (GroupSnapshot, String)>,
    statuses: HashMap<String, HashMap<KeyId, KeyStatus>>,
    health: HashMap<(String, String), (HealthReport, u64)>,
    usage: HashMap<(String, UsageWindow), UsageCounts>,
    /// Totals per proxy, replaced on each write (see `put_usage_totals`).
    usage_totals: HashMap<(String, UsageWindow), HashMap<String, UsageCounts>>,
    proxies: HashMap<String, u64>,
    /// (group, window) → (counter, proxy) → count.
    rates: HashMap<(String, RateWindow), HashMap<(String, String), Counter>>,
    /// resource → (binding, expiry in Unix ms).
    bindings: HashMap<String, (Binding, u64)>,
    /// group → (sequence, event), oldest first.
    audit: HashMap<String, VecDeque<(u64, AuditEvent)>>,
    audit_seq: u64,
}

impl Inner {
    fn push_audit(&mut self, events: Vec<AuditEvent>) {
        for e in events {
            self.audit_seq += 1;
            let trail = self.audit.entry(e.group.clone()).or_default();
            trail.push_back((self.audit_seq, e));
            while trail.len() > audit::KEEP {
                trail.pop_front();
            }
        }
    }
}

pub struct MemoryStore {
    inner: Mutex<Inner>,
    events: broadcast::Sender<StoreEvent>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            events: broadcast::channel(1024).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-written in a way that matters
        // more than losing the whole store, so keep going with the data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(&self, event: StoreEvent) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }
}

/// Keeps the last two hours of minutes and the days, and at most 10,000 windows (days go
/// first when there are more).
fn prune_windows<V>(usage: &mut HashMap<(String, UsageWindow), V>) {
    let oldest_minute = now_ms() / 60_000 - 120;
    usage.retain(|(_, w), _| match w {
        UsageWindow::Minute(m) => *m >= oldest_minute,
        UsageWindow::Day(_) => true,
    });
    if usage.len() > 10_000 {
        usage.retain(|(_, w), _| matches!(w, UsageWindow::Minute(_)));
    }
}

impl KeyStore for MemoryStore {
    fn publish_group(&self, mut snapshot: GroupSnapshot) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let fingerprint = snapshot.fingerprint();
            let name = snapshot.name.clone();
            let version = {
                let mut inner = self.lock();
                match inner.groups.get(&name) {
                    Some((current, fp)) if *fp == fingerprint => return Ok(current.version),
                    Some((current, _)) => snapshot.version = current.version + 1,
                    None => snapshot.version = 1,
                }
                let changes = audit::key_changes(
                    inner.groups.get(&name).map(|(g, _)| g),
                    Some(&snapshot),
                    "publish",
                    now_ms(),
                );
                inner.push_audit(changes);
                let version = snapshot.version;
                // Keys that left the group take their state with them.
                if let Some(statuses) = inner.statuses.get_mut(&name) {
                    statuses.retain(|id, _| snapshot.keys.iter().any(|k| &k.id == id));
                }
                inner.groups.insert(name.clone(), (snapshot, fingerprint));
                version
            };
            self.emit(StoreEvent::GroupChanged { name, version });
            Ok(version)
        })
    }

    fn remove_group<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let existed = {
                let mut inner = self.lock();
                inner.statuses.remove(name);
                inner.health.retain(|(g, _), _| g != name);
                let old = inner.groups.remove(name);
                if let Some((g, _)) = &old {
                    let changes = audit::key_changes(Some(g), None, "publish", now_ms());
                    inner.push_audit(changes);
                }
                old.is_some()
            };
            if existed {
                self.emit(StoreEvent::GroupRemoved {
                    name: name.to_owned(),
                });
            }
            Ok(())
        })
    }

    fn group_names(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async move { Ok(self.lock().groups.keys().cloned().collect()) })
    }

    fn groups(&self) -> BoxFuture<'_, Result<Vec<GroupSnapshot>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .lock()
                .groups
                .values()
                .map(|(g, _)| g.clone())
                .collect())
        })
    }

    fn key_statuses<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<KeyId, KeyStatus>, StoreError>> {
        Box::pin(async move { Ok(self.lock().statuses.get(group).cloned().unwrap_or_default()) })
    }

    fn transition<'a>(
        &'a self,
        group: &'a str,
        keys: &'a [KeyId],
        transition: &'a Transition,
        origin: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(KeyId, KeyStatus)>, StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            let changes = {
                let mut inner = self.lock();
                if !inner.groups.contains_key(group) {
                    return Err(StoreError::UnknownGroup(group.to_owned()));
                }
                let statuses = inner.statuses.entry(group.to_owned()).or_default();
                let mut changes = Vec::new();
                for id in keys {
                    let status = statuses.entry(id.clone()).or_default();
                    if status.apply(transition, now) {
                        changes.push((id.clone(), status.clone()));
                    }
                }
                changes
            };
            if !changes.is_empty() {
                self.emit(StoreEvent::KeysChanged {
                    group: group.to_owned(),
                    origin: origin.to_owned(),
                    changes: changes.clone(),
                });
            }
            Ok(changes)
        })
    }

    fn report_health(
        &self,
        report: HealthReport,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let expires = now_ms() + ttl.as_millis() as u64;
            let key = (report.group.clone(), report.proxy_id.clone());
            self.lock().health.insert(key, (report, expires));
            Ok(())
        })
    }

    fn health_reports<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Vec<HealthReport>, StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            let mut inner = self.lock();
            inner.health.retain(|_, (_, expires)| *expires > now);
            Ok(inner
                .health
                .iter()
                .filter(|((g, _), _)| g == group)
                .map(|(_, (r, _))| r.clone())
                .collect())
        })
    }

    fn record_usage(&self, batch: Vec<UsageDelta>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut inner = self.lock();
            prune_windows(&mut inner.usage);
            for d in &batch {
                for w in [
                    UsageWindow::minute_of(d.at_ms),
                    UsageWindow::day_of(d.at_ms),
                ] {
                    inner.usage.entry((d.group.clone(), w)).or_default().add(d);
                }
            }
            Ok(())
        })
    }

    fn put_usage_totals<'a>(
        &'a self,
        group: &'a str,
        proxy: &'a str,
        totals: Vec<(UsageWindow, UsageCounts)>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut inner = self.lock();
            prune_windows(&mut inner.usage_totals);
            for (w, counts) in totals {
                inner
                    .usage_totals
                    .entry((group.to_owned(), w))
                    .or_default()
                    .insert(proxy.to_owned(), counts);
            }
            Ok(())
        })
    }

    fn usage<'a>(
        &'a self,
        group: &'a str,
        window: &'a UsageWindow,
    ) -> BoxFuture<'a, Result<UsageCounts, StoreError>> {
        Box::pin(async move {
            let inner = self.lock();
            let at = (group.to_owned(), window.clone());
            let mut counts = inner.usage.get(&at).cloned().unwrap_or_default();
            for c in inner
                .usage_totals
                .get(&at)
                .into_iter()
                .flat_map(|m| m.values())
            {
                counts.merge(c);
            }
            Ok(counts)
        })
    }

    fn heartbeat<'a>(
        &'a self,
        proxy_id: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let expires = now_ms() + ttl.as_millis() as u64;
            self.lock().proxies.insert(proxy_id.to_owned(), expires);
            Ok(())
        })
    }

    fn live_proxies(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            let mut inner = self.lock();
            inner.proxies.retain(|_, e| *e > now);
            let mut v: Vec<String> = inner.proxies.keys().cloned().collect();
            v.sort();
            Ok(v)
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    fn add_rates<'a>(
        &'a self,
        group: &'a str,
        proxy: &'a str,
        batch: Vec<RateDelta>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            let mut inner = self.lock();
            let oldest = RateWindow::slot_of(
                now.saturating_sub(crate::rate::SLOT_MS * (crate::rate::SLOTS_KEPT + 2)),
            );
            inner.rates.retain(|(_, w), _| match w {
                RateWindow::Slot(_) => *w >= oldest,
                RateWindow::Day(d) => day_is_recent(d),
            });
            for d in batch {
                inner
                    .rates
                    .entry((group.to_owned(), d.window))
                    .or_default()
                    .entry((d.name, proxy.to_owned()))
                    .or_default()
                    .add(d.requests, d.tokens);
            }
            Ok(())
        })
    }

    fn rates<'a>(
        &'a self,
        group: &'a str,
        windows: &'a [RateWindow],
        except_proxy: &'a str,
    ) -> BoxFuture<'a, Result<RateCounts, StoreError>> {
        Box::pin(async move {
            let inner = self.lock();
            let mut out = RateCounts::new();
            for w in windows {
                let Some(counters) = inner.rates.get(&(group.to_owned(), w.clone())) else {
                    continue;
                };
                let sums = out.entry(w.clone()).or_default();
                for ((name, proxy), c) in counters {
                    if proxy != except_proxy {
                        sums.entry(name.clone())
                            .or_default()
                            .add(c.requests, c.tokens);
                    }
                }
            }
            Ok(out)
        })
    }

    fn bind<'a>(
        &'a self,
        resource: &'a str,
        binding: &'a Binding,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            let mut inner = self.lock();
            inner.bindings.retain(|_, (_, exp)| *exp > now);
            inner.bindings.insert(
                resource.to_owned(),
                (binding.clone(), now + ttl.as_millis() as u64),
            );
            Ok(())
        })
    }

    fn unbind<'a>(&'a self, resource: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.lock().bindings.remove(resource);
            self.emit(StoreEvent::Unbound {
                resource: resource.to_owned(),
            });
            Ok(())
        })
    }

    fn bound<'a>(
        &'a self,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<Option<Binding>, StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            Ok(self
                .lock()
                .bindings
                .get(resource)
                .filter(|(_, exp)| *exp > now)
                .map(|(b, _)| b.clone()))
        })
    }

    fn append_audit(&self, events: Vec<AuditEvent>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.lock().push_audit(events);
            Ok(())
        })
    }

    fn audit<'a>(
        &'a self,
        group: &'a str,
        cursor: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(String, AuditEvent)>, StoreError>> {
        Box::pin(async move {
            let after: u64 = if cursor.is_empty() {
                0
            } else {
                cursor
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("audit cursor {cursor:?}")))?
            };
            let inner = self.lock();
            Ok(inner
                .audit
                .get(group)
                .map(|trail| {
                    trail
                        .iter()
                        .filter(|(seq, _)| *seq > after)
                        .take(limit)
                        .map(|(seq, e)| (seq.to_string(), e.clone()))
                        .collect()
                })
                .unwrap_or_default())
        })
    }
}

/// Whether a Pacific date is yesterday's or later (kept for a day after it ends).
fn day_is_recent(date: &str) -> bool {
    let yesterday = crate::pacific::pacific_date(now_ms().saturating_sub(86_400_000));
    date >= yesterday.as_str()
}

#[cfg(test)]
mod tests;
