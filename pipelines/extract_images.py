"""Stage `extract-images`: one pooled feature vector per distinct image, with Beam's RunInference.

    imgsearch extract-images --out OUT [--image-model resnet50|efficientnet_lite0]
        [--weights imagenet|random|PATH] [--device CPU|GPU] [--batch-size N] [--commit-every N]
        [--precision auto|fp32|bf16|fp16|int8] [--calibration-images N]
        [--calibration-method minmax|entropy|percentile]
        [--image-timeout S] [--max-failure-rate F] [--full] [Beam flags]

Reads OUT/index/images (written by `index`), keeps each image_id once (the same picture may be
listed under several tags: it is read and encoded once, and rows_in counts distinct images; the
listed rows are reported as `index_rows`), reads its bytes through Beam's FileSystems, decodes and
preprocesses it (model.preprocess, the encoder's own transform), and batches it through
RunInference(KeyedModelHandler(PytorchModelHandlerTensor)). Writes

- OUT/features/image/features-<run>-<writer>-SSSSS.parquet (schema.image_features_schema) with
  the encoder, weights, dimension and precision in the file metadata. Each worker commits its
  rows every --commit-every images (written under a temporary name, then renamed), so a run
  killed at 90% keeps 90% of its work and the next run (incremental) does the rest;
- OUT/failures/extract-images-SSSSS-of-NNNNN.parquet (schema.FAILURES_SCHEMA): every image that
  could not be read, decoded or encoded, with its exception class. One bad image never fails
  the job; counters failed_<ExceptionClass> say why. Crawled bytes are decoded only as the
  raster formats of preprocess.ALLOWED_IMAGE_FORMATS; local paths must be regular files; each
  image's read and its decode get --image-timeout seconds each; a non-finite embedding is a
  failure (NonFiniteEmbedding), never a feature row.

Too many failures (--max-failure-rate of the distinct images) make the stage raise
common.FailureRateExceeded after its report and failures are saved.

The driver builds the encoder once, saves its state dict under OUT/model/encoders/ (named by a
hash of its bytes) and hands that path to the model handler, which rebuilds the architecture on
each worker and loads it; so `imagenet`, `random` and PATH weights all reach workers the same way.
A rerun adds to the features already there (only images without features are extracted); the
previous run's failure rows are replaced, and --full replaces the features too.

--precision int8 (CPUs): the driver exports the encoder to ONNX and quantises it to static int8
(model.quantize), calibrated on --calibration-images of the collection's own images (drawn by a
hash of their ids from the index, preprocessed as extraction does), and saves it as
OUT/model/encoders/<encoder>-<weights>-int8-<calibration hash>.onnx, which a rerun with the same
sample reuses (an incremental run keeps the model its int8 features came from). Workers run it
through RunInference(KeyedModelHandler(OnnxModelHandlerNumpy)). --precision auto prepares both
models where int8 may run (inference.INT8_AUTO_ENCODERS) and each worker chooses in load_model: int8
where its CPU has VNNI or AMX, else the torch model in bf16 or fp32. Every feature file records the
precision that made its rows; int8 and float features are never mixed without --full.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import hashlib
import logging
import os
import secrets
import stat
import threading
import time
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import apache_beam as beam
import torch
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.ml.inference.onnx_inference import OnnxModelHandlerNumpy
from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from model import encoders, inference, preprocess, quantize, schema
from pipelines import common, feature_shards, image_store

log = logging.getLogger(__name__)

STAGE = "extract-images"
ENCODERS_SUBDIR = "encoders"  # under schema.MODEL_DIR: the state dicts the workers load
DEVICES = ("CPU", "GPU")
# chosen by measurement (ResNet50 bf16 on 2 cores: batch 16 ran 15% faster than 32); a GPU needs
# large batches to stay busy
DEFAULT_BATCH_SIZE = {"CPU": 16, "GPU": 256}
DECODE_AUTO, DECODE_PILLOW, DECODE_DEVICE = "auto", "pillow", "device"
DECODERS = (DECODE_AUTO, DECODE_PILLOW, DECODE_DEVICE)
ROW_GROUP_BYTES = 16 * 1024 * 1024
SKIPPED_EXTRACTED = "skipped_already_extracted"
PROGRESS_EVERY_S = 10.0
INDEX_ROWS = common.INDEX_ROWS  # rows listed in the index, before keeping each image once
FAILED = "failed"  # tag of the failure outputs
DEFAULT_IMAGE_TIMEOUT_S = 30.0
DEFAULT_COMMIT_EVERY = 2000
# a chunk's name while it is written: no reader's pattern (features-*.parquet, *.parquet) matches it
# reasons of this stage's own failure rows (the `error` column)
NOT_A_REGULAR_FILE = "NotARegularFile"
NON_FINITE_EMBEDDING = "NonFiniteEmbedding"
ANIMATED_IMAGES = "animated_images"  # images with more than one frame (the first is encoded)
ANIMATED_FRAMES = "animated_frames"  # their frames, all together
FEATURE_CHUNKS = "feature_chunks"  # chunk files this run committed
PRECISION_RAN = "_precision"  # a feature row's precision, as the worker ran it (not a column)
INT8_MODEL_SUFFIX = ".onnx"
# Beam's DirectRunner would first try Prism, which downloads a binary; this is the in-process
# runner it falls back to.
LOCAL_RUNNER = "FnApiRunner"


class ImageKey(NamedTuple):
    """What travels beside a tensor through RunInference (its key), so no join is needed after."""

    image_id: str
    uri: str
    content_hash: str
    width: int
    height: int


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def images_pattern(out: str) -> str:
    return schema.shard_pattern(out, schema.IMAGES_DIR, schema.IMAGES_PREFIX)


def failures_prefix(out: str) -> str:
    return schema.out_path(out, schema.FAILURES_DIR, STAGE)


def failure_shards(out: str) -> list[str]:
    return common.glob(failures_prefix(out) + "-*" + schema.PARQUET_SUFFIX)


class ImageTimeout(TimeoutError):
    """An image's read or decode took longer than --image-timeout (a FIFO, a hung mount, a file
    that decodes forever); the image fails and the stage goes on."""


class NotARegularFile(OSError):
    """A local uri that names a FIFO, a device, a socket or a folder: reading it may block forever
    or never end."""


def clear_previous_outputs(out: str, *, features: bool) -> list[str]:
    """Remove the failure shards of an earlier run (its failed images are retried), and with
    features=True (--full) its feature shards too."""
    stale = failure_shards(out) + (feature_shards.feature_shards(out) if features else [])
    common.delete(stale)
    if stale:
        log.info("%s: removed %d shards of a previous run", STAGE, len(stale))
    return stale


def is_local(uri: str) -> bool:
    return FileSystems.get_scheme(uri) in (None, "file")


def check_regular_file(uri: str) -> None:
    """Local uris must name regular files: a FIFO blocks its reader, /dev/zero never ends."""
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    mode = os.stat(path).st_mode  # follows symlinks: a link to a regular file is fine
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "a device or socket"
        raise NotARegularFile(errno.EINVAL, f"{uri} is {kind}, not a regular file: only regular files are read")


def read_uri(uri: str) -> bytes:
    """The bytes of one image (local files checked to be regular files first)."""
    if is_local(uri):
        check_regular_file(uri)
    with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def call_with_timeout(fn: Callable[[], Any], timeout_s: float | None, what: str) -> Any:
    """fn() on a daemon thread, or ImageTimeout after timeout_s (None or <= 0: no limit).

    A read stuck in the kernel cannot be interrupted from Python; the thread is left behind. It
    is a daemon thread, so it never holds up the worker's exit, and the stage moves on.
    """
    if not timeout_s or timeout_s <= 0:
        return fn()
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread as it is
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name=f"{STAGE}-timed", daemon=True).start()
    if not done.wait(timeout_s):
        raise ImageTimeout(f"{what} took longer than {timeout_s:g} s (--image-timeout); abandoned")
    if "error" in box:
        raise box["error"]
    return box["value"]


def crop_spec(spec: encoders.EncoderSpec) -> preprocess.CropSpec:
    return preprocess.CropSpec.from_transform(spec.transform)


def encoder_state(spec: encoders.EncoderSpec) -> tuple[bytes, str]:
    """The feature extractor's state dict and a short hash of it (what names its files)."""
    extractor = inference.FeatureExtractor(spec.module, crop_spec(spec), inference.FP32)
    data = encoders.state_dict_bytes(extractor)
    return data, hashlib.sha256(data).hexdigest()[:16]


