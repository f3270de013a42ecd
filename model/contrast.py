"""Class-contrastive scores: how much more an image is like its tag than like the best other tag.

The question a ranking asks of a crawled tag is not "is this image close to its tag" (a hard
picture is far from every tag) but "is it closer to its tag than to the others". Both the matcher
(its members' tag embeddings) and the centroid margin (model/centroids.py) answer it the same
way: a score for the tag minus the best score for a tag the image does not carry. At 100k tags
the best other tag is a top-k search per image (exact numpy up to EXACT_MAX_TAGS tags, a faiss
IVF index above), never a dense image x tag matrix. faiss is imported only for the IVF, so rank's
lean workers need it only for collections of more tags than that. Rank's workers, the "probably"
strip and neighbours' centroids all use it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np


from model import schema

EXACT_MAX_TAGS = 20_000  # above this a tag search is an IVF (about 4 sqrt(n) lists)
IVF_NPROBE = 32
SEED = 0


class ExactInnerProduct:
    """Exact maximum inner product over a small table, with faiss' search signature."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        products = queries @ self.vectors.T  # [b, n]: n <= EXACT_MAX_TAGS
        k = min(k, products.shape[1])
        top = np.argpartition(-products, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(products, top, axis=1), axis=1, kind="stable")
        found = np.take_along_axis(top, order, axis=1)
        return np.take_along_axis(products, found, axis=1), found


def inner_product_index(vectors: np.ndarray) -> Any:
    """An index over rows for maximum inner product (.search(queries, k) -> (scores, ids)): exact
    (numpy) up to EXACT_MAX_TAGS rows, a faiss IVF (about 4 sqrt(n) lists, IVF_NPROBE probed)
    above, so a query costs O(sqrt(n)) at 100k tags."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if n <= EXACT_MAX_TAGS:
        return ExactInnerProduct(vectors)
    try:
        import faiss
    except ImportError as exc:  # a lean worker ranking a collection of many tags
        raise ImportError(f"{n} tags: the tag search above {EXACT_MAX_TAGS} tags needs faiss (pip install faiss-cpu)") from exc
    nlist = max(1, min(round(4 * math.sqrt(n)), n // 40))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = SEED
    index.train(vectors)
    index.nprobe = min(IVF_NPROBE, nlist)
    index.add(vectors)
    return index


def best_other(
    index: Any,
    table: np.ndarray,
    queries: np.ndarray,
    carried: Callable[[np.ndarray], np.ndarray],
    candidates: int,
    search_queries: np.ndarray | None = None,
) -> np.ndarray:
    """Per query row: the largest inner product with a row of `table` that carried(candidate codes
    [b, c]) does not flag; -inf where every candidate is flagged. Candidates come from `index`
    searched with search_queries (the same rows in the index's space, e.g. projected; default the
    queries themselves), then are scored exactly against `table`, one candidate column at a time
    (a [rows, candidates, dim] gather would be a GB a batch at 2048-d)."""
    search = queries if search_queries is None else search_queries
    _, found = index.search(np.ascontiguousarray(search, dtype=np.float32), min(candidates, len(table)))
    safe = np.maximum(found, 0)
    queries32 = queries.astype(np.float32, copy=False)
    products = np.stack([np.einsum("bd,bd->b", table[safe[:, j]], queries32) for j in range(safe.shape[1])], axis=1)
    products[(found < 0) | carried(safe)] = -np.inf
    return products.max(axis=1)


def matcher_scores(embedding: np.ndarray, tag_vector: np.ndarray, fold: int, folds: int, best_other: np.ndarray | None = None) -> tuple[float, float]:
    """(out-of-sample score, in-sample score) of an image under a tag, from every member.

    embedding and tag_vector are [members, out_dim]: members 0..folds-1 are the cross-fitted ones,
    the last trained on every fold. A member's score is class-contrastive: its cosine to the tag
    minus best_other[member], its best cosine to a tag the image does not carry (without
    best_other, the plain cosine). The published score comes from the member that held the
    image's fold out, or the mean of the cross-fitted members where none trained on it (fold -1).
    """
    cosines = np.einsum("md,md->m", embedding, tag_vector)
    if best_other is not None:
        cosines = cosines - np.where(np.isfinite(best_other), best_other, 0.0)
    held_out = float(cosines[:folds].mean()) if fold == schema.NO_FOLD else float(cosines[fold])
    return held_out, float(cosines[folds])


class TagTable:
    """Every tag's projection by every member, with an inner-product index per member, for the
    best other tag of an image (model/centroids.py: exact for small tag sets, IVF at 100k)."""

    CANDIDATES = 16  # the image's own tags, plus the nearest others

    def __init__(self, text_vectors: dict[str, np.ndarray]):
        self.tags = sorted(text_vectors)
        self.code = {t: i for i, t in enumerate(self.tags)}
        stacked = np.stack([text_vectors[t] for t in self.tags], axis=1) if self.tags else np.zeros((0, 0, 0), np.float32)
        self.vectors = np.ascontiguousarray(stacked, dtype=np.float32)  # [members, n_tags, dim]
        self.indexes = [inner_product_index(v) for v in self.vectors] if len(self.tags) > 1 else []

    def best_other(self, embedding: np.ndarray, carried: set[str], members: Sequence[int] | None = None) -> np.ndarray:
        """[members]: each member's best cosine between the image and a tag it does not carry
        (NaN for members not asked for: only the ones that score the image need the search)."""
        best = np.full(len(embedding), np.nan)
        if not self.indexes:
            return best
        codes = np.array([self.code[t] for t in carried if t in self.code])
        for m in range(len(embedding)) if members is None else members:
            found = best_other(
                self.indexes[m], self.vectors[m], embedding[m : m + 1], lambda c: np.isin(c, codes), self.CANDIDATES + len(codes)
            )[0]
            best[m] = found if np.isfinite(found) else np.nan
        return best


def scoring_members(fold: int, folds: int) -> list[int]:
    """The members whose scores matcher_scores reads for an image of this fold: the one that held
    it out (every cross-fitted one where none trained on it) and the in-sample member."""
    return [*range(folds), folds] if fold == schema.NO_FOLD else [fold, folds]
