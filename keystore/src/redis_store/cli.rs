//! The Redis store's flags and environment variables, the same for gemini-proxy and the
//! operator, so that a pod needs no file.

use std::path::PathBuf;

use super::{DEFAULT_PREFIX, EncryptionKey, RedisConfig, RedisTarget};
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

/// Puts a username and password into a Redis URL.
pub fn with_credentials(
    url: Secret,
    username: Option<&str>,
    password: Option<&Secret>,
) -> Result<Secret, String> {
    if username.is_none() && password.is_none() {
        return Ok(url);
    }
    let mut u = url::Url::parse(url.expose()).map_err(|_| "not a redis:// URL".to_owned())?;
    if let Some(name) = username {
        u.set_username(name)
            .map_err(|_| "cannot set the username".to_owned())?;
    }
    if let Some(p) = password {
        u.set_password(Some(p.expose()))
            .map_err(|_| "cannot set the password".to_owned())?;
    }
    Ok(Secret::new(u.as_str()))
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
        let password = self.redis_password.as_deref().map(Secret::new);
        let url = |u: &str| {
            with_credentials(
                Secret::new(u),
                self.redis_username.as_deref(),
                password.as_ref(),
            )
            .map_err(|e| format!("Redis URL: {e}"))
        };
        let target = match (&self.redis_url, &self.redis_sentinel_master) {
            (Some(u), None) if self.redis_cluster_urls.is_empty() => {
                RedisTarget::Standalone { url: url(u)? }
            }
            (None, Some(master)) if !self.redis_sentinel_urls.is_empty() => RedisTarget::Sentinel {
                master: master.clone(),
                urls: self
                    .redis_sentinel_urls
                    .iter()
                    .map(|u| url(u))
                    .collect::<Result<_, _>>()?,
            },
            (None, None) if !self.redis_cluster_urls.is_empty() => RedisTarget::Cluster {
                urls: self
                    .redis_cluster_urls
                    .iter()
                    .map(|u| url(u))
                    .collect::<Result<_, _>>()?,
            },
            _ => {
                return Err("give one of --redis-url, --redis-sentinel-master with --redis-sentinel-urls, --redis-cluster-urls".into());
            }
        };
        let key_text = match (&self.state_key, &self.state_key_file) {
            (Some(k), _) => Some(k.clone()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("--state-key-file {}: {e}", f.display()))?,
            ),
            (None, None) => None,
        };
        let encryption_key = match key_text {
            Some(k) => {
                let key = EncryptionKey::from_base64(&k)?;
                Some(match &self.state_key_namespace {
                    Some(ns) => key.scoped_to(ns)?,
                    None => key,
                })
            }
            None if self.state_key_namespace.is_some() => {
                return Err(
                    "--state-key-namespace needs --state-key (that namespace's derived key)".into(),
                );
            }
            None if self.allow_plaintext_state => None,
            None => {
                return Err("key material in Redis must be encrypted: set GEMINI_PROXY_STATE_KEY (base64 of 32 random bytes) or --state-key-file, or --allow-plaintext-state".into());
            }
        };
        let config = RedisConfig {
            target,
            key_prefix: self
                .redis_key_prefix
                .clone()
                .unwrap_or_else(|| DEFAULT_PREFIX.to_owned()),
            encryption_key,
        };
        config.validate()?;
        Ok(config)
    }
}
