#!/usr/bin/env bash
# Start / stop a throw-away control plane (etcd + kube-apiserver) on 127.0.0.1
# only, on random free ports, for a local demo. Same flags as controller-runtime
# envtest v0.25.2 uses, plus --advertise-address=127.0.0.1 and
# --endpoint-reconciler-type=none (so no non-loopback interface is needed).
#
#   hack/controlplane.sh start BINDIR WORKDIR   # BINDIR from hack/k8s-binaries.sh
#   hack/controlplane.sh stop WORKDIR
#
# start writes WORKDIR/kubeconfig (admin, group system:masters, client cert),
# WORKDIR/{etcd,kube-apiserver}.{pid,log}, WORKDIR/certs, WORKDIR/etcd-data,
# and returns once /readyz answers 200. Needs: openssl, curl, awk (checked
# first by hack/prereqs.sh, which names the Debian packages).
set -euo pipefail

stop() {
  local W=$1 p pid i
  for p in kube-apiserver etcd; do          # apiserver first, then its storage
    [ -s "$W/$p.pid" ] || continue
    pid=$(cat "$W/$p.pid")
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    rm -f "$W/$p.pid"
  done
}

case "${1:-}" in
  stop) stop "$(readlink -f "${2:?usage: $0 stop WORKDIR}")"; exit 0 ;;
  start) ;;
  *) echo "usage: $0 start BINDIR WORKDIR | stop WORKDIR" >&2; exit 2 ;;
esac

"$(dirname "$0")/prereqs.sh" controlplane

BIN=$(readlink -f "${2:?BINDIR}")
W=$(readlink -f "${3:?WORKDIR}")
ETCD=${ETCD:-$BIN/etcd}
mkdir -p "$W/etcd-data" "$W/certs"
chmod 700 "$W/etcd-data"
C=$W/certs

freeport() { # random loopback port that nothing answers on (racy, as envtest's picker is)
  local p
  while :; do
    p=$((20000 + RANDOM % 40000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}
EP=$(freeport); EPP=$(freeport); AP=$(freeport)

# CA; serving cert for localhost/127.0.0.1; admin client cert (O=system:masters
# is what RBAC lets do everything); service-account signing key pair.
# q runs a command quietly, but shows what it said when it fails.
q() {
  local out
  if ! out=$("$@" 2>&1); then
    echo "controlplane: '$*' failed:" >&2
    [ -z "$out" ] || echo "$out" >&2
    exit 1
  fi
}
q openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj /CN=demo-ca -keyout "$C/ca.key" -out "$C/ca.crt"
q openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout "$C/apiserver.key" -out "$C/apiserver.csr"
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$C/srv.ext"
q openssl x509 -req -in "$C/apiserver.csr" -CA "$C/ca.crt" -CAkey "$C/ca.key" -CAcreateserial -days 7 -extfile "$C/srv.ext" -out "$C/apiserver.crt"
q openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=admin" -keyout "$C/admin.key" -out "$C/admin.csr"
printf 'extendedKeyUsage=clientAuth\n' > "$C/cli.ext"
q openssl x509 -req -in "$C/admin.csr" -CA "$C/ca.crt" -CAkey "$C/ca.key" -CAcreateserial -days 7 -extfile "$C/cli.ext" -out "$C/admin.crt"
q openssl genrsa -out "$C/sa.key" 2048
q openssl rsa -in "$C/sa.key" -pubout -out "$C/sa.pub"

EXTRA_ETCD=()   # etcd >= 3.5 has --unsafe-no-fsync (envtest sets it too)
"$ETCD" --help 2>&1 | grep -qE '^[[:space:]]*--unsafe-no-fsync' && EXTRA_ETCD+=(--unsafe-no-fsync=true)

T0=$(date +%s.%N)
"$ETCD" --data-dir="$W/etcd-data" \
  --listen-client-urls="http://127.0.0.1:$EP" --advertise-client-urls="http://127.0.0.1:$EP" \
  --listen-peer-urls="http://127.0.0.1:$EPP" --initial-advertise-peer-urls="http://127.0.0.1:$EPP" \
  --initial-cluster="default=http://127.0.0.1:$EPP" "${EXTRA_ETCD[@]}" > "$W/etcd.log" 2>&1 &
echo $! > "$W/etcd.pid"

"$BIN/kube-apiserver" \
  --bind-address=127.0.0.1 --secure-port="$AP" \
  --advertise-address=127.0.0.1 --endpoint-reconciler-type=none \
  --etcd-servers="http://127.0.0.1:$EP" \
  --cert-dir="$C" --tls-cert-file="$C/apiserver.crt" --tls-private-key-file="$C/apiserver.key" \
  --client-ca-file="$C/ca.crt" --authorization-mode=RBAC \
  --service-account-issuer="https://127.0.0.1:$AP/" \
  --service-account-key-file="$C/sa.pub" --service-account-signing-key-file="$C/sa.key" \
  --service-cluster-ip-range=10.0.0.0/24 --allow-privileged=true \
  --disable-admission-plugins=ServiceAccount \
  > "$W/kube-apiserver.log" 2>&1 &
echo $! > "$W/kube-apiserver.pid"

cat > "$W/kubeconfig" <<EOK
apiVersion: v1
kind: Config
clusters: [{name: demo, cluster: {server: "https://127.0.0.1:$AP", certificate-authority: "$C/ca.crt"}}]
users: [{name: admin, user: {client-certificate: "$C/admin.crt", client-key: "$C/admin.key"}}]
contexts: [{name: demo, context: {cluster: demo, user: admin}}]
current-context: demo
EOK

for i in $(seq 1 600); do
  if curl -sf --cacert "$C/ca.crt" --cert "$C/admin.crt" --key "$C/admin.key" "https://127.0.0.1:$AP/readyz" >/dev/null 2>&1; then
    echo "ready after $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}')s: apiserver https://127.0.0.1:$AP, etcd http://127.0.0.1:$EP"
    echo "KUBECONFIG=$W/kubeconfig"
    exit 0
  fi
  for p in etcd kube-apiserver; do
    kill -0 "$(cat "$W/$p.pid")" 2>/dev/null || { echo "$p exited:" >&2; tail -20 "$W/$p.log" >&2; stop "$W"; exit 1; }
  done
  sleep 0.1
done
echo "not ready after 60s; logs in $W" >&2
stop "$W"
exit 1
