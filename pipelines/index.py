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
import codecs
import csv
import json
import logging
import os
import posixpath
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from model import schema, tags
from pipelines import common

log = logging.getLogger(__name__)

STAGE = "index"

# Manifest formats
FORMAT_JSONL = "jsonl"
FORMAT_PROTOTYPE = "prototype"
FORMAT_CSV = "csv"
FORMAT_PARQUET = "parquet"
FORMAT_FOLDER = "folder"
FORMATS = (FORMAT_JSONL, FORMAT_PROTOTYPE, FORMAT_CSV, FORMAT_PARQUET, FORMAT_FOLDER)

# The prototype's field names
PIC_ID = "pic_id"
TAGS_TERM = "tags_term"

# Reasons a manifest row is rejected before its tag is looked at (the failures' `error` column)
REJECT_BAD_JSON = "MalformedJson"
REJECT_BAD_CSV = "MalformedCsv"
REJECT_BAD_ENCODING = "UnicodeDecodeError"
REJECT_NOT_AN_OBJECT = "NotAnObject"
REJECT_MISSING_FIELD = "MissingField"
REJECT_WRONG_TYPE = "WrongType"
REJECT_UNRESOLVED_PIC_ID = "UnresolvedPicId"
REJECT_OUTSIDE_ROOT = "OutsideAllowedRoot"

SKIPPED_DUPLICATE = "skipped_duplicate"
# report details: folds that merged raw spellings, and tags that lost invisible characters
FOLDED_TAGS = "folded_tags"  # tags that more than one distinct raw spelling folded into
FOLDED_SPELLINGS = "folded_spellings"  # the distinct raw spellings of those tags, all together
FOLD_EXAMPLES = "tag_fold_examples"
STRIPPED_INVISIBLE = "stripped_invisible"  # rows whose raw tag held Cf characters (removed)
MAX_FOLD_EXAMPLES = 5
MAX_SPELLINGS_SHOWN = 5
_FOLD_TAG, _FOLD_SPELLINGS, _FOLD_COUNT = "tag", "spellings", "count"

# Intermediate row keys: a parsed manifest row is either {ordinal, uri, tag_raw} or
# {ordinal, uri (may be None), error, message}.
_ERROR_KEY = "error"
_MESSAGE_KEY = "message"
# the uri as the manifest writes it: ids derive from it, so a collection whose manifest uses
# relative paths keeps its ids (and split) wherever it is moved
_SOURCE_KEY = "source_uri"

_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".deflate", ".zst", ".lzma")
_EXCERPT_CHARS = 120
_SNIFF_LINES = 100


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def excerpt(text: Any, limit: int = _EXCERPT_CHARS) -> str:
    """repr of a value cut to `limit` characters, so a 10 kB garbage line stays readable."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _has_scheme(path: str) -> bool:
    return FileSystems.get_scheme(path) is not None


def absolute_input(path: str) -> str:
    """Local paths made absolute so the uris we derive from them work from any cwd; URLs untouched."""
    if _has_scheme(path):
        return path
    return os.path.abspath(path)


def _strip_compression(name: str) -> str:
    lowered = name.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_folder(path: str) -> bool:
    if path.endswith("/"):
        return True
    if not _has_scheme(path):
        return os.path.isdir(path)
    # Object stores have no folders: a prefix with objects two levels below it is one.
    return bool(common.glob(path.rstrip("/") + "/*/*"))


def _lines(f: Any) -> Iterator[bytes]:
    """Lines of a FileSystems stream; compressed streams (.gz) have readline but are not iterable."""
    return iter(f.readline, b"")


def _first_json_record(path: str) -> Any:
    """The first parseable JSON value among the first lines of a file (None when there is none)."""
    with FileSystems.open(path) as f:
        for i, line in enumerate(_lines(f)):
            if i >= _SNIFF_LINES:
                break
            if not line.strip():
                continue
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def detect_format(path: str) -> str:
    """Which manifest format a path holds: from its extension, a folder, or its first record's keys."""
    name = _strip_compression(path.rstrip("/")).lower()
    if name.endswith(".csv"):
        return FORMAT_CSV
    if name.endswith(".parquet"):
        return FORMAT_PARQUET
    if name.endswith(_JSON_SUFFIXES):
        first = _first_json_record(path)
        if isinstance(first, dict) and PIC_ID in first and schema.URI not in first:
            return FORMAT_PROTOTYPE
        return FORMAT_JSONL
    if _is_folder(path):
        return FORMAT_FOLDER
    raise ValueError(
        f"cannot tell the manifest format of {path!r}: expected .jsonl/.json, .csv, .parquet or a folder"
    )


