"""Validation of command-line input that used to be accepted without a word.

* `--sysctl KEY=VALUE`: a value the kernel refuses for a sysctl nftrace reads (the kernel's own
  rules, checked in a namespace by tests/test_host_parse.py), and a key nftrace does not read
  (`ip_forward` alone is no sysctl), are a one-line usage error naming the flag and the value;
  values the kernel takes in another spelling (`0x1`, `00`, `2`) mean what they mean to it.
* `--max-branches` takes a whole number of at least 1.
* `--oif` on a locally sent packet must name an interface of the host context, when one with links
  is known (the kernel refuses SO_BINDTODEVICE to a missing device with ENODEV).
* `--batch` mixing IPv4 and IPv6 (Contract 3): a line of the family the rules are not gets an error
  object of its own, the other lines are answered, exit 0.

All in-process through nftrace.cli.main (exit status and stderr as a user sees them).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from nftrace.cli import main
from tests.test_snapshot import doc as snapshot_doc
from tests.test_snapshot import write as write_snapshot

ROOT = Path(__file__).resolve().parents[1]
FIREWALL = str(ROOT / "rulesets" / "host-firewall")  # links lo, eth0 (203.0.113.40/24)
ROUTER = str(ROOT / "rulesets" / "edge-router")  # a router: ip_forward=1, eth0..eth3
FORWARDED = "tcp 192.168.10.20:50000 > 93.184.216.34:443 iif eth2"  # forwarded out eth0 (flows.txt)
LOCAL = "tcp 203.0.113.40:41000 > 8.8.8.8:53 local"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["explain", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The run failed as a user mistake: exit 2, one line on stderr, no traceback, nothing on stdout."""
    rc, out, err = run(capsys, *argv)
    assert rc == 2, (rc, err, out[-300:])
    assert out == "" and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nftrace: "), err
    return lines[0]


