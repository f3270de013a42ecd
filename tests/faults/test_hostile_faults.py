"""Hostile folders and manifests, second pass: symbolic links out of the allowed roots, uris of
other schemes, emoji tags, and a refusal that names the flag that fixes it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model import neighbours, schema, tags
from model.tags import image_id_for
from pipelines import cli, extract_text, index, manifests, thumbnails
from pipelines import extract_images as ei
from tests import builders
from tests.conftest import make_keyed_vectors, write_jsonl
from tests.faults import conftest as fc

pytestmark = pytest.mark.faults

EMOJI = "👩🏽\u200d💻"  # woman, skin tone, ZERO WIDTH JOINER, laptop: one grapheme cluster
SCHEMES = {
    "ftp": "ftp://example.com/a.jpg",
    "javascript": "javascript:alert(1)",
    "data": "data:image/png;base64,iVBORw0KGgo=",
    "mailto": "mailto:someone@example.com",
}


def _read(folder: Path, pattern: str) -> list[dict]:
    files = sorted(folder.glob(pattern))
    return pa.concat_tables(pq.read_table(p) for p in files).to_pylist() if files else []


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One index run: links that stay inside and that leave the folder, other schemes, emoji."""
    root = tmp_path_factory.mktemp("hostile")
    outside = root / "outside.jpg"
    outside.write_bytes(fc.good_jpeg(9))
    crawl = root / "crawl"
    (crawl / "images").mkdir(parents=True)
    for i in range(6):
        (crawl / "images" / f"ok{i}.jpg").write_bytes(fc.good_jpeg(i))
    os.symlink(outside, crawl / "images" / "escape.jpg")  # a link whose target leaves the root
    os.symlink("/etc/passwd", crawl / "images" / "passwd.jpg")
    os.symlink(root, crawl / "images" / "up")  # a folder link: images/up/outside.jpg
    os.symlink(crawl / "images" / "ok0.jpg", crawl / "images" / "inside.jpg")  # stays inside: fine
    rows = [{"uri": f"images/ok{i}.jpg", "tag": "dog"} for i in range(1, 6)]
    rows += [
        {"uri": "images/escape.jpg", "tag": "dog"},
        {"uri": "images/passwd.jpg", "tag": "dog"},
        {"uri": "images/up/outside.jpg", "tag": "dog"},
        {"uri": "images/inside.jpg", "tag": EMOJI},
        {"uri": "images/ok0.jpg", "tag": EMOJI},
        {"uri": "images/ok1.jpg", "tag": "👍👍"},  # two emoji: not one tag-sized picture
    ]
    rows += [{"uri": uri, "tag": "cat"} for uri in SCHEMES.values()]
    rows += [{"uri": "https://example.com/b.jpg", "tag": "cat"}, {"uri": "gs://bucket/c.jpg", "tag": "cat"}]
    manifest = write_jsonl(crawl / "manifest.jsonl", rows)
    out = root / "out"
    report = index.run(["--input", str(manifest), "--out", str(out), "--max-failure-rate", "1"], save_main_session=False)
    yield {
        "root": root,
        "out": out,
        "report": report,
        "images": _read(out / schema.IMAGES_DIR, "*.parquet"),
        "failures": _read(out / schema.FAILURES_DIR, "index-*.parquet"),
        "outside": outside,
    }


def _failure(indexed: dict[str, Any], needle: str) -> dict[str, Any]:
    return next(f for f in indexed["failures"] if needle in (f[schema.URI] or "") or needle in f[schema.MESSAGE])


# ---------------------------------------------------------------------------
# 2. symbolic links
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["escape.jpg", "passwd.jpg", "up/outside.jpg"])
def test_a_link_out_of_the_allowed_root_is_a_failure_row_with_its_reason(indexed, name: str):
    failure = _failure(indexed, f"images/{name}")
    assert failure[schema.ERROR] == manifests.REJECT_OUTSIDE_ROOT
    assert "symbolic link to" in failure[schema.MESSAGE] and "outside the allowed roots" in failure[schema.MESSAGE]
    assert not any(r[schema.URI].endswith(name) for r in indexed["images"])


def test_a_link_that_stays_inside_the_root_is_indexed(indexed):
    assert any(r[schema.URI].endswith("images/inside.jpg") for r in indexed["images"])


def test_extract_images_never_reads_a_link_that_leaves_the_recorded_roots(indexed, tmp_path: Path):
    """A link made (or changed) after index: extract-images checks the roots index recorded."""
    out = tmp_path / "out"
    out.mkdir()
    (out / schema.INDEX_SOURCE_JSON).parent.mkdir(parents=True)
    (out / schema.INDEX_SOURCE_JSON).write_bytes((indexed["out"] / schema.INDEX_SOURCE_JSON).read_bytes())
    images = indexed["root"] / "crawl" / "images"
    late = images / "late.jpg"
    os.symlink(indexed["outside"], late)
    try:
        builders.write_images(out, builders.image_rows([(str(late), "dog"), (str(images / "ok2.jpg"), "dog")]))
        report = fc.run_extract(out, "--max-failure-rate", "1")
    finally:
        late.unlink()
    failures = fc.failures_by_uri(out, ei.STAGE)
    assert failures[str(late)][schema.ERROR] == manifests.REJECT_OUTSIDE_ROOT
    assert "symbolic link to" in failures[str(late)][schema.MESSAGE]
    assert report.rows_out == 1


