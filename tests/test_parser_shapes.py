"""The parser's shape path (getopt done once per line shape and replayed) against the full path.

`_parse_rules(..., shapes=False)` parses every line in full: it is the reference that
tests/test_corpus_parse.py and tests/test_extension_vectors.py check against iptables-restore
itself.  The shape path must give the same model (every chain, rule, text, line, match and
target) and the same error (message, file and line) on every input: real dumps, generated
kube-proxy dumps, and dumps whose lines share a shape but differ in their values.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import strategies as st

from nftrace import compiled
from nftrace.errors import NftraceError
from nftrace.ruleset import parser
from tests.test_fuzz_common import _JUNK, corpus_dumps, mutated_dump, run_fuzz, seed_dumps, token_soup, vocabulary

# counts calls by replacing module functions, which compiled code (nftrace/compiled.py) calls directly
_PURE_ONLY = pytest.mark.skipif(compiled.active(), reason="the compiled parser calls its functions directly")


_BASE_ATTRS = ("text", "hooks", "tables", "needs_conntrack")


def _spec(s: Any) -> Any:
    """A spec's class and every attribute, whether its class is interpreted or compiled (mypyc keeps
    the attribute names in __mypyc_attrs__, base classes' included)."""
    if s is None:
        return None
    names = set(_BASE_ATTRS)
    for cls in type(s).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        names.update([slots] if isinstance(slots, str) else slots)
        # class-level values (`basic_rank = 4`), which mypyc may turn into instance attributes
        names.update(
            k
            for k, v in cls.__dict__.items()
            if not k.startswith("__") and isinstance(v, (str, int, float, bool, tuple, frozenset, type(None)))
        )
    names.update(getattr(s, "__dict__", {}))
    names.update(getattr(s, "__mypyc_attrs__", ()))
    names -= {"__dict__", "__weakref__"}
    state = sorted((k, _stable_repr(getattr(s, k))) for k in names if hasattr(s, k))
    return (type(s).__name__, s.text, s.canonical(), state)


def _stable_repr(v: Any) -> str:
    """repr, with sets in sorted order (the same in every process, whatever its hash seed)."""
    if isinstance(v, (set, frozenset)):
        return f"{type(v).__name__}({{{', '.join(sorted(_stable_repr(x) for x in v))}}})"
    if isinstance(v, (list, tuple)) and not hasattr(v, "_fields"):
        inner = ", ".join(_stable_repr(x) for x in v)
        return f"[{inner}]" if isinstance(v, list) else f"({inner}{',' if len(v) == 1 else ''})"
    if isinstance(v, dict):
        return "{" + ", ".join(sorted(f"{_stable_repr(k)}: {_stable_repr(x)}" for k, x in v.items())) + "}"
    return repr(v)


def signature(text: str, name: str, shapes: bool, strict: bool = True) -> Any:
    """Everything the model says (or the error), for comparing the two paths."""
    try:
        rs = parser._parse_rules(text, name, None, strict=strict, shapes=shapes)
    except NftraceError as e:
        return ("error", str(e))
    out: list[Any] = [rs.family, rs.warnings]
    for tname, table in rs.tables.items():
        out.append((tname, table.line))
        for cname, ch in table.chains.items():
            out.append((cname, ch.name, ch.policy, ch.line, ch.counters))
            for r in ch.rules:
                out.append(
                    (
                        r.table, r.chain, r.text, r.line, r.index, r.jump, r.goto, r.protocol, r.proto_negated,
                        [_spec(m) for m in r.matches], _spec(r.target),
                    )
                )  # fmt: skip
    return out


def same(text: str, name: str = "<shapes>", strict: bool = True) -> Any:
    full = signature(text, name, False, strict)
    shaped = signature(text, name, True, strict)
    assert shaped == full, f"{name}: the shape path differs from the full path"
    return full


def test_every_real_dump_parses_the_same() -> None:
    dumps = seed_dumps(None) + corpus_dumps()
    assert dumps
    refused = sum(1 for name, text in dumps if same(text, name)[0] == "error")
    assert refused < len(dumps)  # most real dumps load


def test_generated_kube_dump_parses_the_same() -> None:
    from benchmarks.gen_kube import generate

    text = generate(300, 3, seed=7).text
    sig = same(text, "kube300")
    assert sig[0] != "error"


