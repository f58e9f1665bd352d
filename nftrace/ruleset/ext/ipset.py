"""-m set: membership of the packet's addresses/ports in ipsets (needs --ipsets)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nftrace.ruleset.model import MatchOutcome, MatchSpec, Option, Unknown
from nftrace.ruleset.registry import ParseCtx, match

if TYPE_CHECKING:
    from nftrace.engine.env import Env
    from nftrace.engine.packet import Packet


class SetMatch(MatchSpec):
    __slots__ = ("set", "flags", "neg", "text")

    def __init__(self, name: str, flags: tuple[str, ...], neg: bool, text: str) -> None:
        self.set, self.flags, self.neg, self.text = name, flags, neg, text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        if env.ipsets is None or env.ipsets.get(self.set) is None:
            return Unknown(f"{self.text}: contents of ipset '{self.set}' not known (give --ipsets FILE)")
        vals: list[tuple[str, str | int | None]] = []
        for f in self.flags:
            ip = pkt.src if f == "src" else pkt.dst
            port = pkt.sport if f == "src" else pkt.dport
            s = env.ipsets.get(self.set)
            assert s is not None
            dim = s.dims[len(vals)] if len(vals) < len(s.dims) else "ip"
            if dim == "port":
                vals.append(("port", f"{pkt.proto}:{port}"))
            elif dim == "iface":
                vals.append(("iface", pkt.iif if f == "src" else pkt.oif))
            else:
                vals.append(("ip", ip))
        r = env.ipsets.member(self.set, vals)
        if r is None:
            return Unknown(f"{self.text}: ipset type not modelled")
        return r != self.neg


@match("set", exactness="exact", why="needs the ipset contents (--ipsets)")
def parse_set(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    ms = [i for i in items if i.name in ("match-set", "set")]
    for i in items:
        if i.name not in (
            "match-set",
            "set",
            "return-nomatch",
            "update-counters",
            "update-subcounters",
            "packets-eq",
            "packets-lt",
            "packets-gt",
            "bytes-eq",
            "bytes-lt",
            "bytes-gt",
        ):
            raise ctx.error(f"set: unknown option --{i.name}")
    if len(ms) != 1 or len(ms[0].values) != 2:
        raise ctx.error("set: --match-set NAME src|dst[,...] is required")
    opt = ms[0]
    flags = tuple(opt.values[1].split(","))
    if any(f not in ("src", "dst") for f in flags):
        raise ctx.error(f"set: invalid direction flags {opt.values[1]!r}")
    text = f"-m set {'! ' if opt.negated else ''}--match-set {opt.values[0]} {opt.values[1]}"
    return SetMatch(opt.values[0], flags, opt.negated, text)
