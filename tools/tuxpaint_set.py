"""A real-image labelled set from Debian's Tux Paint stamps, with a known share of wrong tags.

Tux Paint's stamps (`apt-get install tuxpaint-stamps-default`) are ~800 drawn PNGs filed under
/usr/share/tuxpaint/stamps/<category>/<subcategory>/..., each with a .txt description (an English
first line, then `lang.utf8=...` translations). Their folders are a curated category tree, so
they make a small collection whose true tags are known; this script mislabels a fixed share of
them the way a crawl does and writes everything `imgsearch index` and `extract-text` need:

    DIR/images/<category>__<...>__<stamp>.png   copies of the stamps' PNGs
    DIR/manifest.jsonl      {"uri": "images/...", "tag"}            uris relative to DIR
    DIR/ground_truth.jsonl  {"uri", "tag", "true_tag"}              read only by evaluation
    DIR/vectors.txt         word2vec text format, trained on the descriptions (every tag word has one)

Tags: the subcategory name ("fruit", "flags", "birds"); images filed directly under a category,
or in a subcategory with fewer than --min-images images, take the category's name; a category
left with fewer than --min-images images is dropped. "cartoon" below a category is a drawing
style, not a subject, so its images count for the category. Names that two folders share get
the category in front ("military vehicles" beside "vehicles").

Usage: python tools/tuxpaint_set.py --out DIR [--stamps /usr/share/tuxpaint/stamps] [--wrong 0.25] [--seed 0]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import random
import re
import shutil
import sys
from pathlib import Path

from pipelines.demo.captions import train_word2vec

DEFAULT_STAMPS = "/usr/share/tuxpaint/stamps"
PACKAGE = "tuxpaint-stamps-default"
IMAGES_DIRNAME = "images"
MANIFEST_NAME = "manifest.jsonl"
GROUND_TRUTH_NAME = "ground_truth.jsonl"
VECTORS_NAME = "vectors.txt"

# Folder names that say how a stamp is drawn, not what it shows.
STYLE_FOLDERS = frozenset({"cartoon"})
# Tux Paint ships some stamps pre-mirrored (NAME_mirror.png) beside NAME.png: the same picture.
VARIANT_SUFFIXES = ("_mirror", "_flip")
_WORD = re.compile(r"[a-z]+")

VECTOR_SIZE = 50
W2V_EPOCHS = 40


@dataclasses.dataclass
class Stamp:
    path: Path  # the PNG
    parts: tuple[str, ...]  # folders between the stamps root and the file
    description: str  # English line of the .txt (or the file name's words without one)
    has_description: bool
    tag: str = ""


@dataclasses.dataclass
class Scan:
    stamps: list[Stamp]
    svg_only: int
    variants: int


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def _display(folder: str) -> str:
    # "body_parts" -> "body parts", "00_symbols" -> "symbols": tags are words the vectors know
    return " ".join(_words(folder.replace("_", " ")))


def english_description(txt: Path) -> str:
    """The first line of a stamp's .txt that is not a `lang.utf8=` translation."""
    for line in txt.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line and not re.match(r"^[A-Za-z_@]+\.utf-?8=", line):
            return line
    return ""


def scan(stamps_dir: Path) -> Scan:
    """Every raster stamp under stamps_dir, in path order; SVG-only stamps and variants counted."""
    stamps: list[Stamp] = []
    svg_only = variants = 0
    for svg in sorted(stamps_dir.rglob("*.svg")):
        if not svg.with_suffix(".png").exists():
            svg_only += 1
    for png in sorted(stamps_dir.rglob("*.png")):
        if png.stem.endswith(VARIANT_SUFFIXES) and png.with_name(png.stem.rsplit("_", 1)[0] + ".png").exists():
            variants += 1
            continue
        txt = png.with_suffix(".txt")
        description = english_description(txt) if txt.exists() else ""
        parts = png.relative_to(stamps_dir).parent.parts
        stamps.append(Stamp(png, parts, description or _display(png.stem), bool(description)))
    return Scan(stamps, svg_only, variants)


