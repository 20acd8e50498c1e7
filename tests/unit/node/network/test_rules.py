from __future__ import annotations

from pathlib import Path

import pytest

from kubesandbox_api.spec import NetworkPolicy, NetworkRule
from kubesandbox_node.network.netns import Plan, chain_update, mac_for, namespace_rules
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


def test_public_only_refuses_private_ranges_and_sends_all_dns_to_the_resolver() -> None:
    plan = Plan(UID, 7, NetworkPolicy.PUBLIC_ONLY, (("tcp", 8000, 18000),))
    rules = namespace_rules(plan, blocked())
    lines = rules.splitlines()
    refuse = lines.index(
        "-A FORWARD -i tap0 -d 10.0.0.0/8 -j REJECT --reject-with icmp-net-prohibited"
    )
    assert refuse < lines.index("-A FORWARD -i tap0 -o eth0 -j ACCEPT")
    for proto in ("udp", "tcp"):
        # any destination, not only 10.0.2.1: a guest naming another server reaches ours
        assert (
            f"-A PREROUTING -i tap0 -p {proto} --dport 53 -j DNAT --to-destination 10.0.2.1:53"
        ) in lines
        assert f"-A INPUT -i tap0 -d 10.0.2.1/32 -p {proto} --dport 53 -j ACCEPT" in lines
    assert (
        "-A PREROUTING -i eth0 -p tcp --dport 8000 -j DNAT --to-destination 10.0.2.15:8000" in lines
    )
    assert ":FORWARD DROP [0:0]" in lines
    assert ":INPUT DROP [0:0]" in lines


def rules_of(*items: dict[str, object]) -> tuple[NetworkRule, ...]:
    return tuple(NetworkRule.model_validate(item) for item in items)


def test_rules_come_in_order_before_the_policy_default() -> None:
    rules = rules_of(
        {"action": "Deny", "destination": {"cidr": "203.0.113.10"}},
        {"action": "Allow", "destination": {"domain": "api.example.test"}, "protocol": "TCP",
         "ports": [{"port": 443}, {"port": 8000, "endPort": 8080}]},
        {"action": "Allow", "destination": {"cidr": "192.168.1.7/16"}, "ports": [{"port": 53}]},
        {"action": "Deny", "destination": {"domainSuffix": "example.test"}, "protocol": "ICMP"},
    )  # fmt: skip
    plan = Plan(UID, 7, NetworkPolicy.PUBLIC_ONLY, (), rules)
    pins = {1: ["203.0.113.20", "203.0.113.21"], 3: ["203.0.113.20"]}
    lines = namespace_rules(plan, blocked(), pins).splitlines()
    reject = "-j REJECT --reject-with icmp-net-prohibited"
    expected = [
        f"-A FORWARD -i tap0 -o eth0 -d 203.0.113.10/32 {reject}",
        "-A FORWARD -i tap0 -o eth0 -p tcp --dport 443 -j KSB-R1",
        "-A FORWARD -i tap0 -o eth0 -p tcp --dport 8000:8080 -j KSB-R1",
        "-A FORWARD -i tap0 -o eth0 -p tcp --dport 53 -d 192.168.0.0/16 -j ACCEPT",
        "-A FORWARD -i tap0 -o eth0 -p udp --dport 53 -d 192.168.0.0/16 -j ACCEPT",
        "-A FORWARD -i tap0 -o eth0 -p icmp -j KSB-R3",
    ]
    positions = [lines.index(line) for line in expected]
    assert positions == sorted(positions)
    assert positions[-1] < lines.index(f"-A FORWARD -i tap0 -d 192.168.0.0/16 {reject}")
    assert ":KSB-R1 - [0:0]" in lines
    assert ":KSB-R3 - [0:0]" in lines
    assert ":KSB-R0 - [0:0]" not in lines
    assert "-A KSB-R1 -d 203.0.113.20/32 -j ACCEPT" in lines
    assert "-A KSB-R1 -d 203.0.113.21/32 -j ACCEPT" in lines
    assert f"-A KSB-R3 -d 203.0.113.20/32 {reject}" in lines


