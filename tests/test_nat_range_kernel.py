"""Kernel-differential proof of the address a DNAT/SNAT to an address range picks (nftrace/engine/natsel.py).

Many flows (sources, destinations, ports) go through NAT rules to address ranges on a namespace host
(tests/kernelhost.py), on the nft and the legacy backend; the address the kernel bound each
connection to is read from its conntrack entry (the reply tuple) and must equal the engine's, whose
trace must also agree with the kernel's rule path (tests/differential.py) and carry no warning.

Covered: DNAT in PREROUTING and in nat OUTPUT, with a port, with --persistent, in conntrack zone 7
(CT --zone in raw: the zone id enters the hash) and where the first CT rule sets no zone (a later
CT --zone 9 is ignored); SNAT from a range whose source is already inside it (kept) or not, with a
port range (kept only when the port is inside it too), with --random (no shortcut), with
--persistent, and after a DNAT (the hash reads the translated destination).  IPv6 (nft backend, as
the harness supports it): DNAT/SNAT ranges and a range across a 32-bit word boundary, where the
kernel's word-by-word choice may fall outside the range.

NFTRACE_SEED fixes the seed (printed on failure).
"""

from __future__ import annotations

import ipaddress
import os
import random
from collections import Counter
from typing import Any

import pytest

from nftrace.engine import natsel
from nftrace.engine.pipeline import Engine
from nftrace.host.model import DEFAULT_IPV4_RULES, HostContext, IpRule, Link, Route
from nftrace.host.parse import derive_routes
from nftrace.ruleset.parser import parse_rules
from tests.differential import compare, engine_packet
from tests.kernelhost import KernelHost, KernelHostUnavailable, KPacket, KResult, unavailable_reason

pytestmark = pytest.mark.kernel

RULES_V4 = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -i eth0 -p tcp -m tcp --dport 83 -j CT --zone 7
-A PREROUTING -i eth0 -p tcp -m tcp --dport 85 -j CT --ctevents new
-A PREROUTING -i eth0 -p tcp -m tcp --dport 85 -j CT --zone 9
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 192.168.50.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1-10.0.0.5
-A PREROUTING -d 192.168.50.10/32 -p tcp -m tcp --dport 81 -j DNAT --to-destination 10.0.0.1-10.0.0.5 --persistent
-A PREROUTING -d 192.168.50.10/32 -p udp -m udp --dport 82 -j DNAT --to-destination 10.0.0.10-10.0.0.13:5300
-A PREROUTING -d 192.168.50.10/32 -p tcp -m tcp --dport 83 -j DNAT --to-destination 10.0.0.1-10.0.0.5
-A PREROUTING -d 192.168.50.10/32 -p tcp -m tcp --dport 85 -j DNAT --to-destination 10.0.0.1-10.0.0.5
-A PREROUTING -d 198.18.0.1/32 -p tcp -m tcp --dport 84 -j DNAT --to-destination 203.0.113.1-203.0.113.9
-A OUTPUT -d 198.18.1.1/32 -p tcp -j DNAT --to-destination 10.0.0.20-10.0.0.24
-A POSTROUTING -o eth0 -p tcp -m tcp --dport 84 -j SNAT --to-source 192.168.50.200-192.168.50.209
-A POSTROUTING -s 10.0.0.0/24 -o eth0 -p tcp -j SNAT --to-source 192.168.50.100-192.168.50.104
-A POSTROUTING -s 10.0.0.0/24 -o eth0 -p udp -j SNAT --to-source 192.168.50.100-192.168.50.104 --persistent
-A POSTROUTING -s 10.1.0.0/24 -o eth0 -p tcp -m tcp --dport 8443 -j SNAT --to-source 10.1.0.1-10.1.0.100:20000-30000
-A POSTROUTING -s 10.1.0.0/24 -o eth0 -p tcp -j SNAT --to-source 10.1.0.1-10.1.0.100
-A POSTROUTING -s 10.1.0.0/24 -o eth0 -p udp -j SNAT --to-source 10.1.0.1-10.1.0.100 --random
COMMIT
"""

RULES_V4_EMPTY = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"

RULES_V6 = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 2001:db8:50::10/128 -p tcp -m tcp --dport 80 -j DNAT --to-destination fd00:1::1-fd00:1::5
-A PREROUTING -d 2001:db8:50::10/128 -p tcp -m tcp --dport 81 -j DNAT --to-destination fd00:1::1-fd00:1::5 --persistent
-A PREROUTING -d 2001:db8:50::10/128 -p tcp -m tcp --dport 82 -j DNAT --to-destination fd00:1::ffff:fffd-fd00:1::1:0:2
-A POSTROUTING -s fd00:1::/64 -o eth0 -p tcp -j SNAT --to-source 2001:db8:50::100-2001:db8:50::104
-A POSTROUTING -s fd00:1::/64 -o eth0 -p udp -j SNAT --to-source 2001:db8:50::100-2001:db8:50::104 --persistent
COMMIT
"""


