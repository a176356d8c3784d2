#!/usr/bin/env bash
# Starts a local cluster of N peers (default 3) on loopback and stops them all on Ctrl-C.
#
#   e2e/local-cluster.sh [N]
#
# Peer i serves REST on 6333 + 10*i and p2p on 6335 + 10*i, with data in ./data/peer-i.
# SHOAL_NODE_BIN picks the binary (default: a release build, built first if needed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

n="${1:-3}"
bin="${SHOAL_NODE_BIN:-target/release/shoal-node}"
if [[ -z "${SHOAL_NODE_BIN:-}" ]]; then
    cargo build --release -p shoal-node
fi

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

for ((i = 0; i < n; i++)); do
    http=$((6333 + 10 * i))
    grpc=$((6334 + 10 * i))
    p2p=$((6335 + 10 * i))
    args=(--host 127.0.0.1 --data-dir "data/peer-$i" --http-port "$http" --grpc-port "$grpc" --p2p-port "$p2p"
          --uri "http://127.0.0.1:$p2p" --peer-name "peer-$i")
    if ((i > 0)); then
        args+=(--bootstrap "http://127.0.0.1:6335")
    fi
    mkdir -p "data/peer-$i"
    "$bin" "${args[@]}" > "data/peer-$i.log" 2>&1 &
    pids+=($!)
    echo "peer-$i: REST http://127.0.0.1:$http  gRPC http://127.0.0.1:$grpc  p2p http://127.0.0.1:$p2p  log data/peer-$i.log"
    if ((i == 0)); then
        # Let the founder come up before the others bootstrap from it.
        for _ in $(seq 50); do
            curl -fs "http://127.0.0.1:$http/readyz" > /dev/null 2>&1 && break
            sleep 0.2
        done
    fi
done
echo "cluster of $n peers running; GET http://127.0.0.1:6333/cluster shows it. Ctrl-C stops it."
wait
