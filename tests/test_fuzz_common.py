"""Fuzzing machinery shared by tests/test_fuzz_*.py (bounded CI runs) and benchmarks/fuzz_long.py.

What is fed:
- real dumps, read at run time: rulesets/*/iptables.rules (with their host context) and the
  `.rules` files of ../shared/corpus (skipped when absent), and the `OK` vectors of the iptables
  project's extensions/*.t as rule fragments;
- those dumps mutated (tokens deleted, duplicated, swapped, replaced; lines truncated, duplicated,
  dropped; the file truncated; random bytes, unicode, CR, NUL, tabs and very long tokens inserted);
- valid rulesets generated from scratch (tables, user chains, jumps and gotos without loops, the
  main matches and targets, quoted comments, negations), each rule with an independent record of
  the conditions it states (RuleSpec) for the trace oracle;
- raw bytes and text, and lines of tokens seen in real dumps.

The invariants (`fuzz_parse`, `fuzz_engine`, `fuzz_trace`):
- nothing but `nftrace.errors.NftraceError` escapes; its message is one line naming the file (and a
  line within the input when it gives one);
- every call finishes within HANG_SECONDS (SIGALRM), so a hang is a failure, not a stuck CI;
- a parsed ruleset printed back (canonical form) parses to the same rules, and printing that again
  gives the same text;
- a trace is valid nftrace.trace/1: probabilities sum to 1 when nothing is unknown, an unknown branch
  has `probability: null` and its assumption in `conditions`, the text output starts with UNCERTAIN
  exactly when some branch is unknown and then never states a verdict without "if the conditions hold";
- every matched rule a trace reports can match the packet it reports: the packet state is replayed
  along the steps (NAT rewrites, routing's output device, loopback, marks set by rules) and the
  rule's -s/-d/-p/-i/-o (and, for generated rules, ports and marks) are re-evaluated by code that
  shares nothing with the engine;
- the rule index of the engine (which skips rules of long chains) reports the same matched rules as
  a plain walk of every rule.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from nftrace.errors import NftraceError

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
#: a call that takes longer than this is a hang
HANG_SECONDS = float(os.environ.get("NFTRACE_FUZZ_HANG", "10"))
#: the seed of the CI fuzz runs (fixed, so CI is reproducible; set NFTRACE_FUZZ_SEED to explore)
FUZZ_SEED = int(os.environ.get("NFTRACE_FUZZ_SEED", "20261122"))


#: what the harness checked (reported by the long run; tests assert the oracle had work to do)
STATS: Counter[str] = Counter()


class FuzzFailure(AssertionError):
    """An invariant broke: a traceback, a hang, a bad error message or a wrong trace."""


class _Hang(BaseException):
    """Raised by SIGALRM; a BaseException so that `except Exception` in the code under test cannot eat it."""


@contextlib.contextmanager
def bounded(what: str, seconds: float = HANG_SECONDS) -> Iterator[None]:
    """Fail with FuzzFailure when the body runs longer than `seconds` (main thread only)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise _Hang

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _Hang:
        raise FuzzFailure(f"hang: {what} did not finish within {seconds:g} s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Scenario:
    """A bundled rulesets/ directory: its dump and host context."""

    name: str
    text: str
    dir: Path


@cache
def scenarios() -> tuple[Scenario, ...]:
    out = []
    for d in sorted((ROOT / "rulesets").iterdir()):
        f = d / "iptables.rules"
        if f.is_file():
            out.append(Scenario(d.name, f.read_text(encoding="utf-8", errors="surrogateescape"), d))
    return tuple(out)


@cache
def scenario_host(name: str) -> Any:
    from nftrace.host.parse import build_host_context

    d = ROOT / "rulesets" / name

    def opt(f: str) -> str | None:
        return str(d / f) if (d / f).is_file() else None

    sysctls = [str(d / "sysctl.txt")] if (d / "sysctl.txt").is_file() else []
    return build_host_context(
        routes_file=opt("routes.txt"), addrs_file=opt("addrs.txt"), rules_file=opt("ip-rules.txt"), sysctls=sysctls
    )


@cache
def scenario_ipsets(name: str) -> Any:
    from nftrace.ruleset.ipsets import parse_ipsets

    f = ROOT / "rulesets" / name / "ipsets.txt"
    return parse_ipsets(f.read_text(), str(f)) if f.is_file() else None


@cache
def corpus_dumps(max_bytes: int | None = None) -> tuple[tuple[str, str], ...]:
    """(name, text) of every `.rules` file of the corpus (empty when the corpus is absent)."""
    if not CORPUS.is_dir():
        return ()
    out = []
    for f in sorted(CORPUS.rglob("*.rules")):
        if max_bytes is not None and f.stat().st_size > max_bytes:
            continue
        out.append((str(f.relative_to(CORPUS)), f.read_text(encoding="utf-8", errors="surrogateescape")))
    return tuple(out)


@cache
def seed_dumps(max_bytes: int | None = 20_000) -> tuple[tuple[str, str], ...]:
    """The dumps mutations start from: the scenarios, then the corpus (files up to max_bytes)."""
    return tuple((f"rulesets/{s.name}", s.text) for s in scenarios()) + corpus_dumps(max_bytes)


@cache
def vocabulary() -> tuple[str, ...]:
    """Words of real dumps (and a few the parser treats specially), for token soups and replacements."""
    words: set[str] = set()
    for _, text in seed_dumps(None):
        for line in text.splitlines():
            words.update(line.split())
    words.update(_SPECIAL_WORDS)
    return tuple(sorted(w for w in words if len(w) < 200))


_SPECIAL_WORDS = (
    "*filter", "*nat", "*mangle", "*raw", "*security", "*bogus", "COMMIT", ":INPUT", ":FORWARD", ":OUTPUT",
    ":PREROUTING", ":POSTROUTING", "ACCEPT", "DROP", "RETURN", "QUEUE", "-", "[0:0]", "[1:2]", "-A", "-I", "-D",
    "-R", "-N", "-X", "-F", "-Z", "-P", "-E", "-C", "-t", "-4", "-6", "-c", "--append", "--insert", "-j", "-g",
    "-m", "-p", "-s", "-d", "-i", "-o", "-f", "!", "!!", "--", "---", "--dport", "--dpor", "--sport", "--jump",
    "--goto", "--match", "--proto", "--source", "--destination", "--in-interface", "--set-counters", "--table",
    '"', '""', '"a b"', "\\", '\\"', "'", "0", "-1", "65535", "65536", "4294967295", "4294967296", "0x", "0xg",
    "0/0", "::/0", "/", "/33", "/129", "1.2.3.4/32", "::1", "256.1.1.1", "1.2.3", "eth+", "+", "a" * 16,
    "b" * 29, "=", "--dport=22", "-ptcp", "-jACCEPT", "--comment", "--to-destination", ":", "::", ":::", ",",
    ",,", "\x00", "\r", "\t", "\x0b", "\x0c", "\u00e9", "\u202e", "\ufeff", "\udcff", "\U0001f600",
)  # fmt: skip


@dataclass(frozen=True)
class Fragment:
    """A rule body the iptables project marks valid (extensions/*.t), and where it may go."""

    source: str
    family: str
    table: str
    chains: tuple[str, ...]
    text: str
    has_target: bool


@cache
def vector_fragments() -> tuple[Fragment, ...]:
    """The OK vectors of the corpus' extensions/*.t that nftrace parses alone in a minimal ruleset
    (whatever it rejects is the corpus tests' business, not fuzzing's)."""
    from nftrace.ruleset.parser import parse_rules

    d = CORPUS / "iptables-extensions"
    if not d.is_dir():
        return ()
    out = []
    for f in sorted(d.glob("lib*.t")):
        if f.name.startswith(("libipt_", "iptables")):
            fams: tuple[str, ...] = ("ipv4",)
        elif f.name.startswith("libip6t_"):
            fams = ("ipv6",)
        elif f.name.startswith("libxt_"):
            fams = ("ipv4", "ipv6")
        else:
            continue
        table, chains = "filter", ("INPUT", "FORWARD", "OUTPUT")
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(":"):
                chains = tuple(c for c in line[1:].split(",") if c)
                continue
            if line.startswith("*"):
                table = line[1:].strip()
                continue
            parts = line.split(";")
            if line.startswith("#") or len(parts) < 3 or parts[2].strip() != "OK":
                continue
            body = parts[0].strip()
            for fam in fams:
                ok = [c for c in chains if _fragment_parses(fam, table, c, body, parse_rules)]
                if ok:
                    has_t = bool(re.search(r"(^|\s)(-[jg]|--jump|--goto)(\s|=)", body))
                    out.append(Fragment(f.name, fam, table, tuple(ok), body, has_t))
    return tuple(out)


def _fragment_parses(family: str, table: str, chain: str, body: str, parse_rules: Any) -> bool:
    from nftrace.ruleset.model import BUILTIN_CHAINS

    if chain not in BUILTIN_CHAINS.get(table, ()):
        return False
    text = f"*{table}\n:{chain} ACCEPT [0:0]\n-A {chain} {body}\nCOMMIT\n"
    try:
        with bounded(f"parsing vector {body!r}"):
            parse_rules(text, "<vector>", family)
    except NftraceError:
        return False
    return True


# A host for generated rulesets: three interfaces, both families, forwarding on.
_GEN_ADDRS = """\
1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN
    inet 127.0.0.1/8 scope host lo
    inet6 ::1/128 scope host
2: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc fq_codel state UP
    inet 10.0.0.1/24 brd 10.0.0.255 scope global eth0
    inet6 2001:db8::1/64 scope global
3: eth1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc fq_codel state UP
    inet 192.168.1.1/24 brd 192.168.1.255 scope global eth1
    inet6 2001:db8:1::1/64 scope global
4: cni0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue state UP
    inet 10.244.0.1/24 brd 10.244.0.255 scope global cni0
    inet6 fd00:244::1/64 scope global
"""
_GEN_ROUTES = """\
default via 10.0.0.254 dev eth0
10.0.0.0/24 dev eth0 proto kernel scope link src 10.0.0.1
192.168.1.0/24 dev eth1 proto kernel scope link src 192.168.1.1
10.244.0.0/24 dev cni0 proto kernel scope link src 10.244.0.1
local 10.0.0.1 dev eth0 table local proto kernel scope host src 10.0.0.1
local 192.168.1.1 dev eth1 table local proto kernel scope host src 192.168.1.1
local 10.244.0.1 dev cni0 table local proto kernel scope host src 10.244.0.1
broadcast 10.0.0.255 dev eth0 table local proto kernel scope link src 10.0.0.1
local 127.0.0.0/8 dev lo table local proto kernel scope host src 127.0.0.1
default via 2001:db8::fe dev eth0 metric 1024
2001:db8::/64 dev eth0 proto kernel metric 256
2001:db8:1::/64 dev eth1 proto kernel metric 256
fd00:244::/64 dev cni0 proto kernel metric 256
local 2001:db8::1 dev eth0 table local proto kernel metric 0
local 2001:db8:1::1 dev eth1 table local proto kernel metric 0
local fd00:244::1 dev cni0 table local proto kernel metric 0
local ::1 dev lo table local proto kernel metric 0
"""
_GEN_SYSCTLS = ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv4.conf.all.rp_filter=0")
GEN_IFACES = ("eth0", "eth1", "cni0", "lo")


@cache
def gen_host(empty: bool = False) -> Any:
    """The host context generated rulesets are traced on (or no host context at all)."""
    from nftrace.host.parse import build_host_context

    if empty:
        return build_host_context()
    tmp = Path(tempfile.mkdtemp(prefix="nftrace-fuzz-host-"))
    (tmp / "addrs.txt").write_text(_GEN_ADDRS)
    (tmp / "routes.txt").write_text(_GEN_ROUTES)
    return build_host_context(
        routes_file=str(tmp / "routes.txt"), addrs_file=str(tmp / "addrs.txt"), sysctls=list(_GEN_SYSCTLS)
    )


ADDR_POOL = {
    "ipv4": (
        "10.0.0.1", "10.0.0.5", "10.0.0.255", "192.168.1.1", "192.168.1.7", "10.244.0.1", "10.244.0.9",
        "10.244.1.3", "8.8.8.8", "203.0.113.9", "127.0.0.1", "224.0.0.251", "255.255.255.255", "0.0.0.0",
        "169.254.1.1", "172.17.0.2",
    ),
    "ipv6": (
        "2001:db8::1", "2001:db8::5", "2001:db8:1::1", "2001:db8:1::7", "fd00:244::1", "fd00:244::9",
        "2606:4700::1111", "::1", "fe80::1", "ff02::1", "ff01::1", "::", "2001:db8:ffff::1",
    ),
}  # fmt: skip
# rules mostly name the addresses packets use (and DNAT rewrites to), so that they match often
_HOT = {
    "ipv4": ("10.0.0.1", "10.0.0.5", "192.168.1.7", "10.244.0.9", "8.8.8.8"),
    "ipv6": ("2001:db8::1", "2001:db8::5", "2001:db8:1::7", "fd00:244::9", "2606:4700::1111"),
}
_REMOTE = {
    "ipv4": ("10.0.0.5", "192.168.1.7", "10.244.0.9", "8.8.8.8", "203.0.113.9", "172.17.0.2"),
    "ipv6": ("2001:db8::5", "2001:db8:1::7", "fd00:244::9", "2606:4700::1111", "2001:db8:ffff::1"),
}
_LOCAL = {"ipv4": ("10.0.0.1", "192.168.1.1", "10.244.0.1", "127.0.0.1"), "ipv6": ("2001:db8::1", "fd00:244::1", "::1")}
PORT_POOL = (0, 1, 22, 53, 80, 443, 1024, 8080, 30000, 40000, 65535)
MARK_POOL = (0, 1, 2, 0x4000, 0xFF, 0x10000, 0xFFFFFFFF)


@cache
def packet_dicts(family: str, ifaces: tuple[str, ...] = GEN_IFACES) -> st.SearchStrategy[dict[str, Any]]:
    """Packets as batch lines (Contract 3): ingress on one of `ifaces` or local; addresses mostly
    from the pool the generated rules use, so rules match as often as they miss."""
    v = 4 if family == "ipv4" else 6
    anything = st.one_of(st.sampled_from(ADDR_POOL[family]), st.ip_addresses(v=v).map(str))
    # mostly a source the host does not drop as martian, so that packets get past routing
    remote = st.one_of(st.sampled_from(_REMOTE[family]), st.sampled_from(_REMOTE[family]), anything)
    local = st.one_of(st.sampled_from(_LOCAL[family]), st.sampled_from(_LOCAL[family]), anything)
    dst = st.one_of(st.sampled_from(_HOT[family]), st.sampled_from(_HOT[family] + _LOCAL[family]), anything)
    port = st.one_of(st.sampled_from(PORT_POOL), st.integers(0, 65535))

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        proto = draw(st.sampled_from(("tcp", "tcp", "udp", "udp", "icmp", "sctp", "gre", "esp", "47", "pim")))
        origin = draw(st.sampled_from(("ingress", "ingress", "local")))
        d: dict[str, Any] = {"origin": origin, "proto": proto, "dst": draw(dst)}
        if origin == "ingress":
            d["src"] = draw(remote)
        elif draw(st.booleans()):
            d["src"] = draw(local)
        if origin == "ingress":
            d["iif"] = draw(st.sampled_from(ifaces))
        elif draw(st.integers(0, 5)) == 0:
            d["oif"] = draw(st.sampled_from(ifaces))
        if proto in ("tcp", "udp", "sctp"):
            d["sport"], d["dport"] = draw(port), draw(port)
        if proto == "icmp" and draw(st.booleans()):
            d["icmp_type"] = draw(st.sampled_from(("echo-request", "echo-reply", "3/3", "11", "0")))
        if proto == "tcp" and draw(st.integers(0, 3)) == 0:
            d["tcp_flags"] = draw(st.sampled_from(("SYN", "ACK", "SYN,ACK", "RST", "FIN,ACK", "ACK,PSH")))
        if draw(st.integers(0, 3)) == 0:
            d["ct_state"] = draw(st.sampled_from(("NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED")))
        if draw(st.integers(0, 2)) == 0:
            d["mark"] = draw(st.sampled_from(MARK_POOL))
        if origin == "local" and draw(st.integers(0, 3)) == 0:
            d["uid"] = draw(st.sampled_from((0, 1000, 65534)))
        if draw(st.integers(0, 7)) == 0:
            d["ttl"] = draw(st.sampled_from((0, 1, 2, 64, 255)))
        return d

    return build()


# ------------------------------------------------------------------------- generated rulesets


@dataclass
class RuleSpec:
    """What a generated rule states about the packet, written down by the generator itself (not
    read back from the parser): networks (addr, prefixlen, negated), protocol, interfaces, ports,
    mark.  The oracle checks a matched rule against these."""

    src: tuple[str, int, bool] | None = None
    dst: tuple[str, int, bool] | None = None
    proto: tuple[str, bool] | None = None
    iif: tuple[str, bool] | None = None
    oif: tuple[str, bool] | None = None
    sport: tuple[int, int, bool] | None = None
    dport: tuple[int, int, bool] | None = None
    mark: tuple[int, int, bool] | None = None


@dataclass
class GenRuleset:
    family: str
    text: str
    #: (table, chain, 1-based index) -> what the rule states
    specs: dict[tuple[str, str, int], RuleSpec] = field(default_factory=dict)


HOOK_IN = frozenset({"PREROUTING", "INPUT", "FORWARD"})
HOOK_OUT = frozenset({"FORWARD", "OUTPUT", "POSTROUTING"})
_TABLE_HOOKS = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}
_CHAIN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:@%+"
_COMMENT_CHARS = st.characters(min_codepoint=32, max_codepoint=126) | st.sampled_from("\t\u00e9\u00fc\u4e2d")


