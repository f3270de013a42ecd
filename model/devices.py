"""The one device vocabulary of every command: CPU, GPU, or auto (GPU when torch sees one)."""

from __future__ import annotations

import argparse

CPU = "CPU"
GPU = "GPU"
AUTO = "auto"
DEVICES = (CPU, GPU)
DEVICES_WITH_AUTO = (AUTO, CPU, GPU)
_ALIASES = {"cpu": CPU, "gpu": GPU, "cuda": GPU, "auto": AUTO}


def parse_device(text: str) -> str:
    """argparse type: CPU, GPU or auto, whatever the case; `cuda` is accepted for GPU."""
    device = _ALIASES.get(text.strip().lower())
    if device is None:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: choose from {', '.join(DEVICES_WITH_AUTO)}")
    return device


def torch_device_name(device: str, cuda_available: bool) -> str:
    """The torch device ("cpu" or "cuda") for a device of this vocabulary; GPU without CUDA is an error."""
    if device == AUTO:
        return "cuda" if cuda_available else "cpu"
    if device == GPU and not cuda_available:
        raise RuntimeError("--device GPU, but torch sees no CUDA device (no silent fallback to the CPU)")
    return "cuda" if device == GPU else "cpu"
