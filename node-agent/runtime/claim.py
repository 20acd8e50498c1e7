"""The ``kubesandbox.claim`` payload: what a pool VM takes on when a Sandbox claims it.

Built from the claimant's desired state exactly as the boot configuration would be (the same
environment, :func:`hostname_of`), plus a fresh identity: a random machine-id and entropy for
the guest's pool, so that two VMs booted from one template share nothing after their claims.
Scripts replace the template's under ``/.msb/scripts``. Next: ``supervisor.Supervisor.claim``
sends it through the VM's relay.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from kubesandbox_node.runtime.model import DesiredSandbox

ENTROPY_BYTES = 64


def hostname_of(desired: DesiredSandbox) -> str:
    """``spec.hostname``, else the Sandbox's name cut to a DNS label."""
    return desired.spec.hostname or desired.name[:63].strip("-.") or "sandbox"


def claim_payload(desired: DesiredSandbox, env: list[str]) -> dict[str, Any]:
    return {
        "env": env,
        "hostname": hostname_of(desired),
        "machine_id": uuid.uuid4().hex,
        "entropy": os.urandom(ENTROPY_BYTES),
        "scripts": [
            {"name": name, "content": content.encode()}
            for name, content in sorted(desired.spec.scripts.items())
        ],
    }
