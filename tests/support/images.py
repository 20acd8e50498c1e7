"""Test root filesystems: busybox-static in a directory, packed as an EROFS layer, plus an
empty sparse ext4 upper. Just what the guest-agent tests need; the node agent's real storage
(OCI layers, patches) is ``kubesandbox_node.images`` / ``kubesandbox_node.rootfs``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from kubesandbox_node.bootimage.paths import cache_root
from kubesandbox_node.bootimage.standin import busybox_path

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\n"
INITTAB = """::sysinit:/bin/sh -c 'echo handoff-sysinit-ran > /run/init-marker'
::respawn:/bin/sleep 100000
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/sync
"""


def busybox_rootfs(root: Path) -> Path:
    """A small but real root: busybox applets, users root and app (1000), an inittab."""
    busybox = busybox_path()
    for d in ("bin", "sbin", "etc", "tmp", "root", "home/app", "run", "proc", "sys", "dev"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)  # noqa: S103 - /tmp of the guest image
    shutil.copy2(busybox, root / "bin" / "busybox")
    applets = subprocess.run(
        [str(busybox), "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        link = root / applet
        if link.name == "busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    (root / "etc" / "inittab").write_text(INITTAB)
    (root / "etc" / "hostname").write_text("image\n")
    os.chown(root / "home" / "app", 1000, 1000)
    return root


def erofs_layer(source: Path, dest: Path) -> Path:
    subprocess.run(["mkfs.erofs", "--quiet", str(dest), str(source)], check=True)
    return dest


def ext4_upper(dest: Path, size_mib: int = 512) -> Path:
    """An empty sparse ext4 image (the guest creates ``upper/`` and ``work/`` in it)."""
    with dest.open("wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", str(dest)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return dest


def cached_busybox_layer() -> Path:
    """The busybox layer, built once per busybox binary and reused by every test run."""
    digest = hashlib.sha256(busybox_path().read_bytes()).hexdigest()[:16]
    dest = cache_root() / "test-images" / f"busybox-{digest}.erofs"
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = dest.parent / f".build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        busybox_rootfs(work / "root")
        erofs_layer(work / "root", work / "layer.erofs")
        os.replace(work / "layer.erofs", dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest
