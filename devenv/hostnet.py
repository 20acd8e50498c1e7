"""What the real node (``realnode``) touches on the host outside its state directory, and how
it is found and put back.

kubelet, kube-proxy and the CNI plugins are written for a machine that is a node for good, so
neither removes its marks on exit: iptables chains (``KUBE-*`` from kube-proxy and the kubelet,
``CNI-*`` from the bridge and portmap plugins), the ``cni0`` bridge, Pod network namespaces in
``/run/netns/cni-*``, kernel settings the kubelet sets at start, ``kubepods`` cgroups, mounts
below the kubelet's root directory. Everything here is idempotent and tolerant of what is
already gone: stopping a node that crashed, or one whose owner was SIGKILLed, runs the same code.

These are machine-wide names: only one real node may run per machine (``realnode`` holds a
machine-wide lock), which is what makes sweeping them by prefix safe. Nothing else of ours uses
those prefixes (the node agent's namespaces are ``ksb-*``, its chains its own).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

CHAIN_PREFIXES = ("KUBE-", "CNI-")
FAMILIES = {
    "ipv4": ("iptables-save", "iptables-restore"),
    "ipv6": ("ip6tables-save", "ip6tables-restore"),
}
NETNS_DIR = Path("/run/netns")
CNI_NETNS_PREFIX = "cni-"
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
"""What the kubelet sets at start with ``protectKernelDefaults: false`` (its kernel tunables;
with ``true`` it refuses to start on this machine, ENVIRONMENT.md)."""
CGROUP_ROOT = Path("/sys/fs/cgroup")
POD_CGROUP = "kubepods"


class HostCommandError(RuntimeError):
    """A host tool failed; the message has its command line and output."""


def _run(argv: list[str], stdin: str | None = None, check: bool = True) -> str:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise HostCommandError(f"{' '.join(argv)} exited {result.returncode}: {output}")
    return result.stdout


# --- the node's address -----------------------------------------------------------------------


def primary_ipv4() -> str:
    """The first IPv4 address of the interface that holds the default route (eth0 here).

    The kubelet refuses a loopback node IP, and Pods must reach the apiserver at an address
    that is not the Pod's own loopback: this is the address both use.
    """
    routes = json.loads(_run(["ip", "-j", "-4", "route", "show", "default"]) or "[]")
    for route in routes:
        device = route.get("dev")
        if not device:
            continue
        for link in json.loads(_run(["ip", "-j", "-4", "addr", "show", "dev", device]) or "[]"):
            for address in link.get("addr_info", []):
                if address.get("family") == "inet" and address.get("local"):
                    return str(address["local"])
    raise HostCommandError("no IPv4 default route with an address: cannot choose a node IP")


# --- iptables ---------------------------------------------------------------------------------


def our_chains(prefixes: Iterable[str] = CHAIN_PREFIXES) -> dict[str, dict[str, list[str]]]:
    """family → table → chains whose name starts with one of ``prefixes`` (only non-empty)."""
    wanted = tuple(prefixes)
    found: dict[str, dict[str, list[str]]] = {}
    for family, (save, _) in FAMILIES.items():
        for table, chains in _chains_by_table(_run([save])).items():
            ours = [chain for chain in chains if chain.startswith(wanted)]
            if ours:
                found.setdefault(family, {})[table] = ours
    return found


def _chains_by_table(saved: str) -> dict[str, list[str]]:
    tables: dict[str, list[str]] = {}
    table = ""
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            tables[table] = []
        elif line.startswith(":") and table:
            tables[table].append(line[1:].split()[0])
    return tables


def removal_script(saved: str, prefixes: Iterable[str] = CHAIN_PREFIXES) -> str:
    """An ``iptables-restore --noflush`` script that removes every chain named with one of
    ``prefixes``: first the rules of other chains that jump to them, then flush, then delete
    (a chain can be deleted only when nothing refers to it and it is empty)."""
    wanted = tuple(prefixes)
    lines: list[str] = []
    table = ""
    chains: list[str] = []
    jumps: list[str] = []

    def finish() -> None:
        if chains:
            lines.append(f"*{table}")
            lines.extend(jumps)
            lines.extend(f"-F {chain}" for chain in chains)
            lines.extend(f"-X {chain}" for chain in chains)
            lines.append("COMMIT")

    for line in saved.splitlines():
        if line.startswith("*"):
            table, chains, jumps = line[1:].strip(), [], []
        elif line.startswith(":"):
            chain = line[1:].split()[0]
            if chain.startswith(wanted):
                chains.append(chain)
        elif line.startswith("-A "):
            words = line.split()
            owner = words[1]
            target = next((words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-j", "-g")), "")
            if target.startswith(wanted) and not owner.startswith(wanted):
                jumps.append("-D " + line[3:])
        elif line == "COMMIT":
            finish()
            chains, jumps = [], []
    return "\n".join(lines) + ("\n" if lines else "")


def remove_chains(prefixes: Iterable[str] = CHAIN_PREFIXES) -> dict[str, dict[str, list[str]]]:
    """Remove every chain named with one of ``prefixes`` in both families; returns what there
    was. A concurrent writer (kube-proxy still syncing) can make one pass fail: we retry."""
    before = our_chains(prefixes)
    for family, (save, restore) in FAMILIES.items():
        if family not in before:
            continue
        for attempt in range(3):
            script = removal_script(_run([save]), prefixes)
            if not script:
                break
            try:
                _run([restore, "--noflush"], stdin=script)
                break
            except HostCommandError:
                if attempt == 2:
                    raise
    return before


# --- links, namespaces, mounts ----------------------------------------------------------------


def delete_link(name: str) -> bool:
    """``ip link del name``; False when there was none."""
    if not Path("/sys/class/net", name).exists():
        return False
    _run(["ip", "link", "del", name], check=False)
    return True


def remove_cni_netns() -> list[str]:
    """Unmount and remove what the CRI left in ``/run/netns/cni-*``; returns their names."""
    removed = []
    if NETNS_DIR.is_dir():
        for entry in sorted(NETNS_DIR.glob(f"{CNI_NETNS_PREFIX}*")):
            _run(["umount", str(entry)], check=False)
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry.name)
    return removed


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounts_below(root: Path) -> list[Path]:
    """Mount points at or below ``root``, deepest first (the order to unmount them in)."""
    prefix = str(root).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = _unescape(line.split()[4])
        if point == str(root) or point.startswith(prefix):
            found.append(Path(point))
    return sorted(set(found), key=lambda path: len(path.parts), reverse=True)


def unmount_below(root: Path) -> list[Path]:
    """Unmount everything below ``root`` (volumes the kubelet mounted for Pods, shm and rootfs
    mounts of containerd); lazily when a mount is busy. Returns what was mounted."""
    mounted = mounts_below(root)
    for point in mounted:
        result = subprocess.run(["umount", str(point)], capture_output=True, check=False)
        if result.returncode != 0:
            subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=False)
    return mounted


# --- kernel settings and cgroups --------------------------------------------------------------


def read_sysctls(names: Iterable[str]) -> dict[str, str]:
    return {name: (Path("/proc/sys") / name).read_text().strip() for name in names}


def restore_sysctls(values: Mapping[str, str]) -> dict[str, str]:
    """Write back the values that differ now; returns name → the value we replaced."""
    replaced = {}
    for name, value in values.items():
        path = Path("/proc/sys") / name
        current = path.read_text().strip()
        if current != value:
            path.write_text(value + "\n")
            replaced[name] = current
    return replaced


def remove_pod_cgroups() -> list[Path]:
    """Remove the ``kubepods`` hierarchy the kubelet made in each cgroup v1 controller (and in
    a v2 tree), deepest first; a cgroup with a process left in it stays (EBUSY)."""
    removed = []
    tops = [*CGROUP_ROOT.glob(f"*/{POD_CGROUP}"), CGROUP_ROOT / POD_CGROUP]
    for top in tops:
        if not top.is_dir():
            continue
        directories = [top, *(path for path in top.rglob("*") if path.is_dir())]
        for directory in sorted(directories, key=lambda path: len(path.parts), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(directory)
                removed.append(directory)
    return removed
