"""Reading manifests: every input format a collection can come in, as rows of (uri, tag).

One table says which formats there are and how each is recognised; `detect_format` picks one
from the path and the content, and `ReadManifest` streams the file through Beam's FileSystems,
emitting every row with its position, malformed ones as bad rows with a reason (nothing is lost
silently). Relative uris resolve against the manifest's folder, and the allowed roots that
confine local uris are computed here too (index applies them).

| format      | recognised by                                  | rows                                  |
|-------------|------------------------------------------------|---------------------------------------|
| jsonl       | .jsonl / .json / .ndjson (also .gz, ...)        | {"uri": ..., "tag": ...}              |
| prototype   | JSON lines whose first record has pic_id        | {"pic_id", "tags_term"} + --images-dir|
| csv         | .csv with a header                             | columns uri, tag                      |
| parquet     | .parquet                                       | columns uri, tag                      |
| folder      | a folder                                       | <tag>/<image file>                    |

To add a format: a FORMAT_* name, its detection in detect_format, and a reader method on
ReadManifestFn that yields parse_uri_tag(...) rows.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import os
import re
import posixpath
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from model import schema
from pipelines import common

log = logging.getLogger(__name__)

STAGE = "index"  # the counters' namespace: manifests are read by the index stage

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
REJECT_UNSUPPORTED_SCHEME = "UnsupportedScheme"
# what a uri may be: a local path (or file://), a Cloud Storage object, or a web address
SUPPORTED_SCHEMES = ("file", "gs", "http", "https")
# RFC 3986's scheme, two characters at least (C:\ stays a Windows path); `javascript:` and
# `data:` carry no "//", so without this they would read as local file names
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")

# Intermediate row keys: a parsed manifest row is either {ordinal, uri, tag_raw} or
# {ordinal, uri (may be None), error, message}.
ROW_ERROR = "error"
ROW_MESSAGE = "message"
# the uri as the manifest writes it: ids derive from it, so a collection whose manifest uses
# relative paths keeps its ids (and split) wherever it is moved
ROW_SOURCE = "source_uri"

_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".deflate", ".zst", ".lzma")
EXCERPT_CHARS = 120
_SNIFF_LINES = 100


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def excerpt(text: Any, limit: int = EXCERPT_CHARS) -> str:
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


def unsupported_scheme(uri: str) -> str | None:
    """The scheme of a uri that is neither a local path nor gs:// nor http(s) (ftp, javascript,
    data, mailto, ...), or None."""
    match = _SCHEME.match(uri)
    if match is None:
        return None
    scheme = match.group(1).lower()
    return None if scheme in SUPPORTED_SCHEMES else scheme


def confinement_root(path: str) -> str:
    """A local path made absolute and lexically normalised (`..` resolved). link_escape() then
    checks where symbolic links lead."""
    return os.path.normpath(os.path.abspath(path))


def _inside(path: str, roots: Sequence[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def link_escape(uri: str, roots: Sequence[str]) -> str | None:
    """Where a local uri really leads when symbolic links (of the file or of a folder on its way)
    take it out of every allowed root (the roots' own links resolved too), or None."""
    path = _local_path(uri)
    if path is None:
        return None
    real = os.path.realpath(path)
    if _inside(real, [os.path.realpath(r) for r in roots]):
        return None
    return real


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
    return not _inside(confinement_root(path), roots)


class OutsideAllowedRoot(PermissionError):
    """A local image whose path, or a symbolic link on its way, leads out of the allowed roots
    (index/source.json): it is never opened. Index refuses such rows; readers check again, since a
    link may have changed since."""


def check_confined(uri: str, roots: Sequence[str]) -> None:
    """Raise OutsideAllowedRoot for a local uri outside the roots (no roots: nothing is checked,
    as for an OUT that index wrote before it recorded them)."""
    if not roots:
        return
    path = _local_path(uri)
    if path is None:
        return
    if outside_allowed_roots(uri, roots):
        raise OutsideAllowedRoot(f"{uri} is outside the allowed roots ({', '.join(roots)}); index with --allow-root to read it")
    target = link_escape(uri, roots)
    if target:
        raise OutsideAllowedRoot(
            f"{uri} is a symbolic link to {target}, outside the allowed roots ({', '.join(roots)}); "
            "index with --allow-root to read it"
        )


def recorded_roots(out: str) -> tuple[str, ...]:
    """The allowed roots index recorded for OUT (index/source.json); () when it recorded none."""
    path = schema.out_path(out, schema.INDEX_SOURCE_JSON)
    if not FileSystems.exists(path):
        return ()
    with FileSystems.open(path) as f:
        return tuple(json.loads(f.read().decode("utf-8")).get("roots") or ())


def _row(ordinal: int, uri: str, tag_raw: str, source_uri: str | None = None) -> dict[str, Any]:
    return {schema.ORDINAL: ordinal, schema.URI: uri, schema.TAG_RAW: tag_raw, ROW_SOURCE: source_uri or uri}


def bad_row(ordinal: int, error: str, message: str, uri: str | None = None) -> dict[str, Any]:
    return {schema.ORDINAL: ordinal, schema.URI: uri, ROW_ERROR: error, ROW_MESSAGE: message}


def row_from_fields(
    record: Any, ordinal: int, uri_key: str, tag_key: str, where: str
) -> tuple[dict[str, Any] | None, Any, Any]:
    """Check a record's two fields: (a bad row, None, None) or (None, uri value, tag value)."""
    if not isinstance(record, dict):
        return bad_row(ordinal, REJECT_NOT_AN_OBJECT, f"{where}: not an object: {excerpt(record)}"), None, None
    # An empty tag string is a tag problem (EmptyTag, later), an empty uri is a missing one.
    missing = [k for k in (uri_key, tag_key) if record.get(k) is None or (k == uri_key and record[k] == "")]
    if missing:
        return bad_row(ordinal, REJECT_MISSING_FIELD, f"{where}: missing {', '.join(missing)}: {excerpt(record)}"), None, None
    return None, record[uri_key], record[tag_key]


def parse_uri_tag(record: Any, ordinal: int, base_dir: str, where: str) -> dict[str, Any]:
    """One `{"uri", "tag"}` record (JSON, CSV or Parquet) -> an intermediate row."""
    bad, uri, tag = row_from_fields(record, ordinal, schema.URI, schema.TAG, where)
    if bad:
        return bad
    if not isinstance(uri, str) or not isinstance(tag, str):
        return bad_row(ordinal, REJECT_WRONG_TYPE, f"{where}: uri and tag must be strings: {excerpt(record)}")
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
        return bad_row(ordinal, REJECT_WRONG_TYPE, f"{where}: pic_id and tags_term must be strings: {excerpt(record)}")
    uri = resolver.resolve(pic_id)
    if uri is None:
        return bad_row(
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
            return bad_row(ordinal, REJECT_BAD_ENCODING, f"{where}: {e}: {excerpt(raw)}")
        try:
            record = json.loads(text)
        except ValueError as e:
            return bad_row(ordinal, REJECT_BAD_JSON, f"{where}: {e}: {excerpt(text.strip())}")
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
                    yield bad_row(ordinal, REJECT_BAD_CSV, f"near line {reader.line_num}: {e}")
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
