"""Capture a live host (or one of its network namespaces) into a snapshot document.

`capture(netns=None)` returns the JSON-ready dict of Contract 2 (`nftrace.snapshot/1`,
see nftrace/host/snapshot.py for its fields).  It only reads:

* the iptables rules with the save tools: `iptables-nft-save` / `ip6tables-nft-save`,
  and `iptables-legacy-save` / `ip6tables-legacy-save` only when
  `/proc/net/ip_tables_names` (`ip6_tables_names`) of that namespace lists tables:
  x_tables creates a table when a tool merely reads it;
* `ipset save`, `nft -j list ruleset` (native nftables tables that iptables cannot
  show are kept and flagged), and `nft list ruleset`'s "managed by iptables-nft" notes;
* links, addresses, routes of every table and `ip rule` of both families through
  pyroute2 (rtnetlink dumps), the namespace opened with `NetNS(name, flags=0)` so that
  a mistyped name fails instead of creating a namespace;
* the sysctls that change a packet's path, read from /proc/sys by a thread that has
  joined the namespace (/proc/sys follows the thread's namespace; /proc/net does not:
  it is /proc/self/net, the process's, so /proc/thread-self/net is read instead).

Tools that would load a kernel module are not run when that module is absent (their
tables cannot exist then).  The save tools run inside the namespace through
`ip netns exec NAME`.  Their warnings ("iptables-legacy tables present", "table ... is
incompatible") become snapshot warnings.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from nftrace.errors import UsageError
from nftrace.host.model import table_name

__all__ = ["NETNS_DIR", "capture", "check_netns", "read_proc", "run_tool"]

NETNS_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000
TOOL_TIMEOUT = 120.0

T = TypeVar("T")

# rtnetlink constants (include/uapi/linux/rtnetlink.h, fib_rules.h, if.h)
_RTN_TYPES = {
    1: "unicast",
    2: "local",
    3: "broadcast",
    4: "anycast",
    5: "multicast",
    6: "blackhole",
    7: "unreachable",
    8: "prohibit",
    9: "throw",
    10: "nat",
    11: "xresolve",
}
_SCOPES = {0: "universe", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
# iproute2's /etc/iproute2/rt_protos (names `ip route` prints)
_RT_PROTOS = {
    0: "unspec",
    1: "redirect",
    2: "kernel",
    3: "boot",
    4: "static",
    8: "gated",
    9: "ra",
    10: "mrt",
    11: "zebra",
    12: "bird",
    13: "dnrouted",
    14: "xorp",
    15: "ntk",
    16: "dhcp",
    17: "mrouted",
    18: "keepalived",
    42: "babel",
    99: "openr",
    186: "bgp",
    187: "isis",
    188: "ospf",
    189: "rip",
    192: "eigrp",
}
_RULE_ACTIONS = {1: "lookup", 2: "goto", 3: "nop", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
_IPPROTO_NAMES = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 33: "dccp", 47: "gre", 58: "ipv6-icmp", 132: "sctp"}
_FIB_RULE_INVERT = 0x2
_RTNH_F_DEAD = 0x1
_RTNH_F_ONLINK = 0x4
_RTNH_F_LINKDOWN = 0x10
_RTM_F_CLONED = 0x200
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_U32_NONE = 0xFFFFFFFF

#: per-interface IPv4 sysctls that change a packet's path (read for all, default and every link)
CONF4_KEYS = (
    "forwarding",
    "rp_filter",
    "route_localnet",
    "accept_local",
    "src_valid_mark",
    "send_redirects",
    "ignore_routes_with_linkdown",
)
CONF6_KEYS = ("forwarding", "disable_ipv6", "ignore_routes_with_linkdown")
GLOBAL_SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv4.ip_nonlocal_bind",
    "net.ipv4.fwmark_reflect",
    "net.ipv6.fwmark_reflect",
    "net.netfilter.nf_conntrack_tcp_loose",
    "net.netfilter.nf_conntrack_tcp_be_liberal",
    "net.netfilter.nf_conntrack_checksum",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.bridge.bridge-nf-call-arptables",
)


# --------------------------------------------------------------------------- namespaces


_libc: Any = None


def _setns(fd: int) -> None:
    global _libc
    if hasattr(os, "setns"):
        os.setns(fd, CLONE_NEWNET)
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def check_netns(name: str) -> str:
    """The path of network namespace `name`; UsageError when there is no such namespace.

    Never creates one (unlike `ip netns exec`-less tools that default to O_CREAT)."""
    if not name or "/" in name or name in (".", ".."):
        raise UsageError(f"--netns {name!r}: not a namespace name")
    path = os.path.join(NETNS_DIR, name)
    if not os.path.exists(path):
        raise UsageError(f"--netns {name}: no such network namespace (see `ip netns list`)")
    return path


def in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """fn() run by a thread that has joined netns (or directly when netns is None)."""
    if netns is None:
        return fn()
    path = check_netns(netns)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    t = threading.Thread(target=target, name=f"nftrace-netns-{netns}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def read_proc(netns: str | None, paths: list[str]) -> dict[str, str | None]:
    """Contents of /proc files as seen from netns (None for a missing/unreadable file).

    `/proc/net/...` paths are read through /proc/thread-self/net: /proc/net is the process's
    namespace, not the thread's."""

    def read_all() -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for p in paths:
            real = "/proc/thread-self/net/" + p[len("/proc/net/") :] if p.startswith("/proc/net/") else p
            try:
                with open(real, encoding="utf-8", errors="replace") as f:
                    out[p] = f.read()
            except OSError:
                out[p] = None
        return out

    return in_netns(netns, read_all)


