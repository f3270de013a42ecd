"""export/ modules that take the site past "the tag's images, sorted": hashed shards, copies
folded, more like this, related words, the "probably" strips and the home page's data."""

from __future__ import annotations

import json
import random
import string
import time

import numpy as np
import pyarrow as pa
import pytest

from export import hashed_shards, home, probably, related_words, similar, site_data
from model import schema
from model.tags import tag_key
from tests import site_fixture


# ---------------------------------------------------------------------------
# Hashed shards
# ---------------------------------------------------------------------------
def test_fnv1a32_known_values():
    # reference values of 32-bit FNV-1a; site/js/data.js computes the same (browser test)
    assert hashed_shards.fnv1a32("") == 0x811C9DC5
    assert hashed_shards.fnv1a32("a") == 0xE40C292C
    assert hashed_shards.fnv1a32("foobar") == 0xBF9CF968
    assert hashed_shards.fnv1a32("日本") == hashed_shards.fnv1a32("日本")


def test_cut_keeps_every_shard_under_its_budget_and_every_key_findable():
    rng = random.Random(3)
    entries = {"".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 12))): [["tag", 0.5]] * rng.randint(1, 5) for _ in range(5000)}
    shards, bodies = hashed_shards.cut(entries, field="words", target_bytes=2000, budget_bytes=5000)
    assert len(bodies) == shards > 1
    assert max(len(site_data.encode_json(b)) for b in bodies) <= 5000
    for key, value in entries.items():
        assert bodies[hashed_shards.shard_of(key, shards)]["words"][key] == value


# ---------------------------------------------------------------------------
# Duplicates and more like this
# ---------------------------------------------------------------------------
def _neighbours(lists: dict[str, list[tuple[str, float]]]) -> similar.Neighbours:
    return similar.Neighbours(
        {k: [n for n, _ in v] for k, v in lists.items()}, {k: np.asarray([s for _, s in v], dtype=np.float32) for k, v in lists.items()}
    )


NB = _neighbours(
    {
        "a1": [("a2", 0.999), ("b1", 0.7), ("c1", 0.6)],
        "a2": [("a1", 0.999), ("a3", 0.99), ("b1", 0.7)],
        "a3": [("a2", 0.99), ("c1", 0.5)],
        "b1": [("b2", 0.8), ("a1", 0.7)],
        "b2": [("b1", 0.8), ("c1", 0.6)],
        "c1": [("b2", 0.6), ("a1", 0.6)],
    }
)


def test_duplicate_groups_join_same_hash_and_near_copies_transitively():
    hashes = {"a1": "h1", "a2": "h2", "a3": "h3", "b1": "hb", "b2": "hb", "c1": "hc"}
    dups = similar.duplicate_groups(NB, hashes, near_threshold=0.985)
    assert dups.members() == {"a1": ["a1", "a2", "a3"], "b1": ["b1", "b2"]}
    assert dups.facts["exact_copies"] == 1 and dups.facts["groups"] == 2 and dups.facts["images_folded"] == 3
    # a higher threshold keeps near copies apart; exact ones stay together
    assert similar.duplicate_groups(NB, hashes, near_threshold=0.9995).members() == {"b1": ["b1", "b2"]}


def test_fold_copies_keeps_the_best_ranked_copy():
    group_of = {"a1": "a1", "a2": "a1", "b1": "b1", "b2": "b1"}
    kept, copies = similar.fold_copies(["x", "a2", "b1", "a1", "y", "b2"], group_of)
    assert kept == [0, 1, 2, 4]
    assert copies == {1: [3], 2: [5]}


def test_similar_entries_leave_out_copies_and_unpublished_images():
    published = {k: (f"t{k[0]}", f"https://x/{k}.jpg") for k in ("a1", "a2", "b1", "c1")}
    group_of = {"a1": "a1", "a2": "a1"}
    entries = similar.similar_entries(NB, published, group_of, per_image=5)
    assert entries["a1"]["similar"] == [["b1", "tb", 0.7], ["c1", "tc", 0.6]]
    assert entries["a1"]["copies"] == [["a2", "https://x/a2.jpg"]]
    assert "copies" not in entries["b1"] and entries["b1"]["similar"] == [["a1", "ta", 0.7]]


