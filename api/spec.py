"""``Sandbox.spec``: what the user asks for, mirroring the microsandbox builder in camelCase.

Field names are fixed by ARCHITECTURE.md; every field is documented here, and that text is what
``kubectl explain sandbox.spec...`` prints. Cross-field rules live next to the fields they
constrain, as CEL (see :mod:`._schema`). Which fields may change after creation, and how a
change is applied, is decided here too (``IMMUTABLE_RULES`` at the bottom) and documented in
docs/api.md.
"""

import ipaddress
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from kubesandbox_api._schema import (
    DNS_LABEL,
    AbsPath,
    ApiModel,
    ObjectName,
    OneOf,
    cel,
    rules,
)
from kubesandbox_api.quantity import MAX_MEMORY_MIB, MIN_MEMORY_MIB, QUANTITY_PATTERN, to_mib

# --- image ------------------------------------------------------------------------------------


class PullPolicy(StrEnum):
    """When the node agent contacts the registry for an OCI image."""

    ALWAYS = "Always"
    """Resolve the reference on every start of a new sandbox, even if it is cached."""
    IF_MISSING = "IfMissing"
    """Pull only what is not cached on the node."""
    NEVER = "Never"
    """Never pull; fail with ImageReady=False if the image is not cached on the node."""


class DiskFormat(StrEnum):
    """Format of a disk-image root."""

    QCOW2 = "qcow2"
    RAW = "raw"
    VMDK = "vmdk"


class DiskImage(ApiModel):
    """A disk image on the node used as the root filesystem (copy-on-write per sandbox)."""

    path: AbsPath
    """Path of the image on the node; must lie under a prefix the node agent allows."""
    format: DiskFormat | None = None
    """Image format; detected from the file when omitted."""
    fstype: Annotated[str, Field(max_length=32, pattern=r"^[a-z0-9]+$")] | None = None
    """Filesystem inside the image (for example ext4, xfs); probed when omitted."""


class BindRoot(ApiModel):
    """A directory on the node used as the root filesystem."""

    path: AbsPath
    """Directory on the node; must lie under a prefix the node agent allows."""


class LocalObjectReference(ApiModel):
    """A reference to an object in the Sandbox's namespace."""

    name: ObjectName
    """Name of the object."""


class ImageSource(OneOf):
    """The root filesystem: exactly one of an OCI image, a disk image or a host directory."""

    ONE_OF: ClassVar[tuple[str, ...]] = ("oci", "disk", "bind", "sandbox", "snapshot")
    WHAT: ClassVar[str] = "image"

    oci: Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[^\s]+$")] | None = None
    """OCI image reference (``python:3.12``, ``registry.example.com/team/app@sha256:...``).
    The first resolution pins the manifest and layer digests in ``status.image``; later starts
    of this Sandbox use the pinned digests even if the tag moves."""
    disk: DiskImage | None = None
    """Boot from a disk image (qcow2, raw, vmdk). Patches are not supported with disk roots."""
    bind: BindRoot | None = None
    """Use a host directory as the root filesystem."""
    sandbox: LocalObjectReference | None = None
    """Fork another Sandbox of this namespace: start from its live state (memory and writable
    layer, copied when the fork starts; the source runs on after a short pause). The source
    must be Running, Paused or Suspended; the fork runs on its node, with its machine (cpus and
    memory must be the same), under a new hostname, machine-id, MAC and network namespace
    (docs/fork.md)."""
    snapshot: LocalObjectReference | None = None
    """Start from a ``SandboxSnapshot`` of this namespace: the image its source was pinned to,
    with a copy of the captured writable layer (no memory: a boot). The snapshot must be
    ``Ready``; the Sandbox runs on the node that holds it (docs/snapshots.md)."""
    pull_policy: PullPolicy = PullPolicy.IF_MISSING
    """When to contact the registry (OCI images only)."""
    pull_secrets: Annotated[list[LocalObjectReference], Field(max_length=16)] = []
    """``kubernetes.io/dockerconfigjson`` Secrets in the Sandbox's namespace used to pull."""


# --- environment ------------------------------------------------------------------------------

ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
EnvName = Annotated[str, Field(min_length=1, max_length=256, pattern=ENV_NAME)]


