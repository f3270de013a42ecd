"""Image features as every one-machine stage reads them: streamed from OUT/features/image.

train and neighbours read 1.7M x 2048 floats (14 GB) this way: one (file, row group) unit at a
time, the wanted rows only, each image once. numpy and pyarrow only (no torch, no Beam).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping, Sequence

import numpy as np

from model import schema, storage
from model.report import RunRefused, StageRefused, StageReport

DEFAULT_READ_ROWS = 4096
# where a feature shard no reader can use is moved (features/image/unreadable/): no reader looks
UNREADABLE_SUBDIR = "unreadable"
QUARANTINED_SHARDS = "quarantined_shards"  # a report's count of the shards moved there


class NonFiniteFeatures(RunRefused):
    """A feature shard holds NaN or inf: training on it would silently produce a NaN model."""


@dataclasses.dataclass
class ImageFeatureFiles:
    files: list[str]
    units: list[tuple[str, int]]  # (file, row group): the unit of shuffled reading
    dim: int
    metadata: dict[str, str]  # encoder, weights, ... from the file metadata


class BadFeatureShards(StageRefused):
    """Feature shards no reader can use (truncated, another dimension): moved aside, named, and
    the run refused, so a stage never reads half a vector space or dies on a raw pyarrow error."""


def _shard_dim(path: str) -> int:
    """The embedding dimension a shard's footer declares; raises when it cannot be read."""
    field = storage.open_parquet(path).schema_arrow.field(schema.EMBEDDING)
    size = getattr(field.type, "list_size", None)
    if not size:
        raise ValueError(f"its {schema.EMBEDDING} column is {field.type}, not a fixed-size list")
    return int(size)


def feature_shard_problems(files: Sequence[str]) -> list[tuple[str, str]]:
    """(file, reason) for each shard that cannot be read with the others: a footer that does not
    read (truncated, not Parquet), or an embedding dimension other than most shards'."""
    dims: dict[str, int] = {}
    problems = []
    for path in files:
        try:
            dims[path] = _shard_dim(path)
        except Exception as exc:  # what pyarrow says is the reason (magic bytes not found, ...)
            problems.append((path, f"unreadable: {type(exc).__name__}: {exc}"))
    if dims:
        counts: dict[int, int] = {}
        for d in dims.values():
            counts[d] = counts.get(d, 0) + 1
        common_dim = max(counts, key=lambda d: (counts[d], -list(dims.values()).index(d)))
        problems += [
            (path, f"{d}-d embeddings, the other shards' are {common_dim}-d") for path, d in dims.items() if d != common_dim
        ]
    return problems


def quarantine(out: str, path: str) -> str:
    """Move a shard to features/image/unreadable/ (where no reader looks); returns where."""
    aside = schema.out_path(out, schema.IMAGE_FEATURES_DIR, UNREADABLE_SUBDIR, path.rsplit("/", 1)[-1])
    storage.FsspecFiles().rename([path], [aside])
    return aside


def check_feature_shards(out: str, stage: str, files: Sequence[str]) -> None:
    """Refuse the run when a shard cannot be read with the others: each bad one is moved aside,
    the stage's report (with quarantined_shards) saved, and BadFeatureShards names every file and
    its reason. A rerun reads the rest; extract-images extracts the moved shards' images again."""
    problems = feature_shard_problems(files)
    if not problems:
        return
    moved = [(path, reason, quarantine(out, path)) for path, reason in problems]
    report = StageReport(
        stage=stage,
        details={
            QUARANTINED_SHARDS: len(moved),
            "quarantined": [{"file": p, "reason": r, "moved_to": a} for p, r, a in moved],
        },
    )
    report.save(out)
    named = "; ".join(f"{p}: {r}" for p, r, _ in moved)
    raise BadFeatureShards(
        report,
        f"{stage}: {len(moved)} image-feature shard(s) cannot be read with the others ({named}); moved to "
        f"{schema.out_path(out, schema.IMAGE_FEATURES_DIR, UNREADABLE_SUBDIR)}/. Rerun extract-images "
        f"(it extracts their images again), then {stage}",
    )


def find_image_features(out: str, stage: str | None = None) -> ImageFeatureFiles:
    """The finished feature shards and their row groups. With a stage, shards that cannot be read
    with the others refuse the run first (check_feature_shards)."""
    directory = schema.out_path(out, schema.IMAGE_FEATURES_DIR)
    # finished shards only: never a temporary file of a running extract or a stray file
    prefix = schema.IMAGE_FEATURES_PREFIX + "-"
    files = [f for f in storage.list_files(directory, schema.PARQUET_SUFFIX) if f.rsplit("/", 1)[-1].startswith(prefix)]
    if files and stage:
        check_feature_shards(out, stage, files)
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
