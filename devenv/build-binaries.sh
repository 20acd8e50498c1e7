#!/usr/bin/env bash
# Builds the Kubernetes binaries the tests and the embedded environment run, all through the
# Go module proxy (no release tarball is reachable from these machines):
#
#   control-plane  kube-apiserver, kube-scheduler, kube-controller-manager and kubectl from
#                  k8s.io/kubernetes, and etcd from go.etcd.io/etcd/server/v3;
#   node           kubelet and kube-proxy from k8s.io/kubernetes (same version, same wrapper
#                  module, so the Go build cache the control plane filled is reused), and
#                  crictl from sigs.k8s.io/cri-tools (the devenv's real node tears its Pods
#                  down through the CRI with it).
#
# Usage: build-binaries.sh [control-plane|node|all]   (default: all)
#
# k8s.io/kubernetes is not meant to be required as a module: its go.mod points
# every k8s.io/<staging> module at ./staging/src/... . A wrapper module copies
# that replace list, rewriting each entry to the published k8s.io/<staging>
# v0.Y.Z, which is the same source.
#
# Output: $KUBESANDBOX_CACHE/bin/k8s-$K8S_VERSION/ (control plane), .../etcd-$ETCD_VERSION/,
# .../k8s-node-$K8S_VERSION/ (kubelet, kube-proxy) and .../crictl-$CRICTL_VERSION/, each written
# only when complete (build into a temporary dir, then rename), so an interrupted build never
# leaves a half-populated cache entry, and each checked on its own: adding the node binaries
# to a machine that has the control plane cached builds only the node binaries.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.35.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.5}"
CRICTL_VERSION="${CRICTL_VERSION:-v1.34.0}"
CACHE="${KUBESANDBOX_CACHE:-$HOME/.cache/kubesandbox}"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

what="${1:-all}"
case "$what" in
  control-plane|node|all) ;;
  *) echo "usage: $0 [control-plane|node|all]" >&2; exit 2 ;;
esac

k8s_dir="$CACHE/bin/k8s-$K8S_VERSION"
node_dir="$CACHE/bin/k8s-node-$K8S_VERSION"
etcd_dir="$CACHE/bin/etcd-$ETCD_VERSION"
crictl_dir="$CACHE/bin/crictl-$CRICTL_VERSION"
k8s_bins=(kube-apiserver kube-scheduler kube-controller-manager kubectl)
node_bins=(kubelet kube-proxy)

log() { printf 'build-binaries: %s\n' "$*" >&2; }
go_line() { go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/'; }

# build_k8s OUT_DIR BINARY... : the wrapper module in a temporary dir, one `go build` per
# binary of k8s.io/kubernetes/cmd/, then OUT_DIR replaced by the results at once.
build_k8s() {
  local out="$1"; shift
  local work minor
  work="$(mktemp -d "$CACHE/tmp.k8s.XXXXXX")"
  minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local staging="v0.${K8S_VERSION#v1.}"
  log "building $* of Kubernetes $K8S_VERSION in $work"
  (
    cd "$work"
    go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
    local upstream_mod
    upstream_mod="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod"
    {
      echo "module kubesandbox.dev/k8sbuild"
      echo
      echo "go $(go_line)"
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      echo "replace ("
      sed -nE 's#^[[:space:]]*(k8s\.io/[^[:space:]]+) => \./staging/src/k8s\.io/[^[:space:]]+$#\t\1 => \1 '"$staging"'#p' "$upstream_mod"
      echo ")"
    } > go.mod
    {
      printf '//go:build tools\n\npackage tools\n\nimport (\n'
      for b in "$@"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$b"; done
      printf ')\n'
    } > tools.go
    go mod tidy -e >/dev/null 2>&1 || true
    local pkg="k8s.io/component-base/version"
    local ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
    mkdir -p out
    for b in "$@"; do
      log "go build $b"
      go build -trimpath -ldflags "$ldflags" -o "out/$b" "k8s.io/kubernetes/cmd/$b"
    done
  )
  rm -rf "$out"; mv "$work/out" "$out"; rm -rf "$work"
}

# build_module OUT_DIR MODULE@VERSION PACKAGE BINARY : a released Go main package through a
# one-line wrapper module (the module's own go.mod decides its dependencies).
build_module() {
  local out="$1" module="$2" package="$3" binary="$4" work
  work="$(mktemp -d "$CACHE/tmp.mod.XXXXXX")"
  log "building $module in $work"
  (
    cd "$work"
    printf 'module kubesandbox.dev/wrapper\n\ngo %s\n' "$(go_line)" > go.mod
    go get "$module" >/dev/null
    mkdir -p out
    go build -trimpath -ldflags "-s -w" -o "out/$binary" "$package"
  )
  rm -rf "$out"; mv "$work/out" "$out"; rm -rf "$work"
}

all_in() { local dir="$1"; shift; for b in "$@"; do [ -x "$dir/$b" ] || return 1; done; }

mkdir -p "$CACHE/bin"
# One build at a time per cache (make deps and a test session may both get here on a fresh
# machine): the second waits, then finds everything cached.
exec 9>"$CACHE/bin/.build.lock"
flock 9
if [ "$what" != node ]; then
  if all_in "$k8s_dir" "${k8s_bins[@]}"; then log "Kubernetes $K8S_VERSION cached in $k8s_dir"
  else build_k8s "$k8s_dir" "${k8s_bins[@]}"; fi
  if all_in "$etcd_dir" etcd; then log "etcd $ETCD_VERSION cached in $etcd_dir"
  else build_module "$etcd_dir" "go.etcd.io/etcd/server/v3@$ETCD_VERSION" go.etcd.io/etcd/server/v3 etcd; fi
  echo "$k8s_dir"
  echo "$etcd_dir"
fi
if [ "$what" != control-plane ]; then
  if all_in "$node_dir" "${node_bins[@]}"; then log "kubelet, kube-proxy $K8S_VERSION cached in $node_dir"
  else build_k8s "$node_dir" "${node_bins[@]}"; fi
  if all_in "$crictl_dir" crictl; then log "crictl $CRICTL_VERSION cached in $crictl_dir"
  else build_module "$crictl_dir" "sigs.k8s.io/cri-tools@$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl crictl; fi
  echo "$node_dir"
  echo "$crictl_dir"
fi
