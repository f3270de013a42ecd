import argparse

import pytest

from model import devices


def test_one_vocabulary_whatever_the_case():
    assert [devices.parse_device(t) for t in ("cpu", "CPU", "gpu", "cuda", "Auto")] == ["CPU", "CPU", "GPU", "GPU", "auto"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown device"):
        devices.parse_device("tpu")


def test_gpu_without_cuda_fails_loudly():
    assert devices.torch_device_name("auto", cuda_available=False) == "cpu"
    assert devices.torch_device_name("auto", cuda_available=True) == "cuda"
    with pytest.raises(RuntimeError, match="no silent fallback"):
        devices.torch_device_name("GPU", cuda_available=False)
