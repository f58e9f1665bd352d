"""Protocol matches: tcp, udp, sctp, dccp, icmp, icmp6, multiport, tcpmss, esp, ah, ipcomp, mh."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nftrace.ruleset.model import MatchOutcome, MatchSpec, Option, Unknown
from nftrace.ruleset.registry import FI, V2I, VI, F, Opts, ParseCtx, match
from nftrace.ruleset.values import port, port_range, range_text, uint, uint_range

if TYPE_CHECKING:
    from nftrace.engine.env import Env
    from nftrace.engine.packet import Packet

IPPROTO = {"tcp": 6, "udp": 17, "udplite": 136, "sctp": 132, "dccp": 33, "icmp": 1, "icmpv6": 58, "esp": 50,
           "ah": 51, "ipcomp": 108, "mh": 135}  # fmt: skip

# libxt_tcp's flag names (iptables 1.8.9 knows no ECE/CWR names)
TCP_FLAG_BITS = (("FIN", 0x01), ("SYN", 0x02), ("RST", 0x04), ("PSH", 0x08), ("ACK", 0x10), ("URG", 0x20))


def require_proto(ctx: ParseCtx, name: str, protos: tuple[str, ...]) -> str:
    """The kernel's checkentry: the rule must say `-p PROTO` (not negated) for this match."""
    nums = {IPPROTO[p] for p in protos}
    if ctx.proto_num is None or ctx.proto_negated or ctx.proto_num not in nums:
        want = "' or '-p ".join(protos)
        raise ctx.error(f"-m {name} needs '-p {want}' (not negated) in the same rule")
    for p in protos:
        if IPPROTO[p] == ctx.proto_num:
            return p
    return protos[0]


def _bang(neg: bool) -> str:
    return "! " if neg else ""


class PortMatch(MatchSpec):
    """tcp/udp/sctp/dccp --sport/--dport (+ tcp flags)."""

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
        if self.flags is not None:
            flags = ",".join(f for f, _ in TCP_FLAG_BITS if f in pkt.tcp_flags) or "none"
            return f"{self.text} (packet {pkt.proto} {pkt.sport} > {pkt.dport} flags {flags})"
        return f"{self.text} (packet {pkt.proto} {pkt.sport} > {pkt.dport})"


class UnknownOptions(MatchSpec):
    """A match some of whose options depend on packet fields nftrace does not model."""

    exactness = "unknown"
    __slots__ = ("name_", "text", "what")

    def __init__(self, name: str, text: str, what: str) -> None:
        self.name_ = name
        self.text = text
        self.what = what

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        return Unknown(f"{self.text}: depends on {self.what}, which nftrace does not model")


def tcp_flags(text: str, ctx: ParseCtx) -> int:
    bits = 0
    for f in text.split(","):
        u = f.upper()
        if u == "ALL":
            bits |= 0x3F
        elif u == "NONE":
            continue
        else:
            for name, b in TCP_FLAG_BITS:
                if name == u:
                    bits |= b
                    break
            else:
                raise ctx.error(f"tcp: unknown TCP flag {f!r}")
    return bits


def flag_names(bits: int) -> str:
    return ",".join(n for n, b in TCP_FLAG_BITS if bits & b) or "NONE"


def _flag_set(bits: int) -> frozenset[str]:
    return frozenset(n for n, b in TCP_FLAG_BITS if bits & b)


_PORT_OPTS = {"sport": VI, "dport": VI}
_PORT_ALIASES = {"source-port": "sport", "destination-port": "dport"}


def _ports(
    o: Opts, ctx: ParseCtx, name: str, proto: str, parts: list[str], always: bool = False
) -> tuple[tuple[int, int] | None, bool, tuple[int, int] | None, bool]:
    out: list[tuple[tuple[int, int] | None, bool]] = []
    for opt in ("sport", "dport"):
        got = o.get(opt)
        if got is None:
            out.append((None, False))
            continue
        rng = port_range(ctx, name, opt, got.values[0], proto)
        full = rng == (0, 0xFFFF)
        if always or not full or got.negated:
            parts.append(f"{_bang(got.negated)}--{opt} {range_text(*rng)}")
        out.append((None if full and not got.negated else rng, got.negated))
    (s, sn), (d, dn) = out
    return s, sn, d, dn


