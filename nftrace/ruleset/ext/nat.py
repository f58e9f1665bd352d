"""NAT targets: DNAT SNAT MASQUERADE REDIRECT NETMAP.

A NAT target ends the nat chain with ACCEPT (as the kernel's trace reports)
and records a NatRequest; the engine sets up the binding and rewrites the
packet when the nat table's hook function finishes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from nftrace.ruleset.model import Option, TargetResult, TargetSpec, by_constructor
from nftrace.ruleset.registry import F, Opts, ParseCtx, V, target
from nftrace.ruleset.values import (
    addr_text,
    c_strtoul,
    canonical_ipv4,
    parse_addr_mask,
    parse_host,
    prefix_len,
    service_port,
)

if TYPE_CHECKING:
    from nftrace.engine.env import Env
    from nftrace.engine.packet import Packet

PRE, INP, FWD, OUT, POST = "PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"
_PORT_PROTOS: Final = (6, 17, 132, 33, 136)  # tcp udp sctp dccp udplite


@dataclass(slots=True)
class NatRequest:
    """What a NAT target asks for. Never changed once made (specs are shared between rules); not
    frozen because a frozen class is three times slower to make when compiled (nftrace/compiled.py)."""

    kind: str  # DNAT SNAT MASQUERADE REDIRECT NETMAP
    addr_lo: str | None = None
    addr_hi: str | None = None
    port_lo: int | None = None
    port_hi: int | None = None
    netmap: tuple[int, int] | None = None  # (network int, mask int) for NETMAP
    random: bool = False
    persistent: bool = False
    port_base: int | None = None  # `:lo-hi/base` (port shift), not modelled by the engine

    def __reduce__(self) -> tuple[Any, ...]:
        return by_constructor(self)

    @property
    def manip(self) -> str:
        """'dst' or 'src' — fixed by the kind, except NETMAP (decided by hook)."""
        return "dst" if self.kind in ("DNAT", "REDIRECT") else "src"


class NatTarget(TargetSpec):
    tables: tuple[str, ...] | None = ("nat",)

    def __init__(self, kind: str, req: NatRequest, text: str, hooks: frozenset[str]) -> None:
        self.kind = kind
        self.req = req
        self.text = text
        self.hooks = hooks

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.kind

    def apply(self, pkt: Packet, env: Env) -> TargetResult:
        if self.req.port_base is not None:
            return TargetResult(
                "ACCEPT", nat=self.req, unknown=f"{self.text}: the port shift (/{self.req.port_base}) is not modelled"
            )
        return TargetResult("ACCEPT", nat=self.req)


def _one_port(ctx: ParseCtx, ext: str, text: str, services: bool = True) -> int:
    v = c_strtoul(text, 10) if text.isdigit() else (service_port(text) if services else None)
    if v is None or v > 0xFFFF:
        raise ctx.error(f"{ext}: port {text!r} is not valid")
    return v


def parse_ports(ctx: ParseCtx, ext: str, text: str, base_ok: bool) -> tuple[int, int, int | None]:
    """`p`, `p-q`, `p-q/base` (a service name is accepted for a single port and for the base)."""
    rng, slash, base_t = text.partition("/")
    if slash and not base_ok:
        raise ctx.error(f"{ext}: {text!r}: a base port ('/N') is not supported here")
    single = service_port(rng) if not rng.isdigit() else None
    if single is not None:
        lo = hi = single
    else:
        a, dash, b = rng.partition("-")
        lo = _one_port(ctx, ext, a, services=not dash)
        hi = _one_port(ctx, ext, b, services=False) if dash else lo
        if lo > hi:
            raise ctx.error(f"{ext}: invalid port range {rng!r}")
    base = None
    if slash:
        base = _one_port(ctx, ext, base_t)
        if base == 0:
            raise ctx.error(f"{ext}: base port {base_t!r} must be 1-65535")
    return lo, hi, base


def _need_port_proto(ctx: ParseCtx, ext: str) -> None:
    if ctx.proto_num not in _PORT_PROTOS or ctx.proto_negated:
        raise ctx.error(f"{ext}: a port needs '-p tcp', '-p udp', '-p sctp' or '-p dccp'")


def _ports_text(lo: int, hi: int, base: int | None) -> str:
    return (str(lo) if lo == hi else f"{lo}-{hi}") + (f"/{base}" if base is not None else "")


def _parse_range(
    text: str, ctx: ParseCtx, ext: str
) -> tuple[str | None, str | None, int | None, int | None, int | None, str]:
    """'[ipaddr[-ipaddr]][:port[-port][/base]]' (IPv6: 'addr[-addr]' or '[addr[-addr]]:port...').

    Returns the addresses, the ports and the range as iptables-save prints it.
    """
    v6 = ctx.family == "ipv6"
    addr_part, port_part = text, None
    if v6:
        if text.startswith("["):
            addr_part, close, rest = text[1:].partition("]")
            if not close:
                raise ctx.error(f"{ext}: {text!r}: missing ']'")
            if rest:
                if not rest.startswith(":"):
                    raise ctx.error(f"{ext}: {text!r}: ':port' expected after ']'")
                port_part = rest[1:]
    elif ":" in text:
        addr_part, _, port_part = text.partition(":")
    lo = hi = None
    shown = ""
    if addr_part:
        a, dash, b = addr_part.partition("-")
        la = parse_host(a, ctx.family)
        ha = parse_host(b, ctx.family) if dash else la
        if la is None or ha is None:
            raise ctx.error(f"{ext}: {addr_part!r} is not an {ctx.family} address (range)")
        if ha < la:
            raise ctx.error(f"{ext}: invalid address range {addr_part!r}")
        lo, hi = addr_text(la, ctx.family), addr_text(ha, ctx.family)
        shown = lo if la == ha else f"{lo}-{hi}"
    plo = phi = base = None
    if port_part is not None:
        if not port_part:
            raise ctx.error(f"{ext}: {text!r}: port missing after ':'")
        _need_port_proto(ctx, ext)
        plo, phi, base = parse_ports(ctx, ext, port_part, True)
        ports = _ports_text(plo, phi, base)
        shown = f"[{shown}]:{ports}" if v6 else f"{shown}:{ports}"
    if lo is None and plo is None:
        raise ctx.error(f"{ext}: empty range {text!r}")
    return lo, hi, plo, phi, base, shown


_DNAT_HOOKS: Final = frozenset({PRE, OUT})
_SNAT_HOOKS: Final = frozenset({POST, INP})


def _flags(o: Opts, names: tuple[str, ...]) -> list[str]:
    return [f"--{n}" for n in names if o.has(n)]


def _quick_range(
    text: str, ctx: ParseCtx
) -> tuple[str | None, str | None, int | None, int | None, int | None, str] | None:
    """_parse_range for `a.b.c.d:port` written as iptables-save prints it (None: ask _parse_range)."""
    if ctx.family != "ipv4" or ctx.proto_num not in _PORT_PROTOS or ctx.proto_negated:
        return None
    addr, colon, port_s = text.rpartition(":")
    if not colon or not (port_s.isascii() and port_s.isdigit()) or len(port_s) > 5:
        return None
    if port_s[0] == "0" and port_s != "0":
        return None  # a leading zero: not as iptables-save prints a port
    port = int(port_s)
    if port > 0xFFFF or canonical_ipv4(addr) is None:
        return None
    return addr, addr, port, port, None, text


def _quick_nat(kind: str, to: str, ctx: ParseCtx) -> TargetSpec | None:
    """The common case, kube-proxy's endpoints: only --to-destination a.b.c.d:port."""
    quick = _quick_range(to, ctx)
    if quick is None:
        return None
    lo, hi, plo, phi, base, shown = quick
    req = NatRequest(kind, lo, hi, plo, phi, None, False, False, base)
    opt = "to-destination" if kind == "DNAT" else "to-source"
    return NatTarget(kind, req, f"-j {kind} --{opt} {shown}", _DNAT_HOOKS if kind == "DNAT" else _SNAT_HOOKS)


