"""Parsers for the host context users paste into bug reports.

* `ip route show table all` / `ip route` / `ip -6 route ...` text, and `ip -j route` JSON
* `ip addr` / `ip -d addr` / `ip -br addr` / `ip -o addr` text, and `ip -j addr` JSON
* `ip rule` / `ip -6 rule` text, and `ip -j rule` JSON
* sysctls (`sysctl -a` lines, `key=value` flags)

plus `derive_routes`, the routes the kernel installs by itself when addresses are
configured, and `build_host_context`, which reads the files named on the command line.

Every error is an `InputError` naming the file and the line.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from nftrace.errors import InputError, UsageError
from nftrace.host.model import (
    DEFAULT_IPV4_RULES,
    DEFAULT_IPV6_RULES,
    TABLE_IDS,
    Family,
    HostContext,
    IpRule,
    Link,
    Route,
    table_name,
)

__all__ = [
    "RTN_TYPES",
    "ROUTE_TYPES",
    "AddrInfo",
    "build_host_context",
    "canonical_table",
    "derive_routes",
    "ipv4_addr_infos",
    "parse_addrs",
    "parse_ip_rules",
    "parse_routes",
    "parse_sysctls",
]

#: The kernel's route types, indexed by their RTN_* number (include/uapi/linux/rtnetlink.h):
#: RTN_UNSPEC is 0, RTN_UNICAST 1 ... RTN_XRESOLVE 11.  The addrtype match spells them in capitals.
RTN_TYPES = (
    "unspec",
    "unicast",
    "local",
    "broadcast",
    "anycast",
    "multicast",
    "blackhole",
    "unreachable",
    "prohibit",
    "throw",
    "nat",
    "xresolve",
)
#: The types a route can have (`ip route` prints them; RTN_UNSPEC is none).
ROUTE_TYPES = frozenset(RTN_TYPES[1:])
# Route types that, printed without a `table`, live in table local (see parse_routes).
_LOCAL_TABLE_TYPES = frozenset({"local", "broadcast", "anycast"})

SCOPES: dict[str, str] = {
    "global": "universe",
    "universe": "universe",
    "0": "universe",
    "site": "site",
    "200": "site",
    "link": "link",
    "253": "link",
    "host": "host",
    "254": "host",
    "nowhere": "nowhere",
    "255": "nowhere",
}

# `ip route` keywords that take one value.
_ROUTE_KV = frozenset(
    {
        "via",
        "dev",
        "oif",
        "table",
        "proto",
        "protocol",
        "scope",
        "src",
        "metric",
        "preference",
        "pref",
        "expires",
        "error",
        "tos",
        "dsfield",
        "nhid",
        "from",
        "weight",
        "realms",
        "realm",
        "mtu",
        "advmss",
        "rtt",
        "rttvar",
        "reordering",
        "window",
        "cwnd",
        "initcwnd",
        "initrwnd",
        "ssthresh",
        "rto_min",
        "hoplimit",
        "features",
        "quickack",
        "congctl",
        "fastopen_no_cookie",
        "ttl-propagate",
        "age",
        "users",
        "used",
        "ipid",
        "encap",
    }
)
# `ip route` flags (no value).
_ROUTE_FLAGS = frozenset(
    {
        "onlink",
        "linkdown",
        "dead",
        "pervasive",
        "offload",
        "trap",
        "notify",
        "unresolved",
        "rt_offload",
        "rt_trap",
        "rt_offload_failed",
    }
)
_ROUTE_KEYWORDS = _ROUTE_KV | _ROUTE_FLAGS | ROUTE_TYPES | {"nexthop", "lock", "cache"}

# Named dsfield values from iproute2's default /etc/iproute2/rt_dsfield.
_DSFIELD_NAMES: dict[str, int] = {
    "default": 0x00,
    "lowdelay": 0x10,
    "throughput": 0x08,
    "reliability": 0x04,
    "mincost": 0x02,
}

_RULE_ACTIONS = frozenset({"blackhole", "unreachable", "prohibit", "nop"})
_RULE_KEYWORDS = (
    frozenset(
        {
            "not",
            "from",
            "to",
            "tos",
            "dsfield",
            "dscp",
            "fwmark",
            "iif",
            "oif",
            "l3mdev",
            "uidrange",
            "ipproto",
            "sport",
            "dport",
            "tun_id",
            "protocol",
            "proto",
            "lookup",
            "table",
            "goto",
            "suppress_prefixlength",
            "suppress_prefixlen",
            "suppress_ifgroup",
            "realms",
            "map-to",
            "flowlabel",
            "pref",
            "priority",
            "type",
        }
    )
    | _RULE_ACTIONS
)

_OPERSTATES = frozenset({"UP", "DOWN", "UNKNOWN", "LOWERLAYERDOWN", "DORMANT", "NOTPRESENT", "TESTING"})
# Words that open an `ip -d link` line which is not the link kind.
_NOT_KIND = frozenset(
    {
        "numtxqueues",
        "addrgenmode",
        "gso_max_size",
        "gso_max_segs",
        "prop",
        "altname",
        "alias",
        "vf",
        "parentbus",
        "parentdev",
        "link-netnsid",
        "link-netns",
        "protodown",
        "promiscuity",
        "allmulti",
        "minmtu",
        "maxmtu",
        "new-netns",
        "new-netnsid",
        "xdp",
        "xdpgeneric",
        "xdpdrv",
        "xdpoffload",
    }
)


# --------------------------------------------------------------------------- helpers


def canonical_table(name: str | int) -> str:
    """'main', 'local', 'default', '100' ...; other names (from rt_tables) stay as they are."""
    if isinstance(name, int):
        return table_name(name)
    name = name.strip()
    if name in TABLE_IDS:
        return name
    try:
        return table_name(int(name, 0))
    except ValueError:
        return name


def _version(addr: str) -> int | None:
    """4 or 6 for an address or prefix, None when it is neither."""
    try:
        return ipaddress.ip_network(addr, strict=False).version
    except ValueError:
        return None


def _family_of(addr: str | None) -> Family | None:
    if addr is None:
        return None
    v = _version(addr)
    if v is None:
        return None
    return "ipv4" if v == 4 else "ipv6"


def _prefix(text: str, file: str | None, line: int | None, what: str) -> str:
    """A prefix in canonical CIDR form: '10.1.2.3' -> '10.1.2.3/32', '10.0.0.5/24' -> '10.0.0.0/24'."""
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise InputError(f"bad {what} {text!r}", file=file, line=line) from None


def _address(text: str, file: str | None, line: int | None, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise InputError(f"bad {what} {text!r}", file=file, line=line) from None


def _int(text: str | int, file: str | None, line: int | None, what: str) -> int:
    if isinstance(text, int):
        return text
    try:
        return int(text, 0)
    except ValueError:
        raise InputError(f"bad {what} {text!r}", file=file, line=line) from None


def _dsfield(text: str | int, file: str | None, line: int | None) -> int:
    if isinstance(text, int):
        return text
    if text.lower() in _DSFIELD_NAMES:
        return _DSFIELD_NAMES[text.lower()]
    return _int(text, file, line, "tos")


def _port_range(text: str, file: str | None, line: int | None, what: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    a = _int(lo, file, line, what)
    b = _int(hi, file, line, what) if sep else a
    if not (0 <= a <= b <= 0xFFFFFFFF):
        raise InputError(f"bad {what} {text!r}", file=file, line=line)
    return (a, b)


def _is_json(text: str) -> bool:
    return text.lstrip().startswith("[")


def _json_documents(text: str, file: str) -> Iterator[list[Any]]:
    """Every top-level JSON array in text (`ip -j route; ip -6 -j route` gives two)."""
    decoder = json.JSONDecoder()
    pos = 0
    n = len(text)
    while True:
        while pos < n and text[pos].isspace():
            pos += 1
        if pos >= n:
            return
        try:
            doc, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise InputError(f"bad JSON: {e.msg}", file=file, line=e.lineno) from None
        if not isinstance(doc, list):
            line = text.count("\n", 0, pos) + 1
            raise InputError("bad JSON: expected an array of objects as `ip -j` prints", file=file, line=line)
        yield doc


def _json_objects(text: str, file: str) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(document number, entry number, object) for every object of every array."""
    for d, doc in enumerate(_json_documents(text, file)):
        for i, obj in enumerate(doc, 1):
            if not isinstance(obj, dict):
                raise InputError(f"bad JSON: entry {i} is not an object", file=file)
            yield d, i, obj


