"""Kernel-differential test over the real-world dumps of ../shared/corpus.

Each IPv4 dump that nftrace parses and the kernel loads is restored into a
network namespace on a synthetic host: one link for every interface the rules
name (wildcards get one concrete instance), each with an address, and a default
route.  Random packets drawn from the addresses and ports the dump mentions
are injected; the kernel's trace must equal one predicted branch.

NFTRACE_SEED fixes the seed; NFTRACE_CORPUS_PACKETS sets packets per dump (default 3).
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

from nftrace.errors import InputError
from nftrace.host.model import DEFAULT_IPV4_RULES, HostContext, Link, Route
from nftrace.host.parse import derive_routes
from nftrace.ruleset.parser import parse_rules
from tests.differential import compare, engine_packet, make_engine, random_packets
from tests.kernelhost import KernelHost, KernelHostError, unavailable_reason

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
N = int(os.environ.get("NFTRACE_CORPUS_PACKETS", "3"))
_V6_NAME = re.compile(r"ip6|ipv6|user6|before6|after6")
_IFACE = re.compile(r"(?:^|\s)-[io]\s+([^\s+]+)(\+?)")


def corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.rglob("*.rules") if not _V6_NAME.search(p.name))


def synthetic_host(text: str) -> HostContext:
    names: list[str] = []
    for m in _IFACE.finditer(text):
        name = m.group(1) + ("0" if m.group(2) else "")
        if name not in names and name != "lo" and len(name) <= 15 and re.fullmatch(r"[\w.-]+", name):
            names.append(name)
    if "eth0" not in names:
        names.insert(0, "eth0")
    names = names[:8]
    links = [Link(index=1, name="lo", kind="loopback", addresses=["127.0.0.1/8"])]
    for k, n in enumerate(names):
        links.append(Link(index=k + 2, name=n, addresses=[f"10.{200 + k}.0.1/24"], mac=f"02:00:00:00:01:{k + 2:02x}"))
    routes = derive_routes(links)
    routes.append(Route(table="main", dst="default", gateway="10.200.0.254", oif=names[0]))
    return HostContext(
        links=links,
        routes=routes,
        rules=list(DEFAULT_IPV4_RULES),
        sysctls={"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0"},
        empty=False,
    )


pytestmark = pytest.mark.kernel


@pytest.mark.skipif(not corpus_files(), reason="../shared/corpus not present")
def test_corpus_dumps_match_kernel() -> None:
    reason = unavailable_reason("nft")
    if reason:
        pytest.skip(reason)
    seed = int(os.environ.get("NFTRACE_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    failures: list[str] = []
    compared = loaded = 0
    for path in corpus_files():
        text = path.read_text(errors="replace")
        try:
            rs = parse_rules(text, str(path))
        except InputError:
            continue  # test_corpus_parse checks that such files are refused by the kernel too
        if rs.family != "ipv4" or not rs.tables:
            continue
        host = synthetic_host(text)
        engine = make_engine(rs, host)
        packets = random_packets(rng, text, host, N)
        try:
            kh = KernelHost(host, text)
            kh.__enter__()
        except KernelHostError:
            continue  # the kernel does not load it here (missing ipsets/objects): not comparable
        loaded += 1
        try:
            for kp in packets:
                pkt, origin = engine_packet(kp)
                res = kh.send(kp)
                v = compare(engine.trace(pkt, origin), res)
                compared += 1
                if not v.ok:
                    failures.append(f"--- {path.name}: {kp}\n{v.message}")
        finally:
            kh.__exit__(None, None, None)
    out = os.environ.get("NFTRACE_FAILURES_FILE")
    if out:
        Path(out).write_text("\n".join(failures))
    assert loaded > 50, f"only {loaded} corpus dumps loaded into the kernel"
    assert not failures, (
        f"{len(failures)}/{compared} packets over {loaded} dumps disagree (NFTRACE_SEED={seed}):\n"
        + "\n".join(failures[:3])
    )
