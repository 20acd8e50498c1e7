"""microsandbox create bodies ⇄ Sandbox objects; pure (no I/O), so every rule is unit-tested.

The contract used by :mod:`kubesandbox_gateway.app` (docs/gateway.md, "Translation"):

* :func:`sandbox_from_create` turns a create body (0.7 ``source``/``reference`` or 0.6
  ``image: {type, reference}``) into a :class:`Translation`, or raises :class:`InvalidConfig`
  naming the offending field of the *request body* (``mounts[1].size_mib``).
* :func:`sandbox_object` turns a Sandbox (the Kubernetes object as JSON) into the SDK's
  Sandbox JSON (``id, org_id, name, slug, status, ephemeral, created_at, ...``, with ``spec``
  rebuilt from the Sandbox spec so a reconnected handle finds env, workdir, user and shell).
* :func:`redacted` is the body safe to log: secret values replaced.

What each SDK option becomes, what is refused and why, and what the SDK accepts back were
observed against the real SDK; docs/msb-compat.md records it and the fixtures in
tests/unit/gateway/bodies/ are the captured bodies. Two rules shape this module:

* Nothing a tenant asked for is silently dropped. An option we cannot honour (a network rule
  on a destination group, a copy patch whose source is on the client's disk, an unknown key
  from a newer SDK) is refused with the field's path and the reason; only values equal to
  what the SDK sends when the option is not used are accepted without effect.
* The spec is built, then validated by :class:`~kubesandbox_api.SandboxSpec` (the same rules
  as the apiserver's schema). While building, every spec location remembers the body field it
  came from, so a model error on ``volumes[1].tmpfs.sizeMiB`` is reported as
  ``mounts[1].size_mib``: the user only ever wrote the latter.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from kubesandbox_api.quantity import MAX_MEMORY_MIB, MIN_MEMORY_MIB
from kubesandbox_api.spec import HOST_PATTERN, SCRIPT_NAME, SandboxSpec
from kubesandbox_gateway.msb_input import (
    InvalidConfig,
    array,
    boolean,
    integer,
    join,
    obj,
    opt_integer,
    opt_obj,
    opt_string,
    shown,
    string,
    strings,
)
from kubesandbox_gateway.msb_object import sandbox_object, sleeping
from kubesandbox_gateway.msb_wire import (
    LOG_LEVELS,
    PULL_POLICIES,
    VIOLATIONS,
    default_placeholder,
)

__all__ = [
    "InvalidConfig",
    "JsonDict",
    "Translation",
    "redacted",
    "sandbox_from_create",
    "sandbox_object",
    "sleeping",
]

JsonDict = dict[str, Any]

DOCKERCONFIG_KEY = ".dockerconfigjson"
"""Key of the companion Secret holding registry credentials (what the operator reads)."""

SECRET_KEY_PREFIX = "env."  # noqa: S105 - a key name, not a password
"""Companion Secret key of a network secret: ``env.<ENV_VAR>`` (cannot collide with
``.dockerconfigjson``, since it starts with ``env.``)."""

# Bounds on what the Sandbox model does not see (the rest is bounded by SandboxSpec itself;
# these only stop the translation from doing work proportional to a hostile list first).
MAX_NAME = 253
MAX_REFERENCE = 1024
MAX_PATH = 4096
MAX_ARG = 4096
MAX_ENV = 256
MAX_ENV_VALUE = 32 * 1024
MAX_LABELS = 64
MAX_MOUNTS = 32
MAX_PATCHES = 128
MAX_PATCH_BYTES = 256 * 1024
MAX_SCRIPTS = 64
MAX_SCRIPT_BYTES = 256 * 1024
MAX_SECRETS = 32
MAX_ALLOWED_HOSTS = 32
MAX_SECRET_VALUE = 64 * 1024
MAX_PLACEHOLDER = 128
MAX_SECRET_TOTAL = 512 * 1024
"""Companion Secret data in total (Kubernetes Secrets hold at most 1 MiB)."""
MAX_REGISTRY_FIELD = 4096
MAX_RULES = 64
MAX_SECONDS = 31_536_000

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_SCRIPT_NAME = re.compile(SCRIPT_NAME.strip("^$"))
_HOST = re.compile(HOST_PATTERN.strip("^$"))
_RESERVED_LABEL_DOMAIN = "kubesandbox.dev"

JsonPath = tuple[str | int, ...]


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
    snapshot: str | None = None
    """The SandboxSnapshot the sandbox starts from (``Sandbox.restore``), which the caller
    must be allowed to read."""

    def __repr__(self) -> str:  # a Translation must never print secret values into a log
        return (
            f"Translation(name={self.name!r}, spec={self.spec!r}, labels={self.labels!r}, "
            f"annotations={self.annotations!r}, secret_data=<{len(self.secret_data)} keys>)"
        )


# --- the create body's shape ------------------------------------------------------------------

_TOP = frozenset(
    {
        "source",
        "disk_snapshot_ref",
        "reference",
        "image",
        "name",
        "runtime",
        "env",
        "labels",
        "rlimits",
        "mounts",
        "network",
        "init",
        "security_profile",
        "lifecycle",
        "resources",
        "patches",
        "pull_policy",
        "registry",
    }
)
_RUNTIME = frozenset({"workdir", "shell", "scripts", "entrypoint", "cmd", "user", "log_level"})
_RESOURCES = frozenset({"vcpus", "memory_mib", "disk_size_mib"})
_LIFECYCLE = frozenset({"ephemeral", "max_duration_secs", "idle_timeout_secs"})
_MOUNT_OPTIONS = frozenset({"readonly", "noexec", "nosuid", "nodev"})
_NETWORK = frozenset({"enabled", "strict", "policy", "secrets"})
_POLICY = frozenset({"default_egress", "default_ingress", "rules"})
_RULE = frozenset({"direction", "destination", "protocols", "ports", "action"})
_SECRETS = frozenset({"entries", "violation_action", "on_violation"})
_SUBSTITUTION = frozenset({"headers", "header_fields", "query", "body"})
_INJECTION = frozenset({"headers", "basic_auth", "query_params", "body"})
_SECRET_ENTRY = frozenset(
    {
        "env_var",
        "value",
        "placeholder",
        "allowed_hosts",
        "substitution",
        "injection",
        "passthrough_hosts",
        "require_tls_identity",
        "violation_action",
    }
)


class _Spec:
    """The spec being built, and for each spec location the body field it came from."""

    def __init__(self) -> None:
        self.data: JsonDict = {}
        self.origin: dict[JsonPath, str] = {}

    def came_from(self, where: JsonPath, body_field: str) -> None:
        self.origin[where] = body_field

    def body_field(self, loc: JsonPath) -> str:
        """The body field behind a model error's location: its longest recorded prefix."""
        for end in range(len(loc), 0, -1):
            found = self.origin.get(loc[:end])
            if found is not None:
                return found
        return "spec." + ".".join(str(part) for part in loc) if loc else ""


