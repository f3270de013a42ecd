"""The one place where column names, pyarrow schemas and the OUT layout are spelled.

Every stage imports its names from here; no stage re-spells a column name or a path.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

# ---------------------------------------------------------------------------
# Column names
# ---------------------------------------------------------------------------
IMAGE_ID = "image_id"
URI = "uri"
TAG = "tag"
TAG_RAW = "tag_raw"
SPLIT = "split"
ORDINAL = "ordinal"  # position in the source manifest: "index order", what the prototype showed
EMBEDDING = "embedding"
CONTENT_HASH = "content_hash"
WIDTH = "width"
HEIGHT = "height"
STATUS = "status"
KNOWN_WORDS = "known_words"
STAGE = "stage"
ERROR = "error"
MESSAGE = "message"
RANK = "rank"
SCORE = "score"
PUBLIC_URI = "public_uri"  # what the site shows for an image: a public link, or a path relative to its root
IMAGE_IDS = "image_ids"
COUNT = "count"
# neighbour lists (k nearest images by cosine over image features, self excluded)
NEIGHBOUR_IDS = "neighbour_ids"
SIMILARITIES = "similarities"
# per (image, tag) signals that need no model: the neighbours' tags and the tag's mean feature
AGREEMENT = "agreement"  # share of the image's neighbours that carry the tag
AGREEMENT_WEIGHTED = "agreement_weighted"  # the same, each neighbour weighted by its similarity
MEAN_FEATURE = "mean_feature"  # cosine to the mean feature of the tag's other images (leave-one-out)
# cosine to the own tag's mean unit feature (leave-one-out) minus that to the nearest other tag's
CENTROID_MARGIN = "centroid_margin"
# cross-fitting: the fold whose model never trained on the image (-1: no fold trained on it)
FOLD = "fold"
NO_FOLD = -1
# published score components (raw values; the per-tag standardisation happens in rank)
MATCHER = "matcher"  # cosine of the two towers of the model that never trained on the image
MATCHER_IN_SAMPLE = "matcher_in_sample"  # a model that did train on it: what memorisation shows

SPLIT_TRAIN = "train"
SPLIT_TEST = "test"

# extract-text statuses
TEXT_OK = "ok"  # every word of the tag had a vector
TEXT_PARTIAL = "partial"  # some words had a vector; the embedding averages those
TEXT_OOV = "oov"  # no word had a vector; the embedding is null, never a fake zero vector
TEXT_STATUSES = (TEXT_OK, TEXT_PARTIAL, TEXT_OOV)

# Parquet file metadata keys (bytes, as pyarrow stores them)
META_ENCODER = b"imgsearch.encoder"
META_WEIGHTS = b"imgsearch.weights"
META_DIM = b"imgsearch.dim"
META_PRECISION = b"imgsearch.precision"
META_INT8_MODEL = b"imgsearch.int8_model"  # the quantised encoder int8 features came from (its file name)
META_WORD_VECTORS = b"imgsearch.word_vectors"
META_NEIGHBOURS = b"imgsearch.neighbours"  # JSON: k, method, searched dim, images

# ---------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------
IMAGES_SCHEMA = pa.schema(
    [
        pa.field(IMAGE_ID, pa.string(), nullable=False),
        pa.field(URI, pa.string(), nullable=False),
        pa.field(TAG, pa.string(), nullable=False),
        pa.field(TAG_RAW, pa.string(), nullable=False),
        pa.field(SPLIT, pa.string(), nullable=False),
        pa.field(ORDINAL, pa.int64(), nullable=False),
    ]
)

INVERTED_INDEX_SCHEMA = pa.schema(
    [
        pa.field(TAG, pa.string(), nullable=False),
        pa.field(COUNT, pa.int64(), nullable=False),
        pa.field(IMAGE_IDS, pa.list_(pa.string()), nullable=False),
    ]
)

FAILURES_SCHEMA = pa.schema(
    [
        pa.field(IMAGE_ID, pa.string()),
        pa.field(URI, pa.string()),
        pa.field(STAGE, pa.string(), nullable=False),
        pa.field(ERROR, pa.string(), nullable=False),
        pa.field(MESSAGE, pa.string()),
    ]
)

RANKINGS_SCHEMA = pa.schema(
    [
        pa.field(TAG, pa.string(), nullable=False),
        pa.field(RANK, pa.int32(), nullable=False),
        pa.field(IMAGE_ID, pa.string(), nullable=False),
        pa.field(URI, pa.string(), nullable=False),
        pa.field(PUBLIC_URI, pa.string(), nullable=False),
        # the published score (what ranked the tag); null where no signal exists and index order ranks
        pa.field(SCORE, pa.float32()),
        # its components, kept so every ranker can be evaluated on exactly what was published
        pa.field(MATCHER, pa.float32()),
        pa.field(MATCHER_IN_SAMPLE, pa.float32()),
        pa.field(AGREEMENT, pa.float32()),
        pa.field(AGREEMENT_WEIGHTED, pa.float32()),
        pa.field(MEAN_FEATURE, pa.float32()),
        pa.field(CENTROID_MARGIN, pa.float32()),
        pa.field(FOLD, pa.int32(), nullable=False),
        pa.field(ORDINAL, pa.int64(), nullable=False),
        pa.field(SPLIT, pa.string(), nullable=False),
    ]
)

COPY_GROUP = "copy_group"  # the smallest image id among an image and its copies (itself when it has none)
# A neighbour this close (cosine in the neighbour lists' space) is a copy: re-encoded, resized,
# cropped by a few pixels. neighbours' copy groups and rank's folding of copies share it.
COPY_THRESHOLD = 0.985
NEIGHBOURS_SCHEMA = pa.schema(
    [
        pa.field(IMAGE_ID, pa.string(), nullable=False),
        pa.field(NEIGHBOUR_IDS, pa.list_(pa.string()), nullable=False),  # most similar first
        pa.field(SIMILARITIES, pa.list_(pa.float32()), nullable=False),  # cosine, aligned with the ids
        # exact copies (content hash) and near copies (cosine >= neighbours' copy threshold), transitively
        pa.field(COPY_GROUP, pa.string()),
    ]
)

SIGNALS_SCHEMA = pa.schema(
    [
        pa.field(IMAGE_ID, pa.string(), nullable=False),
        pa.field(TAG, pa.string(), nullable=False),
        pa.field(AGREEMENT, pa.float32()),  # null: the image has no neighbour list
        pa.field(AGREEMENT_WEIGHTED, pa.float32()),
        pa.field(MEAN_FEATURE, pa.float32()),  # null: the tag has no other image with features
        pa.field(CENTROID_MARGIN, pa.float32()),  # null: likewise, or no other tag to compare with
    ]
)

# duplicates (rank, from content hashes and the neighbour lists): each image that has a copy,
# and its group's representative (the group's smallest image id)
DUPLICATE_OF = "duplicate_of"
DUPLICATES_SCHEMA = pa.schema(
    [
        pa.field(IMAGE_ID, pa.string(), nullable=False),
        pa.field(DUPLICATE_OF, pa.string(), nullable=False),
    ]
)

FOLDS_SCHEMA = pa.schema(
    [
        pa.field(IMAGE_ID, pa.string(), nullable=False),
        pa.field(FOLD, pa.int32(), nullable=False),
    ]
)


def image_features_schema(dim: int, metadata: dict[bytes, bytes] | None = None) -> pa.Schema:
    return pa.schema(
        [
            pa.field(IMAGE_ID, pa.string(), nullable=False),
            pa.field(EMBEDDING, pa.list_(pa.float32(), dim), nullable=False),
            pa.field(CONTENT_HASH, pa.string(), nullable=False),
            pa.field(WIDTH, pa.int32(), nullable=False),
            pa.field(HEIGHT, pa.int32(), nullable=False),
        ],
        metadata=metadata,
    )


def text_features_schema(dim: int, metadata: dict[bytes, bytes] | None = None) -> pa.Schema:
    return pa.schema(
        [
            pa.field(TAG, pa.string(), nullable=False),
            # null for oov tags. A variable-size list holding `dim` floats (META_DIM): pyarrow
            # cannot read a null fixed-size list back from Parquet (apache/arrow#35692).
            pa.field(EMBEDDING, pa.list_(pa.float32())),
            pa.field(STATUS, pa.string(), nullable=False),
            pa.field(KNOWN_WORDS, pa.int32(), nullable=False),
        ],
        metadata=metadata,
    )


# ---------------------------------------------------------------------------
# Layout under the output root OUT (local path or gs://...). Join with out_path().
# ---------------------------------------------------------------------------
IMAGES_DIR = "index/images"  # images-SSSSS-of-NNNNN.parquet
TAG2PICID_JSON = "index/tag2picid.json"  # the prototype's inverted index
TAG2PICID_DIR = "index/tag2picid"  # the same, as Parquet shards
INDEX_SOURCE_JSON = "index/source.json"  # the local roots the manifest's uris were confined to
# tags that several different raw spellings folded into: [{"tag", "spellings": [...], "count"}]
TAG_FOLDS_JSON = "index/tag_folds.json"
IMAGE_FEATURES_DIR = "features/image"
TEXT_FEATURES_DIR = "features/text"
FAILURES_DIR = "failures"  # <stage>-SSSSS-of-NNNNN.parquet
MODEL_DIR = "model"
CHECKPOINT = "model/matcher.pt"
TRAINING_JSON = "model/training.json"  # every member's epochs, early stopping, args
METRICS_JSON = "report/metrics.json"  # the evaluation of what rank published
IMAGE_TOWER_ONNX = "model/image_tower.onnx"
TEXT_TOWER_ONNX = "model/text_tower.onnx"
EXPORT_JSON = "model/export.json"
RANKINGS_DIR = "rankings"
NEIGHBOURS_DIR = "neighbours"  # neighbours-SSSSS-of-NNNNN.parquet (NEIGHBOURS_SCHEMA)
SIGNALS_DIR = "signals"  # signals-SSSSS-of-NNNNN.parquet (SIGNALS_SCHEMA)
DUPLICATES_DIR = "duplicates"  # duplicates-00000-of-00001.parquet (DUPLICATES_SCHEMA), written by rank
FOLDS_DIR = "model/folds"  # folds-SSSSS-of-NNNNN.parquet: the images each fold held out
REPORT_DIR = "report"  # the evaluation of what was published: metrics.json, index.html, plots
SITE_DIR = "site"
REPORTS_DIR = "reports"  # <stage>.json, one summary per stage run

# The ONNX towers' contract (export writes it, rank reads it): one float32 input [batch, dim],
# one float32 output [batch, members, out_dim], L2-normalised per member.
TOWER_INPUT = "features"
TOWER_OUTPUT = "embeddings"

# Ground truth (demo corpus only; training never reads it, evaluation does):
# JSON lines {"uri": ..., "tag": <crawled tag>, "true_tag": <what the image shows>}
TRUE_TAG = "true_tag"

PARQUET_SUFFIX = ".parquet"
# Shard file-name prefixes: <dir>/<prefix>-...parquet. Readers match on the prefix, so Beam's
# temporary folders (<dir>/beam-temp-<prefix>-<uuid>/) of a running or interrupted job never match.
IMAGES_PREFIX = "images"
IMAGE_FEATURES_PREFIX = "features"
TEXT_FEATURES_PREFIX = "text"
RANKINGS_PREFIX = "rankings"
NEIGHBOURS_PREFIX = "neighbours"
SIGNALS_PREFIX = "signals"
FOLDS_PREFIX = "folds"
DUPLICATES_PREFIX = "duplicates"


def shard_pattern(out: str, directory: str, prefix: str) -> str:
    """The glob of a directory's finished shards (never a temporary file of a running job)."""
    return out_path(out, directory, f"{prefix}-*{PARQUET_SUFFIX}")


