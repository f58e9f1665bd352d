"""From a predicted trace to the probes to insert and the log sequence each branch predicts.

A *visit* is one traversal of a chain by the packet: a built-in chain when its
table runs at a hook, a user chain each time a rule jumps or goes to it.  The
packet is followed through the branch's steps as the kernel changes it: DNAT
in PREROUTING/OUTPUT rewrites the destination for every later chain (the nat
chains themselves still see the old one: the rewrite happens when the nat table
is done), SNAT/MASQUERADE rewrite the source after POSTROUTING, routing sets
the output interface, a loopback re-entry arrives on ``lo``.  Within one hook
the output device is the one the hook started with: a reroute by mangle or nat
OUTPUT shows from POSTROUTING on (the kernel's hook state keeps the old device).

A *probe* is one rule at position 1 of a visited chain matching the packet as
that chain sees it: protocol, addresses, ports, ICMP type, TCP flags and the
interfaces the hook has (``-i`` at PREROUTING/INPUT/FORWARD, ``-o`` at
FORWARD/OUTPUT/POSTROUTING).  Probes with equal matches in one chain are one
rule.  All probes sit at the top of their chain (probe n above probe n+1), are
non-terminating and rate-limited, so the path is unchanged; each visit of a
chain therefore logs, in order, every probe of that chain whose match holds
for the packet at that visit: that is the sequence a branch predicts.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any

HOOKS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
HOOKS_WITH_IN = frozenset({"PREROUTING", "INPUT", "FORWARD"})
HOOKS_WITH_OUT = frozenset({"FORWARD", "OUTPUT", "POSTROUTING"})
DST_NAT_HOOKS = frozenset({"PREROUTING", "OUTPUT"})
PORT_PROTOS = frozenset({"tcp", "udp"})
TCP_FLAG_MASK = ("FIN", "SYN", "RST", "ACK")
LIMIT = ("-m", "limit", "--limit", "10/sec", "--limit-burst", "20")
MAX_PROBES = 96
PREFIX_MAX = 29  # the kernel's LOG prefix is char[30]; iptables refuses longer ones


def log_prefix(run: str, n: int) -> str:
    p = f"nft:{run}:{n} "
    if len(p) > PREFIX_MAX:
        raise ValueError(f"log prefix {p!r} is longer than {PREFIX_MAX} characters")
    return p


def comment_tag(run: str) -> str:
    return f"nftrace:{run}"


@dataclass(frozen=True)
class Flow:
    """The packet's header fields as one chain sees them; None = not matched on."""

    proto: str
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    tcp_flags: str | None = None  # comma list of FIN,SYN,RST,ACK that are set ("SYN", "ACK")
    iif: str | None = None
    oif: str | None = None

    def covers(self, other: Flow) -> bool:
        """A rule matching self also matches a packet that looks like other."""
        for name in ("proto", "src", "dst", "sport", "dport", "icmp_type", "icmp_code", "tcp_flags", "iif", "oif"):
            mine = getattr(self, name)
            if mine is not None and mine != getattr(other, name):
                return False
        return True

    def match_args(self) -> list[str]:
        """iptables match options, in the order iptables-save prints them."""
        a: list[str] = []
        if self.src:
            a += ["-s", f"{self.src}/32"]
        if self.dst:
            a += ["-d", f"{self.dst}/32"]
        if self.iif:
            a += ["-i", self.iif]
        if self.oif:
            a += ["-o", self.oif]
        a += ["-p", self.proto]
        if self.proto in PORT_PROTOS:
            ext = ["-m", self.proto]
            if self.sport is not None:
                ext += ["--sport", str(self.sport)]
            if self.dport is not None:
                ext += ["--dport", str(self.dport)]
            if self.proto == "tcp" and self.tcp_flags is not None:
                ext += ["--tcp-flags", ",".join(TCP_FLAG_MASK), self.tcp_flags or "NONE"]
            if len(ext) > 2:
                a += ext
        elif self.proto == "icmp" and self.icmp_type is not None:
            code = f"/{self.icmp_code}" if self.icmp_code is not None else ""
            a += ["-m", "icmp", "--icmp-type", f"{self.icmp_type}{code}"]
        return a

    def describe(self) -> str:
        def ep(addr: str | None, port: int | None) -> str:
            a = addr or "*"
            return f"{a}:{port}" if port is not None else a

        s = f"{self.proto} {ep(self.src, self.sport)} > {ep(self.dst, self.dport)}"
        if self.proto == "icmp" and self.icmp_type is not None:
            s += f" type {self.icmp_type}" + (f"/{self.icmp_code}" if self.icmp_code is not None else "")
        if self.iif:
            s += f" in {self.iif}"
        if self.oif:
            s += f" out {self.oif}"
        return s

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"proto": self.proto, "src": self.src, "dst": self.dst}
        if self.proto in PORT_PROTOS:
            d["sport"], d["dport"] = self.sport, self.dport
        if self.proto == "icmp":
            d["icmp_type"], d["icmp_code"] = self.icmp_type, self.icmp_code
        if self.tcp_flags is not None:
            d["tcp_flags"] = self.tcp_flags
        d["iif"], d["oif"] = self.iif, self.oif
        return d


