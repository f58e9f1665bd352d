"""The optional compiled build: which modules `NFTRACE_COMPILE=1` compiles with mypyc.

The rule parser is the one place where nftrace's speed is bounded by the interpreter's
cost per line (a 100k-rule dump is 100k lines through the same few functions). mypyc
compiles exactly these typed modules (`mypy --strict` clean) to C extensions; every other
module, and the behaviour, stay the same: tests/test_compiled.py builds them and checks
that the compiled parser gives the pure one's model and errors on every real dump.

    NFTRACE_COMPILE=1 python3 -m pip install --no-build-isolation .   # needs mypy and a C compiler

Not for editable installs: a compiled module next to its source shadows the source, so an
edit would not take effect.
"""

from __future__ import annotations

import importlib.machinery
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def modules(root: Path = _ROOT) -> list[str]:
    """The source files to compile, relative to root (the directory holding `nftrace/`)."""
    fixed = ["parser.py", "values.py", "model.py", "registry.py", "canonical.py"]
    ext = sorted(p.name for p in (root / "nftrace" / "ruleset" / "ext").glob("*.py"))
    return [f"nftrace/ruleset/{f}" for f in fixed] + [f"nftrace/ruleset/ext/{f}" for f in ext]


def active() -> bool:
    """Whether this process runs the compiled parser."""
    from nftrace.ruleset import parser

    return any(parser.__file__.endswith(s) for s in importlib.machinery.EXTENSION_SUFFIXES if s != ".py")
