//! `helm uninstall` with groups present: the chart's pre-delete hook (`gemini-proxy-operator
//! release`, with the hook's own RBAC) stops the operator and takes its finalizer off, so that a
//! group can be deleted once the operator is gone. Without it the group would hang in deletion.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::k8s::{Setup, Who, render_chart, wait_for};

#[tokio::test]
async fn the_uninstall_hook_stops_the_operator_and_releases_the_groups() {
    let setup = Setup::new("uninstall").await;
    let (cluster, ns) = (&setup.cluster, &setup.ns);
    let docs = render_chart(&[&format!("operator.watchNamespace={ns}")]);
    // The hook's own RBAC, exactly as rendered.
    let hook: Vec<&serde_json::Value> = docs
        .iter()
        .filter(|d| {
            d["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
                && d["apiVersion"] == "rbac.authorization.k8s.io/v1"
        })
        .collect();
    assert_eq!(
        hook.len(),
        4,
        "the hook's Role, ClusterRole/Role and bindings"
    );
    for d in hook {
        cluster.apply_rbac(d).await;
    }
    let job = docs
        .iter()
        .find(|d| {
            d["kind"] == "Job" && d["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
        })
        .expect("the hook's Job");
    let args: Vec<String> = job["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    // The operator's Deployment, as the chart renders it (the test servers run no pods).
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "gemini-proxy-operator")
        .expect("the operator's Deployment");
    let deployments: Api<Deployment> = Api::namespaced(cluster.admin().await, "gemini-proxy");
    deployments
        .patch(
            "gemini-proxy-operator",
            &PatchParams::apply("gemini-proxy-tests").force(),
            &Patch::Apply(deployment),
        )
        .await
        .expect("create the operator's Deployment");

    cluster
        .put_secret(ns, "keys", &[("k", "fake-uninstall")], true)
        .await;
    let mut operator = setup.operator("op-uninstall").await;
    cluster
        .create_group(
            ns,
            "g",
            json!({"keys": [{"secret": "keys", "entry": "k"}], "access": {"mode": "Open"}}),
        )
        .await;
    setup.ready("g").await;
    let g = cluster.groups(ns).await.get("g").await.expect("group");
    assert!(g.metadata.finalizers.is_some_and(|f| !f.is_empty()));

    // The hook, with the Job's arguments and the hook ServiceAccount's rights. (Deleting the
    // Deployment stops the operator's pods in a cluster; here the process is killed for it.)
    operator.kill().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gemini-proxy-operator"))
        .args(&args)
        .env("KUBECONFIG", cluster.kubeconfig(Who::Uninstall))
        .env("GEMINI_PROXY_OPERATOR_NAMESPACE", ns)
        .env("POD_NAMESPACE", "gemini-proxy")
        .output()
        .await
        .expect("run the hook");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the hook failed: {text}");
    assert!(text.contains("released 1 GeminiKeyGroups"), "{text}");
    assert!(
        deployments
            .get_opt("gemini-proxy-operator")
            .await
            .expect("get")
            .is_none(),
        "the operator's Deployment is still there"
    );
    let g = cluster
        .groups(ns)
        .await
        .get("g")
        .await
        .expect("the group stays");
    assert_eq!(
        g.metadata.finalizers.unwrap_or_default(),
        Vec::<String>::new()
    );

    // With no operator left, the group can still be deleted.
    cluster.delete_group(ns, "g").await;
    wait_for(Duration::from_secs(10), "the group deleted", || async {
        cluster
            .groups(ns)
            .await
            .get_opt("g")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
}
