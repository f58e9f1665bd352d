"""Kernel-differential test of the hop-limit check on IPv6 forwarding (the IPv6 half of
tests/test_kernel_gaps.py's TTL test).

ip6_forward() drops a packet whose hop limit is <= 1 (answering with an ICMPv6 time exceeded)
after PREROUTING and the routing decision and before NF_INET_FORWARD; a packet to a local
address is not checked; an HL target in mangle PREROUTING runs before the check.  The engine
claims the same (the `pkt.ttl <= 1` branch of Engine._route_in): each claim is compared with the
kernel's trace here.

IPv6 events are read from `nft monitor trace` (tests/kernelhost.py), which the harness runs on the
nft backend only: there is no legacy variant of this test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from nftrace.engine.pipeline import Engine
from nftrace.host.model import DEFAULT_IPV4_RULES, DEFAULT_IPV6_RULES, HostContext, Link, Route
from nftrace.host.parse import derive_routes
from nftrace.ruleset.parser import parse_rules
from tests.differential import branch_path, compare, engine_packet, kernel_path
from tests.kernelhost import KernelHost, KernelHostError, KernelHostUnavailable, KPacket, KResult, unavailable_reason

pytestmark = pytest.mark.kernel

# The IPv4 twin of the decrement check (loaded by iptables-nft-restore 1.8.9).
RULES_V4 = """*mangle
:FORWARD ACCEPT [0:0]
-A FORWARD -m ttl --ttl-eq 1 -j MARK --set-xmark 0x1/0xffffffff
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
-A FORWARD -p udp -j ACCEPT
COMMIT
"""

# The HL rule: loaded by ip6tables-nft-restore 1.8.9 (an `xt target HL` in nf_tables).
HL_RULE = "-A PREROUTING -s 2001:db8:50::2/128 -j HL --hl-set 5\n"

# Every line was loaded by ip6tables-nft-restore 1.8.9.  The nat table turns conntrack on, so that
# a dropped packet's unconfirmed entry (ct None) can be told from a forwarded one's.
RULES_V6 = """*mangle
:PREROUTING ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
{hl}-A FORWARD -m hl --hl-eq 1 -j MARK --set-xmark 0x1/0xffffffff
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s fd00:244:2::/64 -o eth0 -j MASQUERADE
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
-A INPUT -p udp -j ACCEPT
-A FORWARD -p udp -j ACCEPT
COMMIT
"""


def host6() -> HostContext:
    """eth0 uplink 2001:db8:50::10/64 (default via 2001:db8:50::1), eth1 pods fd00:244:2::1/64, forwarding on."""
    links = [
        Link(1, "lo", kind="loopback", addresses=["127.0.0.1/8", "::1/128"]),
        Link(2, "eth0", kind="veth", addresses=["192.168.50.10/24", "2001:db8:50::10/64"]),
        Link(3, "eth1", kind="veth", addresses=["10.244.2.1/24", "fd00:244:2::1/64"]),
    ]
    return HostContext(
        links=links,
        routes=[
            *derive_routes(links),
            Route(dst="default", gateway="2001:db8:50::1", oif="eth0", family="ipv6", metric=1024),
        ],
        rules=[*DEFAULT_IPV4_RULES, *DEFAULT_IPV6_RULES],
        sysctls={"net.ipv6.conf.all.forwarding": "1", "net.ipv4.ip_forward": "1"},
        empty=False,
    )


@dataclass
class Node:
    host: KernelHost
    engine: Engine
    engine4: Engine
    has_hl: bool

    def agree(self, kp: KPacket) -> tuple[dict[str, Any], KResult]:
        """Send kp, assert the engine predicted the kernel's path; the branch that did."""
        pkt, origin = engine_packet(kp)
        trace = (self.engine if ":" in kp.dst else self.engine4).trace(pkt, origin)
        res = self.host.send(kp)
        v = compare(trace, res)
        assert v.ok, f"{kp}\n{v.message}"
        want = kernel_path(res)
        same = [b for b in trace.to_json()["branches"] if branch_path(b["steps"]) == want]
        assert same, res.describe()
        return same[0], res


def hooks_seen(res: KResult) -> list[str]:
    out: list[str] = []
    for ev in res.events:
        if not out or out[-1] != ev.hook:
            out.append(ev.hook)
    return out


def hop_limits(res: KResult, hook: str) -> set[str]:
    """The hop limits the kernel's trace printed for the packet at a hook (its packet lines)."""
    return {ev.packet["HOPLIMIT"] for ev in res.events if ev.hook == hook and "HOPLIMIT" in ev.packet}


