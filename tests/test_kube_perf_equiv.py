"""The fast paths of the kube catalogue give what the slow ones give.

* `ruleview.view` reads each line shape once and splits words with a fast path; `view_slow`
  reads every line word by word with the regex tokenizer.  They must agree on every rule of the
  scenario dumps, the kube-proxy and Docker dumps of the corpus, a generated kube-proxy dump, lines
  made to break the shape cache (quotes, escapes, tabs, `-I N`, `-d ! x`, `--match`, `-match`,
  negative numbers) and seeded random lines.
* `build_catalog` reads each Service's own chains on first use.  A catalogue asked lazily (every
  rule's name, the owners of every endpoint address, one Service at a time, in a shuffled order)
  must end up equal to the same catalogue read completely before any question, which reads every
  Service once in the order the rules named them: the reading order the lazy one reconstructs.
"""

from __future__ import annotations

import gc
import random
import re
from pathlib import Path
from typing import Any

import pytest

from benchmarks.gen_kube import generate, write_dir
from nftrace.errors import InputError
from nftrace.host.parse import build_host_context
from nftrace.kube.catalog import Catalog, build_catalog
from nftrace.kube.ruleview import RuleView, view, view_slow
from nftrace.ruleset.model import Rule, Ruleset
from nftrace.ruleset.parser import parse_rules

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def _dumps() -> list[Path]:
    out = sorted(ROOT.glob("rulesets/*/iptables.rules"))
    for sub in ("kubernetes-kube-proxy-iptables", "docker-moby"):
        if (CORPUS / sub).is_dir():
            out += sorted((CORPUS / sub).rglob("*.rules"))
    return out


def _parse(path: Path) -> Ruleset | None:
    text = path.read_text()
    for t in (text, re.sub(r"^:(INPUT|FORWARD|OUTPUT|PREROUTING|POSTROUTING) - ", r":\1 ACCEPT ", text, flags=re.M)):
        try:
            return parse_rules(t, str(path))
        except InputError:
            continue
    return None  # a fragment iptables-restore refuses too


def _rules(rs: Ruleset) -> list[Rule]:
    return [r for t in rs.tables.values() for c in t.chains.values() for r in c.rules]


# --------------------------------------------------------------------------- views


def _same_view(a: RuleView, b: RuleView) -> None:
    assert (a.opts, a.modules, a.target, a.goto) == (b.opts, b.modules, b.target, b.goto), a.rule.text
    # get() answers from the shape's index: the first option of that name (and module), as a scan would
    for o in b.opts:
        for module in (None, o.module):
            want = next((x for x in b.opts if x.name == o.name and (module is None or x.module == module)), None)
            assert a.get(o.name, module) == want, (a.rule.text, o.name, module)
    assert a.get("no-such-option") is None


def _line(text: str) -> Rule:
    return Rule(table="filter", chain="X", text=text, line=1)


ODD_LINES = [
    '-A X -m comment --comment "a b" -m tcp -p tcp --dport 80 -j Y',
    '-A X -m comment --comment "a \\"q\\" b" -j Y',  # an escape: the regex path
    '-A X -m comment --comment a"b c"d -j Y',  # quotes glued to words
    '-A X -m comment --comment "a""b" -j Y',
    '-A X -m comment --comment "" -j Y',
    '-A X -m comment --comment "unterminated -j Y',
    "-A X -d ! 10.0.0.1 -j Y",  # old negation
    "-A X -d ! -j Y",
    "-A X ! -s 10.0.0.0/8 ! -d 10.0.0.1/32 -j Y",
    "-I X 3 -s 10.0.0.1 -j ACCEPT",
    "-I X -s 10.0.0.1 -j ACCEPT",
    "--insert X 2 -j ACCEPT",
    "--append X -j ACCEPT",
    "-A X --match comment --comment x -j Y",
    "-A X -match comment --comment x -j Y",
    "-A X ---match tcp --dport 22 -j Y",
    '-A X -m "tcp" --dport 22 -j Y',
    "-A X -m TCP --dport 22 -j Y",
    '-A X -m comment --comment "-m" tcp -j Y',
    "-A X\t-p\ttcp -j Y",
    "-A X -p tcp -j Y\x1c",
    "-A X -m foo --bar -1 -2.5 --baz .5 -j Y",
    "-A X -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-A",
    "-A X -j DNAT --to-destination 10.0.0.1:80 -d 1.2.3.4",  # an option after the target
    "-A X -g Y",
    "-A X -j",
    "-A X ! ! -j Y",
    "-A X -m",
    "-A",
    "",
    '-A X -m comment --comment "ns/a:b -> 10.0.0.1:80" -m recent --name n --rcheck --seconds 10 --reap -j Y',
    '-A X -m comment --comment "caf\u00e9 \u00fcber" -j Y',
]


