"""Stage `train`: fit the cross-fitted two-tower matcher (K fold members + one in-sample member).

    imgsearch train --out OUT [--folds 5] [--epochs N] [--batch-size B] ...

Reads OUT/index/images (ids, tags, splits: small, loaded whole), OUT/features/text (one row per
tag: small) and OUT/features/image (large: streamed row group by row group through a shuffle
buffer, never loaded whole; 1.7M x 2048 floats would be 14 GB). Trains on split `train` only,
leaving out oov tags and images without features; the held-out split is trained on by no member.

Each training image falls in one of K folds (a hash of its id). Member k trains on every fold
but k, so rank scores an image with the one member that never saw it with its own, possibly
wrong, tag: a model scoring its own training images repeats their wrong tags. Member K trains on
all folds; it is never published, only measured against (what in-sample scoring would show).
Every member holds out a validation part of its own training rows and keeps the weights of its
best validation epoch (early stopping). All members train in one pass over the stream per epoch.

Writes OUT/model/matcher.pt (every member's weights + config + training args + input metadata),
OUT/model/folds/ (each training image's fold) and OUT/model/training.json. Evaluation happens on
what rank publishes (export/evaluate.py), not here.

Plain torch on one machine (GPU when present): no Beam here.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import time
import copy
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn

from model import devices, schema, storage
from model.features import (  # noqa: F401 - NonFiniteFeatures is part of train's errors
    DEFAULT_READ_ROWS,
    ImageFeatureFiles,
    NonFiniteFeatures,
    find_image_features,
    iter_feature_rows,
)
from model.report import StageReport
from model.matcher import FoldedMatcher, Matcher, MatcherConfig, contrastive_loss, save_checkpoint
from model.tags import fold_for, in_validation

log = logging.getLogger(__name__)

STAGE = "train"


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


# ---------------------------------------------------------------------------
# Streaming features
# ---------------------------------------------------------------------------
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
        # the rows still held, in training-row order before the draw: a collection that fits the
        # buffer gets the same epoch whatever the layout of its feature shards (one file or a
        # worker's chunks each), so every runner trains the same model
        order = np.argsort(buf_y[:filled], kind="stable")[rng.permutation(filled)]
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
    # the row groups' order and the rows' shuffle draw from separate streams, so the number of
    # row groups (the shards' layout) does not shift the shuffle's draws
    unit_rng, row_rng = (np.random.default_rng(s) for s in rng.bit_generator.seed_seq.spawn(2))
    units = [features.units[i] for i in unit_rng.permutation(len(features.units))]
    rows = iter_feature_rows(units, wanted, features.dim, read_rows)
    return rebatch(shuffle_rows(rows, buffer_rows, row_rng), batch_size)


# ---------------------------------------------------------------------------
# Training data and result
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class TrainData:
    images: ImagesTable
    text: TextFeatures
    features: ImageFeatureFiles
    train_ids: dict[str, int]  # image_id -> training row
    train_tag: np.ndarray  # int64: tag index of each training row
    fold: np.ndarray  # int64: each training row's cross-fitting fold
    validation: np.ndarray  # bool [rows, members]: the row is in that member's validation part
    train_split_rows: int  # train-split rows in the index
    skipped_oov_tag: int

    def member_rows(self, member: int, folds: int) -> tuple[np.ndarray, np.ndarray]:
        """(trains on, validates on) masks over training rows: member k never sees fold k."""
        eligible = self.fold != member if member < folds else np.ones(len(self.fold), dtype=bool)
        return eligible & ~self.validation[:, member], eligible & self.validation[:, member]


def load_copy_groups(out: str) -> dict[str, str]:
    """image id -> its copy group (neighbours' lists: exact and near copies), only for images
    that have a copy; empty when neighbours has not run."""
    directory = schema.out_path(out, schema.NEIGHBOURS_DIR)
    files = storage.list_files(directory, schema.PARQUET_SUFFIX)
    if not files:
        return {}
    if schema.COPY_GROUP not in storage.open_parquet(files[0]).schema_arrow.names:
        log.warning("%s: neighbour lists without copy groups (an older neighbours run): folds by image; rerun neighbours", directory)
        return {}
    table = storage.read_parquet_dir(directory, columns=[schema.IMAGE_ID, schema.COPY_GROUP])
    ids, groups = table.column(0).to_pylist(), table.column(1).to_pylist()
    return {i: g for i, g in zip(ids, groups) if g is not None and g != i}


def prepare_data(out: str, folds: int = 5, validation_percent: int = 10) -> TrainData:
    """The training rows. Folds and validation parts are drawn by copy group, not by image: a copy
    of an image (carrying the same, maybe wrong, tag) in another fold would train the member that
    is meant to hold the image out."""
    images = load_images(out)
    group_of = load_copy_groups(out)
    text = load_text_features(out)
    features = find_image_features(out, stage=STAGE)
    tag_index = text.index()
    is_train = images.split == schema.SPLIT_TRAIN
    train_ids: dict[str, int] = {}
    train_tag: list[int] = []
    skipped_oov = 0
    # in index order (the manifest's), not the order the index shards were read in: training rows
    # are numbered the same whichever runner wrote the index
    rows = np.flatnonzero(is_train)
    rows = rows[np.argsort(images.ordinal[rows], kind="stable")]
    for image_id, tag in zip(images.image_id[rows], images.tag[rows]):
        idx = tag_index.get(tag)
        if idx is None:
            skipped_oov += 1
        elif image_id not in train_ids:
            train_ids[image_id] = len(train_tag)
            train_tag.append(idx)
    ids = list(train_ids)
    keys = [group_of.get(i, i) for i in ids]
    return TrainData(
        images=images,
        text=text,
        features=features,
        train_ids=train_ids,
        train_tag=np.asarray(train_tag, dtype=np.int64),
        fold=np.fromiter((fold_for(k, folds) for k in keys), dtype=np.int64, count=len(ids)),
        validation=np.array(
            [[in_validation(k, m, validation_percent) for m in range(folds + 1)] for k in keys], dtype=bool
        ).reshape(len(ids), folds + 1),
        train_split_rows=int(is_train.sum()),
        skipped_oov_tag=skipped_oov,
    )


@dataclasses.dataclass
class TrainResult(StageReport):
    """The stage's accounting (rows_in: train-split rows in the index; rows_out: rows some member
    trained on) plus what each member learned and where early stopping kept it."""

    epochs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    members: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    checkpoint: str = ""

    def summary_line(self) -> str:
        line = super().summary_line()
        if self.members:
            kept = ", ".join(str(m["best_epoch"]) for m in self.members)
            line += f"; {len(self.members) - 1} folds + 1 in-sample member, epochs kept {kept}"
        return line

    def report(self) -> str:
        """Per-epoch training and validation losses of every member, for a terminal."""
        lines = []
        for e in self.epochs:
            parts = "  ".join(
                f"{m['name']} {m['loss']:.3f}/{m['val_loss']:.3f}" if m["active"] else f"{m['name']} stopped"
                for m in e["members"]
            )
            lines.append(f"epoch {e['epoch']:>2}  {parts}  {e['seconds']:.1f} s")
        lines.append("(training/validation loss per member; a stopped member keeps its best validation epoch)")
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Criterion:
    """A training loss and the tags each batch is contrasted with: the batch's own distinct tags,
    or every tag of the collection (above ALL_TAGS_MAX tags: the batch's tags plus a fresh uniform
    sample of the others, a sampled softmax, so 100k tags cost a few thousand logits a row)."""

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    all_tags: bool


ALL_TAGS_MAX = 4096


def tag_softmax_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each image over the tags it is contrasted with: its own tag against all
    the others, which is the question the ranking asks ("more like its tag than the others?")."""
    return F.cross_entropy(logits, targets)


