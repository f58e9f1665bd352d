"""Build the optional compiled parser (nftrace/compiled.py) into a directory of its own.

    python3 -m benchmarks.compiled DIR     # then PYTHONPATH=DIR runs nftrace with it

The benchmark measures the parse with it next to the pure one, and tests/test_compiled.py
checks it parses every real dump exactly as the pure parser does. Needs mypy (mypyc) and a
C compiler; build() raises CompileUnavailable without them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class CompileUnavailable(RuntimeError):
    pass


def available() -> str | None:
    """Why the compiled build cannot be made here, or None when it can."""
    if importlib.util.find_spec("mypyc") is None:
        return "mypy (mypyc) is not installed"
    if shutil.which(os.environ.get("CC", "cc")) is None and shutil.which("gcc") is None:
        return "no C compiler (cc, gcc)"
    return None


def build(dst: Path) -> Path:
    """A copy of the nftrace package in dst with the parser's modules compiled; dst is returned
    (put it first on PYTHONPATH)."""
    why = available()
    if why is not None:
        raise CompileUnavailable(why)
    from nftrace.compiled import modules

    dst.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "nftrace", dst / "nftrace", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    mods = modules(dst)
    proc = subprocess.run(
        [sys.executable, "-m", "mypyc", *mods],
        cwd=dst,
        capture_output=True,
        text=True,
        env={**os.environ, "MYPYC_OPT_LEVEL": "3"},
    )
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise CompileUnavailable("mypyc failed: " + " | ".join(tail))
    missing = [m for m in mods if not list((dst / m).parent.glob(Path(m).stem + ".*.so"))]
    if missing:
        raise CompileUnavailable(f"mypyc built no extension for {', '.join(missing)}")
    return dst


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python3 -m benchmarks.compiled DIR", file=sys.stderr)
        return 2
    try:
        out = build(Path(sys.argv[1]).resolve())
    except CompileUnavailable as e:
        print(f"benchmarks.compiled: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
