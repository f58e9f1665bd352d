"""Kernel-differential comparison: the engine's predicted branches vs the kernel's trace.

Shared by the tests over rulesets/ and over the corpus.  A prediction agrees
with the kernel when one of its branches has exactly the kernel's sequence of
matched rules and applied policies (hook, table, chain, position, verdict,
jump target) and, when accepted, the same final addresses, ports and output
interface (or local delivery).
"""

from __future__ import annotations

import ipaddress
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nftrace.engine.packet import packet_from_dict
from nftrace.engine.pipeline import Engine, Trace
from nftrace.host.model import HostContext
from nftrace.ruleset.model import Ruleset
from tests.kernelhost import KPacket, KResult

Hop = tuple[str, str, str, int | None, str, str | None]
_UNCONDITIONAL = re.compile(r"^-A \S+ -j (ACCEPT|DROP|RETURN|QUEUE)$")


def kernel_path(res: KResult, legacy: bool = False) -> list[Hop]:
    """The kernel's hops.  nft prints matched rules (with verdicts) and policies; legacy
    prints no verdicts but also prints the implicit return at the end of a user chain."""
    out: list[Hop] = []
    for ev in res.events:
        if ev.kind == "rule":
            tgt = ev.target if ev.verdict in ("JUMP", "GOTO") or legacy else None
            out.append((ev.hook, ev.table, ev.chain, ev.rule, "" if legacy else ev.verdict, tgt))
        elif ev.kind == "policy":
            out.append((ev.hook, ev.table, ev.chain, None, "" if legacy else ev.verdict, None))
        elif ev.kind == "return" and legacy:
            out.append((ev.hook, ev.table, ev.chain, None, "return", None))
    return out


def branch_path(steps: list[dict[str, Any]], legacy: bool = False) -> list[Hop]:
    out: list[Hop] = []
    for s in steps:
        if s["kind"] == "rule" and s.get("matched"):
            jumps = s["verdict"] in ("JUMP", "GOTO")
            tgt = s["target"] if jumps else None
            if legacy and _UNCONDITIONAL.match(s["text"]):
                # x_tables' trace labels an unconditional standard-verdict rule like a chain's
                # tail: "policy" in a built-in chain, "return" in a user chain
                # (get_chainname_rulenum in ip_tables.c).
                builtin = s["chain"] == s["hook"]
                out.append((s["hook"], s["table"], s["chain"], None, "" if builtin else "return", None))
                continue
            out.append((s["hook"], s["table"], s["chain"], s["rule"], "" if legacy else s["verdict"], tgt))
        elif s["kind"] == "policy":
            out.append((s["hook"], s["table"], s["chain"], None, "" if legacy else s["verdict"], None))
        elif s["kind"] == "return" and legacy:
            out.append((s["hook"], s["table"], s["chain"], None, "return", None))
    return out


@dataclass
class Verdict:
    ok: bool
    message: str


def compare(trace: Trace, res: KResult, legacy: bool = False) -> Verdict:
    kp = kernel_path(res, legacy)
    doc = trace.to_json()
    candidates = []
    for b in doc["branches"]:
        bp = branch_path(b["steps"], legacy)
        if bp != kp:
            candidates.append((b, bp, "path"))
            continue
        # The legacy log carries no verdicts, so whether INPUT accepted cannot be read off it.
        problem = None if legacy and b["result"]["disposition"] == "local" else _final_problem(b["result"], res)
        if problem is None:
            return Verdict(True, "")
        candidates.append((b, bp, problem))
    lines = ["no predicted branch equals the kernel's path", "kernel:"]
    lines += [f"  {h}" for h in kp]
    lines.append(f"  final={res.final} ct={res.ct} error={res.error}")
    for k, (b, bp, why) in enumerate(candidates[:4], 1):
        lines.append(f"branch {k} ({why}) p={b['probability']} result={b['result']}")
        lines += [f"  {h}" for h in bp]
    lines.append("raw kernel trace:\n" + res.raw)
    return Verdict(False, "\n".join(lines))


