"""The gateway's REST routes against fakes: auth, namespaces, every route and error code."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest

from kubesandbox_gateway.errors import from_kube
from kubesandbox_kube.errors import AlreadyExists, Conflict, Forbidden, Invalid, KubeError, NotFound
from tests.unit.gateway import fakes
from tests.unit.gateway.conftest import (
    ALICE_TOKEN,
    APP_FIXTURES,
    NOBODY_TOKEN,
    NOBODY_USER,
    SA_TOKEN,
    SA_USER,
    AppClient,
    bearer,
    gateway_logs,
    running_sandbox,
)

pytestmark = APP_FIXTURES

SECRET_VALUE = "sk-very-secret-value-0123456789"
REGISTRY_PASSWORD = "hunter2-registry-password"


def create_body(name: str = "t1", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source": "oci",
        "reference": "python",
        "name": name,
        "env": [{"key": "A", "value": "1"}],
        "labels": {"team": "x"},
        "lifecycle": {"ephemeral": False},
    }
    body.update(extra)
    return body


def secret_body(name: str = "t1") -> dict[str, Any]:
    return create_body(
        name,
        network={
            "enabled": True,
            "secrets": {
                "entries": [
                    {
                        "env_var": "OPENAI_API_KEY",
                        "value": SECRET_VALUE,
                        "allowed_hosts": [{"type": "exact", "value": "api.openai.com"}],
                    }
                ]
            },
        },
        registry={"mode": "inline", "username": "bob", "password": REGISTRY_PASSWORD},
    )


async def error_of(response: Any, status: int) -> dict[str, str]:
    assert response.status == status, await response.text()
    body = await response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    return dict(body["error"])


async def become(kube: fakes.FakeKube, namespace: str, name: str, status: dict[str, Any]) -> None:
    """Plays the operator/node agent: the sandbox reaches ``status`` once it exists."""
    for _ in range(500):
        key = ("sandboxes", namespace, name)
        if key in kube.objects:
            kube.objects[key]["status"] = status
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{name} was never created")


# ---- authentication and namespaces --------------------------------------------------------


async def test_healthz_needs_no_token(client: AppClient) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.text() == "ok"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "}, bearer("nope")],
)
async def test_missing_or_invalid_token_is_401(client: AppClient, headers: dict[str, str]) -> None:
    for path in ("/v1/sandboxes", "/ns/team-a/v1/sandboxes/by-name/x"):
        error = await error_of(await client.get(path, headers=headers), 401)
        assert error["code"] == "unauthorized"


async def test_service_account_namespace_is_the_fallback(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    running_sandbox(kube, "mine", "team-a")
    running_sandbox(kube, "theirs", "team-b")
    response = await client.get("/v1/sandboxes", headers=bearer(SA_TOKEN))
    assert response.status == 200
    names = [s["name"] for s in (await response.json())["data"]]
    assert names == ["mine"]


async def test_a_user_that_is_no_service_account_must_name_the_namespace(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    running_sandbox(kube, "theirs", "team-b")
    error = await error_of(await client.get("/v1/sandboxes", headers=bearer(ALICE_TOKEN)), 400)
    assert error["code"] == "invalid_request"
    assert "/ns/<namespace>" in error["message"]
    response = await client.get("/ns/team-b/v1/sandboxes", headers=bearer(ALICE_TOKEN))
    assert [s["name"] for s in (await response.json())["data"]] == ["theirs"]


async def test_an_invalid_namespace_prefix_is_refused(client: AppClient) -> None:
    error = await error_of(
        await client.get("/ns/Not_A_Namespace/v1/sandboxes", headers=bearer(ALICE_TOKEN)), 400
    )
    assert error["code"] == "invalid_request"


async def test_forbidden_names_user_verb_resource_and_namespace(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    error = await error_of(
        await client.post("/v1/sandboxes", json=create_body(), headers=bearer(NOBODY_TOKEN)), 403
    )
    assert error["code"] == "forbidden"
    assert NOBODY_USER in error["message"]
    assert "create sandboxes in namespace 'team-a'" in error["message"]
    assert not kube.objects
    # The prefix names another namespace: the review is for that namespace.
    error = await error_of(
        await client.get("/ns/team-b/v1/sandboxes", headers=bearer(SA_TOKEN)), 403
    )
    assert "list sandboxes in namespace 'team-b'" in error["message"]


async def test_reviews_that_cannot_be_made_deny_with_502(
    client: AppClient, auth: fakes.FakeAuth
) -> None:
    auth.down = True
    error = await error_of(await client.get("/v1/sandboxes", headers=bearer(SA_TOKEN)), 502)
    assert error["code"] == "orchestrator_unreachable"


async def test_apiserver_down_is_502(client: AppClient, kube: fakes.FakeKube) -> None:
    kube.down = True
    error = await error_of(await client.get("/v1/sandboxes", headers=bearer(SA_TOKEN)), 502)
    assert error["code"] == "orchestrator_unreachable"
    error = await error_of(
        await client.post("/v1/sandboxes", json=create_body(), headers=bearer(SA_TOKEN)), 502
    )
    assert error["code"] == "orchestrator_unreachable"


async def test_unknown_routes_answer_json_errors(client: AppClient) -> None:
    error = await error_of(await client.get("/v2/nothing", headers=bearer(SA_TOKEN)), 404)
    assert error["code"] == "not_found"
    error = await error_of(await client.put("/v1/sandboxes", headers=bearer(SA_TOKEN)), 405)
    assert error["code"] == "method_not_allowed"


# ---- create ------------------------------------------------------------------------------


async def test_create_writes_the_sandbox_and_holds_until_running(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    becomes_running = asyncio.create_task(
        become(kube, "team-a", "t1", {"phase": "Running", "nodeName": "node-1"})
    )
    response = await client.post(
        "/v1/sandboxes",
        params={"start": "true", "wait_for": "running", "wait_timeout": "90"},
        json=create_body(),
        headers=bearer(SA_TOKEN),
    )
    await becomes_running
    assert response.status == 200
    answer = await response.json()
    stored = kube.sandbox("team-a", "t1")
    assert answer["status"] == "running"
    assert answer["id"] == stored["metadata"]["uid"]
    assert answer["name"] == "t1"
    assert answer["org_id"] == "team-a"
    assert answer["spec"] == create_body()  # the body echoed back (nothing to redact here)
    assert stored["apiVersion"] == "kubesandbox.dev/v1alpha1"
    assert stored["kind"] == "Sandbox"
    assert stored["metadata"]["annotations"]["kubesandbox.dev/created-by"] == SA_USER
    assert stored["metadata"]["labels"] == {"team": "x"}
    assert stored["spec"] == {
        "image": {"oci": "python"},
        "env": [{"name": "A", "value": "1"}],
    }
    assert not [k for k in kube.objects if k[0] == "secrets"]


async def test_create_that_never_runs_answers_starting_after_wait_timeout(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    response = await client.post(
        "/v1/sandboxes",
        params={"wait_for": "running", "wait_timeout": "0.2"},
        json=create_body(),
        headers=bearer(SA_TOKEN),
    )
    assert response.status == 200
    assert (await response.json())["status"] == "starting"
    assert ("sandboxes", "team-a", "t1") in kube.objects  # kept: the SDK may remove it


async def test_create_that_fails_answers_failed_at_once(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    fails = asyncio.create_task(
        become(
            kube,
            "team-a",
            "t1",
            {"phase": "Failed", "message": "image python: not found", "observedGeneration": 1},
        )
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await client.post(
        "/v1/sandboxes",
        params={"wait_for": "running", "wait_timeout": "30"},
        json=create_body(),
        headers=bearer(SA_TOKEN),
    )
    await fails
    assert loop.time() - started < 10
    answer = await response.json()
    assert answer["status"] == "failed"
    assert answer["last_failure_message"] == "image python: not found"


async def test_create_without_wait_and_with_start_false(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    response = await client.post(
        "/v1/sandboxes", params={"start": "false"}, json=create_body(), headers=bearer(SA_TOKEN)
    )
    assert response.status == 200
    assert kube.sandbox("team-a", "t1")["spec"]["lifecycle"] == {"state": "Stopped"}


async def test_create_with_secrets_makes_an_owned_companion_secret(
    client: AppClient, kube: fakes.FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    with gateway_logs(monkeypatch) as logs:
        response = await client.post("/v1/sandboxes", json=secret_body(), headers=bearer(SA_TOKEN))
    assert response.status == 200, await response.text()
    sandbox = kube.sandbox("team-a", "t1")
    secrets = [obj for (kind, _, _), obj in kube.objects.items() if kind == "secrets"]
    assert len(secrets) == 1
    secret = secrets[0]
    secret_name = secret["metadata"]["name"]
    assert secret["stringData"] == {"OPENAI_API_KEY": SECRET_VALUE}
    assert sandbox["spec"]["secrets"][0]["secretKeyRef"] == {
        "name": secret_name,
        "key": "OPENAI_API_KEY",
    }
    assert secret["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "kubesandbox.dev/v1alpha1",
            "kind": "Sandbox",
            "name": "t1",
            "uid": sandbox["metadata"]["uid"],
            "blockOwnerDeletion": False,
        }
    ]
    # The answer and the logs carry the redacted body, never a secret value.
    text = await response.text()
    assert SECRET_VALUE not in text
    assert REGISTRY_PASSWORD not in text
    assert (await response.json())["spec"]["network"]["secrets"]["entries"][0]["value"] == (
        fakes.REDACTED
    )
    assert any(entry["event"] == "create requested" for entry in logs)
    assert SECRET_VALUE not in repr(logs)
    assert REGISTRY_PASSWORD not in repr(logs)
    assert SA_TOKEN not in repr(logs)


async def test_secret_is_removed_when_the_sandbox_is_refused(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    kube.refuse_create["sandboxes"] = Invalid(
        422, "Invalid", 'Sandbox.kubesandbox.dev "t1" is invalid: spec.cpus: must be <= 64'
    )
    error = await error_of(
        await client.post("/v1/sandboxes", json=secret_body(), headers=bearer(SA_TOKEN)), 422
    )
    assert error["code"] == "invalid_sandbox_config"
    assert "spec.cpus: must be <= 64" in error["message"]
    assert not kube.objects


async def test_a_taken_name_is_409_and_leaves_no_secret(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    running_sandbox(kube, "t1")
    error = await error_of(
        await client.post("/v1/sandboxes", json=secret_body(), headers=bearer(SA_TOKEN)), 409
    )
    assert error["code"] == "name_already_exists"
    assert "t1" in error["message"]
    assert [k for k in kube.objects if k[0] == "secrets"] == []


@pytest.mark.parametrize(
    ("data", "params", "status", "code"),
    [
        (b"{not json", {}, 400, "invalid_request"),
        (b"[1, 2]", {}, 400, "invalid_request"),
        (b"", {}, 400, "invalid_request"),
        (json.dumps({"source": "oci", "reference": "python"}).encode(), {}, 422, None),
        (json.dumps(create_body()).encode(), {"wait_for": "stopped"}, 400, "invalid_request"),
        (
            json.dumps(create_body()).encode(),
            {"wait_for": "running", "wait_timeout": "-1"},
            400,
            "invalid_request",
        ),
        (
            json.dumps(create_body()).encode(),
            {"wait_for": "running", "wait_timeout": "soon"},
            400,
            "invalid_request",
        ),
        (b'{"name": "' + b"x" * (2 << 20) + b'"}', {}, 413, "invalid_request"),
    ],
)
async def test_create_refuses_bad_requests(
    client: AppClient,
    kube: fakes.FakeKube,
    data: bytes,
    params: dict[str, str],
    status: int,
    code: str | None,
) -> None:
    response = await client.post(
        "/v1/sandboxes",
        data=io.BytesIO(data),
        params=params,
        headers={**bearer(SA_TOKEN), "Content-Type": "application/json"},
    )
    error = await error_of(response, status)
    assert error["code"] == (code or "invalid_sandbox_config")
    if code is None:
        assert error["message"].startswith("name: ")  # the field of the request body
    assert not kube.objects


# ---- list and get ------------------------------------------------------------------------


async def test_list_pages_with_cursor_and_filters_by_labels(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    for name in ("a", "b", "c"):
        running_sandbox(kube, name)
    kube.sandbox("team-a", "b")["metadata"]["labels"] = {"team": "y"}
    first = await (
        await client.get("/v1/sandboxes", params={"limit": "2"}, headers=bearer(SA_TOKEN))
    ).json()
    assert [s["name"] for s in first["data"]] == ["a", "b"]
    assert first["next_cursor"]
    second = await (
        await client.get(
            "/v1/sandboxes",
            params={"limit": "2", "cursor": first["next_cursor"]},
            headers=bearer(SA_TOKEN),
        )
    ).json()
    assert [s["name"] for s in second["data"]] == ["c"]
    assert second["next_cursor"] is None
    filtered = await (
        await client.get(
            "/v1/sandboxes",
            params={"labels": json.dumps({"team": "x"})},
            headers=bearer(SA_TOKEN),
        )
    ).json()
    assert [s["name"] for s in filtered["data"]] == ["a", "c"]
    assert ("GET", "/apis/kubesandbox.dev/v1alpha1/namespaces/team-a/sandboxes") in kube.calls


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "many"},
        {"limit": "100000"},
        {"labels": "not json"},
        {"labels": "[1]"},
        {"labels": json.dumps({"team": 3})},
        {"labels": json.dumps({"team": "x,owner=root"})},
        {"labels": json.dumps({"bad key!": "x"})},
        {"cursor": "expired"},
    ],
)
async def test_list_refuses_bad_parameters(client: AppClient, params: dict[str, str]) -> None:
    response = await client.get("/v1/sandboxes", params=params, headers=bearer(SA_TOKEN))
    assert (await error_of(response, 400))["code"] == "invalid_request"


async def test_get_by_name_and_by_id(client: AppClient, kube: fakes.FakeKube) -> None:
    uid = running_sandbox(kube, "s1")["metadata"]["uid"]
    by_name = await (await client.get("/v1/sandboxes/by-name/s1", headers=bearer(SA_TOKEN))).json()
    assert by_name["id"] == uid
    assert by_name["status"] == "running"
    by_id = await (await client.get(f"/v1/sandboxes/{uid}", headers=bearer(SA_TOKEN))).json()
    assert by_id == by_name


@pytest.mark.parametrize(
    "path",
    [
        "/v1/sandboxes/by-name/ghost",
        "/v1/sandboxes/by-name/NOT..valid",
        "/v1/sandboxes/00000000-0000-0000-0000-000000000000",
        "/v1/sandboxes/not-a-uid-at-all!",
    ],
)
async def test_unknown_sandboxes_are_404(client: AppClient, path: str) -> None:
    error = await error_of(await client.get(path, headers=bearer(SA_TOKEN)), 404)
    assert error["code"] == "sandbox_not_found"


async def test_ids_of_other_namespaces_are_not_found(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    uid = running_sandbox(kube, "theirs", "team-b")["metadata"]["uid"]
    error = await error_of(await client.get(f"/v1/sandboxes/{uid}", headers=bearer(SA_TOKEN)), 404)
    assert error["code"] == "sandbox_not_found"


async def test_without_rights_existing_and_missing_ids_both_answer_403(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    uid = running_sandbox(kube, "s1")["metadata"]["uid"]
    for target in (uid, "00000000-0000-0000-0000-000000000000"):
        response = await client.get(f"/v1/sandboxes/{target}", headers=bearer(NOBODY_TOKEN))
        assert (await error_of(response, 403))["code"] == "forbidden"


async def test_id_lookup_lists_once_then_reads_by_name(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    uid = running_sandbox(kube, "s1")["metadata"]["uid"]
    list_call = ("GET", "/apis/kubesandbox.dev/v1alpha1/namespaces/team-a/sandboxes")
    for _ in range(3):
        assert (await client.get(f"/v1/sandboxes/{uid}", headers=bearer(SA_TOKEN))).status == 200
    assert kube.calls.count(list_call) == 1
    # A new sandbox under the same name is a different id: the cached name is verified.
    del kube.objects[("sandboxes", "team-a", "s1")]
    running_sandbox(kube, "s1")
    response = await client.get(f"/v1/sandboxes/{uid}", headers=bearer(SA_TOKEN))
    assert (await error_of(response, 404))["code"] == "sandbox_not_found"


# ---- lifecycle ---------------------------------------------------------------------------


async def test_stop_and_start(client: AppClient, kube: fakes.FakeKube) -> None:
    uid = running_sandbox(kube, "s1")["metadata"]["uid"]
    response = await client.post(f"/v1/sandboxes/{uid}/stop", json={}, headers=bearer(SA_TOKEN))
    assert response.status == 200
    assert kube.sandbox("team-a", "s1")["spec"]["lifecycle"]["state"] == "Stopped"
    kube.sandbox("team-a", "s1")["status"]["phase"] = "Stopped"
    restarted = asyncio.create_task(
        become(kube, "team-a", "s1", {"phase": "Running", "nodeName": "node-1"})
    )
    response = await client.post(
        f"/v1/sandboxes/{uid}/start",
        params={"wait_for": "running", "wait_timeout": "30"},
        headers=bearer(SA_TOKEN),
    )
    await restarted
    assert (await response.json())["status"] == "running"
    assert kube.sandbox("team-a", "s1")["spec"]["lifecycle"]["state"] == "Running"


async def test_start_of_a_crashed_sandbox_waits_for_the_new_generation(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    uid = running_sandbox(kube, "s1")["metadata"]["uid"]
    sandbox = kube.sandbox("team-a", "s1")
    sandbox["spec"]["lifecycle"] = {"state": "Stopped"}
    sandbox["status"] = {"phase": "Crashed", "message": "old crash", "observedGeneration": 1}
    restarted = asyncio.create_task(asyncio.sleep(0.3))
    restarted.add_done_callback(
        lambda _: sandbox.__setitem__(
            "status", {"phase": "Running", "nodeName": "node-1", "observedGeneration": 2}
        )
    )
    response = await client.post(
        f"/v1/sandboxes/{uid}/start",
        params={"wait_for": "running", "wait_timeout": "10"},
        headers=bearer(SA_TOKEN),
    )
    await restarted
    assert (await response.json())["status"] == "running"


async def test_stop_of_an_ephemeral_sandbox_keeps_it(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    created = await client.post(
        "/v1/sandboxes",
        json=create_body(lifecycle={"ephemeral": True}),
        headers=bearer(SA_TOKEN),
    )
    uid = (await created.json())["id"]
    response = await client.post(f"/v1/sandboxes/{uid}/stop", headers=bearer(SA_TOKEN))
    assert response.status == 200
    assert kube.sandbox("team-a", "t1")["spec"]["lifecycle"]["state"] == "Stopped"


async def test_pause_and_resume(client: AppClient, kube: fakes.FakeKube) -> None:
    uid = running_sandbox(kube, "s1")["metadata"]["uid"]
    assert (await client.post(f"/v1/sandboxes/{uid}/pause", headers=bearer(SA_TOKEN))).status == 200
    assert kube.sandbox("team-a", "s1")["spec"]["lifecycle"]["state"] == "Paused"
    assert (
        await client.post(f"/v1/sandboxes/{uid}/resume", headers=bearer(SA_TOKEN))
    ).status == 200
    assert kube.sandbox("team-a", "s1")["spec"]["lifecycle"]["state"] == "Running"
    assert (
        await client.post(f"/v1/sandboxes/{uid}/suspend", headers=bearer(SA_TOKEN))
    ).status == 200
    assert kube.sandbox("team-a", "s1")["spec"]["lifecycle"]["state"] == "Suspended"


async def test_lifecycle_verbs_need_update(client: AppClient, kube: fakes.FakeKube) -> None:
    uid = running_sandbox(kube, "s1")["metadata"]["uid"]
    for verb in ("start", "stop", "pause", "resume", "suspend", "kill", "drain"):
        response = await client.post(f"/v1/sandboxes/{uid}/{verb}", headers=bearer(NOBODY_TOKEN))
        error = await error_of(response, 403)
        assert "update sandboxes" in error["message"]
    assert "lifecycle" not in kube.sandbox("team-a", "s1")["spec"]


# ---- delete ------------------------------------------------------------------------------


async def test_delete_by_name_and_by_id(client: AppClient, kube: fakes.FakeKube) -> None:
    running_sandbox(kube, "s1")
    uid2 = running_sandbox(kube, "s2")["metadata"]["uid"]
    response = await client.delete("/v1/sandboxes/by-name/s1", headers=bearer(SA_TOKEN))
    assert response.status == 200
    assert await response.json() == {"message": "sandbox s1 deleted"}
    response = await client.delete(f"/v1/sandboxes/{uid2}", headers=bearer(SA_TOKEN))
    assert response.status == 200
    assert not kube.objects
    error = await error_of(
        await client.delete("/v1/sandboxes/by-name/s1", headers=bearer(SA_TOKEN)), 404
    )
    assert error["code"] == "sandbox_not_found"


async def test_delete_needs_delete_in_that_namespace(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    running_sandbox(kube, "s1", "team-a")
    for token, path in (
        (NOBODY_TOKEN, "/v1/sandboxes/by-name/s1"),
        (ALICE_TOKEN, "/ns/team-a/v1/sandboxes/by-name/s1"),
    ):
        error = await error_of(await client.delete(path, headers=bearer(token)), 403)
        assert "delete sandboxes in namespace 'team-a'" in error["message"]
    assert ("sandboxes", "team-a", "s1") in kube.objects


async def test_create_in_a_namespace_that_does_not_exist_is_400(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    kube.refuse_create["sandboxes"] = NotFound(404, "NotFound", 'namespaces "team-a" not found')
    response = await client.post("/v1/sandboxes", json=create_body(), headers=bearer(SA_TOKEN))
    error = await error_of(response, 400)
    assert error["code"] == "invalid_request"
    assert "namespace 'team-a' does not exist" in error["message"]


async def test_delete_by_id_of_a_replaced_sandbox_is_404(
    client: AppClient, kube: fakes.FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    uid = running_sandbox(kube, "s1")["metadata"]["uid"]

    async def replaced(
        path: Any, *, uid: str | None = None, grace_seconds: int | None = None
    ) -> Any:
        raise Conflict(409, "Conflict", "Precondition failed: UID in precondition")

    monkeypatch.setattr(kube, "delete", replaced)
    response = await client.delete(f"/v1/sandboxes/{uid}", headers=bearer(SA_TOKEN))
    assert (await error_of(response, 404))["code"] == "sandbox_not_found"


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (NotFound(404, "NotFound", "x"), 404, "sandbox_not_found"),
        (AlreadyExists(409, "AlreadyExists", "x"), 409, "name_already_exists"),
        (Conflict(409, "Conflict", "x"), 409, "conflict"),
        (Invalid(422, "Invalid", "spec.cpus: too many"), 422, "invalid_sandbox_config"),
        (KubeError(410, "Expired", "x"), 400, "invalid_request"),
        (KubeError(400, "BadRequest", "x"), 400, "invalid_request"),
        (Forbidden(403, "Forbidden", "x"), 502, "orchestrator_unreachable"),
        (KubeError(401, "Unauthorized", "x"), 502, "orchestrator_unreachable"),
        (KubeError(0, "Unreachable", "x"), 502, "orchestrator_unreachable"),
        (KubeError(500, "InternalError", "x"), 502, "orchestrator_unreachable"),
        (KubeError(429, "TooManyRequests", "x"), 502, "orchestrator_unreachable"),
    ],
)
def test_apiserver_errors_map_to_msb_codes(error: KubeError, status: int, code: str) -> None:
    mapped = from_kube(error, what="'s1'")
    assert (mapped.status, mapped.code) == (status, code)


async def test_a_sandbox_that_cannot_be_shown_is_left_out_of_lists(
    client: AppClient, kube: fakes.FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    running_sandbox(kube, "good")
    kube.put("sandboxes", "team-a", {"metadata": {"name": "broken"}, "spec": {}})
    del kube.sandbox("team-a", "broken")["metadata"]["uid"]
    with gateway_logs(monkeypatch) as logs:
        response = await client.get("/v1/sandboxes", headers=bearer(SA_TOKEN))
    assert [s["name"] for s in (await response.json())["data"]] == ["good"]
    assert any(e["event"] == "sandbox left out of a list" for e in logs)


LIST_CALL = ("GET", "/apis/kubesandbox.dev/v1alpha1/namespaces/team-a/sandboxes")


async def test_callers_without_rights_cannot_turn_ids_into_lists(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    running_sandbox(kube, "s1")
    for n in range(20):
        missing = f"00000000-0000-0000-0000-{n:012d}"
        response = await client.get(f"/v1/sandboxes/{missing}", headers=bearer(NOBODY_TOKEN))
        assert response.status == 403
    assert kube.calls.count(LIST_CALL) == 1


async def test_a_sandbox_made_right_after_a_miss_is_found(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    response = await client.get(f"/v1/sandboxes/{missing}", headers=bearer(SA_TOKEN))
    assert response.status == 404
    uid = running_sandbox(kube, "fresh")["metadata"]["uid"]  # as kubectl would, not cached
    response = await client.get(f"/v1/sandboxes/{uid}", headers=bearer(SA_TOKEN))
    assert response.status == 200


async def test_resource_name_grants_work_by_id(
    client: AppClient, kube: fakes.FakeKube, auth: fakes.FakeAuth
) -> None:
    uid = running_sandbox(kube, "s1")["metadata"]["uid"]
    other = running_sandbox(kube, "s2")["metadata"]["uid"]
    auth.grants.add((NOBODY_USER, "get", "sandboxes", "team-a", "s1"))
    response = await client.get(f"/v1/sandboxes/{uid}", headers=bearer(NOBODY_TOKEN))
    assert response.status == 200
    response = await client.get(f"/v1/sandboxes/{other}", headers=bearer(NOBODY_TOKEN))
    assert (await error_of(response, 403))["code"] == "forbidden"


async def test_a_handle_got_by_name_is_found_by_id_without_a_list(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    uid = running_sandbox(kube, "s1")["metadata"]["uid"]
    assert (await client.get("/v1/sandboxes/by-name/s1", headers=bearer(SA_TOKEN))).status == 200
    assert (await client.post(f"/v1/sandboxes/{uid}/stop", headers=bearer(SA_TOKEN))).status == 200
    assert LIST_CALL not in kube.calls


async def test_delete_answers_once_the_finalizer_let_go(
    client: AppClient, kube: fakes.FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete with a finalizer leaves the object in place for a while; remove must not return
    before it is gone, or the SDK's next create of that name is SandboxAlreadyExists."""
    running_sandbox(kube, "s1")
    key = ("sandboxes", "team-a", "s1")
    held = kube.objects[key]

    async def finalizing(
        path: Any, *, uid: str | None = None, grace_seconds: int | None = None
    ) -> Any:
        held["metadata"]["deletionTimestamp"] = "2026-11-22T00:00:00Z"
        return held

    async def finalizer_done() -> None:
        await asyncio.sleep(0.3)
        del kube.objects[key]

    monkeypatch.setattr(kube, "delete", finalizing)
    released = asyncio.create_task(finalizer_done())
    response = await client.delete("/v1/sandboxes/by-name/s1", headers=bearer(SA_TOKEN))
    assert released.done(), "the delete answered while the sandbox still existed"
    assert await response.json() == {"message": "sandbox s1 deleted"}


