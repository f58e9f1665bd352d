"""`-j DROP` in the nat table: iptables refuses it, so a dump holding it is not one iptables-save
wrote or iptables-restore would load.

What iptables 1.8.9 does (both backends, iptables and ip6tables, checked in a namespace by
test_iptables_restore_refuses_drop_in_nat): `-j DROP` or `-g DROP` in any chain of the nat table
(built-in or user) stops iptables-restore with exit status 2 and

    The "nat" table is not intended for filtering, the use of DROP is therefore inhibited.
    Error occurred at line: N

(the check is in the rule parser, so `iptables -t nat -A ... -j DROP` says the same).  A DROP
*policy* of a nat chain (`:PREROUTING DROP [0:0]`) is loaded without a word, and iptables-save
prints it back.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from nftrace.errors import InputError
from nftrace.ruleset.parser import parse_rules

HEAD = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
KERNEL_SAYS = 'The "nat" table is not intended for filtering, the use of DROP is therefore inhibited.'


def dump(rule: str, family: str = "ipv4", user_chain: bool = False) -> str:
    """A nat table whose line 6 (7 with a user chain) is `rule`."""
    match = "-s 10.0.0.0/8" if family == "ipv4" else "-s 2001:db8::/32"
    return HEAD + (":X - [0:0]\n" if user_chain else "") + f"{rule.format(match=match)}\nCOMMIT\n"


CASES = [
    ("-A PREROUTING {match} -j DROP", False),
    ("-A INPUT {match} -j DROP", False),
    ("-A OUTPUT {match} -j DROP", False),
    ("-A POSTROUTING {match} -j DROP", False),
    ("-A X {match} -j DROP", True),
    ("-I PREROUTING 1 -p tcp -j DROP", False),
]


# ------------------------------------------------------------------ what the parser must do


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize(("rule", "user_chain"), CASES)
def test_the_parser_refuses_drop_in_nat(rule: str, user_chain: bool, family: str) -> None:
    with pytest.raises(InputError) as e:
        parse_rules(dump(rule, family, user_chain), "nat.rules", family=family)
    assert e.value.file == "nat.rules" and e.value.line == (7 if user_chain else 6)
    assert "nat" in e.value.message and "DROP" in e.value.message


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_goto_drop_in_nat_is_refused(family: str) -> None:
    """-g DROP: iptables gives the same message; the parser already refuses it (no chain DROP)."""
    with pytest.raises(InputError) as e:
        parse_rules(dump("-A PREROUTING {match} -g DROP", family), "nat.rules", family=family)
    assert e.value.line == 6


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_a_drop_policy_in_nat_is_loaded(family: str) -> None:
    rs = parse_rules(HEAD.replace(":OUTPUT ACCEPT", ":OUTPUT DROP") + "COMMIT\n", "nat.rules", family=family)
    assert rs.tables["nat"].chains["OUTPUT"].policy == "DROP"


@pytest.mark.parametrize(("table", "chain"), [("filter", "INPUT"), ("mangle", "PREROUTING"), ("raw", "PREROUTING")])
def test_drop_in_the_other_tables_is_loaded(table: str, chain: str) -> None:
    rs = parse_rules(f"*{table}\n:{chain} ACCEPT [0:0]\n-A {chain} -j DROP\nCOMMIT\n", "t.rules")
    assert [r.target_name for r in rs.tables[table].chains[chain].rules] == ["DROP"]


# ------------------------------------------------------------------ what iptables-restore does


@pytest.fixture
def netns() -> Iterator[str]:
    import os

    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and `ip netns`")
    name = f"nft-natdrop-{secrets.token_hex(4)}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True)


def restore(ns: str, tool: str, text: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    return subprocess.run(["ip", "netns", "exec", ns, tool], input=text, capture_output=True, text=True, timeout=60)


TOOLS = [
    ("iptables-nft", "ipv4"),
    ("iptables-legacy", "ipv4"),
    ("ip6tables-nft", "ipv6"),
    ("ip6tables-legacy", "ipv6"),
]


@pytest.mark.kernel
@pytest.mark.parametrize(("tool", "family"), TOOLS)
def test_iptables_restore_refuses_drop_in_nat(netns: str, tool: str, family: str) -> None:
    for rule, user_chain in [*CASES, ("-A PREROUTING {match} -g DROP", False)]:
        p = restore(netns, f"{tool}-restore", dump(rule, family, user_chain))
        assert p.returncode == 2, (rule, p.returncode, p.stderr)
        assert KERNEL_SAYS in p.stderr, p.stderr
        assert f"Error occurred at line: {7 if user_chain else 6}" in p.stderr, p.stderr
    # the same rule with ACCEPT is loaded: it is DROP that is refused
    ok = restore(netns, f"{tool}-restore", dump("-A PREROUTING {match} -j ACCEPT", family))
    assert ok.returncode == 0, ok.stderr


@pytest.mark.kernel
@pytest.mark.parametrize(("tool", "family"), TOOLS)
def test_iptables_restore_loads_a_drop_policy_in_nat(netns: str, tool: str, family: str) -> None:
    text = HEAD.replace(":OUTPUT ACCEPT", ":OUTPUT DROP") + "COMMIT\n"
    p = restore(netns, f"{tool}-restore", text)
    assert p.returncode == 0, p.stderr
    saved = subprocess.run(
        ["ip", "netns", "exec", netns, f"{tool}-save", "-t", "nat"], capture_output=True, text=True, timeout=60
    )
    assert ":OUTPUT DROP [0:0]" in saved.stdout.splitlines(), saved.stdout
    rs = parse_rules(text, "nat.rules", family=family)
    assert rs.tables["nat"].chains["OUTPUT"].policy == "DROP"


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_a_drop_policy_set_by_a_command_in_nat_is_refused(family: str) -> None:
    """`-P OUTPUT DROP` goes through iptables' command parser, which refuses DROP in nat (checked
    with iptables-restore and iptables-legacy-restore 1.8.9: exit 2, the message above), while
    `:OUTPUT DROP` is a declaration that it loads."""
    with pytest.raises(InputError) as e:
        parse_rules(HEAD + "-P OUTPUT DROP\nCOMMIT\n", "nat.rules", family=family)
    assert e.value.line == 6 and "nat" in e.value.message


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize(("table", "chain"), [("nat", "INPUT"), ("nat", "OUTPUT"), ("mangle", "INPUT"), ("raw", "OUTPUT"), ("security", "INPUT"), ("mangle", "FORWARD")])  # fmt: skip
def test_reject_outside_filter_is_refused(table: str, chain: str, family: str) -> None:
    """The kernel registers REJECT for the filter table only: iptables-restore 1.8.9 fails on these
    (nft: exit 4 'RULE_APPEND failed (Invalid argument)'; legacy: exit 1), ip6tables too."""
    with pytest.raises(InputError) as e:
        parse_rules(f"*{table}\n:{chain} ACCEPT [0:0]\n-A {chain} -j REJECT\nCOMMIT\n", "t.rules", family=family)
    assert e.value.line == 3 and "REJECT" in e.value.message and "filter" in e.value.message


@pytest.mark.kernel
@pytest.mark.parametrize(("tool", "family"), TOOLS)
def test_iptables_restore_agrees_on_policy_commands_and_reject(netns: str, tool: str, family: str) -> None:
    """The two tests above, against iptables-restore itself: what it refuses, the parser refuses."""
    p = restore(netns, f"{tool}-restore", HEAD + "-P OUTPUT DROP\nCOMMIT\n")
    assert p.returncode == 2 and KERNEL_SAYS in p.stderr, p.stderr
    for table, chain in [("nat", "INPUT"), ("mangle", "INPUT"), ("raw", "OUTPUT"), ("security", "INPUT")]:
        p = restore(netns, f"{tool}-restore", f"*{table}\n:{chain} ACCEPT [0:0]\n-A {chain} -j REJECT\nCOMMIT\n")
        assert p.returncode != 0, (table, chain, p.stdout)
    p = restore(netns, f"{tool}-restore", "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j REJECT\nCOMMIT\n")
    assert p.returncode == 0, p.stderr
    parse_rules("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j REJECT\nCOMMIT\n", "t.rules", family=family)
