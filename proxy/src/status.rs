//! The status view: per group, each key's state with its reason and end, its health, and the
//! usage of the last hour per key, per project and per minute. Key ids only, never keys.
//!
//! Built from a running proxy (its own view of the keys, usage from the store) for the admin
//! listener's `/status.json` and page, or from a store alone for `gemini-proxy status
//! --redis-url`. Both give the same [`Report`], which the CLI prints as tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use keystore::{
    GroupSnapshot, KeyState, KeyStatus, KeyStore, StoreError, UsageCounts, UsageWindow,
};
use serde::{Deserialize, Serialize};

use crate::registry::Groups;

/// Minutes of usage shown.
pub const MINUTES: u64 = 60;
/// Groups and keys a report lists at most (a page and a terminal are for people).
const MAX_GROUPS: usize = 200;
const MAX_KEYS: usize = 1000;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// When it was made (Unix ms).
    pub at_ms: u64,
    /// Where it comes from: a proxy's id, or `store`.
    pub source: String,
    pub store: StoreView,
    pub groups: Vec<GroupView>,
    /// Groups left out beyond the report's bound.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub groups_omitted: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StoreView {
    pub kind: String,
    pub up: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GroupView {
    pub name: String,
    pub access: String,
    pub strategy: String,
    pub keys: Vec<KeyView>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keys_omitted: usize,
    /// Requests and tokens per project over the last hour.
    pub projects: Vec<Usage>,
    /// Requests and tokens per minute over the last hour, oldest first.
    pub minutes: Vec<Minute>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    pub id: String,
    pub project: String,
    /// Active, CoolingDown, Invalid or Disabled.
    pub state: String,
    /// Why it cools or was retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The model a cooldown is about (none: every model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// When the cooldown ends (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// 0 to 1; none when read from a store without reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<f64>,
    #[serde(default)]
    pub in_flight: u32,
    pub requests_last_hour: u64,
    pub tokens_last_hour: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub name: String,
    pub requests: u64,
    pub tokens: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Minute {
    pub at_ms: u64,
    pub requests: u64,
    pub tokens: u64,
}

/// One key as the report shows it.
pub struct KeyFacts<'a> {
    pub id: &'a str,
    pub project: Option<&'a str>,
    pub disabled: bool,
    pub status: KeyStatus,
    pub health: Option<f64>,
    pub in_flight: u32,
}

impl KeyView {
    fn of(k: KeyFacts<'_>, usage: &UsageCounts, now_ms: u64) -> Self {
        let (reason, model, until_ms) = match k.status.state(k.disabled, now_ms) {
            KeyState::CoolingDown {
                until_ms,
                reason,
                model,
            } => (Some(reason.as_str().to_owned()), model, Some(until_ms)),
            KeyState::Invalid { reason } => (Some(reason.as_str().to_owned()), None, None),
            KeyState::Active | KeyState::Disabled => (None, None, None),
        };
        let used = usage
            .keys
            .iter()
            .find(|(id, _)| id.as_str() == k.id)
            .map(|(_, c)| (c.requests, c.tokens))
            .unwrap_or_default();
        Self {
            id: k.id.to_owned(),
            project: k.project.unwrap_or("").to_owned(),
            state: k.status.state(k.disabled, now_ms).name().to_owned(),
            reason,
            model,
            until_ms,
            health: k.health,
            in_flight: k.in_flight,
            requests_last_hour: used.0,
            tokens_last_hour: used.1,
        }
    }
}

/// The last hour's minute windows, oldest first.
fn last_hour(now_ms: u64) -> Vec<UsageWindow> {
    (0..MINUTES)
        .rev()
        .map(|i| UsageWindow::minute_of(now_ms.saturating_sub(i * 60_000)))
        .collect()
}

/// A group's usage over the last hour: the sum, and the per-minute series.
async fn usage_of(
    store: &dyn KeyStore,
    group: &str,
    now_ms: u64,
) -> Result<(UsageCounts, Vec<Minute>), StoreError> {
    let mut sum = UsageCounts::default();
    let mut minutes = Vec::with_capacity(MINUTES as usize);
    for (i, w) in last_hour(now_ms).iter().enumerate() {
        let c = store.usage(group, w).await?;
        let (requests, tokens) = c
            .scopes
            .values()
            .fold((0, 0), |(r, t), x| (r + x.requests, t + x.tokens));
        minutes.push(Minute {
            at_ms: now_ms.saturating_sub((MINUTES - 1 - i as u64) * 60_000) / 60_000 * 60_000,
            requests,
            tokens,
        });
        sum.merge(&c);
    }
    Ok((sum, minutes))
}

fn group_view(
    snap: &GroupSnapshot,
    keys: Vec<KeyFacts<'_>>,
    usage: &UsageCounts,
    minutes: Vec<Minute>,
    now_ms: u64,
) -> GroupView {
    let total = keys.len();
    let keys: Vec<KeyView> = keys
        .into_iter()
        .take(MAX_KEYS)
        .map(|k| KeyView::of(k, usage, now_ms))
        .collect();
    let mut projects: Vec<Usage> = usage
        .scopes
        .iter()
        .map(|(name, c)| Usage {
            name: name.clone(),
            requests: c.requests,
            tokens: c.tokens,
        })
        .collect();
    projects.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.name.cmp(&b.name)));
    projects.truncate(MAX_KEYS);
    GroupView {
        name: snap.name.clone(),
        access: format!("{:?}", snap.access.mode),
        strategy: format!("{:?}", snap.rotation),
        keys_omitted: total - keys.len(),
        keys,
        projects,
        minutes,
    }
}

