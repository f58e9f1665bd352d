"""Errors that reach the user as one line: file, line, what is wrong."""

from __future__ import annotations


class NftraceError(Exception):
    """Base class of every error nftrace reports to the user (exit status 2)."""

    exit_status = 2

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line

    def one_line(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file + (f":{self.line}" if self.line is not None else "") + ": "
        elif self.line is not None:
            where = f"line {self.line}: "
        text = " ".join(self.message.split())
        return f"nftrace: {where}{text}"


class InputError(NftraceError):
    """Bad input: a dump, a host-context file, a flag value."""


class UsageError(NftraceError):
    """Wrong command-line usage."""
