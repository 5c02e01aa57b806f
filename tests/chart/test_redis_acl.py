"""The bundled Redis's authentication, for real: the Redis container's start script is taken from
the rendered chart and run (with the passwords of the rendered Secret) in front of a real
redis-server on a loopback port; then redis-cli, as each ACL user, checks what it may and may
not do, with the commands and the Lua scripts the store really uses
(keystore/src/redis_store/scripts.rs). A missing redis-server or redis-cli fails, never skips."""

import base64
import hashlib
import json
import os
import pathlib
import re
import shutil
import socket
import stat
import subprocess
import time

import pytest

from test_chart import CHART, ROOT, by_kind, helm, render


def tool(name):
    path = shutil.which(name)
    assert path, f"{name} is needed (Debian: apt-get install redis-server redis-tools)"
    return path


def rust_script(name):
    """A Lua script of the store, as the Rust code sends it."""
    text = (ROOT / "keystore" / "src" / "redis_store" / "scripts.rs").read_text()
    m = re.search(r'pub const ' + name + r': &str = r#"(.*?)"#;', text, re.S)
    assert m, f"{name} not found in scripts.rs"
    return m.group(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_parts(docs):
    sts = next(d for d in by_kind(docs, "StatefulSet") if d["metadata"]["name"].endswith("-redis"))
    container = sts["spec"]["template"]["spec"]["containers"][0]
    secret = next(d for d in by_kind(docs, "Secret") if d["metadata"]["name"].endswith("-redis-auth"))
    return sts, container, secret


class Redis:
    def __init__(self, port, passwords):
        self.port = port
        self.passwords = passwords

    def cli(self, user, *args, password=None):
        """redis-cli as `user` (None: no AUTH); its output, stripped (redis-cli exits 0 on error
        replies: the text tells)."""
        cmd = [tool("redis-cli"), "-h", "127.0.0.1", "-p", str(self.port)]
        env = dict(os.environ)
        env.pop("REDISCLI_AUTH", None)
        if user is not None:
            cmd += ["--user", user]
            env["REDISCLI_AUTH"] = password if password is not None else self.passwords[user]
        r = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=env, timeout=10)
        return (r.stdout + r.stderr).strip()

    def session(self, user, *commands):
        """Commands (lists of arguments) on one connection as `user` (redis-cli reading them
        from its stdin), e.g. MULTI ... EXEC; redis-cli's output lines."""
        cmd = [tool("redis-cli"), "-h", "127.0.0.1", "-p", str(self.port), "--user", user]
        env = dict(os.environ, REDISCLI_AUTH=self.passwords[user])
        text = "".join(" ".join(json.dumps(str(a)) for a in c) + "\n" for c in commands)
        r = subprocess.run(cmd, input=text, capture_output=True, text=True, env=env, timeout=10)
        out = (r.stdout + r.stderr).strip().splitlines()
        assert not [l for l in out if re.match(r"^(\(error\) )?(NOPERM|NOAUTH|ERR|WRONGPASS|WRONGTYPE|EXECABORT)", l)
                    or "AUTH failed" in l], f"{user}: {commands} -> {out}"
        return out

    def ok(self, user, *args):
        out = self.cli(user, *args)
        assert not re.match(r"^(NOPERM|NOAUTH|ERR|WRONGPASS|WRONGTYPE)", out) and "AUTH failed" not in out, \
            f"{user}: {' '.join(map(str, args))} -> {out}"
        return out

    def noperm(self, user, *args):
        out = self.cli(user, *args)
        assert out.startswith("NOPERM"), f"{user} may: {' '.join(map(str, args))} -> {out}"

    def subscribe(self, user, channel):
        """SUBSCRIBE as `user` over RESP (redis-cli would block): the first reply line."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            pw = self.passwords[user]
            s.sendall(resp("AUTH", user, pw) + resp("SUBSCRIBE", channel))
            data = b""
            deadline = time.time() + 5
            while data.count(b"\r\n") < 2 and time.time() < deadline:
                data += s.recv(4096)
            lines = data.split(b"\r\n")
            assert lines[0] == b"+OK", data
            return lines[1].decode()


def refused_in_script(out):
    """An ACL refusal from inside a script (Redis 7.0 words it "ERR The user executing the
    script can't access ...", later ones with NOPERM)."""
    return bool(re.search(r"NOPERM|user executing the script can't|no permissions", out, re.I))


def resp(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def container_env(container, secret, acl_file):
    """The Redis container's environment: plain values as rendered, secretKeyRefs from the
    rendered Secret; the ACL file moved to `acl_file`."""
    env = {"PATH": os.environ["PATH"]}
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"], ref
            env[e["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    assert env["REDIS_ACL_FILE"].startswith("/acl/")
    env["REDIS_ACL_FILE"] = str(acl_file)
    return env


def start_redis(container, env, args, log_path):
    """The rendered start script (container's command) with `args` for redis-server, logging
    to `log_path` (appended); returns the process once the port in `args` is listened on."""
    tool("redis-server")
    command = container["command"]
    assert command[:2] == ["sh", "-c"] and command[3] == "redis-server", command
    port = int(args[args.index("--port") + 1])
    with open(log_path, "a") as log:
        proc = subprocess.Popen(command + [str(a) for a in args], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 10
    try:
        while True:
            assert proc.poll() is None, "redis did not start:\n" + log_path.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return proc
            except OSError:
                assert time.time() < deadline, "redis did not listen:\n" + log_path.read_text()
                time.sleep(0.05)
    except BaseException:
        stop_redis(proc)
        raise


def stop_redis(proc):
    """SIGTERM, as the kubelet does: redis-server shuts down cleanly (and fsyncs its AOF)."""
    if proc.poll() is None:
        proc.terminate()
    assert proc.wait(10) is not None


@pytest.fixture(scope="module", params=["gemini-proxy:", "acme.gp-1_"], ids=["default-prefix", "other-prefix"])
def redis(request, tmp_path_factory):
    """The rendered Redis container's start script, run in front of a real redis-server."""
    prefix = request.param
    docs = render(["--set", f"redis.keyPrefix={prefix}"])
    _, container, secret = redis_parts(docs)
    passwords = {u: base64.b64decode(secret["data"][f"{u}-password"]).decode() for u in ["operator", "proxy"]}
    tmp = tmp_path_factory.mktemp("redis")
    acl_file = tmp / "acl" / "users.acl"
    acl_file.parent.mkdir()
    env = container_env(container, secret, acl_file)
    port = free_port()
    proc = start_redis(container, env, ["--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no",
                                        "--dir", tmp], tmp / "redis.log")
    r = Redis(port, passwords)
    r.prefix, r.acl_file, r.container, r.secret, r.env = prefix, acl_file, container, secret, env
    try:
        yield r
    finally:
        stop_redis(proc)


def test_passwords_are_generated_kept_and_never_in_the_pod_spec(redis):
    for user in ["operator", "proxy"]:
        assert re.fullmatch(r"[A-Za-z0-9]{40}", redis.passwords[user]), user
    assert redis.passwords["operator"] != redis.passwords["proxy"]
    assert redis.secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    template = (CHART / "templates" / "redis-auth-secret.yaml").read_text()
    assert "lookup" in template, "the passwords must be looked up and kept on upgrade"
    # Passwords only through secretKeyRef: nothing in clear in command, args or env values.
    spec_text = repr(redis.container)
    for pw in redis.passwords.values():
        assert pw not in spec_text
    for e in redis.container["env"]:
        if "PASSWORD" in e["name"] or e["name"] == "REDISCLI_AUTH":
            assert set(e) == {"name", "valueFrom"}, e


def test_the_acl_file_holds_hashes_only_and_is_private(redis):
    text = redis.acl_file.read_text()
    mode = stat.S_IMODE(redis.acl_file.stat().st_mode)
    assert mode == 0o600, oct(mode)
    for user, pw in redis.passwords.items():
        assert pw not in text
        assert f"user {user} reset on #{hashlib.sha256(pw.encode()).hexdigest()} " in text
    # `default` is on for the AOF's replay (test_transactions_survive_a_restart_with_the_aof),
    # with every right, and a password nobody knows: a new random one at each start, of which
    # only the hash is kept.
    default = [l for l in text.splitlines() if l.startswith("user default ")]
    assert len(default) == 1 and re.fullmatch(r"user default reset on #[0-9a-f]{64} ~\* &\* \+@all", default[0]), default
    default_hash = default[0].split()[4][1:]
    known = [hashlib.sha256(pw.encode()).hexdigest() for pw in list(redis.passwords.values()) + [""]]
    assert default_hash not in known
    script = redis.container["command"][2]
    assert "DEFAULT_PASSWORD=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n')" in script
    assert '[ "${#DEFAULT_PASSWORD}" -eq 64 ] ||' in script and "unset DEFAULT_PASSWORD" in script
    assert script.count("DEFAULT_PASSWORD") == 4 and "export" not in script, script
    # redis-server itself does not keep the passwords in its environment.
    assert "unset REDIS_OPERATOR_PASSWORD REDIS_PROXY_PASSWORD REDISCLI_AUTH" in script


def raw(port, *commands):
    """Commands on one unauthenticated connection, over RESP: the replies' first lines."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"".join(resp(*c) for c in commands))
        data = b""
        deadline = time.time() + 5
        while data.count(b"\r\n") < len(commands) and time.time() < deadline:
            data += s.recv(4096)
    return [l.decode() for l in data.split(b"\r\n")[:len(commands)]]


def test_default_user_and_wrong_passwords_are_refused(redis):
    # A new connection is not logged in as `default` (on, but with a password nobody knows).
    assert redis.cli(None, "PING").startswith("NOAUTH")
    assert redis.cli(None, "GET", redis.prefix + "aff:x").startswith("NOAUTH")
    assert redis.cli(None, "ACL", "WHOAMI").startswith("NOAUTH")
    assert redis.cli(None, "SET", "x", "1").startswith("NOAUTH")
    assert redis.cli(None, "EVAL", "return 1", 0).startswith("NOAUTH")
    assert "WRONGPASS" in redis.cli("default", "PING", password="nopass")
    assert "WRONGPASS" in redis.cli("default", "PING", password="")
    default_hash = next(l for l in redis.acl_file.read_text().splitlines() if l.startswith("user default ")).split()[4]
    for guess in [redis.passwords["operator"], redis.passwords["proxy"], default_hash, default_hash[1:]]:
        assert "WRONGPASS" in redis.cli("default", "PING", password=guess)
    # AUTH with the password alone is AUTH default; HELLO's AUTH too; and nothing gets through after.
    replies = raw(redis.port, ["AUTH", "anything"], ["AUTH", "default", "anything"], ["AUTH", "default", ""],
                  ["HELLO", "3", "AUTH", "default", "anything"], ["PING"], ["GET", redis.prefix + "aff:x"])
    assert [r.split()[0] for r in replies] == ["-WRONGPASS"] * 4 + ["-NOAUTH"] * 2, replies
    assert "WRONGPASS" in redis.cli("proxy", "PING", password=redis.passwords["operator"])
    assert "WRONGPASS" in redis.cli("operator", "PING", password=redis.passwords["proxy"])


def test_transactions_survive_a_restart_with_the_aof(tmp_path):
    """The chart's Redis keeps its data in its AOF (--appendonly yes) and replays it at start.
    The replaying client is the `default` user, and EXEC re-checks the ACL for the queued
    commands (redis/redis#14541): with `default` off and without permissions, every MULTI/EXEC
    of the AOF (the store's scripts are written there as one too) is refused at each restart and
    its writes lost. So write as the store does, restart on the same data with the same start
    script, and find everything back."""
    docs = render([])
    sts, container, secret = redis_parts(docs)
    passwords = {u: base64.b64decode(secret["data"][f"{u}-password"]).decode() for u in ["operator", "proxy"]}
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "acl").mkdir()
    acl_file = tmp_path / "acl" / "users.acl"
    env = container_env(container, secret, acl_file)
    # The rendered args (the AOF on, no RDB snapshots), with the data volume here.
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes" and args[args.index("--dir") + 1] == "/data", args
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/data")
    assert mount["name"] in {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}, mount
    port = free_port()
    args = [str(data) if a == "/data" else a for a in args] + ["--bind", "127.0.0.1", "--port", port]
    log = tmp_path / "redis.log"
    r = Redis(port, passwords)
    r.prefix = "gemini-proxy:"
    k = keys(r.prefix)
    k2 = keys(r.prefix, "ns/h")
    publish, transition = rust_script("PUBLISH_GROUP"), rust_script("TRANSITION")

    def contents():
        def read(cmd):
            lines = r.ok("operator", *cmd).splitlines()
            # Neither a set's nor a hash's order need be kept by a reload.
            return dict(zip(lines[::2], lines[1::2])) if cmd[0] == "HGETALL" else sorted(lines)
        return {name: read(cmd) for name, cmd in {
            "group": ["HGETALL", k["group"]], "keys": ["HGETALL", k["keys"]], "groups": ["SMEMBERS", k["groups"]],
            "group2": ["HGETALL", k2["group"]], "keys2": ["HGETALL", k2["keys"]],
            "usage": ["HGETALL", k["usage_m"]], "usage2": ["HGETALL", k2["usage_m"]], "audit": ["XLEN", k["audit"]],
            "aff": ["GET", k["aff"]], "plain": ["GET", r.prefix + "plain"],
            "multi": ["MGET", r.prefix + "multi:a", r.prefix + "multi:b"]}.items()}

    proc = start_redis(container, env, args, log)
    try:
        first_acl = acl_file.read_text()
        # Plain writes.
        r.ok("operator", "SET", r.prefix + "plain", "1")
        r.ok("operator", "SADD", k["groups"], "ns/g", "ns/h")
        r.ok("proxy", "SET", k["aff"], "{}", "EX", 3600)
        # Transactions, by hand.
        r.session("operator", ["MULTI"], ["SET", r.prefix + "multi:a", "a"], ["SET", r.prefix + "multi:b", "b"],
                  ["HSET", k2["group"], "version", "1"], ["EXPIRE", r.prefix + "multi:a", 86400], ["EXEC"])
        r.session("proxy", ["MULTI"], ["HINCRBY", k["usage_m"], "k:key-1:req", 2], ["EXPIRE", k["usage_m"], 7200],
                  ["XADD", k["audit"], "MAXLEN", "~", 1000, "*", "e", "{}"], ["EXEC"])
        r.session("proxy", ["MULTI"], ["HINCRBY", k2["usage_m"], "k:key-2:req", 3], ["EXPIRE", k2["usage_m"], 7200],
                  ["EXEC"])
        # The store's scripts: the operator publishes snapshots (a transaction in the AOF), the
        # proxy changes a key's state.
        for g, fp in [(k, "fp-1"), (k2, "fp-2")]:
            r.ok("operator", "EVAL", publish, 2, g["group"], g["keys"], fp, "sealed-" + fp, g["events"],
                 "ns/g", "key-1")
        t = '{"kind":"cool","untilMs":9999999999999,"reason":"rate","model":"m"}'
        r.ok("proxy", "EVAL", transition, 1, k["keys"], 1, t, "proxy-1", k["events"], "ns/g", "key-1")
        before = contents()
    finally:
        stop_redis(proc)
    assert before["group"]["data"] == "sealed-fp-1" and before["group2"]["data"] == "sealed-fp-2", before
    assert "9999999999999" in before["keys"]["key-1"] and before["groups"] == ["ns/g", "ns/h"], before
    assert before["multi"] == ["a", "b"] and "version" in before["group2"] and before["audit"] == ["1"], before
    aof = "".join(f.read_text(errors="replace") for f in (data / "appendonlydir").glob("*.aof"))
    assert aof.count("MULTI") >= 5 and aof.count("EXEC") >= 5, "the test should replay transactions"

    proc = start_redis(container, env, args, log)
    try:
        # The server answers once the AOF is loaded.
        deadline = time.time() + 10
        while "LOADING" in (out := r.cli("operator", "PING")):
            assert time.time() < deadline, out
            time.sleep(0.05)
        after = contents()
        # A new ACL file with a new, unknown password for `default`; the clients' unchanged.
        second_acl = acl_file.read_text()
        # Still nobody gets in as `default`.
        assert r.cli(None, "GET", r.prefix + "plain").startswith("NOAUTH")
        assert "WRONGPASS" in r.cli("default", "GET", r.prefix + "plain", password="")
        r.noperm("proxy", "HSET", k["group"], "data", "forged")
    finally:
        stop_redis(proc)
    assert after == before
    text = log.read_text()
    assert text.count("DB loaded from append only file") == 1, text
    assert not re.search(r"NOPERM|CRITICAL|Bad file format|Unrecoverable|AOF.*(truncated|corrupt)", text, re.I), text
    default_lines = [l for t in (first_acl, second_acl) for l in t.splitlines() if l.startswith("user default ")]
    assert len(default_lines) == 2 and default_lines[0] != default_lines[1], default_lines
    assert first_acl.replace(default_lines[0], "") == second_acl.replace(default_lines[1], "")


def test_readiness_probe_pings_with_auth(redis):
    probe = redis.container["readinessProbe"]["exec"]["command"]
    assert probe[:2] == ["sh", "-c"] and "redis-cli" in probe[2], probe
    cmd = probe[2].replace("redis-cli", f"redis-cli -h 127.0.0.1 -p {redis.port}")
    env = dict(os.environ, REDISCLI_AUTH=redis.env["REDISCLI_AUTH"])
    assert subprocess.run(["sh", "-c", cmd], env=env).returncode == 0
    env["REDISCLI_AUTH"] = "wrong"
    assert subprocess.run(["sh", "-c", cmd], env=env, capture_output=True).returncode != 0


def keys(prefix, group="ns/g"):
    g = f"{prefix}{{g:{group}}}"
    return {"group": f"{g}:group", "keys": f"{g}:keys", "health": f"{g}:health", "audit": f"{g}:audit",
            "usage_m": f"{g}:usage:m:29000000", "usage_d": f"{g}:usage:d:2025-01-01",
            "rate_s": f"{g}:rate:s:174000000", "rate_d": f"{g}:rate:d:2025-01-01",
            "groups": f"{prefix}{{index}}:groups", "proxies": f"{prefix}{{index}}:proxies",
            "aff": f"{prefix}aff:files/x", "events": f"{prefix}events"}


def proxy_work(r, user):
    """What a proxy does in the store (keystore/src/redis_store/mod.rs), as `user`."""
    k = keys(r.prefix)
    r.ok(user, "HSET", k["keys"], "key-1", '{"updatedMs":1}')
    assert "key-1" in r.ok(user, "HGETALL", k["keys"])
    r.ok(user, "HSET", k["health"], "proxy-1", "{}")
    r.ok(user, "HGETALL", k["health"])
    r.ok(user, "HDEL", k["health"], "proxy-1")
    for w in ["usage_m", "usage_d", "rate_s", "rate_d"]:
        r.ok(user, "HINCRBY", k[w], "k:key-1:req", 1)
        r.ok(user, "HSET", k[w], "p:proxy-1", "k\tkey-1\t1\t2")
        r.ok(user, "EXPIRE", k[w], 7200)
        r.ok(user, "HGETALL", k[w])
    r.ok(user, "XADD", k["audit"], "MAXLEN", "~", 1000, "*", "e", "{}")
    r.ok(user, "XRANGE", k["audit"], "-", "+", "COUNT", 10)
    assert r.ok(user, "SET", k["aff"], "{}", "EX", 60) == "OK"
    r.ok(user, "PSETEX", k["aff"], 60000, "{}")
    assert r.ok(user, "GET", k["aff"]) == "{}"
    r.ok(user, "DEL", k["aff"])
    r.ok(user, "HSET", k["proxies"], "proxy-1", 99999999999999)
    r.ok(user, "HGETALL", k["proxies"])
    r.ok(user, "HDEL", k["proxies"], "proxy-1")
    r.ok(user, "PUBLISH", k["events"], "{}")
    assert r.subscribe(user, k["events"]) == "*3"
    # The transition script, as redis-rs runs it: EVALSHA, SCRIPT LOAD on NOSCRIPT, EVALSHA.
    transition = rust_script("TRANSITION")
    sha = hashlib.sha1(transition.encode()).hexdigest()
    t = '{"kind":"cool","untilMs":9999999999999,"reason":"rate","model":"m"}'
    args = [1, k["keys"], 1, t, "proxy-1", k["events"], "ns/g", "key-1"]
    out = r.cli(user, "EVALSHA", sha, *args)
    assert out.startswith("NOSCRIPT") or "key-1" in out, out
    assert r.ok(user, "SCRIPT", "LOAD", transition) == sha
    r.ok(user, "EVALSHA", sha, *args)
    recover = '{"kind":"recover"}'
    assert "key-1" in r.ok(user, "EVAL", transition, 1, k["keys"], 2, recover, "proxy-2", k["events"], "ns/g", "key-1")
    # Reads of what the operator writes.
    r.ok(user, "HGETALL", k["group"])
    r.ok(user, "HGET", k["group"], "version")
    r.ok(user, "SMEMBERS", k["groups"])


def operator_only_work(r, user):
    """What only the operator does: publish and remove groups."""
    k = keys(r.prefix)
    publish = rust_script("PUBLISH_GROUP")
    out = r.ok(user, "EVAL", publish, 2, k["group"], k["keys"], "fp-1", "data", k["events"], "ns/g", "key-1")
    assert out.split() == ["1", "1"] or out.split()[1] in {"0", "1"}, out
    r.ok(user, "SADD", k["groups"], "ns/g")
    r.ok(user, "PERSIST", k["audit"])
    r.ok(user, "EXPIRE", k["audit"], 86400)
    r.ok(user, "HSET", k["group"], "x", "1")
    r.ok(user, "SREM", k["groups"], "ns/g")
    r.ok(user, "DEL", k["group"], k["keys"], k["health"])


def test_operator_may_do_everything_under_the_prefix(redis):
    operator_only_work(redis, "operator")
    proxy_work(redis, "operator")
    assert redis.subscribe("operator", redis.prefix + "anything") == "*3"


def test_proxy_may_do_its_work_and_read_snapshots(redis):
    # A snapshot and the index, as the operator writes them, for the proxy to read.
    k = keys(redis.prefix)
    redis.ok("operator", "EVAL", rust_script("PUBLISH_GROUP"), 2, k["group"], k["keys"], "fp-2", "sealed",
             k["events"], "ns/g", "key-1")
    redis.ok("operator", "SADD", k["groups"], "ns/g")
    proxy_work(redis, "proxy")
    assert "sealed" in redis.ok("proxy", "HGETALL", k["group"])
    assert "ns/g" in redis.ok("proxy", "SMEMBERS", k["groups"])


def test_proxy_cannot_write_snapshots_or_the_group_index(redis):
    k = keys(redis.prefix)
    p = "proxy"
    redis.noperm(p, "HSET", k["group"], "data", "forged")
    redis.noperm(p, "HINCRBY", k["group"], "version", 1)
    redis.noperm(p, "HDEL", k["group"], "data")
    redis.noperm(p, "DEL", k["group"])
    redis.noperm(p, "UNLINK", k["group"])
    redis.noperm(p, "EXPIRE", k["group"], 1)
    redis.noperm(p, "RENAME", k["keys"], k["group"])
    redis.noperm(p, "COPY", k["keys"], k["group"], "REPLACE")
    redis.noperm(p, "SADD", k["groups"], "evil/g")
    redis.noperm(p, "SREM", k["groups"], "ns/g")
    redis.noperm(p, "DEL", k["groups"])
    # The operator's publish script, declaring the snapshot key: refused before it runs.
    publish = rust_script("PUBLISH_GROUP")
    redis.noperm(p, "EVAL", publish, 2, k["group"], k["keys"], "fp-x", "forged", k["events"], "ns/g", "key-1")
    sha = redis.ok("operator", "SCRIPT", "LOAD", publish)
    redis.noperm(p, "EVALSHA", sha, 2, k["group"], k["keys"], "fp-x", "forged", k["events"], "ns/g", "key-1")
    # A script that declares an allowed key but writes the snapshot anyway: refused inside.
    out = redis.cli(p, "EVAL", "return redis.call('HSET', ARGV[1], 'data', 'forged')", 1, k["keys"], k["group"])
    assert refused_in_script(out), out
    out = redis.cli(p, "EVAL", "return redis.call('SADD', ARGV[1], 'evil/g')", 0, k["groups"])
    assert refused_in_script(out), out
    # Nothing of that went through.
    assert "forged" not in redis.ok("operator", "HGETALL", k["group"])
    assert "evil/g" not in redis.ok("operator", "SMEMBERS", k["groups"])


def test_both_users_stay_inside_the_prefix_and_off_admin_commands(redis):
    outside = ["other:{g:ns/g}:keys", redis.prefix[:-1], redis.prefix[:-1] + "x:aff:files/x"]
    for user in ["operator", "proxy"]:
        for key in outside:
            redis.noperm(user, "SET", key, "1")
            redis.noperm(user, "GET", key)
            redis.noperm(user, "DEL", key)
        redis.noperm(user, "PUBLISH", "other-events", "{}")
        assert redis.subscribe(user, "other-events").startswith("-NOPERM")
        for cmd in [["FLUSHALL"], ["FLUSHDB"], ["CONFIG", "GET", "*"], ["CONFIG", "SET", "appendonly", "no"],
                    ["KEYS", "*"], ["ACL", "LIST"], ["ACL", "SETUSER", "x", "on"], ["ACL", "GETUSER", "proxy"],
                    ["SHUTDOWN", "NOSAVE"], ["MONITOR"], ["CLIENT", "KILL", "TYPE", "normal"], ["SCRIPT", "FLUSH"],
                    ["SCRIPT", "KILL"], ["FUNCTION", "FLUSH"], ["SWAPDB", 0, 1], ["SAVE"], ["BGREWRITEAOF"]]:
            redis.noperm(user, *cmd)
    # The proxy's channel is the events channel alone.
    redis.noperm("proxy", "PUBLISH", redis.prefix + "events2", "{}")
    assert redis.subscribe("proxy", redis.prefix + "other").startswith("-NOPERM")


def test_key_prefix_is_checked_where_it_goes_into_acl_patterns(tmp_path):
    values = tmp_path / "values.yaml"
    for bad in ["a*b", "a?", "x[y]", "sp ace", "back\\slash", "new\nline", "a$b"]:
        values.write_text(json.dumps({"redis": {"keyPrefix": bad}}))
        r = helm("template", "gp", str(CHART), "-f", str(values), check=False)
        assert r.returncode != 0, bad
        assert "redis.keyPrefix" in r.stderr and "letters, digits" in r.stderr, r.stderr
    # With an external Redis the chart writes no ACL: only the schema's rule (no braces) holds.
    r = helm("template", "gp", str(CHART), "--set", "redis.bundled.enabled=false",
             "--set", "redis.external.url=redis://r:6379", "--set-string", "redis.keyPrefix=a*b", check=False)
    assert r.returncode == 0, r.stderr


def test_operator_and_proxy_connect_as_their_own_users():
    docs = render([])
    _, _, secret = redis_parts(docs)
    for component, user in [("operator", "operator"), ("proxy", "proxy")]:
        dep = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-" + component))
        env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["GEMINI_PROXY_REDIS_USERNAME"]["value"] == user
        ref = env["GEMINI_PROXY_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret["metadata"]["name"], "key": f"{user}-password"}
    # An existing Secret instead of a generated one.
    docs = render(["--set", "redis.bundled.auth.existingSecret=my-redis-auth"])
    assert not [d for d in by_kind(docs, "Secret") if d["metadata"]["name"].endswith("-redis-auth")]
    sts = next(d for d in by_kind(docs, "StatefulSet"))
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]
            if "valueFrom" in e}
    assert refs == {"my-redis-auth"}


def test_external_redis_credentials_per_component():
    base = ["--set", "redis.bundled.enabled=false", "--set", "redis.external.url=rediss://r:6380",
            "--set", "redis.external.username=gp-operator", "--set", "redis.external.passwordSecret.name=op-auth"]
    def env_of(docs, component):
        dep = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-" + component))
        return {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    # One set of credentials for both, as before.
    docs = render(base)
    assert not [d for d in by_kind(docs, "Secret") if d["metadata"]["name"].endswith("-redis-auth")]
    for c in ["operator", "proxy"]:
        env = env_of(docs, c)
        assert env["GEMINI_PROXY_REDIS_USERNAME"]["value"] == "gp-operator"
        assert env["GEMINI_PROXY_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "op-auth", "key": "password"}
    # The proxies' own user (docs/redis-acl.md).
    docs = render(base + ["--set", "redis.external.proxy.username=gp-proxy",
                          "--set", "redis.external.proxy.passwordSecret.name=proxy-auth",
                          "--set", "redis.external.proxy.passwordSecret.key=pw"])
    op, px = env_of(docs, "operator"), env_of(docs, "proxy")
    assert op["GEMINI_PROXY_REDIS_USERNAME"]["value"] == "gp-operator"
    assert op["GEMINI_PROXY_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "op-auth"
    assert px["GEMINI_PROXY_REDIS_USERNAME"]["value"] == "gp-proxy"
    assert px["GEMINI_PROXY_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "proxy-auth", "key": "pw"}


def test_docs_acl_lines_are_the_charts():
    """docs/redis-acl.md's ACL lines (for an external Redis) are the chart's, apart from the
    passwords."""
    doc = (ROOT / "docs" / "redis-acl.md").read_text()
    docs = render([])
    _, container, _ = redis_parts(docs)
    script = container["command"][2]
    chart_lines = [l for l in script.splitlines() if l.startswith("user ")]
    assert len(chart_lines) == 3
    for line in chart_lines:
        rules = re.sub(r"#\$\{[A-Z_]+\}", "", line).split()
        doc_line = next((l for l in doc.splitlines() if l.startswith(" ".join(rules[:2]) + " ")), None)
        assert doc_line, f"docs/redis-acl.md lacks {rules[:2]}"
        doc_rules = [w for w in doc_line.split() if not w.startswith((">", "#"))]
        assert doc_rules == rules, (doc_line, line)
