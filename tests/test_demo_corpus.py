"""The demo corpus generator: determinism, counts, mislabels (mostly from look-alike classes),
copies, small and all-wrong tags, formats, broken files, word vectors."""

from __future__ import annotations

import collections
import inspect
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from gensim.models import KeyedVectors
import numpy as np
from PIL import Image

from model import preprocess, schema, tags
from pipelines import index
from pipelines.demo import command as demo_command
from pipelines.demo import corpus as demo_corpus
from pipelines.demo import objects

N = 120  # small: the default (2400) is checked through the signature, not by generating it


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> demo_corpus.DemoCorpus:
    return demo_corpus.generate_demo_corpus(tmp_path_factory.mktemp("demo") / "corpus", n_images=N, seed=0)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def is_wrong(row: dict) -> bool:
    return row[schema.TAG] != row[schema.TRUE_TAG]


def plan(n_images: int, wrong_share: float = demo_corpus.DEFAULT_WRONG_SHARE, seed: int = 0) -> list:
    """The corpus's plan alone (no pictures drawn): fast enough for statistics at full size."""
    return demo_corpus.plan_pictures(n_images, wrong_share, random.Random(f"corpus:{seed}"))


def pixels(path: Path, size: tuple[int, int] = (48, 48)) -> np.ndarray:
    with Image.open(path) as img:
        img.load()
        return np.asarray(preprocess.to_rgb(img).resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def test_default_size_and_tag_set() -> None:
    default = inspect.signature(demo_corpus.generate_demo_corpus).parameters["n_images"].default
    assert default == demo_corpus.DEFAULT_IMAGES >= 2000
    assert len(demo_corpus.TAGS) >= 20
    assert len(set(demo_corpus.TAGS)) == len(demo_corpus.TAGS)
    assert set(demo_corpus.TAGS) == set(objects.CLASSES) | {objects.ALL_WRONG_TAG}
    assert objects.ALL_WRONG_TAG not in objects.CLASSES and objects.ALL_WRONG_LOOKS_LIKE in objects.CLASSES
    for tag in demo_corpus.TAGS:
        assert tags.normalize_tag(tag) == tag and tags.tag_problem(tag) is None
        assert all(word.isalpha() for word in tag.split(" "))
    multi = [t for t in demo_corpus.TAGS if " " in t]
    assert sorted(multi) == sorted(demo_corpus.MULTI_WORD_TAGS) and len(multi) == 2
    assert all(len(t.split(" ")) == 2 for t in multi)
    assert demo_corpus.OOV_TAG in demo_corpus.TAGS and " " not in demo_corpus.OOV_TAG
    assert inspect.signature(demo_corpus.generate_demo_corpus).parameters["wrong_share"].default == 0.25


def test_lookalike_pairs_are_disjoint_classes_with_a_usual_sized_tag() -> None:
    pairs = objects.LOOKALIKE_PAIRS
    assert len(pairs) >= 5
    members = [c for pair in pairs for c in pair]
    assert len(members) == len(set(members))  # each class in one pair at most
    assert set(members) <= set(objects.CLASSES) - set(demo_corpus.SMALL_TAGS)
    assert all(objects.LOOKALIKE[a] == b and objects.LOOKALIKE[b] == a for a, b in pairs)
    # the pairs were drawn to look alike: the new look-alike classes reuse their partner's parts
    assert {"peach", "banana", "taxi"} <= set(members)

def test_counts_and_files(corpus: demo_corpus.DemoCorpus) -> None:
    for path in (corpus.manifest, corpus.ground_truth, corpus.captions, corpus.word_vectors):
        assert path.is_file() and path.stat().st_size > 0
    assert corpus.n_images == N and corpus.tags == demo_corpus.TAGS  # N is large enough for every special tag
    rows = read_jsonl(corpus.manifest)
    assert len(rows) == corpus.n_rows == N + corpus.n_duplicates + corpus.n_broken
    assert corpus.n_broken == 3 and corpus.n_duplicates >= 3
    # relative to the manifest, so ids and the split do not depend on where the corpus lives
    assert all(set(r) == {schema.URI, schema.TAG} and not Path(r[schema.URI]).is_absolute() for r in rows)
    assert all((corpus.manifest.parent / r[schema.URI]).is_file() for r in rows)
    lines = corpus.manifest.read_text().splitlines()
    assert len(lines) - len(set(lines)) == corpus.n_duplicates  # exact duplicate rows
    # raw variation that normalisation has to undo
    assert any(tags.normalize_tag(r[schema.TAG]) != r[schema.TAG] for r in rows)
    assert {tags.normalize_tag(r[schema.TAG]) for r in rows} <= set(demo_corpus.TAGS)
    assert "manifest rows" in corpus.summary_line()


def test_ground_truth_and_mislabels(corpus: demo_corpus.DemoCorpus) -> None:
    truth = read_jsonl(corpus.ground_truth)
    assert len(truth) == N and len({t[schema.URI] for t in truth}) == N
    fields = {schema.URI, schema.TAG, schema.TRUE_TAG, demo_corpus.COPY_OF, demo_corpus.COPY_KIND}
    assert all(set(t) == fields for t in truth)
    manifest_pairs = {(r[schema.URI], tags.normalize_tag(r[schema.TAG])) for r in read_jsonl(corpus.manifest)}
    assert all((t[schema.URI], t[schema.TAG]) in manifest_pairs for t in truth)
    wrong = [t for t in truth if is_wrong(t)]
    assert len(wrong) == corpus.n_mislabelled
    # the wrong share is exact over the originals
    originals = [t for t in truth if t[demo_corpus.COPY_OF] is None]
    assert sum(map(is_wrong, originals)) == round(len(originals) * demo_corpus.DEFAULT_WRONG_SHARE)
    # every class is drawn, the all-wrong tag never; the wrong tags spread over many tags
    assert {t[schema.TRUE_TAG] for t in truth} == set(objects.CLASSES)
    assert {t[schema.TAG] for t in truth} == set(demo_corpus.TAGS)
    assert len({t[schema.TAG] for t in wrong}) > 8


def test_wrong_tags_come_mostly_from_the_lookalike_class() -> None:
    pictures = plan(demo_corpus.DEFAULT_IMAGES)
    wrong = [p for p in pictures if p.tag != p.true_tag and p.tag in objects.CLASSES]
    paired = [p for p in wrong if p.true_tag in objects.LOOKALIKE]
    to_lookalike = sum(p.tag == objects.LOOKALIKE[p.true_tag] for p in paired)
    assert len(paired) > 200
    assert 0.62 <= to_lookalike / len(paired) <= 0.8  # WRONG_FROM_LOOKALIKE (0.7), the rest uniform
    for a, b in objects.LOOKALIKE_PAIRS:  # per class: the look-alike is by far its commonest wrong tag
        counts = collections.Counter(p.tag for p in paired if p.true_tag == a)
        (top, n_top), (_, n_next) = counts.most_common(2)
        assert top == b and n_top >= 3 * n_next, (a, counts)
    # a class without a look-alike gets its wrong tags uniformly, over many tags
    unpaired = [p for p in wrong if p.true_tag not in objects.LOOKALIKE]
    assert len({p.tag for p in unpaired}) > 15


def test_mislabels_in_the_small_written_corpus_favour_the_lookalike(corpus: demo_corpus.DemoCorpus) -> None:
    wrong = [t for t in read_jsonl(corpus.ground_truth) if is_wrong(t) and t[schema.TRUE_TAG] in objects.LOOKALIKE]
    wrong = [t for t in wrong if t[schema.TAG] != objects.ALL_WRONG_TAG]
    assert sum(t[schema.TAG] == objects.LOOKALIKE[t[schema.TRUE_TAG]] for t in wrong) > len(wrong) / 2


@pytest.mark.parametrize("share", [0.0, 0.1, 0.25, 0.4])
def test_wrong_share_is_respected(share: float) -> None:
    pictures = plan(demo_corpus.DEFAULT_IMAGES, share)
    originals = [p for p in pictures if p.source < 0]
    assert sum(p.tag != p.true_tag for p in originals) == round(len(originals) * share)
    overall = sum(p.tag != p.true_tag for p in pictures) / len(pictures)
    assert abs(overall - share) <= 0.02, overall
    # the all-wrong tag is part of the wrong share: a corpus without wrong tags has none
    assert any(p.tag == objects.ALL_WRONG_TAG for p in pictures) == (share > 0)


def test_wrong_share_reaches_the_written_corpus(tmp_path: Path) -> None:
    small = demo_corpus.generate_demo_corpus(tmp_path / "c", n_images=80, seed=3, n_captions=500, wrong_share=0.4)
    truth = read_jsonl(small.ground_truth)
    originals = [t for t in truth if t[demo_corpus.COPY_OF] is None]
    assert sum(map(is_wrong, originals)) == round(len(originals) * 0.4)
    assert small.wrong_share == 0.4 and abs(small.n_mislabelled / len(truth) - 0.4) < 0.06
    with pytest.raises(ValueError):
        plan(100, 1.0)


def test_tag_sizes_small_all_wrong_and_usual() -> None:
    pictures = plan(demo_corpus.DEFAULT_IMAGES)
    sizes = collections.Counter(p.tag for p in pictures)
    for tag, size in demo_corpus.SMALL_TAGS.items():
        assert 3 <= sizes[tag] == size <= 10
    assert len(demo_corpus.SMALL_TAGS) >= 3 and min(demo_corpus.SMALL_TAGS.values()) == 3
    # the all-wrong tag: its pictures all show other classes, mostly its look-alike
    under = [p for p in pictures if p.tag == objects.ALL_WRONG_TAG]
    assert len(under) >= 20 and all(p.true_tag != objects.ALL_WRONG_TAG for p in under)
    assert sum(p.true_tag == objects.ALL_WRONG_LOOKS_LIKE for p in under) > len(under) / 2
    # the other tags have about a hundred pictures each
    usual = [n for t, n in sizes.items() if t not in demo_corpus.SMALL_TAGS and t != objects.ALL_WRONG_TAG]
    assert len(usual) == len(objects.CLASSES) - len(demo_corpus.SMALL_TAGS) and 60 <= min(usual) <= max(usual) <= 140


def test_small_and_all_wrong_tags_in_the_written_corpus(corpus: demo_corpus.DemoCorpus) -> None:
    truth = read_jsonl(corpus.ground_truth)
    sizes = collections.Counter(t[schema.TAG] for t in truth)
    assert dict(corpus.small_tags) == demo_corpus.SMALL_TAGS == {t: sizes[t] for t in demo_corpus.SMALL_TAGS}
    under = [t for t in truth if t[schema.TAG] == corpus.all_wrong_tag == objects.ALL_WRONG_TAG]
    assert len(under) == corpus.n_all_wrong >= 3 and all(map(is_wrong, under))


def test_a_tiny_corpus_drops_what_does_not_fit() -> None:
    tiny = plan(10)
    assert len(tiny) == 10 and all(p.source < 0 for p in tiny)  # no copies under 20 pictures
    assert {p.tag for p in tiny} <= set(objects.CLASSES) - set(demo_corpus.SMALL_TAGS)
    few = plan(40)
    sizes = collections.Counter(p.tag for p in few)
    assert len(few) == 40 and sum(p.source >= 0 for p in few) == round(40 * demo_corpus.COPY_SHARE)
    assert all(sizes[t] in (0, n) for t, n in demo_corpus.SMALL_TAGS.items())  # whole or absent


def test_copies_are_exact_or_near_copies_of_an_original(corpus: demo_corpus.DemoCorpus) -> None:
    truth = read_jsonl(corpus.ground_truth)
    by_uri = {t[schema.URI]: t for t in truth}
    copies = [t for t in truth if t[demo_corpus.COPY_OF] is not None]
    assert len(copies) == corpus.n_copies == round(N * demo_corpus.COPY_SHARE) > 0
    assert corpus.n_exact_copies == sum(t[demo_corpus.COPY_KIND] == demo_corpus.EXACT for t in copies) > 0
    assert any(t[demo_corpus.COPY_KIND] != demo_corpus.EXACT for t in copies)
    root = corpus.manifest.parent
    for copy in copies:
        original = by_uri[copy[demo_corpus.COPY_OF]]
        assert original[demo_corpus.COPY_OF] is None and original[demo_corpus.COPY_KIND] is None  # no chains
        assert copy[schema.URI] != original[schema.URI] and copy[schema.TRUE_TAG] == original[schema.TRUE_TAG]
        assert copy[demo_corpus.COPY_KIND] in demo_corpus.COPY_KINDS
        a, b = (root / copy[schema.URI]).read_bytes(), (root / original[schema.URI]).read_bytes()
        assert (a == b) == (copy[demo_corpus.COPY_KIND] == demo_corpus.EXACT)
        diff = np.abs(pixels(root / copy[schema.URI]) - pixels(root / original[schema.URI])).mean()
        assert diff < 12, (copy, diff)
    # a near copy is still far closer to its original than pictures of the same class are
    some = [t for t in truth if t[demo_corpus.COPY_OF] is None][:2]
    assert np.abs(pixels(root / some[0][schema.URI]) - pixels(root / some[1][schema.URI])).mean() > 20


def test_copies_sometimes_repeat_the_wrong_tag() -> None:
    pictures = plan(demo_corpus.DEFAULT_IMAGES)
    copies = [p for p in pictures if p.source >= 0]
    same_wrong = [p for p in copies if p.tag == pictures[p.source].tag != p.true_tag]
    assert 5 <= len(same_wrong) < len(copies)
    assert any(p.tag == p.true_tag != pictures[p.source].tag for p in copies) or len(copies) < 50
    assert len({p.source for p in copies}) < len(copies)  # some originals have several copies
    assert collections.Counter(p.kind for p in copies).keys() == set(demo_corpus.COPY_KINDS)
    # the smallest corpus with copies still has one repeating its original's wrong tag
    small = plan(N)
    assert any(p.source >= 0 and p.tag == small[p.source].tag != p.true_tag for p in small)


@pytest.mark.parametrize("kind", [demo_corpus.REENCODED, demo_corpus.RESIZED, demo_corpus.CROPPED])
@pytest.mark.parametrize("as_png", [False, True])
def test_near_copy_kinds(kind: str, as_png: bool) -> None:
    rng = random.Random(f"{kind}{as_png}")
    drawn = demo_corpus.draw_picture("car", rng, (200, 160), transparent=as_png)
    data, suffix = demo_corpus._encode(drawn, rng, as_png)
    copy, copy_suffix, made = demo_corpus._near_copy(data, suffix, kind, rng)
    assert made == kind and copy != data
    with Image.open(io.BytesIO(data)) as a, Image.open(io.BytesIO(copy)) as b:
        (w, h), (cw, ch) = a.size, b.size
        if kind == demo_corpus.REENCODED:
            assert (cw, ch) == (w, h) and b.format == "JPEG" and copy_suffix == ".jpg"
            if not as_png:
                assert abs(demo_corpus._jpeg_quality(copy) - demo_corpus._jpeg_quality(data)) >= 9
        elif kind == demo_corpus.RESIZED:
            assert abs(cw / w - ch / h) < 0.03 and abs(cw / w - 1) >= 0.08 and copy_suffix == suffix
        else:
            assert 0 <= w - cw <= 16 and 0 <= h - ch <= 16 and (cw, ch) != (w, h) and copy_suffix == suffix
        assert all(demo_corpus.MIN_SIDE <= side <= demo_corpus.MAX_SIDE for side in (cw, ch))


def test_image_formats_and_sizes(corpus: demo_corpus.DemoCorpus) -> None:
    formats, modes, sizes = set(), set(), set()
    for t in read_jsonl(corpus.ground_truth):
        with Image.open(corpus.manifest.parent / t[schema.URI]) as img:
            img.load()
            formats.add(img.format)
            modes.add((img.format, img.mode, "transparency" in img.info))
            sizes.add(img.size)
            assert all(demo_corpus.MIN_SIDE <= side <= demo_corpus.MAX_SIDE for side in img.size)
    assert formats == {"JPEG", "PNG"}
    assert ("PNG", "RGBA", False) in modes  # transparent RGBA
    assert ("PNG", "P", True) in modes  # palette with transparency
    assert len(sizes) > N // 2


def test_broken_files_are_listed_and_broken(corpus: demo_corpus.DemoCorpus) -> None:
    listed = {Path(r[schema.URI]).name for r in read_jsonl(corpus.manifest)}
    for name in demo_corpus.BROKEN_FILES:
        assert name in listed
        path = corpus.images_dir / name
        assert path.exists()
        with pytest.raises(Exception):
            with Image.open(path) as img:
                img.load()
    assert (corpus.images_dir / demo_corpus.BROKEN_EMPTY).stat().st_size == 0


def test_word_vectors_cover_every_tag_word_but_the_oov_one(corpus: demo_corpus.DemoCorpus) -> None:
    kv = KeyedVectors.load_word2vec_format(str(corpus.word_vectors), binary=True)
    assert kv.vector_size == 32
    words = {w for t in demo_corpus.TAGS for w in t.split(" ")}
    assert demo_corpus.OOV_TAG not in kv.key_to_index
    assert demo_corpus.OOV_TAG not in corpus.captions.read_text().split()
    missing = sorted(w for w in words - {demo_corpus.OOV_TAG} if w not in kv.key_to_index)
    assert missing == []
    assert sum(1 for _ in corpus.captions.open()) == corpus.n_captions >= 3000


def test_deterministic(corpus: demo_corpus.DemoCorpus, tmp_path: Path) -> None:
    again = demo_corpus.generate_demo_corpus(tmp_path / "again", n_images=N, seed=0)

    def files(c: demo_corpus.DemoCorpus) -> dict[str, bytes]:
        return {str(p.relative_to(c.folder)): p.read_bytes() for p in sorted(c.folder.rglob("*")) if p.is_file()}

    # the same seed writes byte-identical files, wherever the corpus is generated
    assert files(again) == files(corpus)
    assert len(files(corpus)) == N + corpus.n_broken + 4

    other = demo_corpus.generate_demo_corpus(tmp_path / "other", n_images=N, seed=1)
    assert other.manifest.read_bytes() != corpus.manifest.read_bytes()
    noisier = demo_corpus.generate_demo_corpus(tmp_path / "noisier", n_images=N, seed=0, n_captions=500, wrong_share=0.4)
    assert noisier.ground_truth.read_bytes() != corpus.ground_truth.read_bytes()


def test_demo_command_passes_wrong_share_to_the_corpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert demo_command.get_args_parser().parse_args(["--out", "x"]).wrong_share == demo_corpus.DEFAULT_WRONG_SHARE
    seen: dict = {}

    class Stop(Exception):
        pass

    def fake(folder, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(demo_corpus, "generate_demo_corpus", fake)
    with pytest.raises(Stop):
        demo_command.run(["--out", str(tmp_path), "--images", "50", "--wrong-share", "0.4", "--no-serve"])
    assert seen["wrong_share"] == 0.4 and seen["n_images"] == 50


def test_regenerating_in_place_leaves_no_stale_pictures(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    demo_corpus.generate_demo_corpus(folder, n_images=30, seed=0, n_captions=500)
    small = demo_corpus.generate_demo_corpus(folder, n_images=10, seed=0, n_captions=500)
    assert len(list(small.images_dir.iterdir())) == 10 + small.n_broken


def test_word_vectors_are_reproducible_in_another_process(corpus: demo_corpus.DemoCorpus, tmp_path: Path) -> None:
    # another interpreter, with another hash seed, must train the very same vectors
    code = (
        "import sys; from pipelines.demo import captions; "
        "captions.train_demo_word_vectors(sys.argv[1], sys.argv[2], seed=0)"
    )
    out = tmp_path / "wv.bin"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(corpus.captions), str(out)], check=True, env=env)
    assert out.read_bytes() == corpus.word_vectors.read_bytes()


def test_index_stage_reads_the_corpus(corpus: demo_corpus.DemoCorpus, tmp_path: Path) -> None:
    report = index.run(["--input", str(corpus.manifest), "--out", str(tmp_path / "out")], save_main_session=False)
    assert report.rows_in == corpus.n_rows
    assert report.rows_skipped == corpus.n_duplicates
    assert report.rows_failed == 0  # broken files are extract-images' to catch, not the index's
    assert report.rows_out == N + corpus.n_broken
