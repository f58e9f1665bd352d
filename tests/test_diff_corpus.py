"""`nftrace diff --auto` over the corpus: single-rule mutations are found, copies are not.

For every dump of ../shared/corpus that loads (parse_rules; InputError skips it):

* the dump compared with an identical copy, and (kube-proxy dumps) with a copy
  whose KUBE-SVC/SEP/EXT/FW/SVL hashes are consistently renamed and whose chain
  declarations are shuffled, reports no structural change and no behavioural
  difference;
* a random single-rule mutation (delete a rule, change an address or a port,
  flip ACCEPT<->DROP) is compared with the original.  An oracle that does not
  share the diff's probe generator (random packets over every value the dumps
  mention, plus packets aimed at the mutated rule) traces both versions with
  the engine; whenever the oracle finds a packet treated differently, the diff
  must report at least one difference.  Every difference the diff reports is
  re-traced by the oracle and must be real.

Both versions run on the synthetic host the diff uses for bare dumps
(nftrace.diff.hosts), so -i/-o, INPUT and FORWARD are reachable.

The kernel part (marked `kernel`) takes a few IPv4 dumps, loads both versions
into KernelHost on that synthetic host, and checks the probes the diff reports
as different, plus some it reports as equal, against the kernel: the kernel
must treat the reported ones differently and the others alike.

NFTRACE_SEED replays a seed (printed on failure; a fixed one by default,
NFTRACE_SEED=random draws one).  NFTRACE_DIFF_SCALE (default
1) multiplies the mutations per dump, the oracle's packets and the kernel
sample; dumps of more than 2,000 rules are compared only when
NFTRACE_DIFF_BIG=1 (each takes ~10 s per comparison).
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import zlib
from pathlib import Path
from typing import Any

import pytest

from nftrace.diff import compare
from nftrace.diff.hosts import synthetic_host
from nftrace.diff.load import Side
from nftrace.engine.packet import packet_from_dict
from nftrace.engine.pipeline import Engine
from nftrace.errors import InputError
from nftrace.ruleset.parser import parse_rules

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
SCALE = max(1, int(os.environ.get("NFTRACE_DIFF_SCALE", "1")))
BIG = os.environ.get("NFTRACE_DIFF_BIG") == "1"
# A fixed seed by default, so CI runs are repeatable; NFTRACE_SEED=N replays a run, =random explores.
_SEED_ENV = os.environ.get("NFTRACE_SEED", "20261122")
SEED = random.randrange(1 << 30) if _SEED_ENV == "random" else int(_SEED_ENV)
MAX_RULES = 2000
_V6_NAMES = ("ip6", "ipv6", "user6", "before6", "after6")


def _family(p: Path) -> str | None:
    return "ipv6" if any(k in p.name for k in _V6_NAMES) else None


def _corpus() -> list[tuple[str, str, str | None]]:
    """(id, text, family) of every dump that loads."""
    if not CORPUS.is_dir():
        return []
    out = []
    for p in sorted(CORPUS.rglob("*.rules")):
        text = p.read_text(encoding="utf-8", errors="surrogateescape")
        fam = _family(p)
        try:
            rs = parse_rules(text, str(p), fam)
        except InputError:
            continue
        if not rs.tables or rs.rule_count() == 0:
            continue
        if rs.rule_count() > MAX_RULES and not BIG:
            continue
        out.append((str(p.relative_to(CORPUS)), text, rs.family))
    return out


DUMPS = _corpus()
IDS = [d[0] for d in DUMPS]


def _rng(name: str, salt: str) -> random.Random:
    return random.Random(SEED ^ zlib.crc32(f"{name}/{salt}".encode()))


def _side(text: str, family: str, label: str) -> Side:
    rs = parse_rules(text, label, family)
    from nftrace.host.parse import build_host_context

    return Side(label, rs, build_host_context(), None, "nft", "text", text)


# ---------------------------------------------------------------- mutations

_ADDR = re.compile(r"(?<=\s)(-[sd]) ([0-9a-fA-F:.]+)(/\d+)?(?=\s|$)")
_PORT = re.compile(r"(--(?:dport|sport|dports|sports|destination-port|source-port)) ([0-9,:]+)")


def mutate(text: str, family: str, rng: random.Random) -> tuple[str, str, int] | None:
    """One random single-rule mutation: (new text, description, line number), or None."""
    lines = text.split("\n")
    rule_idx = [i for i, ln in enumerate(lines) if ln.startswith("-A ")]
    if not rule_idx:
        return None
    kinds = ["delete", "address", "port", "target"]
    rng.shuffle(kinds)
    for kind in kinds:
        cands: list[int]
        if kind == "delete":
            cands = rule_idx
        elif kind == "address":
            cands = [i for i in rule_idx if _ADDR.search(lines[i])]
        elif kind == "port":
            cands = [i for i in rule_idx if _PORT.search(lines[i])]
        else:
            cands = [i for i in rule_idx if re.search(r"-j (ACCEPT|DROP)(\s|$)", lines[i])]
        if not cands:
            continue
        i = rng.choice(cands)
        old = lines[i]
        if kind == "delete":
            new_text = "\n".join(lines[:i] + lines[i + 1 :])
            try:
                parse_rules(new_text, "<mutated>", family)
            except InputError:
                continue
            return new_text, f"deleted line {i + 1}: {old}", i + 1
        if kind == "address":
            ms = list(_ADDR.finditer(old))
            m = rng.choice(ms)
            try:
                a = ipaddress.ip_address(m.group(2))
            except ValueError:
                continue
            bits = a.max_prefixlen
            plen = int(m.group(3)[1:]) if m.group(3) else bits
            if plen == 0:
                continue
            bit = rng.randrange(bits - plen, bits) if rng.random() < 0.7 else bits - plen
            new_a = ipaddress.ip_address(int(a) ^ (1 << bit))
            new = old[: m.start(2)] + str(new_a) + old[m.end(2) :]
        elif kind == "port":
            m = rng.choice(list(_PORT.finditer(old)))
            nums = [int(x) for x in re.findall(r"\d+", m.group(2))]
            k = rng.randrange(len(nums))
            nums[k] = max(0, min(65535, nums[k] + rng.choice([-1, 1, 7, 1000])))
            parts = re.split(r"(\d+)", m.group(2))
            parts[1::2] = [str(x) for x in nums]
            val = "".join(parts)
            new = old[: m.start(2)] + val + old[m.end(2) :]
        else:
            new = re.sub(
                r"-j (ACCEPT|DROP)(?=\s|$)", lambda mm: "-j DROP" if mm.group(1) == "ACCEPT" else "-j ACCEPT", old
            )
        if new == old:
            continue
        new_text = "\n".join(lines[:i] + [new] + lines[i + 1 :])
        try:
            parse_rules(new_text, "<mutated>", family)
        except InputError:
            continue
        return new_text, f"line {i + 1}: {old}  ==>  {new}", i + 1
    return None


_HASH = re.compile(r"\bKUBE-(SVC|SEP|EXT|FW|SVL|XLB)-([A-Z0-9]{16})\b")


def rename_kube(text: str, rng: random.Random) -> str:
    """Consistently give every hashed kube-proxy chain a new hash, and shuffle the chain declarations."""
    names = sorted(set(_HASH.findall(text)))
    if not names:
        return text
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    new = {}
    for prefix, h in names:
        new[f"KUBE-{prefix}-{h}"] = f"KUBE-{prefix}-" + "".join(rng.choice(alphabet) for _ in range(16))
    out = _HASH.sub(lambda m: new[m.group(0)], text)
    # declaration order is noise: shuffle the ':CHAIN' lines of each table
    lines = out.split("\n")
    k = 0
    while k < len(lines):
        if lines[k].startswith(":"):
            j = k
            while j < len(lines) and lines[j].startswith(":"):
                j += 1
            block = lines[k:j]
            rng.shuffle(block)
            lines[k:j] = block
            k = j
        else:
            k += 1
    return "\n".join(lines)


# ---------------------------------------------------------------- the oracle

_V4 = re.compile(r"(?<![\w.:])(\d{1,3}(?:\.\d{1,3}){3})(?:/(\d{1,2}))?(?![\w.])")
_V6 = re.compile(r"(?<![\w:])([0-9a-fA-F]{0,4}(?::[0-9a-fA-F]{0,4}){2,7})(?:/(\d{1,3}))?")
_PORTS = re.compile(r"--(?:dport|sport|dports|sports|ports|destination-port|source-port|to-ports)\s+!?\s*([\d,:]+)")
_PROTO = re.compile(r"-p\s+(\w+)")
_STATE = re.compile(r"--(?:ctstate|state)\s+([A-Z,]+)")


def _addresses(text: str, family: str) -> list[int]:
    out: set[int] = set()
    pat = _V6 if family == "ipv6" else _V4
    for m in pat.finditer(text):
        try:
            a = ipaddress.ip_address(m.group(1))
        except ValueError:
            continue
        if (a.version == 6) != (family == "ipv6"):
            continue
        plen = int(m.group(2)) if m.group(2) else a.max_prefixlen
        if plen > a.max_prefixlen:
            continue
        net = ipaddress.ip_network(f"{a}/{plen}", strict=False)
        lo, hi = int(net.network_address), int(net.broadcast_address)
        out.update({lo, hi, lo + (hi - lo) // 2, max(0, lo - 1), hi + 1})
    top = (1 << (128 if family == "ipv6" else 32)) - 1
    return sorted(v for v in out if 0 <= v <= top)


def _ports(text: str) -> list[int]:
    out: set[int] = {22, 53, 80, 443, 33333}
    for m in _PORTS.finditer(text):
        for part in m.group(1).split(","):
            for x in part.split(":"):
                if x.isdigit():
                    v = int(x)
                    out.update({v, max(0, v - 1), min(65535, v + 1)})
    return sorted(out)


class Oracle:
    """Random packets over every value the dumps mention; traced in both versions by the engine."""

    def __init__(self, texts: list[str], family: str, host: Any, rng: random.Random) -> None:
        self.family = family
        self.rng = rng
        joined = "\n".join(texts)
        self.addrs = _addresses(joined, family)
        self.local = [int(i.ip) for _, i in host.addresses(family) if not i.ip.is_loopback]
        self.addrs += self.local
        self.links = [lk.name for lk in host.links if lk.name != "lo"]
        self.neigh = {}
        for lk in host.links:
            for a in lk.addresses:
                i = ipaddress.ip_interface(a)
                if (i.version == 6) == (family == "ipv6") and not i.ip.is_loopback:
                    self.neigh[lk.name] = int(i.network.network_address) + 2
        self.addrs += list(self.neigh.values())
        self.ports = _ports(joined)
        icmp = "icmpv6" if family == "ipv6" else "icmp"
        protos = {"tcp", "udp", icmp}
        for m in _PROTO.finditer(joined):
            p = m.group(1).lower()
            if p in ("tcp", "udp", "sctp", "udplite", "gre", "esp", "ah"):
                protos.add(p)
        self.protos = sorted(protos)
        states = {"NEW"}
        for m in _STATE.finditer(joined):
            states.update(s for s in m.group(1).split(",") if s in ("NEW", "ESTABLISHED", "RELATED", "INVALID"))
        self.states = sorted(states)

    def _addr(self, v: int) -> str:
        return str(ipaddress.ip_address(v) if self.family == "ipv4" else ipaddress.IPv6Address(v))

    def packet(self, focus: str | None = None) -> dict[str, Any]:
        r = self.rng
        origin = "local" if r.random() < 0.25 else "ingress"
        proto = r.choice(self.protos)
        d: dict[str, Any] = {"origin": origin, "proto": proto}
        d["src"] = self._addr(r.choice(self.local) if origin == "local" and self.local else r.choice(self.addrs))
        d["dst"] = self._addr(r.choice(self.addrs))
        if proto in ("tcp", "udp", "sctp", "udplite"):
            d["sport"] = r.choice([40000, *self.ports])
            d["dport"] = r.choice(self.ports)
        if origin == "ingress":
            d["iif"] = r.choice(self.links)
        if r.random() < 0.2:
            d["ct_state"] = r.choice(self.states)
        if focus:
            self._aim(d, focus)
        return d

    def _aim(self, d: dict[str, Any], rule: str) -> None:
        """Give the packet the values the (mutated) rule names, with some jitter."""
        r = self.rng
        for flag, key in (("-s", "src"), ("-d", "dst")):
            m = re.search(rf"(!\s+)?{flag} (\S+)", rule)
            if m and r.random() < 0.9:
                try:
                    net = ipaddress.ip_network(m.group(2), strict=False)
                except ValueError:
                    continue
                lo, hi = int(net.network_address), int(net.broadcast_address)
                v = r.choice([lo, hi, r.randint(lo, hi), lo - 1, hi + 1])
                top = (1 << net.max_prefixlen) - 1
                d[key] = self._addr(min(max(v, 0), top))
        m = re.search(r"-p (\w+)", rule)
        if m and m.group(1) in ("tcp", "udp", "icmp", "icmpv6", "sctp") and r.random() < 0.9:
            d["proto"] = m.group(1)
            if d["proto"] in ("tcp", "udp", "sctp"):
                d.setdefault("sport", 40000)
                d.setdefault("dport", 33333)
            else:
                d.pop("sport", None)
                d.pop("dport", None)
        for flag, key in (("--dport", "dport"), ("--sport", "sport"), ("--dports", "dport"), ("--sports", "sport")):
            m = re.search(rf"{flag} ([\d,:]+)", rule)
            if m and "sport" in d:
                nums = [int(x) for x in re.findall(r"\d+", m.group(1))]
                v = r.choice(nums) + r.choice([0, 0, 0, -1, 1])
                d[key] = max(0, min(65535, v))
        m = re.search(r"(!\s+)?-i (\S+)", rule)
        if m and d["origin"] == "ingress":
            stem = m.group(2).rstrip("+")
            hits = [lk for lk in self.links if lk.startswith(stem)]
            if hits and r.random() < 0.8:
                d["iif"] = r.choice(hits)
        m = re.search(r"(!\s+)?-o (\S+)", rule)
        if m:
            stem = m.group(2).rstrip("+")
            hits = [lk for lk in self.links if lk.startswith(stem) and lk in self.neigh]
            if hits and r.random() < 0.8:
                d["dst"] = self._addr(self.neigh[r.choice(hits)])
        m = re.search(r"--(?:ctstate|state) ([A-Z,]+)", rule)
        if m and r.random() < 0.8:
            st = [s for s in m.group(1).split(",") if s in ("NEW", "ESTABLISHED", "RELATED", "INVALID")]
            if st:
                d["ct_state"] = r.choice(st)
        if "--dst-type LOCAL" in rule and self.local and r.random() < 0.8:
            d["dst"] = self._addr(r.choice(self.local))
        if "OUTPUT" in rule.split()[1:2] and r.random() < 0.7:
            d["origin"] = "local"
            d.pop("iif", None)
            if self.local and not re.search(r"-s \S+", rule):
                d["src"] = self._addr(r.choice(self.local))


def oracle_fates(engine: Engine, packet: dict[str, Any]) -> Any:
    try:
        pkt, origin = packet_from_dict(dict(packet))
    except InputError:
        return None
    doc = engine.trace(pkt, origin).to_json()
    out = []
    for b in doc["branches"]:
        res = b["result"]
        pk = dict(res.get("packet") or {})
        for k in pk.pop("random_ports", []) or []:
            pk[k] = "*"
        last = next((s for s in reversed(b["steps"]) if s.get("kind") == "rule"), None)
        rej = None
        if res["verdict"] == "DROP" and last is not None and last.get("target") == "REJECT":
            rej = (last.get("text", "").partition("--reject-with")[2].split() or ["icmp-port-unreachable"])[0]
        if res["verdict"] == "DROP":
            pk = {}
        p = b.get("probability")
        oif = res.get("oif") if res["verdict"] != "DROP" else None
        out.append((None if p is None else p, (res["verdict"], res["disposition"], oif,
                    tuple(sorted(pk.items(), key=lambda kv: kv[0])), rej)))  # fmt: skip
    # the set of outcomes, each with its total probability (None when uncertain)
    acc: dict[Any, Any] = {}
    for p, fate in out:
        if fate in acc:
            acc[fate] = None if p is None or acc[fate] is None else acc[fate] + p
        else:
            acc[fate] = p
    return sorted(((f, None if p is None else round(p, 9)) for f, p in acc.items()), key=repr)


# ---------------------------------------------------------------- tests

pytestmark = pytest.mark.skipif(not DUMPS, reason="corpus not found at ../shared/corpus")


@pytest.mark.parametrize("name,text,family", DUMPS, ids=IDS)
def test_copies_show_no_difference(name: str, text: str, family: str) -> None:
    a = _side(text, family, "A")
    doc = compare(a, _side(text, family, "A-copy"))
    assert not doc["differences"], f"{name}: identical copy reported different (NFTRACE_SEED={SEED})"
    s = doc["structural"]
    assert not (s["added"] or s["removed"] or s["moved"] or s["policies"]), f"{name}: {s}"
    if _HASH.search(text):
        renamed = rename_kube(text, _rng(name, "rename"))
        assert renamed != text
        doc = compare(a, _side(renamed, family, "renamed"))
        s = doc["structural"]
        assert not (s["added"] or s["removed"] or s["moved"] or s["policies"]), (
            f"{name}: renamed kube-proxy chains reported as structural changes (NFTRACE_SEED={SEED}): "
            f"{[e['text'] for e in s['added'] + s['removed']][:4]}"
        )
        assert s["chains_matched"], "the renamed chains should be reported as matched"
        assert not doc["differences"], (
            f"{name}: renamed kube-proxy chains reported as behaving differently (NFTRACE_SEED={SEED}): "
            f"{doc['differences'][0]['packet']}"
        )


@pytest.mark.parametrize("name,text,family", DUMPS, ids=IDS)
def test_single_rule_mutation_is_found(name: str, text: str, family: str) -> None:
    for k in range(SCALE):
        rng = _rng(name, f"mutation{k}")
        m = mutate(text, family, rng)
        if m is None:
            pytest.skip("no rule to mutate")
        new_text, what, _line = m
        a, b = _side(text, family, "A"), _side(new_text, family, "B")
        doc = compare(a, b)
        host = synthetic_host([a.ruleset, b.ruleset])
        ea, eb = Engine(a.ruleset, host), Engine(b.ruleset, host)
        # every reported difference is real
        for d in doc["differences"][:50]:
            fa, fb = oracle_fates(ea, d["packet"]), oracle_fates(eb, d["packet"])
            assert fa != fb, f"{name}: {what}: reported difference is not real for {d['packet']} (NFTRACE_SEED={SEED})"
        # the oracle: independent packets, some aimed at the mutated rule
        old_line = what.split(": ", 1)[1].split("  ==>  ")
        oracle = Oracle([text, new_text], family, host, rng)
        found = None
        for n in range(300 * SCALE):
            focus = old_line[n % len(old_line)] if n % 2 == 0 else None
            pk = oracle.packet(focus)
            fa = oracle_fates(ea, pk)
            if fa is None:
                continue
            if fa != oracle_fates(eb, pk):
                found = pk
                break
        if found is not None:
            assert doc["differences"], (
                f"{name}: {what}\nthe oracle found a packet treated differently but the diff reported none "
                f"({doc['probes']['count']} probes, NFTRACE_SEED={SEED}):\n  {found}\n"
                f"  A: {oracle_fates(ea, found)}\n  B: {oracle_fates(eb, found)}"
            )