def _normalise_path(path: str) -> str:
    scheme = FileSystems.get_scheme(path)
    if scheme is None:
        return posixpath.normpath(path) if path.startswith("/") else os.path.normpath(path)
    prefix = f"{scheme}://"
    return prefix + posixpath.normpath(path[len(prefix) :])


def join_path(base: str, rel: str) -> str:
    """base/rel for local paths and URLs alike, without needing the URL's file system installed."""
    if _has_scheme(base):
        return base.rstrip("/") + "/" + rel
    return os.path.join(base, rel)


def resolve_uri(uri: str, base_dir: str) -> str:
    """A manifest's relative uri resolved against the manifest's folder; absolute ones kept as given."""
    if _has_scheme(uri) or uri.startswith("/"):
        return uri
    return _normalise_path(join_path(base_dir, uri))


def _local_path(uri: str) -> str | None:
    """The local file-system path a uri names, or None for remote schemes (gs://, http://)."""
    scheme = FileSystems.get_scheme(uri)
    if scheme is None:
        return uri
    if scheme == "file":
        return uri[len("file://") :]
    return None


def confinement_root(path: str) -> str:
    """A local path made absolute and lexically normalised (`..` resolved, no symlinks followed:
    a link the owner of the folder made is theirs to make; `..` in a crawled manifest is not)."""
    return os.path.normpath(os.path.abspath(path))


def default_allowed_roots(manifest: str, fmt: str, images_dir: str | None, allow_roots: Iterable[str]) -> list[str]:
    """The manifest's folder (a folder manifest: the folder), --images-dir and every --allow-root."""
    base = manifest.rstrip("/") if fmt == FORMAT_FOLDER else FileSystems.split(manifest.rstrip("/"))[0]
    roots = [base] + ([images_dir] if images_dir else []) + list(allow_roots)
    local = [confinement_root(p) for p in (_local_path(r) for r in roots) if p is not None]
    return list(dict.fromkeys(local))


