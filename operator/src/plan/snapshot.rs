//! The snapshot for the store: spec + opted-in Secrets → keys, client tokens, egress, CA,
//! limits; what could not be resolved is named for the status and an Event.

use super::*;

/// Checks that `pem` is a bundle of certificates (what the proxies will trust as roots).
pub(super) fn ca_bundle(pem: &str) -> Result<usize, String> {
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

/// What the spec and the Secrets give.
#[derive(Debug, Clone)]
pub struct Plan {
    pub snapshot: GroupSnapshot,
    /// What could not be resolved, for people: `Secret "x" not found`, `Secret "x" has no entry "k"`.
    pub missing: Vec<String>,
}

pub(super) fn secret_value(secret: &Secret, entry: &str) -> Option<String> {
    let data = secret.data.as_ref()?.get(entry)?;
    let text = std::str::from_utf8(&data.0).ok()?.trim();
    (!text.is_empty() && !text.chars().any(char::is_whitespace)).then(|| text.to_owned())
}

/// The entry names of a Secret, in order.
pub(super) fn entries(secret: &Secret) -> Vec<String> {
    secret
        .data
        .as_ref()
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default()
}

pub(super) fn find<'a>(secrets: &'a [Secret], name: &str) -> Option<&'a Secret> {
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
