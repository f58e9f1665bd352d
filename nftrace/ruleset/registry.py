"""The extension registry: `-m NAME` / `-j NAME` -> parser.

Each family of iptables extensions lives in one module of
`nftrace.ruleset.ext` and registers its parsers here with the `match` and
`target` decorators.  A parser receives the options written after `-m NAME`
(or `-j NAME`) and returns an immutable MatchSpec/TargetSpec.  Adding a match
touches one module and its tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nftrace.errors import InputError
from nftrace.ruleset.model import MatchSpec, Option, TargetSpec


@dataclass(slots=True)
class ParseCtx:
    file: str
    line: int
    table: str
    chain: str
    family: str  # ipv4 | ipv6
    protocol: str | None  # -p value, lowercase, None when absent
    proto_negated: bool = False

    def error(self, message: str) -> InputError:
        return InputError(message, file=self.file, line=self.line)


MatchParser = Callable[[list[Option], ParseCtx], MatchSpec]
TargetParser = Callable[[list[Option], ParseCtx], TargetSpec]

MATCHES: dict[str, MatchParser] = {}
TARGETS: dict[str, TargetParser] = {}
#: extension name -> "exact" | "unknown" | "partial", with a reason, for the README table
EXACTNESS: dict[str, tuple[str, str]] = {}
#: options each implicit protocol match accepts (for `-p tcp --dport 80` without `-m tcp`)
IMPLICIT_OPTIONS: dict[str, frozenset[str]] = {}


def match(
    *names: str, exactness: str = "exact", why: str = "", implicit_options: tuple[str, ...] = ()
) -> Callable[[MatchParser], MatchParser]:
    def deco(fn: MatchParser) -> MatchParser:
        for n in names:
            MATCHES[n] = fn
            EXACTNESS.setdefault(f"-m {n}", (exactness, why))
            if implicit_options:
                IMPLICIT_OPTIONS[n] = frozenset(implicit_options)
        return fn

    return deco


def target(*names: str, exactness: str = "exact", why: str = "") -> Callable[[TargetParser], TargetParser]:
    def deco(fn: TargetParser) -> TargetParser:
        for n in names:
            TARGETS[n] = fn
            EXACTNESS.setdefault(f"-j {n}", (exactness, why))
        return fn

    return deco


_loaded = False


def load_extensions() -> None:
    """Import every extension module once (they register themselves)."""
    global _loaded
    if _loaded:
        return
    from nftrace.ruleset import ext  # noqa: F401  (import registers)

    _loaded = True


# ---------------------------------------------------------------- option helpers


class Opts:
    """Convenience view over a section's options for extension parsers."""

    __slots__ = ("ctx", "ext", "items", "_used")

    def __init__(self, items: list[Option], ctx: ParseCtx, ext: str) -> None:
        self.items = items
        self.ctx = ctx
        self.ext = ext
        self._used: set[int] = set()

    def _find(self, names: tuple[str, ...]) -> tuple[int, Option] | None:
        found: tuple[int, Option] | None = None
        for i, o in enumerate(self.items):
            if o.name in names:
                found = (i, o)  # the last one wins, as with getopt
        return found

    def get(self, *names: str, nvals: int | tuple[int, ...] = 1, negatable: bool = True) -> Option | None:
        f = self._find(names)
        if f is None:
            return None
        i, o = f
        for j, other in enumerate(self.items):
            if other.name in names:
                self._used.add(j)
        allowed = (nvals,) if isinstance(nvals, int) else nvals
        if len(o.values) not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise self.ctx.error(f"{self.ext}: option --{o.name} takes {want} argument(s), got {len(o.values)}")
        if o.negated and not negatable:
            raise self.ctx.error(f"{self.ext}: option --{o.name} cannot be negated")
        return o

    def flag(self, *names: str) -> bool:
        return self.get(*names, nvals=0, negatable=False) is not None

    def value(self, *names: str) -> str | None:
        o = self.get(*names, negatable=False)
        return o.values[0] if o is not None else None

    def done(self) -> None:
        """Reject options nobody consumed: iptables would refuse them too."""
        for i, o in enumerate(self.items):
            if i not in self._used:
                raise self.ctx.error(f"{self.ext}: unknown option --{o.name}")


def int_value(ctx: ParseCtx, ext: str, opt: str, text: str, lo: int = 0, hi: int = 0xFFFFFFFF) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise ctx.error(f"{ext}: --{opt}: {text!r} is not a number") from None
    if not lo <= v <= hi:
        raise ctx.error(f"{ext}: --{opt}: {v} is out of range {lo}..{hi}")
    return v
