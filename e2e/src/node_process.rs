//! One `shoal-node` OS process under test: spawn, wait until ready, kill -9, restart.
//!
//! The harness owns a temporary work dir per node holding `data/` (the node's `--data-dir`,
//! unless the caller supplies one) and `node.log` (stdout and stderr of every start,
//! appended, each start preceded by a marker line). Ports are picked at run time and kept
//! across restarts, so a restarted node is reachable at the same URL, like a real peer.
//!
//! Dropping a [`NodeProcess`] kills the process and reaps it, so a failing (panicking) test
//! never leaks a node. When the drop happens during a panic, the tail of the log is printed
//! and the work dir is kept for inspection (also kept when `SHOAL_E2E_KEEP=1`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tempfile::TempDir;

use crate::rest_client::Client;

/// Environment variable naming the node binary to test.
pub const NODE_BIN_ENV: &str = "SHOAL_NODE_BIN";
/// Set to `1` to keep every node's work dir (data and log) after the test.
pub const KEEP_ENV: &str = "SHOAL_E2E_KEEP";

const READY_POLL_INTERVAL: Duration = Duration::from_millis(50);
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const LOG_TAIL_LINES: usize = 60;

#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// The binary; default: `$SHOAL_NODE_BIN`, else `<workspace>/target/debug/shoal-node`.
    pub binary: Option<PathBuf>,
    /// Use this data dir instead of `<work dir>/data` (it is never deleted by the harness).
    pub data_dir: Option<PathBuf>,
    pub api_key: Option<String>,
    /// Appended after the fixed arguments on every start.
    pub extra_args: Vec<String>,
    /// Extra environment for the node (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Per-request timeout of clients made by [`NodeProcess::client`]; default 30 s.
    pub client_timeout: Option<Duration>,
    /// Cluster mode: the node gets `--uri http://127.0.0.1:<p2p port>`, and `--bootstrap` when
    /// joining.
    pub cluster: Option<ClusterRole>,
    /// Which server the binary is: a `shoal-node` (default) or, for side-by-side benchmarks
    /// only, a Qdrant binary configured through its environment.
    pub flavour: Flavour,
}

/// The server a [`NodeProcess`] runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Flavour {
    #[default]
    Shoal,
    /// A Qdrant binary (benchmarks only: `../shared/anchors/`), single node, configured with
    /// `QDRANT__...` variables: the same ports, data dir and loopback address as Shoal gets.
    Qdrant,
}

/// How a node takes part in a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterRole {
    /// Founds a new cluster (or, on restart, rejoins it).
    Found,
    /// Joins through the member with this p2p URI.
    Join(String),
}

/// The workspace root, found from this crate's manifest dir at compile time.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

