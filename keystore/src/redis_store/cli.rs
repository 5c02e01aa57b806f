//! The Redis store's flags and environment variables, the same for gemini-proxy and the
//! operator, so that a pod needs no file.

use std::path::PathBuf;

use super::RedisConfig;
use super::settings::{RedisSettings, Setting, SettingsError};
use crate::secret::Secret;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct RedisArgs {
    /// Redis for shared state: `redis://host:6379` or `rediss://`.
    #[arg(long, env = "GEMINI_PROXY_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Redis Sentinel master name (with --redis-sentinel-urls).
    #[arg(long, env = "GEMINI_PROXY_REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,
    /// Redis Sentinel URLs, comma-separated.
    #[arg(
        long,
        env = "GEMINI_PROXY_REDIS_SENTINEL_URLS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub redis_sentinel_urls: Vec<String>,
    /// Redis Cluster node URLs, comma-separated.
    #[arg(
        long,
        env = "GEMINI_PROXY_REDIS_CLUSTER_URLS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub redis_cluster_urls: Vec<String>,
    /// Redis username (set into the URLs).
    #[arg(long, env = "GEMINI_PROXY_REDIS_USERNAME")]
    pub redis_username: Option<String>,
    /// Redis password (set into the URLs).
    #[arg(long, env = "GEMINI_PROXY_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// Prefix of every Redis key (default `gemini-proxy:`).
    #[arg(long, env = "GEMINI_PROXY_REDIS_KEY_PREFIX")]
    pub redis_key_prefix: Option<String>,
    /// State encryption key: base64 of 32 random bytes.
    #[arg(long, env = "GEMINI_PROXY_STATE_KEY", hide_env_values = true)]
    pub state_key: Option<String>,
    /// File holding the state encryption key.
    #[arg(long, env = "GEMINI_PROXY_STATE_KEY_FILE")]
    pub state_key_file: Option<PathBuf>,
    /// The namespace whose derived key the state key is (from `gemini-proxy derive-state-key`):
    /// only that namespace's groups are read. Absent: the state key is the master key.
    #[arg(long, env = "GEMINI_PROXY_STATE_KEY_NAMESPACE")]
    pub state_key_namespace: Option<String>,
    /// Allow key material in Redis in clear (not recommended).
    #[arg(long, env = "GEMINI_PROXY_ALLOW_PLAINTEXT_STATE")]
    pub allow_plaintext_state: bool,
}

impl RedisArgs {
    /// Whether any Redis target was given.
    pub fn given(&self) -> bool {
        self.redis_url.is_some()
            || !self.redis_sentinel_urls.is_empty()
            || !self.redis_cluster_urls.is_empty()
    }

    /// The store these flags describe.
    pub fn config(&self) -> Result<RedisConfig, String> {
        let state_key = match (&self.state_key, &self.state_key_file) {
            (Some(k), _) => Some(Secret::new(k.as_str())),
            (None, Some(f)) => {
                Some(Secret::new(std::fs::read_to_string(f).map_err(|e| {
                    format!("--state-key-file {}: {e}", f.display())
                })?))
            }
            (None, None) => None,
        };
        let secrets = |urls: &[String]| urls.iter().map(|u| Secret::new(u.as_str())).collect();
        let settings = RedisSettings {
            url: self.redis_url.as_deref().map(Secret::new),
            sentinel_master: self.redis_sentinel_master.clone(),
            sentinel_urls: secrets(&self.redis_sentinel_urls),
            cluster_urls: secrets(&self.redis_cluster_urls),
            username: self.redis_username.clone(),
            password: self.redis_password.as_deref().map(Secret::new),
            key_prefix: self.redis_key_prefix.clone(),
            state_key,
            state_key_namespace: self.state_key_namespace.clone(),
            allow_plaintext: self.allow_plaintext_state,
        };
        settings.build().map_err(|e| match e {
            SettingsError::NoSingleTarget => "give one of --redis-url, --redis-sentinel-master with --redis-sentinel-urls, --redis-cluster-urls".to_owned(),
            SettingsError::PlaintextNotAllowed => "key material in Redis must be encrypted: set GEMINI_PROXY_STATE_KEY (base64 of 32 random bytes) or --state-key-file, or --allow-plaintext-state".to_owned(),
            SettingsError::Bad(at, m) => {
                let flag = match at {
                    Setting::Url => "--redis-url",
                    Setting::SentinelUrl(_) => "--redis-sentinel-urls",
                    Setting::ClusterUrl(_) => "--redis-cluster-urls",
                    Setting::Target => "Redis",
                    Setting::StateKey => "--state-key",
                    Setting::StateKeyNamespace => "--state-key-namespace",
                };
                format!("{flag}: {m}")
            }
        })
    }
}
