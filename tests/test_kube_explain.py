"""`nftrace explain` with kube-proxy/Docker awareness: named hops, service flows, findings.

Expectations are read off the scenario dumps by hand (rule positions as iptables -L
--line-numbers counts them); the kernel tests in test_kube_kernel.py back the kernel facts
the findings state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nftrace.cli import main

ROOT = Path(__file__).resolve().parents[1]
KUBE = str(ROOT / "rulesets" / "kube-node")
FLANNEL = str(ROOT / "rulesets" / "flannel-node")
DOCKER = str(ROOT / "rulesets" / "docker-host")


def explain(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    status = main(["explain", *argv, "--format", "json"])
    out, err = capsys.readouterr()
    assert status == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def explain_text(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    status = main(["explain", *argv])
    out, err = capsys.readouterr()
    assert status == 0, err
    return out


def codes(doc: dict[str, Any]) -> dict[str, str]:
    return {f["code"]: f["severity"] for f in doc["findings"]}


def test_steps_name_service_and_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    doc = explain(capsys, "--rules", KUBE, "tcp 10.244.1.3:40200 > 10.96.120.15:80 iif cni0")
    assert doc["schema"] == "nftrace.trace/1" and doc["findings"] == []
    by_ep = {b["endpoint"]: b for b in doc["branches"]}
    assert set(by_ep) == {"10.244.0.7:8080", "10.244.1.5:8080", "10.244.2.9:8080"}
    b = by_ep["10.244.1.5:8080"]
    assert b["service"] == "shop/web:http" and b["masquerade"] is False
    named = [(s["chain"], s["rule"], s.get("service"), s.get("endpoint")) for s in b["steps"] if s["kind"] == "rule"
             and s["table"] == "nat" and s["hook"] == "PREROUTING"]  # fmt: skip
    assert named == [
        ("PREROUTING", 1, None, None),
        ("KUBE-SERVICES", 6, "shop/web:http", None),
        ("KUBE-SVC-67NZLRHBNDSAWJRO", 3, "shop/web:http", "10.244.1.5:8080"),
        ("KUBE-SEP-34ZZ2QFGO32YYXXO", 2, "shop/web:http", "10.244.1.5:8080"),
    ]
    (nat,) = [s for s in b["steps"] if s["kind"] == "nat"]
    assert (nat["type"], nat["service"], nat["endpoint"]) == ("DNAT", "shop/web:http", "10.244.1.5:8080")
    text = explain_text(capsys, "--rules", KUBE, "tcp 10.244.1.3:40200 > 10.96.120.15:80 iif cni0")
    assert "shop/web:http 10.244.1.5:8080" in text


def test_to_service_builds_the_pod_packet_and_lists_every_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    doc = explain(capsys, "--rules", KUBE, "--to-service", "shop/web:http")
    flow = doc["service_flow"]
    # default pod: the first address of the node's pod subnet (10.244.1.0/24 on cni0) that is neither
    # the node's own (10.244.1.1) nor an endpoint (10.244.1.2 is kube-dns)
    assert flow["packet"] == {"proto": "tcp", "dst": "10.96.120.15", "dport": 80, "src": "10.244.1.3",
                              "iif": "cni0", "origin": "ingress", "sport": 40000}  # fmt: skip
    assert flow["entry"] == "cluster IP" and flow["service"] == "shop/web:http"
    got = sorted((b["endpoint"], b["result"]["oif"], b["result"]["packet"]["src"]) for b in doc["branches"])
    assert got == [("10.244.0.7:8080", "eth0", "10.244.1.3"), ("10.244.1.5:8080", "cni0", "10.244.1.3"),
                   ("10.244.2.9:8080", "eth0", "10.244.1.3")]  # fmt: skip
    assert sum(b["probability"] for b in doc["branches"]) == pytest.approx(1.0, abs=1e-12)
    text = explain_text(capsys, "--rules", KUBE, "--to-service", "shop/web:http")
    assert "service shop/web:http (cluster IP): tcp 10.244.1.3:40000 > 10.96.120.15:80 iif cni0" in text
    assert "10.244.1.3:40000 > 10.244.2.9:8080" in text


def test_from_pod_hairpin_is_masqueraded(capsys: pytest.CaptureFixture[str]) -> None:
    doc = explain(capsys, "--rules", KUBE, "--to-service", "shop/web:http", "--from-pod", "10.244.1.5")
    assert doc["packet"]["iif"] == "cni0" and doc["packet"]["src"] == "10.244.1.5"
    mine = next(b for b in doc["branches"] if b["endpoint"] == "10.244.1.5:8080")
    # KUBE-SEP-34ZZ2QFGO32YYXXO rule 1 (-s 10.244.1.5/32) marks it; KUBE-POSTROUTING rule 3 masquerades
    assert mine["masquerade"] is True and mine["result"]["packet"]["src"] == "10.244.1.1"
    others = [b for b in doc["branches"] if b["endpoint"] != "10.244.1.5:8080"]
    assert others and all(b["masquerade"] is False for b in others)


def test_from_pod_on_another_node_is_noted(capsys: pytest.CaptureFixture[str]) -> None:
    doc = explain(capsys, "--rules", KUBE, "--to-service", "kube-system/kube-dns:dns", "--from-pod", "10.244.2.7")
    assert doc["packet"]["iif"] == "eth0" and doc["packet"]["proto"] == "udp"
    assert any("not on this node" in n for n in doc["service_flow"]["notes"])


def test_node_port_and_external_ip_flows(capsys: pytest.CaptureFixture[str]) -> None:
    doc = explain(capsys, "--rules", KUBE, "--node-port", "30080")
    p = doc["service_flow"]["packet"]
    assert (p["src"], p["dst"], p["dport"], p["iif"]) == ("203.0.113.10", "192.168.50.11", 30080, "eth0")
    # externalTrafficPolicy Local: only the local endpoint, client address kept
    assert [(b["probability"], b["endpoint"], b["result"]["packet"]["src"]) for b in doc["branches"]] == [
        (1.0, "10.244.1.5:8080", "203.0.113.10")
    ]
    doc = explain(capsys, "--rules", KUBE, "--external-ip", "192.168.50.240", "--src", "198.51.100.3")
    assert doc["service_flow"]["entry"] == "load-balancer IP"
    assert [b["endpoint"] for b in doc["branches"]] == ["10.244.1.5:8080"]
    assert doc["packet"]["src"] == "198.51.100.3"


def test_local_process_to_a_service_is_masqueraded(capsys: pytest.CaptureFixture[str]) -> None:
    doc = explain(capsys, "--rules", FLANNEL, "--to-service", "demo/echo:http", "--local")
    assert doc["origin"] == "local"
    got = sorted((b["endpoint"], b["result"]["oif"], b["result"]["packet"]["src"], b["masquerade"])
                 for b in doc["branches"])  # fmt: skip
    # flows.txt of flannel-node: MASQUERADE takes flannel.1's address, or cni0's
    assert got == [
        ("10.244.1.4:8080", "flannel.1", "10.244.2.0", True),
        ("10.244.2.6:8080", "cni0", "10.244.2.1", True),
    ]


def test_no_endpoints_finding(capsys: pytest.CaptureFixture[str]) -> None:
    doc = explain(capsys, "--rules", KUBE, "--to-service", "shop/legacy:http")
    assert codes(doc) == {"service-no-endpoints": "error"}
    assert "shop/legacy:http has no endpoints" in doc["findings"][0]["message"]
    assert "KUBE-SERVICES rule 1" in doc["findings"][0]["message"]
    doc = explain(capsys, "--rules", KUBE, "tcp 203.0.113.7:50002 > 192.168.50.11:31000 iif eth0")
    assert codes(doc) == {"service-no-endpoints": "error"}
    assert "KUBE-EXTERNAL-SERVICES rule 1" in doc["findings"][0]["message"]


def test_icmp_to_cluster_ip_finding(capsys: pytest.CaptureFixture[str]) -> None:
    doc = explain(capsys, "--rules", KUBE, "icmp 10.244.1.3 > 10.96.0.10 iif cni0")
    assert codes(doc) == {"clusterip-icmp": "warning"}
    assert "virtual address" in doc["findings"][0]["message"]
    doc = explain(capsys, "--rules", KUBE, "tcp 10.244.1.3:1 > 10.96.0.10:80 iif cni0")
    assert codes(doc) == {"clusterip-no-such-port": "warning"}
    text = explain_text(capsys, "--rules", KUBE, "icmp 10.244.1.3 > 10.96.0.10 iif cni0")
    assert "findings:" in text and "[warning] clusterip-icmp" in text


def test_ip_forward_disabled_finding(capsys: pytest.CaptureFixture[str]) -> None:
    doc = explain(capsys, "--rules", KUBE, "--sysctl", "net.ipv4.ip_forward=0", "--to-service",
                  "default/kubernetes:https")  # fmt: skip
    assert codes(doc) == {"ip-forward-disabled": "error"}
    assert "192.168.50.10:6443" in doc["findings"][0]["message"]


def test_bridge_nf_call_iptables_findings(capsys: pytest.CaptureFixture[str]) -> None:
    off = ("--sysctl", "net.bridge.bridge-nf-call-iptables=0")
    doc = explain(capsys, "--rules", KUBE, *off, "tcp 10.244.1.3:5000 > 10.244.1.5:8080 iif cni0")
    assert codes(doc) == {"bridge-nf-call-iptables": "warning"}
    assert "never sees it" in doc["findings"][0]["message"]
    # client and endpoint on one bridge, no masquerade: the replies escape conntrack
    doc = explain(capsys, "--rules", KUBE, *off, "--to-service", "shop/web:http")
    assert codes(doc) == {"bridge-nf-call-iptables": "error"}
    assert "10.96.120.15:80" in doc["findings"][0]["message"]
    # with the sysctl at 1 (the scenario's own value) nothing to say
    doc = explain(capsys, "--rules", KUBE, "--to-service", "shop/web:http")
    assert doc["findings"] == []


def test_local_policy_without_local_endpoint_finding(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # the kube-node web service with its one local endpoint gone: KUBE-SVL is replaced by kube-proxy's
    # "has no local endpoints" DROP rules in filter KUBE-EXTERNAL-SERVICES
    src = (ROOT / "rulesets" / "kube-node" / "iptables.rules").read_text()
    src = src.replace(
        '-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "shop/legacy:http',
        '-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "shop/web:http has no local endpoints" -m addrtype '
        "--dst-type LOCAL -m tcp --dport 30080 -j DROP\n"
        '-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "shop/legacy:http',
    )
    src = src.replace("-A KUBE-EXT-67NZLRHBNDSAWJRO -j KUBE-SVL-67NZLRHBNDSAWJRO\n", "")
    src = src.replace('-A KUBE-SVL-67NZLRHBNDSAWJRO -m comment --comment "shop/web:http -> 10.244.1.5:8080" '
                      "-j KUBE-SEP-34ZZ2QFGO32YYXXO\n", "")  # fmt: skip
    d = tmp_path / "node"
    d.mkdir()
    for f in ("addrs.txt", "routes.txt", "sysctl.txt"):
        (d / f).write_text((ROOT / "rulesets" / "kube-node" / f).read_text())
    (d / "iptables.rules").write_text(src)
    doc = explain(capsys, "--rules", str(d), "--node-port", "30080")
    assert codes(doc) == {"local-policy-no-local-endpoint": "error"}
    msg = doc["findings"][0]["message"]
    assert "shop/web:http has externalTrafficPolicy: Local" in msg and "32156" in msg
    assert [b["result"]["disposition"] for b in doc["branches"]] == ["dropped"]


def test_localhost_node_port_route_localnet_finding(capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--rules", KUBE, "--node-port", "30080", "--local", "--src", "127.0.0.1", "--dst", "127.0.0.1")
    doc = explain(capsys, *args)
    assert codes(doc) == {"localhost-nodeport-route-localnet": "info"}
    doc = explain(capsys, *args, "--sysctl", "net.ipv4.conf.all.route_localnet=0")
    assert codes(doc) == {"localhost-nodeport-route-localnet": "error"}
    assert "route_localnet=1" in doc["findings"][0]["message"]
    # the kernel ORs the device's value with all's (IN_DEV_ROUTE_LOCALNET), any non-zero is on
    off_all = ("--sysctl", "net.ipv4.conf.all.route_localnet=0")
    doc = explain(capsys, *args, *off_all, "--sysctl", "net.ipv4.conf.eth0.route_localnet=2")
    assert codes(doc) == {"localhost-nodeport-route-localnet": "info"}
    doc = explain(capsys, *args, "--sysctl", "net.ipv4.conf.all.route_localnet=2")
    assert codes(doc) == {"localhost-nodeport-route-localnet": "info"}


def test_session_affinity_finding(capsys: pytest.CaptureFixture[str]) -> None:
    doc = explain(capsys, "--rules", KUBE, "--to-service", "shop/cart")
    assert codes(doc) == {"session-affinity": "info"}
    assert "10800 s" in doc["findings"][0]["message"]


def test_docker_hops_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    doc = explain(capsys, "--rules", DOCKER, "tcp 203.0.113.9:51000 > 192.168.1.10:8080 iif eth0")
    (b,) = doc["branches"]
    assert (b["service"], b["endpoint"]) == ("docker *:8080/tcp", "172.17.0.2:80")


def test_ipvs_finding(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from tests.test_kube_catalog import IPVS, IPVS_SETS

    (tmp_path / "iptables.rules").write_text(IPVS)
    (tmp_path / "ipsets.txt").write_text(IPVS_SETS)
    (tmp_path / "addrs.txt").write_text(
        "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536\n    inet 127.0.0.1/8 scope host lo\n"
        "2: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500\n    inet 192.168.50.11/24 scope global eth0\n"
        "3: cni0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500\n    inet 10.244.1.1/24 scope global cni0\n"
        "4: kube-ipvs0: <BROADCAST,NOARP> mtu 1500\n    inet 10.96.0.1/32 scope global kube-ipvs0\n"
        "    inet 10.96.0.10/32 scope global kube-ipvs0\n"
    )
    doc = explain(capsys, "--rules", str(tmp_path), "tcp 10.244.1.3:40000 > 10.96.0.1:443 iif cni0")
    # nat KUBE-SERVICES rule 3 accepts (KUBE-CLUSTER-IP), the address is local: delivered to IPVS
    assert [b["result"]["disposition"] for b in doc["branches"]] == ["local"]
    assert codes(doc) == {"ipvs-mode": "info"}
    assert "outside iptables" in doc["findings"][0]["message"]
    # without kube-ipvs0 in the host context, the ipset KUBE-CLUSTER-IP says which addresses it holds
    addrs = (tmp_path / "addrs.txt").read_text()
    (tmp_path / "addrs.txt").write_text(addrs.split("4: kube-ipvs0")[0])
    doc = explain(capsys, "--rules", str(tmp_path), "udp 10.244.1.3:40000 > 10.96.0.10:53 iif cni0")
    assert [b["result"]["disposition"] for b in doc["branches"]] == ["local"]
    assert any("kube-ipvs0" in w for w in doc["warnings"])
    assert codes(doc) == {"ipvs-mode": "info"}
    # traffic that is not for a Service says nothing about IPVS
    doc = explain(capsys, "--rules", str(tmp_path), "tcp 192.168.50.7:40000 > 192.168.50.11:22 iif eth0")
    assert doc["findings"] == []


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--to-service", "nope/nothing:x"], "no Service 'nope/nothing:x'"),
        (["--to-service", "kube-dns"], "several Service ports"),
        (["--node-port", "1234"], "no Service has node port 1234"),
        (["--external-ip", "10.1.2.3"], "no Service has external"),
        (["--from-pod", "10.244.1.3"], "--from-pod goes with --to-service"),
        (["--to-service", "shop/web:http", "tcp 1.2.3.4:5 > 6.7.8.9:80 iif eth0"], "give no flow string"),
    ],
)
def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    status = main(["explain", "--rules", KUBE, *argv])
    out, err = capsys.readouterr()
    assert status == 2 and needle in err and err.count("\n") == 1, err


def test_batch_traces_are_annotated(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "b.jsonl"
    f.write_text(json.dumps({"origin": "ingress", "proto": "udp", "src": "10.244.1.3", "dst": "10.96.0.10",
                             "sport": 5353, "dport": 53, "iif": "cni0"}) + "\n")  # fmt: skip
    assert main(["explain", "--rules", KUBE, "--batch", str(f)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert sorted(b["endpoint"] for b in doc["branches"]) == ["10.244.0.2:53", "10.244.1.2:53"]
    assert doc["findings"] == []
