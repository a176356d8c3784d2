"""Fuzzes the REST API with schemathesis, driven by Qdrant's published OpenAPI description.

Every path of the reference gets generated requests (valid, invalid and edge cases) against
a dedicated node; the check is that no request makes the node answer 5xx or crash. Bounded in
time: `SHOAL_FUZZ_SECONDS` (default 60) in all, two thirds for schemathesis's coverage and
fuzzing phases, one third for the examples of the schema. Named `zz` so that it runs last.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from conftest import REPO, _start_node

SCHEMA = REPO.parent / "shared" / "reference" / "qdrant-openapi-v1.18.3.json"
FUZZ_SECONDS = int(os.environ.get("SHOAL_FUZZ_SECONDS", "60"))

# Every path of the reference.
INCLUDE = r"^/"
# No generated request may take longer than this, nor grow the node's peak memory by more.
REQUEST_LIMIT_S = 10
MEMORY_GROWTH_LIMIT = 1 << 30
# Operations (method and path) in the reference.
OPERATIONS = 75


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def schemathesis_bin() -> str:
    exe = Path(sys.executable).parent / "schemathesis"
    if not exe.exists():
        pytest.fail("schemathesis is not installed in the test venv (see requirements.txt)")
    return str(exe)


def run_schemathesis(base: str, workdir: Path, phases: str, seconds: int, exclude: str | None = None) -> tuple[int, str]:
    """Runs schemathesis's `phases` on every path (but those matching the regex `exclude`) for
    at most `seconds`; returns the number of generated cases and the output. Fails the test on
    a failed check or a network error."""
    cmd = [
        schemathesis_bin(), "run", str(SCHEMA),
        "--url", base,
        "--checks", "not_a_server_error",
        "--phases", phases,
        "--max-time", str(seconds),
        "--workers", "2",
        "--seed", "42",
        "--include-path-regex", INCLUDE,
        "--request-timeout", str(REQUEST_LIMIT_S),
    ]
    if exclude:
        cmd += ["--exclude-path-regex", exclude]
    result = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=seconds * 6 + 120)
    out = result.stdout + result.stderr
    # Schemathesis exits non-zero also for its own runtime errors (Qdrant's schema is deeply
    # recursive and trips Hypothesis now and then), so judge by what it reports.
    counts = re.search(r"(\d+) generated, (\d+) passed(.*)", out)
    assert counts, f"schemathesis ({phases}) did not run:\n{out[-4000:]}"
    assert "failed" not in counts.group(3), f"schemathesis ({phases}) found failures:\n{out[-6000:]}"
    # A request that outlived the limit (or broke the connection) is a network error.
    assert "Network Error" not in out, f"a request timed out or lost its connection:\n{out[-6000:]}"
    return int(counts.group(1)), out


def server_errors(metrics):
    """The node's 5xx request counters in a /metrics text: {series: count}."""
    return {
        l.rsplit(" ", 1)[0]: float(l.rsplit(" ", 1)[1])
        for l in metrics.splitlines()
        if l.startswith("shoal_http_requests_total") and 'status="5' in l
    }


@pytest.fixture
def fuzz_node():
    yield from _start_node("fuzz")


@pytest.mark.skipif(not SCHEMA.exists(), reason=f"reference schema not found at {SCHEMA}")
def test_no_request_makes_the_node_fail(fuzz_node, tmp_path):
    base = fuzz_node.base_url
    # A collection with a few points under the name every generated path uses, so that
    # point operations reach their handlers instead of stopping at "not found".
    requests.put(f"{base}/collections/fuzz", json={"vectors": {"size": 4, "distance": "Dot"}}, timeout=10).raise_for_status()
    points = [{"id": i, "vector": [i, 1, 2, 3], "payload": {"n": i}} for i in range(1, 9)]
    requests.put(f"{base}/collections/fuzz/points?wait=true", json={"points": points}, timeout=10).raise_for_status()
    peak_before = peak_rss_bytes(fuzz_node.proc.pid)
    # 5xx answers before the fuzzing (the start-up's polls of /readyz may meet its designed
    # 503 "not ready"): only what the fuzzing adds to them counts.
    errors_before = server_errors(requests.get(f"{base}/metrics", timeout=10).text)
    (tmp_path / "schemathesis.toml").write_text('[parameters]\ncollection_name = "fuzz"\n')
    # Two runs with their own time budgets. Schemathesis needs ~16 s (this kind of machine)
    # for each of the three query operations to turn the examples of Qdrant's recursive query
    # schema into requests: in one run with a shared budget the examples phase could use it
    # all, and coverage and fuzzing would not run at all. So coverage and fuzzing run first,
    # over every operation; the examples run leaves out the query operations they covered.
    fuzz_seconds = max(1, FUZZ_SECONDS * 2 // 3)
    examples_seconds = max(1, FUZZ_SECONDS - fuzz_seconds)
    fuzzed, fuzz_out = run_schemathesis(base, tmp_path, "coverage,fuzzing", fuzz_seconds)
    # A floor far below the thousands of cases these phases generate in their budget, which
    # still fails a run that stopped early.
    assert fuzzed >= OPERATIONS, f"too few cases generated ({fuzzed}):\n{fuzz_out[-4000:]}"
    from_examples, _ = run_schemathesis(base, tmp_path, "examples", examples_seconds, exclude=r"/points/query")
    # The node survived, never answered 5xx, never took longer than the limit (schemathesis
    # reports a timed-out request as a failure above), and stayed within the memory bound.
    assert requests.get(f"{base}/healthz", timeout=10).status_code == 200
    growth = peak_rss_bytes(fuzz_node.proc.pid) - peak_before
    assert growth <= MEMORY_GROWTH_LIMIT, f"peak memory grew by {growth >> 20} MiB"
    metrics = requests.get(f"{base}/metrics", timeout=10).text
    errors_after = server_errors(metrics)
    assert errors_after == errors_before, f"the node answered 5xx: {errors_before} before the fuzzing, {errors_after} after"
    answered = sum(float(l.rsplit(" ", 1)[1]) for l in metrics.splitlines() if l.startswith("shoal_http_requests_total"))
    # Every generated case reached the node (which also counts the setup requests above).
    assert answered >= fuzzed + from_examples, f"the node saw only {answered} requests for {fuzzed + from_examples} cases"
