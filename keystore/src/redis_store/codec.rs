//! A group snapshot as stored: JSON, key material and egress URLs sealed (see [`super::crypto`]).

use serde::{Deserialize, Serialize};

use super::crypto::Sealer;
use crate::secret::{KeyId, TokenDigest};
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

fn key_context(group: &str, id: &KeyId) -> String {
    format!("{group}|{id}")
}

fn egress_context(group: &str) -> String {
    format!("{group}|egressProxy")
}

pub fn encode(g: &GroupSnapshot, sealer: &Sealer) -> Result<String, StoreError> {
    let keys = g
        .keys
        .iter()
        .map(|k| {
            Ok(StoredKey {
                id: k.id.clone(),
                secret: sealer.seal(&k.secret, &key_context(&g.name, &k.id))?,
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
            egress_proxy: g
                .upstream
                .egress_proxy
                .as_ref()
                .map(|p| sealer.seal(p, &egress_context(&g.name)))
                .transpose()?,
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
    serde_json::to_string(&stored).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub fn decode(data: &str, version: u64, sealer: &Sealer) -> Result<GroupSnapshot, StoreError> {
    let s: StoredGroup = serde_json::from_str(data)
        .map_err(|e| StoreError::Corrupt(format!("group snapshot: {e}")))?;
    let mut keys = Vec::with_capacity(s.keys.len());
    for k in s.keys {
        let secret = sealer.open(&k.secret, &key_context(&s.name, &k.id))?;
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
        .map(|p| sealer.open(p, &egress_context(&s.name)))
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
