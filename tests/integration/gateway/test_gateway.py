"""The gateway against a real kube-apiserver: real tokens, real RBAC, real Sandboxes.

Tokens come from real ServiceAccounts (``kubectl create token``), their rights from real
RoleBindings, and the gateway checks them with real TokenReviews and SubjectAccessReviews.
No operator runs here, so no sandbox ever gets Running: create is tested with a short
``wait_timeout`` and must answer ``starting`` (what the SDK reports as "did not reach running
before the readiness wait expired"). The garbage collector of the real
kube-controller-manager removes the companion Secret through its ownerReference.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kubesandbox_devenv.controlplane import ControlPlane
from kubesandbox_gateway import translate
from kubesandbox_gateway.app import Gateway
from kubesandbox_gateway.routes import make_app
from kubesandbox_kube import KubeClient
from kubesandbox_kube.auth import Access, KubeAuthenticator
from tests.support.waiting import eventually

pytestmark = pytest.mark.usefixtures("installed_crds")

AppClient = TestClient[web.Request, web.Application]
SECRET_VALUE = "sk-integration-secret-value-42"
ROLE = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: gateway-test-sandbox-user}
rules:
- apiGroups: [kubesandbox.dev]
  resources: [sandboxes]
  verbs: [create, get, list, watch, update, patch, delete]
- apiGroups: [kubesandbox.dev]
  resources: [sandboxes/exec]
  verbs: [create]
"""


@dataclass(frozen=True)
class Tenants:
    a: str
    """Namespace of ``runner`` (all sandbox rights) and ``nobody`` (none)."""
    b: str
    """Namespace of ``other`` (all sandbox rights there only)."""
    runner: str
    nobody: str
    other: str


def assert_contains(stored: Any, sent: Any, where: str = "spec") -> None:
    """``stored`` is ``sent`` plus what the CRD's defaults added."""
    if isinstance(sent, dict):
        assert isinstance(stored, dict), where
        for key, value in sent.items():
            assert key in stored, f"{where}.{key} missing"
            assert_contains(stored[key], value, f"{where}.{key}")
    elif isinstance(sent, list):
        assert isinstance(stored, list), where
        assert len(stored) == len(sent), where
        for index, (a, b) in enumerate(zip(stored, sent, strict=True)):
            assert_contains(a, b, f"{where}[{index}]")
    else:
        assert stored == sent, where


def kubectl_json(plane: ControlPlane, *args: str) -> Any:
    return json.loads(plane.kubectl(*args, "-o", "json").stdout)


def exists(plane: ControlPlane, kind: str, namespace: str, name: str) -> bool:
    result = plane.kubectl("get", kind, name, "-n", namespace, "--ignore-not-found", "-o", "name")
    return bool(result.stdout.strip())


def can_i(plane: ControlPlane, namespace: str, account: str) -> bool:
    user = f"--as=system:serviceaccount:{namespace}:{account}"
    result = plane.kubectl(
        "auth", "can-i", "create", "sandboxes.kubesandbox.dev", "-n", namespace, user, check=False
    )
    return result.stdout.strip() == "yes"


def service_account(plane: ControlPlane, namespace: str, name: str, bound: bool) -> str:
    plane.kubectl("create", "serviceaccount", name, "-n", namespace)
    if bound:
        plane.kubectl(
            "create",
            "rolebinding",
            f"{name}-sandboxes",
            "-n",
            namespace,
            "--clusterrole=gateway-test-sandbox-user",
            f"--serviceaccount={namespace}:{name}",
        )
    token = plane.kubectl("create", "token", name, "-n", namespace, "--duration=1h").stdout
    return token.strip()


