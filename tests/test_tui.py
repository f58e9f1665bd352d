"""`nftrace tui`: the debugger model (no textual) and the app driven key by key with textual's pilot.

Expected values come from the engine's own trace of the same packet (the
trace JSON) and from the dump, never from constants typed here: the TUI must
show what the trace says, where the trace says it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from nftrace.cli import build_parser, main, packet_dict
from nftrace.commands.tui import make_tracer
from nftrace.engine.packet import parse_flow
from nftrace.tui.model import BranchModel, TraceModel, flow_string

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "rulesets" / "kube-node"
CLUSTER_IP = "tcp 10.244.1.5:40000 > 10.96.0.10:53 iif cni0"
KUBELET = "tcp 192.168.50.11:41000 > 10.96.0.1:443 local"


def tracer_for(flow: str, rules: Path = KUBE) -> tuple[Any, Any, dict[str, Any]]:
    args = build_parser().parse_args(["tui", "--rules", str(rules), flow])
    rs, tracer = make_tracer(args)
    return rs, tracer, packet_dict(args)


# ---------------------------------------------------------------------- model (no textual)


def kube_flows() -> list[str]:
    out = []
    for line in (KUBE / "flows.txt").read_text().splitlines():
        flow = line.split("#", 1)[0].strip()
        if flow:
            out.append(flow)
    return out


def _linear(b: BranchModel, i: int, finish: bool) -> int:
    """The definition of n / f, by brute force: the first later step in this chain or shallower (n),
    strictly shallower (f), or in another table walk."""
    cur = b.positions[i]
    if cur.walk is None:
        return min(i + 1, b.end)
    for j in range(i + 1, len(b.positions)):
        p = b.positions[j]
        if p.walk != cur.walk or (p.depth < cur.depth if finish else p.depth <= cur.depth):
            return j
    return b.end


@pytest.mark.parametrize("flow", kube_flows())
def test_model_indexes_every_step_of_every_branch(flow: str) -> None:
    _, tracer, d = tracer_for(flow)
    doc = tracer(d)
    model = TraceModel(doc)
    assert len(model.branches) == len(doc["branches"])
    for b, raw in zip(model.branches, doc["branches"], strict=True):
        steps = raw["steps"]
        # start + one position per step + end, each step in order
        assert [p.step for p in b.positions[1:-1]] == steps
        assert b.positions[0].kind == "start" and b.positions[-1].kind == "end"
        for p in b.positions[1:-1]:
            s = p.step
            assert s is not None
            if s["kind"] in ("rule", "return"):
                v = b.visits[p.visit]  # type: ignore[index]
                assert (v.table, v.chain, v.hook) == (s["table"], s["chain"], s["hook"])
            if s["kind"] == "rule":
                v = b.visits[p.visit]  # type: ignore[index]
                assert v.rows[s["rule"]] == p.index
                # a jump puts the next step one level deeper, in the target chain
                if s.get("verdict") == "JUMP":
                    nxt = b.positions[p.index + 1]
                    assert nxt.depth == p.depth + 1
                    assert b.visits[nxt.visit].chain == s["target"]  # type: ignore[index]
            if s["kind"] == "policy":
                assert p.depth == 0
        for i in range(len(b.positions)):
            assert b.step_over(i) == _linear(b, i, finish=False)
            assert b.finish(i) == _linear(b, i, finish=True)
        # c: breakpoints on every third evaluated rule and on every other chain, checked by brute force
        evaluated = [(b.visits[p.visit].table, b.visits[p.visit].chain, p.step["rule"]) for p in b.positions
                     if p.kind == "rule" and p.visit is not None and p.step is not None]  # fmt: skip
        rules = set(evaluated[::3])
        chains = {(v.table, v.chain) for v in b.visits[::2]}
        for i in range(len(b.positions)):
            want = next((j for j in range(i + 1, len(b.positions)) if _hits(b, j, rules, chains)), None)
            assert b.find_break(i, rules, chains) == want
        assert b.find_break(0, set(), set()) is None
        # hook path: segments cover every position once, in order
        assert b.segments[0].first == 0 and b.segments[-1].last == b.end
        assert b.segments[-1].label == "result"


def _hits(b: BranchModel, j: int, rules: set[tuple[str, str, int]], chains: set[tuple[str, str]]) -> bool:
    p = b.positions[j]
    if p.visit is None:
        return False
    v = b.visits[p.visit]
    if v.entry == j and (v.table, v.chain) in chains:
        return True
    return p.kind == "rule" and p.step is not None and (v.table, v.chain, p.step["rule"]) in rules


def test_model_packet_state_follows_nat_route_and_mark_notes() -> None:
    _, tracer, d = tracer_for(KUBELET)
    doc = tracer(d)
    b = TraceModel(doc).branches[0]
    steps = doc["branches"][0]["steps"]
    dnat = next(s for s in steps if s["kind"] == "nat" and s["type"] == "DNAT")
    marks = [s for s in steps if s["kind"] == "rule" and s.get("note", "").startswith("mark ")]
    assert marks, "the kubelet flow goes through KUBE-MARK-MASQ"
    for p in b.positions[1:-1]:
        s = p.step
        assert s is not None
        if s is dnat:
            assert p.state.dst == dnat["after"] and "dst" in p.changed
            assert "DNAT" in p.state.ct.split()
            assert b.positions[p.index - 1].state.dst == dnat["before"]
        if s in marks:
            assert p.state.mark == int(s["note"].split(" -> ")[1].split()[0], 16) and "mark" in p.changed
        if s["kind"] == "route" and s["result"] in ("output", "reroute"):
            assert p.state.oif == s["oif"]
    end = b.positions[-1].state
    res = doc["branches"][0]["result"]["packet"]
    assert end.dst == f"{res['dst']}:{res['dport']}"
    # the DNAT rule knows what its nat step will do
    rule = next(p for p in b.positions if p.step and p.step.get("target") == "DNAT" and p.step.get("matched"))
    assert rule.pending_nat == f"{dnat['before']} -> {dnat['after']}"


@pytest.mark.parametrize("flow", [CLUSTER_IP, KUBELET, "icmp 10.244.1.3 > 10.96.0.10 iif cni0 state ESTABLISHED"])
def test_flow_string_round_trips(flow: str) -> None:
    d = parse_flow(flow)
    again = parse_flow(flow_string(d))
    assert again == d


# ---------------------------------------------------------------------- pilot helpers


def run_app(app: Any, size: tuple[int, int], body: Callable[[Any, Any], Awaitable[None]]) -> None:
    async def go() -> None:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await body(app.debugger, pilot)

    asyncio.run(go())


def text(widget: Any) -> str:
    r = widget.render()
    return str(r.plain if hasattr(r, "plain") else r)


def current_hook(screen: Any) -> str:
    from nftrace.tui.widgets import HookPath

    c = screen.query_one(HookPath).render()
    spans = [s for s in c.spans if "reverse" in str(s.style)]
    assert len(spans) == 1
    return str(c.plain[spans[0].start : spans[0].end])


def stepbar(screen: Any) -> str:
    return text(screen.query_one("#stepbar"))


def packet(screen: Any) -> str:
    from nftrace.tui.widgets import PacketPanel

    return text(screen.query_one(PacketPanel))


def view(screen: Any) -> Any:
    from nftrace.tui.widgets import RulesView

    return screen.query_one(RulesView)


async def press_until(pilot: Any, screen: Any, key: str, cond: Callable[[], bool], limit: int = 200) -> int:
    for n in range(limit):
        if cond():
            return n
        await pilot.press(key)
    raise AssertionError(f"pressing {key!r} {limit} times never reached the condition; at: {stepbar(screen)}")


def make_app(flow: str = CLUSTER_IP) -> tuple[Any, dict[str, Any]]:
    pytest.importorskip("textual")
    from nftrace.tui.app import TraceApp

    rs, tracer, d = tracer_for(flow)
    doc = tracer(d)
    return TraceApp(rs, tracer, d, doc), doc


def nat_after(doc: dict[str, Any], branch: int = 0) -> dict[str, Any]:
    return next(s for s in doc["branches"][branch]["steps"] if s["kind"] == "nat")


# ---------------------------------------------------------------------- pilot tests


@pytest.mark.parametrize("size", [(80, 24), (200, 60)])
def test_start_screen_fits(size: tuple[int, int]) -> None:
    app, doc = make_app()

    async def body(scr: Any, pilot: Any) -> None:
        assert stepbar(scr).startswith("0/")
        assert current_hook(scr) == "PREROUTING"
        p = packet(scr)
        assert f"dst {doc['packet']['dst']}:{doc['packet']['dport']}" in p
        assert "in cni0" in p
        for sel in ("#title", "#path", "#chain-title", "#rules", "#detail", "#packet", "#branches", "#stepbar"):
            region = scr.query_one(sel).region
            assert region.width > 0 and region.height > 0, sel
            assert region.right <= size[0] and region.bottom <= size[1], sel
        assert view(scr).region.height >= 5
        title = text(scr.query_one("#title"))
        assert f"branch 1/{len(doc['branches'])}" in title

    run_app(app, size, body)


def test_step_to_the_dnat_rule_and_its_rewrite() -> None:
    app, doc = make_app()
    nat = nat_after(doc)

    async def body(scr: Any, pilot: Any) -> None:
        v = view(scr)
        await press_until(pilot, scr, "s", lambda: "(DNAT)" in stepbar(scr))
        # the current chain is the endpoint chain; its current row is the DNAT rule, shown as matched
        assert v.rows.name.startswith("KUBE-SEP-") and v.rows.table == "nat"
        info = v.info(v.current)
        assert info.kind == "rule" and info.status.endswith("DNAT") and info.state == "match"
        assert f"--to-destination {nat['after']}" in info.text
        # earlier rules of the chain show why they did not match
        misses = [v.info(r) for r in range(1, v.current)]
        assert all(m.state == "miss" and m.why.startswith("no: ") for m in misses)
        assert f"nat \u21e2 {nat['after']}" in packet(scr)
        assert current_hook(scr) == "PREROUTING"
        await pilot.press("s")
        assert "DNAT in nat PREROUTING" in stepbar(scr)
        p = packet(scr)
        assert f"dst {nat['after']}" in p and f"was dst {nat['before']}" in p
        assert "ct NEW DNAT" in p
        assert v.current is None  # a nat step is not a rule of the chain shown
        await press_until(pilot, scr, "s", lambda: stepbar(scr).split(" ", 1)[1].startswith("routing"))
        assert current_hook(scr) == "routing"
        route = next(s for s in doc["branches"][0]["steps"] if s["kind"] == "route")
        assert f"out {route['oif']}" in packet(scr)

    run_app(app, (120, 40), body)


def test_search_breakpoints_continue_step_finish_back_next() -> None:
    app, doc = make_app()
    rs = app.ruleset
    fwd = rs.chain("filter", "FORWARD")
    target = next(i for i, r in enumerate(fwd.rules, 1) if "forwarding rules" in r.text)
    jumped = fwd.rules[target - 1].jump
    assert jumped is not None

    async def body(scr: Any, pilot: Any) -> None:
        v = view(scr)
        await pilot.press("slash", *"forwarding rules", "enter")
        assert (v.rows.table, v.rows.name, v.cursor) == ("filter", "FORWARD", target)
        assert "browsing" in text(scr.query_one("#chain-title"))
        await pilot.press("x")
        assert target in v.bp_rows and "breakpoint set" in stepbar(scr)
        await pilot.press("c")
        assert f"breakpoint: filter FORWARD #{target}" in stepbar(scr)
        assert (v.rows.name, v.current) == ("FORWARD", target)
        assert current_hook(scr) == "FORWARD"
        # s: into the jump
        await pilot.press("s")
        assert v.rows.name == jumped and v.current == 1
        child_rules = len(rs.chain("filter", jumped).rules)
        # f: out of the chain, to the caller's next rule
        await pilot.press("f")
        assert (v.rows.name, v.current) == ("FORWARD", target + 1)
        # b: one step back is the end of the child chain (its return)
        await pilot.press("b")
        assert v.rows.name == jumped and v.current == child_rules + 1 and v.info(v.current).kind == "tail"
        await pilot.press("s")
        assert (v.rows.name, v.current) == ("FORWARD", target + 1)
        # n: over the jump of this rule, to the next rule of FORWARD
        await pilot.press("n")
        assert (v.rows.name, v.current) == ("FORWARD", target + 2)
        # a breakpoint on entering the chain: x on its first row
        await pilot.press("home", "x")
        assert v.bp_chain and "entering filter FORWARD" in stepbar(scr)
        await press_until(pilot, scr, "b", lambda: stepbar(scr).startswith("0/"))
        await pilot.press("b")
        assert "at the start" in stepbar(scr)
        await pilot.press("c")
        assert "breakpoint: entering filter FORWARD" in stepbar(scr)
        assert v.rows.name == "FORWARD" and v.current == 1
        await pilot.press("c")
        assert f"breakpoint: filter FORWARD #{target}" in stepbar(scr)
        # clear both; c runs to the end
        await pilot.press("x", "home", "x")
        assert not v.bp_rows and not v.bp_chain
        await pilot.press("c")
        assert "ran to the end" in stepbar(scr) and scr.pos == scr.branch.end
        await pilot.press("s")
        assert "at the end" in stepbar(scr)

    run_app(app, (100, 30), body)


def test_branches_tab_shift_tab_and_click() -> None:
    app, doc = make_app()
    assert len(doc["branches"]) == 2
    ends = [b["result"]["packet"] for b in doc["branches"]]

    async def body(scr: Any, pilot: Any) -> None:
        await pilot.press("c")  # no breakpoint: to the end of branch 1
        assert f"dst {ends[0]['dst']}:{ends[0]['dport']}" in packet(scr)
        await pilot.press("tab")
        assert "branch 2/2" in text(scr.query_one("#title"))
        assert "differs from step" in stepbar(scr)
        # moved back to where the branches part: the statistic rule, evaluated differently
        cond = doc["branches"][1]["conditions"][0]
        chain, rule = cond.split(":")[0].split()[1], int(cond.split(":")[0].split()[-1])
        v = view(scr)
        assert (v.rows.name, v.current) == (chain, rule)
        await pilot.press("c")
        assert f"dst {ends[1]['dst']}:{ends[1]['dport']}" in packet(scr)
        await pilot.press("shift+tab")
        assert "branch 1/2" in text(scr.query_one("#title"))
        # mouse: click the second branch in the list
        ol = scr.query_one("#branches")
        y = next(y for y in range(ol.content_region.height) if ol.render_line(y).text.strip().startswith("2 p="))
        await pilot.click("#branches", offset=(3, y + 1))
        assert "branch 2/2" in text(scr.query_one("#title"))
        assert ol.highlighted == 1

    run_app(app, (120, 40), body)


def test_search_jumps_between_matches_and_highlights() -> None:
    app, _ = make_app()

    async def body(scr: Any, pilot: Any) -> None:
        v = view(scr)
        await press_until(pilot, scr, "s", lambda: v.rows is not None and v.rows.name == "KUBE-SERVICES")
        chain = v.rows.chain
        hits = [i for i, r in enumerate(chain.rules, 1) if "kube-dns" in r.text]
        assert len(hits) >= 2
        v.set_cursor(0)
        await pilot.press("slash", *"kube-dns", "enter")
        assert v.cursor == hits[0] and f"match 1/{len(hits)}" in stepbar(scr)
        await pilot.press("slash", "enter")  # the query is kept: enter finds the next one
        assert v.cursor == hits[1] and f"match 2/{len(hits)}" in stepbar(scr)
        # the match is highlighted in the row
        strip = v.render_line(v.cursor - round(v.scroll_y))
        found = v.get_component_rich_style("rules--found")
        assert any(seg.text.lower() == "kube-dns" and seg.style.bgcolor == found.bgcolor for seg in strip)
        # esc closes the box without searching
        await pilot.press("slash", "escape")
        assert not scr.query_one("#search").has_class("-open")
        await pilot.press("slash", *"no-such-rule-anywhere", "enter")
        assert "no rule contains it" in stepbar(scr)

    run_app(app, (120, 40), body)


def test_raw_rule_shows_file_and_line() -> None:
    from nftrace.tui.app import RawRuleScreen

    app, doc = make_app()
    lines = (KUBE / "iptables.rules").read_text().splitlines()

    async def body(scr: Any, pilot: Any) -> None:
        await press_until(pilot, scr, "s", lambda: "(DNAT)" in stepbar(scr))
        v = view(scr)
        rule = v.rows.chain.rules[v.current - 1]
        await pilot.press("r")
        assert isinstance(app.screen, RawRuleScreen)
        body_text = text(app.screen.query_one("#raw"))
        where = body_text.split()[0]
        file, line = where.rsplit(":", 1)
        assert Path(file).resolve() == (KUBE / "iptables.rules").resolve()
        assert lines[int(line) - 1].endswith(rule.text)  # the dump's own line
        assert rule.text in body_text
        await pilot.press("escape")
        assert app.screen is scr
        await pilot.press("home", "r")  # not on a rule
        assert "cursor on a rule" in stepbar(scr)

    run_app(app, (120, 40), body)


def test_edit_the_packet_and_trace_again() -> None:
    from nftrace.tui.app import EditScreen

    app, _ = make_app()
    new_flow = "tcp 10.244.1.5:40000 > 10.96.0.1:443 iif cni0"
    _, tracer, d = tracer_for(new_flow)
    expected = nat_after(tracer(d))

    async def body(scr: Any, pilot: Any) -> None:
        await pilot.press("s", "s", "e")
        assert isinstance(app.screen, EditScreen)
        from textual.widgets import Input

        box = app.screen.query_one("#edit-flow", Input)
        assert parse_flow(box.value) == parse_flow(CLUSTER_IP)
        # bad input: one line, the form stays open
        await pilot.press("ctrl+u", *"tcp nonsense", "enter")
        assert isinstance(app.screen, EditScreen)
        assert "cannot read flow" in text(app.screen.query_one("#edit-error"))
        await pilot.press("ctrl+u", *new_flow, "enter")
        assert app.screen is scr
        assert "10.96.0.1:443" in text(scr.query_one("#title"))
        assert stepbar(scr).startswith("0/") and "traced again" in stepbar(scr)
        await press_until(pilot, scr, "s", lambda: "DNAT in nat PREROUTING" in stepbar(scr))
        assert f"dst {expected['after']}" in packet(scr)
        # esc cancels an edit
        await pilot.press("e", "ctrl+u", *"udp 1.2.3.4:5 > 6.7.8.9:53 iif cni0", "escape")
        assert app.screen is scr and "10.96.0.1:443" in text(scr.query_one("#title"))

    run_app(app, (120, 40), body)


def test_mouse_on_rules_and_path() -> None:
    app, doc = make_app()

    async def body(scr: Any, pilot: Any) -> None:
        v = view(scr)
        await press_until(pilot, scr, "s", lambda: v.rows is not None and v.rows.name == "KUBE-SERVICES")
        # click a rule evaluated later in this pass: the cursor goes there; a second click goes to its step
        later = next(r for r in range(1, v.rows.count - 1) if v.info(r).state == "pending")
        y = later - round(v.scroll_y)
        await pilot.click(v, offset=(20, y))
        assert v.cursor == later and v.current != later
        assert f"#{later} " in text(scr.query_one("#detail"))
        await pilot.click(v, offset=(20, y))
        assert v.current == later and f"KUBE-SERVICES #{later}" in stepbar(scr)
        # click FORWARD on the hook path
        path = scr.query_one("#path")
        plain = text(path)
        x = plain.index("FORWARD") + 1  # padding 0 1
        await pilot.click("#path", offset=(x + 1, 0))
        assert current_hook(scr) == "FORWARD"
        first_fwd = next(i for i, s in enumerate(doc["branches"][0]["steps"], 1) if s.get("hook") == "FORWARD")
        assert scr.pos == first_fwd

    run_app(app, (120, 40), body)


def test_wide_terminal_shows_why_column() -> None:
    app, _ = make_app()

    async def body(scr: Any, pilot: Any) -> None:
        v = view(scr)
        await press_until(pilot, scr, "s", lambda: v.rows is not None and v.info(v.current or 0).state == "miss")
        line = v.render_line(v.current - round(v.scroll_y)).text
        assert v.info(v.current).why[4:20] in line  # "no: <match>..." next to the rule

    run_app(app, (220, 50), body)


def test_help_and_quit() -> None:
    from nftrace.tui.app import HelpScreen

    app, doc = make_app()

    async def body(scr: Any, pilot: Any) -> None:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        help_text = text(app.screen.query_one("#help"))
        for word in ("step", "next", "finish", "back", "continue", "breakpoint", "branch", "search", "raw", "edit"):
            assert word in help_text
        for w in doc["warnings"]:
            assert w in help_text
        await pilot.press("escape")
        assert app.screen is scr
        assert app.return_code is None
        await pilot.press("q")
        assert app.return_code == 0

    run_app(app, (100, 40), body)


def test_local_packet_path_starts_with_routing() -> None:
    app, doc = make_app(KUBELET)

    async def body(scr: Any, pilot: Any) -> None:
        assert current_hook(scr) == "routing"
        assert "local process" in stepbar(scr)
        await press_until(pilot, scr, "s", lambda: "mark 0x0 -> 0x4000" in stepbar(scr))
        p = packet(scr)
        assert "mark 0x4000" in p and "was mark 0x0" in p
        assert current_hook(scr) == "OUTPUT"

    run_app(app, (80, 24), body)


ADDRS = """\
1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN group default qlen 1000
    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00
    inet 127.0.0.1/8 scope host lo
