"""Stage `neighbours`: each image's k nearest images, and per-(image, tag) signals that need no model.

    imgsearch neighbours --out OUT [--k 20] [--method auto|exact|ivf] [--search-dim 256]
        [--nprobe N] [--read-rows N]

Reads OUT/index/images (ids and tags: small, loaded whole; an image may carry several tags) and
the finished image-feature shards (large: streamed row group by row group, twice, never loaded
whole; 1.7M x 2048 floats would be 14 GB). Each feature is L2-normalised and, above
--search-dim, projected onto the top principal directions of a seeded sample and normalised
again, so the search vectors at 1.7M images take 1.7 GB. Cosine is the inner product of those
unit vectors. `exact` scans every pair with faiss' brute-force kernel (O(n^2)); `ivf` searches an
IndexIVFFlat (nlist about 4 sqrt(n), DEFAULT_NPROBE lists a query: O(n^1.5)) and measures its
recall@k against an exhaustive search for a seeded sample of images (the report's
ivf_recall_estimate); `auto` is exact up to AUTO_EXACT_MAX_IMAGES images.

Writes
- OUT/neighbours/neighbours-SSSSS-of-NNNNN.parquet (schema.NEIGHBOURS_SCHEMA): one row per image
  with features, its neighbours most similar first (self excluded), cosines in the searched space;
  search settings and the encoder in the file metadata (schema.META_NEIGHBOURS, JSON);
- OUT/signals/signals-SSSSS-of-NNNNN.parquet (schema.SIGNALS_SCHEMA): one row per distinct
  (image, tag) of the index whose image has features:
  agreement (share of the neighbours carrying the tag; neighbours with the image's own content
  hash, crawled copies of the same file, count neither way), the same weighted by max(cosine, 0),
  and mean_feature (cosine of the raw feature to the mean raw feature of the tag's other images).

Shards are written into a staging folder and renamed into place once all are complete; shards
of a previous run are removed only then. Plain numpy + faiss on one machine: no Beam here.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import functools
import json
import logging
import math
import time
from typing import Any, Callable, Iterator, Sequence

import faiss
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse
import scipy.sparse.csgraph

from model import schema, storage
from model.centroids import CentroidIndex
from model.report import StageReport

# The feature streaming is train's: one reader of the feature shards, one set of checks (NaN/inf).
# Importing model.train imports torch (about 3 s); nothing here uses it.
from model.features import DEFAULT_READ_ROWS, ImageFeatureFiles, find_image_features, iter_feature_rows

log = logging.getLogger(__name__)

STAGE = "neighbours"
EXACT, IVF, AUTO = "exact", "ivf", "auto"
METHODS = (AUTO, EXACT, IVF)
DEFAULT_K = 20
DEFAULT_SEARCH_DIM = 256
AUTO_EXACT_MAX_IMAGES = 200_000  # exact is O(n^2): ~9 min of search at 200k on 2 cores, ~12 h at 1.7M
SEED = 0
PCA_SAMPLE_ROWS = 50_000  # ample for the second moment of 2048-d features (accumulated, not held)
IVF_TRAIN_PER_LIST = 40  # faiss wants at least 39 training points per list
# Lists probed per query. Fixed, not a share of nlist: with nlist ~ 4 sqrt(n) each list holds
# ~ sqrt(n)/4 images, so a query costs O(sqrt(n)) and the search O(n^1.5). ivf scans lists
# without BLAS, about 9x slower a multiply-add than exact's matrix products (bench), so a share
# of nlist (say 1/12) saves next to nothing. Each run measures its recall (ivf_recall_estimate).
DEFAULT_NPROBE = 32
RECALL_QUERIES = 1000  # ivf's recall is measured on this many seeded queries (see estimate_ivf_recall)
RECALL_WARN = 0.9
QUERY_BLOCK = 8192  # query rows per search call: bounds the result buffers, not the speed
PAIR_BLOCK = 65_536  # (image, tag) pairs per agreement step: bounds the pairs x k temporaries
ROWS_PER_SHARD = 250_000
ROW_GROUP_ROWS = 50_000  # readers stream the lists row group by row group
TEMP_MARK = ".tmp-"  # shard.parquet.tmp-<token>: ends in no .parquet, so no reader takes it for a shard
COPY_THRESHOLD = schema.COPY_THRESHOLD
SKIPPED_NO_FEATURES = "skipped_no_features"
SKIPPED_NO_NEIGHBOURS = "skipped_no_neighbours"


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1; an all-zero row stays zero (similar to nothing) instead of NaN."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def ivf_lists(n: int) -> int:
    """nlist: about 4 sqrt(n), and never more lists than the training points can fill."""
    return max(1, min(round(4 * math.sqrt(n)), n // IVF_TRAIN_PER_LIST))


def resolve_method(method: str, n: int) -> str:
    if method == AUTO:
        return EXACT if n <= AUTO_EXACT_MAX_IMAGES else IVF
    return method


def _fs(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of a path and the path as it knows it (no glob expansion)."""
    return fsspec.core.url_to_fs(path)


