#!/usr/bin/env bash
# Qdrant REST compatibility suite: drives a real shoal-node through qdrant-client.
#
#   e2e/compat/run.sh [extra pytest args, e.g. -k search -x]
#
# Env: SHOAL_NODE_BIN  node binary (default: $REPO/target/debug/shoal-node)
#      SHOAL_KEEP_TMP  keep node data dirs after the run
#      SHOAL_COMPAT_CLUSTER=N  run against a cluster of N peers instead of one node
# Node logs are copied to $REPO/target/compat-logs/.
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

cd "$HERE"
set +e
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
exit "$rc"