LOSSES: dict[str, Criterion] = {
    "contrastive": Criterion(contrastive_loss, all_tags=False),
    "all-tags": Criterion(tag_softmax_loss, all_tags=True),
}
DEFAULT_LOSS = "contrastive"


def _contrast_tags(tags: torch.Tensor, n_tags: int, all_tags: bool) -> torch.Tensor:
    if not all_tags:
        return torch.unique(tags)
    if n_tags <= ALL_TAGS_MAX:
        return torch.arange(n_tags, device=tags.device)
    sample = torch.randint(n_tags, (ALL_TAGS_MAX,), device=tags.device)
    return torch.unique(torch.cat([tags, sample]))


def _batch_loss(member: Matcher, x: torch.Tensor, tags: torch.Tensor, text_vectors: torch.Tensor, criterion: Criterion) -> torch.Tensor:
    # Images sharing a tag are never each other's negatives: the classes are tags, not images.
    classes = _contrast_tags(tags, len(text_vectors), criterion.all_tags)
    targets = torch.searchsorted(classes, tags)
    return criterion.loss(member(x, text_vectors[classes]), targets)


def train_one_epoch(
    model: FoldedMatcher,
    optimizers: Sequence[torch.optim.Optimizer],
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    data: TrainData,
    text_vectors: torch.Tensor,
    active: Sequence[bool],
    criterion: Criterion,
    device: torch.device,
) -> list[dict[str, float]]:
    """One pass over the stream for every member at once (one read of the features per epoch).

    Each batch is split per member into the rows it trains on and the rows of its validation
    part. Validation rows are scored before the step, so the validation loss is progressive
    (measured along the epoch on rows the member has never trained on) and needs no second pass.
    """
    folds = model.folds
    masks = [data.member_rows(m, folds) for m in range(folds + 1)]
    stats = [{"loss": 0.0, "rows": 0, "val_loss": 0.0, "val_rows": 0} for _ in masks]
    train_tag = torch.from_numpy(data.train_tag)
    for x_np, pos_np in batches:
        x_all = torch.from_numpy(x_np).to(device)
        tags_all = train_tag[torch.from_numpy(pos_np)].to(device)
        for m, member in enumerate(model.members):
            if not active[m]:
                continue
            fit_mask, val_mask = (torch.from_numpy(mask[pos_np]).to(device) for mask in masks[m])
            if val_mask.any():
                member.eval()
                with torch.no_grad():
                    val = _batch_loss(member, x_all[val_mask], tags_all[val_mask], text_vectors, criterion)
                n_val = int(val_mask.sum())
                stats[m]["val_loss"] += float(val) * n_val
                stats[m]["val_rows"] += n_val
            n_fit = int(fit_mask.sum())
            if n_fit < 2:
                continue
            member.train()
            loss = _batch_loss(member, x_all[fit_mask], tags_all[fit_mask], text_vectors, criterion)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"member {m}: the loss became {float(loss)} (lower --lr, or check the features)")
            optimizers[m].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[m].step()
            stats[m]["loss"] += float(loss.detach()) * n_fit
            stats[m]["rows"] += n_fit
    for s in stats:
        s["loss"] = s["loss"] / s["rows"] if s["rows"] else math.nan
        s["val_loss"] = s["val_loss"] / s["val_rows"] if s["val_rows"] else math.nan
    return stats


