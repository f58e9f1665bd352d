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

At 10,000 Services (115,000 rules) reading everything takes seconds, and a trace
needs a few Services: `build_catalog` reads the entry points (which Services
exist, their addresses and ports, the names of the entry rules) and each
Service reads its own chains on first use.  The result is the same as reading
everything at once; `Catalog.to_json` does.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from nftrace.gcquiet import quiet_gc
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
_KINDS = ("KUBE-SVC-", "KUBE-SEP-", "KUBE-PORTALS-", "KUBE-XLB-", "KUBE-EXT-", "KUBE-SVL-", "KUBE-NODEPORT-")
_AFFINITY_OPTS = ("rcheck", "update")
_ZERO = Fraction(0)  # immutable: shared
_ARROW = re.compile(r"->\s*(\S+)")
_NOT_SOURCE = re.compile(r"! -s (\S+)")
# options that do not make a rule conditional for the load-balancing walk
_NEUTRAL = frozenset({"comment", "protocol", "mode", "probability", "every", "packet", "set", "name", "mask",
                      "rsource", "rdest", "reap", "fragment"})  # fmt: skip


def hash_of(chain: str) -> str | None:
    """The service/endpoint hash of a kube-proxy chain name (KUBE-SVC-ABC -> ABC)."""
    if not chain.startswith(_HASHED):
        return None
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


class Endpoint:
    """One endpoint of a Service: where its share of new connections is DNATed to."""

    __slots__ = ("ip", "port", "probability", "chain", "rule", "dnat_rule", "_local", "_where")

    def __init__(
        self,
        ip: str,
        port: int | None,
        probability: Fraction,
        chain: str,  # the KUBE-SEP chain (or the chain whose rule DNATs)
        local: bool | None = None,
        rule: int | None = None,  # position of the rule in the service chain that picks it
        dnat_rule: int | None = None,  # position of the DNAT rule in `chain`
    ) -> None:
        self.ip = ip
        self.port = port
        self.probability = probability
        self.chain = chain
        self.rule = rule
        self.dnat_rule = dnat_rule
        self._local = local
        self._where: Callable[[str], bool | None] | None = None

    @property
    def local(self) -> bool | None:
        """Whether the endpoint is on this node (None: unknown); from the routes, asked on first use."""
        if self._where is not None:
            where, self._where = self._where, None
            self._local = where(self.ip)
        return self._local

    @local.setter
    def local(self, value: bool | None) -> None:
        self._where = None
        self._local = value

    @property
    def address(self) -> str:
        return endpoint_text(self.ip, self.port)

    def _key(self) -> tuple[Any, ...]:
        return (self.ip, self.port, self.probability, self.chain, self.local, self.rule, self.dnat_rule)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Endpoint) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it replaces

    def __repr__(self) -> str:
        return (f"Endpoint(ip={self.ip!r}, port={self.port!r}, probability={self.probability!r}, "
                f"chain={self.chain!r}, local={self.local!r}, rule={self.rule!r}, dnat_rule={self.dnat_rule!r})")  # fmt: skip

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