def run_tool(netns: str | None, argv: list[str], timeout: float = TOOL_TIMEOUT) -> tuple[int, str, str] | None:
    """(exit status, stdout, stderr) of argv run in netns; None when the tool is not installed."""
    if shutil.which(argv[0]) is None:
        return None
    full = ["ip", "netns", "exec", netns, *argv] if netns is not None else argv
    try:
        p = subprocess.run(full, check=False, capture_output=True, text=True, errors="surrogateescape", timeout=timeout)
    except subprocess.TimeoutExpired:
        return (124, "", f"timed out after {timeout:.0f}s")
    except OSError as e:
        return (126, "", str(e))
    return p.returncode, p.stdout, p.stderr


# --------------------------------------------------------------------------- rules


_SAVE_NOTE = re.compile(r"^#\s*(Warning:.*|Table\s.*)$")
_TABLE_INCOMPATIBLE = re.compile(r"Table `(\w+)' is incompatible")
_TABLE_BAD_BASECHAINS = re.compile(r"Table `(\w+)' contains incompatible base-chains")


def _save_notes(stdout: str, stderr: str) -> list[str]:
    """The save tool's warnings: '# Warning: ...' and '# Table `x' is incompatible ...' lines."""
    notes: list[str] = []
    for text in (stdout, stderr):
        for line in text.splitlines():
            m = _SAVE_NOTE.match(line.strip())
            if m and m.group(1) not in notes:
                notes.append(m.group(1))
    return notes


def _module_present(name: str, sysfs_hint: str | None = None) -> bool:
    """Whether kernel code `name` is there without loading it: listed in /proc/modules, present in
    /sys/module, or the kernel cannot load modules at all (then everything it has is built in)."""
    if not os.path.exists("/proc/modules"):
        return True
    if os.path.isdir(f"/sys/module/{name}"):
        return True
    if sysfs_hint and os.path.exists(sysfs_hint):
        return True
    try:
        text = Path("/proc/modules").read_text()
    except OSError:
        return True
    return any(line.split(" ", 1)[0] == name for line in text.splitlines())