2: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc fq_codel state UP group default qlen 1000
    link/ether 52:54:00:00:00:01 brd ff:ff:ff:ff:ff:ff
    inet 10.0.0.1/24 brd 10.0.0.255 scope global eth0
3: eth1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc fq_codel state UP group default qlen 1000
    link/ether 52:54:00:00:00:02 brd ff:ff:ff:ff:ff:ff
    inet 10.0.1.1/24 brd 10.0.1.255 scope global eth1
"""


def test_a_chain_the_dump_does_not_declare(tmp_path: Path) -> None:
    """x_tables (legacy) has every built-in chain of a table; the dump declares only INPUT."""
    pytest.importorskip("textual")
    from nftrace.ruleset.parser import parse_rules
    from nftrace.tui.app import TraceApp

    dump = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -j ACCEPT\nCOMMIT\n"
    (tmp_path / "iptables.rules").write_text(dump)
    (tmp_path / "addrs.txt").write_text(ADDRS)
    (tmp_path / "sysctl.txt").write_text("net.ipv4.ip_forward=1\n")
    flow = "tcp 10.0.0.2:1000 > 10.0.1.2:80 iif eth0"
    args = build_parser().parse_args(["tui", "--rules", str(tmp_path), "--backend", "legacy", flow])
    _, tracer = make_tracer(args)
    d = packet_dict(args)
    doc = tracer(d)
    policy = next(s for s in doc["branches"][0]["steps"] if s["kind"] == "policy" and s["chain"] == "FORWARD")
    app = TraceApp(parse_rules(dump, "dump"), tracer, d, doc)  # the dump's own model: no FORWARD chain

    async def body(scr: Any, pilot: Any) -> None:
        v = view(scr)
        await press_until(pilot, scr, "s", lambda: "FORWARD policy" in stepbar(scr))
        assert (v.rows.table, v.rows.name) == ("filter", "FORWARD")
        assert v.rows.count == 2 and v.current == 1
        assert v.info(1).kind == "tail" and v.info(1).status == f"\u2713 {policy['verdict']}"

    run_app(app, (100, 30), body)


def test_a_branch_that_never_reaches_a_table(tmp_path: Path) -> None:
    """An unroutable local packet: one route step, no chain; every key still answers."""
    pytest.importorskip("textual")
    from nftrace.tui.app import TraceApp

    (tmp_path / "iptables.rules").write_text("*filter\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j ACCEPT\nCOMMIT\n")
    (tmp_path / "addrs.txt").write_text(ADDRS)
    rs, tracer, d = tracer_for("tcp 10.0.0.1:1000 > 203.0.113.9:80 local", tmp_path)
    doc = tracer(d)
    app = TraceApp(rs, tracer, d, doc)
    steps = doc["branches"][0]["steps"]
    assert steps and all(s["kind"] not in ("rule", "policy", "return") for s in steps)

    async def body(scr: Any, pilot: Any) -> None:
        assert "no chain" in text(scr.query_one("#chain-title"))
        assert view(scr).rows is None
        for key in ("s", "n", "f", "b", "c", "x", "r", "tab"):
            await pilot.press(key)
        assert app.screen is scr
        assert "one branch" in stepbar(scr)
        await pilot.press("c")
        assert stepbar(scr).startswith(f"{len(steps) + 1}/")
        assert current_hook(scr).startswith(doc["branches"][0]["result"]["verdict"])

    run_app(app, (80, 24), body)


def test_edit_keeps_what_a_flow_string_cannot_say() -> None:
    pytest.importorskip("textual")
    from nftrace.tui.app import TraceApp

    seen: list[dict[str, Any]] = []

    def tracer(d: dict[str, Any]) -> dict[str, Any]:
        seen.append(d)
        return {"schema": "nftrace.trace/1", "packet": {}, "origin": "local", "branches": [], "warnings": []}

    rs, _, _ = tracer_for(KUBELET)
    start = {"proto": "tcp", "dst": "10.96.0.1", "dport": 443, "origin": "local", "uid": 1000, "ttl": 9}
    app = TraceApp(rs, tracer, start, doc={"branches": []})
    flow = flow_string(start)
    assert flow.split()[1] == "-"  # no source: the form says so, and accepts it back
    app.retrace(flow)
    assert seen[-1]["src"] is None and seen[-1]["uid"] == 1000 and seen[-1]["ttl"] == 9
    assert (seen[-1]["dst"], seen[-1]["dport"], seen[-1]["origin"]) == ("10.96.0.1", 443, "local")


# ---------------------------------------------------------------------- the command


def test_command_reports_bad_input_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tui", "--rules", str(KUBE), "tcp nonsense"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read flow" in err


def test_command_needs_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tui", "--rules", str(KUBE), CLUSTER_IP]) == 2  # pytest's stdout is not a TTY
    err = capsys.readouterr().err
    assert "needs a terminal" in err and err.count("\n") == 1


def test_cli_does_not_import_textual() -> None:
    code = "import sys, nftrace.cli as c; c.build_parser(); print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"
