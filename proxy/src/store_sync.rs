//! Keeping the in-memory groups and the store in step, off the request path:
//! - the outbox: key transitions the request path hands over without waiting; written in order,
//!   kept and retried while the store is unreachable, written back when it returns;
//! - the follower: store events, a periodic poll and a resync after every outage rebuild the
//!   groups or adopt other proxies' key states (the newer state wins);
//! - the reporter: heartbeat and per-key health with a time to live;
//! - the usage flusher: this proxy's running totals per group and window, every 500 ms;
//! - the rate sharer: quota and client counters out every 250 ms, the other proxies' counts in
//!   every 500 ms (only for groups with limits);
//! - the audit trail: each key transition the store applied is appended to the group's trail.
//!
//! While the store is down, proxies serve from their last snapshot (or their own config) with
//! local state; the outage is logged once, shown by `gemini_proxy_store_up` and `/readyz`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use keystore::clock::now_ms;
use keystore::{
    AuditEvent, GroupSnapshot, HealthReport, KeyId, KeyStore, StoreError, StoreEvent, Transition,
    UsageCounts, UsageDelta, UsageWindow,
};
use tokio::sync::{Notify, broadcast, mpsc, watch};

use crate::registry::Registry;

const OUTBOX_CAPACITY: usize = 16_384;
const RETRY_BACKLOG: usize = 10_000;
const POLL_UP: Duration = Duration::from_secs(10);
const POLL_DOWN: Duration = Duration::from_secs(1);
/// How often the names of the store's groups are compared with the ones served: a group that
/// appeared or went is picked up within this, even if its pub/sub event was missed.
const NAMES_EVERY: Duration = Duration::from_secs(1);
const HEALTH_EVERY: Duration = Duration::from_secs(10);
const HEALTH_TTL: Duration = Duration::from_secs(30);
const USAGE_EVERY: Duration = Duration::from_millis(500);
const RATES_OUT_EVERY: Duration = Duration::from_millis(250);
/// Other proxies' counts are read every this many write ticks.
const RATES_IN_TICKS: u32 = 2;

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

/// Whether the store answers, as the background tasks see it.
pub struct StoreStatus {
    pub kind: &'static str,
    up: AtomicBool,
    /// Since when it is in its current state (Unix ms).
    since_ms: AtomicU64,
    pub resync: Notify,
}

impl StoreStatus {
    pub fn new(kind: &'static str) -> Self {
        Self {
            kind,
            up: AtomicBool::new(true),
            since_ms: AtomicU64::new(now_ms()),
            resync: Notify::new(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn since_ms(&self) -> u64 {
        self.since_ms.load(Ordering::Relaxed)
    }

    /// Records an outcome; logs once per change; a return after an outage asks for a resync.
    pub fn record<T>(&self, result: &Result<T, StoreError>) {
        match result {
            Ok(_) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    let down_for = now_ms().saturating_sub(self.since_ms());
                    self.since_ms.store(now_ms(), Ordering::Relaxed);
                    tracing::info!(
                        store = self.kind,
                        down_for_ms = down_for,
                        "store reachable again: writing back local state and resyncing"
                    );
                    self.resync.notify_one();
                }
            }
            Err(StoreError::Unavailable(e)) => {
                if self.up.swap(false, Ordering::Relaxed) {
                    self.since_ms.store(now_ms(), Ordering::Relaxed);
                    tracing::warn!(store = self.kind, error = %e, "store unreachable: serving from the last snapshot with local state");
                }
            }
            Err(e) => {
                tracing::error!(store = self.kind, error = %e, "store error");
            }
        }
    }
}

/// Loads every group and its key states from the store into the registry.
pub async fn reload(store: &dyn KeyStore, registry: &Registry) -> Result<(), StoreError> {
    let groups = store.groups().await?;
    let mut statuses = std::collections::HashMap::with_capacity(groups.len());
    for g in &groups {
        statuses.insert(g.name.clone(), store.key_statuses(&g.name).await?);
    }
    registry.rebuild_refusing(groups, &statuses, store.refused_groups());
    Ok(())
}

/// Publishes this proxy's own groups (idempotent), then reloads.
pub async fn publish_and_reload(
    store: &dyn KeyStore,
    registry: &Registry,
    own: &[GroupSnapshot],
) -> Result<(), StoreError> {
    for g in own {
        store.publish_group(g.clone()).await?;
    }
    reload(store, registry).await
}

/// What the background tasks work with.
pub struct Context {
    pub store: Arc<dyn KeyStore>,
    pub registry: Arc<Registry>,
    pub proxy_id: String,
    /// The groups of this proxy's config file (none in Kubernetes); replaced by a reload. Held
    /// while they are published, so that a publish of the old list cannot finish after a reload
    /// withdrew one of its groups (which would put the group back for good).
    pub own_groups: tokio::sync::Mutex<Vec<GroupSnapshot>>,
    pub status: Arc<StoreStatus>,
}

/// Starts the background tasks; they end when `stop` turns true.
pub fn spawn(ctx: Arc<Context>, outbox: mpsc::Receiver<Pending>, stop: watch::Receiver<bool>) {
    tokio::spawn(write_transitions(ctx.clone(), outbox, stop.clone()));
    tokio::spawn(follow(ctx.clone(), stop.clone()));
    tokio::spawn(report(ctx.clone(), stop.clone()));
    tokio::spawn(share_rates(ctx.clone(), stop.clone()));
    tokio::spawn(flush_usage(ctx, stop));
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn write_transitions(
    ctx: Arc<Context>,
    mut outbox: mpsc::Receiver<Pending>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backlog: VecDeque<Pending> = VecDeque::new();
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            p = outbox.recv() => match p {
                Some(p) => backlog.push_back(p),
                None => return,
            },
            _ = retry.tick(), if !backlog.is_empty() => {}
        }
        while let Some(p) = backlog.front() {
            let r = ctx
                .store
                .transition(&p.group, &p.keys, &p.transition, &ctx.proxy_id)
                .await;
            ctx.status.record(&r);
            if let Ok(changes) = &r
                && !changes.is_empty()
            {
                let now = now_ms();
                let events = changes
                    .iter()
                    .map(|(id, st)| {
                        AuditEvent::of_transition(
                            &p.group,
                            id,
                            &p.transition,
                            st,
                            &ctx.proxy_id,
                            now,
                        )
                    })
                    .collect();
                // The trail is for people: an entry that cannot be written is logged, not kept.
                if let Err(e) = ctx.store.append_audit(events).await {
                    tracing::warn!(error = %e, "audit trail not written");
                }
            }
            match r {
                Ok(_) | Err(StoreError::UnknownGroup(_)) | Err(StoreError::Corrupt(_)) => {
                    backlog.pop_front();
                }
                Err(StoreError::Unavailable(_)) => {
                    while backlog.len() > RETRY_BACKLOG {
                        backlog.pop_front();
                    }
                    break;
                }
            }
        }
    }
}

