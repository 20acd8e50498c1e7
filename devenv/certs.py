"""A throw-away PKI for one control plane, made with ``cryptography``.

Two certificate authorities, as in a kubeadm cluster: the cluster CA signs the serving
certificates and every x509 client (admin in ``system:masters``, the controller manager and the
scheduler under their bootstrap RBAC names, test users); the front-proxy CA signs only the
client certificate the aggregator presents to an aggregated API server, so that API server can
trust ``X-Remote-User`` headers from the aggregator and from nobody else. Plus the key pair
that signs and verifies service-account tokens.

Keys are ECDSA P-256: Kubernetes accepts them everywhere (TLS, x509 clients, ES256 tokens) and
generating one takes well under a millisecond, where RSA-2048 takes tens. Everything is written
under the environment's own state directory (keys mode 0600); nothing is cached elsewhere.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVICE_IP = "10.96.0.1"
APISERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
LOOPBACK_IPS = ("127.0.0.1",)
FRONT_PROXY_CLIENT_NAME = "front-proxy-client"
KUBELET_CLIENT_NAME = "kube-apiserver-kubelet-client"
"""The apiserver's identity towards kubelets (logs, exec, port-forward, the node proxy); bound
to ``system:kubelet-api-admin`` by the control plane (``ControlPlane.start``)."""
VALIDITY = datetime.timedelta(days=365)
CLOCK_SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its PEM private key, as files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class KeyPair:
    """A PEM public key and its PEM private key, as files (service-account token signing)."""

    public: Path
    private: Path


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


class Authority:
    """A CA: its key and certificate in memory, able to issue leaf certificates to files."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self._cert = cert

    @classmethod
    def create(cls, common_name: str) -> Authority:
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        name = _name(common_name)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load(cls, pair: CertPair) -> Authority:
        key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{pair.key} is not an ECDSA key")
        return cls(key, x509.load_pem_x509_certificate(pair.cert.read_bytes()))

    def save(self, pair: CertPair) -> CertPair:
        _write_private(pair.key, _key_pem(self._key))
        pair.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        return pair

    def issue(
        self,
        pair: CertPair,
        common_name: str,
        *,
        organizations: Sequence[str] = (),
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        server: bool = False,
        client: bool = False,
    ) -> CertPair:
        """Write a leaf certificate (and a fresh key) signed by this CA to ``pair``."""
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organizations))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
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
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), False
            )
        )
        alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), False)
        cert = builder.sign(self._key, hashes.SHA256())
        _write_private(pair.key, _key_pem(key))
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return pair


