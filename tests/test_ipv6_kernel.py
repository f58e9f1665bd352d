"""Kernel-differential tests for IPv6: ip6tables rules and IPv6 routes, traced by the engine and by
the kernel (tests/kernelhost.py with rules_v6; IPv6 events come from `nft monitor trace`).

* a hand-written ip6tables ruleset exercising DNAT with `[addr]:port`, SNAT/MASQUERADE, REDIRECT,
  user chains with jumps, gotos and returns, a DROP policy, ICMPv6 type matches, REJECT with
  ICMPv6 types, `-s`/`-d` prefixes, marks and policy routing on the mark;
* the same through a snapshot (`nftrace snapshot --netns` of the namespace host, explained
  from the file);
* dual-stack kube-proxy: the IPv6 half kube-proxy writes with ip6tables-restore has the shape of
  its IPv4 half with IPv6 addresses; the corpus' kube-proxy dumps are turned into such halves
  (every IPv4 address mapped into fd00::/8) and compared on the kernel;
* the corpus' ip6tables dumps (Docker's ip6tables halves, Fedora's defaults ...).

NFTRACE_SEED fixes the seed (printed on failure); NFTRACE_PACKETS sets the packets per ruleset.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nftrace.engine.pipeline import Engine
from nftrace.errors import InputError
from nftrace.host.model import DEFAULT_IPV4_RULES, DEFAULT_IPV6_RULES, HostContext, IpRule, Link, Route
from nftrace.host.parse import derive_routes
from nftrace.host.snapshot import load_snapshot
from nftrace.ruleset.parser import parse_rules
from tests.differential import compare, engine_packet, mentioned
from tests.kernelhost import KernelHost, KernelHostError, KernelHostUnavailable, KPacket, unavailable_reason

pytestmark = pytest.mark.kernel

N = int(os.environ.get("NFTRACE_PACKETS", "60"))
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
ROOT = Path(__file__).resolve().parents[1]

RULES_V4_EMPTY = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"

# Hand-written ip6tables ruleset: every line was loaded by ip6tables-nft-restore 1.8.9.
RULES_V6 = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -s 2001:db8:bad::/48 -j DROP
-A PREROUTING -p udp -m udp --dport 5353 -j CT --notrack
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -i eth1 -p tcp -m tcp --dport 443 -j MARK --set-xmark 0x7/0xffffffff
-A OUTPUT -d 2001:db8:77::/64 -p udp -j MARK --set-xmark 0x7/0xffffffff
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:SVC - [0:0]
:SEP-A - [0:0]
-A PREROUTING -j SVC
-A OUTPUT -d ::1/128 -p tcp -m tcp --dport 8081 -j REDIRECT --to-ports 22
-A OUTPUT -j SVC
-A POSTROUTING -s fd00:244:2::/64 -o eth0 -j MASQUERADE
-A POSTROUTING -s fd00:244:3::/64 -o eth0 -j SNAT --to-source 2001:db8:50::99
-A SVC -d 2001:db8:50::10/128 -p tcp -m tcp --dport 8080 -j SEP-A
-A SVC -d fd00:96::10/128 -p udp -m udp --dport 53 -j DNAT --to-destination [fd00:244:2::53]:5300
-A SVC -d fd00:96::11/128 -p tcp -j DNAT --to-destination fd00:244:2::6
-A SEP-A -s fd00:244:2::5/128 -j RETURN
-A SEP-A -p tcp -j DNAT --to-destination [fd00:244:2::5]:80
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:FWD - [0:0]
:ICMP6 - [0:0]
:IN-TCP - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p ipv6-icmp -j ICMP6
-A INPUT -p tcp -g IN-TCP
-A INPUT -p udp -m udp --dport 53 -j REJECT --reject-with icmp6-adm-prohibited
-A INPUT -p udp -m multiport --dports 500,4500 -j ACCEPT
-A FORWARD -j FWD
-A FWD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FWD -d fd00:244:2::/64 -p tcp -m tcp --dport 80 -j ACCEPT
-A FWD -d fd00:244:2::53/128 -p udp -j ACCEPT
-A FWD ! -d 2001:db8:77::/64 -o eth0 -j ACCEPT
-A FWD -m mark --mark 0x7 -j ACCEPT
-A FWD -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j ACCEPT
-A FWD -j REJECT --reject-with icmp6-port-unreachable
-A ICMP6 -p ipv6-icmp -m icmp6 --icmpv6-type 128 -m limit --limit 1000/sec -j ACCEPT
-A ICMP6 -p ipv6-icmp -m icmp6 --icmpv6-type 1 -j ACCEPT
-A ICMP6 -p ipv6-icmp -j DROP
-A IN-TCP -p tcp -m tcp --dport 22 -j ACCEPT
-A IN-TCP -s 2001:db8:50::/64 -p tcp -m tcp --dport 80 -j ACCEPT
-A IN-TCP -p tcp -j REJECT --reject-with tcp-reset
COMMIT
"""


