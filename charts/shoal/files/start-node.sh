#!/bin/sh
# Starts one shoal-node of a StatefulSet: pod <name>-0 founds the cluster, every other pod joins
# it through pod 0. A pod that restarts finds its cluster state (peer id, Raft log) in its data
# dir and rejoins with it; shoal-node then ignores --bootstrap, so passing it every time is safe.
#
# POSIX sh on purpose: the runtime image is debian:bookworm-slim and this script is also run
# outside Kubernetes by e2e/chart/test-start-script.sh.
#
# Environment (the StatefulSet sets all of them; defaults suit a plain container):
#   SHOAL_POD_NAME          this pod's name, `<statefulset>-<ordinal>` (default: the host name)
#   SHOAL_PEER_URI_TEMPLATE p2p URI of a peer, with `{pod}` for the pod name, `{ordinal}` for its
#                           ordinal and `{p2p_port}` for SHOAL__CLUSTER__P2P_PORT, e.g.
#                           http://{pod}.shoal-headless.default.svc.cluster.local:{p2p_port}
#   SHOAL_BOOTSTRAP_URI     optional: join through this URI instead of the template's pod 0
#                           (pod 0 too, which otherwise founds the cluster)
#   SHOAL__CLUSTER__P2P_PORT  this peer's p2p port (default 6335); shoal-node reads it too
#   SHOAL_DATA_DIR          data dir (default /var/lib/shoal)
#   SHOAL_CONFIG_FILE       optional YAML settings file, passed as --config when it exists
#   SHOAL_NODE_BIN          the binary (default: shoal-node on PATH)
# Any arguments are passed on to shoal-node after the ones computed here.
set -eu

die() {
    echo "start-node.sh: $*" >&2
    exit 1
}

pod="${SHOAL_POD_NAME:-$(cat /proc/sys/kernel/hostname)}"
template="${SHOAL_PEER_URI_TEMPLATE:-}"
p2p_port="${SHOAL__CLUSTER__P2P_PORT:-6335}"
data_dir="${SHOAL_DATA_DIR:-/var/lib/shoal}"
bin="${SHOAL_NODE_BIN:-shoal-node}"

[ -n "$template" ] || die "SHOAL_PEER_URI_TEMPLATE is not set"

# A StatefulSet pod is named <statefulset>-<ordinal>; the ordinal is what follows the last dash.
ordinal="${pod##*-}"
base="${pod%-*}"
case "$ordinal" in
    '' | *[!0-9]*) die "pod name '$pod' does not end in -<ordinal>" ;;
esac
[ "$base" != "$pod" ] || die "pod name '$pod' does not end in -<ordinal>"

# peer_uri POD ORDINAL: the template with its placeholders filled in. sed with `|` as the
# separator: the values are DNS names, numbers and ports, which never contain it.
peer_uri() {
    printf '%s\n' "$template" |
        sed -e "s|{pod}|$1|g" -e "s|{ordinal}|$2|g" -e "s|{p2p_port}|$p2p_port|g"
}

uri="$(peer_uri "$pod" "$ordinal")"
set -- --data-dir "$data_dir" --uri "$uri" --peer-name "$pod" "$@"

# Pod 0 founds the cluster unless told to join through someone (SHOAL_BOOTSTRAP_URI: replacing
# pod 0's lost volume without founding a second cluster).
bootstrap=""
if [ -n "${SHOAL_BOOTSTRAP_URI:-}" ]; then
    bootstrap="$SHOAL_BOOTSTRAP_URI"
elif [ "$ordinal" -ne 0 ]; then
    bootstrap="$(peer_uri "$base-0" 0)"
fi
if [ -n "$bootstrap" ]; then
    set -- --bootstrap "$bootstrap" "$@"
fi

if [ -n "${SHOAL_CONFIG_FILE:-}" ] && [ -f "$SHOAL_CONFIG_FILE" ]; then
    set -- --config "$SHOAL_CONFIG_FILE" "$@"
fi

if [ -f "$data_dir/cluster/peer_id" ]; then
    echo "start-node.sh: $pod rejoins as peer $(cat "$data_dir/cluster/peer_id") at $uri" >&2
elif [ -z "$bootstrap" ]; then
    echo "start-node.sh: $pod founds the cluster at $uri" >&2
else
    echo "start-node.sh: $pod joins the cluster through $bootstrap at $uri" >&2
fi

mkdir -p "$data_dir"
exec "$bin" "$@"