def _capture_iptables(netns: str | None, proc: dict[str, str | None], warnings: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "backend": "nft",
        "ipv4": None,
        "ipv6": None,
        "nft": {"ipv4": None, "ipv6": None},
        "legacy": {"ipv4": None, "ipv6": None},
        "notes": {"ipv4": [], "ipv6": []},
    }
    nft_ok = _module_present("nf_tables")
    for fam, prog, names_file in (
        ("ipv4", "iptables", "/proc/net/ip_tables_names"),
        ("ipv6", "ip6tables", "/proc/net/ip6_tables_names"),
    ):
        notes: list[str] = out["notes"][fam]
        if nft_ok:
            res = run_tool(netns, [f"{prog}-nft-save"])
            if res is None:
                warnings.append(f"{prog}-nft-save is not installed: {fam} rules of the nft backend were not read")
            else:
                rc, so, se = res
                if rc != 0:
                    msg = " ".join(se.split()) or f"exit status {rc}"
                    if "Permission denied" in se or "must be root" in se:
                        raise UsageError(f"{prog}-nft-save: {msg} (run nftrace snapshot as root)")
                    warnings.append(f"{prog}-nft-save failed: {msg}")
                else:
                    out["nft"][fam] = so
                    for n in _save_notes(so, se):
                        if n not in notes:
                            notes.append(n)
        names = proc.get(names_file)
        legacy_tables = [t for t in (names or "").split() if t]
        if legacy_tables:
            res = run_tool(netns, [f"{prog}-legacy-save"])
            if res is None:
                # no save tool: python-iptables (the `legacy` extra) reads the tables that exist
                from nftrace.errors import InputError
                from nftrace.host.legacy_reader import legacy_save_text

                try:
                    out["legacy"][fam] = legacy_save_text(fam, netns)  # type: ignore[arg-type]
                    warnings.append(f"{prog}-legacy-save is not installed: legacy tables read with python-iptables")
                except InputError as e:
                    warnings.append(
                        f"legacy {prog} tables exist ({', '.join(legacy_tables)}) but {prog}-legacy-save is not "
                        f"installed and python-iptables cannot read them ({e.message}): their rules were not read"
                    )
            else:
                rc, so, se = res
                if rc != 0:
                    warnings.append(f"{prog}-legacy-save failed: {' '.join(se.split()) or f'exit status {rc}'}")
                else:
                    out["legacy"][fam] = so
                    for n in _save_notes("", se):
                        if n not in notes:
                            notes.append(n)
        for n in notes:
            if "legacy tables present" in n:
                continue  # said once below, with what was done about it
            warnings.append(f"{prog}-save: {n}")
    backends: dict[str, str] = {}
    for fam, prog in (("ipv4", "iptables"), ("ipv6", "ip6tables")):
        in_nft, in_legacy = _has_rules(out["nft"][fam]), _has_rules(out["legacy"][fam])
        backends[fam] = "legacy" if in_legacy and not in_nft else "nft"
        if in_legacy and in_nft:
            warnings.append(
                f"{prog}: legacy tables hold rules next to iptables-nft's: the kernel runs both; nftrace traces "
                f"the nft ones only (the legacy rules are in the snapshot under iptables.legacy.{fam})"
            )
        elif out["legacy"][fam] is not None and not in_legacy:
            warnings.append(f"{prog}: legacy tables present (without rules)")
        out[fam] = out[backends[fam]][fam]
    out["backend"] = backends["ipv4"]
    out["backends"] = backends
    return out


_RULE_LINE = re.compile(r"^(?:\[\d+:\d+\]\s+)?-A\s", re.M)
_NON_ACCEPT_POLICY = re.compile(r"^:(\S+)\s+DROP\b", re.M)


def _has_rules(text: str | None) -> bool:
    """Whether a save text holds any rule or a DROP policy."""
    if not text:
        return False
    return bool(_RULE_LINE.search(text) or _NON_ACCEPT_POLICY.search(text))


# --------------------------------------------------------------------------- nftables


