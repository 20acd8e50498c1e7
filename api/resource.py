"""The whole ``Sandbox`` object, and the names that identify the API."""

from typing import Any, Final, Literal, Self

from pydantic import BaseModel, ConfigDict

from kubesandbox_api.spec import SandboxSpec
from kubesandbox_api.status import SandboxStatus

GROUP = "kubesandbox.dev"
VERSION = "v1alpha1"
API_VERSION: Final = "kubesandbox.dev/v1alpha1"
KIND: Final = "Sandbox"
PLURAL = "sandboxes"
SINGULAR = "sandbox"
SHORT_NAME = "sbx"
CRD_NAME = f"{PLURAL}.{GROUP}"


class Namespaced:
    """What every namespaced object of this API answers about its ``metadata``."""

    metadata: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", "default"))

    @property
    def uid(self) -> str:
        return str(self.metadata["uid"])

    @property
    def generation(self) -> int:
        return int(self.metadata.get("generation", 0))

    @property
    def deleting(self) -> bool:
        return bool(self.metadata.get("deletionTimestamp"))


class ApiObject(Namespaced, BaseModel):
    """A kind of this API besides Sandbox (pools, snapshots), as the components read it:
    metadata, spec and status, the rest of the body ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    metadata: dict[str, Any]

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Self:
        """Parses a raw object as the apiserver returns it."""
        return cls.model_validate(
            {
                "metadata": body.get("metadata", {}),
                "spec": body.get("spec", {}),
                "status": body.get("status") or None,
            }
        )


class Sandbox(Namespaced, BaseModel):
    """A microVM booted from an OCI image, a disk image or a host directory, with scripts,
    rootfs patches, volumes, network policy, secrets and lifecycle control."""

    model_config = ConfigDict(frozen=True, extra="ignore", use_attribute_docstrings=True)

    api_version: Literal["kubesandbox.dev/v1alpha1"] = "kubesandbox.dev/v1alpha1"
    kind: Literal["Sandbox"] = "Sandbox"
    metadata: dict[str, Any]
    spec: SandboxSpec
    status: SandboxStatus | None = None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "Sandbox":
        """Parses a raw object as the apiserver returns it."""
        return cls.model_validate(
            {
                "api_version": body.get("apiVersion", API_VERSION),
                "kind": body.get("kind", KIND),
                "metadata": body.get("metadata", {}),
                "spec": body.get("spec", {}),
                "status": body.get("status") or None,
            }
        )
