"""The built-in matches: -s -d -p -i -o -f (struct ipt_ip / ip6t_ip6)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from nftrace.engine.packet import PROTO_NAMES
from nftrace.ruleset.model import MatchOutcome, MatchSpec
from nftrace.ruleset.values import c_strtoul, canonical_ipv4, net_text, parse_addr_mask, quote_always

if TYPE_CHECKING:
    from nftrace.engine.env import Env
    from nftrace.engine.packet import Packet
    from nftrace.ruleset.registry import ParseCtx

# /etc/protocols (netbase) official names: what `-p NAME` accepts (getprotobyname)
# and what iptables-save prints for a number (getprotobynumber).
_ETC_PROTOCOLS = (
    "ip 0;hopopt 0;icmp 1;igmp 2;ggp 3;ipencap 4;st 5;tcp 6;egp 8;igp 9;pup 12;udp 17;hmp 20;"
    "xns-idp 22;rdp 27;iso-tp4 29;dccp 33;xtp 36;ddp 37;idpr-cmtp 38;ipv6 41;ipv6-route 43;"
    "ipv6-frag 44;idrp 45;rsvp 46;gre 47;esp 50;ah 51;skip 57;ipv6-icmp 58;ipv6-nonxt 59;"
    "ipv6-opts 60;rspf 73;vmtp 81;eigrp 88;ospf 89;ax.25 93;ipip 94;etherip 97;encap 98;pim 103;"
    "ipcomp 108;vrrp 112;l2tp 115;isis 124;sctp 132;fc 133;mobility-header 135;udplite 136;"
    "mpls-in-ip 137;manet 138;hip 139;shim6 140;wesp 141;rohc 142;ethernet 143"
)
PROTO_BY_NAME: dict[str, int] = {}
SAVE_NAME: dict[int, str] = {}
for _item in _ETC_PROTOCOLS.split(";"):
    _n, _v = _item.split()
    PROTO_BY_NAME.setdefault(_n, int(_v))
    SAVE_NAME.setdefault(int(_v), _n)
# libxtables' own table (xtables_chain_protos), used when /etc/protocols lacks a name
for _alias, _num in (("icmpv6", 58), ("ipv6-mh", 135), ("mh", 135), ("all", 0), ("udplite", 136)):
    PROTO_BY_NAME.setdefault(_alias, _num)


def protocol_number(text: str) -> int | None:
    """xtables_parse_protocol: a number 0..255 or a protocol name (already lower-cased)."""
    v = c_strtoul(text)
    if v is not None:
        return v if v <= 255 else None
    return PROTO_BY_NAME.get(text)


def protocol_save_name(num: int) -> str:
    return SAVE_NAME.get(num, str(num))


def engine_proto(num: int) -> str:
    """The name the engine's packets carry for a protocol number (nftrace.engine.packet)."""
    return PROTO_NAMES.get(num, str(num))


#: position of each built-in match in iptables-save's output: -s -d -i -o -p -f
BASIC_RANK: Final = {"s": 0, "d": 1, "i": 2, "o": 3, "p": 4, "f": 5}


class AddrMatch(MatchSpec):
    name = "ip"
    __slots__ = ("field", "net", "mask", "neg", "family", "text", "basic_rank")

    def __init__(self, field: str, net: int, mask: int, neg: bool, family: str, text: str) -> None:
        self.basic_rank = BASIC_RANK[field]
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
    __slots__ = ("field", "iface", "prefix", "neg", "text", "anything", "basic_rank")

    def __init__(self, field: str, iface: str, neg: bool, text: str) -> None:
        self.basic_rank = BASIC_RANK[field]
        self.field = field
        self.prefix = iface.endswith("+")
        self.iface = iface[:-1] if self.prefix else iface
        self.neg = neg
        self.text = text
        # `-i +` compares no byte of the name: it is no condition at all (iptables-save omits it)
        self.anything = self.prefix and not self.iface

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        if self.anything:
            return not self.neg
        dev = pkt.iif if self.field == "i" else pkt.oif
        if dev is None:
            # No device on this hook (-i in OUTPUT/POSTROUTING, -o in PREROUTING/INPUT): both
            # backends compare an empty name, so `! -i X` matches there (seen in the kernel's
            # trace for a user chain called from OUTPUT, on iptables-nft).
            dev = ""
        hit = dev.startswith(self.iface) if self.prefix else dev == self.iface
        return hit != self.neg

    def why_not(self, pkt: Packet, env: Env) -> str:
        dev = pkt.iif if self.field == "i" else pkt.oif
        which = "input" if self.field == "i" else "output"
        return f"{self.text} ({which} interface is {dev or 'not set on this hook'})"

    def canonical(self) -> str:
        return "" if self.anything and not self.neg else self.text


