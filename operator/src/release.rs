//! `gemini-proxy-operator release`: what the chart's pre-delete hook runs before an uninstall.
//!
//! Every GeminiKeyGroup carries the operator's finalizer, and nothing removes it once the
//! operator is gone: groups, their namespaces and the CRD would then hang in deletion. So the
//! hook first stops the operator (deletes its Deployment and waits for its pods to go, so that
//! no reconcile puts a finalizer back), then takes the finalizer off every group in scope. The
//! groups themselves stay: they belong to their teams, and a later install manages them again.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};

use crate::controller::{FINALIZER, remove_finalizer};
use crate::crd::GeminiKeyGroup;

/// What to stop before the finalizers come off.
pub struct Operator<'a> {
    /// The operator's namespace.
    pub namespace: &'a str,
    /// Its Deployment.
    pub deployment: &'a str,
    /// A label selector for its pods.
    pub pods: &'a str,
}

/// Stops `operator` (when given), then removes the finalizer from every group of `namespace`
/// (or of every namespace). Returns how many groups were released.
pub async fn release(
    client: Client,
    namespace: Option<&str>,
    operator: Option<Operator<'_>>,
) -> Result<usize, kube::Error> {
    if let Some(op) = operator {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), op.namespace);
        match deployments
            .delete(op.deployment, &DeleteParams::background())
            .await
        {
            Ok(_) => tracing::info!(deployment = op.deployment, "operator stopped"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), op.namespace);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = pods.list(&ListParams::default().labels(op.pods)).await?;
            if left.items.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(
                    pods = left.items.len(),
                    "operator pods still running after 120 s; releasing anyway"
                );
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let groups: Api<GeminiKeyGroup> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut released = 0;
    for g in groups.list(&ListParams::default()).await?.items {
        if !g.finalizers().iter().any(|f| f == FINALIZER) {
            continue;
        }
        let api: Api<GeminiKeyGroup> =
            Api::namespaced(client.clone(), &g.namespace().unwrap_or_default());
        remove_finalizer(&api, &g).await.map_err(|e| match e {
            crate::controller::Error::Kube(k) => k,
            other => kube::Error::Service(other.to_string().into()),
        })?;
        tracing::info!(group = %g.name_any(), namespace = ?g.namespace(), "finalizer removed");
        released += 1;
    }
    Ok(released)
}
