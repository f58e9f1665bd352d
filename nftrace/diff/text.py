"""Text presentation of an nftrace.diff/1 document.  Computes nothing."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from nftrace.present.text import Style, flow_text


def _where(step: dict[str, Any] | None) -> str:
    if step is None:
        return "(no further step)"
    kind = step.get("kind")
    if kind == "rule":
        v = step.get("verdict", "")
        tgt = f" {step['target']}" if v in ("JUMP", "GOTO") and step.get("target") else ""
        return f"{step['table']} {step['chain']} rule {step['rule']} => {v}{tgt}: {step.get('text', '')}"
    if kind == "policy":
        return f"{step['table']} {step['chain']} policy {step.get('verdict')}"
    if kind == "return":
        return f"{step['table']} {step['chain']}: end of chain, return"
    if kind == "nat":
        return f"{step.get('type')} {step.get('before')} -> {step.get('after')}"
    if kind == "route":
        out = f"routing: {step.get('result')}"
        if step.get("oif"):
            out += f" dev {step['oif']}"
        if step.get("via"):
            out += f" via {step['via']}"
        return out
    if kind == "loopback":
        return "loopback: re-enters through lo"
    return str(kind)


def result_text(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"error: {r['error']}"
    parts = []
    for b in r.get("branches") or [{"probability": r.get("probability"), "result": r}]:
        res = b["result"]
        p = b.get("probability")
        pk = res.get("packet") or {}
        s = f"{res.get('verdict')} {res.get('disposition')}"
        if res.get("oif"):
            s += f" out {res['oif']}"
        if res.get("disposition") != "dropped" and pk:
            dst = pk.get("dst")
            if pk.get("dport") is not None:
                dst = f"{dst}:{pk['dport']}"
            s += f" as {pk.get('src')} > {dst}"
        at = res.get("at") or {}
        if res.get("verdict") == "DROP" and at:
            if at.get("stage"):
                s += f" at {at['stage']}"
            elif at.get("rule"):
                s += f" at {at.get('table')} {at.get('chain')} rule {at['rule']}"
            else:
                s += f" by {at.get('table')} {at.get('chain')} policy"
        if b.get("reject_with"):
            s += f" (REJECT {b['reject_with']})"
        if len(r.get("branches") or []) > 1 or p is None:
            s = ("p=unknown " if p is None else f"p={p:.4g} ") + s
        parts.append(s)
    return "; ".join(parts)


def render_diff(doc: dict[str, Any], color: bool = False, limit: int = 10) -> str:
    st = Style(color)
    out: list[str] = [st("bold", f"A: {doc['a']}"), st("bold", f"B: {doc['b']}")]
    for w in doc.get("warnings", []):
        out.append(st("warn", f"warning: {w}"))
    s = doc["structural"]
    out.append("")
    out.append(
        st("bold", "structural: ")
        + f"{len(s['added'])} added, {len(s['removed'])} removed, {len(s['moved'])} moved"
        + (f", {len(s['policies'])} policies changed" if s.get("policies") else "")
    )
    for m in s.get("chains_matched", []):
        out.append(st("dim", f"  {m['table']} {m['a']} (A) is {m['b']} (B): same {m['by']}"))
    for c in s.get("chains_removed", []):
        out.append(f"  chain removed: {c['table']} {c['chain']} ({c['rules']} rules)")
    for c in s.get("chains_added", []):
        out.append(f"  chain added: {c['table']} {c.get('chain_b', c['chain'])} ({c['rules']} rules)")
    for p in s.get("policies", []):
        out.append(f"  policy {p['table']} {p['chain']}: {p['a']} -> {p['b']}")
    groups: OrderedDict[tuple[str, str], list[str]] = OrderedDict()
    for e in s["removed"]:
        groups.setdefault((e["table"], e["chain"]), []).append(st("DROP", f"    - A#{e['rule']:<4} {e['text']}"))
    for e in s["added"]:
        groups.setdefault((e["table"], e["chain"]), []).append(st("ACCEPT", f"    + B#{e['rule']:<4} {e['text']}"))
    for e in s["moved"]:
        groups.setdefault((e["table"], e["chain"]), []).append(
            st("JUMP", f"    ~ A#{e['from']} -> B#{e['to']}  {e['text']}")
        )
    for (t, c), lines in groups.items():
        out.append(f"  {t} {c}:")
        out.extend(lines)
    out.append("")
    pr = doc.get("probes", {})
    diffs = doc["differences"]
    n = pr.get("count", 0)
    if not n:
        out.append(st("bold", "behaviour: ") + "not compared (no packets; use --auto or --packets FILE)")
        return "\n".join(out)
    if not diffs:
        out.append(st("bold", "behaviour: ") + f"the same for all {n} packets compared")
        return "\n".join(out)
    out.append(st("bold", "behaviour: ") + f"{len(diffs)} of {n} packets are treated differently")
    by_hop: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    for d in diffs:
        fd = d.get("first_divergence") or {}
        key = f"A: {_where(fd.get('a'))}\n      B: {_where(fd.get('b'))}"
        if fd.get("reason") == "probability":
            key = "same outcomes, different probabilities: " + key
        elif fd.get("reason") == "error":
            key = f"A: {fd.get('a')}\n      B: {fd.get('b')}"
        by_hop.setdefault(key, []).append(d)
    for n, (key, ds) in enumerate(by_hop.items()):
        if n >= limit:
            break
        hook = (ds[0].get("first_divergence") or {}).get("hook")
        out.append("")
        out.append(st("bold", f"  {len(ds)} packet(s) part" + (f" in {hook}" if hook else "") + ":"))
        out.append(f"      {key}")
        for d in ds[:3]:
            pk = {"proto": "?", **d["packet"]}
            pk["src"] = pk.get("src") or "(chosen by routing)"
            extra = f" type {pk['icmp_type']}" if pk.get("icmp_type") is not None else ""
            if pk.get("tcp_flags"):
                extra += f" flags {pk['tcp_flags']}"
            out.append(f"    {flow_text(pk, pk.get('origin'))}{extra}")
            out.append(f"      A: {result_text(d['a'])}")
            out.append(f"      B: {result_text(d['b'])}")
        if len(ds) > 3:
            out.append(st("dim", f"    ... and {len(ds) - 3} more"))
    if len(by_hop) > limit:
        out.append(st("dim", f"  ... {len(by_hop) - limit} more groups (--format json lists every packet)"))
    return "\n".join(out)
