"""One line for a run that ended in an error: what failed, where, and what to do.

The `imgsearch` CLI ends every failed stage with this line instead of a traceback (`-v` shows the
traceback too): exit 3 for a refused run (a failed health gate, an input the stage cannot use, a
missing input, OUT locked by another build), 1 for a crash.
"""

from __future__ import annotations

import errno
import os
import re
import traceback

from model.report import RunRefused, StageRefused

EXIT_CRASHED = 1
EXIT_REFUSED = 3

_OUR_PACKAGES = ("pipelines", "model", "export")
_NO_SPACE = "No space left on device"


def is_refusal(exc: BaseException) -> bool:
    """A run that refused (exit 3), as opposed to one that crashed (exit 1)."""
    return isinstance(exc, (StageRefused, RunRefused, FileNotFoundError))


def exit_status(exc: BaseException) -> int:
    return EXIT_REFUSED if is_refusal(exc) else EXIT_CRASHED


def where(exc: BaseException) -> str:
    """The file an OSError names, else the innermost frame of our own code that raised."""
    filename = getattr(exc, "filename", None)
    if filename:
        return str(filename)
    ours = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if any(f"{os.sep}{p}{os.sep}" in f.filename for p in _OUR_PACKAGES)
    ]
    if not ours:
        return ""
    frame = ours[-1]
    parts = frame.filename.split(os.sep)
    short = "/".join(parts[-2:])
    return f"{short}:{frame.lineno} in {frame.name}"


def _no_space(exc: BaseException) -> bool:
    return getattr(exc, "errno", None) == errno.ENOSPC or _NO_SPACE in str(exc)


def remedy(exc: BaseException) -> str:
    if _no_space(exc):
        return (
            "free space on the disk that holds --out (or give --out on another disk) and rerun: what was "
            "committed before the disk filled is kept, and half-written files are never read"
        )
    if is_refusal(exc):
        return "fix what the message names and rerun"
    return "rerun with -v for the traceback; what earlier stages and this one committed is kept"


def failure_line(command: str, exc: BaseException) -> str:
    """imgsearch <command>: refused|failed: <Error>: <message> [at <where>]; <what to do>"""
    verb = "refused" if is_refusal(exc) else "failed"
    message = " ".join(str(exc).split()) or "(no message)"
    if _no_space(exc) and _NO_SPACE not in message:
        message += f" ({_NO_SPACE})"
    place = "" if is_refusal(exc) else where(exc)  # a refusal's message names its input
    at = f" at {place}" if place and place not in message else ""
    todo = remedy(exc)
    if is_refusal(exc) and re.search(r"\b(re)?run\b", message):
        todo = ""  # the message already says what to run
    return f"imgsearch {command}: {verb}: {type(exc).__name__}: {message}{at}" + (f"; {todo}" if todo else "")
