"""Maps the component folders to their import names; everything else is in pyproject.toml.

Folders are named for what they are (``operator/``, ``node-agent/``, ...); import names are
``kubesandbox_<component>`` so that nothing shadows the standard library (the folder
``operator/`` must not become the package ``operator``). Subpackages are found by walking each
folder for ``__init__.py``, so adding a module never means editing a list here.

Install with ``pip install -e . --config-settings editable_mode=strict`` (what ``make deps``
does): strict mode lays out a link tree by import name, which mypy and import-linter read.
"""

from pathlib import Path

from setuptools import setup

ROOTS = {
    "kubesandbox_api": "api",
    "kubesandbox_cli": "cli",
    "kubesandbox_common": "common",
    "kubesandbox_devenv": "devenv",
    "kubesandbox_gateway": "gateway",
    "kubesandbox_kube": "kube",
    "kubesandbox_node": "node-agent",
    "kubesandbox_operator": "operator",
    "kubesandbox_protocol": "protocol",
}

SKIP = {"__pycache__", "tests", "target"}


def _is_package(root: Path) -> bool:
    """A mapped folder is a package when it holds Python code (see NAMESPACE_ROOTS)."""
    return (root / "__init__.py").is_file() or (root / "py.typed").is_file()


def _packages() -> list[str]:
    found = []
    for name, folder in ROOTS.items():
        root = Path(folder)
        if not _is_package(root):
            continue
        found.append(name)
        for init in sorted(root.rglob("*/__init__.py")):
            rel = init.parent.relative_to(root)
            if SKIP.intersection(rel.parts):
                continue
            found.append(".".join((name, *rel.parts)))
    return found


setup(
    package_dir={name: folder for name, folder in ROOTS.items() if _is_package(Path(folder))},
    packages=_packages(),
)
