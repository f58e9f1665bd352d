"""Running commands on the live host, in its initial network namespace or a named one.

Every command is an argv list (never a shell string).  A named namespace is entered
with ``nsenter --net=/run/netns/NAME --`` (no /sys remount, unlike ``ip netns exec``);
sockets are opened inside a namespace from a short-lived thread that joined it with
setns(2), so the rest of the process stays where it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from nftrace.errors import NftraceError, UsageError

NETNS_DIRS = ("/run/netns", "/var/run/netns")
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
LOG_ALL_NETNS = "/proc/sys/net/netfilter/nf_log_all_netns"

T = TypeVar("T")


class LiveError(NftraceError):
    """Live mode cannot go on (a refused precondition, a failing tool): one line, exit 2."""


def shell_quote(argv: Sequence[str]) -> str:
    """argv as a shell would need it typed: for display only, never executed."""
    return shlex.join(list(argv))


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


_NS_NAME = re.compile(r"^[A-Za-z0-9_.@:+-]{1,64}$")


def netns_path(name: str) -> str:
    """The bind-mount of a named network namespace (`ip netns add NAME`)."""
    if not _NS_NAME.match(name) or name in (".", ".."):
        raise UsageError(f"bad network namespace name {name!r}")
    for d in NETNS_DIRS:
        p = os.path.join(d, name)
        if os.path.exists(p):
            return p
    raise UsageError(f"no network namespace {name!r} (see `ip netns list`)")


_libc: Any = None


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):
        os.setns(fd, CLONE_NEWNET)
        return
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Child setup for long-running readers: die with the parent, even when it is SIGKILLed."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class Target:
    """Where the rules live: the current namespace (netns None) or a named one."""

    netns: str | None = None

    def __post_init__(self) -> None:
        self.path = netns_path(self.netns) if self.netns else None

    @property
    def label(self) -> str:
        return self.netns or "(this namespace)"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """argv as run inside the target namespace."""
        if self.path is None:
            return list(argv)
        if have("nsenter"):
            return ["nsenter", f"--net={self.path}", "--", *argv]
        return ["ip", "netns", "exec", str(self.netns), *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        timeout: float = 60.0,
        pass_fds: Sequence[int] = (),
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in the target namespace; never raises for a non-zero exit (callers decide)."""
        full = self.argv(argv)
        try:
            return subprocess.run(
                full,
                input=input,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                check=False,
                pass_fds=tuple(pass_fds),
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise LiveError(f"{full[0]}: command not found") from None
        except subprocess.TimeoutExpired:
            raise LiveError(f"{shell_quote(full)}: no answer after {timeout:g}s") from None

    def output(self, argv: Sequence[str], *, timeout: float = 60.0) -> str:
        p = self.run(argv, timeout=timeout)
        if p.returncode != 0:
            msg = (p.stderr or p.stdout).strip().splitlines()
            raise LiveError(f"{shell_quote(argv)} failed (exit {p.returncode}): {msg[-1] if msg else ''}")
        return p.stdout

    def popen(self, argv: Sequence[str], *, stdout: Any, stderr: Any) -> subprocess.Popen[bytes]:
        """A long-running reader, killed with us (PR_SET_PDEATHSIG) even after SIGKILL."""
        return subprocess.Popen(
            self.argv(argv),
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            preexec_fn=_pdeathsig,  # noqa: PLW1509 - only prctl(), no Python state
            close_fds=True,
        )

    def call(self, fn: Callable[[], T]) -> T:
        """fn() run in a thread that joined the target namespace (sockets it opens stay there)."""
        if self.path is None:
            return fn()
        box: dict[str, Any] = {}
        path = self.path

        def body() -> None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    _setns(fd)
                finally:
                    os.close(fd)
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = exc

        t = threading.Thread(target=body, name=f"netns-{self.netns}", daemon=True)
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]
        return box["value"]  # type: ignore[no-any-return]

    def read_proc(self, path: str) -> str | None:
        """A /proc file as the target namespace sees it (None when absent or unreadable).  /proc/sys
        follows the reading thread's namespace; /proc/net is the process's: use /proc/thread-self/net."""

        def read() -> str | None:
            try:
                with open(path, encoding="utf-8") as f:
                    return f.read().strip()
            except OSError:
                return None

        return self.call(read)

    def is_initial_netns(self) -> bool:
        """The kernel registers net.netfilter.nf_log_all_netns only in the initial namespace."""
        return self.call(lambda: os.path.exists(LOG_ALL_NETNS))


def in_netns(name: str | None, fn: Callable[[], T]) -> T:
    return Target(name).call(fn)


def proc_start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            data = f.read()
    except OSError:
        return None
    try:
        return int(data.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def process_alive(pid: int, start_time: int | None) -> bool:
    """pid runs (a zombie does not count) and is the same process (same start time) as recorded."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    if not fields or fields[0] in ("Z", "X"):
        return False
    try:
        st = int(fields[19])
    except (IndexError, ValueError):
        return False
    return start_time is None or st == start_time
