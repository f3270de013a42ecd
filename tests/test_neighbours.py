"""Stage `neighbours` on generated feature Parquet whose neighbours and signals are known exactly."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model import neighbours, schema
from model.tags import image_id_for
from tests import builders

ENCODER = "tiny"
META = {schema.META_ENCODER: ENCODER.encode(), schema.META_WEIGHTS: b"random", schema.META_DIM: b"3"}


def image_id(name: str) -> str:
    return image_id_for(f"/images/{name}.jpg")


def unit_angle(degrees: float, scale: float = 1.0) -> list[float]:
    r = math.radians(degrees)
    return [scale * math.cos(r), scale * math.sin(r), 0.0]


# name -> (raw feature, content hash). Angles in one plane, so cosines are cos(angle difference);
# the scales differ so the raw mean differs from the mean of unit vectors. b is a crawled copy
# of a (same content hash). "orphan" has features but no index row.
VECTORS = {
    "a": (unit_angle(0, 2.0), "h-a"),
    "b": (unit_angle(10, 1.0), "h-a"),
    "c": (unit_angle(25, 0.5), "h-c"),
    "d": (unit_angle(60, 3.0), "h-d"),
    "e": (unit_angle(100, 1.0), "h-e"),
    "f": (unit_angle(180, 1.5), "h-f"),
    "orphan": (unit_angle(5, 1.0), "h-o"),
}
# index rows (name, tag): c carries two tags; g has no features; bird has one image
ROWS = [("a", "cat"), ("b", "cat"), ("c", "cat"), ("c", "dog"), ("d", "dog"), ("e", "dog"), ("f", "bird"), ("g", "cat")]


def write_images(out: Path, rows) -> None:
    builders.write_images(out, builders.image_rows(((f"/images/{name}.jpg", tag) for name, tag in rows), schema.SPLIT_TRAIN))


def write_features(out: Path, vectors: dict, shards: int = 1, row_group: int = 2) -> None:
    """name -> (raw feature, content hash), dealt round-robin over `shards` files."""
    names = list(vectors)
    for s in range(shards):
        part = names[s::shards]
        # small row groups by default: the stream crosses row groups and files
        builders.write_image_features(
            out,
            {image_id(n): vectors[n][0] for n in part},
            encoder=ENCODER,
            content_hashes={image_id(n): vectors[n][1] for n in part},
            row_group_size=row_group,
            width=10,
            height=10,
            index=s,
            count=shards,
        )


def read_dir(out: Path, directory: str) -> pa.Table:
    files = sorted((out / directory).glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


@pytest.fixture()
def small(tmp_path):
    write_images(tmp_path, ROWS)
    write_features(tmp_path, VECTORS, shards=2)
    # not a finished shard of extract-images: never read (its schema would not even fit)
    pq.write_table(pa.table({"x": [1]}), tmp_path / schema.IMAGE_FEATURES_DIR / "notes.parquet")
    return tmp_path


def oracle(k: int) -> tuple[dict, dict]:
    """Brute force over VECTORS (index images only): neighbours and signals as the brief states them."""
    names = [n for n in VECTORS if any(n == r[0] for r in ROWS)]
    x = np.array([VECTORS[n][0] for n in names])
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = u @ u.T
    tags_of = {n: {t for m, t in ROWS if m == n} for n in names}
    lists = {}
    for i, n in enumerate(names):
        order = [j for j in np.argsort(-cos[i], kind="stable") if j != i][:k]
        lists[n] = [(names[j], cos[i, j]) for j in order]
    signals = {}
    for n in names:
        for t in sorted(tags_of[n]):
            kept = [(m, s) for m, s in lists[n] if VECTORS[m][1] != VECTORS[n][1]]
            plain = sum(t in tags_of[m] for m, _ in kept) / len(kept) if kept else None
            wsum = sum(max(s, 0) for _, s in kept)
            weighted = sum(max(s, 0) * (t in tags_of[m]) for m, s in kept) / wsum if wsum > 0 else None
            others = [np.array(VECTORS[m][0]) for m in names if m != n and t in tags_of[m]]
            if others:
                mean = np.mean(others, axis=0)
                xi = np.array(VECTORS[n][0])
                mf = float(xi @ mean / np.linalg.norm(xi) / np.linalg.norm(mean))
            else:
                mf = None
            signals[(n, t)] = (plain, weighted, mf)
    return lists, signals


def approx_or_none(value):
    return None if value is None else pytest.approx(value, abs=1e-5)


def test_exact_neighbours_and_signals_match_brute_force(small):
    report = neighbours.run(["--out", str(small), "--k", "3"])
    lists, signals = oracle(3)

    table = read_dir(small, schema.NEIGHBOURS_DIR)
    by_name = {image_id(n): n for n in VECTORS}
    got = {by_name[r[schema.IMAGE_ID]]: r for r in table.to_pylist()}
    assert set(got) == set(lists)  # g (no features) and orphan (not indexed) have no list
    for n, expected in lists.items():
        row = got[n]
        assert [by_name[i] for i in row[schema.NEIGHBOUR_IDS]] == [m for m, _ in expected]
        assert row[schema.SIMILARITIES] == [pytest.approx(s, abs=1e-6) for _, s in expected]
        assert image_id(n) not in row[schema.NEIGHBOUR_IDS]  # self excluded
        assert row[schema.SIMILARITIES] == sorted(row[schema.SIMILARITIES], reverse=True)
    # spelled out for one image: a's nearest are b (10 deg), c (25), d (60)
    assert [by_name[i] for i in got["a"][schema.NEIGHBOUR_IDS]] == ["b", "c", "d"]
    assert table.column(schema.IMAGE_ID).to_pylist() == sorted(table.column(schema.IMAGE_ID).to_pylist())

    sig = read_dir(small, schema.SIGNALS_DIR)
    rows = {(by_name[r[schema.IMAGE_ID]], r[schema.TAG]): r for r in sig.to_pylist()}
    assert set(rows) == set(signals)  # (g, cat) has no features: no row
    for key, (plain, weighted, mf) in signals.items():
        assert rows[key][schema.AGREEMENT] == approx_or_none(plain), key
        assert rows[key][schema.AGREEMENT_WEIGHTED] == approx_or_none(weighted), key
        assert rows[key][schema.MEAN_FEATURE] == approx_or_none(mf), key

    # a's neighbours b, c, d: b is a's copy and counts neither way, c is cat, d is not
    assert rows[("a", "cat")][schema.AGREEMENT] == pytest.approx(1 / 2)
    # c carries both of its tags; its neighbours b, a (cat; a copy of each other, not of c), d (dog)
    assert rows[("c", "cat")][schema.AGREEMENT] == pytest.approx(2 / 3)
    assert rows[("c", "dog")][schema.AGREEMENT] == pytest.approx(1 / 3)
    # leave-one-out on raw features: a against (b + c) / 2, not against the tag's whole mean
    xb, xc, xa = (np.array(VECTORS[n][0]) for n in "bca")
    mean = (xb + xc) / 2
    assert rows[("a", "cat")][schema.MEAN_FEATURE] == pytest.approx(float(xa @ mean / np.linalg.norm(xa) / np.linalg.norm(mean)), abs=1e-6)
    assert rows[("f", "bird")][schema.MEAN_FEATURE] is None  # the tag's only image

    meta = json.loads(pq.read_schema(next((small / schema.NEIGHBOURS_DIR).glob("*.parquet"))).metadata[schema.META_NEIGHBOURS])
    assert meta["k"] == 3 and meta["method"] == "exact" and meta["images"] == 6 and meta["encoder"] == "tiny"
    assert meta["search_dim"] == 3  # features shorter than --search-dim: no projection

    assert (report.rows_in, report.rows_out, report.rows_skipped) == (7, 6, 1)
    assert report.rows_in == report.rows_out + report.rows_skipped
    assert report.details[neighbours.SKIPPED_NO_FEATURES] == 1
    assert report.details["signals"] == len(signals) and report.details["features_not_in_index"] == 1
    saved = json.loads((small / schema.REPORTS_DIR / "neighbours.json").read_text())
    assert saved["rows_out"] == 6 and saved["details"]["k"] == 3


def test_copies_only_give_null_agreement(tmp_path):
    # x and y are copies of one file: each other's only neighbour counts neither way
    write_images(tmp_path, [("x", "cat"), ("y", "cat")])
    write_features(tmp_path, {"x": (unit_angle(0), "same"), "y": (unit_angle(1), "same")})
    neighbours.run(["--out", str(tmp_path), "--k", "1"])
    sig = read_dir(tmp_path, schema.SIGNALS_DIR).to_pylist()
    assert [r[schema.AGREEMENT] for r in sig] == [None, None]
    assert [r[schema.AGREEMENT_WEIGHTED] for r in sig] == [None, None]
    assert all(r[schema.MEAN_FEATURE] == pytest.approx(math.cos(math.radians(1)), abs=1e-6) for r in sig)


def test_tiny_collection_lowers_k_with_a_warning(tmp_path, caplog):
    write_images(tmp_path, [("x", "cat"), ("y", "cat"), ("z", "dog")])
    write_features(tmp_path, {n: (unit_angle(i * 30), n) for i, n in enumerate("xyz")})
    with caplog.at_level(logging.WARNING, logger="model.neighbours"):
        report = neighbours.run(["--out", str(tmp_path)])
    assert "using k = 2" in caplog.text
    assert report.details["k"] == 2
    lists = read_dir(tmp_path, schema.NEIGHBOURS_DIR).column(schema.NEIGHBOUR_IDS).to_pylist()
    assert [len(x) for x in lists] == [2, 2, 2]


def test_refuses_missing_features_and_a_single_image(tmp_path):
    write_images(tmp_path, [("x", "cat"), ("y", "cat")])
    with pytest.raises(FileNotFoundError, match="image features"):
        neighbours.run(["--out", str(tmp_path)])
    write_features(tmp_path, {"x": (unit_angle(0), "hx")})
    with pytest.raises(ValueError, match="at least 2"):
        neighbours.run(["--out", str(tmp_path)])


def test_projection_keeps_cosines_of_features_in_a_low_dim_subspace(tmp_path):
    # 8-d features spanning a 3-d subspace: the top-3 directions hold them exactly
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.normal(size=(8, 3)))[0]
    coords = rng.normal(size=(40, 3))
    x = coords @ basis.T
    names = [f"p{i}" for i in range(40)]
    write_images(tmp_path, [(n, "t") for n in names])
    write_features(tmp_path, {n: (x[i], n) for i, n in enumerate(names)})
    neighbours.run(["--out", str(tmp_path), "--k", "4", "--search-dim", "3", "--method", "exact"])
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = u @ u.T
    np.fill_diagonal(cos, -np.inf)
    got = {r[schema.IMAGE_ID]: r for r in read_dir(tmp_path, schema.NEIGHBOURS_DIR).to_pylist()}
    for i, n in enumerate(names):
        expected = np.argsort(-cos[i], kind="stable")[:4]
        assert got[image_id(n)][schema.SIMILARITIES] == [pytest.approx(cos[i, j], abs=1e-5) for j in expected]
    meta = json.loads(pq.read_schema(next((tmp_path / schema.NEIGHBOURS_DIR).glob("*.parquet"))).metadata[schema.META_NEIGHBOURS])
    assert meta["search_dim"] == 3 and meta["feature_dim"] == 8


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return centres[np.arange(n) % clusters] + 0.3 * rng.normal(size=(n, dim))


def test_ivf_agrees_with_exact_on_clustered_data(tmp_path):
    x = clustered(2000, 32, 20, seed=2)
    names = [f"q{i}" for i in range(len(x))]
    results = {}
    for method in ("exact", "ivf"):
        out = tmp_path / method
        write_images(out, [(n, f"tag{i % 20}") for i, n in enumerate(names)])
        write_features(out, {n: (x[i], n) for i, n in enumerate(names)}, shards=3, row_group=500)
        report = neighbours.run(["--out", str(out), "--k", "10", "--search-dim", "16", "--method", method, "--read-rows", "300"])
        assert report.details["method"] == method
        results[method] = {r[schema.IMAGE_ID]: r[schema.NEIGHBOUR_IDS] for r in read_dir(out, schema.NEIGHBOURS_DIR).to_pylist()}
    assert report.details["nlist"] == neighbours.ivf_lists(2000) and report.details["nprobe"] >= 1
    hits = sum(len(set(results["exact"][i]) & set(results["ivf"][i])) for i in results["exact"])
    assert hits / (10 * len(names)) >= 0.95
    # agreement on tags that follow the clusters is (nearly) perfect either way
    sig = read_dir(tmp_path / "ivf", schema.SIGNALS_DIR).column(schema.AGREEMENT).to_numpy()
    assert np.nanmean(sig) > 0.95


def test_rerun_replaces_shards_and_is_deterministic(small, monkeypatch):
    monkeypatch.setattr(neighbours, "ROWS_PER_SHARD", 2)
    neighbours.run(["--out", str(small), "--k", "2"])
    first = read_dir(small, schema.NEIGHBOURS_DIR)
    assert sorted(p.name for p in (small / schema.NEIGHBOURS_DIR).iterdir()) == [
        f"neighbours-{i:05d}-of-00003.parquet" for i in range(3)
    ]
    monkeypatch.setattr(neighbours, "ROWS_PER_SHARD", 250_000)
    neighbours.run(["--out", str(small), "--k", "2"])
    for directory, prefix in ((schema.NEIGHBOURS_DIR, "neighbours"), (schema.SIGNALS_DIR, "signals")):
        assert [p.name for p in (small / directory).iterdir()] == [f"{prefix}-00000-of-00001.parquet"]
    assert read_dir(small, schema.NEIGHBOURS_DIR).equals(first)


def test_cli_runs_the_stage(small, capsys):
    from pipelines import cli

    assert cli.STAGES["neighbours"][0] == "model.neighbours"
    assert cli.main(["neighbours", "--out", str(small), "--k", "2"]) == 0
    assert capsys.readouterr().out.startswith("neighbours: in 7, out 6")


def test_an_image_listed_twice_in_the_features_counts_once_first_row_wins(tmp_path):
    write_images(tmp_path, [("x", "cat"), ("y", "cat"), ("z", "dog")])
    write_features(tmp_path, {"x": (unit_angle(0), "hx"), "y": (unit_angle(10), "hy"), "z": (unit_angle(90), "hz")})
    # a later shard repeats x with another vector (next to y's opposite): the first row is the one used
    later = builders.image_feature_rows({image_id("x"): unit_angle(190)}, content_hashes={image_id("x"): "hx2"}, width=1, height=1)
    builders.write_table(
        tmp_path, schema.IMAGE_FEATURES_DIR, f"{schema.IMAGE_FEATURES_PREFIX}-zz", later, schema.image_features_schema(3, META)
    )
    stale_temp = tmp_path / schema.NEIGHBOURS_DIR / "neighbours-00000-of-00001.parquet.tmp-dead"
    stale_temp.parent.mkdir(parents=True)
    stale_temp.write_bytes(b"left by an interrupted run")
    report = neighbours.run(["--out", str(tmp_path), "--k", "1"])
    assert (report.rows_in, report.rows_out) == (3, 3)
    got = {r[schema.IMAGE_ID]: r for r in read_dir(tmp_path, schema.NEIGHBOURS_DIR).to_pylist()}
    assert got[image_id("y")][schema.NEIGHBOUR_IDS] == [image_id("x")]
    assert got[image_id("y")][schema.SIMILARITIES] == [pytest.approx(math.cos(math.radians(10)), abs=1e-6)]
    assert not stale_temp.exists()