class Service:
    """One Service port.

    What its entry rules say (name, protocol, addresses, ports: the fields set in __init__) is read
    when the catalogue is built; what its own chains say (endpoints and their shares, affinity,
    masquerade rules, traffic policies, source ranges: the properties) is read on first use of any
    of them, so a catalogue of 10,000 Services is cheap when a trace needs only a few."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.proto: str | None = None
        self.cluster_ip: str | None = None
        self.port: int | None = None
        self.node_port: int | None = None
        self.health_check_node_port: int | None = None
        self.localhost_node_port = False
        self.external_ips: list[str] = []
        self.lb_ips: list[str] = []
        self.no_endpoints = False
        self.hash: str | None = None
        self._source_ranges: list[str] = []
        self._affinity: dict[str, Any] | None = None
        self._internal_policy: str | None = None  # Cluster | Local
        self._external_policy: str | None = None  # Cluster | Local | None (no external entry point)
        self._endpoints: list[Endpoint] = []
        self._local_endpoints: list[Endpoint] = []
        self._fallthrough = _ZERO  # share of new connections leaving the service chain un-DNATed
        self._dropped = _ZERO  # share marked for drop (KUBE-MARK-DROP) in the service chain
        self._no_local_endpoints = False
        self._masquerade: list[Masquerade] = []
        self._chains: dict[str, str] = {}
        self._order = 0  # position in the order the rules named the services
        self._pending: _Builder | None = None  # reads the service's chains on first use
        self._masq_pending: _Builder | None = None  # and its masquerade rules on theirs

    def _resolve(self) -> None:
        b = self._pending
        if b is not None:
            self._pending = None
            with quiet_gc():
                b.details(self)

    @property
    def source_ranges(self) -> list[str]:
        self._resolve()
        return self._source_ranges

    @source_ranges.setter
    def source_ranges(self, value: list[str]) -> None:
        self._source_ranges = value

    @property
    def affinity(self) -> dict[str, Any] | None:
        self._resolve()
        return self._affinity

    @affinity.setter
    def affinity(self, value: dict[str, Any] | None) -> None:
        self._affinity = value

    @property
    def internal_policy(self) -> str | None:
        self._resolve()
        return self._internal_policy

    @internal_policy.setter
    def internal_policy(self, value: str | None) -> None:
        self._internal_policy = value

    @property
    def external_policy(self) -> str | None:
        self._resolve()
        return self._external_policy

    @external_policy.setter
    def external_policy(self, value: str | None) -> None:
        self._external_policy = value

    @property
    def endpoints(self) -> list[Endpoint]:
        self._resolve()
        return self._endpoints

    @endpoints.setter
    def endpoints(self, value: list[Endpoint]) -> None:
        self._endpoints = value

    @property
    def local_endpoints(self) -> list[Endpoint]:
        self._resolve()
        return self._local_endpoints

    @local_endpoints.setter
    def local_endpoints(self, value: list[Endpoint]) -> None:
        self._local_endpoints = value

    @property
    def fallthrough(self) -> Fraction:
        self._resolve()
        return self._fallthrough

    @fallthrough.setter
    def fallthrough(self, value: Fraction) -> None:
        self._fallthrough = value

    @property
    def dropped(self) -> Fraction:
        self._resolve()
        return self._dropped

    @dropped.setter
    def dropped(self, value: Fraction) -> None:
        self._dropped = value

    @property
    def no_local_endpoints(self) -> bool:
        self._resolve()
        return self._no_local_endpoints

    @no_local_endpoints.setter
    def no_local_endpoints(self, value: bool) -> None:
        self._no_local_endpoints = value

    def _resolve_masquerade(self) -> None:
        self._resolve()
        b = self._masq_pending
        if b is not None:  # a trace never needs them: read on their own first use
            self._masq_pending = None
            with quiet_gc():
                b.masquerades(self)

    @property
    def masquerade(self) -> list[Masquerade]:
        self._resolve_masquerade()
        return self._masquerade

    @masquerade.setter
    def masquerade(self, value: list[Masquerade]) -> None:
        self._masquerade = value

    @property
    def chains(self) -> dict[str, str]:
        self._resolve()
        return self._chains

    @chains.setter
    def chains(self, value: dict[str, str]) -> None:
        self._chains = value

    @property
    def namespace(self) -> str | None:
        return self.name.split("/", 1)[0] if "/" in self.name else None

    def __repr__(self) -> str:
        return f"Service(name={self.name!r}, proto={self.proto!r}, cluster_ip={self.cluster_ip!r}, port={self.port!r})"

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


RuleKey = tuple[str, str, int]  # (table, chain, rule position)


def _propose(names: dict[RuleKey, RuleName], key: RuleKey, service: str, endpoint: str | None) -> bool:
    """A rule named twice keeps its first name, unless only the later one names an endpoint."""
    cur = names.get(key)
    if cur is None or (endpoint and not cur.endpoint):
        names[key] = RuleName(service, endpoint)
        return True
    return False


def _fold(names: dict[Any, RuleName], key: Any, name: RuleName) -> None:
    """_propose with a RuleName made already."""
    cur = names.get(key)
    if cur is None or (name.endpoint and not cur.endpoint):
        names[key] = name


class RuleNames(Mapping[RuleKey, RuleName]):
    """(table, chain, rule) -> RuleName.  While the catalogue is still lazy, asking for a rule of a
    Service's own chain (KUBE-SVC/SVL/EXT/FW/XLB/SEP) reads just the Services that can name it."""

    def __init__(self) -> None:
        self._data: dict[RuleKey, RuleName] = {}
        self._builder: _Builder | None = None

    def get(self, key: RuleKey, default: Any = None) -> Any:
        b = self._builder
        if b is None:
            n = self._data.get(key)
        else:
            names = b._chain_names.get(key[:2])  # the names of the rule's chain, once they are read
            n = names.get(key[2]) if names is not None else b.rule_name(key)
        return default if n is None else n

    def __getitem__(self, key: RuleKey) -> RuleName:
        n = self.get(key)
        if n is None:
            raise KeyError(key)
        return n  # type: ignore[no-any-return]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and len(key) == 3 and self.get(key) is not None

    def _complete(self) -> dict[RuleKey, RuleName]:
        if self._builder is not None:
            self._builder.finish()
        return self._data

    def __iter__(self) -> Iterator[RuleKey]:
        return iter(self._complete())

    def __len__(self) -> int:
        return len(self._complete())

    def __bool__(self) -> bool:
        b = self._builder
        if b is not None:
            if b.names_first or b.names_last:
                return True
            if not b.created:
                return False  # no Service: nothing else names a rule
        return len(self) > 0

    def __repr__(self) -> str:
        return f"RuleNames({self._complete()!r})"


