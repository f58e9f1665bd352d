"""Fuzzing the engine: generated valid rulesets and mutated real ones are traced with random
packets; every trace is checked by the oracle of tests/test_fuzz_common.py (no traceback, no hang,
contract-valid, honest about unknowns, every matched rule can match the packet it reports, the
indexed walk agrees with the plain one).  Packets, flow strings and host-context files are fuzzed
too.  About 3,300 inputs (and every corpus dump) in about 45 s.

The generator itself is checked against the kernel (`kernel` marker): the rulesets it makes load
with iptables-restore on both backends."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from typing import Any

import pytest
from hypothesis import strategies as st

from nftrace.errors import NftraceError
from tests.test_fuzz_common import (
    STATS,
    FuzzFailure,
    GenRuleset,
    bounded,
    check_error,
    check_trace,
    corpus_dumps,
    fuzz_engine,
    fuzz_parse,
    fuzz_trace,
    gen_host,
    mutated_dump,
    packet_dicts,
    run_fuzz,
    scenario_host,
    scenario_ipsets,
    scenarios,
    traced_rulesets,
    valid_rulesets,
)


def _trace_generated(x: tuple[GenRuleset, list[dict[str, Any]], bool]) -> None:
    g, packets, empty_host = x
    rs = fuzz_parse(g.text, "<generated>", g.family)
    if rs is None:
        from nftrace.ruleset.parser import parse_rules

        try:
            parse_rules(g.text, "<generated>", g.family)
        except NftraceError as e:
            raise FuzzFailure(f"a valid ruleset is refused: {e.one_line()}\n{g.text}") from None
    engine = fuzz_engine(rs, gen_host(empty_host))
    assert engine is not None
    for d in packets:
        fuzz_trace(engine, d, g.specs)


@pytest.mark.parametrize("family,n", [("ipv4", 650), ("ipv6", 250)])
def test_generated_rulesets_parse_print_back_and_trace_truthfully(family: str, n: int) -> None:
    before = STATS["matched rules checked against the generator's record"]
    assert run_fuzz(traced_rulesets(family), _trace_generated, n) >= n
    # the oracle had work to do: rules matched, and were checked against what the generator wrote
    assert STATS["matched rules checked against the generator's record"] - before >= n // 2


def test_mutated_scenarios_trace_their_flows() -> None:
    """Each bundled scenario, mutated, traced with its own host context and flows.txt packets."""
    from nftrace.engine.packet import parse_flow

    flows: dict[str, list[dict[str, Any]]] = {}
    for s in scenarios():
        lines = (s.dir / "flows.txt").read_text().splitlines() if (s.dir / "flows.txt").is_file() else []
        flows[f"rulesets/{s.name}"] = [parse_flow(ln.split("#")[0]) for ln in lines if ln.split("#")[0].strip()]
    sources = tuple((f"rulesets/{s.name}", s.text) for s in scenarios())

    def check(x: tuple[tuple[str, str], int]) -> None:
        (name, text), pick = x
        rs = fuzz_parse(text, name)
        if rs is None or rs.family != "ipv4":
            return
        scen = name.split("/", 1)[1]
        engine = fuzz_engine(rs, scenario_host(scen), scenario_ipsets(scen))
        if engine is None:
            return
        fl = flows[name]
        for d in (fl[pick % len(fl)], fl[(pick + 1) % len(fl)]) if fl else ():
            fuzz_trace(engine, d)

    assert run_fuzz(st.tuples(mutated_dump(sources), st.integers(0, 1000)), check, 400) >= 400


def test_every_corpus_dump_that_parses_traces() -> None:
    """Every corpus dump that parses, traced (no host context) with packets of its family."""
    pk4 = [
        {"origin": "ingress", "proto": "tcp", "src": "10.0.0.5", "dst": "10.0.0.1", "sport": 40000, "dport": 22, "iif": "eth0"},
        {"origin": "ingress", "proto": "udp", "src": "192.168.1.7", "dst": "8.8.8.8", "sport": 5353, "dport": 53, "iif": "eth1"},
        {"origin": "local", "proto": "icmp", "dst": "127.0.0.1"},
        {"origin": "ingress", "proto": "tcp", "src": "203.0.113.9", "dst": "10.0.0.1", "sport": 1, "dport": 80, "iif": "eth0", "ct_state": "ESTABLISHED"},
    ]  # fmt: skip
    pk6 = [
        {"origin": "ingress", "proto": "tcp", "src": "2001:db8::5", "dst": "2001:db8::1", "sport": 40000, "dport": 22, "iif": "eth0"},
        {"origin": "local", "proto": "icmpv6", "dst": "::1"},
    ]  # fmt: skip
    traced = 0
    for name, text in corpus_dumps():
        rs = fuzz_parse(text, name, roundtrip=False)
        if rs is None:
            continue
        for empty in (True, False):
            engine = fuzz_engine(rs, gen_host(empty))
            if engine is None:
                continue
            for d in pk4 if rs.family == "ipv4" else pk6:
                traced += fuzz_trace(engine, d) is not None
    if corpus_dumps():
        assert traced > 100


# ------------------------------------------------------------------------- packets, host files

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
    max_leaves=5,
)
_KEYS = ("origin", "proto", "src", "dst", "sport", "dport", "iif", "oif", "mark", "ct_state", "icmp_type",
         "icmp_code", "tcp_flags", "uid", "gid", "length", "ttl", "ct_mark", "family")  # fmt: skip


@st.composite
def _batch_lines(draw: st.DrawFn) -> dict[str, Any]:
    """A valid packet with some fields replaced by any JSON value."""
    d = dict(draw(packet_dicts(draw(st.sampled_from(("ipv4", "ipv6"))))))
    for _ in range(draw(st.integers(0, 3))):
        d[draw(st.sampled_from(_KEYS))] = draw(_JSON)
    return d


def test_batch_lines_and_flow_strings() -> None:
    """A batch line (any JSON values in any field) or a flow string becomes a packet or an InputError
    naming the batch file; what is accepted traces."""
    from nftrace.engine.packet import packet_from_dict, parse_flow

    engines = {
        fam: fuzz_engine(fuzz_parse(f"*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s {a} -j ACCEPT\nCOMMIT\n"), gen_host())
        for fam, a in (("ipv4", "10.0.0.5"), ("ipv6", "2001:db8::5"))
    }

    def check(x: tuple[dict[str, Any], str]) -> None:
        d, flow = x
        with bounded(f"packet {d}"):
            try:
                pkt, _ = packet_from_dict(dict(d), file="batch.jsonl")
            except NftraceError as e:
                check_error(e, "batch.jsonl")
            except Exception as e:
                raise FuzzFailure(f"packet_from_dict({d!r}) raised {type(e).__name__}: {e}") from e
            else:
                fuzz_trace(engines[pkt.family], d, compare_plain=False)
            try:
                parse_flow(flow, file="<flow>")
            except NftraceError as e:
                check_error(e, "<flow>")
            except Exception as e:
                raise FuzzFailure(f"parse_flow({flow!r}) raised {type(e).__name__}: {e}") from e

    words = st.sampled_from(
        ("tcp", "udp", "icmp", ">", "1.2.3.4:80", "[2001:db8::1]:443", "::1", "iif", "eth0", "local", "mark",
         "0x10", "state", "ESTABLISHED", "type", "8/0", ":", "[", "]", "-1", "99999", "flags", "SYN")
    )  # fmt: skip
    flows = st.one_of(st.text(max_size=60), st.lists(words, max_size=10).map(" ".join))
    assert run_fuzz(st.tuples(_batch_lines(), flows), check, 1200) >= 1200


@st.composite
def _host_file(draw: st.DrawFn) -> tuple[str, str]:
    files = sorted(p for s in scenarios() for p in s.dir.glob("*.txt") if p.name != "flows.txt")
    f = draw(st.sampled_from(files))
    text = f.read_text()
    lines = text.split("\n")
    for _ in range(draw(st.integers(1, 5))):
        if not lines:
            lines = [""]
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.integers(0, 4))
        if op == 0:
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif op == 1:
            k = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:k] + draw(st.text(max_size=6)) + lines[i][k:]
        elif op == 2:
            words = lines[i].split(" ")
            del words[draw(st.integers(0, len(words) - 1))]
            lines[i] = " ".join(words)
        elif op == 3:
            lines.insert(i, draw(st.sampled_from(lines)))
        else:
            lines = lines[:i]
    return f.name, "\n".join(lines)


def test_mutated_host_context_files() -> None:
    """routes, addresses, ip rules, sysctls and ipsets files, mutated: parsed or refused by file and line."""
    from nftrace.host.parse import parse_addrs, parse_ip_rules, parse_routes, parse_sysctls
    from nftrace.ruleset.ipsets import parse_ipsets

    parsers = {
        "routes.txt": lambda t: parse_routes(t, "f.txt"),
        "addrs.txt": lambda t: parse_addrs(t, "f.txt"),
        "ip-rules.txt": lambda t: parse_ip_rules(t, "f.txt"),
        "sysctl.txt": lambda t: parse_sysctls(t.splitlines(), "f.txt"),
        "ipsets.txt": lambda t: parse_ipsets(t, "f.txt"),
    }

    def check(x: tuple[str, str]) -> None:
        name, text = x
        with bounded(f"parsing a mutated {name}"):
            try:
                parsers[name](text)
            except NftraceError as e:
                check_error(e, "f.txt")
            except Exception as e:
                raise FuzzFailure(f"parsing a mutated {name} raised {type(e).__name__}: {e}\n{text}") from e

    assert run_fuzz(_host_file(), check, 800) >= 800


# ------------------------------------------------------------------------- the oracle itself


def _doc(steps: list[dict[str, Any]], result_packet: dict[str, Any], prob: float | None = 1.0) -> dict[str, Any]:
    return {
        "schema": "nftrace.trace/1",
        "packet": {
            "family": "ipv4",
            "proto": "tcp",
            "src": "192.168.1.7",
            "dst": "10.0.0.1",
            "sport": 1,
            "dport": 80,
            "iif": "eth1",
            "oif": None,
            "mark": 0,
            "ct_state": "NEW",
        },  # fmt: skip
        "origin": "ingress",
        "branches": [
            {
                "probability": prob,
                "conditions": [],
                "steps": steps,
                "result": {
                    "verdict": "ACCEPT",
                    "disposition": "local",
                    "oif": None,
                    "at": None,
                    "packet": result_packet,
                },
            }
        ],
        "warnings": [],
    }


def test_the_oracle_catches_wrong_traces() -> None:
    """Hand-made wrong traces: each breaks one invariant, and the oracle says which."""
    from nftrace.present.text import render_trace

    rs = fuzz_parse(
        "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.9:8080\nCOMMIT\n"
        "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 10.0.0.0/8 -j ACCEPT\n-A INPUT -d 10.0.0.9/32 -p tcp --dport 8080 "
        "-j ACCEPT\nCOMMIT\n"
    )
    assert rs is not None
    pkt = {"src": "192.168.1.7", "dst": "10.0.0.1", "sport": 1, "dport": 80}
    rule1 = {"kind": "rule", "hook": "INPUT", "table": "filter", "chain": "INPUT", "rule": 1, "matched": True,
             "verdict": "ACCEPT", "target": "ACCEPT", "text": "-A INPUT -s 10.0.0.0/8 -j ACCEPT"}  # fmt: skip
    rule2 = {**rule1, "rule": 2, "text": "-A INPUT -d 10.0.0.9/32 -p tcp --dport 8080 -j ACCEPT"}
    nat = {"kind": "nat", "type": "DNAT", "hook": "PREROUTING", "before": "10.0.0.1:80", "after": "10.0.0.9:8080"}
    route = {"kind": "route", "result": "local", "oif": None}
    cases = [
        # -s 10.0.0.0/8 cannot match a packet from 192.168.1.7
        (_doc([route, rule1], pkt), "cannot match"),
        # without the DNAT step, -d 10.0.0.9 --dport 8080 cannot match 10.0.0.1:80
        (_doc([route, rule2], pkt), "cannot match"),
        # with it, it can, but the result must then show the rewritten packet
        (_doc([nat, route, rule2], pkt), "replaying the steps"),
        # a rule the ruleset does not have
        (_doc([route, {**rule1, "rule": 7}], pkt), "does not have"),
        # an unknown branch that does not say what it assumed
        (_doc([nat, route, rule2], {**pkt, "dst": "10.0.0.9", "dport": 8080}, prob=None), "without conditions"),
        # probabilities that do not sum to 1
        (_doc([nat, route, rule2], {**pkt, "dst": "10.0.0.9", "dport": 8080}, prob=0.5), "sum to"),
    ]
    for doc, why in cases:
        with pytest.raises(FuzzFailure, match=why):
            check_trace(doc, render_trace(doc), rs, None)
    good = _doc([nat, route, rule2], {**pkt, "dst": "10.0.0.9", "dport": 8080})
    check_trace(good, render_trace(good), rs, None)
    # an uncertain trace whose text does not start with UNCERTAIN
    unsure = _doc([nat, route, rule2], {**pkt, "dst": "10.0.0.9", "dport": 8080}, prob=None)
    unsure["branches"][0]["conditions"] = ["filter INPUT rule 9: assumed to match: x"]
    with pytest.raises(FuzzFailure, match="text output starts"):
        check_trace(unsure, render_trace(good), rs, None)


def test_a_hang_is_a_failure_not_a_stuck_run() -> None:
    with pytest.raises(FuzzFailure, match="hang"), bounded("a loop", 0.2):
        while True:
            pass


# ------------------------------------------------------------------------- the generator vs the kernel


def _netns_available() -> bool:
    import os

    return os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("iptables-restore") is not None


@pytest.mark.kernel
@pytest.mark.skipif(not _netns_available(), reason="needs root, ip and iptables-restore")
def test_generated_rulesets_load_in_the_kernel() -> None:
    """What the generator calls valid, the kernel loads: iptables-restore (nf_tables) and
    iptables-legacy-restore in a throwaway namespace (`-j QUEUE` needs the nft_queue module, which
    this kernel may lack: such rulesets are checked on legacy only).  Catches generator drift."""
    ns = f"nft-fuzzgen-{secrets.token_hex(4)}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode:
        pytest.skip("cannot create a network namespace")
    try:
        for name, fam in (("fzset", "inet"), ("fzset6", "inet6")):
            r = subprocess.run(["ip", "netns", "exec", ns, "ipset", "create", name, "hash:ip", "family", fam],
                               capture_output=True, text=True)  # fmt: skip
            if r.returncode:
                pytest.skip(f"ipset: {r.stderr.strip()}")
        legacy = shutil.which("iptables-legacy-restore") is not None

        def check(g: GenRuleset) -> None:
            v = "ip6" if g.family == "ipv6" else "ip"
            tools = ([] if "-j QUEUE" in g.text else [f"{v}tables-restore"]) + (
                [f"{v}tables-legacy-restore"] if legacy else []
            )
            for tool in tools:
                r = subprocess.run(["ip", "netns", "exec", ns, tool], input=g.text, text=True, capture_output=True)
                if r.returncode:
                    raise FuzzFailure(f"{tool} refuses a generated ruleset: {r.stderr.strip()}\n{g.text}")

        assert run_fuzz(valid_rulesets(with_vectors=False), check, 60) >= 60
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_stats_are_json() -> None:
    json.dumps(dict(STATS))
