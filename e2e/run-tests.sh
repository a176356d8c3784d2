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

step "Helm chart: lint, render, schemas, CRD copies, examples, start script, kube-apiserver"
# Builds a real kube-apiserver 1.20 from Debian's source on first use (e2e/k8s, ~6 min), cached
# under ~/.cache/shoal/k8s.
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