def host_v6() -> HostContext:
    """eth0 uplink (2001:db8:50::10/64, default via ::1), eth1 pods (fd00:244:2::1/64), eth2 (fd00:244:3::1/64);
    the mark 0x7 routes by table 100 through eth2."""
    links = [
        Link(1, "lo", kind="loopback", addresses=["127.0.0.1/8", "::1/128"]),
        Link(2, "eth0", kind="veth", addresses=["192.168.50.10/24", "2001:db8:50::10/64"]),
        Link(3, "eth1", kind="veth", addresses=["10.244.2.1/24", "fd00:244:2::1/64"]),
        Link(4, "eth2", kind="veth", addresses=["10.244.3.1/24", "fd00:244:3::1/64"]),
    ]
    return HostContext(
        links=links,
        routes=[
            *derive_routes(links),
            Route(dst="default", gateway="2001:db8:50::1", oif="eth0", family="ipv6", metric=1024),
            Route(dst="fd00:96::/64", gateway="fd00:244:2::fe", oif="eth1", family="ipv6", metric=1024),
            Route(table="100", dst="default", gateway="fd00:244:3::fe", oif="eth2", family="ipv6", metric=1024),
        ],
        rules=[
            *DEFAULT_IPV4_RULES,
            IpRule(0, table="local", family="ipv6"),
            IpRule(100, table="100", fwmark=0x7, family="ipv6"),
            IpRule(32766, table="main", family="ipv6"),
        ],
        sysctls={"net.ipv6.conf.all.forwarding": "1", "net.ipv4.ip_forward": "1"},
        empty=False,
    )


# ------------------------------------------------------------------ packets


def random_packets6(rng: random.Random, text: str, host: HostContext, n: int) -> list[KPacket]:
    addrs, ports = mentioned(text, host, "ipv6")
    local = sorted(str(i.ip) for _, i in host.addresses("ipv6") if not i.ip.is_link_local)
    links = [lk.name for lk in host.links if lk.name not in ("lo", "*")]
    out: list[KPacket] = []
    for _ in range(n):
        proto = rng.choice(["tcp", "tcp", "udp", "udp", "icmpv6"])
        origin = "local" if rng.random() < 0.3 else "ingress"
        dst = rng.choice(addrs)
        if origin == "ingress":
            src = rng.choice([a for a in addrs if a not in local and a != "::1"])
        else:
            src = rng.choice([a for a in local if a != "::1"]) if dst != "::1" else "::1"
        sport = rng.choice([40000 + rng.randrange(20000), *ports]) if proto != "icmpv6" else None
        dport = rng.choice(ports) if proto != "icmpv6" else None
        out.append(
            KPacket(
                origin=origin,
                proto=proto,
                src=src,
                dst=dst,
                sport=sport,
                dport=dport,
                icmp_type=128,
                iif=rng.choice(links) if origin == "ingress" else None,
            )
        )
    return out


