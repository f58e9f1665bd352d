"""The chain index (nftrace.engine.index) never changes a trace.

For random kube-shaped chains and random packets, a walk that uses the index and the
linear walk give the same trace: the same branches, probabilities, conditions, steps and
results.  The chains mix what the index can file (destinations, protocols, ports) with what
it must not skip past (statistic and recent forks, addrtype without a host, negations,
ranges, wildcard interfaces, matches of unknown outcome), in random order.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.gen_kube import generate, write_dir
from nftrace.engine.index import ChainIndex, RulesetIndex, rule_key
from nftrace.engine.packet import packet_from_dict
from nftrace.engine.pipeline import Engine
from nftrace.engine.walker import WalkOptions
from nftrace.host.model import HostContext
from nftrace.host.parse import build_host_context
from nftrace.ruleset.model import Ruleset
from nftrace.ruleset.parser import parse_rules

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "rulesets" / "kube-node"

ADDRS = ["10.96.0.1", "10.96.0.10", "10.96.5.7", "10.96.200.30", "192.168.50.11", "127.0.0.1", "10.244.1.5", "8.8.8.8"]
NETS = [f"{a}/32" for a in ADDRS] + [
    "10.96.0.0/12", "10.96.0.0/16", "10.244.0.0/16", "10.96.0.0/24", "192.168.50.0/24", "127.0.0.0/8", "0.0.0.0/1",
]  # fmt: skip
PORTS = [53, 80, 443, 8080, 30080, 31000]
IFACES = ["eth0", "cni0", "cni+", "veth+", "lo", "eth+"]


def kube_host() -> HostContext:
    return build_host_context(
        routes_file=str(KUBE / "routes.txt"),
        addrs_file=str(KUBE / "addrs.txt"),
        sysctls=[str(KUBE / "sysctl.txt")],
    )


def _bang(draw: st.DrawFn, p: float = 0.25) -> str:
    return "! " if draw(st.floats(0, 1)) < p else ""


@st.composite
def rule_text(draw: st.DrawFn, chain: str, table: str) -> str:
    """One rule: a kube-proxy service rule most of the time, anything else otherwise."""
    if draw(st.floats(0, 1)) < 0.5:
        # KUBE-SERVICES / KUBE-NODEPORTS shaped
        proto = draw(st.sampled_from(["tcp", "udp"]))
        dst = f"-d {draw(st.sampled_from(NETS))} " if draw(st.booleans()) else ""
        port: int | str = draw(st.sampled_from(PORTS))
        if draw(st.floats(0, 1)) < 0.2:
            port = f"{port}:{min(65535, int(port) + draw(st.sampled_from([1, 400, 1000, 30000])))}"
        head = f'-A {chain} {dst}-p {proto} -m comment --comment "svc {port}" -m {proto} --dport {port}'
        return head + " " + draw(targets(table))
    basics: list[str] = []
    if draw(st.booleans()):
        basics.append(f"{_bang(draw)}-d {draw(st.sampled_from(NETS))}")
    if draw(st.floats(0, 1)) < 0.3:
        basics.append(f"{_bang(draw)}-s {draw(st.sampled_from(NETS))}")
    if draw(st.floats(0, 1)) < 0.3:
        basics.append(f"{_bang(draw)}-i {draw(st.sampled_from(IFACES))}")
    proto = draw(st.sampled_from([None, "tcp", "udp", "icmp"]))
    if proto is not None:
        basics.append(f"{_bang(draw, 0.15)}-p {proto}")
        if basics[-1].startswith("!"):
            proto = None  # no protocol match may follow a negated -p
    if proto is None and draw(st.floats(0, 1)) < 0.1:
        basics.append(f"{_bang(draw)}-f")
    exts: list[str] = []
    if proto in ("tcp", "udp") and draw(st.booleans()):
        lo = draw(st.sampled_from(PORTS))
        hi = min(65535, lo + draw(st.sampled_from([1, 400, 1000, 30000])))
        port = f"{lo}:{hi}" if draw(st.floats(0, 1)) < 0.4 else str(lo)
        sport = f" {_bang(draw)}--sport {draw(st.integers(1, 65535))}" if draw(st.floats(0, 1)) < 0.2 else ""
        exts.append(f"-m {proto}{sport} {_bang(draw)}--dport {port}")
    if proto in ("tcp", "udp") and draw(st.floats(0, 1)) < 0.15:
        exts.append(
            f"-m multiport {_bang(draw)}--dports {','.join(map(str, draw(st.sets(st.sampled_from(PORTS), min_size=1))))}"
        )
    if proto == "icmp" and draw(st.booleans()):
        exts.append(f"-m icmp {_bang(draw)}--icmp-type {draw(st.sampled_from(['8', '0', 'any', '3/3']))}")
    pool = [
        '-m comment --comment "x"',
        "-m statistic --mode random --probability 0.50000000000",
        "-m statistic --mode random --probability 0.33333333349",
        "-m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-X --mask 255.255.255.255 --rsource",
        "-m limit --limit 10/sec",
        f"-m addrtype {_bang(draw)}--dst-type LOCAL",
        f"-m addrtype {_bang(draw)}--src-type LOCAL",
        f"-m mark {_bang(draw)}--mark 0x4000/0x4000",
        "-m conntrack --ctstate NEW",
    ]
    exts += draw(st.lists(st.sampled_from(pool), max_size=2))
    exts = draw(st.permutations(exts))
    body = " ".join([*basics, *exts])
    return f"-A {chain} {body} {draw(targets(table))}".replace("  ", " ")


@st.composite
def targets(draw: st.DrawFn, table: str) -> str:
    common = [
        "-j ACCEPT",
        "-j RETURN",
        "-j SUB",
        "-g SUB2",
        "-j MARK --set-xmark 0x4000/0x4000",
        '-j LOG --log-prefix "x "',
    ]
    if table == "nat":
        return draw(st.sampled_from([*common, "-j DNAT --to-destination 10.244.1.5", "-j MASQ"]))
    return draw(st.sampled_from([*common, "-j DROP", "-j REJECT --reject-with icmp-port-unreachable"]))


@st.composite
def rulesets(draw: st.DrawFn) -> str:
    nat = draw(st.lists(rule_text("NBIG", "nat"), min_size=1, max_size=60))
    filt = draw(st.lists(rule_text("BIG", "filter"), min_size=1, max_size=60))
    sub_nat = draw(st.lists(rule_text("SUB", "nat").filter(_no_sub), max_size=4))
    sub_filt = draw(st.lists(rule_text("SUB", "filter").filter(_no_sub), max_size=4))
    return "\n".join(
        [
            "*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]", ":MASQ - [0:0]", ":NBIG - [0:0]", ":SUB - [0:0]", ":SUB2 - [0:0]",
            "-A PREROUTING -j NBIG", "-A OUTPUT -j NBIG",
            "-A MASQ -j MARK --set-xmark 0x4000/0x4000",
            *nat,
            "-A NBIG -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.244.1.6:80",
            *sub_nat,
            "-A SUB2 -d 10.96.0.10/32 -p udp -j DNAT --to-destination 10.244.1.7:53",
            "COMMIT",
            "*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
            ":BIG - [0:0]", ":SUB - [0:0]", ":SUB2 - [0:0]",
            "-A INPUT -j BIG", "-A FORWARD -j BIG", "-A OUTPUT -j BIG",
            *filt,
            *sub_filt,
            "-A SUB2 -d 10.96.0.10/32 -j DROP",
            "COMMIT",
        ]
    ) + "\n"  # fmt: skip


def _no_sub(text: str) -> bool:
    return "-j SUB" not in text and "-g SUB2" not in text


@st.composite
def packets(draw: st.DrawFn) -> dict[str, Any]:
    proto = draw(st.sampled_from(["tcp", "udp", "icmp"]))
    dst = draw(st.sampled_from([*ADDRS, "10.96.77.1", "10.100.0.3", "1.2.3.4"]))
    d: dict[str, Any] = {"proto": proto, "dst": dst}
    if proto != "icmp":
        d["dport"] = draw(st.one_of(st.sampled_from(PORTS), st.integers(1, 65535)))
        d["sport"] = draw(st.sampled_from([1000, 40000, 22]))
    if draw(st.floats(0, 1)) < 0.25:
        d["origin"] = "local"
        d["src"] = draw(st.sampled_from(["192.168.50.11", "127.0.0.1", "10.244.1.1"]))
    else:
        d["origin"] = "ingress"
        d["iif"] = draw(st.sampled_from(["eth0", "cni0"]))
        d["src"] = draw(st.sampled_from(["10.244.1.3", "203.0.113.7", "192.168.50.1", "10.244.1.5"]))
    d["mark"] = draw(st.sampled_from([0, 0x4000]))
    if draw(st.floats(0, 1)) < 0.1:
        d["ct_state"] = "ESTABLISHED"
    return d


def _trace(rs: Ruleset, host: HostContext, d: dict[str, Any], index: RulesetIndex | None, **kw: Any) -> Any:
    e = Engine(rs, host, options=WalkOptions(**kw))
    e.index = index
    pkt, origin = packet_from_dict(d)
    return e.trace(pkt, origin).to_json()


_HOST = kube_host()
_NO_HOST = build_host_context()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(text=rulesets(), pkts=st.lists(packets(), min_size=1, max_size=6), frag=st.booleans(), with_host=st.booleans())
def test_indexed_walk_equals_linear_walk(text: str, pkts: list[dict[str, Any]], frag: bool, with_host: bool) -> None:
    rs = parse_rules(text, "random.rules")
    host = _HOST if with_host else _NO_HOST
    for d in pkts:
        linear = _trace(rs, host, d, None)
        indexed = _trace(rs, host, d, RulesetIndex(min_rules=1, host_known=not host.empty))
        assert indexed == linear, d
        # --all-rules lists every evaluated rule: the index stays out of the way
        all_lin = _trace(rs, host, d, None, all_rules=True)
        all_ix = _trace(rs, host, d, RulesetIndex(min_rules=1, host_known=not host.empty), all_rules=True)
        assert all_ix == all_lin
    if frag:
        # fragments: port matches fail, -f matches; the index must not assume otherwise
        for d in pkts:
            lin_e = Engine(rs, host)
            lin_e.index = None
            ix_e = Engine(rs, host)
            ix_e.index = RulesetIndex(min_rules=1, host_known=not host.empty)
            p1, o1 = packet_from_dict(d)
            p2, o2 = packet_from_dict(d)
            p1.fragment = p2.fragment = True
            assert ix_e.trace(p2, o2).to_json() == lin_e.trace(p1, o1).to_json()


# ------------------------------------------------------------------ a generated kube-proxy node


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Ruleset, HostContext]:
    dump = generate(400, 3, seed=7)
    d = write_dir(dump, tmp_path_factory.mktemp("kube400"))
    rs = parse_rules(dump.text, "kube400.rules")
    host = build_host_context(
        routes_file=str(d / "routes.txt"), addrs_file=str(d / "addrs.txt"), sysctls=[str(d / "sysctl.txt")]
    )
    return dump, rs, host


def _kube_packets(dump: Any, n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for k in range(n):
        sp = rng.choice(dump.services)
        kind = k % 4
        if kind == 0:
            out.append({"proto": sp.proto, "src": "10.244.1.3", "sport": 40000, "dst": sp.cluster_ip,
                        "dport": sp.port, "iif": "cni0", "origin": "ingress"})  # fmt: skip
        elif kind == 1:
            nps = [s for s in dump.services if s.node_port]
            np_ = rng.choice(nps)
            out.append({"proto": np_.proto, "src": "203.0.113.7", "sport": 50000, "dst": "192.168.50.11",
                        "dport": np_.node_port, "iif": "eth0", "origin": "ingress"})  # fmt: skip
        elif kind == 2:
            out.append({"proto": "tcp", "src": "10.244.1.3", "sport": 40000, "dst": dump.unused_cluster_ip(rng),
                        "dport": 80, "iif": "cni0", "origin": "ingress"})  # fmt: skip
        else:
            out.append({"proto": sp.proto, "src": "192.168.50.11", "sport": 41000, "dst": sp.cluster_ip,
                        "dport": sp.port, "origin": "local"})  # fmt: skip
    return out


def test_kube_node_traces_are_identical_with_and_without_index(kube: tuple[Any, Ruleset, HostContext]) -> None:
    dump, rs, host = kube
    indexed = Engine(rs, host)
    linear = Engine(rs, host)
    linear.index = None
    assert indexed.index is not None
    for d in _kube_packets(dump, 120, seed=3):
        p1, o1 = packet_from_dict(d)
        p2, o2 = packet_from_dict(d)
        assert indexed.trace(p1, o1).to_json() == linear.trace(p2, o2).to_json(), d


def test_index_files_kube_services_by_destination(kube: tuple[Any, Ruleset, HostContext]) -> None:
    dump, rs, host = kube
    svc = rs.tables["nat"].chains["KUBE-SERVICES"]
    ix = ChainIndex(svc)
    st_ = ix.stats()
    # every ClusterIP / load-balancer rule is filed by destination; only the NodePort jump is left over
    assert st_["by_dst"] == len(svc.rules) - 1 and st_["fallback"] == 1
    nodeports = ChainIndex(rs.tables["nat"].chains["KUBE-NODEPORTS"])
    assert nodeports.stats()["by_port"] == len(rs.tables["nat"].chains["KUBE-NODEPORTS"].rules)
    sp = next(s for s in dump.services if s.endpoints)
    pkt, _ = packet_from_dict({"proto": sp.proto, "src": "10.244.1.3", "sport": 1, "dst": sp.cluster_ip,
                               "dport": sp.port, "iif": "cni0"})  # fmt: skip
    cands = ix.candidates(pkt)
    assert cands[-1] == len(svc.rules) - 1  # the NodePort jump is always a candidate
    assert all(svc.rules[i].text.startswith(f"-A KUBE-SERVICES -d {sp.cluster_ip}/32") for i in cands[:-1])
    assert len(cands) <= 4


def test_rule_key_stops_at_the_first_match_that_may_fork() -> None:
    text = """*filter
