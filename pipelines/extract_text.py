"""Stage `extract-text`: one vector per distinct tag, from gensim KeyedVectors.

    imgsearch extract-text --out OUT --word-vectors PATH [Beam flags]

Reads OUT/index/images, keeps each distinct tag once and writes
OUT/features/text/text-<run>-SSSSS-of-NNNNN.parquet (schema.text_features_schema) with the word
vectors' path and dimension in the file metadata. The previous run's shards are deleted only
once the new ones are complete and usable, so a damaged or truncated word-vector file (refused
with the line named, model.text_vectors) never costs the features that were there. Every tag gets a row: `ok` (every word
known, or the whole tag as a phrase), `partial` (the mean of the words that are known) or
`oov` (no word known; the embedding is null). Training leaves oov tags out; their images still
reach the site in index order. A run where every tag is oov is refused (common.StageRefused):
the file almost certainly is not the vectors it claims to be.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import os
import shutil
import tempfile
from typing import Any, Iterator

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils.shared import Shared

from model import schema, storage, text_vectors
from pipelines import common

log = logging.getLogger(__name__)

STAGE = "extract-text"
SHARD_PREFIX = schema.TEXT_FEATURES_PREFIX


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def images_pattern(out: str) -> str:
    return schema.shard_pattern(out, schema.IMAGES_DIR, schema.IMAGES_PREFIX)


def output_prefix(out: str) -> str:
    return schema.out_path(out, schema.TEXT_FEATURES_DIR, SHARD_PREFIX)


def text_shards(out: str) -> list[str]:
    """The finished text-feature shards under OUT (Beam's temporary folders never match)."""
    return common.glob(schema.shard_pattern(out, schema.TEXT_FEATURES_DIR, SHARD_PREFIX))


def check_not_all_oov(report: common.StageReport) -> None:
    """Refuse a run where no tag found a vector: training would have no text side at all."""
    oov = report.details.get(schema.TEXT_OOV, 0)
    if report.rows_in and oov == report.rows_in:
        raise common.StageRefused(
            report,
            f"{STAGE}: none of the {report.rows_in} tags has a vector in {report.details.get('word_vectors')} "
            "(every tag is oov): wrong or damaged word vectors? The previous text features were kept.",
        )


def output_schema(dim: int, word_vectors: str):
    metadata = {schema.META_WORD_VECTORS: word_vectors.encode("utf-8"), schema.META_DIM: str(dim).encode("ascii")}
    return schema.text_features_schema(dim, metadata)


def text_row(tag: str, tv: text_vectors.TagVector) -> dict[str, Any]:
    return {
        schema.TAG: tag,
        schema.EMBEDDING: None if tv.vector is None else tv.vector.tolist(),
        schema.STATUS: tv.status,
        schema.KNOWN_WORDS: tv.known_words,
    }


def tag_of(row: dict[str, Any]) -> str:
    return row[schema.TAG]


# Word vectors on workers: read through Beam's FileSystems (gs:// needs no gcsfs on a worker),
# copied to the machine's local disk once, memory-mapped by every SDK process of the machine.
COPY_CHUNK_BYTES = 16 * 1024 * 1024
HEAD_BYTES = 4 * 1024 * 1024  # enough for a word2vec header and its first record
CACHE_ROOT_ENV = "IMGSEARCH_WORD_VECTORS_CACHE"  # default: <tmp>/imgsearch-word-vectors


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _strip_file_scheme(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def _open_raw(path: str):
    # UNCOMPRESSED: a .gz file is copied as it is (text_vectors reads gzip itself)
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _copy_to_local(src: str, dst: str) -> None:
    """Streamed (word-vector files run to several GB), to a temporary name renamed when complete."""
    partial = dst + ".partial"
    with _open_raw(src) as fin, open(partial, "wb") as fout:
        shutil.copyfileobj(fin, fout, length=COPY_CHUNK_BYTES)
    os.replace(partial, dst)


def _identity(path: str) -> str:
    """What names one version of a file: its path, size and modification time."""
    if _is_local(path):
        st = os.stat(_strip_file_scheme(path))
        facts = f"{os.path.abspath(_strip_file_scheme(path))}|{st.st_size}|{st.st_mtime_ns}"
    else:
        meta = FileSystems.match([path])[0].metadata_list
        if not meta:
            raise FileNotFoundError(f"{STAGE}: no word vectors at {path}")
        facts = f"{path}|{meta[0].size_in_bytes}|{meta[0].last_updated_in_seconds}"
    return hashlib.sha256(facts.encode("utf-8")).hexdigest()[:24]


def _remote_files(path: str) -> list[str]:
    """The file itself plus, for a gensim .kv, the arrays saved beside it (NAME.kv.*.npy)."""
    if not path.endswith(text_vectors.KV_SUFFIX):
        return [path]
    sidecars = common.glob(path + ".*")
    return [path] + [p for p in sidecars if not p.endswith(".partial")]


def cache_dir_for(path: str) -> str:
    root = os.environ.get(CACHE_ROOT_ENV) or os.path.join(tempfile.gettempdir(), "imgsearch-word-vectors")
    return os.path.join(root, _identity(path))


def local_word_vectors(path: str, cache_dir: str) -> str:
    """A local path holding the word vectors: the path itself when local, otherwise a copy made
    once per machine under cache_dir (through Beam's FileSystems, under a lock that makes the
    machine's other processes wait for the first copy)."""
    if _is_local(path):
        return _strip_file_scheme(path)
    import fcntl

    os.makedirs(cache_dir, exist_ok=True)
    copies = os.path.join(cache_dir, "copy")
    os.makedirs(copies, exist_ok=True)
    local = os.path.join(copies, path.rsplit("/", 1)[-1])
    with open(os.path.join(cache_dir, ".copy-lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not os.path.exists(os.path.join(copies, ".complete")):
                for remote in _remote_files(path):
                    _copy_to_local(remote, os.path.join(copies, remote.rsplit("/", 1)[-1]))
                open(os.path.join(copies, ".complete"), "w").close()
                log.info("%s: copied %s to %s", STAGE, path, copies)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return local


def load_word_vectors(path: str) -> text_vectors.KeyedVectors:
    """The word vectors, memory-mapped from the machine's one local copy (model.text_vectors)."""
    cache_dir = cache_dir_for(path)
    return text_vectors.mapped_keyed_vectors(local_word_vectors(path, cache_dir), os.path.join(cache_dir, "mapped"))


class _SharedVectors:
    """A weak-referenceable holder (Shared keeps objects by weak reference)."""

    def __init__(self, kv: Any):
        self.kv = kv


def _shared_vectors(path: str) -> _SharedVectors:
    return _SharedVectors(load_word_vectors(path))


def word_vectors_dim(path: str) -> int:
    """The vectors' dimension, read cheaply on the driver: the header against the first record
    (word2vec) or the .kv pickle without its arrays. Workers check the whole file when they load it."""
    if _is_local(path):
        return text_vectors.vector_dim(_strip_file_scheme(path))
    with tempfile.TemporaryDirectory(prefix="imgsearch-kv-") as tmp:
        local = os.path.join(tmp, path.rsplit("/", 1)[-1])
        if path.endswith(text_vectors.KV_SUFFIX):
            _copy_to_local(path, local)  # the pickle only: the arrays lie beside it
            if text_vectors.detect_format(local) == text_vectors.FORMAT_KV:
                return text_vectors.kv_vector_size(local)
            return text_vectors.vector_dim(local)
        with _open_raw(path) as fin, open(local, "wb") as fout:
            fout.write(fin.read(HEAD_BYTES))
        return text_vectors.sniff_word2vec(local).dim


# ---------------------------------------------------------------------------
# DoFns
# ---------------------------------------------------------------------------
class TagVectorFn(beam.DoFn):
    """tag -> text feature row.

    The word vectors are loaded once per worker process (Beam's Shared, for every thread and
    DoFn instance of the process) from one memory-mapped local copy per machine, which the
    machine's processes share: a real vocabulary (GoogleNews is 3.6 GB) is held once, not once
    per SDK process or thread.
    """

    def __init__(self, word_vectors: str, dim: int):
        self._word_vectors = word_vectors
        self._dim = dim
        self._shared = Shared()
        self._holder = None
        self._kv = None
        self._rows_in = common.counter(STAGE, common.ROWS_IN)
        self._rows_out = common.counter(STAGE, common.ROWS_OUT)
        self._by_status = {status: common.counter(STAGE, status) for status in schema.TEXT_STATUSES}

    def setup(self) -> None:
        load = functools.partial(_shared_vectors, self._word_vectors)
        self._holder = self._shared.acquire(load, tag=self._word_vectors)
        self._kv = self._holder.kv
        if self._kv.vector_size != self._dim:
            # The output schema was built with the driver's reading of the file's dimension.
            raise ValueError(f"{self._word_vectors}: vectors have {self._kv.vector_size} dims, expected {self._dim}")

    def process(self, tag: str) -> Iterator[dict[str, Any]]:
        self._rows_in.inc()
        tv = text_vectors.tag_vector(self._kv, tag)
        self._by_status[tv.status].inc()
        self._rows_out.inc()
        yield text_row(tag, tv)


# ---------------------------------------------------------------------------
# Composite transforms
# ---------------------------------------------------------------------------
class TagVectors(beam.PTransform):
    """images rows -> one text feature row per distinct tag."""

    def __init__(self, word_vectors: str, dim: int):
        super().__init__()
        self._word_vectors = word_vectors
        self._dim = dim

    def expand(self, images):
        return (
            images
            | "TagOf" >> beam.Map(tag_of)
            | "DistinctTags" >> beam.Distinct()
            | "TagVector" >> beam.ParDo(TagVectorFn(self._word_vectors, self._dim))
        )


class WriteTextFeatures(beam.PTransform):
    """Text feature rows -> shards named by prefix (the run's own, so earlier shards stay until
    this run is complete)."""

    def __init__(self, prefix: str, dim: int, word_vectors: str):
        super().__init__()
        self._prefix = prefix
        self._schema = output_schema(dim, word_vectors)

    def expand(self, rows):
        return rows | "WriteParquet" >> beam.io.WriteToParquet(
            self._prefix, self._schema, file_name_suffix=schema.PARQUET_SUFFIX
        )


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    parser = common.stage_parser(STAGE, __doc__)
    parser.add_argument(
        "--word-vectors",
        required=True,
        help="word2vec binary or text, or gensim .kv (the format is detected from the content); local or gs://",
    )
    common.add_max_failure_rate(parser)
    return parser


def run(
    argv: list[str] | None = None, save_main_session: bool = True, test_pipeline: beam.Pipeline | None = None
) -> common.StageReport:
    args, beam_options = common.split_args(get_args_parser(), argv)
    # the header against the first record, here: a damaged file fails before any worker starts
    # (workers check every line when they load it)
    dim = word_vectors_dim(args.word_vectors)
    log.info("%s: %s has %d-d vectors", STAGE, args.word_vectors, dim)
    # the run writes into features/text/.staging-<run>/ (Beam's temporary folders too); only a
    # complete, accepted run is renamed into place, and a failed or refused one leaves nothing
    staged = storage.StagedOutput(
        schema.out_path(args.out, schema.TEXT_FEATURES_DIR),
        [f"{SHARD_PREFIX}-*{schema.PARQUET_SUFFIX}"],
        staging=schema.out_path(args.out, schema.TEXT_FEATURES_DIR, f".staging-{common.run_id()}"),
    )
    try:
        pipeline = test_pipeline or beam.Pipeline(options=common.make_options(beam_options, save_main_session))
        _ = (
            pipeline
            | "ReadImages" >> beam.io.ReadFromParquet(images_pattern(args.out), columns=[schema.TAG])
            | "TagVectors" >> TagVectors(args.word_vectors, dim)
            | "WriteTextFeatures" >> WriteTextFeatures(staged.path(f"{SHARD_PREFIX}-{common.run_id()}"), dim, args.word_vectors)
        )
        # a failed run (a damaged line found by a worker) raises here: the previous shards stay
        _, counters, seconds = common.run_pipeline(pipeline, STAGE)
        report = common.report_from_counters(STAGE, counters, seconds, dim=dim, word_vectors=args.word_vectors)
        report.save(args.out)
        check_not_all_oov(report)
        common.check_failure_rate(report, args.max_failure_rate)
    except BaseException:
        staged.discard()  # the previous features stay the ones read downstream
        raise
    # complete and usable: now the new shards replace the old (a rerun may shard differently,
    # and stale shards would be read as extra rows)
    replaced = staged.commit().removed
    if replaced:
        log.info("%s: replaced %d shards of the previous run", STAGE, len(replaced))
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(run().summary_line())
