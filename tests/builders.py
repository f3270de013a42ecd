"""The tables earlier stages would have written, built with the real schemas and shard names.

Every test that needs an images table, image features or text features under an OUT folder
writes them through these, so no test spells a column or a shard name itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from model import schema
from model.tags import image_id_for, normalize_tag, split_for


def shard_name(prefix: str, index: int = 0, count: int = 1) -> str:
    """<prefix>-SSSSS-of-NNNNN.parquet, as the stages name finished shards."""
    return f"{prefix}-{index:05d}-of-{count:05d}{schema.PARQUET_SUFFIX}"


def write_table(
    out: Path, directory: str, prefix: str, rows: Sequence[dict], table_schema: pa.Schema, *, index: int = 0, count: int = 1, **parquet
) -> Path:
    """One finished shard (index of count) of a stage's table."""
    path = Path(out) / directory / shard_name(prefix, index, count)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(list(rows), schema=table_schema), path, **parquet)
    return path


def image_rows(
    uris_and_tags: Iterable[tuple[str, str]],
    split: str | None = None,
    *,
    ids: Sequence[str] | None = None,
    ordinals: Sequence[int] | None = None,
) -> list[dict]:
    """Rows of the images table, as index writes them: id from the uri, split from the id
    (or the one given), ordinal in the order given. `ids` and `ordinals`, one per row, replace
    the id from the uri and the order given."""
    rows = []
    for i, (uri, tag) in enumerate(uris_and_tags):
        image_id = image_id_for(uri) if ids is None else ids[i]
        ordinal = i if ordinals is None else ordinals[i]
        rows.append(
            {
                schema.IMAGE_ID: image_id,
                schema.URI: uri,
                schema.TAG: normalize_tag(tag),
                schema.TAG_RAW: tag,
                schema.SPLIT: split or split_for(image_id),
                schema.ORDINAL: ordinal,
            }
        )
    return rows


def write_images(out: Path, rows: Sequence[dict], *, index: int = 0, count: int = 1) -> Path:
    return write_table(out, schema.IMAGES_DIR, schema.IMAGES_PREFIX, rows, schema.IMAGES_SCHEMA, index=index, count=count)


def write_image_features(
    out: Path,
    vectors: Mapping[str, Sequence[float]],
    *,
    encoder: str = "test-encoder",
    weights: str = "random",
    content_hashes: Mapping[str, str] | None = None,
    row_group_size: int | None = None,
    width: int = 64,
    height: int = 48,
    index: int = 0,
    count: int = 1,
) -> Path:
    """image_id -> vector, as extract-images writes them (fixed-size lists, metadata)."""
    dim = len(next(iter(vectors.values())))
    meta = {schema.META_ENCODER: encoder.encode(), schema.META_WEIGHTS: weights.encode(), schema.META_DIM: str(dim).encode()}
    rows = image_feature_rows(vectors, content_hashes=content_hashes, width=width, height=height)
    return write_table(
        out, schema.IMAGE_FEATURES_DIR, schema.IMAGE_FEATURES_PREFIX, rows, schema.image_features_schema(dim, meta),
        index=index, count=count, row_group_size=row_group_size,
    )


def write_text_features(out: Path, vectors: Mapping[str, Sequence[float] | None], *, word_vectors: str = "generated") -> Path:
    """tag -> vector (None: oov), as extract-text writes them."""
    dims = {len(v) for v in vectors.values() if v is not None}
    meta = {schema.META_WORD_VECTORS: word_vectors.encode()}
    if dims:
        meta[schema.META_DIM] = str(dims.pop()).encode()
    rows = text_feature_rows(vectors)
    dim = int(meta.get(schema.META_DIM, b"0"))
    return write_table(out, schema.TEXT_FEATURES_DIR, schema.TEXT_FEATURES_PREFIX, rows, schema.text_features_schema(dim, meta))


def image_feature_rows(
    vectors: Mapping[str, Sequence[float]],
    *,
    content_hashes: Mapping[str, str] | None = None,
    width: int = 64,
    height: int = 48,
) -> list[dict]:
    """Rows of the image features (image_id -> vector), as extract-images emits them; the content
    hash defaults to the image id (no two images are copies)."""
    return [
        {
            schema.IMAGE_ID: image_id,
            schema.EMBEDDING: [float(x) for x in np.asarray(vec, dtype=np.float32)],
            schema.CONTENT_HASH: (content_hashes or {}).get(image_id, image_id),
            schema.WIDTH: width,
            schema.HEIGHT: height,
        }
        for image_id, vec in vectors.items()
    ]


def text_feature_rows(vectors: Mapping[str, Sequence[float] | None]) -> list[dict]:
    """Rows of the text features (tag -> vector, None: oov), as extract-text emits them."""
    return [
        {
            schema.TAG: normalize_tag(tag),
            schema.EMBEDDING: None if vec is None else [float(x) for x in vec],
            schema.STATUS: schema.TEXT_OOV if vec is None else schema.TEXT_OK,
            schema.KNOWN_WORDS: 0 if vec is None else 1,
        }
        for tag, vec in vectors.items()
    ]


# `imgsearch build`'s flags for the quickest real run: the small encoder with random weights,
# two folds and one epoch (the tests that run a whole build on a few dozen images)
QUICK_BUILD_FLAGS = [
    "--image-model", "efficientnet_lite0",
    "--weights", "random",
    "--precision", "fp32",
    "--folds", "2",
    "--epochs", "1",
    "--neighbours", "3",
]  # fmt: skip
