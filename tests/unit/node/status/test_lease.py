"""The node agent's Lease body: what it announces is what kubesandbox_kube.nodeagents parses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from kubesandbox_kube.nodeagents import fingerprint, parse_lease
from kubesandbox_node.server import tls
from kubesandbox_node.status.lease import LeaseRenewer


def renewer(certificate: str | None = None) -> LeaseRenewer:
    return LeaseRenewer(
        kube=None,  # type: ignore[arg-type]
        node="node-1",
        namespace="kubesandbox-system",
        endpoint="https://10.0.0.1:9443",
        emulation=True,
        capabilities=("oci", "pause"),
        instance="abc",
        certificate=certificate,
    )


def test_lease_announces_endpoint_emulation_and_capabilities() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    body = renewer().body(at, at)
    assert body["metadata"]["name"] == "node-agent-node-1"
    assert body["metadata"]["labels"] == {"kubesandbox.dev/node": "node-1"}
    assert body["metadata"]["annotations"] == {
        "kubesandbox.dev/endpoint": "https://10.0.0.1:9443",
        "kubesandbox.dev/emulation": "true",
        "kubesandbox.dev/capabilities": "oci,pause",
    }
    assert body["spec"]["holderIdentity"] == "node-1/abc"
    assert body["spec"]["leaseDurationSeconds"] == 40
    assert body["spec"]["renewTime"] == "2026-01-02T03:04:05.678000Z"


def test_lease_announces_the_serving_certificate_and_parses_back(tmp_path: Path) -> None:
    identity = tls.self_signed(tmp_path / "tls", "node-1", ["10.0.0.1"])
    at = datetime.now(UTC)
    body = renewer(identity.pem).body(at, at)
    annotations = body["metadata"]["annotations"]
    assert annotations["kubesandbox.dev/tls-certificate"] == identity.pem
    assert annotations["kubesandbox.dev/tls-certificate-sha256"] == fingerprint(identity.pem)
    agent = parse_lease("node-1", body)
    assert agent.endpoint == "https://10.0.0.1:9443"
    assert agent.certificate == identity.pem
    assert agent.emulation is True
    assert agent.capabilities == ("oci", "pause")
    assert agent.alive(at + timedelta(seconds=39))
    assert not agent.alive(at + timedelta(seconds=41))
