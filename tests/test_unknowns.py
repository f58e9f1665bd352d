"""Honest unknowns: a trace that met something nftrace cannot decide offline says so at the top of
its text output (the first line starts with UNCERTAIN) and in `warnings`; each such branch has
`probability: null` and its assumption in `conditions`; its verdict line reads "if the conditions
hold"; a trace that met nothing undecidable carries none of this.  (Which extensions are unknown is
the registry's business; these are the ones users meet most.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nftrace.engine.packet import packet_from_dict
from nftrace.engine.pipeline import Engine
from nftrace.engine.walker import WalkOptions
from nftrace.present.text import render_trace
from nftrace.ruleset.ipsets import parse_ipsets
from nftrace.ruleset.parser import parse_rules
from tests.test_fuzz_common import gen_host

ROOT = Path(__file__).resolve().parents[1]

INGRESS = {"origin": "ingress", "proto": "tcp", "src": "192.168.1.7", "dst": "10.0.0.1", "sport": 40000,
           "dport": 22, "iif": "eth1"}  # fmt: skip
LOCAL = {"origin": "local", "proto": "tcp", "src": "10.0.0.1", "dst": "8.8.8.8", "sport": 40000, "dport": 443}
FORWARD = {**INGRESS, "dst": "8.8.8.8", "dport": 443}


def trace(
    rules: str, pkt: dict[str, Any], *, host: bool = True, ipsets: str | None = None, max_branches: int = 64
) -> tuple[dict[str, Any], str]:
    rs = parse_rules(rules, "<test>")
    sets = parse_ipsets(ipsets, "<ipsets>") if ipsets is not None else None
    engine = Engine(rs, gen_host(not host), sets, options=WalkOptions(max_branches=max_branches))
    p, origin = packet_from_dict(dict(pkt))
    doc = engine.trace(p, origin).to_json()
    return doc, render_trace(doc)


def assert_uncertain(doc: dict[str, Any], text: str, *about: str) -> None:
    unknown = [b for b in doc["branches"] if b["probability"] is None]
    assert unknown, doc["branches"]
    assert text.split("\n", 1)[0].startswith("UNCERTAIN"), text
    assert any("cannot decide offline" in w for w in doc["warnings"]), doc["warnings"]
    for b in unknown:
        assert b["conditions"], b
        for word in about:
            assert any(word in c for c in b["conditions"]), (word, b["conditions"])
    verdicts = [ln for ln in text.splitlines() if ln.startswith("  => ")]
    assert len(verdicts) == len(doc["branches"])
    # no verdict of an unknown branch reads as certain
    uncertain_verdicts = [v for v in verdicts if "if the conditions hold" in v]
    assert len(uncertain_verdicts) == len(unknown), verdicts


def assert_certain(doc: dict[str, Any], text: str) -> None:
    assert all(b["probability"] is not None for b in doc["branches"]), doc["branches"]
    assert abs(sum(b["probability"] for b in doc["branches"]) - 1.0) < 1e-9
    assert not text.startswith("UNCERTAIN") and "UNCERTAIN" not in text
    assert "if the conditions hold" not in text
    assert not any("cannot decide offline" in w for w in doc["warnings"])


def filter_rules(chain: str, rule: str) -> str:
    return f"*filter\n:{chain} ACCEPT [0:0]\n-A {chain} {rule}\nCOMMIT\n"


@pytest.mark.parametrize(
    "chain,rule,pkt,about",
    [
        ("INPUT", "-p tcp -m limit --limit 1/sec -j DROP", INGRESS, ["-m limit", "assumed"]),
        ("INPUT", "-m recent --rcheck --seconds 60 --name ssh -j DROP", INGRESS, ["-m recent"]),
        ("INPUT", '-m string --string "GET /" --algo bm -j DROP', INGRESS, ["-m string", "payload"]),
        ("FORWARD", "-m set --match-set blocked dst -j DROP", FORWARD, ["-m set", "--ipsets"]),
        ("OUTPUT", "-m owner --uid-owner 1000 -j DROP", LOCAL, ["-m owner", "--uid"]),
        ("OUTPUT", "-m cgroup --cgroup 1 -j DROP", LOCAL, ["-m cgroup"]),
        ("INPUT", "-m hashlimit --hashlimit-upto 1/sec --hashlimit-name h -j DROP", INGRESS, ["hashlimit"]),
        ("INPUT", "-m connlimit --connlimit-above 2 -j DROP", INGRESS, ["connlimit"]),
    ],
)
def test_undecidable_matches_fork_into_assumed_branches(chain: str, rule: str, pkt: dict[str, Any], about: list[str]) -> None:  # fmt: skip
    doc, text = trace(filter_rules(chain, rule), pkt)
    assert_uncertain(doc, text, *about)
    # both assumptions are explored: one branch dropped by the rule, one not
    assert {b["result"]["verdict"] for b in doc["branches"]} == {"DROP", "ACCEPT"}


def test_set_owner_and_addrtype_are_certain_once_their_context_is_given() -> None:
    doc, text = trace(filter_rules("FORWARD", "-m set --match-set blocked dst -j DROP"), FORWARD,
                      ipsets="create blocked hash:ip family inet\nadd blocked 8.8.8.8\n")  # fmt: skip
    assert_certain(doc, text)
    assert doc["branches"][0]["result"]["verdict"] == "DROP"
    doc, text = trace(filter_rules("OUTPUT", "-m owner --uid-owner 1000 -j DROP"), {**LOCAL, "uid": 1000})
    assert_certain(doc, text)
    assert doc["branches"][0]["result"]["verdict"] == "DROP"
    raw = "*raw\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j DROP\nCOMMIT\n"
    doc, text = trace(raw, INGRESS)
    assert_certain(doc, text)
    assert doc["branches"][0]["result"]["verdict"] == "DROP"


def test_addrtype_without_host_context() -> None:
    raw = "*raw\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j DROP\nCOMMIT\n"
    doc, text = trace(raw, INGRESS, host=False)
    assert_uncertain(doc, text, "addrtype", "--addrs")


@pytest.mark.parametrize("rule", ["-j NFQUEUE --queue-num 3", "-j QUEUE", "-j NFQUEUE --queue-balance 0:3"])
def test_queued_packets_are_decided_by_a_program(rule: str) -> None:
    doc, text = trace(filter_rules("INPUT", rule), INGRESS)
    assert_uncertain(doc, text, "userspace")
    assert [b["result"]["disposition"] for b in doc["branches"]] == ["queued"]
    assert "QUEUE: handed to a userspace program" in text


def test_tproxy_depends_on_a_listening_socket() -> None:
    rules = "*mangle\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp -j TPROXY --on-port 8080 --tproxy-mark 0x1/0x1\nCOMMIT\n"
    doc, text = trace(rules, FORWARD)
    assert_uncertain(doc, text, "TPROXY", "transparent socket")


def test_branch_limit_is_an_assumption_too() -> None:
    rules = "*filter\n:INPUT ACCEPT [0:0]\n" + "-A INPUT -m limit --limit 1/sec -j LOG\n" * 5 + "COMMIT\n"
    doc, text = trace(rules, INGRESS, max_branches=0)
    assert_uncertain(doc, text, "branch limit reached")
    assert len(doc["branches"]) == 1 and len(doc["branches"][0]["conditions"]) == 1


def test_chance_is_not_uncertainty() -> None:
    """statistic --mode random forks with known probabilities: certain, not UNCERTAIN."""
    rules = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m statistic --mode random --probability 0.25 -j DROP\nCOMMIT\n"
    doc, text = trace(rules, INGRESS)
    assert_certain(doc, text)
    assert sorted(b["probability"] for b in doc["branches"]) == pytest.approx([0.25, 0.75], abs=1e-6)


def test_an_unknown_rule_the_packet_never_reaches_leaves_the_trace_certain() -> None:
    rules = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p udp -m limit --limit 1/sec -j DROP\n-A INPUT -j ACCEPT\nCOMMIT\n"
    doc, text = trace(rules, INGRESS)
    assert_certain(doc, text)


def test_uncertain_through_the_command_line(tmp_path: Path) -> None:
    """The real CLI: the first line of the text output, the JSON's warnings and null probabilities."""
    import json

    rules = tmp_path / "r.rules"
    rules.write_text(filter_rules("INPUT", "-p tcp -m limit --limit 1/sec -j DROP"))
    base = [sys.executable, "-m", "nftrace", "explain", "--rules", str(rules), "--local-addr", "10.0.0.1",
            "tcp 192.168.1.7:40000 > 10.0.0.1:22 iif eth1"]  # fmt: skip
    r = subprocess.run(base, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("UNCERTAIN"), r.stdout
    r = subprocess.run([*base, "--format", "json"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    doc = json.loads(r.stdout)
    assert [b["probability"] for b in doc["branches"]] == [None, None]
    assert any("cannot decide offline" in w for w in doc["warnings"])
    rules.write_text(filter_rules("INPUT", "-p tcp --dport 22 -j DROP"))
    r = subprocess.run(base, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and not r.stdout.startswith("UNCERTAIN") and "UNCERTAIN" not in r.stdout
