#!/usr/bin/env bash
# Stops what start-apiserver.sh DIR started (PIDs from DIR/pids: kube-apiserver, etcd).
# SIGTERM, then SIGKILL after 10 s. Safe to call twice, or on a DIR where start failed.
#
#   e2e/k8s/stop-apiserver.sh DIR [--rm]     # --rm also deletes DIR afterwards
set -uo pipefail

[[ $# -ge 1 ]] || { echo "usage: $0 DIR [--rm]" >&2; exit 2; }
dir="$1"
pidfile="$dir/pids"

if [[ -f "$pidfile" ]]; then
    mapfile -t pids < "$pidfile"
    for pid in "${pids[@]}"; do
        [[ "$pid" =~ ^[0-9]+$ ]] || continue
        # Only signal it if it is still one of ours (PIDs get reused).
        if [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qE 'etcd|kube-apiserver'; then
            kill -TERM "$pid" 2> /dev/null || true
            for _ in $(seq 100); do
                kill -0 "$pid" 2> /dev/null || break
                # A zombie child of the caller counts as stopped.
                [[ "$(awk '{print $3}' "/proc/$pid/stat" 2> /dev/null)" == Z ]] && break
                sleep 0.1
            done
            if kill -0 "$pid" 2> /dev/null && [[ "$(awk '{print $3}' "/proc/$pid/stat" 2> /dev/null)" != Z ]]; then
                echo "stop-apiserver: $pid did not stop on SIGTERM; SIGKILL" >&2
                kill -KILL "$pid" 2> /dev/null || true
            fi
        fi
    done
    rm -f "$pidfile"
fi

if [[ "${2:-}" == "--rm" ]]; then
    rm -rf "$dir"
fi
exit 0
