"""URL paths of API resources (core ``/api/v1`` and group ``/apis/G/V``)."""

from dataclasses import dataclass, replace
from urllib.parse import quote


@dataclass(frozen=True)
class ResourcePath:
    """A resource type, optionally narrowed to a namespace, an object and a subresource."""

    group: str
    version: str
    plural: str
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None

    def in_namespace(self, namespace: str) -> "ResourcePath":
        return replace(self, namespace=namespace)

    def named(self, name: str, subresource: str | None = None) -> "ResourcePath":
        return replace(self, name=name, subresource=subresource)

    @property
    def url(self) -> str:
        parts = ["/api/v1"] if not self.group else ["/apis", self.group, self.version]
        if self.namespace is not None:
            parts += ["namespaces", quote(self.namespace, safe="")]
        parts.append(self.plural)
        if self.name is not None:
            parts.append(quote(self.name, safe=""))
            if self.subresource is not None:
                parts.append(self.subresource)
        return "/".join(parts)


PODS = ResourcePath("", "v1", "pods")
EVENTS = ResourcePath("", "v1", "events")
SECRETS = ResourcePath("", "v1", "secrets")
CONFIG_MAPS = ResourcePath("", "v1", "configmaps")
LEASES = ResourcePath("coordination.k8s.io", "v1", "leases")
SANDBOXES = ResourcePath("kubesandbox.dev", "v1alpha1", "sandboxes")
SANDBOX_SNAPSHOTS = ResourcePath("kubesandbox.dev", "v1alpha1", "sandboxsnapshots")
TOKEN_REVIEWS = ResourcePath("authentication.k8s.io", "v1", "tokenreviews")
SUBJECT_ACCESS_REVIEWS = ResourcePath("authorization.k8s.io", "v1", "subjectaccessreviews")
