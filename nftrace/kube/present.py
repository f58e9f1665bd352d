"""Text presentation of the services catalogue (nftrace.services/1) and of the
kube-specific parts of a trace (findings, service flow).  JSON in, lines out:
nothing here computes."""

from __future__ import annotations

from typing import Any

_SEVERITY_COLOR = {"error": "31", "warning": "33", "info": "36"}


def _c(color: bool, code: str, text: str) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color else text


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [len(h) for h in headers]
    for r in rows:
        for k, cell in enumerate(r):
            widths[k] = max(widths[k], len(cell))
    out = ["  ".join(h.ljust(widths[k]) for k, h in enumerate(headers)).rstrip()]
    for r in rows:
        out.append("  ".join(cell.ljust(widths[k]) for k, cell in enumerate(r)).rstrip())
    return out


def prob_text(p: float | None) -> str:
    if p is None:
        return "?"
    return f"{p:.10g}"


def _local(v: bool | None) -> str:
    return "local" if v else ("remote" if v is False else "?")


def render_services(doc: dict[str, Any], color: bool = False) -> str:
    out: list[str] = []
    mode = doc.get("mode")
    if mode:
        head = f"kube-proxy: {mode} mode"
        if doc.get("layout") and doc["layout"] != mode:
            head += f" ({doc['layout']} layout)"
        if doc.get("cluster_cidrs"):
            head += f"; cluster CIDR {', '.join(doc['cluster_cidrs'])}"
        if doc.get("masquerade_mark"):
            head += f"; masquerade mark {doc['masquerade_mark']}"
        out.append(_c(color, "1", head))
    elif not doc.get("docker"):
        out.append("no kube-proxy or Docker rules in this dump")
    for w in doc.get("warnings", []):
        out.append(_c(color, "33", f"warning: {w}"))
    services = doc.get("services", [])
    if services:
        out.append("")
        rows = []
        for s in services:
            pol = s.get("traffic_policy") or {}
            policy = f"{pol.get('internal') or '-'}/{pol.get('external') or '-'}"
            aff = s.get("affinity")
            aff_txt = f"ClientIP {aff.get('timeout')}s" if aff else "-"
            if s.get("no_endpoints"):
                n_ep = "none (REJECT)"
            else:
                n_ep = str(len(s.get("endpoints", [])))
                if s.get("local_endpoints") or (pol.get("external") == "Local"):
                    n_ep += f" ({len(s.get('local_endpoints', []))} local)"
            np = str(s["node_port"]) if s.get("node_port") is not None else "-"
            if s.get("health_check_node_port"):
                np += f" (hc {s['health_check_node_port']})"
            rows.append(
                [
                    s["name"],
                    s.get("proto") or "-",
                    s.get("cluster_ip") or "-",
                    str(s["port"]) if s.get("port") is not None else "-",
                    np,
                    ",".join(s.get("external_ips") or []) or "-",
                    ",".join(s.get("lb_ips") or []) or "-",
                    policy,
                    aff_txt,
                    n_ep,
                ]
            )
        out += table(
            [
                "SERVICE",
                "PROTO",
                "CLUSTER-IP",
                "PORT",
                "NODE-PORT",
                "EXTERNAL-IPS",
                "LB-IPS",
                "POLICY int/ext",
                "AFFINITY",
                "ENDPOINTS",
            ],  # fmt: skip
            rows,
        )
        ep_rows = []
        for s in services:
            for e in s.get("endpoints", []):
                ep_rows.append([s["name"], _ep(e), prob_text(e.get("probability")), _local(e.get("local")), e["chain"]])
            for e in s.get("local_endpoints", []):
                ep_rows.append(
                    [
                        s["name"] + " (external, local only)",
                        _ep(e),
                        prob_text(e.get("probability")),
                        "local",
                        e["chain"],
                    ]
                )
        if ep_rows:
            out.append("")
            out += table(["SERVICE", "ENDPOINT", "PROBABILITY", "WHERE", "CHAIN"], ep_rows)
        extra: list[str] = []
        for s in services:
            for m in s.get("masquerade", []):
                extra.append(f"  {s['name']}: masquerade {m['reason']}  ({m['table']} {m['chain']} #{m['rule']})")
            if s.get("source_ranges"):
                extra.append(f"  {s['name']}: load-balancer source ranges {', '.join(s['source_ranges'])}")
            if s.get("no_local_endpoints"):
                extra.append(f"  {s['name']}: no endpoint on this node: external traffic is dropped here")
        if extra:
            out.append("")
            out.append("masquerade and policies:")
            out += extra
    docker = doc.get("docker", [])
    if docker:
        out.append("")
        out.append(_c(color, "1", "Docker published ports"))
        rows = []
        for d in docker:
            rows.append(
                [
                    f"{d.get('host_ip') or '*'}:{d.get('host_port')}/{d.get('proto') or 'all'}",
                    _ep({"ip": d["container_ip"], "port": d.get("container_port")}),
                    d.get("bridge") or "?",
                    d["mode"],
                    "yes" if d.get("hairpin_masquerade") else "no",
                    d.get("localhost") or "?",
                    f"{d['chain']} #{d['rule']}",
                ]
            )
        out += table(["PUBLISHED", "CONTAINER", "BRIDGE", "MODE", "HAIRPIN-MASQ", "LOCALHOST", "RULE"], rows)
    ipvs = doc.get("ipvs")
    if ipvs:
        out.append("")
        out.append(f"IPVS chains: {', '.join(ipvs.get('chains') or []) or '-'}")
        out.append(f"IPVS ipsets: {', '.join(ipvs.get('sets') or []) or '-'}")
        if ipvs.get("cluster_ips"):
            out.append(f"cluster IPs (KUBE-CLUSTER-IP): {', '.join(ipvs['cluster_ips'])}")
    return "\n".join(out)


