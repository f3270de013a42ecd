"""Tag vectors from word vectors (gensim KeyedVectors), shared by extract-text and the tests.

Loads word2vec binary, word2vec text (with or without a header line, e.g. GloVe) and gensim's
own `.kv` format, from a local path or any fsspec URL (gs://...). The format is detected from
the content, and a file whose records disagree with its header is refused with the line named
(a damaged file must not load as something else and turn every tag into oov). A tag becomes one vector:
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
from model.report import RunRefused

log = logging.getLogger(__name__)

KV_SUFFIX = ".kv"
FORMAT_KV = "gensim-kv"
FORMAT_TEXT = "word2vec-text"
FORMAT_BINARY = "word2vec-binary"
_PICKLE_MAGIC = b"\x80"  # gensim saves KeyedVectors with pickle protocol 2 or later
_MAX_WORD_BYTES = 10_000
_FINITE_CHUNK_ROWS = 100_000
_HEAD_BYTES = 4 * 1024 * 1024
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
    vocab: int | None = None  # the header's count of vectors (None: no header)


class WordVectorsError(RunRefused):
    """A word-vector file that is damaged, truncated or not what it seems; the message names the
    line (text) or the record (binary). The run is refused (exit 3), not crashed."""


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


def _looks_like_text(record: bytes) -> bool:
    """Whether a record read up to its newline is a line of text rather than raw float32 bytes.

    A binary record's dim*4 bytes are almost never valid UTF-8 free of control characters, so a
    text line whose numbers disagree with the header is reported as such instead of being
    misread as binary.
    """
    try:
        text = record.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return len(text.split()) >= 2 and not any(ord(c) < 32 and c not in "\t\r\n" for c in text)


def _check_binary_record(f: IO[bytes], path: str, dim: int) -> None:
    """The first binary record after the header: a word, a space, then dim finite float32."""
    word = bytearray()
    while len(word) <= _MAX_WORD_BYTES:
        ch = f.read(1)
        if ch in (b"", b" "):
            break
        word += ch
    else:
        raise WordVectorsError(f"{path}: no word in the first {_MAX_WORD_BYTES} bytes after the header: not word2vec binary")
    data = f.read(4 * dim)
    if len(data) < 4 * dim:
        raise WordVectorsError(f"{path}: the first binary record ends after {len(data)} of {4 * dim} bytes: truncated")
    if not np.isfinite(np.frombuffer(data, dtype="<f4")).all():
        raise WordVectorsError(f"{path}: the first record ({bytes(word)!r}) holds non-finite numbers: damaged or not word2vec binary")


def sniff_word2vec(local_path: str) -> Word2VecLayout:
    """Header, binary or text, and dimension of a local word2vec file, from its content.

    The header (`<vocab> <dim>`) is checked against the first record: a text record is one line
    of the word and `dim` decimal numbers, a binary one is the word and dim raw float32. A text
    line with the wrong count of numbers is refused (naming the line), never read as binary.
    """
    with _open_local(local_path) as f:
        first = f.readline().split()
        if len(first) == 2 and all(t.isdigit() for t in first):
            vocab, dim = int(first[0]), int(first[1])
            if vocab < 1 or dim < 1:
                raise WordVectorsError(f"{local_path}: line 1: the header says {vocab} vectors of {dim} dims")
            start = f.tell()
            record = f.readline()
            if _looks_like_text(record):
                fields = record.split()
                if not _parse_floats(fields[1:]):
                    raise WordVectorsError(f"{local_path}: line 2 is text but not a word followed by numbers: {record[:80]!r}")
                if len(fields) != dim + 1:
                    raise WordVectorsError(
                        f"{local_path}: line 2 has {len(fields) - 1} numbers after its word, the header "
                        f"(line 1) says {dim}: the file is damaged"
                    )
                return Word2VecLayout(has_header=True, binary=False, dim=dim, vocab=vocab)
            f.seek(start)
            _check_binary_record(f, local_path, dim)
            return Word2VecLayout(has_header=True, binary=True, dim=dim, vocab=vocab)
    if len(first) < 2 or not _parse_floats(first[1:]):
        raise WordVectorsError(f"{local_path}: neither a word2vec header nor a text vector on the first line")
    # GloVe-style text without a header: the first line is already a vector.
    return Word2VecLayout(has_header=False, binary=False, dim=len(first) - 1)


def detect_format(local_path: str) -> str:
    """FORMAT_KV, FORMAT_TEXT or FORMAT_BINARY from the file's first bytes, whatever its name."""
    with _open_local(local_path) as f:
        head = f.read(2)
    if head[:1] == _PICKLE_MAGIC and not local_path.endswith(".gz"):
        return FORMAT_KV
    if local_path.endswith(KV_SUFFIX):
        log.warning("%s is named %s but holds no gensim pickle; reading it as word2vec", local_path, KV_SUFFIX)
    return FORMAT_BINARY if sniff_word2vec(local_path).binary else FORMAT_TEXT


