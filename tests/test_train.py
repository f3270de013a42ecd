"""Training on generated features with a known structure: each true class has its own mean
direction, 20% of the crawled tags are wrong, and a ground truth file says which."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from model import schema, storage, train
from model.matcher import MatcherConfig, Matcher, contrastive_loss, load_checkpoint
from model.tags import image_id_for
from tests import builders

IMAGE_DIM = 24
TEXT_DIM = 12
TAGS = ["apple", "boat", "cloud", "dog", "engine", "forest"]
OOV_TAG = "zzyzx"


def write_corpus(out: Path, n: int = 720, seed: int = 0, files: int = 2, row_group: int = 50) -> dict:
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((len(TAGS), IMAGE_DIM))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    uris = [f"https://example.com/img/{i}.jpg" for i in range(n)]
    ids = [image_id_for(u) for u in uris]
    true = rng.integers(0, len(TAGS), n)
    flipped = rng.random(n) < 0.2
    crawled = np.where(flipped, (true + rng.integers(1, len(TAGS), n)) % len(TAGS), true)
    tags = [TAGS[c] for c in crawled]
    tags[-12:] = [OOV_TAG] * 12  # a tag with no vector: never trained on
    ordinals = rng.permutation(n)  # index order knows nothing about the truth
    images = builders.image_rows(zip(uris, tags), ordinals=ordinals.tolist())
    builders.write_images(out, images)

    features = (directions[true] * 3.0 + rng.standard_normal((n, IMAGE_DIM))).astype(np.float32)
    without_features = set(ids[:5])  # e.g. unreadable images: no feature row
    keep = [i for i in range(n) if ids[i] not in without_features]
    for f, part in enumerate(np.array_split(np.asarray(keep), files)):
        builders.write_image_features(
            out,
            {ids[i]: features[i] for i in part},
            content_hashes=dict.fromkeys((ids[i] for i in part), "h"),
            row_group_size=row_group,
            index=f,
            count=files,
        )

    text = rng.standard_normal((len(TAGS), TEXT_DIM)).astype(np.float32)
    builders.write_text_features(out, {**dict(zip(TAGS, text)), OOV_TAG: None})

    gt = out / "ground_truth.jsonl"
    gt.write_text("".join(json.dumps({"uri": u, "tag": t, "true_tag": TAGS[c]}) + "\n" for u, t, c in zip(uris, tags, true)))
    train_ids = {ids[i] for i in range(n) if images[i][schema.SPLIT] == schema.SPLIT_TRAIN and tags[i] != OOV_TAG}
    return {"ids": ids, "gt": str(gt), "train_ids": train_ids, "without_features": without_features}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("train") / "out"
    return out, write_corpus(out)


def test_stream_yields_every_train_row_once_per_epoch(corpus):
    out, info = corpus
    data = train.prepare_data(str(out))
    assert len(data.features.files) == 2 and len(data.features.units) > 4  # several files and row groups
    assert set(data.train_ids) == info["train_ids"]
    expected = sorted(data.train_ids[i] for i in info["train_ids"] - info["without_features"])
    orders = []
    for epoch in range(2):
        rng = np.random.default_rng([0, epoch])
        batches = list(train.epoch_batches(data.features, data.train_ids, 32, 70, rng, read_rows=16))
        assert all(len(x) == 32 for x, _ in batches[:-1]) and 0 < len(batches[-1][0]) <= 32
        positions = np.concatenate([p for _, p in batches])
        assert sorted(positions.tolist()) == expected  # each once, none from test or oov
        orders.append(positions)
        # features travel with their rows
        x0, p0 = batches[0]
        assert x0.shape == (32, IMAGE_DIM) and x0.dtype == np.float32 and p0.dtype == np.int64
    assert not np.array_equal(orders[0], orders[1])  # reshuffled every epoch


def test_shuffle_buffer_keeps_features_with_their_rows():
    rng = np.random.default_rng(1)
    chunks = [(np.arange(s, s + 7, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32), np.arange(s, s + 7)) for s in range(0, 70, 7)]
    pieces = list(train.shuffle_rows(chunks, buffer_rows=10, rng=rng))
    xs = np.concatenate([p[0] for p in pieces])
    ys = np.concatenate([p[1] for p in pieces])
    assert sorted(ys.tolist()) == list(range(70))
    np.testing.assert_array_equal(xs[:, 0], ys.astype(np.float32))
    assert ys.tolist() != list(range(70))


def test_rebatch_exact_sizes():
    pieces = [(np.zeros((n, 2)), np.arange(n)) for n in (5, 1, 13, 2)]
    sizes = [len(x) for x, _ in train.rebatch(pieces, 4)]
    assert sizes == [4, 4, 4, 4, 4, 1]


def test_contrastive_loss_same_tag_images_are_not_negatives():
    # two images of tag 0 and one of tag 1, perfectly separated logits: loss near zero,
    # although images 0 and 1 "compete" for tag 0's column
    logits = torch.tensor([[20.0, -20.0], [20.0, -20.0], [-20.0, 20.0]])
    targets = torch.tensor([0, 0, 1])
    loss = contrastive_loss(logits, targets)
    # text->image for tag 0 has two positives sharing the mass: -log(1) = 0, not log(2)
    assert loss.item() < 1e-6
    wrong = contrastive_loss(logits, torch.tensor([1, 1, 0]))
    assert wrong.item() > 10


def _args(out: Path, **overrides) -> list[str]:
    args = {"--out": str(out), "--epochs": "12", "--batch-size": "64", "--hidden": "64", "--lr": "3e-3",
            "--shuffle-buffer": "200", "--read-rows": "32", "--device": "cpu", "--seed": "7", "--folds": "3"}
    args.update({k: str(v) for k, v in overrides.items()})
    return [t for kv in args.items() for t in kv]


def _fold_scores(model, out: Path, info: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(out-of-fold cosine, in-sample cosine, label) of every training image with features."""
    data = train.prepare_data(str(out), folds=model.folds)
    gt = {json.loads(line)["uri"]: json.loads(line) for line in Path(info["gt"]).read_text().splitlines()}
    truth = {image_id_for(u): r["true_tag"] == r["tag"] for u, r in gt.items()}
    held, in_sample, labels = [], [], []
    with torch.no_grad():
        text = model.text_towers()(torch.from_numpy(data.text.vectors))  # [tags, members, d]
        for x, pos in train.iter_feature_rows(data.features.units, data.train_ids, data.features.dim):
            images = model.image_towers()(torch.from_numpy(x))  # [n, members, d]
            cos = torch.einsum("nmd,nmd->nm", images, text[torch.from_numpy(data.train_tag[pos])]).numpy()
            held += cos[np.arange(len(pos)), data.fold[pos]].tolist()
            in_sample += cos[:, model.full_member].tolist()
    ids = {p: i for i, p in data.train_ids.items()}
    for x, pos in train.iter_feature_rows(data.features.units, data.train_ids, data.features.dim):
        labels += [truth[ids[p]] for p in pos]
    return np.asarray(held), np.asarray(in_sample), np.asarray(labels)