def out_path(out: str, *parts: str) -> str:
    """Join parts under OUT with '/', which is right for local paths and gs:// alike."""
    base = out.rstrip("/")
    return "/".join([base, *(p.strip("/") for p in parts)])


# ---------------------------------------------------------------------------
# The image store (stage `fetch`): OUT/images/store-<run>-SSSSS-of-NNNNN.parquet, one row per
# image. A row with null bytes is a reference: the image is read from its uri (local, gs://).
# ---------------------------------------------------------------------------
IMAGE_BYTES = "bytes"
SHA256 = "sha256"  # of the stored bytes: the same image id means the same bytes everywhere
CONTENT_TYPE = "content_type"  # sniffed from the bytes (magic numbers), never the server's header
HTTP_STATUS = "http_status"  # of the final response; null for local files
FETCHED_AT = "fetched_at"
ORIGINAL_WIDTH = "original_width"  # before --resize-to (null when the stored image is the original)
ORIGINAL_HEIGHT = "original_height"
STORE_DIR = "images"
STORE_PREFIX = "store"

IMAGE_STORE_SCHEMA = pa.schema(
    [
        pa.field(IMAGE_ID, pa.string(), nullable=False),
        pa.field(URI, pa.string(), nullable=False),
        pa.field(IMAGE_BYTES, pa.binary()),
        pa.field(SHA256, pa.string()),
        pa.field(CONTENT_TYPE, pa.string()),
        pa.field(HTTP_STATUS, pa.int32()),
        pa.field(WIDTH, pa.int32()),
        pa.field(HEIGHT, pa.int32()),
        pa.field(FETCHED_AT, pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field(ORIGINAL_WIDTH, pa.int32()),
        pa.field(ORIGINAL_HEIGHT, pa.int32()),
    ]
)
