"""Probe packets for `nftrace diff --auto`, generated from the rules of both sides.

A single changed rule R (deleted, added, an address, a port or the target
changed) can only change the fate of packets that reach R and match it in one
version and not in the other.  So for every rule of either ruleset, and for up
to three ways of reaching its chain from a built-in chain (the jump rules on
the way, at most two per hook, their conditions compatible with R's), a
*witness* packet is built that satisfies the conditions of the jump rules and
of R; then *variants* of the witness move one field at a time to every
boundary R states:

* each `-s`/`-d` prefix (and `--src-range`, ipset members, `--ctorig*`): an
  address inside, the first and last address of the network, and one just
  outside on each side;
* each port or port range (`--dport`, `--sport`, multiport): inside, both
  edges, and edge±1;
* both sides of each negation: a protocol other than the one named, an
  interface other than the one named, a state not listed, an ICMP type other
  than the one named;
* every interface named (`-i` as the input interface; `-o` through a
  destination the host routes out of it), every conntrack state listed;
* the hook decides the origin: PREROUTING, INPUT and FORWARD packets arrive
  on an interface (INPUT ones for a local address), OUTPUT ones are sent by
  a local process, POSTROUTING gets both.

The rules the two versions do not share (`focus`) are probed harder: the
witness steps around earlier rules that would stop it; each variant also
steps around the later rules, and is also caught by the nearest later rules
(and the rules of the chain a jump enters) that decide otherwise; the witness
is swept over conntrack states, input interfaces and protocols; and, given
`tracers`, every such probe is traced and reworked around whatever else
drops it (see _refine).

A grid of plain packets (each origin and input interface, each protocol, to a
local address, a far address and a neighbour behind every interface) covers
chain policies.  Probes are deduplicated, bounded (`max_probes`; the focus
rules' probes first, then the other rules' witnesses, then their variants
taken round-robin over the rules, then the grid of mentioned ports) and
returned sorted, so the same inputs always give the same probes.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from nftrace.diff.words import Opt, rule_opts
from nftrace.host.model import HostContext
from nftrace.ruleset.ipsets import IpSets
from nftrace.ruleset.model import Rule, Ruleset, Table

PORT_PROTOS = ("tcp", "udp", "sctp", "udplite", "dccp")
STATES = ("NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED")
DEFAULT_DPORT = 33333
DEFAULT_SPORT = 40000
MAX_PATHS = 3  # ways into a chain tried per rule
PATHS_KEPT = 8  # ways into a chain remembered (shortest first, at most 3 per hook)
DEFAULT_MAX_PROBES = 20000

# fields of a probe, in the order they sort
FIELDS = (
    "origin",
    "iif",
    "proto",
    "src",
    "dst",
    "sport",
    "dport",
    "icmp",
    "ct_state",
    "tcp_flags",
    "mark",
    "uid",
    "gid",
    "length",
    "ttl",
)
_PROTO_ALIASES = {"ipv6-icmp": "icmpv6", "icmp6": "icmpv6", "6": "tcp", "17": "udp", "1": "icmp", "58": "icmpv6"}
_ICMP = {
    "echo-reply": (0, 0),
    "pong": (0, 0),
    "destination-unreachable": (3, 0),
    "network-unreachable": (3, 0),
    "host-unreachable": (3, 1),
    "protocol-unreachable": (3, 2),
    "port-unreachable": (3, 3),
    "fragmentation-needed": (3, 4),
    "source-quench": (4, 0),
    "redirect": (5, 0),
    "echo-request": (8, 0),
    "ping": (8, 0),
    "router-advertisement": (9, 0),
    "router-solicitation": (10, 0),
    "time-exceeded": (11, 0),
    "ttl-exceeded": (11, 0),
    "ttl-zero-during-transit": (11, 0),
    "parameter-problem": (12, 0),
    "timestamp-request": (13, 0),
    "timestamp-reply": (14, 0),
    "address-mask-request": (17, 0),
    "address-mask-reply": (18, 0),
}
_ICMP6 = {
    "destination-unreachable": (1, 0),
    "no-route": (1, 0),
    "communication-prohibited": (1, 1),
    "address-unreachable": (1, 3),
    "port-unreachable": (1, 4),
    "packet-too-big": (2, 0),
    "time-exceeded": (3, 0),
    "ttl-exceeded": (3, 0),
    "parameter-problem": (4, 0),
    "echo-request": (128, 0),
    "ping": (128, 0),
    "echo-reply": (129, 0),
    "pong": (129, 0),
    "router-solicitation": (133, 0),
    "router-advertisement": (134, 0),
    "neighbour-solicitation": (135, 0),
    "neighbor-solicitation": (135, 0),
    "neighbour-advertisement": (136, 0),
    "neighbor-advertisement": (136, 0),
    "redirect": (137, 0),
}


# ---------------------------------------------------------------- constraints


@dataclass(frozen=True)
class Cons:
    """One condition on one field: `holds(v)` and the values worth trying (`points`)."""

    field: str
    holds: Callable[[Any], bool]
    points: tuple[Any, ...]
    positive: tuple[Any, ...] = ()  # points that satisfy it, best first
    pin: bool = False  # holds for exactly points[0]


def _range_cons(fld: str, ranges: list[tuple[int, int]], neg: bool, top: int) -> Cons:
    pts: list[int] = []
    for lo, hi in ranges:
        inside = lo + 1 if hi - lo >= 2 else lo
        if hi - lo > 4 and fld in ("sport", "dport", "length", "ttl", "uid", "gid"):
            inside = (lo + hi) // 2
        for v in (inside, lo, hi, lo - 1, hi + 1):
            if 0 <= v <= top and v not in pts:
                pts.append(v)
    rs = tuple(ranges)

    def holds(v: Any) -> bool:
        if v is None:
            return False
        return any(lo <= v <= hi for lo, hi in rs) != neg

    return Cons(fld, holds, tuple(pts), tuple(p for p in pts if holds(p)))


def _set_cons(fld: str, values: Iterable[Any], neg: bool, others: Iterable[Any]) -> Cons:
    vals = tuple(dict.fromkeys(values))
    pts = list(vals)
    for o in others:
        if o not in pts:
            pts.append(o)
            break
    s = frozenset(vals)

    def holds(v: Any) -> bool:
        return (v in s) != neg

    return Cons(fld, holds, tuple(pts), tuple(p for p in pts if holds(p)))


# ---------------------------------------------------------------- host facts


@dataclass
class HostFacts:
    family: str
    links: list[str]  # non-loopback link names, host order
    local: list[int]  # local addresses (ints), loopback first excluded
    loopback: int
    broadcast: list[int]
    neighbour: dict[str, int]  # link -> an address on its connected network (not local)
    far: int
    top: int
    primary: dict[str, int] = field(default_factory=dict)  # link -> its first address

    def addr_types(self, v: int) -> set[str]:
        out: set[str] = set()
        if v in self.local or v == self.loopback or (self.family == "ipv4" and v >> 24 == 127):
            out.add("LOCAL")
        if v in self.broadcast or (self.family == "ipv4" and v == 0xFFFFFFFF):
            out.add("BROADCAST")
        if self.family == "ipv4" and 0xE0000000 <= v <= 0xEFFFFFFF or self.family == "ipv6" and v >> 120 == 0xFF:
            out.add("MULTICAST")
        if not out:
            out.add("UNICAST")
        if "LOCAL" in out:
            out.add("UNICAST")
        return out


def host_facts(host: HostContext, family: str) -> HostFacts:
    v6 = family == "ipv6"
    top = (1 << 128) - 1 if v6 else 0xFFFFFFFF
    links: list[str] = []
    local: list[int] = []
    bcast: list[int] = []
    neigh: dict[str, int] = {}
    primary: dict[str, int] = {}
    for link in host.links:
        is_lo = link.name == "lo" or link.kind == "loopback"
        if not is_lo and "*" not in link.name:
            links.append(link.name)
        for a in link.addresses:
            try:
                iface = ipaddress.ip_interface(a)
            except ValueError:
                continue
            if (iface.version == 6) != v6:
                continue
            ip = int(iface.ip)
            if iface.ip.is_loopback:
                continue
            if ip not in local:
                local.append(ip)
            if is_lo or "*" in link.name:
                continue
            primary.setdefault(link.name, ip)
            net = iface.network
            if net.num_addresses >= 4:
                if not v6:
                    bcast.append(int(net.broadcast_address))
                for k in (2, 3, 4):
                    cand = int(net.network_address) + k
                    if cand != ip and cand not in local:
                        neigh.setdefault(link.name, cand)
                        break
    for r in host.routes:
        if r.family != family or r.table == "local" or r.type != "unicast" or not r.oif or r.dst == "default":
            continue
        try:
            net = ipaddress.ip_network(r.dst, strict=False)
        except ValueError:
            continue
        if r.oif not in neigh and net.num_addresses >= 4:
            neigh[r.oif] = int(net.network_address) + 1
    far = int(ipaddress.ip_address("2001:db8:ffff::77" if v6 else "198.51.100.77"))
    loop = 1 if v6 else int(ipaddress.ip_address("127.0.0.1"))
    return HostFacts(family, links, local, loop, bcast, neigh, far, top, primary)


# ---------------------------------------------------------------- rule conditions


def _addr_range(text: str, family: str) -> tuple[int, int] | None:
    try:
        if "/" in text:
            net = ipaddress.ip_network(text, strict=False)
            if (net.version == 6) != (family == "ipv6"):
                return None
            return int(net.network_address), int(net.broadcast_address)
        a = ipaddress.ip_address(text)
        if (a.version == 6) != (family == "ipv6"):
            return None
        return int(a), int(a)
    except ValueError:
        return _addr_mask(text, family)


def _addr_mask(text: str, family: str) -> tuple[int, int] | None:
    """`a.b.c.d/m.m.m.m` (non-contiguous masks): the address itself stands for the set."""
    addr, _, mask = text.partition("/")
    try:
        a = int(ipaddress.ip_address(addr))
        m = int(ipaddress.ip_address(mask)) if mask else None
    except ValueError:
        return None
    if m is None:
        return a, a
    return a & m, a & m


def _port_ranges(text: str) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for part in text.split(","):
        lo_s, sep, hi_s = part.partition(":")
        try:
            lo = int(lo_s) if lo_s else 0
            hi = (int(hi_s) if hi_s else 65535) if sep else lo
        except ValueError:
            continue
        if 0 <= lo <= hi <= 65535:
            out.append((lo, hi))
    return out


def _int(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


def rule_conditions(rule: Rule, hf: HostFacts, ipsets: IpSets | None) -> list[Cons]:
    """The conditions of one rule that probes can satisfy or violate, read from its text."""
    fam = hf.family
    top = hf.top
    out: list[Cons] = []
    icmp_proto = "icmpv6" if fam == "ipv6" else "icmp"
    section = ""  # the -m match (or -j target) the options belong to
    for o in rule_opts(rule.text):
        n, v = o.name, o.value
        if n in ("-m", "--match", "-j", "--jump", "-g", "--goto"):
            section = ("-j " if n in ("-j", "--jump", "-g", "--goto") else "") + v
            continue
        if section.startswith("-j "):
            # target options are no conditions, but a source-port range of SNAT/MASQUERADE
            # treats ports inside and outside it differently: offer both as hints
            if section in ("-j MASQUERADE", "-j SNAT") and n in ("--to-ports", "--to-source"):
                rng = _port_ranges(v.rsplit(":", 1)[1].replace("-", ":") if n == "--to-source" and ":" in v
                                   else v.replace("-", ":") if n == "--to-ports" else "")  # fmt: skip
                if rng:
                    c = _range_cons("sport", rng, False, 65535)
                    out.append(Cons("sport", lambda _v: True, c.points, c.points))
            continue
        if n in ("-s", "--source", "--src", "-d", "--destination", "--dst"):
            fld = "src" if n in ("-s", "--source", "--src") else "dst"
            rngs = [r for r in (_addr_range(x, fam) for x in v.split(",")) if r is not None]
            if rngs and not (len(rngs) == 1 and rngs[0] == (0, top)):
                out.append(_range_cons(fld, rngs, o.neg, top))
        elif n in ("--src-range", "--dst-range"):
            lo_s, _, hi_s = v.partition("-")
            lo_r, hi_r = _addr_range(lo_s, fam), _addr_range(hi_s or lo_s, fam)
            if lo_r and hi_r:
                out.append(_range_cons("src" if n == "--src-range" else "dst", [(lo_r[0], hi_r[1])], o.neg, top))
        elif n in ("--ctorigsrc", "--ctorigdst"):
            r = _addr_range(v, fam)
            if r:
                out.append(_range_cons("src" if n == "--ctorigsrc" else "dst", [r], o.neg, top))
        elif n in ("-p", "--protocol"):
            p = _PROTO_ALIASES.get(v.lower(), v.lower())
            if p in ("all", "0"):
                continue
            if p == "icmp" and fam == "ipv6":
                p = "icmpv6"
            other = ["udp", "tcp"] if p == "tcp" else ["tcp", "udp"]
            out.append(_set_cons("proto", [p], o.neg, other))
        elif n in ("--dport", "--destination-port", "--sport", "--source-port", "--ctorigdstport", "--ctorigsrcport"):
            fld = "dport" if n in ("--dport", "--destination-port", "--ctorigdstport") else "sport"
            rngs = _port_ranges(v)
            if rngs:
                out.append(_range_cons(fld, rngs, o.neg, 65535))
        elif n in ("--dports", "--destination-ports", "--sports", "--source-ports", "--ports"):
            fld = "sport" if n in ("--sports", "--source-ports") else "dport"
            rngs = _port_ranges(v)
            if rngs:
                out.append(_range_cons(fld, rngs, o.neg, 65535))
        elif n in ("-i", "--in-interface", "-o", "--out-interface"):
            fld = "iif" if n in ("-i", "--in-interface") else "oif"
            out.append(_iface_cons(fld, v, o.neg, hf))
        elif n in ("--ctstate", "--state"):
            states = [s for s in v.upper().split(",") if s in STATES]
            if states:
                out.append(_set_cons("ct_state", states, o.neg, [s for s in STATES if s not in states]))
        elif n in ("--icmp-type", "--icmpv6-type"):
            t = _icmp_value(v, fam)
            if t is not None:
                if t == "any":
                    continue
                alt = (0, 0) if t != (0, 0) and t[0] != 0 else (8, 0)
                if fam == "ipv6":
                    alt = (129, 0) if t[0] != 129 else (128, 0)
                out.append(_set_cons("icmp", [t], o.neg, [alt]))
                out.append(_set_cons("proto", [icmp_proto], False, ["tcp"]))
        elif n in ("--src-type", "--dst-type"):
            types = frozenset(x for x in v.upper().split(",") if x)
            out.append(_addrtype_cons("src" if n == "--src-type" else "dst", types, o.neg, hf))
        elif n == "--match-set" and len(o.values) >= 2 and ipsets is not None:
            member = _set_member_cons(o, hf, ipsets)
            if member is not None:
                out.append(member)
        elif n == "--mark" and section == "mark":
            val, _, mask = v.partition("/")
            mv, mm = _int(val), _int(mask) if mask else 0xFFFFFFFF
            if mv is not None and mm is not None:
                out.append(_mark_cons(mv, mm, o.neg))
        elif n in ("--uid-owner", "--gid-owner"):
            lo_s, _, hi_s = v.partition("-")
            lo_i, hi_i = _int(lo_s), _int(hi_s or lo_s)
            if lo_i is not None and hi_i is not None:
                out.append(_range_cons("uid" if n == "--uid-owner" else "gid", [(lo_i, hi_i)], o.neg, 0xFFFFFFFE))
        elif n == "--length":
            rngs = _port_ranges(v)
            if rngs:
                out.append(_range_cons("length", rngs, o.neg, 65535))
        elif n in ("--syn", "--tcp-flags"):
            out.append(_flags_cons(o))
    return out


def _icmp_value(v: str, fam: str) -> tuple[int, int] | str | None:
    if v == "any":
        return "any"
    table = _ICMP6 if fam == "ipv6" else _ICMP
    if v in table:
        return table[v]
    t, _, c = v.partition("/")
    try:
        return int(t), int(c) if c else 0
    except ValueError:
        return None


def _iface_cons(fld: str, name: str, neg: bool, hf: HostFacts) -> Cons:
    prefix = name.endswith("+")
    stem = name[:-1] if prefix else name

    def hit(x: Any) -> bool:
        if not isinstance(x, str) or not x:
            return False
        return x.startswith(stem) if prefix else x == stem

    def holds(x: Any) -> bool:
        # no device on this hook (-i in OUTPUT): the kernel compares an empty name
        return hit(x if x is not None else "") != neg

    inside = [lk for lk in [*hf.links, "lo"] if hit(lk)]
    outside = [lk for lk in [*hf.links, "lo"] if not hit(lk)]
    pts = inside[:2] + outside[:2]
    if not inside and not prefix and not hf.links:
        pts = [stem]
    return Cons(fld, holds, tuple(pts), tuple(p for p in pts if holds(p)))


def _addrtype_cons(fld: str, types: frozenset[str], neg: bool, hf: HostFacts) -> Cons:
    pts: list[int] = []
    if hf.local:
        pts.append(hf.local[0])
    pts.append(hf.loopback)
    pts.extend(hf.broadcast[:1])
    pts.append(hf.far)

    def holds(v: Any) -> bool:
        if not isinstance(v, int):
            return False
        return bool(hf.addr_types(v) & types) != neg

    return Cons(fld, holds, tuple(pts), tuple(p for p in pts if holds(p)))


def _set_member_cons(o: Opt, hf: HostFacts, ipsets: IpSets) -> Cons | None:
    s = ipsets.get(o.values[0])
    if s is None or not s.dims or s.dims[0] not in ("ip", "net"):
        return None
    flags = o.values[1].split(",")
    fld = "src" if flags[0] == "src" else "dst"
    rngs: list[tuple[int, int]] = []
    for e in s.entries[:200]:
        r = _addr_range(e[0], hf.family) if "-" not in e[0] else None
        if "-" in e[0]:
            lo_s, _, hi_s = e[0].partition("-")
            a, b = _addr_range(lo_s, hf.family), _addr_range(hi_s, hf.family)
            r = (a[0], b[1]) if a and b else None
        if r is not None:
            rngs.append(r)
    if not rngs:
        return None
    c = _range_cons(fld, rngs, o.neg, hf.top)
    return Cons(fld, c.holds, c.points[:12], c.positive[:6])


def _mark_cons(value: int, mask: int, neg: bool) -> Cons:
    low = mask & -mask if mask else 1
    pts = [value & mask, (value & mask) ^ low]

    def holds(v: Any) -> bool:
        return isinstance(v, int) and ((v & mask) == (value & mask)) != neg

    return Cons("mark", holds, tuple(pts), tuple(p for p in pts if holds(p)))


def _flags_cons(o: Opt) -> Cons:
    names = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")

    def parse(t: str) -> frozenset[str]:
        t = t.upper()
        if t == "ALL":
            return frozenset(names)
        if t == "NONE":
            return frozenset()
        return frozenset(x for x in t.split(",") if x in names)

    if o.name == "--syn":
        mask, comp = frozenset({"FIN", "SYN", "RST", "ACK"}), frozenset({"SYN"})
    elif len(o.values) >= 2:
        mask, comp = parse(o.values[0]), parse(o.values[1])
    else:
        mask, comp = frozenset(), frozenset()
    # (a packet without any flag cannot be written as a batch packet: the default flags apply)
    cands = [",".join(x for x in names if x in comp), "SYN", "ACK", "SYN,ACK", "FIN,ACK", "RST"]
    pts = tuple(dict.fromkeys(c for c in cands if c))
    neg = o.neg

    def holds(v: Any) -> bool:
        if not isinstance(v, str):
            return False
        fl = frozenset(v.split(","))
        return ((fl & mask) == comp) != neg

    return Cons("tcp_flags", holds, pts, tuple(p for p in pts if holds(p)))


# ---------------------------------------------------------------- paths into chains


def _paths_for(
    rule: Rule, ways: list[tuple[str, list[Rule]]], conds: dict[int, list[Cons]], ctx: _Ctx
) -> list[tuple[str, list[Rule]]]:
    """Up to two ways in per hook (MAX_PATHS in all) whose conditions can hold together with the rule's."""
    out: list[tuple[str, list[Rule]]] = []
    per_hook: dict[str, int] = {}
    fallback: list[tuple[str, list[Rule]]] = []
    own = conds[id(rule)]
    for hook, path in ways:
        if per_hook.get(hook, 0) >= 2:
            continue
        cs = [c for p in path for c in conds[id(p)]] + own
        origin = _origins(hook)[0]
        usable = [c for c in cs if _applies(c, origin)]
        base = _defaults(hook, origin, ctx, None)
        if _keeps(_solve(base, usable, ctx.hf), usable, origin):
            out.append((hook, path))
            per_hook[hook] = per_hook.get(hook, 0) + 1
            if len(out) >= MAX_PATHS:
                break
        elif not fallback:
            fallback.append((hook, path))
    return out or fallback