def test_cross_fitted_members_score_held_out_images_better_than_in_sample(corpus):
    out, info = corpus
    result = train.main_cli(_args(out))
    assert len(result.members) == 4 and result.members[-1]["held_out_fold"] is None
    assert all(1 <= m["best_epoch"] <= 12 for m in result.members)
    assert result.rows_out == len(info["train_ids"] - info["without_features"])
    assert result.details["skipped_oov_tag"] > 0
    assert result.details["skipped_no_features"] == len(info["train_ids"] & info["without_features"])
    assert result.rows_in == result.rows_out + result.rows_skipped
    assert result.report().startswith("epoch  1  fold0 ")

    model, ckpt = load_checkpoint(str(out / schema.CHECKPOINT))
    assert model.folds == 3 and ckpt["folds"] == 3
    assert MatcherConfig.from_dict(ckpt["config"]) == MatcherConfig(IMAGE_DIM, TEXT_DIM, hidden=64, out_dim=128, dropout=0.1)
    assert ckpt["inputs"]["image_features"]["imgsearch.encoder"] == "test-encoder"
    assert ckpt["train_args"]["seed"] == 7
    emb = model.image_towers()(torch.randn(3, IMAGE_DIM))
    assert emb.shape == (3, 4, 128)
    torch.testing.assert_close(emb.norm(dim=2), torch.ones(3, 4))

    # the fold file names every training image once, with the fold hashed from its id
    folds = storage.read_parquet_dir(str(out / schema.FOLDS_DIR))
    assert sorted(folds.column(schema.IMAGE_ID).to_pylist()) == sorted(info["train_ids"])
    assert {f for f in folds.column(schema.FOLD).to_pylist()} == {0, 1, 2}

    held, in_sample, labels = _fold_scores(model, out, info)
    from model.metrics import roc_auc

    # wrongly tagged images are found by the members that never trained on them
    assert roc_auc(held, labels) > 0.9
    assert in_sample.shape == held.shape
    saved = storage.read_json(str(out / schema.TRAINING_JSON))
    assert [m["name"] for m in saved["members"]] == ["fold0", "fold1", "fold2", "all"]