def test_policy_none_with_rules_refuses_everything_else() -> None:
    rules = rules_of({"action": "Allow", "destination": {"cidr": "203.0.113.0/24"}})
    lines = namespace_rules(Plan(UID, 1, NetworkPolicy.NONE, (), rules), blocked()).splitlines()
    assert lines.index("-A FORWARD -i tap0 -o eth0 -d 203.0.113.0/24 -j ACCEPT") < lines.index(
        "-A FORWARD -i tap0 -j REJECT --reject-with icmp-net-prohibited"
    )
    assert "-A FORWARD -i tap0 -o eth0 -j ACCEPT" not in lines


def test_a_chain_update_rewrites_only_the_changed_chains() -> None:
    rules = rules_of(
        {"action": "Allow", "destination": {"domain": "a.test"}},
        {"action": "Deny", "destination": {"domain": "b.test"}},
    )
    assert chain_update(rules, {1: ["198.51.100.1"]}).splitlines() == [
        "*filter",
        "-F KSB-R1",
        "-A KSB-R1 -d 198.51.100.1/32 -j REJECT --reject-with icmp-net-prohibited",
        "COMMIT",
    ]


INHERITED = "-A FORWARD -i tap0 -p tcp ! --syn -m conntrack --ctstate NEW -j REJECT"


def test_all_refuses_nothing() -> None:
    rules = namespace_rules(Plan(UID, 1, NetworkPolicy.ALL, ()), blocked())
    # the one REJECT: segments of TCP connections the namespace never saw open (a fork's)
    assert [r for r in rules.splitlines() if "REJECT" in r] == [
        f"{INHERITED} --reject-with tcp-reset"
    ]


@pytest.mark.parametrize("policy", [NetworkPolicy.ALL, NetworkPolicy.PUBLIC_ONLY])
def test_connections_a_fork_inherits_are_reset_before_anything_is_accepted(
    policy: NetworkPolicy,
) -> None:
    rules = namespace_rules(Plan(UID, 1, policy, (("tcp", 80, 80),)), blocked())
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


def test_a_sandbox_with_secrets_sends_its_tcp_to_the_proxy_and_drops_quic() -> None:
    rule = NetworkRule.model_validate(
        {"action": "Deny", "destination": {"domain": "blocked.example"}, "protocol": "TCP"}
    )
    plan = Plan(UID, 7, NetworkPolicy.PUBLIC_ONLY, (), (rule,), egress=True)
    lines = namespace_rules(plan, ["10.0.0.0/8"], {0: ["198.51.100.9"]}).splitlines()
    assert "-A PREROUTING -i tap0 -p tcp ! -d 10.0.2.1/32 -j REDIRECT --to-ports 15001" in lines
    assert lines.index("-A PREROUTING -i tap0 -p tcp --dport 53 -j DNAT --to-destination "
                       "10.0.2.1:53") < lines.index(
        "-A PREROUTING -i tap0 -p tcp ! -d 10.0.2.1/32 -j REDIRECT --to-ports 15001"
    )  # fmt: skip
    assert "-I FORWARD 1 -i tap0 -p udp --dport 443 -j DROP" in lines
    assert "-A INPUT -i tap0 -d 10.0.2.1/32 -p tcp --dport 15001 -j ACCEPT" in lines
    # the proxy's own connections meet the same rules, in the same order, then the policy
    output = [line for line in lines if line.startswith("-A OUTPUT")]
    assert output == [
        "-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A OUTPUT -o eth0 -p tcp -j KSB-R0",
        "-A OUTPUT -o eth0 -d 10.0.0.0/8 -j REJECT --reject-with icmp-net-prohibited",
        "-A OUTPUT -o eth0 -j ACCEPT",
    ]
    assert "-A KSB-R0 -d 198.51.100.9/32 -j REJECT --reject-with icmp-net-prohibited" in lines


def test_without_secrets_nothing_is_redirected() -> None:
    rules = namespace_rules(Plan(UID, 7, NetworkPolicy.ALL, ()), [])
    assert "REDIRECT" not in rules
    assert "-A OUTPUT" not in rules
    assert "--dport 443" not in rules
