"""A node agent that speaks the contract of docs/node-agent-api.md and does nothing else.

It lets the operator's integration tests run without VMs: it records every request, answers
PUT with the desired state's UID, reports removal as in progress once before it is done, and
answers a claim of a pool VM as the real one reports the claimed VM (or refuses it with 409
while ``refuse_claims`` is set).
The tests play the node agent's status writes themselves (server-side apply as
``kubesandbox-node-agent``).
"""

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Request:
    method: str
    uid: str
    authorization: str
    body: dict[str, Any] | None


@dataclass
class FakeNodeAgent:
    token: str
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    refuse_claims: bool = False
    _deleting: set[str] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def puts(self, uid: str) -> list[Request]:
        return [r for r in self.requests if r.method == "PUT" and r.uid == uid]

    def claims(self, member_uid: str) -> list[Request]:
        return [r for r in self.requests if r.method == "CLAIM" and r.uid == member_uid]

    async def _claim(self, request: web.Request) -> web.Response:
        body = await request.json()
        uid = request.match_info["uid"]
        self.requests.append(Request("CLAIM", uid, request.headers.get("Authorization", ""), body))
        if self.refuse_claims:
            return web.json_response({"message": "refused by the test"}, status=409)
        connected = {"type": "AgentConnected", "status": "True", "reason": "AgentReady"}
        return web.json_response({"phase": "Running", "pool": body["pool"],
                                  "conditions": [connected]})  # fmt: skip

    def deletes(self, uid: str) -> list[Request]:
        return [r for r in self.requests if r.method == "DELETE" and r.uid == uid]

    async def _put(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "unauthorized"}, status=401)
        body = await request.json()
        uid = request.match_info["uid"]
        self.requests.append(Request("PUT", uid, request.headers["Authorization"], body))
        return web.json_response({"uid": uid, "phase": "Pulling"})

    async def _delete(self, request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        self.requests.append(Request("DELETE", uid, request.headers.get("Authorization", ""), None))
        if uid not in self._deleting:
            self._deleting.add(uid)
            return web.Response(status=202)
        return web.Response(status=204)

    def start(self) -> None:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_put("/v1/sandboxes/{uid}", self._put)
            app.router.add_delete("/v1/sandboxes/{uid}", self._delete)
            app.router.add_post("/v1/sandboxes/{uid}/claim", self._claim)
            self._runner = web.AppRunner(app)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = int(self._runner.addresses[0][1])
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-node-agent", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake node agent did not start")

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
