"""index on hostile manifests: tags and uris that try to escape, hide or merge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model import schema, tags
from pipelines import cli, index, manifests
from tests.conftest import write_jsonl

pytestmark = pytest.mark.faults

ZWSP, ZWJ, BOM = "\u200b", "\u200d", "\ufeff"
HOSTILE_TAGS = {
    "bell": ("b1.jpg", "cat\x07"),
    "escape": ("b2.jpg", "\x1b[31mred"),
    "dotdot": ("b3.jpg", "../x"),
    "long": ("b4.jpg", "日本" * 50),  # 100 characters, 300 bytes of UTF-8
    "too long": ("b5.jpg", "x" * 300),
}
HOSTILE_URIS = {
    "escape": "../../../../etc/passwd",
    "absolute": "/etc/hostname",
    "file url": "file:///etc/hostname",
    "sneaky": "imgs/../../outside.jpg",
}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One index run over a manifest with hostile tags and uris, invisible characters, folds and
    duplicates."""
    root = tmp_path_factory.mktemp("index-faults")
    (root / "allowed").mkdir()
    rows = [{"uri": f"imgs/ok{i}.jpg", "tag": "dog"} for i in range(20)]
    rows += [{"uri": uri, "tag": tag} for uri, tag in HOSTILE_TAGS.values()]
    rows += [{"uri": uri, "tag": "cat"} for uri in HOSTILE_URIS.values()]
    rows += [
        {"uri": "imgs/z1.jpg", "tag": f"ca{ZWSP}t"},
        {"uri": "imgs/z2.jpg", "tag": f"{BOM}cat"},
        {"uri": "imgs/z3.jpg", "tag": f"cat{ZWJ}"},
        {"uri": "imgs/f1.jpg", "tag": "Ｃａｔ"},
        {"uri": "imgs/f2.jpg", "tag": "CAT"},
        {"uri": "imgs/f3.jpg", "tag": "cat"},
        {"uri": "imgs/f3.jpg", "tag": "cat"},  # an exact duplicate row
        {"uri": "imgs/f3.jpg", "tag": " Cat "},  # a duplicate once folded
        {"uri": str(root / "allowed" / "a.jpg"), "tag": "dog"},  # outside the manifest's folder, allowed
        {"uri": "gs://bucket/crawl/a.jpg", "tag": "dog"},  # remote: not confined
    ]
    (root / "crawl").mkdir()
    manifest = write_jsonl(root / "crawl" / "manifest.jsonl", rows)
    out = root / "out"
    report = index.run(
        ["--input", str(manifest), "--out", str(out), "--allow-root", str(root / "allowed"), "--max-failure-rate", "1"],
        save_main_session=False,
    )
    images = pa.concat_tables(pq.read_table(p) for p in sorted((out / schema.IMAGES_DIR).glob("*.parquet")))
    failures = pa.concat_tables(pq.read_table(p) for p in sorted((out / schema.FAILURES_DIR).glob("index-*.parquet")))
    yield {
        "root": root,
        "manifest": manifest,
        "out": out,
        "rows": rows,
        "report": report,
        "images": images.to_pylist(),
        "failures": failures.to_pylist(),
    }


def _failure_for(indexed: dict[str, Any], needle: str) -> dict[str, Any]:
    return next(f for f in indexed["failures"] if needle in (f[schema.URI] or "") or needle in f[schema.MESSAGE])


def test_books_balance(indexed):
    report = indexed["report"]
    assert report.rows_in == len(indexed["rows"])
    assert report.rows_in == report.rows_out + report.rows_failed + report.rows_skipped


def test_control_characters_in_tags_are_failure_rows(indexed):
    for key in ("bell", "escape"):
        uri = HOSTILE_TAGS[key][0]
        assert _failure_for(indexed, uri)[schema.ERROR] == tags.REJECT_CONTROL


def test_dotdot_and_300_byte_tags_are_data(indexed):
    by_uri = {Path(r[schema.URI]).name: r[schema.TAG] for r in indexed["images"]}
    assert by_uri["b3.jpg"] == "../x"  # a tag, never a path: file names come from tag_key
    assert by_uri["b4.jpg"] == "日本" * 50
    assert _failure_for(indexed, "b5.jpg")[schema.ERROR] == tags.REJECT_TOO_LONG


