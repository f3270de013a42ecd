"""The page's lookup index: every tag, and each frequent word outside the tag set with the tags
to offer for it, so that any one-word query costs the page one small file after the manifest.

For the `--related-vocab N` most frequent words of the word vectors (gensim keeps a vocabulary
in frequency order), the cosine to every tag's vector (the text features extract-text wrote from
the same word vectors) gives the word's nearest tags: the top RELATED_PER_WORD at or above
`floor`. The tags spelled like the word (one edit apart, found through a deletion index, or the
tags that start with it as a word) come with them. Words that are tags themselves are left out.

One hashed-shard kind (export/hashed_shards.py), `lookup`, holds both, keyed by the normalised
term (model/tags.normalize_tag, as the page normalises a query):

- a tag: `[image_count, key]`, so a ?q= link finds its tag without a tag shard;
- a word: `{"r": [[tag, cosine, image_count, key], …], "s": [[tag, edits, image_count, key], …]}`
  (related, spelled like it), so the page ranks one list of both and opens the best related tag's
  first ranking page straight away: "No tag 'automobile' — showing 'car'" is three data files.

Each file is well under 20 KB. A phrase of the vocabulary (`fire_engine`) becomes the words
joined by a space. The similarity scan runs in blocks of words against every tag: 200,000 words x
100,000 tags is one matrix product a block, never the whole matrix at once.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Sequence

import numpy as np

from export import hashed_shards
from model import schema, storage
from model.tags import normalize_tag, tag_key

log = logging.getLogger(__name__)

DEFAULT_VOCAB = 200_000
RELATED_PER_WORD = 5
DEFAULT_FLOOR = 0.5  # cosine between word vectors below which a tag is not "related"
DEFAULT_SHOW_AT = 0.7  # the best related tag's results are shown right away from here
TARGET_BYTES = 6 * 1024
BUDGET_BYTES = 20 * 1024
BLOCK_WORDS = 4096
KIND = "lookup"
FIELD = "terms"
SPELLED_PER_WORD = 5
POPULAR_FALLBACK = 8  # the manifest's tags to offer when a query matches nothing at all


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


def _deletes(word: str) -> set[str]:
    return {word[:i] + word[i + 1 :] for i in range(len(word))}


def spelled_like(words: Sequence[str], tags: Sequence[str], per_word: int = SPELLED_PER_WORD) -> dict[str, list[tuple[str, int]]]:
    """word -> [(tag, edits), …]: tags one edit from the word (an insertion, deletion, substitution
    or swap of neighbours, found through each side's single deletions), or that start with it
    followed by a space ("traffic" -> "traffic light", counted as 1), best first (fewest edits,
    then the tag's order); words of fewer than 3 characters get none."""
    by_delete: dict[str, list[str]] = {}
    for tag in tags:
        for d in _deletes(tag) | {tag}:
            by_delete.setdefault(d, []).append(tag)
    by_first_word: dict[str, list[str]] = {}
    for tag in tags:
        head, _, rest = tag.partition(" ")
        if rest:
            by_first_word.setdefault(head, []).append(tag)
    found: dict[str, list[tuple[str, int]]] = {}
    for word in words:
        if len(word) < 3:
            continue
        near: dict[str, int] = {}
        for key in _deletes(word) | {word}:
            for tag in by_delete.get(key, ()):
                if tag != word and _one_edit(word, tag):
                    near[tag] = 1
        for tag in by_first_word.get(word, ()):
            near.setdefault(tag, 1)
        if near:
            found[word] = sorted(near.items(), key=lambda kv: (kv[1], len(kv[0]), kv[0]))[:per_word]
    return found


def _one_edit(a: str, b: str) -> bool:
    """Optimal-string-alignment distance exactly 1 (site/js/text.js editDistance agrees)."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1 :] == short for i in range(len(long_)))


def lookup_entries(
    entries: Sequence[tuple[str, int, int]],
    related: dict[str, list[list[Any]]],
    spelled: dict[str, list[tuple[str, int]]],
) -> dict[str, Any]:
    """term -> its lookup value: every tag ([count, key]) and every word with related or
    spelled-like tags ({"r": …, "s": …}); tags win over words of the same spelling."""
    counts = {tag: count for tag, count, _pages in entries}
    terms: dict[str, Any] = {}
    for word in set(related) | set(spelled):
        if word in counts:
            continue
        value: dict[str, Any] = {}
        rel = [[t, sim, counts[t], tag_key(t)] for t, sim in related.get(word, ()) if t in counts]
        spl = [[t, d, counts[t], tag_key(t)] for t, d in spelled.get(word, ()) if t in counts]
        if rel:
            value["r"] = rel
        if spl:
            value["s"] = spl
        if value:
            terms[word] = value
    for tag, count in counts.items():
        terms[tag] = [count, tag_key(tag)]
    return terms


def publish(
    write_bytes: Callable[[str, bytes], None],
    data_root: str,
    related: dict[str, list[list[Any]]],
    *,
    entries: Sequence[tuple[str, int, int]],
    vocab: int,
    floor: float = DEFAULT_FLOOR,
    show_at: float = DEFAULT_SHOW_AT,
    seconds: float = 0.0,
) -> RelatedWords:
    """Write the lookup shards (every tag, and the words' related and spelled-like tags); the
    manifest object tells the page how to find them and which tags to offer when nothing matches."""
    started = time.monotonic()
    spelled = spelled_like(sorted(set(related) - {t for t, _, _ in entries}), [t for t, _, _ in entries])
    terms = lookup_entries(entries, related, spelled)
    shards, bodies = hashed_shards.cut(terms, field=FIELD, target_bytes=TARGET_BYTES, budget_bytes=BUDGET_BYTES)
    sizes = hashed_shards.write(write_bytes, data_root, KIND, bodies)
    popular = sorted(entries, key=lambda e: (-e[1], e[0]))[:POPULAR_FALLBACK]
    manifest = {
        "shards": shards,
        "floor": floor,
        "show_at": show_at,
        "popular": [[t, c, tag_key(t)] for t, c, _ in popular],
    }
    facts = {
        "vocab": vocab,
        "words": len(related),
        "spelled": len(spelled),
        "terms": len(terms),
        "floor": floor,
        "show_at": show_at,
        "seconds": round(seconds + time.monotonic() - started, 2),
        **hashed_shards.size_facts(sizes),
    }
    return RelatedWords(manifest, facts)
