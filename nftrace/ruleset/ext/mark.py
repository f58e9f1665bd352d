"""Packet and connection marks: -m mark, -m connmark, -j MARK, -j CONNMARK."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nftrace.ruleset.ext.conntrack import has_ct
from nftrace.ruleset.model import MatchOutcome, MatchSpec, Option, TargetResult, TargetSpec
from nftrace.ruleset.registry import Opts, ParseCtx, int_value, match, target

if TYPE_CHECKING:
    from nftrace.engine.env import Env
    from nftrace.engine.packet import Packet

FULL = 0xFFFFFFFF


def value_mask(text: str, ctx: ParseCtx, ext: str, opt: str, default_mask: int = FULL) -> tuple[int, int]:
    v, _, m = text.partition("/")
    val = int_value(ctx, ext, opt, v)
    mask = int_value(ctx, ext, opt, m) if m else default_mask
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
    o.done()
    if opt is None:
        raise ctx.error(f"{name}: --mark is required")
    val, mask = value_mask(opt.values[0], ctx, name, "mark")
    shown = hex(val) if mask == FULL else f"{hex(val)}/{hex(mask)}"
    return MarkMatch(
        name == "connmark", val & mask, mask, opt.negated, f"-m {name} {'! ' if opt.negated else ''}--mark {shown}"
    )


@match("mark")
def parse_mark(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    return _mark_match("mark", items, ctx)


@match("connmark")
def parse_connmark(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    return _mark_match("connmark", items, ctx)


class MarkTarget(TargetSpec):
    name = "MARK"

    def __init__(self, op: str, value: int, mask: int, text: str) -> None:
        self.op, self.value, self.mask, self.text = op, value, mask, text

    def apply(self, pkt: Packet, env: Env) -> TargetResult:
        before = pkt.mark
        if self.op == "xset":
            pkt.mark = ((pkt.mark & ~self.mask) ^ self.value) & FULL
        elif self.op == "set":
            pkt.mark = ((pkt.mark & ~self.mask) | self.value) & FULL
        elif self.op == "and":
            pkt.mark &= self.value
        elif self.op == "or":
            pkt.mark |= self.value
        elif self.op == "xor":
            pkt.mark ^= self.value
        return TargetResult("CONTINUE", note=f"mark {hex(before)} -> {hex(pkt.mark)}")


@target("MARK")
def parse_mark_target(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "MARK")
    found = []
    for op, names in (
        ("xset", ("set-xmark",)),
        ("set", ("set-mark",)),
        ("and", ("and-mark",)),
        ("or", ("or-mark",)),
        ("xor", ("xor-mark",)),
    ):
        opt = o.get(*names, negatable=False)
        if opt is not None:
            found.append((op, opt))
    o.done()
    if len(found) != 1:
        raise ctx.error("MARK: exactly one of --set-xmark, --set-mark, --and-mark, --or-mark, --xor-mark is required")
    op, opt = found[0]
    if op in ("and", "or", "xor"):
        val = int_value(ctx, "MARK", opt.name, opt.values[0])
        mask = FULL
    else:
        val, mask = value_mask(opt.values[0], ctx, "MARK", opt.name)
    return MarkTarget(op, val, mask, f"-j MARK --{opt.name} {opt.values[0]}")


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


@target("CONNMARK")
def parse_connmark_target(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "CONNMARK")
    xset = o.get("set-xmark", negatable=False)
    sset = o.get("set-mark", negatable=False)
    andm = o.get("and-mark", negatable=False)
    orm = o.get("or-mark", negatable=False)
    xorm = o.get("xor-mark", negatable=False)
    save = o.flag("save-mark")
    restore = o.flag("restore-mark")
    mask_o = o.value("mask")
    nfmask_o = o.value("nfmask")
    ctmask_o = o.value("ctmask")
    o.value("left-shift-mark", "right-shift-mark")
    o.done()
    text = "-j CONNMARK " + " ".join("--" + i.name + "".join(" " + v for v in i.values) for i in items)
    mask = int_value(ctx, "CONNMARK", "mask", mask_o) if mask_o else FULL
    nfmask = int_value(ctx, "CONNMARK", "nfmask", nfmask_o) if nfmask_o else mask
    ctmask = int_value(ctx, "CONNMARK", "ctmask", ctmask_o) if ctmask_o else mask
    if xset is not None:
        v, m = value_mask(xset.values[0], ctx, "CONNMARK", "set-xmark")
        return ConnmarkTarget("set", v, m, FULL, text)
    if sset is not None:
        v, m = value_mask(sset.values[0], ctx, "CONNMARK", "set-mark")
        # --set-mark v/m == --set-xmark v/(m|v)
        return ConnmarkTarget("set", v, m | v, FULL, text)
    if andm is not None:
        v = int_value(ctx, "CONNMARK", "and-mark", andm.values[0])
        return ConnmarkTarget("set", 0, ~v & FULL, FULL, text)
    if orm is not None:
        v = int_value(ctx, "CONNMARK", "or-mark", orm.values[0])
        return ConnmarkTarget("set", v, v, FULL, text)
    if xorm is not None:
        v = int_value(ctx, "CONNMARK", "xor-mark", xorm.values[0])
        return ConnmarkTarget("set", v, 0, FULL, text)
    if save:
        return ConnmarkTarget("save", 0, ctmask, nfmask, text)
    if restore:
        return ConnmarkTarget("restore", 0, ctmask, nfmask, text)
    raise ctx.error("CONNMARK: one of --set-xmark, --set-mark, --save-mark, --restore-mark ... is required")
