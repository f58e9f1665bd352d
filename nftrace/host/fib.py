"""The kernel's routing decisions for one packet.

* `Fib.lookup`       fib_lookup(): the policy rules walked by priority, each rule's table searched
                     by longest prefix, then TOS, then lowest metric.
* `Fib.route_input`  ip_route_input_slow(): a packet that arrived on `iif` (martians, broadcast,
                     local delivery, forwarding sysctls, reverse-path filter).
* `Fib.route_output` ip_route_output_key(): a packet a local process sends (iif is lo for the
                     rules; source address selection; bound output device).
* `Fib.addr_type`    inet_addr_type()/inet_dev_addr_type() for `-m addrtype`.

The Linux kernel is the specification; tests/test_fib.py compares these answers with
`ip route get` in network namespaces. Facts that surprise (all checked on a 6.x kernel):

* an IPv4 output lookup with a bound device (`oif`) that finds no usable route, or hits a
  blackhole/unreachable/prohibit route or rule, does not fail: the kernel assumes the
  destination is on-link on that device. Bound to a device that is down: ENETUNREACH.
  IPv6 instead skips every route not via the bound device (reject routes too) when the
  sender has no source address, and only prefers it when it has one;
* a blackhole/unreachable/prohibit route ends the rule walk (suppress_prefixlength does not
  apply to it); a `throw` route, a missing table or no match continue with the next rule;
* rule action `unreachable` answers ENETUNREACH, a route of type unreachable EHOSTUNREACH;
* `fwmark 0` without a mask matches every packet (the kernel keeps mask 0);
* `uidrange 0-0` matches forwarded packets (the kernel uses uid 0 when there is no socket);
* `goto N` jumps to a rule of priority exactly N; without one it is skipped ("unresolved");
* on input with forwarding disabled every non-local destination answers EHOSTUNREACH (even a
  blackhole route), and the input device's own `conf.<iif>.forwarding` decides, not
  `ip_forward` (ip_forward=0 with conf.eth1.forwarding=1 forwards what arrives on eth1);
* a packet whose source is one of the host's own addresses is a martian even with
  rp_filter=0, unless accept_local=1; the reverse-path check ignores the packet mark
  unless src_valid_mark=1; a failed check answers EINVAL on 6.1x kernels (EXDEV before);
* 0.0.0.0/8 is routable since Linux 5.3: only 0.0.0.0 itself is a martian;
* a local address keeps its `local` route when its link goes down: it still receives, and
  its other routes (connected, broadcast, routes via the link) are gone;
* a loopback source may only leave through lo (EINVAL otherwise);
* multicast input is delivered only for joined groups (224.0.0.1 always, on an up device).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field

from nftrace.errors import InputError
from nftrace.host.model import (
    DEFAULT_IPV4_RULES,
    DEFAULT_IPV6_RULES,
    Family,
    HostContext,
    IPAddress,
    IpRule,
    Link,
    Route,
)
from nftrace.host.parse import RTN_TYPES, AddrInfo, derive_routes, ipv4_addr_infos, kernel_int

__all__ = ["ADDR_TYPES", "RESULT_TYPES", "Fib", "RouteResult"]

#: RouteResult.type values.
RESULT_TYPES = (
    "unicast",
    "local",
    "broadcast",
    "multicast",
    "anycast",
    "blackhole",
    "unreachable",
    "prohibit",
    "none",
    "martian",
    "rpfilter",
)
#: addr_type() answers, spelled as the addrtype match prints them (the kernel's route types).
ADDR_TYPES = tuple(t.upper() for t in RTN_TYPES)

# errno of a route of each error type (fib_props[]) and of each rule action (fib4_rule_action).
_ROUTE_ERRNO = {"blackhole": "EINVAL", "unreachable": "EHOSTUNREACH", "prohibit": "EACCES"}
_RULE_ERRNO = {"blackhole": "EINVAL", "unreachable": "ENETUNREACH", "prohibit": "EACCES"}

_SCOPE_VALUE = {"universe": 0, "global": 0, "site": 200, "link": 253, "host": 254, "nowhere": 255}

_IPPROTO = {
    "icmp": 1,
    "igmp": 2,
    "ipip": 4,
    "tcp": 6,
    "egp": 8,
    "udp": 17,
    "dccp": 33,
    "ipv6": 41,
    "rsvp": 46,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmpv6": 58,
    "ipv6-icmp": 58,
    "ospf": 89,
    "pim": 103,
    "sctp": 132,
    "udplite": 136,
    "mpls": 137,
}

_V4_ALL = 0xFFFFFFFF
_V6_ALL = (1 << 128) - 1
_LBCAST = 0xFFFFFFFF
_LOOPBACK4 = ipaddress.IPv4Network("127.0.0.0/8")
_MCAST4 = ipaddress.IPv4Network("224.0.0.0/4")
_LOCAL_MCAST4 = ipaddress.IPv4Network("224.0.0.0/24")
_ALL_HOSTS = int(ipaddress.IPv4Address("224.0.0.1"))
_MCAST6 = ipaddress.IPv6Network("ff00::/8")
_LINK_LOCAL6 = ipaddress.IPv6Network("fe80::/10")


@dataclass
class RouteResult:
    """One routing decision.

    `type`: unicast local broadcast multicast anycast blackhole unreachable prohibit none
    (no route: ENETUNREACH) martian rpfilter. `error` is the errno name `ip route get`
    answers with (EINVAL, EHOSTUNREACH, EACCES, ENETUNREACH ...) or None when it prints a route.
    """

    type: str
    table: str | None
    oif: str | None
    gateway: str | None
    prefsrc: str | None
    route: Route | None
    rule: IpRule | None
    reason: str
    error: str | None = None
    #: assumptions taken (unknown sysctls, multipath hop, ...); also appended to `reason`.
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the packet can go on (delivered locally or sent/forwarded)."""
        return self.error is None and self.type in ("unicast", "local", "broadcast", "multicast", "anycast")


@dataclass
class _Entry:
    route: Route
    prefixlen: int


@dataclass
class _Table:
    buckets: dict[int, dict[int, list[_Entry]]] = field(default_factory=dict)
    prefixlens: list[int] = field(default_factory=list)


