"""`nftrace tui` for real: the command in a tmux pane, driven with send-keys, read with capture-pane.

This is how the debugger runs over SSH: a real terminal (tmux's), real
terminfo, real key sequences.  The expected endpoint and rewrite come from
`nftrace explain --format json` for the same packet.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "rulesets" / "kube-node"
FLOW = "tcp 10.244.1.5:40000 > 10.96.0.10:53 iif cni0"

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Pane:
    def __init__(self, socket: str) -> None:
        self.socket = socket

    def tmux(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=20)
        if out.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def screen(self, escapes: bool = False) -> str:
        return self.tmux("capture-pane", "-p", *(["-e"] if escapes else []), "-t", "tui")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "tui", *keys)

    def wait(self, cond: Callable[[str], bool], what: str, timeout: float = 30.0) -> str:
        end = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < end:
            screen = self.screen()
            if cond(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; the screen:\n{screen}")


@pytest.fixture(params=["tmux-256color", "screen-256color"])
def pane(request: pytest.FixtureRequest) -> Iterator[Pane]:
    term = request.param
    p = Pane(f"nft-tui-{secrets.token_hex(4)}")
    env = {k: v for k, v in os.environ.items() if k not in ("COLORTERM", "NO_COLOR", "TMUX")}
    cmd = f"cd {_q(str(ROOT))} && TERM={term} {_q(sys.executable)} -m nftrace tui --rules {_q(str(KUBE))} {_q(FLOW)}"
    cmd += "; echo nftrace exited $?; sleep 60"
    subprocess.run(
        ["tmux", "-L", p.socket, "-f", "/dev/null", "new-session", "-d", "-s", "tui", "-x", "120", "-y", "40", cmd],
        check=True,
        env=env,
        timeout=20,
    )
    sock = p.tmux("display-message", "-p", "#{socket_path}").strip()
    try:
        yield p
    finally:
        subprocess.run(["tmux", "-L", p.socket, "kill-server"], capture_output=True, timeout=20)
        if sock and Path(sock).name == p.socket:
            Path(sock).unlink(missing_ok=True)  # kill-server leaves the socket file behind


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


STEP = re.compile(r"^ ?(\d+)/(\d+) (.*)$", re.M)


def _step(screen: str) -> tuple[int, str]:
    m = STEP.search(screen)
    assert m, f"no step line on the screen:\n{screen}"
    return int(m.group(1)), m.group(3)


def test_tmux_step_to_the_dnat_rule(pane: Pane) -> None:
    doc = json.loads(
        subprocess.run(
            [sys.executable, "-m", "nftrace", "explain", "--rules", str(KUBE), FLOW, "--format", "json"],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
    )
    nat = next(s for s in doc["branches"][0]["steps"] if s["kind"] == "nat")
    endpoint, before = nat["after"], nat["before"]

    screen = pane.wait(lambda s: STEP.search(s) is not None and "PREROUTING" in s, "the debugger to start")
    assert _step(screen)[0] == 0
    for _ in range(80):
        n, what = _step(screen)
        if "(DNAT)" in what:
            break
        pane.keys("s")
        screen = pane.wait(lambda s, n=n: _step(s)[0] == n + 1, f"step {n + 1}")  # type: ignore[misc]
    else:
        raise AssertionError(f"never reached the DNAT rule:\n{screen}")
    # at the DNAT rule: the endpoint address, in the rule and as the rewrite to come
    flat = " ".join(screen.split())
    assert f"--to-destination {endpoint}" in flat
    assert f"nat \u21e2 {endpoint}" in screen
    assert "\u2713 DNAT" in screen
    # one more step: the nat table ends and the destination is rewritten
    n = _step(screen)[0]
    pane.keys("s")
    screen = pane.wait(lambda s: _step(s)[0] == n + 1, "the nat step")
    assert f"dst {endpoint}" in screen
    assert f"was dst {before}" in screen
    assert "DNAT in nat PREROUTING" in screen
    # colours made it through tmux: matched and failed rows are drawn in different colours
    pane.keys("b")
    pane.wait(lambda s: _step(s)[0] == n, "back at the DNAT rule")
    colored = pane.screen(escapes=True)
    codes = set(re.findall(r"\x1b\[[0-9;]*m", colored))
    assert len(codes) > 8, "the screen has (almost) no colours"
    ok = re.search(r"((?:\x1b\[[0-9;]*m)+)\u2713 DNAT", colored)
    no = re.search(r"((?:\x1b\[[0-9;]*m)+)\u2717 no", colored)
    assert ok and no and _fg(ok.group(1)) != _fg(no.group(1))
    pane.keys("q")
    pane.wait(lambda s: "nftrace exited 0" in s, "nftrace to exit")


def _fg(sgr: str) -> str:
    """The foreground colour set by a run of SGR sequences (256-colour or true colour)."""
    params = ";".join(re.findall(r"\x1b\[([0-9;]*)m", sgr))
    m = re.findall(r"(?:^|;)(38;5;\d+|38;2;\d+;\d+;\d+|3[0-7]|9[0-7])(?=;|$)", params)
    assert m, f"no foreground colour in {sgr!r}"
    return str(m[-1])
