//! The audit trail: one event per key lifecycle change, kept in the store for the operator (who
//! turns them into Kubernetes Events) and logged where it happens.

use serde::{Deserialize, Serialize};

use crate::secret::KeyId;
use crate::snapshot::GroupSnapshot;
use crate::state::{KeyStatus, Transition};

/// How many events a group keeps; older ones are dropped.
pub const KEEP: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AuditKind {
    Added,
    Cooled,
    Retired,
    Recovered,
    Removed,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Cooled => "cooled",
            Self::Retired => "retired",
            Self::Recovered => "recovered",
            Self::Removed => "removed",
        }
    }
}

/// One change of one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    pub at_ms: u64,
    pub group: String,
    pub key: KeyId,
    pub kind: AuditKind,
    /// Why: the cooldown or retirement reason, the key's source for added/removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Until when a cooldown runs (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// The model a cooldown is for (none: every model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Who saw it: a proxy id, `operator`, or the proxy publishing its own config.
    pub origin: String,
}

impl AuditEvent {
    /// The event for a transition that changed a key to `status`.
    pub fn of_transition(
        group: &str,
        key: &KeyId,
        t: &Transition,
        status: &KeyStatus,
        origin: &str,
        at_ms: u64,
    ) -> Self {
        let (kind, reason, until_ms, model) = match t {
            Transition::Cool(c) => (
                AuditKind::Cooled,
                Some(c.reason.as_str().to_owned()),
                Some(
                    status
                        .cooldowns
                        .iter()
                        .filter(|x| x.model == c.model)
                        .map(|x| x.until_ms)
                        .max()
                        .unwrap_or(c.until_ms),
                ),
                c.model.clone(),
            ),
            Transition::Retire { reason } => (
                AuditKind::Retired,
                Some(reason.as_str().to_owned()),
                None,
                None,
            ),
            Transition::Recover => (AuditKind::Recovered, None, None, None),
        };
        Self {
            at_ms,
            group: group.to_owned(),
            key: key.clone(),
            kind,
            reason,
            until_ms,
            model,
            origin: origin.to_owned(),
        }
    }

    /// One line for people: `k-1a2b3c4d5e6f cooled (per-minute quota) for gemini-2.5-pro until ...`.
    pub fn describe(&self) -> String {
        let mut s = format!("key {} {}", self.key, self.kind.as_str());
        if let Some(r) = &self.reason {
            s.push_str(&format!(" ({r})"));
        }
        if let Some(m) = &self.model {
            s.push_str(&format!(" for {m}"));
        }
        if let Some(u) = self.until_ms
            && let Ok(t) = jiff::Timestamp::from_millisecond(u as i64)
        {
            s.push_str(&format!(
                " until {}",
                t.round(jiff::Unit::Second).unwrap_or(t)
            ));
        }
        s.push_str(&format!(", seen by {}", self.origin));
        s
    }
}

/// The keys added to and removed from a group between two snapshots.
pub fn key_changes(
    old: Option<&GroupSnapshot>,
    new: Option<&GroupSnapshot>,
    origin: &str,
    at_ms: u64,
) -> Vec<AuditEvent> {
    let event = |g: &GroupSnapshot, k: &crate::snapshot::KeyEntry, kind| AuditEvent {
        at_ms,
        group: g.name.clone(),
        key: k.id.clone(),
        kind,
        reason: Some(k.source.clone()),
        until_ms: None,
        model: None,
        origin: origin.to_owned(),
    };
    let mut out = Vec::new();
    if let Some(n) = new {
        for k in &n.keys {
            if old.is_none_or(|o| o.key(&k.id).is_none()) {
                out.push(event(n, k, AuditKind::Added));
            }
        }
    }
    if let Some(o) = old {
        for k in &o.keys {
            if new.is_none_or(|n| n.key(&k.id).is_none()) {
                out.push(event(o, k, AuditKind::Removed));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_and_removed_keys_are_found_by_id() {
        let a = GroupSnapshot::for_test("g", &["fake-1", "fake-2"]);
        let b = GroupSnapshot::for_test("g", &["fake-2", "fake-3"]);
        let ev = key_changes(Some(&a), Some(&b), "test", 5);
        let kinds: Vec<_> = ev.iter().map(|e| (e.kind, e.key.clone())).collect();
        assert_eq!(
            kinds,
            vec![
                (AuditKind::Added, b.keys[1].id.clone()),
                (AuditKind::Removed, a.keys[0].id.clone())
            ]
        );
        assert_eq!(key_changes(None, Some(&a), "t", 1).len(), 2);
        assert_eq!(key_changes(Some(&a), None, "t", 1).len(), 2);
        assert!(key_changes(Some(&a), Some(&a), "t", 1).is_empty());
    }
}
