"""A retried bundle changes nothing: every DoFn that writes, run twice on the same bundle.

Dataflow retries a failed bundle (up to four times in batch), on the same worker or another,
and keeps only the output of the attempt that succeeded; what an attempt wrote is not undone.
So each writer is driven here as a runner drives it (setup, start_bundle, process,
finish_bundle) on one bundle twice, the first attempt's output thrown away, and what is on disk
afterwards must hold every row once. Then a whole build with every bundle replayed
(`--direct_runner_bundle_repeat 1`: the FnApiRunner runs each bundle once more first and drops
its output, as a failed attempt) must publish what the plain build publishes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.utils.windowed_value import WindowedValue

from model import schema, storage
from model.tags import image_id_for
from tests.conftest import write_image_collection
from tests.portable_fixtures import rankings

DIM = 8


def _values(items: Iterable[Any] | None) -> list[Any]:
    """A DoFn's outputs without their windows (finish_bundle yields WindowedValues)."""
    return [item.value if isinstance(item, WindowedValue) else item for item in items or ()]


def run_bundle(fn, elements: Iterable[Any], *side_inputs: Any, fail_after: int | None = None) -> list[Any]:
    """One attempt at a bundle, as a runner makes it; fail_after: the attempt dies after that
    many elements (no finish_bundle), as a lost worker's."""
    fn.start_bundle()
    out: list[Any] = []
    for i, element in enumerate(elements):
        if fail_after is not None and i == fail_after:
            return out
        out += _values(fn.process(element, *side_inputs))
    return out + _values(fn.finish_bundle())


