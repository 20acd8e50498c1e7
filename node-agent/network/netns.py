"""A network namespace per sandbox; QEMU runs inside it with a tap device.

```
 guest eth0 10.0.2.15/24 ── tap0 10.0.2.1 ┐ netns ksb-<uid8>: iptables (policy, DNS DNAT,
                                          │ published-port DNAT, MASQUERADE to eth0)
                             eth0 10.231.N.2/30 ── veth ── ksbh<N> 10.231.N.1/30 (node)
                                                            node: MASQUERADE, port DNAT
```

Every sandbox sees the same guest addresses (``10.0.2.15``, gateway and DNS ``10.0.2.1``);
only the /30 link to the node differs (index N, persisted per sandbox). Policy lives inside
the sandbox's namespace, where the guest cannot touch it and where it cannot clash with the
node's own rules:

- ``All``: forward everything out.
- ``PublicOnly``: refuse (REJECT, so clients fail fast) every non-public destination
  (``ranges``), the node's own addresses and configured cluster ranges.
- ``None``: no NIC and no namespace at all; with ``rules``, a NIC whose only egress is what
  the rules allow.

``spec.network.rules`` come first, in order: a CIDR rule is one line of the FORWARD chain, a
domain rule jumps to a chain of its own (``KSB-R<i>``) that holds the addresses the sandbox's
resolver pinned for its names (``resolver``). Every DNS query of the guest (port 53, any
destination) is redirected to that resolver, which listens on ``10.0.2.1:53`` inside the
namespace (its sockets are made there, ``_bind_in``) and forwards to the node's resolvers.

Published ports: the node DNATs ``hostPort`` (PREROUTING, and OUTPUT for node-local clients
connecting to a node address) to the sandbox link address, the namespace DNATs it on to the
guest. Node rules carry the comment ``ksb:<uid>`` and are removed by it.

QEMU is started with ``ip netns exec`` (``wrap_argv``), so its tap is created inside; the
namespace outlives node agent restarts with the VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import ipaddress
import json
import os
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import structlog

from kubesandbox_api.spec import NetworkPolicy, NetworkRule, RuleAction
from kubesandbox_node.egress.ca import SandboxCA, upstream_context
from kubesandbox_node.egress.proxy import EgressProxy, Report
from kubesandbox_node.egress.substitute import Entry, Violation
from kubesandbox_node.network.ranges import blocked, host_addresses, resolvers
from kubesandbox_node.network.resolver import Pins, PinTable, Resolver
from kubesandbox_node.runtime.model import DesiredSandbox
from kubesandbox_node.vm import bootconfig as bc

GUEST_IP = "10.0.2.15"
GATEWAY = "10.0.2.1"
GUEST_PREFIX = 24
TAP = "tap0"
NS_LINK = "eth0"
LINK_BASE = "10.231.0.0/16"
EGRESS_PORT = 15001
"""Where the egress proxy listens inside the namespace (on the gateway address)."""
log = structlog.get_logger(__name__)


class NetworkError(RuntimeError):
    pass


async def run(*argv: str, input: bytes | None = None, check: bool = True) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(input)
    if check and process.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {err.decode(errors='replace').strip()}")
    return out.decode()


def mac_for(uid: str) -> str:
    digest = hashlib.sha256(uid.encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


@dataclass(frozen=True)
class Plan:
    uid: str
    index: int
    policy: NetworkPolicy
    ports: tuple[tuple[str, int, int], ...]
    """(protocol, guest port, host port)."""
    rules: tuple[NetworkRule, ...] = ()
    egress: bool = False
    """The sandbox has secrets: its TCP goes through the egress proxy, UDP 443 is dropped."""

    @property
    def netns(self) -> str:
        return f"ksb-{self.uid[:8]}"

    @property
    def host_if(self) -> str:
        return f"ksbh{self.index}"

    def link(self, base: str) -> tuple[str, str, str]:
        network = ipaddress.ip_network(base)
        first = int(network.network_address) + self.index * 4
        subnet = ipaddress.ip_network(f"{ipaddress.ip_address(first)}/30")
        return (
            str(ipaddress.ip_address(first + 1)),
            str(ipaddress.ip_address(first + 2)),
            str(subnet),
        )


def chain_name(index: int) -> str:
    """The chain holding the pinned addresses of domain rule ``index``."""
    return f"KSB-R{index}"


def _verdict(action: RuleAction) -> str:
    if action == RuleAction.ALLOW:
        return "-j ACCEPT"
    return "-j REJECT --reject-with icmp-net-prohibited"


def rule_lines(index: int, rule: NetworkRule) -> list[str]:
    """FORWARD lines of one rule: its destination (a CIDR, or a jump to its chain of pinned
    addresses), protocol and ports; without a protocol, ports match TCP and UDP."""
    if rule.destination.cidr is not None:
        cidr = ipaddress.IPv4Network(rule.destination.cidr, strict=False)
        target = f"-d {cidr} {_verdict(rule.action)}"
    else:
        target = f"-j {chain_name(index)}"
    protocols: list[str | None] = [rule.protocol.value.lower()] if rule.protocol else [None]
    if rule.ports and rule.protocol is None:
        protocols = ["tcp", "udp"]
    lines = []
    for protocol in protocols:
        match = f"-A FORWARD -i {TAP} -o {NS_LINK}"
        if protocol is not None:
            match += f" -p {protocol}"
        if not rule.ports:
            lines.append(f"{match} {target}")
        for port in rule.ports:
            end = port.end_port if port.end_port is not None else port.port
            span = str(port.port) if end == port.port else f"{port.port}:{end}"
            lines.append(f"{match} --dport {span} {target}")
    return lines


def chain_lines(index: int, rule: NetworkRule, addresses: Sequence[str]) -> list[str]:
    """The content of a domain rule's chain: one line per pinned address."""
    return [f"-A {chain_name(index)} -d {a}/32 {_verdict(rule.action)}" for a in addresses]


