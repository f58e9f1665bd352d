"""The netfilter pipeline: hooks, table priorities, conntrack, NAT, routing.

Ingress:  PREROUTING (raw, conntrack, mangle, nat dst) -> routing ->
          INPUT (mangle, filter, security, nat src)            -> local
          FORWARD (mangle, filter, security) -> POSTROUTING (mangle, nat src)
Local:    routing -> OUTPUT (raw, conntrack, mangle [reroute], nat dst [reroute],
          filter, security) -> POSTROUTING (mangle, nat src) -> out, or back in
          through lo: PREROUTING -> routing -> INPUT (nat is not consulted again).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from nftrace.engine import natsel
from nftrace.engine.env import Env
from nftrace.engine.index import RulesetIndex
from nftrace.engine.packet import Packet
from nftrace.engine.walker import Branch, ChainLoopError, WalkOptions, walk_table
from nftrace.errors import InputError
from nftrace.host.fib import Fib, RouteResult
from nftrace.host.model import HostContext
from nftrace.ruleset.ext.nat import NatRequest
from nftrace.ruleset.ipsets import IpSets
from nftrace.ruleset.model import BUILTIN_CHAINS, Chain, Ruleset, Table

SCHEMA = "nftrace.trace/1"

# backend -> hook -> tables in priority order.  x_tables (legacy) registers them at the priorities of
# include/uapi/linux/netfilter_ipv4.h: raw -300, mangle -150, nat dst -100, filter 0, security 50,
# nat src 100.  iptables-nft registers the security base chains at priority 150, so on INPUT its nat
# (100) runs before security: seen in the kernel's trace.
_LEGACY_ORDER: dict[str, tuple[str, ...]] = {
    "PREROUTING": ("raw", "mangle", "nat"),
    "INPUT": ("mangle", "filter", "security", "nat"),
    "FORWARD": ("mangle", "filter", "security"),
    "OUTPUT": ("raw", "mangle", "nat", "filter", "security"),
    "POSTROUTING": ("mangle", "nat"),
}
HOOK_TABLES: dict[str, dict[str, tuple[str, ...]]] = {
    "legacy": _LEGACY_ORDER,
    "nft": {**_LEGACY_ORDER, "INPUT": ("mangle", "filter", "nat", "security")},
}
NAT_MANIP = {"PREROUTING": "dst", "OUTPUT": "dst", "INPUT": "src", "POSTROUTING": "src"}


@dataclass
class Trace:
    packet: Packet
    origin: str
    branches: list[Branch]
    warnings: list[str] = field(default_factory=list)

    @property
    def has_unknown(self) -> bool:
        return any(b.unknown for b in self.branches)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "packet": self.packet.to_contract(self.origin),
            "origin": self.origin,
            "branches": [
                {
                    "probability": None if b.unknown else b.prob,
                    "conditions": b.conditions,
                    "steps": b.steps,
                    "result": b.result,
                }
                for b in self.branches
            ],
            "warnings": self.warnings,
        }


class Engine:
    """Traces packets through one ruleset on one host.  Reusable across packets."""

    def __init__(
        self,
        ruleset: Ruleset,
        host: HostContext,
        ipsets: IpSets | None = None,
        backend: str = "nft",
        options: WalkOptions | None = None,
    ) -> None:
        self.ruleset = ruleset
        self.host = host
        self.fib = Fib(host, "ipv6" if ruleset.family == "ipv6" else "ipv4")
        self.ipsets = ipsets
        self.backend = backend
        self.options = options or WalkOptions()
        #: indexes of the long chains, built on first use (None: walk every chain linearly)
        self.index: RulesetIndex | None = RulesetIndex(host_known=not host.empty)
        # Connection tracking runs in a network namespace only once a rule needs it
        # (a NAT target, -m conntrack/state/connmark, CT without --notrack, CONNMARK ...).
        # Without it there is no connection: nat chains are never traversed.
        self.conntrack_active = ruleset_needs_conntrack(ruleset)
        self.hook_tables = HOOK_TABLES["nft" if backend == "nft" else "legacy"]
        if backend == "legacy":
            # x_tables loads a table with all its built-in chains (policy ACCEPT); iptables-nft
            # creates only the base chains a dump declares or uses.
            self.ruleset = _with_all_builtins(ruleset)
        else:
            self.ruleset = _declared_builtins_only(ruleset)

    # ------------------------------------------------------------------ public
    def trace(self, pkt: Packet, origin: str) -> Trace:
        if pkt.family != self.ruleset.family:
            have, want = ("ip6tables", "iptables") if self.ruleset.family == "ipv6" else ("iptables", "ip6tables")
            raise InputError(
                f"the packet is {pkt.family} but the rules are {self.ruleset.family} ({have}-save): give the "
                f"{want}-save dump with --rules for this packet, or an {self.ruleset.family} packet",
                file=self.ruleset.source,
            )
        # the pseudo-link '*' of --local-addr holds addresses only: it says nothing of the interfaces
        real = [link.name for link in self.host.links if link.name != "*"]
        if origin == "ingress" and pkt.iif and real and self.host.link(pkt.iif) is None:
            raise InputError(
                f"unknown input interface {pkt.iif!r}: this host has {', '.join(real)}; "
                "give one of these with --iif (or 'iif NAME' in the flow string)"
            )
        warnings: list[str] = list(self.ruleset.warnings) + list(self.host.provenance)
        if self.host.empty:
            warnings.append(
                "no host context given (--routes/--addrs/--snapshot): routing, addrtype and local "
                "delivery are guessed; state local addresses with --local-addr"
            )
        if pkt.ct_state in ("ESTABLISHED", "RELATED"):
            warnings.append(
                f"{pkt.ct_state} packet: the nat table is not consulted; any NAT of its connection "
                "(set up by its first packet) is not known here and is assumed to be none"
            )
            pkt.nat_dst_done = pkt.nat_src_done = True
        env = Env(
            host=self.host,
            fib=self.fib,
            ipsets=self.ipsets,
            backend=self.backend,
            origin=origin,
            no_host=self.host.empty,
        )
        first = Branch(pkt=pkt.clone(), stage="pre" if origin == "ingress" else "route_out")
        bad = _ip6_rcv_drop(pkt) if origin == "ingress" else None
        if bad is not None:
            # ip6_rcv_core() drops it before NF_INET_PRE_ROUTING: no hook sees it
            first.result = self._result(first, "DROP", "dropped", {"stage": "receive", "reason": bad})
        budget = [self.options.max_branches]
        done: list[Branch] = []
        work = self._bridge_start(first, budget) if origin == "ingress" and bad is None else [first]
        guard = 0
        while work:
            guard += 1
            if guard > 100_000:
                raise RuntimeError("trace did not terminate")
            b = work.pop()
            try:
                nxt = self._stage(b, env, budget)
            except ChainLoopError as e:
                b.result = {
                    "verdict": "DROP",
                    "disposition": "dropped",
                    "oif": None,
                    "at": None,
                    "packet": b.pkt.summary(),
                }
                b.warnings.append(str(e))
                nxt = [b]
            for n in nxt:
                (done if n.result is not None else work).append(n)
        # order: most probable first, unknown last, stable
        done.sort(key=lambda b: (b.unknown, -b.prob))
        seen = set(warnings)  # a set: 256 branches x thousands of warnings must not be quadratic
        for b in done:
            for w in b.warnings:
                if w not in seen:
                    seen.add(w)
                    warnings.append(w)
        if any(b.unknown for b in done):
            warnings.insert(
                0,
                "this trace met matches nftrace cannot decide offline: the outcome depends on "
                "the assumptions listed in each branch's conditions",
            )
        return Trace(packet=pkt, origin=origin, branches=done, warnings=warnings)

    # ------------------------------------------------------------------ stages
    def _stage(self, b: Branch, env: Env, budget: list[int]) -> list[Branch]:
        st = b.stage
        if st == "pre":
            return self._hook(b, env, budget, "PREROUTING", "route_in")
        if st == "route_in":
            if b.pkt.bridged:
                return self._bridge_route(b, budget)
            return self._route_in(b, budget)
        if st == "input":
            return self._hook(b, env, budget, "INPUT", "deliver")
        if st == "forward":
            return self._hook(b, env, budget, "FORWARD", "post")
        if st == "route_out":
            return [self._route_out(b)]
        if st == "output":
            return self._hook(b, env, budget, "OUTPUT", "post")
        if st == "post":
            return self._hook(b, env, budget, "POSTROUTING", "after_post")
        if st == "after_post":
            return [self._after_post(b)]
        if st == "deliver":
            b.result = self._result(b, "ACCEPT", "local", None)
            return [b]
        raise AssertionError(f"unknown stage {st}")

    def _hook(self, b: Branch, env: Env, budget: list[int], hook: str, next_stage: str) -> list[Branch]:
        """Run every table of a hook in priority order; returns branches advanced to next_stage or finished."""
        if hook == "POSTROUTING" and b.pkt.pending_oif is not None:
            b.pkt.oif, b.pkt.pending_oif = b.pkt.pending_oif, None
        current = [b]
        for table_name in self.hook_tables[hook]:
            if table_name == "mangle" and hook == "OUTPUT":
                current = [x for br in current for x in self._mangle_output(br, env, budget)]
                continue
            table = self.ruleset.tables.get(table_name)
            nxt: list[Branch] = []
            for br in current:
                if br.result is not None:
                    nxt.append(br)
                    continue
                if table_name == "nat":
                    nxt.extend(self._nat(br, env, budget, hook))
                    continue
                if table is None or hook not in table.chains:
                    self._after_table(br, env, table_name, hook)
                    nxt.append(br)
                    continue
                for nb, verdict in walk_table(br, table, hook, env, self.options, budget, self.index):
                    self._finish_table(nb, verdict, hook, table_name)
                    if nb.result is None:
                        self._after_table(nb, env, table_name, hook)
                    nxt.append(nb)
            current = nxt
        for br in current:
            if br.result is None:
                br.stage = next_stage
        return current

    def _after_table(self, b: Branch, env: Env, table: str, hook: str) -> None:
        if table == "raw" and hook in ("PREROUTING", "OUTPUT") and self.conntrack_active:
            # nf_conntrack_in runs right after raw (priority -200)
            if not any(s.get("kind") == "conntrack" for s in b.steps):
                b.steps.append({"kind": "conntrack", "state": b.pkt.ct_state})

    def _finish_table(self, b: Branch, verdict: str, hook: str, table: str) -> None:
        if verdict == "ACCEPT":
            return
        at = self._drop_at(b, hook, table)
        if verdict == "QUEUE":
            b.result = self._result(b, "QUEUE", "queued", at)
            b.unknown = True
            last = b.steps[-1] if b.steps else {}
            if not last.get("unknown"):
                # `-j QUEUE` (NFQUEUE already says so): the branch carries its assumption
                b.conditions.append(
                    f"{table} {at.get('chain')} rule {at.get('rule')}: queued to userspace (QUEUE): "
                    "the program listening there decides the packet's fate"
                )
            return
        b.result = self._result(b, "DROP", "dropped", at)

    def _drop_at(self, b: Branch, hook: str, table: str) -> dict[str, Any]:
        last = b.steps[-1] if b.steps else {}
        if last.get("kind") == "rule":
            return {"hook": hook, "table": table, "chain": last.get("chain"), "rule": last.get("rule")}
        return {"hook": hook, "table": table, "chain": hook, "rule": None, "policy": True}

    def _result(self, b: Branch, verdict: str, disposition: str, at: dict[str, Any] | None) -> dict[str, Any]:
        packet = b.pkt.summary()
        if b.pkt.random_ports:
            packet["random_ports"] = sorted(b.pkt.random_ports)
        return {
            "verdict": verdict,
            "disposition": disposition,
            "oif": b.pkt.oif if disposition in ("forwarded", "output") else None,
            "at": at,
            "packet": packet,
        }

    # ------------------------------------------------------------------ mangle OUTPUT + reroute
    def _mangle_output(self, b: Branch, env: Env, budget: list[int]) -> list[Branch]:
        if b.result is not None:
            return [b]
        table = self.ruleset.tables.get("mangle")
        if table is None or "OUTPUT" not in table.chains:
            return [b]
        out = []
        before = (b.pkt.mark, b.pkt.src, b.pkt.dst, b.pkt.tos)
        for nb, verdict in walk_table(b, table, "OUTPUT", env, self.options, budget, self.index):
            self._finish_table(nb, verdict, "OUTPUT", "mangle")
            if nb.result is None and (nb.pkt.mark, nb.pkt.src, nb.pkt.dst, nb.pkt.tos) != before:
                # ipt_mangle_out: a changed mark/address/tos re-routes the packet
                self._reroute_local(nb, "mangle OUTPUT changed the packet")
            out.append(nb)
        return out

    # ------------------------------------------------------------------ nat
    def _nat(self, b: Branch, env: Env, budget: list[int], hook: str) -> list[Branch]:
        manip = NAT_MANIP[hook]
        pkt = b.pkt
        done = pkt.nat_dst_done if manip == "dst" else pkt.nat_src_done
        if pkt.untracked or pkt.ct_state not in ("NEW",) or done or not self.conntrack_active:
            return [b]
        table = self.ruleset.tables.get("nat")
        out: list[Branch] = []
        if table is None or hook not in table.chains:
            self._bind(b, manip, None, hook, env)
            return [b]
        for nb, verdict in walk_table(b, table, hook, env, self.options, budget, self.index):
            self._finish_table(nb, verdict, hook, "nat")
            if nb.result is None:
                req = nb.pkt.pending_nat
                by = nb.pkt.pending_nat_rule
                nb.pkt.pending_nat = nb.pkt.pending_nat_rule = None
                old_dst = nb.pkt.dst
                self._bind(nb, manip, req, hook, env)
                if req is not None and nb.steps and nb.steps[-1].get("kind") == "nat":
                    nb.steps[-1]["rule"] = by
                if hook == "OUTPUT" and nb.result is None and nb.pkt.dst != old_dst:
                    # nf_nat_ipv4_local_fn: a new destination re-routes the packet
                    self._reroute_local(nb, "DNAT in nat OUTPUT changed the destination")
            out.append(nb)
        return out

    def _bind(self, b: Branch, manip: str, req: NatRequest | None, hook: str, env: Env) -> None:
        pkt = b.pkt
        if manip == "dst":
            pkt.nat_dst_done = True
        else:
            pkt.nat_src_done = True
        if req is None:
            return
        before = pkt.endpoint("dst" if manip == "dst" else "src")
        kind = req.kind
        new_addr: str | None = None
        new_port: int | None = None
        range_note: str | None = None
        cur_addr = pkt.dst if manip == "dst" else pkt.src
        cur_port = pkt.dport if manip == "dst" else pkt.sport
        if kind == "NETMAP":
            assert req.netmap is not None
            net, mask = req.netmap
            a = int(ipaddress.ip_address(cur_addr))
            new_addr = str(ipaddress.ip_address((a & ~mask & _full(pkt)) | net))
        elif kind == "REDIRECT":
            if hook == "OUTPUT":
                new_addr = "127.0.0.1" if pkt.family == "ipv4" else "::1"
            else:
                new_addr = self._primary_addr(pkt.iif, pkt.family)
                if new_addr is None:
                    b.result = self._result(b, "DROP", "dropped", self._nat_dropped(b, hook, "REDIRECT"))
                    b.warnings.append(
                        f"REDIRECT: input interface {pkt.iif} has no address: the kernel drops the packet"
                    )
                    return
        elif kind == "MASQUERADE":
            toward = pkt.dst
            if b.steps:
                for s in reversed(b.steps):
                    if s.get("kind") == "route" and s.get("via"):
                        toward = s["via"]
                        break
            new_addr = self.fib.select_source(pkt.oif, toward)
            if new_addr is None:
                b.result = self._result(b, "DROP", "dropped", self._nat_dropped(b, hook, "MASQUERADE"))
                b.warnings.append(f"MASQUERADE: output interface {pkt.oif} has no usable address: dropped")
                return
        else:
            new_addr = req.addr_lo
            if req.addr_lo is not None and req.addr_hi is not None and req.addr_hi != req.addr_lo:
                # the kernel's choice from the tuple (nf_nat_core.c get_unique_tuple): see natsel
                zone, zone_problem = natsel.ct_zone(b.steps)
                if zone_problem:
                    b.warnings.append(f"{kind} to {req.addr_lo}-{req.addr_hi}: {zone_problem}")
                choice = natsel.choose(
                    req.addr_lo, req.addr_hi, manip=manip, src=pkt.src, dst=pkt.dst, sport=pkt.sport,
                    port_lo=req.port_lo, port_hi=req.port_hi, random=req.random, persistent=req.persistent, zone=zone,
                )  # fmt: skip
                new_addr = choice.addr
                range_note = natsel.range_note(choice, req.addr_lo, req.addr_hi, manip, zone, req.persistent)
        random_port = req.random and pkt.has_ports
        if req.port_lo is not None and pkt.has_ports and cur_port is not None:
            if req.port_lo <= cur_port <= (req.port_hi or req.port_lo) and (req.port_hi or req.port_lo) != req.port_lo:
                new_port = cur_port  # already in range: kept (when the tuple is unique)
            else:
                new_port = req.port_lo
                if req.port_hi and req.port_hi != req.port_lo:
                    # outside the range: the kernel picks a port in it by hash/at random (seen:
                    # MASQUERADE --to-ports 1024-65535 gave 15966 for source port 22), not the first
                    random_port = True
        if new_addr is None:
            new_addr = cur_addr
        if manip == "dst":
            pkt.set_dst(new_addr)
            if new_port is not None:
                pkt.dport = new_port
        else:
            pkt.set_src(new_addr)
            if new_port is not None:
                pkt.sport = new_port
        after = pkt.endpoint("dst" if manip == "dst" else "src")
        if random_port:
            which = "dport" if manip == "dst" else "sport"
            pkt.random_ports.add(which)
            after_step = {"kind": "nat", "type": kind, "hook": hook, "before": before, "after": after,
                          "random_port": which,
                          "note": f"the kernel picks the {'source' if manip == 'src' else 'destination'} port "
                                  f"({'--random' if req.random else 'outside the --to-ports range'}): "
                                  "the port shown is not a prediction"}  # fmt: skip
            pkt.ct_status.add("DNAT" if manip == "dst" else "SNAT")
            b.steps.append(after_step)
        elif after != before:
            pkt.ct_status.add("DNAT" if manip == "dst" else "SNAT")
            b.steps.append({"kind": "nat", "type": kind, "hook": hook, "before": before, "after": after})
        else:
            b.steps.append({"kind": "nat", "type": kind, "hook": hook, "before": before, "after": after,
                            "note": "no change"})  # fmt: skip
        if range_note:
            last = b.steps[-1]  # the dict just made
            last["note"] = f"{range_note}; {last['note']}" if last.get("note") else range_note

    def _nat_dropped(self, b: Branch, hook: str, kind: str) -> dict[str, Any]:
        """The target found no address and returned NF_DROP: its rule's verdict is DROP (seen in the
        kernel's trace); where the packet ended."""
        at: dict[str, Any] = {"hook": hook, "table": "nat", "nat": kind}
        for i in range(len(b.steps) - 1, -1, -1):
            s = b.steps[i]
            if s.get("kind") == "rule" and s.get("matched") and s.get("table") == "nat" and s.get("target") == kind:
                b.steps[i] = {**s, "verdict": "DROP"}  # a copy: forked branches share step dicts
                at.update(chain=s.get("chain"), rule=s.get("rule"))
                break
        return at

    def _primary_addr(self, dev: str | None, family: str) -> str | None:
        for name, iface in self.host.addresses(family):  # type: ignore[arg-type]
            if name == dev:
                return str(iface.ip)
        return None

    # ------------------------------------------------------------------ routing
    def _route_step(self, r: RouteResult, result: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": "route",
            "result": result,
            "type": r.type,
            "oif": r.oif,
            "via": r.gateway,
            "table": r.table,
            "reason": r.reason,
        }
        if extra:
            d.update(extra)
        return d

    def _route_in(self, b: Branch, budget: list[int]) -> list[Branch]:
        pkt = b.pkt
        if pkt.iif == "lo" and any(s.get("kind") == "loopback" for s in b.steps):
            # A looped-back packet keeps the route chosen on output (the skb's dst is
            # still attached): no input route lookup, no martian or rp_filter checks.
            b.steps.append({"kind": "route", "result": "local", "type": "local", "oif": None, "via": None,
                            "table": None, "reason": "looped back: the output route (local) is kept"})  # fmt: skip
            b.stage = "input"
            return [b]
        r = self.fib.route_input(pkt.dst, pkt.src, pkt.iif or "lo", pkt.mark, tos=pkt.tos, proto=pkt.proto,
                                 sport=pkt.sport, dport=pkt.dport)  # fmt: skip
        if r.type == "multicast" and not self._always_joined(pkt):
            return self._multicast_in(b, r, budget)
        if r.type in ("local", "broadcast", "multicast"):
            b.steps.append(self._route_step(r, "local"))
            b.stage = "input"
            pkt.oif = None
            return [b]
        if r.type == "unicast":
            if pkt.ttl <= 1:
                # ip_forward(): TTL (hop limit) <= 1 is dropped, with an ICMP time exceeded, before
                # NF_INET_FORWARD; PREROUTING saw it (and any TTL target there counted)
                b.steps.append(self._route_step(r, "forward"))
                b.result = self._result(b, "DROP", "dropped", {"stage": "forward", "reason": "TTL exceeded"})
                return [b]
            b.steps.append(self._route_step(r, "forward"))
            pkt.ttl -= 1  # ip_forward()/ip6_forward() decrement it before NF_INET_FORWARD (kernel trace)
            pkt.oif = r.oif
            b.stage = "forward"
            return [b]
        b.steps.append(self._route_step(r, "drop"))
        disp = "unroutable" if r.type in ("none", "unreachable", "prohibit", "blackhole") else "dropped"
        b.result = self._result(b, "DROP", disp, {"stage": "routing", "reason": r.reason, "type": r.type})
        return [b]

    # ------------------------------------------------------------------ bridge (br_netfilter)
    def _bridge_of(self, iif: str | None) -> tuple[str, str | None] | None:
        """(bridge, port) when iif names a Linux bridge or a port enslaved to one; port is None when
        iif is the bridge itself (the port the frame came in by is then not known)."""
        link = self.host.link(iif) if iif else None
        if link is None:
            return None
        if link.kind == "bridge":
            return link.name, None
        master = self.host.link(link.master) if link.master else None
        if master is not None and master.kind == "bridge":
            return master.name, link.name
        return None

    def _on_bridge_subnet(self, bridge: str, dst: str) -> bool:
        """Whether dst is a unicast host of one of the bridge's connected IPv4 subnets (not one of
        this host's addresses, not the subnet's broadcast address, not multicast)."""
        link = self.host.link(bridge)
        a = ipaddress.ip_address(dst)
        if link is None or a.version != 4 or a.is_multicast or int(a) == 0xFFFFFFFF or self.fib.is_local(dst):
            return False
        for cidr in link.addresses:
            net = ipaddress.ip_interface(cidr).network
            if net.version == 4 and a in net and (net.prefixlen >= 31 or a != net.broadcast_address):
                return True
        return False

    def _bridge_start(self, b: Branch, budget: list[int]) -> list[Branch]:
        """An IPv4 packet arriving on a bridge (or a port of one): the IP layer sees it on the bridge
        device.  Addressed to another host of the bridge's subnet it is bridged, not routed: with
        net.bridge.bridge-nf-call-iptables=1 (br_netfilter) it still crosses PREROUTING, FORWARD
        and POSTROUTING with -i/-o the bridge and physdev the ports, with no routing decision,
        ip_forward, rp_filter or TTL decrement; with 0 iptables never sees it (kernel trace)."""
        pkt = b.pkt
        found = self._bridge_of(pkt.iif) if pkt.family == "ipv4" else None
        if found is None:
            return [b]
        bridge, port = found
        pkt.iif = bridge  # the IP layer (and -i) sees the bridge device, never the port
        pkt.physdev_in = port
        if not self._on_bridge_subnet(bridge, pkt.dst):
            return [b]  # to this host, broadcast/multicast or elsewhere: the IP layer routes it
        key = "net.bridge.bridge-nf-call-iptables"
        raw = self.host.sysctl(key)
        num = self.fib._int_sysctl(key)  # as the kernel reads what was written (0x1, 01 ...)
        value = None if num is None else num != 0
        where = f"bridged by {bridge}: {pkt.dst} is on its subnet and not this host's"
        out: list[Branch] = []
        if value is None and budget[0] > 0:
            budget[0] -= 1
            other = b.fork()
            other.unknown = True
            other.conditions.append(f"{where}: assumed {key}=0: iptables does not see bridged packets")
            out.append(self._bridge_unseen(other, bridge, f"{key} unknown, assumed 0"))
            b.unknown = True
            b.conditions.append(f"{where}: assumed {key}=1 (br_netfilter): iptables sees bridged packets")
        elif value is None:
            b.warnings.append(f"branch limit reached: {where}: {key}=0 (iptables not called) is not explored")
            b.unknown = True
            b.conditions.append(f"{where}: assumed {key}=1 (br_netfilter): iptables sees bridged packets")
        elif not value:
            return [self._bridge_unseen(b, bridge, f"{key}={raw}")]
        pkt.bridged = True
        pkt.oif = None
        b.stage = "pre"
        return [b, *out]

    def _bridge_step(self, bridge: str, sysctl: str, reason: str) -> dict[str, Any]:
        return {"kind": "route", "result": "forward", "type": "bridged", "oif": bridge, "via": None,
                "table": None, "reason": reason, "bridged": True, "bridge": bridge, "sysctl": sysctl}  # fmt: skip

    def _bridge_unseen(self, b: Branch, bridge: str, sysctl: str) -> Branch:
        b.steps.append(self._bridge_step(bridge, sysctl, f"bridged by {bridge}; {sysctl}: iptables does not see it"))
        b.pkt.oif = bridge
        b.result = self._result(b, "ACCEPT", "forwarded", None)
        return b

    def _bridge_route(self, b: Branch, budget: list[int]) -> list[Branch]:
        """After PREROUTING of a bridged packet: bridged on unless a DNAT changed its destination, in
        which case br_netfilter looks the new destination up (seen: still bridged when it stays on
        the bridge and forwarding is on; dropped with forwarding off)."""
        pkt = b.pkt
        bridge = pkt.iif or ""
        key = "net.bridge.bridge-nf-call-iptables"
        raw = self.host.sysctl(key)
        sysctl = f"{key}={raw}" if raw is not None else f"{key} unknown, assumed 1"
        if pkt.dst == pkt.orig_dst:
            b.steps.append(self._bridge_step(bridge, sysctl, f"bridged by {bridge} (no routing decision, "
                                             "no ip_forward/rp_filter check, TTL kept); " + sysctl))  # fmt: skip
        elif self._on_bridge_subnet(bridge, pkt.dst):
            fwd, fwd_key = self.fib._forwarding(bridge)
            if not fwd:
                step = self._bridge_step(bridge, sysctl, f"DNAT to {pkt.dst} on {bridge}: br_netfilter re-routes "
                                         f"it and {fwd_key}=0 drops it")  # fmt: skip
                step["result"] = "drop"
                b.steps.append(step)
                b.result = self._result(b, "DROP", "dropped", {"stage": "routing", "reason": step["reason"]})
                return [b]
            note = f"{fwd_key}=1" if fwd_key else "forwarding unknown, assumed 1"
            b.steps.append(self._bridge_step(bridge, sysctl, f"DNAT to {pkt.dst}: br_netfilter re-routes it; still on "
                                             f"{bridge} ({note}): bridged (TTL kept); " + sysctl))  # fmt: skip
        else:
            # the new destination is this host or behind another device: the IP layer takes it
            pkt.bridged = False
            return self._route_in(b, budget)
        pkt.oif = bridge
        b.stage = "forward"
        return [b]

    def _always_joined(self, pkt: Packet) -> bool:
        """Whether the input device is in the packet's multicast group whatever runs on the host:
        all-hosts 224.0.0.1 (ip_mc_up), all-nodes ff02::1, and the solicited-node group of one of
        the device's addresses (addrconf joins it with the address).  Seen in the kernel's trace."""
        dst = ipaddress.ip_address(pkt.dst)
        if dst.version == 4:
            return int(dst) == _ALL_HOSTS
        if dst == _ALL_NODES:
            return True
        if int(dst) >> 24 == _SOLICITED >> 24:
            low = int(dst) & 0xFFFFFF
            link = self.host.link(pkt.iif or "")
            addrs = link.addresses if link is not None else []
            return any((i := ipaddress.ip_interface(a)).version == 6 and int(i.ip) & 0xFFFFFF == low for a in addrs)
        return False

    def _multicast_in(self, b: Branch, r: RouteResult, budget: list[int]) -> list[Branch]:
        """A multicast packet that arrived on a device: the kernel delivers it only if a local socket
        joined the group on that device (ip_route_input_mc / ip6_mc_input); else it is dropped after
        PREROUTING.  Which groups are joined is not in the host context: both outcomes, each with
        its assumption (seen in the kernel's trace: INPUT with a joined socket, nothing without)."""
        pkt = b.pkt
        where = f"routing: multicast {pkt.dst} arriving on {pkt.iif}"
        out = [b]
        if budget[0] > 0:
            budget[0] -= 1
            other = b.fork()
            other.unknown = True
            other.conditions.append(
                f"{where}: assumed NOT joined: no local socket joined the group on {pkt.iif} (and no "
                "multicast routing daemon takes it), so the kernel drops it after PREROUTING"
            )
            step = self._route_step(r, "drop")
            step["oif"] = None
            step["reason"] = f"multicast {pkt.dst}: no socket joined the group on {pkt.iif}: dropped"
            other.steps.append(step)
            other.result = self._result(
                other, "DROP", "dropped", {"stage": "routing", "reason": step["reason"], "type": "multicast"}
            )
            out.append(other)
        else:
            b.warnings.append(
                f"branch limit reached: {where}: the drop when no socket joined the group is not explored"
            )
        b.unknown = True
        b.conditions.append(
            f"{where}: assumed joined: a local socket joined the group on {pkt.iif}, so it is delivered "
            "locally (multicast routing, which may also forward it, is not modelled)"
        )
        b.steps.append(self._route_step(r, "local"))
        b.stage = "input"
        pkt.oif = None
        return out

    def _route_out(self, b: Branch) -> Branch:
        pkt = b.pkt
        src: str | None = pkt.src or None
        if src is not None and not self.fib.is_local(src) and not ipaddress.ip_address(src).is_loopback:
            # A socket cannot bind a foreign address (EINVAL) unless IP_FREEBIND/IP_TRANSPARENT;
            # a raw socket writing its own header can, and is routed by destination only.
            b.warnings.append(
                f"source {src} is not an address of this host: only a raw socket (or IP_FREEBIND/"
                "IP_TRANSPARENT) sends that; routed by destination as the kernel does for raw sockets"
            )
            src = None
        r = self.fib.route_output(pkt.dst, src, pkt.oif, pkt.mark, tos=pkt.tos, proto=pkt.proto,
                                  sport=pkt.sport, dport=pkt.dport)  # fmt: skip
        if r.type in ("unicast", "local", "broadcast", "multicast"):
            if not pkt.src:
                src = r.prefsrc or (pkt.dst if r.type == "local" else None)
                if src is None:
                    b.steps.append(self._route_step(r, "drop"))
                    b.result = self._result(
                        b, "DROP", "unroutable", {"stage": "routing", "reason": "no source address"}
                    )
                    return b
                pkt.set_src(src)
                pkt.orig_src = src
            pkt.oif = r.oif
            b.steps.append(self._route_step(r, "output", {"src": pkt.src}))
            b.stage = "output"
            return b
        b.steps.append(self._route_step(r, "drop"))
        b.result = self._result(b, "DROP", "unroutable", {"stage": "routing", "reason": r.reason, "type": r.type})
        return b

    def _reroute_local(self, b: Branch, why: str) -> None:
        pkt = b.pkt
        # ip_route_me_harder: the packet's source is kept (FLOWI_FLAG_ANYSRC) for policy routing
        r = self.fib.route_output(pkt.dst, pkt.src, None, pkt.mark, tos=pkt.tos, proto=pkt.proto,
                                  sport=pkt.sport, dport=pkt.dport, anysrc=True)  # fmt: skip
        if r.type in ("unicast", "local", "broadcast", "multicast"):
            # The new route takes effect for the skb, but the rest of the OUTPUT hook still
            # sees the output device it was called with (-o matches the old one); POSTROUTING
            # is called with the new device.  Seen in the kernel's trace.
            pkt.pending_oif = r.oif
            b.steps.append(self._route_step(r, "reroute", {"why": why, "oif_from": "POSTROUTING"}))
        else:
            b.steps.append(self._route_step(r, "drop", {"why": why}))
            b.result = self._result(b, "DROP", "unroutable", {"stage": "reroute", "reason": r.reason})

    def _after_post(self, b: Branch) -> Branch:
        pkt = b.pkt
        if pkt.oif == "lo" and b.steps and self._is_local_dst(pkt.dst):
            # loopback: the packet comes back in through lo with the same connection
            pkt.iif = "lo"
            pkt.oif = None
            pkt.ct_status.add("CONFIRMED")
            b.steps.append({"kind": "loopback", "iif": "lo"})
            b.stage = "pre"
            return b
        disp = "output" if not pkt.iif else "forwarded"
        b.result = self._result(b, "ACCEPT", disp, None)
        return b

    def _is_local_dst(self, addr: str) -> bool:
        return self.fib.is_local(addr) or ipaddress.ip_address(addr).is_loopback


