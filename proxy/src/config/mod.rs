//! Configuration: the YAML file ([`file`]), the quick start from `GEMINI_API_KEYS`, and their
//! resolution into [`Settings`]: secrets read, everything checked, errors naming the field.

pub mod file;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use keystore::redis_store::settings::{RedisSettings, Setting, SettingsError};
use keystore::snapshot::DEFAULT_UPSTREAM;
use keystore::{
    AccessMode, AccessSpec, ClientEntry, ClientLimits, GroupSnapshot, KeyEntry, QuotaLimits,
    RedisConfig, RetrySpec, Secret, TokenDigest, UpstreamSpec,
};

use file::{FileConfig, GroupConfig, KeyConfig, SecretRef, SecretSource, StoreConfig};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";
/// The upstream hosts a store's group may use unless the proxy's operator says otherwise.
fn default_upstream_hosts() -> Vec<String> {
    keystore::snapshot::upstream_hosts(&[])
}
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// The longest `shutdownDelaySeconds` taken (a larger value is cut to it).
pub const MAX_SHUTDOWN_DELAY_S: u64 = 300;

/// Everything the proxy needs, resolved and checked.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    /// TLS on the client listener.
    pub listen_tls: Option<ListenTls>,
    pub admin: AdminSettings,
    pub groups: Vec<GroupSnapshot>,
    pub default_group: Option<String>,
    /// Serve Open groups on a listener beyond loopback (off: refused at start for the file's
    /// groups, not served for the store's).
    pub allow_open_groups: bool,
    /// Hosts the store's groups may send requests (and keys) to; `*` for any. The config
    /// file's own groups are its author's and not limited.
    pub allowed_upstream_hosts: Vec<String>,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    /// After SIGTERM: serving on, not ready, closing each HTTP/1.1 connection after its answer,
    /// before accepting stops (the chart sets it while endpoints are withdrawn).
    pub shutdown_delay: Duration,
    /// Shared state in Redis; `None`: the in-memory store.
    pub store: Option<RedisConfig>,
}

/// Certificate and key files of the client listener (re-read when they change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenTls {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
}

/// The admin listener: `/healthz`, `/readyz` with details, `/metrics`, the status page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminSettings {
    /// `None`: no admin listener.
    pub listen: Option<SocketAddr>,
    /// Required by the status page when the listener is not on loopback.
    pub token: Option<Secret>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: parse_listen(DEFAULT_ADMIN_LISTEN).ok(),
            token: None,
        }
    }
}

/// Parses an admin address: an address, or `off` for none.
pub fn parse_admin_listen(s: &str) -> Result<Option<SocketAddr>, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    parse_listen(s).map(Some)
}

/// A configuration error: where (file and field path) and what.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {path}: {message}")]
pub struct ConfigError {
    pub origin: String,
    pub path: String,
    pub message: String,
}

