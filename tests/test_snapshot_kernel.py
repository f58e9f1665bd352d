"""`nftrace snapshot` against the real kernel, in network namespaces.

* A scenario host is rebuilt in namespaces (tests/kernelhost.py), `nftrace snapshot --netns`
  captures it, and explaining the snapshot must give the kernel's own trace for random packets.
* The capture (pyroute2) agrees with iproute2's `ip -j` output for routes of every table, ip
  rules and addresses of both families.
* Taking a snapshot changes nothing: ruleset, /proc/net/ip{,6}_tables_names, ipsets, links,
  routes, rules and the namespace list are byte-identical before and after; a mistyped
  --netns fails without creating a namespace.
* A snapshot explains the same anywhere: in an empty namespace, with no `ip`/`iptables`/`nft`
  on PATH and with the machine's own files and sockets unreachable, the traces are equal.
* Tables, chains and rules iptables cannot show are reported in every trace.

NFTRACE_SEED fixes the seed; NFTRACE_PACKETS sets the packets per scenario (default 30 here).
"""

from __future__ import annotations

import builtins
import io
import json
import os
import random
import secrets
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nftrace.engine.packet import packet_from_dict
from nftrace.engine.pipeline import Engine
from nftrace.host.capture import capture
from nftrace.host.model import HostContext, Link, Route
from nftrace.host.parse import build_host_context, derive_routes, parse_addrs, parse_ip_rules, parse_routes
from nftrace.host.snapshot import Snapshot, load_snapshot
from tests.differential import compare, engine_packet, random_packets
from tests.kernelhost import KernelHost, KernelHostUnavailable, KPacket, unavailable_reason

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[1]
RULESETS = ROOT / "rulesets"
N = int(os.environ.get("NFTRACE_PACKETS", "30"))


def _skip() -> None:
    reason = unavailable_reason("nft")
    if reason:
        pytest.skip(reason)


def scenario_host(d: Path) -> HostContext:
    def opt(name: str) -> str | None:
        p = d / name
        return str(p) if p.is_file() else None

    sysctls = []
    if (d / "sysctl.txt").is_file():
        sysctls = [ln for ln in (d / "sysctl.txt").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return build_host_context(
        routes_file=opt("routes.txt"), addrs_file=opt("addrs.txt"), rules_file=opt("ip-rules.txt"), sysctls=sysctls
    )


def nftrace_cli(
    *argv: str, netns: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "nftrace", *argv]
    if netns is not None:
        cmd = [shutil.which("ip") or "ip", "netns", "exec", netns, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False, timeout=300)


def take_snapshot(node: str, path: Path) -> Snapshot:
    p = nftrace_cli("snapshot", "--netns", node, "-o", str(path))
    assert p.returncode == 0, p.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return load_snapshot(str(path))


def ns_run(ns: str, *argv: str, check: bool = True, input: str | None = None) -> str:
    p = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, input=input, check=False)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} in {ns}: {p.stderr}")
    return p.stdout


@pytest.fixture
def netns() -> Iterator[str]:
    """A bare namespace nft-snap-<hex> (deleted in teardown)."""
    _skip()
    name = f"nft-snap-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