def assign_tags(stamps: list[Stamp], min_images: int) -> tuple[list[Stamp], list[str]]:
    """Give each stamp its category tag; returns the kept stamps and notes on merges and drops."""
    notes: list[str] = []
    # (category, subcategory or None) -> stamps
    groups: dict[tuple[str, str | None], list[Stamp]] = collections.defaultdict(list)
    for stamp in stamps:
        if not stamp.parts:
            continue  # a stamp in the root has no category
        category = stamp.parts[0]
        sub = stamp.parts[1] if len(stamp.parts) > 1 and stamp.parts[1] not in STYLE_FOLDERS else None
        groups[(category, sub)].append(stamp)

    kept: dict[tuple[str, str | None], list[Stamp]] = {}
    for (category, sub), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        if sub is not None and len(members) < min_images:
            notes.append(f"merged {category}/{sub} ({len(members)}) into {category}")
            kept.setdefault((category, None), []).extend(members)
        else:
            kept.setdefault((category, sub), []).extend(members)
    for key in sorted(kept, key=lambda k: (k[0], k[1] or "")):
        if len(kept[key]) < min_images:
            notes.append(f"dropped {'/'.join(k for k in key if k)} ({len(kept[key])} images, fewer than {min_images})")
            del kept[key]

    names = {key: _display(key[1] if key[1] is not None else key[0]) for key in kept}
    clashes = collections.Counter(names.values())
    for key, name in names.items():
        # a category keeps its plain name; a subcategory whose name is taken says where it is from
        if clashes[name] > 1 and key[1] is not None:
            names[key] = f"{_display(key[0])} {name}"
            notes.append(f"renamed {key[0]}/{key[1]} to '{names[key]}' (name shared)")
    result = []
    for key, members in kept.items():
        for stamp in members:
            stamp.tag = names[key]
            result.append(stamp)
    result.sort(key=lambda s: s.path)
    return result, notes


def choose_wrong_tags(stamps: list[Stamp], share: float, rng: random.Random) -> list[str]:
    """The crawled tag of each stamp: its own, except exactly round(share * n) drawn at random.

    A wrong tag comes from another top-level category where one exists, so "wrong" means wrong
    ("flowers" on a tree would arguably still show its subject), and is drawn in proportion to
    the tags' sizes, so every tag ends up with about the same share of wrong images: drawn
    uniformly, a small tag would be half wrong and "alphabets" hardly at all.
    """
    n = len(stamps)
    wrong = set(rng.sample(range(n), round(share * n)))
    category_of = {s.tag: s.parts[0] for s in stamps}
    size = collections.Counter(s.tag for s in stamps)
    tags = sorted(category_of)
    crawled = []
    for i, stamp in enumerate(stamps):
        if i not in wrong:
            crawled.append(stamp.tag)
            continue
        others = [t for t in tags if category_of[t] != stamp.parts[0]] or [t for t in tags if t != stamp.tag]
        crawled.append(rng.choices(others, weights=[size[t] for t in others])[0])
    return crawled


