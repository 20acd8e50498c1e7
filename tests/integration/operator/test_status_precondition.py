"""The operator's status writes are compare-and-swap on the version its plan was made from.

Found with 100 sandboxes at once (bench/apply.py): the operator read a Sandbox, the node agent
wrote ``phase: Booting``, and the operator's plan from the stale read applied ``phase:
Scheduled`` over it; the node agent writes its phase only on its next transition, so the
sandbox said ``Scheduled`` for minutes while it waited for a boot slot.
"""

from __future__ import annotations

import contextlib
import uuid

import pytest

from kubesandbox_api import GROUP, PLURAL, VERSION, Sandbox
from kubesandbox_devenv.controlplane import ControlPlane
from kubesandbox_kube import Conflict, KubeClient, NotFound
from kubesandbox_operator.clients.cluster import Cluster
from kubesandbox_operator.control import CONFLICT_RETRY_SECONDS, Runtime, reconcile_once
from kubesandbox_operator.reconcile.sandbox import Event

pytestmark = pytest.mark.usefixtures("installed_crds")

NAMESPACE = "default"
API = f"{GROUP}/{VERSION}"
SANDBOXES = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}"


class NoAgents:
    """No node agent is ever asked anything here."""

    async def put(self, *_: object) -> None:
        raise AssertionError("the node agent was asked")


async def _create(kube: KubeClient, name: str) -> Sandbox:
    body = {
        "apiVersion": API,
        "kind": "Sandbox",
        "metadata": {"name": name},
        "spec": {"image": {"oci": "busybox:1.36"}},
    }
    created = await kube.request("POST", SANDBOXES, body=body)
    return Sandbox.from_body(created)


async def _node_agent_writes(kube: KubeClient, sandbox: Sandbox, phase: str) -> None:
    body = {
        "apiVersion": API,
        "kind": "Sandbox",
        "metadata": {"name": sandbox.name, "namespace": NAMESPACE},
        "status": {"phase": phase},
    }
    await kube.request(
        "PATCH",
        f"{SANDBOXES}/{sandbox.name}/status",
        body=body,
        params={"fieldManager": "kubesandbox-node-agent", "force": "true"},
        content_type="application/apply-patch+yaml",
    )


async def _phase(kube: KubeClient, name: str) -> str | None:
    body = await kube.request("GET", f"{SANDBOXES}/{name}")
    return (body.get("status") or {}).get("phase")


async def test_a_status_write_from_a_stale_read_is_refused(control_plane: ControlPlane) -> None:
    name = f"stale-{uuid.uuid4().hex[:8]}"
    async with KubeClient.connect(control_plane.kubeconfig) as kube:
        stale = await _create(kube, name)
        cluster = Cluster(kube, "kubesandbox-system")
        try:
            await _node_agent_writes(kube, stale, "Booting")
            with pytest.raises(Conflict):
                await cluster.apply_status(stale, {"phase": "Scheduled"})
            assert await _phase(kube, name) == "Booting"

            fresh = Sandbox.from_body(await kube.request("GET", f"{SANDBOXES}/{name}"))
            await cluster.apply_status(fresh, {"podName": f"{name}-sandbox"})
        finally:
            await kube.request("DELETE", f"{SANDBOXES}/{name}")


async def test_a_pass_planned_from_a_stale_read_writes_nothing_and_retries_soon(
    control_plane: ControlPlane,
) -> None:
    name = f"stale-pass-{uuid.uuid4().hex[:8]}"
    events: list[Event] = []
    async with KubeClient.connect(control_plane.kubeconfig) as kube:
        stale = await _create(kube, name)
        cluster = Cluster(kube, "kubesandbox-system")
        runtime = Runtime(cluster=cluster, agents=NoAgents())  # type: ignore[arg-type]
        try:
            await _node_agent_writes(kube, stale, "Booting")
            # The plan from the stale read creates the Pod and would write phase Pending.
            delay = await reconcile_once(runtime, stale, events.append)
            assert delay == CONFLICT_RETRY_SECONDS
            assert await _phase(kube, name) == "Booting"
            assert events == []
        finally:
            await kube.request("DELETE", f"{SANDBOXES}/{name}")
            with contextlib.suppress(NotFound):  # the garbage collector may be first
                await kube.request(
                    "DELETE",
                    f"/api/v1/namespaces/{NAMESPACE}/pods/{name}-sandbox",
                    params={"gracePeriodSeconds": "0"},
                )
