"""`nftrace explain`: trace one packet (or a batch) and present it as text or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nftrace.cli import _color, _read, add_input_args, add_packet_args, load_inputs, packet_dict
from nftrace.errors import InputError, NftraceError


def register(sub: Any) -> None:
    e = sub.add_parser("explain", help="trace one packet (or a batch) through the rules")
    add_input_args(e)
    add_packet_args(e)
    e.add_argument("--format", "-f", choices=("text", "json"), default="text")
    e.add_argument("--all-rules", action="store_true", help="also show rules that did not match, and why")
    e.add_argument("--batch", metavar="FILE", help="one JSON packet per line; one trace JSON per line out")
    e.add_argument("--max-branches", type=int, default=256, help="bound on forks (chance/unknown matches)")
    e.add_argument("--color", choices=("auto", "always", "never"), default="auto")


def run(args: argparse.Namespace) -> int:
    from nftrace.engine.packet import packet_from_dict
    from nftrace.engine.pipeline import SCHEMA, Engine
    from nftrace.engine.walker import WalkOptions

    rs, host, ipsets = load_inputs(args)
    engine = Engine(rs, host, ipsets, backend=args.backend,
                    options=WalkOptions(all_rules=args.all_rules, max_branches=args.max_branches))  # fmt: skip
    if args.batch:
        src = _read(args.batch, "batch file")
        out = sys.stdout
        for n, line in enumerate(src.splitlines(), 1):
            if not line.strip():
                continue
            try:
                try:
                    d = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"not JSON: {e.msg}", file=args.batch, line=n) from None
                if not isinstance(d, dict):
                    raise InputError("each line must be a JSON object", file=args.batch, line=n)
                pkt, origin = packet_from_dict(d, file=args.batch)
                doc = engine.trace(pkt, origin).to_json()
            except NftraceError as e:
                doc = {"schema": SCHEMA, "error": e.one_line().removeprefix("nftrace: "), "line": n}
            out.write(json.dumps(doc) + "\n")
        return 0
    d = packet_dict(args)
    pkt, origin = packet_from_dict(d)
    tr = engine.trace(pkt, origin)
    doc = tr.to_json()
    if args.format == "json":
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        from nftrace.present.text import render_trace

        sys.stdout.write(render_trace(doc, color=_color(args, sys.stdout)) + "\n")
    return 0
