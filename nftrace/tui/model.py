"""What the TUI shows, read off a trace JSON (Contract 1, nftrace.trace/1).

Nothing here simulates netfilter: every fact comes from the trace document.
This module only *indexes* a branch's steps so that a debugger can move over
them: which chain each step is in (its "visit" of that chain), how deep in
the jump stack it is, which segment of the hook path it belongs to, and the
packet's state after it (read from the nat steps, route steps, conntrack steps
and the notes of rules such as "mark 0x0 -> 0x4000").

No textual import here: the model is tested on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

#: NAT targets: the rewrite they ask for happens when the hook's nat table ends (a "nat" step).
NAT_TARGETS = frozenset({"DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP"})
#: hooks whose nat table rewrites the destination (the others rewrite the source)
DST_NAT_HOOKS = frozenset({"PREROUTING", "OUTPUT"})
CHAIN_KINDS = frozenset({"rule", "policy", "return"})
TERMINAL = frozenset({"ACCEPT", "DROP", "QUEUE"})

#: the packet fields the side panel shows, in order
FIELDS = ("proto", "src", "dst", "iif", "oif", "mark", "connmark", "ct", "route")

_MARK_NOTE = re.compile(r"^mark (0x[0-9a-fA-F]+) -> (0x[0-9a-fA-F]+)")
_CONNMARK_NOTE = re.compile(r"^connmark (0x[0-9a-fA-F]+) -> (0x[0-9a-fA-F]+)")


@dataclass(frozen=True, slots=True)
class PacketState:
    """The packet after one step, as the trace tells it."""

    proto: str
    src: str  # "addr" or "addr:port" ("[v6]:port")
    dst: str
    iif: str | None
    oif: str | None
    mark: int
    connmark: int
    ct: str  # conntrack state, plus DNAT/SNAT once the connection is NATed
    route: str | None  # the last routing decision, in words
    original: str  # the connection's original tuple (before NAT)
    rerouted: str | None = None  # output device of a re-route, taking effect at POSTROUTING

    def value(self, name: str) -> str:
        v = getattr(self, name)
        if name in ("mark", "connmark"):
            return hex(v)
        return "-" if v is None or v == "" else str(v)


@dataclass(slots=True)
class Visit:
    """One traversal of one chain (a chain jumped to twice has two visits)."""

    id: int
    hook: str
    table: str
    chain: str
    depth: int  # 0 for the hook's built-in chain, +1 per jump
    walk: int  # which (hook, table) walk it belongs to
    entry: int = -1  # position of its first step
    caller: tuple[str, int] | None = None  # (chain, rule) that jumped/went here
    rows: dict[int, int] = field(default_factory=dict)  # rule position -> position of its evaluation
    tail: int | None = None  # position of the policy / end-of-chain return step
    last: int = -1  # position of its last step


@dataclass(slots=True)
class Position:
    """A place the debugger can stop at: the start, one step, or the end."""

    index: int
    kind: str  # start | rule | policy | return | nat | route | conntrack | loopback | end | <other step kinds>
    step: dict[str, Any] | None
    segment: int
    state: PacketState
    changed: frozenset[str]
    visit: int | None = None  # the chain visit this step is part of
    view: int | None = None  # the chain visit to show (nearest one for non-chain steps)
    depth: int = 0
    walk: int | None = None
    #: for a matched NAT rule: the rewrite the hook's nat step will do ("before -> after")
    pending_nat: str | None = None


@dataclass(slots=True)
class Segment:
    label: str  # PREROUTING routing INPUT FORWARD OUTPUT POSTROUTING loopback result
    first: int
    last: int


def endpoint(addr: str | None, port: Any) -> str:
    if not addr:
        return ""
    if port is None:
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def flow_string(d: dict[str, Any], brief: bool = False) -> str:
    """A packet dict (batch-line shape) as a flow string the edit form accepts back.

    `brief` leaves out a SYN flag (what a NEW TCP packet has anyway)."""
    src = endpoint(d.get("src") or "-", d.get("sport") if d.get("src") else None)
    if not d.get("src") and d.get("sport") is not None:
        src = f"-:{d['sport']}"
    s = f"{d.get('proto') or 'tcp'} {src} > {endpoint(d.get('dst') or '', d.get('dport'))}"
    origin = d.get("origin") or ("ingress" if d.get("iif") else "local")
    if origin == "local":
        s += " local"
    elif d.get("iif"):
        s += f" iif {d['iif']}"
    if d.get("oif"):
        s += f" oif {d['oif']}"
    mark = d.get("mark")
    if mark not in (None, 0, "0", ""):
        s += f" mark {hex(mark) if isinstance(mark, int) else mark}"
    if d.get("ct_state") and str(d["ct_state"]).upper() != "NEW":
        s += f" state {str(d['ct_state']).upper()}"
    if d.get("icmp_type") is not None:
        it = d["icmp_type"]
        code = d.get("icmp_code")
        s += f" type {it}" + (f"/{code}" if code is not None and not isinstance(it, str) else "")
    if d.get("tcp_flags") and (not brief or d["tcp_flags"] != "SYN"):
        s += f" flags {d['tcp_flags']}"
    return s


def route_words(s: dict[str, Any]) -> str:
    where = str(s.get("result", "?"))
    if s.get("oif"):
        where += f" dev {s['oif']}"
    if s.get("via"):
        where += f" via {s['via']}"
    return where


def result_words(r: dict[str, Any] | None) -> str:
    if not r:
        return "?"
    v, disp = r.get("verdict", "?"), r.get("disposition", "?")
    if disp in ("dropped", "unroutable") or v == "DROP":
        at = r.get("at") or {}
        if at.get("rule"):
            return f"{v} {disp} at {at.get('table')} {at.get('chain')} #{at.get('rule')}"
        if at.get("stage"):
            return f"{v} {disp} at {at['stage']}: {at.get('reason', '')}".rstrip(": ")
        if at:
            return f"{v} {disp} by the policy of {at.get('table')} {at.get('chain')}"
        return f"{v} {disp}"
    if disp == "queued":
        return "QUEUE to userspace"
    out = f" out {r['oif']}" if r.get("oif") else ""
    return f"{v} {disp}{out}"


class BranchModel:
    """A branch's steps as debugger positions: 0 = start, 1..N = steps, N+1 = end."""

    def __init__(self, doc: dict[str, Any], index: int) -> None:
        self.index = index
        b = doc["branches"][index]
        self.branch = b
        self.probability: float | None = b.get("probability")
        self.conditions: list[str] = list(b.get("conditions") or [])
        self.result: dict[str, Any] = b.get("result") or {}
        self.steps: list[dict[str, Any]] = b.get("steps") or []
        self.visits: list[Visit] = []
        self.positions: list[Position] = []
        self.segments: list[Segment] = []
        self._build(doc)

    # ------------------------------------------------------------------ building
    def _build(self, doc: dict[str, Any]) -> None:
        p = doc["packet"]
        origin = doc.get("origin", "ingress")
        first = PacketState(
            proto=p.get("proto", "?"),
            src=endpoint(p.get("src"), p.get("sport")),
            dst=endpoint(p.get("dst"), p.get("dport")),
            iif=p.get("iif") if origin == "ingress" else None,
            oif=p.get("oif"),
            mark=int(p.get("mark") or 0),
            connmark=int(p.get("ct_mark") or 0),
            ct=str(p.get("ct_state") or "NEW"),
            route=None,
            original=f"{endpoint(p.get('src'), p.get('sport')) or '(local)'} > {endpoint(p.get('dst'), p.get('dport'))}",
        )
        hooks = self._hook_labels()
        state = first
        self.positions.append(Position(0, "start", None, 0, first, frozenset()))
        stack: list[int] = []  # visit ids; stack[-1] is the chain being walked
        base: int | None = None  # the walk's built-in chain visit
        walk_key: tuple[str, str] | None = None
        walk_open = False
        walk = -1
        for n, s in enumerate(self.steps, start=1):
            kind = str(s.get("kind"))
            new = self._apply(state, s, p.get("sport"))
            pos = Position(n, kind, s, 0, new, _diff(state, new))
            state = new
            if kind in CHAIN_KINDS:
                key = (str(s.get("hook")), str(s.get("table")))
                if not walk_open or key != walk_key:
                    walk += 1
                    walk_key, walk_open = key, True
                    base = self._visit(key[0], key[1], key[0], 0, walk, None)
                    stack = [base]
                chain = str(s.get("chain"))
                if kind == "policy":
                    assert base is not None
                    vid = base
                else:
                    vid = stack[-1] if stack else -1
                    if vid < 0 or self.visits[vid].chain != chain:
                        # not what the walk structure predicts: show it as a visit of its own
                        vid = self._visit(key[0], key[1], chain, len(stack), walk, None)
                        stack.append(vid)
                v = self.visits[vid]
                if v.entry < 0:
                    v.entry = n
                v.last = n
                pos.visit = pos.view = vid
                pos.depth = v.depth
                pos.walk = walk
                if kind == "rule":
                    v.rows.setdefault(int(s.get("rule") or 0), n)
                    if s.get("matched") is not False:
                        verdict = s.get("verdict")
                        target = s.get("target")
                        if verdict == "JUMP" and target:
                            stack.append(self._visit(key[0], key[1], target, v.depth + 1, walk, (chain, s["rule"])))
                        elif verdict == "GOTO" and target:
                            stack.pop()
                            stack.append(self._visit(key[0], key[1], target, v.depth, walk, (chain, s["rule"])))
                        elif verdict == "RETURN":
                            if len(stack) > 1:
                                stack.pop()
                        elif verdict in TERMINAL:
                            walk_open = False
                        if target in NAT_TARGETS:
                            pos.pending_nat = self._pending_nat(n, key[0])
                elif kind == "return":
                    v.tail = n
                    if len(stack) > 1:
                        stack.pop()
                else:  # policy
                    v.tail = n
                    walk_open = False
            self.positions.append(pos)
        end_state = state
        r = self.result.get("packet") or {}
        if r:
            end_state = replace(
                state,
                src=endpoint(r.get("src"), r.get("sport")) or state.src,
                dst=endpoint(r.get("dst"), r.get("dport")) or state.dst,
                oif=self.result.get("oif") or state.oif,
            )
        self.positions.append(Position(len(self.positions), "end", None, 0, end_state, _diff(state, end_state)))
        # which chain to show at non-chain positions: the last one seen, else the next one
        last: int | None = None
        for pos in self.positions:
            if pos.view is None:
                pos.view = last
            last = pos.view
        nxt: int | None = None
        for pos in reversed(self.positions):
            if pos.view is None:
                pos.view = nxt
            if pos.visit is not None:
                nxt = pos.visit
        # hook path segments
        for pos in self.positions:
            label = hooks[pos.index]
            if self.segments and self.segments[-1].label == label:
                self.segments[-1].last = pos.index
            else:
                self.segments.append(Segment(label, pos.index, pos.index))
            pos.segment = len(self.segments) - 1

    def _visit(self, hook: str, table: str, chain: str, depth: int, walk: int, caller: tuple[str, int] | None) -> int:
        self.visits.append(Visit(len(self.visits), hook, table, chain, depth, walk, caller=caller))
        return len(self.visits) - 1

    def _pending_nat(self, n: int, hook: str) -> str | None:
        for s in self.steps[n:]:
            k = s.get("kind")
            if k == "nat" and s.get("hook", hook) == hook:
                return f"{s.get('before')} -> {s.get('after')}"
            if k in CHAIN_KINDS and s.get("hook") != hook:
                return None
        return None

    def _hook_labels(self) -> list[str]:
        """The hook-path label of every position (start and end included)."""
        labels: list[str] = []
        hooks: list[str | None] = []
        for s in self.steps:
            k = s.get("kind")
            if k == "route":
                hooks.append("routing")
            elif k == "loopback":
                hooks.append("loopback")
            elif s.get("hook"):
                hooks.append(str(s["hook"]))
            else:
                hooks.append(None)  # conntrack and other hook-less steps: the hook around them
        for i, h in enumerate(hooks):
            if h is None:
                h = next((x for x in hooks[i + 1 :] if x not in (None, "routing", "loopback")), None)
                if h is None:
                    h = next((x for x in reversed(hooks[:i]) if x is not None), "PREROUTING")
            labels.append(h)
        return [labels[0] if labels else "result", *labels, "result"]

    @staticmethod
    def _apply(st: PacketState, s: dict[str, Any], sport: Any = None) -> PacketState:
        kind = s.get("kind")
        if st.rerouted is not None and s.get("hook") == "POSTROUTING":
            st = replace(st, oif=st.rerouted, rerouted=None)
        if kind == "conntrack":
            ct = str(s.get("state") or st.ct)
            return st if ct == st.ct.split()[0] else replace(st, ct=ct)
        if kind == "nat":
            after = str(s.get("after") or "")
            nat = str(s.get("type") or "NAT")
            if s.get("random_port"):
                after += " (random port)"
            if not after or after == s.get("before"):
                return st
            dst = s.get("hook") in DST_NAT_HOOKS if s.get("hook") else nat in ("DNAT", "REDIRECT")
            flag = "DNAT" if dst else "SNAT"
            ct = st.ct if flag in st.ct.split() else f"{st.ct} {flag}"
            return replace(st, dst=after, ct=ct) if dst else replace(st, src=after, ct=ct)
        if kind == "route":
            res = s.get("result")
            if res == "reroute":
                # the new route's device is the output device from POSTROUTING on; the rest of
                # OUTPUT still sees the old one (nftrace.engine.pipeline._reroute_local)
                return replace(st, route=f"{route_words(s)} (from POSTROUTING)", rerouted=s.get("oif"))
            oif = s.get("oif") if res in ("forward", "output") else None
            src = s.get("src")
            new = replace(st, route=route_words(s), oif=oif)
            if src and not st.src:
                new = replace(new, src=endpoint(src, sport))
            return new
        if kind == "loopback":
            return replace(st, iif=s.get("iif") or "lo", oif=None)
        if kind == "rule" and s.get("note"):
            note = str(s["note"])
            m = _MARK_NOTE.match(note)
            if m:
                return replace(st, mark=int(m.group(2), 16))
            m = _CONNMARK_NOTE.match(note)
            if m:
                return replace(st, connmark=int(m.group(2), 16))
            if "now UNTRACKED" in note:
                return replace(st, ct="UNTRACKED")
        return st

    # ------------------------------------------------------------------ navigation
    @property
    def end(self) -> int:
        return len(self.positions) - 1

    def step_over(self, i: int) -> int:
        """`n`: the next position in this chain or above it (jumps are stepped over)."""
        return self._scan(i, deeper_ok=False)

    def finish(self, i: int) -> int:
        """`f`: the first position after the current chain (in its caller, or after the table)."""
        return self._scan(i, deeper_ok=True)

    def _scan(self, i: int, deeper_ok: bool) -> int:
        cur = self.positions[i]
        if cur.walk is None:
            return min(i + 1, self.end)
        j = i + 1
        positions = self.positions
        while j < len(positions):
            p = positions[j]
            if p.walk != cur.walk or p.depth < cur.depth or (p.depth == cur.depth and not deeper_ok):
                return j
            # inside a chain at or below this one: skip the rest of that chain's visit at once
            assert p.visit is not None
            j = max(j + 1, self.visits[p.visit].last + 1) if p.depth > cur.depth or deeper_ok else j + 1
        return self.end

    def find_break(self, i: int, rules: set[tuple[str, str, int]], chains: set[tuple[str, str]]) -> int | None:
        """`c`: the first position after i that stops at a breakpoint (a rule evaluated, a chain entered)."""
        best: int | None = None
        for v in self.visits:
            if v.last <= i or (best is not None and v.entry >= best):
                continue
            key = (v.table, v.chain)
            if key in chains and v.entry > i:
                best = v.entry if best is None else min(best, v.entry)
            for t, c, r in rules:
                if (t, c) == key:
                    q = v.rows.get(r)
                    if q is not None and q > i and (best is None or q < best):
                        best = q
        return best

    def first_eval(self, table: str, chain: str, rule: int, near: int) -> int | None:
        """The position evaluating (table, chain, rule): the visit shown at `near` first, else the first one."""
        view = self.positions[near].view
        if view is not None:
            v = self.visits[view]
            if (v.table, v.chain) == (table, chain) and rule in v.rows:
                return v.rows[rule]
        for v in self.visits:
            if (v.table, v.chain) == (table, chain) and rule in v.rows:
                return v.rows[rule]
        return None

    def visit_of_chain(self, table: str, chain: str, near: int) -> int | None:
        """A visit of (table, chain): the last one at or before `near`, else the first one."""
        best = None
        for v in self.visits:
            if (v.table, v.chain) == (table, chain):
                if v.entry <= near or best is None:
                    best = v.id
        return best

    def common_prefix(self, other: BranchModel) -> int:
        n = 0
        for a, b in zip(self.steps, other.steps, strict=False):
            if a != b:
                break
            n += 1
        return n

    def label(self, service: bool = True) -> str:
        """What distinguishes this branch: the endpoint NAT sent it to, the verdict and the way out.

        `service`: name the kube-proxy/Docker service too (when the branches differ in it)."""
        r = self.result
        svc = self.branch.get("service") if service else None
        to = self.branch.get("endpoint")
        if not to:
            nat = [s for s in self.steps if s.get("kind") == "nat" and s.get("after") != s.get("before")]
            to = nat[0].get("after") if nat else None
        head = f"{svc} -> {to}: " if svc and to else f"-> {to}: " if to else f"{svc}: " if svc else ""
        if r.get("disposition") in ("dropped", "unroutable") or r.get("verdict") == "DROP":
            return head + result_words(r)
        out = f" out {r['oif']}" if r.get("oif") else ""
        masq = " (masqueraded)" if self.branch.get("masquerade") else ""
        return f"{head}{r.get('verdict', '?')} {r.get('disposition', '')}{out}{masq}"


