"""Stage `index`: a manifest of (image uri, crawled tag) rows -> the images table and the inverted index.

Reads JSON lines (`{"uri", "tag"}`), the original prototype's JSON lines (`{"pic_id", "tags_term"}` plus
`--images-dir`), CSV and Parquet with `uri`/`tag` columns, or a folder laid out `<tag>/<image file>`.
Tags are normalised (model.tags), unusable tags and malformed rows go to failures/, duplicate
(uri, tag) rows are dropped keeping the first. Writes, under OUT:

  index/images/images-SSSSS-of-NNNNN.parquet      schema.IMAGES_SCHEMA
  index/tag2picid/tag2picid-SSSSS-of-NNNNN.parquet  schema.INVERTED_INDEX_SCHEMA
  index/tag2picid.json                            {tag: [image_id, ...]} in index order
  index/tag_folds.json                            tags that several raw spellings folded into
  failures/index-SSSSS-of-NNNNN.parquet           schema.FAILURES_SCHEMA

Local and relative uris must stay under an allowed root (the manifest's folder, --images-dir
and every --allow-root): `../../etc/passwd` or `/etc/hostname` in a crawled manifest fail with
OutsideAllowedRoot instead of being read. Remote uris (gs://, http(s)://) are not confined.
Tag folds that merge different raw spellings ("Ｃａｔ", "CAT", "cat") are counted in the report
(folded_tags, folded_spellings) with a few examples; invisible format characters are removed
before folding (model.tags). Too many failed rows (--max-failure-rate) raise
common.FailureRateExceeded after the report is saved.

Usage: python -m pipelines.index --input MANIFEST --out OUT [--images-dir DIR] [--allow-root DIR ...]
       [--max-failure-rate F] [beam options]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import pyarrow.parquet as pq

from model import schema, storage, tags
from pipelines import common, manifests

log = logging.getLogger(__name__)

STAGE = "index"

SKIPPED_DUPLICATE = "skipped_duplicate"
# report details: folds that merged raw spellings, and tags that lost invisible characters
FOLDED_TAGS = "folded_tags"  # tags that more than one distinct raw spelling folded into
FOLDED_SPELLINGS = "folded_spellings"  # the distinct raw spellings of those tags, all together
FOLD_EXAMPLES = "tag_fold_examples"
STRIPPED_INVISIBLE = "stripped_invisible"  # rows whose raw tag held Cf characters (removed)
MAX_FOLD_EXAMPLES = 5
MAX_SPELLINGS_SHOWN = 5
_FOLD_TAG, _FOLD_SPELLINGS, _FOLD_COUNT = "tag", "spellings", "count"

# ---------------------------------------------------------------------------
# DoFns
# ---------------------------------------------------------------------------
class ConfineUriFn(beam.DoFn):
    """Intermediate row -> itself, or a bad row: UnsupportedScheme for a uri that is neither a
    local path nor gs:// nor http(s), OutsideAllowedRoot for a local uri that escapes the allowed
    roots, by its path or through a symbolic link."""

    def __init__(self, allowed_roots: Sequence[str]):
        self.allowed_roots = list(allowed_roots)

    def _problem(self, uri: str, source: str) -> tuple[str, str] | None:
        """(error, message) of a uri index must not accept, or None."""
        shown = manifests.excerpt(source)
        scheme = manifests.unsupported_scheme(source) or manifests.unsupported_scheme(uri)
        if scheme:
            return manifests.REJECT_UNSUPPORTED_SCHEME, (
                f"{shown} has the scheme {scheme!r}: only local paths, gs:// and http(s):// are read "
                "(a local file whose name holds a colon: write it as ./NAME)"
            )
        roots = ", ".join(self.allowed_roots)
        if manifests.outside_allowed_roots(uri, self.allowed_roots):
            return manifests.REJECT_OUTSIDE_ROOT, f"{shown} is outside the allowed roots ({roots}); add --allow-root to read it"
        target = manifests.link_escape(uri, self.allowed_roots)
        if target:
            return manifests.REJECT_OUTSIDE_ROOT, (
                f"{shown} is a symbolic link to {target}, outside the allowed roots ({roots}); "
                "add --allow-root to read it"
            )
        return None

    def process(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        uri = row.get(schema.URI)
        if manifests.ROW_ERROR in row or not uri:
            yield row
            return
        problem = self._problem(uri, row.get(manifests.ROW_SOURCE) or uri)
        if problem is None:
            yield row
            return
        error, message = problem
        yield manifests.bad_row(row[schema.ORDINAL], error, f"manifest row {row[schema.ORDINAL]}: {message}", uri)


class NormalizeTagFn(beam.DoFn):
    """Intermediate row -> an images record, or a failure (malformed row or unusable tag)."""

    FAILURES = "failures"

    def _fail(self, uri: str | None, error: str, message: str, source_uri: str | None = None) -> beam.pvalue.TaggedOutput:
        source = source_uri or uri
        image_id = tags.image_id_for(source) if source else None
        return beam.pvalue.TaggedOutput(self.FAILURES, common.record_failure(STAGE, image_id, uri, error, message))

    def process(self, row: dict[str, Any]) -> Iterator[Any]:
        uri = row.get(schema.URI)
        if manifests.ROW_ERROR in row:
            yield self._fail(uri, row[manifests.ROW_ERROR], row[manifests.ROW_MESSAGE])
            return
        tag_raw = row[schema.TAG_RAW]
        if tags.has_invisible(tag_raw):
            common.counter(STAGE, STRIPPED_INVISIBLE).inc()
        tag = tags.normalize_tag(tag_raw)
        problem = tags.tag_problem(tag)
        if problem:
            yield self._fail(uri, problem, f"manifest row {row[schema.ORDINAL]}: tag {manifests.excerpt(tag_raw)}", row.get(manifests.ROW_SOURCE))
            return
        image_id = tags.image_id_for(row.get(manifests.ROW_SOURCE) or uri)
        yield {
            schema.IMAGE_ID: image_id,
            schema.URI: uri,
            schema.TAG: tag,
            schema.TAG_RAW: tag_raw,
            schema.SPLIT: tags.split_for(image_id),
            schema.ORDINAL: row[schema.ORDINAL],
        }


class FirstByOrdinalFn(beam.CombineFn):
    """Of the rows sharing a key, the one earliest in the manifest, and how many there were."""

    def create_accumulator(self) -> tuple[dict[str, Any] | None, int]:
        return None, 0

    def add_input(self, acc: tuple[dict[str, Any] | None, int], row: dict[str, Any]) -> tuple[dict[str, Any] | None, int]:
        best, n = acc
        if best is None or row[schema.ORDINAL] < best[schema.ORDINAL]:
            best = row
        return best, n + 1

    def merge_accumulators(self, accs: Iterable[tuple[dict[str, Any] | None, int]]) -> tuple[dict[str, Any] | None, int]:
        best, total = None, 0
        for row, n in accs:
            total += n
            if row is not None and (best is None or row[schema.ORDINAL] < best[schema.ORDINAL]):
                best = row
        return best, total

    def extract_output(self, acc: tuple[dict[str, Any] | None, int]) -> tuple[dict[str, Any] | None, int]:
        return acc


class EmitKeptRowFn(beam.DoFn):
    """Emits the kept row of a duplicate group; the rest are counted as skipped."""

    def __init__(self):
        self.rows_out = common.counter(STAGE, common.ROWS_OUT)
        self.rows_skipped = common.counter(STAGE, common.ROWS_SKIPPED)
        self.skipped_duplicate = common.counter(STAGE, SKIPPED_DUPLICATE)

    def process(self, keyed: tuple[Any, tuple[dict[str, Any], int]]) -> Iterator[dict[str, Any]]:
        _, (row, n) = keyed
        if n > 1:
            self.rows_skipped.inc(n - 1)
            self.skipped_duplicate.inc(n - 1)
        self.rows_out.inc()
        yield row


class FoldCounterFn(beam.DoFn):
    """(tag, raw spellings) -> a fold example when several distinct raw spellings made the tag."""

    def __init__(self):
        self.folded_tags = common.counter(STAGE, FOLDED_TAGS)
        self.folded_spellings = common.counter(STAGE, FOLDED_SPELLINGS)

    def process(self, grouped: tuple[str, Iterable[str]]) -> Iterator[dict[str, Any]]:
        tag, spellings = grouped
        distinct = sorted(set(spellings))
        if len(distinct) < 2:
            return
        self.folded_tags.inc()
        self.folded_spellings.inc(len(distinct))
        yield {
            _FOLD_TAG: tag,
            _FOLD_SPELLINGS: [s if len(s) <= manifests.EXCERPT_CHARS else s[: manifests.EXCERPT_CHARS - 1] + "…" for s in distinct[:MAX_SPELLINGS_SHOWN]],
            _FOLD_COUNT: len(distinct),
        }


class WriteJsonFn(beam.DoFn):
    """Writes one small JSON value (a list of examples) to a path under OUT."""

    def __init__(self, path: str):
        self.path = path

    def process(self, value: Any) -> Iterator[str]:
        common.write_text(self.path, json.dumps(value, ensure_ascii=False))
        yield self.path


class WriteTag2PicIdJsonFn(beam.DoFn):
    """Writes the whole inverted index as the prototype's one JSON object, tags in index order."""

    def __init__(self, path: str):
        self.path = path

    def process(self, rows: list[dict[str, Any]]) -> Iterator[str]:
        ordered = sorted(rows, key=lambda r: (r[schema.ORDINAL], r[schema.TAG]))
        index = {r[schema.TAG]: list(r[schema.IMAGE_IDS]) for r in ordered}
        common.write_text(self.path, json.dumps(index, ensure_ascii=False))
        log.info("wrote %d tags to %s", len(index), self.path)
        yield self.path


