"""Kernel-differential test of bridged IPv4 traffic (br_netfilter), iptables-nft backend.

A namespace holds a real Linux bridge br0 (10.50.0.1/24) with two veth ports, veth1 and veth2,
whose far ends sit in two "pod" namespaces (10.50.0.11 and 10.50.0.12 + 10.50.0.13).  A pod
sends one raw IPv4 packet; ``xtables-monitor --trace`` in the bridge namespace reports which
iptables base chains saw it and which rules matched.  The engine's branch for the same host
context (tests/test_bridge.py's rules and links) must agree on both.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernelhost import unavailable_reason
from tests.test_bridge import RULES, trace

pytestmark = pytest.mark.kernel

SENDER = r"""
import socket, struct, sys
src, dst, ttl, proto, ident = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def cs(b):
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
if proto == 1:
    pay = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + b"x" * 8
    pay = pay[:2] + struct.pack("!H", cs(pay)) + pay[4:]
else:
    pay = struct.pack("!HHHH", 4000, int(sys.argv[6]), 16, 0) + b"y" * 8
hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(pay), ident, 0x4000, ttl, proto, 0,
                  socket.inet_aton(src), socket.inet_aton(dst))
hdr = hdr[:10] + struct.pack("!H", cs(hdr)) + hdr[12:]
socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW).sendto(hdr + pay, (dst, 0))
"""


def sh(*argv: str, ns: str | None = None, check: bool = True) -> str:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    return subprocess.run(cmd, check=check, capture_output=True, text=True).stdout


class BridgeHost:
    def __init__(self, tmp: Path, backend: str) -> None:
        self.backend = backend
        self.node = f"nft-br-{secrets.token_hex(4)}"
        self.pods = [f"{self.node}-p1", f"{self.node}-p2"]
        self.tmp = tmp
        (tmp / "send.py").write_text(SENDER)
        (tmp / "rules").write_text(RULES)

    def build(self) -> None:
        n = self.node
        for ns in (n, *self.pods):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", n, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", n, "link", "set", "br0", "up")
        sh("ip", "-n", n, "addr", "add", "10.50.0.1/24", "dev", "br0")
        sh("ip", "-n", n, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0x")
        sh("ip", "-n", n, "link", "set", "eth0", "up")
        sh("ip", "-n", n, "addr", "add", "192.168.9.1/24", "dev", "eth0")
        for i, pod in enumerate(self.pods, 1):
            sh("ip", "-n", n, "link", "add", f"veth{i}", "type", "veth", "peer", "name", "eth0", "netns", pod)
            sh("ip", "-n", n, "link", "set", f"veth{i}", "master", "br0", "up")
            sh("ip", "-n", pod, "link", "set", "eth0", "up")
            sh("ip", "-n", pod, "addr", "add", f"10.50.0.1{i}/24", "dev", "eth0")
            sh("ip", "-n", pod, "route", "add", "default", "via", "10.50.0.1")
        sh("ip", "-n", self.pods[1], "addr", "add", "10.50.0.13/24", "dev", "eth0")
        # the receiving pod answers nothing (no echo reply, no port unreachable): only the one packet counts
        sh("nft", "add table ip quiet", ns=self.pods[1])
        sh("nft", "add chain ip quiet out { type filter hook output priority 0; }", ns=self.pods[1])
        sh("nft", "add rule ip quiet out ip protocol icmp drop", ns=self.pods[1])
        if self.backend == "legacy":
            sh("iptables-legacy-restore", str(self.tmp / "rules"), ns=n)
            return
        sh("iptables-nft-restore", str(self.tmp / "rules"), ns=n)
        sh("nft", "add table inet nftrace_br", ns=n)
        sh("nft", "add chain inet nftrace_br pre { type filter hook prerouting priority -500; }", ns=n)
        sh("nft", "add rule inet nftrace_br pre meta nftrace set 1", ns=n)
        self.log = self.tmp / "trace.txt"
        self.mon = subprocess.Popen(
            ["ip", "netns", "exec", n, "xtables-monitor", "--trace"],
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )
        time.sleep(0.5)

    def close(self) -> None:
        if getattr(self, "mon", None) is not None:
            self.mon.terminate()
            self.mon.wait(timeout=5)
        for ns in (self.node, *self.pods):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)

    def sysctls(self, values: dict[str, str]) -> None:
        for k, v in values.items():
            sh("sysctl", "-qw", f"{k}={v}", ns=self.node)

    def received(self) -> int:
        """IPv4 packets the pod behind veth2 has received (its 'Ip: InReceives' counter)."""
        for ln in sh("cat", "/proc/net/snmp", ns=self.pods[1]).splitlines():
            if ln.startswith("Ip: ") and ln[4].isdigit():
                return int(ln.split()[3])
        raise AssertionError("no Ip: line in /proc/net/snmp")

    def _inject(self, src: str, dst: str, ttl: int, proto: str, dport: int, ident: int) -> None:
        sh("conntrack", "-F", ns=self.node, check=False)
        pnum = "1" if proto == "icmp" else "17"
        sh("python3", str(self.tmp / "send.py"), src, dst, str(ttl), pnum, str(ident), str(dport), ns=self.pods[0])

    def send(self, src: str, dst: str, ttl: int, proto: str, dport: int) -> list[tuple[str, str, str]]:
        """Events of one packet: (table, chain, rule text or 'policy').  nft: in the kernel's order, from
        its trace.  legacy: sorted, from the per-rule and policy counters (OUTPUT left out: the node's
        own answers count there)."""
        ident = secrets.randbelow(0xFFFE) + 1
        if self.backend == "legacy":
            for table in ("nat", "filter"):
                sh("iptables-legacy", "-t", table, "-Z", ns=self.node)
            self._inject(src, dst, ttl, proto, dport, ident)
            time.sleep(0.5)
            return _counted(sh("iptables-legacy-save", "-c", ns=self.node))
        start = self.log.stat().st_size
        self._inject(src, dst, ttl, proto, dport, ident)
        time.sleep(1.0)
        with self.log.open() as f:
            f.seek(start)
            lines = f.read().splitlines()
        ids = {ln.split()[2] for ln in lines if ln.startswith("PACKET:") and f" ID={ident} " in ln + " "}
        out = []
        for ln in lines:
            parts = ln.split()
            if len(parts) < 4 or parts[0] != "TRACE:" or parts[2] not in ids or parts[3].startswith("nftrace_br:"):
                continue
            table, chain, kind = parts[3].split(":")[:3]
            text = " ".join(parts[4:])
            text = text.split(f"-t {table} ", 1)[1] if f"-t {table} " in text else text
            out.append((table, chain, text if kind == "rule" else "policy"))
        return out


def _counted(save: str) -> list[tuple[str, str, str]]:
    out = []
    table = ""
    for ln in save.splitlines():
        if ln.startswith("*"):
            table = ln[1:]
        elif ln.startswith(":") and not ln.endswith("[0:0]"):
            chain = ln[1:].split()[0]
            out.append((table, chain, "policy"))
        elif ln.startswith("[") and not ln.startswith("[0:0]"):
            text = ln.split("] ", 1)[1]
            out.append((table, text.split()[1], text))
    return sorted(e for e in out if e[1] != "OUTPUT")


@pytest.fixture(scope="module", params=["nft", "legacy"])
def kernel(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeHost]:
    why = unavailable_reason(request.param)
    if why:
        pytest.skip(why)
    if not Path("/proc/sys/net/bridge").exists():
        pytest.skip("no br_netfilter in this kernel")
    h = BridgeHost(tmp_path_factory.mktemp("bridge"), request.param)
    try:
        h.build()
        yield h
    finally:
        h.close()


def engine_events(b: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    for s in b["steps"]:
        if s["kind"] == "rule":
            out.append((s["table"], s["hook"], s["text"]))
        elif s["kind"] == "policy":
            out.append((s["table"], s["hook"], "policy"))
    return out


BASE = {"net.bridge.bridge-nf-call-iptables": "1", "net.ipv4.ip_forward": "0", "net.ipv4.conf.all.rp_filter": "1",
        "net.ipv4.conf.br0.rp_filter": "1"}  # fmt: skip

CASES = [
    # bridged: FORWARD with -i/-o br0, TTL 64 kept, ip_forward=0 and rp_filter=1 do not matter
    ("bridged", BASE, "10.50.0.11", "10.50.0.12", 64, "icmp", 0),
    # TTL 1 and a source with no route back: still bridged; physdev-in veth1 matches
    ("ttl1-spoofed", BASE, "10.99.0.5", "10.50.0.12", 1, "icmp", 0),
    # iptables does not see bridged packets at all
    ("nf-call-0", {**BASE, "net.bridge.bridge-nf-call-iptables": "0"}, "10.50.0.11", "10.50.0.12", 64, "icmp", 0),
    # to the bridge's own address: routed, delivered locally (INPUT)
    ("to-bridge-ip", BASE, "10.50.0.11", "10.50.0.1", 64, "icmp", 0),
    # DNAT to another host of the bridge: dropped with forwarding off, bridged (TTL kept) with it on
    ("dnat-fwd0", BASE, "10.50.0.11", "10.50.0.12", 64, "udp", 5000),
    (
        "dnat-fwd0-rpf0",
        {**BASE, "net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.br0.rp_filter": "0"},
        "10.50.0.11",
        "10.50.0.12",
        64,
        "udp",
        5000,
    ),
    ("dnat-fwd1", {**BASE, "net.ipv4.ip_forward": "1"}, "10.50.0.11", "10.50.0.12", 64, "udp", 5000),
    # DNAT to the bridge's own address: delivered locally
    ("dnat-local", BASE, "10.50.0.11", "10.50.0.12", 64, "udp", 5001),
]


@pytest.mark.parametrize(("name", "sysctls", "src", "dst", "ttl", "proto", "dport"), CASES, ids=[c[0] for c in CASES])
def test_bridge_matches_kernel(
    kernel: BridgeHost, name: str, sysctls: dict[str, str], src: str, dst: str, ttl: int, proto: str, dport: int
) -> None:
    kernel.sysctls(sysctls)
    before = kernel.received()
    got = kernel.send(src, dst, ttl, proto, dport)
    arrived = kernel.received() > before
    extra: dict[str, Any] = {"sport": 4000, "dport": dport} if proto == "udp" else {}
    t = trace(sysctls, backend=kernel.backend, src=src, dst=dst, ttl=ttl, proto=proto, **extra)
    (b,) = t["branches"]
    want = engine_events(b)
    if kernel.backend == "legacy":
        want = sorted(e for e in want if e[1] != "OUTPUT")
    assert want == got, f"{name}: engine {want} != kernel {got}"
    if name != "nf-call-0":
        assert got, "the kernel reported nothing"
    # the pod behind veth2 got the packet exactly when the engine says it was forwarded (bridged)
    assert arrived == (b["result"]["disposition"] == "forwarded"), f"{name}: arrived={arrived}, engine {b['result']}"
