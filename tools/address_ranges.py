"""The address ranges the web tools never (or only when told) connect to: an explicit table.

Drawn from the IANA IPv4 and IPv6 Special-Purpose Address Registries and the cloud providers' metadata
services, written out here rather than read from ``ipaddress``'s ``is_global``/``is_private``, whose
answers change between Python versions (3.11 treats ``64:ff9b:1::/48``, ``::ffff:0:0:0/96`` and
``192.0.0.8`` as global). Every IPv6 address outside global unicast ``2000::/3`` is refused as well, so a
range the table forgets still cannot be reached. IPv6 forms that carry an IPv4 address (6to4, the NAT64
well-known prefix) are unwrapped by the guard and the IPv4 address is vetted in turn.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
RangeKind = Literal["unspecified", "multicast", "metadata", "loopback", "link-local", "reserved"]
"""What a range is; ``loopback`` needs ``allow_loopback``, ``link-local`` and ``reserved`` need
``allow_private``, the rest are never reached."""


@dataclass(frozen=True)
class DeniedRange:
    network: IPNetwork
    kind: RangeKind
    name: str


def _table(rows: list[tuple[str, RangeKind, str]]) -> tuple[DeniedRange, ...]:
    return tuple(DeniedRange(ipaddress.ip_network(cidr), kind, name) for cidr, kind, name in rows)


# Most specific first: the first range holding an address names the reason.
DENIED_RANGES: tuple[DeniedRange, ...] = _table(
    [
        # cloud metadata services: refused even when private addresses are allowed
        ("169.254.169.254/32", "metadata", "cloud metadata service (AWS, GCP, Azure, OpenStack)"),
        ("169.254.170.2/32", "metadata", "cloud metadata service (AWS ECS task metadata)"),
        ("100.100.100.200/32", "metadata", "cloud metadata service (Alibaba Cloud)"),
        ("192.0.0.192/32", "metadata", "cloud metadata service (Oracle Cloud)"),
        ("fd00:ec2::254/128", "metadata", "cloud metadata service (AWS IPv6)"),
        # IPv4
        ("0.0.0.0/8", "unspecified", "'this host' 0.0.0.0/8"),
        ("10.0.0.0/8", "reserved", "private 10.0.0.0/8"),
        ("100.64.0.0/10", "reserved", "shared address space (carrier-grade NAT) 100.64.0.0/10"),
        ("127.0.0.0/8", "loopback", "loopback 127.0.0.0/8"),
        ("169.254.0.0/16", "link-local", "link-local 169.254.0.0/16"),
        ("172.16.0.0/12", "reserved", "private 172.16.0.0/12"),
        ("192.0.0.0/24", "reserved", "IETF protocol assignments 192.0.0.0/24 (192.0.0.8, NAT64 discovery)"),
        ("192.0.2.0/24", "reserved", "documentation range 192.0.2.0/24"),
        ("192.88.99.0/24", "reserved", "6to4 relay anycast 192.88.99.0/24"),
        ("192.168.0.0/16", "reserved", "private 192.168.0.0/16"),
        ("198.18.0.0/15", "reserved", "benchmarking 198.18.0.0/15"),
        ("198.51.100.0/24", "reserved", "documentation range 198.51.100.0/24"),
        ("203.0.113.0/24", "reserved", "documentation range 203.0.113.0/24"),
        ("224.0.0.0/4", "multicast", "multicast 224.0.0.0/4"),
        ("240.0.0.0/4", "reserved", "reserved 240.0.0.0/4 (and broadcast)"),
        # IPv6 (the IPv4-in-IPv6 forms ::/96, ::ffff:0:0/96 and 64:ff9b::/96 are handled by the guard)
        ("::/128", "unspecified", "unspecified ::"),
        ("::1/128", "loopback", "loopback ::1"),
        ("::ffff:0:0:0/96", "reserved", "IPv4-translated (SIIT) ::ffff:0:0:0/96"),
        ("64:ff9b:1::/48", "reserved", "local-use NAT64 64:ff9b:1::/48"),
        ("100::/64", "reserved", "discard-only 100::/64"),
        ("2001::/23", "reserved", "IETF protocol assignments 2001::/23 (Teredo, ORCHID, benchmarking)"),
        ("2001:db8::/32", "reserved", "documentation range 2001:db8::/32"),
        ("3fff::/20", "reserved", "documentation range 3fff::/20"),
        ("5f00::/16", "reserved", "segment routing (SRv6) 5f00::/16"),
        ("fc00::/7", "reserved", "unique local fc00::/7"),
        ("fe80::/10", "link-local", "link-local fe80::/10"),
        ("fec0::/10", "reserved", "site-local fec0::/10"),
        ("ff00::/8", "multicast", "multicast ff00::/8"),
    ]
)
GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def denied_range(address: IPAddress) -> DeniedRange | None:
    """The first range of :data:`DENIED_RANGES` holding ``address``; for IPv6 outside ``2000::/3`` and
    not in the table, a ``reserved`` range naming that; None for an address the table allows."""
    for entry in DENIED_RANGES:
        if entry.network.version == address.version and address in entry.network:
            return entry
    if isinstance(address, ipaddress.IPv6Address) and address not in GLOBAL_UNICAST_V6:
        return DeniedRange(GLOBAL_UNICAST_V6, "reserved", "outside global unicast 2000::/3")
    return None