#: iptables' tables (the names iptables-nft gives its nft tables, families ip and ip6)
IPTABLES_TABLES: dict[str, tuple[str, ...]] = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}
_MANAGED = re.compile(r"table (\w+) (\S+) is managed by iptables-nft")
_SAVED_TABLE = re.compile(r"^\*(\w+)\s*$", re.M)
# Expressions iptables-nft (1.8.x) itself writes: anything else in one of its tables was added
# with nft and may be shown wrongly (or not at all) by iptables-nft-save.
_IPT_EXPRS = frozenset(
    {"match", "counter", "xt", "accept", "drop", "jump", "goto", "return", "queue", "limit", "log", "comment"}
)


def _expr_problem(expr: dict[str, Any]) -> str | None:
    """Why iptables-nft-save may not render this nft expression faithfully (None when it can)."""
    if not isinstance(expr, dict) or len(expr) != 1:
        return "unknown expression"
    kind = next(iter(expr))
    if kind not in _IPT_EXPRS:
        return f"nft expression '{kind}'"
    if kind == "match":
        right = expr[kind].get("right")
        if isinstance(right, str) and right.startswith("@"):
            return f"set lookup {right}"
        if isinstance(right, dict) and ("set" in right or "map" in right):
            return "anonymous set"
        left = expr[kind].get("left")
        if isinstance(left, dict) and next(iter(left), "") not in ("payload", "meta", "&"):
            return f"nft match on '{next(iter(left), '?')}'"
    return None


