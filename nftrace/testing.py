"""Helpers for checking your own rule dumps with pytest.

    from nftrace.testing import load, trace, assert_path, assert_same_behaviour

    node = load("rulesets/kube-node")              # a dump, a rulesets/ directory or a snapshot
    def test_dns_reaches_an_endpoint():
        assert_path(node, "udp 10.244.1.3:5353 > 10.96.0.10:53 iif cni0",
                    verdict="ACCEPT", disposition="forwarded", via_chain="KUBE-SVC-*",
                    dnat_to={"10.244.0.2:53", "10.244.1.2:53"})

`trace()` returns the same JSON document `nftrace explain --format json`
prints (schema nftrace.trace/1), wrapped with a few conveniences.  Every
assertion failure shows the rendered trace, as `nftrace explain` prints it.
See docs/diff.md for the whole API and a runnable example.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nftrace.diff.load import Side, load_side
from nftrace.host.model import HostContext

__all__ = [
    "Loaded",
    "TraceResult",
    "assert_path",
    "assert_same_behaviour",
    "drop_point",
    "load",
    "trace",
]

Packet = str | dict[str, Any]


@dataclass
class Loaded:
    """A ruleset with the host around it, ready to trace packets (the engine is built once)."""

    side: Side
    _engine: Any = field(default=None, repr=False)

    @property
    def ruleset(self) -> Any:
        return self.side.ruleset

    @property
    def host(self) -> HostContext:
        return self.side.host

    @property
    def source(self) -> str:
        return self.side.label

    @property
    def engine(self) -> Any:
        if self._engine is None:
            from nftrace.engine.pipeline import Engine

            self._engine = Engine(self.side.ruleset, self.side.host, self.side.ipsets, backend=self.side.backend)
        return self._engine


def load(
    path_or_text: str | Path | Loaded,
    *,
    host: HostContext | str | Path | None = None,
    backend: str = "nft",
) -> Loaded:
    """Load rules to test.

    `path_or_text`: an iptables-save dump file, a rulesets/ directory (dump plus
    routes.txt, addrs.txt, ip-rules.txt, sysctl.txt, ipsets.txt), a snapshot
    file, or the iptables-save text itself.

    `host`: None keeps what the input brings (a bare dump has no host: routing
    is then guessed, as `nftrace explain` warns); a HostContext; a rulesets/
    directory whose host files are used; or "synthetic" for the made-up host
    `nftrace diff` uses for bare dumps (an address on every interface the
    rules name, a default route, forwarding on).
    Raises nftrace.errors.InputError for bad input.
    """
    if isinstance(path_or_text, Loaded):
        side = path_or_text.side
    else:
        side = load_side(path_or_text, backend=backend)
    if host is not None:
        side = Side(side.label, side.ruleset, _host(host, side), side.ipsets, side.backend, side.kind,
                    side.rules_text, list(side.warnings))  # fmt: skip
    return Loaded(side)


def _host(host: HostContext | str | Path, side: Side) -> HostContext:
    if isinstance(host, HostContext):
        return host
    if str(host) == "synthetic":
        from nftrace.diff.hosts import synthetic_host

        return synthetic_host([side.ruleset])
    other = load_side(host)
    return other.host


def _packet(packet: Packet) -> dict[str, Any]:
    if isinstance(packet, dict):
        return dict(packet)
    from nftrace.engine.packet import parse_flow

    return parse_flow(str(packet))


class TraceResult:
    """One traced packet: `.doc` is the nftrace.trace/1 JSON the CLI prints."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def __repr__(self) -> str:
        return f"<TraceResult {self.verdicts} {self.dispositions}>"

    def __str__(self) -> str:
        return self.rendered

    @property
    def rendered(self) -> str:
        """The trace as `nftrace explain` prints it."""
        from nftrace.present.text import render_trace

        return render_trace(self.doc)

    @property
    def branches(self) -> list[dict[str, Any]]:
        """Every branch (probability, conditions, steps, result), most probable first."""
        return list(self.doc["branches"])

    @property
    def verdicts(self) -> set[str]:
        return {b["result"]["verdict"] for b in self.doc["branches"]}

    @property
    def dispositions(self) -> set[str]:
        return {b["result"]["disposition"] for b in self.doc["branches"]}

    def _single(self, what: str, values: set[Any]) -> Any:
        if len(values) != 1:
            raise ValueError(
                f"the branches of this trace disagree on the {what} ({sorted(map(str, values))}): "
                f"look at .branches\n{self.rendered}"
            )
        return next(iter(values))

    @property
    def verdict(self) -> str:
        """ACCEPT, DROP or QUEUE; ValueError when branches disagree (use .verdicts)."""
        return str(self._single("verdict", self.verdicts))

    @property
    def disposition(self) -> str:
        """local, forwarded, output, dropped or unroutable; ValueError when branches disagree."""
        return str(self._single("disposition", self.dispositions))

    @property
    def final(self) -> dict[str, Any]:
        """The packet as it leaves (src, dst, sport, dport); ValueError when branches disagree."""
        finals = {_freeze(b["result"].get("packet") or {}) for b in self.doc["branches"]}
        return dict(self._single("final packet", finals))

    @property
    def chains_visited(self) -> list[str]:
        """ "table CHAIN" of every chain a matched rule or policy of any branch belongs to, in order."""
        out: list[str] = []
        for b in self.doc["branches"]:
            for s in b["steps"]:
                if s.get("kind") in ("rule", "policy", "return") and s.get("matched", True):
                    name = f"{s['table']} {s['chain']}"
                    if name not in out:
                        out.append(name)
                if s.get("kind") == "rule" and s.get("verdict") in ("JUMP", "GOTO") and s.get("target"):
                    name = f"{s['table']} {s['target']}"
                    if name not in out:
                        out.append(name)
        return out

    @property
    def uncertain(self) -> bool:
        """True when some branch depends on a match nftrace cannot decide offline."""
        return any(b.get("probability") is None for b in self.doc["branches"])


