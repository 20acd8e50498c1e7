"""Secrets and ConfigMaps a Sandbox refers to: which ones, and their values for the node agent.

The operator reads them (it must, to validate) and hands the values to the node agent in the
desired-state request, so node agents need no read access to Secrets. A missing object or key
becomes a condition with a reason naming the field, never an exception.
"""

import base64
from dataclasses import dataclass, field
from typing import Any, Literal

from kubesandbox_api import SandboxSpec
from kubesandbox_api.conditions import Reason

Kind = Literal["Secret", "ConfigMap"]
JsonDict = dict[str, Any]


@dataclass(frozen=True)
class ObjectRef:
    kind: Kind
    name: str


@dataclass(frozen=True)
class Problem:
    reason: Reason
    message: str


@dataclass
class Resolution:
    """The values the node agent needs, or the problems that prevent running."""

    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    dirs: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    pull_auths: list[JsonDict] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    fork_of: str | None = None
    """A fork's source Sandbox (its uid on the same node), until the fork has started."""
    snapshot_of: str | None = None
    """The SandboxSnapshot (its uid, on the same node) a new sandbox starts from."""
    snapshot_image: JsonDict | None = None
    """That snapshot's pinned image, the sandbox's until the node agent reports its own."""

    def payload(self) -> JsonDict:
        body: JsonDict = {
            "env": self.env,
            "files": self.files,
            "dirs": self.dirs,
            "secrets": self.secrets,
            "pullAuths": self.pull_auths,
        }
        if self.fork_of is not None:
            body["forkOf"] = self.fork_of
        if self.snapshot_of is not None:
            body["snapshotOf"] = self.snapshot_of
        return body


def referenced_objects(spec: SandboxSpec) -> set[ObjectRef]:
    """Every Secret and ConfigMap the spec names."""
    refs: set[ObjectRef] = set()
    for var in spec.env:
        if var.value_from and var.value_from.secret_key_ref:
            refs.add(ObjectRef("Secret", var.value_from.secret_key_ref.name))
        if var.value_from and var.value_from.config_map_key_ref:
            refs.add(ObjectRef("ConfigMap", var.value_from.config_map_key_ref.name))
    for patch in spec.patches:
        if patch.copy_file:
            source = patch.copy_file.source
            if source.secret_key_ref:
                refs.add(ObjectRef("Secret", source.secret_key_ref.name))
            if source.config_map_key_ref:
                refs.add(ObjectRef("ConfigMap", source.config_map_key_ref.name))
        if patch.copy_dir:
            if patch.copy_dir.source.secret:
                refs.add(ObjectRef("Secret", patch.copy_dir.source.secret.name))
            if patch.copy_dir.source.config_map:
                refs.add(ObjectRef("ConfigMap", patch.copy_dir.source.config_map.name))
    refs.update(ObjectRef("Secret", s.secret_key_ref.name) for s in spec.secrets)
    refs.update(ObjectRef("Secret", s.name) for s in spec.image.pull_secrets)
    return refs


def _values(obj: JsonDict | None) -> dict[str, bytes] | None:
    """A Secret's or ConfigMap's data as bytes (``None`` when the object does not exist).

    Secret ``data`` is base64; ConfigMap ``data`` is text and its ``binaryData`` base64."""
    if obj is None:
        return None
    if obj.get("kind") == "ConfigMap":
        values = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
        values.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return values
    return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}


def resolve(spec: SandboxSpec, objects: dict[ObjectRef, JsonDict | None]) -> Resolution:
    """Looks every reference up in ``objects`` (fetched by the caller; ``None`` = absent)."""
    out = Resolution()

    def lookup(
        kind: Kind, name: str, key: str | None, where: str, optional: bool = False
    ) -> bytes | dict[str, bytes] | None:
        values = _values(objects.get(ObjectRef(kind, name)))
        reason = Reason.SECRET_NOT_FOUND if kind == "Secret" else Reason.CONFIG_MAP_NOT_FOUND
        if values is None:
            if not optional:
                out.problems.append(Problem(reason, f"{where}: {kind} {name!r} does not exist"))
            return None
        if key is None:
            return values
        if key not in values:
            if not optional:
                out.problems.append(Problem(reason, f"{where}: {kind} {name!r} has no key {key!r}"))
            return None
        return values[key]

    for index, var in enumerate(spec.env):
        where = f"spec.env[{index}].valueFrom"
        source = var.value_from
        if source is None:
            continue
        ref = source.secret_key_ref or source.config_map_key_ref
        assert ref is not None
        kind: Kind = "Secret" if source.secret_key_ref else "ConfigMap"
        value = lookup(kind, ref.name, ref.key, where, ref.optional)
        if isinstance(value, bytes):
            out.env[var.name] = value.decode(errors="replace")
    for index, patch in enumerate(spec.patches):
        if patch.copy_file and patch.copy_file.source.host_path is None:
            file_source = patch.copy_file.source
            ref = file_source.secret_key_ref or file_source.config_map_key_ref
            assert ref is not None
            kind = "Secret" if file_source.secret_key_ref else "ConfigMap"
            where = f"spec.patches[{index}].copyFile.source"
            value = lookup(kind, ref.name, ref.key, where)
            if isinstance(value, bytes):
                out.files[str(index)] = base64.b64encode(value).decode()
        if patch.copy_dir and patch.copy_dir.source.host_path is None:
            source_dir = patch.copy_dir.source
            obj = source_dir.secret or source_dir.config_map
            assert obj is not None
            kind = "Secret" if source_dir.secret else "ConfigMap"
            where = f"spec.patches[{index}].copyDir.source"
            values = lookup(kind, obj.name, None, where)
            if isinstance(values, dict):
                out.dirs[str(index)] = {
                    k: base64.b64encode(v).decode() for k, v in sorted(values.items())
                }
    for index, secret in enumerate(spec.secrets):
        ref = secret.secret_key_ref
        value = lookup("Secret", ref.name, ref.key, f"spec.secrets[{index}].secretKeyRef")
        if isinstance(value, bytes):
            out.secrets[secret.env] = value.decode(errors="replace")
    for index, pull in enumerate(spec.image.pull_secrets):
        where = f"spec.image.pullSecrets[{index}]"
        value = lookup("Secret", pull.name, ".dockerconfigjson", where)
        if isinstance(value, bytes):
            out.pull_auths.append({"dockerConfigJson": value.decode(errors="replace")})
    return out
