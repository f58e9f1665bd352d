"""The state file of a live run: what it will insert, written before it inserts anything.

``/run/nftrace/<run>.json`` (``NFTRACE_STATE_DIR`` overrides the directory) holds the
run's namespace, backend, every rule it will insert (as argv, deletable by exact
spec), private nft tables, reader processes and temporary files.  It is written
atomically (temporary file, fsync, rename, fsync of the directory) so a crash
leaves either the old or the new version, never half of one.

``/run/nftrace/<run>.lock`` is flock()ed by the run for its whole life, and the lock's
file descriptor is handed to every iptables process the run starts: a run that was
SIGKILLed in the middle of an ``iptables -I`` keeps its lock until that child has
finished, so ``--cleanup`` waits for the insert to land before deleting it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nftrace.live.system import LiveError, proc_start_time

SCHEMA = "nftrace.live-state/1"
DEFAULT_DIR = "/run/nftrace"


def state_dir() -> Path:
    return Path(os.environ.get("NFTRACE_STATE_DIR") or DEFAULT_DIR)


def ensure_dir(d: Path) -> Path:
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise LiveError(f"cannot create the state directory {d}: {e.strerror}") from None
    return d


def atomic_write(path: Path, data: bytes) -> None:
    """Write path atomically and durably: tmp + fsync + rename + fsync(dir)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass
class RunState:
    run: str
    netns: str | None
    backend: str
    pid: int = field(default_factory=os.getpid)
    start_time: int | None = None
    rules: list[dict[str, Any]] = field(default_factory=list)  # {"n", "table", "chain", "delete": argv}
    nft_tables: list[str] = field(default_factory=list)  # "inet NAME" tables we created
    readers: list[dict[str, Any]] = field(default_factory=list)  # {"pid", "start_time", "argv0"}
    files: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "run": self.run,
            "netns": self.netns,
            "backend": self.backend,
            "pid": self.pid,
            "start_time": self.start_time,
            "created": self.created,
            "rules": self.rules,
            "nft_tables": self.nft_tables,
            "readers": self.readers,
            "files": self.files,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunState:
        if d.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} document")
        return cls(
            run=str(d["run"]),
            netns=d.get("netns"),
            backend=str(d["backend"]),
            pid=int(d["pid"]),
            start_time=d.get("start_time"),
            rules=list(d.get("rules", [])),
            nft_tables=list(d.get("nft_tables", [])),
            readers=list(d.get("readers", [])),
            files=list(d.get("files", [])),
            created=float(d.get("created", 0.0)),
        )


class StateFile:
    """The running side: owns the lock for the life of the run and rewrites the state atomically."""

    def __init__(self, state: RunState, directory: Path | None = None) -> None:
        self.state = state
        self.dir = ensure_dir(directory or state_dir())
        self.path = self.dir / f"{state.run}.json"
        self.lock_path = self.dir / f"{state.run}.lock"
        self.lock_fd: int | None = None
        state.start_time = proc_start_time(state.pid)

    def acquire(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise LiveError(f"run id {self.state.run} is in use ({self.lock_path} is locked)") from None
        self.lock_fd = fd

    def write(self) -> None:
        atomic_write(self.path, (json.dumps(self.state.to_json(), indent=1) + "\n").encode())

    def remove(self) -> None:
        """After everything recorded was removed: state first, then the lock."""
        for p in (self.path, self.lock_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        if self.lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.lock_fd)
            self.lock_fd = None

    def release_keep(self) -> None:
        """Leave the state for `--cleanup` (something could not be removed); drop the lock."""
        if self.lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.lock_fd)
            self.lock_fd = None


# --------------------------------------------------------------------------- the cleanup side


@dataclass
class FoundState:
    path: Path
    state: RunState | None  # None: unreadable (reported, left alone)
    error: str | None = None


def list_states(directory: Path | None = None) -> list[FoundState]:
    d = directory or state_dir()
    out: list[FoundState] = []
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.json")):
        if p.name.startswith("."):
            continue
        try:
            out.append(FoundState(p, RunState.from_json(json.loads(p.read_text(encoding="utf-8")))))
        except (OSError, ValueError, KeyError, TypeError) as e:
            out.append(FoundState(p, None, f"{type(e).__name__}: {e}"))
    return out


def stale_tmp_files(directory: Path | None = None) -> list[Path]:
    d = directory or state_dir()
    return sorted(d.glob(".*.tmp")) if d.is_dir() else []


def lock_state(directory: Path, run: str, wait: float) -> tuple[str, int | None]:
    """Try to take a run's lock: ("free", fd) when taken (caller closes), ("gone", None) when there
    is no lock file (the run finished its own cleanup), ("held", None) when still held after `wait`."""
    path = directory / f"{run}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return "gone", None
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return "free", fd
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
        if time.monotonic() >= deadline:
            os.close(fd)
            return "held", None
        time.sleep(0.05)
