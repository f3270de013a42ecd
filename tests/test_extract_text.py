from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to

from model import schema, text_vectors
from pipelines import extract_text
from tests import builders
from tests.conftest import make_keyed_vectors

DIM = 6
WORDS = ["cat", "dog", "red", "car", "new_york"]
# tag -> (status, known words)
EXPECTED = {
    "cat": (schema.TEXT_OK, 1),
    "red car": (schema.TEXT_OK, 2),
    "new york": (schema.TEXT_OK, 2),
    "red zeppelin": (schema.TEXT_PARTIAL, 1),
    "quux": (schema.TEXT_OOV, 0),
}


@pytest.fixture(scope="module")
def kv():
    return make_keyed_vectors(WORDS, dim=DIM, seed=1)


@pytest.fixture
def word_vectors(kv, tmp_path: Path) -> str:
    path = tmp_path / "vectors.bin"
    kv.save_word2vec_format(str(path), binary=True)
    return str(path)


def write_images(out: Path, tags: list[str]) -> None:
    """The images table in two shards, half the rows each."""
    rows = builders.image_rows((f"https://example.com/{i}.jpg", tag) for i, tag in enumerate(tags))
    half = len(rows) // 2
    builders.write_images(out, rows[:half], index=0, count=2)
    builders.write_images(out, rows[half:], index=1, count=2)


def image_tags() -> list[str]:
    tags = []
    for i, tag in enumerate(EXPECTED):
        tags += [tag] * (i + 2)  # every tag on several images, across both shards
    return tags


def test_dofn_rows(kv, word_vectors: str):
    fn = extract_text.TagVectorFn(word_vectors, DIM)
    fn.setup()
    (row,) = fn.process("red zeppelin")
    assert row[schema.STATUS] == schema.TEXT_PARTIAL and row[schema.KNOWN_WORDS] == 1
    np.testing.assert_allclose(row[schema.EMBEDDING], kv["red"], rtol=1e-6)
    (oov,) = fn.process("quux")
    assert oov[schema.EMBEDDING] is None and oov[schema.STATUS] == schema.TEXT_OOV


def test_dofn_refuses_vectors_of_another_dimension(word_vectors: str):
    fn = extract_text.TagVectorFn(word_vectors, DIM + 1)
    with pytest.raises(ValueError, match="dims"):
        fn.setup()


def test_tag_vectors_composite_one_row_per_distinct_tag(word_vectors: str, beam_pipeline):
    rows = [{schema.TAG: t} for t in image_tags()]
    with beam_pipeline as p:
        out = (
            p
            | "Rows" >> beam.Create(rows)
            | extract_text.TagVectors(word_vectors, DIM)
            | "Summary" >> beam.Map(lambda r: (r[schema.TAG], r[schema.STATUS], r[schema.KNOWN_WORDS]))
        )
        assert_that(out, equal_to([(t, s, k) for t, (s, k) in EXPECTED.items()]))


def test_whole_stage(kv, word_vectors: str, tmp_path: Path):
    out = tmp_path / "out"
    write_images(out, image_tags())
    stale = out / schema.TEXT_FEATURES_DIR / builders.shard_name(schema.TEXT_FEATURES_PREFIX, 0, 9)
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left over from an earlier run")

    report = extract_text.run(["--out", str(out), "--word-vectors", word_vectors])

    assert not stale.exists()
    files = sorted((out / schema.TEXT_FEATURES_DIR).glob("text-*-of-*.parquet"))
    assert files
    table = pa.concat_tables(pq.read_table(f) for f in files)
    meta = pq.read_schema(files[0]).metadata
    assert meta[schema.META_DIM] == str(DIM).encode() and meta[schema.META_WORD_VECTORS] == word_vectors.encode()
    assert table.schema.field(schema.EMBEDDING).type == schema.text_features_schema(DIM).field(schema.EMBEDDING).type
    assert all(len(v) == DIM for v in table.column(schema.EMBEDDING).to_pylist() if v is not None)

    rows = {r[schema.TAG]: r for r in table.to_pylist()}
    assert {t: (r[schema.STATUS], r[schema.KNOWN_WORDS]) for t, r in rows.items()} == EXPECTED
    assert rows["quux"][schema.EMBEDDING] is None
    np.testing.assert_allclose(rows["new york"][schema.EMBEDDING], kv["new_york"], rtol=1e-6)
    expected_red_car = text_vectors.tag_vector(kv, "red car").vector
    np.testing.assert_allclose(rows["red car"][schema.EMBEDDING], expected_red_car, rtol=1e-6)

    assert report.rows_in == len(EXPECTED) == report.rows_out
    assert report.rows_in == report.rows_out + report.rows_failed + report.rows_skipped
    assert report.details[schema.TEXT_OK] == 3
    assert report.details[schema.TEXT_PARTIAL] == 1
    assert report.details[schema.TEXT_OOV] == 1
    assert (out / schema.REPORTS_DIR / "extract-text.json").exists()
    assert "extract-text: in 5, out 5" in report.summary_line()
