"""Image references as users write them (``busybox``, ``host:5000/team/app:1.2@sha256:...``).

The grammar is distribution's (docker/distribution ``reference``), reduced to what resolution
needs: a registry host, a repository path, and a tag and/or a digest. Docker Hub's conventions
(``docker.io``, ``library/``) apply to names without a registry host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kubesandbox_node.images.digests import Digest, parse_digest
from kubesandbox_node.images.errors import ImageError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_HOST = re.compile(r"^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?$")


@dataclass(frozen=True)
class ImageReference:
    registry: str
    """Host[:port] as written (``docker.io`` for Docker Hub)."""
    repository: str
    tag: str | None
    digest: Digest | None

    @property
    def api_host(self) -> str:
        """Where the registry API is: Docker Hub's API lives on another name."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def pinnable(self) -> str:
        """What to ask the registry for: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: Digest) -> ImageReference:
        return ImageReference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str, *, field: str = "spec.image.oci") -> ImageReference:
    if not text or len(text) > 4096 or text != text.strip():
        raise ImageError(f"not an image reference: {text!r}", field=field)
    rest, digest = text, None
    if "@" in rest:
        rest, raw_digest = rest.split("@", 1)
        digest = parse_digest(raw_digest, field=field)
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.match(tag):
            raise ImageError(f"invalid tag {tag!r} in {text!r}", field=field)
    first, _, remainder = rest.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost" or "[" in first):
        registry, path = first, remainder
        if not _HOST.match(registry):
            raise ImageError(f"invalid registry host {registry!r} in {text!r}", field=field)
    else:
        registry, path = DOCKER_HUB, rest
        if "/" not in path:
            path = f"library/{path}"
    for component in path.split("/"):
        if not _COMPONENT.match(component):
            raise ImageError(f"invalid repository component {component!r} in {text!r}", field=field)
    if tag is None and digest is None:
        tag = "latest"
    return ImageReference(registry=registry, repository=path, tag=tag, digest=digest)
