"""The built-in matches: -s -d -p -i -o -f (struct ipt_ip / ip6t_ip6)."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from nftrace.engine.packet import PROTO_NAMES, canonical_proto, proto_number
from nftrace.ruleset.model import MatchOutcome, MatchSpec

if TYPE_CHECKING:
    from nftrace.engine.env import Env
    from nftrace.engine.packet import Packet
    from nftrace.ruleset.registry import ParseCtx


def parse_prefix(text: str, family: str, ctx: ParseCtx, what: str) -> tuple[int, int, int]:
    """'10.0.0.0/8' | '10.0.0.1' | '10.0.0.0/255.0.0.0' -> (network int, mask int, bits)."""
    addr, _, mask = text.partition("/")
    bits = 32 if family == "ipv4" else 128
    full = (1 << bits) - 1
    try:
        a = ipaddress.ip_address(addr)
    except ValueError:
        raise ctx.error(f"{what}: {text!r} is not an address (host names are not resolved)") from None
    if (a.version == 4) != (family == "ipv4"):
        raise ctx.error(f"{what}: {text!r} is not an {family} address")
    if not mask:
        m = full
        plen = bits
    elif mask.isdigit():
        plen = int(mask)
        if plen > bits:
            raise ctx.error(f"{what}: invalid prefix length /{mask}")
        m = (full << (bits - plen)) & full
    else:
        try:
            m = int(ipaddress.ip_address(mask))
        except ValueError:
            raise ctx.error(f"{what}: invalid mask {mask!r}") from None
        plen = bin(m).count("1")
    return int(a) & m, m, plen


def format_prefix(net: int, mask: int, family: str) -> str:
    bits = 32 if family == "ipv4" else 128
    a = ipaddress.ip_address(net) if family == "ipv4" else ipaddress.IPv6Address(net)
    if family == "ipv4":
        a = ipaddress.IPv4Address(net)
    plen = bin(mask).count("1")
    contiguous = mask == ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)
    if contiguous:
        return f"{a}/{plen}"
    m = ipaddress.IPv4Address(mask) if family == "ipv4" else ipaddress.IPv6Address(mask)
    return f"{a}/{m}"


class AddrMatch(MatchSpec):
    name = "ip"
    __slots__ = ("field", "net", "mask", "neg", "family", "text")

    def __init__(self, field: str, net: int, mask: int, neg: bool, family: str, text: str) -> None:
        self.field = field
        self.net = net
        self.mask = mask
        self.neg = neg
        self.family = family
        self.text = text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        v = pkt.src_n if self.field == "s" else pkt.dst_n
        return ((v & self.mask) == self.net) != self.neg

    def why_not(self, pkt: Packet, env: Env) -> str:
        which = "source" if self.field == "s" else "destination"
        addr = pkt.src if self.field == "s" else pkt.dst
        return f"{self.text} ({which} is {addr})"


class IfaceMatch(MatchSpec):
    name = "ip"
    __slots__ = ("field", "iface", "prefix", "neg", "text")

    def __init__(self, field: str, iface: str, neg: bool, text: str) -> None:
        self.field = field
        self.prefix = iface.endswith("+")
        self.iface = iface[:-1] if self.prefix else iface
        self.neg = neg
        self.text = text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        dev = pkt.iif if self.field == "i" else pkt.oif
        if dev is None:
            # No device on this hook (-i in OUTPUT/POSTROUTING, -o in PREROUTING/INPUT).
            # iptables-nft: `meta iifname` has no value -> the rule never matches, even
            # negated.  legacy: compares against an empty name, so `! -i X` matches.
            if env.backend == "nft":
                return False
            dev = ""
        hit = dev.startswith(self.iface) if self.prefix else dev == self.iface
        return hit != self.neg

    def why_not(self, pkt: Packet, env: Env) -> str:
        dev = pkt.iif if self.field == "i" else pkt.oif
        which = "input" if self.field == "i" else "output"
        return f"{self.text} ({which} interface is {dev or 'not set on this hook'})"


class ProtoMatch(MatchSpec):
    name = "ip"
    __slots__ = ("proto", "neg", "text", "any")

    def __init__(self, proto: str, neg: bool, text: str) -> None:
        self.proto = proto
        self.neg = neg
        self.text = text
        self.any = proto in ("all", "0")

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        if self.any:
            return not self.neg
        return (pkt.proto == self.proto) != self.neg

    def why_not(self, pkt: Packet, env: Env) -> str:
        return f"{self.text} (protocol is {pkt.proto})"


class FragMatch(MatchSpec):
    name = "ip"
    __slots__ = ("neg", "text")

    def __init__(self, neg: bool, text: str) -> None:
        self.neg = neg
        self.text = text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        return pkt.fragment != self.neg

    def why_not(self, pkt: Packet, env: Env) -> str:
        return f"{self.text} (packet is {'a' if pkt.fragment else 'not a'} fragment)"


def basic_match(kind: str, neg: bool, value: str, ctx: ParseCtx) -> MatchSpec:
    bang = "! " if neg else ""
    if kind in ("s", "d"):
        if "," in value:
            raise ctx.error(
                f"-{kind} {value}: several addresses in one rule expand to several rules; "
                "write one rule per address as iptables-save prints them"
            )
        net, mask, _ = parse_prefix(value, ctx.family, ctx, f"-{kind}")
        text = f"{bang}-{kind} {format_prefix(net, mask, ctx.family)}"
        return AddrMatch(kind, net, mask, neg, ctx.family, text)
    if kind in ("i", "o"):
        if not value or len(value) > 15:
            raise ctx.error(f"-{kind}: invalid interface name {value!r}")
        return IfaceMatch(kind, value, neg, f"{bang}-{kind} {value}")
    if kind == "p":
        p = canonical_proto(value)
        if ctx.family == "ipv6" and p == "icmp":
            p = "icmp"  # ip6tables -p icmp means IPv4 ICMP (never matches v6)
        if p not in ("all", "0") and proto_number(p) is None and not p.isdigit():
            raise ctx.error(f"-p: unknown protocol {value!r}")
        if p.isdigit() and int(p) > 255:
            raise ctx.error(f"-p: protocol {value} out of range")
        if p.isdigit():
            p = PROTO_NAMES.get(int(p), p)
        return ProtoMatch(p, neg, f"{bang}-p {value}")
    if kind == "f":
        if ctx.family == "ipv6":
            raise ctx.error("-f is not valid for ip6tables (use -m frag)")
        return FragMatch(neg, f"{bang}-f")
    raise ctx.error(f"unknown basic match -{kind}")
