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
//! # Guarantees
//! - A snapshot is written by one script (version, fingerprint and data together) and announced
//!   on the channel; publishing an unchanged snapshot changes nothing.
//! - Key transitions run in one script per group: two proxies cooling one key end with the later
//!   cooldown, whoever runs last; changes are announced with the writer's id.
//! - Subscribers get [`StoreEvent::Resync`] whenever the pub/sub link was re-established, since
//!   messages sent meanwhile are lost.

#[cfg(feature = "cli")]
pub mod cli;
mod codec;
mod conn;
mod crypto;
mod scripts;

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

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum Wire {
    Group {
        name: String,
        version: u64,
    },
    Removed {
        name: String,
    },
    Keys {
        group: String,
        origin: String,
        changes: Vec<(String, String)>,
    },
    Unbound {
        resource: String,
    },
}

#[derive(serde::Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredHealth {
    expires_ms: u64,
    report: HealthReport,
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
        let listener = tokio::spawn(listen(
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

    async fn load_group(&self, name: &str) -> Result<Option<GroupSnapshot>, StoreError> {
        let key = self.group_key(name, "group");
        let fields: HashMap<String, String> = self
            .run(|mut c| async move { c.hgetall(&key).await })
            .await?;
        let (Some(version), Some(data)) = (fields.get("version"), fields.get("data")) else {
            return Ok(None);
        };
        let version = version.parse().map_err(corrupt)?;
        codec::decode(name, data, version, &self.sealer).map(Some)
    }
}

/// The pub/sub listener: forwards events; after every (re)connection, a `Resync`.
async fn listen(
    conn: Arc<Connector>,
    channel: String,
    events: broadcast::Sender<StoreEvent>,
    subscribed: Arc<AtomicBool>,
) {
    loop {
        let link = async {
            let client = conn.pubsub_client().await?;
            let mut ps = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
                .await
                .map_err(|_| {
                    RedisError::from((redis::ErrorKind::Io, "pub/sub connect timed out"))
                })??;
            ps.subscribe(&channel).await?;
            Ok::<_, RedisError>(ps)
        }
        .await;
        match link {
            Ok(mut ps) => {
                subscribed.store(true, Ordering::Relaxed);
                // Whatever was published before the subscription took hold (a group made while
                // a proxy was starting, or during an outage) is read again: without this, a new
                // group would wait for the next periodic reload.
                let _ = events.send(StoreEvent::Resync);
                let mut stream = ps.on_message();
                while let Some(msg) = stream.next().await {
                    let Ok(payload) = msg.get_payload::<String>() else {
                        continue;
                    };
                    if let Some(ev) = parse_event(&payload) {
                        let _ = events.send(ev);
                    }
                }
                subscribed.store(false, Ordering::Relaxed);
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Lines read from one proxy's usage totals at most (a key and a scope line per key).
const USAGE_LINES_MAX: usize = 2 * 100_000;

/// Adds a usage hash's fields to `counts`: per-proxy totals (`p:PROXY`, see
/// [`UsageCounts::encode`]) and single counters (`k:ID:req`, `s:SCOPE:tok`, ...).
fn add_usage_fields(counts: &mut UsageCounts, raw: HashMap<String, String>) {
    for (field, value) in raw {
        if field.starts_with("p:") {
            counts.add_encoded(&value, USAGE_LINES_MAX);
            continue;
        }
        let Ok(n) = value.parse::<u64>() else {
            continue;
        };
        let Some((kind, rest)) = field.split_once(':') else {
            continue;
        };
        let Some((name, what)) = rest.rsplit_once(':') else {
            continue;
        };
        let counter: &mut Counter = match kind {
            "k" => counts.keys.entry(KeyId::from_raw(name)).or_default(),
            "s" => counts.scopes.entry(name.to_owned()).or_default(),
            _ => continue,
        };
        match what {
            "req" => counter.requests += n,
            "tok" => counter.tokens += n,
            _ => {}
        }
    }
}

fn parse_event(payload: &str) -> Option<StoreEvent> {
    Some(match serde_json::from_str::<Wire>(payload).ok()? {
        Wire::Group { name, version } => StoreEvent::GroupChanged { name, version },
        Wire::Removed { name } => StoreEvent::GroupRemoved { name },
        Wire::Keys {
            group,
            origin,
            changes,
        } => StoreEvent::KeysChanged {
            group,
            origin,
            changes: parse_changes(&changes),
        },
        Wire::Unbound { resource } => StoreEvent::Unbound { resource },
    })
}

fn parse_changes(raw: &[(String, String)]) -> Vec<(KeyId, KeyStatus)> {
    raw.iter()
        .filter_map(|(id, st)| Some((KeyId::from_raw(id.clone()), serde_json::from_str(st).ok()?)))
        .collect()
}

impl KeyStore for RedisStore {
    fn publish_group(&self, snapshot: GroupSnapshot) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            check_name(&snapshot.name)?;
            // For the audit trail: which keys come and go (recorded only by the publish that
            // changed the group). A group that cannot be read (another encryption key) counts
            // as new.
            // A stored value that does not authenticate (forged, moved, an older format) is
            // rewritten even when its fingerprint claims it is current.
            let (old, force) = match self.load_group(&snapshot.name).await {
                Ok(old) => (old, "0"),
                Err(StoreError::Corrupt(_)) => (None, "1"),
                Err(e) => return Err(e),
            };
            let data = codec::encode(&snapshot, &self.sealer)?;
            let mut inv = self.publish_script.prepare_invoke();
            inv.key(self.group_key(&snapshot.name, "group"))
                .key(self.group_key(&snapshot.name, "keys"))
                .arg(codec::fingerprint(&snapshot))
                .arg(data)
                .arg(self.channel())
                .arg(&snapshot.name)
                .arg(force);
            for k in &snapshot.keys {
                inv.arg(k.id.as_str());
            }
            let (version, changed): (u64, u8) = self
                .run(|mut c| async move { inv.invoke_async(&mut c).await })
                .await?;
            let index = self.index_key("groups");
            let name = snapshot.name.clone();
            self.run(|mut c| async move { c.sadd::<_, _, ()>(&index, &name).await })
                .await?;
            if changed == 1 {
                // A group made again under a removed one's name keeps its trail.
                let trail = self.group_key(&snapshot.name, "audit");
                self.run(|mut c| async move { c.persist::<_, ()>(&trail).await })
                    .await?;
            }
            // The diff holds only when nobody published in between.
            let consecutive = match &old {
                Some(o) => o.version + 1 == version,
                None => version == 1,
            };
            if changed == 1 && consecutive {
                let mut published = snapshot;
                published.version = version;
                let changes =
                    audit::key_changes(old.as_ref(), Some(&published), "publish", now_ms());
                self.append_audit(changes).await?;
            }
            Ok(version)
        })
    }

    fn remove_group<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            check_name(name)?;
            if let Ok(Some(old)) = self.load_group(name).await {
                let changes = audit::key_changes(Some(&old), None, "publish", now_ms());
                self.append_audit(changes).await?;
            }
            // The trail outlives the group for a day, for whoever reports on it.
            let trail = self.group_key(name, "audit");
            self.run(|mut c| async move { c.expire::<_, ()>(&trail, 86_400).await })
                .await?;
            let keys = vec![
                self.group_key(name, "group"),
                self.group_key(name, "keys"),
                self.group_key(name, "health"),
            ];
            let index = self.index_key("groups");
            let channel = self.channel();
            let event = serde_json::json!({"type": "removed", "name": name}).to_string();
            self.run(|mut c| async move {
                c.del::<_, ()>(&keys).await?;
                c.srem::<_, _, ()>(&index, name).await?;
                c.publish::<_, _, ()>(&channel, event).await
            })
            .await
        })
    }

    fn group_names(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let index = self.index_key("groups");
            self.run(|mut c| async move { c.smembers(&index).await })
                .await
        })
    }

    fn groups(&self) -> BoxFuture<'_, Result<Vec<GroupSnapshot>, StoreError>> {
        Box::pin(async move {
            let index = self.index_key("groups");
            let mut names: Vec<String> = self
                .run(|mut c| async move { c.smembers(&index).await })
                .await?;
            // A namespace's key reads its namespace's groups; the others are not its business.
            names.retain(|n| self.sealer.reads(n));
            names.sort();
            let mut out = Vec::with_capacity(names.len());
            let mut refused = Vec::new();
            for n in names {
                match self.load_group(&n).await {
                    Ok(Some(g)) => out.push(g),
                    Ok(None) => {}
                    // One unreadable or unauthenticated group (another state key, a damaged or
                    // forged value) is refused; it must not take the others down with it.
                    Err(StoreError::Corrupt(e)) => {
                        tracing::error!(group = %n, error = %e, "group refused: its snapshot in the store cannot be trusted or read");
                        refused.push((n, e));
                    }
                    Err(e) => return Err(e),
                }
            }
            let last = refused.last().map(|(_, e)| e.clone());
            if let Ok(mut r) = self.refused.lock() {
                *r = refused;
            }
            match (out.is_empty(), last) {
                (true, Some(e)) => Err(StoreError::Corrupt(e)),
                _ => Ok(out),
            }
        })
    }

    fn refused_groups(&self) -> Vec<(String, String)> {
        self.refused.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn key_statuses<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<KeyId, KeyStatus>, StoreError>> {
        Box::pin(async move {
            let key = self.group_key(group, "keys");
            let raw: HashMap<String, String> = self
                .run(|mut c| async move { c.hgetall(&key).await })
                .await?;
            raw.into_iter()
                .map(|(id, st)| {
                    Ok((
                        KeyId::from_raw(id),
                        serde_json::from_str(&st).map_err(corrupt)?,
                    ))
                })
                .collect()
        })
    }

    fn transition<'a>(
        &'a self,
        group: &'a str,
        keys: &'a [KeyId],
        transition: &'a Transition,
        origin: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(KeyId, KeyStatus)>, StoreError>> {
        Box::pin(async move {
            check_name(group)?;
            let mut inv = self.transition_script.prepare_invoke();
            inv.key(self.group_key(group, "keys"))
                .arg(now_ms())
                .arg(serde_json::to_string(transition).map_err(corrupt)?)
                .arg(origin)
                .arg(self.channel())
                .arg(group);
            for k in keys {
                inv.arg(k.as_str());
            }
            let raw: String = self
                .run(|mut c| async move { inv.invoke_async(&mut c).await })
                .await?;
            let changes: Vec<(String, String)> = serde_json::from_str(&raw).map_err(corrupt)?;
            Ok(parse_changes(&changes))
        })
    }

    fn report_health(
        &self,
        report: HealthReport,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let key = self.group_key(&report.group, "health");
            let field = report.proxy_id.clone();
            let value = serde_json::to_string(&StoredHealth {
                expires_ms: now_ms() + ttl.as_millis() as u64,
                report,
            })
            .map_err(corrupt)?;
            self.run(|mut c| async move { c.hset::<_, _, _, ()>(&key, field, value).await })
                .await
        })
    }

    fn health_reports<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Vec<HealthReport>, StoreError>> {
        Box::pin(async move {
            let key = self.group_key(group, "health");
            let k2 = key.clone();
            let raw: HashMap<String, String> = self
                .run(|mut c| async move { c.hgetall(&k2).await })
                .await?;
            let now = now_ms();
            let mut live = Vec::new();
            let mut expired = Vec::new();
            for (proxy, v) in raw {
                match serde_json::from_str::<StoredHealth>(&v) {
                    Ok(h) if h.expires_ms > now => live.push(h.report),
                    _ => expired.push(proxy),
                }
            }
            if !expired.is_empty() {
                self.run(|mut c| async move { c.hdel::<_, _, ()>(&key, expired).await })
                    .await?;
            }
            live.sort_by(|a, b| a.proxy_id.cmp(&b.proxy_id));
            Ok(live)
        })
    }

    fn record_usage(&self, batch: Vec<UsageDelta>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(());
            }
            let mut pipe = redis::pipe();
            for d in &batch {
                for (window, ttl) in [
                    (UsageWindow::minute_of(d.at_ms), 2 * 3600),
                    (UsageWindow::day_of(d.at_ms), 3 * 86_400),
                ] {
                    let key = self.group_key(&d.group, &format!("usage:{}", window.tag()));
                    pipe.hincr(&key, format!("k:{}:req", d.key), d.requests)
                        .ignore();
                    pipe.hincr(&key, format!("s:{}:req", d.scope), d.requests)
                        .ignore();
                    if d.tokens > 0 {
                        pipe.hincr(&key, format!("k:{}:tok", d.key), d.tokens)
                            .ignore();
                        pipe.hincr(&key, format!("s:{}:tok", d.scope), d.tokens)
                            .ignore();
                    }
                    pipe.expire(&key, ttl).ignore();
                }
            }
            self.run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
                .await
        })
    }

    fn put_usage_totals<'a>(
        &'a self,
        group: &'a str,
        proxy: &'a str,
        totals: Vec<(UsageWindow, UsageCounts)>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            check_name(group)?;
            if totals.is_empty() {
                return Ok(());
            }
            // Two commands per window, whatever the number of keys: one field per proxy holds
            // its running totals (HSET replaces it), readers add the proxies up.
            let mut pipe = redis::pipe();
            for (w, counts) in &totals {
                let key = self.group_key(group, &format!("usage:{}", w.tag()));
                let ttl = match w {
                    UsageWindow::Minute(_) => 2 * 3600,
                    UsageWindow::Day(_) => 3 * 86_400,
                };
                pipe.hset(&key, format!("p:{proxy}"), counts.encode())
                    .ignore();
                pipe.expire(&key, ttl).ignore();
            }
            self.run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
                .await
        })
    }

    fn usage<'a>(
        &'a self,
        group: &'a str,
        window: &'a UsageWindow,
    ) -> BoxFuture<'a, Result<UsageCounts, StoreError>> {
        Box::pin(async move {
            let key = self.group_key(group, &format!("usage:{}", window.tag()));
            let raw: HashMap<String, String> = self
                .run(|mut c| async move { c.hgetall(&key).await })
                .await?;
            let mut counts = UsageCounts::default();
            add_usage_fields(&mut counts, raw);
            Ok(counts)
        })
    }

    fn usage_sum<'a>(
        &'a self,
        group: &'a str,
        windows: &'a [UsageWindow],
    ) -> BoxFuture<'a, Result<UsageCounts, StoreError>> {
        Box::pin(async move {
            let mut counts = UsageCounts::default();
            if windows.is_empty() {
                return Ok(counts);
            }
            // One pipeline: the windows of a group share its hash tag (one Cluster slot).
            let mut pipe = redis::pipe();
            for w in windows {
                pipe.hgetall(self.group_key(group, &format!("usage:{}", w.tag())));
            }
            let raws: Vec<HashMap<String, String>> = self
                .run(|mut c| async move { pipe.query_async(&mut c).await })
                .await?;
            for raw in raws {
                add_usage_fields(&mut counts, raw);
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
            let key = self.index_key("proxies");
            let expires = now_ms() + ttl.as_millis() as u64;
            self.run(|mut c| async move { c.hset::<_, _, _, ()>(&key, proxy_id, expires).await })
                .await
        })
    }

    fn live_proxies(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let key = self.index_key("proxies");
            let k2 = key.clone();
            let raw: HashMap<String, u64> = self
                .run(|mut c| async move { c.hgetall(&k2).await })
                .await?;
            let now = now_ms();
            let (mut live, dead): (Vec<_>, Vec<_>) = raw.into_iter().partition(|(_, e)| *e > now);
            if !dead.is_empty() {
                let dead: Vec<String> = dead.into_iter().map(|(p, _)| p).collect();
                self.run(|mut c| async move { c.hdel::<_, _, ()>(&key, dead).await })
                    .await?;
            }
            live.sort();
            Ok(live.into_iter().map(|(p, _)| p).collect())
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
            check_name(group)?;
            if batch.is_empty() {
                return Ok(());
            }
            let mut pipe = redis::pipe();
            for d in &batch {
                let key = self.group_key(group, &format!("rate:{}", d.window.tag()));
                if d.requests > 0 {
                    pipe.hincr(&key, format!("r\t{proxy}\t{}", d.name), d.requests)
                        .ignore();
                }
                if d.tokens > 0 {
                    pipe.hincr(&key, format!("t\t{proxy}\t{}", d.name), d.tokens)
                        .ignore();
                }
                pipe.expire(&key, d.window.ttl_secs() as i64).ignore();
            }
            self.run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
                .await
        })
    }

    fn rates<'a>(
        &'a self,
        group: &'a str,
        windows: &'a [RateWindow],
        except_proxy: &'a str,
    ) -> BoxFuture<'a, Result<RateCounts, StoreError>> {
        Box::pin(async move {
            check_name(group)?;
            let mut pipe = redis::pipe();
            for w in windows {
                pipe.hgetall(self.group_key(group, &format!("rate:{}", w.tag())));
            }
            let raw: Vec<HashMap<String, u64>> = self
                .run(|mut c| async move { pipe.query_async(&mut c).await })
                .await?;
            let mut out = RateCounts::new();
            for (w, fields) in windows.iter().zip(raw) {
                let sums = out.entry(w.clone()).or_default();
                for (field, n) in fields {
                    let mut parts = field.splitn(3, '\t');
                    let (Some(what), Some(proxy), Some(name)) =
                        (parts.next(), parts.next(), parts.next())
                    else {
                        continue;
                    };
                    if proxy == except_proxy {
                        continue;
                    }
                    let c: &mut Counter = sums.entry(name.to_owned()).or_default();
                    match what {
                        "r" => c.requests += n,
                        "t" => c.tokens += n,
                        _ => {}
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
            let key = self.binding_key(resource);
            let value = serde_json::to_string(binding).map_err(corrupt)?;
            let ms = ttl.as_millis().max(1) as u64;
            self.run(|mut c| async move { c.pset_ex::<_, _, ()>(&key, value, ms).await })
                .await
        })
    }

    fn unbind<'a>(&'a self, resource: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let key = self.binding_key(resource);
            let channel = self.channel();
            let event = serde_json::json!({"type": "unbound", "resource": resource}).to_string();
            self.run(|mut c| async move {
                c.del::<_, ()>(&key).await?;
                c.publish::<_, _, ()>(&channel, event).await
            })
            .await
        })
    }

    fn bound<'a>(
        &'a self,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<Option<Binding>, StoreError>> {
        Box::pin(async move {
            let key = self.binding_key(resource);
            let raw: Option<String> = self.run(|mut c| async move { c.get(&key).await }).await?;
            raw.map(|r| serde_json::from_str(&r).map_err(corrupt))
                .transpose()
        })
    }

    fn append_audit(&self, events: Vec<AuditEvent>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if events.is_empty() {
                return Ok(());
            }
            let mut pipe = redis::pipe();
            for e in &events {
                check_name(&e.group)?;
                let json = serde_json::to_string(e).map_err(corrupt)?;
                pipe.xadd_maxlen(
                    self.group_key(&e.group, "audit"),
                    redis::streams::StreamMaxlen::Approx(audit::KEEP),
                    "*",
                    &[("e", json)],
                )
                .ignore();
            }
            self.run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
                .await
        })
    }

    fn audit<'a>(
        &'a self,
        group: &'a str,
        cursor: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(String, AuditEvent)>, StoreError>> {
        Box::pin(async move {
            check_name(group)?;
            let key = self.group_key(group, "audit");
            let start = if cursor.is_empty() {
                "-".to_owned()
            } else {
                format!("({cursor}")
            };
            let reply: redis::streams::StreamRangeReply = self
                .run(|mut c| async move { c.xrange_count(&key, start, "+", limit).await })
                .await?;
            let mut out = Vec::with_capacity(reply.ids.len());
            for entry in reply.ids {
                let Some(json) = entry.get::<String>("e") else {
                    continue;
                };
                out.push((entry.id, serde_json::from_str(&json).map_err(corrupt)?));
            }
            Ok(out)
        })
    }
}