@dataclass
class _Secrets:
    """Companion Secret data, bounded in total."""

    data: dict[str, str] = field(default_factory=dict)
    total: int = 0

    def add(self, key: str, value: str, body_field: str) -> None:
        self.total += len(key) + len(value.encode())
        if self.total > MAX_SECRET_TOTAL:
            raise InvalidConfig(
                body_field,
                f"secret values and registry credentials exceed {MAX_SECRET_TOTAL} bytes in "
                "total (they are stored in one Kubernetes Secret)",
            )
        self.data[key] = value


def sandbox_from_create(body: Mapping[str, Any], *, secret_name: str) -> Translation:
    """A microsandbox create body (0.7 or 0.6 shape) → the Sandbox to create."""
    top = obj(body, "", _TOP)
    spec = _Spec()
    secrets = _Secrets()

    name = _name(top.get("name"))
    snapshot = _snapshot_ref(top)
    image: JsonDict
    reference = ""
    if snapshot is not None:
        image = {"snapshot": {"name": snapshot}}
        spec.came_from(("image", "snapshot"), "disk_snapshot_ref")
        if array(top.get("patches"), "patches", MAX_PATCHES):
            raise InvalidConfig(
                "patches",
                "patches cannot be combined with a snapshot: its writable layer is the "
                "snapshot's, used as captured",
            )
    else:
        reference, reference_field = _reference(top)
        image = {"oci": reference}
        spec.came_from(("image", "oci"), reference_field)
    pull = _pull_policy(top.get("pull_policy"))
    if pull is not None and snapshot is None:  # a snapshot's image is pinned and on its node
        image["pullPolicy"] = pull
        spec.came_from(("image", "pullPolicy"), "pull_policy")
    if snapshot is not None and top.get("registry") is not None:
        raise InvalidConfig("registry", "a snapshot's image is already on its node")
    if snapshot is None and _registry(top.get("registry"), reference, secrets):
        image["pullSecrets"] = [{"name": secret_name}]
        spec.came_from(("image", "pullSecrets"), "registry")
    spec.data["image"] = image

    _resources(top.get("resources"), spec)
    _runtime(top.get("runtime"), spec)
    env_names = _env(top.get("env"), spec)
    labels = _labels(top.get("labels"))
    _rlimits(top.get("rlimits"))
    _mounts(top.get("mounts"), spec)
    _patches(top.get("patches"), spec)
    _network(top.get("network"), spec, secrets, secret_name, env_names)
    _init(top.get("init"), spec)
    _security_profile(top.get("security_profile"))
    _lifecycle(top.get("lifecycle"), spec)

    try:
        SandboxSpec.model_validate(spec.data)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        loc = tuple(part for part in first["loc"] if isinstance(part, str | int))
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise InvalidConfig(spec.body_field(loc), f"{first['msg']}{more}") from None

    return Translation(
        name=name,
        spec=spec.data,
        labels=labels,
        annotations={},
        secret_data=secrets.data,
        snapshot=snapshot,
    )


def _name(value: object) -> str:
    name = string(value, "name", MAX_NAME)
    if not _DNS_SUBDOMAIN.fullmatch(name):
        raise InvalidConfig(
            "name",
            f"{shown(name)!r} is not a valid Sandbox name: use lower-case letters, digits, '-' "
            "and '.', starting and ending with a letter or digit (a DNS-1123 subdomain, at "
            f"most {MAX_NAME} characters)",
        )
    return name


def _reference(top: Mapping[str, Any]) -> tuple[str, str]:
    """The OCI reference from either shape, and the body field it was read from."""
    if "image" in top and top["image"] is not None:
        if top.get("source") is not None or top.get("reference") is not None:
            raise InvalidConfig("image", "give either image (0.6) or source/reference (0.7)")
        image = obj(top["image"], "image", frozenset({"type", "reference"}))
        kind = image.get("type")
        if kind != "oci":
            raise InvalidConfig("image.type", _root_refusal(kind))
        return string(image.get("reference"), "image.reference", MAX_REFERENCE), "image.reference"
    source = top.get("source")
    if source != "oci":
        if source is None:
            raise InvalidConfig("source", "an OCI image is required (source: oci, reference)")
        raise InvalidConfig("source", _root_refusal(source))
    return string(top.get("reference"), "reference", MAX_REFERENCE), "reference"


def _snapshot_ref(top: Mapping[str, Any]) -> str | None:
    """``Sandbox.restore(snapshot, name=...)``: ``source: disk_snapshot`` with
    ``disk_snapshot_ref: {type: managed, id}``, the id being a SandboxSnapshot's name (what
    the snapshot routes report as its location). ``None`` for any other source."""
    if top.get("source") != "disk_snapshot":
        if top.get("disk_snapshot_ref") is not None:
            raise InvalidConfig("disk_snapshot_ref", "only with source: disk_snapshot")
        return None
    if top.get("reference") is not None or top.get("image") is not None:
        raise InvalidConfig("reference", "a sandbox from a snapshot has the snapshot's image")
    ref = obj(top.get("disk_snapshot_ref"), "disk_snapshot_ref", frozenset({"type", "id"}))
    kind = ref.get("type")
    if kind != "managed":
        raise InvalidConfig(
            "disk_snapshot_ref.type",
            f"{shown(str(kind))!r}: only managed snapshots (SandboxSnapshot objects of this "
            "namespace) are served here; host-volume paths are not",
        )
    name = string(ref.get("id"), "disk_snapshot_ref.id", MAX_NAME)
    if not _DNS_SUBDOMAIN.fullmatch(name):
        raise InvalidConfig(
            "disk_snapshot_ref.id", f"{shown(name)!r} is not a SandboxSnapshot name"
        )
    return name


