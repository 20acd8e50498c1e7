#!/usr/bin/env bash
# kube-apiserver, kube-scheduler, kube-controller-manager, kubectl and etcd, and for the real
# node kubelet, kube-proxy and crictl, built from the Go module proxy and cached by version
# (see devenv/build-binaries.sh).
set -euo pipefail
bash devenv/build-binaries.sh all >/dev/null
