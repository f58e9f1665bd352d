"""Packets for `explain --to-service`, `--node-port` and `--external-ip`.

The user names a Service (or a node port, or an external/load-balancer IP);
the catalogue gives protocol, address and port, and the host's routes give
where such a packet enters: a pod's traffic arrives on the interface the
node routes that pod address to (its bridge or veth), a client's traffic on
the node's default-route interface.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nftrace.errors import UsageError
from nftrace.kube.catalog import Catalog, Service

if TYPE_CHECKING:
    from nftrace.host.fib import Fib
    from nftrace.host.model import HostContext

#: the client used for node-port and external-IP flows when none is given (TEST-NET-3, RFC 5737)
TEST_CLIENT = "203.0.113.10"


@dataclass
class ServiceFlow:
    packet: dict[str, Any]  # keys of packet_from_dict, with "origin"
    service: str
    entry: str  # cluster IP | node port | external IP | load-balancer IP
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        p = self.packet
        text = f"{p['proto']} {p.get('src') or '(node)'}" + (f":{p['sport']}" if p.get("sport") else "")
        text += f" > {p['dst']}" + (f":{p['dport']}" if p.get("dport") is not None else "")
        text += " local" if p.get("origin") == "local" else f" iif {p.get('iif')}"
        return {"service": self.service, "entry": self.entry, "packet": dict(p), "packet_text": text,
                "notes": list(self.notes)}  # fmt: skip


def _fib(host: HostContext, family: str = "ipv4") -> Fib:
    from nftrace.host.fib import Fib

    return Fib(host, family)  # type: ignore[arg-type]


def _names(svcs: list[Service], limit: int = 12) -> str:
    names = [s.name for s in svcs[:limit]]
    more = f" (and {len(svcs) - limit} more)" if len(svcs) > limit else ""
    return ", ".join(names) + more


def uplink(host: HostContext) -> tuple[str | None, str | None]:
    """(interface, its address) the node's default route leaves by."""
    if host.empty or not host.links:
        return None, None
    fib = _fib(host)
    try:
        r = fib.lookup("198.51.100.1")
    except Exception:  # noqa: BLE001 - no routes at all
        r = None
    dev = r.oif if r is not None and r.ok else None
    addrs = host.addresses("ipv4")
    if dev is not None:
        for name, iface in addrs:
            if name == dev:
                return dev, str(iface.ip)
    for name, iface in addrs:
        if not iface.ip.is_loopback and name not in ("*",):
            return name, str(iface.ip)
    return dev, None


def _is_bridge(host: HostContext, name: str | None) -> bool:
    if name is None:
        return False
    link = host.link(name)
    return link is not None and (link.kind == "bridge" or any(lk.master == name for lk in host.links))


def pod_interface(host: HostContext, ip: str) -> tuple[str | None, str | None]:
    """(interface a packet from pod `ip` arrives on, a note when the pod is not on this node)."""
    if host.empty or not (host.routes or host.links):
        return None, None
    fib = _fib(host, "ipv6" if ":" in ip else "ipv4")
    r = fib.lookup(ip)
    if not r.ok or r.oif is None:
        return None, f"no route to {ip} on this node"
    if r.gateway:
        return r.oif, (
            f"{ip} is not on this node (routed via {r.gateway} dev {r.oif}): its own node's kube-proxy "
            f"translates its Service traffic; traced here as if it arrived on {r.oif}"
        )
    return r.oif, None


def default_pod(catalog: Catalog, host: HostContext) -> tuple[str, str] | None:
    """A pod address on this node (in a cluster CIDR, on a pod interface) that is not an endpoint."""
    if host.empty:
        return None
    up, _ = uplink(host)
    cidrs = []
    for c in catalog.cluster_cidrs:
        try:
            cidrs.append(ipaddress.ip_network(c, strict=False))
        except ValueError:
            continue
    endpoints = {e.ip for s in catalog.services for e in s.endpoints + s.local_endpoints}
    fib = _fib(host)
    candidates = []
    for r in host.routes:
        if r.family != "ipv4" or r.type != "unicast" or r.table != "main" or r.gateway or r.dst == "default":
            continue
        if r.oif is None or r.oif == up:
            continue
        try:
            net = ipaddress.ip_network(r.dst, strict=False)
        except ValueError:
            continue
        inside = any(_within(net, c) for c in cidrs) if cidrs else _is_bridge(host, r.oif)
        if inside:
            candidates.append((net, r.oif))
    for net, dev in candidates:
        for k, a in enumerate(net.hosts()):
            if k > 1024:
                break
            s = str(a)
            if s in endpoints or fib.is_local(s):
                continue
            return s, dev
    return None


