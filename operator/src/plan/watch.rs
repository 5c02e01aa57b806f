//! Which Secret events concern which group (the watch mapping).

use super::*;

/// The names of the Secrets a group reads by name.
pub fn referenced_secrets(g: &GeminiKeyGroup) -> HashSet<String> {
    let mut names: HashSet<String> = g.spec.keys.iter().map(|k| k.secret.clone()).collect();
    names.extend(
        g.spec
            .access
            .client_secret_refs
            .iter()
            .map(|r| r.name.clone()),
    );
    if let Some(r) = &g.spec.upstream.egress_proxy_secret_ref {
        names.insert(r.name.clone());
    }
    if let Some(r) = &g.spec.upstream.ca_secret_ref {
        names.insert(r.name.clone());
    }
    names
}

/// Whether a Secret event concerns a group (named by it, or selected by its keySelector).
pub fn concerns(g: &GeminiKeyGroup, secret: &Secret) -> bool {
    if g.metadata.namespace != secret.metadata.namespace || !opted_in(secret) {
        return false;
    }
    let name = secret.metadata.name.clone().unwrap_or_default();
    if referenced_secrets(g).contains(&name) {
        return true;
    }
    let empty = BTreeMap::new();
    g.spec
        .key_selector
        .as_ref()
        .is_some_and(|sel| selects(sel, secret.metadata.labels.as_ref().unwrap_or(&empty)))
}
