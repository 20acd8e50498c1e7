"""``kubesandbox-operator``: from a ``Sandbox`` object to a VM on a node, and back.

Layers, enforced by import-linter: :mod:`.handlers` (thin Kopf callbacks) → :mod:`.control`
(observe, plan, act) → :mod:`.clients` (the apiserver and the node agents) → :mod:`.reconcile`
(pure decisions) → ``kubesandbox_api`` (models). This module wires them: settings, logging,
the one-active-operator Lease, and Kopf.

``operator/`` has no ``__init__.py`` on purpose: it is mapped to the namespace package
``kubesandbox_operator``, so a process whose ``sys.path`` holds the repository root can never
mistake the folder for the standard library's ``operator`` module.
"""

import argparse
import asyncio
import logging
import os
import socket
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import structlog

from kubesandbox_common import logs
from kubesandbox_kube import KubeClient
from kubesandbox_kube import config as kube_config
from kubesandbox_operator import handlers
from kubesandbox_operator.clients.cluster import Cluster
from kubesandbox_operator.clients.events import EventPoster
from kubesandbox_operator.clients.leader import LeaderElection
from kubesandbox_operator.clients.nodeagent import NodeAgentAuth, NodeAgents
from kubesandbox_operator.control import Runtime
from kubesandbox_operator.control.controller import DEFAULT_WORKERS, Controller, stop
from kubesandbox_operator.reconcile.pod import PodSettings

log = structlog.get_logger(__name__)
SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
FINALIZER = "kubesandbox.dev/finalizer"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kubesandbox-operator", description=__doc__)
    env = os.environ.get
    parser.add_argument("--kubeconfig", type=Path, default=env("KUBECONFIG"))
    parser.add_argument(
        "--namespace",
        default=env("KUBESANDBOX_NAMESPACE", "kubesandbox-system"),
        help="where the operator's and the node agents' Leases live",
    )
    parser.add_argument(
        "--node-agent-token-file",
        type=Path,
        default=Path(env("KUBESANDBOX_NODE_AGENT_TOKEN_FILE", str(SERVICE_ACCOUNT_TOKEN))),
        help="bearer token presented to node agents (the operator's service account)",
    )
    parser.add_argument("--node-agent-ca-file", type=Path, default=None)
    parser.add_argument(
        "--allow-host-paths",
        action="store_true",
        default=env("KUBESANDBOX_ALLOW_HOST_PATHS") == "true",
        help="allow disk/bind roots, bind volumes and host-path copies (cluster policy)",
    )
    defaults = PodSettings()
    pods = parser.add_argument_group("sandbox Pods")
    pods.add_argument(
        "--pause-image",
        default=env("KUBESANDBOX_PAUSE_IMAGE", defaults.pause_image),
        help="the one container of every sandbox Pod (default: %(default)s)",
    )
    pods.add_argument(
        "--cpu-allocation-ratio",
        type=_at_least_one,
        default=float(env("KUBESANDBOX_CPU_ALLOCATION_RATIO", str(defaults.cpu_allocation_ratio))),
        help="vCPUs per requested CPU: at 10 a 1-vCPU sandbox requests 100m (default: %(default)s)",
    )
    pods.add_argument(
        "--cpu-overhead-millicores",
        type=_not_negative,
        default=int(env("KUBESANDBOX_CPU_OVERHEAD", str(defaults.cpu_overhead_millicores))),
        help="added to every sandbox Pod's CPU request (default: %(default)s)",
    )
    pods.add_argument(
        "--memory-overhead-mib",
        type=_not_negative,
        default=int(env("KUBESANDBOX_MEMORY_OVERHEAD", str(defaults.memory_overhead_mib))),
        help="added to every sandbox Pod's memory request and limit (default: %(default)s)",
    )
    parser.add_argument("--identity", default=f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}")
    parser.add_argument(
        "--workers",
        type=int,
        default=int(env("KUBESANDBOX_WORKERS", str(DEFAULT_WORKERS))),
        help="Sandboxes reconciled at once (each pass is a few apiserver requests)",
    )
    parser.add_argument("--log-level", default=env("KUBESANDBOX_LOG_LEVEL", "INFO"))
    return parser.parse_args(argv)


