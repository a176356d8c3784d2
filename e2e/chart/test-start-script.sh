#!/usr/bin/env bash
# Runs the chart's node start script (charts/shoal/files/start-node.sh) outside Kubernetes, the
# way the StatefulSet runs it, for pods shoal-0, shoal-1 and shoal-2 on loopback, and checks what
# a person would check with `kubectl exec … curl /cluster`:
#
#   1. all three start at once (podManagementPolicy: Parallel) and form one 3-peer cluster with
#      one leader: pod 0 founds it, pods 1 and 2 join through pod 0;
#   2. pod 1, stopped with SIGTERM and started again with the same environment, rejoins with the
#      same peer id and the cluster still has exactly 3 peers;
#   3. pod 0, killed with SIGKILL and started again (no --bootstrap), rejoins the same cluster
#      instead of founding a new one.
#
#   e2e/chart/test-start-script.sh [path/to/shoal-node]
#
# The binary defaults to $SHOAL_NODE_BIN, then target/debug/shoal-node (copied to a temporary
# dir first, so a rebuild cannot swap it mid-test). Ports are chosen free at run time. Every
# process started here is killed on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

script="$PWD/charts/shoal/files/start-node.sh"
src_bin="${1:-${SHOAL_NODE_BIN:-target/debug/shoal-node}}"
[[ -x "$src_bin" ]] || { echo "test-start-script: no shoal-node binary at $src_bin" >&2; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/shoal-start-script.XXXXXX")"
cp "$src_bin" "$work/shoal-node"

declare -A pids=()
cleanup() {
    local status=$?
    {
        for pid in "${pids[@]}"; do kill -KILL "$pid" || true; done
        wait || true
    } 2> /dev/null
    if ((status != 0)); then
        for log in "$work"/shoal-*.log; do
            [[ -f "$log" ]] || continue
            echo "---- last lines of $log" >&2
            tail -n 25 "$log" >&2
        done
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
    echo "test-start-script: FAIL: $*" >&2
    exit 1
}

# Nine ports that are free now: REST, p2p and client gRPC for each of the three pods.
read -r -a ports < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(9):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)
http_port() { echo "${ports[$((3 * $1))]}"; }
p2p_port() { echo "${ports[$((3 * $1 + 1))]}"; }
grpc_port() { echo "${ports[$((3 * $1 + 2))]}"; }

# start ORDINAL: the environment the StatefulSet gives pod shoal-ORDINAL, with loopback
# addresses and per-pod ports instead of the pod's DNS name and the fixed container ports. In
# Kubernetes every pod has the same ports, so the URI template alone names pod 0; here the
# ports differ, so pods 1 and 2 get the bootstrap URI explicitly. (validate.py runs the script
# with the rendered StatefulSet's environment to check the template path.) Output goes to
# $work/shoal-ORDINAL.log, appended across restarts.
start() {
    local i="$1"
    (
        export SHOAL_POD_NAME="shoal-$i"
        export SHOAL_PEER_URI_TEMPLATE='http://127.0.0.1:{p2p_port}'
        export SHOAL_DATA_DIR="$work/data-$i"
        export SHOAL_NODE_BIN="$work/shoal-node"
        export SHOAL__SERVICE__HOST=127.0.0.1
        SHOAL__SERVICE__HTTP_PORT="$(http_port "$i")"
        SHOAL__CLUSTER__P2P_PORT="$(p2p_port "$i")"
        SHOAL__SERVICE__GRPC_PORT="$(grpc_port "$i")"
        export SHOAL__SERVICE__HTTP_PORT SHOAL__CLUSTER__P2P_PORT SHOAL__SERVICE__GRPC_PORT
        if ((i != 0)); then
            SHOAL_BOOTSTRAP_URI="http://127.0.0.1:$(p2p_port 0)"
            export SHOAL_BOOTSTRAP_URI
        fi
        exec sh "$script" --log-level info
    ) >> "$work/shoal-$i.log" 2>&1 &
    pids[$i]=$!
}

