"""microsandbox create bodies ⇄ Sandbox objects; pure (no I/O), so every rule is unit-tested.

The contract used by :mod:`kubesandbox_gateway.app` (docs/gateway.md, "Translation"):

* :func:`sandbox_from_create` turns a create body (0.7 ``source``/``reference`` or 0.6
  ``image: {type, reference}``) into a :class:`Translation`, or raises :class:`InvalidConfig`
  naming the offending field of the *request body* (``mounts[1].size_mib``).
* :func:`sandbox_object` turns a Sandbox (the Kubernetes object as JSON) into the SDK's
  Sandbox JSON (``id, org_id, name, slug, status, ephemeral, created_at, ...``, with ``spec``
  rebuilt from the Sandbox spec so a reconnected handle finds env, workdir, user and shell).
* :func:`redacted` is the body safe to log: secret values replaced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

JsonDict = dict[str, Any]


class InvalidConfig(ValueError):
    """The create body cannot become a Sandbox; ``field`` is a path in the request body."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Translation:
    """What a create body becomes."""

    name: str
    """metadata.name of the Sandbox."""
    spec: JsonDict
    """The Sandbox spec as the apiserver stores it (camelCase), valid for ``SandboxSpec``."""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    secret_data: dict[str, str] = field(default_factory=dict)
    """Values for the companion Secret named by ``secret_name`` (network secrets, registry
    credentials), which ``spec`` references; empty when none is needed. Never logged."""


def sandbox_from_create(body: Mapping[str, Any], *, secret_name: str) -> Translation:
    raise NotImplementedError


def sandbox_object(sandbox: Mapping[str, Any]) -> JsonDict:
    raise NotImplementedError


def redacted(body: Mapping[str, Any]) -> JsonDict:
    raise NotImplementedError
