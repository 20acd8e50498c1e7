"""The node agent's HTTPS: configured files or a self-signed certificate it keeps, announced in
its Lease, and a real round trip where a caller trusts exactly the announced certificate."""

from __future__ import annotations

import datetime
import shutil
import ssl
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509

from kubesandbox_kube.nodeagents import parse_lease, pinned_context
from kubesandbox_kube.paths import ResourcePath
from kubesandbox_node.main import (
    NodeAgentConfig,
    advertised_endpoint,
    serving_identity,
    tls_context,
)
from kubesandbox_node.runtime.manager import Runtime
from kubesandbox_node.server import tls
from kubesandbox_node.server.app import make_app
from kubesandbox_node.server.services import Services
from kubesandbox_node.status.lease import LeaseRenewer
from tests.unit.node.runtime.fakes import FakePreparer, FakeVMM
from tests.unit.node.server.test_app import FakeAuthenticator


@pytest.fixture
def certificate() -> Iterator[tuple[Path, Path]]:
    folder = Path(tempfile.mkdtemp(prefix="ksb-tls-"))
    cert, key = folder / "tls.crt", folder / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=node-agent", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    yield cert, key
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def outside_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KUBERNETES_SERVICE_HOST", "HOST_IP", "NODE_NAME"):
        monkeypatch.delenv(name, raising=False)


async def serve(context: ssl.SSLContext, port: int) -> web.AppRunner:
    state = Path(tempfile.mkdtemp(prefix="ksb-tls-state-"))
    runtime = Runtime(state, vmm=FakeVMM(), preparer=FakePreparer(state), emulation=True)
    runner = web.AppRunner(make_app(Services(runtime, FakeAuthenticator())))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    return runner


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_serves_https_with_the_configured_certificate(
    certificate: tuple[Path, Path], unused_tcp_port: int, http: aiohttp.ClientSession
) -> None:
    cert, key = certificate
    context = tls_context(NodeAgentConfig(tls_cert=cert, tls_key=key))
    assert context is not None
    runner = await serve(context, unused_tcp_port)
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        url = f"https://127.0.0.1:{unused_tcp_port}/healthz"
        async with http.get(url, ssl=trusted) as response:
            assert response.status == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with http.get(url, ssl=ssl.create_default_context()):
                pass
    finally:
        await runner.cleanup()


async def test_callers_trust_exactly_the_certificate_the_lease_announces(
    tmp_path: Path, unused_tcp_port: int, http: aiohttp.ClientSession, outside_a_cluster: None
) -> None:
    config = NodeAgentConfig(
        node_name="node-1",
        state_dir=tmp_path / "state",
        listen=f"127.0.0.1:{unused_tcp_port}",
        tls="auto",
    )
    made = serving_identity(config)
    assert isinstance(made, tls.Renewal)
    identity = made.identity
    runner = await serve(made.context, unused_tcp_port)
    now = datetime.datetime.now(datetime.UTC)

    def announced(pem: str) -> ssl.SSLContext:
        renewer = LeaseRenewer(
            kube=None,  # type: ignore[arg-type]
            node="node-1",
            namespace="kubesandbox-system",
            endpoint=advertised_endpoint(config, secure=True),
            emulation=False,
            capabilities=("oci",),
            instance="i",
            certificate=pem,
        )
        agent = parse_lease("node-1", renewer.body(now, now))
        assert agent.endpoint == f"https://127.0.0.1:{unused_tcp_port}"
        assert agent.pinned_ssl is not None
        return agent.pinned_ssl

    # The same node name and addresses, another key: what an impostor would present.
    impostor = tls.self_signed(tmp_path / "impostor", "node-1", ["127.0.0.1"]).pem
    url = f"https://127.0.0.1:{unused_tcp_port}/healthz"
    try:
        async with http.get(url, ssl=announced(identity.pem)) as response:
            assert response.status == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with http.get(url, ssl=announced(impostor)):
                pass
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with http.get(url, ssl=ssl.create_default_context()):
                pass
    finally:
        await runner.cleanup()


