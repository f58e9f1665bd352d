"""Where a run's log lines come from.

* ``kmsg``      /dev/kmsg read directly (records ``PRI,SEQ,TS,FLAGS;MESSAGE``), from its end
* ``rsyslog``   a file rsyslog writes kern.* to (default /var/log/kern.log, else /var/log/messages,
                or ``rsyslog:PATH``), tailed from its current end, following rotation
* ``journald``  ``journalctl -k -f -o json -n 0``
* ``nflog``     NFLOG rules and our own netlink listener in the target namespace; needs no kernel
                log and no ``nf_log_all_netns``
* ``trace``     the kernel's rule-by-rule trace: on nf_tables a private ``inet nftrace_<run>`` table
                sets ``meta nftrace`` for the flow and ``xtables-monitor --trace`` writes the events to
                a file; on legacy a ``-j TRACE`` rule in raw and the ``TRACE:`` lines of /dev/kmsg

The first three see LOG lines through the kernel log, which a non-initial network
namespace reaches only with the host-wide ``net.netfilter.nf_log_all_netns=1``.
Every source is checked statically first (`unavailable`) and then proven by the
canary packet before the probes for the flow go in.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from nftrace.live.system import LOG_ALL_NETNS, LiveError, Target, have

RSYSLOG_DEFAULTS = ("/var/log/kern.log", "/var/log/messages")
SOURCE_NAMES = ("auto", "rsyslog", "journald", "kmsg", "nflog", "trace")
AUTO_ORDER = ("nflog", "kmsg", "journald", "rsyslog")
ARRIVED = -1  # Hit.n of the trace table's own rule: the packet arrived (seen before any iptables chain)


# ----------------------------------------------------------------------------- events


@dataclass
class TraceEvent:
    """One line of the kernel's rule-by-rule trace."""

    table: str
    chain: str
    kind: str  # rule | policy | return
    num: int | None  # legacy: position as printed; nft: None until resolved from the handle
    verdict: str  # "" on legacy (its trace has no verdicts)
    target: str | None = None  # JUMP/GOTO target (nft)
    handle: int | None = None  # nft rule handle
    trace_id: str = ""


@dataclass
class Hit:
    """A line of this run: a probe's log line (n set) or a trace event (trace set)."""

    n: int | None
    fields: dict[str, str]
    line: str
    trace: TraceEvent | None = None
    t: float = field(default_factory=time.monotonic)

    @property
    def ip_id(self) -> str | None:
        return self.fields.get("ID")


def parse_fields(text: str) -> dict[str, str]:
    """KEY=VALUE words of a LOG/TRACE line (bare words such as DF or SYN map to "").
    An ICMP error's quoted packet ``[SRC=... ]`` is left out: its ID is not this packet's."""
    text = text.split("[", 1)[0]
    text = re.sub(r"\b(ID=\d+)(?=[A-Z])", r"\1 ", text)  # xtables-monitor: "ID=5DF"
    out: dict[str, str] = {}
    for tok in text.split():
        k, sep, v = tok.partition("=")
        out.setdefault(k, v if sep else "")
    if "SPORT" in out:
        out.setdefault("SPT", out["SPORT"])
    if "DPORT" in out:
        out.setdefault("DPT", out["DPORT"])
    return out


_LEGACY_TRACE = re.compile(r"TRACE: (\S+?):(\S+?):(rule|policy|return):(\d+) (.*)$")


def parse_kernel_message(msg: str, run: str) -> Hit | None:
    """A kernel log message: this run's probe line, or a legacy TRACE line (any run: filtered later)."""
    m = re.search(rf"nft:{re.escape(run)}:(\d+) (.*)$", msg)
    if m:
        return Hit(int(m.group(1)), parse_fields(m.group(2)), msg)
    m = _LEGACY_TRACE.search(msg)
    if m:
        table, chain, kind, num, rest = m.groups()
        ev = TraceEvent(table=table, chain=chain, kind=kind, num=int(num), verdict="")
        return Hit(None, parse_fields(rest), msg, trace=ev)
    return None