def entry_paths(rs: Ruleset, max_paths: int = PATHS_KEPT) -> dict[tuple[str, str], list[tuple[str, list[Rule]]]]:
    """(table, chain) -> up to max_paths (hook, jump rules from the built-in chain) ways in, shortest first."""
    out: dict[tuple[str, str], list[tuple[str, list[Rule]]]] = {}
    for tname, table in rs.tables.items():
        q: deque[tuple[str, str, list[Rule]]] = deque()
        for hook in ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"):
            if hook in table.chains:
                q.append((hook, hook, []))
        while q:
            hook, cname, path = q.popleft()
            lst = out.setdefault((tname, cname), [])
            if len(lst) >= max_paths:
                continue
            if sum(1 for h, _ in lst if h == hook) >= 3:
                continue  # leave room for paths from other hooks
            lst.append((hook, path))
            chain = table.chains[cname]
            for r in chain.rules:
                j = r.jump
                if j is not None and j in table.chains and j != cname and len(path) < 16:
                    if all(p.chain != j for p in path):
                        q.append((hook, j, [*path, r]))
    return out


# ---------------------------------------------------------------- building probes


Probe = tuple[Any, ...]  # values in FIELDS order

# Targets after which the packet goes on to the next rule.
_CONTINUING = frozenset(
    {"LOG", "NFLOG", "ULOG", "MARK", "CONNMARK", "TCPMSS", "CHECKSUM", "TRACE", "TOS", "DSCP", "TTL", "HL",
     "CLASSIFY", "SECMARK", "CONNSECMARK", "SET", "AUDIT", "NOTRACK", "CT", "IDLETIMER", "LED", "RATEEST",
     "TEE", "ECN", "TCPOPTSTRIP", "HMARK"}
)  # fmt: skip
SCAN = 200  # rules looked at before / after a rule when dodging


