"""Kernel-differential tests for corners of the pipeline the ruleset scenarios do not reach.

Each claim of the engine is checked against the kernel's own trace (tests/kernelhost.py), on the
nft and the legacy backend:

* which rules make the kernel enable connection tracking in a namespace (and so traverse nat
  chains at all): the parsed specs' `needs_conntrack`, one ruleset per extension;
* the tables of each hook in the order the kernel runs them (HOOK_TABLES, per backend);
* TTL <= 1 on a packet to forward: dropped after PREROUTING and routing, before FORWARD;
* multicast arriving on a device: delivered only to a group a local socket joined there
  (224.0.0.1, ff02::1 and a solicited-node group of the device's address always are);
* NETMAP in PREROUTING (destination) and POSTROUTING (source);
* NFQUEUE with no program on the queue (dropped; with --queue-bypass it goes on with the next
  table) and TPROXY with and without a transparent listening socket;
* REDIRECT on a device without an IPv4 address (the kernel drops the packet).

One namespace host per backend and module fixture; the sockets that join a group or listen for
TPROXY are opened in the node namespace for the packets that need them and closed after.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from nftrace.engine.pipeline import HOOK_TABLES, Engine, Trace
from nftrace.host.model import DEFAULT_IPV4_RULES, HostContext, IpRule, Link, Route
from nftrace.host.parse import derive_routes
from nftrace.ruleset.parser import parse_rules
from tests.differential import branch_path, compare, engine_packet, kernel_path
from tests.kernelhost import KernelHost, KernelHostUnavailable, KPacket, KResult, in_netns, unavailable_reason

pytestmark = pytest.mark.kernel

IP_TRANSPARENT = 19
TABLES = ("raw", "mangle", "nat", "filter", "security")


def gaps_host() -> HostContext:
    """eth0 uplink 192.168.50.10/24 (default via .1), eth1 pods 10.244.2.1/24, eth2 without an IPv4
    address (10.77.0.0/16 routed out of it); fwmark 0x1 looks up table 100, whose default route is
    local (the TPROXY recipe)."""
    links = [
        Link(1, "lo", kind="loopback", addresses=["127.0.0.1/8", "::1/128"]),
        Link(2, "eth0", kind="veth", mac="02:00:00:00:00:01", addresses=["192.168.50.10/24", "2001:db8:50::10/64"]),
        Link(3, "eth1", kind="veth", addresses=["10.244.2.1/24"]),
        Link(4, "eth2", kind="veth", addresses=[]),
    ]
    return HostContext(
        links=links,
        routes=[
            *derive_routes(links),
            Route(dst="default", gateway="192.168.50.1", oif="eth0"),
            Route(dst="10.77.0.0/16", oif="eth2", scope="link"),
            Route(table="100", type="local", dst="default", oif="lo", scope="host"),
        ],
        rules=[*DEFAULT_IPV4_RULES, IpRule(100, table="100", fwmark=0x1)],
        sysctls={
            "net.ipv4.ip_forward": "1",
            "net.ipv4.conf.all.rp_filter": "0",
            "net.ipv4.conf.default.rp_filter": "0",
            **{f"net.ipv4.conf.{d}.rp_filter": "0" for d in ("eth0", "eth1", "eth2")},
        },
        empty=False,
    )


# Every line was loaded by iptables-nft-restore and iptables-legacy-restore 1.8.9.
GAPS_RULES = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -s 192.168.50.2/32 -j TTL --ttl-set 5
-A PREROUTING -p udp -m udp --dport 7002 -j NFQUEUE --queue-num 4 --queue-bypass
-A PREROUTING -p tcp -m tcp --dport 7003 -j TPROXY --on-port 9999 --on-ip 0.0.0.0 --tproxy-mark 0x1/0x1
-A PREROUTING -p udp -j MARK --set-xmark 0x20/0xff0
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 10.96.0.0/24 -j NETMAP --to 10.244.2.0/24
-A PREROUTING -i eth2 -p tcp -j REDIRECT --to-ports 8080
-A POSTROUTING -s 192.168.50.0/24 -o eth1 -j NETMAP --to 172.16.5.0/24
-A POSTROUTING -o eth2 -j MASQUERADE
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
-A INPUT -p udp -m udp --dport 7001 -j NFQUEUE --queue-num 3
-A INPUT -p udp -j ACCEPT
-A FORWARD -p udp -j ACCEPT
-A FORWARD -p tcp -j ACCEPT
COMMIT
*security
:INPUT ACCEPT [0:0]
-A INPUT -p udp -j ACCEPT
COMMIT
"""

