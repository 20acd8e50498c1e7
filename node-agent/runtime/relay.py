"""The sandbox's relay: ``kubesandbox_node.relay.Relay`` plus what lifecycle needs.

- **Sessions in flight.** A client frame with SESSION_START opens a session (an exec, an fs
  operation, a tcp connect); the guest's TERMINAL frame on that id closes it; a client that
  disconnects closes all of its own. Drain waits on this count.
- **Drain.** New connections are closed at once and new sessions on existing connections are
  answered with ``core.error`` (``invalid_session``, "draining"); frames of sessions already
  running pass, so running commands finish and their output arrives.
- **Re-adoption.** The guest agent sends ``core.ready`` again whenever a host (re)connects
  its port (docs/guest-agent.md), after any output it queued meanwhile; the base relay drops
  frames before the ready. A relay made for re-adoption (``adopting=True``) first tells the
  guest that every client of the previous node agent is gone (one
  ``core.relay.client.disconnected`` over the whole id space, so orphaned sessions are killed
  and their ids cannot collide with new clients'), then admits clients. Should the guest not
  notice the reconnect, ``assume_ready`` installs the recorded ready frame instead. A repeated
  ``core.ready`` after the first is never routed to a client.
- **Activity.** ``idle_seconds`` is 0 while sessions are open, else time since the last frame.
- **The sandbox log.** With a ``recorder`` (:class:`kubesandbox_node.logs.SessionRecorder`),
  every client frame passed to the guest and every guest frame after the ready is shown to it
  first, so exec output is logged whether or not its client still listens.
"""

from __future__ import annotations

import asyncio
import struct
import time

from kubesandbox_node.logs import SessionRecorder
from kubesandbox_node.relay import Relay
from kubesandbox_node.relay.relay import SLOT_COUNT, SLOT_STEP, ClientWriter, _Client
from kubesandbox_protocol.frame import FLAG_SESSION_START, FLAG_TERMINAL, Frame
from kubesandbox_protocol.messages import (
    BodyError,
    ErrorKind,
    MessageType,
    decode_envelope,
    encode_body,
)


def _is_ready(raw: bytes) -> bool:
    try:
        return decode_envelope(raw[9:])[1] == MessageType.READY
    except BodyError:
        return False


class SandboxRelay(Relay):
    def __init__(self, *args: object, adopting: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.adopting = adopting
        self.draining = False
        self.sessions: set[int] = set()
        self._sessions_changed = asyncio.Event()
        self.recorder: SessionRecorder | None = None

    def assume_ready(self, raw_ready: bytes) -> None:
        if not self._ready.done():
            self._ready.set_result(raw_ready)

    async def send_to_guest(self, raw: bytes) -> None:
        """A frame of the node agent's own (``core.shutdown``) on the guest channel."""
        await super()._to_guest(raw)

    def start_draining(self) -> None:
        self.draining = True
        self._sessions_changed.set()

    def touch(self) -> None:
        """Counts as activity now: a run's idle time starts when its guest agent is ready,
        not when QEMU started (a boot on a busy node can take longer than the timeout)."""
        self.last_activity = time.monotonic()

    @property
    def idle_seconds(self) -> float:
        if self.sessions:
            return 0.0
        return max(0.0, time.monotonic() - self.last_activity)

    async def wait_sessions_done(self) -> None:
        while self.sessions:
            self._sessions_changed.clear()
            await self._sessions_changed.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: ClientWriter) -> None:
        if self.draining:
            writer.close()
            return
        await super()._serve(reader, writer)

    async def _to_guest(self, raw: bytes) -> None:
        (id,) = struct.unpack_from(">I", raw, 4)
        flags = raw[8]
        if flags & FLAG_SESSION_START and id != 0:
            client = self._slots.get(id // SLOT_STEP)
            if self.draining and client is not None:
                await self._reject(client, id, ErrorKind.INVALID_SESSION, "the sandbox is draining")
                return
            self.sessions.add(id)
        if self.recorder is not None:
            self.recorder.client_frame(raw)
        await super()._to_guest(raw)

    async def _from_guest(self, raw: bytes) -> None:
        if _is_ready(raw):
            if self._ready.done():
                return
            if self.adopting:
                everyone = {"id_start": 0, "id_end_exclusive": SLOT_COUNT * SLOT_STEP}
                body = encode_body(MessageType.RELAY_CLIENT_DISCONNECTED, everyone)
                await super()._to_guest(Frame(0, 0, body).encode())
        elif self.recorder is not None and self._ready.done():
            self.recorder.guest_frame(raw)
        await super()._from_guest(raw)
        if len(raw) > 8 and raw[8] & FLAG_TERMINAL:
            (id,) = struct.unpack_from(">I", raw, 4)
            if id in self.sessions:
                self.sessions.discard(id)
                self._sessions_changed.set()

    async def _drop_client(self, client: _Client, *, notify_guest: bool) -> None:
        gone = {id for id in self.sessions if client.id_start <= id < client.id_end}
        if gone:
            self.sessions -= gone
            self._sessions_changed.set()
        await super()._drop_client(client, notify_guest=notify_guest)
