"""Unit tests of live mode's pure parts: planning probes from a trace, recognising our own rules,
parsing every log source's format, the NFLOG wire format, the comparison, the state file.

The expectations on probe matches (which address, port and interface each chain sees) were
checked against the kernel: tests/test_live_kernel.py confirms these flows on both backends."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from nftrace.engine.packet import packet_from_dict, parse_flow
from nftrace.engine.pipeline import Engine
from nftrace.live import nflog
from nftrace.live.compare import compare_log, compare_trace
from nftrace.live.inject import Datagram, build, checksum
from nftrace.live.plan import PREFIX_MAX, Flow, log_prefix, make_plan, tcp_flag_word
from nftrace.live.probes import own_rules, parse_own_rule
from nftrace.live.sources import (
    FileTail,
    Hit,
    TraceEvent,
    journal_message,
    parse_fields,
    parse_kernel_message,
    parse_kmsg_record,
)
from nftrace.live.state import RunState, StateFile, atomic_write, list_states, lock_state

ROOT = Path(__file__).resolve().parent.parent / "rulesets"


def trace_of(scenario: str, flow: str) -> dict[str, Any]:
    import argparse

    from nftrace.cli import load_inputs

    ns = argparse.Namespace(rules=str(ROOT / scenario), routes=None, addrs=None, ip_rules=None, ipsets=None,
                            sysctl=[], local_addr=[], snapshot=None, host=False, netns=None, backend="nft",
                            flow=flow, dst=None)  # fmt: skip
    rs, host, ipsets = load_inputs(ns, "ipv4")
    pkt, origin = packet_from_dict(parse_flow(flow))
    return Engine(rs, host, ipsets).trace(pkt, origin).to_json()


def probes_by_chain(plan: Any) -> dict[tuple[str, str, str], list[Flow]]:
    out: dict[tuple[str, str, str], list[Flow]] = {}
    for p in plan.probes:
        out.setdefault((p.hook, p.table, p.chain), []).append(p.flow)
    return out


# ----------------------------------------------------------------------------- planning


def test_probe_matches_follow_dnat_and_routing() -> None:
    # kube-node flows.txt: KUBE-SEP-QAI6IJGEKZYOMWSX DNAT 192.168.50.10:6443, route dev eth0
    tr = trace_of("kube-node", "tcp 10.244.1.3:40000 > 10.96.0.1:443 iif cni0")
    plan = make_plan(tr, "abc123")
    by = probes_by_chain(plan)
    sep = by[("PREROUTING", "nat", "KUBE-SEP-QAI6IJGEKZYOMWSX")][0]
    assert (sep.dst, sep.dport, sep.iif, sep.oif) == ("10.96.0.1", 443, "cni0", None)  # nat chains: before DNAT
    fwd = by[("FORWARD", "filter", "FORWARD")][0]
    assert (fwd.dst, fwd.dport, fwd.iif, fwd.oif) == ("192.168.50.10", 6443, "cni0", "eth0")
    post = by[("POSTROUTING", "nat", "POSTROUTING")][0]
    assert (post.dst, post.iif, post.oif) == ("192.168.50.10", None, "eth0")  # no -i in POSTROUTING
    assert all(f.tcp_flags == "SYN" and f.sport == 40000 for fl in by.values() for f in fl)
    # every visit of branch 0 logs exactly its own probe, in path order
    seq = [n for n, _ in plan.expected(0)]
    assert seq == list(range(1, len(plan.probes) + 1))


def test_output_keeps_the_old_device_after_a_reroute() -> None:
    # edge-router flows.txt: mark 0x2 routes via eth1, CONNMARK restore in mangle OUTPUT reroutes to
    # eth0: the rest of OUTPUT still sees eth1 (the hook's state), POSTROUTING sees eth0
    tr = trace_of("edge-router", "tcp 203.0.113.2:41001 > 45.33.32.156:443 local mark 0x2")
    by = probes_by_chain(make_plan(tr, "abc123"))
    assert by[("OUTPUT", "filter", "OUTPUT")][0].oif == "eth1"
    assert by[("POSTROUTING", "nat", "POSTROUTING")][0].oif == "eth0"
    assert by[("OUTPUT", "raw", "OUTPUT")][0].src == "203.0.113.2"


def test_branches_share_chains_and_split_after_dnat() -> None:
    # kube-dns: two 50% endpoints; the nat chains before the split are one probe, FORWARD differs
    tr = trace_of("kube-node", "udp 10.244.1.3:5353 > 10.96.0.10:53 iif cni0")
    plan = make_plan(tr, "abc123")
    assert len(plan.branches) == 2
    fwd = probes_by_chain(plan)[("FORWARD", "filter", "FORWARD")]
    assert sorted(f.dst or "" for f in fwd) == ["10.244.0.2", "10.244.1.2"]
    e0, e1 = ([n for n, _ in plan.expected(b)] for b in range(2))
    assert e0[:3] == e1[:3] and e0 != e1
    # a probe built for one endpoint does not match the other endpoint's visit
    for b in range(2):
        for n, visit in plan.expected(b):
            assert plan.by_n()[n].flow.covers(visit.flow)


def test_loopback_probes_use_lo_on_both_sides() -> None:
    tr = trace_of("host-firewall", "tcp 127.0.0.1:41000 > 127.0.0.1:5432 local")
    by = probes_by_chain(make_plan(tr, "abc123"))
    assert by[("OUTPUT", "filter", "OUTPUT")][0].oif == "lo"
    assert by[("INPUT", "filter", "INPUT")][0].iif == "lo"


def test_unknown_source_port_is_not_matched() -> None:
    tr = trace_of("kube-node", "tcp 10.244.1.3:40000 > 10.96.0.1:443 iif cni0")
    plan = make_plan(tr, "abc123", unknown={"sport"})
    assert all(p.flow.sport is None for p in plan.probes)
    assert "--sport" not in plan.probes[0].spec()


def test_prefix_and_spec_shape() -> None:
    assert len(log_prefix("abcdef", 999)) <= PREFIX_MAX
    with pytest.raises(ValueError):
        log_prefix("a" * 30, 1)
    f = Flow("tcp", "10.0.0.1", "10.0.0.2", 1, 2, tcp_flags="SYN", iif="eth0", oif="eth1")
    assert f.match_args() == ["-s", "10.0.0.1/32", "-d", "10.0.0.2/32", "-i", "eth0", "-o", "eth1", "-p", "tcp",
                              "-m", "tcp", "--sport", "1", "--dport", "2", "--tcp-flags", "FIN,SYN,RST,ACK", "SYN"]  # fmt: skip
    assert Flow("icmp", "1.1.1.1", "2.2.2.2", icmp_type=8, icmp_code=0).match_args()[-1] == "8/0"
    assert tcp_flag_word("ACK,PSH") == "ACK" and tcp_flag_word("") == "NONE"
    plan = make_plan(trace_of("kube-node", "icmp 10.244.1.3 > 10.96.0.10 iif cni0"), "abc123")
    argv = plan.probes[0].argv("iptables-nft", "-I")
    assert argv[:8] == ["iptables-nft", "-w", "20", "-t", plan.probes[0].table, "-I", plan.probes[0].chain, "1"]
    assert argv[-4:] == ["-j", "LOG", "--log-prefix", "nft:abc123:1 "]
    assert "nftrace:abc123" in argv and "limit" in argv


# ----------------------------------------------------------------------------- our own rules

OURS = (
    "-A FORWARD -s 10.244.1.3/32 -d 192.168.50.10/32 -i cni0 -o eth0 -p tcp -m tcp --dport 6443 "
    '--tcp-flags FIN,SYN,RST,ACK SYN -m comment --comment "nftrace:5a6473" -m limit --limit 10/sec '
    '--limit-burst 20 -j LOG --log-prefix "nft:5a6473:7 "'
)


def test_own_rule_is_recognised_exactly() -> None:
    r = parse_own_rule(OURS, "filter")
    assert r is not None and r.run == "5a6473" and r.chain == "FORWARD"
    argv = r.delete_argv("nft")
    assert argv[:7] == ["iptables-nft", "-w", "20", "-t", "filter", "-D", "FORWARD"]
    assert argv[-1] == "nft:5a6473:7 "
    nflog_rule = OURS.replace(
        '-j LOG --log-prefix "nft:5a6473:7 "', '-j NFLOG --nflog-prefix "nft:5a6473:7 " --nflog-group 4242'
    )
    assert parse_own_rule(nflog_rule, "filter") is not None


@pytest.mark.parametrize(
    "line",
    [
        OURS.replace("-m limit --limit 10/sec --limit-burst 20 ", ""),  # no rate limit: not ours
        OURS.replace("nft:5a6473:7", "nft:999999:7"),  # prefix of another run
        OURS.replace('-j LOG --log-prefix "nft:5a6473:7 "', "-j ACCEPT"),  # a verdict: never ours
        OURS.replace("-p tcp", "-m conntrack --ctstate NEW -p tcp"),  # a match we never write
        OURS.replace('"nftrace:5a6473"', '"nftrace:5a6473 keep me"'),
        OURS.replace('"nftrace:5a6473"', '"nftrace:5A6473"'),
        '-A INPUT -m comment --comment "nftrace:5a6473" -j DROP',
        "-A INPUT -p tcp -j LOG --log-prefix nftrace:",
    ],
)
def test_foreign_rules_are_never_ours(line: str) -> None:
    assert parse_own_rule(line, "filter") is None


def test_own_rules_of_a_dump() -> None:
    dump = f"*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\n{OURS}\nCOMMIT\n*nat\n{OURS.replace('FORWARD', 'KUBE-X')}\nCOMMIT\n"
    found = own_rules(dump)
    assert [(r.table, r.chain) for r in found] == [("filter", "FORWARD"), ("nat", "KUBE-X")]


# ----------------------------------------------------------------------------- log formats

LOG_REST = "IN=cni0 OUT=eth0 MAC=aa SRC=10.244.1.3 DST=10.96.0.1 LEN=60 TOS=0x00 PREC=0x00 TTL=63 ID=4242 DF PROTO=TCP SPT=40000 DPT=443 SYN URGP=0"


def test_kernel_message_formats() -> None:
    rsys = f"2026-11-22T00:26:06.001801+00:00 vm kernel: [ 2356.016647] nft:abc123:3 {LOG_REST}"
    h = parse_kernel_message(rsys, "abc123")
    assert h is not None and h.n == 3 and h.fields["ID"] == "4242" and h.fields["OUT"] == "eth0"
    assert "SYN" in h.fields and h.fields["IN"] == "cni0"
    assert parse_kernel_message(rsys.replace("abc123", "fff000"), "abc123") is None  # another run
    rec = f"4,1538,1721860095,-;nft:abc123:1 {LOG_REST}\n SUBSYSTEM=net\n".encode()
    assert parse_kmsg_record(rec).startswith("nft:abc123:1 IN=cni0")
    legacy = "TRACE: filter:LOG-DROP:return:2 IN=eth0 OUT= SRC=1.2.3.4 DST=5.6.7.8 ID=9 PROTO=TCP"
    t = parse_kernel_message(legacy, "abc123")
    assert (
        t is not None
        and t.trace is not None
        and (t.trace.chain, t.trace.kind, t.trace.num) == ("LOG-DROP", "return", 2)
    )
    msg = f"nft:abc123:2 {LOG_REST}"
    assert journal_message(json.dumps({"MESSAGE": msg}).encode()) == msg
    assert journal_message(json.dumps({"MESSAGE": list(msg.encode())}).encode()) == msg
    assert journal_message(b"not json") is None


def test_fields_leave_out_the_quoted_packet_of_an_icmp_error() -> None:
    f = parse_fields(
        "SRC=1.1.1.1 DST=2.2.2.2 ID=7 PROTO=ICMP TYPE=3 CODE=3 [SRC=2.2.2.2 DST=1.1.1.1 ID=4242 PROTO=UDP ]"
    )
    assert f["ID"] == "7" and f["TYPE"] == "3"
    assert parse_fields("SRC=1.1.1.1 ID=5DF SPORT=9 DPORT=10")["ID"] == "5"  # xtables-monitor without a space


def test_file_tail_follows_rotation(tmp_path: Path) -> None:
    p = tmp_path / "kern.log"
    p.write_text("old line\n")
    t = FileTail(str(p))
    t.open(at_end=True)
    with p.open("a") as f:
        f.write("one\ntw")
    assert t.read_lines() == ["one"]
    with p.open("a") as f:
        f.write("o\n")
    assert t.read_lines() == ["two"]
    p.rename(tmp_path / "kern.log.1")
    p.write_text("after rotation\n")
    assert t.read_lines() == ["after rotation"]
    t.close()


# ----------------------------------------------------------------------------- NFLOG wire format


def _attr(kind: int, payload: bytes) -> bytes:
    return nflog.nla(kind, payload)


def test_nflog_packet_decoding() -> None:
    d = Datagram("udp", "10.0.0.1", "10.0.0.2", 1111, 53, ip_id=4242)
    payload = build(d)
    body = struct.pack("=BB", socket.AF_INET, 0) + struct.pack("!H", 7)
    body += _attr(nflog.NFULA_PREFIX, b"nft:abc123:5 \0")
    body += _attr(nflog.NFULA_IFINDEX_INDEV, struct.pack("!I", 3))
    body += _attr(nflog.NFULA_MARK, struct.pack("!I", 0x4000))
    body += _attr(nflog.NFULA_PAYLOAD, payload)
    msg = struct.pack("=IHHII", 16 + len(body), (nflog.NFNL_SUBSYS_ULOG << 8) | nflog.NFULNL_MSG_PACKET, 0, 1, 0)
    msgs = nflog.split_messages(msg + body + msg + body)
    assert len(msgs) == 2
    p = nflog.decode_packet(msgs[0][2])
    assert p is not None and p.prefix == "nft:abc123:5 " and p.indev == 3 and p.outdev is None and p.mark == 0x4000
    assert p.fields == {"SRC": "10.0.0.1", "DST": "10.0.0.2", "LEN": str(len(payload)), "TTL": "64", "ID": "4242",
                        "PROTO": "UDP", "SPT": "1111", "DPT": "53"}  # fmt: skip


def test_config_message_layout() -> None:
    m = nflog.config_message(4242, _attr(nflog.NFULA_CFG_CMD, b"\x01"), seq=9)
    length, mtype, flags, seq, _ = struct.unpack_from("=IHHII", m)
    assert length == len(m) and mtype == 0x0401 and flags == 0x5 and seq == 9
    assert struct.unpack_from("!H", m, 18)[0] == 4242  # nfgenmsg.res_id, big-endian
    assert nflog.parse_attrs(m[20:]) == {nflog.NFULA_CFG_CMD: b"\x01"}


def test_built_packets_have_valid_checksums() -> None:
    for d in (
        Datagram("tcp", "10.0.0.1", "10.0.0.2", 1000, 80, ip_id=1),
        Datagram("udp", "10.0.0.1", "10.0.0.2", 1000, 53, ip_id=2),
        Datagram("icmp", "10.0.0.1", "10.0.0.2", ip_id=3),
        Datagram("icmp", "10.0.0.1", "10.0.0.2", icmp_type=3, icmp_code=3, ip_id=4),
    ):
        pkt = build(d)
        assert checksum(pkt[:20]) == 0
        assert struct.unpack_from("!H", pkt, 4)[0] == d.ip_id
        seg = pkt[20:]
        if d.proto == "icmp":
            assert checksum(seg) == 0
        else:
            pseudo = socket.inet_aton(d.src) + socket.inet_aton(d.dst) + struct.pack("!BBH", 0, pkt[9], len(seg))
            assert checksum(pseudo + seg) == 0


# ----------------------------------------------------------------------------- comparison


def _hits(plan: Any, ns: list[int]) -> list[Hit]:
    return [Hit(n, {"ID": "9"}, f"nft:{plan.run}:{n} ID=9") for n in ns]


def test_compare_log_outcomes() -> None:
    tr = trace_of("kube-node", "udp 10.244.1.3:5353 > 10.96.0.10:53 iif cni0")
    plan = make_plan(tr, "abc123")
    e = [[n for n, _ in plan.expected(b)] for b in range(2)]
    ok = compare_log(plan, tr, _hits(plan, e[1]), set())
    assert ok.verdict == "confirmed" and ok.branch == 1 and ok.first_difference is None
    cut = compare_log(plan, tr, _hits(plan, e[0][:5]), set())
    assert cut.verdict == "differs" and cut.first_difference is not None
    assert cut.first_difference["index"] == 5 and cut.first_difference["observed"] is None
    assert cut.first_difference["predicted"]["probe"] == e[0][5]
    lost = compare_log(plan, tr, _hits(plan, e[0][:5]), {e[0][5]})
    assert lost.verdict == "inconclusive" and "disappeared" in lost.first_difference["explanation"]
    silent = compare_log(plan, tr, [], set())
    assert silent.verdict == "inconclusive"
    wrong = compare_log(plan, tr, _hits(plan, [e[0][0], e[0][2]]), set())
    assert wrong.verdict == "differs" and wrong.first_difference["index"] == 1
    assert wrong.first_difference["observed"]["probe"] == e[0][2]


def test_compare_trace_outcomes() -> None:
    tr = trace_of("host-firewall", "tcp 198.51.100.7:50001 > 203.0.113.40:443 iif eth0")
    steps = tr["branches"][0]["steps"]
    hits = []
    for s in steps:
        if s["kind"] in ("rule", "policy") and (s["kind"] == "policy" or s.get("matched")):
            ev = TraceEvent(s["table"], s["chain"], s["kind"], s.get("rule"), s["verdict"],
                            s.get("target") if s["verdict"] in ("JUMP", "GOTO") else None, trace_id="t1")  # fmt: skip
            hits.append(Hit(None, {"ID": "9"}, "", trace=ev))
    assert compare_trace(tr, hits).verdict == "confirmed"
    assert hits[-1].trace is not None
    hits[-1].trace.verdict = "ACCEPT"  # the kernel says otherwise at the last rule
    out = compare_trace(tr, hits)
    assert out.verdict == "differs" and out.first_difference["index"] == len(hits) - 1
    assert compare_trace(tr, []).verdict == "inconclusive"


# ----------------------------------------------------------------------------- state file


def test_state_file_lifecycle(tmp_path: Path) -> None:
    sf = StateFile(RunState("abc123", "ns1", "nft"), tmp_path)
    sf.acquire()
    sf.state.rules.append({"n": 1, "table": "filter", "chain": "INPUT", "delete": ["iptables-nft", "-D"]})
    sf.write()
    found = list_states(tmp_path)
    assert len(found) == 1 and found[0].state is not None and found[0].state.rules[0]["n"] == 1
    assert lock_state(tmp_path, "abc123", 0.0)[0] == "held"
    with pytest.raises(Exception, match="in use"):
        StateFile(RunState("abc123", None, "nft"), tmp_path).acquire()
    sf.release_keep()
    status, fd = lock_state(tmp_path, "abc123", 0.0)
    assert status == "free" and fd is not None
    os.close(fd)
    sf.remove()
    assert list_states(tmp_path) == [] and lock_state(tmp_path, "abc123", 0.0)[0] == "gone"
    assert not list(tmp_path.iterdir())


def test_lock_is_held_by_children_that_inherit_it(tmp_path: Path) -> None:
    """A child given the lock's descriptor keeps the lock after its parent is gone (flock semantics)."""
    sf = StateFile(RunState("abc124", None, "nft"), tmp_path)
    sf.acquire()
    assert sf.lock_fd is not None
    dup = os.dup(sf.lock_fd)  # stands for the descriptor an iptables child inherited
    sf.release_keep()
    assert lock_state(tmp_path, "abc124", 0.0)[0] == "held"
    os.close(dup)
    status, fd = lock_state(tmp_path, "abc124", 0.0)
    assert status == "free" and fd is not None
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    atomic_write(p, b"first")
    atomic_write(p, b"second")
    assert p.read_bytes() == b"second"
    assert [q.name for q in tmp_path.iterdir()] == ["x.json"]