def namespace_rules(plan: Plan, refuse: list[str], pins: Pins | None = None) -> str:
    """The namespace's whole ruleset (``iptables-restore`` input): DNS redirected to the
    sandbox's resolver, published ports, the rules in order, then the policy's default."""
    pins = pins or {}
    nat = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
           ":POSTROUTING ACCEPT [0:0]"]  # fmt: skip
    filt = ["*filter", ":INPUT DROP [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]"]
    for index, rule in enumerate(plan.rules):
        if rule.destination.cidr is None:
            filt.append(f":{chain_name(index)} - [0:0]")
    filt += ["-A INPUT -i lo -j ACCEPT",
             "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
             "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
             # a TCP segment of a connection this namespace never saw open: a fork's inherited
             # connections (docs/fork.md); reset in the guest, never sent on from here
             f"-A FORWARD -i {TAP} -p tcp ! --syn -m conntrack --ctstate NEW "
             "-j REJECT --reject-with tcp-reset"]  # fmt: skip
    for proto in ("udp", "tcp"):
        nat.append(
            f"-A PREROUTING -i {TAP} -p {proto} --dport 53 -j DNAT --to-destination {GATEWAY}:53"
        )
        filt.append(f"-A INPUT -i {TAP} -d {GATEWAY}/32 -p {proto} --dport 53 -j ACCEPT")
    if plan.egress:
        nat += egress_nat_lines()
        filt += egress_filter_lines()
    policy_start = len(filt)
    for proto, port, _ in plan.ports:
        nat.append(
            f"-A PREROUTING -i {NS_LINK} -p {proto} --dport {port} "
            f"-j DNAT --to-destination {GUEST_IP}:{port}"
        )
        filt.append(
            f"-A FORWARD -i {NS_LINK} -o {TAP} -d {GUEST_IP}/32 -p {proto} --dport {port} "
            "-m conntrack --ctstate DNAT -j ACCEPT"
        )
    for index, rule in enumerate(plan.rules):
        filt += rule_lines(index, rule)
    for index, rule in enumerate(plan.rules):
        if rule.destination.cidr is None:
            filt += chain_lines(index, rule, pins.get(index, []))
    if plan.policy == NetworkPolicy.PUBLIC_ONLY:
        for cidr in refuse:
            filt.append(
                f"-A FORWARD -i {TAP} -d {cidr} -j REJECT --reject-with icmp-net-prohibited"
            )
    if plan.policy == NetworkPolicy.NONE:
        filt.append(f"-A FORWARD -i {TAP} -j REJECT --reject-with icmp-net-prohibited")
    else:
        filt.append(f"-A FORWARD -i {TAP} -o {NS_LINK} -j ACCEPT")
    if plan.egress:
        filt += proxy_output_lines(filt[policy_start:])
    nat.append(f"-A POSTROUTING -o {NS_LINK} -j MASQUERADE")
    return "\n".join([*nat, "COMMIT", *filt, "COMMIT", ""])


