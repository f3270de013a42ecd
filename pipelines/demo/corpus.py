"""The built-in demo corpus: drawn pictures of everyday objects with crawled-looking tags.

Generated, seeded and offline: no download. It imitates what makes a real crawl hard:
  * every picture shows one object class, drawn with varied shape, size, position, rotation,
    colour and background (solid, gradient or noise) plus light clutter, so a feature must see
    the object, not its colour;
  * 20% of the pictures carry a wrong tag (another tag drawn uniformly), as crawled tags do;
  * tags arrive with raw variation (capitals, extra spaces) and a few exact duplicate rows;
  * JPEG and PNG (RGB, RGBA and palette, some transparent) at different sizes;
  * three broken files are listed too (truncated JPEG, zero bytes, text named .jpg);
  * two tags are two words ("fire truck", "traffic light") and one tag's word ("hourglass") never
    occurs in the captions, so it is out of vocabulary for the demo word vectors.

Files written under the folder:
  manifest.jsonl      {"uri": <path relative to the manifest>, "tag": <crawled tag, raw>}, in crawl order
  ground_truth.jsonl  {"uri", "tag": <crawled tag, normalised>, "true_tag"}; evaluation reads it
  captions.txt        one caption a line, generated from the true classes
  word_vectors.bin    a small Word2Vec trained on the captions, word2vec binary format
  images/             the pictures

The classes and their drawers are in objects.py, the pictures in drawing.py, the captions and word
vectors in captions.py; this module writes the corpus.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import random
import shutil
import time
from pathlib import Path

from PIL import Image

from model import schema, synthetic_images, tags
from pipelines.demo.captions import make_captions, train_demo_word_vectors
from pipelines.demo.drawing import draw_picture
from pipelines.demo.objects import MULTI_WORD_TAGS, OOV_TAG, TAGS

log = logging.getLogger(__name__)

DEFAULT_IMAGES = 2400
DEFAULT_CAPTIONS = 6000
MISLABEL_FRACTION = 0.2
MIN_SIDE, MAX_SIDE = 96, 320
PNG_FRACTION = 0.35

MANIFEST_NAME = "manifest.jsonl"
GROUND_TRUTH_NAME = "ground_truth.jsonl"
CAPTIONS_NAME = "captions.txt"
WORD_VECTORS_NAME = "word_vectors.bin"
IMAGES_DIRNAME = "images"

BROKEN_PREFIX = "broken-"
BROKEN_FILES = synthetic_images.broken_file_names(BROKEN_PREFIX)
BROKEN_TRUNCATED, BROKEN_EMPTY, BROKEN_TEXT = BROKEN_FILES


@dataclasses.dataclass(frozen=True)
class DemoCorpus:
    folder: Path
    manifest: Path
    ground_truth: Path
    captions: Path
    images_dir: Path
    word_vectors: Path
    n_images: int  # good pictures
    n_rows: int  # manifest rows: pictures + duplicates + broken files
    n_mislabelled: int
    n_duplicates: int
    n_broken: int
    n_captions: int
    tags: tuple[str, ...]
    oov_tag: str = OOV_TAG
    multi_word_tags: tuple[str, ...] = MULTI_WORD_TAGS

    def summary_line(self) -> str:
        return (
            f"{self.n_images} images over {len(self.tags)} tags ({self.n_mislabelled} mislabelled), "
            f"{self.n_rows} manifest rows ({self.n_duplicates} duplicates, {self.n_broken} broken files), "
            f"{self.n_captions} captions, in {self.folder}"
        )


# ---------------------------------------------------------------------------
# Files and rows
# ---------------------------------------------------------------------------
def _encode(img: Image.Image, rng: random.Random, as_png: bool) -> tuple[bytes, str]:
    """Bytes and file suffix; PNGs come as RGB, RGBA or palette (P) images."""
    buf = io.BytesIO()
    if not as_png:
        img.convert("RGB").save(buf, "JPEG", quality=rng.randint(70, 95))
        return buf.getvalue(), ".jpg"
    if img.mode == "RGBA" and rng.random() < 0.5:
        img = img.quantize(rng.choice((32, 64, 128)), method=Image.Quantize.FASTOCTREE)  # P with transparency
    elif img.mode == "RGB" and rng.random() < 0.3:
        img = img.quantize(rng.choice((64, 128)), method=Image.Quantize.FASTOCTREE)
    # light compression: noisy backgrounds make zlib's higher levels slow for little gain
    img.save(buf, "PNG", compress_level=2)
    return buf.getvalue(), ".png"


def _write_broken_files(images_dir: Path, rng: random.Random) -> list[Path]:
    good = io.BytesIO()
    draw_picture(TAGS[0], rng, (200, 150)).save(good, "JPEG", quality=90)
    return synthetic_images.write_broken_files(images_dir, good.getvalue(), BROKEN_PREFIX)


def _raw_variant(tag: str, rng: random.Random) -> str:
    """What a crawler might have stored for a tag: capitals, padding, doubled spaces."""
    return rng.choice(
        (tag.upper(), tag.title(), f"  {tag} ", tag.replace(" ", "   ") + "\t", tag.capitalize())
    )


# ---------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------
def _side(rng: random.Random) -> tuple[int, int]:
    w = rng.randint(MIN_SIDE, MAX_SIDE)
    h = int(min(MAX_SIDE, max(MIN_SIDE, w * rng.uniform(0.6, 1.5))))
    return w, h


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def generate_demo_corpus(
    folder: str | Path, n_images: int = DEFAULT_IMAGES, seed: int = 0, n_captions: int = DEFAULT_CAPTIONS
) -> DemoCorpus:
    """Write the demo corpus under folder (replacing an earlier one there) and describe it."""
    started = time.monotonic()
    root = Path(folder).resolve()
    images_dir = root / IMAGES_DIRNAME
    if images_dir.exists():
        shutil.rmtree(images_dir)  # an earlier, maybe larger, corpus must not leave pictures behind
    images_dir.mkdir(parents=True)
    rng = random.Random(f"corpus:{seed}")

    true_tags = [TAGS[i % len(TAGS)] for i in range(n_images)]
    rng.shuffle(true_tags)
    n_wrong = round(n_images * MISLABEL_FRACTION)
    wrong = set(rng.sample(range(n_images), n_wrong))

    manifest: list[dict] = []
    truth: list[dict] = []
    for i, true_tag in enumerate(true_tags):
        item_rng = random.Random(f"image:{seed}:{i}")
        as_png = item_rng.random() < PNG_FRACTION
        transparent = as_png and item_rng.random() < 0.4
        data, suffix = _encode(draw_picture(true_tag, item_rng, _side(item_rng), transparent), item_rng, as_png)
        path = images_dir / f"img{i:05d}{suffix}"
        path.write_bytes(data)
        crawled = rng.choice([t for t in TAGS if t != true_tag]) if i in wrong else true_tag
        raw = _raw_variant(crawled, rng) if rng.random() < 0.06 else crawled
        # relative to the manifest: ids (and so the split and the evaluation) do not depend on
        # where the corpus was generated
        uri = f"{IMAGES_DIRNAME}/{path.name}"
        manifest.append({schema.URI: uri, schema.TAG: raw})
        truth.append({schema.URI: uri, schema.TAG: tags.normalize_tag(raw), schema.TRUE_TAG: true_tag})

    n_duplicates = max(3, n_images // 500)
    duplicates = [dict(manifest[j]) for j in rng.sample(range(len(manifest)), min(n_duplicates, len(manifest)))]
    broken = [
        {schema.URI: f"{IMAGES_DIRNAME}/{p.name}", schema.TAG: rng.choice(TAGS)} for p in _write_broken_files(images_dir, rng)
    ]
    rows = manifest + duplicates + broken
    rng.shuffle(rows)  # crawl order, not generation order

    manifest_path, truth_path, captions_path = root / MANIFEST_NAME, root / GROUND_TRUTH_NAME, root / CAPTIONS_NAME
    _write_jsonl(manifest_path, rows)
    _write_jsonl(truth_path, truth)
    captions = make_captions(n_captions, seed)
    captions_path.write_text("\n".join(captions) + "\n", encoding="utf-8")
    vectors = train_demo_word_vectors(captions_path, root / WORD_VECTORS_NAME, seed=seed)

    corpus = DemoCorpus(
        folder=root,
        manifest=manifest_path,
        ground_truth=truth_path,
        captions=captions_path,
        images_dir=images_dir,
        word_vectors=vectors,
        n_images=n_images,
        n_rows=len(rows),
        n_mislabelled=n_wrong,
        n_duplicates=len(duplicates),
        n_broken=len(broken),
        n_captions=len(captions),
        tags=TAGS,
    )
    log.info("demo corpus in %.1f s: %s", time.monotonic() - started, corpus.summary_line())
    return corpus


if __name__ == "__main__":
    import argparse

    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description="write the demo corpus")
    parser.add_argument("folder")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(generate_demo_corpus(args.folder, args.images, args.seed).summary_line())
