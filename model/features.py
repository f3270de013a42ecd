"""Image features as every one-machine stage reads them: streamed from OUT/features/image.

train and neighbours read 1.7M x 2048 floats (14 GB) this way: one (file, row group) unit at a
time, the wanted rows only, each image once. numpy and pyarrow only (no torch, no Beam).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping, Sequence

import numpy as np

from model import schema, storage

DEFAULT_READ_ROWS = 4096


class NonFiniteFeatures(ValueError):
    """A feature shard holds NaN or inf: training on it would silently produce a NaN model."""


@dataclasses.dataclass
class ImageFeatureFiles:
    files: list[str]
    units: list[tuple[str, int]]  # (file, row group): the unit of shuffled reading
    dim: int
    metadata: dict[str, str]  # encoder, weights, ... from the file metadata


def find_image_features(out: str) -> ImageFeatureFiles:
    directory = schema.out_path(out, schema.IMAGE_FEATURES_DIR)
    # finished shards only: never a temporary file of a running extract or a stray file
    prefix = schema.IMAGE_FEATURES_PREFIX + "-"
    files = [f for f in storage.list_files(directory, schema.PARQUET_SUFFIX) if f.rsplit("/", 1)[-1].startswith(prefix)]
    if not files:
        raise FileNotFoundError(f"no image features under {directory} (run extract-images)")
    units: list[tuple[str, int]] = []
    dim, meta = 0, None
    for f in files:
        pf = storage.open_parquet(f)
        if meta is None:
            meta = pf.schema_arrow.metadata
            dim = pf.schema_arrow.field(schema.EMBEDDING).type.list_size
        units += [(f, rg) for rg in range(pf.num_row_groups)]
    metadata = {
        k.decode("utf-8"): v.decode("utf-8")
        for k, v in (meta or {}).items()
        if k in (schema.META_ENCODER, schema.META_WEIGHTS, schema.META_DIM, schema.META_PRECISION)
    }
    return ImageFeatureFiles(files=files, units=units, dim=dim, metadata=metadata)


def iter_feature_rows(
    units: Sequence[tuple[str, int]], wanted: Mapping[str, int], dim: int, read_rows: int = DEFAULT_READ_ROWS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(features float32 [n, dim], wanted[image_id] int64 [n]) for the wanted rows, batch by batch.

    Reads one (file, row group) unit at a time in the order given, so memory holds one read batch.
    An image id met twice in a pass (a chunk that extract-images committed twice after a retried
    bundle) yields its first row only.
    """
    current, pf = None, None
    seen: set[str] = set()
    for path, row_group in units:
        if path != current:
            current, pf = path, storage.open_parquet(path)
        for batch in pf.iter_batches(batch_size=read_rows, row_groups=[row_group], columns=[schema.IMAGE_ID, schema.EMBEDDING]):
            ids = batch.column(0).to_pylist()
            keep = [i for i, image_id in enumerate(ids) if image_id in wanted and image_id not in seen]
            if not keep:
                continue
            seen.update(ids[i] for i in keep)
            # flatten() honours the batch's offset, unlike .values
            features = batch.column(1).flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
            finite = np.isfinite(features).all(axis=1)
            if not finite.all():
                bad = [ids[i] for i in np.flatnonzero(~finite)[:3]]
                raise NonFiniteFeatures(
                    f"{path} (row group {row_group}): {int((~finite).sum())} image feature rows hold NaN or inf, "
                    f"e.g. image ids {bad}; rerun extract-images --full, or delete that shard and rerun extract-images"
                )
            values = np.fromiter((wanted[ids[i]] for i in keep), dtype=np.int64, count=len(keep))
            yield np.ascontiguousarray(features[keep], dtype=np.float32), values