def range_host() -> HostContext:
    """eth0 uplink 192.168.50.10/24 + 2001:db8:50::10/64 (default via .1 / ::1), eth1 backends
    10.0.0.254/24 + fd00:1::fe/64, eth2 clients 10.1.0.254/24."""
    links = [
        Link(1, "lo", kind="loopback", addresses=["127.0.0.1/8", "::1/128"]),
        Link(2, "eth0", kind="veth", addresses=["192.168.50.10/24", "2001:db8:50::10/64"]),
        Link(3, "eth1", kind="veth", addresses=["10.0.0.254/24", "fd00:1::fe/64"]),
        Link(4, "eth2", kind="veth", addresses=["10.1.0.254/24"]),
    ]
    return HostContext(
        links=links,
        routes=[
            *derive_routes(links),
            Route(dst="default", gateway="192.168.50.1", oif="eth0"),
            Route(dst="default", gateway="2001:db8:50::1", oif="eth0", family="ipv6", metric=1024),
        ],
        rules=[
            *DEFAULT_IPV4_RULES,
            IpRule(0, table="local", family="ipv6"),
            IpRule(32766, table="main", family="ipv6"),
        ],
        sysctls={"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"},
        empty=False,
    )


def _seed() -> int:
    return int(os.environ.get("NFTRACE_SEED", random.randrange(1 << 30)))


def _port(rng: random.Random) -> int:
    return rng.randrange(1024, 65536)


def flows_v4(rng: random.Random) -> list[KPacket]:
    """Flows through every rule above; sources and ports drawn at random."""

    def outside() -> str:
        return f"198.51.{rng.randrange(256)}.{rng.randrange(1, 255)}"

    out: list[KPacket] = []
    for _ in range(8):
        for dport in (80, 81, 83, 85):
            out.append(KPacket("ingress", "tcp", outside(), "192.168.50.10", _port(rng), dport, iif="eth0"))
        out.append(KPacket("ingress", "udp", outside(), "192.168.50.10", _port(rng), 82, iif="eth0"))
    for _ in range(8):
        src = f"10.0.0.{rng.randrange(1, 250)}"
        out.append(KPacket("ingress", "tcp", src, "198.18.0.1", _port(rng), 84, iif="eth1"))
        dst = f"203.0.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        out.append(KPacket("ingress", "tcp", src, dst, _port(rng), 443, iif="eth1"))
        out.append(KPacket("ingress", "udp", src, dst, _port(rng), 53, iif="eth1"))
        src2 = f"10.1.0.{rng.randrange(1, 250)}"  # inside 10.1.0.1-10.1.0.100 or not
        out.append(KPacket("ingress", "tcp", src2, dst, _port(rng), 443, iif="eth2"))
        out.append(KPacket("ingress", "udp", src2, dst, _port(rng), 53, iif="eth2"))
        # with a port range the source is kept only when its port is inside 20000-30000 too
        out.append(KPacket("ingress", "tcp", src2, dst, rng.randrange(15000, 35000), 8443, iif="eth2"))
    for _ in range(6):
        src = rng.choice(["10.0.0.254", "192.168.50.10", "10.1.0.254"])
        out.append(KPacket("local", "tcp", src, "198.18.1.1", _port(rng), rng.choice([80, 443])))
    return out


def flows_v6(rng: random.Random) -> list[KPacket]:
    def outside() -> str:
        return str(ipaddress.IPv6Address((0x20010DB8_0099 << 80) | rng.getrandbits(64)))

    out: list[KPacket] = []
    for _ in range(8):
        for dport in (80, 81, 82):
            out.append(KPacket("ingress", "tcp", outside(), "2001:db8:50::10", _port(rng), dport, iif="eth0"))
        src = str(ipaddress.IPv6Address(int(ipaddress.IPv6Address("fd00:1::")) + rng.randrange(1, 1 << 32)))
        out.append(KPacket("ingress", "tcp", src, outside(), _port(rng), 443, iif="eth1"))
        out.append(KPacket("ingress", "udp", src, outside(), _port(rng), 53, iif="eth1"))
        # the range across a word boundary: about half of the choices fall outside it
        out.append(KPacket("ingress", "tcp", outside(), "2001:db8:50::10", _port(rng), 82, iif="eth0"))
    return out


def _nat_steps(trace: Any) -> list[dict[str, Any]]:
    return [s for b in trace.to_json()["branches"] for s in b["steps"] if s["kind"] == "nat"]


def _kernel_addrs(res: KResult) -> tuple[str, str] | None:
    """(source, destination) the kernel bound the connection to, from its reply tuple."""
    if res.ct is None or not res.ct.get("reply"):
        return None
    r = res.ct["reply"]
    return str(ipaddress.ip_address(r["dst"])), str(ipaddress.ip_address(r["src"]))


