"""The models extract-images' workers load, made once on the driver and saved under
OUT/model/encoders/: the encoder's state dict (named by a hash of its bytes), and for
--precision int8 or auto the encoder quantised to static int8 (model.quantize), calibrated on a
sample of the collection's own images drawn by a hash of their ids from the index.

The int8 model is saved as <encoder>-<weights>-int8-<calibration hash>.onnx: a rerun with the same
sample reuses it, and an incremental run keeps the model its int8 features came from.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import time
from typing import Sequence

import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from model import encoders, inference, preprocess, quantize, schema
from pipelines import common, feature_shards, image_decoding, image_store, manifests

log = logging.getLogger(__name__)

STAGE = image_decoding.STAGE  # in log lines
ENCODERS_SUBDIR = "encoders"  # under schema.MODEL_DIR: the state dicts the workers load
INT8_MODEL_SUFFIX = ".onnx"


def crop_spec(spec: encoders.EncoderSpec) -> preprocess.CropSpec:
    return preprocess.CropSpec.from_transform(spec.transform)


def encoder_state(spec: encoders.EncoderSpec) -> tuple[bytes, str]:
    """The feature extractor's state dict and a short hash of it (what names its files)."""
    extractor = inference.FeatureExtractor(spec.module, crop_spec(spec), inference.FP32)
    data = encoders.state_dict_bytes(extractor)
    return data, hashlib.sha256(data).hexdigest()[:16]


DIGEST_SUFFIX = ".sha256"  # beside a cached model: the sha256 of its bytes, checked before reuse


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cached_file_ok(path: str, expected_sha256: str | None = None) -> bool:
    """Whether a cached file a later run reuses is whole: its bytes hash to what is expected (the
    digest given, else the one recorded beside it). A missing, truncated or unverifiable file is
    not reused; it is rebuilt (and a warning says so)."""
    if not common.exists(path):
        return False
    try:
        data = common.read_bytes(path)
        if expected_sha256 is None and not common.exists(path + DIGEST_SUFFIX) and path.endswith(INT8_MODEL_SUFFIX):
            # written before digests were recorded: reused when it parses as a whole ONNX model
            import onnx

            onnx.checker.check_model(onnx.load_model_from_string(data))
            common.write_bytes(path + DIGEST_SUFFIX, _sha256(data).encode("ascii"))
            return True
        if expected_sha256 is None:
            expected_sha256 = common.read_bytes(path + DIGEST_SUFFIX).decode("ascii").strip()
        actual = _sha256(data)
    except Exception as exc:
        log.warning("%s: %s cannot be verified (%s: %s); rebuilding it", STAGE, path, type(exc).__name__, exc)
        return False
    if not actual.startswith(expected_sha256) or not expected_sha256:
        log.warning("%s: %s is damaged (its bytes do not match sha256 %s: a full disk or a kill?); rebuilding it", STAGE, path, expected_sha256)
        return False
    return True


def write_cached_file(path: str, data: bytes) -> None:
    """A file a later run reuses: renamed into place whole, its sha256 recorded beside it."""
    common.write_bytes(path, data)
    common.write_bytes(path + DIGEST_SUFFIX, _sha256(data).encode("ascii"))


def save_encoder_state(spec: encoders.EncoderSpec, out: str) -> str:
    """Write the feature extractor's state dict under OUT/model/encoders (named by its hash); its
    path. One already there is reused only when its bytes match that hash."""
    data, digest = encoder_state(spec)
    path = schema.out_path(out, schema.MODEL_DIR, ENCODERS_SUBDIR, f"{spec.name}-{digest}.pt")
    if not cached_file_ok(path, digest):
        common.write_bytes(path, data)
    return path


def encoders_dir(out: str) -> str:
    return schema.out_path(out, schema.MODEL_DIR, ENCODERS_SUBDIR)


def weights_label(weights: str) -> str:
    """imagenet or random as they are; a state-dict PATH as `file` (its hash is in the model's name)."""
    return weights if weights in (encoders.WEIGHTS_IMAGENET, encoders.WEIGHTS_RANDOM) else "file"


def int8_model_path(out: str, encoder: str, weights: str, key: str) -> str:
    name = f"{encoder}-{weights_label(weights)}-{inference.INT8}-{key}{INT8_MODEL_SUFFIX}"
    return schema.out_path(out, schema.MODEL_DIR, ENCODERS_SUBDIR, name)