@dataclass
class _Ctx:
    hf: HostFacts
    family: str
    icmp_proto: str
    quiet_in: list[str] = field(default_factory=list)  # links, fewest -i mentions first
    quiet_out: list[str] = field(default_factory=list)  # links, fewest -o mentions first
    # (mark value, conditions of the rule that sets it and of one path to it), per ruleset
    setters: list[tuple[int, list[Cons]]] = field(default_factory=list)


def _ends_walk(rule: Rule) -> bool:
    """Whether a matching rule may stop the packet from reaching the next rule of its chain."""
    if rule.jump is not None:
        return True
    t = rule.target_name
    return t is not None and t not in _CONTINUING


def _defaults(hook: str, origin: str, ctx: _Ctx, iif: str | None) -> dict[str, Any]:
    """A packet no rule singles out: unmentioned interface and ports, addresses on the host's links."""
    hf = ctx.hf
    d: dict[str, Any] = dict.fromkeys(FIELDS)
    d["origin"] = origin
    d["proto"] = "tcp"
    d["ct_state"] = "NEW"
    d["sport"] = DEFAULT_SPORT
    d["dport"] = DEFAULT_DPORT
    if origin == "ingress":
        d["iif"] = iif or (ctx.quiet_in[0] if ctx.quiet_in else "eth0")
        src = hf.neighbour.get(d["iif"])
        d["src"] = src if src is not None else hf.far - 1
        if hook == "INPUT":
            d["dst"] = hf.primary.get(d["iif"]) or (hf.local[0] if hf.local else hf.far)
        else:
            others = [hf.neighbour[lk] for lk in ctx.quiet_out if lk != d["iif"] and lk in hf.neighbour]
            d["dst"] = others[0] if others and hook != "PREROUTING" else hf.far
    else:
        d["src"] = hf.local[0] if hf.local else hf.loopback
        d["dst"] = hf.far
    return d


