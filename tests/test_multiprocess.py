"""Every Beam stage in separate worker processes (`--direct_running_mode multi_processing`), as
Dataflow runs them: DoFns pickled to other processes, state built in setup() there, nothing
shared with the launcher but files. The rankings must equal the in-process run's (the session's
quick build, shared with tests/test_portable.py)."""

from __future__ import annotations

from pathlib import Path

from tests.portable_fixtures import rankings

MULTI_PROCESS = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]


def test_multi_process_run_ranks_as_the_in_process_run(quick_corpus, in_process_build: Path, tmp_path: Path):
    from pipelines import build

    result = build.run(quick_corpus.build_argv(tmp_path / "multi-process") + MULTI_PROCESS)

    expected = rankings(in_process_build)
    assert expected
    assert rankings(tmp_path / "multi-process") == expected
    assert result.rank.rows_failed == 0
