from __future__ import annotations

from pathlib import Path

import pytest

from kubesandbox_api.spec import NetworkPolicy
from kubesandbox_node.network.netns import Plan, mac_for, namespace_rules
from kubesandbox_node.network.ranges import blocked, is_public, resolvers

UID = "0b6f6f7e-0000-4000-8000-000000000001"


@pytest.mark.parametrize(
    "address",
    ["10.1.2.3", "172.20.0.1", "192.168.1.1", "100.64.0.1", "127.0.0.1", "169.254.169.254",
     "0.1.2.3", "224.0.0.1"],
)  # fmt: skip
def test_non_public_addresses(address: str) -> None:
    assert not is_public(address)


def test_public_addresses_and_extra_cluster_ranges() -> None:
    assert is_public("203.0.113.10")
    assert is_public("8.8.8.8")
    assert not is_public("8.8.8.8", extra=["8.8.0.0/16"])
    assert blocked(["10.0.0.0/8", "10.96.0.1"]).count("10.0.0.0/8") == 1


def test_public_only_refuses_private_ranges_after_allowing_dns() -> None:
    plan = Plan(UID, 7, NetworkPolicy.PUBLIC_ONLY, (("tcp", 8000, 18000),))
    rules = namespace_rules(plan, ["10.255.255.53"], blocked())
    lines = rules.splitlines()
    dns = lines.index(
        "-A FORWARD -i tap0 -o eth0 -d 10.255.255.53/32 -p udp --dport 53 "
        "-m conntrack --ctstate DNAT -j ACCEPT"
    )
    refuse = lines.index(
        "-A FORWARD -i tap0 -d 10.0.0.0/8 -j REJECT --reject-with icmp-net-prohibited"
    )
    assert dns < refuse < lines.index("-A FORWARD -i tap0 -o eth0 -j ACCEPT")
    assert (
        "-A PREROUTING -i tap0 -d 10.0.2.1/32 -p udp --dport 53 "
        "-j DNAT --to-destination 10.255.255.53:53"
    ) in lines
    assert (
        "-A PREROUTING -i eth0 -p tcp --dport 8000 -j DNAT --to-destination 10.0.2.15:8000" in lines
    )
    assert ":FORWARD DROP [0:0]" in lines


INHERITED = "-A FORWARD -i tap0 -p tcp ! --syn -m conntrack --ctstate NEW -j REJECT"


def test_all_refuses_nothing() -> None:
    rules = namespace_rules(Plan(UID, 1, NetworkPolicy.ALL, ()), [], blocked())
    # the one REJECT: segments of TCP connections the namespace never saw open (a fork's)
    assert [r for r in rules.splitlines() if "REJECT" in r] == [
        f"{INHERITED} --reject-with tcp-reset"
    ]


@pytest.mark.parametrize("policy", [NetworkPolicy.ALL, NetworkPolicy.PUBLIC_ONLY])
def test_connections_a_fork_inherits_are_reset_before_anything_is_accepted(
    policy: NetworkPolicy,
) -> None:
    rules = namespace_rules(Plan(UID, 1, policy, (("tcp", 80, 80),)), ["10.0.0.53"], blocked())
    lines = rules.splitlines()
    reset = next(i for i, r in enumerate(lines) if r.startswith(INHERITED))
    established = lines.index("-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT")
    accepts = [
        i for i, r in enumerate(lines) if r.startswith("-A FORWARD -i tap0") and "ACCEPT" in r
    ]
    assert established < reset < min(accepts)


def test_link_addresses_are_a_slash_30_per_index() -> None:
    plan = Plan(UID, 3, NetworkPolicy.ALL, ())
    assert plan.link("10.231.0.0/16") == ("10.231.0.13", "10.231.0.14", "10.231.0.12/30")
    assert plan.netns == "ksb-0b6f6f7e"
    assert mac_for(UID).startswith("02:")


def test_resolvers_skip_loopback(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\nnameserver 10.255.255.53\nsearch x\n")
    assert resolvers(str(conf)) == ["10.255.255.53"]
