//! The controller: watches GeminiKeyGroups and the Secrets that opted in, writes each group's
//! snapshot to the store, folds the proxies' reports into status (every ~15 s, jittered),
//! records Events, and removes a group's state on delete (finalizer).
//!
//! Both watches feed reflector caches: a reconcile reads Secrets from the cache, never from the
//! API server. The group watch wakes the controller only for changes that matter (generation,
//! deletion, finalizers), not for the status it writes itself, so status patches cannot feed
//! each other.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use keystore::clock::now_ms;
use keystore::{KeyStore, StoreError, UsageWindow};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self as kcontroller, Action};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, PredicateConfig, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;

use crate::crd::{GeminiKeyGroup, GeminiKeyGroupStatus};
use crate::events::{EventSink, Note};
use crate::metrics::Metrics;
use crate::plan::{self, Observed, Plan};

pub const FINALIZER: &str = "gemini-proxy.io/store-cleanup";
pub const MANAGER: &str = "gemini-proxy-operator";
/// How often a group's status is refreshed from the store (±20 % jitter).
const RESYNC: Duration = Duration::from_secs(15);
/// The longest a reconcile waits on the store before the group is reported unreachable.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a reconcile waits for the Secret cache's first listing.
const CACHE_WAIT: Duration = Duration::from_secs(60);
/// Groups reconciled at once.
const CONCURRENCY: u16 = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("the group has no namespace")]
    NoNamespace,
    #[error("the Secret cache has not listed yet")]
    NotSynced,
}

impl Error {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Store(_) => "store",
            Self::NoNamespace => "no_namespace",
            Self::NotSynced => "not_synced",
        }
    }
}

/// What reconciles share.
pub struct Context {
    pub client: Client,
    pub store: Arc<dyn KeyStore>,
    pub events: EventSink,
    pub metrics: Arc<Metrics>,
    /// The GeminiKeyGroup watch has listed everything once.
    groups_listed: AtomicBool,
    /// The Secrets that opted in, as the watch last saw them.
    secrets: RwLock<Store<Secret>>,
    /// The Secret watch has listed everything once (reconciles wait for it: a group planned
    /// from an empty cache would lose its keys).
    secrets_listed: watch::Sender<bool>,
    /// Failures in a row per group (`namespace/name`), for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Hosts a group's upstream may name (`None`: any); others get no keys in the store.
    allowed_upstream_hosts: Option<Vec<String>>,
}

impl Context {
    /// A context with an empty Secret cache that [`run`] fills.
    pub fn new(client: Client, store: Arc<dyn KeyStore>, metrics: Arc<Metrics>) -> Self {
        let instance = std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("{MANAGER}-{}", std::process::id()));
        Self {
            events: EventSink::new(client.clone(), MANAGER, instance),
            client,
            store,
            metrics,
            groups_listed: AtomicBool::new(false),
            secrets: RwLock::new(reflector::store().0),
            secrets_listed: watch::Sender::new(false),
            failures: Mutex::new(HashMap::new()),
            allowed_upstream_hosts: None,
        }
    }

    /// Limits the hosts a group's upstream may name (`None`: any host).
    pub fn with_allowed_upstream_hosts(mut self, hosts: Option<Vec<String>>) -> Self {
        self.allowed_upstream_hosts = hosts;
        self
    }

    /// The same context with `secrets` in its cache, as if the watch had listed them (tests).
    pub fn with_secrets(self, secrets: Vec<Secret>) -> Self {
        let (reader, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for s in secrets {
            writer.apply_watcher_event(&watcher::Event::InitApply(s));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        self.set_secret_cache(reader);
        self.secrets_listed.send_replace(true);
        self
    }

    fn set_secret_cache(&self, reader: Store<Secret>) {
        if let Ok(mut s) = self.secrets.write() {
            *s = reader;
        }
    }

    /// Both watches have listed once: the operator knows the cluster.
    pub fn is_synced(&self) -> bool {
        self.groups_listed.load(Ordering::Relaxed) && *self.secrets_listed.borrow()
    }

    /// The cached, opted-in Secrets of `ns` that `g` reads (by name or by its selector).
    pub fn secrets_for(&self, g: &GeminiKeyGroup, ns: &str) -> Vec<Secret> {
        let cache = match self.secrets.read() {
            Ok(s) => s.clone(),
            Err(_) => return Vec::new(),
        };
        let mut out: Vec<Secret> = cache
            .state()
            .into_iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some(ns) && plan::concerns(g, s))
            .map(|s| (*s).clone())
            .collect();
        out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        out
    }

    async fn wait_for_secrets(&self) -> Result<(), Error> {
        let mut rx = self.secrets_listed.subscribe();
        match tokio::time::timeout(CACHE_WAIT, rx.wait_for(|listed| *listed)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::NotSynced),
        }
    }

    fn failed_again(&self, group: &str) -> u32 {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(group.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    fn succeeded(&self, group: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.remove(group);
    }
}

/// `base` ± 20 %, spread by `salt` and the clock, so that a thousand groups do not wake together.
pub fn jittered(base: Duration, salt: &str) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    salt.hash(&mut h);
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        .hash(&mut h);
    let spread = (h.finish() % 401) as f64 / 1000.0; // 0.0 ..= 0.4
    base.mul_f64(0.8 + spread)
}

