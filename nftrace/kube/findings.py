"""Plain-language diagnoses of a traced packet, in kube-proxy and Docker terms.

`findings(trace_json, catalog, host)` reads an annotated trace (see
nftrace.kube.annotate), the Service catalogue and the host context, and
returns `[{"code", "severity", "message"}]`.  It never re-runs the engine:
each finding is a reading of what the trace already shows, plus the host
facts (sysctls, bridges) that decide whether the kernel takes that path.

Codes: service-no-endpoints, clusterip-icmp, clusterip-no-such-port,
ip-forward-disabled, bridge-nf-call-iptables, local-policy-no-local-endpoint,
localhost-nodeport-route-localnet, ipvs-mode, session-affinity.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from nftrace.kube.catalog import Catalog, Service

if TYPE_CHECKING:
    from nftrace.host.model import HostContext

_PORT_PROTOS = ("tcp", "udp", "sctp")
_KUBE_IPVS_HINT = ("KUBE-CLUSTER-IP", "KUBE-NODE-PORT", "KUBE-LOAD-BALANCER", "KUBE-EXTERNAL-IP")


def _steps(b: dict[str, Any]) -> list[dict[str, Any]]:
    return list(b.get("steps") or [])


def _matched_rules(b: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in b.get("steps") or () if s.get("kind") == "rule" and s.get("matched", True)]


# the rule steps that matched, one list per branch (read once per trace: several diagnoses look at them)
_Matched = list[list[dict[str, Any]]]


def _is_bridge(host: HostContext | None, name: str | None) -> bool:
    if host is None or name is None:
        return False
    link = host.link(name)
    return link is not None and (link.kind == "bridge" or any(lk.master == name for lk in host.links))


def _sysctl(host: HostContext | None, *keys: str) -> tuple[str | None, str | None]:
    if host is None:
        return None, None
    for k in keys:
        v = host.sysctl(k)
        if v is not None:
            return v.strip(), k
    return None, None


def _route_localnet(host: HostContext | None, keys: list[str]) -> tuple[str | None, str | None]:
    """IN_DEV_ROUTE_LOCALNET: on when the device's or `all`'s value is non-zero (any non-zero
    integer, as the kernel reads it).  ("1", the key that is on) / ("0", the key read) / (None, None)."""
    known = [(k, v) for k in keys if (v := _sysctl(host, k)[0]) is not None]
    for k, v in known:
        try:
            if int(v, 0) != 0:
                return "1", k
        except ValueError:
            continue
    return ("0", known[0][0]) if known else (None, None)


def _ns_name(svc: str) -> tuple[str, str]:
    base = svc.split(":", 1)[0]
    ns, _, name = base.partition("/")
    return ns, name


def _ep(addr: str | None, port: Any) -> str:
    if addr is None:
        return "?"
    if port is None:
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


class _Out:
    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def add(self, code: str, severity: str, message: str) -> None:
        if not any(f["code"] == code and f["message"] == message for f in self.items):
            self.items.append({"code": code, "severity": severity, "message": message})


def findings(trace_json: dict[str, Any], catalog: Catalog, host: HostContext | None = None) -> list[dict[str, str]]:
    out = _Out()
    if "branches" not in trace_json:
        return out.items
    pkt = trace_json.get("packet") or {}
    branches = trace_json.get("branches") or []
    matched: _Matched = [_matched_rules(b) for b in branches]
    _no_endpoints(matched, catalog, out)
    _clusterip(pkt, branches, matched, catalog, out)
    _forwarding(branches, out)
    _bridge(pkt, branches, host, out)
    _local_policy(matched, catalog, out)
    _localhost(pkt, trace_json.get("origin"), branches, host, out)
    _ipvs(pkt, branches, matched, catalog, out)
    _affinity(pkt, branches, catalog, out)
    return out.items


# --------------------------------------------------------------------------- the diagnoses


def _no_endpoints(matched: _Matched, catalog: Catalog, out: _Out) -> None:
    for rules in matched:
        for s in rules:
            if s.get("table") != "filter" or s.get("target") != "REJECT":
                continue
            if s.get("chain") not in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"):
                continue
            svc = catalog.service(s.get("service") or "")
            name = svc.name if svc is not None else (s.get("service") or "a Service")
            ns, nm = _ns_name(name)
            hint = (
                f" Check `kubectl -n {ns} get endpointslices -l kubernetes.io/service-name={nm}`: its pods are "
                "missing or not Ready, or its selector matches no pod."
                if nm
                else ""
            )
            out.add(
                "service-no-endpoints",
                "error",
                f"Service {name} has no endpoints: kube-proxy rejects every new connection to it "
                f"(filter {s.get('chain')} rule {s.get('rule')} answers ICMP port-unreachable, which clients "
                f"report as 'connection refused').{hint}",
            )


def _clusterip(
    pkt: dict[str, Any], branches: list[dict[str, Any]], matched: _Matched, catalog: Catalog, out: _Out
) -> None:
    if catalog.mode != "iptables":
        return
    dst = pkt.get("dst")
    svcs = catalog.by_cluster_ip(str(dst))
    if not svcs:
        return
    dnat = any(s.get("kind") == "nat" and s.get("type") == "DNAT" for b in branches for s in _steps(b))
    rejected = any(
        s.get("target") == "REJECT" and s.get("chain") == "KUBE-SERVICES" for rules in matched for s in rules
    )
    if dnat or rejected:
        return
    proto = str(pkt.get("proto") or "")
    ports = ", ".join(sorted({f"{s.port}/{s.proto}" for s in svcs if s.port is not None}))
    names = ", ".join(sorted(s.name for s in svcs))
    where = _where(branches)
    if proto not in _PORT_PROTOS:
        out.add(
            "clusterip-icmp",
            "warning",
            f"{dst} is the ClusterIP of {names}. A ClusterIP is a virtual address: no interface has it and it "
            f"exists only in kube-proxy's DNAT rules, which match {ports} and nothing else. No rule matches "
            f"{proto}, so nothing answers a ping to a ClusterIP; the packet {where}. Test the Service with a "
            "TCP or UDP connection to one of its ports instead.",
        )
    else:
        out.add(
            "clusterip-no-such-port",
            "warning",
            f"{dst} is the ClusterIP of {names}, which serves only {ports}: no kube-proxy rule matches "
            f"{proto} port {pkt.get('dport')}, so the packet is not translated and {where}.",
        )


def _where(branches: list[dict[str, Any]]) -> str:
    if not branches:
        return "goes nowhere"
    r = branches[0].get("result") or {}
    disp = r.get("disposition")
    if disp == "forwarded":
        return f"is routed on unchanged out {r.get('oif')} like any packet to an unknown address"
    if disp == "output":
        return f"leaves unchanged through {r.get('oif')} like any packet to an unknown address"
    if disp == "local":
        return "is delivered locally"
    return f"ends {disp}"


def _forwarding(branches: list[dict[str, Any]], out: _Out) -> None:
    for b in branches:
        for s in _steps(b):
            if s.get("kind") != "route" or s.get("result") != "drop":
                continue
            reason = str(s.get("reason") or "")
            if "forwarding disabled" not in reason and "ip_forward=0" not in reason and ".forwarding=0" not in reason:
                continue
            key = reason.split("=0", 1)[0].split()[-1] if "=0" in reason else "net.ipv4.ip_forward"
            p = (b.get("result") or {}).get("packet") or {}
            out.add(
                "ip-forward-disabled",
                "error",
                f"{key}=0: this node does not forward packets, and this one must be forwarded (to "
                f"{_ep(p.get('dst'), p.get('dport'))}, out {s.get('oif') or '?'}), so the kernel drops it at "
                "routing. Every Service endpoint and pod behind this node is unreachable through it; Kubernetes "
                "nodes need net.ipv4.ip_forward=1.",
            )


def _bridge(pkt: dict[str, Any], branches: list[dict[str, Any]], host: HostContext | None, out: _Out) -> None:
    iif = pkt.get("iif")
    if not _is_bridge(host, iif):
        return
    val, key = _sysctl(host, "net.bridge.bridge-nf-call-iptables")
    for b in branches:
        r = b.get("result") or {}
        if r.get("disposition") != "forwarded" or r.get("oif") != iif:
            continue
        dnat = next((s for s in _steps(b) if s.get("kind") == "nat" and s.get("type") == "DNAT"), None)
        masq = any(s.get("kind") == "nat" and s.get("type") in ("MASQUERADE", "SNAT") for s in _steps(b))
        p = r.get("packet") or {}
        if dnat is None:
            if val == "0":
                out.add(
                    "bridge-nf-call-iptables",
                    "warning",
                    f"{pkt.get('src')} and {pkt.get('dst')} are both on bridge {iif}, and "
                    "net.bridge.bridge-nf-call-iptables=0: the bridge switches this packet itself and iptables "
                    "never sees it. None of the rules above apply to it (nor do NetworkPolicies enforced with "
                    "iptables); set it to 1 (modprobe br_netfilter) for them to apply.",
                )
            elif val is None:
                out.add(
                    "bridge-nf-call-iptables",
                    "info",
                    f"{pkt.get('src')} and {pkt.get('dst')} are both on bridge {iif}: iptables sees this packet "
                    "only when net.bridge.bridge-nf-call-iptables=1 (br_netfilter), which was not given; this "
                    "trace assumes it is 1.",
                )
        elif not masq:
            client = pkt.get("src")
            endpoint = _ep(p.get("dst"), p.get("dport"))
            service = str(dnat.get("before"))
            if val == "0":
                out.add(
                    "bridge-nf-call-iptables",
                    "error",
                    f"the client {client} and the endpoint {endpoint} are both on bridge {iif}, and "
                    "net.bridge.bridge-nf-call-iptables=0: the endpoint's replies are switched straight back "
                    f"to {client} without passing iptables, so they are not translated back from {endpoint} "
                    f"to {service}; the client drops them and the connection hangs. Set "
                    "net.bridge.bridge-nf-call-iptables=1 (modprobe br_netfilter), or masquerade hairpin traffic.",
                )
            elif val is None:
                out.add(
                    "bridge-nf-call-iptables",
                    "info",
                    f"the client {client} and the endpoint {endpoint} share bridge {iif}: the replies are only "
                    "translated back if net.bridge.bridge-nf-call-iptables=1 (not given; assumed).",
                )


def _local_policy(matched: _Matched, catalog: Catalog, out: _Out) -> None:
    for rules in matched:
        for s in rules:
            target = s.get("target")
            if target == "DROP":
                dropped_here = (
                    s.get("table") == "filter"
                    and s.get("chain") == "KUBE-EXTERNAL-SERVICES"
                    and "no local endpoints" in str(s.get("text") or "")
                )
            elif target == "KUBE-MARK-DROP":
                dropped_here = str(s.get("chain", "")).startswith(("KUBE-SVL-", "KUBE-XLB-", "KUBE-FW-"))
            else:
                continue
            if not dropped_here:
                continue
            name = s.get("service")
            _policy_drop(catalog.service(name or ""), name, s, out)


def _policy_drop(svc: Service | None, name: str | None, s: dict[str, Any], out: _Out) -> None:
    label = svc.name if svc is not None else (name or "this Service")
    if s.get("target") == "KUBE-MARK-DROP" and str(s.get("chain", "")).startswith("KUBE-FW-"):
        out.add(
            "local-policy-no-local-endpoint",
            "error",
            f"{label}: the client is outside the load balancer's source ranges: {s.get('chain')} marks the "
            "packet for drop.",
        )
        return
    hc = f" (its health check on node port {svc.health_check_node_port} fails here on purpose)" if svc and (
        svc.health_check_node_port
    ) else ""  # fmt: skip
    out.add(
        "local-policy-no-local-endpoint",
        "error",
        f"{label} has externalTrafficPolicy: Local and no ready endpoint on this node, so kube-proxy drops "
        f"external traffic to it here ({s.get('table')} {s.get('chain')} rule {s.get('rule')}). Only nodes "
        f"running one of its pods accept it{hc}; send the traffic to such a node, or use "
        "externalTrafficPolicy: Cluster (the client's source address is then masqueraded).",
    )


def _localhost(
    pkt: dict[str, Any], origin: str | None, branches: list[dict[str, Any]], host: HostContext | None, out: _Out
) -> None:
    dst = pkt.get("dst")
    try:
        if dst is None or not ipaddress.ip_address(dst).is_loopback or ":" in str(dst):
            return
    except ValueError:
        return
    for b in branches:
        dnat = next((s for s in _steps(b) if s.get("kind") == "nat" and s.get("type") == "DNAT"), None)
        if dnat is None:
            continue
        after = str(dnat.get("after", ""))
        if after.startswith("127."):
            continue
        oif = next((s.get("oif") for s in reversed(_steps(b)) if s.get("kind") == "route" and s.get("oif")), None)
        keys = ["net.ipv4.conf.all.route_localnet"]
        if oif:
            keys.insert(0, f"net.ipv4.conf.{oif}.route_localnet")
        val, key = _route_localnet(host, keys)
        what = f"{b.get('service') or 'a Service'} via {dst}:{pkt.get('dport')}"
        if origin == "local" and val != "1":
            out.add(
                "localhost-nodeport-route-localnet",
                "error" if val == "0" else "warning",
                f"{what} needs net.ipv4.conf.all.route_localnet=1: after the DNAT to {after} the packet still has "
                f"the source {pkt.get('src') or '127.0.0.1'}, and the kernel refuses to route a loopback source "
                f"out of {oif or 'a real interface'} (EINVAL) unless route_localnet is set"
                + (f" ({key}={val})" if val is not None else " (not given)")
                + ". kube-proxy sets it when it serves NodePorts on localhost (iptables mode, "
                "--iptables-localhost-nodeports=true).",
            )
        elif origin == "local":
            out.add(
                "localhost-nodeport-route-localnet",
                "info",
                f"{what} works because {key}=1: the kernel routes the DNATed packet with its loopback source "
                "out of the node, and kube-proxy's masquerade rule rewrites that source on the way out.",
            )
        elif val == "1":
            out.add(
                "localhost-nodeport-route-localnet",
                "warning",
                f"a packet from {pkt.get('src')} addressed to {dst} arrived on {pkt.get('iif')} and is "
                f"DNATed to {after}: with route_localnet=1, NodePorts are reachable on 127.0.0.1 from "
                "neighbours on the link (CVE-2020-8558); kube-proxy's KUBE-FIREWALL only drops the "
                "untranslated ones.",
            )
        return


def _ipvs(pkt: dict[str, Any], branches: list[dict[str, Any]], matched: _Matched, catalog: Catalog, out: _Out) -> None:
    if catalog.mode != "ipvs":
        return
    touched = any(
        any(f"--match-set {h}" in str(s.get("text") or "") for h in _KUBE_IPVS_HINT) for rules in matched for s in rules
    )
    cips = (catalog.ipvs or {}).get("cluster_ips") or []
    dst, dport, proto = pkt.get("dst"), pkt.get("dport"), pkt.get("proto")
    in_set = any(e.split(",")[0] == dst for e in cips)
    if not (touched or in_set):
        return
    local = any((b.get("result") or {}).get("disposition") == "local" for b in branches)
    tail = (
        "This trace ends where IPVS takes over: the local delivery to the virtual address. IPVS then "
        "rewrites the destination to one real server and sends the packet on through OUTPUT/POSTROUTING."
        if local
        else "IPVS only balances packets delivered to a local virtual address, and this one is not delivered "
        "locally here: on an IPVS node every Service address is an address of the dummy interface kube-ipvs0 "
        "(give the node's `ip addr`, or the ipset KUBE-CLUSTER-IP with --ipsets)."
    )
    out.add(
        "ipvs-mode",
        "info",
        f"kube-proxy runs in IPVS mode: the iptables rules only accept, mark and masquerade; the choice of "
        f"endpoint is made by IPVS, outside iptables, at the INPUT hook (the Service addresses are local "
        f"addresses on kube-ipvs0). {tail} See `ipvsadm -Ln -t {_ep(dst, dport)}`"
        + (f" ({proto})" if proto and proto != "tcp" else "")
        + ".",
    )


def _affinity(pkt: dict[str, Any], branches: list[dict[str, Any]], catalog: Catalog, out: _Out) -> None:
    seen: set[str] = set()
    for b in branches:
        name = b.get("service")
        if not name or name in seen:
            continue
        seen.add(name)
        svc = catalog.service(name)
        if svc is None or not svc.affinity:
            continue
        t = svc.affinity.get("timeout")
        out.add(
            "session-affinity",
            "info",
            f"{svc.name} has ClientIP session affinity: the probabilities above are for a client's first "
            f"connection; later ones from {pkt.get('src') or 'the same client'} go to the endpoint chosen first"
            + (f" for {t} s" if t else "")
            + " (kube-proxy's -m recent lists, which this offline trace cannot see).",
        )
