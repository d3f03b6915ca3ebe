#!/usr/bin/env bash
# Build a real kube-apiserver and etcd from the Go module proxy (no GitHub, no GCS,
# no container images, no setup-envtest download) into OUTDIR, for envtest
# (KUBEBUILDER_ASSETS=OUTDIR) and for a local demo control plane.
#
#   usage: hack/k8s-binaries.sh OUTDIR     (the Makefile passes $HOME/.cache/depbridge/k8s-<k8s>-etcd-<etcd>)
#          hack/k8s-binaries.sh --check DIR
#   env:   K8S_VERSION  (default v1.37.1)  k8s.io/kubernetes tag; staging modules use v0.<minor>.<patch>
#          ETCD_VERSION (default v3.7.3)   go.etcd.io/etcd/server/v3 tag
#          WITH_KUBECTL=1                  also build kubectl (same k8s version; for the demo)
#
# OUTDIR is this script's own: a binary there whose --version matches is kept,
# and nothing is downloaded or compiled for it; one of another version is
# replaced. So never pass a directory of binaries of your own as OUTDIR.
# Measured on 2 cores / 24 GiB, cold module and build caches: about 6 minutes
# and 3.9 GiB (1 GB modules, 2.9 GB build cache).
#
# --check DIR is for such a directory (the Makefile uses it when you set
# KUBEBUILDER_ASSETS): it only checks that kube-apiserver and etcd exist
# there and are executable, fails saying which is missing if not, notes
# versions other than the pinned ones, and never builds, writes or replaces
# anything in DIR.
#
# Needs only: go (>= the go line of k8s.io/kubernetes' go.mod: 1.26.0 for v1.37.x),
# the Go module proxy, and coreutils/sed/awk/grep/flock. No cgo (binaries are static).
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.1}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
STAGING_VERSION=v0.${K8S_VERSION#v1.}          # v1.37.1 -> v0.37.1

# check DIR: binaries of the user's; look, never touch.
check() {
  local dir=$1 b v bad=0
  if [ ! -d "$dir" ]; then
    echo "k8s-binaries: KUBEBUILDER_ASSETS=$dir is not a directory." >&2
    echo "  Point it at a directory holding kube-apiserver and etcd (e.g. from setup-envtest)," >&2
    echo "  or unset it to have make build kube-apiserver $K8S_VERSION and etcd $ETCD_VERSION into its own cache." >&2
    return 1
  fi
  for b in kube-apiserver etcd; do
    if [ ! -f "$dir/$b" ] || [ ! -x "$dir/$b" ]; then
      echo "k8s-binaries: $dir/$b is missing or not executable (KUBEBUILDER_ASSETS=$dir)." >&2
      bad=1
    fi
  done
  if [ $bad = 1 ]; then
    echo "  make uses the binaries in KUBEBUILDER_ASSETS as they are and builds none there. Put kube-apiserver" >&2
    echo "  and etcd in it, or unset KUBEBUILDER_ASSETS to have make build kube-apiserver $K8S_VERSION and" >&2
    echo "  etcd $ETCD_VERSION into its own cache (\$HOME/.cache/depbridge)." >&2
    return 1
  fi
  v=$("$dir/kube-apiserver" --version 2>/dev/null || true); v=${v%%$'\n'*}
  echo "kube-apiserver in $dir: ${v:-version unknown}"
  [[ "$v" == *"Kubernetes $K8S_VERSION"* ]] || echo "  note: the tests are pinned to $K8S_VERSION; using yours as it is" >&2
  v=$("$dir/etcd" --version 2>/dev/null || true); v=${v%%$'\n'*}
  echo "etcd in $dir: ${v:-version unknown}"
  [[ "$v" == *"${ETCD_VERSION#v}"* ]] || echo "  note: the tests are pinned to etcd $ETCD_VERSION; using yours as it is" >&2
  if [ "${WITH_KUBECTL:-0}" = 1 ] && [ ! -x "$dir/kubectl" ]; then
    if command -v kubectl >/dev/null 2>&1; then
      echo "kubectl: not in $dir; the demo uses $(command -v kubectl)"
    else
      echo "  note: no kubectl in $dir or on PATH; make test does not need it, make demo does" >&2
    fi
  fi
  echo "KUBEBUILDER_ASSETS=$dir (yours; nothing built or changed there)"
}

if [ "${1:-}" = --check ]; then
  check "${2:?usage: $0 --check DIR}"
  exit
fi

OUT=${1:?usage: $0 OUTDIR | --check DIR}

command -v go >/dev/null || { echo "k8s-binaries: go is not on PATH; install Go >= 1.26 (https://go.dev/dl)" >&2; exit 1; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
export CGO_ENABLED=0

# Two builds into the same OUTDIR (two clones, two make targets) would race:
# the second waits for the first and then finds its binaries in place.
exec 9>"$OUT/.lock"
if ! flock -n 9; then
  echo "k8s-binaries: another build into $OUT is running; waiting for it"
  flock 9
fi

fail() {
  cat >&2 <<EOM

k8s-binaries: could not build kube-apiserver $K8S_VERSION / etcd $ETCD_VERSION into $OUT.
  The build needs the Go module proxy ($(go env GOPROXY)) and about 4 GiB of disk
  for the module and build caches. Check network access to the proxy and free space,
  then run 'make k8s-binaries' again; or point KUBEBUILDER_ASSETS at a directory that
  already holds kube-apiserver and etcd binaries of these versions (make then only
  checks them, and builds nothing there).
EOM
}
trap 'rc=$?; rm -rf "$WORK"; [ $rc -eq 0 ] || fail; exit $rc' EXIT

# have BINARY EXPECTED-SUBSTRING [VERSION-ARGS...]
# (The output is captured before matching: with pipefail, `| grep -q` can
# fail the check with SIGPIPE when grep exits before the binary is done.)
have() {
  local b=$1 want=$2 out; shift 2
  [ -x "$OUT/$b" ] || return 1
  out=$("$OUT/$b" "${@:---version}" 2>/dev/null) || true
  [[ "$out" == *"$want"* ]]
}

# scratch module that pins the dependency and lists the binaries as tools
new_module() { # DIR MODULE@VERSION TOOLPKG...
  local d=$1 req=$2 t; shift 2
  mkdir -p "$d"
  printf 'module local/%s\n\ngo 1.26.0\n' "$(basename "$d")" > "$d/go.mod"
  (cd "$d" && go mod edit -require="$req" && for t in "$@"; do go mod edit -tool="$t"; done)
}

K8S_CMDS=()
if have kube-apiserver "Kubernetes $K8S_VERSION"; then
  echo "kube-apiserver $K8S_VERSION already in $OUT"
else
  K8S_CMDS+=(kube-apiserver)
fi
if [ "${WITH_KUBECTL:-0}" = 1 ]; then
  if have kubectl "Client Version: $K8S_VERSION" version --client; then
    echo "kubectl $K8S_VERSION already in $OUT"
  else
    K8S_CMDS+=(kubectl)
  fi
fi

if [ ${#K8S_CMDS[@]} -gt 0 ]; then
  echo "building ${K8S_CMDS[*]} $K8S_VERSION from the Go module proxy into $OUT"
  echo "  (once per machine: about 6-8 minutes and 4 GiB of caches on 2 cores; later runs reuse it)"
  M=$WORK/kube-apiserver-build
  new_module "$M" "k8s.io/kubernetes@$K8S_VERSION" "${K8S_CMDS[@]/#/k8s.io/kubernetes/cmd/}"
  cd "$M"
  # k8s.io/kubernetes requires its staging repos as v0.0.0 and replaces them with
  # ./staging/... paths, which a dependent module ignores: map each to its
  # published tag. The list is read from that version's own go.mod.
  # (go mod download here fetches only k8s.io/kubernetes' .info/.mod/.zip)
  if ! go mod download -json "k8s.io/kubernetes@$K8S_VERSION" > "$WORK/k8s.json"; then
    cat "$WORK/k8s.json" >&2
    echo "cannot download k8s.io/kubernetes@$K8S_VERSION from the module proxy" >&2
    exit 1
  fi
  KMOD=$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' "$WORK/k8s.json")
  [ -s "$KMOD" ] || { echo "no go.mod for k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
  STAGING=$(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$KMOD" | sort -u)
  [ -n "$STAGING" ] || { echo "no staging modules found in $KMOD" >&2; exit 1; }
  for m in $STAGING; do go mod edit -replace="$m=$m@$STAGING_VERSION"; done
  go mod tidy
  MINOR=${K8S_VERSION#v1.}; MINOR=${MINOR%%.*}
  V=k8s.io/component-base/version
  for c in "${K8S_CMDS[@]}"; do
    go build -trimpath -o "$OUT/$c.tmp" -ldflags "-s -w \
      -X $V.gitVersion=$K8S_VERSION -X $V.gitMajor=1 -X $V.gitMinor=$MINOR \
      -X $V.gitTreeState=clean -X $V.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
      "k8s.io/kubernetes/cmd/$c"
    mv "$OUT/$c.tmp" "$OUT/$c"
  done
fi

if have etcd "etcd Version: ${ETCD_VERSION#v}"; then
  echo "etcd $ETCD_VERSION already in $OUT"
else
  echo "building etcd $ETCD_VERSION"
  # `go install go.etcd.io/etcd/server/v3@VERSION` is refused (its go.mod has
  # replace directives), so build it from a scratch module as well.
  M=$WORK/etcd-build
  new_module "$M" "go.etcd.io/etcd/server/v3@$ETCD_VERSION" go.etcd.io/etcd/server/v3
  cd "$M"
  go mod tidy
  go build -trimpath -o "$OUT/etcd.tmp" -ldflags "-s -w" go.etcd.io/etcd/server/v3
  mv "$OUT/etcd.tmp" "$OUT/etcd"
fi

"$OUT/kube-apiserver" --version
v=$("$OUT/etcd" --version); echo "${v%%$'\n'*}"
if [ -x "$OUT/kubectl" ]; then v=$("$OUT/kubectl" version --client 2>/dev/null || true); echo "${v%%$'\n'*}"; fi
echo "KUBEBUILDER_ASSETS=$OUT"
