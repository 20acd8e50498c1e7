"""Node objects for a cluster without kubelets, so that kube-scheduler can bind Pods.

Each Node is created Ready, untainted, with capacity and the label the node agent's DaemonSet
selects on. Nobody heartbeats them: the node-lifecycle controller is disabled (see
``components``), so the Ready condition stays what we wrote until a test changes it.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubesandbox_devenv.binaries import KUBERNETES_VERSION

NODE_AGENT_LABEL = "kubesandbox.dev/node-agent"
NODE_NAME_PREFIX = "kubesandbox-node-"


@dataclass(frozen=True)
class NodeShape:
    """What every registered Node advertises."""

    cpu: str = "8"
    memory: str = "16Gi"
    pods: str = "110"
    labels: dict[str, str] = field(default_factory=lambda: {NODE_AGENT_LABEL: "true"})


def node_names(count: int) -> list[str]:
    return [f"{NODE_NAME_PREFIX}{index}" for index in range(count)]


def node_status(shape: NodeShape) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    resources = {"cpu": shape.cpu, "memory": shape.memory, "pods": shape.pods}
    return {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubesandboxDevenv",
                "message": "registered by kubesandbox-devenv; no kubelet runs here",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
        ],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "nodeInfo": {
            "architecture": "amd64",
            "operatingSystem": "linux",
            "kubeletVersion": KUBERNETES_VERSION,
            "kubeProxyVersion": "",
            "bootID": "",
            "containerRuntimeVersion": "",
            "kernelVersion": "",
            "machineID": "",
            "osImage": "",
            "systemUUID": "",
        },
    }


def node_manifest(name: str, shape: NodeShape) -> dict[str, Any]:
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        **shape.labels,
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {},
        "status": node_status(shape),
    }


def register_nodes(api: client.ApiClient, names: list[str], shape: NodeShape) -> None:
    """Create the Nodes that do not exist yet and make every one of them Ready."""
    core = client.CoreV1Api(api)
    for name in names:
        try:
            core.create_node(client.V1Node.model_validate(node_manifest(name, shape)))
        except ApiException as error:
            if error.status != 409:
                raise
        # Node creation keeps the status we send, but an existing Node (a second `up`) must
        # be made Ready again too: write the status subresource in both cases.
        core.patch_node_status(name, {"status": node_status(shape)})