/// Finds the node binary: `explicit` (relative paths tried against the current dir, then the
/// workspace root), else `$SHOAL_NODE_BIN`, else `<workspace>/target/debug/shoal-node`.
pub fn resolve_node_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    let (candidate, source) = match explicit {
        Some(p) => (p.to_path_buf(), "the given path"),
        None => match std::env::var_os(NODE_BIN_ENV) {
            Some(p) => (PathBuf::from(p), NODE_BIN_ENV),
            None => (
                workspace_root().join("target/debug/shoal-node"),
                "the default location",
            ),
        },
    };
    let mut tried = vec![candidate.clone()];
    if candidate.is_relative() {
        tried.push(workspace_root().join(&candidate));
    }
    tried.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        anyhow!(
            "shoal-node binary not found (from {source}; tried {}). Build it with \
                 `cargo build -p shoal-node` (add `--release` for benchmarks) or point \
                 {NODE_BIN_ENV} at it.",
            tried
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// `n` distinct free TCP ports on 127.0.0.1. All listeners are held until every port is read,
/// so the ports differ; they are released before returning, so another process could take
/// one in the gap (rare; `NodeProcess::start_ready` then starts the node again on new ports).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()
        .context("binding 127.0.0.1:0 to pick a free port")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Starts of one node (the first included) that [`NodeProcess::start_ready`] tries when a
/// port it picked was taken before the node bound it.
pub const PORT_ATTEMPTS: usize = 3;

pub struct NodeProcess {
    binary: PathBuf,
    /// Holds the work dir (log, default data dir); `None` only after drop decided to keep it.
    work_dir: Option<TempDir>,
    work_path: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    http_port: u16,
    p2p_port: u16,
    /// Qdrant's client gRPC API.
    grpc_port: u16,
    api_key: Option<String>,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    client_timeout: Duration,
    cluster: Option<ClusterRole>,
    flavour: Flavour,
    child: Option<Child>,
    starts: u32,
}

impl std::fmt::Debug for NodeProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeProcess")
            .field("url", &self.url())
            .field("p2p_port", &self.p2p_port)
            .field("data_dir", &self.data_dir)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

impl NodeProcess {
    /// Spawns the node (does not wait for it; see [`NodeProcess::wait_ready`]).
    pub fn start(opts: NodeOptions) -> Result<Self> {
        let binary = match (opts.flavour, &opts.binary) {
            (Flavour::Qdrant, Some(b)) => b.clone(),
            (Flavour::Qdrant, None) => bail!("a Qdrant node needs its binary's path"),
            (Flavour::Shoal, b) => resolve_node_binary(b.as_deref())?,
        };
        let work_dir = tempfile::Builder::new()
            .prefix("shoal-e2e-")
            .tempdir()
            .context("creating the node's temporary work dir")?;
        let work_path = work_dir.path().to_path_buf();
        let data_dir = match opts.data_dir {
            Some(d) => d,
            None => {
                let d = work_path.join("data");
                std::fs::create_dir(&d)
                    .with_context(|| format!("creating data dir {}", d.display()))?;
                d
            }
        };
        let ports = free_ports(3)?;
        let mut node = Self {
            binary,
            log_path: work_path.join("node.log"),
            work_dir: Some(work_dir),
            work_path,
            data_dir,
            http_port: ports[0],
            p2p_port: ports[1],
            grpc_port: ports[2],
            api_key: opts.api_key,
            extra_args: opts.extra_args,
            env: opts.env,
            client_timeout: opts.client_timeout.unwrap_or(Duration::from_secs(30)),
            cluster: opts.cluster,
            flavour: opts.flavour,
            child: None,
            starts: 0,
        };
        node.spawn()?;
        Ok(node)
    }

    /// [`NodeProcess::start`] then [`NodeProcess::wait_ready`] within `timeout`. A node that
    /// exited because another process took one of its ports between [`free_ports`] and its
    /// bind (tests start nodes in parallel) is started again on new ports, at most
    /// [`PORT_ATTEMPTS`] times in all.
    pub fn start_ready(opts: NodeOptions, timeout: Duration) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        let mut node = Self::start(opts)?;
        let mut attempts = 1;
        loop {
            match node.wait_ready(deadline) {
                Ok(()) => return Ok(node),
                Err(_) if attempts < PORT_ATTEMPTS && node.lost_a_port() => {
                    attempts += 1;
                    node.child = None;
                    let ports = free_ports(3)?;
                    (node.http_port, node.p2p_port, node.grpc_port) =
                        (ports[0], ports[1], ports[2]);
                    node.spawn()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the last start exited because a port was taken: its log since the start
    /// marker says it could not listen.
    fn lost_a_port(&mut self) -> bool {
        if !matches!(self.try_exit_status(), Ok(Some(_))) {
            return false;
        }
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let last = log
            .rsplit("==== shoal-e2e: start #")
            .next()
            .unwrap_or_default();
        last.contains("cannot listen on") || last.contains("ddress already in use")
    }

    fn spawn(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("node {} is already running", self.url());
        }
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening node log {}", self.log_path.display()))?;
        writeln!(
            log,
            "==== shoal-e2e: start #{} of {} --data-dir {} --http-port {} --p2p-port {} ====",
            self.starts,
            self.binary.display(),
            self.data_dir.display(),
            self.http_port,
            self.p2p_port
        )?;
        let stderr = log.try_clone()?;
        let mut cmd = Command::new(&self.binary);
        if self.flavour == Flavour::Qdrant {
            let snapshots = self.work_path.join("snapshots");
            cmd.current_dir(&self.work_path)
                .env("QDRANT__SERVICE__HOST", "127.0.0.1")
                .env("QDRANT__SERVICE__HTTP_PORT", self.http_port.to_string())
                .env("QDRANT__SERVICE__GRPC_PORT", self.grpc_port.to_string())
                .env("QDRANT__STORAGE__STORAGE_PATH", &self.data_dir)
                .env("QDRANT__STORAGE__SNAPSHOTS_PATH", snapshots)
                .env("QDRANT__TELEMETRY_DISABLED", "true");
            if let Some(key) = &self.api_key {
                cmd.env("QDRANT__SERVICE__API_KEY", key);
            }
        } else {
            // Tests stay on loopback: the node's own default binds every interface.
            cmd.arg("--host")
                .arg("127.0.0.1")
                .arg("--data-dir")
                .arg(&self.data_dir)
                .arg("--http-port")
                .arg(self.http_port.to_string())
                .arg("--p2p-port")
                .arg(self.p2p_port.to_string())
                .arg("--grpc-port")
                .arg(self.grpc_port.to_string());
            if let Some(key) = &self.api_key {
                cmd.arg("--api-key").arg(key);
            }
            if let Some(role) = &self.cluster {
                cmd.arg("--uri").arg(self.p2p_uri());
                if let ClusterRole::Join(bootstrap) = role {
                    cmd.arg("--bootstrap").arg(bootstrap);
                }
            }
        }
        cmd.args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls `GET /readyz` until it answers 2xx. Fails early, with the log tail, if the
    /// process exits; fails at `deadline` otherwise.
    pub fn wait_ready(&mut self, deadline: Instant) -> Result<()> {
        let probe = Client::with_timeout(self.url(), READY_PROBE_TIMEOUT);
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_exit_status()? {
                bail!(
                    "node {} exited with {status} before becoming ready.\n{}",
                    self.url(),
                    self.log_tail_report(LOG_TAIL_LINES)
                );
            }
            let last = match probe.readyz() {
                Ok(true) => return Ok(()),
                Ok(false) => "GET /readyz answered a non-2xx status".to_owned(),
                Err(e) => format!("{e:#}"),
            };
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "node {} not ready after {:.1?} (last probe: {last}).\n{}",
                    self.url(),
                    now - started,
                    self.log_tail_report(LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(READY_POLL_INTERVAL.min(deadline - now));
        }
    }

    /// SIGKILL (what `Child::kill` sends on unix) and reap. A no-op if not running.
    pub fn kill_9(&mut self) -> Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        child
            .kill()
            .with_context(|| format!("SIGKILL to node pid {}", child.id()))?;
        let status = child.wait().context("reaping the killed node")?;
        Ok(Some(status))
    }

    /// SIGTERM, then wait up to `grace` for the node to exit; SIGKILL if it does not.
    /// Returns the exit status and whether the node exited on its own.
    pub fn stop(&mut self, grace: Duration) -> Result<Option<(ExitStatus, bool)>> {
        let Some(pid) = self.pid() else {
            return Ok(None);
        };
        // `kill(1)` instead of libc: the workspace forbids unsafe code.
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .context("running kill -TERM")?;
        let deadline = Instant::now() + grace;
        if sent.success() {
            while Instant::now() < deadline {
                if let Some(status) = self.try_exit_status()? {
                    self.child = None;
                    return Ok(Some((status, true)));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(self.kill_9()?.map(|s| (s, false)))
    }

    /// Sets (or replaces) an environment variable of the node's next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Starts the node again on the same data dir and ports, SIGKILLing it first if it is
    /// still running. Does not wait; call [`NodeProcess::wait_ready`].
    pub fn restart(&mut self) -> Result<()> {
        self.kill_9()?;
        self.spawn()
    }

    /// `Some(status)` if the process has exited (it stays reaped), `None` if running or stopped.
    pub fn try_exit_status(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait().context("polling the node process")?),
            None => Ok(None),
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.try_exit_status(), Ok(None)) && self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// A fresh client (fresh connection pool: no stale keep-alive sockets from before a kill).
    pub fn client(&self) -> Client {
        let c = Client::with_timeout(self.url(), self.client_timeout);
        match &self.api_key {
            Some(k) => c.with_api_key(k.clone()),
            None => c,
        }
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The p2p URI other peers reach this node at.
    pub fn p2p_uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.p2p_port)
    }

    pub fn p2p_port(&self) -> u16 {
        self.p2p_port
    }

    /// The port of Qdrant's client gRPC API on this node.
    pub fn grpc_port(&self) -> u16 {
        self.grpc_port
    }

    /// `http://127.0.0.1:<grpc port>`, for the `qdrant-client` crate.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn work_dir(&self) -> &Path {
        &self.work_path
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// How many times the process was spawned (1 after `start`).
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// `VmHWM` (peak resident set size) of the running node, in bytes, from /proc (Linux).
    pub fn peak_rss_bytes(&self) -> Result<u64> {
        let pid = self.pid().ok_or_else(|| anyhow!("node is not running"))?;
        proc_status_kib(pid, "VmHWM").map(|kib| kib * 1024)
    }

    /// The last `lines` lines of the node log (reads at most the last 256 KiB).
    pub fn log_tail(&self, lines: usize) -> String {
        read_tail(&self.log_path, lines).unwrap_or_else(|e| format!("<cannot read log: {e}>"))
    }

    fn log_tail_report(&self, lines: usize) -> String {
        format!(
            "---- last {lines} lines of {} ----\n{}\n---- end of log ----",
            self.log_path.display(),
            self.log_tail(lines)
        )
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let keep = std::env::var(KEEP_ENV).is_ok_and(|v| v == "1");
        if std::thread::panicking() {
            eprintln!(
                "node {} (work dir {}) at the time of failure:\n{}",
                self.url(),
                self.work_path.display(),
                self.log_tail_report(LOG_TAIL_LINES)
            );
        }
        if (keep || std::thread::panicking())
            && let Some(dir) = self.work_dir.take()
        {
            let kept = dir.keep();
            eprintln!("kept node work dir {}", kept.display());
        }
    }
}

/// A `kB` field of /proc/PID/status, e.g. `VmHWM` or `VmRSS`.
pub fn proc_status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_kib(&status, field).ok_or_else(|| anyhow!("{path} has no `{field}:` line"))
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn read_tail(path: &Path, lines: usize) -> std::io::Result<String> {
    const MAX_TAIL_BYTES: u64 = 256 * 1024;
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(MAX_TAIL_BYTES)))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let all = without_backtrace_frames(&text);
    Ok(all[all.len().saturating_sub(lines)..].join("\n"))
}

/// The lines of a log with the frames of every printed backtrace folded into its header line:
/// with `RUST_BACKTRACE=1` a failing node ends its log with `Error: …`, its `Caused by:` chain
/// and ~100 frame lines (a panic: its message, then as many), and a tail of only the frames
/// hides the error itself.
fn without_backtrace_frames(text: &str) -> Vec<&str> {
    let is_frame = |line: &str| {
        let t = line.trim_start();
        let indented = t.len() < line.len();
        let numbered = t
            .split_once(": ")
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        indented && (numbered || t.starts_with("at ") || t.starts_with("[... omitted"))
    };
    let mut out = Vec::new();
    let mut in_backtrace = false;
    for line in text.lines() {
        // anyhow's header, and std's for a panic.
        if line.trim().eq_ignore_ascii_case("stack backtrace:") {
            in_backtrace = true;
            out.push("Stack backtrace: (frames omitted)");
        } else if !(in_backtrace && is_frame(line)) {
            in_backtrace = false;
            out.push(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_nonzero() {
        let p = free_ports(4).unwrap();
        assert_eq!(p.len(), 4);
        assert!(p.iter().all(|&x| x != 0));
        let mut s = p.clone();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn parses_proc_status_fields() {
        let s = "Name:\tshoal-node\nVmPeak:\t  2000 kB\nVmHWM:\t   1234 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_status_kib(s, "VmHWM"), Some(1234));
        assert_eq!(parse_status_kib(s, "VmRSS"), Some(1000));
        assert_eq!(parse_status_kib(s, "VmSwap"), None);
        // Our own process has a VmHWM on Linux.
        if Path::new("/proc/self/status").exists() {
            assert!(proc_status_kib(std::process::id(), "VmHWM").unwrap() > 0);
        }
    }

    #[test]
    fn missing_binary_is_a_clear_error() {
        let err = resolve_node_binary(Some(Path::new("/nonexistent/shoal-node"))).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("not found"), "{msg}");
        assert!(msg.contains("/nonexistent/shoal-node"), "{msg}");
    }

    #[test]
    fn log_tail_returns_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(
            &p,
            (1..=100).map(|i| format!("line {i}\n")).collect::<String>(),
        )
        .unwrap();
        assert_eq!(read_tail(&p, 2).unwrap(), "line 99\nline 100");
        assert_eq!(read_tail(&p, 1000).unwrap().lines().count(), 100);
    }

    #[test]
    fn the_log_tail_keeps_the_error_and_folds_the_backtrace() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let frames: String = (0..200)
            .map(|i| format!("  {i:>2}: frame{i}\n             at src/x.rs:{i}:1\n"))
            .collect();
        let log = format!(
            "INFO started\nError: cannot load collections\n\nCaused by:\n    disk\n\n\
             Stack backtrace:\n{frames}  ok: not a frame\n"
        );
        std::fs::write(&p, log).unwrap();
        assert_eq!(
            read_tail(&p, 5).unwrap(),
            "Caused by:\n    disk\n\nStack backtrace: (frames omitted)\n  ok: not a frame"
        );
        assert!(
            read_tail(&p, 10)
                .unwrap()
                .contains("Error: cannot load collections")
        );

        let panic = format!(
            "thread 'main' panicked at src/main.rs:1:1:\nboom\nstack backtrace:\n{frames}\
             \x20     [... omitted 3 frames ...]\n{frames}note: run with RUST_BACKTRACE=full\n"
        );
        std::fs::write(&p, panic).unwrap();
        assert_eq!(
            read_tail(&p, 4).unwrap(),
            "thread 'main' panicked at src/main.rs:1:1:\nboom\n\
             Stack backtrace: (frames omitted)\nnote: run with RUST_BACKTRACE=full"
        );
    }

    /// The process-handling half of the harness, exercised with `sleep` standing in for a
    /// node (it never becomes ready, which is what we check).
    #[test]
    fn spawn_kill_restart_with_a_stand_in_process() {
        let sleep = ["/bin/sleep", "/usr/bin/sleep"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file());
        let Some(sleep) = sleep else {
            eprintln!("no sleep binary; skipping");
            return;
        };
        // `sleep --data-dir …` fails immediately: wait_ready must report the exit, not hang.
        let mut node = NodeProcess::start(NodeOptions {
            binary: Some(sleep),
            ..Default::default()
        })
        .unwrap();
        let err = node
            .wait_ready(Instant::now() + Duration::from_secs(10))
            .unwrap_err();
        assert!(err.to_string().contains("exited"), "{err:#}");
        assert!(node.log_tail(100).contains("start #1"));
        node.restart().unwrap();
        assert_eq!(node.starts(), 2);
        node.kill_9().unwrap();
        assert!(node.log_tail(100).contains("start #2"));
        assert!(node.data_dir().is_dir());
    }
}
