"""HTTPS from a guest through the egress proxy (a sandbox with a secret) against the same
sandbox without secrets (straight to the host), measured in one run (TCG here).

    .venv/bin/python bench/egress.py [--requests 10] [--keepalive 50] [--mib 16] [--rounds 5]

Two sandboxes of the Debian test image (curl; tests/support/egress.py), ``PublicOnly``, live
at once, and one test host on a TEST-NET address serving HTTPS with a certificate from a test
CA (the proxy trusts it upstream; the plain sandbox's curl is given it with ``--cacert``). The
"secret" sandbox has one ``spec.secrets`` entry for the host, so all its TCP goes through the
per-sandbox proxy, which terminates TLS with the sandbox's CA, substitutes the value in the
``Authorization`` header and opens its own verified TLS connection upstream; the "plain"
sandbox sends the same header with a literal token. Each round, in the guest:

- **new connection**: ``--requests`` curl runs, one request each (DNS, TCP, TLS, request);
  curl's own ``time_total`` per request;
- **keep-alive**: one curl run sending ``--keepalive`` requests on one connection;
  ``time_total`` of each request after the first (the request and its answer alone);
- **throughput**: ``GET /bytes/N`` of ``--mib`` MiB, curl's ``speed_download``.

The host's records confirm that the secret sandbox's requests carried the real value and the
plain one's the literal; keep-alive runs are checked to open one connection. Prints medians,
the TLS version and cipher each guest's curl negotiated (with the proxy, or with the host),
and the secret/plain ratios as JSON: each round measures the two sandboxes back to back per
metric (who goes first alternates), and the ratio reported is the median of the rounds'
ratios with their range, since the shared machine's load moves within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # appended, not prepended: the repo's operator/ must not shadow

from kubesandbox_api.conditions import Phase  # noqa: E402
from kubesandbox_node.runtime.manager import Runtime  # noqa: E402
from kubesandbox_node.runtime.model import DesiredSandbox  # noqa: E402
from kubesandbox_node.runtime.supervisor import Supervisor  # noqa: E402
from tests.support.egress import EgressHosts, egress_hosts, guest_image  # noqa: E402
from tests.support.runtimes import networked_bench_runtime, run, until  # noqa: E402

HOST = "api.bench.test"
VALUE = "sk-bench-6c1f0e9d8a7b"
LITERAL = "sk-plain-0a1b2c3d4e5f"
METRICS = {
    "new_connection": ("ms", 1000.0),
    "keepalive_request": ("ms", 1000.0),
    "download": ("mib_s", 1.0),
}
"""Each metric, the unit it is printed in and the factor from what is measured."""
CA_FILE = "/tmp/bench-ca.pem"  # noqa: S108 - a path in the guest


async def boot(runtime: Runtime, image: str, name: str, secret: bool) -> Supervisor:
    spec: dict[str, Any] = {"image": {"oci": image}, "memory": 384,
                            "network": {"policy": "PublicOnly"}}  # fmt: skip
    resolved: dict[str, Any] = {}
    if secret:
        spec["secrets"] = [
            {"env": "API_KEY", "secretKeyRef": {"name": "s", "key": "k"}, "allowHosts": [HOST]}
        ]
        resolved = {"secrets": {"API_KEY": VALUE}}
    desired = DesiredSandbox.model_validate(
        {"namespace": "bench", "name": name, "uid": str(uuid.uuid4()), "generation": 1,
         "spec": spec, "resolved": resolved}
    )  # fmt: skip
    supervisor = runtime.put(desired)
    await until(supervisor, Phase.RUNNING)
    return supervisor


class Guest:
    """How one sandbox sends the benchmark's requests."""

    def __init__(self, supervisor: Supervisor, secret: bool, ca_pem: bytes) -> None:
        self.supervisor, self.secret, self.ca_pem = supervisor, secret, ca_pem
        token = '"$API_KEY"' if secret else LITERAL
        trust = "" if secret else f"--cacert {CA_FILE} "  # the secret one trusts its proxy's CA
        self.curl = f'curl -sS --max-time 120 {trust}-H "Authorization: Bearer {token}" '

    async def prepare(self) -> None:
        if not self.secret:
            pem = self.ca_pem.decode()
            await run(self.supervisor, f"cat > {CA_FILE} <<'EOF'\n{pem}EOF")

    async def times(self, script: str) -> list[float]:
        return [float(x) for x in (await run(self.supervisor, script)).split()]

    async def new_connections(self, count: int, tag: str) -> list[float]:
        one = self.curl + f"-o /dev/null -w '%{{time_total}}\\n' https://{HOST}/new-{tag}-$i"
        return await self.times(f"for i in $(seq {count}); do {one}; done")

    async def keep_alive(self, count: int, tag: str) -> list[float]:
        urls = " ".join(f"-o /dev/null https://{HOST}/ka-{tag}-{i}" for i in range(count))
        script = self.curl + f"-w '%{{time_total}} %{{num_connects}}\\n' {urls}"
        values = await self.times(script)
        seconds, connects = values[0::2], values[1::2]
        if connects[1:] != [0.0] * (count - 1):
            raise RuntimeError(f"curl opened connections {connects}: no keep-alive")
        return seconds[1:]  # the first one opens the connection

    async def tls(self) -> str:
        """What curl negotiated (with the proxy, or with the host): version and cipher."""
        out = await run(self.supervisor, self.curl.replace("-sS", "-sSv") + f"-o /dev/null "
                        f"https://{HOST}/tls 2>&1 | grep 'SSL connection using'")  # fmt: skip
        return out.split("using", 1)[1].strip()

    async def throughput(self, mib: int) -> float:
        script = self.curl + f"-o /dev/null -w '%{{speed_download}}\\n' https://{HOST}/bytes/"
        (speed,) = await self.times(script + str(mib << 20))
        return speed / (1 << 20)