def _solve(base: dict[str, Any], conds: list[Cons], hf: HostFacts | None = None) -> dict[str, Any]:
    """Pick, field by field, a value satisfying every condition (the rule's own conditions are last).

    The output interface is chosen first; a destination routed out of it (a
    neighbour on its network) is then the first candidate for the destination.
    """
    d = dict(base)
    by_field: dict[str, list[Cons]] = {}
    for c in conds:
        by_field.setdefault(c.field, []).append(c)
    order = sorted(by_field, key=lambda f: (f != "oif", f))
    for fld in order:
        cs = by_field[fld]
        cands: list[Any] = []
        if fld == "dst" and hf is not None and "oif" in by_field:
            oifs = by_field["oif"]
            cands.extend(hf.neighbour[lk] for lk in hf.neighbour if all(c.holds(lk) for c in oifs))
        for c in reversed(cs):
            cands.extend(c.positive)
        cands.append(d.get(fld))
        for c in reversed(cs):
            cands.extend(c.points)
        choice = next((v for v in cands if v is not None and all(c.holds(v) for c in cs)), None)
        if choice is None:
            own = cs[-1]
            choice = own.positive[0] if own.positive else d.get(fld)
        d[fld] = choice
    return d


def _matches(cs: list[Cons], d: dict[str, Any], origin: str) -> bool:
    """Whether a packet may match a rule, judged by the conditions probes model (others assumed to hold)."""
    for c in cs:
        if not _applies(c, origin):
            if c.field == "iif" and origin == "local" and not c.holds(None):
                return False  # no input device on OUTPUT: `-i X` never matches, `! -i X` always does
            continue
        v = d.get(c.field)
        if c.field == "oif" and v is None:
            continue  # the output device is known only after routing: assume it may match
        if not c.holds(v):
            return False
    return True


def _pin(fld: str, v: Any) -> Cons:
    return Cons(fld, lambda x: x == v, (v,), (v,), pin=True)


def _keeps(d: dict[str, Any], keep: list[Cons], origin: str) -> bool:
    return _matches(keep, d, origin)


