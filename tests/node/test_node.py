"""The chart on a real node: `helm install --wait` on the one-node cluster of
scripts/k8s-node.sh (kubelet 1.20 on containerd, kube-proxy, the real API servers), with the
images built from the project's Dockerfiles; then what only pods show: probes, the Service,
a rollout under load, the operator's failover, uninstall and the security context as the
kernel sees it.

The scenarios run in order on one cluster (one helm release), each a test. They need
GEMINI_PROXY_NODE (the node.env that `scripts/k8s-node.sh start DIR` writes) and fail, never
skip, without it. Timings are printed (`pytest -s`) for the README and the notes.
"""

import base64
import json
import os
import pathlib
import re
import subprocess
import time

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
HELM = os.environ.get("HELM", "helm")
NS = "gemini-proxy"           # the release's namespace
RELEASE = "gemini-proxy"
APP_NS = "team-a"
MOCK_IP = "10.96.0.30"        # pinned ClusterIPs (the servers' range is 10.96.0.0/24)
REDIS_IP = "10.96.0.20"
STREAM_CHUNKS = 8             # the in-cluster mock's streams: 8 chunks, 250 ms apart
TOKEN = "node-test-client-token-0123456789"


def load_env():
    path = os.environ.get("GEMINI_PROXY_NODE")
    if not path or not os.path.exists(path):
        pytest.fail("GEMINI_PROXY_NODE must name the node.env of `bash scripts/k8s-node.sh start DIR` "
                    "(scripts/test.sh starts the node); these tests never skip")
    env = {}
    for line in pathlib.Path(path).read_text().splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            env[k] = v
    return env


ENV = None


def env():
    global ENV
    if ENV is None:
        ENV = load_env()
    return ENV


def run(cmd, input=None, check=True, timeout=300):
    r = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:6])} ... failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def kubectl(*args, input=None, check=True, timeout=300, direct=False):
    e = env()
    kc = e["KUBECONFIG_DIRECT"] if direct else e["KUBECONFIG"]
    return run([e["KUBECTL"], "--kubeconfig", kc, *args], input=input, check=check, timeout=timeout)


def kjson(*args, direct=False):
    return json.loads(kubectl(*args, "-o", "json", direct=direct).stdout)


def apply(obj_or_text, direct=False):
    text = obj_or_text if isinstance(obj_or_text, str) else yaml.safe_dump_all(
        obj_or_text if isinstance(obj_or_text, list) else [obj_or_text])
    return kubectl("apply", "-f", "-", input=text, direct=direct)


def helm(*args, timeout=600):
    return run([HELM, "--kubeconfig", env()["KUBECONFIG"], *args], timeout=timeout)


def wait_until(what, fn, timeout, interval=0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except AssertionError as e:   # a kubectl call that failed: try again
            last = e
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s (last: {str(last)[:2000]})")


def pods(ns, selector):
    return kjson("get", "pods", "-n", ns, "-l", selector)["items"]


def ready(pod):
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def component(name):
    return f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component={name}"


def host_pid(pod, container=None):
    """The host pid of a container's first process (PID 1 in its namespace), from containerd."""
    st = [c for c in pod["status"]["containerStatuses"] if container is None or c["name"] == container][0]
    cid = st["containerID"].split("://", 1)[1]
    e = env()
    out = run(["ctr", "--address", e["CONTAINERD_ADDRESS"], "-n", "k8s.io", "tasks", "ls"]).stdout
    for line in out.splitlines()[1:]:
        parts = line.split()
        if parts and parts[0] == cid:
            return int(parts[1])
    raise AssertionError(f"no task for container {cid}")


def proc_status(pid):
    return dict(line.split(":\t", 1) for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines()
                if ":\t" in line)


def service_ip(ns, name):
    return kjson("get", "service", name, "-n", ns)["spec"]["clusterIP"]


def app_pod(name, seconds, workers=4):
    """A bare pod running tests/node/app/load.py with the official Python SDK against the
    proxies' Service, by its ClusterIP (no DNS on this node)."""
    base = f"http://{service_ip(NS, RELEASE)}:8080"
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": APP_NS, "labels": {"app": "sdk-load"}},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
            "containers": [{
                "name": "app", "image": env()["APP_IMAGE"], "imagePullPolicy": "Never",
                "env": [
                    {"name": "GEMINI_BASE_URL", "value": base},
                    {"name": "GEMINI_TOKEN", "valueFrom": {"secretKeyRef": {"name": "app-tokens", "key": "billing-service"}}},
                    {"name": "LOAD_SECONDS", "value": str(seconds)},
                    {"name": "LOAD_WORKERS", "value": str(workers)},
                    {"name": "EXPECT_CHUNKS", "value": str(STREAM_CHUNKS)},
                ],
            }],
        },
    }


