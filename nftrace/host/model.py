"""The host around the rules: links, addresses, routes, policy rules, sysctls.

These are plain data classes shared by the offline parsers (`ip route` /
`ip addr` / `ip rule` text or JSON), the snapshot bundle, the FIB lookup and
the kernel-differential test harness (which builds the same host in a network
namespace).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

Family = Literal["ipv4", "ipv6"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# Well-known routing table ids (include/uapi/linux/rtnetlink.h).
TABLE_IDS: dict[str, int] = {"unspec": 0, "default": 253, "main": 254, "local": 255}
TABLE_NAMES: dict[int, str] = {v: k for k, v in TABLE_IDS.items()}


def table_name(tid: int | str) -> str:
    """Canonical name of a routing table: 'main', 'local', 'default' or the number."""
    if isinstance(tid, str):
        if tid in TABLE_IDS:
            return tid
        tid = int(tid)
    return TABLE_NAMES.get(tid, str(tid))


@dataclass
class Link:
    index: int
    name: str
    kind: str | None = None  # veth, bridge, vxlan, dummy, loopback ...
    master: str | None = None  # name of the bridge/bond/vrf it is enslaved to
    up: bool = True
    mac: str | None = None
    addresses: list[str] = field(default_factory=list)  # "192.168.50.10/24" (CIDR form)
    mtu: int | None = None
    # Point-to-point addresses (`inet A peer B/P`): address as stored in `addresses`
    # ("A/P") -> the peer prefix ("B/P"); the kernel's connected route is to the peer's prefix.
    peers: dict[str, str] = field(default_factory=dict)


@dataclass
class Route:
    table: str = "main"  # canonical table name, see table_name()
    type: str = "unicast"  # unicast local broadcast blackhole unreachable prohibit throw multicast anycast nat
    dst: str = "default"  # CIDR ("10.0.0.0/8", "10.1.2.3/32") or "default"
    gateway: str | None = None
    oif: str | None = None
    prefsrc: str | None = None
    metric: int = 0
    scope: str = "universe"  # universe link host
    family: Family = "ipv4"
    proto: str | None = None  # kernel boot static dhcp ... (informational)
    tos: int = 0
    # Multipath: list of (gateway, oif, weight). When set, gateway/oif are the first hop.
    nexthops: list[tuple[str | None, str | None, int]] = field(default_factory=list)
    nhid: int | None = None  # `nhid N`: nexthop object id (recorded, not expanded)
    flags: list[str] = field(default_factory=list)  # onlink linkdown dead ... as `ip route` prints them

    def network(self) -> IPNetwork:
        if self.dst == "default":
            return ipaddress.ip_network("0.0.0.0/0" if self.family == "ipv4" else "::/0")
        return ipaddress.ip_network(self.dst, strict=False)


@dataclass
class IpRule:
    priority: int
    table: str | None = None  # lookup target (canonical name) when action == "lookup"
    family: Family = "ipv4"
    action: str = "lookup"  # lookup blackhole unreachable prohibit goto nop
    src: str | None = None  # "from" prefix, None = all
    dst: str | None = None  # "to" prefix, None = all
    iif: str | None = None
    oif: str | None = None
    fwmark: int | None = None
    fwmask: int | None = None  # None = 0xffffffff when fwmark is set
    invert: bool = False  # "not"
    goto: int | None = None  # target priority for action == "goto"
    suppress_prefixlength: int | None = None
    suppress_ifgroup: int | None = None
    tos: int = 0
    ipproto: str | None = None
    sport: tuple[int, int] | None = None
    dport: tuple[int, int] | None = None
    uidrange: tuple[int, int] | None = None
    l3mdev: bool = False


DEFAULT_IPV4_RULES: tuple[IpRule, ...] = (
    IpRule(priority=0, table="local"),
    IpRule(priority=32766, table="main"),
    IpRule(priority=32767, table="default"),
)
DEFAULT_IPV6_RULES: tuple[IpRule, ...] = (
    IpRule(priority=0, table="local", family="ipv6"),
    IpRule(priority=32766, table="main", family="ipv6"),
)


@dataclass
class HostContext:
    """Everything about a host, other than its rules, that changes a packet's path."""

    links: list[Link] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    rules: list[IpRule] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    hostname: str | None = None
    # Where this context came from, for warnings ("no host context", "routes derived
    # from addresses", ...). The presenters show these as-is.
    provenance: list[str] = field(default_factory=list)
    # True when no routes/addresses were given at all: the engine then warns.
    empty: bool = True

    def link(self, name: str) -> Link | None:
        for link in self.links:
            if link.name == name:
                return link
        return None

    def addresses(self, family: Family = "ipv4") -> list[tuple[str, IPInterface]]:
        """(link name, interface address) for every address of the given family."""
        out: list[tuple[str, IPInterface]] = []
        for link in self.links:
            for a in link.addresses:
                iface = ipaddress.ip_interface(a)
                if (iface.version == 4) == (family == "ipv4"):
                    out.append((link.name, iface))
        return out

    def sysctl(self, key: str, default: str | None = None) -> str | None:
        return self.sysctls.get(key, default)
