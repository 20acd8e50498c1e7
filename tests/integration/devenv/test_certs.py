from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubesandbox_devenv.certs import ClusterPKI


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_apiserver_certificate_names_every_address_clients_use(tmp_path: Path) -> None:
    pki = ClusterPKI(tmp_path).create()

    cert = load(pki.apiserver.cert)

    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.96.0.1"),
    }
    assert {"localhost", "kubernetes.default.svc"} <= set(names.get_values_for_type(x509.DNSName))
    cert.verify_directly_issued_by(load(pki.ca.cert))


def test_admin_is_in_system_masters_and_a_client_only(tmp_path: Path) -> None:
    pki = ClusterPKI(tmp_path).create()

    cert = load(pki.admin.cert)

    organizations = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [attribute.value for attribute in organizations] == ["system:masters"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_front_proxy_client_is_signed_by_its_own_ca_only(tmp_path: Path) -> None:
    pki = ClusterPKI(tmp_path).create()

    client = load(pki.front_proxy_client.cert)

    client.verify_directly_issued_by(load(pki.front_proxy_ca.cert))
    assert load(pki.front_proxy_ca.cert).subject != load(pki.ca.cert).subject


def test_keys_are_private_and_ecdsa(tmp_path: Path) -> None:
    pki = ClusterPKI(tmp_path).create()

    for key in (pki.ca.key, pki.admin.key, pki.service_account.private):
        assert key.stat().st_mode & 0o077 == 0
    assert isinstance(load(pki.ca.cert).public_key(), ec.EllipticCurvePublicKey)


def test_ensure_keeps_an_existing_pki(tmp_path: Path) -> None:
    first = ClusterPKI(tmp_path).ensure().ca.cert.read_bytes()

    assert ClusterPKI(tmp_path).ensure().ca.cert.read_bytes() == first


def test_issued_users_carry_their_groups(tmp_path: Path) -> None:
    pki = ClusterPKI(tmp_path).create()

    user = load(pki.issue_client("jane@example.com", ["devs", "ops"]).cert)

    assert user.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "jane@example.com"
    organizations = user.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [attribute.value for attribute in organizations] == ["devs", "ops"]
