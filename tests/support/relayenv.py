"""A relay in front of the fake guest, for unit tests of the relay and the client."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from kubesandbox_node.relay import Relay
from tests.support.fakeguest import FakeGuest, guest_pair


@dataclass
class RelayEnv:
    relay: Relay
    guest: FakeGuest
    socket: Path


@contextlib.asynccontextmanager
async def relay_env(**options: float) -> AsyncIterator[RelayEnv]:
    # unix socket paths are limited to 108 bytes: pytest's tmp_path can be longer
    directory = Path(tempfile.mkdtemp(prefix="ksb-relay-"))
    guest, reader, writer = await guest_pair()
    relay = Relay(directory / "agent.sock", **options)  # type: ignore[arg-type]
    await relay.start()
    guest_task = asyncio.create_task(guest.run())
    relay_task = asyncio.create_task(relay.serve_guest(reader, writer))
    try:
        await relay.wait_ready()
        yield RelayEnv(relay, guest, directory / "agent.sock")
    finally:
        await relay.close()
        await relay_task
        guest.writer.close()
        with contextlib.suppress(ConnectionError):
            await guest.writer.wait_closed()
        await guest_task
        shutil.rmtree(directory, ignore_errors=True)
