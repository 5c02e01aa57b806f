//! gemini-proxy-operator: reconciles `GeminiKeyGroup`s and their Secrets into the key-state
//! store that the proxies read, and writes the keys' health back to the status.
//!
//! - [`crd`]: the custom resource (the source of truth for `crds/geminikeygroup.yaml`);
//! - [`plan`]: pure planning: spec + Secrets → snapshot; store state → status and events;
//! - [`controller`]: watches, reconcile, finalizer, events, error policy;
//! - [`metrics`]: reconciles, failures, durations.

pub mod controller;
pub mod crd;
#[doc(hidden)]
pub mod fixtures;
pub mod metrics;
pub mod plan;

use kube::CustomResourceExt;

/// The CRD as YAML, as `gemini-proxy-operator crd` prints it.
pub fn crd_yaml() -> String {
    let crd = crd::GeminiKeyGroup::crd();
    match serde_saphyr::to_string(&crd) {
        Ok(y) => y,
        Err(e) => panic!("the CRD does not serialise: {e}"),
    }
}
