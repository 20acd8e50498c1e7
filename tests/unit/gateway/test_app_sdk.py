"""The real microsandbox SDK (0.7.11, cloud backend) against the gateway: the oracle.

The gateway serves on a real port with the real :mod:`translate`, in front of the fake
apiserver; a tiny stand-in for the operator moves each Sandbox to the phase its
``lifecycle.state`` asks for (or ``Failed`` for the image ``nope``). The SDK runs in a child
process (its cloud backend is chosen from the environment once per process) and reports what
each call returned or raised. tests/e2e drives the same SDK against real VMs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import sys
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from kubesandbox_gateway.app import Gateway
from kubesandbox_gateway.routes import make_app
from kubesandbox_protocol.frame import FLAG_TERMINAL, FrameDecoder
from kubesandbox_protocol.messages import MessageType, decode_body, message_frame
from tests.unit.gateway import fakes
from tests.unit.gateway.conftest import SA_TOKEN, announce_node_agent, gateway_logs

SECRET_VALUE = "sk-sdk-secret-value-do-not-log"
SCRIPT = """
import asyncio, json, os
from microsandbox import (
    InvalidConfigError, MicrosandboxError, Sandbox, SandboxAlreadyExistsError,
    SandboxNotFoundError, Secret,
)

async def outcome(call):
    try:
        value = await call
    except MicrosandboxError as error:
        return {"error": type(error).__name__, "message": str(error)}
    return {"ok": value}

async def main():
    out = {}
    created = await Sandbox.create(
        "sdk-one", image="python", env={"A": "1"}, workdir="/app",
        secrets=[Secret.env("API_KEY", value=%(secret)r, allow=["api.example.com"])],
    )
    page = await Sandbox.list()
    out["listed"] = sorted(h.name for h in page.sandboxes)
    handle = await Sandbox.get("sdk-one")
    out["status"] = str(handle.status)
    out["id"] = handle.id
    out["config"] = json.loads(handle.config_json)
    out["duplicate"] = await outcome(Sandbox.create("sdk-one", image="python"))
    out["ghost"] = await outcome(Sandbox.get("ghost"))
    out["doomed"] = await outcome(Sandbox.create("doomed", image="nope"))
    out["invalid"] = await outcome(Sandbox.create("sdk-two", image="python", cpus=100))
    ran = await created.exec("echo", ["hello", "through", "the", "pipe"])
    out["exec"] = {"stdout": ran.stdout_text, "code": ran.exit_code}
    await created.stop()
    out["stopped"] = str((await Sandbox.get("sdk-one")).status)
    await Sandbox.remove("sdk-one")
    out["removed"] = await outcome(Sandbox.get("sdk-one"))
    print(json.dumps(out, default=str), flush=True)

asyncio.run(main())
# The SDK's runtime threads can panic while the interpreter finalizes (seen ~1 run in 10,
# after every call had returned): leave without finalizing, the result is out.
os._exit(0)
"""


async def fake_relay(request: web.Request) -> web.WebSocketResponse:
    """A node agent relay with a guest that runs ``echo``: greeting, then exec sessions.

    Output frames are sent split across two WebSocket messages, as a byte stream may be."""
    assert request.headers["Authorization"] == f"Bearer {SA_TOKEN}"
    ws = web.WebSocketResponse(max_msg_size=16 << 20)
    await ws.prepare(request)
    ready = message_frame(
        0, MessageType.READY, {"boot_time_ns": 1, "init_time_ns": 2, "ready_time_ns": 3}
    )
    await ws.send_bytes(struct.pack(">II", 1, 1 << 24) + ready.encode())
    decoder = FrameDecoder()
    async for message in ws:
        if message.type != WSMsgType.BINARY:
            break
        for frame in decoder.feed(message.data):
            body = decode_body(frame.body)
            if body.t != MessageType.EXEC_REQUEST:
                continue
            text = " ".join(body.payload["args"]).encode() + b"\n"
            out = b"".join(
                [
                    message_frame(frame.id, MessageType.EXEC_STARTED, {"pid": 7}).encode(),
                    message_frame(frame.id, MessageType.EXEC_STDOUT, {"data": text}).encode(),
                    message_frame(
                        frame.id, MessageType.EXEC_EXITED, {"code": 0}, FLAG_TERMINAL
                    ).encode(),
                ]
            )
            await ws.send_bytes(out[:11])
            await ws.send_bytes(out[11:])
    return ws


async def play_operator(kube: fakes.FakeKube) -> None:
    """Each sandbox's phase follows its desired state, as the operator + node agent would."""
    while True:
        for (plural, _, _), obj in list(kube.objects.items()):
            if plural != "sandboxes":
                continue
            status = obj.setdefault("status", {})
            generation = obj["metadata"]["generation"]
            if obj["spec"]["image"].get("oci") == "nope":
                status.update(phase="Failed", message="image nope: not found")
            else:
                wanted = obj["spec"].get("lifecycle", {}).get("state", "Running")
                status.update(phase=wanted, nodeName="node-1")
            status["observedGeneration"] = generation
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def serving(
    kube: fakes.FakeKube, gateway: Gateway, *background: Coroutine[Any, Any, None]
) -> AsyncIterator[str]:
    """The gateway and a fake node agent relay on loopback, with ``background`` coroutines
    (the operator's part played) running meanwhile; yields the gateway's base URL."""
    tasks = [asyncio.create_task(work) for work in background]
    relay = web.Application()
    relay.router.add_get("/v1/sandboxes/{uid}/agent", fake_relay)
    try:
        async with (
            TestServer(relay, host="127.0.0.1") as node_agent,
            TestServer(make_app(gateway), host="127.0.0.1") as server,
        ):
            announce_node_agent(kube, str(node_agent.make_url("")).rstrip("/"))
            yield str(server.make_url("")).rstrip("/")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
