"""What a Dataflow job relies on and can be checked without Google Cloud: the worker images'
pins against setup.py, stages that import without torch, word vectors held once per process,
a GPU worker without CUDA failing loudly, and the Dataflow epilogue on every Beam stage's --help."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BEAM_STAGES = ("pipelines.index", "pipelines.fetch", "pipelines.extract_images", "pipelines.extract_text", "pipelines.rank")


def _setup_constants() -> dict[str, object]:
    """Module-level constants of setup.py (read, not run: running it would call setup())."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    found: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass  # lists built from f-strings or sums: not needed here
    return found


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


# ---------------------------------------------------------------------------
# Worker images and pins
# ---------------------------------------------------------------------------
def test_dockerfiles_pin_the_beam_python_and_torch_of_setup_py():
    pins = _setup_constants()
    beam, torch_version, vision = pins["BEAM_VERSION"], pins["TORCH_VERSION"], pins["TORCHVISION_VERSION"]
    setup_text = (ROOT / "setup.py").read_text()
    assert 'python_requires=">=3.11"' in setup_text
    sdk_image = f"apache/beam_python3.11_sdk:{beam}"

    cpu = (ROOT / "docker" / "worker-cpu.Dockerfile").read_text()
    gpu = (ROOT / "docker" / "worker-gpu.Dockerfile").read_text()
    assert re.search(rf"^FROM {re.escape(sdk_image)}\s*$", cpu, re.M), "worker-cpu must start from Beam's SDK image"
    assert f"COPY --from={sdk_image} /opt/apache/beam /opt/apache/beam" in gpu
    assert re.search(r'^ENTRYPOINT \["/opt/apache/beam/boot"\]\s*$', gpu, re.M)
    # a CUDA 13.0 runtime: what torch's PyPI wheels are built for
    base = re.search(r"^FROM (\S+)", gpu, re.M).group(1)
    assert re.fullmatch(r"nvidia/cuda:13\.0\.\d+-(cudnn-)?runtime-ubuntu\d\d\.\d\d", base), base
    assert "python3.11" in gpu
    for dockerfile in (cpu, gpu):
        assert "-c requirements/constraints.txt" in dockerfile
        # every other image a Dockerfile names is Beam's SDK image of the same Beam and Python
        for image in re.findall(r"apache/beam_python[\d.]+_sdk:\S+", dockerfile):
            assert image == sdk_image, image

    torch_cpu = (ROOT / "requirements" / "torch-cpu.txt").read_text()
    torch_gpu = (ROOT / "requirements" / "torch-gpu.txt").read_text()
    assert f"torch=={torch_version}+cpu" in torch_cpu and f"torchvision=={vision}+cpu" in torch_cpu
    assert re.search(rf"^torch=={re.escape(torch_version)}$", torch_gpu, re.M)
    assert re.search(rf"^torchvision=={re.escape(vision)}$", torch_gpu, re.M)
    assert "requirements/torch-cpu.txt" in cpu and "requirements/torch-gpu.txt" in gpu

    constraints = {
        name.lower(): version
        for name, version in re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)$", (ROOT / "requirements" / "constraints.txt").read_text(), re.M)
    }
    assert constraints["apache-beam"] == beam
    assert constraints["torch"] == torch_version
    assert constraints["torchvision"] == vision
    for needed in ("gensim", "onnxruntime", "pyarrow", "faiss-cpu", "matplotlib", "gcsfs", "google-cloud-storage"):
        assert needed in constraints, needed


def test_make_images_builds_both_dockerfiles():
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^images:.*?(?=^\S|\Z)", makefile, re.M | re.S).group(0)
    assert "docker/worker-cpu.Dockerfile" in target and "docker/worker-gpu.Dockerfile" in target


def test_the_beam_version_of_setup_py_is_the_installed_one():
    import apache_beam

    assert apache_beam.__version__ == _setup_constants()["BEAM_VERSION"]


# ---------------------------------------------------------------------------
# Lean stages
# ---------------------------------------------------------------------------
_IMPORT_WITHOUT = textwrap.dedent(
    """
    import importlib, importlib.abc, sys

    BLOCKED = {blocked!r}

    class Absent(importlib.abc.MetaPathFinder):
        # as if the packages were not installed (sys.modules[name] = None would break scipy)
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"No module named {{name!r}} (blocked by the test)")
            return None

    sys.meta_path.insert(0, Absent())
    for module in {modules!r}:
        importlib.import_module(module)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("ok")
    """
)


