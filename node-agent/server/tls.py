"""The node agent's HTTPS identity: configured files, or a self-signed certificate it makes.

In a cluster the node agent listens on the node's network and receives bearer tokens, so it
serves HTTPS. Two sources of a certificate:

- ``tlsCert`` / ``tlsKey``: files the platform team provides (any issuer);
- ``tls: auto``: an ECDSA P-256 key and a self-signed certificate the node agent makes itself
  in ``<stateDir>/tls/`` (key ``0600``, directory ``0700``) and reuses across restarts, so a
  restart does not invalidate what callers pinned. A new pair is made when the files are
  missing, unreadable, do not belong together, or the certificate expires within
  :data:`RENEW_BEFORE` (it is valid for :data:`VALIDITY`); a running node agent checks that
  at every Lease renewal too (:class:`Renewal`), announces the new certificate, then serves it.

Either way the certificate is announced in the node agent's Lease
(:func:`kubesandbox_kube.nodeagents.announcement`), and the operator and the gateway trust
exactly that certificate for that node agent: no CA, no Secret to distribute. The trust
argument is in docs/node-agent.md ("TLS").
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=365)
RENEW_BEFORE = datetime.timedelta(days=30)
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"


class TlsError(Exception):
    """A configured certificate or key cannot be used; the message names the file."""


@dataclass(frozen=True)
class ServingIdentity:
    """What the server loads (``cert_file``, ``key_file``) and the Lease announces (``pem``)."""

    cert_file: Path
    key_file: Path
    pem: str
    """The serving (leaf) certificate alone, PEM."""

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.load_into(context)
        return context

    def load_into(self, context: ssl.SSLContext) -> None:
        """Makes ``context`` serve this identity (from its next handshake on)."""
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as error:
            raise TlsError(
                f"cannot load the certificate {self.cert_file} with the key {self.key_file}: "
                f"{error}"
            ) from error


@dataclass
class Renewal:
    """A made identity and the server context serving it, renewed before it expires."""

    folder: Path
    node: str
    addresses: list[str]
    identity: ServingIdentity
    context: ssl.SSLContext
    _expires: datetime.datetime | None = None

    @classmethod
    def start(cls, folder: Path, node: str, addresses: list[str]) -> Renewal:
        identity = self_signed(folder, node, addresses)
        return cls(folder, node, addresses, identity, identity.server_context())

    def due(self, now: datetime.datetime) -> bool:
        return self.expires - RENEW_BEFORE < now

    @property
    def expires(self) -> datetime.datetime:
        if self._expires is None:
            pem = self.identity.pem.encode()
            self._expires = x509.load_pem_x509_certificate(pem).not_valid_after_utc
        return self._expires

    def renew(self, now: datetime.datetime) -> str:
        """Makes the next identity and returns its PEM; :meth:`serve` switches to it."""
        self.identity = self_signed(self.folder, self.node, self.addresses, now=now)
        self._expires = None
        return self.identity.pem

    def serve(self) -> None:
        self.identity.load_into(self.context)


def configured(cert_file: Path, key_file: Path) -> ServingIdentity:
    """The identity of ``tlsCert``/``tlsKey``: the first certificate of the file is the leaf."""
    try:
        data = cert_file.read_bytes()
    except OSError as error:
        raise TlsError(f"tlsCert {cert_file}: {error.strerror or error}") from error
    try:
        leaf = x509.load_pem_x509_certificates(data)[0]
    except (ValueError, IndexError) as error:
        raise TlsError(f"tlsCert {cert_file}: no PEM certificate in it") from error
    identity = ServingIdentity(cert_file, key_file, _pem(leaf))
    identity.server_context()  # refuse a key that does not match now, not at the first call
    return identity


def self_signed(
    folder: Path,
    node: str,
    addresses: list[str],
    *,
    now: datetime.datetime | None = None,
) -> ServingIdentity:
    """The reused or newly made self-signed identity in ``folder`` (see the module text)."""
    now = now or datetime.datetime.now(datetime.UTC)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    cert_file, key_file = folder / CERT_FILE, folder / KEY_FILE
    reused = _reusable(cert_file, key_file, now)
    if reused is not None:
        return ServingIdentity(cert_file, key_file, reused)
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = _certificate(key, node, addresses, now)
    _write_private(
        key_file,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    pem = _pem(certificate)
    _write_private(cert_file, pem.encode())
    return ServingIdentity(cert_file, key_file, pem)


def _certificate(
    key: ec.EllipticCurvePrivateKey, node: str, addresses: list[str], now: datetime.datetime
) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kubesandbox"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"node-agent {node}"[:64]),
        ]
    )
    alternative: list[x509.GeneralName] = []
    for address in addresses:
        with contextlib.suppress(ValueError):
            alternative.append(x509.IPAddress(ipaddress.ip_address(address)))
    if node:
        with contextlib.suppress(ValueError):
            alternative.append(x509.DNSName(node))
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
    )
    if alternative:
        builder = builder.add_extension(x509.SubjectAlternativeName(alternative), critical=False)
    return builder.sign(key, hashes.SHA256())


def _reusable(cert_file: Path, key_file: Path, now: datetime.datetime) -> str | None:
    """The PEM of a kept certificate that is still good for a while and matches its key."""
    try:
        certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    if certificate.public_key() != key.public_key():
        return None
    if certificate.not_valid_after_utc - RENEW_BEFORE < now:
        return None
    if certificate.not_valid_before_utc > now:
        return None
    return _pem(certificate)


def _write_private(path: Path, data: bytes) -> None:
    """Written to a fresh ``0600`` file, then renamed over ``path``."""
    partial = path.with_name(path.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()
