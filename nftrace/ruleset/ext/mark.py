"""Packet and connection marks: -m mark, -m connmark, -j MARK, -j CONNMARK."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nftrace.ruleset.ext.conntrack import has_ct
from nftrace.ruleset.model import MatchOutcome, MatchSpec, Option, TargetResult, TargetSpec
from nftrace.ruleset.registry import VI, F, Opts, ParseCtx, V, match, target
from nftrace.ruleset.values import hex_mark, uint

if TYPE_CHECKING:
    from nftrace.engine.env import Env
    from nftrace.engine.packet import Packet

FULL = 0xFFFFFFFF


def value_mask(text: str, ctx: ParseCtx, ext: str, opt: str, default_mask: int = FULL) -> tuple[int, int]:
    """xtables_parse_mark_mask: `value[/mask]`, each a 32-bit number."""
    v, slash, m = text.partition("/")
    val = uint(ctx, ext, opt, v)
    mask = uint(ctx, ext, opt, m) if slash else default_mask
    return val, mask


class MarkMatch(MatchSpec):
    __slots__ = ("conn", "value", "mask", "neg", "text")

    def __init__(self, conn: bool, value: int, mask: int, neg: bool, text: str) -> None:
        self.conn, self.value, self.mask, self.neg, self.text = conn, value, mask, neg, text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        if self.conn:
            if not has_ct(pkt):
                return False  # no conntrack entry: connmark never matches, even negated
            v = pkt.ct_mark
        else:
            v = pkt.mark
        return ((v & self.mask) == self.value) != self.neg

    def why_not(self, pkt: Packet, env: Env) -> str:
        if self.conn:
            return f"{self.text} (connmark {hex(pkt.ct_mark)})" if has_ct(pkt) else f"{self.text} (no connection)"
        return f"{self.text} (mark {hex(pkt.mark)})"


def _mark_match(name: str, items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, name)
    opt = o.get("mark")
    if opt is None:
        raise ctx.error(f'{name}: option "--mark" must be specified')
    val, mask = value_mask(opt.values[0], ctx, name, "mark")
    # the kernel compares (mark & mask) == value: a value with bits outside the mask never matches
    text = f"-m {name} {'! ' if opt.negated else ''}--mark {hex_mark(val, mask)}"
    return MarkMatch(name == "connmark", val, mask, opt.negated, text)


@match("mark", options={"mark": VI}, why="the packet's mark, as set by earlier rules")
def parse_mark(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    return _mark_match("mark", items, ctx)


@match("connmark", options={"mark": VI}, why="the connection's mark, as set by earlier rules", conntrack=True)
def parse_connmark(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    return _mark_match("connmark", items, ctx)


class MarkTarget(TargetSpec):
    """The kernel's MARK (revision 2): mark = (mark & ~mask) ^ value; every option reduces to that."""

    name = "MARK"

    def __init__(self, value: int, mask: int, text: str) -> None:
        self.op = "xset"
        self.value, self.mask, self.text = value, mask, text

    def apply(self, pkt: Packet, env: Env) -> TargetResult:
        before = pkt.mark
        pkt.mark = ((pkt.mark & ~self.mask) ^ self.value) & FULL
        return TargetResult("CONTINUE", note=f"mark {hex(before)} -> {hex(pkt.mark)}")


def _xmark(o: Opts, ctx: ParseCtx, ext: str, prefix: str = "") -> tuple[int, int] | None:
    """--set-xmark / --set-mark / --and-mark / --or-mark / --xor-mark -> (value, mask) as the kernel stores it."""
    names = [f"set-x{prefix}mark", f"set-{prefix}mark", f"and-{prefix}mark", f"or-{prefix}mark", f"xor-{prefix}mark"]
    got = [n for n in names if o.has(n)]
    if not got:
        return None
    if len(got) > 1:
        raise ctx.error(f"{ext}: --{got[0]} and --{got[1]} cannot be used together")
    n = got[0]
    text = o.value(n) or ""
    if n.startswith("set-x"):
        return value_mask(text, ctx, ext, n)
    if n.startswith("set-"):
        v, m = value_mask(text, ctx, ext, n)
        return v, m | v
    v = uint(ctx, ext, n, text)
    if n.startswith("and-"):
        return 0, ~v & FULL
    if n.startswith("or-"):
        return v, v
    return v, 0


