"""`nftrace services`: the kube-proxy Service catalogue and Docker's published ports of a dump."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nftrace.cli import _color, add_input_args, load_inputs


def register(sub: Any) -> None:
    p = sub.add_parser(
        "services",
        help="kube-proxy Services (endpoints with exact probabilities) and Docker published ports of a dump",
    )
    add_input_args(p)
    p.add_argument("--format", "-f", choices=("text", "json"), default="text")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto")


def run(args: argparse.Namespace) -> int:
    from nftrace.kube.catalog import build_catalog

    rs, host, ipsets = load_inputs(args)
    doc = build_catalog(rs, host, ipsets).to_json()
    if args.format == "json":
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        from nftrace.kube.present import render_services

        sys.stdout.write(render_services(doc, color=_color(args, sys.stdout)) + "\n")
    return 0