@dataclass(frozen=True)
class Visit:
    hook: str
    table: str
    chain: str
    builtin: bool
    flow: Flow

    def where(self) -> str:
        return f"{self.hook} {self.table}:{self.chain}"


@dataclass
class Probe:
    """One rule we insert at position 1 of table/chain.  n=0 is the canary."""

    n: int
    table: str
    chain: str
    hook: str
    flow: Flow
    target: list[str]  # ["-j", "LOG", "--log-prefix", ...]
    run: str

    def spec(self) -> list[str]:
        return [*self.flow.match_args(), "-m", "comment", "--comment", comment_tag(self.run), *LIMIT, *self.target]

    def argv(self, tool: str, op: str) -> list[str]:
        """iptables argv: op is -I (insert at 1), -D (delete by exact spec) or -C (check)."""
        pos = ["1"] if op == "-I" else []
        return [tool, "-w", "20", "-t", self.table, op, self.chain, *pos, *self.spec()]

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "hook": self.hook, "table": self.table, "chain": self.chain, "match": self.flow.to_json()}


def target_args(kind: str, run: str, n: int, nflog_group: int | None = None) -> list[str]:
    if kind == "LOG":
        return ["-j", "LOG", "--log-prefix", log_prefix(run, n)]
    if kind == "NFLOG":
        assert nflog_group is not None
        return ["-j", "NFLOG", "--nflog-prefix", log_prefix(run, n), "--nflog-group", str(nflog_group)]
    if kind == "TRACE":
        return ["-j", "TRACE"]
    raise ValueError(f"unknown probe kind {kind!r}")


# ---------------------------------------------------------------------------- visits


@dataclass
class _State:
    proto: str
    src: str | None
    dst: str | None
    sport: int | None
    dport: int | None
    icmp_type: int | None
    icmp_code: int | None
    tcp_flags: str | None
    iif: str | None
    oif: str | None = None
    unknown: set[str] = field(default_factory=set)

    def flow_at(self, hook: str, oif: str | None) -> Flow:
        f = Flow(
            proto=self.proto,
            src=self.src,
            dst=self.dst,
            sport=self.sport if self.proto in PORT_PROTOS else None,
            dport=self.dport if self.proto in PORT_PROTOS else None,
            icmp_type=self.icmp_type if self.proto == "icmp" else None,
            icmp_code=self.icmp_code if self.proto == "icmp" else None,
            tcp_flags=self.tcp_flags if self.proto == "tcp" else None,
            iif=self.iif if hook in HOOKS_WITH_IN else None,
            oif=oif if hook in HOOKS_WITH_OUT else None,
        )
        if "sport" in self.unknown:
            f = replace(f, sport=None)
        if "dport" in self.unknown:
            f = replace(f, dport=None)
        return f


def tcp_flag_word(flags: Any) -> str | None:
    """The packet's flags among FIN,SYN,RST,ACK as `--tcp-flags FIN,SYN,RST,ACK WORD` wants them."""
    if flags is None:
        return None
    names = {f.strip().upper() for f in str(flags).split(",") if f.strip()}
    set_ = [f for f in TCP_FLAG_MASK if f in names]
    return ",".join(set_) if set_ else "NONE"


def initial_state(packet: dict[str, Any], origin: str, unknown: set[str] | None = None) -> _State:
    return _State(
        proto=str(packet["proto"]),
        src=packet.get("src") or None,
        dst=packet.get("dst"),
        sport=packet.get("sport"),
        dport=packet.get("dport"),
        icmp_type=packet.get("icmp_type"),
        icmp_code=packet.get("icmp_code"),
        tcp_flags=tcp_flag_word(packet.get("tcp_flags")) if packet.get("proto") == "tcp" else None,
        iif=packet.get("iif") if origin == "ingress" else None,
        unknown=set(unknown or ()),
    )


def _split_endpoint(text: str) -> tuple[str, int | None]:
    if text.count(":") == 1:
        a, p = text.split(":")
        return a, int(p)
    return text, None


