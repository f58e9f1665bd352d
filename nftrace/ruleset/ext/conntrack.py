"""Connection tracking: -m conntrack, -m state, -j CT, -j NOTRACK."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nftrace.ruleset.ext.basic import parse_prefix
from nftrace.ruleset.ext.proto import parse_range
from nftrace.ruleset.model import MatchOutcome, MatchSpec, Option, TargetResult, TargetSpec, Unknown
from nftrace.ruleset.registry import Opts, ParseCtx, match, target

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
    for s in text.upper().split(","):
        if s not in allowed:
            raise ctx.error(f"{ext}: unknown state {s!r}")
        out.add(s)
    return frozenset(out)


class StateMatch(MatchSpec):
    __slots__ = ("states", "neg", "text")

    def __init__(self, states: frozenset[str], neg: bool, text: str) -> None:
        self.states, self.neg, self.text = states, neg, text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        return bool(self.states & packet_states(pkt)) != self.neg

    def why_not(self, pkt: Packet, env: Env) -> str:
        return f"{self.text} (connection state {','.join(sorted(packet_states(pkt)))})"


@match("state")
def parse_state(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "state")
    opt = o.get("state")
    o.done()
    if opt is None:
        raise ctx.error("state: --state is required")
    st = _states(opt.values[0], ctx, "state", ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED"))
    return StateMatch(st, opt.negated, f"-m state {'! ' if opt.negated else ''}--state {opt.values[0]}")


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
            import ipaddress

            assert isinstance(val, tuple)
            net, mask = val
            return bool((int(ipaddress.ip_address(str(tup[fieldname]))) & int(mask)) == int(net))
        assert isinstance(val, tuple)
        port = tup[fieldname]
        lo, hi = val
        return port is not None and lo <= int(str(port)) <= int(str(hi))

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


_CT_OPTS = {
    "ctstate": "state",
    "ctproto": "proto",
    "ctorigsrc": "origsrc",
    "ctorigdst": "origdst",
    "ctreplsrc": "replsrc",
    "ctrepldst": "repldst",
    "ctorigsrcport": "origsport",
    "ctorigdstport": "origdport",
    "ctreplsrcport": "replsport",
    "ctrepldstport": "repldport",
    "ctstatus": "status",
    "ctexpire": "expire",
    "ctdir": "dir",
}


@match("conntrack")
def parse_conntrack(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    checks: list[tuple[str, bool, object]] = []
    parts = ["-m conntrack"]
    for opt in items:
        kind = _CT_OPTS.get(opt.name)
        if kind is None:
            raise ctx.error(f"conntrack: unknown option --{opt.name}")
        if len(opt.values) != 1:
            raise ctx.error(f"conntrack: --{opt.name} takes one argument")
        v = opt.values[0]
        val: object
        if kind == "state":
            val = _states(v, ctx, "conntrack", STATES)
        elif kind == "status":
            val = _states(v, ctx, "conntrack", STATUSES)
        elif kind == "proto":
            from nftrace.engine.packet import canonical_proto

            val = canonical_proto(v)
        elif kind in ("origsrc", "origdst", "replsrc", "repldst"):
            net, mask, _ = parse_prefix(v, ctx.family, ctx, f"--{opt.name}")
            val = (net, mask)
        elif kind.endswith("port"):
            val = parse_range(v, ctx, "tcp")
            kind = kind[:-4] + ("sport" if kind.endswith("sport") else "dport")
            kind = kind.replace("ssport", "sport").replace("ddport", "dport")
        elif kind == "dir":
            if v.upper() not in ("ORIGINAL", "REPLY"):
                raise ctx.error("conntrack: --ctdir takes ORIGINAL or REPLY")
            val = v.upper()
        else:
            val = v
        checks.append((kind, opt.negated, val))
        parts.append(("! " if opt.negated else "") + f"--{opt.name} {v}")
    if not checks:
        raise ctx.error("conntrack: at least one option is required")
    return ConntrackMatch(checks, " ".join(parts))


class NotrackTarget(TargetSpec):
    name = "NOTRACK"
    tables = ("raw",)

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
    tables = ("raw",)

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


@target("NOTRACK")
def parse_notrack(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    Opts(items, ctx, "NOTRACK").done()
    return NotrackTarget("-j NOTRACK")


@target("CT")
def parse_ct(items: list[Option], ctx: ParseCtx) -> TargetSpec:
    o = Opts(items, ctx, "CT")
    notrack = o.flag("notrack")
    zone = o.value("zone", "zone-orig", "zone-reply")
    helper = o.value("helper")
    o.value("ctevents")
    o.value("expevents")
    o.value("timeout")
    o.done()
    text = "-j CT " + " ".join(("--" + i.name + (" " + " ".join(i.values) if i.values else "")) for i in items)
    if notrack:
        return CtNotrackTarget(text.strip())
    return CtTarget(text.strip(), zone, helper)
