"""The node agent's ``GET /metrics`` in the Prometheus text format (version 0.0.4).

Per sandbox: gauges for CPU, memory, limit and uptime, counters for disk and network bytes,
labelled ``namespace``, ``name``, ``uid``; per node: sandboxes by phase. Label values are
escaped as the format requires (backslash, double quote, newline).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kubesandbox_api.status import SandboxMetrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_SERIES: tuple[tuple[str, str, str, str], ...] = (
    ("cpu_percent", "kubesandbox_sandbox_cpu_percent", "gauge", "CPU use in percent of one CPU"),
    ("memory_bytes", "kubesandbox_sandbox_memory_bytes", "gauge", "Host memory charged to the VM"),
    ("memory_limit_bytes", "kubesandbox_sandbox_memory_limit_bytes", "gauge", "VM memory limit"),
    ("disk_read_bytes", "kubesandbox_sandbox_disk_read_bytes_total", "counter", "Bytes read"),
    ("disk_write_bytes", "kubesandbox_sandbox_disk_write_bytes_total", "counter", "Bytes written"),
    ("net_rx_bytes", "kubesandbox_sandbox_network_receive_bytes_total", "counter", "Received"),
    ("net_tx_bytes", "kubesandbox_sandbox_network_transmit_bytes_total", "counter", "Sent"),
    ("uptime_seconds", "kubesandbox_sandbox_uptime_seconds", "gauge", "Seconds up"),
)  # fmt: skip


@dataclass(frozen=True)
class Labelled:
    namespace: str
    name: str
    uid: str
    metrics: SandboxMetrics


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items()) + "}"


def render(sandboxes: Iterable[Labelled], phases: Mapping[str, int]) -> str:
    items = list(sandboxes)
    lines: list[str] = []
    for field, metric, kind, help_text in _SERIES:
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
        for item in items:
            value = getattr(item.metrics, field)
            if value is None:
                continue
            labels = _labels({"namespace": item.namespace, "name": item.name, "uid": item.uid})
            lines.append(f"{metric}{labels} {value}")
    lines += [
        "# HELP kubesandbox_node_sandboxes Sandboxes known to this node agent, by phase",
        "# TYPE kubesandbox_node_sandboxes gauge",
    ]
    for phase, count in sorted(phases.items()):
        lines.append(f"kubesandbox_node_sandboxes{_labels({'phase': phase})} {count}")
    return "\n".join(lines) + "\n"