def _q(text: str) -> str:
    """Quote an argument as iptables-save does (backslash and double quote escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Strategies are built once: Hypothesis validates each new strategy object on first use, which
# costs more than the draws when a ruleset makes a thousand of them.
_ADDR_S = {
    fam: st.one_of(
        st.sampled_from(_HOT[fam]),
        st.sampled_from(_HOT[fam]),
        st.sampled_from(ADDR_POOL[fam]),
        st.ip_addresses(v=4 if fam == "ipv4" else 6).map(str),
    )
    for fam in ("ipv4", "ipv6")
}
_PLEN_S = {
    "ipv4": st.one_of(st.just(32), st.just(32), st.integers(1, 32), st.sampled_from((0, 8, 16, 24))),
    "ipv6": st.one_of(st.just(128), st.just(128), st.integers(1, 128), st.sampled_from((0, 16, 48, 64))),
}
_PORT_S = st.one_of(st.sampled_from(PORT_POOL), st.integers(0, 65535))
_COMMENT_S = st.text(_COMMENT_CHARS, max_size=40)
_STEM_S = st.text(_CHAIN_CHARS, min_size=1, max_size=12)


def pick(draw: st.DrawFn, seq: Any) -> Any:
    """One item of a sequence (an index draw: no new strategy object per call)."""
    return seq[draw(st.integers(0, len(seq) - 1))]


def one_in(draw: st.DrawFn, n: int) -> bool:
    return draw(st.integers(0, n - 1)) == 0


@dataclass(frozen=True)
class Hints:
    """Addresses and ports the traced packets carry: rules name them half of the time, so that
    they match (and the oracle has matched rules to check) as often as they miss."""

    addrs: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    #: the packets themselves (as JSON text): a rule may copy one's fields, to match it
    packets: tuple[str, ...] = ()


def _net(draw: st.DrawFn, family: str, hints: Hints) -> tuple[str, int]:
    addr = pick(draw, hints.addrs) if hints.addrs and one_in(draw, 2) else draw(_ADDR_S[family])
    return addr, draw(_PLEN_S[family])


def _port_range(draw: st.DrawFn, hints: Hints = Hints()) -> tuple[int, int]:
    lo = pick(draw, hints.ports) if hints.ports and one_in(draw, 2) else draw(_PORT_S)
    if one_in(draw, 2):
        return lo, lo
    hi = draw(_PORT_S)
    return min(lo, hi), max(lo, hi)


def _ports_text(lo: int, hi: int) -> str:
    return f"{lo}" if lo == hi else f"{lo}:{hi}"


_PROTOS = {
    "ipv4": ("", "", "tcp", "tcp", "udp", "icmp", "all", "sctp", "47", "esp"),
    "ipv6": ("", "", "tcp", "tcp", "udp", "ipv6-icmp", "all", "sctp", "47", "esp"),
}
_UNKNOWN_MATCHES = (
    "-m limit --limit 3/min --limit-burst 5",
    "-m recent --rcheck --seconds 60 --name fz",
    "-m recent --set --name fz",
    '-m string --string "GET /" --algo bm',
    "-m statistic --mode random --probability 0.25",
    "-m statistic --mode nth --every 3 --packet 1",
    "-m pkttype --pkt-type unicast",
    "-m connmark --mark 0x1/0x1",
    "-m conntrack --ctstate DNAT",
    "-m conntrack --ctstatus ASSURED",
    "-m helper --helper ftp",
)
_STATES = ("NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED")


@st.composite
def _rule(
    draw: st.DrawFn,
    family: str,
    table: str,
    hook: str,
    jumpable: tuple[str, ...],
    with_vectors: bool,
    hints: Hints,
) -> tuple[str, RuleSpec]:
    """One rule body (without `-A CHAIN`) for a chain of `table` reached only from `hook`."""
    spec = RuleSpec()
    parts: list[str] = []
    if with_vectors and one_in(draw, 5):
        frags = _fragments_for(family, table, hook)
        if frags:
            frag = pick(draw, frags)
            body = frag.text
            if not frag.has_target:
                body = f"{body} {pick(draw, ('', '-j ACCEPT', '-j RETURN', *(f'-j {c}' for c in jumpable)))}"
            return body.rstrip(), spec
    # half of the rules copy fields of one of the traced packets (so they match it, until NAT or
    # routing changes the packet on the way), the others draw them
    tp: dict[str, Any] = json.loads(pick(draw, hints.packets)) if hints.packets and one_in(draw, 2) else {}
    if one_in(draw, 3) or (tp.get("src") and one_in(draw, 2)):
        a, plen = (tp["src"], draw(_PLEN_S[family])) if tp.get("src") else _net(draw, family, hints)
        n = plen > 0 and one_in(draw, 4)
        spec.src = (a, plen, n)
        parts.append(f"{'! ' if n else ''}{pick(draw, ('-s', '--source', '--src'))} {a}/{plen}")
    if one_in(draw, 3) or (tp and one_in(draw, 2)):
        a, plen = (tp["dst"], draw(_PLEN_S[family])) if tp and one_in(draw, 2) else _net(draw, family, hints)
        n = plen > 0 and one_in(draw, 4)
        spec.dst = (a, plen, n)
        parts.append(f"{'! ' if n else ''}-d {a}/{plen}")
    icmp = "icmp" if family == "ipv4" else "ipv6-icmp"
    if tp and not one_in(draw, 3):
        proto = icmp if tp["proto"] == "icmp" else tp["proto"]
    else:
        proto = pick(draw, _PROTOS[family])
    pneg = proto not in ("", "all") and one_in(draw, 4)
    first = ""  # -p goes first when the parts are shuffled: it loads the options after it (--dport ...)
    if proto:
        spec.proto = (proto, pneg)
        first = f"{'! ' if pneg else ''}-p {proto}"
    if hook in HOOK_IN and (one_in(draw, 4) or (tp.get("iif") and one_in(draw, 2))):
        names = ("eth0", "eth1", "cni0", "lo", "eth+", "veth+", "nosuch9")
        name, n = (tp["iif"] if tp.get("iif") and one_in(draw, 2) else pick(draw, names)), one_in(draw, 4)
        spec.iif = (name, n)
        parts.append(f"{'! ' if n else ''}-i {name}")
    if hook in HOOK_OUT and one_in(draw, 4):
        name, n = pick(draw, ("eth0", "eth1", "cni0", "lo", "eth+", "c+")), one_in(draw, 4)
        spec.oif = (name, n)
        parts.append(f"{'! ' if n else ''}-o {name}")
    ports = proto in ("tcp", "udp") and not pneg
    # getopt gives an abbreviated or exact `--dport` to multiport's `--dports` when multiport was
    # loaded before it (iptables then refuses the rule): with multiport, no abbreviations, no shuffling
    multi = ports and one_in(draw, 6)
    if ports and one_in(draw, 2):
        lo, hi = (
            (tp["dport"], tp["dport"]) if tp.get("dport") is not None and one_in(draw, 2) else _port_range(draw, hints)
        )
        n = one_in(draw, 4)
        spec.dport = (lo, hi, n)
        explicit = f"-m {proto} " if one_in(draw, 2) else ""
        word = "--dport" if multi else pick(draw, ("--dport", "--destination-port", "--dpor"))
        parts.append(f"{explicit}{'! ' if n else ''}{word} {_ports_text(lo, hi)}")
    elif ports and one_in(draw, 3):
        lo, hi = _port_range(draw, hints)
        n = one_in(draw, 4)
        spec.sport = (lo, hi, n)
        parts.append(f"{'! ' if n else ''}--sport {_ports_text(lo, hi)}")
    if multi:
        ps = sorted({pick(draw, PORT_POOL) for _ in range(draw(st.integers(1, 4)))})
        parts.append(f"-m multiport {'! ' if one_in(draw, 4) else ''}--dports {','.join(map(str, ps))}")
    if proto == icmp and not pneg and one_in(draw, 2):
        if family == "ipv4":
            parts.append(f"-m icmp --icmp-type {pick(draw, ('8', 'echo-request', '0', '3/3', 'any'))}")
        else:
            parts.append(f"-m icmp6 --icmpv6-type {pick(draw, ('128', 'echo-request', '1', '135'))}")
    if proto == "tcp" and not pneg and one_in(draw, 6):
        parts.append(pick(draw, ("--syn", "! --syn", "--tcp-flags SYN,ACK SYN", "--tcp-flags ALL NONE")))
    k = draw(st.integers(0, 19))  # 0..8: one more match of these kinds; else none
    if k == 0:
        states = sorted({pick(draw, _STATES) for _ in range(draw(st.integers(1, 3)))})
        parts.append(f"-m conntrack {'! ' if one_in(draw, 4) else ''}--ctstate {','.join(states)}")
    elif k == 1:
        states = sorted({pick(draw, _STATES[:4]) for _ in range(draw(st.integers(1, 3)))})
        parts.append(f"-m state --state {','.join(states)}")
    elif k == 2:
        v, m, n = pick(draw, MARK_POOL), pick(draw, (0xFFFFFFFF, 0xFF, 0x4000, 0xFFFF0000)), one_in(draw, 4)
        spec.mark = (v & m, m, n)
        parts.append(f"-m mark {'! ' if n else ''}--mark {v & m:#x}/{m:#x}")
    elif k == 3:
        # IPv6 has no broadcast: the kernel refuses --dst-type BROADCAST in ip6tables (EINVAL)
        types = ("LOCAL", "UNICAST", "MULTICAST") + (("BROADCAST",) if family == "ipv4" else ())
        parts.append(f"-m addrtype --dst-type {pick(draw, types)}")
    elif k == 4 and family == "ipv4":
        a, b = sorted(
            (pick(draw, ADDR_POOL["ipv4"][:10]), pick(draw, ADDR_POOL["ipv4"][:10])), key=ipaddress.ip_address
        )
        which = pick(draw, ("src", "dst"))
        parts.append(f"-m iprange {'! ' if one_in(draw, 4) else ''}--{which}-range {a}-{b}")
    elif k == 5:
        lo, hi = _port_range(draw)
        parts.append(f"-m length --length {lo}:{hi}")
    elif k == 6:
        parts.append(pick(draw, _UNKNOWN_MATCHES))
    elif k == 7:
        parts.append(f"-m set --match-set {'fzset' if family == 'ipv4' else 'fzset6'} {pick(draw, ('src', 'dst'))}")
    elif k == 8 and hook in ("OUTPUT", "POSTROUTING"):
        parts.append(pick(draw, ("-m owner --uid-owner 1000", "-m owner ! --uid-owner 0", "-m cgroup --cgroup 1")))
    if one_in(draw, 5):
        parts.append(f"-m comment --comment {_q(draw(_COMMENT_S))}")
    t = _target(draw, family, table, hook, jumpable, proto if not pneg else "")
    if t:
        parts.append(t)
    if not multi and one_in(draw, 6):
        parts = draw(st.permutations(parts))
    return " ".join(([first] if first else []) + parts), spec


@cache
def _fragments_for(family: str, table: str, hook: str) -> tuple[Fragment, ...]:
    return tuple(f for f in vector_fragments() if f.family == family and f.table == table and hook in f.chains)


def _target(draw: st.DrawFn, family: str, table: str, hook: str, jumpable: tuple[str, ...], proto: str) -> str:
    v6 = family == "ipv6"
    # iptables refuses DROP in the nat table ("not intended for filtering")
    choices = ["-j ACCEPT", "-j RETURN", "", "", "-j QUEUE"] + ([] if table == "nat" else ["-j DROP", "-j DROP"])
    choices += [f"-j {c}" for c in jumpable] * 3 + [f"-g {c}" for c in jumpable]
    choices += ['-j LOG --log-prefix "fz: "', "-j NFLOG --nflog-group 2", "-j NFQUEUE --queue-num 3"]
    if table == "filter":
        choices += ["-j REJECT", f"-j REJECT --reject-with {'icmp6-adm-prohibited' if v6 else 'icmp-host-prohibited'}"]
        if proto == "tcp":
            choices.append("-j REJECT --reject-with tcp-reset")
    elif table == "mangle":
        choices += ["-j MARK --set-mark 0x4000", "-j MARK --set-xmark 0x1/0xff", "-j CONNMARK --save-mark",
                    "-j CONNMARK --restore-mark", "-j CONNMARK --set-mark 0x2", "-j DSCP --set-dscp 10"]  # fmt: skip
        if hook == "PREROUTING" and proto in ("tcp", "udp"):
            choices.append("-j TPROXY --on-port 8080 --tproxy-mark 0x1/0x1")
    elif table == "raw":
        choices += ["-j CT --notrack", "-j NOTRACK", "-j CT --zone 1"]
    elif table == "nat":
        a = "[2001:db8::5]" if v6 else "10.0.0.5"
        b = "2001:db8::5" if v6 else "10.0.0.5"
        if hook in ("PREROUTING", "OUTPUT"):
            choices += [f"-j DNAT --to-destination {b}"] * 3
            if proto in ("tcp", "udp"):
                choices += [f"-j DNAT --to-destination {a}:8080", "-j REDIRECT --to-ports 3128", "-j REDIRECT"]
        if hook in ("POSTROUTING", "INPUT"):
            choices += [f"-j SNAT --to-source {'2001:db8::1' if v6 else '10.0.0.1'}"] * 2
        if hook == "POSTROUTING":
            choices += ["-j MASQUERADE"] * 3
            if proto in ("tcp", "udp"):
                choices.append("-j MASQUERADE --to-ports 40000-40100")
    return str(pick(draw, choices))


@st.composite
def valid_rulesets(
    draw: st.DrawFn,
    family: str | None = None,
    max_rules: int = 4,
    with_vectors: bool = True,
    hints: Hints = Hints(),
) -> GenRuleset:
    """A ruleset iptables-restore loads: tables, user chains with jumps and gotos that form no loop
    (each user chain belongs to one hook and only jumps to later chains of that hook), rules with
    the main matches and targets each where the kernel accepts them."""
    fam = family or pick(draw, ("ipv4", "ipv4", "ipv6"))
    tables = sorted({pick(draw, ("filter", "filter", "nat", "mangle", "raw", "security")) for _ in range(draw(st.integers(1, 3)))})  # fmt: skip
    out: list[str] = [f"# generated (nftrace fuzz), family {fam}"]
    specs: dict[tuple[str, str, int], RuleSpec] = {}
    for table in tables:
        hooks = _TABLE_HOOKS[table]
        out.append(f"*{table}")
        used: set[str] = set()
        per_hook: dict[str, tuple[str, ...]] = {}
        for hook in hooks:
            names = []
            for i in range(draw(st.integers(0, 2))):
                name = f"{hook[:3]}{i}{draw(_STEM_S).lstrip('-!')}"[:28]
                if name not in used:
                    used.add(name)
                    names.append(name)
            per_hook[hook] = tuple(names)
        for hook in hooks:
            if table != "nat" and one_in(draw, 6):
                continue  # an undeclared built-in chain (rules may still be appended to it)
            policy = "ACCEPT" if table == "nat" or not one_in(draw, 5) else "DROP"
            out.append(f":{hook} {policy} [{draw(st.integers(0, 99))}:{draw(st.integers(0, 9999))}]")
        for hook in hooks:
            out.extend(f":{name} - [0:0]" for name in per_hook[hook])
        for hook in hooks:
            chains = [(hook, per_hook[hook])] + [(n, per_hook[hook][i + 1 :]) for i, n in enumerate(per_hook[hook])]
            for chain, jumpable in chains:
                for idx in range(1, draw(st.integers(0, max_rules)) + 1):
                    body, spec = draw(_rule(fam, table, hook, jumpable, with_vectors, hints))
                    counters = f"[{draw(st.integers(0, 9))}:{draw(st.integers(0, 999))}] " if one_in(draw, 10) else ""
                    out.append(f"{counters}-A {chain} {body}".rstrip())
                    specs[(table, chain, idx)] = spec
        out.append("COMMIT")
    return GenRuleset(fam, "\n".join(out) + "\n", specs)


@st.composite
def traced_rulesets(draw: st.DrawFn, family: str | None = None) -> tuple[GenRuleset, list[dict[str, Any]], bool]:
    """(a generated ruleset, 1..4 packets, whether to trace without host context): the packets are
    drawn first and the rules name their addresses and ports (and the DNAT/REDIRECT targets) half
    of the time."""
    fam = family or pick(draw, ("ipv4", "ipv4", "ipv6"))
    pkts = draw(st.lists(packet_dicts(fam), min_size=1, max_size=4))
    addrs = {p["dst"] for p in pkts} | {p["src"] for p in pkts if p.get("src")}
    addrs.add("10.0.0.5" if fam == "ipv4" else "2001:db8::5")
    ports = {p[k] for p in pkts for k in ("sport", "dport") if p.get(k) is not None} | {8080, 3128}
    packets = tuple(json.dumps(p, sort_keys=True) for p in pkts)
    g = draw(valid_rulesets(fam, hints=Hints(tuple(sorted(addrs)), tuple(sorted(ports)), packets)))
    return g, pkts, one_in(draw, 8)


# ------------------------------------------------------------------------------ mutations


_JUNK = st.one_of(
    st.sampled_from(_SPECIAL_WORDS),
    st.text(min_size=1, max_size=8),
    st.binary(min_size=1, max_size=6).map(lambda b: b.decode("utf-8", "surrogateescape")),
)


@st.composite
def mutated_dump(draw: st.DrawFn, sources: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    """A real dump with 1..6 mutations; returns (source name, text)."""
    name, text = draw(st.sampled_from(sources))
    lines = text.split("\n")
    for _ in range(draw(st.integers(1, 6))):
        if not lines:
            lines = [""]
        op = draw(st.integers(0, 13))
        i = draw(st.integers(0, len(lines) - 1))
        toks = lines[i].split(" ")
        j = draw(st.integers(0, max(len(toks) - 1, 0)))
        if op == 0:  # delete a token
            del toks[j]
        elif op == 1:  # duplicate a token
            toks.insert(j, toks[j])
        elif op == 2:  # swap two tokens
            k = draw(st.integers(0, len(toks) - 1))
            toks[j], toks[k] = toks[k], toks[j]
        elif op == 3:  # insert junk
            toks.insert(j, draw(_JUNK))
        elif op == 4:  # replace a token by a word seen elsewhere
            toks[j] = draw(st.sampled_from(vocabulary()))
        elif op == 5:  # truncate the line
            s = lines[i]
            lines[i] = s[: draw(st.integers(0, len(s)))]
            continue
        elif op == 6:  # truncate the file
            lines = lines[:i]
            continue
        elif op == 7:  # duplicate a line (anywhere)
            lines.insert(draw(st.integers(0, len(lines))), lines[i])
            continue
        elif op == 8:  # delete a line
            del lines[i]
            continue
        elif op == 9:  # swap two lines
            k = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[k] = lines[k], lines[i]
            continue
        elif op == 10:  # insert raw characters inside the line
            s = lines[i]
            k = draw(st.integers(0, len(s)))
            ins = draw(st.sampled_from(("\x00", "\r", "\t", "\x0b", "\u00a0", "\u2028", '"', "\\", "!", " ", "  ")) | _JUNK)  # fmt: skip
            lines[i] = s[:k] + ins + s[k:]
            continue
        elif op == 11:  # a very long token
            toks[j] = toks[j] * draw(st.integers(2, 2000))
        elif op == 12:  # CR line ends (DOS) from here on
            lines = lines[:i] + [ln + "\r" for ln in lines[i:]]
            continue
        else:  # a very long line: the line repeated
            lines[i] = " ".join([lines[i]] * draw(st.integers(2, 200)))
            continue
        lines[i] = " ".join(toks)
    return name, "\n".join(lines)


@st.composite
def token_soup(draw: st.DrawFn) -> str:
    """A table of rule lines made of words seen in real dumps, in random order."""
    table = draw(st.sampled_from(("filter", "nat", "mangle", "raw")))
    chain = draw(st.sampled_from(("INPUT", "OUTPUT", "PREROUTING", "POSTROUTING", "FORWARD")))
    lines = [f"*{table}", f":{chain} ACCEPT [0:0]", ":USER - [0:0]"]
    vocab = vocabulary()
    for _ in range(draw(st.integers(1, 5))):
        words = draw(st.lists(st.sampled_from(vocab), min_size=0, max_size=12))
        lines.append(" ".join([draw(st.sampled_from(("-A", "-I", "-N", "-D", "-P", "-C"))), chain, *words]))
    if draw(st.booleans()):
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


RULE_PREFIX = "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT "


# ------------------------------------------------------------------------------- harness


def check_error(e: NftraceError, name: str | None, nlines: int | None = None) -> None:
    """The user sees e.one_line(): it must be one line and name the file it is about."""
    msg = e.one_line()
    if "\n" in msg or "\r" in msg or not e.message.strip():
        raise FuzzFailure(f"error message is not one non-empty line: {msg!r}")
    if name is not None and e.file != name:
        raise FuzzFailure(f"error message does not name the file {name!r}: {msg!r}")
    if nlines is not None and e.line is not None and not 1 <= e.line <= nlines + 1:
        raise FuzzFailure(f"error names line {e.line} of an input of {nlines} lines: {msg!r}")


def fuzz_parse(
    text: str, name: str = "<fuzz>", family: str | None = None, roundtrip: bool = True, strict: bool = True
) -> Any:
    """parse_rules() under the invariants; the Ruleset, or None when the input was refused."""
    from nftrace.ruleset.parser import parse_rules

    try:
        with bounded(f"parse_rules({name})"):
            rs = parse_rules(text, name, family) if strict else parse_rules(text, name, family, strict=False)
    except NftraceError as e:
        check_error(e, name, text.count("\n") + 1)
        STATS["parse refused"] += 1
        return None
    except FuzzFailure:
        raise
    except Exception as e:
        raise FuzzFailure(f"parse_rules raised {type(e).__name__}: {e}") from e
    STATS["parsed"] += 1
    STATS["rules parsed"] += rs.rule_count()
    check_ruleset(rs, text)
    if roundtrip:
        check_roundtrip(rs, name)
    return rs


def check_ruleset(rs: Any, text: str) -> None:
    nlines = text.count("\n") + 1
    for tname, t in rs.tables.items():
        for cname, c in t.chains.items():
            for pos, r in enumerate(c.rules, 1):
                if r.index != pos or r.chain != cname or r.table != tname:
                    raise FuzzFailure(f"rule {r.text!r}: index/chain/table {r.index}/{r.chain}/{r.table}, expected {pos}/{cname}/{tname}")  # fmt: skip
                if not 1 <= r.line <= nlines:
                    raise FuzzFailure(f"rule {r.text!r}: line {r.line} outside the input ({nlines} lines)")
                if (
                    r.jump is not None
                    and r.jump not in ("ACCEPT", "DROP", "RETURN", "QUEUE")
                    and r.jump not in t.chains
                ):
                    raise FuzzFailure(f"rule {r.text!r} jumps to {r.jump!r}, which table {tname} does not have")


def _dump(rs: Any) -> str:
    try:
        from nftrace.ruleset.canonical import canonical_dump
    except ImportError:  # pragma: no cover - before the canonical printer existed
        return "\n".join(r.text for t in rs.tables.values() for c in t.chains.values() for r in c.rules)
    return str(canonical_dump(rs))


def check_roundtrip(rs: Any, name: str) -> None:
    """Printed from the model and re-parsed: the same rules; printed again: the same text."""
    from nftrace.ruleset.parser import parse_rules

    text1 = _dump(rs)
    try:
        with bounded(f"re-parsing the printed {name}"):
            rs2 = parse_rules(text1, "<printed>", rs.family)
    except NftraceError as e:
        raise FuzzFailure(f"the printed ruleset does not parse again: {e.one_line()}") from None
    text2 = _dump(rs2)
    if text1 != text2:
        a, b = text1.split("\n"), text2.split("\n")  # not splitlines(): it splits at \x0b, \x1c ...
        diff = next((f"{x!r} != {y!r}" for x, y in zip(a, b, strict=False) if x != y), f"{len(a)} vs {len(b)} lines")
        raise FuzzFailure(f"printing is not a fixpoint: {diff}")
    for tname, t in rs.tables.items():
        t2 = rs2.tables.get(tname)
        if t2 is None or list(t.chains) != list(t2.chains):
            raise FuzzFailure(f"table {tname}: chains differ after a round trip")
        for cname, c in t.chains.items():
            c2 = t2.chains[cname]
            if c.policy != c2.policy or len(c.rules) != len(c2.rules):
                raise FuzzFailure(f"chain {tname} {cname}: policy or rule count differ after a round trip")
            for r, r2 in zip(c.rules, c2.rules, strict=True):
                if (r.jump, r.goto, r.target_name) != (r2.jump, r2.goto, r2.target_name):
                    raise FuzzFailure(f"rule {r.text!r} reads back differently: {r2.text!r}")


def fuzz_engine(rs: Any, host: Any, ipsets: Any = None, backend: str = "nft", max_branches: int = 64) -> Any:
    """An Engine for rs, or None when it refuses the ruleset with an NftraceError."""
    from nftrace.engine.pipeline import Engine
    from nftrace.engine.walker import WalkOptions

    try:
        with bounded("Engine()"):
            return Engine(rs, host, ipsets, backend=backend, options=WalkOptions(max_branches=max_branches))
    except NftraceError as e:
        check_error(e, None)
        return None
    except FuzzFailure:
        raise
    except Exception as e:
        raise FuzzFailure(f"Engine() raised {type(e).__name__}: {e}") from e


def fuzz_trace(
    engine: Any,
    d: dict[str, Any],
    specs: dict[tuple[str, str, int], RuleSpec] | None = None,
    compare_plain: bool = True,
) -> dict[str, Any] | None:
    """Trace one packet (a batch-line dict) under the invariants; the trace JSON, or None when the
    packet was refused with an NftraceError."""
    from nftrace.engine.packet import packet_from_dict
    from nftrace.present.text import render_trace

    try:
        with bounded(f"tracing {d}"):
            pkt, origin = packet_from_dict(dict(d), file="<batch>")
            doc = engine.trace(pkt, origin).to_json()
            text = render_trace(doc)
            render_trace(doc, color=True)
            json.dumps(doc)
    except NftraceError as e:
        check_error(e, None)
        return None
    except FuzzFailure:
        raise
    except Exception as e:
        raise FuzzFailure(f"tracing {d} raised {type(e).__name__}: {e}") from e
    STATS["traces"] += 1
    STATS["branches"] += len(doc["branches"])
    if any(b["probability"] is None for b in doc["branches"]):
        STATS["uncertain traces"] += 1
    check_trace(doc, text, engine.ruleset, specs)
    if compare_plain:
        check_plain_walk_agrees(engine, d, doc)
    return doc


def check_plain_walk_agrees(engine: Any, d: dict[str, Any], doc: dict[str, Any]) -> None:
    """--all-rules walks every rule (no index): its matched rules and results are the default's."""
    from nftrace.engine.packet import packet_from_dict
    from nftrace.engine.walker import WalkOptions

    if getattr(engine, "index", None) is None:
        return
    saved = engine.options
    engine.options = WalkOptions(all_rules=True, max_branches=saved.max_branches)
    try:
        with bounded(f"tracing {d} with --all-rules"):
            pkt, origin = packet_from_dict(dict(d), file="<batch>")
            full = engine.trace(pkt, origin).to_json()
    finally:
        engine.options = saved

    def shape(x: dict[str, Any]) -> list[tuple[Any, ...]]:
        out = []
        for b in x["branches"]:
            steps = tuple(
                (s["table"], s["chain"], s["rule"], s.get("verdict"))
                for s in b["steps"]
                if s["kind"] == "rule" and s.get("matched", True)
            )
            out.append((b["probability"], tuple(b["conditions"]), steps, json.dumps(b["result"], sort_keys=True)))
        return sorted(out, key=repr)

    if shape(doc) != shape(full):
        raise FuzzFailure(f"the default walk and --all-rules disagree for {d}")