/// The delay after the `n`th failure in a row: 2 s doubling to 5 minutes, jittered.
pub fn backoff(n: u32, salt: &str) -> Duration {
    let secs = 2u64
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(300);
    jittered(Duration::from_secs(secs), salt)
}

/// Events per group and reconcile; more are summarised in one Event.
const AUDIT_EVENTS_MAX: usize = 20;

/// Turns the group's audit trail entries after `cursor` (kept in the status, so a new leader
/// goes on where the last one stopped) into Events, and records recoveries (which no proxy sees
/// happen) in the trail. Returns the new cursor. Without a cursor, entries from before the
/// group was created (a former group of the same name) are skipped. Every Event is named after
/// the entry it reports, so a handover cannot publish one twice.
async fn report_audit(
    ctx: &Context,
    name: &str,
    g: &GeminiKeyGroup,
    cursor: Option<&str>,
    recovered: Vec<(keystore::KeyId, String)>,
) -> Result<String, StoreError> {
    let now = now_ms();
    let origin = "operator";
    let created_ms = g
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_millisecond().max(0) as u64)
        .unwrap_or(0)
        .saturating_sub(5_000);
    let mut notes: Vec<Note> = Vec::new();
    let mut next_cursor = cursor.unwrap_or_default().to_owned();
    loop {
        let page = ctx.store.audit(name, &next_cursor, 200).await?;
        let Some((last, _)) = page.last() else {
            break;
        };
        next_cursor = last.clone();
        let full = page.len() == 200;
        for (id, e) in page {
            if (cursor.is_none() && e.at_ms < created_ms) || e.origin == origin {
                continue;
            }
            if let Some(k) = plan::audit_event(&e) {
                notes.push(Note {
                    warning: k.warning,
                    reason: k.reason,
                    note: k.note,
                    dedup: format!("audit/{id}"),
                });
            }
        }
        if !full {
            break;
        }
    }
    for (id, dedup) in recovered {
        let e = keystore::AuditEvent {
            at_ms: now,
            group: name.to_owned(),
            key: id,
            kind: keystore::AuditKind::Recovered,
            reason: Some("cooldown over".into()),
            until_ms: None,
            model: None,
            origin: origin.into(),
        };
        tracing::info!(target: "gemini_proxy::audit", event = "key_recovered", group = name, key_id = %e.key, "key active again");
        if let Some(k) = plan::audit_event(&e) {
            notes.push(Note {
                warning: k.warning,
                reason: k.reason,
                note: k.note,
                dedup,
            });
        }
        ctx.store.append_audit(vec![e]).await?;
    }
    let extra = notes.len().saturating_sub(AUDIT_EVENTS_MAX);
    for n in notes.iter().take(AUDIT_EVENTS_MAX) {
        ctx.events.publish(g, n).await;
    }
    if extra > 0 {
        let summary = Note {
            warning: false,
            reason: "KeyEvents",
            note: format!(
                "{extra} more key events; see the store's audit trail or the proxies' logs"
            ),
            dedup: format!("more/{next_cursor}"),
        };
        ctx.events.publish(g, &summary).await;
    }
    Ok(next_cursor)
}

/// Reconciles one group: deletion (store cleanup, then the finalizer), else the finalizer
/// first and then the group itself.
pub async fn reconcile(g: Arc<GeminiKeyGroup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = g.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<GeminiKeyGroup> = Api::namespaced(ctx.client.clone(), &ns);
    let has_finalizer = g.finalizers().iter().any(|f| f == FINALIZER);
    let result = if g.metadata.deletion_timestamp.is_some() {
        if has_finalizer {
            cleanup(&g, &ns, &ctx).await?;
            remove_finalizer(&api, &g).await?;
        }
        Ok(Action::await_change())
    } else {
        ctx.wait_for_secrets().await?;
        if !has_finalizer {
            add_finalizer(&api, &g).await?;
        }
        apply(&g, &ns, &ctx).await
    };
    ctx.metrics.reconciled(started.elapsed());
    if result.is_ok() {
        ctx.succeeded(&plan::store_name(&ns, &g.name_any()));
    }
    result
}

