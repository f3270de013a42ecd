"""Stage extract-images: DoFns directly, the composites under TestPipeline, the whole run([...])."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from model import encoders, inference, preprocess, schema, tags
from pipelines import encode_handlers, feature_shards, image_decoding, worker_models
from pipelines import extract_images as ei
from tests.builders import image_rows, write_image_features, write_images
from tests.conftest import write_broken_images, write_image_collection

LITE = encoders.EFFICIENTNET_LITE0
N_GOOD = 24
TAGS = ["cat", "dog", "red car", "tree"]


@pytest.fixture
def corpus(tmp_path: Path) -> dict:
    """24 good images, the 3 broken files, one missing file, and one image listed under two tags."""
    good = write_image_collection(tmp_path / "images", N_GOOD, TAGS)
    broken = [str(p) for p in write_broken_images(tmp_path / "images")]
    missing = str(tmp_path / "images" / "missing.jpg")
    listed = [(r["uri"], r["tag"]) for r in good] + [(u, "cat") for u in broken] + [(missing, "dog")]
    listed.append((good[0]["uri"], "Kitten"))  # the same picture under a second tag
    out = tmp_path / "out"
    write_images(out, image_rows(listed))
    return {"out": out, "good": [r["uri"] for r in good], "broken": broken, "missing": missing, "listed": listed}


def _lite_state(tmp_path: Path) -> tuple[encoders.EncoderSpec, str]:
    spec = encoders.build_encoder(LITE, encoders.WEIGHTS_RANDOM)
    return spec, worker_models.save_encoder_state(spec, str(tmp_path))


# ---------------------------------------------------------------------------
# DoFns and helpers, called directly
# ---------------------------------------------------------------------------
def test_read_image_fn_reads_bytes_and_tags_missing_files(corpus: dict):
    fn = image_decoding.ReadImageFn()
    uri = corpus["good"][0]
    [(image_id, got_uri, data)] = list(fn.process(("id0", uri)))
    assert (image_id, got_uri) == ("id0", uri) and data == Path(uri).read_bytes()

    [failed] = list(fn.process(("id1", corpus["missing"])))
    assert failed.tag == image_decoding.FAILED
    assert failed.value[schema.IMAGE_ID] == "id1" and failed.value[schema.URI] == corpus["missing"]
    assert failed.value[schema.STAGE] == ei.STAGE and failed.value[schema.ERROR]
    assert "missing.jpg" in failed.value[schema.MESSAGE]


def test_decode_image_fn_yields_keyed_tensors_and_tags_bad_images(corpus: dict):
    fn = image_decoding.DecodeImageFn(LITE, encoders.WEIGHTS_RANDOM)
    fn.setup()
    uri = corpus["good"][1]
    data = Path(uri).read_bytes()
    [(key, tensor)] = list(fn.process(("id", uri, data)))
    with Image.open(uri) as img:
        assert (key.width, key.height) == img.size
    assert key == image_decoding.ImageKey("id", uri, hashlib.sha256(data).hexdigest(), key.width, key.height)
    # a uint8 crop: normalisation happens per batch on the inference device
    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.uint8

    errors = {}
    for path in corpus["broken"]:
        [failed] = list(fn.process(("x", path, Path(path).read_bytes())))
        assert failed.tag == image_decoding.FAILED
        errors[Path(path).name] = failed.value[schema.ERROR]
    assert errors == {"truncated.jpg": "OSError", "empty.jpg": "UnidentifiedImageError", "text.jpg": "UnidentifiedImageError"}


def _extractor(precision: str = inference.FP32) -> tuple[encoders.EncoderSpec, preprocess.CropSpec, inference.FeatureExtractor]:
    spec = encoders.build_encoder(LITE, encoders.WEIGHTS_RANDOM)
    crop = worker_models.crop_spec(spec)
    return spec, crop, inference.FeatureExtractor(spec.module, crop, precision)


def test_inference_fn_returns_pooled_vectors_per_image():
    spec, crop, extractor = _extractor()
    batch = [torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    results = list(encode_handlers.extractor_inference_fn(batch, extractor, "cpu", None, "m"))
    assert len(results) == 3
    assert all(r.inference.shape == (1280,) and r.inference.dtype == np.float32 for r in results)
    # the same as normalising by hand with the weights' mean and std and running the encoder
    mean = torch.tensor(crop.mean).view(3, 1, 1)
    std = torch.tensor(crop.std).view(3, 1, 1)
    with torch.no_grad():
        expected = spec.module(((batch[2].float() / 255 - mean) / std)[None])[0].numpy()
    np.testing.assert_allclose(results[2].inference, expected, rtol=1e-4, atol=1e-4)


def test_device_decoding_takes_plain_jpegs_raw_and_everything_else_through_pillow(corpus: dict):
    fn = image_decoding.DecodeImageFn(LITE, encoders.WEIGHTS_RANDOM, decode_on_device=True)
    fn.setup()
    payloads = {}
    for uri in corpus["good"][:6]:
        [(key, payload)] = list(fn.process(("id", uri, Path(uri).read_bytes())))
        with Image.open(uri) as img:
            assert (key.width, key.height) == img.size
            payloads[uri] = payload
            # raw bytes (1-D) for JPEGs the device decoder takes as they are; crops otherwise
            assert (payload.ndim == 1) == (img.format == "JPEG")
    assert {p.ndim for p in payloads.values()} == {1, 3}
    # broken files still fail here, with the same reasons as with Pillow
    for path in corpus["broken"]:
        [failed] = list(fn.process(("x", path, Path(path).read_bytes())))
        assert failed.tag == image_decoding.FAILED


def test_feature_extractor_decodes_raw_jpegs_like_pillow_and_isolates_a_bad_one(corpus: dict):
    _spec, crop, extractor = _extractor()
    jpegs = [u for u in corpus["good"] if u.endswith(".jpg")][:3]
    raw = [torch.frombuffer(bytearray(Path(u).read_bytes()), dtype=torch.uint8) for u in jpegs]
    crops = [preprocess.crop_uint8(preprocess.decode_image(Path(u).read_bytes(), crop.resize_size), crop) for u in jpegs]
    broken = torch.frombuffer(bytearray(b"\xff\xd8\xff\xe0 not really a jpeg"), dtype=torch.uint8)
    features, errors = extractor(raw + [broken] + crops)
    assert errors[:3] == [None] * 3 and errors[4:] == [None] * 3
    assert errors[3] is not None and isinstance(errors[3][0], str)
    for a, b in zip(features[:3], features[4:]):
        cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        assert cosine > 0.99  # torchvision's decoder and resize vs Pillow's: the same picture


def test_bf16_features_stay_close_to_fp32(corpus: dict):
    _spec, crop, extractor = _extractor()
    crops = torch.stack([preprocess.crop_uint8(preprocess.decode_image(Path(u).read_bytes(), crop.resize_size), crop) for u in corpus["good"][:4]])
    fp32 = inference.forward_features(inference.prepare_model(extractor.encoder, "CPU", inference.FP32), crops, crop, "CPU")
    bf16 = inference.forward_features(inference.prepare_model(extractor.encoder, "CPU", inference.BF16), crops, crop, "CPU")
    cosines = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cosines.min() > 0.999


def test_inference_failure_fn_makes_one_row_per_image_of_the_batch():
    keys = [image_decoding.ImageKey(f"id{i}", f"u{i}", "h", 1, 1) for i in range(2)]
    batch = [(k, torch.zeros(1)) for k in keys]
    rows = list(ei.InferenceFailureFn().process((batch, (RuntimeError, "RuntimeError('boom')", []))))
    assert [(r[schema.IMAGE_ID], r[schema.ERROR], r[schema.MESSAGE]) for r in rows] == [
        ("id0", "RuntimeError", "RuntimeError('boom')"),
        ("id1", "RuntimeError", "RuntimeError('boom')"),
    ]


def test_feature_row_fn_logs_progress(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    monkeypatch.setattr(ei, "PROGRESS_EVERY_S", 0.0)
    fn = ei.FeatureRowFn()
    fn.setup()
    key = image_decoding.ImageKey("id", "u", "h", 3, 2)
    with caplog.at_level("INFO", logger=ei.log.name):
        for _ in range(2):
            [row] = list(fn.process((key, PredictionResult(None, np.arange(4, dtype=np.float32)))))
    embedding = row.pop(schema.EMBEDDING)
    assert row == {schema.IMAGE_ID: "id", schema.CONTENT_HASH: "h", schema.WIDTH: 3, schema.HEIGHT: 2}
    assert embedding.dtype == np.float32 and embedding.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert "extract-images: 2 images done" in caplog.text


def test_feature_row_fn_turns_an_item_error_into_a_failure():
    fn = ei.FeatureRowFn()
    fn.setup()
    key = image_decoding.ImageKey("id", "u", "h", 3, 2)
    [failed] = list(fn.process((key, PredictionResult(None, ("OSError", "bad Huffman code")))))
    assert failed.tag == image_decoding.FAILED
    assert (failed.value[schema.IMAGE_ID], failed.value[schema.ERROR], failed.value[schema.MESSAGE]) == (
        "id",
        "OSError",
        "bad Huffman code",
    )


def test_clear_previous_failures_only_touches_this_stages_failure_shards(tmp_path: Path):
    out = str(tmp_path)
    features = tmp_path / schema.IMAGE_FEATURES_DIR / "features-00000-of-00003.parquet"
    stale = tmp_path / schema.FAILURES_DIR / "extract-images-00000-of-00001.parquet"
    kept = [tmp_path / schema.FAILURES_DIR / "index-00000-of-00001.parquet", tmp_path / schema.TEXT_FEATURES_DIR / "t.parquet"]
    for p in [features, stale, *kept]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    # a running or interrupted job's temporary shard is never one of the finished shards
    temp = tmp_path / schema.IMAGE_FEATURES_DIR / "beam-temp-features-0123abcd" / "part.parquet"
    temp.parent.mkdir(parents=True)
    temp.write_bytes(b"half a shard")
    assert feature_shards.feature_shards(out) == [str(features)]
    # a rerun, --full or not, keeps the features (--full replaces them only once it is done) but
    # redoes the failures
    assert ei.clear_previous_failures(out) == [str(stale)]
    assert features.exists() and not stale.exists() and all(p.exists() for p in kept)
    assert ei.clear_previous_failures(out) == []


def test_an_interrupted_full_run_is_resumed_only_by_the_same_encoder(tmp_path: Path):
    out = str(tmp_path)
    full_run = Path(feature_shards.full_run_dir(out))
    full_run.mkdir(parents=True)

    def staged_by(encoder: str) -> Path:
        written = write_image_features(tmp_path, {"a": [1.0, 0.0]}, encoder=encoder)
        return written.rename(full_run / written.name)

    this_run = {
        schema.META_ENCODER: b"test-encoder",
        schema.META_WEIGHTS: b"random",
        schema.META_DIM: b"2",
        schema.META_PRECISION: inference.METADATA_NAMES[inference.FP32].encode(),
    }
    same = staged_by("test-encoder")
    assert feature_shards.resumable_full_run(out, this_run) == [str(same)]
    same.unlink()
    other = staged_by("another-encoder")
    assert feature_shards.resumable_full_run(out, this_run) == []
    assert not other.exists()  # another vector space: removed, never mixed in
    # the folder is never read downstream
    assert feature_shards.feature_shards(out) == []


def test_the_stages_parts_count_and_log_under_its_name():
    # the counters run() reads are in the stage's namespace: every part must use that one
    assert image_decoding.STAGE == encode_handlers.STAGE == worker_models.STAGE == feature_shards.STAGE == ei.STAGE


def test_cli_defaults():
    args = ei.get_args_parser().parse_args(["--out", "o"])
    assert (args.image_model, args.weights, args.device, args.num_shards) == ("resnet50", "imagenet", "CPU", 0)
    assert ei._batch_size(args) == 16
    assert (args.precision, args.decode) == ("auto", "auto")
    gpu = ei.get_args_parser().parse_args(["--out", "o", "--device", "gpu"])
    assert gpu.device == "GPU" and ei._batch_size(gpu) == 256
    with pytest.raises(SystemExit):
        ei.get_args_parser().parse_args(["--out", "o", "--image-model", "vgg"])


# ---------------------------------------------------------------------------
# Composites under TestPipeline
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["CPU", "GPU"])
def test_extract_image_features_composite(corpus: dict, tmp_path: Path, device: str, beam_pipeline):
    if device == "GPU" and not torch.cuda.is_available():
        # without CUDA a GPU run fails loudly (tests/test_dataflow_ready.py), never falls back to CPU
        pytest.skip("no CUDA here")
    _, state_path = _lite_state(tmp_path)
    good = corpus["good"][:5]
    refs = [(tags.image_id_for(u), u) for u in good + corpus["broken"] + [corpus["missing"]]]
    with beam_pipeline as p:
        out = p | beam.Create(refs) | ei.ExtractImageFeatures(LITE, encoders.WEIGHTS_RANDOM, state_path, device, 4)
        dims = out["features"] | "Dims" >> beam.Map(lambda r: (r[schema.IMAGE_ID], len(r[schema.EMBEDDING])))
        assert_that(dims, equal_to([(tags.image_id_for(u), 1280) for u in good]), label="CheckFeatures")
        errors = out["failures"] | "Errors" >> beam.Map(lambda r: (Path(r[schema.URI]).name, r[schema.ERROR]))
        assert_that(
            errors,
            equal_to(
                [
                    ("truncated.jpg", "OSError"),
                    ("empty.jpg", "UnidentifiedImageError"),
                    ("text.jpg", "UnidentifiedImageError"),
                    ("missing.jpg", "FileNotFoundError"),
                ]
            ),
            label="CheckFailures",
        )


def test_encode_images_sends_failed_batches_to_the_dead_letter_output(tmp_path: Path, beam_pipeline):
    spec, state_path = _lite_state(tmp_path)
    good = image_decoding.ImageKey("good", "g.jpg", "h", 10, 10)
    bad = image_decoding.ImageKey("bad", "b.jpg", "h", 10, 10)
    # batch size 1 so the bad tensor fails alone: a one-channel crop breaks the extractor's contract
    handler = encode_handlers.make_model_handler(LITE, worker_models.crop_spec(spec), inference.FP32, state_path, "CPU", batch_size=1)
    crop = torch.zeros(3, 224, 224, dtype=torch.uint8)
    with beam_pipeline as p:
        out = p | beam.Create([(good, crop), (bad, crop[:1])]) | ei.EncodeImages(handler)
        ids = out["features"] | "Ids" >> beam.Map(lambda r: r[schema.IMAGE_ID])
        assert_that(ids, equal_to(["good"]), label="CheckFeatures")
        failed = out["failures"] | "Failed" >> beam.Map(lambda r: (r[schema.IMAGE_ID], r[schema.URI], r[schema.ERROR]))
        assert_that(failed, equal_to([("bad", "b.jpg", "ValueError")]), label="CheckFailures")


# ---------------------------------------------------------------------------
# The whole stage
# ---------------------------------------------------------------------------
def test_run_writes_features_failures_and_an_honest_report(corpus: dict):
    out = corpus["out"]
    unreadable = out / schema.IMAGE_FEATURES_DIR / "features-00000-of-00009.parquet"
    unreadable.parent.mkdir(parents=True, exist_ok=True)
    unreadable.write_bytes(b"stale")

    report = ei.run(
        # 4 of 28 images are broken on purpose: over the default --max-failure-rate
        ["--out", str(out), "--image-model", LITE, "--weights", "random", "--batch-size", "8", "--precision", "fp32", "--max-failure-rate", "1"],
        save_main_session=False,
    )

    # accounting: distinct images in; the duplicate listing is not a second image
    assert report.stage == ei.STAGE
    assert report.rows_in == N_GOOD + 3 + 1
    assert report.rows_out == N_GOOD and report.rows_failed == 4 and report.rows_skipped == 0
    assert report.rows_in == report.rows_out + report.rows_failed + report.rows_skipped
    assert report.details[ei.INDEX_ROWS] == len(corpus["listed"]) == N_GOOD + 5
    assert report.details["failed_OSError"] == 1
    assert report.details["failed_UnidentifiedImageError"] == 2
    assert report.details["failed_FileNotFoundError"] == 1
    assert report.details["dim"] == 1280 and report.details["encoder"] == LITE
    saved = json.loads((out / schema.REPORTS_DIR / f"{ei.STAGE}.json").read_text())
    assert saved["rows_out"] == N_GOOD

    # features: this run's chunks (named by the run and their image ids, so later runs add beside
    # them and a retried bundle rewrites its own), the unreadable file moved aside where no reader looks, one row per good image,
    # metadata in the files
    shards = sorted((out / schema.IMAGE_FEATURES_DIR).glob("*.parquet"))
    assert shards and all(re.fullmatch(r"features-\d{8}T\d{6}-[0-9a-f]{6}-[0-9a-f]{16}\.parquet", p.name) for p in shards)
    assert report.details[feature_shards.FEATURE_CHUNKS] == len(shards)
    assert (out / schema.IMAGE_FEATURES_DIR / feature_shards.UNREADABLE_SUBDIR / unreadable.name).read_bytes() == b"stale"
    table = pa.concat_tables([pq.read_table(p) for p in shards])
    assert table.schema.field(schema.EMBEDDING).type == pa.list_(pa.float32(), 1280)
    meta = pq.read_schema(shards[0]).metadata
    assert meta[schema.META_ENCODER] == LITE.encode()
    assert meta[schema.META_WEIGHTS] == b"random (seed 0)"
    assert meta[schema.META_DIM] == b"1280" and meta[schema.META_PRECISION] == b"float32"
    rows = {r[schema.IMAGE_ID]: r for r in table.to_pylist()}
    assert sorted(rows) == sorted(tags.image_id_for(u) for u in corpus["good"])
    for uri in corpus["good"]:
        row = rows[tags.image_id_for(uri)]
        with Image.open(uri) as img:
            assert (row[schema.WIDTH], row[schema.HEIGHT]) == img.size
        assert row[schema.CONTENT_HASH] == hashlib.sha256(Path(uri).read_bytes()).hexdigest()

    # the embedding is what the encoder gives for the shared preprocessing: nothing lost on the way
    spec, crop, extractor = _extractor()
    uri = corpus["good"][3]
    decoded = preprocess.decode_image(Path(uri).read_bytes(), crop.resize_size)
    expected, _ = extractor([preprocess.crop_uint8(decoded, crop)])
    np.testing.assert_allclose(rows[tags.image_id_for(uri)][schema.EMBEDDING], expected[0], rtol=1e-4, atol=1e-4)

    # failures: every unreadable image, with its reason
    failures = pa.concat_tables([pq.read_table(p) for p in sorted((out / schema.FAILURES_DIR).glob("extract-images-*.parquet"))])
    assert failures.schema.equals(schema.FAILURES_SCHEMA)
    got = sorted((Path(r[schema.URI]).name, r[schema.ERROR], r[schema.STAGE]) for r in failures.to_pylist())
    assert got == [
        ("empty.jpg", "UnidentifiedImageError", ei.STAGE),
        ("missing.jpg", "FileNotFoundError", ei.STAGE),
        ("text.jpg", "UnidentifiedImageError", ei.STAGE),
        ("truncated.jpg", "OSError", ei.STAGE),
    ]
    # the encoder the workers loaded is kept beside the model, named by its content
    assert len(list((out / schema.MODEL_DIR / worker_models.ENCODERS_SUBDIR).glob(f"{LITE}-*.pt"))) == 1


def test_the_workers_skeleton_takes_the_saved_state_whole(tmp_path: Path):
    # build_feature_extractor allocates without initialising; the strict load must fill it all
    spec, state_path = _lite_state(tmp_path)
    skeleton = inference.build_feature_extractor(LITE, dataclasses.asdict(worker_models.crop_spec(spec)), inference.FP32)
    skeleton.load_state_dict(torch.load(state_path, weights_only=True), strict=True)
    _, crop, reference = _extractor()
    batch = [torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))]
    np.testing.assert_allclose(skeleton(batch)[0], reference(batch)[0], rtol=1e-5, atol=1e-5)
