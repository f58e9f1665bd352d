"""The live host's rules and context, read for the offline prediction.

`snapshot_host` is the only entry point: when nftrace/host/capture.py (the
`nftrace snapshot` capture) is available, this is the one place to switch to it.
Until then: `iptables-save` of the chosen backend, `ipset save` when the rules use
sets, `ip -j addr`, `ip -j route show table all`, `ip -j rule` (parsed by the same
parsers as pasted files) and the sysctls the engine reads, all taken inside the
target namespace.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nftrace.errors import NftraceError
from nftrace.host.model import HostContext
from nftrace.live.system import LiveError, Target, have
from nftrace.ruleset.ipsets import IpSets
from nftrace.ruleset.model import Ruleset

BACKENDS = ("nft", "legacy")

_GLOBAL_SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv4.ip_nonlocal_bind",
    "net.ipv4.fwmark_reflect",
    "net.netfilter.nf_conntrack_checksum",
    "net.netfilter.nf_conntrack_tcp_be_liberal",
    "net.netfilter.nf_conntrack_tcp_loose",
    "net.bridge.bridge-nf-call-iptables",
)
_CONF_SYSCTLS = ("forwarding", "rp_filter", "route_localnet", "accept_local", "src_valid_mark", "accept_source_route")


def iptables_tool(backend: str, what: str = "") -> str:
    """iptables-nft, iptables-legacy-save, ... for a backend ('' / '-save' / '-restore')."""
    if backend not in BACKENDS:
        raise LiveError(f"unknown iptables backend {backend!r}")
    return f"iptables-{backend}{what}"


def detect_backend(target: Target) -> str:
    """The backend of the host's `iptables` command, as `iptables -V` reports it."""
    if not have("iptables"):
        for b in BACKENDS:
            if have(iptables_tool(b)):
                return b
        raise LiveError("no iptables command found (install iptables)")
    out = target.output(["iptables", "-V"])
    return "legacy" if "legacy" in out else "nft"


@dataclass
class HostSnapshot:
    backend: str
    rules_text: str
    ruleset: Ruleset
    host: HostContext
    ipsets: IpSets | None = None
    warnings: list[str] = field(default_factory=list)


def snapshot_host(target: Target, backend: str) -> HostSnapshot:
    """Rules, ipsets and host context of the target namespace, as the engine needs them.

    Uses the snapshot capture (nftrace.host.capture, Contract 2) when it is there; otherwise
    (or with NFTRACE_LIVE_SNAPSHOT=own) reads the same facts with iptables-save and `ip -j`."""
    capture = _capture_function()
    if capture is not None:
        return _from_capture(capture, target, backend)
    return _read_directly(target, backend)


def _capture_function() -> Callable[[str | None], dict[str, Any]] | None:
    if os.environ.get("NFTRACE_LIVE_SNAPSHOT") == "own":
        return None
    import importlib.util

    if importlib.util.find_spec("pyroute2") is None:  # the capture reads links and routes through it
        return None
    try:
        from nftrace.host.capture import capture
        from nftrace.host.snapshot import Snapshot  # noqa: F401
    except ImportError:
        return None
    return capture


def _from_capture(capture: Callable[[str | None], dict[str, Any]], target: Target, backend: str) -> HostSnapshot:
    from nftrace.host.snapshot import Snapshot

    try:
        doc = capture(target.netns)
    except NftraceError as e:
        raise LiveError(f"cannot read the host: {e.one_line().removeprefix('nftrace: ')}") from None
    ipt = dict(doc.get("iptables") or {})
    warnings: list[str] = []
    if ipt.get("backend") != backend:  # the backend asked for wins over the capture's choice
        own = ipt.get(backend) or {}
        ipt.update(backend=backend, ipv4=own.get("ipv4"), ipv6=own.get("ipv6"))
        doc = {**doc, "iptables": ipt}
    other = "legacy" if backend == "nft" else "nft"
    if re.search(r"^-A ", (ipt.get(other) or {}).get("ipv4") or "", re.M):
        warnings.append(
            f"the {other} iptables backend also has rules in this namespace: the prediction and the "
            f"probes use {backend} only"
        )
    label = "<host>" if target.netns is None else f"<netns {target.netns}>"
    try:
        snap = Snapshot.from_doc(doc, label)
        rs = snap.ruleset_for("ipv4")
        host = snap.host_context("ipv4")
        ipsets = snap.ipsets
    except NftraceError as e:
        raise LiveError(f"cannot read the host: {e.one_line().removeprefix('nftrace: ')}") from None
    return HostSnapshot(backend, ipt.get("ipv4") or "", rs, host, ipsets, warnings)