@pytest.fixture(scope="module")
def tenants(control_plane: ControlPlane) -> Iterator[Tenants]:
    suffix = uuid.uuid4().hex[:6]
    a, b = f"gw-a-{suffix}", f"gw-b-{suffix}"
    control_plane.kubectl("apply", "-f", "-", input_text=ROLE)
    for namespace in (a, b):
        control_plane.kubectl("create", "namespace", namespace)
    tenants = Tenants(
        a=a,
        b=b,
        runner=service_account(control_plane, a, "runner", bound=True),
        nobody=service_account(control_plane, a, "nobody", bound=False),
        other=service_account(control_plane, b, "other", bound=True),
    )
    # The RBAC authorizer learns new bindings from its informer: wait until it has them.
    for namespace, account in ((a, "runner"), (b, "other")):
        eventually(
            partial(can_i, control_plane, namespace, account),
            30,
            f"RBAC to allow {account} in {namespace}",
        )
    yield tenants
    for namespace in (a, b):
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


@pytest.fixture
async def client(control_plane: ControlPlane) -> AsyncIterator[AppClient]:
    async with KubeClient.connect(control_plane.kubeconfig) as kube:
        gateway = Gateway(kube, KubeAuthenticator(kube), poll_interval=0.2)
        async with TestClient(TestServer(make_app(gateway))) as client:
            yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create_body(name: str, **extra: Any) -> dict[str, Any]:
    """What microsandbox 0.7.11 sends for ``Sandbox.create(name, image="python", ...)``."""
    body: dict[str, Any] = {
        "source": "oci",
        "name": name,
        "runtime": {
            "workdir": "/work",
            "shell": None,
            "scripts": {},
            "entrypoint": None,
            "cmd": None,
            "user": None,
            "log_level": None,
        },
        "env": [{"key": "GREETING", "value": "hello"}],
        "labels": {"team": "gateway"},
        "rlimits": [],
        "mounts": [],
        "network": {"enabled": True, "strict": True},
        "init": None,
        "security_profile": "default",
        "lifecycle": {"ephemeral": False, "max_duration_secs": None, "idle_timeout_secs": None},
        "reference": "python",
        "resources": {"vcpus": 1, "memory_mib": 512},
        "patches": [],
        "pull_policy": "if_missing",
    }
    body.update(extra)
    return body


def secret_entries(value: str) -> dict[str, Any]:
    return {
        "entries": [
            {
                "env_var": "OPENAI_API_KEY",
                "value": value,
                "placeholder": "$MSB_OPENAI_API_KEY",
                "allowed_hosts": [{"type": "exact", "value": "api.openai.com"}],
                "substitution": {"headers": True, "query": False, "body": False},
                "passthrough_hosts": [],
                "require_tls_identity": True,
            }
        ],
        "violation_action": {"type": "block_and_log"},
    }


async def error_code(response: aiohttp.ClientResponse, status: int) -> str:
    assert response.status == status, await response.text()
    return str((await response.json())["error"]["code"])


QUICK = {"start": "true", "wait_for": "running", "wait_timeout": "1"}


# ---- authentication and authorization ----------------------------------------------------


async def test_a_bad_token_is_401(client: AppClient, tenants: Tenants) -> None:
    for headers in ({}, bearer("not-a-real-token"), bearer(tenants.runner + "x")):
        response = await client.get(f"/ns/{tenants.a}/v1/sandboxes", headers=headers)
        assert await error_code(response, 401) == "unauthorized"


async def test_a_token_without_rbac_is_403_on_create_list_and_exec(
    client: AppClient, tenants: Tenants, control_plane: ControlPlane
) -> None:
    response = await client.post(
        "/v1/sandboxes", params=QUICK, json=create_body("nope"), headers=bearer(tenants.nobody)
    )
    assert await error_code(response, 403) == "forbidden"
    message = (await response.json())["error"]["message"]
    assert f"system:serviceaccount:{tenants.a}:nobody" in message
    assert f"create sandboxes in namespace '{tenants.a}'" in message
    assert not exists(control_plane, "sandboxes", tenants.a, "nope")

    response = await client.get("/v1/sandboxes", headers=bearer(tenants.nobody))
    assert await error_code(response, 403) == "forbidden"

    created = await client.post(
        "/v1/sandboxes",
        params=QUICK,
        json=create_body("exec-target"),
        headers=bearer(tenants.runner),
    )
    uid = (await created.json())["id"]
    response = await client.get(f"/v1/sandboxes/{uid}/agent", headers=bearer(tenants.nobody))
    assert await error_code(response, 403) == "forbidden"
    assert "create sandboxes/exec" in (await response.json())["error"]["message"]


