"""Engine semantics on small hand-written rulesets (each expectation derived by hand from
the kernel's rules; the randomised kernel comparison lives in test_kernel_rulesets.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nftrace.engine.packet import packet_from_dict, parse_flow
from nftrace.engine.pipeline import Engine
from nftrace.engine.walker import WalkOptions
from nftrace.host.model import HostContext, Link
from nftrace.host.parse import derive_routes
from nftrace.ruleset.ext.misc import kernel_probability
from nftrace.ruleset.parser import parse_rules

ROOT = Path(__file__).resolve().parent.parent


def host() -> HostContext:
    links = [
        Link(index=1, name="lo", kind="loopback", addresses=["127.0.0.1/8"]),
        Link(index=2, name="eth0", addresses=["192.168.50.11/24"], mac="02:00:00:00:00:01"),
        Link(index=3, name="eth1", addresses=["10.1.0.1/24"], mac="02:00:00:00:00:02"),
    ]
    ctx = HostContext(links=links, routes=derive_routes(links), sysctls={"net.ipv4.ip_forward": "1"}, empty=False)
    from nftrace.host.model import DEFAULT_IPV4_RULES, Route

    ctx.rules = list(DEFAULT_IPV4_RULES)
    ctx.routes.append(Route(table="main", dst="default", gateway="192.168.50.1", oif="eth0"))
    return ctx


def trace(rules: str, flow: str, **kw: object) -> dict:  # type: ignore[type-arg]
    rs = parse_rules(rules, "t.rules")
    e = Engine(rs, host(), **kw)  # type: ignore[arg-type]
    pkt, origin = packet_from_dict(parse_flow(flow))
    return e.trace(pkt, origin).to_json()


def hops(branch: dict) -> list[tuple]:  # type: ignore[type-arg]
    return [
        (s["table"], s["chain"], s.get("rule"), s["verdict"])
        for s in branch["steps"]
        if s["kind"] in ("rule", "policy") and s.get("matched", True)
    ]


def test_goto_returns_to_the_caller_of_the_chain_that_jumped() -> None:
    rules = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:A - [0:0]
:B - [0:0]
-A FORWARD -j A
-A FORWARD -p udp -j ACCEPT
-A A -g B
-A A -j DROP
-A B -p tcp -j DROP
COMMIT
"""
    doc = trace(rules, "udp 10.1.0.5:1000 > 192.168.50.99:53 iif eth1")
    (b,) = doc["branches"]
    # A's rule 2 (DROP) is never reached: B's end returns to FORWARD, after the jump to A
    assert hops(b) == [
        ("filter", "FORWARD", 1, "JUMP"),
        ("filter", "A", 1, "GOTO"),
        ("filter", "FORWARD", 2, "ACCEPT"),
    ]
    assert b["result"]["disposition"] == "forwarded" and b["result"]["oif"] == "eth0"


def test_return_in_builtin_chain_applies_policy() -> None:
    rules = "*filter\n:INPUT DROP [0:0]\n-A INPUT -p tcp -j RETURN\n-A INPUT -j ACCEPT\nCOMMIT\n"
    doc = trace(rules, "tcp 10.1.0.5:1000 > 10.1.0.1:22 iif eth1")
    (b,) = doc["branches"]
    assert hops(b) == [("filter", "INPUT", 1, "RETURN"), ("filter", "INPUT", None, "DROP")]
    assert b["result"]["verdict"] == "DROP" and b["result"]["at"]["policy"] is True


NAT = """*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 192.168.50.11/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.1.0.7:8080
-A POSTROUTING -o eth1 -j MASQUERADE
COMMIT
*filter
:FORWARD DROP [0:0]
-A FORWARD -m conntrack --ctstate DNAT --ctorigdst 192.168.50.11 -j ACCEPT
COMMIT
*raw
:PREROUTING ACCEPT [0:0]
-A PREROUTING -p tcp --dport 81 -j CT --notrack
COMMIT
"""


