"""The snapshot bundle (Contract 2, schema `nftrace.snapshot/1`): load, save, and turn into
the ruleset, host context and ipsets the engine traces against.

A snapshot is self-contained: explaining it consults nothing of the machine that explains
it (no `ip`, no `iptables`, no /proc), so a snapshot taken on a node and explained on a
laptop gives the node's answer.

Document fields (those of DESIGN.md's Contract 2, then additions):

* `schema`, `taken_at`, `hostname`, `kernel`;
* `iptables`: `backend` (`nft` | `legacy`: the backend whose IPv4 rules are traced), `ipv4`,
  `ipv6` (the traced `iptables-save` / `ip6tables-save` text, null when unread); added:
  `backends` (`{"ipv4": ..., "ipv6": ...}`: the traced backend per family: legacy when only
  the legacy tables hold rules), `nft` and `legacy` (`{"ipv4", "ipv6"}`: each backend's own
  text, null when it has no tables) and `notes` (the save tools' own warnings per family);
* `ipsets`: `ipset save` text (null when unread: -m set is then evaluated as unknown);
* `links`, `routes`, `rules`, `sysctls`: the host context (fields of nftrace.host.model's
  Link, Route, IpRule);
* added: `netns`, `modules` (what the kernel had: nf_conntrack, br_netfilter, ...),
  `nftables` (`tables`: every nftables table with its owner (`iptables-nft`, `native`,
  `iptables-nft-incompatible`), base chains and flagged rules; `ruleset`: the
  `nft -j list ruleset` objects of the tables iptables cannot show; `text`: their
  `nft list ruleset` text), `warnings` (the capture's warnings).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nftrace.errors import InputError
from nftrace.host.model import Family, HostContext, IpRule, Link, Route, table_name
from nftrace.ruleset.ipsets import IpSets
from nftrace.ruleset.model import Ruleset

__all__ = ["SCHEMA", "Snapshot", "load_snapshot", "save_snapshot"]

SCHEMA = "nftrace.snapshot/1"

# nftables families whose hooks see a packet of each IP family (bridge: bridged packets only;
# netdev: ingress/egress of a device, before/after everything else).
_NFT_FAMILIES: dict[str, tuple[str, ...]] = {
    "ipv4": ("ip", "inet", "netdev", "bridge"),
    "ipv6": ("ip6", "inet", "netdev", "bridge"),
}
_TABLE_FAMILY = {"ip": "ipv4", "ip6": "ipv6"}


@dataclass
class Snapshot:
    """A loaded snapshot document; `source` names it in errors and warnings."""

    doc: dict[str, Any]
    source: str = "<snapshot>"
    #: the host context as captured (host_context(family) adds the warnings as provenance)
    host: HostContext = field(default_factory=HostContext)
    _rulesets: dict[str, Ruleset] = field(default_factory=dict, repr=False)
    _ipsets: list[IpSets | None] = field(default_factory=list, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_doc(cls, doc: Any, source: str = "<snapshot>") -> Snapshot:
        """Validate a snapshot document (as json.load gives it) and build its host context."""
        if not isinstance(doc, dict):
            raise InputError("a snapshot is a JSON object", file=source)
        schema = doc.get("schema")
        if schema != SCHEMA:
            if isinstance(schema, str) and schema.startswith("nftrace.snapshot/"):
                raise InputError(f"snapshot schema {schema} is not supported (this nftrace reads {SCHEMA})", source)
            raise InputError(f"not an nftrace snapshot (schema is {schema!r}, expected {SCHEMA!r})", file=source)
        snap = cls(doc=doc, source=source)
        snap.host = snap._build_host()
        ipt = snap._iptables()
        if ipt.get("backend", "nft") not in ("nft", "legacy"):
            raise InputError(f"iptables.backend must be 'nft' or 'legacy', not {ipt.get('backend')!r}", source)
        for fam in ("ipv4", "ipv6"):
            v = ipt.get(fam)
            if v is not None and not isinstance(v, str):
                raise InputError(f"iptables.{fam} must be iptables-save text or null", file=source)
        if doc.get("ipsets") is not None and not isinstance(doc.get("ipsets"), str):
            raise InputError("ipsets must be `ipset save` text or null", file=source)
        return snap

    # ------------------------------------------------------------------ accessors
    @property
    def backend(self) -> str:
        """The backend whose IPv4 rules are traced (Contract 2's iptables.backend)."""
        return str(self._iptables().get("backend") or "nft")

    def backend_for(self, family: Family) -> str:
        """The backend whose rules of this family are traced (iptables.backends, else iptables.backend)."""
        per = self._iptables().get("backends")
        if isinstance(per, dict) and per.get(family) in ("nft", "legacy"):
            return str(per[family])
        return self.backend

    @property
    def hostname(self) -> str | None:
        h = self.doc.get("hostname")
        return str(h) if h is not None else None

    def _iptables(self) -> dict[str, Any]:
        ipt = self.doc.get("iptables")
        if ipt is None:
            return {}
        if not isinstance(ipt, dict):
            raise InputError("iptables must be an object {backend, ipv4, ipv6}", file=self.source)
        return ipt

    def rules_text(self, family: Family) -> str | None:
        v = self._iptables().get(family)
        return v if isinstance(v, str) else None

    @property
    def ruleset(self) -> Ruleset:
        """The IPv4 rules (iptables); see ruleset_for()."""
        return self.ruleset_for("ipv4")

    @property
    def ruleset_v6(self) -> Ruleset:
        """The IPv6 rules (ip6tables); see ruleset_for()."""
        return self.ruleset_for("ipv6")

    def ruleset_for(self, family: Family = "ipv4") -> Ruleset:
        """The traced backend's rules of one family (an empty ruleset when the host has none).

        Parsed once per family; callers must not change it (parse_rules the text for a copy)."""
        if family not in self._rulesets:
            self._rulesets[family] = self._parse(family)
        return self._rulesets[family]

    def _parse(self, family: Family) -> Ruleset:
        from nftrace.ruleset.parser import parse_rules

        text = self.rules_text(family)
        name = f"{self.source}[iptables.{family}]"
        rs = parse_rules(text or "", name, family=family)
        if self.backend_for(family) == "nft":
            self._drop_absent_base_chains(rs, family)
        return rs

    def _nft_tables(self) -> list[dict[str, Any]]:
        nft = self.doc.get("nftables")
        if not isinstance(nft, dict):
            return []
        tables = nft.get("tables")
        return [t for t in tables if isinstance(t, dict)] if isinstance(tables, list) else []

    def _drop_absent_base_chains(self, rs: Ruleset, family: Family) -> None:
        """iptables-nft-save prints every built-in chain of a table, but iptables-nft creates (and the
        kernel traverses) only those a rule or a policy needed: drop the ones nftables does not have."""
        nft_family = "ip" if family == "ipv4" else "ip6"
        info = {
            str(t.get("name")): t
            for t in self._nft_tables()
            if t.get("family") == nft_family and t.get("owner") == "iptables-nft"
        }
        for tname, table in rs.tables.items():
            t = info.get(tname)
            if t is None:
                continue
            present = {str(c.get("name")) for c in t.get("base_chains", []) if isinstance(c, dict)}
            for cname in [c for c, ch in table.chains.items() if ch.builtin]:
                ch = table.chains[cname]
                if cname not in present and not ch.rules and ch.policy == "ACCEPT":
                    del table.chains[cname]

    @property
    def ipsets(self) -> IpSets | None:
        """The host's ipsets (None when they were not captured: -m set is then unknown)."""
        from nftrace.ruleset.ipsets import parse_ipsets

        if not self._ipsets:
            text = self.doc.get("ipsets")
            self._ipsets.append(None if text is None else parse_ipsets(str(text), f"{self.source}[ipsets]"))
        return self._ipsets[0]

    def host_context(self, family: Family | None = None) -> HostContext:
        """A copy of the host context, its provenance carrying the snapshot's warnings for `family`."""
        ctx = dataclasses.replace(
            self.host,
            links=[
                dataclasses.replace(lk, addresses=list(lk.addresses), peers=dict(lk.peers)) for lk in self.host.links
            ],
            routes=[dataclasses.replace(r, nexthops=list(r.nexthops), flags=list(r.flags)) for r in self.host.routes],
            rules=[dataclasses.replace(r) for r in self.host.rules],
            sysctls=dict(self.host.sysctls),
            provenance=list(self.host.provenance),
        )
        for w in self.warnings_for(family):
            if w not in ctx.provenance:
                ctx.provenance.append(w)
        return ctx

    @property
    def warnings(self) -> list[str]:
        """Every warning of this snapshot, for packets of either family."""
        return self.warnings_for(None)

    def warnings_for(self, family: Family | None = None) -> list[str]:
        """Warnings every trace of this snapshot carries: the capture's, and every nftables rule or
        chain that judges packets of `family` but that iptables cannot show (so nftrace cannot trace)."""
        out: list[str] = []
        who = self.hostname or "the host"
        for w in self.doc.get("warnings") or []:
            out.append(f"snapshot of {who}: {w}")
        ipt = self._iptables()
        if family is not None and ipt.get(family) is None:
            tool = "iptables" if family == "ipv4" else "ip6tables"
            out.append(f"snapshot of {who}: no {tool} rules were captured for {family}: traced as if there were none")
        fams = _NFT_FAMILIES.get(family or "", ("ip", "ip6", "inet", "netdev", "bridge"))
        for t in self._nft_tables():
            tfam, tname, owner = str(t.get("family")), str(t.get("name")), str(t.get("owner"))
            if tfam not in fams:
                continue
            bases = [c for c in t.get("base_chains", []) if isinstance(c, dict)]
            nrules = int(t.get("rules") or 0)
            if owner == "native":
                if not bases or (nrules == 0 and all(str(c.get("policy", "accept")) == "accept" for c in bases)):
                    continue
                hooks = ", ".join(
                    f"{c.get('hook')} (chain {c.get('name')}, priority {c.get('prio')}, policy {c.get('policy', 'accept')})"
                    for c in bases
                )
                where = " for bridged packets" if tfam == "bridge" else ""
                out.append(
                    f"nftables table {tfam} {tname} is not an iptables table: its {nrules} rule(s) at {hooks} also "
                    f"judge this packet{where} and nftrace does not evaluate them"
                )
            elif owner == "iptables-nft-incompatible":
                out.append(
                    f"nftables table {tfam} {tname} holds rules iptables-nft-save cannot show ('table is incompatible'): "
                    f"its {nrules} rule(s) are not traced"
                )
            for fl in t.get("flagged") or []:
                if not isinstance(fl, dict):
                    continue
                pos = f" rule {fl.get('rule')}" if fl.get("rule") is not None else ""
                out.append(
                    f"{tfam} {tname} {fl.get('chain')}{pos}: {fl.get('why')}, which iptables-nft-save may not show "
                    "faithfully: the trace may be wrong where this rule matters"
                )
        return out

    # ------------------------------------------------------------------ host context
    def _build_host(self) -> HostContext:
        doc, src = self.doc, self.source
        ctx = HostContext(empty=False, hostname=self.hostname)
        links = doc.get("links") or []
        if not isinstance(links, list):
            raise InputError("links must be a list", file=src)
        for i, d in enumerate(links):
            ctx.links.append(_link(d, f"links[{i}]", src))
        routes = doc.get("routes") or []
        if not isinstance(routes, list):
            raise InputError("routes must be a list", file=src)
        for i, d in enumerate(routes):
            ctx.routes.append(_route(d, f"routes[{i}]", src))
        rules = doc.get("rules") or []
        if not isinstance(rules, list):
            raise InputError("rules must be a list", file=src)
        for i, d in enumerate(rules):
            ctx.rules.append(_iprule(d, f"rules[{i}]", src))
        sysctls = doc.get("sysctls") or {}
        if not isinstance(sysctls, dict):
            raise InputError("sysctls must be an object of strings", file=src)
        ctx.sysctls = {str(k): str(v) for k, v in sysctls.items()}
        if not ctx.links and not ctx.routes:
            ctx.empty = True
            ctx.provenance.append(f"{src}: the snapshot has no links or routes")
        return ctx

    # ------------------------------------------------------------------ output
    def to_json(self) -> dict[str, Any]:
        return self.doc


# --------------------------------------------------------------------------- field readers


def _obj(d: Any, where: str, src: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise InputError(f"{where} must be an object", file=src)
    return d


def _opt_str(d: dict[str, Any], key: str, where: str, src: str) -> str | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, str | int):
        raise InputError(f"{where}.{key} must be a string", file=src)
    return str(v)


def _int(d: dict[str, Any], key: str, where: str, src: str, default: int | None = 0) -> int | None:
    v = d.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        try:
            return int(str(v), 0)
        except ValueError:
            raise InputError(f"{where}.{key} must be an integer, not {v!r}", file=src) from None
    return v


def _cidr(v: str | None, where: str, src: str, iface: bool = False) -> str | None:
    if v is None or v == "default":
        return v
    try:
        if iface:
            ipaddress.ip_interface(v)
        else:
            ipaddress.ip_network(v, strict=False)
    except ValueError:
        raise InputError(f"{where}: bad {'address' if iface else 'prefix'} {v!r}", file=src) from None
    return v


def _addr(v: str | None, where: str, src: str) -> str | None:
    if v is None:
        return None
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        raise InputError(f"{where}: bad address {v!r}", file=src) from None


def _family(d: dict[str, Any], where: str, src: str) -> Family:
    f = d.get("family", "ipv4")
    if f not in ("ipv4", "ipv6"):
        raise InputError(f"{where}.family must be 'ipv4' or 'ipv6', not {f!r}", file=src)
    return "ipv4" if f == "ipv4" else "ipv6"


def _link(d: Any, where: str, src: str) -> Link:
    d = _obj(d, where, src)
    name = _opt_str(d, "name", where, src)
    if not name:
        raise InputError(f"{where} has no name", file=src)
    addrs = d.get("addresses") or []
    if not isinstance(addrs, list):
        raise InputError(f"{where}.addresses must be a list", file=src)
    peers = d.get("peers") or {}
    if not isinstance(peers, dict):
        raise InputError(f"{where}.peers must be an object", file=src)
    return Link(
        index=_int(d, "index", where, src) or 0,
        name=name,
        kind=_opt_str(d, "kind", where, src),
        master=_opt_str(d, "master", where, src),
        up=bool(d.get("up", True)),
        mac=_opt_str(d, "mac", where, src),
        addresses=[str(_cidr(str(a), f"{where}.addresses", src, iface=True)) for a in addrs],
        mtu=_int(d, "mtu", where, src, None),
        peers={str(k): str(v) for k, v in peers.items()},
    )


def _route(d: Any, where: str, src: str) -> Route:
    d = _obj(d, where, src)
    hops: list[tuple[str | None, str | None, int]] = []
    for j, h in enumerate(d.get("nexthops") or []):
        if not isinstance(h, list | tuple) or len(h) != 3:
            raise InputError(f"{where}.nexthops[{j}] must be [gateway, oif, weight]", file=src)
        hops.append((_addr(h[0], f"{where}.nexthops[{j}]", src), None if h[1] is None else str(h[1]), int(h[2] or 1)))
    flags = d.get("flags") or []
    table = d.get("table", "main")
    return Route(
        table=table_name(table if isinstance(table, int) else str(table)),
        type=str(d.get("type") or "unicast"),
        dst=str(_cidr(str(d.get("dst") or "default"), f"{where}.dst", src)),
        gateway=_addr(_opt_str(d, "gateway", where, src), f"{where}.gateway", src),
        oif=_opt_str(d, "oif", where, src),
        prefsrc=_addr(_opt_str(d, "prefsrc", where, src), f"{where}.prefsrc", src),
        metric=_int(d, "metric", where, src) or 0,
        scope=str(d.get("scope") or "universe"),
        family=_family(d, where, src),
        proto=_opt_str(d, "proto", where, src),
        tos=_int(d, "tos", where, src) or 0,
        nexthops=hops,
        nhid=_int(d, "nhid", where, src, None),
        flags=[str(f) for f in flags] if isinstance(flags, list) else [],
    )


def _pair(v: Any, where: str, src: str) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, list | tuple) and len(v) == 2:
        return (int(v[0]), int(v[1]))
    raise InputError(f"{where} must be [first, last]", file=src)


