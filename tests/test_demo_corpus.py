"""The demo corpus generator: determinism, counts, mislabels, formats, broken files, word vectors."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gensim.models import KeyedVectors
from PIL import Image

from model import schema, tags
from pipelines import index
from pipelines.demo import corpus as demo_corpus

N = 120  # small: the default (2400) is checked through the signature, not by generating it


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> demo_corpus.DemoCorpus:
    return demo_corpus.generate_demo_corpus(tmp_path_factory.mktemp("demo") / "corpus", n_images=N, seed=0)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_default_size_and_tag_set() -> None:
    default = inspect.signature(demo_corpus.generate_demo_corpus).parameters["n_images"].default
    assert default == demo_corpus.DEFAULT_IMAGES >= 2000
    assert len(demo_corpus.TAGS) >= 20
    assert len(set(demo_corpus.TAGS)) == len(demo_corpus.TAGS)
    for tag in demo_corpus.TAGS:
        assert tags.normalize_tag(tag) == tag and tags.tag_problem(tag) is None
        assert all(word.isalpha() for word in tag.split(" "))
    multi = [t for t in demo_corpus.TAGS if " " in t]
    assert sorted(multi) == sorted(demo_corpus.MULTI_WORD_TAGS) and len(multi) == 2
    assert all(len(t.split(" ")) == 2 for t in multi)
    assert demo_corpus.OOV_TAG in demo_corpus.TAGS and " " not in demo_corpus.OOV_TAG


def test_counts_and_files(corpus: demo_corpus.DemoCorpus) -> None:
    for path in (corpus.manifest, corpus.ground_truth, corpus.captions, corpus.word_vectors):
        assert path.is_file() and path.stat().st_size > 0
    assert corpus.n_images == N and corpus.tags == demo_corpus.TAGS
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
    assert all(set(t) == {schema.URI, schema.TAG, schema.TRUE_TAG} for t in truth)
    manifest_pairs = {(r[schema.URI], tags.normalize_tag(r[schema.TAG])) for r in read_jsonl(corpus.manifest)}
    assert all((t[schema.URI], t[schema.TAG]) in manifest_pairs for t in truth)
    wrong = [t for t in truth if t[schema.TAG] != t[schema.TRUE_TAG]]
    assert len(wrong) == corpus.n_mislabelled == round(N * demo_corpus.MISLABEL_FRACTION)
    # every class is drawn; the wrong tags spread over many classes, not one
    assert {t[schema.TRUE_TAG] for t in truth} == set(demo_corpus.TAGS)
    assert len({t[schema.TAG] for t in wrong}) > 8


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

    def relative(c: demo_corpus.DemoCorpus, path: Path) -> str:
        return path.read_text().replace(str(c.images_dir), "<images>")

    assert relative(again, again.manifest) == relative(corpus, corpus.manifest)
    assert relative(again, again.ground_truth) == relative(corpus, corpus.ground_truth)
    assert again.captions.read_bytes() == corpus.captions.read_bytes()
    assert again.word_vectors.read_bytes() == corpus.word_vectors.read_bytes()
    names = sorted(p.name for p in corpus.images_dir.iterdir())
    assert names == sorted(p.name for p in again.images_dir.iterdir())
    assert all((corpus.images_dir / n).read_bytes() == (again.images_dir / n).read_bytes() for n in names)

    other = demo_corpus.generate_demo_corpus(tmp_path / "other", n_images=N, seed=1)
    assert relative(other, other.manifest) != relative(corpus, corpus.manifest)


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