def test_each_member_never_trains_on_its_fold_or_its_validation_part(corpus):
    out, _ = corpus
    data = train.prepare_data(str(out), folds=4, validation_percent=10)
    for member in range(5):
        fit, val = data.member_rows(member, 4)
        assert not (fit & val).any()
        if member < 4:
            assert not fit[data.fold == member].any() and not val[data.fold == member].any()
            assert (fit | val)[data.fold != member].all()
        else:
            assert (fit | val).all()
        assert 0.03 < val.mean() < 0.2


def test_early_stopping_keeps_the_best_epoch():
    stopping = train.EarlyStopping(members=1, patience=2, min_delta=0.0)
    module = torch.nn.Linear(1, 1)
    for epoch, loss in enumerate([1.0, 0.5, 0.7, 0.6, 0.4], start=1):
        with torch.no_grad():
            module.weight.fill_(epoch)
        stopping.update(epoch, 0, module, loss)
    assert stopping.best_epoch == [2] and stopping.active == [False]  # stopped after epoch 4
    model = type("M", (), {"members": [module]})()
    stopping.restore(model)
    assert module.weight.item() == 2.0


def test_training_is_deterministic(corpus):
    out, _ = corpus
    a = train.main_cli(_args(out, **{"--epochs": 2}))
    b = train.main_cli(_args(out, **{"--epochs": 2}))
    assert [[m["loss"] for m in e["members"]] for e in a.epochs] == [[m["loss"] for m in e["members"]] for e in b.epochs]


def test_non_finite_features_stop_training_and_name_the_shard(tmp_path: Path):
    out = tmp_path / "out"
    write_corpus(out, n=60, files=1)
    path = out / schema.IMAGE_FEATURES_DIR / "features-00000-of-00001.parquet"
    table = pq.read_table(path)
    values = table.column(schema.EMBEDDING).combine_chunks().flatten().to_numpy().copy()
    values[3] = np.nan
    column = pa.FixedSizeListArray.from_arrays(pa.array(values), IMAGE_DIM)
    pq.write_table(table.set_column(1, schema.EMBEDDING, column), path)
    with pytest.raises(train.NonFiniteFeatures, match="features-00000-of-00001.parquet"):
        train.main_cli(_args(out, **{"--epochs": 1}))


def test_no_training_rows_is_a_clear_error(tmp_path: Path):
    out = tmp_path / "out"
    write_corpus(out, n=40)
    # every tag oov: nothing to train on
    text_dir = out / schema.TEXT_FEATURES_DIR
    table = pq.read_table(text_dir / "text-00000-of-00001.parquet")
    oov = table.set_column(
        table.schema.get_field_index(schema.EMBEDDING), schema.EMBEDDING, pa.nulls(table.num_rows, table.schema.field(schema.EMBEDDING).type)
    )
    pq.write_table(oov, text_dir / "text-00000-of-00001.parquet")
    with pytest.raises(ValueError, match="no training rows"):
        train.main_cli(_args(out, **{"--epochs": 1}))