class EarlyStopping:
    """Per member: keep the weights of the epoch with the lowest validation loss; stop a member
    after `patience` epochs without an improvement of at least `min_delta`."""

    def __init__(self, members: int, patience: int, min_delta: float):
        self.patience = patience
        self.min_delta = min_delta
        self.best = [math.inf] * members
        self.best_epoch = [0] * members
        self.best_state: list[dict[str, torch.Tensor] | None] = [None] * members
        self.active = [True] * members

    def update(self, epoch: int, member: int, module: nn.Module, val_loss: float) -> None:
        if not self.active[member]:
            return
        if math.isnan(val_loss):  # no validation rows (tiny data): keep the latest weights
            val_loss = self.best[member] - 2 * self.min_delta if self.best[member] < math.inf else 0.0
        if val_loss < self.best[member] - self.min_delta:
            self.best[member], self.best_epoch[member] = val_loss, epoch
            self.best_state[member] = copy.deepcopy(module.state_dict())
        elif epoch - self.best_epoch[member] >= self.patience:
            self.active[member] = False

    def restore(self, model: FoldedMatcher) -> None:
        for member, state in zip(model.members, self.best_state):
            if state is not None:
                member.load_state_dict(state)


def resolve_device(name: str) -> torch.device:
    return torch.device(devices.torch_device_name(devices.parse_device(name), torch.cuda.is_available()))


