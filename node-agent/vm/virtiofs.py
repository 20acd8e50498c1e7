"""virtiofsd: one daemon per shared host directory, started before QEMU connects to it.

Host directories (bind roots, bind volumes) reach the guest over virtio-fs: the guest kernel
is a FUSE client, the daemon on the host serves its requests from the directory. Choices:

- The daemon is QEMU's own (``/usr/lib/qemu/virtiofsd``, package ``qemu-system-common``):
  nothing extra to install. It confines itself (``sandbox=namespace``: new mount, pid and
  network namespaces and ``pivot_root`` into the shared directory), so a guest request can only
  name paths below it, whatever ``..`` or symlinks it sends.
- Read-only shares are read-only on the host: this virtiofsd has no read-only switch, and the
  guest's ``ro`` mount option is no boundary (the guest kernel is the tenant's). So the daemon
  starts in a private mount namespace where the directory is bind-mounted read-only on itself
  (``unshare --mount``); a write fails with EROFS in the host kernel, and nothing is mounted in
  the host's namespace that could leak.
- It exits by itself when QEMU's vhost-user connection ends (the VM stopped or died), so a VM
  re-adopted after a node agent restart keeps its daemons without the node agent holding them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

from kubesandbox_node.vm.process import spawn
from kubesandbox_node.vm.spec import Share, VMSpec

SOCKET_TIMEOUT = 10.0
_READ_ONLY = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


class ShareError(Exception):
    """A share's daemon did not come up (its log's tail is in the message)."""


def daemon_argv(spec: VMSpec, share: Share) -> list[str]:
    """The command line serving ``share`` on ``spec.share_socket(share)``."""
    argv = [
        spec.virtiofsd,
        f"--socket-path={spec.share_socket(share)}",
        "-o", f"source={share.path}",
        "-o", "cache=auto",
        "-o", "sandbox=namespace",
        "-o", "no_posix_lock",
        "-o", "no_xattr",
    ]  # fmt: skip
    if not share.read_only:
        return argv
    return [
        "unshare", "--mount", "--propagation", "private",
        "/bin/sh", "-c", _READ_ONLY, "ksb-ro-share", str(share.path), *argv,
    ]  # fmt: skip


def share_log(spec: VMSpec, share: Share) -> Path:
    return spec.state_dir / f"fs-{share.tag}.log"


async def start_shares(
    spec: VMSpec, wrap: Callable[[list[str]], list[str]] | None = None
) -> list[asyncio.subprocess.Process]:
    """Starts a daemon for every share of ``spec`` and waits until each listens; on failure
    the ones started are killed. ``wrap`` puts them inside something (the VM's cgroup)."""
    started: list[asyncio.subprocess.Process] = []
    try:
        for share in spec.shares:
            started.append(await _start(spec, share, wrap))
    except BaseException:
        await stop_shares(started)
        raise
    return started


async def stop_shares(daemons: list[asyncio.subprocess.Process]) -> None:
    for daemon in daemons:
        if daemon.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                daemon.kill()
            await daemon.wait()


async def _start(
    spec: VMSpec, share: Share, wrap: Callable[[list[str]], list[str]] | None
) -> asyncio.subprocess.Process:
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    socket = spec.share_socket(share)
    with contextlib.suppress(FileNotFoundError):
        socket.unlink()
    argv = daemon_argv(spec, share)
    if wrap is not None:
        argv = wrap(argv)
    log = share_log(spec, share)
    daemon = await spawn(argv, log)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SOCKET_TIMEOUT
    delay = 0.005
    while not socket.exists():
        if daemon.returncode is not None or loop.time() > deadline:
            await stop_shares([daemon])
            tail = log.read_bytes()[-2000:].decode(errors="replace").strip()
            raise ShareError(f"virtiofsd for {share.path} did not start: {tail or 'no output'}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
    return daemon
