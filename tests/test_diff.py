"""`nftrace diff`: structural comparison, kube-proxy chain pairing, probes, behaviour, CLI and JSON."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nftrace.cli import main
from nftrace.diff import SCHEMA, compare, load_side, read_packets
from nftrace.diff.chains import pair_chains
from nftrace.diff.hosts import synthetic_host
from nftrace.diff.probes import generate_probes
from nftrace.ruleset.parser import parse_rules

REPO = Path(__file__).resolve().parent.parent
KUBE = REPO / "rulesets" / "kube-node"

BASE = """*filter
:INPUT DROP [10:600]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:WEB - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -s 10.0.0.0/8 -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p tcp -m multiport --dports 80,443 -j WEB
-A INPUT -i eth1 -p udp -m udp --dport 1000:2000 -j ACCEPT
-A WEB ! -s 192.0.2.0/24 -j ACCEPT
-A FORWARD -i eth0 -o eth1 -j ACCEPT
COMMIT
"""


def side(text: str, label: str = "x") -> Any:
    return load_side(text, label=label)


def diff(a: str, b: str, **kw: Any) -> dict[str, Any]:
    return compare(side(a, "A"), side(b, "B"), **kw)


# ---------------------------------------------------------------- structural


def test_identical_and_noise_only() -> None:
    doc = diff(BASE, BASE)
    assert doc["schema"] == SCHEMA == "nftrace.diff/1"
    assert set(doc) >= {"schema", "a", "b", "structural", "differences"}
    s = doc["structural"]
    assert s["added"] == s["removed"] == s["moved"] == s["policies"] == []
    assert doc["differences"] == [] and doc["probes"]["count"] > 50
    # counters, declaration order and spelling (-m tcp implied, --dport vs --destination-port) are noise
    noisy = (
        BASE.replace("[10:600]", "[99:9999]")
        .replace(":WEB - [0:0]\n", "")
        .replace(":OUTPUT ACCEPT [0:0]\n", ":OUTPUT ACCEPT [0:0]\n:WEB - [0:0]\n")
        .replace("-p tcp -m tcp --dport 22", "-p tcp --destination-port 22")
    )
    s = diff(BASE, noisy)["structural"]
    assert s["added"] == s["removed"] == s["moved"] == [], s


def test_added_removed_moved_and_policy() -> None:
    lines = BASE.splitlines()
    i3 = lines.index("-A INPUT -s 10.0.0.0/8 -p tcp -m tcp --dport 22 -j ACCEPT")
    i4 = lines.index("-A INPUT -p tcp -m multiport --dports 80,443 -j WEB")
    lines[i3], lines[i4] = lines[i4], lines[i3]  # swap rules 3 and 4 of INPUT
    lines.insert(lines.index("-A FORWARD -i eth0 -o eth1 -j ACCEPT"), "-A FORWARD -i eth1 -o eth0 -j ACCEPT")
    lines.remove("-A WEB ! -s 192.0.2.0/24 -j ACCEPT")
    b = "\n".join(lines).replace(":FORWARD DROP", ":FORWARD ACCEPT")
    s = diff(BASE, b)["structural"]
    assert [(e["table"], e["chain"], e["rule"], e["text"]) for e in s["added"]] == [
        ("filter", "FORWARD", 1, "-A FORWARD -i eth1 -o eth0 -j ACCEPT")
    ]
    assert [(e["chain"], e["rule"]) for e in s["removed"]] == [("WEB", 1)]
    # one of the two swapped rules is reported as moved (the other kept its order relative to the rest)
    assert len(s["moved"]) == 1 and s["moved"][0]["chain"] == "INPUT"
    assert {s["moved"][0]["from"], s["moved"][0]["to"]} == {3, 4}
    assert s["policies"] == [{"table": "filter", "chain": "FORWARD", "a": "DROP", "b": "ACCEPT"}]


def test_inserting_a_rule_moves_nothing() -> None:
    b = BASE.replace("-A INPUT -i lo -j ACCEPT\n", "-A INPUT -i lo -j ACCEPT\n-A INPUT -p icmp -j ACCEPT\n")
    s = diff(BASE, b)["structural"]
    assert len(s["added"]) == 1 and s["moved"] == [] and s["removed"] == []


def test_chains_added_and_removed() -> None:
    b = BASE.replace(":WEB - [0:0]\n", ":WEB - [0:0]\n:NEW - [0:0]\n") + "*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
    b = b.replace("-A WEB ! -s", "-A NEW -j RETURN\n-A WEB ! -s")
    s = diff(BASE, b)["structural"]
    assert s["chains_added"] == [{"table": "filter", "chain": "NEW", "rules": 1}]
    # an empty built-in chain with policy ACCEPT is the same as no chain at all
    assert s["chains_removed"] == [] and s["policies"] == []


# ---------------------------------------------------------------- kube-proxy hashed chains


def _kube_text() -> str:
    return (KUBE / "iptables.rules").read_text()


def _rehash(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


def test_renamed_kube_chains_are_paired_by_service_and_endpoint() -> None:
    text = _kube_text()
    renamed = _rehash(text, "KUBE-SVC-TCOU7JCQXEZGVUNU", "KUBE-SVC-AAAAAAAAAAAAAAAA")
    renamed = _rehash(renamed, "KUBE-SEP-YIL6JZP7A3QYXJU2", "KUBE-SEP-BBBBBBBBBBBBBBBB")
    a, b = parse_rules(text, "a"), parse_rules(renamed, "b")
    mapping, pairs = pair_chains(a, b)
    assert mapping[("nat", "KUBE-SVC-AAAAAAAAAAAAAAAA")] == "KUBE-SVC-TCOU7JCQXEZGVUNU"
    assert mapping[("nat", "KUBE-SEP-BBBBBBBBBBBBBBBB")] == "KUBE-SEP-YIL6JZP7A3QYXJU2"
    by = {p.b: p.by for p in pairs}
    assert by["KUBE-SVC-AAAAAAAAAAAAAAAA"].startswith("service kube-system/kube-dns:dns")
    assert "endpoint 10.244.0.2:53" in by["KUBE-SEP-BBBBBBBBBBBBBBBB"]
    doc = compare(load_side(KUBE), load_side(renamed), auto=False)
    s = doc["structural"]
    assert s["added"] == s["removed"] == s["moved"] == [], s
    assert {m["b"] for m in s["chains_matched"]} == {"KUBE-SVC-AAAAAAAAAAAAAAAA", "KUBE-SEP-BBBBBBBBBBBBBBBB"}


def test_kube_chains_without_comments_are_paired_by_their_rules() -> None:
    import re

    text = re.sub(r' -m comment --comment ("[^"]*"|\S+)', "", _kube_text())
    renamed = _rehash(text, "KUBE-SEP-YIL6JZP7A3QYXJU2", "KUBE-SEP-CCCCCCCCCCCCCCCC")
    renamed = _rehash(renamed, "KUBE-SVC-TCOU7JCQXEZGVUNU", "KUBE-SVC-DDDDDDDDDDDDDDDD")
    mapping, pairs = pair_chains(parse_rules(text, "a"), parse_rules(renamed, "b"))
    assert mapping[("nat", "KUBE-SEP-CCCCCCCCCCCCCCCC")] == "KUBE-SEP-YIL6JZP7A3QYXJU2"
    assert mapping[("nat", "KUBE-SVC-DDDDDDDDDDDDDDDD")] == "KUBE-SVC-TCOU7JCQXEZGVUNU"
    assert all("fingerprint" in p.by for p in pairs)


def test_changed_endpoint_is_a_removed_and_an_added_endpoint() -> None:
    text = _kube_text()
    moved = text.replace("10.244.0.2:53", "10.244.0.99:53")
    doc = compare(load_side(KUBE), load_side(moved))
    s = doc["structural"]
    assert any("10.244.0.99:53" in e["text"] for e in s["added"])
    assert any("10.244.0.2:53" in e["text"] for e in s["removed"])
    assert doc["differences"], "DNS to the ClusterIP now goes elsewhere"
    fd = next(d for d in doc["differences"] if d["packet"]["dst"] == "10.96.0.10")["first_divergence"]
    assert fd["reason"] == "path"


# ---------------------------------------------------------------- probes


def test_probes_cover_every_boundary_and_are_deterministic() -> None:
    a = parse_rules(BASE, "a")
    host = synthetic_host([a])
    probes, info = generate_probes([a], host)
    again, _ = generate_probes([a], synthetic_host([a]))
    assert probes == again and not info["truncated"]
    keys = [json.dumps(p, sort_keys=True) for p in probes]
    assert len(set(keys)) == len(keys), "deduplicated"
    srcs = {p["src"] for p in probes}
    # -s 10.0.0.0/8: inside, both ends, one outside on each side
    assert {"10.0.0.1", "10.0.0.0", "10.255.255.255", "9.255.255.255", "11.0.0.0"} <= srcs
    # ! -s 192.0.2.0/24: both sides of the negation
    assert {"192.0.2.1", "192.0.1.255", "192.0.3.0"} <= srcs
    dports = {p.get("dport") for p in probes}
    assert {21, 22, 23, 79, 80, 81, 442, 443, 444, 999, 1000, 2000, 2001} <= dports
    iifs = {p.get("iif") for p in probes}
    assert {"eth0", "eth1", "nfx0"} <= iifs  # every interface named, and one no rule names
    assert {p["origin"] for p in probes} == {"ingress", "local"}
    assert {p["proto"] for p in probes} >= {"tcp", "udp", "icmp"}
    assert {p.get("ct_state", "NEW") for p in probes} >= {"NEW", "ESTABLISHED", "RELATED"}
    # a probe reaches the WEB chain's rule: tcp to 80/443 with a source outside 192.0.2.0/24
    assert any(p.get("dport") in (80, 443) and p["proto"] == "tcp" and p.get("iif") for p in probes)


def test_probes_are_bounded() -> None:
    a = parse_rules(BASE, "a")
    probes, info = generate_probes([a], synthetic_host([a]), max_probes=25)
    assert len(probes) == 25 and info["truncated"] and info["candidates"] > 25
    doc = diff(BASE, BASE, max_probes=25)
    assert doc["probes"]["count"] == 25
    assert any("probe budget reached" in w for w in doc["warnings"])


def test_synthetic_host() -> None:
    rs = parse_rules(
        BASE + "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -d 172.16.0.0/12 -o ppp+ -j MASQUERADE\nCOMMIT\n", "x"
    )
    h = synthetic_host([rs])
    names = [lk.name for lk in h.links]
    assert names[0] == "lo" and {"eth0", "eth1", "ppp0", "nfx0"} <= set(names)
    assert h.sysctls["net.ipv4.ip_forward"] == "1" and not h.empty
    addrs = [ipaddress.ip_interface(a) for lk in h.links[1:] for a in lk.addresses]
    assert all(a.network.subnet_of(ipaddress.ip_network("100.64.0.0/10")) for a in addrs)
    assert any(r.dst == "default" for r in h.routes)


# ---------------------------------------------------------------- behaviour


def test_a_changed_rule_is_found_with_where_the_paths_part() -> None:
    b = BASE.replace("-s 10.0.0.0/8 -p tcp -m tcp --dport 22", "-s 10.0.0.0/16 -p tcp -m tcp --dport 22")
    doc = diff(BASE, b)
    assert doc["differences"]
    for d in doc["differences"]:
        src = ipaddress.ip_address(d["packet"]["src"])
        assert src in ipaddress.ip_network("10.0.0.0/8") and src not in ipaddress.ip_network("10.0.0.0/16")
        assert d["a"]["verdict"] == "ACCEPT" and d["b"]["verdict"] == "DROP"
        fd = d["first_divergence"]
        assert fd["hook"] == "INPUT" and fd["a"]["kind"] == "rule" and fd["a"]["rule"] == 3
        assert fd["b"] is None or fd["b"].get("rule") != 3


def test_reject_versus_drop_is_a_difference() -> None:
    b = BASE.replace(":INPUT DROP [10:600]", ":INPUT DROP [10:600]") + ""
    b = b.replace(
        "-A WEB ! -s 192.0.2.0/24 -j ACCEPT",
        "-A WEB ! -s 192.0.2.0/24 -j ACCEPT\n-A WEB -p tcp -j REJECT --reject-with tcp-reset",
    )
    doc = diff(BASE, b)
    assert doc["differences"]
    d = doc["differences"][0]
    assert d["a"]["verdict"] == d["b"]["verdict"] == "DROP" and d["b"]["reject_with"] == "tcp-reset"


def test_probability_differences_are_reported() -> None:
    text = _kube_text()
    b = text.replace(
        "--probability 0.50000000000 -j KUBE-SEP-YIL6JZP7A3QYXJU2",
        "--probability 0.25000000000 -j KUBE-SEP-YIL6JZP7A3QYXJU2",
    )
    assert b != text
    pk = {
        "origin": "ingress",
        "proto": "udp",
        "src": "10.244.1.3",
        "sport": 5353,
        "dst": "10.96.0.10",
        "dport": 53,
        "iif": "cni0",
    }
    doc = compare(load_side(KUBE), load_side(b), packets=[pk], auto=False)
    assert len(doc["differences"]) == 1
    d = doc["differences"][0]
    fd = d["first_divergence"]
    assert d["kind"] == "probability" and fd["reason"] == "probability"
    assert "statistic p=0.5" in fd["condition_a"] and "statistic p=0.75" in fd["condition_b"]
    assert sorted(br["probability"] for br in d["b"]["branches"]) == pytest.approx([0.25, 0.75])


def test_path_option() -> None:
    # an extra LOG rule changes the kernel-visible path but not the fate
    b = BASE.replace("-A INPUT -i lo -j ACCEPT\n", "-A INPUT -i lo -j ACCEPT\n-A INPUT -p tcp -j LOG\n")
    assert not diff(BASE, b)["differences"]
    doc = diff(BASE, b, path=True)
    assert doc["differences"] and {d["kind"] for d in doc["differences"]} == {"path"}
    assert all(d["packet"]["proto"] == "tcp" for d in doc["differences"])


def test_different_families_are_refused() -> None:
    from nftrace.errors import InputError

    v6 = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 2001:db8::/32 -j DROP\nCOMMIT\n"
    with pytest.raises(InputError, match="cannot compare ipv4"):
        diff(BASE, v6)


def test_read_packets(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text(
        "# flows\ntcp 10.0.0.1:1 > 10.0.0.2:80 iif eth0\n\n"
        + json.dumps({"proto": "udp", "dst": "1.1.1.1", "dport": 53, "origin": "local"})
        + "\n"
    )
    ps = read_packets(str(f))
    assert [p["proto"] for p in ps] == ["tcp", "udp"]
    f.write_text("tcp 10.0.0.1:1 > 10.0.0.2:80 iif eth0\nbogus line\n")
    from nftrace.errors import InputError

    with pytest.raises(InputError) as e:
        read_packets(str(f))
    assert e.value.line == 2


# ---------------------------------------------------------------- the command


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["diff", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.rules", tmp_path / "b.rules"
    a.write_text(BASE)
    b.write_text(BASE.replace("--dport 22", "--dport 2222"))
    code, out, err = run_cli([str(a), str(b)], capsys)
    assert code == 0 and err == ""
    assert "structural: 1 added, 1 removed, 0 moved" in out
    assert "packets are treated differently" in out and "part in INPUT" in out
    code, out, _ = run_cli([str(a), str(b), "--format", "json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["schema"] == "nftrace.diff/1" and doc["a"] == str(a) and doc["b"] == str(b)
    assert doc["differences"] and {"packet", "a", "b", "first_divergence"} <= set(doc["differences"][0])
    code, _, _ = run_cli([str(a), str(b), "--exit-code"], capsys)
    assert code == 3
    code, out, _ = run_cli([str(a), str(a), "--exit-code"], capsys)
    assert code == 0 and "the same for all" in out
    code, out, _ = run_cli([str(a), str(b), "--structural-only", "--exit-code"], capsys)
    assert code == 3 and "not compared" in out


def test_cli_packets_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, p = tmp_path / "a.rules", tmp_path / "b.rules", tmp_path / "packets.txt"
    a.write_text(BASE)
    b.write_text(BASE.replace("--dport 22", "--dport 2222"))
    p.write_text("tcp 10.1.1.1:40000 > 100.64.0.1:22 iif eth0\ntcp 10.1.1.1:40000 > 100.64.0.1:23 iif eth0\n")
    code, out, _ = run_cli([str(a), str(b), "--packets", str(p), "--format", "json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["probes"]["count"] == 2 and len(doc["differences"]) == 1
    assert doc["differences"][0]["packet"]["dport"] == 22


def test_cli_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = tmp_path / "a.rules"
    a.write_text(BASE)
    code, out, err = run_cli([str(a), str(tmp_path / "nope")], capsys)
    assert code == 2 and err.startswith("nftrace: ") and "nope" in err and err.count("\n") == 1
    bad = tmp_path / "bad.rules"
    bad.write_text("*filter\n-A INPUT -j NOWHERE\nCOMMIT\n")
    code, _, err = run_cli([str(a), str(bad)], capsys)
    assert code == 2 and f"{bad}:2" in err
    code, _, err = run_cli([str(a), str(a), "--structural-only", "--auto"], capsys)
    assert code == 2 and "excludes" in err


def test_cli_snapshot_against_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_testing_api import _snapshot_of

    snap = _snapshot_of(REPO / "rulesets" / "docker-host", tmp_path)
    code, out, err = run_cli([str(snap), str(REPO / "rulesets" / "docker-host"), "--format", "json"], capsys)
    doc = json.loads(out)
    assert code == 0, err
    assert doc["inputs"]["a"]["kind"] == "snapshot" and doc["inputs"]["b"]["kind"] == "directory"
    assert doc["differences"] == [] and doc["structural"]["added"] == []


def test_no_heavy_imports_and_no_progress_when_piped(tmp_path: Path) -> None:
    code = "import sys, nftrace.cli, nftrace.diff, nftrace.testing; print('rich' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.stdout.strip() == "False", p.stderr
    a = tmp_path / "a.rules"
    a.write_text(BASE)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run(
        [sys.executable, "-m", "nftrace", "diff", str(a), str(a)], capture_output=True, text=True, env=env
    )
    assert p.returncode == 0 and p.stderr == "" and "\x1b" not in p.stdout
