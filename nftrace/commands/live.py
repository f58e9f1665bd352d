"""`nftrace live`: confirm a predicted path on this host with temporary probes; `--cleanup`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from nftrace.cli import _color, add_packet_args, packet_dict
from nftrace.errors import UsageError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "live",
        help="confirm the predicted path on this host with temporary LOG/NFLOG/TRACE probes",
        description=(
            "Predict the flow's path from this host's current rules, insert one rate-limited LOG rule per "
            "chain on it (position 1, tagged nftrace:<run>), send the packet (--inject) or wait for it, read "
            "the kernel's log lines and compare.  Every rule is removed on exit, on errors and on "
            "SIGINT/SIGTERM/SIGHUP; after a SIGKILL, `nftrace live --cleanup` removes what is left.  "
            "Exit status: 0 confirmed, 3 the kernel contradicts the prediction, 4 inconclusive, 2 refused or "
            "bad usage, 1 internal error or a rule that could not be removed."
        ),
    )
    add_packet_args(p)
    g = p.add_argument_group("live")
    g.add_argument("--inject", action="store_true", help="send the packet (else wait for real traffic)")
    g.add_argument("--from-netns", metavar="NAME", help="with --inject: send an ingress packet from this namespace")
    g.add_argument(
        "--source",
        default="auto",
        metavar="SRC",
        help="auto (default), rsyslog[:PATH], journald, kmsg, nflog[:GROUP], trace",
    )
    g.add_argument("--timeout", type=float, metavar="S", help="seconds to wait (default 5 with --inject, else 30)")
    g.add_argument("--netns", metavar="NAME", help="the host is this named network namespace")
    g.add_argument("--backend", choices=("auto", "nft", "legacy"), default="auto", help="iptables backend")
    g.add_argument("--rules", metavar="FILE", help="predict from this iptables-save dump instead of the live rules")
    g.add_argument("--dry-run", action="store_true", help="print the exact commands, change nothing")
    g.add_argument("--cleanup", action="store_true", help="remove what killed runs left behind")
    g.add_argument("--format", "-f", choices=("text", "json"), default="text")
    g.add_argument("--color", choices=("auto", "always", "never"), default="auto")


def run(args: argparse.Namespace) -> int:
    from nftrace.live.system import LiveError

    if os.geteuid() != 0:
        raise LiveError("live mode reads and changes the host's rules: it needs root (CAP_NET_ADMIN)")
    if args.cleanup:
        return _cleanup(args)
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    from nftrace.live.report import render_live
    from nftrace.live.session import LiveOptions, run_live

    progress = None
    if args.format != "json" and sys.stderr.isatty():

        def progress(msg: str) -> None:
            sys.stderr.write(f"... {msg}\n")
            sys.stderr.flush()

    opts = LiveOptions(
        packet=packet_dict(args),
        inject=args.inject,
        from_netns=args.from_netns,
        source=args.source,
        timeout=args.timeout,
        netns=args.netns,
        backend=args.backend,
        dry_run=args.dry_run,
        rules_file=args.rules,
        state_dir=Path(os.environ["NFTRACE_STATE_DIR"]) if os.environ.get("NFTRACE_STATE_DIR") else None,
        progress=progress,
    )
    res = run_live(opts)
    if args.format == "json":
        sys.stdout.write(json.dumps(res.doc, indent=2) + "\n")
    else:
        sys.stdout.write(render_live(res.doc, color=_color(args, sys.stdout)) + "\n")
    sys.stdout.flush()
    if res.signalled is not None:
        # every probe is gone: now end the way the signal asked, so the parent sees it
        sys.stderr.write(f"nftrace: interrupted by {signal.Signals(res.signalled).name}, probes removed\n")
        sys.stderr.flush()
        signal.signal(res.signalled, signal.SIG_DFL)
        os.kill(os.getpid(), res.signalled)
    return res.status


def _cleanup(args: argparse.Namespace) -> int:
    from nftrace.live.probes import cleanup
    from nftrace.live.report import render_cleanup

    if args.flow or args.dst or args.inject or args.dry_run:
        raise UsageError("--cleanup takes no packet and no other action (only --netns, --backend, --format)")
    blocked = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)  # a cleanup is not interrupted half-way
    try:
        backends = None if args.backend == "auto" else [args.backend]
        rep = cleanup(netns=args.netns, backends=backends)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    doc = {
        "schema": "nftrace.live-cleanup/1",
        "removed": rep.removed,
        "absent": rep.absent,
        "skipped": rep.skipped,
        "failed": rep.failed,
    }
    if args.format == "json":
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(render_cleanup(doc) + "\n")
    return 0 if rep.ok else 1
