#!/usr/bin/env bash
# Smoke test of the real-apiserver test setup: builds/finds the binaries, starts etcd +
# kube-apiserver in a temp dir, applies the project's CRDs (crds/*.yaml), exercises them
# and a built-in API, and stops everything on exit (also on failure or Ctrl-C).
#
#   e2e/k8s/smoke-test.sh          # KEEP=1 keeps the temp dir (logs) afterwards
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

bin="$("$here/ensure-binaries.sh")"
dir="$(mktemp -d "${TMPDIR:-/tmp}/shoal-k8s-smoke.XXXXXX")"
cleanup() {
    local rc=$?
    "$here/stop-apiserver.sh" "$dir"
    if [[ $rc -ne 0 ]]; then
        echo "smoke-test: FAILED (rc=$rc); logs kept in $dir" >&2
    elif [[ -z "${KEEP:-}" ]]; then
        rm -rf "$dir"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SHOAL_K8S_BIN="$bin" "$here/start-apiserver.sh" "$dir"
k() { "$bin/kubectl" --kubeconfig "$dir/kubeconfig" "$@"; }
step() { printf '==> %s\n' "$*"; }

step "versions"
k version --short 2> /dev/null || k version

step "apply CRDs from crds/"
k apply --server-side -f "$repo/crds/"
k wait --for condition=established --timeout=60s -f "$repo/crds/"
k get crds

step "namespace + built-in API (Deployment, server-side dry run)"
k create namespace shoal-smoke
k -n shoal-smoke apply --dry-run=server -f - << 'EOF'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: smoke
spec:
  replicas: 1
  selector:
    matchLabels: {app: smoke}
  template:
    metadata:
      labels: {app: smoke}
    spec:
      containers:
      - name: smoke
        image: busybox
        command: ["sleep", "3600"]
EOF

step "custom resources: a valid ShardPlacement is stored, an invalid one is rejected"
k -n shoal-smoke apply -f - << 'EOF'
apiVersion: shoal.dev/v1alpha1
kind: ShardPlacement
metadata:
  name: smoke
spec:
  cluster: {service: shoal, port: 6334}
  collection: smoke
  shardId: 0
  replicas: [peer-0, peer-1]
EOF
# Defaults from the schema must have been applied by the server.
approval="$(k -n shoal-smoke get shardplacement smoke -o jsonpath='{.spec.approval}')"
[[ "$approval" == Automatic ]] || { echo "expected defaulted spec.approval=Automatic, got '$approval'" >&2; exit 1; }
if out="$(k -n shoal-smoke apply --dry-run=server -f - 2>&1 << 'EOF'
apiVersion: shoal.dev/v1alpha1
kind: ShardPlacement
metadata:
  name: bad
spec:
  cluster: {service: shoal, port: 6334}
  collection: smoke
  replicas: []
EOF
)"; then
    echo "expected the invalid ShardPlacement to be rejected, but: $out" >&2
    exit 1
fi
echo "rejected as expected: $out"
k get shardplacements -A
k get reshardings -A

echo "smoke-test: OK"
