#!/usr/bin/env bash
# The guest agent: a static binary built by guest-agent/build.sh (cargo's incremental build in
# $CARGO_TARGET_DIR is the cache, so a second run costs a second). Its path is the last line
# of build.sh's output; the boot-image step calls build.sh again to get it.
set -euo pipefail
bash guest-agent/build.sh >/dev/null