_DISPOSITIONS = frozenset({"local", "forwarded", "output", "dropped", "unroutable", "queued"})


def check_trace(doc: dict[str, Any], text: str, rs: Any, specs: dict[tuple[str, str, int], RuleSpec] | None) -> None:
    if doc.get("schema") != "nftrace.trace/1" or not doc.get("branches"):
        raise FuzzFailure("trace without schema or branches")
    unknown = [b for b in doc["branches"] if b["probability"] is None]
    for b in doc["branches"]:
        r = b["result"]
        if r["verdict"] not in ("ACCEPT", "DROP", "QUEUE") or r["disposition"] not in _DISPOSITIONS:
            raise FuzzFailure(f"bad result {r}")
        if b["probability"] is None and not b["conditions"]:
            raise FuzzFailure("an unknown branch without conditions (its assumption is not said)")
        if b["probability"] is not None and not 0.0 <= b["probability"] <= 1.0 + 1e-9:
            raise FuzzFailure(f"probability {b['probability']} out of 0..1")
    if not unknown:
        total = sum(b["probability"] for b in doc["branches"])
        if abs(total - 1.0) > 1e-9:
            raise FuzzFailure(f"probabilities sum to {total!r}, not 1, with no unknown branch")
    first = text.split("\n", 1)[0]
    if bool(unknown) != first.startswith("UNCERTAIN"):
        raise FuzzFailure(f"text output starts {first!r} with {len(unknown)} unknown branch(es)")
    if unknown and not any("cannot decide" in w or "branch limit" in w for w in doc["warnings"]):
        raise FuzzFailure("an uncertain trace without a warning saying so")
    if unknown:
        verdicts = [ln for ln in text.splitlines() if ln.startswith("  => ")]
        certain = [ln for ln in verdicts if "if the conditions hold" not in ln]
        if len(certain) > len(doc["branches"]) - len(unknown):
            raise FuzzFailure(f"an uncertain branch's verdict reads as certain: {certain}")
    for b in doc["branches"]:
        check_rule_steps(doc, b, rs, specs)