def _seed() -> int:
    return int(os.environ.get("NFTRACE_SEED", random.randrange(1 << 30)))


def _skip_unless_kernel() -> None:
    reason = unavailable_reason("nft")
    if reason:
        pytest.skip(reason)


def _input_observable(engine: Engine) -> bool:
    """Whether the kernel's trace can show local delivery: some table has an INPUT base chain."""
    return any("INPUT" in t.chains for t in engine.ruleset.tables.values())


def run_differential(engine: Engine, kh: KernelHost, packets: list[KPacket]) -> list[str]:
    failures: list[str] = []
    observable = _input_observable(engine)
    for kp in packets:
        pkt, origin = engine_packet(kp)
        trace = engine.trace(pkt, origin)
        # a packet the engine says no hook sees (ip6_rcv_core drops it) gives no trace line to wait for
        unseen = all(
            (b.result or {}).get("at", {}) and b.result["at"].get("stage") == "receive" for b in trace.branches
        )
        res = kh.send(kp, timeout=0.6 if unseen else 2.0)
        v = compare(trace, res)
        if not v.ok and not observable and "predicted local delivery" in v.message and not res.events:
            continue  # a dump without INPUT chains: the kernel's trace cannot show local delivery
        if not v.ok:
            failures.append(f"--- {kp}\n{v.message}")
    return failures


# ------------------------------------------------------------------ tests


def test_ipv6_ruleset_matches_kernel() -> None:
    _skip_unless_kernel()
    host = host_v6()
    rs = parse_rules(RULES_V6, "<rules_v6>", family="ipv6")
    engine = Engine(rs, host)
    seed = _seed()
    rng = random.Random(seed)
    packets = random_packets6(rng, RULES_V6, host, N)
    # and the paths random packets rarely take
    packets += [
        KPacket("ingress", "tcp", "2001:db8:99::9", "2001:db8:50::10", 40001, 8080, iif="eth0"),
        KPacket("ingress", "tcp", "fd00:244:2::5", "2001:db8:50::10", 40002, 8080, iif="eth1"),
        KPacket("ingress", "udp", "fd00:244:2::7", "fd00:96::10", 40003, 53, iif="eth1"),
        KPacket("ingress", "tcp", "fd00:244:2::7", "fd00:96::11", 40004, 443, iif="eth1"),
        KPacket("ingress", "tcp", "fd00:244:3::7", "2001:db8:77::1", 40005, 443, iif="eth2"),
        KPacket("ingress", "tcp", "fd00:244:2::7", "2001:db8:77::1", 40006, 443, iif="eth1"),
        KPacket("ingress", "icmpv6", "2001:db8:99::9", "2001:db8:50::10", iif="eth0", icmp_type=128),
        KPacket("ingress", "icmpv6", "2001:db8:99::9", "2001:db8:50::10", iif="eth0", icmp_type=1, icmp_code=4),
        KPacket("ingress", "icmpv6", "2001:db8:99::9", "2001:db8:50::10", iif="eth0", icmp_type=2),
        KPacket("ingress", "udp", "2001:db8:bad::1", "2001:db8:50::10", 40007, 53, iif="eth0"),
        KPacket("ingress", "udp", "2001:db8:99::9", "2001:db8:50::10", 40008, 5353, iif="eth0"),
        KPacket("ingress", "udp", "2001:db8:99::9", "2001:db8:50::10", 40009, 53, iif="eth0"),
        KPacket("local", "tcp", "::1", "::1", 40010, 8081),
        KPacket("local", "udp", "2001:db8:50::10", "2001:db8:77::1", 40011, 53),
        KPacket("local", "tcp", "2001:db8:50::10", "2001:db8:50::10", 40012, 8080),
        KPacket("ingress", "tcp", "2001:db8:99::9", "fd00:244:2::5", 40013, 80, iif="eth0", ttl=1),
    ]
    try:
        kh = KernelHost(host, RULES_V4_EMPTY, rules_v6=RULES_V6)
    except KernelHostUnavailable as e:
        pytest.skip(str(e))
    with kh:
        failures = run_differential(engine, kh, packets)
    assert not failures, (
        f"{len(failures)}/{len(packets)} IPv6 packets disagree with the kernel (NFTRACE_SEED={seed}):\n"
        + "\n".join(failures[:3])
    )


