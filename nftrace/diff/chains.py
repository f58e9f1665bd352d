"""Matching kube-proxy's hashed chains across two rulesets by what they do.

kube-proxy names its per-service and per-endpoint chains with a hash
(`KUBE-SVC-TCOU7JCQXEZGVUNU`, `KUBE-SEP-...`, `KUBE-EXT-`, `KUBE-FW-`,
`KUBE-SVL-`, and the older `KUBE-XLB-`).  Two nodes, or two kube-proxy
versions, may use different hashes for the same service.  A chain is
identified here by:

1. the service port name found in the comments of its own rules, or of the
   rules that jump to it (`"kube-system/kube-dns:dns cluster IP"`), plus, for a
   KUBE-SEP chain, the endpoint of its DNAT (`--to-destination 10.244.0.2:53`);
2. when there are no comments: a fingerprint of the rules in the chain and of
   the rules that jump to it, with every hashed name replaced by the identity
   of the chain it names (refined a few rounds, so an SVC chain is known by the
   endpoints it balances to).

Chains with the same identity on both sides are paired; B's name is then
mapped to A's name for every comparison.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass

from nftrace.diff.words import rule_opts
from nftrace.ruleset.model import Ruleset

HASHED = re.compile(r"^KUBE-(SVC|SEP|EXT|FW|SVL|XLB)-[A-Z0-9]{16}$")
HASHED_ANY = re.compile(r"KUBE-(SVC|SEP|EXT|FW|SVL|XLB)-[A-Z0-9]{16}\b")
# "ns/name:port" (port name optional); a namespace/name is a DNS label, never a dotted quad
_SVC = re.compile(r"(?<![\w./-])([a-z0-9][-a-z0-9.]*/[a-z0-9][-a-z0-9.]*(?::[-\w.]*)?)")
_DOTTED = re.compile(r"^\d+(\.\d+){3}(/|$)")


def is_hashed(name: str) -> bool:
    return bool(HASHED.match(name))


def hashed_prefix(name: str) -> str:
    return name[: name.rindex("-")]


def service_in_comment(comment: str) -> str | None:
    for m in _SVC.finditer(comment):
        s = m.group(1)
        if not _DOTTED.match(s):
            return s
    return None


@dataclass(frozen=True, slots=True)
class Pairing:
    table: str
    a: str
    b: str
    by: str  # what identified them ("service ns/name:port", "endpoint ...", "rule fingerprint")


def _comments(text: str) -> list[str]:
    return [o.value for o in rule_opts(text) if o.name == "--comment" and o.value]


def _dnat_target(text: str) -> str | None:
    opts = rule_opts(text)
    if any(o.name == "-j" and o.value == "DNAT" for o in opts):
        for o in opts:
            if o.name == "--to-destination":
                return o.value
    return None


def _proto(text: str) -> str | None:
    for o in rule_opts(text):
        if o.name in ("-p", "--protocol"):
            return ("!" if o.neg else "") + o.value
    return None


def chain_identities(rs: Ruleset) -> dict[tuple[str, str], tuple[str, str]]:
    """(table, chain) -> (identity key, how it was found) for every hashed chain.

    A chain's first key is its kind and service (and endpoint); chains whose
    first key is not unique (no comments, or two chains of one service, as
    old userspace-mode dumps have) get a fingerprint of their rules and of the
    rules that jump to them appended, with hashed names replaced by the other
    chains' keys, refined until stable.
    """
    out: dict[tuple[str, str], tuple[str, str]] = {}
    hashed_all = [(t, c) for t, table in rs.tables.items() for c in table.chains if is_hashed(c)]
    if not hashed_all:
        return out
    callers: dict[tuple[str, str], list[str]] = defaultdict(list)
    for tname, table in rs.tables.items():
        for c in table.chains.values():
            for r in c.rules:
                if r.jump is not None and r.jump in table.chains and is_hashed(r.jump):
                    callers[(tname, r.jump)].append(r.text)
    base: dict[tuple[str, str], str] = {}
    how: dict[tuple[str, str], str] = {}
    for tname, name in hashed_all:
        prefix = hashed_prefix(name)
        rules = rs.tables[tname].chains[name].rules
        svc = _majority([service_in_comment(c) for r in rules for c in _comments(r.text)])
        if svc is None:
            svc = _majority([service_in_comment(c) for t in callers[(tname, name)] for c in _comments(t)])
        ep = proto = None
        if prefix == "KUBE-SEP":
            for r in rules:
                target = _dnat_target(r.text)
                if target and ep is None:
                    ep, proto = target, _proto(r.text)
        key = f"{tname}|{prefix}|{svc or '?'}"
        if prefix == "KUBE-SEP":
            key += f"|{ep}|{proto}"
        base[(tname, name)] = key
        how[(tname, name)] = (f"service {svc}" + (f" endpoint {ep}" if ep else "")) if svc else "rule fingerprint"
    counts: dict[str, int] = defaultdict(int)
    for k in base.values():
        counts[k] += 1
    by_name = {n: k for (_, n), k in base.items()}
    labels = dict(by_name)
    for _ in range(4):
        new: dict[str, str] = {}
        for tname, name in hashed_all:

            def sub(m: re.Match[str], _self: str = name, _labels: dict[str, str] = labels) -> str:
                other = m.group(0)
                return "<self>" if other == _self else "<" + _labels.get(other, hashed_prefix(other)) + ">"

            rules = rs.tables[tname].chains[name].rules
            own = sorted(HASHED_ANY.sub(sub, _strip_chain(r.text)) for r in rules)
            inc = sorted(HASHED_ANY.sub(sub, t) for t in callers[(tname, name)])
            h = hashlib.sha256("\n".join(own + ["--"] + inc).encode("utf-8", "surrogateescape")).hexdigest()[:20]
            new[name] = f"{base[(tname, name)]}#{h}"
        if new == labels:
            break
        labels = new
    for tname, name in hashed_all:
        key = base[(tname, name)]
        if counts[key] > 1 or key.endswith("|?") or "|?|" in key:
            key = labels[name]
            if how[(tname, name)] != "rule fingerprint":
                how[(tname, name)] += " and rule fingerprint"
        out[(tname, name)] = (key, how[(tname, name)])
    return out


def _strip_chain(text: str) -> str:
    """Rule text without its `-A CHAIN` head."""
    parts = text.split(None, 2)
    return parts[2] if len(parts) > 2 and parts[0] in ("-A", "-I") else text


def _majority(values: list[str | None]) -> str | None:
    counts: dict[str, int] = defaultdict(int)
    for v in values:
        if v:
            counts[v] += 1
    if not counts:
        return None
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def global_names(mapping: dict[tuple[str, str], str]) -> dict[str, str]:
    """B name -> A name for hashed chains regardless of table (comments in filter rules name nat chains)."""
    out: dict[str, str] = {}
    for (_, nb), na in sorted(mapping.items()):
        out.setdefault(nb, na)
    return out


def pair_chains(a: Ruleset, b: Ruleset) -> tuple[dict[tuple[str, str], str], list[Pairing]]:
    """Map B's hashed chain names to A's: ({(table, b_name): a_name}, pairings whose names differ).

    Chains of B that are not paired keep their name, unless A has a chain of that
    name for another purpose: such a chain is renamed `NAME@b`.
    """
    ia = chain_identities(a)
    ib = chain_identities(b)
    by_key_a: dict[tuple[str, str], list[str]] = defaultdict(list)
    by_key_b: dict[tuple[str, str], list[str]] = defaultdict(list)
    for (t, n), (k, _) in ia.items():
        by_key_a[(t, k)].append(n)
    for (t, n), (k, _) in ib.items():
        by_key_b[(t, k)].append(n)
    mapping: dict[tuple[str, str], str] = {}
    pairings: list[Pairing] = []
    for tk, names_b in by_key_b.items():
        names_a = by_key_a.get(tk, [])
        for na, nb in zip(sorted(names_a), sorted(names_b), strict=False):
            mapping[(tk[0], nb)] = na
            if na != nb:
                pairings.append(Pairing(tk[0], na, nb, ib[(tk[0], nb)][1]))
    used_a = {(t, n) for (t, _), n in mapping.items()}
    for t, n in ib:
        if (t, n) in mapping:
            continue
        if (t, n) in ia and (t, n) not in used_a:
            # same name on both sides, neither paired by identity: keep the name
            mapping[(t, n)] = n
        elif (t, n) in ia:
            mapping[(t, n)] = f"{n}@b"
    pairings.sort(key=lambda p: (p.table, p.a))
    return mapping, pairings