def _snat_dnat(kind: str, items: list[Option], ctx: ParseCtx) -> TargetSpec:
    opt = "to-destination" if kind == "DNAT" else "to-source"
    if len(items) == 1 and items[0].name == opt and not items[0].negated:
        quick = _quick_nat(kind, items[0].values[0], ctx)
        if quick is not None:
            return quick
    o = Opts(items, ctx, kind)
    to = o.value(opt)
    if to is None:
        raise ctx.error(f"{kind}: option --{opt} is required")
    lo, hi, plo, phi, base, shown = _parse_range(to, ctx, kind)
    flags = _flags(o, ("random", "random-fully", "persistent"))
    text = " ".join([f"-j {kind} --{opt} {shown}", *flags])
    rnd = o.has("random") or o.has("random-fully")
    hooks = _DNAT_HOOKS if kind == "DNAT" else _SNAT_HOOKS
    req = NatRequest(kind, lo, hi, plo, phi, None, rnd, o.has("persistent"), base)
    return NatTarget(kind, req, text, hooks)


@target(
    "DNAT",
    options={"to-destination": V, "random": F, "random-fully": F, "persistent": F},
    why="rewrites the destination (first packet of a connection; replies follow the binding)",
    conntrack=True,
    quick=("to-destination", lambda to, ctx: _quick_nat("DNAT", to, ctx)),
)
def parse_dnat(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    return _snat_dnat("DNAT", items, ctx)


@target(
    "SNAT",
    options={"to-source": V, "random": F, "random-fully": F, "persistent": F},
    why="rewrites the source; from a range, the address the kernel hashes the tuple to",
    conntrack=True,
    quick=("to-source", lambda to, ctx: _quick_nat("SNAT", to, ctx)),
)
def parse_snat(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    return _snat_dnat("SNAT", items, ctx)


def _ports_only(kind: str, items: list[Option], ctx: ParseCtx, flags: tuple[str, ...]) -> TargetSpec:
    o = Opts(items, ctx, kind)
    ports = o.value("to-ports")
    parts = [f"-j {kind}"]
    plo = phi = None
    if ports is not None:
        _need_port_proto(ctx, kind)
        plo, phi, _ = parse_ports(ctx, kind, ports, False)
        parts.append(f"--to-ports {_ports_text(plo, phi, None)}")
    parts.extend(_flags(o, flags))
    rnd = o.has("random") or o.has("random-fully")
    hooks = frozenset({POST}) if kind == "MASQUERADE" else frozenset({PRE, OUT})
    return NatTarget(kind, NatRequest(kind, None, None, plo, phi, None, rnd, False), " ".join(parts), hooks)


@target(
    "MASQUERADE",
    options={"to-ports": V, "random": F, "random-fully": F},
    exactness="host",
    why="source becomes the address of the outgoing interface (from the host context)",
    conntrack=True,
)
def parse_masquerade(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    return _ports_only("MASQUERADE", items, ctx, ("random", "random-fully"))


@target(
    "REDIRECT",
    options={"to-ports": V, "random": F},
    exactness="host",
    why="destination becomes the primary address of the incoming interface (from the host context)",
    conntrack=True,
)
def parse_redirect(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    return _ports_only("REDIRECT", items, ctx, ("random",))


@target("NETMAP", options={"to": V}, why="maps the network part of the address (1:1)", conntrack=True)
def parse_netmap(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "NETMAP")
    to = o.value("to")
    if to is None:
        raise ctx.error("NETMAP: option --to is required")
    net, mask = parse_addr_mask(to, ctx.family, ctx, "NETMAP --to")
    n = prefix_len(mask, ctx.family)
    if n is None:
        raise ctx.error(f"NETMAP --to {to}: the mask must be a prefix")
    text = f"-j NETMAP --to {addr_text(net, ctx.family)}/{n}"
    return NatTarget("NETMAP", NatRequest("NETMAP", netmap=(net, mask)), text, frozenset({PRE, POST, OUT, INP}))
