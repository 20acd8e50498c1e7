"""Warm-pool benchmark: a claim against a cold boot, measured in one run.

    .venv/bin/python bench/pools.py [--runs 5] [--burst 20] [--memory 128]

The whole system of ``make up`` (control plane, registry, node agent, operator, gateway) is
started in a temporary directory with a SandboxPool of one VM (``busybox:1.36``, 1 vCPU,
``--memory`` MiB). Then, ``--runs`` times, interleaved so that load on the shared machine hits
both alike, for the same spec (its own env and hostname, which a claim applies):

- **kubectl, warm**: ``kubectl apply`` of a Sandbox that matches the pool, then ``kubectl wait
  --for=condition=Ready`` (a watch): what a user waits for. The Sandbox must say
  ``status.pool``. Then the time until the pool is back to one ready VM (**refill**: a
  replacement member booted), and the Sandbox is deleted.
- **kubectl, cold**: the pool scaled to 0 first (its member deleted), the same apply and wait:
  a full boot. The pool is scaled back to 1 and refilled before the next run.
- **SDK, warm / cold**: ``Sandbox.create(...)`` with the unchanged microsandbox SDK through the
  gateway, then the first ``exec`` answering: what an SDK script waits for before its first
  command; the same pool juggling.

At most two VMs run at once there (the pool's member and the sandbox measured). Then the
**burst** (``--burst`` N, 0 to skip): the pool scaled to N and filled; N matching Sandboxes in
one ``kubectl apply``, each timed until a watch sees it Ready (all claims at once: p50 and the
last one);
the time until the pool is back to N ready VMs (N boots at once, with the N claimed VMs still
running); the N deleted, the pool scaled to 0 and the same N applied again, booted cold at
once. Prints each sample, the medians and the ratios warm / cold. Speed is measured, never
asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from apply import as_list, sandbox_body  # bench/apply.py: this folder is on sys.path
from microsandbox import BackendKind, Sandbox, backend_scope

from kubesandbox_devenv import services
from kubesandbox_devenv.nodes import NodeShape

POOL = "bench-warm"
BOOT_TIMEOUT = 300.0


def template(memory: int) -> dict[str, Any]:
    return {"image": {"oci": "busybox:1.36"}, "memory": memory}


def kubectl(system: services.RunningSystem, *args: str, stdin: str | None = None) -> str:
    return system.plane.kubectl(*args, input_text=stdin).stdout


def pool_ready(system: services.RunningSystem, wanted: int) -> bool:
    body = json.loads(kubectl(system, "get", "sandboxpool", POOL, "-o", "json"))
    status = body.get("status") or {}
    return bool(status.get("readyReplicas") == wanted and status.get("replicas") == wanted)


def wait_pool(system: services.RunningSystem, wanted: int) -> float:
    began = time.perf_counter()
    while not pool_ready(system, wanted):
        if time.perf_counter() - began > BOOT_TIMEOUT:
            raise SystemExit(f"pool not at {wanted} ready within {BOOT_TIMEOUT:.0f} s")
        time.sleep(0.1)
    return time.perf_counter() - began


def scale(system: services.RunningSystem, replicas: int) -> None:
    kubectl(system, "scale", f"sandboxpool/{POOL}", f"--replicas={replicas}")
    wait_pool(system, replicas)
    if replicas == 0:  # the member's VM gone too, so that a cold boot shares the node with none
        while json.loads(
            kubectl(system, "get", "sandboxes", "-l", f"kubesandbox.dev/pool={POOL}", "-o", "json")
        )["items"]:
            time.sleep(0.1)


def kubectl_apply(system: services.RunningSystem, name: str, memory: int) -> tuple[float, str]:
    """apply → Ready; returns the seconds and ``status.pool`` (empty when booted cold)."""
    began = time.perf_counter()
    kubectl(system, "apply", "-f", "-", stdin=json.dumps(claimant(name, memory)))
    kubectl(system, "wait", "--for=condition=Ready", f"sandbox/{name}", "--timeout=300s")
    took = time.perf_counter() - began
    status = json.loads(kubectl(system, "get", "sandbox", name, "-o", "json"))["status"]
    return took, str(status.get("pool") or "")


def delete(system: services.RunningSystem, name: str) -> None:
    kubectl(system, "delete", "sandbox", name, "--timeout=300s")


async def sdk_create(system: services.RunningSystem, name: str, memory: int) -> tuple[float, str]:
    """``Sandbox.create`` → first exec answered, through the gateway; the sandbox is removed.
    Returns the seconds and ``status.pool``."""
    url = f"{system.gateway_url}/ns/default"
    with backend_scope(BackendKind.CLOUD, url=url, api_key=system.demo_token):
        began = time.perf_counter()
        sandbox = await Sandbox.create(name, image="busybox:1.36", memory=memory, env={"RUN": name})
        result = await sandbox.exec("true")
        took = time.perf_counter() - began
        assert result.exit_code == 0, result.stderr_text
        served_by = pool_of(system, name)
        await sandbox.stop()
        await Sandbox.remove(name)
    return took, served_by


def pool_of(system: services.RunningSystem, name: str) -> str:
    body = json.loads(kubectl(system, "get", "sandbox", name, "-o", "json"))
    return str((body.get("status") or {}).get("pool") or "")


def summary(label: str, warm: list[float], cold: list[float]) -> None:
    w, c = statistics.median(warm), statistics.median(cold)
    print(
        f"{label:<28} warm median {w:6.2f} s   cold median {c:6.2f} s   warm / cold = {w / c:.2f}x"
    )


def claimant(name: str, memory: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A Sandbox that matches the pool, with an env and hostname of its own (claim-time)."""
    spec = {**template(memory), "hostname": name, "env": [{"name": "RUN", "value": name}]}
    return sandbox_body(name, spec, namespace="default", labels=labels)


