"""extract-text on damaged word vectors: refused with the line named, and the previous good
features stay in place."""

from __future__ import annotations

from pathlib import Path

import pytest

from model import schema, text_vectors
from pipelines import cli, extract_text
from tests import builders
from tests.conftest import make_keyed_vectors

pytestmark = pytest.mark.faults

DIM = 8
WORDS = ["cat", "dog", "red", "car", "tree", "apple"] + [f"filler{i}" for i in range(200)]
TAGS = ["cat", "dog", "red car", "tree"]


@pytest.fixture
def out_with_features(tmp_path: Path) -> tuple[Path, list[tuple[str, bytes]]]:
    """OUT with an images table and good text features from word2vec text; the features' bytes."""
    out = tmp_path / "out"
    builders.write_images(out, builders.image_rows((f"https://example.com/{i}.jpg", tag) for i, tag in enumerate(TAGS)))
    good = tmp_path / "good.txt"
    make_keyed_vectors(WORDS, dim=DIM, seed=2).save_word2vec_format(str(good), binary=False)
    extract_text.run(["--out", str(out), "--word-vectors", str(good)], save_main_session=False)
    return out, _snapshot(out)


def _snapshot(out: Path) -> list[tuple[str, bytes]]:
    files = sorted((out / schema.TEXT_FEATURES_DIR).glob("text-*.parquet"))
    assert files
    return [(f.name, f.read_bytes()) for f in files]


def _kv(tmp_path: Path, binary: bool) -> Path:
    path = tmp_path / ("vectors.bin" if binary else "vectors.txt")
    make_keyed_vectors(WORDS, dim=DIM, seed=5).save_word2vec_format(str(path), binary=binary)
    return path


def test_a_number_dropped_from_the_first_vector_line_is_refused_naming_the_line(out_with_features, tmp_path: Path):
    out, before = out_with_features
    path = _kv(tmp_path, binary=False)
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].rsplit(b" ", 1)[0]  # one number fewer: must not pass for a binary file
    path.write_bytes(b"\n".join(lines))

    with pytest.raises(text_vectors.WordVectorsError, match=r"line 2 has 7 numbers .* says 8"):
        extract_text.run(["--out", str(out), "--word-vectors", str(path)], save_main_session=False)
    assert _snapshot(out) == before


def test_a_damaged_line_deep_in_the_file_is_refused_naming_the_line(tmp_path: Path):
    path = _kv(tmp_path, binary=False)
    lines = path.read_bytes().split(b"\n")
    lines[100] = lines[100] + b" 0.5"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(text_vectors.WordVectorsError, match=r"line 101 has 9 numbers after its word, expected 8"):
        text_vectors.load_keyed_vectors(str(path))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "text"])
def test_truncated_word_vectors_fail_and_keep_the_previous_features(out_with_features, tmp_path: Path, binary: bool):
    out, before = out_with_features
    path = _kv(tmp_path, binary=binary)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])  # a copy that stopped part way

    with pytest.raises(Exception, match="truncated|damaged|ends"):
        extract_text.run(["--out", str(out), "--word-vectors", str(path)], save_main_session=False)
    assert _snapshot(out) == before
    # a run that failed in its workers leaves nothing beside them (no beam-temp-text-* folder)
    assert sorted(p.name for p in (out / schema.TEXT_FEATURES_DIR).iterdir()) == [name for name, _ in before]


def test_vectors_that_know_no_tag_exit_non_zero_and_keep_the_previous_features(out_with_features, tmp_path: Path, capsys):
    out, before = out_with_features
    path = tmp_path / "unrelated.txt"
    make_keyed_vectors(["zeppelin", "quux"], dim=DIM).save_word2vec_format(str(path), binary=False)

    rc = cli.main(["extract-text", "--out", str(out), "--word-vectors", str(path)])

    assert rc == cli.EXIT_REFUSED
    assert "every tag is oov" in capsys.readouterr().err
    assert _snapshot(out) == before
    # nothing of the refused run is left beside them: no beam-temp-* or staging folder
    assert sorted(p.name for p in (out / schema.TEXT_FEATURES_DIR).iterdir()) == [name for name, _ in before]
