"""`nftrace explain`: trace one packet (or a batch) and present it as text or JSON."""

from __future__ import annotations

import argparse
import gc
import json
import sys
from typing import Any

from nftrace.cli import _color, _read, add_input_args, add_packet_args, check_oif, load_inputs, packet_dict
from nftrace.errors import InputError, NftraceError, UsageError


def register(sub: Any) -> None:
    e = sub.add_parser("explain", help="trace one packet (or a batch) through the rules")
    add_input_args(e)
    add_packet_args(e)
    e.add_argument("--format", "-f", choices=("text", "json"), default="text")
    e.add_argument("--all-rules", action="store_true", help="also show rules that did not match, and why")
    e.add_argument("--batch", metavar="FILE", help="one JSON packet per line; one trace JSON per line out")
    e.add_argument(
        "--max-branches", type=_at_least_one, default=256, help="bound on forks (chance/unknown matches), at least 1"
    )
    e.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    k = e.add_argument_group("Kubernetes and Docker (the packet is built from the service catalogue)")
    k.add_argument("--to-service", metavar="NS/NAME:PORT", help="a connection to this Service's ClusterIP and port")
    k.add_argument("--from-pod", metavar="IP", help="with --to-service: sent by the pod with this address")
    k.add_argument("--node-port", type=int, metavar="N", help="a connection to node port N of this node")
    k.add_argument("--external-ip", metavar="IP", help="a connection to a Service's external or load-balancer IP")


def _at_least_one(text: str) -> int:
    """--max-branches N: a whole number, at least 1 (argparse names the flag in the error)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def _service_flow(args: argparse.Namespace, catalog: Any, host: Any) -> Any:
    """The packet --to-service/--node-port/--external-ip ask for (None when none was given)."""
    kube = (args.to_service, args.node_port, args.external_ip)
    if all(x is None for x in kube):
        if args.from_pod is not None:
            raise UsageError("--from-pod goes with --to-service")
        return None
    if args.flow or args.batch:
        raise UsageError("--to-service/--node-port/--external-ip build the packet: give no flow string or --batch")
    from nftrace.kube.flows import service_packet

    if args.local and args.iif:
        raise UsageError("--local and --iif exclude each other")
    return service_packet(
        catalog,
        host,
        to_service=args.to_service,
        from_pod=args.from_pod,
        node_port=args.node_port,
        external_ip=args.external_ip,
        src=args.src,
        sport=args.sport,
        dst=args.dst,
        iif=args.iif,
        proto=args.proto,
        local=args.local,
    )


def _kube(doc: dict[str, Any], catalog: Any, host: Any) -> None:
    """Name the kube-proxy/Docker hops of a trace and add the findings (extensions of nftrace.trace/1)."""
    from nftrace.kube.annotate import annotate
    from nftrace.kube.findings import findings

    if "branches" not in doc:
        return
    annotate(doc, catalog)
    doc["findings"] = findings(doc, catalog, host)


def _batch(args: argparse.Namespace, src: str, engine: Any, catalog: Any, host: Any) -> None:
    """One trace JSON per line of `src` (one error object per bad line), to stdout."""
    from nftrace.engine.packet import packet_from_dict
    from nftrace.engine.pipeline import SCHEMA

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
            check_oif(pkt, origin, host)
            doc = engine.trace(pkt, origin).to_json()
            _kube(doc, catalog, host)
        except NftraceError as e:
            if e.file is None:  # the engine's errors (an unknown interface ...) name the batch line too
                e.file, e.line = args.batch, n
            doc = {"schema": SCHEMA, "error": e.one_line().removeprefix("nftrace: "), "line": n}
        out.write(json.dumps(doc) + "\n")


def run(args: argparse.Namespace) -> int:

    rs, host, ipsets = load_inputs(args)
    # the parsed rules live until the end: keep the collector from walking their millions of objects
    # again at every full collection the catalogue's and the traces' own garbage sets off
    gc.freeze()
    try:
        return _run(args, rs, host, ipsets)
    finally:
        gc.unfreeze()


def _run(args: argparse.Namespace, rs: Any, host: Any, ipsets: Any) -> int:
    from nftrace.engine.packet import packet_from_dict
    from nftrace.engine.pipeline import Engine
    from nftrace.engine.walker import WalkOptions
    from nftrace.kube.catalog import build_catalog

    catalog = build_catalog(rs, host, ipsets)
    if catalog.mode == "ipvs":
        from nftrace.kube.flows import add_ipvs_addresses

        add_ipvs_addresses(host, catalog)
    engine = Engine(rs, host, ipsets, backend=args.backend,
                    options=WalkOptions(all_rules=args.all_rules, max_branches=args.max_branches))  # fmt: skip
    flow = _service_flow(args, catalog, host)
    if args.batch:
        src = _read(args.batch, "batch file")
        gc.freeze()  # and the catalogue's
        _batch(args, src, engine, catalog, host)
        return 0
    d = flow.packet if flow is not None else packet_dict(args)
    pkt, origin = packet_from_dict(d)
    check_oif(pkt, origin, host)
    tr = engine.trace(pkt, origin)
    doc = tr.to_json()
    _kube(doc, catalog, host)
    if flow is not None:
        doc["service_flow"] = flow.to_json()
    if args.format == "json":
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        from nftrace.kube.present import render_kube_extras
        from nftrace.present.text import render_trace

        color = _color(args, sys.stdout)
        text = render_trace(doc, color=color)
        extras = render_kube_extras(doc, color=color)
        if extras:
            text += "\n\n" + extras
        sys.stdout.write(text + "\n")
    return 0
