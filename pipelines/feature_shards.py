"""The feature shards of extract-images: naming, finding, checking, writing and committing them.

A run names its shards features-<UTC time>-<random>-<digest>.parquet, so they never clash with an
earlier run's, and a chunk's digest is that of the image ids it holds, in order, so a retried
bundle rewrites the chunks it had committed instead of adding copies of them; each chunk is
written under a temporary name and renamed into place, so a reader sees it whole or not at all;
readers match finished names only, and existing shards of another encoder, weights or vector
space (int8 against float) are refused rather than mixed. Each chunk's metadata records the
encoder, weights, dimension and the precision its rows were made in (and the int8 model's name
for int8 rows).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from model import features, inference, schema, storage
from model.report import RunRefused
from pipelines import common

if TYPE_CHECKING:
    from model import encoders

log = logging.getLogger(__name__)

STAGE = "extract-images"  # whose shards these are, in log lines
SHARD_PREFIX = schema.IMAGE_FEATURES_PREFIX
UNREADABLE_SUBDIR = features.UNREADABLE_SUBDIR
# a --full run's chunks until the run is done: readers list only the folder's own files, so the
# previous features stay the ones read, whole, until the new set replaces them
FULL_RUN_SUBDIR = "full-run"
INPROGRESS_PREFIX = ".inprogress-"
INPROGRESS_SUFFIX = ".tmp"
ROW_GROUP_BYTES = 16 * 1024 * 1024
FEATURE_CHUNKS = "feature_chunks"  # counter: chunk files this run committed
PRECISION_RAN = "_precision"  # a feature row's precision, as the worker ran it (not a column)


def features_prefix(out: str) -> str:
    return schema.out_path(out, schema.IMAGE_FEATURES_DIR, SHARD_PREFIX)


def feature_shards(out: str) -> list[str]:
    """The finished image-feature shards under OUT (never a running job's temporary files)."""
    return common.glob(schema.shard_pattern(out, schema.IMAGE_FEATURES_DIR, SHARD_PREFIX))


def full_run_dir(out: str) -> str:
    return schema.out_path(out, schema.IMAGE_FEATURES_DIR, FULL_RUN_SUBDIR)


def shards_dir(out: str, full: bool = False) -> str:
    """Where a run's chunks go: the folder readers list, or a --full run's own until it is done."""
    return full_run_dir(out) if full else schema.out_path(out, schema.IMAGE_FEATURES_DIR)


def full_run_shards(out: str) -> list[str]:
    """The chunks a --full run has committed so far (its own folder: not read downstream)."""
    return common.glob(f"{full_run_dir(out)}/{SHARD_PREFIX}-*{schema.PARQUET_SUFFIX}")


def run_prefix(out: str, full: bool = False) -> str:
    """A new run's shard prefix, features-<UTC time>-<random>: never clashes with earlier runs'.
    A --full run's chunks go to its own folder until promote_full_run."""
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
    return f"{shards_dir(out, full)}/{SHARD_PREFIX}-{run_id}"


def resumable_full_run(out: str, metadata: dict[bytes, bytes]) -> list[str]:
    """The chunks an interrupted --full run of this encoder left (a new --full run adds to them);
    those of another encoder, weights or vector space are removed."""
    shards = full_run_shards(out)
    if not shards:
        return []
    try:
        usable = usable_feature_shards(out, metadata, shards)
    except IncompatibleFeatures as exc:
        log.info("%s: an interrupted --full run of another encoder left %d chunks: removed (%s)", STAGE, len(shards), exc)
        common.delete(shards)
        return []
    log.info("%s: resuming an interrupted --full run: %d chunks are kept, their images not extracted again", STAGE, len(usable))
    return usable


def promote_full_run(out: str) -> tuple[int, int]:
    """A finished --full run's chunks replace the previous features: (previous shards removed,
    chunks moved into place).

    The previous shards go first, so no reader ever sees two vector spaces mixed; a crash in
    between leaves the new set whole in its folder, and rerunning --full finishes the move."""
    staged = storage.StagedOutput(
        shards_dir(out),
        [f"{SHARD_PREFIX}-*{schema.PARQUET_SUFFIX}"],
        staging=full_run_dir(out),
        previous_first=True,
        files=common.BeamFiles(),
    )
    committed = staged.commit()
    if common.exists(full_run_dir(out)):
        common.delete([full_run_dir(out)])  # a local folder goes whole; on gs:// nothing is left under it
    log.info("%s: --full: %d new shards replaced %d previous ones", STAGE, len(committed.moved), len(committed.removed))
    return len(committed.removed), len(committed.moved)


def read_shard_metadata(path: str) -> dict[bytes, bytes]:
    # the footer only: Beam's file objects seek, so a large shard is not read whole
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return dict(pq.ParquetFile(f).schema_arrow.metadata or {})


class ShardWriteError(OSError):
    """A feature chunk could not be written (disk full, permissions): nothing of it was committed."""


class IncompatibleFeatures(RunRefused):
    """Existing features were made by another encoder: appending would mix two vector spaces."""


def usable_feature_shards(
    out: str, metadata: dict[bytes, bytes], shards: Sequence[str] | None = None, quarantined: list[str] | None = None
) -> list[str]:
    """Existing shards (OUT's, or those given) this run can add to; unreadable ones are moved
    aside, never half-read.

    Beam writes a shard to a temporary folder and renames it into place, so a shard under its
    final name is whole; one that is not (copied in by hand, or a store that broke mid-copy) is
    moved to features/image/unreadable/ where no reader looks, with a warning, and added to
    `quarantined` (the run's report counts them; their images are extracted again).
    """
    usable = []
    for path in feature_shards(out) if shards is None else shards:
        try:
            found = read_shard_metadata(path)
        except Exception as exc:
            aside = schema.out_path(out, schema.IMAGE_FEATURES_DIR, UNREADABLE_SUBDIR, path.rsplit("/", 1)[-1])
            log.warning("%s: %s is unreadable (%s); moved to %s", STAGE, path, exc, aside)
            common.BeamFiles().rename([path], [aside])
            if quarantined is not None:
                quarantined.append(f"{path}: {type(exc).__name__}: {exc}")
            continue
        for key in (schema.META_ENCODER, schema.META_WEIGHTS, schema.META_DIM):
            if found.get(key) != metadata[key]:
                raise IncompatibleFeatures(
                    f"{path} holds {key.decode()}={found.get(key, b'?').decode()!r}, this run makes "
                    f"{metadata[key].decode()!r}: rerun with --full to re-extract every image"
                )
        # int8 features are another vector space than float ones (fp32, bf16 and fp16 differ only
        # by rounding, and may be mixed as before)
        made = found.get(schema.META_PRECISION, b"float32")
        if inference.vector_space(made) != inference.vector_space(metadata[schema.META_PRECISION]):
            raise IncompatibleFeatures(
                f"{path} holds precision={made.decode()!r} features, this run makes "
                f"{metadata[schema.META_PRECISION].decode()!r}: int8 and float features are different vector "
                "spaces; rerun with --full to re-extract every image"
            )
        usable.append(path)
    return usable


def int8_models_of(shards: Sequence[str]) -> list[str]:
    """The quantised models (file names) that existing int8 feature shards were made with."""
    names = {read_shard_metadata(p).get(schema.META_INT8_MODEL) for p in shards}
    return sorted(n.decode("utf-8") for n in names if n)


def inprogress_pattern(out: str, full: bool = False) -> str:
    return f"{shards_dir(out, full)}/{INPROGRESS_PREFIX}*{INPROGRESS_SUFFIX}"


def clear_inprogress_chunks(out: str) -> list[str]:
    """Chunks a killed run was writing when it died: never committed, so never read; remove them."""
    stale = common.glob(inprogress_pattern(out)) + common.glob(inprogress_pattern(out, full=True))
    common.delete(stale)
    if stale:
        log.info("%s: removed %d half-written chunks of an interrupted run", STAGE, len(stale))
    return stale


CHUNK_DIGEST_CHARS = 16


def chunk_name(run_prefix_: str, image_ids: Sequence[str]) -> str:
    """A chunk's name in this run: named by the image ids it holds, in order, so the same rows
    committed again (a retried bundle, on any worker) replace the chunk rather than copy it."""
    digest = hashlib.sha256("\n".join(image_ids).encode("utf-8")).hexdigest()[:CHUNK_DIGEST_CHARS]
    return f"{run_prefix_}-{digest}{schema.PARQUET_SUFFIX}"


def inprogress_path(final: str) -> str:
    directory, name = final.rsplit("/", 1)
    return f"{directory}/{INPROGRESS_PREFIX}{name}{INPROGRESS_SUFFIX}"


def features_table(rows: Sequence[dict[str, Any]], table_schema: pa.Schema) -> pa.Table:
    """Feature rows -> a table; the embeddings stacked once, not converted value by value."""
    dim = table_schema.field(schema.EMBEDDING).type.list_size
    flat = np.stack([r[schema.EMBEDDING] for r in rows]).astype(np.float32, copy=False).reshape(-1)
    columns = {
        schema.IMAGE_ID: pa.array([r[schema.IMAGE_ID] for r in rows], pa.string()),
        schema.EMBEDDING: pa.FixedSizeListArray.from_arrays(pa.array(flat), dim),
        schema.CONTENT_HASH: pa.array([r[schema.CONTENT_HASH] for r in rows], pa.string()),
        schema.WIDTH: pa.array([r[schema.WIDTH] for r in rows], pa.int32()),
        schema.HEIGHT: pa.array([r[schema.HEIGHT] for r in rows], pa.int32()),
    }
    return pa.Table.from_arrays([columns[name] for name in table_schema.names], schema=table_schema)


def write_parquet_file(path: str, table: pa.Table, row_group_rows: int) -> None:
    """One Parquet file through FileSystems (local or gs://). The fault tests replace this."""
    with common.BeamFiles().open_write(path) as f:
        pq.write_table(table, f, compression="snappy", row_group_size=row_group_rows)


def commit_chunk(final: str, table: pa.Table, row_group_rows: int) -> None:
    """Write a chunk under a temporary name and rename it into place (storage.StagedOutput.file):
    a reader sees it whole or not at all. A failed write leaves nothing behind and raises
    ShardWriteError."""
    try:
        with storage.StagedOutput.file(final, temp=inprogress_path(final), files=common.BeamFiles()) as temp:
            write_parquet_file(temp, table, row_group_rows)
    except Exception as exc:
        raise ShardWriteError(
            getattr(exc, "errno", None) or errno.EIO,
            f"could not write feature chunk {final} ({type(exc).__name__}: {exc}); nothing of it was "
            "committed, and a rerun extracts its images again",
        ) from exc


# ---------------------------------------------------------------------------
# A run's chunks: their metadata, and the DoFn that commits them as it goes
# ---------------------------------------------------------------------------
def features_metadata(spec: encoders.EncoderSpec, precision: str, int8_model: str | None = None) -> dict[bytes, bytes]:
    metadata = {
        schema.META_ENCODER: spec.name.encode("utf-8"),
        schema.META_WEIGHTS: spec.weights.encode("utf-8"),
        schema.META_DIM: str(spec.dim).encode("ascii"),
        schema.META_PRECISION: inference.METADATA_NAMES[precision].encode("ascii"),
    }
    if precision == inference.INT8 and int8_model:
        metadata[schema.META_INT8_MODEL] = int8_model.rsplit("/", 1)[-1].encode("utf-8")
    return metadata


def chunk_metadata(base: dict[bytes, bytes], precision: str, int8_model: str | None) -> dict[bytes, bytes]:
    """A chunk's metadata: the run's, with the precision its rows were actually made in."""
    metadata = {k: v for k, v in base.items() if k != schema.META_INT8_MODEL}
    metadata[schema.META_PRECISION] = inference.METADATA_NAMES[precision].encode("ascii")
    if precision == inference.INT8 and int8_model:
        metadata[schema.META_INT8_MODEL] = int8_model.rsplit("/", 1)[-1].encode("utf-8")
    return metadata


def precisions_ran(prefix: str) -> list[str]:
    """The precisions a run's committed chunks record (what the workers actually ran)."""
    names = {v: k for k, v in inference.METADATA_NAMES.items()}
    found = set()
    for path in common.glob(prefix + "-*" + schema.PARQUET_SUFFIX):
        made = read_shard_metadata(path).get(schema.META_PRECISION, b"").decode("utf-8", "replace")
        found.add(names.get(made, made))
    return sorted(found)


class CommitFeaturesFn(beam.DoFn):
    """Feature rows -> Parquet chunks of commit_every rows, each committed as soon as it is full.

    Beam's file sinks make every file visible only when the whole job finishes, so a killed job
    kept nothing; here each worker renames a full chunk into place (and the rest at the end of a
    bundle). Idempotent under a retried bundle: a chunk is named by its image ids (chunk_name),
    so the same rows in the same order rewrite the same chunks, whichever worker retries them.
    A runner that splits a retried bundle differently may commit some rows twice, under other
    names: readers keep one row per image_id (common.OnePerKey). Yields the committed paths.
    """

    def __init__(self, run_prefix_: str, table_schema: pa.Schema, commit_every: int, int8_model: str | None = None):
        self._run_prefix = run_prefix_
        self._schema = table_schema
        self._commit_every = commit_every
        self._int8_model = int8_model
        self._precision: str | None = None  # of the rows held: a chunk holds one precision
        dim = table_schema.field(schema.EMBEDDING).type.list_size
        # row groups capped at ROW_GROUP_BYTES of embeddings: bounded memory for streamed readers
        self._row_group_rows = max(1, ROW_GROUP_BYTES // (4 * dim))
        self._chunks = common.counter(STAGE, FEATURE_CHUNKS)
        self._rows: list[dict[str, Any]] = []

    def start_bundle(self) -> None:
        self._rows = []

    def _commit(self) -> str:
        final = chunk_name(self._run_prefix, [r[schema.IMAGE_ID] for r in self._rows])
        table_schema = self._schema
        if self._precision:  # what the worker ran, which --precision auto decides there
            base = dict(self._schema.metadata or {})
            table_schema = self._schema.with_metadata(chunk_metadata(base, self._precision, self._int8_model))
        commit_chunk(final, features_table(self._rows, table_schema), self._row_group_rows)
        self._rows = []
        self._chunks.inc()
        return final

    def process(self, row: dict[str, Any]) -> Iterator[str]:
        precision = row.get(PRECISION_RAN)
        if self._rows and precision != self._precision:
            yield self._commit()
        self._precision = precision
        self._rows.append(row)
        if len(self._rows) >= self._commit_every:
            yield self._commit()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._rows:
            yield WindowedValue(self._commit(), MIN_TIMESTAMP, [GlobalWindow()])


class WriteImageFeatures(beam.PTransform):
    """Feature rows -> committed chunk files under the run's prefix; the paths written."""

    def __init__(
        self,
        prefix: str,
        spec: encoders.EncoderSpec,
        precision: str,
        commit_every: int,
        int8_model: str | None = None,
    ):
        super().__init__()
        self._prefix = prefix
        self._schema = schema.image_features_schema(spec.dim, features_metadata(spec, precision, int8_model))
        self._commit_every = commit_every
        self._int8_model = int8_model

    def expand(self, rows):
        return rows | "CommitChunks" >> beam.ParDo(
            CommitFeaturesFn(self._prefix, self._schema, self._commit_every, self._int8_model)
        )
