"""Inserting and removing our rules, one at a time, by exact spec; and `nftrace live --cleanup`.

Rules are only ever inserted with ``iptables -w -t TABLE -I CHAIN 1 SPEC`` and
deleted with ``iptables -w -t TABLE -D CHAIN SPEC``: never by position (someone
else may have moved them), never with a restore, a flush or a table rewrite.  A
rule of ours that another program removed (kube-proxy and Calico rewrite their
chains) is reported, never re-inserted.

``--cleanup`` removes what dead runs left: everything their state files list, then
any rule carrying a ``nftrace:<run>`` comment whose run is not alive, but only when
the whole rule has exactly the shape live mode writes (anything else is left alone).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nftrace.live.plan import Probe
from nftrace.live.snapshot import BACKENDS, iptables_tool
from nftrace.live.state import RunState, list_states, lock_state, stale_tmp_files, state_dir
from nftrace.live.system import LiveError, Target, have, process_alive, shell_quote

RUN_RE = r"[0-9a-f]{6}"
NFT_TABLE_PREFIX = "nftrace_"
_LOCK_BUSY = ("xtables lock", "Resource temporarily unavailable", "holding the xtables lock")


def _busy(stderr: str) -> bool:
    return any(s in stderr for s in _LOCK_BUSY)


@dataclass
class RemoveResult:
    status: str  # "removed" | "absent" | "failed"
    message: str = ""


class RuleOps:
    """Single-rule iptables operations in one namespace and backend."""

    def __init__(self, target: Target, backend: str, pass_fds: Iterable[int] = ()) -> None:
        self.target = target
        self.backend = backend
        self.tool = iptables_tool(backend)
        self.pass_fds = tuple(pass_fds)

    def _run(self, argv: list[str]) -> tuple[int, str]:
        rc, err = 0, ""
        for attempt in range(4):
            p = self.target.run(argv, timeout=60.0, pass_fds=self.pass_fds)
            rc, err = p.returncode, (p.stderr or p.stdout).strip()
            if rc == 0 or not _busy(err):
                break
            time.sleep(0.2 * (attempt + 1))
        return rc, err

    def insert(self, argv: list[str]) -> None:
        rc, err = self._run(argv)
        if rc != 0:
            raise LiveError(f"{shell_quote(argv)} failed (exit {rc}): {err.splitlines()[-1] if err else ''}")

    def check(self, delete_argv: list[str]) -> bool | None:
        """Is the rule there? (None when iptables could not tell.)"""
        argv = [a if a != "-D" else "-C" for a in delete_argv]
        rc, _ = self._run(argv)
        if rc == 0:
            return True
        if rc == 1:
            return False
        return None

    def remove(self, delete_argv: list[str]) -> RemoveResult:
        rc, err = self._run(delete_argv)
        if rc == 0:
            return RemoveResult("removed")
        present = self.check(delete_argv)
        if present is False:
            return RemoveResult("absent")
        if present is True:  # still there: one more try
            rc, err = self._run(delete_argv)
            if rc == 0:
                return RemoveResult("removed")
        return RemoveResult("failed", err.splitlines()[-1] if err else f"exit {rc}")


def probe_delete_argv(p: Probe, backend: str) -> list[str]:
    return p.argv(iptables_tool(backend), "-D")


def probe_insert_argv(p: Probe, backend: str) -> list[str]:
    return p.argv(iptables_tool(backend), "-I")


# ----------------------------------------------------------------------------- recognising our rules

_ADDR32 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}/32$")
_IFNAME = re.compile(r"^[^\s/]{1,15}$")
_NUM = re.compile(r"^\d{1,5}$")
_ICMP = re.compile(r"^\d{1,3}(/\d{1,3})?$")
_FLAGS = re.compile(r"^(NONE|ALL|[A-Z]{3}(,[A-Z]{3})*)$")
_LIMIT = re.compile(r"^\d+/(sec|second|min|minute|hour|day)$")


@dataclass
class OwnRule:
    run: str
    table: str
    chain: str
    spec: list[str]  # tokens after "-A CHAIN"
    line: str

    def delete_argv(self, backend: str) -> list[str]:
        return [iptables_tool(backend), "-w", "20", "-t", self.table, "-D", self.chain, *self.spec]


def parse_own_rule(line: str, table: str) -> OwnRule | None:
    """The rule as iptables-save printed it, when it has exactly the shape live mode inserts."""
    if "nftrace:" not in line or not line.startswith("-A "):
        return None
    try:
        tok = shlex.split(line)
    except ValueError:
        return None
    if len(tok) < 4:
        return None
    chain, spec = tok[1], tok[2:]
    opts: dict[str, list[str]] = {}
    modules: list[str] = []
    i = 0
    arity = {
        "-s": 1, "-d": 1, "-i": 1, "-o": 1, "-p": 1, "-m": 1, "--sport": 1, "--dport": 1, "--tcp-flags": 2,
        "--icmp-type": 1, "--comment": 1, "--limit": 1, "--limit-burst": 1, "-j": 1, "--log-prefix": 1,
        "--log-level": 1, "--nflog-prefix": 1, "--nflog-group": 1,
    }  # fmt: skip
    while i < len(spec):
        key = spec[i]
        n = arity.get(key)
        if n is None:
            return None
        vals = spec[i + 1 : i + 1 + n]
        if len(vals) != n:
            return None
        if key == "-m":
            modules.append(vals[0])
        elif key in opts:
            return None  # each option once
        else:
            opts[key] = vals
        i += 1 + n
    checks: dict[str, Callable[[list[str]], bool]] = {
        "-s": lambda v: bool(_ADDR32.match(v[0])),
        "-d": lambda v: bool(_ADDR32.match(v[0])),
        "-i": lambda v: bool(_IFNAME.match(v[0])),
        "-o": lambda v: bool(_IFNAME.match(v[0])),
        "-p": lambda v: v[0] in ("tcp", "udp", "icmp"),
        "--sport": lambda v: bool(_NUM.match(v[0])),
        "--dport": lambda v: bool(_NUM.match(v[0])),
        "--tcp-flags": lambda v: bool(_FLAGS.match(v[0]) and _FLAGS.match(v[1])),
        "--icmp-type": lambda v: bool(_ICMP.match(v[0])),
        "--limit": lambda v: bool(_LIMIT.match(v[0])),
        "--limit-burst": lambda v: bool(_NUM.match(v[0])),
        "--log-level": lambda v: bool(re.match(r"^\d$", v[0])),
        "--nflog-group": lambda v: bool(_NUM.match(v[0])),
    }
    for key, ok in checks.items():
        if key in opts and not ok(opts[key]):
            return None
    if any(m not in ("tcp", "udp", "icmp", "comment", "limit") for m in modules) or len(set(modules)) != len(modules):
        return None
    if "comment" not in modules or "limit" not in modules or "--limit" not in opts or "-p" not in opts:
        return None
    m = re.fullmatch(rf"nftrace:({RUN_RE})", opts.get("--comment", [""])[0])
    if not m:
        return None
    run = m.group(1)
    target = opts.get("-j", [""])[0]
    prefix_re = rf"nft:{run}:\d{{1,3}} "
    if target == "LOG":
        if not re.fullmatch(prefix_re, opts.get("--log-prefix", [""])[0]) or "--nflog-prefix" in opts:
            return None
    elif target == "NFLOG":
        if not re.fullmatch(prefix_re, opts.get("--nflog-prefix", [""])[0]) or "--log-prefix" in opts:
            return None
    elif target == "TRACE":
        if any(k in opts for k in ("--log-prefix", "--nflog-prefix", "--log-level", "--nflog-group")):
            return None
    else:
        return None
    return OwnRule(run=run, table=table, chain=chain, spec=spec, line=line)


def own_rules(save_text: str) -> list[OwnRule]:
    out: list[OwnRule] = []
    table = ""
    for line in save_text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith("-A ") and table:
            r = parse_own_rule(line, table)
            if r is not None:
                out.append(r)
    return out


# ----------------------------------------------------------------------------- private nft tables


def nft_table_name(run: str) -> str:
    return f"{NFT_TABLE_PREFIX}{run}"


def own_nft_tables(target: Target) -> list[tuple[str, str]]:
    """(run, "inet NAME") for every private trace table of ours in the namespace."""
    if not have("nft"):
        return []
    p = target.run(["nft", "list", "tables"])
    out = []
    for line in p.stdout.splitlines():
        m = re.fullmatch(rf"table inet ({NFT_TABLE_PREFIX}({RUN_RE}))", line.strip())
        if m:
            out.append((m.group(2), f"inet {m.group(1)}"))
    return out


def delete_nft_table(target: Target, spec: str, pass_fds: Iterable[int] = ()) -> RemoveResult:
    fam, _, name = spec.partition(" ")
    if fam != "inet" or not re.fullmatch(rf"{NFT_TABLE_PREFIX}{RUN_RE}", name):
        return RemoveResult("failed", f"refusing to delete table {spec!r}: not one of ours")
    p = target.run(["nft", "delete", "table", "inet", name], pass_fds=tuple(pass_fds))
    if p.returncode == 0:
        return RemoveResult("removed")
    listed = target.run(["nft", "list", "table", "inet", name])
    if listed.returncode != 0:
        return RemoveResult("absent")
    return RemoveResult("failed", p.stderr.strip())


def kill_reader(pid: int, start_time: int | None) -> bool:
    """SIGTERM (then SIGKILL) one of our reader processes, when it still is that process."""
    if not process_alive(pid, start_time):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(40):
        if not process_alive(pid, start_time):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    return True


# ----------------------------------------------------------------------------- --cleanup


@dataclass
class CleanupReport:
    removed: list[str] = field(default_factory=list)  # what was removed, human readable
    absent: int = 0  # recorded but already gone
    skipped: list[str] = field(default_factory=list)  # live runs left alone, unreadable states
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def cleanup_state(st: RunState, report: CleanupReport, directory: Path, lock_fd: int | None) -> None:
    """Remove everything a dead run's state lists; delete the state file only if all of it is gone."""
    try:
        target = Target(st.netns)
    except Exception as e:  # the namespace is gone: so are its rules
        report.removed.append(f"run {st.run}: namespace {st.netns} no longer exists ({e})")
        target = None
    for r in st.readers:
        if kill_reader(int(r["pid"]), r.get("start_time")):
            report.removed.append(f"run {st.run}: reader process {r['pid']} ({r.get('argv0', '?')})")
    failed = False
    if target is not None:
        ops = RuleOps(target, st.backend)
        for rule in st.rules:
            argv = list(rule["delete"])
            if not _is_delete_argv(argv, st.run):
                report.failed.append(f"run {st.run}: refusing to run a recorded command that is not ours: {argv}")
                failed = True
                continue
            res = ops.remove(argv)
            if res.status == "removed":
                report.removed.append(f"run {st.run}: {rule['table']} {rule['chain']} probe {rule.get('n')}")
            elif res.status == "absent":
                report.absent += 1
            else:
                failed = True
                report.failed.append(f"run {st.run}: {shell_quote(argv)}: {res.message}")
        for spec in st.nft_tables:
            res = delete_nft_table(target, spec)
            if res.status == "removed":
                report.removed.append(f"run {st.run}: nft table {spec}")
            elif res.status == "failed":
                failed = True
                report.failed.append(f"run {st.run}: nft delete table {spec}: {res.message}")
    for f in st.files:
        p = Path(f)
        if p.parent == directory and p.name.startswith(st.run):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    if not failed:
        for p in (directory / f"{st.run}.json", directory / f"{st.run}.lock"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    if lock_fd is not None:
        os.close(lock_fd)


def _is_delete_argv(argv: list[str], run: str) -> bool:
    tools = {iptables_tool(b) for b in BACKENDS}
    return (
        len(argv) > 7
        and argv[0] in tools
        and argv[1:3] == ["-w", "20"]
        and argv[3] == "-t"
        and argv[5] == "-D"
        and f"nftrace:{run}" in argv
    )


def cleanup(
    netns: str | None = None,
    backends: Iterable[str] | None = None,
    directory: Path | None = None,
    wait: float = 20.0,
) -> CleanupReport:
    """Remove what dead runs left behind.  Runs that are alive are left alone."""
    directory = directory or state_dir()
    report = CleanupReport()
    target = Target(netns)
    # 1. rules and tables carrying our tag, listed BEFORE the state files are read: a run writes
    #    its state before inserting, so any rule seen here has its state file visible below.
    tagged: list[tuple[str, OwnRule]] = []
    for b in backends or BACKENDS:
        save = iptables_tool(b, "-save")
        if not have(save):
            continue
        if b == "legacy" and not target.read_proc("/proc/thread-self/net/ip_tables_names"):
            continue  # no legacy table in this namespace (and don't load the modules to find out)
        p = target.run([save])
        if p.returncode == 0:
            tagged += [(b, r) for r in own_rules(p.stdout)]
    tables = own_nft_tables(target)
    # 2. the state files of dead runs
    states = list_states(directory)
    live_runs: set[str] = set()
    handled: set[str] = set()
    for fs in states:
        if fs.state is None:
            report.skipped.append(f"{fs.path}: unreadable state file ({fs.error}): left alone")
            continue
        st = fs.state
        status, fd = _lock_dead_run(directory, st, wait)
        if status == "alive":
            live_runs.add(st.run)
            report.skipped.append(f"run {st.run} is still running (pid {st.pid}): left alone")
            continue
        if status == "held":
            live_runs.add(st.run)
            report.failed.append(
                f"run {st.run}: its process {st.pid} is gone but a child still holds {st.run}.lock after "
                f"{wait:g}s: try --cleanup again"
            )
            continue
        cleanup_state(st, report, directory, fd)
        handled.add(st.run)
    # 3. tagged leftovers of runs without (usable) state
    state_runs = {fs.state.run for fs in states if fs.state is not None}
    for backend, r in tagged:
        if r.run in live_runs:
            continue
        if r.run in state_runs and r.run not in handled:
            continue
        res = RuleOps(target, backend).remove(r.delete_argv(backend))
        if res.status == "removed":
            report.removed.append(f"run {r.run}: {r.table} {r.chain} ({backend}, found by its tag): {r.line}")
        elif res.status == "failed":
            report.failed.append(f"run {r.run}: {shell_quote(r.delete_argv(backend))}: {res.message}")
    for run, spec in tables:
        if run in live_runs:
            continue
        res = delete_nft_table(target, spec)
        if res.status == "removed":
            report.removed.append(f"run {run}: nft table {spec} (found by its name)")
        elif res.status == "failed":
            report.failed.append(f"nft delete table {spec}: {res.message}")
    for tmp in stale_tmp_files(directory):
        m = re.match(r"^\.(.+)\.(\d+)\.tmp$", tmp.name)
        if m and not process_alive(int(m.group(2)), None):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    for f in directory.glob("*.trace") if directory.is_dir() else ():
        run = f.name.split(".", 1)[0]
        if run not in live_runs and not (directory / f"{run}.json").exists():
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
    return report


def _lock_dead_run(directory: Path, st: RunState, wait: float) -> tuple[str, int | None]:
    """("alive", None) for a running run, ("free", fd) / ("gone", None) for a dead one, ("held", None)
    when its process is gone but a child of it still holds the lock after `wait` seconds."""
    status, fd = lock_state(directory, st.run, 0.0)
    if status != "held":
        return status, fd
    if process_alive(st.pid, st.start_time):
        return "alive", None
    return lock_state(directory, st.run, wait)
