//! Place: which project's keys may serve. A request that continues an upload session, or
//! names a file, cache or batch, goes to a key of the project that created it (learned from the
//! answers that created them and kept in the store, see `affinity`); anything else may use any
//! key of the group.

use std::sync::Arc;

use super::admit::Admitted;
use crate::affinity;
use crate::shared::App;

/// The project (scope) the request is pinned to, and what pinned it (for error messages).
pub(super) type Pinned = Option<(Arc<str>, String)>;

pub(super) async fn pin(app: &App, a: &Admitted<'_>) -> Pinned {
    let pool = &a.pool;
    // Key affinity: a request that continues an upload or names a file, cache or batch goes to
    // a key of the project that created it.
    let mut pinned: Option<(Arc<str>, String)> = None;
    if let Some(b) = &a.session_binding
        && let Some(i) = pool.index_of(&b.key)
    {
        pinned = Some((
            pool.members[i].scope.clone(),
            "this upload session".to_owned(),
        ));
    }
    // With one project in the group, every key is the owner's: nothing to look up.
    if pinned.is_none() && pool.has_several_scopes() {
        let mut names: Vec<String> = affinity::named_in_body(&a.body);
        if let Some(n) = affinity::named_in_path(&a.route.upstream_path) {
            names.insert(0, n.to_owned());
        }
        names.dedup();
        names.truncate(affinity::MAX_NAMES);
        // Concurrently, bounded in all (a hung store costs at most PATH_LOOKUP_TIMEOUT once).
        let found = app
            .affinity
            .first_bound(&names, |b| {
                b.group == pool.name() && pool.index_of(&b.key).is_some()
            })
            .await;
        if let Some((n, b)) = found
            && let Some(i) = pool.index_of(&b.key)
        {
            pinned = Some((pool.members[i].scope.clone(), names.swap_remove(n)));
        }
    }
    pinned
}