def test_odd_lines_read_alike_twice() -> None:
    # each line twice, the second time with other values: the second reading comes from the shape cache
    for text in ODD_LINES:
        for t in (text, re.sub(r"\b10\.0\.0\.1\b", "192.0.2.9", text).replace("KUBE-SEP-A", "KUBE-SEP-B")):
            _same_view(view(_line(t)), view_slow(_line(t)))


_WORDS = ["-A", "X", "-I", "2", "-m", "--match", "-match", "tcp", "comment", "--comment", "--dport", "80",
          "!", "-d", "-s", "10.0.0.1", "-j", "-g", "Y", "DNAT", "--to-destination", "-1", "-x", ".5", "--",
          "-", '"', '"a b"', '"-m"', '"!"', '\\"', "a\\b", "\t", "KUBE-SEP-Q", "-p", "statistic"]  # fmt: skip


def test_random_lines_read_alike() -> None:
    rng = random.Random(9)
    for _ in range(4000):
        words = [rng.choice(_WORDS) for _ in range(rng.randrange(0, 14))]
        if rng.random() < 0.6:
            words = ["-A", "X", *words]
        seps = [rng.choice([" ", " ", " ", "  ", "\t", ""]) for _ in words]
        text = "".join(w + s for w, s in zip(words, seps, strict=True)).strip(" ")
        _same_view(view(_line(text)), view_slow(_line(text)))


@pytest.fixture(scope="module")
def kube_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dir(generate(300, 3, seed=5), tmp_path_factory.mktemp("kube300"))


def test_every_rule_of_the_dumps_reads_alike(kube_dir: Path) -> None:
    n = 0
    for path in [*_dumps(), kube_dir / "iptables.rules"]:
        rs = _parse(path)
        if rs is None:
            continue
        for r in _rules(rs):
            _same_view(view(r), view_slow(r))
            n += 1
    assert n > 3000


# --------------------------------------------------------------------------- lazy catalogue

SHARED = """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-ZZZZ - [0:0]
:KUBE-SVC-AAAA - [0:0]
:KUBE-SEP-SHARED - [0:0]
:KUBE-SEP-A2 - [0:0]
:CUSTOM - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A PREROUTING -d 203.0.113.5/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.1.10:8080
-A PREROUTING -d 203.0.113.6/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.1.11:8080
-A KUBE-SERVICES -d 10.96.0.9/32 -p tcp -m comment --comment "ns/z:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-ZZZZ
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "ns/a:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-AAAA
-A KUBE-SVC-ZZZZ ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-SVC-ZZZZ -j CUSTOM
-A CUSTOM -j KUBE-SEP-SHARED
-A KUBE-SVC-AAAA ! -s 10.245.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-SVC-AAAA -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-SHARED
-A KUBE-SVC-AAAA -j KUBE-SEP-A2
-A KUBE-SEP-SHARED -s 10.244.1.10/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-SHARED -p tcp -m tcp -j DNAT --to-destination 10.244.1.10:8080
-A KUBE-SEP-A2 -p tcp -m tcp -j DNAT --to-destination 10.244.1.11:8080
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
COMMIT
"""
# ns/z is named first and sorts last; both Services reach KUBE-SEP-SHARED (ns/z through CUSTOM)