# cluster_view ORDINAL: "peer_id leader commit npeers names" from GET /cluster, or nothing if
# the peer is not ready or does not answer yet.
cluster_view() {
    python3 - "$(http_port "$1")" <<'EOF' 2> /dev/null || true
import json, sys, urllib.request
port = sys.argv[1]
with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
    assert r.status == 200
with urllib.request.urlopen(f"http://127.0.0.1:{port}/cluster", timeout=2) as r:
    body = json.load(r)
c = body["result"]
peers = c["peers"]
names = ",".join(sorted(p["name"] for p in peers.values()))
r = c["raft_info"]
print(c["peer_id"], r["leader"], r["commit"], len(peers), names)
EOF
}

# wait_cluster WHAT: polls every pod until each is ready, lists the 3 pods as peers, and all
# agree on one leader and have committed the same log index; fails after 90 s.
wait_cluster() {
    local what="$1" deadline=$((SECONDS + 90)) views
    while ((SECONDS < deadline)); do
        for i in 0 1 2; do
            kill -0 "${pids[$i]}" 2> /dev/null || fail "$what: shoal-$i exited"
        done
        views=()
        for i in 0 1 2; do views+=("$(cluster_view "$i")"); done
        local ok=1 leader="" commit=""
        for v in "${views[@]}"; do
            read -r _id l c n names <<< "$v"
            if [[ -z "$v" || "$n" != 3 || "$names" != "shoal-0,shoal-1,shoal-2" || "$l" == null ]]; then
                ok=0
            elif [[ -z "$leader" ]]; then
                leader="$l" commit="$c"
            elif [[ "$l" != "$leader" || "$c" != "$commit" ]]; then
                ok=0
            fi
        done
        if ((ok)); then
            echo "test-start-script: $what: 3 peers, leader $leader, commit $commit ($((SECONDS - start_time)) s)"
            return 0
        fi
        sleep 0.3
    done
    fail "$what: no agreed 3-peer cluster within 90 s; views: ${views[*]}"
}

peer_id_of() { cluster_view "$1" | cut -d' ' -f1; }

# restart ORDINAL SIGNAL: stops the pod's process with SIGNAL, waits for it, starts it again.
restart() {
    local i="$1" sig="$2"
    kill "-$sig" "${pids[$i]}"
    wait "${pids[$i]}" 2> /dev/null || true
    start "$i"
}

start_time=$SECONDS
for i in 0 1 2; do start "$i"; done
wait_cluster "formation"
grep -q "shoal-0 founds the cluster" "$work/shoal-0.log" || fail "shoal-0 did not found the cluster"
for i in 1 2; do
    grep -q "shoal-$i joins the cluster through" "$work/shoal-$i.log" || fail "shoal-$i did not join"
done
ids=()
for i in 0 1 2; do ids+=("$(peer_id_of "$i")"); done
[[ $(printf '%s\n' "${ids[@]}" | sort -u | wc -l) == 3 ]] || fail "peer ids are not distinct: ${ids[*]}"

restart 1 TERM
wait_cluster "shoal-1 restarted after SIGTERM"
[[ "$(peer_id_of 1)" == "${ids[1]}" ]] || fail "shoal-1 came back as $(peer_id_of 1), was ${ids[1]}"
grep -q "shoal-1 rejoins as peer ${ids[1]}" "$work/shoal-1.log" || fail "shoal-1 did not rejoin"

restart 0 KILL
wait_cluster "shoal-0 restarted after SIGKILL"
[[ "$(peer_id_of 0)" == "${ids[0]}" ]] || fail "shoal-0 came back as $(peer_id_of 0), was ${ids[0]}"
grep -q "shoal-0 rejoins as peer ${ids[0]}" "$work/shoal-0.log" || fail "shoal-0 did not rejoin"
for i in 1 2; do
    [[ "$(peer_id_of "$i")" == "${ids[$i]}" ]] || fail "shoal-$i changed its peer id"
done

echo "test-start-script: 3 passed, 0 failed (formation, restart of shoal-1, restart of shoal-0)"