class KeyRef(ApiModel):
    """A key of a Secret or ConfigMap in the Sandbox's namespace."""

    name: ObjectName
    """Name of the Secret or ConfigMap."""
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]
    """The key within it."""
    optional: bool = False
    """When true, a missing object or key leaves the variable unset instead of failing."""


class EnvVarSource(OneOf):
    """Where an environment variable's value comes from."""

    ONE_OF: ClassVar[tuple[str, ...]] = ("secret_key_ref", "config_map_key_ref")
    WHAT: ClassVar[str] = "valueFrom"

    secret_key_ref: KeyRef | None = None
    """A key of a Secret. The value is visible inside the guest; for credentials that must
    never enter the guest use ``spec.secrets``."""
    config_map_key_ref: KeyRef | None = None
    """A key of a ConfigMap."""


class EnvVar(ApiModel):
    """An environment variable set for every command run in the sandbox."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": rules(
            cel(
                "!(has(self.value) && has(self.valueFrom))",
                "set value or valueFrom, not both",
            )
        )
    }

    name: EnvName
    """Variable name."""
    value: Annotated[str, Field(max_length=32768)] | None = None
    """Literal value."""
    value_from: EnvVarSource | None = None
    """Take the value from a Secret or ConfigMap key."""


# --- scripts and patches ----------------------------------------------------------------------

SCRIPT_NAME = r"^[A-Za-z0-9_][A-Za-z0-9._-]*$"
MAX_SCRIPT_BYTES = 256 * 1024
FileMode = Annotated[int, Field(ge=0, le=0o7777)]
PatchContent = Annotated[str, Field(max_length=256 * 1024)]


class ContentSource(OneOf):
    """Where a copied file comes from: a Secret or ConfigMap key, or a path on the node."""

    ONE_OF: ClassVar[tuple[str, ...]] = ("secret_key_ref", "config_map_key_ref", "host_path")
    WHAT: ClassVar[str] = "source"

    secret_key_ref: KeyRef | None = None
    """A key of a Secret in the Sandbox's namespace."""
    config_map_key_ref: KeyRef | None = None
    """A key of a ConfigMap in the Sandbox's namespace."""
    host_path: AbsPath | None = None
    """A file on the node; refused unless the node agent allows the prefix."""


class DirectorySource(OneOf):
    """Where a copied directory comes from: every key of a Secret or ConfigMap, or a node path."""

    ONE_OF: ClassVar[tuple[str, ...]] = ("secret", "config_map", "host_path")
    WHAT: ClassVar[str] = "source"

    secret: LocalObjectReference | None = None
    """Every key of the Secret becomes a file."""
    config_map: LocalObjectReference | None = None
    """Every key of the ConfigMap becomes a file."""
    host_path: AbsPath | None = None
    """A directory on the node; refused unless the node agent allows the prefix."""


class TextPatch(ApiModel):
    """Write a text file."""

    path: AbsPath
    """Where to write it in the guest."""
    content: PatchContent
    """The text."""
    mode: FileMode | None = None
    """Permission bits (default 0644)."""
    replace: bool = False
    """Overwrite the path if it already exists in the image; without it, that is an error."""


class FilePatch(ApiModel):
    """Write a file from base64-encoded bytes."""

    path: AbsPath
    """Where to write it in the guest."""
    data: Annotated[
        str,
        Field(max_length=350 * 1024),
        WithJsonSchema({"type": "string", "format": "byte", "maxLength": 350 * 1024}),
    ]
    """The file's bytes, base64-encoded (at most about 256 KiB decoded; larger files belong in
    a ConfigMap, Secret or volume)."""
    mode: FileMode | None = None
    """Permission bits (default 0644)."""
    replace: bool = False
    """Overwrite the path if it already exists in the image; without it, that is an error."""


class CopyFilePatch(ApiModel):
    """Copy a file into the guest."""

    source: ContentSource
    """Where the bytes come from."""
    path: AbsPath
    """Destination in the guest."""
    mode: FileMode | None = None
    """Permission bits (default 0644)."""
    replace: bool = False
    """Overwrite the path if it already exists in the image; without it, that is an error."""


