"""Fixtures for the Qdrant-compatibility suite.

Starts real `shoal-node` processes (one open node for most tests, one with API
keys for the auth tests), each on free loopback ports with a private data dir,
and always tears them down (process-group kill) at the end of the session.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests
from qdrant_client import QdrantClient, models

HERE = Path(__file__).resolve().parent
REPO = Path(os.environ.get("REPO", HERE.parent.parent)).resolve()
NODE_BIN = Path(os.environ.get("SHOAL_NODE_BIN", REPO / "target" / "debug" / "shoal-node"))

# run.sh gives each run (one node, a cluster) its own directory, so runs can go side by side.
LOG_DIR = Path(os.environ.get("SHOAL_COMPAT_LOG_DIR", REPO / "target" / "compat-logs"))
STARTUP_DEADLINE_S = float(os.environ.get("SHOAL_STARTUP_DEADLINE", "30"))
REQUEST_TIMEOUT_S = 20

RW_KEY = "secret-rw"
RO_KEY = "secret-ro"

_live_nodes: list["NodeProcess"] = []


_handed_out_ports: set[int] = set()


def free_port() -> int:
    """A currently free loopback port, never the same one twice in this run."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out_ports:
            _handed_out_ports.add(port)
            return port
    raise RuntimeError("could not find a free port")


def _log_tail(path: Path, n: int = 60) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"<could not read {path}: {e}>"
    return "\n".join(lines[-n:])


class NodeProcess:
    def __init__(self, name: str, extra_args: list[str] | None = None, fatal: bool = False):
        self.name = name
        self.fatal = fatal
        self.startup_error: str | None = None
        self.extra_args = extra_args or []
        self.tmp = Path(tempfile.mkdtemp(prefix=f"shoal-compat-{name}-"))
        self.data_dir = self.tmp / "data"
        self.data_dir.mkdir()
        self.log_path = self.tmp / "node.log"
        self.http_port = free_port()
        self.p2p_port = free_port()
        self.grpc_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.http_port}"
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    def start(self) -> None:
        if not NODE_BIN.exists():
            pytest.exit(f"shoal-node binary not found at {NODE_BIN} (set SHOAL_NODE_BIN)", returncode=2)
        cmd = [
            str(NODE_BIN),
            "--host", "127.0.0.1",
            "--data-dir", str(self.data_dir),
            "--http-port", str(self.http_port),
            "--p2p-port", str(self.p2p_port),
            "--grpc-port", str(self.grpc_port),
            *self.extra_args,
        ]
        self._log_file = open(self.log_path, "wb")
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group -> killpg at teardown
            env=env,
        )
        _live_nodes.append(self)
        self._wait_ready(cmd)

    def _startup_failed(self, cmd: list[str], why: str) -> None:
        self.stop()
        detail = (
            f"shoal-node ({self.name}) {why}\n"
            f"cmd: {' '.join(cmd)}\n--- log tail ({self.log_path}) ---\n{_log_tail(self.log_path) or '<empty log>'}"
        )
        self.startup_error = detail
        if self.fatal:
            # Nearly every test needs this node: stop the session with one clear message.
            self.cleanup()
            pytest.exit("\n" + detail, returncode=3)
        print(detail)  # shown once, in the captured output of the first test using the node
        pytest.fail(f"shoal-node ({self.name}) {why} (details in the first error above)", pytrace=False)

    def _wait_ready(self, cmd: list[str]) -> None:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        last = "no attempt"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._startup_failed(cmd, f"exited with code {self.proc.returncode} during startup")
            try:
                r = requests.get(self.base_url + "/readyz", timeout=1)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}: {r.text[:200]!r}"
            except requests.RequestException as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.1)
        self._startup_failed(cmd, f"not ready within {STARTUP_DEADLINE_S}s (last /readyz: {last})")

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        if self._log_file is not None and not self._log_file.closed:
            self._log_file.close()
        if self in _live_nodes:
            _live_nodes.remove(self)

    def cleanup(self) -> None:
        # Keep a copy of the node log for post-mortems: target/compat-logs/<name>.log
        try:
            LOG_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.log_path, LOG_DIR / f"{self.name}.log")
        except OSError:
            pass
        if os.environ.get("SHOAL_KEEP_TMP"):
            return
        shutil.rmtree(self.tmp, ignore_errors=True)


@atexit.register
def _kill_leftovers() -> None:  # belt and braces if pytest dies abruptly
    for node in list(_live_nodes):
        node.stop()


def _interrupt_on_sigterm(signum, frame):
    # Python dies of SIGTERM without unwinding: no fixture teardown, no atexit hook, and the
    # nodes (each in its own session) would outlive the run. As an interrupt, pytest stops
    # the run, tears its fixtures down and exits normally.
    raise KeyboardInterrupt(f"signal {signum}")


signal.signal(signal.SIGTERM, _interrupt_on_sigterm)


