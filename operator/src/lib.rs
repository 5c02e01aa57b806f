//! gemini-proxy-operator: reconciles `GeminiKeyGroup`s and their Secrets into the key-state
//! store that the proxies read, and writes the keys' health back to the status.
//!
//! - [`crd`]: the custom resource (the source of truth for `crds/geminikeygroup.yaml`);
//! - [`plan`]: pure planning: spec + Secrets → snapshot; store state → status and events;
//! - [`controller`]: watches and their caches, reconcile, finalizer, error policy;
//! - [`events`]: one Event per thing that happened, named so that none is published twice;
//! - [`release`]: the uninstall hook: stop the operator, take its finalizer off every group;
//! - [`metrics`]: reconciles, failures, durations.

#![forbid(unsafe_code)]

pub mod controller;
pub mod crd;
pub mod events;
#[doc(hidden)]
pub mod fixtures;
pub mod metrics;
pub mod plan;
pub mod release;

use kube::CustomResourceExt;

/// The CRD as the API server gets it. Integer formats are Kubernetes' own (`int32`, `int64`):
/// schemars writes `uint32`/`uint64`, which a current API server warns about as unknown.
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    let mut crd = crd::GeminiKeyGroup::crd();
    for v in &mut crd.spec.versions {
        if let Some(schema) = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            kube_formats(schema);
        }
    }
    crd
}

fn kube_formats(
    s: &mut k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps,
) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    };
    match s.format.as_deref() {
        Some("uint32" | "int32") => s.format = Some("int32".into()),
        Some("uint64" | "uint" | "int") => s.format = Some("int64".into()),
        Some("double" | "float") if s.type_.as_deref() == Some("number") => {}
        _ => {}
    }
    for p in s.properties.iter_mut().flat_map(|m| m.values_mut()) {
        kube_formats(p);
    }
    match s.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(i)) => kube_formats(i),
        Some(JSONSchemaPropsOrArray::Schemas(v)) => v.iter_mut().for_each(kube_formats),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(a)) = s.additional_properties.as_mut() {
        kube_formats(a);
    }
}

/// The CRD as YAML, as `gemini-proxy-operator crd` prints it.
pub fn crd_yaml() -> String {
    match serde_saphyr::to_string(&crd()) {
        Ok(y) => y,
        Err(e) => panic!("the CRD does not serialise: {e}"),
    }
}