GAPS_RULES_V6 = """*raw
:PREROUTING ACCEPT [0:0]
COMMIT
*filter
:INPUT ACCEPT [0:0]
-A INPUT -p udp -j ACCEPT
COMMIT
"""


@dataclass
class Node:
    host: KernelHost
    engine: Engine
    engine6: Engine | None
    backend: str

    @property
    def legacy(self) -> bool:
        return self.backend == "legacy"

    def run(self, kp: KPacket) -> tuple[Trace, KResult]:
        pkt, origin = engine_packet(kp)
        family = "ipv6" if ":" in kp.dst else "ipv4"
        engine = self.engine6 if family == "ipv6" else self.engine
        assert engine is not None
        return engine.trace(pkt, origin), self.host.send(kp)

    def agree(self, kp: KPacket) -> tuple[dict[str, Any], KResult, Trace]:
        """Send kp, assert the engine predicted the kernel's path; the branch that did."""
        trace, res = self.run(kp)
        v = compare(trace, res, legacy=self.legacy)
        assert v.ok, f"{self.backend}: {kp}\n{v.message}"
        return matching_branch(trace, res, self.legacy), res, trace


def matching_branch(trace: Trace, res: KResult, legacy: bool) -> dict[str, Any]:
    kp = kernel_path(res, legacy)
    same = [b for b in trace.to_json()["branches"] if branch_path(b["steps"], legacy) == kp]
    assert same, res.describe()
    return same[0]


def hooks_seen(res: KResult) -> list[str]:
    out: list[str] = []
    for ev in res.events:
        if not out or out[-1] != ev.hook:
            out.append(ev.hook)
    return out


@pytest.fixture(scope="module", params=["nft", "legacy"])
def node(request: pytest.FixtureRequest) -> Iterator[Node]:
    backend = str(request.param)
    reason = unavailable_reason(backend)
    if reason:
        pytest.skip(reason)
    ctx = gaps_host()
    engine = Engine(parse_rules(GAPS_RULES, "<gaps>"), ctx, backend=backend)
    engine6 = None
    if backend == "nft":
        engine6 = Engine(parse_rules(GAPS_RULES_V6, "<gaps6>", family="ipv6"), ctx, backend=backend)
    try:
        kh = KernelHost(ctx, GAPS_RULES, backend=backend, rules_v6=GAPS_RULES_V6 if backend == "nft" else None)
        with kh:
            yield Node(kh, engine, engine6, backend)
    except KernelHostUnavailable as exc:
        pytest.skip(str(exc))


@contextmanager
def node_socket(node: Node, make: Any) -> Iterator[socket.socket]:
    s = in_netns(node.host.node, make)
    try:
        yield s
    finally:
        s.close()


def udp(src: str, dst: str, dport: int, iif: str = "eth0", **kw: Any) -> KPacket:
    return KPacket("ingress", "udp", src, dst, 40000, dport, iif=iif, **kw)


def tcp(src: str, dst: str, dport: int, iif: str = "eth0") -> KPacket:
    return KPacket("ingress", "tcp", src, dst, 40001, dport, iif=iif)


# ------------------------------------------------------------------ HOOK_TABLES


def test_tables_of_a_hook_run_in_the_kernels_order(node: Node) -> None:
    """nat INPUT runs before security INPUT on iptables-nft (security at priority 150), after it
    on legacy (50): HOOK_TABLES holds both orders."""
    _, res, trace = node.agree(udp("192.168.50.7", "192.168.50.10", 53))
    present = {t for t in TABLES if "INPUT" in node.engine.ruleset.tables.get(t, _NO_TABLE).chains}
    want = [t for t in HOOK_TABLES[node.backend]["INPUT"] if t in present]
    assert res.tables_at("INPUT") == want, res.describe()
    assert {"security", "nat"} <= set(want)


