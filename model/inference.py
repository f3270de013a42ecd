"""Running an image encoder fast: precision choice, channels_last, batched normalisation.

Shared by the extract-images stage (inside RunInference) and `imgsearch bench`, so the figure
the bench reports for "the model alone" is the stage's own settings.

Measured on the development machine (2 cores, Xeon with AVX-512 BF16/AMX), ResNet50, batch 16:
fp32 eager 18.8 images/s, fp32 channels_last 25.9, bf16 autocast + channels_last 65.7, and as
prepare_model() runs it (BatchNorm folded, bf16 weights, channels_last) 98.2.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from model.preprocess import CropSpec

log = logging.getLogger(__name__)

AUTO, FP32, BF16, FP16, INT8 = "auto", "fp32", "bf16", "fp16", "int8"
PRECISIONS = (AUTO, FP32, BF16, FP16, INT8)
_REDUCED_DTYPES = {BF16: torch.bfloat16, FP16: torch.float16}
METADATA_NAMES = {FP32: "float32", BF16: "bfloat16", FP16: "float16", INT8: "int8"}
# int8 features (a quantised encoder through onnxruntime, model.quantize) are another vector space
# than the float precisions', which differ from each other only by rounding
INT8_SPACE, FLOAT_SPACE = "int8", "float"
# encoders whose int8 features hold the quality bound (README "int8 on CPUs" has the measurements):
# auto picks int8 for them on a CPU with VNNI or AMX; --precision int8 runs any encoder when asked.
INT8_AUTO_ENCODERS: tuple[str, ...] = ()


def cpu_supports_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels here (AVX-512 BF16 or AMX).

    Without them, bf16 is emulated and slower than fp32, so auto must not pick it.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def torch_device(device: str) -> torch.device:
    """CPU|GPU (our flag) -> a torch device: cuda where CUDA is available, else cpu. Where a GPU
    was asked for and must be used, the caller checks require_cuda() first (extract-images' GPU
    handler does: a worker without CUDA fails with CudaUnavailable instead of running on CPU)."""
    if device.upper() == "GPU" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


class CudaUnavailable(RuntimeError):
    """--device GPU on a machine where CUDA cannot run: a wrong worker image, no driver, or a
    driver too old for the CUDA that torch was built for."""


def require_cuda() -> None:
    """Raise CudaUnavailable unless CUDA can allocate here (called where a GPU model is loaded:
    a GPU worker without CUDA fails its bundle instead of running on its CPU unnoticed)."""
    why = ""
    if not torch.cuda.is_available():
        why = "torch.cuda.is_available() is False"
    else:
        try:
            torch.zeros(1, device="cuda")
        except RuntimeError as exc:
            why = f"CUDA is present but fails: {exc}"
    if why:
        raise CudaUnavailable(
            f"--device GPU, but this worker cannot run CUDA ({why}; torch {torch.__version__} is built for "
            f"CUDA {torch.version.cuda or 'none: a CPU-only build'}). Check the worker image (docker/worker-gpu.Dockerfile), "
            "the accelerator flag (worker_accelerator=type:...;count:1;install-nvidia-driver:580) and the driver "
            "version, or run with --device CPU."
        )


def resolve_precision(requested: str, device: str) -> str:
    """auto -> fp16 for --device GPU, bf16 on a CPU with native bf16, else fp32; explicit values checked.

    Decided from the flag, not from this machine: a Dataflow launcher has no GPU even when its
    workers do. A GPU worker that finds no CUDA falls back at run time (runtime_precision).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    on_gpu = device.upper() == "GPU"
    if requested == AUTO:
        if on_gpu:
            return FP16
        return BF16 if cpu_supports_bf16() else FP32
    if requested == FP16 and not on_gpu:
        raise ValueError("fp16 is for GPUs; on a CPU use bf16 (where supported) or fp32")
    if requested == INT8 and on_gpu:
        raise ValueError("int8 runs on CPUs (onnxruntime); on a GPU use fp16")
    if requested == INT8 and not cpu_supports_int8():
        log.warning("this CPU has no VNNI or AMX: int8 will run, but no faster than bf16 or fp32")
    if requested == BF16 and not on_gpu and not cpu_supports_bf16():
        log.warning("this CPU has no native bf16: bf16 will be emulated and slower than fp32")
    return requested


def cpu_supports_int8() -> bool:
    """Whether this CPU has int8 dot products (AVX-512 VNNI, AVX-VNNI or AMX), from /proc/cpuinfo."""
    from model import quantize

    return quantize.cpu_supports_int8()