def _str(obj: dict[str, Any], key: str) -> str | None:
    v = obj.get(key)
    if v is None:
        return None
    return str(v)


# --------------------------------------------------------------------------- routes


@dataclass
class _RouteDraft:
    route: Route
    line: int | None
    table_given: bool = False
    family_hint: Family | None = None


def parse_routes(text: str, filename: str, *, family: Family = "ipv4") -> list[Route]:
    """Routes from `ip route show table all` (or `ip route`, `ip -6 route`, ...) text or `ip -j route` JSON.

    `family` is used only when a route itself does not tell (e.g. `default dev eth0` in `ip -6 route`).
    """
    if _is_json(text):
        drafts = _routes_from_json(text, filename)
        any_table = any(d.table_given for d in drafts)
    else:
        drafts = _routes_from_text(text, filename)
        any_table = any(d.table_given for d in drafts)
    return [_finish_route(d, any_table, family) for d in drafts]


def _finish_route(d: _RouteDraft, any_table: bool, family: Family) -> Route:
    r = d.route
    fam = (
        _family_of(None if r.dst == "default" else r.dst)
        or _family_of(r.prefsrc)
        or d.family_hint
        or _family_of(r.gateway)
        or next((f for f in (_family_of(g) for g, _, _ in r.nexthops) if f), None)
        or family
    )
    r.family = fam
    if r.dst != "default":
        net = ipaddress.ip_network(r.dst, strict=False)
        r.dst = "default" if net.prefixlen == 0 else str(net)
    if not d.table_given:
        # `ip route show table local` and plain `ip route` never print `table`; `show table all`
        # prints it for every table but main. So a local-type route without `table` is in table
        # local unless the text names tables elsewhere (then it really is in main).
        local_types = _LOCAL_TABLE_TYPES | ({"multicast"} if fam == "ipv6" else set())
        r.table = "local" if (r.type in local_types and not any_table) else "main"
    if r.nexthops and r.gateway is None and r.oif is None:
        r.gateway, r.oif = r.nexthops[0][0], r.nexthops[0][1]
    return r


def _routes_from_text(text: str, filename: str) -> list[_RouteDraft]:
    drafts: list[_RouteDraft] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        toks = line.split()
        if raw[0].isspace():
            if toks[0] == "cache":  # `ip route get` output
                continue
            if not drafts:
                raise InputError(f"continuation line before any route: {line!r}", file=filename, line=lineno)
            prev = drafts[-1]
            if toks[0] == "nexthop":
                _parse_nexthop(prev, toks[1:], filename, lineno)
            else:
                _route_options(prev, toks, 0, filename, lineno)
            continue
        drafts.append(_parse_route_line(toks, filename, lineno))
    return drafts


def _parse_route_line(toks: list[str], filename: str, lineno: int) -> _RouteDraft:
    d = _RouteDraft(Route(), lineno)
    i = 0
    if toks[0] in ROUTE_TYPES:
        d.route.type = toks[0]
        i = 1
    if i >= len(toks):
        raise InputError(f"not a route: no destination after {toks[0]!r}", file=filename, line=lineno)
    dst = toks[i]
    if dst == "default":
        d.route.dst = "default"
    elif _version(dst) is not None and not dst.isdigit():
        d.route.dst = _prefix(dst, filename, lineno, "destination")
    else:
        shown = " ".join(toks)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        raise InputError(
            f"not a route (expected a destination such as 10.0.0.0/24 or default): {shown!r}",
            file=filename,
            line=lineno,
        )
    if d.route.type == "local":
        d.route.scope = "host"
    _route_options(d, toks, i + 1, filename, lineno)
    return d


