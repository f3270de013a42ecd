# Dataflow GPU worker for extract-images: Beam's SDK image (Python 3.11, apache-beam 2.77.0 and its
# worker boot), torch from PyPI (its Linux wheels bring the CUDA 13.0 runtime, cuDNN and NCCL as
# pinned nvidia-* packages; the VM needs NVIDIA driver >= 580: install-nvidia-driver:580) and the
# project, all in the image's default Python environment.
#
#   make images REGISTRY=REGION-docker.pkg.dev/PROJECT/REPOSITORY
#   docker build -f docker/worker-gpu.Dockerfile -t IMAGE .        (from the repository root)
#
# Python and Beam must match the launcher's (python 3.11, apache-beam 2.77.0: setup.py); the
# launcher refuses a DataflowRunner job from another Python (pipelines/launcher.py).
#
# Why not a CUDA base image with Python in a venv (what this file was): Beam's boot starts the
# worker in a venv it makes with --system-site-packages from the image's `python`; made from a
# venv's python, that venv sees the base interpreter's packages, not the venv's, and boot stops
# with "Apache Beam is not installed in the runtime environment". Here everything is installed
# into the default environment, and RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1 skips boot's venv
# (nothing to make or install when a worker starts). tests/test_dataflow_ready.py simulates it.
FROM apache/beam_python3.11_sdk:2.77.0

ENV RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Dataflow mounts the NVIDIA driver's libraries (libcuda) here, as CUDA base images expect
ENV LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/nvidia/lib \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /opt/imgsearch
COPY requirements/ requirements/
RUN pip install -c requirements/constraints.txt -r requirements/torch-gpu.txt
COPY setup.py ./
COPY pipelines/ pipelines/
COPY model/ model/
COPY export/ export/
COPY site/ site/
RUN pip install -c requirements/constraints.txt ".[torch]" \
    && pip check \
    && python -c "import torch, apache_beam; print(torch.__version__, torch.version.cuda, apache_beam.__version__)"

# The SDK image's entrypoint stays: /opt/apache/beam/boot
