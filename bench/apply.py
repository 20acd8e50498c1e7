"""Operator benchmark, measured in one run on this machine (TCG here).

    .venv/bin/python bench/apply.py [--runs 3] [--count 10] [--memory 128] [--idle 60]
    .venv/bin/python bench/apply.py --runs 0 --count 100 --idle 0     # the 100-sandbox run
    .venv/bin/python bench/apply.py --runs 0 --count 1 --memory 96    # the smallest the API allows

The host-process system (``services.running_system``: control plane, preloaded registry, node
agent, operator) is started in a temporary directory, then:

- **operator overhead**: for each of ``--runs`` sandboxes, ``kubectl apply`` → ``Ready=True``
  (what a user waits for) against the node agent's own part of it, from receiving the desired
  state to the VM Running (timestamps of its ``sandbox.phase`` log lines). The difference is
  what the operator, the scheduler and the sandbox Pod add; the ratio is printed.
- **N at once**: ``--count`` sandboxes applied together in one ``kubectl apply`` (the cheapest
  real VM: 1 vCPU, ``--memory`` MiB, no network); when each became Ready (first, median, p90,
  last), API write requests per sandbox by resource (from the apiserver's
  ``apiserver_request_total``, all clients: operator, node agent, scheduler, garbage
  collector), the operator's and the node agent's resident memory (peak while converging, and
  settled), the writes of one idle minute (``--idle``), then the delete of all of them: how
  long, and what was left (QEMU processes, per-sandbox folders).

A sandbox that ends ``Crashed`` or ``Failed`` instead (64 MiB did, before the API refused it)
is reported with its reason and status message (the first one also with the tail of its VM's
console log); the numbers are then those of the sandboxes that became Ready.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kubesandbox_devenv import services
from kubesandbox_devenv.controlplane import ControlPlane
from kubesandbox_devenv.nodes import NodeShape
from kubesandbox_devenv.processes import ManagedProcess

WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE"}


def sandbox_body(
    name: str,
    spec: Mapping[str, object] | None = None,
    *,
    namespace: str | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Sandbox of ``busybox:1.36`` (unless ``spec`` names another image) for the benches."""
    metadata: dict[str, object] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    if labels:
        metadata["labels"] = labels
    return {
        "apiVersion": "kubesandbox.dev/v1alpha1",
        "kind": "Sandbox",
        "metadata": metadata,
        "spec": {"image": {"oci": "busybox:1.36"}, **(spec or {})},
    }


def sandbox_manifest(name: str, **spec: object) -> str:
    return json.dumps(sandbox_body(name, spec))


def ready(plane: ControlPlane, names: list[str]) -> set[str]:
    listed = json.loads(plane.kubectl("get", "sandboxes", "-o", "json").stdout)
    done = set()
    for item in listed["items"]:
        conditions = item.get("status", {}).get("conditions", [])
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            done.add(item["metadata"]["name"])
    return done & set(names)


def wait_ready(plane: ControlPlane, names: list[str], timeout: float) -> float:
    began = time.monotonic()
    while ready(plane, names) != set(names):
        if time.monotonic() - began > timeout:
            raise SystemExit(f"not Ready after {timeout:.0f}s: {set(names) - ready(plane, names)}")
        time.sleep(0.2)
    return time.monotonic() - began


def node_agent_part(log: Path, uid: str) -> float:
    """Seconds from the node agent's first phase change for ``uid`` to Running."""
    first = running = None
    for line in log.read_text().splitlines():
        if uid not in line or '"sandbox.phase"' not in line:
            continue
        event = json.loads(line)
        moment = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
        first = first or moment
        if event.get("phase") == "Running":
            running = moment
            break
    if first is None or running is None:
        raise SystemExit(f"no phase log lines for {uid} in {log}")
    return (running - first).total_seconds()


