"""Connection tracking: -m conntrack, -m state, -m helper, -j CT, -j NOTRACK."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from nftrace.ruleset.ext.basic import protocol_number
from nftrace.ruleset.model import MatchOutcome, MatchSpec, Option, TargetResult, TargetSpec, Unknown
from nftrace.ruleset.registry import VI, F, Opts, ParseCtx, V, match, target
from nftrace.ruleset.values import (
    addr_text,
    parse_addr_mask,
    parse_host,
    port_range,
    prefix_len,
    range_text,
    uint,
    uint_range,
    word,
)

if TYPE_CHECKING:
    from nftrace.engine.env import Env
    from nftrace.engine.packet import Packet

STATES = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT")
STATUSES = ("NONE", "EXPECTED", "SEEN_REPLY", "ASSURED", "CONFIRMED")


def packet_states(pkt: Packet) -> set[str]:
    """The conntrack 'states' a packet has, as -m conntrack --ctstate sees them."""
    if pkt.untracked or pkt.ct_state == "UNTRACKED":
        return {"UNTRACKED"}
    s = {pkt.ct_state}
    if pkt.ct_state not in ("INVALID",):
        s |= {x for x in ("SNAT", "DNAT") if x in pkt.ct_status}
    return s


def has_ct(pkt: Packet) -> bool:
    return not (pkt.untracked or pkt.ct_state in ("UNTRACKED", "INVALID"))


def _states(text: str, ctx: ParseCtx, ext: str, allowed: tuple[str, ...]) -> frozenset[str]:
    out = set()
    for s in text.split(","):
        u = s.upper()
        if u not in allowed:
            raise ctx.error(f"{ext}: unknown state {s!r}")
        out.add(u)
    return frozenset(out)


def _ordered(states: frozenset[str], order: tuple[str, ...]) -> str:
    return ",".join(s for s in order if s in states)


class StateMatch(MatchSpec):
    __slots__ = ("states", "neg", "text")

    def __init__(self, states: frozenset[str], neg: bool, text: str) -> None:
        self.states, self.neg, self.text = states, neg, text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        return bool(self.states & packet_states(pkt)) != self.neg

    def why_not(self, pkt: Packet, env: Env) -> str:
        return f"{self.text} (connection state {','.join(sorted(packet_states(pkt)))})"


_STATE_ORDER = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED")


@match("state", options={"state": VI}, why="conntrack state of the packet (NEW/ESTABLISHED/...)", conntrack=True)
def parse_state(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "state")
    opt = o.get("state")
    if opt is None:
        raise ctx.error('state: option "--state" must be specified')
    st = _states(opt.values[0], ctx, "state", _STATE_ORDER)
    bang = "! " if opt.negated else ""
    return StateMatch(st, opt.negated, f"-m state {bang}--state {_ordered(st, _STATE_ORDER)}")


class ConntrackMatch(MatchSpec):
    """-m conntrack: every given criterion must hold (each may be negated)."""

    __slots__ = ("checks", "text")

    def __init__(self, checks: list[tuple[str, bool, object]], text: str) -> None:
        self.checks = checks
        self.text = text

    def _check(self, kind: str, val: object, pkt: Packet) -> bool | Unknown:
        if kind == "state":
            assert isinstance(val, frozenset)
            return bool(val & packet_states(pkt))
        if not has_ct(pkt):
            return False
        if kind == "status":
            assert isinstance(val, frozenset)
            if pkt.ct_state != "NEW":
                return Unknown(f"{self.text}: status bits of an existing connection are not known offline")
            status = {s for s in pkt.ct_status if s in STATUSES}
            if "NONE" in val and not status:
                return True
            return bool(val & status)
        if kind == "proto":
            return pkt.proto == val
        if kind == "dir":
            return val == "ORIGINAL"
        if kind == "expire":
            return Unknown(f"{self.text}: the connection's remaining lifetime is not known offline")
        # reply tuple: src = (translated) destination, dst = (translated) source
        orig = {"src": pkt.orig_src, "dst": pkt.orig_dst, "sport": pkt.orig_sport, "dport": pkt.orig_dport}
        repl = {"src": pkt.dst, "dst": pkt.src, "sport": pkt.dport, "dport": pkt.sport}
        if "SNAT" not in pkt.ct_status:
            repl["dst"], repl["dport"] = pkt.orig_src, pkt.orig_sport
        if "DNAT" not in pkt.ct_status:
            repl["src"], repl["sport"] = pkt.orig_dst, pkt.orig_dport
        tup = orig if kind.startswith("orig") else repl
        fieldname = kind[4:]
        if fieldname in ("src", "dst"):
            assert isinstance(val, tuple)
            net, mask = val
            return bool((int(ipaddress.ip_address(str(tup[fieldname]))) & int(mask)) == int(net))
        assert isinstance(val, tuple)
        port = tup[fieldname]
        lo, hi = val
        return port is not None and int(lo) <= int(str(port)) <= int(hi)

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        for kind, neg, val in self.checks:
            r = self._check(kind, val, pkt)
            if isinstance(r, Unknown):
                return r
            if kind not in ("state",) and not has_ct(pkt):
                return False  # no conntrack entry: every non-state criterion fails, even negated
            if r == neg:
                return False
        return True

    def why_not(self, pkt: Packet, env: Env) -> str:
        return f"{self.text} (state {','.join(sorted(packet_states(pkt)))}, original {pkt.orig_src} > {pkt.orig_dst})"


# option -> (check kind, print rank)
_CT_OPTS = {
    "ctstate": "state", "ctproto": "proto", "ctorigsrc": "origsrc", "ctorigdst": "origdst",
    "ctreplsrc": "replsrc", "ctrepldst": "repldst", "ctorigsrcport": "origsport", "ctorigdstport": "origdport",
    "ctreplsrcport": "replsport", "ctrepldstport": "repldport", "ctstatus": "status", "ctexpire": "expire",
    "ctdir": "dir",
}  # fmt: skip
_CT_PRINT_ORDER = list(_CT_OPTS)


def _addr_print(host: int, mask: int, family: str) -> str:
    """libxt_conntrack prints the address as given (not masked) and the mask as a prefix length."""
    n = prefix_len(mask, family)
    full = 32 if family == "ipv4" else 128
    if n == full:
        return addr_text(host, family)
    return f"{addr_text(host, family)}/{n}"


@match(
    "conntrack",
    options={**{k: VI for k in _CT_OPTS}, "ctdir": V},
    exactness="partial",
    why="state, NAT, tuple, protocol and direction exact; --ctstatus of existing connections and --ctexpire unknown",
    conntrack=True,
)
def parse_conntrack(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    if not items:
        raise ctx.error("conntrack: at least one option is required")
    checks: list[tuple[str, bool, object]] = []
    shown: dict[str, str] = {}
    for opt in items:
        kind = _CT_OPTS[opt.name]
        v = opt.values[0]
        bang = "! " if opt.negated else ""
        val: object
        if kind == "state":
            val = _states(v, ctx, "conntrack", STATES)
            shown[opt.name] = f"{bang}--ctstate {_ordered(val, STATES)}"
        elif kind == "status":
            val = _states(v, ctx, "conntrack", STATUSES)
            shown[opt.name] = f"{bang}--ctstatus {_ordered(val, STATUSES)}"
        elif kind == "proto":
            num = protocol_number(v.lower())
            if num is None:
                raise ctx.error(f"conntrack: --ctproto: unknown protocol {v!r}")
            if num == 0:
                raise ctx.error("conntrack: --ctproto 0 would never match")
            from nftrace.ruleset.ext.basic import engine_proto

            val = engine_proto(num)
            shown[opt.name] = f"{bang}--ctproto {num}"
        elif kind in ("origsrc", "origdst", "replsrc", "repldst"):
            net, mask = parse_addr_mask(v, ctx.family, ctx, f"conntrack --{opt.name}")
            host = parse_host(v.partition("/")[0], ctx.family) or 0
            if prefix_len(mask, ctx.family) is None:
                # iptables keeps only the address of an address/non-contiguous-mask here
                net, mask = host, (1 << (32 if ctx.family == "ipv4" else 128)) - 1
            val = (net, mask)
            shown[opt.name] = f"{bang}--{opt.name} {_addr_print(host, mask, ctx.family)}"
        elif kind.endswith("port"):
            val = port_range(ctx, "conntrack", opt.name, v)
            shown[opt.name] = f"{bang}--{opt.name} {range_text(*val)}"
        elif kind == "dir":
            if v.upper() not in ("ORIGINAL", "REPLY"):
                raise ctx.error("conntrack: --ctdir takes ORIGINAL or REPLY")
            val = v.upper()
            shown[opt.name] = f"--ctdir {val}"
        else:  # expire
            val = uint_range(ctx, "conntrack", "ctexpire", v)
            shown[opt.name] = f"{bang}--ctexpire {range_text(*val)}"
        checks.append((kind, opt.negated, val))
    text = " ".join(["-m conntrack", *(shown[k] for k in _CT_PRINT_ORDER if k in shown)])
    return ConntrackMatch(checks, text)


class _HelperMatch(MatchSpec):
    exactness = "unknown"
    __slots__ = ("text", "neg")

    def __init__(self, text: str, neg: bool) -> None:
        self.text = text
        self.neg = neg

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        # xt_helper looks at the helper of the connection's master: only RELATED (expected)
        # connections have one; for every other packet the match is just its '!'.
        if not has_ct(pkt) or pkt.ct_state != "RELATED":
            return self.neg
        return Unknown(f"{self.text}: which helper created the expectation is not known offline")


@match(
    "helper",
    options={"helper": VI},
    exactness="partial",
    why="only RELATED connections have a master with a helper; which helper is unknown",
    conntrack=True,
)
def parse_helper(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    from nftrace.ruleset.values import save_string

    o = Opts(items, ctx, "helper")
    h = o.get("helper")
    if h is None:
        raise ctx.error('helper: option "--helper" must be specified')
    return _HelperMatch(f"-m helper {'! ' if h.negated else ''}--helper {save_string(h.values[0])}", h.negated)


# ------------------------------------------------------------------ targets


class NotrackTarget(TargetSpec):
    name = "NOTRACK"
    tables: tuple[str, ...] | None = ("raw",)

    def __init__(self, text: str) -> None:
        self.text = text

    def apply(self, pkt: Packet, env: Env) -> TargetResult:
        if pkt.ct_state == "NEW" and not pkt.untracked:
            pkt.untracked = True
            pkt.ct_state = "UNTRACKED"
        return TargetResult("CONTINUE", note="packet is now UNTRACKED: nat is skipped")


class CtNotrackTarget(NotrackTarget):
    name = "CT"


class CtTarget(TargetSpec):
    name = "CT"
    tables: tuple[str, ...] | None = ("raw",)
    needs_conntrack = True  # CT --notrack (CtNotrackTarget) does not: seen in the kernel

    def __init__(self, text: str, zone: str | None, helper: str | None) -> None:
        self.text = text
        self.zone = zone
        self.helper = helper

    def apply(self, pkt: Packet, env: Env) -> TargetResult:
        note = []
        if self.zone:
            note.append(f"conntrack zone {self.zone}")
        if self.helper:
            note.append(f"helper {self.helper}")
        return TargetResult("CONTINUE", note=", ".join(note) or None)


@target("NOTRACK", exactness="effect", why="the packet becomes UNTRACKED (nat is skipped)")
def parse_notrack(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    return NotrackTarget("-j NOTRACK")


_CT_EVENTS = ("new", "related", "destroy", "reply", "assured", "protoinfo", "helper", "mark", "natseqinfo", "secmark")


def _events(ctx: ParseCtx, opt: str, text: str, table: tuple[str, ...]) -> str:
    got = set()
    for e in text.split(","):
        if e not in table:
            raise ctx.error(f"CT: --{opt}: unknown event {e!r}")
        got.add(e)
    return ",".join(e for e in table if e in got)


@target(
    "CT",
    options={"notrack": F, "helper": V, "timeout": V, "ctevents": V, "expevents": V, "zone": V, "zone-orig": V,
             "zone-reply": V},
    exactness="effect",
    why="--notrack makes the packet UNTRACKED; zones, helpers and timeouts are noted, not modelled",
)  # fmt: skip
def parse_ct(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "CT")
    parts = ["-j CT"]
    notrack = o.has("notrack")
    if notrack:
        parts.append("--notrack")
    helper = o.value("helper")
    if helper is not None:
        parts.append(f"--helper {word(helper)}")
    tmo = o.value("timeout")
    if tmo is not None:
        parts.append(f"--timeout {word(tmo)}")
    ev = o.value("ctevents")
    if ev is not None:
        parts.append(f"--ctevents {_events(ctx, 'ctevents', ev, _CT_EVENTS)}")
    xev = o.value("expevents")
    if xev is not None:
        parts.append(f"--expevents {_events(ctx, 'expevents', xev, ('new',))}")
    zone: str | None = None
    zopts = [n for n in ("zone", "zone-orig", "zone-reply") if o.has(n)]
    if len(zopts) > 1:
        raise ctx.error("CT: only one of --zone, --zone-orig, --zone-reply")
    if zopts:
        z = o.value(zopts[0]) or ""
        suffix = zopts[0][4:]
        if z == "mark":
            parts.append(f"--zone{suffix} mark")
            zone = "mark"
        else:
            zv = uint(ctx, "CT", zopts[0], z, 0, 0xFFFF)
            if zv:
                parts.append(f"--zone{suffix} {zv}")
                zone = str(zv)
    text = " ".join(parts)
    if notrack:
        return CtNotrackTarget(text)
    return CtTarget(text, zone, helper)