def _dodge(d: dict[str, Any], cs: list[Cons], keep: list[Cons], origin: str, hf: HostFacts) -> dict[str, Any] | None:
    """d changed in one field so that a rule with conditions cs no longer matches, while every
    condition in `keep` still holds; None if impossible."""
    kept = {c.field for c in keep}
    for c in cs:
        if not _applies(c, origin):
            continue
        if c.field == "oif" and "dst" in kept:
            continue  # the destination decides the output interface, and it is held
        cands: list[Any] = list(c.points)
        if c.field in ("iif", "oif"):
            cands += [lk for lk in [*hf.links, "lo"] if lk not in cands]
        for v in cands:
            if c.holds(v):
                continue
            nd = dict(d)
            nd[c.field] = v
            if c.field == "dst":
                nd["_dst_free"] = False  # the destination now matters more than the output interface
            if _keeps(nd, keep, origin):
                return nd
    return None


def _pass_by(
    d: dict[str, Any], rules: list[Rule], conds: dict[int, list[Cons]], keep: list[Cons], origin: str, hf: HostFacts
) -> dict[str, Any]:
    """Greedily move d out of the way of every rule in `rules` that would end its walk."""
    for r in rules:
        if not _ends_walk(r):
            continue
        cs = conds[id(r)]
        if _matches(cs, d, origin):
            nd = _dodge(d, cs, keep, origin, hf)
            if nd is not None:
                d = nd
    return d


def _into(d: dict[str, Any], cs: list[Cons], keep: list[Cons], origin: str, hf: HostFacts) -> dict[str, Any] | None:
    """d moved so that a rule with conditions cs matches while `keep` still holds; None if impossible."""
    usable = [c for c in cs if _applies(c, origin)]
    if origin == "local" and any(c.field == "iif" and not c.holds(None) for c in cs):
        return None  # `-i X` never matches a locally sent packet
    pins = {k.field: k.points[0] for k in keep if k.pin}
    for c in usable:
        if c.field in pins and not c.holds(pins[c.field]):
            return None  # cheap early answer: a pinned field the rule wants otherwise
        if c.field not in pins and not c.positive and not c.holds(d.get(c.field)):
            return None  # nothing known satisfies it
    nd = _solve(d, keep + usable, hf)
    if not _keeps(nd, keep + usable, origin):
        return None
    if any(c.field == "dst" for c in usable):
        nd["_dst_free"] = False
    return nd


def _finish(d: dict[str, Any], ctx: _Ctx, hook: str) -> Probe | None:
    """Make the fields consistent (ports only for port protocols, -o through routing) and freeze."""
    hf = ctx.hf
    d = dict(d)
    oif = d.pop("oif", None)
    free = d.pop("_dst_free", True)
    if isinstance(oif, str) and free:
        if oif == "lo":
            d["dst"] = hf.loopback if d["origin"] == "local" else (hf.local[0] if hf.local else d["dst"])
        elif oif in hf.neighbour:
            d["dst"] = hf.neighbour[oif]
    if d["origin"] == "ingress" and d["iif"] == "lo":
        # what arrives on lo was sent by this host: a local packet to a local address
        d["origin"], d["iif"] = "local", None
        d["src"] = hf.loopback
        if free:
            d["dst"] = hf.loopback
    proto = d["proto"]
    if proto not in PORT_PROTOS:
        d["sport"] = d["dport"] = None
    else:
        if d["sport"] is None:
            d["sport"] = DEFAULT_SPORT
        if d["dport"] is None:
            d["dport"] = DEFAULT_DPORT
    if proto == ctx.icmp_proto:
        if d["icmp"] is None:
            d["icmp"] = (128, 0) if ctx.family == "ipv6" else (8, 0)
    else:
        d["icmp"] = None
    if proto != "tcp":
        d["tcp_flags"] = None
    if d["origin"] == "local":
        d["iif"] = None
    else:
        d["mark"] = d["uid"] = d["gid"] = None
        if d["iif"] is None:
            d["iif"] = ctx.quiet_in[0] if ctx.quiet_in else "eth0"
        if hf.links and d["iif"] not in hf.links:
            return None
    if d["ct_state"] == "NEW" and d.get("tcp_flags") == "SYN":
        d["tcp_flags"] = None
    fl = str(d.get("tcp_flags") or "").split(",")
    if d["ct_state"] in ("ESTABLISHED", "RELATED") and "SYN" in fl and "ACK" not in fl:
        d["tcp_flags"] = None  # a bare SYN opens a connection; one of an established one carries ACK
    for k in ("src", "dst"):
        v = d[k]
        if not isinstance(v, int) or not 0 <= v <= hf.top:
            return None
    return tuple(d.get(f) for f in FIELDS)


def _origins(hook: str) -> tuple[str, ...]:
    if hook == "OUTPUT":
        return ("local",)
    if hook == "POSTROUTING":
        return ("ingress", "local")
    return ("ingress",)


Cand = tuple[dict[str, Any], list[Cons]]  # a packet being built, and the conditions it must keep


def _rule_probes(
    table: Table,
    rules: list[Rule],
    idx: int,
    path: list[Rule],
    hook: str,
    conds: dict[int, list[Cons]],
    ctx: _Ctx,
    deep: bool = True,
) -> Iterator[tuple[str, list[Cand], list[Cand]]]:
    """(origin, witnesses, variants) for rule rules[idx] reached through one path, per origin of the hook.

    The witness satisfies the path's and the rule's conditions and steps around
    the earlier rules of the chain that would stop it (so it reaches the rule);
    each variant moves one field to a boundary of the rule, and also comes in a
    form that steps around the later rules, and in forms caught by the nearest
    later rules that decide otherwise (so that, when the rule no longer catches
    it, the difference shows instead of being hidden by the next rule).
    Without `deep` (rules that are the same in both versions) only the witness
    and the plain boundary variants are made.
    """
    rule = rules[idx]
    path_conds = [c for r in path for c in conds[id(r)]]
    own = conds[id(rule)]
    before = rules[max(0, idx - SCAN) : idx] if deep else []
    after = rules[idx + 1 : idx + 1 + SCAN]
    later = _later_rules(table, rules, idx, path) if deep else []
    if deep and rule.jump is not None and rule.jump in table.chains and rule.jump != rule.chain:
        # a jump is seen through what the chain it enters decides: those rules come first
        inner = table.chains[rule.jump].rules[:SCAN]
        later = (
            inner + [r for j in inner if j.jump in table.chains for r in table.chains[str(j.jump)].rules[:20]] + later
        )
    hf = ctx.hf
    for origin in _origins(hook):
        keep = [c for c in path_conds + own if _applies(c, origin)]
        if origin == "ingress":
            keep = _mark_providers(path_conds + own, ctx) + keep
        iif_cons = [c for c in keep if c.field == "iif"]
        iif = next(iter(iif_cons[-1].positive), None) if iif_cons else None
        base = _defaults(hook, origin, ctx, iif)
        w = _solve(base, keep, hf)
        w["_dst_free"] = "dst" not in {c.field for c in keep}
        if hook == "INPUT" and not w["_dst_free"]:
            _local_destination(w, keep, hf)
        reach = _pass_by(w, before, conds, keep, origin, hf)
        witnesses: list[Cand] = [(w, keep)]
        if reach != w:
            witnesses.append((reach, keep))
        variants: list[Cand] = []
        for c in own:
            if not _applies(c, origin):
                continue
            for v in c.points:
                d = dict(reach)
                d[c.field] = v
                if c.field == "dst":
                    d["_dst_free"] = False
                if c.field == "icmp":
                    d["proto"] = ctx.icmp_proto
                held = [k for k in keep if k.field != c.field] + [_pin(c.field, v)]
                variants.append((d, held))
                if not deep:
                    continue
                far = _pass_by(d, after, conds, held, origin, hf)
                if far != d:
                    variants.append((far, held))
                # the boundary packet caught by the nearest later rules that decide otherwise
                for nd in _deciders(rule, later, d, held, origin, conds, ctx, per_outcome=1, limit=2, window=60):
                    variants.append((nd, held))
        if not deep:
            yield origin, witnesses, variants
            continue
        # the rule not applying at all (deleted in the other version): what the later rules do instead
        far = _pass_by(reach, after, conds, keep, origin, hf)
        if far != reach:
            variants.append((far, keep))
        # ... and the packet caught by a later rule that decides otherwise (also after returning
        # to the calling chains), so that losing this rule shows in the packet's fate
        for nd in _deciders(rule, later, reach, keep, origin, conds, ctx):
            variants.append((nd, keep))
        yield origin, witnesses, variants


