"""Structural comparison: rules added, removed and moved, chain by chain.

Rules are compared by their canonical text (as iptables-save prints them, so
counters and spelling variants do not count) with B's kube-proxy chain names
mapped to A's (see nftrace.diff.chains).  Within a chain, equal rules are
paired first-to-first; what is left over in A is removed, in B added.  Of the
paired rules, the largest set that kept its relative order stays put; the
others are reported as moved.  The order in which tables and chains are
declared is not compared.
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from typing import Any

from nftrace.diff.chains import HASHED_ANY, global_names
from nftrace.ruleset.canonical import canonical_text
from nftrace.ruleset.model import Chain, Rule, Ruleset


class RuleKeys:
    """Canonical, chain-name-mapped text of every rule of one ruleset."""

    def __init__(self, rs: Ruleset, mapping: dict[tuple[str, str], str] | None = None) -> None:
        self.rs = rs
        self.mapping = mapping or {}
        self.names = global_names(self.mapping)
        self.chains = {c for t in rs.tables.values() for c in t.chains}
        self._cache: dict[int, str] = {}

    def chain_name(self, table: str, chain: str) -> str:
        return self.mapping.get((table, chain), chain)

    def key(self, rule: Rule) -> str:
        k = self._cache.get(id(rule))
        if k is None:
            k = self._compute(rule)
            self._cache[id(rule)] = k
        return k

    def _compute(self, rule: Rule) -> str:
        text = _canonical(rule)
        head = f"-A {rule.chain}"
        body = text[len(head) :].strip() if text.startswith(head) else text
        if "KUBE-" in body:
            # hashed names: jump targets, and in comments ("... not accepted by KUBE-FW-...") and
            # recent lists; a hash that names no chain of the dump is noise
            body = HASHED_ANY.sub(self._hashed, body)
        return f"-A {self.chain_name(rule.table, rule.chain)} {body}".strip()

    def _hashed(self, m: re.Match[str]) -> str:
        name = m.group(0)
        if name in self.names:
            return self.names[name]
        if name in self.chains:
            return name
        return name[: name.rindex("-")] + "-*"

    def rule_at(self, table: str, chain: str, index: int) -> Rule | None:
        c = self.rs.chain(table, chain)
        if c is None or not 1 <= index <= len(c.rules):
            return None
        return c.rules[index - 1]


def _canonical(rule: Rule) -> str:
    try:
        return " ".join(canonical_text(rule).split())
    except Exception:  # noqa: BLE001 - a printer gap must not stop a comparison; fall back to the text
        pass
    words = rule.text.split()
    out: list[str] = []
    i = 0
    while i < len(words):
        if words[i] in ("-c", "--set-counters") and i + 2 < len(words):
            i += 3
            continue
        out.append(words[i])
        i += 1
    return " ".join(out)


def structural_diff(a: Ruleset, b: Ruleset, ka: RuleKeys, kb: RuleKeys) -> dict[str, Any]:
    """The `structural` object of nftrace.diff/1."""
    added: list[dict[str, Any]] = []
    removed: list[dict[str, Any]] = []
    moved: list[dict[str, Any]] = []
    policies: list[dict[str, Any]] = []
    chains_added: list[dict[str, Any]] = []
    chains_removed: list[dict[str, Any]] = []
    tables = sorted(set(a.tables) | set(b.tables), key=_table_order)
    for t in tables:
        ta = a.tables.get(t)
        tb = b.tables.get(t)
        chains_a = dict(ta.chains) if ta else {}
        chains_b = {kb.chain_name(t, n): c for n, c in (tb.chains.items() if tb else [])}
        names = sorted(set(chains_a) | set(chains_b), key=lambda n: (0 if _builtin(n) else 1, n))
        for name in names:
            ca = chains_a.get(name)
            cb = chains_b.get(name)
            b_name = cb.name if cb is not None else None
            where: dict[str, Any] = {"table": t, "chain": name}
            if b_name is not None and b_name != name:
                where["chain_b"] = b_name
            # A built-in chain that is absent behaves as an empty one with policy ACCEPT.
            if ca is None and cb is not None and not _trivial(cb):
                chains_added.append({**where, "rules": len(cb.rules)})
            elif cb is None and ca is not None and not _trivial(ca):
                chains_removed.append({**where, "rules": len(ca.rules)})
            pa = ca.policy if ca is not None else ("ACCEPT" if _builtin(name) else None)
            pb = cb.policy if cb is not None else ("ACCEPT" if _builtin(name) else None)
            if pa != pb and (ca is not None and cb is not None or _builtin(name)):
                policies.append({**where, "a": pa, "b": pb})
            rules_a = ca.rules if ca else []
            rules_b = cb.rules if cb else []
            _diff_chain(where, rules_a, rules_b, ka, kb, added, removed, moved)
    return {
        "added": added,
        "removed": removed,
        "moved": moved,
        "policies": policies,
        "chains_added": chains_added,
        "chains_removed": chains_removed,
    }


_TABLE_ORDER = {"raw": 0, "mangle": 1, "nat": 2, "filter": 3, "security": 4}


def _table_order(t: str) -> tuple[int, str]:
    return (_TABLE_ORDER.get(t, 9), t)


def _trivial(c: Chain) -> bool:
    return c.builtin and not c.rules and c.policy == "ACCEPT"


def _builtin(name: str) -> bool:
    return name in ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")


def _diff_chain(
    where: dict[str, Any],
    rules_a: list[Rule],
    rules_b: list[Rule],
    ka: RuleKeys,
    kb: RuleKeys,
    added: list[dict[str, Any]],
    removed: list[dict[str, Any]],
    moved: list[dict[str, Any]],
) -> None:
    keys_a = [ka.key(r) for r in rules_a]
    keys_b = [kb.key(r) for r in rules_b]
    pos_b: dict[str, list[int]] = defaultdict(list)
    for j, k in enumerate(keys_b):
        pos_b[k].append(j)
    pairs: list[tuple[int, int]] = []  # (index in A, index in B), in A order
    used_b: set[int] = set()
    taken: dict[str, int] = defaultdict(int)
    for i, k in enumerate(keys_a):
        lst = pos_b.get(k)
        n = taken[k]
        if lst and n < len(lst):
            pairs.append((i, lst[n]))
            used_b.add(lst[n])
            taken[k] = n + 1
        else:
            removed.append(_entry(where, rules_a[i], "a"))
    for j, r in enumerate(rules_b):
        if j not in used_b:
            added.append(_entry(where, r, "b"))
    keep = _longest_increasing([j for _, j in pairs])
    for n, (i, j) in enumerate(pairs):
        if n not in keep:
            moved.append(
                {
                    **where,
                    "text": rules_a[i].text,
                    "from": rules_a[i].index,
                    "to": rules_b[j].index,
                    "line_a": rules_a[i].line,
                    "line_b": rules_b[j].line,
                }
            )


def _entry(where: dict[str, Any], r: Rule, side: str) -> dict[str, Any]:
    return {**where, "rule": r.index, "text": r.text, "line": r.line, "side": side}


def _longest_increasing(seq: list[int]) -> set[int]:
    """Indexes (into seq) of one longest strictly increasing subsequence."""
    if not seq:
        return set()
    tails: list[int] = []  # seq value at the end of the best run of each length
    tails_idx: list[int] = []
    prev: list[int] = [-1] * len(seq)
    for i, v in enumerate(seq):
        k = bisect.bisect_left(tails, v)
        if k == len(tails):
            tails.append(v)
            tails_idx.append(i)
        else:
            tails[k] = v
            tails_idx[k] = i
        prev[i] = tails_idx[k - 1] if k > 0 else -1
    out: set[int] = set()
    i = tails_idx[-1]
    while i >= 0:
        out.add(i)
        i = prev[i]
    return out


def structural_count(s: dict[str, Any]) -> int:
    return sum(len(s.get(k, [])) for k in ("added", "removed", "moved", "policies"))
