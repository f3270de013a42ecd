"""A bad rank run never damages the live site: refused runs, killed publishes, old versions,
and no local path in what is published.

Each test builds a good site with the rank stage's own known inputs (tests/test_rank.py), breaks
one thing, runs rank again and checks that the site users see is the previous one, whole.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from export import publish, publish_check, site_data
from model import schema
from pipelines import cli, rank
from tests.test_rank import VECTORS, feature_rows, write_image_files, write_inputs

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def good_site(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("publish")
    out = tmp / "out"
    write_inputs(out, write_image_files(tmp / "images", list(VECTORS)))
    rank.run(["--out", str(out), "--max-failure-rate", "0.2"], save_main_session=False)
    return out


def _copy(good_site: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(good_site, out)
    return out


def _live(out: Path) -> tuple[bytes, list[str]]:
    """The live manifest's bytes and the problems of reading the live site back."""
    manifest = (out / schema.SITE_DIR / site_data.MANIFEST_PATH).read_bytes()
    return manifest, publish_check.check_site(str(out / schema.SITE_DIR), str(out / schema.RANKINGS_DIR))


def test_features_of_another_encoder_are_refused_before_ranking(good_site: Path, tmp_path: Path, capsys):
    out = _copy(good_site, tmp_path)
    before, problems = _live(out)
    assert problems == []
    # re-extracted with another encoder: 5-d features against towers that take 4
    wide = [{**r, schema.EMBEDDING: r[schema.EMBEDDING] + [0.0]} for r in feature_rows()]
    meta = {schema.META_ENCODER: b"other", schema.META_WEIGHTS: b"random", schema.META_DIM: b"5"}
    pq.write_table(
        pa.Table.from_pylist(wide, schema=schema.image_features_schema(5, meta)),
        out / schema.IMAGE_FEATURES_DIR / "features-00000-of-00001.parquet",
    )
    code = cli.main(["rank", "--out", str(out)])
    assert code == cli.EXIT_REFUSED
    assert "5-d but the matcher's image tower takes 4-d" in capsys.readouterr().err
    assert _live(out) == (before, [])


def test_a_run_where_every_image_fails_keeps_the_previous_site(good_site: Path, tmp_path: Path):
    out = _copy(good_site, tmp_path)
    before, _ = _live(out)
    versions = sorted(p.name for p in (out / schema.SITE_DIR / site_data.VERSIONS_DIR).iterdir())
    broken = [{**r, schema.EMBEDDING: [float("nan")] * 4} for r in feature_rows()]
    meta = {schema.META_ENCODER: b"tiny", schema.META_WEIGHTS: b"random", schema.META_DIM: b"4"}
    pq.write_table(
        pa.Table.from_pylist(broken, schema=schema.image_features_schema(4, meta)),
        out / schema.IMAGE_FEATURES_DIR / "features-00000-of-00001.parquet",
    )
    with pytest.raises(publish.PublishRefused, match="rows failed") as refused:
        rank.run(["--out", str(out)], save_main_session=False)
    assert refused.value.report.rows_failed == refused.value.report.rows_in - 1  # c5 has no features: skipped
    assert _live(out) == (before, [])
    # the refused run's pages are gone, the live version untouched; its report says why
    assert sorted(p.name for p in (out / schema.SITE_DIR / site_data.VERSIONS_DIR).iterdir()) == versions
    saved = json.loads((out / schema.REPORTS_DIR / "rank.json").read_text())
    assert "rows failed" in saved["details"]["refused"]


def test_a_publish_killed_before_the_pointer_switch_leaves_the_site_live(good_site: Path, tmp_path: Path, monkeypatch):
    out = _copy(good_site, tmp_path)
    before, _ = _live(out)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while publishing")

    monkeypatch.setattr(publish, "publish_site", killed)
    with pytest.raises(KeyboardInterrupt):
        rank.run(["--out", str(out), "--max-failure-rate", "0.2"], save_main_session=False)
    # every page of the new version was written, but the manifest still names the old one
    assert _live(out) == (before, [])


def test_old_versions_are_pruned_and_the_live_one_kept(good_site: Path, tmp_path: Path):
    out = _copy(good_site, tmp_path)
    for _ in range(2):
        rank.run(["--out", str(out), "--max-failure-rate", "0.2", "--keep-versions", "2", "--no-thumbnails"], save_main_session=False)
    site = out / schema.SITE_DIR
    versions = sorted(p.name for p in (site / site_data.VERSIONS_DIR).iterdir())
    live = json.loads((site / site_data.MANIFEST_PATH).read_text())["data"].rsplit("/", 1)[-1]
    assert len(versions) == 2 and versions[-1] == live
    assert publish_check.check_site(str(site), str(out / schema.RANKINGS_DIR)) == []


def test_no_local_path_is_published(good_site: Path):
    site = good_site / schema.SITE_DIR
    for path in site.rglob("*.json"):
        text = path.read_text()
        assert str(good_site.parent) not in text, path  # the build machine's folders
    rankings = pq.read_table(good_site / schema.RANKINGS_DIR).to_pylist()
    assert all(not r[schema.PUBLIC_URI].startswith("/") for r in rankings)


def test_public_links():
    links = publish.PublicLinks(roots=("/data/crawl",), base_url="https://img.example.org/c/")
    assert links.link("/data/crawl/a b/x.jpg") == "https://img.example.org/c/a%20b/x.jpg"
    assert links.display("/data/crawl/a/x.jpg") == "https://img.example.org/c/a/x.jpg"
    assert links.link("https://site.example/x.jpg") == "https://site.example/x.jpg"
    assert links.link("gs://bucket/x.jpg") is None and links.display("gs://bucket/x.jpg") == "gs://bucket/x.jpg"
    assert publish.PublicLinks(public_gcs=True).link("gs://bucket/a b.jpg") == "https://storage.googleapis.com/bucket/a%20b.jpg"
    bare = publish.PublicLinks(roots=("/data/crawl",))
    assert bare.link("/data/crawl/a/x.jpg") is None and bare.display("/data/crawl/a/x.jpg") == "a/x.jpg"
    assert bare.display("/elsewhere/secret/y.png") == "y.png"  # under no root: the name only


def test_health_gate_counts_tags_and_infinite_scores():
    report = publish.StageReport(stage="rank", rows_in=10, rows_out=10)
    rankings = pa.table({schema.TAG: ["a", "a", "b"], schema.SCORE: pa.array([1.0, np.inf, None], pa.float32())})
    health = publish.check_health(report, rankings=rankings, index_tags=4, max_failure_rate=0.05, min_tag_share=0.9)
    assert not health.healthy
    assert any("2 of 4 indexed tags" in p for p in health.problems)
    assert any("1 published scores are infinite" in p for p in health.problems)
    assert publish.check_health(report, rankings=rankings.slice(0, 1), index_tags=1, max_failure_rate=0.05, min_tag_share=0.9).healthy