class Catalog:
    """The Services and Docker ports a dump implies (see build_catalog).

    `services` (sorted by name), `mode`, `layout`, `masq_mark`, `docker` and `ipvs` are read when the
    catalogue is built; each Service reads its own chains on first use; `warnings`, `cluster_cidrs`
    and iterating `rule_names` read every Service."""

    def __init__(self) -> None:
        self.mode: str | None = None  # iptables | ipvs | None (no kube-proxy rules)
        self.layout: str | None = None
        self.masq_mark: str | None = None
        self.services: list[Service] = []
        self.docker: list[DockerPort] = []
        self.ipvs: dict[str, Any] | None = None
        self._cluster_cidrs: list[str] = []
        self._warnings: list[str] = []
        self._rule_names = RuleNames()
        self._builder: _Builder | None = None
        self._index: dict[str, dict[Any, list[Service]]] | None = None
        self._index_n = -1
        self._ep_index: dict[str, list[Service]] | None = None
        self._ep_index_n = -1

    def _complete(self) -> None:
        if self._builder is not None:
            self._builder.finish()

    @property
    def cluster_cidrs(self) -> list[str]:
        self._complete()
        return self._cluster_cidrs

    @cluster_cidrs.setter
    def cluster_cidrs(self, value: list[str]) -> None:
        self._cluster_cidrs = value

    @property
    def warnings(self) -> list[str]:
        self._complete()
        return self._warnings

    @warnings.setter
    def warnings(self, value: list[str]) -> None:
        self._warnings = value

    @property
    def rule_names(self) -> RuleNames:
        return self._rule_names

    def __repr__(self) -> str:
        return f"Catalog(mode={self.mode!r}, layout={self.layout!r}, services={len(self.services)}, docker={len(self.docker)})"

    def _lookup(self) -> dict[str, dict[Any, list[Service]]]:
        """Indexes of the services by what their entry rules say, built once (findings ask per
        packet; 10k services); rebuilt if the list of services changed size."""
        if self._index is not None and self._index_n == len(self.services):
            return self._index
        idx: dict[str, dict[Any, list[Service]]] = {"name": {}, "cip": {}, "addr": {}, "np": {}}
        for s in self.services:
            idx["name"].setdefault(s.name, []).append(s)
            idx["cip"].setdefault(s.cluster_ip, []).append(s)
            for a in dict.fromkeys([s.cluster_ip, *s.external_ips, *s.lb_ips]):
                idx["addr"].setdefault(a, []).append(s)
            idx["np"].setdefault(s.node_port, []).append(s)
        self._index, self._index_n = idx, len(self.services)
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
        """The Services with an endpoint at `address` (IP:PORT), in the order of `services`."""
        if self._builder is not None:
            # the order of `services`: by name, then in the order the rules named them
            cands = sorted(self._builder.endpoint_candidates(address), key=lambda s: (s.name, s._order))
            return [s for s in cands if any(e.address == address for e in s.endpoints)]
        if self._ep_index is None or self._ep_index_n != len(self.services):
            idx: dict[str, list[Service]] = {}
            for s in self.services:
                for addr in dict.fromkeys(e.address for e in s.endpoints):
                    idx.setdefault(addr, []).append(s)
            self._ep_index, self._ep_index_n = idx, len(self.services)
        return list(self._ep_index.get(address, ()))

    def to_json(self) -> dict[str, Any]:
        self._complete()
        with quiet_gc():  # a document of a million objects at 10k Services
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
    """The catalogue of `ruleset`; `host` (when known) decides which endpoints are on this node.

    The entry points (KUBE-SERVICES, KUBE-NODEPORTS, the filter chains, Docker) are read now; each
    Service's own chains when first asked for (see Service). Reading pauses the garbage collector
    (quiet_gc): tens of thousands of objects, none garbage, next to a parsed dump of millions."""
    with quiet_gc():
        return _Builder(ruleset, host, ipsets).build()


