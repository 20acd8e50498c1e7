"""Where ``kubectl-sandbox`` gets its token, its namespace and the gateway's address."""

from __future__ import annotations

import base64
import io
import json
import ssl
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from kubesandbox_cli.commands import Streams
from kubesandbox_cli.connection import Target, discover_gateway, service_url
from kubesandbox_cli.main import run
from kubesandbox_devenv.certs import Authority, CertPair
from kubesandbox_kube import config
from tests.unit.cli.fakegateway import NAMESPACE, TOKEN, Fake, fake_gateway


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("KUBESANDBOX_GATEWAY", raising=False)


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    async with fake_gateway() as gateway:
        gateway.add("box")
        yield gateway


def kubeconfig(
    path: Path, user: dict[str, Any], *, server: str = "https://127.0.0.1:1", namespace: str = ""
) -> Path:
    context: dict[str, Any] = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": context}],
        "current-context": "ctx",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


async def cli(*argv: str) -> tuple[int, str, str]:
    streams = Streams(io.BytesIO(), io.BytesIO(), io.BytesIO())
    code = await run(list(argv), streams)
    out, err = streams.stdout, streams.stderr
    assert isinstance(out, io.BytesIO)
    assert isinstance(err, io.BytesIO)
    return code, out.getvalue().decode(), err.getvalue().decode()


def client_cert_user(directory: Path) -> dict[str, Any]:
    authority = Authority.create("test-ca")
    authority.save(CertPair(directory / "ca.crt", directory / "ca.key"))
    pair = authority.issue(CertPair(directory / "me.crt", directory / "me.key"), "me", client=True)
    return {"client-certificate": str(pair.cert), "client-key": str(pair.key)}


# --- credentials -----------------------------------------------------------------------------


async def test_a_kubeconfig_token_and_namespace_are_used(fake: Fake, tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "kc", {"token": TOKEN}, namespace=NAMESPACE)
    code, out, err = await cli("--kubeconfig", str(path), "--gateway", fake.url, "wait", "box")
    assert (code, out, err) == (0, "sandbox box running\n", "")
    assert {auth for _, _, auth in fake.requests} == {f"Bearer {TOKEN}"}
    assert fake.requests[0][1] == f"/ns/{NAMESPACE}/v1/sandboxes/by-name/box"


async def test_minus_n_beats_the_contexts_namespace(fake: Fake, tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "kc", {"token": TOKEN}, namespace="elsewhere")
    code, _, err = await cli("--kubeconfig", str(path), "--gateway", fake.url, "wait", "box")
    assert code == 1
    assert "forbidden in namespace 'elsewhere'" in err
    code, _, _ = await cli(
        "--kubeconfig", str(path), "--gateway", fake.url, "-n", NAMESPACE, "wait", "box"
    )
    assert code == 0


def test_namespace_defaults_to_default(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "kc", {"token": "t"})
    assert config.load(path).default_namespace == "default"


async def test_an_exec_plugin_token_is_used(fake: Fake, tmp_path: Path) -> None:
    plugin = tmp_path / "login-helper"
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": TOKEN},
    }
    plugin.write_text(
        f"#!/bin/sh\n[ \"$HELPER_MODE\" = on ] || exit 3\necho '{json.dumps(credential)}'\n"
    )
    plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": str(plugin),
            "env": [{"name": "HELPER_MODE", "value": "on"}],
            "interactiveMode": "Never",
        }
    }
    path = kubeconfig(tmp_path / "kc", user, namespace=NAMESPACE)
    code, _out, err = await cli("--kubeconfig", str(path), "--gateway", fake.url, "wait", "box")
    assert (code, err) == (0, "")
    assert {auth for _, _, auth in fake.requests} == {f"Bearer {TOKEN}"}


async def test_a_failing_exec_plugin_is_named(tmp_path: Path) -> None:
    user = {"exec": {"command": "false", "apiVersion": "client.authentication.k8s.io/v1"}}
    path = kubeconfig(tmp_path / "kc", user)
    code, _, err = await cli("--kubeconfig", str(path), "--gateway", "http://x", "ls", "box")
    assert code == 1
    assert err == "kubectl-sandbox: exec plugin 'false' of user 'u' exited with status 1\n"


