"""Stage `train`: fit the two-tower matcher on the training split and evaluate it on the test split.

    imgsearch train --out OUT [--ground-truth GT.jsonl] [--epochs N] [--batch-size B] ...

Reads OUT/index/images (ids, tags, splits: small, loaded whole), OUT/features/text (one row per
tag: small) and OUT/features/image (large: streamed row group by row group through a shuffle
buffer, never loaded whole; 1.7M x 2048 floats would be 14 GB). Trains on split `train` only,
leaving out oov tags and images without features. Writes OUT/model/matcher.pt (weights +
config + training args + input metadata) and OUT/model/metrics.json, and returns a TrainResult
whose summary_line() the CLI prints.

Plain torch on one machine (GPU when present): no Beam here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow.compute as pc
import torch

from model import metrics, schema, storage
from model.report import StageReport
from model.matcher import Matcher, MatcherConfig, contrastive_loss, save_checkpoint
from model.tags import image_id_for, normalize_tag

log = logging.getLogger(__name__)

STAGE = "train"
DEFAULT_READ_ROWS = 4096


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class ImagesTable:
    """The index's image rows as arrays (small: ids, tags, splits and ordinals only)."""

    image_id: np.ndarray  # object (str)
    tag: np.ndarray  # object (str)
    split: np.ndarray  # object (str)
    ordinal: np.ndarray  # int64


@dataclasses.dataclass
class TextFeatures:
    tags: list[str]  # tags with a vector (ok and partial), in a fixed order: the tag index
    vectors: np.ndarray  # float32 [n_tags, dim]
    dim: int
    oov_tags: int
    word_vectors: str | None

    def index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tags)}


@dataclasses.dataclass
class ImageFeatureFiles:
    files: list[str]
    units: list[tuple[str, int]]  # (file, row group): the unit of shuffled reading
    dim: int
    metadata: dict[str, str]  # encoder, weights, ... from the file metadata


def _meta_text(meta: Mapping[bytes, bytes] | None, key: bytes) -> str | None:
    value = (meta or {}).get(key)
    return value.decode("utf-8") if value is not None else None


def load_images(out: str) -> ImagesTable:
    table = storage.read_parquet_dir(
        schema.out_path(out, schema.IMAGES_DIR), columns=[schema.IMAGE_ID, schema.TAG, schema.SPLIT, schema.ORDINAL]
    )
    return ImagesTable(
        image_id=table.column(schema.IMAGE_ID).to_numpy(),
        tag=table.column(schema.TAG).to_numpy(),
        split=table.column(schema.SPLIT).to_numpy(),
        ordinal=table.column(schema.ORDINAL).to_numpy().astype(np.int64),
    )


def load_text_features(out: str) -> TextFeatures:
    directory = schema.out_path(out, schema.TEXT_FEATURES_DIR)
    files = storage.list_files(directory, schema.PARQUET_SUFFIX)
    if not files:
        raise FileNotFoundError(f"no text features under {directory} (run extract-text)")
    table = storage.read_parquet_dir(directory)
    meta = storage.open_parquet(files[0]).schema_arrow.metadata
    with_vector = pc.and_(pc.not_equal(table.column(schema.STATUS), schema.TEXT_OOV), pc.is_valid(table.column(schema.EMBEDDING)))
    kept = table.filter(with_vector).sort_by(schema.TAG)
    lengths = pc.list_value_length(kept.column(schema.EMBEDDING)).to_numpy()
    dim_text = _meta_text(meta, schema.META_DIM)
    dim = int(dim_text) if dim_text else (int(lengths[0]) if len(lengths) else 0)
    if (lengths != dim).any():
        raise ValueError(f"{directory}: text embeddings are not all {dim} long")
    vectors = pc.list_flatten(kept.column(schema.EMBEDDING)).to_numpy().astype(np.float32).reshape(kept.num_rows, dim)
    if not np.isfinite(vectors).all():
        raise ValueError(f"{directory}: text features hold NaN or inf")
    return TextFeatures(
        tags=kept.column(schema.TAG).to_pylist(),
        vectors=vectors,
        dim=dim,
        oov_tags=table.num_rows - kept.num_rows,
        word_vectors=_meta_text(meta, schema.META_WORD_VECTORS),
    )


