"""Every Beam stage in separate worker processes (`--direct_running_mode multi_processing`), as
Dataflow runs them: DoFns pickled to other processes, state built in setup() there, nothing
shared with the launcher but files. The rankings must equal the in-process run's."""

from __future__ import annotations

from pathlib import Path

from tests.builders import QUICK_BUILD_FLAGS
from tests.conftest import make_keyed_vectors, write_image_collection, write_jsonl

TAGS = ["cat", "dog", "red car", "tree"]
MULTI_PROCESS = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]


def _build(manifest: Path, vectors: Path, out: Path, beam_args: list[str]):
    from pipelines import build

    return build.run(
        [
            "--input", str(manifest),
            "--word-vectors", str(vectors),
            "--out", str(out),
            *QUICK_BUILD_FLAGS,
            "--seed", "0",
        ]
        + beam_args
    )


def _rankings(out: Path) -> list[tuple[str, int, str]]:
    from model import schema, storage

    table = storage.read_parquet_dir(str(out / schema.RANKINGS_DIR), columns=[schema.TAG, schema.RANK, schema.IMAGE_ID])
    return sorted(zip(*(table.column(c).to_pylist() for c in (schema.TAG, schema.RANK, schema.IMAGE_ID))))


def test_multi_process_run_ranks_as_the_in_process_run(tmp_path: Path):
    rows = write_image_collection(tmp_path / "images", 16, TAGS)
    manifest = write_jsonl(tmp_path / "manifest.jsonl", rows)
    vectors = tmp_path / "vectors.bin"
    make_keyed_vectors(["cat", "dog", "red", "car", "tree"]).save_word2vec_format(str(vectors), binary=True)

    _build(manifest, vectors, tmp_path / "in-process", [])
    result = _build(manifest, vectors, tmp_path / "multi-process", MULTI_PROCESS)

    expected = _rankings(tmp_path / "in-process")
    assert expected
    assert _rankings(tmp_path / "multi-process") == expected
    assert result.rank.rows_failed == 0
