"""A light, read-only view of one rule's options, from its `-A ...` text.

The catalogue only needs to read what kube-proxy and Docker write (addresses,
ports, comments, statistic probabilities, recent lists, DNAT targets), in
either kube-proxy's own option order or iptables-save's canonical one, so it
reads the rule text rather than the evaluators' internals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from nftrace.ruleset.model import Rule

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


@dataclass(frozen=True, slots=True)
class Opt:
    """One option as written: the module it belongs to ("" base, "target" after -j/-g)."""

    module: str
    name: str
    negated: bool
    values: tuple[str, ...]

    @property
    def value(self) -> str | None:
        return self.values[0] if self.values else None


@dataclass(slots=True)
class RuleView:
    rule: Rule
    opts: list[Opt] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    target: str | None = None
    goto: bool = False

    # -------------------------------------------------------------- access
    @property
    def chain(self) -> str:
        return self.rule.chain

    @property
    def index(self) -> int:
        return self.rule.index

    def get(self, name: str, module: str | None = None) -> Opt | None:
        for o in self.opts:
            if o.name == name and (module is None or o.module == module):
                return o
        return None

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


def view(rule: Rule) -> RuleView:
    """Read a rule's `-A CHAIN ...` text into a RuleView (never raises)."""
    pairs = _split(rule.text)
    words = [w for w, _ in pairs]
    # is_value[k]: word k is an option's value (quoted, or not shaped like an option)
    is_value = [q or (w != "!" and not _is_flag(w)) for w, q in pairs]
    n = len(words)
    v = RuleView(rule=rule)
    i = 0
    if n >= 2 and words[0] in ("-A", "--append", "-I", "--insert"):
        i = 2
        if words[0] in ("-I", "--insert") and i < n and words[i].isdigit():
            i += 1
    module = ""
    neg = False
    opts = v.opts
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
        vals = words[i:j]
        i = j
        # older iptables-save wrote `-d ! 1.2.3.4`
        if not vals and i < n and words[i] == "!" and name in _OLD_NEG:
            neg = True
            if i + 1 < n:
                vals = [words[i + 1]]
            i += 2
        if name == "match":
            module = vals[0].lower() if vals else ""
            v.modules.append(module)
            neg = False
            continue
        if name == "jump" or name == "goto":
            v.target = vals[0] if vals else None
            v.goto = name == "goto"
            module = "target"
            neg = False
            continue
        owner = "" if name in _BASE and module != "target" else module
        opts.append(Opt(owner, name, neg, tuple(vals)))
        neg = False
    return v


def _is_flag(word: str) -> bool:
    if len(word) < 2 or word[0] != "-":
        return False
    # a negative number is a value, not an option
    c = word[1]
    return not (c.isdigit() or c == ".")