def disposition(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    rc, out, err = run(capsys, *argv, "-f", "json")
    assert rc == 0, err
    (b,) = json.loads(out)["branches"]
    return str(b["result"]["disposition"])


# ------------------------------------------------------------------ --sysctl


@pytest.mark.parametrize("value", ["abc", "+1", "1.5", "08", "0x", "2147483648", "-2147483649", "1,2", ""])
def test_a_sysctl_value_the_kernel_refuses_is_a_usage_error(capsys: Any, value: str) -> None:
    line = usage_error(capsys, "--rules", ROUTER, "--sysctl", f"net.ipv4.ip_forward={value}", FORWARDED)
    assert f"--sysctl net.ipv4.ip_forward={value}" in line
    assert "the kernel refuses" in line and "0 (off) or 1 (on)" in line


@pytest.mark.parametrize(
    ("item", "hint"),
    [
        ("net.ipv4.conf.eth2.rp_filter=strict", "0 (off), 1 (strict) or 2 (loose)"),
        ("net.ipv4.conf.all.route_localnet=yes", "0 or 1"),
        ("net.ipv6.conf.all.forwarding=on", "0 (off) or 1 (on)"),
        ("net.bridge.bridge-nf-call-iptables=true", "0 or 1"),
    ],
)
def test_each_sysctl_read_is_checked(capsys: Any, item: str, hint: str) -> None:
    line = usage_error(capsys, "--rules", ROUTER, "--sysctl", item, FORWARDED)
    assert f"--sysctl {item}" in line and hint in line


def test_a_sysctl_nftrace_does_not_read_is_a_usage_error(capsys: Any) -> None:
    line = usage_error(capsys, "--rules", ROUTER, "--sysctl", "ip_forward=abc", FORWARDED)
    assert "--sysctl ip_forward=abc" in line and "did you mean net.ipv4.ip_forward?" in line
    line = usage_error(capsys, "--rules", ROUTER, "--sysctl", "rp_filter=1", FORWARDED)
    assert "did you mean net.ipv4.conf.all.rp_filter?" in line
    line = usage_error(capsys, "--rules", ROUTER, "--sysctl", "net.ipv4.tcp_syncookies=1", FORWARDED)
    assert "nftrace does not read net.ipv4.tcp_syncookies" in line and "net.ipv4.ip_forward" in line
    line = usage_error(capsys, "--rules", ROUTER, "--sysctl", "net.ipv6.conf.eth0.forwarding=1", FORWARDED)
    assert "did you mean net.ipv6.conf.all.forwarding?" in line


def test_sysctl_flags_are_checked_with_a_snapshot_too(capsys: Any, tmp_path: Path) -> None:
    snap = write_snapshot(tmp_path, snapshot_doc())
    flow = "tcp 10.244.2.5:1000 > 8.8.8.8:443 iif eth1"
    line = usage_error(capsys, "--snapshot", snap, "--sysctl", "net.ipv4.ip_forward=abc", flow)
    assert "--sysctl net.ipv4.ip_forward=abc" in line
    assert disposition(capsys, "--snapshot", snap, "--sysctl", "net.ipv4.ip_forward=0x0", flow) != "forwarded"
    assert disposition(capsys, "--snapshot", snap, "--sysctl", "net.ipv4.ip_forward=2", flow) == "forwarded"


def test_values_the_kernel_takes_mean_what_they_mean_to_it(capsys: Any) -> None:
    """ip_forward=2 forwards and 00/0x0 do not (the kernel stores 2, 0 and 0: any non-zero
    forwards; tests/test_fib.py checks ip_forward=2 against `ip route get`)."""
    base = ("--rules", ROUTER, FORWARDED)
    assert disposition(capsys, *base) == "forwarded"
    for on in ("2", "0x1", " 1", "1 0", "-1"):
        assert disposition(capsys, *base, "--sysctl", f"net.ipv4.ip_forward={on}") == "forwarded", on
    off = disposition(capsys, *base, "--sysctl", "net.ipv4.ip_forward=0")
    assert off != "forwarded"
    for zero in ("00", "0x0", "-0", "0 1"):
        assert disposition(capsys, *base, "--sysctl", f"net.ipv4.ip_forward={zero}") == off, zero


def test_a_bad_value_in_a_rulesets_sysctl_file_names_the_file_and_line(capsys: Any, tmp_path: Path) -> None:
    d = tmp_path / "host"
    d.mkdir()
    for name in ("iptables.rules", "addrs.txt", "routes.txt"):
        (d / name).write_text((Path(ROUTER) / name).read_text())
    (d / "sysctl.txt").write_text("# a comment\nnet.ipv4.ip_forward=1\nnet.ipv4.conf.all.rp_filter = loose\n")
    line = usage_error(capsys, "--rules", str(d), FORWARDED)
    assert f"{d / 'sysctl.txt'}:3:" in line and "'loose' for net.ipv4.conf.all.rp_filter" in line
    # sysctl.conf's `-KEY = VALUE`: sysctl(8) ignores the failed write, so the key stays unknown
    (d / "sysctl.txt").write_text("net.ipv4.ip_forward=1\n-net.ipv4.conf.all.rp_filter = loose\n")
    assert disposition(capsys, "--rules", str(d), FORWARDED) == "forwarded"
    # the flags override the file
    assert disposition(capsys, "--rules", str(d), "--sysctl", "net.ipv4.ip_forward=0", FORWARDED) != "forwarded"


# ------------------------------------------------------------------ --max-branches


@pytest.mark.parametrize("value", ["-1", "0", "x", "1.5"])
def test_max_branches_must_be_at_least_one(capsys: Any, value: str) -> None:
    line = usage_error(capsys, "--rules", FIREWALL, "--max-branches", value, LOCAL)
    assert "--max-branches" in line and value in line


def test_max_branches_one_is_answered(capsys: Any) -> None:
    rc, out, err = run(capsys, "--rules", FIREWALL, "--max-branches", "1", LOCAL, "-f", "json")
    assert rc == 0, err
    assert json.loads(out)["branches"]


# ------------------------------------------------------------------ --oif


def test_an_unknown_oif_of_a_local_packet_is_an_error(capsys: Any) -> None:
    line = usage_error(capsys, "--rules", FIREWALL, "--oif", "bogus0", LOCAL)
    assert "'bogus0'" in line and "lo, eth0" in line and "--oif" in line
    line = usage_error(capsys, "--rules", FIREWALL, f"{LOCAL} oif bogus0")
    assert "'bogus0'" in line and "lo, eth0" in line


def test_a_known_oif_or_no_links_is_traced(capsys: Any) -> None:
    assert disposition(capsys, "--rules", FIREWALL, "--oif", "eth0", LOCAL) == "output"
    rules = str(Path(FIREWALL) / "iptables.rules")
    # no host context, or --local-addr alone: nothing says which interfaces exist
    rc, _, err = run(capsys, "--rules", rules, "--oif", "bogus0", LOCAL)
    assert rc == 0, err
    rc, _, err = run(capsys, "--rules", rules, "--local-addr", "203.0.113.40", "--oif", "bogus0", LOCAL)
    assert rc == 0, err


def test_a_batch_line_with_an_unknown_oif_gets_its_own_error(capsys: Any, tmp_path: Path) -> None:
    lines = [
        {"origin": "local", "proto": "udp", "src": "203.0.113.40", "dst": "8.8.8.8", "dport": 53, "oif": "nope"},
        {"origin": "local", "proto": "udp", "src": "203.0.113.40", "dst": "8.8.8.8", "dport": 53, "oif": "eth0"},
    ]
    batch = tmp_path / "b.jsonl"
    batch.write_text("".join(json.dumps(d) + "\n" for d in lines))
    rc, out, err = run(capsys, "--rules", FIREWALL, "--batch", str(batch))
    assert rc == 0, err
    first, second = (json.loads(ln) for ln in out.splitlines())
    assert first["schema"] == "nftrace.trace/1" and first["line"] == 1
    assert f"{batch}:1:" in first["error"] and "'nope'" in first["error"] and "lo, eth0" in first["error"]
    assert second["branches"][0]["result"]["disposition"] == "output"


# ------------------------------------------------------------------ mixed --batch


V4 = {"origin": "ingress", "proto": "tcp", "src": "198.51.100.7", "dst": "203.0.113.40", "dport": 22, "iif": "eth0"}
V6 = {"origin": "ingress", "proto": "tcp", "src": "2001:db8::7", "dst": "2001:db8::40", "dport": 22, "iif": "eth0"}


def batch_docs(capsys: Any, tmp_path: Path, lines: list[dict[str, Any]], *argv: str) -> list[dict[str, Any]]:
    batch = tmp_path / "mixed.jsonl"
    batch.write_text("".join(json.dumps(d) + "\n" for d in lines))
    rc, out, err = run(capsys, *argv, "--batch", str(batch))
    assert rc == 0, err
    docs = [json.loads(ln) for ln in out.splitlines()]
    assert len(docs) == len(lines) and all(d["schema"] == "nftrace.trace/1" for d in docs)
    return docs


@pytest.mark.parametrize("order", [[V4, V6, V4], [V6, V4, V6, V4]])
def test_a_mixed_batch_answers_the_lines_of_the_rules_family(capsys: Any, tmp_path: Path, order: Any) -> None:
    """An iptables-save dump (IPv4) traces the IPv4 lines; each IPv6 line is an error object."""
    docs = batch_docs(capsys, tmp_path, order, "--rules", FIREWALL)
    for n, (line, d) in enumerate(zip(order, docs, strict=True), 1):
        if line is V4:
            assert "error" not in d and d["packet"]["family"] == "ipv4" and d["branches"]
        else:
            assert "branches" not in d and d["line"] == n
            assert "the packet is ipv6 but the rules are ipv4" in d["error"]


def test_a_mixed_batch_on_stdin(capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(V6) + "\n" + json.dumps(V4) + "\n"))
    rc, out, err = run(capsys, "--rules", FIREWALL, "--batch", "-")
    assert rc == 0, err
    six, four = (json.loads(ln) for ln in out.splitlines())
    assert six["line"] == 1 and "ipv6" in six["error"]
    assert four["packet"]["family"] == "ipv4" and four["branches"]


