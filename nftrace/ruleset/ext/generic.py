"""Extensions iptables knows but nftrace does not model: parsed generically.

A generic match evaluates as `unknown`; a generic target continues (every
target iptables ships that is not modelled elsewhere is non-terminating,
except the ones listed in _TERMINAL, whose verdict is unknown).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nftrace.ruleset.ext.stateful import section_text
from nftrace.ruleset.model import MatchOutcome, MatchSpec, Option, TargetResult, TargetSpec, Unknown
from nftrace.ruleset.registry import ParseCtx

if TYPE_CHECKING:
    from nftrace.engine.env import Env
    from nftrace.engine.packet import Packet

# Targets whose verdict depends on something outside the ruleset.
_TERMINAL = {"SYNPROXY": "SYNPROXY answers SYNs itself and drops them", "CLUSTERIP": "cluster hash"}


class GenericMatch(MatchSpec):
    exactness = "unknown"
    __slots__ = ("ext", "text")

    def __init__(self, ext: str, text: str) -> None:
        self.ext = ext
        self.text = text

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        return Unknown(f"{self.text}: the '{self.ext}' extension is not modelled by nftrace")


class GenericTarget(TargetSpec):
    exactness = "unknown"

    def __init__(self, ext: str, text: str) -> None:
        self.ext = ext
        self.text = text

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.ext

    def apply(self, pkt: Packet, env: Env) -> TargetResult:
        if self.ext in _TERMINAL:
            return TargetResult("CONTINUE", unknown=f"{self.text}: {_TERMINAL[self.ext]}")
        return TargetResult(
            "CONTINUE", note=f"{self.ext} is not modelled: assumed to continue without changing the packet"
        )


def generic_match(name: str, items: list[Option], ctx: ParseCtx) -> MatchSpec:
    return GenericMatch(name, section_text(name, items))


def generic_target(name: str, items: list[Option], ctx: ParseCtx) -> TargetSpec:
    return GenericTarget(name, section_text(name, items).replace("-m ", "-j ", 1))
