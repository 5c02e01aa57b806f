//! The one assembly of a Redis store's settings into a [`RedisConfig`], whether they come from
//! flags and environment variables ([`super::cli`]) or from the proxy's config file (`store:`):
//! which target, the credentials put into every URL, the prefix, and the state key.

use super::{DEFAULT_PREFIX, EncryptionKey, RedisConfig, RedisTarget};
use crate::secret::Secret;

/// The settings as given, before they are checked.
#[derive(Debug, Default)]
pub struct RedisSettings {
    pub url: Option<Secret>,
    pub sentinel_master: Option<String>,
    pub sentinel_urls: Vec<Secret>,
    pub cluster_urls: Vec<Secret>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub key_prefix: Option<String>,
    /// The state key's base64 text.
    pub state_key: Option<Secret>,
    /// The namespace whose derived key `state_key` is; `None`: the master key.
    pub state_key_namespace: Option<String>,
    pub allow_plaintext: bool,
}

/// Which setting a problem is about; each front end names it its own way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    Url,
    SentinelUrl(usize),
    ClusterUrl(usize),
    /// The target as a whole (e.g. the key prefix, or a Sentinel without a master name).
    Target,
    StateKey,
    StateKeyNamespace,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SettingsError {
    /// Not exactly one of a URL, Sentinel (master and URLs) or Cluster URLs.
    NoSingleTarget,
    /// No state key, and plaintext was not allowed.
    PlaintextNotAllowed,
    /// A setting is wrong: which, and why.
    Bad(Setting, String),
}

impl RedisSettings {
    /// The store these settings describe, checked (without connecting).
    pub fn build(self) -> Result<RedisConfig, SettingsError> {
        let password = self.password.as_ref();
        let username = self.username.as_deref();
        let creds = |at: Setting, u: &Secret| {
            with_credentials(u.clone(), username, password).map_err(|m| SettingsError::Bad(at, m))
        };
        let all = |urls: &[Secret], at: fn(usize) -> Setting| {
            urls.iter()
                .enumerate()
                .map(|(i, u)| creds(at(i), u))
                .collect::<Result<Vec<_>, _>>()
        };
        let target = match (&self.url, &self.sentinel_master) {
            (Some(u), None) if self.sentinel_urls.is_empty() && self.cluster_urls.is_empty() => {
                RedisTarget::Standalone {
                    url: creds(Setting::Url, u)?,
                }
            }
            (None, Some(master))
                if !self.sentinel_urls.is_empty() && self.cluster_urls.is_empty() =>
            {
                RedisTarget::Sentinel {
                    master: master.clone(),
                    urls: all(&self.sentinel_urls, Setting::SentinelUrl)?,
                }
            }
            (None, None) if !self.cluster_urls.is_empty() && self.sentinel_urls.is_empty() => {
                RedisTarget::Cluster {
                    urls: all(&self.cluster_urls, Setting::ClusterUrl)?,
                }
            }
            _ => return Err(SettingsError::NoSingleTarget),
        };
        let encryption_key = match (&self.state_key, &self.state_key_namespace) {
            (Some(text), ns) => {
                let key = EncryptionKey::from_base64(text.expose())
                    .map_err(|m| SettingsError::Bad(Setting::StateKey, m))?;
                Some(match ns {
                    Some(ns) => key
                        .scoped_to(ns)
                        .map_err(|m| SettingsError::Bad(Setting::StateKeyNamespace, m))?,
                    None => key,
                })
            }
            (None, Some(_)) => {
                return Err(SettingsError::Bad(
                    Setting::StateKeyNamespace,
                    "needs the state key (that namespace's derived key)".into(),
                ));
            }
            (None, None) if self.allow_plaintext => None,
            (None, None) => return Err(SettingsError::PlaintextNotAllowed),
        };
        let config = RedisConfig {
            target,
            key_prefix: self.key_prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_owned()),
            encryption_key,
        };
        config
            .validate()
            .map_err(|m| SettingsError::Bad(Setting::Target, m))?;
        Ok(config)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn standalone() -> RedisSettings {
        RedisSettings {
            url: Some(Secret::new("redis://127.0.0.1:6379")),
            state_key: Some(Secret::new(EncryptionKey::generate_base64())),
            ..RedisSettings::default()
        }
    }

    #[test]
    fn credentials_go_into_every_url() {
        let s = RedisSettings {
            url: None,
            sentinel_master: Some("m".into()),
            sentinel_urls: vec![
                Secret::new("redis://10.0.0.1:26379"),
                Secret::new("rediss://10.0.0.2:26379"),
            ],
            username: Some("proxy".into()),
            password: Some(Secret::new("fake-pass")),
            ..standalone()
        };
        let RedisTarget::Sentinel { urls, master } = s.build().unwrap().target else {
            panic!("not sentinel");
        };
        assert_eq!(master, "m");
        assert_eq!(urls[0].expose(), "redis://proxy:fake-pass@10.0.0.1:26379");
        assert_eq!(urls[1].expose(), "rediss://proxy:fake-pass@10.0.0.2:26379");
    }

    #[test]
    fn exactly_one_target_and_a_state_key_unless_plaintext_is_allowed() {
        let two = RedisSettings {
            cluster_urls: vec![Secret::new("redis://127.0.0.1:7000")],
            ..standalone()
        };
        assert_eq!(two.build().unwrap_err(), SettingsError::NoSingleTarget);
        let none = RedisSettings {
            url: None,
            ..standalone()
        };
        assert_eq!(none.build().unwrap_err(), SettingsError::NoSingleTarget);
        let clear = RedisSettings {
            state_key: None,
            ..standalone()
        };
        assert_eq!(
            clear.build().unwrap_err(),
            SettingsError::PlaintextNotAllowed
        );
        let allowed = RedisSettings {
            state_key: None,
            allow_plaintext: true,
            ..standalone()
        };
        assert!(allowed.build().unwrap().encryption_key.is_none());
        let cfg = standalone().build().unwrap();
        assert_eq!(cfg.key_prefix, DEFAULT_PREFIX);
    }

    #[test]
    fn each_problem_names_its_setting() {
        let bad = |s: RedisSettings| match s.build() {
            Err(SettingsError::Bad(at, _)) => at,
            other => panic!("{other:?}"),
        };
        let short_key = RedisSettings {
            state_key: Some(Secret::new("c2hvcnQ=")),
            ..standalone()
        };
        assert_eq!(bad(short_key), Setting::StateKey);
        let ns_without_key = RedisSettings {
            state_key: None,
            state_key_namespace: Some("team-a".into()),
            ..standalone()
        };
        assert_eq!(bad(ns_without_key), Setting::StateKeyNamespace);
        let bad_ns = RedisSettings {
            state_key_namespace: Some("a/b".into()),
            ..standalone()
        };
        assert_eq!(bad(bad_ns), Setting::StateKeyNamespace);
        let braces = RedisSettings {
            key_prefix: Some("{x}".into()),
            ..standalone()
        };
        assert_eq!(bad(braces), Setting::Target);
        let cluster_url = RedisSettings {
            url: None,
            cluster_urls: vec![Secret::new("not a url")],
            password: Some(Secret::new("p")),
            ..standalone()
        };
        assert_eq!(bad(cluster_url), Setting::ClusterUrl(0));
    }
}
