"""A lock on an output root: one `imgsearch build` at a time writes into one OUT.

On a local disk the lock is a file created exclusively (O_CREAT | O_EXCL); on gs:// an object
created only if absent (generation match 0) and deleted only at the generation it was written
with. Either way it records the pid, host, command and start time of its holder, so a refusal
says who holds it and how to clear it. A lock left by a process that died on this host is taken
over (a kill -9 must not wedge OUT for good); one from another host is only cleared by hand.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import socket
from typing import Any

from model import schema
from model.report import RunRefused

log = logging.getLogger(__name__)

LOCK_NAME = ".imgsearch.lock"


class OutLocked(RunRefused):
    """Another run holds OUT's lock."""


def _holder(command: str) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _gcs_blob(path: str) -> Any:
    from google.cloud import storage as gcs  # the `gcp` extra

    bucket, _, name = path[len("gs://") :].partition("/")
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        client = gcs.Client(project="imgsearch", credentials=AnonymousCredentials())
    else:
        client = gcs.Client()
    return client.bucket(bucket).blob(name)


class OutLock:
    """with OutLock(out, "build"): ...  raises OutLocked when another live run holds it."""

    def __init__(self, out: str, command: str):
        self.path = schema.out_path(out, LOCK_NAME)
        self.command = command
        self._generation: int | None = None
        self._held = False

    # -- local ---------------------------------------------------------------------------------
    def _take_local(self, record: bytes) -> bool:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(record)
        return True

    def _read_local(self) -> dict[str, Any]:
        try:
            with open(self.path, "rb") as f:
                return json.loads(f.read().decode("utf-8") or "{}")
        except (OSError, ValueError):
            return {}

    # -- gs:// ---------------------------------------------------------------------------------
    def _take_gcs(self, record: bytes) -> bool:
        from google.api_core import exceptions

        blob = _gcs_blob(self.path)
        try:
            blob.upload_from_string(record, content_type="application/json", if_generation_match=0)
        except exceptions.PreconditionFailed:
            return False
        self._generation = blob.generation
        return True

    def _read_gcs(self) -> dict[str, Any]:
        try:
            return json.loads(_gcs_blob(self.path).download_as_bytes().decode("utf-8") or "{}")
        except Exception:
            return {}

    # -------------------------------------------------------------------------------------------
    @property
    def _remote(self) -> bool:
        return self.path.startswith("gs://")

    def holder(self) -> dict[str, Any]:
        return self._read_gcs() if self._remote else self._read_local()

    def _stale(self, holder: dict[str, Any]) -> bool:
        """Held by a process of this host that is gone (killed, crashed without its finally)."""
        pid = holder.get("pid")
        return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid)

    def _clear_hint(self) -> str:
        return f"gsutil rm {self.path}" if self._remote else f"rm {self.path}"

    def acquire(self) -> None:
        record = json.dumps(_holder(self.command)).encode("utf-8")
        take = self._take_gcs if self._remote else self._take_local
        if take(record):
            self._held = True
            return
        holder = self.holder()
        if self._stale(holder):
            log.warning(
                "%s: taking over the lock of %s pid %s (started %s), which is no longer running",
                self.path, holder.get("command"), holder.get("pid"), holder.get("started"),
            )  # fmt: skip
            self._remove(holder_generation=None)
            if take(record):
                self._held = True
                return
            holder = self.holder()
        raise OutLocked(
            f"{self.path}: another {holder.get('command', 'run')} is writing into this output root "
            f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}); "
            f"wait for it to finish, or give another --out. If that run is no longer running (its machine "
            f"went away), clear the lock with `{self._clear_hint()}` and rerun"
        )

    def _remove(self, holder_generation: int | None) -> None:
        if self._remote:
            blob = _gcs_blob(self.path)
            try:
                if holder_generation is None:
                    blob.delete()
                else:
                    blob.delete(if_generation_match=holder_generation)
            except Exception as exc:  # gone already, or taken over: not ours to remove
                log.warning("%s: lock not removed (%s)", self.path, exc)
            return
        try:
            os.unlink(self.path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise

    def release(self) -> None:
        if self._held:
            self._remove(self._generation if self._remote else None)
            self._held = False

    def __enter__(self) -> "OutLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
