"""Offline tests of the engine on the corners tests/test_kernel_gaps.py checks against the kernel:
which parsed specs enable conntrack, the per-backend table order of a hook, TTL expiry before
FORWARD, multicast group membership, NFQUEUE --queue-bypass, TPROXY, REDIRECT and MASQUERADE
without an address.  The expected outcomes are the kernel's (see that module for the traces)."""

from __future__ import annotations

from typing import Any

import pytest

from nftrace.engine.packet import packet_from_dict
from nftrace.engine.pipeline import HOOK_TABLES, Engine, ruleset_needs_conntrack
from nftrace.engine.walker import WalkOptions
from nftrace.host.model import HostContext, Link
from nftrace.host.parse import derive_routes
from nftrace.ruleset.parser import parse_rules
from tests.test_kernel_gaps import CT_VARIANTS, GAPS_RULES, GAPS_RULES_V6, ct_dump, gaps_host

# what the kernel did with each CT_VARIANTS ruleset (test_the_rules_that_enable_conntrack)
KERNEL_TRACKS = {
    "conntrack", "state", "connmark", "connbytes", "connlimit", "connlabel", "helper", "cluster", "CONNMARK",
    "CONNSECMARK", "CT zone", "CT helper", "DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP", "SYNPROXY",
}  # fmt: skip


def trace(
    rules: str, pkt: dict[str, Any], backend: str = "nft", family: str = "ipv4", max_branches: int = 256
) -> dict[str, Any]:
    engine = Engine(
        parse_rules(rules, "<t>", family=family),
        gaps_host(),
        backend=backend,
        options=WalkOptions(max_branches=max_branches),
    )
    p, origin = packet_from_dict(dict(pkt))
    return engine.trace(p, origin).to_json()


def udp(src: str, dst: str, dport: int, iif: str = "eth0", **kw: Any) -> dict[str, Any]:
    return {"origin": "ingress", "proto": "udp", "src": src, "dst": dst, "sport": 40000, "dport": dport,
            "iif": iif, **kw}  # fmt: skip


def tcp(src: str, dst: str, dport: int, iif: str = "eth0") -> dict[str, Any]:
    return {"origin": "ingress", "proto": "tcp", "src": src, "dst": dst, "sport": 40001, "dport": dport, "iif": iif}


