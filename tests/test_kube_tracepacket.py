"""kube-proxy's own expected packet outcomes (TestTracePacket.flows.tsv in the corpus), reproduced
by the engine, and the same packets confirmed against the kernel.

The tsv gives, per flow, the source, protocol, destination and port, the DNAT destinations reached
(every branch of the statistic cascade) or the filter verdict (ACCEPT/DROP/REJECT, empty for none)
and whether KUBE-MARK-MASQ was hit.  Its header names the node the rules were written for:
testNodeIP 192.168.0.2, the LOCAL addresses 127.0.0.1 192.168.0.2 192.168.1.2 192.168.99.11, an
external client 203.0.113.2, and (from the rules) the pod network 10.0.0.0/8.  HOST below is that
node: a pod bridge cbr0 holding 10.0.0.0/8, eth0 toward the clients with the default route.  A flow
whose source is a LOCAL address is sent by a local process; any other arrives on the interface the
node routes its source to.

Upstream's tracer runs nat PREROUTING, then the filter chains KUBE-SERVICES,
KUBE-EXTERNAL-SERVICES, KUBE-NODEPORTS and KUBE-PROXY-FIREWALL directly.  Here the full hook path
runs; the comparison reads the DNAT steps of every branch and the verdict of the first rule of those
filter chains that decided the packet's fate.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from nftrace.engine.packet import packet_from_dict
from nftrace.engine.pipeline import Engine
from nftrace.host.parse import build_host_context
from nftrace.ruleset.parser import parse_rules

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "kubernetes-kube-proxy-iptables"
TSV = CORPUS / "TestTracePacket.flows.tsv"
RULES = CORPUS / "TestTracePacket.quoted.rules"
KUBE_FILTER = ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL")

ADDRS = """1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN group default qlen 1000
    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00
    inet 127.0.0.1/8 scope host lo
       valid_lft forever preferred_lft forever
2: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc fq_codel state UP group default qlen 1000
    link/ether 52:54:00:12:00:02 brd ff:ff:ff:ff:ff:ff
    inet 192.168.0.2/24 brd 192.168.0.255 scope global eth0
       valid_lft forever preferred_lft forever
    inet 192.168.99.11/32 scope global eth0
       valid_lft forever preferred_lft forever
3: eth1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc fq_codel state UP group default qlen 1000
    link/ether 52:54:00:12:01:02 brd ff:ff:ff:ff:ff:ff
    inet 192.168.1.2/24 brd 192.168.1.255 scope global eth1
       valid_lft forever preferred_lft forever
4: cbr0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP group default qlen 1000
    link/ether 52:54:00:12:0a:01 brd ff:ff:ff:ff:ff:ff
    inet 10.0.0.1/8 brd 10.255.255.255 scope global cbr0
       valid_lft forever preferred_lft forever