# ---------------------------------------------------------------------------
# Composite transforms
# ---------------------------------------------------------------------------
def _dedupe_key(row: dict[str, Any]) -> tuple[tuple[str, str], dict[str, Any]]:
    return (row[schema.URI], row[schema.TAG]), row


def _by_tag(row: dict[str, Any]) -> tuple[str, tuple[int, str]]:
    return row[schema.TAG], (row[schema.ORDINAL], row[schema.IMAGE_ID])


def _inverted_row(grouped: tuple[str, Iterable[tuple[int, str]]]) -> dict[str, Any]:
    tag, members = grouped
    ordered = sorted(members)
    return {
        schema.TAG: tag,
        schema.COUNT: len(ordered),
        schema.IMAGE_IDS: [image_id for _, image_id in ordered],
        # index order of the tag itself: where its first image sits in the manifest
        schema.ORDINAL: ordered[0][0],
    }


def _tag_and_raw(row: dict[str, Any]) -> tuple[str, str]:
    return row[schema.TAG], row[schema.TAG_RAW]


def _fold_rank(example: dict[str, Any]) -> tuple[int, str]:
    # the examples worth showing first: the most spellings, then a stable order
    return example[_FOLD_COUNT], example[_FOLD_TAG]


def _without_ordinal(row: dict[str, Any]) -> dict[str, Any]:
    return {name: row[name] for name in schema.INVERTED_INDEX_SCHEMA.names}


