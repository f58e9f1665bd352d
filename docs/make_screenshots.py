#!/usr/bin/env python3
"""Regenerate the screenshots of docs/tui.md: SVGs of each main screen (textual's
export_screenshot) and a plain-text capture of the real command in a tmux pane.

    python3 docs/make_screenshots.py          # from the repository root, or anywhere

Every screenshot is the kube-node scenario (rulesets/kube-node) and the ClusterIP
flow of docs/tui.md, driven with the same keys a user would press.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nftrace.cli import build_parser, packet_dict  # noqa: E402
from nftrace.commands.tui import make_tracer  # noqa: E402

DOCS = ROOT / "docs"
KUBE = ROOT / "rulesets" / "kube-node"
FLOW = "tcp 10.244.1.5:40000 > 10.96.0.10:53 iif cni0"
STEP = re.compile(r"^ ?\d+/\d+ ")


def app_for(flow: str) -> Any:
    from nftrace.tui.app import TraceApp

    args = build_parser().parse_args(["tui", "--rules", os.path.relpath(KUBE), flow])
    rs, tracer = make_tracer(args)
    d = packet_dict(args)
    return TraceApp(rs, tracer, d, tracer(d))


async def shoot(name: str, size: tuple[int, int], keys: list[str], title: str) -> None:
    app = app_for(FLOW)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        scr = app.debugger
        for k in keys:
            if k.startswith("until:"):
                want = k.removeprefix("until:")
                for _ in range(200):
                    if want in str(scr.query_one("#stepbar").render()):
                        break
                    await pilot.press("s")
                else:
                    raise SystemExit(f"{name}: never reached {want!r}")
            else:
                await pilot.press(k)
        await pilot.pause()
        svg = app.export_screenshot(title=title)
    (DOCS / f"{name}.svg").write_text(svg, encoding="utf-8")
    print(f"docs/{name}.svg")


SHOTS: list[tuple[str, tuple[int, int], list[str], str]] = [
    ("tui-start", (120, 36), [], "nftrace tui: the start (packet arrives on cni0)"),
    ("tui-dnat-rule", (120, 36), ["until:(DNAT)"], "s until the DNAT rule of the chosen endpoint"),
    ("tui-dnat-rewrite", (120, 36), ["until:(DNAT)", "s"], "one more s: the nat table ends, dst rewritten"),
    (
        "tui-breakpoint",
        (160, 40),
        ["slash", *"forwarding rules", "enter", "x", "c", "s"],
        "/ search, x breakpoint, c continue, s into KUBE-FORWARD (why each rule did not match)",
    ),
    ("tui-branch-2", (120, 36), ["tab", "c"], "tab: the other endpoint (branch 2), c: to its end"),
    ("tui-raw-rule", (120, 36), ["until:(DNAT)", "r"], "r: the rule as in the dump, with file:line"),
    ("tui-edit", (120, 36), ["e"], "e: edit the packet, enter traces it again"),
    ("tui-help", (120, 36), ["question_mark"], "?: keys"),
    ("tui-80x24", (80, 24), ["until:(DNAT)", "s"], "an 80x24 terminal (over SSH)"),
]


def tmux_capture() -> None:
    """The real command in a 120x40 tmux pane, stepped to the DNAT rewrite: docs/tui-tmux-120x40.txt."""
    if shutil.which("tmux") is None:
        print("tmux not installed: no tmux capture", file=sys.stderr)
        return
    sock = f"nft-tui-{secrets.token_hex(4)}"
    cmd = (
        f"cd {shlex.quote(str(ROOT))} && TERM=tmux-256color {shlex.quote(sys.executable)} -m nftrace tui "
        f"--rules rulesets/kube-node {shlex.quote(FLOW)}; sleep 30"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("COLORTERM", "TMUX")}

    def tmux(*a: str) -> str:
        return subprocess.run(["tmux", "-L", sock, *a], capture_output=True, text=True, check=True, env=env).stdout

    subprocess.run(
        ["tmux", "-L", sock, "-f", "/dev/null", "new-session", "-d", "-s", "tui", "-x", "120", "-y", "40", cmd],
        check=True,
        env=env,
    )
    path = tmux("display-message", "-p", "#{socket_path}").strip()
    try:

        def step_line() -> str:
            screen = tmux("capture-pane", "-p", "-t", "tui")
            return next((ln for ln in screen.splitlines() if STEP.match(ln)), "")

        for _ in range(100):  # the debugger starts
            if step_line():
                break
            time.sleep(0.1)
        for _ in range(100):  # s until the DNAT rule, then one more: the rewrite
            line = step_line()
            if "(DNAT)" in line:
                break
            tmux("send-keys", "-t", "tui", "s")
            for _ in range(50):
                time.sleep(0.05)
                if step_line() != line:
                    break
        tmux("send-keys", "-t", "tui", "s")
        time.sleep(0.5)
        screen = tmux("capture-pane", "-p", "-t", "tui")
        (DOCS / "tui-tmux-120x40.txt").write_text(screen.rstrip() + "\n", encoding="utf-8")
        print("docs/tui-tmux-120x40.txt")
        tmux("send-keys", "-t", "tui", "q")
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)
        if path and Path(path).name == sock:
            Path(path).unlink(missing_ok=True)


def main() -> None:
    os.chdir(ROOT)  # file:line in the raw-rule screen reads rulesets/..., not an absolute path
    for name, size, keys, title in SHOTS:
        asyncio.run(shoot(name, size, keys, title))
    tmux_capture()


if __name__ == "__main__":
    main()
