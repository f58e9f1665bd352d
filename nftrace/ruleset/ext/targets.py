"""Terminal and observing targets: REJECT, NFQUEUE, LOG, NFLOG, TRACE, TCPMSS,
TPROXY, DSCP/TOS/TTL/HL, and the non-terminating targets whose effect nftrace
does not model (CLASSIFY, SECMARK, SET, AUDIT, ...): each is validated as
iptables validates it and prints back as iptables-save prints it."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from nftrace.ruleset.ext.mark import value_mask
from nftrace.ruleset.ext.misc import dscp_value, tos_value_mask
from nftrace.ruleset.model import Option, TargetResult, TargetSpec
from nftrace.ruleset.registry import V2, F, Opts, ParseCtx, V, target
from nftrace.ruleset.values import (
    addr_text,
    parse_addr_mask,
    parse_host,
    port,
    prefix_len,
    quote_always,
    save_string,
    uint,
    uint_range,
    word,
)

if TYPE_CHECKING:
    from nftrace.engine.env import Env
    from nftrace.engine.packet import Packet

PRE, INP, FWD, OUT, POST = "PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"


class SimpleTarget(TargetSpec):
    """A target whose effect is a fixed verdict and a note."""

    def __init__(
        self,
        name: str,
        verdict: str,
        text: str,
        note: str | None = None,
        unknown: str | None = None,
        tables: tuple[str, ...] | None = None,
        hooks: frozenset[str] | None = None,
    ) -> None:
        self._name = name
        self.verdict = verdict
        self.text = text
        self.note = note
        self.unknown = unknown
        self.tables = tables
        self.hooks = hooks

    @property
    def name(self) -> str:  # type: ignore[override]
        return self._name

    def apply(self, pkt: Packet, env: Env) -> TargetResult:
        return TargetResult(self.verdict, note=self.note, unknown=self.unknown)


def _need_tcp(ctx: ParseCtx, what: str) -> None:
    if ctx.proto_num != 6 or ctx.proto_negated:
        raise ctx.error(f"{what} needs '-p tcp' in the same rule")


# ------------------------------------------------------------------ REJECT

_REJECT_V4 = (
    ("icmp-net-unreachable", "net-unreach"), ("icmp-host-unreachable", "host-unreach"),
    ("icmp-proto-unreachable", "proto-unreach"), ("icmp-port-unreachable", "port-unreach"),
    ("icmp-net-prohibited", "net-prohib"), ("icmp-host-prohibited", "host-prohib"), ("tcp-reset", "tcp-rst"),
    ("icmp-admin-prohibited", "admin-prohib"),
)  # fmt: skip
_REJECT_V6 = (
    ("icmp6-no-route", "no-route"), ("icmp6-adm-prohibited", "adm-prohibited"),
    ("icmp6-addr-unreachable", "addr-unreach"), ("icmp6-port-unreachable", "port-unreach"),
    ("tcp-reset", "tcp-rst"), ("icmp6-policy-fail", "policy-fail"), ("icmp6-reject-route", "reject-route"),
)  # fmt: skip
# kept for callers of the old module
REJECT_TYPES_V4 = frozenset(n for pair in _REJECT_V4 for n in pair)
REJECT_TYPES_V6 = frozenset(n for pair in _REJECT_V6 for n in pair)


@target(
    "REJECT",
    options={"reject-with": V},
    why="drops the packet and answers with an ICMP error or a TCP reset",
)
def parse_reject(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "REJECT")
    w = o.value("reject-with")
    table = _REJECT_V4 if ctx.family == "ipv4" else _REJECT_V6
    kind = table[3][0]
    if w is not None:
        # libxt_REJECT accepts any case-insensitive prefix of a name or its alias (first one wins)
        lw = w.lower()
        for name, alias in table:
            if name.startswith(lw) or alias.startswith(lw):
                kind = name
                break
        else:
            raise ctx.error(
                f"REJECT: unknown --reject-with {w!r} for {'ip6tables' if ctx.family == 'ipv6' else 'iptables'}"
            )
    if kind == "tcp-reset":
        _need_tcp(ctx, "REJECT --reject-with tcp-reset")
    return SimpleTarget(
        "REJECT",
        "DROP",
        f"-j REJECT --reject-with {kind}",
        note=f"REJECT answers with {kind}",
        tables=("filter",),  # the kernel's REJECT targets are registered for the filter table only
        hooks=frozenset({INP, FWD, OUT}),
    )


# ------------------------------------------------------------------ queueing and logging


@target(
    "NFQUEUE",
    options={"queue-num": V, "queue-balance": V, "queue-bypass": F, "queue-cpu-fanout": F},
    exactness="verdict-unknown",
    why="the userspace program listening on the queue decides",
)
def parse_nfqueue(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "NFQUEUE")
    o.exclusive("queue-num", "queue-balance")
    bal = o.value("queue-balance")
    num = o.value("queue-num")
    if bal is not None:
        lo, hi = uint_range(ctx, "NFQUEUE", "queue-balance", bal, 0xFFFE)
        if lo >= hi:
            raise ctx.error("NFQUEUE: --queue-balance needs a range first:last with first < last")
        q = f"--queue-balance {lo}:{hi}"
        qname = f"{lo}..{hi}"
    else:
        n = uint(ctx, "NFQUEUE", "queue-num", num, 0, 0xFFFF) if num is not None else 0
        q = f"--queue-num {n}"
        qname = str(n)
    parts = ["-j NFQUEUE", q]
    bypass = o.has("queue-bypass")
    if bypass:
        parts.append("--queue-bypass")
    if o.has("queue-cpu-fanout"):
        parts.append("--queue-cpu-fanout")
    why = f"queued to userspace (queue {qname}): the program listening there decides the packet's fate"
    if bypass:
        why += "; with no listener it continues (--queue-bypass)"
    return SimpleTarget("NFQUEUE", "QUEUE", " ".join(parts), unknown=why)


_LOG_LEVELS = {"emerg": 0, "panic": 0, "alert": 1, "crit": 2, "error": 3, "warning": 4, "notice": 5, "info": 6,
               "debug": 7}  # fmt: skip
_LOG_FLAGS = ("log-tcp-sequence", "log-tcp-options", "log-ip-options", "log-uid", "log-macdecode")


@target(
    "LOG",
    options={"log-level": V, "log-prefix": V, **{f: F for f in _LOG_FLAGS}},
    exactness="continue",
    why="logs to the kernel log and continues",
)
def parse_log(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "LOG")
    prefix = o.value("log-prefix")
    level = o.value("log-level")
    parts = ["-j LOG"]
    if prefix is not None:
        if len(prefix.encode("utf-8", "surrogateescape")) > 29:  # the file's own bytes
            raise ctx.error("LOG: --log-prefix is longer than 29 characters")
        if "\n" in prefix:
            raise ctx.error("LOG: newline in --log-prefix")
        if prefix:
            parts.append(f"--log-prefix {save_string(prefix)}")
    if level is not None:
        lv = _LOG_LEVELS.get(level.lower()) if not level.isdigit() else uint(ctx, "LOG", "log-level", level, 0, 7)
        if lv is None:
            raise ctx.error(f"LOG: invalid --log-level {level!r}")
        if lv != 4:
            parts.append(f"--log-level {lv}")
    parts.extend(f"--{f}" for f in _LOG_FLAGS if o.has(f))
    note = f'logs "{prefix}"' if prefix else "logs to the kernel log"
    return SimpleTarget("LOG", "CONTINUE", " ".join(parts), note=note)


@target(
    "NFLOG",
    options={"nflog-group": V, "nflog-prefix": V, "nflog-range": V, "nflog-size": V, "nflog-threshold": V},
    exactness="continue",
    why="sends the packet to an nflog group and continues",
)
def parse_nflog(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "NFLOG")
    o.exclusive("nflog-range", "nflog-size")
    parts = ["-j NFLOG"]
    prefix = o.value("nflog-prefix")
    if prefix is not None:
        if "\n" in prefix:
            raise ctx.error("NFLOG: newline in --nflog-prefix")
        if prefix:
            parts.append(f"--nflog-prefix {save_string(prefix)}")
    g = o.value("nflog-group")
    group = uint(ctx, "NFLOG", "nflog-group", g, 0, 0xFFFF) if g is not None else 0
    if group:
        parts.append(f"--nflog-group {group}")
    size = o.value("nflog-size")
    if size is not None:
        parts.append(f"--nflog-size {uint(ctx, 'NFLOG', 'nflog-size', size)}")
    rng = o.value("nflog-range")
    if rng is not None:
        n = uint(ctx, "NFLOG", "nflog-range", rng)
        if n:
            parts.append(f"--nflog-range {n}")
    th = o.value("nflog-threshold")
    if th is not None:
        n = uint(ctx, "NFLOG", "nflog-threshold", th, 0, 0xFFFF)
        if n:
            parts.append(f"--nflog-threshold {n}")
    return SimpleTarget("NFLOG", "CONTINUE", " ".join(parts), note=f"logs to nflog group {group}")


@target(
    "ULOG",
    options={"ulog-nlgroup": V, "ulog-prefix": V, "ulog-cprange": V, "ulog-qthreshold": V},
    family="ipv4",
    exactness="continue",
    why="logs and continues (removed from Linux 3.17 kernels on)",
)
def parse_ulog(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "ULOG")
    parts = ["-j ULOG"]
    p = o.value("ulog-prefix")
    if p:
        parts.append(f"--ulog-prefix {save_string(p)}")
    for n in ("ulog-nlgroup", "ulog-cprange", "ulog-qthreshold"):
        v = o.value(n)
        if v is not None:
            parts.append(f"--{n} {uint(ctx, 'ULOG', n, v)}")
    return SimpleTarget("ULOG", "CONTINUE", " ".join(parts), note="ULOG (removed from modern kernels)")


@target("TRACE", exactness="continue", why="marks the packet for kernel tracing")
def parse_trace(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    return SimpleTarget("TRACE", "CONTINUE", "-j TRACE", note="kernel tracing enabled for this packet", tables=("raw",))


# ------------------------------------------------------------------ header rewriting


@target(
    "TCPMSS",
    options={"set-mss": V, "clamp-mss-to-pmtu": F},
    exactness="continue",
    why="rewrites the MSS option of TCP SYNs (not modelled)",
)
def parse_tcpmss(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "TCPMSS")
    which = o.require_one("set-mss", "clamp-mss-to-pmtu")
    _need_tcp(ctx, "TCPMSS")
    if which == "set-mss":
        n = uint(ctx, "TCPMSS", "set-mss", o.value("set-mss") or "", 0, 0xFFFF)
        return SimpleTarget("TCPMSS", "CONTINUE", f"-j TCPMSS --set-mss {n}", note="sets the TCP MSS option of SYNs")
    return SimpleTarget(
        "TCPMSS",
        "CONTINUE",
        "-j TCPMSS --clamp-mss-to-pmtu",
        note="clamps the TCP MSS option of SYNs to the path MTU",
        hooks=frozenset({FWD, OUT, POST}),
    )


@target("CHECKSUM", options={"checksum-fill": F}, exactness="continue", why="fills in a checksum")
def parse_checksum(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    if not Opts(items, ctx, "CHECKSUM").has("checksum-fill"):
        raise ctx.error('CHECKSUM: option "--checksum-fill" must be specified')
    return SimpleTarget("CHECKSUM", "CONTINUE", "-j CHECKSUM --checksum-fill", tables=("mangle",))


class TproxyTarget(TargetSpec):
    name = "TPROXY"
    tables: tuple[str, ...] | None = ("mangle",)

    def __init__(self, text: str, mark: tuple[int, int] | None) -> None:
        self.text = text
        self.mark = mark
        self.hooks = frozenset({PRE})

    def apply(self, pkt: Packet, env: Env) -> TargetResult:
        if self.mark is not None:  # tproxy_tg4/6: skb->mark = (skb->mark & ~mask) ^ value
            value, mask = self.mark
            pkt.mark = (pkt.mark & ~mask & 0xFFFFFFFF) ^ value
        return TargetResult(
            "ACCEPT",
            unknown=f"{self.text}: accepted (and marked) only if a transparent socket listens, else dropped",
        )


@target(
    "TPROXY",
    options={"on-port": V, "on-ip": V, "tproxy-mark": V},
    exactness="verdict-unknown",
    why="accepted only if a transparent socket listens",
)
def parse_tproxy(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "TPROXY")
    p = o.value("on-port")
    if p is None:
        raise ctx.error('TPROXY: option "--on-port" must be specified')
    if ctx.proto_num not in (6, 17) or ctx.proto_negated:
        raise ctx.error("TPROXY can be used only with '-p tcp' or '-p udp'")
    pn = port(ctx, "TPROXY", "on-port", p)
    ip = o.value("on-ip")
    a = parse_host(ip, ctx.family) if ip is not None else 0
    if a is None:
        raise ctx.error(f"TPROXY: --on-ip: {ip!r} is not an {ctx.family} address")
    m = o.value("tproxy-mark")
    mark = value_mask(m, ctx, "TPROXY", "tproxy-mark") if m is not None else (0, 0)
    text = f"-j TPROXY --on-port {pn} --on-ip {addr_text(a, ctx.family)} --tproxy-mark {mark[0]:#x}/{mark[1]:#x}"
    return TproxyTarget(text, mark)


class FieldTarget(TargetSpec):
    """DSCP/TOS/TTL/HL: rewrite a header field, then continue."""

    def __init__(self, name: str, text: str, field: str, op: str, value: int, mask: int = 0xFF) -> None:
        self._name, self.text, self.field, self.op, self.value, self.mask = name, text, field, op, value, mask
        self.tables = ("mangle",)

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


@target("DSCP", options={"set-dscp": V, "set-dscp-class": V}, why="rewrites the DSCP bits")
def parse_dscp_target(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "DSCP")
    v, _ = dscp_value(ctx, "DSCP", o, "set-dscp", "set-dscp-class")
    return FieldTarget("DSCP", f"-j DSCP --set-dscp {v:#04x}", "dscp", "set", v)


@target("TOS", options={"set-tos": V, "and-tos": V, "or-tos": V, "xor-tos": V}, why="rewrites the TOS bits")
def parse_tos_target(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "TOS")
    which = o.require_one("set-tos", "and-tos", "or-tos", "xor-tos")
    text = o.value(which) or ""
    if which == "set-tos":
        val, mask = tos_value_mask(ctx, "TOS", which, text)
    else:
        n = uint(ctx, "TOS", which, text, 0, 0xFF)
        val, mask = {"and-tos": (0, ~n & 0xFF), "or-tos": (n, n), "xor-tos": (n, 0)}[which]
    return FieldTarget("TOS", f"-j TOS --set-tos {val:#04x}/{mask:#04x}", "tos", "set", val, mask)


def _ttl_target(name: str, items: list[Option], ctx: ParseCtx) -> TargetSpec:
    pre = "ttl" if name == "TTL" else "hl"
    o = Opts(items, ctx, name)
    which = o.require_one(f"{pre}-set", f"{pre}-inc", f"{pre}-dec")
    op = which[-3:]
    n = uint(ctx, name, which, o.value(which) or "", 0 if op == "set" else 1, 255)
    return FieldTarget(name, f"-j {name} --{which} {n}", "ttl", op, n)


@target("TTL", options={"ttl-set": V, "ttl-inc": V, "ttl-dec": V}, family="ipv4", why="rewrites the TTL")
def parse_ttl_target(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    return _ttl_target("TTL", items, ctx)


@target("HL", options={"hl-set": V, "hl-inc": V, "hl-dec": V}, family="ipv6", why="rewrites the hop limit")
def parse_hl_target(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    return _ttl_target("HL", items, ctx)


# ------------------------------------------------------------------ targets whose effect is not modelled


def _cont(name: str, text: str, note: str | None = None, **kw: object) -> TargetSpec:
    tables = kw.get("tables")
    hooks = kw.get("hooks")
    unknown = kw.get("unknown")
    return SimpleTarget(
        name,
        "CONTINUE",
        text,
        note=note or f"{name} is not modelled: assumed to continue without changing what nftrace tracks",
        unknown=unknown if isinstance(unknown, str) else None,
        tables=tables if isinstance(tables, tuple) else None,
        hooks=hooks if isinstance(hooks, frozenset) else None,
    )


_CONT = "continue"


@target("AUDIT", options={"type": V}, exactness=_CONT, why="writes an audit record")
def parse_audit(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    t = Opts(items, ctx, "AUDIT").value("type")
    if t not in ("accept", "drop", "reject"):
        raise ctx.error("AUDIT: --type accept|drop|reject is required")
    return _cont("AUDIT", f"-j AUDIT --type {t}", "writes an audit record")


@target("CLASSIFY", options={"set-class": V}, exactness=_CONT, why="sets the traffic-control class")
def parse_classify(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    c = Opts(items, ctx, "CLASSIFY").value("set-class")
    m = re.fullmatch(r"([0-9a-fA-F]{1,4}):([0-9a-fA-F]{1,4})", c or "")
    if not m:
        raise ctx.error("CLASSIFY: --set-class MAJOR:MINOR (hexadecimal) is required")
    major, minor = int(m.group(1), 16), int(m.group(2), 16)
    return _cont("CLASSIFY", f"-j CLASSIFY --set-class {major:04x}:{minor:04x}", "sets the traffic-control class",
                 tables=("mangle",), hooks=frozenset({FWD, OUT, POST}))  # fmt: skip


@target("SECMARK", options={"selctx": V}, exactness=_CONT, why="sets the security mark")
def parse_secmark(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    s = Opts(items, ctx, "SECMARK").value("selctx")
    if not s:
        raise ctx.error('SECMARK: option "--selctx" must be specified')
    if len(s) > 255:
        raise ctx.error("SECMARK: --selctx is longer than 255 characters")
    return _cont("SECMARK", f"-j SECMARK --selctx {word(s)}", "sets the security mark", tables=("mangle", "security"))


@target("CONNSECMARK", options={"save": F, "restore": F}, exactness=_CONT, why="copies the security mark",
        conntrack=True)  # fmt: skip
def parse_connsecmark(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    which = Opts(items, ctx, "CONNSECMARK").require_one("save", "restore")
    return _cont("CONNSECMARK", f"-j CONNSECMARK --{which}", "copies the security mark",
                 tables=("mangle", "security"))  # fmt: skip


def set_flags(ctx: ParseCtx, ext: str, text: str) -> str:
    parts = text.split(",")
    if not 1 <= len(parts) <= 6 or any(p not in ("src", "dst") for p in parts):
        raise ctx.error(f"{ext}: invalid direction flags {text!r} (src/dst, comma separated, 6 at most)")
    return text


@target(
    "SET",
    options={"add-set": V2, "del-set": V2, "map-set": V2, "exist": F, "timeout": V, "map-mark": F, "map-prio": F,
             "map-queue": F},
    exactness=_CONT,
    why="adds/removes the packet's addresses in an ipset (later -m set sees the change: not modelled)",
)  # fmt: skip
def parse_set_target(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "SET")
    parts = ["-j SET"]
    for n in ("add-set", "del-set", "map-set"):
        opt = o.get(n)
        if opt is not None:
            name, flags = opt.values
            if len(name) > 31:
                raise ctx.error(f"SET: set name {name!r} is longer than 31 characters")
            parts.append(f"--{n} {word(name)} {set_flags(ctx, 'SET', flags)}")
    if len(parts) == 1:
        raise ctx.error("SET: one of --add-set, --del-set, --map-set is required")
    if o.has("exist"):
        parts.append("--exist")
    t = o.value("timeout")
    if t is not None:
        parts.append(f"--timeout {uint(ctx, 'SET', 'timeout', t)}")
    parts.extend(f"--{n}" for n in ("map-mark", "map-prio", "map-queue") if o.has(n))
    return _cont("SET", " ".join(parts), "updates an ipset")


@target("IDLETIMER", options={"timeout": V, "label": V, "alarm": F}, exactness=_CONT, why="restarts an idle timer")
def parse_idletimer(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "IDLETIMER")
    t, label = o.value("timeout"), o.value("label")
    if t is None or label is None:
        raise ctx.error("IDLETIMER: --timeout and --label are required")
    n = uint(ctx, "IDLETIMER", "timeout", t)
    if len(label) > 27:
        raise ctx.error("IDLETIMER: --label is longer than 27 characters")
    return _cont(
        "IDLETIMER", f"-j IDLETIMER --timeout {n} --label {word(label)}" + (" --alarm" if o.has("alarm") else "")
    )


@target(
    "LED", options={"led-trigger-id": V, "led-delay": V, "led-always-blink": F}, exactness=_CONT, why="blinks a LED"
)
def parse_led(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "LED")
    tid = o.value("led-trigger-id")
    if not tid:
        raise ctx.error('LED: option "--led-trigger-id" must be specified')
    if len(tid) > 27:
        raise ctx.error("LED: --led-trigger-id is longer than 27 characters")
    parts = ["-j LED", f"--led-trigger-id {quote_always(tid)}"]
    d = o.value("led-delay")
    if d is not None:
        n = -1 if d == "inf" else uint(ctx, "LED", "led-delay", d)
        if n:
            parts.append(f"--led-delay {n}")
    if o.has("led-always-blink"):
        parts.append("--led-always-blink")
    return _cont("LED", " ".join(parts))


def _tc_time(ctx: ParseCtx, opt: str, text: str) -> int:
    """tc-style time (`250.0ms`, `1s`, `500us`) -> microseconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(s|sec|secs|ms|msec|msecs|us|usec|usecs)?", text)
    if not m:
        raise ctx.error(f"RATEEST: --{opt}: bad time {text!r}")
    v = float(m.group(1))
    unit = m.group(2) or "us"
    mult = 1_000_000 if unit.startswith("s") else 1000 if unit.startswith("m") else 1
    return int(v * mult)


