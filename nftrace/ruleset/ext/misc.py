"""Matches decided from the packet and the host: addrtype, comment, iprange,
statistic, physdev, pkttype, ttl/hl, length, mac, owner, tos/dscp."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from nftrace.ruleset.model import Chance, MatchOutcome, MatchSpec, Option, Unknown
from nftrace.ruleset.registry import Opts, ParseCtx, int_value, match

if TYPE_CHECKING:
    from nftrace.engine.env import Env
    from nftrace.engine.packet import Packet

ADDR_TYPES = (
    "UNSPEC",
    "UNICAST",
    "LOCAL",
    "BROADCAST",
    "ANYCAST",
    "MULTICAST",
    "BLACKHOLE",
    "UNREACHABLE",
    "PROHIBIT",
    "THROW",
    "NAT",
    "XRESOLVE",
)


class Always(MatchSpec):
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        return True


@match("comment")
def parse_comment(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "comment")
    c = o.value("comment")
    o.done()
    if c is None:
        raise ctx.error("comment: --comment is required")
    if len(c) > 255:
        raise ctx.error("comment: --comment is longer than 255 characters")
    return Always(f'-m comment --comment "{c}"')


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


@match("addrtype")
def parse_addrtype(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "addrtype")
    s = o.get("src-type")
    d = o.get("dst-type")
    lin = o.flag("limit-iface-in")
    lout = o.flag("limit-iface-out")
    o.done()
    if s is None and d is None:
        raise ctx.error("addrtype: --src-type or --dst-type is required")
    if lin and lout:
        raise ctx.error("addrtype: --limit-iface-in and --limit-iface-out exclude each other")

    def types(opt: Option) -> frozenset[str]:
        out = set()
        for t in opt.values[0].upper().split(","):
            if t not in ADDR_TYPES:
                raise ctx.error(f"addrtype: unknown type {t!r}")
            out.add(t)
        return frozenset(out)

    parts = ["-m addrtype"]
    if s is not None:
        parts.append(("! " if s.negated else "") + f"--src-type {s.values[0]}")
    if d is not None:
        parts.append(("! " if d.negated else "") + f"--dst-type {d.values[0]}")
    if lin:
        parts.append("--limit-iface-in")
    if lout:
        parts.append("--limit-iface-out")
    return AddrtypeMatch(
        types(s) if s else None,
        bool(s and s.negated),
        types(d) if d else None,
        bool(d and d.negated),
        lin,
        lout,
        " ".join(parts),
    )


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


@match("iprange")
def parse_iprange(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "iprange")
    s = o.get("src-range")
    d = o.get("dst-range")
    o.done()
    if s is None and d is None:
        raise ctx.error("iprange: --src-range or --dst-range is required")

    def rng(opt: Option) -> tuple[int, int]:
        a, _, b = opt.values[0].partition("-")
        try:
            lo = ipaddress.ip_address(a)
            hi = ipaddress.ip_address(b or a)
        except ValueError:
            raise ctx.error(f"iprange: invalid range {opt.values[0]!r}") from None
        if (lo.version == 4) != (ctx.family == "ipv4") or lo.version != hi.version:
            raise ctx.error(f"iprange: {opt.values[0]!r} is not an {ctx.family} range")
        return int(lo), int(hi)

    parts = ["-m iprange"]
    if s is not None:
        parts.append(("! " if s.negated else "") + f"--src-range {s.values[0]}")
    if d is not None:
        parts.append(("! " if d.negated else "") + f"--dst-range {d.values[0]}")
    return IprangeMatch(
        rng(s) if s else None, bool(s and s.negated), rng(d) if d else None, bool(d and d.negated), " ".join(parts)
    )


def kernel_probability(p: float) -> float:
    """The probability the kernel really applies: userspace stores lround(p * 2^31) in 31 bits."""
    n = round(p * 0x80000000)
    n = max(0, min(n, 0x7FFFFFFF)) if p < 1.0 else 0x80000000
    # the kernel compares (random & 0x7fffffff) < n, so P = n / 2^31
    return n / 0x80000000


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


@match("statistic")
def parse_statistic(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "statistic")
    mode = o.value("mode")
    prob = o.get("probability")
    every = o.get("every")
    pkt = o.value("packet")
    o.done()
    if mode == "random":
        if prob is None or every is not None:
            raise ctx.error("statistic: --mode random needs --probability (and no --every)")
        try:
            p = float(prob.values[0])
        except ValueError:
            raise ctx.error(f"statistic: invalid probability {prob.values[0]!r}") from None
        if not 0.0 <= p <= 1.0:
            raise ctx.error("statistic: probability must be between 0 and 1")
        kp = kernel_probability(p)
        text = f"-m statistic --mode random {'! ' if prob.negated else ''}--probability {prob.values[0]}"
        return StatisticMatch(kp, prob.negated, text, "random")
    if mode == "nth":
        if every is None or prob is not None:
            raise ctx.error("statistic: --mode nth needs --every (and no --probability)")
        n = int_value(ctx, "statistic", "every", every.values[0], 1)
        k = int_value(ctx, "statistic", "packet", pkt, 0, n - 1) if pkt else 0
        text = f"-m statistic --mode nth {'! ' if every.negated else ''}--every {n} --packet {k}"
        return StatisticMatch(1.0 / n, every.negated, text, f"nth: 1 of every {n} packets (share over time)")
    raise ctx.error("statistic: --mode random or --mode nth is required")


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


@match("physdev")
def parse_physdev(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    opts: list[tuple[str, bool, str | None]] = []
    for i in items:
        if i.name in ("physdev-in", "physdev-out"):
            if len(i.values) != 1:
                raise ctx.error(f"physdev: --{i.name} takes one interface")
            opts.append((i.name[8:], i.negated, i.values[0]))
        elif i.name in ("physdev-is-in", "physdev-is-out", "physdev-is-bridged"):
            if i.values:
                raise ctx.error(f"physdev: --{i.name} takes no argument")
            opts.append((i.name[8:], i.negated, None))
        else:
            raise ctx.error(f"physdev: unknown option --{i.name}")
    if not opts:
        raise ctx.error("physdev: at least one option is required")
    text = "-m physdev " + " ".join(("! " if n else "") + f"--physdev-{k}" + (f" {v}" if v else "") for k, n, v in opts)
    return PhysdevMatch(opts, text)


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


@match("pkttype")
def parse_pkttype(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "pkttype")
    t = o.get("pkt-type")
    o.done()
    if t is None or t.values[0].lower() not in ("unicast", "broadcast", "multicast", "host"):
        raise ctx.error("pkttype: --pkt-type unicast|broadcast|multicast is required")
    v = t.values[0].lower()
    return PkttypeMatch(
        "unicast" if v == "host" else v, t.negated, f"-m pkttype {'! ' if t.negated else ''}--pkt-type {v}"
    )


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
    found = [(op, o.get(f"{pre}-{op}")) for op in ("eq", "gt", "lt")]
    o.done()
    got = [(op, opt) for op, opt in found if opt is not None]
    if len(got) != 1:
        raise ctx.error(f"{name}: exactly one of --{pre}-eq, --{pre}-gt, --{pre}-lt is required")
    op, opt = got[0]
    assert opt is not None
    v = int_value(ctx, name, opt.name, opt.values[0], 0, 255)
    if opt.negated and op != "eq":
        raise ctx.error(f"{name}: only --{pre}-eq can be negated")
    return CmpMatch("ttl", op, v, v, opt.negated, f"-m {name} {'! ' if opt.negated else ''}--{opt.name} {v}")


@match("ttl")
def parse_ttl(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    return _ttl("ttl", items, ctx)


@match("hl")
def parse_hl(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    return _ttl("hl", items, ctx)


@match("length")
def parse_length(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "length")
    opt = o.get("length")
    o.done()
    if opt is None:
        raise ctx.error("length: --length is required")
    a, _, b = opt.values[0].partition(":")
    lo = int_value(ctx, "length", "length", a or "0", 0, 65535)
    hi = int_value(ctx, "length", "length", b or a or "65535", 0, 65535) if ":" not in opt.values[0] or b else 65535
    text = f"-m length {'! ' if opt.negated else ''}--length {opt.values[0]}"
    return CmpMatch("length", "range", lo, hi, opt.negated, text)


class MacMatch(MatchSpec):
    __slots__ = ("mac", "neg", "text")

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


@match("mac")
def parse_mac(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "mac")
    opt = o.get("mac-source")
    o.done()
    if opt is None:
        raise ctx.error("mac: --mac-source is required")
    mac = opt.values[0].lower()
    if len(mac.split(":")) != 6:
        raise ctx.error(f"mac: invalid MAC address {opt.values[0]!r}")
    return MacMatch(mac, opt.negated, f"-m mac {'! ' if opt.negated else ''}--mac-source {opt.values[0].upper()}")


class OwnerMatch(MatchSpec):
    __slots__ = ("opts", "text")

    def __init__(self, opts: list[tuple[str, bool, tuple[int, int] | None]], text: str) -> None:
        self.opts, self.text = opts, text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        if env.origin != "local" or env.hook not in ("OUTPUT", "POSTROUTING"):
            # No local socket: owner matches only when every option is negated.
            return all(neg for _, neg, _ in self.opts)
        for kind, neg, rng in self.opts:
            if kind == "socket-exists":
                hit = True
            else:
                v = pkt.uid if kind == "uid" else pkt.gid
                if v is None:
                    return Unknown(f"{self.text}: the sending process's {kind} is not known (give --uid/--gid)")
                assert rng is not None
                hit = rng[0] <= v <= rng[1]
            if hit == neg:
                return False
        return True


@match("owner")
def parse_owner(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    opts: list[tuple[str, bool, tuple[int, int] | None]] = []
    for i in items:
        if i.name in ("uid-owner", "gid-owner"):
            if len(i.values) != 1:
                raise ctx.error(f"owner: --{i.name} takes one value")
            a, _, b = i.values[0].partition("-")
            if not a.isdigit():
                try:
                    import grp
                    import pwd

                    n = pwd.getpwnam(a).pw_uid if i.name == "uid-owner" else grp.getgrnam(a).gr_gid
                except KeyError:
                    raise ctx.error(f"owner: unknown user/group {a!r}") from None
                lo = hi = n
            else:
                lo = int(a)
                hi = int(b) if b else lo
            opts.append((i.name[:3], i.negated, (lo, hi)))
        elif i.name == "socket-exists":
            opts.append(("socket-exists", i.negated, None))
        elif i.name == "suppl-groups":
            continue
        else:
            raise ctx.error(f"owner: unknown option --{i.name}")
    if not opts:
        raise ctx.error("owner: at least one of --uid-owner, --gid-owner, --socket-exists is required")
    text = "-m owner " + " ".join(
        ("! " if n else "") + (f"--{k}-owner {r[0] if r[0] == r[1] else f'{r[0]}-{r[1]}'}" if r else f"--{k}")
        for k, n, r in opts
    )
    return OwnerMatch(opts, text)


class TosMatch(MatchSpec):
    __slots__ = ("value", "mask", "shift", "neg", "text")

    def __init__(self, value: int, mask: int, shift: int, neg: bool, text: str) -> None:
        self.value, self.mask, self.shift, self.neg, self.text = value, mask, shift, neg, text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        return (((pkt.tos >> self.shift) & self.mask) == self.value) != self.neg


@match("dscp")
def parse_dscp(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "dscp")
    d = o.get("dscp")
    c = o.get("dscp-class")
    o.done()
    classes = {f"CS{i}": i * 8 for i in range(8)} | {"EF": 46, "BE": 0}
    classes |= {f"AF{a}{b}": a * 8 + b * 2 for a in range(1, 5) for b in range(1, 4)}
    if d is not None:
        v = int_value(ctx, "dscp", "dscp", d.values[0], 0, 63)
        neg = d.negated
    elif c is not None and c.values[0].upper() in classes:
        v = classes[c.values[0].upper()]
        neg = c.negated
    else:
        raise ctx.error("dscp: --dscp or a valid --dscp-class is required")
    return TosMatch(v, 0x3F, 2, neg, f"-m dscp {'! ' if neg else ''}--dscp {hex(v)}")


@match("tos")
def parse_tos(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "tos")
    t = o.get("tos")
    o.done()
    if t is None:
        raise ctx.error("tos: --tos is required")
    names = {"Minimize-Delay": 0x10, "Maximize-Throughput": 0x08, "Maximize-Reliability": 0x04,
             "Minimize-Cost": 0x02, "Normal-Service": 0x00}  # fmt: skip
    v, _, m = t.values[0].partition("/")
    if v in names:
        val, mask = names[v], 0x3F
    else:
        val = int_value(ctx, "tos", "tos", v, 0, 255)
        mask = int_value(ctx, "tos", "tos", m, 0, 255) if m else 0xFF
    return TosMatch(val & mask, mask, 0, t.negated, f"-m tos {'! ' if t.negated else ''}--tos {t.values[0]}")