@target(
    "MARK",
    options={"set-xmark": V, "set-mark": V, "and-mark": V, "or-mark": V, "xor-mark": V},
    why="sets the packet mark (later -m mark, routing by fwmark)",
)
def parse_mark_target(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "MARK")
    vm = _xmark(o, ctx, "MARK")
    if vm is None:
        raise ctx.error("MARK: one of --set-xmark, --set-mark, --and-mark, --or-mark, --xor-mark is required")
    v, m = vm
    return MarkTarget(v, m, f"-j MARK --set-xmark {v:#x}/{m:#x}")


class ConnmarkTarget(TargetSpec):
    name = "CONNMARK"

    def __init__(self, op: str, value: int, ctmask: int, nfmask: int, text: str) -> None:
        self.op, self.value, self.ctmask, self.nfmask, self.text = op, value, ctmask, nfmask, text

    def apply(self, pkt: Packet, env: Env) -> TargetResult:
        if not has_ct(pkt):
            return TargetResult("CONTINUE", note="no connection: CONNMARK does nothing")
        if self.op == "set":
            new = ((pkt.ct_mark & ~self.ctmask) ^ self.value) & FULL
            note = f"connmark {hex(pkt.ct_mark)} -> {hex(new)}"
            pkt.ct_mark = new
        elif self.op == "save":
            new = ((pkt.ct_mark & ~self.ctmask) ^ (pkt.mark & self.nfmask)) & FULL
            note = f"connmark {hex(pkt.ct_mark)} -> {hex(new)} (saved from mark)"
            pkt.ct_mark = new
        else:  # restore
            new = ((pkt.mark & ~self.nfmask) ^ (pkt.ct_mark & self.ctmask)) & FULL
            note = f"mark {hex(pkt.mark)} -> {hex(new)} (restored from connmark)"
            pkt.mark = new
        return TargetResult("CONTINUE", note=note)


@target(
    "CONNMARK",
    options={"set-xmark": V, "set-mark": V, "and-mark": V, "or-mark": V, "xor-mark": V, "save-mark": F,
             "restore-mark": F, "mask": V, "nfmask": V, "ctmask": V, "left-shift-mark": V,
             "right-shift-mark": V},
    why="sets, saves or restores the connection mark",
    conntrack=True,
)  # fmt: skip
def parse_connmark_target(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "CONNMARK")
    vm = _xmark(o, ctx, "CONNMARK")
    save, restore = o.has("save-mark"), o.has("restore-mark")
    modes = [m for m, on in (("set", vm is not None), ("save", save), ("restore", restore)) if on]
    if not modes:
        raise ctx.error("CONNMARK: one of --set-xmark, --set-mark, --save-mark, --restore-mark ... is required")
    if len(modes) > 1:
        raise ctx.error(f"CONNMARK: --{modes[0]}-mark and --{modes[1]}-mark cannot be used together")
    mask_o = o.value("mask")
    mask = uint(ctx, "CONNMARK", "mask", mask_o) if mask_o is not None else FULL
    nf_o, ct_o = o.value("nfmask"), o.value("ctmask")
    nfmask = uint(ctx, "CONNMARK", "nfmask", nf_o) if nf_o is not None else mask
    ctmask = uint(ctx, "CONNMARK", "ctmask", ct_o) if ct_o is not None else mask
    shift = ""
    for sname in ("left-shift-mark", "right-shift-mark"):
        sv = o.value(sname)
        if sv is not None:
            n = uint(ctx, "CONNMARK", sname, sv, 0, 31)
            if n:
                shift += f" --{sname} {n}"
    if vm is not None:
        if mask_o is not None or nf_o is not None or ct_o is not None:
            raise ctx.error("CONNMARK: --mask/--nfmask/--ctmask go with --save-mark/--restore-mark")
        v, m = vm
        return ConnmarkTarget("set", v, m, FULL, f"-j CONNMARK --set-xmark {v:#x}/{m:#x}")
    mode = modes[0]
    text = f"-j CONNMARK --{mode}-mark --nfmask {nfmask:#x} --ctmask {ctmask:#x}{shift}"
    return ConnmarkTarget(mode, 0, ctmask, nfmask, text)
