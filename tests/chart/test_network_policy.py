"""The chart's NetworkPolicies: who may talk to whom. The rendered policies are evaluated by
the rules of the Kubernetes API (a pod selected by a policy of a direction admits only what one
of their rules admits; a connection needs the source's egress and the destination's ingress)
over a model of a cluster: this release's pods as rendered (their labels and ports), clients
in other namespaces, a Prometheus, DNS, the API server, Gemini and an external Redis. Schema
and server-side checks of the same policies are in test_chart.py (every rendered document)."""

import ipaddress
import json
from dataclasses import dataclass, field

import pytest
import yaml

from test_chart import CHART, ROOT, by_kind, helm, render


@dataclass
class Endpoint:
    name: str
    ip: str
    ns: str | None = None          # None: outside the cluster's pods
    labels: dict = field(default_factory=dict)
    ports: dict = field(default_factory=dict)  # container port name -> number


NS_LABELS = {
    "gemini-proxy": {},
    "team-a": {"gemini-proxy.io/client": "true"},
    "team-b": {},
    "monitoring": {},
    "research": {},
    "kube-system": {},
}


def ns_labels(ns):
    return {"kubernetes.io/metadata.name": ns, **NS_LABELS[ns]}


def selects(selector, labels):
    if selector is None:
        return True
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        has, val, values = e["key"] in labels, labels.get(e["key"]), e.get("values") or []
        ok = {"In": has and val in values, "NotIn": not (has and val in values),
              "Exists": has, "DoesNotExist": not has}[e["operator"]]
        if not ok:
            return False
    return True


def peer_matches(peer, policy_ns, ep):
    if "ipBlock" in peer:
        # ipBlock is taken to match pod IPs too (CNIs differ): a denial found here holds anyway.
        ip = ipaddress.ip_address(ep.ip)
        net = ipaddress.ip_network(peer["ipBlock"]["cidr"])
        if ip.version != net.version or ip not in net:
            return False
        return not any(ip in ipaddress.ip_network(x) for x in peer["ipBlock"].get("except", [])
                       if ipaddress.ip_network(x).version == ip.version)
    if ep.ns is None:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], ns_labels(ep.ns)):
            return False
    elif ep.ns != policy_ns:
        return False
    return selects(peer.get("podSelector"), ep.labels)


def port_matches(ports, port, protocol, target):
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        want = p.get("port")
        if want is None:
            return True
        if isinstance(want, str):
            want = target.ports.get(want)
        if want == port or (p.get("endPort") and want <= port <= p["endPort"]):
            return True
    return False


def admitted(policies, subject, direction, peer, port, protocol):
    """Whether `subject`'s policies of `direction` admit `peer` (the other end) on `port`."""
    if subject.ns is None:
        return True
    kind = "Ingress" if direction == "ingress" else "Egress"
    mine = [p for p in policies if p["metadata"].get("namespace", "gemini-proxy") == subject.ns
            and selects(p["spec"]["podSelector"], subject.labels) and kind in p["spec"]["policyTypes"]]
    if not mine:
        return True
    target = subject if direction == "ingress" else peer
    for p in mine:
        for rule in p["spec"].get(direction) or []:
            peers = rule.get("from" if direction == "ingress" else "to")
            if not port_matches(rule.get("ports"), port, protocol, target):
                continue
            if not peers or any(peer_matches(x, subject.ns, peer) for x in peers):
                return True
    return False


