"""Golden paths of rulesets/: every flow of every scenario's flows.txt, checked with nftrace.testing.

Each flow line of `rulesets/<name>/flows.txt` is followed by the outcome its
author worked out by hand (`# ... Result: ...`).  EXPECT encodes those
outcomes as `assert_path` arguments, where the hand derivation states them
unambiguously; `split` adds the probability of each endpoint branch
("OIF SRC > DST[:PORT]" -> probability).

Every expectation was checked against the kernel before it was written here,
and test_expectations_hold_in_the_kernel keeps checking it: the scenario's
host is rebuilt in network namespaces (tests/kernelhost.py), each flow is
injected, the engine's trace must equal the kernel's (tests/differential.py)
and the kernel's own outcome must meet the expectation.  Flows in conntrack
state ESTABLISHED are sent after `conntrack -I` of their connection (with
nf_conntrack_tcp_be_liberal=1, so the made-up sequence numbers are in
window); INVALID ones are bare ACKs with nf_conntrack_tcp_loose=0, which
conntrack refuses to pick up.  Where the engine forks (statistic, recent,
limit), the kernel takes one branch: it must be one of the predicted ones,
and (for `split`) one of the listed endpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nftrace.engine.packet import parse_flow
from nftrace.testing import Loaded, assert_path, load, trace

ROOT = Path(__file__).resolve().parent.parent / "rulesets"
THIRD = 1 / 3

# flow string -> assert_path arguments (+ "split"); one entry per flow of flows.txt, in its order
EXPECT: dict[str, dict[str, dict[str, Any]]] = {
    "docker-host": {
        "tcp 203.0.113.50:51000 > 192.168.1.10:8080 iif eth0": dict(
            verdict="ACCEPT", disposition="forwarded", oif="docker0", via_chain="nat DOCKER",
            dnat_to="172.17.0.2:80", snat_to="203.0.113.50:51000"),
        "tcp 192.168.1.77:40000 > 172.17.0.2:80 iif eth0": dict(
            verdict="DROP", disposition="dropped", dropped_at="raw PREROUTING 1"),
        "tcp 192.168.1.77:40001 > 127.0.0.1:5432 iif eth0": dict(
            verdict="DROP", disposition="dropped", dropped_at="raw PREROUTING 3"),
        "tcp 127.0.0.1:45000 > 127.0.0.1:5432 local": dict(
            verdict="ACCEPT", disposition="output", oif="docker0", dnat_to="172.17.0.3:5432",
            snat_to="172.17.0.1:45000"),
        "tcp 172.17.0.2:38000 > 192.168.1.10:8080 iif docker0": dict(
            verdict="ACCEPT", disposition="forwarded", oif="docker0", dnat_to="172.17.0.2:80",
            snat_to="172.17.0.1:38000"),
        "tcp 172.18.0.2:50000 > 172.17.0.2:80 iif br-3f2a9c1d7e45": dict(
            verdict="DROP", disposition="dropped", dropped_at="raw PREROUTING 1"),
        "tcp 172.18.0.2:50001 > 192.168.1.10:8080 iif br-3f2a9c1d7e45": dict(
            verdict="ACCEPT", disposition="forwarded", oif="docker0", via_chain="DOCKER-BRIDGE",
            dnat_to="172.17.0.2:80", snat_to="172.17.0.1:50001"),
        "tcp 172.17.0.3:41000 > 140.82.112.3:443 iif docker0": dict(
            verdict="ACCEPT", disposition="forwarded", oif="eth0", dnat_to="140.82.112.3:443",
            snat_to="192.168.1.10:41000"),
        "tcp 203.0.113.50:51001 > 192.168.1.10:443 iif eth0": dict(
            verdict="ACCEPT", disposition="forwarded", oif="br-3f2a9c1d7e45", dnat_to="172.18.0.2:8443",
            snat_to="203.0.113.50:51001"),
        "tcp 198.51.100.23:51002 > 192.168.1.10:8080 iif eth0": dict(
            verdict="DROP", disposition="dropped", dropped_at="filter DOCKER-USER 1"),
        "tcp 203.0.113.50:51003 > 192.168.1.10:22 iif eth0": dict(verdict="ACCEPT", disposition="local"),
        "tcp 203.0.113.50:51004 > 192.168.1.10:5432 iif eth0": dict(
            verdict="ACCEPT", disposition="local", dnat_to="192.168.1.10:5432"),
        "tcp 192.168.1.10:46000 > 192.168.1.10:8080 local": dict(
            verdict="ACCEPT", disposition="output", oif="docker0", dnat_to="172.17.0.2:80",
            snat_to="172.17.0.1:46000"),
        "tcp 172.17.0.2:42000 > 172.17.0.3:5432 iif docker0": dict(
            verdict="ACCEPT", disposition="forwarded", oif="docker0", dnat_to="172.17.0.3:5432",
            snat_to="172.17.0.2:42000"),
        "icmp 172.17.0.2 > 8.8.8.8 iif docker0": dict(
            verdict="ACCEPT", disposition="forwarded", oif="eth0", snat_to="192.168.1.10"),
    },
    "edge-router": {
        "tcp 192.168.10.20:50000 > 93.184.216.34:443 iif eth2": dict(
            verdict="ACCEPT", disposition="forwarded", oif="eth0", snat_to="203.0.113.2:50000",
            dnat_to="93.184.216.34:443"),
        "tcp 192.168.10.150:50001 > 93.184.216.34:443 iif eth2": dict(
            verdict="ACCEPT", disposition="forwarded", oif="eth1", via_chain="WAN2-SELECT",
            snat_to="198.51.100.2:50001"),
        "tcp 192.168.10.20:50002 > 74.125.140.26:587 iif eth2": dict(
            verdict="ACCEPT", disposition="forwarded", oif="eth1", via_chain="WAN2-SELECT",
            snat_to="198.51.100.2:50002", dnat_to="74.125.140.26:587"),
        "tcp 45.33.32.156:40000 > 203.0.113.2:443 iif eth0": dict(
            verdict="ACCEPT", disposition="forwarded", oif="eth3", via_chain="nat PORTFWD",
            dnat_to="172.16.20.10:443", snat_to="45.33.32.156:40000"),
        "tcp 45.33.32.156:40001 > 203.0.113.2:2222 iif eth0": dict(
            verdict="ACCEPT", disposition="forwarded", oif="eth3", dnat_to="172.16.20.22:22"),
        "tcp 45.33.32.156:40002 > 203.0.113.2:25 iif eth0": dict(
            verdict="ACCEPT", disposition="forwarded", oif="eth3", dnat_to="172.16.20.25:25"),
        "tcp 185.220.101.33:40003 > 203.0.113.2:443 iif eth0": dict(
            verdict="DROP", disposition="dropped", dropped_at="raw PREROUTING 1"),
        "tcp 45.33.32.156:40004 > 203.0.113.2:22 iif eth0": dict(
            verdict="DROP", disposition="dropped", dropped_at="filter LOG-DROP 2"),
        "tcp 45.33.32.156:40005 > 172.16.20.10:443 iif eth0": dict(
            verdict="DROP", disposition="dropped", dropped_at="filter LOG-DROP 2"),
        "udp 192.168.10.20:53000 > 192.168.10.1:53 iif eth2": dict(verdict="ACCEPT", disposition="local"),
        "tcp 172.16.20.10:45000 > 192.168.10.20:445 iif eth3": dict(
            verdict="DROP", disposition="dropped", dropped_at="filter LOG-DROP 2"),
        "tcp 192.168.10.150:50004 > 10.20.30.40:80 iif eth2": dict(
            verdict="DROP", disposition="unroutable", dropped_at="routing"),
        "tcp 198.51.100.2:41000 > 45.33.32.156:443 local": dict(
            verdict="ACCEPT", disposition="output", oif="eth1", snat_to="198.51.100.2:41000"),
        "tcp 203.0.113.2:41001 > 45.33.32.156:443 local mark 0x2": dict(
            verdict="ACCEPT", disposition="output", oif="eth0", snat_to="203.0.113.2:41001"),
        "tcp 192.168.10.20:50005 > 203.0.113.2:443 iif eth2": dict(
            verdict="ACCEPT", disposition="forwarded", oif="eth3", dnat_to="172.16.20.10:443",
            snat_to="192.168.10.20:50005"),
    },
    "flannel-node": {
        "tcp 10.244.2.5:40000 > 10.244.1.4:8080 iif cni0": dict(
            verdict="ACCEPT", disposition="forwarded", oif="flannel.1", via_chain="FLANNEL-FWD",
            dnat_to="10.244.1.4:8080", snat_to="10.244.2.5:40000"),
        "udp 192.168.50.12:39012 > 192.168.50.11:8472 local": dict(
            verdict="ACCEPT", disposition="output", oif="eth0", dnat_to="192.168.50.11:8472",
            snat_to="192.168.50.12:39012"),
        "udp 192.168.50.11:45678 > 192.168.50.12:8472 iif eth0": dict(verdict="ACCEPT", disposition="local"),
        "tcp 10.244.1.4:8080 > 10.244.2.5:40000 iif flannel.1 state ESTABLISHED": dict(
            verdict="ACCEPT", disposition="forwarded", oif="cni0", via_chain="KUBE-FORWARD"),
        "tcp 10.244.1.4:40001 > 10.244.2.6:8080 iif flannel.1": dict(
            verdict="ACCEPT", disposition="forwarded", oif="cni0", dnat_to="10.244.2.6:8080",
            snat_to="10.244.1.4:40001"),
        "tcp 10.244.2.5:40002 > 93.184.216.34:443 iif cni0": dict(
            verdict="ACCEPT", disposition="forwarded", oif="eth0", snat_to="192.168.50.12",
            dnat_to="93.184.216.34:443"),
        "tcp 10.244.2.5:40003 > 10.96.33.44:80 iif cni0": dict(
            verdict="ACCEPT", disposition="forwarded", via_chain="KUBE-SVC-JWGTEK2EMVJSPT4J",
            snat_to="10.244.2.5:40003",
            split={"flannel.1 10.244.2.5 > 10.244.1.4:8080": 0.5, "cni0 10.244.2.5 > 10.244.2.6:8080": 0.5}),
        "tcp 192.168.50.12:40004 > 10.96.33.44:80 local": dict(
            verdict="ACCEPT", disposition="output",
            split={"flannel.1 10.244.2.0 > 10.244.1.4:8080": 0.5, "cni0 10.244.2.1 > 10.244.2.6:8080": 0.5}),
        "tcp 192.168.50.30:40005 > 10.244.2.6:8080 iif eth0": dict(
            verdict="ACCEPT", disposition="forwarded", oif="cni0", dnat_to="10.244.2.6:8080",
            snat_to="192.168.50.30:40005"),
        "tcp 192.168.50.30:40006 > 10.244.1.4:8080 iif eth0": dict(
            verdict="ACCEPT", disposition="forwarded", oif="flannel.1", snat_to="10.244.2.0",
            dnat_to="10.244.1.4:8080"),
        "tcp 192.168.50.30:40007 > 172.16.99.9:80 iif eth0": dict(
            verdict="DROP", disposition="dropped", dropped_at="filter FORWARD policy"),
        "icmp 10.244.2.5 > 10.244.0.3 iif cni0": dict(
            verdict="ACCEPT", disposition="forwarded", oif="flannel.1", dnat_to="10.244.0.3",
            snat_to="10.244.2.5"),
        "tcp 10.244.2.5:40008 > 192.168.50.12:10250 iif cni0": dict(verdict="ACCEPT", disposition="local"),
    },
    "host-firewall": {
        # `ufw limit`: depends on the recent list (unknown offline); accepted for an occasional client,
        # which is what a fresh kernel does too
        "tcp 45.33.32.156:50000 > 203.0.113.40:22 iif eth0": dict(
            verdict="ACCEPT", disposition="local", via_chain="ufw-user-limit-accept", all_branches=False,
            kernel_fresh=True),
        "tcp 198.51.100.7:50001 > 203.0.113.40:443 iif eth0": dict(
            verdict="DROP", disposition="dropped", dropped_at="filter ufw-user-input 1"),
        "tcp 45.33.32.156:50002 > 203.0.113.40:443 iif eth0": dict(verdict="ACCEPT", disposition="local"),
        "tcp 45.33.32.156:50003 > 203.0.113.40:9100 iif eth0": dict(
            verdict="DROP", disposition="dropped", dropped_at="filter INPUT policy"),
        "tcp 192.0.2.15:50004 > 203.0.113.40:9100 iif eth0": dict(verdict="ACCEPT", disposition="local"),
        "icmp 45.33.32.156 > 203.0.113.40 iif eth0": dict(verdict="ACCEPT", disposition="local"),
        "udp 45.33.32.156:40000 > 203.0.113.40:137 iif eth0": dict(
            verdict="DROP", disposition="dropped", dropped_at="filter ufw-skip-to-policy-input 1"),
        "udp 45.33.32.156:3478 > 203.0.113.40:3478 iif eth0": dict(verdict="ACCEPT", disposition="local"),
        "udp 203.0.113.77:5678 > 203.0.113.255:5678 iif eth0": dict(
            verdict="DROP", disposition="dropped", dropped_at="filter ufw-skip-to-policy-input 1"),
        "tcp 45.33.32.156:50006 > 10.99.0.1:80 iif eth0": dict(
            verdict="DROP", disposition="unroutable", dropped_at="routing"),
        "tcp 203.0.113.40:41000 > 93.184.216.34:443 local": dict(
            verdict="ACCEPT", disposition="output", oif="eth0", via_chain="ufw-track-output"),
        "tcp 45.33.32.156:443 > 203.0.113.40:41000 iif eth0 state ESTABLISHED": dict(
            verdict="ACCEPT", disposition="local", via_chain="ufw-before-input"),
        "tcp 127.0.0.1:41000 > 127.0.0.1:5432 local": dict(verdict="ACCEPT", disposition="local"),
        "tcp 45.33.32.156:50007 > 203.0.113.40:22 iif eth0 state INVALID": dict(
            verdict="DROP", disposition="dropped", dropped_at="filter ufw-before-input 4"),
    },
    "kube-node": {
        "udp 10.244.1.3:5353 > 10.96.0.10:53 iif cni0": dict(
            verdict="ACCEPT", disposition="forwarded", via_chain="KUBE-SVC-TCOU7JCQXEZGVUNU",
            snat_to="10.244.1.3:5353",
            split={"eth0 10.244.1.3 > 10.244.0.2:53": 0.5, "cni0 10.244.1.3 > 10.244.1.2:53": 0.5}),
        "tcp 10.244.1.3:40000 > 10.96.0.1:443 iif cni0": dict(
            verdict="ACCEPT", disposition="forwarded", oif="eth0", dnat_to="192.168.50.10:6443",
            snat_to="10.244.1.3:40000"),
        "tcp 192.168.50.11:41000 > 10.96.0.1:443 local": dict(
            verdict="ACCEPT", disposition="output", oif="eth0", dnat_to="192.168.50.10:6443",
            snat_to="192.168.50.11"),
        "tcp 203.0.113.7:50000 > 192.168.50.11:30080 iif eth0": dict(
            verdict="ACCEPT", disposition="forwarded", oif="cni0", via_chain="KUBE-SVL-67NZLRHBNDSAWJRO",
            dnat_to="10.244.1.5:8080", snat_to="203.0.113.7:50000"),
        "tcp 203.0.113.7:50001 > 192.168.50.240:80 iif eth0": dict(
            verdict="ACCEPT", disposition="forwarded", oif="cni0", via_chain="KUBE-SVL-67NZLRHBNDSAWJRO",
            dnat_to="10.244.1.5:8080", snat_to="203.0.113.7:50001"),
        "tcp 10.244.1.3:40100 > 192.168.50.240:80 iif cni0": dict(
            verdict="ACCEPT", disposition="forwarded", via_chain="KUBE-SVC-67NZLRHBNDSAWJRO",
            not_via_chain="KUBE-SVL-*", snat_to="10.244.1.3:40100",
            split={"eth0 10.244.1.3 > 10.244.0.7:8080": THIRD, "cni0 10.244.1.3 > 10.244.1.5:8080": THIRD,
                   "eth0 10.244.1.3 > 10.244.2.9:8080": THIRD}),
        "tcp 10.244.1.3:40200 > 10.96.120.15:80 iif cni0": dict(
            verdict="ACCEPT", disposition="forwarded", via_chain="KUBE-SVC-67NZLRHBNDSAWJRO",
            snat_to="10.244.1.3:40200",
            split={"eth0 10.244.1.3 > 10.244.0.7:8080": THIRD, "cni0 10.244.1.3 > 10.244.1.5:8080": THIRD,
                   "eth0 10.244.1.3 > 10.244.2.9:8080": THIRD}),
        # ClientIP affinity: -m recent is unknown offline; every branch goes to one of the two endpoints
        "tcp 10.244.1.3:40300 > 10.96.200.30:8080 iif cni0": dict(
            verdict="ACCEPT", disposition="forwarded", via_chain="KUBE-SVC-I5LIAMPLWKMBJ54B",
            dnat_to={"10.244.1.6:8080", "10.244.2.11:8080"}, snat_to="10.244.1.3:40300"),
        "tcp 10.244.1.3:40400 > 10.96.45.100:80 iif cni0": dict(
            verdict="DROP", disposition="dropped", dropped_at="filter KUBE-SERVICES 1"),
        "tcp 203.0.113.7:50002 > 192.168.50.11:31000 iif eth0": dict(
            verdict="DROP", disposition="dropped", dropped_at="filter KUBE-EXTERNAL-SERVICES 1"),
        "tcp 192.168.50.1:50003 > 192.168.50.11:32156 iif eth0": dict(
            verdict="ACCEPT", disposition="local", via_chain="filter KUBE-NODEPORTS"),
        "tcp 127.0.0.1:50004 > 127.0.0.1:30080 local": dict(
            verdict="ACCEPT", disposition="output", via_chain="KUBE-NODEPORTS",
            split={"eth0 192.168.50.11 > 10.244.0.7:8080": THIRD, "eth0 192.168.50.11 > 10.244.2.9:8080": THIRD,
                   "cni0 10.244.1.1 > 10.244.1.5:8080": THIRD}),
        "tcp 192.168.50.66:50005 > 127.0.0.1:30080 iif eth0": dict(
            verdict="ACCEPT", disposition="forwarded", oif="cni0", dnat_to="10.244.1.5:8080",
            snat_to="192.168.50.66:50005"),
        "tcp 10.244.1.5:41000 > 10.96.120.15:80 iif cni0": dict(
            verdict="ACCEPT", disposition="forwarded",
            split={"cni0 10.244.1.1 > 10.244.1.5:8080": THIRD, "eth0 10.244.1.5 > 10.244.0.7:8080": THIRD,
                   "eth0 10.244.1.5 > 10.244.2.9:8080": THIRD}),
        "icmp 10.244.1.3 > 10.96.0.10 iif cni0": dict(
            verdict="ACCEPT", disposition="forwarded", oif="eth0", dnat_to="10.96.0.10",
            not_via_chain="nat KUBE-SVC-*"),
    },
}  # fmt: skip

_LOADED: dict[str, Loaded] = {}


def _load(scenario: str) -> Loaded:
    if scenario not in _LOADED:
        _LOADED[scenario] = load(ROOT / scenario)
    return _LOADED[scenario]


def flows(scenario: str) -> list[str]:
    """The flow strings of a scenario's flows.txt, in order."""
    out = []
    for line in (ROOT / scenario / "flows.txt").read_text(encoding="utf-8").splitlines():
        flow = line.split("#", 1)[0].strip()
        if flow:
            out.append(flow)
    return out


