"""Node agent Leases: what a node agent announces, and how its callers trust what it serves.

Each node agent renews a ``coordination.k8s.io/v1`` Lease ``node-agent-<node>`` in the
system namespace (docs/node-agent.md). Its annotations say where the agent listens and what it
can do, and, when it serves HTTPS with a certificate nobody signed, *which* certificate:

``kubesandbox.dev/endpoint``
    the base URL of its API (``https://10.0.0.5:9443``);
``kubesandbox.dev/emulation``
    ``"true"`` when VMs run under TCG;
``kubesandbox.dev/capabilities``
    comma-separated capability names;
``kubesandbox.dev/tls-certificate``
    the PEM of its serving certificate (one certificate);
``kubesandbox.dev/tls-certificate-sha256``
    the SHA-256 of that certificate's DER, lower-case hex (what
    ``openssl x509 -noout -fingerprint -sha256`` prints, without colons).

The node agent writes them with :func:`announcement`; the operator and the gateway read them
with :func:`parse_lease`, which refuses a Lease whose parts disagree, and open connections
with :func:`pinned_context`: an SSL context whose only trust anchor is the announced
certificate. No CA and no Secret is involved: the binding is "whoever may write this node's
Lease", which RBAC gives only to node agents and a ValidatingAdmissionPolicy narrows to the
agent of that very node (docs/security.md). Host names are not checked (the certificate is the
identity, whatever address reached it); chain building, signatures and validity dates are.
"""

from __future__ import annotations

import functools
import hashlib
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

LEASE_PREFIX = "node-agent-"
ENDPOINT = "kubesandbox.dev/endpoint"
EMULATION = "kubesandbox.dev/emulation"
CAPABILITIES = "kubesandbox.dev/capabilities"
CERTIFICATE = "kubesandbox.dev/tls-certificate"
CERTIFICATE_SHA256 = "kubesandbox.dev/tls-certificate-sha256"
NODE_LABEL = "kubesandbox.dev/node"
DEFAULT_LEASE_SECONDS = 40
MAX_CERTIFICATE_PEM = 16384
"""A P-256 certificate is ~700 bytes of PEM; anything far larger is not one of ours."""
PEM_BEGIN = "-----BEGIN CERTIFICATE-----"


class LeaseError(ValueError):
    """The Lease does not announce a usable node agent; the message names the annotation."""


def lease_name(node: str) -> str:
    return LEASE_PREFIX + node


@dataclass(frozen=True)
class NodeAgentLease:
    """A node agent as its Lease announces it."""

    node: str
    endpoint: str
    """Base URL without a trailing slash."""
    expires_at: datetime
    emulation: bool = False
    capabilities: tuple[str, ...] = ()
    certificate: str | None = None
    """The pinned serving certificate (PEM), or ``None``: plain HTTP, or HTTPS with a
    certificate the caller's own trust store must vouch for."""

    def alive(self, now: datetime) -> bool:
        return now < self.expires_at

    def url(self, uid: str, verb: str = "") -> str:
        return f"{self.endpoint}/v1/sandboxes/{uid}" + (f"/{verb}" if verb else "")

    @property
    def pinned_ssl(self) -> ssl.SSLContext | None:
        """The SSL context that trusts exactly the announced certificate (``None``: none)."""
        return None if self.certificate is None else pinned_context(self.certificate)


def fingerprint(pem: str) -> str:
    """SHA-256 of the certificate's DER, lower-case hex."""
    return hashlib.sha256(_certificate(pem).public_bytes(Encoding.DER)).hexdigest()


def announcement(
    endpoint: str,
    *,
    emulation: bool,
    capabilities: Sequence[str],
    certificate: str | None = None,
) -> dict[str, str]:
    """The annotations a node agent puts on its Lease."""
    annotations = {
        ENDPOINT: endpoint,
        EMULATION: "true" if emulation else "false",
        CAPABILITIES: ",".join(capabilities),
    }
    if certificate is not None:
        annotations[CERTIFICATE] = certificate
        annotations[CERTIFICATE_SHA256] = fingerprint(certificate)
    return annotations


