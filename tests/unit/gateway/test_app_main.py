"""The entry point's flags: listen addresses, the node agent CA, defaults."""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path

import pytest

from kubesandbox_gateway.main import ALL_INTERFACES, node_agent_ssl, parse_args, parse_listen


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:9000", ("::1", 9000)),
        (":8443", (ALL_INTERFACES, 8443)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_listen_addresses(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["8080", "host:", "host:http", "host:70000"])
def test_bad_listen_addresses(value: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_listen(value)


def test_defaults_and_flags(tmp_path: Path) -> None:
    defaults = parse_args([])
    assert defaults.kubeconfig is None
    assert defaults.listen == (ALL_INTERFACES, 8080)
    assert defaults.node_agent_ca is None
    assert defaults.log_level == "info"
    assert defaults.agents_namespace == "kubesandbox-system"
    args = parse_args(
        [
            "--kubeconfig",
            str(tmp_path / "kc"),
            "--listen",
            "127.0.0.1:1234",
            "--node-agent-ca",
            str(tmp_path / "ca.pem"),
            "--log-level",
            "debug",
        ]
    )
    assert args.kubeconfig == tmp_path / "kc"
    assert args.listen == ("127.0.0.1", 1234)
    assert args.node_agent_ca == tmp_path / "ca.pem"


def test_node_agent_ca(tmp_path: Path) -> None:
    assert node_agent_ssl(None) is None
    with pytest.raises(SystemExit, match="no such file"):
        node_agent_ssl(tmp_path / "missing.pem")
    bundle = Path(ssl.get_default_verify_paths().cafile or "/nonexistent")
    if not bundle.is_file():
        pytest.skip("no system CA bundle to load")
    context = node_agent_ssl(bundle)
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