class Cluster:
    def __init__(self, docs):
        self.policies = by_kind(docs, "NetworkPolicy")
        self.ep = {}
        for w in by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet") + by_kind(docs, "Pod"):
            spec = w["spec"]["template"] if "template" in w["spec"] else w
            ports = {p["name"]: p["containerPort"] for c in spec["spec"]["containers"] for p in c.get("ports", [])
                     if "name" in p}
            component = spec["metadata"]["labels"]["app.kubernetes.io/component"]
            self.add(Endpoint(component, f"10.244.1.{len(self.ep) + 10}", "gemini-proxy", spec["metadata"]["labels"], ports))
        self.add(Endpoint("client-a", "10.244.2.1", "team-a", {"app": "client"}))
        self.add(Endpoint("client-b", "10.244.2.2", "team-b", {"app": "client"}))
        self.add(Endpoint("other", "10.244.2.3", "gemini-proxy", {"app": "other"}))
        self.add(Endpoint("prometheus", "10.244.2.4", "monitoring", {"app.kubernetes.io/name": "prometheus"}))
        self.add(Endpoint("sidecar", "10.244.2.5", "research", {"app": "research-notebook"}))
        self.add(Endpoint("kube-dns", "10.244.0.10", "kube-system", {"k8s-app": "kube-dns"}))
        self.add(Endpoint("apiserver", "172.18.0.2"))
        self.add(Endpoint("gemini", "142.250.74.10"))
        self.add(Endpoint("gemini6", "2a00:1450:4001::200a"))
        self.add(Endpoint("external-redis", "192.0.2.10"))

    def add(self, ep):
        self.ep[ep.name] = ep

    def can(self, src, dst, port, protocol="TCP"):
        s, d = self.ep[src], self.ep[dst]
        return (admitted(self.policies, s, "egress", d, port, protocol)
                and admitted(self.policies, d, "ingress", s, port, protocol))


def test_redis_admits_only_this_releases_operator_and_proxies():
    c = Cluster(render([]))
    assert c.can("operator", "redis", 6379) and c.can("proxy", "redis", 6379)
    for src in ["client-a", "other", "prometheus", "sidecar", "test"]:
        assert not c.can(src, "redis", 6379), src
    assert not c.can("proxy", "redis", 6380)
    # Redis reaches nothing, not even DNS.
    for dst, port in [("kube-dns", 53), ("gemini", 443), ("apiserver", 443), ("proxy", 8080), ("external-redis", 6379)]:
        assert not c.can("redis", dst, port), dst
    assert not c.can("redis", "kube-dns", 53, "UDP")


def test_proxies_serve_clients_and_scrapers_and_reach_dns_store_and_https():
    c = Cluster(render([]))
    # Clients from every namespace by default; the helm test Pod.
    for src in ["client-a", "client-b", "other", "test"]:
        assert c.can(src, "proxy", 8080), src
    # The admin port: the monitoring namespace only (the kubelet's probes come from the node).
    assert c.can("prometheus", "proxy", 9464)
    for src in ["client-a", "other", "test", "operator"]:
        assert not c.can(src, "proxy", 9464), src
    assert not c.can("client-a", "proxy", 22)
    # Egress: DNS, the store, Gemini over HTTPS; nothing else.
    assert c.can("proxy", "kube-dns", 53, "UDP") and c.can("proxy", "kube-dns", 53, "TCP")
    assert c.can("proxy", "redis", 6379)
    assert c.can("proxy", "gemini", 443) and c.can("proxy", "gemini6", 443)
    for dst, port in [("gemini", 80), ("apiserver", 6443), ("operator", 8081), ("client-a", 8080),
                      ("external-redis", 6379), ("kube-dns", 8080)]:
        assert not c.can("proxy", dst, port), (dst, port)


def test_operator_serves_only_scrapers_and_reaches_dns_store_and_api_server():
    c = Cluster(render([]))
    assert c.can("prometheus", "operator", 8081)
    for src in ["client-a", "proxy", "other", "test"]:
        assert not c.can(src, "operator", 8081), src
    assert c.can("operator", "apiserver", 443) and c.can("operator", "apiserver", 6443)
    assert c.can("operator", "kube-dns", 53, "UDP") and c.can("operator", "redis", 6379)
    for dst, port in [("gemini", 80), ("proxy", 8080), ("external-redis", 6379), ("apiserver", 8080)]:
        assert not c.can("operator", dst, port), (dst, port)
    # A narrowed API server range shuts the rest of 443 too.
    c = Cluster(render(["--set-json", 'networkPolicy.operator.apiServerCidrs=["172.18.0.0/24"]',
                        "--set-json", "networkPolicy.operator.apiServerPorts=[6443]"]))
    assert c.can("operator", "apiserver", 6443)
    assert not c.can("operator", "apiserver", 443) and not c.can("operator", "gemini", 6443)


