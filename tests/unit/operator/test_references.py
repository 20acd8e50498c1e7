import base64
from typing import Any

from kubesandbox_api import SandboxSpec
from kubesandbox_api.conditions import Reason
from kubesandbox_operator.reconcile.references import ObjectRef, referenced_objects, resolve


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


SPEC = SandboxSpec.model_validate(
    {
        "image": {"oci": "busybox", "pullSecrets": [{"name": "pull"}]},
        "env": [
            {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "a"}}},
            {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "b"}}},
            {
                "name": "C",
                "valueFrom": {"secretKeyRef": {"name": "s", "key": "zz", "optional": True}},
            },
        ],
        "patches": [
            {"copyFile": {"path": "/f", "source": {"configMapKeyRef": {"name": "c", "key": "b"}}}},
            {"copyDir": {"path": "/d", "source": {"secret": {"name": "s"}}}},
        ],
        "secrets": [
            {"env": "K", "secretKeyRef": {"name": "s", "key": "a"}, "allowHosts": ["x.example"]}
        ],
    }
)

OBJECTS: dict[ObjectRef, dict[str, Any] | None] = {
    ObjectRef("Secret", "s"): {"kind": "Secret", "data": {"a": _b64("alpha")}},
    ObjectRef("ConfigMap", "c"): {
        "kind": "ConfigMap",
        "data": {"b": "listen = 8080\n"},  # text, not base64
        "binaryData": {"bin": _b64("\x00\x01")},
    },
    ObjectRef("Secret", "pull"): {"kind": "Secret", "data": {".dockerconfigjson": _b64("{}")}},
}


def test_every_reference_is_found() -> None:
    assert referenced_objects(SPEC) == set(OBJECTS)


def test_values_are_resolved_for_the_node_agent() -> None:
    resolved = resolve(SPEC, OBJECTS)
    assert resolved.problems == []
    assert resolved.env == {"A": "alpha", "B": "listen = 8080\n"}
    assert resolved.files == {"0": _b64("listen = 8080\n")}
    assert resolved.dirs == {"1": {"a": _b64("alpha")}}
    assert resolved.secrets == {"K": "alpha"}
    assert resolved.pull_auths == [{"dockerConfigJson": "{}"}]


def test_missing_objects_and_keys_name_the_field() -> None:
    resolved = resolve(SPEC, {**OBJECTS, ObjectRef("ConfigMap", "c"): None})
    messages = [p.message for p in resolved.problems]
    assert messages == [
        "spec.env[1].valueFrom: ConfigMap 'c' does not exist",
        "spec.patches[0].copyFile.source: ConfigMap 'c' does not exist",
    ]
    assert {p.reason for p in resolved.problems} == {Reason.CONFIG_MAP_NOT_FOUND}
