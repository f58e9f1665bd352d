"""Observed hops against the predicted branches.

LOG/NFLOG probes: a branch predicts the sequence of probe numbers the kernel
logs (see plan.Plan.expected); the observation is the sequence of probe lines
of one packet (one IP ID).  Kernel trace: a branch predicts its matched rules
and applied policies (hook, table, chain, position, verdict, jump target), as
the kernel's trace reports them; the legacy trace has no verdicts, so only
positions are compared there.

Outcomes: ``confirmed`` (the observation is exactly one branch), ``differs``
(it contradicts every branch: the first hop where it leaves the closest
branch is reported with both sides), ``inconclusive`` (nothing of the packet
was seen, or a probe that the difference depends on was removed by someone
else during the run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nftrace.live.plan import HOOKS, Plan, Visit
from nftrace.live.sources import Hit

SHOWN_FIELDS = ("IN", "OUT", "SRC", "DST", "PROTO", "SPT", "DPT", "TYPE", "CODE", "ID", "MARK")


def packet_fields(fields: dict[str, str]) -> dict[str, str]:
    return {k: fields[k] for k in SHOWN_FIELDS if k in fields}


@dataclass
class Outcome:
    verdict: str  # confirmed | differs | inconclusive
    branch: int | None  # index of the matching (or closest) branch
    observed: list[dict[str, Any]]
    predicted: list[dict[str, Any]]  # the hops of `branch`
    first_difference: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def confirmed(self) -> bool:
        return self.verdict == "confirmed"


def _prob_key(trace: dict[str, Any], i: int) -> float:
    p = trace["branches"][i].get("probability")
    return -(p if p is not None else -1.0)


def _closest(candidates: list[list[Any]], observed: list[Any], trace: dict[str, Any]) -> tuple[int, int]:
    """(branch index, length of its common prefix with observed): longest prefix, then most probable."""
    best, best_len = 0, -1
    for i in sorted(range(len(candidates)), key=lambda i: _prob_key(trace, i)):
        n = 0
        for a, b in zip(candidates[i], observed, strict=False):
            if a != b:
                break
            n += 1
        if n > best_len:
            best, best_len = i, n
    return best, best_len


# ---------------------------------------------------------------------------- LOG / NFLOG probes


def log_hop(n: int, visit: Visit | None, hit: Hit | None, plan: Plan) -> dict[str, Any]:
    p = plan.by_n().get(n)
    d: dict[str, Any] = {"probe": n}
    if visit is not None:
        d.update(hook=visit.hook, table=visit.table, chain=visit.chain, packet=visit.flow.to_json())
    elif p is not None:
        d.update(hook=p.hook, table=p.table, chain=p.chain, match=p.flow.to_json())
    if hit is not None:
        d["packet"] = packet_fields(hit.fields)
        d["line"] = hit.line
    return d


def compare_log(
    plan: Plan, trace: dict[str, Any], hits: list[Hit], disappeared: set[int], send_error: str | None = None
) -> Outcome:
    observed_n = [h.n for h in hits if h.n]
    expected = [plan.expected(b) for b in range(len(plan.branches))]
    exp_n = [[n for n, _ in e] for e in expected]
    observed = [log_hop(h.n, None, h, plan) for h in hits if h.n]
    for i in sorted(range(len(exp_n)), key=lambda i: _prob_key(trace, i)):
        if exp_n[i] == observed_n and (observed_n or send_error):
            pred = [log_hop(n, v, None, plan) for n, v in expected[i]]
            sent = [] if observed_n else [f"the kernel refused to send the packet too ({send_error})"]
            return Outcome("confirmed", i, _annotate(observed, expected[i]), pred, None, sent)
    b, k = _closest(exp_n, observed_n, trace)
    pred = [log_hop(n, v, None, plan) for n, v in expected[b]]
    p_hop = pred[k] if k < len(pred) else None
    o_hop = observed[k] if k < len(observed) else None
    diff: dict[str, Any] = {"index": k, "branch": b, "predicted": p_hop, "observed": o_hop}
    verdict = "differs"
    notes: list[str] = []
    if not observed_n:
        verdict = "inconclusive"
        why = f"sending failed: {send_error}" if send_error else "no probe logged the packet"
        diff["explanation"] = (
            f"{why}: the packet never reached the first predicted chain, or it did not arrive at all "
            "(wrong --from-netns, no route inside it, no traffic before --timeout)"
        )
    else:
        lost = [n for n, _ in expected[b][k:] if n in disappeared]
        if lost:
            verdict = "inconclusive"
            diff["explanation"] = (
                f"probe(s) {', '.join(map(str, lost))} disappeared during the run (another program rewrote the "
                "chain): the observation is incomplete from there"
            )
        elif p_hop is None:
            diff["explanation"] = "the kernel logged a hop after the predicted path ended"
        elif o_hop is None:
            diff["explanation"] = (
                f"the packet was not seen at {p_hop['hook']} {p_hop['table']}:{p_hop['chain']} as predicted "
                "(it took another path, was dropped or rewritten earlier, or did not match there)"
            )
        else:
            diff["explanation"] = (
                f"predicted {p_hop['hook']} {p_hop['table']}:{p_hop['chain']}, the kernel logged "
                f"{o_hop['hook']} {o_hop['table']}:{o_hop['chain']}"
            )
    return Outcome(verdict, b, _annotate(observed, expected[b]), pred, diff, notes)


def _annotate(observed: list[dict[str, Any]], expected: list[tuple[int, Visit]]) -> list[dict[str, Any]]:
    """Fill the hook of each observed hop from the probe (a user chain may be entered from several)."""
    for i, hop in enumerate(observed):
        if i < len(expected) and expected[i][0] == hop["probe"]:
            hop["hook"] = expected[i][1].hook
    return observed


# ---------------------------------------------------------------------------- rule-by-rule trace


def branch_rule_path(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for s in steps:
        if s.get("kind") == "rule" and s.get("matched"):
            tgt = s.get("target") if s.get("verdict") in ("JUMP", "GOTO") else None
            out.append({"kind": "rule", "hook": s["hook"], "table": s["table"], "chain": s["chain"],
                        "rule": s["rule"], "verdict": s["verdict"], "target": tgt})  # fmt: skip
        elif s.get("kind") == "policy":
            out.append({"kind": "policy", "hook": s["hook"], "table": s["table"], "chain": s["chain"],
                        "rule": None, "verdict": s["verdict"], "target": None})  # fmt: skip
    return out


def trace_hops(hits: list[Hit]) -> list[dict[str, Any]]:
    """Observed trace events as hops (return events dropped: the prediction has them as steps only)."""
    out: list[dict[str, Any]] = []
    hook_of: dict[str, str] = {}
    for h in hits:
        ev = h.trace
        if ev is None or ev.kind == "return":
            continue
        key = ev.trace_id or "-"
        if ev.chain in HOOKS:
            hook_of[key] = ev.chain
        hop = {
            "kind": ev.kind,
            "hook": hook_of.get(key, ev.chain),
            "table": ev.table,
            "chain": ev.chain,
            "rule": ev.num if ev.kind == "rule" else None,
            "verdict": ev.verdict,
            "target": ev.target if ev.verdict in ("JUMP", "GOTO") else None,
            "packet": packet_fields(h.fields),
        }
        out.append(hop)
    return out


def _key(hop: dict[str, Any], with_verdict: bool) -> tuple[Any, ...]:
    k = (hop["kind"], hop["hook"], hop["table"], hop["chain"], hop["rule"])
    return (*k, hop["verdict"], hop["target"]) if with_verdict else k


def compare_trace(
    trace: dict[str, Any], hits: list[Hit], send_error: str | None = None, arrived: bool = False
) -> Outcome:
    """`arrived`: the trace table saw the packet (so an empty path is an observation, not silence)."""
    observed = trace_hops(hits)
    with_verdict = all(h["verdict"] for h in observed)
    paths = [branch_rule_path(b["steps"]) for b in trace["branches"]]
    keys = [[_key(h, with_verdict) for h in p] for p in paths]
    okeys = [_key(h, with_verdict) for h in observed]
    notes = [] if with_verdict else ["the legacy trace has no verdicts: positions compared only"]
    for i in sorted(range(len(paths)), key=lambda i: _prob_key(trace, i)):
        if keys[i] == okeys and (okeys or send_error or arrived):
            if not okeys:
                notes.append(
                    f"the kernel refused to send the packet too ({send_error})"
                    if send_error
                    else "the packet arrived and no iptables chain saw it, as predicted"
                )
            return Outcome("confirmed", i, observed, paths[i], None, notes)
    b, k = _closest(keys, okeys, trace)
    p_hop = paths[b][k] if k < len(paths[b]) else None
    o_hop = observed[k] if k < len(observed) else None
    diff: dict[str, Any] = {"index": k, "branch": b, "predicted": p_hop, "observed": o_hop}
    verdict = "differs"
    if not observed:
        verdict = "inconclusive"
        diff["explanation"] = (
            f"sending failed: {send_error}" if send_error else "the trace showed nothing of the packet"
        )
    elif p_hop is None:
        diff["explanation"] = "the kernel went on after the predicted path ended"
    elif o_hop is None:
        diff["explanation"] = "the kernel's trace ended before the predicted path did"
    else:
        diff["explanation"] = "the kernel's trace and the prediction part here"
    return Outcome(verdict, b, observed, paths[b], diff, notes)
