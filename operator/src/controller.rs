//! The controller: watches GeminiKeyGroups and Secrets, writes each group's snapshot to the
//! store, folds the proxies' reports into status (every ~15 s), records Events, and removes a
//! group's state on delete (finalizer).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use keystore::clock::now_ms;
use keystore::{KeyStore, StoreError, UsageWindow};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Client, Resource, ResourceExt};

use crate::crd::GeminiKeyGroup;
use crate::metrics::Metrics;
use crate::plan::{self, Observed, Plan};

pub const FINALIZER: &str = "gemini-proxy.io/store-cleanup";
pub const MANAGER: &str = "gemini-proxy-operator";
const RESYNC: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("the group has no namespace")]
    NoNamespace,
}

impl Error {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Store(_) => "store",
            Self::Finalizer(_) => "finalizer",
            Self::NoNamespace => "no_namespace",
        }
    }
}

/// What reconciles share.
pub struct Context {
    pub client: Client,
    pub store: Arc<dyn KeyStore>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The watch of GeminiKeyGroups has listed everything once (readiness).
    pub synced: std::sync::atomic::AtomicBool,
}

impl Context {
    pub fn new(client: Client, store: Arc<dyn KeyStore>, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            store,
            metrics,
            synced: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Events per group and reconcile; more are summarised in one Event.
const AUDIT_EVENTS_MAX: usize = 20;

/// Turns the group's audit trail entries after `cursor` (kept in the status, so a new leader
/// goes on where the last one stopped) into Events, and records recoveries (which no proxy sees
/// happen) in the trail. Returns the new cursor. Without a cursor, entries from before the
/// group was created (a former group of the same name) are skipped.
async fn report_audit(
    ctx: &Context,
    name: &str,
    g: &GeminiKeyGroup,
    cursor: Option<&str>,
    recovered: Vec<keystore::KeyId>,
) -> Result<String, StoreError> {
    let now = now_ms();
    let origin = "operator";
    let reference = g.object_ref(&());
    let created_ms = g
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_millisecond().max(0) as u64)
        .unwrap_or(0)
        .saturating_sub(5_000);
    let mut events = Vec::new();
    let mut next_cursor = cursor.unwrap_or_default().to_owned();
    loop {
        let page = ctx.store.audit(name, &next_cursor, 200).await?;
        let Some((last, _)) = page.last() else {
            break;
        };
        next_cursor = last.clone();
        let full = page.len() == 200;
        for (_, e) in page {
            if cursor.is_none() && e.at_ms < created_ms {
                continue;
            }
            if e.origin != origin {
                events.push(e);
            }
        }
        if !full {
            break;
        }
    }
    let mut notes: Vec<plan::KeyEvent> = events.iter().filter_map(plan::audit_event).collect();
    for id in recovered {
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
        notes.extend(plan::audit_event(&e));
        ctx.store.append_audit(vec![e]).await?;
    }
    let extra = notes.len().saturating_sub(AUDIT_EVENTS_MAX);
    for e in notes.into_iter().take(AUDIT_EVENTS_MAX) {
        publish(ctx, &reference, e.warning, e.reason, e.note).await;
    }
    if extra > 0 {
        publish(
            ctx,
            &reference,
            false,
            "KeyEvents",
            format!("{extra} more key events; see the store's audit trail or the proxies' logs"),
        )
        .await;
    }
    Ok(next_cursor)
}

/// Reconciles one group: finalizer first, then apply or clean up.
pub async fn reconcile(g: Arc<GeminiKeyGroup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = g.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<GeminiKeyGroup> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, g, |event| async {
        match event {
            Finalizer::Apply(g) => apply(&g, &ns, &ctx).await,
            Finalizer::Cleanup(g) => cleanup(&g, &ns, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(started.elapsed());
    result
}

/// Requeues soon after a failure; the rest of the cluster's groups go on.
pub fn error_policy(g: Arc<GeminiKeyGroup>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(group = %g.name_any(), error = %error, "reconcile failed");
    ctx.metrics.failed(error.label());
    Action::requeue(Duration::from_secs(5))
}

/// The Secrets a group reads: by name (a missing one is simply absent) and by its selector.
pub async fn fetch_secrets(
    client: &Client,
    ns: &str,
    g: &GeminiKeyGroup,
) -> Result<Vec<Secret>, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut names: Vec<String> = plan::referenced_secrets(g).into_iter().collect();
    names.sort();
    let mut out = Vec::new();
    for n in names {
        if let Some(s) = api.get_opt(&n).await? {
            out.push(s);
        }
    }
    if let Some(sel) = &g.spec.key_selector {
        let mut parts: Vec<String> = sel
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.sort();
        let listed = api
            .list(&ListParams::default().labels(&parts.join(",")))
            .await?;
        for s in listed.items {
            if !out
                .iter()
                .any(|o: &Secret| o.metadata.name == s.metadata.name)
            {
                out.push(s);
            }
        }
    }
    Ok(out)
}

/// What the store knows of a group's keys.
pub async fn observe(
    store: &dyn KeyStore,
    name: &str,
    plan: &Plan,
) -> Result<Observed, StoreError> {
    let mut observed = Observed {
        statuses: store.key_statuses(name).await?,
        reports: store.health_reports(name).await?,
        ..Observed::default()
    };
    let now = now_ms();
    for m in 0..60 {
        let window = UsageWindow::minute_of(now.saturating_sub(m * 60_000));
        let usage = store.usage(name, &window).await?;
        for k in &plan.snapshot.keys {
            if let Some(c) = usage.keys.get(&k.id) {
                *observed.requests_last_hour.entry(k.id.clone()).or_default() += c.requests;
            }
        }
    }
    Ok(observed)
}

async fn apply(g: &GeminiKeyGroup, ns: &str, ctx: &Context) -> Result<Action, Error> {
    let secrets = fetch_secrets(&ctx.client, ns, g).await?;
    let plan = plan::plan(g, ns, &secrets);
    let name = plan.snapshot.name.clone();
    let before = g.status.as_ref();
    let version = ctx.store.publish_group(plan.snapshot.clone()).await?;
    let observed = observe(ctx.store.as_ref(), &name, &plan).await?;
    // lastSyncTime moves when the store holds a new version of the group.
    let synced = (before.and_then(|s| s.store_version) != Some(version))
        .then(|| jiff::Timestamp::now().to_string());
    let mut status = plan::status(g, &plan, &observed, before, synced, now_ms());
    status.store_version = Some(version);
    let reference = g.object_ref(&());
    let resolved_before = before
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "KeysResolved"))
        .map(|c| (c.status.clone(), c.message.clone()));
    if !plan.missing.is_empty()
        && resolved_before != Some(("False".into(), plan.missing.join("; ")))
    {
        publish(
            ctx,
            &reference,
            true,
            "KeysUnresolved",
            plan.missing.join("; "),
        )
        .await;
    }
    let cursor = before.and_then(|s| s.audit_cursor.as_deref());
    let recovered = plan::recoveries(before, &status);
    let cursor = report_audit(ctx, &name, g, cursor, recovered).await?;
    status.audit_cursor = (!cursor.is_empty()).then_some(cursor);
    if before != Some(&status) {
        let api: Api<GeminiKeyGroup> = Api::namespaced(ctx.client.clone(), ns);
        let patch = serde_json::json!({ "status": status });
        api.patch_status(
            &g.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    Ok(Action::requeue(RESYNC))
}

async fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    warning: bool,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(error = %e, reason, "cannot publish an event");
    }
}

async fn cleanup(g: &GeminiKeyGroup, ns: &str, ctx: &Context) -> Result<Action, Error> {
    let name = plan::store_name(ns, &g.name_any());
    ctx.store.remove_group(&name).await?;
    tracing::info!(group = %name, "group removed from the store");
    Ok(Action::await_change())
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
    let controller = Controller::new(groups, watcher::Config::default());
    let store = controller.store();
    {
        let store = store.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if store.wait_until_ready().await.is_ok() {
                ctx.synced.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::info!("GeminiKeyGroup cache synced");
            }
        });
    }
    controller
        .watches(
            secrets,
            watcher::Config::default(),
            move |secret: Secret| {
                store
                    .state()
                    .into_iter()
                    .filter(|g| plan::concerns(g, &secret))
                    .map(|g| ObjectRef::from_obj(&*g))
                    .collect::<Vec<_>>()
            },
        )
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
