//! A group as the proxies see it: upstream, keys (with their secrets), rotation, access, retries.
//!
//! The operator (from a `GeminiKeyGroup` and its Secrets) or a standalone proxy (from its YAML
//! file) builds one, and a store publishes it. Proxies swap it in atomically.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::secret::{KeyId, Secret, TokenDigest};

pub const DEFAULT_UPSTREAM: &str = "https://generativelanguage.googleapis.com";

#[derive(Clone, Debug)]
pub struct GroupSnapshot {
    /// `namespace/name` in Kubernetes, the `name` of the group in a standalone config.
    pub name: String,
    /// Set by the store when it publishes; grows by one with every change.
    pub version: u64,
    pub upstream: UpstreamSpec,
    pub keys: Vec<KeyEntry>,
    pub rotation: RotationStrategy,
    pub access: AccessSpec,
    pub retry: RetrySpec,
    /// Quotas of one project (per model), for scheduling before Google answers 429.
    pub limits: QuotaLimits,
}

#[derive(Clone, Debug)]
pub struct UpstreamSpec {
    pub url: String,
    /// `http://`, `https://` or `socks5://` URL; may hold credentials, hence a secret.
    pub egress_proxy: Option<Secret>,
    /// Limit on the wait for the upstream's response headers (a stream may then run longer).
    pub timeout_secs: u64,
    /// Extra trusted CA certificates (PEM), added to the web PKI roots: for a test upstream, an
    /// internal gateway or a TLS-inspecting egress.
    pub ca_pem: Option<String>,
}

/// The host Gemini is reached at; the default of every upstream allowlist.
pub const DEFAULT_UPSTREAM_HOST: &str = "generativelanguage.googleapis.com";

/// The hosts of an upstream allowlist as given (a flag, an environment variable, a file):
/// trimmed and lowercased, blanks dropped; nothing given means Google's host alone.
pub fn upstream_hosts(given: &[String]) -> Vec<String> {
    let hosts: Vec<String> = given
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    if hosts.is_empty() {
        vec![DEFAULT_UPSTREAM_HOST.to_owned()]
    } else {
        hosts
    }
}

/// The allowlist `hosts` make: `None` (any host) when one of them is `*`.
pub fn upstream_allowlist(hosts: &[String]) -> Option<Vec<String>> {
    (!hosts.iter().any(|h| h == "*")).then(|| hosts.to_vec())
}

