"""NAT targets: DNAT SNAT MASQUERADE REDIRECT NETMAP.

A NAT target ends the nat chain with ACCEPT (as the kernel's trace reports)
and records a NatRequest; the engine sets up the binding and rewrites the
packet when the nat table's hook function finishes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nftrace.ruleset.ext.basic import parse_prefix
from nftrace.ruleset.model import Option, TargetResult, TargetSpec
from nftrace.ruleset.registry import Opts, ParseCtx, target

if TYPE_CHECKING:
    from nftrace.engine.env import Env
    from nftrace.engine.packet import Packet


@dataclass(frozen=True, slots=True)
class NatRequest:
    kind: str  # DNAT SNAT MASQUERADE REDIRECT NETMAP
    addr_lo: str | None = None
    addr_hi: str | None = None
    port_lo: int | None = None
    port_hi: int | None = None
    netmap: tuple[int, int] | None = None  # (network int, mask int) for NETMAP
    random: bool = False
    persistent: bool = False

    @property
    def manip(self) -> str:
        """'dst' or 'src' — fixed by the kind, except NETMAP (decided by hook)."""
        return "dst" if self.kind in ("DNAT", "REDIRECT") else "src"


class NatTarget(TargetSpec):
    def __init__(self, kind: str, req: NatRequest, text: str) -> None:
        self.kind = kind
        self.req = req
        self.text = text

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.kind

    def apply(self, pkt: Packet, env: Env) -> TargetResult:
        return TargetResult("ACCEPT", nat=self.req)


def _parse_range(text: str, ctx: ParseCtx, ext: str) -> tuple[str | None, str | None, int | None, int | None]:
    """'[ipaddr[-ipaddr]][:port[-port]]' (IPv6: '[addr]:port')."""
    addr_part, port_part = text, ""
    if ctx.family == "ipv6":
        if text.startswith("["):
            addr_part, _, rest = text[1:].partition("]")
            port_part = rest[1:] if rest.startswith(":") else ""
    elif ":" in text:
        addr_part, _, port_part = text.partition(":")
    lo = hi = None
    if addr_part:
        a, _, b = addr_part.partition("-")
        try:
            la = ipaddress.ip_address(a)
            ha = ipaddress.ip_address(b) if b else la
        except ValueError:
            raise ctx.error(f"{ext}: invalid address {addr_part!r}") from None
        if (la.version == 4) != (ctx.family == "ipv4"):
            raise ctx.error(f"{ext}: {addr_part!r} is not an {ctx.family} address")
        if int(ha) < int(la):
            raise ctx.error(f"{ext}: invalid address range {addr_part!r}")
        lo, hi = str(la), str(ha)
    plo = phi = None
    if port_part:
        p1, _, p2 = port_part.replace(":", "-").partition("-")
        p2 = p2.split("/")[0]
        try:
            plo = int(p1)
            phi = int(p2) if p2 else plo
        except ValueError:
            raise ctx.error(f"{ext}: invalid port {port_part!r}") from None
        if not (0 < plo <= 65535 and plo <= phi <= 65535):
            raise ctx.error(f"{ext}: invalid port range {port_part!r}")
        if ctx.protocol not in ("tcp", "udp", "sctp", "udplite", "dccp") or ctx.proto_negated:
            raise ctx.error(f"{ext}: a port needs '-p tcp', '-p udp', '-p sctp' or '-p dccp'")
    if lo is None and plo is None:
        raise ctx.error(f"{ext}: empty range {text!r}")
    return lo, hi, plo, phi


def _text(name: str, items: list[Option]) -> str:
    return f"-j {name} " + " ".join("--" + i.name + "".join(" " + v for v in i.values) for i in items)


@target("DNAT", "SNAT")
def parse_snat_dnat(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    # which one we are is known from the option name
    names = {i.name for i in items}
    kind = "DNAT" if "to-destination" in names else "SNAT" if "to-source" in names else None
    if kind is None:
        raise ctx.error("DNAT needs --to-destination / SNAT needs --to-source")
    o = Opts(items, ctx, kind)
    to = o.get("to-destination" if kind == "DNAT" else "to-source", negatable=False)
    rnd = o.flag("random") | o.flag("random-fully")
    pers = o.flag("persistent")
    o.done()
    assert to is not None
    if ctx.table != "nat":
        raise ctx.error(f"{kind} is only valid in the nat table")
    lo, hi, plo, phi = _parse_range(to.values[0], ctx, kind)
    return NatTarget(kind, NatRequest(kind, lo, hi, plo, phi, None, rnd, pers), _text(kind, items))


def _ports_only(kind: str, items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, kind)
    ports = o.value("to-ports")
    to_dst = o.value("to-destination") if kind == "REDIRECT" else None
    rnd = o.flag("random") | o.flag("random-fully")
    o.done()
    del to_dst
    if ctx.table != "nat":
        raise ctx.error(f"{kind} is only valid in the nat table")
    plo = phi = None
    if ports:
        _, _, plo, phi = _parse_range(":" + ports if ctx.family == "ipv4" else "[::]:" + ports, ctx, kind)
    return NatTarget(kind, NatRequest(kind, None, None, plo, phi, None, rnd, False), _text(kind, items))


@target("MASQUERADE")
def parse_masquerade(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    return _ports_only("MASQUERADE", items, ctx)


@target("REDIRECT")
def parse_redirect(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    return _ports_only("REDIRECT", items, ctx)


@target("NETMAP")
def parse_netmap(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "NETMAP")
    to = o.value("to")
    o.done()
    if to is None:
        raise ctx.error("NETMAP: --to address[/mask] is required")
    if ctx.table != "nat":
        raise ctx.error("NETMAP is only valid in the nat table")
    net, mask, _ = parse_prefix(to, ctx.family, ctx, "NETMAP --to")
    return NatTarget("NETMAP", NatRequest("NETMAP", netmap=(net, mask)), _text("NETMAP", items))
