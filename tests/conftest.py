"""Fixtures shared by every test directory.

``control_plane`` is one real control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, two registered Nodes) for the whole session, built from the cached binaries
(building them first, right after collection and outside any test's timeout, when a selected
test needs them: about 20 minutes, once per machine). Likewise the Dockerfile's images, when a
selected test installs the chart on the real node (about 3 minutes from an empty cache). Tests
that use it are marked ``controlplane`` automatically, so ``-m "not controlplane"`` deselects
them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kubesandbox_devenv.binaries import REPO_ROOT, Binaries, ensure_binaries

if TYPE_CHECKING:
    # Imported where used: it pulls in the kubernetes client (~0.4 s), which unit runs skip.
    from kubesandbox_devenv.controlplane import ControlPlane

CRDS_DIR = REPO_ROOT / "crds"
SESSION_NODES = 2


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "control_plane" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.controlplane)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build missing binaries now, outside any test's timeout (a first build takes ~20 min)."""
    wanted = any(item.get_closest_marker("controlplane") for item in session.items)
    if wanted and Binaries.in_cache().missing():
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("building the control-plane binaries (devenv/build-binaries.sh)")
        ensure_binaries()
    installs = any(item.nodeid.startswith(INSTALLS_THE_CHART) for item in session.items)
    if installs and not session.config.option.collectonly:
        _build_images(session)


INSTALLS_THE_CHART = (
    "tests/e2e/",
    "tests/integration/helm/test_real_node.py",
    "tests/integration/devenv/test_cli.py",
)
"""Tests that install the chart on the real node (``installed.installed_system`` or ``make
up``), which builds the images of this tree first."""


def _build_images(session: pytest.Session) -> None:
    """The images of this tree into the build cache (base-image stand-ins included), pushed to
    a throwaway registry; the tests' own builds then find them and only push."""
    import tempfile

    from kubesandbox_devenv.images import build_images
    from kubesandbox_devenv.registry import Registry

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("building the images of this tree (cached by content)")
    with tempfile.TemporaryDirectory(prefix="ksb-images-") as scratch:
        registry = Registry(Path(scratch)).start()
        try:
            build_images(registry.host)
        finally:
            registry.stop()


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A running control plane; ``.kubeconfig``, ``.admin``, ``.api_client()``, ``.kubectl()``."""
    from kubesandbox_devenv.controlplane import ControlPlane

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
