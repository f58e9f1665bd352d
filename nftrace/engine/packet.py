"""The packet as it travels: headers, metadata, conntrack state.

Addresses are kept both as text (for output) and as integers (for fast prefix
matching).  A Packet is mutated by targets (MARK, NAT...) and cloned when a
trace forks.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from typing import Any

from nftrace.errors import InputError

PROTO_NUMBERS: dict[str, int] = {
    "icmp": 1,
    "igmp": 2,
    "tcp": 6,
    "udp": 17,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmpv6": 58,
    "ipv6-icmp": 58,
    "sctp": 132,
    "udplite": 136,
    "ipip": 4,
    "ospf": 89,
    "vrrp": 112,
}
PROTO_NAMES: dict[int, str] = {
    1: "icmp",
    2: "igmp",
    6: "tcp",
    17: "udp",
    47: "gre",
    50: "esp",
    51: "ah",
    58: "icmpv6",
    132: "sctp",
    136: "udplite",
    4: "ipip",
    89: "ospf",
    112: "vrrp",
}
PORT_PROTOS = frozenset({"tcp", "udp", "sctp", "udplite", "dccp"})
CT_STATES = ("NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED")
TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")


def canonical_proto(p: str | int) -> str:
    if isinstance(p, int) or p.isdigit():
        n = int(p)
        return PROTO_NAMES.get(n, str(n))
    p = p.lower()
    if p in ("ipv6-icmp", "icmp6"):
        return "icmpv6"
    if p not in PROTO_NUMBERS:
        # any other /etc/protocols name (pim, l2tp ...): named as the rules' -p names it, by number
        from nftrace.ruleset.ext.basic import PROTO_BY_NAME

        num = PROTO_BY_NAME.get(p)
        if num is not None:
            return PROTO_NAMES.get(num, str(num))
    return p


def proto_number(p: str) -> int | None:
    if p.isdigit():
        return int(p)
    return PROTO_NUMBERS.get(p)


@dataclass(slots=True)
class Packet:
    proto: str
    src: str
    dst: str
    sport: int | None = None
    dport: int | None = None
    family: str = "ipv4"
    iif: str | None = None
    oif: str | None = None
    mark: int = 0
    ct_state: str = "NEW"
    ct_mark: int = 0
    ct_status: set[str] = field(default_factory=set)  # DNAT SNAT CONFIRMED SEEN_REPLY ASSURED EXPECTED
    # original-direction tuple of the connection (before any NAT)
    orig_src: str = ""
    orig_dst: str = ""
    orig_sport: int | None = None
    orig_dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    tcp_flags: frozenset[str] = frozenset()
    ttl: int = 64
    length: int | None = None
    tos: int = 0
    fragment: bool = False
    physdev_in: str | None = None
    physdev_out: str | None = None
    bridged: bool = False
    src_mac: str | None = None
    uid: int | None = None
    gid: int | None = None
    untracked: bool = False
    # kernel-internal bookkeeping of the nat manips already set up for this connection
    nat_dst_done: bool = False
    nat_src_done: bool = False
    # set by a NAT target during a nat-table walk, applied when the hook's nat table finishes
    pending_nat: Any = None
    # the rule whose NAT target set pending_nat: {"table", "chain", "rule"}
    pending_nat_rule: Any = None
    # output device of a re-route in OUTPUT, which the kernel's hook state shows from POSTROUTING on
    pending_oif: str | None = None
    # addresses as integers (kept in sync by set_src/set_dst)
    src_n: int = 0
    dst_n: int = 0
    secmark: int = 0
    # ports a NAT with --random/--random-fully chose at random ("sport"/"dport")
    random_ports: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.src_n = int(ipaddress.ip_address(self.src)) if self.src else 0
        self.dst_n = int(ipaddress.ip_address(self.dst)) if self.dst else 0
        if not self.orig_src:
            self.orig_src, self.orig_dst = self.src, self.dst
            self.orig_sport, self.orig_dport = self.sport, self.dport

    def set_src(self, addr: str) -> None:
        self.src = addr
        self.src_n = int(ipaddress.ip_address(addr))

    def set_dst(self, addr: str) -> None:
        self.dst = addr
        self.dst_n = int(ipaddress.ip_address(addr))

    def clone(self) -> Packet:
        return replace(self, ct_status=set(self.ct_status), random_ports=set(self.random_ports))

    @property
    def has_ports(self) -> bool:
        return self.proto in PORT_PROTOS

    def endpoint(self, which: str) -> str:
        addr = self.src if which == "src" else self.dst
        port = self.sport if which == "src" else self.dport
        if self.family == "ipv6":
            addr = f"[{addr}]" if port is not None else addr
        return f"{addr}:{port}" if port is not None and self.has_ports else addr

    def summary(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "sport": self.sport, "dport": self.dport}

    def to_contract(self, origin: str) -> dict[str, Any]:
        """The `packet` object of Contract 1 (nftrace.trace/1)."""
        d: dict[str, Any] = {
            "family": self.family,
            "proto": self.proto,
            "src": self.src,
            "dst": self.dst,
            "sport": self.sport,
            "dport": self.dport,
            "iif": self.iif,
            "oif": self.oif,
            "mark": self.mark,
            "ct_state": self.ct_state,
            "ct_mark": self.ct_mark,
        }
        if self.icmp_type is not None:
            d["icmp_type"] = self.icmp_type
            d["icmp_code"] = self.icmp_code
        if self.tcp_flags:
            d["tcp_flags"] = ",".join(f for f in TCP_FLAGS if f in self.tcp_flags)
        return d


ICMP_TYPES: dict[str, tuple[int, int | None]] = {
    "echo-reply": (0, None),
    "pong": (0, None),
    "destination-unreachable": (3, None),
    "network-unreachable": (3, 0),
    "host-unreachable": (3, 1),
    "protocol-unreachable": (3, 2),
    "port-unreachable": (3, 3),
    "fragmentation-needed": (3, 4),
    "source-route-failed": (3, 5),
    "network-unknown": (3, 6),
    "host-unknown": (3, 7),
    "network-prohibited": (3, 9),
    "host-prohibited": (3, 10),
    "TOS-network-unreachable": (3, 11),
    "TOS-host-unreachable": (3, 12),
    "communication-prohibited": (3, 13),
    "host-precedence-violation": (3, 14),
    "precedence-cutoff": (3, 15),
    "source-quench": (4, None),
    "redirect": (5, None),
    "network-redirect": (5, 0),
    "host-redirect": (5, 1),
    "TOS-network-redirect": (5, 2),
    "TOS-host-redirect": (5, 3),
    "echo-request": (8, None),
    "ping": (8, None),
    "router-advertisement": (9, None),
    "router-solicitation": (10, None),
    "time-exceeded": (11, None),
    "ttl-exceeded": (11, None),
    "ttl-zero-during-transit": (11, 0),
    "ttl-zero-during-reassembly": (11, 1),
    "parameter-problem": (12, None),
    "ip-header-bad": (12, 0),
    "required-option-missing": (12, 1),
    "timestamp-request": (13, None),
    "timestamp-reply": (14, None),
    "address-mask-request": (17, None),
    "address-mask-reply": (18, None),
}
ICMPV6_TYPES: dict[str, tuple[int, int | None]] = {
    "destination-unreachable": (1, None),
    "no-route": (1, 0),
    "communication-prohibited": (1, 1),
    "beyond-scope": (1, 2),
    "address-unreachable": (1, 3),
    "port-unreachable": (1, 4),
    "failed-policy": (1, 5),
    "reject-route": (1, 6),
    "packet-too-big": (2, None),
    "time-exceeded": (3, None),
    "ttl-exceeded": (3, None),
    "ttl-zero-during-transit": (3, 0),
    "ttl-zero-during-reassembly": (3, 1),
    "parameter-problem": (4, None),
    "bad-header": (4, 0),
    "unknown-header-type": (4, 1),
    "unknown-option": (4, 2),
    "echo-request": (128, None),
    "ping": (128, None),
    "echo-reply": (129, None),
    "pong": (129, None),
    "mld-listener-query": (130, None),
    "mld-listener-report": (131, None),
    "mld-listener-done": (132, None),
    "mld-listener-reduction": (132, None),
    "router-solicitation": (133, None),
    "router-advertisement": (134, None),
    "neighbour-solicitation": (135, None),
    "neighbor-solicitation": (135, None),
    "neighbour-advertisement": (136, None),
    "neighbor-advertisement": (136, None),
    "redirect": (137, None),
}


# What conntrack makes of an ICMP message that belongs to no known connection (checked on 6.18 in
# tests/test_ipv6_kernel.py): only these types open a connection (icmp_new/icmpv6_new valid_new[]);
# ICMPv6 neighbour discovery and MLD are left untracked (noct_valid_new[]); any other type, errors
# included (nf_conntrack_inet_error finds nothing to be RELATED to), gets no conntrack: INVALID.
_ICMP_NEW = frozenset({8, 13, 15, 17})
_ICMPV6_NEW = frozenset({128, 139})
_ICMPV6_UNTRACKED = frozenset({130, 131, 132, 133, 134, 135, 136, 143})


def icmp_ct_state(proto: str, icmp_type: int | None) -> str:
    """The conntrack state of an ICMP/ICMPv6 message of this type that belongs to no connection."""
    if icmp_type is None:
        return "NEW"
    if proto == "icmp":
        return "NEW" if icmp_type in _ICMP_NEW else "INVALID"
    if icmp_type in _ICMPV6_NEW:
        return "NEW"
    return "UNTRACKED" if icmp_type in _ICMPV6_UNTRACKED else "INVALID"


def _whole(v: Any, key: str, lo: int, hi: int, file: str | None, base: int = 10) -> int | None:
    """A whole number lo..hi from a flag, a flow word or a JSON value (None when absent)."""
    if v is None or v == "":
        return None
    try:
        if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
            raise ValueError
        n = int(v.strip(), base) if isinstance(v, str) else int(v)
    except (TypeError, ValueError, OverflowError):
        what = "a port number" if key in ("sport", "dport") else "a whole number"
        raise InputError(f"{key}: {v!r} is not {what}", file=file) from None
    if not lo <= n <= hi:
        raise InputError(f"{key}: {n} is out of range {lo}..{hi:#x}" if base == 0 else
                         f"{key}: {n} is out of range {lo}..{hi}", file=file)  # fmt: skip
    return n


def _addr(text: str, what: str, file: str | None) -> tuple[str, str]:
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        raise InputError(
            f"{what}: {text!r} is not an IP address (give one such as 10.0.0.1 or 2001:db8::1)", file=file
        ) from None
    return str(a), ("ipv4" if a.version == 4 else "ipv6")


_FLOW = re.compile(r"^\s*(?P<proto>[A-Za-z0-9-]+)\s+(?P<src>\S+)\s*>\s*(?P<dst>\S+)(?P<rest>.*)$")


def _split_endpoint(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
        return host, (int(port) if port else None)
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, None


def parse_flow(text: str, file: str | None = None) -> dict[str, Any]:
    """Parse a flow string `PROTO SRC[:SPORT] > DST[:DPORT] [iif IF | local] [mark M] [state S]`.

    Returns the keys of a trace's `packet` plus `origin` (same shape as a batch line).
    """
    m = _FLOW.match(text)
    if not m:
        raise InputError(
            f"cannot read flow {text.strip()!r}: expected 'PROTO SRC[:SPORT] > DST[:DPORT] [iif IF | local]'",
            file=file,
        )
    try:
        src, sport = _split_endpoint(m["src"])
        dst, dport = _split_endpoint(m["dst"])
    except ValueError:
        raise InputError(f"bad port in flow {text.strip()!r}", file=file) from None
    d: dict[str, Any] = {"proto": m["proto"].lower(), "src": src, "dst": dst, "sport": sport, "dport": dport}
    words = m["rest"].split()
    i = 0
    origin = None
    while i < len(words):
        w = words[i].lower()
        nxt = words[i + 1] if i + 1 < len(words) else None
        if w == "local":
            origin = "local"
            i += 1
            continue
        if w in ("iif", "in", "dev", "oif", "out", "mark", "state", "ct", "ct_state", "type", "icmp-type", "flags"):
            if nxt is None:
                raise InputError(f"flow: '{w}' needs a value", file=file)
            if w in ("iif", "in", "dev"):
                d["iif"] = nxt
                origin = origin or "ingress"
            elif w in ("oif", "out"):
                d["oif"] = nxt
            elif w == "mark":
                d["mark"] = nxt
            elif w in ("state", "ct", "ct_state"):
                d["ct_state"] = nxt.upper()
            elif w in ("type", "icmp-type"):
                d["icmp_type"] = nxt
            elif w == "flags":
                d["tcp_flags"] = nxt
            i += 2
            continue
        raise InputError(f"flow: unexpected word {words[i]!r}", file=file)
    d["origin"] = origin or ("ingress" if "iif" in d else "local")
    return d


def packet_from_dict(d: dict[str, Any], file: str | None = None) -> tuple[Packet, str]:
    """Build a Packet (and its origin) from a batch line / flow dict / CLI flags."""
    origin = d.get("origin") or ("ingress" if d.get("iif") else "local")
    if origin not in ("ingress", "local"):
        raise InputError(f"origin must be 'ingress' or 'local', not {origin!r}", file=file)
    proto_raw = d.get("proto")
    if not proto_raw:
        raise InputError("packet needs a protocol (tcp, udp, icmp, ...)", file=file)
    proto = canonical_proto(str(proto_raw))
    if proto not in PROTO_NUMBERS and not (proto.isdigit() and int(proto) <= 255):
        raise InputError(
            f"unknown protocol {str(proto_raw)!r}: give a name such as tcp, udp, icmp, or a number 0..255", file=file
        )
    if not d.get("dst"):
        raise InputError("packet needs a destination address", file=file)
    dst, fam = _addr(str(d["dst"]), "destination", file)
    src = ""
    if d.get("src"):
        src, fam2 = _addr(str(d["src"]), "source", file)
        if fam2 != fam:
            raise InputError("source and destination are of different address families", file=file)
    elif origin == "ingress":
        raise InputError("an ingress packet needs a source address (--src)", file=file)
    family = str(d.get("family") or fam)
    if family != fam:
        raise InputError(f"family {family} does not fit address {dst}", file=file)
    if proto == "icmp" and family == "ipv6":
        proto = "icmpv6"

    sport, dport = _whole(d.get("sport"), "sport", 0, 65535, file), _whole(d.get("dport"), "dport", 0, 65535, file)
    if proto in PORT_PROTOS:
        if dport is None:
            raise InputError(f"a {proto} packet needs a destination port (--dport)", file=file)
        if sport is None:
            sport = 40000
    elif sport is not None or dport is not None:
        raise InputError(f"{proto} has no ports", file=file)
    state = str(d.get("ct_state") or "NEW").upper()
    if state not in CT_STATES:
        raise InputError(f"conntrack state must be one of {', '.join(CT_STATES)}, not {state!r}", file=file)
    mark = _whole(d.get("mark"), "mark", 0, 0xFFFFFFFF, file, base=0) or 0
    icmp_type: int | None = None
    icmp_code: int | None = None
    if proto in ("icmp", "icmpv6"):
        it = d.get("icmp_type")
        table = ICMP_TYPES if proto == "icmp" else ICMPV6_TYPES
        if it is None or it == "":
            icmp_type, icmp_code = (8, 0) if proto == "icmp" else (128, 0)
        elif (isinstance(it, int) and not isinstance(it, bool)) or str(it).split("/")[0].isdigit():
            parts = str(it).split("/", 1)
            icmp_type = _whole(parts[0], "icmp_type", 0, 255, file)
            icmp_code = _whole(parts[1] if len(parts) > 1 else d.get("icmp_code"), "icmp_code", 0, 255, file) or 0
        elif str(it) in table:
            icmp_type, c = table[str(it)]
            icmp_code = c if c is not None else _whole(d.get("icmp_code"), "icmp_code", 0, 255, file) or 0
        else:
            raise InputError(f"unknown ICMP type {it!r}", file=file)
        if not d.get("ct_state"):
            state = icmp_ct_state(proto, icmp_type)
    flags: frozenset[str] = frozenset()
    if proto == "tcp":
        fl = d.get("tcp_flags")
        if fl:
            names = [f.strip().upper() for f in str(fl).replace("|", ",").split(",") if f.strip()]
            bad = [f for f in names if f not in TCP_FLAGS]
            if bad:
                raise InputError(f"unknown TCP flag(s): {', '.join(bad)}", file=file)
            flags = frozenset(names)
        else:
            flags = frozenset({"SYN"}) if state == "NEW" else frozenset({"ACK"})
    iif = d.get("iif") or None
    if origin == "ingress" and not iif:
        raise InputError("an ingress packet needs an input interface (--iif), or say --local", file=file)
    if origin == "local" and iif:
        raise InputError("a local packet has no input interface: drop --iif or --local", file=file)
    pkt = Packet(
        proto=proto,
        src=src,
        dst=dst,
        sport=sport,
        dport=dport,
        family=family,
        iif=str(iif) if iif else None,
        oif=str(d["oif"]) if d.get("oif") else None,
        mark=mark,
        ct_state=state,
        icmp_type=icmp_type,
        icmp_code=icmp_code,
        tcp_flags=flags,
        untracked=state == "UNTRACKED",
    )
    ttl = _whole(d.get("ttl"), "ttl", 0, 255, file)
    if ttl is not None:
        pkt.ttl = ttl
    pkt.length = _whole(d.get("length"), "length", 0, 65535, file)
    pkt.uid = _whole(d.get("uid"), "uid", 0, 0xFFFFFFFF, file)
    pkt.gid = _whole(d.get("gid"), "gid", 0, 0xFFFFFFFF, file)
    ct_mark = _whole(d.get("ct_mark"), "ct_mark", 0, 0xFFFFFFFF, file, base=0)
    if ct_mark is not None:
        pkt.ct_mark = ct_mark
    return pkt, origin