def _with_protocol(fs: fsspec.AbstractFileSystem, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def finished_shards(out: str, directory: str, prefix: str) -> list[str]:
    """Sorted paths of a directory's finished shards (schema.shard_pattern), nothing else."""
    fs, pattern = _fs(schema.shard_pattern(out, directory, prefix))
    return sorted(_with_protocol(fs, p) for p in fs.glob(pattern))


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Collection:
    """The images with features, in the order the feature stream first meets them (their
    position), and their distinct (position, tag) pairs sorted by position then tag."""

    index_images: int  # distinct image ids in the index
    ids: pa.Array  # string [n]: image id of each position
    content_hash: np.ndarray  # int64 [n]: a code per distinct content hash
    tags: pa.Array  # string [n_tags]: sorted; a tag's index into it is its code
    pair_pos: np.ndarray  # int64 [m]
    pair_tag: np.ndarray  # int64 [m]
    pair_ptr: np.ndarray  # int64 [n + 1]: position p's pairs are pair_ptr[p]:pair_ptr[p + 1]
    features_not_in_index: int

    @property
    def n(self) -> int:
        return len(self.ids)

    def carries(self, first: int, tag_codes: np.ndarray) -> np.ndarray:
        """Whether position first + r carries tag_codes[r, j], for a block of rows [b, c]."""
        n_tags = max(len(self.tags), 1)
        rows = np.arange(first, first + len(tag_codes))[:, None]
        return _sorted_lookup(self.pair_keys, rows * n_tags + tag_codes)

    @functools.cached_property
    def pair_keys(self) -> np.ndarray:
        """position * n_tags + tag of every pair: sorted, since pairs are sorted by (position, tag)."""
        return self.pair_pos * max(len(self.tags), 1) + self.pair_tag

    def wanted(self) -> dict[str, int]:
        """image id -> position, as iter_feature_rows takes it."""
        return {image_id: pos for pos, image_id in enumerate(self.ids.to_pylist())}


def feature_units(out: str) -> ImageFeatureFiles:
    """train's ImageFeatureFiles, narrowed to the finished shards (features-*.parquet): a file
    of another name in that folder is not one of extract-images' shards."""
    features = find_image_features(out, stage=STAGE)
    pattern = schema.shard_pattern(out, schema.IMAGE_FEATURES_DIR, schema.IMAGE_FEATURES_PREFIX).rsplit("/", 1)[-1]
    keep = {f for f in features.files if fnmatch.fnmatchcase(f.rsplit("/", 1)[-1], pattern)}
    if not keep:
        raise FileNotFoundError(
            f"no finished image-feature shards match {pattern} under "
            f"{schema.out_path(out, schema.IMAGE_FEATURES_DIR)} (run extract-images)"
        )
    features.files = [f for f in features.files if f in keep]
    features.units = [u for u in features.units if u[0] in keep]
    return features


def load_collection(out: str, units: Sequence[tuple[str, int]]) -> Collection:
    """Index pairs and the feature shards' ids and content hashes (two narrow columns: the
    embeddings are not read here). An image listed twice in the features counts once, first
    occurrence first, as the streamed passes see it."""
    images = storage.read_parquet_dir(schema.out_path(out, schema.IMAGES_DIR), columns=[schema.IMAGE_ID, schema.TAG])
    index_ids = pc.unique(images.column(schema.IMAGE_ID).combine_chunks()).sort()
    tags = pc.unique(images.column(schema.TAG).combine_chunks()).sort()

    found_idx, found_hash = [], []
    current, pf = None, None
    for path, row_group in units:
        if path != current:
            current, pf = path, storage.open_parquet(path)
        t = pf.read_row_group(row_group, columns=[schema.IMAGE_ID, schema.CONTENT_HASH])
        found_idx.append(pc.index_in(t.column(0), value_set=index_ids).fill_null(-1).to_numpy().astype(np.int64))
        found_hash.append(t.column(1).combine_chunks())
    idx = np.concatenate(found_idx) if found_idx else np.empty(0, np.int64)
    hashes = pa.concat_arrays(found_hash) if found_hash else pa.array([], pa.string())
    in_index = np.flatnonzero(idx >= 0)
    _, first = np.unique(idx[in_index], return_index=True)
    rows = np.sort(in_index[first])  # stream rows of each image's first occurrence, in stream order
    image_of_pos = idx[rows]

    pos_of_image = np.full(len(index_ids), -1, np.int64)
    pos_of_image[image_of_pos] = np.arange(len(rows))
    pair_image = pc.index_in(images.column(schema.IMAGE_ID), value_set=index_ids).to_numpy().astype(np.int64)
    pair_tag = pc.index_in(images.column(schema.TAG), value_set=tags).to_numpy().astype(np.int64)
    pair_pos = pos_of_image[pair_image]
    has = pair_pos >= 0
    key = np.unique(pair_pos[has] * len(tags) + pair_tag[has])  # distinct, sorted by (position, tag)
    pair_pos, pair_tag = key // max(len(tags), 1), key % max(len(tags), 1)
    content = pc.dictionary_encode(hashes.take(pa.array(rows))).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return Collection(
        index_images=len(index_ids),
        ids=index_ids.take(pa.array(image_of_pos)),
        content_hash=content,
        tags=tags,
        pair_pos=pair_pos,
        pair_tag=pair_tag,
        pair_ptr=np.searchsorted(pair_pos, np.arange(len(rows) + 1)),
        features_not_in_index=int(len(idx) - len(in_index)),
    )


def stream_features(
    units: Sequence[tuple[str, int]], wanted: dict[str, int], dim: int, read_rows: int
) -> Iterator[tuple[int, np.ndarray]]:
    """(first position, raw features float32 [b, dim]) of consecutive positions, in stream order.

    Positions are numbered in the order the stream first meets each image, so once repeats are
    dropped every batch continues where the previous one ended.
    """
    seen = np.zeros(len(wanted), bool)
    expected = 0
    for x, pos in iter_feature_rows(units, wanted, dim, read_rows):
        _, first = np.unique(pos, return_index=True)
        keep = np.sort(first)
        keep = keep[~seen[pos[keep]]]
        if not len(keep):
            continue
        x, pos = x[keep], pos[keep]
        seen[pos] = True
        if pos[0] != expected or (np.diff(pos) != 1).any():
            raise RuntimeError("image features changed while being read (stream order differs between passes)")
        expected = int(pos[-1]) + 1
        yield int(pos[0]), x


# ---------------------------------------------------------------------------
# Core: statistics, projection, search, signals
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class SearchPlan:
    """The search settings resolved for one collection."""

    k: int
    method: str
    search_dim: int
    nlist: int = 0  # ivf only
    nprobe: int = 0  # ivf only

    def samples(self, n: int, feature_dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions fitting the projection, positions training the ivf lists), both sorted.

        Both are prefixes of one seeded permutation, so the projection, and with it the searched
        space, is the same whichever method runs: exact and ivf results compare like for like.
        """
        pca = PCA_SAMPLE_ROWS if feature_dim > self.search_dim else 0
        train = IVF_TRAIN_PER_LIST * self.nlist if self.method == IVF else 0
        order = np.random.default_rng(SEED).permutation(n)
        return np.sort(order[:pca]), np.sort(order[:train])


def plan_search(n: int, feature_dim: int, k: int, method: str, search_dim: int, nprobe: int | None) -> SearchPlan:
    if n < 2:
        raise ValueError(f"{n} image(s) of the index have features; neighbours need at least 2 (run extract-images)")
    if k >= n:
        log.warning("%s: --k %d but only %d images have features; using k = %d", STAGE, k, n, n - 1)
        k = n - 1
    method = resolve_method(method, n)
    plan = SearchPlan(k=k, method=method, search_dim=min(search_dim, feature_dim))
    if method == IVF:
        plan.nlist = ivf_lists(n)
        plan.nprobe = min(plan.nlist, nprobe or DEFAULT_NPROBE)
    return plan


@dataclasses.dataclass
class FirstPass:
    tag_sums: np.ndarray  # float64 [n_tags, dim]: sum of the raw features of each tag's images
    unit_sums: np.ndarray  # float32 [n_tags, dim]: sum of the unit features of each tag's images
    tag_counts: np.ndarray  # int64 [n_tags]: images with features per tag
    moment: np.ndarray | None  # float64 [dim, dim]: sum of u u^T over the projection sample's unit rows
    train: np.ndarray  # float16 [t, dim]: unit rows of the ivf training sample, in position order


def _rows_in(sample: np.ndarray, p0: int, p1: int) -> tuple[int, int]:
    """The slice of a sorted position sample that falls in positions [p0, p1)."""
    lo, hi = np.searchsorted(sample, [p0, p1])
    return int(lo), int(hi)


def first_pass(
    col: Collection, batches: Iterator[tuple[int, np.ndarray]], dim: int, pca: np.ndarray, train: np.ndarray
) -> FirstPass:
    """Per-tag sums of raw features (for the leave-one-out means), the projection sample's second
    moment (accumulated: its rows are never held) and the ivf training rows, held as float16
    (half the memory; k-means does not need more precision)."""
    n_tags = len(col.tags)
    sums = np.zeros((n_tags, dim), np.float64)
    unit_sums = np.zeros((n_tags, dim), np.float32)
    moment = np.zeros((dim, dim), np.float64) if len(pca) else None
    held = np.empty((len(train), dim), np.float16)
    for p0, x in batches:
        p1 = p0 + len(x)
        lo, hi = col.pair_ptr[p0], col.pair_ptr[p1]
        rows, tags = col.pair_pos[lo:hi] - p0, col.pair_tag[lo:hi]
        # group the batch's pairs by tag so each tag's rows add up in one reduceat
        order = np.argsort(tags, kind="stable")
        if len(order):
            uniq, starts = np.unique(tags[order], return_index=True)
            sums[uniq] += np.add.reduceat(x[rows[order]].astype(np.float64), starts, axis=0)
            unit_sums[uniq] += np.add.reduceat(_unit_rows(x[rows[order]].astype(np.float32)), starts, axis=0)
        if moment is not None:
            s0, s1 = _rows_in(pca, p0, p1)
            u = _unit_rows(x[pca[s0:s1] - p0]).astype(np.float64)
            moment += u.T @ u
        t0, t1 = _rows_in(train, p0, p1)
        held[t0:t1] = _unit_rows(x[train[t0:t1] - p0])
    counts = np.bincount(col.pair_tag, minlength=n_tags).astype(np.int64)
    return FirstPass(tag_sums=sums, unit_sums=unit_sums, tag_counts=counts, moment=moment, train=held)


def fit_projection(moment: np.ndarray | None, search_dim: int) -> np.ndarray | None:
    """[dim, search_dim] top eigenvectors of the sample's second moment (None: no projection).

    Not centred: the projection that best keeps inner products of the unit vectors (the cosines
    searched), whereas a centred PCA would keep distances to the mean instead.
    """
    if moment is None or len(moment) <= search_dim:
        return None
    _, vectors = np.linalg.eigh(moment)  # ascending eigenvalues; the moment's scale does not matter
    return np.ascontiguousarray(vectors[:, ::-1][:, :search_dim], dtype=np.float32)


def search_vectors(x: np.ndarray, projection: np.ndarray | None) -> np.ndarray:
    """Raw features -> unit vectors of the searched space (normalised, projected, normalised)."""
    z = _unit_rows(x.astype(np.float32, copy=False))
    if projection is not None:
        z = _unit_rows(z @ projection)
    return np.ascontiguousarray(z, dtype=np.float32)


def mean_feature_cosines(x: np.ndarray, rows: np.ndarray, tags: np.ndarray, first: FirstPass) -> np.ndarray:
    """Cosine of x[rows] to the mean raw feature of each tag's other images (leave-one-out);
    NaN where the tag has no other image with features, or either vector is zero."""
    xi = x[rows].astype(np.float64)
    others = first.tag_sums[tags] - xi  # the sum over the tag's other images: same direction as their mean
    dot = np.einsum("ij,ij->i", xi, others)
    norm = np.linalg.norm(xi, axis=1) * np.linalg.norm(others, axis=1)
    ok = (first.tag_counts[tags] > 1) & (norm > 0)
    return np.where(ok, dot / np.where(ok, norm, 1.0), np.nan)


def train_ivf(train: np.ndarray, projection: np.ndarray | None, nlist: int) -> faiss.IndexIVFFlat:
    """An empty IndexIVFFlat whose lists are k-means (seeded) over the training rows, projected
    block by block so no float32 copy of the whole training sample is made."""
    vectors = np.concatenate(
        [search_vectors(train[s : s + QUERY_BLOCK], projection) for s in range(0, len(train), QUERY_BLOCK)]
    )
    quantizer = faiss.IndexFlatIP(vectors.shape[1])
    index = faiss.IndexIVFFlat(quantizer, vectors.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = SEED
    index.train(vectors)
    return index  # faiss' wrapper keeps a reference to the quantizer: it lives as long as the index


def index_features(
    col: Collection, features: ImageFeatureFiles, plan: SearchPlan, read_rows: int
) -> tuple[np.ndarray | faiss.IndexIVFFlat, np.ndarray, np.ndarray]:
    """The two streamed passes over the features. The first sums each tag's raw and unit features
    and takes the samples (projection, ivf training); the second fills the searched vectors (one
    array for exact, the trained index for ivf), the leave-one-out cosines and the centroid
    margins, which need the first pass's sums. Returns (vectors or index, mean_feature per pair,
    centroid_margin per pair)."""
    wanted = col.wanted()
    pca, train = plan.samples(col.n, features.dim)
    first = first_pass(col, stream_features(features.units, wanted, features.dim, read_rows), features.dim, pca, train)
    projection = fit_projection(first.moment, plan.search_dim)
    store: np.ndarray | faiss.IndexIVFFlat
    if plan.method == IVF:
        store = train_ivf(first.train, projection, plan.nlist)
        first.train = first.train[:0]  # its memory goes back before the index fills
    else:
        store = np.empty((col.n, plan.search_dim), np.float32)

    centroids = CentroidIndex(first.unit_sums, first.tag_counts, lambda c: search_vectors(c, projection))
    mean = np.full(len(col.pair_pos), np.nan)
    margin = np.full(len(col.pair_pos), np.nan)
    for p0, x in stream_features(features.units, wanted, features.dim, read_rows):
        vectors = search_vectors(x, projection)
        if isinstance(store, np.ndarray):
            store[p0 : p0 + len(x)] = vectors
        else:
            store.add(vectors)  # ids are positions: batches arrive in position order
        lo, hi = col.pair_ptr[p0], col.pair_ptr[p0 + len(x)]
        rows, tags = col.pair_pos[lo:hi] - p0, col.pair_tag[lo:hi]
        mean[lo:hi] = mean_feature_cosines(x, rows, tags, first)
        margin[lo:hi] = centroids.margins(
            _unit_rows(x.astype(np.float32)), vectors, rows, tags, lambda cand, p0=p0: col.carries(p0, cand)
        )
    return store, mean, margin


def _drop_self(labels: np.ndarray, sims: np.ndarray, first: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k+1 results per query -> k, self removed (or the last one where self was not among them:
    more than k exact copies tie with it)."""
    is_self = labels == np.arange(first, first + len(labels))[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]  # non-self first, order kept
    return np.take_along_axis(labels, order, axis=1), np.take_along_axis(sims, order, axis=1)