"""
ROUTES = """default via 192.168.0.1 dev eth0 proto static
10.0.0.0/8 dev cbr0 proto kernel scope link src 10.0.0.1
192.168.0.0/24 dev eth0 proto kernel scope link src 192.168.0.2
192.168.1.0/24 dev eth1 proto kernel scope link src 192.168.1.2
"""
SYSCTLS = ["net.ipv4.ip_forward=1"] + [
    f"net.ipv4.conf.{d}.rp_filter=0" for d in ("all", "default", "lo", "eth0", "eth1", "cbr0")
]

pytestmark = pytest.mark.skipif(not TSV.is_file() or not RULES.is_file(), reason="corpus not available")


def flows() -> list[dict[str, Any]]:
    out = []
    header: list[str] = []
    for line in TSV.read_text().splitlines():
        if line.startswith("# Columns:"):
            header = line.split(":", 1)[1].strip().split("\t")
            continue
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t")
        row = dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=True))
        row["protocol"] = row["protocol"] or "tcp"
        row["expected"] = sorted(x.strip() for x in row["expected_output"].split(",") if x.strip())
        row["masq"] = row["expected_masq"].strip().lower() == "true"
        out.append(row)
    return out


def rules_text() -> str:
    """The dump as it is; if the parser refuses ":INPUT - [0:0]" for a built-in chain, with ACCEPT there:
    iptables-restore (nft and legacy, v1.8.9) accepts "-" and keeps the policy, ACCEPT in a fresh
    namespace (the kernel test below loads the file unchanged)."""
    from nftrace.errors import InputError

    text = RULES.read_text()
    try:
        parse_rules(text, str(RULES))
    except InputError:
        return re.sub(r"^:(INPUT|FORWARD|OUTPUT|PREROUTING|POSTROUTING) - ", r":\1 ACCEPT ", text, flags=re.M)
    return text


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("node")
    (d / "addrs.txt").write_text(ADDRS)
    (d / "routes.txt").write_text(ROUTES)
    return build_host_context(routes_file=str(d / "routes.txt"), addrs_file=str(d / "addrs.txt"), sysctls=SYSCTLS)


def packet_for(row: dict[str, Any], host) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    from nftrace.host.fib import Fib

    fib = Fib(host)
    d: dict[str, Any] = {"proto": row["protocol"], "src": row["source_ip"], "dst": row["dest_ip"],
                         "sport": 40000 + len(row["name"]), "dport": int(row["dest_port"])}  # fmt: skip
    if fib.is_local(row["source_ip"]):
        d["origin"] = "local"
    else:
        d["origin"] = "ingress"
        d["iif"] = fib.lookup(row["source_ip"]).oif
    return d


def engine_outcome(doc: dict[str, Any]) -> tuple[list[str], bool]:
    dnats = sorted(
        {s["after"] for b in doc["branches"] for s in b["steps"] if s["kind"] == "nat" and s["type"] == "DNAT"}
    )
    masq = any(s["kind"] == "rule" and s.get("target") == "KUBE-MARK-MASQ" for b in doc["branches"] for s in b["steps"])
    if dnats:
        return dnats, masq
    for b in doc["branches"]:
        for s in b["steps"]:
            if (s["kind"] == "rule" and s["table"] == "filter" and s["chain"] in KUBE_FILTER
                    and s.get("target") in ("ACCEPT", "DROP", "REJECT")):  # fmt: skip
                return [s["target"]], masq
    return [], masq


@pytest.mark.parametrize("row", flows(), ids=lambda r: r["name"])
def test_engine_reproduces_kube_proxy_expectations(row: dict[str, Any], host) -> None:  # type: ignore[no-untyped-def]
    from nftrace.kube.annotate import annotate
    from nftrace.kube.catalog import build_catalog

    rs = parse_rules(rules_text(), str(RULES))
    pkt, origin = packet_from_dict(packet_for(row, host))
    doc = Engine(rs, host).trace(pkt, origin).to_json()
    got, masq = engine_outcome(doc)
    assert (got, masq) == (row["expected"], row["masq"]), doc
    # every DNAT of the trace is named by the catalogue, with the endpoint it reaches
    annotate(doc, build_catalog(rs, host))
    for b in doc["branches"]:
        for s in b["steps"]:
            if s["kind"] == "nat" and s["type"] == "DNAT":
                assert s["endpoint"] == s["after"] and s["service"].startswith("ns")
    if masq and got and got[0][0].isdigit():
        # kube-proxy's mark leads to a real MASQUERADE in POSTROUTING
        assert all(b.get("masquerade") for b in doc["branches"] if b["result"]["verdict"] == "ACCEPT")


@pytest.mark.kernel
def test_kernel_agrees_with_the_expectations(host) -> None:  # type: ignore[no-untyped-def]
    from tests.kernelhost import KernelHost, KernelHostUnavailable, KPacket, unavailable_reason

    reason = unavailable_reason("nft")
    if reason:
        pytest.skip(reason)
    rs = parse_rules(rules_text(), str(RULES))
    engine = Engine(rs, host)
    try:
        kh = KernelHost(host, RULES.read_text())  # the file as it is: the kernel takes the "-" policies
    except KernelHostUnavailable as e:
        pytest.skip(str(e))
    problems: list[str] = []
    with kh:
        for row in flows():
            d = packet_for(row, host)
            seen: set[str] = set()
            verdicts: set[str] = set()
            masqs: set[bool] = set()
            tries = 12 if len(row["expected"]) > 1 else 1  # p=1/2 each: both seen but with chance 2^-11
            for k in range(tries):
                kp = KPacket(origin=d["origin"], proto=d["proto"], src=d["src"], dst=d["dst"],
                             sport=d["sport"] + k, dport=d["dport"], iif=d.get("iif"))  # fmt: skip
                res = kh.send(kp)
                fin = res.final
                if (fin["dst"], fin["dport"]) != (d["dst"], d["dport"]):
                    seen.add(f"{fin['dst']}:{fin['dport']}")
                masqs.add(any(ev.target == "KUBE-MARK-MASQ" for ev in res.events))
                for ev in res.events:
                    if ev.kind == "rule" and ev.table == "filter" and ev.chain in KUBE_FILTER:
                        tgt = re.search(r" -j (\S+)", ev.text)
                        if tgt and tgt.group(1) in ("ACCEPT", "DROP", "REJECT"):
                            verdicts.add(tgt.group(1))
                pkt, origin = packet_from_dict({**d, "sport": kp.sport})
                trace = engine.trace(pkt, origin)
                from tests.differential import compare

                v = compare(trace, res)
                if not v.ok:
                    problems.append(f"{row['name']}: engine and kernel disagree\n{v.message}")
            got = sorted(seen) if seen else sorted(verdicts)
            if got != row["expected"] or masqs != {row["masq"]}:
                problems.append(f"{row['name']}: kernel gave {got} masq={masqs}, tsv says {row['expected']} "
                                f"masq={row['masq']}")  # fmt: skip
    assert not problems, "\n".join(problems)