def auto_may_pick_int8(requested: str, device: str, encoder: str) -> bool:
    """Whether auto may run int8 somewhere: on a CPU, for an encoder that holds the quality bound.

    Where it does is decided on each worker (worker_precision), where the model is loaded.
    """
    return requested == AUTO and device.upper() != "GPU" and encoder in INT8_AUTO_ENCODERS


def worker_precision(requested: str, device: str, encoder: str) -> str:
    """The precision a worker runs: auto -> int8 on a CPU with VNNI/AMX (for INT8_AUTO_ENCODERS),
    else resolve_precision's rule. Called where the model is loaded, so a Dataflow worker decides
    by its own CPU, not the launcher's."""
    if auto_may_pick_int8(requested, device, encoder) and cpu_supports_int8():
        return INT8
    return resolve_precision(requested, device)


def vector_space(metadata_precision: str | bytes | None) -> str:
    """int8 or float, from a feature file's precision metadata (float32, bfloat16, float16, int8)."""
    if isinstance(metadata_precision, bytes):
        metadata_precision = metadata_precision.decode("utf-8", "replace")
    return INT8_SPACE if metadata_precision == METADATA_NAMES[INT8] else FLOAT_SPACE


def prepare_model(module: nn.Module, device: str | torch.device, precision: str) -> nn.Module:
    """The encoder as it runs fastest without changing what it computes.

    - BatchNorm folded into the preceding convolution (torch.fx's fuse): in eval mode it is an
      affine map, and as separate ops BN and the copies around it took 40% of ResNet50's time;
    - weights cast once to bf16 (CPU) or fp16 (GPU) where that precision was chosen, instead of
      autocast re-casting every weight on every batch (ResNet50, 2 cores with AMX: bf16 autocast
      65.7 images/s, folded + autocast 77.6, folded + bf16 weights 98.2);
    - channels_last, which oneDNN and cuDNN convolutions prefer.
    """
    dev = device if isinstance(device, torch.device) else torch_device(device)
    module = module.eval().requires_grad_(False)
    try:
        from torch.fx.experimental.optimization import fuse

        module = fuse(module)
    except Exception as exc:  # an architecture fx cannot trace still runs, unfolded
        log.info("BatchNorm not folded (%s: %s); running the encoder as it is", type(exc).__name__, exc)
    module = module.to(dev, memory_format=torch.channels_last)
    dtype = _REDUCED_DTYPES.get(runtime_precision(precision, dev))
    return module.to(dtype) if dtype is not None else module


def runtime_precision(precision: str, device: torch.device) -> str:
    """fp16 asked for but running on a CPU (a GPU worker without CUDA): the CPU's best instead."""
    if precision == FP16 and device.type != "cuda":
        return BF16 if cpu_supports_bf16() else FP32
    return precision


def normalize_batch(batch_uint8: torch.Tensor, spec: CropSpec, device: torch.device) -> torch.Tensor:
    """uint8 NCHW -> normalised float32 NCHW in channels_last, on device, in one pass."""
    x = batch_uint8.to(device, non_blocking=True).to(memory_format=torch.channels_last)
    scale = torch.tensor([1.0 / (255.0 * s) for s in spec.std], device=device).view(1, 3, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(spec.mean, spec.std)], device=device).view(1, 3, 1, 1)
    # (x/255 - mean)/std == x * scale - shift
    return torch.addcmul(-shift, x.float(), scale).contiguous(memory_format=torch.channels_last)


def forward_features(module: nn.Module, batch_uint8: torch.Tensor, spec: CropSpec, device: str | torch.device) -> np.ndarray:
    """Pooled features (N, dim) float32 of a uint8 NCHW batch through a prepare_model() encoder.

    The input is normalised in float32, then cast to the encoder's own dtype (its precision).
    """
    dev = device if isinstance(device, torch.device) else torch_device(device)
    dtype = next(module.parameters()).dtype
    with torch.inference_mode():
        x = normalize_batch(batch_uint8, spec, dev).to(dtype)
        return module(x).float().cpu().numpy()


# ---------------------------------------------------------------------------
# The module RunInference runs: preprocessing that belongs on the device lives inside forward(),
# so it also runs where the model lives when Beam shares one model across processes
# (large_model=True hands the worker a proxy: only forward's arguments and results cross over).
# ---------------------------------------------------------------------------
ItemError = tuple[str, str]  # (exception class name, message)