async def test_the_service_account_namespace_is_the_default(
    client: AppClient, tenants: Tenants
) -> None:
    created = await client.post(
        "/v1/sandboxes", params=QUICK, json=create_body("fallback"), headers=bearer(tenants.runner)
    )
    assert created.status == 200, await created.text()
    answer = await created.json()
    assert answer["org_id"] == tenants.a
    listed = await (await client.get("/v1/sandboxes", headers=bearer(tenants.runner))).json()
    assert "fallback" in [s["name"] for s in listed["data"]]
    prefixed = await (
        await client.get(
            f"/ns/{tenants.a}/v1/sandboxes/by-name/fallback", headers=bearer(tenants.runner)
        )
    ).json()
    assert prefixed["id"] == answer["id"]


async def test_rights_in_one_namespace_do_not_reach_another(
    client: AppClient, tenants: Tenants, control_plane: ControlPlane
) -> None:
    created = await client.post(
        "/v1/sandboxes", params=QUICK, json=create_body("theirs"), headers=bearer(tenants.other)
    )
    assert created.status == 200, await created.text()
    uid = (await created.json())["id"]
    runner = bearer(tenants.runner)
    b = f"/ns/{tenants.b}/v1/sandboxes"
    assert await error_code(await client.get(b, headers=runner), 403) == "forbidden"
    assert await error_code(await client.get(f"{b}/by-name/theirs", headers=runner), 403) == (
        "forbidden"
    )
    assert await error_code(await client.get(f"{b}/{uid}", headers=runner), 403) == "forbidden"
    assert await error_code(await client.delete(f"{b}/by-name/theirs", headers=runner), 403) == (
        "forbidden"
    )
    assert await error_code(await client.delete(f"{b}/{uid}", headers=runner), 403) == "forbidden"
    # Its id is not found in the runner's own namespace either.
    response = await client.get(f"/v1/sandboxes/{uid}", headers=runner)
    assert await error_code(response, 404) == "sandbox_not_found"
    listed = await (await client.get("/v1/sandboxes", headers=runner)).json()
    assert "theirs" not in [s["name"] for s in listed["data"]]
    assert exists(control_plane, "sandboxes", tenants.b, "theirs")


# ---- create, get, delete -----------------------------------------------------------------


async def test_create_writes_the_translated_sandbox_and_an_owned_secret(
    client: AppClient, tenants: Tenants, control_plane: ControlPlane
) -> None:
    body = create_body("with-secret")
    body["network"]["secrets"] = secret_entries(SECRET_VALUE)
    started = time.monotonic()
    response = await client.post(
        "/v1/sandboxes", params=QUICK, json=body, headers=bearer(tenants.runner)
    )
    assert response.status == 200, await response.text()
    assert time.monotonic() - started < 15
    answer = await response.json()
    # No operator runs here: the sandbox never gets Running, and the answer says so.
    assert answer["status"] == "starting"
    assert SECRET_VALUE not in await response.text()

    sandbox = kubectl_json(control_plane, "get", "sandbox", "with-secret", "-n", tenants.a)
    assert answer["id"] == sandbox["metadata"]["uid"]
    assert sandbox["metadata"]["annotations"]["kubesandbox.dev/created-by"] == (
        f"system:serviceaccount:{tenants.a}:runner"
    )
    assert sandbox["metadata"]["labels"]["team"] == "gateway"
    (reference,) = sandbox["spec"]["secrets"]
    secret_name = reference["secretKeyRef"]["name"]
    expected = translate.sandbox_from_create(body, secret_name=secret_name)
    assert_contains(sandbox["spec"], json.loads(json.dumps(expected.spec)))

    secret = kubectl_json(control_plane, "get", "secret", secret_name, "-n", tenants.a)
    key = reference["secretKeyRef"]["key"]
    assert base64.b64decode(secret["data"][key]).decode() == SECRET_VALUE
    (owner,) = secret["metadata"]["ownerReferences"]
    assert owner["kind"] == "Sandbox"
    assert owner["name"] == "with-secret"
    assert owner["uid"] == sandbox["metadata"]["uid"]

    # Delete by id; the garbage collector then removes the Secret it owned.
    response = await client.delete(f"/v1/sandboxes/{answer['id']}", headers=bearer(tenants.runner))
    assert response.status == 200
    assert "message" in await response.json()
    eventually(
        lambda: not exists(control_plane, "sandboxes", tenants.a, "with-secret"),
        what="the Sandbox to go",
    )
    eventually(
        lambda: not exists(control_plane, "secrets", tenants.a, secret_name),
        what="the garbage collector to remove the companion Secret",
    )