# ----------------------------------------------------------------------------- checks


def kernel_log_problem(target: Target) -> str | None:
    """Why LOG lines from the target namespace would not reach the kernel log, or None."""
    logger = ipv4_logger()
    if logger is not None:
        return logger
    if target.is_initial_netns():
        return None
    if not os.path.exists(LOG_ALL_NETNS):
        return (
            "nftrace itself runs inside a network namespace, so it cannot see the host-wide "
            "net.netfilter.nf_log_all_netns; LOG lines of other namespaces may never reach the kernel log: "
            "use --source nflog"
        )
    with open(LOG_ALL_NETNS, encoding="utf-8") as f:
        if f.read().strip() != "1":
            return (
                f"the kernel drops LOG/TRACE lines from network namespace {target.label} because "
                "net.netfilter.nf_log_all_netns=0: use --source nflog (per namespace, no sysctl needed), "
                "or set `sysctl -w net.netfilter.nf_log_all_netns=1` on the host and run again"
            )
    return None


def _nf_log_table() -> dict[int, str]:
    try:
        text = Path("/proc/net/netfilter/nf_log").read_text(encoding="utf-8")
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0].isdigit():
            out[int(parts[0])] = parts[1]
    return out


def _module_available(*names: str) -> bool:
    rel = os.uname().release
    for fname in ("modules.dep", "modules.builtin"):
        try:
            text = Path(f"/lib/modules/{rel}/{fname}").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if any(re.search(rf"/{re.escape(n)}\.ko", text) for n in names):
            return True
    return False


def ipv4_logger() -> str | None:
    """None when an IPv4 kernel-log backend (nf_log_syslog, formerly nf_log_ipv4) exists or can load."""
    table = _nf_log_table()
    if not table:
        return "no /proc/net/netfilter/nf_log: this kernel has no netfilter logging"
    if re.search(r"nf_log_(ipv4|syslog)", table.get(2, "")):
        return None
    if _module_available("nf_log_syslog", "nf_log_ipv4"):
        return None
    return "no IPv4 kernel logger (nf_log_syslog / nf_log_ipv4) is loaded or installed: `modprobe nf_log_syslog`"


def nflog_problem() -> str | None:
    table = _nf_log_table()
    if "nfnetlink_log" in table.get(2, "") or _module_available("nfnetlink_log"):
        return None
    if not table:
        return "no /proc/net/netfilter/nf_log: this kernel has no netfilter logging"
    return "nfnetlink_log is not loaded or installed (`modprobe nfnetlink_log`)"


def rsyslog_running() -> bool:
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == "rsyslogd":
                return True
    return False


# ----------------------------------------------------------------------------- sources


