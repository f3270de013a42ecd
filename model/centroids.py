"""The centroid margin: how much closer an image is to its own tag than to the nearest other tag.

A wrongly tagged image can still look like a typical picture; what gives it away is that it
looks more like some other tag. So the signal is class-contrastive and needs no training:

    margin(i, t) = cos(u_i, mean of t's other images' u)  -  max over tags t' that i does not carry
                   of cos(u_i, mean of t''s u)

where u are the L2-normalised image features (the mean of unit vectors measured better than the
mean of raw features on both evaluation sets; see README's ablation). The own tag's mean leaves
the image out; the others' do not need to (the image is not in them).

The nearest other tag is found in two steps, so that 100k tags cost a top-k search per image
and never a dense image x tag matrix: candidate tags by inner product of the image's search
vector (neighbours' projected space) with the tags' projected centroids (faiss: exact up to
EXACT_MAX_TAGS tags, an IVF index above), then the exact cosine in the full feature space for the
few candidates. Plain numpy + faiss: no torch, no Beam.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from model import contrast

CANDIDATES = 16  # candidate tags rescored exactly per image: the image's own tags plus the nearest others


class CentroidIndex:
    """Every tag's centroid (sum of its images' unit features), unit-normalised, and an
    inner-product index over the centroids' projections into the searched space for the
    candidate step (model/contrast.py: exact, or a faiss IVF above its tag limit)."""

    def __init__(self, unit_sums: np.ndarray, counts: np.ndarray, project: Callable[[np.ndarray], np.ndarray]):
        self.counts = counts
        # normalised in place: one [n_tags, dim] array (800 MB at 100k tags of 2048-d), the sums'
        # lengths kept to give them back for the leave-one-out
        self.lengths = np.linalg.norm(unit_sums, axis=1)
        self.centroids = unit_sums.astype(np.float32, copy=False)
        self.centroids /= np.where(self.lengths > 0, self.lengths, 1.0)[:, None]
        self.index = contrast.inner_product_index(project(self.centroids))

    def margins(
        self,
        unit_rows: np.ndarray,
        search_rows: np.ndarray,
        pair_rows: np.ndarray,
        pair_tags: np.ndarray,
        carries: Callable[[np.ndarray], np.ndarray],
    ) -> np.ndarray:
        """Per pair (row of the batch, tag): the centroid margin; NaN where the tag has no other
        image, or no tag the image does not carry was found.

        unit_rows: the batch's unit features [b, dim]; search_rows: the same rows in the searched
        space [b, search_dim]; carries(candidates [b, c]) says which candidate tags each row
        carries itself (those are never its "other" tags).
        """
        # candidates by the projected centroids, cosines exact in the full feature space
        best_other = contrast.best_other(self.index, self.centroids, unit_rows, carries, CANDIDATES, search_queries=search_rows)
        best_other[~np.isfinite(best_other)] = np.nan
        u = unit_rows[pair_rows].astype(np.float64)
        own = self.centroids[pair_tags].astype(np.float64) * self.lengths[pair_tags, None] - u  # the image left out
        norm = np.linalg.norm(own, axis=1)
        ok = (self.counts[pair_tags] > 1) & (norm > 1e-9)
        own_cos = np.einsum("ij,ij->i", u, own) / np.where(ok, norm, 1.0)
        return np.where(ok, own_cos - best_other[pair_rows], np.nan)
