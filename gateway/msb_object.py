"""A Sandbox object → the Sandbox JSON the microsandbox SDK decodes (create, get, list, start).

The SDK is strict about this JSON and silent about some failures (docs/msb-compat.md §3):
a missing required key, a timestamp that is not RFC 3339, or a ``status``/``status_reason``
outside its enums fails the whole response, and for a list one bad item fails the whole page.
A ``spec`` it cannot parse is dropped *silently*, and a reconnected handle then runs commands
as root in ``/`` with no environment. So this side is lenient about what it reads (the object
comes from the apiserver, already validated) and strict about what it writes: only values the
SDK was seen to accept, and no secret value, ever.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubesandbox_api.quantity import to_mib
from kubesandbox_gateway.msb_wire import (
    DEFAULT_VIOLATION,
    LOG_LEVELS,
    POLICIES,
    PUBLIC_POLICY,
    PULL_POLICIES,
    VIOLATIONS,
    default_placeholder,
)

JsonDict = dict[str, Any]

_STARTING_PHASES = frozenset({"Pending", "Scheduled", "Pulling", "Booting"})
_PHASE_STATUS = {
    "Running": "running",
    "Paused": "stopped",
    "Draining": "stopping",
    "Stopping": "stopping",
    "Stopped": "stopped",
    "Suspending": "stopping",
    "Suspended": "stopped",
    "Crashed": "failed",
    "Failed": "failed",
}
_EPOCH = "1970-01-01T00:00:00Z"
MAX_FAILURE_MESSAGE = 4096

_SDK_LOG_LEVELS = {level: name for name, level in LOG_LEVELS.items()}
_SDK_PULL_POLICIES = {policy: name for name, policy in PULL_POLICIES.items()}


def sandbox_object(sandbox: Mapping[str, Any]) -> JsonDict:
    """A Sandbox as the apiserver returns it → the SDK's Sandbox JSON.

    Lenient on purpose: the object comes from the apiserver (already validated), and one item
    the SDK cannot decode fails a whole list, so odd values become safe defaults (a timestamp
    that does not parse becomes null) instead of errors.
    """
    metadata = _mapping(sandbox.get("metadata"))
    spec = _mapping(sandbox.get("spec"))
    status = _mapping(sandbox.get("status"))
    name = _text(metadata.get("name"))
    msb_status = _status(status, spec)
    failure = None
    if msb_status == "failed":
        failure = _failure_message(status)
    return {
        "id": _text(metadata.get("uid")),
        "org_id": _text(metadata.get("namespace")),
        "name": name,
        "slug": name,
        "status": msb_status,
        "status_reason": _status_reason(msb_status, status),
        "ephemeral": _ephemeral(spec),
        "created_at": _timestamp(metadata.get("creationTimestamp")) or _EPOCH,
        "started_at": _timestamp(status.get("startedAt")),
        "stopped_at": _timestamp(status.get("stoppedAt")),
        "last_failure_message": failure,
        "spec": _sdk_spec(name, metadata, spec, status),
        # kubesandbox's own field (the SDK ignores unknown fields): the Sandbox phase, which
        # tells apart what the SDK's statuses cannot (Paused shows as stopped)
        "phase": _text(status.get("phase")) or None,
    }


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


_SLEEP_PHASES = frozenset({"Suspending", "Suspended", "Resuming"})


def sleeping(sandbox: Mapping[str, Any]) -> bool:
    """Suspended (or on its way in or out) while wanted Running: an idle suspend, which the
    next exec, shell or fs call wakes (the node agent restores it on the agent connection)."""
    phase = _mapping(sandbox.get("status")).get("phase")
    state = _mapping(_mapping(sandbox.get("spec")).get("lifecycle")).get("state", "Running")
    return phase in _SLEEP_PHASES and state == "Running"


def _status(status: Mapping[str, Any], spec: Mapping[str, Any]) -> str:
    """docs/gateway.md's table: the Sandbox phase → one of :data:`SDK_STATUSES`."""
    phase = status.get("phase")
    if sleeping({"status": status, "spec": spec}):
        return "running"  # to its users it is: the next call wakes it
    if isinstance(phase, str) and phase in _PHASE_STATUS:
        return _PHASE_STATUS[phase]
    # No phase yet, a starting phase, or one newer than this gateway: still on its way.
    state = _mapping(spec.get("lifecycle")).get("state", "Running")
    return "created" if state == "Stopped" else "starting"