/// Adds the finalizer by server-side apply: only this manager's entry of the list is touched,
/// whatever the cache's copy of the group says (no replace of a stale object).
async fn add_finalizer(api: &Api<GeminiKeyGroup>, g: &GeminiKeyGroup) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": GeminiKeyGroup::api_version(&()),
        "kind": GeminiKeyGroup::kind(&()),
        "metadata": {"name": g.name_any(), "finalizers": [FINALIZER]},
    });
    api.patch(
        &g.name_any(),
        &PatchParams::apply(MANAGER),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Removes the finalizer with a JSON patch that first tests the entry is where the copy says.
pub async fn remove_finalizer(api: &Api<GeminiKeyGroup>, g: &GeminiKeyGroup) -> Result<(), Error> {
    let Some(i) = g.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{i}");
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]))
    .map_err(|e| Error::Kube(kube::Error::SerdeError(e)))?;
    match api
        .patch(
            &g.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Gone already: nothing to remove.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Requeues after a failure with a per-group exponential backoff; the others go on.
pub fn error_policy(g: Arc<GeminiKeyGroup>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = plan::store_name(&g.namespace().unwrap_or_default(), &g.name_any());
    let n = ctx.failed_again(&key);
    // A store outage is retried at least every 30 s, so that its end shows soon in the status.
    let delay = match error {
        Error::Store(_) => backoff(n, &key).min(jittered(Duration::from_secs(30), &key)),
        _ => backoff(n, &key),
    };
    tracing::warn!(group = %key, error = %error, failures = n, retry_in_ms = delay.as_millis() as u64, "reconcile failed");
    ctx.metrics.failed(error.label());
    Action::requeue(delay)
}

/// What the store knows of a group's keys: states, the proxies' reports, and the last hour's
/// requests (60 minute windows in one pipelined read).
pub async fn observe(
    store: &dyn KeyStore,
    name: &str,
    plan: &Plan,
) -> Result<Observed, StoreError> {
    let now = now_ms();
    let windows: Vec<UsageWindow> = (0..60)
        .map(|m| UsageWindow::minute_of(now.saturating_sub(m * 60_000)))
        .collect();
    let usage = store.usage_sum(name, &windows).await?;
    let mut observed = Observed {
        statuses: store.key_statuses(name).await?,
        reports: store.health_reports(name).await?,
        ..Observed::default()
    };
    for k in &plan.snapshot.keys {
        if let Some(c) = usage.keys.get(&k.id) {
            observed.requests_last_hour.insert(k.id.clone(), c.requests);
        }
    }
    Ok(observed)
}

/// Writes the group to the store and reads back its keys' state: the status it gives.
async fn sync_store(
    g: &GeminiKeyGroup,
    plan: &Plan,
    before: Option<&GeminiKeyGroupStatus>,
    ctx: &Context,
) -> Result<GeminiKeyGroupStatus, StoreError> {
    let name = plan.snapshot.name.clone();
    let version = ctx.store.publish_group(plan.snapshot.clone()).await?;
    let observed = observe(ctx.store.as_ref(), &name, plan).await?;
    // lastSyncTime moves when the store holds a new version of the group.
    let synced = (before.and_then(|s| s.store_version) != Some(version))
        .then(|| jiff::Timestamp::now().to_string());
    let mut status = plan::status(g, plan, &observed, before, synced, now_ms());
    status.store_version = Some(version);
    let cursor = before.and_then(|s| s.audit_cursor.as_deref());
    let recovered = plan::recoveries(before, &status);
    let cursor = report_audit(ctx, &name, g, cursor, recovered).await?;
    status.audit_cursor = (!cursor.is_empty()).then_some(cursor);
    Ok(status)
}

async fn apply(g: &GeminiKeyGroup, ns: &str, ctx: &Context) -> Result<Action, Error> {
    let secrets = ctx.secrets_for(g, ns);
    let mut plan = plan::plan(g, ns, &secrets);
    plan::restrict_upstream(&mut plan, ctx.allowed_upstream_hosts.as_deref());
    let before = g.status.as_ref();
    let reachable_before = plan::store_was_reachable(before);
    let since = before
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == plan::STORE_REACHABLE)
        })
        .map(|c| c.last_transition_time.0.to_string())
        .unwrap_or_default();
    let synced = match tokio::time::timeout(STORE_TIMEOUT, sync_store(g, &plan, before, ctx)).await
    {
        Ok(r) => r,
        Err(_) => Err(StoreError::Unavailable(
            "the store did not answer in time".into(),
        )),
    };
    let status = match synced {
        Ok(status) => status,
        Err(e) => {
            // The group's state can neither be seen nor written: say so, once per outage.
            let status = plan::store_unreachable(g, before, &e.to_string(), now_ms());
            if reachable_before {
                let note = Note {
                    warning: true,
                    reason: "StoreUnavailable",
                    note: format!("the key-state store cannot be reached: {e}"),
                    dedup: format!("store-down/{since}"),
                };
                ctx.events.publish(g, &note).await;
            }
            patch_status(ctx, g, ns, before, &status).await?;
            return Err(e.into());
        }
    };
    if !reachable_before {
        let note = Note {
            warning: false,
            reason: "StoreReachable",
            note: "the key-state store answers again".into(),
            dedup: format!("store-up/{since}"),
        };
        ctx.events.publish(g, &note).await;
    }
    let resolved_before = before
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "KeysResolved"))
        .map(|c| (c.status.clone(), c.message.clone()));
    let missing = plan::bounded(plan.missing.join("; "), crate::crd::bounds::MESSAGE);
    if !plan.missing.is_empty() && resolved_before != Some(("False".into(), missing.clone())) {
        let note = Note {
            warning: true,
            reason: "KeysUnresolved",
            note: missing.clone(),
            dedup: format!(
                "unresolved/{}/{missing}",
                g.metadata.generation.unwrap_or_default()
            ),
        };
        ctx.events.publish(g, &note).await;
    }
    patch_status(ctx, g, ns, before, &status).await?;
    Ok(Action::requeue(jittered(RESYNC, &plan.snapshot.name)))
}