def outside_allowed_roots(uri: str, roots: Sequence[str]) -> bool:
    """Whether a local uri escapes every allowed root; remote uris are never confined."""
    path = _local_path(uri)
    if path is None:
        return False
    resolved = confinement_root(path)
    return not any(resolved == root or resolved.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _row(ordinal: int, uri: str, tag_raw: str, source_uri: str | None = None) -> dict[str, Any]:
    return {schema.ORDINAL: ordinal, schema.URI: uri, schema.TAG_RAW: tag_raw, _SOURCE_KEY: source_uri or uri}


def _bad_row(ordinal: int, error: str, message: str, uri: str | None = None) -> dict[str, Any]:
    return {schema.ORDINAL: ordinal, schema.URI: uri, _ERROR_KEY: error, _MESSAGE_KEY: message}


def failure_record(uri: str | None, error: str, message: str, source_uri: str | None = None) -> dict[str, Any]:
    """A row of schema.FAILURES_SCHEMA for this stage."""
    source = source_uri or uri
    return common.failure_row(STAGE, tags.image_id_for(source) if source else None, uri, error, message)


def row_from_fields(
    record: Any, ordinal: int, uri_key: str, tag_key: str, where: str
) -> tuple[dict[str, Any] | None, Any, Any]:
    """Check a record's two fields: (a bad row, None, None) or (None, uri value, tag value)."""
    if not isinstance(record, dict):
        return _bad_row(ordinal, REJECT_NOT_AN_OBJECT, f"{where}: not an object: {excerpt(record)}"), None, None
    # An empty tag string is a tag problem (EmptyTag, later), an empty uri is a missing one.
    missing = [k for k in (uri_key, tag_key) if record.get(k) is None or (k == uri_key and record[k] == "")]
    if missing:
        return _bad_row(ordinal, REJECT_MISSING_FIELD, f"{where}: missing {', '.join(missing)}: {excerpt(record)}"), None, None
    return None, record[uri_key], record[tag_key]


def parse_uri_tag(record: Any, ordinal: int, base_dir: str, where: str) -> dict[str, Any]:
    """One `{"uri", "tag"}` record (JSON, CSV or Parquet) -> an intermediate row."""
    bad, uri, tag = row_from_fields(record, ordinal, schema.URI, schema.TAG, where)
    if bad:
        return bad
    if not isinstance(uri, str) or not isinstance(tag, str):
        return _bad_row(ordinal, REJECT_WRONG_TYPE, f"{where}: uri and tag must be strings: {excerpt(record)}")
    return _row(ordinal, resolve_uri(uri, base_dir), tag, source_uri=uri)


class PicIdResolver:
    """Turns a prototype pic_id into a uri under the images folder.

    A pic_id without a file extension names `<images-dir>/<pic_id>.*`. The folder is listed once,
    on first need, through FileSystems.match: one listing instead of one per row.
    """

    def __init__(self, images_dir: str):
        self.images_dir = images_dir.rstrip("/")
        self._by_stem: dict[str, list[str]] | None = None

    def _listing(self) -> dict[str, list[str]]:
        if self._by_stem is None:
            by_stem: dict[str, list[str]] = {}
            prefix = self.images_dir + "/"
            for path in common.glob(prefix + "**"):
                rel = path[len(prefix) :] if path.startswith(prefix) else FileSystems.split(path)[1]
                head, name = posixpath.split(rel)
                # `<pic_id>.*`: everything before the name's first dot is the pic_id
                stem = posixpath.join(head, name.split(".", 1)[0]) if head else name.split(".", 1)[0]
                by_stem.setdefault(stem, []).append(path)
            self._by_stem = by_stem
            log.info("listed %d image files under %s", sum(map(len, by_stem.values())), self.images_dir)
        return self._by_stem

    def resolve(self, pic_id: str) -> str | None:
        if posixpath.splitext(pic_id)[1]:
            return join_path(self.images_dir, pic_id)
        candidates = sorted(self._listing().get(pic_id, []))
        if len(candidates) > 1:
            log.warning("pic_id %r matches %d files; using %s", pic_id, len(candidates), candidates[0])
        return candidates[0] if candidates else None


def parse_prototype(record: Any, ordinal: int, resolver: PicIdResolver, where: str) -> dict[str, Any]:
    """One prototype `{"pic_id", "tags_term"}` record -> an intermediate row."""
    bad, pic_id, tag = row_from_fields(record, ordinal, PIC_ID, TAGS_TERM, where)
    if bad:
        return bad
    # The prototype's ids were often numbers; bool is an int subclass but never an id.
    if isinstance(pic_id, int) and not isinstance(pic_id, bool):
        pic_id = str(pic_id)
    if not isinstance(pic_id, str) or not isinstance(tag, str):
        return _bad_row(ordinal, REJECT_WRONG_TYPE, f"{where}: pic_id and tags_term must be strings: {excerpt(record)}")
    uri = resolver.resolve(pic_id)
    if uri is None:
        return _bad_row(
            ordinal, REJECT_UNRESOLVED_PIC_ID, f"{where}: no file {resolver.images_dir}/{pic_id}.* for pic_id {excerpt(pic_id)}"
        )
    return _row(ordinal, uri, tag)


def folder_rows(folder: str) -> Iterator[dict[str, Any]]:
    """`<tag>/<image file>` under a folder, in sorted path order; hidden files (.DS_Store) left out."""
    root = folder.rstrip("/")
    paths = [p for p in common.glob(root + "/*/*") if not FileSystems.split(p)[1].startswith(".")]
    for ordinal, path in enumerate(sorted(paths)):
        tag_dir = FileSystems.split(FileSystems.split(path)[0])[1]
        yield _row(ordinal, path, tag_dir)


# ---------------------------------------------------------------------------
# DoFns
# ---------------------------------------------------------------------------
class ReadManifestFn(beam.DoFn):
    """Streams one manifest through FileSystems.open and emits each row with its position.

    Every row is emitted, malformed ones as bad rows with a reason, so nothing is lost silently.
    """

    def __init__(self, fmt: str, images_dir: str | None = None):
        if fmt not in FORMATS:
            raise ValueError(f"unknown manifest format {fmt!r}")
        self.fmt = fmt
        self.images_dir = images_dir
        self.rows_in = common.counter(STAGE, common.ROWS_IN)

    def setup(self) -> None:
        self.resolver = PicIdResolver(self.images_dir) if self.images_dir else None

    def process(self, manifest: str) -> Iterator[dict[str, Any]]:
        base_dir = FileSystems.split(manifest.rstrip("/"))[0]
        readers = {
            FORMAT_JSONL: self._jsonl,
            FORMAT_PROTOTYPE: self._jsonl,
            FORMAT_CSV: self._csv,
            FORMAT_PARQUET: self._parquet,
            FORMAT_FOLDER: lambda path, _base: folder_rows(path),
        }
        for row in readers[self.fmt](manifest, base_dir):
            self.rows_in.inc()
            yield row

    def _jsonl(self, manifest: str, base_dir: str) -> Iterator[dict[str, Any]]:
        resolver = self.resolver or PicIdResolver(base_dir)
        ordinal = 0
        with FileSystems.open(manifest) as f:
            for line_no, raw in enumerate(_lines(f), start=1):
                if not raw.strip():
                    continue
                where = f"line {line_no}"
                yield self._json_line(raw, ordinal, base_dir, resolver, where)
                ordinal += 1

    def _json_line(self, raw: bytes, ordinal: int, base_dir: str, resolver: PicIdResolver, where: str) -> dict[str, Any]:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return _bad_row(ordinal, REJECT_BAD_ENCODING, f"{where}: {e}: {excerpt(raw)}")
        try:
            record = json.loads(text)
        except ValueError as e:
            return _bad_row(ordinal, REJECT_BAD_JSON, f"{where}: {e}: {excerpt(text.strip())}")
        if self.fmt == FORMAT_PROTOTYPE:
            return parse_prototype(record, ordinal, resolver, where)
        return parse_uri_tag(record, ordinal, base_dir, where)

    def _csv(self, manifest: str, base_dir: str) -> Iterator[dict[str, Any]]:
        with FileSystems.open(manifest) as raw:
            # lines keep their endings, so quoted fields may hold line breaks; utf-8-sig drops a
            # spreadsheet's BOM
            text = codecs.iterdecode(_lines(raw), "utf-8-sig", errors="replace")
            reader = csv.DictReader(text)
            ordinal = 0
            while True:
                try:
                    record = next(reader)
                except StopIteration:
                    break
                except csv.Error as e:
                    yield _bad_row(ordinal, REJECT_BAD_CSV, f"near line {reader.line_num}: {e}")
                    ordinal += 1
                    continue
                yield parse_uri_tag(record, ordinal, base_dir, f"line {reader.line_num}")
                ordinal += 1

    def _parquet(self, manifest: str, base_dir: str) -> Iterator[dict[str, Any]]:
        with FileSystems.open(manifest) as f:
            ordinal = 0
            for batch in pq.ParquetFile(f).iter_batches():
                for record in batch.to_pylist():
                    yield parse_uri_tag(record, ordinal, base_dir, f"row {ordinal}")
                    ordinal += 1


class ConfineUriFn(beam.DoFn):
    """Intermediate row -> itself, or a bad row (OutsideAllowedRoot) when its local uri escapes
    the allowed roots."""

    def __init__(self, allowed_roots: Sequence[str]):
        self.allowed_roots = list(allowed_roots)

    def process(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        uri = row.get(schema.URI)
        if _ERROR_KEY in row or not uri or not outside_allowed_roots(uri, self.allowed_roots):
            yield row
            return
        yield _bad_row(
            row[schema.ORDINAL],
            REJECT_OUTSIDE_ROOT,
            f"manifest row {row[schema.ORDINAL]}: {excerpt(row.get(_SOURCE_KEY) or uri)} is outside the allowed "
            f"roots ({', '.join(self.allowed_roots)}); add --allow-root to read it",
            uri,
        )


class NormalizeTagFn(beam.DoFn):
    """Intermediate row -> an images record, or a failure (malformed row or unusable tag)."""

    FAILURES = "failures"

    def __init__(self):
        self.rows_failed = common.counter(STAGE, common.ROWS_FAILED)

    def _fail(self, uri: str | None, error: str, message: str, source_uri: str | None = None) -> beam.pvalue.TaggedOutput:
        self.rows_failed.inc()
        common.counter(STAGE, f"failed_{error}").inc()
        return beam.pvalue.TaggedOutput(self.FAILURES, failure_record(uri, error, message, source_uri))

    def process(self, row: dict[str, Any]) -> Iterator[Any]:
        uri = row.get(schema.URI)
        if _ERROR_KEY in row:
            yield self._fail(uri, row[_ERROR_KEY], row[_MESSAGE_KEY])
            return
        tag_raw = row[schema.TAG_RAW]
        if tags.has_invisible(tag_raw):
            common.counter(STAGE, STRIPPED_INVISIBLE).inc()
        tag = tags.normalize_tag(tag_raw)
        problem = tags.tag_problem(tag)
        if problem:
            yield self._fail(uri, problem, f"manifest row {row[schema.ORDINAL]}: tag {excerpt(tag_raw)}", row.get(_SOURCE_KEY))
            return
        image_id = tags.image_id_for(row.get(_SOURCE_KEY) or uri)
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
            _FOLD_SPELLINGS: [s if len(s) <= _EXCERPT_CHARS else s[: _EXCERPT_CHARS - 1] + "…" for s in distinct[:MAX_SPELLINGS_SHOWN]],
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


class ReadManifest(beam.PTransform):
    """PBegin -> one intermediate row per manifest row (good or bad), spread over workers."""

    def __init__(self, manifest: str, fmt: str, images_dir: str | None = None):
        super().__init__()
        self.manifest = manifest
        self.fmt = fmt
        self.images_dir = images_dir

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Manifest" >> beam.Create([self.manifest])
            | "ReadRows" >> beam.ParDo(ReadManifestFn(self.fmt, self.images_dir))
            # the manifest is read by one worker; what follows should not be
            | "Spread" >> beam.Reshuffle()
        )


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
            "failures": outputs["failures"]
            | "WriteFailures" >> beam.io.WriteToParquet(
                schema.out_path(out, schema.FAILURES_DIR, STAGE),
                schema=schema.FAILURES_SCHEMA,
                file_name_suffix=schema.PARQUET_SUFFIX,
            ),
        }


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsearch index", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="manifest: .jsonl/.json, .csv, .parquet or a <tag>/<image> folder")
    parser.add_argument("--out", required=True, help="output root (local path or gs://...)")
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