@dataclass
class _Walk:
    hits: list[tuple[Rule, Rule, Fraction]] = field(default_factory=list)  # (picking rule, DNAT rule, share)
    fall: Fraction = Fraction(0)
    dropped: Fraction = Fraction(0)
    notes: list[str] = field(default_factory=list)


_SVC_PREFIXES = (("svc", "KUBE-SVC-"), ("svl", "KUBE-SVL-"), ("ext", "KUBE-EXT-"), ("fw", "KUBE-FW-"),
                 ("xlb", "KUBE-XLB-"))  # fmt: skip
_OWN_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-")


class _Builder:
    """Reads the catalogue: `build` the entry points, `details` one Service, `finish` all of it.

    Everything a Service's own chains decide is kept per Service (its warnings, the names it gives
    rules), and `finish` puts them together in the order the Services were first named, so a lazy
    catalogue ends up exactly as one read in a single pass."""

    def __init__(self, rs: Ruleset, host: HostContext | None, ipsets: IpSets | None) -> None:
        self.rs = rs
        self.host = host
        self.ipsets = ipsets
        self.nat: Table | None = rs.tables.get("nat")
        self.filter: Table | None = rs.tables.get("filter")
        self.cat = Catalog()
        self.created: list[Service] = []  # in the order the rules named them
        self.by_name: dict[str, Service] = {}
        self.by_hash: dict[str, Service] = {}
        self._views: dict[int, RuleView] = {}
        self._fibs: dict[str, Fib] = {}
        self._local: dict[str, bool | None] = {}
        self._default: dict[str, Any] = {}
        # rule names given by the entry points (before the Services' own) and by Docker (after)
        self.names_first: dict[RuleKey, RuleName] = {}
        self.names_last: dict[RuleKey, RuleName] = {}
        self._naming: dict[RuleKey, RuleName] = self.names_first
        # per Service (by _order): its warnings and the names it gives its chains' rules
        self.svc_warnings: dict[int, list[str]] = {}
        self.svc_names: dict[int, list[tuple[RuleKey, RuleName]]] = {}
        self.tail_warnings: list[str] = []
        self.ipvs_cidrs: list[str] = []
        # the names of each chain's rules: the entry points' as they are given, a Service's own chains'
        # when first asked for (rule_name)
        self._chain_names: dict[tuple[str, str], dict[int, RuleName]] = {}
        # built on demand

        self._parents: dict[str, list[str]] | None = None
        self._starts: dict[str, list[Service]] | None = None
        self._above: dict[frozenset[str], list[Service]] = {}
        self._dnat_chains: dict[str, set[str]] | None = None
        self._finished = False

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
            s._order = len(self.created)
            self.by_name[s.name] = s
            self.created.append(s)
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
        """A name given by an entry point (entry chains, filter chains, Docker)."""
        key = (table, r.chain, r.index)
        if _propose(self._naming, key, service, endpoint):
            self._chain_names.setdefault((table, r.chain), {})[r.index] = self._naming[key]

    def _svc_name_rule(self, s: Service, r: Rule, endpoint: str | None = None) -> None:
        """A name Service `s` gives a rule of its own chains (nat)."""
        self.svc_names.setdefault(s._order, []).append((("nat", r.chain, r.index), RuleName(s.name, endpoint)))

    def _warn(self, s: Service, text: str) -> None:
        self.svc_warnings.setdefault(s._order, []).append(text)

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
            orphans = [
                name
                for name in self.nat.chains
                if name.startswith(("KUBE-SVC-", "KUBE-SVL-")) and name[9:] not in self.by_hash
            ]
            if orphans:
                targets = {r.jump for c in self.nat.chains.values() for r in c.rules if r.jump}
                for name in orphans:
                    h = name[9:]
                    if h in self.by_hash or name in targets:
                        continue  # reached from another service chain (2015 layout), not a service of its own
                    self.svc_for(None, h)
        self._filter_rules()
        self._naming = self.names_last
        self._docker()
        self._ipvs()
        cat = self.cat
        cat.services = sorted(self.created, key=lambda s: s.name)
        if not self.created:
            self.finish()
            return cat
        for s in self.created:
            s._pending = self
        cat._builder = self
        cat._rule_names._builder = self
        return cat

    def finish(self) -> None:
        """Read every Service, then what needs them all: the warnings, cluster CIDRs and rule names."""
        if self._finished:
            return
        self._finished = True
        with quiet_gc():
            self._finish()

    def _finish(self) -> None:
        cat = self.cat
        self._views.clear()  # the entry points' (the views a Service reads are dropped after it, below)
        for s in self.created:
            s._resolve_masquerade()  # cluster_cidrs needs them all
            self._views.clear()
        cat._builder = None
        cat._rule_names._builder = None
        warnings: list[str] = []
        for s in self.created:
            warnings += self.svc_warnings.get(s._order, [])
        cat._warnings = warnings + self.tail_warnings
        names = dict(self.names_first)
        for s in self.created:
            for key, n in self.svc_names.get(s._order, []):
                _fold(names, key, n)
        for key, n in self.names_last.items():
            _fold(names, key, n)
        cat._rule_names._data = names
        cidrs = self._cidrs()
        for c in self.ipvs_cidrs:
            if c not in cidrs:
                cidrs.append(c)
        cat._cluster_cidrs = cidrs
        # everything is read: let go of what only the lazy reading needed
        self._views.clear()
        self.svc_names.clear()
        self._chain_names.clear()
        self._parents = self._starts = self._dnat_chains = None
        self._above.clear()

    # -------------------------------------------------------------- lazy reading
    def rule_name(self, key: RuleKey) -> RuleName | None:
        table, chain, index = key
        names = self._chain_names.get((table, chain))
        if names is None:
            # not an entry point's chain (their names are in already): a Service's own, or none
            own = table == "nat" and chain.startswith(("KUBE-SEP-", *_OWN_CHAIN_PREFIXES))
            names = self._chain_names[(table, chain)] = self._names_of_chain(chain) if own else {}
        return names.get(index)

    def _names_of_chain(self, chain: str) -> dict[int, RuleName]:
        """The names the Services give the rules of one of their own nat chains."""
        if chain.startswith("KUBE-SEP-"):
            owners = self._reaching(chain)
        else:
            s = self.by_hash.get(hash_of(chain) or "")
            owners = [s] if s is not None else []
        names: dict[int, RuleName] = {}
        for s in owners:
            s._resolve()
            for key, n in self.svc_names.get(s._order, []):
                if key[1] == chain:
                    _fold(names, key[2], n)
        return names

    def _reaching(self, *chains: str) -> list[Service]:
        """The Services whose endpoint walks can reach any of `chains` (a superset), in naming order."""
        if self._parents is None:
            # the chains that jump to each chain (a target that is no chain, ACCEPT ..., is never asked for)
            parents: dict[str, list[str]] = {}
            if self.nat is not None:
                with quiet_gc():
                    for name, c in self.nat.chains.items():
                        for r in c.rules:
                            j = r.jump
                            if j is not None:
                                lst = parents.get(j)
                                if lst is None:
                                    parents[j] = [name]
                                elif lst[-1] != name:
                                    lst.append(name)
            self._parents = parents
        if self._starts is None:
            # a walk starts at a Service's own chain, or at the chain its cluster-IP entry rule names
            starts: dict[str, list[Service]] = {}
            for s in self.created:
                cluster = s._chains.get("cluster")
                if cluster is not None:
                    starts.setdefault(cluster, []).append(s)
            self._starts = starts
        found: dict[int, Service] = {}
        for chain in chains:
            # the chains above `chain` depend only on the chains that jump to it (the endpoint chains of
            # one Service share them): read once per set of parents
            key = frozenset(self._parents.get(chain, ()))
            above = self._above.get(key)
            if above is None:
                above = self._above[key] = self._starting_in(self._climb(key))
            for s in above + self._starting_in({chain}):
                found[s._order] = s
        return [found[k] for k in sorted(found)]

    def _climb(self, chains: frozenset[str]) -> set[str]:
        """`chains` and every chain that jumps to one of them, directly or not."""
        parents = self._parents
        assert parents is not None
        seen = set(chains)
        todo = list(chains)
        while todo:
            for p in parents.get(todo.pop(), ()):
                if p not in seen:
                    seen.add(p)
                    todo.append(p)
        return seen

    def _starting_in(self, chains: set[str] | frozenset[str]) -> list[Service]:
        """The Services whose endpoint walks start in one of `chains`."""
        assert self._starts is not None
        found: dict[int, Service] = {}
        for name in chains:
            owner = self.by_hash.get(name[9:]) if name.startswith(("KUBE-SVC-", "KUBE-SVL-", "KUBE-XLB-")) else None
            for s in ([owner] if owner is not None else []) + self._starts.get(name, []):
                found[s._order] = s
        return [s for s in found.values() if any(c in chains for c in self._walk_starts(s) if c is not None)]

    def endpoint_candidates(self, address: str) -> list[Service]:
        """The Services that may have an endpoint at `address` (a superset): those whose walks can
        reach a DNAT to its IP."""
        if self._dnat_chains is None:
            dnat: dict[str, set[str]] = {}
            if self.nat is not None:
                for c in self.nat.chains.values():
                    for r in c.rules:
                        if r.jump is not None or r.target is None or "DNAT" not in r.text:
                            continue
                        rv = view(r)  # not kept: read once
                        to = rv.value("to-destination", "target") if rv.target == "DNAT" else None
                        if to is not None:
                            dnat.setdefault(split_endpoint(to)[0], set()).add(c.name)
            self._dnat_chains = dnat
        chains = self._dnat_chains.get(split_endpoint(address)[0])
        return self._reaching(*chains) if chains else []

    def _walk_starts(self, s: Service) -> tuple[str | None, str | None]:
        """The chains `details` walks for a Service's endpoints: (all endpoints, node-local ones)."""
        chains = self._own_chains(s)
        if chains is None:
            return None, None
        allc = {**s._chains, **chains}
        main = allc.get("cluster") or allc.get("svc") or allc.get("svl")
        if main is not None and main.startswith(("KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-")):
            main = allc.get("svc") or allc.get("svl")
        assert self.nat is not None
        if main is not None and main not in self.nat.chains:
            main = None
        return main, allc.get("svl") or allc.get("xlb")

    def _own_chains(self, s: Service) -> dict[str, str] | None:
        """The Service's own chains by kind (svc, svl, ext, fw, xlb); None when it has none here."""
        h = s.hash
        if h is None or self.nat is None:
            return None
        nat_chains = self.nat.chains
        found = {key: prefix + h for key, prefix in _SVC_PREFIXES if prefix + h in nat_chains}
        return found or None

    # -------------------------------------------------------------- entry points (read by build)
    def _mode(self) -> None:
        names: set[str] = set()
        for t in self.rs.tables.values():
            names.update(t.chains)
        # which kinds of kube-proxy chain names the dump has (one pass: 40,000 names at 10k Services)
        joined = "\n" + "\n".join(names)
        kinds = {p for p in _KINDS if "\n" + p in joined}
        if any(c in names for c in ("KUBE-LOAD-BALANCER", "KUBE-NODE-PORT", "KUBE-IPVS-FILTER")) or any(
            "--match-set KUBE-CLUSTER-IP" in r.text
            for t in self.rs.tables.values()
            for c in t.chains.values()
            for r in c.rules
        ):
            self.cat.mode, self.cat.layout = "ipvs", "ipvs"
        elif "KUBE-SERVICES" in names or kinds & {"KUBE-SVC-", "KUBE-SEP-"}:
            self.cat.mode = "iptables"
            if "KUBE-PORTALS-" in kinds:
                self.cat.layout = "2015, KUBE-PORTALS-*"
            elif "KUBE-XLB-" in kinds:
                self.cat.layout = "1.19-1.23, KUBE-XLB-*"
            elif kinds & {"KUBE-EXT-", "KUBE-SVL-"} or "KUBE-PROXY-FIREWALL" in names:
                self.cat.layout = "1.24+, KUBE-EXT-*/KUBE-SVL-*"
            else:
                self.cat.layout = "iptables"
        elif kinds & {"KUBE-PORTALS-", "KUBE-NODEPORT-"}:
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
            text = rv.comment
            name = service_name(text)
            comment = (text or "").lower()
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
    def details(self, s: Service) -> None:
        """Read a Service's own chains: its endpoints and their shares, affinity, masquerade rules,
        source ranges and traffic policies (called once, on the Service's first use)."""
        own = self._own_chains(s)
        if own is None:
            if s.hash is not None and self.nat is not None:
                self._warn(s, f"{s.name}: named by rules, but its nat chains (*-{s.hash}) are not in this dump")
            # no chains (a Service without endpoints): the policies cannot be read from the rules
            if s.no_local_endpoints:
                s.external_policy = "Local"
            return
        assert self.nat is not None
        s.chains.update(own)
        main = s.chains.get("cluster") or s.chains.get("svc") or s.chains.get("svl")
        if main is not None and main.startswith(("KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-")):
            main = s.chains.get("svc") or s.chains.get("svl")
        if main is not None and main in self.nat.chains:
            w = self._walk(main, Fraction(1), 0, set())
            s.endpoints = self._endpoints(s, w)
            s.fallthrough, s.dropped = w.fall, w.dropped
            for n in w.notes:
                self._warn(s, f"{s.name}: {n}")
            if s.endpoints and w.fall > 0:
                self._warn(
                    s,
                    f"{s.name}: {float(w.fall):.6g} of new connections leave {main} without a DNAT "
                    "(its last endpoint rule is itself probabilistic)",
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
                e._where = self._is_local  # routes are looked up when `local` is first read
        s.affinity = self._affinity(s)
        s._masq_pending = self  # self.masquerades(s), when first asked for
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
            svl = s.chains.get("svl")
            local = local or any(_target_is(r, svl) for r in self.nat.chains[ext].rules)
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
            if not p:
                break
            if r.jump == "KUBE-MARK-MASQ" or (r.jump is None and r.target is None):
                continue  # non-terminating (the parsed model says what the rule's -j names)
            rv = self.v(r)
            t = rv.target
            if t is None or t == "KUBE-MARK-MASQ" or t in ("MARK", "LOG", "NFLOG", "CONNMARK"):
                continue  # non-terminating
            if rv.shape_fact("affinity", _has_affinity):
                continue  # session affinity: only later connections of a known client
            if rv.shape_fact("conditional", _conditional):
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
            # exact rational arithmetic; adding or taking away nothing is skipped (most terms are 0 or 1)
            take = p if q is _ONE else p * q
            if t == "DNAT":
                w.hits.append((r, r, take))
                p = _less(p, take)
            elif t in ("KUBE-MARK-DROP", "DROP", "REJECT"):
                # KUBE-MARK-DROP only marks; filter KUBE-FIREWALL drops the marked packet later
                w.dropped += take
                p = _less(p, take)
            elif self.nat.chains.get(t) is not None:
                sub = self._walk(t, take, depth + 1, seen)
                w.hits.extend((r if depth == 0 else pick, dn, sh) for pick, dn, sh in sub.hits)
                if sub.dropped:
                    w.dropped += sub.dropped
                w.notes.extend(sub.notes)
                p = _less(p, take)
                if sub.fall:
                    if rv.goto:
                        w.fall += sub.fall  # a goto's end returns past this chain
                    else:
                        p = p + sub.fall
            elif t in ("ACCEPT", "RETURN"):
                w.fall += take
                p = _less(p, take)
        if p:
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
            m = _ARROW.search(self.v(pick).comment or "")
            if m and pick is not dn:
                cip, cport = split_endpoint(m.group(1))
                if (cip, cport) != (ip, port):
                    self._warn(
                        s,
                        f"{s.name}: {pick.chain} rule {pick.index} says -> {m.group(1)} but "
                        f"{dn.chain} rule {dn.index} DNATs to {endpoint_text(ip, port)}",
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
                if rv.shape_fact("affinity", _has_affinity):
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

    def masquerades(self, s: Service) -> None:
        """The KUBE-MARK-MASQ rules of a Service's own chains and of its endpoints' (after `details`)."""
        assert self.nat is not None
        chains = [s.chains[k] for k in ("fw", "ext", "xlb", "svc", "svl") if k in s.chains]
        chains += sorted({e.chain for e in s.endpoints + s.local_endpoints})
        for cname in chains:
            kind = cname.rsplit("-", 1)[0]
            for r in self.nat.chains[cname].rules:
                if r.jump == "KUBE-MARK-MASQ":  # the rule's -j (a chain: the parsed model says it)
                    s.masquerade.append(self._masq(r, kind, s))

    def _name_chain_rules(self, s: Service) -> None:
        assert self.nat is not None
        eps = {e.chain: e for e in s.endpoints + s.local_endpoints}
        for key in ("fw", "ext", "xlb", "svc", "svl"):
            cname = s.chains.get(key)
            if cname is None:
                continue
            for r in self.nat.chains[cname].rules:
                t = r.jump if r.jump is not None else self.v(r).target
                ep = eps.get(t or "")
                self._svc_name_rule(s, r, ep.address if ep else None)
                if t == "DNAT":
                    for e in eps.values():
                        if e.chain == cname and e.dnat_rule == r.index:
                            self._svc_name_rule(s, r, e.address)
        for cname, e in eps.items():
            ch = self.nat.chains.get(cname)
            if ch is None or not cname.startswith("KUBE-SEP-"):
                continue
            for r in ch.rules:
                self._svc_name_rule(s, r, e.address)

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
        if ip in self._local:
            return self._local[ip]
        found = self._local[ip] = self._find_local(ip)
        return found

    def _find_local(self, ip: str) -> bool | None:
        if self.host is None or self.host.empty or not (self.host.routes or self.host.links):
            return None
        fam = "ipv6" if ":" in ip else "ipv4"
        fib = self._fibs.get(fam)
        if fib is None:
            from nftrace.host.fib import Fib

            fib = self._fibs[fam] = Fib(self.host, fam)  # type: ignore[arg-type]
        try:
            if fib.is_local(ip):
                return True  # hostNetwork endpoint on this node
            r = fib.lookup(ip)
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
        default = self._default.get(fam)
        if default is None:
            default = self._default[fam] = fib.lookup("8.8.8.8" if ":" not in ip else "2001:4860:4860::8888")
        # on-link on the node's uplink: another host of the LAN
        return not (default.ok and default.oif == r.oif)

    # -------------------------------------------------------------- cluster CIDRs
    def _cidrs(self) -> list[str]:
        found: list[str] = []
        for s in self.created:
            for m in s.masquerade:
                cm = _NOT_SOURCE.search(m.condition)
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
        return [c for c in found if "/" in c and not c.endswith(("/32", "/128"))]

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
        self.tail_warnings.append(
            "kube-proxy runs in IPVS mode: its iptables rules only accept and masquerade; the Services' "
            "endpoints and their weights live in the kernel's IPVS tables (ipvsadm -Ln), not in these rules"
        )
        # cluster CIDR from the masquerade rule of KUBE-SERVICES
        ch = self.nat_chain("KUBE-SERVICES")
        for r in ch.rules if ch is not None else []:
            o = self.v(r).get("source", "")
            if o is not None and o.negated and o.value:
                self.ipvs_cidrs.append(o.value)  # after the Services' own (see finish)


def _target_is(r: Rule, name: str | None) -> bool:
    """Whether the rule's -j/-g names `name` (a chain of its table), or it has none when `name` is None."""
    if name is None:
        return r.jump is None and r.target is None
    return r.jump == name


def _less(p: Fraction, take: Fraction) -> Fraction:
    """p - take (nothing left when take is all of p)."""
    return _ZERO if take is p else p - take


def _has_affinity(rv: RuleView) -> bool:
    """A `-m recent --rcheck/--update` rule: kube-proxy's ClientIP session affinity."""
    return any(rv.has(o, "recent") for o in _AFFINITY_OPTS)


def _conditional(rv: RuleView) -> bool:
    """Whether the rule matches only some packets (beyond chance and the neutral options)."""
    conds = [o for o in rv.opts if o.module != "target" and o.name not in _NEUTRAL]
    return any(not (o.module in ("tcp", "udp", "sctp") and not o.values) for o in conds)


def _has_statistic(rv: RuleView) -> bool:
    return "statistic" in rv.modules


_ONE = Fraction(1)
_SHARES: dict[tuple[str, bool], Fraction] = {}  # (--probability as written, negated) -> share


def _share(rv: RuleView) -> Fraction | None:
    """The chance the rule's statistic match holds (1 without one), as the kernel applies it."""
    if not rv.shape_fact("statistic", _has_statistic):
        return _ONE
    mode = rv.value("mode", "statistic")
    if mode != "random":
        return None
    o = rv.get("probability", "statistic")
    if o is None or not o.value:
        return _ONE
    key = (o.value, o.negated)
    q = _SHARES.get(key)
    if q is None:
        try:
            p = float(o.value)
        except ValueError:
            return _ONE
        q = Fraction(kernel_probability(p))
        if o.negated:
            q = 1 - q
        if len(_SHARES) < 100_000:
            _SHARES[key] = q
    return q


def _nth_share(rv: RuleView) -> Fraction:
    every = rv.value("every", "statistic")
    n = int(every) if every and every.isdigit() and int(every) > 0 else 1
    o = rv.get("every", "statistic")
    q = Fraction(1, n)
    return 1 - q if o is not None and o.negated else q


def _dst_type(rv: RuleView) -> str | None:
    o = rv.get("dst-type", "addrtype")
    return o.value.upper() if o is not None and o.value and not o.negated else None
