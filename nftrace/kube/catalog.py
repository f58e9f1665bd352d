"""The Service catalogue kube-proxy's rules imply, and Docker's published ports.

kube-proxy (iptables mode) writes one chain family per Service port, named by a
hash of the port's identity:

    nat KUBE-SERVICES   -d CLUSTER_IP --dport P -j KUBE-SVC-H   "ns/name:port cluster IP"
                        -d EXTERNAL_IP ...      -j KUBE-EXT-H   "... external IP"
                        -d LB_IP ...            -j KUBE-FW-H    "... loadbalancer IP" (source ranges)
                        -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS (last)
    nat KUBE-NODEPORTS  --dport NODE_PORT -j KUBE-EXT-H
    nat KUBE-EXT-H      external traffic: masquerade, then KUBE-SVC-H (Cluster) or KUBE-SVL-H (Local)
    nat KUBE-SVC-H      ! -s CLUSTER_CIDR -j KUBE-MARK-MASQ; affinity (-m recent --rcheck);
                        the endpoint cascade: -m statistic --probability 1/n -j KUBE-SEP-E1, 1/(n-1) ...
    nat KUBE-SVL-H      the same cascade over the node-local endpoints only
    nat KUBE-SEP-E      -s ENDPOINT -j KUBE-MARK-MASQ (hairpin); -j DNAT --to-destination IP:PORT
    filter KUBE-SERVICES / KUBE-EXTERNAL-SERVICES: REJECT "has no endpoints", DROP "has no local endpoints"

Older layouts are read too: KUBE-XLB-H (1.19-1.23, external policy Local),
KUBE-MARK-DROP, masquerade rules in KUBE-SERVICES, and the 2015 KUBE-PORTALS-*
chains whose KUBE-SVC chains DNAT directly.  Names come from the rule comments
when present, else from the chain hashes.

Endpoint probabilities are exact: each `--probability p` is what the kernel
applies (userspace stores round(p * 2^31), the kernel compares 31 random bits,
see nftrace.ruleset.ext.misc.kernel_probability), and the cascade is computed
with rational arithmetic, so a Service's endpoint shares sum to 1 exactly when
its chain always ends in a DNAT.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from nftrace.kube.ruleview import RuleView, view
from nftrace.ruleset.ext.misc import kernel_probability
from nftrace.ruleset.model import Chain, Rule, Ruleset, Table

if TYPE_CHECKING:
    from nftrace.host.fib import Fib
    from nftrace.host.model import HostContext
    from nftrace.ruleset.ipsets import IpSets

SCHEMA = "nftrace.services/1"

_NAME = re.compile(r"(?P<name>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*:[\w.-]*)")
_HASHED = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-", "KUBE-SEP-")
_ENTRY_CHAINS = ("KUBE-SERVICES", "KUBE-PORTALS-CONTAINER", "KUBE-PORTALS-HOST")
IPVS_CHAINS = ("KUBE-LOAD-BALANCER", "KUBE-NODE-PORT", "KUBE-IPVS-FILTER", "KUBE-IPVS-OUT-FILTER",
               "KUBE-SOURCE-RANGES-FIREWALL", "KUBE-LOAD-BALANCER-LOCAL", "KUBE-LOAD-BALANCER-FW")  # fmt: skip
IPVS_SETS = ("KUBE-CLUSTER-IP", "KUBE-LOOP-BACK", "KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL",
             "KUBE-LOAD-BALANCER", "KUBE-LOAD-BALANCER-LOCAL", "KUBE-LOAD-BALANCER-FW",
             "KUBE-LOAD-BALANCER-SOURCE-IP", "KUBE-LOAD-BALANCER-SOURCE-CIDR", "KUBE-NODE-PORT-TCP",
             "KUBE-NODE-PORT-LOCAL-TCP", "KUBE-NODE-PORT-UDP", "KUBE-NODE-PORT-LOCAL-UDP",
             "KUBE-NODE-PORT-SCTP-HASH", "KUBE-NODE-PORT-LOCAL-SCTP-HASH", "KUBE-HEALTH-CHECK-NODE-PORT",
             "KUBE-IPVS-IPS", "KUBE-IPVS-IPS-V6")  # fmt: skip
_AFFINITY_OPTS = ("rcheck", "update")
# options that do not make a rule conditional for the load-balancing walk
_NEUTRAL = frozenset({"comment", "protocol", "mode", "probability", "every", "packet", "set", "name", "mask",
                      "rsource", "rdest", "reap", "fragment"})  # fmt: skip


def hash_of(chain: str) -> str | None:
    """The service/endpoint hash of a kube-proxy chain name (KUBE-SVC-ABC -> ABC)."""
    for p in _HASHED:
        if chain.startswith(p):
            return chain[len(p) :]
    return None


def service_name(comment: str | None) -> str | None:
    """`ns/name:port` named by a kube-proxy comment, or None."""
    if not comment:
        return None
    m = _NAME.search(comment)
    return m.group("name") if m else None


def endpoint_text(ip: str, port: int | None) -> str:
    if port is None:
        return ip
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def split_endpoint(text: str) -> tuple[str, int | None]:
    """`1.2.3.4:80`, `[fd00::1]:80`, `1.2.3.4`, `1.2.3.4-1.2.3.9:80-90` (first of each range)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    host = host.split("-")[0]
    port = port.split("-")[0]
    return host, (int(port) if port.isdigit() else None)


