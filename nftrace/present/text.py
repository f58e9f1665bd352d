"""Text presentation of a trace (JSON contract in, lines out).  Computes nothing."""

from __future__ import annotations

from typing import Any

_COLORS = {
    "ACCEPT": "32",
    "DROP": "31",
    "QUEUE": "35",
    "JUMP": "36",
    "GOTO": "36",
    "RETURN": "36",
    "CONTINUE": "2",
    "hook": "1;34",
    "nat": "1;33",
    "route": "1;35",
    "warn": "33",
    "dim": "2",
    "bold": "1",
}


class Style:
    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, key: str, text: str) -> str:
        code = _COLORS.get(key)
        if not self.color or code is None:
            return text
        return f"\x1b[{code}m{text}\x1b[0m"


def _ep(addr: Any, port: Any) -> str:
    a = str(addr)
    if port is None:
        return a
    return f"[{a}]:{port}" if ":" in a else f"{a}:{port}"


def flow_text(p: dict[str, Any], origin: str | None = None) -> str:
    s = f"{p.get('proto', '?')} {_ep(p['src'], p.get('sport'))} > {_ep(p['dst'], p.get('dport'))}"
    if origin == "local":
        s += " local"
    elif p.get("iif"):
        s += f" iif {p['iif']}"
    if p.get("mark"):
        s += f" mark {hex(p['mark'])}"
    if p.get("ct_state") and p.get("ct_state") != "NEW":
        s += f" state {p['ct_state']}"
    return s


def render_trace(doc: dict[str, Any], color: bool = False) -> str:
    st = Style(color)
    out: list[str] = []
    if "error" in doc:
        return f"error: {doc['error']}"
    unknown = any(b.get("probability") is None for b in doc["branches"])
    if unknown:
        out.append(
            st("warn", "UNCERTAIN: this answer depends on matches nftrace cannot decide offline (see conditions)")
        )
    out.append(st("bold", "packet: ") + flow_text(doc["packet"], doc["origin"]) + f"  ({doc['packet']['ct_state']})")
    for w in doc.get("warnings", []):
        out.append(st("warn", f"warning: {w}"))
    n = len(doc["branches"])
    for k, b in enumerate(doc["branches"], 1):
        out.append("")
        prob = b.get("probability")
        ptxt = "p=unknown" if prob is None else f"p={prob:.6g}"
        if n > 1 or prob is None or b.get("conditions"):
            out.append(st("bold", f"branch {k}/{n}  {ptxt}"))
            for c in b.get("conditions", []):
                out.append(st("dim", f"  if {c}"))
        out.extend(render_steps(b["steps"], st))
        out.append(render_result(b["result"], st, prob is None))
    return "\n".join(out)


def render_steps(steps: list[dict[str, Any]], st: Style) -> list[str]:
    out: list[str] = []
    hook = None
    for s in steps:
        kind = s["kind"]
        if kind in ("rule", "policy", "return") and s.get("hook") != hook:
            hook = s.get("hook")
            out.append(st("hook", f"  {hook}"))
        if kind == "rule":
            tag = f"{s['table']:<8} {s['chain']} #{s['rule']}"
            if s.get("matched") is False:
                out.append(st("dim", f"    {tag:<40} {s['text']}"))
                out.append(st("dim", f"    {'':<40}   no: {s.get('why', '')}"))
                continue
            v = s["verdict"]
            tgt = f" {s['target']}" if v in ("JUMP", "GOTO") else ""
            out.append(f"    {tag:<40} {s['text']}  => {st(v, v + tgt)}")
            if s.get("service") or s.get("endpoint"):
                out.append(st("dim", f"    {'':<40}   {s.get('service') or ''} {s.get('endpoint') or ''}".rstrip()))
            if s.get("note"):
                out.append(st("dim", f"    {'':<40}   {s['note']}"))
            if s.get("unknown"):
                out.append(st("warn", f"    {'':<40}   unknown: {s['unknown']}"))
        elif kind == "policy":
            v = s["verdict"]
            out.append(f"    {s['table']:<8} {s['chain']} policy{'':<26} => {st(v, v)}")
        elif kind == "return":
            out.append(st("dim", f"    {s['table']:<8} {s['chain']} (end of chain: return)"))
        elif kind == "nat":
            note = f" ({s['note']})" if s.get("note") else ""
            out.append(st("nat", f"    {s['type']}: {s['before']} -> {s['after']}{note}"))
        elif kind == "route":
            hook = None
            res = s["result"]
            where = ""
            if s.get("oif"):
                where += f" dev {s['oif']}"
            if s.get("via"):
                where += f" via {s['via']}"
            if s.get("table"):
                where += f" (table {s['table']})"
            out.append(st("route", f"  routing: {res}{where}") + st("dim", f"  {s.get('reason', '')}"))
        elif kind == "conntrack":
            out.append(st("dim", f"  conntrack: {s['state']}"))
        elif kind == "loopback":
            hook = None
            out.append(st("route", "  loopback: the packet re-enters through lo"))
    return out


def render_result(r: dict[str, Any], st: Style, uncertain: bool) -> str:
    p = r.get("packet", {})
    v = r["verdict"]
    disp = r["disposition"]
    prefix = "  => " + ("if the conditions hold: " if uncertain else "")
    pk = f"{_ep(p.get('src'), p.get('sport'))} > {_ep(p.get('dst'), p.get('dport'))}"
    if disp == "dropped" or v == "DROP":
        at = r.get("at") or {}
        if at.get("stage"):
            where = f"at {at['stage']}: {at.get('reason', '')}"
        elif at.get("rule"):
            where = f"at {at.get('table')} {at.get('chain')} rule {at.get('rule')}"
        elif at:
            where = f"by the policy of {at.get('table')} {at.get('chain')}"
        else:
            where = ""
        return prefix + st("DROP", f"{v} ({disp}) {where}".rstrip())
    if disp == "queued":
        return prefix + st("QUEUE", "QUEUE: handed to a userspace program, which decides")
    extra = f" out {r['oif']}" if r.get("oif") else ""
    return prefix + st("ACCEPT", f"{v}: {disp}{extra}") + f"  [{pk}]"
