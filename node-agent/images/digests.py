"""Content digests: parsing, and a hasher that counts and verifies as bytes stream by."""

from __future__ import annotations

import hashlib
import re
from typing import NewType

from kubesandbox_node.images.errors import DigestMismatchError, ImageError

Digest = NewType("Digest", str)
"""``sha256:<64 hex>``; the only algorithm registries use in practice, the only one we accept."""

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def parse_digest(value: str, *, field: str | None = None) -> Digest:
    if not _DIGEST.match(value):
        raise ImageError(f"not a sha256 digest: {value!r}", field=field)
    return Digest(value)


def digest_hex(digest: Digest) -> str:
    return digest.split(":", 1)[1]


def digest_of(data: bytes) -> Digest:
    return Digest("sha256:" + hashlib.sha256(data).hexdigest())


class DigestVerifier:
    """Hashes and counts a stream; ``verify`` raises when it did not match what it should."""

    def __init__(self, expected: Digest, *, expected_size: int | None = None):
        self.expected = expected
        self.expected_size = expected_size
        self.size = 0
        self._hash = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._hash.update(chunk)

    @property
    def digest(self) -> Digest:
        return Digest("sha256:" + self._hash.hexdigest())

    def verify(self, *, what: str) -> None:
        if self.expected_size is not None and self.size != self.expected_size:
            raise DigestMismatchError(
                f"{what} {self.expected}: got {self.size} bytes, expected {self.expected_size}"
            )
        if self.digest != self.expected:
            raise DigestMismatchError(f"{what} {self.expected}: content hashes to {self.digest}")
