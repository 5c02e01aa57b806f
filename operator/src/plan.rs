//! Reconcile planning as pure functions: spec + Secrets → the group snapshot for the store;
//! snapshot + store state + proxies' reports → the status; old status + new → the events.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use keystore::snapshot::bounds as group_bounds;
use keystore::{
    AccessMode as StoreAccess, AccessSpec, AuditEvent, AuditKind, ClientEntry,
    ClientLimits as StoreClientLimits, CooldownReason, GroupSnapshot, HealthReport, KeyEntry,
    KeyId, KeyState, KeyStatus, QuotaLimits, RetrySpec, RotationStrategy, Secret as SecretValue,
    TokenDigest, UpstreamSpec,
};
use kube::core::{Selector, SelectorExt};

use crate::crd::{
    AccessMode, GeminiKeyGroup, GeminiKeyGroupStatus, GroupCondition, KeyCounts, KeySelector,
    KeyStatusEntry, Strategy, bounds,
};

/// The label a Secret carries to become readable by the operator (as keys, client tokens or an
/// egress proxy URL). The operator watches only Secrets with `gemini-proxy.io/opt-in: "true"`, so
/// the right to create a group is not the right to read every Secret of its namespace.
pub const OPT_IN_LABEL: &str = "gemini-proxy.io/opt-in";
/// The label selector of opted-in Secrets, as the operator's watch sends it.
pub const OPT_IN_SELECTOR: &str = "gemini-proxy.io/opt-in=true";

/// Checks that `pem` is a bundle of certificates (what the proxies will trust as roots).
fn ca_bundle(pem: &str) -> Result<usize, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM bundle of certificates ({e})"))?;
    if certs.is_empty() {
        return Err("no certificate in it".to_owned());
    }
    Ok(certs.len())
}

/// Whether a Secret opted in.
pub fn opted_in(secret: &Secret) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(OPT_IN_LABEL))
        .is_some_and(|v| v == "true")
}

/// `text` cut to at most `max` bytes (on a character boundary), for the status's bounded fields.
pub fn bounded(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max.saturating_sub(3);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// The store's name of a group: `namespace/name`.
pub fn store_name(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// What the spec and the Secrets give.
#[derive(Debug, Clone)]
pub struct Plan {
    pub snapshot: GroupSnapshot,
    /// What could not be resolved, for people: `Secret "x" not found`, `Secret "x" has no entry "k"`.
    pub missing: Vec<String>,
}

fn secret_value(secret: &Secret, entry: &str) -> Option<String> {
    let data = secret.data.as_ref()?.get(entry)?;
    let text = std::str::from_utf8(&data.0).ok()?.trim();
    (!text.is_empty() && !text.chars().any(char::is_whitespace)).then(|| text.to_owned())
}

/// The entry names of a Secret, in order.
fn entries(secret: &Secret) -> Vec<String> {
    secret
        .data
        .as_ref()
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default()
}

fn find<'a>(secrets: &'a [Secret], name: &str) -> Option<&'a Secret> {
    secrets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
}

/// Keeps the keys of a group whose upstream host the operator does not allow out of the
/// store: the group is published without keys, and the reason joins what is missing (status
/// and Event). `None` allows any host. The group's author cannot extend the list.
pub fn restrict_upstream(plan: &mut Plan, allowed: Option<&[String]>) {
    let Some(hosts) = allowed else {
        return;
    };
    if plan.snapshot.upstream.host_allowed(hosts) {
        return;
    }
    plan.snapshot.keys.clear();
    plan.missing.insert(
        0,
        format!(
            "upstream.url's host is not one the operator allows ({}; --allowed-upstream-hosts): no key is published for this group",
            hosts.join(", ")
        ),
    );
}

/// Whether `labels` match `selector` (matchLabels and matchExpressions, by kube's matcher). An
/// empty selector (refused at admission) selects nothing.
pub fn selects(selector: &KeySelector, labels: &BTreeMap<String, String>) -> bool {
    let empty = selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty());
    if empty {
        return false;
    }
    Selector::try_from(selector.to_label_selector()).is_ok_and(|s| s.matches(labels))
}

