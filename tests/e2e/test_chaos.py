"""Many sandboxes at once, and the processes that run them killed at the worst moment.

The whole system of ``make up`` (real control plane, registry, node agent, operator, QEMU
VMs under TCG) in a module of its own. Every test counts what exists afterwards, precisely:
Sandboxes and their phases, sandbox Pods and their owners, QEMU processes per Sandbox UID
(``services.qemu_processes``, as ``make down`` finds them) and the node
agent's per-sandbox files.
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
from kubesandbox_devenv.nodes import NodeShape
from kubesandbox_devenv.processes import ManagedProcess
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
    running: services.RunningSystem
    api: client.ApiClient

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def agent_state(self) -> Path:
        return self.running.node_agent.state

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
        self.running.plane.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))

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
        socket = self.running.node_agent.relay_socket(uid)
        return asyncio.run(services.run_in_sandbox(socket, command))

    def delete(self, names: list[str]) -> None:
        self.running.plane.kubectl(
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


@pytest.fixture(scope="module")
def chaos() -> Iterator[Chaos]:
    # Ten sandbox Pods request 11 CPUs and 3.75 GiB: the one node advertises enough for them.
    shape = NodeShape(cpu="64", memory="64Gi")
    with (
        services.running_system("ksb-chaos-", node_shape=shape, cleanup_timeout=600) as running,
        running.plane.api_client() as api,
    ):
        yield Chaos(running, api)


def _sigkill(process: ManagedProcess) -> int:
    """SIGKILLs the process group of ``process`` (what a crash or an OOM kill does) and waits
    until it is gone; QEMU processes live in sessions of their own and are not in it."""
    pid = process.pid()
    assert pid is not None, f"{process.name} is not running"
    os.killpg(pid, signal.SIGKILL)
    eventually(lambda: not process.is_alive(), 30, lambda: f"{process.name} {pid} still alive")
    return pid


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
    _sigkill(chaos.running.node_agent.process)
    vms_at_kill = chaos.vms_per_uid([uid])[uid]
    assert vms_at_kill == 1, f"the VM died with the node agent: {chaos.vms()}"
    chaos.running.node_agent.start()

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
    _sigkill(chaos.running.operator.process)
    pods_at_kill, at_kill = chaos.pod_names(), _summary(chaos.sandboxes())
    assert len(pods_at_kill) < COUNT or "Running" not in at_kill, f"too late: {at_kill}"
    chaos.running.operator.start()

    bodies = chaos.wait_running(names, CONVERGE_TIMEOUT)
    assert len(bodies) == COUNT, f"killed with Pods {pods_at_kill}, {at_kill}"
    chaos.assert_one_vm_and_one_pod_each(bodies)
    chaos.assert_commands_run(bodies)
    chaos.delete_and_assert_nothing_left(bodies)
