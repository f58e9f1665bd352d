"""Text presentation of an ``nftrace.live/1`` document (and of a --cleanup report).  Computes nothing."""

from __future__ import annotations

from typing import Any

from nftrace.present.text import Style, flow_text

_MARK = {"confirmed": ("CONFIRMED", "ACCEPT"), "differs": ("DIFFERS", "DROP"), "inconclusive": ("INCONCLUSIVE", "warn")}


def _packet(p: dict[str, Any] | None) -> str:
    if not p:
        return ""
    if "SRC" in p or "IN" in p:  # fields of a log line
        keys = ("IN", "OUT", "SRC", "DST", "PROTO", "SPT", "DPT", "TYPE", "ID")
        return " ".join(f"{k}={p[k]}" for k in keys if k in p)
    ep_src = p.get("src") or "*"
    ep_dst = p.get("dst") or "*"
    if p.get("sport") is not None:
        ep_src += f":{p['sport']}"
    if p.get("dport") is not None:
        ep_dst += f":{p['dport']}"
    s = f"{p.get('proto', '?')} {ep_src} > {ep_dst}"
    if p.get("icmp_type") is not None:
        s += f" type {p['icmp_type']}/{p.get('icmp_code') or 0}"
    if p.get("iif"):
        s += f" in {p['iif']}"
    if p.get("oif"):
        s += f" out {p['oif']}"
    return s


def _where(h: dict[str, Any]) -> str:
    s = f"{h.get('hook', '?')} {h.get('table', '?')}:{h.get('chain', '?')}"
    if h.get("kind") == "rule":
        s += f" rule {h.get('rule')}"
        if h.get("verdict"):
            s += f" {h['verdict']}" + (f" {h['target']}" if h.get("target") else "")
    elif h.get("kind") == "policy":
        s += f" policy {h.get('verdict') or ''}".rstrip()
    return s


def render_live(doc: dict[str, Any], color: bool = False) -> str:
    st = Style(color)
    out: list[str] = []
    head = f"nftrace live  run {doc.get('run')}  backend {doc.get('backend')}  source {doc.get('source')}"
    if doc.get("netns"):
        head += f"  netns {doc['netns']}"
    out.append(st("bold", head))
    pred = doc.get("predicted") or {}
    if pred.get("packet"):
        line = "flow   " + flow_text(pred["packet"], pred.get("origin"))
        inj = doc.get("injected")
        if inj:
            line += f"   injected{' from netns ' + inj['from_netns'] if inj.get('from_netns') else ''}"
            line += f" (IP ID {inj['ip_id']})"
            if inj.get("error"):
                line += f": {inj['error']}"
        elif doc.get("observed_ip_id"):
            line += f"   observed packet IP ID {doc['observed_ip_id']}"
        out.append(line)
    if doc.get("dry_run"):
        out.append("")
        out.append(st("bold", "--dry-run: nothing was changed.  A run would execute (in this order):"))
        out += [f"  {c}" for c in doc.get("commands", [])]
        out.append(f"  then send or wait for the packet, read the {doc.get('source')} lines of run {doc.get('run')}")
        out.append(f"state file: {doc.get('state_file', '/run/nftrace/' + str(doc.get('run')) + '.json')}")
        _warnings(out, doc, st)
        return "\n".join(out)
    verdict = doc.get("verdict")
    out.append("")
    pred_hops = doc.get("predicted_hops") or []
    obs = doc.get("observed") or []
    diff = doc.get("first_difference") or {}
    k = diff.get("index") if diff else None
    nb = len(pred.get("branches") or [])
    branch = doc.get("branch")
    if pred_hops or obs:
        label = "predicted" + (f" (branch {branch + 1} of {nb})" if nb > 1 and branch is not None else "")
        out.append(st("bold", f"  {'#':>3}  {label}"))
        for i in range(max(len(pred_hops), len(obs))):
            p = pred_hops[i] if i < len(pred_hops) else None
            o = obs[i] if i < len(obs) else None
            left = _where(p) if p else "-"
            if p and "probe" in p and p.get("packet"):
                left = f"{left:<44} {_packet(p['packet'])}"
            same = (
                p is not None
                and o is not None
                and (p.get("probe") == o.get("probe") if "probe" in p else _where(p) == _where(o))
            )
            if same:
                right = st("ACCEPT", "ok")
            elif o is None:
                right = st("warn", "not seen")
            else:
                right = st("warn", "seen instead: " + _where(o))
            mark = "!!" if i == k else "  "
            out.append(f"{mark}{i + 1:>3}  {left}  {right}")
    out.append("")
    name, key = _MARK.get(str(verdict), (str(verdict).upper(), "bold"))
    if verdict == "confirmed":
        b = (pred.get("branches") or [{}])[branch or 0]
        pr = b.get("probability")
        extra = f" (branch {(branch or 0) + 1} of {nb}, p={pr:.4g})" if nb > 1 and pr is not None else ""
        if nb > 1 and pr is None:
            extra = f" (branch {(branch or 0) + 1} of {nb}: {'; '.join(b.get('conditions') or [])})"
        out.append(st(key, f"{name}: the kernel took the predicted path{extra}, {len(obs)} hop(s)"))
    elif verdict == "interrupted":
        out.append(st("warn", f"INTERRUPTED by {doc.get('signal')}: every probe was removed"))
    elif diff:
        idx = (diff.get("index") or 0) + 1
        out.append(st(key, f"{name} at hop {idx}" + (f": {diff['explanation']}" if diff.get("explanation") else "")))
        pd, od = diff.get("predicted"), diff.get("observed")
        out.append(f"  predicted: {_where(pd) + '  ' + _packet(pd.get('packet')) if pd else '(nothing more)'}")
        out.append(f"  observed:  {_where(od) + '  ' + _packet(od.get('packet')) if od else '(nothing)'}")
    out.append(
        f"probes: inserted {doc.get('inserted', 0)}, removed {doc.get('removed', 0)}"
        + (f", removed by someone else: {doc['disappeared']}" if doc.get("disappeared") else "")
    )
    for f in doc.get("cleanup_failed") or []:
        out.append(st("DROP", f"NOT REMOVED: {f}  -> run `nftrace live --cleanup`"))
    _warnings(out, doc, st)
    return "\n".join(out)


def _warnings(out: list[str], doc: dict[str, Any], st: Style) -> None:
    for w in doc.get("warnings") or []:
        out.append(st("warn", f"warning: {w}"))


def render_cleanup(doc: dict[str, Any]) -> str:
    out = [f"removed: {r}" for r in doc["removed"]]
    if doc["absent"]:
        out.append(f"{doc['absent']} recorded rule(s) were already gone")
    out += [f"left alone: {s}" for s in doc["skipped"]]
    out += [f"FAILED: {f}" for f in doc["failed"]]
    if not out:
        out.append("nothing to clean up")
    return "\n".join(out)