class _NoTable:
    chains: dict[str, Any] = {}


_NO_TABLE = _NoTable()


# ------------------------------------------------------------------ TTL


def test_ttl_expired_packets_are_dropped_before_forward(node: Node) -> None:
    for ttl in (1, 0):
        branch, res, _ = node.agree(udp("192.168.50.7", "10.244.2.6", 53, ttl=ttl))
        assert hooks_seen(res) == ["PREROUTING"], res.describe()
        assert res.ct is None  # dropped before conntrack confirms the entry
        assert branch["probability"] == 1.0
        assert branch["result"]["at"] == {"stage": "forward", "reason": "TTL exceeded"}
        assert [s["kind"] for s in branch["steps"] if s["kind"] == "route"] == ["route"]
    # TTL 2 is forwarded (leaving with 1); TTL 1 to a local address is delivered
    branch, res, _ = node.agree(udp("192.168.50.7", "10.244.2.6", 54, ttl=2))
    assert "FORWARD" in hooks_seen(res) and branch["result"]["disposition"] == "forwarded"
    branch, res, _ = node.agree(udp("192.168.50.7", "192.168.50.10", 55, ttl=1))
    assert hooks_seen(res)[-1] == "INPUT" and branch["result"]["disposition"] == "local"
    # the check is on the TTL after PREROUTING: a TTL target there lets the packet through
    branch, res, _ = node.agree(udp("192.168.50.2", "10.244.2.6", 56, ttl=1))
    assert "FORWARD" in hooks_seen(res) and branch["result"]["disposition"] == "forwarded"


# ------------------------------------------------------------------ multicast


def _join(group: str, local: str) -> Any:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", 5353))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton(local))
        return s

    return make


def test_multicast_is_delivered_only_to_a_joined_group(node: Node) -> None:
    mdns = udp("192.168.50.7", "224.0.0.251", 5353)
    branch, res, trace = node.agree(mdns)
    # nobody joined 224.0.0.251: the kernel drops it after PREROUTING
    assert hooks_seen(res) == ["PREROUTING"], res.describe()
    doc = trace.to_json()
    assert [b["probability"] for b in doc["branches"]] == [None, None]
    assert sorted(b["result"]["disposition"] for b in doc["branches"]) == ["dropped", "local"]
    assert branch["result"]["disposition"] == "dropped"
    assert any("NOT joined" in c for c in branch["conditions"]), branch["conditions"]
    with node_socket(node, _join("224.0.0.251", "192.168.50.10")):
        branch, res, _ = node.agree(mdns)
    assert hooks_seen(res)[-1] == "INPUT" and res.final["delivered_local"], res.describe()
    assert branch["result"]["disposition"] == "local"
    assert any("assumed joined" in c for c in branch["conditions"]), branch["conditions"]
    # every device is in the all-hosts group: certain
    branch, res, trace = node.agree(udp("192.168.50.7", "224.0.0.1", 5353))
    assert hooks_seen(res)[-1] == "INPUT" and len(trace.branches) == 1 and branch["probability"] == 1.0


def test_ipv6_multicast_is_delivered_only_to_a_joined_group(node: Node) -> None:
    if node.legacy:
        pytest.skip("IPv6 packets are traced on the nft backend only")
    src = "2001:db8:50::7"
    branch, res, trace = node.agree(udp(src, "ff02::fb", 5353))
    assert hooks_seen(res) == ["PREROUTING"], res.describe()
    assert branch["result"]["disposition"] == "dropped" and len(trace.branches) == 2
    # all-nodes and the solicited-node group of eth0's address are joined by the kernel itself
    for group in ("ff02::1", "ff02::1:ff00:10"):
        branch, res, trace = node.agree(udp(src, group, 5353))
        assert hooks_seen(res) == ["PREROUTING", "INPUT"] and res.final["delivered_local"], (group, res.describe())
        assert len(trace.branches) == 1 and branch["probability"] == 1.0


