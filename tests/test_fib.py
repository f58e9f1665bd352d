"""nftrace.host.fib: unit tests, then the kernel as the specification.

The kernel tests (`-m kernel`, root and `ip netns` needed) build a host in a network
namespace (veth links whose far ends sit in a peer namespace, addresses, routes in
several tables, policy rules, sysctls), read it back with `ip -j addr/route/rule` and
`sysctl -a` through nftrace's own parsers, and compare `Fib.route_output`,
`Fib.route_input` and `Fib.lookup` with `ip -j route get` for hundreds of seeded random
packets. A failure prints the seed; `NFTRACE_SEED=<seed>` replays it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import random
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from nftrace.host.fib import Fib, RouteResult
from nftrace.host.model import DEFAULT_IPV4_RULES, HostContext, IpRule, Link, Route
from nftrace.host.parse import parse_addrs, parse_ip_rules, parse_routes, parse_sysctls

# --------------------------------------------------------------------------- namespaces


class Netns:
    """One network namespace named nft-<purpose>-<random hex>; `delete` is idempotent."""

    def __init__(self, purpose: str) -> None:
        self.name = f"nft-{purpose}-{secrets.token_hex(4)}"
        self.created = False

    def create(self) -> None:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True, text=True)
        self.created = True
        self.ip("link", "set", "lo", "up")

    def delete(self) -> None:
        if self.created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, text=True)
            self.created = False

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["ip", "-n", self.name, *args], capture_output=True, text=True)
        if check and r.returncode != 0:
            raise AssertionError(f"ip {' '.join(args)} in {self.name}: {r.stderr.strip()}")
        return r

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["ip", "netns", "exec", self.name, *args], capture_output=True, text=True)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(args)} in {self.name}: {r.stderr.strip()}")
        return r

    def sysctl(self, *settings: str) -> None:
        self.run("sysctl", "-qw", *settings)

    def script(self, text: str) -> None:
        """One `ip` command per line (without the leading `ip`); `@peer` lines run in `peer` (see build)."""
        for line in text.strip().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                self.ip(*line.split())


_NETNS_OK: bool | None = None


def netns_available() -> bool:
    """Root, the `ip` command and a namespace that can really be created (and is deleted again)."""
    global _NETNS_OK
    if _NETNS_OK is None:
        _NETNS_OK = False
        if os.geteuid() == 0 and shutil.which("ip") and shutil.which("sysctl"):
            probe = Netns("probe")
            try:
                probe.create()
                _NETNS_OK = True
            except (subprocess.CalledProcessError, AssertionError, OSError):
                _NETNS_OK = False
            finally:
                probe.delete()
    return _NETNS_OK


@contextlib.contextmanager
def namespaces(*purposes: str) -> Iterator[list[Netns]]:
    """Create one namespace per purpose; all are deleted on the way out, failures included."""
    if not netns_available():
        pytest.skip("needs root and `ip netns`")
    made: list[Netns] = []
    try:
        for p in purposes:
            ns = Netns(p)
            made.append(ns)
            ns.create()
        yield made
    finally:
        for ns in reversed(made):
            ns.delete()


def capture(node: Netns) -> HostContext:
    """The namespace's host context, read back the way a user would paste it (JSON forms)."""
    links = parse_addrs(node.ip("-j", "-d", "addr").stdout, "ip-addr")
    routes = parse_routes(
        node.ip("-4", "-j", "route", "show", "table", "all").stdout
        + node.ip("-6", "-j", "route", "show", "table", "all").stdout,
        "ip-route",
    )
    rules = parse_ip_rules(node.ip("-4", "-j", "rule").stdout + node.ip("-6", "-j", "rule").stdout, "ip-rule")
    sysctls = parse_sysctls(
        [node.run("sysctl", "-a", "--pattern", r"^net\.ipv[46]\.(ip_forward|conf\.)").stdout], "sysctl"
    )
    return HostContext(links=links, routes=routes, rules=rules, sysctls=sysctls, empty=False)


def capture_text(node: Netns) -> HostContext:
    """Same as capture() from the text forms (`ip route show table all`, `ip rule`, `ip -d addr`)."""
    links = parse_addrs(node.ip("-d", "addr").stdout, "ip-addr")
    routes = parse_routes(node.ip("route", "show", "table", "all").stdout, "ip-route")
    rules = parse_ip_rules(node.ip("-4", "rule").stdout + node.ip("-6", "rule").stdout, "ip-rule")
    sysctls = parse_sysctls(
        [node.run("sysctl", "-a", "--pattern", r"^net\.ipv[46]\.(ip_forward|conf\.)").stdout], "sysctl"
    )
    return HostContext(links=links, routes=routes, rules=rules, sysctls=sysctls, empty=False)


# --------------------------------------------------------------------------- comparing with `ip route get`

_ERRNO = {
    "Invalid argument": "EINVAL",
    "No route to host": "EHOSTUNREACH",
    "Network is unreachable": "ENETUNREACH",
    "Permission denied": "EACCES",
    "Invalid cross-device link": "EXDEV",
    "No such device": "ENODEV",
    "Cannot assign requested address": "EADDRNOTAVAIL",
}


@dataclass
class Answer:
    """What `ip route get` printed, or what nftrace predicts, reduced to comparable fields."""

    error: str | None = None
    type: str = "unicast"
    dev: str | None = None
    gateway: str | None = None
    prefsrc: str | None = None
    table: str = "main"

    def __str__(self) -> str:
        if self.error:
            return f"error {self.error}"
        s = f"{self.type} dev {self.dev}"
        if self.gateway:
            s += f" via {self.gateway}"
        if self.prefsrc:
            s += f" src {self.prefsrc}"
        return s + f" table {self.table}"


