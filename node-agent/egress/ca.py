"""The per-sandbox certificate authority the egress proxy intercepts TLS with.

One CA per sandbox, made when its proxy starts: an ECDSA P-256 key that lives in this
process's memory only (never written to a file: Python's ``ssl`` loads certificates from
paths, so each minted chain goes through an anonymous ``memfd`` that is closed at once), and a
self-signed certificate, the only part that leaves the node agent (into the guest's trust
store). A node agent restart makes a new CA and writes its certificate into the guest again
(docs/networking.md, "Egress: secrets").

Leaf certificates are minted on demand for the name the guest asked for (SNI) or the address
it connected to, after the proxy verified the real server for that name; they are cached per
name, bounded (``MAX_LEAVES``, least recently used first out) and re-minted before they
expire. Next: ``proxy``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections import OrderedDict

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MAX_LEAVES = 256
CA_LIFETIME = datetime.timedelta(days=365)
LEAF_LIFETIME = datetime.timedelta(days=7)
LEAF_REFRESH = datetime.timedelta(days=1)
"""A cached leaf older than this is minted again (long before it expires)."""
BACKDATE = datetime.timedelta(hours=1)
"""Certificates start this long before now: guest clocks (a restored VM's) run behind."""
ALPN = ["http/1.1"]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class SandboxCA:
    """A CA for one sandbox; :meth:`server_context` is the TLS server side for a name."""

    def __init__(self, label: str) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kubesandbox"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"kubesandbox egress CA {label}"[:64]),
            ]
        )
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.pem = self.certificate.public_bytes(serialization.Encoding.PEM)
        self._leaf_key_pem = _pem_key(self._leaf_key)
        self._contexts: OrderedDict[str, tuple[datetime.datetime, ssl.SSLContext]] = OrderedDict()

    def leaf(self, name: str) -> x509.Certificate:
        """A certificate for ``name`` (a DNS name or an IP address) signed by this CA."""
        now = _now()
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            san = x509.DNSName(name)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
            .issuer_name(self.certificate.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + LEAF_LIFETIME)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )

    def server_context(self, name: str) -> ssl.SSLContext:
        """The TLS server context presenting a leaf for ``name`` (cached, bounded)."""
        now = _now()
        cached = self._contexts.get(name)
        if cached is not None and now - cached[0] < LEAF_REFRESH:
            self._contexts.move_to_end(name)
            return cached[1]
        leaf = self.leaf(name)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(ALPN)
        chain = leaf.public_bytes(serialization.Encoding.PEM) + self.pem + self._leaf_key_pem
        _load_from_memory(context, chain)
        self._contexts[name] = (now, context)
        self._contexts.move_to_end(name)
        while len(self._contexts) > MAX_LEAVES:
            self._contexts.popitem(last=False)
        return context

    def __len__(self) -> int:
        return len(self._contexts)


def _load_from_memory(context: ssl.SSLContext, pem: bytes) -> None:
    """``load_cert_chain`` from an anonymous memory file: the key touches no filesystem."""
    fd = os.memfd_create("ksb-egress-leaf", os.MFD_CLOEXEC)
    try:
        view = memoryview(pem)
        while view:
            view = view[os.write(fd, view) :]
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def upstream_context(extra_cas: list[str] | None = None) -> ssl.SSLContext:
    """The TLS client side towards real servers: the node's trust store plus the PEM bundles
    the node agent is configured with (``egressUpstreamCAs``)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    for path in extra_cas or []:
        context.load_verify_locations(cafile=path)
    context.set_alpn_protocols(ALPN)
    return context
