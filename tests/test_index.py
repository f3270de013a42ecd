"""The index stage: manifest formats, tag normalisation, duplicates, failures, accounting, outputs."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from model import schema, tags
from pipelines import common, index, manifests
from tests.conftest import write_jsonl


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def read_rows(manifest: Path | str, fmt: str, images_dir: str | None = None) -> list[dict]:
    fn = manifests.ReadManifestFn(fmt, images_dir)
    fn.setup()
    return list(fn.process(str(manifest)))


def normalize(row: dict) -> list:
    return list(index.NormalizeTagFn().process(row))


def read_dir(out: Path, rel: str) -> pa.Table:
    files = sorted((out / rel).glob("*.parquet"))
    assert files, f"nothing under {rel}"
    return pa.concat_tables(pq.read_table(f) for f in files)


def read_failures(out: Path) -> list[dict]:
    files = sorted((out / schema.FAILURES_DIR).glob(f"{index.STAGE}-*.parquet"))
    return pa.concat_tables(pq.read_table(f) for f in files).to_pylist() if files else []


def assert_accounted(report) -> None:
    assert report.rows_in == report.rows_out + report.rows_failed + report.rows_skipped


def run_index(*args: str | Path) -> common.StageReport:
    return index.run([str(a) for a in args], save_main_session=False)


# ---------------------------------------------------------------------------
# tier 1: helpers and DoFns called directly
# ---------------------------------------------------------------------------
def test_detect_format(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "m.jsonl", [{"uri": "a.jpg", "tag": "cat"}])
    write_jsonl(tmp_path / "p.json", [{"pic_id": "1", "tags_term": "cat"}])
    (tmp_path / "bad_first.jsonl").write_text('not json\n{"pic_id": 1, "tags_term": "x"}\n')
    (tmp_path / "m.csv").write_text("uri,tag\na.jpg,cat\n")
    pq.write_table(pa.table({"uri": ["a.jpg"], "tag": ["cat"]}), tmp_path / "m.parquet")
    (tmp_path / "folder" / "cat").mkdir(parents=True)
    (tmp_path / "m.txt").write_text("?")

    assert manifests.detect_format(str(tmp_path / "m.jsonl")) == manifests.FORMAT_JSONL
    assert manifests.detect_format(str(tmp_path / "p.json")) == manifests.FORMAT_PROTOTYPE
    assert manifests.detect_format(str(tmp_path / "bad_first.jsonl")) == manifests.FORMAT_PROTOTYPE
    assert manifests.detect_format(str(tmp_path / "m.csv")) == manifests.FORMAT_CSV
    assert manifests.detect_format(str(tmp_path / "m.parquet")) == manifests.FORMAT_PARQUET
    assert manifests.detect_format(str(tmp_path / "folder")) == manifests.FORMAT_FOLDER
    with pytest.raises(ValueError, match="cannot tell"):
        manifests.detect_format(str(tmp_path / "m.txt"))


def test_resolve_uri() -> None:
    assert manifests.resolve_uri("a/b.jpg", "/data/crawl") == "/data/crawl/a/b.jpg"
    assert manifests.resolve_uri("./b.jpg", "/data/crawl") == "/data/crawl/b.jpg"
    assert manifests.resolve_uri("../x/b.jpg", "/data/crawl") == "/data/x/b.jpg"
    assert manifests.resolve_uri("/abs/b.jpg", "/data/crawl") == "/abs/b.jpg"
    assert manifests.resolve_uri("gs://bucket/b.jpg", "/data/crawl") == "gs://bucket/b.jpg"
    assert manifests.resolve_uri("b.jpg", "gs://bucket/crawl") == "gs://bucket/crawl/b.jpg"


def test_read_jsonl_keeps_positions_and_records_malformed_lines(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(
        b'{"uri": "a.jpg", "tag": "Cat"}\n'
        b"\n"  # blank lines are not rows
        b"{broken\n"
        b'["a list"]\n'
        b'{"uri": "b.jpg"}\n'
        b'{"uri": "c.jpg", "tag": 7}\n'
        b'{"uri": "", "tag": "cat"}\n'
        b"\xff\xfe not utf-8\n"
        b'{"uri": "/abs/d.jpg", "tag": ""}\n'
    )
    rows = read_rows(manifest, manifests.FORMAT_JSONL)
    assert [r[schema.ORDINAL] for r in rows] == list(range(8))
    assert rows[0] == {schema.ORDINAL: 0, schema.URI: str(tmp_path / "a.jpg"), schema.TAG_RAW: "Cat", manifests.ROW_SOURCE: "a.jpg"}
    errors = [r.get("error") for r in rows]
    assert errors == [
        None,
        manifests.REJECT_BAD_JSON,
        manifests.REJECT_NOT_AN_OBJECT,
        manifests.REJECT_MISSING_FIELD,
        manifests.REJECT_WRONG_TYPE,
        manifests.REJECT_MISSING_FIELD,
        manifests.REJECT_BAD_ENCODING,
        None,  # an empty tag is the tag check's business, not the reader's
    ]
    assert "line 3" in rows[1]["message"] and "{broken" in rows[1]["message"]
    assert "missing tag" in rows[3]["message"]


def test_read_csv_with_quoted_fields(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "uri", "tag"])
        w.writerow([1, "imgs/a, b.jpg", 'red "sports" car'])
        w.writerow([2, "/abs/c.jpg", "two\nlines"])
        w.writerow([3, "d.jpg"])  # short row: tag missing
    rows = read_rows(manifest, manifests.FORMAT_CSV)
    assert rows[0] == {
        schema.ORDINAL: 0,
        schema.URI: str(tmp_path / "imgs/a, b.jpg"),
        schema.TAG_RAW: 'red "sports" car',
        manifests.ROW_SOURCE: "imgs/a, b.jpg",
    }
    assert rows[1][schema.TAG_RAW] == "two\nlines" and rows[1][schema.URI] == "/abs/c.jpg"
    assert rows[2]["error"] == manifests.REJECT_MISSING_FIELD and rows[2][schema.ORDINAL] == 2


def test_read_csv_survives_a_malformed_record(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    # a field over the csv module's size limit makes the reader raise for that record only
    manifest.write_text("uri,tag\na.jpg,cat\nb.jpg," + "x" * (csv.field_size_limit() + 10) + "\nc.jpg,dog\n")
    rows = read_rows(manifest, manifests.FORMAT_CSV)
    assert [r.get("error") for r in rows] == [None, manifests.REJECT_BAD_CSV, None]
    assert rows[2][schema.TAG_RAW] == "dog" and rows[2][schema.ORDINAL] == 2


def test_read_gzipped_manifests(tmp_path: Path) -> None:
    jsonl = tmp_path / "m.jsonl.gz"
    jsonl.write_bytes(gzip.compress(b'{"uri": "a.jpg", "tag": "Cat"}\n{bad\n'))
    csv_gz = tmp_path / "m.csv.gz"
    # a spreadsheet's BOM and a quoted field across two lines
    csv_gz.write_bytes(gzip.compress('\ufeffuri,tag\nb.jpg,"two\nlines"\nc.jpg,dog\n'.encode("utf-8")))

    assert manifests.detect_format(str(jsonl)) == manifests.FORMAT_JSONL
    assert manifests.detect_format(str(csv_gz)) == manifests.FORMAT_CSV
    rows = read_rows(jsonl, manifests.FORMAT_JSONL)
    assert rows[0][schema.TAG_RAW] == "Cat" and rows[1]["error"] == manifests.REJECT_BAD_JSON
    rows = read_rows(csv_gz, manifests.FORMAT_CSV)
    assert [(Path(r[schema.URI]).name, r[schema.TAG_RAW], r[schema.ORDINAL]) for r in rows] == [
        ("b.jpg", "two\nlines", 0),
        ("c.jpg", "dog", 1),
    ]


def test_read_parquet(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table({"uri": ["a.jpg", None, "c.jpg"], "tag": ["Cat", "dog", None], "extra": [1, 2, 3]}),
        manifest,
        row_group_size=2,  # rows span two row groups: positions must run on across them
    )
    rows = read_rows(manifest, manifests.FORMAT_PARQUET)
    assert rows[0] == {schema.ORDINAL: 0, schema.URI: str(tmp_path / "a.jpg"), schema.TAG_RAW: "Cat", manifests.ROW_SOURCE: "a.jpg"}
    assert [r.get("error") for r in rows[1:]] == [manifests.REJECT_MISSING_FIELD] * 2
    assert [r[schema.ORDINAL] for r in rows] == [0, 1, 2]


def test_read_prototype_resolves_pic_ids(tmp_path: Path) -> None:
    images = tmp_path / "pics"
    images.mkdir()
    for name in ["1001.jpg", "1002.png", "1003.jpeg", "10030.jpg"]:
        (images / name).write_bytes(b"x")
    manifest = write_jsonl(
        tmp_path / "proto.json",
        [
            {"pic_id": "1001", "tags_term": "Cat"},
            {"pic_id": 1002, "tags_term": "dog"},  # the prototype's ids were often numbers
            {"pic_id": "1003.jpeg", "tags_term": "cat"},
            {"pic_id": "9999", "tags_term": "cat"},  # no such file
            {"pic_id": "1001", "tags": "cat"},  # wrong key
            {"pic_id": True, "tags_term": "cat"},
        ],
    )
    rows = read_rows(manifest, manifests.FORMAT_PROTOTYPE, str(images))
    assert rows[0][schema.URI] == str(images / "1001.jpg")
    assert rows[1][schema.URI] == str(images / "1002.png")
    assert rows[2][schema.URI] == str(images / "1003.jpeg")
    assert rows[3]["error"] == manifests.REJECT_UNRESOLVED_PIC_ID and "9999" in rows[3]["message"]
    assert rows[4]["error"] == manifests.REJECT_MISSING_FIELD
    assert rows[5]["error"] == manifests.REJECT_WRONG_TYPE


def test_read_folder_in_sorted_path_order(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for rel in ["dog/b.jpg", "cat/z.png", "cat/a.jpg", "cat/.DS_Store", "Fire Truck/1.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "loose.jpg").write_bytes(b"x")  # not inside a tag folder
    rows = read_rows(root, manifests.FORMAT_FOLDER)
    assert [(r[schema.ORDINAL], r[schema.TAG_RAW], Path(r[schema.URI]).name) for r in rows] == [
        (0, "Fire Truck", "1.jpg"),
        (1, "cat", "a.jpg"),
        (2, "cat", "z.png"),
        (3, "dog", "b.jpg"),
    ]


def test_normalize_tag_fn_good_row() -> None:
    (out,) = normalize({schema.ORDINAL: 4, schema.URI: "/x/a.jpg", schema.TAG_RAW: "  Fire   TRUCK "})
    image_id = tags.image_id_for("/x/a.jpg")
    assert out == {
        schema.IMAGE_ID: image_id,
        schema.URI: "/x/a.jpg",
        schema.TAG: "fire truck",
        schema.TAG_RAW: "  Fire   TRUCK ",
        schema.SPLIT: tags.split_for(image_id),
        schema.ORDINAL: 4,
    }


@pytest.mark.parametrize(
    "raw, reason",
    [("", tags.REJECT_EMPTY), ("   ", tags.REJECT_EMPTY), ("?!-", tags.REJECT_NO_WORD), ("w" * 500, tags.REJECT_TOO_LONG)],
)
def test_normalize_tag_fn_rejects_bad_tags(raw: str, reason: str) -> None:
    (out,) = normalize({schema.ORDINAL: 0, schema.URI: "/x/a.jpg", schema.TAG_RAW: raw})
    assert isinstance(out, beam.pvalue.TaggedOutput) and out.tag == index.NormalizeTagFn.FAILURES
    failure = out.value
    assert failure[schema.ERROR] == reason
    assert failure[schema.STAGE] == index.STAGE
    assert failure[schema.URI] == "/x/a.jpg" and failure[schema.IMAGE_ID] == tags.image_id_for("/x/a.jpg")
    assert len(failure[schema.MESSAGE]) < 200  # the offending tag is shown, truncated
    assert set(failure) == set(schema.FAILURES_SCHEMA.names)


def test_first_by_ordinal_combine() -> None:
    fn = index.FirstByOrdinalFn()
    rows = [{schema.ORDINAL: o} for o in (5, 2, 9)]
    acc_a = fn.add_input(fn.add_input(fn.create_accumulator(), rows[0]), rows[1])
    acc_b = fn.add_input(fn.create_accumulator(), rows[2])
    best, n = fn.extract_output(fn.merge_accumulators([acc_b, fn.create_accumulator(), acc_a]))
    assert best == {schema.ORDINAL: 2} and n == 3


# ---------------------------------------------------------------------------
# tier 2: composites under TestPipeline
# ---------------------------------------------------------------------------
def _image(uri: str, tag: str, raw: str, ordinal: int, source_uri: str | None = None) -> dict:
    # ids come from the uri as the manifest writes it (relative ones stay relative)
    image_id = tags.image_id_for(source_uri or uri)
    return {
        schema.IMAGE_ID: image_id,
        schema.URI: uri,
        schema.TAG: tag,
        schema.TAG_RAW: raw,
        schema.SPLIT: tags.split_for(image_id),
        schema.ORDINAL: ordinal,
    }


def test_composites_under_test_pipeline(tmp_path: Path) -> None:
    a, b = str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")
    manifest = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"uri": "a.jpg", "tag": "Cat"},
            {"uri": "b.jpg", "tag": "dog"},
            {"uri": "a.jpg", "tag": " CAT "},  # duplicate of row 0 once normalised
            {"uri": "a.jpg", "tag": "dog"},  # same image, another tag: a second row
            {"uri": "c.jpg", "tag": "***"},
        ],
    )
    expected_images = [_image(a, "cat", "Cat", 0, "a.jpg"), _image(b, "dog", "dog", 1, "b.jpg"), _image(a, "dog", "dog", 3, "a.jpg")]
    id_a, id_b = tags.image_id_for("a.jpg"), tags.image_id_for("b.jpg")
    expected_inverted = [
        {schema.TAG: "cat", schema.COUNT: 1, schema.IMAGE_IDS: [id_a], schema.ORDINAL: 0},
        {schema.TAG: "dog", schema.COUNT: 2, schema.IMAGE_IDS: [id_b, id_a], schema.ORDINAL: 1},
    ]
    with test_pipeline.TestPipeline(runner=common.LOCAL_RUNNER) as p:
        outputs = p | manifests.ReadManifest(str(manifest), manifests.FORMAT_JSONL) | index.IndexRows()
        assert_that(outputs["images"], equal_to(expected_images), label="Images")
        assert_that(
            outputs["failures"] | beam.Map(lambda f: (f[schema.URI], f[schema.ERROR])),
            equal_to([(str(tmp_path / "c.jpg"), tags.REJECT_NO_WORD)]),
            label="Failures",
        )
        assert_that(outputs["images"] | index.InvertIndex(), equal_to(expected_inverted), label="Inverted")


# ---------------------------------------------------------------------------
# tier 3: whole stage via run([...]) into tmp_path
# ---------------------------------------------------------------------------
def test_run_jsonl_end_to_end(tmp_path: Path, image_collection) -> None:
    manifest, rows = image_collection
    extra = [
        dict(rows[0]),  # exact duplicate
        {"uri": rows[1]["uri"], "tag": "  DOG "},  # duplicate after normalisation (rows[1] is "dog")
        {"uri": rows[2]["uri"], "tag": "cat"},  # same image under a second tag
        {"uri": str(tmp_path / "x.jpg"), "tag": ""},
        {"uri": str(tmp_path / "y.jpg"), "tag": "z" * 300},
        {"uri": str(tmp_path / "w.jpg"), "tag": "#!?"},
    ]
    with manifest.open("a") as f:
        for r in extra:
            f.write(json.dumps(r) + "\n")
        f.write("{oops\n")
    out = tmp_path / "out"
    # 4 of 33 rows fail on purpose: over the default --max-failure-rate
    report = run_index("--input", manifest, "--out", out, "--max-failure-rate", "1")

    n_manifest = len(rows) + len(extra) + 1
    assert report.stage == index.STAGE
    assert report.rows_in == n_manifest
    assert report.rows_skipped == 2 and report.details[index.SKIPPED_DUPLICATE] == 2
    assert report.rows_failed == 4
    for reason in (tags.REJECT_EMPTY, tags.REJECT_TOO_LONG, tags.REJECT_NO_WORD, manifests.REJECT_BAD_JSON):
        assert report.details[f"failed_{reason}"] == 1
    assert report.rows_out == len(rows) + 1
    assert_accounted(report)

    images = read_dir(out, schema.IMAGES_DIR)
    assert images.schema.equals(schema.IMAGES_SCHEMA)
    assert images.num_rows == report.rows_out
    assert all(p.name.startswith("images-") and "-of-" in p.name for p in (out / schema.IMAGES_DIR).iterdir())
    by_key = {(r[schema.URI], r[schema.TAG]): r for r in images.to_pylist()}
    assert by_key[(rows[1]["uri"], "dog")][schema.ORDINAL] == 1  # the first of the duplicates kept
    assert by_key[(rows[2]["uri"], "cat")][schema.IMAGE_ID] == by_key[(rows[2]["uri"], rows[2]["tag"])][schema.IMAGE_ID]

    failures = read_failures(out)
    assert sorted(f[schema.ERROR] for f in failures) == sorted(
        [tags.REJECT_EMPTY, tags.REJECT_TOO_LONG, tags.REJECT_NO_WORD, manifests.REJECT_BAD_JSON]
    )
    too_long = next(f for f in failures if f[schema.ERROR] == tags.REJECT_TOO_LONG)
    assert "zzzz" in too_long[schema.MESSAGE] and len(too_long[schema.MESSAGE]) < 200

    # inverted index: Parquet and the prototype's JSON agree, image ids in manifest order
    inverted = read_dir(out, schema.TAG2PICID_DIR)
    assert inverted.schema.equals(schema.INVERTED_INDEX_SCHEMA)
    tag2picid = json.loads((out / schema.TAG2PICID_JSON).read_text())
    assert {r[schema.TAG]: r[schema.IMAGE_IDS] for r in inverted.to_pylist()} == tag2picid
    ordered = sorted(images.to_pylist(), key=lambda r: r[schema.ORDINAL])
    for tag, ids in tag2picid.items():
        assert ids == [r[schema.IMAGE_ID] for r in ordered if r[schema.TAG] == tag]
    # tags in the order their first image appears
    first_seen = list(dict.fromkeys(r[schema.TAG] for r in ordered))
    assert list(tag2picid) == first_seen
    assert json.loads((out / schema.REPORTS_DIR / "index.json").read_text())["rows_in"] == n_manifest


def test_rerun_gives_stable_ids_and_replaces_stale_shards(tmp_path: Path, image_collection) -> None:
    manifest, _ = image_collection
    out = tmp_path / "out"
    run_index("--input", manifest, "--out", out)
    first = read_dir(out, schema.IMAGES_DIR).sort_by(schema.ORDINAL)
    stale = [
        out / schema.IMAGES_DIR / "images-00003-of-00004.parquet",
        out / schema.TAG2PICID_DIR / "tag2picid-00001-of-00002.parquet",
        out / schema.FAILURES_DIR / "index-00007-of-00009.parquet",
    ]
    for path in stale:
        pq.write_table(first.slice(0, 1), path)
    other_stage = out / schema.FAILURES_DIR / "extract-images-00000-of-00001.parquet"
    other_stage.write_bytes(b"another stage's file")

    run_index("--input", manifest, "--out", out)
    second = read_dir(out, schema.IMAGES_DIR).sort_by(schema.ORDINAL)
    assert second.equals(first)
    assert not any(p.exists() for p in stale)
    assert other_stage.exists()


def test_run_prototype_format_with_images_dir(tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    pics.mkdir()
    for name in ["11.jpg", "12.png", "13.jpg"]:
        (pics / name).write_bytes(b"x")
    manifest = write_jsonl(
        tmp_path / "tag_pic.json",
        [
            {"pic_id": "11", "tags_term": "Sun"},
            {"pic_id": 12, "tags_term": "moon"},
            {"pic_id": "13.jpg", "tags_term": "sun"},
            {"pic_id": "404", "tags_term": "sun"},
        ],
    )
    out = tmp_path / "out"
    report = run_index("--input", manifest, "--out", out, "--images-dir", pics, "--max-failure-rate", "1")
    assert report.details["format"] == manifests.FORMAT_PROTOTYPE
    assert (report.rows_in, report.rows_out, report.rows_failed) == (4, 3, 1)
    assert_accounted(report)
    images = read_dir(out, schema.IMAGES_DIR).to_pylist()
    assert sorted((Path(r[schema.URI]).name, r[schema.TAG]) for r in images) == [
        ("11.jpg", "sun"),
        ("12.png", "moon"),
        ("13.jpg", "sun"),
    ]
    (failure,) = read_failures(out)
    assert failure[schema.ERROR] == manifests.REJECT_UNRESOLVED_PIC_ID
    tag2picid = json.loads((out / schema.TAG2PICID_JSON).read_text())
    assert tag2picid == {
        "sun": [tags.image_id_for(str(pics / "11.jpg")), tags.image_id_for(str(pics / "13.jpg"))],
        "moon": [tags.image_id_for(str(pics / "12.png"))],
    }


def test_run_csv_and_parquet_agree(tmp_path: Path) -> None:
    rows = [("imgs/a.jpg", "Red, Car"), ("imgs/b.jpg", "tree"), ("imgs/a.jpg", "red,  car")]
    csv_path = tmp_path / "m.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uri", "tag"])
        w.writerows(rows)
    parquet_path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": [u for u, _ in rows], "tag": [t for _, t in rows]}), parquet_path)

    tables = []
    for manifest, fmt in [(csv_path, manifests.FORMAT_CSV), (parquet_path, manifests.FORMAT_PARQUET)]:
        out = tmp_path / f"out-{fmt}"
        report = run_index("--input", manifest, "--out", out)
        assert report.details["format"] == fmt
        assert (report.rows_in, report.rows_out, report.rows_skipped, report.rows_failed) == (3, 2, 1, 0)
        assert read_failures(out) == []
        tables.append(read_dir(out, schema.IMAGES_DIR).sort_by(schema.ORDINAL).to_pylist())
    assert tables[0] == tables[1]
    assert [(r[schema.URI], r[schema.TAG]) for r in tables[0]] == [
        (str(tmp_path / "imgs/a.jpg"), "red, car"),
        (str(tmp_path / "imgs/b.jpg"), "tree"),
    ]


def test_run_folder_manifest_with_test_pipeline(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for rel in ["Sun/1.jpg", "sun/2.jpg", "moon/3.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    out = tmp_path / "out"
    report = index.run(["--input", str(root), "--out", str(out)], test_pipeline=test_pipeline.TestPipeline(runner=common.LOCAL_RUNNER))
    assert report.details["format"] == manifests.FORMAT_FOLDER
    assert (report.rows_in, report.rows_out) == (3, 3)
    tag2picid = json.loads((out / schema.TAG2PICID_JSON).read_text())
    assert tag2picid == {
        "sun": [tags.image_id_for(str(root / "Sun/1.jpg")), tags.image_id_for(str(root / "sun/2.jpg"))],
        "moon": [tags.image_id_for(str(root / "moon/3.png"))],
    }
    images = read_dir(out, schema.IMAGES_DIR).to_pylist()
    assert {r[schema.TAG_RAW] for r in images} == {"Sun", "sun", "moon"}


def test_default_runner_is_in_process_but_a_runner_flag_wins() -> None:
    # DirectRunner would try Prism first, which downloads a binary
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    assert common.with_default_runner(PipelineOptions([])).view_as(StandardOptions).runner == common.LOCAL_RUNNER
    named = common.with_default_runner(PipelineOptions(["--runner", "DataflowRunner"]))
    assert named.view_as(StandardOptions).runner == "DataflowRunner"


def test_relative_manifests_keep_their_ids_wherever_the_collection_lives(tmp_path: Path) -> None:
    ids = []
    for place in ("here", "there/deeper"):
        folder = tmp_path / place
        folder.mkdir(parents=True)
        manifest = write_jsonl(folder / "m.jsonl", [{"uri": "imgs/a.jpg", "tag": "cat"}, {"uri": "/abs/b.jpg", "tag": "dog"}])
        out = tmp_path / place / "out"
        # /abs is outside the manifest's folder: allowed explicitly
        index.run(["--input", str(manifest), "--out", str(out), "--allow-root", "/abs"], save_main_session=False)
        table = pq.read_table(next((out / schema.IMAGES_DIR).glob("*.parquet"))).sort_by(schema.ORDINAL)
        ids.append(table.column(schema.IMAGE_ID).to_pylist())
        # the uri column is resolved for reading; the id is the manifest's own uri
        assert table.column(schema.URI).to_pylist()[0] == str(folder / "imgs/a.jpg")
    assert ids[0] == ids[1] == [tags.image_id_for("imgs/a.jpg"), tags.image_id_for("/abs/b.jpg")]