class TraceModel:
    """All branches of one trace document."""

    def __init__(self, doc: dict[str, Any]) -> None:
        if "branches" not in doc:
            raise ValueError("not a trace document (no 'branches')")
        self.doc = doc
        self.packet: dict[str, Any] = doc.get("packet") or {}
        self.origin: str = doc.get("origin", "ingress")
        self.warnings: list[str] = list(doc.get("warnings") or [])
        self.branches = [BranchModel(doc, i) for i in range(len(doc["branches"]))]


def describe(pos: Position, model: BranchModel) -> str:
    """One line saying what happens at this position."""
    s = pos.step
    if pos.kind == "start":
        st = pos.state
        where = f"arrives on {st.iif}" if st.iif else "is sent by a local process"
        return f"start: the packet {where}"
    if pos.kind == "end":
        return f"end: {result_words(model.result)}"
    assert s is not None
    k = pos.kind
    if k == "rule":
        tag = f"{s.get('table')} {s.get('chain')} #{s.get('rule')}"
        if s.get("matched") is False:
            return f"{tag} no match: {s.get('why', '')}"
        v = s.get("verdict")
        tgt = s.get("target")
        out = f"{tag} matched -> {v}" + (
            f" {tgt}" if v in ("JUMP", "GOTO") else f" ({tgt})" if tgt and tgt != v else ""
        )
        if s.get("note"):
            out += f"; {s['note']}"
        if pos.pending_nat:
            out += f"; {tgt} {pos.pending_nat} when nat {s.get('hook')} ends"
        if s.get("unknown"):
            out += f"; unknown: {s['unknown']}"
        return out
    if k == "policy":
        return f"{s.get('table')} {s.get('chain')} policy {s.get('verdict')}"
    if k == "return":
        v = model.visits[pos.visit] if pos.visit is not None else None
        back = f" to {v.caller[0]} after #{v.caller[1]}" if v and v.caller else ""
        return f"{s.get('table')} {s.get('chain')}: end of chain, return{back}"
    if k == "nat":
        note = f" ({s['note']})" if s.get("note") else ""
        return f"{s.get('type')} in nat {s.get('hook', '')}: {s.get('before')} -> {s.get('after')}{note}".replace(
            "  ", " "
        )
    if k == "route":
        why = f" ({s['why']})" if s.get("why") else ""
        return f"routing: {route_words(s)}{why}: {s.get('reason', '')}".rstrip(": ")
    if k == "conntrack":
        return f"conntrack: {s.get('state')}"
    if k == "loopback":
        return f"loopback: the packet re-enters through {s.get('iif', 'lo')}"
    return f"{k}: " + ", ".join(f"{a}={b}" for a, b in s.items() if a != "kind")


def _diff(a: PacketState, b: PacketState) -> frozenset[str]:
    if a is b:
        return frozenset()
    return frozenset(f for f in FIELDS if getattr(a, f) != getattr(b, f))