async def test_secret_options_are_stored_as_spec_fields_the_apiserver_accepts(
    client: AppClient, tenants: Tenants, control_plane: ControlPlane
) -> None:
    body = create_body("secret-options")
    secrets = secret_entries(SECRET_VALUE)
    secrets["entries"][0].update(
        placeholder="OPENAI_PLACEHOLDER",
        allowed_hosts=[{"type": "wildcard", "value": "*.openai.com"},
                       {"type": "exact", "value": "203.0.113.9"}],
        substitution={"headers": True, "header_fields": ["authorization"], "query": True,
                      "body": False},
        passthrough_hosts=[{"type": "exact", "value": "echo.openai.com"}],
        require_tls_identity=False,
        violation_action={"type": "block"},
    )  # fmt: skip
    secrets["violation_action"] = {"type": "block_and_terminate"}
    body["network"]["secrets"] = secrets
    response = await client.post(
        "/v1/sandboxes", params=QUICK, json=body, headers=bearer(tenants.runner)
    )
    assert response.status == 200, await response.text()
    sandbox = kubectl_json(control_plane, "get", "sandbox", "secret-options", "-n", tenants.a)
    (entry,) = sandbox["spec"]["secrets"]
    assert entry["placeholder"] == "OPENAI_PLACEHOLDER"
    assert entry["allowHosts"] == ["*.openai.com", "203.0.113.9"]
    assert entry["substitution"] == {"headers": True, "headerFields": ["authorization"],
                                     "query": True, "body": False}  # fmt: skip
    assert entry["allowPlaceholderFor"] == ["echo.openai.com"]
    assert (entry["requireTLS"], entry["violationAction"]) == (False, "Block")
    assert sandbox["spec"]["network"]["secretViolationAction"] == "BlockAndTerminate"
    assert SECRET_VALUE not in json.dumps(sandbox)
    # what the SDK reads back: its own shape of the same options, never the value
    got = await client.get(f"/v1/sandboxes/{sandbox['metadata']['uid']}",
                           headers=bearer(tenants.runner))  # fmt: skip
    echoed = (await got.json())["spec"]["network"]["secrets"]
    sent = json.loads(json.dumps(secrets))
    del sent["entries"][0]["value"], sent["entries"][0]["violation_action"]
    assert echoed == sent
    response = await client.delete(f"/v1/sandboxes/{sandbox['metadata']['uid']}",
                                   headers=bearer(tenants.runner))  # fmt: skip
    assert response.status == 200