def test_dnat_then_forward_sees_ctstate_dnat_and_masquerade_picks_oif_address() -> None:
    doc = trace(NAT, "tcp 203.0.113.9:5000 > 192.168.50.11:80 iif eth0")
    (b,) = doc["branches"]
    nat = [s for s in b["steps"] if s["kind"] == "nat"]
    assert [(s["type"], s["before"], s["after"]) for s in nat] == [
        ("DNAT", "192.168.50.11:80", "10.1.0.7:8080"),
        ("MASQUERADE", "203.0.113.9:5000", "10.1.0.1:5000"),
    ]
    assert ("filter", "FORWARD", 1, "ACCEPT") in hops(b)
    assert b["result"]["packet"] == {"src": "10.1.0.1", "dst": "10.1.0.7", "sport": 5000, "dport": 8080}


def test_nat_only_for_new_and_not_for_untracked() -> None:
    est = trace(NAT, "tcp 203.0.113.9:5000 > 192.168.50.11:80 iif eth0 state ESTABLISHED")
    assert not any(s["kind"] == "nat" for s in est["branches"][0]["steps"])
    assert any("nat table is not consulted" in w for w in est["warnings"])
    untracked = trace(NAT, "tcp 203.0.113.9:5000 > 192.168.50.11:81 iif eth0")
    (b,) = untracked["branches"]
    assert not any(s["kind"] == "rule" and s["table"] == "nat" for s in b["steps"])
    assert b["result"]["disposition"] == "local"


def test_statistic_cascade_is_exact_with_kernel_quantisation() -> None:
    text = (ROOT / "rulesets/kube-node/iptables.rules").read_text()
    rs = parse_rules(text, "kube")
    from nftrace.host.parse import build_host_context

    d = ROOT / "rulesets/kube-node"
    ctx = build_host_context(routes_file=str(d / "routes.txt"), addrs_file=str(d / "addrs.txt"))
    e = Engine(rs, ctx)
    pkt, origin = packet_from_dict(parse_flow("tcp 10.244.1.3:40200 > 10.96.120.15:80 iif cni0"))
    doc = e.trace(pkt, origin).to_json()
    probs = sorted(b["probability"] for b in doc["branches"])
    assert len(probs) == 3
    assert abs(sum(probs) - 1.0) < 1e-9
    p1 = kernel_probability(0.33333333349)
    assert p1 == round(0.33333333349 * 2**31) / 2**31
    expected = sorted([p1, (1 - p1) * 0.5, (1 - p1) * 0.5])
    assert probs == pytest.approx(expected, abs=1e-12)


def test_unknown_matches_fork_and_fanout_is_bounded() -> None:
    lines = [f"-A INPUT -p tcp -m limit --limit {i + 1}/sec -j LOG" for i in range(12)]
    rules = "*filter\n:INPUT ACCEPT [0:0]\n" + "\n".join(lines) + "\nCOMMIT\n"
    rs = parse_rules(rules, "t")
    e = Engine(rs, host(), options=WalkOptions(max_branches=16))
    pkt, origin = packet_from_dict(parse_flow("tcp 10.1.0.5:1000 > 10.1.0.1:22 iif eth1"))
    doc = e.trace(pkt, origin).to_json()
    assert len(doc["branches"]) == 17
    assert all(b["probability"] is None for b in doc["branches"])
    assert any("branch limit reached" in w for w in doc["warnings"])
    assert doc["warnings"][0].startswith("this trace met matches nftrace cannot decide")


def test_negated_iif_matches_on_output_hook_on_both_backends() -> None:
    # no input device on OUTPUT: the name compared is empty, so `! -i eth0` holds
    # (kernel-checked: corpus ipt-save-filter.rules, `-A block ! -i ppp0 ...` from OUTPUT)
    rules = "*filter\n:OUTPUT ACCEPT [0:0]\n:X - [0:0]\n-A OUTPUT -j X\n-A X ! -i eth0 -j DROP\nCOMMIT\n"
    for backend in ("nft", "legacy"):
        doc = trace(rules, "udp 10.1.0.1:1000 > 10.1.0.9:53 local", backend=backend)
        assert doc["branches"][0]["result"]["verdict"] == "DROP"


