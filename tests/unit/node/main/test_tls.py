from __future__ import annotations

import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from kubesandbox_node.main import NodeAgentConfig, tls_context
from kubesandbox_node.runtime.manager import Runtime
from kubesandbox_node.server.app import make_app
from kubesandbox_node.server.services import Services
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


async def test_serves_https_with_the_configured_certificate(
    certificate: tuple[Path, Path], unused_tcp_port: int
) -> None:
    cert, key = certificate
    context = tls_context(NodeAgentConfig(tls_cert=cert, tls_key=key))
    assert context is not None
    state = Path(tempfile.mkdtemp(prefix="ksb-tls-state-"))
    runtime = Runtime(state, vmm=FakeVMM(), preparer=FakePreparer(state), emulation=True)
    runner = web.AppRunner(make_app(Services(runtime, FakeAuthenticator())))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port, ssl_context=context).start()
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as http:
            url = f"https://127.0.0.1:{unused_tcp_port}/healthz"
            async with http.get(url, ssl=trusted) as response:
                assert response.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with http.get(url, ssl=ssl.create_default_context()):
                    pass
    finally:
        await runner.cleanup()
        shutil.rmtree(state, ignore_errors=True)


def test_no_certificate_means_no_tls() -> None:
    assert tls_context(NodeAgentConfig()) is None
