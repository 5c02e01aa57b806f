//! Many proxy processes (the real binary) sharing one Redis: a random key prefix and state key
//! per test.

use std::sync::Arc;

use gemini_proxy_tests::redis::{RedisServer, random_prefix};
use gemini_proxy_tests::{MockGemini, ProxyProcess};
use keystore::{EncryptionKey, RedisConfig, RedisStore, RedisTarget, Secret};

pub const BIN: &str = env!("CARGO_BIN_EXE_gemini-proxy");

pub struct Shared {
    pub redis_url: String,
    pub prefix: String,
    pub state_key: String,
}

impl Shared {
    pub fn new(redis: &RedisServer) -> Self {
        Self {
            redis_url: redis.url(),
            prefix: random_prefix(),
            state_key: EncryptionKey::generate_base64(),
        }
    }

    /// A config with the store and one group: `group` is a YAML flow map's inner entries after
    /// the name and upstream (`access: {mode: Open}, keys: [...]`).
    pub fn config_with(&self, mock: &MockGemini, group: &str) -> String {
        // An Open group serves requests without a token only as the named default group.
        let default = if group.contains("mode: Open") {
            "defaultGroup: shared\n"
        } else {
            ""
        };
        format!(
            "{default}store:\n  redis: {{url: \"{}\", keyPrefix: \"{}\"}}\n  encryptionKey: {{env: TEST_STATE_KEY}}\ngroups:\n  - {{name: shared, upstream: {{{}}}, {group}}}\n",
            self.redis_url,
            self.prefix,
            mock.upstream_yaml(),
        )
    }

    /// An Open group over `keys` with four attempts.
    pub fn config(&self, mock: &MockGemini, keys: &[&str]) -> String {
        let keys: Vec<String> = keys.iter().map(|k| format!("{{value: {k}}}")).collect();
        self.config_with(
            mock,
            &format!(
                "access: {{mode: Open}}, retry: {{maxAttempts: 4}}, keys: [{}]",
                keys.join(", ")
            ),
        )
    }

    pub async fn proxy(&self, mock: &MockGemini, keys: &[&str]) -> ProxyProcess {
        self.proxy_with(&self.config(mock, keys)).await
    }

    pub async fn proxy_with(&self, config: &str) -> ProxyProcess {
        ProxyProcess::with_config(BIN, config, &[("TEST_STATE_KEY", &self.state_key)]).await
    }

    /// A store client, as the operator would be.
    pub fn store(&self) -> Arc<RedisStore> {
        RedisStore::new(RedisConfig {
            target: RedisTarget::Standalone {
                url: Secret::new(self.redis_url.clone()),
            },
            key_prefix: self.prefix.clone(),
            encryption_key: Some(EncryptionKey::from_base64(&self.state_key).unwrap()),
        })
        .unwrap()
    }
}