def read_index_refs(out: str) -> list[tuple[str, str]]:
    """Every distinct (image_id, uri) of the index, read on the driver (ids and uris only)."""
    refs: dict[str, str] = {}
    for path in common.glob(schema.shard_pattern(out, schema.IMAGES_DIR, schema.IMAGES_PREFIX)):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            table = pq.read_table(f, columns=[schema.IMAGE_ID, schema.URI])
        for image_id, uri in zip(table.column(schema.IMAGE_ID).to_pylist(), table.column(schema.URI).to_pylist()):
            refs.setdefault(image_id, uri)
    return sorted(refs.items())


def calibration_crops(
    refs: Sequence[tuple[str, str]],
    crop: preprocess.CropSpec,
    timeout_s: float | None = image_decoding.DEFAULT_IMAGE_TIMEOUT_S,
    stored: dict[str, bytes] | None = None,
    roots: Sequence[str] = (),
) -> np.ndarray:
    """uint8 crops [n, 3, crop, crop] of the sample, read and decoded exactly as the stage does
    (the image store's bytes where fetch stored them, else the uri; DecodeImageFn's Pillow path);
    an image that fails is left out of the sample."""
    crops = []
    stored = stored or {}
    for image_id, uri in refs:
        try:
            read = functools.partial(
                image_store.image_bytes, uri, stored.get(image_id), functools.partial(image_decoding.read_confined, roots=roots)
            )
            data = image_decoding.call_with_timeout(read, timeout_s, f"reading {uri}")
            decoded = image_decoding.call_with_timeout(
                functools.partial(preprocess.decode_image, data, crop.resize_size, keep_mode=True), timeout_s, f"decoding {uri}"
            )
            crops.append(preprocess.crop_uint8(decoded, crop).numpy())
        except Exception as exc:  # its failure is recorded when the stage itself reads it
            log.info("%s: calibration leaves out %s (%s: %s)", STAGE, image_id, type(exc).__name__, exc)
    if not crops:
        raise ValueError("int8: no image of the calibration sample could be read and decoded")
    return np.stack(crops)


def prepare_int8_model(
    spec: encoders.EncoderSpec,
    weights: str,
    out: str,
    n_images: int = quantize.DEFAULT_CALIBRATION_IMAGES,
    method: str = quantize.DEFAULT_CALIBRATION_METHOD,
    timeout_s: float | None = image_decoding.DEFAULT_IMAGE_TIMEOUT_S,
) -> str:
    """The path of the encoder quantised to int8, calibrated on a sample of OUT's index.

    Named by a hash of the float weights, the sample's ids and the method: an existing file of
    that name is reused, so a rerun with the same index calibrates nothing.
    """
    _, digest = encoder_state(spec)
    refs = read_index_refs(out)
    sample = quantize.calibration_ids([image_id for image_id, _ in refs], n_images)
    if not sample:
        raise ValueError(f"int8: the index under {out} lists no images to calibrate on")
    path = int8_model_path(out, spec.name, weights, quantize.calibration_key(digest, sample, method))
    if cached_file_ok(path):
        log.info("%s: reusing int8 model %s", STAGE, path)
        return path
    started = time.monotonic()
    chosen = set(sample)
    crop = crop_spec(spec)
    stored = image_store.stored_bytes(out, sample)
    crops = calibration_crops([r for r in refs if r[0] in chosen], crop, timeout_s, stored, manifests.recorded_roots(out))
    model = quantize.quantize(quantize.export_onnx(spec.module, crop), crops, spec.name, method)
    write_cached_file(path, model)
    log.info(
        "%s: int8 model %s calibrated (%s) on %d of %d sampled images in %.1f s",
        STAGE, path, method, len(crops), len(sample), time.monotonic() - started,
    )  # fmt: skip
    return path


def int8_model_for_run(spec: encoders.EncoderSpec, args: argparse.Namespace, existing: Sequence[str]) -> str:
    """The int8 model of this run: the one the existing int8 features came from (so an incremental
    run stays in their vector space) where it is still there, else one calibrated on the index."""
    previous = feature_shards.int8_models_of(existing)
    if len(previous) == 1:
        path = schema.out_path(encoders_dir(args.out), previous[0])
        if cached_file_ok(path):
            log.info("%s: existing int8 features came from %s; using it again", STAGE, previous[0])
            return path
        log.warning("%s: %s, which made the existing int8 features, is gone or damaged; calibrating anew", STAGE, previous[0])
    return prepare_int8_model(spec, args.weights, args.out, args.calibration_images, args.calibration_method, args.image_timeout)