def _tc_time_text(us: int) -> str:
    if us >= 1_000_000:
        return f"{us / 1_000_000:.1f}s"
    if us >= 1000:
        return f"{us / 1000:.1f}ms"
    return f"{us}us"


@target(
    "RATEEST",
    options={"rateest-name": V, "rateest-interval": V, "rateest-ewmalog": V},
    exactness=_CONT,
    why="feeds a rate estimator",
)
def parse_rateest_target(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "RATEEST")
    name, iv, ew = o.value("rateest-name"), o.value("rateest-interval"), o.value("rateest-ewmalog")
    if name is None or iv is None or ew is None:
        raise ctx.error("RATEEST: --rateest-name, --rateest-interval and --rateest-ewmalog are required")
    text = (
        f"-j RATEEST --rateest-name {word(name)} --rateest-interval {_tc_time_text(_tc_time(ctx, 'rateest-interval', iv))}"
        f" --rateest-ewmalog {_tc_time_text(_tc_time(ctx, 'rateest-ewmalog', ew))}"
    )
    return _cont("RATEEST", text)


@target("TEE", options={"gateway": V, "oif": V}, exactness=_CONT, why="clones the packet to another gateway")
def parse_tee(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "TEE")
    g = o.value("gateway")
    if g is None:
        raise ctx.error('TEE: option "--gateway" must be specified')
    a = parse_host(g, ctx.family)
    if a is None:
        raise ctx.error(f"TEE: --gateway: {g!r} is not an {ctx.family} address")
    text = f"-j TEE --gateway {addr_text(a, ctx.family)}"
    oif = o.value("oif")
    if oif is not None:
        text += f" --oif {word(oif)}"
    return _cont("TEE", text, "clones the packet to another gateway")