:INPUT ACCEPT [0:0]
-A INPUT -p tcp -m statistic --mode random --probability 0.50000000000 -m tcp --dport 80 -j DROP
-A INPUT -d 10.0.0.1/32 -m statistic --mode random --probability 0.50000000000 -j DROP
-A INPUT -m limit --limit 1/sec -d 10.0.0.2/32 -j DROP
-A INPUT -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 22 -j DROP
-A INPUT ! -d 10.0.0.3/32 -j DROP
-A INPUT -i eth+ -j DROP
COMMIT
"""
    rules = parse_rules(text).tables["filter"].chains["INPUT"].rules
    keys = [rule_key(r) for r in rules]
    assert (keys[0].kind, keys[0].proto) == ("proto", "tcp")  # not the port: statistic comes first
    assert keys[1].kind == "dst"  # -d is a basic match: evaluated before any extension
    assert keys[2].kind == "dst"
    assert (keys[3].kind, keys[3].lo) == ("port", 22)
    assert rule_key(rules[3], host_known=False).kind == "proto"  # addrtype is unknown without a host
    assert keys[4].kind == "any" and keys[5].kind == "any"


@pytest.mark.parametrize(
    "rule",
    [
        "-p tcp -m tcp --dport 53:453 -j DROP",
        "-p tcp -m tcp ! --dport 53:453 -j DROP",
        "-p tcp -m tcp --dport 80 -j DROP",
        "-p tcp -m tcp ! --dport 80 -j DROP",
        "! -d 10.96.0.0/12 -j DROP",
        "-d 10.96.0.0/12 -j DROP",
        "-d 0.0.0.0/1 -j DROP",
        "! -p tcp -j DROP",
        "-p udp -j DROP",
        "-p tcp -m multiport --dports 80,443 -j DROP",
        "-i cni+ -j DROP",
        "! -i eth+ -j DROP",
        "-f -j DROP",
        "-p tcp -m statistic --mode random --probability 0.50000000000 -m tcp --dport 80 -j DROP",
        "-m limit --limit 1/sec -j DROP",
        "-p tcp -m addrtype --dst-type LOCAL -m tcp --dport 80 -j DROP",
    ],
)
def test_each_rule_shape_alone(rule: str) -> None:
    """One rule among filler rules the index files elsewhere: every packet gets the linear verdict."""
    filler = [f"-A BIG -d 10.1.{k}.1/32 -p tcp -m tcp --dport 9 -j ACCEPT" for k in range(10)]
    text = "\n".join(
        ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":BIG - [0:0]",
         "-A FORWARD -j BIG", "-A INPUT -j BIG", *filler[:5], f"-A BIG {rule}", *filler[5:], "COMMIT", ""]
    )  # fmt: skip
    rs = parse_rules(text)
    for host in (_HOST, _NO_HOST):
        for proto, dport in (("tcp", 80), ("tcp", 443), ("tcp", 52), ("tcp", 9), ("udp", 80), ("icmp", None)):
            for dst, iif in (("8.8.8.8", "cni0"), ("10.96.0.10", "eth0"), ("192.168.50.11", "eth0")):
                d: dict[str, Any] = {"proto": proto, "src": "10.244.1.3", "dst": dst, "iif": iif}
                if dport is not None:
                    d.update(sport=1000, dport=dport)
                index = RulesetIndex(min_rules=1, host_known=not host.empty)
                assert _trace(rs, host, d, index) == _trace(rs, host, d, None), (rule, d)


def test_bundled_scenarios_with_every_chain_indexed() -> None:
    """Every flow of every scenario gives the same trace when every chain is indexed."""
    from nftrace.engine.packet import parse_flow

    for d in sorted(p for p in (ROOT / "rulesets").iterdir() if (p / "iptables.rules").is_file()):
        rs = parse_rules((d / "iptables.rules").read_text(), str(d / "iptables.rules"))
        host = build_host_context(
            routes_file=str(d / "routes.txt") if (d / "routes.txt").is_file() else None,
            addrs_file=str(d / "addrs.txt") if (d / "addrs.txt").is_file() else None,
            rules_file=str(d / "ip-rules.txt") if (d / "ip-rules.txt").is_file() else None,
            sysctls=[str(d / "sysctl.txt")] if (d / "sysctl.txt").is_file() else [],
        )
        ipsets = None
        if (d / "ipsets.txt").is_file():
            from nftrace.ruleset.ipsets import parse_ipsets

            ipsets = parse_ipsets((d / "ipsets.txt").read_text(), str(d / "ipsets.txt"))
        flows = [ln.split("#", 1)[0].strip() for ln in (d / "flows.txt").read_text().splitlines()]
        for flow in filter(None, flows):
            fd = parse_flow(flow)
            lin = Engine(rs, host, ipsets)
            lin.index = None
            ix = Engine(rs, host, ipsets)
            ix.index = RulesetIndex(min_rules=1)
            p1, o1 = packet_from_dict(fd)
            p2, o2 = packet_from_dict(fd)
            assert ix.trace(p1, o1).to_json() == lin.trace(p2, o2).to_json(), (d.name, flow)


def test_ipv6_chain() -> None:
    rules = [
        "-A BIG -d 2001:db8::10/128 -p tcp -m tcp --dport 80 -j DROP",
        "-A BIG -d 2001:db8::/64 -p udp -m udp --dport 53 -j DROP",
        "-A BIG ! -d 2001:db8::10/128 -p tcp -m tcp --dport 443 -j DROP",
        "-A BIG -d fd00::/8 -j DROP",
        "-A BIG -p tcp -m tcp --dport 1000:2000 -j DROP",
    ] + [f"-A BIG -d 2001:db8::{k:x}/128 -p tcp -m tcp --dport 8080 -j ACCEPT" for k in range(0x20, 0x40)]
    text = "\n".join(
        ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":BIG - [0:0]",
         "-A FORWARD -j BIG", *rules, "COMMIT", ""]
    )  # fmt: skip
    rs = parse_rules(text, "v6.rules", "ipv6")
    from nftrace.host.model import DEFAULT_IPV6_RULES, Link, Route
    from nftrace.host.parse import derive_routes

    links = [
        Link(index=1, name="lo", kind="loopback", addresses=["::1/128"]),
        Link(index=2, name="eth0", addresses=["2001:db8:1::1/64"], mac="02:00:00:00:00:01"),
        Link(index=3, name="eth1", addresses=["2001:db8::1/64"], mac="02:00:00:00:00:02"),
    ]
    host = HostContext(links=links, routes=derive_routes(links), empty=False,
                       sysctls={"net.ipv6.conf.all.forwarding": "1"})  # fmt: skip
    host.rules = list(DEFAULT_IPV6_RULES)
    host.routes.append(Route(dst="default", gateway="2001:db8:1::fe", oif="eth0", family="ipv6"))
    big_steps = 0
    for dst in ("2001:db8::10", "2001:db8::25", "2001:db8::99", "fd00::1", "2001:db9::1"):
        for proto, dport in (("tcp", 80), ("tcp", 443), ("tcp", 8080), ("tcp", 1500), ("udp", 53), ("icmp", None)):
            d: dict[str, Any] = {"proto": proto, "src": "2001:db8:1::5", "dst": dst, "iif": "eth0"}
            if dport is not None:
                d.update(sport=1000, dport=dport)
            indexed = _trace(rs, host, d, RulesetIndex(min_rules=1))
            assert indexed == _trace(rs, host, d, None), d
            big_steps += sum(s.get("chain") == "BIG" for b in indexed["branches"] for s in b["steps"])
    assert big_steps >= 10  # the packets were forwarded through the indexed chain
