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

- OUT/features/image/features-<run>-<digest>.parquet (schema.image_features_schema) with
  the encoder, weights, dimension and precision in the file metadata. Each worker commits its
  rows every --commit-every images (written under a temporary name, then renamed), so a run
  killed at 90% keeps 90% of its work and the next run (incremental) does the rest; a chunk is
  named by the image ids it holds, so a retried bundle rewrites its chunks instead of copying them;
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
previous run's failure rows are replaced. --full extracts every image into features/image/full-run/
and replaces the features with them only once the run is done (feature_shards.promote_full_run).

--precision int8 (CPUs): the driver exports the encoder to ONNX and quantises it to static int8
(model.quantize), calibrated on --calibration-images of the collection's own images (drawn by a
hash of their ids from the index, preprocessed as extraction does), and saves it as
OUT/model/encoders/<encoder>-<weights>-int8-<calibration hash>.onnx, which a rerun with the same
sample reuses (an incremental run keeps the model its int8 features came from). Workers run it
through RunInference(KeyedModelHandler(OnnxModelHandlerNumpy)). --precision auto prepares both
models where int8 may run (inference.INT8_AUTO_ENCODERS) and each worker chooses in load_model: int8
where its CPU has VNNI or AMX, else the torch model in bf16 or fp32. Every feature file records the
precision that made its rows; int8 and float features are never mixed without --full.

This module is the stage's wiring and driver; its parts live beside it: image_decoding (reading
and decoding one image), encode_handlers (RunInference's handlers), worker_models (the state dict
and the int8 model the workers load) and feature_shards (the chunks and their bookkeeping).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any, Iterator, Sequence

import apache_beam as beam
import numpy as np
import torch
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference

from model import devices, encoders, inference, preprocess, quantize, schema
from pipelines import common, encode_handlers, feature_shards, image_decoding, image_store, manifests, worker_models
# the stage's name (its counters' namespace), the tag of failure outputs and the key that rides
# beside each tensor are spelled once, in image_decoding (the stage's parts import it)
from pipelines.image_decoding import FAILED, STAGE, ImageKey

log = logging.getLogger(__name__)

# chosen by measurement (ResNet50 bf16 on 2 cores: batch 16 ran 15% faster than 32); a GPU needs
# large batches to stay busy
DEFAULT_BATCH_SIZE = {devices.CPU: 16, devices.GPU: 256}
DECODE_AUTO, DECODE_PILLOW, DECODE_DEVICE = "auto", "pillow", "device"
DECODERS = (DECODE_AUTO, DECODE_PILLOW, DECODE_DEVICE)
SKIPPED_EXTRACTED = "skipped_already_extracted"
PROGRESS_EVERY_S = 10.0
INDEX_ROWS = common.INDEX_ROWS  # rows listed in the index, before keeping each image once
DEFAULT_COMMIT_EVERY = 2000
NON_FINITE_EMBEDDING = "NonFiniteEmbedding"  # a failure row's `error` for a NaN or inf embedding


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def failure_shards(out: str) -> list[str]:
    return common.glob(schema.out_path(out, schema.FAILURES_DIR, STAGE) + "-*" + schema.PARQUET_SUFFIX)


def clear_previous_failures(out: str) -> list[str]:
    """Remove the failure shards of an earlier run: its failed images are retried."""
    stale = failure_shards(out)
    common.delete(stale)
    if stale:
        log.info("%s: removed %d shards of a previous run", STAGE, len(stale))
    return stale


def feature_row(key: ImageKey, embedding: np.ndarray, precision: str | None = None) -> dict[str, Any]:
    # a float32 ndarray, not a list: pyarrow takes it without a per-value Python conversion
    row = {
        schema.IMAGE_ID: key.image_id,
        schema.EMBEDDING: np.asarray(embedding, dtype=np.float32),
        schema.CONTENT_HASH: key.content_hash,
        schema.WIDTH: key.width,
        schema.HEIGHT: key.height,
    }
    if precision:  # not a column: it names the chunk's precision metadata
        row[feature_shards.PRECISION_RAN] = precision
    return row


# ---------------------------------------------------------------------------
# DoFns (reading and decoding: pipelines/image_decoding.py; committing: feature_shards.py)
# ---------------------------------------------------------------------------
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
            yield beam.pvalue.TaggedOutput(FAILED, common.record_failure(STAGE, key.image_id, key.uri, error, message))
            return
        embedding = np.asarray(prediction.inference, dtype=np.float32)
        finite = np.isfinite(embedding)
        if not finite.all():
            # NaN or inf (broken weights, an overflow in reduced precision) would poison training
            # and every score computed from it: the image fails, the vector is never written
            message = f"the embedding has {int((~finite).sum())} non-finite values of {embedding.size}"
            failure = common.record_failure(STAGE, key.image_id, key.uri, NON_FINITE_EMBEDDING, message)
            yield beam.pvalue.TaggedOutput(FAILED, failure)
            return
        self._rows_out.inc()
        yield feature_row(key, embedding, prediction.model_id if prediction.model_id in inference.METADATA_NAMES else None)