# ------------------------------------------------------------------ NETMAP


def test_netmap_maps_the_destination_in_prerouting_and_the_source_in_postrouting(node: Node) -> None:
    branch, res, _ = node.agree(udp("192.168.50.7", "10.96.0.9", 53))
    assert (res.final["src"], res.final["dst"], res.final["oif"]) == ("172.16.5.7", "10.244.2.9", "eth1")
    nat = [(s["hook"], s["type"], s["before"], s["after"]) for s in branch["steps"] if s["kind"] == "nat"]
    assert nat == [
        ("PREROUTING", "NETMAP", "10.96.0.9:53", "10.244.2.9:53"),
        ("POSTROUTING", "NETMAP", "192.168.50.7:40000", "172.16.5.7:40000"),
    ], nat


# ------------------------------------------------------------------ NFQUEUE, TPROXY


def test_nfqueue_without_a_listener(node: Node) -> None:
    # no --queue-bypass: the packet ends at the rule (nothing listens: dropped)
    branch, res, trace = node.agree(udp("192.168.50.7", "192.168.50.10", 7001))
    last = res.events[-1]
    assert (last.table, last.chain, last.rule) == ("filter", "INPUT", 1), res.describe()
    assert not res.final["delivered_local"] and res.ct is None
    assert [b["result"]["disposition"] for b in trace.to_json()["branches"]] == ["queued"]
    # --queue-bypass: the rest of mangle PREROUTING is skipped, the next table goes on
    branch, res, trace = node.agree(udp("192.168.50.7", "192.168.50.10", 7002))
    assert not [ev for ev in res.events if ev.table == "mangle" and ev.rule == 4], res.describe()
    assert res.final["delivered_local"]
    assert sorted(b["result"]["disposition"] for b in trace.to_json()["branches"]) == ["local", "queued"]
    assert branch["result"]["disposition"] == "local" and branch["probability"] is None
    assert any("NO program listens" in c for c in branch["conditions"]), branch["conditions"]


def _transparent_listener() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    s.bind(("0.0.0.0", 9999))
    s.listen(8)
    return s


def test_tproxy_needs_a_transparent_listener(node: Node) -> None:
    kp = tcp("192.168.50.7", "8.8.8.8", 7003)
    branch, res, trace = node.agree(kp)
    assert hooks_seen(res) == ["PREROUTING"] and res.events[-1].table == "mangle", res.describe()
    if not node.legacy:
        assert res.events[-1].verdict == "DROP"
    assert branch["result"]["verdict"] == "DROP" and branch["probability"] is None
    assert any("NO transparent socket" in c for c in branch["conditions"]), branch["conditions"]
    assert len(trace.branches) == 2
    with node_socket(node, _transparent_listener):
        branch, res, _ = node.agree(kp)
    # accepted and marked 0x1: the fwmark rule's table 100 delivers it locally
    assert res.final["delivered_local"], res.describe()
    assert branch["result"]["disposition"] == "local"
    (step,) = [s for s in branch["steps"] if s["kind"] == "rule" and s.get("target") == "TPROXY"]
    assert step["verdict"] == "ACCEPT" and step["set"] == {"mark": 1}, step
    if not node.legacy:
        assert res.events[-1].packet.get("MARK") == "0x1", res.describe()


# ------------------------------------------------------------------ REDIRECT, MASQUERADE without an address


def test_redirect_on_a_device_without_an_address_drops(node: Node) -> None:
    branch, res, trace = node.agree(tcp("10.9.9.9", "10.244.2.6", 80, iif="eth2"))
    last = res.events[-1]
    assert (last.table, last.chain, last.rule) == ("nat", "PREROUTING", 2), res.describe()
    if not node.legacy:
        assert last.verdict == "DROP"
    assert len(trace.branches) == 1 and branch["result"]["verdict"] == "DROP"
    assert branch["result"]["at"]["rule"] == 2


