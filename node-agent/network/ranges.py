"""The destinations ``PublicOnly`` refuses: everything that is not the public internet.

RFC 1918 private ranges, CGNAT (RFC 6598), loopback, link-local (which holds the cloud
metadata address 169.254.169.254), "this network", IETF protocol assignments, multicast and
reserved space, plus whatever the node adds: its own addresses and the cluster's pod and
service ranges (configuration). DNS is the one exception, to the configured resolvers only.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterable
from pathlib import Path

NON_PUBLIC_V4 = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
)


def host_addresses() -> list[str]:
    """The node's own IPv4 addresses (a sandbox must not reach the node's services)."""
    try:
        out = subprocess.run(
            ["ip", "-j", "-4", "addr", "show"],
            capture_output=True,
            check=True,
            stdin=subprocess.DEVNULL,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    found = []
    for link in json.loads(out or b"[]"):
        for info in link.get("addr_info", []):
            if info.get("family") == "inet":
                found.append(f"{info['local']}/32")
    return found


def blocked(extra: Iterable[str] = ()) -> list[str]:
    """Normalised, de-duplicated CIDRs, in a stable order."""
    seen: dict[str, None] = {}
    for cidr in (*NON_PUBLIC_V4, *extra):
        seen[str(ipaddress.ip_network(cidr, strict=False))] = None
    return list(seen)


def is_public(address: str, extra: Iterable[str] = ()) -> bool:
    ip = ipaddress.ip_address(address)
    return not any(ip in ipaddress.ip_network(cidr) for cidr in blocked(extra))


def resolvers(resolv_conf: str = "/etc/resolv.conf") -> list[str]:
    """IPv4 name servers of the node, loopback ones left out (the guest cannot use them)."""
    found = []
    try:
        text = Path(resolv_conf).read_text()
    except OSError:
        return []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                ip = ipaddress.ip_address(parts[1])
            except ValueError:
                continue
            if ip.version == 4 and not ip.is_loopback:
                found.append(str(ip))
    return found