class InferenceFailureFn(beam.DoFn):
    """RunInference's dead letters (batch, (exception type, repr, traceback)) -> one row per image,
    for every handler (torch, int8 through onnxruntime, auto)."""

    def process(self, element: tuple[Sequence[tuple[ImageKey, Any]], tuple]) -> Iterator[dict[str, Any]]:
        for key, error, message in common.dead_letter_rows(element):
            yield common.record_failure(STAGE, key.image_id, key.uri, error, message)


# ---------------------------------------------------------------------------
# Composite transforms
# ---------------------------------------------------------------------------
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
        image_timeout_s: float | None = image_decoding.DEFAULT_IMAGE_TIMEOUT_S,
        store_shards: Sequence[str] = (),
        int8_model_path: str | None = None,
        allowed_roots: Sequence[str] = (),
    ):
        """The model: see encode_handlers.make_handler (int8, auto with an int8_model_path, or torch).
        allowed_roots: index's (index/source.json); a local image outside them is never read."""
        super().__init__()
        self._allowed_roots = tuple(allowed_roots)
        self._store_shards = list(store_shards)  # OUT/images/store-* written by fetch
        self._encoder_name = encoder_name
        self._weights = weights
        self._decode_on_device = decode_on_device
        self._timeout_s = image_timeout_s
        crop = preprocess.CropSpec.from_transform(encoders.preprocessing(encoder_name, weights)[0])
        self._handler = encode_handlers.make_handler(
            encoder_name, crop, precision, state_dict_path, device, batch_size, int8_model_path, decode_on_device
        )

    def expand(self, refs):
        if self._store_shards:  # bytes from the image store, joined by image_id; the rest from their uris
            refs = refs | "JoinImageStore" >> image_store.JoinImageStore(self._store_shards, STAGE)
        read = refs | "ReadImage" >> beam.ParDo(image_decoding.ReadImageFn(self._timeout_s, self._allowed_roots)).with_outputs(FAILED, main="images")
        decoded = read.images | "DecodeImage" >> beam.ParDo(
            image_decoding.DecodeImageFn(self._encoder_name, self._weights, self._decode_on_device, self._timeout_s)
        ).with_outputs(FAILED, main="tensors")
        encoded = decoded.tensors | "EncodeImages" >> EncodeImages(self._handler)
        failures = (read[FAILED], decoded[FAILED], encoded["failures"]) | "AllFailures" >> beam.Flatten()
        return {"features": encoded["features"], "failures": failures}


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    parser = common.stage_parser(STAGE, __doc__)
    parser.add_argument("--image-model", default=encoders.RESNET50, choices=encoders.ENCODERS)
    parser.add_argument(
        "--weights",
        default=encoders.WEIGHTS_IMAGENET,
        help="imagenet (resnet50: torchvision downloads IMAGENET1K_V2 once; efficientnet_lite0: ships "
        "with its package), random (seeded), or a state-dict PATH (local or gs://)",
    )
    parser.add_argument(
        "--device",
        default=devices.CPU,
        type=devices.parse_device,
        choices=devices.DEVICES,
        help="GPU runs inference on CUDA; a worker without usable CUDA fails with CudaUnavailable (never a silent CPU run)",
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
        default=image_decoding.DEFAULT_IMAGE_TIMEOUT_S,
        help="seconds an image's read, and then its decode, may take before the image fails with "
        f"ImageTimeout (default {image_decoding.DEFAULT_IMAGE_TIMEOUT_S:g}; 0: no limit)",
    )
    common.add_max_failure_rate(parser)
    parser.add_argument(
        "--full",
        action="store_true",
        help="re-extract every image; the new features replace the existing ones once the run "
        "finishes, and an interrupted --full run is resumed by the next (by default a rerun "
        "extracts only images whose ids have no features yet)",
    )
    return parser


