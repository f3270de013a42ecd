"""export/evaluate.py on generated rankings, neighbour lists and signals whose answers are known:
R-precision in the table, the tags the evaluation cannot see, the suspect tags (with and without
ground truth, with and without the centroid margin) and the baselines' fallback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from export import evaluate
from model import metrics, schema, scoring
from model.tags import image_id_for
from tests import builders

CLASSES = ["apple", "boat", "car", "dog", "fish", "house", "kite", "traffic light"]
ALL_WRONG = "lantern"  # every image under it truly shows LOOKS_LIKE
LOOKS_LIKE = "traffic light"
PER_CLASS = 20
WRONG = 0.2
K = 10


def _cosines(x: np.ndarray) -> np.ndarray:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    return u @ u.T


def make_out(tmp_path: Path, *, centroid_margin: bool = False, neighbours: bool = True, seed: int = 0) -> tuple[Path, Path, list[dict]]:
    """An OUT with rankings/, neighbours/ and signals/ over clustered features: 8 classes of 20
    images, a fifth of each class's images tagged with another class (uniformly), and 12 images
    of traffic lights all tagged "lantern". Returns OUT, the ground truth file and its rows."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(CLASSES), 16)) * 3
    true_tags, tags = [], []
    for c, name in enumerate(CLASSES):
        for i in range(PER_CLASS):
            true_tags.append(name)
            wrong = i < PER_CLASS * WRONG
            tags.append(CLASSES[(c + 1 + rng.integers(len(CLASSES) - 1)) % len(CLASSES)] if wrong else name)
    for _ in range(12):
        true_tags.append(LOOKS_LIKE)
        tags.append(ALL_WRONG)
    n = len(tags)
    order = rng.permutation(n)  # crawl order mixes the tags
    true_tags = [true_tags[i] for i in order]
    tags = [tags[i] for i in order]
    feats = centres[[CLASSES.index(t) for t in true_tags]] + rng.standard_normal((n, 16)) * 0.6
    uris = [f"images/{i:04d}.png" for i in range(n)]
    ids = [image_id_for(u) for u in uris]
    cos = _cosines(feats)
    np.fill_diagonal(cos, -np.inf)
    nb = np.argsort(-cos, axis=1)[:, :K]
    tag_arr = np.array(tags, dtype=object)
    agreement = (tag_arr[nb] == tag_arr[:, None]).mean(axis=1)
    # leave-one-out cosine to the own tag's mean, and the margin to the nearest other tag's mean
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    names = sorted(set(tags))
    sums = {t: unit[tag_arr == t].sum(axis=0) for t in names}
    counts = {t: int((tag_arr == t).sum()) for t in names}
    mean_feature, margin = np.zeros(n), np.zeros(n)
    for i, t in enumerate(tags):
        own = (sums[t] - unit[i]) / max(counts[t] - 1, 1)
        own_cos = float(unit[i] @ own / (np.linalg.norm(own) + 1e-12))
        others = [float(unit[i] @ sums[u] / (np.linalg.norm(sums[u]) + 1e-12)) for u in names if u != t]
        mean_feature[i], margin[i] = own_cos, own_cos - max(others)

    out = tmp_path / "out"
    if neighbours:
        builders.write_table(
            out, schema.NEIGHBOURS_DIR, schema.NEIGHBOURS_PREFIX,
            [{schema.IMAGE_ID: ids[i], schema.NEIGHBOUR_IDS: [ids[j] for j in nb[i]],
              schema.SIMILARITIES: [float(cos[i, j]) for j in nb[i]]} for i in range(n)],
            schema.NEIGHBOURS_SCHEMA,
        )  # fmt: skip
    signal_schema = schema.SIGNALS_SCHEMA
    signal_rows = [
        {schema.IMAGE_ID: ids[i], schema.TAG: tags[i], schema.AGREEMENT: float(agreement[i]),
         schema.AGREEMENT_WEIGHTED: float(agreement[i]), schema.MEAN_FEATURE: float(mean_feature[i])}
        for i in range(n)
    ]  # fmt: skip
    if centroid_margin:
        if evaluate.CENTROID_MARGIN not in signal_schema.names:
            signal_schema = signal_schema.append(pa.field(evaluate.CENTROID_MARGIN, pa.float32()))
        for row, m in zip(signal_rows, margin):
            row[evaluate.CENTROID_MARGIN] = float(m)
    builders.write_table(out, schema.SIGNALS_DIR, schema.SIGNALS_PREFIX, signal_rows, signal_schema)

    score = agreement + 0.1 * mean_feature
    rank = np.zeros(n, dtype=int)
    for t in names:
        rows = np.flatnonzero(tag_arr == t)
        rank[rows[np.argsort(-score[rows], kind="stable")]] = np.arange(1, rows.size + 1)
    ranking_rows = [
        {schema.TAG: tags[i], schema.RANK: int(rank[i]), schema.IMAGE_ID: ids[i], schema.URI: uris[i],
         schema.PUBLIC_URI: uris[i], schema.SCORE: float(score[i]), schema.MATCHER: float(mean_feature[i]),
         schema.MATCHER_IN_SAMPLE: float(mean_feature[i]), schema.AGREEMENT: float(agreement[i]),
         schema.AGREEMENT_WEIGHTED: float(agreement[i]), schema.MEAN_FEATURE: float(mean_feature[i]),
         schema.FOLD: i % 3 if i % 5 else schema.NO_FOLD, schema.ORDINAL: i, schema.SPLIT: schema.SPLIT_TRAIN}
        for i in range(n)
    ]  # fmt: skip
    builders.write_table(out, schema.RANKINGS_DIR, schema.RANKINGS_PREFIX, ranking_rows, schema.RANKINGS_SCHEMA)
    truth_rows = [{"uri": uris[i], "tag": tags[i], "true_tag": true_tags[i]} for i in range(n)]
    gt = tmp_path / "ground_truth.jsonl"
    gt.write_text("".join(json.dumps(r) + "\n" for r in truth_rows))
    return out, gt, truth_rows