def _start_node(name: str, extra_args: list[str] | None = None, fatal: bool = False):
    node = NodeProcess(name, extra_args, fatal=fatal)
    try:
        node.start()
        yield node
    finally:
        node.stop()
        failed_log = node.proc is not None and node.proc.returncode not in (0, None, -signal.SIGTERM)
        if failed_log:
            print(f"\n[shoal-node {name}] exit code {node.proc.returncode}; log tail:\n{_log_tail(node.log_path)}")
        node.cleanup()


# --------------------------------------------------------------------------------------
# Node fixtures
# --------------------------------------------------------------------------------------


# SHOAL_COMPAT_CLUSTER=N runs the suite against a cluster of N peers on loopback instead of
# one node: the client talks to the last peer to join, so every metadata change is forwarded
# to the Raft leader and most reads and writes cross peers.
CLUSTER_PEERS = int(os.environ.get("SHOAL_COMPAT_CLUSTER", "0") or 0)


def _start_cluster(n: int):
    founder = NodeProcess("peer-0", fatal=True)
    founder.extra_args = ["--uri", f"http://127.0.0.1:{founder.p2p_port}", "--peer-name", "peer-0"]
    nodes = [founder]
    try:
        founder.start()
        for i in range(1, n):
            peer = NodeProcess(f"peer-{i}", fatal=True)
            peer.extra_args = [
                "--uri", f"http://127.0.0.1:{peer.p2p_port}",
                "--bootstrap", f"http://127.0.0.1:{founder.p2p_port}",
                "--peer-name", f"peer-{i}",
            ]
            nodes.append(peer)
            peer.start()
        yield nodes[-1]
    finally:
        for peer in nodes:
            peer.stop()
            peer.cleanup()


@pytest.fixture(scope="session")
def node():
    if CLUSTER_PEERS > 1:
        yield from _start_cluster(CLUSTER_PEERS)
    else:
        yield from _start_node("open", fatal=True)


@pytest.fixture(scope="session")
def auth_node():
    yield from _start_node("auth", ["--api-key", RW_KEY, "--read-only-api-key", RO_KEY])


def make_client(base_url: str, api_key: str | None = None) -> QdrantClient:
    # check_compatibility=False: the check runs in a background thread and only warns;
    # the version contract is asserted explicitly in test_health.py instead.
    return QdrantClient(
        url=base_url,
        api_key=api_key,
        prefer_grpc=False,
        check_compatibility=False,
        timeout=REQUEST_TIMEOUT_S,
    )


@pytest.fixture(scope="session")
def client(node):
    c = make_client(node.base_url)
    yield c
    c.close()


class Http:
    """Thin raw-HTTP helper bound to one node."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None):
        self.base = base_url
        self.s = requests.Session()
        if headers:
            self.s.headers.update(headers)

    def url(self, path: str) -> str:
        return self.base + (path if path.startswith("/") else "/" + path)

    def request(self, method: str, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", REQUEST_TIMEOUT_S)
        return self.s.request(method, self.url(path), **kw)

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw):
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw):
        return self.request("PUT", path, **kw)

    def delete(self, path: str, **kw):
        return self.request("DELETE", path, **kw)

    def patch(self, path: str, **kw):
        return self.request("PATCH", path, **kw)

    def close(self):
        self.s.close()


@pytest.fixture(scope="session")
def http(node):
    h = Http(node.base_url)
    yield h
    h.close()


def unique_name(prefix: str = "c") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def collection(client):
    """Factory: collection(size=8, distance=Cosine, **create_kwargs) -> name.

    Every collection created through it is deleted when the test ends.
    """
    created: list[str] = []

    def make(size: int = 8, distance: models.Distance = models.Distance.COSINE, name: str | None = None, **kw) -> str:
        name = name or unique_name()
        assert client.create_collection(
            name, vectors_config=models.VectorParams(size=size, distance=distance), **kw
        ) is True
        created.append(name)
        return name

    yield make
    for name in created:
        try:
            client.delete_collection(name)
        except Exception:
            pass


# --------------------------------------------------------------------------------------
# Helpers shared by test modules
# --------------------------------------------------------------------------------------


def scroll_all(client: QdrantClient, name: str, page: int = 64, **kw) -> list:
    """All records via scroll paging (with payload + vectors by default)."""
    kw.setdefault("with_payload", True)
    kw.setdefault("with_vectors", True)
    out = []
    offset = None
    for _ in range(10_000):
        recs, offset = client.scroll(name, limit=page, offset=offset, **kw)
        out.extend(recs)
        if offset is None:
            return out
    raise AssertionError("scroll did not terminate")


def state_of(client: QdrantClient, name: str) -> dict:
    """Complete observable state of a collection, for 'nothing changed' checks."""
    info = client.get_collection(name)
    recs = scroll_all(client, name)
    return {
        "points_count": info.points_count,
        "count": client.count(name, exact=True).count,
        "vector_size": info.config.params.vectors.size,
        "distance": info.config.params.vectors.distance,
        "points": {
            str(r.id): (r.payload, [round(x, 6) for x in r.vector] if r.vector is not None else None) for r in recs
        },
    }
