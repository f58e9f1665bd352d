"""Matches decided from the packet and the host: addrtype, comment, iprange,
statistic, physdev, pkttype, ttl/hl, length, mac, owner, tos/dscp."""

from __future__ import annotations

import ipaddress
import math
from typing import TYPE_CHECKING

from nftrace.ruleset.model import Chance, MatchOutcome, MatchSpec, Option, Unknown
from nftrace.ruleset.registry import FI, VI, F, Opts, ParseCtx, V, match
from nftrace.ruleset.values import addr_text, parse_host, range_text, save_string, uint, uint_range

if TYPE_CHECKING:
    from nftrace.engine.env import Env
    from nftrace.engine.packet import Packet

ADDR_TYPES = (
    "UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST", "BLACKHOLE", "UNREACHABLE", "PROHIBIT",
    "THROW", "NAT", "XRESOLVE",
)  # fmt: skip

PRE, INP, FWD, OUT, POST = "PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"


def _bang(neg: bool) -> str:
    return "! " if neg else ""


class Always(MatchSpec):
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        return True


def _quick_comment(c: str, ctx: ParseCtx) -> MatchSpec | None:
    if len(c) > 63:
        return None  # perhaps over 255 bytes: parse_comment says
    return Always("-m comment --comment " + save_string(c))