@pytest.mark.parametrize(
    "modules",
    [("pipelines.index",), ("pipelines.fetch",), ("pipelines.extract_text",), ("pipelines.rank",), ("export.evaluate",)],
    ids=lambda m: m[0],
)
def test_lean_stages_import_without_torch_faiss_or_matplotlib(modules):
    code = _IMPORT_WITHOUT.format(blocked=["torch", "torchvision", "faiss", "matplotlib", "efficientnet_lite_pytorch"], modules=list(modules))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_setup_py_keeps_torch_faiss_and_matplotlib_out_of_what_workers_install():
    text = (ROOT / "setup.py").read_text()
    core_block = re.search(r"^CORE = \[(.*?)^\]", text, re.M | re.S).group(1)
    for heavy in ("torch", "torchvision", "faiss", "matplotlib", "gcsfs", "efficientnet"):
        assert heavy not in core_block, heavy
    assert "install_requires=CORE" in text


# ---------------------------------------------------------------------------
# Word vectors: one mapped copy per machine, one load per process
# ---------------------------------------------------------------------------
def test_word_vectors_load_once_per_process_from_one_mapped_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import numpy as np

    from pipelines import extract_text
    from tests.conftest import make_keyed_vectors

    monkeypatch.setenv(extract_text.CACHE_ROOT_ENV, str(tmp_path / "cache"))
    path = tmp_path / "vectors.bin"
    kv = make_keyed_vectors(["cat", "dog", "red", "car"], dim=8)
    kv.save_word2vec_format(str(path), binary=True)

    first = extract_text.TagVectorFn(str(path), 8)
    second = extract_text.TagVectorFn(str(path), 8)
    second._shared = first._shared  # as two unpickled copies of one DoFn in a worker process
    first.setup()
    second.setup()
    assert first._kv is second._kv
    assert isinstance(first._kv.vectors, np.memmap), "the vectors must be mapped, not copied"
    np.testing.assert_allclose(list(first.process("cat"))[0]["embedding"], kv["cat"], rtol=1e-6)

    # a later process maps the same converted copy instead of converting again
    converted = sorted((tmp_path / "cache").rglob("*.npy"))
    assert converted
    stamp = converted[0].stat().st_mtime_ns
    again = extract_text.load_word_vectors(str(path))
    assert converted[0].stat().st_mtime_ns == stamp
    assert set(again.index_to_key) == set(kv.index_to_key)

    # a changed file is a new copy, not the old one
    make_keyed_vectors(["zebra"], dim=8).save_word2vec_format(str(path), binary=True)
    assert list(extract_text.load_word_vectors(str(path)).index_to_key) == ["zebra"]


# ---------------------------------------------------------------------------
# Loud failures on the wrong hardware
# ---------------------------------------------------------------------------
def test_gpu_device_without_cuda_fails_the_bundle_instead_of_running_on_cpu():
    import torch

    from model import inference, preprocess
    from pipelines import encode_handlers

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    crop = preprocess.CropSpec(resize_size=8, crop_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear")
    gpu = encode_handlers.torch_model_handler("efficientnet_lite0", crop, inference.FP16, "unused.pt", "GPU", 4)
    assert isinstance(gpu, encode_handlers.GpuTorchHandler)
    with pytest.raises(inference.CudaUnavailable, match=r"--device GPU, but this worker cannot run CUDA"):
        gpu.load_model()
    cpu = encode_handlers.torch_model_handler("efficientnet_lite0", crop, inference.FP32, "unused.pt", "CPU", 4)
    assert not isinstance(cpu, encode_handlers.GpuTorchHandler)


def test_gpu_stage_run_without_cuda_fails_with_the_clear_error(tmp_path: Path):
    import torch

    from pipelines import extract_images as ei
    from pipelines import index
    from tests.conftest import write_image_collection, write_jsonl

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rows = write_image_collection(tmp_path / "images", 4, ["cat", "dog"])
    manifest = write_jsonl(tmp_path / "manifest.jsonl", rows)
    out = tmp_path / "out"
    index.run(["--input", str(manifest), "--out", str(out)], save_main_session=False)
    argv = ["--out", str(out), "--image-model", "efficientnet_lite0", "--weights", "random", "--device", "GPU", "--precision", "fp16"]
    with pytest.raises(Exception, match=r"cannot run CUDA"):
        ei.run(argv, save_main_session=False)
    assert not list(out.rglob("features-*.parquet")), "no features may be written by a run that could not use its GPU"


# ---------------------------------------------------------------------------
# --help
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["index", "fetch", "extract-images", "extract-text", "rank"])
def test_every_beam_stage_help_ends_with_how_to_run_it_on_dataflow(stage: str, capsys):
    from pipelines import cli, common

    with pytest.raises(SystemExit) as done:
        cli.main([stage, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "running on Dataflow" in text
    for flag in ("--sdk_container_image", "--sdk_location container", "--experiments=use_runner_v2",
                 "--number_of_worker_harness_threads", "--disk_size_gb", "install-nvidia-driver:580"):
        assert flag in text, flag
    assert common.DATAFLOW_EPILOG.splitlines()[1] in text  # line breaks kept
