from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model import schema
from model.text_vectors import load_keyed_vectors, sniff_word2vec, tag_vector, tag_words, vector_dim
from tests.conftest import make_keyed_vectors

WORDS = ["cat", "dog", "red", "car", "new_york", "Paris", "t-shirt", "café"]


@pytest.fixture(scope="module")
def kv():
    return make_keyed_vectors(WORDS, dim=8, seed=3)


def test_single_known_word_is_ok(kv):
    tv = tag_vector(kv, "cat")
    assert tv.status == schema.TEXT_OK and tv.known_words == 1
    assert tv.vector.dtype == np.float32
    np.testing.assert_array_equal(tv.vector, kv["cat"])


def test_all_words_known_is_ok_and_averages(kv):
    tv = tag_vector(kv, "red car")
    assert tv.status == schema.TEXT_OK and tv.known_words == 2
    np.testing.assert_allclose(tv.vector, (kv["red"] + kv["car"]) / 2, rtol=1e-6)


def test_some_words_known_is_partial_and_averages_only_those(kv):
    tv = tag_vector(kv, "red zeppelin-car")
    assert tv.status == schema.TEXT_PARTIAL and tv.known_words == 2
    np.testing.assert_allclose(tv.vector, (kv["red"] + kv["car"]) / 2, rtol=1e-6)


def test_no_word_known_is_oov_with_no_vector(kv):
    tv = tag_vector(kv, "zeppelin quux")
    assert tv.status == schema.TEXT_OOV and tv.known_words == 0
    assert tv.vector is None


def test_tag_without_words_is_oov(kv):
    assert tag_vector(kv, "-").status == schema.TEXT_OOV


def test_phrase_lookup_wins_over_word_average(kv):
    tv = tag_vector(kv, "new york")
    assert tv.status == schema.TEXT_OK and tv.known_words == 2
    np.testing.assert_array_equal(tv.vector, kv["new_york"])


def test_hyphenated_phrase_and_case_variant(kv):
    np.testing.assert_array_equal(tag_vector(kv, "t-shirt").vector, kv["t-shirt"])
    # tags are casefolded; the vocabulary has "Paris"
    np.testing.assert_array_equal(tag_vector(kv, "paris").vector, kv["Paris"])


def test_tag_words_split_on_whitespace_and_hyphens():
    assert tag_words("red  sports-car") == ["red", "sports", "car"]


def _check_same(loaded, kv) -> None:
    assert loaded.vector_size == kv.vector_size
    for w in WORDS:
        np.testing.assert_allclose(loaded[w], kv[w], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("binary,name", [(True, "vectors.bin"), (False, "vectors.txt"), (False, "vectors.vec")])
def test_loads_word2vec_formats(kv, tmp_path: Path, binary: bool, name: str):
    path = tmp_path / name
    kv.save_word2vec_format(str(path), binary=binary)
    layout = sniff_word2vec(str(path))
    assert layout.binary == binary and layout.has_header and layout.dim == 8
    _check_same(load_keyed_vectors(str(path)), kv)
    assert vector_dim(str(path)) == 8


def test_detects_format_by_content_not_extension(kv, tmp_path: Path):
    path = tmp_path / "really-text.bin"
    kv.save_word2vec_format(str(path), binary=False)
    _check_same(load_keyed_vectors(str(path)), kv)


def test_loads_headerless_text(kv, tmp_path: Path):
    path = tmp_path / "glove.txt"
    kv.save_word2vec_format(str(path), binary=False, write_header=False)
    assert not sniff_word2vec(str(path)).has_header
    _check_same(load_keyed_vectors(str(path)), kv)


def test_loads_gensim_kv(kv, tmp_path: Path):
    path = tmp_path / "vectors.kv"
    kv.save(str(path))
    _check_same(load_keyed_vectors(str(path)), kv)
    assert vector_dim(str(path)) == 8


def test_loads_from_an_fsspec_url_via_a_local_copy(kv, tmp_path: Path):
    import fsspec

    kv.save_word2vec_format(str(tmp_path / "vectors.bin"), binary=True)
    url = "memory://imgsearch-test/vectors.bin"
    with fsspec.open(url, "wb") as f:
        f.write((tmp_path / "vectors.bin").read_bytes())
    _check_same(load_keyed_vectors(url), kv)
    assert vector_dim(url) == 8


def test_garbage_file_is_rejected(tmp_path: Path):
    path = tmp_path / "notes.txt"
    path.write_text("hello world\nthis is not a vector file\n")
    with pytest.raises(ValueError):
        load_keyed_vectors(str(path))


def test_loads_remote_kv_with_its_sidecar_arrays(kv, tmp_path: Path):
    import fsspec

    kv.save(str(tmp_path / "vectors.kv"), sep_limit=0)  # arrays in NAME.kv.*.npy files
    sidecars = sorted(p.name for p in tmp_path.iterdir() if p.name != "vectors.kv")
    assert sidecars, "gensim should have written separate arrays"
    for p in tmp_path.iterdir():
        with fsspec.open(f"memory://imgsearch-kv/{p.name}", "wb") as f:
            f.write(p.read_bytes())
    _check_same(load_keyed_vectors("memory://imgsearch-kv/vectors.kv"), kv)
