//! The real `gemini-proxy` binary as a child process: free port, captured logs, signals.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::Method;
use tokio::process::{Child, Command};

use crate::client::Client;

/// A fresh directory under the system temp dir, unique to this test.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "gp-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Resident memory of a process in KiB (VmRSS; 0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub struct ProxyProcess {
    pub addr: SocketAddr,
    /// The admin listener (probes with details, metrics, the status view).
    pub admin: SocketAddr,
    child: Child,
    log: PathBuf,
    pub dir: PathBuf,
}

impl ProxyProcess {
    /// Starts `bin` with `config` (YAML) on a free port and waits until `/healthz` answers.
    pub async fn with_config(bin: &str, config: &str, env: &[(&str, &str)]) -> Self {
        let dir = temp_dir("proxy");
        let path = dir.join("proxy.yaml");
        std::fs::write(&path, config).expect("write config");
        let path = path.display().to_string();
        Self::spawn_in(dir, bin, &["--config", &path], env).await
    }

    /// Starts `bin` with `args` (plus `--listen` and `--admin-listen`) and waits until
    /// `/healthz` answers.
    pub async fn spawn(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_in(temp_dir("proxy"), bin, args, env).await
    }

    async fn spawn_in(dir: PathBuf, bin: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let log = dir.join("proxy.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .env_remove("GEMINI_API_KEYS")
            // The binary sets its allocator's defaults itself; a test may set its own.
            .env_remove("MIMALLOC_ALLOW_THP")
            .env("RUST_LOG", "info")
            // The mock upstreams are on loopback; a test can set its own list.
            .env("GEMINI_PROXY_ALLOWED_UPSTREAM_HOSTS", "127.0.0.1,localhost")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        let mut p = Self {
            addr,
            admin,
            child,
            log,
            dir,
        };
        p.wait_healthy().await;
        p
    }

    async fn wait_healthy(&mut self) {
        let client = Client::new();
        // The admin listener speaks plain HTTP even when the client port speaks TLS.
        let url = format!("{}/healthz", self.admin_url());
        // A debug build starting 10,000 keys on a busy 2-core machine takes seconds.
        let deadline = std::time::Instant::now() + Duration::from_secs(45);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "gemini-proxy exited with {status} before it was up:\n{}",
                    self.logs()
                );
            }
            let probe = tokio::time::timeout(
                Duration::from_millis(200),
                client.call(Method::GET, &url, &[], ""),
            );
            if tokio::net::TcpStream::connect(self.addr).await.is_ok()
                && let Ok(r) = probe.await
                && r.status.is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gemini-proxy did not become healthy:\n{}", self.logs());
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The admin listener's base URL.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The config file of a proxy started [`ProxyProcess::with_config`] (rewrite it to reload).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("proxy.yaml")
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running child has a pid")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit, up to `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }
}

/// Runs `bin` with `args` to completion (for start-up errors): exit status and output.
pub async fn run_to_exit(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_remove("GEMINI_API_KEYS")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("process ended in time")
        .expect("run process");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status, text)
}