def _ep(e: dict[str, Any]) -> str:
    ip, port = str(e["ip"]), e.get("port")
    if port is None:
        return ip
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def render_kube_extras(doc: dict[str, Any], color: bool = False) -> str:
    """Service flow summary and findings of an annotated trace (empty string when there are none)."""
    out: list[str] = []
    flow = doc.get("service_flow")
    branches = doc.get("branches", [])
    named = [b for b in branches if b.get("endpoint")]
    if flow or named:
        if flow:
            out.append(_c(color, "1", f"service {flow['service']} ({flow['entry']}): {flow.get('packet_text', '')}"))
            for note in flow.get("notes", []):
                out.append(f"  note: {note}")
        else:
            names = sorted({b.get("service") or "?" for b in named})
            out.append(_c(color, "1", f"service {', '.join(names)}"))
        rows = []
        for k, b in enumerate(branches, 1):
            r = b.get("result") or {}
            p = r.get("packet") or {}
            final = f"{p.get('src')}" + (f":{p['sport']}" if p.get("sport") is not None else "")
            final += f" > {p.get('dst')}" + (f":{p['dport']}" if p.get("dport") is not None else "")
            disp = r.get("disposition", "?")
            if disp in ("forwarded", "output") and r.get("oif"):
                disp += f" via {r['oif']}"
            rows.append(
                [
                    str(k),
                    prob_text(b.get("probability")),
                    b.get("endpoint") or "-",
                    "yes" if b.get("masquerade") else "no",
                    disp,
                    final,
                ]
            )
        out += ["  " + line for line in table(["BRANCH", "P", "ENDPOINT", "MASQ", "RESULT", "FINAL PACKET"], rows)]
    findings = doc.get("findings") or []
    if findings:
        if out:
            out.append("")
        out.append(_c(color, "1", "findings:"))
        for f in findings:
            sev = f.get("severity", "info")
            out.append(
                "  " + _c(color, _SEVERITY_COLOR.get(sev, "0"), f"[{sev}] {f.get('code')}") + f": {f['message']}"
            )
    return "\n".join(out)
