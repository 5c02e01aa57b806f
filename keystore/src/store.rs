//! The interface every store implements: the in-memory one here, Redis for many pods.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::audit::AuditEvent;
use crate::health::HealthReport;
use crate::rate::{RateCounts, RateDelta, RateWindow};
use crate::secret::KeyId;
use crate::snapshot::GroupSnapshot;
use crate::state::{KeyStatus, Transition};
use crate::usage::{UsageCounts, UsageDelta, UsageWindow};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    #[error("unknown group {0}")]
    UnknownGroup(String),
}

/// What a store tells its subscribers.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreEvent {
    /// A group was published with a new version: reload it.
    GroupChanged {
        name: String,
        version: u64,
    },
    GroupRemoved {
        name: String,
    },
    /// Keys changed state; `origin` is the writer's id so a writer can skip its own echo.
    KeysChanged {
        group: String,
        origin: String,
        changes: Vec<(KeyId, KeyStatus)>,
    },
    /// Events may have been missed (a lagging subscriber, a dropped pub/sub link): reload all.
    Resync,
    /// A binding ended (a finished upload session): no proxy may honour it from its cache.
    Unbound {
        resource: String,
    },
}

/// The key-state store. None of these calls sit on a request's path: proxies read an in-memory
/// snapshot and hand transitions to a background writer.
pub trait KeyStore: Send + Sync + 'static {
    /// Publishes a group. Publishing a snapshot equal to the current one (same fingerprint) is a
    /// no-op. Returns the version now current.
    fn publish_group(&self, snapshot: GroupSnapshot) -> BoxFuture<'_, Result<u64, StoreError>>;

    fn remove_group<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Every group, at its current version.
    fn groups(&self) -> BoxFuture<'_, Result<Vec<GroupSnapshot>, StoreError>>;

    /// Groups the last [`KeyStore::groups`] refused (name, reason): their snapshots could not
    /// be authenticated or read.
    fn refused_groups(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The names of the groups the store holds (one cheap read: proxies check it every second,
    /// so a new group is served within a second even when its pub/sub event was missed).
    fn group_names(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async move { Ok(self.groups().await?.into_iter().map(|g| g.name).collect()) })
    }

    /// The stored state of the keys of a group that have any (others are Active).
    fn key_statuses<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<KeyId, KeyStatus>, StoreError>>;

    /// Applies `transition` to each key atomically, publishes the change as `origin`, and
    /// returns the resulting statuses of the keys that changed.
    fn transition<'a>(
        &'a self,
        group: &'a str,
        keys: &'a [KeyId],
        transition: &'a Transition,
        origin: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(KeyId, KeyStatus)>, StoreError>>;

    /// Stores a proxy's health report; it disappears after `ttl` unless renewed.
    fn report_health(
        &self,
        report: HealthReport,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The unexpired reports of every proxy for a group.
    fn health_reports<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Vec<HealthReport>, StoreError>>;

    /// Adds usage to the per-minute and per-day counters (batched by the caller).
    fn record_usage(&self, batch: Vec<UsageDelta>) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Replaces what proxy `proxy` has counted for `group` in each window with `totals` (its
    /// running totals for the window, not an increment): a constant number of writes however
    /// many keys and requests there were. Readers add every proxy's totals.
    fn put_usage_totals<'a>(
        &'a self,
        group: &'a str,
        proxy: &'a str,
        totals: Vec<(UsageWindow, UsageCounts)>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The counters of a group in a window.
    fn usage<'a>(
        &'a self,
        group: &'a str,
        window: &'a UsageWindow,
    ) -> BoxFuture<'a, Result<UsageCounts, StoreError>>;

    /// The counters of a group summed over several windows (one round trip where the store
    /// can batch; the operator reads the last hour's 60 minutes this way).
    fn usage_sum<'a>(
        &'a self,
        group: &'a str,
        windows: &'a [UsageWindow],
    ) -> BoxFuture<'a, Result<UsageCounts, StoreError>> {
        Box::pin(async move {
            let mut sum = UsageCounts::default();
            for w in windows {
                sum.merge(&self.usage(group, w).await?);
            }
            Ok(sum)
        })
    }

    /// Marks a proxy alive for `ttl`.
    fn heartbeat<'a>(
        &'a self,
        proxy_id: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The proxies whose heartbeat has not run out.
    fn live_proxies(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent>;

    /// Adds what proxy `proxy` sent to the scheduling counters of a group (batched by the caller).
    fn add_rates<'a>(
        &'a self,
        group: &'a str,
        proxy: &'a str,
        batch: Vec<RateDelta>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The scheduling counters of a group in `windows`, summed over every proxy but
    /// `except_proxy`.
    fn rates<'a>(
        &'a self,
        group: &'a str,
        windows: &'a [RateWindow],
        except_proxy: &'a str,
    ) -> BoxFuture<'a, Result<RateCounts, StoreError>>;

    /// Binds a project-bound resource (`files/ID`, `cachedContents/ID`, `batches/ID`, an upload
    /// session) to the key that created it, for `ttl`.
    fn bind<'a>(
        &'a self,
        resource: &'a str,
        binding: &'a Binding,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Ends a binding (a finished upload session).
    /// Ends a binding and announces it ([`StoreEvent::Unbound`]).
    fn unbind<'a>(&'a self, resource: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The key a resource is bound to, if the binding has not run out.
    fn bound<'a>(&'a self, resource: &'a str)
    -> BoxFuture<'a, Result<Option<Binding>, StoreError>>;

    /// Appends key lifecycle events to their groups' trails (each keeps its last
    /// [`crate::audit::KEEP`]).
    fn append_audit(&self, events: Vec<AuditEvent>) -> BoxFuture<'_, Result<(), StoreError>>;

    /// A group's events after `cursor` (`""`: from the oldest kept), oldest first, at most
    /// `limit`, each with its cursor.
    fn audit<'a>(
        &'a self,
        group: &'a str,
        cursor: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(String, AuditEvent)>, StoreError>>;
}

/// Which key created a project-bound resource.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Binding {
    pub group: String,
    pub key: KeyId,
    /// The client (its token's digest) that started an upload session in a Token group: the
    /// session serves that client only, and only while its token is admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<crate::secret::TokenDigest>,
}
