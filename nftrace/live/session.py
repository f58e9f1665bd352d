"""One live run: predict, instrument, observe, compare, and always leave the host as it was.

Order of a run (every step after 4 is undone in `_cleanup`, whatever happens):

1. read the host (snapshot) and predict the path offline;
2. choose the log source (static checks) and plan the probes;
3. with --dry-run: return the commands, change nothing;
4. take the run's lock and write the state file listing every rule it may insert;
5. start the reader, prove the log path with the canary (probe 0: a UDP packet we send
   on loopback), remove the canary;
6. insert the probes (position 1, descending n, so probe 1 ends up on top);
7. send the packet (--inject) or wait for real traffic, read this run's lines;
8. remove every probe by exact spec (noting those someone else removed), stop the
   reader, delete the state file; 9. compare.

SIGINT, SIGTERM and SIGHUP interrupt only the waiting phases (reading the host,
canary, observation); in the phases that change the host they are noted and acted
on between two commands.  After the cleanup the process dies by the same signal.
SIGKILL cannot be caught: `nftrace live --cleanup` finishes the job from the state file.
"""

from __future__ import annotations

import errno
import os
import random
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from nftrace.errors import UsageError
from nftrace.live.compare import Outcome, branch_rule_path, compare_log, compare_trace, trace_hops
from nftrace.live.inject import Datagram, ingress_path, new_ip_id, send_frame, send_raw
from nftrace.live.plan import (
    Flow,
    Plan,
    PlanError,
    Probe,
    branch_visits,
    canary_probe,
    initial_state,
    make_plan,
    target_args,
)
from nftrace.live.probes import RuleOps
from nftrace.live.snapshot import HostSnapshot, detect_backend, iptables_tool, snapshot_host
from nftrace.live.sources import (
    ARRIVED,
    AUTO_ORDER,
    Hit,
    NftTraceSource,
    Recorder,
    Source,
    make_source,
    nft_positions,
)
from nftrace.live.state import RunState, StateFile, ensure_dir, state_dir
from nftrace.live.system import LiveError, Target, have, proc_start_time, shell_quote

SCHEMA = "nftrace.live/1"
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_CONFIRMED, EXIT_DIFFERS, EXIT_INCONCLUSIVE, EXIT_CLEANUP_FAILED = 0, 3, 4, 1
CANARY_TABLES = ("filter", "mangle", "raw", "security")


@dataclass
class LiveOptions:
    packet: dict[str, Any]  # the flow, as cli.packet_dict() returns it
    inject: bool = False
    from_netns: str | None = None
    source: str = "auto"
    timeout: float | None = None  # default: 5 s with --inject, 30 s waiting for traffic
    netns: str | None = None
    backend: str = "auto"
    dry_run: bool = False
    rules_file: str | None = None  # predict from this dump instead of the live rules
    state_dir: Path | None = None
    progress: Callable[[str], None] | None = None


@dataclass
class LiveResult:
    doc: dict[str, Any]
    status: int
    signalled: int | None = None
    commands: list[list[str]] = field(default_factory=list)