def _final_problem(result: dict[str, Any], res: KResult) -> str | None:
    disp = result["disposition"]
    if result["verdict"] != "ACCEPT":
        return None  # the path already ends where the kernel's does
    fin = res.final
    if disp == "local":
        if not any(ev.hook == "INPUT" for ev in res.events):
            return None  # no INPUT chain exists to show the delivery; the path already agreed
        return None if fin.get("delivered_local") else f"predicted local delivery, kernel final {fin}"
    pk = result["packet"]
    for key in ("src", "dst", "sport", "dport"):
        if key in pk.get("random_ports", ()):
            continue  # the prediction says the kernel picks this port at random
        if fin.get(key) is not None and pk.get(key) is not None and str(fin[key]) != str(pk[key]):
            return f"final {key}: predicted {pk[key]}, kernel {fin[key]}"
    if fin.get("oif") and result.get("oif") and fin["oif"] != result["oif"]:
        return f"output interface: predicted {result['oif']}, kernel {fin['oif']}"
    return None


# ------------------------------------------------------------------ packet generation

_ADDR = re.compile(r"(?<![\w.:])(\d{1,3}(?:\.\d{1,3}){3})(?:/(\d{1,2}))?")
_ADDR6 = re.compile(r"(?<![\w:.])([0-9a-fA-F]{0,4}(?::[0-9a-fA-F]{0,4}){2,7})(?:/(\d{1,3}))?(?![\w:])")
_PORT = re.compile(r"--(?:dport|sport|dports|sports|to-ports|destination-port)\s+([\d,:]+)")
_TO = re.compile(r"--to-(?:destination|source)\s+[\d.]*:(\d+)")
_TO6 = re.compile(r"--to-(?:destination|source)\s+\[[0-9a-fA-F:]+\]:(\d+)")


def mentioned(rules_text: str, host: HostContext, family: str = "ipv4") -> tuple[list[str], list[int]]:
    """Addresses (one or two inside each prefix) and ports that a ruleset and its host mention, of
    `family` (ipv4 or ipv6)."""
    addrs = _mentioned6(rules_text, host) if family == "ipv6" else _mentioned4(rules_text, host)
    ports: set[int] = {22, 53, 80, 443, 8080, 40000}
    for m in _PORT.finditer(rules_text):
        for part in m.group(1).split(","):
            for p in part.split(":"):
                if p.isdigit():
                    ports.add(int(p))
    for m in (_TO6 if family == "ipv6" else _TO).finditer(rules_text):
        ports.add(int(m.group(1)))
    return sorted(addrs), sorted(p for p in ports if 0 < p < 65536)


def _mentioned4(rules_text: str, host: HostContext) -> set[str]:
    addrs: set[str] = set()
    for m in _ADDR.finditer(rules_text):
        try:
            a = ipaddress.ip_address(m.group(1))
        except ValueError:
            continue
        if m.group(2) and int(m.group(2)) < 32:
            net = ipaddress.ip_network(f"{a}/{m.group(2)}", strict=False)
            if net.num_addresses > 2:
                addrs.add(str(net.network_address + 1))
                addrs.add(str(net.network_address + min(net.num_addresses - 2, 7)))
        else:
            addrs.add(str(a))
    for _, iface in host.addresses("ipv4"):
        addrs.add(str(iface.ip))
        net = iface.network
        if net.num_addresses > 4:
            addrs.add(str(net.network_address + 3))
    for r in host.routes:
        if r.family == "ipv4" and r.dst != "default" and r.type == "unicast":
            n = ipaddress.ip_network(r.dst, strict=False)
            if n.num_addresses > 2:
                addrs.add(str(n.network_address + 2))
    addrs.update({"8.8.8.8", "1.1.1.1", "203.0.113.77"})
    bad = {a for a in addrs if ipaddress.ip_address(a).is_multicast or a.endswith(".255") or a.startswith("0.")}
    return addrs - bad


def _mentioned6(rules_text: str, host: HostContext) -> set[str]:
    addrs: set[str] = set()
    for m in _ADDR6.finditer(rules_text):
        try:
            a = ipaddress.IPv6Address(m.group(1))
        except ValueError:
            continue
        plen = int(m.group(2)) if m.group(2) else 128
        if plen < 128:
            net = ipaddress.IPv6Network(f"{a}/{plen}", strict=False)
            addrs.update({str(net.network_address + 1), str(net.network_address + 5)})
        else:
            addrs.add(str(a))
    for _, iface in host.addresses("ipv6"):
        if iface.ip.is_link_local:
            continue
        addrs.add(str(iface.ip))
        if iface.network.prefixlen < 127:
            addrs.add(str(iface.network.network_address + 3))
    addrs.update({"2001:db8:77::1", "2001:db8:99::9", "2606:4700::1111"})
    # link-local destinations are left out (without a zone index the kernel's choice of link is its own),
    # and ::/8 but ::1 (the kernel prints IPv4-compatible addresses in dotted form)
    return {
        a
        for a in addrs
        if not (
            ipaddress.IPv6Address(a).is_multicast
            or ipaddress.IPv6Address(a).is_unspecified
            or ipaddress.IPv6Address(a).is_link_local
            or (a != "::1" and int(ipaddress.IPv6Address(a)) >> 120 == 0)  # ::/8: IPv4-compatible, mapped
        )
    }


