"""``/.kubesandbox/boot.json``: what the node agent tells the guest agent at boot.

The pydantic model of ``docs/boot-config.md`` (the contract with the Rust agent). Field names
on the wire are camelCase; unknown keys are ignored so that an older agent boots a newer
config. ``to_json()`` is what goes into the per-sandbox initramfs archive.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

LogLevel = Literal["error", "warn", "info", "debug", "trace"]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


class OverlayRoot(_Model):
    kind: Literal["overlay"] = "overlay"
    layers: list[str] = Field(description="serials of read-only EROFS devices, lowest first")
    upper: str = Field(description="serial of the writable ext4 device")


class DiskRoot(_Model):
    kind: Literal["disk"] = "disk"
    device: str
    fstype: str = "ext4"


class ShareRoot(_Model):
    """A host directory as the root, shared over virtio-fs with ``tag``."""

    kind: Literal["virtiofs"] = "virtiofs"
    tag: str
    read_only: bool = False


Root = Annotated[OverlayRoot | DiskRoot | ShareRoot, Field(discriminator="kind")]


class TmpfsVolume(_Model):
    kind: Literal["tmpfs"] = "tmpfs"
    mount_path: str
    size_mib: int | None = Field(default=None, alias="sizeMiB", gt=0)


class ShareVolume(_Model):
    """A host directory shared over virtio-fs with ``tag``."""

    kind: Literal["virtiofs"] = "virtiofs"
    mount_path: str
    tag: str
    read_only: bool = False


class BlockVolume(_Model):
    kind: Literal["block"] = "block"
    mount_path: str
    device: str
    fstype: str = "ext4"
    read_only: bool = False


Volume = Annotated[TmpfsVolume | ShareVolume | BlockVolume, Field(discriminator="kind")]


class Interface(_Model):
    mac: str
    addresses: list[str] = []
    gateway: str | None = None


class Network(_Model):
    interfaces: list[Interface] = []
    dns: list[str] = []


class BootConfig(_Model):
    version: Literal[1] = 1
    hostname: str = "sandbox"
    root: Root
    volumes: list[Volume] = []
    env: list[str] = []
    workdir: str | None = None
    user: str | None = None
    shell: str = "/bin/sh"
    init: str | None = None
    network: Network | None = None
    log_level: LogLevel = "info"

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()