impl UpstreamSpec {
    /// Whether the upstream's host is one of `hosts` (exactly, ignoring case). The URL is
    /// parsed as a browser would, so `https://allowed@elsewhere` is `elsewhere`.
    pub fn host_allowed(&self, hosts: &[String]) -> bool {
        url::Url::parse(&self.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
            .is_some_and(|h| hosts.iter().any(|a| a.eq_ignore_ascii_case(&h)))
    }
}

impl Default for UpstreamSpec {
    fn default() -> Self {
        Self {
            url: DEFAULT_UPSTREAM.to_owned(),
            egress_proxy: None,
            timeout_secs: bounds::TIMEOUT_SECS_DEFAULT,
            ca_pem: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct KeyEntry {
    pub id: KeyId,
    pub secret: Secret,
    /// The Google Cloud project: keys of one project share its quota.
    pub project: Option<String>,
    pub weight: u32,
    pub disabled: bool,
    /// Where the key came from, for people: `groups[0].keys[1]`, `Secret team-a/gemini-keys#key-1`.
    pub source: String,
}

impl KeyEntry {
    pub fn new(secret: Secret, source: impl Into<String>) -> Self {
        Self {
            id: secret.key_id(),
            secret,
            project: None,
            weight: 1,
            disabled: false,
            source: source.into(),
        }
    }

    /// The quota scope of the key: its project, or the key alone when no project is named.
    pub fn quota_scope(&self) -> &str {
        self.project.as_deref().unwrap_or(self.id.as_str())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RotationStrategy {
    #[default]
    RoundRobin,
    Weighted,
    LeastLoaded,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessMode {
    #[default]
    Token,
    Open,
}

#[derive(Clone, Debug, Default)]
pub struct AccessSpec {
    pub mode: AccessMode,
    /// Digests of the client tokens that select this group, with the client's name.
    pub clients: Vec<ClientEntry>,
    /// What each client (token) may use, across all proxies.
    pub client_limits: ClientLimits,
}

/// The quotas of one Google Cloud project, per model (Google counts per project and model).
/// Unset limits are unknown; with `learn`, a 429 that states its `quotaValue` fills them in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    /// Input tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Requests per day (the day of America/Los_Angeles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<u64>,
    /// Take limits from 429 answers that state them.
    #[serde(default = "yes")]
    pub learn: bool,
    /// A guardrail, not a Google quota: a request whose estimated input is larger is refused
    /// before it goes upstream, so one giant prompt cannot burn a project's per-minute tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens_per_request: Option<u64>,
}

fn yes() -> bool {
    true
}

impl Default for QuotaLimits {
    fn default() -> Self {
        Self {
            requests_per_minute: None,
            tokens_per_minute: None,
            requests_per_day: None,
            learn: true,
            max_input_tokens_per_request: None,
        }
    }
}

/// Per client token, enforced across proxies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    /// Tokens (prompt and answer) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
}

impl ClientLimits {
    pub fn is_set(&self) -> bool {
        self.requests_per_minute.is_some() || self.tokens_per_minute.is_some()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientEntry {
    pub name: String,
    pub digest: TokenDigest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetrySpec {
    /// Upstream attempts per client request, the first included.
    pub max_attempts: u32,
    /// When every key cools for at most this long, hold the request until the first is free
    /// instead of answering 429 (0: never wait).
    pub wait_on_cooldown_secs: u32,
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            max_attempts: bounds::MAX_ATTEMPTS_DEFAULT,
            wait_on_cooldown_secs: 0,
        }
    }
}

/// The bounds and defaults of a group's settings: one set for the config file, the flags and
/// the operator (the CRD's schema is tested against them).
pub mod bounds {
    use std::ops::RangeInclusive;

    /// Seconds to wait for the upstream's response headers.
    pub const TIMEOUT_SECS: RangeInclusive<u64> = 1..=3600;
    pub const TIMEOUT_SECS_DEFAULT: u64 = 600;
    /// Attempts per request that may fail for reasons not about a key.
    pub const MAX_ATTEMPTS: RangeInclusive<u32> = 1..=10;
    pub const MAX_ATTEMPTS_DEFAULT: u32 = 3;
    /// Longest a request is held for a cooling key.
    pub const WAIT_ON_COOLDOWN_SECS_MAX: u32 = 300;
}

impl GroupSnapshot {
    /// Checks the settings against [`bounds`]: on failure, the field (as the file and the CRD
    /// name it, relative to the group) and the problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        fn within<T: PartialOrd + std::fmt::Display>(
            range: &std::ops::RangeInclusive<T>,
            v: T,
        ) -> Result<(), String> {
            if range.contains(&v) {
                return Ok(());
            }
            Err(format!(
                "must be from {} to {}, not {v}",
                range.start(),
                range.end()
            ))
        }
        if self.name.trim().is_empty() || self.name.contains(['{', '}']) {
            return Err(("name", "must be non-empty and without braces".into()));
        }
        within(&bounds::TIMEOUT_SECS, self.upstream.timeout_secs)
            .map_err(|m| ("upstream.timeoutSeconds", m))?;
        within(&bounds::MAX_ATTEMPTS, self.retry.max_attempts)
            .map_err(|m| ("retry.maxAttempts", m))?;
        if self.retry.wait_on_cooldown_secs > bounds::WAIT_ON_COOLDOWN_SECS_MAX {
            return Err((
                "retry.waitOnCooldownSeconds",
                format!(
                    "at most {}: a request should not wait longer than that",
                    bounds::WAIT_ON_COOLDOWN_SECS_MAX
                ),
            ));
        }
        Ok(())
    }

    /// A digest of everything but `version`: equal snapshots have equal fingerprints, so
    /// publishing the same config twice changes nothing. Secrets enter only through their ids.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        let mut put = |s: &str| {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        put(&self.name);
        put(&self.upstream.url);
        put(&self
            .upstream
            .egress_proxy
            .as_ref()
            .map(|p| p.key_id().to_string())
            .unwrap_or_default());
        put(&self.upstream.timeout_secs.to_string());
        put(self.upstream.ca_pem.as_deref().unwrap_or(""));
        for k in &self.keys {
            put(k.id.as_str());
            put(k.project.as_deref().unwrap_or("\u{0}"));
            put(&k.weight.to_string());
            put(if k.disabled { "d" } else { "e" });
            put(&k.source);
        }
        put(&format!("{:?}", self.rotation));
        put(&format!("{:?}", self.access.mode));
        for c in &self.access.clients {
            put(&c.name);
            put(c.digest.as_str());
        }
        put(&self.retry.max_attempts.to_string());
        put(&self.retry.wait_on_cooldown_secs.to_string());
        put(&format!("{:?}", self.limits));
        put(&format!("{:?}", self.access.client_limits));
        let digest = h.finalize();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn key(&self, id: &KeyId) -> Option<&KeyEntry> {
        self.keys.iter().find(|k| &k.id == id)
    }

    /// A small group for tests: open access, round robin, keys from their values.
    /// An Open group over `keys` with every other setting at its default (the quick start).
    pub fn open_with_defaults(name: &str, keys: Vec<KeyEntry>) -> Self {
        Self {
            name: name.to_owned(),
            version: 0,
            upstream: UpstreamSpec::default(),
            keys,
            rotation: RotationStrategy::RoundRobin,
            access: AccessSpec {
                mode: AccessMode::Open,
                clients: Vec::new(),
                client_limits: ClientLimits::default(),
            },
            retry: RetrySpec::default(),
            limits: QuotaLimits::default(),
        }
    }

    /// For tests: [`GroupSnapshot::open_with_defaults`] over key values, sources `keys[i]`.
    pub fn for_test(name: &str, keys: &[&str]) -> Self {
        let keys = keys
            .iter()
            .enumerate()
            .map(|(i, k)| KeyEntry::new(Secret::new(*k), format!("keys[{i}]")))
            .collect();
        Self::open_with_defaults(name, keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_holds_a_group_to_the_bounds() {
        let ok = GroupSnapshot::for_test("g", &["fake-key-1"]);
        assert_eq!(ok.validate(), Ok(()));
        let mut g = ok.clone();
        g.retry.max_attempts = bounds::MAX_ATTEMPTS.end() + 1;
        assert_eq!(g.validate().unwrap_err().0, "retry.maxAttempts");
        let mut g = ok.clone();
        g.upstream.timeout_secs = 0;
        assert_eq!(g.validate().unwrap_err().0, "upstream.timeoutSeconds");
        let mut g = ok.clone();
        g.retry.wait_on_cooldown_secs = bounds::WAIT_ON_COOLDOWN_SECS_MAX + 1;
        assert_eq!(g.validate().unwrap_err().0, "retry.waitOnCooldownSeconds");
        let mut g = ok;
        g.name = "a{b}".into();
        assert_eq!(g.validate().unwrap_err().0, "name");
    }

    #[test]
    fn fingerprint_ignores_version_and_sees_key_changes() {
        let a = GroupSnapshot::for_test("g", &["fake-1", "fake-2"]);
        let mut b = a.clone();
        b.version = 9;
        assert_eq!(a.fingerprint(), b.fingerprint());
        let c = GroupSnapshot::for_test("g", &["fake-1", "fake-3"]);
        assert_ne!(a.fingerprint(), c.fingerprint());
        let mut d = a.clone();
        d.keys[0].weight = 2;
        assert_ne!(a.fingerprint(), d.fingerprint());
    }

    #[test]
    fn debug_output_holds_no_key() {
        let a = GroupSnapshot::for_test("g", &["fake-secret-value-1"]);
        assert!(!format!("{a:?}").contains("fake-secret-value-1"));
    }
}
