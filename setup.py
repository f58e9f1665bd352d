"""Build: pure Python, unless NFTRACE_COMPILE=1 asks for the rule parser compiled with mypyc
(see nftrace/compiled.py); metadata is in pyproject.toml."""

import os
import sys

from setuptools import setup


def ext_modules() -> list:
    if os.environ.get("NFTRACE_COMPILE", "") != "1":
        return []
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    from mypyc.build import mypycify  # NFTRACE_COMPILE=1 needs mypy (pip install --no-build-isolation)

    from nftrace.compiled import modules

    return mypycify(modules(), opt_level="3")


setup(ext_modules=ext_modules())