class CopyDirPatch(ApiModel):
    """Copy a directory into the guest."""

    source: DirectorySource
    """Where the files come from."""
    path: AbsPath
    """Destination directory in the guest."""
    replace: bool = False
    """Merge into a directory that already exists in the image; without it, that is an error."""


class SymlinkPatch(ApiModel):
    """Create a symbolic link."""

    path: AbsPath
    """The link to create."""
    target: Annotated[str, Field(min_length=1, max_length=4096)]
    """What the link points to (absolute or relative, as ``ln -s``)."""
    replace: bool = False
    """Replace the path if it already exists in the image; without it, that is an error."""


class MkdirPatch(ApiModel):
    """Create a directory (and its parents). Idempotent."""

    path: AbsPath
    """Directory to create."""
    mode: FileMode | None = None
    """Permission bits (default 0755)."""


class RemovePatch(ApiModel):
    """Remove a file or directory from the guest's view (a whiteout over image layers).
    Idempotent: removing a path that does not exist is not an error."""

    path: AbsPath
    """Path to remove."""


class AppendPatch(ApiModel):
    """Append text to a file, creating it if it does not exist."""

    path: AbsPath
    """File to append to."""
    content: PatchContent
    """The text to append."""


class Patch(OneOf):
    """One rootfs modification, applied before the VM boots, in list order, to the sandbox's
    writable layer (the image is never modified). Exactly one operation per item."""

    ONE_OF: ClassVar[tuple[str, ...]] = (
        "text",
        "file",
        "copy_file",
        "copy_dir",
        "symlink",
        "mkdir",
        "remove",
        "append",
    )
    WHAT: ClassVar[str] = "patch"

    text: TextPatch | None = None
    """Write a text file."""
    file: FilePatch | None = None
    """Write a file from base64 bytes."""
    copy_file: CopyFilePatch | None = None
    """Copy a file from a Secret, ConfigMap or node path."""
    copy_dir: CopyDirPatch | None = None
    """Copy a directory from a Secret, ConfigMap or node path."""
    symlink: SymlinkPatch | None = None
    """Create a symbolic link."""
    mkdir: MkdirPatch | None = None
    """Create a directory (idempotent)."""
    remove: RemovePatch | None = None
    """Remove a path (idempotent)."""
    append: AppendPatch | None = None
    """Append to a file."""

    @property
    def operation(self) -> ApiModel:
        """The one operation this item holds."""
        op = getattr(self, self.chosen())
        assert isinstance(op, ApiModel)
        return op


# --- volumes ----------------------------------------------------------------------------------


class BindVolume(ApiModel):
    """A directory on the node mounted into the guest."""

    path: AbsPath
    """Directory on the node; must lie under a prefix the node agent allows."""
    read_only: bool = False
    """Mount read-only."""


class NamedVolume(ApiModel):
    """A node-local volume managed by the node agent; created on first use, it outlives the
    sandbox (delete it with the node agent's API)."""

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]
    """Volume name, unique per node and namespace."""
    read_only: bool = False
    """Mount read-only."""


class TmpfsVolume(ApiModel):
    """A memory-backed filesystem, empty at every boot."""

    size_mib: Annotated[int, Field(ge=1, le=MAX_MEMORY_MIB)] | None = Field(None, alias="sizeMiB")
    """Size limit in MiB (default: half the guest memory, as tmpfs does)."""


class Volume(OneOf):
    """A filesystem mounted into the guest: exactly one of bind, named or tmpfs."""

    ONE_OF: ClassVar[tuple[str, ...]] = ("bind", "named", "tmpfs")
    WHAT: ClassVar[str] = "volume"

    mount_path: AbsPath
    """Where the volume appears in the guest (unique within the sandbox)."""
    bind: BindVolume | None = None
    """A directory on the node."""
    named: NamedVolume | None = None
    """A persistent node-local volume."""
    tmpfs: TmpfsVolume | None = None
    """A memory-backed scratch filesystem."""


# --- network ----------------------------------------------------------------------------------


class NetworkPolicy(StrEnum):
    """What the guest may reach."""

    NONE = "None"
    """No network interface at all."""
    PUBLIC_ONLY = "PublicOnly"
    """Egress to public addresses only: no private (RFC 1918), CGNAT, link-local, loopback,
    metadata or cluster ranges. DNS works."""
    ALL = "All"
    """Unrestricted egress, including private and cluster addresses."""