def seed_everything(seed: int) -> None:
    # cuBLAS needs this before its first call to be deterministic
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def write_folds(out: str, data: TrainData) -> str:
    """OUT/model/folds/folds-00000-of-00001.parquet: the fold of every image some member trained
    on. An image absent from it (the held-out split, or added later) was trained on by no member."""
    table = pa.table(
        {schema.IMAGE_ID: list(data.train_ids), schema.FOLD: pa.array(data.fold, pa.int32())}, schema=schema.FOLDS_SCHEMA
    )
    path = schema.out_path(out, schema.FOLDS_DIR, f"{schema.FOLDS_PREFIX}-00000-of-00001{schema.PARQUET_SUFFIX}")
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression="snappy")
    storage.write_bytes(path, buf.getvalue().to_pybytes())
    return path


def main(cfg: argparse.Namespace) -> TrainResult:
    started = time.monotonic()
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    data = prepare_data(cfg.out, cfg.folds, cfg.validation_percent)
    if not data.train_ids:
        raise ValueError(f"{cfg.out}: no training rows (train split with a tag vector)")
    config = MatcherConfig(
        image_dim=data.features.dim, text_dim=data.text.dim, hidden=cfg.hidden, out_dim=cfg.out_dim, dropout=cfg.dropout
    )
    model = FoldedMatcher(config, cfg.folds).to(device)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay) for m in model.members]
    schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=max(cfg.epochs, 1)) for o in optimizers]
    criterion = LOSSES[cfg.loss]
    text_vectors = torch.from_numpy(data.text.vectors).to(device)
    names = [f"fold{m}" for m in range(cfg.folds)] + ["all"]
    log.info(
        "train: %d training images in %d folds (+1 in-sample member), %d tags with vectors, %s on %s",
        len(data.train_ids), cfg.folds, len(data.text.tags), config, device,
    )

    stopping = EarlyStopping(len(model.members), cfg.patience, cfg.min_delta)
    epochs: list[dict[str, Any]] = []
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.monotonic()
        rng = np.random.default_rng([cfg.seed, epoch])
        batches = epoch_batches(data.features, data.train_ids, cfg.batch_size, cfg.shuffle_buffer, rng, cfg.read_rows)
        active = list(stopping.active)
        stats = train_one_epoch(model, optimizers, batches, data, text_vectors, active, criterion, device)
        if not any(s["rows"] for s in stats):
            raise ValueError(f"{cfg.out}: no training image has features (run extract-images)")
        for m, (member, s) in enumerate(zip(model.members, stats)):
            if active[m]:
                schedulers[m].step()
                stopping.update(epoch, m, member, s["val_loss"])
        epochs.append(
            {
                "epoch": epoch,
                "seconds": round(time.monotonic() - t0, 3),
                "members": [{"name": n, "active": a, **s} for n, a, s in zip(names, active, stats)],
            }
        )
        log.info(
            "epoch %d/%d  %s  %.1f s", epoch, cfg.epochs,
            "  ".join(f"{n} {s['loss']:.3f}/{s['val_loss']:.3f}" for n, a, s in zip(names, active, stats) if a),
            epochs[-1]["seconds"],
        )
        if not any(stopping.active):
            log.info("every member stopped early after epoch %d", epoch)
            break
    stopping.restore(model)

    members = [
        {
            "name": n,
            "held_out_fold": m if m < cfg.folds else None,
            "best_epoch": stopping.best_epoch[m],
            "best_val_loss": None if math.isinf(stopping.best[m]) else stopping.best[m],
        }
        for m, n in enumerate(names)
    ]
    with_features = _rows_with_features(epochs[0]["members"], data, cfg.folds)
    details = {
        "skipped_oov_tag": data.skipped_oov_tag,
        "skipped_no_features": len(data.train_ids) - with_features,
        "folds": cfg.folds,
        "epochs_run": len(epochs),
    }
    inputs = {
        "image_dim": data.features.dim,
        "text_dim": data.text.dim,
        "image_features": data.features.metadata,
        "word_vectors": data.text.word_vectors,
        "tags_with_vectors": len(data.text.tags),
    }
    checkpoint = schema.out_path(cfg.out, schema.CHECKPOINT)
    save_checkpoint(checkpoint, model.cpu(), train_args=vars(cfg), inputs=inputs, members=members)
    folds_file = write_folds(cfg.out, data)
    storage.write_json(
        schema.out_path(cfg.out, schema.TRAINING_JSON),
        {"members": members, "epochs": epochs, "args": vars(cfg), "model": config.to_dict(), "inputs": inputs, "folds_file": folds_file},
    )
    result = TrainResult(
        stage=STAGE,
        rows_in=data.train_split_rows,
        rows_out=with_features,
        rows_skipped=data.train_split_rows - with_features,
        seconds=time.monotonic() - started,
        details=details,
        epochs=epochs,
        members=members,
        checkpoint=checkpoint,
    )
    result.save(cfg.out)
    return result


