//! The groups this proxy serves, swapped atomically: the request path loads them without a
//! lock and without awaiting anything.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use keystore::{AccessMode, GroupSnapshot, KeyId, KeyStatus, TokenDigest};

use crate::pool::Pool;
use crate::upstream::Upstream;

/// One consistent view of all groups.
#[derive(Default)]
pub struct Groups {
    pools: Vec<Arc<Pool>>,
    by_name: HashMap<String, usize>,
    by_token: HashMap<TokenDigest, (usize, Arc<str>)>,
    default_open: Option<usize>,
    /// Client tokens that selected a group once and no longer do: always 401, never the
    /// default group (bounded, see [`MAX_REVOKED`]).
    revoked: HashSet<TokenDigest>,
    /// Whether a snapshot was ever loaded (readiness).
    pub loaded: bool,
    /// Groups not served, and why (shown by `/readyz` and `gemini_proxy_group_refused`).
    pub refused: Vec<Refused>,
}

/// A group this proxy does not serve.
#[derive(Clone, Debug, PartialEq)]
pub struct Refused {
    pub group: String,
    /// A short reason, also the metric's label: `unauthenticated` (the store's snapshot could
    /// not be authenticated or read), `open_not_allowed`, `upstream_not_allowed`, `bad_upstream`.
    pub reason: &'static str,
    pub detail: String,
}

impl Groups {
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Pool>> {
        self.by_name.get(name).map(|&i| &self.pools[i])
    }
}

/// Revoked client tokens remembered at most (oldest forgotten first is not tracked: past the
/// bound the set starts over, and the forgotten tokens fall back to the default group's rule).
const MAX_REVOKED: usize = 10_000;

/// Who a request is for.
pub struct Client {
    pub pool: Arc<Pool>,
    /// The client's name for Token groups; `None` for anonymous use of an Open group.
    pub name: Option<Arc<str>>,
}

pub struct Registry {
    current: ArcSwap<Groups>,
    /// Which groups are served; read when the groups are rebuilt, changed by a config reload.
    selection: Mutex<Selection>,
}

/// Which of the store's groups a proxy serves.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selection {
    /// `defaultGroup`: the Open group that serves requests without a known token.
    pub default_group: Option<String>,
    /// The groups to serve when the config names some; `None` serves every group in the store.
    pub only: Option<HashSet<String>>,
    /// Whether Open groups are served. Off on a non-loopback listener unless opted in, so an
    /// image or chart is not an open relay by default; a refused Open group is logged.
    pub open_allowed: bool,
    /// Hosts the groups from the store may send requests to (`None`: any). A tenant who may
    /// create a group must not be able to point its keys, or the proxies, elsewhere.
    pub upstream_hosts: Option<Arc<[String]>>,
}

impl Registry {
    pub fn new(selection: Selection) -> Self {
        Self {
            current: ArcSwap::from_pointee(Groups::default()),
            selection: Mutex::new(selection),
        }
    }

    /// Changes which groups are served from the next rebuild on (a config reload).
    pub fn select(&self, selection: Selection) {
        *self
            .selection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = selection;
    }

    pub fn groups(&self) -> Arc<Groups> {
        self.current.load_full()
    }

    /// The group for a client token. A token that selects no group goes to the `defaultGroup`
    /// (an Open group, named in the config: there is no implicit one), whatever it is (Open
    /// groups accept any token: SDKs insist on sending one); a revoked token never does.
    pub fn resolve(&self, token: Option<&str>) -> Option<Client> {
        let groups = self.current.load();
        if let Some(t) = token
            && (!groups.by_token.is_empty() || !groups.revoked.is_empty())
        {
            let digest = TokenDigest::of(t);
            if let Some((i, name)) = groups.by_token.get(&digest) {
                return Some(Client {
                    pool: groups.pools[*i].clone(),
                    name: Some(name.clone()),
                });
            }
            if groups.revoked.contains(&digest) {
                return None;
            }
        }
        groups.default_open.map(|i| Client {
            pool: groups.pools[i].clone(),
            name: None,
        })
    }

    /// The Token group client whose token has this digest, when it is admitted now.
    pub fn resolve_digest(&self, digest: &TokenDigest) -> Option<Client> {
        let groups = self.current.load();
        groups.by_token.get(digest).map(|(i, name)| Client {
            pool: groups.pools[*i].clone(),
            name: Some(name.clone()),
        })
    }

    /// Replaces all groups; key slots carry over by group name and key id.
    pub fn rebuild(
        &self,
        snapshots: Vec<GroupSnapshot>,
        statuses: &HashMap<String, HashMap<KeyId, KeyStatus>>,
    ) {
        self.rebuild_refusing(snapshots, statuses, Vec::new());
    }