class Protocol(StrEnum):
    """Transport protocol of a published port."""

    TCP = "TCP"
    UDP = "UDP"


class PortMapping(ApiModel):
    """A guest port published on the node."""

    port: Annotated[int, Field(ge=1, le=65535)]
    """Port inside the guest."""
    protocol: Protocol = Protocol.TCP
    """TCP or UDP."""
    host_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    """Port on the node; chosen by the node agent when omitted and reported in status."""


class RuleAction(StrEnum):
    """What a matching network rule does with the guest's connection."""

    ALLOW = "Allow"
    """Let it out (the policy's refusals are not consulted)."""
    DENY = "Deny"
    """Refuse it (REJECT, so the guest fails fast)."""


class RuleProtocol(StrEnum):
    """Transport protocol a network rule matches."""

    TCP = "TCP"
    UDP = "UDP"
    ICMP = "ICMP"


IPV4_CIDR = (
    r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(/([0-9]|[12][0-9]|3[0-2]))?$"
)
DOMAIN_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DomainName = Annotated[str, Field(min_length=1, max_length=253, pattern=DOMAIN_NAME)]


class RuleDestination(OneOf):
    """Where a rule applies: exactly one of an IPv4 CIDR, a domain or a domain suffix."""

    ONE_OF: ClassVar[tuple[str, ...]] = ("cidr", "domain", "domain_suffix")
    WHAT: ClassVar[str] = "destination"

    cidr: Annotated[str, Field(max_length=18, pattern=IPV4_CIDR)] | None = None
    """IPv4 address or CIDR (``203.0.113.0/24``, ``198.51.100.7``); the guest network is
    IPv4 only."""
    domain: DomainName | None = None
    """A DNS name (``api.example.com``, lower case): the addresses the sandbox's resolver
    returned for exactly this name, for as long as their TTL lasts."""
    domain_suffix: DomainName | None = None
    """A DNS suffix (``example.com``): the name itself and every name under it, through the
    addresses the sandbox's resolver returned for them."""


class PortRange(ApiModel):
    """A destination port, or a range of them (``port`` to ``endPort``)."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": rules(
            cel(
                "!has(self.endPort) || self.endPort >= self.port",
                "endPort must not be below port",
                field_path=".endPort",
            )
        )
    }

    port: Annotated[int, Field(ge=1, le=65535)]
    """Destination port (or first of the range)."""
    end_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    """Last port of the range (inclusive)."""

    @field_validator("end_port")
    @classmethod
    def _ordered(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value < info.data.get("port", 0):
            raise ValueError("endPort must not be below port")
        return value


class NetworkRule(ApiModel):
    """One egress rule. Rules are evaluated in order, before the policy's default; the first
    rule that matches a new connection decides it."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": rules(
            cel(
                "!has(self.ports) || size(self.ports) == 0 || "
                "!has(self.protocol) || self.protocol != 'ICMP'",
                "ports apply to TCP and UDP only, not to ICMP",
                field_path=".ports",
            )
        )
    }

    action: RuleAction
    """``Allow`` or ``Deny``."""
    destination: RuleDestination
    """Exactly one of ``cidr``, ``domain``, ``domainSuffix``."""
    protocol: RuleProtocol | None = None
    """``TCP``, ``UDP`` or ``ICMP``; every protocol when omitted (with ``ports``: TCP and
    UDP)."""
    ports: Annotated[list[PortRange], Field(max_length=16)] = []
    """Destination ports; every port when empty."""

    @field_validator("ports")
    @classmethod
    def _ports_need_a_port_protocol(
        cls, value: list[PortRange], info: ValidationInfo
    ) -> list[PortRange]:
        if value and info.data.get("protocol") == RuleProtocol.ICMP:
            raise ValueError("ports apply to TCP and UDP only, not to ICMP")
        return value