def runs_here(beam_options: Any) -> bool:
    """Whether the pipeline's workers run on this machine (no --runner, or a local one)."""
    from apache_beam.options.pipeline_options import StandardOptions

    runner = beam_options.view_as(StandardOptions).runner
    return not runner or str(runner).split(".")[-1] in (common.LOCAL_RUNNER, "DirectRunner", "BundleBasedDirectRunner", "PrismRunner")


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
    if args.device == devices.GPU and not torch.cuda.is_available():
        # the launcher of a Dataflow job needs no GPU; a worker without CUDA fails (GpuTorchHandler)
        log.warning("%s: --device GPU but CUDA is not available here; a worker without CUDA fails", STAGE)

    # the torch model's precision (auto: bf16 or fp32 on a CPU), and what a worker on this machine
    # runs (auto: int8 where the CPU has VNNI/AMX); workers decide for themselves and record it
    precision = inference.resolve_precision(args.precision, args.device)
    expected = inference.worker_precision(args.precision, args.device, args.image_model)
    if args.calibration_images < 1:
        raise ValueError(f"--calibration-images must be at least 1, got {args.calibration_images}")
    decode_on_device = args.decode == DECODE_DEVICE or (args.decode == DECODE_AUTO and args.device == devices.GPU)
    if precision == inference.INT8 and decode_on_device:
        raise ValueError("--precision int8 decodes with Pillow on the CPU: drop --decode device")
    spec = encoders.build_encoder(args.image_model, args.weights)
    state_dict_path = None if precision == inference.INT8 else worker_models.save_encoder_state(spec, args.out)
    clear_previous_failures(args.out)
    feature_shards.clear_inprogress_chunks(args.out)
    metadata = feature_shards.features_metadata(spec, expected)
    quarantined: list[str] = []  # unreadable shards moved aside: their images are extracted again
    if args.full:
        # the previous features stay the ones read until this run is done (promote_full_run)
        existing = feature_shards.resumable_full_run(args.out, metadata)
    else:
        try:
            existing = feature_shards.usable_feature_shards(args.out, metadata, quarantined=quarantined)
        except feature_shards.IncompatibleFeatures as exc:
            # refused before any work: the report says why, and the CLI prints its summary
            exc.report = common.StageReport(stage=STAGE, details={"refused": str(exc), "quarantined_shards": len(quarantined)})
            exc.report.save(args.out)
            raise
        if existing:
            log.info("%s: %d feature shards exist; extracting only images they lack (--full redoes all)", STAGE, len(existing))
        if feature_shards.full_run_shards(args.out):
            log.warning(
                "%s: an interrupted --full run left chunks in %s; they are not read until a --full run finishes",
                STAGE,
                feature_shards.full_run_dir(args.out),
            )
    int8_path = None
    if precision == inference.INT8 or (
        inference.auto_may_pick_int8(args.precision, args.device, args.image_model)
        and (expected == inference.INT8 or not runs_here(beam_options))
    ):
        int8_path = worker_models.int8_model_for_run(spec, args, existing)
    prefix = feature_shards.run_prefix(args.out, full=args.full)

    pipeline = test_pipeline or beam.Pipeline(
        options=common.make_options(beam_options, save_main_session)
    )
    extracted = (
        pipeline
        | "ReadImageRefs" >> common.ReadImageRefs(args.out, STAGE)
        | "SkipExtracted" >> common.SkipDoneBefore(STAGE, {SKIPPED_EXTRACTED: existing})
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
            allowed_roots=manifests.recorded_roots(args.out),
        )
    )
    _ = extracted["features"] | "WriteImageFeatures" >> feature_shards.WriteImageFeatures(
        prefix, spec, expected, args.commit_every, int8_path
    )
    _ = extracted["failures"] | "WriteFailures" >> common.WriteFailures.for_stage(args.out, STAGE)

    _, counters, seconds = common.run_pipeline(pipeline, STAGE)
    ran = feature_shards.precisions_ran(prefix) or [expected]
    if len(ran) > 1:
        log.warning("%s: workers ran different precisions (%s): give --precision to run one", STAGE, ", ".join(ran))
    extra = {"int8_model": int8_path.rsplit("/", 1)[-1]} if int8_path and inference.INT8 in ran else {}
    try:
        report = common.finish_stage(
            STAGE,
            args.out,
            counters,
            seconds,
            args.max_failure_rate,
            feature_shards=len(feature_shards.full_run_shards(args.out) if args.full else feature_shards.feature_shards(args.out)),
            encoder=spec.name,
            weights=spec.weights,
            dim=spec.dim,
            device=args.device,
            precision=",".join(ran),
            precision_requested=args.precision,
            decode="device" if decode_on_device else "pillow",
            batch_size=batch_size,
            quarantined_shards=len(quarantined),
            **({"quarantined": quarantined} if quarantined else {}),
            **extra,
        )
    except common.StageRefused:
        if args.full:
            log.warning(
                "%s: --full refused: the previous features stay; this run's chunks wait in %s (rerun --full to finish)",
                STAGE,
                feature_shards.full_run_dir(args.out),
            )
        raise
    if args.full:
        removed, promoted = feature_shards.promote_full_run(args.out)
        report.details.update(full_previous_shards_removed=removed, full_shards_promoted=promoted)
        report.save(args.out)
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(run().summary_line())
