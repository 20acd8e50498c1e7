#!/usr/bin/env bash
# Builds the guest agent as a static executable (no dynamic loader, no shared libraries: it
# runs as /init of any image) and prints its path on the last line of stdout.
#
# The musl target cannot be installed here, so we link glibc statically: -C target-feature=
# +crt-static on the gnu target. RUSTFLAGS apply to the target artefacts only because
# --target is explicit (build scripts and proc macros stay dynamic, as they must).
# Incremental: cargo's own caching in $CARGO_TARGET_DIR is the cache.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(bash "$(dirname "$0")/../devenv/cargo-target-dir")}"
target=x86_64-unknown-linux-gnu
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --manifest-path "$here/Cargo.toml" --release --locked -p kubesandbox-agent --target "$target" >&2
bin="$CARGO_TARGET_DIR/$target/release/kubesandbox-agent"
# Static means: no program interpreter and no DT_NEEDED libraries.
if readelf -l "$bin" | grep -q 'program interpreter' || readelf -d "$bin" | grep -q NEEDED; then
  echo "build.sh: $bin is not statically linked:" >&2
  readelf -l -d "$bin" | grep -E 'interpreter|NEEDED' >&2
  exit 1
fi
echo "$bin"
