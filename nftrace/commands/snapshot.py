"""`nftrace snapshot`: capture the live host (or a network namespace) into one JSON file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nftrace.errors import NftraceError, UsageError

if TYPE_CHECKING:
    from nftrace.host.model import Family


def register(sub: Any) -> None:
    p = sub.add_parser(
        "snapshot",
        help="capture this host's rules, routes, addresses and sysctls into one file (read-only)",
        description="Capture the rules (both iptables backends, IPv4 and IPv6), ipsets, native nftables "
        "tables, links, addresses, routes of every table, ip rules and path sysctls into one JSON "
        "file (schema nftrace.snapshot/1, mode 0600).  Reads only; needs root.  Explain it anywhere "
        "with `nftrace explain --snapshot FILE`.",
    )
    p.add_argument("--output", "-o", metavar="FILE", default="-", help="where to write it ('-': stdout, the default)")
    p.add_argument("--netns", metavar="NAME", help="snapshot this network namespace (`ip netns list`) instead")
    p.add_argument("--quiet", "-q", action="store_true", help="no summary or warnings on stderr")


def run(args: argparse.Namespace) -> int:
    from nftrace.host.capture import capture
    from nftrace.host.snapshot import Snapshot, save_snapshot

    doc = capture(args.netns)
    snap = Snapshot.from_doc(doc, "<host>" if args.netns is None else f"<netns {args.netns}>")
    save_snapshot(doc, args.output)
    if not args.quiet:
        err = sys.stderr
        ipt = doc["iptables"]
        counts = []
        for fam in ("ipv4", "ipv6"):
            text = ipt.get(fam) or ""
            counts.append(f"{sum(1 for ln in text.splitlines() if ln.startswith('-A '))} {fam} rules")
        where = f"netns {args.netns}" if args.netns else str(doc.get("hostname"))
        dest = "stdout" if args.output == "-" else args.output
        err.write(
            f"nftrace: snapshot of {where} ({ipt['backend']} backend): {', '.join(counts)}, "
            f"{len(doc['routes'])} routes, {len(doc['links'])} links -> {dest}\n"
        )
        for w in snap.warnings:
            err.write(f"nftrace: warning: {w}\n")
    return 0


# --------------------------------------------------------------------------- inputs of the other commands
# (used by nftrace.cli.add_input_args / load_inputs for --snapshot FILE and --host [--netns NAME])


class _DefaultBackend(str):
    """The --backend default: a snapshot's own backend wins over it, an explicit --backend does not."""

    __slots__ = ()


def default_backend() -> str:
    return _DefaultBackend("nft")


def _family_of(addr: Any) -> str | None:
    import ipaddress

    try:
        return "ipv4" if ipaddress.ip_address(str(addr).strip("[]")).version == 4 else "ipv6"
    except ValueError:
        return None


def packet_family(args: argparse.Namespace) -> str | None:
    """The address family of the packet(s) the command line gives, None when it gives none."""
    import json

    from nftrace.engine.packet import parse_flow

    flow = getattr(args, "flow", None)
    if flow:
        try:
            d = parse_flow(flow)
        except NftraceError:
            d = {}
        for key in ("dst", "src"):
            fam = _family_of(d.get(key)) if d.get(key) else None
            if fam:
                return fam
    for key in ("dst", "src"):
        v = getattr(args, key, None)
        if v:
            fam = _family_of(v)
            if fam:
                return fam
    batch = getattr(args, "batch", None)
    if not batch:
        return None
    if batch == "-":
        import io

        text = sys.stdin.read()
        sys.stdin = io.StringIO(text)  # the command reads the batch from stdin after us
    else:
        try:
            text = Path(batch).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None  # the command reports the unreadable file itself
    # the first packet with an address decides (as cli._batch_family does): each line of the other
    # family gets an error object of its own in the output (Contract 3)
    for line in text.splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if isinstance(d, dict):
            fam = _family_of(d.get("dst") or d.get("src") or "")
            if fam:
                return fam
    return None


def load_snapshot_inputs(args: argparse.Namespace, family: str | None) -> tuple[Any, Any, Any]:
    """(ruleset, host context, ipsets) of --snapshot FILE or --host [--netns NAME]."""
    from nftrace.host.parse import parse_sysctls
    from nftrace.host.snapshot import Snapshot, load_snapshot

    snap_path = getattr(args, "snapshot", None)
    netns = getattr(args, "netns", None)
    if snap_path and getattr(args, "host", False):
        raise UsageError("--snapshot and --host exclude each other")
    given = [
        flag
        for flag, v in (
            ("--rules", args.rules),
            ("--routes", args.routes),
            ("--addrs", args.addrs),
            ("--ip-rules", args.ip_rules),
            ("--ipsets", args.ipsets),
            ("--local-addr", args.local_addr),
        )
        if v
    ]
    if given:
        what = "--snapshot" if snap_path else "--host"
        raise UsageError(f"{what} brings the rules and the host context: drop {', '.join(given)}")
    if netns and not getattr(args, "host", False):
        raise UsageError("--netns goes with --host")
    if snap_path:
        snap = load_snapshot(snap_path)
    else:
        from nftrace.host.capture import capture

        snap = Snapshot.from_doc(capture(netns), "<host>" if netns is None else f"<netns {netns}>")
    if family is None:
        family = packet_family(args) or "ipv4"
    fam: Family = "ipv6" if family == "ipv6" else "ipv4"
    rs = snap.ruleset_for(fam)
    host = snap.host_context(fam)
    if args.sysctl:
        overrides = parse_sysctls(list(args.sysctl), "--sysctl")
        host.sysctls.update(overrides)
        host.provenance.append(
            "sysctls changed on the command line: " + ", ".join(f"{k}={v}" for k, v in overrides.items())
        )
    backend = snap.backend_for(fam)
    if isinstance(args.backend, _DefaultBackend):
        args.backend = backend
    elif args.backend != backend:
        host.provenance.append(f"--backend {args.backend}: the snapshotted host traces {fam} with {backend}")
    return rs, host, snap.ipsets