def run_flows(engine: Engine, kh: KernelHost, packets: list[KPacket]) -> tuple[int, list[str], Counter[str]]:
    """Send every flow; returns (flows whose range address agreed, failures, the addresses the kernel chose)."""
    agreed = 0
    failures: list[str] = []
    chosen: Counter[str] = Counter()
    for kp in packets:
        pkt, origin = engine_packet(kp)
        trace = engine.trace(pkt, origin)
        res = kh.send(kp)
        doc = trace.to_json()
        got = _kernel_addrs(res)
        ranged = [
            s for s in _nat_steps(trace) if "the kernel's jhash2" in s.get("note", "") or "kept" in s.get("note", "")
        ]
        problems = []
        if got is None:
            problems.append(f"no conntrack entry (ct={res.ct}, error={res.error})")
        if not ranged:
            problems.append(f"no range NAT step in the engine's trace: {_nat_steps(trace)}")
        if len(doc["branches"]) != 1:
            problems.append(f"{len(doc['branches'])} branches predicted")
        warnings = [w for w in doc["warnings"] if "range" in w or "assumed" in w or "zone" in w]
        if warnings:
            problems.append(f"warnings: {warnings}")
        if got is not None and not problems:
            final = doc["branches"][0]["result"]["packet"]
            predicted = (str(ipaddress.ip_address(final["src"])), str(ipaddress.ip_address(final["dst"])))
            if predicted != got:
                problems.append(f"addresses: engine {predicted}, kernel {got}")
            else:
                agreed += 1
                for s in ranged:
                    chosen[f"{s['type']} {s['after']}"] += 1
        v = compare(trace, res, legacy=kh.backend == "legacy")
        if not v.ok:
            problems.append(v.message)
        if problems:
            failures.append(f"--- {kp}\n" + "\n".join(problems))
    return agreed, failures, chosen


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_ipv4_range_choice_matches_kernel(backend: str) -> None:
    reason = unavailable_reason(backend)
    if reason:
        pytest.skip(reason)
    host = range_host()
    engine = Engine(parse_rules(RULES_V4, "<nat-range-v4>"), host, backend=backend)
    seed = _seed()
    packets = flows_v4(random.Random(seed))
    try:
        kh = KernelHost(host, RULES_V4, backend=backend)
    except KernelHostUnavailable as e:
        pytest.skip(str(e))
    with kh:
        agreed, failures, chosen = run_flows(engine, kh, packets)
    assert not failures, (
        f"{len(failures)}/{len(packets)} flows disagree with the kernel ({agreed} agreed, NFTRACE_SEED={seed}):\n"
        + "\n".join(failures[:3])
    )
    assert agreed == len(packets)
    # the flows spread over the ranges: the first address alone would not have agreed
    dnat = {k for k in chosen if k.startswith("DNAT 10.0.0.")}
    snat = {k for k in chosen if k.startswith("SNAT 192.168.50.1")}
    assert len(dnat) >= 3 and len(snat) >= 3, chosen
    # the zone mattered: zone 0 for the CT --zone 7 flows (or zone 9 for those whose first CT rule set
    # no zone) would have picked another address for some of them, so the agreement above tells
    for dport, wrong_zone in ((83, 0), (85, 9)):
        flows = [kp for kp in packets if kp.dport == dport]
        assert flows
        differs = [
            kp
            for kp in flows
            if natsel.choose("10.0.0.1", "10.0.0.5", manip="dst", src=kp.src, dst=kp.dst, zone=wrong_zone).addr
            != natsel.choose(
                "10.0.0.1", "10.0.0.5", manip="dst", src=kp.src, dst=kp.dst, zone=7 if dport == 83 else 0
            ).addr
        ]
        assert differs, f"zone {wrong_zone} would have agreed for every flow to port {dport}: draw more flows"


def test_ipv6_range_choice_matches_kernel() -> None:
    reason = unavailable_reason("nft")
    if reason:
        pytest.skip(reason)
    host = range_host()
    engine = Engine(parse_rules(RULES_V6, "<nat-range-v6>", family="ipv6"), host)
    seed = _seed()
    packets = flows_v6(random.Random(seed))
    try:
        kh = KernelHost(host, RULES_V4_EMPTY, rules_v6=RULES_V6)
    except KernelHostUnavailable as e:
        pytest.skip(str(e))
    with kh:
        agreed, failures, chosen = run_flows(engine, kh, packets)
    assert not failures, (
        f"{len(failures)}/{len(packets)} IPv6 flows disagree with the kernel ({agreed} agreed, "
        f"NFTRACE_SEED={seed}):\n" + "\n".join(failures[:3])
    )
    assert agreed == len(packets)
    assert len({k for k in chosen if k.startswith("DNAT [fd00:1::") and "]:80" in k}) >= 2, chosen
    lo, hi = ipaddress.IPv6Address("fd00:1::ffff:fffd"), ipaddress.IPv6Address("fd00:1::1:0:2")
    across = [ipaddress.IPv6Address(k.split("[")[1].split("]")[0]) for k in chosen if k.endswith("]:82")]
    assert any(not lo <= a <= hi for a in across), f"no choice outside {lo}-{hi}: {across}"