def test_local_packet_to_local_address_loops_back_without_nat_again() -> None:
    rules = """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -j ACCEPT
-A OUTPUT -p udp -j DNAT --to-destination 10.1.0.1:99
COMMIT
"""
    doc = trace(rules, "udp 10.1.0.1:1000 > 192.168.50.11:53 local")
    (b,) = doc["branches"]
    kinds = [s["kind"] for s in b["steps"]]
    assert "loopback" in kinds
    assert b["result"]["disposition"] == "local"
    assert b["result"]["packet"]["dst"] == "10.1.0.1" and b["result"]["packet"]["dport"] == 99
    # nat PREROUTING (rule 1 would ACCEPT) is not consulted again on the loopback re-entry
    after = b["steps"][kinds.index("loopback") :]
    assert not any(s["kind"] == "rule" and s["table"] == "nat" for s in after)
    assert any(s["kind"] == "rule" and s["table"] == "nat" and s["chain"] == "OUTPUT" for s in b["steps"])


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nftrace", *args], input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def test_cli_json_contract_and_exit_status() -> None:
    p = run_cli(
        "explain", "--rules", "rulesets/kube-node", "udp 10.244.1.3:5353 > 10.96.0.10:53 iif cni0", "-f", "json"
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["schema"] == "nftrace.trace/1" and doc["origin"] == "ingress"
    assert set(doc["packet"]) >= {"family", "proto", "src", "dst", "sport", "dport", "iif", "oif", "mark", "ct_state"}
    assert abs(sum(b["probability"] for b in doc["branches"]) - 1) < 1e-9
    for b in doc["branches"]:
        assert set(b["result"]) >= {"verdict", "disposition", "oif", "at", "packet"}


@pytest.mark.parametrize(
    "args,needle",
    [
        (["explain", "--rules", "nope.rules", "tcp 1.2.3.4:5 > 6.7.8.9:80 iif eth0"], "nope.rules: cannot read"),
        (["explain", "--rules", "rulesets/kube-node", "tcp 1.2.3.4:5 > 6.7.8.999:80 iif cni0"], "not an IP address"),
        (
            ["explain", "--rules", "rulesets/kube-node", "tcp 1.2.3.4:5 > 6.7.8.9:80 iif nosuch0"],
            "unknown input interface",
        ),
        (["explain", "--rules", "rulesets/kube-node", "--bogus"], "unrecognized arguments"),
        (["explain", "--rules", "rulesets/kube-node", "tcp [1::1]:5 > [2::2]:80 iif cni0"], "ipv6"),
    ],
)
def test_cli_errors_are_one_line_exit_2(args: list[str], needle: str) -> None:
    p = run_cli(*args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and needle in p.stderr and "Traceback" not in p.stderr


def test_cli_batch_one_line_per_input_with_errors_inline() -> None:
    lines = [
        {
            "origin": "ingress",
            "proto": "udp",
            "src": "10.244.1.3",
            "dst": "10.96.0.10",
            "sport": 1,
            "dport": 53,
            "iif": "cni0",
        },
        {
            "origin": "ingress",
            "proto": "udp",
            "src": "bad",
            "dst": "10.96.0.10",
            "sport": 1,
            "dport": 53,
            "iif": "cni0",
        },
        {"origin": "local", "proto": "tcp", "src": "192.168.50.11", "dst": "10.96.0.1", "sport": 2, "dport": 443},
    ]
    batch = ROOT / ".pytest-batch.jsonl"
    batch.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    try:
        p = run_cli("explain", "--rules", "rulesets/kube-node", "--batch", str(batch))
    finally:
        batch.unlink()
    assert p.returncode == 0, p.stderr
    out = [json.loads(x) for x in p.stdout.splitlines()]
    assert len(out) == 3
    assert "branches" in out[0] and "error" in out[1] and out[2]["origin"] == "local"
    assert all(o["schema"] == "nftrace.trace/1" for o in out)