def egress_nat_lines() -> list[str]:
    """The guest's TCP (DNS and the gateway itself aside) to the egress proxy."""
    return [f"-A PREROUTING -i {TAP} -p tcp ! -d {GATEWAY}/32 -j REDIRECT --to-ports {EGRESS_PORT}"]


def egress_filter_lines() -> list[str]:
    """The proxy's port open to the guest, and QUIC dropped (clients fall back to TCP, which
    the proxy sees)."""
    return [
        f"-I FORWARD 1 -i {TAP} -p udp --dport 443 -j DROP",
        f"-A INPUT -i {TAP} -d {GATEWAY}/32 -p tcp --dport {EGRESS_PORT} -j ACCEPT",
    ]


def proxy_output_lines(policy: Sequence[str]) -> list[str]:
    """The guest's policy and rules once more, for the proxy's own connections (they leave
    the namespace from its OUTPUT, not through FORWARD): the same destinations are refused."""
    out = ["-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"]
    for line in policy:
        if not line.startswith("-A FORWARD -i "):
            continue
        for prefix in (f"-A FORWARD -i {TAP} -o {NS_LINK} ", f"-A FORWARD -i {TAP} "):
            if line.startswith(prefix):
                out.append(f"-A OUTPUT -o {NS_LINK} " + line[len(prefix) :])
                break
    return out


def chain_update(rules: Sequence[NetworkRule], changed: Pins) -> str:
    """``iptables-restore --noflush`` input rewriting only the chains of ``changed`` rules."""
    lines = ["*filter"]
    for index, addresses in sorted(changed.items()):
        lines.append(f"-F {chain_name(index)}")
        lines += chain_lines(index, rules[index], addresses)
    return "\n".join([*lines, "COMMIT", ""])


_CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def enter_netns(netns: str) -> None:
    """Moves the calling thread into ``netns`` (``setns`` applies to one thread only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(target, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
    finally:
        os.close(target)


def _in_netns(netns: str, make: Callable[[], T]) -> T:
    """``make()`` run by a thread inside ``netns``, which ends afterwards: it never goes back
    to the node's namespace, and sockets made there stay in the sandbox's."""
    result: list[T] = []
    failure: list[BaseException] = []

    def enter() -> None:
        try:
            enter_netns(netns)
            result.append(make())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=enter, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if failure:
        raise NetworkError(f"sockets in {netns}: {failure[0]}")
    return result[0]


def _listener(address: str, port: int) -> socket.socket:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((address, port))
    tcp.listen(64)
    return tcp


def _bind_in(netns: str, address: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A UDP and a listening TCP socket bound to ``address:port`` inside ``netns``, served by
    the node agent from its own loop while they live in the sandbox's namespace."""

    def make() -> tuple[socket.socket, socket.socket]:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((address, port))
        return udp, _listener(address, port)

    return _in_netns(netns, make)


