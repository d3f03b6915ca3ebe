#!/usr/bin/env bash
# Check, before anything long starts, that the tools a make target needs are
# installed, and say which Debian/Ubuntu packages to install when they are not.
#
#   hack/prereqs.sh test    go, and cgo for -race: a C compiler (gcc) and the
#                           C library's development files (libc6-dev)
#   hack/prereqs.sh demo    go, and what hack/controlplane.sh runs: openssl,
#                           curl, awk
#   hack/prereqs.sh controlplane   openssl, curl, awk only
#
# Both test and demo also need git when the repository is a git checkout (go
# build stamps the binaries with its VCS status), and the k8s-binaries build
# needs flock, awk and sed (all in a standard Debian install).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
GO=${GO:-go}
APT="make gcc libc6-dev git curl openssl ca-certificates"

missing=()   # "tool: why"
pkgs=()      # Debian packages to install

need() { # TOOL PACKAGE WHY
  command -v "$1" >/dev/null 2>&1 && return 0
  missing+=("$1 not found: $3")
  pkgs+=("$2")
}

need_go() {
  if ! command -v "$GO" >/dev/null 2>&1; then
    missing+=("$GO not found: install Go >= 1.26 from https://go.dev/dl and put its bin directory on PATH")
    return 1
  fi
  if [ -e "$ROOT/.git" ]; then
    need git git "go build stamps binaries with the repository's git status (or set GOFLAGS=-buildvcs=false)"
  fi
}

# -race needs cgo; Go turns cgo off (CGO_ENABLED=0) when it finds no C compiler.
need_cgo() {
  local cgo cc
  cgo=$("$GO" env CGO_ENABLED 2>/dev/null || true)
  cc=$("$GO" env CC 2>/dev/null || true)
  cc=${cc%% *}
  cc=${cc:-gcc}
  if ! command -v "$cc" >/dev/null 2>&1; then
    missing+=("$cc not found: go test -race needs cgo, hence a C compiler (without one 'go env CGO_ENABLED' is 0 and -race fails with \"-race requires cgo\")")
    pkgs+=(gcc libc6-dev)
    return
  fi
  if [ "$cgo" != 1 ]; then
    missing+=("cgo is off ('go env CGO_ENABLED' is '$cgo', set in your environment or with 'go env -w'): go test -race needs it; unset CGO_ENABLED or run 'go env -u CGO_ENABLED'")
    return
  fi
  # The C library's startup files and headers: libc6-dev, which gcc only
  # recommends (so --no-install-recommends leaves it out).
  local crt
  crt=$("$cc" -print-file-name=crt1.o 2>/dev/null || true)
  if [ "${crt#/}" = "$crt" ] || [ ! -e "$crt" ]; then
    missing+=("the C library's development files (crt1.o) not found by $cc: go test -race links with them")
    pkgs+=(libc6-dev)
  fi
}

need_controlplane() {
  need openssl openssl "hack/controlplane.sh makes the demo control plane's certificates with it"
  need curl curl "hack/controlplane.sh and hack/demo.sh wait for /readyz with it"
  need awk mawk "hack/controlplane.sh and hack/k8s-binaries.sh use it"
}

ca_bundle() { # Go reads the system's CA certificates to reach the module proxy
  local f
  [ -n "${SSL_CERT_FILE:-}" ] || [ -n "${SSL_CERT_DIR:-}" ] && return 0
  for f in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/ca-bundle.pem \
    /etc/pki/tls/cacert.pem /etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem /etc/ssl/cert.pem; do
    [ -s "$f" ] && return 0
  done
  echo "prereqs: warning: no CA certificates found (/etc/ssl/certs/ca-certificates.crt); downloads from the" >&2
  echo "  Go module proxy will fail with x509 errors. On Debian/Ubuntu: sudo apt-get install -y ca-certificates" >&2
}

what=${1:?usage: $0 test|demo|controlplane}
case "$what" in
  test) need_go && need_cgo ;;
  demo) need_go || true; need_controlplane ;;
  controlplane) need_controlplane ;;
  *) echo "usage: $0 test|demo|controlplane" >&2; exit 2 ;;
esac
[ "$what" = controlplane ] || ca_bundle

if [ ${#missing[@]} -gt 0 ]; then
  case "$what" in
    controlplane) who=hack/controlplane.sh ;;
    *) who="make $what" ;;
  esac
  declare -A seen=()
  uniq=()
  for p in "${pkgs[@]}"; do
    [ -n "${seen[$p]:-}" ] || { seen[$p]=1; uniq+=("$p"); }
  done
  {
    echo "prereqs: $who cannot run on this machine:"
    for m in "${missing[@]}"; do echo "  - $m"; done
    if [ ${#uniq[@]} -gt 0 ]; then
      echo "On Debian/Ubuntu: sudo apt-get install -y ${uniq[*]}"
    fi
    echo "(all that make test and make demo need: sudo apt-get install -y $APT, and Go >= 1.26)"
  } >&2
  exit 1
fi
