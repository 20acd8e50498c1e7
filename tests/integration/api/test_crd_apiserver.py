import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubesandbox_api import GROUP, PLURAL, VERSION, Sandbox, SandboxSpec
from kubesandbox_devenv.controlplane import ControlPlane
from tests.corpus import InvalidCase, documents, example_files, invalid_cases

pytestmark = pytest.mark.usefixtures("installed_crds")


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = f"api-{uuid.uuid4().hex[:8]}"
    with control_plane.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        yield name
        core.delete_namespace(name)


def _body(response: object) -> dict[str, Any]:
    assert isinstance(response, dict)
    return response


class Sandboxes:
    """Typed access to Sandbox objects in one namespace (the generated client returns object)."""

    def __init__(self, api: client.CustomObjectsApi, namespace: str) -> None:
        self.api = api
        self.namespace = namespace

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        # Strict field validation is what kubectl does by default: unknown fields are errors.
        created = self.api.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body, field_validation="Strict"
        )
        return _body(created)

    def get(self, name: str) -> dict[str, Any]:
        got = self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        return _body(got)

    def patch(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        patched = self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, body
        )
        return _body(patched)

    def patch_status(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        patched = self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, PLURAL, name, body
        )
        return _body(patched)


@pytest.fixture
def sandboxes(control_plane: ControlPlane, namespace: str) -> Iterator[Sandboxes]:
    with control_plane.api_client() as api:
        yield Sandboxes(client.CustomObjectsApi(api), namespace)


def _message(error: ApiException) -> str:
    return str(json.loads(error.body or "{}").get("message", error.body))


@pytest.mark.parametrize("case", invalid_cases(), ids=lambda c: c.name)
def test_the_apiserver_refuses_invalid_manifests_naming_the_field(
    case: InvalidCase, sandboxes: Sandboxes
) -> None:
    with pytest.raises(ApiException) as raised:
        sandboxes.create(case.manifest)
    assert raised.value.status in (400, 422), raised.value.body
    assert case.expected_field in _message(raised.value)


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.stem)
def test_every_example_is_accepted_and_reads_back_as_its_model(
    path: Path, control_plane: ControlPlane, sandboxes: Sandboxes
) -> None:
    control_plane.kubectl("apply", "--namespace", sandboxes.namespace, "-f", str(path))
    for doc in documents(path):
        if doc["kind"] != "Sandbox":
            continue
        stored = sandboxes.get(doc["metadata"]["name"])
        # What the apiserver defaulted equals what the models default: one source of truth.
        assert Sandbox.from_body(stored).spec == SandboxSpec.model_validate(doc["spec"])


def test_defaults_come_back_as_documented(sandboxes: Sandboxes) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Sandbox",
        "metadata": {"name": "defaults"},
        "spec": {"image": {"oci": "busybox:1.36"}},
    }
    spec = sandboxes.create(body)["spec"]
    assert spec["cpus"] == 1
    assert spec["memory"] == 512
    assert spec["shell"] == "/bin/sh"
    assert spec["init"] == "none"
    assert spec["image"]["pullPolicy"] == "IfMissing"
    assert spec["network"] == {"policy": "PublicOnly", "secretViolationAction": "BlockAndLog"}
    assert spec["lifecycle"] == {
        "state": "Running",
        "stopMode": "Graceful",
        "stopGracePeriodSeconds": 30,
        "idleAction": "Drain",
        "restartPolicy": "Never",
        "ephemeral": False,
    }


def _sandbox(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Sandbox",
        "metadata": {"name": name},
        "spec": {"image": {"oci": "busybox:1.36"}, **spec},
    }


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ({"image": {"oci": "busybox:1.37"}}, "spec.image: Invalid value"),
        ({"image": {"bind": {"path": "/srv/root"}}}, "spec.image: Invalid value"),
        ({"patches": [{"mkdir": {"path": "/other"}}]}, "patches are immutable"),
        ({"patches": []}, "patches are immutable"),
        ({"scripts": {"run": "#!/bin/sh\necho changed\n"}}, "scripts are immutable"),
    ],
    ids=["retag", "switch-root", "edit-patches", "drop-patches", "edit-scripts"],
)
def test_fields_that_cannot_change_are_refused_on_update(
    change: dict[str, Any],
    refusal: str,
    sandboxes: Sandboxes,
) -> None:
    original = _sandbox(
        "immutable",
        patches=[{"mkdir": {"path": "/app"}}],
        scripts={"run": "#!/bin/sh\necho hi\n"},
    )
    sandboxes.create(original)
    with pytest.raises(ApiException) as raised:
        sandboxes.patch("immutable", {"spec": change})
    assert raised.value.status == 422
    assert refusal in _message(raised.value)