def check_records(kit: EgressHosts, tag: str) -> None:
    """The secret sandbox's requests reached the host with the value, the plain one's with the
    literal (so the measured paths are the ones described)."""
    seen = {r.header("authorization") for r in kit[HOST].requests() if tag in r.path}
    expected = {f"Bearer {VALUE}", f"Bearer {LITERAL}"}
    if seen != expected:
        raise RuntimeError(f"the host saw {seen}, expected {expected}")


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    with egress_hosts([HOST]) as kit:
        async with networked_bench_runtime(
            "ksb-bench-egress-", dns=[kit.dns], upstream_cas=[str(kit.ca_pem)]
        ) as (runtime, registry):
            image = await asyncio.to_thread(guest_image, registry)
            guests = {}
            for kind in ("secret", "plain"):
                supervisor = await boot(runtime, image, f"egress-{kind}", kind == "secret")
                guests[kind] = Guest(supervisor, kind == "secret", kit.ca_pem.read_bytes())
                await guests[kind].prepare()
            # warm-up: the page cache of curl and its libraries, the proxy's leaf certificate
            for guest in guests.values():
                await guest.new_connections(2, "warm")
                await guest.throughput(1)
            check_records(kit, "new-warm")
            tls = {kind: await guest.tls() for kind, guest in guests.items()}
            samples: dict[str, dict[str, list[float]]] = {
                kind: {metric: [] for metric in METRICS} for kind in guests
            }
            ratios: dict[str, list[float]] = {metric: [] for metric in METRICS}
            for i in range(args.rounds):
                began = time.monotonic()
                for metric in METRICS:
                    # the two sandboxes back to back, each metric, first one alternating
                    order = list(guests) if i % 2 == 0 else list(guests)[::-1]
                    for kind in order:
                        value = await sample(guests[kind], metric, args, f"r{i}")
                        samples[kind][metric].append(value)
                    ratios[metric].append(samples["secret"][metric][-1] /
                                          samples["plain"][metric][-1])  # fmt: skip
                check_records(kit, f"new-r{i}")
                print(f"round {i} ({time.monotonic() - began:.0f}s): " + ", ".join(
                    f"{m} {samples['secret'][m][-1]:.3g}/{samples['plain'][m][-1]:.3g}"
                    f" = {ratios[m][-1]:.2f}" for m in METRICS), flush=True)  # fmt: skip
    out: dict[str, Any] = {
        "requests_per_round": args.requests,
        "keepalive_per_round": args.keepalive,
        "rounds": args.rounds,
        "download_mib": args.mib,
    }
    for kind in guests:
        out[kind] = {
            f"{metric}_{unit}": round(statistics.median(samples[kind][metric]) * scale, 2)
            for metric, (unit, scale) in METRICS.items()
        }
        out[kind]["guest_tls"] = tls[kind]
    for metric in METRICS:
        out[f"{metric}_secret_over_plain"] = {
            "median": round(statistics.median(ratios[metric]), 3),
            "min": round(min(ratios[metric]), 3),
            "max": round(max(ratios[metric]), 3),
        }
    return out


async def sample(guest: Guest, metric: str, args: argparse.Namespace, tag: str) -> float:
    """One round's value of ``metric`` for one sandbox (seconds, or MiB/s)."""
    if metric == "new_connection":
        return statistics.median(await guest.new_connections(args.requests, tag))
    if metric == "keepalive_request":
        return statistics.median(await guest.keep_alive(args.keepalive, tag))
    return await guest.throughput(args.mib)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10, help="new-connection requests")
    parser.add_argument("--keepalive", type=int, default=50, help="requests on one connection")
    parser.add_argument("--mib", type=int, default=16, help="MiB downloaded per round")
    parser.add_argument("--rounds", type=int, default=5)
    print(json.dumps(asyncio.run(measure(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
