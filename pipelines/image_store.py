"""Reading the image store that `fetch` writes (OUT/images/store-*.parquet), for later stages.

A stage that needs image bytes joins its (image_id, uri) pairs with the store's rows by image_id
in the pipeline (CoGroupByKey: the store is read shard by shard, sequentially, never by random
access) and then takes each image's bytes from the joined element:

    shards = image_store.store_shards(out)          # [] when fetch never ran: nothing changes
    joined = refs | "JoinImageStore" >> image_store.JoinImageStore(shards, STAGE)
    # joined: (image_id, uri, stored bytes or None)
    ...
    data = image_store.image_bytes(uri, stored, read=common.read_bytes)   # in a DoFn

`stored` is None where the store has no bytes for the image: a reference row (fetch passes local
and gs:// uris through by reference unless --copy-local), or an image the store lacks. Then
image_bytes reads the uri itself, except an http(s) uri, which only fetch may download: that
raises NotFetched (its failure row names the fetch failure to look at). Beam only; no torch.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Sequence

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from model import schema
from pipelines import common

STORE_HITS = "store_hits"  # images whose bytes came from the store
STORE_MISSES = "store_misses"  # images the store has no bytes for (read from their uri)
_HTTP_PREFIXES = ("http://", "https://")


class NotFetched(LookupError):
    """An http(s) image with no bytes in the store: fetch failed on it, skipped it, or never ran."""


def store_shards(out: str) -> list[str]:
    """The finished shards of OUT's image store, sorted; empty when there is no store."""
    return common.glob(schema.shard_pattern(out, schema.STORE_DIR, schema.STORE_PREFIX))


def image_bytes(uri: str, stored: bytes | None, read: Callable[[str], bytes] = common.read_bytes) -> bytes:
    """The image's bytes: the store's when it has them, else read(uri) for a non-http uri."""
    if stored is not None:
        return stored
    if uri.lower().startswith(_HTTP_PREFIXES):
        raise NotFetched(
            f"{uri} has no bytes in the image store: see the failures of stage 'fetch' under "
            f"OUT/{schema.FAILURES_DIR}/ (imgsearch fetch downloads http(s) images; --retry-failed retries them)"
        )
    return read(uri)


def stored_bytes(out: str, image_ids: Iterable[str]) -> dict[str, bytes]:
    """image_id -> stored bytes for a few ids, read in the driver (a calibration sample, a test):
    each shard's id column first, its bytes only for the row groups holding wanted ids.
    Ids the store has no bytes for are absent. Pipelines join with JoinImageStore instead."""
    wanted = set(image_ids)
    found: dict[str, bytes] = {}
    for path in store_shards(out):
        if not wanted - found.keys():
            break
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            shard = pq.ParquetFile(f)
            for group in range(shard.num_row_groups):
                ids = shard.read_row_group(group, columns=[schema.IMAGE_ID]).column(0).to_pylist()
                if not wanted.intersection(ids):
                    continue
                table = shard.read_row_group(group, columns=[schema.IMAGE_ID, schema.IMAGE_BYTES])
                for image_id, data in zip(ids, table.column(schema.IMAGE_BYTES).to_pylist()):
                    if image_id in wanted and data is not None:
                        found[image_id] = data
    return found


def _key_ref(ref: Sequence[Any]) -> tuple[str, tuple]:
    return ref[0], tuple(ref)


def _key_stored(row: dict[str, Any]) -> Iterator[tuple[str, bytes]]:
    if row[schema.IMAGE_BYTES] is not None:
        yield row[schema.IMAGE_ID], row[schema.IMAGE_BYTES]


def _without_bytes(ref: Sequence[Any]) -> tuple:
    return (*ref, None)


class _AttachFn(beam.DoFn):
    def __init__(self, stage: str):
        self._hits = common.counter(stage, STORE_HITS)
        self._misses = common.counter(stage, STORE_MISSES)

    def process(self, joined: tuple[str, dict[str, list]]) -> Iterator[tuple]:
        _image_id, groups = joined
        stored = groups["stored"][0] if groups["stored"] else None
        for ref in groups["refs"]:
            (self._misses if stored is None else self._hits).inc()
            yield (*ref, stored)


class JoinImageStore(beam.PTransform):
    """(image_id, uri, ...) -> (image_id, uri, ..., stored bytes or None), by image_id.

    With no shards it adds None to every element without reading anything. Counters
    store_hits / store_misses go to the calling stage's namespace. A store written by several
    runs has one row per image_id (fetch never fetches an id twice); should two rows meet,
    either is the same image's bytes.
    """

    def __init__(self, shards: Sequence[str], stage: str):
        super().__init__()
        self._shards = list(shards)
        self._stage = stage

    def expand(self, refs):
        if not self._shards:
            return refs | "NoStore" >> beam.Map(_without_bytes)
        stored = (
            refs.pipeline
            | "StoreShards" >> beam.Create(self._shards)
            | "ReadStore" >> beam.io.ReadAllFromParquet(columns=[schema.IMAGE_ID, schema.IMAGE_BYTES])
            | "KeyStored" >> beam.FlatMap(_key_stored)
        )
        keyed = refs | "KeyRefs" >> beam.Map(_key_ref)
        return (
            {"refs": keyed, "stored": stored}
            | "JoinByImage" >> beam.CoGroupByKey()
            | "AttachBytes" >> beam.ParDo(_AttachFn(self._stage))
        )
