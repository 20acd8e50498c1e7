"""``spec.network.rules`` on the real kernel: namespaces, veths, iptables and the sandbox's
resolver, no VM (tests/integration/node/runtime/test_vm_rules.py has the same with a VM).

Test hosts in namespaces made here: public web servers on TEST-NET addresses, a private one,
the node's resolver on a private address answering a test zone, and a rogue DNS server on a
public address that lies about the same names. The guest is a namespace whose veth takes the
place of QEMU's tap.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubesandbox_node.network.netns import GATEWAY, NetnsNetwork
from kubesandbox_node.runtime.model import DesiredSandbox
from tests.integration.node.network.test_policies import Attacher, Guest, World
from tests.support.testnet import (
    Host,
    LoopThread,
    remove_host,
    sh,
    start_dns_host,
    start_host,
)

ALLOWED, DENIED, OTHER, PRIVATE = "203.0.113.40", "203.0.113.41", "198.51.100.40", "192.168.251.40"
RESOLVER, ROGUE = "192.168.252.56", "198.51.100.53"
ZONE = {
    "allowed.rules.test": [ALLOWED],
    "denied.rules.test": [DENIED],
    "other.rules.test": [OTHER],
    "api.corp.test": [PRIVATE],
}
LIES = {name: [DENIED] for name in ZONE}


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    state = Path(tempfile.mkdtemp(prefix="ksb-rules-"))
    hosts: dict[str, Host] = {}
    loop = LoopThread()
    base = 40
    try:
        for i, (name, address) in enumerate(
            (("ok", ALLOWED), ("no", DENIED), ("oth", OTHER), ("prv", PRIVATE))
        ):
            hosts[name] = start_host(name, address, "tcp", 8080, base + i)
        hosts["dns"] = start_dns_host("rdns", RESOLVER, ZONE, base + 4)
        hosts["rogue"] = start_dns_host("rogue", ROGUE, LIES, base + 5)
        yield World(NetnsNetwork(state, dns=[RESOLVER]), hosts, "", loop)
    finally:
        for i, host in enumerate(hosts.values()):
            remove_host(host, base + i)
        loop.close()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def attach(world: World) -> Iterator[Attacher]:
    attacher = Attacher(world)
    yield attacher
    attacher.close()


def sandbox(policy: str, rules: list[dict[str, Any]], uid: str | None = None) -> DesiredSandbox:
    return DesiredSandbox.model_validate(
        {"namespace": "default", "name": "rules", "uid": uid or str(uuid.uuid4()),
         "spec": {"image": {"oci": "busybox:1.36"},
                  "network": {"policy": policy, "rules": rules}}}
    )  # fmt: skip


def reaches(guest: Guest, address: str) -> bool:
    out = guest.connect("tcp", address, 8080).strip()
    assert out == f"hello from {address}" or out.startswith("FAILED"), out
    return out == f"hello from {address}"


def allow(**destination: str) -> dict[str, Any]:
    return {"action": "Allow", "destination": destination}


def deny(**destination: str) -> dict[str, Any]:
    return {"action": "Deny", "destination": destination}


def test_policy_none_with_a_domain_rule_reaches_only_what_was_resolved(
    attach: Attacher,
) -> None:
    guest = attach(sandbox("None", [allow(domain="allowed.rules.test")]))
    assert not reaches(guest, ALLOWED)  # not resolved yet: nothing pinned
    assert guest.lookup(GATEWAY, "allowed.rules.test") == f"rcode=0 {ALLOWED}"
    assert reaches(guest, ALLOWED)
    assert guest.lookup(GATEWAY, "denied.rules.test") == f"rcode=0 {DENIED}"
    assert not reaches(guest, DENIED)  # resolved, but no rule allows it
    assert not reaches(guest, OTHER)
    assert guest.lookup(GATEWAY, "nothing.rules.test").startswith("rcode=3")


def test_deny_and_allow_rules_before_public_only(attach: Attacher) -> None:
    rules = [
        deny(domain="denied.rules.test"),
        allow(domainSuffix="corp.test"),
        deny(cidr="198.51.100.0/24"),
    ]
    guest = attach(sandbox("PublicOnly", rules))
    assert reaches(guest, DENIED)  # public, and not resolved: no rule knows it yet
    guest.lookup(GATEWAY, "denied.rules.test")
    assert not reaches(guest, DENIED)
    assert reaches(guest, ALLOWED)  # public: the policy's default
    assert not reaches(guest, PRIVATE)  # private: refused by PublicOnly...
    assert guest.lookup(GATEWAY, "api.corp.test", "tcp") == f"rcode=0 {PRIVATE}"
    assert reaches(guest, PRIVATE)  # ...until a rule allows it by name
    assert not reaches(guest, OTHER)  # the CIDR rule


def test_the_first_matching_rule_decides_and_changes_apply_live(
    world: World, attach: Attacher
) -> None:
    uid = str(uuid.uuid4())
    first = [deny(cidr=f"{ALLOWED}/32"), allow(domain="allowed.rules.test")]
    guest = attach(sandbox("None", first, uid))
    guest.lookup(GATEWAY, "allowed.rules.test")
    assert not reaches(guest, ALLOWED)
    # the same sandbox, rules swapped: the namespace's chains are replaced, the pin kept
    world.loop.run(world.network.attach(sandbox("None", first[::-1], uid)))
    assert reaches(guest, ALLOWED)
    # a domain rule added later starts with what the guest resolved before
    later = [allow(domain="other.rules.test"), allow(domain="denied.rules.test")]
    guest.lookup(GATEWAY, "other.rules.test")
    world.loop.run(world.network.attach(sandbox("None", later, uid)))
    assert reaches(guest, OTHER)
    assert not reaches(guest, ALLOWED)
    world.loop.run(world.network.attach(sandbox("None", [], uid)))  # None without rules: no NIC
    assert uid[:8] not in sh("ip", "netns", "list")


def test_a_guest_asking_another_dns_server_gets_our_resolver(attach: Attacher) -> None:
    guest = attach(sandbox("None", [allow(domain="allowed.rules.test")]))
    # the rogue server would answer DENIED for every name; the query never reaches it
    assert guest.lookup(ROGUE, "allowed.rules.test") == f"rcode=0 {ALLOWED}"
    assert guest.lookup(ROGUE, "allowed.rules.test", "tcp") == f"rcode=0 {ALLOWED}"
    assert guest.lookup("203.0.113.99", "allowed.rules.test") == f"rcode=0 {ALLOWED}"
    assert reaches(guest, ALLOWED)
    assert not reaches(guest, DENIED)


def test_a_domain_rule_with_protocol_and_port_before_a_cidr_deny(attach: Attacher) -> None:
    rules = [
        {"action": "Allow", "destination": {"domain": "allowed.rules.test"}, "protocol": "TCP",
         "ports": [{"port": 8080}]},
        deny(cidr="203.0.113.0/24"),
    ]  # fmt: skip
    guest = attach(sandbox("None", rules))
    assert not reaches(guest, ALLOWED)
    assert guest.lookup(GATEWAY, "allowed.rules.test") == f"rcode=0 {ALLOWED}"
    assert reaches(guest, ALLOWED)
    assert not reaches(guest, DENIED)