class ViolationAction(StrEnum):
    """What the egress proxy does with a request carrying a placeholder where it may not go."""

    BLOCK = "Block"
    """Close the connection; nothing else."""
    BLOCK_AND_LOG = "BlockAndLog"
    """Close the connection, log it (without the value) and record a Warning Event
    ``SecretViolation`` on the Sandbox."""
    BLOCK_AND_TERMINATE = "BlockAndTerminate"
    """As BlockAndLog, then stop the sandbox at once (Kill)."""


class Network(ApiModel):
    """Network policy, egress rules and published ports."""

    policy: NetworkPolicy = NetworkPolicy.PUBLIC_ONLY
    """What the guest may reach when no rule matches."""
    rules: Annotated[list[NetworkRule], Field(max_length=64)] = []
    """Egress rules, evaluated in order before the policy's default (the first match decides).
    With policy ``None`` and at least one rule the guest gets a network interface whose only
    egress is what the rules allow. Changes apply to a running sandbox without a reboot."""
    ports: Annotated[
        list[PortMapping],
        Field(
            max_length=64,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["port", "protocol"],
            },
        ),
    ] = []
    """Published ports (each port and protocol at most once)."""
    secret_violation_action: ViolationAction = ViolationAction.BLOCK_AND_LOG
    """What a secret violation does (a placeholder on its way to a host that may not have it),
    for ``secrets`` entries that do not say (microsandbox's ``secret_violation_action``)."""


# --- secrets ----------------------------------------------------------------------------------

HOST_NAME = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
IPV4_ADDRESS = (
    r"((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
)
HOST_PATTERN = rf"^((\*\.)?{HOST_NAME}|{IPV4_ADDRESS}|[0-9a-f]*:[0-9a-f:.]*)$"
"""An allowed host: a lower-case DNS name, ``*.`` and a suffix, an IPv4 or an IPv6 literal
(the IPv6 shape is loose here; :func:`_check_host` and the CEL ``isIP`` rule check it)."""


def _check_host(value: str) -> str:
    if ":" in value:
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv6 address") from None
    return value


HostPattern = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=HOST_PATTERN,
        json_schema_extra=rules(
            cel("!self.contains(':') || isIP(self)", "a host with ':' must be an IPv6 address")
        ),
    ),
    AfterValidator(_check_host),
]
"""``api.example.com``, ``*.example.com`` (names under it, not the name itself), ``192.0.2.7``
or ``2001:db8::7``."""

PLACEHOLDER = r"^[A-Za-z0-9_$][A-Za-z0-9_$.{}-]*$"
"""Placeholders are plain tokens (letters, digits, ``_ $ . { } -``): they survive shell
quoting, HTTP headers, URLs and JSON unchanged, so the proxy finds them byte for byte."""


Placeholder = Annotated[str, Field(min_length=6, max_length=128, pattern=PLACEHOLDER)]


def default_placeholder(env: str) -> str:
    """The placeholder of an entry that names none: microsandbox's default, ``$MSB_<env>``."""
    return f"$MSB_{env}"