async def served(kube: fakes.FakeKube, auth: fakes.FakeAuth) -> AsyncIterator[str]:
    gateway = Gateway(kube, auth, poll_interval=0.02)
    async with serving(kube, gateway, play_operator(kube)) as url:
        yield url


async def run_sdk(url: str, home: Path, script: str | None = None) -> dict[str, Any]:
    """Runs ``script`` (this module's :data:`SCRIPT` by default) with the SDK's cloud backend
    on ``url``; the JSON object its last line prints."""
    env = {
        "MSB_BACKEND": "cloud",
        "MSB_API_URL": url,
        "MSB_API_KEY": SA_TOKEN,
        "HOME": str(home),
        "PATH": "/usr/bin:/bin",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SCRIPT % {"secret": SECRET_VALUE} if script is None else script,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, (stdout.decode()[-2000:], stderr.decode()[-3000:])
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    assert isinstance(result, dict)
    return result


async def test_the_sdk_drives_sandboxes_through_the_gateway(
    served: str, kube: fakes.FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with gateway_logs(monkeypatch) as logs:
        out = await run_sdk(f"{served}/ns/team-a", tmp_path)  # MSB_API_URL with the prefix
    assert out["listed"] == ["sdk-one"]
    created = {e["name"]: e["uid"] for e in logs if e["event"] == "sandbox created"}
    assert out["id"].endswith(created["sdk-one"])  # the msb id is metadata.uid
    assert out["status"].lower().endswith("running")
    assert out["config"]["runtime"]["workdir"] == "/app"
    assert {"key": "A", "value": "1"} in out["config"]["env"]
    assert SECRET_VALUE not in json.dumps(out["config"])
    assert out["duplicate"]["error"] == "SandboxAlreadyExistsError"
    assert out["ghost"]["error"] == "SandboxNotFoundError"
    assert out["doomed"]["error"] == "MicrosandboxError"
    assert "image nope: not found" in out["doomed"]["message"]
    assert out["invalid"]["error"] == "InvalidConfigError"
    assert "resources.vcpus" in out["invalid"]["message"]
    assert out["exec"] == {"stdout": "hello through the pipe\n", "code": 0}
    assert out["stopped"].lower().endswith("stopped")
    assert out["removed"]["error"] == "SandboxNotFoundError"
    # The secret reached a Secret object only, never a log line.
    secrets = [obj for (kind, _, _), obj in kube.objects.items() if kind == "secrets"]
    assert any(SECRET_VALUE in json.dumps(s.get("stringData", {})) for s in secrets)
    assert SECRET_VALUE not in repr(logs)
    assert any(entry["event"] == "create requested" for entry in logs)
    paths = [entry["path"] for entry in logs if entry["event"] == "request"]
    assert paths
    assert all(path.startswith("/ns/team-a/v1/sandboxes") for path in paths)
    # (The agent socket is logged when it closes, which the SDK may do only at exit.)
