//! The Redis store: many proxies and the operator share one key state.
//!
//! # Layout
//! `P` is the key prefix (default `gemini-proxy:`, no braces). Everything of one group shares the
//! Cluster hash tag `{g:NAME}`, so the scripts that touch several of its keys run on one slot;
//! the same code works on standalone Redis, Sentinel and Cluster.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P{g:NAME}:group` | hash | `version` (grows by one per change), `fingerprint` (of the snapshot minus version, and the stored format), `data` (the snapshot JSON, sealed as a whole: see [`crypto`]) |
//! | `P{g:NAME}:keys` | hash | key id → [`KeyStatus`] JSON (`invalid`, `cooldowns[{untilMs, reason, model}]`, `updatedMs`) |
//! | `P{g:NAME}:health` | hash | proxy id → [`HealthReport`] JSON with `expiresMs`; expired fields are dropped on read |
//! | `P{g:NAME}:usage:m:MINUTE` | hash | `p:PROXY`: that proxy's running totals for minute `MINUTE` since the epoch, as lines `k\tID\tREQUESTS\tTOKENS` and `s\tSCOPE\tREQUESTS\tTOKENS` (replaced on each write, so two commands per flush whatever the number of keys); single counters `k:ID:req`, `k:ID:tok`, `s:SCOPE:req`, `s:SCOPE:tok` are read too; expires after 2 h |
//! | `P{g:NAME}:usage:d:DATE` | hash | the same for the Pacific date `DATE` (`YYYY-MM-DD`); expires after 3 days |
//! | `P{g:NAME}:rate:s:SLOT` | hash | scheduling counters for the 10-second slot `SLOT`: `r\tPROXY\tCOUNTER` requests and `t\tPROXY\tCOUNTER` tokens sent by proxy `PROXY`; expires after 100 s |
//! | `P{g:NAME}:rate:d:DATE` | hash | the same for the Pacific date `DATE`; expires after 2 days |
//! | `P{g:NAME}:audit` | stream | the key lifecycle trail, one entry per event (`e`: [`AuditEvent`] JSON), capped near 1000 entries |
//! | `Paff:RESOURCE` | string | [`Binding`] JSON: the group and key that created `RESOURCE` (and, for an upload session of a Token group, the digest of the starting client's token) (`files/ID`, `cachedContents/ID`, `batches/ID`, `upload:SHA256-OF-SESSION`); expires with the resource |
//! | `P{index}:groups` | set | group names |
//! | `P{index}:proxies` | hash | proxy id → heartbeat expiry (Unix ms) |
//! | `Pevents` | pub/sub channel | JSON: `{type: group, name, version}`, `{type: removed, name}`, `{type: keys, group, origin, changes: [[id, status-json]]}`, `{type: unbound, resource}` |
//!
//! Key values never appear in a key name or in clear in a value: names use key ids, and group
//! snapshots are sealed as a whole with AES-256-GCM under the group's namespace key (random
//! nonce per value, the group name as associated data) unless plaintext was explicitly allowed.
//! With a state key, a snapshot that is not sealed, or sealed for another name or under
//! another key, is refused: the group is not served, and the refusal is logged, counted and
//! shown in `/readyz`.
//!
//! # What someone who can write to Redis can still do
//! The snapshot is authenticated; the rest of the layout is not, and it holds no secret:
//! - roll a group back to an earlier snapshot of the *same* group (one its operator wrote),
//!   e.g. bring back a client token revoked since: the version is not bound into the seal;
//! - deny service: delete groups, mark keys invalid or cooling (`:keys`), remove a group from
//!   the index, flood the events channel, or fill memory;
//! - skew what is reported and scheduled: usage and rate counters, health reports, heartbeats,
//!   the audit trail (it is a record for people, not evidence);
//! - steer a named resource (`aff:`) to another key *of the group it names*: bindings only pick
//!   among a group's own keys, they never carry a key or a URL.
//!
//! None of these reveals a key or sends one anywhere else. Give proxies a Redis user that
//! cannot write snapshots (the chart does: `docs/redis-acl.md`).
//!
//! # Modules
//! One per concern, each an `impl RedisStore` block the [`KeyStore`] implementation below calls:
//! `groups`, `keys`, `health` (reports and heartbeats), `usage`, `rates`, `bindings`, `trail`
//! (the audit stream) and `events` (the pub/sub listener); `codec` and `crypto` are the stored
//! form of a snapshot, `scripts` the Lua scripts, `conn` the connections and `settings` the one
//! assembly of settings into a [`RedisConfig`].
//!
//! # Guarantees
//! - A snapshot is written by one script (version, fingerprint and data together) and announced
//!   on the channel; publishing an unchanged snapshot changes nothing.
//! - Key transitions run in one script per group: two proxies cooling one key end with the later
//!   cooldown, whoever runs last; changes are announced with the writer's id.
//! - Subscribers get [`StoreEvent::Resync`] whenever the pub/sub link was re-established, since
//!   messages sent meanwhile are lost.

