"""Reading and writing files under OUT, local or gs://, without Beam (train, export, CLI).

Beam stages use Beam's FileSystems; code that must not import Beam uses fsspec, which reaches
the same paths (gcsfs for gs://, installed with the `gcp` extra).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
from typing import Any, Iterator, Sequence

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
    """Write a whole file, seen whole or not at all: a local one is written under a temporary
    name and renamed into place (StagedOutput.file), a Cloud Storage object appears only once
    its upload completes. A full disk or a kill never leaves it half written (a pointer, a cache
    a later run reuses). On Cloud Storage the object gets the Content-Type and Cache-Control
    given (a bucket serving a site needs both); elsewhere they have no meaning and are ignored."""
    fs, p = _fs_and_path(path)
    if _is_gcs(fs):
        options: dict[str, Any] = {}
        if content_type:
            options["content_type"] = content_type
        if cache_control:
            options["fixed_key_metadata"] = {"cache_control": cache_control}
        with fs.open(p, "wb", **options) as f:
            f.write(data)
        return
    files = FsspecFiles()
    with StagedOutput.file(path, files=files) as temp:
        with files.open_write(temp) as f:
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


# ---------------------------------------------------------------------------
# Staged outputs: written aside, renamed into place whole
# ---------------------------------------------------------------------------
TEMP_MARK = ".tmp-"  # name.tmp-<token>: a file being written; no reader's pattern matches it


def _key(path: str) -> str:
    """A path as comparisons need it: a local one absolute and normalised (a glob may answer in
    another spelling than the one asked), a URL as it is."""
    if "://" in path:
        return path.rstrip("/")
    return os.path.normpath(os.path.abspath(path))


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts if p)])


class FsspecFiles:
    """What StagedOutput needs of a filesystem, through fsspec (local paths and gs:// alike).

    pipelines/common.BeamFiles is the same through Beam's FileSystems, for Beam workers."""

    def files(self, pattern: str) -> list[str]:
        """Files (not folders) matching a glob pattern, each with its protocol."""
        fs, p = fsspec.core.url_to_fs(pattern)
        found = fs.glob(p, detail=True)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        prefix = "" if protocol in ("file", "local") else f"{protocol}://"
        return sorted(prefix + path for path, info in found.items() if info.get("type") == "file")

    def rename(self, sources: list[str], targets: list[str]) -> None:
        for source, target in zip(sources, targets):
            fs, src = fsspec.core.url_to_fs(source)
            _, dst = fsspec.core.url_to_fs(target)
            if not _is_gcs(fs):
                fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
            fs.mv(src, dst)

    def delete(self, paths: list[str]) -> None:
        for path in paths:
            fs, p = fsspec.core.url_to_fs(path)
            if fs.exists(p):
                fs.rm(p, recursive=True)

    def exists(self, path: str) -> bool:
        return exists(path)

    def open_write(self, path: str):
        fs, p = fsspec.core.url_to_fs(path)
        if not _is_gcs(fs):
            fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        return fs.open(p, "wb")


@dataclasses.dataclass
class Committed:
    """What a commit did: the files now in place, and a previous run's files it removed."""

    moved: list[str]
    removed: list[str]


class StagedOutput:
    """A run's outputs written into a staging folder, then renamed into place whole.

        staged = StagedOutput(out, ["images/*", "tag2picid.json"])
        ... the run writes under staged.root (staged.path("images", "x.parquet")) ...
        staged.commit()      # or staged.discard() when the run is refused or fails

    `target` is where the outputs belong, `patterns` (globs relative to target) what a run writes
    there. commit() renames each staged file matching a pattern to the same relative path under
    target, removes target's files matching the patterns that this run did not write (a previous
    run's), then the staging folder. With previous_first the previous files go first, so a reader
    never sees two runs' files mixed (it may briefly see none).

    Names are compared relative to their roots with local paths made absolute, so a relative or
    absolute target, local or gs://, commits the same files. `staging` defaults to
    target/.staging-<random>, which no pattern without a leading dot matches.
    """

    def __init__(
        self,
        target: str,
        patterns: Sequence[str] = ("*",),
        staging: str | None = None,
        *,
        previous_first: bool = False,
        files: Any = None,
    ):
        self.target = target.rstrip("/")
        self.patterns = tuple(patterns)
        self.root = (staging or _join(self.target, f".staging-{secrets.token_hex(4)}")).rstrip("/")
        self.previous_first = previous_first
        self._files = files or FsspecFiles()

    def path(self, *parts: str) -> str:
        """A path under the staging folder."""
        return _join(self.root, *parts)

    def _matching(self, root: str) -> dict[str, str]:
        """relative name -> path of root's files matching the patterns."""
        base = _key(root) + "/"
        found: dict[str, str] = {}
        for pattern in self.patterns:
            for path in self._files.files(_join(root, pattern)):
                key = _key(path)
                if key.startswith(base):
                    found[key[len(base):]] = path
        return found

    def staged(self) -> list[str]:
        """Relative names of the files staged so far."""
        return sorted(self._matching(self.root))

    def commit(self) -> Committed:
        new = self._matching(self.root)
        previous = self._matching(self.target)
        stale = [previous[name] for name in sorted(previous) if self.previous_first or name not in new]
        if self.previous_first:
            self._files.delete(stale)
        names = sorted(new)
        targets = [_join(self.target, name) for name in names]
        if names:
            self._files.rename([new[name] for name in names], targets)
        if not self.previous_first:
            self._files.delete(stale)
        self.discard()
        return Committed(moved=targets, removed=stale)

    def discard(self) -> None:
        """The staging folder and everything left in it goes (nothing when absent)."""
        if self._files.exists(self.root):
            self._files.delete([self.root])

    @staticmethod
    @contextlib.contextmanager
    def file(final: str, *, temp: str | None = None, files: Any = None) -> Iterator[str]:
        """One file written under a temporary name (beside it: final.tmp-<random>, unless `temp`
        names one) and renamed into place on success; on failure the temporary goes and the
        previous file (if any) stays whole. Yields the temporary path to write:

            with StagedOutput.file(path) as temp:
                torch.save(state, temp)
        """
        ops = files or FsspecFiles()
        temp = temp or f"{final}{TEMP_MARK}{secrets.token_hex(4)}"
        try:
            yield temp
            ops.rename([temp], [final])
        except BaseException as exc:
            try:
                ops.delete([temp])
            except Exception:  # the store may be failing as a whole; the original error matters
                pass
            if isinstance(exc, OSError) and exc.errno is not None and exc.strerror and not exc.filename:
                exc.filename = final  # a full disk says which file it was writing
            raise