def stable_hash(text: str) -> int:
    # gensim seeds each word's first vector with hash(seed + word); Python's str hash changes per
    # process, which would make the vectors differ from run to run.
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def train_vectors(stamps: list[Stamp], seed: int, path: Path) -> int:
    """Word2Vec on "<true tag words> <description words>" per stamp; returns the vocabulary size."""
    sentences = [_words(s.tag) + _words(s.description) + _words(s.path.stem.replace("_", " ")) for s in stamps]
    # with seed and stable_hash: the same file on every run
    wv = train_word2vec(
        sentences, path, dim=VECTOR_SIZE, window=5, min_count=1, epochs=W2V_EPOCHS, seed=seed, binary=False, hashfxn=stable_hash
    )
    return len(wv)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def build(out: Path, stamps_dir: Path, wrong: float, seed: int, min_images: int) -> dict:
    """Write the set into out; returns the summary."""
    found = scan(stamps_dir)
    stamps, notes = assign_tags(found.stamps, min_images)
    rng = random.Random(seed)
    # crawl order: shuffled, so index order says nothing about which images are wrong
    rng.shuffle(stamps)
    crawled = choose_wrong_tags(stamps, wrong, rng)

    images_dir = out / IMAGES_DIRNAME
    if images_dir.exists():
        shutil.rmtree(images_dir)  # a rerun with other options must not leave stale images behind
    images_dir.mkdir(parents=True)
    manifest, truth = [], []
    for stamp, tag in zip(stamps, crawled):
        name = "__".join([*stamp.parts, stamp.path.name])
        shutil.copyfile(stamp.path, images_dir / name)
        uri = f"{IMAGES_DIRNAME}/{name}"
        manifest.append({"uri": uri, "tag": tag})
        truth.append({"uri": uri, "tag": tag, "true_tag": stamp.tag})
    _write_jsonl(out / MANIFEST_NAME, manifest)
    _write_jsonl(out / GROUND_TRUTH_NAME, truth)
    vocab = train_vectors(sorted(stamps, key=lambda s: s.path), seed, out / VECTORS_NAME)

    per_tag = collections.Counter(s.tag for s in stamps)
    tagged = collections.Counter(crawled)
    wrong_per_tag = collections.Counter(t for s, t in zip(stamps, crawled) if t != s.tag)
    return {
        "images": len(stamps),
        "tags": len(per_tag),
        "wrong": sum(wrong_per_tag.values()),
        # shows: images of the category; tagged: images carrying its tag, of which wrong do not show it
        "per_tag": {t: {"shows": per_tag[t], "tagged": tagged[t], "wrong": wrong_per_tag[t]} for t in sorted(per_tag)},
        "skipped_svg_only": found.svg_only,
        "skipped_mirror_variants": found.variants,
        "dropped_small_categories": len(found.stamps) - len(stamps),
        "no_description": sum(not s.has_description for s in stamps),
        "vocabulary": vocab,
        "notes": notes,
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to write the set into")
    parser.add_argument("--stamps", default=DEFAULT_STAMPS, type=Path, help=f"Tux Paint's stamps (default {DEFAULT_STAMPS})")
    parser.add_argument("--wrong", default=0.25, type=float, help="share of images given another category's tag")
    parser.add_argument("--seed", default=0, type=int, help="draws the wrong tags, the order and the vectors")
    parser.add_argument("--min-images", default=8, type=int, help="smallest category kept as a tag")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if not 0.0 <= args.wrong < 1.0:
        print(f"--wrong must be in [0, 1), got {args.wrong}", file=sys.stderr)
        return 2
    if not args.stamps.is_dir() or not any(args.stamps.rglob("*.png")):
        print(
            f"no Tux Paint stamps under {args.stamps}; install them with:\n"
            f"  apt-get install {PACKAGE}\n(or pass --stamps DIR)",
            file=sys.stderr,
        )
        return 1
    summary = build(args.out, args.stamps, args.wrong, args.seed, args.min_images)
    if summary["tags"] < 2:
        print(f"only {summary['tags']} category with {args.min_images}+ images: nothing to mislabel", file=sys.stderr)
        return 1
    for note in summary["notes"]:
        print(note)
    print(f"{'tag':<20} {'shows':>6} {'tagged':>6} {'wrong':>6}")
    for tag, counts in summary["per_tag"].items():
        print(f"{tag:<20} {counts['shows']:>6} {counts['tagged']:>6} {counts['wrong']:>6}")
    print(
        f"{summary['images']} images, {summary['tags']} tags, {summary['wrong']} wrongly tagged "
        f"({summary['wrong'] / max(1, summary['images']):.1%}); skipped {summary['skipped_svg_only']} SVG-only stamps, "
        f"{summary['skipped_mirror_variants']} mirrored copies, {summary['dropped_small_categories']} images "
        f"in dropped categories; {summary['no_description']} without a description; "
        f"{summary['vocabulary']} words in {args.out / VECTORS_NAME}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
