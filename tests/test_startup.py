"""`nftrace explain` starts small: no textual, scapy, pyroute2 (nor rich when not on a TTY).

Each case runs the real command in a fresh interpreter with `python -X importtime`, which
lists every module the process imported, with stdout a pipe (not a terminal).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "rulesets" / "kube-node"
HEAVY = ("textual", "scapy", "pyroute2", "rich")
FLOW = "tcp 10.244.1.5:40000 > 10.96.120.15:80 iif cni0"


def imported(args: list[str], stdin: str | None = None) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """Top-level packages a `python -X importtime -m nftrace ARGS` process imported, and its result."""
    env = {k: v for k, v in os.environ.items() if k not in ("NFTRACE_CACHE", "PYTHONSTARTUP")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "nftrace", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    mods: set[str] = set()
    for ln in p.stderr.splitlines():
        if ln.startswith("import time:") and "|" in ln:
            name = ln.rsplit("|", 1)[1].strip()
            if name and name != "imported package":
                mods.add(name.split(".")[0])
    assert mods, p.stderr[-2000:]  # -X importtime wrote its table: the check below means something
    return mods, p


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--format", "json"],
        ["--all-rules"],
        ["--format", "json", "--all-rules", "--color", "never"],
    ],
    ids=["text", "json", "all-rules", "json-all-rules"],
)
def test_explain_imports_no_heavy_module(extra: list[str]) -> None:
    mods, p = imported(["explain", "--rules", str(KUBE), FLOW, *extra])
    assert p.returncode == 0, p.stderr[-2000:]
    assert "nftrace" in mods and "json" in mods
    assert not mods & set(HEAVY), sorted(mods & set(HEAVY))
    if "json" in extra:
        assert json.loads(p.stdout)["schema"] == "nftrace.trace/1"


def test_explain_batch_imports_no_heavy_module(tmp_path: Path) -> None:
    batch = tmp_path / "b.jsonl"
    batch.write_text(
        json.dumps(
            {
                "origin": "ingress",
                "proto": "udp",
                "src": "10.244.1.3",
                "sport": 5353,
                "dst": "10.96.0.10",
                "dport": 53,
                "iif": "cni0",
            }
        )
        + "\n"  # fmt: skip
    )
    mods, p = imported(["explain", "--rules", str(KUBE), "--batch", str(batch)])
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.splitlines()[0])["schema"] == "nftrace.trace/1"
    assert not mods & set(HEAVY), sorted(mods & set(HEAVY))


def test_a_bad_dump_fails_in_one_line_without_heavy_imports(tmp_path: Path) -> None:
    bad = tmp_path / "bad.rules"
    bad.write_text("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m nosuchmatch -j ACCEPT\nCOMMIT\n")
    mods, p = imported(["explain", "--rules", str(bad), FLOW])
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert not mods & set(HEAVY)


def test_importing_the_cli_and_engine_stays_light() -> None:
    code = (
        "import sys, json\n"
        "import nftrace.cli, nftrace.engine.pipeline, nftrace.engine.index, nftrace.ruleset.parser\n"
        "import nftrace.ruleset.cache\n"
        "nftrace.cli.build_parser()\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(p.stdout) == []
