#!/usr/bin/env bash
# Starts etcd + a real kube-apiserver on 127.0.0.1 (free ports picked at run time),
# with all state under DIR, and waits until the apiserver's /readyz is ok.
#
#   e2e/k8s/start-apiserver.sh DIR
#   e2e/k8s/stop-apiserver.sh DIR      # always call this (e.g. from a trap on EXIT)
#
# Writes into DIR:
#   kubeconfig   admin (token in group system:masters), server https://127.0.0.1:PORT, CA pinned
#   env          shell vars: KUBECONFIG K8S_SERVER K8S_TOKEN K8S_CA_FILE ETCD_ENDPOINT K8S_BIN
#   pids         the two PIDs (kube-apiserver, then etcd), one a line
#   ca.crt, tokens.csv, sa.key, etcd.log, kube-apiserver.log, etcd/ (data)
#
# Binaries come from e2e/k8s/ensure-binaries.sh (built on first use, then cached);
# set SHOAL_K8S_BIN to a dir holding etcd, kube-apiserver and kubectl to skip that.
# SHOAL_K8S_START_TIMEOUT (default 90) bounds the wait for readiness, in seconds.
#
# Only an apiserver and etcd run: no controller-manager, scheduler or kubelet. So
# Deployments never get pods, namespaces stay Terminating when deleted, and the
# ServiceAccount admission plugin is off (no default ServiceAccounts get created).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
die() { echo "start-apiserver: ERROR: $*" >&2; exit 1; }
log() { echo "start-apiserver: $*" >&2; }

[[ $# -eq 1 ]] || die "usage: $0 DIR"
mkdir -p "$1"
dir="$(cd "$1" && pwd)"
[[ -s "$dir/pids" ]] && die "$dir/pids exists: already started? run stop-apiserver.sh $dir first"
timeout_s="${SHOAL_K8S_START_TIMEOUT:-90}"

bin="${SHOAL_K8S_BIN:-}"
if [[ -z "$bin" ]]; then
    bin="$("$here/ensure-binaries.sh")" || die "ensure-binaries.sh failed"
fi
for b in etcd kube-apiserver kubectl; do
    [[ -x "$bin/$b" ]] || die "$bin/$b missing"
done
command -v openssl > /dev/null || die "openssl not found (apt-get install openssl)"
command -v python3 > /dev/null || die "python3 not found"

started_ns=$(date +%s%N)

# Free ports: bind to port 0 and let the kernel pick (all sockets open at once so the
# three differ). Tiny race until etcd/apiserver bind them; fine on a test machine.
read -r etcd_port peer_port api_port < <(python3 - << 'EOF'
import socket
ss = []
for _ in range(3):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); ss.append(s)
print(*(s.getsockname()[1] for s in ss))
EOF
)

# ---- credentials
umask 077
token="$(openssl rand -hex 24)"
echo "$token,admin,admin,\"system:masters\"" > "$dir/tokens.csv"
openssl genrsa -out "$dir/sa.key" 2048 2> /dev/null
openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2> /dev/null
# CA + serving cert for 127.0.0.1/localhost, so clients can verify TLS (rustls too).
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=shoal-e2e-ca" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2> /dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$dir/apiserver.key" -out "$dir/apiserver.csr" 2> /dev/null
cat > "$dir/apiserver.ext" << 'EOF'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
EOF
openssl x509 -req -in "$dir/apiserver.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 30 -extfile "$dir/apiserver.ext" -out "$dir/apiserver.crt" 2> /dev/null
umask 022

server="https://127.0.0.1:$api_port"
cat > "$dir/kubeconfig" << EOF
apiVersion: v1
kind: Config
clusters:
- name: shoal-e2e
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 < "$dir/ca.crt")
users:
- name: admin
  user:
    token: $token
contexts:
- name: shoal-e2e
  context:
    cluster: shoal-e2e
    user: admin
    namespace: default
current-context: shoal-e2e
EOF
chmod 600 "$dir/kubeconfig"
cat > "$dir/env" << EOF
KUBECONFIG=$dir/kubeconfig
K8S_SERVER=$server
K8S_TOKEN=$token
K8S_CA_FILE=$dir/ca.crt
ETCD_ENDPOINT=http://127.0.0.1:$etcd_port
K8S_BIN=$bin
EOF

# ---- processes
pids=()
fail() {
    echo "start-apiserver: ERROR: $*" >&2
    for f in etcd.log kube-apiserver.log; do
        [[ -f "$dir/$f" ]] && { echo "---- last lines of $dir/$f" >&2; tail -n 30 "$dir/$f" >&2; }
    done
    "$here/stop-apiserver.sh" "$dir" >&2 || true
    exit 1
}
write_pids() { printf '%s\n' "${pids[@]}" > "$dir/pids.tmp" && mv "$dir/pids.tmp" "$dir/pids"; }

mkdir -p "$dir/etcd"
"$bin/etcd" --name shoal-e2e --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "shoal-e2e=http://127.0.0.1:$peer_port" \
    --unsafe-no-fsync --log-level warn \
    < /dev/null > "$dir/etcd.log" 2>&1 &
pids=("$!")
write_pids

# kube-apiserver first in the pids file so that it is stopped before etcd.
"$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
    --secure-port "$api_port" --insecure-port 0 \
    --tls-cert-file "$dir/apiserver.crt" --tls-private-key-file "$dir/apiserver.key" \
    --client-ca-file "$dir/ca.crt" \
    --token-auth-file "$dir/tokens.csv" \
    --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$dir/sa.pub" \
    --service-account-signing-key-file "$dir/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --disable-admission-plugins ServiceAccount \
    --allow-privileged=true \
    --profiling=false \
    --v=1 \
    < /dev/null > "$dir/kube-apiserver.log" 2>&1 &
pids=("$!" "${pids[@]}")
write_pids

# ---- wait for readiness
deadline=$((SECONDS + timeout_s))
until "$bin/kubectl" --kubeconfig "$dir/kubeconfig" --request-timeout=5s get --raw=/readyz > /dev/null 2>&1; do
    for p in "${pids[@]}"; do
        kill -0 "$p" 2> /dev/null || fail "process $p ($(
            [[ $p == "${pids[0]}" ]] && echo kube-apiserver || echo etcd)) exited during startup"
    done
    ((SECONDS < deadline)) || fail "kube-apiserver not ready within ${timeout_s}s"
    sleep 0.5
done
ms=$((($(date +%s%N) - started_ns) / 1000000))
log "ready in $((ms / 1000)).$(printf %03d $((ms % 1000))) s: $server (etcd http://127.0.0.1:$etcd_port), kubeconfig $dir/kubeconfig"
