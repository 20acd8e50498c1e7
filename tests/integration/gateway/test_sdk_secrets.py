"""The unmodified microsandbox SDK (PyPI ``microsandbox==0.7.11``, cloud backend) creating a
sandbox with a secret through the gateway, on a real VM of the host-process system (issue
#12): the guest sees only the placeholder, the allowed test host receives the real value over
HTTPS, the same placeholder sent to another host is blocked and never arrives there.

Written against a small interface (``plane.kubectl``, ``gateway_url``, ``demo_token``), as the
Helm install's suite has (``dns`` and ``egressUpstreamCAs`` through the chart's values).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Protocol

import pytest
from microsandbox import BackendKind, Sandbox, Secret, backend_scope

from kubesandbox_devenv import services
from kubesandbox_devenv.controlplane import ControlPlane
from tests.integration.gateway.test_sdk_rules import wait_for_demo_rights
from tests.support.egress import EgressHosts, egress_hosts, guest_image

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.registry, pytest.mark.controlplane]

API, OTHER = "api.sdksec.test", "other.sdksec.test"
NAME = "sdk-secrets"
VALUE = "sdk-live-91a2b3c4d5"


class System(Protocol):
    @property
    def plane(self) -> ControlPlane: ...
    @property
    def gateway_url(self) -> str: ...
    @property
    def demo_token(self) -> str: ...


@pytest.fixture(scope="module")
def kit() -> Iterator[EgressHosts]:
    with egress_hosts([API, OTHER]) as hosts:
        yield hosts


@pytest.fixture(scope="module")
def running(kit: EgressHosts) -> Iterator[services.RunningSystem]:
    with services.running_system(
        "ksx", dns=[kit.dns], egress_upstream_cas=[str(kit.ca_pem)]
    ) as system:
        wait_for_demo_rights(system)
        yield system


async def test_the_sdk_secret_reaches_only_the_allowed_host(
    running: services.RunningSystem, kit: EgressHosts
) -> None:
    system: System = running
    image = guest_image(running.node_agent.registry.host)
    url = f"{system.gateway_url}/ns/default"
    with backend_scope(BackendKind.CLOUD, url=url, api_key=system.demo_token):
        sandbox = await Sandbox.create(
            NAME,
            image=image,
            memory=384,
            secrets=[Secret.env("API_KEY", value=VALUE, allow=[API])],
        )
        stored = json.loads(
            system.plane.kubectl("get", "sandbox", NAME, "-n", "default", "-o", "json").stdout
        )
        assert VALUE not in json.dumps(stored)
        assert stored["spec"]["secrets"][0]["allowHosts"] == [API]
        seen = (await sandbox.shell('printf "%s" "$API_KEY"')).stdout_text
        assert seen == "$MSB_API_KEY"
        curl = 'curl -sS --max-time 20 -H "Authorization: Bearer $API_KEY"'
        done = await sandbox.shell(f"{curl} https://{API}/sdk")
        assert done.stdout_text == f"ok {API}\n", done.stderr_text
        assert kit[API].wait_for(lambda r: r.path == "/sdk").header("authorization") == (
            f"Bearer {VALUE}"
        )
        refused = await sandbox.shell(f"{curl} https://{OTHER}/steal || echo BLOCKED")
        assert "BLOCKED" in refused.stdout_text
        assert not kit[OTHER].carries(VALUE)
        assert all(r.path != "/steal" for r in kit[OTHER].requests())
        await sandbox.stop()