class IndexRows(beam.PTransform):
    """Intermediate rows -> {"images": images records, "failures": failure records, "folds": fold
    examples}. With allowed_roots, local uris outside them fail (OutsideAllowedRoot)."""

    def __init__(self, allowed_roots: Sequence[str] | None = None):
        super().__init__()
        self.allowed_roots = allowed_roots

    def expand(self, rows: beam.PCollection) -> dict[str, beam.PCollection]:
        if self.allowed_roots is not None:
            rows = rows | "ConfineUris" >> beam.ParDo(ConfineUriFn(self.allowed_roots))
        parsed = rows | "NormalizeTags" >> beam.ParDo(NormalizeTagFn()).with_outputs(
            NormalizeTagFn.FAILURES, main="images"
        )
        folds = (
            parsed.images
            | "TagAndRaw" >> beam.Map(_tag_and_raw)
            | "DistinctSpellings" >> beam.Distinct()
            | "SpellingsByTag" >> beam.GroupByKey()
            | "FoldedTags" >> beam.ParDo(FoldCounterFn())
        )
        images = (
            parsed.images
            | "KeyByUriTag" >> beam.Map(_dedupe_key)
            | "FirstOfDuplicates" >> beam.CombinePerKey(FirstByOrdinalFn())
            | "KeepFirst" >> beam.ParDo(EmitKeptRowFn())
        )
        return {"images": images, "failures": parsed[NormalizeTagFn.FAILURES], "folds": folds}


