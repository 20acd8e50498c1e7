"""HTTPS from a guest through the egress proxy (a sandbox with a secret) against the same
sandbox without secrets (straight to the host), measured in one run (TCG here).

    .venv/bin/python bench/egress.py [--requests 20] [--keepalive 50] [--mib 16] [--rounds 3]

Two sandboxes of the Debian test image (curl; tests/support/egress.py), ``PublicOnly``, live
at once, and one test host on a TEST-NET address serving HTTPS with a certificate from a test
CA (the proxy trusts it upstream; the plain sandbox's curl is given it with ``--cacert``). The
"secret" sandbox has one ``spec.secrets`` entry for the host, so all its TCP goes through the
per-sandbox proxy, which terminates TLS with the sandbox's CA, substitutes the value in the
``Authorization`` header and opens its own verified TLS connection upstream; the "plain"
sandbox sends the same header with a literal token. Rounds alternate between the two, so
drift on the shared machine hits both alike. Each round, in the guest:

- **new connection**: ``--requests`` curl runs, one request each (DNS, TCP, TLS, request);
  curl's own ``time_total`` per request;
- **keep-alive**: one curl run sending ``--keepalive`` requests on one connection;
  ``time_total`` of each request after the first (the request and its answer alone);
- **throughput**: ``GET /bytes/N`` of ``--mib`` MiB, curl's ``speed_download``.

The host's records confirm that the secret sandbox's requests carried the real value and the
plain one's the literal; keep-alive runs are checked to open one connection. Prints medians,
the TLS version and cipher each guest's curl negotiated (with the proxy, or with the host),
and the secret/plain ratios as JSON.
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
                kind: {"new": [], "keepalive": [], "mib_s": []} for kind in guests
            }
            for i in range(args.rounds):
                order = list(guests) if i % 2 == 0 else list(guests)[::-1]
                for kind in order:
                    guest, out = guests[kind], samples[kind]
                    began = time.monotonic()
                    out["new"] += await guest.new_connections(args.requests, f"r{i}")
                    out["keepalive"] += await guest.keep_alive(args.keepalive, f"r{i}")
                    out["mib_s"].append(await guest.throughput(args.mib))
                    print(
                        f"round {i} {kind}: new {statistics.median(out['new']) * 1000:.1f} ms,"
                        f" keep-alive {statistics.median(out['keepalive']) * 1000:.1f} ms,"
                        f" {out['mib_s'][-1]:.1f} MiB/s ({time.monotonic() - began:.0f}s)",
                        flush=True,
                    )
                check_records(kit, f"new-r{i}")
    medians = {
        kind: {name: statistics.median(values) for name, values in kinds.items()}
        for kind, kinds in samples.items()
    }
    secret, plain = medians["secret"], medians["plain"]
    return {
        "requests_per_round": args.requests,
        "keepalive_per_round": args.keepalive,
        "rounds": args.rounds,
        "download_mib": args.mib,
        "secret": {
            "new_connection_ms": round(secret["new"] * 1000, 2),
            "keepalive_request_ms": round(secret["keepalive"] * 1000, 2),
            "download_mib_s": round(secret["mib_s"], 2),
            "guest_tls": tls["secret"],
        },
        "plain": {
            "new_connection_ms": round(plain["new"] * 1000, 2),
            "keepalive_request_ms": round(plain["keepalive"] * 1000, 2),
            "download_mib_s": round(plain["mib_s"], 2),
            "guest_tls": tls["plain"],
        },
        "new_connection_secret_over_plain": round(secret["new"] / plain["new"], 3),
        "keepalive_secret_over_plain": round(secret["keepalive"] / plain["keepalive"], 3),
        "throughput_secret_over_plain": round(secret["mib_s"] / plain["mib_s"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20, help="new-connection requests")
    parser.add_argument("--keepalive", type=int, default=50, help="requests on one connection")
    parser.add_argument("--mib", type=int, default=16, help="MiB downloaded per round")
    parser.add_argument("--rounds", type=int, default=3)
    print(json.dumps(asyncio.run(measure(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
