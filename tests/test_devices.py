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


def test_glob_finds_nothing_in_a_missing_folder_but_lets_real_errors_through(tmp_path, monkeypatch):
    from apache_beam.io.filesystem import BeamIOError

    from pipelines import common

    assert common.glob(str(tmp_path / "missing" / "*.parquet")) == []
    (tmp_path / "a.parquet").write_bytes(b"")
    assert common.glob(str(tmp_path / "*.parquet")) == [str(tmp_path / "a.parquet")]

    def denied(patterns):
        raise BeamIOError("403 Forbidden: no access to gs://bucket", {patterns[0]: PermissionError("403")})

    monkeypatch.setattr(common.FileSystems, "match", denied)
    with pytest.raises(BeamIOError, match="403"):
        common.glob("gs://bucket/x/*.parquet")


def _device_flags():
    from model import train
    from pipelines import build, extract_images
    from pipelines.bench import command as bench
    from pipelines.demo import command as demo

    required = ["--out", "o"]
    return {
        "extract-images": (extract_images.get_args_parser(), required),
        "build": (build.get_args_parser(), required + ["--input", "m", "--word-vectors", "w"]),
        "demo": (demo.get_args_parser(), required),
        "bench": (bench.get_args_parser(), []),
        "train": (train.get_args_parser(), required),
    }


@pytest.mark.parametrize("command", ["extract-images", "build", "demo", "bench", "train"])
def test_every_command_speaks_the_same_device_vocabulary(command):
    parser, required = _device_flags()[command]
    for spelled, meant in (("cpu", devices.CPU), ("GPU", devices.GPU), ("cuda", devices.GPU)):
        assert parser.parse_args(required + ["--device", spelled]).device == meant
    with pytest.raises(SystemExit):
        parser.parse_args(required + ["--device", "tpu"])