Tracer = Callable[[dict[str, Any]], "dict[str, Any] | None"]


def _refine(
    cand: Cand,
    origin: str,
    rule: Rule,
    hook: str,
    tracer: Tracer,
    rs: Ruleset,
    conds: dict[int, list[Cons]],
    ctx: _Ctx,
    budget: list[int],
) -> list[Probe | None]:
    """Variants of a candidate that get past what the engine says stops it elsewhere.

    A rule can matter only if a packet it catches is not dropped anyway: by a
    filter rule or policy before it (a local packet meets filter OUTPUT before
    nat POSTROUTING) or after it (a DNATed packet meets filter FORWARD).  The
    candidate is traced; when it ends in a DROP that is not the rule's own, a
    variant steps around the dropping rule or into one of the ACCEPT (RETURN,
    jump) rules of that chain before it (for a policy: any of them), while the
    conditions the candidate keeps still hold.  Two rounds; `budget` counts
    the traces left.
    """
    base, keep = cand
    own_drop = _category(rule) == "DROP"
    out: list[Probe | None] = []
    frontier = [base]
    seen: list[dict[str, Any]] = [base]
    for _ in range(2):
        nxt: list[dict[str, Any]] = []
        for cur in frontier:
            if budget[0] <= 0:
                return out
            p = _finish(cur, ctx, hook)
            if p is None:
                continue
            budget[0] -= 1
            doc = tracer(to_packet(p, ctx.family))
            if doc is None:
                continue
            for b in doc.get("branches", [])[:2]:
                res = b["result"]
                if res.get("verdict") != "DROP":
                    continue
                hit = any(
                    s.get("kind") == "rule" and s.get("table") == rule.table and s.get("chain") == rule.chain
                    and s.get("rule") == rule.index and s.get("matched", True) for s in b["steps"]
                )  # fmt: skip
                if hit and own_drop:
                    continue
                for nd in _around(cur, res.get("at") or {}, rule, keep, origin, rs, conds, ctx):
                    if nd not in seen:
                        seen.append(nd)
                        nxt.append(nd)
        out.extend(_finish(x, ctx, hook) for x in nxt)
        frontier = nxt[:4]
        if not frontier:
            break
    return out


def _around(
    d: dict[str, Any],
    at: dict[str, Any],
    rule: Rule,
    keep: list[Cons],
    origin: str,
    rs: Ruleset,
    conds: dict[int, list[Cons]],
    ctx: _Ctx,
) -> list[dict[str, Any]]:
    if at.get("stage"):
        # the routing code dropped it: a loopback or zero source passes only to the limited broadcast
        reason = str(at.get("reason", ""))
        held = any(c.field == "dst" for c in keep)
        if "martian" in reason and not held and ctx.family == "ipv4" and origin == "ingress":
            nd = dict(d)
            nd["dst"], nd["_dst_free"] = 0xFFFFFFFF, False
            return [nd]
        return []
    table = rs.tables.get(str(at.get("table")))
    chain = table.chains.get(str(at.get("chain"))) if table is not None else None
    if chain is None:
        return []
    out: list[dict[str, Any]] = []
    k = at.get("rule")
    candidates = chain.rules
    if isinstance(k, int) and 1 <= k <= len(chain.rules):
        r0 = chain.rules[k - 1]
        if r0 is rule:
            return []
        dodged = _dodge(d, conds[id(r0)], keep, origin, ctx.hf)
        if dodged is not None:
            out.append(dodged)
        candidates = chain.rules[: k - 1]
    for r2 in candidates:
        cat = _category(r2)
        if r2 is rule or not (cat in ("ACCEPT", "RETURN") or cat.startswith("JUMP ") or cat.startswith("NAT ")):
            continue
        into = _into(d, conds[id(r2)], keep, origin, ctx.hf)
        if into is None or into == d or into in out:
            continue
        out.append(into)
        if len(out) >= 4:
            break
    return out


def _local_destination(d: dict[str, Any], keep: list[Cons], hf: HostFacts) -> None:
    """INPUT sees only packets for this host: when the destination the rule asks for is no local
    address, take one that is delivered locally and still meets the rule (a local address, a
    broadcast, the limited broadcast, or 0.0.0.0 from 0.0.0.0, which the kernel takes as one)."""
    if d["dst"] in hf.local or d["dst"] in hf.broadcast:
        return
    dst_conds = [c for c in keep if c.field == "dst"]
    cands = [*hf.local, *hf.broadcast]
    if hf.family == "ipv4":
        cands += [0xFFFFFFFF]
        if all(c.holds(0) for c in keep if c.field == "src"):
            cands.append(0)
    for v in cands:
        if all(c.holds(v) for c in dst_conds):
            d["dst"] = v
            if v == 0:
                d["src"] = 0
            return


def _sweeps(cand: Cand, origin: str, ctx: _Ctx) -> list[Cand]:
    """For a changed rule: its witness with every conntrack state, every input interface and the
    common protocols, where the rule and its path leave them free."""
    d, keep = cand
    free = {"ct_state", "iif", "proto"} - {c.field for c in keep}
    if any(c.field in ("sport", "dport", "icmp", "tcp_flags") for c in keep):
        free.discard("proto")
    out: list[Cand] = []
    values: dict[str, list[Any]] = {
        "ct_state": list(STATES),
        "iif": list(ctx.hf.links) if origin == "ingress" else [],
        "proto": ["tcp", "udp", ctx.icmp_proto],
    }
    for fld in sorted(free):
        for v in values[fld]:
            if d.get(fld) != v:
                nd = dict(d)
                nd[fld] = v
                out.append((nd, keep + [_pin(fld, v)]))
    return out


