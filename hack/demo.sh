#!/usr/bin/env bash
# make demo: a throwaway control plane on loopback, the bridge with
# config/examples/demo.yaml and its embedded NATS, and the CloudEvents it
# publishes printed as they arrive while ConfigMaps and Secrets are created,
# changed and deleted. Ctrl-C stops everything it started.
#
#   hack/demo.sh BINDIR    (BINDIR holds kube-apiserver, etcd and kubectl; see hack/k8s-binaries.sh)
#
# A BINDIR of your own (KUBEBUILDER_ASSETS) without kubectl: the kubectl on
# PATH is used.
set -euo pipefail

BIN=$(readlink -f "${1:?usage: $0 BINDIR}")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$ROOT/.demo
BRIDGE=$ROOT/bin/bridge
KUBECTL=$BIN/kubectl
if [ ! -x "$KUBECTL" ] && command -v kubectl >/dev/null 2>&1; then
  KUBECTL=$(command -v kubectl)
fi
for b in "$BRIDGE" "$KUBECTL" "$BIN/kube-apiserver" "$BIN/etcd"; do
  [ -x "$b" ] || {
    echo "demo: $b is missing; run 'make demo' (it builds everything it needs into its own cache;" >&2
    echo "  with KUBEBUILDER_ASSETS set it builds nothing: that directory needs kube-apiserver and etcd," >&2
    echo "  and kubectl there or on PATH)" >&2
    exit 1
  }
done

freeport() {
  local p
  while :; do
    p=$((20000 + RANDOM % 40000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}

PIDS=()
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "demo: stopping"
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  "$ROOT/hack/controlplane.sh" stop "$WORK/cp" >/dev/null 2>&1 || true
  echo "demo: logs are in $WORK"
}
trap cleanup EXIT INT TERM

rm -rf "$WORK"
mkdir -p "$WORK"
echo "demo: starting etcd and kube-apiserver on 127.0.0.1 (a few seconds)"
"$ROOT/hack/controlplane.sh" start "$BIN" "$WORK/cp"
export KUBECONFIG=$WORK/cp/kubeconfig
k() { "$KUBECTL" -n demo "$@"; }
say() { printf '\n\033[1m» %s\033[0m\n' "$*"; sleep "${PAUSE:-2}"; }

NATS_PORT=$(freeport)
HTTP_PORT=$(freeport)
NATS=nats://127.0.0.1:$NATS_PORT
echo "demo: starting the bridge (embedded NATS at $NATS, health at http://127.0.0.1:$HTTP_PORT/readyz, log in $WORK/bridge.log)"
"$BRIDGE" run --config "$ROOT/config/examples/demo.yaml" --embedded-nats "127.0.0.1:$NATS_PORT" \
  --listen "127.0.0.1:$HTTP_PORT" >"$WORK/bridge.log" 2>&1 &
PIDS+=($!)
for i in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break
  kill -0 "${PIDS[0]}" 2>/dev/null || { echo "demo: the bridge exited:" >&2; tail -20 "$WORK/bridge.log" >&2; exit 1; }
  sleep 0.1
done
"$BRIDGE" tail --nats "$NATS" &
PIDS+=($!)
sleep 1

cat <<EOF

The bridge watches namespace demo for three watchers (config/examples/demo.yaml):
  Deployment web   <- ConfigMap web-config and Secret web-credentials, by name
  Deployment api   <- ConfigMaps with labels app=api,tier in (backend), debounced 500ms
  ConfigMap audit  <- every ConfigMap and Secret in the namespace
Each change below is followed by the reconcile requests it causes, as CloudEvents
read back from NATS. (Also try: nats --server $NATS sub 'depbridge.reconcile.>')
EOF

say "kubectl create namespace demo"
"$KUBECTL" create namespace demo >/dev/null
say "kubectl -n demo create configmap web-config --from-literal=replicas=2"
k create configmap web-config --from-literal=replicas=2 >/dev/null
say "kubectl -n demo create secret generic web-credentials --from-literal=password=hunter2   (its data never leaves the bridge)"
k create secret generic web-credentials --from-literal=password=hunter2 >/dev/null
say "kubectl -n demo create configmap api-settings, then label it app=api tier=backend (it enters the selector)"
k create configmap api-settings --from-literal=timeout=5s >/dev/null
k label configmap api-settings app=api tier=backend >/dev/null
say "kubectl -n demo patch configmap web-config (replicas=3)"
k patch configmap web-config -p '{"data":{"replicas":"3"}}' >/dev/null
say "kubectl -n demo label configmap api-settings tier=frontend --overwrite (it leaves the selector)"
k label configmap api-settings tier=frontend --overwrite >/dev/null
say "kubectl -n demo delete secret web-credentials"
k delete secret web-credentials >/dev/null

echo
echo "demo: now changing web-config every 5 seconds; Ctrl-C to stop"
n=0
while :; do
  sleep 5
  n=$((n + 1))
  say "kubectl -n demo patch configmap web-config (tick=$n)"
  k patch configmap web-config -p "{\"data\":{\"tick\":\"$n\"}}" >/dev/null
done
