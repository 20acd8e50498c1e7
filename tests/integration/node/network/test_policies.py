"""Sandbox networking on the real kernel: namespaces, veths and iptables, no VM.

Test hosts live in namespaces created here: a "public" server at 203.0.113.10 (TEST-NET-3,
routed like any public address), a "private" one at 192.168.251.10, a fake metadata service
at 169.254.169.254 and a DNS server on a private address (192.168.252.53, like a cluster
resolver) that the sandbox's resolver forwards to. The guest is a namespace too: its veth
takes the place of QEMU's tap, with the guest's address and gateway, so traffic crosses
exactly the rules a VM's would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubesandbox_node.network.netns import GATEWAY, GUEST_IP, TAP, NetnsNetwork, Plan
from kubesandbox_node.runtime.model import DesiredSandbox
from tests.support.testnet import (
    CLIENT,
    LOOKUP,
    SERVER,
    SUFFIX,
    Host,
    LoopThread,
    remove_host,
    sh,
    start_dns_host,
    start_host,
)

ZONE = {"public.test": ["203.0.113.10"]}


@dataclass
class World:
    network: NetnsNetwork
    hosts: dict[str, Host]
    node_ip: str
    loop: LoopThread


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    state = Path(tempfile.mkdtemp(prefix="ksb-net-"))
    specs = {
        "public": ("203.0.113.10", "tcp", 8080),
        "private": ("192.168.251.10", "tcp", 8080),
        "metadata": ("169.254.169.254", "tcp", 8080),
    }
    hosts: dict[str, Host] = {}
    loop = LoopThread()
    try:
        for index, (name, (address, kind, port)) in enumerate(specs.items()):
            hosts[name] = start_host(name, address, kind, port, index)
        hosts["dns"] = start_dns_host("dns", "192.168.252.53", ZONE, len(specs))
        node_ip = sh("ip", "-4", "-o", "route", "get", "203.0.113.10").split("src ")[1].split()[0]
        yield World(NetnsNetwork(state, dns=["192.168.252.53"]), hosts, node_ip, loop)
    finally:
        for index, host in enumerate(hosts.values()):
            remove_host(host, index)
        loop.close()
        shutil.rmtree(state, ignore_errors=True)


def sandbox(policy: str, ports: list[dict[str, object]] | None = None) -> DesiredSandbox:
    return DesiredSandbox.model_validate(
        {"namespace": "default", "name": "net", "uid": str(uuid.uuid4()),
         "spec": {"image": {"oci": "busybox:1.36"},
                  "network": {"policy": policy, "ports": ports or []}}}
    )  # fmt: skip


@dataclass
class Guest:
    ns: str
    plan: Plan

    def connect(self, kind: str, host: str, port: int) -> str:
        return sh("ip", "netns", "exec", self.ns, "python3", "-c", CLIENT, kind, host, str(port))

    def lookup(self, server: str, name: str, transport: str = "udp") -> str:
        return sh("ip", "netns", "exec", self.ns, "python3", "-c", LOOKUP, server, name,
                  transport).strip()  # fmt: skip


class Attacher:
    def __init__(self, world: World) -> None:
        self.world = world
        self.made: list[tuple[DesiredSandbox, str, subprocess.Popen[bytes] | None]] = []

    def __call__(self, desired: DesiredSandbox, serve: int | None = None) -> Guest:
        config, nic = self.world.loop.run(self.world.network.attach(desired))
        assert config is not None
        assert config.interfaces[0].addresses == [f"{GUEST_IP}/24"]
        assert f"ifname={TAP}" in " ".join(nic)
        plan = self.world.network.plan(desired)
        guest = f"ksbt-g{len(self.made)}-{SUFFIX}"
        # the test guest's veth replaces QEMU's tap, with the same name and address
        sh("ip", "netns", "add", guest)
        sh("ip", "netns", "exec", plan.netns, "ip", "link", "del", TAP)
        sh("ip", "link", "add", TAP, "netns", plan.netns, "type", "veth",
           "peer", "name", "eth0", "netns", guest)  # fmt: skip
        sh("ip", "netns", "exec", plan.netns, "ip", "addr", "add", f"{GATEWAY}/24", "dev", TAP)
        sh("ip", "netns", "exec", plan.netns, "ip", "link", "set", TAP, "up")
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "addr", "add", f"{GUEST_IP}/24", "dev", "eth0"],
                    ["ip", "link", "set", "eth0", "up"],
                    ["ip", "route", "add", "default", "via", GATEWAY]):  # fmt: skip
            sh("ip", "netns", "exec", guest, *cmd)
        server = None
        if serve is not None:
            server = subprocess.Popen(
                ["ip", "netns", "exec", guest, "python3", "-c", SERVER, "tcp", GUEST_IP,
                 str(serve)],
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.made.append((desired, guest, server))
        return Guest(guest, plan)

    def close(self) -> None:
        for desired, guest, server in self.made:
            if server is not None:
                server.kill()
                server.wait()
            self.world.loop.run(self.world.network.detach(desired.uid))
            sh("ip", "netns", "del", guest, check=False)


@pytest.fixture
def attach(world: World) -> Iterator[Attacher]:
    attacher = Attacher(world)
    yield attacher
    attacher.close()


def test_public_only_reaches_public_hosts_and_dns_but_nothing_private(
    world: World, attach: Attacher
) -> None:
    guest = attach(sandbox("PublicOnly"))
    assert guest.connect("tcp", "203.0.113.10", 8080).strip() == "hello from 203.0.113.10"
    # DNS through the sandbox's resolver, which forwards to the node's (private) resolver
    assert guest.lookup(GATEWAY, "public.test") == "rcode=0 203.0.113.10"
    assert guest.lookup(GATEWAY, "public.test", "tcp") == "rcode=0 203.0.113.10"
    for host in ("192.168.251.10", "169.254.169.254", "192.168.252.53", world.node_ip, GATEWAY):
        assert guest.connect("tcp", host, 8080).startswith("FAILED"), host
    assert guest.connect("tcp", "10.231.0.1", 22).startswith("FAILED")


def test_all_reaches_private_hosts(world: World, attach: Attacher) -> None:
    guest = attach(sandbox("All"))
    assert guest.connect("tcp", "192.168.251.10", 8080).strip() == "hello from 192.168.251.10"
    assert guest.connect("tcp", "203.0.113.10", 8080).strip() == "hello from 203.0.113.10"


def test_published_port_is_reachable_on_the_node(world: World, attach: Attacher) -> None:
    desired = sandbox("PublicOnly", [{"port": 8000, "hostPort": 18000 + os.getpid() % 1000}])
    attach(desired, serve=8000)
    port = 18000 + os.getpid() % 1000
    out = ""
    for _ in range(50):
        out = sh("python3", "-c", CLIENT, "tcp", world.node_ip, str(port))
        if not out.startswith("FAILED"):
            break
        sh("sleep", "0.1")
    assert out.strip() == f"hello from {GUEST_IP}"


def test_none_has_no_nic_and_detach_leaves_nothing(world: World) -> None:
    desired = sandbox("None")
    assert world.loop.run(world.network.attach(desired)) == (None, [])
    public = sandbox("PublicOnly", [{"port": 8000, "hostPort": 18999}])
    world.loop.run(world.network.attach(public))
    plan = world.network.plan(public)
    assert plan.netns in sh("ip", "netns", "list")
    world.loop.run(world.network.detach(public.uid))
    assert plan.netns not in sh("ip", "netns", "list")
    assert f"ksb:{public.uid}" not in sh("iptables-save")
    assert plan.host_if not in sh("ip", "-o", "link")