def _freeze(d: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()))


def trace(loaded: Loaded, packet: Packet) -> TraceResult:
    """Trace one packet (a flow string `'tcp 1.2.3.4:5 > 6.7.8.9:80 iif eth0'` or a batch-format dict)."""
    from nftrace.engine.packet import packet_from_dict

    pkt, origin = packet_from_dict(_packet(packet))
    return TraceResult(loaded.engine.trace(pkt, origin).to_json())


# ---------------------------------------------------------------- assertions


def _endpoint(addr: Any, port: Any) -> str:
    if port is None:
        return str(addr)
    return f"[{addr}]:{port}" if ":" in str(addr) else f"{addr}:{port}"


def _matches_endpoint(want: str, addr: Any, port: Any) -> bool:
    """'10.0.0.1' matches the address whatever the port; '10.0.0.1:80' both."""
    if want == str(addr):
        return True
    return want == _endpoint(addr, port)


def _chain_hits(b: dict[str, Any], pattern: str) -> bool:
    """Whether the branch went through a chain named like pattern ('KUBE-SVC-*' or 'nat KUBE-SERVICES')."""
    table, _, name = pattern.rpartition(" ")
    for s in b["steps"]:
        if s.get("kind") not in ("rule", "policy") or not s.get("matched", True):
            continue
        chains = [s.get("chain")]
        if s.get("verdict") in ("JUMP", "GOTO") and s.get("target"):
            chains.append(s["target"])
        for c in chains:
            if c and fnmatch.fnmatchcase(c, name) and (not table or s.get("table") == table):
                return True
    return False