@dataclass
class _RuleC:
    """A rule with its selectors pre-computed as integers."""

    rule: IpRule
    src: tuple[int, int] | None
    dst: tuple[int, int] | None
    proto: int | None
    fwmask: int


@dataclass
class _Flow:
    family: Family
    dst: int
    src: int
    iif: str | None  # the device rules see as iif: "lo" for locally generated packets
    oif: str | None
    mark: int = 0
    tos: int = 0
    proto: int = 0
    sport: int = 0
    dport: int = 0
    uid: int = 0
    #: IPv6 only: False when the bound device is a preference, not a requirement (the sender
    #: has a source address and the destination is neither link-local nor multicast)
    oif_strict: bool = True
    #: said in the result when a uidrange rule had to look at `uid` (which was assumed)
    uid_note: str | None = None
    uid_consulted: bool = False


@dataclass
class _Hit:
    status: str  # ok error throw none missing
    entry: _Entry | None = None
    hop: tuple[str | None, str | None] | None = None
    multipath: bool = False


@dataclass
class _Outcome:
    type: str
    error: str | None
    route: Route | None = None
    table: str | None = None
    rule: IpRule | None = None
    hop: tuple[str | None, str | None] | None = None
    multipath: bool = False
    steps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _mask(bits: int, plen: int) -> int:
    full = (1 << bits) - 1
    return full ^ ((1 << (bits - plen)) - 1)


def _prefix_ints(prefix: str) -> tuple[int, int]:
    net = ipaddress.ip_network(prefix, strict=False)
    return int(net.network_address), _mask(net.max_prefixlen, net.prefixlen)


def _proto_number(proto: str | int | None) -> int:
    if proto is None:
        return 0
    if isinstance(proto, int):
        return proto
    p = proto.strip().lower()
    if p.isdigit():
        return int(p)
    return _IPPROTO.get(p, -1)


def _request_flow(
    d: IPAddress,
    s: int,
    iif: str,
    oif: str | None,
    mark: int,
    tos: int,
    proto: str | None,
    sport: int | None,
    dport: int | None,
    uid: int | None,
) -> _Flow:
    """The flow of a lookup() or route_output() request.  An unknown uid is taken as 0, and the
    result says so when a uidrange rule looked at it."""
    return _Flow(
        "ipv4" if d.version == 4 else "ipv6",
        int(d),
        s,
        iif,
        oif,
        mark,
        tos,
        _proto_number(proto),
        sport or 0,
        dport or 0,
        uid or 0,
        uid_note="uid unknown, assumed 0" if uid is None else None,
    )


def _route_text(r: Route, hop: tuple[str | None, str | None] | None = None) -> str:
    parts = [] if r.type == "unicast" else [r.type]
    # as `ip route` prints it: host routes without their /32 (/128)
    parts.append(r.dst.rsplit("/", 1)[0] if r.dst.endswith(("/32", "/128")) else r.dst)
    gw, dev = hop if hop is not None else (r.gateway, r.oif)
    if gw:
        parts.append(f"via {gw}")
    if dev:
        parts.append(f"dev {dev}")
    if r.tos:
        parts.append(f"tos {r.tos:#x}")
    if r.metric:
        parts.append(f"metric {r.metric}")
    return " ".join(parts)


def _v6_scope(a: ipaddress.IPv6Address) -> int:
    """RFC 4007 scope value (1 interface-local ... 14 global)."""
    if a.is_multicast:
        return int(a.packed[1]) & 0x0F
    if a.is_loopback:
        return 1
    if a in _LINK_LOCAL6:
        return 2
    if a.is_site_local:
        return 5
    return 14


def _common_prefix(a: int, b: int) -> int:
    x = a ^ b
    return 128 - x.bit_length()


