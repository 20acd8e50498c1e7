"""Many sandboxes at once, and the Pods that run kubesandbox killed at the worst moment.

The installed system of the package (``conftest.system``: the chart on a real kubelet node,
QEMU VMs under TCG). A crash is a SIGKILL of a container's process (found through the CRI);
the kubelet restarts it, as it would in any cluster. Every test counts what exists afterwards,
precisely: Sandboxes and their phases, sandbox Pods (Running, one per Sandbox) and their
owners, QEMU processes per Sandbox UID (``services.qemu_processes``, as ``make down`` finds
them), the node agent's per-sandbox files and network namespaces.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kubesandbox_api import GROUP, PLURAL, VERSION
from kubesandbox_devenv import services
from tests.e2e.conftest import System
from tests.support.waiting import eventually

pytestmark = [
    pytest.mark.controlplane,
    pytest.mark.vm,
    pytest.mark.registry,
    pytest.mark.slow,
]

NAMESPACE = "default"
COUNT = 10
CHEAPEST = {"cpus": 1, "memory": 128, "network": {"policy": "None"}}
"""The cheapest configuration with room to run (80 MiB is the floor: docs/operator.md)."""
CONVERGE_TIMEOUT = 900.0
"""Ten TCG boots on two cores shared with other work: minutes, not seconds."""


def _ready(body: dict[str, Any]) -> bool:
    conditions = (body.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _summary(bodies: dict[str, dict[str, Any]]) -> str:
    return ", ".join(
        f"{name}={(body.get('status') or {}).get('phase')}{'+Ready' if _ready(body) else ''}"
        for name, body in sorted(bodies.items())
    )


@dataclass
class Chaos:
    system: System
    api: client.ApiClient

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def agent_state(self) -> Path:
        return self.system.installed.dirs.state

    # --- what exists -------------------------------------------------------------------------

    def sandbox(self, name: str) -> dict[str, Any]:
        found = self.custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
        assert isinstance(found, dict)
        return found

    def sandboxes(self) -> dict[str, dict[str, Any]]:
        listed = self.custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)
        assert isinstance(listed, dict)
        return {item["metadata"]["name"]: item for item in listed["items"]}

    def pods(self) -> list[dict[str, Any]]:
        """The Pods in the namespace, as the apiserver serves them (JSON)."""
        response: Any = self.core.list_namespaced_pod(NAMESPACE, _preload_content=False)
        items = json.loads(response.data)["items"]
        assert isinstance(items, list)
        return items

    def pod_names(self) -> list[str]:
        return sorted(pod["metadata"]["name"] for pod in self.pods())

    def vms(self) -> dict[int, str]:
        return services.qemu_processes(str(self.agent_state))

    def vms_per_uid(self, uids: list[str]) -> dict[str, int]:
        vms = self.vms().values()
        return {uid: sum(uid in cmdline for cmdline in vms) for uid in uids}

    def files_of(self, uids: list[str]) -> list[str]:
        """Paths below the node agent's state directory that name one of ``uids``."""
        left = []
        for root, dirs, files in os.walk(self.agent_state):
            for entry in dirs + files:
                if any(uid in entry for uid in uids):
                    left.append(str(Path(root, entry).relative_to(self.agent_state)))
        return sorted(left)

    # --- acting --------------------------------------------------------------------------------

    def apply(self, names: list[str], **spec: Any) -> None:
        """All of ``names`` in one ``kubectl apply`` (one List): applied at once."""
        items = [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Sandbox",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {"image": {"oci": "busybox:1.36"}, **spec},
            }
            for name in names
        ]
        manifest = {"apiVersion": "v1", "kind": "List", "items": items}
        self.system.plane.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))

    def wait_running(self, names: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Until every one of ``names`` is Running with Ready=True; fails at once on a crash."""
        last: dict[str, dict[str, Any]] = {}

        def check() -> dict[str, dict[str, Any]] | None:
            nonlocal last
            found = self.sandboxes()
            last = {name: found.get(name, {}) for name in names}
            ended = [
                f"{name}: {json.dumps(body.get('status'))}"
                for name, body in last.items()
                if (body.get("status") or {}).get("phase") in ("Failed", "Crashed")
            ]
            assert not ended, f"ended instead of Running: {ended}"
            running = all(
                (body.get("status") or {}).get("phase") == "Running" and _ready(body)
                for body in last.values()
            )
            return last if running else None

        return eventually(check, timeout, lambda: f"not all Running+Ready: {_summary(last)}")

    def run(self, uid: str, command: str) -> tuple[int, str]:
        socket = self.system.installed.relay_socket(uid)
        return asyncio.run(services.run_in_sandbox(socket, command))

    def delete(self, names: list[str]) -> None:
        self.system.plane.kubectl(
            "delete", "sandbox", *names, "-n", NAMESPACE, "--wait", "--timeout=600s"
        )

    # --- the checks every test ends with ---------------------------------------------------------

    def assert_one_vm_and_one_pod_each(self, bodies: dict[str, dict[str, Any]]) -> None:
        uids = {name: body["metadata"]["uid"] for name, body in bodies.items()}
        per_uid = self.vms_per_uid(list(uids.values()))
        wrong = {name: per_uid[uid] for name, uid in uids.items() if per_uid[uid] != 1}
        assert not wrong, f"QEMU processes per sandbox should be 1, found {wrong}"
        strays = {
            pid: cmdline
            for pid, cmdline in self.vms().items()
            if not any(uid in cmdline for uid in uids.values())
        }
        assert not strays, f"QEMU processes of no sandbox: {strays}"
        owners: Counter[str] = Counter()
        orphans = []
        for pod in self.pods():
            owned = pod["metadata"].get("ownerReferences") or []
            refs = [ref["uid"] for ref in owned if ref["kind"] == "Sandbox"]
            if len(refs) == 1 and refs[0] in uids.values():
                owners[refs[0]] += 1
            else:
                orphans.append(pod["metadata"]["name"])
        assert not orphans, f"Pods owned by no sandbox of this test: {orphans}"
        pods_per_sandbox = {name: owners[uid] for name, uid in uids.items()}
        assert set(pods_per_sandbox.values()) == {1}, (
            f"sandbox Pods per sandbox should be 1, found {pods_per_sandbox}"
        )
        # The kubelet really runs them (their pause container) while the VMs run.
        not_running = {
            pod["metadata"]["name"]: (pod.get("status") or {}).get("phase")
            for pod in self.pods()
            if (pod.get("status") or {}).get("phase") != "Running"
        }
        assert not not_running, f"sandbox Pods not Running: {not_running}"

    def assert_commands_run(self, bodies: dict[str, dict[str, Any]]) -> None:
        results = {
            name: self.run(body["metadata"]["uid"], "hostname") for name, body in bodies.items()
        }
        failed = {name: result for name, result in results.items() if result[0] != 0}
        assert not failed, f"commands failed: {failed}"

    def delete_and_assert_nothing_left(self, bodies: dict[str, dict[str, Any]]) -> None:
        names = sorted(bodies)
        uids = [body["metadata"]["uid"] for body in bodies.values()]
        self.delete(names)
        left = set(self.sandboxes()) & set(names)
        assert not left, f"Sandboxes still there after delete: {sorted(left)}"
        # The garbage collector removes the Pods the deleted Sandboxes owned.
        eventually(
            lambda: not self.pods(),
            120,
            lambda: f"Pods left after delete: {self.pod_names()}",
        )
        vms = self.vms()
        assert not vms, f"QEMU processes left after delete: {vms}"
        files = self.files_of(uids)
        assert not files, f"node agent files left after delete: {files}"
        namespaces = [
            name for name in services.netns_names()
            if name.startswith("ksb-") and any(uid.startswith(name[4:]) for uid in uids)
        ]  # fmt: skip
        assert not namespaces, f"network namespaces left after delete: {namespaces}"

    # --- kubesandbox's own Pods ------------------------------------------------------------------

    def crash(self, component: str) -> int:
        """SIGKILLs the main process of the Pod of ``component`` (``node-agent``, ``operator``)
        as a crash or an OOM kill would; the kubelet starts the container again. Returns the
        killed pid. The VMs are no processes of the node agent's container (they live in
        cgroups of their own), so they are not in it."""
        pid = self.system.installed.container_pid(component)
        os.kill(pid, signal.SIGKILL)
        eventually(lambda: not Path(f"/proc/{pid}").exists(), 30, f"{component} {pid} alive")
        return pid

    def wait_restarted(self, component: str, killed: int) -> None:
        def started_again() -> bool:
            try:
                return self.system.installed.container_pid(component) != killed
            except LookupError:
                return False

        eventually(started_again, 180, f"the kubelet restarted {component}")


@pytest.fixture(scope="module")
def chaos(system: System) -> Iterator[Chaos]:
    with system.plane.api_client() as api:
        yield Chaos(system, api)


@pytest.mark.timeout(1800)
def test_ten_sandboxes_applied_at_once_run_and_leave_nothing(chaos: Chaos) -> None:
    names = [f"many-{i}" for i in range(COUNT)]
    chaos.apply(names, **CHEAPEST)
    bodies = chaos.wait_running(names, CONVERGE_TIMEOUT)
    chaos.assert_one_vm_and_one_pod_each(bodies)
    chaos.assert_commands_run(bodies)
    chaos.delete_and_assert_nothing_left(bodies)


@pytest.mark.timeout(1200)
def test_node_agent_killed_during_boot_converges_to_one_vm(chaos: Chaos) -> None:
    name = "agent-killed"
    chaos.apply([name], **CHEAPEST)

    # The worst moment: QEMU runs, the guest has not said core.ready yet (phase Booting).
    deadline = time.monotonic() + 300
    while True:  # a tight poll: a boot under TCG lasts a few seconds
        body = chaos.sandbox(name)
        phase = (body.get("status") or {}).get("phase")
        assert phase not in ("Running", "Crashed", "Failed"), f"missed the boot: phase {phase}"
        uid = body["metadata"]["uid"]
        if phase == "Booting" and chaos.vms_per_uid([uid])[uid] == 1:
            break
        assert time.monotonic() < deadline, f"never saw the sandbox Booting: phase {phase}"
        time.sleep(0.05)
    killed = chaos.crash("node-agent")
    vms_at_kill = chaos.vms_per_uid([uid])[uid]
    assert vms_at_kill == 1, f"the VM died with the node agent: {chaos.vms()}"
    chaos.wait_restarted("node-agent", killed)

    bodies = chaos.wait_running([name], CONVERGE_TIMEOUT)
    assert bodies[name]["metadata"]["uid"] == uid
    assert chaos.vms_per_uid([uid])[uid] == 1, (
        f"killed in phase {phase} with {vms_at_kill} QEMU; now QEMU for it: {chaos.vms()}"
    )
    chaos.assert_one_vm_and_one_pod_each(bodies)
    assert chaos.run(uid, "echo alive") == (0, "alive\n")
    chaos.delete_and_assert_nothing_left(bodies)


@pytest.mark.timeout(1800)
def test_operator_killed_while_creating_ten_converges_without_duplicates(chaos: Chaos) -> None:
    names = [f"op-killed-{i}" for i in range(COUNT)]
    chaos.apply(names, **CHEAPEST)

    # Killed as soon as the operator has created its first sandbox Pod: the others are being
    # created, or not yet, and none of them runs.
    deadline = time.monotonic() + 300
    while not chaos.pods():
        assert time.monotonic() < deadline, f"no Pod created: {_summary(chaos.sandboxes())}"
        time.sleep(0.05)
    killed = chaos.crash("operator")
    pods_at_kill, at_kill = chaos.pod_names(), _summary(chaos.sandboxes())
    assert len(pods_at_kill) < COUNT or "Running" not in at_kill, f"too late: {at_kill}"
    chaos.wait_restarted("operator", killed)

    bodies = chaos.wait_running(names, CONVERGE_TIMEOUT)
    assert len(bodies) == COUNT, f"killed with Pods {pods_at_kill}, {at_kill}"
    chaos.assert_one_vm_and_one_pod_each(bodies)
    chaos.assert_commands_run(bodies)
    chaos.delete_and_assert_nothing_left(bodies)


@pytest.mark.timeout(900)
def test_the_node_agents_pod_deleted_loses_no_vm(chaos: Chaos) -> None:
    """An upgrade or an eviction: the Pod goes (SIGTERM, then its containers are removed), a
    new one comes, and the VM is the same QEMU process, not rebooted, and reachable."""
    name = "outlives-agent"
    chaos.apply([name], **CHEAPEST)
    bodies = chaos.wait_running([name], CONVERGE_TIMEOUT)
    uid = bodies[name]["metadata"]["uid"]
    before = chaos.vms()
    code, uptime = chaos.run(uid, "cat /proc/uptime; echo kept > /tmp/mark")
    assert code == 0, uptime
    chaos.system.replace_node_agent_pod()
    assert chaos.vms() == before  # the same QEMU process (pid and command line)
    bodies = chaos.wait_running([name], CONVERGE_TIMEOUT)
    code, output = chaos.run(uid, "cat /proc/uptime /tmp/mark")
    assert code == 0, output
    assert float(output.split()[0]) > float(uptime.split()[0])  # uptime goes on: no reboot
    assert output.splitlines()[-1] == "kept"
    chaos.assert_one_vm_and_one_pod_each(bodies)
    chaos.delete_and_assert_nothing_left(bodies)
