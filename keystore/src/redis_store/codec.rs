//! A group snapshot as stored: JSON, sealed as a whole when a state key is configured (see
//! [`super::crypto`]). Inside, key values and the egress URL are written `plain.VALUE`.

use serde::{Deserialize, Serialize};

use super::crypto::Sealer;
use crate::secret::{KeyId, Secret, TokenDigest};
use crate::snapshot::{
    AccessMode, AccessSpec, ClientEntry, ClientLimits, GroupSnapshot, KeyEntry, QuotaLimits,
    RetrySpec, RotationStrategy, UpstreamSpec,
};
use crate::store::StoreError;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredGroup {
    name: String,
    upstream: StoredUpstream,
    keys: Vec<StoredKey>,
    rotation: RotationStrategy,
    access_mode: AccessMode,
    clients: Vec<StoredClient>,
    max_attempts: u32,
    #[serde(default)]
    wait_on_cooldown_secs: u32,
    #[serde(default)]
    limits: QuotaLimits,
    #[serde(default)]
    client_limits: ClientLimits,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredUpstream {
    url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    egress_proxy: Option<String>,
    timeout_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_pem: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredKey {
    id: KeyId,
    secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    project: Option<String>,
    weight: u32,
    #[serde(default)]
    disabled: bool,
    source: String,
}

#[derive(Serialize, Deserialize)]
struct StoredClient {
    name: String,
    digest: TokenDigest,
}

const PLAIN: &str = "plain.";

fn inner(secret: &Secret) -> String {
    format!("{PLAIN}{}", secret.expose())
}

fn from_inner(group: &str, what: &str, value: &str) -> Result<Secret, StoreError> {
    value.strip_prefix(PLAIN).map(Secret::new).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "group {group}: {what} is encrypted by an older version and no longer readable; \
             the operator rewrites it"
        ))
    })
}

/// The fingerprint the store keeps: the snapshot's, plus the stored format, so that a
/// snapshot written in an older format is rewritten by the next publish even when unchanged.
pub fn fingerprint(g: &GroupSnapshot) -> String {
    format!("{}.s2", g.fingerprint())
}

pub fn encode(g: &GroupSnapshot, sealer: &Sealer) -> Result<String, StoreError> {
    let keys = g
        .keys
        .iter()
        .map(|k| {
            Ok(StoredKey {
                id: k.id.clone(),
                secret: inner(&k.secret),
                project: k.project.clone(),
                weight: k.weight,
                disabled: k.disabled,
                source: k.source.clone(),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let stored = StoredGroup {
        name: g.name.clone(),
        upstream: StoredUpstream {
            url: g.upstream.url.clone(),
            egress_proxy: g.upstream.egress_proxy.as_ref().map(inner),
            timeout_secs: g.upstream.timeout_secs,
            ca_pem: g.upstream.ca_pem.clone(),
        },
        keys,
        rotation: g.rotation,
        access_mode: g.access.mode,
        clients: g
            .access
            .clients
            .iter()
            .map(|c| StoredClient {
                name: c.name.clone(),
                digest: c.digest.clone(),
            })
            .collect(),
        max_attempts: g.retry.max_attempts,
        wait_on_cooldown_secs: g.retry.wait_on_cooldown_secs,
        limits: g.limits,
        client_limits: g.access.client_limits,
    };
    let json = serde_json::to_string(&stored).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sealer.seal(&g.name, json)
}

/// The snapshot stored under the name `name`. A snapshot that names another group is refused.
pub fn decode(
    name: &str,
    data: &str,
    version: u64,
    sealer: &Sealer,
) -> Result<GroupSnapshot, StoreError> {
    let json = sealer.open(name, data)?;
    let s: StoredGroup = serde_json::from_str(&json)
        .map_err(|e| StoreError::Corrupt(format!("group {name}: snapshot: {e}")))?;
    if s.name != name {
        return Err(StoreError::Corrupt(format!(
            "group {name}: refused: the snapshot stored there is named {:?}",
            s.name
        )));
    }
    let mut keys = Vec::with_capacity(s.keys.len());
    for k in s.keys {
        let secret = from_inner(&s.name, "a key", &k.secret)?;
        if secret.key_id() != k.id {
            return Err(StoreError::Corrupt(format!(
                "group {}: key {} does not match its id",
                s.name, k.id
            )));
        }
        keys.push(KeyEntry {
            id: k.id,
            secret,
            project: k.project,
            weight: k.weight,
            disabled: k.disabled,
            source: k.source,
        });
    }
    let egress_proxy = s
        .upstream
        .egress_proxy
        .as_deref()
        .map(|p| from_inner(&s.name, "the egress proxy", p))
        .transpose()?;
    Ok(GroupSnapshot {
        name: s.name,
        version,
        upstream: UpstreamSpec {
            url: s.upstream.url,
            egress_proxy,
            timeout_secs: s.upstream.timeout_secs,
            ca_pem: s.upstream.ca_pem,
        },
        keys,
        rotation: s.rotation,
        access: AccessSpec {
            mode: s.access_mode,
            clients: s
                .clients
                .into_iter()
                .map(|c| ClientEntry {
                    name: c.name,
                    digest: c.digest,
                })
                .collect(),
            client_limits: s.client_limits,
        },
        retry: RetrySpec {
            max_attempts: s.max_attempts,
            wait_on_cooldown_secs: s.wait_on_cooldown_secs,
        },
        limits: s.limits,
    })
}