def random_packets(rng: random.Random, rules_text: str, host: HostContext, n: int) -> list[KPacket]:
    addrs, ports = mentioned(rules_text, host)
    local = {str(i.ip) for _, i in host.addresses("ipv4")}
    links = [link.name for link in host.links if link.name not in ("lo", "*")]
    out = []
    for _ in range(n):
        proto = rng.choice(["tcp", "tcp", "udp", "udp", "icmp"])
        origin = "local" if rng.random() < 0.3 or not links else "ingress"
        dst = rng.choice(addrs)
        if origin == "ingress":
            choices = [a for a in addrs if a not in local and not a.startswith("127.")]
            src = rng.choice(choices or addrs)
        else:
            src = rng.choice(sorted(local)) if local and rng.random() < 0.8 else rng.choice(addrs)
            if src.startswith("127.") and not dst.startswith("127."):
                # the harness sends local packets from a raw socket, which may leave with a
                # loopback source; an ordinary socket gets EINVAL there.  Not comparable.
                src = rng.choice(sorted(local - {"127.0.0.1"}) or ["10.0.0.1"])
        sport = rng.choice([40000 + rng.randrange(20000), *ports]) if proto != "icmp" else None
        dport = rng.choice(ports) if proto != "icmp" else None
        out.append(
            KPacket(
                origin=origin,
                proto=proto,
                src=src,
                dst=dst,
                sport=sport,
                dport=dport,
                iif=rng.choice(links) if origin == "ingress" else None,
            )
        )
    return out


def engine_packet(kp: KPacket) -> tuple[Any, str]:
    """The engine's packet for a kernel packet of either family."""
    v6 = ":" in kp.dst
    icmp = kp.proto in ("icmp", "icmpv6")
    d: dict[str, Any] = {
        "origin": kp.origin,
        "proto": "icmpv6" if icmp and v6 else kp.proto,
        "src": kp.src,
        "dst": kp.dst,
        # ICMPv6: the harness sends the echo id in sport, and the engine has no echo id
        "sport": None if icmp and v6 else kp.sport,
        "dport": kp.dport,
        "iif": kp.iif,
        "mark": kp.mark,
        "tcp_flags": kp.tcp_flags if kp.proto == "tcp" else None,
        "ttl": kp.ttl,
    }
    if icmp:
        d["icmp_type"] = f"{kp.icmp_type}/{kp.icmp_code}"
    if kp.oif:
        d["oif"] = kp.oif
    return packet_from_dict(d)


def make_engine(rs: Ruleset, host: HostContext, backend: str = "nft") -> Engine:
    return Engine(rs, host, backend=backend)


def flows_packets(path: str, links: list[str]) -> list[KPacket]:
    """The hand-picked flows of a scenario's flows.txt as kernel packets."""
    from nftrace.engine.packet import parse_flow

    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        d = parse_flow(text)
        if d.get("iif") and d["iif"] not in links:
            continue
        if d["proto"] not in ("tcp", "udp", "icmp") or ":" in d["dst"]:
            continue
        icmp_type = 8
        if d.get("icmp_type") is not None:
            icmp_type = int(str(d["icmp_type"]).split("/")[0]) if str(d["icmp_type"])[0].isdigit() else 8
        out.append(
            KPacket(
                origin=d["origin"],
                proto=d["proto"],
                src=d["src"],
                dst=d["dst"],
                sport=d.get("sport") or (40000 if d["proto"] != "icmp" else None),
                dport=d.get("dport"),
                iif=d.get("iif"),
                mark=int(str(d.get("mark", 0)), 0),
                tcp_flags=str(d.get("tcp_flags") or "SYN"),
                icmp_type=icmp_type,
            )
        )
    return out
