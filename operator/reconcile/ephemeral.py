"""When an ephemeral Sandbox has served its purpose.

microsandbox removes an ephemeral sandbox as soon as it stops (``msb run IMAGE -- CMD``
creates one, runs the command, stops it and exits without deleting it). Here the Sandbox
object is the sandbox, so "removed" means the object is deleted; its finalizer then has the
node agent remove the VM's files, as for any delete.

Only ``Stopped`` counts, and only after the sandbox has run (``status.startedAt``): a sandbox
created stopped (``start=false``) has not been used yet, and a ``Crashed`` or ``Failed`` one is
kept so that its reason can be read (``kubectl describe``); deleting it is the user's call.

Not at once, though: after ``stop`` the SDK polls ``GET by-name`` (every ~100 ms) until it
reads ``stopped``, and a 404 there fails the user's ``stop`` with ``SandboxNotFoundError``
(observed with 0.7.11, docs/msb-compat.md). So the Sandbox is deleted ``GRACE_SECONDS`` after
``status.stoppedAt``: long after the SDK has seen it stopped, and soon enough that nothing is
left behind.
"""

from datetime import datetime

from kubesandbox_api import Sandbox
from kubesandbox_api.conditions import Phase

GRACE_SECONDS = 5.0


def done(sandbox: Sandbox) -> bool:
    """True when ``sandbox`` is ephemeral, has run, and is now Stopped (and not yet deleted)."""
    if not sandbox.spec.lifecycle.ephemeral or sandbox.metadata.get("deletionTimestamp"):
        return False
    status = sandbox.status
    return status is not None and status.phase == Phase.STOPPED and status.started_at is not None


def delete_in(sandbox: Sandbox, now: datetime) -> float | None:
    """Seconds until a :func:`done` sandbox should be deleted (0: now); ``None``: never."""
    if not done(sandbox):
        return None
    assert sandbox.status is not None
    stopped = sandbox.status.stopped_at
    if stopped is None:
        return GRACE_SECONDS
    return max(0.0, GRACE_SECONDS - (now - stopped).total_seconds())
