"""The Helm chart, offline with real tools: helm lint and template (Helm 4), every rendered
document validated by kubernetes-validate --strict, assertions on the rendered objects, the
values schema, the CRD copies, manifests/ in sync, and the examples against the CRD schema."""

import json
import os
import pathlib
import re
import subprocess

import jsonschema
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "gemini-proxy"
HELM = os.environ.get("HELM", "helm")
K8S_VERSION = "1.34.0"

VALUE_SETS = {
    "defaults": [],
    "external-redis": ["--set", "redis.bundled.enabled=false", "--set", "redis.external.url=rediss://redis.example:6380",
                       "--set", "redis.external.passwordSecret.name=redis-auth", "--set", "redis.external.username=gp"],
    "sentinel": ["--set", "redis.bundled.enabled=false", "--set", "redis.external.sentinel.master=mymaster",
                 "--set", "redis.external.sentinel.urls={redis://s1:26379,redis://s2:26379}"],
    "cluster": ["--set", "redis.bundled.enabled=false", "--set", "redis.external.cluster.urls={redis://c1:7000,redis://c2:7000}"],
    "single-namespace": ["--set", "operator.watchNamespace=team-a", "--set", "operator.replicas=2"],
    "monitoring": ["--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.grafanaDashboard.enabled=true",
                   "--set", "metrics.prometheusRule.enabled=true",
                   "--set", "proxy.autoscaling.enabled=false", "--set", "proxy.replicas=3"],
    # NetworkPolicies with every knob turned (they are on in every set above too).
    "network-policy": ["--set", "redis.bundled.auth.existingSecret=my-redis-auth",
                       "--set-json", 'networkPolicy.proxy.clientNamespaceSelector={"matchExpressions":[{"key":"team","operator":"In","values":["a","b"]}]}',
                       "--set-json", 'networkPolicy.proxy.clientPodSelector={"matchLabels":{"gemini-proxy.io/client":"true"}}',
                       "--set-json", 'networkPolicy.proxy.clientCidrs=["192.0.2.0/24","2001:db8::/32"]',
                       "--set-json", 'networkPolicy.proxy.egressHttpsCidrs=["142.250.0.0/15"]',
                       "--set-json", 'networkPolicy.proxy.extraEgress=[{"to":[{"ipBlock":{"cidr":"10.0.0.0/8"}}],"ports":[{"port":4317,"protocol":"TCP"}]}]',
                       "--set-json", 'networkPolicy.operator.apiServerCidrs=["172.18.0.2/32"]',
                       "--set-json", 'networkPolicy.metrics.namespaceSelector={}',
                       "--set-json", 'networkPolicy.metrics.podSelector={"matchLabels":{"app.kubernetes.io/name":"prometheus"}}',
                       "--set-json", 'networkPolicy.redis.extraClientSelectors=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"research"}},"podSelector":{"matchLabels":{"app":"research-notebook"}}}]'],
    # A cluster without DNS for the release's Services: pinned Service IPs (in the test API
    # server's Service range, 10.96.0.0/24) named in every pod's /etc/hosts.
    "no-dns": ["--set", "redis.bundled.service.clusterIP=10.96.0.50", "--set", "proxy.service.clusterIP=10.96.0.51",
               "--set-json", 'hostAliases=[{"ip":"10.96.0.50","hostnames":["gp-gemini-proxy-redis"]},'
                             '{"ip":"10.96.0.51","hostnames":["gp-gemini-proxy"]}]'],
}
# The same for Kubernetes 1.20 (a later --kube-version wins over render's): no HPA, no PDB.
VALUE_SETS["kube-1.20-no-dns"] = VALUE_SETS["no-dns"] + ["--kube-version", "1.20.2"]


def helm(*args, check=True):
    return subprocess.run([HELM, *args], capture_output=True, text=True, check=check)


def render_text(extra, kube_version=K8S_VERSION):
    """`helm template` pinned to a Kubernetes version (not Helm's own default, which moves with
    Helm); Capabilities.APIVersions stays Helm's built-in list plus any --api-versions."""
    return helm("template", "gp", str(CHART), "--namespace", "gemini-proxy", "--kube-version", kube_version,
                *extra).stdout