/// What makes the follower read everything again.
#[derive(PartialEq)]
enum Reload {
    No,
    Yes,
    /// The store was away (or the link to it): it may have come back empty, so the key states
    /// this proxy knows are written back as well as its groups.
    AfterOutage,
}

async fn follow(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let mut events = ctx.store.subscribe();
    // Groups whose key states still wait to be written back (the store did not hold the group
    // yet: in Kubernetes the operator publishes it again on its next pass).
    let mut write_back: HashSet<String> = HashSet::new();
    // What was loaded at start: a group published since then differs from it.
    let mut names: Option<Vec<String>> = {
        let mut loaded: Vec<String> = ctx
            .registry
            .groups()
            .pools()
            .iter()
            .map(|p| p.name().to_owned())
            .collect();
        loaded.sort_unstable();
        Some(loaded)
    };
    let mut names_check = tokio::time::interval(NAMES_EVERY);
    names_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let poll = if ctx.status.is_up() {
            POLL_UP
        } else {
            POLL_DOWN
        };
        let reload = tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(poll) => Reload::Yes,
            _ = ctx.status.resync.notified() => Reload::AfterOutage,
            _ = names_check.tick() => {
                if names_changed(&ctx, &mut names).await { Reload::Yes } else { Reload::No }
            }
            ev = events.recv() => match ev {
                Ok(StoreEvent::KeysChanged { group, origin, changes }) => {
                    if origin != ctx.proxy_id {
                        ctx.registry.adopt(&group, &changes);
                    }
                    Reload::No
                }
                Ok(StoreEvent::Resync) => Reload::AfterOutage,
                // The affinity cache follows these itself.
                Ok(StoreEvent::Unbound { .. }) => Reload::No,
                Ok(StoreEvent::GroupChanged { .. } | StoreEvent::GroupRemoved { .. }) => Reload::Yes,
                Err(broadcast::error::RecvError::Lagged(_)) => Reload::Yes,
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if reload == Reload::No {
            continue;
        }
        let own = ctx.own_groups.lock().await;
        let r = publish_and_reload(ctx.store.as_ref(), &ctx.registry, &own).await;
        drop(own);
        ctx.status.record(&r);
        if r.is_err() {
            continue;
        }
        if reload == Reload::AfterOutage {
            write_back.extend(
                ctx.registry
                    .groups()
                    .pools()
                    .iter()
                    .map(|p| p.name().to_owned()),
            );
        }
        if !write_back.is_empty() {
            write_back = write_back_states(&ctx, &write_back).await;
        }
    }
}

/// Whether the store's group names changed since `last` (new or removed groups); updates
/// `last`. A store error says no (the outage is handled elsewhere).
async fn names_changed(ctx: &Context, last: &mut Option<Vec<String>>) -> bool {
    let Ok(mut names) = ctx.store.group_names().await else {
        return false;
    };
    names.sort_unstable();
    if last.as_ref() == Some(&names) {
        return false;
    }
    *last = Some(names);
    true
}

