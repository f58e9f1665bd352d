"""The address a DNAT/SNAT to an address range picks (nftrace/engine/natsel.py), without a kernel.

The kernel-measured vectors below were read from conntrack on kernel 6.18 (x86-64) by
tests/test_nat_range_kernel.py's flows, which re-measure the same claims on every run with root;
the rest checks how the engine uses the choice: no warning, the note, the tuple it hashes (the
destination after DNAT for SNAT, the zone of the first CT rule), SNAT keeping a source that is
already inside the range, and --random/--persistent.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import pytest

from nftrace.engine import natsel
from nftrace.engine.packet import packet_from_dict
from nftrace.engine.pipeline import Engine
from nftrace.ruleset.parser import parse_rules
from tests.test_nat_range_kernel import range_host

# (lo, hi, manip, src, dst, persistent, the kernel's choice), from conntrack's reply tuples
KERNEL_VECTORS = [
    ("10.0.0.1", "10.0.0.5", "dst", "198.51.68.146", "192.168.50.10", False, "10.0.0.2"),
    ("10.0.0.1", "10.0.0.5", "dst", "198.51.194.202", "192.168.50.10", False, "10.0.0.3"),
    ("10.0.0.1", "10.0.0.5", "dst", "198.51.117.152", "192.168.50.10", False, "10.0.0.5"),
    ("10.0.0.1", "10.0.0.5", "dst", "198.51.162.8", "192.168.50.10", False, "10.0.0.1"),
    ("10.0.0.1", "10.0.0.5", "dst", "198.51.14.136", "192.168.50.10", False, "10.0.0.4"),
    ("10.0.0.1", "10.0.0.5", "dst", "198.51.60.127", "192.168.50.10", True, "10.0.0.3"),
    ("10.0.0.1", "10.0.0.5", "dst", "198.51.249.8", "192.168.50.10", True, "10.0.0.2"),
    ("10.0.0.1", "10.0.0.5", "dst", "198.51.4.241", "192.168.50.10", True, "10.0.0.4"),
    ("192.168.50.100", "192.168.50.104", "src", "10.0.0.244", "203.0.28.124", False, "192.168.50.100"),
    ("192.168.50.100", "192.168.50.104", "src", "10.0.0.94", "203.0.102.241", False, "192.168.50.102"),
    ("192.168.50.100", "192.168.50.104", "src", "10.0.0.107", "203.0.177.1", False, "192.168.50.104"),
    ("192.168.50.100", "192.168.50.104", "src", "10.0.0.139", "203.0.169.118", False, "192.168.50.101"),
    ("fd00:1::1", "fd00:1::5", "dst", "2001:db8:99:0:4164:d839:9f76:7c45", "2001:db8:50::10", False, "fd00:1::2"),
    ("fd00:1::1", "fd00:1::5", "dst", "2001:db8:99:0:3fc1:ea36:f17f:d374", "2001:db8:50::10", False, "fd00:1::4"),
    ("fd00:1::1", "fd00:1::5", "dst", "2001:db8:99:0:cb91:ce37:5bc8:fbbc", "2001:db8:50::10", True, "fd00:1::5"),
    ("fd00:1::1", "fd00:1::5", "dst", "2001:db8:99:0:e6a1:6a3b:d46:4138", "2001:db8:50::10", True, "fd00:1::1"),
    # a range across a 32-bit word boundary: past a word below the maximum the rest is free
    ("fd00:1::ffff:fffd", "fd00:1::1:0:2", "dst", "2001:db8:99:0:d76d:4330:f144:6bea", "2001:db8:50::10", False,
     "fd00:1::15ac:4694"),
    ("fd00:1::ffff:fffd", "fd00:1::1:0:2", "dst", "2001:db8:99:0:de11:cc9d:ea95:9c21", "2001:db8:50::10", False,
     "fd00:1::1:0:1"),
    ("2001:db8:50::100", "2001:db8:50::104", "src", "fd00:1::a6eb:8c9f", "2001:db8:99:0:87b0:b125:ec1d:7da0", False,
     "2001:db8:50::102"),
    ("2001:db8:50::100", "2001:db8:50::104", "src", "fd00:1::63b2:29f2", "2001:db8:99:0:c30d:8b76:28db:d25e", False,
     "2001:db8:50::100"),
    ("2001:db8:50::100", "2001:db8:50::104", "src", "fd00:1::de52:7101", "2001:db8:99:0:92ed:cf45:1a1a:fe87", True,
     "2001:db8:50::101"),
]  # fmt: skip


@pytest.mark.parametrize(("lo", "hi", "manip", "src", "dst", "persistent", "kernel"), KERNEL_VECTORS)
def test_kernel_measured_choices(
    lo: str, hi: str, manip: str, src: str, dst: str, persistent: bool, kernel: str
) -> None:
    got = natsel.best_ip(lo, hi, src, dst, manip, persistent)
    assert ipaddress.ip_address(got) == ipaddress.ip_address(kernel)


def test_jhash2_of_no_words_is_its_initial_state() -> None:
    # lookup3 hashword()/jhash2(): nothing to mix, c = 0xdeadbeef + (0 << 2) + initval
    assert natsel.jhash2([], 0) == 0xDEADBEEF
    assert natsel.jhash2([], 5) == 0xDEADBEEF + 5
    assert natsel.jhash2([], 0x30000000) == (0xDEADBEEF + 0x30000000) & 0xFFFFFFFF


def test_reciprocal_scale_maps_into_the_range() -> None:
    assert natsel.reciprocal_scale(0, 5) == 0
    assert natsel.reciprocal_scale(0xFFFFFFFF, 5) == 4
    assert natsel.reciprocal_scale(0x80000000, 4) == 2
    assert natsel.reciprocal_scale(0xFFFFFFFF, 1) == 0


def test_ipv4_choices_stay_in_the_range_and_use_all_of_it() -> None:
    rng = random.Random(7)
    seen = set()
    for _ in range(400):
        src = str(ipaddress.IPv4Address(rng.getrandbits(32)))
        dst = str(ipaddress.IPv4Address(rng.getrandbits(32)))
        a = ipaddress.IPv4Address(natsel.best_ip("10.0.0.250", "10.0.1.6", src, dst, rng.choice(["src", "dst"])))
        assert ipaddress.IPv4Address("10.0.0.250") <= a <= ipaddress.IPv4Address("10.0.1.6")
        seen.add(a)
    assert len(seen) == 13


def test_persistent_ignores_the_destination_and_the_zone() -> None:
    rng = random.Random(3)
    for _ in range(50):
        src = f"198.51.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        picks = {
            natsel.best_ip("10.0.0.1", "10.0.0.9", src, f"203.0.113.{d}", "dst", persistent=True, zone=z)
            for d in (1, 2, 77)
            for z in (0, 7)
        }
        assert len(picks) == 1


def test_snat_keeps_a_source_inside_the_range_unless_random() -> None:
    c = natsel.choose("10.1.0.1", "10.1.0.100", manip="src", src="10.1.0.42", dst="203.0.113.5")
    assert (c.addr, c.how) == ("10.1.0.42", "kept")
    # with a port range the port must be inside it too
    c = natsel.choose(
        "10.1.0.1",
        "10.1.0.100",
        manip="src",
        src="10.1.0.42",
        dst="203.0.113.5",
        sport=40000,
        port_lo=2000,
        port_hi=3000,
    )
    assert c.how == "hash"
    c = natsel.choose("10.1.0.1", "10.1.0.100", manip="src", src="10.1.0.42", dst="203.0.113.5", random=True)
    assert c.how == "hash"
    # DNAT has no such shortcut
    c = natsel.choose("10.1.0.1", "10.1.0.100", manip="dst", src="203.0.113.5", dst="10.1.0.42")
    assert c.how == "hash"


# ------------------------------------------------------------------ through the engine

NAT = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
{raw}
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 192.168.50.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1-10.0.0.5
-A PREROUTING -d 198.18.0.1/32 -p tcp -m tcp --dport 84 -j DNAT --to-destination 203.0.113.1-203.0.113.9
-A POSTROUTING -o eth0 -p tcp -m tcp --dport 84 -j SNAT --to-source 192.168.50.200-192.168.50.209
-A POSTROUTING -s 10.1.0.0/24 -o eth0 -p tcp -j SNAT --to-source 10.1.0.1-10.1.0.100
-A POSTROUTING -s 10.1.0.0/24 -o eth0 -p udp -j SNAT --to-source 10.1.0.1-10.1.0.100 --random
COMMIT
"""