def _metrics(out: Path) -> dict:
    return json.loads((out / schema.METRICS_JSON).read_text())


def test_suspect_list_ranks_the_all_wrong_tag_first_and_is_measured(tmp_path: Path) -> None:
    out, gt, truth_rows = make_out(tmp_path)
    result = evaluate.evaluate(str(out), str(gt))
    m = _metrics(out)
    suspects = m["suspect_tags"]
    first = suspects["tags"][0]
    assert (first["tag"], first["other_tag"]) == (ALL_WRONG, LOOKS_LIKE)
    assert first["share"] > 0.5 and first["images"] == 12 and first["wrong_share"] == 1.0
    lantern_ids = {image_id_for(r["uri"]) for r in truth_rows if r["tag"] == ALL_WRONG}
    assert first["examples"] and set(first["examples"]) <= lantern_ids
    # the list is measured: every listed tag is mostly wrong, and the one mostly-wrong tag is listed first
    truth = suspects["ground_truth"]
    assert truth["precision"] == 1.0 and truth["recall"] == 1.0
    assert [(e["tag"], e["suspect_rank"]) for e in truth["mostly_wrong_tags"]] == [(ALL_WRONG, 1)]
    assert suspects["centroid_margin"] is False and "negative_centroid_margin_share" not in first
    # the all-wrong tag has no AUC, and says why
    missing = m["subsets"]["all"]["tags_not_evaluated"]
    assert {e["tag"]: e["reason"] for e in missing["tags"]} == {ALL_WRONG: metrics.ALL_WRONG}
    assert m["counts"]["tags_not_evaluated_all"] == 1
    # R-precision beside AUC and P@10, for every ranker, in every subset
    for subset in (evaluate.SUBSET_ALL, evaluate.SUBSET_IN_TRAINING, evaluate.SUBSET_HELD_OUT):
        for ranker, values in m["subsets"][subset]["rankers"].items():
            assert values[metrics.R_PRECISION] is not None and 0.0 <= values[metrics.R_PRECISION] <= 1.0, (subset, ranker)
    # the printed table and the page say all of it
    assert "all R-prec" in result.table and "tags without an AUC: 1 (1 all wrong)" in result.table
    assert f"1. {ALL_WRONG} (12 images)" in result.table and "precision against ground truth: 1.00" in result.table
    assert "R-precision 1.000 over all images" in result.summary_line() and f"first '{ALL_WRONG}'" in result.summary_line()
    page = (out / schema.REPORT_DIR / "index.html").read_text()
    assert "Suspect tags" in page and "mean R-precision" in page and "Tags the evaluation cannot see" in page
    assert page.index(f"<td>{ALL_WRONG}</td>") < page.index("The published score")
    assert all(f'title="{i}"' in page for i in first["examples"])


def test_suspect_tags_without_ground_truth(tmp_path: Path) -> None:
    out, _, _ = make_out(tmp_path)
    result = evaluate.evaluate(str(out), None)
    suspects = _metrics(out)["suspect_tags"]
    assert suspects["tags"][0]["tag"] == ALL_WRONG and suspects["tags"][0]["other_tag"] == LOOKS_LIKE
    assert "ground_truth" not in suspects and "wrong_share" not in suspects["tags"][0]
    assert f"1. {ALL_WRONG}" in result.table
    page = (out / schema.REPORT_DIR / "index.html").read_text()
    assert "Suspect tags" in page and "precision" not in page.split("Suspect tags", 1)[1].split("</table>", 1)[0].lower()


def test_suspect_tags_use_the_centroid_margin_where_signals_have_it(tmp_path: Path) -> None:
    out, gt, _ = make_out(tmp_path, centroid_margin=True)
    evaluate.evaluate(str(out), str(gt))
    suspects = _metrics(out)["suspect_tags"]
    assert suspects["centroid_margin"] is True
    first = suspects["tags"][0]
    assert first["tag"] == ALL_WRONG and 0.0 <= first["negative_centroid_margin_share"] <= 1.0
    page = (out / schema.REPORT_DIR / "index.html").read_text()
    assert "nearer another tag&#x27;s mean" in page


