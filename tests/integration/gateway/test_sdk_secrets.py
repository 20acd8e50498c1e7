"""The unmodified microsandbox SDK (PyPI ``microsandbox==0.7.11``, cloud backend) creating a
sandbox with secrets through the gateway, on a real VM of the host-process system booted from
the Debian test image (curl; tests/support/egress.py): the guest's environment holds only the
placeholders (the SDK's default one and a custom one), the allowed host receives the real
value over HTTPS, the entry with ``require_tls_identity=False`` also over plain HTTP, and the
placeholder sent to another host is blocked without the value and reported as a
``SecretViolation`` Event on the Sandbox. The Sandbox object and the SDK's view of it carry
the options, never the values. With ``secret_violation_action=BLOCK_AND_TERMINATE`` a
violation stops the sandbox (a request to the allowed host does not).

Written against a small interface (``plane.kubectl``, ``gateway_url``, ``demo_token``) as
tests/integration/gateway/test_sdk_rules.py is, so that it can move to the Helm install's
suite (the node agent's ``dns`` and ``egressUpstreamCAs`` through the chart's values).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from microsandbox import BackendKind, Sandbox, Secret, ViolationAction, backend_scope
from microsandbox.errors import MicrosandboxError

from kubesandbox_devenv import services
from tests.integration.gateway.test_sdk_rules import System, wait_for_demo_rights
from tests.support.egress import EgressHosts, egress_hosts, guest_image
from tests.support.waiting import eventually

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.registry, pytest.mark.controlplane]

API, PLAIN, OTHER = "api.sdksec.test", "plain.sdksec.test", "other.sdksec.test"
VALUE = "sk-sdk-4e8a2c6b0d"
PLAIN_VALUE = "plain-sdk-9f7e5d3c1b"
NAME = "sdk-secrets"


@dataclass
class World:
    system: System
    kit: EgressHosts
    image: str


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with (
        egress_hosts([API, PLAIN, OTHER]) as kit,
        services.running_system(
            "kss", dns=[kit.dns], egress_upstream_cas=[str(kit.ca_pem)]
        ) as running,
    ):
        wait_for_demo_rights(running)
        yield World(running, kit, guest_image(running.node_agent.registry.host))


def sandbox_json(system: System) -> dict[str, object]:
    out = system.plane.kubectl("get", "sandbox", NAME, "-n", "default", "-o", "json").stdout
    loaded: dict[str, object] = json.loads(out)
    return loaded


def violation_events(system: System) -> list[str]:
    out = system.plane.kubectl(
        "get", "events", "-n", "default", "-o", "json",
        "--field-selector", f"involvedObject.name={NAME},reason=SecretViolation",
    ).stdout  # fmt: skip
    return [str(item.get("message")) for item in json.loads(out)["items"]]


async def test_sdk_secrets_reach_only_their_hosts(world: World) -> None:
    kit, system = world.kit, world.system
    secrets = [
        Secret.env("API_KEY", value=VALUE, allow=[API]),
        Secret.env("PLAIN_KEY", value=PLAIN_VALUE, allow=[PLAIN], placeholder="PLAIN_PLACEHOLDER",
                   require_tls_identity=False),
    ]  # fmt: skip
    url = f"{system.gateway_url}/ns/default"
    with backend_scope(BackendKind.CLOUD, url=url, api_key=system.demo_token):
        sandbox = await Sandbox.create(NAME, image=world.image, secrets=secrets)
        stored = json.dumps(sandbox_json(system))
        assert VALUE not in stored
        assert PLAIN_VALUE not in stored
        entries = json.loads(stored)["spec"]["secrets"]
        assert [e.get("placeholder") for e in entries] == [None, "PLAIN_PLACEHOLDER"]
        assert [e["requireTLS"] for e in entries] == [True, False]  # the CRD defaults true

        env = await sandbox.shell('printf "%s|%s" "$API_KEY" "$PLAIN_KEY"')
        assert env.stdout_text == "$MSB_API_KEY|PLAIN_PLACEHOLDER"

        curl = "curl -sS --max-time 30"
        https = await sandbox.shell(f'{curl} -H "Authorization: Bearer $API_KEY" '
                                    f"https://{API}/sdk-https")  # fmt: skip
        assert (https.exit_code, https.stdout_text) == (0, f"ok {API}\n"), https.stderr_text
        seen = kit[API].wait_for(lambda r: r.path == "/sdk-https")
        assert (seen.sni, seen.header("authorization")) == (API, f"Bearer {VALUE}")

        plain = await sandbox.shell(f'{curl} -H "X-Key: $PLAIN_KEY" http://{PLAIN}/sdk-http')
        assert (plain.exit_code, plain.stdout_text) == (0, f"ok {PLAIN}\n"), plain.stderr_text
        assert kit[PLAIN].wait_for(lambda r: r.path == "/sdk-http").header("x-key") == PLAIN_VALUE

        other = await sandbox.shell(f'{curl} -H "X-Key: $API_KEY" https://{OTHER}/sdk-other')
        assert other.exit_code != 0, other.stdout_text
        assert "ok" not in other.stdout_text
        assert not kit[OTHER].carries(VALUE)
        assert not kit[OTHER].carries("$MSB_API_KEY")
        assert not kit[API].carries(PLAIN_VALUE)
        assert not kit[PLAIN].carries(VALUE)
        found = eventually(lambda: violation_events(system), 60, "a SecretViolation Event")
        assert all(VALUE not in message for message in found)

        handle = await Sandbox.get(NAME)
        echoed = json.loads(handle.config_json)["network"]["secrets"]["entries"]
        assert [(e["env_var"], e["placeholder"], e["require_tls_identity"]) for e in echoed] == [
            ("API_KEY", "$MSB_API_KEY", True),
            ("PLAIN_KEY", "PLAIN_PLACEHOLDER", False),
        ]
        assert VALUE not in handle.config_json
        await sandbox.stop()


def phase(system: System, name: str) -> str:
    out = system.plane.kubectl(
        "get", "sandbox", name, "-n", "default", "-o", "jsonpath={.status.phase}"
    ).stdout
    return out.strip()


async def test_block_and_terminate_from_the_sdk_stops_the_sandbox(world: World) -> None:
    kit, system, name = world.kit, world.system, f"{NAME}-kill"
    url = f"{system.gateway_url}/ns/default"
    with backend_scope(BackendKind.CLOUD, url=url, api_key=system.demo_token):
        sandbox = await Sandbox.create(
            name,
            image=world.image,
            secrets=[Secret.env("API_KEY", value=VALUE, allow=[API])],
            secret_violation_action=ViolationAction.BLOCK_AND_TERMINATE,
        )
        stored = json.loads(system.plane.kubectl(
            "get", "sandbox", name, "-n", "default", "-o", "json").stdout)  # fmt: skip
        assert stored["spec"]["network"]["secretViolationAction"] == "BlockAndTerminate"
        ok = await sandbox.shell(f'curl -sS --max-time 30 -H "X-Key: $API_KEY" https://{API}/k')
        assert ok.stdout_text == f"ok {API}\n", ok.stderr_text  # the allowed host: no violation
        assert phase(system, name) == "Running"
        with contextlib.suppress(MicrosandboxError):  # the VM may be killed under the exec
            await sandbox.shell(f'curl -sS --max-time 30 -H "X-Key: $API_KEY" https://{OTHER}/k')
        eventually(lambda: phase(system, name) in ("Stopped", "Crashed", "Failed"), 90,
                   lambda: f"the sandbox to be stopped, it is {phase(system, name)}")  # fmt: skip
        assert not kit[OTHER].carries(VALUE)
        assert not kit[OTHER].carries("$MSB_API_KEY")
