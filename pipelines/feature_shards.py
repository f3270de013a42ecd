"""The feature shards of extract-images: naming, finding, checking and committing them.

A run names its shards features-<UTC time>-<random>-<writer>-SSSSS.parquet, so they never clash
with an earlier run's; each chunk is written under a temporary name and renamed into place, so
a reader sees it whole or not at all; readers match finished names only, and existing shards of
another encoder, weights or vector space (int8 against float) are refused rather than mixed.
"""

from __future__ import annotations

import errno
import logging
import secrets
import time
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from model import inference, schema
from pipelines import common

log = logging.getLogger(__name__)

STAGE = "extract-images"  # whose shards these are, in log lines
SHARD_PREFIX = schema.IMAGE_FEATURES_PREFIX
UNREADABLE_SUBDIR = "unreadable"
INPROGRESS_PREFIX = ".inprogress-"
INPROGRESS_SUFFIX = ".tmp"


def features_prefix(out: str) -> str:
    return schema.out_path(out, schema.IMAGE_FEATURES_DIR, SHARD_PREFIX)


def feature_shards(out: str) -> list[str]:
    """The finished image-feature shards under OUT (never a running job's temporary files)."""
    return common.glob(schema.shard_pattern(out, schema.IMAGE_FEATURES_DIR, SHARD_PREFIX))


def run_prefix(out: str) -> str:
    """A new run's shard prefix, features-<UTC time>-<random>: never clashes with earlier runs'."""
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
    return f"{features_prefix(out)}-{run_id}"


def read_shard_metadata(path: str) -> dict[bytes, bytes]:
    # the footer only: Beam's file objects seek, so a large shard is not read whole
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return dict(pq.ParquetFile(f).schema_arrow.metadata or {})


class ShardWriteError(OSError):
    """A feature chunk could not be written (disk full, permissions): nothing of it was committed."""


class IncompatibleFeatures(ValueError):
    """Existing features were made by another encoder: appending would mix two vector spaces."""


def usable_feature_shards(out: str, metadata: dict[bytes, bytes]) -> list[str]:
    """Existing shards this run can add to; unreadable ones are moved aside, never half-read.

    Beam writes a shard to a temporary folder and renames it into place, so a shard under its
    final name is whole; one that is not (copied in by hand, or a store that broke mid-copy) is
    moved to features/image/unreadable/ where no reader looks, with a warning.
    """
    usable = []
    for path in feature_shards(out):
        try:
            found = read_shard_metadata(path)
        except Exception as exc:
            aside = schema.out_path(out, schema.IMAGE_FEATURES_DIR, UNREADABLE_SUBDIR, path.rsplit("/", 1)[-1])
            log.warning("%s: %s is unreadable (%s); moved to %s", STAGE, path, exc, aside)
            if not common.exists(aside.rsplit("/", 1)[0]):
                FileSystems.mkdirs(aside.rsplit("/", 1)[0])
            FileSystems.rename([path], [aside])
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


def inprogress_pattern(out: str) -> str:
    return schema.out_path(out, schema.IMAGE_FEATURES_DIR, INPROGRESS_PREFIX + "*" + INPROGRESS_SUFFIX)


def clear_inprogress_chunks(out: str) -> list[str]:
    """Chunks a killed run was writing when it died: never committed, so never read; remove them."""
    stale = common.glob(inprogress_pattern(out))
    common.delete(stale)
    if stale:
        log.info("%s: removed %d half-written chunks of an interrupted run", STAGE, len(stale))
    return stale


def chunk_name(run_prefix_: str, writer: str, seq: int) -> str:
    return f"{run_prefix_}-{writer}-{seq:05d}{schema.PARQUET_SUFFIX}"


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
    with FileSystems.create(path, mime_type="application/octet-stream") as f:
        pq.write_table(table, f, compression="snappy", row_group_size=row_group_rows)


def commit_chunk(final: str, table: pa.Table, row_group_rows: int) -> None:
    """Write a chunk under a temporary name and rename it into place: a reader sees it whole or
    not at all. A failed write leaves nothing behind and raises ShardWriteError."""
    temp = inprogress_path(final)
    try:
        write_parquet_file(temp, table, row_group_rows)
        FileSystems.rename([temp], [final])
    except Exception as exc:
        try:
            if common.exists(temp):
                common.delete([temp])
        except Exception:  # the store may be failing as a whole; the original error matters
            log.warning("%s: could not remove %s", STAGE, temp)
        raise ShardWriteError(
            getattr(exc, "errno", None) or errno.EIO,
            f"could not write feature chunk {final} ({type(exc).__name__}: {exc}); nothing of it was "
            "committed, and a rerun extracts its images again",
        ) from exc