def test_the_self_signed_identity_is_kept_private_and_reused(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    first = tls.self_signed(folder, "node-1", ["10.0.0.5", "not-an-ip"])
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(first.key_file.stat().st_mode) == 0o600
    certificate = x509.load_pem_x509_certificate(first.pem.encode())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert names.get_values_for_type(x509.DNSName) == ["node-1"]
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert tls.self_signed(folder, "node-1", ["10.0.0.5"]).pem == first.pem


def test_a_certificate_near_its_end_or_without_its_key_is_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    first = tls.self_signed(folder, "node-1", [])
    later = datetime.datetime.now(datetime.UTC) + tls.VALIDITY - tls.RENEW_BEFORE / 2
    renewed = tls.self_signed(folder, "node-1", [], now=later)
    assert renewed.pem != first.pem
    other = tls.self_signed(tmp_path / "other", "node-1", [])
    shutil.copy(other.key_file, folder / tls.KEY_FILE)
    assert tls.self_signed(folder, "node-1", []).pem not in (renewed.pem, other.pem)


def test_a_key_that_does_not_match_the_configured_certificate_is_named(
    certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, _ = certificate
    stray = tls.self_signed(tmp_path, "n", [])
    with pytest.raises(tls.TlsError, match=str(stray.key_file)):
        tls.configured(cert, stray.key_file)
    with pytest.raises(tls.TlsError, match="tlsCert"):
        tls.configured(tmp_path / "missing.crt", stray.key_file)


def test_tls_mode_defaults_to_auto_in_a_cluster_and_off_outside(
    monkeypatch: pytest.MonkeyPatch, outside_a_cluster: None, certificate: tuple[Path, Path]
) -> None:
    assert NodeAgentConfig().tls_mode == "off"
    assert tls_context(NodeAgentConfig()) is None
    assert NodeAgentConfig(tls="auto").tls_mode == "auto"
    cert, key = certificate
    assert NodeAgentConfig(tls_cert=cert, tls_key=key).tls_mode == "files"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    assert NodeAgentConfig().tls_mode == "auto"
    assert NodeAgentConfig(tls="off").tls_mode == "off"


def test_tls_files_come_in_pairs(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    with pytest.raises(ValueError, match="tlsKey"):
        NodeAgentConfig(tls_cert=cert)
    with pytest.raises(ValueError, match="tlsCert"):
        NodeAgentConfig(tls_key=key)
    with pytest.raises(ValueError, match="contradicts"):
        NodeAgentConfig(tls_cert=cert, tls_key=key, tls="off")


def test_the_pod_environment_names_the_node_and_the_endpoint(
    monkeypatch: pytest.MonkeyPatch, outside_a_cluster: None
) -> None:
    monkeypatch.setenv("NODE_NAME", "worker-7")
    monkeypatch.setenv("HOST_IP", "10.1.2.3")
    config = NodeAgentConfig()
    assert config.node_name == "worker-7"
    assert advertised_endpoint(config, secure=True) == "https://10.1.2.3:9443"
    monkeypatch.setenv("HOST_IP", "fd00::7")
    assert advertised_endpoint(NodeAgentConfig(), secure=True) == "https://[fd00::7]:9443"
    explicit = NodeAgentConfig(endpoint="https://agent.example:1/")
    assert advertised_endpoint(explicit, secure=True) == "https://agent.example:1"
    monkeypatch.delenv("HOST_IP")
    local = NodeAgentConfig(listen="127.0.0.1:7000")
    assert advertised_endpoint(local, secure=False) == "http://127.0.0.1:7000"


@dataclass
class RecordingKube:
    applied: list[dict[str, Any]] = field(default_factory=list)

    async def apply(
        self, path: ResourcePath, body: dict[str, Any], *, field_manager: str
    ) -> dict[str, Any]:
        self.applied.append(body)
        return body


async def test_a_made_certificate_is_renewed_announced_then_served(
    tmp_path: Path, unused_tcp_port: int
) -> None:
    # A certificate made 350 days ago: valid for 15 more days, inside the renewal margin.
    now = datetime.datetime.now(datetime.UTC)
    made = now - (tls.VALIDITY - tls.RENEW_BEFORE / 2)
    aging = tls.self_signed(tmp_path / "tls", "node-1", ["127.0.0.1"], now=made)
    renewal = tls.Renewal(tmp_path / "tls", "node-1", ["127.0.0.1"], aging, aging.server_context())
    kube = RecordingKube()
    renewer = LeaseRenewer(
        kube=kube,  # type: ignore[arg-type]
        node="node-1",
        namespace="kubesandbox-system",
        endpoint=f"https://127.0.0.1:{unused_tcp_port}",
        emulation=False,
        capabilities=("oci",),
        instance="i",
        certificate=renewal.identity.pem,
        renewal=renewal,
    )
    old = renewal.identity.pem
    runner = await serve(renewal.context, unused_tcp_port)
    url = f"https://127.0.0.1:{unused_tcp_port}/healthz"

    async def status(pem: str) -> int:
        # A new session each time: a new connection, a new handshake.
        async with aiohttp.ClientSession() as http, http.get(url, ssl=pinned_context(pem)) as r:
            return r.status

    try:
        assert not await renewer.refresh_certificate(made)
        assert kube.applied == []
        assert await status(old) == 200
        assert await renewer.refresh_certificate(now)
        assert parse_lease("node-1", kube.applied[-1]).certificate == renewer.certificate
        new = renewer.certificate
        assert new is not None
        assert new != old
        announced = kube.applied[-1]["metadata"]["annotations"]
        assert announced["kubesandbox.dev/tls-certificate"] == new
        assert await status(new) == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await status(old)
        assert not await renewer.refresh_certificate(now)
    finally:
        await runner.cleanup()