@match("comment", options={"comment": V}, why="always matches", quick=("comment", _quick_comment))
def parse_comment(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    # the rule parser lets --comment (one value) through at most once, and no other option
    if not items:
        raise ctx.error('comment: option "--comment" must be specified')
    c = items[0].values[0]
    if len(c) > 63 and len(c.encode("utf-8", "surrogateescape")) > 255:  # the file's own bytes
        raise ctx.error("comment: --comment is longer than 255 bytes")
    return Always(f"-m comment --comment {save_string(c)}")


class AddrtypeMatch(MatchSpec):
    __slots__ = ("src", "sneg", "dst", "dneg", "lim_in", "lim_out", "text")

    def __init__(
        self,
        src: frozenset[str] | None,
        sneg: bool,
        dst: frozenset[str] | None,
        dneg: bool,
        lim_in: bool,
        lim_out: bool,
        text: str,
    ) -> None:
        self.src, self.sneg, self.dst, self.dneg = src, sneg, dst, dneg
        self.lim_in, self.lim_out, self.text = lim_in, lim_out, text
        if lim_in:
            self.hooks = frozenset({PRE, INP, FWD})
        elif lim_out:
            self.hooks = frozenset({FWD, OUT, POST})

    def _dev(self, pkt: Packet) -> str | None:
        if self.lim_in:
            return pkt.iif
        if self.lim_out:
            return pkt.oif
        return None

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        if env.no_host:
            return Unknown(f"{self.text}: the host's addresses are not known (give --addrs/--routes or --local-addr)")
        dev = self._dev(pkt)
        if self.src is not None:
            t = env.fib.addr_type(pkt.src, dev)
            if (t in self.src) == self.sneg:
                return False
        if self.dst is not None:
            t = env.fib.addr_type(pkt.dst, dev)
            if (t in self.dst) == self.dneg:
                return False
        return True

    def why_not(self, pkt: Packet, env: Env) -> str:
        dev = self._dev(pkt)
        return (
            f"{self.text} (source {pkt.src} is {env.fib.addr_type(pkt.src, dev)}, "
            f"destination {pkt.dst} is {env.fib.addr_type(pkt.dst, dev)})"
        )


@match(
    "addrtype",
    options={"src-type": VI, "dst-type": VI, "limit-iface-in": F, "limit-iface-out": F},
    exactness="host",
    why="address types from the host's local/broadcast addresses and routes",
)
def parse_addrtype(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "addrtype")
    s = o.get("src-type")
    d = o.get("dst-type")
    lin = o.has("limit-iface-in")
    lout = o.has("limit-iface-out")
    if lin and lout:
        raise ctx.error("addrtype: --limit-iface-in and --limit-iface-out exclude each other")
    if s is None and d is None:
        raise ctx.error("addrtype: you must specify --src-type or --dst-type")

    def types(opt: Option) -> frozenset[str]:
        out = set()
        for t in opt.values[0].split(","):
            if t.upper() not in ADDR_TYPES:
                raise ctx.error(f"addrtype: unknown address type {t!r}")
            out.add(t.upper())
        if ctx.family == "ipv6":
            bad = out & {"BROADCAST", "BLACKHOLE", "PROHIBIT"}
            if bad:
                raise ctx.error(f"addrtype: ip6tables does not support {', '.join(sorted(bad))}")
        return frozenset(out)

    parts = ["-m addrtype"]
    st = types(s) if s else None
    dt = types(d) if d else None
    if s is not None and st is not None:
        parts.append(f"{_bang(s.negated)}--src-type {','.join(t for t in ADDR_TYPES if t in st)}")
    if d is not None and dt is not None:
        parts.append(f"{_bang(d.negated)}--dst-type {','.join(t for t in ADDR_TYPES if t in dt)}")
    if lin:
        parts.append("--limit-iface-in")
    if lout:
        parts.append("--limit-iface-out")
    return AddrtypeMatch(st, bool(s and s.negated), dt, bool(d and d.negated), lin, lout, " ".join(parts))


class IprangeMatch(MatchSpec):
    __slots__ = ("src", "sneg", "dst", "dneg", "text")

    def __init__(
        self, src: tuple[int, int] | None, sneg: bool, dst: tuple[int, int] | None, dneg: bool, text: str
    ) -> None:
        self.src, self.sneg, self.dst, self.dneg, self.text = src, sneg, dst, dneg, text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        if self.src is not None and (self.src[0] <= pkt.src_n <= self.src[1]) == self.sneg:
            return False
        if self.dst is not None and (self.dst[0] <= pkt.dst_n <= self.dst[1]) == self.dneg:
            return False
        return True

    def why_not(self, pkt: Packet, env: Env) -> str:
        return f"{self.text} ({pkt.src} > {pkt.dst})"


@match("iprange", options={"src-range": VI, "dst-range": VI}, why="address ranges")
def parse_iprange(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "iprange")
    s = o.get("src-range")
    d = o.get("dst-range")
    if s is None and d is None:
        raise ctx.error("iprange: --src-range or --dst-range is required")

    def rng(opt: Option) -> tuple[int, int]:
        a, dash, b = opt.values[0].partition("-")
        lo = parse_host(a, ctx.family)
        hi = parse_host(b, ctx.family) if dash else lo
        if lo is None or hi is None:
            raise ctx.error(f"iprange: {opt.values[0]!r} is not an {ctx.family} address range")
        return lo, hi

    parts = ["-m iprange"]
    sr = rng(s) if s else None
    dr = rng(d) if d else None
    if s is not None and sr is not None:
        parts.append(f"{_bang(s.negated)}--src-range {addr_text(sr[0], ctx.family)}-{addr_text(sr[1], ctx.family)}")
    if d is not None and dr is not None:
        parts.append(f"{_bang(d.negated)}--dst-range {addr_text(dr[0], ctx.family)}-{addr_text(dr[1], ctx.family)}")
    return IprangeMatch(sr, bool(s and s.negated), dr, bool(d and d.negated), " ".join(parts))


def kernel_probability(p: float) -> float:
    """The probability the kernel really applies: userspace stores lround(p * 2^31); the kernel
    compares (random & 0x7fffffff) < stored, so P = stored / 2^31."""
    return _stored_probability(p) / 0x80000000


def _stored_probability(p: float) -> int:
    return int(math.floor(p * 0x80000000 + 0.5))


class StatisticMatch(MatchSpec):
    __slots__ = ("p", "neg", "text", "label")

    def __init__(self, p: float, neg: bool, text: str, label: str) -> None:
        self.p, self.neg, self.text, self.label = p, neg, text, label

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        p = 1.0 - self.p if self.neg else self.p
        if p >= 1.0:
            return True
        if p <= 0.0:
            return False
        return Chance(p, self.label)


@match(
    "statistic",
    options={"mode": V, "probability": VI, "every": VI, "packet": V},
    why="random: a branch per outcome with the kernel's quantised probability; nth: its long-run share",
)
def parse_statistic(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "statistic")
    mode = o.value("mode")
    prob = o.get("probability")
    every = o.get("every")
    pkt = o.value("packet")
    if mode is None:
        raise ctx.error('statistic: option "--mode" must be specified')
    if mode not in ("random", "nth"):
        raise ctx.error(f"statistic: bad mode {mode!r} (random or nth)")
    if every is not None and pkt is None:
        raise ctx.error('statistic: option "--every" also requires "--packet"')
    if mode == "random":
        if prob is None or every is not None or pkt is not None:
            raise ctx.error("statistic: --mode random takes --probability (and not --every/--packet)")
        try:
            p = float(prob.values[0])
        except ValueError:
            raise ctx.error(f"statistic: invalid probability {prob.values[0]!r}") from None
        if not 0.0 <= p <= 1.0:
            raise ctx.error("statistic: --probability must be between 0 and 1")
        stored = _stored_probability(p)
        shown = f"{stored / 0x80000000:.11f}"
        text = f"-m statistic --mode random {_bang(prob.negated)}--probability {shown}"
        return StatisticMatch(stored / 0x80000000, prob.negated, text, "random")
    if every is None or prob is not None:
        raise ctx.error("statistic: --mode nth takes --every and --packet (and not --probability)")
    n = uint(ctx, "statistic", "every", every.values[0], 1)
    k = uint(ctx, "statistic", "packet", pkt or "0")
    if k > n - 1:
        raise ctx.error("statistic: the --packet p must be 0 <= p <= n-1")
    text = f"-m statistic --mode nth {_bang(every.negated)}--every {n} --packet {k}"
    return StatisticMatch(1.0 / n, every.negated, text, f"nth: 1 of every {n} packets (share over time)")


class PhysdevMatch(MatchSpec):
    __slots__ = ("opts", "text")

    def __init__(self, opts: list[tuple[str, bool, str | None]], text: str) -> None:
        self.opts = opts
        self.text = text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        if not pkt.bridged:
            # Not a bridged packet: matches only when every option given is negated.
            return all(neg for _, neg, _ in self.opts)
        for kind, neg, val in self.opts:
            hit: bool
            if kind == "is-bridged":
                hit = pkt.bridged
            elif kind in ("is-in", "in"):
                dev = pkt.physdev_in
                if dev is None:
                    return Unknown(f"{self.text}: the bridge port the packet arrived on is not known")
                hit = kind == "is-in" or _ifmatch(val or "", dev)
            else:
                dev = pkt.physdev_out
                if dev is None:
                    return Unknown(f"{self.text}: the bridge port the packet leaves by is not known")
                hit = kind == "is-out" or _ifmatch(val or "", dev)
            if hit == neg:
                return False
        return True


def _ifmatch(pattern: str, dev: str) -> bool:
    return dev.startswith(pattern[:-1]) if pattern.endswith("+") else dev == pattern


@match(
    "physdev",
    options={"physdev-in": VI, "physdev-out": VI, "physdev-is-in": FI, "physdev-is-out": FI, "physdev-is-bridged": FI},
    exactness="packet",
    why="bridge ports of bridged packets (br_netfilter); a packet that is not bridged matches only negated options",
)
def parse_physdev(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    if not items:
        raise ctx.error("physdev: at least one option is required")
    by = {i.name: i for i in items}
    opts: list[tuple[str, bool, str | None]] = []
    parts = ["-m physdev"]
    for name in ("physdev-is-in", "physdev-in", "physdev-is-out", "physdev-out", "physdev-is-bridged"):
        i = by.get(name)
        if i is None:
            continue
        val = i.values[0] if i.values else None
        if val is not None and len(val) > 15:
            raise ctx.error(f"physdev: interface name {val!r} is longer than 15 characters")
        opts.append((name[8:], i.negated, val))
        parts.append(f"{_bang(i.negated)}--{name}" + (f" {val}" if val is not None else ""))
    return PhysdevMatch(opts, " ".join(parts))


class PkttypeMatch(MatchSpec):
    __slots__ = ("type", "neg", "text")

    def __init__(self, t: str, neg: bool, text: str) -> None:
        self.type, self.neg, self.text = t, neg, text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        return (packet_type(pkt, env) == self.type) != self.neg

    def why_not(self, pkt: Packet, env: Env) -> str:
        return f"{self.text} (packet is {packet_type(pkt, env)})"


def packet_type(pkt: Packet, env: Env) -> str:
    a = ipaddress.ip_address(pkt.dst)
    if a.is_multicast:
        return "multicast"
    if pkt.family == "ipv4" and (pkt.dst == "255.255.255.255" or env.fib.addr_type(pkt.dst) == "BROADCAST"):
        return "broadcast"
    return "unicast"


@match(
    "pkttype",
    options={"pkt-type": VI},
    exactness="host",
    why="unicast/broadcast/multicast from the destination and the host's broadcast addresses",
)
def parse_pkttype(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "pkttype")
    t = o.get("pkt-type")
    if t is None:
        raise ctx.error('pkttype: option "--pkt-type" must be specified')
    v = t.values[0].lower()
    names = {"unicast": "unicast", "host": "unicast", "broadcast": "broadcast", "multicast": "multicast",
             "otherhost": "otherhost"}  # fmt: skip
    if v not in names:
        raise ctx.error(f"pkttype: bad packet type {t.values[0]!r}")
    return PkttypeMatch(names[v], t.negated, f"-m pkttype {_bang(t.negated)}--pkt-type {names[v]}")


class CmpMatch(MatchSpec):
    """ttl/hl comparisons and length ranges."""

    __slots__ = ("field", "op", "lo", "hi", "neg", "text")

    def __init__(self, field: str, op: str, lo: int, hi: int, neg: bool, text: str) -> None:
        self.field, self.op, self.lo, self.hi, self.neg, self.text = field, op, lo, hi, neg, text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        v = pkt.ttl if self.field == "ttl" else pkt.length
        if v is None:
            return Unknown(f"{self.text}: the packet's length is not known (give --length)")
        if self.op == "eq":
            hit = v == self.lo
        elif self.op == "gt":
            hit = v > self.lo
        elif self.op == "lt":
            hit = v < self.lo
        else:
            hit = self.lo <= v <= self.hi
        return hit != self.neg

    def why_not(self, pkt: Packet, env: Env) -> str:
        v = pkt.ttl if self.field == "ttl" else pkt.length
        return f"{self.text} ({self.field} is {v})"


def _ttl(name: str, items: list[Option], ctx: ParseCtx) -> MatchSpec:
    pre = "ttl" if name == "ttl" else "hl"
    o = Opts(items, ctx, name)
    op_name = o.require_one(f"{pre}-eq", f"{pre}-gt", f"{pre}-lt")
    opt = o.get(op_name)
    assert opt is not None
    op = op_name[-2:]
    v = uint(ctx, name, opt.name, opt.values[0], 0, 255)
    return CmpMatch("ttl", op, v, v, opt.negated, f"-m {name} {_bang(opt.negated)}--{opt.name} {v}")


@match("ttl", options={"ttl-eq": VI, "ttl-gt": V, "ttl-lt": V}, family="ipv4", why="TTL of the packet")
def parse_ttl(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    return _ttl("ttl", items, ctx)


@match("hl", options={"hl-eq": VI, "hl-gt": V, "hl-lt": V}, family="ipv6", why="hop limit of the packet")
def parse_hl(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    return _ttl("hl", items, ctx)


@match("length", options={"length": VI}, exactness="packet", why="the packet's length (give --length)")
def parse_length(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "length")
    opt = o.get("length")
    if opt is None:
        raise ctx.error('length: option "--length" must be specified')
    lo, hi = uint_range(ctx, "length", "length", opt.values[0], 0xFFFF)
    text = f"-m length {_bang(opt.negated)}--length {range_text(lo, hi)}"
    return CmpMatch("length", "range", lo, hi, opt.negated, text)


class MacMatch(MatchSpec):
    __slots__ = ("mac", "neg", "text")

    hooks: frozenset[str] | None = frozenset({PRE, INP, FWD})

    def __init__(self, mac: str, neg: bool, text: str) -> None:
        self.mac, self.neg, self.text = mac, neg, text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        if env.hook not in ("PREROUTING", "INPUT", "FORWARD"):
            return False
        if pkt.iif == "lo":
            return False
        if pkt.src_mac is None:
            return Unknown(f"{self.text}: the sender's MAC address is not known")
        return (pkt.src_mac.lower() == self.mac) != self.neg


def parse_mac_address(text: str) -> str | None:
    parts = text.split(":")
    if len(parts) != 6:
        return None
    out = []
    for p in parts:
        if not 1 <= len(p) <= 2 or any(c not in "0123456789abcdefABCDEF" for c in p):
            return None
        out.append(f"{int(p, 16):02x}")
    return ":".join(out)


@match(
    "mac",
    options={"mac-source": VI},
    exactness="packet",
    why="the sender's MAC address; never matches locally generated packets",
)
def parse_mac(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "mac")
    opt = o.get("mac-source")
    if opt is None:
        raise ctx.error('mac: option "--mac-source" must be specified')
    mac = parse_mac_address(opt.values[0])
    if mac is None:
        raise ctx.error(f"mac: invalid MAC address {opt.values[0]!r}")
    return MacMatch(mac, opt.negated, f"-m mac {_bang(opt.negated)}--mac-source {mac}")


class OwnerMatch(MatchSpec):
    __slots__ = ("opts", "text")

    hooks: frozenset[str] | None = frozenset({OUT, POST})

    def __init__(self, opts: list[tuple[str, bool, tuple[int, int] | None]], text: str) -> None:
        self.opts, self.text = opts, text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        if env.origin != "local" or env.hook not in ("OUTPUT", "POSTROUTING"):
            # No local socket: owner matches only when every option is negated.
            return all(neg for _, neg, _ in self.opts)
        for kind, neg, rng in self.opts:
            if kind == "socket-exists":
                hit = True
            elif kind == "suppl-groups":
                continue
            else:
                v = pkt.uid if kind == "uid" else pkt.gid
                if v is None:
                    return Unknown(f"{self.text}: the sending process's {kind} is not known (give --uid/--gid)")
                assert rng is not None
                hit = rng[0] <= v <= rng[1]
            if hit == neg:
                return False
        return True


def _owner_id(ctx: ParseCtx, opt: str, text: str) -> tuple[int, int]:
    a, dash, b = text.partition("-")
    if a.isdigit():
        lo = uint(ctx, "owner", opt, a, 0, 0xFFFFFFFE)
        hi = uint(ctx, "owner", opt, b, 0, 0xFFFFFFFE) if dash else lo
        if hi < lo:
            raise ctx.error(f"owner: --{opt}: invalid range {text!r}")
        return lo, hi
    try:
        import grp
        import pwd

        n = pwd.getpwnam(text).pw_uid if opt == "uid-owner" else grp.getgrnam(text).gr_gid
    except (KeyError, ImportError, ValueError):  # ValueError: a NUL or an undecodable byte in the name
        if text == "root":
            return 0, 0
        raise ctx.error(f"owner: --{opt}: unknown user/group {text!r} (on the machine running nftrace)") from None
    return n, n


@match(
    "owner",
    options={"uid-owner": VI, "gid-owner": VI, "socket-exists": FI, "suppl-groups": F},
    exactness="partial",
    why="local packets: exact when --uid/--gid are given; forwarded packets have no socket",
)
def parse_owner(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    opts: list[tuple[str, bool, tuple[int, int] | None]] = []
    seen_gid = False
    by: dict[str, tuple[bool, tuple[int, int] | None]] = {}
    for i in items:
        if i.name in ("uid-owner", "gid-owner"):
            by[i.name] = (i.negated, _owner_id(ctx, i.name, i.values[0]))
            seen_gid = seen_gid or i.name == "gid-owner"
        elif i.name == "socket-exists":
            by[i.name] = (i.negated, None)
        elif i.name == "suppl-groups":
            if not seen_gid:
                raise ctx.error("owner: --suppl-groups requires --gid-owner before it")
            by[i.name] = (False, None)
    if not by or set(by) == {"suppl-groups"}:
        raise ctx.error("owner: at least one of --uid-owner, --gid-owner, --socket-exists is required")
    parts = ["-m owner"]
    for name in ("socket-exists", "uid-owner", "gid-owner", "suppl-groups"):
        if name not in by:
            continue
        neg, rng = by[name]
        opts.append((name.split("-")[0] if name.endswith("owner") else name, neg, rng))
        shown = "" if rng is None else " " + (str(rng[0]) if rng[0] == rng[1] else f"{rng[0]}-{rng[1]}")
        parts.append(f"{_bang(neg)}--{name}{shown}")
    return OwnerMatch(opts, " ".join(parts))


class TosMatch(MatchSpec):
    __slots__ = ("value", "mask", "shift", "neg", "text")

    def __init__(self, value: int, mask: int, shift: int, neg: bool, text: str) -> None:
        self.value, self.mask, self.shift, self.neg, self.text = value, mask, shift, neg, text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        return (((pkt.tos >> self.shift) & self.mask) == self.value) != self.neg


DSCP_CLASSES = {f"CS{i}": i * 8 for i in range(8)} | {"EF": 46, "BE": 0}
DSCP_CLASSES |= {f"AF{a}{b}": a * 8 + b * 2 for a in range(1, 5) for b in range(1, 4)}


def dscp_value(ctx: ParseCtx, ext: str, o: Opts, num: str, cls: str) -> tuple[int, bool]:
    which = o.require_one(num, cls)
    opt = o.get(which)
    assert opt is not None
    if which == num:
        return uint(ctx, ext, num, opt.values[0], 0, 0x3F), opt.negated
    c = opt.values[0].upper()
    if c not in DSCP_CLASSES:
        raise ctx.error(f"{ext}: unknown DSCP class {opt.values[0]!r}")
    return DSCP_CLASSES[c], opt.negated


@match("dscp", options={"dscp": VI, "dscp-class": VI}, why="DSCP bits of the packet")
def parse_dscp(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "dscp")
    v, neg = dscp_value(ctx, "dscp", o, "dscp", "dscp-class")
    return TosMatch(v, 0x3F, 2, neg, f"-m dscp {_bang(neg)}--dscp {v:#04x}")


TOS_NAMES = {"Minimize-Delay": 0x10, "Maximize-Throughput": 0x08, "Maximize-Reliability": 0x04,
             "Minimize-Cost": 0x02, "Normal-Service": 0x00}  # fmt: skip


def tos_value_mask(ctx: ParseCtx, ext: str, opt: str, text: str, name_mask: int = 0x3F) -> tuple[int, int]:
    for n, named in TOS_NAMES.items():
        if n.lower() == text.lower():
            return named, name_mask
    v, slash, m = text.partition("/")
    val = uint(ctx, ext, opt, v, 0, 0xFF)
    mask = uint(ctx, ext, opt, m, 0, 0xFF) if slash else 0xFF
    return val, mask


@match("tos", options={"tos": VI}, why="TOS bits of the packet")
def parse_tos(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "tos")
    t = o.get("tos")
    if t is None:
        raise ctx.error('tos: option "--tos" must be specified')
    val, mask = tos_value_mask(ctx, "tos", "tos", t.values[0])
    return TosMatch(val, mask, 0, t.negated, f"-m tos {_bang(t.negated)}--tos {val:#04x}/{mask:#04x}")
