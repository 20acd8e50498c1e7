"""Host paths a sandbox may use (bind roots, bind volumes, disk images, ``hostPath`` sources).

Only paths under a prefix the node agent is configured with are allowed, and the check is on
the *resolved* path (symlinks followed by the kernel, ``..`` collapsed) compared component by
component, so ``/srv/allowed/../etc`` and a symlink ``/srv/allowed/x -> /etc`` are refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kubesandbox_node.rootfs.errors import RootfsError


@dataclass(frozen=True)
class HostPathPolicy:
    allowed_prefixes: tuple[Path, ...] = ()

    @classmethod
    def of(cls, prefixes: Sequence[str | Path]) -> HostPathPolicy:
        return cls(tuple(Path(os.path.realpath(p)) for p in prefixes))

    def check(self, path: str, *, field: str, kind: str) -> Path:
        """The resolved path if allowed and of ``kind`` (``dir`` or ``file``), else an error."""
        if not path.startswith("/"):
            raise RootfsError(f"{path!r} is not absolute", field=field)
        resolved = Path(os.path.realpath(path))
        if not any(resolved.is_relative_to(prefix) for prefix in self.allowed_prefixes):
            allowed = ", ".join(str(p) for p in self.allowed_prefixes) or "none configured"
            raise RootfsError(
                f"{path} is not under a host path prefix this node allows ({allowed})",
                field=field,
            )
        if kind == "dir" and not resolved.is_dir():
            raise RootfsError(f"{path} is not a directory on this node", field=field)
        if kind == "file" and not resolved.is_file():
            raise RootfsError(f"{path} is not a file on this node", field=field)
        return resolved
