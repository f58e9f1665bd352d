"""The parser's quick paths for common values give what the general code gives.

Each quick path (plain decimal numbers, canonical dotted quads, bare strings, `a.b.c.d:port`
NAT ranges) short-cuts a general routine whose semantics the extension vectors and the
corpus tests check against iptables itself; here hypothesis checks that the short cut and the
general routine agree on random and adversarial text."""

from __future__ import annotations

import ipaddress
import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from nftrace.errors import NftraceError
from nftrace.ruleset import values
from nftrace.ruleset.ext import nat
from nftrace.ruleset.registry import ParseCtx

_DIGITS = st.text("0123456789", min_size=0, max_size=22)
_NUMBERISH = st.one_of(
    _DIGITS,
    st.text("0123456789xX+- \t", max_size=8),
    st.text("\u0660\u0661\u00b2\uff11123", max_size=4),  # unicode digits: not numbers for C
    st.integers(0, 2**64).map(str),
)


def _strtoul_reference(s: str) -> int | None:
    """C strtoul(base 0) over the whole string, written out independently."""
    if not s or not s.isascii() or s[0] in "+-" or s != s.strip():
        return None
    if s[:2] in ("0x", "0X"):
        body = s[2:]
        return int(body, 16) if body and all(c in "0123456789abcdefABCDEF" for c in body) else None
    if len(s) > 1 and s[0] == "0":
        return int(s[1:], 8) if all(c in "01234567" for c in s[1:]) else None
    return int(s) if all(c in "0123456789" for c in s) else None


@settings(max_examples=3000, deadline=None)
@given(_NUMBERISH)
def test_strtoul(s: str) -> None:
    assert values.c_strtoul(s) == _strtoul_reference(s)


_OCT = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["00", "01", "010", "0x1", "255", "256", "", "1e1"]))


@settings(max_examples=3000, deadline=None)
@given(st.lists(_OCT, min_size=1, max_size=5))
def test_ipv4(parts: list[str]) -> None:
    text = ".".join(parts)
    assert values.parse_ipv4(text) == values._parse_ipv4_general(text)


@settings(max_examples=2000, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_ipv4_text(a: int) -> None:
    assert values.addr_text(a, "ipv4") == str(ipaddress.IPv4Address(a))
    text = str(ipaddress.IPv4Address(a))
    assert values.parse_ipv4(text) == a
    assert int.from_bytes(socket.inet_aton(text), "big") == a


def _save_string_reference(value: str) -> str:
    ok = set("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    if value and all(c in ok for c in value):
        return value
    return '"' + "".join(("\\" + c) if c in "\"'\\" else c for c in value) + '"'


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.text(max_size=30), st.text("ab_-\"'\\ \n", max_size=10)))
def test_save_string(s: str) -> None:
    assert values.save_string(s) == _save_string_reference(s)


def _ctx(proto: str | None, num: int | None, neg: bool = False, family: str = "ipv4") -> ParseCtx:
    return ParseCtx("<t>", 1, "nat", "PREROUTING", family, proto, neg, num)


_RANGE = st.one_of(
    st.builds(lambda a, p: f"{a}:{p}", st.sampled_from(["10.0.0.1", "1.2.3.4", "255.255.255.255", "0.0.0.0"]), _DIGITS),
    st.builds(lambda q, p: f"{q}:{p}", st.lists(_OCT, min_size=1, max_size=5).map(".".join), _OCT),
    st.text("0123456789.:-/[]", max_size=20),
)


@settings(max_examples=3000, deadline=None)
@given(
    _RANGE,
    st.sampled_from([("tcp", 6), ("udp", 17), ("icmp", 1), (None, None), ("sctp", 132)]),
    st.booleans(),
    st.sampled_from(["ipv4", "ipv6"]),
)
def test_nat_range(text: str, proto: tuple[str | None, int | None], neg: bool, family: str) -> None:
    ctx = _ctx(proto[0], proto[1], neg, family)
    quick = nat._quick_range(text, ctx)
    if quick is None:
        return
    assert quick == nat._parse_range(text, ctx, "DNAT")


def test_nat_range_quick_path_is_taken() -> None:
    ctx = _ctx("tcp", 6)
    assert nat._quick_range("10.244.1.5:8080", ctx) == nat._parse_range("10.244.1.5:8080", ctx, "DNAT")
    assert nat._quick_range("10.244.1.5:8080", _ctx("icmp", 1)) is None
    try:
        nat._parse_range("10.244.1.5:8080", _ctx("icmp", 1), "DNAT")
    except NftraceError as e:
        assert "port needs" in str(e)
    else:
        raise AssertionError("a port without -p tcp/udp must be refused")
    assert nat._quick_range("10.244.1.5:65536", ctx) is None


# ---------------------------------------------------------------- quick section parsers