async def test_a_taken_name_is_409_and_leaves_no_secret(
    client: AppClient, tenants: Tenants, control_plane: ControlPlane
) -> None:
    runner = bearer(tenants.runner)
    first = await client.post(
        "/v1/sandboxes", params=QUICK, json=create_body("twice"), headers=runner
    )
    assert first.status == 200
    secrets_before = kubectl_json(control_plane, "get", "secrets", "-n", tenants.a)["items"]
    body = create_body("twice")
    body["network"]["secrets"] = secret_entries(SECRET_VALUE)
    # The Secret is written first; the apiserver then refuses the Sandbox: the Secret goes.
    again = await client.post("/v1/sandboxes", params=QUICK, json=body, headers=runner)
    assert await error_code(again, 409) == "name_already_exists"
    secrets_after = kubectl_json(control_plane, "get", "secrets", "-n", tenants.a)["items"]
    assert [s["metadata"]["name"] for s in secrets_after] == [
        s["metadata"]["name"] for s in secrets_before
    ]


async def test_invalid_configurations_are_422(client: AppClient, tenants: Tenants) -> None:
    for body, field in (
        (create_body("too-big", resources={"vcpus": 1000, "memory_mib": 512}), "resources.vcpus"),
        (create_body("Not_A_Name"), "name"),
    ):
        response = await client.post(
            "/v1/sandboxes", params=QUICK, json=body, headers=bearer(tenants.runner)
        )
        assert await error_code(response, 422) == "invalid_sandbox_config"
        assert (await response.json())["error"]["message"].startswith(f"{field}: ")


async def test_list_get_stop_start_and_delete_by_name(
    client: AppClient, tenants: Tenants, control_plane: ControlPlane
) -> None:
    runner = bearer(tenants.runner)
    for name in ("page-1", "page-2", "page-3"):
        body = create_body(name, labels={"suite": "paging"})
        assert (await client.post("/v1/sandboxes", json=body, headers=runner)).status == 200
    labels = json.dumps({"suite": "paging"})
    first = await (
        await client.get("/v1/sandboxes", params={"limit": "2", "labels": labels}, headers=runner)
    ).json()
    assert len(first["data"]) == 2
    assert first["next_cursor"]
    rest = await (
        await client.get(
            "/v1/sandboxes",
            params={"limit": "2", "labels": labels, "cursor": first["next_cursor"]},
            headers=runner,
        )
    ).json()
    assert rest["next_cursor"] is None
    names = sorted(s["name"] for s in first["data"] + rest["data"])
    assert names == ["page-1", "page-2", "page-3"]

    got = await (await client.get("/v1/sandboxes/by-name/page-1", headers=runner)).json()
    uid = got["id"]
    assert (await client.get(f"/v1/sandboxes/{uid}", headers=runner)).status == 200
    assert (await client.post(f"/v1/sandboxes/{uid}/stop", json={}, headers=runner)).status == 200
    spec = kubectl_json(control_plane, "get", "sandbox", "page-1", "-n", tenants.a)["spec"]
    assert spec["lifecycle"]["state"] == "Stopped"
    started = await client.post(f"/v1/sandboxes/{uid}/start", params=QUICK, headers=runner)
    assert started.status == 200
    assert (await started.json())["status"] == "starting"
    spec = kubectl_json(control_plane, "get", "sandbox", "page-1", "-n", tenants.a)["spec"]
    assert spec["lifecycle"]["state"] == "Running"

    for name in ("page-1", "page-2", "page-3"):
        response = await client.delete(f"/v1/sandboxes/by-name/{name}", headers=runner)
        assert response.status == 200
    missing = await client.get("/v1/sandboxes/by-name/page-1", headers=runner)
    assert await error_code(missing, 404) == "sandbox_not_found"


# ---- the entry point ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_entry_point_serves_and_stops_on_sigterm(
    control_plane: ControlPlane, tenants: Tenants, tmp_path: Any
) -> None:
    port = free_port()
    log = (tmp_path / "gateway.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kubesandbox_gateway",
            "--kubeconfig",
            str(control_plane.kubeconfig),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if k != "KUBECONFIG"},
    )
    try:
        import urllib.error
        import urllib.request

        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as answer:  # noqa: S310
                    return bool(answer.status == 200)
            except OSError:
                return False

        eventually(healthy, 30, "the gateway to listen")
        request = urllib.request.Request(  # noqa: S310
            f"{base}/v1/sandboxes", headers=bearer(tenants.runner)
        )
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            assert "data" in json.loads(answer.read())
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/v1/sandboxes", timeout=10)  # noqa: S310
        assert refused.value.code == 401
        refused.value.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    assert tenants.runner not in (tmp_path / "gateway.log").read_text()


