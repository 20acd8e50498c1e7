"""Operator benchmark, measured in one run on this machine (TCG here).

    .venv/bin/python bench/apply.py [--runs 3] [--count 10]

The whole system of ``make up`` (control plane, preloaded registry, node agent, operator) is
started in a temporary directory, then:

- **operator overhead**: for each of ``--runs`` sandboxes, ``kubectl apply`` → ``Ready=True``
  (what a user waits for) against the node agent's own part of it, from receiving the desired
  state to the VM Running (timestamps of its ``sandbox.phase`` log lines). The difference is
  what the operator, the scheduler and the sandbox Pod add; the ratio is printed.
- **N at once**: ``--count`` sandboxes applied together (the cheapest real VM: 1 vCPU, 128 MiB,
  no network); time until all are Ready, API write requests per sandbox by resource (from the
  apiserver's ``apiserver_request_total``, all clients: operator, node agent, scheduler,
  garbage collector), and the operator's resident memory.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

from kubesandbox_devenv import services
from kubesandbox_devenv.controlplane import ControlPlane
from kubesandbox_devenv.nodes import NodeShape

WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE"}


def sandbox_manifest(name: str, **spec: object) -> str:
    body = {"image": {"oci": "busybox:1.36"}, **spec}
    return json.dumps(
        {
            "apiVersion": "kubesandbox.dev/v1alpha1",
            "kind": "Sandbox",
            "metadata": {"name": name},
            "spec": body,
        }
    )


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


def write_requests(plane: ControlPlane) -> Counter[str]:
    text = plane.kubectl("get", "--raw", "/metrics").stdout
    counts: Counter[str] = Counter()
    pattern = re.compile(r"^apiserver_request_total\{(.*)\} (\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if labels.get("verb") in WRITE_VERBS and labels.get("resource"):
            subresource = f"/{labels['subresource']}" if labels.get("subresource") else ""
            counts[labels["resource"] + subresource] += int(float(match.group(2)))
    return counts


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args()
    # The one node advertises what --count sandboxes request (1.1 CPU and 384 MiB each with
    # the sandbox Pod's overhead): this measures the system, not the node's size.
    shape = NodeShape(cpu=str(2 * args.count + 4), memory=f"{args.count + 8}Gi")
    with services.running_system("ksb-bench-", node_shape=shape, cleanup_timeout=300) as system:
        run(system.plane, system.operator, args.runs, args.count, system.paths)


def run(
    plane: ControlPlane,
    operator: services.OperatorService,
    runs: int,
    count: int,
    paths: services.Paths,
) -> None:
    log = paths.logs / "node-agent.log"
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

    names = [f"many-{i}" for i in range(count)]
    cheap = {"memory": 128, "network": {"policy": "None"}}
    before = write_requests(plane)
    began = time.monotonic()
    for name in names:
        plane.kubectl("apply", "-f", "-", input_text=sandbox_manifest(name, **cheap))
    wait_ready(plane, names, 60 + 30 * count)
    elapsed = time.monotonic() - began
    writes = write_requests(plane) - before
    pid = operator.process.pid()
    assert pid is not None
    print(f"{count} sandboxes applied at once, all Ready: {elapsed:6.1f} s")
    print("API writes per sandbox (all clients), create -> Ready, by resource:")
    for resource, value in sorted(writes.items()):
        print(f"  {resource:<28} {value / count:6.2f}")
    print(f"operator RSS with {count} sandboxes:        {rss_mib(pid):6.1f} MiB")
    settled = write_requests(plane)
    time.sleep(60)
    idle = write_requests(plane) - settled
    print(f"API writes in one idle minute, all {count} Running: {sum(idle.values())}")
    for resource, value in sorted(idle.items()):
        print(f"  {resource:<28} {value}")


if __name__ == "__main__":
    main()
