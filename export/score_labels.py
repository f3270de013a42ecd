"""Plain words for a published score, in one place: the page reads them from the manifest's
`score_labels`, Python (tests, the report) from here.

A score is in within-tag standard deviations above the tag's typical image (model/scoring.py):
a tile says "strong match" from STRONG_AT up, "doubtful" below DOUBTFUL_BELOW, "typical" between,
and keeps the number in its title.
"""

from __future__ import annotations

STRONG_AT = 1.0
DOUBTFUL_BELOW = -1.0
STRONG, TYPICAL, DOUBTFUL = "strong match", "typical", "doubtful"

# [lowest score that earns the label, label], highest first; the last one's floor is null (any score)
LABELS: list[list] = [[STRONG_AT, STRONG], [DOUBTFUL_BELOW, TYPICAL], [None, DOUBTFUL]]


def label(score: float | None) -> str | None:
    """The label of a score (None for an unscored item), as site/js/text.js scoreLabel says it."""
    if score is None:
        return None
    for floor, text in LABELS:
        if floor is None or score >= floor:
            return text
    return None