def certificate_ips(path: Path) -> set[str]:
    """The IP address SANs of the PEM certificate at ``path`` (empty when it has none)."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}


@dataclass(frozen=True)
class ClusterPKI:
    """Every certificate and key file of one control plane, all under ``directory``."""

    directory: Path

    @property
    def ca(self) -> CertPair:
        return self._pair("ca")

    @property
    def apiserver(self) -> CertPair:
        """kube-apiserver's serving certificate."""
        return self._pair("apiserver")

    @property
    def components_serving(self) -> CertPair:
        """Serving certificate of the controller manager's and scheduler's health ports."""
        return self._pair("components-serving")

    @property
    def admin(self) -> CertPair:
        return self._pair("admin")

    @property
    def controller_manager(self) -> CertPair:
        return self._pair("controller-manager")

    @property
    def scheduler(self) -> CertPair:
        return self._pair("scheduler")

    @property
    def apiserver_kubelet_client(self) -> CertPair:
        """``--kubelet-client-certificate``: what kube-apiserver presents to kubelets."""
        return self._pair("apiserver-kubelet-client")

    @property
    def front_proxy_ca(self) -> CertPair:
        return self._pair("front-proxy-ca")

    @property
    def front_proxy_client(self) -> CertPair:
        return self._pair("front-proxy-client")

    @property
    def service_account(self) -> KeyPair:
        return KeyPair(public=self.directory / "sa.pub", private=self.directory / "sa.key")

    def _pair(self, stem: str) -> CertPair:
        return CertPair(cert=self.directory / f"{stem}.crt", key=self.directory / f"{stem}.key")

    def exists(self) -> bool:
        files = [self.service_account.public, self.service_account.private]
        for pair in (self.ca, self.apiserver, self.components_serving, self.admin):
            files += [pair.cert, pair.key]
        for pair in (self.controller_manager, self.scheduler):
            files += [pair.cert, pair.key]
        for pair in (self.front_proxy_ca, self.front_proxy_client):
            files += [pair.cert, pair.key]
        return all(path.is_file() for path in files)

    def create(self, apiserver_ips: Sequence[str] = ()) -> ClusterPKI:
        """Generate every file, replacing whatever was there."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca = Authority.create("kubesandbox-ca")
        ca.save(self.ca)
        self._issue_apiserver(ca, apiserver_ips)
        ca.issue(self.apiserver_kubelet_client, KUBELET_CLIENT_NAME, client=True)
        ca.issue(
            self.components_serving,
            "kubesandbox-components",
            dns_names=("localhost",),
            ip_addresses=LOOPBACK_IPS,
            server=True,
        )
        ca.issue(self.admin, "kubesandbox-admin", organizations=("system:masters",), client=True)
        ca.issue(self.controller_manager, "system:kube-controller-manager", client=True)
        ca.issue(self.scheduler, "system:kube-scheduler", client=True)
        front_proxy = Authority.create("kubesandbox-front-proxy-ca")
        front_proxy.save(self.front_proxy_ca)
        front_proxy.issue(self.front_proxy_client, FRONT_PROXY_CLIENT_NAME, client=True)
        signing_key = _new_key()
        _write_private(self.service_account.private, _key_pem(signing_key))
        self.service_account.public.write_bytes(
            signing_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return self

    def _issue_apiserver(self, ca: Authority, extra_ips: Sequence[str]) -> None:
        ips = list(dict.fromkeys((*LOOPBACK_IPS, SERVICE_IP, *extra_ips)))
        ca.issue(
            self.apiserver,
            "kube-apiserver",
            dns_names=APISERVER_DNS_NAMES,
            ip_addresses=ips,
            server=True,
        )

    def apiserver_ips(self) -> set[str]:
        """The IP addresses the apiserver's serving certificate is valid for."""
        return certificate_ips(self.apiserver.cert)

    def ensure(self, apiserver_ips: Sequence[str] = ()) -> ClusterPKI:
        """Reuse a complete PKI from an earlier run of this environment, or create one.

        An existing PKI gets what later versions added from its own CA, so a running
        environment's clients keep working: the apiserver's kubelet client certificate, and a
        new serving certificate when it lacks one of ``apiserver_ips`` (the node IP of a real
        node; the apiserver reloads its serving certificate from the file by itself).
        """
        if not self.exists():
            return self.create(apiserver_ips)
        missing_ips = set(apiserver_ips) - self.apiserver_ips()
        has_kubelet_client = all(
            path.is_file()
            for path in (self.apiserver_kubelet_client.cert, self.apiserver_kubelet_client.key)
        )
        if missing_ips or not has_kubelet_client:
            ca = Authority.load(self.ca)
            if missing_ips:
                self._issue_apiserver(ca, [*sorted(self.apiserver_ips()), *apiserver_ips])
            if not has_kubelet_client:
                ca.issue(self.apiserver_kubelet_client, KUBELET_CLIENT_NAME, client=True)
        return self

    def issue_client(self, user: str, groups: Sequence[str] = ()) -> CertPair:
        """A client certificate for ``user`` in ``groups``, signed by the cluster CA."""
        users = self.directory / "users"
        users.mkdir(exist_ok=True, mode=0o700)
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in user)
        pair = CertPair(cert=users / f"{stem}.crt", key=users / f"{stem}.key")
        return Authority.load(self.ca).issue(pair, user, organizations=groups, client=True)