def pod_log(ns, name):
    return kubectl("logs", "-n", ns, name, check=False).stdout


def run_app(name, seconds, during=None, workers=4):
    """Runs an app pod to its end (calling `during()` once it is sending) and returns its summary."""
    kubectl("delete", "pod", name, "-n", APP_NS, "--ignore-not-found", "--wait=true")
    apply(app_pod(name, seconds, workers))
    if during is not None:
        wait_until(f"{name} sending", lambda: re.search(r'PROGRESS .*"calls": [1-9]', pod_log(APP_NS, name)),
                   120, interval=1)
        during()
    phase = wait_until(f"{name} finished",
                       lambda: (p := kjson("get", "pod", name, "-n", APP_NS)["status"].get("phase")) in
                       ("Succeeded", "Failed") and p, seconds + 180, interval=1)
    log = pod_log(APP_NS, name)
    m = re.search(r"^SUMMARY (.*)$", log, re.M)
    assert m, f"{name} ({phase}) printed no summary:\n{log[-3000:]}"
    summary = json.loads(m.group(1))
    print(f"\n{name}: {phase} {summary}")
    return phase, summary


# --- 1. helm install --wait -------------------------------------------------------------------

def test_helm_install_waits_until_every_pod_is_ready():
    e = env()
    # No provisioner on this node: a hostPath volume for the bundled Redis's claim, writable by
    # Redis's uid (fsGroup does not apply to hostPath).
    pv_dir = pathlib.Path(e["NODE_DIR"]) / "pv" / "redis"
    pv_dir.mkdir(parents=True, exist_ok=True)
    pv_dir.chmod(0o777)
    # The upstream: the mock Gemini API as a pod behind a Service (its ClusterIP pinned, so the
    # proxies' host allowlist can name it before it exists).
    mock = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gemini-mock"}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "mock-gemini", "namespace": "gemini-mock"},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "mock-gemini"}},
                  "template": {"metadata": {"labels": {"app": "mock-gemini"}},
                               "spec": {"containers": [{
                                   "name": "mock", "image": e["MOCK_IMAGE"], "imagePullPolicy": "Never",
                                   "args": ["0.0.0.0:8000"],
                                   "env": [{"name": "MOCK_STREAM_CHUNKS", "value": str(STREAM_CHUNKS)},
                                           {"name": "MOCK_STREAM_DELAY_MS", "value": "250"}],
                                   "readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 2}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "mock-gemini", "namespace": "gemini-mock"},
         "spec": {"clusterIP": MOCK_IP, "selector": {"app": "mock-gemini"},
                  "ports": [{"port": 8000, "targetPort": 8000}]}},
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "gp-node-redis"},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                  "persistentVolumeReclaimPolicy": "Retain",
                  "hostPath": {"path": str(pv_dir), "type": "Directory"}}},
    ]
    apply(mock)
    # The 1.20 server keeps a copy of the CRD only so that its discovery lists the group (what
    # kubectl needs to map GeminiKeyGroup to a resource); every request for the group goes to
    # the 1.36 server through the router, which validates with CEL.
    kubectl("apply", "--validate=false", "-f", str(ROOT / "crds" / "geminikeygroup.yaml"), direct=True)

    values = {
        "image": {"tag": "node-test", "pullPolicy": "Never"},
        "operator": {"replicas": 2},
        "proxy": {"allowedUpstreamHosts": [MOCK_IP]},
        "redis": {"bundled": {"service": {"clusterIP": REDIS_IP}}},
        # No cluster DNS here: the release's Redis by the name the chart gives it.
        "hostAliases": [{"ip": REDIS_IP, "hostnames": [f"{RELEASE}-redis"]}],
    }
    vfile = pathlib.Path(e["NODE_DIR"]) / "values.yaml"
    vfile.write_text(yaml.safe_dump(values))
    t0 = time.monotonic()
    helm("install", RELEASE, str(ROOT / "charts" / "gemini-proxy"), "--namespace", NS, "--create-namespace",
         "--values", str(vfile), "--wait", "--timeout", "300s")
    took = time.monotonic() - t0
    print(f"\nhelm install --wait: {took:.1f} s")

    expected = {"proxy": 2, "operator": 2, "redis": 1}
    for comp, n in expected.items():
        ps = pods(NS, component(comp))
        assert len(ps) == n, f"{comp}: {len(ps)} pods, expected {n}"
        for p in ps:
            assert p["status"]["phase"] == "Running", p["status"]
            assert ready(p), f"{p['metadata']['name']} not Ready: {p['status'].get('conditions')}"
            # Ready came from the kubelet running the pod's own readiness probe.
            for c in p["spec"]["containers"]:
                assert "readinessProbe" in c and "livenessProbe" in c, f"{comp}/{c['name']} lacks a probe"
    # 1.20 serves neither autoscaling/v2 nor policy/v1: the chart rendered neither.
    manifest = helm("get", "manifest", RELEASE, "-n", NS).stdout
    assert "kind: HorizontalPodAutoscaler" not in manifest and "kind: PodDisruptionBudget" not in manifest
    assert took < 240, f"helm install --wait took {took:.0f} s"