def _trace(raw: str, **pkt: Any) -> dict[str, Any]:
    engine = Engine(parse_rules(NAT.format(raw=raw), "<nat>"), range_host())
    p, origin = packet_from_dict({"origin": "ingress", "proto": "tcp", "sport": 40000, **pkt})
    doc: dict[str, Any] = engine.trace(p, origin).to_json()
    assert len(doc["branches"]) == 1
    return doc


def _nat(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in doc["branches"][0]["steps"] if s["kind"] == "nat"]


def test_dnat_range_is_the_hash_choice_without_a_warning() -> None:
    for src in ("198.51.68.146", "198.51.117.152", "198.51.162.8"):
        doc = _trace("", src=src, dst="192.168.50.10", dport=80, iif="eth0")
        want = natsel.best_ip("10.0.0.1", "10.0.0.5", src, "192.168.50.10", "dst")
        assert doc["branches"][0]["result"]["packet"]["dst"] == want
        (step,) = _nat(doc)
        assert step["after"] == f"{want}:80" and "jhash2" in step["note"]
        assert not [w for w in doc["warnings"] if "range" in w or "assumed" in w]


def test_snat_hashes_the_destination_after_dnat() -> None:
    src = "10.0.0.77"
    doc = _trace("", src=src, dst="198.18.0.1", dport=84, iif="eth1")
    dnat, snat = _nat(doc)
    new_dst = dnat["after"].split(":")[0]
    assert snat["after"].split(":")[0] == natsel.best_ip("192.168.50.200", "192.168.50.209", src, new_dst, "src")