def save_encoder_state(spec: encoders.EncoderSpec, out: str) -> str:
    """Write the feature extractor's state dict under OUT/model/encoders (content-named); its path."""
    data, digest = encoder_state(spec)
    path = schema.out_path(out, schema.MODEL_DIR, ENCODERS_SUBDIR, f"{spec.name}-{digest}.pt")
    if not common.exists(path):
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
    for path in common.glob(images_pattern(out)):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            table = pq.read_table(f, columns=[schema.IMAGE_ID, schema.URI])
        for image_id, uri in zip(table.column(schema.IMAGE_ID).to_pylist(), table.column(schema.URI).to_pylist()):
            refs.setdefault(image_id, uri)
    return sorted(refs.items())


def calibration_crops(
    refs: Sequence[tuple[str, str]],
    crop: preprocess.CropSpec,
    timeout_s: float | None = DEFAULT_IMAGE_TIMEOUT_S,
    stored: dict[str, bytes] | None = None,
) -> np.ndarray:
    """uint8 crops [n, 3, crop, crop] of the sample, read and decoded exactly as the stage does
    (the image store's bytes where fetch stored them, else the uri; DecodeImageFn's Pillow path);
    an image that fails is left out of the sample."""
    crops = []
    stored = stored or {}
    for image_id, uri in refs:
        try:
            read = functools.partial(image_store.image_bytes, uri, stored.get(image_id), read_uri)
            data = call_with_timeout(read, timeout_s, f"reading {uri}")
            decoded = call_with_timeout(
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
    timeout_s: float | None = DEFAULT_IMAGE_TIMEOUT_S,
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
    if common.exists(path):
        log.info("%s: reusing int8 model %s", STAGE, path)
        return path
    started = time.monotonic()
    chosen = set(sample)
    crop = crop_spec(spec)
    stored = image_store.stored_bytes(out, sample)
    crops = calibration_crops([r for r in refs if r[0] in chosen], crop, timeout_s, stored)
    model = quantize.quantize(quantize.export_onnx(spec.module, crop), crops, spec.name, method)
    common.write_bytes(path, model)
    log.info(
        "%s: int8 model %s calibrated (%s) on %d of %d sampled images in %.1f s",
        STAGE, path, method, len(crops), len(sample), time.monotonic() - started,
    )  # fmt: skip
    return path


def features_metadata(spec: encoders.EncoderSpec, precision: str, int8_model: str | None = None) -> dict[bytes, bytes]:
    metadata = {
        schema.META_ENCODER: spec.name.encode("utf-8"),
        schema.META_WEIGHTS: spec.weights.encode("utf-8"),
        schema.META_DIM: str(spec.dim).encode("ascii"),
        schema.META_PRECISION: inference.METADATA_NAMES[precision].encode("ascii"),
    }
    if precision == inference.INT8 and int8_model:
        metadata[schema.META_INT8_MODEL] = int8_model.rsplit("/", 1)[-1].encode("utf-8")
    return metadata


def chunk_metadata(base: dict[bytes, bytes], precision: str, int8_model: str | None) -> dict[bytes, bytes]:
    """A chunk's metadata: the run's, with the precision its rows were actually made in."""
    metadata = {k: v for k, v in base.items() if k != schema.META_INT8_MODEL}
    metadata[schema.META_PRECISION] = inference.METADATA_NAMES[precision].encode("ascii")
    if precision == inference.INT8 and int8_model:
        metadata[schema.META_INT8_MODEL] = int8_model.rsplit("/", 1)[-1].encode("utf-8")
    return metadata


def failure_row(image_id: str | None, uri: str | None, error: str, message: str) -> dict[str, Any]:
    return common.failure_row(STAGE, image_id, uri, error, message)


def record_failure(
    image_id: str | None, uri: str | None, exc: BaseException | type | str, message: str
) -> dict[str, Any]:
    """Count a failed image (rows_failed and failed_<ExceptionClass>) and build its failure row.

    exc is the exception, its class, or the class's name (as a device-side failure reports it).
    """
    if isinstance(exc, str):
        error = exc
    else:
        error = exc.__name__ if isinstance(exc, type) else type(exc).__name__
    common.counter(STAGE, common.ROWS_FAILED).inc()
    common.counter(STAGE, f"failed_{error}").inc()
    return failure_row(image_id, uri, error, message)


def feature_row(key: ImageKey, embedding: np.ndarray, precision: str | None = None) -> dict[str, Any]:
    # a float32 ndarray, not a list: pyarrow takes it without a per-value Python conversion
    row = {
        schema.IMAGE_ID: key.image_id,
        schema.EMBEDDING: np.asarray(embedding, dtype=np.float32),
        schema.CONTENT_HASH: key.content_hash,
        schema.WIDTH: key.width,
        schema.HEIGHT: key.height,
    }
    if precision:
        row[PRECISION_RAN] = precision  # not a column: it names the chunk's precision metadata
    return row


def extractor_inference_fn(
    batch: Sequence[torch.Tensor],
    model: torch.nn.Module,
    device: torch.device | str,
    inference_args: dict[str, Any] | None = None,
    model_id: str | None = None,
    *,
    precision: str | None = None,
) -> Iterable[PredictionResult]:
    """One FeatureExtractor call per batch; an item that failed on the device carries its error.

    The model may be a proxy to a model shared across processes (large_model): only the
    payloads go over and only features and errors come back. The example is left out of each
    PredictionResult: the key identifies the image, and a copy of the input would only cost memory.
    Each result's model_id is the precision that ran (a GPU worker without CUDA runs its CPU's).
    """
    features, errors = model(list(batch), **(inference_args or {}))
    ran = inference.runtime_precision(precision, inference.torch_device(str(device))) if precision else model_id
    return [PredictionResult(None, row if error is None else error, ran) for row, error in zip(features, errors)]


def make_model_handler(
    name: str, crop: preprocess.CropSpec, precision: str, state_dict_path: str, device: str, batch_size: int
) -> KeyedModelHandler:
    """RunInference's handler: rebuild the FeatureExtractor on the worker, load the saved state."""
    return KeyedModelHandler(torch_model_handler(name, crop, precision, state_dict_path, device, batch_size))


def torch_model_handler(
    name: str, crop: preprocess.CropSpec, precision: str, state_dict_path: str, device: str, batch_size: int
) -> PytorchModelHandlerTensor:
    """The torch handler, unkeyed. On a GPU, large_model shares one copy of the model between a
    worker's processes, and a worker without CUDA fails (GpuTorchHandler)."""
    handler_class = GpuTorchHandler if device.upper() == "GPU" else PytorchModelHandlerTensor
    return handler_class(
        state_dict_path=state_dict_path,
        model_class=inference.build_feature_extractor,
        model_params={"name": name, "crop": dataclasses.asdict(crop), "precision": precision},
        device=device,
        inference_fn=functools.partial(extractor_inference_fn, precision=precision),
        # fixed batches: BatchElements' adaptive sizing is for latency and, measured here, settled
        # on ~10 of a possible 16, which ran slower (only a bundle's last batch is smaller)
        min_batch_size=batch_size,
        max_batch_size=batch_size,
        large_model=device == "GPU",
        load_model_args={"weights_only": True},
    )


class GpuTorchHandler(PytorchModelHandlerTensor):
    """Beam's torch handler for --device GPU, except that a worker without usable CUDA fails the
    bundle with a clear error (inference.CudaUnavailable) where Beam would only warn and run on
    the CPU: a GPU job on the wrong image or driver must not crawl along on CPUs unnoticed."""

    def load_model(self) -> torch.nn.Module:
        inference.require_cuda()
        return super().load_model()


class Int8EncoderHandler(OnnxModelHandlerNumpy):
    """RunInference's ONNX handler for a quantised encoder (model.quantize): uint8 crops in,
    float32 features out, each result's model_id naming the precision (int8)."""

    def __init__(self, model_uri: str, batch_size: int):
        super().__init__(
            model_uri,
            providers=["CPUExecutionProvider"],
            min_batch_size=batch_size,
            max_batch_size=batch_size,
        )

    def run_inference(self, batch: Sequence[Any], inference_session: Any, inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        features = quantize.run_batch(inference_session, batch)
        # the example is left out, as on the torch path: the key identifies the image
        return [PredictionResult(None, row, inference.INT8) for row in features]

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return sum(int(np.asarray(x).nbytes) for x in batch)


@dataclasses.dataclass
class ChosenModel:
    """What AutoPrecisionHandler loaded: the precision and the model (a class, not a tuple: Beam
    keeps a weak reference to a loaded model)."""

    precision: str
    model: Any


class AutoPrecisionHandler(ModelHandler):
    """--precision auto on CPU workers: the int8 model where the worker's CPU has VNNI or AMX,
    else the torch model (bf16 or fp32). Decided in load_model, on the worker, by its own CPU."""

    def __init__(self, int8_handler: Int8EncoderHandler, torch_handler: PytorchModelHandlerTensor, encoder: str):
        super().__init__()
        self._int8 = int8_handler
        self._torch = torch_handler
        self._encoder = encoder

    def load_model(self) -> ChosenModel:
        chosen = inference.worker_precision(inference.AUTO, "CPU", self._encoder)
        log.info("%s: --precision auto runs %s on this worker (CPU int8 %s)", STAGE, chosen, inference.cpu_supports_int8())
        handler = self._int8 if chosen == inference.INT8 else self._torch
        return ChosenModel(chosen, handler.load_model())

    def run_inference(self, batch: Sequence[Any], model: ChosenModel, inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        handler = self._int8 if model.precision == inference.INT8 else self._torch
        return handler.run_inference(batch, model.model, inference_args)

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return sum(int(np.asarray(x).nbytes) for x in batch)

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return self._torch.batch_elements_kwargs()

    def get_metrics_namespace(self) -> str:
        return "BeamML_ImageEncoder"


def make_int8_handler(model_path: str, batch_size: int) -> KeyedModelHandler:
    return KeyedModelHandler(Int8EncoderHandler(model_path, batch_size))


def make_auto_handler(
    name: str, crop: preprocess.CropSpec, precision: str, state_dict_path: str, int8_path: str, batch_size: int
) -> KeyedModelHandler:
    """int8 or torch, chosen on each worker (see AutoPrecisionHandler); precision: the torch one."""
    torch_handler = torch_model_handler(name, crop, precision, state_dict_path, "CPU", batch_size)
    return KeyedModelHandler(AutoPrecisionHandler(Int8EncoderHandler(int8_path, batch_size), torch_handler, name))


def device_decodable(data: bytes) -> tuple[bool, int, int]:
    """Whether the device decoder can take these bytes as they are, and the displayed size.

    Only baseline-orientation RGB or grey JPEGs go raw to the device; anything Pillow must fix
    (EXIF rotation, CMYK, transparency, other formats) is decoded on the CPU. Reads the header only.
    """
    with preprocess.open_image(data) as img:
        preprocess.check_pixel_limit(img.size)
        width, height = preprocess.displayed_size(img)
        orientation = img.getexif().get(preprocess.EXIF_ORIENTATION, 1)
        ok = img.format == "JPEG" and img.mode in ("RGB", "L") and orientation == 1
        return ok, width, height


# ---------------------------------------------------------------------------
# DoFns
# ---------------------------------------------------------------------------
class ReadImageFn(beam.DoFn):
    """(image_id, uri) -> (image_id, uri, bytes); unreadable files go to the FAILED output.

    A read that takes longer than timeout_s (a FIFO, a hung mount) fails that image alone.
    """

    def __init__(self, timeout_s: float | None = DEFAULT_IMAGE_TIMEOUT_S):
        self._timeout_s = timeout_s

    def _read(self, uri: str) -> bytes:
        return call_with_timeout(functools.partial(read_uri, uri), self._timeout_s, f"reading {uri}")

    def process(self, ref: tuple) -> Iterator[Any]:
        image_id, uri, *stored = ref  # (image_id, uri[, the image store's bytes or None]): issue 11
        try:
            data = image_store.image_bytes(uri, stored[0], self._read) if stored else self._read(uri)
        except Exception as exc:  # one unreadable file must not fail the job
            yield beam.pvalue.TaggedOutput(FAILED, record_failure(image_id, uri, exc, str(exc)))
            return
        yield image_id, uri, data


class DecodeImageFn(beam.DoFn):
    """(image_id, uri, bytes) -> (ImageKey, payload); undecodable images go to FAILED.

    The payload is a uint8 CHW crop made with Pillow, or, when decoding on the device, the raw
    bytes of a plain JPEG as a 1-D uint8 tensor (FeatureExtractor decodes those in a batch).
    """

    def __init__(
        self,
        encoder_name: str,
        weights: str,
        decode_on_device: bool = False,
        timeout_s: float | None = DEFAULT_IMAGE_TIMEOUT_S,
    ):
        self._encoder_name = encoder_name
        self._weights = weights
        self._decode_on_device = decode_on_device
        self._timeout_s = timeout_s
        self._crop: preprocess.CropSpec | None = None
        self._animated = common.counter(STAGE, ANIMATED_IMAGES)
        self._animated_frames = common.counter(STAGE, ANIMATED_FRAMES)

    def setup(self) -> None:
        transform, _ = encoders.preprocessing(self._encoder_name, self._weights)
        self._crop = preprocess.CropSpec.from_transform(transform)

    def _payload(self, data: bytes) -> tuple[torch.Tensor, str, int, int, int]:
        """(payload, content hash, width, height, frames)."""
        if self._decode_on_device:
            raw_ok, width, height = device_decodable(data)
            if raw_ok:  # a plain JPEG: one frame
                raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                return raw, preprocess.content_hash(data), width, height, 1
        decoded = preprocess.decode_image(data, self._crop.resize_size, keep_mode=True)
        crop = preprocess.crop_uint8(decoded, self._crop)
        return crop, decoded.content_hash, decoded.width, decoded.height, decoded.frames

    def process(self, element: tuple[str, str, bytes]) -> Iterator[Any]:
        image_id, uri, data = element
        try:
            payload, digest, width, height, frames = call_with_timeout(
                functools.partial(self._payload, data), self._timeout_s, f"decoding {uri}"
            )
        except Exception as exc:  # corrupt, truncated, not an allowed format, too many pixels...
            yield beam.pvalue.TaggedOutput(FAILED, record_failure(image_id, uri, exc, str(exc)))
            return
        if frames > 1:
            self._animated.inc()
            self._animated_frames.inc(frames)
        yield ImageKey(image_id, uri, digest, width, height), payload


class FeatureRowFn(beam.DoFn):
    """(ImageKey, PredictionResult) -> feature row, or a failure for an item that failed on the
    device; logs progress every PROGRESS_EVERY_S seconds."""

    def __init__(self):
        self._rows_out = common.counter(STAGE, common.ROWS_OUT)
        self._done = 0
        self._last_log = 0.0

    def setup(self) -> None:
        self._done = 0
        self._last_log = time.monotonic()

    def process(self, element: tuple[ImageKey, PredictionResult]) -> Iterator[Any]:
        key, prediction = element
        self._done += 1
        now = time.monotonic()
        if now - self._last_log >= PROGRESS_EVERY_S:
            log.info("%s: %d images done", STAGE, self._done)
            self._last_log = now
        if isinstance(prediction.inference, tuple):  # (exception class, message) from the device
            error, message = prediction.inference
            yield beam.pvalue.TaggedOutput(FAILED, record_failure(key.image_id, key.uri, error, message))
            return
        embedding = np.asarray(prediction.inference, dtype=np.float32)
        finite = np.isfinite(embedding)
        if not finite.all():
            # NaN or inf (broken weights, an overflow in reduced precision) would poison training
            # and every score computed from it: the image fails, the vector is never written
            message = f"the embedding has {int((~finite).sum())} non-finite values of {embedding.size}"
            yield beam.pvalue.TaggedOutput(FAILED, record_failure(key.image_id, key.uri, NON_FINITE_EMBEDDING, message))
            return
        self._rows_out.inc()
        yield feature_row(key, embedding, prediction.model_id if prediction.model_id in inference.METADATA_NAMES else None)


class CommitFeaturesFn(beam.DoFn):
    """Feature rows -> Parquet chunks of commit_every rows, each committed as soon as it is full.

    Beam's file sinks make every file visible only when the whole job finishes, so a killed job
    kept nothing; here each worker renames a full chunk into place (and the rest at the end of a
    bundle). A retried bundle may commit some rows twice: readers keep one row per image_id.
    Yields the committed paths.
    """

    def __init__(self, run_prefix_: str, table_schema: pa.Schema, commit_every: int, int8_model: str | None = None):
        self._run_prefix = run_prefix_
        self._schema = table_schema
        self._commit_every = commit_every
        self._int8_model = int8_model
        self._precision: str | None = None  # of the rows held: a chunk holds one precision
        dim = table_schema.field(schema.EMBEDDING).type.list_size
        # row groups capped at ROW_GROUP_BYTES of embeddings: bounded memory for streamed readers
        self._row_group_rows = max(1, ROW_GROUP_BYTES // (4 * dim))
        self._chunks = common.counter(STAGE, FEATURE_CHUNKS)
        self._writer = ""
        self._seq = 0
        self._rows: list[dict[str, Any]] = []

    def setup(self) -> None:
        # one name per DoFn instance: workers never clash, and a chunk's name says which wrote it
        self._writer = secrets.token_hex(4)
        self._seq = 0

    def start_bundle(self) -> None:
        self._rows = []

    def _commit(self) -> str:
        final = feature_shards.chunk_name(self._run_prefix, self._writer, self._seq)
        self._seq += 1
        table_schema = self._schema
        if self._precision:  # what the worker ran, which --precision auto decides there
            base = dict(self._schema.metadata or {})
            table_schema = self._schema.with_metadata(chunk_metadata(base, self._precision, self._int8_model))
        feature_shards.commit_chunk(final, feature_shards.features_table(self._rows, table_schema), self._row_group_rows)
        self._rows = []
        self._chunks.inc()
        return final

    def process(self, row: dict[str, Any]) -> Iterator[str]:
        precision = row.get(PRECISION_RAN)
        if self._rows and precision != self._precision:
            yield self._commit()
        self._precision = precision
        self._rows.append(row)
        if len(self._rows) >= self._commit_every:
            yield self._commit()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._rows:
            yield WindowedValue(self._commit(), MIN_TIMESTAMP, [GlobalWindow()])


class InferenceFailureFn(beam.DoFn):
    """RunInference's dead letters (batch, (exception type, repr, traceback)) -> one row per image,
    for every handler (torch, int8 through onnxruntime, auto)."""

    def process(self, element: tuple[Sequence[tuple[ImageKey, Any]], tuple]) -> Iterator[dict[str, Any]]:
        batch, (exc_type, exc_repr, _traceback) = element
        for key, _tensor in batch:
            yield record_failure(key.image_id, key.uri, exc_type, exc_repr)


# ---------------------------------------------------------------------------
# Composite transforms
# ---------------------------------------------------------------------------
def _not_yet_extracted(joined: tuple[str, dict[str, list]]) -> Iterator[tuple[str, str]]:
    image_id, groups = joined
    for uri in groups["refs"]:
        if groups["done"]:
            common.counter(STAGE, common.ROWS_SKIPPED).inc()
            common.counter(STAGE, SKIPPED_EXTRACTED).inc()
        else:
            yield image_id, uri


class SkipExtracted(beam.PTransform):
    """(image_id, uri) -> those whose id is in none of the given feature shards (an anti-join).

    Runs in the pipeline, so a collection of any size is compared without the driver holding ids.
    """

    def __init__(self, existing_shards: Sequence[str]):
        super().__init__()
        self._existing = list(existing_shards)

    def expand(self, refs):
        if not self._existing:
            return refs
        done = (
            refs.pipeline
            | "ExistingShards" >> beam.Create(self._existing)
            | "ReadExistingIds" >> beam.io.ReadAllFromParquet(columns=[schema.IMAGE_ID])
            | "KeyExisting" >> beam.Map(lambda row: (row[schema.IMAGE_ID], True))
        )
        return (
            {"refs": refs, "done": done}
            | "JoinExisting" >> beam.CoGroupByKey()
            | "NotYetExtracted" >> beam.FlatMap(_not_yet_extracted)
        )


class EncodeImages(beam.PTransform):
    """(ImageKey, tensor) -> {"features": feature rows, "failures": rows for batches that failed}."""

    def __init__(self, handler: KeyedModelHandler):
        super().__init__()
        self._handler = handler

    def expand(self, keyed_tensors):
        predictions, dead_letters = keyed_tensors | "RunInference" >> RunInference(
            self._handler
        ).with_exception_handling()
        rows = predictions | "FeatureRow" >> beam.ParDo(FeatureRowFn()).with_outputs(FAILED, main="features")
        batch_failures = dead_letters.failed_inferences | "InferenceFailures" >> beam.ParDo(InferenceFailureFn())
        failures = (rows[FAILED], batch_failures) | "EncodeFailures" >> beam.Flatten()
        return {"features": rows.features, "failures": failures}


class ExtractImageFeatures(beam.PTransform):
    """(image_id, uri) -> {"features": feature rows, "failures": failure rows}."""

    def __init__(
        self,
        encoder_name: str,
        weights: str,
        state_dict_path: str,
        device: str,
        batch_size: int,
        precision: str = inference.FP32,
        decode_on_device: bool = False,
        image_timeout_s: float | None = DEFAULT_IMAGE_TIMEOUT_S,
        store_shards: Sequence[str] = (),
        int8_model_path: str | None = None,
    ):
        """precision int8: the int8 model alone (state_dict_path unused); another precision with an
        int8_model_path: --precision auto, each worker choosing between int8 and the torch model
        at that precision; without one: the torch model."""
        super().__init__()
        self._store_shards = list(store_shards)  # OUT/images/store-* written by fetch (issue 11)
        self._encoder_name = encoder_name
        self._weights = weights
        self._decode_on_device = decode_on_device
        self._timeout_s = image_timeout_s
        crop = preprocess.CropSpec.from_transform(encoders.preprocessing(encoder_name, weights)[0])
        if precision == inference.INT8 or int8_model_path:
            if device.upper() == "GPU" or decode_on_device:
                raise ValueError("int8 runs on CPUs with Pillow decoding (--device CPU, --decode pillow or auto)")
            if not int8_model_path:
                raise ValueError("precision int8 needs the quantised model's path (prepare_int8_model)")
        if precision == inference.INT8:
            self._handler = make_int8_handler(int8_model_path, batch_size)
        elif int8_model_path:
            self._handler = make_auto_handler(encoder_name, crop, precision, state_dict_path, int8_model_path, batch_size)
        else:
            self._handler = make_model_handler(encoder_name, crop, precision, state_dict_path, device, batch_size)

    def expand(self, refs):
        if self._store_shards:  # bytes from the image store, joined by image_id; the rest from their uris
            refs = refs | "JoinImageStore" >> image_store.JoinImageStore(self._store_shards, STAGE)
        read = refs | "ReadImage" >> beam.ParDo(ReadImageFn(self._timeout_s)).with_outputs(FAILED, main="images")
        decoded = read.images | "DecodeImage" >> beam.ParDo(
            DecodeImageFn(self._encoder_name, self._weights, self._decode_on_device, self._timeout_s)
        ).with_outputs(FAILED, main="tensors")
        encoded = decoded.tensors | "EncodeImages" >> EncodeImages(self._handler)
        failures = (read[FAILED], decoded[FAILED], encoded["failures"]) | "AllFailures" >> beam.Flatten()
        return {"features": encoded["features"], "failures": failures}


class WriteImageFeatures(beam.PTransform):
    """Feature rows -> committed chunk files under the run's prefix; the paths written."""

    def __init__(
        self,
        prefix: str,
        spec: encoders.EncoderSpec,
        precision: str,
        commit_every: int = DEFAULT_COMMIT_EVERY,
        int8_model: str | None = None,
    ):
        super().__init__()
        self._prefix = prefix
        self._schema = schema.image_features_schema(spec.dim, features_metadata(spec, precision, int8_model))
        self._commit_every = commit_every
        self._int8_model = int8_model

    def expand(self, rows):
        return rows | "CommitChunks" >> beam.ParDo(
            CommitFeaturesFn(self._prefix, self._schema, self._commit_every, self._int8_model)
        )


class WriteFailures(beam.PTransform):
    def __init__(self, out: str):
        super().__init__()
        self._prefix = failures_prefix(out)

    def expand(self, rows):
        return rows | "WriteParquet" >> beam.io.WriteToParquet(
            self._prefix, schema.FAILURES_SCHEMA, file_name_suffix=schema.PARQUET_SUFFIX
        )


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsearch extract-images", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output root (local path or gs://...)")
    parser.add_argument("--image-model", default=encoders.RESNET50, choices=encoders.ENCODERS)
    parser.add_argument(
        "--weights",
        default=encoders.WEIGHTS_IMAGENET,
        help="imagenet (resnet50: torchvision downloads IMAGENET1K_V2 once; efficientnet_lite0: ships "
        "with its package), random (seeded), or a state-dict PATH (local or gs://)",
    )
    parser.add_argument(
        "--device",
        default="CPU",
        type=str.upper,
        choices=DEVICES,
        help="GPU runs inference on CUDA where the worker has it, else falls back to CPU with a warning",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="largest inference batch (default 16 CPU, 256 GPU)")
    parser.add_argument(
        "--precision",
        default=inference.AUTO,
        choices=inference.PRECISIONS,
        help="auto: fp16 on GPU; on a CPU, int8 where the worker's CPU has VNNI or AMX (encoders that hold "
        f"the quality bound: {', '.join(inference.INT8_AUTO_ENCODERS)}), else bf16 where it has native bf16 "
        "(AVX-512 BF16/AMX), else fp32. int8: a quantised encoder through onnxruntime (CPU only)",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=quantize.DEFAULT_CALIBRATION_IMAGES,
        help="int8: images of the collection the quantisation is calibrated on, drawn by a hash of "
        f"their ids (default {quantize.DEFAULT_CALIBRATION_IMAGES})",
    )
    parser.add_argument(
        "--calibration-method",
        default=quantize.DEFAULT_CALIBRATION_METHOD,
        choices=quantize.CALIBRATION_METHODS,
        help=f"int8: how activation ranges are calibrated (default {quantize.DEFAULT_CALIBRATION_METHOD}, chosen by measurement)",
    )
    parser.add_argument(
        "--decode",
        default=DECODE_AUTO,
        choices=DECODERS,
        help="where JPEGs are decoded: auto (the device on GPU, Pillow on CPU), pillow, or device "
        "(torchvision's decoder on the model's device; other formats always use Pillow)",
    )
    parser.add_argument(
        "--num-shards",
        type=int,
        default=0,
        help="kept for old command lines and ignored: features are committed in chunks (--commit-every)",
    )
    parser.add_argument(
        "--commit-every",
        type=int,
        default=DEFAULT_COMMIT_EVERY,
        help="images per committed feature file, per worker: what a killed run can lose at most "
        f"(default {DEFAULT_COMMIT_EVERY})",
    )
    parser.add_argument(
        "--image-timeout",
        type=float,
        default=DEFAULT_IMAGE_TIMEOUT_S,
        help="seconds an image's read, and then its decode, may take before the image fails with "
        f"ImageTimeout (default {DEFAULT_IMAGE_TIMEOUT_S:g}; 0: no limit)",
    )
    common.add_max_failure_rate(parser)
    parser.add_argument(
        "--full",
        action="store_true",
        help="re-extract every image, replacing existing features (by default a rerun extracts "
        "only images whose ids have no features yet)",
    )
    return parser


def runs_here(beam_options: Any) -> bool:
    """Whether the pipeline's workers run on this machine (no --runner, or a local one)."""
    from apache_beam.options.pipeline_options import StandardOptions

    runner = beam_options.view_as(StandardOptions).runner
    return not runner or str(runner).split(".")[-1] in (LOCAL_RUNNER, "DirectRunner", "BundleBasedDirectRunner", "PrismRunner")


def int8_model_for_run(spec: encoders.EncoderSpec, args: argparse.Namespace, existing: Sequence[str]) -> str:
    """The int8 model of this run: the one the existing int8 features came from (so an incremental
    run stays in their vector space) where it is still there, else one calibrated on the index."""
    previous = feature_shards.int8_models_of(existing)
    if len(previous) == 1:
        path = schema.out_path(encoders_dir(args.out), previous[0])
        if common.exists(path):
            log.info("%s: existing int8 features came from %s; using it again", STAGE, previous[0])
            return path
        log.warning("%s: %s, which made the existing int8 features, is gone; calibrating anew", STAGE, previous[0])
    return prepare_int8_model(spec, args.weights, args.out, args.calibration_images, args.calibration_method, args.image_timeout)


def precisions_ran(prefix: str) -> list[str]:
    """The precisions this run's committed chunks record (what the workers actually ran)."""
    names = {v: k for k, v in inference.METADATA_NAMES.items()}
    found = set()
    for path in common.glob(prefix + "-*" + schema.PARQUET_SUFFIX):
        made = feature_shards.read_shard_metadata(path).get(schema.META_PRECISION, b"").decode("utf-8", "replace")
        found.add(names.get(made, made))
    return sorted(found)


def _batch_size(args: argparse.Namespace) -> int:
    size = args.batch_size or DEFAULT_BATCH_SIZE[args.device]
    if size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {size}")
    return size


def run(
    argv: list[str] | None = None, save_main_session: bool = True, test_pipeline: beam.Pipeline | None = None
) -> common.StageReport:
    args, beam_options = common.split_args(get_args_parser(), argv)
    batch_size = _batch_size(args)
    if args.commit_every < 1:
        raise ValueError(f"--commit-every must be at least 1, got {args.commit_every}")
    if args.num_shards:
        log.warning("%s: --num-shards is ignored: each worker commits a file every --commit-every images", STAGE)
    if args.device == "GPU" and not torch.cuda.is_available():
        # the launcher of a Dataflow job needs no GPU; a worker without CUDA fails (GpuTorchHandler)
        log.warning("%s: --device GPU but CUDA is not available here; a worker without CUDA fails", STAGE)

    # the torch model's precision (auto: bf16 or fp32 on a CPU), and what a worker on this machine
    # runs (auto: int8 where the CPU has VNNI/AMX); workers decide for themselves and record it
    precision = inference.resolve_precision(args.precision, args.device)
    expected = inference.worker_precision(args.precision, args.device, args.image_model)
    if args.calibration_images < 1:
        raise ValueError(f"--calibration-images must be at least 1, got {args.calibration_images}")
    decode_on_device = args.decode == DECODE_DEVICE or (args.decode == DECODE_AUTO and args.device == "GPU")
    if precision == inference.INT8 and decode_on_device:
        raise ValueError("--precision int8 decodes with Pillow on the CPU: drop --decode device")
    spec = encoders.build_encoder(args.image_model, args.weights)
    state_dict_path = None if precision == inference.INT8 else save_encoder_state(spec, args.out)
    clear_previous_outputs(args.out, features=args.full)
    feature_shards.clear_inprogress_chunks(args.out)
    existing = [] if args.full else feature_shards.usable_feature_shards(args.out, features_metadata(spec, expected))
    if existing:
        log.info("%s: %d feature shards exist; extracting only images they lack (--full redoes all)", STAGE, len(existing))
    int8_path = None
    if precision == inference.INT8 or (
        inference.auto_may_pick_int8(args.precision, args.device, args.image_model)
        and (expected == inference.INT8 or not runs_here(beam_options))
    ):
        int8_path = int8_model_for_run(spec, args, existing)
    prefix = feature_shards.run_prefix(args.out)

    pipeline = test_pipeline or beam.Pipeline(
        options=common.make_options(beam_options, save_main_session)
    )
    extracted = (
        pipeline
        | "ReadImageRefs" >> common.ReadImageRefs(args.out, STAGE)
        | "SkipExtracted" >> SkipExtracted(existing)
        | "ExtractImageFeatures" >> ExtractImageFeatures(
            args.image_model,
            args.weights,
            state_dict_path,
            args.device,
            batch_size,
            precision,
            decode_on_device,
            args.image_timeout,
            store_shards=image_store.store_shards(args.out),
            int8_model_path=int8_path,
        )
    )
    _ = extracted["features"] | "WriteImageFeatures" >> WriteImageFeatures(
        prefix, spec, expected, args.commit_every, int8_path
    )
    _ = extracted["failures"] | "WriteFailures" >> WriteFailures(args.out)

    _, counters, seconds = common.run_pipeline(pipeline, STAGE)
    ran = precisions_ran(prefix) or [expected]
    if len(ran) > 1:
        log.warning("%s: workers ran different precisions (%s): give --precision to run one", STAGE, ", ".join(ran))
    extra = {"int8_model": int8_path.rsplit("/", 1)[-1]} if int8_path and inference.INT8 in ran else {}
    report = common.report_from_counters(
        STAGE,
        counters,
        seconds,
        feature_shards=len(feature_shards.feature_shards(args.out)),
        encoder=spec.name,
        weights=spec.weights,
        dim=spec.dim,
        device=args.device,
        precision=",".join(ran),
        precision_requested=args.precision,
        decode="device" if decode_on_device else "pillow",
        batch_size=batch_size,
        **extra,
    )
    report.save(args.out)
    log.info(report.summary_line())
    common.check_failure_rate(report, args.max_failure_rate)
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(run().summary_line())
