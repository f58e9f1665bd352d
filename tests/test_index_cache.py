"""The opt-in parsed-ruleset cache (nftrace.ruleset.cache): a hit is the same model, never a stale one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.gen_kube import generate, write_dir
from nftrace.engine.packet import packet_from_dict
from nftrace.engine.pipeline import Engine
from nftrace.errors import InputError
from nftrace.host.parse import build_host_context
from nftrace.ruleset import cache
from nftrace.ruleset.model import Ruleset
from nftrace.ruleset.parser import parse_rules

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "rulesets" / "kube-node"
TEXT = generate(80, 3, seed=2).text


def shape(rs: Ruleset) -> list[object]:
    """Everything a parse produces that the engine and presenters read."""
    out: list[object] = [rs.family, rs.source, rs.warnings]
    for t in rs.tables.values():
        out.append((t.name, t.line))
        for c in t.chains.values():
            out.append((c.name, c.policy, c.line, c.counters))
            for r in c.rules:
                out.append((r.table, r.chain, r.text, r.line, r.index, r.jump, r.goto, r.protocol, r.proto_negated,
                            [type(m).__name__ + ":" + m.canonical() for m in r.matches],
                            None if r.target is None else type(r.target).__name__ + ":" + r.target.canonical()))  # fmt: skip
    return out


@pytest.fixture
def cdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv(cache.ENV, str(d))
    return d


def test_off_unless_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for v in ("", "0", "off", "no"):
        monkeypatch.setenv(cache.ENV, v)
        assert cache.cache_dir() is None
        parse_rules(TEXT, "k.rules")
        assert cache.last_status == "off"
    monkeypatch.delenv(cache.ENV)
    assert cache.cache_dir() is None
    monkeypatch.setenv(cache.ENV, "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "nftrace"


def test_a_hit_is_the_same_model_and_traces_the_same(cdir: Path) -> None:
    first = parse_rules(TEXT, "k.rules")
    assert cache.last_status == "stored"
    assert (os.stat(cdir).st_mode & 0o777) == 0o700
    again = parse_rules(TEXT, "k.rules")
    assert cache.last_status == "hit"
    assert again is not first and shape(again) == shape(first)
    host = build_host_context(routes_file=str(KUBE / "routes.txt"), addrs_file=str(KUBE / "addrs.txt"))
    svc = next(r for r in first.tables["nat"].chains["KUBE-SERVICES"].rules if " -d " in r.text)
    words = svc.text.split()
    d = {"proto": words[words.index("-p") + 1], "src": "10.244.1.3", "sport": 4000, "iif": "cni0",
         "dst": words[words.index("-d") + 1].split("/")[0], "dport": int(words[words.index("--dport") + 1])}  # fmt: skip
    docs = []
    for rs in (first, again):
        pkt, origin = packet_from_dict(d)
        docs.append(Engine(rs, host).trace(pkt, origin).to_json())
    assert docs[0] == docs[1] and docs[0]["branches"][0]["steps"]


def test_the_key_covers_text_name_options_and_code(cdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parse_rules(TEXT, "k.rules")
    for text, name, family in (
        (TEXT.replace("--dport 80 ", "--dport 81 ", 1), "k.rules", None),
        (TEXT, "other.rules", None),
        (TEXT, "k.rules", "ipv4"),
    ):
        rs = parse_rules(text, name, family)
        assert cache.last_status == "stored", (name, family)
        assert rs.source == name
    parse_rules(TEXT, "k.rules")
    assert cache.last_status == "hit"
    # another version of nftrace's code: another key, never the old model
    monkeypatch.setattr(cache, "_fingerprint", "0" * 64)
    parse_rules(TEXT, "k.rules")
    assert cache.last_status == "stored"


def test_code_fingerprint_follows_the_sources() -> None:
    fp = cache.code_fingerprint()
    assert len(fp) == 64
    root = ROOT / "nftrace"
    assert (root / "ruleset" / "parser.py").is_file()  # the package the fingerprint reads


def test_a_damaged_entry_is_dropped_and_the_dump_parsed_again(cdir: Path) -> None:
    good = shape(parse_rules(TEXT, "k.rules"))
    (entry,) = cdir.glob("*.pickle")
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    assert shape(parse_rules(TEXT, "k.rules")) == good
    assert cache.last_status == "stored"
    entry.write_bytes(b"not a cache entry")
    assert shape(parse_rules(TEXT, "k.rules")) == good
    assert cache.last_status == "stored"


def test_an_entry_in_a_directory_others_can_write_is_not_loaded(cdir: Path) -> None:
    parse_rules(TEXT, "k.rules")
    os.chmod(cdir, 0o777)
    try:
        parse_rules(TEXT, "k.rules")
        assert cache.last_status == "miss"  # neither loaded nor written
    finally:
        os.chmod(cdir, 0o700)
    parse_rules(TEXT, "k.rules")
    assert cache.last_status == "hit"


def test_a_bad_dump_is_never_cached(cdir: Path) -> None:
    bad = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m nosuchmatch -j ACCEPT\nCOMMIT\n"
    for _ in range(2):
        with pytest.raises(InputError):
            parse_rules(bad, "bad.rules")
    assert not list(cdir.glob("*.pickle")) if cdir.exists() else True


def test_old_entries_are_pruned(cdir: Path) -> None:
    for k in range(cache.KEEP + 3):
        parse_rules(TEXT, f"k{k}.rules")
    assert len(list(cdir.glob("*.pickle"))) == cache.KEEP


def test_explain_with_the_cache_prints_the_same(tmp_path: Path) -> None:
    d = write_dir(generate(40, 2, seed=3), tmp_path / "node")
    flow = "udp 10.244.1.3:5353 > 10.96.0.10:53 iif cni0"
    env = {k: v for k, v in os.environ.items() if k != cache.ENV}
    cmd = [sys.executable, "-m", "nftrace", "explain", "--rules", str(d), flow, "--format", "json"]
    plain = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    env[cache.ENV] = str(tmp_path / "c")
    outs = [subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout for _ in "ab"]
    assert outs == [plain, plain]
    assert len(list((tmp_path / "c").glob("*.pickle"))) == 1


def test_a_model_pickle_cannot_store_is_parsed_every_time(cdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model holding an object pickle cannot store (a class local to a function) is not cached:
    every parse is a miss, and the answer is the same."""
    from nftrace.ruleset.ext import misc

    class _Local(misc.Always):
        pass

    real = misc.parse_comment

    def local_comment(items: Any, ctx: Any) -> Any:
        spec = real(items, ctx)
        return _Local(spec.text)

    from nftrace.ruleset import parser, registry

    registry.load_extensions()
    monkeypatch.setattr(registry.MATCHES[("comment", "ipv4")], "parse", local_comment)
    parser._SECTION_CACHE.clear()
    text = (KUBE / "iptables.rules").read_text()
    model = shape(parse_rules(text, "kube.rules"))
    assert cache.last_status == "miss"
    assert shape(parse_rules(text, "kube.rules")) == model
    assert cache.last_status == "miss"
    parser._SECTION_CACHE.clear()