def test_fields_applied_by_restart_or_live_can_change(sandboxes: Sandboxes) -> None:
    sandboxes.create(_sandbox("mutable"))
    changed = sandboxes.patch(
        "mutable",
        {
            "spec": {
                "cpus": 2,
                "memory": "1Gi",
                "image": {"pullPolicy": "Always"},
                "env": [{"name": "A", "value": "1"}],
                "lifecycle": {"state": "Stopped"},
            }
        },
    )
    assert changed["spec"]["cpus"] == 2
    assert changed["spec"]["lifecycle"]["state"] == "Stopped"
    assert changed["metadata"]["generation"] == 2


def test_status_is_a_subresource(sandboxes: Sandboxes) -> None:
    sandboxes.create(_sandbox("with-status"))
    sandboxes.patch_status(
        "with-status",
        {"status": {"phase": "Running", "nodeName": "node-0"}},
    )
    # A spec update cannot write status.
    updated = sandboxes.patch("with-status", {"status": {"phase": "Failed"}})
    assert updated["status"]["phase"] == "Running"
    assert Sandbox.from_body(updated).status is not None


def test_bad_status_is_refused_naming_the_field(sandboxes: Sandboxes) -> None:
    sandboxes.create(_sandbox("bad-status"))
    with pytest.raises(ApiException) as raised:
        sandboxes.patch_status("bad-status", {"status": {"phase": "Sleeping"}})
    assert "status.phase" in _message(raised.value)


def test_kubectl_get_shows_the_printer_columns(
    control_plane: ControlPlane, sandboxes: Sandboxes
) -> None:
    sandboxes.create(_sandbox("columns", cpus=2, memory="1Gi"))
    table = control_plane.kubectl(
        "get", "sbx", "--namespace", sandboxes.namespace
    ).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "NODE", "IMAGE", "CPUS", "MEMORY", "AGE"]
    assert table[1].split()[:2] == ["columns", "busybox:1.36"]
    assert table[1].split()[2:4] == ["2", "1Gi"]


def test_kubectl_explain_prints_the_model_documentation(control_plane: ControlPlane) -> None:
    explained = control_plane.kubectl("explain", "sandbox.spec.patches").stdout
    assert "Rootfs modifications applied in order before the first boot" in explained
    for operation in ("text", "file", "copyFile", "copyDir", "symlink", "mkdir", "remove"):
        assert f"{operation}\t" in explained or f"{operation} " in explained
    lifecycle = control_plane.kubectl("explain", "sandbox.spec.lifecycle.stopMode").stdout
    assert "Refuse new commands, let running ones finish, then stop." in lifecycle


def _pool(name: str, replicas: int = 1, **template: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SandboxPool",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"image": {"oci": "busybox:1.36"}, **template}},
        },
    }


def _apply(control_plane: ControlPlane, namespace: str, body: dict[str, Any]) -> Any:
    return control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input_text=json.dumps(body), check=False
    )


@pytest.mark.parametrize(
    ("template", "refusal"),
    [
        ({"cpus": 0}, "spec.template.spec.cpus"),
        ({"volumes": [{"mountPath": "relative"}]}, "spec.template.spec.volumes[0].mountPath"),
        ({"lifecycle": {"state": "Stopped"}}, "spec.template.spec.lifecycle.state"),
    ],
    ids=["cpus", "volume-path", "stopped"],
)
def test_a_pool_template_is_refused_as_a_sandbox_spec_would_be(
    control_plane: ControlPlane, namespace: str, template: dict[str, Any], refusal: str
) -> None:
    result = _apply(control_plane, namespace, _pool("bad", **template))
    assert result.returncode != 0
    assert refusal in result.stderr, result.stderr


def test_a_pool_template_may_change_what_a_sandbox_may_not(
    control_plane: ControlPlane, namespace: str
) -> None:
    assert _apply(control_plane, namespace, _pool("changing", scripts={"a": "x"})).returncode == 0
    changed = _apply(control_plane, namespace, _pool("changing", scripts={"a": "y"}))
    assert changed.returncode == 0, changed.stderr


def test_a_pool_scales_through_its_scale_subresource(
    control_plane: ControlPlane, namespace: str
) -> None:
    assert _apply(control_plane, namespace, _pool("scaled", 2)).returncode == 0
    control_plane.kubectl("scale", "-n", namespace, "sbxpool/scaled", "--replicas=5")
    got = control_plane.kubectl("get", "-n", namespace, "sbxpool", "scaled", "-o", "json")
    assert json.loads(got.stdout)["spec"]["replicas"] == 5
    too_many = control_plane.kubectl(
        "scale", "-n", namespace, "sbxpool/scaled", "--replicas=101", check=False
    )
    assert too_many.returncode != 0
    table = control_plane.kubectl("get", "sbxpool", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "DESIRED", "CURRENT", "READY", "IMAGE", "AGE"]
    assert table[1].split()[:3] == ["scaled", "5", "busybox:1.36"]