def _iprule(d: Any, where: str, src: str) -> IpRule:
    d = _obj(d, where, src)
    table = d.get("table")
    return IpRule(
        priority=_int(d, "priority", where, src) or 0,
        table=None if table is None else table_name(table if isinstance(table, int) else str(table)),
        family=_family(d, where, src),
        action=str(d.get("action") or "lookup"),
        src=_cidr(_opt_str(d, "src", where, src), f"{where}.src", src),
        dst=_cidr(_opt_str(d, "dst", where, src), f"{where}.dst", src),
        iif=_opt_str(d, "iif", where, src),
        oif=_opt_str(d, "oif", where, src),
        fwmark=_int(d, "fwmark", where, src, None),
        fwmask=_int(d, "fwmask", where, src, None),
        invert=bool(d.get("invert", False)),
        goto=_int(d, "goto", where, src, None),
        suppress_prefixlength=_int(d, "suppress_prefixlength", where, src, None),
        suppress_ifgroup=_int(d, "suppress_ifgroup", where, src, None),
        tos=_int(d, "tos", where, src) or 0,
        ipproto=_opt_str(d, "ipproto", where, src),
        sport=_pair(d.get("sport"), f"{where}.sport", src),
        dport=_pair(d.get("dport"), f"{where}.dport", src),
        uidrange=_pair(d.get("uidrange"), f"{where}.uidrange", src),
        l3mdev=bool(d.get("l3mdev", False)),
    )


