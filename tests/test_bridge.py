"""Bridged IPv4 traffic through br_netfilter (offline engine checks; tests/test_bridge_kernel.py
proves the same behaviour against the kernel)."""

from __future__ import annotations

from typing import Any

import pytest

from nftrace.engine.packet import packet_from_dict
from nftrace.engine.pipeline import Engine
from nftrace.host.model import HostContext, Link
from nftrace.host.parse import derive_routes
from nftrace.ruleset.parser import parse_rules

RULES = """*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 10.50.0.12/32 -p udp -m udp --dport 5000 -j DNAT --to-destination 10.50.0.13
-A PREROUTING -d 10.50.0.12/32 -p udp -m udp --dport 5001 -j DNAT --to-destination 10.50.0.1
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
-A FORWARD -i br0 -o br0 -m ttl --ttl-eq 64 -j ACCEPT
-A FORWARD -m physdev --physdev-in veth1 -j ACCEPT
COMMIT
"""


def host(sysctls: dict[str, str]) -> HostContext:
    links = [
        Link(index=1, name="lo", kind="loopback", addresses=["127.0.0.1/8"]),
        Link(index=2, name="br0", kind="bridge", addresses=["10.50.0.1/24"]),
        Link(index=3, name="veth1", kind="veth", master="br0"),
        Link(index=4, name="veth2", kind="veth", master="br0"),
        Link(index=5, name="eth0", kind="veth", addresses=["192.168.9.1/24"]),
    ]
    return HostContext(links=links, routes=derive_routes(links), sysctls=sysctls, empty=False)


def trace(sysctls: dict[str, str], backend: str = "nft", **pkt: Any) -> dict[str, Any]:
    d = {"src": "10.50.0.11", "dst": "10.50.0.12", "proto": "icmp", "iif": "veth1", **pkt}
    p, origin = packet_from_dict(d)
    return Engine(parse_rules(RULES, "t.rules"), host(sysctls), backend=backend).trace(p, origin).to_json()


def route_steps(b: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in b["steps"] if s["kind"] == "route"]


def rules_hit(b: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(s["table"], s["chain"], s["rule"]) for s in b["steps"] if s["kind"] == "rule"]


ON = {"net.bridge.bridge-nf-call-iptables": "1", "net.ipv4.ip_forward": "0", "net.ipv4.conf.all.rp_filter": "1"}


@pytest.mark.parametrize("iif", ["veth1", "br0"])
def test_bridged_walks_forward_without_routing(iif: str) -> None:
    t = trace(ON, iif=iif, ttl=64)
    (b,) = t["branches"]
    (r,) = route_steps(b)
    assert r["bridged"] is True and r["type"] == "bridged" and r["bridge"] == "br0"
    assert r["sysctl"] == "net.bridge.bridge-nf-call-iptables=1"
    # ip_forward=0 does not stop it, TTL 64 is not decremented before FORWARD, -i/-o are the bridge
    assert rules_hit(b) == [("filter", "FORWARD", 1)]
    assert b["result"]["disposition"] == "forwarded" and b["result"]["oif"] == "br0"


def test_spoofed_source_ttl1_still_bridged() -> None:
    (b,) = trace(ON, src="10.99.0.5", ttl=1)["branches"]
    assert b["result"]["disposition"] == "forwarded"
    assert rules_hit(b) == [("filter", "FORWARD", 2)]  # TTL 1 kept; physdev-in veth1 matches


def test_nf_call_off_iptables_blind() -> None:
    (b,) = trace({**ON, "net.bridge.bridge-nf-call-iptables": "0"})["branches"]
    assert rules_hit(b) == []
    assert b["result"]["verdict"] == "ACCEPT" and b["result"]["disposition"] == "forwarded"
    assert route_steps(b)[0]["sysctl"] == "net.bridge.bridge-nf-call-iptables=0"


def test_nf_call_unknown_forks() -> None:
    t = trace({"net.ipv4.ip_forward": "0"})
    assert len(t["branches"]) == 2
    assert all(b["probability"] is None and b["conditions"] for b in t["branches"])
    assert {bool(rules_hit(b)) for b in t["branches"]} == {True, False}
    assert any("bridge-nf-call-iptables" in c for b in t["branches"] for c in b["conditions"])


def test_to_bridge_address_is_local() -> None:
    (b,) = trace(ON, dst="10.50.0.1")["branches"]
    assert b["result"]["disposition"] == "local"
    assert not route_steps(b)[0].get("bridged")


def test_other_subnet_is_routed() -> None:
    (b,) = trace({**ON, "net.ipv4.ip_forward": "1"}, dst="192.168.9.7", ttl=64)["branches"]
    (r,) = route_steps(b)
    assert not r.get("bridged") and r["oif"] == "eth0"
    assert b["result"]["disposition"] == "dropped"  # -o eth0 and TTL 63: FORWARD policy DROP


def test_broadcast_not_bridged() -> None:
    (b,) = trace(ON, dst="10.50.0.255")["branches"]
    assert b["result"]["disposition"] == "local"


@pytest.mark.parametrize(("fwd", "disp"), [("0", "dropped"), ("1", "forwarded")])
def test_dnat_on_bridge(fwd: str, disp: str) -> None:
    (b,) = trace({**ON, "net.ipv4.ip_forward": fwd}, proto="udp", sport=4000, dport=5000)["branches"]
    assert b["result"]["disposition"] == disp
    assert b["result"]["packet"]["dst"] == "10.50.0.13"
    assert route_steps(b)[0]["bridged"] is True


def test_dnat_to_local_leaves_bridge() -> None:
    (b,) = trace(ON, proto="udp", sport=4000, dport=5001)["branches"]
    assert b["result"]["disposition"] == "local"
