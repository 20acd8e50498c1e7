"""The sandbox Pod: how a Sandbox takes its place in the cluster's scheduling.

A Sandbox is scheduled through an ordinary Pod so that kube-scheduler, ResourceQuota,
LimitRanges, priorities, preemption and the cluster autoscaler treat it like any workload.
Its requests are the VM's vCPUs and memory plus the VMM's overhead, so the node's allocatable
capacity accounts for the real cost of the VM.

What really runs in it: one pause container (``PodSettings.pause_image``), nothing else. The
VM does not run in the Pod: once the Pod is bound, the node agent of that node starts QEMU
beside it, as its own process in its own cgroup ``/kubesandbox/vm-<uid>`` (outside every Pod's
cgroup, docs/node-agent.md, "Running in a Pod") and its own network namespace. The Pod is the
VM's reservation and its handle for scheduling, quota and eviction: its requests are what the
scheduler counts, but the kubelet neither limits nor measures the VM through it. Placing the
VM in this Pod's cgroup and network namespace is planned, not built. Where no kubelet runs
(the host-process test control plane) the Pod is only bound and never starts.
"""

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from kubesandbox_api import API_VERSION, KIND, Sandbox

JsonDict = dict[str, Any]

SANDBOX_LABEL = "kubesandbox.dev/sandbox"
SANDBOX_UID_LABEL = "kubesandbox.dev/sandbox-uid"
COMPONENT_LABEL = "app.kubernetes.io/component"
POD_COMPONENT = "sandbox-pod"


@dataclass(frozen=True)
class PodSettings:
    """Cluster-wide knobs of the sandbox Pod (operator configuration)."""

    pause_image: str = "registry.k8s.io/pause:3.10"
    cpu_allocation_ratio: float = 1.0
    """vCPUs per requested CPU (KubeVirt's ``cpuAllocationRatio``): at 10, a 1-vCPU sandbox
    requests 100m. 1 reserves a whole core per vCPU; more lets mostly idle sandboxes share."""
    cpu_overhead_millicores: int = 100
    """Added to the vCPUs: QEMU's own threads (I/O, the relay, QMP)."""
    memory_overhead_mib: int = 256
    """Added to guest memory: QEMU's RSS outside guest RAM (about 200 MiB under TCG, less
    with KVM) plus the node agent's per-sandbox share."""


def pod_name(sandbox_name: str) -> str:
    """``<name>-sandbox``, shortened with a hash when it would exceed a DNS label's 63 chars."""
    name = f"{sandbox_name}-sandbox"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(sandbox_name.encode()).hexdigest()[:8]
    return f"{sandbox_name[:46].rstrip('-.')}-{digest}-sandbox"


def desired_pod(sandbox: Sandbox, settings: PodSettings) -> JsonDict:
    """The sandbox Pod for ``sandbox``: owned by it, sized for its VM, placed as it asks."""
    spec = sandbox.spec
    vcpus = math.ceil(spec.cpus * 1000 / settings.cpu_allocation_ratio)
    cpu = f"{vcpus + settings.cpu_overhead_millicores}m"
    memory = f"{spec.memory_mib + settings.memory_overhead_mib}Mi"
    resources = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}
    pod_spec: JsonDict = {
        "containers": [
            {
                "name": "sandbox",
                "image": settings.pause_image,
                "resources": resources,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "runAsNonRoot": True,
                    "runAsUser": 65535,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "restartPolicy": "Always",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 0,
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [t.model_dump(exclude_none=True) for t in spec.tolerations]
    if spec.affinity:
        pod_spec["affinity"] = spec.affinity
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(sandbox.name),
            "namespace": sandbox.namespace,
            "labels": {
                SANDBOX_LABEL: _label_value(sandbox.name),
                SANDBOX_UID_LABEL: sandbox.uid,
                COMPONENT_LABEL: POD_COMPONENT,
                "app.kubernetes.io/managed-by": "kubesandbox",
            },
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": sandbox.name,
                    "uid": sandbox.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": pod_spec,
    }


def _label_value(name: str) -> str:
    # Label values are at most 63 characters; the uid label is the exact link anyway.
    return name if len(name) <= 63 else name[:63].rstrip("-_.")


def owned_by(pod: JsonDict, sandbox: Sandbox) -> bool:
    """Whether ``pod`` is this incarnation's Pod (not a stale one of a deleted namesake)."""
    refs = pod.get("metadata", {}).get("ownerReferences", [])
    return any(ref.get("uid") == sandbox.uid for ref in refs)
