//! The status: snapshot + store state + proxies' reports → counts, per-key states and
//! conditions; stable when nothing changed, so an unchanged group is not patched.

use super::*;

/// What the store and the proxies say about a group's keys.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    pub statuses: HashMap<KeyId, KeyStatus>,
    pub reports: Vec<HealthReport>,
    pub requests_last_hour: HashMap<KeyId, u64>,
}

pub(super) fn rfc3339(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

pub(super) fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: Option<&GeminiKeyGroupStatus>,
    now: &Time,
) -> GroupCondition {
    let status = if ok { "True" } else { "False" }.to_owned();
    // The transition time moves only when the status does.
    let since = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    GroupCondition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message: bounded(message, bounds::MESSAGE),
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// The condition that says whether the key-state store answered the last reconcile.
pub const STORE_REACHABLE: &str = "StoreReachable";

/// The status when the store cannot be reached: what was known stays (counts, keys), but the
/// group is no longer reported Ready (its state cannot be seen or written), and the conditions
/// say why.
pub fn store_unreachable(
    g: &GeminiKeyGroup,
    previous: Option<&GeminiKeyGroupStatus>,
    error: &str,
    now_ms: u64,
) -> GeminiKeyGroupStatus {
    let now = Time(jiff::Timestamp::from_millisecond(now_ms as i64).unwrap_or_default());
    let generation = g.metadata.generation;
    let mut status = previous.cloned().unwrap_or_default();
    let message = bounded(
        format!("the key-state store cannot be reached: {error}"),
        bounds::MESSAGE,
    );
    let ready = condition(
        "Ready",
        false,
        "StoreUnavailable",
        message.clone(),
        generation,
        previous,
        &now,
    );
    let store = condition(
        STORE_REACHABLE,
        false,
        "StoreUnavailable",
        message,
        generation,
        previous,
        &now,
    );
    for c in [ready, store] {
        match status.conditions.iter_mut().find(|x| x.type_ == c.type_) {
            Some(x) => *x = c,
            None => status.conditions.push(c),
        }
    }
    status
}

/// Whether a status says the store was reachable (a missing condition counts as reachable).
pub fn store_was_reachable(status: Option<&GeminiKeyGroupStatus>) -> bool {
    status
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == STORE_REACHABLE))
        .is_none_or(|c| c.status == "True")
}

/// The status for a plan and what the store holds. `previous` keeps condition times stable, so
/// that an unchanged group gives an equal status (and no patch).
pub fn status(
    g: &GeminiKeyGroup,
    plan: &Plan,
    observed: &Observed,
    previous: Option<&GeminiKeyGroupStatus>,
    synced_at: Option<String>,
    now_ms: u64,
) -> GeminiKeyGroupStatus {
    let now = Time(jiff::Timestamp::from_millisecond(now_ms as i64).unwrap_or_default());
    let mut counts = KeyCounts::default();
    let mut entries = Vec::with_capacity(plan.snapshot.keys.len());
    let mut health_by_key: HashMap<&KeyId, Vec<&keystore::KeyHealth>> = HashMap::new();
    for h in observed.reports.iter().flat_map(|r| r.keys.iter()) {
        health_by_key.entry(&h.id).or_default().push(h);
    }
    for k in &plan.snapshot.keys {
        let st = observed.statuses.get(&k.id).cloned().unwrap_or_default();
        let state = st.state(k.disabled, now_ms);
        counts.total += 1;
        let (reason, until) = match &state {
            KeyState::Active => {
                counts.active += 1;
                (None, None)
            }
            KeyState::CoolingDown {
                until_ms,
                reason,
                model,
            } => {
                counts.cooling_down += 1;
                let r = match model {
                    Some(m) => format!("{} ({m})", reason.as_str()),
                    None => reason.as_str().to_owned(),
                };
                (Some(r), Some(rfc3339(*until_ms)))
            }
            KeyState::Invalid { reason } => {
                counts.invalid += 1;
                (Some(reason.as_str().to_owned()), None)
            }
            KeyState::Disabled => (Some("disabled in spec".to_owned()), None),
        };
        let healths: &[&keystore::KeyHealth] =
            health_by_key.get(&k.id).map(Vec::as_slice).unwrap_or(&[]);
        let health_score = (!healths.is_empty()).then(|| {
            let avg = healths.iter().map(|h| h.score).sum::<f64>() / healths.len() as f64;
            // Two decimals: the status stays the same while a score wobbles.
            (avg * 100.0).round() / 100.0
        });
        let last_error = healths.iter().find_map(|h| h.last_error.clone());
        entries.push(KeyStatusEntry {
            id: k.id.to_string(),
            source: bounded(k.source.clone(), bounds::MESSAGE),
            project: k.project.clone().map(|p| bounded(p, bounds::PROJECT)),
            state: state.name().to_owned(),
            reason: reason.map(|r| bounded(r, bounds::SHORT)),
            until,
            health_score,
            requests_last_hour: observed.requests_last_hour.get(&k.id).copied().unwrap_or(0),
            last_error: last_error.map(|e| bounded(e, bounds::MESSAGE)),
        });
    }
    // The list is capped: keys that need attention first (in spec order), then active ones.
    entries.sort_by_key(|e| e.state == "Active");
    let omitted = entries.len().saturating_sub(bounds::KEY_STATUSES);
    entries.truncate(bounds::KEY_STATUSES);
    let generation = g.metadata.generation;
    let usable = counts.active + counts.cooling_down;
    let resolved = plan.missing.is_empty();
    let conditions = vec![
        condition(
            "Ready",
            usable > 0,
            if usable > 0 {
                "KeysAvailable"
            } else {
                "NoUsableKey"
            },
            format!("{usable} of {} keys can serve", counts.total),
            generation,
            previous,
            &now,
        ),
        condition(
            "KeysResolved",
            resolved,
            if resolved {
                "AllResolved"
            } else {
                "SecretMissing"
            },
            if resolved {
                "every key reference resolved".to_owned()
            } else {
                plan.missing.join("; ")
            },
            generation,
            previous,
            &now,
        ),
        condition(
            "Degraded",
            !(resolved && counts.invalid == 0 && (counts.active > 0 || counts.total == 0)),
            if !resolved {
                "SecretMissing"
            } else if counts.invalid > 0 {
                "KeysInvalid"
            } else if counts.active == 0 {
                "AllKeysCooling"
            } else {
                "Healthy"
            },
            format!(
                "{} invalid, {} cooling down",
                counts.invalid, counts.cooling_down
            ),
            generation,
            previous,
            &now,
        ),
        condition(
            STORE_REACHABLE,
            true,
            "Reachable",
            "the key-state store answers".to_owned(),
            generation,
            previous,
            &now,
        ),
    ];
    let proxies: HashSet<&str> = observed
        .reports
        .iter()
        .map(|r| r.proxy_id.as_str())
        .collect();
    GeminiKeyGroupStatus {
        observed_generation: generation,
        conditions,
        keys: counts,
        key_statuses: entries,
        key_statuses_omitted: omitted as u32,
        proxies: proxies.len() as u32,
        last_sync_time: synced_at.or_else(|| previous.and_then(|p| p.last_sync_time.clone())),
        store_version: previous.and_then(|p| p.store_version),
        audit_cursor: previous.and_then(|p| p.audit_cursor.clone()),
    }
}