def _start(ctx: HostContext, rules_v6: str) -> KernelHost:
    kh = KernelHost(ctx, RULES_V4, rules_v6=rules_v6)
    kh.__enter__()
    return kh


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    reason = unavailable_reason("nft")
    if reason:
        pytest.skip(reason)
    ctx = host6()
    has_hl = True
    text = RULES_V6.format(hl=HL_RULE)
    try:
        try:
            kh = _start(ctx, text)
        except KernelHostError as exc:
            if "HL" not in str(exc) and "rejected the IPv6 rules" not in str(exc):
                raise
            has_hl = False  # no HL target on this kernel: the rest still runs
            text = RULES_V6.format(hl="")
            kh = _start(ctx, text)
    except KernelHostUnavailable as exc:
        pytest.skip(str(exc))
    try:
        engine = Engine(parse_rules(text, "<gaps6>", family="ipv6"), ctx)
        yield Node(kh, engine, Engine(parse_rules(RULES_V4, "<gaps4>"), ctx), has_hl)
    finally:
        kh.close()


def udp6(src: str, dst: str, dport: int, hl: int, iif: str = "eth0") -> KPacket:
    return KPacket("ingress", "udp", src, dst, 40000, dport, iif=iif, ttl=hl)


def matched(branch: dict[str, Any], table: str, chain: str) -> list[int]:
    """Positions of the rules of table/chain the engine's branch matched."""
    return [
        s["rule"]
        for s in branch["steps"]
        if s["kind"] == "rule" and s.get("matched") and (s["table"], s["chain"]) == (table, chain)
    ]


@pytest.mark.parametrize("hl", [1, 0])
def test_hop_limit_expired_packets_are_dropped_before_forward(node: Node, hl: int) -> None:
    branch, res = node.agree(udp6("2001:db8:50::7", "fd00:244:2::6", 53, hl))
    assert hooks_seen(res) == ["PREROUTING"], res.describe()
    assert hop_limits(res, "PREROUTING") == {str(hl)}, res.describe()
    assert res.ct is None, res.describe()  # dropped before conntrack confirms the entry
    assert branch["probability"] == 1.0
    assert branch["result"]["disposition"] == "dropped"
    assert branch["result"]["at"] == {"stage": "forward", "reason": "TTL exceeded"}
    assert [s["result"] for s in branch["steps"] if s["kind"] == "route"] == ["forward"]


def test_hop_limit_2_is_forwarded_and_forward_sees_1(node: Node) -> None:
    """ip6_forward() decrements the hop limit before NF_INET_FORWARD: `-m hl --hl-eq 1` matches in FORWARD."""
    branch, res = node.agree(udp6("2001:db8:50::7", "fd00:244:2::6", 54, 2))
    assert hooks_seen(res) == ["PREROUTING", "FORWARD", "POSTROUTING"], res.describe()
    assert hop_limits(res, "PREROUTING") == {"2"} and hop_limits(res, "FORWARD") == {"1"}, res.describe()
    assert res.ct is not None, res.describe()
    assert branch["result"]["disposition"] == "forwarded" and res.final["oif"] == "eth1"
    assert matched(branch, "mangle", "FORWARD") == [1]


def test_hop_limit_1_to_a_local_address_is_delivered(node: Node) -> None:
    branch, res = node.agree(udp6("2001:db8:50::7", "2001:db8:50::10", 55, 1))
    assert hooks_seen(res)[-1] == "INPUT" and res.final["delivered_local"], res.describe()
    assert branch["result"]["disposition"] == "local"


def test_hl_target_in_prerouting_lets_a_hop_limit_1_packet_through(node: Node) -> None:
    """The check reads the hop limit after PREROUTING: `-j HL --hl-set 5` there saves the packet,
    which FORWARD sees with 4."""
    if not node.has_hl:
        pytest.skip("no HL target on this kernel")
    branch, res = node.agree(udp6("2001:db8:50::2", "fd00:244:2::6", 56, 1))
    assert hooks_seen(res) == ["PREROUTING", "FORWARD", "POSTROUTING"], res.describe()
    # a chain's packet line shows the packet after its first matched rule: the HL rule already applied
    assert hop_limits(res, "PREROUTING") == {"5"} and hop_limits(res, "FORWARD") == {"4"}, res.describe()
    assert branch["result"]["disposition"] == "forwarded"
    assert matched(branch, "mangle", "PREROUTING") == [1]
    assert matched(branch, "mangle", "FORWARD") == []


def test_ipv4_ttl_is_decremented_before_forward_too(node: Node) -> None:
    """The IPv4 twin (ip_forward() decrements the TTL before NF_INET_FORWARD): `-m ttl --ttl-eq 1`
    matches a TTL-2 packet in FORWARD and not a TTL-3 one."""
    for ttl, want in ((2, [1]), (3, [])):
        branch, res = node.agree(
            KPacket("ingress", "udp", "192.168.50.7", "10.244.2.6", 40000, 57, iif="eth0", ttl=ttl)
        )
        assert "FORWARD" in hooks_seen(res) and branch["result"]["disposition"] == "forwarded", res.describe()
        assert matched(branch, "mangle", "FORWARD") == want