def test_no_neighbour_lists_no_suspects_but_an_evaluation(tmp_path: Path) -> None:
    out, gt, _ = make_out(tmp_path, neighbours=False)
    result = evaluate.evaluate(str(out), str(gt))
    suspects = _metrics(out)["suspect_tags"]
    assert suspects["tags"] == [] and "no neighbour lists" in suspects["note"]
    assert "suspect tags: no neighbour lists" in result.table
    assert _metrics(out)["subsets"]["all"]["rankers"]["published"][metrics.AUC] is not None


# ---------------------------------------------------------------------------
# Scores that say nothing
# ---------------------------------------------------------------------------
def _rankings(rows: list[tuple[str, float | None, float | None, float | None, float | None]]) -> pa.Table:
    """(tag, score, matcher, matcher_in_sample, mean_feature) per row, index order as given."""
    cols: dict[str, list] = {name: [] for name in schema.RANKINGS_SCHEMA.names}
    for i, (tag, score, matcher, in_sample, mean_feature) in enumerate(rows):
        values = {
            schema.TAG: tag, schema.RANK: i + 1, schema.IMAGE_ID: f"id{i:04d}", schema.URI: f"u{i}", schema.PUBLIC_URI: f"u{i}",
            schema.SCORE: score, schema.MATCHER: matcher, schema.MATCHER_IN_SAMPLE: in_sample, schema.AGREEMENT: None,
            schema.AGREEMENT_WEIGHTED: None, schema.MEAN_FEATURE: mean_feature, schema.FOLD: 0, schema.ORDINAL: i,
            schema.SPLIT: schema.SPLIT_TRAIN,
        }  # fmt: skip
        # a signal a newer schema adds (e.g. the centroid margin) orders like the mean feature here
        for name in cols:
            cols[name].append(values.get(name, mean_feature))
    return pa.Table.from_pydict(cols, schema=schema.RANKINGS_SCHEMA)


def test_uninformative_scores_one_image_and_all_tied() -> None:
    table = _rankings(
        [("solo", 0.0, None, None, None)]
        + [("flat", 0.0, None, None, None)] * 3
        + [("fine", 1.0, None, None, None), ("fine", -1.0, None, None, None)]
        + [("unscored", None, None, None, None)] * 2
        + [("unscored solo", None, None, None, None)]
    )
    flat = evaluate.uninformative_scores(table)
    assert {e["tag"]: (e["reason"], e["images"]) for e in flat["tags"]} == {"flat": (evaluate.ALL_TIED, 3), "solo": (evaluate.ONE_IMAGE, 1)}
    assert flat["by_reason"] == {evaluate.ONE_IMAGE: 1, evaluate.ALL_TIED: 1} and flat["count"] == 2
    assert evaluate.uninformative_scores(schema.RANKINGS_SCHEMA.empty_table())["count"] == 0


# ---------------------------------------------------------------------------
# Baselines fall back as the published rankers do
# ---------------------------------------------------------------------------
def test_baselines_use_the_published_fallback() -> None:
    # "oov": no word vector, so no matcher score in or out of sample; its mean feature puts the
    # last image in index order first. "nothing": no signal at all. "known": all signals.
    table = _rankings(
        [("oov", 1.0, None, None, 0.1), ("oov", 2.0, None, None, 0.2), ("oov", 3.0, None, None, 0.3)]
        + [("nothing", None, None, None, None)] * 3
        + [("known", 1.0, 0.9, 0.1, 0.5), ("known", 2.0, 0.1, 0.9, 0.4), ("known", 3.0, 0.5, 0.5, 0.6)]
    )
    scores = evaluate.ranker_scores(table)
    oov, nothing, known = np.arange(3), np.arange(3, 6), np.arange(6, 9)
    for ranker in (evaluate.IN_SAMPLE, evaluate.MEAN_FEATURE, scoring.MATCHER):
        assert np.argsort(-scores[ranker][oov]).tolist() == [2, 1, 0], ranker  # by the mean feature, not index order
        assert np.argsort(-scores[ranker][nothing], kind="stable").tolist() == [0, 1, 2], ranker  # index order
    np.testing.assert_allclose(scores[evaluate.IN_SAMPLE][oov], scores[scoring.MATCHER][oov])
    # where the signal exists, each baseline ranks by its own signal
    assert np.argsort(-scores[evaluate.IN_SAMPLE][known]).tolist() == [1, 2, 0]
    assert np.argsort(-scores[evaluate.MEAN_FEATURE][known]).tolist() == [2, 0, 1]
    assert np.argsort(-scores[evaluate.INDEX_ORDER][known]).tolist() == [0, 1, 2]
    # the table names the fallback
    assert "fall back as the published rankers do" in evaluate.BASELINE_FALLBACK
