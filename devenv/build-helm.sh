#!/usr/bin/env bash
# Builds the pinned Helm 3 CLI from the Go module proxy (no release tarball is reachable from
# these machines) into $KUBESANDBOX_CACHE/bin/helm-$HELM_VERSION/helm, written only once the
# build succeeded (build into a temporary dir, then rename). Idempotent: a cached binary of the
# pinned version is reused; prints the directory. The version is pinned in devenv/binaries.py
# (HELM_VERSION), which passes it here.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE="${KUBESANDBOX_CACHE:-$HOME/.cache/kubesandbox}"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

out="$CACHE/bin/helm-$HELM_VERSION"
log() { printf 'build-helm: %s\n' "$*" >&2; }

mkdir -p "$CACHE/bin"
exec 9>"$CACHE/bin/.helm-build.lock"
flock 9
if [ -x "$out/helm" ]; then
  log "helm $HELM_VERSION cached in $out"
  echo "$out"
  exit 0
fi
work="$(mktemp -d "$CACHE/tmp.helm.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log "building helm $HELM_VERSION in $work"
# `go install module@version` builds with the module's own go.mod (its pinned dependencies);
# the version stamp is what `helm version` prints.
GOBIN="$work/out" go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
"$work/out/helm" version --short >&2
rm -rf "$out"
mv "$work/out" "$out"
echo "$out"
