"""Protocol matches: tcp, udp, udplite, sctp, dccp, icmp, icmp6, multiport."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from nftrace.engine.packet import ICMP_TYPES, ICMPV6_TYPES, TCP_FLAGS
from nftrace.ruleset.model import MatchOutcome, MatchSpec, Option, Unknown
from nftrace.ruleset.registry import Opts, ParseCtx, match

if TYPE_CHECKING:
    from nftrace.engine.env import Env
    from nftrace.engine.packet import Packet


def parse_port(text: str, ctx: ParseCtx, proto: str) -> int:
    if text.isdigit():
        v = int(text)
        if v > 65535:
            raise ctx.error(f"port {v} out of range")
        return v
    try:
        return socket.getservbyname(text, proto if proto in ("tcp", "udp") else "tcp")
    except OSError:
        raise ctx.error(f"invalid port/service {text!r}") from None


def parse_range(text: str, ctx: ParseCtx, proto: str) -> tuple[int, int]:
    if ":" in text:
        a, b = text.split(":", 1)
        lo = parse_port(a, ctx, proto) if a else 0
        hi = parse_port(b, ctx, proto) if b else 65535
        if lo > hi:
            raise ctx.error(f"invalid port range {text!r}")
        return lo, hi
    v = parse_port(text, ctx, proto)
    return v, v


def _range_text(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}:{hi}"


def _require_proto(ctx: ParseCtx, name: str, protos: tuple[str, ...]) -> str:
    p = ctx.protocol
    if p is None or ctx.proto_negated or p not in protos:
        want = "/".join(protos)
        raise ctx.error(f"-m {name} needs '-p {want}' (and not negated) in the same rule")
    return p


class PortMatch(MatchSpec):
    """tcp/udp/udplite/sctp/dccp --sport/--dport (+ tcp flags)."""

    __slots__ = ("sport", "dport", "sneg", "dneg", "flags", "text", "name_")

    def __init__(
        self,
        name: str,
        sport: tuple[int, int] | None,
        sneg: bool,
        dport: tuple[int, int] | None,
        dneg: bool,
        flags: tuple[frozenset[str], frozenset[str], bool] | None,
        text: str,
    ) -> None:
        self.name_ = name
        self.sport, self.sneg, self.dport, self.dneg = sport, sneg, dport, dneg
        self.flags = flags
        self.text = text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        if pkt.fragment:
            return False
        if pkt.proto != self.name_:
            return False
        if self.sport is not None:
            sp = pkt.sport if pkt.sport is not None else -1
            if (self.sport[0] <= sp <= self.sport[1]) == self.sneg:
                return False
        if self.dport is not None:
            dp = pkt.dport if pkt.dport is not None else -1
            if (self.dport[0] <= dp <= self.dport[1]) == self.dneg:
                return False
        if self.flags is not None:
            mask, comp, neg = self.flags
            if ((pkt.tcp_flags & mask) == comp) == neg:
                return False
        return True

    def why_not(self, pkt: Packet, env: Env) -> str:
        return f"{self.text} (packet {pkt.proto} {pkt.sport} > {pkt.dport}" + (
            f" flags {','.join(f for f in TCP_FLAGS if f in pkt.tcp_flags) or 'none'})"
            if self.flags is not None
            else ")"
        )


def _flags(text: str, ctx: ParseCtx) -> frozenset[str]:
    if text.upper() == "ALL":
        return frozenset(TCP_FLAGS)
    if text.upper() == "NONE":
        return frozenset()
    out: set[str] = set()
    for f in text.upper().split(","):
        if f == "ALL":
            out.update(TCP_FLAGS)
        elif f == "NONE":
            continue
        elif f in TCP_FLAGS:
            out.add(f)
        else:
            raise ctx.error(f"tcp: unknown flag {f!r}")
    return frozenset(out)


def _port_match(name: str, items: list[Option], ctx: ParseCtx, protos: tuple[str, ...]) -> MatchSpec:
    proto = _require_proto(ctx, name, protos)
    o = Opts(items, ctx, name)
    parts = [f"-m {name}"]
    s = o.get("sport", "source-port")
    d = o.get("dport", "destination-port")
    flags = None
    sport = parse_range(s.values[0], ctx, proto) if s else None
    dport = parse_range(d.values[0], ctx, proto) if d else None
    if s and sport:
        parts.append(("! " if s.negated else "") + "--sport " + _range_text(*sport))
    if d and dport:
        parts.append(("! " if d.negated else "") + "--dport " + _range_text(*dport))
    if name == "tcp":
        f = o.get("tcp-flags", nvals=2)
        syn = o.get("syn", nvals=0)
        if f is not None:
            mask, comp = _flags(f.values[0], ctx), _flags(f.values[1], ctx)
            flags = (mask, comp, f.negated)
            parts.append(("! " if f.negated else "") + f"--tcp-flags {f.values[0]} {f.values[1]}")
        elif syn is not None:
            flags = (frozenset({"FIN", "SYN", "RST", "ACK"}), frozenset({"SYN"}), syn.negated)
            parts.append(("! " if syn.negated else "") + "--tcp-flags FIN,SYN,RST,ACK SYN")
        opt = o.get("tcp-option")
        if opt is not None:
            # TCP options are not part of our packet model.
            o.done()
            return _UnknownOptions(
                name, " ".join(parts) + f" --tcp-option {opt.values[0]}", "TCP options of the packet"
            )
    o.done()
    return PortMatch(name, sport, bool(s and s.negated), dport, bool(d and d.negated), flags, " ".join(parts))


class _UnknownOptions(MatchSpec):
    exactness = "unknown"
    __slots__ = ("name_", "text", "what")

    def __init__(self, name: str, text: str, what: str) -> None:
        self.name_ = name
        self.text = text
        self.what = what

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        return Unknown(f"{self.text}: depends on {self.what}, which nftrace does not model")


@match("tcp", implicit_options=("sport", "source-port", "dport", "destination-port", "tcp-flags", "syn", "tcp-option"))
def parse_tcp(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    return _port_match("tcp", items, ctx, ("tcp",))


@match("udp", implicit_options=("sport", "source-port", "dport", "destination-port"))
def parse_udp(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    return _port_match("udp", items, ctx, ("udp",))


@match("udplite", implicit_options=("sport", "source-port", "dport", "destination-port"))
def parse_udplite(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    return _port_match("udplite", items, ctx, ("udplite",))


@match("sctp", implicit_options=("sport", "source-port", "dport", "destination-port", "chunk-types"))
def parse_sctp(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "sctp")
    ch = o.get("chunk-types", nvals=(2, 3))
    if ch is not None:
        rest = [i for i in items if i.name != "chunk-types"]
        base = _port_match("sctp", rest, ctx, ("sctp",))
        return _UnknownOptions("sctp", base.text + " --chunk-types " + " ".join(ch.values), "SCTP chunk types")
    return _port_match("sctp", items, ctx, ("sctp",))


@match("dccp", exactness="partial", why="ports exact; --dccp-types/--dccp-option unknown")
def parse_dccp(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    extra = [i for i in items if i.name not in ("sport", "source-port", "dport", "destination-port")]
    if extra:
        return _UnknownOptions("dccp", "-m dccp " + " ".join("--" + i.name for i in extra), "DCCP header fields")
    return _port_match("dccp", items, ctx, ("dccp",))


class IcmpMatch(MatchSpec):
    __slots__ = ("proto", "any", "type", "code_lo", "code_hi", "neg", "text")

    def __init__(self, proto: str, any_: bool, t: int, lo: int, hi: int, neg: bool, text: str) -> None:
        self.proto = proto
        self.any = any_
        self.type, self.code_lo, self.code_hi = t, lo, hi
        self.neg = neg
        self.text = text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        if pkt.proto != self.proto or pkt.fragment:
            return False
        if self.any:
            hit = True
        else:
            hit = pkt.icmp_type == self.type and self.code_lo <= (pkt.icmp_code or 0) <= self.code_hi
        return hit != self.neg

    def why_not(self, pkt: Packet, env: Env) -> str:
        return f"{self.text} (packet {pkt.proto} type {pkt.icmp_type} code {pkt.icmp_code})"


def _icmp(
    name: str, items: list[Option], ctx: ParseCtx, proto: str, table: dict[str, tuple[int, int | None]]
) -> MatchSpec:
    _require_proto(ctx, name, ("icmp",) if proto == "icmp" else ("icmpv6", "ipv6-icmp", "icmp6"))
    o = Opts(items, ctx, name)
    opt = o.get("icmp-type" if proto == "icmp" else "icmpv6-type")
    o.done()
    if opt is None:
        return IcmpMatch(proto, True, 0, 0, 255, False, f"-m {name}")
    v = opt.values[0]
    bang = "! " if opt.negated else ""
    flag = "--icmp-type" if proto == "icmp" else "--icmpv6-type"
    if v == "any":
        return IcmpMatch(proto, True, 0, 0, 255, opt.negated, f"-m {name} {bang}{flag} any")
    if v in table:
        t, c = table[v]
        lo, hi = (c, c) if c is not None else (0, 255)
    else:
        try:
            tp, _, cp = v.partition("/")
            t = int(tp)
            lo = hi = int(cp) if cp else -1
            if not cp:
                lo, hi = 0, 255
        except ValueError:
            raise ctx.error(f"{name}: unknown ICMP type {v!r}") from None
        if not (0 <= t <= 255 and 0 <= lo <= 255):
            raise ctx.error(f"{name}: ICMP type/code out of range in {v!r}")
    return IcmpMatch(proto, False, t, lo, hi, opt.negated, f"-m {name} {bang}{flag} {v}")


@match("icmp", implicit_options=("icmp-type",))
def parse_icmp(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    if ctx.family == "ipv6":
        raise ctx.error("-m icmp is IPv4 only; use -p ipv6-icmp -m icmp6")
    return _icmp("icmp", items, ctx, "icmp", ICMP_TYPES)


@match("icmp6", implicit_options=("icmpv6-type",))
def parse_icmp6(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    if ctx.family != "ipv6":
        raise ctx.error("-m icmp6 is IPv6 only")
    return _icmp("icmp6", items, ctx, "icmpv6", ICMPV6_TYPES)


class MultiportMatch(MatchSpec):
    __slots__ = ("which", "ranges", "neg", "text")

    def __init__(self, which: str, ranges: tuple[tuple[int, int], ...], neg: bool, text: str) -> None:
        self.which = which
        self.ranges = ranges
        self.neg = neg
        self.text = text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        if pkt.fragment or not pkt.has_ports:
            return False
        ports: list[int] = []
        if self.which in ("s", "b") and pkt.sport is not None:
            ports.append(pkt.sport)
        if self.which in ("d", "b") and pkt.dport is not None:
            ports.append(pkt.dport)
        hit = any(lo <= p <= hi for p in ports for lo, hi in self.ranges)
        return hit != self.neg

    def why_not(self, pkt: Packet, env: Env) -> str:
        return f"{self.text} (ports {pkt.sport} > {pkt.dport})"


@match("multiport")
def parse_multiport(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    proto = _require_proto(ctx, "multiport", ("tcp", "udp", "udplite", "sctp", "dccp"))
    o = Opts(items, ctx, "multiport")
    found: list[tuple[str, Option]] = []
    for which, names in (("s", ("sports", "source-ports")), ("d", ("dports", "destination-ports")), ("b", ("ports",))):
        opt = o.get(*names)
        if opt is not None:
            found.append((which, opt))
    o.done()
    if len(found) != 1:
        raise ctx.error("multiport needs exactly one of --sports, --dports, --ports")
    which, opt = found[0]
    ranges = []
    count = 0
    for part in opt.values[0].split(","):
        if not part:
            raise ctx.error("multiport: empty port in list")
        lo, hi = parse_range(part, ctx, proto)
        ranges.append((lo, hi))
        count += 1 if lo == hi else 2
    if count > 15:
        raise ctx.error("multiport: too many ports specified (at most 15, a range counts 2)")
    flag = {"s": "--sports", "d": "--dports", "b": "--ports"}[which]
    text = f"-m multiport {'! ' if opt.negated else ''}{flag} {opt.values[0]}"
    return MultiportMatch(which, tuple(ranges), opt.negated, text)