def test_snat_source_inside_the_range_is_kept_and_random_hashes() -> None:
    doc = _trace("", src="10.1.0.42", dst="203.0.113.5", dport=443, iif="eth2")
    (step,) = _nat(doc)
    assert step["before"] == step["after"] == "10.1.0.42:40000"
    assert "kept" in step["note"]
    doc = _trace("", proto="udp", src="10.1.0.42", dst="203.0.113.5", dport=53, iif="eth2")
    (step,) = _nat(doc)
    want = natsel.best_ip("10.1.0.1", "10.1.0.100", "10.1.0.42", "203.0.113.5", "src")
    assert step["after"].split(":")[0] == want and step.get("random_port") == "sport"


def test_zone_of_the_first_ct_rule_enters_the_hash() -> None:
    rng = random.Random(11)
    srcs = [f"198.51.{rng.randrange(256)}.{rng.randrange(1, 255)}" for _ in range(12)]
    for raw, zone in (
        ("-A PREROUTING -i eth0 -j CT --zone 7", 7),
        ("-A PREROUTING -i eth0 -j CT --zone-orig 300", 300),
        ("-A PREROUTING -i eth0 -j CT --ctevents new\n-A PREROUTING -i eth0 -j CT --zone 9", 0),
    ):
        for src in srcs:
            doc = _trace(raw, src=src, dst="192.168.50.10", dport=80, iif="eth0")
            want = natsel.best_ip("10.0.0.1", "10.0.0.5", src, "192.168.50.10", "dst", zone=zone)
            (step,) = _nat(doc)
            assert step["after"] == f"{want}:80", (raw, src)
            assert (f"zone {zone}" in step["note"]) == (zone != 0)
    # the zone changes some choices: the cases above are not all the zone-0 answer
    assert any(
        natsel.best_ip("10.0.0.1", "10.0.0.5", s, "192.168.50.10", "dst", zone=7)
        != natsel.best_ip("10.0.0.1", "10.0.0.5", s, "192.168.50.10", "dst")
        for s in srcs
    )


def test_zone_from_the_mark_is_a_warning() -> None:
    doc = _trace("-A PREROUTING -i eth0 -j CT --zone mark", src="198.51.1.1", dst="192.168.50.10", dport=80, iif="eth0")
    assert any("zone" in w and "mark" in w for w in doc["warnings"])