def _capture_nft(netns: str | None, iptables: dict[str, Any], warnings: list[str]) -> dict[str, Any] | None:
    """Every nftables table, its base chains, and whether it is one of iptables-nft's own."""
    if not _module_present("nf_tables"):
        return {"tables": [], "ruleset": {"nftables": []}, "text": {}}
    res = run_tool(netns, ["nft", "-j", "list", "ruleset"])
    if res is None:
        warnings.append("nft is not installed: native nftables tables (which iptables cannot show) were not checked")
        return None
    rc, so, se = res
    if rc != 0:
        warnings.append(f"nft -j list ruleset failed: {' '.join(se.split()) or rc}: native nftables tables not checked")
        return None
    try:
        doc = json.loads(so or '{"nftables": []}')
    except json.JSONDecodeError as e:
        warnings.append(f"nft -j list ruleset printed no valid JSON ({e.msg}): native nftables tables not checked")
        return None
    managed: set[tuple[str, str]] = set()
    texts: dict[str, str] = {}
    tres = run_tool(netns, ["nft", "list", "ruleset"])
    if tres is not None and tres[0] == 0:
        for m in _MANAGED.finditer(tres[2]):
            managed.add((m.group(1), m.group(2)))
        texts = _split_nft_text(tres[1])
    saved = {
        "ip": set(_SAVED_TABLE.findall(iptables["nft"]["ipv4"] or "")),
        "ip6": set(_SAVED_TABLE.findall(iptables["nft"]["ipv6"] or "")),
    }
    incompatible: dict[str, set[str]] = {"ip": set(), "ip6": set()}
    for nfam, ipfam in (("ip", "ipv4"), ("ip6", "ipv6")):
        for n in iptables["notes"][ipfam]:
            im = _TABLE_INCOMPATIBLE.search(n)
            if im:
                incompatible[nfam].add(im.group(1))

    objs = [o for o in doc.get("nftables", []) if isinstance(o, dict)]
    tables: dict[tuple[str, str], dict[str, Any]] = {}
    for o in objs:
        if "table" in o:
            t = o["table"]
            tkey = (str(t.get("family")), str(t.get("name")))
            fam, name = tkey
            if fam in ("ip", "ip6") and name in IPTABLES_TABLES:
                if name in incompatible[fam]:
                    owner = "iptables-nft-incompatible"
                elif name in saved[fam] or tkey in managed:
                    owner = "iptables-nft"
                else:
                    owner = "native"
            else:
                owner = "native"
            tables[tkey] = {
                "family": fam,
                "name": name,
                "owner": owner,
                "managed_marker": tkey in managed,
                "chains": [],
                "base_chains": [],
                "rules": 0,
                "flagged": [],
            }
    positions: dict[tuple[str, str, str], int] = {}
    for o in objs:
        if "chain" in o:
            c = o["chain"]
            t = tables.get((str(c.get("family")), str(c.get("table"))))
            if t is None:
                continue
            t["chains"].append(c.get("name"))
            if c.get("hook"):
                t["base_chains"].append(
                    {
                        "name": c.get("name"),
                        "type": c.get("type"),
                        "hook": c.get("hook"),
                        "prio": c.get("prio"),
                        "policy": c.get("policy", "accept"),
                        "dev": c.get("dev"),
                    }
                )
        elif "rule" in o:
            r = o["rule"]
            rkey = (str(r.get("family")), str(r.get("table")))
            t = tables.get(rkey)
            if t is None:
                continue
            t["rules"] += 1
            pk = (rkey[0], rkey[1], str(r.get("chain")))
            positions[pk] = positions.get(pk, 0) + 1
            if t["owner"] == "iptables-nft":
                problems = sorted({p for e in r.get("expr", []) if (p := _expr_problem(e))})
                if problems:
                    t["flagged"].append(
                        {
                            "chain": r.get("chain"),
                            "rule": positions[pk],
                            "handle": r.get("handle"),
                            "why": ", ".join(problems),
                        }
                    )
    for t in tables.values():
        if t["owner"] == "iptables-nft":
            builtin = IPTABLES_TABLES[t["name"]]
            for bc in t["base_chains"]:
                if bc["name"] not in builtin:
                    t["flagged"].append(
                        {
                            "chain": bc["name"],
                            "rule": None,
                            "handle": None,
                            "why": f"base chain at hook {bc['hook']} that iptables cannot show",
                        }  # fmt: skip
                    )
    kept_keys = {k for k, t in tables.items() if t["owner"] != "iptables-nft" or t["flagged"]}
    kept = [
        o
        for o in objs
        if "metainfo" in o
        or any(
            (str(v.get("family")), str(v.get("table", v.get("name")))) in kept_keys
            for k, v in o.items()
            if isinstance(v, dict)
            and k
            in (
                "table",
                "chain",
                "rule",
                "set",
                "map",
                "flowtable",
                "element",
                "counter",
                "quota",
                "ct helper",
                "limit",
                "ct timeout",
                "ct expectation",
                "secmark",
                "synproxy",
            )  # fmt: skip
        )
    ]
    return {
        "tables": list(tables.values()),
        "ruleset": {"nftables": kept},
        "text": {f"{f} {n}": texts[f"{f} {n}"] for (f, n) in sorted(kept_keys) if f"{f} {n}" in texts},
    }


def _split_nft_text(text: str) -> dict[str, str]:
    """`nft list ruleset` text split into its `table FAMILY NAME { ... }` blocks."""
    out: dict[str, str] = {}
    cur: list[str] | None = None
    key = ""
    for line in text.splitlines():
        m = re.match(r"^table (\S+) (\S+) \{", line)
        if m:
            key = f"{m.group(1)} {m.group(2)}"
            cur = [line]
            continue
        if cur is not None:
            cur.append(line)
            if line == "}":
                out[key] = "\n".join(cur) + "\n"
                cur = None
    return out


# --------------------------------------------------------------------------- links, routes, rules


def _attr(msg: Any, name: str, default: Any = None) -> Any:
    try:
        v = msg.get_attr(name)
    except Exception:  # noqa: BLE001 - pyroute2 messages without that attribute
        return default
    return default if v is None else v


def _prefix(addr: str | None, plen: int, family: int) -> str:
    if addr is None:
        return "default" if plen == 0 else ("0.0.0.0" if family == socket.AF_INET else "::") + f"/{plen}"
    return str(ipaddress.ip_network(f"{addr}/{plen}", strict=False))


