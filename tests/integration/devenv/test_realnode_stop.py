"""What stopping the real node leaves on the machine: after a Pod ran (a bridge, a veth, a
network namespace, CNI and kube-proxy chains, mounts, cgroups, changed kernel settings),
no process of ours, no ``KUBE-*``/``CNI-*`` chain, no ``cni0``, no mount under the state dir,
the kernel settings as they were, and the machine lock free for the next node."""

from __future__ import annotations

import json
import select
import subprocess
import sys
from pathlib import Path

import pytest

from kubesandbox_devenv import hostnet
from kubesandbox_devenv.binaries import ensure_binaries, ensure_node_binaries
from kubesandbox_devenv.controlplane import ControlPlane
from kubesandbox_devenv.nodeconfig import CNI_BRIDGE
from kubesandbox_devenv.realnode import MachineLock, RealNode
from kubesandbox_devenv.registry import Registry

from .test_lifecycle import processes_under, wait_all_gone
from .test_realnode import pod, push_busybox, wait_pod

pytestmark = [pytest.mark.controlplane, pytest.mark.registry, pytest.mark.slow]


def pod_processes() -> list[int]:
    found: set[int] = set()
    for procs in hostnet.CGROUP_ROOT.glob(f"*/{hostnet.POD_CGROUP}/**/cgroup.procs"):
        found.update(int(pid) for pid in procs.read_text().split())
    return sorted(found)


def test_stop_leaves_no_process_chain_bridge_or_mount(tmp_path: Path) -> None:
    sysctls_before = hostnet.read_sysctls(hostnet.KUBELET_SYSCTLS)
    registry = Registry(tmp_path / "registry").start()
    try:
        push_busybox(registry, tmp_path / "layout")
        state = tmp_path / "env"
        with ControlPlane(state, real_node=True, binaries=ensure_binaries()) as plane:
            node = RealNode(plane, binaries=ensure_node_binaries())
            node.configure_registry(registry.host)
            node.start()
            try:
                # `sh` as PID 1 ignores SIGTERM: the stop must not wait for it.
                plane.kubectl(
                    "apply", "-f", "-", input_text=json.dumps(pod("sleeper", "sleep 3600"))
                )
                wait_pod(plane, "sleeper")
                node_pids = [pid for pid in node.status().values() if pid is not None]
                in_pods = pod_processes()
                assert len(node_pids) == 3
                assert in_pods
                assert hostnet.our_chains()
                assert Path("/sys/class/net", CNI_BRIDGE).exists()
                assert hostnet.mounts_below(state)
            except BaseException:
                node.stop()
                raise
            # As `down` does: a new object that finds the processes by their pid files.
            RealNode(plane, binaries=node.binaries).stop()
            gone = wait_all_gone(node_pids + in_pods)
            ours = [pid for pid in processes_under(state) if pid not in plane.status().values()]
            left = {
                "chains": hostnet.our_chains(),
                "bridge": Path("/sys/class/net", CNI_BRIDGE).exists(),
                "mounts": hostnet.mounts_below(state),
                "pod processes": pod_processes(),
                "sysctls": hostnet.read_sysctls(hostnet.KUBELET_SYSCTLS),
                "lock": MachineLock().holder(),
            }
            node.stop()  # finds nothing left to do, and reaps its children (tied to us)
            assert gone == []
            assert ours == []
            assert left == {
                "chains": {},
                "bridge": False,
                "mounts": [],
                "pod processes": [],
                "sysctls": sysctls_before,
                "lock": None,
            }
    finally:
        registry.stop()


OWNER = """
import sys, time
from pathlib import Path
from kubesandbox_devenv.controlplane import ControlPlane
from kubesandbox_devenv.realnode import RealNode
plane = ControlPlane(Path(sys.argv[1]), real_node=True)
plane.start()
RealNode(plane).start()
plane.kubectl("run", "paused", "--image=registry.k8s.io/pause:3.10", "--image-pull-policy=Never")
while plane.kubectl("get", "pod", "paused", "-o", "jsonpath={.status.phase}").stdout != "Running":
    time.sleep(0.2)
print("running", flush=True)
time.sleep(600)
"""


def shims_of(state: Path) -> list[int]:
    socket = str(state / "node" / "containerd.sock")
    return [
        pid for pid in processes_under(state) if socket in Path(f"/proc/{pid}/cmdline").read_text()
    ]


def test_a_node_whose_owner_was_killed_is_swept_by_the_next_one(tmp_path: Path) -> None:
    """SIGKILL the test process of a node: its tied processes die with it, but containerd's
    shims, the containers, chains and bridge stay. The next node takes the lock over and
    sweeps them before it starts."""
    old_state, new_state = tmp_path / "old", tmp_path / "new"
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(old_state)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        ready, _, _ = select.select([owner.stdout], [], [], 180)
        assert ready, "the owner did not get a Pod Running in 180 s"
        assert owner.stdout.readline().strip() == "running"
    finally:
        owner.kill()
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
    assert shims_of(old_state)
    assert pod_processes()
    holder = MachineLock().holder()
    assert holder is not None
    assert holder.state_dir == str(old_state)
    with ControlPlane(new_state, real_node=True, binaries=ensure_binaries()) as plane:
        with RealNode(plane, binaries=ensure_node_binaries()):
            assert wait_all_gone(shims_of(old_state)) == []
            assert pod_processes() == []
            assert hostnet.mounts_below(old_state) == []
        assert hostnet.our_chains() == {}
    assert MachineLock().holder() is None