@target(
    "ECN",
    options={"ecn-tcp-remove": F, "ecn-tcp-cwr": V, "ecn-tcp-ece": V, "ecn-ip-ect": V},
    family="ipv4",
    exactness=_CONT,
    why="rewrites ECN bits",
)
def parse_ecn_target(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "ECN")
    if not items:
        raise ctx.error("ECN: one of --ecn-tcp-remove, --ecn-tcp-cwr, --ecn-tcp-ece, --ecn-ip-ect is required")
    parts = ["-j ECN"]
    if o.has("ecn-tcp-remove"):
        _need_tcp(ctx, "ECN --ecn-tcp-remove")
        parts.append("--ecn-tcp-remove")
    for n, hi in (("ecn-tcp-cwr", 1), ("ecn-tcp-ece", 1), ("ecn-ip-ect", 3)):
        v = o.value(n)
        if v is not None:
            if n.startswith("ecn-tcp"):
                _need_tcp(ctx, f"ECN --{n}")
            parts.append(f"--{n} {uint(ctx, 'ECN', n, v, 0, hi)}")
    return _cont("ECN", " ".join(parts), tables=("mangle",))


_TCPOPTS = {"wscale": 3, "mss": 2, "sack-permitted": 4, "sack": 5, "timestamp": 8, "md5": 19}