def _route_options(d: _RouteDraft, toks: list[str], i: int, filename: str, lineno: int) -> None:
    r = d.route
    n = len(toks)

    def value(k: int) -> str:
        if k >= n:
            raise InputError(f"{toks[k - 1]!r} needs a value", file=filename, line=lineno)
        return toks[k]

    while i < n:
        kw = toks[i]
        if kw in _ROUTE_FLAGS:
            if kw not in r.flags:
                r.flags.append(kw)
            i += 1
            continue
        if kw == "nexthop":
            _parse_nexthop(d, toks[i + 1 :], filename, lineno)
            return
        if kw == "via":
            v = value(i + 1)
            if v in ("inet", "inet6"):
                i += 1
                v = value(i + 1)
            r.gateway = _address(v, filename, lineno, "gateway")
            i += 2
        elif kw in ("dev", "oif"):
            r.oif = value(i + 1)
            i += 2
        elif kw == "table":
            r.table = canonical_table(value(i + 1))
            d.table_given = True
            i += 2
        elif kw in ("proto", "protocol"):
            r.proto = value(i + 1)
            i += 2
        elif kw == "scope":
            v = value(i + 1)
            r.scope = SCOPES.get(v, v)
            i += 2
        elif kw == "src":
            r.prefsrc = _address(value(i + 1), filename, lineno, "src")
            i += 2
        elif kw in ("metric", "preference"):
            r.metric = _int(value(i + 1), filename, lineno, "metric")
            i += 2
        elif kw in ("tos", "dsfield"):
            r.tos = _dsfield(value(i + 1), filename, lineno)
            i += 2
        elif kw == "nhid":
            r.nhid = _int(value(i + 1), filename, lineno, "nhid")
            i += 2
        elif kw == "encap":
            # `encap mpls 100/200`, `encap ip id 1 src A dst B ttl 64`, `encap seg6 ...`: skip to the
            # next attribute the route itself has.
            i += 2
            while i < n and toks[i] not in (
                "via",
                "dev",
                "proto",
                "scope",
                "metric",
                "table",
                "pref",
                "nexthop",
            ):
                i += 1
        elif kw in _ROUTE_KV:
            # pref medium, expires 299sec, error -113, mtu [lock] 1400, from <src prefix> ...
            i += 1
            if i < n and toks[i] == "lock":
                i += 1
            i += 1
        elif kw == "cache" or kw == "lock":
            i += 1
        else:
            # Unknown keyword: skip it, and its value unless what follows is a keyword we know.
            i += 1
            if i < n and toks[i] not in _ROUTE_KEYWORDS:
                i += 1


def _parse_nexthop(d: _RouteDraft, toks: list[str], filename: str, lineno: int) -> None:
    """`nexthop via G dev D weight W [onlink] [linkdown]` (the tokens after `nexthop`)."""
    gw: str | None = None
    dev: str | None = None
    weight = 1
    i = 0
    n = len(toks)
    while i < n:
        kw = toks[i]
        if kw == "nexthop":  # several on one line
            d.route.nexthops.append((gw, dev, weight))
            gw, dev, weight = None, None, 1
            i += 1
        elif kw == "via" and i + 1 < n:
            v = toks[i + 1]
            if v in ("inet", "inet6") and i + 2 < n:
                i += 1
                v = toks[i + 1]
            gw = _address(v, filename, lineno, "nexthop gateway")
            i += 2
        elif kw == "dev" and i + 1 < n:
            dev = toks[i + 1]
            i += 2
        elif kw == "weight" and i + 1 < n:
            weight = _int(toks[i + 1], filename, lineno, "weight")
            i += 2
        elif kw in _ROUTE_FLAGS:
            i += 1
        elif kw in _ROUTE_KV:
            i += 2
        else:
            i += 1
    d.route.nexthops.append((gw, dev, weight))


def _routes_from_json(text: str, filename: str) -> list[_RouteDraft]:
    drafts: list[_RouteDraft] = []
    for _doc, idx, obj in _json_objects(text, filename):
        where = f"route entry {idx}"
        r = Route()
        d = _RouteDraft(r, None)
        rtype = _str(obj, "type") or "unicast"
        r.type = rtype
        dst = _str(obj, "dst")
        if dst is None:
            raise InputError(f'{where}: no "dst"', file=filename)
        if dst == "default":
            r.dst = "default"
        else:
            r.dst = _prefix(dst, filename, None, f"destination in {where}")
        gw = _str(obj, "gateway")
        via = obj.get("via")
        if gw is None and isinstance(via, dict):
            gw = _str(via, "host")
        if gw is not None:
            r.gateway = _address(gw, filename, None, f"gateway in {where}")
        r.oif = _str(obj, "dev")
        table = _str(obj, "table")
        if table is not None:
            r.table = canonical_table(table)
            d.table_given = True
        r.proto = _str(obj, "protocol")
        scope = _str(obj, "scope")
        if scope is not None:
            r.scope = SCOPES.get(scope, scope)
        elif rtype == "local":
            r.scope = "host"
        src = _str(obj, "prefsrc")
        if src is not None:
            r.prefsrc = _address(src, filename, None, f"prefsrc in {where}")
        if obj.get("metric") is not None:
            r.metric = _int(obj["metric"], filename, None, f"metric in {where}")
        if obj.get("tos") is not None:
            r.tos = _dsfield(obj["tos"], filename, None)
        if obj.get("nhid") is not None:
            r.nhid = _int(obj["nhid"], filename, None, f"nhid in {where}")
        flags = obj.get("flags")
        if isinstance(flags, list):
            r.flags = [str(f) for f in flags]
        hops = obj.get("nexthops")
        if isinstance(hops, list):
            for h in hops:
                if not isinstance(h, dict):
                    continue
                hgw = _str(h, "gateway")
                hvia = h.get("via")
                if hgw is None and isinstance(hvia, dict):
                    hgw = _str(hvia, "host")
                if hgw is not None:
                    hgw = _address(hgw, filename, None, f"nexthop gateway in {where}")
                weight = _int(h.get("weight", 1), filename, None, f"weight in {where}")
                r.nexthops.append((hgw, _str(h, "dev"), weight))
        drafts.append(d)
    return drafts


# --------------------------------------------------------------------------- addresses


