#!/usr/bin/env bash
# Builds the control-plane binaries the tests and the embedded environment run:
# kube-apiserver, kube-scheduler, kube-controller-manager and kubectl from
# k8s.io/kubernetes, and etcd from go.etcd.io/etcd/server/v3, all through the Go
# module proxy (no release tarball is reachable from these machines).
#
# k8s.io/kubernetes is not meant to be required as a module: its go.mod points
# every k8s.io/<staging> module at ./staging/src/... . A wrapper module copies
# that replace list, rewriting each entry to the published k8s.io/<staging>
# v0.Y.Z, which is the same source.
#
# Output: $KUBESANDBOX_CACHE/bin/k8s-$K8S_VERSION/ and .../etcd-$ETCD_VERSION/,
# written only when complete (build into a temporary dir, then rename), so an
# interrupted build never leaves a half-populated cache entry.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.35.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.5}"
CACHE="${KUBESANDBOX_CACHE:-$HOME/.cache/kubesandbox}"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

k8s_dir="$CACHE/bin/k8s-$K8S_VERSION"
etcd_dir="$CACHE/bin/etcd-$ETCD_VERSION"
k8s_bins=(kube-apiserver kube-scheduler kube-controller-manager kubectl)

log() { printf 'build-binaries: %s\n' "$*" >&2; }

build_k8s() {
  local work minor
  work="$(mktemp -d "$CACHE/tmp.k8s.XXXXXX")"
  minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local staging="v0.${K8S_VERSION#v1.}"
  log "building Kubernetes $K8S_VERSION in $work"
  (
    cd "$work"
    go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
    local upstream_mod
    upstream_mod="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod"
    {
      echo "module kubesandbox.dev/k8sbuild"
      echo
      echo "go $(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')"
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      echo "replace ("
      sed -nE 's#^[[:space:]]*(k8s\.io/[^[:space:]]+) => \./staging/src/k8s\.io/[^[:space:]]+$#\t\1 => \1 '"$staging"'#p' "$upstream_mod"
      echo ")"
    } > go.mod
    cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
    go mod tidy -e >/dev/null 2>&1 || true
    local pkg="k8s.io/component-base/version"
    local ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
    mkdir -p out
    for b in "${k8s_bins[@]}"; do
      log "go build $b"
      go build -trimpath -ldflags "$ldflags" -o "out/$b" "k8s.io/kubernetes/cmd/$b"
    done
  )
  rm -rf "$k8s_dir"; mv "$work/out" "$k8s_dir"; rm -rf "$work"
}

build_etcd() {
  local work
  work="$(mktemp -d "$CACHE/tmp.etcd.XXXXXX")"
  log "building etcd $ETCD_VERSION in $work"
  (
    cd "$work"
    printf 'module kubesandbox.dev/etcdbuild\n\ngo %s\n' "$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')" > go.mod
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
    mkdir -p out
    go build -trimpath -ldflags "-s -w" -o out/etcd go.etcd.io/etcd/server/v3
  )
  rm -rf "$etcd_dir"; mv "$work/out" "$etcd_dir"; rm -rf "$work"
}

mkdir -p "$CACHE/bin"
# One build at a time per cache (make deps and a test session may both get here on a fresh
# machine): the second waits, then finds everything cached.
exec 9>"$CACHE/bin/.build.lock"
flock 9
have_all=1
for b in "${k8s_bins[@]}"; do [ -x "$k8s_dir/$b" ] || have_all=0; done
if [ "$have_all" = 1 ]; then log "Kubernetes $K8S_VERSION cached in $k8s_dir"; else build_k8s; fi
if [ -x "$etcd_dir/etcd" ]; then log "etcd $ETCD_VERSION cached in $etcd_dir"; else build_etcd; fi
echo "$k8s_dir"
echo "$etcd_dir"