def _collect(blocks: Iterator[tuple[int, np.ndarray, np.ndarray]], n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.full((n, k), -1, np.int32)
    sims = np.zeros((n, k), np.float32)
    for start, lab, sim in blocks:
        lab, sim = _drop_self(lab, sim, start, k)
        labels[start : start + len(lab)] = lab
        sims[start : start + len(lab)] = np.where(lab >= 0, sim, 0.0)  # faiss pads misses with -1 and -FLT_MAX
    return labels, sims


def search_exact(z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every query against every vector, in query blocks. faiss.knn runs IndexFlatIP's kernel on
    z itself, so the 1.7 GB of vectors at 1.7M images are not copied into an index."""

    def blocks():
        for s in range(0, len(z), QUERY_BLOCK):
            sims, labels = faiss.knn(z[s : s + QUERY_BLOCK], z, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
            yield s, labels, sims

    return _collect(blocks(), len(z), k)


def search_ivf(index: faiss.IndexIVFFlat, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """Each indexed vector (ids 0..n-1, added in position order) queried against the index; the
    queries are read back from the index's lists (through a direct map, 8 bytes an image), so the
    vectors are held once."""
    n = index.ntotal
    index.nprobe = nprobe
    index.make_direct_map()

    def blocks():
        for s in range(0, n, QUERY_BLOCK):
            queries = index.reconstruct_batch(np.arange(s, min(s + QUERY_BLOCK, n)))
            sims, labels = index.search(queries, k + 1)
            yield s, labels, sims

    return _collect(blocks(), n, k)


def estimate_ivf_recall(index: faiss.IndexIVFFlat, labels: np.ndarray, k: int, queries: int) -> float:
    """recall@k of the ivf lists against an exhaustive search (every list probed) for a seeded
    sample of images: what the run's approximation cost, measured at any scale for
    queries x n work (exact for all n images would be n x n)."""
    n = index.ntotal
    sample = np.sort(np.random.default_rng(SEED + 1).permutation(n)[:queries])
    nprobe, index.nprobe = index.nprobe, index.nlist
    try:
        vectors = index.reconstruct_batch(sample)
        sims, found = index.search(vectors, k + 1)
    finally:
        index.nprobe = nprobe
    hits = total = 0
    for row, p in enumerate(sample):  # a few thousand queries at most
        exact = set(found[row][(found[row] >= 0) & (found[row] != p)][:k].tolist())
        hits += len(exact & set(labels[p][labels[p] >= 0].tolist()))
        total += len(exact)
    return hits / total if total else 1.0


def _sorted_lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Whether each key is in sorted_keys (vectorised membership)."""
    at = np.searchsorted(sorted_keys, keys)
    at = np.minimum(at, len(sorted_keys) - 1)
    return sorted_keys[at] == keys


def copy_groups(col: Collection, labels: np.ndarray, sims: np.ndarray, threshold: float = COPY_THRESHOLD) -> np.ndarray:
    """int64 [n]: each position's copy group, numbered by the group's first position. Exact copies
    (one content hash) and near copies (a neighbour at cosine >= threshold: re-encoded, resized,
    cropped by a few pixels) join, transitively. Copies travel together: the agreement never counts
    a copy's vote, and train keeps a group in one fold."""
    n = col.n
    first_of_hash = np.full(int(col.content_hash.max()) + 1 if n else 0, n, np.int64)
    np.minimum.at(first_of_hash, col.content_hash, np.arange(n))
    near = (labels >= 0) & (sims >= threshold)
    rows = np.concatenate([np.arange(n), np.repeat(np.arange(n), near.sum(axis=1))])
    cols = np.concatenate([first_of_hash[col.content_hash], labels[near].astype(np.int64)])
    graph = scipy.sparse.coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
    _, component = scipy.sparse.csgraph.connected_components(graph, directed=False)
    first = np.full(component.max() + 1 if n else 0, n, np.int64)
    np.minimum.at(first, component, np.arange(n))
    return first[component]


def agreement(col: Collection, labels: np.ndarray, sims: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: share of the image's neighbours carrying the tag, plain and weighted by
    max(cosine, 0). Neighbours in the image's copy group (a copy votes like the image itself),
    and missing ones, count neither way; NaN where none is left (or the weights sum to 0)."""
    n_tags = max(len(col.tags), 1)
    pair_keys = col.pair_keys
    plain = np.full(len(pair_keys), np.nan)
    weighted = np.full(len(pair_keys), np.nan)
    for s in range(0, len(pair_keys), PAIR_BLOCK):
        pos, tag = col.pair_pos[s : s + PAIR_BLOCK], col.pair_tag[s : s + PAIR_BLOCK]
        nb = labels[pos].astype(np.int64)  # [b, k]
        valid = nb >= 0
        nb_safe = np.where(valid, nb, 0)
        counted = valid & (groups[nb_safe] != groups[pos][:, None])
        carries = counted & _sorted_lookup(pair_keys, nb_safe * n_tags + tag[:, None])
        w = np.maximum(sims[pos], 0.0) * counted
        den, wden = counted.sum(axis=1), w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            plain[s : s + len(pos)] = np.where(den > 0, carries.sum(axis=1) / den, np.nan)
            weighted[s : s + len(pos)] = np.where(wden > 0, (w * carries).sum(axis=1) / wden, np.nan)
    return plain, weighted


# ---------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------
def _with_meta(table_schema: pa.Schema, meta: dict[str, Any]) -> pa.Schema:
    return table_schema.with_metadata({schema.META_NEIGHBOURS: json.dumps(meta, sort_keys=True).encode("utf-8")})


def _float_or_null(values: np.ndarray) -> pa.Array:
    return pa.array(values.astype(np.float32), pa.float32(), mask=np.isnan(values))


def neighbour_table(
    col: Collection, labels: np.ndarray, sims: np.ndarray, groups: np.ndarray, rows: np.ndarray, meta: dict[str, Any]
) -> pa.Table:
    """NEIGHBOURS_SCHEMA rows for the given positions (misses left out of the lists)."""
    lab = labels[rows]
    valid = lab >= 0
    offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32)
    ids = col.ids.take(pa.array(lab[valid].astype(np.int64)))
    return pa.table(
        {
            schema.IMAGE_ID: col.ids.take(pa.array(rows)),
            schema.NEIGHBOUR_IDS: pa.ListArray.from_arrays(pa.array(offsets), ids),
            schema.SIMILARITIES: pa.ListArray.from_arrays(pa.array(offsets), pa.array(sims[rows][valid], pa.float32())),
            schema.COPY_GROUP: _group_ids(col, groups, rows),
        },
        schema=_with_meta(schema.NEIGHBOURS_SCHEMA, meta),
    )


def _group_ids(col: Collection, groups: np.ndarray, rows: np.ndarray) -> pa.Array:
    """Each row's copy group named by the group's smallest image id (stable across runs)."""
    by_id = pc.sort_indices(col.ids).to_numpy()
    uniq, first = np.unique(groups[by_id], return_index=True)  # first member of each group by id
    representative = np.empty(col.n, np.int64)
    representative[uniq] = by_id[first]
    return col.ids.take(pa.array(representative[groups[rows]]))


def signal_table(
    col: Collection,
    pairs: np.ndarray,
    plain: np.ndarray,
    weighted: np.ndarray,
    mean: np.ndarray,
    margin: np.ndarray,
    meta: dict[str, Any],
) -> pa.Table:
    """SIGNALS_SCHEMA rows for the given pairs; NaN becomes null."""
    return pa.table(
        {
            schema.IMAGE_ID: col.ids.take(pa.array(col.pair_pos[pairs])),
            schema.TAG: col.tags.take(pa.array(col.pair_tag[pairs])),
            schema.AGREEMENT: _float_or_null(plain[pairs]),
            schema.AGREEMENT_WEIGHTED: _float_or_null(weighted[pairs]),
            schema.MEAN_FEATURE: _float_or_null(mean[pairs]),
            schema.CENTROID_MARGIN: _float_or_null(margin[pairs]),
        },
        schema=_with_meta(schema.SIGNALS_SCHEMA, meta),
    )


def staged_shards(out: str, directory: str, prefix: str) -> storage.StagedOutput:
    """OUT/<directory>/.staging/: where a run writes its shards until all are complete; its
    commit replaces the previous run's <prefix>-* shards. An interrupted run's staging goes."""
    target = schema.out_path(out, directory)
    staged = storage.StagedOutput(target, [f"{prefix}-*{schema.PARQUET_SUFFIX}"], staging=schema.out_path(target, ".staging"))
    staged.discard()
    return staged


def write_staged_shards(
    out: str, directory: str, prefix: str, order: np.ndarray, make_table: Callable[[np.ndarray], pa.Table]
) -> storage.StagedOutput:
    """Write make_table(order[a:b]) shards into the directory's staging folder."""
    count = max(1, math.ceil(len(order) / ROWS_PER_SHARD))
    staged = staged_shards(out, directory, prefix)
    files = storage.FsspecFiles()
    for i in range(count):
        with files.open_write(staged.path(f"{prefix}-{i:05d}-of-{count:05d}{schema.PARQUET_SUFFIX}")) as f:
            table = make_table(order[i * ROWS_PER_SHARD : (i + 1) * ROWS_PER_SHARD])
            pq.write_table(table, f, row_group_size=ROW_GROUP_ROWS, compression="zstd")
    return staged


def commit_shards(directory: str, staged: storage.StagedOutput) -> None:
    """Rename finished shards into place, then remove the previous run's other shards and any
    temporaries an older version of this stage left behind."""
    stale = staged.commit().removed
    leftovers = storage.FsspecFiles().files(schema.out_path(staged.target, f"*{schema.PARQUET_SUFFIX}{TEMP_MARK}*"))
    storage.FsspecFiles().delete(leftovers)
    if stale or leftovers:
        log.info("%s: removed %d files of a previous run under %s", STAGE, len(stale) + len(leftovers), directory)


def write_outputs(
    out: str,
    col: Collection,
    labels: np.ndarray,
    sims: np.ndarray,
    groups: np.ndarray,
    signals: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    meta: dict[str, Any],
) -> None:
    """Both outputs sorted by image id (then tag), committed only once every shard is written."""
    by_id = pc.sort_indices(col.ids).to_numpy()
    rank_of_pos = np.empty(col.n, np.int64)
    rank_of_pos[by_id] = np.arange(col.n)
    pairs_by_id = np.lexsort((col.pair_tag, rank_of_pos[col.pair_pos]))
    outputs = [
        (schema.NEIGHBOURS_DIR, schema.NEIGHBOURS_PREFIX, by_id, lambda rows: neighbour_table(col, labels, sims, groups, rows, meta)),
        (schema.SIGNALS_DIR, schema.SIGNALS_PREFIX, pairs_by_id, lambda pairs: signal_table(col, pairs, *signals, meta)),
    ]
    written = [write_staged_shards(out, directory, prefix, order, make) for directory, prefix, order, make in outputs]
    for (directory, _, _, _), staged in zip(outputs, written):
        commit_shards(directory, staged)


# ---------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------
def run(argv: list[str] | None = None) -> StageReport:
    args = get_args_parser().parse_args(argv)
    started = time.monotonic()
    features = feature_units(args.out)
    col = load_collection(args.out, features.units)
    try:
        plan = plan_search(col.n, features.dim, args.k, args.method, args.search_dim, args.nprobe)
    except ValueError as exc:
        raise ValueError(f"{args.out}: {exc}") from None
    report = StageReport(stage=STAGE, rows_in=col.index_images)
    log.info(
        "%s: %d images with features (%d-d) of %d indexed, %d tags; %s",
        STAGE, col.n, features.dim, col.index_images, len(col.tags), plan,
    )
    store, mean, margin = index_features(col, features, plan, args.read_rows)
    report.details["read_seconds"] = round(time.monotonic() - started, 2)

    search_started = time.monotonic()
    if isinstance(store, np.ndarray):
        labels, sims = search_exact(store, plan.k)
        report.details["search_seconds"] = round(time.monotonic() - search_started, 2)
    else:
        labels, sims = search_ivf(store, plan.k, plan.nprobe)
        report.details["search_seconds"] = round(time.monotonic() - search_started, 2)
        recall = estimate_ivf_recall(store, labels, plan.k, RECALL_QUERIES)
        report.details["ivf_recall_estimate"] = round(recall, 4)
        log.info("%s: ivf recall@%d %.3f on %d sampled queries", STAGE, plan.k, recall, min(RECALL_QUERIES, col.n))
        if recall < RECALL_WARN:
            log.warning("%s: ivf recall@%d is %.3f; a larger --nprobe (now %d) buys more", STAGE, plan.k, recall, plan.nprobe)
    del store  # the vectors' memory goes back before the outputs are built
    groups = copy_groups(col, labels, sims)
    plain, weighted = agreement(col, labels, sims, groups)

    meta: dict[str, Any] = {
        **dataclasses.asdict(plan), "images": col.n, "seed": SEED, "feature_dim": features.dim,
        "encoder": features.metadata.get(schema.META_ENCODER.decode()),
        "weights": features.metadata.get(schema.META_WEIGHTS.decode()),
    }
    write_outputs(args.out, col, labels, sims, groups, (plain, weighted, mean, margin), meta)

    report.rows_out = int((labels >= 0).any(axis=1).sum())
    report.details[SKIPPED_NO_FEATURES] = col.index_images - col.n
    report.details[SKIPPED_NO_NEIGHBOURS] = col.n - report.rows_out
    report.rows_skipped = report.details[SKIPPED_NO_FEATURES] + report.details[SKIPPED_NO_NEIGHBOURS]
    report.details.update(
        dataclasses.asdict(plan), signals=len(col.pair_pos), features_not_in_index=col.features_not_in_index,
        images_with_copies=int((np.bincount(groups, minlength=col.n)[groups] > 1).sum()),
    )
    report.seconds = time.monotonic() - started
    report.save(args.out)
    return report


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsearch neighbours", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output root (local path or gs://...)")
    parser.add_argument("--k", type=_positive, default=DEFAULT_K, help="neighbours per image (self excluded)")
    parser.add_argument(
        "--method", choices=METHODS, default=AUTO,
        help=f"exact (O(n^2)), ivf (IndexIVFFlat) or auto: exact up to {AUTO_EXACT_MAX_IMAGES:,} images",
    )
    parser.add_argument(
        "--search-dim", type=_positive, default=DEFAULT_SEARCH_DIM,
        help="PCA dimension searched (no PCA when the features are not longer)",
    )
    parser.add_argument("--nprobe", type=_positive, default=None, help=f"ivf lists probed per query (default {DEFAULT_NPROBE})")
    parser.add_argument("--read-rows", type=_positive, default=DEFAULT_READ_ROWS, help="feature rows per read batch")
    return parser


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("%s", run().summary_line())