def parse_lease(node: str, lease: Mapping[str, Any]) -> NodeAgentLease:
    """The node agent a Lease announces; :class:`LeaseError` says what is wrong with it."""
    metadata = lease.get("metadata") or {}
    spec = lease.get("spec") or {}
    annotations = metadata.get("annotations") or {}
    endpoint = str(annotations.get(ENDPOINT) or "").rstrip("/")
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise LeaseError(f"annotation {ENDPOINT} is not an http(s) URL: {endpoint[:200]!r}")
    certificate = annotations.get(CERTIFICATE)
    if certificate is not None:
        certificate = str(certificate)
        if parts.scheme != "https":
            raise LeaseError(f"annotation {CERTIFICATE} is set but {ENDPOINT} is not https")
        _check_certificate(certificate, annotations.get(CERTIFICATE_SHA256))
        try:
            pinned_context(certificate)  # cached: what callers use later is built once, here
        except ssl.SSLError as error:
            raise LeaseError(f"annotation {CERTIFICATE} cannot be trusted: {error}") from error
    elif annotations.get(CERTIFICATE_SHA256):
        raise LeaseError(f"annotation {CERTIFICATE_SHA256} is set without {CERTIFICATE}")
    renewed = spec.get("renewTime") or spec.get("acquireTime")
    try:
        renewed_at = (
            datetime.fromisoformat(str(renewed).replace("Z", "+00:00"))
            if renewed
            else datetime.fromtimestamp(0, UTC)
        )
        seconds = int(spec.get("leaseDurationSeconds") or DEFAULT_LEASE_SECONDS)
    except (TypeError, ValueError) as error:
        raise LeaseError(f"spec.renewTime or spec.leaseDurationSeconds: {error}") from error
    if renewed_at.tzinfo is None:
        renewed_at = renewed_at.replace(tzinfo=UTC)
    capabilities = str(annotations.get(CAPABILITIES) or "")
    return NodeAgentLease(
        node=node,
        endpoint=endpoint,
        expires_at=renewed_at + timedelta(seconds=seconds),
        emulation=annotations.get(EMULATION) == "true",
        capabilities=tuple(c for c in capabilities.split(",") if c),
        certificate=certificate,
    )


@functools.lru_cache(maxsize=256)
def pinned_context(pem: str) -> ssl.SSLContext:
    """A client context whose one trust anchor is ``pem``; host names are not checked.

    Cached per certificate: every request to the same node agent reuses one context (and so
    aiohttp's pooled connections, which are keyed by it); a new certificate gets a new one.
    ``VERIFY_X509_PARTIAL_CHAIN`` lets the pinned certificate itself be the anchor, whether it
    is self-signed or was issued by a CA the caller does not know.
    """
    context = ssl.create_default_context(cadata=pem)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def _certificate(pem: str) -> x509.Certificate:
    if len(pem) > MAX_CERTIFICATE_PEM:
        raise LeaseError(f"annotation {CERTIFICATE} is longer than {MAX_CERTIFICATE_PEM} bytes")
    if pem.count(PEM_BEGIN) != 1:
        raise LeaseError(f"annotation {CERTIFICATE} must hold exactly one PEM certificate")
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError as error:
        raise LeaseError(f"annotation {CERTIFICATE} is not a PEM certificate: {error}") from error


def _check_certificate(pem: str, announced: object) -> None:
    actual = fingerprint(pem)
    if announced is not None and str(announced).replace(":", "").lower() != actual:
        raise LeaseError(
            f"annotation {CERTIFICATE_SHA256} ({str(announced)[:80]!r}) does not match the "
            f"certificate in {CERTIFICATE} (sha256 {actual})"
        )
