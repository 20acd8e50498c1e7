"""Where the pinned Kubernetes binaries live, and building them when they are missing.

The binaries are built from the Go module proxy by ``devenv/build-binaries.sh`` into a cache
keyed by version: the control plane (``$KUBESANDBOX_CACHE/bin/k8s-<version>/``,
``.../etcd-<version>/``) and, for the real node (``realnode``), kubelet and kube-proxy
(``.../k8s-node-<version>/``) and crictl (``.../crictl-<version>/``). The two sets are checked
and built separately: control-plane tests never wait for a kubelet build. Nothing here
downloads anything itself: when a binary is missing we run that script, which is idempotent
and writes a cache entry only once it is complete.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, fields
from pathlib import Path

KUBERNETES_VERSION = "v1.35.4"
ETCD_VERSION = "v3.6.5"
CRICTL_VERSION = "v1.34.0"
"""cri-tools has no v1.35.0 on the module proxy; crictl speaks CRI v1, which containerd 1.6
serves."""

HELM_VERSION = "v3.22.0"
"""The chart's CLI (``helm/kubesandbox``), built by ``devenv/build-helm.sh``."""

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO_ROOT / "devenv" / "build-binaries.sh"
HELM_BUILD_SCRIPT = REPO_ROOT / "devenv" / "build-helm.sh"


class BinariesMissingError(RuntimeError):
    """The binaries are not in the cache and building them failed."""


def cache_dir() -> Path:
    """``$KUBESANDBOX_CACHE``, by default ``~/.cache/kubesandbox`` (as in the Makefile)."""
    configured = os.environ.get("KUBESANDBOX_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "kubesandbox"


class _BinarySet:
    """A dataclass whose fields are all paths of binaries."""

    def all(self) -> tuple[Path, ...]:
        return tuple(getattr(self, item.name) for item in fields(self))  # type: ignore[arg-type]

    def missing(self) -> list[Path]:
        return [path for path in self.all() if not os.access(path, os.X_OK)]


@dataclass(frozen=True)
class Binaries(_BinarySet):
    """Absolute paths of every binary the control plane runs."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path

    @classmethod
    def in_cache(cls, cache: Path | None = None) -> Binaries:
        root = (cache or cache_dir()) / "bin"
        k8s = root / f"k8s-{KUBERNETES_VERSION}"
        return cls(
            etcd=root / f"etcd-{ETCD_VERSION}" / "etcd",
            kube_apiserver=k8s / "kube-apiserver",
            kube_controller_manager=k8s / "kube-controller-manager",
            kube_scheduler=k8s / "kube-scheduler",
            kubectl=k8s / "kubectl",
        )


@dataclass(frozen=True)
class NodeBinaries(_BinarySet):
    """Absolute paths of the binaries of the real node we build (containerd, runc and the CNI
    plugins come from Debian's packages)."""

    kubelet: Path
    kube_proxy: Path
    crictl: Path

    @classmethod
    def in_cache(cls, cache: Path | None = None) -> NodeBinaries:
        root = (cache or cache_dir()) / "bin"
        node = root / f"k8s-node-{KUBERNETES_VERSION}"
        return cls(
            kubelet=node / "kubelet",
            kube_proxy=node / "kube-proxy",
            crictl=root / f"crictl-{CRICTL_VERSION}" / "crictl",
        )


def _run_build(what: str, cache: Path | None, show_progress: bool) -> tuple[int, str]:
    return _run_script(BUILD_SCRIPT, [what], cache, show_progress)


def _run_script(
    script: Path, args: list[str], cache: Path | None, show_progress: bool
) -> tuple[int, str]:
    env = dict(os.environ, GOTOOLCHAIN="local")
    if cache is not None:
        env["KUBESANDBOX_CACHE"] = str(cache)
    env.setdefault("KUBESANDBOX_CACHE", str(cache_dir()))
    env["K8S_VERSION"] = KUBERNETES_VERSION
    env["ETCD_VERSION"] = ETCD_VERSION
    env["CRICTL_VERSION"] = CRICTL_VERSION
    env["HELM_VERSION"] = HELM_VERSION
    # The scripts serialise concurrent builds themselves (flock on the cache).
    result = subprocess.run(
        ["bash", str(script), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=None if show_progress else subprocess.PIPE,
        text=True,
        check=False,
    )
    return result.returncode, "\n".join((result.stderr or "").splitlines()[-30:])


def _failed(returncode: int, missing: list[Path], tail: str) -> BinariesMissingError:
    return BinariesMissingError(
        f"{BUILD_SCRIPT} exited {returncode}; missing: "
        f"{', '.join(map(str, missing)) or 'none'}\n{tail}"
    )


def ensure_node_binaries(cache: Path | None = None, *, show_progress: bool = False) -> NodeBinaries:
    """kubelet, kube-proxy and crictl, building them first if any is missing (with a warm Go
    build cache about 2 minutes; from nothing about as long as the control plane)."""
    binaries = NodeBinaries.in_cache(cache)
    if not binaries.missing():
        return binaries
    returncode, tail = _run_build("node", cache, show_progress)
    if returncode != 0 or binaries.missing():
        raise _failed(returncode, binaries.missing(), tail)
    return binaries


def ensure_binaries(cache: Path | None = None, *, show_progress: bool = False) -> Binaries:
    """The cached binaries, building them first (minutes, once per machine) if any is missing.

    ``show_progress`` lets the build script's progress through to our stderr (the CLI);
    otherwise it is captured and only its tail is reported on failure (tests).
    """
    binaries = Binaries.in_cache(cache)
    if not binaries.missing():
        return binaries
    returncode, tail = _run_build("control-plane", cache, show_progress)
    if returncode != 0 or binaries.missing():
        raise _failed(returncode, binaries.missing(), tail)
    return binaries


def helm_binary(cache: Path | None = None) -> Path:
    """Where the pinned helm lives: ``$KUBESANDBOX_CACHE/bin/helm-<version>/helm``."""
    return (cache or cache_dir()) / "bin" / f"helm-{HELM_VERSION}" / "helm"


def ensure_helm(cache: Path | None = None, *, show_progress: bool = False) -> Path:
    """The cached helm, built first (about 2 minutes with a cold module cache) when missing."""
    binary = helm_binary(cache)
    if os.access(binary, os.X_OK):
        return binary
    returncode, tail = _run_script(HELM_BUILD_SCRIPT, [], cache, show_progress)
    if returncode != 0 or not os.access(binary, os.X_OK):
        raise BinariesMissingError(
            f"{HELM_BUILD_SCRIPT} exited {returncode}; missing: {binary}\n{tail}"
        )
    return binary