def _read_text(local_path: str, layout: Word2VecLayout) -> KeyedVectors:
    """word2vec text, every line checked: `dim` finite numbers after the word, and as many lines
    as the header promises. A refusal names the line."""
    dim = layout.dim
    words: list[str] = []
    seen: set[str] = set()
    capacity = layout.vocab or 1024
    vectors = np.empty((capacity, dim), dtype=np.float32)
    with _open_local(local_path) as f:
        line_no = 0
        if layout.has_header:
            f.readline()
            line_no = 1
        for raw in f:
            line_no += 1
            fields = raw.split()
            if not fields:
                continue  # a blank line (a trailing newline too many) holds no vector
            if len(fields) != dim + 1:
                raise WordVectorsError(
                    f"{local_path}: line {line_no} has {len(fields) - 1} numbers after its word, expected {dim}"
                    + (" (a line cut short: the file may be truncated)" if not raw.endswith(b"\n") else "")
                )
            try:
                vector = np.array([float(t) for t in fields[1:]], dtype=np.float32)
            except ValueError:
                raise WordVectorsError(f"{local_path}: line {line_no} holds something that is not a number") from None
            if not np.isfinite(vector).all():
                raise WordVectorsError(f"{local_path}: line {line_no} holds a non-finite number (nan or inf)")
            word = fields[0].decode("utf-8", errors="ignore")  # words cut inside a UTF-8 sequence
            if word in seen:
                continue  # gensim's rule: the first vector of a word wins
            if layout.vocab is not None and len(words) >= layout.vocab:
                raise WordVectorsError(f"{local_path}: line {line_no} is a vector beyond the {layout.vocab} the header (line 1) promises")
            if len(words) == capacity:
                capacity *= 2
                vectors = np.resize(vectors, (capacity, dim))
            vectors[len(words)] = vector
            words.append(word)
            seen.add(word)
    if layout.vocab is not None and len(words) < layout.vocab:
        raise WordVectorsError(
            f"{local_path}: the header (line 1) promises {layout.vocab} vectors, the file ends after {len(words)} "
            f"(line {line_no}): truncated"
        )
    if not words:
        raise WordVectorsError(f"{local_path}: no vectors")
    kv = KeyedVectors(vector_size=dim, count=len(words))
    kv.add_vectors(words, vectors[: len(words)])
    return kv


def _check_finite(kv: KeyedVectors, path: str) -> None:
    """NaN or inf in a vector would poison every tag that uses it; chunked for mapped files."""
    for start in range(0, len(kv.vectors), _FINITE_CHUNK_ROWS):
        chunk = np.asarray(kv.vectors[start : start + _FINITE_CHUNK_ROWS])
        bad = np.flatnonzero(~np.isfinite(chunk).all(axis=1))
        if bad.size:
            raise WordVectorsError(f"{path}: the vector of {kv.index_to_key[start + int(bad[0])]!r} holds nan or inf")