def add_ipvs_addresses(host: HostContext, catalog: Catalog) -> str | None:
    """In IPVS mode kube-proxy binds every ClusterIP to the dummy interface kube-ipvs0, so the node
    delivers Service traffic locally and IPVS takes it from INPUT.  When the host context lacks those
    addresses but the ipset KUBE-CLUSTER-IP names them, add them (the note says so); else None."""
    if catalog.mode != "ipvs" or not catalog.ipvs or host.empty:
        return None
    ips = []
    for entry in catalog.ipvs.get("cluster_ips") or []:
        ip = entry.split(",")[0]
        try:
            a = ipaddress.ip_address(ip)
        except ValueError:
            continue
        if a.version == 4 and ip not in ips:
            ips.append(ip)
    if not ips:
        return None
    from nftrace.host.model import Link, Route

    fib = _fib(host)
    missing = [ip for ip in ips if not fib.is_local(ip)]
    if not missing:
        return None
    link = host.link("kube-ipvs0")
    if link is None:
        link = Link(index=0, name="kube-ipvs0", kind="dummy", up=False)
        host.links.append(link)
    for ip in missing:
        link.addresses.append(f"{ip}/32")
        host.routes.append(Route(table="local", type="local", dst=f"{ip}/32", oif="kube-ipvs0", prefsrc=ip,
                                 scope="host", proto="kernel"))  # fmt: skip
    note = (
        f"IPVS mode: {len(missing)} Service address(es) from the ipset KUBE-CLUSTER-IP added on kube-ipvs0 "
        "(kube-proxy binds them there), so the node delivers them locally to IPVS"
    )
    host.provenance.append(note)
    return note