def _read_directly(target: Target, backend: str) -> HostSnapshot:
    from nftrace.ruleset.parser import parse_rules

    save = iptables_tool(backend, "-save")
    if not have(save):
        raise LiveError(f"{save} not found: install iptables (or choose --backend)")
    text = target.output([save])
    warnings: list[str] = []
    try:
        rs = parse_rules(text, f"<{save}>")
    except NftraceError as e:
        raise LiveError(f"cannot read the live rules: {e.one_line().removeprefix('nftrace: ')}") from None
    if backend == "nft":
        _drop_absent_base_chains(target, rs, warnings)
    ipsets = None
    if re.search(r"\s-m set\s", text):
        ipsets = _ipsets(target, warnings)
    host = read_host_context(target)
    other = other_backend_rules(target, backend)
    if other:
        warnings.append(
            f"the {other} iptables backend also has rules in this namespace: the prediction and the "
            f"probes use {backend} only"
        )
    return HostSnapshot(backend=backend, rules_text=text, ruleset=rs, host=host, ipsets=ipsets, warnings=warnings)


def _drop_absent_base_chains(target: Target, rs: Ruleset, warnings: list[str]) -> None:
    """iptables-nft-save prints every built-in chain of a table, but only those a rule or policy needed
    exist in nf_tables (and are traversed).  Inserting a probe into an absent one would create it, and
    it would stay: such chains are dropped, so neither the prediction nor the probes use them."""
    present: set[tuple[str, str]] | None = None
    if have("nft"):
        p = target.run(["nft", "-j", "list", "chains", "ip"])
        if p.returncode == 0:
            try:
                data = json.loads(p.stdout)
                present = {
                    (c["chain"]["table"], c["chain"]["name"])
                    for c in data.get("nftables", [])
                    if "chain" in c and c["chain"].get("hook")
                }
            except (json.JSONDecodeError, KeyError, TypeError):
                present = None
    if present is None:
        warnings.append("cannot list the nf_tables base chains (no `nft`): empty built-in chains are not probed")
    for tname, table in rs.tables.items():
        for cname in [c for c, ch in table.chains.items() if ch.builtin]:
            ch = table.chains[cname]
            if ch.rules or (ch.policy or "ACCEPT") != "ACCEPT":
                continue
            if present is None or (tname, cname) not in present:
                del table.chains[cname]


def _ipsets(target: Target, warnings: list[str]) -> IpSets | None:
    from nftrace.ruleset.ipsets import parse_ipsets

    if not have("ipset"):
        warnings.append("the rules use -m set but `ipset` is not installed: set matches are unknown")
        return None
    p = target.run(["ipset", "save"])
    if p.returncode != 0:
        warnings.append(f"ipset save failed: {p.stderr.strip()}: set matches are unknown")
        return None
    return parse_ipsets(p.stdout, "<ipset save>")


def read_host_context(target: Target) -> HostContext:
    from nftrace.host.parse import parse_addrs, parse_ip_rules, parse_routes

    try:
        links = parse_addrs(target.output(["ip", "-j", "addr", "show"]), "<ip -j addr>")
        routes = parse_routes(target.output(["ip", "-j", "route", "show", "table", "all"]), "<ip -j route>")
        rules = parse_ip_rules(target.output(["ip", "-j", "rule", "show"]), "<ip -j rule>")
    except NftraceError as e:
        if isinstance(e, LiveError):
            raise
        raise LiveError(f"cannot read the host context: {e.one_line().removeprefix('nftrace: ')}") from None
    names = [link.name for link in links]
    sysctls = target.call(lambda: _read_sysctls(names))
    return HostContext(links=links, routes=routes, rules=rules, sysctls=sysctls, empty=False)


def _read_sysctls(links: list[str]) -> dict[str, str]:
    """The sysctls the engine consults, read from /proc/sys in the calling thread's namespace."""
    out: dict[str, str] = {}

    def get(key: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, encoding="utf-8") as f:
                out[key] = f.read().strip()
        except OSError:
            pass

    for key in _GLOBAL_SYSCTLS:
        get(key)
    for dev in ("all", "default", *links):
        if "." in dev or "/" in dev:
            continue  # a VLAN device eth0.100 is conf/eth0.100: not expressible as a dotted key here
        for name in _CONF_SYSCTLS:
            get(f"net.ipv4.conf.{dev}.{name}")
    return out


def other_backend_rules(target: Target, backend: str) -> str | None:
    """The other backend's name when it holds rules in the target namespace (read-only checks)."""
    if backend == "nft":
        names = target.read_proc("/proc/thread-self/net/ip_tables_names")
        if names and have("iptables-legacy-save"):
            text = target.run(["iptables-legacy-save"]).stdout
            if re.search(r"^-A ", text, re.M):
                return "legacy"
        return None
    if have("iptables-nft-save"):
        text = target.run(["iptables-nft-save"]).stdout
        if re.search(r"^-A ", text, re.M):
            return "nft"
    return None