class SecretSubstitution(ApiModel):
    """Where in a request the proxy replaces the placeholder by the real value."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": rules(
            cel(
                "!has(self.headerFields) || size(self.headerFields) == 0 || self.headers",
                "headerFields needs headers: true",
                field_path=".headerFields",
            )
        )
    }

    headers: bool = True
    """Request header values (Basic ``Authorization`` credentials are decoded, substituted and
    encoded again)."""
    header_fields: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]],
        Field(max_length=16),
    ] = []
    """Only these headers (case-insensitive); every header when empty. Needs ``headers``."""
    query: bool = False
    """The request target's query string."""
    body: bool = False
    """The request body (at most 1 MiB; a larger body carrying the placeholder is refused)."""

    @field_validator("header_fields")
    @classmethod
    def _fields_need_headers(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if value and not info.data.get("headers", True):
            raise ValueError("headerFields needs headers: true")
        return value


class SandboxSecret(ApiModel):
    """A credential the guest can use but never read: the guest's environment holds a
    placeholder, and the egress proxy substitutes the real value only in requests to
    ``allowHosts``."""

    env: EnvName
    """Environment variable that holds the placeholder inside the guest."""
    secret_key_ref: KeyRef
    """The Secret key holding the real value."""
    allow_hosts: Annotated[list[HostPattern], Field(min_length=1, max_length=32)]
    """Hosts to which the value may be sent: ``api.example.com``, ``*.example.com`` (every
    name under it) or an IP literal. The name must be the TLS SNI and the ``Host`` header
    alike, and the connection must go to an address the sandbox's resolver returned for it."""
    require_tls: bool = Field(True, alias="requireTLS")
    """Substitute only in intercepted TLS (HTTPS) requests; false also allows plain HTTP to
    ``allowHosts``."""
    placeholder: Placeholder | None = None
    """What the guest's environment holds instead of the value (default ``$MSB_<env>``,
    microsandbox's). Placeholders must differ between entries."""
    substitution: SecretSubstitution = Field(
        default_factory=SecretSubstitution, json_schema_extra={"default": {}}
    )
    """Where the value is substituted (default: request headers only)."""
    allow_placeholder_for: Annotated[list[HostPattern], Field(max_length=32)] = []
    """Hosts that may receive the placeholder itself, unchanged (not a violation there)."""
    violation_action: ViolationAction | None = None
    """What a violation does; ``spec.network.secretViolationAction`` when omitted."""

    @property
    def effective_placeholder(self) -> str:
        return self.placeholder or default_placeholder(self.env)


# --- lifecycle --------------------------------------------------------------------------------


class DesiredState(StrEnum):
    """The state the user wants the sandbox in."""

    RUNNING = "Running"
    """Booted and serving commands."""
    STOPPED = "Stopped"
    """Shut down; the writable layer is kept, so starting again keeps the files."""
    PAUSED = "Paused"
    """vCPUs frozen; memory kept; resuming is instant."""
    SUSPENDED = "Suspended"
    """Memory and device state saved to a file on the node and the VM process ended (no CPU,
    no RAM); Running restores it, processes and all."""


class StopMode(StrEnum):
    """How a stop is carried out."""

    GRACEFUL = "Graceful"
    """Ask the guest to shut down; kill after ``stopGracePeriodSeconds``."""
    DRAIN = "Drain"
    """Refuse new commands, let running ones finish, then stop."""
    KILL = "Kill"
    """Kill the VM at once."""


class IdleAction(StrEnum):
    """What ``idleTimeoutSeconds`` does to an idle sandbox."""

    DRAIN = "Drain"
    """Drain to Stopped (microsandbox's behaviour)."""
    SUSPEND = "Suspend"
    """Suspend (state saved on the node, no VM process); the next exec, shell or filesystem
    call wakes it."""


class RestartPolicy(StrEnum):
    """What happens when the sandbox ends on its own (crash, node loss, guest power-off)."""

    NEVER = "Never"
    ON_FAILURE = "OnFailure"
    ALWAYS = "Always"


class Lifecycle(ApiModel):
    """Desired state and host-enforced policies (the guest cannot override them)."""

    state: DesiredState = DesiredState.RUNNING
    """Desired state; change it to stop, start, pause, suspend or resume the sandbox."""
    stop_mode: StopMode = StopMode.GRACEFUL
    """How a stop (desired state Stopped, or an expired policy) is carried out."""
    stop_grace_period_seconds: Annotated[int, Field(ge=0, le=3600)] = 30
    """For Graceful stops: seconds between the shutdown request and the kill."""
    max_duration_seconds: Annotated[int, Field(ge=1, le=31_536_000)] | None = None
    """Maximum lifetime of a run, in seconds; on expiry the sandbox drains to Stopped."""
    idle_timeout_seconds: Annotated[int, Field(ge=1, le=31_536_000)] | None = None
    """Seconds without any agent activity after which ``idleAction`` happens."""
    idle_action: IdleAction = IdleAction.DRAIN
    """What the idle timeout does: Drain (to Stopped) or Suspend (woken by the next use)."""
    restart_policy: RestartPolicy = RestartPolicy.NEVER
    """Whether a sandbox that ended on its own is started again."""
    ephemeral: bool = False
    """Delete the Sandbox once it has stopped (microsandbox's ephemeral sandboxes, ``msb run``)."""


class LogLevel(StrEnum):
    """Verbosity of the sandbox's own logs (node agent and guest agent)."""

    ERROR = "Error"
    WARN = "Warn"
    INFO = "Info"
    DEBUG = "Debug"
    TRACE = "Trace"


# --- scheduling -------------------------------------------------------------------------------


class TolerationOperator(StrEnum):
    """How a toleration matches a taint."""

    EXISTS = "Exists"
    """Any taint with the key (or every taint, with an empty key)."""
    EQUAL = "Equal"
    """A taint with the key and the same value."""


class TaintEffect(StrEnum):
    """The taint effect a toleration matches."""

    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(ApiModel):
    """Copied to the sandbox Pod; see ``kubectl explain pod.spec.tolerations``."""

    key: Annotated[str, Field(max_length=316)] | None = None
    """Taint key; empty with operator Exists matches every taint."""
    operator: TolerationOperator | None = None
    """Exists or Equal (default Equal)."""
    value: Annotated[str, Field(max_length=63)] | None = None
    """Taint value for operator Equal."""
    effect: TaintEffect | None = None
    """Taint effect to match; empty matches all."""
    toleration_seconds: int | None = None
    """For NoExecute: how long the Pod stays bound after the taint appears."""


_PRESERVE = WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True})

