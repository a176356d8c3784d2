#!/usr/bin/env bash
# Runs every test of the project, the way CI does. Needs only the Rust toolchain and python3;
# the Python packages of the client suites are installed by e2e/python-envs.sh.
#
#   e2e/run-tests.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Each step prints the time since the start, so a slow run shows where its minutes went.
started=$SECONDS
step() { printf '\n==> [%4ds] %s\n' "$((SECONDS - started))" "$*"; }

# Work that needs no Rust build runs in the background beside the compilation, which leaves a
# core idle for long stretches (one large crate's front end, the links): the kube-apiserver the
# chart check and the operator's end-to-end test use (built from source on first use, ~8 min
# on 2 cores, cached after), and the Python environments of the two client suites (pip
# downloads and installs). Each job has its own process group and log; a failed run stops
# them all. `background KEY CMD...` starts one; `await KEY` waits for it and shows its log.
declare -A bg_pid bg_log
background() {
    local name=$1
    shift
    bg_log[$name]="$(mktemp)"
    setsid --wait "$@" > "${bg_log[$name]}" 2>&1 &
    bg_pid[$name]=$!
}
await() {
    local name=$1 rc=0
    wait "${bg_pid[$name]}" || rc=$?
    unset "bg_pid[$name]"
    cat "${bg_log[$name]}"
    rm -f "${bg_log[$name]}"
    if [[ $rc -ne 0 ]]; then
        echo "background job '$name' failed (exit code $rc; its output is above)" >&2
        exit 1
    fi
}
stop_background() {
    local name
    for name in "${!bg_pid[@]}"; do
        kill -TERM -- "-${bg_pid[$name]}" 2> /dev/null || true
    done
    for name in "${!bg_log[@]}"; do
        rm -f "${bg_log[$name]}"
    done
}
trap stop_background EXIT

background k8s e2e/k8s/ensure-binaries.sh
background python e2e/python-envs.sh

step "formatting (cargo fmt --check)"
cargo fmt --all -- --check

step "build"
cargo build --workspace --bins --locked

step "CRDs are up to date (crdgen --check)"
# The binary from the workspace build above: `cargo run -p` would resolve features for that
# package alone and rebuild half the dependency tree.
"${CARGO_TARGET_DIR:-target}/debug/crdgen" --check

step "Python environments of the client suites (e2e/python-envs.sh, started with the run)"
await python

# qdrant-client's congruence suite keeps one core busy for ~10 minutes (its Python reference
# implementation computes every expected answer; the node is ~10% of it). It needs only the node
# binary, so it runs beside the compilation of the test binaries, which yields to it (nice 5):
# the suite's per-test timeout (120 s) keeps its margin. It needs 127.0.0.1:6333 and :6334 for
# itself; nothing else in this run listens there (every test and suite picks free ports).
background congruence e2e/conformance/run.sh

step "test binaries (cargo test --no-run, beside qdrant-client's congruence suite)"
nice -n 5 cargo test --workspace --no-run --locked

step "qdrant-client's own congruence suite, REST and gRPC (../shared/conformance; skipped when absent)"
await congruence

step "kube-apiserver, etcd and kubectl (e2e/k8s/ensure-binaries.sh, started with the run)"
await k8s

step "Helm chart: lint, render, schemas, CRD copies, examples, start script, kube-apiserver"
# Uses the kube-apiserver 1.20 built above from Debian's source (e2e/k8s), cached under
# ~/.cache/shoal/k8s.
e2e/chart/check.sh

step "unit, property and multi-process tests (cargo nextest, or cargo test without it)"
# The chart check above built the kube-apiserver the operator's end-to-end test uses: never
# let that test skip silently here. cargo-nextest (on the machines CI uses; .config/nextest.toml)
# runs two tests at a time across all test binaries, where cargo test runs the binaries one
# after another (measured: 267 s instead of 358 s); it does not run documentation tests. The
# test binaries are built already: nothing runs beside the tests, whose waits have deadlines.
if cargo nextest --version > /dev/null 2>&1; then
    SHOAL_REQUIRE_K8S=1 cargo nextest run --workspace --locked
    cargo test --workspace --doc --locked
else
    SHOAL_REQUIRE_K8S=1 cargo test --workspace --locked
fi

# The lints need the build directory the tests held until now. They run at the lowest CPU
# priority beside the compatibility suites below, which leave CPU idle (Python processes
# waiting on nodes): the suites keep their speed, the lints take what is left.
background clippy nice -n 19 cargo clippy --workspace --all-targets --locked -- -D warnings

step "Qdrant client compatibility suite (qdrant-client, pytest): one node, and a 3-peer cluster beside it"
# Each run has its own nodes on free ports, its own pytest directory and its own log directory
# (e2e/compat/run.sh).
background compat_cluster env SHOAL_COMPAT_CLUSTER=3 e2e/compat/run.sh
e2e/compat/run.sh
await compat_cluster

step "lints (cargo clippy -D warnings, started after the tests)"
await clippy

step "all steps passed"
