//! The `GeminiKeyGroup` custom resource: the Rust types are the source of truth; the YAML in
//! `crds/` is printed from them (`gemini-proxy-operator crd`) and a test fails when it drifts.

// clippy reads the repeated `printcolumn(type_ = ...)` of the kube derive as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GOOGLE: &str = "https://generativelanguage.googleapis.com";

/// Bounds of the schema. Every list and string is bounded, so that a current API server's CEL
/// cost estimator accepts the rules and no group can grow without limit.
pub mod bounds {
    /// Keys named in `spec.keys`.
    pub const KEYS: usize = 1000;
    /// Secrets of client tokens.
    pub const CLIENT_SECRETS: usize = 64;
    /// A Kubernetes object name (DNS subdomain) and a Secret entry's name.
    pub const NAME: usize = 253;
    /// A Google Cloud project id is 6-30 characters; leave room for numbers and labels.
    pub const PROJECT: usize = 128;
    /// URLs (upstream, egress proxy).
    pub const URL: usize = 2048;
    /// Labels and expressions of a selector, and the values of one expression.
    pub const SELECTOR_TERMS: usize = 16;
    /// A label key (`prefix/name`: 253 + 1 + 63).
    pub const LABEL_KEY: usize = 317;
    /// A label value.
    pub const LABEL_VALUE: usize = 63;
    /// Keys listed one by one in the status; the counts cover all of them.
    pub const KEY_STATUSES: usize = 100;
    /// Conditions in the status.
    pub const CONDITIONS: usize = 8;
    /// Short machine-readable strings in the status (state, reason, type).
    pub const SHORT: usize = 256;
    /// Messages and errors in the status.
    pub const MESSAGE: usize = 1024;
}

/// A group of Gemini API keys that gemini-proxy spreads traffic over.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "gemini-proxy.io",
    version = "v1alpha1",
    kind = "GeminiKeyGroup",
    namespaced,
    shortname = "gkg",
    category = "gemini",
    status = "GeminiKeyGroupStatus",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Keys", type_ = "integer", json_path = ".status.keys.total"),
    printcolumn(name = "Active", type_ = "integer", json_path = ".status.keys.active"),
    printcolumn(
        name = "Cooling",
        type_ = "integer",
        json_path = ".status.keys.coolingDown"
    ),
    printcolumn(
        name = "Invalid",
        type_ = "integer",
        json_path = ".status.keys.invalid"
    ),
    printcolumn(name = "Proxies", type_ = "integer", json_path = ".status.proxies"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("(has(self.keys) && size(self.keys) > 0) || has(self.keySelector)").message("give at least one key: spec.keys or spec.keySelector"))]
#[serde(rename_all = "camelCase")]
pub struct GeminiKeyGroupSpec {
    /// Where requests go: Google's API by default, optionally through an egress proxy.
    #[serde(default)]
    pub upstream: Upstream,
    /// Keys named one by one, each an entry of a Secret (at most 1000; the Secret must carry
    /// the label `gemini-proxy.io/opt-in: "true"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    /// The list is a map keyed by `secret` and `entry`: the API server refuses an entry named
    /// twice (no CEL rule needed, so no cost).
    #[schemars(length(max = bounds::KEYS))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["secret".into(), "entry".into()]))]
    pub keys: Vec<KeyRef>,
    /// Every entry of every opted-in Secret (label `gemini-proxy.io/opt-in: "true"`) in this
    /// namespace that matches this selector is a key. An empty selector is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_selector: Option<KeySelector>,
    /// How a key is chosen for each request.
    #[serde(default)]
    pub rotation: Rotation,
    /// Quotas of one Google Cloud project (keys of a project share them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Retries on other keys before an answer reaches the client.
    #[serde(default)]
    pub retry: Retry,
    /// Who may use the group: required, so that opening a group to every pod is a choice
    /// (`mode: Open`) and never a default.
    pub access: Access,
}

/// A label selector over the namespace's opted-in Secrets (Kubernetes' `LabelSelector`, bounded).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)").message("keySelector must not be empty: an empty selector would take every Secret of the namespace"))]
pub struct KeySelector {
    /// Labels a Secret must carry, all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "label_map")]
    pub match_labels: Option<std::collections::BTreeMap<String, String>>,
    /// Requirements a Secret's labels must meet, all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::SELECTOR_TERMS))]
    pub match_expressions: Option<Vec<SelectorRequirement>>,
}

