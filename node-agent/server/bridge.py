"""The agent WebSocket as a client of the sandbox's relay, in the node agent's own process.

The relay serves it exactly as it serves a client of its unix socket (greeting, slot, frame
checks, the outbox bound, the disconnect notice to the guest; ``Relay.attach``), without a
round trip through that socket: every exec through the API used to cross it twice per frame.

Both directions stay bounded. Client to guest: the WebSocket's messages go into a
``StreamReader`` whose flow control (:class:`_Gate`) stops this handler from reading the next
message while more than twice ``limit`` bytes wait for the relay, which reads only as fast as
the guest channel drains. Guest to client: the relay's per-client outbox, drained by sending
one WebSocket message per write.
"""

from __future__ import annotations

import asyncio

from aiohttp import WSMsgType, web

from kubesandbox_node.relay.relay import Relay

READ_LIMIT = 1 << 20


class _Gate(asyncio.ReadTransport):
    """The transport a fed ``StreamReader`` pauses when its buffer is full and resumes once
    the relay read it down: here, whether the handler may take the next message."""

    def __init__(self) -> None:
        super().__init__()
        self._open = asyncio.Event()
        self._open.set()

    def pause_reading(self) -> None:
        self._open.clear()

    def resume_reading(self) -> None:
        self._open.set()

    def is_reading(self) -> bool:
        return self._open.is_set()

    async def wait(self) -> None:
        await self._open.wait()


class AgentBridge:
    """One agent WebSocket (already prepared) served by one relay; also the relay's
    ``ClientWriter`` for it."""

    def __init__(self, ws: web.WebSocketResponse, *, limit: int = READ_LIMIT) -> None:
        self.ws = ws
        self.reader = asyncio.StreamReader(limit=limit)
        self._gate = _Gate()
        self.reader.set_transport(self._gate)
        self._ended = False
        self._pending: list[bytes] = []

    # --- ClientWriter ----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self._pending.append(data)

    async def drain(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            await self.ws.send_bytes(data)

    def close(self) -> None:
        self._end()

    def abort(self) -> None:
        self._end()

    # --- the connection --------------------------------------------------------------------

    def _end(self) -> None:
        """No more client bytes for the relay; whoever waits on the gate goes on."""
        if not self._ended:
            self._ended = True
            self.reader.feed_eof()
        self._gate.resume_reading()

    async def serve(self, relay: Relay) -> None:
        """Until the client leaves or the relay ends the slot (drain, the VM gone); then the
        WebSocket is closed."""
        # the relay closes its writer (this bridge: ``_end``) whenever it stops serving
        serving = asyncio.create_task(relay.attach(self.reader, self), name="agent-bridge")
        closer = asyncio.create_task(self._close_after(serving))
        try:
            async for message in self.ws:
                if self._ended:
                    break
                if message.type == WSMsgType.BINARY:
                    self.reader.feed_data(message.data)
                    await self._gate.wait()
        except (ConnectionError, OSError):
            pass
        finally:
            self._end()
            # the relay drops the client (and tells the guest) once it reads the EOF
            await asyncio.wait({serving}, timeout=2)
            serving.cancel()
            closer.cancel()
            await asyncio.wait({serving, closer})
            await self.ws.close()

    async def _close_after(self, serving: asyncio.Task[None]) -> None:
        await asyncio.wait({serving})
        await self.ws.close()
