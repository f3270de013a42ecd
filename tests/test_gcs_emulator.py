"""Every stage with --out gs://… against a Cloud Storage emulator on 127.0.0.1 (gcp-storage-emulator
from PyPI, the `test` extra), word vectors and images on gs:// too, and the site's objects
served as a bucket would serve them: Content-Type per file and Cache-Control on the pointer.

Credentials: anonymous (pipelines.common.use_anonymous_gcs_for_emulator for Beam, token=anon for
gcsfs), so no process waits for Google credentials. Skips, saying why, only where the emulator
cannot be imported or started.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.builders import QUICK_BUILD_FLAGS
from tests.conftest import make_keyed_vectors, write_image_collection

BUCKET = "imgsearch-test"
TAGS = ["cat", "dog", "red car", "tree"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the emulator exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url + "/storage/v1/b?project=test", timeout=1).read()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the emulator did not answer within {timeout_s:.0f} s")


@pytest.fixture(scope="module")
def gcs_emulator():
    """http://127.0.0.1:PORT of a fresh in-memory emulator holding an empty bucket; stopped after."""
    if importlib.util.find_spec("gcp_storage_emulator") is None or importlib.util.find_spec("google.cloud.storage") is None:
        pytest.skip("gcp-storage-emulator or google-cloud-storage is not installed (pip install -e '.[test]')")
    exe = shutil.which("gcp-storage-emulator", path=os.path.dirname(sys.executable)) or shutil.which("gcp-storage-emulator")
    if exe is None:
        pytest.skip("the gcp-storage-emulator command is not installed")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [exe, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory", "--default-bucket", BUCKET, "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        try:
            _wait_until_up(url, proc)
        except RuntimeError as exc:
            pytest.skip(f"the Cloud Storage emulator could not be started: {exc}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _copy_then_delete(self, path1: str, path2: str, **kwargs) -> None:
    await self._cp_file(path1, path2)
    await self._rm_file(path1)


@pytest.fixture
def gcs(gcs_emulator: str, monkeypatch: pytest.MonkeyPatch):
    """The process pointed at the emulator, anonymously, for one test; a storage client."""
    import fsspec
    from google.cloud import storage as gcs_client

    from pipelines import common

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    monkeypatch.setenv("NO_GCE_CHECK", "true")  # google-auth: never probe the metadata server
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # gcsfs: no gRPC bucket probe
    for protocol in ("gs", "gcs"):
        monkeypatch.setitem(fsspec.config.conf, protocol, {"token": "anon", "endpoint_url": gcs_emulator})
    import gcsfs  # after the environment above: it reads it at import

    fsspec.register_implementation("gs", gcsfs.GCSFileSystem, clobber=True)
    fsspec.register_implementation("gcs", gcsfs.GCSFileSystem, clobber=True)
    gcsfs.GCSFileSystem.clear_instance_cache()
    # the emulator lacks the moveTo API, which gcsfs retries for ~30 s before copying instead
    monkeypatch.setattr(gcsfs.GCSFileSystem, "_mv_file", _copy_then_delete)
    monkeypatch.setattr(gcsfs.GCSFileSystem, "mv_file", fsspec.asyn.sync_wrapper(_copy_then_delete))
    assert common.use_anonymous_gcs_for_emulator()
    # Beam keeps one GcsIO client per filesystem instance: a fresh one for this emulator
    from apache_beam.io.filesystems import FileSystems

    FileSystems._pipeline_options = None
    client = gcs_client.Client.create_anonymous_client()
    client.project = "test"
    yield client
    gcsfs.GCSFileSystem.clear_instance_cache()


def _upload_dir(client, folder: Path, prefix: str) -> None:
    bucket = client.bucket(BUCKET)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            bucket.blob(f"{prefix}/{path.relative_to(folder).as_posix()}").upload_from_filename(str(path))


def test_every_stage_on_gs_and_the_site_is_servable_from_the_bucket(gcs, tmp_path: Path):
    from export import site_data
    from model import schema, storage
    from pipelines import build

    started = time.monotonic()
    # inputs on gs://: images, the manifest and the word vectors
    local = tmp_path / "in"
    rows = write_image_collection(local / "images", 16, TAGS)
    manifest = local / "manifest.jsonl"
    manifest.write_text(
        "".join(
            '{"uri": "gs://%s/in/images/%s", "tag": "%s"}\n' % (BUCKET, Path(r["uri"]).name, r["tag"]) for r in rows
        )
    )
    make_keyed_vectors(["cat", "dog", "red", "car", "tree"]).save_word2vec_format(str(local / "vectors.bin"), binary=True)
    _upload_dir(gcs, local, "in")
    out = f"gs://{BUCKET}/x"

    result = build.run(
        [
            "--input", f"gs://{BUCKET}/in/manifest.jsonl",
            "--word-vectors", f"gs://{BUCKET}/in/vectors.bin",
            "--out", out,
            *QUICK_BUILD_FLAGS,
        ]
    )
    seconds = time.monotonic() - started

    rankings = storage.read_parquet_dir(schema.out_path(out, schema.RANKINGS_DIR))
    assert 0 < rankings.num_rows <= len(rows)
    assert set(rankings.column(schema.TAG).to_pylist()) == set(TAGS)
    assert result.rank.rows_failed == 0

    # the published site, object by object, as a bucket serves it
    blobs = {b.name[len("x/site/"):]: b for b in gcs.list_blobs(BUCKET, prefix="x/site/")}
    expected_types = {
        ".html": "text/html",
        ".js": "text/javascript",
        ".css": "text/css",
        ".json": "application/json",
        ".jpg": "image/jpeg",
    }
    seen = set()
    for name, blob in blobs.items():
        suffix = name[name.rfind("."):] if "." in name.rsplit("/", 1)[-1] else ""
        if suffix in expected_types:
            assert (blob.content_type or "").split(";")[0] == expected_types[suffix], (name, blob.content_type)
            seen.add(suffix)
    assert seen == set(expected_types), f"missing kinds of file: {set(expected_types) - seen}"
    assert "index.html" in blobs
    manifest_blob = blobs[site_data.MANIFEST_PATH]
    assert (manifest_blob.cache_control or "").startswith("no-cache"), manifest_blob.cache_control
    hashed = [b for n, b in blobs.items() if "/tags/" in n and n.endswith(".json")]
    assert hashed and all("immutable" in (b.cache_control or "") for b in hashed)
    print(f"gs:// build in {seconds:.1f} s")

    # extract-images --full on gs://: the new set is renamed into place, the old one deleted
    from pipelines import extract_images

    def feature_objects() -> list[str]:
        return sorted(b.name for b in gcs.list_blobs(BUCKET, prefix=f"x/{schema.IMAGE_FEATURES_DIR}/"))

    before = feature_objects()
    assert before and all("/full-run/" not in name for name in before)
    full = extract_images.run(
        ["--out", out, "--image-model", "efficientnet_lite0", "--weights", "random", "--precision", "fp32", "--full"],
        save_main_session=False,
    )
    after = feature_objects()
    assert full.rows_out == len(rows) and full.details["full_previous_shards_removed"] == len(before)
    assert after and not set(after) & set(before) and all("/full-run/" not in name for name in after)
