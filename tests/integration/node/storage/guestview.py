"""The assembled root filesystem as the guest sees it, read in a private mount namespace.

``guest_view(layers, upper)`` runs this file as ``unshare -m --propagation private python -I
guestview.py`` (isolated: the repository's ``operator/`` must not shadow the standard
library). It mounts the EROFS layers and the ext4 writable layer exactly as the guest agent
does (overlayfs, lowerdir highest first, ``upper/`` and ``work/`` inside the ext4 image),
walks the merged tree, reads small files, runs commands chrooted into it, and prints JSON.
Nothing is mounted in the test runner's namespace, so nothing needs unmounting.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class GuestFile:
    kind: str
    mode: int
    uid: int
    gid: int
    ino: int
    mtime: int
    target: str
    data: bytes | None


@dataclass(frozen=True)
class GuestView:
    files: dict[str, GuestFile]
    outputs: list[str]

    def text(self, path: str) -> str:
        data = self.files[path].data
        assert data is not None, path
        return data.decode()


def guest_view(layers: list[Path], upper: Path, commands: list[str] | None = None) -> GuestView:
    argv = [
        *("unshare", "-m", "--propagation", "private"),
        *(sys.executable, "-I", __file__),
        json.dumps(
            {"layers": [str(p) for p in layers], "upper": str(upper), "commands": commands or []}
        ),
    ]
    result = subprocess.run(argv, capture_output=True, cwd="/", check=False)
    if result.returncode != 0:
        raise AssertionError(result.stderr.decode())
    raw = json.loads(result.stdout)
    files = {
        path: GuestFile(
            entry["kind"],
            entry["mode"],
            entry["uid"],
            entry["gid"],
            entry["ino"],
            entry["mtime"],
            entry["target"],
            base64.b64decode(entry["data"]) if entry["data"] is not None else None,
        )
        for path, entry in raw["files"].items()
    }
    return GuestView(files, raw["outputs"])


def _mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True)


def _main(request: dict[str, Any]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="guestview-"))
    lowers = []
    for position, image in enumerate(request["layers"]):
        target = work / f"l{position}"
        target.mkdir()
        _mount("-t", "erofs", "-o", "ro,loop", image, str(target))
        lowers.append(str(target))
    (work / "u").mkdir()
    _mount("-o", "loop", request["upper"], str(work / "u"))
    root = work / "root"
    root.mkdir()
    options = f"lowerdir={':'.join(reversed(lowers))},upperdir={work}/u/upper,workdir={work}/u/work"
    _mount("-t", "overlay", "overlay", "-o", options, str(root))
    files: dict[str, Any] = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(directory, name)
            rel = "/" + str(full.relative_to(root))
            info = full.lstat()
            kind = (
                "d"
                if stat.S_ISDIR(info.st_mode)
                else "l"
                if stat.S_ISLNK(info.st_mode)
                else ("f" if stat.S_ISREG(info.st_mode) else "o")
            )
            data = None
            if kind == "f" and info.st_size <= 64 * 1024:
                data = base64.b64encode(full.read_bytes()).decode()
            files[rel] = {
                "kind": kind,
                "mode": stat.S_IMODE(info.st_mode),
                "uid": info.st_uid,
                "gid": info.st_gid,
                "ino": info.st_ino,
                "mtime": int(info.st_mtime),
                "target": os.readlink(full) if kind == "l" else "",
                "data": data,
            }
    outputs = []
    for command in request["commands"]:
        done = subprocess.run(
            ["chroot", str(root), "/bin/sh", "-c", command], capture_output=True, check=False
        )
        outputs.append(done.stdout.decode() + done.stderr.decode())
    return {"files": files, "outputs": outputs}


if __name__ == "__main__":
    print(json.dumps(_main(json.loads(sys.argv[1]))))