class _Signalled(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _CanaryFailed(Exception):
    pass


class _StateRecorder(Recorder):
    def __init__(self, session: Session) -> None:
        self.s = session

    def add_nft_table(self, spec: str) -> None:
        assert self.s.statefile is not None
        self.s.statefile.state.nft_tables.append(spec)
        self.s.statefile.write()
        self.s.nft_tables.append(spec)

    def add_reader(self, pid: int, argv0: str) -> None:
        assert self.s.statefile is not None
        self.s.statefile.state.readers.append({"pid": pid, "start_time": proc_start_time(pid), "argv0": argv0})
        self.s.statefile.write()

    def add_file(self, path: str) -> None:
        assert self.s.statefile is not None
        self.s.statefile.state.files.append(path)
        self.s.statefile.write()


class Session:
    def __init__(self, opts: LiveOptions) -> None:
        self.opts = opts
        self.run = secrets.token_hex(3)
        self.target = Target(opts.netns)
        self.warnings: list[str] = []
        self.statefile: StateFile | None = None
        self.ops: RuleOps | None = None
        self.inserted: dict[int, Probe] = {}  # probes whose -I succeeded and that are not removed yet
        self.inserted_count = 0
        self.removed_count = 0
        self.disappeared: set[int] = set()
        self.cleanup_failed: list[str] = []
        self.nft_tables: list[str] = []
        self.source: Source | None = None
        self.signalled: int | None = None
        self._interruptible = False
        self._old_handlers: dict[int, Any] = {}
        self.backend = ""
        self.dir = opts.state_dir or state_dir()
        self.pid = os.getpid()

    # ------------------------------------------------------------------ signals

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self.pid:
            # a forked copy of us that never exec'd (pyroute2's netns helper is one): not ours to
            # handle; end it the way its parent meant
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.signalled is None:
            self.signalled = signum
        if self._interruptible:
            self._interruptible = False
            raise _Signalled(signum)

    def _install_signals(self) -> None:
        try:
            for s in SIGNALS:
                self._old_handlers[s] = signal.signal(s, self._on_signal)
        except ValueError:  # not the main thread (an embedding program): no handlers
            self._old_handlers = {}

    def _restore_signals(self) -> None:
        for s, h in self._old_handlers.items():
            signal.signal(s, h)
        self._old_handlers = {}

    def _interruptible_phase(self, on: bool) -> None:
        self._interruptible = on
        if on and self.signalled is not None:
            self._interruptible = False
            raise _Signalled(self.signalled)

    def _check(self) -> None:
        """Between two host changes: act on a signal that arrived meanwhile."""
        if self.signalled is not None:
            raise _Signalled(self.signalled)

    def _say(self, msg: str) -> None:
        if self.opts.progress:
            self.opts.progress(msg)

    # ------------------------------------------------------------------ the run

    def execute(self) -> LiveResult:
        self._install_signals()
        try:
            return self._execute()
        finally:
            self._restore_signals()

    def _execute(self) -> LiveResult:
        o = self.opts
        outcome: Outcome | None = None
        prep: dict[str, Any] = {}
        error: BaseException | None = None
        try:
            self._interruptible_phase(True)
            prep = self._prepare()
            if o.dry_run:
                return self._dry_run(prep)
            self._interruptible_phase(False)
            hits, send_error = self._instrument_and_observe(prep)
            prep["send_error"] = send_error
            prep["hits"] = hits
        except _Signalled as e:
            self.signalled = e.signum
        except BaseException as e:  # cleaned up below, then re-raised
            error = e
        finally:
            self._interruptible = False
            self._cleanup()
        if error is not None:
            raise error
        if self.signalled is not None:
            doc = self._doc(prep, None)
            return LiveResult(doc, 128 + self.signalled, self.signalled)
        outcome = self._compare(prep)
        doc = self._doc(prep, outcome)
        status = {"confirmed": EXIT_CONFIRMED, "differs": EXIT_DIFFERS}.get(outcome.verdict, EXIT_INCONCLUSIVE)
        if self.cleanup_failed:
            status = EXIT_CLEANUP_FAILED
        return LiveResult(doc, status)

    # ------------------------------------------------------------------ 1-3: predict and plan

    def _prepare(self) -> dict[str, Any]:
        o = self.opts
        d = dict(o.packet)
        origin = d.get("origin") or ("ingress" if d.get("iif") else "local")
        if ":" in str(d.get("dst", "")) or ":" in str(d.get("src") or ""):
            raise UsageError("live mode handles IPv4 flows only (IPv6 is not implemented yet)")
        proto = str(d.get("proto") or "").lower()
        if o.from_netns and not o.inject:
            raise UsageError("--from-netns sends a packet: it needs --inject")
        if o.inject:
            if proto not in ("tcp", "udp", "icmp"):
                raise UsageError(f"--inject sends tcp, udp or icmp packets, not {proto or 'nothing'}")
            if str(d.get("ct_state") or "NEW").upper() != "NEW":
                raise UsageError("--inject sends a new packet: conntrack sees it as NEW, so drop `state`")
            if origin == "ingress" and not o.from_netns:
                raise UsageError(
                    "--inject for an ingress flow needs --from-netns NAME (a namespace on the ingress side, "
                    "such as a pod's); or say --local for a locally sent packet"
                )
            if origin == "local" and o.from_netns:
                raise UsageError("--from-netns sends from another namespace: the flow cannot be --local")
            if o.from_netns and o.from_netns == o.netns:
                raise UsageError("--from-netns must be another namespace than --netns")
        if o.from_netns:
            Target(o.from_netns)  # exists?
        unknown: set[str] = set()
        if proto in ("tcp", "udp") and d.get("sport") in (None, ""):
            if o.inject:
                d["sport"] = random.randint(32768, 60999)
            else:
                unknown.add("sport")
                self.warnings.append("no source port given: predicted with 40000; the probes match any source port")
        if o.inject and proto == "icmp" and d.get("icmp_type") in (None, ""):
            d["icmp_type"] = "8/0"
        self.backend = o.backend if o.backend != "auto" else detect_backend(self.target)
        self._say(f"reading the rules ({iptables_tool(self.backend, '-save')}) and the host context")
        snap = snapshot_host(self.target, self.backend)
        self.warnings += snap.warnings
        trace = self._predict(snap, d)
        timeout = o.timeout if o.timeout is not None else (5.0 if o.inject else 30.0)
        prep: dict[str, Any] = {"packet": d, "origin": origin, "snap": snap, "trace": trace, "timeout": timeout,
                                "unknown": unknown, "canary_sport": random.randint(20000, 32000)}  # fmt: skip
        self._choose_plan(prep)
        return prep

    def _predict(self, snap: HostSnapshot, d: dict[str, Any]) -> dict[str, Any]:
        from nftrace.engine.packet import packet_from_dict
        from nftrace.engine.pipeline import Engine

        rs = snap.ruleset
        if self.opts.rules_file:
            from nftrace.cli import _read
            from nftrace.ruleset.parser import parse_rules

            rs = parse_rules(_read(self.opts.rules_file, "rules"), self.opts.rules_file)
            self.warnings.append(f"predicted from {self.opts.rules_file}, not from the live rules")
        pkt, origin = packet_from_dict(d)
        if pkt.family != "ipv4":
            raise UsageError("live mode handles IPv4 flows only (IPv6 is not implemented yet)")
        engine = Engine(rs, snap.host, snap.ipsets, backend=self.backend)
        return engine.trace(pkt, origin).to_json()

    def _choose_plan(self, prep: dict[str, Any]) -> None:
        """Candidate sources in order, each with its plan (probes depend on the source's rule kind)."""
        name = self.opts.source
        names = list(AUTO_ORDER) if name == "auto" else [name]
        reasons: list[str] = []
        cands: list[tuple[Source, Plan | None, Probe | None]] = []
        for n in names:
            src = make_source(n, self.run, self.backend, self.dir, lambda: self._nft_trace_rules(prep))
            why = None
            if src.rule_kind == "TRACE" and self.backend == "legacy":
                why = self._legacy_trace_problem(prep)  # first: no sysctl can fix it
            why = why or src.unavailable(self.target)
            if why is not None:
                reasons.append(f"{n}: {why}")
                continue
            plan, canary = self._plan_for(src, prep)
            cands.append((src, plan, canary))
        if not cands:
            if name == "auto":
                raise LiveError("no log source works here: " + "; ".join(reasons))
            raise LiveError(f"--source {name} cannot work here: {reasons[0].split(': ', 1)[1]}")
        prep["candidates"] = cands
        prep["source_reasons"] = reasons

    def _plan_for(self, src: Source, prep: dict[str, Any]) -> tuple[Plan | None, Probe | None]:
        trace = prep["trace"]
        live = prep["snap"].ruleset
        canary_sport = prep["canary_sport"]
        if isinstance(src, NftTraceSource):
            src.canary_sport = canary_sport
            return None, None
        kind = "NFLOG" if src.rule_kind == "NFLOG" else "LOG"
        group = getattr(src, "group", None)
        canary = None
        for t in CANARY_TABLES:
            if t in live.tables and "OUTPUT" in live.tables[t].chains:
                canary = canary_probe(self.run, kind, t, canary_sport, group)
                break
        if canary is None:
            self.warnings.append("no OUTPUT chain to hold the canary: the log path is not proven before the run")
        if src.rule_kind == "TRACE":  # legacy: one TRACE rule in raw
            hook = "PREROUTING" if prep["origin"] == "ingress" else "OUTPUT"
            flow = self._first_flow(prep, hook)
            probe = Probe(1, "raw", hook, hook, flow, target_args("TRACE", self.run, 1), self.run)
            return Plan(self.run, "TRACE", [probe], []), canary
        try:
            plan = make_plan(trace, self.run, kind, unknown=prep["unknown"], nflog_group=group)
        except PlanError as e:
            raise LiveError(str(e)) from None
        missing = sorted({(p.table, p.chain) for p in plan.probes if not _chain_exists(live, p.table, p.chain)})
        if missing:
            raise LiveError(
                "the predicted path crosses chains the live rules do not have: "
                + ", ".join(f"{t} {c}" for t, c in missing)
                + " (predicted from another dump?)"
            )
        if not plan.probes and not self._unroutable_local(prep):
            raise LiveError(
                "the predicted path crosses no chain of the live rules (e.g. the packet is dropped by routing "
                "before any table sees it): a LOG probe has nothing to observe; --source trace can show "
                "whether the packet arrives"
            )
        return plan, canary

    def _first_flow(self, prep: dict[str, Any], hook: str) -> Flow:
        trace = prep["trace"]
        for b in trace["branches"]:
            vs = branch_visits(b["steps"], initial_state(trace["packet"], trace["origin"], prep["unknown"]))
            for v in vs:
                if v.hook == hook:
                    return v.flow
        st = initial_state(trace["packet"], trace["origin"], prep["unknown"])
        src = self._route_src(trace)
        if src:
            st.src = src
        return st.flow_at(hook, None)

    @staticmethod
    def _route_src(trace: dict[str, Any]) -> str | None:
        for b in trace["branches"]:
            for s in b["steps"]:
                if s.get("kind") == "route" and s.get("src"):
                    return str(s["src"])
        return None

    def _unroutable_local(self, prep: dict[str, Any]) -> bool:
        trace = prep["trace"]
        return (
            self.opts.inject
            and trace["origin"] == "local"
            and all(b["result"]["disposition"] == "unroutable" for b in trace["branches"])
        )

    def _legacy_trace_problem(self, prep: dict[str, Any]) -> str | None:
        hook = "PREROUTING" if prep["origin"] == "ingress" else "OUTPUT"
        if not _chain_exists(prep["snap"].ruleset, "raw", hook):
            return (
                f"the legacy trace needs a raw {hook} chain (-j TRACE works only in raw), and creating the raw "
                "table would leave it behind: use --source kmsg or nflog"
            )
        return None

    def _nft_trace_rules(self, prep: dict[str, Any]) -> tuple[str, str, str]:
        hook = "PREROUTING" if prep["origin"] == "ingress" else "OUTPUT"
        flow = self._first_flow(prep, hook)
        canary = (
            f"ip saddr 127.0.0.1 ip daddr 127.0.0.1 udp sport {prep.get('canary_sport', 9)} udp dport 9 "
            "limit rate 10/second meta nftrace set 1"
        )
        return (
            nft_match(flow) + " limit rate 10/second meta nftrace set 1",
            canary,
            "pre" if hook == "PREROUTING" else "out",
        )

    # ------------------------------------------------------------------ dry run

    def _dry_run(self, prep: dict[str, Any]) -> LiveResult:
        src, plan, canary = prep["candidates"][0]
        self.source = None
        tool = iptables_tool(self.backend)
        cmds: list[list[str]] = []
        wrap = self.target.argv
        shown: list[str] = []
        if isinstance(src, NftTraceSource):
            shown.append(f"{shell_quote(wrap(['nft', '-f', '-']))} <<'EOF'\n{src.table_text()}EOF")
            shown.append(f"{shell_quote(wrap(src.monitor_argv()))} > {shell_quote([str(src.path)])} &")
        else:
            cmds += [wrap(c) for c in src.commands()]
            if canary is not None:
                cmds.append(wrap(canary.argv(tool, "-I")))
                cmds.append(wrap(canary.argv(tool, "-D")))
            assert plan is not None
            cmds += [wrap(p.argv(tool, "-I")) for p in sorted(plan.probes, key=lambda p: -p.n)]
            cmds += [wrap(p.argv(tool, "-D")) for p in plan.probes]
        if isinstance(src, NftTraceSource):
            cmds.append(wrap(["nft", "delete", "table", "inet", src.table]))
        doc = self._doc(prep, None)
        doc["dry_run"] = True
        doc["commands"] = shown + [shell_quote(c) for c in cmds]
        doc["state_file"] = str(self.dir / f"{self.run}.json")
        return LiveResult(doc, 0, None, cmds)

    # ------------------------------------------------------------------ 4-7: instrument and observe

    def _instrument_and_observe(self, prep: dict[str, Any]) -> tuple[list[Hit], str | None]:
        sf = StateFile(RunState(self.run, self.opts.netns, self.backend), ensure_dir(self.dir))
        sf.acquire()
        assert sf.lock_fd is not None
        self.ops = RuleOps(self.target, self.backend, pass_fds=(sf.lock_fd,))
        self.statefile = sf
        sf.write()
        failures: list[str] = []
        chosen: tuple[Source, Plan | None, Probe | None] | None = None
        for src, plan, canary in prep["candidates"]:
            self._check()
            try:
                self._start_source(src, canary, prep)
                chosen = (src, plan, canary)
                break
            except _CanaryFailed as e:
                failures.append(f"{src.describe()}: {e}")
                self._stop_source()
                if self.opts.source != "auto":
                    raise LiveError(f"--source {self.opts.source} does not work here: {e}") from None
        if chosen is None:
            raise LiveError("no log source works here: " + "; ".join(failures + prep["source_reasons"]))
        src, plan, _ = chosen
        prep["source"] = src
        prep["plan"] = plan
        if failures:
            self.warnings.append("sources that failed their canary: " + "; ".join(failures))
        if plan is not None and plan.probes:
            self._insert(plan.probes)
        return self._observe(prep)

    def _record_rules(self, probes: list[Probe]) -> None:
        assert self.statefile is not None
        tool = iptables_tool(self.backend)
        st = self.statefile.state
        for p in probes:
            st.rules.append({"n": p.n, "table": p.table, "chain": p.chain, "delete": p.argv(tool, "-D")})
        self.statefile.write()

    def _insert(self, probes: list[Probe]) -> None:
        """State first, then one `iptables -I CHAIN 1` per probe, highest n first."""
        assert self.ops is not None
        self._record_rules(probes)
        tool = iptables_tool(self.backend)
        self._say(f"inserting {len(probes)} probe rule(s) (run {self.run})")
        for p in sorted(probes, key=lambda p: -p.n):
            self._check()
            try:
                self.ops.insert(p.argv(tool, "-I"))
            except LiveError as e:
                if p.n == 0 and ("No chain/target/match" in e.message or "Couldn't load target" in e.message):
                    raise LiveError(
                        f"the {p.target[1]} target is not available in this kernel (modprobe xt_{p.target[1]}): "
                        + e.message
                    ) from None
                raise
            self.inserted[p.n] = p
            self.inserted_count += 1

    def _remove(self, p: Probe, final: bool = True) -> None:
        """Delete one inserted probe by its exact spec.  A failure mid-run leaves it for the final cleanup."""
        assert self.ops is not None
        res = self.ops.remove(p.argv(iptables_tool(self.backend), "-D"))
        if res.status == "removed":
            self.removed_count += 1
        elif res.status == "absent":
            self.disappeared.add(p.n)
            self.warnings.append(
                f"probe {p.n} ({p.table} {p.chain}) was removed by another program during the run: not re-inserted"
            )
        else:
            if final:
                argv = p.argv(iptables_tool(self.backend), "-D")
                self.cleanup_failed.append(f"{shell_quote(argv)}: {res.message}")
            return
        self.inserted.pop(p.n, None)
        if self.statefile is not None:
            st = self.statefile.state
            st.rules = [r for r in st.rules if not (r["n"] == p.n and r["chain"] == p.chain and r["table"] == p.table)]

    def _start_source(self, src: Source, canary: Probe | None, prep: dict[str, Any]) -> None:
        self.source = src
        recorder = _StateRecorder(self)
        if isinstance(src, NftTraceSource) and self.statefile is not None:
            src.pass_fds = (self.statefile.lock_fd,) if self.statefile.lock_fd is not None else ()
        self._say(f"starting the log source {src.describe()}")
        try:
            src.start(self.target, recorder)
        except LiveError as e:
            raise _CanaryFailed(e.message) from None
        group = getattr(src, "group", None)
        if canary is not None and canary.target[1] == "NFLOG":
            canary.target = target_args("NFLOG", self.run, 0, group)  # the group the source could bind
        if canary is not None:
            try:
                self._insert([canary])
            except LiveError as e:
                raise _CanaryFailed(e.message) from None
        elif not isinstance(src, NftTraceSource):
            return
        self._interruptible_phase(True)
        ok = self._canary_wait(src, prep["canary_sport"], limit=max(2.5, 4 * src.settle))
        self._interruptible_phase(False)
        if canary is not None:
            self._remove(canary, final=False)
            assert self.statefile is not None
            self.statefile.write()
        if not ok:
            raise _CanaryFailed(
                "the canary packet's log line never arrived (is the logger writing there? for a namespace, "
                "is net.netfilter.nf_log_all_netns=1?)"
            )
        for s, plan, _ in prep.get("candidates", []):
            if s is src and plan is not None and plan.kind == "NFLOG":  # the probes log to the bound group
                for p in plan.probes:
                    p.target = target_args("NFLOG", self.run, p.n, group)
                plan.nflog_group = group

    def _canary_wait(self, src: Source, sport: int, limit: float) -> bool:
        deadline = time.monotonic() + limit
        next_send = 0.0
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_send:
                next_send = now + 0.4
                try:
                    send_raw(self.target, Datagram("udp", "127.0.0.1", "127.0.0.1", sport, 9, ip_id=new_ip_id()))
                except OSError as e:
                    self.warnings.append(f"cannot send the canary packet on loopback: {e.strerror}")
                    return False
            if any(h.n == 0 for h in src.poll()):
                return True
            time.sleep(0.02)
        return False

    def _stop_source(self) -> None:
        if self.source is not None:
            try:
                self.source.close()
            finally:
                self.source = None

    def _datagram(self, prep: dict[str, Any]) -> Datagram:
        d, trace = prep["packet"], prep["trace"]
        pk = trace["packet"]
        src = pk.get("src") or self._route_src(trace)
        if not src:
            raise LiveError("no source address: give --src (the prediction found no route to pick one)")
        return Datagram(
            proto=pk["proto"],
            src=src,
            dst=pk["dst"],
            sport=pk.get("sport"),
            dport=pk.get("dport"),
            icmp_type=pk.get("icmp_type") if pk.get("icmp_type") is not None else 8,
            icmp_code=pk.get("icmp_code") or 0,
            tcp_flags=pk.get("tcp_flags") or "SYN",
            ttl=int(d.get("ttl") or 64),
            ip_id=new_ip_id(),
            mark=int(pk.get("mark") or 0) if prep["origin"] == "local" else 0,
            oif=d.get("oif") if prep["origin"] == "local" else None,
            length=int(d["length"]) if d.get("length") else None,
        )

    def _observe(self, prep: dict[str, Any]) -> tuple[list[Hit], str | None]:
        o = self.opts
        src: Source = prep["source"]
        plan: Plan | None = prep["plan"]
        timeout: float = prep["timeout"]
        want_id: str | None = None
        send_error: str | None = None
        self._interruptible_phase(True)
        if o.inject:
            dg = self._datagram(prep)
            prep["datagram"] = dg
            want_id = str(dg.ip_id)
            self._existing_connection(dg)
            where = f" from {o.from_netns}" if o.from_netns else ""
            self._say(f"sending {dg.proto} {dg.src} > {dg.dst} (IP ID {dg.ip_id}){where}")
            try:
                if o.from_netns:
                    sender = Target(o.from_netns)
                    path = ingress_path(self.target, prep["trace"]["packet"]["iif"], sender, dg.dst)
                    prep["ingress_if"] = path.ifname
                    send_frame(sender, path, dg)
                else:
                    send_raw(self.target, dg)
            except OSError as e:
                send_error = f"{errno.errorcode.get(e.errno or 0, 'E?')}: {e.strerror}"
        else:
            self._say(f"waiting up to {timeout:g}s for the flow's first packet")
        flow0 = self._first_flow(prep, "PREROUTING" if prep["origin"] == "ingress" else "OUTPUT")
        hits: list[Hit] = []
        t0 = time.monotonic()
        deadline = t0 + timeout
        last = t0
        quiet_long = max(1.5, 2.5 * src.settle)
        check_at = t0 + 2.0
        while True:
            now = time.monotonic()
            for h in src.poll():
                if h.n == 0:
                    continue
                if h.n == ARRIVED:
                    if want_id is None or h.ip_id == want_id:
                        want_id = h.ip_id
                        prep["arrived"] = True
                        last = now
                    continue
                if h.n is not None and (plan is None or h.n not in plan.by_n()):
                    continue
                if h.trace is not None and plan is not None and plan.kind == "TRACE":
                    if not _adjust_legacy(h, plan, prep["snap"].ruleset):
                        continue
                if want_id is None:
                    if h.n is None and not _fields_match(h.fields, flow0):
                        continue
                    want_id = h.ip_id
                    prep["observed_id"] = want_id
                if h.ip_id != want_id:
                    continue
                hits.append(h)
                last = now
            if now >= deadline:
                break
            if want_id is not None and (hits or prep.get("arrived")):
                complete = self._complete(prep, hits)
                if complete and now - last >= src.settle:
                    break
                if now - last >= quiet_long:
                    break
            elif o.inject and (send_error or now - t0 >= min(timeout, max(2.0, 3 * quiet_long))):
                break
            if not o.inject and now >= check_at and self.inserted:
                self._interruptible_phase(False)
                self._presence_check()
                self._interruptible_phase(True)
                check_at = now + 2.0
            time.sleep(0.02)
        self._interruptible_phase(False)
        if isinstance(src, NftTraceSource):
            pos = nft_positions(self.target)
            for h in hits:
                if h.trace is not None and h.trace.handle is not None:
                    h.trace.num = pos.get((h.trace.table, h.trace.chain, h.trace.handle))
        return hits, send_error

    def _existing_connection(self, dg: Datagram) -> None:
        """Warn when conntrack already has this 5-tuple: the packet is then no connection's first (nat
        chains are skipped), whatever the prediction assumed.  Read-only; skipped without `conntrack`."""
        if dg.proto not in ("tcp", "udp") or not have("conntrack"):
            return
        argv = ["conntrack", "-L", "-p", dg.proto, "--orig-src", dg.src, "--orig-dst", dg.dst,
                "--orig-port-src", str(dg.sport), "--orig-port-dst", str(dg.dport)]  # fmt: skip
        try:
            p = self.target.run(argv, timeout=5.0)
        except LiveError:
            return
        if p.returncode == 0 and p.stdout.strip():
            self.warnings.append(
                "conntrack already tracks this flow (an earlier packet with the same ports): the kernel treats the "
                "packet as part of that connection, not as a new one (nat is not consulted); use another --sport"
            )

    def _complete(self, prep: dict[str, Any], hits: list[Hit]) -> bool:
        plan: Plan | None = prep["plan"]
        trace = prep["trace"]
        if plan is not None and plan.kind in ("LOG", "NFLOG"):
            seen = [h.n for h in hits]
            return any([n for n, _ in plan.expected(b)] == seen for b in range(len(plan.branches)))
        # a trace: positions are known only at the end (nft handles); chains and verdicts suffice here
        obs = [(h["kind"], h["hook"], h["table"], h["chain"]) for h in trace_hops(hits)]
        return any(
            [(h["kind"], h["hook"], h["table"], h["chain"]) for h in branch_rule_path(b["steps"])] == obs
            for b in trace["branches"]
        )

    def _presence_check(self) -> None:
        assert self.ops is not None
        tool = iptables_tool(self.backend)
        for n, p in list(self.inserted.items()):
            if n in self.disappeared:
                continue
            if self.ops.check(p.argv(tool, "-D")) is False:
                self.disappeared.add(n)
                self.warnings.append(
                    f"probe {n} ({p.table} {p.chain}) disappeared during the run (another program rewrote the "
                    "chain): not re-inserted"
                )
                self.inserted.pop(n, None)

    # ------------------------------------------------------------------ 8: cleanup

    def _cleanup(self) -> None:
        """Undo everything, each step even when an earlier one failed.  Signals only noted."""
        if self.statefile is None:
            self._stop_source()
            return
        try:
            self._stop_source()
        except Exception as e:  # noqa: BLE001 - keep cleaning
            self.warnings.append(f"stopping the log source: {e}")
        for p in sorted(self.inserted.values(), key=lambda p: p.n):
            try:
                self._remove(p)
            except Exception as e:  # noqa: BLE001
                self.cleanup_failed.append(f"probe {p.n}: {e}")
        st = self.statefile.state
        # planned but maybe never inserted (a signal between the state write and the insert): delete
        # by spec anyway; an absent rule is expected here, not reported
        assert self.ops is not None
        for r in list(st.rules):
            res = self.ops.remove(list(r["delete"]))
            if res.status == "removed":
                self.removed_count += 1
                self.inserted_count += 1  # its insert had landed after all (child finished after a signal)
            if res.status != "failed":
                st.rules.remove(r)
            else:
                self.cleanup_failed.append(f"{shell_quote(r['delete'])}: {res.message}")
        from nftrace.live.probes import delete_nft_table

        for spec in list(st.nft_tables):
            res = delete_nft_table(
                self.target, spec, pass_fds=(self.statefile.lock_fd,) if self.statefile.lock_fd else ()
            )
            if res.status == "failed":
                self.cleanup_failed.append(f"nft delete table {spec}: {res.message}")
            else:
                st.nft_tables.remove(spec)
        for f in list(st.files):
            try:
                Path(f).unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                self.warnings.append(f"cannot remove {f}: {e.strerror}")
        if self.cleanup_failed:
            try:
                self.statefile.write()
            finally:
                self.statefile.release_keep()
        else:
            self.statefile.remove()

    # ------------------------------------------------------------------ 9: compare, report

    def _compare(self, prep: dict[str, Any]) -> Outcome:
        plan: Plan | None = prep.get("plan")
        hits: list[Hit] = prep.get("hits", [])
        if plan is None or plan.kind == "TRACE":
            return compare_trace(prep["trace"], hits, prep.get("send_error"), bool(prep.get("arrived")))
        return compare_log(plan, prep["trace"], hits, self.disappeared, prep.get("send_error"))

    def _doc(self, prep: dict[str, Any], outcome: Outcome | None) -> dict[str, Any]:
        o = self.opts
        src = prep.get("source") or (prep["candidates"][0][0] if prep.get("candidates") else None)
        plan: Plan | None = prep.get("plan") or (prep["candidates"][0][1] if prep.get("candidates") else None)
        dg: Datagram | None = prep.get("datagram")
        doc: dict[str, Any] = {
            "schema": SCHEMA,
            "run": self.run,
            "netns": o.netns,
            "backend": self.backend or None,
            "source": src.describe() if src is not None else None,
            "mode": "inject" if o.inject else "wait",
            "predicted": prep.get("trace"),
            "probes": [p.to_json() for p in plan.probes] if plan is not None else [],
            "observed": outcome.observed if outcome else [],
            "confirmed": bool(outcome and outcome.confirmed),
            "verdict": outcome.verdict if outcome else ("interrupted" if self.signalled else None),
            "branch": outcome.branch if outcome else None,
            "predicted_hops": outcome.predicted if outcome else [],
            "first_difference": outcome.first_difference if outcome else None,
            "inserted": self.inserted_count,
            "removed": self.removed_count,
            "disappeared": sorted(self.disappeared),
            "warnings": list(dict.fromkeys(self.warnings + (outcome.notes if outcome else []))),
        }
        if dg is not None:
            doc["injected"] = {"proto": dg.proto, "src": dg.src, "dst": dg.dst, "sport": dg.sport, "dport": dg.dport,
                               "ip_id": dg.ip_id, "from_netns": o.from_netns, "error": prep.get("send_error")}  # fmt: skip
        elif prep.get("observed_id"):
            doc["observed_ip_id"] = int(prep["observed_id"])
        if self.cleanup_failed:
            doc["cleanup_failed"] = self.cleanup_failed
        if self.signalled is not None:
            doc["signal"] = signal.Signals(self.signalled).name
        return doc


def _chain_exists(rs: Any, table: str, chain: str) -> bool:
    t = rs.tables.get(table)
    return t is not None and chain in t.chains


def _fields_match(fields: dict[str, str], flow: Flow) -> bool:
    """A trace line's packet is the flow's first packet as the first chain sees it."""
    pairs = [("SRC", flow.src), ("DST", flow.dst), ("SPT", flow.sport), ("DPT", flow.dport)]
    return all(v is None or fields.get(k) == str(v) for k, v in pairs)


def _adjust_legacy(h: Hit, plan: Plan, live: Any) -> bool:
    """Legacy TRACE lines as positions of the live rules.

    Our TRACE rule sits at position 1 of its raw chain: that chain's numbers shift by one.  The
    kernel (ip_tables.c, get_chainname_rulenum) prints an *unconditional* rule with a standard
    verdict (``-j DROP``, ``-j ACCEPT``, ``-j RETURN`` without matches) as ``return:N`` in a user
    chain and ``policy:N`` in a built-in chain, just like the implicit return and the policy,
    which come after the last rule: a number within the chain is that rule."""
    ev = h.trace
    assert ev is not None
    probe = plan.probes[0]
    if ev.num is None:
        return True
    if ev.table == probe.table and ev.chain == probe.chain:
        if ev.kind == "rule" and ev.num == 1:
            return False  # our own TRACE rule
        ev.num -= 1
    t = live.tables.get(ev.table)
    count = len(t.chains[ev.chain].rules) if t is not None and ev.chain in t.chains else None
    if ev.kind in ("return", "policy") and count is not None and ev.num <= count:
        ev.kind = "rule"
    return True


def nft_match(flow: Flow) -> str:
    """The flow as an nft match expression (for the private trace table)."""
    parts: list[str] = []
    if flow.iif:
        parts.append(f'iifname "{flow.iif}"')
    if flow.oif:
        parts.append(f'oifname "{flow.oif}"')
    if flow.src:
        parts.append(f"ip saddr {flow.src}")
    if flow.dst:
        parts.append(f"ip daddr {flow.dst}")
    if flow.proto in ("tcp", "udp"):
        parts.append(f"meta l4proto {flow.proto}")
        if flow.sport is not None:
            parts.append(f"{flow.proto} sport {flow.sport}")
        if flow.dport is not None:
            parts.append(f"{flow.proto} dport {flow.dport}")
        if flow.proto == "tcp" and flow.tcp_flags:
            want = "0x0" if flow.tcp_flags == "NONE" else "|".join(f.lower() for f in flow.tcp_flags.split(","))
            parts.append(f"tcp flags & (fin|syn|rst|ack) == {want}")
    elif flow.proto == "icmp":
        parts.append("meta l4proto icmp")
        if flow.icmp_type is not None:
            parts.append(f"icmp type {flow.icmp_type}")
        if flow.icmp_code is not None:
            parts.append(f"icmp code {flow.icmp_code}")
    else:
        parts.append(f"meta l4proto {flow.proto}")
    return " ".join(parts)


def run_live(opts: LiveOptions) -> LiveResult:
    return Session(opts).execute()
