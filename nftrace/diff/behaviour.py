"""Behavioural comparison: trace each packet through both sides and compare outcomes.

A packet's outcome on one side is the SET of its branches' fates, each with
its probability: a fate is the verdict, the disposition, the final addresses
and ports, the output interface, whether a REJECT answered the packet (and
how), and, when asked (`path=True`), the kernel-visible path (every matched
rule, by its canonical text with B's kube-proxy chain names mapped to A's,
and every policy applied).  Two sides treat a packet the same when they have
the same fates with the same probabilities (within 1e-9; an uncertain branch
has no probability and compares as such).

For a packet treated differently, `first_divergence` names the first hop where
the paths part: of every pair of branches (one per side) whose fates differ,
the pair with the longest common start is taken, and its first differing step
is reported from both sides.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nftrace.diff.structural import RuleKeys
from nftrace.engine.packet import packet_from_dict
from nftrace.engine.pipeline import Engine
from nftrace.errors import NftraceError

EPS = 1e-9
Fate = tuple[Any, ...]


@dataclass
class SideTrace:
    doc: dict[str, Any]  # the trace JSON (Contract 1), or {"error": ...}
    fates: list[Fate]  # one per branch (empty on error)
    hops: list[list[tuple[Any, ...]]]  # normalised steps per branch

    @property
    def error(self) -> str | None:
        e = self.doc.get("error")
        return str(e) if e is not None else None


def trace_side(engine: Engine, keys: RuleKeys, packet: dict[str, Any], path: bool) -> SideTrace:
    try:
        pkt, origin = packet_from_dict(dict(packet))
        doc = engine.trace(pkt, origin).to_json()
    except NftraceError as e:
        return SideTrace({"error": e.one_line().removeprefix("nftrace: ")}, [], [])
    hops = [[_hop(s, keys) for s in b["steps"]] for b in doc["branches"]]
    fates = [_fate(b, h, path) for b, h in zip(doc["branches"], hops, strict=True)]
    return SideTrace(doc, fates, hops)


def _hop(s: dict[str, Any], keys: RuleKeys) -> tuple[Any, ...]:
    kind = s.get("kind")
    if kind == "rule":
        rule = keys.rule_at(s["table"], s["chain"], s["rule"])
        text = keys.key(rule) if rule is not None else s.get("text")
        tgt = s.get("target")
        if s.get("verdict") in ("JUMP", "GOTO") and tgt:
            tgt = keys.chain_name(s["table"], tgt)
        return ("rule", s.get("hook"), s["table"], keys.chain_name(s["table"], s["chain"]), text,
                s.get("matched"), s.get("verdict"), tgt)  # fmt: skip
    if kind == "policy":
        return ("policy", s.get("hook"), s.get("table"), s.get("chain"), s.get("verdict"))
    if kind == "return":
        return ("return", s.get("hook"), s.get("table"), keys.chain_name(s["table"], s["chain"]))
    if kind == "nat":
        return ("nat", s.get("type"), s.get("before"), s.get("after"))
    if kind == "route":
        return ("route", s.get("result"), s.get("oif"), s.get("via"))
    return (str(kind), tuple(sorted((k, str(v)) for k, v in s.items() if k != "kind")))


def _reject(b: dict[str, Any]) -> str | None:
    """How a REJECT answered the packet (its --reject-with), when the branch ends in one."""
    r = b["result"]
    if r.get("verdict") != "DROP":
        return None
    for s in reversed(b["steps"]):
        if s.get("kind") == "rule" and s.get("matched", True):
            if s.get("target") == "REJECT":
                text = s.get("text", "")
                _, _, after = text.partition("--reject-with ")
                return after.split()[0] if after else "icmp-port-unreachable"
            return None
    return None


def _fate(b: dict[str, Any], hops: list[tuple[Any, ...]], path: bool) -> Fate:
    r = b["result"]
    pk = dict(r.get("packet") or {})
    for k in pk.get("random_ports", []) or []:
        pk[k] = "random"
    if r.get("verdict") == "DROP":
        # where a dropped packet would have gone, and as what, is no part of its fate
        out: list[Any] = [r.get("verdict"), r.get("disposition"), None, None, None, None, None, _reject(b)]
    else:
        out = [
            r.get("verdict"),
            r.get("disposition"),
            r.get("oif"),
            pk.get("src"),
            pk.get("dst"),
            pk.get("sport"),
            pk.get("dport"),
            None,
        ]
    if path:
        out.append(tuple(h for h in hops if h[0] in ("rule", "policy") and h[5 if h[0] == "rule" else 0] is not False))
    return tuple(out)


def outcome(st: SideTrace) -> dict[Fate, float | None]:
    """fate -> summed probability (None when a branch with that fate is uncertain)."""
    if st.error is not None:
        return {("error", st.error): 1.0}
    acc: dict[Fate, float | None] = defaultdict(float)
    for b, f in zip(st.doc["branches"], st.fates, strict=True):
        p = b.get("probability")
        cur = acc[f]
        acc[f] = None if p is None or cur is None else cur + p
    return dict(acc)


def same(oa: dict[Fate, float | None], ob: dict[Fate, float | None]) -> bool:
    if set(oa) != set(ob):
        return False
    for f, pa in oa.items():
        pb = ob[f]
        if (pa is None) != (pb is None):
            return False
        if pa is not None and pb is not None and abs(pa - pb) > EPS:
            return False
    return True


def first_divergence(a: SideTrace, b: SideTrace) -> dict[str, Any]:
    """The first step where the two sides' paths part (see the module docstring)."""
    if a.error is not None or b.error is not None:
        return {"reason": "error", "a": a.error, "b": b.error}
    oa, ob = outcome(a), outcome(b)
    if set(oa) == set(ob):
        return _probability_divergence(a, b, oa, ob)
    differing = {f for f in set(oa) | set(ob) if f not in oa or f not in ob or not same({f: oa[f]}, {f: ob[f]})}
    best: tuple[int, float, int, int] | None = None
    for i, fa in enumerate(a.fates):
        for j, fb in enumerate(b.fates):
            if fa == fb or (fa not in differing and fb not in differing):
                continue
            n = _common(a.hops[i], b.hops[j])
            pa = a.doc["branches"][i].get("probability")
            pb = b.doc["branches"][j].get("probability")
            weight = (pa or 0.0) + (pb or 0.0)
            cand = (n, weight, -i, -j)
            if best is None or cand > best:
                best = cand
    if best is None:
        return _probability_divergence(a, b, oa, ob)
    n, _, mi, mj = best
    d = _describe(a, b, -mi, -mj, n)
    d["reason"] = "path" if d["a"] is not None or d["b"] is not None else "result"
    return d


