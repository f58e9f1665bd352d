"""A rule printed as `iptables-save` prints it.

`canonical_text(rule)` is `-A CHAIN`, the built-in matches in iptables-save's
order (`-s -d -i -o -p -f`, each with its `!`), then every `-m` match in the
order the rule loaded them, each printing its options in its own canonical
order and format (`MatchSpec.canonical()`), then `-j TARGET ...` /
`-j CHAIN` / `-g CHAIN`.  Conditions that compare nothing (`-s 0.0.0.0/0`,
`-i +`, `-p all`) are left out, as iptables-save leaves them out.
"""

from __future__ import annotations

from nftrace.ruleset.model import MatchSpec, Rule, Ruleset


def _rank(spec: MatchSpec) -> int:
    r = getattr(spec, "basic_rank", None)
    return r if isinstance(r, int) else 10


def canonical_text(rule: Rule) -> str:
    parts = ["-A", rule.chain]
    basics = [m for m in rule.matches if _rank(m) < 10]
    basics.sort(key=_rank)
    for m in basics:
        t = m.canonical()
        if t:
            parts.append(t)
    for m in rule.matches:
        if _rank(m) >= 10:
            t = m.canonical()
            if t:
                parts.append(t)
    if rule.jump is not None:
        parts.append(("-g " if rule.goto else "-j ") + rule.jump)
    elif rule.target is not None:
        t = rule.target.canonical()
        if t:
            parts.append(t)
    return " ".join(parts)


def canonical_dump(rs: Ruleset) -> str:
    """The whole ruleset in iptables-save form (counters zeroed): parse_rules() reads it back
    to the same rules, and printing that again gives the same text."""
    out: list[str] = []
    for table in rs.tables.values():
        out.append(f"*{table.name}")
        for chain in table.chains.values():
            out.append(f":{chain.name} {chain.policy if chain.builtin else '-'} [0:0]")
        for chain in table.chains.values():
            out.extend(canonical_text(r) for r in chain.rules)
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""
