"""The iptables project's own extension test vectors (extensions/*.t, iptables 1.8.11).

Format (as iptables-test.py reads it): `:CHAIN,CHAIN` sets the chains the
following lines are tried in, `*table` the table, `#` comments, `@`/`%` lines
are shell set-up commands (skipped here).  A vector is
`RULE;EXPECTED;RESULT[;VARIANT[;ALT]]`: iptables-test.py runs
`iptables -A CHAIN -t TABLE RULE` (RULE goes through the shell) and, for OK,
looks for the exact line `-A CHAIN EXPECTED` in iptables-save's output
(`=` means EXPECTED is RULE); FAIL means the command must fail.  VARIANT
(`NFT`/`LEGACY`) scopes RESULT to one backend; the other backend gets ALT, or
the inverse of RESULT.  nftrace follows the nf_tables backend (iptables' default):
a `;LEGACY` result is inverted (or replaced by ALT) for it.  NOMATCH (or an ALT
that is not a result) means: loads, prints something else.

libipt_ files are IPv4, libip6t_ IPv6; libxt_ files run as IPv4, or as IPv6 when
the vector only makes sense there.  libebt_/libarpt_ (ebtables, arptables) are
not iptables and are skipped.

Three FAIL vectors fail in the kernel only because an object outside the rule
does not exist in the test's fresh namespace (EXTERNAL below): a dump names ipsets
and nfacct objects that live on its host, so nftrace accepts them; they are
reported, not counted.

For each file the test asserts floors reached so far: how many OK lines parse
and print back exactly (`canonical_text`), how many FAIL lines are rejected.
`python -m tests.test_extension_vectors` prints the per-extension table and the
remaining mismatches.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nftrace.errors import InputError
from nftrace.ruleset import canonical_text
from nftrace.ruleset.parser import parse_rules

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
VECTORS = CORPUS / "iptables-extensions"


@dataclass(frozen=True)
class Vector:
    file: str
    line: int
    table: str
    chain: str
    rule: str
    expected: str | None  # None for FAIL
    result: str  # OK | FAIL | NOMATCH


def _requote(word: str) -> str:
    # iptables-restore refuses an unquoted word like -oeth1 (it contains 't', as -t would);
    # on a command line it is fine, so quote it here
    trips_t = word.startswith("-") and not word.startswith("--") and "t" in word
    if word and not trips_t and all(c.isalnum() or c in "-_.:/,=+!@%^*[]~" for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def load_vectors(path: Path) -> list[Vector]:
    out: list[Vector] = []
    table = "filter"
    chains: list[str] = []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.rstrip("\n")
        if not line.strip() or line[0] == "#":
            continue
        if line[0] == ":":
            chains = line[1:].strip().split(",")
            continue
        if line[0] == "*":
            table = line[1:].strip()
            continue
        if line[0] in "@%":
            continue
        items = line.split(";")
        rule, exp, res = items[0], items[1], items[2].strip()
        if len(items) > 3:
            variant = items[3].strip()
            alt = items[4].strip() if len(items) > 4 else None
            if variant == "LEGACY":  # nftrace follows the nf_tables backend
                if alt is not None:
                    res = alt if alt in ("OK", "FAIL", "NOMATCH") else "NOMATCH"
                else:
                    res = {"OK": "FAIL", "FAIL": "OK", "NOMATCH": "OK"}[res]
        for chain in chains:
            expected = None if res == "FAIL" else (rule if exp == "=" else exp)
            out.append(Vector(path.name, n, table, chain, rule, expected, res))
    return out


def family_of(file: str) -> str:
    return "ipv6" if file.startswith("libip6t_") else "ipv4"


def restore_text(v: Vector) -> str:
    words = shlex.split(v.rule)
    return f"*{v.table}\n-A {v.chain} {' '.join(_requote(w) for w in words)}\nCOMMIT\n"


def expected_line(v: Vector) -> str:
    assert v.expected is not None
    words = v.expected.split()
    return " ".join(["-A", v.chain, *words]) if words else f"-A {v.chain}"


def run_vector(v: Vector) -> tuple[str, str]:
    """(outcome, detail): outcome is exact | printed-differently | rejected | accepted | refused-valid."""
    fams = [family_of(v.file)]
    if v.file.startswith("libxt_"):
        fams.append("ipv6")
    last_err = ""
    for fam in fams:
        try:
            rs = parse_rules(restore_text(v), f"{v.file}:{v.line}", family=fam)
        except InputError as e:
            last_err = e.one_line()
            continue
        if v.result == "FAIL":
            rules = rs.tables[v.table].chains[v.chain].rules
            return "accepted", canonical_text(rules[0]) if rules else "(no rule)"
        rules = rs.tables[v.table].chains[v.chain].rules
        got = canonical_text(rules[0]) if rules else ""
        if v.result == "NOMATCH":
            return "exact", got
        want = expected_line(v)
        return ("exact", got) if got == want else ("printed-differently", f"got  {got}\n      want {want}")
        # (only the first family that parses is considered for OK lines)
    if v.result == "FAIL":
        return "rejected", last_err
    return "refused-valid", last_err


# (file, line) -> why the kernel refuses it although the rule itself is valid
EXTERNAL = {
    ("libxt_SET.t", 3): "ipset 'foo' does not exist in the test namespace",
    ("libxt_set.t", 4): "ipset 'foo' does not exist in the test namespace",
    ("libxt_nfacct.t", 8): "nfacct object 'wrong' does not exist in the test namespace",
}


@dataclass
class Score:
    ok_total: int = 0
    ok_exact: int = 0
    fail_total: int = 0
    fail_rejected: int = 0
    external: int = 0
    misses: list[str] = field(default_factory=list)


def all_files() -> list[Path]:
    if not VECTORS.is_dir():
        return []
    return sorted(
        p for p in VECTORS.glob("*.t") if p.name.startswith(("libxt_", "libipt_", "libip6t_")) or p.name == "iptables.t"
    )


def score_file(path: Path) -> Score:
    s = Score()
    for v in load_vectors(path):
        outcome, detail = run_vector(v)
        if (v.file, v.line) in EXTERNAL:
            s.external += 1
            continue
        if v.result == "FAIL":
            s.fail_total += 1
            if outcome == "rejected":
                s.fail_rejected += 1
            else:
                s.misses.append(f"{v.file}:{v.line} [{v.chain}] FAIL accepted: {v.rule}  -> {detail}")
        else:
            s.ok_total += 1
            if outcome == "exact":
                s.ok_exact += 1
            else:
                s.misses.append(f"{v.file}:{v.line} [{v.chain}] {outcome}: {v.rule}\n      {detail}")
    return s


# Floors reached: file -> (OK lines printed back exactly, FAIL lines rejected).
# Regenerate with `python -m tests.test_extension_vectors --floors` after an improvement.
FLOORS: dict[str, tuple[int, int]] = {
    "iptables.t": (7, 5),
    "libip6t_DNAT.t": (10, 8),
    "libip6t_DNPT.t": (1, 4),
    "libip6t_HL.t": (15, 25),
    "libip6t_LOG.t": (24, 6),
    "libip6t_MASQUERADE.t": (5, 2),
    "libip6t_NETMAP.t": (8, 0),
    "libip6t_REJECT.t": (24, 3),
    "libip6t_SNAT.t": (10, 5),
    "libip6t_SNPT.t": (2, 8),
    "libip6t_TEE.t": (3, 3),
    "libip6t_TPROXY.t": (2, 1),
    "libip6t_ah.t": (30, 18),
    "libip6t_connlimit.t": (24, 21),
    "libip6t_conntrack.t": (12, 0),
    "libip6t_dst.t": (12, 0),
    "libip6t_eui64.t": (3, 1),
    "libip6t_frag.t": (48, 6),
    "libip6t_hbh.t": (12, 0),
    "libip6t_hl.t": (12, 9),
    "libip6t_icmp6.t": (18, 6),
    "libip6t_iprange.t": (12, 0),
    "libip6t_ipv6header.t": (9, 0),
    "libip6t_ipvs.t": (9, 0),
    "libip6t_mh.t": (27, 6),
    "libip6t_policy.t": (4, 2),
    "libip6t_recent.t": (21, 3),
    "libip6t_rt.t": (27, 3),
    "libip6t_srh.t": (81, 0),
    "libip6t_standard.t": (14, 0),
    "libipt_DNAT.t": (10, 8),
    "libipt_ECN.t": (4, 8),
    "libipt_LOG.t": (24, 6),
    "libipt_MASQUERADE.t": (5, 2),
    "libipt_NETMAP.t": (8, 0),
    "libipt_REJECT.t": (24, 0),
    "libipt_SNAT.t": (10, 5),
    "libipt_TEE.t": (3, 3),
    "libipt_TPROXY.t": (2, 1),
    "libipt_TTL.t": (15, 25),
    "libipt_ah.t": (30, 24),
    "libipt_connlimit.t": (24, 6),
    "libipt_conntrack.t": (12, 0),
    "libipt_icmp.t": (15, 3),
    "libipt_iprange.t": (12, 0),
    "libipt_ipvs.t": (9, 0),
    "libipt_osf.t": (2, 4),
    "libipt_policy.t": (4, 2),
    "libipt_realm.t": (6, 3),
    "libipt_recent.t": (21, 3),
    "libipt_standard.t": (51, 0),
    "libipt_ttl.t": (15, 9),
    "libxt_AUDIT.t": (9, 6),
    "libxt_CHECKSUM.t": (3, 3),
    "libxt_CLASSIFY.t": (3, 3),
    "libxt_CONNMARK.t": (16, 4),
    "libxt_CONNSECMARK.t": (8, 4),
    "libxt_CT.t": (8, 4),
    "libxt_DSCP.t": (25, 20),
    "libxt_HMARK.t": (12, 6),
    "libxt_IDLETIMER.t": (6, 6),
    "libxt_LED.t": (6, 3),
    "libxt_MARK.t": (9, 9),
    "libxt_NFLOG.t": (39, 18),
    "libxt_NFQUEUE.t": (39, 24),
    "libxt_NOTRACK.t": (2, 0),
    "libxt_RATEEST.t": (3, 0),
    "libxt_REDIRECT.t": (20, 10),
    "libxt_SECMARK.t": (3, 3),
    "libxt_SET.t": (0, 0),
    "libxt_SYNPROXY.t": (2, 2),
    "libxt_TCPMSS.t": (9, 3),
    "libxt_TCPOPTSTRIP.t": (10, 20),
    "libxt_TEE.t": (0, 3),
    "libxt_TOS.t": (50, 5),
    "libxt_TRACE.t": (2, 0),
    "libxt_addrtype.t": (16, 18),
    "libxt_bpf.t": (3, 0),
    "libxt_cgroup.t": (12, 6),
    "libxt_cluster.t": (3, 12),
    "libxt_comment.t": (9, 6),
    "libxt_connbytes.t": (42, 30),
    "libxt_connlabel.t": (12, 6),
    "libxt_connlimit.t": (0, 15),
    "libxt_connmark.t": (16, 12),
    "libxt_conntrack.t": (114, 33),
    "libxt_cpu.t": (9, 6),
    "libxt_dccp.t": (81, 18),
    "libxt_dscp.t": (15, 12),
    "libxt_ecn.t": (9, 3),
    "libxt_esp.t": (33, 9),
    "libxt_hashlimit.t": (72, 9),
    "libxt_helper.t": (3, 3),
    "libxt_ipcomp.t": (16, 2),
    "libxt_iprange.t": (0, 3),
    "libxt_ipvs.t": (48, 0),
    "libxt_length.t": (24, 12),
    "libxt_limit.t": (15, 0),
    "libxt_mac.t": (2, 6),
    "libxt_mark.t": (12, 9),
    "libxt_multiport.t": (39, 18),
    "libxt_nfacct.t": (0, 3),
    "libxt_owner.t": (18, 7),
    "libxt_physdev.t": (6, 0),
    "libxt_pkttype.t": (9, 6),
    "libxt_policy.t": (6, 2),
    "libxt_quota.t": (12, 6),
    "libxt_rateest.t": (33, 0),
    "libxt_recent.t": (0, 3),
    "libxt_rpfilter.t": (2, 0),
    "libxt_sctp.t": (84, 12),
    "libxt_set.t": (0, 3),
    "libxt_socket.t": (12, 0),
    "libxt_standard.t": (16, 3),
    "libxt_state.t": (9, 6),
    "libxt_statistic.t": (6, 15),
    "libxt_string.t": (18, 12),
    "libxt_tcp.t": (99, 18),
    "libxt_tcpmss.t": (18, 9),
    "libxt_time.t": (9, 0),
    "libxt_tos.t": (30, 6),
    "libxt_u32.t": (3, 0),
    "libxt_udp.t": (84, 15),
}


@pytest.mark.skipif(not VECTORS.is_dir(), reason="shared corpus not present")
@pytest.mark.parametrize("name", [p.name for p in all_files()])
def test_vectors_floor(name: str) -> None:
    s = score_file(VECTORS / name)
    want_ok, want_fail = FLOORS.get(name, (s.ok_total, s.fail_total))
    assert s.ok_exact >= want_ok and s.fail_rejected >= want_fail, "\n".join(s.misses)


def main(argv: list[str]) -> None:
    rows = []
    floors = {}
    for p in all_files():
        s = score_file(p)
        rows.append((p.name, s))
        floors[p.name] = (s.ok_exact, s.fail_rejected)
    if "--floors" in argv:
        print("FLOORS: dict[str, tuple[int, int]] = {")
        for name, (a, b) in floors.items():
            print(f'    "{name}": ({a}, {b}),')
        print("}")
        return
    tot = Score()
    print("| file | OK printed exactly | FAIL rejected | external |")
    print("|---|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s.ok_exact}/{s.ok_total} | {s.fail_rejected}/{s.fail_total} | {s.external or ''} |")
        tot.ok_total += s.ok_total
        tot.ok_exact += s.ok_exact
        tot.fail_total += s.fail_total
        tot.fail_rejected += s.fail_rejected
        tot.external += s.external
    print(f"| **total** | {tot.ok_exact}/{tot.ok_total} | {tot.fail_rejected}/{tot.fail_total} | {tot.external} |")
    print("\n(counted per vector and chain; EXTERNAL lists the FAIL vectors that need host objects)")
    if "-v" in argv:
        for _, s in rows:
            for m in s.misses:
                print(m)


if __name__ == "__main__":
    main(sys.argv[1:])
