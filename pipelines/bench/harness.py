"""Running one bench phase: in a child process of its own (the real thing: its peak RSS is its own)
or in this process (tests: fast, but the peak RSS is the whole process's).

The child is `python -m pipelines.bench.harness --phase a|b|c ...`: it prints its result as one
JSON line; the parent reads the child's ru_maxrss from os.wait4. The fetch phase's child
(fetch.py) goes through run_json_child too.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
from typing import Any, Callable, Sequence

from pipelines.bench import phases


class BenchError(RuntimeError):
    """A phase failed; the message carries the end of its log."""


PhaseRunner = Callable[[Sequence[str]], dict[str, Any]]


def run_json_child(module: str, argv: Sequence[str], what: str) -> tuple[dict[str, Any], Any]:
    """Run `python -m module argv...` and wait for it; its result (the last JSON line it printed)
    and its resource usage (os.wait4's: its own CPU seconds and peak RSS). BenchError, with the
    end of its log, when it fails."""
    cmd = [sys.executable, "-m", module, *argv]
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr)
        # wait4 rather than proc.wait(): it returns the child's resource usage, ru_maxrss included
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        out_text = stdout.read().decode("utf-8", "replace")
        err_text = stderr.read().decode("utf-8", "replace")
    lines = [line for line in out_text.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise BenchError(f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n{err_text[-4000:]}")
    return json.loads(lines[-1]), usage


def run_phase_subprocess(argv: Sequence[str]) -> dict[str, Any]:
    """Run one phase in a fresh Python process; add its own peak RSS (ru_maxrss from os.wait4)."""
    result, usage = run_json_child("pipelines.bench.harness", argv, "bench phase")
    result["peak_rss_mib"] = usage.ru_maxrss / 1024.0  # KiB on Linux
    result["peak_rss_own_process"] = True
    return result


def run_phase_in_process(argv: Sequence[str]) -> dict[str, Any]:
    """The same phase in this process (tests): fast, but the peak RSS is this whole process's."""
    result = phases.execute_phase(argv)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    result["peak_rss_own_process"] = False
    return result


def main(argv: list[str] | None = None) -> int:
    """The child: one phase; logs only what went wrong (stderr goes back to the parent), the result as JSON."""
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(phases.execute_phase(list(sys.argv[1:] if argv is None else argv))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
