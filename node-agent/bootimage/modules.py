"""Which kernel modules the base initramfs carries, and in which order the agent loads them.

Debian's package ships no ``modules.dep`` (``depmod`` runs at install time, which we skip), so
dependencies are read from each module's own ``.modinfo`` section (``depends=a,b``). The order
is a depth-first post-order: every module after its dependencies, the virtio core first.
"""

from __future__ import annotations

import lzma
import re
from dataclasses import dataclass
from pathlib import Path

REQUIRED = (
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "erofs",
    "overlay",
)
"""Without these the guest cannot reach its channel or assemble its root filesystem."""

OPTIONAL = ("virtio_net", "9p", "9pnet", "9pnet_virtio", "fuse", "virtiofs")
"""Loaded when the kernel has them (Debian's cloud kernel 6.1 has no 9p: CONFIG_NET_9P unset)."""

_DEPENDS = re.compile(rb"(?:^|\0)depends=([^\0]*)\0")


class ModuleError(RuntimeError):
    pass


@dataclass(frozen=True)
class Module:
    name: str
    relpath: str  # relative to lib/modules/<release>/
    depends: tuple[str, ...]


def _name_of(path: Path) -> str:
    base = path.name.split(".ko")[0]
    return base.replace("-", "_")


def index(modules_dir: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in modules_dir.rglob("*.ko*"):
        if re.search(r"\.ko(\.xz)?$", path.name):
            found[_name_of(path)] = path
    return found


def builtin(modules_dir: Path) -> set[str]:
    listing = modules_dir / "modules.builtin"
    if not listing.is_file():
        return set()
    return {_name_of(Path(line)) for line in listing.read_text().split()}


def read_module(path: Path) -> bytes:
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def depends_of(data: bytes) -> tuple[str, ...]:
    match = _DEPENDS.search(data)
    if not match or not match.group(1):
        return ()
    return tuple(d.decode().replace("-", "_") for d in match.group(1).split(b","))


def resolve(
    modules_dir: Path, required: tuple[str, ...] = REQUIRED, optional: tuple[str, ...] = OPTIONAL
) -> tuple[list[Module], list[str]]:
    """Modules to load in order (deps first) and the wanted names this kernel lacks."""
    available = index(modules_dir)
    built_in = builtin(modules_dir)
    ordered: list[Module] = []
    seen: set[str] = set()
    missing: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen or name in built_in:
            return
        if name in chain:
            raise ModuleError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        path = available.get(name)
        if path is None:
            raise ModuleError(f"module {name} (needed by {chain or 'us'}) is not in {modules_dir}")
        deps = depends_of(read_module(path))
        for dep in deps:
            visit(dep, (*chain, name))
        seen.add(name)
        ordered.append(Module(name, str(path.relative_to(modules_dir)), deps))

    for name in required:
        visit(name, ())
    for name in optional:
        if name in available or name in built_in:
            visit(name, ())
        else:
            missing.append(name)
    return ordered, missing
