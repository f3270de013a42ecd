"""RunInference's model handlers for extract-images: the torch FeatureExtractor (CPU or GPU), the
int8 encoder through onnxruntime, and --precision auto, where each CPU worker picks one of the two
in load_model by its own CPU. Every handler is keyed (KeyedModelHandler): the ImageKey rides
beside its tensor, and each result's model_id names the precision that ran.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult
from apache_beam.ml.inference.onnx_inference import OnnxModelHandlerNumpy
from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor

from model import devices, inference, preprocess, quantize
from pipelines import image_decoding

log = logging.getLogger(__name__)

STAGE = image_decoding.STAGE  # in log lines


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
    handler_class = GpuTorchHandler if device == devices.GPU else PytorchModelHandlerTensor
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
        large_model=device == devices.GPU,
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
        chosen = inference.worker_precision(inference.AUTO, devices.CPU, self._encoder)
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
    torch_handler = torch_model_handler(name, crop, precision, state_dict_path, devices.CPU, batch_size)
    return KeyedModelHandler(AutoPrecisionHandler(Int8EncoderHandler(int8_path, batch_size), torch_handler, name))


def make_handler(
    name: str,
    crop: preprocess.CropSpec,
    precision: str,
    state_dict_path: str | None,
    device: str,
    batch_size: int,
    int8_model_path: str | None = None,
    decode_on_device: bool = False,
) -> KeyedModelHandler:
    """The stage's handler. precision int8: the int8 model alone (state_dict_path unused); another
    precision with an int8_model_path: --precision auto, each worker choosing between int8 and
    the torch model at that precision; without one: the torch model."""
    if precision == inference.INT8 or int8_model_path:
        if device == devices.GPU or decode_on_device:
            raise ValueError("int8 runs on CPUs with Pillow decoding (--device CPU, --decode pillow or auto)")
        if not int8_model_path:
            raise ValueError("precision int8 needs the quantised model's path (prepare_int8_model)")
    if precision == inference.INT8:
        return make_int8_handler(int8_model_path, batch_size)
    if int8_model_path:
        return make_auto_handler(name, crop, precision, state_dict_path, int8_model_path, batch_size)
    return make_model_handler(name, crop, precision, state_dict_path, device, batch_size)
