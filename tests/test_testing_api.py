"""nftrace.testing: the public helpers for users' own pytest suites."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nftrace.errors import InputError
from nftrace.testing import Loaded, TraceResult, assert_path, assert_same_behaviour, drop_point, load, trace

REPO = Path(__file__).resolve().parent.parent
RULESETS = REPO / "rulesets"

SIMPLE = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:SSH - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j SSH
-A INPUT -p icmp -j ACCEPT
-A SSH -s 10.0.0.0/8 -j ACCEPT
-A SSH -p tcp -j REJECT --reject-with tcp-reset
COMMIT
"""


@pytest.fixture(scope="module")
def simple() -> Loaded:
    return load(SIMPLE, host="synthetic")


def test_load_accepts_text_file_directory_and_loaded(tmp_path: Path) -> None:
    f = tmp_path / "rules.v4"
    f.write_text(SIMPLE)
    from_file = load(f)
    from_text = load(SIMPLE)
    assert from_file.ruleset.rule_count() == from_text.ruleset.rule_count() == 5
    assert from_file.host.empty  # a bare dump brings no host
    d = load(RULESETS / "docker-host")
    assert not d.host.empty and d.host.link("docker0") is not None
    assert load(d).side is d.side
    # host= a rulesets/ directory: that directory's host around these rules
    mixed = load(SIMPLE, host=RULESETS / "docker-host")
    assert mixed.host.link("docker0") is not None
    synth = load(SIMPLE, host="synthetic")
    assert not synth.host.empty and synth.host.link("lo") is not None


def test_load_bad_input_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load(tmp_path / "missing.rules")
    bad = tmp_path / "bad.rules"
    bad.write_text("*filter\n-A INPUT -j NOPE\nCOMMIT\n")
    with pytest.raises(InputError):
        load(bad)


def test_load_snapshot(tmp_path: Path) -> None:
    snap = _snapshot_of(RULESETS / "docker-host", tmp_path)
    s = load(snap)
    assert s.side.kind == "snapshot"
    assert s.host.link("docker0") is not None
    flow = "tcp 203.0.113.50:51000 > 192.168.1.10:8080 iif eth0"
    assert trace(s, flow).branches == trace(load(RULESETS / "docker-host"), flow).branches


def _snapshot_of(d: Path, tmp_path: Path) -> Path:
    """A snapshot file (Contract 2) holding a rulesets/ directory's dump and host."""
    import dataclasses

    loaded = load(d)
    host = loaded.host

    def link(lk):  # type: ignore[no-untyped-def]
        return {"index": lk.index, "name": lk.name, "kind": lk.kind, "master": lk.master, "up": lk.up,
                "mac": lk.mac, "addresses": list(lk.addresses)}  # fmt: skip

    doc = {
        "schema": "nftrace.snapshot/1",
        "taken_at": "2026-11-21T23:00:00Z",
        "hostname": "test-node",
        "kernel": "6.18.0",
        "iptables": {"backend": "nft", "ipv4": (d / "iptables.rules").read_text(), "ipv6": None},
        "ipsets": None,
        "links": [link(lk) for lk in host.links],
        "routes": [
            {
                k: v
                for k, v in dataclasses.asdict(r).items()
                if k in ("table", "type", "dst", "gateway", "oif", "prefsrc", "metric", "scope", "family")
            }
            for r in host.routes
        ],  # fmt: skip
        "rules": [
            {"priority": r.priority, "table": r.table, "family": r.family, "action": r.action} for r in host.rules
        ],
        "sysctls": dict(host.sysctls),
    }
    p = tmp_path / "node.snapshot.json"
    p.write_text(json.dumps(doc))
    return p


def test_trace_result_helpers(simple: Loaded) -> None:
    tr = trace(simple, "tcp 10.1.2.3:40000 > 100.64.0.1:22 iif eth0" if simple.host.link("eth0") else
               {"origin": "ingress", "proto": "tcp", "src": "10.1.2.3", "dst": "100.64.0.1", "dport": 22,
                "iif": simple.host.links[1].name})  # fmt: skip
    assert isinstance(tr, TraceResult)
    assert tr.doc["schema"] == "nftrace.trace/1"
    assert tr.verdict == "ACCEPT" and tr.disposition == "local"
    assert tr.final["dst"] == "100.64.0.1" and tr.final["dport"] == 22
    assert tr.chains_visited[:2] == ["filter INPUT", "filter SSH"]
    assert len(tr.branches) == 1 and not tr.uncertain
    assert "filter   SSH #1" in tr.rendered and str(tr) == tr.rendered