def hops(branch: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for s in branch["steps"]:
        if s["kind"] in ("rule", "policy") and (not out or out[-1] != (s["hook"], s["table"])):
            out.append((s["hook"], s["table"]))
    return out


# ------------------------------------------------------------------ conntrack


@pytest.mark.parametrize(("name", "table", "chain", "rule"), CT_VARIANTS, ids=[v[0] for v in CT_VARIANTS])
def test_conntrack_is_enabled_by_the_specs_the_kernel_says(name: str, table: str, chain: str, rule: str) -> None:
    rs = parse_rules(ct_dump(table, chain, rule), "<t>")
    assert ruleset_needs_conntrack(rs) == (name in KERNEL_TRACKS)
    doc = trace(ct_dump(table, chain, rule), udp("192.168.50.1", "192.168.50.10", 53))
    for b in doc["branches"]:  # -m cluster forks (its hash is unknown)
        assert (("PREROUTING", "nat") in hops(b)) == (name in KERNEL_TRACKS)


def test_the_rule_text_is_not_consulted() -> None:
    rules = '*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m comment --comment "-m state -j DNAT" -j ACCEPT\nCOMMIT\n'
    assert not ruleset_needs_conntrack(parse_rules(rules, "<t>"))


def test_a_conntrack_user_in_an_unreachable_chain_still_counts() -> None:
    rules = "*filter\n:INPUT ACCEPT [0:0]\n:UNUSED - [0:0]\n-A UNUSED -m state --state NEW -j ACCEPT\nCOMMIT\n"
    assert ruleset_needs_conntrack(parse_rules(rules, "<t>"))


def test_ipv6_specs_count_too() -> None:
    rules = "*raw\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p udp -j CT --notrack\nCOMMIT\n"
    assert not ruleset_needs_conntrack(parse_rules(rules, "<t>", family="ipv6"))
    rules = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m conntrack --ctstate NEW -j ACCEPT\nCOMMIT\n"
    assert ruleset_needs_conntrack(parse_rules(rules, "<t>", family="ipv6"))


# ------------------------------------------------------------------ HOOK_TABLES


def test_hook_tables_are_data_per_backend() -> None:
    assert set(HOOK_TABLES) == {"nft", "legacy"}
    assert HOOK_TABLES["legacy"]["INPUT"] == ("mangle", "filter", "security", "nat")
    assert HOOK_TABLES["nft"]["INPUT"] == ("mangle", "filter", "nat", "security")
    for hook in ("PREROUTING", "FORWARD", "OUTPUT", "POSTROUTING"):
        assert HOOK_TABLES["nft"][hook] == HOOK_TABLES["legacy"][hook]


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_input_runs_the_tables_in_the_backends_order(backend: str) -> None:
    (b,) = trace(GAPS_RULES, udp("192.168.50.7", "192.168.50.10", 55), backend=backend)["branches"]
    got = [t for h, t in hops(b) if h == "INPUT"]
    assert got == [t for t in HOOK_TABLES[backend]["INPUT"] if t in got]
    assert got.index("nat") < got.index("security") if backend == "nft" else got.index("nat") > got.index("security")


# ------------------------------------------------------------------ TTL


@pytest.mark.parametrize("ttl", [0, 1])
def test_ttl_expiry_drops_after_prerouting(ttl: int) -> None:
    (b,) = trace(GAPS_RULES, udp("192.168.50.7", "10.244.2.6", 53, ttl=ttl))["branches"]
    assert {h for h, _ in hops(b)} == {"PREROUTING"}
    assert b["probability"] == 1.0 and b["result"]["at"] == {"stage": "forward", "reason": "TTL exceeded"}


def test_a_ttl_target_in_prerouting_counts() -> None:
    (b,) = trace(GAPS_RULES, udp("192.168.50.2", "10.244.2.6", 53, ttl=1))["branches"]
    assert b["result"]["disposition"] == "forwarded"


# ------------------------------------------------------------------ multicast


def test_a_multicast_group_nobody_is_known_to_have_joined_forks() -> None:
    doc = trace(GAPS_RULES, udp("192.168.50.7", "224.0.0.251", 5353))
    assert [b["probability"] for b in doc["branches"]] == [None, None]
    by = {b["result"]["disposition"]: b for b in doc["branches"]}
    assert set(by) == {"local", "dropped"}
    assert any("assumed joined" in c for c in by["local"]["conditions"])
    assert any("assumed NOT joined" in c for c in by["dropped"]["conditions"])
    assert by["dropped"]["result"]["at"]["stage"] == "routing"
    assert {h for h, _ in hops(by["dropped"])} == {"PREROUTING"}
    assert ("INPUT", "filter") in hops(by["local"])
    assert any("cannot decide offline" in w for w in doc["warnings"])


@pytest.mark.parametrize(
    ("dst", "family"),
    [("224.0.0.1", "ipv4"), ("ff02::1", "ipv6"), ("ff02::1:ff00:10", "ipv6")],
)
def test_groups_every_device_is_in_are_certain(dst: str, family: str) -> None:
    src = "192.168.50.7" if family == "ipv4" else "2001:db8:50::7"
    rules = GAPS_RULES if family == "ipv4" else GAPS_RULES_V6
    (b,) = trace(rules, udp(src, dst, 5353), family=family)["branches"]
    assert b["probability"] == 1.0 and b["result"]["disposition"] == "local" and not b["conditions"]


def test_a_solicited_node_group_of_another_address_forks() -> None:
    doc = trace(GAPS_RULES_V6, udp("2001:db8:50::7", "ff02::1:ff00:11", 5353), family="ipv6")
    assert sorted(b["result"]["disposition"] for b in doc["branches"]) == ["dropped", "local"]


def test_multicast_fork_respects_the_branch_limit() -> None:
    doc = trace(GAPS_RULES, udp("192.168.50.7", "224.0.0.251", 5353), max_branches=0)
    (b,) = doc["branches"]
    assert b["probability"] is None and b["result"]["disposition"] == "local"
    assert any("branch limit reached" in w for w in doc["warnings"])


def test_multicast_on_an_unknown_host_link_forks() -> None:
    links = [Link(1, "lo", kind="loopback", addresses=["127.0.0.1/8"]), Link(2, "eth0", addresses=["10.0.0.1/24"])]
    host = HostContext(links=links, routes=derive_routes(links), empty=False)
    rs = parse_rules("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n", "<t>")
    p, origin = packet_from_dict(udp("10.0.0.7", "239.1.2.3", 5000))
    doc = Engine(rs, host).trace(p, origin).to_json()
    assert sorted(b["result"]["disposition"] for b in doc["branches"]) == ["dropped", "local"]


# ------------------------------------------------------------------ NFQUEUE, TPROXY


def test_nfqueue_without_bypass_stays_one_queued_branch() -> None:
    doc = trace(GAPS_RULES, udp("192.168.50.7", "192.168.50.10", 7001))
    assert [b["result"]["disposition"] for b in doc["branches"]] == ["queued"]


def test_nfqueue_bypass_forks_into_queued_and_passed_on() -> None:
    doc = trace(GAPS_RULES, udp("192.168.50.7", "192.168.50.10", 7002))
    by = {b["result"]["disposition"]: b for b in doc["branches"]}
    assert set(by) == {"queued", "local"} and all(b["probability"] is None for b in doc["branches"])
    passed = by["local"]
    rules = [(s["table"], s["chain"], s["rule"], s["verdict"]) for s in passed["steps"] if s["kind"] == "rule"]
    # the QUEUE rule is the last of mangle PREROUTING: the MARK rule after it is skipped
    assert ("mangle", "PREROUTING", 2, "QUEUE") in rules and not any(
        r[:3] == ("mangle", "PREROUTING", 4) for r in rules
    )
    assert not any(s["kind"] == "policy" and s["table"] == "mangle" for s in passed["steps"])
    assert any("NO program listens" in c and "--queue-bypass" in c for c in passed["conditions"])


def test_tproxy_forks_on_the_transparent_socket() -> None:
    doc = trace(GAPS_RULES, tcp("192.168.50.7", "8.8.8.8", 7003))
    by = {b["result"]["verdict"]: b for b in doc["branches"]}
    assert set(by) == {"ACCEPT", "DROP"} and all(b["probability"] is None for b in doc["branches"])
    dropped, accepted = by["DROP"], by["ACCEPT"]
    assert dropped["steps"][-1]["target"] == "TPROXY" and dropped["steps"][-1]["verdict"] == "DROP"
    assert any("NO transparent socket" in c for c in dropped["conditions"])
    (step,) = [s for s in accepted["steps"] if s.get("target") == "TPROXY"]
    assert step["verdict"] == "ACCEPT" and step["set"] == {"mark": 1}
    # the mark routes it by table 100 (local default): delivered locally
    assert accepted["result"]["disposition"] == "local"


# ------------------------------------------------------------------ REDIRECT, MASQUERADE


def test_redirect_without_an_address_drops_at_its_rule() -> None:
    (b,) = trace(GAPS_RULES, tcp("10.9.9.9", "10.244.2.6", 80, iif="eth2"))["branches"]
    assert b["result"]["verdict"] == "DROP"
    assert b["result"]["at"] == {"hook": "PREROUTING", "table": "nat", "nat": "REDIRECT", "chain": "PREROUTING",
                                 "rule": 2}  # fmt: skip
    last = [s for s in b["steps"] if s["kind"] == "rule"][-1]
    assert (last["target"], last["verdict"]) == ("REDIRECT", "DROP")


def test_masquerade_without_any_usable_address_drops_at_its_rule() -> None:
    links = [Link(1, "lo", kind="loopback", addresses=["127.0.0.1/8"]), Link(2, "eth0"), Link(3, "eth1")]
    host = HostContext(links=links, routes=derive_routes(links), empty=False)
    host.routes += parse_routes_text("10.0.0.0/8 dev eth1\n192.168.0.0/16 dev eth0\n")
    host.sysctls = {"net.ipv4.ip_forward": "1"}
    rules = "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -o eth1 -j MASQUERADE\nCOMMIT\n"
    p, origin = packet_from_dict(udp("192.168.1.7", "10.1.2.3", 53))
    (b,) = Engine(parse_rules(rules, "<t>"), host).trace(p, origin).to_json()["branches"]
    assert b["result"]["verdict"] == "DROP" and b["result"]["at"]["rule"] == 1
    last = [s for s in b["steps"] if s["kind"] == "rule"][-1]
    assert (last["target"], last["verdict"]) == ("MASQUERADE", "DROP")


def parse_routes_text(text: str) -> list[Any]:
    from nftrace.host.parse import parse_routes

    return list(parse_routes(text, "<routes>"))