def test_a_mixed_batch_on_a_snapshot_takes_the_first_lines_family(capsys: Any, tmp_path: Path) -> None:
    """A snapshot holds both dumps: the family of the first packet picks one; the other family's
    lines get error objects."""
    snap = write_snapshot(tmp_path, snapshot_doc())
    v4 = {"proto": "tcp", "src": "10.244.2.5", "dst": "8.8.8.8", "dport": 443, "iif": "eth1"}
    v6 = {"proto": "icmp", "src": "2001:db8::5", "dst": "2001:db8:50::10", "iif": "eth0"}
    docs = batch_docs(capsys, tmp_path, [v6, v4, v6], "--snapshot", snap)
    assert [d.get("line") for d in docs] == [None, 2, None]
    assert docs[0]["packet"]["family"] == "ipv6" and docs[2]["packet"]["family"] == "ipv6"
    assert "the packet is ipv4 but the rules are ipv6" in docs[1]["error"]
    docs = batch_docs(capsys, tmp_path, [v4, v6], "--snapshot", snap)
    assert docs[0]["branches"][0]["result"]["disposition"] == "forwarded" and docs[1]["line"] == 2


def test_a_mixed_batch_with_a_flow_string_beside_it(capsys: Any, tmp_path: Path) -> None:
    """A flow string that names no address (ignored with --batch) used to make the batch's family
    be guessed from all its lines, and a mixed batch was refused whole."""
    docs = batch_docs(capsys, tmp_path, [V4, V6], "--rules", FIREWALL, "udp")
    assert "error" not in docs[0] and docs[1]["line"] == 2