/// Patches the status when it differs from what the group carries.
async fn patch_status(
    ctx: &Context,
    g: &GeminiKeyGroup,
    ns: &str,
    before: Option<&GeminiKeyGroupStatus>,
    status: &GeminiKeyGroupStatus,
) -> Result<(), Error> {
    if before == Some(status) {
        return Ok(());
    }
    let api: Api<GeminiKeyGroup> = Api::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({ "status": status });
    api.patch_status(
        &g.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

async fn cleanup(g: &GeminiKeyGroup, ns: &str, ctx: &Context) -> Result<(), Error> {
    let name = plan::store_name(ns, &g.name_any());
    ctx.store.remove_group(&name).await?;
    tracing::info!(group = %name, "group removed from the store");
    Ok(())
}

/// What wakes the controller for a group: a new generation (spec or deletion), finalizers, or
/// the deletion mark. Status changes (the operator's own patches) do not.
fn changes_that_matter(g: &GeminiKeyGroup) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    g.metadata.generation.hash(&mut h);
    g.metadata.deletion_timestamp.is_some().hash(&mut h);
    g.metadata.finalizers.hash(&mut h);
    Some(h.finish())
}

/// Runs the controller until `shutdown` resolves. `namespace`: one namespace, or all.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (groups, secrets): (Api<GeminiKeyGroup>, Api<Secret>) = match &namespace {
        Some(ns) => (
            Api::namespaced(ctx.client.clone(), ns),
            Api::namespaced(ctx.client.clone(), ns),
        ),
        None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
    };
    // The controller wants a Sync trigger: relay the caller's through a oneshot.
    let (fire, fired) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown.await;
        let _ = fire.send(());
    });
    ctx.groups_listed.store(false, Ordering::Relaxed);
    ctx.secrets_listed.send_replace(false);

    // Groups: a reflector cache for the controller, and the readiness signal.
    let (group_reader, group_writer) = reflector::store();
    let listed = ctx.clone();
    let group_events = watcher(groups, watcher::Config::default())
        .default_backoff()
        .reflect(group_writer)
        .inspect(move |ev| {
            if let Ok(watcher::Event::InitDone) = ev
                && !listed.groups_listed.swap(true, Ordering::Relaxed)
            {
                tracing::info!("GeminiKeyGroup cache synced");
            }
        })
        .touched_objects()
        .predicate_filter(changes_that_matter, PredicateConfig::default());

    // Secrets: only those that opted in, into the cache reconciles read.
    let (secret_reader, secret_writer) = reflector::store();
    ctx.set_secret_cache(secret_reader);
    let listed = ctx.clone();
    let secret_events = watcher(
        secrets,
        watcher::Config::default().labels(plan::OPT_IN_SELECTOR),
    )
    .default_backoff()
    .reflect(secret_writer)
    .inspect(move |ev| {
        if let Ok(watcher::Event::InitDone) = ev
            && !listed.secrets_listed.send_replace(true)
        {
            tracing::info!("Secret cache synced (opted-in Secrets only)");
        }
    })
    .touched_objects();

    let groups_cache = group_reader.clone();
    Controller::for_stream(group_events, group_reader)
        .watches_stream(secret_events, move |secret: Secret| {
            groups_cache
                .state()
                .into_iter()
                .filter(|g| plan::concerns(g, &secret))
                .map(|g| ObjectRef::from_obj(&*g))
                .collect::<Vec<_>>()
        })
        .with_config(kcontroller::Config::default().concurrency(CONCURRENCY))
        .graceful_shutdown_on(async move {
            let _ = fired.await;
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller");
            }
        })
        .await;
}
