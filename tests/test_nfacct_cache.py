"""A dump with `-m nfacct` goes through the parsed-ruleset cache (nftrace.ruleset.cache): stored,
then loaded back as the same model that traces the same.  (The nfacct match was an instance of a
class local to its parse function, which pickle cannot rebuild: such dumps were parsed every time.)"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from nftrace.engine.packet import packet_from_dict
from nftrace.engine.pipeline import Engine
from nftrace.host.model import HostContext, Link, Route
from nftrace.host.parse import derive_routes
from nftrace.ruleset import cache
from nftrace.ruleset.parser import parse_rules
from tests.test_index_cache import shape

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "rulesets" / "kube-node"  # two -m nfacct rules (KUBE-FORWARD, KUBE-NODEPORTS)

DUMP = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 22 -m nfacct --nfacct-name  ssh_in -j ACCEPT
-A FORWARD -m nfacct --nfacct-name  fwd_all
-A FORWARD -s 10.0.0.0/8 -j ACCEPT
COMMIT
"""


@pytest.fixture
def cdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv(cache.ENV, str(d))
    return d


def test_an_nfacct_match_pickles() -> None:
    rs = parse_rules(DUMP, "acct.rules")
    (m,) = [m for m in rs.tables["filter"].chains["FORWARD"].rules[0].matches]
    back = pickle.loads(pickle.dumps(m))
    assert type(back) is type(m) and back.canonical() == m.canonical() == "-m nfacct --nfacct-name  fwd_all"


def test_a_dump_with_nfacct_round_trips_through_the_cache(cdir: Path) -> None:
    first = parse_rules(DUMP, "acct.rules")
    assert cache.last_status == "stored"
    assert len(list(cdir.glob("*.pickle"))) == 1
    again = parse_rules(DUMP, "acct.rules")
    assert cache.last_status == "hit"
    assert again is not first and shape(again) == shape(first)
    links = [
        Link(1, "lo", kind="loopback", addresses=["127.0.0.1/8"]),
        Link(2, "eth0", kind="veth", addresses=["192.0.2.10/24"]),
        Link(3, "eth1", kind="veth", addresses=["10.0.0.1/8"]),
    ]
    routes = [*derive_routes(links), Route(dst="default", gateway="192.0.2.1", oif="eth0")]
    host = HostContext(links=links, routes=routes, sysctls={"net.ipv4.ip_forward": "1"}, empty=False)
    docs = []
    for rs in (first, again):
        for d in (
            {"proto": "tcp", "src": "192.0.2.1", "sport": 4000, "dst": "10.0.0.1", "dport": 22, "iif": "eth0"},
            {"proto": "udp", "src": "10.1.2.3", "sport": 4000, "dst": "198.51.100.9", "dport": 53, "iif": "eth1"},
        ):
            pkt, origin = packet_from_dict(d)
            docs.append(Engine(rs, host).trace(pkt, origin).to_json())
    assert docs[:2] == docs[2:]
    # the nfacct match always matches: it only counts
    ssh, fwd = docs[:2]
    assert [s["rule"] for s in ssh["branches"][0]["steps"] if s["kind"] == "rule"] == [1]
    assert [(s["rule"], s["verdict"]) for s in fwd["branches"][0]["steps"] if s["kind"] == "rule"] == [
        (1, "CONTINUE"),
        (2, "ACCEPT"),
    ]
    assert fwd["branches"][0]["result"]["disposition"] == "forwarded"


def test_kube_node_is_cached(cdir: Path) -> None:
    text = (KUBE / "iptables.rules").read_text()
    assert "-m nfacct" in text
    model = shape(parse_rules(text, "kube.rules"))
    assert cache.last_status == "stored"
    assert shape(parse_rules(text, "kube.rules")) == model
    assert cache.last_status == "hit"