def test_trace_result_refuses_to_pick_a_branch() -> None:
    node = load(RULESETS / "kube-node")
    tr = trace(node, "udp 10.244.1.3:5353 > 10.96.0.10:53 iif cni0")
    assert tr.verdicts == {"ACCEPT"} and tr.verdict == "ACCEPT"
    with pytest.raises(ValueError, match="disagree on the final packet"):
        _ = tr.final
    assert {b["result"]["packet"]["dst"] for b in tr.branches} == {"10.244.0.2", "10.244.1.2"}


def test_assert_path_passes_and_fails_with_the_trace(simple: Loaded) -> None:
    iif = simple.host.links[1].name
    ok = {"origin": "ingress", "proto": "tcp", "src": "10.9.9.9", "dst": "100.64.0.1", "dport": 22, "iif": iif}
    bad = dict(ok, src="192.0.2.1")
    assert_path(simple, ok, verdict="ACCEPT", disposition="local", via_chain="SSH", not_via_chain="nat *")
    assert_path(simple, bad, verdict="DROP", dropped_at="filter SSH 2", via_chain="filter SSH")
    with pytest.raises(AssertionError) as e:
        assert_path(simple, bad, verdict="ACCEPT", disposition="local")
    msg = str(e.value)
    assert "verdict DROP, expected ACCEPT" in msg and "disposition dropped, expected local" in msg
    assert "-A SSH -p tcp -j REJECT --reject-with tcp-reset" in msg  # the rendered trace
    with pytest.raises(AssertionError, match="goes through SSH"):
        assert_path(simple, ok, not_via_chain="SSH")
    with pytest.raises(AssertionError, match="does not go through KUBE-"):
        assert_path(simple, ok, via_chain="KUBE-*")
    with pytest.raises(AssertionError, match=r"leaves for 100\.64\.0\.1:22, expected 100\.64\.0\.9"):
        assert_path(simple, ok, dnat_to="100.64.0.9")
    with pytest.raises(AssertionError, match=r"leaves from 10\.9\.9\.9:40000, expected 10\.9\.9\.8"):
        assert_path(simple, ok, snat_to="10.9.9.8")
    with pytest.raises(AssertionError, match="output interface None, expected eth9"):
        assert_path(simple, ok, oif="eth9")
    assert drop_point(trace(simple, bad).doc["branches"][0]["result"]) == "filter SSH 2"


def test_assert_path_all_branches() -> None:
    node = load(RULESETS / "kube-node")
    flow = "udp 10.244.1.3:5353 > 10.96.0.10:53 iif cni0"
    assert_path(node, flow, dnat_to={"10.244.0.2:53", "10.244.1.2:53"})
    assert_path(node, flow, dnat_to="10.244.0.2:53", oif="eth0", all_branches=False)
    with pytest.raises(AssertionError, match=r"branch \d/2: leaves for 10\.244\.1\.2:53"):
        assert_path(node, flow, dnat_to="10.244.0.2:53")
    with pytest.raises(AssertionError, match="no branch meets the expectations"):
        assert_path(node, flow, dnat_to="10.244.9.9", all_branches=False)


def test_assert_same_behaviour(simple: Loaded) -> None:
    iif = simple.host.links[1].name
    same = load(SIMPLE.replace(":SSH - [0:0]\n", ":SSH - [5:300]\n").replace("[0:0]", "[7:7]"))
    doc = assert_same_behaviour(simple, same)  # counters are not behaviour
    assert doc["probes"]["count"] > 20 and not doc["differences"]
    changed = load(SIMPLE.replace("-s 10.0.0.0/8", "-s 10.0.0.0/9"))
    pk = {"origin": "ingress", "proto": "tcp", "src": "10.200.0.1", "dst": "100.64.0.1", "dport": 22, "iif": iif}
    assert_same_behaviour(simple, changed, [dict(pk, src="10.1.0.1")])  # inside both prefixes
    with pytest.raises(AssertionError) as e:
        assert_same_behaviour(simple, changed, [pk])
    msg = str(e.value)
    assert "1 of 1 packets are treated differently" in msg
    assert "--- A" in msg and "--- B" in msg and "-A SSH -s 10.0.0.0/8 -j ACCEPT" in msg
    with pytest.raises(AssertionError, match="treated differently"):
        assert_same_behaviour(simple, changed)  # the generated probes find it too


def test_example_test_file_runs_under_pytest() -> None:
    """docs/example_test_rules.py is what the README points users to: it must pass as it is."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "docs" / "example_test_rules.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "6 passed" in p.stdout, p.stdout