def _at_least_one(text: str) -> float:
    value = float(text)
    if not value >= 1:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return value


def pod_settings(args: argparse.Namespace) -> PodSettings:
    return PodSettings(
        pause_image=args.pause_image,
        cpu_allocation_ratio=args.cpu_allocation_ratio,
        cpu_overhead_millicores=args.cpu_overhead_millicores,
        memory_overhead_mib=args.memory_overhead_mib,
    )


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Kopf uses the same identity and address as our client (``kubesandbox_kube.config``):
    ``$KUBECONFIG`` when set, else the Pod's service account at ``$KUBERNETES_SERVICE_HOST``."""
    if os.environ.get("KUBECONFIG") or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return kopf.login_with_kubeconfig(**kwargs)
    return in_cluster_connection(kube_config.SERVICE_ACCOUNT)


def in_cluster_connection(account: Path) -> kopf.ConnectionInfo:
    """The service account's connection, addressed as client-go addresses it: the kubernetes
    Service's IP from the kubelet's environment. Kopf's own in-cluster login names
    ``kubernetes.default.svc``, which resolves only where the cluster has DNS. The token is
    read again when Kopf logs in again (it does on a 401: a rotated token)."""
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    ca = account / "ca.crt"
    namespace = account / "namespace"
    return kopf.ConnectionInfo(
        server=f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}",
        ca_path=str(ca) if ca.is_file() else None,
        token=(account / "token").read_text().strip(),
        default_namespace=namespace.read_text().strip() if namespace.is_file() else None,
    )


@kopf.on.startup()
def configure_kopf(settings: kopf.OperatorSettings, **_: object) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="kubesandbox.dev"
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kubesandbox.dev", key="last-handled-configuration"
    )
    settings.posting.level = 20  # INFO: Kopf's own Events for handler failures
    settings.watching.server_timeout = 300
    # Kopf keeps a worker task per object for this long after its last event; 1 s instead of
    # 5 s means far fewer of them alive at once during a burst of thousands (memory).
    settings.queueing.idle_timeout = 1.0


async def run(args: argparse.Namespace) -> int:
    async with KubeClient.connect(args.kubeconfig) as kube, aiohttp.ClientSession() as http:
        election = LeaderElection(kube, args.namespace, "kubesandbox-operator", args.identity)
        await election.acquire()
        lost = asyncio.Event()
        holding = asyncio.create_task(election.hold(lost))
        runtime = Runtime(
            cluster=Cluster(kube, args.namespace),
            agents=NodeAgents(
                NodeAgentAuth(args.node_agent_token_file, args.node_agent_ca_file), http
            ),
            allow_host_paths=args.allow_host_paths,
            pod_settings=pod_settings(args),
        )
        controller = Controller(runtime, EventPoster(kube), workers=args.workers)
        controlling = asyncio.create_task(controller.run(), name="controller")
        # A controller that dies (it should not) stops the operator (exit 1) rather than leave
        # it deaf; the shutdown below cancels it, which is no failure.
        controlling.add_done_callback(lambda task: None if task.cancelled() else lost.set())
        assert handlers.sandbox  # registered with Kopf's default registry on import
        memo = kopf.Memo(runtime=runtime, controller=controller)
        try:
            await kopf.operator(standalone=True, clusterwide=True, memo=memo, stop_flag=lost)
        finally:
            # Decided before the shutdown below: stopping the controller ends its task, which
            # would look like a controller that died. Failed: the Lease was lost or the
            # controller died; not failed: a signal (SIGTERM from the kubelet) stopped Kopf.
            failed = lost.is_set()
            holding.cancel()
            if not controlling.done():
                await stop(controlling)
            elif not controlling.cancelled() and controlling.exception() is not None:
                log.error("controller.died", error=repr(controlling.exception()))
            if not failed:
                await election.release()  # a standby takes over now, not when it expires
        return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    logs.configure(args.log_level)
    if logging.getLogger().getEffectiveLevel() >= logging.INFO:
        # Kopf logs "Handler 'observed' succeeded." for every watch event of every Sandbox:
        # 20,000 lines for a burst of 10,000. Its warnings and errors still come through.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = str(args.kubeconfig)  # Kopf logs in through the same file
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