class _Doc:
    """compare() wants a Trace; a trace JSON (from the command line) serves as one."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def to_json(self) -> dict[str, Any]:
        return self.doc


def _batch_line(kp: KPacket) -> dict[str, Any]:
    d: dict[str, Any] = {"origin": kp.origin, "proto": kp.proto, "src": kp.src, "dst": kp.dst}
    if kp.proto in ("tcp", "udp"):
        d.update(sport=kp.sport, dport=kp.dport)
    if kp.proto == "tcp":
        d["tcp_flags"] = kp.tcp_flags
    if kp.proto == "icmp":
        d["icmp_type"] = f"{kp.icmp_type}/{kp.icmp_code}"
    if kp.iif:
        d["iif"] = kp.iif
    if kp.mark:
        d["mark"] = kp.mark
    return d


# ------------------------------------------------------------------ explain on a snapshot == the kernel


@pytest.mark.parametrize("scenario", ["edge-router", "kube-node"])
def test_explain_on_snapshot_matches_kernel(scenario: str, tmp_path: Path) -> None:
    _skip()
    d = RULESETS / scenario
    text = (d / "iptables.rules").read_text()
    host = scenario_host(d)
    ipsets = (d / "ipsets.txt").read_text() if (d / "ipsets.txt").is_file() else None
    seed = int(os.environ.get("NFTRACE_SEED", random.randrange(1 << 30)))
    packets = random_packets(random.Random(seed), text, host, N)
    try:
        kh = KernelHost(host, text, ipsets=ipsets)
    except KernelHostUnavailable as e:
        pytest.skip(str(e))
    failures: list[str] = []
    with kh:
        snap = take_snapshot(kh.node, tmp_path / "snap.json")
        assert snap.doc["netns"] == kh.node and snap.backend == "nft"
        assert not snap.host.empty and snap.host.link("eth0") is not None
        # the harness' own tracing table is a native nftables table: flagged, not hidden
        assert any("nftrace_k" in w for w in snap.warnings_for("ipv4"))
        if ipsets is not None:
            assert snap.ipsets is not None and snap.ipsets.sets
        engine = Engine(snap.ruleset_for("ipv4"), snap.host_context("ipv4"), snap.ipsets, backend=snap.backend)
        for kp in packets:
            pkt, origin = engine_packet(kp)
            res = kh.send(kp)
            v = compare(engine.trace(pkt, origin), res)
            if not v.ok:
                failures.append(f"--- {kp}\n{v.message}")
    assert not failures, (
        f"{len(failures)}/{len(packets)} packets explained on the snapshot disagree with the kernel "
        f"(NFTRACE_SEED={seed}):\n" + "\n".join(failures[:3])
    )


def test_lazily_created_chains(tmp_path: Path) -> None:
    """Rules added one by one with iptables-nft create only the base chains they need, though
    iptables-nft-save prints every built-in chain: the snapshot traces only those that exist."""
    _skip()
    links = [
        Link(1, "lo", kind="loopback", addresses=["127.0.0.1/8"]),
        Link(2, "eth0", kind="veth", addresses=["192.168.50.10/24"]),
        Link(3, "eth1", kind="veth", addresses=["10.244.2.1/24"]),
    ]
    host = HostContext(
        links=links,
        routes=[*derive_routes(links), Route(dst="default", gateway="192.168.50.1", oif="eth0")],
        sysctls={"net.ipv4.ip_forward": "1"},
        empty=False,
    )
    try:
        kh = KernelHost(host, "")
    except KernelHostUnavailable as e:
        pytest.skip(str(e))
    seed = int(os.environ.get("NFTRACE_SEED", random.randrange(1 << 30)))
    failures: list[str] = []
    with kh:
        kh.run(["iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-o", "eth0", "-j", "MASQUERADE"])
        kh.run(["iptables-nft", "-A", "FORWARD", "-i", "eth1", "-p", "tcp", "-j", "ACCEPT"])
        kh.run(["iptables-nft", "-A", "INPUT", "-p", "icmp", "-j", "ACCEPT"])  # local delivery shows in the trace
        kh.run(["iptables-nft", "-t", "mangle", "-A", "PREROUTING", "-p", "udp", "-j", "MARK", "--set-mark", "3"])
        kh.refresh_handles()
        snap = take_snapshot(kh.node, tmp_path / "s.json")
        rs = snap.ruleset_for("ipv4")
        assert sorted(rs.tables["nat"].chains) == ["POSTROUTING"]
        assert sorted(rs.tables["mangle"].chains) == ["PREROUTING"]
        assert sorted(rs.tables["filter"].chains) == ["FORWARD", "INPUT"]
        engine = Engine(rs, snap.host_context("ipv4"), snap.ipsets)
        text = snap.rules_text("ipv4") or ""
        for kp in random_packets(random.Random(seed), text, host, max(10, N // 2)):
            pkt, origin = engine_packet(kp)
            res = kh.send(kp)
            v = compare(engine.trace(pkt, origin), res)
            if not v.ok:
                failures.append(f"--- {kp}\n{v.message}")
    assert not failures, f"NFTRACE_SEED={seed}:\n" + "\n".join(failures[:3])


# ------------------------------------------------------------------ capture == iproute2


def _route_keys(routes: list[Route]) -> set[tuple[Any, ...]]:
    # IPv6 routes have no scope in the kernel (rtm_scope is always 0): `ip` prints none, and
    # nftrace.host.parse calls a local one "host"; the snapshot keeps the kernel's value
    return {
        (r.family, r.table, r.type, r.dst, r.gateway, r.oif, r.prefsrc, r.metric,
         r.scope if r.family == "ipv4" else None, tuple(sorted(r.nexthops)))
        for r in routes
    }  # fmt: skip


def test_capture_agrees_with_iproute2(netns: str) -> None:
    n = ["ip", "-n", netns]
    cmds = [
        "link add eth0 type veth peer name peer0",
        "link add eth1 type veth peer name peer1",
        "link add br0 type bridge",
        "link set peer1 master br0",
        "link set eth0 up",
        "link set eth1 up",
        "link set peer0 up",
        "link set br0 up",
        "addr add 192.168.50.10/24 dev eth0",
        "addr add 192.168.50.11/24 dev eth0",
        "addr add 10.9.0.1 peer 10.9.0.2/32 dev eth1",
        "-6 addr add 2001:db8:50::10/64 dev eth0 nodad",
        "route add default via 192.168.50.1 dev eth0",
        "route add 10.20.0.0/16 nexthop via 192.168.50.2 weight 1 nexthop via 192.168.50.3 weight 3",
        "route add blackhole 10.66.0.0/16 table 100",
        "route add prohibit 10.67.0.0/16 table 100 metric 5",
        "route add unreachable 10.68.0.0/16",
        "route add throw 10.69.0.0/16 table 100",
        "route add 172.16.0.0/12 via 192.168.50.1 dev eth0 table 200 src 192.168.50.11 proto static",
        "-6 route add default via 2001:db8:50::1 dev eth0 metric 100",
        "-6 route add 2001:db8:66::/48 via 2001:db8:50::5 table 300",
        "-6 route add blackhole 2001:db8:bad::/48",
        "rule add fwmark 0x2/0xff lookup 100 pref 100",
        "rule add from 10.0.0.0/8 iif eth1 lookup 200 pref 110",
        "rule add not to 192.168.0.0/16 oif eth0 lookup main pref 120",
        "rule add ipproto tcp dport 80-90 sport 1000 lookup 100 pref 130",
        "rule add uidrange 1000-2000 lookup 200 pref 140",
        "rule add lookup main suppress_prefixlength 0 pref 90",
        "rule add tos 0x10 goto 200 pref 150",
        "rule add unreachable from 10.99.0.0/16 pref 160",
        "-6 rule add from 2001:db8:50::/64 lookup 300 pref 100",
    ]
    for c in cmds:
        subprocess.run([*n, *c.split()], check=True)
    doc = capture(netns)
    snap = Snapshot.from_doc(doc, "<test>")
    got = snap.host

    def ipj(*args: str) -> str:
        return subprocess.run([*n, "-j", *args], check=True, capture_output=True, text=True).stdout

    want_routes = parse_routes(ipj("-4", "route", "show", "table", "all"), "ip4") + parse_routes(
        ipj("-6", "route", "show", "table", "all"), "ip6", family="ipv6"
    )
    assert _route_keys(got.routes) == _route_keys(want_routes)
    want_rules = parse_ip_rules(ipj("-4", "rule"), "r4") + parse_ip_rules(ipj("-6", "rule"), "r6")
    assert sorted(got.rules, key=lambda r: (r.family, r.priority, str(r))) == sorted(
        want_rules, key=lambda r: (r.family, r.priority, str(r))
    )
    want_links = {lk.name: lk for lk in parse_addrs(ipj("addr"), "a")}
    assert {lk.name for lk in got.links} == set(want_links)
    for lk in got.links:
        w = want_links[lk.name]
        assert lk.addresses == w.addresses, lk.name
        assert lk.peers == w.peers, lk.name
        assert (lk.mac, lk.up, lk.index) == (w.mac, w.up, w.index), lk.name
    assert got.link("peer1").master == "br0"  # type: ignore[union-attr]
    assert got.link("br0").kind == "bridge" and got.link("lo").kind == "loopback"  # type: ignore[union-attr]
    assert got.sysctls["net.ipv4.conf.eth0.rp_filter"] in ("0", "1", "2")
    assert "net.ipv6.conf.all.forwarding" in got.sysctls and "net.ipv4.ip_forward" in got.sysctls


# ------------------------------------------------------------------ read-only


def _state(ns: str) -> dict[str, str]:
    """Everything a snapshot could disturb, as text."""
    out = {
        "nft": ns_run(ns, "nft", "list", "ruleset"),
        "ip_tables_names": ns_run(ns, "cat", "/proc/net/ip_tables_names", check=False),
        "ip6_tables_names": ns_run(ns, "cat", "/proc/net/ip6_tables_names", check=False),
        "ipset": ns_run(ns, "ipset", "save"),
        "links": ns_run(ns, "ip", "-d", "link", "show"),
        "routes4": ns_run(ns, "ip", "-4", "route", "show", "table", "all"),
        "routes6": ns_run(ns, "ip", "-6", "route", "show", "table", "all"),
        "rules": ns_run(ns, "ip", "rule") + ns_run(ns, "ip", "-6", "rule"),
        # (no namespace is created: see test_mistyped_netns_fails_and_creates_nothing; the global list
        # changes under other tests running at the same time)
    }
    if os.path.exists("/proc/modules"):
        out["modules"] = " ".join(sorted(line.split()[0] for line in Path("/proc/modules").read_text().splitlines()))
    return out


def _populate(ns: str, legacy: bool) -> None:
    ns_run(ns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    ns_run(ns, "ip", "addr", "add", "192.168.50.10/24", "dev", "eth0")
    ns_run(ns, "ip", "link", "set", "eth0", "up")
    ns_run(ns, "ipset", "create", "blk", "hash:net")
    ns_run(ns, "ipset", "add", "blk", "10.66.0.0/16")
    ns_run(
        ns,
        "iptables-nft-restore",
        input="*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        "-A INPUT -m set --match-set blk src -j DROP\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n",
    )
    ns_run(
        ns,
        "nft",
        "-f",
        "-",
        input="table inet fw {\n chain in { type filter hook input priority 10; policy accept; }\n}\n",
    )
    if legacy:
        ns_run(ns, "iptables-legacy-restore", input="*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n"
               ":FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
               "-A PREROUTING -p udp -j MARK --set-xmark 0x1/0xffffffff\nCOMMIT\n")  # fmt: skip


@pytest.mark.parametrize("legacy", [False, True], ids=["nft-only", "with-legacy-tables"])
def test_snapshot_is_read_only(netns: str, tmp_path: Path, legacy: bool) -> None:
    _populate(netns, legacy)
    before = _state(netns)
    assert bool(before["ip_tables_names"].strip()) == legacy
    assert before["ip6_tables_names"].strip() == ""
    snap = take_snapshot(netns, tmp_path / "s.json")
    after = _state(netns)
    for key in before:
        assert after[key] == before[key], f"{key} changed by taking a snapshot"
    ipt = snap.doc["iptables"]
    assert ipt["legacy"]["ipv6"] is None  # no ip6 legacy tables: ip6tables-legacy-save was not run
    if legacy:
        assert "-A PREROUTING -p udp -j MARK" in ipt["legacy"]["ipv4"]
        assert any("legacy" in w for w in snap.warnings)
        assert snap.backend == "nft"  # both hold rules: the nft ones are traced, with a warning
    else:
        assert ipt["legacy"]["ipv4"] is None
    assert "-A INPUT -m set --match-set blk src -j DROP" in ipt["ipv4"]
    assert "add blk 10.66.0.0/16" in (snap.doc["ipsets"] or "")
    tables = {(t["family"], t["name"]): t for t in snap.doc["nftables"]["tables"]}
    assert tables[("ip", "filter")]["owner"] == "iptables-nft"
    assert tables[("inet", "fw")]["owner"] == "native"


def test_mistyped_netns_fails_and_creates_nothing(tmp_path: Path) -> None:
    _skip()
    name = f"nft-snap-nosuch-{secrets.token_hex(4)}"
    p = nftrace_cli("snapshot", "--netns", name, "-o", str(tmp_path / "x.json"))
    assert p.returncode == 2
    assert "no such network namespace" in p.stderr and "Traceback" not in p.stderr
    assert not os.path.exists(f"/var/run/netns/{name}")
    assert not (tmp_path / "x.json").exists()
    p = nftrace_cli("explain", "--host", "--netns", name, "tcp 1.2.3.4:1 > 5.6.7.8:2 iif eth0")
    assert p.returncode == 2 and not os.path.exists(f"/var/run/netns/{name}")


def test_pyroute2_netns_flags_zero_does_not_create() -> None:
    """The fact capture relies on: NetNS(name, flags=0) raises for a missing namespace."""
    _skip()
    from pyroute2 import NetNS  # type: ignore[import-untyped,unused-ignore]

    name = f"nft-snap-nosuch-{secrets.token_hex(4)}"
    with pytest.raises(FileNotFoundError):
        NetNS(name, flags=0)
    assert not os.path.exists(f"/var/run/netns/{name}")


# ------------------------------------------------------------------ explained anywhere


def test_snapshot_explains_identically_anywhere(tmp_path: Path, netns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The traces of a snapshot equal the kernel's, computed (1) here, (2) in an empty namespace with no
    ip/iptables/nft/ipset on PATH, (3) with subprocesses, /proc, /sys, /etc and name lookups blocked."""
    d = RULESETS / "edge-router"
    text = (d / "iptables.rules").read_text()
    host = scenario_host(d)
    seed = int(os.environ.get("NFTRACE_SEED", random.randrange(1 << 30)))
    packets = random_packets(random.Random(seed), text, host, max(12, N // 2))
    try:
        kh = KernelHost(host, text, ipsets=(d / "ipsets.txt").read_text())
    except KernelHostUnavailable as e:
        pytest.skip(str(e))
    with kh:
        path = tmp_path / "s.json"
        take_snapshot(kh.node, path)
        results = [kh.send(kp) for kp in packets]
    batch = tmp_path / "b.jsonl"
    batch.write_text("".join(json.dumps(_batch_line(kp)) + "\n" for kp in packets))

    here = nftrace_cli("explain", "--snapshot", str(path), "--batch", str(batch))
    assert here.returncode == 0, here.stderr
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = {"PATH": str(empty_bin), "LANG": "C", "PYTHONPATH": str(ROOT)}
    there = nftrace_cli("explain", "--snapshot", str(path), "--batch", str(batch), netns=netns, env=env)
    assert there.returncode == 0, there.stderr
    assert there.stdout == here.stdout

    docs = [json.loads(line) for line in here.stdout.splitlines()]
    failures = []
    for kp, res, doc in zip(packets, results, docs, strict=True):
        v = compare(_Doc(doc), res)  # type: ignore[arg-type]
        if not v.ok:
            failures.append(f"--- {kp}\n{v.message}")
    assert not failures, f"NFTRACE_SEED={seed}:\n" + "\n".join(failures[:3])

    # in this process, with everything of this machine out of reach
    snap = load_snapshot(str(path))
    real_open = builtins.open

    def guarded_open(file: Any, *a: Any, **k: Any) -> Any:
        if str(file).startswith(("/proc", "/sys", "/etc", "/var/run", "/run")):
            raise AssertionError(f"explaining a snapshot read {file}")
        return real_open(file, *a, **k)

    def forbidden(*a: Any, **k: Any) -> Any:
        raise AssertionError(f"explaining a snapshot ran or looked up {a[:1]}")

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(subprocess, "Popen", forbidden)
    monkeypatch.setattr(os, "system", forbidden)
    import socket

    for fn in ("getservbyname", "getprotobyname", "gethostbyname", "getaddrinfo", "gethostname"):
        monkeypatch.setattr(socket, fn, forbidden)
    engine = Engine(snap.ruleset_for("ipv4"), snap.host_context("ipv4"), snap.ipsets, backend=snap.backend)
    for kp, doc in zip(packets, docs, strict=True):
        pkt, origin = packet_from_dict(_batch_line(kp))
        assert engine.trace(pkt, origin).to_json()["branches"] == doc["branches"]


def test_explain_host_equals_explain_snapshot(tmp_path: Path) -> None:
    _skip()
    d = RULESETS / "edge-router"
    text = (d / "iptables.rules").read_text()
    try:
        kh = KernelHost(scenario_host(d), text, ipsets=(d / "ipsets.txt").read_text())
    except KernelHostUnavailable as e:
        pytest.skip(str(e))
    flows = [
        "tcp 198.51.100.77:40000 > 203.0.113.2:443 iif eth0",
        "udp 192.168.10.20:5000 > 8.8.8.8:53 iif eth2",
        "tcp 192.168.10.200:5000 > 8.8.8.8:25 iif eth2",
    ]
    with kh:
        path = tmp_path / "s.json"
        take_snapshot(kh.node, path)
        for flow in flows:
            live = nftrace_cli("explain", "--host", "--netns", kh.node, flow, "--format", "json")
            file = nftrace_cli("explain", "--snapshot", str(path), flow, "--format", "json")
            assert live.returncode == 0 and file.returncode == 0, live.stderr + file.stderr
            a, b = json.loads(live.stdout), json.loads(file.stdout)
            assert a["branches"] == b["branches"]


# ------------------------------------------------------------------ what iptables cannot show


def test_rules_iptables_cannot_show_are_reported(netns: str, tmp_path: Path) -> None:
    ns_run(netns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    ns_run(netns, "ip", "addr", "add", "192.168.50.10/24", "dev", "eth0")
    ns_run(netns, "ip", "link", "set", "eth0", "up")
    ns_run(netns, "iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
    # a rule added with nft to iptables' table: iptables-nft-save 1.8.9 prints it as `-A INPUT -j DROP`
    ns_run(netns, "nft", "add", "rule", "ip", "filter", "INPUT", "ip", "saddr", "{ 10.1.1.1, 10.2.2.2 }", "drop")
    # a native table with a base chain
    ns_run(
        netns,
        "nft",
        "-f",
        "-",
        input="table inet fw {\n chain in { type filter hook input priority 0; policy drop; }\n}\n",
    )
    # a table iptables-nft refuses to print at all
    ns_run(netns, "iptables-nft", "-t", "mangle", "-A", "PREROUTING", "-j", "ACCEPT")
    ns_run(netns, "nft", "add", "rule", "ip", "mangle", "PREROUTING", "ct", "mark", "set", "5")
    snap = take_snapshot(netns, tmp_path / "s.json")
    assert "-A INPUT -j DROP" in (snap.rules_text("ipv4") or "")  # what iptables-nft-save makes of the set rule
    tables = {(t["family"], t["name"]): t for t in snap.doc["nftables"]["tables"]}
    assert tables[("ip", "mangle")]["owner"] == "iptables-nft-incompatible"
    assert [f["rule"] for f in tables[("ip", "filter")]["flagged"]] == [2]
    assert "inet fw" in snap.doc["nftables"]["text"]
    p = nftrace_cli(
        "explain", "--snapshot", str(tmp_path / "s.json"), "tcp 1.2.3.4:1 > 192.168.50.10:22 iif eth0", "-f", "json"
    )
    assert p.returncode == 0, p.stderr
    warnings = json.loads(p.stdout)["warnings"]
    assert any("inet fw" in w and "policy drop" in w for w in warnings)
    assert any("ip filter INPUT rule 2: anonymous set" in w for w in warnings)
    assert any("ip mangle" in w and "incompatible" in w for w in warnings)


def test_legacy_only_host(tmp_path: Path) -> None:
    """A host whose rules are all in legacy tables: the snapshot traces the legacy backend (its x_tables
    semantics: every built-in chain of a loaded table is traversed) and agrees with the kernel."""
    reason = unavailable_reason("legacy")
    if reason:
        pytest.skip(reason)
    d = RULESETS / "docker-host"
    text = (d / "iptables.rules").read_text()
    host = scenario_host(d)
    seed = int(os.environ.get("NFTRACE_SEED", random.randrange(1 << 30)))
    packets = random_packets(random.Random(seed), text, host, max(10, N // 2))
    try:
        kh = KernelHost(host, text, backend="legacy")
    except KernelHostUnavailable as e:
        pytest.skip(str(e))
    failures: list[str] = []
    with kh:
        path = tmp_path / "s.json"
        snap = take_snapshot(kh.node, path)
        assert snap.backend == "legacy" and snap.backend_for("ipv4") == "legacy"
        assert snap.doc["iptables"]["ipv4"] == snap.doc["iptables"]["legacy"]["ipv4"]
        # the harness traces with `-j TRACE` at the head of raw PREROUTING/OUTPUT: not part of the host
        doc = json.loads(path.read_text())
        v4 = doc["iptables"]["ipv4"].replace("-A PREROUTING -j TRACE\n", "", 1).replace("-A OUTPUT -j TRACE\n", "", 1)
        doc["iptables"]["ipv4"] = v4
        snap = Snapshot.from_doc(doc, str(path))
        engine = Engine(snap.ruleset_for("ipv4"), snap.host_context("ipv4"), snap.ipsets, backend="legacy")
        for kp in packets:
            pkt, origin = engine_packet(kp)
            res = kh.send(kp)
            v = compare(engine.trace(pkt, origin), res, legacy=True)
            if not v.ok:
                failures.append(f"--- {kp}\n{v.message}")
    assert not failures, f"NFTRACE_SEED={seed}:\n" + "\n".join(failures[:3])