def test_matcher_shapes():
    m = Matcher(MatcherConfig(image_dim=5, text_dim=3, hidden=8))
    logits = m(torch.randn(4, 5), torch.randn(2, 3))
    assert logits.shape == (4, 2)
    assert m.logit_scale().detach().item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_text_vectors_of_the_wrong_length_are_refused(tmp_path: Path):
    out = tmp_path / "out"
    write_corpus(out, n=40)
    path = out / schema.TEXT_FEATURES_DIR / "text-00000-of-00001.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    rows[0][schema.EMBEDDING] = rows[0][schema.EMBEDDING][:-1]
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    with pytest.raises(ValueError, match="not all 12 long"):
        train.main_cli(_args(out, **{"--epochs": 1}))


def test_an_image_committed_twice_is_read_once(tmp_path: Path):
    out = tmp_path / "out"
    write_corpus(out, n=60, files=1)
    path = out / schema.IMAGE_FEATURES_DIR / "features-00000-of-00001.parquet"
    table = pq.read_table(path)
    # a retried bundle committed the same chunk again, under another name
    pq.write_table(table, out / schema.IMAGE_FEATURES_DIR / "features-00000-of-00001-again.parquet")
    data = train.prepare_data(str(out), folds=2)
    positions = np.concatenate([p for _, p in train.iter_feature_rows(data.features.units, data.train_ids, data.features.dim)])
    assert len(positions) == len(set(positions.tolist()))


def test_all_tags_loss_contrasts_each_image_with_every_tag(monkeypatch):
    tags = torch.tensor([2, 0, 2])
    classes = train._contrast_tags(tags, 5, all_tags=True)
    assert classes.tolist() == [0, 1, 2, 3, 4]
    assert train._contrast_tags(tags, 5, all_tags=False).tolist() == [0, 2]
    # above ALL_TAGS_MAX: the batch's own tags are always among the sampled classes
    monkeypatch.setattr(train, "ALL_TAGS_MAX", 3)
    torch.manual_seed(0)
    sampled = train._contrast_tags(torch.tensor([7, 9]), 1000, all_tags=True)
    assert {7, 9} <= set(sampled.tolist()) and len(sampled) <= 5
    assert sampled.tolist() == sorted(set(sampled.tolist()))


def test_all_tags_loss_pushes_an_image_away_from_tags_absent_from_its_batch():
    torch.manual_seed(0)
    member = Matcher(MatcherConfig(image_dim=4, text_dim=3, hidden=8, out_dim=4, dropout=0.0))
    text = torch.eye(3)
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.9, 0.1, 0.0, 0.0]])
    tags = torch.tensor([0, 0])  # the batch holds one tag: in-batch contrast has nothing to learn
    in_batch = train._batch_loss(member, x, tags, text, train.LOSSES["contrastive"])
    assert float(in_batch) == pytest.approx(0.0, abs=1e-6)
    optimiser = torch.optim.Adam(member.parameters(), lr=0.05)
    before = member(x, text).softmax(dim=1)[:, 0].mean().item()
    for _ in range(30):
        optimiser.zero_grad()
        train._batch_loss(member, x, tags, text, train.LOSSES["all-tags"]).backward()
        optimiser.step()
    assert member(x, text).softmax(dim=1)[:, 0].mean().item() > max(before, 0.9)


def test_an_epoch_is_the_same_whatever_the_layout_of_the_feature_shards(tmp_path: Path):
    """One file, or a worker's chunks each: a collection that fits the shuffle buffer trains on the
    same batches, so every runner (in-process, multi-process, portable) trains the same model."""
    from model.features import find_image_features

    rng = np.random.default_rng(0)
    vectors = {f"img{i:03d}": rng.normal(size=4).tolist() for i in range(40)}
    wanted = {image_id: pos for pos, image_id in enumerate(sorted(vectors))}
    epochs = []
    for layout, (count, row_group) in {"one": (1, 64), "chunks": (3, 5)}.items():
        out = tmp_path / layout
        names = sorted(vectors)
        for s in range(count):
            part = names[s::count]
            builders.write_image_features(out, {n: vectors[n] for n in part}, encoder="tiny", row_group_size=row_group, index=s, count=count)
        features = find_image_features(str(out))
        batches = train.epoch_batches(features, wanted, 16, 1024, np.random.default_rng([0, 1]))
        epochs.append([pos.tolist() for _, pos in batches])
    assert epochs[0] == epochs[1]
    assert sorted(p for batch in epochs[0] for p in batch) == list(range(40))