def _fmt_prob(p: Fraction) -> float:
    return float(p)


# ---------------------------------------------------------------------------- model


@dataclass
class Endpoint:
    ip: str
    port: int | None
    probability: Fraction
    chain: str  # the KUBE-SEP chain (or the chain whose rule DNATs)
    local: bool | None = None
    rule: int | None = None  # position of the rule in the service chain that picks it
    dnat_rule: int | None = None  # position of the DNAT rule in `chain`

    @property
    def address(self) -> str:
        return endpoint_text(self.ip, self.port)

    def to_json(self) -> dict[str, Any]:
        return {
            "ip": self.ip,
            "port": self.port,
            "probability": _fmt_prob(self.probability),
            "local": self.local,
            "chain": self.chain,
            "rule": self.rule,
        }


@dataclass
class Masquerade:
    chain: str
    rule: int
    condition: str  # the rule's matches
    reason: str  # plain words
    table: str = "nat"

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "chain": self.chain, "rule": self.rule, "condition": self.condition,
                "reason": self.reason}  # fmt: skip


@dataclass
class Service:
    name: str
    proto: str | None = None
    cluster_ip: str | None = None
    port: int | None = None
    node_port: int | None = None
    health_check_node_port: int | None = None
    localhost_node_port: bool = False
    external_ips: list[str] = field(default_factory=list)
    lb_ips: list[str] = field(default_factory=list)
    source_ranges: list[str] = field(default_factory=list)
    affinity: dict[str, Any] | None = None
    internal_policy: str | None = None  # Cluster | Local
    external_policy: str | None = None  # Cluster | Local | None (no external entry point)
    endpoints: list[Endpoint] = field(default_factory=list)
    local_endpoints: list[Endpoint] = field(default_factory=list)
    fallthrough: Fraction = Fraction(0)  # share of new connections leaving the service chain un-DNATed
    dropped: Fraction = Fraction(0)  # share marked for drop (KUBE-MARK-DROP) in the service chain
    no_endpoints: bool = False
    no_local_endpoints: bool = False
    masquerade: list[Masquerade] = field(default_factory=list)
    chains: dict[str, str] = field(default_factory=dict)
    hash: str | None = None

    @property
    def namespace(self) -> str | None:
        return self.name.split("/", 1)[0] if "/" in self.name else None

    def to_json(self) -> dict[str, Any]:
        policy: dict[str, Any] = {"internal": self.internal_policy, "external": self.external_policy}
        return {
            "name": self.name,
            "proto": self.proto,
            "cluster_ip": self.cluster_ip,
            "port": self.port,
            "node_port": self.node_port,
            "health_check_node_port": self.health_check_node_port,
            "localhost_node_port": self.localhost_node_port,
            "external_ips": list(self.external_ips),
            "lb_ips": list(self.lb_ips),
            "source_ranges": list(self.source_ranges),
            "affinity": self.affinity,
            "traffic_policy": policy,
            "endpoints": [e.to_json() for e in self.endpoints],
            "local_endpoints": [e.to_json() for e in self.local_endpoints],
            "no_endpoints": self.no_endpoints,
            "no_local_endpoints": self.no_local_endpoints,
            "unbalanced_share": _fmt_prob(self.fallthrough),
            "drop_share": _fmt_prob(self.dropped),
            "masquerade": [m.to_json() for m in self.masquerade],
            "chains": dict(self.chains),
        }


@dataclass
class DockerPort:
    proto: str | None
    host_ip: str | None  # None: every address of the host
    host_port: int | None
    container_ip: str
    container_port: int | None
    bridge: str | None
    mode: str  # "userland-proxy" (the bridge's own traffic is left to docker-proxy) or "hairpin-nat"
    hairpin_masquerade: bool
    localhost: str  # how 127.0.0.1:PORT is served: "docker-proxy", "kernel (route_localnet)", "no"
    chain: str
    rule: int
    table: str = "nat"

    @property
    def label(self) -> str:
        host = self.host_ip or "*"
        if ":" in host:
            host = f"[{host}]"
        return f"docker {host}:{self.host_port}/{self.proto or 'all'}"

    def to_json(self) -> dict[str, Any]:
        return {
            "proto": self.proto,
            "host_ip": self.host_ip,
            "host_port": self.host_port,
            "container_ip": self.container_ip,
            "container_port": self.container_port,
            "bridge": self.bridge,
            "mode": self.mode,
            "hairpin_masquerade": self.hairpin_masquerade,
            "localhost": self.localhost,
            "chain": self.chain,
            "rule": self.rule,
        }


@dataclass
class RuleName:
    """What a rule of a kube-proxy/Docker chain is about (for the trace annotator)."""

    service: str
    endpoint: str | None = None