def _probability_divergence(
    a: SideTrace, b: SideTrace, oa: dict[Fate, float | None], ob: dict[Fate, float | None]
) -> dict[str, Any]:
    """Same outcomes, other odds (a statistic match changed, or a match became uncertain): the first
    branch condition that differs, and the outcome whose probability changed."""
    for i, fa in enumerate(a.fates):
        pa, pb = oa.get(fa), ob.get(fa)
        if (pa is None) == (pb is None) and (pa is None or pb is None or abs(pa - pb) <= EPS):
            continue
        j = next((k for k, fb in enumerate(b.fates) if fb == fa), 0)
        ca = a.doc["branches"][i].get("conditions", [])
        cb = b.doc["branches"][j].get("conditions", []) if b.doc["branches"] else []
        k = _common([(c,) for c in ca], [(c,) for c in cb])
        d = _describe(a, b, i, j, _common(a.hops[i], b.hops[j]))
        d.update(
            reason="probability",
            probability_a=pa,
            probability_b=pb,
            condition_a=ca[k] if k < len(ca) else None,
            condition_b=cb[k] if k < len(cb) else None,
        )
        return d
    return {"reason": "probability"}


def _common(x: list[tuple[Any, ...]], y: list[tuple[Any, ...]]) -> int:
    n = 0
    for p, q in zip(x, y, strict=False):
        if p != q:
            break
        n += 1
    return n


def _describe(a: SideTrace, b: SideTrace, i: int, j: int, n: int) -> dict[str, Any]:
    sa = a.doc["branches"][i]["steps"]
    sb = b.doc["branches"][j]["steps"]
    step_a = sa[n] if n < len(sa) else None
    step_b = sb[n] if n < len(sb) else None
    hook = None
    for s in (step_a, step_b):
        if s is not None and s.get("hook"):
            hook = s["hook"]
            break
    if hook is None:
        for s in reversed(sa[:n]):
            if s.get("hook"):
                hook = s["hook"]
                break
    return {"step": n, "hook": hook, "a": step_a, "b": step_b, "branch_a": i + 1, "branch_b": j + 1}


def result_summary(st: SideTrace) -> dict[str, Any]:
    """The `a`/`b` object of a difference: the most probable branch's result, plus every branch."""
    if st.error is not None:
        return {"error": st.error}
    branches = st.doc["branches"]
    main = dict(branches[0]["result"]) if branches else {}
    rej = _reject(branches[0]) if branches else None
    if rej:
        main["reject_with"] = rej
    main["probability"] = branches[0].get("probability") if branches else None
    main["branches"] = [
        {"probability": b.get("probability"), "conditions": b.get("conditions", []), "result": b["result"]}
        | ({"reject_with": _reject(b)} if _reject(b) else {})
        for b in branches
    ]
    return main


def compare_packets(
    ea: Engine,
    eb: Engine,
    ka: RuleKeys,
    kb: RuleKeys,
    packets: list[dict[str, Any]],
    path: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """The `differences` list of nftrace.diff/1 for these packets (in their order)."""
    out: list[dict[str, Any]] = []
    for n, pk in enumerate(packets):
        ta = trace_side(ea, ka, pk, path)
        tb = trace_side(eb, kb, pk, path)
        if not same(outcome(ta), outcome(tb)):
            fa, fb = {f[:8] for f in ta.fates}, {f[:8] for f in tb.fates}
            if ta.error is not None or tb.error is not None:
                kind = "error"
            elif fa != fb:
                kind = "fate"
            elif path and set(ta.fates) != set(tb.fates):
                kind = "path"
            else:
                kind = "probability"
            out.append(
                {
                    "packet": dict(pk),
                    "a": result_summary(ta),
                    "b": result_summary(tb),
                    "first_divergence": first_divergence(ta, tb),
                    "kind": kind,
                    "uncertain": any(b.get("probability") is None for b in ta.doc.get("branches", []))
                    or any(b.get("probability") is None for b in tb.doc.get("branches", [])),
                }
            )
        if progress is not None:
            progress(n + 1)
    return out