def test_masquerade_out_of_a_device_without_an_address_takes_another_devices(node: Node) -> None:
    """inet_select_addr() falls back to an address of another device: not a drop."""
    branch, res, _ = node.agree(udp("192.168.50.7", "10.77.0.5", 53))
    assert (res.final["src"], res.final["oif"]) == ("192.168.50.10", "eth2"), res.describe()
    assert branch["result"]["disposition"] == "forwarded"


# ------------------------------------------------------------------ which rules enable conntrack

# (name, table, chain, rule): a ruleset holding this one rule besides the nat jump and the INPUT
# accept below.  Whether the kernel then tracks connections (and runs nat chains) is the engine's
# `needs_conntrack` of the parsed specs; the kernel decides in each extension's checkentry.
CT_VARIANTS: list[tuple[str, str, str, str]] = [
    ("none", "filter", "INPUT", "-p tcp -j ACCEPT"),
    ("conntrack", "filter", "INPUT", "-m conntrack --ctstate INVALID -j DROP"),
    ("state", "filter", "INPUT", "-m state --state INVALID -j DROP"),
    ("mark", "filter", "INPUT", "-m mark --mark 0x5 -j DROP"),
    ("connmark", "filter", "INPUT", "-m connmark --mark 0x5 -j DROP"),
    ("connbytes", "filter", "INPUT",
     "-m connbytes --connbytes 100000 --connbytes-mode bytes --connbytes-dir both -j DROP"),
    ("connlimit", "filter", "INPUT",
     "-p tcp -m connlimit --connlimit-above 100 --connlimit-mask 32 --connlimit-saddr -j DROP"),
    ("connlabel", "filter", "INPUT", "-m connlabel --label 5 -j DROP"),
    ("helper", "filter", "INPUT", "-m helper --helper ftp -j DROP"),
    ("comment", "filter", "INPUT", '-m comment --comment "-m conntrack -j CT" -j ACCEPT'),
    ("cluster", "mangle", "PREROUTING",
     "-m cluster --cluster-local-nodemask 0x00000001 --cluster-total-nodes 2 --cluster-hash-seed 0xdeadbeef "
     "-j MARK --set-xmark 0xffff/0xffff"),
    ("CONNMARK", "mangle", "PREROUTING", "-p tcp -j CONNMARK --set-xmark 0x1/0xffffffff"),
    ("CONNSECMARK", "mangle", "PREROUTING", "-p tcp -j CONNSECMARK --save"),
    ("TPROXY", "mangle", "PREROUTING",
     "-p tcp -m tcp --dport 99 -j TPROXY --on-port 9999 --on-ip 0.0.0.0 --tproxy-mark 0x1/0x1"),
    ("socket", "mangle", "PREROUTING", "-p tcp -m socket -j MARK --set-xmark 0x1/0xffffffff"),
    ("HMARK", "mangle", "PREROUTING", "-p tcp -j HMARK --hmark-tuple ct --hmark-mod 10 --hmark-offset 1 --hmark-rnd 0x1"),
    ("CT zone", "raw", "PREROUTING", "-p tcp -j CT --zone 1"),
    ("CT helper", "raw", "PREROUTING", "-p tcp -m tcp --dport 21 -j CT --helper ftp"),
    ("CT --notrack", "raw", "PREROUTING", "-p tcp -j CT --notrack"),
    ("NOTRACK", "raw", "PREROUTING", "-p tcp -j NOTRACK"),
    ("DNAT", "nat", "OUTPUT", "-d 1.2.3.4/32 -p tcp -j DNAT --to-destination 5.6.7.8"),
    ("SNAT", "nat", "POSTROUTING", "-d 1.2.3.4/32 -p tcp -j SNAT --to-source 5.6.7.8"),
    ("MASQUERADE", "nat", "POSTROUTING", "-o eth9 -j MASQUERADE"),
    ("REDIRECT", "nat", "OUTPUT", "-d 1.2.3.4/32 -p tcp -j REDIRECT --to-ports 99"),
    ("NETMAP", "nat", "OUTPUT", "-d 1.2.3.0/24 -j NETMAP --to 5.6.7.0/24"),
    ("SYNPROXY", "filter", "INPUT", "-p tcp -m tcp --dport 99 -j SYNPROXY --sack-perm --timestamp --wscale 7 --mss 1460"),
    ("LOG", "filter", "INPUT", "-p tcp -j LOG"),
    ("none again", "filter", "INPUT", "-p tcp -j ACCEPT"),
]  # fmt: skip