/// One requirement of a [`KeySelector`].
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)").message("matchExpressions: In and NotIn need values, Exists and DoesNotExist take none"))]
pub struct SelectorRequirement {
    /// The label's key.
    #[schemars(length(min = 1, max = bounds::LABEL_KEY))]
    pub key: String,
    /// In, NotIn, Exists or DoesNotExist.
    pub operator: SelectorOperator,
    /// The values for In and NotIn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "label_values")]
    pub values: Option<Vec<String>>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

fn label_map(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "nullable": true,
        "maxProperties": bounds::SELECTOR_TERMS,
        "additionalProperties": {"type": "string", "maxLength": bounds::LABEL_VALUE},
    })
}

fn label_values(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "nullable": true,
        "maxItems": bounds::SELECTOR_TERMS,
        "items": {"type": "string", "maxLength": bounds::LABEL_VALUE},
    })
}

impl KeySelector {
    /// The same selector as Kubernetes' type, for matching labels.
    pub fn to_label_selector(&self) -> LabelSelector {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        LabelSelector {
            match_labels: self.match_labels.clone(),
            match_expressions: self.match_expressions.as_ref().map(|exprs| {
                exprs
                    .iter()
                    .map(|e| LabelSelectorRequirement {
                        key: e.key.clone(),
                        operator: format!("{:?}", e.operator),
                        values: e.values.clone(),
                    })
                    .collect()
            }),
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Upstream {
    /// Base URL of the Gemini API (http or https).
    #[serde(default = "google")]
    #[schemars(length(max = bounds::URL))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("upstream.url must start with https:// or http://"))]
    pub url: String,
    /// An http://, https:// or socks5:// proxy for this group's upstream traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::URL))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://') || self.startsWith('socks5://') || self.startsWith('socks5h://')").message("upstream.egressProxy must be an http://, https:// or socks5:// URL"))]
    pub egress_proxy: Option<String>,
    /// The egress proxy URL from a Secret (when it holds credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy_secret_ref: Option<SecretKeyRef>,
    /// CA certificates (a PEM bundle in a Secret entry) to trust besides the web PKI roots: for
    /// an internal gateway or a TLS-inspecting egress. The Secret must opt in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Seconds to wait for the upstream's response headers (a stream may run longer).
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: u32,
}

fn google() -> String {
    GOOGLE.to_owned()
}

fn default_timeout() -> u32 {
    keystore::snapshot::bounds::TIMEOUT_SECS_DEFAULT as u32
}

impl Default for Upstream {
    fn default() -> Self {
        Self {
            url: google(),
            egress_proxy: None,
            egress_proxy_secret_ref: None,
            ca_secret_ref: None,
            timeout_seconds: default_timeout(),
        }
    }
}

/// One entry of one Secret.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct SecretKeyRef {
    /// The Secret's name, in the group's namespace.
    #[schemars(length(min = 1, max = bounds::NAME))]
    pub name: String,
    /// The entry of the Secret's data.
    #[schemars(length(min = 1, max = bounds::NAME))]
    pub key: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    /// The Secret holding the key, in the group's namespace (it must carry the label
    /// `gemini-proxy.io/opt-in: "true"`).
    #[schemars(length(min = 1, max = bounds::NAME))]
    pub secret: String,
    /// The entry of the Secret's data that is the key.
    #[schemars(length(min = 1, max = bounds::NAME))]
    pub entry: String,
    /// The Google Cloud project of the key: keys of one project share its quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = bounds::PROJECT))]
    pub project: Option<String>,
    /// Share of traffic with Weighted rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub weight: Option<u32>,
    /// Keep the key but send it no traffic.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Rotation {
    /// RoundRobin (even turns), Weighted (by key weight) or LeastLoaded (fewest requests in
    /// flight, healthiest first).
    #[serde(default)]
    pub strategy: Strategy,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    #[default]
    RoundRobin,
    Weighted,
    LeastLoaded,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Requests per minute of one project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests_per_minute: Option<u64>,
    /// Input tokens per minute of one project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_minute: Option<u64>,
    /// Requests per day (Pacific) of one project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests_per_day: Option<u64>,
    /// Learn limits from 429 answers that state them (quotaValue); default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learn: Option<bool>,
    /// A guardrail: requests whose estimated input tokens exceed it get 400 before anything
    /// goes upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_input_tokens_per_request: Option<u64>,
}

/// What each client token may use, counted across every proxy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClientLimits {
    /// Requests per minute of one client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests_per_minute: Option<u64>,
    /// Tokens (prompt and answer) per minute of one client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_minute: Option<u64>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Attempts per request that may fail for reasons not about a key (5xx, network,
    /// timeouts), the first included. A quota 429 or a dead key moves on to another key
    /// without counting: each key is tried at most once per request.
    #[serde(default = "default_attempts")]
    #[schemars(range(min = 1, max = 10))]
    pub max_attempts: u32,
    /// When every key cools for at most this many seconds, hold requests until the first key is
    /// free instead of answering 429 (0: never wait).
    #[serde(default)]
    #[schemars(range(min = 0, max = 300))]
    pub wait_on_cooldown_seconds: u32,
}

fn default_attempts() -> u32 {
    keystore::snapshot::bounds::MAX_ATTEMPTS_DEFAULT
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            max_attempts: default_attempts(),
            wait_on_cooldown_seconds: 0,
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'Open' || !has(self.clientSecretRefs) || size(self.clientSecretRefs) == 0").message("access.mode Open takes no clientSecretRefs (use mode Token)"))]
#[x_kube(validation = Rule::new("self.mode == 'Open' || (has(self.clientSecretRefs) && size(self.clientSecretRefs) > 0)").message("access.mode Token needs clientSecretRefs; use mode Open to let any pod that reaches the proxy in"))]
pub struct Access {
    /// Token: clients present a token from clientSecretRefs. Open: anyone who reaches the proxy.
    #[serde(default)]
    pub mode: AccessMode,
    /// Secrets whose entries are client tokens; each entry's name is the client's name. Each
    /// must carry the label `gemini-proxy.io/opt-in: "true"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = bounds::CLIENT_SECRETS))]
    pub client_secret_refs: Vec<SecretRef>,
    /// Requests and tokens per minute each client may use; over it, that client gets 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_limits: Option<ClientLimits>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessMode {
    #[default]
    Token,
    Open,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// A Secret in the group's namespace.
    #[schemars(length(min = 1, max = bounds::NAME))]
    pub name: String,
}

/// What the operator and the proxies report.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GeminiKeyGroupStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, KeysResolved, Degraded, StoreReachable.
    #[serde(default)]
    #[schemars(length(max = bounds::CONDITIONS))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<GroupCondition>,
    /// Keys by state.
    #[serde(default)]
    pub keys: KeyCounts,
    /// Keys by their id (never the key): those that are not active first, at most 100; the
    /// counts in `keys` cover every key.
    #[serde(default)]
    #[schemars(length(max = bounds::KEY_STATUSES))]
    pub key_statuses: Vec<KeyStatusEntry>,
    /// Keys left out of `keyStatuses` (beyond its 100 entries).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub key_statuses_omitted: u32,
    /// Proxies that reported on this group recently.
    #[serde(default)]
    pub proxies: u32,
    /// When the store last got a new version of the group (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::SHORT))]
    pub last_sync_time: Option<String>,
    /// The group's version in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_version: Option<u64>,
    /// How far the store's audit trail of this group has been reported as Events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::SHORT))]
    pub audit_cursor: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A condition of the status (Kubernetes' `metav1.Condition`, KEP-1623 shape, bounded).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GroupCondition {
    /// Ready, KeysResolved, Degraded or StoreReachable.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = bounds::SHORT))]
    pub type_: String,
    /// True, False or Unknown.
    #[schemars(length(min = 1, max = bounds::SHORT))]
    pub status: String,
    /// A CamelCase word for machines.
    #[schemars(length(min = 1, max = bounds::SHORT))]
    pub reason: String,
    /// What it means, for people.
    #[schemars(length(max = bounds::MESSAGE))]
    pub message: String,
    /// The generation of the spec this condition describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the status last changed.
    pub last_transition_time: Time,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyCounts {
    pub total: u32,
    pub active: u32,
    pub cooling_down: u32,
    pub invalid: u32,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatusEntry {
    /// The key's id: `k-` and 12 hex digits of its SHA-256.
    #[schemars(length(max = bounds::SHORT))]
    pub id: String,
    /// Where it comes from: `secret/entry`.
    #[schemars(length(max = bounds::MESSAGE))]
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::PROJECT))]
    pub project: Option<String>,
    /// Active, CoolingDown, Invalid or Disabled.
    #[schemars(length(max = bounds::SHORT))]
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::SHORT))]
    pub reason: Option<String>,
    /// End of the cooldown (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::SHORT))]
    pub until: Option<String>,
    /// 0 (failing) to 1 (healthy), the proxies' average.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_score: Option<f64>,
    /// Requests served in the last hour, all proxies together.
    #[serde(default)]
    pub requests_last_hour: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::MESSAGE))]
    pub last_error: Option<String>,
}