@dataclass
class Catalog:
    mode: str | None = None  # iptables | ipvs | None (no kube-proxy rules)
    layout: str | None = None
    cluster_cidrs: list[str] = field(default_factory=list)
    masq_mark: str | None = None
    services: list[Service] = field(default_factory=list)
    docker: list[DockerPort] = field(default_factory=list)
    ipvs: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    rule_names: dict[tuple[str, str, int], RuleName] = field(default_factory=dict)

    def _lookup(self) -> dict[str, dict[Any, list[Service]]]:
        """Indexes of the services, built once (findings ask per packet; 10k services);
        rebuilt if the list of services changed size."""
        cached = self.__dict__.get("_index")
        if cached is not None and self.__dict__.get("_index_n") == len(self.services):
            return cached  # type: ignore[no-any-return]
        idx: dict[str, dict[Any, list[Service]]] = {"name": {}, "cip": {}, "addr": {}, "np": {}, "ep": {}}
        for s in self.services:
            idx["name"].setdefault(s.name, []).append(s)
            idx["cip"].setdefault(s.cluster_ip, []).append(s)
            for a in dict.fromkeys([s.cluster_ip, *s.external_ips, *s.lb_ips]):
                idx["addr"].setdefault(a, []).append(s)
            idx["np"].setdefault(s.node_port, []).append(s)
            for addr in dict.fromkeys(e.address for e in s.endpoints):
                idx["ep"].setdefault(addr, []).append(s)
        self.__dict__["_index"] = idx
        self.__dict__["_index_n"] = len(self.services)
        return idx

    def service(self, name: str) -> Service | None:
        found = self._lookup()["name"].get(name)
        return found[0] if found else None

    def find(self, text: str) -> list[Service]:
        """Services named `ns/name:port`, `ns/name` (every port) or `name:port`/`name` in any namespace."""
        exact = [s for s in self.services if s.name == text]
        if exact:
            return exact
        out = []
        for s in self.services:
            base, _, port = s.name.partition(":")
            ns, _, nm = base.partition("/")
            want_base, _, want_port = text.partition(":")
            if ":" in text and want_port != port:
                continue
            if want_base in (base, nm):
                out.append(s)
        return out

    def by_cluster_ip(self, ip: str) -> list[Service]:
        return list(self._lookup()["cip"].get(ip, ()))

    def by_address(self, ip: str) -> list[Service]:
        return list(self._lookup()["addr"].get(ip, ()))

    def by_node_port(self, port: int) -> list[Service]:
        return list(self._lookup()["np"].get(port, ()))

    def endpoint_owner(self, address: str) -> list[Service]:
        return list(self._lookup()["ep"].get(address, ()))

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "mode": self.mode,
            "layout": self.layout,
            "cluster_cidrs": list(self.cluster_cidrs),
            "masquerade_mark": self.masq_mark,
            "services": [s.to_json() for s in self.services],
            "docker": [d.to_json() for d in self.docker],
            "ipvs": self.ipvs,
            "warnings": list(self.warnings),
        }


# ---------------------------------------------------------------------------- building


def build_catalog(ruleset: Ruleset, host: HostContext | None = None, ipsets: IpSets | None = None) -> Catalog:
    """The catalogue of `ruleset`; `host` (when known) decides which endpoints are on this node."""
    return _Builder(ruleset, host, ipsets).build()


@dataclass
class _Walk:
    hits: list[tuple[Rule, Rule, Fraction]] = field(default_factory=list)  # (picking rule, DNAT rule, share)
    fall: Fraction = Fraction(0)
    dropped: Fraction = Fraction(0)
    notes: list[str] = field(default_factory=list)


