"""The sandbox log (microsandbox's ``exec.log``): :mod:`.execlog` stores it, bounded and
rotated per sandbox; :mod:`.recorder` fills it from the relay's frames and the phases."""

from kubesandbox_node.logs.execlog import Entry, ExecLog, Position, Source
from kubesandbox_node.logs.recorder import SandboxLogs, SessionRecorder

__all__ = ["Entry", "ExecLog", "Position", "SandboxLogs", "SessionRecorder", "Source"]
