//! Reconcile planning as pure functions: spec + Secrets → the group snapshot for the store
//! (`snapshot`); snapshot + store state + proxies' reports → the status (`status`); old status +
//! new → the events (`events`); Secret events → the groups they concern (`watch`).

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

mod events;
mod snapshot;
mod status;
mod watch;

pub use events::*;
pub use snapshot::*;
pub use status::*;
pub use watch::*;

#[cfg(test)]
mod tests;