def _load_local(local_path: str, mmap: str | None) -> KeyedVectors:
    fmt = detect_format(local_path)
    if fmt == FORMAT_KV:
        kv = KeyedVectors.load(local_path, mmap=mmap)
    elif fmt == FORMAT_TEXT:
        kv = _read_text(local_path, sniff_word2vec(local_path))
    else:
        layout = sniff_word2vec(local_path)
        try:
            # Crawled vocabularies sometimes hold words cut inside a UTF-8 sequence; gensim's advice.
            kv = KeyedVectors.load_word2vec_format(local_path, binary=True, unicode_errors="ignore")
        except (EOFError, ValueError) as exc:
            raise WordVectorsError(f"{local_path}: damaged word2vec binary file ({exc})") from exc
        if layout.vocab is not None and len(kv) != layout.vocab:
            raise WordVectorsError(f"{local_path}: the header promises {layout.vocab} vectors, the file holds {len(kv)}")
    _check_finite(kv, local_path)
    return kv


def load_keyed_vectors(path: str) -> KeyedVectors:
    """Word vectors from a word2vec binary/text file or a gensim .kv file, local or remote.

    The format comes from the content (a pickle is a gensim .kv; a `<vocab> <dim>` header then a
    text line or raw floats is word2vec text or binary), and a file whose records disagree
    with its header raises WordVectorsError naming the line.
    """
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


# ---------------------------------------------------------------------------
# One memory-mapped copy per machine
# ---------------------------------------------------------------------------
_READY = "ready"
_MAPPED_NAME = "vectors" + KV_SUFFIX


def mapped_keyed_vectors(local_path: str, cache_dir: str) -> KeyedVectors:
    """The vectors of a local file, memory-mapped read-only, so that every process on a machine
    shares one copy in the page cache instead of holding its own.

    A gensim .kv is mapped where it lies. word2vec text or binary is read once (every line
    checked, as load_keyed_vectors does) and saved as a .kv under cache_dir, which later calls,
    in this process or another, map; an exclusive lock on cache_dir makes the other processes of
    the machine wait for the first one's conversion instead of repeating it. cache_dir must be
    named by the file's identity (path, size, modification time): it is reused as long as it
    holds a finished conversion.
    """
    if detect_format(local_path) == FORMAT_KV:
        return _load_local(local_path, mmap="r")
    import fcntl

    os.makedirs(cache_dir, exist_ok=True)
    mapped = os.path.join(cache_dir, _MAPPED_NAME)
    with open(os.path.join(cache_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not os.path.exists(os.path.join(cache_dir, _READY)):
                kv = _load_local(local_path, mmap=None)
                # sep_limit=0: the arrays go to .npy files beside the pickle, which mmap can map
                kv.save(mapped, sep_limit=0)
                del kv
                with open(os.path.join(cache_dir, _READY), "w") as f:
                    f.write(local_path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return KeyedVectors.load(mapped, mmap="r")


def kv_vector_size(local_kv: str) -> int:
    """The dimension recorded in a gensim .kv pickle, without its (separately saved) arrays."""
    from gensim import utils

    return int(utils.unpickle(local_kv).vector_size)


def _remote_head(path: str, local: str) -> None:
    """The first _HEAD_BYTES of a remote file: enough for the header and the first record."""
    with fsspec.open(path, "rb") as fin, open(local, "wb") as fout:
        fout.write(fin.read(_HEAD_BYTES))


def vector_dim(path: str) -> int:
    """The vectors' dimension, checked cheaply: the header against the first record (word2vec),
    or a mapped .kv. The whole file is checked when a worker loads it."""
    if not _is_remote(path):
        local = _local_path(path)
        if detect_format(local) == FORMAT_KV:
            return int(KeyedVectors.load(local, mmap="r").vector_size)
        return sniff_word2vec(local).dim
    if path.endswith(KV_SUFFIX):
        return int(load_keyed_vectors(path).vector_size)
    with tempfile.TemporaryDirectory(prefix="imgsearch-kv-") as tmp:
        local = os.path.join(tmp, path.rsplit("/", 1)[-1])
        _remote_head(path, local)
        return sniff_word2vec(local).dim


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
