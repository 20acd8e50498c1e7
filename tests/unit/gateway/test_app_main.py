"""The entry point's flags: listen addresses, the node agent CA, defaults."""

from __future__ import annotations

import argparse
import socket
import ssl
from pathlib import Path

import pytest

from kubesandbox_gateway.main import (
    ALL_INTERFACES,
    main,
    node_agent_ssl,
    parse_args,
    parse_listen,
)


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


@pytest.fixture
def no_log_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() configures the process's logging; a test process keeps its own."""
    monkeypatch.setattr("kubesandbox_gateway.main.logs.configure", lambda *_, **__: None)


@pytest.mark.usefixtures("no_log_setup")
def test_a_missing_kubeconfig_is_a_clear_exit(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="kubesandbox-gateway: cannot read kubeconfig"):
        main(["--kubeconfig", str(tmp_path / "missing"), "--listen", "127.0.0.1:0"])


@pytest.mark.usefixtures("no_log_setup")
def test_a_taken_port_is_a_clear_exit(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match="cannot listen on"):
            main(["--kubeconfig", str(kubeconfig), "--listen", f"127.0.0.1:{port}"])