def requests_by_verb(plane: ControlPlane) -> Counter[tuple[str, str]]:
    """``apiserver_request_total`` summed by (verb, resource[/subresource]), all clients."""
    text = plane.kubectl("get", "--raw", "/metrics").stdout
    counts: Counter[tuple[str, str]] = Counter()
    pattern = re.compile(r"^apiserver_request_total\{(.*)\} (\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if not labels.get("resource"):
            continue
        sub = f"/{labels['subresource']}" if labels.get("subresource") else ""
        counts[(labels.get("verb", "?"), labels["resource"] + sub)] += int(float(match.group(2)))
    return counts


def write_requests(plane: ControlPlane) -> Counter[str]:
    counts: Counter[str] = Counter()
    for (verb, resource), count in requests_by_verb(plane).items():
        if verb in WRITE_VERBS:
            counts[resource] += count
    return counts


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def sandbox_list(
    names: list[str], spec: Mapping[str, object], *, namespace: str | None = None
) -> str:
    """One ``List`` manifest, so that ``kubectl apply`` creates them all in one go."""
    return as_list([sandbox_body(name, spec, namespace=namespace) for name in names])


def as_list(items: list[dict[str, Any]]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def phases(plane: ControlPlane) -> dict[str, dict[str, Any]]:
    listed = json.loads(plane.kubectl("get", "sandboxes", "-o", "json").stdout)
    return {item["metadata"]["name"]: item for item in listed["items"]}


def is_ready(body: dict[str, Any]) -> bool:
    conditions = body.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


MEMORY_LINES = re.compile(r"Memory:|Kernel command line|Unpacking initramfs|Out of memory|panic")


def console_tail(state: Path, uid: str, limit: int = 1500) -> str:
    """The kernel's memory accounting lines of the VM's console log, then its last bytes."""
    for log in sorted((state / "sandboxes" / uid).rglob("console.log")):
        text = log.read_bytes().decode(errors="replace")
        memory = [line for line in text.splitlines() if MEMORY_LINES.search(line)]
        return "\n".join([*memory, "...", text[-limit:]])
    return "(no console log)"


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` so far (the ones still alive)."""
    ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class Peak:
    process: ManagedProcess
    mib: float = 0.0

    def sample(self) -> float:
        pid = self.process.pid()
        current = rss_mib(pid) if pid is not None else 0.0
        self.mib = max(self.mib, current)
        return current


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="single sandboxes (0: skip)")
    parser.add_argument("--count", type=int, default=10, help="sandboxes applied at once")
    parser.add_argument("--memory", type=int, default=128, help="MiB per sandbox of the batch")
    parser.add_argument("--idle", type=float, default=60, help="idle seconds measured (0: skip)")
    args = parser.parse_args()
    # The one node advertises what --count sandboxes request (1.1 CPU and memory + 256 MiB each
    # with the sandbox Pod's overhead): this measures the system, not the node's size.
    shape = NodeShape(cpu=str(2 * args.count + 4), memory=f"{args.count + 8}Gi")
    with services.running_system(
        "ksb-bench-", node_shape=shape, cleanup_timeout=max(300, 10 * args.count)
    ) as system:
        if args.runs:
            overhead(system, args.runs)
        batch(system, args.count, args.memory, args.idle)


def overhead(system: services.RunningSystem, runs: int) -> None:
    plane, log = system.plane, system.paths.logs / "node-agent.log"
    totals, agent_parts = [], []
    for index in range(runs):
        name = f"single-{index}"
        began = time.monotonic()
        plane.kubectl("apply", "-f", "-", input_text=sandbox_manifest(name))
        wait_ready(plane, [name], 300)
        totals.append(time.monotonic() - began)
        uid = json.loads(plane.kubectl("get", "sandbox", name, "-o", "json").stdout)["metadata"][
            "uid"
        ]
        agent_parts.append(node_agent_part(log, uid))
        plane.kubectl("delete", "sandbox", name, "--wait", "--timeout=120s")
    total, part = statistics.median(totals), statistics.median(agent_parts)
    print(f"apply -> Ready (median of {runs}):           {total:6.2f} s")
    print(f"node agent: desired state -> Running:      {part:6.2f} s")
    print(f"operator, scheduler and Pod add:           {total - part:6.2f} s")
    print(f"ratio apply->Ready / node agent alone:     {total / part:6.2f}")


def batch(system: services.RunningSystem, count: int, memory: int, idle: float) -> None:
    plane, state = system.plane, system.node_agent.state
    operator, agent = Peak(system.operator.process), Peak(system.node_agent.process)
    names = [f"many-{i}" for i in range(count)]
    cheap = {"cpus": 1, "memory": memory, "network": {"policy": "None"}}
    before = write_requests(plane)
    began = time.monotonic()
    plane.kubectl("apply", "-f", "-", input_text=sandbox_list(names, cheap))
    applied = time.monotonic() - began
    ready_at: dict[str, float] = {}
    crashed: dict[str, str] = {}
    deadline = began + 120 + 20 * count
    while len(ready_at) + len(crashed) < count:
        bodies = phases(plane)
        now = time.monotonic() - began
        operator.sample()
        agent.sample()
        for name in names:
            body = bodies.get(name, {})
            if name not in ready_at and is_ready(body):
                ready_at[name] = now
            status = body.get("status", {})
            if name not in crashed and status.get("phase") in ("Crashed", "Failed"):
                crashed[name] = ended(state, name, body, now, len(ready_at), count, not crashed)
        if time.monotonic() > deadline:
            waiting = {n: bodies.get(n, {}).get("status", {}).get("phase") for n in names}
            raise SystemExit(f"not all Ready after {now:.0f}s: {Counter(waiting.values())}")
        time.sleep(1.0)
    if not ready_at:
        raise SystemExit(f"none of the {count} became Ready: {Counter(crashed.values())}")
    if crashed:
        print(
            f"{len(crashed)} of {count} ended instead of Ready: {dict(Counter(crashed.values()))}"
        )
    elapsed = max(ready_at.values())
    writes = write_requests(plane) - before
    times = list(ready_at.values())
    vms = len(services.qemu_processes(str(state)))
    print(
        f"{count} sandboxes ({memory} MiB, 1 vCPU) in one apply ({applied:.1f} s), "
        f"{len(ready_at)} Ready: {elapsed:6.1f} s"
    )
    print(
        f"  Ready after: first {min(times):.1f} s, median {statistics.median(times):.1f} s, "
        f"p90 {percentile(times, 0.9):.1f} s, last {elapsed:.1f} s; QEMU processes: {vms}"
    )
    pids = list(services.qemu_processes(str(state)))
    used = cpu_seconds(pids)
    time.sleep(10)
    idle_cpu = (cpu_seconds(pids) - used) / 10 * 100
    print(
        f"  CPU of the {len(pids)} idle VMs (QEMU under TCG), 10 s: {idle_cpu:.0f}% of one core "
        f"({idle_cpu / max(1, len(pids)):.1f}% each)"
    )
    print("API writes per sandbox (all clients), create -> Ready, by resource:")
    for resource, value in sorted(writes.items()):
        print(f"  {resource:<28} {value / count:6.2f}")
    print(f"  {'all':<28} {sum(writes.values()) / count:6.2f}")
    print(
        f"operator RSS with {count} sandboxes: {operator.sample():6.1f} MiB "
        f"(peak while converging {operator.mib:.1f} MiB)"
    )
    print(
        f"node agent RSS with {count} sandboxes: {agent.sample():6.1f} MiB "
        f"(peak while converging {agent.mib:.1f} MiB)"
    )
    if idle > 0:
        settled = write_requests(plane)
        time.sleep(idle)
        quiet = write_requests(plane) - settled
        print(f"API writes in {idle:.0f} idle s, all {count} Running: {sum(quiet.values())}")
        for resource, value in sorted(quiet.items()):
            print(f"  {resource:<28} {value}")
    began = time.monotonic()
    plane.kubectl("delete", "sandboxes", "--all", "--wait", f"--timeout={60 + 10 * count}s")
    gone = time.monotonic() - began
    folders = list((state / "sandboxes").iterdir()) if (state / "sandboxes").is_dir() else []
    print(
        f"delete of all {count}: {gone:.1f} s; "
        f"left: {len(services.qemu_processes(str(state)))} QEMU, "
        f"{len(folders)} per-sandbox folders"
    )


def ended(
    state: Path, name: str, body: dict[str, Any], now: float, ready: int, count: int, first: bool
) -> str:
    """A sandbox of the batch ended instead of running: say why (the console of the first)."""
    status = body.get("status", {})
    reason = (status.get("exitStatus") or {}).get("reason")
    print(
        f"{name} ended {status.get('phase')} ({reason}) after {now:.1f} s "
        f"({ready} of {count} Ready then): {str(status.get('message')).splitlines()[0]}"
    )
    if first:
        print(f"--- console log of {name}, last lines:")
        print(console_tail(state, body["metadata"]["uid"]))
    return f"{status.get('phase')} {reason}"


if __name__ == "__main__":
    main()