def _keys(rs: Ruleset) -> list[tuple[str, str, int]]:
    return [(t.name, c.name, r.index) for t in rs.tables.values() for c in t.chains.values() for r in c.rules]


def _answers(cat: Catalog, rs: Ruleset, order: list[Any], addresses: list[str]) -> dict[str, Any]:
    """Everything a trace asks a catalogue, asked in `order`."""
    out: dict[str, Any] = {}
    for q in order:
        if isinstance(q, tuple):
            n = cat.rule_names.get(q)
            out[f"name {q}"] = None if n is None else (n.service, n.endpoint)
        elif q.startswith("ep "):
            out[q] = [s.name for s in cat.endpoint_owner(q[3:])]
        else:
            s = cat.service(q)
            assert s is not None
            out[f"svc {q}"] = (s.affinity, s.health_check_node_port, [e.address for e in s.endpoints])
    return out


def _catalogues() -> list[tuple[str, Ruleset, Any]]:
    out: list[tuple[str, Ruleset, Any]] = [("shared", parse_rules(SHARED, "<shared>"), None)]
    for path in _dumps():
        rs = _parse(path)
        if rs is None:
            continue
        host = None
        if path.parent.parent.name == "rulesets":
            d = path.parent
            host = build_host_context(
                routes_file=str(d / "routes.txt") if (d / "routes.txt").exists() else None,
                addrs_file=str(d / "addrs.txt") if (d / "addrs.txt").exists() else None,
            )
        out.append((str(path), rs, host))
    return out


def _check_lazy_equals_complete(label: str, rs: Ruleset, host: Any, seed: int) -> None:
    full = build_catalog(rs, host)
    doc = full.to_json()  # reads everything first
    addresses = sorted({e.address for s in full.services for e in s.endpoints + s.local_endpoints})
    addresses += ["10.244.1.10:8080", "10.244.1.11:8080", "192.0.2.1:80", "[fd00::1]:80", "fd00::1", "junk"]
    order: list[Any] = [*_keys(rs), *(f"ep {a}" for a in addresses), *(s.name for s in full.services)]
    random.Random(seed).shuffle(order)
    want = _answers(full, rs, order, addresses)

    lazy = build_catalog(rs, host)
    assert gc.isenabled()
    got = _answers(lazy, rs, order, addresses)
    assert got == want, label
    assert lazy.to_json() == doc, label
    assert list(lazy.rule_names.items()) == list(full.rule_names.items()), label
    assert len(lazy.rule_names) == len(full.rule_names)


def test_lazy_catalogue_equals_complete_reading_shared_endpoint_chain() -> None:
    rs = parse_rules(SHARED, "<shared>")
    _check_lazy_equals_complete("shared", rs, None, 1)
    lazy = build_catalog(rs)
    # the shared endpoint chain is named by the Service the rules name first (ns/z), not the first by name
    assert lazy.rule_names[("nat", "KUBE-SEP-SHARED", 2)].service == "ns/z:http"
    assert [s.name for s in lazy.endpoint_owner("10.244.1.10:8080")] == ["ns/a:http", "ns/z:http"]
    assert [s.name for s in lazy.services] == ["ns/a:http", "ns/z:http"]
    assert lazy.cluster_cidrs == ["10.244.0.0/16", "10.245.0.0/16"]  # in the order the rules named them


def test_lazy_catalogue_equals_complete_reading(kube_dir: Path) -> None:
    cases = _catalogues()
    assert len(cases) > 5
    rs = parse_rules((kube_dir / "iptables.rules").read_text(), str(kube_dir))
    host = build_host_context(routes_file=str(kube_dir / "routes.txt"), addrs_file=str(kube_dir / "addrs.txt"))
    cases.append(("generated", rs, host))
    for k, (label, rs, host) in enumerate(cases):
        _check_lazy_equals_complete(label, rs, host, k)