mod bindings;
#[cfg(feature = "cli")]
pub mod cli;
mod codec;
mod conn;
mod crypto;
mod events;
mod groups;
mod health;
mod keys;
mod rates;
mod scripts;
pub mod settings;
mod trail;
mod usage;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use redis::{AsyncCommands, RedisError, Script};
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub use conn::RedisTarget;
pub use crypto::EncryptionKey;

use crate::audit::{self, AuditEvent};
use crate::clock::now_ms;
use crate::health::HealthReport;
use crate::rate::{RateCounts, RateDelta, RateWindow};
use crate::secret::KeyId;
use crate::snapshot::GroupSnapshot;
use crate::state::{KeyStatus, Transition};
use crate::store::{Binding, BoxFuture, KeyStore, StoreError, StoreEvent};
use crate::usage::{Counter, UsageCounts, UsageDelta, UsageWindow};
use conn::Connector;
use crypto::Sealer;

pub const DEFAULT_PREFIX: &str = "gemini-proxy:";

/// How to reach Redis and how to store secrets there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    pub target: RedisTarget,
    pub key_prefix: String,
    /// `None` stores key material in clear: only when the user explicitly allowed it.
    pub encryption_key: Option<EncryptionKey>,
}

impl RedisConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.key_prefix.contains(['{', '}']) {
            return Err(
                "keyPrefix must not contain braces (they are Redis Cluster hash tags)".into(),
            );
        }
        self.target.validate()
    }
}

pub struct RedisStore {
    conn: Arc<Connector>,
    prefix: String,
    sealer: Sealer,
    events: broadcast::Sender<StoreEvent>,
    publish_script: Script,
    transition_script: Script,
    listener: JoinHandle<()>,
    subscribed: Arc<AtomicBool>,
    /// Groups the last [`KeyStore::groups`] read and refused, with the reason.
    refused: std::sync::Mutex<Vec<(String, String)>>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn check_name(name: &str) -> Result<(), StoreError> {
    if name.contains(['{', '}']) || name.is_empty() {
        return Err(StoreError::Corrupt(format!(
            "group name {name:?}: must be non-empty and without braces"
        )));
    }
    Ok(())
}

impl RedisStore {
    /// Makes the store. It connects lazily (a proxy must start while Redis is down) and keeps a
    /// pub/sub link open in the background, re-established after any loss.
    pub fn new(config: RedisConfig) -> Result<Arc<Self>, StoreError> {
        config.validate().map_err(StoreError::Unavailable)?;
        let conn = Arc::new(Connector::new(config.target));
        let (events, _) = broadcast::channel(4096);
        let channel = format!("{}events", config.key_prefix);
        let subscribed = Arc::new(AtomicBool::new(false));
        let listener = tokio::spawn(events::listen(
            conn.clone(),
            channel,
            events.clone(),
            subscribed.clone(),
        ));
        Ok(Arc::new(Self {
            conn,
            prefix: config.key_prefix,
            sealer: Sealer::new(config.encryption_key.as_ref()),
            events,
            publish_script: Script::new(scripts::PUBLISH_GROUP),
            transition_script: Script::new(scripts::TRANSITION),
            listener,
            subscribed,
            refused: std::sync::Mutex::new(Vec::new()),
        }))
    }

