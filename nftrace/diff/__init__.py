"""Semantic comparison of two rule dumps (`nftrace diff`).

`compare(a, b, ...)` returns the nftrace.diff/1 document (DESIGN.md
Contract 3): the structural changes (rules added, removed, moved, per table
and chain, with kube-proxy's hashed chains paired by what they do) and the
packets whose fate differs, each with the first step where the two paths
part.  The presenter is nftrace.diff.text; the command nftrace.commands.diff.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nftrace.diff.load import Side, load_side
from nftrace.errors import InputError

SCHEMA = "nftrace.diff/1"

__all__ = ["SCHEMA", "Side", "compare", "load_side", "read_packets"]


def read_packets(path: str) -> list[dict[str, Any]]:
    """Packets from a file: one flow string or one JSON object (batch format) per line; '#' comments."""
    from nftrace.engine.packet import packet_from_dict, parse_flow

    try:
        text = Path(path).read_text(encoding="utf-8") if path != "-" else __import__("sys").stdin.read()
    except OSError as e:
        raise InputError(f"cannot read packets: {e.strerror}", file=path) from None
    out: list[dict[str, Any]] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("{") else raw.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"not JSON: {e.msg}", file=path, line=n) from None
            if not isinstance(d, dict):
                raise InputError("each JSON line must be an object", file=path, line=n)
        else:
            try:
                d = parse_flow(line, file=path)
            except InputError as e:
                raise InputError(e.message, file=path, line=n) from None
        try:
            packet_from_dict(dict(d), file=path)
        except InputError as e:
            raise InputError(e.message, file=path, line=n) from None
        out.append(d)
    return out


def compare(
    a: Side,
    b: Side,
    *,
    packets: list[dict[str, Any]] | None = None,
    auto: bool = True,
    path: bool = False,
    max_probes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Compare two sides; the nftrace.diff/1 document."""
    from nftrace.diff.behaviour import compare_packets
    from nftrace.diff.chains import pair_chains
    from nftrace.diff.hosts import synthetic_host
    from nftrace.diff.probes import DEFAULT_MAX_PROBES, generate_probes
    from nftrace.diff.structural import RuleKeys, structural_diff
    from nftrace.engine.pipeline import Engine

    if a.ruleset.family != b.ruleset.family:
        raise InputError(
            f"cannot compare {a.ruleset.family} rules ({a.label}) with {b.ruleset.family} rules ({b.label})"
        )
    warnings: list[str] = []
    mapping, pairings = pair_chains(a.ruleset, b.ruleset)
    ka = RuleKeys(a.ruleset)
    kb = RuleKeys(b.ruleset, mapping)
    structural = structural_diff(a.ruleset, b.ruleset, ka, kb)
    structural["chains_matched"] = [{"table": p.table, "a": p.a, "b": p.b, "by": p.by} for p in pairings]

    # Hosts: each side's own; a side without one borrows the other's; neither: the same synthetic host.
    host_a, host_b = a.host, b.host
    if not a.has_host and not b.has_host:
        host_a = host_b = synthetic_host([a.ruleset, b.ruleset])
        warnings.extend(host_a.provenance)
    elif not a.has_host:
        host_a = b.host
        warnings.append(f"A ({a.label}) has no host context: B's is used for both")
    elif not b.has_host:
        host_b = a.host
        warnings.append(f"B ({b.label}) has no host context: A's is used for both")
    for s in (a, b):
        warnings.extend(s.warnings)

    ea = Engine(a.ruleset, host_a, a.ipsets, backend=a.backend)
    eb = Engine(b.ruleset, host_b, b.ipsets, backend=b.backend)
    probes: list[dict[str, Any]] = list(packets or [])
    probe_info: dict[str, Any] = {"given": len(probes), "auto": auto}
    if auto:
        limit = max_probes if max_probes is not None else DEFAULT_MAX_PROBES
        tracers = [_tracer(ea), _tracer(eb)]
        focus = _changed_rules(a, b, structural)
        differ = not _same_host(host_a, host_b)
        generated, info = generate_probes(
            [a.ruleset, b.ruleset], host_a, [a.ipsets, b.ipsets], max_probes=limit, tracers=tracers, focus=focus,
            refine_all=differ,
        )  # fmt: skip
        if differ:
            more, info_b = generate_probes(
                [a.ruleset, b.ruleset], host_b, [a.ipsets, b.ipsets], max_probes=limit, tracers=tracers, focus=focus,
                refine_all=True,
            )  # fmt: skip
            seen = {json.dumps(p, sort_keys=True) for p in generated}
            generated += [p for p in more if json.dumps(p, sort_keys=True) not in seen]
            info["truncated"] = info["truncated"] or info_b["truncated"]
        generated, dropped = _usable_on_both(generated, host_a, host_b) if differ else (generated, 0)
        if dropped:
            warnings.append(f"{dropped} probes arrive on an interface only one host has: not compared")
        probes += generated
        probe_info.update(info)
        if info["truncated"]:
            warnings.append(
                f"probe budget reached: {info['count']} of {info['candidates']} probe packets compared "
                "(raise --max-probes to compare more)"
            )
    probe_info["count"] = len(probes)
    total = len(probes)
    cb = (lambda n: progress(n, total)) if progress is not None else None
    differences = compare_packets(ea, eb, ka, kb, probes, path=path, progress=cb)
    return {
        "schema": SCHEMA,
        "a": a.label,
        "b": b.label,
        "inputs": {"a": a.describe(), "b": b.describe()},
        "structural": structural,
        "differences": differences,
        "probes": probe_info,
        "compared": {"path": path},
        "warnings": warnings,
    }