# ----------------------------------------------------------------------------- command line


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from nftrace.cli import main

    if os.geteuid() != 0:
        assert main(["live", "tcp 1.2.3.4 > 5.6.7.8:80 local"]) == 2
        assert "needs root" in capsys.readouterr().err
        return
    assert main(["live", "--cleanup", "tcp 1.2.3.4 > 5.6.7.8:80 local"]) == 2
    assert "--cleanup takes no packet" in capsys.readouterr().err
    assert main(["live", "tcp 1.2.3.4 > 5.6.7.8:80 local", "--from-netns", "x"]) == 2
    assert "--inject" in capsys.readouterr().err
    assert main(["live", "tcp 1.2.3.4 > 5.6.7.8:80 iif eth0", "--inject"]) == 2
    assert "--from-netns" in capsys.readouterr().err
    assert main(["live", "tcp 1.2.3.4 > 5.6.7.8:80 local", "--timeout", "0"]) == 2
    assert main(["live", "tcp 1.2.3.4 > 5.6.7.8:80 local", "--netns", "no/such"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "Traceback" not in err


def test_journald_reader_with_a_stand_in_journalctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journald source's process handling and JSON parsing, with a journalctl that prints two
    records (one of another run) and then follows forever, as `journalctl -f` does."""
    import time

    from nftrace.live.sources import JournaldSource, Recorder
    from nftrace.live.system import Target

    line = json.dumps({"MESSAGE": f"nft:abc123:2 {LOG_REST}", "_TRANSPORT": "kernel"})
    other = json.dumps({"MESSAGE": f"nft:ffffff:2 {LOG_REST}"})
    script = tmp_path / "journalctl"
    script.write_text(
        f"#!/bin/sh\necho \"$*\" > {tmp_path}/argv\nprintf '%s\\n%s\\n' '{other}' '{line}'\nexec sleep 60\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")

    class Rec(Recorder):
        pids: list[int] = []

        def add_reader(self, pid: int, argv0: str) -> None:
            self.pids.append(pid)

    rec = Rec()
    src = JournaldSource("abc123")
    src.start(Target(None), rec)
    hits: list[Hit] = []
    deadline = time.monotonic() + 5
    while not hits and time.monotonic() < deadline:
        hits += src.poll()
        time.sleep(0.02)
    assert [h.n for h in hits] == [2] and hits[0].fields["ID"] == "4242"
    assert (tmp_path / "argv").read_text().split() == ["-k", "-f", "-o", "json", "-n", "0"]
    pid = rec.pids[0]
    src.close()
    from nftrace.live.system import process_alive

    assert not process_alive(pid, None)