def _with_all_builtins(rs: Ruleset) -> Ruleset:
    tables = {}
    for name, t in rs.tables.items():
        chains = dict(t.chains)
        for c in BUILTIN_CHAINS[name]:
            if c not in chains:
                chains[c] = Chain(name=c, policy="ACCEPT")
        tables[name] = Table(name=name, chains=chains, line=t.line)
    return Ruleset(family=rs.family, tables=tables, source=rs.source, warnings=rs.warnings)


def _declared_builtins_only(rs: Ruleset) -> Ruleset:
    """iptables-nft registers a base chain only when the dump declares it (`:NAME`), adds a
    rule to it or sets its policy; an undeclared, empty built-in chain is never traversed."""

    def absent(c: Chain) -> bool:
        return c.builtin and c.line == 0 and not c.rules and c.policy == "ACCEPT"

    if not any(absent(c) for t in rs.tables.values() for c in t.chains.values()):
        return rs
    tables = {
        name: Table(name=name, chains={k: c for k, c in t.chains.items() if not absent(c)}, line=t.line)
        for name, t in rs.tables.items()
    }
    return Ruleset(family=rs.family, tables=tables, source=rs.source, warnings=rs.warnings)


def ruleset_needs_conntrack(rs: Ruleset) -> bool:
    """Whether any rule makes the kernel enable connection tracking in its namespace: loading a
    match or target whose checkentry calls nf_ct_netns_get (the spec's `needs_conntrack`), in any
    chain, reachable or not.  A rule's text is not consulted (a comment may say "-m conntrack")."""
    for t in rs.tables.values():
        for c in t.chains.values():
            for r in c.rules:
                if r.target is not None and r.target.needs_conntrack:
                    return True
                if any(m.needs_conntrack for m in r.matches):
                    return True
    return False