class _Builder:
    def __init__(self, rs: Ruleset, host: HostContext | None, ipsets: IpSets | None) -> None:
        self.rs = rs
        self.host = host
        self.ipsets = ipsets
        self.nat: Table | None = rs.tables.get("nat")
        self.filter: Table | None = rs.tables.get("filter")
        self.cat = Catalog()
        self.by_name: dict[str, Service] = {}
        self.by_hash: dict[str, Service] = {}
        self._views: dict[int, RuleView] = {}
        self._fib: Fib | None = None

    # -------------------------------------------------------------- helpers
    def v(self, r: Rule) -> RuleView:
        rv = self._views.get(id(r))
        if rv is None:
            rv = self._views[id(r)] = view(r)
        return rv

    def nat_chain(self, name: str) -> Chain | None:
        return self.nat.chains.get(name) if self.nat is not None else None

    def filter_chain(self, name: str) -> Chain | None:
        return self.filter.chains.get(name) if self.filter is not None else None

    def svc_for(self, name: str | None, h: str | None = None) -> Service:
        """The service of a comment name and/or a chain hash, created on first sight."""
        s: Service | None = None
        if h is not None:
            s = self.by_hash.get(h)
        if s is None and name is not None:
            s = self.by_name.get(name)
        if s is None:
            if name is None and h is not None:
                name = self._name_for_hash(h) or f"KUBE-SVC-{h}"
            s = Service(name=name or "?")
            self.by_name[s.name] = s
            self.cat.services.append(s)
        if h is not None and s.hash is None:
            s.hash = h
            self.by_hash[h] = s
        return s

    def _name_for_hash(self, h: str) -> str | None:
        for prefix in ("KUBE-SVC-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SVL-", "KUBE-XLB-"):
            ch = self.nat_chain(prefix + h)
            if ch is None:
                continue
            for r in ch.rules:
                n = service_name(self.v(r).comment)
                if n:
                    return n
        return None

    def name_rule(self, table: str, r: Rule, service: str, endpoint: str | None = None) -> None:
        key = (table, r.chain, r.index)
        if key not in self.cat.rule_names or (endpoint and not self.cat.rule_names[key].endpoint):
            self.cat.rule_names[key] = RuleName(service, endpoint)

    # -------------------------------------------------------------- build
    def build(self) -> Catalog:
        self._mode()
        self._masq_mark()
        if self.nat is not None:
            for entry in _ENTRY_CHAINS:
                ch = self.nat_chain(entry)
                if ch is not None:
                    self._entry(ch)
            self._nodeports()
            # service chains no entry rule points at (partial dumps, unnamed chains)
            targets = {r.jump for c in self.nat.chains.values() for r in c.rules if r.jump}
            for name in list(self.nat.chains):
                h = hash_of(name)
                if h is not None and name.startswith(("KUBE-SVC-", "KUBE-SVL-")) and h not in self.by_hash:
                    if name in targets:
                        continue  # reached from another service chain (2015 layout), not a service of its own
                    self.svc_for(None, h)
        self._filter_rules()
        for s in self.cat.services:
            self._service_chains(s)
        self._cidrs()
        self._docker()
        self._ipvs()
        self.cat.services.sort(key=lambda s: s.name)
        return self.cat

    def _mode(self) -> None:
        names: set[str] = set()
        for t in self.rs.tables.values():
            names.update(t.chains)
        text_sets = " ".join(r.text for t in self.rs.tables.values() for c in t.chains.values() for r in c.rules)
        if any(c in names for c in ("KUBE-LOAD-BALANCER", "KUBE-NODE-PORT", "KUBE-IPVS-FILTER")) or (
            "--match-set KUBE-CLUSTER-IP" in text_sets
        ):
            self.cat.mode, self.cat.layout = "ipvs", "ipvs"
        elif "KUBE-SERVICES" in names or any(n.startswith(("KUBE-SVC-", "KUBE-SEP-")) for n in names):
            self.cat.mode = "iptables"
            if any(n.startswith("KUBE-PORTALS-") for n in names):
                self.cat.layout = "2015, KUBE-PORTALS-*"
            elif any(n.startswith("KUBE-XLB-") for n in names):
                self.cat.layout = "1.19-1.23, KUBE-XLB-*"
            elif any(n.startswith(("KUBE-EXT-", "KUBE-SVL-")) for n in names) or "KUBE-PROXY-FIREWALL" in names:
                self.cat.layout = "1.24+, KUBE-EXT-*/KUBE-SVL-*"
            else:
                self.cat.layout = "iptables"
        elif any(n.startswith("KUBE-PORTALS-") or n.startswith("KUBE-NODEPORT-") for n in names):
            self.cat.mode, self.cat.layout = "userspace", "userspace"

    def _masq_mark(self) -> None:
        ch = self.nat_chain("KUBE-MARK-MASQ")
        if ch is None:
            return
        for r in ch.rules:
            rv = self.v(r)
            for o in ("or-mark", "set-xmark", "set-mark"):
                val = rv.value(o, "target")
                if val:
                    self.cat.masq_mark = val.split("/")[0]
                    return

    # -------------------------------------------------------------- entry points
    def _entry(self, ch: Chain) -> None:
        for r in ch.rules:
            rv = self.v(r)
            t = rv.target
            if t is None:
                continue
            name = service_name(rv.comment)
            comment = (rv.comment or "").lower()
            h = hash_of(t)
            if h is None:
                if t == "KUBE-MARK-MASQ" and name:
                    s = self.svc_for(name)
                    s.masquerade.append(self._masq(r, "KUBE-SERVICES"))
                    self.name_rule("nat", r, s.name)
                continue
            s = self.svc_for(name, h)
            self.name_rule("nat", r, s.name)
            dst, port, proto = rv.dst, rv.dport, rv.proto
            if proto and not s.proto:
                s.proto = proto
            if "external ip" in comment:
                kind = "external"
            elif "loadbalancer" in comment or "load balancer" in comment:
                kind = "lb"
            elif "cluster ip" in comment or "portal for" in comment:
                kind = "cluster"
            elif t.startswith("KUBE-FW-"):
                kind = "lb"
            elif t.startswith(("KUBE-SVC-", "KUBE-SVL-")) and (s.cluster_ip is None or s.cluster_ip == dst):
                kind = "cluster"
            else:
                kind = "external"
            if kind == "cluster":
                s.cluster_ip = dst or s.cluster_ip
                s.port = port if port is not None else s.port
                s.chains.setdefault("cluster", t)
                s.internal_policy = "Local" if t.startswith("KUBE-SVL-") else "Cluster"
            elif dst:
                lst = s.lb_ips if kind == "lb" else s.external_ips
                if dst not in lst:
                    lst.append(dst)
                if s.port is None:
                    s.port = port

    def _nodeports(self) -> None:
        ch = self.nat_chain("KUBE-NODEPORTS")
        if ch is None:
            return
        for r in ch.rules:
            rv = self.v(r)
            t = rv.target
            name = service_name(rv.comment)
            if t is None:
                continue
            h = hash_of(t)
            if h is None:
                if t == "KUBE-MARK-MASQ" and name:
                    s = self.svc_for(name)
                    s.masquerade.append(self._masq(r, "KUBE-NODEPORTS"))
                    self.name_rule("nat", r, s.name)
                continue
            s = self.svc_for(name, h)
            self.name_rule("nat", r, s.name)
            if rv.proto and not s.proto:
                s.proto = rv.proto
            if rv.dst and rv.dst.startswith("127."):
                s.localhost_node_port = True
            if rv.dport is not None:
                s.node_port = rv.dport
            s.chains.setdefault("nodeport", t)

    def _filter_rules(self) -> None:
        for cname in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL"):
            ch = self.filter_chain(cname)
            if ch is None:
                continue
            for r in ch.rules:
                rv = self.v(r)
                name = service_name(rv.comment)
                comment = (rv.comment or "").lower()
                t = rv.target
                if name is None and not (t in ("REJECT", "DROP") and cname != "KUBE-PROXY-FIREWALL"):
                    continue
                if name is None:
                    name = f"<unnamed> {rv.dst or '*'}:{rv.dport}/{rv.proto}"
                fw = re.search(r"KUBE-FW-(\w+)", rv.comment or "")
                s = self.svc_for(name, fw.group(1) if fw else None)
                self.name_rule("filter", r, s.name)
                if rv.proto and not s.proto:
                    s.proto = rv.proto
                local_dst = _dst_type(rv) == "LOCAL"
                if cname == "KUBE-NODEPORTS" and "health check" in comment:
                    s.health_check_node_port = rv.dport
                elif cname == "KUBE-SERVICES" and t == "REJECT":
                    s.no_endpoints = True
                    if rv.dst and s.cluster_ip is None:
                        s.cluster_ip, s.port = rv.dst, rv.dport
                elif cname == "KUBE-EXTERNAL-SERVICES" and t in ("REJECT", "DROP"):
                    if t == "REJECT" or "no endpoints" in comment and "local" not in comment:
                        s.no_endpoints = True
                    else:
                        s.no_local_endpoints = True
                        s.external_policy = "Local"
                    if local_dst and rv.dport is not None:
                        s.node_port = s.node_port or rv.dport
                    elif rv.dst and rv.dst not in s.external_ips and rv.dst not in s.lb_ips:
                        s.external_ips.append(rv.dst)
                        if s.port is None:
                            s.port = rv.dport
                elif cname == "KUBE-PROXY-FIREWALL" and rv.dst:
                    if rv.dst not in s.lb_ips:
                        s.lb_ips.append(rv.dst)

    # -------------------------------------------------------------- per service
    def _service_chains(self, s: Service) -> None:
        h = s.hash
        if (
            h is not None
            and self.nat is not None
            and not any(
                p + h in self.nat.chains for p in ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-")
            )
        ):
            self.cat.warnings.append(f"{s.name}: named by rules, but its nat chains (*-{h}) are not in this dump")
            h = None
        if h is None or self.nat is None:
            # no chains (a Service without endpoints): the policies cannot be read from the rules
            if s.no_local_endpoints:
                s.external_policy = "Local"
            return
        for key, prefix in (("svc", "KUBE-SVC-"), ("svl", "KUBE-SVL-"), ("ext", "KUBE-EXT-"), ("fw", "KUBE-FW-"),
                            ("xlb", "KUBE-XLB-")):  # fmt: skip
            if prefix + h in self.nat.chains:
                s.chains[key] = prefix + h
        main = s.chains.get("cluster") or s.chains.get("svc") or s.chains.get("svl")
        if main is not None and main.startswith(("KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-")):
            main = s.chains.get("svc") or s.chains.get("svl")
        if main is not None and main in self.nat.chains:
            w = self._walk(main, Fraction(1), 0, set())
            s.endpoints = self._endpoints(s, w)
            s.fallthrough, s.dropped = w.fall, w.dropped
            for n in w.notes:
                self.cat.warnings.append(f"{s.name}: {n}")
            if s.endpoints and w.fall > 0:
                self.cat.warnings.append(
                    f"{s.name}: {float(w.fall):.6g} of new connections leave {main} without a DNAT "
                    "(its last endpoint rule is itself probabilistic)"
                )
        local_chain = s.chains.get("svl") or s.chains.get("xlb")
        if local_chain is not None:
            w = self._walk(local_chain, Fraction(1), 0, set())
            s.local_endpoints = self._endpoints(s, w)
            if w.dropped > 0 and not s.local_endpoints:
                s.no_local_endpoints = True
            local_chains = {e.chain for e in s.local_endpoints}
            for e in s.endpoints:
                e.local = e.chain in local_chains
            for e in s.local_endpoints:
                e.local = True
        else:
            for e in s.endpoints:
                e.local = self._is_local(e.ip)
        s.affinity = self._affinity(s)
        self._masquerades(s)
        self._name_chain_rules(s)
        self._source_ranges(s)
        if s.internal_policy is None and (s.chains.get("svc") or s.chains.get("svl")):
            s.internal_policy = "Cluster" if s.chains.get("svc") else "Local"
        self._external_policy(s)

    def _external_policy(self, s: Service) -> None:
        external = s.node_port is not None or s.external_ips or s.lb_ips
        if not external:
            if s.external_policy is not None and not s.no_local_endpoints:
                s.external_policy = None
            return
        if s.external_policy == "Local":
            return
        ext = s.chains.get("ext")
        local = "xlb" in s.chains or s.no_local_endpoints
        if ext is not None and self.nat is not None:
            local = local or any(self.v(r).target == s.chains.get("svl") for r in self.nat.chains[ext].rules)
        s.external_policy = "Local" if local else "Cluster"

    def _walk(self, cname: str, p: Fraction, depth: int, seen: set[str]) -> _Walk:
        """Where the first packet of a new connection entering `cname` is DNATed, with what share."""
        w = _Walk()
        assert self.nat is not None
        ch = self.nat.chains.get(cname)
        if ch is None or depth > 8 or cname in seen:
            w.fall = p
            return w
        seen = seen | {cname}
        for r in ch.rules:
            if p == 0:
                break
            rv = self.v(r)
            t = rv.target
            if t is None or t == "KUBE-MARK-MASQ" or t in ("MARK", "LOG", "NFLOG", "CONNMARK"):
                continue  # non-terminating
            if any(rv.has(o, "recent") for o in _AFFINITY_OPTS):
                continue  # session affinity: only later connections of a known client
            conds = [o for o in rv.opts if o.module != "target" and o.name not in _NEUTRAL]
            conds = [o for o in conds if not (o.module in ("tcp", "udp", "sctp") and not o.values)]
            if conds:
                if t.startswith("KUBE-SEP-") or t == "DNAT":
                    w.notes.append(
                        f"{cname} rule {r.index} picks an endpoint only when "
                        f"{' '.join(rv.conditions())}: taken as always true"
                    )
                else:
                    continue  # a source-dependent branch (KUBE-EXT/KUBE-XLB): not part of the cascade
            q = _share(rv)
            if q is None:
                w.notes.append(f"{cname} rule {r.index}: a statistic match other than --mode random, taken as 1/n")
                q = _nth_share(rv)
            take = p * q
            if t == "DNAT":
                w.hits.append((r, r, take))
                p -= take
            elif t in ("KUBE-MARK-DROP", "DROP", "REJECT"):
                # KUBE-MARK-DROP only marks; filter KUBE-FIREWALL drops the marked packet later
                w.dropped += take
                p -= take
            elif self.nat.chains.get(t) is not None:
                sub = self._walk(t, take, depth + 1, seen)
                w.hits.extend((r if depth == 0 else pick, dn, sh) for pick, dn, sh in sub.hits)
                w.dropped += sub.dropped
                w.notes.extend(sub.notes)
                if rv.goto:
                    p -= take
                    w.fall += sub.fall  # a goto's end returns past this chain
                else:
                    p = p - take + sub.fall
            elif t in ("ACCEPT", "RETURN"):
                w.fall += take
                p -= take
        w.fall += p
        return w

    def _endpoints(self, s: Service, w: _Walk) -> list[Endpoint]:
        out: dict[tuple[str, str, int | None], Endpoint] = {}
        for pick, dn, share in w.hits:
            rv = self.v(dn)
            to = rv.value("to-destination", "target")
            if to is None:
                continue
            ip, port = split_endpoint(to)
            if port is None:
                port = s.port
            key = (dn.chain, ip, port)
            if key in out:
                out[key].probability += share
                continue
            ep = Endpoint(ip=ip, port=port, probability=share, chain=dn.chain, rule=pick.index, dnat_rule=dn.index)
            out[key] = ep
            # the comment of the picking rule ("ns/name:port -> IP:PORT") must agree with the DNAT
            m = re.search(r"->\s*(\S+)", self.v(pick).comment or "")
            if m and pick is not dn:
                cip, cport = split_endpoint(m.group(1))
                if (cip, cport) != (ip, port):
                    self.cat.warnings.append(
                        f"{s.name}: {pick.chain} rule {pick.index} says -> {m.group(1)} but "
                        f"{dn.chain} rule {dn.index} DNATs to {endpoint_text(ip, port)}"
                    )
        return list(out.values())

    def _affinity(self, s: Service) -> dict[str, Any] | None:
        assert self.nat is not None
        for key in ("svc", "svl", "xlb"):
            cname = s.chains.get(key)
            if cname is None:
                continue
            for r in self.nat.chains[cname].rules:
                rv = self.v(r)
                if any(rv.has(o, "recent") for o in _AFFINITY_OPTS):
                    secs = rv.value("seconds", "recent")
                    return {
                        "type": "ClientIP",
                        "timeout": int(secs) if secs and secs.isdigit() else None,
                        "chain": cname,
                    }
        return None

    def _masq(self, r: Rule, kind: str, s: Service | None = None) -> Masquerade:
        rv = self.v(r)
        conds = rv.conditions(skip=("probability",))
        parts: list[str] = []
        for o in rv.opts:
            if o.module == "target" or o.name in ("comment", "protocol"):
                continue
            if o.name == "source":
                if o.negated:
                    parts.append(f"the source is outside {o.value} (not a pod)")
                elif kind == "KUBE-SEP":
                    parts.append(f"the source is the endpoint {(o.value or '').removesuffix('/32')} itself (hairpin)")
                else:
                    parts.append(f"the source is in {o.value}")
            elif o.name == "src-type":
                parts.append(("the source is not " if o.negated else "the source is ") + f"a {o.value} address")
            elif o.name in ("dport", "destination-port") and kind in ("KUBE-SVC", "KUBE-NODEPORTS"):
                if o.value and o.value.isdigit() and r.chain.startswith("KUBE-SVC") and not rv.dst:
                    parts.append(f"it came in on node port {o.value}")
            elif o.name == "destination" and not o.negated and s is not None and rv.dst != s.cluster_ip:
                parts.append(f"it is addressed to {rv.dst}")
        if not parts:
            why = {
                "KUBE-EXT": "always, for traffic from outside (externalTrafficPolicy: Cluster)",
                "KUBE-FW": "always, for traffic to the load-balancer IP",
                "KUBE-NODEPORTS": "always, for traffic to the node port",
                "KUBE-SERVICES": "always (masquerade-all)",
                "KUBE-SVC": "always (masquerade-all)",
            }.get(kind, "always")
        else:
            why = "when " + " and ".join(parts)
        return Masquerade(chain=r.chain, rule=r.index, condition=" ".join(conds) or "(all)", reason=why)

    def _masquerades(self, s: Service) -> None:
        assert self.nat is not None
        chains = [s.chains[k] for k in ("fw", "ext", "xlb", "svc", "svl") if k in s.chains]
        chains += sorted({e.chain for e in s.endpoints + s.local_endpoints})
        for cname in chains:
            kind = cname.rsplit("-", 1)[0]
            for r in self.nat.chains[cname].rules:
                if self.v(r).target == "KUBE-MARK-MASQ":
                    s.masquerade.append(self._masq(r, kind, s))

    def _name_chain_rules(self, s: Service) -> None:
        assert self.nat is not None
        eps = {e.chain: e for e in s.endpoints + s.local_endpoints}
        for key in ("fw", "ext", "xlb", "svc", "svl"):
            cname = s.chains.get(key)
            if cname is None:
                continue
            for r in self.nat.chains[cname].rules:
                t = self.v(r).target
                ep = eps.get(t or "")
                self.name_rule("nat", r, s.name, ep.address if ep else None)
                if t == "DNAT":
                    for e in eps.values():
                        if e.chain == cname and e.dnat_rule == r.index:
                            self.name_rule("nat", r, s.name, e.address)
        for cname, e in eps.items():
            ch = self.nat.chains.get(cname)
            if ch is None or not cname.startswith("KUBE-SEP-"):
                continue
            for r in ch.rules:
                self.name_rule("nat", r, s.name, e.address)

    def _source_ranges(self, s: Service) -> None:
        assert self.nat is not None
        fw = s.chains.get("fw")
        if fw is None:
            return
        for r in self.nat.chains[fw].rules:
            rv = self.v(r)
            src = rv.src
            if src and rv.target and rv.target != "KUBE-MARK-DROP" and src not in s.source_ranges:
                s.source_ranges.append(src)

    def _is_local(self, ip: str) -> bool | None:
        """Whether an endpoint address sits on this node: from the host's routes, None when unknown."""
        if self.host is None or self.host.empty or not (self.host.routes or self.host.links):
            return None
        if self._fib is None:
            from nftrace.host.fib import Fib

            fam = "ipv6" if ":" in ip else "ipv4"
            self._fib = Fib(self.host, fam)  # type: ignore[arg-type]
        try:
            if self._fib.is_local(ip):
                return True  # hostNetwork endpoint on this node
            r = self._fib.lookup(ip)
        except Exception:  # noqa: BLE001 - an odd address must not break the catalogue
            return None
        if not r.ok or r.type != "unicast":
            return None
        if r.gateway:
            return False
        link = self.host.link(r.oif) if r.oif else None
        if link is None:
            return None
        is_bridge = link.kind == "bridge" or any(lk.master == link.name for lk in self.host.links)
        if is_bridge or (link.kind or "") in ("veth",) or link.name.startswith(("cali", "lxc", "veth")):
            return True
        default = self._fib.lookup("8.8.8.8" if ":" not in ip else "2001:4860:4860::8888")
        # on-link on the node's uplink: another host of the LAN
        return not (default.ok and default.oif == r.oif)

    # -------------------------------------------------------------- cluster CIDRs
    def _cidrs(self) -> None:
        found: list[str] = []
        for s in self.cat.services:
            for m in s.masquerade:
                cm = re.search(r"! -s (\S+)", m.condition)
                if cm and cm.group(1) not in found:
                    found.append(cm.group(1))
        if self.nat is not None:
            for ch in self.nat.chains.values():
                if not ch.name.startswith(("KUBE-EXT-", "KUBE-XLB-")):
                    continue
                for r in ch.rules:
                    rv = self.v(r)
                    o = rv.get("source", "")
                    comment = rv.comment or ""
                    if o is None or o.negated or not o.value or not (rv.target or "").startswith("KUBE-SVC-"):
                        continue
                    if ("pod traffic" in comment or "Redirect pods" in comment) and o.value not in found:
                        found.append(o.value)
        self.cat.cluster_cidrs = [c for c in found if "/" in c and not c.endswith(("/32", "/128"))]

    # -------------------------------------------------------------- Docker
    def _docker(self) -> None:
        if self.nat is None:
            return
        subnets: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
        hairpins: set[tuple[str, str | None, int | None]] = set()
        post = self.nat.chains.get("POSTROUTING")
        for r in post.rules if post is not None else []:
            rv = self.v(r)
            if rv.target != "MASQUERADE":
                continue
            so, oo = rv.get("source", ""), rv.get("out-interface", "")
            if so is not None and oo is not None and oo.negated and so.value and oo.value:
                with contextlib.suppress(ValueError):
                    subnets.append((ipaddress.ip_network(so.value, strict=False), oo.value))
            dst = rv.dst
            if rv.src and dst and rv.src.split("/")[0] == dst:
                hairpins.add((dst, rv.proto, rv.dport))
        out_rule = self.nat.chains.get("OUTPUT")
        loop_excluded = False
        for r in out_rule.rules if out_rule is not None else []:
            rv = self.v(r)
            if rv.target == "DOCKER":
                o = rv.get("destination", "")
                loop_excluded = bool(o and o.negated and (o.value or "").startswith(("127.", "::1")))
        for cname in ("DOCKER", "DOCKER-INGRESS"):
            ch = self.nat.chains.get(cname)
            if ch is None:
                continue
            for r in ch.rules:
                rv = self.v(r)
                if rv.target != "DNAT":
                    continue
                to = rv.value("to-destination", "target")
                if not to:
                    continue
                cip, cport = split_endpoint(to)
                ii = rv.get("in-interface", "")
                bridge = ii.value if ii is not None and ii.negated else None
                if bridge is None:
                    try:
                        a = ipaddress.ip_address(cip)
                        bridge = next((br for net, br in subnets if a in net), None)
                    except ValueError:
                        bridge = None
                if bridge is None and cname == "DOCKER-INGRESS":
                    bridge = "docker_gwbridge"
                host_ip = rv.dst
                mode = "userland-proxy" if ii is not None and ii.negated else "hairpin-nat"
                if host_ip and not host_ip.startswith(("127.", "::1")):
                    localhost = "no"
                elif loop_excluded and not host_ip:
                    localhost = "docker-proxy"
                elif host_ip and ":" in host_ip:
                    localhost = "kernel"
                elif loop_excluded:
                    localhost = "docker-proxy"
                else:
                    localhost = "kernel (route_localnet)"
                port = cport if cport is not None else rv.dport
                dp = DockerPort(
                    proto=rv.proto,
                    host_ip=host_ip,
                    host_port=rv.dport,
                    container_ip=cip,
                    container_port=port,
                    bridge=bridge,
                    mode=mode,
                    hairpin_masquerade=(cip, rv.proto, port) in hairpins,
                    localhost=localhost,
                    chain=cname,
                    rule=r.index,
                )
                self.cat.docker.append(dp)
                self.name_rule("nat", r, dp.label, endpoint_text(cip, port))

    # -------------------------------------------------------------- IPVS
    def _ipvs(self) -> None:
        if self.cat.mode != "ipvs":
            return
        chains = sorted({c for t in self.rs.tables.values() for c in t.chains if c in IPVS_CHAINS})
        sets = sorted(
            {
                m.group(1)
                for t in self.rs.tables.values()
                for c in t.chains.values()
                for r in c.rules
                for m in re.finditer(r"--match-set (\S+)", r.text)
            }  # fmt: skip
        )
        info: dict[str, Any] = {"chains": chains, "sets": sets, "cluster_ips": None, "node_ports": None}
        if self.ipsets is not None:
            cs = self.ipsets.get("KUBE-CLUSTER-IP")
            if cs is not None:
                info["cluster_ips"] = [",".join(e) for e in cs.entries]
            nps: list[str] = []
            for name in ("KUBE-NODE-PORT-TCP", "KUBE-NODE-PORT-UDP", "KUBE-NODE-PORT-SCTP-HASH"):
                st = self.ipsets.get(name)
                if st is not None:
                    nps += [f"{name.split('-')[3].lower()}:{','.join(e)}" for e in st.entries]
            info["node_ports"] = nps if nps else None
        self.cat.ipvs = info
        self.cat.warnings.append(
            "kube-proxy runs in IPVS mode: its iptables rules only accept and masquerade; the Services' "
            "endpoints and their weights live in the kernel's IPVS tables (ipvsadm -Ln), not in these rules"
        )
        # cluster CIDR from the masquerade rule of KUBE-SERVICES
        ch = self.nat_chain("KUBE-SERVICES")
        for r in ch.rules if ch is not None else []:
            o = self.v(r).get("source", "")
            if o is not None and o.negated and o.value and o.value not in self.cat.cluster_cidrs:
                self.cat.cluster_cidrs.append(o.value)


def _share(rv: RuleView) -> Fraction | None:
    """The chance the rule's statistic match holds (1 without one), as the kernel applies it."""
    if "statistic" not in rv.modules:
        return Fraction(1)
    mode = rv.value("mode", "statistic")
    if mode != "random":
        return None
    o = rv.get("probability", "statistic")
    if o is None or not o.value:
        return Fraction(1)
    try:
        p = float(o.value)
    except ValueError:
        return Fraction(1)
    q = Fraction(kernel_probability(p))
    return 1 - q if o.negated else q


def _nth_share(rv: RuleView) -> Fraction:
    every = rv.value("every", "statistic")
    n = int(every) if every and every.isdigit() and int(every) > 0 else 1
    o = rv.get("every", "statistic")
    q = Fraction(1, n)
    return 1 - q if o is not None and o.negated else q


def _dst_type(rv: RuleView) -> str | None:
    o = rv.get("dst-type", "addrtype")
    return o.value.upper() if o is not None and o.value and not o.negated else None
