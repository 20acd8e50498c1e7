"""kube/nodeagents.py: what a node agent Lease announces, and refusing Leases that disagree."""

from __future__ import annotations

import hashlib
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kubesandbox_kube.nodeagents import (
    CERTIFICATE,
    CERTIFICATE_SHA256,
    LeaseError,
    announcement,
    fingerprint,
    parse_lease,
    pinned_context,
)
from kubesandbox_node.server import tls

RENEWED = datetime(2026, 12, 4, 6, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tls.self_signed(tmp_path_factory.mktemp("tls"), "node-1", ["10.0.0.5"]).pem


def lease(annotations: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "node-agent-node-1", "annotations": annotations},
        "spec": {"renewTime": "2026-12-04T06:00:00.000000Z", "leaseDurationSeconds": 40, **spec},
    }


def test_an_announcement_parses_back_with_its_certificate(pem: str) -> None:
    annotations = announcement(
        "https://10.0.0.5:9443/", emulation=False, capabilities=["oci", "bind"], certificate=pem
    )
    agent = parse_lease("node-1", lease(annotations))
    assert agent.endpoint == "https://10.0.0.5:9443"
    assert agent.url("u-1", "exec") == "https://10.0.0.5:9443/v1/sandboxes/u-1/exec"
    assert agent.certificate == pem
    assert agent.capabilities == ("oci", "bind")
    assert agent.emulation is False
    assert agent.expires_at == RENEWED + timedelta(seconds=40)
    assert agent.pinned_ssl is pinned_context(pem)  # one context per certificate


def test_the_fingerprint_is_the_sha256_of_the_der(pem: str) -> None:
    der = ssl.PEM_cert_to_DER_cert(pem)
    assert fingerprint(pem) == hashlib.sha256(der).hexdigest()
    colons = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    annotations = {"kubesandbox.dev/endpoint": "https://h:1", CERTIFICATE: pem}
    annotations[CERTIFICATE_SHA256] = colons  # as openssl prints it
    assert parse_lease("n", lease(annotations)).certificate == pem


def test_https_without_a_certificate_is_left_to_the_callers_trust_store() -> None:
    agent = parse_lease("n", lease({"kubesandbox.dev/endpoint": "https://10.0.0.5:9443"}))
    assert agent.certificate is None
    assert agent.pinned_ssl is None


@pytest.mark.parametrize(
    ("annotations", "complaint"),
    [
        ({}, "kubesandbox.dev/endpoint is not an http"),
        ({"kubesandbox.dev/endpoint": "file:///etc/passwd"}, "not an http"),
        ({"kubesandbox.dev/endpoint": "https://"}, "not an http"),
        ({"kubesandbox.dev/endpoint": "http://h:1", CERTIFICATE: "PEM"}, "is not https"),
        ({"kubesandbox.dev/endpoint": "https://h:1", CERTIFICATE_SHA256: "ab"}, "without"),
        ({"kubesandbox.dev/endpoint": "https://h:1", CERTIFICATE: "garbage"}, "exactly one"),
        (
            {
                "kubesandbox.dev/endpoint": "https://h:1",
                CERTIFICATE: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            },
            "is not a PEM certificate",
        ),
        ({"kubesandbox.dev/endpoint": "https://h:1", CERTIFICATE: "x" * 20000}, "longer than"),
    ],
)
def test_bad_leases_are_refused_naming_the_annotation(
    annotations: dict[str, str], complaint: str
) -> None:
    with pytest.raises(LeaseError, match=complaint):
        parse_lease("n", lease(annotations))


def test_two_certificates_or_a_wrong_fingerprint_are_refused(pem: str, tmp_path: Path) -> None:
    base = {"kubesandbox.dev/endpoint": "https://h:1"}
    with pytest.raises(LeaseError, match="exactly one"):
        parse_lease("n", lease({**base, CERTIFICATE: pem + pem}))
    other = tls.self_signed(tmp_path, "node-1", ["10.0.0.5"]).pem
    with pytest.raises(LeaseError, match="does not match"):
        parse_lease("n", lease({**base, CERTIFICATE: pem, CERTIFICATE_SHA256: fingerprint(other)}))


def test_a_bad_renew_time_is_refused() -> None:
    with pytest.raises(LeaseError, match=r"spec\.renewTime"):
        parse_lease("n", lease({"kubesandbox.dev/endpoint": "http://h:1"}, renewTime="soon"))
