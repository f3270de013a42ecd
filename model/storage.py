"""Reading and writing files under OUT, local or gs://, without Beam (train, export, CLI).

Beam stages use Beam's FileSystems; code that must not import Beam uses fsspec, which reaches
the same paths (gcsfs for gs://, installed with the `gcp` extra).
"""

from __future__ import annotations

import json
from typing import Any

import fsspec
import pyarrow.parquet as pq
import pyarrow as pa


def fs_and_path(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, _, paths = fsspec.get_fs_token_paths(path)
    return fs, paths[0]


_fs_and_path = fs_and_path


def _is_gcs(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return bool({"gs", "gcs"} & set(protocols))


def exists(path: str) -> bool:
    fs, p = _fs_and_path(path)
    return fs.exists(p)


def read_bytes(path: str) -> bytes:
    with fsspec.open(path, "rb") as f:
        return f.read()


def write_bytes(path: str, data: bytes, *, content_type: str | None = None, cache_control: str | None = None) -> None:
    """Write a whole file. On Cloud Storage the object gets the Content-Type and Cache-Control
    given (a bucket serving a site needs both); elsewhere they have no meaning and are ignored."""
    fs, p = _fs_and_path(path)
    parent = p.rsplit("/", 1)[0]
    if parent and parent != p:
        fs.makedirs(parent, exist_ok=True)
    options: dict[str, Any] = {}
    if _is_gcs(fs):
        if content_type:
            options["content_type"] = content_type
        if cache_control:
            options["fixed_key_metadata"] = {"cache_control": cache_control}
    with fs.open(p, "wb", **options) as f:
        f.write(data)


def delete_tree(path: str) -> None:
    """Remove a folder (or object prefix) and everything under it; nothing when absent."""
    fs, p = _fs_and_path(path)
    if fs.exists(p):
        fs.rm(p, recursive=True)


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path).decode("utf-8"))


def write_json(path: str, obj: Any, *, indent: int | None = 2) -> None:
    write_bytes(path, json.dumps(obj, indent=indent, ensure_ascii=False, sort_keys=False).encode("utf-8"))


def list_files(directory: str, suffix: str = "") -> list[str]:
    """Sorted full paths of the files directly under a directory that end with suffix."""
    fs, p = _fs_and_path(directory)
    if not fs.exists(p):
        return []
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
    found = [prefix + f for f in fs.ls(p, detail=False) if f.endswith(suffix) and fs.isfile(f)]
    return sorted(found)


def open_parquet(path: str) -> pq.ParquetFile:
    fs, p = _fs_and_path(path)
    return pq.ParquetFile(fs.open(p, "rb"))


def read_parquet_dir(directory: str, columns: list[str] | None = None) -> pa.Table:
    """All Parquet shards of a directory as one table (for small tables: images, text, rankings)."""
    files = list_files(directory, ".parquet")
    tables = [open_parquet(f).read(columns=columns) for f in files]
    if not tables:
        raise FileNotFoundError(f"no Parquet files under {directory}")
    return pa.concat_tables(tables, promote_options="default")
