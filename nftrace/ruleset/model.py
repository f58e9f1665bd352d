"""Typed model of an iptables ruleset: Ruleset > Table > Chain > Rule.

Parsing is lossless: every rule keeps its text (as `-A CHAIN ...`) and its
source line.  Matches and targets are objects produced by the extension
registry (`nftrace.ruleset.registry`); the engine evaluates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Final, NamedTuple

# mypyc_attr(serializable=True): the parsed-ruleset cache pickles the model, also when compiled
# (nftrace/compiled.py); a no-op for the interpreter
from mypy_extensions import mypyc_attr

if TYPE_CHECKING:
    from nftrace.engine.env import Env
    from nftrace.engine.packet import Packet

BUILTIN_CHAINS: Final[dict[str, tuple[str, ...]]] = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}

STANDARD_VERDICTS: Final = frozenset({"ACCEPT", "DROP", "RETURN", "QUEUE"})


def by_constructor(obj: Any) -> tuple[Any, ...]:
    """__reduce__ of a dataclass rebuilt by its constructor from its fields: pickle's default sets
    the fields one by one, which a frozen class refuses once compiled, and a compiled class with
    required arguments cannot be made without them (nftrace/compiled.py)."""
    return (type(obj), tuple(getattr(obj, f.name) for f in fields(obj)))


@dataclass(frozen=True, slots=True)
class Unknown:
    """A match whose outcome cannot be decided offline; `reason` says why."""

    reason: str

    def __reduce__(self) -> tuple[Any, ...]:
        return by_constructor(self)


@dataclass(frozen=True, slots=True)
class Chance:
    """A match that holds with probability `p` (statistic --mode random/nth)."""

    p: float
    label: str

    def __reduce__(self) -> tuple[Any, ...]:
        return by_constructor(self)


# What a match's evaluate() returns.
MatchOutcome = bool | Unknown | Chance


class Option(NamedTuple):
    """One option of a match/target section as written: `[!] --name value...` (a tuple: hashed in C)."""

    name: str
    negated: bool
    values: tuple[str, ...]


@mypyc_attr(serializable=True)
class MatchSpec:
    """Base class of every parsed match.  Subclasses live in nftrace.ruleset.ext.

    `text` is the section as iptables-save prints it (`-m tcp --dport 22`);
    `canonical()` returns it unless a subclass knows better.  `hooks`, when
    set, names the netfilter hooks the kernel accepts the match in (checked
    for every chain the rule's chain is reachable from, as the kernel does).
    """

    name: ClassVar[str] = "?"
    #: evaluated exactly ("exact"), or only by assumption ("unknown").
    exactness: ClassVar[str] = "exact"
    text: str = ""
    hooks: frozenset[str] | None = None
    #: tables the kernel accepts the match in (None = any)
    tables: tuple[str, ...] | None = None
    #: loading it makes the kernel enable connection tracking in the namespace (nf_ct_netns_get)
    needs_conntrack: bool = False

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        raise NotImplementedError

    def canonical(self) -> str:
        """This match as iptables-save prints it (without the leading space)."""
        return self.text

    def why_not(self, pkt: Packet, env: Env) -> str:
        """Human text saying why this match did not hold for pkt."""
        return self.text

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.text!r}>"


@dataclass(slots=True)
class TargetResult:
    """What a target does: a netfilter verdict plus optional side effects.

    verdict: ACCEPT DROP QUEUE CONTINUE RETURN (jumps/gotos are handled by the
    engine from Rule.jump).  `nat` is a NAT request the engine applies when the
    nat hook finishes; `note` is shown in the trace (e.g. "REJECT sends icmp
    port-unreachable").
    """

    verdict: str
    nat: Any = None
    note: str | None = None
    unknown: str | None = None


@mypyc_attr(serializable=True)
class TargetSpec:
    """Base class of every parsed target."""

    name: ClassVar[str] = "?"
    exactness: ClassVar[str] = "exact"
    text: str = ""
    #: tables the target is valid in (None = any)
    tables: tuple[str, ...] | None = None
    #: hooks the kernel accepts the target in (None = any); see MatchSpec.hooks
    hooks: frozenset[str] | None = None
    #: loading it makes the kernel enable connection tracking in the namespace; see MatchSpec
    needs_conntrack: bool = False

    def apply(self, pkt: Packet, env: Env) -> TargetResult:
        raise NotImplementedError

    def canonical(self) -> str:
        """This target as iptables-save prints it (`-j NAME --opt ...`)."""
        return self.text

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.text!r}>"


@mypyc_attr(serializable=True)
@dataclass(slots=True, eq=False)
class Rule:
    table: str
    chain: str
    text: str  # "-A CHAIN ..." exactly as written (counters prefix removed)
    line: int  # 1-based source line
    matches: list[MatchSpec] = field(default_factory=list)
    target: TargetSpec | None = None
    jump: str | None = None  # user chain (or standard verdict) jumped/goto'd to
    goto: bool = False
    index: int = 0  # 1-based position in its chain; set when the table is complete
    protocol: str | None = None  # value of -p (for extension validation), lowercase
    proto_negated: bool = False

    @property
    def target_name(self) -> str | None:
        if self.jump is not None:
            return self.jump
        return self.target.name if self.target is not None else None


@mypyc_attr(serializable=True)
@dataclass(slots=True, eq=False)
class Chain:
    name: str
    policy: str | None  # None for user chains
    rules: list[Rule] = field(default_factory=list)
    line: int = 0
    counters: str | None = None

    @property
    def builtin(self) -> bool:
        return self.policy is not None


@mypyc_attr(serializable=True)
@dataclass(slots=True, eq=False)
class Table:
    name: str
    chains: dict[str, Chain] = field(default_factory=dict)
    line: int = 0


@mypyc_attr(serializable=True)
@dataclass(slots=True, eq=False)
class Ruleset:
    family: str = "ipv4"  # ipv4 | ipv6
    tables: dict[str, Table] = field(default_factory=dict)
    source: str = "<rules>"
    warnings: list[str] = field(default_factory=list)

    def chain(self, table: str, chain: str) -> Chain | None:
        t = self.tables.get(table)
        return t.chains.get(chain) if t is not None else None

    def rule_count(self) -> int:
        return sum(len(c.rules) for t in self.tables.values() for c in t.chains.values())
