#!/usr/bin/env bash
# helm, built from the Go module proxy and cached by version (devenv/build-helm.sh; the version
# is pinned in devenv/binaries.py, which passes it to the script).
set -euo pipefail
.venv/bin/python -m kubesandbox_devenv.helm >/dev/null