def _want_set(value: str | Iterable[str] | None) -> set[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {value}
    return set(value)


def _branch_problems(
    b: dict[str, Any],
    verdict: str | None,
    disposition: str | None,
    via_chain: str | None,
    not_via_chain: str | None,
    dnat_to: set[str] | None,
    snat_to: set[str] | None,
    oif: str | None,
    dropped_at: str | None = None,
) -> list[str]:
    r = b["result"]
    pk = r.get("packet") or {}
    out: list[str] = []
    if verdict is not None and r["verdict"] != verdict:
        out.append(f"verdict {r['verdict']}, expected {verdict}")
    if disposition is not None and r["disposition"] != disposition:
        out.append(f"disposition {r['disposition']}, expected {disposition}")
    if via_chain is not None and not _chain_hits(b, via_chain):
        out.append(f"does not go through {via_chain}")
    if not_via_chain is not None and _chain_hits(b, not_via_chain):
        out.append(f"goes through {not_via_chain}")
    if dnat_to is not None and not any(_matches_endpoint(w, pk.get("dst"), pk.get("dport")) for w in dnat_to):
        out.append(f"leaves for {_endpoint(pk.get('dst'), pk.get('dport'))}, expected {' or '.join(sorted(dnat_to))}")
    if snat_to is not None and not any(_matches_endpoint(w, pk.get("src"), pk.get("sport")) for w in snat_to):
        out.append(f"leaves from {_endpoint(pk.get('src'), pk.get('sport'))}, expected {' or '.join(sorted(snat_to))}")
    if oif is not None and r.get("oif") != oif:
        out.append(f"output interface {r.get('oif')}, expected {oif}")
    if dropped_at is not None:
        at = drop_point(r)
        if at != dropped_at:
            out.append(f"dropped at {at or 'nowhere (not dropped)'}, expected {dropped_at}")
    return out


def drop_point(result: dict[str, Any]) -> str | None:
    """Where a branch was dropped: 'table CHAIN N', 'table CHAIN policy', 'routing', or None."""
    if result.get("verdict") != "DROP":
        return None
    at = result.get("at") or {}
    if at.get("stage"):
        return str(at["stage"])
    if at.get("rule"):
        return f"{at.get('table')} {at.get('chain')} {at['rule']}"
    if at.get("chain"):
        return f"{at.get('table')} {at.get('chain')} policy"
    return None


def assert_path(
    loaded: Loaded,
    packet: Packet,
    verdict: str | None = None,
    disposition: str | None = None,
    via_chain: str | None = None,
    not_via_chain: str | None = None,
    dnat_to: str | Iterable[str] | None = None,
    snat_to: str | Iterable[str] | None = None,
    oif: str | None = None,
    all_branches: bool = True,
    dropped_at: str | None = None,
) -> TraceResult:
    """Assert where a packet goes; returns the trace.

    verdict: ACCEPT / DROP / QUEUE.  disposition: local / forwarded / output /
    dropped / unroutable.  via_chain / not_via_chain: a chain name, a glob
    (`KUBE-SEP-*`) or `table CHAIN`; a jump into the chain counts.  dnat_to /
    snat_to: the final destination / source, `ADDR` or `ADDR:PORT`, or a set
    of them (any may match).  oif: the output interface.  With all_branches
    (default) every branch must satisfy all given expectations; otherwise at
    least one must.  dropped_at: where a dropped packet dies, `table CHAIN N`,
    `table CHAIN policy` or `routing`.  On failure the AssertionError shows the
    rendered trace.
    """
    tr = trace(loaded, packet)
    dn, sn = _want_set(dnat_to), _want_set(snat_to)
    report: list[tuple[int, list[str]]] = []
    for k, b in enumerate(tr.doc["branches"], 1):
        report.append((k, _branch_problems(b, verdict, disposition, via_chain, not_via_chain, dn, sn, oif, dropped_at)))
    bad = [(k, p) for k, p in report if p]
    ok = not bad if all_branches else len(bad) < len(report)
    if not ok:
        n = len(report)
        lines = [f"packet {packet!r} on {loaded.source}:"]
        for k, problems in bad:
            lines.append(f"  branch {k}/{n}: " + "; ".join(problems))
        if not all_branches:
            lines.insert(1, "  no branch meets the expectations")
        raise AssertionError("\n".join(lines) + "\n\n" + tr.rendered)
    return tr


def _aligned(a: Loaded, b: Loaded) -> tuple[Loaded, Loaded]:
    """Give both sides the hosts `nftrace diff` would trace them on, so the traces shown agree with it."""
    ha, hb = a.side.host, b.side.host
    if a.side.has_host and b.side.has_host:
        return a, b
    if not a.side.has_host and not b.side.has_host:
        from nftrace.diff.hosts import synthetic_host

        ha = hb = synthetic_host([a.ruleset, b.ruleset])
    elif not a.side.has_host:
        ha = hb
    else:
        hb = ha
    return load(a, host=ha), load(b, host=hb)


def assert_same_behaviour(
    a: Loaded,
    b: Loaded,
    packets: Iterable[Packet] | str = "auto",
    *,
    path: bool = False,
    max_probes: int | None = None,
) -> dict[str, Any]:
    """Assert that two rulesets treat packets alike; returns the nftrace.diff/1 document.

    `packets`: flow strings or dicts, or "auto" to generate probe packets from
    both rulesets as `nftrace diff` does.  `path=True` also requires the same
    kernel-visible path.  The failure message lists the differing packets with
    both rendered traces (the first three in full).
    """
    from nftrace.diff import compare

    auto = isinstance(packets, str) and packets == "auto"
    given = None if auto else [_packet(p) for p in packets]
    a, b = _aligned(a, b)
    doc = compare(a.side, b.side, packets=given, auto=auto, path=path, max_probes=max_probes)
    diffs = doc["differences"]
    if diffs:
        from nftrace.diff.text import result_text
        from nftrace.present.text import flow_text

        lines = [
            f"{len(diffs)} of {doc['probes']['count']} packets are treated differently by {a.source} and {b.source}"
        ]
        for d in diffs[:20]:
            pk = d["packet"]
            lines.append(f"  {flow_text({'src': '?', **pk}, pk.get('origin'))}")
            lines.append(f"    A: {result_text(d['a'])}")
            lines.append(f"    B: {result_text(d['b'])}")
        for d in diffs[:3]:
            pk = d["packet"]
            lines.append("")
            lines.append(f"--- A ({a.source}):\n{trace(a, pk).rendered}")
            lines.append(f"--- B ({b.source}):\n{trace(b, pk).rendered}")
        raise AssertionError("\n".join(lines))
    return doc
