"""`nftrace tui` on a 100,000-rule chain: stepping must not rebuild the rules table.

The timings are measured and reported (printed, and recorded as junit
properties), not asserted: CI machines vary.  What is asserted is that the
debugger lands where the trace says, deep in the big chain.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nftrace.cli import build_parser, packet_dict
from nftrace.commands.tui import make_tracer

ROOT = Path(__file__).resolve().parents[1]
N = 100_000
HIT = 99_990


def _addr(i: int) -> str:
    return f"10.{96 + ((i >> 16) & 255)}.{(i >> 8) & 255}.{i & 255}"


def big_dump(n: int) -> str:
    """nat PREROUTING -> BIG: n one-service DNAT rules (kube-proxy's KUBE-SERVICES, flattened)."""
    out = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
        ":BIG - [0:0]",
        "-A PREROUTING -j BIG",
    ]
    for i in range(1, n + 1):
        out.append(
            f"-A BIG -d {_addr(i)}/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.1.{i % 250 + 2}:8080"
        )
    out += ["COMMIT", "*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", "COMMIT"]
    return "\n".join(out) + "\n"


def test_stepping_through_100k_rules(tmp_path: Path, record_property: Callable[[str, Any], None]) -> None:
    pytest.importorskip("textual")
    from nftrace.tui.app import TraceApp
    from nftrace.tui.widgets import RulesView

    host = tmp_path / "big"
    host.mkdir()
    for f in ("addrs.txt", "routes.txt", "sysctl.txt"):
        shutil.copy(ROOT / "rulesets" / "kube-node" / f, host / f)
    (host / "iptables.rules").write_text(big_dump(N))
    flow = f"tcp 10.244.1.5:40000 > {_addr(HIT)}:80 iif cni0"
    times: dict[str, float] = {}
    t = time.perf_counter()
    args = build_parser().parse_args(["tui", "--rules", str(host), flow])
    rs, tracer = make_tracer(args)
    times["load_s"] = time.perf_counter() - t
    d = packet_dict(args)
    t = time.perf_counter()
    doc = tracer(d)
    times["trace_s"] = time.perf_counter() - t
    assert len(doc["branches"][0]["steps"]) > N - 100  # every rule up to the hit is evaluated
    app = TraceApp(rs, tracer, d, doc)

    async def go() -> None:
        t0 = time.perf_counter()
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            times["startup_s"] = time.perf_counter() - t0
            scr = app.debugger
            view = scr.query_one(RulesView)

            async def cpu(*keys: str) -> float:
                c = time.process_time()
                await pilot.press(*keys)
                await pilot.pause()
                return (time.process_time() - c) * 1000

            base = statistics.median([await cpu("z") for _ in range(10)])  # an unbound key: pilot's own cost
            times["noop_cpu_ms"] = base
            s = [await cpu("s") for _ in range(20)]
            assert view.rows is not None and view.rows.name == "BIG" and view.current == 18
            assert view.virtual_size.height == N + 2
            # search the hit rule, breakpoint on it, continue there
            await pilot.press("slash", *_addr(HIT) + "/32", "enter")
            assert view.cursor == HIT
            await pilot.press("x")
            times["c_ms"] = await cpu("c") - base
            assert view.current == HIT and "breakpoint: nat BIG" in str(scr.query_one("#stepbar").render())
            b = [await cpu("b") for _ in range(10)]
            assert view.current == HIT - 10
            times["n_ms"] = await cpu("n") - base
            assert view.current == HIT - 9
            times["f_ms"] = await cpu("f") - base
            assert view.current is None and "DNAT" in str(scr.query_one("#stepbar").render())
            times["b_out_of_chain_ms"] = await cpu("b") - base
            assert view.current == HIT
            times["s_ms_median"] = statistics.median(s) - base
            times["s_ms_max"] = max(s) - base
            times["b_ms_median"] = statistics.median(b) - base
            wall = []
            for _ in range(10):
                w = time.perf_counter()
                scr.action_back()
                wall.append((time.perf_counter() - w) * 1000)
            times["action_back_handler_ms"] = statistics.median(wall)

    asyncio.run(go())
    for k, v in times.items():
        record_property(k, round(v, 2))
    print("\n100k-rule TUI timings: " + ", ".join(f"{k}={v:.1f}" for k, v in times.items()))
