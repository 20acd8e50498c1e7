"""Errors of the storage code, each naming the field or path it is about.

Two kinds, as in Kopf: a *temporary* error (a registry that is down, a timeout) may succeed on
retry; a *permanent* one (a malformed reference, a hostile layer, a patch on an existing path
without ``replace``) will not, and becomes a condition with a clear message.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of every error the image, layer and rootfs code raises.

    ``field`` is the Sandbox spec field (``spec.image.oci``, ``spec.patches[2].path``) or the
    path inside an image the error is about, so the operator can show it to the user as is.
    """

    def __init__(self, message: str, *, field: str | None = None, temporary: bool = False):
        self.field = field
        self.temporary = temporary
        super().__init__(f"{field}: {message}" if field else message)


class ImageError(StorageError):
    """A reference that does not parse or resolve, a registry failure, a refused pull."""


class ImageNotFoundError(ImageError):
    """The registry has no such repository, tag or digest (HTTP 404)."""


class AuthError(ImageError):
    """The registry refused our credentials (or we had none)."""


class DigestMismatchError(ImageError):
    """Content did not hash to the digest that named it."""


class NotCachedError(ImageError):
    """``pullPolicy: Never`` and the image or a layer is not on this node."""


class LayerError(StorageError):
    """A layer tar that is malformed or hostile; ``field`` is the offending path in the tar."""