# ---------------------------------------------------------------------------------- the oracle


@dataclass
class _State:
    src: str
    dst: str
    sport: int | None
    dport: int | None
    proto: str
    iif: str | None
    oif: str | None
    mark: int
    pending_oif: str | None = None
    ports_known: bool = True


def _endpoint(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, None


def _in_net(addr: str, net: str, plen: int) -> bool:
    if not addr:
        return False
    a = ipaddress.ip_address(addr)
    n = ipaddress.ip_network(f"{net}/{plen}", strict=False)
    return a.version == n.version and a in n


def _iface_hit(dev: str | None, name: str) -> bool:
    dev = dev or ""
    return dev.startswith(name[:-1]) if name.endswith("+") else dev == name


_PROTO_NUM = {
    "tcp": 6,
    "udp": 17,
    "icmp": 1,
    "ipv6-icmp": 58,
    "icmpv6": 58,
    "sctp": 132,
    "esp": 50,
    "gre": 47,
    "pim": 103,
    "ah": 51,
}


def _proto_hit(pkt_proto: str, want: str) -> bool:
    if want in ("all", "0"):
        return True
    a = _PROTO_NUM.get(pkt_proto, int(pkt_proto) if pkt_proto.isdigit() else -1)
    b = _PROTO_NUM.get(want, int(want) if want.isdigit() else -2)
    return a == b


def _spec_failures(spec: RuleSpec, s: _State) -> list[str]:
    bad = []
    if spec.src and _in_net(s.src, spec.src[0], spec.src[1]) == spec.src[2]:
        bad.append(f"source {s.src} vs {spec.src}")
    if spec.dst and _in_net(s.dst, spec.dst[0], spec.dst[1]) == spec.dst[2]:
        bad.append(f"destination {s.dst} vs {spec.dst}")
    if spec.proto and _proto_hit(s.proto, spec.proto[0]) == spec.proto[1]:
        bad.append(f"protocol {s.proto} vs {spec.proto}")
    if spec.iif and _iface_hit(s.iif, spec.iif[0]) == spec.iif[1]:
        bad.append(f"input interface {s.iif} vs {spec.iif}")
    if spec.oif and s.pending_oif is None and _iface_hit(s.oif, spec.oif[0]) == spec.oif[1]:
        bad.append(f"output interface {s.oif} vs {spec.oif}")
    if s.ports_known:
        for which, v in (("sport", s.sport), ("dport", s.dport)):
            rng = getattr(spec, which)
            if rng and v is not None and (rng[0] <= v <= rng[1]) == rng[2]:
                bad.append(f"{which} {v} vs {rng}")
    if spec.mark and ((s.mark & spec.mark[1]) == spec.mark[0]) == spec.mark[2]:
        bad.append(f"mark {s.mark:#x} vs {spec.mark}")
    return bad


def _model_failures(rule: Any, s: _State) -> list[str]:
    """The rule's built-in matches as the parser read them, evaluated here by the oracle's own code."""
    bad = []
    for m in rule.matches:
        kind = type(m).__name__
        if kind == "AddrMatch":
            addr = s.src if m.field == "s" else s.dst
            if not addr:
                continue
            hit = (int(ipaddress.ip_address(addr)) & m.mask) == m.net
            if hit == m.neg:
                bad.append(f"{m.text} with {addr}")
        elif kind == "IfaceMatch" and not m.anything:
            if m.field == "o" and s.pending_oif is not None:
                continue
            dev = (s.iif if m.field == "i" else s.oif) or ""
            hit = dev.startswith(m.iface) if m.prefix else dev == m.iface
            if hit == m.neg:
                bad.append(f"{m.text} with device {dev!r}")
        elif kind == "ProtoMatch" and not m.any:
            if _proto_hit(s.proto, m.proto) == m.neg:
                bad.append(f"{m.text} with protocol {s.proto}")
    return bad


def check_rule_steps(
    doc: dict[str, Any], b: dict[str, Any], rs: Any, specs: dict[tuple[str, str, int], RuleSpec] | None
) -> None:
    """Replay the packet along one branch's steps; every matched rule must hold for it."""
    p = doc["packet"]
    local = doc["origin"] == "local"
    s = _State(p["src"], p["dst"], p.get("sport"), p.get("dport"), p["proto"],
               None if local else p.get("iif"), p.get("oif") if local else None, p.get("mark") or 0)  # fmt: skip
    for step in b["steps"]:
        kind = step["kind"]
        if kind == "nat":
            host, port = _endpoint(step["after"])
            if step.get("hook") in ("PREROUTING", "OUTPUT"):
                s.dst = host
                s.dport = port if port is not None else s.dport
            else:
                s.src = host
                s.sport = port if port is not None else s.sport
            if step.get("random_port"):
                s.ports_known = False
        elif kind == "route":
            res = step["result"]
            if res == "local":
                s.oif = None
            elif res in ("forward", "output"):
                s.oif = step.get("oif")
                if step.get("src"):
                    s.src = step["src"]
            elif res == "reroute":
                s.pending_oif = step.get("oif") or ""
        elif kind == "loopback":
            s.iif, s.oif, s.pending_oif = "lo", None, None
        elif kind in ("rule", "policy", "return"):
            if step.get("hook") == "POSTROUTING" and s.pending_oif is not None:
                s.oif, s.pending_oif = s.pending_oif or None, None
            if kind != "rule" or step.get("matched") is False:
                continue
            key = (step["table"], step["chain"], step["rule"])
            chain = rs.chain(step["table"], step["chain"])
            if chain is None or not 1 <= step["rule"] <= len(chain.rules):
                raise FuzzFailure(f"trace reports {key}, which the ruleset does not have")
            rule = chain.rules[step["rule"] - 1]
            if step["text"] != rule.text:
                raise FuzzFailure(f"trace reports {key} as {step['text']!r}; the rule is {rule.text!r}")
            bad = _model_failures(rule, s)
            STATS["matched rules checked"] += 1
            if specs is not None and key in specs:
                bad += _spec_failures(specs[key], s)
                STATS["matched rules checked against the generator's record"] += 1
            if bad:
                raise FuzzFailure(
                    f"trace reports {key} {rule.text!r} as matched, but it cannot match "
                    f"{s.proto} {s.src}:{s.sport} > {s.dst}:{s.dport} iif {s.iif} oif {s.oif} mark {s.mark:#x}: "
                    + "; ".join(bad)
                )
            if "mark" in step.get("set", {}):
                s.mark = step["set"]["mark"]
    # the packet the replay arrives at is the one the result reports
    r = b["result"]
    final = r.get("packet") or {}
    got = (s.src, s.dst) + ((s.sport, s.dport) if s.ports_known else (final.get("sport"), final.get("dport")))
    want = (final.get("src"), final.get("dst"), final.get("sport"), final.get("dport"))
    if got != want:
        raise FuzzFailure(f"replaying the steps gives the packet {got}, the result says {want}")
    if r["disposition"] in ("forwarded", "output") and r.get("oif") != (s.pending_oif or s.oif):
        raise FuzzFailure(f"replaying the steps gives output interface {s.oif}, the result says {r.get('oif')}")


# ------------------------------------------------------------------------------- running


#: multiplies every example count (NFTRACE_FUZZ_SCALE=10 for a longer local run)
SCALE = float(os.environ.get("NFTRACE_FUZZ_SCALE", "1"))


def run_fuzz(strategy: st.SearchStrategy[Any], check: Any, n: int, seed: int = FUZZ_SEED) -> int:
    """Run check(example) on n examples of strategy (times SCALE); returns how many ran.

    The seed is fixed (FUZZ_SEED) so a CI failure reproduces; Hypothesis prints the failing
    example, and the message says which seed to set."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed

    count = [0]
    examples = max(1, int(n * SCALE))

    @hseed(seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(strategy)
    def inner(x: Any) -> None:
        count[0] += 1
        check(x)

    try:
        inner()
    except FuzzFailure as e:
        raise FuzzFailure(f"{e}\n(reproduce with NFTRACE_FUZZ_SEED={seed})") from e
    return count[0]