Memory = Annotated[
    int | str,
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-validations": [
                cel(
                    "type(self) == int"
                    f" ? (self >= {MIN_MEMORY_MIB} && self <= {MAX_MEMORY_MIB})"
                    f" : (self.matches('{QUANTITY_PATTERN}')"
                    f" && quantity(self).compareTo(quantity('{MIN_MEMORY_MIB}Mi')) >= 0"
                    f" && quantity(self).compareTo(quantity('{MAX_MEMORY_MIB}Mi')) <= 0)",
                    f"must be an integer number of MiB or a quantity such as '512Mi' or '2Gi', "
                    f"between {MIN_MEMORY_MIB} MiB and {MAX_MEMORY_MIB} MiB",
                )
            ],
        }
    ),
]


def _unchanged(field: str) -> str:
    return (
        f"has(self.{field}) == has(oldSelf.{field})"
        f" && (!has(self.{field}) || self.{field} == oldSelf.{field})"
    )


_IMAGE_IMMUTABLE = cel(
    " && ".join(_unchanged(source) for source in ImageSource._wire_names()),
    "the root filesystem (image.oci, image.disk, image.bind, image.sandbox, image.snapshot) is "
    "immutable: the "
    "writable layer belongs to it; create a new Sandbox instead",
)

# --- the spec ---------------------------------------------------------------------------------


