"""ipset contents from `ipset save` output, and membership tests for -m set."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from nftrace.errors import InputError


@dataclass
class IpSet:
    name: str
    type: str  # e.g. hash:ip, hash:net,port, bitmap:port, list:set
    family: str = "ipv4"
    entries: list[tuple[str, ...]] = field(default_factory=list)
    nets: list[list[ipaddress.IPv4Network | ipaddress.IPv6Network | None]] = field(default_factory=list)

    @property
    def dims(self) -> list[str]:
        return self.type.split(":", 1)[1].split(",") if ":" in self.type else []


class IpSets:
    def __init__(self, sets: dict[str, IpSet]) -> None:
        self.sets = sets

    def get(self, name: str) -> IpSet | None:
        return self.sets.get(name)

    def member(self, name: str, values: list[tuple[str, str | int | None]]) -> bool | None:
        """values: one (kind, value) per dimension used by the match: ("ip", "1.2.3.4"), ("port", "tcp:80"),
        ("iface", "eth0").  None when the set type cannot be evaluated."""
        s = self.sets.get(name)
        if s is None:
            return None
        if s.type == "list:set":
            found = False
            for e in s.entries:
                r = self.member(e[0], values)
                if r is None:
                    return None
                found = found or r
            return found
        dims = s.dims
        if len(values) < len(dims):
            return False
        for e in s.entries:
            if all(_dim_match(d, ev, v) for d, ev, v in zip(dims, e, values, strict=False)):
                return True
        return False


def _dim_match(dim: str, entry: str, value: tuple[str, str | int | None]) -> bool:
    kind, v = value
    if v is None:
        return False
    if dim in ("ip", "net"):
        try:
            if "-" in entry and "/" not in entry:
                lo, hi = entry.split("-")
                a = int(ipaddress.ip_address(str(v)))
                return int(ipaddress.ip_address(lo)) <= a <= int(ipaddress.ip_address(hi))
            return ipaddress.ip_address(str(v)) in ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return False
    if dim == "port":
        proto, _, port = entry.rpartition(":")
        vp, _, vport = str(v).rpartition(":")
        if proto and proto != vp:
            return False
        if "-" in port:
            lo, hi = port.split("-")
            return int(lo) <= int(vport) <= int(hi)
        return port == vport
    if dim == "iface":
        return entry == str(v)
    if dim == "mac":
        return entry.lower() == str(v).lower()
    if dim == "mark":
        return int(entry, 0) == int(str(v), 0)
    return False


def parse_ipsets(text: str, filename: str = "<ipsets>") -> IpSets:
    sets: dict[str, IpSet] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if parts[0] == "create":
            if len(parts) < 3:
                raise InputError("create needs a name and a type", filename, n)
            fam = "ipv6" if "inet6" in parts[3:] else "ipv4"
            sets[parts[1]] = IpSet(parts[1], parts[2], fam)
        elif parts[0] == "add":
            if len(parts) < 3 or parts[1] not in sets:
                raise InputError(f"add to unknown set {parts[1] if len(parts) > 1 else ''!r}", filename, n)
            sets[parts[1]].entries.append(tuple(parts[2].split(",")))
        elif parts[0] in ("flush", "destroy", "-exist"):
            continue
        else:
            raise InputError(f"unexpected ipset command {parts[0]!r}", filename, n)
    return IpSets(sets)
