"""Fixtures shared by every test directory.

``control_plane`` is one real control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, two registered Nodes) for the whole session, built from the cached binaries
(or building them first: minutes, once per machine). Tests that use it are marked
``controlplane`` automatically, so ``-m "not controlplane"`` deselects them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kubesandbox_devenv.binaries import REPO_ROOT, ensure_binaries
from kubesandbox_devenv.controlplane import ControlPlane

CRDS_DIR = REPO_ROOT / "crds"
SESSION_NODES = 2


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "control_plane" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.controlplane)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A running control plane; ``.kubeconfig``, ``.admin``, ``.api_client()``, ``.kubectl()``."""
    binaries = ensure_binaries()
    state_dir = tmp_path_factory.mktemp("control-plane")
    with ControlPlane(state_dir, nodes=SESSION_NODES, binaries=binaries) as plane:
        yield plane


@pytest.fixture(scope="session")
def installed_crds(control_plane: ControlPlane) -> list[Path]:
    """Every CRD in ``crds/`` applied and Established (none when the folder is absent)."""
    if not CRDS_DIR.is_dir():
        return []
    return control_plane.install_crds(CRDS_DIR)