def test_ipv6_explain_on_snapshot_matches_kernel(tmp_path: Path) -> None:
    """`nftrace snapshot --netns` of the IPv6 host, explained from the file (IPv6 dump chosen by the packet)."""
    _skip_unless_kernel()
    host = host_v6()
    seed = _seed()
    rng = random.Random(seed)
    packets = random_packets6(rng, RULES_V6, host, max(10, N // 3))
    try:
        kh = KernelHost(host, RULES_V4_EMPTY, rules_v6=RULES_V6)
    except KernelHostUnavailable as e:
        pytest.skip(str(e))
    with kh:
        kh.send(KPacket("local", "icmpv6", "::1", "::1", icmp_type=128))  # the IPv6 tracer is up
        out = tmp_path / "snap.json"
        p = subprocess.run(
            [sys.executable, "-m", "nftrace", "snapshot", "--netns", kh.node, "-o", str(out), "-q"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        assert p.returncode == 0, p.stderr
        snap = load_snapshot(str(out))
        assert snap.rules_text("ipv6") and "-A SVC" in str(snap.rules_text("ipv6"))
        engine = Engine(snap.ruleset_for("ipv6"), snap.host_context("ipv6"), snap.ipsets, backend=snap.backend)
        failures = run_differential(engine, kh, packets)
    assert not failures, (
        f"{len(failures)}/{len(packets)} IPv6 packets explained on the snapshot disagree with the kernel "
        f"(NFTRACE_SEED={seed}):\n" + "\n".join(failures[:3])
    )


# ------------------------------------------------------------------ dual-stack kube-proxy


def _v6_of(addr: str) -> str:
    """An IPv4 address mapped into fd00::/8, keeping its 32 bits (10.96.0.10 -> fd00::a60:a)."""
    return str(ipaddress.IPv6Address((0xFD00 << 112) | int(ipaddress.IPv4Address(addr))))


_V4_CIDR = re.compile(r"(?<![\w.:])(\d{1,3}(?:\.\d{1,3}){3})(?:/(\d{1,2}))?(?::(\d+))?(?![\w.])")


def to_ipv6_half(text: str) -> str:
    """The ip6tables-restore input kube-proxy writes for the IPv6 family, from its IPv4 one: addresses in
    fd00::/8 (/P -> /96+P), `[addr]:port` NAT targets, ICMPv6 instead of ICMP rejects, ::1 for 127.0.0.1."""

    def addr(m: re.Match[str]) -> str:
        a, plen, port = m.group(1), m.group(2), m.group(3)
        try:
            ipaddress.IPv4Address(a)
        except ValueError:
            return m.group(0)
        v6 = "::1" if a == "127.0.0.1" else _v6_of(a)
        if plen is not None:
            v6 = f"{v6}/{96 + int(plen) if a != '127.0.0.1' else 128}"
        if port is not None:
            return f"[{v6}]:{port}"
        return v6

    out = []
    for line in text.splitlines():
        if line.startswith("-A") or line.startswith("-I"):
            line = line.replace("icmp-port-unreachable", "icmp6-port-unreachable")
            line = line.replace("icmp-host-unreachable", "icmp6-addr-unreachable")
            line = line.replace("icmp-net-unreachable", "icmp6-no-route")
            line = line.replace("icmp-admin-prohibited", "icmp6-adm-prohibited")
            line = re.sub(
                r"-m addrtype --(src|dst)-type LOCAL -m addrtype", r"-m addrtype --\1-type LOCAL -m addrtype", line
            )
            line = _V4_CIDR.sub(addr, line)
        out.append(line)
    return "\n".join(out) + "\n"


def kube_host6(text: str) -> HostContext:
    """A node for a kube-proxy IPv6 half: the addresses of its KUBE-SEP DNAT targets on a pod link."""
    seps = sorted({m.group(1) for m in re.finditer(r"--to-destination \[([0-9a-f:]+)\]", text)})
    pod_net = (
        ipaddress.IPv6Network(f"{seps[0]}/120", strict=False) if seps else ipaddress.IPv6Network("fd00::af4:100/120")
    )
    node = _v6_of("192.168.50.10")
    links = [
        Link(1, "lo", kind="loopback", addresses=["127.0.0.1/8", "::1/128"]),
        Link(2, "eth0", kind="veth", addresses=["192.168.50.10/24", f"{node}/120"]),
        Link(3, "cni0", kind="veth", addresses=["10.244.1.1/24", f"{pod_net.network_address + 1}/120"]),
    ]
    return HostContext(
        links=links,
        routes=[
            *derive_routes(links),
            Route(dst="default", gateway=_v6_of("192.168.50.1"), oif="eth0", family="ipv6", metric=1024),
        ],
        rules=[*DEFAULT_IPV4_RULES, *DEFAULT_IPV6_RULES],
        sysctls={"net.ipv6.conf.all.forwarding": "1", "net.ipv4.ip_forward": "1"},
        empty=False,
    )


def _kube_dumps() -> list[Path]:
    """Real iptables-nft-save output of kube-proxy's restore data (its IPv4 half)."""
    d = CORPUS / "kubernetes-kube-proxy-iptables" / "roundtrip-iptables-1.8.9"
    if not d.is_dir():
        return []
    names = (
        "TestOverallIPTablesRules.iptables-nft-save.rules",
        "TestSyncProxyRulesRepeated__1-initial-full-sync.iptables-nft-save.rules",
    )
    return [d / n for n in names if (d / n).is_file()]


@pytest.mark.parametrize("path", _kube_dumps(), ids=lambda p: p.name)
def test_dual_stack_kube_proxy_ipv6_half_matches_kernel(path: Path) -> None:
    _skip_unless_kernel()
    text = to_ipv6_half(path.read_text())
    try:
        rs = parse_rules(text, str(path), family="ipv6")
    except InputError as e:
        pytest.fail(f"the IPv6 half of {path.name} does not parse: {e.one_line()}")
    host = kube_host6(text)
    engine = Engine(rs, host)
    seed = _seed()
    rng = random.Random(seed)
    packets = random_packets6(rng, text, host, max(15, N // 2))
    try:
        kh = KernelHost(host, RULES_V4_EMPTY, rules_v6=text)
    except KernelHostUnavailable as e:
        pytest.skip(str(e))
    except KernelHostError as e:
        if "nfacct" in str(e):
            pytest.skip(f"kube-proxy half needs nfacct objects: {e}")
        raise
    with kh:
        failures = run_differential(engine, kh, packets)
    assert not failures, (
        f"{len(failures)}/{len(packets)} packets of the IPv6 half of {path.name} disagree (NFTRACE_SEED={seed}):\n"
        + "\n".join(failures[:3])
    )


# ------------------------------------------------------------------ corpus ip6tables dumps

_V6_NAME = re.compile(r"ip6|ipv6|user6|before6|after6")
_IFACE = re.compile(r"(?:^|\s)-[io]\s+([^\s+]+)(\+?)")


def _corpus_v6() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.rglob("*.rules") if _V6_NAME.search(p.name))


def synthetic_host6(text: str) -> HostContext:
    names: list[str] = []
    for m in _IFACE.finditer(text):
        name = m.group(1) + ("0" if m.group(2) else "")
        if name not in names and name != "lo" and len(name) <= 15 and re.fullmatch(r"[\w.-]+", name):
            names.append(name)
    if "eth0" not in names:
        names.insert(0, "eth0")
    names = names[:6]
    links = [Link(1, "lo", kind="loopback", addresses=["127.0.0.1/8", "::1/128"])]
    for k, n in enumerate(names):
        links.append(Link(k + 2, n, kind="veth", addresses=[f"10.{200 + k}.0.1/24", f"fd00:{200 + k}::1/64"]))
    return HostContext(
        links=links,
        routes=[
            *derive_routes(links),
            Route(dst="default", gateway="fd00:200::fe", oif=names[0], family="ipv6", metric=1024),
        ],
        rules=[*DEFAULT_IPV4_RULES, *DEFAULT_IPV6_RULES],
        sysctls={"net.ipv6.conf.all.forwarding": "1"},
        empty=False,
    )


@pytest.mark.parametrize("path", _corpus_v6(), ids=lambda p: p.name)
def test_corpus_ip6tables_dump_matches_kernel(path: Path) -> None:
    _skip_unless_kernel()
    text = path.read_text(errors="replace")
    try:
        rs = parse_rules(text, str(path), family="ipv6")
    except InputError as e:
        pytest.skip(f"nftrace refuses it: {e.one_line()}")
    host = synthetic_host6(text)
    try:
        kh = KernelHost(host, RULES_V4_EMPTY, rules_v6=text)
    except KernelHostUnavailable as e:
        pytest.skip(str(e))
    engine = Engine(rs, host)
    seed = _seed()
    rng = random.Random(seed)
    packets = random_packets6(rng, text, host, int(os.environ.get("NFTRACE_CORPUS_PACKETS", "6")))
    try:
        kh.__enter__()
    except KernelHostError as e:
        pytest.skip(f"the kernel refuses it: {str(e)[:200]}")
    try:
        failures = run_differential(engine, kh, packets)
    finally:
        kh.close()
    assert not failures, (
        f"{len(failures)}/{len(packets)} packets of {path.name} disagree (NFTRACE_SEED={seed}):\n"
        + "\n".join(failures[:3])
    )


def test_ipv6_explain_cli_on_snapshot_json(tmp_path: Path) -> None:
    """`nftrace explain --snapshot` picks the ip6tables dump for an IPv6 flow (and iptables for IPv4)."""
    _skip_unless_kernel()
    host = host_v6()
    try:
        kh = KernelHost(host, RULES_V4_EMPTY, rules_v6=RULES_V6)
    except KernelHostUnavailable as e:
        pytest.skip(str(e))
    with kh:
        kp = KPacket("ingress", "tcp", "2001:db8:99::9", "2001:db8:50::10", 40001, 8080, iif="eth0")
        res = kh.send(kp)
        out = tmp_path / "s.json"
        subprocess.run(
            [sys.executable, "-m", "nftrace", "snapshot", "--netns", kh.node, "-o", str(out), "-q"],
            check=True,
            cwd=ROOT,
        )
    flow = "tcp [2001:db8:99::9]:40001 > [2001:db8:50::10]:8080 iif eth0"
    p = subprocess.run(
        [sys.executable, "-m", "nftrace", "explain", "--snapshot", str(out), flow, "--format", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["packet"]["family"] == "ipv6"
    (branch,) = doc["branches"]
    assert branch["result"]["packet"]["dst"] == res.final["dst"] == "fd00:244:2::5"
    assert branch["result"]["packet"]["dport"] == res.final["dport"] == 80
    p4 = subprocess.run(
        [
            sys.executable,
            "-m",
            "nftrace",
            "explain",
            "--snapshot",
            str(out),
            "tcp 192.168.50.9:1 > 192.168.50.10:22 iif eth0",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert p4.returncode == 0, p4.stderr
