#!/usr/bin/env bash
# Runs every test of the project, the way CI does. Needs only the Rust toolchain and python3;
# the Python packages of the compatibility suite are installed into target/compat-venv.
#
#   e2e/run-tests.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Each step prints the time since the start, so a slow run shows where its minutes went.
started=$SECONDS
step() { printf '\n==> [%4ds] %s\n' "$((SECONDS - started))" "$*"; }

# The kube-apiserver that the chart check and the operator's end-to-end test use is built from
# source on first use (~8 min on 2 cores; cached after). It builds beside the Rust compilation,
# which leaves a core idle for long stretches (one large crate's front end, the links); the
# chart check waits for it. Its own process group, so that a failed run stops it too.
k8s_log="$(mktemp)"
setsid --wait e2e/k8s/ensure-binaries.sh > /dev/null 2> "$k8s_log" &
k8s_pid=$!
trap 'if [[ -n "$k8s_pid" ]]; then kill -TERM -- "-$k8s_pid" 2> /dev/null || true; fi; rm -f "$k8s_log"' EXIT

step "formatting (cargo fmt --check)"
cargo fmt --all -- --check

step "lints (cargo clippy -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --bins --locked

step "CRDs are up to date (crdgen --check)"
# The binary from the workspace build above: `cargo run -p` would resolve features for that
# package alone and rebuild half the dependency tree.
"${CARGO_TARGET_DIR:-target}/debug/crdgen" --check

step "kube-apiserver, etcd and kubectl (e2e/k8s/ensure-binaries.sh, started with the run)"
if ! wait "$k8s_pid"; then
    cat "$k8s_log" >&2
    echo "building the kube-apiserver failed (its output is above)" >&2
    exit 1
fi
k8s_pid=""
cat "$k8s_log"

step "Helm chart: lint, render, schemas, CRD copies, examples, start script, kube-apiserver"
# Uses the kube-apiserver 1.20 built above from Debian's source (e2e/k8s), cached under
# ~/.cache/shoal/k8s.
e2e/chart/check.sh

step "unit, property and multi-process tests (cargo test)"
# The chart check above built the kube-apiserver the operator's end-to-end test uses: never
# let that test skip silently here.
SHOAL_REQUIRE_K8S=1 cargo test --workspace --locked

step "Qdrant client compatibility suite (qdrant-client, pytest), one node"
e2e/compat/run.sh

step "Qdrant client compatibility suite against a 3-peer cluster"
SHOAL_COMPAT_CLUSTER=3 e2e/compat/run.sh

step "qdrant-client's own congruence suite, REST and gRPC (../shared/conformance; skipped when absent)"
# Needs 127.0.0.1:6333 and :6334 for itself: it runs alone, after everything else.
e2e/conformance/run.sh

step "all steps passed"
