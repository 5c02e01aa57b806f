//! Keeping the in-memory groups and the store in step, off the request path:
//! - the outbox: key transitions the request path hands over without waiting;
//! - the follower: store events (and a periodic poll) rebuild groups or adopt key states;
//! - the reporter: this proxy's per-key health, written with a time to live.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keystore::{HealthReport, KeyId, KeyStore, StoreError, StoreEvent, Transition};
use tokio::sync::{broadcast, mpsc};

use crate::registry::Registry;

const OUTBOX_CAPACITY: usize = 16_384;
const POLL_EVERY: Duration = Duration::from_secs(30);
const HEALTH_EVERY: Duration = Duration::from_secs(10);
const HEALTH_TTL: Duration = Duration::from_secs(45);

/// A key transition on its way to the store.
#[derive(Debug)]
pub struct Pending {
    pub group: String,
    pub keys: Vec<KeyId>,
    pub transition: Transition,
}

/// The request path's side of the outbox: never blocks, never awaits.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Pending>,
    full_warned: Arc<AtomicBool>,
}

impl Outbox {
    pub fn new() -> (Self, mpsc::Receiver<Pending>) {
        let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
        (
            Self {
                tx,
                full_warned: Arc::new(AtomicBool::new(false)),
            },
            rx,
        )
    }

    pub fn send(&self, p: Pending) {
        // The transition is already applied locally; if the writer is far behind, sharing it is
        // what is lost, not the request.
        if self.tx.try_send(p).is_err() && !self.full_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!("state outbox full: key transitions are not reaching the store");
        }
    }
}

/// Loads every group and its key states from the store into the registry.
pub async fn reload(store: &dyn KeyStore, registry: &Registry) -> Result<(), StoreError> {
    let groups = store.groups().await?;
    let mut statuses = HashMap::with_capacity(groups.len());
    for g in &groups {
        statuses.insert(g.name.clone(), store.key_statuses(&g.name).await?);
    }
    registry.rebuild(groups, &statuses);
    Ok(())
}

/// Starts the background tasks; they end when `shutdown` fires.
pub fn spawn(
    store: Arc<dyn KeyStore>,
    registry: Arc<Registry>,
    proxy_id: String,
    mut outbox: mpsc::Receiver<Pending>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    // Writer: transitions to the store, in order.
    {
        let store = store.clone();
        let proxy_id = proxy_id.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                let p = tokio::select! {
                    p = outbox.recv() => match p { Some(p) => p, None => return },
                    _ = shutdown.wait_for(|s| *s) => return,
                };
                match store
                    .transition(&p.group, &p.keys, &p.transition, &proxy_id)
                    .await
                {
                    Ok(_) => failing = false,
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(group = %p.group, error = %e, "cannot write key state to the store");
                    }
                    Err(_) => {}
                }
            }
        });
    }
    // Follower: events and a periodic poll.
    {
        let store = store.clone();
        let registry = registry.clone();
        let proxy_id = proxy_id.clone();
        let mut shutdown = shutdown.clone();
        let mut events = store.subscribe();
        tokio::spawn(async move {
            let mut poll = tokio::time::interval(POLL_EVERY);
            poll.tick().await;
            loop {
                let reload_all = tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => return,
                    _ = poll.tick() => true,
                    ev = events.recv() => match ev {
                        Ok(StoreEvent::KeysChanged { group, origin, changes }) => {
                            if origin != proxy_id {
                                registry.adopt(&group, &changes);
                            }
                            false
                        }
                        Ok(StoreEvent::GroupChanged { .. } | StoreEvent::GroupRemoved { .. } | StoreEvent::Resync) => true,
                        Err(broadcast::error::RecvError::Lagged(_)) => true,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                };
                if reload_all && let Err(e) = reload(store.as_ref(), &registry).await {
                    tracing::warn!(error = %e, "cannot reload groups from the store; serving the last snapshot");
                }
            }
        });
    }
    // Reporter: per-key health with a TTL.
    {
        let mut shutdown = shutdown;
        tokio::spawn(async move {
            let mut every = tokio::time::interval(HEALTH_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => return,
                    _ = every.tick() => {}
                }
                let now = keystore::clock::now_ms();
                for pool in registry.groups().pools() {
                    let report = HealthReport {
                        proxy_id: proxy_id.clone(),
                        group: pool.name().to_owned(),
                        at_ms: now,
                        keys: pool
                            .members
                            .iter()
                            .map(|m| m.slot.health_report())
                            .collect(),
                    };
                    if let Err(e) = store.report_health(report, HEALTH_TTL).await {
                        tracing::debug!(error = %e, "cannot report health");
                    }
                }
            }
        });
    }
}