impl Settings {
    /// Reads and resolves a YAML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: origin.clone(),
            path: "(file)".into(),
            message: format!("cannot read: {e}"),
        })?;
        Self::from_yaml(&text, &origin, &Env::process())
    }

    /// Parses YAML text; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str, env: &Env) -> Result<Self, ConfigError> {
        let file: FileConfig = serde_saphyr::from_str(text).map_err(|e| ConfigError {
            origin: origin.to_owned(),
            path: "(yaml)".into(),
            message: yaml_problem(&e),
        })?;
        Resolver { origin, env }.settings(file)
    }

    /// The quick start: `GEMINI_API_KEYS=k1,k2,k3`, one Open group named `default`, Google as
    /// upstream unless `upstream_url` says otherwise.
    pub fn quick_start(keys_csv: &str, upstream_url: Option<&str>) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError {
            origin: "GEMINI_API_KEYS".into(),
            path: "keys".into(),
            message,
        };
        let mut seen = HashMap::new();
        let mut keys = Vec::new();
        for (i, raw) in keys_csv.split(',').map(str::trim).enumerate() {
            if raw.is_empty() {
                continue;
            }
            let key = KeyEntry::new(Secret::new(raw), format!("GEMINI_API_KEYS[{i}]"));
            if seen.insert(key.id.clone(), i).is_none() {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err(err("no keys: set GEMINI_API_KEYS=key1,key2,...".into()));
        }
        let mut group = GroupSnapshot::open_with_defaults("default", keys);
        if let Some(url) = upstream_url {
            check_upstream_url(url).map_err(|m| ConfigError {
                origin: "GEMINI_PROXY_UPSTREAM_URL".into(),
                path: "url".into(),
                message: m,
            })?;
            group.upstream.url = url.trim_end_matches('/').to_owned();
        }
        Ok(Self {
            listen: parse_listen(DEFAULT_LISTEN).map_err(err)?,
            listen_tls: None,
            admin: AdminSettings::default(),
            groups: vec![group],
            default_group: Some("default".into()),
            allow_open_groups: false,
            allowed_upstream_hosts: default_upstream_hosts(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            shutdown_delay: Duration::ZERO,
            store: None,
        })
    }

    /// No groups of its own: serves what the store holds (a proxy pod in Kubernetes).
    pub fn store_only() -> Self {
        Self {
            listen: parse_listen(DEFAULT_LISTEN)
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080))),
            listen_tls: None,
            admin: AdminSettings::default(),
            groups: Vec::new(),
            default_group: None,
            allow_open_groups: false,
            allowed_upstream_hosts: default_upstream_hosts(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            shutdown_delay: Duration::ZERO,
            store: None,
        }
    }
}

impl Settings {
    /// The upstream hosts the store's groups are limited to (`None`: any).
    pub fn upstream_allowlist(&self) -> Option<std::sync::Arc<[String]>> {
        keystore::snapshot::upstream_allowlist(&self.allowed_upstream_hosts).map(Into::into)
    }

    /// Whether Open groups may be served: always on loopback, beyond it only when allowed.
    pub fn open_allowed(&self) -> bool {
        self.allow_open_groups || self.listen.ip().is_loopback()
    }

    /// Refuses Open groups of the file on a listener beyond loopback unless allowed: an image
    /// or a config must not make an open relay of other people's keys by default.
    pub fn check_exposure(&self, origin: &str) -> Result<(), ConfigError> {
        if self.open_allowed() {
            return Ok(());
        }
        match self
            .groups
            .iter()
            .position(|g| g.access.mode == AccessMode::Open)
        {
            None => Ok(()),
            Some(i) => Err(ConfigError {
                origin: origin.to_owned(),
                path: format!("groups[{i}].access.mode"),
                message: format!(
                    "group {:?} is Open and the listener {} is beyond loopback: anyone who reaches it uses the keys. Use Token access, or allow it with allowOpenGroups: true (GEMINI_PROXY_ALLOW_OPEN_GROUPS=true)",
                    self.groups[i].name, self.listen
                ),
            }),
        }
    }
}

/// Where `env:` and `file:` references are read from (the process, or a map in tests).
pub struct Env {
    vars: Option<HashMap<String, String>>,
}

impl Env {
    pub fn process() -> Self {
        Self { vars: None }
    }

    pub fn for_test(vars: &[(&str, &str)]) -> Self {
        Self {
            vars: Some(
                vars.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
        }
    }

    fn var(&self, name: &str) -> Option<String> {
        match &self.vars {
            Some(map) => map.get(name).cloned(),
            None => std::env::var(name).ok(),
        }
    }
}

struct Resolver<'a> {
    origin: &'a str,
    env: &'a Env,
}

