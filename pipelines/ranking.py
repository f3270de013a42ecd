"""Ranking one tag: each image scored under its tags out of sample, each tag ordered and paged.

The DoFns of the rank stage that hold its logic (pipelines/rank.py wires them): ScoreImageFn
meets an image's index rows, its embedding from every matcher member, its fold and its neighbour
signals, and emits one scored item per tag; RankTagFn orders a tag's items by the per-tag
combination of model/scoring.py and emits the rankings rows and the site's pages; WritePageFn
writes the pages.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np

from export import publish, site_data
from model import schema, scoring
from model.contrast import TagTable, matcher_scores, scoring_members
from pipelines import common, thumbnails

STAGE = "rank"  # the counters' namespace

# Counters beyond the standard four (all in the "rank" namespace).
SKIPPED_NO_FEATURES = "skipped_no_features"
SKIPPED_DUPLICATE = "skipped_duplicate"
IMAGES_INDEXED = "images_indexed"
IMAGES_RANKED = "images_ranked"
IMAGES_HELD_OUT = "images_scored_by_all_members"  # no member trained on them: the members' mean
IMAGES_WITHOUT_SIGNALS = "images_without_neighbour_signals"
FEATURES_WITHOUT_ROWS = "features_without_rows"
TAGS_RANKED = "tags_ranked"
TAGS_BY_INDEX = "tags_by_index"
PAGES_WRITTEN = "pages_written"

FAILURES = "failures"
THUMBS = "thumbs"
SCORED = "scored"
PAGES = "pages"
# positions in a scored item (ScoreImageFn's output)
_ITEM_AGREEMENT, _ITEM_AGREEMENT_WEIGHTED, _ITEM_MEAN_FEATURE, _ITEM_FOLD = 2, 3, 4, 5
_ITEM_ORDINAL, _ITEM_IMAGE_ID, _ITEM_URI, _ITEM_SPLIT, _ITEM_CENTROID_MARGIN = 6, 7, 8, 9, 10
# where each signal of model/scoring.py sits in a scored item
_SIGNAL_POSITION = {
    scoring.MATCHER_SIGNAL: 0,
    schema.AGREEMENT: _ITEM_AGREEMENT,
    schema.AGREEMENT_WEIGHTED: _ITEM_AGREEMENT_WEIGHTED,
    schema.MEAN_FEATURE: _ITEM_MEAN_FEATURE,
    schema.CENTROID_MARGIN: _ITEM_CENTROID_MARGIN,
}


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def sort_key(score: float | None, ordinal: int, image_id: str) -> tuple:
    """Score descending, ties (and every image of an oov tag) in index order."""
    return (0.0 if score is None else -score, ordinal, image_id)


def page_score(score: float | None) -> float | None:
    return None if score is None else round(float(score), 4)


# ---------------------------------------------------------------------------
# DoFns
# ---------------------------------------------------------------------------
class ScoreImageFn(beam.DoFn):
    """One image id's index rows, projected embedding, fold, signals and failures -> scored
    (tag, item) pairs, item = (matcher, matcher_in_sample, agreement, agreement_weighted,
    mean_feature, fold, ordinal, image_id, uri, split, centroid_margin).

    Every index row is accounted for here: scored, failed (its features or tower failed) or
    skipped (no features: extraction failed earlier).
    """

    def __init__(self, folds: int, contrastive: bool = True):
        self._folds = folds
        self._contrastive = contrastive
        self._table: TagTable | None = None
        self._table_of: int | None = None

    def _tag_table(self, text_vectors: dict[str, np.ndarray]) -> TagTable:
        # the side input is the same object for a worker's bundles: build its indexes once
        if self._table is None or self._table_of != id(text_vectors):
            self._table, self._table_of = TagTable(text_vectors), id(text_vectors)
        return self._table

    def process(self, element: tuple[str, dict[str, Iterable]], text_vectors: dict[str, np.ndarray]) -> Iterator[Any]:
        image_id, grouped = element
        rows = list(grouped["rows"])
        embeddings = list(grouped["embeddings"])
        if not rows:
            if embeddings:
                common.counter(STAGE, FEATURES_WITHOUT_ROWS).inc()
            return
        common.counter(STAGE, IMAGES_INDEXED).inc()
        common.counter(STAGE, common.ROWS_IN).inc(len(rows))
        uri = rows[0][0]
        if embeddings:
            common.counter(STAGE, IMAGES_RANKED).inc()
            embedding = embeddings[0]
            folds = list(grouped["fold"])
            fold = int(folds[0]) if folds else schema.NO_FOLD
            if fold == schema.NO_FOLD:
                common.counter(STAGE, IMAGES_HELD_OUT).inc()
            signals = {s[0]: s[1:] for s in grouped["signals"]}
            if not signals:
                common.counter(STAGE, IMAGES_WITHOUT_SIGNALS).inc()
            yield beam.pvalue.TaggedOutput(THUMBS, (image_id, uri))
            carried = {tag for _, tag, _, _ in rows}
            best_other = (
                self._tag_table(text_vectors).best_other(embedding, carried, scoring_members(fold, self._folds))
                if self._contrastive
                else None
            )
            for row_uri, tag, ordinal, split in rows:
                vector = text_vectors.get(tag)
                matcher, in_sample = (
                    (None, None) if vector is None else matcher_scores(embedding, vector, fold, self._folds, best_other)
                )
                agreement, agreement_weighted, mean_feature, margin = signals.get(tag, (None, None, None, None))
                yield tag, (
                    matcher, in_sample, agreement, agreement_weighted, mean_feature, fold, ordinal, image_id, row_uri, split, margin
                )
            return
        failures = list(grouped["failed"])
        if failures:
            error, message = failures[0]
            yield beam.pvalue.TaggedOutput(FAILURES, common.record_failure(STAGE, image_id, uri, error, message, rows=len(rows)))
            return
        common.counter(STAGE, common.ROWS_SKIPPED).inc(len(rows))
        common.counter(STAGE, SKIPPED_NO_FEATURES).inc(len(rows))


def _column(items: Sequence[tuple], position: int) -> np.ndarray:
    return np.asarray([np.nan if it[position] is None else it[position] for it in items], dtype=np.float64)


def _maybe(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


class RankTagFn(beam.DoFn):
    """One tag's scored items -> its final scores (model/scoring.py), its rankings rows (main
    output) and its ranking pages ((relative path, JSON bytes) on the `pages` output)."""

    def __init__(
        self,
        page_size: int,
        thumbnails: bool,
        ranker: str,
        data_root: str = site_data.DATA_DIR,
        links: publish.PublicLinks = publish.PublicLinks(),
    ):
        self._page_size = page_size
        self._thumbnails = thumbnails
        self._ranker = ranker
        self._data_root = data_root
        self._links = links

    def process(self, element: tuple[str, Iterable[tuple]], failed_thumbs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        tag, scored = element
        # an image listed twice under one tag is ranked once, at its first index position
        first: dict[str, tuple] = {}
        for item in scored:
            image_id, ordinal = item[_ITEM_IMAGE_ID], item[_ITEM_ORDINAL]
            if image_id in first:
                common.counter(STAGE, common.ROWS_SKIPPED).inc()
                common.counter(STAGE, SKIPPED_DUPLICATE).inc()
                if ordinal >= first[image_id][_ITEM_ORDINAL]:
                    continue
            first[image_id] = item
        items = list(first.values())
        scores, ranked_by = scoring.tag_scores(
            self._ranker,
            fold=np.asarray([it[_ITEM_FOLD] for it in items]),
            **{signal: _column(items, _SIGNAL_POSITION[signal]) for signal in scoring.SIGNAL_COLUMNS},
        )
        final = [None] * len(items) if scores is None else [float(np.float32(v)) for v in scores]
        order = sorted(range(len(items)), key=lambda i: sort_key(final[i], items[i][_ITEM_ORDINAL], items[i][_ITEM_IMAGE_ID]))
        common.counter(STAGE, TAGS_RANKED).inc()
        common.counter(STAGE, f"tags_ranked_by_{ranked_by}").inc()
        if scores is None:
            common.counter(STAGE, TAGS_BY_INDEX).inc()

        page_items = []
        for rank, i in enumerate(order, start=1):
            image_id, uri = items[i][_ITEM_IMAGE_ID], items[i][_ITEM_URI]
            thumb = thumbnails.thumb_for(image_id, uri, self._thumbnails, failed_thumbs, self._links)
            page_items.append(
                {
                    site_data.ITEM_RANK: rank,
                    site_data.ITEM_IMAGE_ID: image_id,
                    site_data.ITEM_SCORE: page_score(final[i]),
                    site_data.ITEM_THUMB: thumb,
                    site_data.ITEM_VIEW: thumbnails.view_for(image_id, thumb, self._thumbnails),
                    site_data.ITEM_URI: self._links.display(uri),
                }
            )
        pages = site_data.ranking_pages(tag, page_items, ranked_by=ranked_by, page_size=self._page_size, data_root=self._data_root)
        for relpath, page in pages:
            yield beam.pvalue.TaggedOutput(PAGES, (relpath, site_data.encode_json(page)))

        common.counter(STAGE, common.ROWS_OUT).inc(len(order))
        for rank, i in enumerate(order, start=1):
            it = items[i]
            yield {
                schema.TAG: tag,
                schema.RANK: rank,
                schema.IMAGE_ID: it[_ITEM_IMAGE_ID],
                schema.URI: it[_ITEM_URI],
                schema.PUBLIC_URI: self._links.display(it[_ITEM_URI]),
                schema.SCORE: final[i],
                schema.MATCHER: _maybe(it[0]),
                schema.MATCHER_IN_SAMPLE: _maybe(it[1]),
                schema.AGREEMENT: _maybe(it[_ITEM_AGREEMENT]),
                schema.AGREEMENT_WEIGHTED: _maybe(it[_ITEM_AGREEMENT_WEIGHTED]),
                schema.MEAN_FEATURE: _maybe(it[_ITEM_MEAN_FEATURE]),
                schema.CENTROID_MARGIN: _maybe(it[_ITEM_CENTROID_MARGIN]),
                schema.FOLD: int(it[_ITEM_FOLD]),
                schema.ORDINAL: int(it[_ITEM_ORDINAL]),
                schema.SPLIT: it[_ITEM_SPLIT],
            }


class WritePageFn(beam.DoFn):
    """(relative path, JSON bytes) -> the file under the site root."""

    def __init__(self, site_root: str):
        self._site_root = site_root

    def process(self, page: tuple[str, bytes]) -> None:
        relpath, body = page
        common.write_bytes(schema.out_path(self._site_root, relpath), body, site_data.content_type(relpath))
        common.counter(STAGE, PAGES_WRITTEN).inc()
