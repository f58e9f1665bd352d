"""HMARK --hmark-tuple, against iptables-restore/iptables-save themselves.

iptables 1.8.9 (both backends) reads `--hmark-tuple a,b,...` (names in any case) as the
options it stands for set to their full mask (src -> --hmark-src-prefix 32, sport ->
--hmark-sport-mask 0xffff, ...; `ct` stays `--hmark-tuple ct`); an explicit option written
before the tuple is overridden, one written after it is "used twice"; an unknown or empty name
is refused.  The parser must load what iptables loads and print what iptables-save prints.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from nftrace.errors import InputError
from nftrace.ruleset.canonical import canonical_text
from nftrace.ruleset.parser import parse_rules

CASES = [
    "--hmark-tuple src,dst",
    "--hmark-tuple sport",
    "--hmark-tuple ct",
    "--hmark-tuple ct,src",
    "--hmark-tuple proto,spi",
    "--hmark-tuple dport,proto",
    "--hmark-tuple SRC",
    "--hmark-tuple src,src",
    "--hmark-src-prefix 16 --hmark-tuple src",
    "--hmark-src-prefix 16",
]
REFUSED = [
    "--hmark-tuple src --hmark-src-prefix 16",
    "--hmark-tuple sport,spi",
    "--hmark-tuple spi --hmark-sport-mask 0x1",
    "--hmark-tuple ,src",
    "--hmark-tuple bogus",
]


def dump(opts: str) -> str:
    return f"*mangle\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j HMARK {opts} --hmark-mod 10 --hmark-rnd 0x1\nCOMMIT\n"


def ours(opts: str) -> str:
    rs = parse_rules(dump(opts), "hmark.rules", family="ipv4")
    return canonical_text(rs.tables["mangle"].chains["PREROUTING"].rules[0])


def test_tuple_names_stand_for_full_masks() -> None:
    assert ours("--hmark-tuple src,dst") == (
        "-A PREROUTING -j HMARK --hmark-src-prefix 32 --hmark-dst-prefix 32 --hmark-rnd 0x00000001 --hmark-mod 10"
    )
    assert ours("--hmark-src-prefix 16 --hmark-tuple src") == ours("--hmark-tuple src")
    assert ours("--hmark-tuple ct,src").endswith("--hmark-tuple ct")


@pytest.mark.parametrize("opts", REFUSED)
def test_refused(opts: str) -> None:
    with pytest.raises(InputError) as e:
        parse_rules(dump(opts), "hmark.rules", family="ipv4")
    assert e.value.line == 3


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("iptables-nft-restore") is None:
        pytest.skip("needs root, ip and iptables")
    name = f"nft-hmark-{secrets.token_hex(4)}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.mark.kernel
@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_iptables_agrees(netns: str, backend: str) -> None:
    def run(*argv: str, text: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", netns, *argv], input=text, capture_output=True, text=True)

    for opts in CASES:
        p = run(f"iptables-{backend}-restore", text=dump(opts))
        assert p.returncode == 0, (opts, p.stderr)
        saved = [ln for ln in run(f"iptables-{backend}-save", "-t", "mangle").stdout.splitlines() if "HMARK" in ln]
        assert saved == [ours(opts)], opts
    for opts in REFUSED:
        assert run(f"iptables-{backend}-restore", text=dump(opts)).returncode != 0, opts
