"""One cgroup per VM: CPU and memory limits (guest memory plus QEMU's own overhead), usage
and OOM counters for metrics and crash reasons.

cgroup v2 is used where the unified hierarchy has the ``cpu`` and ``memory`` controllers
(``cpu.max``, ``memory.max``, ``memory.events``); on hybrid hosts (this CI machine mounts v2
without controllers) the v1 ``cpu`` and ``memory`` hierarchies give the same limits
(``cpu.cfs_quota_us``, ``memory.limit_in_bytes``, ``memory.oom_control``). The cgroup is
entered *before* QEMU allocates anything: QEMU is exec'ed by a tiny shell that first writes its
own pid into every ``cgroup.procs`` (``wrap_argv``), so no memory is charged elsewhere.

Where (``CgroupManager.parent``, ``root``):

- an absolute parent (``/kubesandbox``, the default) is below the root of each hierarchy
  mounted at ``root``. This is how VMs outlive the node agent's container: in a Pod, ``root``
  is the host's ``/sys/fs/cgroup`` mounted into the container (``/host/sys/fs/cgroup``), and on
  cgroup v1 QEMU joins a ``<parent>/vm-<uid>`` cgroup in *every* hierarchy (``cpu``,
  ``cpuacct``, ``memory``, ``devices``, ``freezer``, ``pids``, ``blkio``, ``cpuset``,
  ``name=systemd``, the hybrid ``unified`` one...), so nothing of the container's or the Pod's
  cgroups holds it: ``runc kill --all``, the freezer and the kubelet's Pod cgroup cleanup only
  see the processes in their own cgroups. ``cpuset`` cgroups start empty and get the parent's
  ``cpuset.cpus`` and ``cpuset.mems`` before anything joins them.
- a relative parent is below the node agent's own cgroup in the ``cpu``, ``cpuacct`` and
  ``memory`` hierarchies (v1; a host-process development setup, where each environment gets its
  own parent). On v2 the parent is always below ``root``.

Paths are recorded in the sandbox record, so a re-adopting node agent finds them again even
if its own cgroup moved.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")
PERIOD_US = 100_000
V1_CONTROLLERS = ("cpu", "cpuacct", "memory")
"""The hierarchies whose limits and counters a VM's cgroup uses (listed first, in this order)."""
CPUSET_FILES = ("cpuset.cpus", "cpuset.mems")
# QEMU's own threads (I/O, QMP, TCG translation) get a fifth of a CPU on top of the vCPUs.
VMM_CPU_SHARE = 0.2
_WRAP = (
    'while [ "$1" != -- ]; do echo $$ > "$1" || exit 121; shift; done; shift; '
    'unset PWD OLDPWD; exec "$@"'  # dash exports PWD: QEMU gets no environment of ours
)


def vmm_overhead_mib(accel: str, tb_size_mib: int = 64) -> int:
    """Host memory QEMU needs beyond guest RAM (measured: ~200 MiB RSS under TCG)."""
    return 160 + tb_size_mib if accel == "tcg" else 96


@dataclass(frozen=True)
class CgroupUsage:
    cpu_ns: int
    memory_bytes: int
    memory_limit_bytes: int | None
    oom_kills: int


