"""The node agent as a process, against the real control plane, a loopback registry and real
VMs with the real guest agent: Lease, API with TokenReview/SubjectAccessReview, status written
back with server-side apply next to another field manager's condition, exec through the
WebSocket and through the relay socket with the real SDK, pause/resume, stop/start keeping
files, metrics, and restart safety: ``kill -9`` of the node agent with three running sandboxes,
then a new node agent re-adopts all of them without rebooting any; deletes leave nothing.
The agent serves HTTPS with the certificate it makes itself (``--tls auto``): every call here
trusts exactly the certificate its Lease announces, before and after the restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from microsandbox.agent import AgentClient as SdkClient

from kubesandbox_devenv import services
from kubesandbox_devenv.controlplane import ControlPlane
from kubesandbox_devenv.registry import free_port
from kubesandbox_kube import KubeClient, NotFound
from kubesandbox_kube.nodeagents import NodeAgentLease, lease_name, parse_lease
from kubesandbox_kube.paths import EVENTS, LEASES, SANDBOXES
from kubesandbox_node.runtime.cgroups import CgroupManager
from kubesandbox_protocol.frame import FLAG_SESSION_START, Frame, decode_frame
from kubesandbox_protocol.messages import MessageType, decode_body, encode_body, exec_request
from tests.integration.node.runtime.conftest import Images
from tests.support.sdk import sdk_exec

pytestmark = [pytest.mark.vm, pytest.mark.asyncio(loop_scope="module")]
SYSTEM = "kubesandbox-system"
NAMESPACE = "node-agent-test"
NODE = "node-agent-test-node"
COUNT = 3
ROLE = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: kubesandbox-node-agent-test-caller}
rules:
- apiGroups: [kubesandbox.dev]
  resources: [sandboxes]
  verbs: [get, update]
- apiGroups: [kubesandbox.dev]
  resources: [sandboxes/exec]
  verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: kubesandbox-node-agent-test-caller}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole,
          name: kubesandbox-node-agent-test-caller}
subjects:
- {kind: ServiceAccount, name: caller, namespace: kubesandbox-system}
"""


@dataclass
class Agent:
    plane: ControlPlane
    images: Images
    state: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        log = (self.state / f"agent-{self.starts}.log").open("wb")
        argv = [
            sys.executable, "-m", "kubesandbox_node",
            "--node-name", NODE, "--namespace", SYSTEM,
            "--state-dir", str(self.state / "state"), "--cache-dir", str(self.state / "cache"),
            "--listen", f"127.0.0.1:{self.port}", "--kubeconfig", str(self.plane.kubeconfig),
            "--plain-http-registries", self.images.registry.host,
            "--registry-mirrors", f"docker.io={self.images.registry.host}",
            "--guest-agent", str(self.images.agent), "--allow-emulation", "--network", "none",
            "--cgroup-parent", f"kubesandbox-test-{os.getpid()}",
            "--sample-interval", "1", "--lease-interval", "2", "--tls", "auto",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_of(self, start: int) -> str:
        return (self.state / f"agent-{start}.log").read_text()

    def log(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.state.glob("agent-*.log")))


def qemu_pids(state: Path) -> set[int]:
    return set(services.qemu_processes(str(state)))


@pytest.fixture(scope="module")
def agent(
    control_plane: ControlPlane, installed_crds: list[Path], images: Images
) -> Iterator[Agent]:
    plane = control_plane
    for ns in (SYSTEM, NAMESPACE):
        plane.kubectl("create", "namespace", ns, check=False)
    plane.kubectl("create", "serviceaccount", "caller", "-n", SYSTEM, check=False)
    plane.kubectl("create", "serviceaccount", "nobody", "-n", SYSTEM, check=False)
    plane.kubectl("apply", "-f", "-", input_text=ROLE)
    state = Path(tempfile.mkdtemp(prefix=f"ksb-na{os.getpid() % 1000}-"))
    running = Agent(plane, images, state)
    running.start()
    try:
        yield running
    finally:
        running.stop()
        for pid in qemu_pids(state):
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", str(state)], check=False)
        CgroupManager(parent=f"kubesandbox-test-{os.getpid()}").remove_parents()


