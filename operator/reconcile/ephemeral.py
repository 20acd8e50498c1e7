"""When an ephemeral Sandbox has served its purpose.

microsandbox removes an ephemeral sandbox as soon as it stops (``msb run IMAGE -- CMD``
creates one, runs the command, stops it and exits without deleting it). Here the Sandbox
object is the sandbox, so "removed" means the object is deleted; its finalizer then has the
node agent remove the VM's files, as for any delete.

Only ``Stopped`` counts, and only after the sandbox has run (``status.startedAt``): a sandbox
created stopped (``start=false``) has not been used yet, and a ``Crashed`` or ``Failed`` one is
kept so that its reason can be read (``kubectl describe``); deleting it is the user's call.
"""

from kubesandbox_api import Sandbox
from kubesandbox_api.conditions import Phase


def done(sandbox: Sandbox) -> bool:
    """True when ``sandbox`` is ephemeral, has run, and is now Stopped (and not yet deleted)."""
    if not sandbox.spec.lifecycle.ephemeral or sandbox.metadata.get("deletionTimestamp"):
        return False
    status = sandbox.status
    return status is not None and status.phase == Phase.STOPPED and status.started_at is not None