# Lines that take the shape path once their shape is known, then meet something only the full
# path can decide (or that changes what the shape means).
_CASES = {
    "numeric protocol": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p 6 --dport 22 -j ACCEPT\n"
    "-A INPUT -p 17 --dport 53 -j ACCEPT\nCOMMIT\n",
    "address list after a single address": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 10.0.0.1 -j ACCEPT\n"
    "-A INPUT -s 10.0.0.2,10.0.0.3 -j ACCEPT\nCOMMIT\n",
    "-o in PREROUTING after FORWARD": "*mangle\n:PREROUTING ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n"
    "-A FORWARD -o eth0 -j ACCEPT\n-A PREROUTING -o eth0 -j ACCEPT\nCOMMIT\n",
    "jump to an undeclared chain": "*filter\n:INPUT ACCEPT [0:0]\n:A - [0:0]\n-A INPUT -j A\n-A INPUT -j B\nCOMMIT\n",
    "rule in an undeclared chain": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 1.2.3.4 -j DROP\n"
    "-A NOPE -s 1.2.3.4 -j DROP\nCOMMIT\n",
    "chain named like a target, declared between": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j LOG\n"
    "-N LOG\n-A INPUT -j LOG\nCOMMIT\n",
    "chain removed between": "*filter\n:INPUT ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n-A INPUT -j A\n-X B\n"
    "-A INPUT -j B\nCOMMIT\n",
    "chain renamed between": "*filter\n:INPUT ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n-A INPUT -j A\n-E B C\n"
    "-A INPUT -j B\nCOMMIT\n",
    "bad value in a known shape": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -d 10.0.0.1/32 -p tcp -m tcp --dport 22 -j ACCEPT\n"
    "-A INPUT -d 10.0.0.999/32 -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n",
    "bad port in a known shape": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n"
    "-A INPUT -p tcp -m tcp --dport 99999 -j ACCEPT\nCOMMIT\n",
    "rule number after -I": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\n-I INPUT 1 -j DROP\nCOMMIT\n",
    "other family line": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -6 -j ACCEPT\n-A INPUT -4 -j DROP\nCOMMIT\n",
    "quoted option word": '*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m comment --comment "-t" -j ACCEPT\n'
    "-A INPUT -m comment --comment -t -j ACCEPT\nCOMMIT\n",
    # lines a known shape's regular expression must not read as that shape
    "value that is an extension name": "*filter\n:INPUT ACCEPT [0:0]\n:tcp - [0:0]\n"
    "-A INPUT -s 10.0.0.1/32 -j ACCEPT\n-A INPUT -s tcp -j ACCEPT\n-A INPUT -j tcp\nCOMMIT\n",
    "quoted value that is an extension name": "*filter\n:INPUT ACCEPT [0:0]\n"
    '-A INPUT -m comment --comment "a b" -j ACCEPT\n-A INPUT -m comment --comment "tcp" -j ACCEPT\n'
    '-A INPUT -m comment --comment "udp" -p udp -j ACCEPT\nCOMMIT\n',
    "two blanks between words": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 10.0.0.1/32 -j ACCEPT\n"
    "-A INPUT -s  10.0.0.2/32 -j ACCEPT\n-A INPUT\t-s 10.0.0.3/32 -j ACCEPT\nCOMMIT\n",
    "a word joined to a quote": "*filter\n:INPUT ACCEPT [0:0]\n"
    '-A INPUT -m comment --comment "x y" -j ACCEPT\n-A INPUT -m comment --comment ab"x y" -j ACCEPT\n'
    '-A INPUT -m comment --comment "x y"z -j ACCEPT\nCOMMIT\n',
    "empty, dashed and escaped quoted values": "*filter\n:INPUT ACCEPT [0:0]\n"
    '-A INPUT -m comment --comment "x y" -j ACCEPT\n-A INPUT -m comment --comment "" -j ACCEPT\n'
    '-A INPUT -m comment --comment "-x" -j ACCEPT\n-A INPUT -m comment --comment "!x" -j ACCEPT\n'
    '-A INPUT -m comment --comment "a\\"b" -j ACCEPT\n-A INPUT -m comment --comment "a\\\\b" -j ACCEPT\nCOMMIT\n',
    "quoted chain and quoted literal": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 10.0.0.1/32 -j ACCEPT\n"
    '-A "INPUT" -s 10.0.0.2/32 -j ACCEPT\n-A INPUT "-s" 10.0.0.3/32 -j ACCEPT\n-A INPUT -s 10.0.0.4/32 -j "ACCEPT"\n'
    "COMMIT\n",
    "value before the chain": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 10.0.0.1/32 -j ACCEPT\n"
    "-s 10.0.0.2/32 -A INPUT -j ACCEPT\nCOMMIT\n",
    # commit checks: the shape path looks only at rules with hook-restricted specs
    "DNAT reached from INPUT": "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:X - [0:0]\n:Y - [0:0]\n"
    "-A X -p tcp -j DNAT --to-destination 1.2.3.4:80\n-A Y -p tcp -j DNAT --to-destination 1.2.3.5:80\n"
    "-A PREROUTING -j X\n-A INPUT -j Y\n-A PREROUTING -j Y\nCOMMIT\n",
    "jump to a built-in chain before a hook error": "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n"
    ":X - [0:0]\n:Y - [0:0]\n-A X -p tcp -j DNAT --to-destination 1.2.3.4:80\n-A Y -j PREROUTING\n"
    "-A INPUT -j X\nCOMMIT\n",
    "hook error in a rule deleted later": "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:X - [0:0]\n"
    "-A X -p tcp -j DNAT --to-destination 1.2.3.4:80\n-A INPUT -j X\n-D X 1\nCOMMIT\n",
    "comment too long in a known shape": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m comment --comment a -j ACCEPT\n"
    f"-A INPUT -m comment --comment {'b' * 300} -j ACCEPT\nCOMMIT\n",
    "target of another table in a known shape": "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
    "-A PREROUTING -p tcp -j DNAT --to-destination 1.2.3.4:80\n"
    "-A POSTROUTING -p tcp -j DNAT --to-destination 1.2.3.4:80\nCOMMIT\n",
    "counters prefix": "*filter\n:INPUT ACCEPT [0:0]\n[1:2] -A INPUT -s 1.2.3.4 -j ACCEPT\n"
    "[3:4] -A INPUT -s 1.2.3.5 -j ACCEPT\nCOMMIT\n",
    "upper-case protocol": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p TCP --dport 22 -j ACCEPT\n"
    "-A INPUT -p TCP --dport 23 -j ACCEPT\nCOMMIT\n",
    "ipv6 in an ipv4 shape": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 10.0.0.1 -j ACCEPT\n-A INPUT -s ::1 -j ACCEPT\n"
    "COMMIT\n",
}


