"""`nftrace diff A B`: which packets two rule dumps treat differently, and where."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nftrace.errors import UsageError

EXIT_DIFFERENT = 3  # with --exit-code; 1 stays "internal error", 2 "bad input"


def register(sub: Any) -> None:
    d = sub.add_parser(
        "diff",
        help="compare two dumps: rules added/removed/moved, and packets treated differently",
        description=(
            "Compare two rule dumps (iptables-save files, rulesets/ directories or snapshots): "
            "the rules added, removed and moved (kube-proxy's hashed chains paired by service and "
            "endpoint), and the packets whose fate differs, each with the first step where the paths part. "
            "Without --packets, probe packets are generated from both rulesets (--auto)."
        ),
    )
    d.add_argument("a", metavar="A", help="dump, rulesets/ directory or snapshot (the 'before')")
    d.add_argument("b", metavar="B", help="dump, rulesets/ directory or snapshot (the 'after')")
    d.add_argument("--packets", metavar="FILE", help="packets to compare: flow strings or JSON objects, one per line")
    d.add_argument(
        "--auto", action="store_true", help="generate probe packets from both rulesets (default without --packets)"
    )
    d.add_argument("--structural-only", action="store_true", help="compare the rules only, trace no packets")
    d.add_argument("--path", action="store_true", help="also count a different kernel-visible path as a difference")
    d.add_argument("--max-probes", type=int, default=None, help="bound on generated probes (default 20000)")
    d.add_argument("--format", "-f", choices=("text", "json"), default="text")
    d.add_argument("--limit", type=int, default=10, help="text output: groups of differing packets shown")
    d.add_argument(
        "--exit-code",
        action="store_true",
        help=f"exit {EXIT_DIFFERENT} when the two behave differently (with --structural-only: when the rules differ)",
    )
    d.add_argument(
        "--family", choices=("ipv4", "ipv6"), help="which rules of a snapshot or rulesets/ directory (default ipv4)"
    )
    d.add_argument("--backend", choices=("nft", "legacy"), default="nft", help="iptables backend semantics")
    d.add_argument("--color", choices=("auto", "always", "never"), default="auto")


def run(args: argparse.Namespace) -> int:
    from nftrace.cli import _color
    from nftrace.diff import compare, load_side, read_packets
    from nftrace.diff.structural import structural_count

    if args.structural_only and (args.packets or args.auto):
        raise UsageError("--structural-only excludes --packets and --auto")
    if args.max_probes is not None and args.max_probes < 1:
        raise UsageError("--max-probes must be at least 1")
    a = load_side(args.a, backend=args.backend, family=args.family)
    b = load_side(args.b, backend=args.backend, family=args.family)
    packets = read_packets(args.packets) if args.packets else None
    auto = not args.structural_only and (args.auto or packets is None)
    show_progress = args.format == "text" and sys.stderr.isatty()
    if show_progress:
        doc = _with_progress(compare, a, b, packets, auto, args)
    else:
        doc = compare(a, b, packets=packets, auto=auto, path=args.path, max_probes=args.max_probes)
    if args.format == "json":
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        from nftrace.diff.text import render_diff

        sys.stdout.write(render_diff(doc, color=_color(args, sys.stdout), limit=args.limit) + "\n")
    if args.exit_code:
        differ = bool(doc["differences"]) if not args.structural_only else structural_count(doc["structural"]) > 0
        return EXIT_DIFFERENT if differ else 0
    return 0


def _with_progress(compare: Any, a: Any, b: Any, packets: Any, auto: bool, args: argparse.Namespace) -> Any:
    from rich.progress import Progress  # only on a terminal

    with Progress(transient=True, console=None) as prog:
        task = prog.add_task("tracing probe packets", total=None)

        def step(n: int, total: int) -> None:
            if n == 1 or n % 100 == 0 or n == total:
                prog.update(task, completed=n, total=total)

        return compare(a, b, packets=packets, auto=auto, path=args.path, max_probes=args.max_probes, progress=step)
