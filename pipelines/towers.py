"""The matcher's ONNX towers inside Beam: image features and tag vectors projected into the
joint space of every member, for rank.

Image features go through RunInference's ONNX handler (keyed, fixed batches, a dead letter per
failed batch); tag vectors, a few thousand rows, through one onnxruntime session per DoFn. No
torch: Beam's RunInference module imports torch opportunistically, so it is imported where the
image tower is wired, never at the top.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import apache_beam as beam
import numpy as np
import onnxruntime as ort
from apache_beam.io.filesystems import FileSystems

from model import schema
from pipelines import common

PROVIDERS = ["CPUExecutionProvider"]
DEFAULT_BATCH_SIZE = 256
FAILURES = "failures"
TAGS_OOV = "tags_oov"
# Error names recorded in failures/ for problems that are not exceptions.
NON_FINITE_EMBEDDING = "NonFiniteEmbedding"


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def load_onnx_session(model_uri: str) -> ort.InferenceSession:
    """An onnxruntime CPU session for a model at any FileSystems path (local or gs://)."""
    with FileSystems.open(model_uri) as f:
        model_bytes = f.read()
    return ort.InferenceSession(model_bytes, providers=PROVIDERS)


def tower_inference_fn(
    session: ort.InferenceSession, batch: Sequence[np.ndarray], inference_args: dict[str, Any] | None = None
) -> np.ndarray:
    """RunInference's inference_fn: the batch stacked into one [n, D] array, named outputs.

    Names the tower's input and output explicitly instead of trusting their positions.
    """
    stacked = np.stack([np.asarray(x, dtype=np.float32) for x in batch], axis=0)
    return session.run([schema.TOWER_OUTPUT], {schema.TOWER_INPUT: stacked, **(inference_args or {})})[0]


def _take_embedding(image_id: str, result: Any) -> tuple[str, np.ndarray]:
    """(image_id, PredictionResult) -> (image_id, [members, 128]); the raw features are dropped."""
    return image_id, np.asarray(result.inference, dtype=np.float32)


# ---------------------------------------------------------------------------
# DoFns
# ---------------------------------------------------------------------------
class ToTowerInputFn(beam.DoFn):
    """Feature row -> (image_id, float32 vector); non-finite vectors go to failures."""

    def process(self, row: dict[str, Any]) -> Iterator[Any]:
        vector = np.asarray(row[schema.EMBEDDING], dtype=np.float32)
        if not np.all(np.isfinite(vector)):
            yield beam.pvalue.TaggedOutput(
                FAILURES, (row[schema.IMAGE_ID], (NON_FINITE_EMBEDDING, "image features hold NaN or inf"))
            )
            return
        yield row[schema.IMAGE_ID], vector


class ProjectTagsFn(beam.DoFn):
    """A batch of text feature rows -> (tag, [members, 128]) through the text towers.

    Oov tags have no vector and produce nothing: they keep index order downstream.
    """

    def __init__(self, model_uri: str, stage: str):
        self._model_uri = model_uri
        self._stage = stage
        self._session: ort.InferenceSession | None = None

    def setup(self) -> None:
        self._session = load_onnx_session(self._model_uri)

    def process(self, batch: Sequence[dict[str, Any]]) -> Iterator[Any]:
        usable: list[tuple[str, np.ndarray]] = []
        for row in batch:
            tag, vector = row[schema.TAG], row[schema.EMBEDDING]
            if row[schema.STATUS] == schema.TEXT_OOV or vector is None:
                common.counter(self._stage, TAGS_OOV).inc()
                continue
            vector = np.asarray(vector, dtype=np.float32)
            if not np.all(np.isfinite(vector)):
                common.counter(self._stage, f"text_failed_{NON_FINITE_EMBEDDING}").inc()
                yield beam.pvalue.TaggedOutput(
                    FAILURES, common.failure_row(self._stage, None, None, NON_FINITE_EMBEDDING, f"tag {tag!r}: text features hold NaN or inf")
                )
                continue
            usable.append((tag, vector))
        if not usable:
            return
        tags = [t for t, _ in usable]
        try:
            projected = tower_inference_fn(self._session, [v for _, v in usable])
        except Exception as exn:  # a bad batch must not crash the job; its tags fall back to index order
            name = type(exn).__name__
            common.counter(self._stage, f"text_failed_{name}").inc(len(tags))
            for tag in tags:
                yield beam.pvalue.TaggedOutput(FAILURES, common.failure_row(self._stage, None, None, name, f"tag {tag!r}: {exn}"))
            return
        for tag, vector in zip(tags, projected):
            yield tag, np.asarray(vector, dtype=np.float32)


# ---------------------------------------------------------------------------
# Composite transforms
# ---------------------------------------------------------------------------
def _image_failures(dead_letter: tuple) -> Iterator[tuple[str, tuple[str, str]]]:
    """A failed batch of the image tower -> (image_id, (error, message)) per image."""
    for image_id, error, message in common.dead_letter_rows(dead_letter):
        yield image_id, (error, message)


def image_tower_inference(model_uri: str, batch_size: int) -> beam.PTransform:
    """RunInference over (image_id, features) with the ONNX image tower, with a dead letter."""
    # Imported here, not at the top: apache_beam.ml.inference.base pulls in torch when it is
    # installed (for its model manager, which we do not use), and this module must not.
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.ml.inference.onnx_inference import OnnxModelHandlerNumpy

    handler = KeyedModelHandler(
        OnnxModelHandlerNumpy(
            model_uri=model_uri,
            providers=PROVIDERS,
            inference_fn=tower_inference_fn,
            # a full, fixed batch per onnxruntime call; a bundle's remainder goes out smaller
            min_batch_size=batch_size,
            max_batch_size=batch_size,
        )
    )
    return RunInference(handler).with_exception_handling()


class ProjectImages(beam.PTransform):
    """Image feature rows -> {"embeddings": (image_id, [members, 128]), "failed": (image_id, (error, message))}."""

    def __init__(self, model_uri: str, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__()
        self._model_uri = model_uri
        self._batch_size = batch_size

    def expand(self, features: beam.PCollection) -> dict[str, beam.PCollection]:
        inputs = features | "ToTowerInput" >> beam.ParDo(ToTowerInputFn()).with_outputs(FAILURES, main="vectors")
        predictions, dead_letters = inputs.vectors | "ImageTower" >> image_tower_inference(
            self._model_uri, self._batch_size
        )
        embeddings = predictions | "TakeEmbedding" >> beam.MapTuple(_take_embedding)
        tower_failed = dead_letters.failed_inferences | "PerImageFailures" >> beam.FlatMap(_image_failures)
        failed = (inputs[FAILURES], tower_failed) | "MergeImageFailures" >> beam.Flatten()
        return {"embeddings": embeddings, "failed": failed}


class ProjectTags(beam.PTransform):
    """Text feature rows -> {"vectors": (tag, [members, 128]), "failures": failure rows}; oov tags
    absent. Counters and failure rows go to `stage`."""

    def __init__(self, model_uri: str, stage: str, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__()
        self._model_uri = model_uri
        self._stage = stage
        self._batch_size = batch_size

    def expand(self, text_features: beam.PCollection) -> dict[str, beam.PCollection]:
        out = (
            text_features
            | "BatchTags" >> beam.BatchElements(min_batch_size=self._batch_size, max_batch_size=self._batch_size)
            | "TextTower" >> beam.ParDo(ProjectTagsFn(self._model_uri, self._stage)).with_outputs(FAILURES, main="vectors")
        )
        return {"vectors": out.vectors, "failures": out[FAILURES]}
