"""Relays one VM's agent channel (a virtio-serial port) to many clients on a unix socket.

Each client gets one of 128 slots of ``u32::MAX // 128`` correlation ids and is greeted with
``[id_start u32 BE][id_end_exclusive u32 BE][the guest's core.ready frame]`` — what the
microsandbox SDK's ``AgentClient.connect`` expects. Frames are never rewritten: client frames
are checked (whole frame, id inside the client's range, not a relay-only message type) and
copied to the guest one at a time under a lock; guest frames are routed back by ``id // step``.

Memory is bounded both ways. Client → guest, a client is read only as fast as the guest
channel drains. Guest → client, each client has an outbox capped in bytes; when it is full the
guest reader waits (back-pressure, so the guest's own writes block) for at most
``slow_client_timeout`` and then disconnects that client rather than buffering without bound.
On disconnect the guest is told ``core.relay.client.disconnected`` with the client's id range
so that it kills that client's processes and closes its file handles.

Clients in the relay's own process (the node agent's agent WebSocket) are served by
``attach`` exactly as socket clients are (greeting, slot, checks, back-pressure, disconnect
notice), without a round trip through the socket.

Next: ``kubesandbox_node.vm`` connects this relay to QEMU's chardev socket and waits on
``wait_ready`` as its boot watchdog.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import struct
import time
from pathlib import Path
from typing import Protocol

import structlog

from kubesandbox_protocol.frame import FLAG_TERMINAL, U32_MAX, Frame, FrameError, read_raw_frame
from kubesandbox_protocol.messages import (
    BodyError,
    ErrorKind,
    MessageType,
    decode_envelope,
    encode_body,
)

SLOT_COUNT = 128
SLOT_STEP = U32_MAX // SLOT_COUNT
DEFAULT_CLIENT_BUFFER = 16 * 1024 * 1024
RELAY_ONLY_TYPES = frozenset({MessageType.RELAY_CLIENT_DISCONNECTED.value})

log = structlog.get_logger(__name__)


class RelayClosedError(ConnectionError):
    """The guest channel is gone; the relay accepts no more clients."""


class ClientWriter(Protocol):
    """Where the relay writes one client's bytes."""

    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def close(self) -> None:
        """The relay is done with the client (it then reads nothing more from it)."""

    def abort(self) -> None:
        """The relay closes: drop the client without flushing."""


