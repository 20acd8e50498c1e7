import contextlib
import ipaddress
import os
from pathlib import Path

import pytest
from cryptography import x509

from kubesandbox_node.egress import ca as ca_module
from kubesandbox_node.egress.ca import SandboxCA


def test_leaves_name_the_host_or_the_address_and_chain_to_the_ca() -> None:
    authority = SandboxCA("test")
    by_name = authority.leaf("api.example.com")
    san = by_name.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["api.example.com"]
    assert by_name.issuer == authority.certificate.subject
    by_name.verify_directly_issued_by(authority.certificate)
    by_address = authority.leaf("203.0.113.7")
    san = by_address.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("203.0.113.7")]
    constraints = authority.certificate.extensions.get_extension_for_class(
        x509.BasicConstraints
    ).value
    assert constraints.ca is True
    assert b"PRIVATE KEY" not in authority.pem


def test_server_contexts_are_cached_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ca_module, "MAX_LEAVES", 3)
    authority = SandboxCA("test")
    first = authority.server_context("a.example")
    assert authority.server_context("a.example") is first
    for name in ("b.example", "c.example", "d.example"):
        authority.server_context(name)
    assert len(authority) == 3
    assert authority.server_context("a.example") is not first  # the oldest went first


def test_no_key_is_written_to_any_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    authority = SandboxCA("test")
    authority.server_context("api.example.com")
    assert list(tmp_path.iterdir()) == []
    assert not [target for target in open_files() if "ksb-egress-leaf" in target]


def open_files() -> list[str]:
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
    return targets
