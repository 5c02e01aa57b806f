//! The YAML file as written by people: every field, its default, and nothing else
//! (`deny_unknown_fields` turns a typo into an error that names it).

use std::path::PathBuf;

use keystore::{AccessMode, RotationStrategy};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileConfig {
    /// Address to serve on, `127.0.0.1:8080` by default.
    pub listen: Option<String>,
    /// TLS on the client listener (standalone, without an ingress in front).
    pub listen_tls: Option<ListenTlsConfig>,
    /// The admin listener: probes, metrics and the status page, apart from clients.
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub groups: Vec<GroupConfig>,
    /// The group that serves requests without a token (it must be `Open`). There is no
    /// implicit one.
    pub default_group: Option<String>,
    /// Serve Open groups on a listener beyond loopback (default false).
    #[serde(default)]
    pub allow_open_groups: bool,
    /// Hosts the store's groups may use as upstream (default Google's Gemini endpoint; `*` for
    /// any). Groups of this file are not limited.
    pub allowed_upstream_hosts: Option<Vec<String>>,
    /// Largest request body kept for retries; larger ones get 413. Default 32 MiB.
    pub max_body_bytes: Option<u64>,
    /// How long in-flight requests and streams may run on after SIGTERM. Default 30.
    pub shutdown_grace_seconds: Option<u64>,
    /// After SIGTERM, how long to go on serving (not ready, every HTTP/1.1 answer closing its
    /// connection) before no longer accepting, while load balancers take the pod out. Default 0.
    pub shutdown_delay_seconds: Option<u64>,
    /// Shared state in Redis; without it, the in-memory store.
    pub store: Option<StoreConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListenTlsConfig {
    /// PEM certificate chain, the server's certificate first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdminConfig {
    /// `127.0.0.1:9464` by default; `off` for none.
    pub listen: Option<String>,
    /// Bearer token for the status page; required when the listener is not on loopback.
    pub token: Option<SecretRef>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StoreConfig {
    pub redis: Option<RedisFileConfig>,
    /// Base64 of 32 random bytes: seals key material in Redis.
    pub encryption_key: Option<SecretRef>,
    /// The namespace whose derived key `encryptionKey` is (`gemini-proxy derive-state-key`):
    /// only that namespace's groups are read. Absent: `encryptionKey` is the master key.
    pub encryption_key_namespace: Option<String>,
    /// Store key material in clear (refused unless set).
    #[serde(default)]
    pub allow_plaintext: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedisFileConfig {
    /// `redis://host:6379` or `rediss://` (TLS).
    pub url: Option<SecretRef>,
    pub sentinel: Option<SentinelConfig>,
    pub cluster: Option<ClusterConfig>,
    pub key_prefix: Option<String>,
    pub username: Option<String>,
    /// Set into every Redis URL (so URLs need not hold it).
    pub password: Option<SecretRef>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SentinelConfig {
    pub master: String,
    pub urls: Vec<SecretRef>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterConfig {
    pub urls: Vec<SecretRef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GroupConfig {
    pub name: String,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    #[serde(default)]
    pub rotation: RotationConfig,
    #[serde(default)]
    pub access: AccessConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Quotas of one project, per model: keys predicted to exceed them are skipped.
    #[serde(default)]
    pub limits: LimitsConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitsConfig {
    pub requests_per_minute: Option<u64>,
    /// Input tokens per minute.
    pub tokens_per_minute: Option<u64>,
    /// Requests per Pacific day.
    pub requests_per_day: Option<u64>,
    /// Learn limits from 429 answers that state them (default true).
    pub learn: Option<bool>,
    /// Requests whose estimated input is larger get 400 before anything goes upstream.
    pub max_input_tokens_per_request: Option<u64>,
}

/// What each client token may use, across every proxy sharing the store.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientLimitsConfig {
    pub requests_per_minute: Option<u64>,
    /// Tokens (prompt and answer) per minute.
    pub tokens_per_minute: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamConfig {
    pub url: Option<String>,
    /// `http://`, `https://` or `socks5://` proxy for this group's upstream traffic.
    pub egress_proxy: Option<SecretRef>,
    pub timeout_seconds: Option<u64>,
    /// A PEM bundle of CA certificates to trust besides the web PKI roots.
    pub ca_file: Option<PathBuf>,
}

/// A key: exactly one of `value`, `env`, `file`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeyConfig {
    pub value: Option<String>,
    pub env: Option<String>,
    pub file: Option<PathBuf>,
    pub project: Option<String>,
    pub weight: Option<u32>,
    #[serde(default)]
    pub disabled: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RotationConfig {
    #[serde(default)]
    pub strategy: RotationStrategy,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessConfig {
    #[serde(default)]
    pub mode: AccessMode,
    #[serde(default)]
    pub client_tokens: Vec<SecretRef>,
    #[serde(default)]
    pub client_limits: ClientLimitsConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryConfig {
    /// Upstream attempts per request, the first included (default 3).
    pub max_attempts: Option<u32>,
    /// When every key cools for at most this many seconds, wait instead of answering 429
    /// (default 0: never wait; at most 300).
    pub wait_on_cooldown_seconds: Option<u32>,
}

/// A secret written inline (`"sk-..."`) or as `{value|env|file}`, optionally with a `name`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SecretRef {
    Inline(String),
    Source(SecretSource),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretSource {
    pub name: Option<String>,
    pub value: Option<String>,
    pub env: Option<String>,
    pub file: Option<PathBuf>,
}