def device_resized_crop(image: torch.Tensor, spec: CropSpec) -> torch.Tensor:
    """uint8 CHW on any device -> the weights' resize-shorter-side + centre crop, uint8 CHW."""
    from torchvision.transforms.v2 import functional as F

    resized = F.resize(image, [spec.resize_size], interpolation=F.InterpolationMode(spec.interpolation), antialias=True)
    return F.center_crop(resized, [spec.crop_size])


def build_feature_extractor(name: str, crop: dict, precision: str) -> "FeatureExtractor":
    """The architecture with fresh weights: Beam's model_class, before the state dict is loaded."""
    from model import encoders

    # Beam loads the saved state dict (strictly: every parameter and buffer) right after, so the
    # random initialisation of 25M parameters would be thrown away: build on the meta device and
    # only allocate
    with torch.device("meta"):
        encoder = encoders.encoder_architecture(name)
    return FeatureExtractor(encoder.to_empty(device="cpu"), CropSpec(**crop), precision)


class FeatureExtractor(nn.Module):
    """A headless encoder plus what must happen on its device: decoding, cropping, normalising.

    forward() takes a list of payloads, each either a uint8 CHW crop made on the CPU with Pillow
    (model.preprocess.crop_uint8) or the raw bytes of a JPEG as a 1-D uint8 tensor, which is
    decoded here on the model's device (nvJPEG on a GPU) with torchvision. A JPEG the device
    decoder rejects is retried with Pillow; one that fails both comes back as an error for that
    item alone. Returns (features float32 [N, dim] on the CPU, per-item errors or None).
    """

    def __init__(self, encoder: nn.Module, spec: CropSpec, precision: str):
        super().__init__()
        self.encoder = encoder
        self.spec = spec
        self.precision = precision
        self._prepared = False

    def prepared(self) -> nn.Module:
        """The encoder folded and cast for its device, on first use: after Beam has loaded the
        state dict and moved the module, in the process where the model lives."""
        if not self._prepared:
            self.encoder = prepare_model(self.encoder, self.device, self.precision)
            self._prepared = True
        return self.encoder

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def _decode_on_device(self, encoded: list[torch.Tensor]) -> list[torch.Tensor | ItemError]:
        from torchvision.io import ImageReadMode, decode_jpeg

        device = self.device
        try:
            images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
            return [device_resized_crop(img, self.spec) for img in images]
        except Exception:  # one bad file fails the whole batched call: retry item by item
            return [self._decode_one(data) for data in encoded]

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor | ItemError:
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            image = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
            return device_resized_crop(image, self.spec)
        except Exception:
            pass
        # the device decoder refuses some valid JPEGs (e.g. progressive or CMYK on nvJPEG)
        from model.preprocess import crop_uint8, decode_image

        try:
            decoded = decode_image(data.numpy().tobytes(), self.spec.resize_size)
            return crop_uint8(decoded, self.spec).to(self.device)
        except Exception as exc:
            return (type(exc).__name__, str(exc))

    def _check_crop(self, crop: torch.Tensor) -> None:
        expected = (3, self.spec.crop_size, self.spec.crop_size)
        if crop.dtype != torch.uint8 or tuple(crop.shape) != expected:
            raise ValueError(f"a crop must be uint8 {expected}, got {crop.dtype} {tuple(crop.shape)}")

    def forward(self, payloads: list[torch.Tensor]) -> tuple[np.ndarray, list[ItemError | None]]:
        device = self.device
        for p in payloads:
            if p.ndim != 1:
                self._check_crop(p)
        crops: list[torch.Tensor | ItemError] = list(payloads)
        encoded_at = [i for i, p in enumerate(payloads) if p.ndim == 1]
        if encoded_at:
            for i, crop in zip(encoded_at, self._decode_on_device([payloads[i] for i in encoded_at])):
                crops[i] = crop
        good = [i for i, c in enumerate(crops) if isinstance(c, torch.Tensor)]
        errors: list[ItemError | None] = [None if isinstance(c, torch.Tensor) else c for c in crops]
        features = np.zeros((len(payloads), 0), dtype=np.float32)
        if good:
            batch = torch.stack([crops[i].to(device, non_blocking=True) for i in good])
            good_features = forward_features(self.prepared(), batch, self.spec, device)
            features = np.zeros((len(payloads), good_features.shape[1]), dtype=np.float32)
            features[good] = good_features
        return features, errors
