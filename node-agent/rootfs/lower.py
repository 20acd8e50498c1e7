"""The image's read-only layers as one tree: what overlayfs will show below the upper dir.

Built from the per-layer indexes the layer cache writes, lowest layer first, with overlayfs'
rules: a whiteout hides the name in lower layers, an opaque directory hides everything below
it in lower layers, a directory over a directory merges, anything else replaces. Every node
remembers which layer it came from, so that a file's bytes can be read from that layer's
EROFS image when a patch needs them (``append`` to a file of the image).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kubesandbox_node.images.layers import IndexEntry
from kubesandbox_node.rootfs.errors import RootfsError

MAX_COPY_UP_BYTES = 64 * 1024 * 1024


@dataclass
class LowerNode:
    kind: str
    """``f`` file, ``d`` directory, ``l`` symlink, ``p`` fifo."""
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    size: int = 0
    target: str = ""
    layer: int = -1
    path: str = ""
    children: dict[str, LowerNode] = field(default_factory=dict)
    shadowed_attrs: bool = False
    """The topmost layer has this directory only implicitly (no tar entry: umoci and others
    omit unchanged parents), with made-up owner and mode that overlayfs would show over the
    real ones; rootfs assembly restores the real ones in the upper layer."""


def merge_layers(indexes: Sequence[Sequence[IndexEntry]]) -> LowerNode:
    root = LowerNode("d")
    for layer, entries in enumerate(indexes):
        for entry in entries:  # whiteouts and opaque dirs hide what is *below* this layer
            if entry.kind == "w":
                parent = _find(root, entry.path.rsplit("/", 1)[0] if "/" in entry.path else "")
                if parent is not None and parent.kind == "d":
                    parent.children.pop(entry.path.rsplit("/", 1)[-1], None)
            elif entry.opaque:
                node = _find(root, entry.path)
                if node is not None and node.kind == "d":
                    node.children.clear()
        for entry in entries:  # parents come before children in an index
            if entry.kind == "w":
                continue
            head, _, name = entry.path.rpartition("/")
            parent = _find(root, head)
            if parent is None or parent.kind != "d":
                continue  # cannot happen for indexes we wrote; ignore rather than guess
            existing = parent.children.get(name)
            if entry.implicit and existing is not None and existing.kind == "d":
                existing.shadowed_attrs = existing.shadowed_attrs or (
                    (existing.mode, existing.uid, existing.gid)
                    != (entry.mode, entry.uid, entry.gid)
                )
                continue
            node = LowerNode(
                entry.kind,
                entry.mode,
                entry.uid,
                entry.gid,
                entry.size,
                entry.target,
                layer,
                entry.path,
            )
            if existing is not None and existing.kind == "d" and entry.kind == "d":
                node.children = existing.children
            parent.children[name] = node
    return root


def shadowed_directories(root: LowerNode) -> list[tuple[str, ...]]:
    """Directories whose real owner and mode an implicit directory above hides, parents first."""
    found: list[tuple[str, ...]] = []
    stack: list[tuple[tuple[str, ...], LowerNode]] = [((), root)]
    while stack:
        parts, node = stack.pop()
        if node.shadowed_attrs:
            found.append(parts)
        for name, child in node.children.items():
            if child.kind == "d":
                stack.append(((*parts, name), child))
    return sorted(found, key=len)


def _find(root: LowerNode, path: str) -> LowerNode | None:
    node: LowerNode | None = root
    for part in path.split("/") if path else ():
        if node is None or node.kind != "d":
            return None
        node = node.children.get(part)
    return node


class LowerReader(Protocol):
    """Reads a file's bytes from one layer (``layer`` is the position, lowest first)."""

    def read(self, layer: int, path: str) -> bytes: ...


class ErofsReader:
    """Reads from the EROFS images by mounting one read-only in a private mount namespace.

    The mount never appears in the node's namespace (``unshare -m`` in a child process); the
    path is one the layer's own index lists as a regular file, so nothing is followed.
    """

    def __init__(self, images: Sequence[Path]):
        self.images = list(images)

    def read(self, layer: int, path: str) -> bytes:
        with tempfile.TemporaryDirectory(prefix="ksb-lower-") as mountpoint:
            script = 'mount -t erofs -o ro,loop "$1" "$2" && exec cat -- "$2/$3"'
            result = subprocess.run(
                [
                    *("unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"),
                    *(str(self.images[layer]), mountpoint, path),
                ],
                capture_output=True,
                check=False,
            )
        if result.returncode != 0:
            stderr = result.stderr.decode(errors="replace").strip()
            raise RootfsError(f"reading /{path} from layer {layer}: {stderr}", field=f"/{path}")
        if len(result.stdout) > MAX_COPY_UP_BYTES:
            raise RootfsError(f"file larger than {MAX_COPY_UP_BYTES} bytes", field=f"/{path}")
        return result.stdout


class NoLower:
    def read(self, layer: int, path: str) -> bytes:
        raise RootfsError("no image layers to read from", field=f"/{path}")


def dir_fd_flags() -> int:
    return os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
