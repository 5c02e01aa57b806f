//! Hot reload of the config file: the file given with `--config` is watched (and re-read on
//! SIGHUP). A valid new file replaces groups, keys, tokens, limits, upstreams, `defaultGroup`
//! and `maxBodyBytes` at once: the request path sees the old groups or the new ones, never a
//! mix, and requests in flight finish on the group they started with. Keys that stay keep their
//! state (cooldowns, retirement, counters), because groups are rebuilt by group name and key id.
//! With the Redis store the new groups are published and removed ones withdrawn.
//!
//! An invalid file changes nothing: the error (file, field, problem) is logged and counted, and
//! the running config keeps serving. Settings bound at start (listen addresses, the store, the
//! shutdown grace, listener TLS paths) are named in the log when they change; they take effect
//! at the next restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, watch};

use crate::config::Settings;
use crate::registry::Selection;
use crate::shared::App;
use crate::store_sync::{self, Context};

/// How often the file is looked at. A change is applied once the file has stayed the same for
/// one more look, so an editor's half-written file is not read.
const POLL: Duration = Duration::from_millis(250);

/// Reads the settings again: the file and the command line's overrides, as at start.
pub type Load = Box<dyn Fn() -> Result<Settings, String> + Send + Sync>;

/// What a successful reload did.
#[derive(Debug)]
pub struct Applied {
    pub groups: usize,
    pub keys: usize,
    /// Changed settings that keep their running value until a restart.
    pub need_restart: Vec<&'static str>,
}

pub struct Reloader {
    app: Arc<App>,
    ctx: Arc<Context>,
    path: PathBuf,
    load: Load,
    /// The settings in force (start-only ones as started).
    running: Mutex<Settings>,
}

impl Reloader {
    pub fn new(proxy: &crate::server::Proxy, path: PathBuf, load: Load, running: Settings) -> Self {
        Self {
            app: proxy.app.clone(),
            ctx: proxy.ctx.clone(),
            path,
            load,
            running: Mutex::new(running),
        }
    }

    /// Reads the file and applies it, or keeps the running config when it is not valid.
    pub async fn reload(&self, cause: &'static str) -> Result<Applied, String> {
        let mut running = self.running.lock().await;
        let next = match (self.load)() {
            Ok(next) => next,
            Err(e) => {
                self.app
                    .metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                self.app.metrics.config_last_reload_ok.set(0);
                tracing::error!(cause, error = %e, "config reload refused: the running config keeps serving");
                return Err(e);
            }
        };
        let need_restart = restart_only_changes(&running, &next);
        if !need_restart.is_empty() {
            tracing::warn!(
                settings = need_restart.join(", "),
                "changed settings that take effect only at a restart: their running values stay"
            );
        }
        self.apply(&running, &next).await;
        let applied = Applied {
            groups: next.groups.len(),
            keys: next.groups.iter().map(|g| g.keys.len()).sum(),
            need_restart,
        };
        *running = Settings {
            listen: running.listen,
            admin: running.admin.clone(),
            listen_tls: running.listen_tls.clone(),
            store: running.store.clone(),
            shutdown_grace: running.shutdown_grace,
            shutdown_delay: running.shutdown_delay,
            ..next
        };
        self.app
            .metrics
            .config_reloads
            .with_label_values(&["ok"])
            .inc();
        self.app.metrics.config_last_reload_ok.set(1);
        tracing::info!(
            cause,
            groups = applied.groups,
            keys = applied.keys,
            "config reloaded"
        );
        Ok(applied)
    }

    /// Swaps in the new groups. With the store: withdraw removed groups, publish the others,
    /// rebuild from what the store holds (the key states included). Without an answer from it:
    /// rebuild from the file alone, keys keeping their local state.
    async fn apply(&self, old: &Settings, next: &Settings) {
        self.app
            .max_body_bytes
            .store(next.max_body_bytes, std::sync::atomic::Ordering::Relaxed);
        let only =
            (!next.groups.is_empty()).then(|| next.groups.iter().map(|g| g.name.clone()).collect());
        self.ctx.registry.select(Selection {
            default_group: next.default_group.clone(),
            only,
            // The listener is the running one (it changes only with a restart).
            open_allowed: next.allow_open_groups || old.listen.ip().is_loopback(),
            upstream_hosts: next.upstream_allowlist(),
        });
        // Held to the end: the follower publishes the old list or the new one, never the old
        // one after a group of it was withdrawn.
        let mut own = self.ctx.own_groups.lock().await;
        *own = next.groups.clone();
        let store = self.ctx.store.as_ref();
        for gone in old
            .groups
            .iter()
            .filter(|g| !next.groups.iter().any(|n| n.name == g.name))
        {
            let r = store.remove_group(&gone.name).await;
            self.ctx.status.record(&r);
        }
        let r = store_sync::publish_and_reload(store, &self.ctx.registry, &next.groups).await;
        self.ctx.status.record(&r);
        if r.is_err() {
            self.ctx
                .registry
                .rebuild(next.groups.clone(), &Default::default());
        }
    }

    /// Reloads on SIGHUP and when the file changes, until `stop` turns true.
    pub async fn watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut hangup = Hangup::listen();
        let mut applied = Stamp::of(&self.path);
        let mut last = applied.clone();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => return,
                _ = hangup.recv() => {
                    applied = Stamp::of(&self.path);
                    last = applied.clone();
                    let _ = self.reload("SIGHUP").await;
                }
                _ = tick.tick() => {
                    let now = Stamp::of(&self.path);
                    // Changed, and the same as a look ago: written and settled.
                    if now != applied && now == last {
                        applied = now.clone();
                        let _ = self.reload("file changed").await;
                    }
                    last = now;
                }
            }
        }
    }
}

/// The start-only settings that differ between `running` and `next`, by their file names.
pub fn restart_only_changes(running: &Settings, next: &Settings) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if running.listen != next.listen {
        changed.push("listen");
    }
    if running.admin != next.admin {
        changed.push("admin");
    }
    if running.listen_tls != next.listen_tls {
        changed.push("listenTls");
    }
    if running.store != next.store {
        changed.push("store");
    }
    if running.shutdown_grace != next.shutdown_grace {
        changed.push("shutdownGraceSeconds");
    }
    if running.shutdown_delay != next.shutdown_delay {
        changed.push("shutdownDelaySeconds");
    }
    changed
}

/// What tells one version of the file from another: its identity, size and modification time,
/// through symbolic links (a Kubernetes ConfigMap swaps a link; editors rename a new file into
/// place). `None` while the file cannot be read.
#[derive(Clone, Debug, PartialEq)]
struct Stamp(Option<(u64, u64, u64, u128)>);

impl Stamp {
    fn of(path: &Path) -> Self {
        let Ok(m) = std::fs::metadata(path) else {
            return Self(None);
        };
        let modified = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        #[cfg(unix)]
        let (dev, ino) = {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        };
        #[cfg(not(unix))]
        let (dev, ino) = (0, 0);
        Self(Some((dev, ino, m.len(), modified)))
    }
}

/// SIGHUP, where there is one.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn listen() -> Self {
        Self {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = self.signal.as_mut() {
            if s.recv().await.is_some() {
                return;
            }
            self.signal = None;
        }
        std::future::pending::<()>().await
    }
}

/// Resolves once `stop` turns true (the guard `wait_for` returns is not kept across awaits).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