def find_image_features(out: str) -> ImageFeatureFiles:
    directory = schema.out_path(out, schema.IMAGE_FEATURES_DIR)
    files = storage.list_files(directory, schema.PARQUET_SUFFIX)
    if not files:
        raise FileNotFoundError(f"no image features under {directory} (run extract-images)")
    units: list[tuple[str, int]] = []
    dim, meta = 0, None
    for f in files:
        pf = storage.open_parquet(f)
        if meta is None:
            meta = pf.schema_arrow.metadata
            dim = pf.schema_arrow.field(schema.EMBEDDING).type.list_size
        units += [(f, rg) for rg in range(pf.num_row_groups)]
    metadata = {
        k.decode("utf-8"): v.decode("utf-8")
        for k, v in (meta or {}).items()
        if k in (schema.META_ENCODER, schema.META_WEIGHTS, schema.META_DIM, schema.META_PRECISION)
    }
    return ImageFeatureFiles(files=files, units=units, dim=dim, metadata=metadata)


def load_ground_truth(path: str, keep_ids: set[str] | None = None) -> dict[str, str]:
    """image_id -> normalised true tag, from JSON lines {"uri", "tag", "true_tag"}."""
    truth: dict[str, str] = {}
    for line in storage.read_bytes(path).decode("utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        image_id = image_id_for(row[schema.URI])
        if keep_ids is None or image_id in keep_ids:
            truth[image_id] = normalize_tag(row[schema.TRUE_TAG])
    return truth


# ---------------------------------------------------------------------------
# Streaming features
# ---------------------------------------------------------------------------
def iter_feature_rows(
    units: Sequence[tuple[str, int]], wanted: Mapping[str, int], dim: int, read_rows: int = DEFAULT_READ_ROWS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(features float32 [n, dim], wanted[image_id] int64 [n]) for the wanted rows, batch by batch.

    Reads one (file, row group) unit at a time in the order given, so memory holds one read batch.
    """
    current, pf = None, None
    for path, row_group in units:
        if path != current:
            current, pf = path, storage.open_parquet(path)
        for batch in pf.iter_batches(batch_size=read_rows, row_groups=[row_group], columns=[schema.IMAGE_ID, schema.EMBEDDING]):
            ids = batch.column(0).to_pylist()
            keep = [i for i, image_id in enumerate(ids) if image_id in wanted]
            if not keep:
                continue
            # flatten() honours the batch's offset, unlike .values
            features = batch.column(1).flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
            values = np.fromiter((wanted[ids[i]] for i in keep), dtype=np.int64, count=len(keep))
            yield np.ascontiguousarray(features[keep], dtype=np.float32), values


def shuffle_rows(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]], buffer_rows: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A shuffle buffer: once full, every incoming row takes the slot of a random row, which leaves.

    Memory is buffer_rows rows whatever the input size; rows come out in pieces, each exactly once.
    """
    buf_x: np.ndarray | None = None
    buf_y = np.empty(buffer_rows, dtype=np.int64)
    filled = 0
    for x, y in chunks:
        if buf_x is None:
            buf_x = np.empty((buffer_rows, x.shape[1]), dtype=x.dtype)
        take = min(buffer_rows - filled, len(x))
        buf_x[filled : filled + take], buf_y[filled : filled + take] = x[:take], y[:take]
        filled += take
        start = take
        while start < len(x):
            m = min(len(x) - start, buffer_rows)
            slots = rng.choice(buffer_rows, size=m, replace=False)
            yield buf_x[slots], buf_y[slots]  # fancy indexing copies
            buf_x[slots], buf_y[slots] = x[start : start + m], y[start : start + m]
            start += m
    if filled:
        order = rng.permutation(filled)
        yield buf_x[order], buf_y[order]


def rebatch(pieces: Iterable[tuple[np.ndarray, np.ndarray]], batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pieces of any length -> batches of batch_size rows (the last one may be shorter)."""
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    count = 0
    for x, y in pieces:
        pending.append((x, y))
        count += len(x)
        if count < batch_size:
            continue
        xs, ys = np.concatenate([p[0] for p in pending]), np.concatenate([p[1] for p in pending])
        full = count - count % batch_size
        for s in range(0, full, batch_size):
            yield xs[s : s + batch_size], ys[s : s + batch_size]
        pending, count = [(xs[full:], ys[full:])], count - full
    if count:
        yield np.concatenate([p[0] for p in pending]), np.concatenate([p[1] for p in pending])


def epoch_batches(
    features: ImageFeatureFiles,
    wanted: Mapping[str, int],
    batch_size: int,
    buffer_rows: int,
    rng: np.random.Generator,
    read_rows: int = DEFAULT_READ_ROWS,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of shuffled batches: row groups in a random order, then the shuffle buffer."""
    units = [features.units[i] for i in rng.permutation(len(features.units))]
    rows = iter_feature_rows(units, wanted, features.dim, read_rows)
    return rebatch(shuffle_rows(rows, buffer_rows, rng), batch_size)


# ---------------------------------------------------------------------------
# Training data and result
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class TrainData:
    images: ImagesTable
    text: TextFeatures
    features: ImageFeatureFiles
    train_ids: dict[str, int]  # image_id -> position in train_tag
    train_tag: np.ndarray  # int64: tag index of each training row
    train_split_rows: int  # train-split rows in the index
    skipped_oov_tag: int


def prepare_data(out: str) -> TrainData:
    images = load_images(out)
    text = load_text_features(out)
    features = find_image_features(out)
    tag_index = text.index()
    is_train = images.split == schema.SPLIT_TRAIN
    train_ids: dict[str, int] = {}
    train_tag: list[int] = []
    skipped_oov = 0
    for image_id, tag in zip(images.image_id[is_train], images.tag[is_train]):
        idx = tag_index.get(tag)
        if idx is None:
            skipped_oov += 1
        elif image_id not in train_ids:
            train_ids[image_id] = len(train_tag)
            train_tag.append(idx)
    return TrainData(
        images=images,
        text=text,
        features=features,
        train_ids=train_ids,
        train_tag=np.asarray(train_tag, dtype=np.int64),
        train_split_rows=int(is_train.sum()),
        skipped_oov_tag=skipped_oov,
    )


@dataclasses.dataclass
class TrainResult(StageReport):
    """The stage's accounting (rows_in: train-split rows in the index; rows_out: rows trained on,
    per epoch) plus what training learned."""

    epochs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    table: str = ""
    checkpoint: str = ""

    def summary_line(self) -> str:
        line = super().summary_line()
        if self.epochs:
            line += f"; loss {self.epochs[0]['loss']:.3f} -> {self.epochs[-1]['loss']:.3f} in {len(self.epochs)} epochs"
        aucs = {r: m[metrics.AUC] for r, m in (self.metrics.get("rankers") or {}).items() if m[metrics.AUC] is not None}
        if aucs:
            line += "; mean AUC " + ", ".join(f"{r} {v:.3f}" for r, v in aucs.items())
        else:
            line += "; no AUC (needs --ground-truth)"
        return line

    def report(self) -> str:
        """Per-epoch loss lines and the evaluation table, for a terminal."""
        lines = [
            f"epoch {e['epoch']}/{len(self.epochs)}  loss {e['loss']:.4f}  rows {e['rows']}  {e['seconds']:.1f} s"
            for e in self.epochs
        ]
        return "\n".join(lines + ["", "evaluation on the held-out split (mean over tags):", self.table])

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("metrics")
        d.pop("table")
        return d


# ---------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------
def train_one_epoch(
    model: Matcher,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    train_tag: torch.Tensor,
    text_vectors: torch.Tensor,
    device: torch.device,
) -> dict[str, Any]:
    """One pass over the batches; returns the mean loss and the rows seen."""
    model.train()
    total, rows, steps = 0.0, 0, 0
    for x_np, pos_np in batches:
        x = torch.from_numpy(x_np).to(device, non_blocking=True)
        tags = train_tag[torch.from_numpy(pos_np).to(device)]
        # The batch's distinct tags are the classes; images sharing a tag are not negatives.
        unique_tags, targets = torch.unique(tags, return_inverse=True)
        loss = contrastive_loss(model(x, text_vectors[unique_tags]), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(x_np)
        rows += len(x_np)
        steps += 1
    return {"loss": total / rows if rows else math.nan, "rows": rows, "steps": steps}


@dataclasses.dataclass
class _TestSet:
    image_id: np.ndarray
    tag: np.ndarray  # str
    tag_index: np.ndarray  # int64 into TextFeatures.tags
    label: np.ndarray  # bool: true_tag == tag
    ordinal: np.ndarray


def _test_set(data: TrainData, truth: Mapping[str, str]) -> _TestSet:
    tag_index = data.text.index()
    images = data.images
    keep = [
        i
        for i in np.flatnonzero(images.split == schema.SPLIT_TEST)
        if images.image_id[i] in truth and images.tag[i] in tag_index
    ]
    keep = np.asarray(keep, dtype=np.int64)
    tags = images.tag[keep]
    return _TestSet(
        image_id=images.image_id[keep],
        tag=tags,
        tag_index=np.asarray([tag_index[t] for t in tags], dtype=np.int64),
        label=np.asarray([truth[images.image_id[i]] == images.tag[i] for i in keep], dtype=bool),
        ordinal=images.ordinal[keep],
    )


@torch.no_grad()
def evaluate(
    model: Matcher, data: TrainData, device: torch.device, ground_truth: str | None, read_rows: int = DEFAULT_READ_ROWS
) -> dict[str, Any]:
    """Matcher vs index order vs cosine-to-mean-feature on the test split (metrics.py)."""
    images = data.images
    is_test = images.split == schema.SPLIT_TEST
    counts: dict[str, Any] = {
        "test_images": int(is_test.sum()),
        "tags_with_vectors": len(data.text.tags),
        "tags_oov": data.text.oov_tags,
    }
    if not ground_truth:
        return {"split": schema.SPLIT_TEST, "ground_truth": None, "note": metrics.NEEDS_GROUND_TRUTH, "rankers": {}, "per_tag": [], "counts": counts}

    model.eval()
    truth = load_ground_truth(ground_truth, set(images.image_id[is_test].tolist()))
    test = _test_set(data, truth)
    counts["test_images_with_ground_truth_and_vector"] = int(test.image_id.size)
    # Only tags with a true and a mislabelled test image can be measured; average only those.
    eval_tags = sorted({t for t in set(test.tag.tolist()) if 0 < test.label[test.tag == t].sum() < (test.tag == t).sum()})
    eval_pos = {t: i for i, t in enumerate(eval_tags)}
    # pass 1: each evaluated tag's mean raw training feature, streamed
    means = metrics.TagMeanAccumulator(len(eval_tags), data.features.dim)
    train_wanted = {i: eval_pos[t] for i, t in zip(images.image_id, images.tag) if t in eval_pos}
    train_wanted = {i: p for i, p in train_wanted.items() if i in data.train_ids}
    for x, pos in iter_feature_rows(data.features.units, train_wanted, data.features.dim, read_rows):
        means.add(x, pos)

    # pass 2: score the test images of those tags
    in_eval = np.asarray([t in eval_pos for t in test.tag], dtype=bool)
    test_wanted = {test.image_id[i]: int(i) for i in np.flatnonzero(in_eval)}
    n = test.image_id.size
    matcher_scores = np.full(n, np.nan)
    mean_scores = np.full(n, np.nan)
    seen = np.zeros(n, dtype=bool)
    text_emb = model.encode_text(torch.from_numpy(data.text.vectors).to(device))
    for x, pos in iter_feature_rows(data.features.units, test_wanted, data.features.dim, read_rows):
        image_emb = model.encode_images(torch.from_numpy(x).to(device))
        tag_idx = torch.from_numpy(test.tag_index[pos]).to(device)
        matcher_scores[pos] = (image_emb * text_emb[tag_idx]).sum(dim=1).double().cpu().numpy()
        mean_scores[pos] = means.cosine(x, np.asarray([eval_pos[t] for t in test.tag[pos]], dtype=np.int64))
        seen[pos] = True
    counts["test_images_evaluated"] = int(seen.sum())
    counts["test_images_without_features"] = int(in_eval.sum() - seen.sum())

    result = metrics.evaluate_rankings(
        test.tag[seen],
        test.label[seen],
        test.ordinal[seen],
        {
            metrics.MATCHER: matcher_scores[seen],
            metrics.INDEX_ORDER: metrics.index_order_scores(test.ordinal[seen]),
            metrics.MEAN_FEATURE: mean_scores[seen],
        },
    )
    counts["tags_evaluated"] = result.pop("tags_evaluated")
    counts["tags_single_class"] = result.pop("tags_single_class")
    return {"split": schema.SPLIT_TEST, "ground_truth": ground_truth, **result, "counts": counts}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but torch sees no CUDA device")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    # cuBLAS needs this before its first call to be deterministic
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def main(cfg: argparse.Namespace) -> TrainResult:
    started = time.monotonic()
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    data = prepare_data(cfg.out)
    if not data.train_ids:
        raise ValueError(f"{cfg.out}: no training rows (train split with a tag vector)")
    config = MatcherConfig(
        image_dim=data.features.dim, text_dim=data.text.dim, hidden=cfg.hidden, out_dim=cfg.out_dim, dropout=cfg.dropout
    )
    model = Matcher(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    train_tag = torch.from_numpy(data.train_tag).to(device)
    text_vectors = torch.from_numpy(data.text.vectors).to(device)
    log.info(
        "train: %d training images, %d tags with vectors, %s on %s, %d feature files",
        len(data.train_ids), len(data.text.tags), config, device, len(data.features.files),
    )

    epochs: list[dict[str, Any]] = []
    for epoch in range(cfg.epochs):
        t0 = time.monotonic()
        rng = np.random.default_rng([cfg.seed, epoch])
        batches = epoch_batches(data.features, data.train_ids, cfg.batch_size, cfg.shuffle_buffer, rng, cfg.read_rows)
        stats = train_one_epoch(model, optimizer, batches, train_tag, text_vectors, device)
        scheduler.step()
        stats.update(epoch=epoch + 1, seconds=round(time.monotonic() - t0, 3), logit_scale=float(model.logit_scale().detach()))
        epochs.append(stats)
        log.info(
            "epoch %d/%d  loss %.4f  rows %d  steps %d  scale %.1f  %.1f s",
            epoch + 1, cfg.epochs, stats["loss"], stats["rows"], stats["steps"], stats["logit_scale"], stats["seconds"],
        )
        if stats["rows"] == 0:
            raise ValueError(f"{cfg.out}: no training image has features (run extract-images)")

    evaluation = evaluate(model, data, device, cfg.ground_truth, cfg.read_rows)
    table = metrics.format_table(evaluation)
    log.info("evaluation on the held-out split (mean over tags):\n%s", table)

    rows_out = epochs[-1]["rows"] if epochs else 0
    skipped_no_features = len(data.train_ids) - rows_out if epochs else 0
    details = {"skipped_oov_tag": data.skipped_oov_tag, "skipped_no_features": skipped_no_features}
    inputs = {
        "image_dim": data.features.dim,
        "text_dim": data.text.dim,
        "image_features": data.features.metadata,
        "word_vectors": data.text.word_vectors,
        "tags_with_vectors": len(data.text.tags),
    }
    checkpoint = schema.out_path(cfg.out, schema.CHECKPOINT)
    save_checkpoint(checkpoint, model.cpu(), train_args=vars(cfg), inputs=inputs, epochs=epochs)
    evaluation["counts"].update(train_rows=rows_out, **details)
    evaluation["train"] = {"epochs": epochs, "args": vars(cfg), "model": config.to_dict(), "inputs": inputs}
    storage.write_json(schema.out_path(cfg.out, schema.METRICS_JSON), evaluation)

    result = TrainResult(
        stage=STAGE,
        rows_in=data.train_split_rows,
        rows_out=rows_out,
        rows_skipped=data.train_split_rows - rows_out,
        seconds=time.monotonic() - started,
        details=details,
        epochs=epochs,
        metrics=evaluation,
        table=table,
        checkpoint=checkpoint,
    )
    result.save(cfg.out)
    return result


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsearch train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output root (local path or gs://...)")
    parser.add_argument("--ground-truth", default=None, help="JSON lines {uri, tag, true_tag}: enables AUC and P@10")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256, help="images per step; their distinct tags are the classes")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (cosine-annealed per epoch)")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--hidden", type=int, default=512, help="hidden width of both towers")
    parser.add_argument("--out-dim", type=int, default=128, help="joint embedding size")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--shuffle-buffer", type=int, default=16384, help="rows held for shuffling (memory: rows x dim x 4 B)")
    parser.add_argument("--read-rows", type=int, default=DEFAULT_READ_ROWS, help="rows per Parquet read")
    return parser


def main_cli(argv: list[str] | None = None) -> TrainResult:
    return main(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    _result = main_cli()
    print(_result.report())
    print(_result.summary_line())