def _files(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------
# extract-images: feature chunks
# ---------------------------------------------------------------------------
def _feature_rows(n: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    return [
        {schema.IMAGE_ID: f"img{i:03d}", schema.EMBEDDING: rng.standard_normal(DIM).astype(np.float32),
         schema.CONTENT_HASH: f"h{i}", schema.WIDTH: 10 + i, schema.HEIGHT: 20 + i}  # fmt: skip
        for i in range(n)
    ]


def _chunk_ids(folder: Path) -> list[str]:
    chunks = sorted(folder.glob(f"{schema.IMAGE_FEATURES_PREFIX}-*.parquet"))
    return [i for p in chunks for i in pq.read_table(p).column(schema.IMAGE_ID).to_pylist()]


@pytest.mark.parametrize("first_attempt", ["whole", "died after 6 rows"])
@pytest.mark.parametrize("retried_on", ["same worker", "another worker"])
def test_a_retried_feature_bundle_commits_every_row_once(tmp_path: Path, first_attempt: str, retried_on: str):
    from pipelines import feature_shards

    folder = tmp_path / schema.IMAGE_FEATURES_DIR
    folder.mkdir(parents=True)
    prefix = str(folder / f"{schema.IMAGE_FEATURES_PREFIX}-20260101T000000-abcdef")
    table_schema = schema.image_features_schema(DIM, {schema.META_ENCODER: b"test"})
    rows = _feature_rows(10)

    def make():
        fn = feature_shards.CommitFeaturesFn(prefix, table_schema, commit_every=4)
        fn.setup()
        return fn

    first = make()
    run_bundle(first, rows, fail_after=6 if first_attempt != "whole" else None)
    committed_by_first = set(p.name for p in folder.iterdir())
    assert committed_by_first  # the first attempt committed chunks before it ended
    retry = first if retried_on == "same worker" else make()
    paths = run_bundle(retry, rows)

    ids = _chunk_ids(folder)
    assert sorted(ids) == [r[schema.IMAGE_ID] for r in rows]  # nothing lost, nothing twice
    assert sorted(Path(p).name for p in paths) == sorted(p.name for p in folder.iterdir())
    assert committed_by_first <= {Path(p).name for p in paths}  # the retry rewrote them
    assert not list(folder.glob(f"{feature_shards.INPROGRESS_PREFIX}*"))
    for path in paths:  # each chunk whole, its embeddings the rows'
        table = pq.read_table(path)
        by_id = {r[schema.IMAGE_ID]: r for r in rows}
        for image_id, embedding in zip(table.column(schema.IMAGE_ID).to_pylist(), table.column(schema.EMBEDDING).to_pylist()):
            np.testing.assert_array_equal(np.asarray(embedding, np.float32), by_id[image_id][schema.EMBEDDING])


# ---------------------------------------------------------------------------
# fetch: FetchFn writes nothing itself; the store is Beam's Parquet sink
# ---------------------------------------------------------------------------
def test_a_retried_fetch_bundle_stores_every_image_once(tmp_path: Path):
    from apache_beam.io import iobase

    from pipelines import fetch, fetcher

    rows = write_image_collection(tmp_path / "images", 6, ["cat", "dog"])
    refs = [(image_id_for(r["uri"]), r["uri"]) for r in rows]
    out = tmp_path / "out"
    (out / schema.IMAGES_DIR).mkdir(parents=True)

    fetch_fn = fetch.FetchFn(fetcher.FetchConfig(copy_local=True, threads=2))
    fetch_fn.setup()
    try:
        failed_attempt = run_bundle(fetch_fn, refs, fail_after=4)
        before = _files(out)
        stored = run_bundle(fetch_fn, refs)
    finally:
        fetch_fn.teardown()
    assert failed_attempt and _files(out) == before == {}, "FetchFn must write nothing itself"
    assert sorted(r[schema.IMAGE_ID] for r in stored) == sorted(i for i, _ in refs)

    # the store: Beam's sink writes each attempt to its own temporary file, and only the files
    # of the attempt whose output was kept are renamed into place; the rest go with the temp folder
    prefix = str(out / schema.IMAGES_DIR / "store-20260101T000000-abcdef")
    sink = fetch.WriteStore(prefix).parquet_write()._sink
    init = sink.initialize_write()
    write = iobase._WriteBundleDoFn(sink)
    table = pa.Table.from_pylist(stored, schema=schema.IMAGE_STORE_SCHEMA)  # what WriteToParquet hands its sink
    run_bundle(write, [table.slice(0, 3)], init)  # the attempt that failed: its output is dropped
    results = run_bundle(write, [table], init)
    final = list(sink.finalize_write(init, results, sink.pre_finalize(init, results)))

    shards = sorted((out / schema.IMAGES_DIR).glob("store-*.parquet"))
    assert [str(p) for p in shards] == sorted(final)
    table = storage.read_parquet_dir(str(out / schema.IMAGES_DIR))
    assert sorted(table.column(schema.IMAGE_ID).to_pylist()) == sorted(i for i, _ in refs)
    assert not [p for p in (out / schema.IMAGES_DIR).iterdir() if p.name.startswith("beam-temp")]


# ---------------------------------------------------------------------------
# rank: thumbnails and ranking pages
# ---------------------------------------------------------------------------
def test_a_retried_thumbnail_bundle_leaves_one_thumbnail_and_rendition_per_image(tmp_path: Path):
    from export import site_data
    from pipelines import thumbnails

    rows = write_image_collection(tmp_path / "images", 6, ["cat", "dog"])
    elements = [(image_id_for(r["uri"]), r["uri"]) for r in rows] + [("broken0000", str(tmp_path / "missing.jpg"))]
    site = tmp_path / "site"
    fn = thumbnails.MakeThumbnailFn(str(site), 32, "rank")

    failed_attempt = run_bundle(fn, elements, fail_after=3)
    first_files = _files(site)
    retry = run_bundle(fn, elements)

    expected = {site_data.thumbnail_path(image_id) for image_id, _ in elements[:-1]}
    expected |= {site_data.view_path(image_id) for image_id, _ in elements[:-1]}
    assert set(_files(site)) == expected
    assert {k: v for k, v in _files(site).items() if k in first_files} == first_files  # rewritten alike
    assert failed_attempt == []
    assert [v for v in retry if isinstance(v, tuple)] == [("broken0000", "FileNotFoundError")]


def test_a_retried_page_bundle_leaves_the_same_pages(tmp_path: Path):
    from pipelines import ranking

    pages = [(f"data/pages/{i:02x}/p{i}.json", f'{{"page": {i}}}'.encode()) for i in range(5)]
    site = tmp_path / "site"
    fn = ranking.WritePageFn(str(site))
    run_bundle(fn, pages, fail_after=2)
    run_bundle(fn, pages)
    assert _files(site) == {path: hashlib.sha256(body).hexdigest() for path, body in pages}


# ---------------------------------------------------------------------------
# A whole build with every bundle replayed
# ---------------------------------------------------------------------------
def test_a_build_with_every_bundle_replayed_publishes_what_the_plain_build_does(quick_corpus, in_process_build: Path, tmp_path: Path):
    from pipelines import build

    out = tmp_path / "replayed"
    result = build.run(quick_corpus.build_argv(out) + ["--direct_runner_bundle_repeat", "1"])
    assert result.rank.rows_failed == 0

    assert rankings(out) == rankings(in_process_build)
    keys = {schema.IMAGE_FEATURES_DIR: schema.IMAGE_ID, schema.IMAGES_DIR: schema.IMAGE_ID, schema.TEXT_FEATURES_DIR: schema.TAG}
    for directory, key in keys.items():  # every row once, as in the plain build
        replayed = storage.read_parquet_dir(str(out / directory)).column(key).to_pylist()
        plain = storage.read_parquet_dir(str(in_process_build / directory)).column(key).to_pylist()
        assert sorted(replayed) == sorted(plain), directory
    # the site: the same files (thumbnails, pages) as the plain build's
    site, plain = out / schema.SITE_DIR, in_process_build / schema.SITE_DIR
    assert sorted(p.name for p in site.rglob("*.jpg")) == sorted(p.name for p in plain.rglob("*.jpg"))
    assert len(list(site.rglob("*.json"))) == len(list(plain.rglob("*.json")))