def test_client_namespaces_and_pods_are_chosen_by_values():
    c = Cluster(render(["--set-json", 'networkPolicy.proxy.clientNamespaceSelector={"matchLabels":{"gemini-proxy.io/client":"true"}}']))
    assert c.can("client-a", "proxy", 8080)
    assert not c.can("client-b", "proxy", 8080) and not c.can("other", "proxy", 8080)
    assert c.can("test", "proxy", 8080), "helm test keeps working"
    c = Cluster(render(["--set-json", 'networkPolicy.proxy.clientNamespaceSelector={"matchExpressions":[{"key":"kubernetes.io/metadata.name","operator":"In","values":["team-a","team-b"]}]}',
                        "--set-json", 'networkPolicy.proxy.clientPodSelector={"matchLabels":{"app":"client"}}']))
    assert c.can("client-a", "proxy", 8080) and c.can("client-b", "proxy", 8080)
    assert not c.can("other", "proxy", 8080) and not c.can("prometheus", "proxy", 8080)
    c = Cluster(render(["--set-json", 'networkPolicy.proxy.clientCidrs=["192.0.2.0/24"]',
                        "--set-json", 'networkPolicy.proxy.clientNamespaceSelector={"matchLabels":{"none":"x"}}']))
    assert c.can("external-redis", "proxy", 8080), "a CIDR outside the cluster"
    assert not c.can("client-a", "proxy", 8080)


def test_metrics_scrapers_are_chosen_by_values():
    c = Cluster(render(["--set-json", 'networkPolicy.metrics.namespaceSelector={"matchLabels":{"kubernetes.io/metadata.name":"team-b"}}',
                        "--set-json", 'networkPolicy.metrics.podSelector={"matchLabels":{"app":"client"}}']))
    assert c.can("client-b", "proxy", 9464) and c.can("client-b", "operator", 8081)
    assert not c.can("prometheus", "proxy", 9464) and not c.can("client-a", "operator", 8081)


def test_a_sidecar_reaches_redis_only_when_named():
    sel = '[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"research"}},"podSelector":{"matchLabels":{"app":"research-notebook"}}}]'
    c = Cluster(render(["--set-json", f"networkPolicy.redis.extraClientSelectors={sel}"]))
    assert c.can("sidecar", "redis", 6379)
    assert not c.can("client-a", "redis", 6379)
    assert c.can("proxy", "redis", 6379) and c.can("operator", "redis", 6379)


def test_external_redis_is_reached_on_its_ports_and_no_redis_policy_is_made():
    docs = render(["--set", "redis.bundled.enabled=false", "--set", "redis.external.url=rediss://redis.example:6380"])
    assert not [p for p in by_kind(docs, "NetworkPolicy") if p["metadata"]["name"].endswith("-redis")]
    c = Cluster(docs)
    for src in ["proxy", "operator"]:
        for port in [6380, 6379, 26379]:
            assert c.can(src, "external-redis", port), (src, port)
        assert not c.can(src, "external-redis", 5432)
    docs = render(["--set", "redis.bundled.enabled=false", "--set", "redis.external.cluster.urls={redis://c1:7000,redis://c2:7001,redis://c3}",
                   "--set-json", 'networkPolicy.externalRedisCidrs=["192.0.2.0/28"]', "--set-json", "networkPolicy.externalRedisPorts=[]"])
    c = Cluster(docs)
    for port in [7000, 7001, 6379]:
        assert c.can("proxy", "external-redis", port), port
    assert not c.can("proxy", "external-redis", 26379)
    assert not c.can("proxy", "kube-dns", 7000)