def branch_visits(steps: list[dict[str, Any]], state: _State) -> list[Visit]:
    """Every chain visit of one branch, with the packet as that chain sees it."""
    visits: list[Visit] = []
    group: tuple[str, str] | None = None
    hook: str | None = None
    hook_oif: str | None = None
    for s in steps:
        kind = s.get("kind")
        if kind == "route":
            if s.get("result") in ("forward", "output", "reroute"):
                state.oif = s.get("oif")
            if s.get("result") == "output" and s.get("src"):
                state.src = s["src"]
            continue
        if kind == "nat":
            _apply_nat(state, s)
            continue
        if kind == "loopback":
            state.iif, state.oif = s.get("iif") or "lo", None
            group = None
            continue
        if kind not in ("rule", "policy", "return"):
            continue
        key = (str(s["hook"]), str(s["table"]))
        if key != group:
            group = key
            if s["hook"] != hook:
                hook, hook_oif = str(s["hook"]), state.oif
            visits.append(Visit(key[0], key[1], key[0], True, state.flow_at(key[0], hook_oif)))
        if kind == "rule" and s.get("matched") and s.get("verdict") in ("JUMP", "GOTO") and s.get("target"):
            visits.append(Visit(key[0], key[1], str(s["target"]), False, state.flow_at(key[0], hook_oif)))
    return visits


def _apply_nat(state: _State, s: dict[str, Any]) -> None:
    hook = s.get("hook", "")
    manip_dst = hook in DST_NAT_HOOKS
    after = s.get("after")
    if after:
        addr, port = _split_endpoint(str(after))
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            addr = None  # type: ignore[assignment]
        if manip_dst:
            if addr:
                state.dst = addr
            if port is not None:
                state.dport = port
        else:
            if addr:
                state.src = addr
            if port is not None:
                state.sport = port
    rp = s.get("random_port")
    if rp in ("sport", "dport"):
        state.unknown.add(rp)


# ---------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    run: str
    kind: str  # LOG | NFLOG
    probes: list[Probe]
    branches: list[list[Visit]]  # visits of each predicted branch, in the trace's order
    nflog_group: int | None = None

    def chain_probes(self, table: str, chain: str) -> list[Probe]:
        """Probes of one chain, top-down (they are all at the top, n ascending)."""
        return sorted((p for p in self.probes if p.table == table and p.chain == chain), key=lambda p: p.n)

    def expected(self, branch: int) -> list[tuple[int, Visit]]:
        """(probe n, visit) in the order the kernel would log them for this branch."""
        out: list[tuple[int, Visit]] = []
        for v in self.branches[branch]:
            for p in self.chain_probes(v.table, v.chain):
                if p.flow.covers(v.flow):
                    out.append((p.n, v))
        return out

    def by_n(self) -> dict[int, Probe]:
        return {p.n: p for p in self.probes}


class PlanError(ValueError):
    pass


def make_plan(
    trace: dict[str, Any],
    run: str,
    kind: str = "LOG",
    *,
    unknown: set[str] | None = None,
    nflog_group: int | None = None,
    max_probes: int = MAX_PROBES,
) -> Plan:
    """Probes for every chain visit of every predicted branch (deduplicated per chain and match)."""
    branches: list[list[Visit]] = []
    for b in trace["branches"]:
        st = initial_state(trace["packet"], trace["origin"], unknown)
        branches.append(branch_visits(b["steps"], st))
    probes: list[Probe] = []
    seen: dict[tuple[str, str, Flow], Probe] = {}
    for visits in branches:
        for v in visits:
            key = (v.table, v.chain, v.flow)
            if key in seen:
                continue
            # a probe whose match another probe of the chain already covers exactly is the same rule
            n = len(probes) + 1
            p = Probe(n, v.table, v.chain, v.hook, v.flow, target_args(kind, run, n, nflog_group), run)
            seen[key] = p
            probes.append(p)
    if len(probes) > max_probes:
        raise PlanError(
            f"the predicted branches visit {len(probes)} chain/packet combinations (more than {max_probes}): "
            "narrow the flow (--sport, a single endpoint) so fewer branches need probes"
        )
    return Plan(run=run, kind=kind, probes=probes, branches=branches, nflog_group=nflog_group)


def canary_probe(run: str, kind: str, chain_table: str, sport: int, nflog_group: int | None = None) -> Probe:
    """Probe 0: logs one UDP packet 127.0.0.1:sport > 127.0.0.1:9 that we send ourselves, to prove the
    log path (sysctl, logger, reader) works before anything else is inserted."""
    flow = Flow(proto="udp", src="127.0.0.1", dst="127.0.0.1", sport=sport, dport=9, oif="lo")
    return Probe(0, chain_table, "OUTPUT", "OUTPUT", flow, target_args(kind, run, 0, nflog_group), run)
