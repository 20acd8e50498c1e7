"""Errors of rootfs assembly; ``field`` is the spec field (``spec.patches[3].text.path``)."""

from __future__ import annotations

from kubesandbox_node.images.errors import StorageError


class RootfsError(StorageError):
    """The root filesystem cannot be prepared as asked (a refused path, a failing tool)."""


class PatchError(RootfsError):
    """A patch that cannot be applied as the seeds define it (exists without replace, ...)."""