def _state_sweep(cand: Cand, states: set[str]) -> list[Cand]:
    """A changed rule's variant in each conntrack state the rules name, where the state is free: what
    a deleted rule let through may be caught later only for established or invalid packets."""
    d, keep = cand
    if any(c.field == "ct_state" for c in keep):
        return []
    out: list[Cand] = []
    for st in sorted(states):
        if d.get("ct_state") != st:
            nd = dict(d)
            nd["ct_state"] = st
            out.append((nd, [*keep, _pin("ct_state", st)]))
    return out


def _mark_providers(cs: list[Cons], ctx: _Ctx) -> list[Cons]:
    """An arriving packet has mark 0: to satisfy `-m mark` it must meet a rule that sets the mark
    (`-j MARK`).  The conditions of the first such rule (and of its path) that gives a mark the
    conditions accept."""
    marks = [c for c in cs if c.field == "mark"]
    if not marks or all(c.holds(0) for c in marks):
        return []
    for value, scs in ctx.setters:
        if all(c.holds(value) for c in marks):
            return [c for c in scs if c.field != "mark" and _applies(c, "ingress")]
    return []


def _set_mark_value(rule: Rule) -> int | None:
    """The mark a `-j MARK` rule gives a packet that had none."""
    if rule.target_name != "MARK":
        return None
    for o in rule_opts(rule.text):
        if o.name in ("--set-xmark", "--set-mark", "--or-mark"):
            return _int(o.value.partition("/")[0])
    return None


_CATEGORY: dict[int, tuple[Rule, str]] = {}


def _category(rule: Rule) -> str:
    hit = _CATEGORY.get(id(rule))
    if hit is not None and hit[0] is rule:
        return hit[1]
    cat = _category_of(rule)
    if len(_CATEGORY) > 200_000:
        _CATEGORY.clear()
    _CATEGORY[id(rule)] = (rule, cat)
    return cat


def _category_of(rule: Rule) -> str:
    j = rule.jump
    if j in ("ACCEPT", "DROP", "RETURN", "QUEUE"):
        return str(j)
    if j is not None:
        return "JUMP " + j
    t = rule.target_name or ""
    if t in ("REJECT",):
        return "DROP"
    if t in ("DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP"):
        return "NAT " + rule.text.split(" -j ", 1)[-1]
    return t


def _deciders(
    rule: Rule,
    later: list[Rule],
    d: dict[str, Any],
    keep: list[Cons],
    origin: str,
    conds: dict[int, list[Cons]],
    ctx: _Ctx,
    per_outcome: int = 2,
    limit: int = 8,
    window: int = 4 * SCAN,
) -> list[dict[str, Any]]:
    """d moved into later rules that end the walk with another outcome than `rule` (at most two per
    outcome, nearest first), keeping the conditions of the rule and its path; rules that cannot
    hold together with those are passed over."""
    mine = _category(rule)
    count: dict[str, int] = {}
    out: list[dict[str, Any]] = []
    for r in later[:window]:
        if not _ends_walk(r):
            continue
        cat = _category(r)
        if cat == mine or count.get(cat, 0) >= per_outcome:
            continue
        nd = _into(d, conds[id(r)], keep, origin, ctx.hf)
        if nd is None or nd == d or nd in out:
            continue
        count[cat] = count.get(cat, 0) + 1
        out.append(nd)
        if len(out) >= limit:
            break
    return out


def _later_rules(table: Table, rules: list[Rule], idx: int, path: list[Rule]) -> list[Rule]:
    """The rules a packet may meet after rules[idx] when it does not stop there: the rest of the chain,
    then the rest of each calling chain (innermost first), with the chains they jump to one level deep."""
    seq: list[Rule] = list(rules[idx + 1 : idx + 1 + SCAN])
    for j in reversed(path):
        caller = table.chains.get(j.chain)
        if caller is not None:
            seq.extend(caller.rules[j.index : j.index + SCAN])
    out: list[Rule] = []
    for r in seq:
        out.append(r)
        if r.jump is not None and r.jump in table.chains and r.jump != r.chain:
            out.extend(table.chains[r.jump].rules[:SCAN])
        if len(out) > 2 * SCAN:
            break
    return out


def _applies(c: Cons, origin: str) -> bool:
    if origin == "ingress":
        return c.field not in ("mark", "uid", "gid")  # set by a local socket only
    return c.field != "iif"


def _quiet_links(rulesets: list[Ruleset], hf: HostFacts, flag: str) -> list[str]:
    """The host's links, the ones fewest rules name with `flag` (-i / -o) first."""
    counts = dict.fromkeys(hf.links, 0)
    for rs in rulesets:
        for t in rs.tables.values():
            for c in t.chains.values():
                for r in c.rules:
                    for o in rule_opts(r.text):
                        if o.name == flag and o.value:
                            stem = o.value[:-1] if o.value.endswith("+") else o.value
                            for lk in counts:
                                if lk == stem or (o.value.endswith("+") and lk.startswith(stem)):
                                    counts[lk] += 1
    order = {lk: k for k, lk in enumerate(hf.links)}
    return sorted(hf.links, key=lambda lk: (counts[lk], order[lk]))