_ADDRISH = st.one_of(
    st.builds(
        lambda q, m: q + m,
        st.lists(_OCT, min_size=1, max_size=5).map(".".join),
        st.sampled_from(["", "/32", "/24", "/0", "/1", "/33", "/08", "/255.255.0.0", "/", "/-1", "/ 8"]),
    ),
    st.integers(0, 2**32 - 1).map(lambda a: str(ipaddress.IPv4Address(a))),
    st.builds(lambda a, n: f"{ipaddress.IPv4Address(a)}/{n}", st.integers(0, 2**32 - 1), st.integers(0, 33)),
    st.text("0123456789./:abcdef", max_size=20),
)


def _same_spec(a: object, b: object) -> None:
    from tests.test_parser_shapes import _spec

    assert _spec(a) == _spec(b)


@settings(max_examples=3000, deadline=None)
@given(_ADDRISH, st.sampled_from(["s", "d"]), st.booleans(), st.sampled_from(["ipv4", "ipv6"]))
def test_quick_addr_match(text: str, kind: str, neg: bool, family: str) -> None:
    from nftrace.ruleset.ext.basic import basic_match, quick_addr_match

    quick = quick_addr_match(kind, neg, text, family)
    if quick is None:
        return
    _same_spec(quick, basic_match(kind, neg, text, ParseCtx("<t>", 1, "filter", "INPUT", family, None)))


def test_quick_addr_match_is_taken() -> None:
    from nftrace.ruleset.ext.basic import quick_addr_match

    for text in ("10.244.1.5", "10.244.1.5/32", "10.0.0.0/8", "10.0.0.7/8"):
        assert quick_addr_match("s", False, text, "ipv4") is not None
    for text in ("0.0.0.0/0", "010.1.1.1", "10.1", "10.0.0.0/255.0.0.0", "::1"):
        assert quick_addr_match("s", False, text, "ipv4") is None


def _quick_defs() -> list[object]:
    from nftrace.ruleset import registry

    registry.load_extensions()
    defs = {id(d): d for d in [*registry.MATCHES.values(), *registry.TARGETS.values()] if d.quick is not None}
    return list(defs.values())


@settings(max_examples=3000, deadline=None)
@given(
    st.data(),
    st.one_of(_RANGE, _ADDRISH, st.text(max_size=80), st.text("ab \"'\\/:->", max_size=300)),
    st.sampled_from([("tcp", 6), ("udp", 17), ("icmp", 1), (None, None)]),
    st.booleans(),
    st.sampled_from(["ipv4", "ipv6"]),
    st.sampled_from(["nat", "filter", "mangle", "raw"]),
)
def test_registered_quick_parsers(
    data: st.DataObject, value: str, proto: tuple[str | None, int | None], neg: bool, family: str, table: str
) -> None:
    """Every ExtDef.quick gives what the extension's full parser gives for that one option, or None."""
    from nftrace.ruleset.model import Option

    d = data.draw(st.sampled_from(_quick_defs()))
    opt, quick = d.quick
    ctx = ParseCtx("<t>", 1, table, "PREROUTING", family, proto[0], neg, proto[1])
    got = quick(value, ctx)
    if got is None:
        return
    _same_spec(got, d.parse([Option(opt, False, (value,))], ctx))


def test_quick_parsers_are_registered() -> None:
    names = sorted({d.name for d in _quick_defs()})  # type: ignore[attr-defined]
    assert names == ["DNAT", "SNAT", "comment"]


# ---------------------------------------------------------------- family guess on a start of the text


def _guess_reference(text: str) -> str:
    """guess_family as it read the whole text (before it read a growing start of it)."""
    from nftrace.ruleset import parser

    v4 = v6 = 0
    if '"' in text:
        text = parser._QUOTED.sub('""', text)
    for m in parser._ADDR_RE.finditer(text):
        a = m.group(1)
        if "." in a or a.isdigit():
            v4 += 1
        elif ":" in a:
            v6 += 1
        if v4 + v6 > 200:
            break
    if v4 or v6:
        return "ipv6" if v6 > v4 else "ipv4"
    if parser._V6_WORDS.search(text) and not parser._V4_WORDS.search(text):
        return "ipv6"
    return "ipv4"


_FAMILY_LINES = [
    "-A INPUT -s 10.0.0.1/32 -j ACCEPT",
    "-A INPUT -s fd00::1/128 -j ACCEPT",
    '-A INPUT -m comment --comment "-s fd00::1 " -j ACCEPT',
    "-A INPUT -d 2001:db8::/32 -p tcp -j DROP",
    "-A INPUT ! -s 1.2.3.4 -j DROP",
    "-A INPUT -s !",
    "1.2.3.4 -j DROP",
    ":KUBE-SEP-ABCDEFGHIJKLMNOP - [0:0]",
    "-A INPUT -p icmpv6 -j ACCEPT",
]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_FAMILY_LINES), st.integers(1, 4000)), min_size=1, max_size=6))
def test_guess_family_on_a_start_of_the_text(runs: list[tuple[str, int]]) -> None:
    from nftrace.ruleset.parser import guess_family

    text = "".join((line + "\n") * n for line, n in runs)
    assert guess_family(text) == _guess_reference(text)
