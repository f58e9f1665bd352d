"""The python-iptables reader of legacy (x_tables) rules (nftrace/host/legacy_reader.py) against
iptables-legacy-save, in network namespaces: both readers must give identical rulesets (the same
rule texts, chain by chain, and the same policies), and reading must create no table.

Skips with the precise reason when python-iptables (the `legacy` extra) is not installed or cannot
load its libraries here.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nftrace.errors import InputError
from nftrace.host.legacy_reader import legacy_save_text, legacy_tables, load_iptc, read_legacy
from nftrace.ruleset.model import Ruleset
from nftrace.ruleset.parser import parse_rules
from tests.kernelhost import KernelHost, KernelHostUnavailable, unavailable_reason

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"


def _iptc_reason() -> str | None:
    try:
        load_iptc()
    except InputError as e:
        return e.message
    return None


def test_missing_python_iptables_is_a_clear_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "iptc", None)  # import iptc -> ImportError
    with pytest.raises(InputError) as ei:
        load_iptc()
    assert "python-iptables is not installed" in ei.value.one_line()
    assert "nftrace[legacy]" in ei.value.one_line()


def _need_kernel_and_iptc() -> None:
    reason = unavailable_reason("legacy")
    if reason:
        pytest.skip(reason)
    why = _iptc_reason()
    if why:
        pytest.skip(why)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"nft-legr-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _ns(ns: str, *argv: str, input: str | None = None) -> str:
    p = subprocess.run(["ip", "netns", "exec", ns, *argv], input=input, capture_output=True, text=True, check=False)
    assert p.returncode == 0, f"{' '.join(argv)}: {p.stderr}"
    return p.stdout


def _shape(rs: Ruleset) -> dict[tuple[str, str], tuple[str | None, list[str]]]:
    return {
        (t.name, c.name): (c.policy, [r.text for r in c.rules]) for t in rs.tables.values() for c in t.chains.values()
    }


def _canonical(rs: Ruleset) -> dict[tuple[str, str], list[str]] | None:
    try:
        from nftrace.ruleset.canonical import canonical_text
    except ImportError:
        return None
    return {
        (t.name, c.name): [canonical_text(r) for r in c.rules] for t in rs.tables.values() for c in t.chains.values()
    }


def _dumps() -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = [("ipv4", p) for p in sorted((ROOT / "rulesets").glob("*/iptables.rules"))]
    for rel in (
        "iptables-shell-tests/ipt-save__fedora27-iptables.rules",
        "iptables-shell-tests/ipt-save__fedora27-ip6tables.rules",
        "iptables-shell-tests/ipt-save__wireless.rules",
        "net-network/blog_a-unikernel-firewall-for-qubesos__iptables-save.rules",
        "docker-moby/iptabler__hairpin-true_internal-false_icc-true_masq-true_snat-true_gwm-nat_bindlh-true__ip6tables.rules",
    ):
        p = CORPUS / rel
        if p.is_file():
            out.append(("ipv6" if "ip6" in p.name else "ipv4", p))
    return out


@pytest.mark.kernel
@pytest.mark.parametrize(("family", "path"), _dumps(), ids=lambda x: getattr(x, "name", x))
def test_both_readers_give_identical_rulesets(netns: str, family: str, path: Path) -> None:
    _need_kernel_and_iptc()
    tool = "iptables" if family == "ipv4" else "ip6tables"
    text = path.read_text()
    if "fw-blocklist" in text:
        _ns(netns, "ipset", "create", "fw-blocklist", "hash:net")
    p = subprocess.run(
        ["ip", "netns", "exec", netns, f"{tool}-legacy-restore"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    if p.returncode != 0:
        pytest.skip(f"{tool}-legacy-restore refuses {path.name}: {p.stderr.strip()[:200]}")
    names = legacy_tables(family, netns)  # type: ignore[arg-type]
    saved = _ns(netns, f"{tool}-legacy-save")
    by_save = parse_rules(saved, f"{tool}-legacy-save", family=family)
    by_iptc = read_legacy(family, netns)  # type: ignore[arg-type]
    assert by_save.rule_count() > 0
    assert _shape(by_iptc) == _shape(by_save)
    assert _canonical(by_iptc) == _canonical(by_save)
    assert legacy_tables(family, netns) == names  # nothing created  # type: ignore[arg-type]


@pytest.mark.kernel
def test_kube_proxy_dump_through_both_readers() -> None:
    """kube-proxy's legacy dump (comments, statistic, mark, nfacct ...): the namespace host creates the
    nfacct objects it needs; its TRACE rules are seen by both readers alike."""
    _need_kernel_and_iptc()
    d = CORPUS / "kubernetes-kube-proxy-iptables" / "roundtrip-iptables-1.8.9"
    path = d / "TestOverallIPTablesRules.iptables-legacy-save.rules"
    if not path.is_file():
        pytest.skip("corpus not present")
    from nftrace.host.model import HostContext, Link

    ctx = HostContext(links=[Link(1, "lo", kind="loopback", addresses=["127.0.0.1/8"])], empty=False)
    try:
        kh = KernelHost(ctx, path.read_text(), backend="legacy")
    except KernelHostUnavailable as e:
        pytest.skip(str(e))
    with kh:
        by_save = parse_rules(kh.run(["iptables-legacy-save"]), "iptables-legacy-save", family="ipv4")
        by_iptc = read_legacy("ipv4", kh.node)
    assert by_save.rule_count() > 50
    assert _shape(by_iptc) == _shape(by_save)


@pytest.mark.kernel
def test_no_legacy_tables_means_nothing_read_and_nothing_created(netns: str) -> None:
    _need_kernel_and_iptc()
    assert legacy_tables("ipv4", netns) == []
    assert legacy_save_text("ipv4", netns) == ""
    assert read_legacy("ipv6", netns).tables == {}
    assert _ns(netns, "cat", "/proc/net/ip_tables_names") == ""
    assert _ns(netns, "cat", "/proc/net/ip6_tables_names") == ""


@pytest.mark.kernel
def test_reading_a_missing_table_with_libiptc_creates_it(netns: str) -> None:
    """The kernel fact the guard is for: libiptc's first look at a table instantiates it."""
    _need_kernel_and_iptc()
    assert _ns(netns, "cat", "/proc/net/ip_tables_names") == ""
    _ns(netns, sys.executable, "-c", "import iptc; iptc.Table('mangle').refresh()")
    assert _ns(netns, "cat", "/proc/net/ip_tables_names").split() == ["mangle"]


