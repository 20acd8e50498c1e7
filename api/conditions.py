"""Condition types, their reasons, and the phase, as documented enums.

Whoever observes a fact writes its condition (KubeVirt's rule): the operator owns ``Scheduled``
and ``Ready``; the node agent owns ``ImageReady``, ``AgentConnected``, ``Paused``,
``Suspended`` and ``SoftwareEmulation``. Reasons are CamelCase constants so that tools can
match on them; messages are for people.
"""

from enum import StrEnum


class Phase(StrEnum):
    """Where the sandbox is in its life (``status.phase``)."""

    PENDING = "Pending"
    """Accepted; waiting for the sandbox Pod to be scheduled."""
    SCHEDULED = "Scheduled"
    """Bound to a node; the node agent has not reported yet."""
    PULLING = "Pulling"
    """The node agent is resolving and fetching the image."""
    BOOTING = "Booting"
    """The VM is starting; waiting for the guest agent's ready frame."""
    RUNNING = "Running"
    """The guest agent is serving."""
    PAUSED = "Paused"
    """vCPUs frozen."""
    DRAINING = "Draining"
    """New commands refused; waiting for running ones to finish."""
    SUSPENDING = "Suspending"
    """Saving the VM's memory and device state to the node's disk."""
    SUSPENDED = "Suspended"
    """The VM's state is saved on the node and no VM process runs (no CPU, no RAM)."""
    RESUMING = "Resuming"
    """Restoring the VM from its saved state; waiting for the guest agent."""
    STOPPING = "Stopping"
    """Shutting down."""
    STOPPED = "Stopped"
    """Shut down; the writable layer is kept."""
    CRASHED = "Crashed"
    """Ended without being asked to (VMM exit, guest panic, out of memory, node lost)."""
    FAILED = "Failed"
    """Cannot run as specified (bad reference, missing Secret, policy refusal); see message."""


class ConditionType(StrEnum):
    """The condition types a Sandbox reports."""

    SCHEDULED = "Scheduled"
    """The sandbox Pod is bound to a node whose node agent holds a live Lease (operator)."""
    IMAGE_READY = "ImageReady"
    """The root filesystem is resolved, pinned and present on the node (node agent)."""
    AGENT_CONNECTED = "AgentConnected"
    """The guest agent sent its ready frame and the relay is connected (node agent)."""
    READY = "Ready"
    """The sandbox is Running and accepts commands (operator, from the others)."""
    PAUSED = "Paused"
    """The vCPUs are frozen (node agent)."""
    SUSPENDED = "Suspended"
    """The VM's state is saved on the node and no VM process runs (node agent)."""
    SOFTWARE_EMULATION = "SoftwareEmulation"
    """The VM runs under TCG software emulation because KVM cannot run guests on the node
    (node agent; KubeVirt's ``useEmulation``)."""


