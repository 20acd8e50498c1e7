from typing import Any

import pytest
from pydantic import ValidationError

from kubesandbox_api import Sandbox, SandboxSpec
from kubesandbox_api.spec import (
    DesiredState,
    NetworkPolicy,
    Patch,
    PullPolicy,
    RestartPolicy,
    SecretSubstitution,
    StopMode,
    ViolationAction,
)
from tests.corpus import InvalidCase, example_sandboxes, invalid_cases

# Rules that only the apiserver can check: uniqueness within list-maps, rules spanning fields
# of the spec object. The integration suite proves the apiserver refuses them.
APISERVER_ONLY = {
    "env-duplicate": "list-map uniqueness",
    "volume-duplicate-mount": "list-map uniqueness",
    "network-port-duplicate": "list-map uniqueness",
    "secret-duplicate-env": "list-map uniqueness",
    "env-value-and-from": "object-level CEL rule",
    "patches-on-disk-root": "spec-level CEL rule",
    "patch-file-not-base64": "format: byte is checked by the apiserver",
}


def _location(error: Any) -> str:
    path = ""
    for part in error["loc"]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path.lstrip(".")


@pytest.mark.parametrize("case", invalid_cases(), ids=lambda c: c.name)
def test_python_models_refuse_the_invalid_corpus_at_the_same_field(case: InvalidCase) -> None:
    if case.name in APISERVER_ONLY:
        Sandbox.from_body(case.manifest)
        return
    with pytest.raises(ValidationError) as raised:
        Sandbox.from_body(case.manifest)
    locations = [_location(e) for e in raised.value.errors()]
    assert any(loc.startswith(case.expected_field) for loc in locations), locations


@pytest.mark.parametrize("manifest", example_sandboxes(), ids=lambda m: m["metadata"]["name"])
def test_every_example_parses(manifest: dict[str, Any]) -> None:
    sandbox = Sandbox.from_body(manifest)
    assert sandbox.name == manifest["metadata"]["name"]


def test_defaults_are_the_documented_ones() -> None:
    spec = SandboxSpec.model_validate({"image": {"oci": "busybox:1.36"}})
    assert spec.cpus == 1
    assert spec.memory_mib == 512
    assert spec.shell == "/bin/sh"
    assert spec.init == "none"
    assert spec.image.pull_policy is PullPolicy.IF_MISSING
    assert spec.network.policy is NetworkPolicy.PUBLIC_ONLY
    assert spec.lifecycle.state is DesiredState.RUNNING
    assert spec.lifecycle.stop_mode is StopMode.GRACEFUL
    assert spec.lifecycle.stop_grace_period_seconds == 30
    assert spec.lifecycle.restart_policy is RestartPolicy.NEVER
    assert spec.patches == []
    assert spec.volumes == []
    assert spec.scripts == {}


def test_memory_quantities_become_mib() -> None:
    spec = SandboxSpec.model_validate({"image": {"oci": "x"}, "memory": "2Gi"})
    assert spec.memory_mib == 2048


def test_a_patch_names_its_one_operation() -> None:
    patch = Patch.model_validate({"mkdir": {"path": "/app", "mode": 0o700}})
    assert patch.chosen() == "mkdir"
    assert patch.operation.model_dump() == {"path": "/app", "mode": 0o700}


def test_wire_names_are_camel_case() -> None:
    spec = SandboxSpec.model_validate(
        {"image": {"oci": "x"}, "volumes": [{"mountPath": "/t", "tmpfs": {"sizeMiB": 8}}]}
    )
    dumped = spec.model_dump(exclude_defaults=True)
    assert dumped["volumes"] == [{"mountPath": "/t", "tmpfs": {"sizeMiB": 8}}]


def test_a_secret_entry_has_microsandbox_defaults() -> None:
    spec = SandboxSpec.model_validate(
        {
            "image": {"oci": "x"},
            "secrets": [
                {
                    "env": "API_KEY",
                    "secretKeyRef": {"name": "s", "key": "k"},
                    "allowHosts": ["api.example.com", "*.example.org", "192.0.2.7", "2001:db8::7"],
                }
            ],
        }
    )
    secret = spec.secrets[0]
    assert secret.effective_placeholder == "$MSB_API_KEY"
    assert secret.require_tls is True
    assert secret.substitution == SecretSubstitution(headers=True, query=False, body=False)
    assert secret.allow_placeholder_for == []
    assert secret.violation_action is None
    assert spec.network.secret_violation_action is ViolationAction.BLOCK_AND_LOG
    assert secret.model_dump()["requireTLS"] is True
