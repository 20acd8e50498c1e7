"""``kubesandbox-gateway``: the entry point (flags in docs/gateway.md).

One process, one apiserver client (the kubeconfig given, else ``$KUBECONFIG``, else the
in-cluster service account), one aiohttp server on ``--listen``. The gateway's own account
needs only: create TokenReviews and SubjectAccessReviews, read/write (and list/watch, for its
cache) Sandboxes, create/patch/delete Secrets, get/list/watch Leases in the node agents'
namespace. Every tenant request is reviewed
against the tenant's own RBAC before the gateway uses that account (docs/gateway.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import structlog
from aiohttp import web

from kubesandbox_common import logs
from kubesandbox_gateway.app import AGENTS_NAMESPACE, Gateway, trim_sandbox
from kubesandbox_gateway.routes import make_app
from kubesandbox_kube import KubeClient
from kubesandbox_kube.auth import KubeAuthenticator
from kubesandbox_kube.config import ConfigError
from kubesandbox_kube.informer import Informer
from kubesandbox_kube.paths import LEASES, SANDBOXES

log = structlog.get_logger("kubesandbox.gateway")
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 (in a cluster the Service reaches the Pod's address)
SYNC_WAIT = 10.0
"""Seconds to wait for the first lists before listening; without them requests are answered
from the apiserver (slower, still correct) until the watches catch up."""


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::]:8080`` for IPv6) → host and port."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"--listen wants HOST:PORT, not {value!r}")
    return host.strip("[]") or ALL_INTERFACES, int(port)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kubesandbox-gateway",
        description="The microsandbox cloud API (PROTOCOL.md §3) served from Sandbox objects.",
    )
    parser.add_argument(
        "--kubeconfig", type=Path, help="default: $KUBECONFIG, else the in-cluster account"
    )
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default=(ALL_INTERFACES, 8080),
        help="HOST:PORT (0.0.0.0:8080)",
    )
    parser.add_argument(
        "--node-agent-ca",
        type=Path,
        help="CA bundle for node agents whose Lease announces no certificate of their own",
    )
    parser.add_argument("--agents-namespace", default=AGENTS_NAMESPACE)
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    return parser.parse_args(argv)


def node_agent_ssl(ca: Path | None) -> ssl.SSLContext | None:
    if ca is None:
        return None
    if not ca.is_file():
        raise SystemExit(f"kubesandbox-gateway: --node-agent-ca {ca}: no such file")
    return ssl.create_default_context(cafile=str(ca))


async def serve(args: argparse.Namespace) -> None:
    host, port = args.listen
    async with KubeClient.connect(args.kubeconfig) as kube:
        sandboxes = Informer(kube, SANDBOXES, trim=trim_sandbox)
        leases = Informer(kube, LEASES.in_namespace(args.agents_namespace))
        gateway = Gateway(
            kube,
            KubeAuthenticator(kube),
            sandboxes=sandboxes,
            leases=leases,
            node_agent_ssl=node_agent_ssl(args.node_agent_ca),
            agents_namespace=args.agents_namespace,
        )
        async with watching(sandboxes, leases):
            await listen(gateway, host, port)


@contextlib.asynccontextmanager
async def watching(*informers: Informer) -> AsyncIterator[None]:
    """Runs the informers for the life of the server; waits (bounded) for their first lists."""
    tasks = [asyncio.create_task(i.run(), name=f"watch-{i.path.plural}") for i in informers]
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SYNC_WAIT):
                await asyncio.gather(*(i.wait_synced() for i in informers))
        for informer in informers:
            log.info("watch", resource=informer.path.plural, ready=informer.ready)
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def listen(gateway: Gateway, host: str, port: int) -> None:
    # No aiohttp access log: the middleware logs each request, without headers.
    runner = web.AppRunner(make_app(gateway), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.info("gateway listening", addresses=[str(a) for a in runner.addresses])
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("gateway stopping")
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure(args.log_level)
    try:
        asyncio.run(serve(args))
    except ConfigError as error:
        raise SystemExit(f"kubesandbox-gateway: {error}") from error
    except OSError as error:  # the listen address is taken or not ours
        raise SystemExit(f"kubesandbox-gateway: cannot listen on {args.listen}: {error}") from error
    return 0
