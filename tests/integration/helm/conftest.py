"""The real Helm CLI (built once by ``devenv/build-helm.sh``, cached by version) on the chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubesandbox_devenv.binaries import REPO_ROOT, ensure_helm
from kubesandbox_devenv.helm import Helm

SYSTEM = "kubesandbox-system"
DEVENV_VALUES = REPO_ROOT / "devenv" / "values-devenv.yaml"
JsonDict = dict[str, Any]


@pytest.fixture(scope="session")
def helm_binary() -> Path:
    return ensure_helm()


@pytest.fixture
def helm(helm_binary: Path, tmp_path: Path) -> Helm:
    """helm without a cluster (template, lint)."""
    return Helm(helm_binary, home=tmp_path / "helm-home")


def documents(text: str) -> list[JsonDict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render(helm: Helm, values: JsonDict | None = None, *extra: str) -> list[JsonDict]:
    return documents(helm.template(SYSTEM, values, extra=extra).stdout)


def find(objects: list[JsonDict], kind: str, name: str) -> JsonDict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} rendered"
    return matches[0]


def kinds(objects: list[JsonDict]) -> set[str]:
    return {o["kind"] for o in objects}