# --------------------------------------------------------------------------- files


def load_snapshot(path: str) -> Snapshot:
    """Read and validate a snapshot file ('-' for stdin)."""
    name = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            text = Path(path).read_text(encoding="utf-8")
    except IsADirectoryError:
        raise InputError("the snapshot is a directory, not a file", file=name) from None
    except UnicodeDecodeError:
        raise InputError("the snapshot is not UTF-8 text (expected nftrace snapshot JSON)", file=name) from None
    except OSError as e:
        raise InputError(f"cannot read the snapshot: {e.strerror}", file=name) from None
    stripped = text.lstrip()
    if not stripped:
        raise InputError("the snapshot file is empty", file=name)
    if not stripped.startswith("{"):
        first = stripped.splitlines()[0][:40]
        hint = " (an iptables-save dump? use --rules)" if first.startswith(("*", "#", ":")) else ""
        raise InputError(f"not a snapshot: expected JSON, found {first!r}{hint}", file=name)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"bad JSON: {e.msg}", file=name, line=e.lineno) from None
    return Snapshot.from_doc(doc, name)


def save_snapshot(doc: dict[str, Any], path: str) -> None:
    """Write a snapshot document to path (mode 0600, replaced atomically) or to stdout for '-'."""
    text = json.dumps(doc, indent=1) + "\n"  # ASCII: undecodable bytes of a dump survive as escapes
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise InputError(f"cannot write the snapshot: {e.strerror}", file=path) from None
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
        os.replace(tmp, target)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise InputError(f"cannot write the snapshot: {e.strerror}", file=path) from None
