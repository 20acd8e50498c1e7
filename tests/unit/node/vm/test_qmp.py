import asyncio
import json
import tempfile
from pathlib import Path

import pytest

from kubesandbox_node.vm.qmp import QMPClient, QMPError


async def _fake_qmp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b'{"QMP": {"version": {}, "capabilities": []}}\n')
    while line := await reader.readline():
        request = json.loads(line)
        # an event always arrives before the answer, as QEMU may do
        writer.write(b'{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 0}}\n')
        if request["execute"] == "query-status":
            answer = {"return": {"status": "paused"}, "id": request["id"]}
        elif request["execute"] == "broken":
            answer = {"error": {"class": "GenericError", "desc": "no"}, "id": request["id"]}
        else:
            answer = {"return": {}, "id": request["id"]}
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()
    writer.close()


async def test_answers_are_matched_by_id_and_events_are_kept() -> None:
    path = Path(tempfile.mkdtemp(prefix="ksb-qmp-")) / "qmp.sock"
    server = await asyncio.start_unix_server(_fake_qmp, path=str(path))
    try:
        qmp = await QMPClient.connect(path)
        assert await qmp.execute("query-status") == {"status": "paused"}
        with pytest.raises(QMPError, match="GenericError"):
            await qmp.execute("broken")
        assert (await qmp.events.get())["event"] == "STOP"
        await qmp.close()
    finally:
        server.close()
        await server.wait_closed()
