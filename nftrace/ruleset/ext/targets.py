"""Terminal and observing targets: REJECT, NFQUEUE, LOG, NFLOG, ULOG, TRACE,
TCPMSS, CHECKSUM, TPROXY, DSCP/TOS/TTL/CLASSIFY/SET and friends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nftrace.ruleset.ext.mark import value_mask
from nftrace.ruleset.model import Option, TargetResult, TargetSpec
from nftrace.ruleset.registry import Opts, ParseCtx, int_value, target

if TYPE_CHECKING:
    from nftrace.engine.env import Env
    from nftrace.engine.packet import Packet


def _text(name: str, items: list[Option]) -> str:
    parts = [f"-j {name}"]
    for i in items:
        vals = " ".join(f'"{v}"' if (" " in v or not v) else v for v in i.values)
        parts.append(f"--{i.name}" + (f" {vals}" if vals else ""))
    return " ".join(parts)


class SimpleTarget(TargetSpec):
    """A target whose effect is a fixed verdict and a note."""

    def __init__(self, name: str, verdict: str, text: str, note: str | None = None, unknown: str | None = None):
        self._name = name
        self.verdict = verdict
        self.text = text
        self.note = note
        self.unknown = unknown

    @property
    def name(self) -> str:  # type: ignore[override]
        return self._name

    def apply(self, pkt: Packet, env: Env) -> TargetResult:
        return TargetResult(self.verdict, note=self.note, unknown=self.unknown)


REJECT_TYPES_V4 = {
    "icmp-net-unreachable", "net-unreach", "icmp-host-unreachable", "host-unreach",
    "icmp-port-unreachable", "port-unreach", "icmp-proto-unreachable", "proto-unreach",
    "icmp-net-prohibited", "net-prohib", "icmp-host-prohibited", "host-prohib",
    "icmp-admin-prohibited", "admin-prohib", "tcp-reset", "tcp-rst",
}  # fmt: skip
REJECT_TYPES_V6 = {
    "icmp6-no-route", "no-route", "icmp6-adm-prohibited", "adm-prohibited", "icmp6-addr-unreachable",
    "addr-unreach", "icmp6-port-unreachable", "port-unreach", "tcp-reset", "tcp-rst",
    "icmp6-policy-fail", "policy-fail", "icmp6-reject-route", "reject-route",
}  # fmt: skip


@target("REJECT")
def parse_reject(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "REJECT")
    w = o.value("reject-with")
    o.done()
    allowed = REJECT_TYPES_V4 if ctx.family == "ipv4" else REJECT_TYPES_V6
    if w is not None and w not in allowed:
        raise ctx.error(f"REJECT: unknown --reject-with {w!r}")
    if w in ("tcp-reset", "tcp-rst") and (ctx.protocol != "tcp" or ctx.proto_negated):
        raise ctx.error("REJECT --reject-with tcp-reset needs '-p tcp'")
    default = "icmp-port-unreachable" if ctx.family == "ipv4" else "icmp6-port-unreachable"
    kind = w or default
    return SimpleTarget("REJECT", "DROP", _text("REJECT", items), note=f"REJECT answers with {kind}")


@target("NFQUEUE")
def parse_nfqueue(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "NFQUEUE")
    num = o.value("queue-num")
    bal = o.value("queue-balance")
    bypass = o.flag("queue-bypass")
    o.flag("fail-open")
    o.flag("queue-cpu-fanout")
    o.done()
    q = bal or (str(int_value(ctx, "NFQUEUE", "queue-num", num, 0, 65535)) if num else "0")
    why = f"queued to userspace (queue {q}): the program listening there decides the packet's fate"
    if bypass:
        why += "; with no listener it continues (--queue-bypass)"
    return SimpleTarget("NFQUEUE", "QUEUE", _text("NFQUEUE", items), unknown=why)


@target("LOG")
def parse_log(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "LOG")
    prefix = o.value("log-prefix")
    level = o.value("log-level")
    for f in ("log-tcp-sequence", "log-tcp-options", "log-ip-options", "log-uid", "log-macdecode"):
        o.flag(f)
    o.done()
    if prefix is not None and len(prefix) > 29:
        raise ctx.error("LOG: --log-prefix is longer than 29 characters")
    levels = {"emerg", "alert", "crit", "error", "err", "warning", "warn", "notice", "info", "debug", "panic"}
    if level is not None and not (level.isdigit() and int(level) <= 7) and level not in levels:
        raise ctx.error(f"LOG: invalid --log-level {level!r}")
    note = f'logs "{prefix}"' if prefix else "logs to the kernel log"
    return SimpleTarget("LOG", "CONTINUE", _text("LOG", items), note=note)


@target("NFLOG")
def parse_nflog(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "NFLOG")
    g = o.value("nflog-group")
    prefix = o.value("nflog-prefix")
    o.value("nflog-range")
    o.value("nflog-size")
    o.value("nflog-threshold")
    o.done()
    if prefix is not None and len(prefix) > 63:
        raise ctx.error("NFLOG: --nflog-prefix is longer than 63 characters")
    return SimpleTarget("NFLOG", "CONTINUE", _text("NFLOG", items), note=f"logs to nflog group {g or 0}")


@target("ULOG")
def parse_ulog(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    return SimpleTarget("ULOG", "CONTINUE", _text("ULOG", items), note="ULOG (removed from modern kernels)")


@target("TRACE")
def parse_trace(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    Opts(items, ctx, "TRACE").done()
    if ctx.table != "raw":
        raise ctx.error("TRACE is only valid in the raw table")
    return SimpleTarget("TRACE", "CONTINUE", "-j TRACE", note="kernel tracing enabled for this packet")


@target("TCPMSS")
def parse_tcpmss(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "TCPMSS")
    s = o.value("set-mss")
    c = o.flag("clamp-mss-to-pmtu")
    o.done()
    if (s is None) == (not c):
        raise ctx.error("TCPMSS: exactly one of --set-mss or --clamp-mss-to-pmtu is required")
    if ctx.protocol != "tcp":
        raise ctx.error("TCPMSS: needs '-p tcp'")
    return SimpleTarget("TCPMSS", "CONTINUE", _text("TCPMSS", items), note="adjusts the TCP MSS option of SYNs")


@target("CHECKSUM")
def parse_checksum(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "CHECKSUM")
    o.flag("checksum-fill")
    o.done()
    return SimpleTarget("CHECKSUM", "CONTINUE", _text("CHECKSUM", items))


class TproxyTarget(TargetSpec):
    name = "TPROXY"

    def __init__(self, text: str, mark: tuple[int, int] | None) -> None:
        self.text = text
        self.mark = mark

    def apply(self, pkt: Packet, env: Env) -> TargetResult:
        return TargetResult(
            "ACCEPT",
            unknown=f"{self.text}: accepted (and marked) only if a transparent socket listens, else dropped",
        )


@target("TPROXY")
def parse_tproxy(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "TPROXY")
    port = o.value("on-port")
    o.value("on-ip")
    m = o.value("tproxy-mark")
    o.done()
    if port is None:
        raise ctx.error("TPROXY: --on-port is required")
    if ctx.table != "mangle":
        raise ctx.error("TPROXY is only valid in the mangle table")
    mark = value_mask(m, ctx, "TPROXY", "tproxy-mark") if m else None
    return TproxyTarget(_text("TPROXY", items), mark)


class FieldTarget(TargetSpec):
    """DSCP/TOS/TTL/HL: rewrite a header field, then continue."""

    def __init__(self, name: str, text: str, field: str, op: str, value: int, mask: int = 0xFF) -> None:
        self._name, self.text, self.field, self.op, self.value, self.mask = name, text, field, op, value, mask

    @property
    def name(self) -> str:  # type: ignore[override]
        return self._name

    def apply(self, pkt: Packet, env: Env) -> TargetResult:
        if self.field == "dscp":
            pkt.tos = (pkt.tos & 0x03) | (self.value << 2)
        elif self.field == "tos":
            pkt.tos = ((pkt.tos & ~self.mask) ^ self.value) & 0xFF
        elif self.field == "ttl":
            if self.op == "set":
                pkt.ttl = self.value
            elif self.op == "inc":
                pkt.ttl = min(255, pkt.ttl + self.value)
            else:
                pkt.ttl = max(0, pkt.ttl - self.value)
        return TargetResult("CONTINUE")


@target("DSCP")
def parse_dscp_target(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "DSCP")
    v = o.value("set-dscp")
    c = o.value("set-dscp-class")
    o.done()
    if v is None and c is None:
        raise ctx.error("DSCP: --set-dscp or --set-dscp-class is required")
    val = int_value(ctx, "DSCP", "set-dscp", v, 0, 63) if v else 0
    return FieldTarget("DSCP", _text("DSCP", items), "dscp", "set", val)


@target("TOS")
def parse_tos_target(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "TOS")
    x = o.value("set-tos", "set-xtos")
    a = o.value("and-tos")
    r = o.value("or-tos")
    xo = o.value("xor-tos")
    o.done()
    if x is not None:
        val, mask = value_mask(x, ctx, "TOS", "set-tos", 0xFF)
        return FieldTarget("TOS", _text("TOS", items), "tos", "set", val, mask)
    if a is not None:
        v = int_value(ctx, "TOS", "and-tos", a, 0, 255)
        return FieldTarget("TOS", _text("TOS", items), "tos", "set", 0, ~v & 0xFF)
    if r is not None:
        v = int_value(ctx, "TOS", "or-tos", r, 0, 255)
        return FieldTarget("TOS", _text("TOS", items), "tos", "set", v, v)
    if xo is not None:
        v = int_value(ctx, "TOS", "xor-tos", xo, 0, 255)
        return FieldTarget("TOS", _text("TOS", items), "tos", "set", v, 0)
    raise ctx.error("TOS: one of --set-tos, --and-tos, --or-tos, --xor-tos is required")


def _ttl_target(name: str, items: list[Option], ctx: ParseCtx) -> TargetSpec:
    pre = "ttl" if name == "TTL" else "hl"
    o = Opts(items, ctx, name)
    s = o.value(f"{pre}-set")
    i = o.value(f"{pre}-inc")
    d = o.value(f"{pre}-dec")
    o.done()
    if ctx.table != "mangle":
        raise ctx.error(f"{name} is only valid in the mangle table")
    for op, v in (("set", s), ("inc", i), ("dec", d)):
        if v is not None:
            return FieldTarget(name, _text(name, items), "ttl", op, int_value(ctx, name, f"{pre}-{op}", v, 0, 255))
    raise ctx.error(f"{name}: one of --{pre}-set, --{pre}-inc, --{pre}-dec is required")


@target("TTL")
def parse_ttl_target(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    return _ttl_target("TTL", items, ctx)


@target("HL")
def parse_hl_target(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    return _ttl_target("HL", items, ctx)


def _continue(name: str, note: str | None = None) -> None:
    def parse(items: list[Option], ctx: ParseCtx) -> TargetSpec:
        return SimpleTarget(name, "CONTINUE", _text(name, items), note=note)

    target(name, exactness="exact", why="non-terminating; does not change what nftrace models")(parse)


for _name, _note in (
    ("CLASSIFY", "sets the traffic-control class"),
    ("SECMARK", "sets the security mark"),
    ("CONNSECMARK", "copies the security mark"),
    ("SET", "adds/removes the packet's addresses in an ipset"),
    ("IDLETIMER", None),
    ("LED", None),
    ("AUDIT", "writes an audit record"),
    ("RATEEST", None),
    ("TEE", "clones the packet to another gateway"),
    ("ECN", None),
    ("TCPOPTSTRIP", None),
):
    _continue(_name, _note)