def apply_burst(
    system: services.RunningSystem, prefix: str, count: int, memory: int
) -> tuple[list[float], list[str]]:
    """All ``count`` applied at once; seconds from the apply until each was Ready (sorted), and
    the ``status.pool`` of each. Readiness comes from a watch (``kubectl get -w``), so a list
    slowed down by the load of the burst cannot delay when a Sandbox counts as Ready."""
    plane = system.plane
    template = (
        '{.metadata.name} {.status.conditions[?(@.type=="Ready")].status} {.status.pool}{"\\n"}'
    )
    watch = subprocess.Popen(
        [str(plane.binaries.kubectl), "get", "sandboxes", "-l", f"bench={prefix}", "-w",
         "-o", f"jsonpath={template}"],
        env=dict(os.environ, KUBECONFIG=str(plane.kubeconfig)),
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    ready: dict[str, float] = {}
    pools: dict[str, str] = {}
    began = 0.0

    def follow() -> None:
        assert watch.stdout is not None
        for line in watch.stdout:
            name, _, rest = line.strip().partition(" ")
            state, _, pool = rest.partition(" ")
            if name and state == "True" and name not in ready:
                ready[name] = time.perf_counter() - began
                pools[name] = pool

    reader = threading.Thread(target=follow, daemon=True)
    try:
        time.sleep(1.0)  # the watch is established before the apply
        began = time.perf_counter()
        reader.start()
        bodies = [claimant(f"{prefix}-{i}", memory, {"bench": prefix}) for i in range(count)]
        kubectl(system, "apply", "-f", "-", stdin=as_list(bodies))
        while len(ready) < count:
            if time.perf_counter() - began > BOOT_TIMEOUT * 2:
                raise SystemExit(f"{count - len(ready)} of the {prefix} burst not Ready in time")
            time.sleep(0.1)
    finally:
        watch.kill()
        watch.wait()
    return sorted(ready.values()), [pools[name] for name in sorted(pools)]


def delete_burst(system: services.RunningSystem, prefix: str) -> None:
    kubectl(system, "delete", "sandboxes", "-l", f"bench={prefix}", "--timeout=600s")


def burst(system: services.RunningSystem, count: int, memory: int) -> None:
    """``count`` claims at once against ``count`` cold boots at once, and the refill."""
    print(f"\nburst of {count}: pool scaled from 1 to {count} ...")
    filled = time.perf_counter()
    kubectl(system, "scale", f"sandboxpool/{POOL}", f"--replicas={count}")
    wait_pool(system, count)
    print(f"pool filled to {count} in {time.perf_counter() - filled:.1f} s")
    warm, served = apply_burst(system, "burst-warm", count, memory)
    unserved = [p for p in served if p != POOL]
    if unserved:
        raise SystemExit(f"{len(unserved)} of the warm burst were not served by the pool")
    refilled = wait_pool(system, count) + warm[-1]
    delete_burst(system, "burst-warm")
    scale(system, 0)
    cold, served = apply_burst(system, "burst-cold", count, memory)
    assert not any(served), served
    delete_burst(system, "burst-cold")
    scale(system, 1)
    w50, c50 = statistics.median(warm), statistics.median(cold)
    print(
        f"{count} claims at once: Ready p50 {w50:.2f} s, last {warm[-1]:.2f} s; "
        f"{count} cold boots at once: p50 {c50:.2f} s, last {cold[-1]:.2f} s; "
        f"warm / cold = {w50 / c50:.2f}x (p50), {warm[-1] / cold[-1]:.2f}x (last)"
    )
    print(
        f"refill of {count} (from the apply until the pool has {count} ready again): "
        f"{refilled:.1f} s"
    )


def measure(system: services.RunningSystem, runs: int, burst_count: int, memory: int) -> None:
    pool = {
        "apiVersion": "kubesandbox.dev/v1alpha1",
        "kind": "SandboxPool",
        "metadata": {"name": POOL, "namespace": "default"},
        "spec": {"replicas": 1, "template": {"spec": template(memory)}},
    }
    kubectl(system, "apply", "-f", "-", stdin=json.dumps(pool))
    print(f"pool of 1 ready in {wait_pool(system, 1):.1f} s")
    warm: list[float] = []
    cold: list[float] = []
    refill: list[float] = []
    sdk_warm: list[float] = []
    sdk_cold: list[float] = []
    for run in range(runs):
        took, served_by = kubectl_apply(system, f"warm-{run}", memory)
        if served_by != POOL:
            raise SystemExit(f"warm-{run} was not served by the pool (status.pool {served_by!r})")
        refilled = wait_pool(system, 1)
        warm.append(took)
        refill.append(took + refilled)
        delete(system, f"warm-{run}")

        scale(system, 0)
        took, served_by = kubectl_apply(system, f"cold-{run}", memory)
        assert not served_by, served_by
        cold.append(took)
        delete(system, f"cold-{run}")
        scale(system, 1)

        took, served_by = asyncio.run(sdk_create(system, f"sdk-warm-{run}", memory))
        if served_by != POOL:
            raise SystemExit(f"sdk-warm-{run} was not served by the pool ({served_by!r})")
        sdk_warm.append(took)
        wait_pool(system, 1)
        scale(system, 0)
        took, served_by = asyncio.run(sdk_create(system, f"sdk-cold-{run}", memory))
        assert not served_by, served_by
        sdk_cold.append(took)
        scale(system, 1)
        print(
            f"run {run + 1}: kubectl warm {warm[-1]:.2f} s (refilled {refill[-1]:.2f} s after "
            f"the apply), cold {cold[-1]:.2f} s; SDK warm {sdk_warm[-1]:.2f} s, "
            f"cold {sdk_cold[-1]:.2f} s"
        )
    if runs:
        print()
        summary("kubectl apply -> Ready", warm, cold)
        summary("SDK create -> first exec", sdk_warm, sdk_cold)
        print(f"{'refill (apply -> pool ready)':<28} median {statistics.median(refill):6.2f} s")
    if burst_count:
        burst(system, burst_count, memory)
    kubectl(system, "delete", "sandboxpool", POOL, "--timeout=300s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--burst", type=int, default=20, help="claims at once (0: none)")
    parser.add_argument("--memory", type=int, default=128)
    args = parser.parse_args()
    began = time.perf_counter()
    # The Node advertises room for a burst's Pods (each requests its vCPU: the default 8 CPUs
    # would hold 7 of them) and its refill; the VMs themselves share this machine's cores.
    shape = NodeShape(cpu=str(4 * args.burst + 8), memory=f"{args.burst * 2 + 8}Gi")
    with services.running_system("ksb-bench-pool-", node_shape=shape) as running:
        print(f"system up in {time.perf_counter() - began:.1f} s ({Path(running.paths.state_dir)})")
        measure(running, args.runs, args.burst, args.memory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
