"""The evaluation report: one static HTML page, with PNG plots beside it, on how a ranking was made.

The evaluation computes the numbers (metrics.json); this module only shows them, next to what
can be read off the published rankings themselves:

    REPORT/index.html             the page: plain HTML, inline CSS, no script
    REPORT/per_tag_auc.png        per-tag AUC, one marker per ranker        (with ground truth)
    REPORT/score_histogram.png    the published score, correct vs wrongly tagged (or all images)
    REPORT/precision_at_k.png     mean precision@k, k = 1..50, per ranker   (with ground truth)

plus the suspect tags (tags whose images mostly look like another tag, with example thumbnails:
no ground truth needed), the tags the evaluation cannot see (no AUC: one image, every image
wrongly tagged, none wrongly tagged) and the tags whose scores say nothing (one image, all tied),
and, for the largest tags, the images the published ranking put last, as thumbnails from the
site: the first place a curator looks for wrong tags. Every text on the page comes from data
(tags, labels, descriptions), so every text is escaped; a plot that has nothing to show is left
out with a sentence saying why, so an empty or unlabelled run still gets a page.
"""

from __future__ import annotations

import html
import io
import logging
import math
from typing import Any, Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on workers or CI; must precede pyplot's import

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from export.site_data import thumbnail_path  # noqa: E402
from model import schema, storage  # noqa: E402
from model.metrics import AUC, NOT_EVALUATED_REASONS, P_AT_10, R_PRECISION, ranking_order  # noqa: E402

log = logging.getLogger(__name__)

INDEX_HTML = "index.html"
PER_TAG_AUC_PNG = "per_tag_auc.png"
SCORE_HISTOGRAM_PNG = "score_histogram.png"
PRECISION_AT_K_PNG = "precision_at_k.png"

