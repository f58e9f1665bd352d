"""`nftrace diff --auto` against the kernel: what it calls different, the kernel treats differently.

For a sample of IPv4 corpus dumps, a single-rule mutation (as in
tests/test_diff_corpus.py) is compared with the original on the synthetic
host the diff uses for bare dumps.  Both versions are then loaded into
KernelHost on that same host (one network-namespace host each), and probe
packets are injected into both kernels:

* every probe the diff reports as treated differently (up to 8): the two
  kernels must treat it differently (verdict, disposition, final addresses
  and ports, output interface, REJECT answer);
* some probes it reports as treated alike (up to 6): the two kernels must
  treat them alike.

Only probes the harness can send faithfully are used: TCP/UDP/ICMP, conntrack
state NEW (ESTABLISHED ones after `conntrack -I` of their connection, INVALID
ones as bare TCP ACKs with nf_conntrack_tcp_loose=0), one branch on both
sides (no statistic or unknown match on the way), no loopback source leaving
the host.

NFTRACE_SEED replays a seed (printed on failure; a fixed one by default,
NFTRACE_SEED=random draws one); NFTRACE_DIFF_SCALE
multiplies the number of dumps (default 3).
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import zlib
from typing import Any

import pytest

from nftrace.diff import compare
from nftrace.diff.hosts import synthetic_host, valid_ifname
from nftrace.diff.load import Side
from nftrace.engine.packet import packet_from_dict
from nftrace.engine.pipeline import Engine
from nftrace.errors import InputError
from nftrace.host.parse import build_host_context
from nftrace.ruleset.parser import parse_rules
from tests.test_diff_corpus import CORPUS, mutate

pytestmark = pytest.mark.kernel

# A fixed seed by default, so CI runs are repeatable; NFTRACE_SEED=N replays a run, =random explores.
_SEED_ENV = os.environ.get("NFTRACE_SEED", "20261122")
SEED = random.randrange(1 << 30) if _SEED_ENV == "random" else int(_SEED_ENV)
SCALE = max(1, int(os.environ.get("NFTRACE_DIFF_SCALE", "1")))
DUMPS = 3 * SCALE
_UNSUPPORTED = re.compile(
    r"-m (set|nfacct|owner|recent|hashlimit|limit|statistic|time|quota|connlimit|string|u32|cgroup|socket|policy|rpfilter|physdev)\b|-j (NFQUEUE|QUEUE|TPROXY|TEE|SET|CLUSTERIP)\b"
)


def _candidates() -> list[tuple[str, str]]:
    """IPv4 dumps the harness can rebuild faithfully: no sets, no stateful or random matches."""
    if not CORPUS.is_dir():
        return []
    out = []
    for p in sorted(CORPUS.rglob("*.rules")):
        if any(k in p.name for k in ("ip6", "ipv6", "user6", "before6", "after6")):
            continue
        text = p.read_text(encoding="utf-8", errors="surrogateescape")
        if _UNSUPPORTED.search(text):
            continue
        try:
            rs = parse_rules(text, str(p), "ipv4")
        except InputError:
            continue
        if rs.family != "ipv4" or not 3 <= rs.rule_count() <= 300:
            continue
        names = re.findall(r"-[io] (\S+)", text)
        if not all(valid_ifname(n.rstrip("+")) for n in names if n.rstrip("+")):
            continue
        out.append((str(p.relative_to(CORPUS)), text))
    return out


def _side(text: str, label: str) -> Side:
    return Side(label, parse_rules(text, label, "ipv4"), build_host_context(), None, "nft", "text", text)


def _kpacket(d: dict[str, Any]) -> Any | None:
    """The probe as a KernelHost packet, or None when the harness cannot send it faithfully."""
    from tests.kernelhost import KPacket

    if d["proto"] not in ("tcp", "udp", "icmp") or any(k in d for k in ("uid", "gid", "length", "ttl")):
        return None
    state = d.get("ct_state", "NEW")
    if state not in ("NEW", "ESTABLISHED", "INVALID") or (state == "INVALID" and d["proto"] != "tcp"):
        return None
    if state == "ESTABLISHED" and d["proto"] == "icmp":
        return None
    src, dst = ipaddress.ip_address(d["src"]), ipaddress.ip_address(d["dst"])
    if d["origin"] == "local" and src.is_loopback and not dst.is_loopback:
        return None  # a raw socket lets such a packet out; a real socket could not send it
    if dst.is_multicast:
        return None  # delivered only when a local socket joined the group: the engine assumes it did
    if d["origin"] == "local" and d.get("mark") and d["mark"] > 0xFFFFFFFF:
        return None
    icmp_type, icmp_code = 8, 0
    if d.get("icmp_type"):
        t, _, c = str(d["icmp_type"]).partition("/")
        icmp_type, icmp_code = int(t), int(c or 0)
    if d["proto"] == "tcp":
        flags = d.get("tcp_flags") or ("SYN" if state == "NEW" else "ACK")
        if state != "NEW" and "SYN" in flags.split(","):
            return None  # conntrack takes a SYN as a new connection, whatever entry exists
    else:
        flags = "SYN"
    return KPacket(origin=d["origin"], proto=d["proto"], src=d["src"], dst=d["dst"], sport=d.get("sport"),
                   dport=d.get("dport"), icmp_type=icmp_type, icmp_code=icmp_code, tcp_flags=flags,
                   iif=d.get("iif"), mark=int(d.get("mark") or 0))  # fmt: skip


def _single(engine: Engine, d: dict[str, Any]) -> dict[str, Any] | None:
    pkt, origin = packet_from_dict(dict(d))
    doc = engine.trace(pkt, origin).to_json()
    bs = doc["branches"]
    if len(bs) != 1 or bs[0]["probability"] is None:
        return None
    return bs[0]["result"]


def _send(kh: Any, kp: Any, state: str) -> Any:
    if state == "ESTABLISHED":
        kh.run(["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_be_liberal=1"])
        kh.run(["conntrack", "-I", "-p", kp.proto, "-s", kp.dst, "-d", kp.src, "--sport", str(kp.dport),
                "--dport", str(kp.sport), *(["--state", "ESTABLISHED"] if kp.proto == "tcp" else []),
                "--status", "SEEN_REPLY,ASSURED", "--timeout", "120"], check=False)  # fmt: skip
    elif state == "INVALID":
        kh.run(["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0"])
    try:
        return kh.send(kp)
    finally:
        if state == "INVALID":
            kh.run(["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=1"])


def _kernel_fate(res: Any, origin: str, random_ports: set[str]) -> tuple[Any, ...]:
    fin = res.final
    last = res.events[-1] if res.events else None
    if fin.get("delivered_local"):
        return ("ACCEPT", "local", None, fin["src"], fin["dst"], fin["sport"], fin["dport"])
    if last is not None and last.verdict == "DROP":
        m = re.search(r"-j REJECT(?: --reject-with (\S+))?", last.save_text or "")
        return ("DROP", "dropped", m.group(1) or "icmp-port-unreachable" if m else None)
    if not fin.get("oif"):
        return ("DROP", "unroutable")
    sport = None if "sport" in random_ports else fin["sport"]
    dport = None if "dport" in random_ports else fin["dport"]
    disp = "forwarded" if origin == "ingress" else "output"
    return ("ACCEPT", disp, fin["oif"], fin["src"], fin["dst"], sport, dport)


def test_kernel_sees_what_the_diff_reports() -> None:
    from tests.differential import compare as kcompare
    from tests.differential import engine_packet
    from tests.kernelhost import KernelHost, KernelHostUnavailable, unavailable_reason

    reason = unavailable_reason("nft")
    if reason:
        pytest.skip(reason)
    cands = _candidates()
    if not cands:
        pytest.skip("corpus not found at ../shared/corpus")
    rng = random.Random(SEED)
    rng.shuffle(cands)
    failures: list[str] = []
    checked = {"dumps": 0, "different": 0, "alike": 0}
    for name, text in cands:
        if checked["dumps"] >= DUMPS:
            break
        lrng = random.Random(SEED ^ zlib.crc32(name.encode()))
        mutation = None
        for _ in range(6):  # a mutation the diff finds a difference for
            m = mutate(text, "ipv4", lrng)
            if m is None:
                break
            a, b = _side(text, "A"), _side(m[0], "B")
            doc = compare(a, b)
            if doc["differences"]:
                mutation = (m, a, b, doc)
                break
        if mutation is None:
            continue
        (new_text, what, _), a, b, doc = mutation
        host = synthetic_host([a.ruleset, b.ruleset])
        ea, eb = Engine(a.ruleset, host), Engine(b.ruleset, host)
        differing = {repr(sorted(d["packet"].items())) for d in doc["differences"]}
        picks: list[tuple[dict[str, Any], bool]] = []
        for d in doc["differences"]:
            if len([p for p in picks if p[1]]) >= 8:
                break
            picks.append((d["packet"], True))
        from nftrace.diff.probes import generate_probes

        probes, _ = generate_probes([a.ruleset, b.ruleset], host, max_probes=2000)
        alike = [p for p in probes if repr(sorted(p.items())) not in differing]
        lrng.shuffle(alike)
        picks += [(p, False) for p in alike[:40]]
        usable = []
        for d, differs in picks:
            kp = _kpacket(d)
            ra, rb = _single(ea, d), _single(eb, d)
            if kp is None or ra is None or rb is None:
                continue
            usable.append((d, differs, kp, ra, rb))
        usable = [u for u in usable if u[1]][:8] + [u for u in usable if not u[1]][:6]
        if not any(u[1] for u in usable):
            continue
        try:
            ka = KernelHost(host, text)
            kb = KernelHost(host, new_text)
        except KernelHostUnavailable as e:
            pytest.skip(str(e))
        with ka, kb:
            checked["dumps"] += 1
            for d, differs, kp, ra, rb in usable:
                state = d.get("ct_state", "NEW")
                res_a, res_b = _send(ka, kp, state), _send(kb, kp, state)
                rp = set(ra["packet"].get("random_ports", [])) | set(rb["packet"].get("random_ports", []))
                fa, fb = _kernel_fate(res_a, d["origin"], rp), _kernel_fate(res_b, d["origin"], rp)
                checked["different" if differs else "alike"] += 1
                if (fa != fb) != differs:
                    notes = []
                    for side, eng, res in (("A", ea, res_a), ("B", eb, res_b)):
                        pkt, origin = engine_packet(kp)
                        if state != "NEW":
                            pkt, origin = packet_from_dict({**d, "tcp_flags": kp.tcp_flags} if kp.proto == "tcp" else d)
                        v = kcompare(eng.trace(pkt, origin), res)
                        if not v.ok:
                            notes.append(f"engine {side} disagrees with the kernel:\n{v.message}")
                    failures.append(
                        f"{name}: {what}\n  probe {d}: diff says {'different' if differs else 'alike'}, "
                        f"kernel A {fa}, kernel B {fb}\n" + "\n".join(notes)
                    )
    print(f"kernel-checked: {checked} (NFTRACE_SEED={SEED})")
    if checked["dumps"] == 0:
        pytest.skip("no sampled dump could be checked in the kernel")
    assert not failures, f"(NFTRACE_SEED={SEED}, checked {checked})\n" + "\n\n".join(failures[:4])
    assert checked["different"] > 0, checked


def test_candidates_exist() -> None:
    if not CORPUS.is_dir():
        pytest.skip("corpus not found at ../shared/corpus")
    assert len(_candidates()) >= 10