def generate_probes(
    rulesets: list[Ruleset],
    host: HostContext,
    ipsets: list[IpSets | None] | None = None,
    max_probes: int = DEFAULT_MAX_PROBES,
    extra_links: Iterable[str] = (),
    tracers: Sequence[Tracer | None] | None = None,
    focus: list[set[int]] | None = None,
    refine_all: bool = False,
    deep_all: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Probe packets (batch-format dicts, sorted) for the rulesets on `host`, and facts about them.

    `tracers`, one per ruleset (packet dict -> trace JSON, on that ruleset and
    this host), let probes be refined around what drops them elsewhere (see
    _refine): every probe of a rule in `focus` (per ruleset, ids of the rules
    that differ between the two versions), and with `refine_all` (the hosts
    differ, so any rule may behave differently) the witnesses of the others.
    The costly variants (stepping around earlier and later rules, caught by
    later rules) are made for the rules in `focus`, or for every rule when
    `deep_all` (and no focus is given).
    """
    family = rulesets[0].family if rulesets else "ipv4"
    hf = host_facts(host, family)
    for lk in extra_links:
        if lk not in hf.links:
            hf.links.append(lk)
    ctx = _Ctx(hf, family, "icmpv6" if family == "ipv6" else "icmp")
    ctx.quiet_in = _quiet_links(rulesets, hf, "-i")
    ctx.quiet_out = _quiet_links(rulesets, hf, "-o")
    tiers: list[list[list[Probe | None]]] = [[], [], []]  # tier -> groups (round-robin within a tier)
    witnesses: list[Probe | None] = []
    sets = ipsets or [None] * len(rulesets)
    mentioned_ports: set[int] = set()
    mentioned_protos: set[str] = set()
    mentioned_states: set[str] = set()
    refined: list[Probe | None] = []
    refined_focus: list[Probe | None] = []
    focus_probes: list[Probe | None] = []
    todo: list[tuple[Any, ...]] = []
    todo_focus: list[tuple[Any, ...]] = []
    setters: dict[int, list[tuple[int, list[Cons]]]] = {}
    budget = [4 * max_probes]
    for k, (rs, ips) in enumerate(zip(rulesets, sets, strict=False)):
        tracer = tracers[k] if tracers is not None and k < len(tracers) else None
        hot = focus[k] if focus is not None and k < len(focus) else set()
        conds: dict[int, list[Cons]] = {}
        for t in rs.tables.values():
            for c in t.chains.values():
                for r in c.rules:
                    cs = rule_conditions(r, hf, ips)
                    conds[id(r)] = cs
                    for x in cs:
                        if x.field in ("dport", "sport"):
                            mentioned_ports.update(p for p in x.points[:3])
                        elif x.field == "proto":
                            mentioned_protos.update(str(p) for p in x.points)
                        elif x.field == "ct_state":
                            mentioned_states.update(str(p) for p in x.positive)
        paths = entry_paths(rs)
        ctx.setters = []
        for tname, t in rs.tables.items():
            for cname, chain in t.chains.items():
                for r in chain.rules:
                    value = _set_mark_value(r)
                    if value is None:
                        continue
                    for _hook, path in paths.get((tname, cname), [])[:1]:
                        ctx.setters.append((value, [c for p in path for c in conds[id(p)]] + conds[id(r)]))
        setters[id(rs)] = ctx.setters
        for tname, t in rs.tables.items():
            for cname, chain in t.chains.items():
                ways = paths.get((tname, cname), [])
                for idx, r in enumerate(chain.rules):
                    for hook, path in _paths_for(r, ways, conds, ctx):
                        deep = id(r) in hot or (deep_all and focus is None)
                        for origin, ws, vs in _rule_probes(t, chain.rules, idx, path, hook, conds, ctx, deep):
                            if id(r) in hot:
                                vs = vs + _sweeps(ws[-1], origin, ctx)
                                vs = vs + [x for c in vs[:64] for x in _state_sweep(c, mentioned_states)]
                                focus_probes.extend(_finish(d, ctx, hook) for d, _ in ws + vs)
                            else:
                                witnesses.extend(_finish(d, ctx, hook) for d, _ in ws)
                                tiers[1].append([_finish(d, ctx, hook) for d, _ in vs])
                            if tracer is None:
                                continue
                            if id(r) in hot:
                                todo_focus.extend((c, origin, r, hook, tracer, rs, conds) for c in ws + vs)
                            elif refine_all:
                                todo.append((ws[-1], origin, r, hook, tracer, rs, conds))
    # refinement: every candidate of a changed rule first, then the other rules' witnesses
    for cand, origin, r, hook, tracer, rs, conds in todo_focus:
        ctx.setters = setters[id(rs)]
        refined_focus.extend(_refine(cand, origin, r, hook, tracer, rs, conds, ctx, budget))
    for cand, origin, r, hook, tracer, rs, conds in todo:
        ctx.setters = setters[id(rs)]
        refined.extend(_refine(cand, origin, r, hook, tracer, rs, conds, ctx, budget))
    # plain packets: every origin and interface, every protocol, to local / far / neighbours
    protos = ["tcp", "udp", ctx.icmp_proto] + sorted(p for p in mentioned_protos if p not in ("tcp", "udp"))
    grid: list[Probe | None] = []
    origins: list[tuple[str, str | None]] = [("ingress", lk) for lk in hf.links] + [("local", None)]
    dsts = [*hf.local[:2], hf.far, *sorted(hf.neighbour.values()), *hf.broadcast[:1]]
    for origin, iif in origins:
        hook = "PREROUTING" if origin == "ingress" else "OUTPUT"
        for proto in protos:
            for dst in dsts:
                d = _defaults(hook, origin, ctx, iif)
                d["proto"], d["dst"] = proto, dst
                grid.append(_finish(d, ctx, hook))
    tiers[0].append(focus_probes + refined_focus + witnesses + refined)
    tiers[0].append(grid)
    ports_grid: list[Probe | None] = []
    for port in sorted(mentioned_ports):
        for origin, iif in origins:
            hook = "PREROUTING" if origin == "ingress" else "OUTPUT"
            for proto in ("tcp", "udp"):
                for dst in (*hf.local[:1], hf.far):
                    d = _defaults(hook, origin, ctx, iif)
                    d["proto"], d["dst"], d["dport"] = proto, dst, port
                    ports_grid.append(_finish(d, ctx, hook))
    tiers[2].append(ports_grid)
    chosen: dict[Probe, None] = {}
    total = 0
    truncated = False
    for tier in tiers:
        for p in _round_robin(tier):
            if p is None or p in chosen:
                continue
            total += 1
            if len(chosen) >= max_probes:
                truncated = True
                continue
            chosen[p] = None
    probes = sorted(chosen, key=_sort_key)
    info = {"count": len(probes), "candidates": total, "truncated": truncated, "max": max_probes}
    return [to_packet(p, family) for p in probes], info


def _round_robin(groups: list[list[Probe | None]]) -> Iterator[Probe | None]:
    if len(groups) <= 2:
        for g in groups:
            yield from g
        return
    k = 0
    while True:
        any_left = False
        for g in groups:
            if k < len(g):
                any_left = True
                yield g[k]
        if not any_left:
            return
        k += 1


def _sort_key(p: Probe) -> tuple[Any, ...]:
    return tuple((0, "") if v is None else (1, v) if isinstance(v, (int, str)) else (2, str(v)) for v in p)


def to_packet(p: Probe, family: str) -> dict[str, Any]:
    """A probe as a batch-format packet dict (Contract 3), defaults left out."""
    d = dict(zip(FIELDS, p, strict=True))
    conv = ipaddress.IPv6Address if family == "ipv6" else ipaddress.IPv4Address
    out: dict[str, Any] = {"origin": d["origin"], "proto": d["proto"]}
    out["src"] = str(conv(d["src"]))
    out["dst"] = str(conv(d["dst"]))
    if d["sport"] is not None:
        out["sport"] = d["sport"]
    if d["dport"] is not None:
        out["dport"] = d["dport"]
    if d["iif"] is not None:
        out["iif"] = d["iif"]
    if d["icmp"] is not None:
        out["icmp_type"] = f"{d['icmp'][0]}/{d['icmp'][1]}"
    if d["ct_state"] not in (None, "NEW"):
        out["ct_state"] = d["ct_state"]
    if d["tcp_flags"] is not None:
        out["tcp_flags"] = "" if d["tcp_flags"] == "NONE" else d["tcp_flags"]
    for k in ("mark", "uid", "gid", "length", "ttl"):
        if d[k] is not None:
            out[k] = d[k]
    return out
