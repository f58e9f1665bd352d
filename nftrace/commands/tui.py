"""`nftrace tui`: step through a packet's trace like a debugger (textual)."""

from __future__ import annotations

import argparse
from typing import Any

from nftrace.cli import add_input_args, add_packet_args, load_inputs, packet_dict
from nftrace.errors import UsageError


def register(sub: Any) -> None:
    t = sub.add_parser(
        "tui",
        help="step through a packet's trace interactively (s step, n next, f finish, b back, c continue, ? help)",
    )
    add_input_args(t)
    add_packet_args(t)
    t.add_argument("--max-branches", type=int, default=256, help="bound on forks (chance/unknown matches)")


def make_tracer(args: argparse.Namespace) -> tuple[Any, Any]:
    """(ruleset, tracer): tracer maps a packet dict (batch-line shape) to a trace JSON with every rule evaluated."""
    from nftrace.engine.packet import packet_from_dict
    from nftrace.engine.pipeline import Engine
    from nftrace.engine.walker import WalkOptions

    rs, host, ipsets = load_inputs(args)
    engine = Engine(rs, host, ipsets, backend=args.backend,
                    options=WalkOptions(all_rules=True, max_branches=args.max_branches))  # fmt: skip

    annotate = _kube_annotator(rs, host, ipsets)

    def tracer(d: dict[str, Any]) -> dict[str, Any]:
        pkt, origin = packet_from_dict(d)
        doc: dict[str, Any] = engine.trace(pkt, origin).to_json()
        annotate(doc)
        return doc

    return engine.ruleset, tracer  # the engine's: with the legacy backend it adds x_tables' built-in chains


def _kube_annotator(rs: Any, host: Any, ipsets: Any) -> Any:
    """Names of kube-proxy/Docker hops (service, endpoint) added to each trace, as `explain` does."""
    try:
        from nftrace.kube.annotate import annotate
        from nftrace.kube.catalog import build_catalog
    except ImportError:  # the kube package is optional for the debugger
        return lambda doc: None
    catalog = build_catalog(rs, host, ipsets)
    return lambda doc: annotate(doc, catalog)


def run(args: argparse.Namespace) -> int:
    import sys

    rs, tracer = make_tracer(args)
    d = packet_dict(args)
    doc = tracer(d)  # bad input fails here, as one line, before the screen is taken over
    if not sys.stdout.isatty() or not sys.stdin.isatty():
        raise UsageError("nftrace tui needs a terminal (for a text trace use: nftrace explain --all-rules)")
    try:
        from nftrace.tui.app import TraceApp
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "textual":
            raise UsageError("nftrace tui needs textual: pip install 'nftrace[tui]'") from None
        raise
    TraceApp(rs, tracer, d, doc).run()
    return 0