@pytest.mark.parametrize("name", sorted(_CASES))
def test_lines_of_one_shape_that_need_the_full_path(name: str) -> None:
    same(_CASES[name], name)


def _calls_on_kube300(name: str) -> tuple[int, int]:
    """(rules, calls of parser.<name>) parsing a generated 300-service kube dump."""
    from benchmarks.gen_kube import generate

    text = generate(300, 3, seed=7).text
    calls: list[int] = []
    real = getattr(parser, name)

    def counting(*a: Any) -> Any:
        calls.append(1)
        return real(*a)

    setattr(parser, name, counting)
    try:
        rs = parser._parse_rules(text, "kube300", None, strict=True)
    finally:
        setattr(parser, name, real)
    return rs.rule_count(), len(calls)


@_PURE_ONLY
def test_shapes_are_shared() -> None:
    """The point of the shape path: a kube dump of 300 services has a few dozen shapes."""
    rules, shapes = _calls_on_kube300("_make_shape")
    assert rules > 3000
    assert 0 < shapes < 100


@_PURE_ONLY
def test_most_kube_lines_are_read_by_a_shapes_regular_expression() -> None:
    """The signature finds the shape of nearly every line without splitting it into words."""
    rules, split = _calls_on_kube300("_tokenized_rule")
    assert rules > 3000
    assert 0 < split < 200


@st.composite
def shape_twins(draw: st.DrawFn) -> tuple[str, str]:
    """A real dump where some rule lines are followed by copies with other words as values."""
    name, text = draw(st.sampled_from(seed_dumps()))
    lines = text.split("\n")
    rule_idx = [i for i, ln in enumerate(lines) if ln.startswith("-A ")]
    if not rule_idx:
        return name, text
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.sampled_from(rule_idx))
        toks = lines[i].split(" ")
        for _ in range(draw(st.integers(1, 3))):
            j = draw(st.integers(1, len(toks) - 1)) if len(toks) > 1 else 0
            if toks[j][:1] not in ("-", "!"):
                toks[j] = draw(st.one_of(st.sampled_from(vocabulary()), _JUNK))
        lines.insert(i + 1, " ".join(toks))
    return name, "\n".join(lines)


def test_shape_twins() -> None:
    assert run_fuzz(shape_twins(), lambda x: same(x[1], x[0]), 600) >= 600


def test_mutated_dumps() -> None:
    def check(x: tuple[str, str]) -> None:
        name, text = x
        same(text, name)
        same(text, name, strict=False)

    assert run_fuzz(mutated_dump(seed_dumps()), check, 600) >= 600


def test_token_soups() -> None:
    assert run_fuzz(token_soup(), lambda t: same(t, "<soup>"), 600) >= 600