CASES = [(s, f) for s in sorted(EXPECT) for f in EXPECT[s]]


def _path_args(exp: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in exp.items() if k not in ("split", "kernel_fresh")}


def branch_key(result: dict[str, Any]) -> str:
    pk = result.get("packet") or {}
    dst = f"{pk.get('dst')}:{pk['dport']}" if pk.get("dport") is not None else str(pk.get("dst"))
    return f"{result.get('oif')} {pk.get('src')} > {dst}"


@pytest.mark.parametrize("scenario", sorted(EXPECT))
def test_every_flow_has_an_expectation(scenario: str) -> None:
    assert flows(scenario) == list(EXPECT[scenario]), (
        f"rulesets/{scenario}/flows.txt and EXPECT differ: encode the hand-derived outcome of every flow"
    )


@pytest.mark.parametrize("scenario,flow", CASES, ids=[f"{s}:{n}" for s, f in CASES for n in [f.split(">")[1]]])
def test_flow_path(scenario: str, flow: str) -> None:
    exp = EXPECT[scenario][flow]
    loaded = _load(scenario)
    tr = assert_path(loaded, flow, **_path_args(exp))
    split = exp.get("split")
    if split:
        got: dict[str, float] = {}
        for b in tr.branches:
            assert b["probability"] is not None, tr.rendered
            key = branch_key(b["result"])
            got[key] = got.get(key, 0.0) + b["probability"]
        assert set(got) == set(split), f"endpoints {sorted(got)}, expected {sorted(split)}\n{tr.rendered}"
        for key, p in split.items():
            assert abs(got[key] - p) < 1e-6, f"{key}: p={got[key]}, expected {p}\n{tr.rendered}"