class SandboxSpec(ApiModel):
    """What the sandbox should be: its image, resources, guest environment and lifecycle."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": rules(
            cel(
                "!has(self.patches) || size(self.patches) == 0 || !has(self.image.disk)",
                "patches are not supported with disk-image roots (image.disk); use an OCI "
                "image or a bind root, or change the disk image itself",
                field_path=".patches",
            ),
            cel(
                _unchanged("patches"),
                "patches are immutable: they are applied once, when the writable layer is "
                "created; create a new Sandbox instead",
                field_path=".patches",
            ),
            cel(
                "!has(self.secrets) || self.secrets.all(a, !has(a.placeholder) || "
                "self.secrets.exists_one(b, (has(b.placeholder) ? b.placeholder "
                ": '$MSB_' + b.env) == a.placeholder))",
                "every entry needs its own placeholder",
                field_path=".secrets",
            ),
            cel(
                _unchanged("scripts"),
                "scripts are immutable: they are written into the writable layer when it is "
                "created; create a new Sandbox instead",
                field_path=".scripts",
            ),
        )
    }

    image: Annotated[ImageSource, Field(json_schema_extra=rules(_IMAGE_IMMUTABLE))]
    """The root filesystem: exactly one of ``oci``, ``disk``, ``bind`` or ``sandbox`` (a fork).
    Immutable."""
    cpus: Annotated[int, Field(ge=1, le=64)] = 1
    """Number of virtual CPUs."""
    memory: Memory = 512
    """Guest memory: an integer number of MiB or a quantity string (``1Gi``)."""
    rootfs_size_mib: Annotated[int, Field(ge=64, le=1024 * 1024)] | None = Field(
        None, alias="rootfsSizeMiB"
    )
    """Size of the sparse writable layer in MiB (node agent default when omitted)."""
    workdir: AbsPath | None = None
    """Default working directory of commands."""
    shell: AbsPath = "/bin/sh"
    """Shell used by ``shell()`` calls."""
    user: (
        Annotated[
            str,
            Field(
                max_length=256,
                pattern=r"^([a-z_][a-z0-9_-]*[$]?|[0-9]+)(:([a-z_][a-z0-9_-]*|[0-9]+))?$",
            ),
        ]
        | None
    ) = None
    """Default user of commands: a name from the image, a uid, or ``uid:gid`` (default root)."""
    hostname: Annotated[str, Field(max_length=63, pattern=DNS_LABEL)] | None = None
    """Guest hostname (default: the Sandbox's name, cut to 63 characters)."""
    env: Annotated[
        list[EnvVar],
        Field(
            max_length=256,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            },
        ),
    ] = []
    """Environment of every command (each name at most once)."""
    entrypoint: (
        Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=64)] | None
    ) = None
    """Overrides the image's ENTRYPOINT."""
    command: (
        Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=256)] | None
    ) = None
    """Overrides the image's CMD."""
    init: Annotated[str, Field(max_length=4096, pattern=r"^(none|auto|/.*)$")] = "none"
    """PID 1: ``none`` (the guest agent), ``auto`` (a known init found in the image, such as
    systemd or OpenRC), or an absolute path. The agent keeps serving beside a real init."""
    scripts: Annotated[
        dict[
            Annotated[str, Field(max_length=255, pattern=SCRIPT_NAME)],
            Annotated[str, Field(max_length=MAX_SCRIPT_BYTES)],
        ],
        Field(
            max_length=64,
            json_schema_extra=rules(
                cel(
                    f"self.all(k, size(k) <= 255 && k.matches('{SCRIPT_NAME}'))",
                    "script names must be plain file names (letters, digits, '.', '_', '-'; "
                    "no '/'; not starting with '.' or '-'; at most 255 characters)",
                )
            ),
        ),
    ] = {}
    """Named scripts, written to ``/.msb/scripts/NAME`` (mode 0755) and on PATH. Immutable."""
    patches: Annotated[list[Patch], Field(max_length=128)] = []
    """Rootfs modifications applied in order before the first boot. Immutable."""
    volumes: Annotated[
        list[Volume],
        Field(
            max_length=32,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["mountPath"],
            },
        ),
    ] = []
    """Volumes (each mountPath at most once)."""
    network: Network = Field(default_factory=Network, json_schema_extra={"default": {}})
    """Network policy, egress rules and published ports."""
    secrets: Annotated[
        list[SandboxSecret],
        Field(
            max_length=32,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["env"],
            },
        ),
    ] = []
    """Credentials the guest can use but never read (substituted by the egress proxy)."""
    lifecycle: Lifecycle = Field(default_factory=Lifecycle, json_schema_extra={"default": {}})
    """Desired state and host-enforced policies."""
    log_level: LogLevel | None = None
    """Verbosity of the sandbox's own logs."""
    node_selector: Annotated[
        dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=64)
    ] = {}
    """Copied to the sandbox Pod."""
    tolerations: Annotated[list[Toleration], Field(max_length=64)] = []
    """Copied to the sandbox Pod."""
    affinity: Annotated[dict[str, Any], _PRESERVE] | None = None
    """Copied to the sandbox Pod (same shape as ``pod.spec.affinity``)."""
    priority_class_name: (
        Annotated[str, Field(max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")] | None
    ) = None
    """Copied to the sandbox Pod."""

    @field_validator("memory")
    @classmethod
    def _memory_in_range(cls, value: int | str) -> int | str:
        to_mib(value)
        return value

    @field_validator("secrets")
    @classmethod
    def _placeholders_distinct(cls, value: list[SandboxSecret]) -> list[SandboxSecret]:
        # the CEL rule's check (default placeholders differ as env names do: a list-map key)
        effective = [secret.effective_placeholder for secret in value]
        for secret in value:
            if secret.placeholder is not None and effective.count(secret.placeholder) != 1:
                raise ValueError("every entry needs its own placeholder")
        return value

    @property
    def memory_mib(self) -> int:
        """Guest memory in whole MiB."""
        return to_mib(self.memory)