class ProtoMatch(MatchSpec):
    name = "ip"
    basic_rank = 4
    __slots__ = ("proto", "neg", "text", "any", "number")

    def __init__(self, proto: str, neg: bool, text: str, number: int = -1) -> None:
        self.proto = proto
        self.neg = neg
        self.text = text
        self.number = number
        self.any = proto in ("all", "0") or number == 0

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        if self.any:
            return not self.neg
        return (pkt.proto == self.proto) != self.neg

    def why_not(self, pkt: Packet, env: Env) -> str:
        return f"{self.text} (protocol is {pkt.proto})"

    def canonical(self) -> str:
        return "" if self.any else self.text


class FragMatch(MatchSpec):
    name = "ip"
    basic_rank = 5
    __slots__ = ("neg", "text")

    def __init__(self, neg: bool, text: str) -> None:
        self.neg = neg
        self.text = text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        return pkt.fragment != self.neg

    def why_not(self, pkt: Packet, env: Env) -> str:
        return f"{self.text} (packet is {'a' if pkt.fragment else 'not a'} fragment)"


_PREFIX: Final = {str(n): n for n in range(1, 33)}  # prefix lengths as iptables-save prints them
_MASKS: Final = [(0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF for n in range(33)]


def quick_addr_match(kind: str, neg: bool, value: str, family: str) -> MatchSpec | None:
    """basic_match for -s/-d `a.b.c.d[/len]` (len 1..32) as iptables-save prints them: the same spec,
    or None to ask it."""
    if family != "ipv4":
        return None
    addr, slash, plen = value.partition("/")
    n = _PREFIX.get(plen) if slash else 32
    if n is None:
        return None
    a = canonical_ipv4(addr)
    if a is None:
        return None
    mask = _MASKS[n]
    net = a & mask
    shown = value if net == a and slash else net_text(net, mask, family)
    return AddrMatch(kind, net, mask, neg, family, ("! -" if neg else "-") + kind + " " + shown)


def basic_match(kind: str, neg: bool, value: str, ctx: ParseCtx) -> MatchSpec:
    """One basic match; `value` is a single address for -s/-d (lists are split by the parser)."""
    bang = "! " if neg else ""
    if kind in ("s", "d"):
        net, mask = parse_addr_mask(value, ctx.family, ctx, f"-{kind}")
        if mask == 0 and neg:
            # legacy loads it (never matches), iptables-nft refuses it (RULE_APPEND EINVAL)
            raise ctx.error(f"'! -{kind} {value}': a negated /0 never matches and iptables-nft refuses it")
        text = "" if mask == 0 and not neg else f"{bang}-{kind} {net_text(net, mask, ctx.family)}"
        return AddrMatch(kind, net, mask, neg, ctx.family, text)
    if kind in ("i", "o"):
        if len(value) > 15:
            raise ctx.error(f"-{kind}: interface name {value!r} is longer than 15 characters")
        if not value:
            raise ctx.error(f"-{kind}: empty interface name")
        # iptables only warns about a blank or '/' (no interface can have them); iptables-save
        # prints such a name bare, which does not read back: quote it instead
        shown = quote_always(value) if any(c in value for c in ' \t"\\') else value
        return IfaceMatch(kind, value, neg, f"{bang}-{kind} {shown}")
    if kind == "p":
        num = protocol_number(value)
        if num is None:
            raise ctx.error(f"-p: unknown protocol {value!r}")
        if num == 0 and neg:
            raise ctx.error(f"'! -p {value}': rule would never match protocol")
        return ProtoMatch(engine_proto(num), neg, f"{bang}-p {protocol_save_name(num)}", num)
    if kind == "f":
        if ctx.family == "ipv6":
            raise ctx.error("-f is not an ip6tables option (use -m frag)")
        return FragMatch(neg, f"{bang}-f")
    raise ctx.error(f"unknown basic match -{kind}")
