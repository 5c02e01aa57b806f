//! Events worth recording: recoveries seen between two statuses, and audit trail entries.

use super::*;

/// A key's change worth an Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// Recoveries seen between two statuses: a key that was cooling is active again. (No one
/// changes a key when its cooldown simply runs out, so the operator notices and records it.)
/// Each comes with a token naming the episode it ends, the same for every operator replica.
pub fn recoveries(
    previous: Option<&GeminiKeyGroupStatus>,
    next: &GeminiKeyGroupStatus,
) -> Vec<(KeyId, String)> {
    let before: HashMap<&str, &KeyStatusEntry> = previous
        .map(|p| p.key_statuses.iter().map(|k| (k.id.as_str(), k)).collect())
        .unwrap_or_default();
    next.key_statuses
        .iter()
        .filter(|k| k.state == "Active")
        .filter_map(|k| {
            let old = before.get(k.id.as_str())?;
            (old.state == "CoolingDown" || old.state == "Invalid").then(|| {
                let episode = old.until.as_deref().or(old.reason.as_deref()).unwrap_or("");
                (
                    KeyId::from_raw(k.id.clone()),
                    format!("recovered/{}/{episode}", k.id),
                )
            })
        })
        .collect()
}

/// The Kubernetes Event for an entry of the store's audit trail; `None` for entries too
/// frequent to be Events (per-minute cooldowns: they stay in the trail and the logs).
pub fn audit_event(e: &AuditEvent) -> Option<KeyEvent> {
    let (warning, reason) = match e.kind {
        AuditKind::Added => (false, "KeyAdded"),
        AuditKind::Removed => (false, "KeyRemoved"),
        AuditKind::Retired => (true, "KeyRetired"),
        AuditKind::Recovered => (false, "KeyRecovered"),
        AuditKind::Cooled if e.reason.as_deref() == Some(CooldownReason::PerDayQuota.as_str()) => {
            (false, "KeyCoolingPerDay")
        }
        AuditKind::Cooled => return None,
    };
    Some(KeyEvent {
        warning,
        reason,
        note: e.describe(),
    })
}
