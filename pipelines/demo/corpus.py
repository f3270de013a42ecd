"""The built-in demo corpus: drawn pictures of everyday objects with crawled-looking tags.

Generated, seeded and offline: no download; the same seed writes byte-identical files wherever it
is generated (uris are relative to the manifest). It imitates what makes a real crawl hard, so that
ranking designs can be told apart on it:
  * every picture shows one object class, drawn with varied shape, size, position, rotation,
    colour and background (solid, gradient or noise) plus light clutter, so a feature must see
    the object, not its colour;
  * look-alike classes (objects.LOOKALIKE_PAIRS: apple/peach, moon/banana, car/taxi,
    circle/ring, star/sun, diamond/kite, tree/flower) share a silhouette family and related
    drawers;
  * a share of the pictures (`wrong_share`, default 25%) carry a wrong tag, as crawled tags do.
    A wrong tag is mostly (WRONG_FROM_LOOKALIKE, 70%) the look-alike class's tag, otherwise a tag
    drawn uniformly; a class without a look-alike always gets a uniform one. The share is exact
    over the original pictures and holds in expectation over the copies;
  * exact and near copies (COPY_SHARE of the pictures): the same picture again under another uri,
    byte for byte (`exact`) or re-encoded at another JPEG quality (`reencoded`), resized
    (`resized`) or cropped by a few pixels (`cropped`). A copy keeps its original's crawled tag,
    right or wrong, with probability COPY_KEEPS_TAG (a mirror), else it is tagged afresh like an
    original; at least one copy repeats its original's wrong tag. File names do not tell copies
    from originals; ground truth does (`copy_of`, `copy_kind`);
  * small tags (SMALL_TAGS: 3 to 10 pictures each, a share of them wrong) beside tags of about
    a hundred;
  * one tag without a class of its own (objects.ALL_WRONG_TAG, "lantern", ALL_WRONG_SHARE of the
    originals): every picture under it truly shows another class, mostly its look-alike (traffic
    lights), so no ranking of it is right and only a check across tags can notice. Its pictures
    count in the wrong share, and it is left out where they would be over half of it (so a
    corpus with wrong_share 0 has no wrong tag at all);
  * tags arrive with raw variation (capitals, extra spaces) and a few exact duplicate rows;
  * JPEG and PNG (RGB, RGBA and palette, some transparent) at different sizes;
  * three broken files are listed too (truncated JPEG, zero bytes, text named .jpg);
  * two tags are two words ("fire truck", "traffic light") and one tag's word ("hourglass") never
    occurs in the captions, so it is out of vocabulary for the demo word vectors.
A small corpus (a few dozen pictures) keeps, largest first, the small tags that fit in a quarter
of its originals, then the all-wrong tag if it still fits; under 20 pictures it has no copies.

Files written under the folder:
  manifest.jsonl      {"uri": <path relative to the manifest>, "tag": <crawled tag, raw>}, in crawl order
  ground_truth.jsonl  one row a picture, in file-name order: {"uri", "tag": <crawled tag,
                      normalised>, "true_tag": <the class drawn>, "copy_of": <the original's uri,
                      or null for an original>, "copy_kind": <exact, reencoded, resized, cropped,
                      or null>}; evaluation reads uri and true_tag
  captions.txt        one caption a line, generated from the classes
  word_vectors.bin    a small Word2Vec trained on the captions, word2vec binary format
  images/             the pictures

The classes, their drawers and the look-alike pairs are in objects.py, the pictures in drawing.py,
the captions and word vectors in captions.py; this module plans and writes the corpus.
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

from model import preprocess, schema, synthetic_images, tags
from pipelines.demo.captions import make_captions, train_demo_word_vectors
from pipelines.demo.drawing import draw_picture
from pipelines.demo.objects import (
    ALL_WRONG_LOOKS_LIKE,
    ALL_WRONG_TAG,
    CLASSES,
    LOOKALIKE,
    LOOKALIKE_PAIRS,
    MULTI_WORD_TAGS,
    OOV_TAG,
    TAGS,
)

log = logging.getLogger(__name__)

DEFAULT_IMAGES = 2400
DEFAULT_CAPTIONS = 6000
DEFAULT_WRONG_SHARE = 0.25
WRONG_FROM_LOOKALIKE = 0.7  # a wrong tag is the look-alike class's this often, else uniform
COPY_SHARE = 0.06  # of the pictures, copies of others
MIN_IMAGES_FOR_COPIES = 20
COPY_KEEPS_TAG = 0.6  # a copy carries its original's crawled tag (right or wrong) this often
EXACT, REENCODED, RESIZED, CROPPED = "exact", "reencoded", "resized", "cropped"
COPY_KINDS = (EXACT, REENCODED, RESIZED, CROPPED)
COPY_KIND_WEIGHTS = (0.4, 0.2, 0.2, 0.2)
# Tags with a handful of pictures (class -> pictures under its tag); largest first.
SMALL_TAGS: dict[str, int] = {"bell": 10, "cross": 6, "arrow": 3}
ALL_WRONG_SHARE = 0.02  # of the originals, under ALL_WRONG_TAG (at least 3)
MIN_SIDE, MAX_SIDE = 96, 320
PNG_FRACTION = 0.35
RAW_VARIANT_FRACTION = 0.06

MANIFEST_NAME = "manifest.jsonl"
GROUND_TRUTH_NAME = "ground_truth.jsonl"
CAPTIONS_NAME = "captions.txt"
WORD_VECTORS_NAME = "word_vectors.bin"
IMAGES_DIRNAME = "images"
# ground truth's fields beyond {"uri", "tag", "true_tag"}
COPY_OF = "copy_of"
COPY_KIND = "copy_kind"

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
    n_images: int  # good pictures: originals and copies
    n_rows: int  # manifest rows: pictures + duplicates + broken files
    n_mislabelled: int  # pictures (originals and copies) whose crawled tag is not their class
    n_duplicates: int
    n_broken: int
    n_captions: int
    tags: tuple[str, ...]  # the tags the corpus carries
    wrong_share: float = DEFAULT_WRONG_SHARE
    n_copies: int = 0
    n_exact_copies: int = 0
    small_tags: tuple[tuple[str, int], ...] = ()  # (tag, pictures under it)
    all_wrong_tag: str | None = ALL_WRONG_TAG
    n_all_wrong: int = 0  # pictures under all_wrong_tag
    oov_tag: str = OOV_TAG
    multi_word_tags: tuple[str, ...] = MULTI_WORD_TAGS
    lookalike_pairs: tuple[tuple[str, str], ...] = LOOKALIKE_PAIRS

    def summary_line(self) -> str:
        small = ", ".join(f"{t} {n}" for t, n in self.small_tags) or "none"
        all_wrong = f"{self.all_wrong_tag!r} ({self.n_all_wrong}, all wrong)" if self.all_wrong_tag else "none"
        return (
            f"{self.n_images} images over {len(self.tags)} tags ({self.n_mislabelled} mislabelled, "
            f"{len(self.lookalike_pairs)} look-alike pairs), {self.n_copies} copies ({self.n_exact_copies} exact), "
            f"small tags: {small}; all-wrong tag: {all_wrong}; "
            f"{self.n_rows} manifest rows ({self.n_duplicates} duplicates, {self.n_broken} broken files), "
            f"{self.n_captions} captions, in {self.folder}"
        )


@dataclasses.dataclass
class _Picture:
    """One good picture of the plan: an original (drawn with its own seed) or a copy of one."""

    true_tag: str
    tag: str  # crawled, normalised
    seed_index: int = -1  # originals: the drawing's seed
    source: int = -1  # copies: the original's index in the plan
    kind: str | None = None  # copies: one of COPY_KINDS


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


def _save(img: Image.Image, suffix: str, rng: random.Random) -> bytes:
    buf = io.BytesIO()
    if suffix == ".jpg":
        preprocess.to_rgb(img).save(buf, "JPEG", quality=rng.randint(55, 95))
    else:
        img.save(buf, "PNG", compress_level=2)
    return buf.getvalue()


def _near_copy(data: bytes, suffix: str, kind: str, rng: random.Random) -> tuple[bytes, str, str]:
    """A near copy of an encoded picture: its bytes, suffix and the kind actually made.

    reencoded: a JPEG at another quality (a PNG is flattened onto white, as a re-encoding site
    does); resized: scaled by 0.6-0.9 or 1.1-1.35 within MIN_SIDE..MAX_SIDE; cropped: a few
    pixels off some sides, never below MIN_SIDE. Where a size change cannot fit, it is re-encoded.
    """
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        transparent = opened.mode in ("RGBA", "LA", "PA") or "transparency" in opened.info
        img = opened.convert("RGBA" if transparent else "RGB")
    w, h = img.size
    if kind == RESIZED:
        low, high = max(MIN_SIDE / w, MIN_SIDE / h), min(MAX_SIDE / w, MAX_SIDE / h)
        scales = [s for s in (rng.uniform(0.6, 0.9), rng.uniform(1.1, 1.35)) if low <= s <= high]
        if scales:
            scale = rng.choice(scales)
            size = (min(MAX_SIDE, max(MIN_SIDE, round(w * scale))), min(MAX_SIDE, max(MIN_SIDE, round(h * scale))))
            return _save(img.resize(size, Image.Resampling.LANCZOS), suffix, rng), suffix, RESIZED
    elif kind == CROPPED:
        room_x, room_y = min(8, (w - MIN_SIDE) // 2), min(8, (h - MIN_SIDE) // 2)
        if max(room_x, room_y) >= 2:
            box = [rng.randint(0, room_x), rng.randint(0, room_y), w - rng.randint(0, room_x), h - rng.randint(0, room_y)]
            if (box[2] - box[0], box[3] - box[1]) == (w, h):
                box[2 if room_x >= 2 else 3] -= 2
            return _save(img.crop(tuple(box)), suffix, rng), suffix, CROPPED
    # re-encoded (or a size change that could not fit): another quality, same pixels
    previous = _jpeg_quality(data) if suffix == ".jpg" else None
    for _ in range(20):
        quality = rng.randint(40, 95)
        if previous is None or abs(quality - previous) >= 10:
            break
    buf = io.BytesIO()
    preprocess.to_rgb(img).save(buf, "JPEG", quality=quality)
    return buf.getvalue(), ".jpg", REENCODED


def _jpeg_quality(data: bytes) -> int | None:
    """The quality a JPEG was saved at, from its luminance table (Pillow's own scaling)."""
    with Image.open(io.BytesIO(data)) as img:
        table = getattr(img, "quantization", None) or {}
    if 0 not in table:
        return None
    # Pillow/libjpeg scale the standard table: q >= 50 -> scale = 200 - 2q (percent)
    standard_first = 16
    scale = table[0][0] * 100 / standard_first
    return round((200 - scale) / 2) if scale <= 100 else round(5000 / scale)


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
# The plan: which class each picture shows and which tag it carries
# ---------------------------------------------------------------------------
def _wrong_tag(true_tag: str, regular: list[str], rng: random.Random) -> str:
    """A wrong crawled tag for a picture of true_tag: mostly its look-alike's, else uniform."""
    lookalike = LOOKALIKE.get(true_tag)
    if lookalike in regular and rng.random() < WRONG_FROM_LOOKALIKE:
        return lookalike  # type: ignore[return-value]
    return rng.choice([t for t in regular if t != true_tag])


def _special_tags(n_originals: int, wrong_share: float) -> tuple[dict[str, int], int]:
    """Small tags and the all-wrong tag's size that fit in a quarter of the originals; the
    all-wrong tag's pictures are part of the wrong share, so it has none to spare at 0."""
    budget = n_originals // 4
    n_all_wrong = max(3, round(n_originals * ALL_WRONG_SHARE))
    if n_all_wrong > round(n_originals * wrong_share) / 2:
        n_all_wrong = 0
    small: dict[str, int] = {}
    for tag, size in SMALL_TAGS.items():
        if size <= budget:
            small[tag] = size
            budget -= size
    if n_all_wrong > budget:
        n_all_wrong = 0
    return small, n_all_wrong


def plan_pictures(n_images: int, wrong_share: float, rng: random.Random) -> list[_Picture]:
    """Originals first, then copies (each naming its original); see the module docstring."""
    if not 0.0 <= wrong_share < 1.0:
        raise ValueError(f"wrong_share must be in [0, 1), got {wrong_share}")
    n_copies = round(n_images * COPY_SHARE) if n_images >= MIN_IMAGES_FOR_COPIES else 0
    n_originals = n_images - n_copies
    small, n_all_wrong = _special_tags(n_originals, wrong_share)
    regular = [t for t in CLASSES if t not in SMALL_TAGS]  # classes with a tag of the usual size
    n_regular = n_originals - sum(small.values()) - n_all_wrong

    pictures: list[_Picture] = []
    # the all-wrong tag: every picture truly shows another class, mostly its look-alike
    for _ in range(n_all_wrong):
        shows = ALL_WRONG_LOOKS_LIKE if rng.random() < WRONG_FROM_LOOKALIKE else rng.choice(regular)
        pictures.append(_Picture(true_tag=shows, tag=ALL_WRONG_TAG))
    # small tags: a handful each, the wrong share of them showing a regular class
    special_wrong = n_all_wrong
    for tag, size in small.items():
        n_wrong_here = round(size * wrong_share)
        special_wrong += n_wrong_here
        pictures += [_Picture(true_tag=rng.choice(regular), tag=tag) for _ in range(n_wrong_here)]
        pictures += [_Picture(true_tag=tag, tag=tag) for _ in range(size - n_wrong_here)]
    # regular tags: about equal classes, then the rest of the wrong share among them
    true_tags = [regular[i % len(regular)] for i in range(n_regular)]
    rng.shuffle(true_tags)
    n_wrong = min(n_regular, max(0, round(n_originals * wrong_share) - special_wrong))
    wrong = set(rng.sample(range(n_regular), n_wrong))
    for i, true_tag in enumerate(true_tags):
        tag = _wrong_tag(true_tag, regular, rng) if i in wrong else true_tag
        pictures.append(_Picture(true_tag=true_tag, tag=tag))
    for i, picture in enumerate(pictures):
        picture.seed_index = i

    # copies of regular originals (special tags keep their sizes): groups of one to three copies,
    # at least one source wrongly tagged and at least one copy repeating that wrong tag
    candidates = list(range(len(pictures) - n_regular, len(pictures)))
    wrong_candidates = [i for i in candidates if pictures[i].tag != pictures[i].true_tag]
    copies: list[_Picture] = []
    sources: list[int] = []
    while len(sources) < n_copies and candidates:
        source = rng.choice(candidates)
        candidates.remove(source)
        sources += [source] * min(n_copies - len(sources), rng.choices((1, 2, 3), (0.6, 0.3, 0.1))[0])
    if sources and wrong_candidates and not any(s in wrong_candidates for s in sources):
        sources = [rng.choice(wrong_candidates)] + sources[1:]
    repeated_wrong = False
    for source in sources:
        original = pictures[source]
        source_wrong = original.tag != original.true_tag
        if (source_wrong and not repeated_wrong) or rng.random() < COPY_KEEPS_TAG:
            tag = original.tag  # a mirror: the same crawled tag, right or wrong
        elif rng.random() < wrong_share:
            tag = _wrong_tag(original.true_tag, regular, rng)
        else:
            tag = original.true_tag
        repeated_wrong = repeated_wrong or (source_wrong and tag == original.tag)
        kind = rng.choices(COPY_KINDS, COPY_KIND_WEIGHTS)[0]
        copies.append(_Picture(true_tag=original.true_tag, tag=tag, source=source, kind=kind))
    return pictures + copies


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
    folder: str | Path,
    n_images: int = DEFAULT_IMAGES,
    seed: int = 0,
    n_captions: int = DEFAULT_CAPTIONS,
    wrong_share: float = DEFAULT_WRONG_SHARE,
) -> DemoCorpus:
    """Write the demo corpus under folder (replacing an earlier one there) and describe it."""
    started = time.monotonic()
    root = Path(folder).resolve()
    images_dir = root / IMAGES_DIRNAME
    if images_dir.exists():
        shutil.rmtree(images_dir)  # an earlier, maybe larger, corpus must not leave pictures behind
    images_dir.mkdir(parents=True)
    rng = random.Random(f"corpus:{seed}")
    pictures = plan_pictures(n_images, wrong_share, rng)
    # file names in a shuffled order: neither a name nor its place tells a copy from an original
    numbers = list(range(len(pictures)))
    rng.shuffle(numbers)

    uris: list[str] = []
    data_of: list[tuple[bytes, str]] = []
    truth: list[dict] = []
    manifest: list[dict] = []
    for i, picture in enumerate(pictures):
        if picture.source < 0:
            item_rng = random.Random(f"image:{seed}:{picture.seed_index}")
            as_png = item_rng.random() < PNG_FRACTION
            transparent = as_png and item_rng.random() < 0.4
            drawn = draw_picture(picture.true_tag, item_rng, _side(item_rng), transparent)
            data, suffix = _encode(drawn, item_rng, as_png)
            kind = None
        else:
            copy_rng = random.Random(f"copy:{seed}:{i}")
            data, suffix = data_of[picture.source]
            kind = picture.kind
            if kind != EXACT:
                data, suffix, kind = _near_copy(data, suffix, kind, copy_rng)
        data_of.append((data, suffix))
        # relative to the manifest: ids (and so the split and the evaluation) do not depend on
        # where the corpus was generated
        uri = f"{IMAGES_DIRNAME}/img{numbers[i]:05d}{suffix}"
        (root / uri).write_bytes(data)
        uris.append(uri)
        raw = _raw_variant(picture.tag, rng) if rng.random() < RAW_VARIANT_FRACTION else picture.tag
        manifest.append({schema.URI: uri, schema.TAG: raw})
        truth.append(
            {
                schema.URI: uri,
                schema.TAG: tags.normalize_tag(raw),
                schema.TRUE_TAG: picture.true_tag,
                COPY_OF: uris[picture.source] if picture.source >= 0 else None,
                COPY_KIND: kind,
            }
        )
    truth.sort(key=lambda row: row[schema.URI])

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

    carried = {p.tag for p in pictures}
    sizes = {t: sum(1 for p in pictures if p.tag == t) for t in SMALL_TAGS}
    copies = [p for p in pictures if p.source >= 0]
    corpus = DemoCorpus(
        folder=root,
        manifest=manifest_path,
        ground_truth=truth_path,
        captions=captions_path,
        images_dir=images_dir,
        word_vectors=vectors,
        n_images=len(pictures),
        n_rows=len(rows),
        n_mislabelled=sum(1 for row in truth if row[schema.TAG] != row[schema.TRUE_TAG]),
        n_duplicates=len(duplicates),
        n_broken=len(broken),
        n_captions=len(captions),
        tags=tuple(t for t in TAGS if t in carried),
        wrong_share=wrong_share,
        n_copies=len(copies),
        n_exact_copies=sum(1 for row in truth if row[COPY_KIND] == EXACT),
        small_tags=tuple((t, sizes[t]) for t in SMALL_TAGS if t in carried),
        all_wrong_tag=ALL_WRONG_TAG if ALL_WRONG_TAG in carried else None,
        n_all_wrong=sum(1 for p in pictures if p.tag == ALL_WRONG_TAG),
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
    parser.add_argument("--wrong-share", type=float, default=DEFAULT_WRONG_SHARE)
    args = parser.parse_args()
    print(generate_demo_corpus(args.folder, args.images, args.seed, wrong_share=args.wrong_share).summary_line())