def _changed_rules(a: Side, b: Side, structural: dict[str, Any]) -> list[set[int]]:
    """Ids of the rules of A and of B that the structural comparison found changed (probed hardest)."""
    fa: set[int] = set()
    fb: set[int] = set()

    def rule(side: Side, table: str, chain: str, index: int) -> Any:
        c = side.ruleset.chain(table, chain)
        return c.rules[index - 1] if c is not None and 1 <= index <= len(c.rules) else None

    for e in structural["removed"]:
        r = rule(a, e["table"], e["chain"], e["rule"])
        if r is not None:
            fa.add(id(r))
    for e in structural["added"]:
        r = rule(b, e["table"], e.get("chain_b", e["chain"]), e["rule"])
        if r is not None:
            fb.add(id(r))
    for e in structural["moved"]:
        ra = rule(a, e["table"], e["chain"], e["from"])
        rb = rule(b, e["table"], e.get("chain_b", e["chain"]), e["to"])
        if ra is not None:
            fa.add(id(ra))
        if rb is not None:
            fb.add(id(rb))
    for e in structural["policies"]:
        for side, acc, name in ((a, fa, e["chain"]), (b, fb, e.get("chain_b", e["chain"]))):
            c = side.ruleset.chain(e["table"], name)
            if c is not None:
                acc.update(id(r) for r in c.rules[-50:])
    return [fa, fb]


def _same_host(a: Any, b: Any) -> bool:
    """The same links, routes, ip rules and sysctls (where the context came from aside)."""
    import dataclasses

    if a is b:
        return True
    return bool(
        dataclasses.replace(a, provenance=[], hostname=None) == dataclasses.replace(b, provenance=[], hostname=None)
    )


def _tracer(engine: Any) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    from nftrace.engine.packet import packet_from_dict
    from nftrace.errors import NftraceError

    def trace(packet: dict[str, Any]) -> dict[str, Any] | None:
        try:
            pkt, origin = packet_from_dict(dict(packet))
            doc: dict[str, Any] = engine.trace(pkt, origin).to_json()
        except NftraceError:
            return None
        return doc

    return trace


def _usable_on_both(probes: list[dict[str, Any]], ha: Any, hb: Any) -> tuple[list[dict[str, Any]], int]:
    if ha is hb:
        return probes, 0
    la = {lk.name for lk in ha.links}
    lb = {lk.name for lk in hb.links}
    out = []
    dropped = 0
    for p in probes:
        iif = p.get("iif")
        if iif and ((la and iif not in la) or (lb and iif not in lb)):
            dropped += 1
            continue
        out.append(p)
    return out, dropped