def kernel_route_get(node: Netns, args: list[str], v6: bool = False) -> Answer:
    r = node.ip(*(["-6"] if v6 else []), "-j", "route", "get", *args, check=False)
    if r.returncode != 0:
        msg = r.stderr.strip().removeprefix("RTNETLINK answers:").strip()
        return Answer(error=_ERRNO.get(msg, msg))
    obj = json.loads(r.stdout)[0]
    return Answer(
        type=obj.get("type", "unicast"),
        dev=obj.get("dev"),
        gateway=obj.get("gateway"),
        prefsrc=obj.get("prefsrc"),
        table=str(obj.get("table", "main")),
    )


def ours(res: RouteResult) -> Answer:
    if res.error is not None:
        return Answer(error=res.error)
    table = res.table or "main"
    return Answer(type=res.type, dev=res.oif, gateway=res.gateway, prefsrc=res.prefsrc, table=table)


def differs(k: Answer, o: Answer, res: RouteResult, *, check_src: bool) -> str | None:
    if k.error or o.error:
        if k.error == o.error:
            return None
        if res.type == "rpfilter" and k.error in ("EINVAL", "EXDEV"):
            return None  # the reverse-path filter answers EXDEV on older kernels, EINVAL on 6.1x
        return "error"
    if k.type != o.type:
        return "type"
    hops = res.route.nexthops if res.route is not None and len(res.route.nexthops) > 1 else []
    if hops:
        # multipath: the kernel hashes the flow onto a hop, nftrace takes the first
        if (k.gateway, k.dev) not in [(g, d) for g, d, _ in hops]:
            return "nexthop"
        return None
    if k.dev != o.dev:
        return "dev"
    if k.gateway != o.gateway:
        return "gateway"
    if check_src and k.prefsrc != o.prefsrc:
        return "prefsrc"
    if k.type == "unicast" and k.table != o.table:
        return "table"
    return None


@dataclass
class Tally:
    seed: int
    checked: int = 0
    failures: list[str] = field(default_factory=list)

    def check(self, what: str, k: Answer, res: RouteResult, *, check_src: bool = True) -> None:
        self.checked += 1
        o = ours(res)
        d = differs(k, o, res, check_src=check_src)
        if d is not None:
            self.failures.append(
                f"{what}\n    kernel:  {k}\n    nftrace: {o} ({d} differs)\n    why: {res.reason}",
            )

    def assert_ok(self, minimum: int) -> None:
        assert self.checked >= minimum, f"only {self.checked} probes checked"
        if self.failures:
            head = "\n".join(self.failures[:15])
            raise AssertionError(
                f"{len(self.failures)}/{self.checked} packets routed differently from the kernel "
                f"(seed {self.seed}; replay with NFTRACE_SEED={self.seed}):\n{head}"
            )


def seed() -> int:
    env = os.environ.get("NFTRACE_SEED")
    return int(env) if env else random.SystemRandom().randrange(2**32)


def random_in(rng: random.Random, prefix: str) -> str:
    net = ipaddress.ip_network("0.0.0.0/0" if prefix == "default" else prefix, strict=False)
    return str(net.network_address + rng.randrange(net.num_addresses))


# --------------------------------------------------------------------------- scenarios

POLICY_HOST = """
link add eth0 type veth peer name p0 netns {peer}
link add eth1 type veth peer name p1 netns {peer}
link add eth2 type veth peer name p2 netns {peer}
link add eth3 type veth peer name p3 netns {peer}
link add br0 type bridge
link set eth0 up
link set eth1 up
link set eth2 up
link set br0 up
addr add 192.168.50.10/24 dev eth0
addr add 192.168.50.11/24 dev eth0
addr add 10.20.0.1/16 dev eth0
addr add 172.16.1.1/30 dev eth1
addr add 100.64.0.1 peer 100.64.0.2/32 dev eth1
addr add 10.30.0.1/24 dev eth2
addr add 10.40.0.1/24 dev eth3
addr add 10.244.0.1/24 dev br0
addr add 10.255.255.1/32 dev lo
route add default via 192.168.50.1 dev eth0 metric 100
route add default via 172.16.1.2 dev eth1 metric 200
route add 10.244.2.0/24 via 192.168.50.2 dev eth0
route add 10.96.0.0/12 via 172.16.1.2 dev eth1
route add blackhole 10.99.0.0/16
route add unreachable 10.98.0.0/16
route add prohibit 10.97.0.0/16
route add 10.50.0.0/16 nexthop via 192.168.50.3 dev eth0 nexthop via 172.16.1.2 dev eth1
route add 10.60.0.0/16 via 10.30.0.9 dev eth2
route add 10.61.0.0/16 via 10.30.0.9 dev eth2
route add 10.61.0.0/16 via 192.168.50.4 dev eth0 metric 50
route add 10.70.0.0/16 dev eth1 scope link src 192.168.50.11
route add 10.80.0.0/16 via 192.168.50.5 dev eth0 onlink
route add 10.81.0.0/16 via 192.168.50.6 dev eth0 tos 0x10
route add 10.81.0.0/16 via 172.16.1.2 dev eth1
route add throw 10.12.0.0/16
route add 10.90.0.0/16 via 10.20.0.9 dev eth0
route add 10.91.0.0/16 dev eth0
link set eth3 up
route add 10.100.0.0/16 via 10.40.0.9 dev eth3
link set eth3 down
route add default via 172.16.1.2 dev eth1 table 100
route add 10.244.2.0/24 via 172.16.1.2 dev eth1 table 100
route add throw 10.96.0.0/12 table 100
route add blackhole 10.55.0.0/16 table 100
route add prohibit 8.8.0.0/16 table 100
route add 0.0.0.0/1 via 192.168.50.1 dev eth0 table 200
route add 128.0.0.0/1 via 172.16.1.2 dev eth1 table 200
route add unreachable 9.9.9.0/24 table 200
route add blackhole default table 300
route add default via 172.16.1.2 dev eth1 table 400
rule add pref 50 fwmark 0x1/0xff lookup 100
rule add pref 60 from 10.244.0.0/16 lookup 200
rule add pref 70 iif eth1 to 9.0.0.0/8 lookup 200
rule add pref 80 not fwmark 0x200/0x200 lookup main suppress_prefixlength 0
rule add pref 90 fwmark 0x300/0x300 lookup 300
rule add pref 95 to 1.1.1.0/24 prohibit
rule add pref 96 to 1.1.2.0/24 blackhole
rule add pref 97 to 1.1.3.0/24 unreachable
rule add pref 98 from 192.168.50.11 goto 150
rule add pref 110 iif lo to 4.0.0.0/8 lookup 200
rule add pref 120 to 5.0.0.0/8 lookup 100
rule add pref 130 ipproto tcp dport 8000-8999 lookup 200
rule add pref 140 uidrange 1000-2000 lookup 300
rule add pref 145 oif eth1 lookup 400
rule add pref 150 to 6.0.0.0/7 lookup 200
rule add pref 155 to 7.7.0.0/16 goto 170
rule add pref 160 nop
rule add pref 165 to 7.0.0.0/8 lookup 300
rule add pref 170 tos 0x10 lookup 200
rule add pref 175 fwmark 0x4 lookup 999
rule add pref 180 fwmark 0x8/0x8 unreachable
"""