    /// Whether the pub/sub link is up now.
    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }

    fn group_key(&self, group: &str, what: &str) -> String {
        format!("{}{{g:{group}}}:{what}", self.prefix)
    }

    fn binding_key(&self, resource: &str) -> String {
        format!("{}aff:{resource}", self.prefix)
    }

    fn index_key(&self, what: &str) -> String {
        format!("{}{{index}}:{what}", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// Runs `op` on the connection; resets it when the error suggests it is gone.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(conn::Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let c = self.conn.get().await.map_err(unavailable)?;
        match op(c).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || e.code() == Some("READONLY")
                {
                    self.conn.reset().await;
                }
                Err(unavailable(e))
            }
        }
    }
}

impl KeyStore for RedisStore {
    fn publish_group(&self, snapshot: GroupSnapshot) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.publish_group(snapshot))
    }

    fn remove_group<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.remove_group(name))
    }

    fn group_names(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(self.group_names())
    }

    fn groups(&self) -> BoxFuture<'_, Result<Vec<GroupSnapshot>, StoreError>> {
        Box::pin(self.groups())
    }

    fn refused_groups(&self) -> Vec<(String, String)> {
        self.refused.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn key_statuses<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<KeyId, KeyStatus>, StoreError>> {
        Box::pin(self.key_statuses(group))
    }

    fn transition<'a>(
        &'a self,
        group: &'a str,
        keys: &'a [KeyId],
        transition: &'a Transition,
        origin: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(KeyId, KeyStatus)>, StoreError>> {
        Box::pin(self.transition(group, keys, transition, origin))
    }

    fn report_health(
        &self,
        report: HealthReport,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.report_health(report, ttl))
    }

    fn health_reports<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Vec<HealthReport>, StoreError>> {
        Box::pin(self.health_reports(group))
    }

    fn record_usage(&self, batch: Vec<UsageDelta>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.record_usage(batch))
    }

    fn put_usage_totals<'a>(
        &'a self,
        group: &'a str,
        proxy: &'a str,
        totals: Vec<(UsageWindow, UsageCounts)>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.put_usage_totals(group, proxy, totals))
    }

    fn usage<'a>(
        &'a self,
        group: &'a str,
        window: &'a UsageWindow,
    ) -> BoxFuture<'a, Result<UsageCounts, StoreError>> {
        Box::pin(self.usage(group, window))
    }

    fn usage_sum<'a>(
        &'a self,
        group: &'a str,
        windows: &'a [UsageWindow],
    ) -> BoxFuture<'a, Result<UsageCounts, StoreError>> {
        Box::pin(self.usage_sum(group, windows))
    }

    fn heartbeat<'a>(
        &'a self,
        proxy_id: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.heartbeat(proxy_id, ttl))
    }

    fn live_proxies(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(self.live_proxies())
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
        Box::pin(self.add_rates(group, proxy, batch))
    }

    fn rates<'a>(
        &'a self,
        group: &'a str,
        windows: &'a [RateWindow],
        except_proxy: &'a str,
    ) -> BoxFuture<'a, Result<RateCounts, StoreError>> {
        Box::pin(self.rates(group, windows, except_proxy))
    }

    fn bind<'a>(
        &'a self,
        resource: &'a str,
        binding: &'a Binding,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.bind(resource, binding, ttl))
    }

    fn unbind<'a>(&'a self, resource: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.unbind(resource))
    }

    fn bound<'a>(
        &'a self,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<Option<Binding>, StoreError>> {
        Box::pin(self.bound(resource))
    }

    fn append_audit(&self, events: Vec<AuditEvent>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.append_audit(events))
    }

    fn audit<'a>(
        &'a self,
        group: &'a str,
        cursor: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(String, AuditEvent)>, StoreError>> {
        Box::pin(self.audit(group, cursor, limit))
    }
}
