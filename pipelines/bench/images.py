"""bench's inputs: sets of generated images, their manifests and the index built from them, cached.

The pictures are model/synthetic_images.py's photos (JPEG, typical web sizes, some with an EXIF
orientation) and graphics (RGBA PNG, clip-art on a transparent background).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from PIL import Image

from model import synthetic_images

log = logging.getLogger(__name__)

KIND_JPEG = "jpeg"  # photos
KIND_PNG = "png"  # graphics with transparency
KINDS = (KIND_JPEG, KIND_PNG)
SEED = 0
GENERATOR_VERSION = 1  # bump when synthetic_images' photos or graphics change, so cached sets are not reused
BENCH_TAGS = ("cat", "dog", "red car", "tree", "house", "flower", "boat", "logo")
GENERATORS: dict[str, tuple[Callable[[int, int], bytes], str]] = {
    KIND_JPEG: (synthetic_images.make_photo, ".jpg"),
    KIND_PNG: (synthetic_images.make_graphic, ".png"),
}


def _write_atomically(path: Path, data: bytes) -> None:
    # a file that exists is complete: an interrupted run leaves only a temp file behind
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def set_key(kind: str, n: int, seed: int) -> str:
    """A short hash of what a generated set is made from: its cache name."""
    spec = json.dumps({"version": GENERATOR_VERSION, "kind": kind, "n": n, "seed": seed, "pillow": Image.__version__})
    return hashlib.sha256(spec.encode("utf-8")).hexdigest()[:12]


def ensure_images(work_dir: str | Path, kind: str, n: int, seed: int = SEED) -> Path:
    """A JSONL manifest ({"uri", "tag"}) of n generated images of `kind`, generating what is missing.

    Images are files named by kind and position under a folder keyed by generator version and seed,
    so a set of 1,000 reuses the first 1,000 pictures of a set of 8,000; the manifest, named by the
    set's hash, is written last and is what marks a set complete.
    """
    work = Path(work_dir)
    manifest = work / "manifests" / f"{kind}-{n}-{set_key(kind, n, seed)}.jsonl"
    if manifest.exists():
        return manifest
    make, suffix = GENERATORS[kind]
    folder = work / "images" / f"v{GENERATOR_VERSION}-seed{seed}" / kind
    folder.mkdir(parents=True, exist_ok=True)
    started, made = time.monotonic(), 0
    lines = []
    for i in range(n):
        path = folder / f"{kind}-{i:06d}{suffix}"
        if not path.exists():
            _write_atomically(path, make(i, seed))
            made += 1
        lines.append(json.dumps({"uri": str(path.resolve()), "tag": BENCH_TAGS[i % len(BENCH_TAGS)]}) + "\n")
    manifest.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(manifest, "".join(lines).encode("utf-8"))
    log.info("bench: %d %s images ready in %s (%d generated in %.1f s)", n, kind, folder, made, time.monotonic() - started)
    return manifest


def manifest_uris(manifest: str | Path) -> list[str]:
    with open(manifest, encoding="utf-8") as f:
        return [json.loads(line)["uri"] for line in f if line.strip()]


def ensure_index(work_dir: str | Path, manifest: Path) -> Path:
    """An OUT holding only the index of a manifest (cached beside it); phase (c) copies its index/."""
    from model import schema
    from pipelines import index

    out = Path(work_dir) / "index" / manifest.stem
    done = Path(schema.out_path(str(out), schema.REPORTS_DIR, f"{index.STAGE}.json"))
    if not done.exists():
        shutil.rmtree(out, ignore_errors=True)
        # the generated images live beside the manifests' folder, under the work folder
        argv = ["--input", str(manifest), "--out", str(out), "--allow-root", str(Path(work_dir).resolve())]
        report = index.run(argv, save_main_session=False)
        log.info("bench: %s", report.summary_line())
    return out