class Reason(StrEnum):
    """Machine-readable reasons for conditions, Events and ``exitStatus.reason``."""

    # Scheduling (operator)
    POD_PENDING = "PodPending"
    """The sandbox Pod exists but is not bound to a node yet."""
    POD_BOUND = "PodBound"
    """The sandbox Pod is bound to a node."""
    UNSCHEDULABLE = "Unschedulable"
    """kube-scheduler cannot place the sandbox Pod (resources, selectors, taints, quota)."""
    NO_NODE_AGENT = "NoNodeAgent"
    """No live node agent Lease exists for the node the Pod is bound to."""
    NODE_LOST = "NodeLost"
    """The node agent's Lease expired while the sandbox was placed there."""
    # Validation beyond the schema (operator)
    SECRET_NOT_FOUND = "SecretNotFound"
    """A referenced Secret or Secret key does not exist."""
    CONFIG_MAP_NOT_FOUND = "ConfigMapNotFound"
    """A referenced ConfigMap or ConfigMap key does not exist."""
    POLICY_VIOLATION = "PolicyViolation"
    """The spec asks for something the cluster policy forbids (for example a host path)."""
    SECRET_VIOLATION = "SecretViolation"
    """The guest sent a secret's placeholder where it may not go; with ``violationAction:
    BlockAndTerminate`` the sandbox was stopped for it."""
    FORK_SOURCE_NOT_READY = "ForkSourceNotReady"
    """``image.sandbox`` names a Sandbox that does not exist, is not Running, Paused or
    Suspended, is on no node, or does not match the fork (cpus, memory, network)."""
    SNAPSHOT_NOT_READY = "SnapshotNotReady"
    """``image.snapshot`` names a SandboxSnapshot that does not exist or is not Ready."""
    FORKED = "Forked"
    """The sandbox started from another sandbox's live state (node agent)."""
    FORK_FAILED = "ForkFailed"
    """The source's state could not be taken or the fork could not be started from it."""
    # Image (node agent)
    RESOLVING = "Resolving"
    """Resolving the reference to a manifest digest."""
    PULLING = "Pulling"
    """Fetching layers."""
    PULLED = "Pulled"
    """Every layer is cached and the digests are pinned."""
    IMAGE_NOT_FOUND = "ImageNotFound"
    """The registry does not know the reference."""
    IMAGE_PULL_FAILED = "ImagePullFailed"
    """The registry could not be reached or refused the credentials."""
    IMAGE_NOT_CACHED = "ImageNotCached"
    """Pull policy Never, and the image is not cached on the node."""
    INVALID_IMAGE = "InvalidImage"
    """The image or a layer is malformed or hostile (bad digest, path escape, size bounds)."""
    ROOTFS_FAILED = "RootfsFailed"
    """The writable layer could not be built (for example a patch failed)."""
    # VM and agent (node agent)
    BOOTING = "Booting"
    """QEMU started; waiting for the guest agent."""
    AGENT_READY = "AgentReady"
    """The guest agent sent its ready frame."""
    BOOT_TIMEOUT = "BootTimeout"
    """The guest agent did not become ready within the boot watchdog."""
    KVM_UNAVAILABLE = "KVMUnavailable"
    """KVM cannot run guests on this node; software emulation is in use."""
    KVM = "KVM"
    """Hardware virtualisation is in use."""
    # Lifecycle
    RUNNING = "Running"
    """Serving commands."""
    PAUSED_BY_USER = "PausedByUser"
    """``lifecycle.state`` is Paused."""
    SUSPENDED_BY_USER = "SuspendedByUser"
    """``lifecycle.state`` is Suspended."""
    SUSPEND_FAILED = "SuspendFailed"
    """The VM's state could not be saved (or this sandbox cannot be suspended); it runs on."""
    RESUMED = "Resumed"
    """The VM was restored from its saved state."""
    RESUME_FAILED = "ResumeFailed"
    """The VM could not be restored from its saved state."""
    STOPPED_BY_USER = "StoppedByUser"
    """``lifecycle.state`` is Stopped."""
    MAX_DURATION_EXCEEDED = "MaxDurationExceeded"
    """``lifecycle.maxDurationSeconds`` expired; the sandbox drained to Stopped."""
    IDLE_TIMEOUT = "IdleTimeout"
    """``lifecycle.idleTimeoutSeconds`` expired; the sandbox drained to Stopped, or was
    suspended (``idleAction: Suspend``)."""
    WOKEN_BY_USE = "WokenByUse"
    """An idle-suspended sandbox was restored for an agent connection (exec, shell, fs)."""
    GUEST_POWER_OFF = "GuestPowerOff"
    """The guest shut itself down."""
    VMM_EXITED = "VMMExited"
    """QEMU exited unexpectedly."""
    GUEST_PANIC = "GuestPanic"
    """The guest kernel panicked."""
    OUT_OF_MEMORY = "OutOfMemory"
    """The VM was killed for exceeding its memory limit."""
    DELETING = "Deleting"
    """The Sandbox is being deleted."""
    # Warm pools (operator)
    CLAIMED = "Claimed"
    """A SandboxPool's booted VM serves the Sandbox (Event on the Sandbox)."""
    POOL_FILLED = "PoolFilled"
    """Every wanted member of the SandboxPool is Running."""
    POOL_FILLING = "PoolFilling"
    """Members of the SandboxPool are still being created or booted."""


class ConditionStatus(StrEnum):
    """The three values of a condition's ``status``."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"
