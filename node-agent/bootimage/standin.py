"""Busybox stand-ins for the guest agent: the boot floor and a pipeline check.

``floor``: ``/init`` mounts nothing and loads nothing; it writes ``FLOOR_MARKER`` to the serial
console and sleeps: the fastest this kernel gets to userspace here, the bench's baseline.
``ready``: loads the modules in ``kubesandbox.order`` like the agent does, finds the
virtio-serial port named ``agent`` and writes a canned ``core.ready`` frame to it, which proves
kernel, initramfs, modules, QEMU wiring, relay and watchdog without the Rust agent.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from kubesandbox_node.bootimage import cpio
from kubesandbox_protocol.messages import MessageType, message_frame

FLOOR_MARKER = "KUBESANDBOX-FLOOR-REACHED"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")

_FLOOR_INIT = f"""#!/bin/busybox sh
/bin/busybox echo {FLOOR_MARKER} > /dev/console
exec /bin/busybox sleep 2147483647
"""

_READY_INIT = """#!/bin/busybox sh
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
for m in $($bb cat /lib/modules/kubesandbox.order); do
  $bb insmod "$m" || echo "insmod $m: failed"
done
port=""
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
  for n in /sys/class/virtio-ports/*/name; do
    [ -f "$n" ] && [ "$($bb cat "$n")" = agent ] && port=$($bb basename $($bb dirname "$n"))
  done
  [ -n "$port" ] && break
  $bb usleep 50000
done
echo "standin: agent port is ${port:-missing}"
$bb cat /standin/ready.frame > "/dev/$port"
exec $bb sleep 2147483647
"""


def busybox_path() -> Path:
    for candidate in BUSYBOX_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    found = shutil.which("busybox")
    if found is None:
        raise FileNotFoundError("busybox not found: install busybox-static")
    return Path(found)


def ready_frame() -> bytes:
    payload = {"boot_time_ns": 0, "init_time_ns": 0, "ready_time_ns": 0, "agent_version": "standin"}
    return message_frame(0, MessageType.READY, payload).encode()


def entries(kind: Literal["floor", "ready"]) -> tuple[bytes, list[cpio.Entry]]:
    """The ``/init`` script and the extra archive entries for a stand-in image."""
    busybox = cpio.file("bin/busybox", busybox_path().read_bytes(), 0o755)
    if kind == "floor":
        return _FLOOR_INIT.encode(), [busybox]
    return _READY_INIT.encode(), [busybox, cpio.file("standin/ready.frame", ready_frame())]