def test_assert_path_fails_on_a_wrong_expectation() -> None:
    """The helpers can fail: a wrong verdict, chain or endpoint is reported with the trace."""
    loaded = _load("docker-host")
    flow = "tcp 198.51.100.23:51002 > 192.168.1.10:8080 iif eth0"
    with pytest.raises(AssertionError, match=r"verdict DROP, expected ACCEPT[\s\S]*DOCKER-USER"):
        assert_path(loaded, flow, verdict="ACCEPT")
    with pytest.raises(AssertionError, match="dropped at filter DOCKER-USER 1, expected filter FORWARD policy"):
        assert_path(loaded, flow, dropped_at="filter FORWARD policy")
    with pytest.raises(AssertionError, match="goes through DOCKER-USER"):
        assert_path(loaded, flow, not_via_chain="DOCKER-USER")
    kube = _load("kube-node")
    with pytest.raises(AssertionError, match=r"leaves for 10\.244\.\d+\.\d+:53, expected 10\.244\.1\.2:53"):
        assert_path(kube, "udp 10.244.1.3:5353 > 10.96.0.10:53 iif cni0", dnat_to="10.244.1.2:53")
    # ... and with all_branches=False one endpoint is enough
    assert_path(kube, "udp 10.244.1.3:5353 > 10.96.0.10:53 iif cni0", dnat_to="10.244.1.2:53", all_branches=False)