impl Resolver<'_> {
    fn err(&self, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: self.origin.to_owned(),
            path: path.into(),
            message: message.into(),
        }
    }

    fn settings(&self, file: FileConfig) -> Result<Settings, ConfigError> {
        let listen = parse_listen(file.listen.as_deref().unwrap_or(DEFAULT_LISTEN))
            .map_err(|m| self.err("listen", m))?;
        let mut groups = Vec::with_capacity(file.groups.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut tokens: HashMap<TokenDigest, String> = HashMap::new();
        for (gi, g) in file.groups.into_iter().enumerate() {
            let path = format!("groups[{gi}]");
            if let Some(prev) = names.insert(g.name.clone(), gi) {
                return Err(self.err(
                    format!("{path}.name"),
                    format!("group {:?} is also groups[{prev}]", g.name),
                ));
            }
            let group = self.group(&path, g)?;
            for (ci, c) in group.access.clients.iter().enumerate() {
                let here = format!("{path}.access.clientTokens[{ci}]");
                if let Some(other) = tokens.insert(c.digest.clone(), here.clone()) {
                    return Err(self.err(
                        here,
                        format!("the same client token is also {other}: a token selects one group"),
                    ));
                }
            }
            groups.push(group);
        }
        if let Some(d) = &file.default_group {
            match groups.iter().find(|g| &g.name == d) {
                None => return Err(self.err("defaultGroup", format!("no group named {d:?}"))),
                Some(g) if g.access.mode != AccessMode::Open => {
                    return Err(self.err(
                        "defaultGroup",
                        format!("group {d:?} must have access.mode Open to serve requests without a token"),
                    ));
                }
                Some(_) => {}
            }
        }
        let store = match &file.store {
            None => None,
            Some(sc) => Some(self.store(sc)?),
        };
        if store.is_some() {
            for (gi, g) in groups.iter().enumerate() {
                if g.name.contains(['{', '}']) {
                    return Err(self.err(
                        format!("groups[{gi}].name"),
                        "with a Redis store, group names cannot contain braces",
                    ));
                }
            }
        }
        let max_body_bytes = match file.max_body_bytes {
            Some(0) => return Err(self.err("maxBodyBytes", "must be at least 1")),
            Some(n) => usize::try_from(n).map_err(|_| self.err("maxBodyBytes", "too large"))?,
            None => DEFAULT_MAX_BODY_BYTES,
        };
        let listen_tls = file.listen_tls.map(|t| ListenTls {
            cert_file: t.cert_file,
            key_file: t.key_file,
        });
        if let Some(t) = &listen_tls {
            crate::tls::check_files(&t.cert_file, &t.key_file)
                .map_err(|m| self.err("listenTls", m))?;
        }
        let admin = match file.admin {
            None => AdminSettings::default(),
            Some(a) => AdminSettings {
                listen: match &a.listen {
                    Some(l) => parse_admin_listen(l).map_err(|m| self.err("admin.listen", m))?,
                    None => AdminSettings::default().listen,
                },
                token: match &a.token {
                    Some(t) => Some(self.secret("admin.token", t)?.1),
                    None => None,
                },
            },
        };
        Ok(Settings {
            listen,
            listen_tls,
            admin,
            groups,
            default_group: file.default_group,
            allow_open_groups: file.allow_open_groups,
            allowed_upstream_hosts: file
                .allowed_upstream_hosts
                .map(|h| keystore::snapshot::upstream_hosts(&h))
                .unwrap_or_else(default_upstream_hosts),
            max_body_bytes,
            shutdown_grace: file
                .shutdown_grace_seconds
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_SHUTDOWN_GRACE),
            shutdown_delay: Duration::from_secs(
                file.shutdown_delay_seconds
                    .unwrap_or(0)
                    .min(MAX_SHUTDOWN_DELAY_S),
            ),
            store,
        })
    }

    fn store(&self, sc: &StoreConfig) -> Result<RedisConfig, ConfigError> {
        let Some(r) = &sc.redis else {
            return Err(self.err(
                "store.redis",
                "give the Redis to use (url, sentinel or cluster)",
            ));
        };
        let password = match &r.password {
            Some(p) => Some(self.secret("store.redis.password", p)?.1),
            None => None,
        };
        let given = [r.url.is_some(), r.sentinel.is_some(), r.cluster.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(self.err("store.redis", "give exactly one of url, sentinel, cluster"));
        }
        let urls = |list: &[SecretRef], path: &str| -> Result<Vec<Secret>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(i, u)| Ok(self.secret(&format!("{path}[{i}]"), u)?.1))
                .collect()
        };
        let settings = RedisSettings {
            url: match &r.url {
                Some(u) => Some(self.secret("store.redis.url", u)?.1),
                None => None,
            },
            sentinel_master: r.sentinel.as_ref().map(|s| s.master.clone()),
            sentinel_urls: match &r.sentinel {
                Some(s) => urls(&s.urls, "store.redis.sentinel.urls")?,
                None => Vec::new(),
            },
            cluster_urls: match &r.cluster {
                Some(c) => urls(&c.urls, "store.redis.cluster.urls")?,
                None => Vec::new(),
            },
            username: r.username.clone(),
            password,
            key_prefix: r.key_prefix.clone(),
            state_key: match &sc.encryption_key {
                Some(k) => Some(self.secret("store.encryptionKey", k)?.1),
                None => None,
            },
            state_key_namespace: sc.encryption_key_namespace.clone(),
            allow_plaintext: sc.allow_plaintext,
        };
        settings.build().map_err(|e| match e {
            SettingsError::NoSingleTarget => {
                self.err("store.redis", "give exactly one of url, sentinel, cluster")
            }
            SettingsError::PlaintextNotAllowed => self.err(
                "store.encryptionKey",
                "key material in Redis must be encrypted: set encryptionKey (base64 of 32 random bytes, e.g. from `head -c 32 /dev/urandom | base64`), or allowPlaintext: true",
            ),
            SettingsError::Bad(at, m) => {
                let path = match at {
                    Setting::Url => "store.redis.url".to_owned(),
                    Setting::SentinelUrl(i) => format!("store.redis.sentinel.urls[{i}]"),
                    Setting::ClusterUrl(i) => format!("store.redis.cluster.urls[{i}]"),
                    Setting::Target => "store.redis".to_owned(),
                    Setting::StateKey => "store.encryptionKey".to_owned(),
                    Setting::StateKeyNamespace => "store.encryptionKeyNamespace".to_owned(),
                };
                self.err(path, m)
            }
        })
    }

    fn group(&self, path: &str, g: GroupConfig) -> Result<GroupSnapshot, ConfigError> {
        if g.name.trim().is_empty() {
            return Err(self.err(format!("{path}.name"), "must not be empty"));
        }
        let url = g.upstream.url.as_deref().unwrap_or(DEFAULT_UPSTREAM);
        check_upstream_url(url).map_err(|m| self.err(format!("{path}.upstream.url"), m))?;
        let egress_proxy = match &g.upstream.egress_proxy {
            None => None,
            Some(r) => {
                let p = format!("{path}.upstream.egressProxy");
                let (_, secret) = self.secret(&p, r)?;
                check_egress_url(secret.expose()).map_err(|m| self.err(&p, m))?;
                Some(secret)
            }
        };
        let timeout_secs = match g.upstream.timeout_seconds {
            Some(n) => n,
            None => keystore::snapshot::bounds::TIMEOUT_SECS_DEFAULT,
        };
        let ca_pem = match &g.upstream.ca_file {
            None => None,
            Some(file) => {
                let p = format!("{path}.upstream.caFile");
                let pem = std::fs::read_to_string(file).map_err(|e| {
                    self.err(&p, format!("cannot read {}: {}", file.display(), e.kind()))
                })?;
                crate::upstream::check_ca_pem(&pem)
                    .map_err(|m| self.err(&p, format!("{}: {m}", file.display())))?;
                Some(pem)
            }
        };
        if g.keys.is_empty() {
            return Err(self.err(format!("{path}.keys"), "a group needs at least one key"));
        }
        let mut keys: Vec<KeyEntry> = Vec::with_capacity(g.keys.len());
        for (ki, k) in g.keys.iter().enumerate() {
            let kp = format!("{path}.keys[{ki}]");
            let key = self.key(&kp, k)?;
            if let Some(j) = keys.iter().position(|x| x.id == key.id) {
                return Err(self.err(kp, format!("the same key as {path}.keys[{j}] ({})", key.id)));
            }
            keys.push(key);
        }
        let mut clients = Vec::new();
        for (ci, t) in g.access.client_tokens.iter().enumerate() {
            let tp = format!("{path}.access.clientTokens[{ci}]");
            let (name, secret) = self.secret(&tp, t)?;
            let digest = TokenDigest::of(secret.expose());
            clients.push(ClientEntry {
                name: name.unwrap_or_else(|| format!("client-{}", digest.short())),
                digest,
            });
        }
        match g.access.mode {
            AccessMode::Token if clients.is_empty() => {
                return Err(self.err(
                    format!("{path}.access.clientTokens"),
                    "Token mode (the default) needs at least one client token; set access.mode: Open to serve anyone who can reach the proxy",
                ));
            }
            AccessMode::Open if !clients.is_empty() => {
                return Err(self.err(
                    format!("{path}.access.clientTokens"),
                    "Open mode takes no client tokens (use mode: Token)",
                ));
            }
            _ => {}
        }
        let max_attempts = g
            .retry
            .max_attempts
            .unwrap_or(RetrySpec::default().max_attempts);
        let positive = |field: &str, v: Option<u64>| match v {
            Some(0) => Err(self.err(
                format!("{path}.{field}"),
                "must be at least 1 (leave it out for no limit)",
            )),
            v => Ok(v),
        };
        let limits = QuotaLimits {
            requests_per_minute: positive(
                "limits.requestsPerMinute",
                g.limits.requests_per_minute,
            )?,
            tokens_per_minute: positive("limits.tokensPerMinute", g.limits.tokens_per_minute)?,
            requests_per_day: positive("limits.requestsPerDay", g.limits.requests_per_day)?,
            learn: g.limits.learn.unwrap_or(true),
            max_input_tokens_per_request: positive(
                "limits.maxInputTokensPerRequest",
                g.limits.max_input_tokens_per_request,
            )?,
        };
        let cl = &g.access.client_limits;
        let client_limits = ClientLimits {
            requests_per_minute: positive(
                "access.clientLimits.requestsPerMinute",
                cl.requests_per_minute,
            )?,
            tokens_per_minute: positive(
                "access.clientLimits.tokensPerMinute",
                cl.tokens_per_minute,
            )?,
        };
        let snapshot = GroupSnapshot {
            name: g.name,
            version: 0,
            upstream: UpstreamSpec {
                url: url.trim_end_matches('/').to_owned(),
                egress_proxy,
                timeout_secs,
                ca_pem,
            },
            keys,
            rotation: g.rotation.strategy,
            access: AccessSpec {
                mode: g.access.mode,
                clients,
                client_limits,
            },
            limits,
            retry: RetrySpec {
                max_attempts,
                wait_on_cooldown_secs: g.retry.wait_on_cooldown_seconds.unwrap_or(0),
            },
        };
        // One set of bounds for the file, the flags and the CRD.
        snapshot
            .validate()
            .map_err(|(field, m)| self.err(format!("{path}.{field}"), m))?;
        Ok(snapshot)
    }

    fn key(&self, path: &str, k: &KeyConfig) -> Result<KeyEntry, ConfigError> {
        let source = SecretSource {
            name: None,
            value: k.value.clone(),
            env: k.env.clone(),
            file: k.file.clone(),
        };
        let secret = self.source(path, &source)?;
        if let Some(0) = k.weight {
            return Err(self.err(format!("{path}.weight"), "must be at least 1"));
        }
        let mut entry = KeyEntry::new(secret, path);
        entry.project = k.project.clone().filter(|p| !p.trim().is_empty());
        entry.weight = k.weight.unwrap_or(1);
        entry.disabled = k.disabled;
        Ok(entry)
    }

    fn secret(&self, path: &str, r: &SecretRef) -> Result<(Option<String>, Secret), ConfigError> {
        match r {
            SecretRef::Inline(v) => Ok((None, self.nonempty(path, v, "the value")?)),
            SecretRef::Source(s) => Ok((s.name.clone(), self.source(path, s)?)),
        }
    }

    fn source(&self, path: &str, s: &SecretSource) -> Result<Secret, ConfigError> {
        match (&s.value, &s.env, &s.file) {
            (Some(v), None, None) => self.nonempty(&format!("{path}.value"), v, "the value"),
            (None, Some(name), None) => match self.env.var(name) {
                Some(v) => self.nonempty(
                    &format!("{path}.env"),
                    &v,
                    &format!("environment variable {name}"),
                ),
                None => Err(self.err(
                    format!("{path}.env"),
                    format!("environment variable {name} is not set"),
                )),
            },
            (None, None, Some(file)) => match std::fs::read_to_string(file) {
                Ok(v) => self.nonempty(
                    &format!("{path}.file"),
                    &v,
                    &format!("file {}", file.display()),
                ),
                Err(e) => Err(self.err(
                    format!("{path}.file"),
                    format!("cannot read {}: {e}", file.display()),
                )),
            },
            _ => Err(self.err(path, "give exactly one of value, env, file")),
        }
    }

    fn nonempty(&self, path: &str, v: &str, what: &str) -> Result<Secret, ConfigError> {
        let v = v.trim();
        if v.is_empty() {
            return Err(self.err(path, format!("{what} is empty")));
        }
        if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.err(path, format!("{what} holds whitespace inside the secret")));
        }
        Ok(Secret::new(v))
    }
}