class InvertIndex(beam.PTransform):
    """Images records -> one row per tag: count, image ids in index order, and the tag's first ordinal."""

    def expand(self, images: beam.PCollection) -> beam.PCollection:
        return (
            images
            | "KeyByTag" >> beam.Map(_by_tag)
            | "GroupByTag" >> beam.GroupByKey()
            | "ToInvertedRow" >> beam.Map(_inverted_row)
        )


class WriteIndex(beam.PTransform):
    """Writes images, the inverted index (Parquet and JSON) and failures under OUT."""

    def __init__(self, out: str):
        super().__init__()
        self.out = out

    def expand(self, outputs: dict[str, beam.PCollection]) -> dict[str, beam.PCollection]:
        out = self.out
        inverted = outputs["images"] | "InvertIndex" >> InvertIndex()
        return {
            "images": outputs["images"]
            | "WriteImages" >> beam.io.WriteToParquet(
                schema.out_path(out, schema.IMAGES_DIR, schema.IMAGES_PREFIX),
                schema=schema.IMAGES_SCHEMA,
                file_name_suffix=schema.PARQUET_SUFFIX,
            ),
            "tag2picid": inverted
            | "DropOrdinal" >> beam.Map(_without_ordinal)
            | "WriteTag2PicId" >> beam.io.WriteToParquet(
                schema.out_path(out, schema.TAG2PICID_DIR, "tag2picid"),
                schema=schema.INVERTED_INDEX_SCHEMA,
                file_name_suffix=schema.PARQUET_SUFFIX,
            ),
            "tag2picid_json": inverted
            | "AllTags" >> beam.combiners.ToList()
            | "WriteTag2PicIdJson" >> beam.ParDo(WriteTag2PicIdJsonFn(schema.out_path(out, schema.TAG2PICID_JSON))),
            "tag_folds": outputs["folds"]
            | "FoldExamples" >> beam.combiners.Top.Of(MAX_FOLD_EXAMPLES, key=_fold_rank)
            | "WriteTagFolds" >> beam.ParDo(WriteJsonFn(schema.out_path(out, schema.TAG_FOLDS_JSON))),
            "failures": outputs["failures"] | "WriteFailures" >> common.WriteFailures.for_stage(out, STAGE),
        }


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    parser = common.stage_parser("index", __doc__)
    parser.add_argument("--input", required=True, help="manifest: .jsonl/.json, .csv, .parquet or a <tag>/<image> folder")
    parser.add_argument(
        "--images-dir",
        default=None,
        help="folder holding the prototype format's pic_id files (default: the manifest's folder)",
    )
    parser.add_argument(
        "--allow-root",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder local and relative uris may name (repeatable); the manifest's folder and "
        "--images-dir are always allowed, remote uris (gs://, http://) are not confined",
    )
    common.add_max_failure_rate(parser)
    return parser


# What an index run writes, relative to OUT: each replaced only once the new run is complete.
OUTPUT_PATTERNS = (
    f"{schema.IMAGES_DIR}/*",
    f"{schema.TAG2PICID_DIR}/*",
    schema.TAG2PICID_JSON,
    schema.TAG_FOLDS_JSON,
    f"{schema.FAILURES_DIR}/{STAGE}-*",
)