# ---------------------------------------------------------------- the kernel


def _kernel_outcome(res: Any, origin: str) -> dict[str, Any]:
    """The kernel's answer in assert_path's terms."""
    fin = res.final
    last = res.events[-1] if res.events else None
    chains: list[str] = []
    for ev in res.events:
        chains.append(f"{ev.table} {ev.chain}")
        if ev.target:
            chains.append(f"{ev.table} {ev.target}")
    at = None
    if fin.get("delivered_local"):
        verdict, disp = "ACCEPT", "local"
    elif last is not None and last.verdict == "DROP":
        verdict, disp = "DROP", "dropped"
        at = f"{last.table} {last.chain} {last.rule}" if last.kind == "rule" else f"{last.table} {last.chain} policy"
    elif fin.get("oif"):
        verdict, disp = "ACCEPT", "forwarded" if origin == "ingress" else "output"
    else:
        verdict, disp, at = "DROP", "unroutable", "routing"
    return {"verdict": verdict, "disposition": disp, "at": at, "chains": chains, **fin}


def _check_kernel(exp: dict[str, Any], k: dict[str, Any], random_ports: set[str]) -> list[str]:
    import fnmatch

    def endpoint(addr: Any, port: Any, key: str) -> list[str]:
        out = [str(addr)]
        if port is not None and key not in random_ports:
            out.append(f"{addr}:{port}")
        return out

    def wants(v: Any) -> set[str]:
        return {v} if isinstance(v, str) else set(v)

    problems = []
    for key in ("verdict", "disposition", "oif"):
        if key in exp and exp[key] != k.get(key):
            problems.append(f"{key}: kernel {k.get(key)}, expected {exp[key]}")
    if "dropped_at" in exp and exp["dropped_at"] != k["at"]:
        problems.append(f"dropped at: kernel {k['at']}, expected {exp['dropped_at']}")
    if "dnat_to" in exp and not wants(exp["dnat_to"]) & set(endpoint(k["dst"], k["dport"], "dport")):
        problems.append(f"destination: kernel {k['dst']}:{k['dport']}, expected {exp['dnat_to']}")
    if "snat_to" in exp and not wants(exp["snat_to"]) & set(endpoint(k["src"], k["sport"], "sport")):
        problems.append(f"source: kernel {k['src']}:{k['sport']}, expected {exp['snat_to']}")
    for key, want in (("via_chain", True), ("not_via_chain", False)):
        if key in exp:
            table, _, name = exp[key].rpartition(" ")
            hit = any(
                fnmatch.fnmatchcase(c.split(" ", 1)[1], name) and (not table or c.split(" ", 1)[0] == table)
                for c in k["chains"]
            )
            if hit != want:
                problems.append(f"{key} {exp[key]}: kernel path {k['chains']}")
    if "split" in exp:
        dst = f"{k['dst']}:{k['dport']}" if k.get("dport") is not None else str(k["dst"])
        key = f"{k['oif']} {k['src']} > {dst}"
        if key not in exp["split"]:
            problems.append(f"kernel endpoint {key}, expected one of {sorted(exp['split'])}")
    return problems


