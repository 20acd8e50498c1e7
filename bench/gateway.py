"""Gateway benchmark: what the gateway adds to an exec round trip, measured in one run.

    .venv/bin/python bench/gateway.py [--execs 50] [--warmup 5]

The host-process system (``services.running_system``: control plane, registry, node agent,
operator, gateway) is started in a temporary directory and one sandbox is created through the
gateway with the real microsandbox SDK (cloud backend, the demo ServiceAccount's token). Then,
on that same sandbox, interleaved so that load on the shared machine hits every path alike,
``--execs`` times each:

- **gateway**: ``sandbox.exec("echo", ["hi"])`` with the SDK (cloud backend): one WebSocket to
  the gateway per exec, which authenticates (TokenReview, cached), authorizes
  (SubjectAccessReview for ``create sandboxes/exec``, cached), finds the node agent through its
  Lease, opens a WebSocket to the node agent (which reviews the token again) and pipes frames;
- **relay, new connection**: the same exec request with the SDK's raw ``AgentClient`` over the
  node agent's relay socket, one connection per exec (the shape of the gateway path, minus
  HTTP, WebSockets and the reviews);
- **relay, one connection**: the same over a single long-lived relay connection (the floor:
  relay plus guest agent plus the VM's exec);
- **gateway WS / node agent WS (Python client)**: the same exec with kubesandbox's own protocol
  client over a WebSocket, once to the gateway's agent route and once straight to the node
  agent's (same token): the client is the same on both, so the difference is the gateway hop
  alone (its reviews, the Lease lookup, the second WebSocket).

Prints median, p95 and the ratios gateway / relay. Speed is measured, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from microsandbox import BackendKind, Sandbox, backend_scope
from microsandbox.agent import FLAG_SESSION_START, AgentClient

from kubesandbox_devenv import services
from kubesandbox_protocol.client import AgentClient as PyAgentClient
from kubesandbox_protocol.messages import MessageType, decode_body, encode_body, exec_request

SDK_GENERATION = 10  # what microsandbox 0.7.11 puts in its bodies
NAME = "bench-gateway"


async def relay_exec(client: AgentClient) -> bytes:
    """``echo hi`` as the SDK sends it: exec request, empty stdin (EOF), read to exited."""
    request = encode_body(MessageType.EXEC_REQUEST, exec_request("echo", ["hi"]), v=SDK_GENERATION)
    stream = await client.stream(FLAG_SESSION_START, request)
    await client.send(
        stream.id, 0, encode_body(MessageType.EXEC_STDIN, {"data": b""}, v=SDK_GENERATION)
    )
    out = bytearray()
    code = None
    async for frame in stream:
        decoded = decode_body(frame["body"])
        if decoded.t == MessageType.EXEC_STDOUT:
            out += decoded.payload["data"]
        elif decoded.t == MessageType.EXEC_EXITED:
            code = decoded.payload["code"]
    if code != 0:
        raise SystemExit(f"relay exec exited {code}")
    return bytes(out)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def timed(operation: Callable[[], Awaitable[bytes]]) -> float:
    began = time.perf_counter()
    output = await operation()
    took = time.perf_counter() - began
    if output != b"hi\n":
        raise SystemExit(f"unexpected output {output!r}")
    return took


def wait_for_rbac(running: services.RunningSystem, within: float = 60.0) -> None:
    """Until the demo account may create sandboxes: the built-in ``edit`` role gets the
    chart's rules through the clusterrole-aggregation controller, a moment after they are
    applied (a create before that is 403, and the gateway caches the denial for 10 s)."""
    deadline = time.monotonic() + within
    while True:
        answer = running.plane.kubectl(
            "auth", "can-i", "create", "sandboxes.kubesandbox.dev", "-n", "default",
            "--as=system:serviceaccount:default:demo", check=False,
        )  # fmt: skip
        if answer.stdout.strip() == "yes":
            return
        if time.monotonic() > deadline:
            raise SystemExit("the demo account still may not create sandboxes after 60 s")
        time.sleep(0.5)


async def measure(running: services.RunningSystem, execs: int, warmup: int) -> None:
    url = f"{running.gateway_url}/ns/default"
    wait_for_rbac(running)
    with backend_scope(BackendKind.CLOUD, url=url, api_key=running.demo_token):
        began = time.perf_counter()
        sandbox = await Sandbox.create(NAME, image="busybox:1.36", memory=128)
        print(f"created {NAME} through the gateway in {time.perf_counter() - began:.1f} s")
        uid = running.plane.kubectl("get", "sandbox", NAME, "-o", "jsonpath={.metadata.uid}").stdout
        socket = str(running.node_agent.relay_socket(uid))

        async def via_gateway() -> bytes:
            return (await sandbox.exec("echo", ["hi"])).stdout_bytes

        async def via_new_relay_connection() -> bytes:
            client = await AgentClient.connect(socket)
            try:
                return await relay_exec(client)
            finally:
                await client.close()

        persistent = await AgentClient.connect(socket)
        bearer = {"Authorization": f"Bearer {running.demo_token}"}
        gateway_ws = f"{url}/v1/sandboxes/{uid}/agent"
        node_agent_ws = f"http://127.0.0.1:{running.node_agent.port}/v1/sandboxes/{uid}/agent"

        async def via_websocket(ws_url: str) -> bytes:
            async with await PyAgentClient.connect_websocket(ws_url, headers=bearer) as client:
                result = await client.run("echo", ["hi"])
            if result.code != 0:
                raise SystemExit(f"websocket exec exited {result.code}")
            return result.stdout

        async def via_gateway_ws() -> bytes:
            return await via_websocket(gateway_ws)

        async def via_node_agent_ws() -> bytes:
            return await via_websocket(node_agent_ws)

        async def via_one_relay_connection() -> bytes:
            return await relay_exec(persistent)

        paths: dict[str, Callable[[], Awaitable[bytes]]] = {
            "gateway (SDK, cloud backend)": via_gateway,
            "relay, new connection": via_new_relay_connection,
            "relay, one connection": via_one_relay_connection,
            "gateway WS (Python client)": via_gateway_ws,
            "node agent WS (Python client)": via_node_agent_ws,
        }
        samples: dict[str, list[float]] = {label: [] for label in paths}
        for i in range(warmup + execs):
            for label, operation in paths.items():
                took = await timed(operation)
                if i >= warmup:
                    samples[label].append(took)
        await persistent.close()
        await sandbox.stop()
        await Sandbox.remove(NAME)

    print(f"\nexec round trip of `echo hi`, {execs} each, interleaved, after {warmup} warm-ups:")
    print(f"  {'path':<32} {'median':>10} {'p95':>10} {'min':>10}")
    for label, values in samples.items():
        print(
            f"  {label:<32} {_ms(statistics.median(values)):>10} {_ms(p95(values)):>10} "
            f"{_ms(min(values)):>10}"
        )
    gateway = statistics.median(samples["gateway (SDK, cloud backend)"])
    fresh = statistics.median(samples["relay, new connection"])
    floor = statistics.median(samples["relay, one connection"])
    print(
        f"\nratio gateway / relay (new connection): {gateway / fresh:.2f} "
        f"(+{_ms(gateway - fresh)} per exec)"
    )
    print(f"ratio gateway / relay (one connection): {gateway / floor:.2f}")
    hop = statistics.median(samples["gateway WS (Python client)"])
    direct = statistics.median(samples["node agent WS (Python client)"])
    print(
        f"ratio gateway WS / node agent WS (same client): {hop / direct:.2f} "
        f"(the gateway hop: +{_ms(hop - direct)} per exec)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--execs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    began = time.perf_counter()
    with services.running_system("ksb-bench-gw-") as running:
        print(f"system up in {time.perf_counter() - began:.1f} s ({Path(running.paths.state_dir)})")
        asyncio.run(measure(running, args.execs, args.warmup))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