@pytest.mark.parametrize("key", sorted(HOSTILE_URIS))
def test_uris_outside_the_allowed_roots_are_failure_rows(indexed, key: str):
    uri = HOSTILE_URIS[key]
    row = _failure_for(indexed, uri)
    assert row[schema.ERROR] == manifests.REJECT_OUTSIDE_ROOT and "--allow-root" in row[schema.MESSAGE]
    leaked = [r[schema.URI] for r in indexed["images"] if r[schema.URI].endswith(("/etc/passwd", "/etc/hostname", "outside.jpg"))]
    assert not leaked


def test_allowed_roots_and_remote_uris_pass(indexed):
    uris = {r[schema.URI] for r in indexed["images"]}
    assert str(indexed["root"] / "allowed" / "a.jpg") in uris
    assert "gs://bucket/crawl/a.jpg" in uris


def test_zero_width_characters_do_not_make_a_separate_tag(indexed):
    by_uri = {Path(r[schema.URI]).name: r for r in indexed["images"]}
    for name in ("z1.jpg", "z2.jpg", "z3.jpg"):
        assert by_uri[name][schema.TAG] == "cat"
        assert by_uri[name][schema.TAG_RAW] != "cat"  # the raw spelling is kept as it was
    assert indexed["report"].details[index.STRIPPED_INVISIBLE] == 3


def test_folds_of_different_spellings_are_reported(indexed):
    details = indexed["report"].details
    assert details[index.FOLDED_TAGS] == 1  # "cat" (dog is only ever spelled "dog")
    examples = details[index.FOLD_EXAMPLES]
    (cat,) = [e for e in examples if e["tag"] == "cat"]
    spellings = {"Ｃａｔ", "CAT", "cat", " Cat ", f"ca{ZWSP}t", f"{BOM}cat", f"cat{ZWJ}"}
    assert cat["count"] == len(spellings) == details[index.FOLDED_SPELLINGS]
    assert set(cat["spellings"]) <= spellings and len(cat["spellings"]) == index.MAX_SPELLINGS_SHOWN
    saved = json.loads((indexed["out"] / schema.REPORTS_DIR / "index.json").read_text())
    assert saved["details"][index.FOLD_EXAMPLES] == examples


def test_duplicate_rows_are_counted_not_repeated(indexed):
    report = indexed["report"]
    assert report.details[index.SKIPPED_DUPLICATE] == 2
    f3 = [r for r in indexed["images"] if r[schema.URI].endswith("f3.jpg")]
    assert len(f3) == 1


def test_a_manifest_of_only_bad_rows_exits_non_zero(tmp_path: Path, capsys):
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"uri": uri, "tag": "cat"} for uri in HOSTILE_URIS.values()])
    rc = cli.main(["index", "--input", str(manifest), "--out", str(tmp_path / "out")])
    assert rc == cli.EXIT_REFUSED
    assert "4 of 4 rows failed" in capsys.readouterr().err


def test_a_failed_rerun_keeps_the_previous_index_whole(tmp_path: Path, monkeypatch):
    out = tmp_path / "out"
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"uri": f"img{i}.jpg", "tag": "cat" if i % 2 else "dog"} for i in range(6)])
    index.run(["--input", str(manifest), "--out", str(out)], save_main_session=False)
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and "reports" not in p.parts)
    assert any(p.startswith(schema.IMAGES_DIR) for p in before)

    def killed(pipeline, stage):
        raise RuntimeError("worker lost")

    monkeypatch.setattr(index.common, "run_pipeline", killed)
    write_jsonl(manifest, [{"uri": "other.jpg", "tag": "bird"}])
    with pytest.raises(RuntimeError, match="worker lost"):
        index.run(["--input", str(manifest), "--out", str(out)], save_main_session=False)
    after = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and "reports" not in p.parts and not p.parts[len(out.parts)].startswith(".staging"))
    assert after == before  # the previous images table, inverted index and failures, untouched
    monkeypatch.undo()
    report = index.run(["--input", str(manifest), "--out", str(out)], save_main_session=False)
    images = pq.read_table(out / schema.IMAGES_DIR).to_pylist()
    assert report.rows_out == 1 and [r[schema.TAG] for r in images] == ["bird"]
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]