# --- 2. a GeminiKeyGroup, and an app with the official SDK through the Service ----------------

def test_an_sdk_app_gets_answers_through_the_service_and_the_status_shows_the_proxies():
    docs = list(yaml.safe_load_all((ROOT / "manifests" / "examples" / "group-with-keys.yaml").read_text()))
    for d in docs:
        if d["kind"] == "Secret" and d["metadata"]["name"] == "gemini-keys":
            d["stringData"] = {"key-1": "AQ.node-test-key-one-" + "a" * 40, "key-2": "AIza" + "b" * 35 + "node"}
        elif d["kind"] == "Secret":
            d["stringData"] = {"billing-service": TOKEN}
        else:
            d["spec"]["upstream"] = {"url": f"http://{MOCK_IP}:8000"}
    apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": APP_NS}})
    t0 = time.monotonic()
    apply(docs)
    wait_until("the group Ready", lambda: any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in kjson("get", "geminikeygroup", "gemini", "-n", APP_NS).get("status", {}).get("conditions", [])), 60)
    print(f"\ngroup Ready {time.monotonic() - t0:.1f} s after kubectl apply")

    phase, s = run_app("sdk-once", 0, workers=2)
    assert phase == "Succeeded" and s["ok"] >= 1 and s["streams_ok"] >= 1, s
    assert s["chunks"] == s["streams"] * STREAM_CHUNKS, s

    def reported():
        st = kjson("get", "geminikeygroup", "gemini", "-n", APP_NS)["status"]
        return st if st.get("proxies", 0) >= 2 and st["keys"]["active"] == 2 else None
    st = wait_until("the proxies' reports in the status", reported, 90, interval=2)
    print(f"status: proxies {st['proxies']}, keys {st['keys']}")


# --- 7. the security context, as the kernel sees it -------------------------------------------

