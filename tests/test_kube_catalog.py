"""The Service catalogue: hand-written dumps with hand-derived expectations, the bundled
scenarios, and every kube-proxy dump of the corpus (probabilities sum to 1, endpoints are
the DNAT targets)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nftrace.kube.catalog import build_catalog
from nftrace.ruleset.parser import parse_rules

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
KUBE_CORPUS = CORPUS / "kubernetes-kube-proxy-iptables"


def catalog_of(text: str, name: str = "<test>"):  # type: ignore[no-untyped-def]
    return build_catalog(parse_rules(text, name))


def nat(*lines: str, chains: tuple[str, ...] = ()) -> str:
    decl = "\n".join(f":{c} - [0:0]" for c in chains)
    return "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" + decl + "\n" + "\n".join(lines) + "\nCOMMIT\n"


# --------------------------------------------------------------------------- hand-written dumps

FOUR = nat(
    '-A KUBE-SERVICES -d 10.96.1.1/32 -p tcp -m comment --comment "app/web:http cluster IP" -m tcp --dport 80 '
    "-j KUBE-SVC-AAAA",
    "-A KUBE-SVC-AAAA ! -s 10.244.0.0/16 -d 10.96.1.1/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ",
    "-A KUBE-SVC-AAAA -m statistic --mode random --probability 0.25000000000 -j KUBE-SEP-E1",
    "-A KUBE-SVC-AAAA -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-E2",
    "-A KUBE-SVC-AAAA -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-E3",
    "-A KUBE-SVC-AAAA -j KUBE-SEP-E4",
    "-A KUBE-SEP-E1 -s 10.244.1.10/32 -j KUBE-MARK-MASQ",
    "-A KUBE-SEP-E1 -p tcp -m tcp -j DNAT --to-destination 10.244.1.10:8080",
    "-A KUBE-SEP-E2 -p tcp -m tcp -j DNAT --to-destination 10.244.1.11:8080",
    "-A KUBE-SEP-E3 -p tcp -m tcp -j DNAT --to-destination 10.244.2.12:8080",
    "-A KUBE-SEP-E4 -p tcp -m tcp -j DNAT --to-destination 10.244.2.13:8080",
    "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
    chains=(
        "KUBE-SERVICES",
        "KUBE-SVC-AAAA",
        "KUBE-SEP-E1",
        "KUBE-SEP-E2",
        "KUBE-SEP-E3",
        "KUBE-SEP-E4",
        "KUBE-MARK-MASQ",
    ),  # fmt: skip
)


def test_four_endpoint_cascade_is_quantised_like_the_kernel() -> None:
    cat = catalog_of(FOUR)
    (s,) = cat.services
    assert (s.name, s.proto, s.cluster_ip, s.port) == ("app/web:http", "tcp", "10.96.1.1", 80)
    got = {e.address: float(e.probability) for e in s.endpoints}
    # Worked by hand: userspace stores round(p * 2^31); 0.25 -> 536870912 (exactly 1/4),
    # 0.33333333349 * 2147483648 = 715827883.0 -> 715827883, 0.5 -> 1073741824.
    # E1 = 1/4; E2 = 3/4 * 715827883/2^31 = 0.25000000011641532...;
    # E3 = E4 = 3/4 * (1 - 715827883/2^31) / 2 = 0.24999999994179234...
    assert got["10.244.1.10:8080"] == 0.25
    assert got["10.244.1.11:8080"] == pytest.approx(0.25000000011641532, abs=1e-17)
    assert got["10.244.2.12:8080"] == pytest.approx(0.24999999994179234, abs=1e-17)
    assert got["10.244.2.13:8080"] == pytest.approx(0.24999999994179234, abs=1e-17)
    assert sum(e.probability for e in s.endpoints) == 1  # exact (rational arithmetic)
    assert [e.rule for e in s.endpoints] == [2, 3, 4, 5]
    assert [e.chain for e in s.endpoints] == ["KUBE-SEP-E1", "KUBE-SEP-E2", "KUBE-SEP-E3", "KUBE-SEP-E4"]
    assert cat.masq_mark == "0x4000"
    assert cat.cluster_cidrs == ["10.244.0.0/16"]
    reasons = [m.reason for m in s.masquerade]
    assert "when the source is outside 10.244.0.0/16 (not a pod)" in reasons
    assert "when the source is the endpoint 10.244.1.10 itself (hairpin)" in reasons
    assert s.endpoints[0].local is None  # no host context, no KUBE-SVL: unknown


def test_last_rule_probabilistic_leaves_a_share_unbalanced() -> None:
    text = nat(
        "-A KUBE-SERVICES -d 10.96.1.2/32 -p udp -m udp --dport 53 -j KUBE-SVC-BBBB",
        "-A KUBE-SVC-BBBB -m statistic --mode random --probability 0.5 -j KUBE-SEP-F1",
        "-A KUBE-SVC-BBBB -m statistic --mode random ! --probability 0.75 -j KUBE-SEP-F2",
        "-A KUBE-SEP-F1 -p udp -j DNAT --to-destination 10.1.0.1:53",
        "-A KUBE-SEP-F2 -p udp -j DNAT --to-destination 10.1.0.2",
        chains=("KUBE-SERVICES", "KUBE-SVC-BBBB", "KUBE-SEP-F1", "KUBE-SEP-F2"),
    )
    cat = catalog_of(text)
    (s,) = cat.services
    assert s.name == "KUBE-SVC-BBBB"  # no comments: named by its chain
    assert s.cluster_ip == "10.96.1.2" and s.port == 53 and s.proto == "udp"
    # F1 = 1/2; F2 = 1/2 * (1 - 3/4) = 1/8 (the port is kept: the service port); 3/8 fall through
    assert [(e.address, float(e.probability)) for e in s.endpoints] == [("10.1.0.1:53", 0.5), ("10.1.0.2:53", 0.125)]
    assert float(s.fallthrough) == 0.375
    assert any("without a DNAT" in w for w in cat.warnings)


def test_comment_disagreeing_with_the_dnat_is_reported() -> None:
    text = nat(
        '-A KUBE-SERVICES -d 10.96.1.3/32 -p tcp -m comment --comment "a/b:c cluster IP" -m tcp --dport 80 '
        "-j KUBE-SVC-CCCC",
        '-A KUBE-SVC-CCCC -m comment --comment "a/b:c -> 10.1.0.9:80" -j KUBE-SEP-G1',
        '-A KUBE-SEP-G1 -p tcp -m comment --comment "a/b:c" -m tcp -j DNAT --to-destination 10.1.0.8:80',
        chains=("KUBE-SERVICES", "KUBE-SVC-CCCC", "KUBE-SEP-G1"),
    )
    cat = catalog_of(text)
    assert [e.address for e in cat.services[0].endpoints] == ["10.1.0.8:80"]  # the DNAT is the truth
    assert any("10.1.0.9:80" in w and "10.1.0.8:80" in w for w in cat.warnings)


LOCAL_POLICY = """*filter
:INPUT ACCEPT [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
-A KUBE-NODEPORTS -p tcp -m comment --comment "ns/lb:web health check node port" -m tcp --dport 31999 -j ACCEPT
-A KUBE-SERVICES -d 10.96.7.7/32 -p tcp -m comment --comment "ns/empty:web has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "ns/empty:web has no endpoints" -m addrtype --dst-type LOCAL -m tcp --dport 30777 -j REJECT --reject-with icmp-port-unreachable
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-EXT-HHHH - [0:0]
:KUBE-FW-HHHH - [0:0]
:KUBE-SVC-HHHH - [0:0]
:KUBE-SVL-HHHH - [0:0]
:KUBE-SEP-L1 - [0:0]
:KUBE-SEP-R1 - [0:0]
:KUBE-SEP-R2 - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-MARK-DROP - [0:0]
-A KUBE-SERVICES -d 10.96.5.5/32 -p tcp -m comment --comment "ns/lb:web cluster IP" -m tcp --dport 443 -j KUBE-SVC-HHHH
-A KUBE-SERVICES -d 198.51.100.7/32 -p tcp -m comment --comment "ns/lb:web loadbalancer IP" -m tcp --dport 443 -j KUBE-FW-HHHH
-A KUBE-SERVICES -d 192.0.2.44/32 -p tcp -m comment --comment "ns/lb:web external IP" -m tcp --dport 443 -j KUBE-EXT-HHHH
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-NODEPORTS -p tcp -m comment --comment "ns/lb:web" -m tcp --dport 30443 -j KUBE-EXT-HHHH
-A KUBE-FW-HHHH -s 203.0.113.0/24 -m comment --comment "ns/lb:web loadbalancer IP" -j KUBE-EXT-HHHH
-A KUBE-FW-HHHH -s 198.51.100.0/28 -m comment --comment "ns/lb:web loadbalancer IP" -j KUBE-EXT-HHHH
-A KUBE-FW-HHHH -m comment --comment "ns/lb:web loadbalancer IP" -j KUBE-MARK-DROP
-A KUBE-EXT-HHHH -s 10.244.0.0/16 -m comment --comment "pod traffic for ns/lb:web external destinations" -j KUBE-SVC-HHHH
-A KUBE-EXT-HHHH -m comment --comment "masquerade LOCAL traffic for ns/lb:web external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-HHHH -m comment --comment "route LOCAL traffic for ns/lb:web external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-HHHH
-A KUBE-EXT-HHHH -j KUBE-SVL-HHHH
-A KUBE-SVC-HHHH -m comment --comment "ns/lb:web -> 10.244.1.4:8443" -m recent --name KUBE-SEP-L1 --rcheck --seconds 600 --reap -j KUBE-SEP-L1
-A KUBE-SVC-HHHH -m comment --comment "ns/lb:web -> 10.244.1.4:8443" -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-L1
-A KUBE-SVC-HHHH -m comment --comment "ns/lb:web -> 10.244.2.4:8443" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-R1
-A KUBE-SVC-HHHH -m comment --comment "ns/lb:web -> 10.244.3.4:8443" -j KUBE-SEP-R2
-A KUBE-SVL-HHHH -m comment --comment "ns/lb:web -> 10.244.1.4:8443" -j KUBE-SEP-L1
-A KUBE-SEP-L1 -p tcp -m comment --comment "ns/lb:web" -m recent --set --name KUBE-SEP-L1 --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.244.1.4:8443
-A KUBE-SEP-R1 -p tcp -m comment --comment "ns/lb:web" -m tcp -j DNAT --to-destination 10.244.2.4:8443
-A KUBE-SEP-R2 -p tcp -m comment --comment "ns/lb:web" -m tcp -j DNAT --to-destination 10.244.3.4:8443
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-MARK-DROP -j MARK --or-mark 0x8000
COMMIT
"""


def test_local_policy_lb_source_ranges_affinity_and_no_endpoints() -> None:
    cat = catalog_of(LOCAL_POLICY)
    lb = cat.service("ns/lb:web")
    assert lb is not None
    assert (lb.cluster_ip, lb.port, lb.node_port, lb.health_check_node_port) == ("10.96.5.5", 443, 30443, 31999)
    assert lb.lb_ips == ["198.51.100.7"] and lb.external_ips == ["192.0.2.44"]
    assert lb.source_ranges == ["203.0.113.0/24", "198.51.100.0/28"]
    assert lb.affinity == {"type": "ClientIP", "timeout": 600, "chain": "KUBE-SVC-HHHH"}
    assert (lb.internal_policy, lb.external_policy) == ("Cluster", "Local")
    # the recent --rcheck rule is affinity, not part of the first-connection cascade
    assert [(e.address, float(e.probability), e.local) for e in lb.endpoints] == [
        ("10.244.1.4:8443", 715827883 / 2**31, True),
        ("10.244.2.4:8443", (1 - 715827883 / 2**31) / 2, False),
        ("10.244.3.4:8443", (1 - 715827883 / 2**31) / 2, False),
    ]
    assert [(e.address, e.probability) for e in lb.local_endpoints] == [("10.244.1.4:8443", 1)]
    assert lb.chains == {"cluster": "KUBE-SVC-HHHH", "svc": "KUBE-SVC-HHHH", "svl": "KUBE-SVL-HHHH",
                         "ext": "KUBE-EXT-HHHH", "fw": "KUBE-FW-HHHH", "nodeport": "KUBE-EXT-HHHH"}  # fmt: skip
    assert cat.cluster_cidrs == ["10.244.0.0/16"]
    assert [m.reason for m in lb.masquerade] == ["when the source is a LOCAL address"]
    empty = cat.service("ns/empty:web")
    assert empty is not None and empty.no_endpoints and not empty.endpoints
    assert (empty.cluster_ip, empty.port, empty.node_port) == ("10.96.7.7", 80, 30777)
    # every rule naming a service is indexed for the trace annotator
    assert cat.rule_names[("nat", "KUBE-SEP-R1", 1)].endpoint == "10.244.2.4:8443"
    assert cat.rule_names[("nat", "KUBE-SVC-HHHH", 3)].endpoint == "10.244.2.4:8443"
    assert cat.rule_names[("filter", "KUBE-SERVICES", 1)].service == "ns/empty:web"
    assert cat.rule_names[("nat", "KUBE-FW-HHHH", 3)].service == "ns/lb:web"


def test_no_kube_rules_gives_an_empty_catalogue() -> None:
    cat = catalog_of("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n")
    assert cat.mode is None and cat.services == [] and cat.docker == []
    assert cat.to_json()["schema"] == "nftrace.services/1"


IPVS = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-LOAD-BALANCER - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES ! -s 10.244.0.0/16 -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
COMMIT
"""
IPVS_SETS = """create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536
add KUBE-CLUSTER-IP 10.96.0.1,tcp:443
add KUBE-CLUSTER-IP 10.96.0.10,udp:53
create KUBE-NODE-PORT-TCP bitmap:port range 0-65535
add KUBE-NODE-PORT-TCP 30080
create KUBE-LOOP-BACK hash:ip,port,ip family inet hashsize 1024 maxelem 65536
add KUBE-LOOP-BACK 10.244.1.5,tcp:8080,10.244.1.5
"""


def test_ipvs_mode_is_recognised() -> None:
    from nftrace.ruleset.ipsets import parse_ipsets

    cat = build_catalog(parse_rules(IPVS, "ipvs.rules"), None, parse_ipsets(IPVS_SETS, "ipsets"))
    assert cat.mode == "ipvs" and cat.services == []
    assert cat.ipvs is not None
    assert cat.ipvs["chains"] == ["KUBE-LOAD-BALANCER", "KUBE-NODE-PORT"]
    assert cat.ipvs["sets"] == ["KUBE-CLUSTER-IP", "KUBE-LOOP-BACK", "KUBE-NODE-PORT-TCP"]
    assert cat.ipvs["cluster_ips"] == ["10.96.0.1,tcp:443", "10.96.0.10,udp:53"]
    assert cat.ipvs["node_ports"] == ["tcp:30080"]
    assert cat.cluster_cidrs == ["10.244.0.0/16"]
    assert any("IPVS" in w for w in cat.warnings)


# --------------------------------------------------------------------------- bundled scenarios


def _scenario(name: str):  # type: ignore[no-untyped-def]
    from nftrace.host.parse import build_host_context

    d = ROOT / "rulesets" / name
    sysctls = [ln for ln in (d / "sysctl.txt").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    host = build_host_context(routes_file=str(d / "routes.txt"), addrs_file=str(d / "addrs.txt"), sysctls=sysctls)
    return build_catalog(parse_rules((d / "iptables.rules").read_text(), str(d / "iptables.rules")), host)


def test_kube_node_catalogue() -> None:
    cat = _scenario("kube-node")
    assert cat.mode == "iptables" and cat.cluster_cidrs == ["10.244.0.0/16"] and cat.warnings == []
    names = [s.name for s in cat.services]
    assert names == ["default/kubernetes:https", "kube-system/kube-dns:dns", "kube-system/kube-dns:dns-tcp",
                     "kube-system/kube-dns:metrics", "shop/cart:http", "shop/legacy:http", "shop/web:http"]  # fmt: skip
    web = cat.service("shop/web:http")
    assert web is not None
    assert (web.cluster_ip, web.port, web.node_port, web.health_check_node_port) == ("10.96.120.15", 80, 30080, 32156)
    assert web.lb_ips == ["192.168.50.240"] and web.localhost_node_port
    assert (web.internal_policy, web.external_policy) == ("Cluster", "Local")
    # local: the one endpoint in KUBE-SVL; the host's routes agree (10.244.1.0/24 is on cni0)
    assert [(e.address, e.local) for e in web.endpoints] == [
        ("10.244.0.7:8080", False), ("10.244.1.5:8080", True), ("10.244.2.9:8080", False)]  # fmt: skip
    dns = cat.service("kube-system/kube-dns:dns")
    assert dns is not None and [(e.address, e.local) for e in dns.endpoints] == [
        ("10.244.0.2:53", False),
        ("10.244.1.2:53", True),
    ]  # fmt: skip — decided from the routes
    api = cat.service("default/kubernetes:https")
    assert api is not None and api.endpoints[0].local is False  # 192.168.50.10: another host on eth0's LAN
    cart = cat.service("shop/cart:http")
    assert cart is not None and cart.affinity is not None and cart.affinity["timeout"] == 10800
    legacy = cat.service("shop/legacy:http")
    assert legacy is not None and legacy.no_endpoints and legacy.node_port == 31000


def test_docker_host_published_ports() -> None:
    cat = _scenario("docker-host")
    assert cat.mode is None and cat.services == []
    got = [(d.host_ip, d.host_port, d.container_ip, d.container_port, d.bridge, d.mode, d.hairpin_masquerade)
           for d in cat.docker]  # fmt: skip
    assert got == [
        (None, 8080, "172.17.0.2", 80, "docker0", "hairpin-nat", True),
        ("127.0.0.1", 5432, "172.17.0.3", 5432, "docker0", "hairpin-nat", True),
        (None, 443, "172.18.0.2", 8443, "br-3f2a9c1d7e45", "hairpin-nat", True),
    ]
    assert cat.rule_names[("nat", "DOCKER", 1)].endpoint == "172.17.0.2:80"


@pytest.mark.skipif(not (CORPUS / "docker-moby").is_dir(), reason="corpus not available")
def test_docker_userland_proxy_mode_from_the_corpus() -> None:
    d = CORPUS / "docker-moby"
    proxy = catalog_of((d / "iptablesdoc__usernet-portmap.rules").read_text())
    noproxy = catalog_of((d / "iptablesdoc__usernet-portmap-noproxy.rules").read_text())
    (p,) = proxy.docker
    (n,) = noproxy.docker
    assert (p.container_ip, p.container_port, p.host_port, p.bridge) == ("192.0.2.2", 80, 8080, "bridge1")
    assert (p.mode, p.hairpin_masquerade, p.localhost) == ("userland-proxy", False, "docker-proxy")
    assert (n.mode, n.hairpin_masquerade, n.localhost) == ("hairpin-nat", True, "kernel (route_localnet)")
    assert n.bridge == "bridge1"  # from POSTROUTING -s 192.0.2.0/24 ! -o bridge1 -j MASQUERADE


# --------------------------------------------------------------------------- the corpus


def _builtin_policies(text: str) -> str:
    """`:INPUT - [0:0]` for a built-in chain: iptables-restore (nft and legacy, v1.8.9) accepts it and
    keeps the chain's policy, ACCEPT in a fresh namespace (checked with the kernel, see docs/kube.md)."""
    return re.sub(r"^:(INPUT|FORWARD|OUTPUT|PREROUTING|POSTROUTING) - ", r":\1 ACCEPT ", text, flags=re.M)


def _corpus_dumps() -> list[Path]:
    out = []
    for d in (KUBE_CORPUS, KUBE_CORPUS / "roundtrip-iptables-1.8.9"):
        if d.is_dir():
            out += sorted(d.glob("*.rules"))
    for name in ("kube-node", "flannel-node"):
        out.append(ROOT / "rulesets" / name / "iptables.rules")
    return out


def _parse_or_skip(path: Path):  # type: ignore[no-untyped-def]
    from nftrace.errors import InputError

    text = path.read_text()
    try:
        return parse_rules(text, str(path))
    except InputError:
        pass
    try:
        return parse_rules(_builtin_policies(text), str(path))
    except InputError as e:
        pytest.skip(f"{path.name} does not load (iptables-restore refuses it too): {e.one_line()}")


@pytest.mark.parametrize("path", _corpus_dumps(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_probabilities_sum_to_one_and_endpoints_are_the_dnat_targets(path: Path) -> None:
    if not path.is_file():
        pytest.skip("corpus not available")
    rs = _parse_or_skip(path)
    cat = build_catalog(rs)
    assert cat.mode == "iptables"
    assert not [w for w in cat.warnings if "says ->" in w or "without a DNAT" in w], cat.warnings
    nat_t = rs.tables["nat"]
    # every DNAT of a service chain, and the service chains that lead to it
    dnat_targets: dict[str, str] = {}
    for c in nat_t.chains.values():
        if not c.name.startswith(("KUBE-SEP-", "KUBE-SVC-")):
            continue
        for r in c.rules:
            m = re.search(r"--to-destination (\S+)", r.text)
            if m and " -j DNAT" in r.text:
                dnat_targets[c.name] = m.group(1)
    seen: set[str] = set()
    with_endpoints = 0
    for s in cat.services:
        if not s.endpoints:
            assert s.no_endpoints or s.no_local_endpoints or not s.chains.get("svc"), s.name
            continue
        with_endpoints += 1
        total = sum(float(e.probability) for e in s.endpoints)
        assert abs(total - 1.0) < 1e-9, (s.name, total)
        for e in s.endpoints:
            assert dnat_targets[e.chain] == e.address, (s.name, e.chain)
            seen.add(e.chain)
        # the comments, where kube-proxy wrote them, name the same endpoints
        svc_chain = nat_t.chains.get(s.chains.get("svc", ""))
        if svc_chain is not None:
            commented = {
                m.group(1) for r in svc_chain.rules for m in [re.search(r'-> ([\d.:]+)"', r.text)] if m is not None
            }
            if commented:
                assert commented == {e.address for e in s.endpoints}, s.name
    assert with_endpoints > 0
    assert seen == set(dnat_targets), "every DNAT of a service chain belongs to a service"


@pytest.mark.skipif(not KUBE_CORPUS.is_dir(), reason="corpus not available")
def test_2015_portals_layout() -> None:
    # a real iptables-save v1.4.21 dump (2015): KUBE-PORTALS-* name the services, KUBE-SVC-5555... jumps
    # to KUBE-SVC-4444... which DNATs (with -m recent --set, no --rcheck: no affinity yet)
    path = KUBE_CORPUS / "legacy-2015-TestGetChainLinesMultipleTables__userspace-proxy-v1.4.21.rules"
    cat = catalog_of(path.read_text(), str(path))
    got = [(s.name, s.proto, s.cluster_ip, s.port, [(e.address, float(e.probability), e.chain) for e in s.endpoints],
            s.affinity) for s in cat.services]  # fmt: skip
    assert got == [
        ("default/kubernetes:", "tcp", "10.247.0.1", 443, [("10.245.1.2:443", 1.0, "KUBE-SVC-4444444444444444")], None),
        ("kube-system/kube-dns:dns", "udp", "10.247.0.10", 53,
         [("10.246.1.2:53", 1.0, "KUBE-SVC-1111111111111111")], None),
        ("kube-system/kube-dns:dns-tcp", "tcp", "10.247.0.10", 53,
         [("10.246.1.2:53", 1.0, "KUBE-SVC-3333333333333333")], None),
    ]  # fmt: skip
    assert cat.layout == "2015, KUBE-PORTALS-*"


# --------------------------------------------------------------------------- the command


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from nftrace.cli import main

    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_services_command_json_and_text(capsys: pytest.CaptureFixture[str]) -> None:
    rules = str(ROOT / "rulesets" / "kube-node")
    status, out, err = _run(capsys, "services", "--rules", rules, "--format", "json")
    assert status == 0, err
    doc = json.loads(out)
    assert doc["schema"] == "nftrace.services/1"
    web = next(s for s in doc["services"] if s["name"] == "shop/web:http")
    for key in ("name", "proto", "cluster_ip", "port", "node_port", "external_ips", "lb_ips", "source_ranges",
                "affinity", "traffic_policy", "endpoints", "masquerade", "chains"):  # fmt: skip
        assert key in web
    assert set(web["endpoints"][0]) >= {"ip", "port", "probability", "local", "chain"}
    assert sum(e["probability"] for e in web["endpoints"]) == pytest.approx(1.0, abs=1e-12)
    assert doc["docker"] == [] and isinstance(doc["warnings"], list)
    status, out, _ = _run(capsys, "services", "--rules", rules)
    assert status == 0 and "shop/web:http" in out and "10.244.1.5:8080" in out
    assert "\x1b[" not in out  # no colour when not on a terminal


def test_services_command_bad_input_is_one_line() -> None:
    p = subprocess.run([sys.executable, "-m", "nftrace", "services", "--rules", "/nonexistent/rules"],
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
