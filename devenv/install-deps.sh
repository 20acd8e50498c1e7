#!/usr/bin/env bash
# Installs what the test suite and the embedded environment need, idempotently: each step in
# devenv/deps.d/ (run in name order) checks before it installs and caches by version under
# $KUBESANDBOX_CACHE, so a second run costs seconds and a fresh machine gets everything.
set -euo pipefail
cd "$(dirname "$0")/.."
export KUBESANDBOX_CACHE="${KUBESANDBOX_CACHE:-$HOME/.cache/kubesandbox}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(bash devenv/cargo-target-dir)}"
export GOTOOLCHAIN=local
mkdir -p "$KUBESANDBOX_CACHE"
for step in devenv/deps.d/*.sh; do
  start=$SECONDS
  bash "$step"
  printf 'install-deps: %s done in %ss\n' "$(basename "$step")" "$((SECONDS - start))" >&2
done
