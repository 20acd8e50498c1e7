from typing import Any

import pytest
from pydantic import ValidationError

from kubesandbox_api import SandboxSpec
from kubesandbox_api.pool import SandboxPool, boot_fields, matches

TEMPLATE: dict[str, Any] = {"image": {"oci": "busybox:1.36"}, "memory": 256}


def spec(**fields: Any) -> SandboxSpec:
    return SandboxSpec.model_validate({**TEMPLATE, **fields})


def test_identical_specs_match() -> None:
    assert matches(spec(), spec())


def test_same_memory_in_other_units_matches() -> None:
    assert matches(spec(), spec(memory="256Mi"))


@pytest.mark.parametrize(
    "claim_time",
    [
        {"env": [{"name": "A", "value": "1"}]},
        {"scripts": {"hello": "echo hi"}},
        {"hostname": "mine"},
        {"lifecycle": {"maxDurationSeconds": 60, "idleTimeoutSeconds": 30, "ephemeral": True}},
    ],
)
def test_claim_time_fields_may_differ(claim_time: dict[str, Any]) -> None:
    assert matches(spec(), spec(**claim_time))


@pytest.mark.parametrize(
    "boot_time",
    [
        {"image": {"oci": "busybox:1.37"}},
        {"cpus": 2},
        {"memory": 512},
        {"init": "auto"},
        {"workdir": "/tmp"},
        {"volumes": [{"mountPath": "/data", "tmpfs": {}}]},
        {"network": {"policy": "None"}},
        {"patches": [{"mkdir": {"path": "/x"}}]},
        {"nodeSelector": {"zone": "a"}},
    ],
)
def test_boot_time_fields_must_be_equal(boot_time: dict[str, Any]) -> None:
    assert not matches(spec(), spec(**boot_time))


def test_a_sandbox_created_stopped_is_not_served_from_a_pool() -> None:
    assert not matches(spec(), spec(lifecycle={"state": "Stopped"}))


def test_secrets_are_applied_at_the_claim_and_need_not_match() -> None:
    secret = {"env": "TOKEN", "secretKeyRef": {"name": "s", "key": "k"}, "allowHosts": ["a.b"]}
    assert matches(spec(), spec(secrets=[secret]))
    assert matches(spec(secrets=[secret]), spec())


def test_boot_fields_leave_out_exactly_the_claim_time_fields() -> None:
    fields = boot_fields(spec())
    assert {"env", "scripts", "secrets", "hostname", "lifecycle"}.isdisjoint(fields)
    assert {"image", "cpus", "memory", "init", "volumes", "network", "patches"} <= fields.keys()


def pool(**spec_fields: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {"template": {"spec": TEMPLATE}, **spec_fields},
    }


def test_pool_defaults() -> None:
    parsed = SandboxPool.from_body(pool())
    assert parsed.spec.replicas == 1
    assert parsed.spec.template.metadata.labels == {}


def test_pool_template_is_validated_as_a_sandbox_spec() -> None:
    body = pool()
    body["spec"]["template"]["spec"] = {"image": {"oci": "x"}, "cpus": 0}
    with pytest.raises(ValidationError, match="cpus"):
        SandboxPool.from_body(body)


def test_pool_replicas_are_bounded() -> None:
    with pytest.raises(ValidationError, match="replicas"):
        SandboxPool.from_body(pool(replicas=101))
