"""The extension registry: `-m NAME` / `-j NAME` -> option table + parser.

Each family of iptables extensions lives in one module of
`nftrace.ruleset.ext` and registers itself here with the `match` and
`target` decorators, giving:

- the options the extension accepts, with how many arguments each takes and
  whether `!` may precede it (the rule parser dispatches `--opt` to the
  extension that owns it, as iptables' getopt table does, and rejects
  unknown options, wrong arity and forbidden `!`);
- a parser receiving the options written for this instance (canonical long
  names) and returning an immutable MatchSpec/TargetSpec;
- how exactly nftrace evaluates it (EXACTNESS, for the README table).

Adding a match touches one module and its tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from nftrace.errors import InputError
from nftrace.ruleset.model import MatchSpec, Option, TargetSpec


@dataclass(slots=True)
class ParseCtx:
    file: str
    line: int
    table: str
    chain: str
    family: str  # ipv4 | ipv6
    protocol: str | None  # -p value as written, lowercase; None when absent
    proto_negated: bool = False
    #: protocol number of -p (None when absent), for extensions that need `-p tcp` etc.
    proto_num: int | None = None
    #: matches of the rule parsed so far.  Parsed sections are shared between rules (cached by
    #: extension, options, family, table and protocol), so a parser must not depend on this.
    matches: list[MatchSpec] = field(default_factory=list)

    def error(self, message: str) -> InputError:
        return InputError(message, file=self.file, line=self.line)


class Arg(NamedTuple):
    """How an option is written: lo..hi arguments; `!` allowed; may repeat."""

    lo: int
    hi: int
    inv: bool = False
    multi: bool = False


# The usual shapes.
F = Arg(0, 0)  # a flag
FI = Arg(0, 0, True)
V = Arg(1, 1)  # one value
VI = Arg(1, 1, True)
V2 = Arg(2, 2)
V2I = Arg(2, 2, True)
OPT = Arg(0, 1)  # a value when the next word does not start with '-' or '!'
OPTI = Arg(0, 1, True)

MatchParser = Callable[[list[Option], ParseCtx], MatchSpec]
QuickParser = Callable[[str, ParseCtx], Any]
TargetParser = Callable[[list[Option], ParseCtx], TargetSpec]


@dataclass(slots=True)
class ExtDef:
    name: str
    kind: str  # "match" | "target"
    parse: Callable[[list[Option], ParseCtx], Any]
    options: dict[str, Arg]
    aliases: dict[str, str]
    family: str | None  # None: both
    #: (option, parser): a section of that one option with one value, not negated, may be parsed by
    #: parser(value, ctx), which returns the spec `parse` would, or None to leave it to `parse`;
    #: it never raises (ctx names no line: errors are `parse`'s to report)
    quick: tuple[str, QuickParser] | None = None


#: (name, family) -> definition
MATCHES: dict[tuple[str, str], ExtDef] = {}
TARGETS: dict[tuple[str, str], ExtDef] = {}
#: "-m NAME" / "-j NAME" -> (status, why), for the README table
EXACTNESS: dict[str, tuple[str, str]] = {}

# Match names iptables resolves to another (libxtables' icmp6 alias).
MATCH_ALIASES = {"icmpv6": "icmp6", "ipv6-icmp": "icmp6"}

STATUS_TEXT = {
    "exact": "evaluated exactly",
    "host": "exact, given the host context",
    "packet": "exact when the packet gives the field, else `unknown`",
    "partial": "partly exact",
    "unknown": "parsed; evaluated as `unknown`",
    "effect": "effect modelled",
    "continue": "continues; no effect on the path",
    "effect-unknown": "continues; its effect is `unknown`",
    "verdict-unknown": "verdict `unknown`",
}
_ORDER = ["exact", "host", "packet", "effect", "partial", "continue", "effect-unknown", "verdict-unknown", "unknown"]


def _register(
    table: dict[tuple[str, str], ExtDef],
    kind: str,
    names: tuple[str, ...],
    fn: Callable[[list[Option], ParseCtx], Any],
    options: dict[str, Arg],
    aliases: dict[str, str] | None,
    family: str | None,
    exactness: str,
    why: str,
    conntrack: bool = False,
    quick: tuple[str, QuickParser] | None = None,
) -> None:
    if conntrack:
        fn = _conntrack_user(fn)
        if quick is not None:
            quick = (quick[0], _conntrack_quick(quick[1]))
    for n in names:
        d = ExtDef(n, kind, fn, dict(options), dict(aliases or {}), family, quick)
        for fam in ("ipv4", "ipv6") if family is None else (family,):
            table[(n, fam)] = d
        key = ("-m " if kind == "match" else "-j ") + n
        if key not in EXACTNESS or exactness != "unknown":
            EXACTNESS[key] = (exactness, why)


def _conntrack_user(fn: Callable[[list[Option], ParseCtx], Any]) -> Callable[[list[Option], ParseCtx], Any]:
    """`fn`, marking what it parses as making the kernel enable connection tracking."""

    def parse(items: list[Option], ctx: ParseCtx) -> Any:
        spec = fn(items, ctx)
        spec.needs_conntrack = True
        return spec

    return parse


def _conntrack_quick(fn: QuickParser) -> QuickParser:
    """A quick parser, marking what it parses as _conntrack_user does."""

    def parse(value: str, ctx: ParseCtx) -> Any:
        spec = fn(value, ctx)
        if spec is not None:
            spec.needs_conntrack = True
        return spec

    return parse


def match(
    *names: str,
    options: dict[str, Arg] | None = None,
    aliases: dict[str, str] | None = None,
    family: str | None = None,
    exactness: str = "exact",
    why: str = "",
    conntrack: bool = False,
    quick: tuple[str, QuickParser] | None = None,
) -> Callable[[MatchParser], MatchParser]:
    """Register a match parser.  conntrack=True: loading the match makes the kernel enable
    connection tracking in the namespace (its checkentry calls nf_ct_netns_get); what it parses
    gets `needs_conntrack` (a spec class may also set it itself, when only some options do).
    quick: see ExtDef.quick (the parser's shape path uses it for values met the first time)."""

    def deco(fn: MatchParser) -> MatchParser:
        _register(MATCHES, "match", names, fn, options or {}, aliases, family, exactness, why, conntrack, quick)
        return fn

    return deco


def target(
    *names: str,
    options: dict[str, Arg] | None = None,
    aliases: dict[str, str] | None = None,
    family: str | None = None,
    exactness: str = "effect",
    why: str = "",
    conntrack: bool = False,
    quick: tuple[str, QuickParser] | None = None,
) -> Callable[[TargetParser], TargetParser]:
    """Register a target parser; `conntrack` and `quick` as for `match`."""

    def deco(fn: TargetParser) -> TargetParser:
        _register(TARGETS, "target", names, fn, options or {}, aliases, family, exactness, why, conntrack, quick)
        return fn

    return deco


def find_match(name: str, family: str) -> ExtDef | None:
    load_extensions()
    return MATCHES.get((MATCH_ALIASES.get(name, name), family))


def find_target(name: str, family: str) -> ExtDef | None:
    load_extensions()
    return TARGETS.get((name, family))


_loaded = False


def load_extensions() -> None:
    """Import every extension module once (they register themselves)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from nftrace.ruleset import ext  # noqa: F401  (import registers)


def exactness_table() -> str:
    """Markdown table: every extension nftrace parses, how it is evaluated and why."""
    load_extensions()
    fams: dict[str, set[str]] = {}
    for table in (MATCHES, TARGETS):
        for (n, fam), d in table.items():
            fams.setdefault(("-m " if d.kind == "match" else "-j ") + n, set()).add(fam)
    rows = ["| extension | family | how nftrace evaluates it | why / assumption |", "|---|---|---|---|"]

    def order(key: str) -> tuple[int, int, str]:
        status = EXACTNESS.get(key, ("unknown", ""))[0]
        return (0 if key.startswith("-m") else 1, _ORDER.index(status) if status in _ORDER else 99, key.lower())

    for key in sorted(fams, key=order):
        status, why = EXACTNESS.get(key, ("unknown", ""))
        f = fams[key]
        fam = "both" if len(f) == 2 else ("IPv4" if "ipv4" in f else "IPv6")
        rows.append(f"| `{key}` | {fam} | {STATUS_TEXT.get(status, status)} | {why} |")
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------- option helpers


class Opts:
    """Convenience view over a section's options for extension parsers.

    The rule parser has already checked names, arity, `!` and repetition, so
    this only looks things up (the last occurrence wins, as with getopt).
    """

    __slots__ = ("ctx", "ext", "items", "_by")

    def __init__(self, items: list[Option], ctx: ParseCtx, ext: str) -> None:
        self.items = items
        self.ctx = ctx
        self.ext = ext
        self._by: dict[str, Option] = {o.name: o for o in items}

    def get(self, *names: str, nvals: int | tuple[int, ...] | None = None, negatable: bool = True) -> Option | None:
        found = None
        for n in names:
            o = self._by.get(n)
            if o is not None:
                found = o
        if found is None:
            return None
        if nvals is not None:
            allowed = (nvals,) if isinstance(nvals, int) else nvals
            if len(found.values) not in allowed:
                want = " or ".join(str(a) for a in allowed)
                raise self.ctx.error(f"{self.ext}: --{found.name} takes {want} argument(s)")
        if found.negated and not negatable:
            raise self.ctx.error(f"{self.ext}: --{found.name} cannot be negated with '!'")
        return found

    def has(self, name: str) -> bool:
        return name in self._by

    def flag(self, *names: str) -> bool:
        return self.get(*names) is not None

    def value(self, *names: str) -> str | None:
        o = self.get(*names)
        return o.values[0] if o is not None and o.values else None

    def done(self) -> None:
        """Kept for extension parsers: unknown options were already refused by the rule parser."""

    def exclusive(self, *names: str) -> None:
        got = [n for n in names if n in self._by]
        if len(got) > 1:
            raise self.ctx.error(f"{self.ext}: --{got[0]} and --{got[1]} cannot be used together")

    def require_one(self, *names: str) -> str:
        got = [n for n in names if n in self._by]
        if not got:
            raise self.ctx.error(f"{self.ext}: one of --{', --'.join(names)} is required")
        if len(got) > 1:
            raise self.ctx.error(f"{self.ext}: --{got[0]} and --{got[1]} cannot be used together")
        return got[0]


def int_value(ctx: ParseCtx, ext: str, opt: str, text: str, lo: int = 0, hi: int = 0xFFFFFFFF) -> int:
    from nftrace.ruleset.values import uint

    return uint(ctx, ext, opt, text, lo, hi)
