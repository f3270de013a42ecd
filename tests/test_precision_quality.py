"""bf16 image features rank as well as fp32 ones (issue: reduced precision must not hurt quality).

Real ImageNet weights (efficientnet_lite0's ship inside its package: no download) on a small
demo corpus; the ranking is cosine to each tag's mean feature, so no training noise hides or
fakes a difference.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model import encoders, inference, metrics, preprocess, schema
from pipelines.demo import corpus as demo_corpus

N_IMAGES = 400  # ~17 images a tag: one swapped pair moves the mean AUC by under 0.001


@pytest.fixture(scope="module")
def crops_and_truth(tmp_path_factory) -> tuple[torch.Tensor, list[str], list[str], preprocess.CropSpec, torch.nn.Module]:
    corpus = demo_corpus.generate_demo_corpus(tmp_path_factory.mktemp("bf16") / "corpus", n_images=N_IMAGES, seed=1)
    truth = [json.loads(line) for line in corpus.ground_truth.read_text().splitlines()]
    spec = encoders.build_encoder(encoders.EFFICIENTNET_LITE0, encoders.WEIGHTS_IMAGENET)
    crop = preprocess.CropSpec.from_transform(spec.transform)
    crops = [
        preprocess.crop_uint8(preprocess.decode_image((corpus.folder / row[schema.URI]).read_bytes(), crop.resize_size), crop)
        for row in truth
    ]
    return torch.stack(crops), [r[schema.TAG] for r in truth], [r[schema.TRUE_TAG] for r in truth], crop, spec.module


def _mean_feature_auc(features: np.ndarray, tags: list[str], true_tags: list[str]) -> float:
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    tag_array = np.asarray(tags)
    scores = np.empty(len(tags))
    for tag in set(tags):
        members = tag_array == tag
        centre = unit[members].mean(0)
        scores[members] = unit[members] @ (centre / np.linalg.norm(centre))
    labels = np.asarray([t == true for t, true in zip(tags, true_tags)])
    result = metrics.evaluate_rankings(tag_array, labels, np.arange(len(tags)), {"mean_feature": scores})
    return result["rankers"]["mean_feature"]["auc"]


def _features(crops_and_truth, precision: str) -> np.ndarray:
    crops, _, _, crop, encoder = crops_and_truth
    model = inference.prepare_model(encoder, "CPU", precision)  # as the stage runs it
    return np.concatenate([inference.forward_features(model, crops[i : i + 32], crop, "CPU") for i in range(0, len(crops), 32)])


@pytest.mark.skipif(not inference.cpu_supports_bf16(), reason="this CPU has no native bf16 (auto never picks it here)")
def test_bf16_features_rank_within_0_005_auc_of_fp32(crops_and_truth):
    _, tags, true_tags, _, _ = crops_and_truth
    fp32 = _features(crops_and_truth, inference.FP32)
    bf16 = _features(crops_and_truth, inference.BF16)
    auc_fp32 = _mean_feature_auc(fp32, tags, true_tags)
    auc_bf16 = _mean_feature_auc(bf16, tags, true_tags)
    assert auc_fp32 > 0.75, "the features must separate true from mislabelled images, or the check means nothing"
    assert abs(auc_bf16 - auc_fp32) < 0.005, (auc_fp32, auc_bf16)
    cosines = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert float(np.median(cosines)) > 0.995 and float(cosines.mean()) > 0.99


INT8_CALIBRATION_IMAGES = 64  # the stage's default is 256; fewer keep the test short


def test_int8_features_lose_under_0_005_auc_against_fp32(crops_and_truth):
    """The quantised encoder as the stage makes it: calibrated (the default method) on a hash-drawn
    sample of the corpus's own images, run through onnxruntime.

    The bound is on what int8 loses: on this corpus int8 ranked better than fp32 (mean-feature AUC
    0.9472 vs 0.9410 when written), which at 400 images is within the noise of one swap in a few
    tags; the cosines bound how far the features themselves may move."""
    from model import quantize

    crops, tags, true_tags, crop, encoder = crops_and_truth
    fp32 = _features(crops_and_truth, inference.FP32)
    sample = quantize.calibration_ids([str(i) for i in range(len(crops))], INT8_CALIBRATION_IMAGES)
    calibration = crops[[int(i) for i in sample]].numpy()
    model = quantize.quantize(quantize.export_onnx(encoder, crop), calibration, encoders.EFFICIENTNET_LITE0)
    session = quantize.session(model)
    int8 = np.concatenate([quantize.run_batch(session, crops[i : i + 32].numpy()) for i in range(0, len(crops), 32)])
    auc_fp32 = _mean_feature_auc(fp32, tags, true_tags)
    auc_int8 = _mean_feature_auc(int8, tags, true_tags)
    assert auc_fp32 > 0.75, "the features must separate true from mislabelled images, or the check means nothing"
    assert auc_int8 > auc_fp32 - 0.005, (auc_fp32, auc_int8)
    cosines = (fp32 * int8).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(int8, axis=1)
    assert float(np.median(cosines)) > 0.99 and float(cosines.mean()) > 0.985, (np.median(cosines), cosines.mean())


def test_auto_precision_follows_the_cpu(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: False)
    assert inference.resolve_precision("auto", "CPU") == inference.FP32  # never emulated bf16
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: True)
    assert inference.resolve_precision("auto", "CPU") == inference.BF16
    assert inference.resolve_precision("auto", "GPU") == inference.FP16
    assert inference.resolve_precision("fp32", "CPU") == inference.FP32
    with pytest.raises(ValueError):
        inference.resolve_precision("fp16", "CPU")
    with pytest.raises(ValueError):
        inference.resolve_precision("int4", "CPU")
    # a GPU worker that finds no CUDA does not run fp16 on its CPU
    assert inference.runtime_precision(inference.FP16, torch.device("cpu")) == inference.BF16
