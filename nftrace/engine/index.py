"""Indexes for long chains: which rules of a chain can match a packet, in rule order.

kube-proxy's KUBE-SERVICES holds one rule per ClusterIP port and KUBE-NODEPORTS one per
node port: with 10,000 services a linear walk evaluates 10,000 rules for every packet.
A `ChainIndex` buckets the rules of one chain by a plain positive match each has:

- the destination (`-d NET`, by prefix length: one dict per mask),
- the protocol and destination port (`-p tcp -m tcp --dport N`, or a port range),
- the protocol alone (`-p udp`, `-m tcp`),

and keeps every rule it cannot place in a fallback list that is always a candidate.
For a packet the candidates are the union of its buckets and the fallback, in original
rule order, so the walker still takes the first rule that matches.

Exactness: a rule is left out only when it certainly does not match *and* the linear walk
would not have forked on it.  The key match must evaluate to False for the packet, and
every match written before it must be one whose evaluation is a plain yes/no without side
effects (addresses, interfaces, protocol, ports, fragment, mark, comment, icmp type).  A rule
whose first matches may fork (statistic, recent, an unknown extension, addrtype without a
host) is indexed by a key written before them, or not at all.  The walker does not use the
index with `--all-rules`, where every evaluated rule is shown with the reason it failed.

Indexes are built lazily, the first time a walk enters a chain of at least
`INDEX_MIN_RULES` rules, and assume the ruleset does not change afterwards (as the Engine
does); a chain whose rule list was replaced or resized is re-indexed.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from typing import TYPE_CHECKING, NamedTuple

from nftrace.ruleset.model import Chain, Rule, Ruleset

if TYPE_CHECKING:
    from nftrace.engine.packet import Packet

#: chains shorter than this are walked linearly (indexing them costs more than it saves)
INDEX_MIN_RULES = 64

_Key = tuple[int, str, int | None]

_Types = tuple[frozenset[type], frozenset[type], type | None, type | None, type | None]
_TYPES: _Types | None = None


def match_types() -> _Types:
    """(safe, safe_with_host, AddrMatch, PortMatch, ProtoMatch).

    `safe`: the match classes whose evaluate() always returns True/False and changes nothing;
    `safe_with_host` adds those that do so when the host context is known (addrtype, which is
    `unknown` without one).  A class the extension modules no longer define is left out: its
    rules are then walked linearly (slower, never wrong)."""
    global _TYPES
    if _TYPES is None:
        from nftrace.ruleset.ext import basic, mark, misc, proto

        found: dict[str, type] = {}
        for mod, names in (
            (basic, ("AddrMatch", "IfaceMatch", "ProtoMatch", "FragMatch")),
            (proto, ("PortMatch", "IcmpMatch", "MultiportMatch")),
            (misc, ("Always",)),
            (mark, ("MarkMatch",)),
        ):
            for n in names:
                cls = getattr(mod, n, None)
                if isinstance(cls, type):
                    found[n] = cls
        safe = frozenset(found.values())
        addrtype = getattr(misc, "AddrtypeMatch", None)
        with_host = safe | {addrtype} if isinstance(addrtype, type) else safe
        _TYPES = (safe, with_host, found.get("AddrMatch"), found.get("PortMatch"), found.get("ProtoMatch"))
    return _TYPES


class RuleKey(NamedTuple):
    """How the index files a rule: by destination (mask, net), by port (proto, lo..hi), by
    protocol, or not at all (kind "any": always a candidate)."""

    kind: str  # dst | port | proto | any
    mask: int = 0
    net: int = 0
    proto: str = ""
    lo: int = 0
    hi: int = 0


_ANY = RuleKey("any")


def rule_key(rule: Rule, host_known: bool = True) -> RuleKey:
    """The most selective plain positive match of the rule's safe prefix (the matches written
    before the first one that is not a plain yes/no)."""
    safe0, with_host, addr_t, port_t, proto_t = match_types()
    safe = with_host if host_known else safe0
    dst: tuple[int, int] | None = None
    port: tuple[str, int, int] | None = None
    proto: str | None = None
    for m in rule.matches:
        t = type(m)
        if t not in safe:
            break
        if t is addr_t:
            if m.field == "d" and not m.neg and m.mask:  # type: ignore[attr-defined]
                dst = (m.mask, m.net)  # type: ignore[attr-defined]
        elif t is port_t:
            p = m.name_  # type: ignore[attr-defined]
            proto = proto or p
            dp = m.dport  # type: ignore[attr-defined]
            if dp is not None and not m.dneg:  # type: ignore[attr-defined]
                port = (p, dp[0], dp[1])
        elif t is proto_t:
            if not m.neg and not m.any:  # type: ignore[attr-defined]
                proto = m.proto  # type: ignore[attr-defined]
    if dst is not None and _prefix_len(dst[0]) >= 16:
        return RuleKey("dst", mask=dst[0], net=dst[1])
    if port is not None:
        return RuleKey("port", proto=port[0], lo=port[1], hi=port[2])
    if dst is not None:
        return RuleKey("dst", mask=dst[0], net=dst[1])
    if proto is not None:
        return RuleKey("proto", proto=proto)
    return _ANY


def _prefix_len(mask: int) -> int:
    return mask.bit_count()


class ChainIndex:
    """Candidate rules of one chain for a packet (0-based positions, ascending)."""

    __slots__ = ("chain", "rules", "n", "dst", "ports", "port_ranges", "protos", "always", "_memo_key", "_memo")

    def __init__(self, chain: Chain, host_known: bool = True) -> None:
        self.chain = chain
        self.rules = chain.rules
        self.n = len(chain.rules)
        by_mask: dict[int, dict[int, list[int]]] = {}
        self.ports: dict[tuple[str, int], list[int]] = {}
        ranges: dict[tuple[str, int, int], list[int]] = {}
        self.protos: dict[str, list[int]] = {}
        self.always: list[int] = []
        for pos, rule in enumerate(self.rules):
            key = rule_key(rule, host_known)
            kind = key.kind
            if kind == "dst":
                by_mask.setdefault(key.mask, {}).setdefault(key.net, []).append(pos)
            elif kind == "port":
                if key.lo == key.hi:
                    self.ports.setdefault((key.proto, key.lo), []).append(pos)
                else:
                    ranges.setdefault((key.proto, key.lo, key.hi), []).append(pos)
            elif kind == "proto":
                self.protos.setdefault(key.proto, []).append(pos)
            else:
                self.always.append(pos)
        # longest prefixes first (the order does not matter for the result, only for speed)
        self.dst: list[tuple[int, dict[int, list[int]]]] = sorted(by_mask.items(), key=lambda kv: -kv[0])
        self.port_ranges: list[tuple[str, int, int, list[int]]] = [(p, lo, hi, v) for (p, lo, hi), v in ranges.items()]
        self._memo_key: _Key | None = None
        self._memo: list[int] = []

    def candidates(self, pkt: Packet) -> list[int]:
        """Positions of the rules that may match pkt, ascending; every other rule does not match."""
        key: _Key = (pkt.dst_n, pkt.proto, pkt.dport)
        if key == self._memo_key:
            return self._memo
        dst_n, proto, dport = key
        parts: list[list[int]] = []
        for mask, table in self.dst:
            hit = table.get(dst_n & mask)
            if hit is not None:
                parts.append(hit)
        if dport is not None:
            hit = self.ports.get((proto, dport))
            if hit is not None:
                parts.append(hit)
            for p, lo, hi, lst in self.port_ranges:
                if p == proto and lo <= dport <= hi:
                    parts.append(lst)
        hit = self.protos.get(proto)
        if hit is not None:
            parts.append(hit)
        if self.always:
            parts.append(self.always)
        if not parts:
            out: list[int] = []
        elif len(parts) == 1:
            out = parts[0]
        else:
            out = sorted(itertools.chain.from_iterable(parts))
        self._memo_key, self._memo = key, out
        return out

    def next(self, pkt: Packet, i: int) -> int:
        """The first position >= i whose rule may match pkt (len(rules) when none)."""
        cands = self.candidates(pkt)
        k = bisect_left(cands, i)
        return cands[k] if k < len(cands) else self.n

    def stats(self) -> dict[str, int]:
        return {
            "rules": self.n,
            "by_dst": sum(len(v) for _, t in self.dst for v in t.values()),
            "by_port": sum(len(v) for v in self.ports.values()) + sum(len(r[3]) for r in self.port_ranges),
            "by_proto": sum(len(v) for v in self.protos.values()),
            "fallback": len(self.always),
        }


class RulesetIndex:
    """The chain indexes of one ruleset, built on first use."""

    __slots__ = ("min_rules", "host_known", "_by_id")

    def __init__(self, min_rules: int = INDEX_MIN_RULES, host_known: bool = True) -> None:
        """host_known: the Engine has a host context (addrtype then evaluates to yes/no)."""
        self.min_rules = min_rules
        self.host_known = host_known
        self._by_id: dict[int, tuple[Chain, ChainIndex]] = {}

    def get(self, chain: Chain) -> ChainIndex | None:
        """The index of chain, or None when the chain is short enough to walk linearly."""
        rules = chain.rules
        if len(rules) < self.min_rules:
            return None
        got = self._by_id.get(id(chain))
        if got is not None and got[0] is chain and got[1].rules is rules and got[1].n == len(rules):
            return got[1]
        ix = ChainIndex(chain, self.host_known)
        self._by_id[id(chain)] = (chain, ix)
        return ix

    def build_all(self, ruleset: Ruleset) -> int:
        """Index every long chain now (for measuring); returns how many chains were indexed."""
        n = 0
        for t in ruleset.tables.values():
            for c in t.chains.values():
                if self.get(c) is not None:
                    n += 1
        return n