    /// [`Registry::rebuild`], with the groups the store refused to hand out (name, reason).
    pub fn rebuild_refusing(
        &self,
        snapshots: Vec<GroupSnapshot>,
        statuses: &HashMap<String, HashMap<KeyId, KeyStatus>>,
        store_refused: Vec<(String, String)>,
    ) {
        let selection = self
            .selection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let old = self.current.load_full();
        let mut next = Groups {
            loaded: true,
            ..Groups::default()
        };
        let empty = HashMap::new();
        next.refused = store_refused
            .into_iter()
            .map(|(group, detail)| Refused {
                group,
                reason: "unauthenticated",
                detail,
            })
            .collect();
        let mut refuse = |group: &str, reason: &'static str, detail: String| {
            next.refused.push(Refused {
                group: group.to_owned(),
                reason,
                detail,
            })
        };
        for snap in snapshots {
            if selection
                .only
                .as_ref()
                .is_some_and(|only| !only.contains(&snap.name))
            {
                continue;
            }
            if snap.access.mode == AccessMode::Open && !selection.open_allowed {
                tracing::error!(group = %snap.name, "Open group not served: this proxy listens beyond loopback and Open groups were not allowed (--allow-open-groups, allowOpenGroups: true)");
                refuse(
                    &snap.name,
                    "open_not_allowed",
                    "an Open group, and Open groups are not allowed on this listener".into(),
                );
                continue;
            }
            if let Some(hosts) = &selection.upstream_hosts
                && selection.only.is_none()
                && !snap.upstream.host_allowed(hosts)
            {
                tracing::error!(group = %snap.name, upstream = %snap.upstream.url, "group not served: its upstream host is not allowed (--allowed-upstream-hosts)");
                refuse(
                    &snap.name,
                    "upstream_not_allowed",
                    "its upstream host is not in --allowed-upstream-hosts".into(),
                );
                continue;
            }
            let upstream = match Upstream::new(&snap.upstream) {
                Ok(u) => u,
                Err(e) => {
                    tracing::error!(group = %snap.name, error = %e, "group skipped: bad upstream");
                    refuse(&snap.name, "bad_upstream", e.to_string());
                    continue;
                }
            };
            let st = statuses.get(&snap.name).unwrap_or(&empty);
            let previous = old.get(&snap.name).map(|p| p.as_ref());
            if let Some(prev) = previous {
                log_key_changes(&prev.snapshot, &snap);
            }
            let pool = Pool::build(snap, previous, st, upstream);
            let i = next.pools.len();
            for c in &pool.snapshot.access.clients {
                if pool.snapshot.access.mode != AccessMode::Token {
                    continue;
                }
                if let Some((j, _)) = next.by_token.get(&c.digest) {
                    tracing::warn!(group = %pool.name(), other = %next.pools[*j].name(), client = %c.name, "a client token selects two groups; the first keeps it");
                    continue;
                }
                next.by_token
                    .insert(c.digest.clone(), (i, Arc::from(c.name.as_str())));
            }
            next.by_name.insert(pool.name().to_owned(), i);
            next.pools.push(Arc::new(pool));
        }
        next.default_open = selection.default_group.as_ref().and_then(|d| {
            next.by_name
                .get(d)
                .copied()
                .filter(|&i| next.pools[i].snapshot.access.mode == AccessMode::Open)
        });
        // Tokens that were admitted and are no longer: remembered as revoked.
        next.revoked = old
            .revoked
            .iter()
            .chain(old.by_token.keys())
            .filter(|d| !next.by_token.contains_key(*d))
            .cloned()
            .collect();
        if next.revoked.len() > MAX_REVOKED {
            next.revoked.clear();
        }
        self.current.store(Arc::new(next));
    }

    /// Applies key states written by other proxies.
    pub fn adopt(&self, group: &str, changes: &[(KeyId, KeyStatus)]) {
        let groups = self.current.load();
        let Some(pool) = groups.get(group) else {
            return;
        };
        for (id, status) in changes {
            if let Some(m) = pool.members.iter().find(|m| &m.slot.id == id) {
                m.slot.adopt(status);
            }
        }
    }
}

/// The audit trail's log side of keys coming and going (the store records them at publish).
fn log_key_changes(old: &GroupSnapshot, new: &GroupSnapshot) {
    for e in keystore::audit::key_changes(Some(old), Some(new), "config", 0) {
        tracing::info!(
            target: "gemini_proxy::audit",
            event = if e.kind == keystore::AuditKind::Added { "key_added" } else { "key_removed" },
            group = %e.group,
            key_id = %e.key,
            source = e.reason.as_deref().unwrap_or(""),
            "key {}", e.kind.as_str()
        );
    }
}

#[cfg(test)]
mod tests;
