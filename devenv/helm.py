"""The pinned Helm CLI and the kubesandbox chart (``helm/kubesandbox``).

Helm is built from the Go module proxy by ``devenv/build-helm.sh`` (no release tarball is
reachable from these machines) into ``$KUBESANDBOX_CACHE/bin/helm-<version>/helm``, once per
version (pinned in :mod:`.binaries`: ``HELM_VERSION``, ``helm_binary``, ``ensure_helm``);
``make deps`` does it (``devenv/deps.d/35-helm.sh``), and ``ensure_helm`` on first use.
:class:`Helm` runs it against one kubeconfig with its own configuration, cache and data
directories, so nothing of the user's ``~/.config/helm`` leaks into a test.

Run as ``python -m kubesandbox_devenv.helm``: builds Helm when missing and prints its path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubesandbox_devenv.binaries import REPO_ROOT, cache_dir, ensure_helm

CHART_DIR = REPO_ROOT / "helm" / "kubesandbox"
RELEASE = "kubesandbox"
RBAC_TEMPLATES = (
    "templates/sandbox-roles.yaml",
    "templates/gateway-rbac.yaml",
    "templates/gateway-discovery.yaml",
)
"""The users' roles and the gateway's identity: what the host-process environment applies
(``services.apply_rbac``) without installing the rest of the chart."""
TIMEOUT = 300.0


class HelmError(subprocess.CalledProcessError):
    """helm failed; the message includes what it said."""

    def __str__(self) -> str:
        return f"{' '.join(map(str, self.cmd))} exited {self.returncode}: {self.stderr.strip()}"


@dataclass(frozen=True)
class Helm:
    """helm with one kubeconfig and a private home (``home``: config, cache and data)."""

    binary: Path
    home: Path
    kubeconfig: Path | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("KUBECONFIG", None)
        env.update(
            HELM_CONFIG_HOME=str(self.home / "config"),
            HELM_CACHE_HOME=str(self.home / "cache"),
            HELM_DATA_HOME=str(self.home / "data"),
        )
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(self.binary), *args]
        result = subprocess.run(
            argv,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=TIMEOUT,
        )
        if check and result.returncode != 0:
            raise HelmError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def template(
        self,
        namespace: str,
        values: Mapping[str, Any] | None = None,
        *,
        show_only: Sequence[str] = (),
        extra: Sequence[str] = (),
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """``helm template`` of the chart (without its CRDs unless ``extra`` asks)."""
        args = ["template", RELEASE, str(CHART_DIR), "--namespace", namespace]
        args += values_args(values)
        for template in show_only:
            args += ["--show-only", template]
        return self.run(*args, *extra, check=check)


def values_args(values: Mapping[str, Any] | None, prefix: str = "") -> list[str]:
    """Values as ``--set-json`` arguments, one per leaf (no file to clean up): a map given here
    merges into the same map of a ``--values`` file instead of replacing it. Dots in keys
    (``docker.io``, ``kubesandbox.dev/node-agent``) are escaped as ``--set`` paths want."""
    args: list[str] = []
    for key, value in (values or {}).items():
        path = prefix + str(key).replace(".", "\\.")
        if isinstance(value, Mapping) and value:
            args += values_args(value, f"{path}.")
        else:
            args += ["--set-json", f"{path}={json.dumps(value)}"]
    return args


def rbac_manifests(namespace: str, cache: Path | None = None) -> str:
    """The chart's RBAC for users and the gateway, rendered for ``namespace``."""
    helm = Helm(ensure_helm(cache), home=(cache or cache_dir()) / "helm-home")
    return helm.template(namespace, show_only=RBAC_TEMPLATES).stdout


def main() -> int:
    print(ensure_helm(show_progress=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