@match(
    "tcp",
    options={**_PORT_OPTS, "tcp-flags": V2I, "syn": FI, "tcp-option": VI},
    aliases=_PORT_ALIASES,
    why="ports and flags from the packet; only --tcp-option is `unknown` (TCP options are not modelled)",
)
def parse_tcp(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    require_proto(ctx, "tcp", ("tcp",))
    o = Opts(items, ctx, "tcp")
    parts = ["-m tcp"]
    s, sn, d, dn = _ports(o, ctx, "tcp", "tcp", parts)
    o.exclusive("syn", "tcp-flags")
    opt_o = o.get("tcp-option")
    flags = None
    f = o.get("tcp-flags")
    syn = o.get("syn")
    option_text = ""
    if opt_o is not None:
        v = uint(ctx, "tcp", "tcp-option", opt_o.values[0], 0, 255)
        option_text = f"{_bang(opt_o.negated)}--tcp-option {v}"
        parts.append(option_text)
    if f is not None:
        mask, comp = tcp_flags(f.values[0], ctx), tcp_flags(f.values[1], ctx)
        flags = (_flag_set(mask), _flag_set(comp & mask), f.negated)
        parts.append(f"{_bang(f.negated)}--tcp-flags {flag_names(mask)} {flag_names(comp)}")
    elif syn is not None:
        flags = (frozenset({"FIN", "SYN", "RST", "ACK"}), frozenset({"SYN"}), syn.negated)
        parts.append(f"{_bang(syn.negated)}--tcp-flags FIN,SYN,RST,ACK SYN")
    text = " ".join(parts)
    if opt_o is not None:
        return UnknownOptions("tcp", text, "the TCP options of the packet")
    return PortMatch("tcp", s, sn, d, dn, flags, text)


@match("udp", options=dict(_PORT_OPTS), aliases=_PORT_ALIASES, why="ports from the packet")
def parse_udp(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    require_proto(ctx, "udp", ("udp",))
    o = Opts(items, ctx, "udp")
    parts = ["-m udp"]
    s, sn, d, dn = _ports(o, ctx, "udp", "udp", parts)
    return PortMatch("udp", s, sn, d, dn, None, " ".join(parts))


_SCTP_CHUNKS = {
    "DATA": 0, "INIT": 1, "INIT_ACK": 2, "SACK": 3, "HEARTBEAT": 4, "HEARTBEAT_ACK": 5, "ABORT": 6,
    "SHUTDOWN": 7, "SHUTDOWN_ACK": 8, "ERROR": 9, "COOKIE_ECHO": 10, "COOKIE_ACK": 11, "ECN_ECNE": 12,
    "ECN_CWR": 13, "SHUTDOWN_COMPLETE": 14, "I_DATA": 64, "RE_CONFIG": 130, "PAD": 132, "ASCONF": 193,
    "ASCONF_ACK": 128, "FORWARD_TSN": 192, "I_FORWARD_TSN": 194,
}  # fmt: skip


@match(
    "sctp",
    options={**_PORT_OPTS, "chunk-types": V2I},
    aliases=_PORT_ALIASES,
    exactness="partial",
    why="ports exact; --chunk-types unknown (SCTP chunks are not modelled)",
)
def parse_sctp(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    require_proto(ctx, "sctp", ("sctp",))
    o = Opts(items, ctx, "sctp")
    parts = ["-m sctp"]
    s, sn, d, dn = _ports(o, ctx, "sctp", "sctp", parts)
    ch = o.get("chunk-types")
    if ch is None:
        return PortMatch("sctp", s, sn, d, dn, None, " ".join(parts))
    mode, lst = ch.values
    if mode.lower() not in ("all", "any", "only"):
        raise ctx.error(f"sctp: --chunk-types: {mode!r} must be all, any or only")
    chunks: list[tuple[int, str]] = []
    if lst.upper() != "NONE":
        for item in lst.split(","):
            name, _, flags = item.partition(":")
            num = _SCTP_CHUNKS.get(name.upper())
            if num is None:
                raise ctx.error(f"sctp: unknown chunk type {name!r}")
            chunks.append((num, name.upper() + (":" + flags if flags else "")))
    chunks.sort()
    shown = ",".join(n for _, n in chunks) or "NONE"
    parts.append(f"{_bang(ch.negated)}--chunk-types {mode.lower()} {shown}")
    return UnknownOptions("sctp", " ".join(parts), "SCTP chunk types")


_DCCP_TYPES = ("REQUEST", "RESPONSE", "DATA", "ACK", "DATAACK", "CLOSEREQ", "CLOSE", "RESET", "SYNC", "SYNCACK",
               "INVALID")  # fmt: skip


@match(
    "dccp",
    options={**_PORT_OPTS, "dccp-types": VI, "dccp-option": VI},
    aliases=_PORT_ALIASES,
    exactness="partial",
    why="ports exact; --dccp-types/--dccp-option unknown",
)
def parse_dccp(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    require_proto(ctx, "dccp", ("dccp",))
    o = Opts(items, ctx, "dccp")
    parts = ["-m dccp"]
    s, sn, d, dn = _ports(o, ctx, "dccp", "dccp", parts, always=True)
    extra = False
    t = o.get("dccp-types")
    if t is not None:
        bits = set()
        for name in t.values[0].split(","):
            if name.upper() not in _DCCP_TYPES:
                raise ctx.error(f"dccp: unknown packet type {name!r}")
            bits.add(_DCCP_TYPES.index(name.upper()))
        parts.append(f"{_bang(t.negated)}--dccp-types {','.join(_DCCP_TYPES[b] for b in sorted(bits))}")
        extra = True
    opt = o.get("dccp-option")
    if opt is not None:
        v = uint(ctx, "dccp", "dccp-option", opt.values[0], 0, 255)
        parts.append(f"{_bang(opt.negated)}--dccp-option {v}")
        extra = True
    text = " ".join(parts)
    if extra:
        return UnknownOptions("dccp", text, "DCCP header fields")
    return PortMatch("dccp", s, sn, d, dn, None, text)


# ------------------------------------------------------------------ icmp

ICMP_NAMES: dict[str, tuple[int, int, int]] = {}
for _names, _t, _c in (
    ("echo-reply pong", 0, -1), ("destination-unreachable", 3, -1), ("network-unreachable", 3, 0),
    ("host-unreachable", 3, 1), ("protocol-unreachable", 3, 2), ("port-unreachable", 3, 3),
    ("fragmentation-needed", 3, 4), ("source-route-failed", 3, 5), ("network-unknown", 3, 6),
    ("host-unknown", 3, 7), ("network-prohibited", 3, 9), ("host-prohibited", 3, 10),
    ("TOS-network-unreachable", 3, 11), ("TOS-host-unreachable", 3, 12), ("communication-prohibited", 3, 13),
    ("host-precedence-violation", 3, 14), ("precedence-cutoff", 3, 15), ("source-quench", 4, -1),
    ("redirect", 5, -1), ("network-redirect", 5, 0), ("host-redirect", 5, 1), ("TOS-network-redirect", 5, 2),
    ("TOS-host-redirect", 5, 3), ("echo-request ping", 8, -1), ("router-advertisement", 9, -1),
    ("router-solicitation", 10, -1), ("time-exceeded ttl-exceeded", 11, -1), ("ttl-zero-during-transit", 11, 0),
    ("ttl-zero-during-reassembly", 11, 1), ("parameter-problem", 12, -1), ("ip-header-bad", 12, 0),
    ("required-option-missing", 12, 1), ("timestamp-request", 13, -1), ("timestamp-reply", 14, -1),
    ("address-mask-request", 17, -1), ("address-mask-reply", 18, -1),
):  # fmt: skip
    for _n in _names.split():
        ICMP_NAMES[_n] = (_t, 0 if _c < 0 else _c, 0xFF if _c < 0 else _c)
ICMP_NAMES["any"] = (0xFF, 0, 0xFF)

ICMPV6_NAMES: dict[str, tuple[int, int, int]] = {}
for _names, _t, _c in (
    ("destination-unreachable", 1, -1), ("no-route", 1, 0), ("communication-prohibited", 1, 1),
    ("beyond-scope", 1, 2), ("address-unreachable", 1, 3), ("port-unreachable", 1, 4), ("failed-policy", 1, 5),
    ("reject-route", 1, 6), ("packet-too-big", 2, -1), ("time-exceeded ttl-exceeded", 3, -1),
    ("ttl-zero-during-transit", 3, 0), ("ttl-zero-during-reassembly", 3, 1), ("parameter-problem", 4, -1),
    ("bad-header", 4, 0), ("unknown-header-type", 4, 1), ("unknown-option", 4, 2),
    ("echo-request ping", 128, -1), ("echo-reply pong", 129, -1), ("mld-listener-query", 130, -1),
    ("mld-listener-report", 131, -1), ("mld-listener-done mld-listener-reduction", 132, -1),
    ("router-solicitation", 133, -1), ("router-advertisement", 134, -1),
    ("neighbour-solicitation neighbor-solicitation", 135, -1),
    ("neighbour-advertisement neighbor-advertisement", 136, -1), ("redirect", 137, -1),
):  # fmt: skip
    for _n in _names.split():
        ICMPV6_NAMES[_n] = (_t, 0 if _c < 0 else _c, 0xFF if _c < 0 else _c)


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


def _icmp_type(ctx: ParseCtx, ext: str, text: str, names: dict[str, tuple[int, int, int]]) -> tuple[int, int, int]:
    if text in names:
        return names[text]
    tp, slash, cp = text.partition("/")
    t = uint(ctx, ext, "type", tp, 0, 255) if tp and (tp[0].isdigit()) else None
    if t is None:
        raise ctx.error(f"{ext}: unknown ICMP type {text!r}")
    if not slash:
        return t, 0, 0xFF
    lo, hi = uint_range(ctx, ext, "type", cp, 0xFF)
    return t, lo, hi


@match("icmp", options={"icmp-type": VI}, family="ipv4", why="type and code from the packet")
def parse_icmp(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    require_proto(ctx, "icmp", ("icmp",))
    o = Opts(items, ctx, "icmp")
    opt = o.get("icmp-type")
    if opt is None:
        raise ctx.error('icmp: option "--icmp-type" must be specified')
    t, lo, hi = _icmp_type(ctx, "icmp", opt.values[0], ICMP_NAMES)
    bang = _bang(opt.negated)
    if t == 0xFF and lo == 0 and hi == 0xFF:
        return IcmpMatch("icmp", True, 0, 0, 255, opt.negated, f"-m icmp {bang}--icmp-type any")
    shown = str(t) if (lo, hi) == (0, 0xFF) else f"{t}/{lo}"
    return IcmpMatch("icmp", False, t, lo, hi, opt.negated, f"-m icmp {bang}--icmp-type {shown}")


@match("icmp6", options={"icmpv6-type": VI}, family="ipv6", why="type and code from the packet")
def parse_icmp6(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    require_proto(ctx, "icmp6", ("icmpv6",))
    o = Opts(items, ctx, "icmp6")
    opt = o.get("icmpv6-type")
    if opt is None:
        raise ctx.error('icmp6: option "--icmpv6-type" must be specified')
    t, lo, hi = _icmp_type(ctx, "icmp6", opt.values[0], ICMPV6_NAMES)
    shown = str(t) if (lo, hi) == (0, 0xFF) else f"{t}/{lo}"
    return IcmpMatch("icmpv6", False, t, lo, hi, opt.negated, f"-m icmp6 {_bang(opt.negated)}--icmpv6-type {shown}")


# ------------------------------------------------------------------ multiport


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


@match(
    "multiport",
    options={"sports": VI, "dports": VI, "ports": VI},
    aliases={"source-ports": "sports", "destination-ports": "dports"},
    why="ports from the packet",
)
def parse_multiport(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    proto = require_proto(ctx, "multiport", ("tcp", "udp", "udplite", "sctp", "dccp"))
    o = Opts(items, ctx, "multiport")
    opt_name = o.require_one("sports", "dports", "ports")
    opt = o.get(opt_name)
    assert opt is not None
    ranges = []
    count = 0
    shown = []
    for part in opt.values[0].split(","):
        if not part:
            raise ctx.error("multiport: empty port in list")
        if ":" in part:
            a, _, b = part.partition(":")
            lo = port(ctx, "multiport", opt_name, a, proto) if a else 0
            hi = port(ctx, "multiport", opt_name, b, proto) if b else 0xFFFF
            if lo > hi:
                raise ctx.error(f"multiport: invalid port range {part!r}")
            ranges.append((lo, hi))
            shown.append(f"{lo}:{hi}")
            count += 2
        else:
            v = port(ctx, "multiport", opt_name, part, proto)
            ranges.append((v, v))
            shown.append(str(v))
            count += 1
    if count > 15:
        raise ctx.error("multiport: too many ports specified (at most 15, a range counts as 2)")
    which = {"sports": "s", "dports": "d", "ports": "b"}[opt_name]
    text = f"-m multiport {_bang(opt.negated)}--{opt_name} {','.join(shown)}"
    return MultiportMatch(which, tuple(ranges), opt.negated, text)


# ------------------------------------------------------------------ header fields nftrace does not model


@match("tcpmss", options={"mss": VI}, exactness="unknown", why="the MSS option of TCP SYNs is not modelled")
def parse_tcpmss(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    require_proto(ctx, "tcpmss", ("tcp",))
    o = Opts(items, ctx, "tcpmss")
    opt = o.get("mss")
    if opt is None:
        raise ctx.error('tcpmss: option "--mss" must be specified')
    lo, hi = uint_range(ctx, "tcpmss", "mss", opt.values[0], 0xFFFF)
    return UnknownOptions("tcpmss", f"-m tcpmss {_bang(opt.negated)}--mss {range_text(lo, hi)}", "the TCP MSS option")


def _spi_match(name: str, opt_name: str, items: list[Option], ctx: ParseCtx, extra: list[str] | None = None) -> str:
    o = Opts(items, ctx, name)
    parts = [f"-m {name}"]
    opt = o.get(opt_name)
    if opt is not None:
        lo, hi = uint_range(ctx, name, opt_name, opt.values[0])
        if (lo, hi) != (0, 0xFFFFFFFF) or opt.negated:
            parts.append(f"{_bang(opt.negated)}--{opt_name} {range_text(lo, hi)}")
    parts.extend(extra or [])
    return " ".join(parts)


@match("esp", options={"espspi": VI}, exactness="unknown", why="the ESP SPI is not modelled")
def parse_esp(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    require_proto(ctx, "esp", ("esp",))
    return UnknownOptions("esp", _spi_match("esp", "espspi", items, ctx), "the ESP SPI")


@match("ah", options={"ahspi": VI}, family="ipv4", exactness="unknown", why="the AH SPI is not modelled")
def parse_ah4(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    require_proto(ctx, "ah", ("ah",))
    return UnknownOptions("ah", _spi_match("ah", "ahspi", items, ctx), "the AH SPI")


@match(
    "ah",
    options={"ahspi": VI, "ahlen": VI, "ahres": FI},
    family="ipv6",
    exactness="unknown",
    why="the AH header is not modelled",
)
def parse_ah6(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "ah")
    extra = []
    ln = o.get("ahlen")
    if ln is not None:
        extra.append(f"{_bang(ln.negated)}--ahlen {uint(ctx, 'ah', 'ahlen', ln.values[0])}")
    if o.has("ahres"):
        extra.append("--ahres")
    return UnknownOptions("ah", _spi_match("ah", "ahspi", items, ctx, extra), "the AH header")


@match("ipcomp", options={"ipcompspi": VI, "compres": F}, exactness="unknown", why="the IPComp CPI is not modelled")
def parse_ipcomp(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    require_proto(ctx, "ipcomp", ("ipcomp",))
    o = Opts(items, ctx, "ipcomp")
    extra = ["--compres"] if o.has("compres") else []
    return UnknownOptions("ipcomp", _spi_match("ipcomp", "ipcompspi", items, ctx, extra), "the IPComp CPI")


_MH_TYPES = {
    "binding-refresh-request": 0, "brr": 0, "home-test-init": 1, "hoti": 1, "careof-test-init": 2, "coti": 2,
    "home-test": 3, "hot": 3, "careof-test": 4, "cot": 4, "binding-update": 5, "bu": 5,
    "binding-acknowledgement": 6, "ba": 6, "binding-error": 7, "be": 7,
}  # fmt: skip


@match("mh", options={"mh-type": VI}, family="ipv6", exactness="unknown", why="the Mobility Header is not modelled")
def parse_mh(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    require_proto(ctx, "mh", ("mh",))
    o = Opts(items, ctx, "mh")
    parts = ["-m mh"]
    opt = o.get("mh-type")
    if opt is not None:
        a, colon, b = opt.values[0].partition(":")

        def one(t: str, dflt: int) -> int:
            if not t:
                return dflt
            if t in _MH_TYPES:
                return _MH_TYPES[t]
            return uint(ctx, "mh", "mh-type", t, 0, 255)

        lo = one(a, 0)
        hi = one(b, 0xFF) if colon else lo
        if lo > hi:
            raise ctx.error(f"mh: invalid type range {opt.values[0]!r}")
        if (lo, hi) != (0, 0xFF) or opt.negated:
            parts.append(f"{_bang(opt.negated)}--mh-type {range_text(lo, hi)}")
    return UnknownOptions("mh", " ".join(parts), "the Mobility Header type")