def test_more_like_this_file_at_full_shape_stays_under_10_kb(tmp_path, capsys):
    """One viewer file at 1.7M images: realistic ids, tags and public links, 12 neighbours each."""
    n_images = site_fixture.FULL_IMAGES
    rng = random.Random(5)
    tags = site_fixture.tag_names(2000)
    # the shard count cut() picks at 1.7M images, from the mean entry size of a sample
    sample = {}
    for i in range(2000):
        image_id = f"{rng.getrandbits(64):016x}"
        sample[image_id] = {
            "tag": rng.choice(tags),
            "uri": f"https://images.example.org/crawl/{rng.getrandbits(24):06x}/{i:07d}.jpg",
            "similar": [[f"{rng.getrandbits(64):016x}", rng.choice(tags), round(rng.uniform(0.5, 0.98), 3)] for _ in range(similar.SIMILAR_PER_IMAGE)],
        }
    mean_entry = sum(hashed_shards._entry_bytes(k, v) for k, v in sample.items()) / len(sample)
    shards = -(-int(mean_entry * n_images) // similar.SIMILAR_TARGET_BYTES)
    per_shard = n_images / shards
    # the fullest of many shards: Poisson tail at about 4 sigma
    fullest = int(per_shard + 4 * per_shard**0.5) + 1
    body = {"v": 1, "images": dict(list(sample.items())[:fullest])}
    size = len(site_data.encode_json(body))
    with capsys.disabled():
        print(f"\nmore like this at {n_images:,} images: {shards:,} files, mean entry {mean_entry:.0f} B, "
              f"{per_shard:.1f} images a file, fullest about {fullest} images = {size:,} B")
    assert size <= similar.SIMILAR_BUDGET_BYTES


# ---------------------------------------------------------------------------
# Related words
# ---------------------------------------------------------------------------
def test_related_tags_top_five_above_the_floor_best_first():
    tags = ["car", "cat", "dog", "tree"]
    tv = related_words._unit(np.eye(4, dtype=np.float32))
    words = ["automobile", "kitten", "nothing"]
    wv = np.asarray([[1, 0.2, 0, 0], [0.1, 1, 0.7, 0], [-1, -1, -1, -1]], dtype=np.float32)
    related = related_words.related_tags(words, wv, tags, tv, floor=0.5)
    assert related["automobile"] == [["car", pytest.approx(0.981, abs=1e-3)]]
    assert [t for t, _ in related["kitten"]] == ["cat", "dog"]
    assert "nothing" not in related


def test_vocabulary_normalises_words_skips_tags_and_keeps_the_most_frequent_form():
    words, rows = related_words.vocabulary(["The", "car", "fire_engine", "the", "Kitten", "x"], 5, {"car"})
    assert words == ["the", "fire engine", "kitten"]
    assert rows == [0, 2, 4]


def test_related_words_at_200k_words_total_size_and_file_budget(tmp_path, capsys):
    """The published size at the default vocabulary: 200,000 words against 5,000 tags, every
    word with five related tags (the most a word can have: the largest case)."""
    from gensim.models import KeyedVectors

    rng = np.random.default_rng(0)
    n_words, n_tags, dim, cluster = related_words.DEFAULT_VOCAB, 5000, 64, 5
    centres = rng.normal(size=(n_tags // cluster, dim)).astype(np.float32)
    tag_vectors = related_words._unit(np.repeat(centres, cluster, axis=0) + 0.2 * rng.normal(size=(n_tags, dim)).astype(np.float32))
    tags = site_fixture.tag_names(n_tags)
    word_vecs = centres[rng.integers(0, len(centres), n_words)] + 0.3 * rng.normal(size=(n_words, dim)).astype(np.float32)
    letters = np.array(list(string.ascii_lowercase))
    lengths = rng.integers(3, 13, n_words)
    names = {"".join(letters[rng.integers(0, 26, n)]) for n in lengths}
    names = sorted(names)[: n_words]
    kv = KeyedVectors(dim)
    kv.add_vectors(names, word_vecs[: len(names)])
    started = time.monotonic()
    related = related_words.build(kv, tags, tag_vectors)
    built = time.monotonic() - started
    written: dict[str, bytes] = {}
    entries = [(t, 10 + i, 1) for i, t in enumerate(tags)]
    result = related_words.publish(
        lambda p, b: written.__setitem__(p, b), "data/v/x", related, entries=entries, vocab=n_words, seconds=built
    )
    facts = result.facts
    with capsys.disabled():
        print(f"\nrelated words: {len(names):,} words x {n_tags:,} tags, {facts['words']:,} with related tags, "
              f"{facts['files']:,} files, total {facts['total_bytes'] / 1e6:.1f} MB, largest {facts['max_bytes']:,} B, "
              f"mean {facts['mean_bytes']:,} B, {built:.1f} s")
    assert facts["words"] > 0.9 * len(names)
    assert facts["max_bytes"] <= related_words.BUDGET_BYTES
    assert len(written) == result.manifest["shards"] == facts["files"]
    any_word = next(iter(related))
    path = hashed_shards.shard_path("data/v/x", related_words.KIND, hashed_shards.shard_of(any_word, facts["files"]))
    shard = json.loads(written[path])
    counts = dict((t, c) for t, c, _ in entries)
    assert shard[related_words.FIELD][any_word]["r"] == [[t, sim, counts[t], tag_key(t)] for t, sim in related[any_word]]
    # every tag is there too: a ?q= link finds its tag without a tag shard
    tag = tags[7]
    path = hashed_shards.shard_path("data/v/x", related_words.KIND, hashed_shards.shard_of(tag, facts["files"]))
    assert json.loads(written[path])[related_words.FIELD][tag] == [counts[tag], tag_key(tag)]


def test_spelled_like_finds_one_edit_and_phrases_that_start_with_the_word():
    tags = ["traffic light", "traffic", "kite", "cat", "cart", "car"]
    found = related_words.spelled_like(["trafic", "kitten", "cat", "crat", "ca"], tags)
    assert [t for t, _ in found["trafic"]] == ["traffic"]
    assert "kitten" not in found  # two edits from kite: not a spelling neighbour
    assert {t for t, _ in found["crat"]} == {"cat", "cart"}  # a deletion and a swap of neighbours
    assert "ca" not in found  # too short to guess
    assert [t for t, _ in related_words.spelled_like(["traffic"], tags)["traffic"]] == ["traffic light"]


def test_lookup_entries_hold_tags_and_words_with_counts_and_keys():
    entries = [("car", 40, 1), ("cat", 61, 2)]
    terms = related_words.lookup_entries(entries, {"automobile": [["car", 0.9]], "car": [["cat", 0.6]]}, {"cta": [("cat", 1)]})
    assert terms["car"] == [40, tag_key("car")]  # a tag stays a tag
    assert terms["automobile"] == {"r": [["car", 0.9, 40, tag_key("car")]]}
    assert terms["cta"] == {"s": [["cat", 1, 61, tag_key("cat")]]}


# ---------------------------------------------------------------------------
# "Probably" strips
# ---------------------------------------------------------------------------
def test_candidates_need_most_neighbours_to_carry_another_tag_and_ignore_copies():
    nb = _neighbours(
        {
            "w": [("c1", 0.9), ("c2", 0.9), ("c3", 0.8), ("d1", 0.5)],  # a dog-tagged image among cats
            "d1": [("d2", 0.9), ("w", 0.5), ("c1", 0.4)],
            "copy": [("w", 1.0), ("c1", 0.9)],  # a copy of w: its neighbour w is no evidence
        }
    )
    image_tags = {"w": {"dog"}, "c1": {"cat"}, "c2": {"cat"}, "c3": {"cat"}, "d1": {"dog"}, "d2": {"dog"}, "copy": {"dog"}}
    found = probably.candidates(nb, image_tags, {"w": "copy", "copy": "copy"}, min_share=0.5)
    by_id = {c.image_id: c for c in found}
    assert set(by_id) == {"w", "copy"}
    assert (by_id["w"].tag, by_id["w"].neighbours_with_tag, by_id["w"].neighbours) == ("cat", 3, 4)
    assert (by_id["copy"].neighbours_with_tag, by_id["copy"].neighbours) == (1, 1)


def _rankings(rows):
    cols = {name: [] for name in schema.RANKINGS_SCHEMA.names}
    for tag, rank, image_id, score, matcher, agreement in rows:
        values = {
            schema.TAG: tag, schema.RANK: rank, schema.IMAGE_ID: image_id, schema.URI: f"/i/{image_id}",
            schema.PUBLIC_URI: f"https://x/{image_id}.jpg", schema.SCORE: score, schema.MATCHER: matcher,
            schema.MATCHER_IN_SAMPLE: matcher, schema.AGREEMENT: agreement, schema.AGREEMENT_WEIGHTED: agreement,
            schema.MEAN_FEATURE: None, schema.CENTROID_MARGIN: None, schema.FOLD: -1, schema.ORDINAL: rank, schema.SPLIT: "train",
        }
        for k in cols:
            cols[k].append(values[k])
    return pa.table(cols, schema=schema.RANKINGS_SCHEMA)


def test_strips_score_candidates_on_the_tags_own_scale_and_are_measured():
    rankings = _rankings(
        [
            ("cat", 1, "c1", 1.5, 0.9, 0.9), ("cat", 2, "c2", 0.5, 0.7, 0.8), ("cat", 3, "c3", -1.0, 0.5, 0.4),
            ("dog", 1, "d1", 1.0, 0.8, 0.9), ("dog", 2, "w", -2.0, 0.1, 0.1), ("dog", 3, "v", -1.5, 0.2, 0.2),
        ]
    )
    found = [
        probably.Candidate("w", "cat", 3, 4, 0.85),
        probably.Candidate("v", "cat", 2, 4, 0.5),  # weak: below the typical cat
    ]
    cosines = {("w", "cat"): 0.8, ("v", "cat"): 0.3}
    published = similar.published_images(rankings)
    _tags, own = probably.image_tags_and_scores(rankings)
    strips = probably.build_strips(found, cosines, probably.tag_stats(rankings), published, own)
    assert [it["image_id"] for it in strips.by_tag["cat"]] == ["w"]
    item = strips.by_tag["cat"][0]
    assert item["tag"] == "dog" and item["neighbours"] == [3, 4] and item["own_score"] == -2.0 and item["matcher"] > 0
    measured = probably.evaluate_strips(strips.by_tag, {"w": "cat", "v": "cat", "c1": "cat", "d1": "dog"}, rankings)
    assert measured["precision_at_10"] == 1.0
    assert (measured["wrongly_tagged"], measured["recovered"], measured["recovered_share"]) == (2, 1, 0.5)


# ---------------------------------------------------------------------------
# Home
# ---------------------------------------------------------------------------
def test_home_lists_the_most_popular_tags_with_their_top_image():
    entries = [("cat", 10, 1), ("dog", 30, 1), ("ant", 10, 1), ("bee", 1, 1)]
    pages = {
        site_data.ranking_page_path(tag_key(t), 0, "data/v/x"): site_data.encode_json({"items": [{"thumb": f"thumbs/{t}.jpg", "image_id": t * 2}]})
        for t, _, _ in entries
    }
    body = home.build_home(entries, pages.__getitem__, "data/v/x", limit=3)
    assert [row[0] for row in body["popular"]] == ["dog", "ant", "cat"]
    assert body["popular"][0] == ["dog", 30, tag_key("dog"), 1, "thumbs/dog.jpg", "dogdog"]


def test_fold_duplicates_rewrites_pages_and_rankings_consistently(tmp_path):
    """Two copies of one picture under one tag: one item, its copy listed, ranks 1..n, and the
    published site still reads back against the rankings (export/publish_check.py)."""
    import pyarrow.parquet as pq

    from export import discovery, publish_check

    out, data_root = tmp_path / "out", "data/v/x"
    site = out / schema.SITE_DIR
    ids = [f"{i:016x}" for i in range(5)]  # ids[1] and ids[3] are copies (same content hash)
    rows = [("cat", r + 1, image_id, 1.0 - r / 10, 0.5, 0.5) for r, image_id in enumerate(ids)]
    table = _rankings(rows)
    (out / "staged").mkdir(parents=True)
    pq.write_table(table, out / "staged" / "rankings-00000-of-00001.parquet")
    items = [
        {"rank": r + 1, "image_id": i, "score": round(1.0 - r / 10, 4), "thumb": None, "uri": f"https://x/{i}.jpg"}
        for r, i in enumerate(ids)
    ]
    for rel, page in site_data.ranking_pages("cat", items, ranked_by="combined", page_size=2, data_root=data_root):
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(site_data.encode_json(page))
    features = pa.table(
        {schema.IMAGE_ID: ids, schema.CONTENT_HASH: ["h0", "hc", "h2", "hc", "h4"]}
    )
    (out / schema.IMAGE_FEATURES_DIR).mkdir(parents=True)
    pq.write_table(features, out / schema.IMAGE_FEATURES_DIR / "features-00000-of-00001.parquet")
    nb = pa.table(
        {schema.IMAGE_ID: ids, schema.NEIGHBOUR_IDS: [[j for j in ids if j != i][:2] for i in ids],
         schema.SIMILARITIES: [[0.5, 0.4]] * 5, schema.COPY_GROUP: [ids[0], ids[1], ids[2], ids[1], ids[4]]},
        schema=schema.NEIGHBOURS_SCHEMA,
    )
    (out / schema.NEIGHBOURS_DIR).mkdir(parents=True)
    pq.write_table(nb, out / schema.NEIGHBOURS_DIR / "neighbours-00000-of-00001.parquet")

    facts = discovery.fold_duplicates(str(out), site_root=str(site), data_root=data_root, rankings_dir=str(out / "staged"), page_size=2)
    assert (facts["exact_copies"], facts["tags_folded"], facts["rows_folded"]) == (1, 1, 1)
    folded = pq.read_table(next((out / "staged").glob("rankings-*.parquet"))).sort_by(schema.RANK)
    assert folded[schema.IMAGE_ID].to_pylist() == [ids[0], ids[1], ids[2], ids[4]]
    assert folded[schema.RANK].to_pylist() == [1, 2, 3, 4]
    page0 = json.loads((site / site_data.ranking_page_path(tag_key("cat"), 0, data_root)).read_bytes())
    assert page0["total"] == 4 and page0["pages"] == 2
    assert page0["items"][1]["copies"] == [{"image_id": ids[3], "thumb": None, "uri": f"https://x/{ids[3]}.jpg"}]
    assert not (site / site_data.ranking_page_path(tag_key("cat"), 2, data_root)).exists()
    assert similar.read_duplicates(str(out)) == {ids[1]: ids[1], ids[3]: ids[1]}
    # the pages agree with the rankings, item by item
    manifest = site_data.build_manifest(
        shard_index=site_data.tag_shards([("cat", 4, 2)], data_root=data_root)[0], images=5, tags=1, ranked_images=4,
        oov_tags=0, model={}, thumbnails=False, page_size=2, generated_at="x", data_root=data_root,
    )
    for rel, body in site_data.tag_shards([("cat", 4, 2)], data_root=data_root)[1]:
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(body)
    (site / site_data.MANIFEST_PATH).write_bytes(site_data.encode_json(manifest))
    assert publish_check.check_site(str(site), str(out / "staged")) == []


def test_a_tags_first_page_says_how_big_its_probably_strip_is(tmp_path):
    from export import discovery

    items = site_fixture.make_items("dog", 70)
    for rel, page in site_data.ranking_pages("dog", items, ranked_by=site_data.RANKED_BY_MATCHER):
        site_fixture.write_file(tmp_path, rel, site_data.encode_json(page))
    discovery.mark_strips(str(tmp_path), site_data.DATA_DIR, {"dog": 5, "no pages": 3})
    first = json.loads((tmp_path / site_data.ranking_page_path(tag_key("dog"), 0)).read_bytes())
    second = json.loads((tmp_path / site_data.ranking_page_path(tag_key("dog"), 1)).read_bytes())
    assert first[discovery.STRIP_COUNT] == 5 and discovery.STRIP_COUNT not in second


def test_a_to_z_groups_orders_and_cuts_by_the_folded_first_letter(tmp_path):
    entries = [(t, 1, 1) for t in ["zebra", "ñandú", "nail", "oak", "øre", "猫", "7up", "apple", "ápex", "quail"]]
    written: dict[str, bytes] = {}
    az, facts = home.publish_az(lambda p, b: written.__setitem__(p, b), "data/v/x", entries, per_page=2)
    assert [row[0] for row in az["letters"]] == ["a", "n", "o", "q", "z", "#"]  # no empty letters
    assert dict((r[0], r[1:]) for r in az["letters"])["n"] == [2, 1]
    a = json.loads(written[home.az_path("data/v/x", "a", 0)])
    assert [t[0] for t in a["tags"]] == ["ápex", "apple"]  # "apex" < "apple": accents folded
    n = json.loads(written[home.az_path("data/v/x", "n", 0)])
    assert [t[0] for t in n["tags"]] == ["nail", "ñandú"]
    assert [t[0] for t in json.loads(written[home.az_path("data/v/x", "o", 0)])["tags"]] == ["oak", "øre"]
    other = json.loads(written[home.az_path("data/v/x", "#", 0)])
    assert other["letter"] == "#" and {t[0] for t in other["tags"]} == {"7up", "猫"}
    assert facts["files"] == len(written) == 6


def test_score_labels_are_one_table_the_manifest_publishes():
    from export import score_labels

    assert [score_labels.label(s) for s in (2.3, 1.0, 0.2, -1.0, -1.2, None)] == [
        "strong match", "strong match", "typical", "typical", "doubtful", None]
    m = site_data.build_manifest(shard_index=[], images=0, tags=0, ranked_images=0, oov_tags=0, model={},
                                 thumbnails=True, generated_at="x")
    assert m["score_labels"] == score_labels.LABELS