SUBSET_ORDER = ("all", "in_training", "held_out")
SUBSET_TITLES = {
    "all": "All images",
    "in_training": "Images in the training split",
    "held_out": "Held-out images",
}
MAX_K = 50
STRIP_TAGS = 6  # the largest tags get a strip of their last-ranked images
STRIP_IMAGES = 8
MAX_PLOT_TAGS = 60  # beyond this a dot plot is unreadable: the published ranker's worst tags are shown
MAX_TABLE_TAGS = 1000
MAX_LISTED_TAGS = 100  # suspect tags, tags without an AUC, tags whose scores say nothing
SUSPECT_THUMBS = 5
DPI = 100
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6rem 0 1.2rem}th,td{padding:.25rem .7rem;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}tr.published td{font-weight:600;background:#f3f7ff}
caption{text-align:left;font-weight:600;padding:.3rem 0}
img.plot{max-width:100%;height:auto;border:1px solid #eee}
.note{color:#666}.strip{display:flex;gap:.5rem;flex-wrap:wrap;margin:.4rem 0 1.4rem}
figure{margin:0;width:112px;font-size:.75rem}figure img{width:112px;height:112px;object-fit:contain;background:#f4f4f4;display:block}
figure.wrong{outline:3px solid #c62828}table.listing td,table.listing th{text-align:left}img.ex{width:56px;height:56px;object-fit:contain;background:#f4f4f4;margin-right:.2rem;vertical-align:middle}figure.correct{outline:3px solid #2e7d32}
.wrong figcaption .label{color:#c62828;font-weight:600}.correct figcaption .label{color:#2e7d32}
"""


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.3f}"


def _ranker_order(published: str | None, labels: Mapping[str, str], *more: Iterable[str]) -> list[str]:
    """The published ranker first, then the labelled rankers in their given order, then the rest."""
    order: list[str] = []
    for name in ([published] if published else []) + list(labels) + [n for group in more for n in group]:
        if name not in order:
            order.append(name)
    return order


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    # no Software/date metadata: the same numbers give the same bytes
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _column(table: pa.Table, name: str, dtype: Any) -> np.ndarray:
    if name not in table.column_names:
        return np.zeros(table.num_rows, dtype=dtype)
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False))


def _published_scores(rankings: pa.Table) -> np.ndarray:
    # the score column is what the site shows: nulls (index-order tags) become NaN
    if schema.SCORE not in rankings.column_names or rankings.num_rows == 0:
        return np.full(rankings.num_rows, np.nan)
    return np.asarray(rankings.column(schema.SCORE).to_numpy(zero_copy_only=False), dtype=np.float64)


def _tag_groups(tags: np.ndarray) -> dict[str, np.ndarray]:
    """tag -> row indices, in row order."""
    if tags.size == 0:
        return {}
    uniques, inverse = np.unique(tags.astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=uniques.size))[:-1]
    return {str(tag): rows for tag, rows in zip(uniques, np.split(order, bounds))}


# ---------------------------------------------------------------------------
# Numbers computed here (from the rankings, not from metrics)
# ---------------------------------------------------------------------------
def precision_at_k_curves(
    groups: Mapping[str, np.ndarray],
    ranker_scores: Mapping[str, np.ndarray],
    labels: np.ndarray,
    tiebreak: np.ndarray,
    max_k: int = MAX_K,
) -> dict[str, np.ndarray]:
    """ranker -> mean precision@k for k = 1..max_k over tags with at least k images (NaN: no tag).

    A tag counts for a ranker only when the ranker scored some image of it; ties and unscored
    images are ordered by the tiebreak (index order), as the site orders them.
    """
    curves: dict[str, np.ndarray] = {}
    for name, scores in ranker_scores.items():
        scores = np.asarray(scores, dtype=np.float64)
        sums, counts = np.zeros(max_k), np.zeros(max_k)
        for rows in groups.values():
            s = scores[rows]
            if not np.isfinite(s).any():
                continue
            ranked = labels[rows][ranking_order(s, tiebreak[rows])][:max_k]
            n = ranked.size
            sums[:n] += np.cumsum(ranked) / np.arange(1, n + 1)
            counts[:n] += 1
        if counts.any():
            with np.errstate(invalid="ignore", divide="ignore"):
                curves[name] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return curves


def bottom_of_tags(groups: Mapping[str, np.ndarray], ranks: np.ndarray, n_tags: int, n_images: int) -> list[tuple[str, np.ndarray]]:
    """The n_tags largest tags (ties by name) with the rows of their n_images highest rank
    numbers, the last-ranked image first."""
    largest = sorted(groups, key=lambda t: (-groups[t].size, t))[:n_tags]
    result = []
    for tag in largest:
        rows = groups[tag]
        result.append((tag, rows[np.argsort(-ranks[rows], kind="stable")][:n_images]))
    return result


# ---------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------
def plot_per_tag_auc(per_tag: Sequence[Mapping[str, Any]], rankers: Sequence[str], ranker_labels: Mapping[str, str]) -> tuple[bytes, str] | None:
    """Dot plot, tags down, AUC across, one marker per ranker; None when no tag has an AUC."""

    def auc(entry: Mapping[str, Any], name: str) -> float:
        value = entry.get(name)
        if isinstance(value, Mapping) and value.get(AUC) is not None:
            return float(value[AUC])
        return math.nan

    rows = [e for e in per_tag if any(not math.isnan(auc(e, r)) for r in rankers)]
    if not rows:
        return None
    published = rankers[0]
    # worst first: the tags where the published ranking needs a look are at the top
    rows.sort(key=lambda e: (math.inf if math.isnan(auc(e, published)) else auc(e, published), str(e.get("tag"))))
    note = ""
    if len(rows) > MAX_PLOT_TAGS:
        note = f"The {MAX_PLOT_TAGS} tags with the lowest AUC of the published ranking, of {len(rows)}."
        rows = rows[:MAX_PLOT_TAGS]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.28 * len(rows)))
    y = np.arange(len(rows))[::-1]
    for i, name in enumerate(rankers):
        x = np.array([auc(e, name) for e in rows])
        if np.isnan(x).all():
            continue
        ax.scatter(
            x, y, marker=MARKERS[i % len(MARKERS)], s=40 if i == 0 else 22, alpha=0.9 if i == 0 else 0.7,
            label=ranker_labels.get(name, name), zorder=3 if i == 0 else 2,
        )
    ax.set_yticks(y)
    ax.set_yticklabels([str(e.get("tag")) for e in rows], fontsize=8)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.axvline(0.5, color="#999", lw=0.8, ls="--")
    ax.set_xlabel("AUC (1 = every truly tagged image above every wrongly tagged one; 0.5 = chance)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    return _png(fig), note


def plot_score_histogram(scores: np.ndarray, labels: np.ndarray | None) -> bytes | None:
    """The published score, correct vs wrongly tagged images (or all of them); None: no score."""
    finite = np.isfinite(scores)
    if not finite.any():
        return None
    fig, ax = plt.subplots(figsize=(8, 3.6))
    values = scores[finite]
    bins = np.histogram_bin_edges(values, bins=40) if np.ptp(values) > 0 else 10
    if labels is None:
        ax.hist(values, bins=bins, color="#4c72b0", label=f"all images ({values.size})")
    else:
        y = labels[finite]
        ax.hist(values[y], bins=bins, alpha=0.6, color="#2e7d32", label=f"correctly tagged ({int(y.sum())})")
        ax.hist(values[~y], bins=bins, alpha=0.6, color="#c62828", label=f"wrongly tagged ({int((~y).sum())})")
    ax.set_xlabel("published score")
    ax.set_ylabel("images")
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def plot_precision_at_k(curves: Mapping[str, np.ndarray], rankers: Sequence[str], ranker_labels: Mapping[str, str]) -> bytes | None:
    shown = [r for r in rankers if r in curves and np.isfinite(curves[r]).any()]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, name in enumerate(shown):
        k = np.arange(1, curves[name].size + 1)
        ax.plot(k, curves[name], marker=MARKERS[i % len(MARKERS)], markersize=3, lw=2.2 if i == 0 else 1.2,
                label=ranker_labels.get(name, name))
    ax.set_xlabel("k (first k images of a tag)")
    ax.set_ylabel("mean precision@k over tags with ≥ k images")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)


# ---------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------
def _ranker_table(subset: str, data: Mapping[str, Any], order: Sequence[str], ranker_labels: Mapping[str, str], published: str | None) -> str:
    rankers = data.get("rankers") or {}
    title = SUBSET_TITLES.get(subset, subset)
    images = data.get("images")
    caption = f"{title} ({_fmt(images)} images)" if images is not None else title
    if not rankers:
        return f'<p><strong>{_e(caption)}</strong>: <span class="note">no ground truth, so no AUC or precision.</span></p>'
    rows = []
    for name in [r for r in order if r in rankers] + [r for r in rankers if r not in order]:
        m = rankers[name] or {}
        cls = ' class="published"' if name == published else ""
        label = ranker_labels.get(name, name) + (" (published)" if name == published else "")
        rows.append(
            f"<tr{cls}><td>{_e(label)}</td><td>{_e(_fmt(m.get(AUC)))}</td>"
            f"<td>{_e(_fmt(m.get(P_AT_10)))}</td><td>{_e(_fmt(m.get(R_PRECISION)))}</td><td>{_e(_fmt(m.get('tags')))}</td></tr>"
        )
    return (
        f"<table><caption>{_e(caption)}</caption>"
        "<thead><tr><th>ranker</th><th>mean AUC</th><th>mean P@10</th><th>mean R-precision</th><th>tags</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _per_tag_table(per_tag: Sequence[Mapping[str, Any]], order: Sequence[str], ranker_labels: Mapping[str, str]) -> str:
    rankers = [r for r in order if any(isinstance(e.get(r), Mapping) for e in per_tag)]
    if not per_tag or not rankers:
        return ""
    rows = []
    for entry in per_tag[:MAX_TABLE_TAGS]:
        cells = "".join(
            "".join(f"<td>{_e(_fmt((entry.get(r) or {}).get(m)))}</td>" for m in (AUC, P_AT_10, R_PRECISION))
            for r in rankers
        )
        rows.append(f"<tr><td>{_e(entry.get('tag'))}</td><td>{_e(_fmt(entry.get('images')))}</td><td>{_e(_fmt(entry.get('true')))}</td>{cells}</tr>")
    head = "".join(f'<th colspan="3">{_e(ranker_labels.get(r, r))}</th>' for r in rankers)
    sub = "".join("<th>AUC</th><th>P@10</th><th>R-prec</th>" for _ in rankers)
    more = f'<p class="note">The first {MAX_TABLE_TAGS} of {len(per_tag)} tags.</p>' if len(per_tag) > MAX_TABLE_TAGS else ""
    return (
        "<details><summary>Per-tag numbers</summary>"
        f"<table><thead><tr><th>tag</th><th>images</th><th>true</th>{head}</tr>"
        f"<tr><th></th><th></th><th></th>{sub}</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}</details>"
    )


def _suspect_section(section: Mapping[str, Any] | None, thumb_prefix: str) -> str:
    """The suspect tags, most suspect first, with example thumbnails; their precision where
    ground truth measured it."""
    if not section:
        return ""
    parts = ["<h2>Suspect tags</h2>", f'<p class="note">{_e(section.get("rule", ""))}</p>']
    if section.get("note"):
        return "".join(parts) + f'<p class="note">{_e(section["note"])}</p>'
    tags = section.get("tags") or []
    truth = section.get("ground_truth")
    parts.append(f"<p>{_e(section.get('count', len(tags)))} suspect tags of {_e(_fmt(section.get('tags_scored')))} scored.</p>")
    if truth is not None:
        parts.append(
            f"<p>Against ground truth: precision {_e(_fmt(truth.get('precision')))} "
            f"({_e(_fmt(truth.get('listed_mostly_wrong')))} of {_e(_fmt(truth.get('listed_with_ground_truth')))} listed tags "
            f"have mostly wrongly tagged images); {len(truth.get('mostly_wrong_tags') or [])} tags are mostly wrongly tagged, "
            f"of which listed: {_e(_fmt(truth.get('recall')))}.</p>"
        )
    if not tags:
        return "".join(parts)
    margin = any(e.get("negative_centroid_margin_share") is not None for e in tags)
    head = ["#", "tag", "images", "look like", "share", "like any other tag", "of the other tag's, look like it"]
    head += ["nearer another tag's mean"] if margin else []
    head += ["truly wrong"] if truth is not None else []
    head += ["examples"]
    rows = []
    for i, e in enumerate(tags[:MAX_LISTED_TAGS], 1):
        cells = [str(i), e.get("tag"), _fmt(e.get("images")), e.get("other_tag"), _fmt(e.get("share")), _fmt(e.get("share_any_other")), _fmt(e.get("share_back"))]
        cells += [_fmt(e.get("negative_centroid_margin_share"))] if margin else []
        cells += [_fmt(e.get("wrong_share"))] if truth is not None else []
        thumbs = "".join(
            f'<img class="ex" src="{_e(thumb_prefix + thumbnail_path(str(image_id)))}" alt="{_e(image_id)}" title="{_e(image_id)}" loading="lazy">'
            for image_id in (e.get("examples") or [])[:SUSPECT_THUMBS]
        )
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + f"<td>{thumbs}</td></tr>")
    more = _first_of(len(rows), len(tags))
    return (
        "".join(parts)
        + '<table class="listing suspects"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead>"
        + f"<tbody>{''.join(rows)}</tbody></table>{more}"
    )


def _first_of(shown: int, total: int) -> str:
    return f'<p class="note">The first {shown} of {total}; all of them are in metrics.json.</p>' if total > shown else ""


def _unseen_section(metrics: Mapping[str, Any]) -> str:
    """The tags the means leave out (over all images), and the tags whose scores say nothing."""
    missing = ((metrics.get("subsets") or {}).get("all") or {}).get("tags_not_evaluated")
    flat = metrics.get("uninformative_scores")
    if not missing and not flat:
        return ""
    parts = ["<h2>Tags the evaluation cannot see</h2>"]
    if missing:
        by = ", ".join(f"{n} {NOT_EVALUATED_REASONS.get(r, r)}" for r, n in (missing.get("by_reason") or {}).items() if n)
        parts.append(f"<p>{_e(missing.get('count', 0))} tags have no AUC, P@10 or R-precision and are left out of the means"
                     + (f": {_e(by)}" if by else "") + ".</p>")
        rows = [
            f"<tr><td>{_e(e.get('tag'))}</td><td>{_e(_fmt(e.get('images')))}</td><td>{_e(_fmt(e.get('true')))}</td>"
            f"<td>{_e(NOT_EVALUATED_REASONS.get(e.get('reason'), e.get('reason')))}</td></tr>"
            for e in (missing.get("tags") or [])[:MAX_LISTED_TAGS]
        ]
        if rows:
            parts.append('<table class="listing"><thead><tr><th>tag</th><th>images</th><th>truly tagged</th><th>why no AUC</th></tr></thead>'
                         f"<tbody>{''.join(rows)}</tbody></table>" + _first_of(len(rows), len(missing.get("tags") or [])))
    if flat and flat.get("count"):
        reasons = flat.get("reasons") or {}
        parts.append(
            f"<p>{_e(flat['count'])} tags have scores that say nothing about their images (a within-tag score compares "
            "an image with the tag's others): they are left out of the score histogram and their scores are not shown below.</p>"
        )
        rows = [f"<tr><td>{_e(e.get('tag'))}</td><td>{_e(_fmt(e.get('images')))}</td><td>{_e(reasons.get(e.get('reason'), e.get('reason')))}</td></tr>"
                for e in (flat.get("tags") or [])[:MAX_LISTED_TAGS]]
        parts.append('<table class="listing"><thead><tr><th>tag</th><th>images</th><th>why</th></tr></thead>'
                     f"<tbody>{''.join(rows)}</tbody></table>" + _first_of(len(rows), len(flat.get("tags") or [])))
    return "".join(parts)


def _strip(tag: str, rows: np.ndarray, *, ranks: np.ndarray, image_ids: np.ndarray, scores: np.ndarray,
           labels: np.ndarray | None, total: int, thumb_prefix: str, meaningless: bool = False) -> str:
    figures = []
    for row in rows:
        rank, image_id = int(ranks[row]), str(image_ids[row])
        if meaningless:
            score = "score says nothing here"
        else:
            score = "no score" if not np.isfinite(scores[row]) else f"score {scores[row]:.3f}"
        cls, mark = "", ""
        if labels is not None:
            cls = " wrong" if not labels[row] else " correct"
            mark = f'<br><span class="label">{"wrongly tagged" if not labels[row] else "correct"}</span>'
        src = thumb_prefix + thumbnail_path(image_id)
        figures.append(
            f'<figure class="thumb{cls}"><img src="{_e(src)}" alt="{_e(f"{tag}, rank {rank}")}" loading="lazy">'
            f"<figcaption>#{rank} · {_e(score)}{mark}</figcaption></figure>"
        )
    return f"<h3>{_e(tag)} <span class=\"note\">({total} images)</span></h3><div class=\"strip\">{''.join(figures)}</div>"


def _plot_section(title: str, src: str | None, alt: str, why_not: str, note: str = "") -> str:
    body = f'<img class="plot" src="{_e(src)}" alt="{_e(alt)}">' if src else f'<p class="note">{_e(why_not)}</p>'
    note_html = f'<p class="note">{_e(note)}</p>' if note else ""
    return f"<h2>{_e(title)}</h2>{note_html}{body}"


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------
def write_report(
    report_dir: str,
    *,
    rankings: pa.Table,
    ranker_scores: dict[str, np.ndarray],
    ranker_labels: dict[str, str],
    labels: np.ndarray | None,
    metrics: dict,
    thumb_prefix: str,
    title: str = "How this ranking was made",
) -> list[str]:
    """Write index.html and its plots under report_dir (local or gs://); returns the paths written.

    rankings: schema.RANKINGS_SCHEMA rows; ranker_scores and labels (True: the image shows its
    tag) are aligned with them; metrics is the evaluation's metrics.json ("published_ranker",
    "ground_truth", "description", "subsets": {name: {"images", "rankers", "per_tag"}}).
    thumb_prefix leads from the report page to the site root.
    """
    written: list[str] = []

    def put(name: str, data: bytes) -> str:
        path = schema.out_path(report_dir, name)
        storage.write_bytes(path, data)
        written.append(path)
        return name

    n = rankings.num_rows
    published = metrics.get("published_ranker")
    subsets: Mapping[str, Any] = metrics.get("subsets") or {}
    order = _ranker_order(published, ranker_labels, ranker_scores, *((s.get("rankers") or {}) for s in subsets.values()))
    labels = None if labels is None else np.asarray(labels, dtype=bool)
    if labels is not None and labels.size != n:
        raise ValueError(f"labels has {labels.size} entries for {n} ranking rows")
    for name, scores in ranker_scores.items():
        if np.asarray(scores).size != n:
            raise ValueError(f"ranker {name!r} has {np.asarray(scores).size} scores for {n} ranking rows")

    tags = _column(rankings, schema.TAG, object)
    ranks = _column(rankings, schema.RANK, np.int64)
    image_ids = _column(rankings, schema.IMAGE_ID, object)
    tiebreak = _column(rankings, schema.ORDINAL, np.int64)
    scores = _published_scores(rankings)
    groups = _tag_groups(tags)

    parts = [
        # the one way back: the search page at the site root (thumb_prefix leads there)
        f'<p class="back"><a href="{_e(thumb_prefix or "./")}">← Back to the search</a></p>',
        f"<h1>{_e(title)}</h1>",
        f"<p>{_e(metrics.get('description') or 'No description of the score was given.')}</p>",
        *([f"<p class=\"models\">{_e(metrics['models'])}</p>"] if metrics.get("models") else []),
        f'<p class="note">{n} ranked images in {len(groups)} tags. '
        + (
            f"Ground truth: {_e(metrics['ground_truth'])}.</p>"
            if metrics.get("ground_truth")
            else "No ground truth: the plots that need to know which tags are wrong are left out.</p>"
        ),
        "<h2>Rankers compared</h2>",
        '<p class="note">Mean over tags of the ROC-AUC (the chance that an image truly showing the tag '
        "is ranked above a wrongly tagged one) and of the precision of the first 10 images. Each "
        "ranker orders the same published images.</p>",
    ]
    for subset in [s for s in SUBSET_ORDER if s in subsets] + [s for s in subsets if s not in SUBSET_ORDER]:
        parts.append(_ranker_table(subset, subsets[subset] or {}, order, ranker_labels, published))
    if not subsets:
        parts.append('<p class="note">No evaluation was given.</p>')
    else:
        parts.append(
            '<p class="note">R-precision: the share of the first R images that truly show the tag, where R is the '
            "number of the tag's images that truly show it (1 when every true image comes before every wrong one). "
            + _e(metrics.get("baseline_fallback") or "")
            + "</p>"
        )

    per_tag = (subsets.get("all") or {}).get("per_tag") or []
    auc_plot = plot_per_tag_auc(per_tag, order, ranker_labels) if order else None
    src, note = (put(PER_TAG_AUC_PNG, auc_plot[0]), auc_plot[1]) if auc_plot else (None, "")
    parts.append(_plot_section("AUC per tag", src, "per-tag AUC of each ranker",
                               "No tag has an AUC (it needs ground truth and both correct and wrongly tagged images).", note))
    parts.append(_per_tag_table(per_tag, order, ranker_labels))

    parts.append(_unseen_section(metrics))
    parts.append(_suspect_section(metrics.get("suspect_tags"), thumb_prefix))

    # a score that compares an image with nothing (one image, all tied) is not shown as one
    meaningless = {e.get("tag") for e in ((metrics.get("uninformative_scores") or {}).get("tags") or [])}
    shown = scores.copy()
    if meaningless:
        shown[np.isin(tags.astype(str), np.array(sorted(map(str, meaningless)), dtype=str))] = np.nan
    histogram = plot_score_histogram(shown, labels)
    parts.append(
        _plot_section(
            "The published score" + (", correct vs wrongly tagged" if labels is not None else ""),
            put(SCORE_HISTOGRAM_PNG, histogram) if histogram else None,
            "histogram of the published score",
            "No image has a published score" + (" that says something." if meaningless else "."),
            f"Without the {len(meaningless)} tags whose scores say nothing." if meaningless else "",
        )
    )

    if labels is not None:
        curves = precision_at_k_curves(groups, ranker_scores, labels, tiebreak)
        pk_plot = plot_precision_at_k(curves, order, ranker_labels)
        parts.append(_plot_section("Precision at k", put(PRECISION_AT_K_PNG, pk_plot) if pk_plot else None,
                                   "mean precision at k per ranker", "No ranker scored any image."))

    parts.append("<h2>The bottom of the largest tags</h2>")
    strips = bottom_of_tags(groups, ranks, STRIP_TAGS, STRIP_IMAGES)
    if strips:
        parts.append(
            f'<p class="note">The {STRIP_IMAGES} images the published ranking put last in each of the '
            f"{len(strips)} largest tags, the last one first: where wrong tags gather if the ranking works.</p>"
        )
        for tag, rows in strips:
            parts.append(_strip(tag, rows, ranks=ranks, image_ids=image_ids, scores=scores, labels=labels,
                                total=int(groups[tag].size), thumb_prefix=thumb_prefix, meaningless=tag in meaningless))
    else:
        parts.append('<p class="note">Nothing was ranked.</p>')

    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(p for p in parts if p)
        + "</body></html>\n"
    )
    put(INDEX_HTML, page.encode("utf-8"))
    log.info("report: %d files under %s", len(written), report_dir)
    return written