def staged_outputs(out: str) -> storage.StagedOutput:
    """Where a run writes its outputs, in OUT's layout, until they replace the previous ones
    (after the pipeline finished: an interrupted or failed run leaves the previous index whole)."""
    return storage.StagedOutput(
        out, OUTPUT_PATTERNS, staging=schema.out_path(out, f".staging-{STAGE}-{common.run_id()}")
    )


def replace_outputs(staged: storage.StagedOutput) -> list[str]:
    """The previous run's outputs out, the staged ones in; returns the previous outputs removed."""
    old = staged.commit().removed
    if old:
        log.info("replaced %d outputs of an earlier index run", len(old))
    return old


def run(argv: list[str] | None = None, save_main_session: bool = True, test_pipeline: beam.Pipeline | None = None) -> common.StageReport:
    args, beam_options = common.split_args(get_args_parser(), argv)
    manifest = manifests.absolute_input(args.input)
    images_dir = manifests.absolute_input(args.images_dir) if args.images_dir else None
    fmt = manifests.detect_format(manifest)
    roots = manifests.default_allowed_roots(manifest, fmt, images_dir, [manifests.absolute_input(r) for r in args.allow_root])
    log.info("index: %s manifest %s -> %s (local uris confined to %s)", fmt, manifest, args.out, ", ".join(roots))
    staged = staged_outputs(args.out)

    pipeline = test_pipeline or beam.Pipeline(
        options=common.make_options(beam_options, save_main_session)
    )
    outputs = pipeline | "ReadManifest" >> manifests.ReadManifest(manifest, fmt, images_dir) | "IndexRows" >> IndexRows(roots)
    _ = outputs | "WriteIndex" >> WriteIndex(staged.root)

    try:
        _, counters, seconds = common.run_pipeline(pipeline, STAGE)
    except BaseException:
        staged.discard()  # the previous index stays whole, and nothing of this run is left
        raise
    replace_outputs(staged)
    folds_path = schema.out_path(args.out, schema.TAG_FOLDS_JSON)
    examples = json.loads(common.read_bytes(folds_path)) if common.exists(folds_path) else []
    report = common.report_from_counters(STAGE, counters, seconds, format=fmt, **{FOLD_EXAMPLES: examples})
    report.save(args.out)
    # rank shows local images by their path under these roots, never by an absolute path
    common.write_text(schema.out_path(args.out, schema.INDEX_SOURCE_JSON), json.dumps({"roots": roots}))
    if report.details.get(FOLDED_TAGS):
        log.info(
            "index: %d tags merged %d different raw spellings, e.g. %s",
            report.details[FOLDED_TAGS],
            report.details[FOLDED_SPELLINGS],
            "; ".join(f"{e[_FOLD_TAG]!r} <- {e[_FOLD_SPELLINGS]}" for e in examples[:2]),
        )
    if report.details.get(f"failed_{manifests.REJECT_OUTSIDE_ROOT}"):
        folder = folder_to_allow(args.out)
        if folder:
            report.details[common.REMEDY_FOLDER] = folder
            report.save(args.out)
    common.check_failure_rate(report, args.max_failure_rate)
    return report


def folder_to_allow(out: str) -> str | None:
    """The folder an --allow-root would need to admit this run's OutsideAllowedRoot rows (where
    their paths, links resolved, lead), read back from the committed failure rows."""
    folders: dict[str, int] = {}
    for path in common.glob(schema.out_path(out, schema.FAILURES_DIR, f"{STAGE}-*{schema.PARQUET_SUFFIX}")):
        with common.FileSystems.open(path) as f:
            rows = pq.read_table(f, columns=[schema.ERROR, schema.URI]).to_pylist()
        for row in rows:
            if row[schema.ERROR] == manifests.REJECT_OUTSIDE_ROOT and row[schema.URI] and "://" not in row[schema.URI]:
                folder = os.path.dirname(os.path.realpath(row[schema.URI]))
                folders[folder] = folders.get(folder, 0) + 1
    if not folders:
        return None
    common_folder = os.path.commonpath(list(folders))
    return common_folder if common_folder != os.sep else max(folders, key=folders.get)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(run().summary_line())
