"""Loading one side of a comparison: a dump, a rulesets/ directory, a snapshot, or rule text.

A :class:`Side` carries everything a trace needs (ruleset, host context,
ipsets, backend) plus where it came from.  The same loader serves
`nftrace diff` and the public test helpers in `nftrace.testing`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nftrace.errors import InputError
from nftrace.host.model import HostContext
from nftrace.ruleset.ipsets import IpSets
from nftrace.ruleset.model import Ruleset


@dataclass
class Side:
    """One ruleset with the host around it."""

    label: str  # as the user named it (a path, or "<text>")
    ruleset: Ruleset
    host: HostContext
    ipsets: IpSets | None = None
    backend: str = "nft"
    kind: str = "dump"  # dump | directory | snapshot | text
    rules_text: str = ""  # the iptables-save text (empty for snapshots that do not keep it)
    warnings: list[str] = field(default_factory=list)

    @property
    def has_host(self) -> bool:
        return not self.host.empty

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.label,
            "kind": self.kind,
            "family": self.ruleset.family,
            "rules": self.ruleset.rule_count(),
            "host": "given" if self.has_host else "none",
        }


def looks_like_rules_text(value: str) -> bool:
    """True when `value` is iptables-save text rather than a path."""
    s = value.lstrip()
    return "\n" in value and (s.startswith("*") or s.startswith("#") or "\nCOMMIT" in value)


def load_side(source: str | Path, *, label: str | None = None, backend: str = "nft", family: str | None = None) -> Side:
    """A Side from a dump file, a rulesets/ directory, a snapshot file, '-' (stdin) or rule text.

    `family` (ipv4/ipv6) picks the rules of a snapshot or of a rulesets/ directory
    that has both; a dump's family is read from the dump."""
    if isinstance(source, str) and looks_like_rules_text(source):
        return _from_text(source, label or "<text>", backend, family)
    path = str(source)
    name = label or path
    p = Path(path)
    if path != "-" and not p.exists():
        raise InputError("no such file or directory", file=path)
    if path != "-" and p.is_file():
        head = _head(p)
        if head.lstrip().startswith("{"):
            return _from_snapshot(p, name, family)
    return _from_cli_inputs(path, name, backend, "directory" if p.is_dir() else "dump", family)


def _head(p: Path) -> str:
    try:
        with p.open("r", encoding="utf-8", errors="surrogateescape") as f:
            return f.read(4096)
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", file=str(p)) from None


def _from_text(text: str, label: str, backend: str, family: str | None) -> Side:
    from nftrace.host.parse import build_host_context
    from nftrace.ruleset.parser import parse_rules

    rs = parse_rules(text, label, family)
    if not rs.tables:
        raise InputError("no tables in the rules (expected '*filter' ... 'COMMIT')", file=label)
    return Side(label, rs, build_host_context(), None, backend, "text", text)


def _from_cli_inputs(path: str, label: str, backend: str, kind: str, family: str | None) -> Side:
    """Exactly what `nftrace explain --rules PATH` loads (host files of a rulesets/ directory included)."""
    import argparse

    from nftrace.cli import add_input_args, load_inputs

    parser = argparse.ArgumentParser(add_help=False)
    add_input_args(parser)
    args = parser.parse_args(["--rules", path, "--backend", backend])
    rs, host, ipsets = load_inputs(args, family)
    text = ""
    if kind == "dump" and path != "-" and Path(path).is_file():
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    elif kind == "directory":
        d = Path(path)
        names = ["ip6tables.rules", "rules.v6"] if rs.family == "ipv6" else []
        for c in [d / n for n in [*names, "iptables.rules", "rules.v4"]]:
            if c.is_file():
                text = c.read_text(encoding="utf-8", errors="surrogateescape")
                break
    return Side(label, rs, host, ipsets, backend, kind, text)


def _from_snapshot(p: Path, label: str, family: str | None) -> Side:
    """A snapshot (Contract 2), read by nftrace.host.snapshot."""
    try:
        from nftrace.host.snapshot import load_snapshot
    except ImportError:  # pragma: no cover - depends on the build
        raise InputError(
            "this is a snapshot, but this build of nftrace cannot read snapshots "
            "(nftrace.host.snapshot is missing): give the iptables-save dump instead",
            file=str(p),
        ) from None
    snap = load_snapshot(str(p))
    fam = "ipv6" if family == "ipv6" else "ipv4"
    rs = snap.ruleset_for(fam)  # type: ignore[arg-type]
    host = snap.host_context(fam)  # type: ignore[arg-type]
    side = Side(label, rs, host, snap.ipsets, snap.backend_for(fam), "snapshot", snap.rules_text(fam) or "")  # type: ignore[arg-type]
    return side