def test_containers_run_as_the_chart_says_inside_the_pod():
    for comp in ("proxy", "operator"):
        p = pods(NS, component(comp))[0]
        pid = host_pid(p)
        st = proc_status(pid)
        assert st["Uid"].split() == ["65532"] * 4, st["Uid"]
        assert st["Gid"].split() == ["65532"] * 4, st["Gid"]
        for cap in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh"):
            assert int(st[cap], 16) == 0, f"{comp} {cap} {st[cap]}"
        assert st["NoNewPrivs"] == "1", st["NoNewPrivs"]
        assert st["Seccomp"] == "2", st["Seccomp"]       # filtering: RuntimeDefault
        root = [line for line in pathlib.Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
                if line.split()[4] == "/"][0]
        assert "ro" in root.split()[5].split(","), f"{comp} root mount: {root}"
        # The binary wrote nothing anywhere: a write to its root fails (read-only file system).
        print(f"\n{comp}: uid/gid 65532, no capabilities, no_new_privs, seccomp filter, root {root.split()[5]}")

    # The proxy's allocator re-exec: the running process has MIMALLOC_ALLOW_THP=0 and THP off.
    p = pods(NS, component("proxy"))[0]
    pid = host_pid(p)
    environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"MIMALLOC_ALLOW_THP=0" in environ
    assert proc_status(pid)["THP_enabled"] == "0"
    # CPU pinning: `auto` pins only when the CPUs are the process's own; a pod that may run on
    # every CPU of its node shares them, so no thread is pinned.
    online = pathlib.Path("/sys/devices/system/cpu/online").read_text().strip()
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        assert proc_status(f"{pid}/task/{task.name}")["Cpus_allowed_list"] == online
    log = pod_log(NS, p["metadata"]["name"])
    assert "pinned_cpus" in log, log[-2000:]


# --- 3. a rollout under load ------------------------------------------------------------------

def test_a_rollout_under_load_fails_no_request_and_breaks_no_stream():
    before = {p["metadata"]["name"] for p in pods(NS, component("proxy"))}

    def restart():
        t0 = time.monotonic()
        kubectl("rollout", "restart", f"deployment/{RELEASE}-proxy", "-n", NS)
        kubectl("rollout", "status", f"deployment/{RELEASE}-proxy", "-n", NS, "--timeout=240s", timeout=260)
        print(f"\nrollout restart done in {time.monotonic() - t0:.1f} s")

    phase, s = run_app("sdk-rollout", 75, during=restart, workers=4)
    # Every old pod is gone or on its way out (deleted, serving no more); the new ones serve.
    now = pods(NS, component("proxy"))
    lingering = [p for p in now if p["metadata"]["name"] in before]
    for p in lingering:
        assert p["metadata"].get("deletionTimestamp") and not ready(p), f"old pod still serving: {p['status']}"
    new = [p for p in now if p["metadata"]["name"] not in before]
    assert len(new) == 2 and all(ready(p) for p in new), [p["metadata"]["name"] for p in now]
    if lingering:
        t0 = time.monotonic()
        wait_until("the old pods' objects removed", lambda: not any(
            p["metadata"]["name"] in before for p in pods(NS, component("proxy"))), 120, interval=1)
        print(f"old pods' objects removed {time.monotonic() - t0:.1f} s after the load ended")
    assert s["failed"] == 0 and s["streams_broken"] == 0, s
    assert phase == "Succeeded", s
    assert s["calls"] >= 50 and s["streams"] >= 20, f"too little load to mean anything: {s}"


# --- 4. probes mean something -----------------------------------------------------------------

def test_a_proxy_without_its_store_stays_ready_and_serves():
    kubectl("scale", f"statefulset/{RELEASE}-redis", "-n", NS, "--replicas=0")
    wait_until("Redis gone", lambda: not pods(NS, component("redis")), 60)
    time.sleep(15)   # three readiness periods
    ps = pods(NS, component("proxy"))
    assert ps and all(ready(p) for p in ps), [p["status"].get("conditions") for p in ps]
    phase, s = run_app("sdk-no-store", 0, workers=2)
    assert phase == "Succeeded", s
    kubectl("scale", f"statefulset/{RELEASE}-redis", "-n", NS, "--replicas=1")
    wait_until("Redis back", lambda: (rp := pods(NS, component("redis"))) and all(ready(p) for p in rp), 120)


def test_operators_are_ready_leading_or_standing_by():
    ops = wait_until("both operators Ready", lambda: (o := pods(NS, component("operator"))) and len(o) == 2
                     and all(ready(p) for p in o) and o, 120)
    lease = kjson("get", "lease", "-n", NS, "--field-selector", f"metadata.name={RELEASE}-operator", direct=True)
    holders = [item["spec"].get("holderIdentity") for item in lease["items"]]
    print(f"\nlease holders: {holders}; operators {[p['metadata']['name'] for p in ops]}")
    assert any(h in {p["metadata"]["name"] for p in ops} for h in holders), holders


