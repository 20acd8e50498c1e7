"""What goes into the sandbox log, and from where.

- :class:`SessionRecorder` sees every frame the relay passes. A client's ``core.exec.request``
  (SESSION_START) opens a session: a ``system`` line names the program (its arguments are not
  logged: they may carry credentials), and whether it has a terminal decides the source of its
  output (``output`` with one, else ``stdout``/``stderr``). The guest's ``core.exec.stdout`` /
  ``stderr`` frames of that session are recorded as they pass, whether or not a client still
  listens; ``core.exec.exited`` / ``failed`` end it with a ``system`` line. Other sessions (fs,
  tcp) are not logged. At most ``MAX_SESSIONS`` sessions are tracked (oldest forgotten first):
  a guest that never ends its sessions cannot grow the table.
- :class:`SandboxLogs` holds one :class:`ExecLog` per sandbox of this node, writes a ``system``
  line at each phase the supervisor reports (with its message), attaches a recorder to each
  relay as the VM comes up (boot or re-adoption), and closes the log when the sandbox is
  removed (its files, the log with them, are deleted by the supervisor).

Only the relay's frame headers are read on the hot path; a body is decoded only for the frames
of exec sessions (SESSION_START requests, and guest frames of a tracked session).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from pathlib import Path

from kubesandbox_node.logs.execlog import ExecLog, Source
from kubesandbox_protocol.frame import FLAG_SESSION_START, FLAG_TERMINAL
from kubesandbox_protocol.messages import BodyError, MessageType, decode_body

MAX_SESSIONS = 4096
LOG_FOLDER = "log"


class SessionRecorder:
    def __init__(self, log: ExecLog) -> None:
        self.log = log
        self.sessions: OrderedDict[int, Source | None] = OrderedDict()
        """Session id → the source of its stdout (``None``: stdout/stderr as they come)."""

    def client_frame(self, raw: bytes) -> None:
        if len(raw) < 9 or not raw[8] & FLAG_SESSION_START:
            return
        (id,) = struct.unpack_from(">I", raw, 4)
        try:
            body = decode_body(raw[9:])
        except BodyError:
            return
        if body.t != MessageType.EXEC_REQUEST:
            return
        tty = body.payload.get("tty") is True
        self.sessions[id] = Source.OUTPUT if tty else None
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        program = str(body.payload.get("cmd") or "")[:256]
        terminal = " with a terminal" if tty else ""
        self.log.system(f"session {id}: exec {program}{terminal}")

    def guest_frame(self, raw: bytes) -> None:
        if len(raw) < 9:
            return
        (id,) = struct.unpack_from(">I", raw, 4)
        if id not in self.sessions:
            return
        try:
            body = decode_body(raw[9:])
        except BodyError:
            return
        merged = self.sessions[id]
        if body.t in (MessageType.EXEC_STDOUT, MessageType.EXEC_STDERR):
            data = body.payload.get("data")
            if isinstance(data, bytes):
                own = Source.STDOUT if body.t == MessageType.EXEC_STDOUT else Source.STDERR
                self.log.append(merged or own, data, session=id)
        elif body.t == MessageType.EXEC_EXITED:
            self.log.system(f"session {id}: exited with code {body.payload.get('code')}")
        elif body.t == MessageType.EXEC_FAILED:
            kind, message = body.payload.get("kind"), str(body.payload.get("message") or "")
            self.log.system(f"session {id}: failed ({kind}): {message[:500]}")
        if raw[8] & FLAG_TERMINAL:
            self.sessions.pop(id, None)


class SandboxLogs:
    """The logs of this node's sandboxes, by uid."""

    def __init__(self) -> None:
        self._logs: dict[str, ExecLog] = {}
        self._phases: dict[str, str] = {}

    def open(self, uid: str, sandbox_dir: Path) -> ExecLog:
        log = self._logs.get(uid)
        if log is None:
            log = ExecLog(sandbox_dir / LOG_FOLDER)
            self._logs[uid] = log
        return log

    def get(self, uid: str) -> ExecLog | None:
        return self._logs.get(uid)

    def phase(self, uid: str, sandbox_dir: Path, phase: str, message: str | None) -> None:
        """A ``system`` line when ``phase`` differs from the last one seen."""
        if self._phases.get(uid) == phase:
            return
        self._phases[uid] = phase
        detail = f": {message[:500]}" if message else ""
        self.open(uid, sandbox_dir).system(f"sandbox {phase}{detail}")

    def recorder(self, uid: str, sandbox_dir: Path) -> SessionRecorder:
        return SessionRecorder(self.open(uid, sandbox_dir))

    def forget(self, uid: str) -> None:
        log = self._logs.pop(uid, None)
        self._phases.pop(uid, None)
        if log is not None:
            log.close()