async def test_a_token_file_is_read(fake: Fake, tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    path = kubeconfig(tmp_path / "kc", {"tokenFile": "token"}, namespace=NAMESPACE)
    code, _, err = await cli("--kubeconfig", str(path), "--gateway", fake.url, "wait", "box")
    assert (code, err) == (0, "")


async def test_a_client_certificate_user_is_told_to_get_a_token(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "kc", client_cert_user(tmp_path), namespace="team-b")
    credentials = config.load(path)
    assert credentials.client_certificate
    assert credentials.authorization is None
    code, out, err = await cli("--kubeconfig", str(path), "--gateway", "http://x", "ls", "box")
    assert (code, out) == (1, "")
    assert err.startswith(
        "kubectl-sandbox: your kubeconfig user 'u' signs in with a client certificate, but "
        "the gateway accepts bearer tokens only"
    )
    assert "`kubectl create token <serviceaccount> -n team-b`" in err
    assert "--token TOKEN" in err


async def test_token_flag_overrides_a_client_certificate(fake: Fake, tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "kc", client_cert_user(tmp_path), namespace=NAMESPACE)
    code, _, err = await cli(
        "--kubeconfig", str(path), "--gateway", fake.url, "--token", TOKEN, "wait", "box"
    )
    assert (code, err) == (0, "")


def test_embedded_certificates_and_ca_are_loaded_and_no_key_copy_is_left(
    tmp_path: Path,
) -> None:
    user = client_cert_user(tmp_path)
    embedded = {
        "client-certificate-data": base64.b64encode(Path(user["client-certificate"]).read_bytes()),
        "client-key-data": base64.b64encode(Path(user["client-key"]).read_bytes()),
    }
    path = kubeconfig(tmp_path / "kc", {k: v.decode() for k, v in embedded.items()})
    doc = yaml.safe_load(path.read_text())
    ca = base64.b64encode((tmp_path / "ca.crt").read_bytes()).decode()
    doc["clusters"][0]["cluster"]["certificate-authority-data"] = ca
    path.write_text(yaml.safe_dump(doc))
    before = set(Path(tempfile.gettempdir()).glob("kubesandbox-cred-*"))
    credentials = config.load(path)
    assert set(Path(tempfile.gettempdir()).glob("kubesandbox-cred-*")) == before
    assert credentials.client_certificate
    (authority,) = credentials.ssl_context.get_ca_certs()
    assert "test-ca" in str(authority["subject"])
    assert credentials.ssl_context.verify_mode == ssl.CERT_REQUIRED


def test_insecure_skip_tls_verify_is_honoured(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "kc", {"token": "Bearer already-prefixed"})
    doc = yaml.safe_load(path.read_text())
    doc["clusters"][0]["cluster"]["insecure-skip-tls-verify"] = True
    path.write_text(yaml.safe_dump(doc))
    credentials = config.load(path)
    assert credentials.ssl_context.verify_mode == ssl.CERT_NONE
    assert credentials.authorization == "Bearer already-prefixed"


def test_an_exec_plugin_may_return_a_client_certificate(tmp_path: Path) -> None:
    pair = client_cert_user(tmp_path)
    status = {
        "clientCertificateData": Path(pair["client-certificate"]).read_text(),
        "clientKeyData": Path(pair["client-key"]).read_text(),
    }
    (tmp_path / "cred.json").write_text(json.dumps({"status": status}))
    user = {"exec": {"command": "cat", "args": [str(tmp_path / "cred.json")]}}
    credentials = config.load(kubeconfig(tmp_path / "kc", user))
    assert credentials.client_certificate
    assert credentials.authorization is None


async def test_a_missing_kubeconfig_is_named(tmp_path: Path) -> None:
    code, _, err = await cli("--kubeconfig", str(tmp_path / "absent"), "ls", "box")
    assert code == 1
    assert err.startswith(f"kubectl-sandbox: cannot read kubeconfig {tmp_path / 'absent'}")


async def test_a_missing_context_is_named(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "kc", {"token": "t"})
    code, _, err = await cli("--kubeconfig", str(path), "--context", "prod", "ls", "box")
    assert code == 1
    assert err == f"kubectl-sandbox: kubeconfig {path} has no context named 'prod'\n"


# --- gateway discovery -----------------------------------------------------------------------


def test_service_url_prefers_the_annotation_then_a_load_balancer_then_the_cluster_ip() -> None:
    service: dict[str, Any] = {
        "metadata": {"annotations": {"kubesandbox.dev/url": "http://127.0.0.1:31000/"}},
        "spec": {"clusterIP": "10.0.0.7", "ports": [{"port": 8080}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}},
    }
    assert service_url(service) == "http://127.0.0.1:31000"
    del service["metadata"]
    assert service_url(service) == "http://203.0.113.9:8080"
    service["status"]["loadBalancer"]["ingress"] = [{"hostname": "gw.example.com"}]
    service["spec"]["ports"] = [{"port": 443}]
    assert service_url(service) == "https://gw.example.com:443"
    del service["status"]
    assert service_url(service) == "https://10.0.0.7:443"
    service["spec"]["clusterIP"] = "None"
    assert service_url(service) is None


@pytest.fixture
async def apiserver() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A fake apiserver serving the gateway Service (``state["service"]``; None = 404)."""
    state: dict[str, Any] = {"service": None, "auth": []}

    async def service(request: web.Request) -> web.Response:
        state["auth"].append(request.headers.get("Authorization"))
        if state["service"] is None:
            body = {"kind": "Status", "reason": "NotFound", "message": "not found", "code": 404}
            return web.json_response(body, status=404)
        return web.json_response(state["service"])

    app = web.Application()
    app.router.add_get(
        "/api/v1/namespaces/kubesandbox-system/services/kubesandbox-gateway", service
    )
    server = TestServer(app)
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), state
    finally:
        await server.close()


async def test_discovery_order(
    apiserver: tuple[str, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, state = apiserver
    path = kubeconfig(tmp_path / "kc", {"token": "tok"}, server=url)
    credentials = config.load(path)
    state["service"] = {
        "metadata": {"annotations": {"kubesandbox.dev/url": "http://from-service:1"}},
        "spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 80}]},
    }
    assert await discover_gateway(Target(), credentials) == "http://from-service:1"
    assert state["auth"] == ["Bearer tok"]
    monkeypatch.setenv("KUBESANDBOX_GATEWAY", "http://from-env:2/")
    assert await discover_gateway(Target(), credentials) == "http://from-env:2"
    flagged = Target(gateway="http://from-flag:3")
    assert await discover_gateway(flagged, credentials) == "http://from-flag:3"
    assert len(state["auth"]) == 1  # neither asked the apiserver


async def test_discovery_through_the_cli_reaches_the_gateway(
    apiserver: tuple[str, dict[str, Any]], fake: Fake, tmp_path: Path
) -> None:
    url, state = apiserver
    state["service"] = {"metadata": {"annotations": {"kubesandbox.dev/url": fake.url}}}
    path = kubeconfig(tmp_path / "kc", {"token": TOKEN}, server=url, namespace=NAMESPACE)
    code, out, err = await cli("--kubeconfig", str(path), "wait", "box")
    assert (code, out, err) == (0, "sandbox box running\n", "")


async def test_no_gateway_service_says_how_to_pass_one(
    apiserver: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    url, _ = apiserver
    path = kubeconfig(tmp_path / "kc", {"token": "tok"}, server=url)
    code, _, err = await cli("--kubeconfig", str(path), "ls", "box")
    assert code == 1
    assert err == (
        "kubectl-sandbox: there is no Service kubesandbox-system/kubesandbox-gateway in this "
        "cluster; pass --gateway URL or set $KUBESANDBOX_GATEWAY "
        "(e.g. --gateway http://127.0.0.1:8080)\n"
    )
