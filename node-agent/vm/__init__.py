"""QEMU microVMs: spec → argv (``spec``), process + boot watchdog (``machine``), QMP
(``qmp``), host facts such as TSC frequency and KVM usability (``host``), and the boot
configuration handed to the guest agent (``bootconfig``)."""

from kubesandbox_node.vm.machine import BootError, VirtualMachine, boot, launch
from kubesandbox_node.vm.qmp import QMPClient, QMPError
from kubesandbox_node.vm.spec import Drive, Share, VMSpec

__all__ = [
    "BootError",
    "Drive",
    "QMPClient",
    "QMPError",
    "Share",
    "VMSpec",
    "VirtualMachine",
    "boot",
    "launch",
]