@dataclass
class Api:
    agent: Agent
    http: aiohttp.ClientSession
    kube: KubeClient
    token: str
    nobody: str
    uids: dict[str, str] = field(default_factory=dict)

    async def call(
        self, method: str, path: str, token: str | None = None, **kw: Any
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        async with self.http.request(method, self.agent.url + path, headers=headers, **kw) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    async def sandbox(self, name: str) -> dict[str, Any]:
        return await self.kube.get(SANDBOXES.in_namespace(NAMESPACE).named(name))

    async def until_phase(self, name: str, phase: str, within: float = 180) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while True:
                body = await self.sandbox(name)
                if body.get("status", {}).get("phase") == phase:
                    return body
                await asyncio.sleep(0.25)

    async def desired(self, name: str) -> dict[str, Any]:
        body = await self.sandbox(name)
        return {
            "namespace": NAMESPACE, "name": name, "uid": body["metadata"]["uid"],
            "generation": body["metadata"]["generation"], "spec": body["spec"],
        }  # fmt: skip


def token(plane: ControlPlane, account: str) -> str:
    return plane.kubectl("create", "token", account, "-n", SYSTEM).stdout.strip()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api(agent: Agent) -> AsyncIterator[Api]:
    async with KubeClient.connect(agent.plane.kubeconfig) as kube:
        announced = await announced_by(agent, kube)
        assert announced.pinned_ssl is not None
        connector = aiohttp.TCPConnector(ssl=announced.pinned_ssl)
        async with aiohttp.ClientSession(connector=connector) as http:
            await healthy(agent, http)
            callers = token(agent.plane, "caller"), token(agent.plane, "nobody")
            yield Api(agent, http, kube, *callers)


async def announced_by(agent: Agent, kube: KubeClient) -> NodeAgentLease:
    """The Lease once it announces the certificate this agent made in its state directory."""
    made = agent.state / "state" / "tls" / "tls.crt"
    deadline = time.monotonic() + 180
    while True:
        try:
            lease = await kube.get(LEASES.in_namespace(SYSTEM).named(lease_name(NODE)))
            announced = parse_lease(NODE, lease)
            if made.is_file() and announced.certificate == made.read_text():
                return announced
        except NotFound:
            pass
        assert agent.process is not None
        assert agent.process.poll() is None, agent.log()
        assert time.monotonic() < deadline, agent.log()
        await asyncio.sleep(0.2)


async def healthy(agent: Agent, http: aiohttp.ClientSession) -> None:
    deadline = time.monotonic() + 180
    while True:
        try:
            async with http.get(agent.url + "/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        assert agent.process is not None
        assert agent.process.poll() is None, agent.log()
        assert time.monotonic() < deadline, agent.log()
        await asyncio.sleep(0.2)


async def test_lease_announces_the_node_agent(api: Api) -> None:
    lease = await api.kube.get(LEASES.in_namespace(SYSTEM).named(lease_name(NODE)))
    annotations = lease["metadata"]["annotations"]
    assert annotations["kubesandbox.dev/endpoint"] == api.agent.url
    assert api.agent.url.startswith("https://")
    made = (api.agent.state / "state" / "tls" / "tls.crt").read_text()
    assert annotations["kubesandbox.dev/tls-certificate"] == made
    assert len(annotations["kubesandbox.dev/tls-certificate-sha256"]) == 64
    assert annotations["kubesandbox.dev/emulation"] in ("true", "false")
    assert "oci" in annotations["kubesandbox.dev/capabilities"]
    assert lease["spec"]["holderIdentity"].startswith(f"{NODE}/")
    assert lease["spec"]["leaseDurationSeconds"] == 40


async def test_unauthenticated_and_unauthorized_calls_are_refused(api: Api) -> None:
    async with api.http.get(api.agent.url + f"/v1/sandboxes/{uuid.uuid4()}") as response:
        assert response.status == 401
    status, _ = await api.call("GET", f"/v1/sandboxes/{uuid.uuid4()}", token="not-a-token")
    assert status == 401
    status, _ = await api.call("GET", f"/v1/sandboxes/{uuid.uuid4()}", token=api.nobody)
    assert status == 403


async def test_sandboxes_run_and_status_is_written_beside_the_operators(api: Api) -> None:
    for i in range(COUNT):
        name = f"box{i}"
        manifest = {
            "apiVersion": "kubesandbox.dev/v1alpha1", "kind": "Sandbox",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"image": {"oci": "busybox:1.36"}, "memory": 256,
                     "network": {"policy": "None"}},
        }  # fmt: skip
        api.agent.plane.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))
        body = await api.sandbox(name)
        scheduled = {"type": "Scheduled", "status": "True", "reason": "PodBound",
                     "message": "bound", "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip
        await api.kube.apply(
            SANDBOXES.in_namespace(NAMESPACE).named(name, "status"),
            {"apiVersion": "kubesandbox.dev/v1alpha1", "kind": "Sandbox",
             "metadata": {"name": name, "namespace": NAMESPACE},
             "status": {"conditions": [scheduled], "nodeName": NODE}},
            field_manager="kubesandbox-operator",
        )  # fmt: skip
        desired = await api.desired(name)
        api.uids[name] = body["metadata"]["uid"]
        status, answer = await api.call("PUT", f"/v1/sandboxes/{desired['uid']}", json=desired)
        assert status == 200, answer
    for name in api.uids:
        body = await api.until_phase(name, "Running")
        conditions = {c["type"]: c for c in body["status"]["conditions"]}
        assert conditions["Scheduled"]["reason"] == "PodBound"
        assert conditions["ImageReady"]["status"] == "True"
        assert conditions["AgentConnected"]["status"] == "True"
        assert conditions["SoftwareEmulation"]["status"] in ("True", "False")
        assert body["status"]["nodeName"] == NODE
        assert body["status"]["image"]["digest"].startswith("sha256:")
        assert body["status"]["startedAt"]
        managers = {m["manager"] for m in body["metadata"]["managedFields"]}
        assert {"kubesandbox-node-agent", "kubesandbox-operator"} <= managers
    async with asyncio.timeout(10):
        while True:
            events = await api.kube.list(EVENTS.in_namespace(NAMESPACE))
            started = {
                e["involvedObject"]["uid"]
                for e in events
                if e["reason"] == "Started" and e["source"]["component"] == "kubesandbox-node-agent"
            }
            if started >= set(api.uids.values()):
                break
            await asyncio.sleep(0.2)


async def ws_exec(api: Api, uid: str, script: str) -> bytes:
    headers = {"Authorization": f"Bearer {api.token}"}
    url = api.agent.url + f"/v1/sandboxes/{uid}/agent"
    async with api.http.ws_connect(url, headers=headers) as ws:
        data = b""
        while len(data) < 12 or len(data) < 12 + struct.unpack(">I", data[8:12])[0]:
            data += await ws.receive_bytes(timeout=10)
        id_start, _ = struct.unpack(">II", data[:8])
        rest = data[12 + struct.unpack(">I", data[8:12])[0] :]
        sid = id_start + 7
        request = encode_body(MessageType.EXEC_REQUEST, exec_request("sh", ["-c", script]))
        await ws.send_bytes(Frame(sid, FLAG_SESSION_START, request).encode())
        await ws.send_bytes(
            Frame(sid, 0, encode_body(MessageType.EXEC_STDIN, {"data": b""})).encode()
        )
        out = b""
        buffer = rest
        while True:
            while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack(">I", buffer[:4])[0]:
                size = 4 + struct.unpack(">I", buffer[:4])[0]
                frame, buffer = decode_frame(buffer[:size]), buffer[size:]
                decoded = decode_body(frame.body)
                if decoded.t == MessageType.EXEC_STDOUT:
                    out += decoded.payload["data"]
                elif decoded.t == MessageType.EXEC_EXITED:
                    return out
                elif decoded.t in (MessageType.EXEC_FAILED, MessageType.ERROR):
                    raise AssertionError(decoded.payload)
            buffer += await ws.receive_bytes(timeout=30)


async def sdk_run(api: Api, uid: str, script: str) -> bytes:
    socket = api.agent.state / "state" / "sandboxes" / uid / "agent.sock"
    sdk = await SdkClient.connect(str(socket), timeout=10)
    try:
        code, out, _ = await sdk_exec(sdk, "sh", ["-c", script])
    finally:
        await sdk.close()
    assert code == 0
    return out


async def test_exec_through_the_websocket_and_the_relay_socket(api: Api) -> None:
    uid0, uid1 = api.uids["box0"], api.uids["box1"]
    assert await ws_exec(api, uid0, "echo kept > /marker; echo via-ws") == b"via-ws\n"
    assert await sdk_run(api, uid1, "echo via-sdk") == b"via-sdk\n"


async def test_metrics_are_sampled_and_written(api: Api) -> None:
    uid = api.uids["box2"]
    async with asyncio.timeout(30):
        while True:
            body = await api.sandbox("box2")
            metrics = body["status"].get("metrics")
            if metrics and metrics.get("memoryBytes"):
                break
            await asyncio.sleep(0.5)
    assert metrics["memoryLimitBytes"] > 256 << 20
    assert metrics["uptimeSeconds"] >= 0
    status, sample = await api.call("GET", f"/v1/sandboxes/{uid}/metrics")
    assert status == 200
    assert sample["memoryBytes"] > 0
    assert "diskReadBytes" in sample
    status, text = await api.call("GET", "/metrics")
    assert status == 200
    assert f'uid="{uid}"' in text


async def test_pause_and_resume_through_the_api(api: Api) -> None:
    uid = api.uids["box2"]
    assert (await api.call("POST", f"/v1/sandboxes/{uid}/pause", json={}))[0] == 202
    body = await api.until_phase("box2", "Paused", within=30)
    paused = {c["type"]: c["status"] for c in body["status"]["conditions"]}["Paused"]
    assert paused == "True"
    await api.call("POST", f"/v1/sandboxes/{uid}/resume", json={})
    await api.until_phase("box2", "Running", within=30)
    assert await sdk_run(api, uid, "echo awake") == b"awake\n"


async def test_kill_9_of_the_node_agent_loses_nothing(api: Api) -> None:
    before = qemu_pids(api.agent.state)
    assert len(before) == COUNT
    pinned = (api.agent.state / "state" / "tls" / "tls.crt").read_text()
    api.agent.kill9()
    assert qemu_pids(api.agent.state) == before
    api.agent.start()
    # The certificate is kept across restarts: what callers pinned stays valid.
    assert (await announced_by(api.agent, api.kube)).certificate == pinned
    async with asyncio.timeout(60):
        while True:
            try:
                status, _ = await api.call("GET", f"/v1/sandboxes/{api.uids['box0']}")
                if status == 200:
                    break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    for name, uid in api.uids.items():
        status, body = await api.call("GET", f"/v1/sandboxes/{uid}")
        assert body["phase"] == "Running", (name, body)
        assert await sdk_run(api, uid, f"echo {name}") == f"{name}\n".encode()
    assert await ws_exec(api, api.uids["box0"], "cat /marker") == b"kept\n"
    assert qemu_pids(api.agent.state) == before
    adopted = [
        json.loads(line) for line in api.agent.log_of(2).splitlines() if "vm.adopted" in line
    ]
    assert sorted(a["pid"] for a in adopted) == sorted(before)
    assert {a["attempts"] for a in adopted} == {1}  # the guest greeted the new relay at once


async def test_stop_and_start_keep_the_writable_layer(api: Api) -> None:
    uid = api.uids["box0"]
    await api.call("POST", f"/v1/sandboxes/{uid}/stop", json={"gracePeriodSeconds": 20})
    body = await api.until_phase("box0", "Stopped", within=60)
    assert body["status"]["exitStatus"]["reason"] == "StoppedByUser"
    assert body["status"]["stoppedAt"]
    _, waited = await api.call("GET", f"/v1/sandboxes/{uid}/wait")
    assert waited["exitStatus"]["success"] is True
    await api.call("POST", f"/v1/sandboxes/{uid}/start", json={})
    await api.until_phase("box0", "Running")
    assert await ws_exec(api, uid, "cat /marker") == b"kept\n"


async def test_deletes_leave_no_process_and_no_file(api: Api) -> None:
    for uid in api.uids.values():
        async with asyncio.timeout(60):
            while (await api.call("DELETE", f"/v1/sandboxes/{uid}"))[0] != 204:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        assert (await api.call("GET", f"/v1/sandboxes/{uid}"))[0] == 404
    assert qemu_pids(api.agent.state) == set()
    state = api.agent.state / "state"
    assert list((state / "sandboxes").iterdir()) == []
    assert list((state / "rootfs").iterdir()) == []
