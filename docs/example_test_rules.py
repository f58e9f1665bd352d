"""Example: test your own rule dumps with pytest and nftrace.testing.

Copy this file next to your dumps, point RULES at them, and run `pytest`.
Here it checks the kube-proxy node of nftrace's own rulesets/ directory
(a dump plus the host's routes and addresses), so it runs as it is:

    python3 -m pytest docs/example_test_rules.py
"""

from pathlib import Path

import pytest

from nftrace.testing import assert_path, assert_same_behaviour, load, trace

RULES = Path(__file__).resolve().parent.parent / "rulesets" / "kube-node"  # a dump, a directory or a snapshot
node = load(RULES)


def test_pods_reach_kube_dns():
    # every branch (kube-proxy balances over two endpoints) must be forwarded to one of them
    assert_path(
        node,
        "udp 10.244.1.3:5353 > 10.96.0.10:53 iif cni0",
        verdict="ACCEPT",
        disposition="forwarded",
        via_chain="KUBE-SVC-*",
        dnat_to={"10.244.0.2:53", "10.244.1.2:53"},
        snat_to="10.244.1.3",  # the pod's address is kept
    )


def test_nodeport_keeps_the_client_address():
    assert_path(
        node,
        "tcp 203.0.113.7:50000 > 192.168.50.11:30080 iif eth0",
        disposition="forwarded",
        oif="cni0",
        dnat_to="10.244.1.5:8080",
        snat_to="203.0.113.7",
        not_via_chain="KUBE-MARK-MASQ",
    )


def test_a_service_without_endpoints_is_rejected():
    tr = assert_path(
        node,
        {"origin": "ingress", "proto": "tcp", "src": "10.244.1.3", "dst": "10.96.45.100", "dport": 80, "iif": "cni0"},
        verdict="DROP",
        dropped_at="filter KUBE-SERVICES 1",
    )
    assert "REJECT" in tr.rendered


def test_the_trace_is_what_the_cli_prints():
    tr = trace(node, "tcp 10.244.1.3:40000 > 10.96.0.1:443 iif cni0")
    assert tr.doc["schema"] == "nftrace.trace/1"
    assert tr.verdict == "ACCEPT" and tr.disposition == "forwarded"
    assert tr.final["dst"] == "192.168.50.10" and tr.final["dport"] == 6443
    assert "nat KUBE-SERVICES" in tr.chains_visited


def test_a_comment_change_keeps_behaviour():
    text = (RULES / "iptables.rules").read_text()
    edited = load(text.replace('"kubernetes service portals"', '"service portals (edited)"'))
    assert_same_behaviour(node, edited, packets=["tcp 10.244.1.3:40000 > 10.96.0.1:443 iif cni0"])


def test_a_broken_rule_is_caught():
    text = (RULES / "iptables.rules").read_text()
    broken = load(text.replace("--dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU", "--dport 5353 -j KUBE-SVC-TCOU7JCQXEZGVUNU"))
    with pytest.raises(AssertionError, match="treated differently"):
        assert_same_behaviour(node, broken)  # probe packets generated from both rulesets
