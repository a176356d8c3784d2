#!/usr/bin/env bash
# Qdrant REST compatibility suite: drives a real shoal-node through qdrant-client.
#
#   e2e/compat/run.sh [extra pytest args, e.g. -k search -x]
#
# Env: SHOAL_NODE_BIN  node binary (default: $REPO/target/debug/shoal-node)
#      SHOAL_KEEP_TMP  keep node data dirs after the run
#      SHOAL_COMPAT_CLUSTER=N  run against a cluster of N peers instead of one node
# Node logs are copied to $REPO/target/compat-logs/<run>/, pytest's temporary files go to
# $REPO/target/compat-tmp/<run>/ (<run>: one-node or cluster-N), so a one-node run and a
# cluster run can go side by side.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export REPO

BIN="${SHOAL_NODE_BIN:-$REPO/target/debug/shoal-node}"
if [[ ! -f "$BIN" || ! -x "$BIN" ]]; then
    echo "error: shoal-node binary not found (or not executable) at: $BIN" >&2
    echo "       build it first (cargo build -p shoal-node) or set SHOAL_NODE_BIN" >&2
    exit 2
fi
SHOAL_NODE_BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
export SHOAL_NODE_BIN

# target/compat-venv with requirements.txt (cheap when it is there already).
"$REPO/e2e/python-envs.sh" compat >&2
VENV="$REPO/target/compat-venv"

run="one-node"
if [[ "${SHOAL_COMPAT_CLUSTER:-0}" != 0 ]]; then
    run="cluster-$SHOAL_COMPAT_CLUSTER"
fi
export SHOAL_COMPAT_LOG_DIR="$REPO/target/compat-logs/$run"
mkdir -p "$REPO/target/compat-tmp"

cd "$HERE"
set +e
"$VENV/bin/python" -m pytest -q -p no:cacheprovider --basetemp "$REPO/target/compat-tmp/$run" "$@"
rc=$?
set -e
exit "$rc"