/// The names of the Secrets a group reads by name.
pub fn referenced_secrets(g: &GeminiKeyGroup) -> HashSet<String> {
    let mut names: HashSet<String> = g.spec.keys.iter().map(|k| k.secret.clone()).collect();
    names.extend(
        g.spec
            .access
            .client_secret_refs
            .iter()
            .map(|r| r.name.clone()),
    );
    if let Some(r) = &g.spec.upstream.egress_proxy_secret_ref {
        names.insert(r.name.clone());
    }
    if let Some(r) = &g.spec.upstream.ca_secret_ref {
        names.insert(r.name.clone());
    }
    names
}

/// Whether a Secret event concerns a group (named by it, or selected by its keySelector).
pub fn concerns(g: &GeminiKeyGroup, secret: &Secret) -> bool {
    if g.metadata.namespace != secret.metadata.namespace || !opted_in(secret) {
        return false;
    }
    let name = secret.metadata.name.clone().unwrap_or_default();
    if referenced_secrets(g).contains(&name) {
        return true;
    }
    let empty = BTreeMap::new();
    g.spec
        .key_selector
        .as_ref()
        .is_some_and(|sel| selects(sel, secret.metadata.labels.as_ref().unwrap_or(&empty)))
}

/// Builds the snapshot. `secrets` holds the Secrets of the group's namespace that were found
/// (by name, or by the selector); Secrets that did not opt in are ignored as if absent.
pub fn plan(g: &GeminiKeyGroup, namespace: &str, secrets: &[Secret]) -> Plan {
    let secrets: Vec<Secret> = secrets.iter().filter(|s| opted_in(s)).cloned().collect();
    let secrets = secrets.as_slice();
    let name = store_name(namespace, g.metadata.name.as_deref().unwrap_or_default());
    let mut missing = Vec::new();
    let mut keys: Vec<KeyEntry> = Vec::new();
    let push = |keys: &mut Vec<KeyEntry>,
                value: String,
                source: String,
                project: Option<String>,
                weight: u32,
                disabled: bool| {
        let mut k = KeyEntry::new(SecretValue::new(value), source);
        if keys.iter().any(|x| x.id == k.id) {
            return;
        }
        k.project = project;
        k.weight = weight.max(1);
        k.disabled = disabled;
        keys.push(k);
    };
    for k in &g.spec.keys {
        match find(secrets, &k.secret) {
            None => missing.push(format!(
                "Secret {:?} not found (or not labelled {OPT_IN_LABEL}=true)",
                k.secret
            )),
            Some(s) => match secret_value(s, &k.entry) {
                None => missing.push(format!(
                    "Secret {:?} has no usable entry {:?}",
                    k.secret, k.entry
                )),
                Some(v) => push(
                    &mut keys,
                    v,
                    format!("{}/{}", k.secret, k.entry),
                    k.project.clone(),
                    k.weight.unwrap_or(1),
                    k.disabled,
                ),
            },
        }
    }
    if let Some(sel) = &g.spec.key_selector {
        let empty = BTreeMap::new();
        let mut selected: Vec<&Secret> = secrets
            .iter()
            .filter(|s| selects(sel, s.metadata.labels.as_ref().unwrap_or(&empty)))
            .collect();
        selected.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        if selected.is_empty() {
            missing.push(format!(
                "no Secret labelled {OPT_IN_LABEL}=true matches spec.keySelector"
            ));
        }
        for s in selected {
            let sname = s.metadata.name.clone().unwrap_or_default();
            let project = s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("gemini-proxy.io/project").cloned());
            for entry in entries(s) {
                if let Some(v) = secret_value(s, &entry) {
                    push(
                        &mut keys,
                        v,
                        format!("{sname}/{entry}"),
                        project.clone(),
                        1,
                        false,
                    );
                }
            }
        }
    }
    let egress_proxy = match (
        &g.spec.upstream.egress_proxy,
        &g.spec.upstream.egress_proxy_secret_ref,
    ) {
        (Some(url), _) => Some(SecretValue::new(url.as_str())),
        (None, Some(r)) => match find(secrets, &r.name).and_then(|s| secret_value(s, &r.key)) {
            Some(v) => Some(SecretValue::new(v)),
            None => {
                missing.push(format!(
                    "egress proxy: Secret {:?} entry {:?} not found (the Secret needs the label {OPT_IN_LABEL}=true)",
                    r.name, r.key
                ));
                None
            }
        },
        (None, None) => None,
    };
    let ca_pem = g.spec.upstream.ca_secret_ref.as_ref().and_then(|r| {
        let pem = find(secrets, &r.name)
            .and_then(|s| s.data.as_ref()?.get(&r.key))
            .and_then(|d| String::from_utf8(d.0.clone()).ok());
        match pem.map(|p| ca_bundle(&p).map(|_| p)) {
            Some(Ok(p)) => Some(p),
            Some(Err(e)) => {
                missing.push(format!(
                    "upstream CA: Secret {:?} entry {:?}: {e}",
                    r.name, r.key
                ));
                None
            }
            None => {
                missing.push(format!(
                    "upstream CA: Secret {:?} entry {:?} not found (or not labelled {OPT_IN_LABEL}=true)",
                    r.name, r.key
                ));
                None
            }
        }
    });
    let mut clients = Vec::new();
    if g.spec.access.mode == AccessMode::Token {
        for r in &g.spec.access.client_secret_refs {
            match find(secrets, &r.name) {
                None => missing.push(format!(
                    "client Secret {:?} not found (or not labelled {OPT_IN_LABEL}=true)",
                    r.name
                )),
                Some(s) => {
                    for entry in entries(s) {
                        if let Some(v) = secret_value(s, &entry) {
                            clients.push(ClientEntry {
                                name: entry,
                                digest: TokenDigest::of(&v),
                            });
                        }
                    }
                }
            }
        }
    }
    let snapshot = GroupSnapshot {
        name,
        version: 0,
        upstream: UpstreamSpec {
            url: g.spec.upstream.url.trim_end_matches('/').to_owned(),
            egress_proxy,
            timeout_secs: u64::from(g.spec.upstream.timeout_seconds).clamp(
                *group_bounds::TIMEOUT_SECS.start(),
                *group_bounds::TIMEOUT_SECS.end(),
            ),
            ca_pem,
        },
        keys,
        rotation: match g.spec.rotation.strategy {
            Strategy::RoundRobin => RotationStrategy::RoundRobin,
            Strategy::Weighted => RotationStrategy::Weighted,
            Strategy::LeastLoaded => RotationStrategy::LeastLoaded,
        },
        access: AccessSpec {
            mode: match g.spec.access.mode {
                AccessMode::Token => StoreAccess::Token,
                AccessMode::Open => StoreAccess::Open,
            },
            clients,
            client_limits: g
                .spec
                .access
                .client_limits
                .as_ref()
                .map(|c| StoreClientLimits {
                    requests_per_minute: c.requests_per_minute.filter(|&n| n > 0),
                    tokens_per_minute: c.tokens_per_minute.filter(|&n| n > 0),
                })
                .unwrap_or_default(),
        },
        retry: RetrySpec {
            max_attempts: g.spec.retry.max_attempts.clamp(
                *group_bounds::MAX_ATTEMPTS.start(),
                *group_bounds::MAX_ATTEMPTS.end(),
            ),
            wait_on_cooldown_secs: g
                .spec
                .retry
                .wait_on_cooldown_seconds
                .min(group_bounds::WAIT_ON_COOLDOWN_SECS_MAX),
        },
        limits: g
            .spec
            .limits
            .as_ref()
            .map(|l| QuotaLimits {
                requests_per_minute: l.requests_per_minute.filter(|&n| n > 0),
                tokens_per_minute: l.tokens_per_minute.filter(|&n| n > 0),
                requests_per_day: l.requests_per_day.filter(|&n| n > 0),
                learn: l.learn.unwrap_or(true),
                max_input_tokens_per_request: l.max_input_tokens_per_request.filter(|&n| n > 0),
            })
            .unwrap_or_default(),
    };
    Plan { snapshot, missing }
}

/// What the store and the proxies say about a group's keys.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    pub statuses: HashMap<KeyId, KeyStatus>,
    pub reports: Vec<HealthReport>,
    pub requests_last_hour: HashMap<KeyId, u64>,
}

fn rfc3339(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn condition(
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

#[cfg(test)]
mod tests;