class Recorder:
    """What a source tells the state file before (tables) or right after (processes) creating it."""

    def add_nft_table(self, spec: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def add_reader(self, pid: int, argv0: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def add_file(self, path: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class Source:
    name = "?"
    rule_kind = "LOG"  # the probes it reads: LOG, NFLOG, or TRACE (rule-by-rule trace)
    kernel_log = True  # LOG lines through the kernel log (nf_log_all_netns matters)
    settle = 0.4  # seconds without a new line before an observation counts as complete

    def unavailable(self, target: Target) -> str | None:
        return kernel_log_problem(target) if self.kernel_log else None

    def commands(self) -> list[list[str]]:
        """Commands it runs (for --dry-run)."""
        return []

    def start(self, target: Target, recorder: Recorder) -> None:
        raise NotImplementedError

    def poll(self) -> list[Hit]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.name


class KernelLogSource(Source):
    """Common parsing for sources that deliver kernel log messages as text."""

    def __init__(self, run: str) -> None:
        self.run = run

    def _parse(self, msg: str) -> Hit | None:
        return parse_kernel_message(msg, self.run)


class KmsgSource(KernelLogSource):
    name = "kmsg"

    def __init__(self, run: str) -> None:
        super().__init__(run)
        self.fd: int | None = None

    def unavailable(self, target: Target) -> str | None:
        if not os.access("/dev/kmsg", os.R_OK):
            return "/dev/kmsg is not readable (needs root, and a kernel with printk devices)"
        return super().unavailable(target)

    def start(self, target: Target, recorder: Recorder) -> None:
        try:
            self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise LiveError(f"cannot open /dev/kmsg: {e.strerror}") from None
        os.lseek(self.fd, 0, os.SEEK_END)

    def poll(self) -> list[Hit]:
        out: list[Hit] = []
        assert self.fd is not None
        while True:
            try:
                rec = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:  # the ring buffer overwrote records we had not read yet
                continue
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            if not rec:
                break
            hit = self._parse(parse_kmsg_record(rec))
            if hit is not None:
                out.append(hit)
        return out

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def parse_kmsg_record(rec: bytes) -> str:
    """The message of one /dev/kmsg record ``PRI,SEQ,TS,FLAGS;MESSAGE\\n KEY=VALUE...``."""
    text = rec.decode("utf-8", "replace")
    head, _, rest = text.partition(";")
    if not rest and "," not in head:
        return text.rstrip("\n")
    return rest.split("\n", 1)[0]


class FileTail:
    """Tail of a growing file from its end at start; follows rename-rotation and truncation."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.f: IO[bytes] | None = None
        self.ino = 0
        self.pos = 0
        self.partial = b""

    def open(self, at_end: bool = True) -> None:
        f = open(self.path, "rb")  # noqa: SIM115 - kept open while tailing
        st = os.fstat(f.fileno())
        self.ino = st.st_ino
        self.pos = st.st_size if at_end else 0
        f.seek(self.pos)
        if self.f is not None:
            self.f.close()
        self.f = f

    def read_lines(self) -> list[str]:
        assert self.f is not None
        chunks = [self.f.read()]
        try:
            st = os.stat(self.path)
        except OSError:
            st = None
        if st is not None and (st.st_ino != self.ino or st.st_size < self.f.tell()):
            with contextlib.suppress(OSError):
                self.open(at_end=False)  # rotated or truncated: the new file from its start
                chunks.append(self.f.read())
        data = self.partial + b"".join(c for c in chunks if c)
        lines = data.split(b"\n")
        self.partial = lines.pop()
        return [ln.decode("utf-8", "replace") for ln in lines]

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


class RsyslogSource(KernelLogSource):
    name = "rsyslog"
    settle = 1.0

    def __init__(self, run: str, path: str | None = None) -> None:
        super().__init__(run)
        self.explicit = path is not None
        self.path = path or next((p for p in RSYSLOG_DEFAULTS if os.path.exists(p)), RSYSLOG_DEFAULTS[0])
        self.tail = FileTail(self.path)

    def describe(self) -> str:
        return f"rsyslog:{self.path}"

    def unavailable(self, target: Target) -> str | None:
        if not os.path.isfile(self.path):
            if self.explicit:
                return (
                    f"{self.path} is not a file rsyslog writes"
                    if os.path.exists(self.path)
                    else f"{self.path} does not exist"
                )
            return f"no kernel log file ({' or '.join(RSYSLOG_DEFAULTS)}): is rsyslog installed?"
        if not os.access(self.path, os.R_OK):
            return f"{self.path} is not readable"
        if not self.explicit and not rsyslog_running():
            return "rsyslogd is not running"
        return super().unavailable(target)

    def start(self, target: Target, recorder: Recorder) -> None:
        try:
            self.tail.open(at_end=True)
        except OSError as e:
            raise LiveError(f"cannot read {self.path}: {e.strerror}") from None

    def poll(self) -> list[Hit]:
        return [h for h in (self._parse(line) for line in self.tail.read_lines()) if h is not None]

    def close(self) -> None:
        self.tail.close()


class JournaldSource(KernelLogSource):
    name = "journald"
    settle = 1.0
    ARGV = ["journalctl", "-k", "-f", "-o", "json", "-n", "0"]

    def __init__(self, run: str) -> None:
        super().__init__(run)
        self.proc: subprocess.Popen[bytes] | None = None
        self.partial = b""

    def commands(self) -> list[list[str]]:
        return [list(self.ARGV)]

    def unavailable(self, target: Target) -> str | None:
        if not have("journalctl"):
            return "journalctl is not installed"
        if not os.path.exists("/run/systemd/journal/socket"):
            return "systemd-journald is not running (no /run/systemd/journal/socket)"
        return super().unavailable(target)

    def start(self, target: Target, recorder: Recorder) -> None:
        # journalctl reads the journal files of the host: it runs where we run, not in the target netns
        self.proc = Target(None).popen(self.ARGV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        recorder.add_reader(self.proc.pid, "journalctl")
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)

    def poll(self) -> list[Hit]:
        assert self.proc is not None and self.proc.stdout is not None
        data = b""
        while True:
            try:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        if not data:
            if self.proc.poll() is not None:
                raise LiveError(f"journalctl exited (status {self.proc.returncode})")
            return []
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        out = []
        for line in lines:
            msg = journal_message(line)
            if msg is not None:
                hit = self._parse(msg)
                if hit is not None:
                    out.append(hit)
        return out

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(Exception):
                self.proc.terminate()
                self.proc.wait(timeout=3)
            with contextlib.suppress(Exception):
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait(timeout=3)
            self.proc = None


def journal_message(line: bytes) -> str | None:
    """MESSAGE of one `journalctl -o json` line (a string, or an array of bytes for binary data)."""
    try:
        d = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(d, dict):
        return None
    m = d.get("MESSAGE")
    if isinstance(m, list):
        try:
            return bytes(m).decode("utf-8", "replace")
        except (TypeError, ValueError):
            return None
    return m if isinstance(m, str) else None


class NflogSource(Source):
    name = "nflog"
    rule_kind = "NFLOG"
    kernel_log = False
    settle = 0.3

    def __init__(self, run: str, group: int | None = None) -> None:
        self.run = run
        self.fixed = group is not None
        self.group: int = group if group is not None else random.randint(20000, 65000)
        self.sock: Any = None
        self.target: Target | None = None
        self._ifnames: dict[int, str] = {}

    def describe(self) -> str:
        return f"nflog:{self.group}"

    def unavailable(self, target: Target) -> str | None:
        return nflog_problem()

    def start(self, target: Target, recorder: Recorder) -> None:
        from nftrace.live.nflog import NflogSocket

        self.target = target
        groups = [self.group] if self.fixed else [self.group, *random.sample(range(20000, 65000), 5)]
        last: OSError | None = None
        for g in groups:
            try:
                self.sock = target.call(lambda g=g: NflogSocket.open(g))  # type: ignore[misc]
                self.group = g
                return
            except OSError as e:
                last = e
                if e.errno in (errno.EBUSY, errno.EPERM, errno.EEXIST) and not self.fixed:
                    continue  # another listener has this group in this namespace
                break
        why = last.strerror if last else "?"
        raise LiveError(f"cannot listen on NFLOG group {groups[-1] if last else self.group}: {why}")

    def _ifname(self, idx: int | None) -> str:
        if not idx:
            return ""
        if idx not in self._ifnames and self.target is not None:
            with contextlib.suppress(LiveError, ValueError):
                for item in json.loads(self.target.output(["ip", "-j", "link", "show"])):
                    self._ifnames[int(item["ifindex"])] = str(item["ifname"])
        return self._ifnames.get(idx, f"if{idx}")

    def poll(self) -> list[Hit]:
        out = []
        for p in self.sock.recv_packets():
            m = re.match(rf"nft:{re.escape(self.run)}:(\d+) $", p.prefix)
            if not m:
                continue
            fields = {"IN": self._ifname(p.indev), "OUT": self._ifname(p.outdev), **p.fields}
            if p.mark:
                fields["MARK"] = hex(p.mark)
            line = f"{p.prefix}" + " ".join(f"{k}={v}" if v else k for k, v in fields.items())
            out.append(Hit(int(m.group(1)), fields, line))
        return out

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class NftTraceSource(Source):
    """nf_tables: a private table marks the flow (and the canary) with meta nftrace;
    xtables-monitor --trace, run inside the namespace, writes the events to a file."""

    name = "trace"
    rule_kind = "TRACE"
    kernel_log = False
    settle = 0.4

    def __init__(self, run: str, directory: Path, flow_rule: str, canary_rule: str, hook_chain: str) -> None:
        self.run = run
        self.table = f"nftrace_{run}"
        self.path = directory / f"{run}.trace"
        self.flow_rule = flow_rule
        self.canary_rule = canary_rule
        self.hook_chain = hook_chain  # "pre" or "out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.tail = FileTail(str(self.path))
        self.packets: dict[str, dict[str, str]] = {}  # trace id -> fields of its last PACKET line
        self.canary_sport = 0
        self.pass_fds: tuple[int, ...] = ()

    def table_text(self) -> str:
        return (
            f"table inet {self.table} {{\n"
            "  chain pre { type filter hook prerouting priority -500; policy accept; }\n"
            "  chain out { type filter hook output priority -500; policy accept; }\n"
            "}\n"
            f"add rule inet {self.table} out {self.canary_rule}\n"
            f"add rule inet {self.table} {self.hook_chain} {self.flow_rule}\n"
        )

    def monitor_argv(self) -> list[str]:
        argv = ["xtables-monitor", "--trace"]
        return ["stdbuf", "-oL", *argv] if have("stdbuf") else argv

    def commands(self) -> list[list[str]]:
        return [["nft", "-f", "-"], self.monitor_argv(), ["nft", "delete", "table", "inet", self.table]]

    def unavailable(self, target: Target) -> str | None:
        missing = [t for t in ("nft", "xtables-monitor") if not have(t)]
        if missing:
            return f"the nf_tables trace needs {' and '.join(missing)}"
        return None

    def start(self, target: Target, recorder: Recorder) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        recorder.add_file(str(self.path))
        out = open(self.path, "wb")  # noqa: SIM115 - handed to the child
        try:
            self.proc = target.popen(self.monitor_argv(), stdout=out, stderr=subprocess.STDOUT)
        finally:
            out.close()
        recorder.add_reader(self.proc.pid, "xtables-monitor")
        self.tail.open(at_end=False)
        recorder.add_nft_table(f"inet {self.table}")
        p = target.run(["nft", "-f", "-"], input=self.table_text(), pass_fds=self.pass_fds)
        if p.returncode != 0:
            raise LiveError(f"nft could not create the trace table inet {self.table}: {p.stderr.strip()}")

    _PACKET = re.compile(r"^PACKET: \d+ ([0-9a-f]+) ?(.*)$")
    _TRACE = re.compile(r"^TRACE: \d+ ([0-9a-f]+) (\S+?):(\S+?):(rule|policy|return)(?::(.*))?$")
    _RULE = re.compile(r"^0x([0-9a-f]+):(0x[0-9a-f]+|[A-Z]+)(?::(\S+))?(?:\s+(.*))?$")

    def poll(self) -> list[Hit]:
        out: list[Hit] = []
        if self.proc is not None and self.proc.poll() is not None:
            raise LiveError(f"xtables-monitor --trace exited (status {self.proc.returncode})")
        for raw in self.tail.read_lines():
            line = raw.strip()
            m = self._PACKET.match(line)
            if m:
                self.packets[m.group(1)] = parse_fields(m.group(2))
                continue
            m = self._TRACE.match(line)
            if not m:
                continue
            tid, table, chain, kind, rest = m.groups()
            if table == self.table:
                fields = self.packets.get(tid, {})
                if kind == "rule" and fields.get("SPT") == str(self.canary_sport) and fields.get("DPT") == "9":
                    out.append(Hit(0, dict(fields), line))
                elif kind == "rule":
                    out.append(Hit(ARRIVED, dict(fields), line))  # our table saw the flow's packet
                continue
            ev = TraceEvent(table=table, chain=chain, kind=kind, num=None, verdict="", trace_id=tid)
            rest = (rest or "").strip()
            if kind == "rule":
                rm = self._RULE.match(rest)
                if rm:
                    ev.handle = int(rm.group(1), 16)
                    ev.verdict = decode_nft_verdict(rm.group(2))
                    ev.target = rm.group(3)
            elif kind == "policy":
                ev.verdict = decode_nft_verdict(rest.split()[0]) if rest else ""
            else:
                ev.verdict = "RETURN"
            out.append(Hit(None, dict(self.packets.get(tid, {})), line, trace=ev))
        return out

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(Exception):
                self.proc.terminate()
                self.proc.wait(timeout=3)
            with contextlib.suppress(Exception):
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait(timeout=3)
            self.proc = None
        self.tail.close()


_NFT_VERDICTS = {-1: "CONTINUE", -2: "BREAK", -3: "JUMP", -4: "GOTO", -5: "RETURN"}
_NF_VERDICTS = {0: "DROP", 1: "ACCEPT", 2: "STOLEN", 3: "QUEUE", 4: "REPEAT", 5: "STOP"}


def decode_nft_verdict(word: str) -> str:
    """xtables-monitor prints verdicts it has no name for in hex (RETURN is 0xfffffffb)."""
    if not word.startswith("0x"):
        return word
    v = int(word, 16)
    if v >= 0x80000000:
        v -= 1 << 32
    if v < 0:
        return _NFT_VERDICTS.get(v, word)
    return _NF_VERDICTS.get(v & 0xFF, word)


def nft_positions(target: Target) -> dict[tuple[str, str, int], int]:
    """(table, chain, handle) -> 1-based position, for the iptables-nft tables (family ip)."""
    p = target.run(["nft", "-j", "-a", "list", "ruleset", "ip"])
    if p.returncode != 0:
        return {}
    try:
        data = json.loads(p.stdout)
    except json.JSONDecodeError:
        return {}
    pos: dict[tuple[str, str, int], int] = {}
    counts: dict[tuple[str, str], int] = {}
    for obj in data.get("nftables", []):
        r = obj.get("rule")
        if not r or r.get("family") != "ip":
            continue
        key = (r["table"], r["chain"])
        counts[key] = counts.get(key, 0) + 1
        pos[(r["table"], r["chain"], int(r["handle"]))] = counts[key]
    return pos


def make_source(
    spec: str, run: str, backend: str, directory: Path, nft_rules: Callable[[], tuple[str, str, str]] | None = None
) -> Source:
    """A source from the --source value (not `auto`: see session.choose)."""
    name, _, arg = spec.partition(":")
    if name == "rsyslog":
        return RsyslogSource(run, arg or None)
    if arg:
        if name == "nflog" and arg.isdigit():
            return NflogSource(run, int(arg))
        raise LiveError(f"--source {name} takes no argument")
    if name == "kmsg":
        return KmsgSource(run)
    if name == "journald":
        return JournaldSource(run)
    if name == "nflog":
        return NflogSource(run)
    if name == "trace":
        if backend == "legacy":
            return LegacyTraceSource(run)
        assert nft_rules is not None
        flow_rule, canary_rule, chain = nft_rules()
        return NftTraceSource(run, directory, flow_rule, canary_rule, chain)
    raise LiveError(f"unknown --source {spec!r} (one of auto, rsyslog[:PATH], journald, kmsg, nflog, trace)")


class LegacyTraceSource(KmsgSource):
    """Legacy backend: a -j TRACE rule in raw; the TRACE lines come through /dev/kmsg."""

    name = "trace"
    rule_kind = "TRACE"

    def unavailable(self, target: Target) -> str | None:
        return super().unavailable(target)
