"""``spec.secrets`` on the Helm-installed system (``conftest.system``: the chart's operator,
gateway and node agent Pods on a real kubelet node, the node agent installed trusting the
test hosts' CA through ``nodeAgent.egressUpstreamCA``): a Kubernetes Secret's value reaches
the allowed test host over HTTPS from a real VM of the Debian test image, which only ever
holds the placeholder; the placeholder sent to another host is blocked without the value and
reported as a ``SecretViolation`` Event; a rotated Secret is used by the running VM; the value
is in no Kubernetes object but the Secret, no file under the node agent's state directory
and no log of the three components. The hosts are named by address (``allowHosts`` takes IP
literals): the node agent resolves names with the node's resolver, which knows no test zone.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest

from kubesandbox_devenv import installed
from tests.e2e.conftest import System
from tests.support.egress import EgressHosts, egress_hosts, files_holding, guest_image
from tests.support.waiting import eventually

pytestmark = [pytest.mark.controlplane, pytest.mark.vm, pytest.mark.slow, pytest.mark.registry]

NAME = "keyholder"
SECRET = "keyholder-api-key"
VALUE = "sk-e2e-7d41c9a0b2"
ROTATED = "sk-e2e-rotated-55e0c3f1"
API, OTHER = "api.e2e-secrets.test", "other.e2e-secrets.test"


@pytest.fixture(scope="module")
def kit(system: System) -> Iterator[EgressHosts]:
    assert system.upstream_ca is not None
    with egress_hosts([API, OTHER], ca=system.upstream_ca) as hosts:
        yield hosts


def secret(value: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": "default"},
            "data": {"key": base64.b64encode(value.encode()).decode()},
        }
    )


def sandbox(image: str, api: str) -> str:
    return json.dumps(
        {
            "apiVersion": "kubesandbox.dev/v1alpha1",
            "kind": "Sandbox",
            "metadata": {"name": NAME, "namespace": "default"},
            "spec": {
                "image": {"oci": image},
                "memory": 384,
                "secrets": [
                    {
                        "env": "API_KEY",
                        "secretKeyRef": {"name": SECRET, "key": "key"},
                        "allowHosts": [api],
                    }
                ],
            },
        }
    )


def curl(address: str, path: str) -> str:
    return (
        f'curl -sS --max-time 20 -o /dev/null -w "%{{http_code}}" '
        f'-H "Authorization: Bearer $API_KEY" https://{address}{path}'
    )


def component_logs(system: System) -> str:
    return "".join(
        system.plane.kubectl(
            "logs", f"{kind}/{name}", "-n", installed.SYSTEM_NAMESPACE, "--all-containers",
            "--tail=-1",
        ).stdout
        for kind, name in installed.WORKLOADS
    )  # fmt: skip


def violations(system: System) -> list[str]:
    out = system.plane.kubectl(
        "get", "events", "-n", "default", "-o", "json",
        "--field-selector", f"involvedObject.name={NAME},reason=SecretViolation",
    ).stdout  # fmt: skip
    return [str(item.get("message")) for item in json.loads(out)["items"]]


def test_a_secret_reaches_only_its_host_and_is_nowhere_else(
    system: System, kit: EgressHosts
) -> None:
    api, other = kit[API], kit[OTHER]
    system.plane.kubectl("apply", "-f", "-", input_text=secret(VALUE))
    system.plane.kubectl(
        "apply", "-f", "-", input_text=sandbox(guest_image(system.registry), api.address)
    )
    try:
        system.wait_for_phase(NAME, {"Running"}, ready=True)

        script = 'printf "%s\\n" "$API_KEY"; cat /proc/*/environ 2>/dev/null | grep -c sk-e2e'
        _, out = system.run(NAME, script)
        assert out.splitlines() == ["$MSB_API_KEY", "0"], out

        code, out = system.run(NAME, curl(api.address, "/first"))
        assert (code, out) == (0, "200"), out
        first = api.wait_for(lambda r: r.path == "/first")
        assert first.header("authorization") == f"Bearer {VALUE}"

        code, out = system.run(NAME, curl(other.address, "/steal"))
        assert code != 0, out
        assert not other.carries(VALUE)
        assert not other.carries("$MSB_API_KEY")
        eventually(lambda: violations(system), 60, "a SecretViolation Event")
        assert all(VALUE not in message for message in violations(system))

        system.plane.kubectl("apply", "-f", "-", input_text=secret(ROTATED))

        def rotated() -> bool:
            system.run(NAME, curl(api.address, "/rotated"))
            return any(
                r.path == "/rotated" and r.header("authorization") == f"Bearer {ROTATED}"
                for r in api.requests()
            )

        eventually(rotated, 120, "the rotated value at the allowed host")

        stored = system.plane.kubectl("get", "sandbox", NAME, "-o", "json").stdout
        for value in (VALUE, ROTATED):
            assert value not in stored
            assert value not in component_logs(system)
        assert files_holding(system.installed.dirs.state, [VALUE, ROTATED]) == []
    finally:
        system.plane.kubectl("delete", "sandbox", NAME, "--wait", "--timeout=120s")
        system.plane.kubectl("delete", "secret", SECRET)


def test_a_sandbox_with_secrets_is_served_by_a_warm_pool(system: System, kit: EgressHosts) -> None:
    """Secrets apply at a claim (docs/pools.md): the pool's VM booted without any, the
    claimant's value still reaches only its host, through a proxy of its own."""
    api = kit[API]
    image = guest_image(system.registry)
    pool = {
        "apiVersion": "kubesandbox.dev/v1alpha1",
        "kind": "SandboxPool",
        "metadata": {"name": "keyholders", "namespace": "default"},
        "spec": {"replicas": 1, "template": {"spec": {"image": {"oci": image}, "memory": 384}}},
    }
    system.plane.kubectl("apply", "-f", "-", input_text=json.dumps(pool))
    system.plane.kubectl("apply", "-f", "-", input_text=secret(VALUE))
    try:
        system.plane.kubectl(
            "wait", "--for=condition=Ready", "sandboxpool/keyholders", "--timeout=300s"
        )
        system.plane.kubectl("apply", "-f", "-", input_text=sandbox(image, api.address))
        body = system.wait_for_phase(NAME, {"Running"}, ready=True)
        assert body["status"].get("pool") == "keyholders", body["status"]

        _, out = system.run(NAME, 'printf "%s\\n" "$API_KEY"')
        assert out == "$MSB_API_KEY\n", out
        code, out = system.run(NAME, curl(api.address, "/pooled"))
        assert (code, out) == (0, "200"), out
        assert api.wait_for(lambda r: r.path == "/pooled").header("authorization") == (
            f"Bearer {VALUE}"
        )
    finally:
        system.plane.kubectl("delete", "sandbox", NAME, "--wait", "--timeout=120s")
        system.plane.kubectl("delete", "sandboxpool", "keyholders", "--wait", "--timeout=120s")
        system.plane.kubectl("delete", "secret", SECRET)
