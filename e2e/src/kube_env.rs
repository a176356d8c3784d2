//! A real kube-apiserver + etcd for operator tests (through `e2e/k8s/*.sh`), `kubectl`, and
//! the `shoal-operator` binary as a child process.
//!
//! Everything started here is stopped on drop, also when a test panics: the apiserver by
//! `stop-apiserver.sh`, the operator by SIGKILL. Every command has a bounded wait.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::node_process::workspace_root;

/// Set to make a missing apiserver binary a failure instead of a skip.
pub const REQUIRE_ENV: &str = "SHOAL_REQUIRE_K8S";

/// Where `ensure-binaries.sh` caches etcd, kube-apiserver and kubectl.
pub fn k8s_bin_dir() -> PathBuf {
    let cache = std::env::var_os("SHOAL_K8S_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/shoal/k8s"),
        PathBuf::from,
    );
    cache.join("bin")
}

/// Runs `cmd` with a deadline, returning stdout; fails with stderr on a non-zero exit.
fn run_bounded(mut cmd: Command, stdin: Option<&str>, timeout: Duration) -> Result<String> {
    let what = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawning {what}"))?;
    if let Some(input) = stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        pipe.write_all(input.as_bytes())?;
    }
    // Read the pipes on threads so a chatty child cannot block on a full pipe.
    let mut out_pipe = child.stdout.take().context("stdout")?;
    let mut err_pipe = child.stderr.take().context("stderr")?;
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out_pipe, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err_pipe, &mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    ensure!(
        status.success(),
        "{what} failed ({status}): {stderr}{stdout}"
    );
    Ok(stdout)
}

/// A running etcd + kube-apiserver; stopped (and its dir removed unless a test failed) on drop.
pub struct ApiServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl ApiServer {
    /// Starts one, or returns `None` (after printing why) when the binaries are not built and
    /// [`REQUIRE_ENV`] is not set.
    pub fn start_or_skip(test: &str) -> Result<Option<Self>> {
        let bin = k8s_bin_dir();
        if !bin.join("kube-apiserver").is_file() {
            ensure!(
                std::env::var_os(REQUIRE_ENV).is_none(),
                "{} is missing and {REQUIRE_ENV} is set; run e2e/k8s/ensure-binaries.sh",
                bin.join("kube-apiserver").display()
            );
            eprintln!(
                "SKIPPED {test}: {} is missing (build it with e2e/k8s/ensure-binaries.sh; set \
                 {REQUIRE_ENV}=1 to make this a failure)",
                bin.join("kube-apiserver").display()
            );
            return Ok(None);
        }
        let dir = tempfile::Builder::new()
            .prefix("shoal-k8s-")
            .tempdir()
            .context("creating the apiserver dir")?;
        let server = Self { dir, bin };
        let mut cmd = Command::new(workspace_root().join("e2e/k8s/start-apiserver.sh"));
        cmd.arg(server.dir.path()).env("SHOAL_K8S_BIN", &server.bin);
        // The script bounds its own wait (90 s); this bounds the script.
        run_bounded(cmd, None, Duration::from_secs(150))?;
        Ok(Some(server))
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `kubectl ARGS` against this apiserver, with `stdin` piped in.
    pub fn kubectl_in(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--request-timeout=30s")
            .args(args);
        run_bounded(cmd, stdin, Duration::from_secs(60))
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_in(args, None)
    }

    /// `kubectl apply -f -` of a YAML or JSON manifest.
    pub fn apply(&self, manifest: &str) -> Result<String> {
        self.kubectl_in(&["apply", "-f", "-"], Some(manifest))
    }

    /// The object as JSON, or `None` when it does not exist.
    pub fn get_json(&self, resource: &str, name: &str) -> Result<Option<Value>> {
        let out = self.kubectl(&["get", resource, name, "-o", "json", "--ignore-not-found"])?;
        if out.trim().is_empty() {
            return Ok(None);
        }
        Ok(Some(serde_json::from_str(&out)?))
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let mut cmd = Command::new(workspace_root().join("e2e/k8s/stop-apiserver.sh"));
        cmd.arg(self.dir.path());
        if let Err(e) = run_bounded(cmd, None, Duration::from_secs(40)) {
            eprintln!("stopping the apiserver: {e:#}");
        }
        if std::thread::panicking() {
            let log = self.dir.path().join("kube-apiserver.log");
            eprintln!("apiserver dir kept for inspection: {}", log.display());
            let dir = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("a temp dir for the replacement"),
            );
            let _ = dir.keep();
        }
    }
}

/// Finds `target/debug/shoal-operator` (or `$SHOAL_OPERATOR_BIN`).
pub fn resolve_operator_binary() -> Result<PathBuf> {
    let path = std::env::var_os("SHOAL_OPERATOR_BIN").map_or_else(
        || workspace_root().join("target/debug/shoal-operator"),
        PathBuf::from,
    );
    ensure!(
        path.is_file(),
        "{} not found; build it with `cargo build --workspace --bins`",
        path.display()
    );
    Ok(path)
}

/// The operator binary as a child process; SIGKILLed on drop, which also prints the tail of
/// its log (the test harness shows it only for a failed test).
pub struct OperatorProcess {
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl OperatorProcess {
    /// Starts the operator with `env` (on top of `KUBECONFIG`).
    pub fn start(kubeconfig: &Path, env: &[(&str, String)]) -> Result<Self> {
        let bin = resolve_operator_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("shoal-operator-")
            .tempdir()?;
        let log = dir.path().join("operator.log");
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin);
        cmd.env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,shoal_operator=debug")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("spawning shoal-operator")?;
        Ok(Self {
            child: Some(child),
            log,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, then SIGKILL after `grace`. Returns whether it exited on its own.
    pub fn stop(&mut self, grace: Duration) -> Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(true);
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        Ok(false)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Always: the test harness shows a test's output only when it fails.
        {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(80).collect();
            eprintln!(
                "---- last lines of the operator log ----\n{}\n---- end ----",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}
