"""The unmodified microsandbox SDK (PyPI ``microsandbox==0.7.11``, cloud backend) creating a
sandbox with network rules through the gateway, on a real VM of the host-process system:
the rules arrive in ``spec.network.rules``, the guest reaches what they allow (by domain,
through the sandbox's resolver and its test zone) and nothing else, and a rule changed on
the Sandbox object applies to the running VM without a reboot.

Written against a small interface (``plane.kubectl``, ``gateway_url``, ``demo_token``), as the
Helm install's suite has, so that it can move there (the node agent's ``dns`` option through
``nodeAgent.extraConfig``). Test hosts live in network namespaces on TEST-NET addresses.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any, Protocol

import pytest
from microsandbox import (
    BackendKind,
    Destination,
    Network,
    NetworkPolicy,
    Rule,
    Sandbox,
    backend_scope,
)
from microsandbox import Protocol as IpProtocol

from kubesandbox_devenv import services
from kubesandbox_devenv.controlplane import ControlPlane
from tests.support.testnet import Host, remove_host, start_dns_host, start_host

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.registry, pytest.mark.controlplane]

ALLOWED, DENIED, RESOLVER = "203.0.113.70", "203.0.113.71", "192.168.252.70"
ZONE = {"allowed.sdk.test": [ALLOWED], "denied.sdk.test": [DENIED]}
NAME = "sdk-rules"


class System(Protocol):
    @property
    def plane(self) -> ControlPlane: ...
    @property
    def gateway_url(self) -> str: ...
    @property
    def demo_token(self) -> str: ...


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    hosts: list[Host] = []
    try:
        hosts.append(start_host("sdkok", ALLOWED, "tcp", 8080, 70))
        hosts.append(start_host("sdkno", DENIED, "tcp", 8080, 71))
        hosts.append(start_dns_host("sdkdns", RESOLVER, ZONE, 72))
        with services.running_system("ksr", dns=[RESOLVER]) as running:
            wait_for_demo_rights(running)
            yield running
    finally:
        for i, host in enumerate(hosts):
            remove_host(host, 70 + i)


def wait_for_demo_rights(system: System, timeout: float = 60.0) -> None:
    """``edit`` reaches ``sandboxes`` through ClusterRole aggregation, which the controller
    manager fills in shortly after start-up: wait for it rather than meet a 403."""
    deadline = time.monotonic() + timeout
    while True:
        answer = system.plane.kubectl(
            "auth", "can-i", "create", "sandboxes.kubesandbox.dev", "-n", "default",
            "--as=system:serviceaccount:default:demo", check=False,
        ).stdout.strip()  # fmt: skip
        if answer == "yes":
            return
        assert time.monotonic() < deadline, f"demo still may not create sandboxes: {answer}"
        time.sleep(0.5)


def stored_network(system: System) -> Any:
    out = system.plane.kubectl("get", "sandbox", NAME, "-n", "default", "-o", "json").stdout
    return json.loads(out)["spec"]["network"]


async def test_sdk_rules_are_enforced_and_change_live(system: System) -> None:
    policy = NetworkPolicy(
        rules=(
            *Rule.allow_dns(),
            Rule.allow(destination=Destination.domain("allowed.sdk.test"),
                       protocol=IpProtocol.TCP, port=8080),
            Rule.deny(destination=Destination.cidr("203.0.113.0/24")),
        )
    )  # fmt: skip
    url = f"{system.gateway_url}/ns/default"
    with backend_scope(BackendKind.CLOUD, url=url, api_key=system.demo_token):
        sandbox = await Sandbox.create(NAME, image="busybox:1.36", network=Network(policy=policy))
        assert stored_network(system) == {
            "policy": "None",
            "rules": [
                {"action": "Allow", "destination": {"domain": "allowed.sdk.test"},
                 "protocol": "TCP", "ports": [{"port": 8080}]},
                {"action": "Deny", "destination": {"cidr": "203.0.113.0/24"}},
            ],
            "secretViolationAction": "BlockAndLog",  # the schema's default, for secrets
        }  # fmt: skip

        async def lookup(args: str) -> str:
            # asked again when no address came back: busybox's A and AAAA queries race, and
            # on a loaded machine it sometimes reports the AAAA reply alone ("No answer")
            out = ""
            for _ in range(3):
                out = (await sandbox.shell(f"busybox nslookup {args}")).stdout_text
                if "Address: " in out.split("\n\n", 1)[-1]:
                    break
            return out

        async def reach(address: str) -> str:
            result = await sandbox.shell(f"busybox nc -w 3 {address} 8080 || echo FAILED")
            return result.stdout_text.strip()

        boot = (await sandbox.shell("cat /proc/sys/kernel/random/boot_id")).stdout_text
        assert await reach(ALLOWED) == "FAILED"  # not resolved yet: the CIDR Deny decides
        looked = await lookup("allowed.sdk.test")
        assert f"Address: {ALLOWED}" in looked, looked
        assert await reach(ALLOWED) == f"hello from {ALLOWED}"
        looked = await lookup("denied.sdk.test 198.51.100.1")
        assert f"Address: {DENIED}" in looked, looked  # another server: ours answered
        assert await reach(DENIED) == "FAILED"

        patch = {"spec": {"network": {"rules": [
            {"action": "Allow", "destination": {"domainSuffix": "sdk.test"}}]}}}  # fmt: skip
        system.plane.kubectl(
            "patch", "sandbox", NAME, "-n", "default", "--type=merge", "-p", json.dumps(patch)
        )
        out = ""
        for _ in range(60):
            out = await reach(DENIED)
            if out != "FAILED":
                break
            await asyncio.sleep(0.5)
        assert out == f"hello from {DENIED}"  # pinned before the change, allowed after it
        again = (await sandbox.shell("cat /proc/sys/kernel/random/boot_id")).stdout_text
        assert again == boot  # the same boot: no restart

        handle = await Sandbox.get(NAME)
        echoed = json.loads(handle.config_json)["network"]["policy"]
        assert {"direction": "egress", "destination": {"domain_suffix": "sdk.test"},
                "protocols": [], "ports": [], "action": "allow"} in echoed["rules"]  # fmt: skip
        await sandbox.stop()
