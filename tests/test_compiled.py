"""The optional compiled parser (nftrace/compiled.py, NFTRACE_COMPILE=1) parses as the pure one.

The modules are built with mypyc into a directory of their own (benchmarks/compiled.py), a child
process parses with them, and every model (chain, rule, text, line, match and target, attribute
by attribute) and every error must equal the pure parser's: real dumps, generated kube-proxy
dumps, and those dumps with values replaced (each line through the shape path and the full
path), strict and tolerant. Skipped where mypy or a C compiler is missing (./scripts/test
installs both)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.compiled import CompileUnavailable, build
from tests.test_fuzz_common import ROOT, corpus_dumps, seed_dumps, vocabulary
from tests.test_parser_shapes import signature

pytestmark = pytest.mark.slow

_CHILD = """
import json, pickle, sys
from nftrace import compiled
from tests.test_parser_shapes import signature
assert compiled.active(), "the child runs the pure parser"
from nftrace.ruleset import parser
cases = json.load(open(sys.argv[1]))
out = []
for name, text, strict in cases:
    out.append(repr(signature(text, name, True, strict)))
    try:
        rs = parser._parse_rules(text, name, None, strict=strict)
    except Exception:
        continue
    again = pickle.loads(pickle.dumps(rs))  # the parsed-ruleset cache pickles the compiled model
    assert again.rule_count() == rs.rule_count(), name
json.dump(out, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def compiled_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return build(tmp_path_factory.mktemp("compiled"))
    except CompileUnavailable as e:
        pytest.skip(f"no compiled build here: {e}")


def _mutations(dumps: list[tuple[str, str]], n: int, seed: int) -> list[tuple[str, str]]:
    """Dumps with some values of rule lines replaced (same shapes, other values), and copies of lines."""
    rnd = random.Random(seed)
    words = list(vocabulary()) + ["", "0", "-", "!", "10.0.0.1/33", "1.2.3.4:99999", "x" * 300, '"', "KUBE-SVC"]
    out = []
    for k in range(n):
        name, text = dumps[k % len(dumps)]
        lines = text.split("\n")
        idx = [i for i, ln in enumerate(lines) if ln.startswith("-A ")]
        for _ in range(rnd.randint(1, 6)):
            if not idx:
                break
            i = rnd.choice(idx)
            toks = lines[i].split(" ")
            j = rnd.randrange(1, len(toks)) if len(toks) > 1 else 0
            if toks[j][:1] not in ("-", "!"):
                toks[j] = rnd.choice(words)
            lines.insert(i + 1, " ".join(toks))
        out.append((f"{name}~{k}", "\n".join(lines)))
    return out


def test_compiled_parser_gives_the_pure_model(compiled_dir: Path, tmp_path: Path) -> None:
    from benchmarks.gen_kube import generate

    dumps = list(seed_dumps(None)) + list(corpus_dumps())
    dumps += [("kube300", generate(300, 3, seed=7).text), ("kube2000", generate(2000, 2, seed=3).text)]
    small = [d for d in dumps if len(d[1]) < 200_000]
    texts = dumps + _mutations(small, 300, seed=11)
    cases = [(name, text, strict) for name, text in texts for strict in (True, False)]
    (tmp_path / "in.json").write_text(json.dumps(cases))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(compiled_dir), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "in.json"), str(tmp_path / "out.json")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "out.json").read_text())
    assert len(got) == len(cases)
    errors = 0
    for (name, text, strict), child in zip(cases, got, strict=True):
        pure = repr(signature(text, name, True, strict))
        assert child == pure, f"{name} (strict={strict}): the compiled parser differs from the pure one"
        errors += pure.startswith("('error'")
    assert 0 < errors < len(cases)  # both models and errors were compared