@pytest.mark.kernel
@pytest.mark.parametrize("scenario", sorted(EXPECT))
def test_expectations_hold_in_the_kernel(scenario: str) -> None:
    from tests.differential import compare, engine_packet
    from tests.kernelhost import KernelHost, KernelHostUnavailable, KPacket, unavailable_reason

    reason = unavailable_reason("nft")
    if reason:
        pytest.skip(reason)
    d = ROOT / scenario
    loaded = _load(scenario)
    ipsets = (d / "ipsets.txt").read_text() if (d / "ipsets.txt").is_file() else None
    failures: list[str] = []
    try:
        kh = KernelHost(loaded.host, (d / "iptables.rules").read_text(), ipsets=ipsets)
    except KernelHostUnavailable as e:
        pytest.skip(str(e))
    with kh:
        for flow, exp in EXPECT[scenario].items():
            fd = parse_flow(flow)
            state = fd.get("ct_state") or "NEW"
            tcp = fd["proto"] == "tcp"
            kp = KPacket(
                origin=fd["origin"],
                proto=fd["proto"],
                src=fd["src"],
                dst=fd["dst"],
                sport=fd.get("sport") or (40000 if fd["proto"] != "icmp" else None),
                dport=fd.get("dport"),
                iif=fd.get("iif"),
                mark=int(str(fd.get("mark", 0)), 0),
                tcp_flags="SYN" if state == "NEW" or not tcp else "ACK",
            )
            if state == "ESTABLISHED":
                # the connection, seen from its first packet: the reverse of this one
                kh.run(["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_be_liberal=1"])
                kh.run(["conntrack", "-I", "-p", fd["proto"], "-s", kp.dst, "-d", kp.src,
                        "--sport", str(kp.dport), "--dport", str(kp.sport), "--state", "ESTABLISHED",
                        "--status", "SEEN_REPLY,ASSURED", "--timeout", "120"])  # fmt: skip
            elif state == "INVALID":
                kh.run(["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0"])
            try:
                res = kh.send(kp)
            finally:
                if state == "INVALID":
                    kh.run(["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=1"])
            tr = trace(loaded, {**fd, "tcp_flags": kp.tcp_flags} if tcp else dict(fd))
            v = compare(loaded.engine.trace(*_with_state(kp, state, engine_packet)), res)
            if not v.ok:
                failures.append(f"{flow}: the engine disagrees with the kernel\n{v.message}")
                continue
            if not exp.get("all_branches", True) and not exp.get("kernel_fresh"):
                continue  # the kernel took one of the predicted branches; which one is chance
            random_ports = {p for b in tr.branches for p in (b["result"].get("packet") or {}).get("random_ports", [])}
            problems = _check_kernel(exp, _kernel_outcome(res, fd["origin"]), random_ports)
            if problems:
                failures.append(f"{flow}: " + "; ".join(problems) + "\n" + res.describe())
    assert not failures, "\n\n".join(failures)


def _with_state(kp: Any, state: str, engine_packet: Any) -> tuple[Any, str]:
    pkt, origin = engine_packet(kp)
    if state != "NEW":
        from nftrace.engine.packet import packet_from_dict

        d = {"origin": kp.origin, "proto": kp.proto, "src": kp.src, "dst": kp.dst, "sport": kp.sport,
             "dport": kp.dport, "iif": kp.iif, "ct_state": state,
             "tcp_flags": kp.tcp_flags if kp.proto == "tcp" else None}  # fmt: skip
        pkt, origin = packet_from_dict(d)
    return pkt, origin