/// Writes the key states this proxy holds for `groups` (retirements, unexpired cooldowns) to
/// the store, so that a store that restarted empty does not forget them; the later cooldown
/// wins there, and other proxies adopt them from the change events. Returns the groups that
/// could not be written yet.
async fn write_back_states(ctx: &Context, groups: &HashSet<String>) -> HashSet<String> {
    let now = now_ms();
    let mut pending = HashSet::new();
    for pool in ctx.registry.groups().pools() {
        if !groups.contains(pool.name()) {
            continue;
        }
        'keys: for m in &pool.members {
            let status = m.slot.status();
            let retire = status.invalid.map(|reason| Transition::Retire { reason });
            let cool = status
                .cooldowns
                .into_iter()
                .filter(|c| c.until_ms > now)
                .map(Transition::Cool);
            for t in retire.into_iter().chain(cool) {
                let r = ctx
                    .store
                    .transition(
                        pool.name(),
                        std::slice::from_ref(&m.slot.id),
                        &t,
                        &ctx.proxy_id,
                    )
                    .await;
                if r.is_err() {
                    if !matches!(r, Err(StoreError::UnknownGroup(_))) {
                        ctx.status.record(&r);
                    }
                    pending.insert(pool.name().to_owned());
                    break 'keys;
                }
            }
        }
    }
    pending
}

async fn report(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(HEALTH_EVERY);
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = every.tick() => {}
        }
        let r = ctx.store.heartbeat(&ctx.proxy_id, HEALTH_TTL).await;
        ctx.status.record(&r);
        if r.is_err() {
            continue;
        }
        let now = now_ms();
        for pool in ctx.registry.groups().pools() {
            let report = HealthReport {
                proxy_id: ctx.proxy_id.clone(),
                group: pool.name().to_owned(),
                at_ms: now,
                keys: pool
                    .members
                    .iter()
                    .map(|m| m.slot.health_report())
                    .collect(),
            };
            let r = ctx.store.report_health(report, HEALTH_TTL).await;
            ctx.status.record(&r);
        }
    }
}

/// This proxy's running usage totals of one group: the current minute's and the current
/// Pacific day's, per key and per scope.
#[derive(Default)]
struct Totals {
    minute: Option<(UsageWindow, UsageCounts)>,
    day: Option<(UsageWindow, UsageCounts)>,
    /// Changed since they were last written.
    dirty: bool,
}

impl Totals {
    fn add(&mut self, d: &UsageDelta) {
        for (slot, window) in [
            (&mut self.minute, UsageWindow::minute_of(d.at_ms)),
            (&mut self.day, UsageWindow::day_of(d.at_ms)),
        ] {
            match slot {
                Some((w, counts)) if *w == window => counts.add(d),
                _ => {
                    let mut counts = UsageCounts::default();
                    counts.add(d);
                    *slot = Some((window, counts));
                }
            }
        }
        self.dirty = true;
    }

    fn windows(&self) -> Vec<(UsageWindow, UsageCounts)> {
        self.minute.iter().chain(self.day.iter()).cloned().collect()
    }
}

/// Usage leaves as this proxy's running totals per group and window (one field each in the
/// store, replaced on every write): a few writes a second whatever the number of keys and
/// requests, and nothing lost while the store is away (the totals are written when it returns).
async fn flush_usage(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(USAGE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut totals: HashMap<String, Totals> = HashMap::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = every.tick() => {}
        }
        let now = now_ms();
        let groups = ctx.registry.groups();
        for pool in groups.pools() {
            for m in &pool.members {
                let (requests, tokens) = m.slot.take_usage();
                if requests > 0 || tokens > 0 {
                    totals
                        .entry(pool.name().to_owned())
                        .or_default()
                        .add(&UsageDelta {
                            group: pool.name().to_owned(),
                            key: m.slot.id.clone(),
                            scope: m.scope.to_string(),
                            requests,
                            tokens,
                            at_ms: now,
                        });
                }
            }
        }
        // Groups that are gone are dropped once written.
        totals.retain(|g, t| t.dirty || groups.get(g).is_some());
        for (group, t) in totals.iter_mut().filter(|(_, t)| t.dirty) {
            let r = ctx
                .store
                .put_usage_totals(group, &ctx.proxy_id, t.windows())
                .await;
            ctx.status.record(&r);
            if r.is_ok() {
                t.dirty = false;
            }
        }
    }
}

/// Shares quota and client counters with the other proxies, and reads theirs.
async fn share_rates(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(RATES_OUT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = 0u32;
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = every.tick() => {}
        }
        tick = tick.wrapping_add(1);
        for pool in ctx.registry.groups().pools() {
            if !pool.book.wants_sharing() {
                continue;
            }
            let batch = pool.book.take_pending(now_ms());
            if !batch.is_empty() {
                // Like usage, counts that cannot be written are dropped: the local count stays
                // exact, only the other proxies miss them.
                let r = ctx.store.add_rates(pool.name(), &ctx.proxy_id, batch).await;
                ctx.status.record(&r);
            }
            if tick.is_multiple_of(RATES_IN_TICKS) {
                let now = now_ms();
                let windows = crate::quota::Book::windows(now);
                let r = ctx.store.rates(pool.name(), &windows, &ctx.proxy_id).await;
                if let Ok(counts) = &r {
                    pool.book.absorb(counts, now);
                }
                ctx.status.record(&r);
            }
        }
    }
}