def remove_stale_outputs(out: str) -> list[str]:
    """Delete what an earlier index run wrote under OUT, so a rerun never mixes old and new shards."""
    stale = (
        common.glob(schema.out_path(out, schema.IMAGES_DIR, "*"))
        + common.glob(schema.out_path(out, schema.TAG2PICID_DIR, "*"))
        + common.glob(schema.out_path(out, schema.TAG2PICID_JSON))
        + common.glob(schema.out_path(out, schema.TAG_FOLDS_JSON))
        + common.glob(schema.out_path(out, schema.FAILURES_DIR, f"{STAGE}-*"))
    )
    common.delete(stale)
    if stale:
        log.info("removed %d stale outputs of an earlier index run", len(stale))
    return stale


def run(argv: list[str] | None = None, save_main_session: bool = True, test_pipeline: beam.Pipeline | None = None) -> common.StageReport:
    args, beam_options = common.split_args(get_args_parser(), argv)
    manifest = absolute_input(args.input)
    images_dir = absolute_input(args.images_dir) if args.images_dir else None
    fmt = detect_format(manifest)
    roots = default_allowed_roots(manifest, fmt, images_dir, [absolute_input(r) for r in args.allow_root])
    log.info("index: %s manifest %s -> %s (local uris confined to %s)", fmt, manifest, args.out, ", ".join(roots))
    remove_stale_outputs(args.out)

    pipeline = test_pipeline or beam.Pipeline(
        options=common.make_options(beam_options, save_main_session)
    )
    outputs = pipeline | "ReadManifest" >> ReadManifest(manifest, fmt, images_dir) | "IndexRows" >> IndexRows(roots)
    _ = outputs | "WriteIndex" >> WriteIndex(args.out)

    _, counters, seconds = common.run_pipeline(pipeline, STAGE)
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
    common.check_failure_rate(report, args.max_failure_rate)
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(run().summary_line())
