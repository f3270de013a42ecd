"""Tag vectors from word vectors (gensim KeyedVectors), shared by extract-text and the tests.

Loads word2vec binary, word2vec text (with or without a header line, e.g. GloVe) and gensim's
own `.kv` format, from a local path or any fsspec URL (gs://...). A tag becomes one vector:
the whole tag as a phrase when the vocabulary has it (word2vec phrase vocabularies join words
with '_'), otherwise the mean of the words it knows. A tag with no known word has no vector.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import os
import re
import shutil
import tempfile
from typing import IO, Iterator

import fsspec
import numpy as np
from gensim.models import KeyedVectors

from model import schema, storage

log = logging.getLogger(__name__)

KV_SUFFIX = ".kv"
_TOKEN_SPLIT = re.compile(r"[\s\-]+", re.UNICODE)
_PHRASE_JOINER = "_"


@dataclasses.dataclass(frozen=True)
class TagVector:
    vector: np.ndarray | None  # float32, None when no word of the tag is known
    status: str  # schema.TEXT_OK / TEXT_PARTIAL / TEXT_OOV
    known_words: int


@dataclasses.dataclass(frozen=True)
class Word2VecLayout:
    has_header: bool
    binary: bool
    dim: int


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------
def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _local_path(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def _open_local(path: str) -> IO[bytes]:
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _copy_to_local(src: str, dst: str) -> None:
    # Streamed, not storage.read_bytes: word vector files run to several GB.
    with fsspec.open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, length=16 * 1024 * 1024)


def _remote_files(path: str) -> list[str]:
    """The file itself plus, for .kv, the sidecar arrays gensim saves next to it (NAME.kv.*.npy)."""
    if not path.endswith(KV_SUFFIX):
        return [path]
    directory, name = path.rsplit("/", 1)
    return [path] + [f for f in storage.list_files(directory) if f.rsplit("/", 1)[-1].startswith(name + ".")]


def _parse_floats(tokens: list[bytes]) -> bool:
    try:
        [float(t) for t in tokens]
    except ValueError:
        return False
    return True


def sniff_word2vec(local_path: str) -> Word2VecLayout:
    """Header, binary or text, and dimension of a local word2vec file, from its first record.

    A text record is one line: the word and `dim` decimal numbers. Read as a line, a binary
    record (raw float32 bytes) does not split into `dim` parseable numbers, whatever its
    extension claims.
    """
    with _open_local(local_path) as f:
        first = f.readline().split()
        if len(first) == 2 and all(t.isdigit() for t in first):
            dim = int(first[1])
            record = f.readline().split()
            text = len(record) == dim + 1 and _parse_floats(record[1:])
            return Word2VecLayout(has_header=True, binary=not text, dim=dim)
    if len(first) < 2 or not _parse_floats(first[1:]):
        raise ValueError(f"{local_path}: neither a word2vec header nor a text vector on the first line")
    # GloVe-style text without a header: the first line is already a vector.
    return Word2VecLayout(has_header=False, binary=False, dim=len(first) - 1)


def _load_local(local_path: str, mmap: str | None) -> KeyedVectors:
    if local_path.endswith(KV_SUFFIX):
        return KeyedVectors.load(local_path, mmap=mmap)
    layout = sniff_word2vec(local_path)
    # Crawled vocabularies sometimes hold words cut inside a UTF-8 sequence; gensim's advice.
    return KeyedVectors.load_word2vec_format(
        local_path, binary=layout.binary, no_header=not layout.has_header, unicode_errors="ignore"
    )


def load_keyed_vectors(path: str) -> KeyedVectors:
    """Word vectors from a word2vec binary/text file or a gensim .kv file, local or remote."""
    if not _is_remote(path):
        # mmap: several workers in one process share the .kv arrays instead of copying them
        return _load_local(_local_path(path), mmap="r")
    with tempfile.TemporaryDirectory(prefix="imgsearch-kv-") as tmp:
        local = os.path.join(tmp, path.rsplit("/", 1)[-1])
        for remote in _remote_files(path):
            _copy_to_local(remote, os.path.join(tmp, remote.rsplit("/", 1)[-1]))
        log.info("copied %s to %s", path, tmp)
        # no mmap: the temporary copy is deleted as soon as the vectors are in memory
        return _load_local(local, mmap=None)


def vector_dim(path: str) -> int:
    """The vectors' dimension, cheaply: the word2vec header or first line, or a mapped .kv."""
    if path.endswith(KV_SUFFIX):
        return int(load_keyed_vectors(path).vector_size)
    if not _is_remote(path):
        return sniff_word2vec(_local_path(path)).dim
    with fsspec.open(path, "rb", compression="infer") as f:
        first = f.readline().split()
        if len(first) == 2 and all(t.isdigit() for t in first):
            return int(first[1])
        return len(first) - 1


# ---------------------------------------------------------------------------
# Tags
# ---------------------------------------------------------------------------
def tag_words(tag: str) -> list[str]:
    """The words of a normalised tag: split on whitespace and hyphens."""
    return [w for w in _TOKEN_SPLIT.split(tag) if w]


def _key_variants(key: str) -> Iterator[str]:
    # Tags are casefolded; word2vec vocabularies are case-sensitive ("New_York", "Paris").
    yield key
    capitalised = _PHRASE_JOINER.join(part[:1].upper() + part[1:] for part in key.split(_PHRASE_JOINER))
    if capitalised != key:
        yield capitalised


def _lookup(kv: KeyedVectors, key: str) -> np.ndarray | None:
    for variant in _key_variants(key):
        if variant in kv.key_to_index:
            return np.asarray(kv[variant], dtype=np.float32)
    return None


def tag_vector(kv: KeyedVectors, tag: str) -> TagVector:
    """The tag as a phrase if known, else the mean of its known words, else oov (no vector)."""
    words = tag_words(tag)
    if not words:
        return TagVector(None, schema.TEXT_OOV, 0)
    phrase = _lookup(kv, _PHRASE_JOINER.join(tag.split()))
    if phrase is not None:
        return TagVector(phrase, schema.TEXT_OK, len(words))
    found = [v for v in (_lookup(kv, w) for w in words) if v is not None]
    if not found:
        return TagVector(None, schema.TEXT_OOV, 0)
    status = schema.TEXT_OK if len(found) == len(words) else schema.TEXT_PARTIAL
    return TagVector(np.mean(found, axis=0).astype(np.float32), status, len(found))