def ct_dump(table: str, chain: str, rule: str, trace: bool = False) -> str:
    """All five tables (a restore flushes each table it names; legacy keeps every table it loaded),
    the nat PREROUTING jump that shows whether nat is traversed, the INPUT accept, and the rule.
    trace: the legacy harness's TRACE rules first in raw."""
    body: dict[str, list[str]] = {
        "raw": [":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"],
        "mangle": [],
        "nat": [":PREROUTING ACCEPT [0:0]", ":PRE - [0:0]", "-A PREROUTING -j PRE"],
        "filter": [":INPUT ACCEPT [0:0]", "-A INPUT -p udp -j ACCEPT"],
        "security": [],
    }
    if trace:
        body["raw"] += ["-A PREROUTING -j TRACE", "-A OUTPUT -j TRACE"]
    decl = f":{chain} ACCEPT [0:0]"
    if decl not in body[table]:
        body[table].insert(0, decl)
    body[table].append(f"-A {chain} {rule}")
    return "".join(f"*{t}\n" + "".join(f"{ln}\n" for ln in lines) + "COMMIT\n" for t, lines in body.items())


def reload(kh: KernelHost, text_with_trace: str, text: str) -> None:
    if kh.backend == "nft":
        for t in TABLES:
            kh.run(["nft", "delete", "table", "ip", t], check=False)
        kh.run(["iptables-nft-restore"], input=text)
        kh.refresh_handles()
    else:
        kh.run(["iptables-legacy-restore"], input=text_with_trace)
        kh._load_legacy_rules()


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_the_rules_that_enable_conntrack(backend: str) -> None:
    """For each extension, a ruleset with it alone: the kernel traverses the nat chains (and keeps a
    conntrack entry) exactly when the engine says conntrack is active; the whole path agrees too."""
    reason = unavailable_reason(backend)
    if reason:
        pytest.skip(reason)
    ctx = gaps_host()
    kp = udp("192.168.50.1", "192.168.50.10", 53)
    first = CT_VARIANTS[0]
    seen: dict[str, tuple[bool, bool]] = {}
    failures: list[str] = []
    try:
        kh = KernelHost(ctx, ct_dump(*first[1:]), backend=backend)
        with kh:
            for name, table, chain, rule in CT_VARIANTS:
                text = ct_dump(table, chain, rule)
                if (name, table, chain, rule) != first:
                    reload(kh, ct_dump(table, chain, rule, trace=True), text)
                engine = Engine(parse_rules(text, f"<{name}>"), ctx, backend=backend)
                pkt, origin = engine_packet(kp)
                trace = engine.trace(pkt, origin)
                res = kh.send(kp)
                kernel_ct = "nat" in res.tables_at("PREROUTING")
                seen[name] = (engine.conntrack_active, kernel_ct)
                if kernel_ct != (res.ct is not None):
                    failures.append(f"{name}: nat traversed={kernel_ct} but conntrack entry {res.ct}")
                if engine.conntrack_active != kernel_ct:
                    failures.append(f"{name}: engine conntrack_active={engine.conntrack_active}, kernel {kernel_ct}")
                v = compare(trace, res, legacy=backend == "legacy")
                if not v.ok:
                    failures.append(f"{name}:\n{v.message}")
    except KernelHostUnavailable as exc:
        pytest.skip(str(exc))
    assert not failures, "\n".join(failures)
    # the test can tell the two apart: both outcomes occurred, and conntrack went off again
    assert {k for _, k in seen.values()} == {True, False}
    assert seen["none again"] == (False, False) and seen["CT --notrack"] == (False, False)