class NetnsConnector:
    """TCP connections made from inside a sandbox's namespace (the egress proxy's upstream
    side), by one thread that lives there."""

    def __init__(self, netns: str) -> None:
        self.pool = ThreadPoolExecutor(1, f"egress-{netns}", enter_netns, (netns,))

    async def __call__(self, address: str, port: int) -> socket.socket:
        loop = asyncio.get_running_loop()
        sock = await loop.run_in_executor(self.pool, socket.socket)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, (address, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


ViolationSink = Callable[[str, Violation], None]
"""(the VM's uid, what happened)."""


@dataclass
class Egress:
    """A sandbox's egress proxy, its CA and the thread that connects from its namespace."""

    proxy: EgressProxy
    ca: SandboxCA
    connector: NetnsConnector

    @classmethod
    def start(
        cls, netns: str, *, upstream: ssl.SSLContext, pins: PinTable, report: Report
    ) -> Egress:
        ca = SandboxCA(netns)
        connector = NetnsConnector(netns)
        proxy = EgressProxy(
            netns, ca=ca, upstream=upstream, pins=pins, connect=connector, report=report
        )
        return cls(proxy, ca, connector)

    def configure(self, desired: DesiredSandbox) -> None:
        default = desired.spec.network.secret_violation_action
        entries = [Entry.of(secret, default) for secret in desired.spec.secrets]
        values = {env: value.encode() for env, value in desired.resolved.secrets.items()}
        self.proxy.configure(entries, values)

    def close(self) -> None:
        self.proxy.close()
        self.connector.close()


class NetnsNetwork:
    def __init__(
        self,
        state_dir: Path,
        *,
        link_base: str = LINK_BASE,
        dns: list[str] | None = None,
        cluster_cidrs: list[str] | None = None,
        upstream_cas: list[str] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.upstream = upstream_context(upstream_cas)
        self.on_violation: ViolationSink = lambda uid, violation: None
        """Set by whoever reports violations (Events, BlockAndTerminate): the node agent's
        services."""
        self._egress: dict[str, Egress] = {}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.link_base = link_base
        self.dns = dns if dns is not None else resolvers()
        self.cluster_cidrs = cluster_cidrs or []
        self._lock = asyncio.Lock()
        self._resolvers: dict[str, Resolver] = {}
        self._plans: dict[str, Plan] = {}

    # --- bookkeeping -----------------------------------------------------------------------

    def _record(self, uid: str) -> Path:
        return self.state_dir / f"{uid}.json"

    def _index(self, uid: str) -> int:
        record = self._record(uid)
        with contextlib.suppress(OSError, ValueError, KeyError):
            return int(json.loads(record.read_text())["index"])
        used = set()
        for other in self.state_dir.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                used.add(int(json.loads(other.read_text())["index"]))
        # a host link of that index belongs to someone else (another node agent's state
        # directory on the same host, as parallel test runs have): taking it would cut theirs
        with contextlib.suppress(OSError):
            for link in os.listdir("/sys/class/net"):
                if link.startswith("ksbh") and link[4:].isdigit():
                    used.add(int(link[4:]))
        index = next(i for i in range(1, 16384) if i not in used)
        record.write_text(json.dumps({"index": index}))
        return index

    def plan(self, desired: DesiredSandbox) -> Plan:
        network = desired.spec.network
        ports = tuple(
            (p.protocol.value.lower(), p.port, p.host_port or p.port) for p in network.ports
        )
        return Plan(
            desired.uid,
            self._index(desired.uid),
            network.policy,
            ports,
            tuple(network.rules),
            egress=bool(desired.spec.secrets),
        )

    # --- NetworkProvider -------------------------------------------------------------------

    def wrap_argv(self, uid: str, argv: list[str]) -> list[str]:
        if not self._record(uid).exists():
            return argv
        return ["ip", "netns", "exec", f"ksb-{uid[:8]}", *argv]

    async def attach(self, desired: DesiredSandbox) -> tuple[bc.Network | None, list[str]]:
        network = desired.spec.network
        if network.policy == NetworkPolicy.NONE and not network.rules:
            await self.detach(desired.uid)
            return None, []
        async with self._lock:
            plan = self.plan(desired)
            await self._setup(plan)
            await self._egress_for(desired, plan)
        mac = mac_for(desired.uid)
        config = bc.Network(
            interfaces=[
                bc.Interface(mac=mac, addresses=[f"{GUEST_IP}/{GUEST_PREFIX}"], gateway=GATEWAY)
            ],
            dns=[GATEWAY],
        )
        nic = [
            "-netdev", f"tap,id=net0,ifname={TAP},script=no,downscript=no",
            "-device", f"virtio-net-device,netdev=net0,mac={mac}",
        ]  # fmt: skip
        return config, nic

    async def _setup(self, plan: Plan) -> None:
        host_ip, ns_ip, subnet = plan.link(self.link_base)
        ns = plan.netns
        existing = (await run("ip", "netns", "list")).split()
        if ns not in existing:
            await run("ip", "netns", "add", ns)
        nsexec = ("ip", "netns", "exec", ns)
        await run(*nsexec, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        await run(*nsexec, "ip", "link", "set", "lo", "up")
        links = await run(*nsexec, "ip", "-o", "link", "show")
        if f" {NS_LINK}@" not in links:
            await run("ip", "link", "del", plan.host_if, check=False)
            await run("ip", "link", "add", plan.host_if, "type", "veth",
                      "peer", "name", NS_LINK, "netns", ns)  # fmt: skip
            await run("ip", "addr", "add", f"{host_ip}/30", "dev", plan.host_if)
            await run("ip", "link", "set", plan.host_if, "up")
            await run(*nsexec, "ip", "addr", "add", f"{ns_ip}/30", "dev", NS_LINK)
            await run(*nsexec, "ip", "link", "set", NS_LINK, "up")
            await run(*nsexec, "ip", "route", "replace", "default", "via", host_ip)
        if f" {TAP}:" not in links and f" {TAP}@" not in links:
            await run(*nsexec, "ip", "tuntap", "add", "dev", TAP, "mode", "tap")
            await run(*nsexec, "ip", "addr", "add", f"{GATEWAY}/{GUEST_PREFIX}", "dev", TAP)
            await run(*nsexec, "ip", "link", "set", TAP, "up")
        resolver = await self._resolver(plan)
        self._plans[plan.uid] = plan
        pins = resolver.set_rules(plan.rules)
        refuse = blocked([*host_addresses(), *self.cluster_cidrs])
        rules = namespace_rules(plan, refuse, pins)
        await run(*nsexec, "iptables-restore", input=rules.encode())
        await self._host_rules(plan, ns_ip, subnet)
        log.info("network.ready", netns=ns, policy=plan.policy.value, link=subnet)

    async def _resolver(self, plan: Plan) -> Resolver:
        resolver = self._resolvers.get(plan.uid)
        if resolver is not None:
            return resolver
        uid = plan.uid

        async def apply(rules: Sequence[NetworkRule], changed: Pins) -> bool:
            async with self._lock:
                current = self._plans.get(uid)
                if current is None or current.rules != tuple(rules):
                    return False
                update = chain_update(current.rules, changed)
                await run("ip", "netns", "exec", current.netns, "iptables-restore", "--noflush",
                          input=update.encode())  # fmt: skip
                return True

        upstreams = [(address, 53) for address in self.dns]
        resolver = Resolver(upstreams, plan.rules, apply, name=plan.netns)
        udp, tcp = await asyncio.to_thread(_bind_in, plan.netns, GATEWAY, 53)
        await resolver.serve(udp, tcp)
        self._resolvers[uid] = resolver
        return resolver

    # --- the egress proxy ------------------------------------------------------------------

    async def _egress_for(self, desired: DesiredSandbox, plan: Plan) -> None:
        """The sandbox's egress proxy when it has secrets (made once per node agent run: a
        restart makes a new CA, which the guest is given again), configured from ``desired``."""
        current = self._egress.get(plan.uid)
        if not plan.egress:
            if current is not None:
                current.close()
                del self._egress[plan.uid]
            return
        if current is None:
            resolver = self._resolvers[plan.uid]
            listener = await asyncio.to_thread(
                _in_netns, plan.netns, lambda: _listener(GATEWAY, EGRESS_PORT)
            )
            uid = plan.uid
            current = Egress.start(
                plan.netns,
                upstream=self.upstream,
                pins=resolver.table,
                report=lambda violation: self.on_violation(uid, violation),
            )
            await current.proxy.serve(listener)
            self._egress[uid] = current
            log.info("egress.ready", netns=plan.netns, port=EGRESS_PORT)
        current.configure(desired)

    def update_secrets(self, desired: DesiredSandbox) -> None:
        """New values from the operator (a rotated Secret): swapped into the running proxy."""
        egress = self._egress.get(desired.uid)
        if egress is not None:
            egress.configure(desired)

    def ca_certificate(self, uid: str) -> bytes | None:
        """The PEM certificate of the sandbox's egress CA (``None``: no secrets, no proxy)."""
        egress = self._egress.get(uid)
        return egress.ca.pem if egress is not None else None

    def drop_egress(self, uid: str) -> None:
        egress = self._egress.pop(uid, None)
        if egress is not None:
            egress.close()

    async def _host_rules(self, plan: Plan, ns_ip: str, subnet: str) -> None:
        await run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        await self._drop_host_rules(plan.uid)
        tag = ["-m", "comment", "--comment", f"ksb:{plan.uid}"]
        await run("iptables", "-t", "nat", "-A", "POSTROUTING", "-s", subnet,
                  "!", "-d", self.link_base, "-j", "MASQUERADE", *tag)  # fmt: skip
        await run("iptables", "-A", "FORWARD", "-i", plan.host_if, "-j", "ACCEPT", *tag)
        await run("iptables", "-A", "FORWARD", "-o", plan.host_if, "-j", "ACCEPT", *tag)
        for proto, port, host_port in plan.ports:
            dnat = ["-p", proto, "--dport", str(host_port), "-j", "DNAT",
                    "--to-destination", f"{ns_ip}:{port}", *tag]  # fmt: skip
            await run("iptables", "-t", "nat", "-A", "PREROUTING", "-m", "addrtype",
                      "--dst-type", "LOCAL", *dnat)  # fmt: skip
            await run("iptables", "-t", "nat", "-A", "OUTPUT", "-m", "addrtype",
                      "--dst-type", "LOCAL", *dnat)  # fmt: skip

    async def _drop_host_rules(self, uid: str) -> None:
        marker = f"ksb:{uid}"
        for table in ("nat", "filter"):
            for line in (await run("iptables", "-t", table, "-S")).splitlines():
                if marker in line and line.startswith("-A "):
                    args = line[3:].replace(f'"{marker}"', marker).split()
                    await run("iptables", "-t", table, "-D", *args, check=False)

    def close(self) -> None:
        """Stops every resolver (node agent shutdown): the namespaces and their rules stay
        with the VMs, and the next node agent serves DNS again when it re-adopts them."""
        for resolver in self._resolvers.values():
            resolver.close()
        self._resolvers.clear()
        for egress in self._egress.values():
            egress.close()
        self._egress.clear()
        self._plans.clear()

    async def detach(self, uid: str) -> None:
        resolver = self._resolvers.pop(uid, None)
        if resolver is not None:
            resolver.close()
        egress = self._egress.pop(uid, None)
        if egress is not None:
            egress.close()
        self._plans.pop(uid, None)
        record = self._record(uid)
        if not record.exists():
            return
        async with self._lock:
            with contextlib.suppress(OSError, ValueError, KeyError):
                index = int(json.loads(record.read_text())["index"])
                await run("ip", "link", "del", f"ksbh{index}", check=False)
            await self._drop_host_rules(uid)
            await run("ip", "netns", "del", f"ksb-{uid[:8]}", check=False)
            record.unlink(missing_ok=True)