class Fib:
    """The host's FIB: routes indexed per family and table, ip rules sorted by priority."""

    def __init__(self, ctx: HostContext, family: Family = "ipv4") -> None:
        self.ctx = ctx
        self.family: Family = family
        #: what the Fib had to assume about the context itself (shown by the presenters)
        self.notes: list[str] = []
        self._links: dict[str, Link] = {lk.name: lk for lk in ctx.links}
        self._tables: dict[str, dict[str, _Table]] = {"ipv4": {}, "ipv6": {}}
        self._rules: dict[str, list[_RuleC]] = {"ipv4": [], "ipv6": []}
        self._v4: dict[str, list[AddrInfo]] = {lk.name: ipv4_addr_infos(lk) for lk in ctx.links}
        self._local4: dict[int, str] = {}
        for lk in ctx.links:
            for info in self._v4[lk.name]:
                self._local4.setdefault(int(info.local), lk.name)
        self._local6: dict[int, str] = {}
        for lk in ctx.links:
            for a in lk.addresses:
                try:
                    iface = ipaddress.ip_interface(a)
                except ValueError:
                    continue
                if iface.version == 6:
                    self._local6.setdefault(int(iface.ip), lk.name)

        derived: list[Route] | None = None
        for fam in ("ipv4", "ipv6"):
            version = 4 if fam == "ipv4" else 6
            routes = [r for r in ctx.routes if r.family == fam]
            has_addr = any((self._local4 if version == 4 else self._local6) and lk.addresses for lk in ctx.links)
            if has_addr and not any(r.table == "local" for r in routes):
                # Without table local, addrtype and local delivery cannot work: take what the
                # kernel installs for the links' addresses.
                if derived is None:
                    derived = derive_routes(ctx.links)
                if routes:
                    routes = routes + [r for r in derived if r.family == fam and r.table == "local"]
                    self.notes.append(f"{fam}: table local derived from the links' addresses")
                else:
                    routes = [r for r in derived if r.family == fam]
                    self.notes.append(f"{fam}: routes derived from the links' addresses")
            self._index_routes(fam, routes)
            rules = [r for r in ctx.rules if r.family == fam]
            if not rules:
                rules = list(DEFAULT_IPV4_RULES if fam == "ipv4" else DEFAULT_IPV6_RULES)
            self._index_rules(fam, rules)
        self._custom_rules4 = self._has_custom_rules()
        self._custom_local4 = any(
            r.family == "ipv4" and r.type == "local" and r.proto not in ("kernel", "2") for r in ctx.routes
        )

    # ------------------------------------------------------------------ indexing

    def _index_routes(self, fam: str, routes: list[Route]) -> None:
        tables = self._tables[fam]
        bits = 32 if fam == "ipv4" else 128
        staged: dict[str, list[tuple[int, int, int, int, _Entry]]] = {}
        for order, r in enumerate(routes):
            try:
                net = r.network()
            except ValueError:
                continue
            if net.max_prefixlen != bits:
                continue
            e = _Entry(r, net.prefixlen)
            # Within one prefix the kernel keeps aliases ordered by TOS (descending), then priority.
            staged.setdefault(r.table, []).append((-net.prefixlen, -r.tos, r.metric, order, e))
        for name, items in staged.items():
            items.sort(key=lambda t: t[:4])
            t = _Table()
            for _, _, _, _, e in items:
                key = int(e.route.network().network_address)
                t.buckets.setdefault(e.prefixlen, {}).setdefault(key, []).append(e)
            t.prefixlens = sorted(t.buckets, reverse=True)
            tables[name] = t

    def _index_rules(self, fam: str, rules: list[IpRule]) -> None:
        out: list[_RuleC] = []
        for r in sorted(rules, key=lambda r: r.priority):
            src = _prefix_ints(r.src) if r.src else None
            dst = _prefix_ints(r.dst) if r.dst else None
            proto = _proto_number(r.ipproto) if r.ipproto else None
            if r.fwmark is None:
                fwmask = 0
            elif r.fwmask is not None:
                fwmask = r.fwmask
            else:
                fwmask = _V4_ALL if r.fwmark else 0  # `fwmark 0` without a mask: the kernel keeps mask 0
            out.append(_RuleC(r, src, dst, proto, fwmask))
        self._rules[fam] = out

    def _has_custom_rules(self) -> bool:
        rules = [rc.rule for rc in self._rules["ipv4"]]
        defaults = list(DEFAULT_IPV4_RULES)
        if len(rules) != len(defaults):
            return True
        return any(
            (r.priority, r.table, r.action, r.src, r.dst, r.iif, r.oif, r.fwmark, r.invert)
            != (d.priority, d.table, d.action, d.src, d.dst, d.iif, d.oif, d.fwmark, d.invert)
            for r, d in zip(rules, defaults, strict=True)
        )

    # ------------------------------------------------------------------ sysctls

    def _sysctl(self, key: str) -> str | None:
        v = self.ctx.sysctls.get(key)
        return v.strip() if v is not None else None

    def _int_sysctl(self, key: str) -> int | None:
        """An integer sysctl's value as the kernel reads what was written (0x1, 010 ...), None when unknown."""
        v = self._sysctl(key)
        return None if v is None else kernel_int(v)

    def _conf(self, fam: str, dev: str | None, name: str) -> tuple[int | None, int | None]:
        """(all, dev) values of net.<fam>.conf.*.<name>, None when unknown."""
        a = self._int_sysctl(f"net.{fam}.conf.all.{name}")
        d = self._int_sysctl(f"net.{fam}.conf.{dev}.{name}") if dev else None
        if d is None:
            d = self._int_sysctl(f"net.{fam}.conf.default.{name}")
        return a, d

    def _orconf(self, dev: str | None, name: str, default: int = 0) -> bool:
        a, d = self._conf("ipv4", dev, name)
        return bool((a if a is not None else default) or (d if d is not None else default))

    def _forwarding(self, iif: str) -> tuple[bool, str | None]:
        """IN_DEV_FORWARD(in_dev): the input device's own forwarding value decides."""
        for key in (f"net.ipv4.conf.{iif}.forwarding", "net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding"):
            v = self._int_sysctl(key)
            if v is not None:
                return v != 0, key  # any non-zero value forwards (2 and -1 too)
        return True, None

    def _forwarding6(self) -> tuple[bool, str | None]:
        for key in ("net.ipv6.conf.all.forwarding",):
            v = self._int_sysctl(key)
            if v is not None:
                return v != 0, key
        return True, None

    def _ignore_linkdown(self, dev: str) -> bool:
        return self._orconf(dev, "ignore_routes_with_linkdown")

    # ------------------------------------------------------------------ table and rule walk

    def _pick_hop(
        self, r: Route, flow: _Flow, ignore_linkstate: bool
    ) -> tuple[tuple[str | None, str | None], bool] | None:
        hops = [(g, d) for g, d, _ in r.nexthops] if r.nexthops else [(r.gateway, r.oif)]
        usable: list[tuple[str | None, str | None]] = []
        for gw, dev in hops:
            if dev is not None and r.type != "local":
                link = self._links.get(dev)
                if link is not None and not link.up:
                    continue  # the kernel flushes routes of a link that goes down (local ones stay)
                if not ignore_linkstate and "linkdown" in r.flags and self._ignore_linkdown(dev):
                    continue
            if flow.oif is not None and flow.oif_strict and dev is not None and dev != flow.oif:
                continue
            usable.append((gw, dev))
        if not usable:
            return None
        return usable[0], len(hops) > 1

    def _table_lookup(self, fam: str, table: str, flow: _Flow, ignore_linkstate: bool = False) -> _Hit:
        t = self._tables[fam].get(table)
        if t is None:
            return _Hit("missing")
        bits = 32 if fam == "ipv4" else 128
        for plen in t.prefixlens:
            entries = t.buckets[plen].get(flow.dst & _mask(bits, plen))
            if not entries:
                continue
            hit = self._bucket_lookup(fam, entries, flow, ignore_linkstate)
            if hit is not None:
                return hit
        return _Hit("none")

    def _bucket_lookup(self, fam: str, entries: list[_Entry], flow: _Flow, ignore_linkstate: bool) -> _Hit | None:
        """The route of one prefix: fib_table_lookup()'s alias walk (IPv4), rt6_select() (IPv6)."""
        v6_strict = fam == "ipv6" and flow.oif is not None and flow.oif_strict
        v6_prefer = fam == "ipv6" and flow.oif is not None and not flow.oif_strict
        fallback: _Hit | None = None
        fallback_metric = 0
        for e in entries:
            r = e.route
            if r.tos and r.tos != (flow.tos & 0x1C):
                continue
            if fallback is not None and r.metric != fallback_metric:
                break  # IPv6 prefers the bound device only among routes of the lowest metric
            if r.type == "throw" or r.type in _ROUTE_ERRNO:
                if v6_strict:
                    continue  # IPv6 reject routes sit on lo: not a route via the bound device
                return _Hit("throw" if r.type == "throw" else "error", e)
            picked = self._pick_hop(r, flow, ignore_linkstate)
            if picked is None:
                continue
            hit = _Hit("ok", e, picked[0], picked[1])
            if v6_prefer and picked[0][1] != flow.oif:
                if fallback is None:
                    fallback, fallback_metric = hit, r.metric
                continue
            return hit
        return fallback

    def _rule_matches(self, rc: _RuleC, flow: _Flow) -> bool:
        """fib_rule_match(): the generic selectors, then fib4/6_rule_match(); `not` inverts it all."""
        return self._selectors_hold(rc, flow) != rc.rule.invert

    def _selectors_hold(self, rc: _RuleC, flow: _Flow) -> bool:
        r = rc.rule
        if r.iif is not None and r.iif != flow.iif:
            return False
        if r.oif is not None and r.oif != flow.oif:
            return False
        if ((r.fwmark or 0) ^ flow.mark) & rc.fwmask:
            return False
        if r.l3mdev:
            return False  # no VRF devices are modelled
        if r.uidrange is not None:
            flow.uid_consulted = True
            if not r.uidrange[0] <= flow.uid <= r.uidrange[1]:
                return False
        if rc.src is not None and (flow.src & rc.src[1]) != rc.src[0]:
            return False
        if rc.dst is not None and (flow.dst & rc.dst[1]) != rc.dst[0]:
            return False
        if r.tos and r.tos != (flow.tos & 0xFC):
            return False
        if rc.proto is not None and rc.proto != flow.proto:
            return False
        if r.sport is not None and not r.sport[0] <= flow.sport <= r.sport[1]:
            return False
        return r.dport is None or r.dport[0] <= flow.dport <= r.dport[1]

    def _fib_lookup(self, flow: _Flow, ignore_linkstate: bool = False) -> _Outcome:
        out = self._walk_rules(flow, ignore_linkstate)
        if flow.uid_consulted and flow.uid_note:
            out.notes.append(flow.uid_note)
        return out

    def _walk_rules(self, flow: _Flow, ignore_linkstate: bool) -> _Outcome:
        rules = self._rules[flow.family]
        steps: list[str] = []
        i = 0
        while i < len(rules):
            rc = rules[i]
            r = rc.rule
            if not self._rule_matches(rc, flow):
                i += 1
                continue
            if r.action == "goto":
                # the target is the first rule of exactly that priority, always after this one
                target = r.goto if r.goto is not None and r.goto > r.priority else None
                j = next((k for k in range(i + 1, len(rules)) if rules[k].rule.priority == target), None)
                if j is None:
                    steps.append(f"rule {r.priority}: goto {r.goto} unresolved, skipped")
                    i += 1
                else:
                    steps.append(f"rule {r.priority}: goto {r.goto}")
                    i = j
                continue
            if r.action == "nop":
                i += 1
                continue
            if r.action in _RULE_ERRNO:
                return _Outcome(r.action, _RULE_ERRNO[r.action], rule=r, steps=steps)
            if r.action != "lookup" or r.table is None:
                i += 1
                continue
            hit = self._table_lookup(flow.family, r.table, flow, ignore_linkstate)
            if hit.status in ("missing", "none"):
                i += 1
                continue
            assert hit.entry is not None
            route = hit.entry.route
            if hit.status == "throw":
                steps.append(f"rule {r.priority}: table {r.table}: throw {route.dst}, next rule")
                i += 1
                continue
            if hit.status == "error":
                return _Outcome(route.type, _ROUTE_ERRNO[route.type], route, r.table, r, steps=steps)
            if r.suppress_prefixlength is not None and hit.entry.prefixlen <= r.suppress_prefixlength:
                steps.append(
                    f"rule {r.priority}: table {r.table}: {route.dst} suppressed "
                    f"(prefix length {hit.entry.prefixlen} <= "
                    f"suppress_prefixlength {r.suppress_prefixlength})"
                )
                i += 1
                continue
            return _Outcome(route.type, None, route, r.table, r, hit.hop, hit.multipath, steps)
        return _Outcome("none", "ENETUNREACH", steps=steps)

    # ------------------------------------------------------------------ results

    def _outcome_text(self, out: _Outcome, dst: str) -> str:
        if out.route is not None and out.table is not None:
            text = f"table {out.table}: {_route_text(out.route, out.hop)}"
            if out.rule is not None:
                text += f" (rule {out.rule.priority})"
        elif out.rule is not None:
            text = f"rule {out.rule.priority}: action {out.rule.action}"
        else:
            text = f"no route to {dst} in the tables the rules reach"
        if out.error:
            text += f": {out.error}"
        return text

    def _result(
        self,
        out: _Outcome,
        dst: str,
        *,
        type: str | None = None,
        oif: str | None = None,
        prefsrc: str | None = None,
        error: str | None = None,
        lead: str | None = None,
        notes: list[str] | None = None,
        use_hop: bool = True,
    ) -> RouteResult:
        notes = [*out.notes, *(n for n in notes or [] if n not in out.notes)]
        gw = dev = None
        if use_hop and out.hop is not None:
            gw, dev = out.hop
        if out.multipath and use_hop:
            notes.append("multipath: first hop assumed (the kernel picks one by flow hash)")
        reason = self._outcome_text(out, dst)
        if lead:
            reason = f"{lead}; {reason}" if reason else lead
        parts = [reason, *out.steps, *notes]
        return RouteResult(
            type=type or out.type,
            table=out.table,
            oif=oif if oif is not None else dev,
            gateway=gw,
            prefsrc=prefsrc,
            route=out.route,
            rule=out.rule,
            reason="; ".join(p for p in parts if p),
            error=error if error is not None else out.error,
            notes=notes,
        )

    def _fail(self, type: str, error: str, reason: str, notes: list[str] | None = None) -> RouteResult:
        notes = list(notes or [])
        text = "; ".join([reason, *notes])
        return RouteResult(type, None, None, None, None, None, None, text, error, notes)

    # ------------------------------------------------------------------ helpers on addresses

    def _parse(self, addr: str, what: str = "address") -> IPAddress:
        try:
            return ipaddress.ip_address(addr.strip())
        except (ValueError, AttributeError):
            raise InputError(f"bad {what} {addr!r}") from None

    def _route_prefsrc(self, route: Route, hop: tuple[str | None, str | None] | None) -> str | None:
        """fib_result_prefsrc(): the route's src, else inet_select_addr(dev, gateway, route scope)."""
        if route.prefsrc:
            return route.prefsrc
        gw, dev = hop if hop is not None else (route.gateway, route.oif)
        if route.family == "ipv6":
            return None
        if gw is not None and ":" in gw:
            gw = None
        return self.select_source(dev, gw, route.scope, family="ipv4")

    def _local_dev4(self, addr: int) -> str | None:
        """__ip_dev_find(): the device of a local address (the local table decides as a fallback)."""
        if addr in self._local4:
            return self._local4[addr]
        hit = self._table_lookup("ipv4", "local", _Flow("ipv4", addr, 0, "lo", None))
        if hit.status == "ok" and hit.entry is not None and hit.entry.route.type == "local":
            return hit.hop[1] if hit.hop else "lo"
        return None

    # ------------------------------------------------------------------ public API

    def lookup(
        self,
        dst: str,
        src: str | None = None,
        iif: str | None = None,
        oif: str | None = None,
        mark: int = 0,
        proto: str | None = None,
        sport: int | None = None,
        dport: int | None = None,
        tos: int = 0,
        uid: int | None = None,
    ) -> RouteResult:
        """fib_lookup(): rules then tables. `iif` None means a locally generated packet (rules see lo)."""
        d = self._parse(dst, "destination")
        s = int(self._parse(src, "source")) if src else 0
        notes: list[str] = []
        flow = _request_flow(d, s, iif or "lo", oif, mark, tos, proto, sport, dport, uid)
        out = self._fib_lookup(flow)
        prefsrc = None
        if out.route is not None and out.error is None:
            prefsrc = self._route_prefsrc(out.route, out.hop)
        return self._result(out, dst, prefsrc=prefsrc, notes=notes)

    def addr_type(self, addr: str, dev: str | None = None) -> str:
        """inet_addr_type() / inet_dev_addr_type(): the address's type in table local, as addrtype names it.

        With `dev` (`--limit-iface-in/out`), a local-table match on another device counts as UNICAST.
        IPv6: LOCAL for the host's addresses (on `dev` when given) and ::1, MULTICAST for ff00::/8,
        UNSPEC for ::, else UNICAST.
        """
        a = self._parse(addr)
        if a.version == 6:
            if int(a) == 0:
                return "UNSPEC"
            if a in _MCAST6:
                return "MULTICAST"
            if self._is_local6(int(a), dev):
                return "LOCAL"
            return "UNICAST"
        n = int(a)
        if n == 0 or n == _LBCAST:  # ipv4_is_zeronet() is 0.0.0.0 only since Linux 5.3
            return "BROADCAST"
        if a in _MCAST4:
            return "MULTICAST"
        hit = self._table_lookup("ipv4", "local", _Flow("ipv4", n, 0, None, None))
        if hit.status != "ok" or hit.entry is None:
            return "UNICAST"
        hop_dev = hit.hop[1] if hit.hop else None
        if dev is not None and hop_dev is not None and dev != hop_dev:
            return "UNICAST"
        return hit.entry.route.type.upper()

    def addr_types(self, addr: str, dev: str | None = None) -> frozenset[str]:
        """Every addrtype of the address: IPv6 tests flags, so a local address is also UNICAST there."""
        t = self.addr_type(addr, dev)
        if ":" in addr and t == "LOCAL":
            return frozenset({"LOCAL", "UNICAST"})
        return frozenset({t})

    def _is_local6(self, n: int, dev: str | None = None) -> bool:
        if n == 1:
            return True
        owner = self._local6.get(n)
        if owner is not None:
            return dev is None or dev == owner
        hit = self._table_lookup("ipv6", "local", _Flow("ipv6", n, 0, None, None))
        if hit.status == "ok" and hit.entry is not None and hit.entry.route.type == "local":
            return dev is None or hit.hop is None or hit.hop[1] in (dev, None)
        return False

    def is_local(self, addr: str) -> bool:
        """True when addr is one of this host's addresses (a `local` route of table local)."""
        a = self._parse(addr)
        if a.version == 6:
            return self._is_local6(int(a))
        return self.addr_type(addr) == "LOCAL"

    def select_source(
        self, oif: str | None, toward: str | None, scope: str = "universe", *, family: Family | None = None
    ) -> str | None:
        """inet_select_addr(): the source address the kernel picks for a packet leaving oif toward a next hop.

        A primary address of oif with scope <= `scope` whose subnet holds `toward`, else the first such
        primary address of oif, else the first primary non-link-scope address of any link (ifindex order).
        """
        fam = family or ("ipv6" if toward and ":" in toward else self.family)
        if fam == "ipv6":
            return self._select_source6(oif, toward)
        want = _SCOPE_VALUE.get(scope, 0)
        target = int(ipaddress.IPv4Address(toward)) if toward else None
        link = self._links.get(oif) if oif else None
        if link is not None:
            localnet = _SCOPE_VALUE["link"] if self._orconf(oif, "route_localnet") else _SCOPE_VALUE["host"]
            first: str | None = None
            for info in self._v4.get(link.name, []):
                if not info.primary:
                    continue
                if min(_SCOPE_VALUE[info.scope], localnet) > want:
                    continue
                if target is None or ipaddress.IPv4Address(target) in info.network:
                    return str(info.local)
                if first is None:
                    first = str(info.local)
            if first is not None:
                return first
        for lk in sorted(self.ctx.links, key=lambda x: x.index):
            for info in self._v4.get(lk.name, []):
                sv = _SCOPE_VALUE[info.scope]
                if info.primary and sv != _SCOPE_VALUE["link"] and sv <= want:
                    return str(info.local)
        return None

    def _select_source6(self, oif: str | None, toward: str | None) -> str | None:
        """ipv6_dev_get_saddr() reduced to RFC 6724 rules 1 (same address), 2 (scope), 5 (oif), 8 (prefix)."""
        dst = ipaddress.IPv6Address(toward) if toward else ipaddress.IPv6Address("::")
        dscope = _v6_scope(dst)
        oif_only = dst.is_multicast or dscope <= 2
        best: tuple[tuple[int, int, int, int, int], str] | None = None
        for lk in self.ctx.links:
            if not lk.up or (oif_only and oif is not None and lk.name != oif):
                continue
            for a in lk.addresses:
                try:
                    iface = ipaddress.ip_interface(a)
                except ValueError:
                    continue
                if not isinstance(iface, ipaddress.IPv6Interface):
                    continue
                s = _v6_scope(iface.ip)
                if iface.ip.is_loopback and not dst.is_loopback:
                    continue
                scope_key = (0, s) if s >= dscope else (1, -s)
                common = min(iface.network.prefixlen, _common_prefix(int(iface.ip), int(dst)))
                key = (
                    0 if iface.ip == dst else 1,
                    scope_key[0],
                    scope_key[1],
                    0 if lk.name == oif else 1,
                    -common,
                )
                if best is None or key < best[0]:
                    best = (key, str(iface.ip))
        return best[1] if best else None

    # ------------------------------------------------------------------ input

    def route_input(
        self,
        dst: str,
        src: str,
        iif: str,
        mark: int = 0,
        tos: int = 0,
        proto: str | None = None,
        sport: int | None = None,
        dport: int | None = None,
    ) -> RouteResult:
        """ip_route_input_slow(): the routing decision for a packet that arrived on `iif`.

        Not for the loopback re-entry of a locally sent packet: the kernel keeps that packet's
        output route and does not route it again.
        """
        d = self._parse(dst, "destination")
        s = self._parse(src, "source")
        if d.version != s.version:
            raise InputError(f"source {src} and destination {dst} are not of one family")
        if d.version == 6:
            return self._route_input6(d, s, iif, mark, tos, proto, sport, dport)
        dn, sn = int(d), int(s)
        notes: list[str] = []

        def martian(what: str, why: str) -> RouteResult:
            return self._fail("martian", "EINVAL", f"martian {what}: {why}", notes)

        flow = _Flow("ipv4", dn, sn, iif, None, mark, tos, _proto_number(proto), sport or 0, dport or 0, 0)
        if d in _MCAST4:
            in_link = self._links.get(iif)
            if in_link is not None and not in_link.up:
                why = f"multicast {dst} on {iif}, which is down and so has left every group"
                return self._fail("none", "EINVAL", why, notes)
            if s in _MCAST4 or sn == _LBCAST:
                return martian("source", f"{src} is a multicast or limited-broadcast address")
            if s in _LOOPBACK4 and not self._orconf(iif, "route_localnet"):
                return martian("source", f"{src} is a loopback address and route_localnet is off on {iif}")
            if sn == 0:
                if d not in _LOCAL_MCAST4 and _proto_number(proto) != 2:
                    return martian("source", f"{src} is 0.0.0.0 and {dst} is not link-local multicast")
            else:
                mflow = dataclasses.replace(flow, dst=0)
                bad = self._validate_source(mflow, iif, None, notes)
                if bad is not None:
                    return bad
            if dn == _ALL_HOSTS:
                reason = f"multicast {dst}: all-hosts group, delivered locally"
            else:
                reason = f"multicast {dst}: delivered locally if a local socket joined the group (assumed)"
                notes.append("multicast group membership unknown, assumed joined")
            return RouteResult(
                "multicast", None, "lo", None, None, None, None, "; ".join([reason, *notes]), None, notes
            )
        if s in _MCAST4 or sn == _LBCAST:
            return martian("source", f"{src} is a multicast or limited-broadcast address")
        if dn == _LBCAST or (sn == 0 and dn == 0):
            return self._broadcast_input(flow, dst, src, iif, None, notes)
        # ipv4_is_zeronet() is 0.0.0.0 only since Linux 5.3 (0.0.0.0/8 became usable).
        if sn == 0:
            return martian("source", f"{src} is 0.0.0.0 and {dst} is not a broadcast")
        if dn == 0:
            return martian("destination", "0.0.0.0")
        if d in _LOOPBACK4:
            if not self._orconf(iif, "route_localnet"):
                return martian("destination", f"{dst} is a loopback address (route_localnet off on {iif})")
        elif s in _LOOPBACK4 and not self._orconf(iif, "route_localnet"):
            return martian("source", f"{src} is a loopback address and route_localnet is off on {iif}")

        out = self._fib_lookup(flow)
        fwd, fwd_key = self._forwarding(iif)
        if out.error is not None:
            if not fwd:
                return self._result(
                    out,
                    dst,
                    error="EHOSTUNREACH",
                    notes=notes,
                    lead=f"{fwd_key}=0: forwarding disabled, so no route answers EHOSTUNREACH",
                )
            return self._result(out, dst, notes=notes)
        if out.type == "broadcast":
            return self._broadcast_input(flow, dst, src, iif, out, notes)
        if out.type == "local":
            bad = self._validate_source(flow, iif, None, notes)
            if bad is not None:
                return bad
            return self._result(out, dst, oif="lo", notes=notes, use_hop=False)
        if fwd_key is None:
            notes.append("ip_forward unknown, assumed 1")
        if not fwd:
            return self._result(
                out,
                dst,
                type="unreachable",
                error="EHOSTUNREACH",
                notes=notes,
                lead=f"{fwd_key}=0: forwarding disabled, the kernel drops it before FORWARD (EHOSTUNREACH)",
            )
        if out.type != "unicast":
            return self._result(
                out,
                dst,
                type="martian",
                error="EINVAL",
                notes=notes,
                lead=f"martian destination: {dst} routes as {out.type}",
            )
        out_dev = out.hop[1] if out.hop else None
        bad = self._validate_source(flow, iif, out_dev, notes)
        if bad is not None:
            return bad
        return self._result(out, dst, notes=notes)

    def _broadcast_input(
        self, flow: _Flow, dst: str, src: str, iif: str, out: _Outcome | None, notes: list[str]
    ) -> RouteResult:
        if flow.src != 0:
            bad = self._validate_source(dataclasses.replace(flow, dst=0), iif, None, notes)
            if bad is not None:
                return bad
        if out is None:
            out = _Outcome("broadcast", None)
            lead = f"{dst} is the limited broadcast address: local delivery"
        else:
            lead = "broadcast: local delivery"
        return self._result(out, dst, type="broadcast", oif="lo", notes=notes, use_hop=False, lead=lead)

    def _rp_filter(self, iif: str) -> tuple[int, bool]:
        a, d = self._conf("ipv4", iif, "rp_filter")
        if a is None and d is None:
            return 0, False
        # IN_DEV_RPFILTER(): the larger of all and the device; only 1 is strict, any other non-zero
        # value (2, 3, -1 ...) is loose
        return max(a or 0, d or 0), True

    def _validate_source(
        self,
        flow: _Flow,
        iif: str,
        oif: str | None,
        notes: list[str],
    ) -> RouteResult | None:
        """fib_validate_source(): None when the source is acceptable, else the martian/rpfilter result."""
        src = str(ipaddress.IPv4Address(flow.src))
        rpf, known = self._rp_filter(iif)
        if not known:
            notes.append("rp_filter unknown, assumed 0")
        accept_local = self._orconf(iif, "accept_local")
        tx_redirects = self._orconf(iif, "send_redirects", default=1) and self._forwarding(iif)[0]
        if rpf == 0 and (oif != iif or not tx_redirects):
            if accept_local:
                return None
            if not (self._custom_rules4 or self._custom_local4):
                if flow.src in self._local4:
                    return self._fail(
                        "martian", "EINVAL", f"martian source: {src} is one of this host's addresses", notes
                    )
                return None
        # __fib_validate_source(): look the source up as a destination, as if it came back.
        src_valid_mark = self._orconf(iif, "src_valid_mark")
        rev = _Flow(
            "ipv4",
            flow.src,
            flow.dst,
            oif or "lo",
            None,
            flow.mark if src_valid_mark else 0,
            flow.tos,
            flow.proto,
            flow.dport,
            flow.sport,
            0,
        )
        res = self._fib_lookup(rev, ignore_linkstate=False)
        mode = "strict" if rpf == 1 else "loose"
        back = self._outcome_text(res, src)
        if res.error is not None:
            if rpf:
                return self._fail(
                    "rpfilter",
                    "EINVAL",
                    f"rp_filter={rpf} ({mode}) on {iif}: no route back to {src} ({back})",
                    notes,
                )
            return None
        if res.type != "unicast" and not (res.type == "local" and accept_local):
            return self._fail(
                "martian",
                "EINVAL",
                f"martian source: {src} routes as {res.type} ({self._outcome_text(res, src)})",
                notes,
            )
        route = res.route
        devs = {d for _, d, _ in route.nexthops} if route is not None and route.nexthops else set()
        if route is not None and route.oif:
            devs.add(route.oif)
        if iif in devs or (res.type == "local" and iif == "lo"):
            return None
        link = self._links.get(iif)
        no_addr = link is not None and not self._v4.get(link.name)
        if no_addr:
            if rpf:
                why = f"rp_filter={rpf} ({mode}): {iif} has no IPv4 address"
                return self._fail("rpfilter", "EINVAL", why, notes)
            return None
        if rpf == 1:
            back = ", ".join(sorted(d for d in devs if d)) or "another device"
            return self._fail(
                "rpfilter",
                "EINVAL",
                f"rp_filter=1 (strict) on {iif}: the route back to {src} leaves via {back}, not {iif} "
                f"({self._outcome_text(res, src)})",
                notes,
            )
        return None

    def _route_input6(
        self,
        d: IPAddress,
        s: IPAddress,
        iif: str,
        mark: int,
        tos: int,
        proto: str | None,
        sport: int | None,
        dport: int | None,
    ) -> RouteResult:
        notes: list[str] = []
        dst, src = str(d), str(s)
        if s.is_multicast:
            return self._fail("martian", "EINVAL", f"martian source: {src} is multicast", notes)
        link = self._links.get(iif)
        is_lo = iif == "lo" or (link is not None and link.kind == "loopback")
        if (d.is_loopback or s.is_loopback) and not is_lo:
            return self._fail("martian", "EINVAL", f"martian: ::1 on {iif} (not loopback)", notes)
        if d.is_multicast:
            return RouteResult(
                "multicast",
                None,
                "lo",
                None,
                None,
                None,
                None,
                f"multicast {dst}: delivered locally if a local socket joined the group",
                None,
                notes,
            )
        strict = d in _LINK_LOCAL6
        flow = _Flow(
            "ipv6",
            int(d),
            int(s),
            iif,
            iif if strict else None,
            mark,
            tos,
            _proto_number(proto),
            sport or 0,
            dport or 0,
            0,
        )
        out = self._fib_lookup(flow)
        if out.error is not None:
            return self._result(out, dst, notes=notes)
        if out.type == "local":
            return self._result(out, dst, oif="lo", notes=notes, use_hop=False)
        fwd, key = self._forwarding6()
        if key is None:
            notes.append("net.ipv6.conf.all.forwarding unknown, assumed 1")
        if not fwd:
            return self._result(
                out,
                dst,
                type="unreachable",
                notes=notes,
                lead=f"{key}=0: ip6_forward drops it before FORWARD",
            )
        return self._result(out, dst, notes=notes)

    # ------------------------------------------------------------------ output

    def route_output(
        self,
        dst: str,
        src: str | None = None,
        oif: str | None = None,
        mark: int = 0,
        tos: int = 0,
        proto: str | None = None,
        sport: int | None = None,
        dport: int | None = None,
        uid: int | None = None,
        anysrc: bool = False,
    ) -> RouteResult:
        """ip_route_output_key(): the route of a packet a local process sends (rules see iif lo).

        `src` is a bound source address; it must be local unless `anysrc` (IP_FREEBIND/IP_TRANSPARENT).
        `oif` is a bound device (SO_BINDTODEVICE). The chosen source address is `prefsrc`.
        """
        d = self._parse(dst, "destination")
        s = self._parse(src, "source") if src else None
        if s is not None and s.version != d.version:
            raise InputError(f"source {src} and destination {dst} are not of one family")
        notes: list[str] = []
        flow = _request_flow(d, int(s) if s is not None else 0, "lo", oif, mark, tos, proto, sport, dport, uid)
        if d.version == 6:
            return self._route_output6(d, s, flow, anysrc, notes)
        res = self._route_output4(d, s, flow, anysrc, notes)
        if res.ok and res.prefsrc is not None and res.oif not in ("lo", None):
            if ipaddress.IPv4Address(res.prefsrc) in _LOOPBACK4 and not self._orconf(res.oif, "route_localnet"):
                # __mkroute_output(): a loopback source may only leave through the loopback,
                # unless route_localnet is set on the output device (checked by
                # tests/test_kernel_rulesets.py on docker-host, where docker0 has it)
                return self._fail(
                    "martian",
                    "EINVAL",
                    f"source {res.prefsrc} is a loopback address leaving via {res.oif}",
                    notes,
                )
        return res

    def _output_route(
        self, out: _Outcome, dst: str, src: str | None, notes: list[str]
    ) -> tuple[Route, RouteResult | None]:
        """The route a successful output lookup found, and the result when it is a local route: the
        packet loops back through lo, from the bound source, else the route's preferred source or the
        destination itself (both families)."""
        route = out.route
        assert route is not None
        if out.type != "local":
            return route, None
        psrc = src or route.prefsrc or dst
        return route, self._result(out, dst, oif="lo", prefsrc=psrc, notes=notes, use_hop=False)

    def _route_output4(
        self, d: IPAddress, s: IPAddress | None, flow: _Flow, anysrc: bool, notes: list[str]
    ) -> RouteResult:
        dst = str(d)
        src = str(s) if s is not None else None
        oif = flow.oif
        dn = int(d)
        sn = int(s) if s is not None else 0
        if s is not None:
            if s in _MCAST4 or sn == _LBCAST or sn == 0:
                return self._fail("martian", "EINVAL", f"source {src} cannot be a packet's source", notes)
            if oif is None and (d in _MCAST4 or dn == _LBCAST):
                dev = self._local_dev4(sn)
                if dev is None:
                    return self._fail("none", "ENETUNREACH", f"source {src} is not a local address", notes)
                typ = "broadcast" if dn == _LBCAST else "multicast"
                return RouteResult(
                    typ,
                    None,
                    dev,
                    None,
                    src,
                    None,
                    None,
                    f"{typ} {dst} leaves via {dev}, the device of source {src}",
                    None,
                    notes,
                )
            unless = "the kernel refuses it unless IP_FREEBIND/IP_TRANSPARENT"
            if not anysrc and self._local_dev4(sn) is None:
                return self._fail(
                    "none",
                    "ENETUNREACH",
                    f"source {src} is not a local address ({unless})",
                    notes,
                )
        if oif is not None:
            if self._links and oif not in self._links:
                return self._fail("none", "ENODEV", f"no device {oif}", notes)
            out_link = self._links.get(oif)
            if out_link is not None and not out_link.up:
                return self._fail("none", "ENETUNREACH", f"bound to {oif}, which is down", notes)
            if d in _LOCAL_MCAST4 or dn == _LBCAST or flow.proto == 2:
                typ = "broadcast" if dn == _LBCAST else "multicast"
                psrc = src or self.select_source(oif, None, "link", family="ipv4")
                return RouteResult(
                    typ,
                    None,
                    oif,
                    None,
                    psrc,
                    None,
                    None,
                    f"{typ} {dst} sent on the bound device {oif}",
                    None,
                    notes,
                )
        if dn == 0:
            a = src or "127.0.0.1"
            return RouteResult(
                "local",
                None,
                "lo",
                None,
                a,
                None,
                None,
                f"destination 0.0.0.0 means this host ({a}): local",
                None,
                notes,
            )
        out = self._fib_lookup(flow)
        if out.error is not None:
            if oif is not None:
                psrc = src or self.select_source(oif, None, "link", family="ipv4")
                typ = "broadcast" if dn == _LBCAST else "multicast" if d in _MCAST4 else "unicast"
                lead = f"{self._outcome_text(out, dst)}; bound to {oif}: the kernel assumes {dst} is on-link"
                return RouteResult(
                    typ,
                    None,
                    oif,
                    None,
                    psrc,
                    None,
                    out.rule,
                    "; ".join([lead, *out.steps, *out.notes, *notes]),
                    None,
                    [*out.notes, *notes],
                )
            return self._result(out, dst, notes=notes)
        route, local = self._output_route(out, dst, src, notes)
        if local is not None:
            return local
        psrc = src or self._route_prefsrc(route, out.hop)
        typ = out.type
        if dn == _LBCAST:
            typ = "broadcast"
        elif d in _MCAST4:
            typ = "multicast"
        res = self._result(out, dst, type=typ, prefsrc=psrc, notes=notes)
        # __mkroute_output(): a broadcast has no next hop; a multicast keeps the gateway only of a
        # route at least as specific as /4.
        if typ == "broadcast" or (typ == "multicast" and route.network().prefixlen < 4):
            res.gateway = None
        return res

    def _route_output6(
        self, d: IPAddress, s: IPAddress | None, flow: _Flow, anysrc: bool, notes: list[str]
    ) -> RouteResult:
        dst = str(d)
        oif = flow.oif
        if oif is not None and self._links and oif not in self._links:
            return self._fail("none", "ENODEV", f"no device {oif}", notes)
        if s is not None and not anysrc and not self._is_local6(int(s)):
            return self._fail("none", "EADDRNOTAVAIL", f"source {s} is not a local address", notes)
        # ip6_route_output_flags(): the bound device is strict without a source address (and always
        # for link-local, multicast and loopback destinations: rt6_need_strict()); with one it only
        # breaks ties.
        flow.oif_strict = s is None or d.is_multicast or d in _LINK_LOCAL6 or d.is_loopback
        out = self._fib_lookup(flow)
        if out.error is not None:
            return self._result(out, dst, notes=notes)
        route, local = self._output_route(out, dst, str(s) if s is not None else None, notes)
        if local is not None:
            return local
        dev = out.hop[1] if out.hop else None
        psrc6: str | None = str(s) if s else (route.prefsrc or self._select_source6(dev, dst))
        typ = "multicast" if d.is_multicast else out.type
        return self._result(out, dst, type=typ, prefsrc=psrc6, notes=notes)