POLICY_SYSCTLS = (
    "net.ipv4.ip_forward=1",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.eth1.rp_filter=1",
    "net.ipv4.conf.eth0.rp_filter=2",
)

# Default rules only: the kernel's fast source check (no custom rules, no custom local routes).
PLAIN_HOST = """
link add eth0 type veth peer name p0 netns {peer}
link add eth1 type veth peer name p1 netns {peer}
link set eth0 up
link set eth1 up
addr add 192.168.50.10/24 dev eth0
addr add 172.16.1.1/24 dev eth1
addr add 172.16.1.7/24 dev eth1
route add default via 192.168.50.1 dev eth0
route add 10.0.0.0/8 via 172.16.1.254 dev eth1
route add blackhole 10.99.0.0/16
"""


def wait_for_dad(node: Netns, timeout: float = 10.0) -> None:
    """Until no address of a link with carrier is tentative (IPv6 duplicate address detection, ~1-2 s).

    Routes of tentative addresses appear only once DAD is done; reading the host before would race.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [
            lk["ifname"]
            for lk in json.loads(node.ip("-j", "addr").stdout)
            if lk.get("operstate") in ("UP", "UNKNOWN") and any(a.get("tentative") for a in lk.get("addr_info", []))
        ]
        if not busy:
            return
        time.sleep(0.2)
    raise AssertionError(f"addresses still tentative after {timeout}s")


def build(node: Netns, peer: Netns, script: str, sysctls: tuple[str, ...]) -> None:
    # no duplicate address detection: link-local addresses (and their routes) appear at once
    node.sysctl("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
    node.script(script.format(peer=peer.name))
    for ln in peer.ip("-o", "link").stdout.splitlines():
        name = ln.split(":")[1].strip().split("@")[0]
        if name != "lo" and name != "p2":  # p2 stays down: eth2 has no carrier (linkdown routes)
            peer.ip("link", "set", name, "up")
    if sysctls:
        node.sysctl(*sysctls)
    wait_for_dad(node)


@pytest.fixture(scope="module")
def policy_host() -> Iterator[tuple[Netns, HostContext]]:
    with namespaces("fib", "fibpeer") as (node, peer):
        build(node, peer, POLICY_HOST, POLICY_SYSCTLS)
        yield node, capture(node)


@pytest.fixture(scope="module")
def plain_host() -> Iterator[tuple[Netns, HostContext]]:
    with namespaces("fibplain", "fibplainpeer") as (node, peer):
        build(node, peer, PLAIN_HOST, ("net.ipv4.ip_forward=1",))
        yield node, capture(node)


MARKS = (0, 0x1, 0x101, 0x2, 0x4, 0x8, 0x200, 0x300, 0x201, 0xFF01, 0x10)
SPECIAL_DSTS = (
    "1.1.1.1",
    "1.1.2.2",
    "1.1.3.3",
    "4.4.4.4",
    "5.5.5.5",
    "6.6.6.6",
    "7.7.7.7",
    "7.8.8.8",
    "8.8.8.8",
    "8.8.4.4",
    "9.9.9.9",
    "9.1.1.1",
    "10.12.3.4",
    "10.99.1.1",
    "192.168.50.10",
    "192.168.50.11",
    "192.168.50.255",
    "10.20.255.255",
    "10.255.255.1",
    "127.0.0.1",
    "127.1.2.3",
    "10.40.0.1",
    "10.40.0.7",
    "100.64.0.2",
    "100.64.0.1",
    "255.255.255.255",
    "224.0.0.1",
    "10.244.0.255",
    "172.16.1.3",
    "0.1.2.3",
    "224.0.0.251",
    "239.1.2.3",
)


def dst_pool(ctx: HostContext, rng: random.Random) -> list[str]:
    pool = list(SPECIAL_DSTS)
    for r in ctx.routes:
        if r.family == "ipv4":
            pool.append(random_in(rng, r.dst))
    pool += [str(ipaddress.IPv4Address(rng.randrange(1, 2**32 - 1))) for _ in range(20)]
    return pool


def local_addrs(ctx: HostContext) -> list[str]:
    return [str(i.ip) for _, i in ctx.addresses("ipv4")]


@pytest.mark.kernel
def test_output_matches_kernel(policy_host: tuple[Netns, HostContext]) -> None:
    node, ctx = policy_host
    fib = Fib(ctx)
    t = Tally(seed())
    rng = random.Random(t.seed)
    dsts = dst_pool(ctx, rng)
    srcs = local_addrs(ctx)
    for _ in range(320):
        dst = rng.choice(dsts)
        src = rng.choice(srcs) if rng.random() < 0.3 else None
        if src is None and rng.random() < 0.03:
            src = "203.0.113.7"  # not local: the kernel refuses it
        oif = rng.choice(["eth0", "eth1", "eth2", "eth3", "br0", "lo"]) if rng.random() < 0.2 else None
        mark = rng.choice(MARKS)
        uid = rng.choice([0, 5, 1000, 1500, 2000, 2001]) if rng.random() < 0.2 else None
        tcp = rng.random() < 0.2
        dport = rng.choice([80, 8000, 8080, 8999, 9000]) if tcp else None
        tos = 0x10 if rng.random() < 0.1 else 0
        args = [dst]
        if src:
            args += ["from", src]
        if oif:
            args += ["oif", oif]
        if mark:
            args += ["mark", hex(mark)]
        if uid is not None:
            args += ["uid", str(uid)]
        if tcp:
            args += ["ipproto", "tcp", "dport", str(dport)]
        if tos:
            args += ["tos", hex(tos)]
        k = kernel_route_get(node, args)
        res = fib.route_output(
            dst, src=src, oif=oif, mark=mark, tos=tos, proto="tcp" if tcp else None, dport=dport, uid=uid
        )
        t.check("ip route get " + " ".join(args), k, res, check_src=src is None)  # with `from`, no src shown
        # A plain fib_lookup gives the same answer when nothing output-specific is involved.
        special = ipaddress.IPv4Address(dst).is_multicast or dst in ("255.255.255.255", "0.0.0.0")
        if oif is None and not special and (src is None or (src in srcs and not src.startswith("127."))):
            proto = "tcp" if tcp else None
            lk = fib.lookup(dst, src=src, mark=mark, tos=tos, proto=proto, dport=dport, uid=uid)
            if res.type == "local":
                lk.oif = "lo"  # the output path sends local destinations to the loopback
            lk.prefsrc = res.prefsrc if lk.type == "local" else lk.prefsrc
            t.check("lookup: ip route get " + " ".join(args), k, lk, check_src=src is None)
    t.assert_ok(200)


@pytest.mark.kernel
def test_input_matches_kernel(policy_host: tuple[Netns, HostContext]) -> None:
    node, ctx = policy_host
    fib = Fib(ctx)
    t = Tally(seed())
    rng = random.Random(t.seed)
    dsts = [d for d in dst_pool(ctx, rng) if not ipaddress.IPv4Address(d).is_multicast or d == "224.0.0.1"]
    srcs = [
        "192.168.50.77",
        "192.168.50.1",
        "172.16.1.2",
        "10.20.3.4",
        "10.244.0.9",
        "10.244.2.5",
        "100.64.0.2",
        "10.30.0.9",
        "8.8.4.4",
        "9.9.9.9",
        "1.2.3.4",
        "10.99.0.1",
        "10.98.0.1",
        "10.97.0.1",
        "10.12.0.1",
        "192.168.50.10",
        "10.255.255.1",
        "127.0.0.1",
        "0.0.0.0",
        "224.0.0.9",
        "192.168.50.255",
        "10.96.1.1",
        "10.55.0.3",
        "10.40.0.2",
        "10.50.1.1",
        "0.1.2.3",
        "10.244.0.255",
        "10.40.0.1",
    ]

    def probe(fib: Fib, tag: str) -> None:
        dst = rng.choice(dsts)
        src = rng.choice(srcs)
        iif = rng.choice(["eth0", "eth1", "eth2", "eth3", "br0"])
        mark = rng.choice(MARKS)
        tcp = rng.random() < 0.2
        dport = rng.choice([80, 8000, 8080, 8999, 9000]) if tcp else None
        tos = 0x10 if rng.random() < 0.1 else 0
        args = [dst, "from", src, "iif", iif]
        if mark:
            args += ["mark", hex(mark)]
        if tcp:
            args += ["ipproto", "tcp", "dport", str(dport)]
        if tos:
            args += ["tos", hex(tos)]
        k = kernel_route_get(node, args)
        res = fib.route_input(dst, src, iif, mark=mark, tos=tos, proto="tcp" if tcp else None, dport=dport)
        t.check(f"{tag}ip route get " + " ".join(args), k, res, check_src=False)

    for _ in range(320):
        probe(fib, "")
    # The reverse-path lookup uses the packet's mark only with src_valid_mark=1.
    node.sysctl("net.ipv4.conf.all.src_valid_mark=1")
    try:
        marked = Fib(capture(node))
        for _ in range(80):
            probe(marked, "[src_valid_mark=1] ")
    finally:
        node.sysctl("net.ipv4.conf.all.src_valid_mark=0")
    t.assert_ok(300)


@pytest.mark.kernel
def test_plain_host_source_checks(plain_host: tuple[Netns, HostContext]) -> None:
    """Default rules: the fast source check, rp_filter strict/loose, forwarding per device."""
    node, ctx = plain_host
    t = Tally(seed())
    rng = random.Random(t.seed)
    srcs = [
        "192.168.50.1",
        "192.168.50.10",
        "172.16.1.7",
        "172.16.1.255",
        "10.1.2.3",
        "10.99.1.1",
        "8.8.8.8",
        "127.0.0.1",
        "192.168.50.255",
    ]
    dsts = [
        "8.8.8.8",
        "10.1.1.1",
        "10.99.2.2",
        "192.168.50.10",
        "172.16.1.1",
        "172.16.1.255",
        "192.168.50.99",
        "172.16.1.9",
        "127.0.0.1",
    ]
    settings: list[tuple[str, ...]] = [
        (),
        ("net.ipv4.conf.eth0.rp_filter=1", "net.ipv4.conf.eth1.rp_filter=1"),
        ("net.ipv4.conf.all.rp_filter=2",),
        (
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.eth0.rp_filter=0",
            "net.ipv4.conf.eth1.rp_filter=0",
            "net.ipv4.conf.eth1.accept_local=1",
        ),
        ("net.ipv4.conf.eth1.accept_local=0", "net.ipv4.ip_forward=0"),
        ("net.ipv4.conf.eth1.forwarding=1",),
    ]
    for s in settings:
        if s:
            node.sysctl(*s)
        fib = Fib(capture(node))
        for _ in range(45):
            dst, src, iif = rng.choice(dsts), rng.choice(srcs), rng.choice(["eth0", "eth1"])
            k = kernel_route_get(node, [dst, "from", src, "iif", iif])
            res = fib.route_input(dst, src, iif)
            what = f"[{' '.join(s) or 'defaults'}] ip route get {dst} from {src} iif {iif}"
            t.check(what, k, res, check_src=False)
    t.assert_ok(200)


@pytest.mark.kernel
def test_sysctl_spellings_read_as_the_kernel_reads_them(plain_host: tuple[Netns, HostContext]) -> None:
    """Forwarding and rp_filter written in other spellings the kernel takes (0x0, 00, 010, 2, -1, 3):
    Fib, given the values as written (and as parse_sysctls stores them), routes as the kernel does.
    Only 1 is strict; any other non-zero rp_filter is loose; any non-zero forwarding forwards."""
    node, _ = plain_host
    t = Tally(seed())
    rng = random.Random(t.seed)
    srcs = ["192.168.50.1", "172.16.1.7", "10.1.2.3", "10.99.1.1", "8.8.8.8"]
    dsts = ["8.8.8.8", "10.1.1.1", "10.99.2.2", "192.168.50.10", "172.16.1.9"]
    devs = ("all", "default", "lo", "eth0", "eth1")
    before = capture(node).sysctls
    saved = [f"{k}={v}" for k, v in before.items() if k.startswith("net.ipv4.conf.") and k.endswith(".rp_filter")]
    saved = [f"net.ipv4.ip_forward={before['net.ipv4.ip_forward']}", *saved]
    saved += [f"net.ipv4.conf.{d}.forwarding={before[f'net.ipv4.conf.{d}.forwarding']}" for d in devs]
    cases: list[dict[str, str]] = [
        # writing ip_forward sets every device's forwarding to the same value
        *({"net.ipv4.ip_forward": v, **{f"net.ipv4.conf.{d}.forwarding": v for d in devs}} for v in ("0x0", "00", "2")),
        {"net.ipv4.ip_forward": "-1", **{f"net.ipv4.conf.{d}.forwarding": "-1" for d in devs}},
        {"net.ipv4.ip_forward": "010", **{f"net.ipv4.conf.{d}.forwarding": "010" for d in devs}},
        {f"net.ipv4.conf.{d}.rp_filter": "-1" for d in ("all", "eth0", "eth1")},
        {
            "net.ipv4.conf.all.rp_filter": "0x1",
            "net.ipv4.conf.eth0.rp_filter": "0",
            "net.ipv4.conf.eth1.rp_filter": "0",
        },
        {"net.ipv4.conf.all.rp_filter": "3"},
        {"net.ipv4.conf.all.rp_filter": "00", "net.ipv4.conf.eth1.rp_filter": "01"},
    ]
    try:
        for case in cases:
            node.sysctl(*(f"{k}={v}" for k, v in case.items()))
            ctx = capture(node)
            as_written = dataclasses.replace(ctx, sysctls={**ctx.sysctls, **case})
            as_parsed = dataclasses.replace(
                ctx, sysctls={**ctx.sysctls, **parse_sysctls([f"{k}={v}" for k, v in case.items()])}
            )
            for fib in (Fib(as_written), Fib(as_parsed)):
                for _ in range(20):
                    dst, src, iif = rng.choice(dsts), rng.choice(srcs), rng.choice(["eth0", "eth1"])
                    k = kernel_route_get(node, [dst, "from", src, "iif", iif])
                    what = f"[{case}] ip route get {dst} from {src} iif {iif}"
                    t.check(what, k, fib.route_input(dst, src, iif), check_src=False)
    finally:
        node.sysctl(*saved)
    t.assert_ok(300)


@pytest.mark.kernel
def test_text_and_json_forms_agree(policy_host: tuple[Netns, HostContext]) -> None:
    node, ctx = policy_host
    text = capture_text(node)
    assert text.routes == ctx.routes
    assert text.rules == ctx.rules
    assert [(lk.name, lk.index, lk.up, lk.kind, lk.addresses, lk.peers) for lk in text.links] == [
        (lk.name, lk.index, lk.up, lk.kind, lk.addresses, lk.peers) for lk in ctx.links
    ]


@pytest.mark.kernel
def test_addr_type_matches_kernel_local_table(policy_host: tuple[Netns, HostContext]) -> None:
    """addrtype answers from table local: compare with `ip route get` restricted to table local."""
    node, ctx = policy_host
    fib = Fib(ctx)
    assert fib.addr_type("192.168.50.11") == "LOCAL"
    assert fib.addr_type("192.168.50.11", "eth0") == "LOCAL"
    assert fib.addr_type("192.168.50.11", "eth1") == "UNICAST"
    assert fib.addr_type("10.40.0.1") == "LOCAL"  # eth3 is down: its local route stays
    assert fib.addr_type("192.168.50.255") == "BROADCAST"
    assert fib.addr_type("10.244.0.255", "br0") == "BROADCAST"
    assert fib.addr_type("10.244.0.0") == "UNICAST"  # no network-address broadcast route on 6.x kernels
    assert fib.addr_type("127.3.3.3") == "LOCAL"
    assert fib.addr_type("100.64.0.2") == "UNICAST"
    assert fib.addr_type("0.0.0.0") == "BROADCAST"
    assert fib.addr_type("239.1.2.3") == "MULTICAST"
    out = node.ip("-j", "route", "show", "table", "local").stdout
    for entry in json.loads(out):
        if ":" in entry["dst"] or "/" in entry["dst"]:
            continue
        assert fib.addr_type(entry["dst"]) == entry["type"].upper(), entry


# --------------------------------------------------------------------------- IPv6 against the kernel

V6_HOST = """
link add eth0 type veth peer name p0 netns {peer}
link add eth1 type veth peer name p1 netns {peer}
link set eth0 up
link set eth1 up
addr add 2001:db8:50::10/64 dev eth0 nodad
addr add 2001:db8:51::1/64 dev eth1 nodad
addr add 2001:db8:ff::1/128 dev lo
-6 route add default via 2001:db8:50::1 dev eth0 metric 1024
-6 route add 2001:db8:100::/48 via 2001:db8:51::2 dev eth1
-6 route add blackhole 2001:db8:99::/48
-6 route add unreachable 2001:db8:98::/48
-6 route add prohibit 2001:db8:97::/48
-6 route add throw 2001:db8:96::/48
-6 route add default via 2001:db8:51::2 dev eth1 table 100
-6 route add blackhole 2001:db8:55::/48 table 100
-6 route add throw 2001:db8:100::/48 table 100
-6 rule add pref 50 fwmark 0x1/0xff lookup 100
-6 rule add pref 60 from 2001:db8:51::/64 to 2001:db8:200::/40 lookup 100
-6 rule add pref 70 not fwmark 0x200/0x200 lookup main suppress_prefixlength 0
-6 rule add pref 80 to 2001:db8:bad::/48 prohibit
-6 rule add pref 81 to 2001:db8:bad1::/48 unreachable
-6 rule add pref 82 to 2001:db8:bad2::/48 blackhole
-6 rule add pref 90 iif eth1 lookup 100
"""


@pytest.fixture(scope="module")
def v6_host() -> Iterator[tuple[Netns, HostContext]]:
    with namespaces("fib6", "fib6peer") as (node, peer):
        build(node, peer, V6_HOST, ("net.ipv6.conf.all.forwarding=1",))
        yield node, capture(node)


@pytest.mark.kernel
def test_ipv6_matches_kernel(v6_host: tuple[Netns, HostContext]) -> None:
    node, ctx = v6_host
    fib = Fib(ctx, family="ipv6")
    t = Tally(seed())
    rng = random.Random(t.seed)
    dsts = [
        "2001:db8:50::10",
        "2001:db8:ff::1",
        "::1",
        "2001:db8:bad::1",
        "2001:db8:bad1::1",
        "2001:db8:bad2::1",
        "2001:db8:300::1",
        "2606:4700::1111",
        "fe80::1",
        "ff02::1",
        "ff05::2",
    ]
    for r in ctx.routes:
        if r.family == "ipv6" and r.table in ("main", "100") and not r.dst.startswith("fe80"):
            dsts.append(random_in(rng, "2000::/3" if r.dst == "default" else r.dst))
    srcs = ["2001:db8:51::2", "2001:db8:50::1", "2001:db8:51::77", "2001:db8:7::7"]
    local = ["2001:db8:50::10", "2001:db8:51::1", "2001:db8:ff::1"]
    for _ in range(220):
        dst = rng.choice(dsts)
        mark = rng.choice((0, 1, 0x101, 0x200, 0x201))
        if rng.random() < 0.5 and dst != "::1" and not dst.startswith("ff"):
            # (::1 arriving on eth0 is dropped by ip6_rcv_core() before PREROUTING and routing;
            # `ip route get ... iif` does not go through there, so it is no reference for that case;
            # for a multicast destination it answers EMSGSIZE)
            src, iif = rng.choice(srcs), rng.choice(["eth0", "eth1"])
            args = [dst, "from", src, "iif", iif] + (["mark", hex(mark)] if mark else [])
            res = fib.route_input(dst, src, iif, mark=mark)
            k = kernel_route_get(node, args, v6=True)
            t.check("ip -6 route get " + " ".join(args), k, res, check_src=False)
        else:
            osrc = rng.choice(local) if rng.random() < 0.3 else None
            oif = rng.choice(["eth0", "eth1"]) if rng.random() < 0.2 else None
            args = [dst] + (["from", osrc] if osrc else []) + (["oif", oif] if oif else [])
            args += ["mark", hex(mark)] if mark else []
            res = fib.route_output(dst, src=osrc, oif=oif, mark=mark)
            # the kernel prints the source it would select itself, whatever `from` says
            k = kernel_route_get(node, args, v6=True)
            t.check("ip -6 route get " + " ".join(args), k, res, check_src=osrc is None)
    t.assert_ok(200)


# --------------------------------------------------------------------------- unit tests (no kernel)


def _host(**sysctls: str) -> HostContext:
    links = [
        Link(1, "lo", kind="loopback", addresses=["127.0.0.1/8"]),
        Link(2, "eth0", addresses=["192.168.50.10/24", "192.168.50.11/24", "10.20.0.1/16"]),
        Link(3, "eth1", addresses=["172.16.1.1/30"]),
        Link(4, "eth3", up=False, addresses=["10.40.0.1/24"]),
    ]
    from nftrace.host.parse import derive_routes

    routes = derive_routes(links) + [
        Route(dst="default", gateway="192.168.50.1", oif="eth0", metric=100),
        Route(dst="default", gateway="172.16.1.2", oif="eth1", metric=200),
        Route(dst="10.90.0.0/16", gateway="10.20.0.9", oif="eth0"),
        Route(dst="10.99.0.0/16", type="blackhole"),
        Route(dst="10.12.0.0/16", type="throw"),
        Route(
            dst="10.50.0.0/16",
            gateway="192.168.50.3",
            oif="eth0",
            nexthops=[("192.168.50.3", "eth0", 1), ("172.16.1.2", "eth1", 1)],
        ),
        Route(dst="10.100.0.0/16", gateway="10.40.0.9", oif="eth3"),
        Route(table="100", dst="default", gateway="172.16.1.2", oif="eth1"),
    ]
    rules = [
        IpRule(0, "local"),
        IpRule(50, "100", fwmark=0x1, fwmask=0xFF),
        IpRule(80, "main", fwmark=0x200, fwmask=0x200, invert=True, suppress_prefixlength=0),
        IpRule(90, None, action="goto", goto=200, src="192.168.50.11/32"),
        IpRule(95, None, action="prohibit", dst="1.1.1.0/24"),
        IpRule(96, None, action="unreachable", dst="1.1.3.0/24"),
        IpRule(100, "100", uidrange=(1000, 2000)),
        IpRule(110, "100", iif="lo", dst="4.0.0.0/8"),
        IpRule(120, "100", fwmark=0),
        IpRule(200, "main"),
        *DEFAULT_IPV4_RULES[1:],
    ]
    return HostContext(links=links, routes=routes, rules=rules, sysctls=dict(sysctls), empty=False)


def test_lookup_rules_and_tables() -> None:
    fib = Fib(_host())
    r = fib.lookup("10.90.1.1")
    assert (r.type, r.oif, r.gateway, r.table, r.rule and r.rule.priority) == (
        "unicast",
        "eth0",
        "10.20.0.9",
        "main",
        80,
    )
    assert r.prefsrc == "10.20.0.1"  # the primary address whose subnet holds the gateway
    assert "table main: 10.90.0.0/16 via 10.20.0.9 dev eth0 (rule 80)" in r.reason
    # the default route is suppressed by rule 80 (prefix length 0) and found again by rule 120 -> table 100
    r = fib.lookup("8.8.8.8")
    assert (r.table, r.gateway) == ("100", "172.16.1.2")
    assert "suppressed" in r.reason
    assert fib.lookup("8.8.8.8", mark=0x1).table == "100"
    assert fib.lookup("1.1.1.1").error == "EACCES"
    assert (fib.lookup("1.1.3.3").type, fib.lookup("1.1.3.3").error) == ("unreachable", "ENETUNREACH")
    assert (fib.lookup("10.99.0.1").type, fib.lookup("10.99.0.1").error) == ("blackhole", "EINVAL")
    # throw in main continues; fwmark 0 without a mask (rule 120) matches every mark -> table 100
    r = fib.lookup("10.12.1.1")
    assert (r.table, r.oif) == ("100", "eth1") and "throw" in r.reason
    # goto 200 skips rules 95..120
    assert fib.lookup("1.1.1.1", src="192.168.50.11").type == "unicast"
    # iif lo rules match locally generated packets only
    assert fib.lookup("4.4.4.4", mark=0x200).table == "100"
    assert fib.lookup("4.4.4.4", mark=0x200, iif="eth1").table == "100"  # via rule 120 (fwmark 0)
    # the route via the down link eth3 is gone: main has only the (suppressed) default for it
    r = fib.lookup("10.100.1.1")
    assert r.route is not None and (r.route.dst, r.table) == ("default", "100")
    r = fib.lookup("10.50.1.1")
    assert (r.gateway, r.oif) == ("192.168.50.3", "eth0") and "multipath" in r.reason


def test_route_output() -> None:
    fib = Fib(_host())
    r = fib.route_output("192.168.50.11")
    assert (r.type, r.oif, r.prefsrc) == ("local", "lo", "192.168.50.10")  # src of a secondary: the primary
    assert fib.route_output("10.40.0.1").type == "local"  # local route of a down link stays
    r = fib.route_output("10.99.0.1", oif="eth1")
    assert (r.type, r.oif, r.prefsrc, r.error) == ("unicast", "eth1", "172.16.1.1", None)  # assumed on-link
    assert fib.route_output("8.8.8.8", src="203.0.113.1").error == "ENETUNREACH"
    assert fib.route_output("8.8.8.8", src="203.0.113.1", anysrc=True).ok
    assert fib.route_output("8.8.8.8", uid=1500).table == "100"
    assert "uid unknown, assumed 0" in fib.route_output("8.8.8.8").reason
    assert fib.route_output("255.255.255.255").type == "broadcast"
    assert fib.route_output("0.0.0.0").prefsrc == "127.0.0.1"


def test_route_input_martians_forwarding_rp_filter() -> None:
    fib = Fib(_host())
    r = fib.route_input("8.8.8.8", "172.16.1.2", "eth1")
    assert r.type == "unicast" and "rp_filter unknown, assumed 0" in r.reason
    assert "ip_forward unknown, assumed 1" in r.reason
    assert fib.route_input("8.8.8.8", "127.0.0.1", "eth1").type == "martian"
    assert fib.route_input("127.0.0.1", "172.16.1.2", "eth1").type == "martian"
    assert fib.route_input("8.8.8.8", "224.0.0.1", "eth1").type == "martian"
    # one of the host's own addresses as source
    assert fib.route_input("192.168.50.10", "192.168.50.11", "eth0").type == "martian"
    assert fib.route_input("192.168.50.255", "192.168.50.7", "eth0").type == "broadcast"
    assert fib.route_input("255.255.255.255", "0.0.0.0", "eth0").type == "broadcast"
    assert fib.route_input("192.168.50.10", "192.168.50.7", "eth0").oif == "lo"

    fib = Fib(_host(**{"net.ipv4.route_localnet": "0", "net.ipv4.conf.eth1.route_localnet": "1"}))
    assert fib.route_input("127.0.0.1", "172.16.1.2", "eth1").type == "local"

    off = Fib(_host(**{"net.ipv4.ip_forward": "0"}))
    r = off.route_input("8.8.8.8", "172.16.1.2", "eth1")
    assert (r.type, r.error) == ("unreachable", "EHOSTUNREACH") and "ip_forward=0" in r.reason
    assert off.route_input("10.99.0.1", "172.16.1.2", "eth1").error == "EHOSTUNREACH"
    assert off.route_input("192.168.50.10", "172.16.1.2", "eth1").type == "local"
    per_dev = Fib(_host(**{"net.ipv4.ip_forward": "0", "net.ipv4.conf.eth1.forwarding": "1"}))
    assert per_dev.route_input("8.8.8.8", "172.16.1.2", "eth1").type == "unicast"

    strict = Fib(_host(**{"net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.eth1.rp_filter": "1"}))
    r = strict.route_input("8.8.8.8", "10.20.5.5", "eth1")  # the route back to 10.20.5.5 leaves via eth0
    assert r.type == "rpfilter" and "strict" in r.reason
    assert strict.route_input("8.8.8.8", "172.16.1.2", "eth1").type == "unicast"
    loose = Fib(_host(**{"net.ipv4.conf.all.rp_filter": "2"}))
    assert loose.route_input("8.8.8.8", "9.9.9.9", "eth1").type == "unicast"
    assert loose.route_input("8.8.8.8", "10.99.1.1", "eth1").type == "rpfilter"  # blackhole back: no route


def test_select_source_and_addr_type() -> None:
    fib = Fib(_host())
    assert fib.select_source("eth0", "10.20.9.9") == "10.20.0.1"
    assert fib.select_source("eth0", None) == "192.168.50.10"
    assert fib.select_source("eth0", "192.168.50.99", "link") == "192.168.50.10"
    assert fib.select_source("lo", None, "link") == "192.168.50.10"  # 127.0.0.1 is host scope
    assert fib.select_source("lo", None, "host") == "127.0.0.1"
    assert fib.select_source("nope", None) == "192.168.50.10"
    assert fib.addr_type("192.168.50.11", "eth1") == "UNICAST"
    assert fib.addr_type("192.168.50.11", "eth0") == "LOCAL"
    assert fib.addr_type("255.255.255.255") == "BROADCAST"
    assert fib.is_local("10.40.0.1") and not fib.is_local("10.40.0.2")


def test_ipv6_unit() -> None:
    links = [
        Link(1, "lo", kind="loopback", addresses=["::1/128"]),
        Link(2, "eth0", addresses=["2001:db8::1/64", "fe80::1/64"]),
    ]
    from nftrace.host.parse import derive_routes

    default = Route(dst="default", gateway="fe80::ff", oif="eth0", family="ipv6", metric=1024)
    routes = [*derive_routes(links), default]
    fib = Fib(HostContext(links=links, routes=routes, empty=False), family="ipv6")
    r = fib.route_output("2001:4860::8888")
    assert (r.type, r.oif, r.gateway, r.prefsrc) == ("unicast", "eth0", "fe80::ff", "2001:db8::1")
    assert fib.route_output("2001:db8::1").type == "local"
    assert fib.addr_type("2001:db8::1") == "LOCAL" and fib.addr_type("ff02::1") == "MULTICAST"
    assert fib.addr_types("2001:db8::1") == {"LOCAL", "UNICAST"}
    assert fib.addr_type("2001:db8::2") == "UNICAST"
    assert fib.route_input("2001:db8::1", "::1", "eth0").type == "martian"


def test_bad_address_is_input_error() -> None:
    from nftrace.errors import InputError

    with pytest.raises(InputError):
        Fib(_host()).lookup("10.0.0.300")
