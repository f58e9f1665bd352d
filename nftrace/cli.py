"""`nftrace` command line.  Heavy modules (textual, scapy, pyroute2) are imported
only inside the commands that need them, so `nftrace explain` starts fast."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn, TextIO

from nftrace.errors import InputError, NftraceError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _read(path: str, what: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        # newline="": keep CR line ends, so the parser can say the kernel would refuse them
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            return f.read()
    except IsADirectoryError:
        raise InputError(f"{what} is a directory", file=path) from None
    except OSError as e:
        raise InputError(f"cannot read {what}: {e.strerror}", file=path) from None


def add_input_args(p: argparse.ArgumentParser) -> None:
    from nftrace.commands.snapshot import default_backend

    g = p.add_argument_group("rules and host")
    g.add_argument(
        "--rules", "-r", metavar="FILE|DIR|-", help="iptables-save dump ('-' for stdin), or a rulesets/ directory"
    )
    g.add_argument(
        "--snapshot", metavar="FILE", help="a snapshot (`nftrace snapshot -o FILE`): rules and host context in one file"
    )
    g.add_argument(
        "--host", action="store_true", help="this live host: take a snapshot in memory (read-only; needs root)"
    )
    g.add_argument("--netns", metavar="NAME", help="with --host: the network namespace NAME (`ip netns list`)")
    g.add_argument("--routes", metavar="FILE", help="`ip route show table all` output (text or ip -j JSON)")
    g.add_argument("--addrs", metavar="FILE", help="`ip addr` output (text or JSON)")
    g.add_argument("--ip-rules", metavar="FILE", help="`ip rule` output (text or JSON)")
    g.add_argument("--sysctl", metavar="KEY=VALUE", action="append", default=[], help="a sysctl (repeatable)")
    g.add_argument("--local-addr", metavar="ADDR", action="append", default=[], help="an address of this host")
    g.add_argument("--ipsets", metavar="FILE", help="`ipset save` output")
    g.add_argument(
        "--backend",
        choices=("nft", "legacy"),
        default=default_backend(),
        help="iptables backend semantics (default: nft, or the snapshot's)",
    )


def add_packet_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("packet")
    g.add_argument("flow", nargs="?", help="flow string: 'tcp 10.0.0.5:34567 > 10.96.0.10:80 iif eth0'")
    g.add_argument("--src", "-s")
    g.add_argument("--dst", "-d")
    g.add_argument("--proto", "-p")
    g.add_argument("--sport", type=int)
    g.add_argument("--dport", type=int)
    g.add_argument("--iif", "-i", help="input interface (the packet arrives on it)")
    g.add_argument("--local", action="store_true", help="sent by a local process (starts at OUTPUT)")
    g.add_argument("--oif", "-o", help="output interface a local socket is bound to")
    g.add_argument("--mark", help="packet mark on arrival")
    g.add_argument("--ct-state", help="NEW (default), ESTABLISHED, RELATED, INVALID, UNTRACKED")
    g.add_argument("--icmp-type", help="ICMP type name or TYPE[/CODE]")
    g.add_argument("--tcp-flags", help="e.g. SYN or ACK,PSH")
    g.add_argument("--uid", type=int, help="uid of the sending process (owner match)")
    g.add_argument("--gid", type=int)
    g.add_argument("--length", type=int, help="IP packet length (length match)")
    g.add_argument("--ttl", type=int)


COMMANDS = ("explain", "snapshot", "services", "diff", "live", "tui")


def build_parser() -> argparse.ArgumentParser:
    """Each command lives in nftrace/commands/<name>.py with register(sub) and run(args).

    Command modules import their heavy dependencies (textual, scapy, pyroute2)
    inside run(), so building the parser stays cheap."""
    import importlib

    p = _Parser(prog="nftrace", description="What does this host's netfilter do to this packet, and why?")
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"nftrace.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"nftrace.commands.{name}":
                continue
            raise
        mod.register(sub)
    return p


# ---------------------------------------------------------------- loading


def load_inputs(args: argparse.Namespace, family: str | None = None) -> tuple[Any, Any, Any]:
    """(ruleset, host context, ipsets) from the common flags.

    `family` (ipv4/ipv6) picks the dump of a snapshot (--snapshot/--host) or of a rulesets/
    directory; by default it is the family of the packet given on the command line (flow string,
    --dst/--src, or the lines of --batch), IPv4 when there is none."""
    import re

    from nftrace.commands.snapshot import load_snapshot_inputs, packet_family
    from nftrace.host.parse import build_host_context, check_sysctl_flags
    from nftrace.ruleset.ipsets import parse_ipsets
    from nftrace.ruleset.parser import parse_rules

    check_sysctl_flags(getattr(args, "sysctl", None) or [])
    if family is None and getattr(args, "batch", None):
        family = _batch_family(args)
    if getattr(args, "snapshot", None) or getattr(args, "host", False):
        return load_snapshot_inputs(args, family)
    if getattr(args, "netns", None):
        raise UsageError("--netns goes with --host (to snapshot a namespace to a file: nftrace snapshot --netns NAME)")
    rules_path = args.rules
    routes, addrs, iprules, ipsets_path = args.routes, args.addrs, args.ip_rules, args.ipsets
    sysctls = list(args.sysctl)
    sysctl_files: list[str] = []
    if rules_path is None:
        raise UsageError(
            "no rules given: use --rules FILE (an iptables-save dump, '-' for stdin, or a rulesets/ dir), "
            "--snapshot FILE or --host"
        )
    if family is None:
        family = packet_family(args)
    if rules_path != "-" and os.path.isdir(rules_path):
        d = Path(rules_path)
        cand = [d / "iptables.rules", d / "rules.v4"]
        if family == "ipv6":
            cand = [d / "ip6tables.rules", d / "rules.v6", *cand]
        found = next((c for c in cand if c.is_file()), None)
        if found is None:
            want = "ip6tables.rules, rules.v6, " if family == "ipv6" else ""
            raise InputError(
                f"directory has no iptables.rules (looked for {want}iptables.rules, rules.v4): "
                "give the iptables-save dump itself with --rules FILE",
                file=rules_path,
            )
        rules_path = str(found)
        routes = routes or _maybe(d / "routes.txt")
        addrs = addrs or _maybe(d / "addrs.txt")
        iprules = iprules or _maybe(d / "ip-rules.txt")
        ipsets_path = ipsets_path or _maybe(d / "ipsets.txt")
        sc = _maybe(d / "sysctl.txt")
        if sc:
            sysctl_files.append(sc)  # read before the --sysctl flags, which override it
    text = _read(rules_path, "rules")
    stripped = text.lstrip()
    if stripped.startswith("{"):
        hint = f": use --snapshot {rules_path}" if '"nftrace.snapshot/' in text[:4096] else " (a snapshot?)"
        raise InputError(f"this looks like a JSON file{hint}, not an iptables-save dump", file=rules_path)
    if not stripped:
        raise InputError(
            "the rules file is empty: give what iptables-save prints ('*filter' ... 'COMMIT')", file=rules_path
        )
    if "\x00" in text:
        raise InputError(
            "this is a binary file (it holds NUL bytes), not an iptables-save dump: "
            "give what iptables-save prints ('*filter' ... 'COMMIT')",
            file=rules_path,
        )
    name = "<stdin>" if rules_path == "-" else rules_path
    # strict=False: CRLF line ends and trailing blanks (a dump that went through a Windows
    # editor or a chat) are read, with a warning that iptables-restore would refuse them.
    rs = parse_rules(text, name, strict=False)
    if family == "ipv6" and rs.family == "ipv4" and not re.search(r"(?<![\w.:])\d{1,3}(?:\.\d{1,3}){3}(?![\w.])", text):
        # a dump without any address says nothing of its family: an IPv6 packet means ip6tables-save
        rs = parse_rules(text, name, family="ipv6", strict=False)
    if not rs.tables:
        raise InputError("no tables in the rules (expected '*filter' ... 'COMMIT')", file=name)
    host = build_host_context(
        routes_file=routes,
        addrs_file=addrs,
        rules_file=iprules,
        sysctls=sysctls,
        local_addrs=args.local_addr,
        sysctl_files=sysctl_files,
    )
    ipsets = parse_ipsets(_read(ipsets_path, "ipsets"), ipsets_path) if ipsets_path else None
    return rs, host, ipsets


def _maybe(p: Path) -> str | None:
    return str(p) if p.is_file() else None


def _batch_family(args: argparse.Namespace) -> str | None:
    """The family of a --batch: that of its first packet with an address (None when none has one, or
    when a flow string or --src/--dst on the command line decides).  Each line of the other family
    gets an error object of its own (Contract 3); the rest are traced."""
    import io
    import ipaddress
    import json

    if getattr(args, "flow", None) or getattr(args, "src", None) or getattr(args, "dst", None):
        return None

    def first(lines: Iterable[str]) -> str | None:
        for line in lines:
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if isinstance(d, dict):
                try:
                    addr = ipaddress.ip_address(str(d.get("dst") or d.get("src") or "").strip("[]"))
                except ValueError:
                    continue
                return "ipv4" if addr.version == 4 else "ipv6"
        return None

    if args.batch == "-":
        text = sys.stdin.read()
        sys.stdin = io.StringIO(text)  # the command reads the batch from stdin after us
        return first(text.splitlines())
    try:
        with open(args.batch, encoding="utf-8", errors="replace") as f:
            return first(f)  # reads up to the first packet with an address
    except OSError:
        return None  # the command reports the unreadable file itself


def packet_dict(args: argparse.Namespace) -> dict[str, Any]:
    from nftrace.engine.packet import parse_flow

    d: dict[str, Any] = {}
    if args.flow:
        d = parse_flow(args.flow)
    for key in ("src", "dst", "proto", "sport", "dport", "iif", "oif", "mark", "ct_state", "icmp_type",
                "tcp_flags", "uid", "gid", "length", "ttl"):  # fmt: skip
        v = getattr(args, key)
        if v is not None:
            d[key] = v
    if args.local:
        if d.get("iif"):
            raise UsageError(
                "--local and --iif exclude each other: a packet either arrives on an interface (--iif IF) "
                "or is sent by a local process (--local)"
            )
        d["origin"] = "local"
    elif d.get("iif"):
        d["origin"] = "ingress"
    if not d.get("dst"):
        raise UsageError("no packet given: a flow string ('tcp 1.2.3.4:5 > 6.7.8.9:80 iif eth0') or --dst/--proto ...")
    return d


def check_oif(pkt: Any, origin: str, host: Any) -> None:
    """InputError when a locally sent packet is bound (--oif) to an interface the host context does
    not have: the kernel refuses the bind itself (SO_BINDTODEVICE: ENODEV).  Without links (no host
    context, or --local-addr alone) any name passes."""
    if origin != "local" or not pkt.oif:
        return
    # the pseudo-link '*' of --local-addr holds addresses only: it says nothing of the interfaces
    real = [link.name for link in host.links if link.name != "*"]
    if real and pkt.oif not in real:
        raise InputError(
            f"unknown output interface {pkt.oif!r}: this host has {', '.join(real)}; "
            "give one of these with --oif (or 'oif NAME' in the flow string)"
        )


def _color(args: argparse.Namespace, stream: TextIO) -> bool:
    if args.color == "always":
        return True
    if args.color == "never" or os.environ.get("NO_COLOR"):
        return False
    return stream.isatty()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.cmd is None:
            parser.print_help()
            return 2
        import importlib

        mod = importlib.import_module(f"nftrace.commands.{args.cmd}")
        status: int = mod.run(args)
        return status
    except NftraceError as e:
        sys.stderr.write(e.one_line() + "\n")
        return e.exit_status
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # an internal failure is a bug: say so, exit 1
        if os.environ.get("NFTRACE_DEBUG"):
            raise
        sys.stderr.write(f"nftrace: internal error (a bug, please report): {type(e).__name__}: {e}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
