"""A light, read-only view of one rule's options, from its `-A ...` text.

The catalogue only needs to read what kube-proxy and Docker write (addresses,
ports, comments, statistic probabilities, recent lists, DNAT targets), in
either kube-proxy's own option order or iptables-save's canonical one, so it
reads the rule text rather than the evaluators' internals.

A kube-proxy dump has 100,000 rules but a few dozen shapes: lines that differ
only in chain names, addresses, ports and comments.  How the words of a line
group into options depends only on the words that start with '-', the '!'
words, the module names after -m, and which words are quoted; so `view` reads
each shape once (`_program`) and then only picks the values of each line out by
position.  `view_slow` reads every line in full; both give the same view.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from nftrace.ruleset.model import Rule

T = TypeVar("T")

_SHORT = {
    "-s": "source",
    "--src": "source",
    "--source": "source",
    "-d": "destination",
    "--dst": "destination",
    "--destination": "destination",
    "-p": "protocol",
    "--protocol": "protocol",
    "-i": "in-interface",
    "--in-interface": "in-interface",
    "-o": "out-interface",
    "--out-interface": "out-interface",
    "-j": "jump",
    "--jump": "jump",
    "-g": "goto",
    "--goto": "goto",
    "-m": "match",
    "--match": "match",
    "-f": "fragment",
    "--fragment": "fragment",
}


def split_words(text: str) -> list[str]:
    """Split as iptables-restore does: double quotes group, a backslash escapes inside them."""
    return [w for w, _ in _split(text)]


_TOKEN = re.compile(r'(?:"(?:[^"\\]|\\.)*"?|[^\s"]+)+')
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"?')
_ESCAPE = re.compile(r"\\(.)")
# blanks other than the space (str.split and the regex \s split there too; the fast path does not look)
_ODD_BLANK = re.compile(r"[\t\n\r\x0b\x0c\x1c-\x1f]")


def _unquote(m: re.Match[str]) -> str:
    return _ESCAPE.sub(r"\1", m.group(1))


def _split(text: str) -> list[tuple[str, bool]]:
    """(word, was quoted) pairs: double quotes group words, a backslash escapes inside them."""
    if '"' not in text:
        return [(w, False) for w in text.split()]
    out: list[tuple[str, bool]] = []
    for m in _TOKEN.finditer(text):
        tok = m.group(0)
        if '"' in tok:
            out.append((_QUOTED.sub(_unquote, tok), True))
        else:
            out.append((tok, False))
    return out


def _words(text: str) -> tuple[list[str], list[int]]:
    """The words of `text` and the positions of the quoted ones, as `_split` reads them.

    Fast path: quotes that open after a space (or at the start) and close before a space (or at
    the end), no backslash, only spaces as blanks: each quoted part is then one whole word."""
    if '"' not in text:
        return text.split(), []
    if "\\" not in text and text.isascii() and not _ODD_BLANK.search(text):
        parts = text.split('"')
        last = len(parts) - 1
        if last % 2 == 0:
            words: list[str] = []
            quoted: list[int] = []
            for idx, part in enumerate(parts):
                if idx % 2 == 0:
                    words.extend(part.split())
                    continue
                prev, nxt = parts[idx - 1], parts[idx + 1]
                if not (prev.endswith(" ") or (not prev and idx == 1)):
                    break
                if not (nxt.startswith(" ") or (not nxt and idx + 1 == last)):
                    break
                quoted.append(len(words))
                words.append(part)
            else:
                return words, quoted
    pairs = _split(text)
    return [w for w, _ in pairs], [k for k, (_, q) in enumerate(pairs) if q]


class Opt(NamedTuple):
    """One option as written: the module it belongs to ("" base, "target" after -j/-g)."""

    module: str
    name: str
    negated: bool
    values: tuple[str, ...]

    @property
    def value(self) -> str | None:
        return self.values[0] if self.values else None


class RuleView:
    """The options of one rule as written: `opts` in order, the `-m` modules, the -j/-g target."""

    __slots__ = ("rule", "_words", "_prog", "_opts")

    def __init__(self, rule: Rule, words: list[str], prog: _Program) -> None:
        self.rule = rule
        self._words = words
        self._prog = prog
        self._opts: list[Opt] | None = None

    @property
    def opts(self) -> list[Opt]:
        if self._opts is None:
            self._opts = [self._opt(k) for k in range(len(self._prog.opts))]
        return self._opts

    @property
    def modules(self) -> list[str]:
        return list(self._prog.modules)

    @property
    def target(self) -> str | None:
        t = self._prog.target
        return self._words[t] if t is not None else None

    @property
    def goto(self) -> bool:
        return self._prog.goto

    def _opt(self, k: int) -> Opt:
        if self._opts is not None:
            return self._opts[k]
        m, nm, ng, pos = self._prog.opts[k]
        w = self._words
        return Opt(m, nm, ng, (w[pos[0]],) if len(pos) == 1 else tuple([w[p] for p in pos]))

    def shape_fact(self, name: str, fn: Callable[[RuleView], T]) -> T:
        """fn(self), computed once for every rule of this shape: fn may look at what the shape fixes
        (the options' modules, names, negations and number of values, the modules, goto) and nothing
        else (not the values, not the target)."""
        facts = self._prog.facts
        if name in facts:
            return facts[name]  # type: ignore[return-value]
        v = facts[name] = fn(self)
        return v

    # -------------------------------------------------------------- access
    @property
    def chain(self) -> str:
        return self.rule.chain

    @property
    def index(self) -> int:
        return self.rule.index

    def get(self, name: str, module: str | None = None) -> Opt | None:
        """The first option called `name` (of `module`: "" the base options, "target" the -j's)."""
        k = self._prog.first.get(name if module is None else (name, module))
        return None if k is None else self._opt(k)

    def value(self, name: str, module: str | None = None) -> str | None:
        o = self.get(name, module)
        return o.value if o is not None else None

    def has(self, name: str, module: str | None = None) -> bool:
        return self.get(name, module) is not None

    @property
    def comment(self) -> str | None:
        o = self.get("comment")
        return " ".join(o.values) if o is not None and o.values else None

    @property
    def proto(self) -> str | None:
        p = self.value("protocol", "")
        return p.lower() if p else None

    @property
    def dst(self) -> str | None:
        o = self.get("destination", "")
        return None if o is None or o.negated else _host(o.value)

    @property
    def src(self) -> str | None:
        o = self.get("source", "")
        return None if o is None or o.negated else o.value

    @property
    def dport(self) -> int | None:
        for name in ("dport", "destination-port"):
            o = self.get(name)
            if o is not None and not o.negated and o.value and o.value.isdigit():
                return int(o.value)
        return None

    def conditions(self, skip: tuple[str, ...] = ()) -> list[str]:
        """The rule's matches as short text (without comment, target and the names in `skip`)."""
        out: list[str] = []
        for o in self.opts:
            if o.module == "target" or o.name in ("comment", "match", "jump", "goto") or o.name in skip:
                continue
            if o.module == "statistic" and o.name == "mode":
                continue
            if o.module in ("tcp", "udp", "sctp") and o.name not in ("dport", "sport", "destination-port"):
                continue
            flag = {"source": "-s", "destination": "-d", "protocol": "-p", "in-interface": "-i",
                    "out-interface": "-o", "fragment": "-f"}.get(o.name, f"--{o.name}")  # fmt: skip
            out.append(("! " if o.negated else "") + " ".join([flag, *o.values]))
        return out


def _host(addr: str | None) -> str | None:
    if addr is None:
        return None
    if addr.endswith("/32") or addr.endswith("/128"):
        return addr.rsplit("/", 1)[0]
    return addr


_BASE = frozenset({"source", "destination", "protocol", "in-interface", "out-interface", "fragment"})
_OLD_NEG = frozenset({"source", "destination", "in-interface", "out-interface", "protocol"})


@dataclass(slots=True)
class _Program:
    """How the words of one shape group into options, by word position."""

    opts: list[tuple[str, str, bool, tuple[int, ...]]]
    modules: list[str]
    target: int | None  # position of the target's word
    goto: bool
    # the first option of a name (key: name) and of a name in a module (key: (name, module))
    first: dict[object, int]
    # facts that depend on the shape only (see RuleView.shape_fact)
    facts: dict[str, object]


def _program(words: list[str], quoted: list[int]) -> _Program:
    """Read the words the way iptables' option table would group them (never raises)."""
    qset = set(quoted)
    # is_value[k]: word k is an option's value (quoted, or not shaped like an option)
    is_value = [k in qset or (w != "!" and not _is_flag(w)) for k, w in enumerate(words)]
    n = len(words)
    prog = _Program(opts=[], modules=[], target=None, goto=False, first={}, facts={})
    i = 0
    if n >= 2 and words[0] in ("-A", "--append", "-I", "--insert"):
        i = 2
        if words[0] in ("-I", "--insert") and i < n and words[i].isdigit():
            i += 1
    module = ""
    neg = False
    opts = prog.opts
    while i < n:
        w = words[i]
        i += 1
        if w == "!":
            neg = True
            continue
        if w[:1] != "-":
            continue  # a stray value
        name = _SHORT.get(w) or w.lstrip("-")
        j = i
        while j < n and is_value[j]:
            j += 1
        vals = tuple(range(i, j))
        i = j
        # older iptables-save wrote `-d ! 1.2.3.4`
        if not vals and i < n and words[i] == "!" and name in _OLD_NEG:
            neg = True
            if i + 1 < n:
                vals = (i + 1,)
            i += 2
        if name == "match":
            module = words[vals[0]].lower() if vals else ""
            prog.modules.append(module)
            neg = False
            continue
        if name == "jump" or name == "goto":
            prog.target = vals[0] if vals else None
            prog.goto = name == "goto"
            module = "target"
            neg = False
            continue
        owner = "" if name in _BASE and module != "target" else module
        prog.first.setdefault(name, len(opts))
        prog.first.setdefault((name, owner), len(opts))
        opts.append((owner, name, neg, vals))
        neg = False
    return prog


def _apply(rule: Rule, words: list[str], prog: _Program) -> RuleView:
    return RuleView(rule, words, prog)


def view_slow(rule: Rule) -> RuleView:
    """Read a rule's `-A CHAIN ...` text into a RuleView, word by word (the reference for `view`)."""
    pairs = _split(rule.text)
    words = [w for w, _ in pairs]
    return _apply(rule, words, _program(words, [k for k, (_, q) in enumerate(pairs) if q]))


# shape of a line -> its program (bounded: a dump has few shapes, a fuzzer many)
_PROGRAMS: dict[tuple[str, ...], _Program] = {}


def _shape(text: str, words: list[str], quoted: list[int]) -> tuple[str, ...] | None:
    """The words `_program` looks at, every other word blanked: lines of one shape group alike."""
    if words and words[0] in ("-I", "--insert"):
        return None  # whether the third word is a number decides; rare, not cached
    key = [w if w[:1] == "-" or w == "!" else "" for w in words]
    n = len(words)
    if "match" in text:
        # `-m`, `--match`, and any other spelling _program reads as "match" (`-match`, `---match`)
        for k, w in enumerate(words[:-1]):
            if w == "-m" or (w[:1] == "-" and w.lstrip("-") == "match"):
                key[k + 1] = words[k + 1]  # the module's name decides the owner of what follows
    else:
        k = -1
        while True:
            try:
                k = words.index("-m", k + 1)
            except ValueError:
                break
            if k + 1 < n:
                key[k + 1] = words[k + 1]
    for k in quoted:
        key[k] = "\x01" + key[k]
    return tuple(key)


def view(rule: Rule) -> RuleView:
    """Read a rule's `-A CHAIN ...` text into a RuleView (never raises)."""
    text = rule.text
    words, quoted = _words(text)
    key = _shape(text, words, quoted)
    if key is None:
        return _apply(rule, words, _program(words, quoted))
    prog = _PROGRAMS.get(key)
    if prog is None:
        prog = _program(words, quoted)
        if len(_PROGRAMS) < 20_000:
            _PROGRAMS[key] = prog
    return _apply(rule, words, prog)


def _is_flag(word: str) -> bool:
    if len(word) < 2 or word[0] != "-":
        return False
    # a negative number is a value, not an option
    c = word[1]
    return not (c.isdigit() or c == ".")
