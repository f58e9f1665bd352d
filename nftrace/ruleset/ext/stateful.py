"""Matches that depend on state nftrace cannot see offline.

limit/hashlimit budgets, recent lists, connection counts, payload contents,
the clock: each is parsed (so the ruleset loads and prints back) and evaluated
as `unknown` with the reason, except where the outcome is certain anyway
(`recent --set`/`--remove` always match).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nftrace.ruleset.model import MatchOutcome, MatchSpec, Option, Unknown
from nftrace.ruleset.registry import ParseCtx, match

if TYPE_CHECKING:
    from nftrace.engine.env import Env
    from nftrace.engine.packet import Packet


def section_text(name: str, items: list[Option]) -> str:
    parts = [f"-m {name}"]
    for i in items:
        vals = " ".join(f'"{v}"' if (" " in v or not v) else v for v in i.values)
        parts.append(("! " if i.negated else "") + f"--{i.name}" + (f" {vals}" if vals else ""))
    return " ".join(parts)


class StatefulMatch(MatchSpec):
    exactness = "unknown"
    __slots__ = ("text", "reason", "certain")

    def __init__(self, text: str, reason: str, certain: bool | None = None) -> None:
        self.text = text
        self.reason = reason
        self.certain = certain

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        if self.certain is not None:
            return self.certain
        return Unknown(f"{self.text}: {self.reason}")


_OPTIONS: dict[str, set[str]] = {
    "limit": {"limit", "limit-burst"},
    "hashlimit": {
        "hashlimit", "hashlimit-upto", "hashlimit-above", "hashlimit-burst", "hashlimit-mode",
        "hashlimit-srcmask", "hashlimit-dstmask", "hashlimit-name", "hashlimit-htable-size",
        "hashlimit-htable-max", "hashlimit-htable-expire", "hashlimit-htable-gcinterval",
        "hashlimit-rate-match", "hashlimit-rate-interval",
    },
    "recent": {"set", "rcheck", "update", "remove", "seconds", "reap", "hitcount", "rttl", "name",
               "rsource", "rdest", "mask"},
    "connlimit": {"connlimit-upto", "connlimit-above", "connlimit-mask", "connlimit-saddr", "connlimit-daddr"},
    "string": {"algo", "from", "to", "string", "hex-string", "icase"},
    "u32": {"u32"},
    "time": {"datestart", "datestop", "timestart", "timestop", "monthdays", "weekdays", "contiguous",
             "kerneltz", "utc", "localtz"},
    "quota": {"quota"},
    "connbytes": {"connbytes", "connbytes-dir", "connbytes-mode"},
}  # fmt: skip

_REASONS = {
    "limit": "depends on the rate-limit budget left when the packet arrives",
    "hashlimit": "depends on the per-flow rate-limit budget left when the packet arrives",
    "recent": "depends on the addresses the recent list holds at that moment",
    "connlimit": "depends on how many connections already exist",
    "string": "depends on the packet's payload",
    "u32": "depends on raw packet bytes nftrace does not model",
    "time": "depends on the time the packet arrives",
    "quota": "depends on how much of the quota is used",
    "connbytes": "depends on the connection's byte/packet counters",
}


def _make(name: str) -> None:
    def parse(items: list[Option], ctx: ParseCtx) -> MatchSpec:
        allowed = _OPTIONS[name]
        for i in items:
            if i.name not in allowed:
                raise ctx.error(f"{name}: unknown option --{i.name}")
        names = {i.name for i in items}
        if name == "string" and "algo" not in names:
            raise ctx.error("string: --algo is required")
        if name == "string" and not names & {"string", "hex-string"}:
            raise ctx.error("string: --string or --hex-string is required")
        if name == "limit":
            for i in items:
                if i.name == "limit" and not _valid_rate(i.values[0] if i.values else ""):
                    raise ctx.error(f"limit: invalid rate {i.values[0] if i.values else ''!r}")
        certain: bool | None = None
        if name == "recent":
            acts = names & {"set", "rcheck", "update", "remove"}
            if len(acts) != 1:
                raise ctx.error("recent: exactly one of --set, --rcheck, --update, --remove is required")
            act = next(iter(acts))
            neg = any(i.negated for i in items if i.name == act)
            if act in ("set", "remove"):
                # --set always adds the source and matches; --remove matches only when the
                # address was present, so that one stays unknown.
                certain = (not neg) if act == "set" else None
        return StatefulMatch(section_text(name, items), _REASONS[name], certain)

    match(name, exactness="unknown", why=_REASONS[name])(parse)


def _valid_rate(text: str) -> bool:
    num, _, unit = text.partition("/")
    if not num.isdigit() or int(num) == 0:
        return False
    return unit == "" or any(u.startswith(unit) for u in ("second", "minute", "hour", "day"))


for _n in _OPTIONS:
    _make(_n)
