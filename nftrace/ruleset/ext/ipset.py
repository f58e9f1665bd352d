"""-m set: membership of the packet's addresses/ports in ipsets (needs --ipsets)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nftrace.ruleset.ext.targets import set_flags
from nftrace.ruleset.model import MatchOutcome, MatchSpec, Option, Unknown
from nftrace.ruleset.registry import FI, V2I, VI, F, Opts, ParseCtx, V, match
from nftrace.ruleset.values import uint, word

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


_SET_CMP = ("packets-eq", "packets-lt", "packets-gt", "bytes-eq", "bytes-lt", "bytes-gt")


@match(
    "set",
    options={"match-set": V2I, "return-nomatch": F, "update-counters": FI, "update-subcounters": FI,
             "packets-eq": VI, "packets-lt": V, "packets-gt": V, "bytes-eq": VI, "bytes-lt": V, "bytes-gt": V},
    aliases={"set": "match-set"},
    exactness="host",
    why="exact given the ipset contents (--ipsets); unknown without them",
)  # fmt: skip
def parse_set(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "set")
    opt = o.get("match-set")
    if opt is None:
        raise ctx.error("set: --match-set NAME src|dst[,...] is required")
    name, dirs = opt.values
    if len(name) > 31:
        raise ctx.error(f"set: set name {name!r} is longer than 31 characters")
    flags = tuple(set_flags(ctx, "set", dirs).split(","))
    parts = [f"-m set {'! ' if opt.negated else ''}--match-set {word(name)} {dirs}"]
    if o.has("return-nomatch"):
        parts.append("--return-nomatch")
    for n in ("update-counters", "update-subcounters"):
        u = o.get(n)
        if u is not None and u.negated:
            parts.append(f"! --{n}")
    for n in _SET_CMP:
        c = o.get(n)
        if c is not None:
            parts.append(f"{'! ' if c.negated else ''}--{n} {uint(ctx, 'set', n, c.values[0], 0, 2**64 - 1)}")
    return SetMatch(name, flags, opt.negated, " ".join(parts))