@dataclass(frozen=True)
class Cgroup:
    """A VM's cgroup: ``paths`` are one directory (v2) or one per v1 controller."""

    version: int
    paths: tuple[Path, ...]
    controllers: tuple[str, ...] = ()
    """v1 only: the controller of each path."""

    @property
    def procs_files(self) -> list[Path]:
        return [p / "cgroup.procs" for p in self.paths]

    def wrap_argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this cgroup from its first instruction."""
        return ["/bin/sh", "-c", _WRAP, "ksb-cgroup", *map(str, self.procs_files), "--", *argv]

    def _file(self, controller: str, name: str) -> Path:
        if self.version == 2:
            return self.paths[0] / name
        if controller in self.controllers:
            return self.paths[self.controllers.index(controller)] / name
        return self.paths[0] / name

    def set_limits(self, cpus: float, memory_bytes: int) -> None:
        quota = int(cpus * PERIOD_US)
        if self.version == 2:
            _write(self._file("cpu", "cpu.max"), f"{quota} {PERIOD_US}")
            _write(self._file("memory", "memory.max"), str(memory_bytes))
            with contextlib.suppress(OSError):
                _write(self._file("memory", "memory.swap.max"), "0")
        else:
            _write(self._file("cpu", "cpu.cfs_period_us"), str(PERIOD_US))
            _write(self._file("cpu", "cpu.cfs_quota_us"), str(quota))
            _write(self._file("memory", "memory.limit_in_bytes"), str(memory_bytes))

    def pids(self) -> list[int]:
        found: set[int] = set()
        for procs in self.procs_files:
            with contextlib.suppress(OSError):
                found.update(int(x) for x in procs.read_text().split())
        return sorted(found)

    def usage(self) -> CgroupUsage:
        if self.version == 2:
            stat = _keyed(self._file("cpu", "cpu.stat"))
            events = _keyed(self._file("memory", "memory.events"))
            limit = _read(self._file("memory", "memory.max"))
            return CgroupUsage(
                cpu_ns=stat.get("usage_usec", 0) * 1000,
                memory_bytes=_int(self._file("memory", "memory.current")),
                memory_limit_bytes=None if limit in ("", "max") else int(limit),
                oom_kills=events.get("oom_kill", 0),
            )
        cpuacct = self._file("cpuacct", "cpuacct.usage")
        cpu_ns = _int(cpuacct) if cpuacct.exists() else _v1_cpu_ns(self._file("cpu", "cpu.stat"))
        oom = _keyed(self._file("memory", "memory.oom_control"))
        return CgroupUsage(
            cpu_ns=cpu_ns,
            memory_bytes=_int(self._file("memory", "memory.usage_in_bytes")),
            memory_limit_bytes=_int(self._file("memory", "memory.limit_in_bytes")) or None,
            oom_kills=oom.get("oom_kill", 0),
        )

    def remove(self, timeout: float = 5.0) -> None:
        """Removes the (empty) cgroup; the processes must be gone, which can take a moment."""
        deadline = time.monotonic() + timeout
        for path in self.paths:
            while True:
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)


def _v1_cpu_ns(cpu_stat: Path) -> int:
    # v1 cpu.stat has no usage; the per-task sum from /proc is the fallback.
    total = 0
    procs = cpu_stat.parent / "cgroup.procs"
    ticks = os.sysconf("SC_CLK_TCK")
    with contextlib.suppress(OSError):
        for pid in procs.read_text().split():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) * 1_000_000_000 // ticks
    return total


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _make(path: Path, root: Path) -> None:
    """``mkdir -p``; a new v1 ``cpuset`` cgroup gets its parent's CPUs and memory nodes
    (it starts with none, and no process could join it)."""
    missing: list[Path] = []
    at = path
    while not at.is_dir() and at != root and at.parent != at:
        missing.append(at)
        at = at.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        for name in CPUSET_FILES:
            mine, theirs = folder / name, folder.parent / name
            if theirs.is_file() and not _read(mine):
                _write(mine, _read(theirs))


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _int(path: Path) -> int:
    text = _read(path)
    return int(text) if text.isdigit() else 0


def _keyed(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in _read(path).splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


@dataclass(frozen=True)
class CgroupManager:
    """Creates cgroups under ``<hierarchy>/<parent>/<name>`` (absolute ``parent``) or
    ``<hierarchy>/<own cgroup>/<parent>/<name>`` (relative, v1); see the module text."""

    parent: str = "/kubesandbox"
    root: Path = CGROUP_FS

    @property
    def absolute(self) -> bool:
        return self.parent.startswith("/")

    @property
    def version(self) -> int:
        controllers = _read(self.root / "cgroup.controllers").split()
        return 2 if {"cpu", "memory"} <= set(controllers) else 1

    def _own(self, controller: str) -> str:
        """Our own cgroup path in ``controller``'s hierarchy ("" for v2 means "0::")."""
        for line in _read(Path("/proc/self/cgroup")).splitlines():
            _, names, path = line.split(":", 2)
            if (controller == "" and names == "") or controller in names.split(","):
                return path.lstrip("/")
        return ""

    def hierarchies(self) -> list[str]:
        """The v1 hierarchies a VM's cgroup spans: :data:`V1_CONTROLLERS` first, then (with an
        absolute parent) every other hierarchy mounted at ``root``, each mount once."""
        found = [c for c in V1_CONTROLLERS if (self.root / c).is_dir()]
        if not self.absolute:
            return found
        seen = {(self.root / c).resolve() for c in found}
        for entry in sorted(self.root.iterdir()):
            if entry.name in found or entry.is_symlink() or not entry.is_dir():
                continue
            if not (entry / "cgroup.procs").is_file() or entry.resolve() in seen:
                continue
            seen.add(entry.resolve())
            found.append(entry.name)
        return found

    def _base(self, controller: str) -> Path:
        """The parent cgroup directory in ``controller``'s hierarchy (v1)."""
        if self.absolute:
            return self.root / controller / self.parent.strip("/")
        return self.root / controller / self._own(controller) / self.parent

    def parents(self) -> list[Path]:
        if self.version == 2:
            return [self.root / self.parent.strip("/")]
        return [self._base(c) for c in self.hierarchies()]

    def orphans(self, known: set[str]) -> list[Cgroup]:
        """VM cgroups under our parent that no sandbox record names (left by a crash)."""
        found: dict[str, list[Path]] = {}
        for parent in self.parents():
            if parent.is_dir():
                for child in parent.iterdir():
                    if child.is_dir() and child.name.startswith("vm-"):
                        found.setdefault(child.name, []).append(child)
        version = self.version
        controllers = tuple(self.hierarchies())
        return [
            Cgroup(version, tuple(paths), controllers if version == 1 else ())
            for name, paths in found.items()
            if name not in known
        ]

    def remove_parents(self) -> None:
        """Removes the (empty) parent cgroups: node agent uninstall, test teardown."""
        for parent in self.parents():
            with contextlib.suppress(OSError):
                parent.rmdir()

    def create(self, name: str, cpus: float, memory_bytes: int) -> Cgroup:
        if self.version == 2:
            base = self.root / self.parent.strip("/")
            base.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                _write(self.root / "cgroup.subtree_control", "+cpu +memory")
            _write(base / "cgroup.subtree_control", "+cpu +memory")
            paths: tuple[Path, ...] = (base / name,)
            controllers: tuple[str, ...] = ()
        else:
            controllers = tuple(self.hierarchies())
            paths = tuple(self._base(c) / name for c in controllers)
        for path in paths:
            _make(path, self.root)
        group = Cgroup(self.version, paths, controllers)
        group.set_limits(cpus, memory_bytes)
        return group