def _status_reason(msb_status: str, status: Mapping[str, Any]) -> str | None:
    """``insufficient_capacity`` while unschedulable, ``scheduling`` before a node is found."""
    if msb_status != "starting":
        return None
    conditions = status.get("conditions")
    for condition in conditions if isinstance(conditions, list) else []:
        if (
            isinstance(condition, Mapping)
            and condition.get("type") == "Scheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            return "insufficient_capacity"
    if status.get("phase") in (None, "Pending"):
        return "scheduling"
    return None


def _failure_message(status: Mapping[str, Any]) -> str:
    message = status.get("message")
    if not isinstance(message, str) or not message:
        exit_status = _mapping(status.get("exitStatus"))
        message = exit_status.get("reason") or f"sandbox {str(status.get('phase')).lower()}"
    return str(message)[:MAX_FAILURE_MESSAGE]


def _timestamp(value: object) -> str | None:
    """RFC 3339 in UTC with a ``Z`` (the SDK refuses other spellings), or None."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _ephemeral(spec: Mapping[str, Any]) -> bool:
    return _mapping(spec.get("lifecycle")).get("ephemeral") is True


def _sdk_spec(
    name: str,
    metadata: Mapping[str, Any],
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
) -> JsonDict:
    """The Sandbox spec in the create-body shape, so ``Sandbox.get(name).connect()`` finds
    env, workdir, user and shell. Never a secret value: env from ``valueFrom`` is omitted
    (an env item with a null value would make the SDK drop the whole spec, silently) and
    network secrets carry only their variable and hosts. Scripts and patches are left out:
    they can be megabytes, and every list response would repeat them."""
    out: JsonDict = _sdk_source(_mapping(spec.get("image")), _mapping(status.get("image")))
    out["name"] = name
    out["resources"] = _sdk_resources(spec)
    level = spec.get("logLevel")
    out["runtime"] = {
        "workdir": _opt_text(spec.get("workdir")),
        "shell": _opt_text(spec.get("shell")) or "/bin/sh",
        "scripts": {},
        "entrypoint": _opt_strings(spec.get("entrypoint")),
        "cmd": _opt_strings(spec.get("command")),
        "user": _opt_text(spec.get("user")),
        "log_level": _SDK_LOG_LEVELS.get(level) if isinstance(level, str) else None,
    }
    out["env"] = [
        {"key": item["name"], "value": item["value"]}
        for item in _items(spec.get("env"))
        if isinstance(item.get("name"), str) and isinstance(item.get("value"), str)
    ]
    labels = _mapping(metadata.get("labels"))
    out["labels"] = {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)}
    out["rlimits"] = []
    out["mounts"] = [mount for mount in map(_sdk_mount, _items(spec.get("volumes"))) if mount]
    out["patches"] = []
    out["network"] = _sdk_network(spec)
    init = spec.get("init")
    out["init"] = (
        {"cmd": init, "args": [], "env": []} if isinstance(init, str) and init != "none" else None
    )
    out["security_profile"] = "default"
    lifecycle = _mapping(spec.get("lifecycle"))
    out["lifecycle"] = {
        "ephemeral": _ephemeral(spec),
        "max_duration_secs": _opt_int(lifecycle.get("maxDurationSeconds")),
        "idle_timeout_secs": _opt_int(lifecycle.get("idleTimeoutSeconds")),
    }
    pull = _mapping(spec.get("image")).get("pullPolicy", "IfMissing")
    out["pull_policy"] = (
        _SDK_PULL_POLICIES.get(pull, "if_missing") if isinstance(pull, str) else None
    )
    return out


def _sdk_source(image: Mapping[str, Any], pinned: Mapping[str, Any]) -> JsonDict:
    """The root filesystem in the SDK's shape (observed: ``oci``, ``bind``, ``disk_image``).
    A fork (``image.sandbox``, which the SDK has no word for) and a sandbox from a snapshot
    (``image.snapshot``) show the OCI image their layers are (``status.image``, inherited
    from the source), or an empty reference until known."""
    if isinstance(image.get("oci"), str):
        return {"source": "oci", "reference": image["oci"]}
    if image.get("sandbox") is not None or image.get("snapshot") is not None:
        return {"source": "oci", "reference": _text(pinned.get("reference"))}
    bind = _mapping(image.get("bind"))
    if isinstance(bind.get("path"), str):
        return {"source": "bind", "path": bind["path"]}
    disk = _mapping(image.get("disk"))
    path = _text(disk.get("path"))
    # The SDK drops a spec whose disk_image has no format (observed), so an image whose
    # format is detected by the node agent is shown with the one its name suggests, as
    # microsandbox itself derives it.
    detected = next((f for f in ("qcow2", "vmdk") if path.endswith(f".{f}")), "raw")
    return {
        "source": "disk_image",
        "path": path,
        "format": _opt_text(disk.get("format")) or detected,
        "fstype": _opt_text(disk.get("fstype")),
    }


def _sdk_resources(spec: Mapping[str, Any]) -> JsonDict:
    cpus = _opt_int(spec.get("cpus"))
    memory = spec.get("memory", 512)
    try:
        memory_mib: int | None = to_mib(memory) if isinstance(memory, int | str) else None
    except ValueError:
        memory_mib = None
    out: JsonDict = {"vcpus": cpus or 1}
    if memory_mib is not None:
        out["memory_mib"] = memory_mib
    if _opt_int(spec.get("rootfsSizeMiB")) is not None:
        out["disk_size_mib"] = spec["rootfsSizeMiB"]
    return out


_MOUNT_FLAGS_OFF = {"noexec": False, "nosuid": False, "nodev": False}


def _sdk_mount(volume: Mapping[str, Any]) -> JsonDict | None:
    guest = volume.get("mountPath")
    if not isinstance(guest, str):
        return None
    if "tmpfs" in volume:
        size = _opt_int(_mapping(volume["tmpfs"]).get("sizeMiB"))
        options = {"readonly": False, **_MOUNT_FLAGS_OFF}
        return {"type": "tmpfs", "guest": guest, "size_mib": size, "options": options}
    virtiofs = {"stat_virtualization": "strict", "host_permissions": "private"}
    for kind, key, sdk_key in (("named", "name", "name"), ("bind", "path", "host")):
        source = _mapping(volume.get(kind))
        if isinstance(source.get(key), str):
            options = {"readonly": source.get("readOnly") is True, **_MOUNT_FLAGS_OFF}
            mount: JsonDict = {"type": kind, sdk_key: source[key], "guest": guest}
            return {**mount, "options": options, **virtiofs}
    return None


def _sdk_hosts(hosts: object) -> list[JsonDict]:
    return [
        {"type": "wildcard" if host.startswith("*.") else "exact", "value": host}
        for host in (hosts if isinstance(hosts, list) else [])
        if isinstance(host, str)
    ]


def _sdk_secret(item: Mapping[str, Any]) -> JsonDict | None:
    """A ``spec.secrets`` entry in the SDK's create-body shape, without any value."""
    env = item.get("env")
    if not isinstance(env, str) or not isinstance(item.get("allowHosts"), list):
        return None
    placeholder = item.get("placeholder")
    substitution = _mapping(item.get("substitution"))
    sdk_substitution: JsonDict = {
        "headers": substitution.get("headers") is not False,
        "query": substitution.get("query") is True,
        "body": substitution.get("body") is True,
    }
    listed = substitution.get("headerFields")
    fields = [f for f in listed if isinstance(f, str)] if isinstance(listed, list) else []
    if fields:
        sdk_substitution["header_fields"] = fields
    return {
        "env_var": env,
        "placeholder": placeholder if isinstance(placeholder, str) else default_placeholder(env),
        "allowed_hosts": _sdk_hosts(item.get("allowHosts")),
        "substitution": sdk_substitution,
        "passthrough_hosts": _sdk_hosts(item.get("allowPlaceholderFor")),
        "require_tls_identity": item.get("requireTLS") is not False,
    }


def _sdk_network(spec: Mapping[str, Any]) -> JsonDict:
    policy = _mapping(spec.get("network")).get("policy", "PublicOnly")
    entries = [e for e in map(_sdk_secret, _items(spec.get("secrets"))) if e is not None]
    action = _mapping(spec.get("network")).get("secretViolationAction")
    violation = next((k for k, v in VIOLATIONS.items() if v == action), None)
    sdk_policy = dict(POLICIES.get(policy if isinstance(policy, str) else "", PUBLIC_POLICY))
    rules = [_sdk_rule(rule) for rule in _items(_mapping(spec.get("network")).get("rules"))]
    if rules:
        # the SDK's shape of the same thing: its DNS rule (the sandbox's resolver always
        # answers), our rules in order, then the public profile's "allow public" if PublicOnly
        dns, *public = PUBLIC_POLICY["rules"]
        sdk_policy["rules"] = [dns, *rules, *(public if policy == "PublicOnly" else [])]
        if policy == "None":
            sdk_policy["default_ingress"] = "allow"
    return {
        "enabled": True,
        "strict": True,
        "policy": sdk_policy,
        "secrets": {
            "entries": entries,
            "violation_action": {"type": violation} if violation else dict(DEFAULT_VIOLATION),
        },
    }


_SDK_DESTINATIONS = {"cidr": "cidr", "domain": "domain", "domainSuffix": "domain_suffix"}
_SDK_PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "ICMP": "icmpv4"}


def _sdk_rule(rule: Mapping[str, Any]) -> JsonDict:
    destination = {
        _SDK_DESTINATIONS[key]: value
        for key, value in _mapping(rule.get("destination")).items()
        if key in _SDK_DESTINATIONS
    }
    protocol = _SDK_PROTOCOLS.get(str(rule.get("protocol")))
    ports = []
    for port in _items(rule.get("ports")):
        start = _opt_int(port.get("port"))
        end = _opt_int(port.get("endPort"))
        if start is not None:
            ports.append({"start": start, "end": end if end is not None else start})
    return {
        "direction": "egress",
        "destination": destination,
        "protocols": [protocol] if protocol else [],
        "ports": ports,
        "action": "allow" if rule.get("action") == "Allow" else "deny",
    }


def _items(value: object) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _opt_text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _opt_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _opt_strings(value: object) -> list[str] | None:
    if not isinstance(value, list):
        return None
    return [item for item in value if isinstance(item, str)]