class SocketWriter:
    """A unix socket client's :class:`ClientWriter`."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    def close(self) -> None:
        self._writer.close()

    def abort(self) -> None:
        self._writer.transport.abort()


class _Client:
    """One connected client: its id range and a byte-bounded outbox drained by one task."""

    def __init__(self, slot: int, writer: ClientWriter, limit: int) -> None:
        self.slot = slot
        self.id_start = slot * SLOT_STEP
        self.id_end = (slot + 1) * SLOT_STEP
        self.writer = writer
        self.limit = limit
        self.outbox: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.changed = asyncio.Condition()
        self.closed = False

    def owns(self, id: int) -> bool:
        return max(self.id_start, 1) <= id < self.id_end

    async def enqueue(self, data: bytes, patience: float) -> bool:
        """Queues ``data``; False when the client stayed too full for ``patience`` seconds."""
        async with self.changed:
            try:
                async with asyncio.timeout(patience):
                    await self.changed.wait_for(
                        lambda: (
                            self.closed
                            or self.buffered + len(data) <= self.limit
                            # one frame always fits an empty outbox, whatever its size
                            or self.buffered == 0
                        )
                    )
            except TimeoutError:
                return False
            if self.closed:
                return True
            self.outbox.append(data)
            self.buffered += len(data)
            self.changed.notify_all()
            return True

    async def drain_forever(self) -> None:
        while True:
            async with self.changed:
                await self.changed.wait_for(lambda: bool(self.outbox) or self.closed)
                if not self.outbox:
                    return
                data = self.outbox.popleft()
            self.writer.write(data)
            await self.writer.drain()
            async with self.changed:
                self.buffered -= len(data)
                self.changed.notify_all()

    async def mark_closed(self) -> None:
        async with self.changed:
            self.closed = True
            self.outbox.clear()
            self.buffered = 0
            self.changed.notify_all()


class Relay:
    """Serve clients on ``socket_path`` for the guest channel given to ``serve_guest``."""

    def __init__(
        self,
        socket_path: Path,
        *,
        client_buffer_bytes: int = DEFAULT_CLIENT_BUFFER,
        slow_client_timeout: float = 30.0,
        socket_mode: int = 0o600,
        first_slot: int = 0,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.client_buffer_bytes = client_buffer_bytes
        self.slow_client_timeout = slow_client_timeout
        self.socket_mode = socket_mode
        self.last_activity = time.monotonic()
        self.frames_to_guest = 0
        self.frames_from_guest = 0
        self.dropped_frames = 0
        self._ready: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._latest_ready = b""
        self._next_slot = first_slot % SLOT_COUNT
        self._closed = asyncio.Event()
        self._slots: dict[int, _Client] = {}
        self._guest_writer: asyncio.StreamWriter | None = None
        self._guest_lock = asyncio.Lock()
        self._server: asyncio.Server | None = None
        self._client_tasks: set[asyncio.Task[None]] = set()
        self._log = log.bind(socket=str(self.socket_path))

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(
            self._on_client, path=str(self.socket_path), limit=1 << 20
        )
        os.chmod(self.socket_path, self.socket_mode)

    async def close(self) -> None:
        if self._closed.is_set() and self._server is None:
            return
        self._closed.set()
        if not self._ready.done():
            self._ready.set_exception(RelayClosedError("relay closed before the guest was ready"))
            self._ready.exception()  # mark retrieved: nobody may be waiting
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for client in list(self._slots.values()):
            client.writer.abort()
            await self._drop_client(client, notify_guest=False)
        if self._guest_writer is not None:
            self._guest_writer.close()
        # client tasks end on their own once their sockets are gone; cancelling them would
        # make asyncio's stream callback log the cancellation as an error
        pending = [t for t in self._client_tasks if t is not asyncio.current_task()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=5)
            for task in late:
                task.cancel()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        if server is not None:
            await server.wait_closed()

    @property
    def ready_frame(self) -> bytes | None:
        return self._ready.result() if self._ready.done() and not self._ready.exception() else None

    @property
    def next_slot(self) -> int:
        return self._next_slot

    @property
    def client_count(self) -> int:
        return len(self._slots)

    async def wait_ready(self) -> bytes:
        """The guest's ``core.ready`` frame (raw bytes), once it arrived."""
        return await asyncio.shield(self._ready)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    # --- guest side ------------------------------------------------------------------------

    async def serve_guest(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        known_ready: bytes | None = None,
    ) -> None:
        """Reads guest frames until the channel ends; then closes every client.

        ``known_ready``: the guest's ready frame from an earlier connection (re-adoption).
        The agent announces itself again only when it notices the host reconnect, which a
        quick reconnect can hide from it; with the earlier frame the relay serves at once.
        """
        self._guest_writer = writer
        try:
            if known_ready is not None:
                await self._on_ready(known_ready)
            while True:
                raw = await read_raw_frame(reader)
                if raw is None:
                    self._log.info("relay.guest_eof")
                    break
                self.frames_from_guest += 1
                await self._from_guest(raw)
        except FrameError as exc:
            self._log.error("relay.guest_stream_corrupt", error=str(exc))
        except (OSError, ConnectionError) as exc:
            self._log.warning("relay.guest_channel_error", error=str(exc))
        finally:
            if not self._ready.done():
                self._ready.set_exception(RelayClosedError("guest channel closed before ready"))
                self._ready.exception()  # mark retrieved: nobody may be waiting
            await self.close()

    async def _from_guest(self, raw: bytes) -> None:
        (id,) = struct.unpack_from(">I", raw, 4)
        if id == 0 or not self._ready.done():
            try:
                _, t, _ = decode_envelope(raw[9:])
            except BodyError:
                t = ""
            if t == MessageType.READY:
                await self._on_ready(raw)
                return
            if not self._ready.done():
                # output the guest queued for a host that is gone (agent docs): not ours
                self.dropped_frames += 1
                self._log.debug("relay.frame_before_ready", type=t)
                return
        self.touch()
        client = self._slots.get(id // SLOT_STEP)
        if client is None or client.closed:
            self.dropped_frames += 1
            return
        if not await client.enqueue(raw, self.slow_client_timeout):
            self._log.warning("relay.slow_client_dropped", slot=client.slot)
            client.writer.abort()  # close() would wait to flush what it never reads
            await self._drop_client(client, notify_guest=True)

    async def _on_ready(self, raw: bytes) -> None:
        """The guest (re)announced itself. It does so on every host connect, and sessions of
        a previous host keep running until told otherwise: this relay is a new host, so no
        session the guest still has can belong to one of our clients. End them all before
        admitting anyone, or a new client could receive an orphan's output for its ids."""
        self._latest_ready = raw
        if self._ready.done():
            return
        payload = {"id_start": 0, "id_end_exclusive": U32_MAX}
        body = encode_body(MessageType.RELAY_CLIENT_DISCONNECTED, payload)
        with contextlib.suppress(RelayClosedError, OSError, ConnectionError):
            await self._to_guest(Frame(0, 0, body).encode())
        self._ready.set_result(raw)
        self._log.info("relay.guest_ready")

    async def _to_guest(self, raw: bytes) -> None:
        writer = self._guest_writer
        if writer is None or writer.is_closing():
            raise RelayClosedError("guest channel is closed")
        async with self._guest_lock:
            writer.write(raw)
            await writer.drain()
        self.frames_to_guest += 1

    # --- client side -----------------------------------------------------------------------

    def _claim_slot(self, writer: ClientWriter) -> _Client | None:
        """The next free slot after the last one given out (round robin, not lowest first):
        a slot comes back into use as late as possible, which leaves the guest time to finish
        the sessions of its previous owner before the same ids appear again."""
        for step in range(SLOT_COUNT):
            slot = (self._next_slot + step) % SLOT_COUNT
            if slot not in self._slots:
                client = _Client(slot, writer, self.client_buffer_bytes)
                self._slots[slot] = client
                self._next_slot = (slot + 1) % SLOT_COUNT
                return client
        return None

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def attach(self, reader: asyncio.StreamReader, writer: ClientWriter) -> None:
        """Serves a client of this process until either side ends it: ``reader`` holds the
        client's bytes (EOF when it is gone), ``writer`` takes the relay's. The relay's
        :meth:`close` ends it too (``writer.abort``)."""
        await self._serve(reader, writer)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve(reader, SocketWriter(writer))

    async def _serve(self, reader: asyncio.StreamReader, writer: ClientWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._client_tasks.add(task)
        try:
            await self._serve_client(reader, writer)
        finally:
            self._client_tasks.discard(task)
            writer.close()

    async def _serve_client(self, reader: asyncio.StreamReader, writer: ClientWriter) -> None:
        try:
            first_ready = await self.wait_ready()
        except RelayClosedError:
            return
        ready = self._latest_ready or first_ready
        if self._closed.is_set():
            return
        client = self._claim_slot(writer)
        if client is None:
            self._log.warning("relay.no_free_slot")
            return
        clog = self._log.bind(slot=client.slot)
        clog.debug("relay.client_connected")
        client.outbox.append(struct.pack(">II", client.id_start, client.id_end) + ready)
        client.buffered = len(client.outbox[0])
        drainer = asyncio.create_task(client.drain_forever(), name=f"relay-drain-{client.slot}")
        try:
            await self._client_reads(client, reader, clog)
        except (OSError, ConnectionError):
            pass
        finally:
            drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionError):
                await drainer
            await self._drop_client(client, notify_guest=True)
            clog.debug("relay.client_disconnected")

    async def _client_reads(
        self, client: _Client, reader: asyncio.StreamReader, clog: structlog.BoundLogger
    ) -> None:
        while not client.closed:
            try:
                raw = await read_raw_frame(reader)
            except FrameError as exc:
                clog.warning("relay.client_stream_corrupt", error=str(exc))
                await self._reject(client, 0, ErrorKind.MALFORMED_MESSAGE, str(exc))
                await self._flush(client)
                return
            if raw is None:
                return
            (id,) = struct.unpack_from(">I", raw, 4)
            if not client.owns(id):
                await self._reject(
                    client,
                    id,
                    ErrorKind.INVALID_SESSION,
                    f"id {id} is outside this client's range "
                    f"[{max(client.id_start, 1)}, {client.id_end})",
                )
                continue
            try:
                _, t, _ = decode_envelope(raw[9:])
            except BodyError:
                t = ""  # the guest judges bodies; it answers with core.error
            if t in RELAY_ONLY_TYPES:
                await self._reject(
                    client, id, ErrorKind.UNSUPPORTED_MESSAGE_TYPE, f"{t} is reserved to the relay"
                )
                continue
            self.touch()
            await self._to_guest(raw)

    async def _reject(self, client: _Client, id: int, kind: ErrorKind, message: str) -> None:
        body = encode_body(MessageType.ERROR, {"kind": kind.value, "message": message})
        await client.enqueue(Frame(id, FLAG_TERMINAL, body).encode(), self.slow_client_timeout)

    async def _flush(self, client: _Client) -> None:
        """Gives the drainer a bounded chance to deliver a last error before closing."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0), client.changed:
                await client.changed.wait_for(lambda: client.buffered == 0 or client.closed)

    async def _drop_client(self, client: _Client, *, notify_guest: bool) -> None:
        if self._slots.get(client.slot) is not client:
            return
        del self._slots[client.slot]
        await client.mark_closed()
        client.writer.close()
        if notify_guest and not self._closed.is_set():
            payload = {"id_start": client.id_start, "id_end_exclusive": client.id_end}
            body = encode_body(MessageType.RELAY_CLIENT_DISCONNECTED, payload)
            with contextlib.suppress(RelayClosedError, OSError, ConnectionError):
                await self._to_guest(Frame(0, 0, body).encode())