def _within(
    net: ipaddress.IPv4Network | ipaddress.IPv6Network, outer: ipaddress.IPv4Network | ipaddress.IPv6Network
) -> bool:
    if isinstance(net, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return net.subnet_of(outer)
    if isinstance(net, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return net.subnet_of(outer)
    return False


def service_packet(
    catalog: Catalog,
    host: HostContext,
    *,
    to_service: str | None = None,
    from_pod: str | None = None,
    node_port: int | None = None,
    external_ip: str | None = None,
    src: str | None = None,
    sport: int | None = None,
    dst: str | None = None,
    iif: str | None = None,
    proto: str | None = None,
    local: bool = False,
) -> ServiceFlow:
    chosen = [x for x in (to_service, node_port, external_ip) if x is not None]
    if len(chosen) != 1:
        raise UsageError("give one of --to-service, --node-port, --external-ip")
    if from_pod is not None and to_service is None:
        raise UsageError("--from-pod goes with --to-service (use --src for --node-port/--external-ip)")
    if from_pod is not None and local:
        raise UsageError("--from-pod and --local exclude each other")
    if not catalog.services:
        raise UsageError("the rules hold no kube-proxy Services (see 'nftrace services')")
    notes: list[str] = []
    if proto is not None:
        proto = proto.lower()
    if to_service is not None:
        cands = catalog.find(to_service)
        if proto:
            cands = [s for s in cands if s.proto in (None, proto)] or cands
        if not cands:
            raise UsageError(f"no Service {to_service!r} in the rules; they have: {_names(catalog.services)}")
        if len(cands) > 1:
            raise UsageError(f"{to_service!r} names several Service ports: {_names(cands)}; give ns/name:port")
        s = cands[0]
        if s.cluster_ip is None or s.port is None:
            raise UsageError(f"the rules give {s.name} no cluster IP and port (try --node-port or --external-ip)")
        pkt: dict[str, Any] = {"proto": s.proto or "tcp", "dst": dst or s.cluster_ip, "dport": s.port}
        entry = "cluster IP"
        if from_pod is not None:
            try:
                ipaddress.ip_address(from_pod)
            except ValueError:
                raise UsageError(f"--from-pod: {from_pod!r} is not an IP address") from None
            pkt["src"] = from_pod
            if not host.empty and _fib(host).is_local(from_pod):
                pkt["origin"] = "local"
                notes.append(f"{from_pod} is an address of this node (a hostNetwork pod): sent as a local process")
            else:
                dev, note = pod_interface(host, from_pod)
                if note:
                    notes.append(note)
                if iif is None and dev is None:
                    raise UsageError(f"cannot tell which interface {from_pod} is behind: give --iif (or --routes)")
                pkt["iif"] = iif or dev
                pkt["origin"] = "ingress"
        elif local:
            pkt["origin"] = "local"
            if src:
                pkt["src"] = src
        elif src is not None:
            pkt["src"] = src
            dev, note = pod_interface(host, src)
            if iif is None and dev is None:
                raise UsageError(f"cannot tell which interface {src} is behind: give --iif or --local")
            pkt["iif"] = iif or dev
            pkt["origin"] = "ingress"
        else:
            pod = default_pod(catalog, host)
            if pod is None:
                pkt["origin"] = "local"
                notes.append("no pod network found on this node: traced as a process of the node itself")
            else:
                pkt["src"], dev = pod
                pkt["iif"] = iif or dev
                pkt["origin"] = "ingress"
                notes.append(f"from pod address {pod[0]} on {dev} (give --from-pod to choose one)")
    else:
        if node_port is not None:
            cands = catalog.by_node_port(node_port)
            if proto:
                cands = [s for s in cands if s.proto in (None, proto)]
            if not cands:
                known = sorted({str(s.node_port) for s in catalog.services if s.node_port is not None})
                raise UsageError(
                    f"no Service has node port {node_port}"
                    + (f"; node ports in the rules: {', '.join(known)}" if known else "")  # fmt: skip
                )
            if len(cands) > 1:
                raise UsageError(f"node port {node_port} belongs to {_names(cands)}: give -p tcp|udp|sctp")
            s = cands[0]
            up, addr = uplink(host)
            target = dst or addr
            if target is None:
                raise UsageError("no address of this node is known: give --addrs/--routes (or --dst NODE_IP)")
            pkt = {"proto": s.proto or "tcp", "dst": target, "dport": node_port}
            entry = "node port"
        else:
            assert external_ip is not None
            try:
                ipaddress.ip_address(external_ip)
            except ValueError:
                raise UsageError(f"--external-ip: {external_ip!r} is not an IP address") from None
            cands = [s for s in catalog.services if external_ip in s.external_ips or external_ip in s.lb_ips]
            if proto:
                cands = [s for s in cands if s.proto in (None, proto)]
            if not cands:
                raise UsageError(f"no Service has external or load-balancer IP {external_ip}")
            if len(cands) > 1:
                raise UsageError(f"{external_ip} belongs to {_names(cands)}: give -p to choose")
            s = cands[0]
            if s.port is None:
                raise UsageError(f"the rules give {s.name} no port")
            up, _ = uplink(host)
            pkt = {"proto": s.proto or "tcp", "dst": external_ip, "dport": s.port}
            entry = "load-balancer IP" if external_ip in s.lb_ips else "external IP"
        if local:
            pkt["origin"] = "local"
            if src:
                pkt["src"] = src
        else:
            pkt["src"] = src or TEST_CLIENT
            dev = iif or up
            if dev is None:
                raise UsageError("cannot tell the node's uplink interface: give --iif (or --routes/--addrs)")
            pkt["iif"] = dev
            pkt["origin"] = "ingress"
            if src is None:
                notes.append(f"from test client {TEST_CLIENT} arriving on {dev} (give --src to choose)")
    if pkt["proto"] in ("tcp", "udp", "sctp"):
        pkt["sport"] = sport if sport is not None else 40000
    return ServiceFlow(packet=pkt, service=s.name, entry=entry, notes=notes)