def _capture_netlink(netns: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(links, routes, rules) as the snapshot stores them, from rtnetlink dumps."""
    try:
        from pyroute2 import IPRoute, NetNS  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise UsageError(
            "nftrace snapshot needs pyroute2 to read links, addresses, routes and rules: "
            "pip install 'nftrace[live]' (or pyroute2)"
        ) from None
    if netns is not None:
        check_netns(netns)
        try:
            ipr = NetNS(netns, flags=0)  # flags=0: never create a namespace that does not exist
        except FileNotFoundError:
            raise UsageError(f"--netns {netns}: no such network namespace (see `ip netns list`)") from None
    else:
        ipr = IPRoute()
    try:
        link_msgs = list(ipr.get_links())
        addr_msgs = list(ipr.get_addr())
        route_msgs = [m for fam in (socket.AF_INET, socket.AF_INET6) for m in ipr.route("dump", family=fam)]
        rule_msgs = [m for fam in (socket.AF_INET, socket.AF_INET6) for m in ipr.get_rules(family=fam)]
    except PermissionError as e:
        raise UsageError(f"cannot read routes and links: {e.strerror}") from None
    finally:
        with contextlib.suppress(Exception):
            ipr.close()
    names = {int(m["index"]): str(_attr(m, "IFLA_IFNAME", f"if{m['index']}")) for m in link_msgs}

    links: list[dict[str, Any]] = []
    by_index: dict[int, dict[str, Any]] = {}
    for m in link_msgs:
        info = _attr(m, "IFLA_LINKINFO")
        kind = None
        if info is not None:
            kind = _attr(info, "IFLA_INFO_KIND")
        flags = int(m["flags"])
        if kind is None and flags & _IFF_LOOPBACK:
            kind = "loopback"
        master = _attr(m, "IFLA_MASTER")
        d: dict[str, Any] = {
            "index": int(m["index"]),
            "name": names[int(m["index"])],
            "kind": kind,
            "master": names.get(int(master)) if master else None,
            "up": bool(flags & _IFF_UP),
            "mac": _attr(m, "IFLA_ADDRESS"),
            "addresses": [],
            "mtu": _attr(m, "IFLA_MTU"),
            "peers": {},
            "operstate": _attr(m, "IFLA_OPERSTATE"),
        }
        links.append(d)
        by_index[d["index"]] = d
    for m in addr_msgs:
        link = by_index.get(int(m["index"]))
        if link is None:
            continue
        plen = int(m["prefixlen"])
        if m["family"] == socket.AF_INET:
            local = _attr(m, "IFA_LOCAL") or _attr(m, "IFA_ADDRESS")
            address = _attr(m, "IFA_ADDRESS")
            cidr = f"{local}/{plen}"
            link["addresses"].append(cidr)
            if address and address != local:
                link["peers"][cidr] = str(ipaddress.ip_network(f"{address}/{plen}", strict=False))
        elif m["family"] == socket.AF_INET6:
            local = _attr(m, "IFA_LOCAL")
            address = _attr(m, "IFA_ADDRESS")
            if local and address and local != address:
                cidr = f"{local}/{plen}"
                link["peers"][cidr] = str(ipaddress.ip_network(f"{address}/{plen}", strict=False))
            else:
                cidr = f"{address or local}/{plen}"
            link["addresses"].append(cidr)

    routes: list[dict[str, Any]] = []
    for m in route_msgs:
        fam = int(m["family"])
        if int(m["flags"]) & _RTM_F_CLONED:
            continue
        tid = _attr(m, "RTA_TABLE", m["table"])
        gw = _attr(m, "RTA_GATEWAY")
        via = _attr(m, "RTA_VIA")
        if gw is None and isinstance(via, dict):
            gw = via.get("addr")
        oif = _attr(m, "RTA_OIF")
        rflags = int(m["flags"])
        r: dict[str, Any] = {
            "table": table_name(int(tid)),
            "type": _RTN_TYPES.get(int(m["type"]), str(m["type"])),
            "dst": _prefix(_attr(m, "RTA_DST"), int(m["dst_len"]), fam),
            "gateway": gw,
            "oif": names.get(int(oif)) if oif else None,
            "prefsrc": _attr(m, "RTA_PREFSRC"),
            "metric": int(_attr(m, "RTA_PRIORITY", 0)),
            "scope": _SCOPES.get(int(m["scope"]), str(m["scope"])),
            "family": "ipv4" if fam == socket.AF_INET else "ipv6",
            "proto": _RT_PROTOS.get(int(m["proto"]), str(m["proto"])),
            "tos": int(m["tos"]),
            "nexthops": [],
            "nhid": _attr(m, "RTA_NH_ID"),
            "flags": [
                n
                for bit, n in ((_RTNH_F_DEAD, "dead"), (_RTNH_F_ONLINK, "onlink"), (_RTNH_F_LINKDOWN, "linkdown"))
                if rflags & bit
            ],  # fmt: skip
        }
        src = _attr(m, "RTA_SRC")
        if src is not None:
            r["src"] = _prefix(src, int(m["src_len"]), fam)
        for hop in _attr(m, "RTA_MULTIPATH", []) or []:
            hgw = None
            hattrs = dict(hop.get("attrs", [])) if isinstance(hop, dict) else {}
            hgw = hattrs.get("RTA_GATEWAY")
            if hgw is None and isinstance(hattrs.get("RTA_VIA"), dict):
                hgw = hattrs["RTA_VIA"].get("addr")
            hoif = hop.get("oif") if isinstance(hop, dict) else None
            r["nexthops"].append([hgw, names.get(int(hoif)) if hoif else None, int(hop.get("hops", 0)) + 1])
        if r["nexthops"] and r["gateway"] is None and r["oif"] is None:
            r["gateway"], r["oif"] = r["nexthops"][0][0], r["nexthops"][0][1]
        routes.append(r)

    rules: list[dict[str, Any]] = []
    for m in rule_msgs:
        fam = int(m["family"])
        action = _RULE_ACTIONS.get(int(m["action"]), str(m["action"]))
        tid = _attr(m, "FRA_TABLE", m["table"])
        fwmark = _attr(m, "FRA_FWMARK")
        fwmask = _attr(m, "FRA_FWMASK")
        if fwmark is None and fwmask is not None:
            fwmark = 0
        src = _attr(m, "FRA_SRC")
        dst = _attr(m, "FRA_DST")
        spl = _attr(m, "FRA_SUPPRESS_PREFIXLEN")
        sig = _attr(m, "FRA_SUPPRESS_IFGROUP")
        proto = _attr(m, "FRA_IP_PROTO")
        uid = _attr(m, "FRA_UID_RANGE")
        rule: dict[str, Any] = {
            "priority": int(_attr(m, "FRA_PRIORITY", 0)),
            "table": table_name(int(tid)) if action == "lookup" and tid else None,
            "family": "ipv4" if fam == socket.AF_INET else "ipv6",
            "action": action,
            "src": _prefix(src, int(m["src_len"]), fam) if src is not None else None,
            "dst": _prefix(dst, int(m["dst_len"]), fam) if dst is not None else None,
            "iif": _attr(m, "FRA_IIFNAME"),
            "oif": _attr(m, "FRA_OIFNAME"),
            "fwmark": fwmark,
            "fwmask": None if fwmask in (None, _U32_NONE) else fwmask,
            "invert": bool(int(m["flags"]) & _FIB_RULE_INVERT),
            "goto": _attr(m, "FRA_GOTO"),
            "suppress_prefixlength": None if spl in (None, _U32_NONE) else int(spl),
            "suppress_ifgroup": None if sig in (None, _U32_NONE) else int(sig),
            "tos": int(m["tos"]),
            "ipproto": _IPPROTO_NAMES.get(int(proto), str(proto)) if proto else None,
            "sport": _range(_attr(m, "FRA_SPORT_RANGE")),
            "dport": _range(_attr(m, "FRA_DPORT_RANGE")),
            "uidrange": _range(uid) if uid is not None and _range(uid) != [0, _U32_NONE] else None,
            "l3mdev": bool(_attr(m, "FRA_L3MDEV", 0)),
        }
        rules.append(rule)
    return links, routes, rules


def _range(v: Any) -> list[int] | None:
    if v is None:
        return None
    if isinstance(v, str) and ":" in v:
        a, b = v.split(":", 1)
        return [int(a), int(b)]
    if isinstance(v, dict) and "start" in v:
        return [int(v["start"]), int(v["end"])]
    return None


# --------------------------------------------------------------------------- sysctls


def _capture_sysctls(netns: str | None, link_names: list[str]) -> tuple[dict[str, str], dict[str, bool]]:
    paths: list[str] = []
    for key in GLOBAL_SYSCTLS:
        paths.append("/proc/sys/" + key.replace(".", "/"))
    for dev in ("all", "default", *link_names):
        for k in CONF4_KEYS:
            paths.append(f"/proc/sys/net/ipv4/conf/{dev}/{k}")
        for k in CONF6_KEYS:
            paths.append(f"/proc/sys/net/ipv6/conf/{dev}/{k}")
    probes = {
        "nf_conntrack": "/proc/sys/net/netfilter/nf_conntrack_max",
        "br_netfilter": "/proc/sys/net/bridge/bridge-nf-call-iptables",
        "ip_tables": "/proc/net/ip_tables_names",
        "ip6_tables": "/proc/net/ip6_tables_names",
    }
    contents = read_proc(netns, paths + list(probes.values()))
    sysctls: dict[str, str] = {}
    for p in paths:
        v = contents.get(p)
        if v is None:
            continue
        rel = p[len("/proc/sys/") :]
        # interface names may contain dots: keep them literal (net.ipv4.conf.eth0.100.rp_filter)
        m = re.match(r"^net/(ipv[46])/conf/([^/]+)/(.+)$", rel)
        key = f"net.{m.group(1)}.conf.{m.group(2)}.{m.group(3)}" if m else rel.replace("/", ".")
        sysctls[key] = " ".join(v.split())
    modules = {name: contents.get(p) is not None for name, p in probes.items()}
    modules["nf_tables"] = _module_present("nf_tables")
    modules["ip_set"] = _module_present("ip_set")
    return sysctls, modules


# --------------------------------------------------------------------------- the whole snapshot


def capture(netns: str | None = None) -> dict[str, Any]:
    """Snapshot of the live host (or netns) as a Contract 2 document (`nftrace.snapshot/1`)."""
    from nftrace.host.snapshot import SCHEMA

    if netns is not None:
        check_netns(netns)
    warnings: list[str] = []
    links, routes, rules = _capture_netlink(netns)
    sysctls, modules = _capture_sysctls(netns, [lk["name"] for lk in links])
    proc = read_proc(netns, ["/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"])
    iptables = _capture_iptables(netns, proc, warnings)
    nft = _capture_nft(netns, iptables, warnings)
    ipsets: str | None = None
    if modules.get("ip_set"):
        res = run_tool(netns, ["ipset", "save"])
        if res is None:
            warnings.append("ipset is not installed: ipset contents were not read (-m set is evaluated as unknown)")
        elif res[0] != 0:
            warnings.append(f"ipset save failed: {' '.join(res[2].split())}")
        else:
            ipsets = res[1]
    else:
        ipsets = ""
    uts = os.uname()
    return {
        "schema": SCHEMA,
        "taken_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "hostname": socket.gethostname(),
        "kernel": uts.release,
        "netns": netns,
        "iptables": iptables,
        "ipsets": ipsets,
        "nftables": nft,
        "links": links,
        "routes": routes,
        "rules": rules,
        "sysctls": sysctls,
        "modules": modules,
        "warnings": warnings,
        "tool": "nftrace snapshot",
    }