/// A running proxy's view: its key states, health and load; usage from `store`.
pub async fn of_proxy(
    groups: &Groups,
    store: &dyn KeyStore,
    store_view: StoreView,
    source: &str,
    now_ms: u64,
) -> Report {
    let mut report = Report {
        at_ms: now_ms,
        source: source.to_owned(),
        store: store_view,
        ..Report::default()
    };
    for pool in groups.pools().iter().take(MAX_GROUPS) {
        // Usage is a view: without the store it is shown as none, the states still are.
        let (usage, minutes) = usage_of(store, pool.name(), now_ms)
            .await
            .unwrap_or_default();
        let keys = pool
            .members
            .iter()
            .map(|m| KeyFacts {
                id: m.slot.id.as_str(),
                project: m.project.as_deref(),
                disabled: m.disabled,
                status: m.slot.status(),
                health: Some(m.slot.health()),
                in_flight: m.slot.in_flight(),
            })
            .collect();
        report
            .groups
            .push(group_view(&pool.snapshot, keys, &usage, minutes, now_ms));
    }
    report.groups_omitted = groups.pools().len().saturating_sub(MAX_GROUPS);
    report
}

/// A store's view: the groups it holds, their key states, the proxies' health reports.
pub async fn of_store(store: &dyn KeyStore, now_ms: u64) -> Result<Report, StoreError> {
    let mut groups = store.groups().await?;
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    let mut report = Report {
        at_ms: now_ms,
        source: "store".to_owned(),
        store: StoreView {
            kind: "redis".to_owned(),
            up: true,
        },
        groups_omitted: groups.len().saturating_sub(MAX_GROUPS),
        ..Report::default()
    };
    for snap in groups.iter().take(MAX_GROUPS) {
        let statuses = store.key_statuses(&snap.name).await?;
        // The lowest score any live proxy reported for a key.
        let mut health: BTreeMap<String, f64> = BTreeMap::new();
        for r in store.health_reports(&snap.name).await? {
            for k in r.keys {
                let e = health.entry(k.id.as_str().to_owned()).or_insert(k.score);
                *e = e.min(k.score);
            }
        }
        let (usage, minutes) = usage_of(store, &snap.name, now_ms).await?;
        let keys = snap
            .keys
            .iter()
            .map(|k| KeyFacts {
                id: k.id.as_str(),
                project: k.project.as_deref(),
                disabled: k.disabled,
                status: statuses.get(&k.id).cloned().unwrap_or_default(),
                health: health.get(k.id.as_str()).copied(),
                in_flight: 0,
            })
            .collect();
        report
            .groups
            .push(group_view(snap, keys, &usage, minutes, now_ms));
    }
    Ok(report)
}

/// The report as tables for a terminal: one per group.
pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "store: {} ({})",
        r.store.kind,
        if r.store.up {
            "reachable"
        } else {
            "unreachable"
        }
    );
    for g in &r.groups {
        let usable = g.keys.iter().filter(|k| k.state == "Active").count();
        let _ = writeln!(
            out,
            "\ngroup {} ({}, {}): {usable} of {} keys active",
            g.name,
            g.access,
            g.strategy,
            g.keys.len() + g.keys_omitted
        );
        let rows: Vec<[String; 7]> = g
            .keys
            .iter()
            .map(|k| {
                [
                    k.id.clone(),
                    if k.project.is_empty() {
                        "-".into()
                    } else {
                        k.project.clone()
                    },
                    k.state.clone(),
                    match (&k.reason, &k.model) {
                        (Some(r), Some(m)) => format!("{r} ({m})"),
                        (Some(r), None) => r.clone(),
                        _ => "-".into(),
                    },
                    k.until_ms
                        .map(|u| format!("{} s", u.saturating_sub(r.at_ms).div_ceil(1000)))
                        .unwrap_or_else(|| "-".into()),
                    k.health
                        .map(|h| format!("{h:.2}"))
                        .unwrap_or_else(|| "-".into()),
                    k.requests_last_hour.to_string(),
                ]
            })
            .collect();
        let head = [
            "KEY ID",
            "PROJECT",
            "STATE",
            "REASON",
            "UNTIL",
            "HEALTH",
            "REQUESTS (1H)",
        ];
        let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let mut l = String::new();
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(c);
                } else {
                    let _ = write!(l, "{c:<w$}  ");
                }
            }
            l.trim_end().to_owned()
        };
        let _ = writeln!(out, "{}", line(head.to_vec()));
        for row in &rows {
            let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
        }
        if g.keys_omitted > 0 {
            let _ = writeln!(out, "... and {} more keys", g.keys_omitted);
        }
    }
    if r.groups_omitted > 0 {
        let _ = writeln!(out, "\n... and {} more groups", r.groups_omitted);
    }
    out
}

#[cfg(test)]
mod tests;
