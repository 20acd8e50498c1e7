"""Egress proxy benchmark (issue #12): HTTPS through the secrets proxy against the same guest
without secrets, measured in one run on this machine (TCG here).

    .venv/bin/python bench/egress.py [--requests 30] [--mib 16] [--rounds 3]

Two sandboxes from the Debian test image (curl), each in its own network namespace, against
one test host on a TEST-NET address (tests/support/egress.py) serving HTTPS with a test CA:
``plain`` has no secrets (curl trusts the test CA directly, its TCP goes straight out),
``proxied`` has one secret for that host (its TCP goes through the egress proxy, which
verifies the host with the test CA, intercepts with the sandbox's CA and puts the real value
into a header). Each round, alternating the sandboxes:

- **new connection**: ``--requests`` sequential ``curl`` runs, each a TCP and TLS handshake
  and one request (``time_total``), median;
- **keep-alive**: one ``curl`` with ``--requests`` URLs on one connection, the median
  ``time_total`` of the requests after the first;
- **throughput**: one download of ``--mib`` MiB (``speed_download``).

Prints the medians of each, and proxied/plain ratios, as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # appended, not prepended: the repo's operator/ must not shadow

from kubesandbox_api.conditions import Phase  # noqa: E402
from kubesandbox_node.runtime.model import DesiredSandbox  # noqa: E402
from kubesandbox_node.runtime.supervisor import Supervisor  # noqa: E402
from tests.support.egress import egress_hosts, guest_image  # noqa: E402
from tests.support.runtimes import bench_node, run, until  # noqa: E402

HOST = "api.bench.test"
VALUE = "bench-secret-value"


def desired(name: str, image: str, secrets: bool) -> DesiredSandbox:
    spec: dict[str, Any] = {"image": {"oci": image}, "memory": 384}
    resolved: dict[str, Any] = {}
    if secrets:
        spec["secrets"] = [
            {"env": "API_KEY", "secretKeyRef": {"name": "s", "key": "k"}, "allowHosts": [HOST]}
        ]
        resolved["secrets"] = {"API_KEY": VALUE}
    return DesiredSandbox.model_validate(
        {"namespace": "bench", "name": name, "uid": str(uuid.uuid4()), "generation": 1,
         "spec": spec, "resolved": resolved}
    )  # fmt: skip


def numbers(text: str) -> list[float]:
    return [float(line) for line in text.split() if line.strip()]


async def measure(sandbox: Supervisor, ca: str, requests: int, mib: int) -> dict[str, float]:
    curl = f'curl -sS --max-time 120 {ca} -H "X-Key: $API_KEY"'
    url = f"https://{HOST}/bench"
    one = f"{curl} -o /dev/null -w '%{{time_total}}\\n' {url}"
    fresh = numbers(await run(sandbox, f"for i in $(seq {requests}); do {one}; done"))
    urls = " ".join(f"-o /dev/null {url}?{i}" for i in range(requests))
    kept = numbers(await run(sandbox, f"{curl} -w '%{{time_total}}\\n' {urls}"))
    download = f"https://{HOST}/bytes/{mib << 20}"
    speed = numbers(
        await run(sandbox, f"{curl} -o /dev/null -w '%{{speed_download}}\\n' {download}")
    )
    return {
        "new_connection_s": statistics.median(fresh),
        "keep_alive_s": statistics.median(kept[1:]),
        "download_mib_s": speed[0] / (1 << 20),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--mib", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with egress_hosts([HOST]) as kit:
        async with bench_node(
            "ksb-bench-egress-", dns=[kit.dns], upstream_cas=[str(kit.ca_pem)]
        ) as node:
            image = guest_image(node.registry)
            sandboxes = {
                "plain": node.runtime.put(desired("plain", image, secrets=False)),
                "proxied": node.runtime.put(desired("proxied", image, secrets=True)),
            }
            for sandbox in sandboxes.values():
                await until(sandbox, Phase.RUNNING)
            ca = kit.ca_pem.read_text()
            await run(sandboxes["plain"], f"cat > /tmp/test-ca.pem <<'EOF'\n{ca}EOF")
            options = {"plain": "--cacert /tmp/test-ca.pem", "proxied": ""}
            results: dict[str, list[dict[str, float]]] = {name: [] for name in sandboxes}
            for i in range(args.rounds):
                for name, sandbox in sandboxes.items():
                    got = await measure(sandbox, options[name], args.requests, args.mib)
                    results[name].append(got)
                    print(f"round {i} {name}: {json.dumps(got)}", flush=True)
            if not kit[HOST].wait_for(lambda r: r.header("x-key") == VALUE).path:
                raise RuntimeError("the proxied sandbox's requests did not carry the value")
            summary: dict[str, Any] = {}
            for name, rounds in results.items():
                summary[name] = {
                    key: round(statistics.median(r[key] for r in rounds), 4) for key in rounds[0]
                }
            summary["proxied_over_plain"] = {
                key: round(summary["proxied"][key] / summary["plain"][key], 3)
                for key in summary["plain"]
            }
            summary["setup"] = vars(args)
            print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