/// A YAML error as the problem and its place, never the text around it: the parser's snippet
/// is left out, quoted values are blanked, and so are names in backticks longer than any field
/// (a key written where a field name belongs would be quoted so), as the file may hold keys.
fn yaml_problem(e: &serde_saphyr::Error) -> String {
    /// The longest field name of the file format (`maxInputTokensPerRequest`).
    const LONGEST_FIELD: usize = 24;
    let plain = e.without_snippet().to_string();
    let mut out = String::with_capacity(plain.len());
    let mut quoted = false;
    let mut name: Option<String> = None;
    for c in plain.chars() {
        match (c, &mut name) {
            ('`', Some(n)) => {
                out.push('`');
                out.push_str(if n.chars().count() > LONGEST_FIELD {
                    "…"
                } else {
                    n
                });
                out.push('`');
                name = None;
            }
            (c, Some(n)) => n.push(c),
            ('`', None) if !quoted => name = Some(String::new()),
            ('"', None) => {
                out.push_str(if quoted { "…\"" } else { "\"" });
                quoted = !quoted;
            }
            (c, None) if !quoted => out.push(c),
            _ => {}
        }
    }
    if quoted {
        out.push_str("…\"");
    }
    if name.is_some() {
        out.push_str("`…`");
    }
    // One line: a multi-line message would be cut apart by log readers.
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub(crate) fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an address like 127.0.0.1:8080 or [::]:8080"))
}

fn check_upstream_url(s: &str) -> Result<(), String> {
    let url = url::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{s:?}: the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s:?} has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{s:?}: no query or fragment allowed"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{s:?}: no credentials in the upstream URL; keys are added per request"
        ));
    }
    Ok(())
}

fn check_egress_url(s: &str) -> Result<(), String> {
    // Never echo the URL: it may carry a password.
    let url = url::Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https" | "socks5" | "socks5h") {
        return Err(format!(
            "scheme {:?}: must be http, https, socks5 or socks5h",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
