"""The sandbox log through the node agent's API: exec output recorded by the relay, phases as
system lines, served as the Server-Sent Events the SDK reads (fake VMM and guest)."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

from aiohttp import ClientWebSocketResponse

from kubesandbox_kube.auth import Access
from kubesandbox_protocol.frame import FLAG_SESSION_START, Frame
from kubesandbox_protocol.messages import MessageType, encode_body, exec_request
from tests.support.waiting import wait_until
from tests.unit.node.server.test_app import OPERATOR, READER, Api, api

FIXTURES = (api,)  # test_app.py's
HEADERS = {"Authorization": f"Bearer {OPERATOR}"}


def parse_events(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if fields.get("event") == "log":
            events.append({"id": fields["id"], **json.loads(fields["data"])})
    return events


async def run_echo(api: Api, uid: str, *words: str, tty: bool = False) -> None:
    async with api.client.ws_connect(f"/v1/sandboxes/{uid}/agent", headers=HEADERS) as ws:
        greeting = await read_until(ws, lambda d: len(d) >= 12)
        id_start = struct.unpack(">II", greeting[:8])[0]
        request = encode_body(MessageType.EXEC_REQUEST, exec_request("echo", list(words), tty=tty))
        await ws.send_bytes(Frame(id_start + 1, FLAG_SESSION_START, request).encode())
        await read_until(ws, lambda d: b"core.exec.exited" in d)


async def read_until(ws: ClientWebSocketResponse, done: Any) -> bytes:
    data = b""
    while not done(data):
        data += await ws.receive_bytes(timeout=5)
    return data


async def read_log(api: Api, uid: str, query: str = "", **headers: str) -> tuple[int, str]:
    """What is logged now (``follow=false``)."""
    url = f"/v1/sandboxes/{uid}/logs?follow=false&{query.lstrip('?')}"
    async with api.client.get(url, headers={**HEADERS, **headers}) as response:
        return response.status, await response.text()


async def test_exec_output_and_phases_are_logged_and_served(api: Api) -> None:
    uid = await api.running()
    await run_echo(api, uid, "hello", "log")
    status, text = await read_log(api, uid, "?sources=all")
    assert status == 200
    events = parse_events(text)
    lines = [(e["source"], e["text"]) for e in events]
    assert ("system", "sandbox Running\n") in lines
    assert ("stdout", "hello log\n") in lines
    stdout = next(e for e in events if e["source"] == "stdout")
    started = next(e for e in events if e["text"].endswith("exec echo\n"))
    assert started["source"] == "system"
    assert f"session {stdout['session_id']}: exited with code 0\n" in [e["text"] for e in events]
    assert api.auth.asked[-1] == Access("get", "team-a", subresource="log", name="hello")
    default = parse_events((await read_log(api, uid))[1])
    assert {e["source"] for e in default} == {"stdout"}  # the SDK's default: no system lines


async def test_a_terminal_session_is_output(api: Api) -> None:
    uid = await api.running()
    await run_echo(api, uid, "on", "a", "tty", tty=True)
    events = parse_events((await read_log(api, uid, "?sources=output"))[1])
    assert [e["text"] for e in events] == ["on a tty\n"]


async def test_follow_streams_new_entries_and_a_cursor_resumes(api: Api) -> None:
    uid = await api.running()
    await run_echo(api, uid, "one")
    first = parse_events((await read_log(api, uid))[1])
    assert [e["text"] for e in first] == ["one\n"]

    async def follow() -> list[dict[str, Any]]:
        url = f"/v1/sandboxes/{uid}/logs"  # follows by default, as the SDK reads it
        headers = {**HEADERS, "Last-Event-ID": first[-1]["id"]}
        async with api.client.get(url, headers=headers) as response:
            assert response.headers["Content-Type"] == "text/event-stream"
            text = ""
            while "two" not in text:
                text += (await response.content.readany()).decode()
            return parse_events(text)

    following = asyncio.create_task(follow())
    await asyncio.sleep(0.05)
    await run_echo(api, uid, "two")
    assert [e["text"] for e in await asyncio.wait_for(following, 5)] == ["two\n"]


async def test_tail_bad_queries_rights_and_removal(api: Api) -> None:
    uid = await api.running()
    for word in ("a", "b", "c"):
        await run_echo(api, uid, word)
    tail = parse_events((await read_log(api, uid, "?tail=2"))[1])
    assert [e["text"] for e in tail] == ["b\n", "c\n"]
    status, text = await read_log(api, uid, "?sources=stdin")
    assert (status, "sources: 'stdin'" in text) == (400, True)
    assert (await read_log(api, uid, "", **{"Last-Event-ID": "AA=="}))[0] == 400
    async with api.client.get(
        f"/v1/sandboxes/{uid}/logs", headers={"Authorization": f"Bearer {READER}"}
    ) as response:
        assert response.status == 403
    folder = api.services.runtime.sandboxes[uid].dir / "log"
    assert folder.is_dir()
    assert (await api.call("DELETE", f"/v1/sandboxes/{uid}"))[0] in (202, 204)

    async def removed() -> bool:
        return (await read_log(api, uid))[0] == 404

    await wait_until(removed, within=5, what="the sandbox to be removed")
    assert not folder.exists()
