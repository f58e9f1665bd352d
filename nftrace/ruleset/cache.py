"""An opt-in cache of parsed rulesets, keyed by the dump and by nftrace's own code.

Parsing a 100,000-rule kube-proxy dump takes seconds; loading the parsed model back
takes a fraction of that.  The cache is off unless the environment says otherwise:

    NFTRACE_CACHE=1        cache under $XDG_CACHE_HOME/nftrace (default ~/.cache/nftrace)
    NFTRACE_CACHE=/a/dir   cache in that directory
    NFTRACE_CACHE=0 / unset / empty: no cache

The key is a SHA-256 over the dump's text, the file name and the parse options (both appear
in errors and warnings), the Python version and the source of every module of the nftrace
package: any change to the code (a parser fix, a new extension, another version) gives
another key, so a cached result is never stale.  An entry that cannot be read back (truncated,
another format) is deleted and the dump parsed again; a dump that fails to parse is never
cached (the error is raised every time).  The directory is created private (0700); an entry
is loaded only from a directory owned by the current user that others cannot write, since
unpickling runs code.  The eight most recently used entries are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from nftrace.gcquiet import quiet_gc

if TYPE_CHECKING:
    from nftrace.ruleset.model import Ruleset

ENV = "NFTRACE_CACHE"
FORMAT = b"nftrace-ruleset-cache/1\n"
KEEP = 8

_fingerprint: str | None = None
#: what the last parse_rules() call did: "off", "hit", "stored", or "miss" (parsed, not stored)
last_status = "off"


def cache_dir() -> Path | None:
    """The cache directory the environment asks for, or None when caching is off."""
    v = os.environ.get(ENV, "").strip()
    if v.lower() in ("", "0", "no", "false", "off"):
        return None
    if v.lower() in ("1", "yes", "true", "on"):
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "nftrace"
    return Path(v)


def code_fingerprint() -> str:
    """SHA-256 of the Python version, of every source file of the nftrace package and of whether
    its parser is the compiled one (nftrace/compiled.py: other classes behind the same names)."""
    global _fingerprint
    if _fingerprint is None:
        import sys

        from nftrace import compiled

        h = hashlib.sha256(FORMAT)
        h.update(sys.version.encode())
        h.update(b"compiled\0" if compiled.active() else b"pure\0")
        root = Path(__file__).resolve().parents[1]
        for p in sorted(root.rglob("*.py")):
            h.update(str(p.relative_to(root)).encode() + b"\0")
            h.update(p.read_bytes())
        _fingerprint = h.hexdigest()
    return _fingerprint


def cache_key(text: str, filename: str, family: str | None, strict: bool) -> str:
    h = hashlib.sha256(code_fingerprint().encode())
    h.update(repr((filename, family, strict)).encode("utf-8", "surrogateescape") + b"\0")
    h.update(text.encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _private(d: Path) -> bool:
    """Whether d is a directory of ours that nobody else may write into."""
    try:
        st = d.stat()
    except OSError:
        return False
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def load(d: Path, key: str) -> Ruleset | None:
    """The cached ruleset for key, or None (a missing or unreadable entry)."""
    import pickle

    from nftrace.ruleset.model import Ruleset

    path = d / f"{key}.pickle"
    if not _private(d):
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    head = FORMAT + key.encode() + b"\n"
    try:
        if not data.startswith(head):
            raise ValueError("not a cache entry of this format")
        with quiet_gc():  # a million objects at once: the collector would traverse them again and again
            rs = pickle.loads(memoryview(data)[len(head) :])
        if not isinstance(rs, Ruleset):
            raise ValueError("not a ruleset")
    except Exception:
        # a truncated or foreign entry: forget it, parse again
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # most recently used
    return rs


def store(d: Path, key: str, rs: Ruleset) -> bool:
    """Write the entry (atomically); False when the ruleset cannot be pickled or written."""
    import pickle
    import tempfile

    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _private(d):
            return False
        with quiet_gc():  # the pickler's memo holds a tuple per object: no garbage to look for
            payload = pickle.dumps(rs, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return False  # e.g. an extension object pickle cannot rebuild: no cache for this dump
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".pickle")
        with os.fdopen(fd, "wb") as f:
            f.write(FORMAT + key.encode() + b"\n")
            f.write(payload)
        os.replace(tmp, d / f"{key}.pickle")
        tmp = None
    except OSError:
        return False
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    _prune(d)
    return True


def _prune(d: Path) -> None:
    try:
        entries = sorted(d.glob("*.pickle"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[KEEP:]:
            old.unlink()
    except OSError:
        pass


def cached_parse(parse: Callable[..., Ruleset], text: str, filename: str, family: str | None, strict: bool) -> Ruleset:
    """parse(text, filename, family, strict=strict), through the cache when it is on."""
    global last_status
    d = cache_dir()
    key = None
    last_status = "off"
    if d is not None:
        key = cache_key(text, filename, family, strict)
        hit = load(d, key)
        if hit is not None:
            last_status = "hit"
            return hit
    rs = parse(text, filename, family, strict=strict)
    if d is not None and key is not None:
        last_status = "stored" if store(d, key, rs) else "miss"
    return rs
