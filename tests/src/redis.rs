//! Real `redis-server` processes on free loopback ports: standalone, Sentinel, Cluster.
//! A test that needs Redis fails when it is missing; it never skips.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{free_port, temp_dir};

fn redis_server() -> &'static str {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "redis-server is not installed: run scripts/test.sh (it installs it with apt-get)"
    );
    "redis-server"
}

/// Runs `redis-cli -p PORT args...` and returns its output.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_ping(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let answer = cli(port, &["PING"]);
        // A server with a password is up when it asks for it.
        if answer.trim() == "PONG" || answer.contains("NOAUTH") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("redis on port {port} did not answer PING");
}

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A standalone server, no persistence.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let mut s = Self {
            port: free_port(),
            dir: temp_dir("redis"),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
        };
        s.launch();
        s
    }

    fn launch(&mut self) {
        let child = Command::new(redis_server())
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        wait_ping(self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the server vanishes mid-flight, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the server hangs (connections stay open, nothing is answered).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// Starts again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// Every key and its value (strings, hashes, sets), for scans in tests.
    pub fn dump(&self) -> Vec<(String, String)> {
        let keys = self.cli(&["--scan"]);
        keys.lines()
            .filter(|k| !k.is_empty())
            .map(|k| {
                let kind = self.cli(&["TYPE", k]);
                let value = match kind.trim() {
                    "string" => self.cli(&["GET", k]),
                    "hash" => self.cli(&["HGETALL", k]),
                    "set" => self.cli(&["SMEMBERS", k]),
                    other => format!("<{other}>"),
                };
                (k.to_owned(), value)
            })
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A master and three sentinels watching it as `mymaster`.
pub struct RedisSentinel {
    pub master: RedisServer,
    pub name: String,
    sentinels: Vec<(u16, Child)>,
}

impl RedisSentinel {
    pub fn start() -> Self {
        Self::start_inner(None)
    }

    /// The master and the sentinels all want `password` (`requirepass`), and the sentinels
    /// know the master's (`auth-pass`).
    pub fn start_with_password(password: &str) -> Self {
        Self::start_inner(Some(password))
    }

    fn start_inner(password: Option<&str>) -> Self {
        let master = match password {
            Some(p) => RedisServer::start_with(&["--requirepass", p]),
            None => RedisServer::start(),
        };
        let auth = password.map_or(String::new(), |p| {
            format!("requirepass {p}\nsentinel auth-pass mymaster {p}\n")
        });
        let name = "mymaster".to_owned();
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let dir = temp_dir("sentinel");
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "bind 127.0.0.1\nport {port}\ndir {}\nsentinel monitor {name} 127.0.0.1 {} 2\nsentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 5000\n{auth}",
                    dir.display(),
                    master.port
                ),
            )
            .expect("sentinel.conf");
            let child = Command::new(redis_server())
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn sentinel");
            wait_ping(port);
            sentinels.push((port, child));
        }
        // Wait until the sentinels agree on the master.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let mut args = vec!["--no-auth-warning"];
            if let Some(p) = password {
                args.extend(["-a", p]);
            }
            args.extend(["SENTINEL", "get-master-addr-by-name", &name]);
            let addr = cli(sentinels[0].0, &args);
            if addr.contains(&master.port.to_string()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            master,
            name,
            sentinels,
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(p, _)| format!("redis://127.0.0.1:{p}"))
            .collect()
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for (_, c) in &mut self.sentinels {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A Redis Cluster of three masters, made with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = nodes
                .iter()
                .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Every key and value on every node.
    pub fn dump(&self) -> Vec<(String, String)> {
        self.nodes.iter().flat_map(RedisServer::dump).collect()
    }
}

/// A random key prefix, so that tests sharing a server never see each other's keys.
pub fn random_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("t{:x}{:x}:", std::process::id(), nanos & 0xffff_ffff)
}
