"""IPv6 without a kernel: ip6tables dumps parse and trace; the kernel facts found by
tests/test_ipv6_kernel.py (ICMP conntrack states, ip6_rcv_core drops) hold in the engine.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from nftrace.cli import main
from nftrace.engine.packet import icmp_ct_state, packet_from_dict
from nftrace.engine.pipeline import Engine
from nftrace.host.model import DEFAULT_IPV6_RULES, HostContext, Link
from nftrace.host.parse import derive_routes
from nftrace.ruleset.parser import parse_rules

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def _docker_ip6() -> list[Path]:
    d = CORPUS / "docker-moby"
    return sorted(d.glob("*ip6tables.rules")) if d.is_dir() else []


def host6() -> HostContext:
    links = [
        Link(1, "lo", kind="loopback", addresses=["::1/128"]),
        Link(2, "eth0", addresses=["2001:db8:50::10/64"]),
        Link(3, "br-dummy", addresses=["fd49:efd7:54aa::1/64"]),
    ]
    return HostContext(links=links, routes=derive_routes(links), rules=list(DEFAULT_IPV6_RULES), empty=False)


@pytest.mark.parametrize(
    ("proto", "icmp_type", "state"),
    [
        ("icmp", 8, "NEW"),
        ("icmp", 13, "NEW"),
        ("icmp", 0, "INVALID"),
        ("icmp", 3, "INVALID"),
        ("icmp", 11, "INVALID"),
        ("icmpv6", 128, "NEW"),
        ("icmpv6", 139, "NEW"),
        ("icmpv6", 129, "INVALID"),
        ("icmpv6", 1, "INVALID"),
        ("icmpv6", 2, "INVALID"),
        ("icmpv6", 137, "INVALID"),
        ("icmpv6", 133, "UNTRACKED"),
        ("icmpv6", 135, "UNTRACKED"),
        ("icmpv6", 143, "UNTRACKED"),
    ],
)
def test_icmp_state_without_a_connection(proto: str, icmp_type: int, state: str) -> None:
    """Each row was observed with -m conntrack on kernel 6.18 (tests/test_ipv6_kernel.py exercises them)."""
    assert icmp_ct_state(proto, icmp_type) == state
    src, dst = ("10.0.0.1", "10.0.0.2") if proto == "icmp" else ("2001:db8::1", "2001:db8::2")
    pkt, _ = packet_from_dict({"proto": proto, "src": src, "dst": dst, "iif": "eth0", "icmp_type": icmp_type})
    assert pkt.ct_state == state
    assert pkt.untracked == (state == "UNTRACKED")
    pkt, _ = packet_from_dict(
        {"proto": proto, "src": src, "dst": dst, "iif": "eth0", "icmp_type": icmp_type, "ct_state": "RELATED"}
    )
    assert pkt.ct_state == "RELATED"  # a state given is kept


@pytest.mark.parametrize(
    ("src", "dst", "dropped"),
    [
        ("2001:db8::1", "::1", True),
        ("::1", "2001:db8:50::10", True),
        ("ff02::1", "2001:db8:50::10", True),
        ("2001:db8::1", "ff01::1", True),
        ("2001:db8::1", "ff02::1", False),
        ("2001:db8::1", "2001:db8:50::10", False),
    ],
)
def test_ip6_rcv_core_drops_before_any_hook(src: str, dst: str, dropped: bool) -> None:
    rs = parse_rules("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n", "x", family="ipv6")
    pkt, origin = packet_from_dict({"proto": "udp", "src": src, "dst": dst, "dport": 53, "iif": "eth0"})
    doc = Engine(rs, host6()).trace(pkt, origin).to_json()
    (b,) = doc["branches"]
    if dropped:
        assert b["steps"] == [] and b["result"]["at"]["stage"] == "receive"
    else:
        assert any(s["kind"] == "policy" for s in b["steps"])


@pytest.mark.parametrize("path", _docker_ip6(), ids=lambda p: p.name)
def test_docker_ip6tables_halves_parse_and_trace(path: Path, capsys: Any) -> None:
    text = path.read_text()
    rs = parse_rules(text, str(path), family="ipv6")
    assert rs.family == "ipv6"
    dnats = [
        m
        for line in text.splitlines()
        if " -d " not in line  # (Docker's bindlh rules DNAT only ::1)
        for m in [re.search(r"--dport (\d+) -j DNAT --to-destination \[([0-9a-f:]+)\]:(\d+)", line)]
        if m
    ]
    dnat = dnats[0] if dnats else None
    flow = "tcp [2001:db8::9]:40000 > [2001:db8:50::10]:8080 iif eth0"
    rc = main(
        ["explain", "--rules", str(path), "--addrs", "/dev/null", "--local-addr", "2001:db8:50::10", flow, "-f", "json"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    doc = json.loads(out)
    assert doc["packet"]["family"] == "ipv6"
    if dnat and dnat.group(1) == "8080":
        rewritten = [b for b in doc["branches"] if b["result"]["packet"]["dst"] == dnat.group(2)]
        assert rewritten, "the DNAT rule of the dump did not apply"
        assert rewritten[0]["result"]["packet"]["dport"] == int(dnat.group(3))
