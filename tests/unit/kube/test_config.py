"""kube/config.py: in-cluster credentials, and token files re-read when the kubelet rotates them."""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kubesandbox_devenv.certs import ClusterPKI
from kubesandbox_kube import KubeClient, config
from kubesandbox_kube.paths import PODS


def project(account: Path, generation: int, token: str) -> None:
    """Writes ``token`` the way the kubelet updates a projected volume: a new timestamped
    directory, then ``..data`` renamed onto it; ``token`` is a link through ``..data``."""
    fresh = account / f"..2026_12_04_{generation}"
    fresh.mkdir()
    (fresh / "token").write_text(token)
    (fresh / "namespace").write_text("kubesandbox-system")
    link = account / "..data_tmp"
    link.symlink_to(fresh.name)
    link.rename(account / "..data")
    for name in ("token", "namespace"):
        if not (account / name).is_symlink():
            (account / name).symlink_to(f"..data/{name}")


@pytest.fixture
def account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "serviceaccount"
    folder.mkdir()
    pki = ClusterPKI(tmp_path / "pki").create()
    (folder / "ca.crt").write_bytes(pki.ca.cert.read_bytes())
    project(folder, 1, "first-token\n")
    monkeypatch.setattr(config, "SERVICE_ACCOUNT", folder)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    return folder


def test_in_cluster_credentials_come_from_the_service_account(account: Path) -> None:
    credentials = config.load()
    assert credentials.server == "https://[fd00::1]:6443"
    assert credentials.default_namespace == "kubesandbox-system"
    assert credentials.current_authorization() == "Bearer first-token"
    assert credentials.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert len(credentials.ssl_context.get_ca_certs()) == 1


def test_a_rotated_token_is_read_again_and_a_vanished_one_kept(account: Path) -> None:
    credentials = config.load()
    assert credentials.current_authorization() == "Bearer first-token"
    project(account, 2, "second-token")
    assert credentials.current_authorization() == "Bearer second-token"
    (account / "token").unlink()
    assert credentials.current_authorization() == "Bearer second-token"


def test_a_missing_token_file_is_named(account: Path) -> None:
    (account / "token").unlink()
    with pytest.raises(config.ConfigError, match=r"serviceaccount/token"):
        config.load()


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[TestServer, list[str]]]:
    seen: list[str] = []

    async def pods(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"kind": "PodList", "items": []})

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/ns/pods", pods)
    server = TestServer(app)
    await server.start_server()
    yield server, seen
    await server.close()


async def test_the_client_sends_the_current_token_of_a_kubeconfig_token_file(
    tmp_path: Path, recorder: tuple[TestServer, list[str]]
) -> None:
    server, seen = recorder
    token = tmp_path / "token"
    token.write_text("one")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: k, cluster: {{server: '{server.make_url('')}'}}}}]\n"
        "users: [{name: u, user: {tokenFile: token}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u, namespace: ns}}]\n"
    )
    async with KubeClient.connect(kubeconfig) as kube:
        await kube.list(PODS.in_namespace("ns"))
        replacement = tmp_path / "token.new"
        replacement.write_text("two")
        os.replace(replacement, token)
        await kube.list(PODS.in_namespace("ns"))
    assert seen == ["Bearer one", "Bearer two"]


async def test_a_session_without_a_token_sends_no_authorization(
    tmp_path: Path, recorder: tuple[TestServer, list[str]]
) -> None:
    server, seen = recorder
    credentials = config.Credentials(
        server=str(server.make_url("")).rstrip("/"),
        ssl_context=ssl.create_default_context(),
        authorization=None,
        default_namespace="ns",
    )
    async with aiohttp.ClientSession(base_url=credentials.server) as session:
        await KubeClient(credentials, session).list(PODS.in_namespace("ns"))
    assert seen == [""]