async def test_start_and_stop_by_name(client: AppClient, kube: fakes.FakeKube) -> None:
    """The SDK's static ``Sandbox.start(name)`` / ``Sandbox.stop(name)`` use by-name routes."""
    running_sandbox(kube, "s1")
    response = await client.post("/v1/sandboxes/by-name/s1/stop", headers=bearer(SA_TOKEN))
    assert response.status == 200
    assert kube.sandbox("team-a", "s1")["spec"]["lifecycle"]["state"] == "Stopped"
    response = await client.post("/v1/sandboxes/by-name/s1/start", headers=bearer(SA_TOKEN))
    assert response.status == 200
    assert kube.sandbox("team-a", "s1")["spec"]["lifecycle"]["state"] == "Running"
    missing = await client.post("/v1/sandboxes/by-name/nope/start", headers=bearer(SA_TOKEN))
    assert (await error_of(missing, 404))["code"] == "sandbox_not_found"
    denied = await client.post("/v1/sandboxes/by-name/s1/stop", headers=bearer(NOBODY_TOKEN))
    await error_of(denied, 403)


async def test_a_warm_pools_unclaimed_members_are_not_listed(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    running_sandbox(kube, "mine")
    running_sandbox(kube, "warm-x1y2z")
    member = kube.sandbox("team-a", "warm-x1y2z")
    member["metadata"]["labels"] = {"kubesandbox.dev/pool": "warm", "team": "x"}
    listed = await client.get("/v1/sandboxes", headers=bearer(SA_TOKEN))
    assert [s["name"] for s in (await listed.json())["data"]] == ["mine"]
    by_label = await client.get(
        "/v1/sandboxes", params={"labels": '{"team": "x"}'}, headers=bearer(SA_TOKEN)
    )
    assert [s["name"] for s in (await by_label.json())["data"]] == ["mine"]