@target("TCPOPTSTRIP", options={"strip-options": V}, exactness=_CONT, why="removes TCP options (not modelled)")
def parse_tcpoptstrip(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    _need_tcp(ctx, "TCPOPTSTRIP")
    o = Opts(items, ctx, "TCPOPTSTRIP")
    parts = ["-j TCPOPTSTRIP"]
    s = o.value("strip-options")
    if s is not None:
        nums = set()
        for item in s.split(","):
            n = _TCPOPTS.get(item)
            if n is None:
                n = uint(ctx, "TCPOPTSTRIP", "strip-options", item, 0, 255)
            if n < 2:
                raise ctx.error(f"TCPOPTSTRIP: option {item!r} (end of list / no-op) cannot be stripped")
            nums.add(n)
        parts.append("--strip-options " + ",".join(str(n) for n in sorted(nums)))
    return _cont("TCPOPTSTRIP", " ".join(parts), tables=("mangle",))


_HMARK_OPTS = {
    "hmark-tuple": V, "hmark-src-prefix": V, "hmark-dst-prefix": V, "hmark-sport-mask": V,
    "hmark-dport-mask": V, "hmark-spi-mask": V, "hmark-proto-mask": V, "hmark-rnd": V, "hmark-mod": V,
    "hmark-offset": V,
}  # fmt: skip


@target(
    "HMARK",
    options=_HMARK_OPTS,
    exactness="effect-unknown",
    why="sets the mark from a hash of the packet's tuple: the new mark is not computed",
)
def parse_hmark(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "HMARK")
    for req in ("hmark-mod", "hmark-rnd"):
        if not o.has(req):
            raise ctx.error(f'HMARK: option "--{req}" must be specified')
    full = 32 if ctx.family == "ipv4" else 128
    # --hmark-tuple a,b: each name (any case) sets its option to the full mask, as if written there
    # (libxt_HMARK; checked with iptables-restore 1.8.9: a later explicit option is "used twice")
    by_tuple = {"src": ("hmark-src-prefix", full), "dst": ("hmark-dst-prefix", full),
                "sport": ("hmark-sport-mask", 0xFFFF), "dport": ("hmark-dport-mask", 0xFFFF),
                "spi": ("hmark-spi-mask", 0xFFFFFFFF), "proto": ("hmark-proto-mask", 0xFFFF)}  # fmt: skip
    chosen: dict[str, int | str] = {}  # option -> value from the tuple (int) or as written (str)
    from_tuple: set[str] = set()
    ct = False
    for it in items:
        if it.name == "hmark-tuple":
            for part in it.values[0].split(","):
                name = part.lower()
                if name == "ct":
                    ct = True
                elif name in by_tuple:
                    opt, full_mask = by_tuple[name]
                    chosen[opt] = full_mask
                    from_tuple.add(opt)
                else:
                    raise ctx.error(f"HMARK: --hmark-tuple: bad type {part!r} (ct, src, dst, sport, dport, spi, proto)")
        elif it.name in from_tuple:
            raise ctx.error(f"HMARK: --{it.name} is already set by --hmark-tuple")
        elif it.values:
            chosen[it.name] = it.values[0]
    if "hmark-spi-mask" in chosen and ("hmark-sport-mask" in chosen or "hmark-dport-mask" in chosen):
        raise ctx.error("HMARK: --hmark-spi-mask cannot be used with --hmark-sport-mask/--hmark-dport-mask")
    parts = ["-j HMARK"]
    fmts = (("hmark-src-prefix", "d", full), ("hmark-dst-prefix", "d", full), ("hmark-sport-mask", "#06x", 0xFFFF),
            ("hmark-dport-mask", "#06x", 0xFFFF), ("hmark-spi-mask", "#010x", 0xFFFFFFFF),
            ("hmark-proto-mask", "#04x", 0xFFFF), ("hmark-rnd", "#010x", 0xFFFFFFFF), ("hmark-mod", "d", 0xFFFFFFFF),
            ("hmark-offset", "d", 0xFFFFFFFF))  # fmt: skip
    for n, fmt, hi in fmts:
        c = chosen.get(n)
        if c is None:
            continue
        num = uint(ctx, "HMARK", n, c, 0, hi) if isinstance(c, str) else c
        if n == "hmark-mod" and num == 0:
            raise ctx.error("HMARK: --hmark-mod cannot be 0")
        parts.append(f"--{n} {num:{fmt}}")
    if ct:
        parts.append("--hmark-tuple ct")
    text = " ".join(parts)
    return _cont("HMARK", text, unknown=f"{text}: sets the mark from a hash nftrace does not compute")


@target(
    "SYNPROXY",
    options={"sack-perm": F, "timestamp": F, "wscale": V, "mss": V, "ecn": F},
    exactness="verdict-unknown",
    why="answers SYNs itself and drops them; the handshake is not modelled",
    conntrack=True,
)
def parse_synproxy(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    _need_tcp(ctx, "SYNPROXY")
    o = Opts(items, ctx, "SYNPROXY")
    parts = ["-j SYNPROXY"]
    parts.extend(f"--{n}" for n in ("sack-perm", "timestamp") if o.has(n))
    w = o.value("wscale")
    if w is not None:
        parts.append(f"--wscale {uint(ctx, 'SYNPROXY', 'wscale', w, 0, 14)}")
    m = o.value("mss")
    if m is not None:
        parts.append(f"--mss {uint(ctx, 'SYNPROXY', 'mss', m, 0, 0xFFFF)}")
    if o.has("ecn"):
        parts.append("--ecn")
    return SimpleTarget(
        "SYNPROXY",
        "DROP",
        " ".join(parts),
        unknown="SYNPROXY answers SYNs itself and drops them; the handshake is not modelled",
        hooks=frozenset({INP, FWD}),
    )


def _npt(name: str, items: list[Option], ctx: ParseCtx, hooks: frozenset[str]) -> TargetSpec:
    o = Opts(items, ctx, name)
    parts = [f"-j {name}"]
    for n in ("src-pfx", "dst-pfx"):
        v = o.value(n)
        if v is None:
            raise ctx.error(f'{name}: option "--{n}" must be specified')
        if "/" not in v:
            raise ctx.error(f"{name}: --{n} {v}: a prefix length is required")
        net, mask = parse_addr_mask(v, "ipv6", ctx, f"{name} --{n}")
        plen = prefix_len(mask, "ipv6")
        if plen is None:
            raise ctx.error(f"{name}: --{n} {v}: the mask must be a prefix length")
        parts.append(f"--{n} {addr_text(net, 'ipv6')}/{plen}")
    text = " ".join(parts)
    unknown = f"{text}: rewrites the address prefix, which nftrace does not model"
    return _cont(name, text, tables=("mangle",), hooks=hooks, unknown=unknown)


@target(
    "DNPT",
    options={"src-pfx": V, "dst-pfx": V},
    family="ipv6",
    exactness="effect-unknown",
    why="prefix translation is not modelled",
)
def parse_dnpt(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    return _npt("DNPT", items, ctx, frozenset({PRE, OUT}))


@target(
    "SNPT",
    options={"src-pfx": V, "dst-pfx": V},
    family="ipv6",
    exactness="effect-unknown",
    why="prefix translation is not modelled",
)
def parse_snpt(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    return _npt("SNPT", items, ctx, frozenset({INP, POST}))


@target(
    "CLUSTERIP",
    options={"new": F, "hashmode": V, "clustermac": V, "total-nodes": V, "local-node": V, "hash-init": V},
    family="ipv4",
    exactness="verdict-unknown",
    why="cluster hash decides (removed from Linux 6.3 kernels on)",
)
def parse_clusterip(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "CLUSTERIP")
    parts = ["-j CLUSTERIP"]
    if o.has("new"):
        parts.append("--new")
    for n in ("hashmode", "clustermac", "total-nodes", "local-node", "hash-init"):
        v = o.value(n)
        if v is not None:
            parts.append(f"--{n} {v}")
    return SimpleTarget("CLUSTERIP", "CONTINUE", " ".join(parts), unknown="CLUSTERIP: the cluster hash decides")
