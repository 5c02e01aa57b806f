//! The embedded store: one process, no dependencies. The default of a standalone proxy.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::clock::now_ms;
use crate::health::HealthReport;
use crate::secret::KeyId;
use crate::snapshot::GroupSnapshot;
use crate::state::{KeyStatus, Transition};
use crate::store::{BoxFuture, KeyStore, StoreError, StoreEvent};
use crate::usage::{UsageCounts, UsageDelta, UsageWindow};

#[derive(Default)]
struct Inner {
    groups: BTreeMap<String, (GroupSnapshot, String)>,
    statuses: HashMap<String, HashMap<KeyId, KeyStatus>>,
    health: HashMap<(String, String), (HealthReport, u64)>,
    usage: HashMap<(String, UsageWindow), UsageCounts>,
    proxies: HashMap<String, u64>,
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
                inner.groups.remove(name).is_some()
            };
            if existed {
                self.emit(StoreEvent::GroupRemoved {
                    name: name.to_owned(),
                });
            }
            Ok(())
        })
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
            let now = now_ms();
            let mut inner = self.lock();
            // Keep the last two hours of minutes and three days.
            let oldest_minute = now / 60_000 - 120;
            inner.usage.retain(|(_, w), _| match w {
                UsageWindow::Minute(m) => *m >= oldest_minute,
                UsageWindow::Day(_) => true,
            });
            if inner.usage.len() > 10_000 {
                inner
                    .usage
                    .retain(|(_, w), _| matches!(w, UsageWindow::Minute(_)));
            }
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

    fn usage<'a>(
        &'a self,
        group: &'a str,
        window: &'a UsageWindow,
    ) -> BoxFuture<'a, Result<UsageCounts, StoreError>> {
        Box::pin(async move {
            Ok(self
                .lock()
                .usage
                .get(&(group.to_owned(), window.clone()))
                .cloned()
                .unwrap_or_default())
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
}

#[cfg(test)]
mod tests;
