"""A synthetic host for dumps that come without one.

A bare `iptables-save` dump says nothing about routes or addresses, and
without them no packet reaches INPUT or FORWARD (nothing is routable).  To
compare what two bare dumps do, both are traced on the same made-up host:

* one link per interface the rules name (`-i`/`-o`; a wildcard `eth+` becomes
  `eth0`, or the next free number), plus one link no rule names (`nfx0`), so
  both sides of `! -i eth0` are reachable;
* link k gets 100.64.k.1/24 (IPv6: fd00:64:k::1/64), carrier-grade NAT space,
  or the first of a few other spaces when the rules name that one (bogon
  filters drop 100.64.0.0/10): probes from and to the host's neighbours
  should not be singled out by any rule;
* a default route via .254 of the first link, and a route for every
  `-d PREFIX -o IFACE` pair the rules state, so a packet can leave where a rule
  expects it;
* forwarding on, rp_filter off.

The host is described in the comparison's warnings; it is a guess, and both
sides get the same guess, so it never creates a difference by itself.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from nftrace.diff.words import rule_opts
from nftrace.host.model import HostContext, Link, Route
from nftrace.ruleset.model import Ruleset

EXTRA_LINK = "nfx0"
_VALID_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")


def valid_ifname(name: str) -> bool:
    """dev_valid_name: 1..15 bytes, no '/', ':' or whitespace, not '.' or '..'."""
    return bool(_VALID_NAME.match(name)) and name not in (".", "..")


def named_interfaces(rulesets: Iterable[Ruleset]) -> tuple[list[str], list[str]]:
    """(exact names, wildcard prefixes) of every -i/-o the rules mention, sorted."""
    exact: set[str] = set()
    prefixes: set[str] = set()
    for rs in rulesets:
        for t in rs.tables.values():
            for c in t.chains.values():
                for r in c.rules:
                    for o in rule_opts(r.text):
                        if o.name in ("-i", "-o", "--in-interface", "--out-interface") and o.value:
                            v = o.value
                            if v.endswith("+"):
                                if v[:-1]:
                                    prefixes.add(v[:-1])
                            else:
                                exact.add(v)
    return sorted(exact), sorted(prefixes)


def concrete_interfaces(rulesets: Iterable[Ruleset]) -> list[str]:
    """One concrete name per interface the rules name (wildcards given a free number), sorted."""
    exact, prefixes = named_interfaces(rulesets)
    names = {n for n in exact if valid_ifname(n) and n != "lo"}
    for p in prefixes:
        for k in range(100):
            cand = f"{p}{k}"
            if cand not in names and cand not in exact:
                if valid_ifname(cand) and cand != "lo":
                    names.add(cand)
                break
    return sorted(names)


def synthetic_host(rulesets: list[Ruleset]) -> HostContext:
    """The made-up host described in the module docstring."""
    from nftrace.host.parse import derive_routes

    family = rulesets[0].family if rulesets else "ipv4"
    v6 = family == "ipv6"
    names = concrete_interfaces(rulesets)
    if EXTRA_LINK not in names:
        names.append(EXTRA_LINK)
    if len(names) < 2:
        names.insert(0, "eth0")
    lo = Link(index=1, name="lo", kind="loopback", up=True, addresses=["127.0.0.1/8", "::1/128"])
    links = [lo]
    space = free_space(rulesets)
    base = int(space.network_address)
    for k, name in enumerate(names):
        if v6:
            addr = str(ipaddress.ip_interface(f"{ipaddress.IPv6Address(base + (k << 64) + 1)}/64"))
        else:
            addr = str(ipaddress.ip_interface(f"{ipaddress.IPv4Address(base + ((k % 256) << 8) + 1)}/24"))
        links.append(Link(index=k + 2, name=name, kind="veth", up=True, mac=_mac(k), addresses=[addr]))
    routes = derive_routes(links)
    first = names[0]
    gw = str(ipaddress.ip_address(base + (0xFE if v6 else 254)))
    fam = "ipv6" if v6 else "ipv4"
    routes.append(Route(table="main", type="unicast", dst="default", gateway=gw, oif=first, family=fam))  # type: ignore[arg-type]
    taken = {r.dst for r in routes if r.table == "main"}
    for prefix, dev in _out_routes(rulesets, set(names)):
        if prefix in taken:
            continue
        taken.add(prefix)
        routes.append(Route(table="main", type="unicast", dst=prefix, oif=dev, scope="link", family=fam))  # type: ignore[arg-type]
    sysctls = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0"}
    if v6:
        sysctls["net.ipv6.conf.all.forwarding"] = "1"
    for name in names:
        sysctls[f"net.ipv4.conf.{name}.rp_filter"] = "0"
    desc = ", ".join(f"{lk.name} {lk.addresses[0]}" for lk in links[1:])
    host = HostContext(links=links, routes=routes, sysctls=sysctls, empty=False)
    host.provenance.append(
        f"no host context: a synthetic host is assumed ({desc}; default route via {gw} dev {first}; "
        "forwarding on, rp_filter off)"
    )
    return host


# Address space for the synthetic links, first one no rule mentions: carrier-grade NAT space,
# then public space real firewalls rarely name (bogon filters often drop 100.64.0.0/10).
_SPACES_V4 = ("100.64.0.0/16", "44.128.0.0/16", "25.100.0.0/16", "151.101.0.0/16", "100.65.0.0/16")
_SPACES_V6 = ("fd00:64::/32", "2001:db8:6400::/40", "fd64:64::/32")


def free_space(rulesets: list[Ruleset]) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The first candidate address space that no -s/-d prefix (longer than /7) of the rules overlaps."""
    v6 = bool(rulesets) and rulesets[0].family == "ipv6"
    cands = [ipaddress.ip_network(c) for c in (_SPACES_V6 if v6 else _SPACES_V4)]
    mentioned: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for rs in rulesets:
        for t in rs.tables.values():
            for c in t.chains.values():
                for r in c.rules:
                    for o in rule_opts(r.text):
                        if o.name in ("-s", "-d", "--source", "--destination", "--src", "--dst"):
                            for part in o.value.split(","):
                                try:
                                    net = ipaddress.ip_network(part, strict=False)
                                except ValueError:
                                    continue
                                if net.version == (6 if v6 else 4) and net.prefixlen >= 8:
                                    mentioned.append(net)
    for cand in cands:
        if not any(cand.overlaps(m) for m in mentioned):
            return cand
    return cands[0]


def _mac(k: int) -> str:
    return f"02:6e:66:78:{(k >> 8) & 0xFF:02x}:{k & 0xFF:02x}"


def _out_routes(rulesets: list[Ruleset], names: set[str]) -> list[tuple[str, str]]:
    """(prefix, interface) for every rule that says `-d PREFIX ... -o IFACE` (neither negated)."""
    out: list[tuple[str, str]] = []
    for rs in rulesets:
        for t in rs.tables.values():
            for c in t.chains.values():
                for r in c.rules:
                    dst = dev = None
                    for o in rule_opts(r.text):
                        if o.name in ("-d", "--destination", "--dst") and not o.neg:
                            dst = o.value
                        elif o.name in ("-o", "--out-interface") and not o.neg and not o.value.endswith("+"):
                            dev = o.value
                    if dst and dev and dev in names:
                        try:
                            net = ipaddress.ip_network(dst, strict=False)
                        except ValueError:
                            continue
                        if net.prefixlen == 0 or net.is_loopback or net.is_multicast:
                            continue
                        out.append((str(net), dev))
    out.sort()
    return out