def render(extra, kube_version=K8S_VERSION):
    return [d for d in yaml.safe_load_all(render_text(extra, kube_version)) if d]


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def test_lint_strict():
    r = helm("lint", "--strict", str(CHART), check=False)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_rendered_document_validates_strictly(name, tmp_path):
    docs = render(VALUE_SETS[name])
    core = [d for d in docs if not d["apiVersion"].startswith("monitoring.coreos.com")]
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(core))
    r = subprocess.run(["kubernetes-validate", "--strict", "--quiet", "-k", K8S_VERSION, str(path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_pods_are_locked_down_and_probed(name):
    docs = render(VALUE_SETS[name])
    workloads = by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet")
    assert workloads
    for w in workloads:
        spec = w["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert "livenessProbe" in c and "readinessProbe" in c, c["name"]
            assert "limits" in c["resources"], c["name"]
        # Selectors match the pod labels.
        labels = w["spec"]["template"]["metadata"]["labels"]
        for k, v in w["spec"]["selector"]["matchLabels"].items():
            assert labels.get(k) == v, (w["metadata"]["name"], k)
    for d in docs:
        assert d["metadata"]["labels"]["app.kubernetes.io/name"] == "gemini-proxy", d["metadata"]["name"]
        assert d["metadata"]["labels"]["app.kubernetes.io/instance"] == "gp"


def test_proxy_has_no_api_token_and_probes_its_endpoints():
    docs = render([])
    proxy = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-proxy"))
    spec = proxy["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    sa = next(d for d in by_kind(docs, "ServiceAccount") if d["metadata"]["name"] == spec["serviceAccountName"])
    assert sa["automountServiceAccountToken"] is False
    c = spec["containers"][0]
    # Probes on the admin port, which the client Service does not expose.
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8080, "admin": 9464}
    env = {e["name"]: e for e in c["env"]}
    assert env["GEMINI_PROXY_ADMIN_LISTEN"]["value"] == "0.0.0.0:9464"
    assert "GEMINI_PROXY_ADMIN_TOKEN" not in env
    assert env["GEMINI_PROXY_ALLOWED_UPSTREAM_HOSTS"]["value"] == "generativelanguage.googleapis.com"
    # The operator enforces the same list (a foreign upstream's group gets no keys).
    for hosts, want in [([], "generativelanguage.googleapis.com"),
                        (["--set", "proxy.allowedUpstreamHosts={generativelanguage.googleapis.com,gw.corp}"],
                         "generativelanguage.googleapis.com,gw.corp")]:
        op = next(d for d in by_kind(render(hosts), "Deployment") if d["metadata"]["name"].endswith("-operator"))
        op_env = {e["name"]: e.get("value") for e in op["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert op_env["GEMINI_PROXY_ALLOWED_UPSTREAM_HOSTS"] == want
    # Not an open relay by default: Open groups are served only when allowed.
    assert "GEMINI_PROXY_ALLOW_OPEN_GROUPS" not in env
    docs = render(["--set", "proxy.allowOpenGroups=true"])
    proxy = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-proxy"))
    env2 = {e["name"]: e.get("value") for e in proxy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env2["GEMINI_PROXY_ALLOW_OPEN_GROUPS"] == "true"
    assert env["GEMINI_PROXY_REDIS_URL"]["value"] == "redis://gp-gemini-proxy-redis:6379"
    assert env["GEMINI_PROXY_STATE_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "gp-gemini-proxy-state-key"
    # No binding gives the proxy's ServiceAccount anything.
    for b in by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding"):
        assert all(s["name"] != sa["metadata"]["name"] for s in b["subjects"])
    service = next(d for d in by_kind(docs, "Service") if d["metadata"]["name"] == "gp-gemini-proxy")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "proxy"
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


def rules(docs, kind):
    role = next(d for d in by_kind(docs, kind) if d["metadata"]["name"] == "gp-gemini-proxy-operator")
    return {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}


def test_operator_rbac_is_least_privilege():
    r = rules(render([]), "ClusterRole")
    assert r[("", "secrets")] == {"get", "list", "watch"}
    assert r[("gemini-proxy.io", "geminikeygroups/status")] == {"get", "patch", "update"}
    assert r[("gemini-proxy.io", "geminikeygroups/finalizers")] == {"update"}
    assert r[("events.k8s.io", "events")] == {"create", "patch"}
    assert not any("*" in verbs or "delete" in verbs for verbs in r.values())
    # One namespace: a Role there, no ClusterRole.
    docs = render(VALUE_SETS["single-namespace"])
    assert not by_kind(docs, "ClusterRole")
    role = next(d for d in by_kind(docs, "Role") if d["metadata"]["name"] == "gp-gemini-proxy-operator")
    assert role["metadata"]["namespace"] == "team-a"
    op = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-operator"))
    env = {e["name"]: e.get("value") for e in op["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GEMINI_PROXY_OPERATOR_NAMESPACE"] == "team-a"
    assert env["GEMINI_PROXY_OPERATOR_LEADER_ELECTION"] == "true"
    assert op["spec"]["replicas"] == 2


def test_external_redis_takes_the_password_from_a_secret_and_bundles_nothing():
    docs = render(VALUE_SETS["external-redis"])
    assert not by_kind(docs, "StatefulSet")
    proxy = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-proxy"))
    env = {e["name"]: e for e in proxy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GEMINI_PROXY_REDIS_URL"]["value"] == "rediss://redis.example:6380"
    assert env["GEMINI_PROXY_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "redis-auth"
    docs = render(VALUE_SETS["sentinel"])
    proxy = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-proxy"))
    env = {e["name"]: e.get("value") for e in proxy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GEMINI_PROXY_REDIS_SENTINEL_URLS"] == "redis://s1:26379,redis://s2:26379"


def test_monitoring_objects_and_hpa_switch():
    docs = render(VALUE_SETS["monitoring"])
    sm = by_kind(docs, "ServiceMonitor")[0]
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["spec"]["endpoints"][0]["port"] == "admin"
    # It scrapes a headless Service of the admin port (unready pods included), whose labels
    # it selects; the client Service stays without the admin port.
    admin = next(d for d in by_kind(docs, "Service") if d["metadata"]["name"] == "gp-gemini-proxy-admin")
    assert admin["spec"]["clusterIP"] == "None" and admin["spec"]["publishNotReadyAddresses"] is True
    assert [p["name"] for p in admin["spec"]["ports"]] == ["admin"]
    for k, v in sm["spec"]["selector"]["matchLabels"].items():
        assert admin["metadata"]["labels"][k] == v, k
    dash = by_kind(docs, "ConfigMap")[0]
    panels = json.loads(dash["data"]["gemini-proxy.json"])["panels"]
    titles = " ".join(p["title"] for p in panels)
    for word in ["Request rate", "Error rate", "Keys by state", "Cooldowns", "Added latency"]:
        assert word in titles
    assert not by_kind(docs, "HorizontalPodAutoscaler")
    proxy = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-proxy"))
    assert proxy["spec"]["replicas"] == 3
    assert by_kind(render([]), "HorizontalPodAutoscaler")
    assert by_kind(render([]), "PodDisruptionBudget")


def test_state_key_is_generated_once_and_kept():
    docs = render([])
    secret = next(d for d in by_kind(docs, "Secret") if d["metadata"]["name"] == "gp-gemini-proxy-state-key")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    import base64
    key = base64.b64decode(base64.b64decode(secret["data"]["key"]))
    assert len(key) == 32
    template = (CHART / "templates" / "state-key-secret.yaml").read_text()
    assert "lookup" in template, "the key must be looked up and kept on upgrade"
    assert not any(d["metadata"]["name"].endswith("state-key") for d in render(["--set", "stateKey.existingSecret=mine"]) if d["kind"] == "Secret")


# ---- Numbers, capabilities, clusters without DNS ----

BIG_NUMBERS = """
proxy:
  maxBodyBytes: 1073741824
  shutdownGraceSeconds: 3600
  shutdownDelaySeconds: 300
  replicas: 1000000
  adminPort: 65535
  service: {port: 65534}
  autoscaling: {minReplicas: 1000000, maxReplicas: 2000000, targetCPUUtilizationPercentage: 100}
  podDisruptionBudget: {minAvailable: 1000000}
operator: {replicas: 5}
networkPolicy:
  dnsPorts: [53, 65533]
  operator: {apiServerPorts: [6443, 65532]}
  externalRedisPorts: [65531]
metrics: {serviceMonitor: {enabled: true}}
"""


def env_of(docs, deployment_suffix):
    d = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith(deployment_suffix))
    return {e["name"]: e.get("value") for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize("autoscaling", [True, False])
def test_numbers_render_as_plain_decimal_integers(tmp_path, autoscaling):
    """Numbers from a values file reach the templates as float64, which Go prints in e-notation
    from 1e6 on ("3.3554432e+07", refused by the binary): every number the chart renders, in a
    string or not, is plain decimal digits."""
    values = tmp_path / "big.yaml"
    values.write_text(BIG_NUMBERS)
    extra = ["-f", str(values), "--set-json", f"proxy.autoscaling.enabled={json.dumps(autoscaling)}"]
    text = render_text(extra)
    assert not re.search(r"[0-9]e[+-]?[0-9]", text), [l for l in text.splitlines() if re.search(r"[0-9]e[+-]?[0-9]", l)]
    docs = render(extra)
    env = env_of(docs, "-proxy")
    want = {"GEMINI_PROXY_MAX_BODY_BYTES": "1073741824", "GEMINI_PROXY_SHUTDOWN_GRACE_SECONDS": "3600",
            "GEMINI_PROXY_SHUTDOWN_DELAY_SECONDS": "300",
            "GEMINI_PROXY_LISTEN": "0.0.0.0:65534", "GEMINI_PROXY_ADMIN_LISTEN": "0.0.0.0:65535"}
    for name, value in want.items():
        assert env[name] == value, (name, env[name])
    for name in ["GEMINI_PROXY_MAX_BODY_BYTES", "GEMINI_PROXY_SHUTDOWN_GRACE_SECONDS"]:
        assert re.fullmatch(r"[0-9]+", env[name]), (name, env[name])
    proxy = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-proxy"))
    pod = proxy["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "65535"
    assert pod["spec"]["terminationGracePeriodSeconds"] == 300 + 3600 + 5
    assert {p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]} == {65534, 65535}
    if autoscaling:
        hpa = by_kind(docs, "HorizontalPodAutoscaler")[0]["spec"]
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1000000, 2000000)
        assert "replicas" not in proxy["spec"]
    else:
        assert proxy["spec"]["replicas"] == 1000000
    assert by_kind(docs, "PodDisruptionBudget")[0]["spec"]["minAvailable"] == 1000000
    assert env_of(docs, "-operator")["GEMINI_PROXY_OPERATOR_LEADER_ELECTION"] == "true"
    pod = next(d for d in by_kind(docs, "Pod"))
    assert "http://gp-gemini-proxy:65534/readyz" in pod["spec"]["containers"][0]["args"]
    # With the defaults too (the value that crash-looped every proxy).
    assert env_of(render([]), "-proxy")["GEMINI_PROXY_MAX_BODY_BYTES"] == "33554432"
    # The defaults, a percentage and an external Redis's ports stay what they were.
    docs = render(["--set-json", 'proxy.podDisruptionBudget.minAvailable="50%"'])
    assert by_kind(docs, "PodDisruptionBudget")[0]["spec"]["minAvailable"] == "50%"
    text = render_text(["-f", str(values), "--set", "redis.bundled.enabled=false",
                        "--set", "redis.external.url=redis://r.example:16379"])
    assert not re.search(r"[0-9]e[+-]?[0-9]", text)


def test_chart_installs_on_kubernetes_1_20():
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"] == ">=1.20.0-0"
    for version in ["1.20.2", "1.20.15-eks-1234", "1.36.0"]:
        assert render([], kube_version=version), version
    r = helm("template", "gp", str(CHART), "--kube-version", "1.19.16", check=False)
    assert r.returncode != 0 and "kubeVersion" in r.stderr, r.stderr


def test_hpa_and_pdb_only_where_their_apis_are_served():
    # Kubernetes 1.20 serves neither autoscaling/v2 nor policy/v1: no HPA, no PDB, and the
    # Deployment keeps its replicas (autoscaling is on by default).
    docs = render([], kube_version="1.20.2")
    assert not by_kind(docs, "HorizontalPodAutoscaler")
    assert not by_kind(docs, "PodDisruptionBudget")
    proxy = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-proxy"))
    assert proxy["spec"]["replicas"] == 2
    docs = render(["--set", "proxy.replicas=3"], kube_version="1.20.2")
    proxy = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-proxy"))
    assert proxy["spec"]["replicas"] == 3
    # Served: both, and the HPA owns the replica count.
    docs = render(["--api-versions", "autoscaling/v2", "--api-versions", "policy/v1"], kube_version="1.34.0")
    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    assert [h["apiVersion"] for h in hpa] == ["autoscaling/v2"]
    assert [p["apiVersion"] for p in by_kind(docs, "PodDisruptionBudget")] == ["policy/v1"]
    proxy = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-proxy"))
    assert "replicas" not in proxy["spec"]
    assert hpa[0]["spec"]["scaleTargetRef"]["name"] == proxy["metadata"]["name"]
    # Served but switched off: none, and replicas from values.
    docs = render(["--api-versions", "autoscaling/v2", "--api-versions", "policy/v1",
                   "--set", "proxy.autoscaling.enabled=false", "--set", "proxy.podDisruptionBudget.enabled=false"])
    assert not by_kind(docs, "HorizontalPodAutoscaler") and not by_kind(docs, "PodDisruptionBudget")
    proxy = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-proxy"))
    assert proxy["spec"]["replicas"] == 2
    # policy/v1 from 1.21 (PDB) and autoscaling/v2 from 1.23 (HPA).
    docs = render([], kube_version="1.21.0")
    assert by_kind(docs, "PodDisruptionBudget") and not by_kind(docs, "HorizontalPodAutoscaler")
    docs = render([], kube_version="1.23.0")
    assert by_kind(docs, "PodDisruptionBudget") and by_kind(docs, "HorizontalPodAutoscaler")


def pod_specs(docs):
    """name -> PodSpec of every pod the chart makes (workloads, the uninstall Job, the test Pod)."""
    out = {}
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            out[d["metadata"]["name"]] = d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            out[d["metadata"]["name"]] = d["spec"]
    return out


def test_host_aliases_and_pinned_service_ips_for_clusters_without_dns():
    docs = render([])
    specs = pod_specs(docs)
    assert set(specs) == {"gp-gemini-proxy-operator", "gp-gemini-proxy-proxy", "gp-gemini-proxy-redis",
                          "gp-gemini-proxy-uninstall", "gp-gemini-proxy-test-readyz"}
    assert not any("hostAliases" in s for s in specs.values())
    assert not any("clusterIP" in s["spec"] for s in by_kind(docs, "Service"))
    aliases = [{"ip": "10.96.0.50", "hostnames": ["gp-gemini-proxy-redis"]},
               {"ip": "fd00:10:96::51", "hostnames": ["gp-gemini-proxy", "gp-gemini-proxy.gemini-proxy.svc"]},
               {"ip": "192.0.2.7", "hostnames": ["generativelanguage.googleapis.com"]}]
    docs = render(VALUE_SETS["no-dns"] + ["--set-json", "hostAliases=" + json.dumps(aliases)])
    specs = pod_specs(docs)
    for name in ["gp-gemini-proxy-operator", "gp-gemini-proxy-proxy", "gp-gemini-proxy-uninstall",
                 "gp-gemini-proxy-test-readyz"]:
        assert specs[name]["hostAliases"] == aliases, name
    services = {s["metadata"]["name"]: s["spec"] for s in by_kind(docs, "Service")}
    assert services["gp-gemini-proxy-redis"]["clusterIP"] == "10.96.0.50"
    assert services["gp-gemini-proxy"]["clusterIP"] == "10.96.0.51"
    # The name the operator and the proxies connect to is the Service an alias can pin.
    assert env_of(docs, "-proxy")["GEMINI_PROXY_REDIS_URL"] == "redis://gp-gemini-proxy-redis:6379"
    docs = render(["--set", "redis.bundled.service.clusterIP=fd00:10:96::a"])
    redis = next(s for s in by_kind(docs, "Service") if s["metadata"]["name"] == "gp-gemini-proxy-redis")
    assert redis["spec"]["clusterIP"] == "fd00:10:96::a"


@pytest.mark.parametrize("bad", [
    ["--set", "bogus=1"],
    ["--set", "proxy.bogus=1"],
    ["--set", "proxy.replicas=many"],
    ["--set", "operator.replicas=0"],
    ["--set", "redis.external.url=http://not-redis"],
    ["--set", "image.pullPolicy=Sometimes"],
    # hostAliases and pinned ClusterIPs (clusters without DNS for the release's Services)
    ["--set", "redis.bundled.service.clusterIP=None"],
    ["--set", "redis.bundled.service.clusterIP=10.96.0.256"],
    ["--set", "redis.bundled.service.clusterIP=redis.example"],
    ["--set", "redis.bundled.service.bogus=1"],
    ["--set", "proxy.service.clusterIP=fd00::1::2"],
    ["--set-json", "redis.bundled.service.clusterIP=167772210"],
    ["--set-json", 'hostAliases={"ip":"10.0.0.1"}'],
    ["--set-json", 'hostAliases=[{"ip":"10.0.0.1","hostnames":["a"],"bogus":1}]'],
    ["--set-json", 'hostAliases=[{"ip":"10.0.0.1"}]'],
    ["--set-json", 'hostAliases=[{"ip":"10.0.0.1","hostnames":[]}]'],
    ["--set-json", 'hostAliases=[{"ip":"10.0.0.1","hostnames":"a"}]'],
    ["--set-json", 'hostAliases=[{"ip":"10.0.0.1","hostnames":["Not_A_Name"]}]'],
    ["--set-json", 'hostAliases=[{"ip":"10.0.0","hostnames":["a"]}]'],
    ["--set-json", 'hostAliases=[{"ip":"my-host","hostnames":["a"]}]'],
    ["--set-json", 'hostAliases=[{"ip":"","hostnames":["a"]}]'],
])
def test_values_schema_rejects_unknown_keys_and_bad_types(bad):
    r = helm("template", "gp", str(CHART), *bad, check=False)
    assert r.returncode != 0, f"accepted {bad}"
    assert "values don't meet the specifications of the schema" in r.stderr or "schema" in r.stderr, r.stderr


def test_no_redis_at_all_is_a_clear_error():
    r = helm("template", "gp", str(CHART), "--set", "redis.bundled.enabled=false", check=False)
    assert r.returncode != 0
    assert "enable redis.bundled, or set redis.external.url" in r.stderr


def test_helm_test_hook_checks_readyz_through_the_service():
    pod = next(d for d in by_kind(render([]), "Pod"))
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "http://gp-gemini-proxy:8080/readyz" in pod["spec"]["containers"][0]["args"]


def test_chart_crd_is_the_generated_crd():
    assert (CHART / "crds" / "geminikeygroup.yaml").read_text() == (ROOT / "crds" / "geminikeygroup.yaml").read_text()


def test_manifests_are_in_sync_with_the_chart():
    env = dict(os.environ, HELM=HELM)
    subprocess.run(["bash", str(ROOT / "scripts" / "render-manifests.sh")], check=True, env=env, cwd=ROOT)
    # The script writes manifests/install.yaml in place; git shows drift.
    diff = subprocess.run(["git", "diff", "--exit-code", "--", "manifests/install.yaml"], cwd=ROOT,
                          capture_output=True, text=True)
    assert diff.returncode == 0, "manifests/install.yaml is stale: run scripts/render-manifests.sh\n" + diff.stdout[:2000]


def crd_schema():
    """The CRD's schema as a JSON schema for a whole object (the API server adds the
    apiVersion, kind and metadata parts)."""
    crd = yaml.safe_load((ROOT / "crds" / "geminikeygroup.yaml").read_text())
    schema = strip_k8s_extensions(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    schema["properties"].update({"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}})
    return schema


def strip_k8s_extensions(schema):
    if isinstance(schema, dict):
        out = {k: strip_k8s_extensions(v) for k, v in schema.items() if not k.startswith("x-kubernetes")}
        if out.get("type") == "object" and "properties" in out:
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [strip_k8s_extensions(v) for v in schema]
    return schema


@pytest.mark.parametrize("path", sorted((ROOT / "manifests" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_validate(path, tmp_path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    schema = crd_schema()
    others = []
    for d in docs:
        if d["kind"] == "GeminiKeyGroup":
            jsonschema.validate(d, schema)
        else:
            others.append(d)
    if others:
        f = tmp_path / "others.yaml"
        f.write_text(yaml.safe_dump_all(others))
        r = subprocess.run(["kubernetes-validate", "--strict", "--quiet", "-k", K8S_VERSION, str(f)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_a_bad_example_is_caught_by_the_crd_schema():
    schema = crd_schema()
    bad = {"apiVersion": "gemini-proxy.io/v1alpha1", "kind": "GeminiKeyGroup", "metadata": {"name": "x"},
           "spec": {"keys": [{"secret": "s"}], "rotation": {"strategy": "Random"}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_dockerfiles_lint_clean():
    r = subprocess.run(["hadolint", "Dockerfile.proxy", "Dockerfile.operator"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ---- Against the real API servers (scripts/test.sh starts them; GEMINI_PROXY_K8S names them) ----

def k8s():
    """The test servers' env file as a dict; a failure (never a skip) without them."""
    d = os.environ.get("GEMINI_PROXY_K8S")
    assert d, "GEMINI_PROXY_K8S is not set: run scripts/test.sh (it starts the real API servers)"
    env = dict(line.split("=", 1) for line in pathlib.Path(d, "env").read_text().splitlines() if "=" in line)
    return env


def k8s_call(env, method, path, body=None, content_type="application/json"):
    import ssl
    import urllib.error
    import urllib.request
    ctx = ssl.create_default_context(cafile=env["K8S_CA"])
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(env["K8S_URL"] + path, data=data, method=method,
                                 headers={"Authorization": "Bearer " + env["K8S_ADMIN_TOKEN"],
                                          "Content-Type": content_type})
    def parse(raw):
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return {"message": raw.decode(errors="replace")}
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            return r.status, parse(r.read())
    except urllib.error.HTTPError as e:
        return e.code, parse(e.read())


def dry_run_apply(env, d):
    """Server-side apply with dryRun=All (whether the object exists or not): (code, body)."""
    resources = served_resources(env, d["apiVersion"])
    assert resources and d["kind"] in resources, f'{d["apiVersion"]}/{d["kind"]} not served'
    plural, namespaced = resources[d["kind"]]
    base = "/api/v1" if d["apiVersion"] == "v1" else f'/apis/{d["apiVersion"]}'
    name = d["metadata"]["name"]
    ns = d["metadata"].get("namespace", "gemini-proxy")
    path = f"{base}/namespaces/{ns}/{plural}/{name}" if namespaced else f"{base}/{plural}/{name}"
    return k8s_call(env, "PATCH", path + "?dryRun=All&fieldManager=chart-test&force=true", d,
                    content_type="application/apply-patch+yaml")


def ensure_crd(env):
    crd = yaml.safe_load((ROOT / "crds" / "geminikeygroup.yaml").read_text())
    code, body = k8s_call(env, "PATCH", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                          "geminikeygroups.gemini-proxy.io?fieldManager=chart-test&force=true", crd,
                          content_type="application/apply-patch+yaml")
    assert code in (200, 201), body
    import time
    for _ in range(100):
        if served_resources(env, "gemini-proxy.io/v1alpha1"):
            return
        time.sleep(0.1)
    raise AssertionError("the GeminiKeyGroup API was not served after the CRD was applied")


def served_resources(env, api_version):
    """kind -> (plural, namespaced) for an API version the servers serve; None if not served."""
    path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    code, body = k8s_call(env, "GET", path)
    if code != 200:
        return None
    return {r["kind"]: (r["name"], r["namespaced"]) for r in body.get("resources", []) if "/" not in r["name"]}


@pytest.mark.parametrize("name", ["defaults", "single-namespace", "external-redis", "monitoring", "network-policy", "no-dns",
                                  "kube-1.20-no-dns"])
def test_rendered_chart_passes_server_side_dry_run(name):
    """Every rendered object whose API version the servers serve (Kubernetes 1.20 for the core
    API, 1.36 for CRDs) is created with dryRun=All: the servers' own validation and admission."""
    env = k8s()
    for ns in ["gemini-proxy", "team-a"]:
        k8s_call(env, "POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
        # No controller-manager on the test servers: make the "default" ServiceAccount it would.
        k8s_call(env, "POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "default"}})
    docs = render(VALUE_SETS[name] + ["--include-crds"])
    checked, unserved = [], []
    for d in docs:
        resources = served_resources(env, d["apiVersion"])
        if resources is None or d["kind"] not in resources:
            unserved.append(f'{d["apiVersion"]}/{d["kind"]}')
            continue
        code, body = dry_run_apply(env, d)
        assert code in (200, 201), f'{d["kind"]} {d["metadata"]["name"]}: {code} {body.get("message")}'
        checked.append(d["kind"])
    for kind in ["Deployment", "Service", "ServiceAccount", "Job", "CustomResourceDefinition", "NetworkPolicy", "Secret"]:
        assert kind in checked, (kind, checked, unserved)
    assert any(k in checked for k in ["ClusterRole", "Role"])
    # What 1.20 cannot judge (newer API versions) is named, and nothing else is left out.
    assert set(unserved) <= {"autoscaling/v2/HorizontalPodAutoscaler", "policy/v1/PodDisruptionBudget",
                             "monitoring.coreos.com/v1/ServiceMonitor",
                             "monitoring.coreos.com/v1/PrometheusRule"}, unserved
    # Rendered for 1.20, everything is served there.
    if "1.20" in name:
        assert not unserved, unserved


@pytest.mark.parametrize("path", sorted((ROOT / "manifests" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_pass_the_real_servers(path):
    """The examples' GeminiKeyGroups pass the 1.36 server's schema and CEL rules, and their other
    objects the 1.20 server's validation (dryRun=All)."""
    env = k8s()
    ensure_crd(env)
    for d in (d for d in yaml.safe_load_all(path.read_text()) if d):
        ns = d["metadata"].get("namespace", "default")
        k8s_call(env, "POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
        d["metadata"].setdefault("namespace", ns)
        code, body = dry_run_apply(env, d)
        assert code in (200, 201), f'{path.name}: {d["kind"]} {d["metadata"]["name"]}: {code} {body.get("message")}'


def test_a_bad_example_is_refused_by_the_real_server():
    env = k8s()
    ensure_crd(env)
    k8s_call(env, "POST", "/api/v1/namespaces", {"metadata": {"name": "examples"}})
    bad = {"apiVersion": "gemini-proxy.io/v1alpha1", "kind": "GeminiKeyGroup",
           "metadata": {"name": "bad", "namespace": "examples"},
           "spec": {"keySelector": {}, "access": {"mode": "Open"}}}
    code, body = dry_run_apply(env, bad)
    assert code == 422 and "keySelector must not be empty" in body.get("message", ""), body


def promtool():
    path = os.environ.get("PROMTOOL", "promtool")
    r = subprocess.run([path, "--version"], capture_output=True, text=True)
    assert r.returncode == 0, "promtool is needed (Debian's prometheus package): " + r.stderr
    return path


def test_alerts_fire_on_synthetic_series(tmp_path):
    """The rendered PrometheusRule, checked and unit-tested by promtool (tests/chart/alerts_test.yaml)."""
    assert not by_kind(render([]), "PrometheusRule"), "off by default"
    docs = render(VALUE_SETS["monitoring"])
    rule = by_kind(docs, "PrometheusRule")[0]
    alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert alerts == ["GeminiProxyGroupHasNoUsableKey", "GeminiProxyKeysRetired", "GeminiProxyUpstream429RatioHigh",
                      "GeminiProxyStoreDown", "GeminiProxyUnready", "GeminiProxyOperatorReconcileFailures"]
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    tool = promtool()
    r = subprocess.run([tool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    tests = tmp_path / "alerts_test.yaml"
    tests.write_text((ROOT / "tests" / "chart" / "alerts_test.yaml").read_text().replace("RULES_FILE", str(rules)))
    r = subprocess.run([tool, "test", "rules", str(tests)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_alert_thresholds_come_from_values(tmp_path):
    docs = render(["--set", "metrics.prometheusRule.enabled=true", "--set-json", "metrics.prometheusRule.upstream429Ratio=0.5",
                   "--set", "metrics.prometheusRule.pageSeverity=page"])
    rule = by_kind(docs, "PrometheusRule")[0]
    by_name = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert by_name["GeminiProxyUpstream429RatioHigh"]["expr"].strip().endswith("> 0.5")
    assert by_name["GeminiProxyGroupHasNoUsableKey"]["labels"]["severity"] == "page"
    # With the ratio raised to 0.5, the promtool case at exactly 50 % no longer fires.
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    tests = tmp_path / "alerts_test.yaml"
    tests.write_text((ROOT / "tests" / "chart" / "alerts_test.yaml").read_text().replace("RULES_FILE", str(rules)))
    r = subprocess.run([promtool(), "test", "rules", str(tests)], capture_output=True, text=True)
    assert r.returncode != 0 and "GeminiProxyUpstream429RatioHigh" in r.stdout + r.stderr, r.stdout + r.stderr