def _ip6_rcv_drop(pkt: Packet) -> str | None:
    """Why ip6_rcv_core() drops an IPv6 packet arriving on a device before netfilter sees it (None: it
    does not).  RFC 4291 2.5.3: ::1 as source or destination off the loopback device; a multicast
    source; an interface-local (ff01::/16) destination off the loopback device."""
    if pkt.family != "ipv6" or pkt.iif == "lo":
        return None
    src = ipaddress.IPv6Address(pkt.src) if pkt.src else None
    dst = ipaddress.IPv6Address(pkt.dst)
    if (src is not None and src.is_loopback) or dst.is_loopback:
        return f"the loopback address ::1 on {pkt.iif} (not the loopback device)"
    if src is not None and src.is_multicast:
        return f"multicast source address {src}"
    if dst.is_multicast and (int(dst) >> 112) & 0xF == 1:
        return f"interface-local multicast destination {dst} on {pkt.iif}"
    return None


_ALL_HOSTS = int(ipaddress.IPv4Address("224.0.0.1"))
_ALL_NODES = ipaddress.IPv6Address("ff02::1")
_SOLICITED = int(ipaddress.IPv6Address("ff02::1:ff00:0"))  # ff02::1:ffXX:XXXX/104


def _full(pkt: Packet) -> int:
    return 0xFFFFFFFF if pkt.family == "ipv4" else (1 << 128) - 1