@pytest.mark.kernel
def test_python_iptables_left_alone_creates_every_table(netns: str) -> None:
    """Why the reader tells python-iptables which tables exist: walking the rules of this dump (whose
    targets name user chains) makes it open every table (filter, mangle, raw, nat, security) to look
    for a chain of that name -- and the kernel creates the ones that were missing."""
    _need_kernel_and_iptc()
    path = CORPUS / "iptables-shell-tests" / "ipt-save__wireless.rules"
    if not path.is_file():
        pytest.skip("corpus not present")
    _ns(netns, "iptables-legacy-restore", input=path.read_text())
    assert sorted(_ns(netns, "cat", "/proc/net/ip_tables_names").split()) == ["filter", "raw"]
    assert read_legacy("ipv4", netns).rule_count() > 0  # guarded: nothing created
    assert sorted(_ns(netns, "cat", "/proc/net/ip_tables_names").split()) == ["filter", "raw"]
    code = (
        "import iptc\nt = iptc.Table('filter', autocommit=False)\nt.refresh()\n"
        "for c in t.chains:\n    for r in c.rules:\n        r.get_src(); r.matches; r.target\n"
    )
    _ns(netns, sys.executable, "-c", code)
    assert sorted(_ns(netns, "cat", "/proc/net/ip_tables_names").split()) == [
        "filter",
        "mangle",
        "nat",
        "raw",
        "security",
    ]
