"""Words outside the tag set: each frequent word's nearest tags, precomputed at rank time.

For the `--related-vocab N` most frequent words of the word vectors (gensim keeps a vocabulary
in frequency order), the cosine to every tag's vector (the text features extract-text wrote from
the same word vectors) gives the word's nearest tags: the top RELATED_PER_WORD at or above
`floor`. Words that are tags themselves are left out (the page finds those directly). The
result is cut into files by a hash of the word (export/hashed_shards.py), each well under
20 KB, so a query that is not a tag costs the page one extra small file per word:
"No tag 'automobile' — related: car, …", and with a close enough best tag (`show_at`) that
tag's first results right away.

Words are keyed by their normalised form (model/tags.normalize_tag, as the page normalises a
query); a phrase of the vocabulary (`fire_engine`) becomes the words joined by a space. The
similarity scan runs in blocks of words against every tag: 200,000 words x 100,000 tags is
one matrix product a block, never the whole matrix at once.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Sequence

import numpy as np

from export import hashed_shards
from model import schema, storage
from model.tags import normalize_tag

log = logging.getLogger(__name__)

DEFAULT_VOCAB = 200_000
RELATED_PER_WORD = 5
DEFAULT_FLOOR = 0.5  # cosine between word vectors below which a tag is not "related"
DEFAULT_SHOW_AT = 0.7  # the best related tag's results are shown right away from here
TARGET_BYTES = 6 * 1024
BUDGET_BYTES = 20 * 1024
BLOCK_WORDS = 4096
KIND = "related"


def read_tag_vectors(out: str) -> tuple[list[str], np.ndarray]:
    """(tags, unit vectors [tags, d]) of every tag with a word vector, from features/text."""
    tags: list[str] = []
    vectors: list[list[float]] = []
    for path in storage.list_files(schema.out_path(out, schema.TEXT_FEATURES_DIR), schema.PARQUET_SUFFIX):
        if not path.rsplit("/", 1)[-1].startswith(schema.TEXT_FEATURES_PREFIX + "-"):
            continue
        table = storage.open_parquet(path).read(columns=[schema.TAG, schema.EMBEDDING, schema.STATUS])
        for tag, vec, status in zip(*(table[c].to_pylist() for c in (schema.TAG, schema.EMBEDDING, schema.STATUS))):
            if vec is not None and status != schema.TEXT_OOV:
                tags.append(tag)
                vectors.append(vec)
    matrix = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    return tags, _unit(matrix)


def word_vectors_path(out: str) -> str | None:
    """The word vectors extract-text read (the text features' metadata names them)."""
    for path in storage.list_files(schema.out_path(out, schema.TEXT_FEATURES_DIR), schema.PARQUET_SUFFIX):
        meta = storage.open_parquet(path).schema_arrow.metadata or {}
        if schema.META_WORD_VECTORS in meta:
            return meta[schema.META_WORD_VECTORS].decode("utf-8")
    return None


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def vocabulary(keys: Sequence[str], limit: int, tags: set[str]) -> tuple[list[str], list[int]]:
    """(normalised words, their rows) of the first `limit` keys that are not tags; the first
    (most frequent) key of each normalised form wins."""
    words, rows, seen = [], [], set()
    for row, key in enumerate(keys[:limit]):
        word = normalize_tag(str(key).replace("_", " "))
        if not word or word in tags or word in seen:
            continue
        seen.add(word)
        words.append(word)
        rows.append(row)
    return words, rows


def related_tags(
    words: Sequence[str],
    word_vectors: np.ndarray,
    tags: Sequence[str],
    tag_vectors: np.ndarray,
    *,
    per_word: int = RELATED_PER_WORD,
    floor: float = DEFAULT_FLOOR,
) -> dict[str, list[list[Any]]]:
    """word -> [[tag, cosine], …] best first, at most per_word, each >= floor; words with none
    are left out. word_vectors [words, d] need not be unit length; tag_vectors must be."""
    related: dict[str, list[list[Any]]] = {}
    if not len(tags):
        return related
    k = min(per_word, len(tags))
    for start in range(0, len(words), BLOCK_WORDS):
        block = _unit(np.asarray(word_vectors[start : start + BLOCK_WORDS], dtype=np.float32))
        sims = block @ tag_vectors.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < len(tags) else np.tile(np.arange(len(tags)), (len(block), 1))
        for r in range(len(block)):
            cols = sorted(top[r], key=lambda c: (-sims[r, c], tags[c]))
            best = [[tags[c], round(float(sims[r, c]), 3)] for c in cols if sims[r, c] >= floor]
            if best:
                related[words[start + r]] = best
    return related


@dataclasses.dataclass
class RelatedWords:
    manifest: dict[str, Any]  # the manifest's "related" object
    facts: dict[str, Any]  # for rank's report


def build(
    kv: Any,
    tags: Sequence[str],
    tag_vectors: np.ndarray,
    *,
    vocab: int = DEFAULT_VOCAB,
    floor: float = DEFAULT_FLOOR,
) -> dict[str, list[list[Any]]]:
    """word -> related tags, for a gensim KeyedVectors' `vocab` most frequent words."""
    words, rows = vocabulary(kv.index_to_key, vocab, set(tags))
    vectors = kv.vectors[rows] if rows else np.zeros((0, tag_vectors.shape[1]), dtype=np.float32)
    return related_tags(words, vectors, tags, tag_vectors, floor=floor)


def publish(
    write_bytes: Callable[[str, bytes], None],
    data_root: str,
    related: dict[str, list[list[Any]]],
    *,
    vocab: int,
    floor: float = DEFAULT_FLOOR,
    show_at: float = DEFAULT_SHOW_AT,
    seconds: float = 0.0,
) -> RelatedWords:
    """Write the related-word shards; the manifest object tells the page how to find them."""
    started = time.monotonic()
    shards, bodies = hashed_shards.cut(related, field="words", target_bytes=TARGET_BYTES, budget_bytes=BUDGET_BYTES)
    sizes = hashed_shards.write(write_bytes, data_root, KIND, bodies)
    manifest = {"shards": shards, "floor": floor, "show_at": show_at}
    facts = {
        "vocab": vocab,
        "words": len(related),
        "floor": floor,
        "show_at": show_at,
        "seconds": round(seconds + time.monotonic() - started, 2),
        **hashed_shards.size_facts(sizes),
    }
    return RelatedWords(manifest, facts)
