#!/usr/bin/env bash
# The guest boot image: the pinned Debian cloud kernel (apt-get download + dpkg-deb -x, cached
# under $KUBESANDBOX_CACHE/kernel/<version>/) and the base initramfs with the guest agent at
# /init (cached by content hash under $KUBESANDBOX_CACHE/bootimage/<hash>/). Runs after
# 40-guest-agent.sh; `python -m kubesandbox_node.bootimage` takes the agent from the last
# stdout line of guest-agent/build.sh, which is cached and fast on a second run.
set -euo pipefail
if [ -f guest-agent/build.sh ]; then
  .venv/bin/python -m kubesandbox_node.bootimage >/dev/null
else
  echo "50-bootimage: guest-agent/build.sh not there yet; fetching the kernel and the stand-in image only" >&2
  .venv/bin/python -m kubesandbox_node.bootimage --standin ready >/dev/null
fi