def test_extra_egress_and_switching_off():
    rule = '[{"to":[{"ipBlock":{"cidr":"10.0.0.0/8"}}],"ports":[{"port":4317,"protocol":"TCP"}]}]'
    docs = render(["--set-json", f"networkPolicy.proxy.extraEgress={rule}", "--set-json", f"networkPolicy.operator.extraEgress={rule}"])
    c = Cluster(docs)
    c.add(Endpoint("otel", "10.1.2.3"))
    assert c.can("proxy", "otel", 4317) and c.can("operator", "otel", 4317)
    assert not c.can("proxy", "otel", 4318)
    assert not by_kind(render(["--set", "networkPolicy.enabled=false"]), "NetworkPolicy")


@pytest.mark.parametrize("values", [[], ["--set", "redis.bundled.enabled=false", "--set", "redis.external.url=redis://r:6379"]],
                         ids=["bundled", "external"])
def test_every_policy_isolates_both_directions_and_selects_pods_of_this_release(values):
    docs = render(values)
    policies = by_kind(docs, "NetworkPolicy")
    assert {p["metadata"]["name"] for p in policies} >= {"gp-gemini-proxy-proxy", "gp-gemini-proxy-operator"}
    for p in policies:
        assert p["spec"]["policyTypes"] == ["Ingress", "Egress"]
        sel = p["spec"]["podSelector"]["matchLabels"]
        assert sel["app.kubernetes.io/instance"] == "gp" and sel["app.kubernetes.io/name"] == "gemini-proxy"
        # Every pod these select is one of this release's workloads.
        assert any(all(w["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())
                   for w in by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet")), p["metadata"]["name"]


def test_the_sidecar_example_gets_a_namespace_key_the_proxy_user_and_a_way_to_redis(tmp_path):
    """manifests/examples/sidecar.yaml: its derived state key, its Redis user, and the values its
    head comment gives: with them, the release's Redis policy admits the example's pod."""
    path = ROOT / "manifests" / "examples" / "sidecar.yaml"
    text = path.read_text()
    dep = next(d for d in yaml.safe_load_all(text) if d and d["kind"] == "Deployment")
    ns = dep["metadata"]["namespace"]
    pod = dep["spec"]["template"]
    sidecar = next(c for c in pod["spec"]["containers"] if c["name"] == "gemini-proxy")
    env = {e["name"]: e for e in sidecar["env"]}
    key_ref = env["GEMINI_PROXY_STATE_KEY"]["valueFrom"]["secretKeyRef"]
    assert key_ref == {"name": f"gemini-proxy-state-key-{ns}", "key": "key"}, "never the master key"
    assert env["GEMINI_PROXY_STATE_KEY_NAMESPACE"]["value"] == ns
    assert f"gemini-proxy derive-state-key --namespace {ns}" in text
    assert f"create secret generic gemini-proxy-state-key-{ns}" in text
    assert env["GEMINI_PROXY_REDIS_USERNAME"]["value"] == "proxy"
    pw_ref = env["GEMINI_PROXY_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert f"create secret generic {pw_ref['name']} --from-literal={pw_ref['key']}=" in text
    assert "proxy-password" in text
    # The values in the head comment, applied to the release.
    lines = text.splitlines()
    start = lines.index("#   networkPolicy:")
    block = []
    for line in lines[start:]:
        if not line.startswith("#   "):
            break
        block.append(line[4:])
    values = tmp_path / "values.yaml"
    values.write_text(json.dumps(yaml.safe_load("\n".join(block))))
    c = Cluster(render(["-f", str(values)]))
    c.add(Endpoint("example", "10.244.3.1", ns, pod["metadata"]["labels"]))
    assert c.can("example", "redis", 6379)
    c = Cluster(render([]))
    c.add(Endpoint("example", "10.244.3.1", ns, pod["metadata"]["labels"]))
    assert not c.can("example", "redis", 6379)
    # The URL it uses is the Service of a release named gemini-proxy in namespace gemini-proxy.
    out = helm("template", "gemini-proxy", str(CHART), "--namespace", "gemini-proxy").stdout
    svc_names = [d["metadata"]["name"] for d in yaml.safe_load_all(out) if d and d["kind"] == "Service"]
    host = env["GEMINI_PROXY_REDIS_URL"]["value"].split("//")[1].split(".")[0]
    assert host in svc_names