def _root_refusal(kind: object) -> str:
    return (
        f"root filesystem source {shown(str(kind))!r} is not supported through the "
        "microsandbox API: only OCI images (disk-image and host-directory roots need node "
        "paths, which only a cluster administrator may grant, with a Sandbox manifest)"
    )


def _pull_policy(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in PULL_POLICIES:
        raise InvalidConfig("pull_policy", "must be one of " + ", ".join(PULL_POLICIES))
    return PULL_POLICIES[value]


def _registry(value: object, reference: str, secrets: _Secrets) -> bool:
    """Inline registry credentials → a ``.dockerconfigjson`` for the reference's registry."""
    if value is None:
        return False
    registry = obj(value, "registry", frozenset({"mode", "username", "password"}))
    mode = registry.get("mode")
    if mode == "anonymous":
        return False
    if mode != "inline":
        raise InvalidConfig(
            "registry.mode",
            "only inline credentials (RegistryAuth.basic) or anonymous pulls are supported; "
            "keyrings and environment variables live on the client's machine",
        )
    username = string(registry.get("username"), "registry.username", MAX_REGISTRY_FIELD)
    password = string(registry.get("password"), "registry.password", MAX_REGISTRY_FIELD)
    if ":" in username:
        raise InvalidConfig("registry.username", "must not contain ':'")
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    config = {
        "auths": {
            _registry_host(reference): {"username": username, "password": password, "auth": token}
        }
    }
    secrets.add(DOCKERCONFIG_KEY, json.dumps(config, sort_keys=True), "registry")
    return True


def _registry_host(reference: str) -> str:
    """The registry of an OCI reference, as Docker reads it (``docker.io`` by default)."""
    first, slash, _ = reference.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first.lower()
    return "docker.io"


def _resources(value: object, spec: _Spec) -> None:
    resources = opt_obj(value, "resources", _RESOURCES)
    if resources.get("vcpus") is not None:
        spec.data["cpus"] = integer(resources["vcpus"], "resources.vcpus", 1, 64)
        spec.came_from(("cpus",), "resources.vcpus")
    if resources.get("memory_mib") is not None:
        memory = integer(resources["memory_mib"], "resources.memory_mib", 1, 2**40)
        if not MIN_MEMORY_MIB <= memory <= MAX_MEMORY_MIB:
            raise InvalidConfig(
                "resources.memory_mib",
                f"must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB, not {memory}",
            )
        spec.data["memory"] = memory
        spec.came_from(("memory",), "resources.memory_mib")
    if resources.get("disk_size_mib") is not None:
        size = integer(resources["disk_size_mib"], "resources.disk_size_mib", 64, 1024 * 1024)
        spec.data["rootfsSizeMiB"] = size
        spec.came_from(("rootfsSizeMiB",), "resources.disk_size_mib")


def _runtime(value: object, spec: _Spec) -> None:
    runtime = opt_obj(value, "runtime", _RUNTIME)
    for key, target in (("workdir", "workdir"), ("shell", "shell")):
        path = opt_string(runtime.get(key), f"runtime.{key}", MAX_PATH)
        if path is not None:
            spec.data[target] = path
            spec.came_from((target,), f"runtime.{key}")
    user = opt_string(runtime.get("user"), "runtime.user", 256)
    if user is not None:
        spec.data["user"] = user
        spec.came_from(("user",), "runtime.user")
    for key, target, limit in (("entrypoint", "entrypoint", 64), ("cmd", "command", 256)):
        if runtime.get(key) is not None:
            spec.data[target] = strings(runtime[key], f"runtime.{key}", limit, MAX_ARG)
            spec.came_from((target,), f"runtime.{key}")
    level = runtime.get("log_level")
    if level is not None:
        if not isinstance(level, str) or level not in LOG_LEVELS:
            raise InvalidConfig("runtime.log_level", "must be one of " + ", ".join(LOG_LEVELS))
        spec.data["logLevel"] = LOG_LEVELS[level]
        spec.came_from(("logLevel",), "runtime.log_level")
    scripts = runtime.get("scripts") or {}
    if not isinstance(scripts, Mapping):
        raise InvalidConfig("runtime.scripts", "must be an object of name → content")
    if len(scripts) > MAX_SCRIPTS:
        raise InvalidConfig("runtime.scripts", f"at most {MAX_SCRIPTS} scripts are allowed")
    out: dict[str, str] = {}
    for script, content in scripts.items():
        if not isinstance(script, str):
            raise InvalidConfig("runtime.scripts", "script names must be strings")
        where = f"runtime.scripts.{shown(script)}"
        if len(script) > 255 or not _SCRIPT_NAME.fullmatch(script):
            raise InvalidConfig(
                where,
                "script names must be plain file names (letters, digits, '.', '_', '-'; no "
                "'/'; not starting with '.' or '-'; at most 255 characters)",
            )
        out[script] = string(content, where, MAX_SCRIPT_BYTES, empty=True)
        spec.came_from(("scripts", script), where)
    if out:
        spec.data["scripts"] = out


def _env(value: object, spec: _Spec) -> dict[str, str]:
    """``env[{key, value}]`` → ``spec.env``; returns name → body field, for collision checks."""
    seen: dict[str, str] = {}
    out: list[JsonDict] = []
    for i, item in enumerate(array(value, "env", MAX_ENV)):
        where = join("env", i)
        entry = obj(item, where, frozenset({"key", "value"}))
        name = _env_name(entry.get("key"), f"{where}.key")
        if name in seen:
            raise InvalidConfig(f"{where}.key", f"{name!r} is already set by {seen[name]}")
        seen[name] = f"{where}.key"
        text = string(entry.get("value"), f"{where}.value", MAX_ENV_VALUE, empty=True)
        spec.came_from(("env", len(out), "name"), f"{where}.key")
        spec.came_from(("env", len(out)), where)
        out.append({"name": name, "value": text})
    if out:
        spec.data["env"] = out
    return seen


def _env_name(value: object, where: str) -> str:
    name = string(value, where, 200)
    if not _ENV_NAME.fullmatch(name):
        raise InvalidConfig(
            where,
            f"{shown(name)!r} is not a valid variable name (letters, digits, '_', '-', '.'; "
            "not starting with a digit)",
        )
    return name


def _labels(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidConfig("labels", "must be an object of strings")
    if len(value) > MAX_LABELS:
        raise InvalidConfig("labels", f"has {len(value)} labels; at most {MAX_LABELS} allowed")
    labels: dict[str, str] = {}
    for key, text in value.items():
        if not isinstance(key, str):
            raise InvalidConfig("labels", "label keys must be strings")
        where = f"labels.{shown(key)}"
        _label_key(key, where)
        text = string(text, where, 63, empty=True)
        if text and not _LABEL_NAME.fullmatch(text):
            raise InvalidConfig(
                where,
                "label values are at most 63 characters: letters, digits, '-', '_', '.', "
                "starting and ending with a letter or digit",
            )
        labels[key] = text
    return labels


def _label_key(key: str, where: str) -> None:
    prefix, slash, name = key.rpartition("/")
    if not slash:
        prefix, name = "", key
    if slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        raise InvalidConfig(where, "the label key's prefix must be a DNS subdomain")
    if len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        raise InvalidConfig(
            where,
            "label keys are an optional DNS-subdomain prefix and '/', then at most 63 "
            "characters: letters, digits, '-', '_', '.', starting and ending with a letter or "
            "digit",
        )
    if prefix == _RESERVED_LABEL_DOMAIN or prefix.endswith("." + _RESERVED_LABEL_DOMAIN):
        raise InvalidConfig(where, f"the {_RESERVED_LABEL_DOMAIN} prefix is reserved")


def _rlimits(value: object) -> None:
    if array(value, "rlimits", MAX_RULES):
        raise InvalidConfig(
            "rlimits",
            "sandbox-wide rlimits are not supported; pass rlimits to each exec instead",
        )


# --- mounts -----------------------------------------------------------------------------------


def _mounts(value: object, spec: _Spec) -> None:
    out: list[JsonDict] = []
    guests: dict[str, str] = {}
    for i, item in enumerate(array(value, "mounts", MAX_MOUNTS)):
        where = join("mounts", i)
        if not isinstance(item, Mapping):
            raise InvalidConfig(where, "must be an object")
        kind = item.get("type")
        if kind == "tmpfs":
            volume = _tmpfs(item, where)
        elif kind == "named":
            volume = _named(item, where)
        elif kind == "bind":
            volume = _bind(item, where)
        else:
            raise InvalidConfig(
                f"{where}.type",
                "must be tmpfs, named or bind (sandbox-owned and disk-image volumes are not "
                "supported)",
            )
        guest = string(item.get("guest"), f"{where}.guest", MAX_PATH)
        if guest in guests:
            raise InvalidConfig(
                f"{where}.guest", f"{guest!r} is already mounted by {guests[guest]}"
            )
        guests[guest] = where
        index = len(out)
        spec.came_from(("volumes", index), where)
        spec.came_from(("volumes", index, "mountPath"), f"{where}.guest")
        for part, body_key in (
            ("tmpfs", "size_mib"),
            ("named", "name"),
            ("bind", "host"),
        ):
            spec.came_from(("volumes", index, part), where)
            spec.came_from(("volumes", index, part, _SPEC_VOLUME_KEY[part]), f"{where}.{body_key}")
        out.append({"mountPath": guest, **volume})
    if out:
        spec.data["volumes"] = out


_SPEC_VOLUME_KEY = {"tmpfs": "sizeMiB", "named": "name", "bind": "path"}


def _mount_options(item: Mapping[str, Any], where: str) -> bool:
    """The ``options`` of a mount; returns ``readonly``. noexec/nosuid/nodev are refused:
    our volumes cannot carry those mount flags yet."""
    options = opt_obj(item.get("options"), f"{where}.options", _MOUNT_OPTIONS)
    for flag in ("noexec", "nosuid", "nodev"):
        if boolean(options.get(flag), f"{where}.options.{flag}", default=False):
            raise InvalidConfig(
                f"{where}.options.{flag}", "mount flags are not supported on Sandbox volumes"
            )
    return boolean(options.get("readonly"), f"{where}.options.readonly", default=False)


def _virtiofs_defaults(item: Mapping[str, Any], where: str) -> None:
    """Per-mount virtiofs policies: only microsandbox's defaults, which is what we do."""
    for key, default in (("stat_virtualization", "strict"), ("host_permissions", "private")):
        if item.get(key) not in (None, default):
            raise InvalidConfig(
                f"{where}.{key}", f"only {default!r} is supported (the node agent's behaviour)"
            )
    if item.get("override_uid") is not None or item.get("override_gid") is not None:
        raise InvalidConfig(f"{where}.override_uid", "mount owner overrides are not supported")
    if item.get("quota_mib") is not None:
        raise InvalidConfig(f"{where}.quota_mib", "volume quotas are not supported")


def _tmpfs(item: Mapping[str, Any], where: str) -> JsonDict:
    obj(item, where, frozenset({"type", "guest", "size_mib", "options"}))
    if _mount_options(item, where):
        raise InvalidConfig(f"{where}.options.readonly", "a read-only tmpfs is always empty")
    size = opt_integer(item.get("size_mib"), f"{where}.size_mib", 1, MAX_MEMORY_MIB)
    return {"tmpfs": {} if size is None else {"sizeMiB": size}}


_VIRTIOFS = frozenset(
    {
        "type",
        "guest",
        "options",
        "stat_virtualization",
        "host_permissions",
        "quota_mib",
        "override_uid",
        "override_gid",
    }
)


def _named(item: Mapping[str, Any], where: str) -> JsonDict:
    obj(item, where, _VIRTIOFS | {"name", "size_mib"})
    _virtiofs_defaults(item, where)
    if item.get("size_mib") is not None:
        raise InvalidConfig(f"{where}.size_mib", "named volumes have no fixed size here")
    read_only = _mount_options(item, where)
    name = string(item.get("name"), f"{where}.name", 63)
    return {"named": {"name": name, "readOnly": read_only}}


def _bind(item: Mapping[str, Any], where: str) -> JsonDict:
    obj(item, where, _VIRTIOFS | {"host"})
    _virtiofs_defaults(item, where)
    read_only = _mount_options(item, where)
    host = string(item.get("host"), f"{where}.host", MAX_PATH)
    return {"bind": {"path": host, "readOnly": read_only}}


# --- patches ----------------------------------------------------------------------------------

_PATCH_KEYS = {
    "text": frozenset({"type", "path", "content", "mode", "replace"}),
    "file": frozenset({"type", "path", "content", "mode", "replace"}),
    "mkdir": frozenset({"type", "path", "mode"}),
    "append": frozenset({"type", "path", "content"}),
    "symlink": frozenset({"type", "target", "link", "replace"}),
    "remove": frozenset({"type", "path"}),
}


def _patches(value: object, spec: _Spec) -> None:
    out: list[JsonDict] = []
    for i, item in enumerate(array(value, "patches", MAX_PATCHES)):
        where = join("patches", i)
        if not isinstance(item, Mapping):
            raise InvalidConfig(where, "must be an object")
        kind = item.get("type")
        if kind in ("copy_file", "copy_dir"):
            raise InvalidConfig(
                f"{where}.type",
                f"{kind} copies from a path on the client's machine, which the cluster cannot "
                "read; use a text or file patch, or a Sandbox manifest with a ConfigMap/Secret "
                "source",
            )
        if not isinstance(kind, str) or kind not in _PATCH_KEYS:
            raise InvalidConfig(f"{where}.type", "must be one of " + ", ".join(_PATCH_KEYS))
        patch = obj(item, where, _PATCH_KEYS[kind])
        body = _patch(kind, patch, where)
        index = len(out)
        spec.came_from(("patches", index), where)
        spec.came_from(("patches", index, kind), where)
        for spec_key, body_key in _PATCH_FIELDS[kind].items():
            spec.came_from(("patches", index, kind, spec_key), f"{where}.{body_key}")
        out.append({kind: body})
    if out:
        spec.data["patches"] = out


_PATCH_FIELDS: dict[str, dict[str, str]] = {
    "text": {"path": "path", "content": "content", "mode": "mode", "replace": "replace"},
    "file": {"path": "path", "data": "content", "mode": "mode", "replace": "replace"},
    "mkdir": {"path": "path", "mode": "mode"},
    "append": {"path": "path", "content": "content"},
    "symlink": {"path": "link", "target": "target", "replace": "replace"},
    "remove": {"path": "path"},
}
"""Spec key of each patch operation → the body key it came from."""


def _patch(kind: str, patch: Mapping[str, Any], where: str) -> JsonDict:
    out: JsonDict = {}
    if kind == "symlink":
        out["path"] = string(patch.get("link"), f"{where}.link", MAX_PATH)
        out["target"] = string(patch.get("target"), f"{where}.target", MAX_PATH)
    else:
        out["path"] = string(patch.get("path"), f"{where}.path", MAX_PATH)
    if kind in ("text", "append"):
        out["content"] = string(
            patch.get("content"), f"{where}.content", MAX_PATCH_BYTES, empty=True
        )
    if kind == "file":
        out["data"] = _file_bytes(patch.get("content"), f"{where}.content")
    if "mode" in _PATCH_KEYS[kind] and patch.get("mode") is not None:
        out["mode"] = integer(patch["mode"], f"{where}.mode", 0, 0o7777)
    if "replace" in _PATCH_KEYS[kind]:
        out["replace"] = boolean(patch.get("replace"), f"{where}.replace", default=False)
    return out


def _file_bytes(value: object, where: str) -> str:
    """The SDK sends bytes as a JSON array of numbers; the spec wants base64."""
    items = array(value, where, MAX_PATCH_BYTES)
    for i, byte in enumerate(items):
        if isinstance(byte, bool) or not isinstance(byte, int) or not 0 <= byte <= 255:
            raise InvalidConfig(join(where, i), "must be a byte value (0 to 255)")
    return base64.b64encode(bytes(items)).decode()


# --- network and secrets ----------------------------------------------------------------------

_RULE_DESTINATION = frozenset({"cidr", "domain", "domain_suffix", "group"})
_PROTOCOLS = {"tcp": "TCP", "udp": "UDP", "icmpv4": "ICMP"}
MAX_SPEC_RULES = 64
"""``spec.network.rules`` holds at most this many (after one rule per protocol)."""


def _network(
    value: object,
    spec: _Spec,
    secrets: _Secrets,
    secret_name: str,
    env_names: dict[str, str],
) -> None:
    network = opt_obj(value, "network", _NETWORK)
    enabled = boolean(network.get("enabled"), "network.enabled", default=True)
    # ``strict`` makes hostname-based rules require an inspectable authority (SNI or Host);
    # our domain rules match the addresses the sandbox's resolver returned for the name, which
    # is at least as strict, so either value is accepted (0.6 sends false, 0.7 true).
    boolean(network.get("strict"), "network.strict", default=True)
    policy, rules = _policy(network.get("policy")) if enabled else ("None", [])
    if policy is not None:
        spec.data["network"] = {"policy": policy}
        spec.came_from(("network",), "network.policy" if enabled else "network.enabled")
    if rules:
        spec.data.setdefault("network", {})["rules"] = [rule for rule, _ in rules]
        for k, (_, where) in enumerate(rules):
            spec.came_from(("network", "rules", k), where)
    block = opt_obj(network.get("secrets"), "network.secrets", _SECRETS)
    action = _network_violation(block)
    if action is not None:
        where, value = action
        spec.data.setdefault("network", {})["secretViolationAction"] = value
        spec.came_from(("network", "secretViolationAction"), where)
    entries = _secret_entries(block, secret_name, secrets, env_names, spec)
    if entries:
        spec.data["secrets"] = entries
        spec.came_from(("secrets",), "network.secrets.entries")


def _policy(value: object) -> tuple[str | None, list[tuple[JsonDict, str]]]:
    """A microsandbox policy → ``spec.network.policy`` and ``rules`` (each with the body
    field it came from), or refused.

    The SDK's DNS rule (UDP/TCP 53 to the host) is dropped: the sandbox's resolver always
    answers. ``allow group public`` as the last rule of a deny-by-default policy (the public
    profile) becomes ``PublicOnly``; otherwise ``default_egress`` allow/deny becomes ``All``/
    ``None``. Both ``default_ingress`` values are honoured as they are: nothing reaches the
    guest unasked (the SDK publishes no ports on this backend).
    """
    if value is None:
        return None, []
    policy = obj(value, "network.policy", _POLICY)
    egress = _one_of(policy.get("default_egress"), "network.policy.default_egress", "allow", "deny")
    _one_of(policy.get("default_ingress"), "network.policy.default_ingress", "allow", "deny")
    items = array(policy.get("rules"), "network.policy.rules", MAX_RULES)
    rules: list[tuple[JsonDict, str]] = []
    public = False
    for i, item in enumerate(items):
        where = join("network.policy.rules", i)
        rule = obj(item, where, _RULE)
        if public:
            raise InvalidConfig(
                where,
                "no rule may follow 'allow group public': it becomes the PublicOnly policy, "
                "which is evaluated after every rule",
            )
        if rule.get("direction", "egress") != "egress":
            raise InvalidConfig(
                f"{where}.direction",
                "only egress rules are supported: nothing reaches the guest unasked",
            )
        action = _one_of(rule.get("action"), f"{where}.action", "allow", "deny")
        protocols = strings(rule.get("protocols"), f"{where}.protocols", 4, 16)
        ports = array(rule.get("ports"), f"{where}.ports", 16)
        destination = rule.get("destination")
        if isinstance(destination, Mapping) and set(destination) == {"group"}:
            group = destination.get("group")
            if group == "host" and action == "allow" and _is_dns(protocols, ports):
                continue  # DNS to the sandbox's resolver: always allowed
            if group == "public" and action == "allow" and egress == "deny":
                if protocols or ports:
                    raise InvalidConfig(where, "'allow group public' takes no protocol or port")
                public = True
                continue
            raise InvalidConfig(
                f"{where}.destination.group",
                "destination groups are not supported, except the public profile's 'allow "
                "public' (PublicOnly) and its DNS rule; name the addresses with a cidr rule",
            )
        target = _rule_destination(destination, f"{where}.destination")
        ranges = [_port_range(port, join(f"{where}.ports", j)) for j, port in enumerate(ports)]
        for j, protocol in enumerate(protocols or [None]):
            out: JsonDict = {"action": action.capitalize(), "destination": target}
            if protocol is not None:
                if protocol not in _PROTOCOLS:
                    raise InvalidConfig(
                        join(f"{where}.protocols", j),
                        "must be tcp, udp or icmpv4 (the sandbox network is IPv4 only)",
                    )
                out["protocol"] = _PROTOCOLS[protocol]
            if ranges:
                out["ports"] = ranges
            rules.append((out, where))
    if len(rules) > MAX_SPEC_RULES:
        raise InvalidConfig(
            "network.policy.rules",
            f"become {len(rules)} rules (one per protocol); at most {MAX_SPEC_RULES} allowed",
        )
    if public:
        return "PublicOnly", rules
    return ("All" if egress == "allow" else "None"), rules


def _one_of(value: object, where: str, *choices: str) -> str:
    if value not in choices:
        raise InvalidConfig(where, f"must be one of {', '.join(choices)}")
    assert isinstance(value, str)
    return value


def _is_dns(protocols: list[str], ports: list[Any]) -> bool:
    return (
        bool(protocols) and set(protocols) <= {"udp", "tcp"} and ports == [{"start": 53, "end": 53}]
    )


def _rule_destination(value: object, where: str) -> JsonDict:
    """``"any"``, ``{cidr}``, ``{domain}``, ``{domain_suffix}`` → a rule destination."""
    if value == "any" or value is None:
        return {"cidr": "0.0.0.0/0"}
    destination = obj(value, where, _RULE_DESTINATION)
    if len(destination) != 1:
        raise InvalidConfig(where, "must have exactly one of cidr, domain, domain_suffix")
    ((kind, raw),) = destination.items()
    text = string(raw, f"{where}.{kind}", 253)
    if kind == "cidr":
        if ":" in text:
            raise InvalidConfig(
                f"{where}.cidr", "IPv6 is not supported: the sandbox network is IPv4 only"
            )
        return {"cidr": text}
    name = text.lower().strip(".")
    return {"domain": name} if kind == "domain" else {"domainSuffix": name}


def _port_range(value: object, where: str) -> JsonDict:
    port = obj(value, where, frozenset({"start", "end"}))
    start = integer(port.get("start"), f"{where}.start", 1, 65535)
    end = integer(port.get("end", start), f"{where}.end", start, 65535)
    return {"port": start} if end == start else {"port": start, "endPort": end}


def _violation(value: object, where: str) -> str:
    """``{"type": "block" | "block_and_log" | "block_and_terminate"}`` → the spec's action."""
    kind = obj(value, where, frozenset({"type"})).get("type")
    if not isinstance(kind, str) or kind not in VIOLATIONS:
        raise InvalidConfig(f"{where}.type", f"must be one of {', '.join(VIOLATIONS)}")
    return VIOLATIONS[kind]


def _network_violation(block: Mapping[str, Any]) -> tuple[str, str] | None:
    """``network.secrets.violation_action`` (0.6: ``on_violation``) → the body field and
    ``spec.network.secretViolationAction``; None when the SDK's default (BlockAndLog)."""
    found: list[tuple[str, str]] = []
    for key in ("violation_action", "on_violation"):
        if block.get(key) is not None:
            where = f"network.secrets.{key}"
            found.append((where, _violation(block[key], where)))
    if len(found) == 2 and found[0][1] != found[1][1]:
        raise InvalidConfig(
            "network.secrets.on_violation", "differs from violation_action; send one of them"
        )
    if not found or found[0][1] == VIOLATIONS["block_and_log"]:
        return None
    return found[0]


def _secret_entries(
    block: Mapping[str, Any],
    secret_name: str,
    secrets: _Secrets,
    env_names: dict[str, str],
    spec: _Spec,
) -> list[JsonDict]:
    out: list[JsonDict] = []
    seen: dict[str, str] = {}
    placeholders: list[tuple[str, str]] = []
    values: list[str] = []
    for i, item in enumerate(array(block.get("entries"), "network.secrets.entries", MAX_SECRETS)):
        where = join("network.secrets.entries", i)
        entry = obj(item, where, _SECRET_ENTRY)
        env = _env_name(entry.get("env_var"), f"{where}.env_var")
        if env in seen or env in env_names:
            other = seen.get(env) or env_names[env]
            raise InvalidConfig(f"{where}.env_var", f"{env!r} is already set by {other}")
        seen[env] = f"{where}.env_var"
        value_text = string(entry.get("value"), f"{where}.value", MAX_SECRET_VALUE)
        hosts = _allowed_hosts(entry.get("allowed_hosts"), f"{where}.allowed_hosts")
        key = SECRET_KEY_PREFIX + env
        secrets.add(key, value_text, f"{where}.value")
        index = len(out)
        at: JsonPath = ("secrets", index)
        spec.came_from(at, where)
        spec.came_from((*at, "env"), f"{where}.env_var")
        spec.came_from((*at, "allowHosts"), f"{where}.allowed_hosts")
        for h in range(len(hosts)):
            spec.came_from((*at, "allowHosts", h), f"{where}.allowed_hosts[{h}]")
        translated: JsonDict = {
            "env": env,
            "secretKeyRef": {"name": secret_name, "key": key},
            "allowHosts": hosts,
        }
        translated.update(_secret_options(entry, env, where, at, spec))
        out.append(translated)
        placeholders.append((where, translated.get("placeholder") or default_placeholder(env)))
        values.append(value_text)
    for where, placeholder in placeholders:
        # the guest's environment holds the placeholders: none may reveal a value
        if any(placeholder in value or value in placeholder for value in values):
            raise InvalidConfig(
                f"{where}.placeholder", "must not contain a secret value nor be part of one"
            )
    return out


def _secret_options(
    entry: Mapping[str, Any], env: str, where: str, at: JsonPath, spec: _Spec
) -> JsonDict:
    """The entry's options → ``spec.secrets[]`` fields; only those that differ from the
    defaults (which are the SDK's too) are written."""
    out: JsonDict = {}
    placeholder = opt_string(entry.get("placeholder"), f"{where}.placeholder", MAX_PLACEHOLDER)
    if placeholder is not None and placeholder != default_placeholder(env):
        out["placeholder"] = placeholder
        spec.came_from((*at, "placeholder"), f"{where}.placeholder")
    substitution = _substitution(entry, where, at, spec)
    if substitution:
        out["substitution"] = substitution
    passthrough = entry.get("passthrough_hosts")
    if passthrough is not None:
        hosts = _allowed_hosts(passthrough, f"{where}.passthrough_hosts", required=False)
        if hosts:
            out["allowPlaceholderFor"] = hosts
            spec.came_from((*at, "allowPlaceholderFor"), f"{where}.passthrough_hosts")
            for h in range(len(hosts)):
                spec.came_from((*at, "allowPlaceholderFor", h), f"{where}.passthrough_hosts[{h}]")
    tls = f"{where}.require_tls_identity"
    if not boolean(entry.get("require_tls_identity"), tls, default=True):
        out["requireTLS"] = False
        spec.came_from((*at, "requireTLS"), tls)
    if entry.get("violation_action") is not None:
        out["violationAction"] = _violation(entry["violation_action"], f"{where}.violation_action")
        spec.came_from((*at, "violationAction"), f"{where}.violation_action")
    return out


def _substitution(entry: Mapping[str, Any], where: str, at: JsonPath, spec: _Spec) -> JsonDict:
    """0.7 ``substitution {headers, header_fields?, query, body}`` or 0.6 ``injection
    {headers, basic_auth, query_params, body}`` → ``spec.secrets[].substitution`` (non-default
    members only)."""
    if entry.get("substitution") is not None and entry.get("injection") is not None:
        raise InvalidConfig(f"{where}.injection", "send substitution or injection, not both")
    fields: list[str] = []
    if entry.get("injection") is not None:
        base = f"{where}.injection"
        given = obj(entry["injection"], base, _INJECTION)
        headers = boolean(given.get("headers"), f"{base}.headers", default=True)
        basic = boolean(given.get("basic_auth"), f"{base}.basic_auth", default=True)
        if basic != headers:
            raise InvalidConfig(
                f"{base}.basic_auth",
                "must equal headers: header substitution always includes the credentials of "
                "Basic authorization (decoded, substituted, encoded again), and only with it",
            )
        query = boolean(given.get("query_params"), f"{base}.query_params", default=False)
        body = boolean(given.get("body"), f"{base}.body", default=False)
        names = {"headers": "headers", "query": "query_params", "body": "body"}
    else:
        base = f"{where}.substitution"
        given = opt_obj(entry.get("substitution"), base, _SUBSTITUTION)
        headers = boolean(given.get("headers"), f"{base}.headers", default=True)
        fields = strings(given.get("header_fields"), f"{base}.header_fields", 16, 64)
        query = boolean(given.get("query"), f"{base}.query", default=False)
        body = boolean(given.get("body"), f"{base}.body", default=False)
        names = {"headers": "headers", "headerFields": "header_fields", "query": "query",
                 "body": "body"}  # fmt: skip
    out: JsonDict = {}
    if not headers:
        out["headers"] = False
    if fields:
        out["headerFields"] = fields
        for k in range(len(fields)):
            spec.came_from((*at, "substitution", "headerFields", k), f"{base}.header_fields[{k}]")
    if query:
        out["query"] = True
    if body:
        out["body"] = True
    if out:
        spec.came_from((*at, "substitution"), base)
        for member in out:
            spec.came_from((*at, "substitution", member), f"{base}.{names[member]}")
    return out


def _allowed_hosts(value: object, where: str, *, required: bool = True) -> list[str]:
    """``[{type: exact | wildcard, value}]`` → host patterns (a name, ``*.suffix``, or an IP
    literal as ``exact``; the model checks IPv6 literals in full)."""
    hosts: list[str] = []
    for i, item in enumerate(array(value, where, MAX_ALLOWED_HOSTS)):
        at = join(where, i)
        host = obj(item, at, frozenset({"type", "value"}))
        kind = host.get("type")
        text = string(host.get("value"), f"{at}.value", 253)
        if kind not in ("exact", "wildcard"):
            raise InvalidConfig(f"{at}.type", "must be exact or wildcard")
        if (kind == "wildcard") != text.startswith("*.") or not _HOST.fullmatch(text):
            raise InvalidConfig(
                f"{at}.value",
                f"{shown(text)!r} is not a host name ('api.example.com'), an IP address or, "
                "for wildcard, '*.example.com' (lower case)",
            )
        hosts.append(text)
    if required and not hosts:
        raise InvalidConfig(where, "at least one allowed host is required")
    return hosts


# --- init, security, lifecycle ----------------------------------------------------------------


def _init(value: object, spec: _Spec) -> None:
    if value is None:
        return
    init = obj(value, "init", frozenset({"cmd", "args", "env"}))
    cmd = string(init.get("cmd"), "init.cmd", MAX_PATH)
    if array(init.get("args"), "init.args", 64):
        raise InvalidConfig("init.args", "init arguments are not supported")
    if array(init.get("env"), "init.env", 64):
        raise InvalidConfig("init.env", "init environment variables are not supported")
    if cmd != "auto" and not cmd.startswith("/"):
        raise InvalidConfig("init.cmd", "must be 'auto' or an absolute path")
    spec.data["init"] = cmd
    spec.came_from(("init",), "init.cmd")


def _security_profile(value: object) -> None:
    if value not in (None, "default"):
        raise InvalidConfig(
            "security_profile",
            "only 'default' is supported (every sandbox is a microVM under the cluster's "
            "policies; there is no separate restricted profile)",
        )


def _lifecycle(value: object, spec: _Spec) -> None:
    """``spec.lifecycle``: the two policies and ``ephemeral`` (delete once stopped)."""
    lifecycle = opt_obj(value, "lifecycle", _LIFECYCLE)
    out: JsonDict = {}
    for key, target in (
        ("max_duration_secs", "maxDurationSeconds"),
        ("idle_timeout_secs", "idleTimeoutSeconds"),
    ):
        seconds = opt_integer(lifecycle.get(key), f"lifecycle.{key}", 1, MAX_SECONDS)
        if seconds is not None:
            out[target] = seconds
            spec.came_from(("lifecycle", target), f"lifecycle.{key}")
    if boolean(lifecycle.get("ephemeral"), "lifecycle.ephemeral", default=False):
        out["ephemeral"] = True
        spec.came_from(("lifecycle", "ephemeral"), "lifecycle.ephemeral")
    if out:
        spec.data["lifecycle"] = out


# --- logging ----------------------------------------------------------------------------------

REDACTED = "<redacted>"
_CREDENTIAL_KEYS = frozenset(
    {"password", "passwd", "token", "identitytoken", "auth", "secret", "api_key", "value_b64"}
)
"""Keys whose value is replaced wherever they appear in a body."""
_SECRET_ZONES = frozenset({"secrets", "registry"})
"""Inside these, only the keys below are shown; every other string is replaced. An allowlist,
so that a secret in a misplaced or malformed shape (``entries`` as an object, a value in a
list) is hidden too."""
_SHOWN_IN_ZONES = frozenset(
    {
        "entries",
        "env_var",
        "placeholder",
        "allowed_hosts",
        "passthrough_hosts",
        "substitution",
        "injection",
        "require_tls_identity",
        "violation_action",
        "on_violation",
        "mode",
        "username",
    }
)
MAX_LOG_DEPTH = 32


def redacted(body: Mapping[str, Any]) -> JsonDict:
    """The body safe to log: secret values (``network.secrets.entries[].value``), registry
    passwords and anything else under ``secrets``/``registry`` that is not known to be
    harmless, and any key named like a credential, replaced by ``"<redacted>"``. The shape is
    kept (the gateway echoes it as ``spec``) and the input is not modified."""
    value: object = body  # typed as a Mapping, but it came off the network
    if not isinstance(value, Mapping):
        return {"body": f"<not a JSON object: {type(value).__name__}>"}
    return {str(key): _redact_member(str(key), item, False, 0) for key, item in value.items()}


def _redact_member(key: str, item: Any, hidden: bool, depth: int) -> Any:
    """One member of an object; ``hidden`` is true inside a secret zone."""
    if key.lower() in _CREDENTIAL_KEYS:
        return None if item is None else REDACTED
    if hidden and key in _SHOWN_IN_ZONES:
        hidden = key == "entries"  # an entry's own members are judged one by one again
    elif key.lower() in _SECRET_ZONES:
        hidden = True
    return _redact(item, hidden, depth + 1)


def _redact(value: Any, hidden: bool, depth: int) -> Any:
    if depth > MAX_LOG_DEPTH:
        return "<too deep>"
    if isinstance(value, Mapping):
        return {str(k): _redact_member(str(k), item, hidden, depth) for k, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(item, hidden, depth + 1) for item in value]
    if hidden and isinstance(value, str):
        return REDACTED
    return value
