"""``SandboxPool``: booted VMs kept ready for Sandboxes that match a template.

A pool keeps ``spec.replicas`` members: ordinary Sandboxes created from
``spec.template`` (owned by the pool, labelled :data:`POOL_LABEL`), each with its own sandbox
Pod. A Sandbox in the pool's namespace whose spec equals the template on every field fixed at
boot (:func:`boot_fields`) is served by a ready member instead of a new boot; the fields in
:data:`CLAIM_TIME_FIELDS` may differ and are applied when the VM is claimed (docs/pools.md).

This module holds the model (the CRD is generated from it by :mod:`.crdgen`) and the one pure
question the operator and the gateway ask: which pool, if any, can serve a spec.
"""

from typing import Annotated, Any, Final

from pydantic import Field

from kubesandbox_api._schema import ApiModel, cel, rules
from kubesandbox_api.resource import GROUP, ApiObject
from kubesandbox_api.spec import DesiredState, SandboxSpec
from kubesandbox_api.status import Condition

POOL_KIND: Final = "SandboxPool"
POOL_PLURAL = "sandboxpools"
POOL_SINGULAR = "sandboxpool"
POOL_SHORT_NAME = "sbxpool"
POOL_CRD_NAME = f"{POOL_PLURAL}.{GROUP}"
MAX_REPLICAS = 100

POOL_LABEL = "kubesandbox.dev/pool"
"""On a pool member: the name of its pool. Members are never claimants themselves."""
CLAIMED_BY_LABEL = "kubesandbox.dev/claimed-by"
"""On a pool member: the uid of the Sandbox its VM was handed to; the pool deletes it."""

CLAIM_TIME_FIELDS: Final = frozenset({"env", "scripts", "secrets", "hostname", "lifecycle"})
"""Spec fields (Python names) that may differ from the template: applied at claim time."""

LabelValue = Annotated[str, Field(max_length=63)]


class PoolTemplateMetadata(ApiModel):
    """What members carry of their own metadata."""

    labels: Annotated[
        dict[Annotated[str, Field(max_length=316)], LabelValue], Field(max_length=64)
    ] = {}
    """Labels of every member Sandbox (besides ``kubesandbox.dev/pool``)."""


_TEMPLATE_RUNS = cel(
    "!has(self.lifecycle) || !has(self.lifecycle.state) || self.lifecycle.state == 'Running'",
    "a pool keeps running VMs: template.spec.lifecycle.state must be Running (or unset)",
    field_path=".lifecycle.state",
)


class PoolTemplate(ApiModel):
    """The Sandbox every member is created from."""

    metadata: PoolTemplateMetadata = Field(
        default_factory=PoolTemplateMetadata, json_schema_extra={"default": {}}
    )
    """Labels of the members."""
    spec: Annotated[SandboxSpec, Field(json_schema_extra=rules(_TEMPLATE_RUNS))]
    """A Sandbox spec, validated as one. Sandboxes that match it on every field fixed at boot
    are served from the pool."""


class SandboxPoolSpec(ApiModel):
    """How many VMs to keep booted, and from which template."""

    replicas: Annotated[int, Field(ge=0, le=MAX_REPLICAS)] = 1
    """Members to keep (booted or booting); claimed ones are replaced."""
    template: PoolTemplate
    """The members' Sandbox."""


class SandboxPoolStatus(ApiModel):
    """What the pool has."""

    replicas: Annotated[int, Field(ge=0)] = 0
    """Unclaimed members that exist (any phase)."""
    ready_replicas: Annotated[int, Field(ge=0)] = 0
    """Unclaimed members that are Running and ready to be claimed."""
    selector: Annotated[str, Field(max_length=1024)] | None = None
    """Label selector of the members (for the scale subresource and HorizontalPodAutoscalers)."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The ``metadata.generation`` the status was last computed from."""
    conditions: Annotated[
        list[Condition],
        Field(
            max_length=8,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
        ),
    ] = []
    """``Ready``: every wanted member is Running."""


class SandboxPool(ApiObject):
    """A pool of booted sandbox VMs, claimed by matching Sandboxes."""

    spec: SandboxPoolSpec
    status: SandboxPoolStatus | None = None


def boot_fields(spec: SandboxSpec) -> dict[str, Any]:
    """The spec's fields fixed at boot, as the apiserver would store them (defaults filled):
    what a claimant must share with the template. ``lifecycle.state`` must be Running."""
    dumped = spec.model_dump(mode="json", exclude=set(CLAIM_TIME_FIELDS))
    dumped["memory"] = spec.memory_mib  # 1Gi and 1024 are the same VM
    return dumped


def can_claim(spec: SandboxSpec) -> bool:
    """Whether a Sandbox with this spec may be served by a booted VM at all (a fork,
    ``image.sandbox``, never: it starts from its source's state at the moment it is made; nor
    one from a snapshot, ``image.snapshot``: its writable layer is the snapshot's). Secrets
    are applied at the claim (an egress proxy of the claimant's own)."""
    return (
        spec.lifecycle.state == DesiredState.RUNNING
        and spec.image.sandbox is None
        and spec.image.snapshot is None
    )


def matches(template: SandboxSpec, spec: SandboxSpec) -> bool:
    """Whether a VM booted from ``template`` can serve ``spec``."""
    return can_claim(spec) and boot_fields(template) == boot_fields(spec)