def parse_addrs(text: str, filename: str, *, family: Family = "ipv4") -> list[Link]:
    """Links and addresses from `ip addr` (also `-d`, `-4`, `-6`, `-o`, `-br`) text or `ip -j addr` JSON.

    `family` is accepted for symmetry with the other parsers; addresses always say their family.
    """
    del family
    if _is_json(text):
        return _addrs_from_json(text, filename)
    first = next((ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
    if first and not re.match(r"^\d+:\s", first):
        return _addrs_from_brief(text, filename)
    return _addrs_from_text(text, filename)


_HEADER = re.compile(r"^(\d+):\s+([^\s:@]+)(?:@(\S*?))?:\s+<([^>]*)>(.*)$")
_ONELINE_ADDR = re.compile(r"^(\d+):\s+([^\s:@]+)(?:@\S+)?\s+(inet6?\s.*)$")


def _clean_name(name: str) -> str:
    return name.split("@", 1)[0]


def _addrs_from_text(text: str, filename: str) -> list[Link]:
    links: list[Link] = []
    by_index: dict[int, Link] = {}
    cur: Link | None = None
    after_link_line = False
    seen_inet = False
    lines: list[tuple[int, str]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        # `ip -o` puts a whole link (or address) on one line, its line breaks written as "\".
        parts = raw.split("\\")
        lines.append((lineno, parts[0]))
        lines.extend((lineno, "    " + p.strip()) for p in parts[1:] if p.strip())
    for lineno, raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not raw[0].isspace():
            m = _HEADER.match(line)
            if m:
                idx = int(m.group(1))
                cur = Link(index=idx, name=m.group(2))
                flags = {f.strip() for f in m.group(4).split(",")}
                cur.up = "UP" in flags
                if "LOOPBACK" in flags:
                    cur.kind = "loopback"
                rest = m.group(5).split()
                for j, tok in enumerate(rest[:-1]):
                    if tok == "mtu":
                        cur.mtu = _int(rest[j + 1], filename, lineno, "mtu")
                    elif tok == "master":
                        cur.master = rest[j + 1]
                if idx in by_index:
                    # `ip -o` prints the link once per address; keep the first.
                    cur = by_index[idx]
                else:
                    by_index[idx] = cur
                    links.append(cur)
                after_link_line = False
                seen_inet = False
                continue
            m = _ONELINE_ADDR.match(line)
            if m:
                idx = int(m.group(1))
                if idx not in by_index:
                    name = m.group(2)
                    by_index[idx] = Link(index=idx, name=name, kind="loopback" if name == "lo" else None)
                    links.append(by_index[idx])
                cur = by_index[idx]
                _add_address_line(cur, m.group(3).split(), filename, lineno)
                continue
            raise InputError(f"not an `ip addr` line: {line[:60]!r}", file=filename, line=lineno)
        if cur is None:
            raise InputError(f"address line before any link: {line[:60]!r}", file=filename, line=lineno)
        toks = line.split()
        head = toks[0]
        if head.startswith("link/"):
            ltype = head[5:]
            if ltype == "loopback":
                cur.kind = "loopback"
            if len(toks) > 1 and ltype in ("ether", "loopback", "infiniband", "ieee802.11"):
                cur.mac = toks[1]
            after_link_line = True
            continue
        if head in ("inet", "inet6"):
            _add_address_line(cur, toks, filename, lineno)
            seen_inet = True
            continue
        if head in ("valid_lft", "preferred_lft", "altname"):
            continue
        if (
            after_link_line
            and not seen_inet
            and cur.kind is None
            and re.fullmatch(r"[a-z][a-z0-9_]*", head)
            and head not in _NOT_KIND
            and not head.endswith("_slave")
        ):
            cur.kind = head  # `ip -d`: veth, bridge, vxlan id 42 ..., macvlan mode bridge ...
        after_link_line = False
    return links


def _add_address_line(link: Link, toks: list[str], filename: str, lineno: int | None) -> None:
    """`inet A/P [peer B/P] [brd X] scope S ...` or `inet6 A/P scope S ...` (toks[0] is inet/inet6)."""
    if len(toks) < 2:
        raise InputError(f"{toks[0]} without an address", file=filename, line=lineno)
    local = toks[1]
    peer = toks[3] if len(toks) > 3 and toks[2] == "peer" else None
    _add_address(link, local, peer, filename, lineno)


def _add_address(link: Link, local: str, peer: str | None, filename: str, lineno: int | None) -> None:
    addr, _, plen = local.partition("/")
    peer_net: str | None = None
    if peer is not None:
        peer_net = _prefix(peer, filename, lineno, "peer address")
        plen = peer.partition("/")[2] or ("32" if ":" not in peer else "128")
    addr = _address(addr, filename, lineno, "address")
    if not plen:
        plen = "32" if ":" not in addr else "128"
    try:
        iface = ipaddress.ip_interface(f"{addr}/{plen}")
    except ValueError:
        raise InputError(f"bad address {local!r}", file=filename, line=lineno) from None
    cidr = str(iface)
    if cidr not in link.addresses:
        link.addresses.append(cidr)
    if peer_net is not None:
        link.peers[cidr] = peer_net


def _addrs_from_brief(text: str, filename: str) -> list[Link]:
    links: list[Link] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        toks = line.split()
        if len(toks) < 2 or toks[1] not in _OPERSTATES:
            raise InputError(f"not an `ip -br addr` line: {line[:60]!r}", file=filename, line=lineno)
        name = _clean_name(toks[0])
        link = Link(index=len(links) + 1, name=name, up=toks[1] != "DOWN")
        if name == "lo":
            link.kind = "loopback"
        i = 2
        while i < len(toks):
            local = toks[i]
            peer = None
            if i + 2 < len(toks) and toks[i + 1] == "peer":
                peer = toks[i + 2]
                i += 2
            _add_address(link, local, peer, filename, lineno)
            i += 1
        links.append(link)
    return links


def _addrs_from_json(text: str, filename: str) -> list[Link]:
    links: list[Link] = []
    for _doc, idx, obj in _json_objects(text, filename):
        name = _str(obj, "ifname")
        if name is None:
            raise InputError(f'link entry {idx}: no "ifname"', file=filename)
        ifindex = _int(obj.get("ifindex", idx), filename, None, "ifindex")
        link = Link(index=ifindex, name=_clean_name(name))
        flags = obj.get("flags")
        if isinstance(flags, list):
            link.up = "UP" in flags
            if "LOOPBACK" in flags:
                link.kind = "loopback"
        if obj.get("mtu") is not None:
            link.mtu = _int(obj["mtu"], filename, None, "mtu")
        link.master = _str(obj, "master")
        ltype = _str(obj, "link_type")
        if ltype == "loopback":
            link.kind = "loopback"
        if ltype in ("ether", "loopback"):
            link.mac = _str(obj, "address")
        info = obj.get("linkinfo")
        if isinstance(info, dict) and info.get("info_kind"):
            link.kind = str(info["info_kind"])
        for a in obj.get("addr_info") or []:
            if not isinstance(a, dict) or a.get("family") not in ("inet", "inet6"):
                continue
            local = _str(a, "local")
            if local is None:
                continue
            plen = _str(a, "prefixlen")
            peer = _str(a, "address")
            if peer is not None and peer != local and plen is not None:
                _add_address(link, local, f"{peer}/{plen}", filename, None)
            else:
                _add_address(link, f"{local}/{plen}" if plen is not None else local, None, filename, None)
        links.append(link)
    return links


# --------------------------------------------------------------------------- ip rules


@dataclass
class _RuleDraft:
    rule: IpRule
    line: int | None
    family_hint: Family | None = None


def parse_ip_rules(text: str, filename: str, *, family: Family = "ipv4") -> list[IpRule]:
    """Policy rules from `ip rule` / `ip -6 rule` text or `ip -j rule` JSON.

    Rule lines do not say their family unless they name an address. Rules are printed by
    ascending priority, so a priority lower than the previous one starts a new listing
    (`ip rule; ip -6 rule` pasted together); a listing whose rules name no address is
    `family` for the first listing and the other family for the next one.
    """
    if _is_json(text):
        sections = _rules_from_json(text, filename)
    else:
        sections = _rules_from_text(text, filename)
    out: list[IpRule] = []
    other: Family = "ipv6" if family == "ipv4" else "ipv4"
    for n, section in enumerate(sections):
        hint = next((d.family_hint for d in section if d.family_hint), None)
        fam = hint or (family if n % 2 == 0 else other)
        for d in section:
            if d.family_hint and d.family_hint != fam:
                why = "rule mixes IPv4 and IPv6 addresses with its listing"
                raise InputError(why, file=filename, line=d.line)
            d.rule.family = fam
            out.append(d.rule)
    return out


def _split_sections(drafts: Iterable[_RuleDraft]) -> list[list[_RuleDraft]]:
    sections: list[list[_RuleDraft]] = []
    prev: int | None = None
    for d in drafts:
        if prev is None or d.rule.priority < prev:
            sections.append([])
        sections[-1].append(d)
        prev = d.rule.priority
    return sections


def _rules_from_text(text: str, filename: str) -> list[list[_RuleDraft]]:
    drafts: list[_RuleDraft] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^(\d+):\s*(.*)$", line)
        if not m:
            raise InputError(
                f"not an `ip rule` line (expected PRIORITY: ...): {line[:60]!r}", file=filename, line=lineno
            )
        drafts.append(_parse_rule_tokens(int(m.group(1)), m.group(2).split(), filename, lineno))
    return _split_sections(drafts)


def _parse_rule_tokens(prio: int, toks: list[str], filename: str, lineno: int) -> _RuleDraft:
    r = IpRule(priority=prio, table=None)
    d = _RuleDraft(r, lineno)
    n = len(toks)
    have_action = False

    def value(k: int) -> str:
        if k >= n:
            raise InputError(f"{toks[k - 1]!r} needs a value", file=filename, line=lineno)
        return toks[k]

    def selector(text: str, what: str) -> str | None:
        if text == "all":
            return None
        p = _prefix(text, filename, lineno, what)
        fam = _family_of(p)
        if d.family_hint and fam != d.family_hint:
            raise InputError("rule mixes IPv4 and IPv6 addresses", file=filename, line=lineno)
        d.family_hint = fam
        return p

    i = 0
    while i < n:
        kw = toks[i]
        if kw == "not":
            r.invert = True
            i += 1
        elif kw == "from":
            r.src = selector(value(i + 1), "from prefix")
            i += 2
        elif kw == "to":
            r.dst = selector(value(i + 1), "to prefix")
            i += 2
        elif kw in ("tos", "dsfield"):
            r.tos = _dsfield(value(i + 1), filename, lineno)
            i += 2
        elif kw == "dscp":
            r.tos = _int(value(i + 1), filename, lineno, "dscp") << 2
            i += 2
        elif kw == "fwmark":
            mark, sep, mask = value(i + 1).partition("/")
            r.fwmark = _int(mark, filename, lineno, "fwmark")
            r.fwmask = _int(mask, filename, lineno, "fwmark mask") if sep else None
            i += 2
        elif kw in ("iif", "oif"):
            setattr(r, kw, value(i + 1))
            i += 2
        elif kw == "l3mdev":
            r.l3mdev = True
            i += 1
        elif kw == "uidrange":
            r.uidrange = _port_range(value(i + 1), filename, lineno, "uidrange")
            i += 2
        elif kw == "ipproto":
            r.ipproto = value(i + 1).lower()
            i += 2
        elif kw in ("sport", "dport"):
            setattr(r, kw, _port_range(value(i + 1), filename, lineno, kw))
            i += 2
        elif kw in ("lookup", "table"):
            t = value(i + 1)
            if t == "[l3mdev-table]":
                r.l3mdev = True
            else:
                r.table = canonical_table(t)
            r.action = "lookup"
            have_action = True
            i += 2
        elif kw == "goto":
            r.action = "goto"
            r.goto = _int(value(i + 1), filename, lineno, "goto target")
            have_action = True
            i += 2
        elif kw in _RULE_ACTIONS:
            r.action = kw
            have_action = True
            i += 1
        elif kw in ("suppress_prefixlength", "suppress_prefixlen"):
            r.suppress_prefixlength = _int(value(i + 1), filename, lineno, "suppress_prefixlength")
            i += 2
        elif kw == "suppress_ifgroup":
            r.suppress_ifgroup = _int(value(i + 1), filename, lineno, "suppress_ifgroup")
            i += 2
        elif kw.startswith("["):  # [detached] [unresolved]
            i += 1
        else:
            # realms X, map-to X, tun_id N, protocol P, flowlabel F/M ... : not routing-relevant here.
            i += 1
            if i < n and toks[i] not in _RULE_KEYWORDS and not toks[i].startswith("["):
                i += 1
    if not have_action and not r.l3mdev:
        why = "ip rule without an action (lookup/goto/nop/blackhole/...)"
        raise InputError(why, file=filename, line=lineno)
    return d


def _rules_from_json(text: str, filename: str) -> list[list[_RuleDraft]]:
    out: list[list[_RuleDraft]] = []
    for doc in _json_documents(text, filename):
        drafts: list[_RuleDraft] = []
        for idx, obj in enumerate(doc, 1):
            if not isinstance(obj, dict):
                raise InputError(f"bad JSON: rule entry {idx} is not an object", file=filename)
            where = f"rule entry {idx}"
            prio = _int(obj.get("priority", 0), filename, None, f"priority in {where}")
            r = IpRule(priority=prio, table=None)
            d = _RuleDraft(r, None)
            r.invert = "not" in obj
            for key, plen_key, attr in (("src", "srclen", "src"), ("dst", "dstlen", "dst")):
                a = _str(obj, key)
                if a is None or a == "all":
                    continue
                plen = _str(obj, plen_key)
                p = _prefix(f"{a}/{plen}" if plen is not None else a, filename, None, f"{key} in {where}")
                setattr(r, attr, p)
                d.family_hint = _family_of(p)
            if obj.get("tos") is not None:
                r.tos = _dsfield(obj["tos"], filename, None)
            if obj.get("dscp") is not None:
                r.tos = _int(obj["dscp"], filename, None, "dscp") << 2
            if obj.get("fwmark") is not None:
                r.fwmark = _int(obj["fwmark"], filename, None, f"fwmark in {where}")
                if obj.get("fwmask") is not None:
                    r.fwmask = _int(obj["fwmask"], filename, None, f"fwmask in {where}")
            r.iif = _str(obj, "iif")
            r.oif = _str(obj, "oif")
            r.l3mdev = "l3mdev" in obj
            if obj.get("uid_start") is not None:
                u0 = _int(obj["uid_start"], filename, None, "uid_start")
                u1 = _int(obj["uid_end"], filename, None, "uid_end") if obj.get("uid_end") is not None else u0
                r.uidrange = (u0, u1)
            if obj.get("ipproto") is not None:
                r.ipproto = str(obj["ipproto"]).lower()
            for port in ("sport", "dport"):
                if obj.get(port) is not None:
                    pn = _int(obj[port], filename, None, port)
                    setattr(r, port, (pn, pn))
                elif obj.get(f"{port}_start") is not None:
                    p0 = _int(obj[f"{port}_start"], filename, None, port)
                    end = obj.get(f"{port}_end")
                    p1 = _int(end, filename, None, port) if end is not None else p0
                    setattr(r, port, (p0, p1))
            if obj.get("table") is not None:
                r.table = canonical_table(str(obj["table"]))
                r.action = "lookup"
            if obj.get("goto") is not None:
                r.action = "goto"
                r.goto = _int(obj["goto"], filename, None, f"goto in {where}")
            if "nop" in obj:
                r.action = "nop"
            action = _str(obj, "action")
            if action is not None:
                r.action = action
            if obj.get("suppress_prefixlen") is not None:
                spl = obj["suppress_prefixlen"]
                r.suppress_prefixlength = _int(spl, filename, None, "suppress_prefixlen")
            if obj.get("suppress_ifgroup") is not None:
                r.suppress_ifgroup = _int(obj["suppress_ifgroup"], filename, None, "suppress_ifgroup")
            drafts.append(d)
        out.extend(_split_sections(drafts))
    return out


# --------------------------------------------------------------------------- sysctls


#: The per-interface IPv4 sysctls nftrace reads (net.ipv4.conf.{all,default,IF}.NAME; host/fib.py).
CONF4_READ = (
    "forwarding",
    "rp_filter",
    "route_localnet",
    "accept_local",
    "send_redirects",
    "src_valid_mark",
    "ignore_routes_with_linkdown",
)
#: Every sysctl nftrace reads: routing, forwarding and source validation (host/fib.py) and the
#: bridge-netfilter finding (kube/findings.py).  Others change no trace.
READ_SYSCTLS = (
    "net.ipv4.ip_forward",
    *(f"net.ipv4.conf.{{all,default,IF}}.{name}" for name in CONF4_READ),
    "net.ipv6.conf.all.forwarding",
    "net.bridge.bridge-nf-call-iptables",
)
_CONF4 = "|".join(CONF4_READ)
_READ_TEXT = (
    f"net.ipv4.ip_forward, net.ipv4.conf.{{all,default,IF}}.{{{','.join(CONF4_READ)}}}, "
    "net.ipv6.conf.all.forwarding and net.bridge.bridge-nf-call-iptables"
)
_READ_RE = re.compile(
    rf"net\.ipv4\.ip_forward|net\.ipv4\.conf\.\S+\.(?:{_CONF4})|net\.ipv6\.conf\.all\.forwarding"
    r"|net\.bridge\.bridge-nf-call-iptables"
)
# Integer sysctls whose values are checked as the kernel checks a write.  On kernel 6.18 each is a
# plain proc_dointvec() integer with no range (ip_forward=2 and rp_filter=-1 are stored as written);
# the bridge-netfilter ones store any non-zero value as 1.  (tests/test_host_parse.py writes them in
# a namespace.)
_INT_RE = re.compile(
    rf"net\.ipv4\.ip_forward|net\.ipv4\.conf\.\S+\.(?:{_CONF4})|net\.ipv6\.conf\.\S+\.forwarding"
    r"|(?P<bool>net\.bridge\.bridge-nf-call-ip6?tables)"
)
_PROC_INT = re.compile(r"(-?)(0[xX][0-9a-fA-F]+|[0-9]+)(?:[ \t\n].*)?", re.S)


def kernel_int(text: str) -> int | None:
    """The integer the kernel stores when `text` is written to an integer sysctl, None when the
    write fails with EINVAL (proc_dointvec(), proc_get_long()).

    Leading white space is skipped; the number is C-style (0x hex, a leading 0 octal), may be
    negative, has fewer than 21 characters with its sign, fits a C int and ends at a blank, a tab,
    a newline or the end (anything after that is ignored): `1 2` is 1, `+1`, `1,2`, `08` and
    `2147483648` are refused."""
    t = text.lstrip(" \t\n\v\f\r")
    m = _PROC_INT.fullmatch(t)
    if m is None:
        return None
    sign, num = m.groups()
    if len(sign) + len(num) >= 21:
        return None
    if num[:2].lower() == "0x":
        n = int(num, 16)
    elif len(num) > 1 and num[0] == "0":
        if "8" in num or "9" in num:
            return None
        n = int(num, 8)
    else:
        n = int(num)
    if sign:
        n = -n
    return n if -(2**31) <= n < 2**31 else None


def _sysctl_hint(key: str) -> str:
    name = key.rsplit(".", 1)[-1]
    if name in ("forwarding", "ip_forward"):
        return "0 (off) or 1 (on)"
    if name == "rp_filter":
        return "0 (off), 1 (strict) or 2 (loose)"
    return "0 or 1"


def sysctl_value(key: str, value: str) -> str:
    """`value` as the kernel stores it for `key` when nftrace reads that sysctl as an integer (in
    decimal: `0x1` and `01` are `1`); other keys' values with their white space folded.  ValueError
    (its message says what the kernel takes) when the kernel refuses the value."""
    m = _INT_RE.fullmatch(key)
    if m is None:
        return " ".join(value.split())
    n = kernel_int(value)
    if n is None:
        raise ValueError(
            f"the kernel refuses {value.strip()!r} for {key} (EINVAL): it takes a whole number from "
            f"-2147483648 to 2147483647, {_sysctl_hint(key)}"
        )
    if m.group("bool"):
        return "1" if n else "0"
    return str(n)


def sysctl_is_read(key: str) -> bool:
    """Whether nftrace reads this sysctl (a dotted key, interface names literal)."""
    return _READ_RE.fullmatch(key) is not None


def check_sysctl_flags(items: Iterable[str]) -> None:
    """UsageError for a `--sysctl KEY=VALUE` flag whose key nftrace does not read (it would change
    nothing; a bare `ip_forward` is no sysctl) or whose value the kernel refuses.  Items without `=`
    name files and are read later (parse_sysctls)."""
    for item in items:
        if "=" not in item:
            continue
        for key in parse_sysctls([item], "--sysctl"):
            if sysctl_is_read(key):
                continue
            # the sysctl of the same name, of the same family when there are two
            name = key.rsplit(".", 1)[-1]
            alike = [r.replace("{all,default,IF}", "all") for r in READ_SYSCTLS if r.rsplit(".", 1)[-1] == name]
            guess = max(alike, key=lambda r: len(os.path.commonprefix([r, key])), default=None)
            hint = f" (did you mean {guess}?)" if guess else ""
            raise UsageError(f"--sysctl {item.strip()}: nftrace does not read {key}{hint}; it reads {_READ_TEXT}")


def parse_sysctls(items: list[str], filename: str | None = None) -> dict[str, str]:
    """`key = value` lines (sysctl -a, sysctl.conf) or `key=value` flags -> {dotted key: value}.

    Keys are dotted with interface names literal: `net/ipv4/conf/eth0.100/rp_filter` and
    `sysctl -a`'s `net.ipv4.conf.eth0/100.rp_filter` both become `net.ipv4.conf.eth0.100.rp_filter`.
    The values of the sysctls nftrace reads are checked as the kernel checks them (sysctl_value):
    a value the kernel refuses is an error naming the file and line (`--sysctl KEY=VALUE` when
    `filename` is "--sysctl": a UsageError), except on a sysctl.conf line starting with `-`, whose
    errors sysctl(8) ignores: that key is then not set.
    """
    out: dict[str, str] = {}
    lineno = 0
    flag = filename == "--sysctl"

    def error(why: str, line: str) -> Exception:
        if flag:
            return UsageError(f"--sysctl {line}: {why}")
        return InputError(why, file=filename, line=lineno)

    for item in items:
        for raw in item.splitlines() or [""]:
            lineno += 1
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            ignore_errors = line.startswith("-")
            if ignore_errors:  # sysctl.conf: ignore errors on this key
                line = line[1:].lstrip()
            key, sep, val = line.partition("=")
            key = key.strip()
            if not sep or not key or any(c.isspace() for c in key):
                raise error(f"bad sysctl line (expected key = value): {line[:60]!r}", line)
            if key.startswith("/proc/sys/"):
                key = key[len("/proc/sys/") :]
            key = key.replace("/", ".")
            try:
                value = sysctl_value(key, val)
            except ValueError as e:
                if ignore_errors:
                    continue
                raise error(str(e), line) from None
            out[key] = value
    return out


# --------------------------------------------------------------------------- derived routes


@dataclass(frozen=True)
class AddrInfo:
    """One IPv4 address of a link as the kernel keeps it (struct in_ifaddr)."""

    local: ipaddress.IPv4Address
    prefixlen: int
    network: ipaddress.IPv4Network  # the subnet (of the peer for point-to-point addresses)
    primary: bool
    primary_local: ipaddress.IPv4Address  # the primary address of this subnet (itself when primary)
    scope: str  # "host" for 127/8 (iproute2 default), else "universe"
    cidr: str  # as in Link.addresses


def ipv4_addr_infos(link: Link) -> list[AddrInfo]:
    """The link's IPv4 addresses in order, with primary/secondary as the kernel assigns it."""
    out: list[AddrInfo] = []
    for a in link.addresses:
        try:
            iface = ipaddress.ip_interface(a)
        except ValueError:
            continue
        if not isinstance(iface, ipaddress.IPv4Interface):
            continue
        peer = link.peers.get(a)
        net = ipaddress.IPv4Network(peer, strict=False) if peer else iface.network
        primary_local = iface.ip
        primary = True
        for prev in out:
            if prev.primary and prev.prefixlen == iface.network.prefixlen and prev.network == net:
                primary = False
                primary_local = prev.local
                break
        scope = "host" if iface.ip in _LOOPBACK4 else "universe"
        out.append(AddrInfo(iface.ip, iface.network.prefixlen, net, primary, primary_local, scope, a))
    return out


_LOOPBACK4 = ipaddress.IPv4Network("127.0.0.0/8")
_LINK_LOCAL6 = ipaddress.IPv6Network("fe80::/10")


def derive_routes(links: list[Link]) -> list[Route]:
    """The routes the kernel installs by itself for the links' addresses (as `ip route show table all` shows).

    IPv4 (fib_add_ifaddr), checked against a 6.x kernel:
      * `local A dev D table local scope host src P` for every address, also on a link that is down
        (P is the primary address of A's subnet);
      * on up links only, for primary addresses: `<network>/P dev D scope link src A` in main
        (`local` in table local for the loopback), not for a /32 without peer, and for P < 31
        `broadcast <last address> dev D table local scope link src A`. Current kernels no longer add
        a broadcast route for the network address.
    IPv6 (addrconf), on up links: `local A dev D table local metric 0` for every address, the prefix
    route `<prefix> dev D metric 256` in main (also for a /128, never for the loopback's ::1),
    `fe80::/64 dev D metric 256` and `multicast ff00::/8 dev D table local metric 256` for every
    up non-loopback link that has a link-local address.
    """
    main4: list[Route] = []
    local4: list[Route] = []
    main6: list[Route] = []
    local6: list[Route] = []
    for link in links:
        is_lo = link.kind == "loopback" or link.name == "lo"
        for info in ipv4_addr_infos(link):
            src = str(info.primary_local)
            local4.append(
                Route(
                    table="local",
                    type="local",
                    dst=f"{info.local}/32",
                    oif=link.name,
                    prefsrc=src,
                    scope="host",
                    proto="kernel",
                )
            )
            if not link.up or not info.primary:
                continue
            net = info.network
            if net.network_address.packed[0] == 0:
                continue  # no prefix route for a prefix in 0.0.0.0/8
            if net.prefixlen < 32 or info.cidr in link.peers:
                if is_lo:
                    local4.append(
                        Route(
                            table="local",
                            type="local",
                            dst=str(net),
                            oif=link.name,
                            prefsrc=str(info.local),
                            scope="host",
                            proto="kernel",
                        )
                    )
                else:
                    main4.append(
                        Route(
                            table="main",
                            dst=str(net),
                            oif=link.name,
                            prefsrc=str(info.local),
                            scope="link",
                            proto="kernel",
                        )
                    )
                if net.prefixlen < 31:
                    local4.append(
                        Route(
                            table="local",
                            type="broadcast",
                            dst=f"{net.broadcast_address}/32",
                            oif=link.name,
                            prefsrc=str(info.local),
                            scope="link",
                            proto="kernel",
                        )
                    )
        if not link.up:
            continue
        has_ll = False
        for a in link.addresses:
            try:
                iface = ipaddress.ip_interface(a)
            except ValueError:
                continue
            if not isinstance(iface, ipaddress.IPv6Interface):
                continue
            local6.append(
                Route(
                    table="local",
                    type="local",
                    dst=f"{iface.ip}/128",
                    oif=link.name,
                    scope="host",
                    proto="kernel",
                    family="ipv6",
                )
            )
            if iface.ip in _LINK_LOCAL6:
                has_ll = True
                continue
            if is_lo and iface.ip.is_loopback:
                continue
            main6.append(
                Route(
                    table="main",
                    dst=str(iface.network),
                    oif=link.name,
                    metric=256,
                    proto="kernel",
                    family="ipv6",
                )
            )
        if has_ll and not is_lo:
            ll = Route(
                table="main",
                dst="fe80::/64",
                oif=link.name,
                metric=256,
                proto="kernel",
                family="ipv6",
            )
            main6.append(ll)
            local6.append(
                Route(
                    table="local",
                    type="multicast",
                    dst="ff00::/8",
                    oif=link.name,
                    metric=256,
                    proto="kernel",
                    family="ipv6",
                )
            )

    def key(r: Route) -> tuple[int, int]:
        net = r.network()
        return (int(net.network_address), -net.prefixlen)

    main4.sort(key=key)
    local4.sort(key=key)
    return main4 + local4 + main6 + local6


# --------------------------------------------------------------------------- host context


def _read(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError as e:
        raise InputError(f"cannot read {what}: {e.strerror or e}", file=path) from None


def _links_from_routes(routes: list[Route]) -> list[Link]:
    """Links and addresses implied by routes, for when no `ip addr` output was given.

    Every device a route names becomes a link; every `local A` route of table local on it
    becomes an address, with the prefix length of the connected route on that device that
    holds A (the one whose `src` is A first), else /32 (/128).
    """
    links: dict[str, Link] = {}

    def link(name: str) -> Link:
        if name not in links:
            links[name] = Link(index=len(links) + 1, name=name, kind="loopback" if name == "lo" else None)
        return links[name]

    connected: list[Route] = []
    for r in routes:
        if r.oif is not None:
            link(r.oif)
        for _, dev, _ in r.nexthops:
            if dev is not None:
                link(dev)
        if r.type == "unicast" and r.gateway is None and not r.nexthops and r.oif and r.dst != "default":
            connected.append(r)
    for r in routes:
        if r.type != "local" or r.table != "local" or r.oif is None or r.dst == "default":
            continue
        net = r.network()
        if net.prefixlen != net.max_prefixlen:
            continue
        addr = net.network_address
        holders = [c for c in connected if c.oif == r.oif and c.family == r.family and addr in c.network()]
        holders.sort(key=lambda c: (c.prefsrc != str(addr), -c.network().prefixlen))
        plen = holders[0].network().prefixlen if holders else net.max_prefixlen
        if r.oif == "lo" and str(addr) == "127.0.0.1":
            plen = 8
        cidr = f"{addr}/{plen}"
        if cidr not in link(r.oif).addresses:
            link(r.oif).addresses.append(cidr)
    out = sorted(links.values(), key=lambda lk: (lk.name != "lo", lk.index))
    for i, lk in enumerate(out, 1):
        lk.index = i
    return out


def build_host_context(
    routes_file: str | None = None,
    addrs_file: str | None = None,
    rules_file: str | None = None,
    sysctls: list[str] | None = None,
    local_addrs: list[str] | None = None,
    sysctl_files: list[str] | None = None,
) -> HostContext:
    """The host context from the files and flags given on the command line.

    `sysctls` items are `key=value` strings or names of files holding such lines (`sysctl -a`);
    `sysctl_files` are files of such lines (a rulesets/ directory's sysctl.txt), read first.
    """
    ctx = HostContext()
    given = any(x for x in (routes_file, addrs_file, rules_file, sysctls, local_addrs, sysctl_files))
    ctx.empty = not given
    if not given:
        ctx.provenance.append("no host context given")
    if addrs_file is not None:
        ctx.links = parse_addrs(_read(addrs_file, "addresses"), addrs_file)
    if routes_file is not None:
        ctx.routes = parse_routes(_read(routes_file, "routes"), routes_file)
    if rules_file is not None:
        ctx.rules = parse_ip_rules(_read(rules_file, "ip rules"), rules_file)
    for path in sysctl_files or ():
        ctx.sysctls.update(parse_sysctls([_read(path, "sysctls")], path))
    if sysctls:
        for item in sysctls:
            if "=" not in item and "\n" not in item:
                ctx.sysctls.update(parse_sysctls([_read(item, "sysctls")], item))
            else:
                ctx.sysctls.update(parse_sysctls([item], "--sysctl"))

    if routes_file is None and ctx.links:
        ctx.routes = derive_routes(ctx.links)
        ctx.provenance.append("routes derived from addresses (local and connected only; no default route)")
    elif addrs_file is None and ctx.routes:
        ctx.links = _links_from_routes(ctx.routes)
        ctx.provenance.append("addresses inferred from the local routes (no `ip addr` given)")

    if local_addrs:
        pseudo = Link(index=0, name="*", kind="loopback", up=True)
        for a in local_addrs:
            try:
                ip = ipaddress.ip_address(a.strip())
            except ValueError:
                raise InputError(f"bad --local-addr {a!r}", file="--local-addr") from None
            host = f"{ip}/{ip.max_prefixlen}"
            fam: Family = "ipv4" if ip.version == 4 else "ipv6"
            pseudo.addresses.append(host)
            ctx.routes.append(
                Route(
                    table="local",
                    type="local",
                    dst=host,
                    oif="*",
                    prefsrc=str(ip),
                    scope="host",
                    family=fam,
                    proto="kernel",
                )
            )
        ctx.links.append(pseudo)
        if routes_file is None and addrs_file is None:
            ctx.provenance.append(
                "local addresses from --local-addr only, on a pseudo-link '*' (no other routes known)"
            )
        else:
            ctx.provenance.append("--local-addr addresses added on a pseudo-link '*'")
    elif given and routes_file is None and addrs_file is None:
        ctx.provenance.append("no routes or addresses given")

    if rules_file is None:
        ctx.provenance.append("no `ip rule` output given: the kernel's default rules (local, main, default) assumed")
    for fam, defaults in (("ipv4", DEFAULT_IPV4_RULES), ("ipv6", DEFAULT_IPV6_RULES)):
        if not any(r.family == fam for r in ctx.rules):
            ctx.rules.extend(_copy_rule(r) for r in defaults)
    return ctx


def _copy_rule(r: IpRule) -> IpRule:
    return dataclasses.replace(r)