def test_rank_never_makes_a_thumbnail_of_a_link_out_of_the_roots(indexed, tmp_path: Path):
    roots = manifests.recorded_roots(str(indexed["out"]))
    link = indexed["root"] / "crawl" / "images" / "escape.jpg"
    fn = thumbnails.MakeThumbnailFn(str(tmp_path / "site"), 64, "rank", roots)
    out = list(fn.process(("id1", str(link), None)))
    failure = next(o.value for o in out if getattr(o, "tag", None) == thumbnails.FAILURES)
    assert failure[schema.ERROR] == manifests.REJECT_OUTSIDE_ROOT and "symbolic link to" in failure[schema.MESSAGE]
    assert not (tmp_path / "site").exists()  # nothing of the outside file was published
    inside = indexed["root"] / "crawl" / "images" / "inside.jpg"
    assert not [o for o in fn.process(("id2", str(inside), None)) if getattr(o, "tag", None) == thumbnails.FAILURES]


# ---------------------------------------------------------------------------
# 6. schemes
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_other_schemes_are_refused_at_index(indexed, name: str):
    failure = _failure(indexed, SCHEMES[name][:12])
    assert failure[schema.ERROR] == manifests.REJECT_UNSUPPORTED_SCHEME
    assert f"the scheme '{name}'" in failure[schema.MESSAGE]


def test_local_gs_and_https_uris_pass(indexed):
    uris = {r[schema.URI] for r in indexed["images"]}
    assert {"https://example.com/b.jpg", "gs://bucket/c.jpg"} <= uris


# ---------------------------------------------------------------------------
# 7. emoji tags
# ---------------------------------------------------------------------------
def test_a_tag_that_is_one_emoji_sequence_is_kept_whole(indexed):
    emoji_rows = [r for r in indexed["images"] if r[schema.TAG] == EMOJI]
    assert len(emoji_rows) == 2  # the joiner kept: not 👩🏽💻 (two pictures), not dropped
    assert _failure(indexed, "👍👍")[schema.ERROR] == tags.REJECT_NO_WORD


@pytest.mark.parametrize("raw", ["🐱", "❤️", "🇫🇷", "👍🏿", "❤️\u200d🔥", EMOJI])
def test_one_emoji_is_a_usable_tag(raw: str):
    assert tags.tag_problem(tags.normalize_tag(raw)) is None


def test_an_emoji_tag_is_oov_and_ranked_by_the_mean_feature(indexed, tmp_path: Path):
    out = tmp_path / "out"
    rows = [r for r in indexed["images"] if r[schema.URI].startswith("/")]
    builders.write_images(out, rows)
    vectors = tmp_path / "v.txt"
    make_keyed_vectors(["dog", "cat"], dim=4).save_word2vec_format(str(vectors), binary=False)
    extract_text.run(["--out", str(out), "--word-vectors", str(vectors)], save_main_session=False)
    text = {r[schema.TAG]: r[schema.STATUS] for r in _read(out / schema.TEXT_FEATURES_DIR, "text-*.parquet")}
    assert text[EMOJI] == schema.TEXT_OOV and text["dog"] == schema.TEXT_OK
    # without a word vector, rank orders an oov tag by its images' cosine to the tag's mean feature
    # (neighbours' signal): the emoji tag gets it like any other tag
    rng = np.random.default_rng(0)
    builders.write_image_features(out, {r[schema.IMAGE_ID]: rng.normal(size=8) for r in rows}, encoder="tiny")
    neighbours.run(["--out", str(out), "--k", "2"])
    signals = [r for r in _read(out / schema.SIGNALS_DIR, "signals-*.parquet") if r[schema.TAG] == EMOJI]
    assert len(signals) == 2 and all(r[schema.MEAN_FEATURE] is not None for r in signals)


# ---------------------------------------------------------------------------
# Also: a refusal names the flag that fixes it
# ---------------------------------------------------------------------------
def test_a_manifest_of_paths_outside_its_folder_names_the_allow_root_it_needs(tmp_path: Path, capsys):
    photos = tmp_path / "photos" / "2024"
    photos.mkdir(parents=True)
    rows = []
    for i in range(5):
        (photos / f"{i}.jpg").write_bytes(fc.good_jpeg(i))
        rows.append({"uri": str(photos / f"{i}.jpg"), "tag": "cat"})
    (tmp_path / "lists").mkdir()
    manifest = write_jsonl(tmp_path / "lists" / "m.jsonl", rows)

    rc = cli.main(["index", "--input", str(manifest), "--out", str(tmp_path / "out")])

    assert rc == cli.EXIT_REFUSED
    err = capsys.readouterr().err
    assert "5 of the 5 failures are OutsideAllowedRoot" in err
    assert f"--allow-root {photos}" in err
    assert "raise --max-failure-rate" not in err  # accepting the failures would publish nothing
    # and the folder it names is the one that works
    report = index.run(
        ["--input", str(manifest), "--out", str(tmp_path / "out"), "--allow-root", str(photos)], save_main_session=False
    )
    assert report.rows_out == 5 and report.rows_failed == 0
    assert image_id_for(rows[0]["uri"]) in {r[schema.IMAGE_ID] for r in _read(tmp_path / "out" / schema.IMAGES_DIR, "*.parquet")}