def test_a_stopped_proxy_is_restarted_by_its_liveness_probe():
    p = pods(NS, component("proxy"))[0]
    name = p["metadata"]["name"]
    restarts = p["status"]["containerStatuses"][0]["restartCount"]
    pid = host_pid(p)
    os.kill(pid, 19)   # SIGSTOP: the process holds its sockets but answers nothing
    t0 = time.monotonic()
    try:
        wait_until("a restart by the liveness probe", lambda: kjson("get", "pod", name, "-n", NS)["status"]
                   ["containerStatuses"][0]["restartCount"] > restarts, 180, interval=1)
    finally:
        try:
            os.kill(pid, 18)   # SIGCONT, in case it was not killed
        except ProcessLookupError:
            pass
    print(f"\nSIGSTOPped proxy restarted after {time.monotonic() - t0:.1f} s")
    wait_until("the restarted proxy Ready", lambda: ready(kjson("get", "pod", name, "-n", NS)), 60)


# --- 5. operator failover ---------------------------------------------------------------------

def test_the_operators_fail_over_when_the_leaders_pod_is_deleted():
    lease = kjson("get", "lease", f"{RELEASE}-operator", "-n", NS, direct=True)
    leader = lease["spec"]["holderIdentity"]
    duration = int(lease["spec"].get("leaseDurationSeconds", 15))
    kubectl("delete", "pod", leader, "-n", NS, "--wait=false")
    t0 = time.monotonic()
    group = {"apiVersion": "gemini-proxy.io/v1alpha1", "kind": "GeminiKeyGroup",
             "metadata": {"name": "after-failover", "namespace": APP_NS},
             "spec": {"upstream": {"url": f"http://{MOCK_IP}:8000"},
                      "keys": [{"secret": "gemini-keys", "entry": "key-1"}],
                      "access": {"mode": "Token", "clientSecretRefs": [{"name": "app-tokens"}]}}}
    apply(group)
    wait_until("the new group Ready", lambda: any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in kjson("get", "geminikeygroup", "after-failover", "-n", APP_NS).get("status", {}).get("conditions", [])),
        duration + 30, interval=0.5)
    took = time.monotonic() - t0
    new_leader = kjson("get", "lease", f"{RELEASE}-operator", "-n", NS, direct=True)["spec"]["holderIdentity"]
    print(f"\nleader {leader} deleted; new group Ready after {took:.1f} s (lease {duration} s); leader now {new_leader}")
    assert new_leader != leader
    assert took < duration + 10

    # No Event twice: each of the operator's Events (object, reason, note) appears once, though
    # two leaders wrote them and Redis restarted in between (its AOF kept the store, so no key
    # was added again).
    events = [ev for ev in kjson("get", "events.v1.events.k8s.io", "-n", APP_NS, direct=True)["items"]
              if ev.get("reportingController") == "gemini-proxy-operator"]
    seen = {}
    for ev in events:
        k = (ev.get("regarding", {}).get("uid"), ev.get("regarding", {}).get("name"), ev.get("reason"), ev.get("note"))
        seen[k] = seen.get(k, 0) + 1 + max(0, (ev.get("series") or {}).get("count", 1) - 1)
    twice = {k: n for k, n in seen.items() if n > 1}
    assert not twice, twice
    assert any(k[2] == "KeyAdded" and k[1] == "after-failover" for k in seen), seen


# --- 6. uninstall -----------------------------------------------------------------------------

def test_helm_uninstall_leaves_no_stuck_group_and_no_pod():
    kubectl("delete", "pod", "-n", APP_NS, "-l", "app=sdk-load", "--wait=true")
    helm("uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "180s")
    for g in kjson("get", "geminikeygroups", "-n", APP_NS)["items"]:
        assert not g["metadata"].get("finalizers"), g["metadata"]
    kubectl("delete", "geminikeygroups", "--all", "-n", APP_NS, "--timeout=30s", timeout=60)
    assert not kjson("get", "geminikeygroups", "-n", APP_NS)["items"]
    wait_until("no pod of the release left", lambda: not kjson("get", "pods", "-n", NS)["items"], 120)
