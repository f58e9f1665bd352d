"""Kernel-differential tests over rulesets/: the engine must predict the kernel's own trace.

For each scenario the host (links, addresses, routes, ip rules, sysctls) is
rebuilt in network namespaces, the dump restored, and randomised packets drawn
from the addresses and ports the scenario mentions are injected (ingress as L2
frames from the peer namespace, local through a raw socket).  The kernel's
`xtables-monitor --trace` path must equal one predicted branch rule for rule,
with the same final addresses and output interface.

NFTRACE_SEED fixes the seed (printed on failure); NFTRACE_PACKETS sets the
number of packets per scenario (default 60).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from nftrace.host.parse import build_host_context
from nftrace.ruleset.parser import parse_rules
from tests.differential import compare, engine_packet, flows_packets, make_engine, random_packets
from tests.kernelhost import KernelHost, KernelHostUnavailable, unavailable_reason

ROOT = Path(__file__).resolve().parent.parent / "rulesets"
SCENARIOS = sorted(p.name for p in ROOT.iterdir() if (p / "iptables.rules").is_file() and (p / "addrs.txt").is_file())
N = int(os.environ.get("NFTRACE_PACKETS", "60"))

pytestmark = pytest.mark.kernel


def _host(d: Path):  # type: ignore[no-untyped-def]
    def opt(name: str) -> str | None:
        p = d / name
        return str(p) if p.is_file() else None

    sysctls = []
    if (d / "sysctl.txt").is_file():
        sysctls = [ln for ln in (d / "sysctl.txt").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return build_host_context(
        routes_file=opt("routes.txt"), addrs_file=opt("addrs.txt"), rules_file=opt("ip-rules.txt"), sysctls=sysctls
    )


@pytest.mark.parametrize("backend", ["nft", "legacy"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ruleset_matches_kernel(scenario: str, backend: str) -> None:
    reason = unavailable_reason(backend)
    if reason:
        pytest.skip(reason)
    d = ROOT / scenario
    text = (d / "iptables.rules").read_text()
    host = _host(d)
    rs = parse_rules(text, str(d / "iptables.rules"))
    engine = make_engine(rs, host, backend)
    ipsets = (d / "ipsets.txt").read_text() if (d / "ipsets.txt").is_file() else None
    if ipsets is not None:
        from nftrace.ruleset.ipsets import parse_ipsets

        engine.ipsets = parse_ipsets(ipsets, str(d / "ipsets.txt"))
    seed = int(os.environ.get("NFTRACE_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    links = [link.name for link in host.links]
    flows = flows_packets(str(d / "flows.txt"), links) if (d / "flows.txt").is_file() else []
    packets = flows + random_packets(rng, text, host, N if backend == "nft" else N // 2)
    failures: list[str] = []
    try:
        kh = KernelHost(host, text, ipsets=ipsets, backend=backend)
    except KernelHostUnavailable as e:
        pytest.skip(str(e))
    with kh:
        for kp in packets:
            pkt, origin = engine_packet(kp)
            trace = engine.trace(pkt, origin)
            res = kh.send(kp)
            v = compare(trace, res, legacy=backend == "legacy")
            if not v.ok:
                failures.append(f"--- {kp}\n{v.message}")
    assert not failures, (
        f"{len(failures)}/{len(packets)} packets disagree with the kernel (NFTRACE_SEED={seed}):\n"
        + "\n".join(failures[:3])
    )
