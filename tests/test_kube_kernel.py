"""Kernel facts behind the kube catalogue and findings, checked in network namespaces.

* The catalogue's endpoint probabilities are the kernel's: thousands of new connections to a
  3-endpoint ClusterIP of rulesets/kube-node are spread over the endpoints as the catalogue says
  (chi-square test, p > 0.001), and a deliberately wrong distribution is rejected.
* bridge-nf-call-iptables: a pod reaching a DNATed address whose endpoint sits on the same bridge
  gets its connection only when the replies pass iptables (the sysctl at 1).
"""

from __future__ import annotations

import math
import os
import random
import secrets
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from nftrace.host.parse import build_host_context
from nftrace.kube.catalog import build_catalog
from nftrace.ruleset.parser import parse_rules

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[1]
N = int(os.environ.get("NFTRACE_KUBE_CONNECTIONS", "2400"))


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for a chi-square variable with integer df (regularised upper gamma, closed forms)."""
    if x <= 0:
        return 1.0
    if df % 2 == 0:
        term = total = math.exp(-x / 2)
        for k in range(1, df // 2):
            term *= (x / 2) / k
            total += term
        return min(1.0, total)
    total = math.erfc(math.sqrt(x / 2))
    term = math.sqrt(2 * x / math.pi) * math.exp(-x / 2)
    for k in range(1, (df + 1) // 2):
        total += term
        term *= x / (2 * k + 1)
    return min(1.0, total)


def chi2(observed: dict[str, int], probs: dict[str, float]) -> tuple[float, int]:
    n = sum(observed.values())
    stat = sum((observed.get(k, 0) - n * p) ** 2 / (n * p) for k, p in probs.items())
    return stat, len(probs) - 1


def test_chi2_sf_against_known_quantiles() -> None:
    # textbook critical values at p = 0.001 and 0.05
    assert chi2_sf(13.8155, 2) == pytest.approx(0.001, rel=1e-4)
    assert chi2_sf(10.8276, 1) == pytest.approx(0.001, rel=1e-4)
    assert chi2_sf(16.2662, 3) == pytest.approx(0.001, rel=1e-4)
    assert chi2_sf(7.8147, 3) == pytest.approx(0.05, rel=1e-4)
    assert chi2_sf(9.4877, 4) == pytest.approx(0.05, rel=1e-4)


def _kube_node():  # type: ignore[no-untyped-def]
    d = ROOT / "rulesets" / "kube-node"
    sysctls = [ln for ln in (d / "sysctl.txt").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    host = build_host_context(routes_file=str(d / "routes.txt"), addrs_file=str(d / "addrs.txt"), sysctls=sysctls)
    text = (d / "iptables.rules").read_text()
    return host, text


def test_endpoint_choices_follow_the_catalogue_probabilities() -> None:
    from tests.kernelhost import (
        PEER_IFNAME,
        KernelHost,
        KernelHostUnavailable,
        KPacket,
        build_ipv4,
        in_netns,
        parse_ct_line,
        unavailable_reason,
    )

    reason = unavailable_reason("nft")
    if reason:
        pytest.skip(reason)
    host, text = _kube_node()
    cat = build_catalog(parse_rules(text, "kube-node"), host)
    web = cat.service("shop/web:http")
    assert web is not None and web.cluster_ip is not None and web.port is not None and len(web.endpoints) == 3
    probs = {e.address: float(e.probability) for e in web.endpoints}
    seed = int(os.environ.get("NFTRACE_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    try:
        kh = KernelHost(host, text)
    except KernelHostUnavailable as e:
        pytest.skip(str(e))
    with kh:
        peer = kh.peers["cni0"]
        sock = in_netns(peer, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
        try:
            sock.bind((PEER_IFNAME, 0))
            src_mac = sock.getsockname()[4][:6]
            dst_mac = bytes(int(x, 16) for x in kh.macs["cni0"].split(":"))
            sports = rng.sample(range(20000, 60000), N)
            t0 = time.monotonic()
            for k, sport in enumerate(sports):
                kp = KPacket(origin="ingress", proto="tcp", src="10.244.1.3", dst=web.cluster_ip, sport=sport,
                             dport=web.port, iif="cni0")  # fmt: skip
                sock.send(dst_mac + src_mac + b"\x08\x00" + build_ipv4(kp, (k % 0xFFFE) + 1))
                if k % 100 == 99:
                    time.sleep(0.02)  # stay well under the backlog queue (netdev_max_backlog)
            time.sleep(0.5)
        finally:
            sock.close()
        listing = kh.run(["conntrack", "-L", "-o", "extended", "-p", "tcp", "--orig-dst", web.cluster_ip], check=False)
        elapsed = time.monotonic() - t0
    counts: Counter[str] = Counter()
    for line in listing.splitlines():
        ct = parse_ct_line(line)
        if ct is None or not ct.get("reply"):
            continue
        r = ct["reply"]
        counts[f"{r['src']}:{r['sport']}"] += 1
    n = sum(counts.values())
    assert n >= 2000, f"only {n} of {N} connections reached conntrack (seed {seed})"
    assert set(counts) <= set(probs), f"the kernel chose endpoints the catalogue does not list: {counts}"
    stat, df = chi2(dict(counts), probs)
    p = chi2_sf(stat, df)
    assert p > 0.001, f"kernel choices {dict(counts)} vs {probs}: chi2={stat:.2f} df={df} p={p:.2g} (seed {seed})"
    # the test has power: a plainly different distribution is rejected by the same data
    wrong = dict(zip(sorted(probs), (0.5, 0.25, 0.25), strict=True))
    stat_w, _ = chi2(dict(counts), wrong)
    assert chi2_sf(stat_w, df) < 0.001, f"a wrong distribution was not rejected: {dict(counts)}"
    assert elapsed < 60


# --------------------------------------------------------------------------- bridge-nf-call-iptables


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True, timeout=30)


def _sysctl(ns: str, key: str, value: str) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", f"echo {value} > {path}"], check=True, timeout=30)


@pytest.mark.parametrize("bridge_nf", ["1", "0"])
def test_same_bridge_dnat_needs_bridge_nf_call_iptables(bridge_nf: str) -> None:
    from tests.kernelhost import in_netns, unavailable_reason

    reason = unavailable_reason("nft")
    if reason:
        pytest.skip(reason)
    if not Path("/proc/sys/net/bridge").is_dir():
        pytest.skip("no bridge netfilter (br_netfilter) in this kernel")
    tag = secrets.token_hex(4)
    node, client, server = f"nft-kube-{tag}", f"nft-kube-{tag}-c", f"nft-kube-{tag}-s"
    made: list[str] = []
    try:
        for ns in (node, client, server):
            _ip("netns", "add", ns)
            made.append(ns)
        if not Path(f"/var/run/netns/{node}").exists():
            pytest.skip("ip netns did not create a named namespace")
        try:
            _sysctl(node, "net.bridge.bridge-nf-call-iptables", bridge_nf)
        except subprocess.CalledProcessError:
            pytest.skip("net.bridge.bridge-nf-call-iptables is not per network namespace here")
        _ip("-n", node, "link", "add", "br0", "type", "bridge")
        _ip("-n", node, "addr", "add", "10.244.1.1/24", "dev", "br0")
        for name, ns, addr in (("vc", client, "10.244.1.3"), ("vs", server, "10.244.1.5")):
            _ip("-n", node, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", node, "link", "set", name, "master", "br0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "route", "add", "default", "via", "10.244.1.1")
        _ip("-n", node, "link", "set", "br0", "up")
        _sysctl(node, "net.ipv4.ip_forward", "1")
        rules = (
            "*nat\n:PREROUTING ACCEPT [0:0]\n"
            "-A PREROUTING -d 10.96.0.50/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.1.5:8080\n"
            "COMMIT\n"
        )
        subprocess.run(["ip", "netns", "exec", node, "iptables-nft-restore"], input=rules, text=True, check=True,
                       capture_output=True, timeout=30)  # fmt: skip
        listener = in_netns(server, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", 8080))
        listener.listen(4)
        accepted: list[str] = []

        def serve() -> None:
            listener.settimeout(4)
            try:
                conn, peer = listener.accept()
                accepted.append(peer[0])
                conn.close()
            except OSError:
                pass

        t = threading.Thread(target=serve, daemon=True)
        t.start()

        def connect() -> bool:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(2.5)
            try:
                s.connect(("10.96.0.50", 80))
                return True
            except OSError:
                return False
            finally:
                s.close()

        ok = in_netns(client, connect)
        t.join(5)
        listener.close()
        if bridge_nf == "1":
            assert ok, "with bridge-nf-call-iptables=1 the DNATed connection to a same-bridge endpoint works"
        else:
            # the SYN is routed (and DNATed), the server's SYN-ACK is bridged straight back untranslated
            assert not ok, "with bridge-nf-call-iptables=0 the replies bypass conntrack and the client never connects"
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=30)