def _rows_with_features(first_epoch: list[dict[str, Any]], data: TrainData, folds: int) -> int:
    """Training rows that had features: the in-sample member sees every one of them (trained on
    or validated), so its first epoch counts them."""
    full = first_epoch[folds]
    return int(full["rows"] + full["val_rows"])


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsearch train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output root (local path or gs://...)")
    parser.add_argument("--folds", type=int, default=5, help="cross-fitting folds K (each image is scored by the member that held it out)")
    parser.add_argument("--epochs", type=int, default=20, help="at most this many epochs (early stopping may end a member sooner)")
    parser.add_argument("--patience", type=int, default=3, help="epochs without a validation improvement before a member stops")
    parser.add_argument("--min-delta", type=float, default=1e-3, help="smallest validation-loss drop that counts as an improvement")
    parser.add_argument("--validation-percent", type=int, default=10, help="share of each member's training images it validates on")
    parser.add_argument(
        "--loss", default=DEFAULT_LOSS, choices=sorted(LOSSES),
        help="contrastive: in-batch, each image against the batch's other tags (and each tag against the batch's images); "
        f"all-tags: each image against every tag (a sampled softmax above {ALL_TAGS_MAX} tags)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="images per step; their distinct tags are the classes")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (cosine-annealed per epoch)")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--hidden", type=int, default=512, help="hidden width of both towers")
    parser.add_argument("--out-dim", type=int, default=128, help="joint embedding size")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", default=devices.AUTO, type=devices.parse_device, choices=devices.DEVICES_WITH_AUTO, help="CPU, GPU or auto"
    )
    parser.add_argument("--shuffle-buffer", type=int, default=16384, help="rows held for shuffling (memory: rows x dim x 4 B)")
    parser.add_argument("--read-rows", type=int, default=DEFAULT_READ_ROWS, help="rows per Parquet read")
    return parser


def main_cli(argv: list[str] | None = None) -> TrainResult:
    cfg = get_args_parser().parse_args(argv)
    if cfg.folds < 2:
        raise ValueError("--folds must be at least 2")
    if not 0 < cfg.validation_percent < 100:
        raise ValueError("--validation-percent must be between 1 and 99")
    return main(cfg)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    _result = main_cli()
    print(_result.report())
    print(_result.summary_line())
