#!/usr/bin/env bash
# Runs the official qdrant-client v1.18.0 congruence suite (../shared/conformance, REST and gRPC
# variants) against a fresh shoal-node, and fails if a test fails that is not listed in
# known-failures.txt (each line: a pytest node id; what Shoal does not serve yet). Listed tests
# that pass are reported, so the list only shrinks.
#
#   e2e/conformance/run.sh [extra pytest args]
#
# The suite hard-codes localhost:6333 (REST) and :6334 (gRPC): nothing else may listen there.
# Skips (exit 0) when ../shared/conformance is absent.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
suite="$repo/../shared/conformance/run-qdrant-client-suite.sh"
if [[ ! -x "$suite" ]]; then
    echo "conformance: ../shared/conformance is absent; skipped"
    exit 0
fi
bin="${SHOAL_NODE_BIN:-$repo/target/debug/shoal-node}"
[[ -x "$bin" ]] || { echo "conformance: no node binary at $bin (cargo build first)" >&2; exit 2; }
for port in 6333 6334; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "conformance: something already listens on 127.0.0.1:$port; the suite needs it" >&2
        exit 2
    fi
done

work="$(mktemp -d)"
node_pid=""
cleanup() {
    if [[ -n "$node_pid" ]]; then
        kill "$node_pid" 2>/dev/null || true
        wait "$node_pid" 2>/dev/null || true
    fi
    mkdir -p "$repo/target/conformance-logs"
    cp "$work/node.log" "$repo/target/conformance-logs/node.log" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

"$bin" --host 127.0.0.1 --data-dir "$work/data" --http-port 6333 --grpc-port 6334 \
    --p2p-port 0 > "$work/node.log" 2>&1 &
node_pid=$!
ready=0
for _ in $(seq 150); do
    if curl -fs http://127.0.0.1:6333/readyz > /dev/null 2>&1; then ready=1; break; fi
    kill -0 "$node_pid" 2>/dev/null || break
    sleep 0.2
done
if [[ $ready -ne 1 ]]; then
    echo "conformance: the node did not become ready; its log:" >&2
    tail -40 "$work/node.log" >&2
    exit 1
fi

junit="$work/junit.xml"
set +e
CONFORMANCE_JUNIT="$junit" "$suite" --grpc -- -p no:randomly "$@" > "$work/suite.log" 2>&1
set -e
tail -1 "$work/suite.log"
[[ -f "$junit" ]] || { echo "conformance: the suite did not run:" >&2; tail -40 "$work/suite.log" >&2; exit 1; }

python3 - "$junit" "$here/known-failures.txt" <<'PY'
import sys
import xml.etree.ElementTree as ET

junit, known_path = sys.argv[1], sys.argv[2]
known = {
    line.strip()
    for line in open(known_path)
    if line.strip() and not line.startswith("#")
}
failed, passed = set(), set()
for case in ET.parse(junit).iter("testcase"):
    module = case.get("classname", "").split(".")[-1]
    node_id = f"{module}::{case.get('name')}"
    if case.find("skipped") is not None:
        continue
    (failed if case.find("failure") is not None or case.find("error") is not None else passed).add(node_id)
new = sorted(failed - known)
fixed = sorted(known & passed)
print(f"conformance: {len(passed)} passed, {len(failed)} failed ({len(failed & known)} known)")
for node_id in fixed:
    print(f"  now passes (remove from known-failures.txt): {node_id}")
if new:
    print("conformance: unexpected failures:")
    for node_id in new:
        print(f"  {node_id}")
    sys.exit(1)
PY