# ---- the agent WebSocket, checked twice ----------------------------------------------------

SYSTEM_NAMESPACE = "kubesandbox-system"


def announce(plane: ControlPlane, node: str, endpoint: str) -> None:
    renewed = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": f"node-agent-{node}",
            "namespace": SYSTEM_NAMESPACE,
            "annotations": {"kubesandbox.dev/endpoint": endpoint},
        },
        "spec": {
            "holderIdentity": f"{node}/test",
            "leaseDurationSeconds": 40,
            "renewTime": renewed,
        },
    }
    plane.kubectl("apply", "-f", "-", input_text=json.dumps(lease))


@pytest.fixture
async def node_agent(control_plane: ControlPlane) -> AsyncIterator[str]:
    """A node agent relay that, like the real one, reviews the forwarded token itself."""
    async with KubeClient.connect(control_plane.kubeconfig) as kube:
        reviews = KubeAuthenticator(kube)

        async def relay(request: web.Request) -> web.StreamResponse:
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            user = await reviews.authenticate(token)
            if user is None:
                return web.json_response({"error": "unauthorized"}, status=401)
            # The real node agent knows the sandbox's namespace from its uid; here it is the
            # tenant's own.
            namespace = str(user.service_account_namespace)
            access = Access("create", namespace, subresource="exec")
            if not await reviews.authorize(user, access):
                return web.json_response({"error": "forbidden"}, status=403)
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.send_bytes(f"relay for {user.name}".encode())
            async for message in ws:
                if message.type != aiohttp.WSMsgType.BINARY:
                    break
                await ws.send_bytes(message.data[::-1])
            return ws

        app = web.Application()
        app.router.add_get("/v1/sandboxes/{uid}/agent", relay)
        async with TestServer(app, host="127.0.0.1") as server:
            yield str(server.make_url("")).rstrip("/")


async def test_the_agent_socket_reaches_the_node_agent_with_the_callers_token(
    client: AppClient, tenants: Tenants, control_plane: ControlPlane, node_agent: str
) -> None:
    control_plane.kubectl("create", "namespace", SYSTEM_NAMESPACE, check=False)
    node = f"gw-node-{uuid.uuid4().hex[:6]}"
    announce(control_plane, node, node_agent)
    runner = bearer(tenants.runner)
    created = await client.post(
        "/v1/sandboxes", params=QUICK, json=create_body("piped"), headers=runner
    )
    uid = (await created.json())["id"]
    path = f"/v1/sandboxes/{uid}/agent"
    # Not Running yet: refused before any upgrade.
    assert await error_code(await client.get(path, headers=runner), 409) == "sandbox_not_running"

    control_plane.kubectl(
        "patch", "sandbox", "piped", "-n", tenants.a, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"phase": "Running", "nodeName": node}}),
    )  # fmt: skip
    async with client.ws_connect(path, headers=runner) as ws:
        greeting = await ws.receive(timeout=10)
        assert greeting.data == f"relay for system:serviceaccount:{tenants.a}:runner".encode()
        await ws.send_bytes(b"\x00\x01\x02frame")
        assert (await ws.receive(timeout=10)).data == b"emarf\x02\x01\x00"

    response = await client.get(path, headers=bearer(tenants.nobody))
    assert await error_code(response, 403) == "forbidden"

    announce(control_plane, node, f"http://127.0.0.1:{free_port()}")
    response = await client.get(path, headers=runner)
    assert await error_code(response, 502) == "orchestrator_unreachable"
