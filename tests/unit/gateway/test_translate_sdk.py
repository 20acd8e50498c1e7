"""The real microsandbox SDK decodes what :func:`translate.sandbox_object` writes.

The SDK's decoder is the judge of the Sandbox JSON, and it fails in two ways the unit tests in
test_translate.py can only describe: a value outside its enums fails a whole response (a whole
list page), and a ``spec`` it cannot parse is dropped silently, after which a reconnected
handle runs commands as root in ``/`` with no environment. So here the unmodified SDK (cloud
backend) talks to a loopback stand-in that serves our objects, lists and gets every one, and
reconnects to the running ones: the exec request it then sends must carry the sandbox's shell,
env, workdir and user. The stand-in's agent WebSocket answers each exec with exit code 0.
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import microsandbox
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from kubesandbox_gateway.translate import InvalidConfig, sandbox_from_create, sandbox_object
from kubesandbox_protocol.frame import FLAG_TERMINAL, FrameDecoder, encode_frame
from kubesandbox_protocol.messages import decode_body, encode_body

BODIES = Path(__file__).parent / "bodies"
PHASES = [None, "Pending", "Scheduled", "Booting", "Running", "Paused", "Draining", "Stopped"]
PHASES += ["Suspending", "Suspended", "Resuming", "Crashed", "Failed", "SomeFuturePhase"]
JsonDict = dict[str, Any]


def objects() -> list[JsonDict]:
    """One Sandbox per accepted fixture and phase, plus roots made with kubectl."""
    out: list[JsonDict] = []
    for path in sorted(BODIES.glob("*.json")):
        try:
            t = sandbox_from_create(json.loads(path.read_text()), secret_name="s")
        except InvalidConfig:
            continue
        for phase in PHASES:
            status = {"phase": phase, "startedAt": "2026-11-22T14:00:05.5+00:00"} if phase else {}
            if phase in ("Crashed", "Failed"):
                status["message"] = "guest panicked"
            out.append(sandbox(f"{t.name}-{len(out)}", t.spec, status, t.labels, t.annotations))
    fork = {"sandbox": {"name": "origin"}}
    pinned: JsonDict = {"phase": "Running", "image": {"reference": "busybox:1.36"}}
    roots: list[tuple[JsonDict, JsonDict]] = [
        ({"bind": {"path": "/srv/root"}}, {"phase": "Running"}),
        ({"disk": {"path": "/i.qcow2"}}, {"phase": "Running"}),
        (fork, pinned),  # a fork shows its source's image
        (fork, {"phase": "Pending"}),  # ... once known
    ]
    for image, observed in roots:
        env = [
            {"name": "E", "value": "1"},
            {"name": "S", "valueFrom": {"secretKeyRef": {"name": "x", "key": "y"}}},
        ]
        spec = {"image": image, "workdir": "/w", "user": "1000", "env": env}
        out.append(sandbox(f"root-{len(out)}", spec, observed, {}, {}))
    return [sandbox_object(item) for item in out]


def sandbox(
    name: str, spec: JsonDict, status: JsonDict, labels: JsonDict, annotations: JsonDict
) -> JsonDict:
    return {
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "uid": f"00000000-0000-4000-8000-{len(name):012d}{name[-4:]}",
            "creationTimestamp": "2026-11-22T14:00:00Z",
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec,
        "status": status,
    }


class StandIn:
    """Serves the objects by name and in one list page; records exec requests."""

    def __init__(self, items: list[JsonDict]) -> None:
        self.items = {item["name"]: item for item in items}
        self.by_id = {item["id"]: item for item in items}
        self.execs: list[JsonDict] = []
        self.app = web.Application()
        self.app.router.add_get("/v1/sandboxes", self.list)
        self.app.router.add_get("/v1/sandboxes/by-name/{name}", self.get)
        self.app.router.add_get("/v1/sandboxes/{id}/agent", self.agent)

    async def list(self, request: web.Request) -> web.Response:
        return web.json_response({"data": list(self.items.values()), "next_cursor": None})

    async def get(self, request: web.Request) -> web.Response:
        item = self.items.get(request.match_info["name"])
        if item is None:
            error = {"code": "sandbox_not_found", "message": "no such sandbox"}
            return web.json_response({"error": error}, status=404)
        return web.json_response(item)

    async def agent(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        ready = encode_body(
            "core.ready", {"boot_time_ns": 1, "init_time_ns": 1, "ready_time_ns": 1}
        )
        await ws.send_bytes(struct.pack(">II", 0, 0xFFFFFFFF // 128) + encode_frame(0, 0, ready))
        decoder = FrameDecoder()
        async for message in ws:
            if message.type != WSMsgType.BINARY:
                break
            for frame in decoder.feed(message.data):
                decoded = decode_body(frame.body)
                if decoded.t != "core.exec.request":
                    continue
                self.execs.append(decoded.payload)
                started = encode_body("core.exec.started", {"pid": 7})
                await ws.send_bytes(encode_frame(frame.id, 0, started))
                exited = encode_body("core.exec.exited", {"code": 0})
                await ws.send_bytes(encode_frame(frame.id, FLAG_TERMINAL, exited))
        return ws


@pytest.fixture
async def stand_in() -> AsyncIterator[StandIn]:
    """The SDK's cloud backend pointed at the stand-in for the test. A backend scope, not the
    MSB_* variables: the SDK reads those once per process, and another test of the session
    may already have made it choose its backend."""
    server_side = StandIn(objects())
    server = TestServer(server_side.app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    try:
        with microsandbox.backend_scope(
            microsandbox.BackendKind.CLOUD, url=url, api_key="test-token"
        ):
            yield server_side
    finally:
        await server.close()


async def test_the_sdk_decodes_every_object_and_reconnects_with_its_runtime(
    stand_in: StandIn,
) -> None:
    page = await microsandbox.Sandbox.list()
    assert len(page.sandboxes) == len(stand_in.items) > 100

    reconnected = 0
    for name, item in stand_in.items.items():
        handle = await microsandbox.Sandbox.get(name)
        assert str(handle.status.value) in {
            "created",
            "starting",
            "running",
            "draining",
            "stopped",
            "crashed",
        }
        assert json.loads(handle.config_json) == item["spec"]
        if item["status"] != "running":
            continue
        sandbox = await handle.connect()
        output = await sandbox.shell("echo hi")
        assert output.exit_code == 0
        runtime, env = item["spec"]["runtime"], item["spec"]["env"]
        sent = stand_in.execs[-1]
        assert sent["cmd"] == runtime["shell"]
        assert sent["args"] == ["-c", "echo hi"]
        assert sent["env"] == [f"{e['key']}={e['value']}" for e in env]
        assert sent["cwd"] == (runtime["workdir"] or "/")
        assert sent["user"] == runtime["user"]
        reconnected += 1
    assert reconnected >= 10
    assert any(sent["env"] and sent["user"] for sent in stand_in.execs)
